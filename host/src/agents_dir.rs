//! The agents directory as a capability: created private, checked, and handed
//! to the component as its only preopen. Everything the host itself does in
//! the directory goes through the `cap_std` handle, never through path joins.

use std::io;
use std::path::{Path, PathBuf};

use cap_fs_ext::DirExt;
#[cfg(unix)]
use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
#[cfg(unix)]
use cap_std::fs::OpenOptions;

use crate::Error;

/// The name of the agents directory inside the data dir.
pub(crate) const AGENTS: &str = "agents";

/// An open, checked agents directory.
pub(crate) struct AgentsDir {
    /// `{data_dir}/agents`, for messages.
    path: PathBuf,
    /// The data dir's path, re-checked so a replaced data dir is noticed.
    data_path: PathBuf,
    /// The data dir, through which `agents` is re-checked.
    data: Dir,
    /// Identity of `data` (`None` where the OS gives none).
    data_identity: Option<FileIdentity>,
    /// The agents directory itself.
    dir: Dir,
    /// Identity of `dir`, to notice when the path names another.
    identity: Option<FileIdentity>,
}

impl AgentsDir {
    /// Opens `{data_dir}/agents`, creating the data dir and the agents
    /// directory (mode 0700) when missing.
    ///
    /// Refused: an agents directory that is a symlink or not a directory, one
    /// owned by another user, or one that others could write holding what
    /// cannot be trusted (see `adopt_contents`; it is then left 01700, so
    /// others are locked out and every later open checks it again). One of
    /// this user's that others could read or write (older versions created it
    /// with the umask's mode, e.g. 0775) is adopted: closed to others first,
    /// then checked, its files tightened to 0600, and only then made 0700.
    pub(crate) fn open(data_dir: &Path) -> Result<AgentsDir, Error> {
        let path = data_dir.join(AGENTS);
        let dir_error = |source: io::Error| Error::Directory {
            path: path.clone(),
            source,
        };
        if std::fs::metadata(data_dir).is_ok_and(|m| !m.is_dir()) {
            return Err(insecure(data_dir, "the data dir is not a directory"));
        }
        create_private_dir_all(data_dir).map_err(|source| Error::Directory {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let data = Dir::open_ambient_dir(data_dir, ambient_authority()).map_err(|source| {
            Error::Directory {
                path: data_dir.to_path_buf(),
                source,
            }
        })?;
        match create_private_dir(&data, AGENTS) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(dir_error(e)),
        }
        let meta = data.symlink_metadata(AGENTS).map_err(dir_error)?;
        if meta.file_type().is_symlink() {
            return Err(insecure(&path, "it is a symbolic link"));
        }
        if !meta.is_dir() {
            return Err(insecure(&path, "it is not a directory"));
        }
        let dir = data.open_dir_nofollow(AGENTS).map_err(dir_error)?;
        check_private(&data, &dir, &path)?;
        let data_identity = dir_identity(&data);
        let identity = dir_identity(&dir);
        Ok(AgentsDir {
            path,
            data_path: data_dir.to_path_buf(),
            data,
            data_identity,
            dir,
            identity,
        })
    }

    /// `{data_dir}/agents`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A path that names exactly the directory this handle has open, for the
    /// component's preopen: on Linux the handle's `/proc/self/fd` link, so a
    /// rename between the checks above and the preopen cannot swap in another
    /// directory; elsewhere the directory's path.
    pub(crate) fn preopen_path(&self) -> PathBuf {
        crate::descriptor_path(&self.dir).unwrap_or_else(|| self.path.clone())
    }

    /// Whether `{data_dir}/agents` is still the directory this handle has
    /// open: false after the agents directory or the data dir itself was
    /// deleted, moved away or replaced. (Where the OS gives no file identity,
    /// replacements are not noticed.)
    pub(crate) fn is_current(&self) -> bool {
        let (Some(data_identity), Some(identity)) = (self.data_identity, self.identity) else {
            return true;
        };
        path_identity(&self.data_path) == Some(data_identity)
            && named_dir_identity(&self.data, AGENTS) == Some(identity)
    }

    /// Makes the entry file `name` readable and writable by its owner only,
    /// if it is a regular single-link file. WASI cannot set permission bits,
    /// so files the component creates get the process umask's mode.
    pub(crate) fn restrict_entry(&self, name: &str) -> Result<(), Error> {
        #[cfg(unix)]
        {
            use cap_std::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
            let mut options = OpenOptions::new();
            options.read(true).follow(FollowSymlinks::No);
            // Never block opening a FIFO that was swapped in.
            options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
            let file = match self.dir.open_with(name, &options) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(source) => {
                    return Err(Error::Directory {
                        path: self.path.join(name),
                        source,
                    })
                }
            };
            let meta = file.metadata().map_err(|source| Error::Directory {
                path: self.path.join(name),
                source,
            })?;
            if meta.is_file() && meta.nlink() == 1 && meta.mode() & 0o077 != 0 {
                file.set_permissions(cap_std::fs::Permissions::from_mode(0o600))
                    .map_err(|source| Error::Directory {
                        path: self.path.join(name),
                        source,
                    })?;
            }
        }
        #[cfg(not(unix))]
        let _ = name;
        Ok(())
    }
}

