//! One heartbeat driver per [`Registry`]: a single thread that renews every
//! live [`crate::Registration`] of that registry when it is due, whatever
//! their number. It runs while at least one registration exists.
//!
//! The driver does not die with a panic. A renewal that panics (for example
//! in a tracing subscriber) is contained, logged if logging works, and that
//! registration beats again next interval; the others are not delayed. A
//! panic anywhere else in the driver restarts its loop; should one ever get
//! past that, a guard marks the driver stopped and starts a new one.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::blocking::block_on;
use crate::{EntryFields, Registry, Renewal};

/// How long the driver pauses after a panic outside a renewal before it
/// resumes, so that one that recurs every pass cannot spin a core.
const RESTART_PAUSE: Duration = Duration::from_millis(100);

/// One registration's heartbeat.
pub(crate) struct Beat {
    pub(crate) fields: EntryFields,
    pub(crate) interval: Duration,
    /// Held while renewing, so that ending a registration waits for a
    /// renewal in flight (which could otherwise restore a removed entry).
    pub(crate) state: Mutex<BeatState>,
    /// Counters the driver keeps for tests to wait on (see [`Progress`]).
    progress: Progress,
    #[cfg(test)]
    test: tests::Hooks,
}

/// What the driver has done for one beat, so that tests can wait for a
/// renewal instead of sleeping. Changed only under the schedule's lock;
/// atomics so that they can be read without it.
#[derive(Default)]
struct Progress {
    /// Renewals finished, whatever their outcome (a contained panic too).
    renewals: AtomicU64,
    /// Renewals asked for out of schedule: the last ticket handed out, and
    /// the last one served. A beat with `requested > served` is due now.
    requested: AtomicU64,
    served: AtomicU64,
}

impl Progress {
    fn asked(&self) -> bool {
        self.requested.load(Ordering::Relaxed) > self.served.load(Ordering::Relaxed)
    }
}

pub(crate) struct BeatState {
    /// False once the registration ended or was superseded.
    pub(crate) active: bool,
    /// Another registration took the id over.
    pub(crate) superseded: bool,
}

impl Beat {
    pub(crate) fn new(fields: EntryFields, interval: Duration) -> Arc<Beat> {
        Arc::new(Beat {
            fields,
            interval,
            state: Mutex::new(BeatState {
                active: true,
                superseded: false,
            }),
            progress: Progress::default(),
            #[cfg(test)]
            test: tests::Hooks::default(),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, BeatState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renews once; false when the heartbeat should stop.
    fn renew(&self, registry: &Registry) -> bool {
        let mut state = self.lock();
        if !state.active {
            return false;
        }
        #[cfg(test)]
        self.test.maybe_panic();
        let agent_id = &self.fields.agent_id;
        match block_on(registry.renew(self.fields.clone())) {
            Ok(Renewal::Refreshed) => true,
            Ok(Renewal::Restored) => {
                log(|| tracing::info!(agent_id, "registry entry was missing: restored it"));
                true
            }
            Ok(Renewal::Superseded) => {
                // Recorded before logging, which might not return.
                state.active = false;
                state.superseded = true;
                log(|| {
                    tracing::info!(
                        agent_id,
                        "another registration owns the agent id now: heartbeat stopped"
                    )
                });
                false
            }
            // A passing failure: try again next beat.
            Err(e) => {
                log(|| tracing::warn!(agent_id, "heartbeat failed: {}", e.with_causes()));
                true
            }
        }
    }

    /// Renews once with any panic contained; a renewal that panicked is
    /// kept, to be tried again next interval.
    fn renew_contained(&self, registry: &Registry) -> bool {
        let keep = match catch_unwind(AssertUnwindSafe(|| self.renew(registry))) {
            Ok(keep) => keep,
            Err(payload) => {
                let agent_id = &self.fields.agent_id;
                log(|| {
                    tracing::error!(
                        agent_id,
                        "heartbeat renewal panicked: {}; retrying next beat",
                        panic_message(&*payload)
                    )
                });
                discard(payload);
                true
            }
        };
        keep
    }
}

/// Runs `log_call`, containing a panic: a tracing subscriber may panic, and
/// neither the driver nor a registration's drop may die of it.
pub(crate) fn log(log_call: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(log_call)) {
        discard(payload);
    }
}

/// Drops a panic payload, whose own drop may panic too (then leaks that one).
fn discard(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(s), _) => s,
        (_, Some(s)) => s,
        _ => "(not a string)",
    }
}

