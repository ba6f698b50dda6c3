//! OS notifications that prompt a watch's rescan where they cannot be
//! followed exactly: `ReadDirectoryChangesW` on Windows, `kqueue` on macOS.
//!
//! They only say *that* something under the agents directory changed; the
//! watch then rescans, so what it reports is always a full comparison.
//! Whatever they do not deliver (an overflowed buffer, a replaced
//! directory, a network file system) the watch's rescan every interval
//! still catches.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
#[cfg(any(windows, target_os = "macos"))]
use std::time::Duration;

use crate::watch::Stop;

/// How often a notifier thread looks whether its watch was stopped.
#[cfg(any(windows, target_os = "macos"))]
const STOP_CHECK: Duration = Duration::from_millis(200);

/// A thread nudging a watch's [`Stop`] whenever the OS notifies a change
/// under the agents directory. It ends when the watch is stopped or the
/// notifier dropped.
pub(crate) struct Notifier {
    state: Arc<Shared>,
}

/// What the notifier's thread and its owner share.
#[derive(Default)]
pub(crate) struct Shared {
    /// Set when the owner drops the notifier: the thread ends.
    quit: AtomicBool,
    /// True until the thread ends, on an error or when told to.
    running: AtomicBool,
    /// Whether the OS still notifies: false once the thread ended.
    active: AtomicBool,
}

impl Shared {
    #[cfg_attr(not(any(windows, target_os = "macos")), allow(dead_code))]
    fn ends(&self, stop: &Stop) -> bool {
        self.quit.load(Ordering::Relaxed) || stop.is_stopped()
    }
}

impl Notifier {
    /// Starts notifications for `dir` (and, where `subdirectories`, the
    /// directories in it); returns once they are armed, so that every change
    /// made after this returns is notified. `None` where the OS gives none
    /// or they cannot be had here (the reason is logged).
    pub(crate) fn start(dir: &Path, subdirectories: bool, stop: &Arc<Stop>) -> Option<Notifier> {
        let state = Arc::new(Shared {
            running: AtomicBool::new(true),
            active: AtomicBool::new(true),
            ..Shared::default()
        });
        match os::start(dir, subdirectories, stop.clone(), state.clone()) {
            Ok(()) => Some(Notifier { state }),
            Err(why) if why.kind() == std::io::ErrorKind::Unsupported => None,
            Err(why) => {
                tracing::warn!(
                    "agentmux-registry: no OS notifications for {}, rescans only: {why}",
                    dir.display()
                );
                None
            }
        }
    }

    /// Whether the OS still notifies.
    pub(crate) fn is_active(&self) -> bool {
        self.state.active.load(Ordering::Relaxed)
    }

    /// The shared state, to see when the thread has ended.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.state.clone()
    }
}

impl Shared {
    /// Whether the notifier's thread still runs.
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.state.quit.store(true, Ordering::Relaxed);
    }
}

/// Runs the notifier's thread: `arm` opens and arms what the OS notifies
/// through (on the thread, since Windows cancels a thread's requests when it
/// exits), `follow` waits for notifications and nudges. Returns once armed.
#[cfg(any(windows, target_os = "macos"))]
fn spawn<W: 'static>(
    dir: &Path,
    stop: Arc<Stop>,
    state: Arc<Shared>,
    arm: impl FnOnce() -> std::io::Result<W> + Send + 'static,
    follow: impl FnOnce(W, &Stop, &Shared) -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<()> {
    let (armed_tx, armed) = std::sync::mpsc::sync_channel(1);
    let dir = dir.to_path_buf();
    let thread_state = state.clone();
    std::thread::Builder::new()
        .name("agentmux-registry notifications".into())
        .spawn(move || {
            let state = thread_state;
            let ended = match arm() {
                Ok(watched) => {
                    let _ = armed_tx.send(Ok(()));
                    follow(watched, &stop, &state)
                }
                Err(why) => {
                    let _ = armed_tx.send(Err(why));
                    Ok(())
                }
            };
            state.active.store(false, Ordering::Relaxed);
            if let Err(why) = ended {
                // Whatever ended it may have been a change: rescan.
                stop.nudge();
                tracing::warn!(
                    "agentmux-registry: OS notifications for {} ended, rescans only: {why}",
                    dir.display()
                );
            }
            state.running.store(false, Ordering::Relaxed);
        })?;
    armed.recv().unwrap_or_else(|_| {
        Err(std::io::Error::other(
            "the notification thread ended before it armed",
        ))
    })
}

