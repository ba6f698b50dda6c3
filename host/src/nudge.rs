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
/// under the agents directory. It ends when the watch is stopped.
pub(crate) struct Notifier {
    /// False once the thread ended on an error: rescans alone from then.
    active: Arc<AtomicBool>,
}

impl Notifier {
    /// Starts notifications for `dir` (and, where `subdirectories`, the
    /// directories in it); returns once they are armed, so that every change
    /// made after this returns is notified. `None` where the OS gives none
    /// or they cannot be had here (the reason is logged).
    pub(crate) fn start(dir: &Path, subdirectories: bool, stop: &Arc<Stop>) -> Option<Notifier> {
        let active = Arc::new(AtomicBool::new(true));
        match os::start(dir, subdirectories, stop.clone(), active.clone()) {
            Ok(()) => Some(Notifier { active }),
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
        self.active.load(Ordering::Relaxed)
    }
}

/// The thread's end: logged, and the notifier marked inactive.
#[cfg(any(windows, target_os = "macos"))]
fn ended(dir: &Path, active: &AtomicBool, why: std::io::Error) {
    active.store(false, Ordering::Relaxed);
    tracing::warn!(
        "agentmux-registry: OS notifications for {} ended, rescans only from now: {why}",
        dir.display()
    );
}

#[cfg(not(any(windows, target_os = "macos")))]
mod os {
    use super::*;

    pub(super) fn start(
        _: &Path,
        _: bool,
        _: Arc<Stop>,
        _: Arc<AtomicBool>,
    ) -> std::io::Result<()> {
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
        active: Arc<AtomicBool>,
    ) -> std::io::Result<()> {
        let mut reader = Reader::open(dir, subdirectories)?;
        reader.request()?;
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("agentmux-registry notifications".into())
            .spawn(move || {
                while !stop.is_stopped() {
                    let notified = reader.wait(STOP_CHECK).and_then(|notified| {
                        if notified {
                            reader.request()?;
                            stop.nudge();
                        }
                        Ok(())
                    });
                    if let Err(why) = notified {
                        return ended(&dir, &active, why);
                    }
                }
            })?;
        Ok(())
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
    /// directory, and in a shared registry each agent directory in it.
    struct Watched {
        queue: OwnedFd,
        dir: std::path::PathBuf,
        _top: OwnedFd,
        subdirectories: Option<BTreeMap<OsString, OwnedFd>>,
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

        /// Registers the agent directories now in the agents directory,
        /// and forgets those that are gone.
        fn follow_subdirectories(&mut self) -> std::io::Result<()> {
            let Some(known) = self.subdirectories.take() else {
                return Ok(());
            };
            let mut now = BTreeMap::new();
            let mut known = known;
            for dirent in std::fs::read_dir(&self.dir)? {
                let dirent = dirent?;
                if !dirent.file_type()?.is_dir() {
                    continue;
                }
                let name = dirent.file_name();
                let fd = match known.remove(&name) {
                    Some(fd) => fd,
                    None => match open_for_events(&dirent.path()) {
                        Ok(fd) => {
                            self.register(&fd)?;
                            fd
                        }
                        // Removed meanwhile: nothing to follow.
                        Err(_) => continue,
                    },
                };
                now.insert(name, fd);
            }
            self.subdirectories = Some(now);
            Ok(())
        }
    }

    pub(super) fn start(
        dir: &Path,
        subdirectories: bool,
        stop: Arc<Stop>,
        active: Arc<AtomicBool>,
    ) -> std::io::Result<()> {
        let top = open_for_events(dir)?;
        let mut watched = Watched {
            queue: kqueue()?,
            dir: dir.to_path_buf(),
            _top: top,
            subdirectories: subdirectories.then(BTreeMap::new),
        };
        watched.register(&watched._top)?;
        watched.follow_subdirectories()?;
        std::thread::Builder::new()
            .name("agentmux-registry notifications".into())
            .spawn(move || {
                let mut events: Vec<Event> = Vec::with_capacity(64);
                while !stop.is_stopped() {
                    events.clear();
                    // SAFETY: every registered descriptor is owned by
                    // `watched`, which outlives the queue's use here.
                    let waited = unsafe {
                        kevent(
                            &watched.queue,
                            &[],
                            rustix::buffer::spare_capacity(&mut events),
                            Some(STOP_CHECK),
                        )
                    };
                    let followed = match waited {
                        Ok(0) => Ok(()),
                        // New agent directories are registered before the
                        // rescan starts, so that none of their changes goes
                        // unnoticed.
                        Ok(_) => watched.follow_subdirectories().map(|()| stop.nudge()),
                        Err(rustix::io::Errno::INTR) => Ok(()),
                        Err(e) => Err(e.into()),
                    };
                    if let Err(why) = followed {
                        return ended(&watched.dir, &active, why);
                    }
                }
            })?;
        Ok(())
    }
}
