//! One heartbeat driver per [`Registry`]: a single thread that renews every
//! live [`crate::Registration`] of that registry when it is due, whatever
//! their number. It runs while at least one registration exists.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::blocking::block_on;
use crate::{EntryFields, Registry, Renewal};

/// One registration's heartbeat.
pub(crate) struct Beat {
    pub(crate) fields: EntryFields,
    pub(crate) interval: Duration,
    /// Held while renewing, so that ending a registration waits for a
    /// renewal in flight (which could otherwise restore a removed entry).
    pub(crate) state: Mutex<BeatState>,
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
        let agent_id = &self.fields.agent_id;
        match block_on(registry.renew(self.fields.clone())) {
            Ok(Renewal::Refreshed) => true,
            Ok(Renewal::Restored) => {
                tracing::info!(agent_id, "registry entry was missing: restored it");
                true
            }
            Ok(Renewal::Superseded) => {
                tracing::info!(
                    agent_id,
                    "another registration owns the agent id now: heartbeat stopped"
                );
                state.active = false;
                state.superseded = true;
                false
            }
            // A passing failure: try again next beat.
            Err(e) => {
                tracing::warn!(agent_id, "heartbeat failed: {e}");
                true
            }
        }
    }
}

/// The set of heartbeats one registry drives.
#[derive(Default)]
pub(crate) struct Heartbeats {
    state: Mutex<Schedule>,
    wake: Condvar,
}

#[derive(Default)]
struct Schedule {
    beats: Vec<(Arc<Beat>, Instant)>,
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
        let due = Instant::now() + beat.interval;
        schedule.beats.push((beat, due));
        if !schedule.running {
            let driver = registry.clone();
            std::thread::Builder::new()
                // Short enough for Linux thread names (15 bytes).
                .name("agentmux-beat".into())
                .spawn(move || drive(driver))?;
            schedule.running = true;
        }
        self.wake.notify_all();
        Ok(())
    }

    /// Stops driving `beat`.
    pub(crate) fn remove(&self, beat: &Arc<Beat>) {
        self.lock().beats.retain(|(b, _)| !Arc::ptr_eq(b, beat));
        self.wake.notify_all();
    }

    /// How many heartbeats are driven (for tests and diagnostics).
    pub(crate) fn len(&self) -> usize {
        self.lock().beats.len()
    }
}

/// The driver thread: sleeps until the earliest beat is due, renews every due
/// beat, and exits (dropping its registry handle) once no beat is left.
fn drive(registry: Registry) {
    let heartbeats = &registry.inner.heartbeats;
    loop {
        let due: Vec<Arc<Beat>> = {
            let mut schedule = heartbeats.lock();
            loop {
                let Some(next) = schedule.beats.iter().map(|(_, at)| *at).min() else {
                    schedule.running = false;
                    return;
                };
                let now = Instant::now();
                if next <= now {
                    break;
                }
                schedule = heartbeats
                    .wake
                    .wait_timeout(schedule, next - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let now = Instant::now();
            schedule
                .beats
                .iter()
                .filter(|(_, at)| *at <= now)
                .map(|(beat, _)| beat.clone())
                .collect()
        };
        for beat in due {
            let keep = beat.renew(&registry);
            let mut schedule = heartbeats.lock();
            if keep {
                let next = Instant::now() + beat.interval;
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