/// The set of heartbeats one registry drives.
#[derive(Default)]
pub(crate) struct Heartbeats {
    state: Mutex<Schedule>,
    wake: Condvar,
    /// Signalled when a renewal finished or a beat stopped being driven.
    done: Condvar,
    #[cfg(test)]
    test: tests::DriverHooks,
}

#[derive(Default)]
struct Schedule {
    /// Each heartbeat with when it is next due; `None` when that is beyond
    /// what `Instant` can hold (an interval like `Duration::MAX`): never.
    beats: Vec<(Arc<Beat>, Option<Instant>)>,
    /// Whether the driver thread runs.
    running: bool,
}

impl Heartbeats {
    fn lock(&self) -> MutexGuard<'_, Schedule> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `beat`, first due one interval from now; starts the driver if it
    /// is not running.
    pub(crate) fn add(&self, registry: &Registry, beat: Arc<Beat>) -> std::io::Result<()> {
        let mut schedule = self.lock();
        let due = Instant::now().checked_add(beat.interval);
        schedule.beats.push((beat, due));
        if !schedule.running {
            start(&mut schedule, registry)?;
        }
        self.wake.notify_all();
        Ok(())
    }

    /// Stops driving `beat`.
    pub(crate) fn remove(&self, beat: &Arc<Beat>) {
        self.lock().beats.retain(|(b, _)| !Arc::ptr_eq(b, beat));
        self.wake.notify_all();
        self.done.notify_all();
    }

    /// How many heartbeats are driven (for tests and diagnostics).
    pub(crate) fn len(&self) -> usize {
        self.lock().beats.len()
    }

    /// How many renewals of `beat` the driver has finished.
    pub(crate) fn renewals(&self, beat: &Beat) -> u64 {
        beat.progress.renewals.load(Ordering::Relaxed)
    }

    /// Waits until `n` renewals of `beat` have finished, `beat` is no
    /// longer driven, or `within` has passed; returns the renewals finished.
    pub(crate) fn wait_for_renewals(&self, beat: &Arc<Beat>, n: u64, within: Duration) -> u64 {
        let schedule = self.lock();
        self.wait(schedule, beat, within, |p| {
            p.renewals.load(Ordering::Relaxed) >= n
        });
        self.renewals(beat)
    }

    /// Makes `beat` due now, and waits until a renewal of it that began
    /// after this call has finished, or `beat` is no longer driven; false
    /// when `within` passed first. Its schedule goes on from that renewal.
    pub(crate) fn beat_now(&self, beat: &Arc<Beat>, within: Duration) -> bool {
        let schedule = self.lock();
        let ticket = beat.progress.requested.fetch_add(1, Ordering::Relaxed) + 1;
        self.wake.notify_all();
        self.wait(schedule, beat, within, |p| {
            p.served.load(Ordering::Relaxed) >= ticket
        })
    }

    /// Waits on `done` until `reached` holds for `beat`'s progress or `beat`
    /// is no longer driven (true), or `within` has passed (false).
    fn wait(
        &self,
        mut schedule: MutexGuard<'_, Schedule>,
        beat: &Arc<Beat>,
        within: Duration,
        reached: impl Fn(&Progress) -> bool,
    ) -> bool {
        let deadline = Instant::now().checked_add(within);
        loop {
            if reached(&beat.progress) || !schedule.beats.iter().any(|(b, _)| Arc::ptr_eq(b, beat))
            {
                return true;
            }
            schedule = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.done
                        .wait_timeout(schedule, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.done.wait(schedule).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// Starts a driver thread for `registry`; the caller holds its schedule.
fn start(schedule: &mut Schedule, registry: &Registry) -> std::io::Result<()> {
    let driver = registry.clone();
    std::thread::Builder::new()
        // Short enough for Linux thread names (15 bytes).
        .name("agentmux-beat".into())
        .spawn(move || drive(driver))?;
    schedule.running = true;
    Ok(())
}

/// The driver thread: runs the schedule until no beat is left, and resumes
/// it after any panic.
fn drive(registry: Registry) {
    let _restart = RestartOnUnwind(&registry);
    #[cfg(test)]
    registry.inner.heartbeats.test.maybe_escape();
    loop {
        match catch_unwind(AssertUnwindSafe(|| drive_until_idle(&registry))) {
            Ok(()) => return,
            Err(payload) => {
                log(|| {
                    tracing::error!(
                        "heartbeat driver panicked: {}; resuming",
                        panic_message(&*payload)
                    )
                });
                discard(payload);
                std::thread::sleep(RESTART_PAUSE);
            }
        }
    }
}

/// Should the driver thread ever unwind past its own containment, marks it
/// stopped and starts another while beats remain, so no registration is
/// left without a driver.
struct RestartOnUnwind<'a>(&'a Registry);

impl Drop for RestartOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let heartbeats = &self.0.inner.heartbeats;
            let mut schedule = heartbeats.lock();
            schedule.running = false;
            if !schedule.beats.is_empty() {
                // On failure `running` stays false: the next add starts one.
                let _ = start(&mut schedule, self.0);
            }
        }
    }
}