#[cfg(not(any(windows, target_os = "macos")))]
mod os {
    use super::*;

    pub(super) fn start(_: &Path, _: bool, _: Arc<Stop>, _: Arc<Shared>) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "no directory notifications on this OS",
        ))
    }
}

#[cfg(windows)]
mod os {
    use super::*;
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Foundation::{
        CloseHandle, ERROR_NOTIFY_ENUM_DIR, FALSE, HANDLE, INVALID_HANDLE_VALUE, TRUE,
        WAIT_OBJECT_0, WAIT_TIMEOUT,
    };
    use windows_sys::Win32::Storage::FileSystem::{
        CreateFileW, ReadDirectoryChangesW, FILE_FLAG_BACKUP_SEMANTICS, FILE_FLAG_OVERLAPPED,
        FILE_LIST_DIRECTORY, FILE_NOTIFY_CHANGE_DIR_NAME, FILE_NOTIFY_CHANGE_FILE_NAME,
        FILE_NOTIFY_CHANGE_LAST_WRITE, FILE_NOTIFY_CHANGE_SIZE, FILE_SHARE_DELETE, FILE_SHARE_READ,
        FILE_SHARE_WRITE, OPEN_EXISTING,
    };
    use windows_sys::Win32::System::Threading::{CreateEventW, WaitForSingleObject};
    use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};

    /// The notification buffer: the largest a network share accepts.
    const BUFFER_BYTES: usize = 64 * 1024;

    /// A handle closed when dropped.
    struct Owned(HANDLE);

    impl Drop for Owned {
        fn drop(&mut self) {
            // SAFETY: the handle is open and owned here.
            unsafe { CloseHandle(self.0) };
        }
    }

    /// A directory read for notifications, and the pending request.
    struct Reader {
        dir: Owned,
        event: Owned,
        overlapped: Box<OVERLAPPED>,
        /// `u32`s: the records in it are aligned to 4 bytes.
        buffer: Box<[u32]>,
        subtree: bool,
    }

    // SAFETY: the reader is used by one thread at a time; its handles may
    // be used from any thread, and its OVERLAPPED points only at its own
    // event.
    unsafe impl Send for Reader {}

    impl Reader {
        fn open(dir: &Path, subtree: bool) -> std::io::Result<Reader> {
            let wide: Vec<u16> = dir
                .as_os_str()
                .encode_wide()
                .chain(std::iter::once(0))
                .collect();
            // SAFETY: `wide` is NUL-terminated and outlives the call.
            let handle = unsafe {
                CreateFileW(
                    wide.as_ptr(),
                    FILE_LIST_DIRECTORY,
                    // Others may still rename and remove in it, and the
                    // directory itself.
                    FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                    std::ptr::null(),
                    OPEN_EXISTING,
                    FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OVERLAPPED,
                    std::ptr::null_mut(),
                )
            };
            if handle == INVALID_HANDLE_VALUE {
                return Err(std::io::Error::last_os_error());
            }
            let dir = Owned(handle);
            // SAFETY: no attributes, no name: an unnamed manual-reset event.
            let event = unsafe { CreateEventW(std::ptr::null(), TRUE, FALSE, std::ptr::null()) };
            if event.is_null() {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Reader {
                dir,
                event: Owned(event),
                // SAFETY: an all-zero OVERLAPPED is a valid initial state.
                overlapped: Box::new(unsafe { std::mem::zeroed() }),
                buffer: vec![0u32; BUFFER_BYTES / 4].into_boxed_slice(),
                subtree,
            })
        }

        /// Asks for the next notifications; the system keeps recording
        /// changes between two requests.
        fn request(&mut self) -> std::io::Result<()> {
            // SAFETY: as above.
            *self.overlapped = unsafe { std::mem::zeroed() };
            self.overlapped.hEvent = self.event.0;
            // SAFETY: the buffer and the OVERLAPPED are heap allocations
            // owned by this reader, which waits for (or cancels and waits
            // for) the request before either is freed or reused.
            let requested = unsafe {
                ReadDirectoryChangesW(
                    self.dir.0,
                    self.buffer.as_mut_ptr().cast(),
                    BUFFER_BYTES as u32,
                    if self.subtree { TRUE } else { FALSE },
                    FILE_NOTIFY_CHANGE_FILE_NAME
                        | FILE_NOTIFY_CHANGE_DIR_NAME
                        | FILE_NOTIFY_CHANGE_LAST_WRITE
                        | FILE_NOTIFY_CHANGE_SIZE,
                    std::ptr::null_mut(),
                    &mut *self.overlapped,
                    None,
                )
            };
            if requested == 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        }

        /// Waits up to `timeout` for the pending request; `Ok(false)` when
        /// it is still pending. An overflowed buffer (no records, or
        /// `ERROR_NOTIFY_ENUM_DIR`) counts as a notification too.
        fn wait(&mut self, timeout: Duration) -> std::io::Result<bool> {
            // SAFETY: the event handle is open.
            match unsafe { WaitForSingleObject(self.event.0, timeout.as_millis() as u32) } {
                WAIT_OBJECT_0 => {}
                WAIT_TIMEOUT => return Ok(false),
                _ => return Err(std::io::Error::last_os_error()),
            }
            let mut bytes = 0;
            // SAFETY: the request completed; the OVERLAPPED is its own.
            let done =
                unsafe { GetOverlappedResult(self.dir.0, &*self.overlapped, &mut bytes, FALSE) };
            if done == 0 {
                let error = std::io::Error::last_os_error();
                if error.raw_os_error() != Some(ERROR_NOTIFY_ENUM_DIR as i32) {
                    return Err(error);
                }
            }
            Ok(true)
        }
    }

    impl Drop for Reader {
        fn drop(&mut self) {
            // The system must be done with the buffer before it is freed.
            let mut bytes = 0;
            // SAFETY: cancels this reader's own request, if one is pending,
            // and waits for it to end.
            unsafe {
                CancelIoEx(self.dir.0, &*self.overlapped);
                GetOverlappedResult(self.dir.0, &*self.overlapped, &mut bytes, TRUE);
            }
        }
    }

    pub(super) fn start(
        dir: &Path,
        subdirectories: bool,
        stop: Arc<Stop>,
        state: Arc<Shared>,
    ) -> std::io::Result<()> {
        let opened = dir.to_path_buf();
        let arm = move || {
            let mut reader = Reader::open(&opened, subdirectories)?;
            reader.request()?;
            Ok(reader)
        };
        spawn(dir, stop, state, arm, |mut reader, stop, state| {
            while !state.ends(stop) {
                if reader.wait(STOP_CHECK)? {
                    // Asked again before the rescan starts: nothing after
                    // this notification goes unrecorded.
                    let requested = reader.request();
                    stop.nudge();
                    requested?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(target_os = "macos")]
mod os {
    use super::*;
    use rustix::event::kqueue::{kevent, kqueue, Event, EventFilter, EventFlags, VnodeEvents};
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::DirEntryExt;

    /// Agent directories followed at most: each costs a descriptor, and
    /// macOS gives a process 256 by default. Past this, rescans only.
    const MAX_SUBDIRECTORIES: usize = 128;

    /// A directory opened only to be notified of its changes.
    fn open_for_events(dir: &Path) -> std::io::Result<OwnedFd> {
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
        // SAFETY: a NUL-terminated path; the descriptor returned is owned
        // by the caller.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_EVTONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn vnode_event(fd: &OwnedFd) -> Event {
        Event::new(
            EventFilter::Vnode {
                vnode: fd.as_raw_fd(),
                flags: VnodeEvents::WRITE
                    | VnodeEvents::EXTEND
                    | VnodeEvents::ATTRIBUTES
                    | VnodeEvents::DELETE
                    | VnodeEvents::RENAME
                    | VnodeEvents::REVOKE,
            },
            EventFlags::ADD | EventFlags::CLEAR,
            std::ptr::null_mut(),
        )
    }

    /// The kqueue and the directories registered with it: the agents
    /// directory, and in a shared registry each agent directory in it (by
    /// name, with the inode it had when opened).
    struct Watched {
        queue: OwnedFd,
        dir: std::path::PathBuf,
        top: OwnedFd,
        subdirectories: Option<BTreeMap<OsString, (u64, OwnedFd)>>,
    }

    impl Watched {
        fn register(&self, fd: &OwnedFd) -> std::io::Result<()> {
            let mut none: Vec<Event> = Vec::new();
            // SAFETY: `fd` stays open while registered: it is owned by this
            // struct, and closing it removes its registration.
            unsafe {
                kevent(
                    &self.queue,
                    &[vnode_event(fd)],
                    rustix::buffer::spare_capacity(&mut none),
                    Some(Duration::ZERO),
                )
            }?;
            Ok(())
        }

        /// Registers the agent directories now in the agents directory
        /// (again, where one was replaced), and forgets those that are gone.
        fn follow_subdirectories(&mut self) -> std::io::Result<()> {
            let Some(mut known) = self.subdirectories.take() else {
                return Ok(());
            };
            let mut now = BTreeMap::new();
            for dirent in std::fs::read_dir(&self.dir)? {
                let dirent = dirent?;
                if !dirent.file_type()?.is_dir() {
                    continue;
                }
                let (name, inode) = (dirent.file_name(), dirent.ino());
                let kept = known.remove(&name).filter(|(was, _)| *was == inode);
                let fd = match kept {
                    Some((_, fd)) => fd,
                    None => match open_for_events(&dirent.path()) {
                        Ok(fd) => {
                            self.register(&fd)?;
                            fd
                        }
                        // Removed meanwhile: nothing to follow.
                        Err(e)
                            if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
                        {
                            continue
                        }
                        Err(e) => return Err(e),
                    },
                };
                now.insert(name, (inode, fd));
                if now.len() > MAX_SUBDIRECTORIES {
                    return Err(std::io::Error::other(format!(
                        "more than {MAX_SUBDIRECTORIES} agent directories"
                    )));
                }
            }
            self.subdirectories = Some(now);
            Ok(())
        }
    }

    pub(super) fn start(
        dir: &Path,
        subdirectories: bool,
        stop: Arc<Stop>,
        state: Arc<Shared>,
    ) -> std::io::Result<()> {
        let opened = dir.to_path_buf();
        let arm = move || {
            let mut watched = Watched {
                queue: kqueue()?,
                top: open_for_events(&opened)?,
                dir: opened,
                subdirectories: subdirectories.then(BTreeMap::new),
            };
            watched.register(&watched.top)?;
            watched.follow_subdirectories()?;
            Ok(watched)
        };
        spawn(dir, stop, state, arm, |mut watched, stop, state| {
            let mut events: Vec<Event> = Vec::with_capacity(64);
            while !state.ends(stop) {
                events.clear();
                // SAFETY: every registered descriptor is owned by `watched`,
                // which outlives the queue's use here.
                let waited = unsafe {
                    kevent(
                        &watched.queue,
                        &[],
                        rustix::buffer::spare_capacity(&mut events),
                        Some(STOP_CHECK),
                    )
                };
                match waited {
                    Ok(0) | Err(rustix::io::Errno::INTR) => {}
                    // New agent directories are registered before the rescan
                    // starts, so that none of their changes goes unnoticed.
                    Ok(_) => {
                        let top = watched.top.as_raw_fd();
                        let gone = VnodeEvents::DELETE | VnodeEvents::RENAME | VnodeEvents::REVOKE;
                        let replaced = events.iter().any(|event| {
                            matches!(event.filter(), EventFilter::Vnode { vnode, flags }
                                if vnode == top && flags.intersects(gone))
                        });
                        let followed = watched.follow_subdirectories();
                        stop.nudge();
                        followed?;
                        // The watch starts a new notifier on the directory
                        // its path names now.
                        if replaced {
                            return Err(std::io::Error::other(
                                "the agents directory was moved or removed",
                            ));
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
    }
}
