//! Whether an entry's owning process is still running: an OS fact WASI cannot
//! express, so the host decides it.
//!
//! A pid alone is not enough: after the owner dies its pid can be reused by an
//! unrelated process. Entries therefore record the owner's start time
//! (`pid_started`), and a process only counts as the owner if it has the same
//! pid *and* start time. The answer is [`Liveness::Dead`] only when it can be
//! proven; whatever this process cannot see is [`Liveness::Unknown`]:
//!
//! - **Linux**: start time is field 22 of `/proc/{pid}/stat`. Entries also
//!   record the writer's pid namespace (`pid_ns`, the inode of
//!   `/proc/self/ns/pid`). An owner is judged only when its entry names this
//!   process's namespace, `/proc` shows this namespace, and `/proc` does not
//!   hide processes (`hidepid`, `subset=pid`). Old entries without `pid_ns`
//!   are Unknown. `/proc` reports start times on the *reader's* boot-time
//!   clock, which a time namespace offsets (containers, CRIU restores), so
//!   start times are compared only when this process and the owner are in
//!   one time namespace; otherwise a running process with the owner's pid is
//!   Unknown. (The owner's namespace stands in for that of the writer, which
//!   entries do not record: they are the same process for a [`Registration`].)
//! - **Windows**: the process creation time (`GetProcessTimes`, 100 ns units).
//! - **macOS**: the start time from `proc_pidinfo` (microseconds since the
//!   epoch). Written for macOS but not built or tested by this project's CI,
//!   which cannot build for Apple targets.
//! - **Elsewhere**: Unknown.

#[cfg(doc)]
use crate::Registration;
use crate::{AgentEntry, Graded, Health};

/// What is known about an entry's owning process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// A process with the entry's pid (and start time, when recorded) runs.
    Alive,
    /// Provably no such process runs: the pid is free, or now belongs to a
    /// process that started at a different time.
    Dead,
    /// It cannot be told here: another OS, another pid namespace, hidden
    /// processes, no permission to look, or an unknown pid (0).
    Unknown,
}

/// When process `pid` started, in the OS's own units. `None` when the process
/// does not exist or it cannot be read.
pub fn process_start(pid: u32) -> Option<u64> {
    // This process's own start time never changes: read it once.
    static OWN: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    if pid == std::process::id() {
        return *OWN.get_or_init(|| os::process_start(pid));
    }
    os::process_start(pid)
}

/// The pid namespace this process lives in (Linux: the inode of
/// `/proc/self/ns/pid`); `None` where there is no such notion or it cannot be
/// read.
pub fn pid_namespace() -> Option<u64> {
    static OWN: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *OWN.get_or_init(os::pid_namespace)
}

/// Whether this process reads `pid`'s start time on the clock `pid` itself
/// does (Linux: the same time namespace), so that a start time recorded here
/// can be compared later by a reader in the owner's namespace.
pub(crate) fn shares_clock_with(pid: u32) -> bool {
    os::shares_clock_with(pid)
}

/// Whether the process that wrote `entry` still runs.
pub fn owner_liveness(entry: &AgentEntry) -> Liveness {
    if entry.pid == 0 || !os::can_judge(entry) {
        return Liveness::Unknown;
    }
    match (
        os::exists(entry.pid),
        process_start(entry.pid),
        entry.pid_started,
    ) {
        (Some(false), _, _) => Liveness::Dead,
        // Read on different clocks, two start times prove nothing either way.
        (_, Some(_), Some(_)) if !os::shares_clock_with(entry.pid) => Liveness::Unknown,
        (_, Some(now), Some(recorded)) if now != recorded => Liveness::Dead,
        (Some(true), _, _) => Liveness::Alive,
        (None, Some(_), _) => Liveness::Alive,
        (None, None, _) => Liveness::Unknown,
    }
}

/// `entry`'s health now: [`Health::Dead`] when its owner is provably dead
/// ([`owner_liveness`]), else graded by its age against its recorded beat
/// interval (see [`Health::grade`]).
pub fn health(entry: &AgentEntry) -> Health {
    health_at(entry, now_ms())
}

/// `entry` with its [`health`] now.
pub fn graded(entry: AgentEntry) -> Graded {
    let health = health(&entry);
    Graded { entry, health }
}

