//! [`Registration`]: an agent's entry for as long as the guard lives.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::blocking::block_on;
use crate::heartbeat::{log, Beat};
use crate::{AgentEntry, EntryFields, Error, Owner, Registry};

/// Keeps one agent registered by this process.
///
/// Each registration has its own nonce, stored in its entry
/// (`registration_nonce`), so two registrations of one id, even by one
/// process, are never confused, and agentmux-srv's `remove_if_nonce` leaves
/// it alone (see [`Registration::nonce`]).
/// Every heartbeat interval the registry's heartbeat driver renews the entry
/// in one atomic component call: refreshes it while it is this
/// registration's, restores it if it went missing (swept while the process
/// stalled, or removed by hand), and stops for good only when another
/// registration owns the id. Dropping the guard, or
/// [unregistering](Registration::unregister), removes the entry only if it is
/// still this registration's.
///
/// One driver thread per [`Registry`] serves all its registrations, so the
/// guard works inside any tokio runtime or none. A renewal that panics (in a
/// tracing subscriber, say) is contained and tried again next interval; the
/// driver itself resumes after any panic. Sweep with a maximum age of at
/// least three heartbeat intervals.
pub struct Registration {
    registry: Registry,
    entry: AgentEntry,
    pub(crate) beat: Arc<Beat>,
    /// False once [`Registration::unregister`] has run.
    registered: bool,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("agent_id", &self.entry.agent_id)
            .field("registration_nonce", &self.entry.registration_nonce)
            .finish_non_exhaustive()
    }
}

/// A nonce no other registration has: 52 random bits from the OS-seeded
/// hasher keys std keeps per thread (fresh for every `RandomState`), mixed
/// with a process-wide counter, the pid and the time, above bit 52. So every
/// nonce is in [2^52, 2^53): never 0, never one of the small numbers
/// agentmux-srv's process-wide counter hands out, and exact as a JSON number
/// in every language (JavaScript's included).
fn new_nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(n);
    h.write_u32(std::process::id());
    h.write_u64(nanos);
    const LOW_52: u64 = (1 << 52) - 1;
    (1 << 52) | (h.finish() & LOW_52)
}

impl Registration {
    /// Registers `fields.agent_id` as owned by this process: `fields.pid` is
    /// set to this process's id, `fields.registration_nonce` to a new nonce
    /// and `fields.beat_interval_ms` to `heartbeat`, so that every reader
    /// can grade the entry's [`Health`](crate::Health).
    /// The entry is renewed every `heartbeat`. Any interval is accepted: one
    /// too long for the clock to reach (`Duration::MAX`) never comes due.
    pub async fn register(
        registry: &Registry,
        fields: EntryFields,
        heartbeat: Duration,
    ) -> Result<Registration, Error> {
        let heartbeat = heartbeat.max(Duration::from_millis(1));
        let fields = EntryFields {
            pid: std::process::id(),
            registration_nonce: new_nonce(),
            // Rounded up: a reader never counts a beat missed too early. A
            // beat longer than readers count is no schedule to record.
            beat_interval_ms: u64::try_from(heartbeat.as_nanos().div_ceil(1_000_000))
                .ok()
                .filter(|ms| *ms <= agentmux_registry_core::health::MAX_BEAT_INTERVAL_MS),
            ..fields
        };
        let entry = registry.write(fields).await?;
        // Renew with what was stored, owner facts included.
        let fields = entry.fields();
        let beat = Beat::new(fields, heartbeat);
        let guard = Registration {
            registry: registry.clone(),
            entry,
            beat: beat.clone(),
            registered: true,
        };
        registry
            .inner
            .heartbeats
            .add(registry, beat)
            .map_err(|e| Error::Thread {
                thread: "heartbeat driver",
                source: std::sync::Arc::new(e),
            })?;
        Ok(guard)
    }

    /// The entry as first written.
    pub fn entry(&self) -> &AgentEntry {
        &self.entry
    }

    /// This registration's nonce, as stored in its entry
    /// (`registration_nonce`): in [2^52, 2^53), so it never equals a nonce
    /// agentmux-srv's counter hands out, and unique to this registration.
    pub fn nonce(&self) -> u64 {
        self.entry.registration_nonce
    }

    /// True once another registration took the id over; the heartbeat has
    /// stopped and dropping the guard will leave that registration alone.
    pub fn is_superseded(&self) -> bool {
        self.beat.lock().superseded
    }

    /// Stops the heartbeat and removes the entry if it is still this
    /// registration's; true when it was removed.
    pub async fn unregister(mut self) -> Result<bool, Error> {
        self.stop_heartbeat();
        self.registered = false;
        self.registry
            .remove_owned(&self.entry.agent_id, &Owner::of(&self.entry))
            .await
    }

    /// Test hook: how many renewals of this registration the heartbeat
    /// driver has finished, whatever their outcome. Lets tests wait for
    /// beats instead of sleeping.
    #[doc(hidden)]
    pub fn renewals(&self) -> u64 {
        self.registry.inner.heartbeats.renewals(&self.beat)
    }

    /// Test hook: waits until the driver has finished `n` renewals of this
    /// registration, its heartbeat has stopped (superseded or ended), or
    /// `within` has passed; returns [`Registration::renewals`].
    #[doc(hidden)]
    pub fn wait_for_renewals(&self, n: u64, within: Duration) -> u64 {
        self.registry
            .inner
            .heartbeats
            .wait_for_renewals(&self.beat, n, within)
    }

    /// Test hook: has the driver renew this registration now, out of
    /// schedule, and waits until a renewal that began after this call has
    /// finished, or the heartbeat has stopped (superseded or ended). False
    /// only when `within` passed first. The next scheduled renewal comes one
    /// interval after this one.
    #[doc(hidden)]
    pub fn beat_now(&self, within: Duration) -> bool {
        self.registry.inner.heartbeats.beat_now(&self.beat, within)
    }

    /// Ends the heartbeat, waiting for a renewal in flight.
    fn stop_heartbeat(&mut self) {
        self.beat.lock().active = false;
        self.registry.inner.heartbeats.remove(&self.beat);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.stop_heartbeat();
        if self.registered {
            let owner = Owner::of(&self.entry);
            let result = block_on(self.registry.remove_owned(&self.entry.agent_id, &owner));
            if let Err(e) = result {
                // A panicking subscriber must not turn a drop into a panic.
                log(
                    || tracing::warn!(agent_id = %self.entry.agent_id, "removing the registration failed: {}", e.with_causes()),
                );
            }
        }
    }
}

impl Registry {
    /// How many registrations this registry's heartbeat driver serves.
    pub fn heartbeat_count(&self) -> usize {
        self.inner.heartbeats.len()
    }
}