/// Sleeps until the earliest beat is due, renews every due beat; returns
/// once no beat is left (and marks the driver stopped). A beat asked for
/// out of schedule ([`Heartbeats::beat_now`]) is due at once.
fn drive_until_idle(registry: &Registry) {
    let heartbeats = &registry.inner.heartbeats;
    loop {
        // Each due beat, with the last out-of-schedule ticket its renewal serves.
        let due: Vec<(Arc<Beat>, u64)> = {
            let mut schedule = heartbeats.lock();
            loop {
                if schedule.beats.is_empty() {
                    schedule.running = false;
                    return;
                }
                let now = Instant::now();
                let next = if schedule.beats.iter().any(|(b, _)| b.progress.asked()) {
                    Some(now)
                } else {
                    schedule.beats.iter().filter_map(|(_, at)| *at).min()
                };
                schedule = match next {
                    Some(next) if next <= now => break,
                    Some(next) => {
                        heartbeats
                            .wake
                            .wait_timeout(schedule, next - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    // Nothing is ever due: wait for a change.
                    None => heartbeats
                        .wake
                        .wait(schedule)
                        .unwrap_or_else(|p| p.into_inner()),
                };
            }
            let now = Instant::now();
            schedule
                .beats
                .iter()
                .filter(|(b, at)| b.progress.asked() || at.is_some_and(|at| at <= now))
                .map(|(b, _)| (b.clone(), b.progress.requested.load(Ordering::Relaxed)))
                .collect()
        };
        for (beat, ticket) in due {
            #[cfg(test)]
            heartbeats.test.maybe_panic();
            let keep = beat.renew_contained(registry);
            let mut schedule = heartbeats.lock();
            let progress = &beat.progress;
            progress.renewals.fetch_add(1, Ordering::Relaxed);
            progress.served.fetch_max(ticket, Ordering::Relaxed);
            heartbeats.done.notify_all();
            if keep {
                let next = Instant::now().checked_add(beat.interval);
                for (b, at) in schedule.beats.iter_mut() {
                    if Arc::ptr_eq(b, &beat) {
                        *at = next;
                    }
                }
            } else {
                schedule.beats.retain(|(b, _)| !Arc::ptr_eq(b, &beat));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::blocking::block_on;
    use crate::Registration;

    /// Per-beat test hook: panics on demand inside a renewal.
    #[derive(Default)]
    pub(super) struct Hooks {
        panics: AtomicUsize,
    }

    impl Hooks {
        pub(super) fn maybe_panic(&self) {
            if take_one(&self.panics) {
                panic!("test: renewal panics");
            }
        }
    }

    /// Driver test hooks: panics on demand outside any renewal, or even
    /// outside the driver's own containment.
    #[derive(Default)]
    pub(super) struct DriverHooks {
        panics: AtomicUsize,
        escapes: AtomicUsize,
    }

    impl DriverHooks {
        pub(super) fn maybe_panic(&self) {
            if take_one(&self.panics) {
                panic!("test: driver panics");
            }
        }

        pub(super) fn maybe_escape(&self) {
            if take_one(&self.escapes) {
                panic!("test: driver thread unwinds");
            }
        }
    }

    fn take_one(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn open() -> (tempfile::TempDir, Registry) {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::open(tmp.path()).unwrap();
        (tmp, registry)
    }

    fn register(registry: &Registry, id: &str, interval: Duration) -> Registration {
        let fields = EntryFields {
            agent_id: id.into(),
            local_url: "http://127.0.0.1:1".into(),
            block_id: "b".into(),
            auth_key: "k".into(),
            ..EntryFields::default()
        };
        block_on(Registration::register(registry, fields, interval)).unwrap()
    }

    /// Waits for `check`, giving up after 60 s (only so that a failing test
    /// ends: what the tests assert is `check`, never the time it took).
    fn eventually(mut check: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    fn renewals(guard: &Registration) -> u64 {
        guard.renewals()
    }

    /// Issue: a panic in a renewal killed the driver thread with `running`
    /// still set, so no registration of that registry was renewed again.
    #[test]
    fn a_registration_whose_renewal_panicked_keeps_beating() {
        let (_tmp, registry) = open();
        let hurt = register(&registry, "hurt", Duration::from_millis(5));
        let other = register(&registry, "other", Duration::from_millis(5));
        hurt.beat.test.panics.store(1, Ordering::SeqCst);
        assert!(eventually(
            || hurt.beat.test.panics.load(Ordering::SeqCst) == 0
        ));
        let (hurt_then, other_then) = (renewals(&hurt), renewals(&other));
        assert!(
            eventually(|| renewals(&hurt) >= hurt_then + 2 && renewals(&other) >= other_then + 2),
            "renewals after the panic: hurt {hurt_then} -> {}, other {other_then} -> {}",
            renewals(&hurt),
            renewals(&other)
        );
        assert_eq!(registry.heartbeat_count(), 2);
        // The entry of the one that panicked is still renewed: restored here.
        assert!(block_on(registry.remove("hurt")).unwrap());
        assert!(eventually(|| block_on(registry.lookup("hurt"))
            .unwrap()
            .is_some()));
        drop((hurt, other));
        assert!(block_on(registry.list()).unwrap().is_empty());
    }

    /// A panic in the driver outside any renewal resumes the driver.
    #[test]
    fn a_panic_elsewhere_in_the_driver_resumes_it() {
        let (_tmp, registry) = open();
        let guard = register(&registry, "a", Duration::from_millis(5));
        let hook = &registry.inner.heartbeats.test.panics;
        hook.store(2, Ordering::SeqCst);
        assert!(eventually(|| hook.load(Ordering::SeqCst) == 0));
        let then = renewals(&guard);
        assert!(eventually(|| renewals(&guard) >= then + 2));
        assert!(registry.inner.heartbeats.lock().running);
    }

    /// A driver thread that unwinds past its containment is replaced.
    #[test]
    fn a_driver_thread_that_dies_is_replaced() {
        let (_tmp, registry) = open();
        let hook = &registry.inner.heartbeats.test.escapes;
        hook.store(1, Ordering::SeqCst);
        let guard = register(&registry, "a", Duration::from_millis(5));
        assert!(eventually(|| renewals(&guard) >= 2));
        assert_eq!(hook.load(Ordering::SeqCst), 0, "the first driver died");
        assert!(registry.inner.heartbeats.lock().running);
    }

    /// A tracing subscriber that panics on every event of this crate (only:
    /// wasmtime's own events are not what is tested).
    struct Panicking;

    impl tracing::Subscriber for Panicking {
        fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
            meta.target().starts_with("agentmux_registry")
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {
            panic!("test: the subscriber panics");
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// Issue: a tracing subscriber that panicked while the driver logged
    /// killed the driver. The driver thread logs to the global subscriber,
    /// so this runs alone in a child process of the test binary.
    #[test]
    fn a_panicking_subscriber_does_not_stop_the_heartbeat() {
        const CHILD: &str = "AGENTMUX_TEST_PANICKING_SUBSCRIBER";
        if std::env::var_os(CHILD).is_some() {
            tracing::subscriber::set_global_default(Panicking).unwrap();
            with_a_panicking_subscriber();
            return;
        }
        let name = "heartbeat::tests::a_panicking_subscriber_does_not_stop_the_heartbeat";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn with_a_panicking_subscriber() {
        let (_tmp, registry) = open();
        let guard = register(&registry, "a", Duration::from_millis(5));
        // Each restore logs, and so panics in the subscriber: the entry must
        // come back every time.
        for round in 0..3 {
            assert!(block_on(registry.remove("a")).unwrap(), "round {round}");
            assert!(
                eventually(|| block_on(registry.lookup("a")).unwrap().is_some()),
                "round {round}: restored"
            );
        }
        // Superseding logs too: it is still recorded.
        block_on(registry.write(EntryFields {
            agent_id: "a".into(),
            local_url: "http://127.0.0.1:2".into(),
            block_id: "b".into(),
            pid: 1,
            auth_key: "successor".into(),
            ..EntryFields::default()
        }))
        .unwrap();
        assert!(eventually(|| guard.is_superseded()));
        // Dropping logs nothing here, but must not panic either way.
        drop(guard);
        let left = block_on(registry.lookup("a")).unwrap().unwrap();
        assert_eq!(left.auth_key, "successor");
    }
}