/// `entry`'s health at `now_ms` (Unix milliseconds), its owner's liveness as
/// it is now: for a caller that keeps its own clock.
pub fn health_at(entry: &AgentEntry, now_ms: u64) -> Health {
    Health::grade(entry, now_ms, owner_liveness(entry) == Liveness::Dead)
}

/// The wall clock in Unix milliseconds (0 before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(target_os = "linux")]
mod os {
    use std::os::unix::fs::MetadataExt;

    use crate::AgentEntry;

    pub(super) fn process_start(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ...`: comm may hold spaces and parentheses, so
        // count fields from the last `)`. starttime is field 22 overall,
        // the 20th after the comm.
        let after_comm = &stat[stat.rfind(')')? + 1..];
        after_comm.split_whitespace().nth(19)?.parse().ok()
    }

    pub(super) fn pid_namespace() -> Option<u64> {
        std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
    }

    /// Whether `/proc` can prove absence for `entry`'s owner.
    pub(super) fn can_judge(entry: &AgentEntry) -> bool {
        static PROC_USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let here = super::pid_namespace();
        here.is_some()
            && entry.pid_namespace == here
            && *PROC_USABLE.get_or_init(|| proc_is_ours() && !proc_hides_processes())
    }

    /// `/proc` is mounted for this pid namespace: `/proc/self` is this process.
    fn proc_is_ours() -> bool {
        std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse::<u32>().ok())
            == Some(std::process::id())
    }

    /// `/proc` hides other users' processes or all but this one's.
    fn proc_hides_processes() -> bool {
        match std::fs::read_to_string("/proc/self/mountinfo") {
            Ok(mounts) => mountinfo_hides_processes(&mounts),
            Err(_) => true,
        }
    }

    /// Whether a `/proc/self/mountinfo` text mounts `/proc` with an option
    /// that hides processes (`hidepid=1|2|noaccess|invisible`, `subset=pid`).
    pub(super) fn mountinfo_hides_processes(mounts: &str) -> bool {
        mounts.lines().any(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                return false;
            };
            fields.get(4) == Some(&"/proc")
                && fields.get(sep + 1) == Some(&"proc")
                && fields.get(sep + 3).is_some_and(|opts| {
                    opts.split(',').any(|o| {
                        (o.starts_with("hidepid=") && o != "hidepid=0" && o != "hidepid=off")
                            || o == "subset=pid"
                    })
                })
        })
    }

    /// Whether this process reads start times from `/proc/{pid}/stat` on
    /// `pid`'s own clock. The kernel adds the reader's boot-time offset (its
    /// time namespace's) to every start time it reports, so a recorded start
    /// time and one read now compare only if both were read in the owner's
    /// time namespace: writers record one only then, and readers compare
    /// only then.
    pub(super) fn shares_clock_with(pid: u32) -> bool {
        static OWN: std::sync::OnceLock<Result<Option<u64>, ()>> = std::sync::OnceLock::new();
        match *OWN.get_or_init(|| time_namespace("self")) {
            // A kernel without time namespaces has one boot-time clock.
            Ok(None) => true,
            Ok(Some(_)) if pid == std::process::id() => true,
            // Unreadable (another user's process, no permission) or another
            // namespace: not comparable.
            Ok(Some(here)) => time_namespace(&pid.to_string()) == Ok(Some(here)),
            Err(()) => false,
        }
    }

    /// The time namespace of `/proc/{who}` (the inode of its `ns/time`);
    /// `Ok(None)` when there is no such link (kernels before 5.6, or without
    /// `CONFIG_TIME_NS`, or the process is gone).
    fn time_namespace(who: &str) -> Result<Option<u64>, ()> {
        match std::fs::metadata(format!("/proc/{who}/ns/time")) {
            Ok(m) => Ok(Some(m.ino())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(_) => Err(()),
        }
    }

    pub(super) fn exists(pid: u32) -> Option<bool> {
        match std::fs::symlink_metadata(format!("/proc/{pid}")) {
            Ok(_) => Some(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(false),
            Err(_) => None,
        }
    }
}

#[cfg(windows)]
mod os {
    use windows_sys::Win32::Foundation::{
        CloseHandle, ERROR_INVALID_PARAMETER, FILETIME, WAIT_OBJECT_0, WAIT_TIMEOUT,
    };
    use windows_sys::Win32::System::Threading::{
        GetProcessTimes, OpenProcess, WaitForSingleObject, PROCESS_QUERY_LIMITED_INFORMATION,
        PROCESS_SYNCHRONIZE,
    };

    use crate::AgentEntry;

    /// A handle to process `pid`, or the OS error code.
    fn open(pid: u32) -> Result<windows_sys::Win32::Foundation::HANDLE, u32> {
        // SAFETY: OpenProcess has no preconditions; a null result is an error.
        let access = PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_SYNCHRONIZE;
        let handle = unsafe { OpenProcess(access, 0, pid) };
        if handle.is_null() {
            // SAFETY: reads the calling thread's last error.
            Err(unsafe { windows_sys::Win32::Foundation::GetLastError() })
        } else {
            Ok(handle)
        }
    }

    pub(super) fn process_start(pid: u32) -> Option<u64> {
        let handle = open(pid).ok()?;
        let zero = FILETIME {
            dwLowDateTime: 0,
            dwHighDateTime: 0,
        };
        let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
        // SAFETY: `handle` is open; the out-pointers are valid FILETIMEs.
        let ok =
            unsafe { GetProcessTimes(handle, &mut created, &mut exited, &mut kernel, &mut user) };
        // SAFETY: `handle` was opened above and is closed once.
        unsafe { CloseHandle(handle) };
        (ok != 0)
            .then(|| (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
    }

    pub(super) fn pid_namespace() -> Option<u64> {
        None
    }

    pub(super) fn can_judge(_entry: &AgentEntry) -> bool {
        true
    }

    /// Start times here are absolute: there is one clock to read them on.
    pub(super) fn shares_clock_with(_pid: u32) -> bool {
        true
    }

    /// Whether process `pid` runs. A process that exited stays openable while
    /// anyone holds a handle to it (its parent, say), so an open process is
    /// asked whether it has exited: signalled means it has.
    pub(super) fn exists(pid: u32) -> Option<bool> {
        match open(pid) {
            Ok(handle) => {
                // SAFETY: `handle` is open with SYNCHRONIZE; a zero timeout
                // only polls.
                let state = unsafe { WaitForSingleObject(handle, 0) };
                // SAFETY: `handle` was just opened and is closed once.
                unsafe { CloseHandle(handle) };
                match state {
                    WAIT_TIMEOUT => Some(true),
                    WAIT_OBJECT_0 => Some(false),
                    _ => None,
                }
            }
            // The pid names no process.
            Err(ERROR_INVALID_PARAMETER) => Some(false),
            // Access denied and the like: it exists, or cannot be told.
            Err(_) => None,
        }
    }
}

#[cfg(target_os = "macos")]
mod os {
    use crate::AgentEntry;

    pub(super) fn process_start(pid: u32) -> Option<u64> {
        // SAFETY: proc_pidinfo writes at most `size` bytes into `info`.
        let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
        let got = unsafe {
            libc::proc_pidinfo(
                pid as libc::c_int,
                libc::PROC_PIDTBSDINFO,
                0,
                (&mut info as *mut libc::proc_bsdinfo).cast(),
                size,
            )
        };
        (got == size).then(|| info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec)
    }

    pub(super) fn pid_namespace() -> Option<u64> {
        None
    }

    pub(super) fn can_judge(_entry: &AgentEntry) -> bool {
        true
    }

    /// Start times here are absolute: there is one clock to read them on.
    pub(super) fn shares_clock_with(_pid: u32) -> bool {
        true
    }

    pub(super) fn exists(pid: u32) -> Option<bool> {
        let pid = rustix::process::Pid::from_raw(pid as i32)?;
        match rustix::process::test_kill_process(pid) {
            Ok(()) | Err(rustix::io::Errno::PERM) => Some(true),
            Err(rustix::io::Errno::SRCH) => Some(false),
            Err(_) => None,
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
mod os {
    use crate::AgentEntry;

    pub(super) fn process_start(_pid: u32) -> Option<u64> {
        None
    }

    pub(super) fn pid_namespace() -> Option<u64> {
        None
    }

    pub(super) fn can_judge(_entry: &AgentEntry) -> bool {
        false
    }

    pub(super) fn shares_clock_with(_pid: u32) -> bool {
        false
    }

    pub(super) fn exists(_pid: u32) -> Option<bool> {
        None
    }
}

/// Whether to remove `entry` after a forward to it failed: when its owner is
/// provably dead, or the entry was written more than `grace` ago, whether
/// the owner is alive or cannot be told.
///
/// An owner process that is alive proves nothing about the agent: the pid is
/// the whole server process, shared by all its agents, so an agent that died
/// inside a live server would otherwise linger for ever. The grace covers an
/// agent just registered whose controller is not listening yet; a live
/// agent's heartbeat (more often than `grace`) keeps its entry younger than
/// that, and restores it within one beat if it was evicted by a passing
/// failure. agentmux-srv uses 60 s with 20 s heartbeats
/// ([`crate::compat::FORWARD_FAILURE_GRACE_MS`]).
///
/// An entry that records no pid namespace (every entry agentmux-srv writes)
/// is judged as agentmux-srv judges it: as if its pid were of this host's
/// namespace, so a pid no process here has is dead. Wrong only for an owner
/// in another namespace, whose forward just failed anyway, and whose
/// heartbeat writes its entry again.
pub fn should_evict_after_failed_forward(entry: &AgentEntry, grace: std::time::Duration) -> bool {
    let judged = if entry.pid_namespace.is_none() {
        owner_liveness(&AgentEntry {
            pid_namespace: pid_namespace(),
            ..entry.clone()
        })
    } else {
        owner_liveness(entry)
    };
    if judged == Liveness::Dead {
        return true;
    }
    now_ms().saturating_sub(entry.updated_at) > grace.as_millis() as u64
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
            pid_namespace: pid_namespace(),
            ..AgentEntry::default()
        }
    }

    #[cfg(any(target_os = "linux", windows))]
    fn exited_pid() -> u32 {
        let mut child = std::process::Command::new(if cfg!(windows) { "cmd" } else { "true" })
            .args(if cfg!(windows) {
                &["/C", "exit"][..]
            } else {
                &[][..]
            })
            .spawn()
            .unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    #[cfg(any(target_os = "linux", windows))]
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

    /// Start times of other processes in this time namespace are still
    /// compared: a reused pid is Dead, the owner Alive.
    #[test]
    #[cfg(target_os = "linux")]
    fn another_process_in_this_time_namespace_is_judged_by_start_time() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let started = process_start(pid).expect("the child's start time");
        let alive = owner_liveness(&entry(pid, Some(started)));
        let reused = owner_liveness(&entry(pid, Some(started + 1)));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(alive, Liveness::Alive);
        assert_eq!(reused, Liveness::Dead);
    }

    #[test]
    #[cfg(any(target_os = "linux", windows))]
    fn an_exited_process_is_dead() {
        assert_eq!(owner_liveness(&entry(exited_pid(), None)), Liveness::Dead);
    }

    #[test]
    fn an_unknown_pid_is_never_dead() {
        assert_eq!(owner_liveness(&entry(0, None)), Liveness::Unknown);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn hidden_proc_mounts_are_recognised() {
        let line = |opts: &str| {
            format!(
                "22 26 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc {opts}\n"
            )
        };
        let other = "23 26 0:5 / /dev rw shared:2 - devtmpfs udev rw,hidepid=2\n";
        for hidden in [
            "rw,hidepid=2",
            "rw,hidepid=invisible",
            "rw,hidepid=1",
            "rw,subset=pid",
            "rw,hidepid=noaccess",
        ] {
            assert!(
                os::mountinfo_hides_processes(&(other.to_owned() + &line(hidden))),
                "{hidden}"
            );
        }
        for visible in ["rw", "rw,hidepid=0", "rw,hidepid=off", "rw,gid=5"] {
            assert!(
                !os::mountinfo_hides_processes(&(other.to_owned() + &line(visible))),
                "{visible}"
            );
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn an_owner_in_another_or_unrecorded_pid_namespace_is_unknown() {
        let dead = exited_pid();
        let other_ns = AgentEntry {
            pid_namespace: pid_namespace().map(|ns| ns + 1),
            ..entry(dead, None)
        };
        assert_eq!(owner_liveness(&other_ns), Liveness::Unknown);
        let unrecorded = AgentEntry {
            pid_namespace: None,
            ..entry(dead, None)
        };
        assert_eq!(owner_liveness(&unrecorded), Liveness::Unknown);
    }
}