/// What tells one file from another: (device, inode) on Unix, (volume
/// serial number, file index) on Windows.
type FileIdentity = (u64, u64);

#[cfg(unix)]
fn dir_identity(dir: &Dir) -> Option<FileIdentity> {
    use cap_std::fs::MetadataExt;
    let meta = dir.dir_metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The identity of what `name` in `parent` is, not following a symlink.
#[cfg(unix)]
fn named_dir_identity(parent: &Dir, name: &str) -> Option<FileIdentity> {
    use cap_std::fs::MetadataExt;
    let meta = parent.symlink_metadata(name).ok()?;
    Some((meta.dev(), meta.ino()))
}

#[cfg(unix)]
fn path_identity(path: &Path) -> Option<FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

#[cfg(windows)]
fn dir_identity(dir: &Dir) -> Option<FileIdentity> {
    handle_identity(dir)
}

#[cfg(windows)]
fn named_dir_identity(parent: &Dir, name: &str) -> Option<FileIdentity> {
    // Opening refuses a symlink or junction, which is then not the same.
    handle_identity(&parent.open_dir_nofollow(name).ok()?)
}

#[cfg(windows)]
fn path_identity(path: &Path) -> Option<FileIdentity> {
    use std::os::windows::fs::OpenOptionsExt;
    use windows_sys::Win32::Storage::FileSystem::FILE_FLAG_BACKUP_SEMANTICS;
    // Opening a directory needs backup semantics; no access rights are asked.
    let dir = std::fs::OpenOptions::new()
        .access_mode(0)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
        .open(path)
        .ok()?;
    handle_identity(&dir)
}

#[cfg(windows)]
fn handle_identity(handle: &impl std::os::windows::io::AsRawHandle) -> Option<FileIdentity> {
    use windows_sys::Win32::Storage::FileSystem::{
        GetFileInformationByHandle, BY_HANDLE_FILE_INFORMATION,
    };
    // SAFETY: an all-zero BY_HANDLE_FILE_INFORMATION is a valid value.
    let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: the handle stays open for the borrow; `info` is a valid
    // out-pointer of the right type.
    let ok = unsafe { GetFileInformationByHandle(handle.as_raw_handle(), &mut info) };
    (ok != 0).then(|| {
        let index = (u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow);
        (u64::from(info.dwVolumeSerialNumber), index)
    })
}

#[cfg(not(any(unix, windows)))]
fn dir_identity(_dir: &Dir) -> Option<FileIdentity> {
    None
}

#[cfg(not(any(unix, windows)))]
fn named_dir_identity(_parent: &Dir, _name: &str) -> Option<FileIdentity> {
    None
}

#[cfg(not(any(unix, windows)))]
fn path_identity(_path: &Path) -> Option<FileIdentity> {
    None
}

fn insecure(path: &Path, reason: &str) -> Error {
    Error::InsecureDirectory {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    }
}

#[cfg(unix)]
fn create_private_dir_all(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

#[cfg(not(unix))]
fn create_private_dir_all(path: &Path) -> io::Result<()> {
    std::fs::create_dir_all(path)
}

fn create_private_dir(parent: &Dir, name: &str) -> io::Result<()> {
    #[cfg(unix)]
    let builder = {
        use cap_std::fs::DirBuilderExt;
        let mut builder = cap_std::fs::DirBuilder::new();
        builder.mode(0o700);
        builder
    };
    #[cfg(not(unix))]
    let builder = cap_std::fs::DirBuilder::new();
    parent.create_dir_with(name, &builder)
}

/// The mode of an agents directory being adopted: owner-only, and marked
/// with the sticky bit (which means nothing else in a directory only its owner
/// can write) until its contents have been checked. Another process that
/// opens it meanwhile, or the next one after a crash mid-check, sees the mark
/// and checks it too instead of trusting it.
#[cfg(unix)]
const ADOPTING: u32 = 0o1700;

/// At most this many offending names are listed in a refusal.
#[cfg(unix)]
const NAMES_SHOWN: usize = 20;

/// Refuses a directory other users control; adopts one of this user's that
/// others could read or write.
fn check_private(data: &Dir, dir: &Dir, path: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use cap_std::fs::{MetadataExt, PermissionsExt};
        let io_error = |source| Error::Directory {
            path: path.to_path_buf(),
            source,
        };
        let meta = dir.dir_metadata().map_err(io_error)?;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(insecure(
                path,
                &format!(
                    "it is owned by uid {}, not by this user (uid {me})",
                    meta.uid()
                ),
            ));
        }
        let mode = meta.mode() & 0o7777;
        let set_mode = |mode: u32| {
            // The handle is O_PATH, which fchmod refuses; cap-std's
            // set_permissions never follows a link.
            data.set_permissions(AGENTS, cap_std::fs::Permissions::from_mode(mode))
                .map_err(io_error)
        };
        let others_could_write = mode & 0o022 != 0;
        let unchecked = others_could_write || mode & 0o1000 != 0;
        if !unchecked {
            // Private, or only readable by others: nothing can have been
            // planted.
            if mode & 0o077 != 0 {
                set_mode(0o700)?;
            }
            return Ok(());
        }
        // Close it first, so nothing new can be planted while it is checked,
        // and mark it unchecked until the check has passed. A refused
        // directory keeps the mark: every later open checks it again.
        set_mode(ADOPTING)?;
        adopt_contents(dir, path, me)?;
        set_mode(0o700)?;
    }
    #[cfg(not(unix))]
    let _ = (data, dir, path);
    Ok(())
}

