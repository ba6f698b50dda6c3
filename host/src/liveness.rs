//! Whether an entry's owning process is still running: an OS fact WASI cannot
//! express, so the host decides it.
//!
//! A pid alone is not enough: after the owner dies its pid can be reused by an
//! unrelated process. Entries therefore record the owner's start time
//! (`pid_started`, on Linux field 22 of `/proc/{pid}/stat`), and a process
//! only counts as the owner if it has the same pid *and* start time.

use crate::AgentEntry;

/// What is known about an entry's owning process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// A process with the entry's pid (and start time, when recorded) runs.
    Alive,
    /// No such process runs: the pid is free, or now belongs to a process
    /// that started at a different time.
    Dead,
    /// It cannot be told here (another OS, or no permission to look).
    Unknown,
}

/// When process `pid` started, in the OS's own units (Linux: clock ticks
/// after boot). `None` when the process does not exist or it cannot be read.
pub fn process_start(pid: u32) -> Option<u64> {
    // This process's own start time never changes: read it once.
    static OWN: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    if pid == std::process::id() {
        return *OWN.get_or_init(|| read_process_start(pid));
    }
    read_process_start(pid)
}

fn read_process_start(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ...`: comm may hold spaces and parentheses, so
        // count fields from the last `)`. starttime is field 22 overall,
        // the 20th after the comm.
        let after_comm = &stat[stat.rfind(')')? + 1..];
        after_comm.split_whitespace().nth(19)?.parse().ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// Whether the process that wrote `entry` still runs.
pub fn owner_liveness(entry: &AgentEntry) -> Liveness {
    if entry.pid == 0 {
        return Liveness::Unknown;
    }
    #[cfg(target_os = "linux")]
    {
        match (process_start(entry.pid), entry.pid_started) {
            (None, _) => {
                if std::path::Path::new("/proc/self/stat").exists() {
                    Liveness::Dead
                } else {
                    Liveness::Unknown
                }
            }
            (Some(now), Some(recorded)) if now != recorded => Liveness::Dead,
            (Some(_), _) => Liveness::Alive,
        }
    }
    #[cfg(all(unix, not(target_os = "linux")))]
    {
        // Signal 0 checks existence only; a reused pid cannot be told apart.
        let Some(pid) = rustix::process::Pid::from_raw(entry.pid as i32) else {
            return Liveness::Unknown;
        };
        match rustix::process::test_kill_process(pid) {
            Ok(()) => Liveness::Alive,
            Err(rustix::io::Errno::SRCH) => Liveness::Dead,
            Err(_) => Liveness::Unknown,
        }
    }
    #[cfg(not(unix))]
    {
        Liveness::Unknown
    }
}

/// Whether to remove `entry` after a forward to it failed.
///
/// - The owner is dead: yes. Its entry can only send more forwards nowhere.
/// - The owner is alive: no. The failure is passing (busy, restarting its
///   listener), and a live owner removes its own entries when it exits.
/// - Unknown (no way to tell on this OS): yes, unless the entry was written
///   within `grace`. A just-registered owner may not be listening yet.
pub fn should_evict_after_failed_forward(entry: &AgentEntry, grace: std::time::Duration) -> bool {
    match owner_liveness(entry) {
        Liveness::Dead => true,
        Liveness::Alive => false,
        Liveness::Unknown => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            now_ms.saturating_sub(entry.updated_at) > grace.as_millis() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pid: u32, pid_started: Option<u64>) -> AgentEntry {
        AgentEntry {
            agent_id: "a".into(),
            local_url: "u".into(),
            block_id: "b".into(),
            pid,
            updated_at: 0,
            auth_key: String::new(),
            pid_started,
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = std::process::id();
        let started = process_start(me).expect("own start time");
        assert_eq!(owner_liveness(&entry(me, Some(started))), Liveness::Alive);
        assert_eq!(
            owner_liveness(&entry(me, None)),
            Liveness::Alive,
            "old entries: pid only"
        );
        assert_eq!(
            owner_liveness(&entry(me, Some(started + 1))),
            Liveness::Dead,
            "same pid, other process"
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn an_exited_process_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(owner_liveness(&entry(pid, None)), Liveness::Dead);
    }
}