/// Checks what a directory others could write holds. Refused, naming them,
/// if any name in it belongs to another user, or is a file of this user's
/// that others could write or that has other hard links (what it holds, or
/// what else it is, cannot be trusted). Otherwise this user's files are
/// tightened to 0600.
#[cfg(unix)]
fn adopt_contents(dir: &Dir, path: &Path, me: u32) -> Result<(), Error> {
    use cap_std::fs::{MetadataExt, PermissionsExt};
    let io_error = |source| Error::Directory {
        path: path.to_path_buf(),
        source,
    };
    let mut refused = Vec::new();
    let mut to_tighten = Vec::new();
    for item in dir.entries().map_err(io_error)? {
        let item = item.map_err(io_error)?;
        let name = item.file_name();
        let Ok(meta) = dir.symlink_metadata(&name) else {
            continue; // gone meanwhile
        };
        let why = if meta.uid() != me {
            format!("uid {}", meta.uid())
        } else if !meta.is_file() {
            continue;
        } else if meta.mode() & 0o022 != 0 {
            "writable by others".to_owned()
        } else if meta.nlink() > 1 {
            format!("{} hard links", meta.nlink())
        } else {
            if meta.mode() & 0o077 != 0 {
                to_tighten.push(name);
            }
            continue;
        };
        // Quoted and escaped: names are arbitrary bytes.
        refused.push(format!("{name:?} ({why})"));
    }
    if refused.is_empty() {
        for name in to_tighten {
            // Never follows a symlink (cap-std); a name replaced meanwhile
            // can only be this user's, as others can no longer write here.
            let _ = dir.set_permissions(&name, cap_std::fs::Permissions::from_mode(0o600));
        }
        return Ok(());
    }
    refused.sort();
    let more = refused.len().saturating_sub(NAMES_SHOWN);
    refused.truncate(NAMES_SHOWN);
    let mut listed = refused.join(", ");
    if more > 0 {
        listed.push_str(&format!(" and {more} more"));
    }
    Err(insecure(
        path,
        &format!(
            "it was writable by other users, and what it holds cannot be trusted: {listed}; \
             remove them, then open the registry again"
        ),
    ))
}
