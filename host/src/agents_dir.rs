//! The agents directory as a capability: created private, checked, and handed
//! to the component as its only preopen. Everything the host itself does in
//! the directory goes through the `cap_std` handle, never through path joins.

use std::io;
use std::path::{Path, PathBuf};

#[cfg(not(unix))]
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

/// An open, checked agents directory, or shared root.
pub(crate) struct AgentsDir {
    /// `{data_dir}/agents` (or the shared root), for messages.
    path: PathBuf,
    /// Its name in its parent (the data dir).
    name: String,
    /// Whether it holds directories of entries (the shared root) rather than
    /// entries.
    nested: bool,
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
    /// Refused: an agents directory that is a symlink or not a directory, or
    /// one owned by another user. One of this user's that grants anything to
    /// group or others, or carries the adoption mark (older versions created
    /// it with the umask's mode, e.g. 0775 or 0755), is adopted: see
    /// `open_checked`. A data dir other users could change is reported
    /// through `tracing::warn!` (see [`data_dir_warning`]).
    pub(crate) fn open(data_dir: &Path) -> Result<AgentsDir, Error> {
        Self::open_named(data_dir, AGENTS, false)
    }

    /// Opens the shared root `root` as [`AgentsDir::open`] opens an agents
    /// directory, its parent taking the data dir's place; the adoption of an
    /// older layout checks and tightens the agent directories in it, and
    /// what they hold, as well.
    pub(crate) fn open_shared(root: &Path) -> Result<AgentsDir, Error> {
        let (Some(parent), Some(name)) = (root.parent(), root.file_name().and_then(|n| n.to_str()))
        else {
            return Err(insecure(
                root,
                "a shared root must be a directory with a UTF-8 name inside another one",
            ));
        };
        if name == ".." || name == "." {
            return Err(insecure(
                root,
                "a shared root must be named without `.` or `..`",
            ));
        }
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        Self::open_named(parent, name, true)
    }

    fn open_named(data_dir: &Path, name: &str, nested: bool) -> Result<AgentsDir, Error> {
        let path = data_dir.join(name);
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
        // Before the agents directory is looked at, so it is said even when
        // that is then refused (a swapped `agents` needs such a data dir).
        if let Some(why) = exposure(&data, data_dir) {
            tracing::warn!(data_dir = %data_dir.display(), "{why}");
        }
        match create_private_dir(&data, name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(dir_error(e)),
        }
        let meta = data.symlink_metadata(name).map_err(dir_error)?;
        if meta.file_type().is_symlink() {
            return Err(insecure(&path, "it is a symbolic link"));
        }
        if !meta.is_dir() {
            return Err(insecure(&path, "it is not a directory"));
        }
        #[cfg(unix)]
        let dir = open_checked(&data, data_dir, name, nested, &path)?;
        #[cfg(not(unix))]
        let dir = data.open_dir_nofollow(name).map_err(dir_error)?;
        let data_identity = dir_identity(&data);
        let identity = dir_identity(&dir);
        Ok(AgentsDir {
            path,
            name: name.to_string(),
            nested,
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
            && named_dir_identity(&self.data, &self.name) == Some(identity)
    }

    /// Opens this directory again, as it was opened: after it was replaced.
    pub(crate) fn reopen(&self) -> Result<AgentsDir, Error> {
        Self::open_named(&self.data_path, &self.name, self.nested)
    }

    /// Makes the agent directory `name` of a shared root accessible by its
    /// owner only, if it is a directory (never following a link).
    pub(crate) fn restrict_dir(&self, name: &str) -> Result<(), Error> {
        #[cfg(unix)]
        {
            use cap_std::fs::MetadataExt;
            let fd = match rustix::fs::openat(
                &self.dir,
                name,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            ) {
                Ok(fd) => fd,
                // Removed meanwhile, or not a directory: nothing of ours.
                Err(_) => return Ok(()),
            };
            let dir = Dir::from_std_file(std::fs::File::from(fd));
            let path = self.path.join(name);
            let meta = dir.dir_metadata().map_err(|source| Error::Directory {
                path: path.clone(),
                source,
            })?;
            if meta.mode() & 0o077 != 0 {
                set_dir_mode(&dir, 0o700, &path)?;
            }
        }
        #[cfg(not(unix))]
        let _ = name;
        Ok(())
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

/// Opens the agents directory through `data` and adopts it if needed.
///
/// Everything happens through one descriptor, opened without following a
/// symlink and verified as this user's directory; the name `agents` is never
/// used again until the end. If the directory grants anything to group or
/// others, or carries the [`ADOPTING`] mark, it is adopted: closed to others
/// and marked (fchmod 01700), its contents checked (`adopt_contents`), its
/// files tightened to 0600, and only then made 0700 (fchmod). Each chmod is
/// read back and verified. Last, `agents` must still name the directory that
/// was adopted: if it was swapped meanwhile (only possible for someone who
/// can write the data dir), the open is refused rather than serving a
/// directory that was not checked.
#[cfg(unix)]
fn open_checked(
    data: &Dir,
    data_dir: &Path,
    name: &str,
    nested: bool,
    path: &Path,
) -> Result<Dir, Error> {
    use cap_std::fs::MetadataExt;
    use rustix::fs::OFlags;
    let io_error = |source: io::Error| Error::Directory {
        path: path.to_path_buf(),
        source,
    };
    // A real descriptor, not cap-std's O_PATH one: fchmod refuses those.
    let fd = rustix::fs::openat(
        data,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| match e {
        // Swapped for a symlink since it was looked at.
        rustix::io::Errno::LOOP => insecure(path, "it is a symbolic link"),
        e => io_error(e.into()),
    })?;
    let dir = Dir::from_std_file(std::fs::File::from(fd));
    let meta = dir.dir_metadata().map_err(io_error)?;
    let me = rustix::process::geteuid().as_raw();
    refuse_others_dir(&meta, me, path)?;
    if meta.mode() & 0o1077 == 0 {
        return Ok(dir);
    }
    hooks::run(data_dir, AdoptionStep::Opened);
    // Close it first, so nothing new can be planted while it is checked,
    // and mark it unchecked until the check has passed. A refused directory
    // keeps the mark: every later open checks it again.
    set_dir_mode(&dir, ADOPTING, path)?;
    hooks::run(data_dir, AdoptionStep::Closed);
    adopt_contents(&dir, path, me, nested)?;
    hooks::run(data_dir, AdoptionStep::Checked);
    set_dir_mode(&dir, 0o700, path)?;
    let named = data.symlink_metadata(name).ok();
    if named.is_none_or(|n| (n.dev(), n.ino()) != (meta.dev(), meta.ino())) {
        return Err(insecure(
            path,
            "it was replaced while it was being adopted (the directory that was checked and \
             made private is no longer at this path); check who else can write the data dir, \
             then open the registry again",
        ));
    }
    Ok(dir)
}

/// Refuses a directory owned by a user other than `me`.
#[cfg(unix)]
fn refuse_others_dir(meta: &cap_std::fs::Metadata, me: u32, path: &Path) -> Result<(), Error> {
    use cap_std::fs::MetadataExt;
    if meta.uid() != me {
        return Err(insecure(
            path,
            &format!(
                "it is owned by uid {}, not by this user (uid {me})",
                meta.uid()
            ),
        ));
    }
    Ok(())
}

/// Sets the mode of the open directory `dir` (fchmod), then reads it back.
#[cfg(unix)]
fn set_dir_mode(dir: &Dir, mode: u32, path: &Path) -> Result<(), Error> {
    use cap_std::fs::MetadataExt;
    let io_error = |source: io::Error| Error::Directory {
        path: path.to_path_buf(),
        source,
    };
    rustix::fs::fchmod(dir, rustix::fs::Mode::from_bits_truncate(mode as _))
        .map_err(|e| io_error(e.into()))?;
    let now = dir.dir_metadata().map_err(io_error)?.mode() & 0o7777;
    if now != mode {
        return Err(io_error(io::Error::other(format!(
            "its mode is {now:04o} after it was set to {mode:04o}"
        ))));
    }
    Ok(())
}

/// Opens `name` in `dir` for a check or a chmod: never following a symlink,
/// never blocking on a FIFO, never taking a terminal.
#[cfg(unix)]
fn open_entry(dir: &Dir, name: &std::ffi::OsStr) -> io::Result<cap_std::fs::File> {
    use cap_std::fs::OpenOptionsExt;
    let mut options = OpenOptions::new();
    options.read(true).follow(FollowSymlinks::No);
    options.custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32);
    dir.open_with(name, &options)
}

/// Checks what a directory being adopted holds, and tightens it.
///
/// Refused, naming them, if any name in it belongs to another user, or is a
/// file of this user's that another user could have written (see
/// [`others_could_write`]) or that has other hard links (what it holds, or
/// what else it is, cannot be trusted). Otherwise this user's files are set
/// to 0600, each through a descriptor opened without following a symlink
/// and verified to be the file that was checked. Other kinds of names of this
/// user's (directories, symlinks) are left alone: the registry never reads them.
#[cfg(unix)]
fn adopt_contents(dir: &Dir, path: &Path, me: u32, nested: bool) -> Result<(), Error> {
    use cap_std::fs::MetadataExt;
    use std::os::fd::AsFd;
    let io_error = |source| Error::Directory {
        path: path.to_path_buf(),
        source,
    };
    let accounts = std::cell::OnceCell::new();
    let mut refused = Vec::new();
    let mut to_tighten = Vec::new();
    let mut subdirs = Vec::new();
    for item in dir.entries().map_err(io_error)? {
        let item = item.map_err(io_error)?;
        let name = item.file_name();
        let Ok(meta) = dir.symlink_metadata(&name) else {
            continue; // gone meanwhile
        };
        // Another user's name is never opened: it may be a device or a FIFO.
        let why = if meta.uid() != me {
            format!("uid {}", meta.uid())
        } else if nested && meta.is_dir() {
            subdirs.push(name);
            continue;
        } else if !meta.is_file() {
            continue;
        } else {
            // Judged by what was opened, so a swap after the stat changes nothing.
            let file = match open_entry(dir, &name) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    refused.push(format!("{name:?} (cannot be checked: {e})"));
                    continue;
                }
            };
            let meta = file.metadata().map_err(io_error)?;
            if meta.uid() != me {
                format!("uid {}", meta.uid())
            } else if !meta.is_file() {
                continue;
            } else if let Some(why) = others_could_write(&meta, file.as_fd(), me, &accounts) {
                why
            } else if meta.nlink() > 1 {
                format!("{} hard links", meta.nlink())
            } else {
                if meta.mode() & 0o077 != 0 {
                    to_tighten.push((name, (meta.dev(), meta.ino())));
                }
                continue;
            }
        };
        // Quoted and escaped: names are arbitrary bytes.
        refused.push(format!("{name:?} ({why})"));
    }
    if refused.is_empty() {
        for (name, identity) in to_tighten {
            tighten(dir, path, &name, identity)?;
        }
        for name in subdirs {
            adopt_subdir(dir, &path.join(&name), &name, me)?;
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
            "other users could have changed what it holds: {listed}. Remove these names (or, \
             for a file of yours whose content you trust, make it owner-only with chmod 600, or \
             copy a hard-linked one over its name), then open the registry again"
        ),
    ))
}

/// Adopts the agent directory `name` of a shared root: what it holds as
/// [`adopt_contents`] adopts it, then the directory itself made 0700, both
/// through a descriptor opened without following a link. (Nothing can be
/// planted in it meanwhile: the root is closed to everyone else while it is
/// adopted.)
#[cfg(unix)]
fn adopt_subdir(parent: &Dir, path: &Path, name: &std::ffi::OsStr, me: u32) -> Result<(), Error> {
    use cap_std::fs::MetadataExt;
    use rustix::fs::OFlags;
    let fd = match rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => {
            return Err(Error::Directory {
                path: path.to_path_buf(),
                source: e.into(),
            })
        }
    };
    let dir = Dir::from_std_file(std::fs::File::from(fd));
    let meta = dir.dir_metadata().map_err(|source| Error::Directory {
        path: path.to_path_buf(),
        source,
    })?;
    refuse_others_dir(&meta, me, path)?;
    adopt_contents(&dir, path, me, false)?;
    if meta.mode() & 0o7777 != 0o700 {
        set_dir_mode(&dir, 0o700, path)?;
    }
    Ok(())
}

/// Sets the checked file `name` to 0600 through its own descriptor, and
/// verifies it. A name replaced since the check is skipped: only this user
/// can write the directory now, and the registry restricts what it writes.
#[cfg(unix)]
fn tighten(
    dir: &Dir,
    path: &Path,
    name: &std::ffi::OsStr,
    identity: FileIdentity,
) -> Result<(), Error> {
    use cap_std::fs::MetadataExt;
    let io_error = |source| Error::Directory {
        path: path.join(name),
        source,
    };
    let file = match open_entry(dir, name) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(e)),
    };
    let meta = file.metadata().map_err(io_error)?;
    if (meta.dev(), meta.ino()) != identity || !meta.is_file() || meta.nlink() != 1 {
        return Ok(());
    }
    rustix::fs::fchmod(&file, rustix::fs::Mode::from_bits_truncate(0o600))
        .map_err(|e| io_error(e.into()))?;
    let now = file.metadata().map_err(io_error)?.mode() & 0o7777;
    if now != 0o600 {
        return Err(io_error(io::Error::other(format!(
            "its mode is {now:04o} after it was set to 0600"
        ))));
    }
    Ok(())
}

/// Why a user other than `me` could write the file or directory `meta`
/// describes (`fd` is open on it), or `None` when none could.
///
/// The rule: anything writable by others (the 0o002 bit) can be written by
/// anyone. Group write (0o020) is harmless only when nobody but this user is
/// in that group: when there is no access ACL (with one, the group bits are
/// the ACL's mask and named users or groups may write; Linux only), and the
/// group is this user's private group (see [`is_private_group`]).
#[cfg(unix)]
fn others_could_write(
    meta: &cap_std::fs::Metadata,
    fd: std::os::fd::BorrowedFd<'_>,
    me: u32,
    accounts: &std::cell::OnceCell<Accounts>,
) -> Option<String> {
    use cap_std::fs::MetadataExt;
    if meta.mode() & 0o002 != 0 {
        return Some("writable by others".to_owned());
    }
    if meta.mode() & 0o020 == 0 {
        return None;
    }
    if has_access_acl(fd) {
        return Some("group-writable with an ACL: other users may write it".to_owned());
    }
    let accounts = accounts.get_or_init(Accounts::read);
    if is_private_group(&accounts.passwd, &accounts.group, me, meta.gid()) {
        return None;
    }
    Some(format!(
        "writable by {}, which is not this user's private group",
        group_label(&accounts.group, meta.gid())
    ))
}

/// Whether the file open as `fd` has an access ACL beyond its mode bits
/// (unreadable counts as yes). Linux stores one as an extended attribute.
#[cfg(target_os = "linux")]
fn has_access_acl(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use rustix::io::Errno;
    // An empty buffer only asks whether (and how big) the attribute is.
    match rustix::fs::fgetxattr(fd, "system.posix_acl_access", &mut [0u8; 0][..]) {
        Ok(_) => true,
        // No ACL, or a file system without them (ENOTSUP is EOPNOTSUPP here).
        Err(Errno::NODATA) | Err(Errno::OPNOTSUPP) => false,
        Err(_) => true,
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
fn has_access_acl(_fd: std::os::fd::BorrowedFd<'_>) -> bool {
    false
}

/// The account files the private-group rule reads. Unreadable ones are
/// empty, which proves no group private.
#[cfg(unix)]
struct Accounts {
    passwd: String,
    group: String,
}

#[cfg(unix)]
impl Accounts {
    fn read() -> Accounts {
        Accounts {
            passwd: std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
            group: std::fs::read_to_string("/etc/group").unwrap_or_default(),
        }
    }
}

/// Whether `gid` is the private group of the user `uid`, as `passwd`
/// (`/etc/passwd`) and `group` (`/etc/group`) describe them: the group
/// whose only possible member is that user. All of:
///
/// - an account with that uid has `gid` as its primary group;
/// - no account with another uid has `gid` as its primary group;
/// - `gid` has an entry in `group`, and no entry of `gid` lists a member
///   other than the names of that uid's accounts.
///
/// Fails closed: a NIS inclusion line (`+`/`-`) in either file, which brings
/// accounts not listed here, proves nothing private. Groups known only to
/// other databases (LDAP, sssd) are not private by this rule, nor are group
/// passwords (`/etc/gshadow`, which only root can read) considered.
#[cfg(unix)]
fn is_private_group(passwd: &str, group: &str, uid: u32, gid: u32) -> bool {
    let mut names = Vec::new();
    let mut primary = false;
    for line in passwd.lines() {
        if line.starts_with(['+', '-']) {
            return false;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, line_uid, line_gid, ..] = fields[..] else {
            continue;
        };
        let (Ok(line_uid), Ok(line_gid)) = (line_uid.parse::<u32>(), line_gid.parse::<u32>())
        else {
            continue;
        };
        if line_uid == uid {
            names.push(name);
            primary |= line_gid == gid;
        } else if line_gid == gid {
            return false;
        }
    }
    if !primary {
        return false;
    }
    let mut listed = false;
    for line in group.lines() {
        if line.starts_with(['+', '-']) {
            return false;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let [_, _, line_gid, members, ..] = fields[..] else {
            continue;
        };
        if line_gid.parse::<u32>() != Ok(gid) {
            continue;
        }
        listed = true;
        let others = members
            .split(',')
            .map(str::trim)
            .any(|member| !member.is_empty() && !names.contains(&member));
        if others {
            return false;
        }
    }
    listed
}

/// `group NAME (gid N)`, or `group N` when `group` does not name it.
#[cfg(unix)]
fn group_label(group: &str, gid: u32) -> String {
    let name = group.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>() == Ok(gid) && !name.is_empty()).then_some(name)
    });
    match name {
        Some(name) => format!("group {name:?} (gid {gid})"),
        None => format!("group {gid}"),
    }
}

/// Why users other than this one could change what the data dir `data`
/// holds, and so rename, replace or pre-empt its `agents` directory; `None`
/// when they could not (as far as can be told). Root owning it is no
/// exposure: root can do all of this anyway.
#[cfg(unix)]
fn exposure(data: &Dir, data_dir: &Path) -> Option<String> {
    use cap_std::fs::MetadataExt;
    use std::os::fd::AsFd;
    let meta = data.dir_metadata().ok()?;
    let me = rustix::process::geteuid().as_raw();
    let why = if meta.uid() != me && meta.uid() != 0 {
        format!("it is owned by uid {}", meta.uid())
    } else if meta.mode() & 0o022 == 0 {
        return None;
    } else {
        // `data` is O_PATH, which cannot read extended attributes.
        let readable = rustix::fs::openat(
            data,
            ".",
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        );
        let accounts = std::cell::OnceCell::new();
        match &readable {
            Ok(fd) => others_could_write(&meta, fd.as_fd(), me, &accounts)?,
            // Its ACL cannot be read: unknown, so said.
            Err(_) => format!("mode {:04o}", meta.mode() & 0o7777),
        }
    };
    Some(format!(
        "data dir {} can be changed by other users ({why}): they cannot read or change \
         entries, but they can rename or replace its agents directory, or create one first, \
         and so make the registry unavailable; make it writable by its owner only \
         (chmod go-w)",
        data_dir.display()
    ))
}

#[cfg(not(unix))]
fn exposure(_data: &Dir, _data_dir: &Path) -> Option<String> {
    None
}

/// Whether users other than this one could change `data_dir` itself, and so
/// rename, replace or pre-empt its `agents` directory: `Ok(None)` when they
/// could not, else why, as a warning to show. [`crate::Registry::open`]
/// logs the same warning through `tracing::warn!`. Such users cannot read
/// or change entries (the agents directory is checked through its handle),
/// but they can make the registry unavailable.
///
/// Unix only; elsewhere always `Ok(None)`. Errors when `data_dir` cannot be
/// opened.
pub fn data_dir_warning(data_dir: impl AsRef<Path>) -> Result<Option<String>, Error> {
    let data_dir = data_dir.as_ref();
    let data = Dir::open_ambient_dir(data_dir, ambient_authority()).map_err(|source| {
        Error::Directory {
            path: data_dir.to_path_buf(),
            source,
        }
    })?;
    Ok(exposure(&data, data_dir))
}

/// A point in adopting an agents directory at which a test can act (see
/// [`on_adoption_step`]), to race the adoption without sleeps.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdoptionStep {
    /// The directory is open and verified as this user's; nothing changed.
    Opened,
    /// It is closed to others and marked (01700); its contents unchecked.
    Closed,
    /// Its contents are checked and tightened; it is not yet made 0700.
    Checked,
}

/// Runs `hook` at every [`AdoptionStep`] of each adoption of
/// `{data_dir}/agents` (`data_dir` exactly as given to `open`), until the
/// returned guard is dropped. For tests only.
#[doc(hidden)]
pub fn on_adoption_step(
    data_dir: impl Into<PathBuf>,
    hook: impl Fn(AdoptionStep) + Send + Sync + 'static,
) -> AdoptionHook {
    hooks::add(data_dir.into(), std::sync::Arc::new(hook))
}

/// Removes its hook when dropped.
#[doc(hidden)]
#[must_use = "the hook is removed when this is dropped"]
pub struct AdoptionHook(u64);

impl Drop for AdoptionHook {
    fn drop(&mut self) {
        hooks::remove(self.0);
    }
}

mod hooks {
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, MutexGuard};

    use super::{AdoptionHook, AdoptionStep};

    type Hook = Arc<dyn Fn(AdoptionStep) + Send + Sync>;

    /// (id, data dir, hook). Empty outside tests.
    static HOOKS: Mutex<Vec<(u64, PathBuf, Hook)>> = Mutex::new(Vec::new());
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    fn hooks() -> MutexGuard<'static, Vec<(u64, PathBuf, Hook)>> {
        HOOKS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn add(data_dir: PathBuf, hook: Hook) -> AdoptionHook {
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        hooks().push((id, data_dir, hook));
        AdoptionHook(id)
    }

    pub(super) fn remove(id: u64) {
        hooks().retain(|(other, _, _)| *other != id);
    }

    #[cfg_attr(not(unix), allow(dead_code))]
    pub(super) fn run(data_dir: &Path, step: AdoptionStep) {
        let matching: Vec<Hook> = hooks()
            .iter()
            .filter(|(_, dir, _)| dir == data_dir)
            .map(|(_, _, hook)| hook.clone())
            .collect();
        // Called unlocked: a hook may open registries itself.
        for hook in matching {
            hook(step);
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
alice:x:1000:1000:Alice:/home/alice:/bin/bash
bob:x:1001:1001::/home/bob:/bin/sh
carol:x:1002:100::/home/carol:/bin/sh
dave:x:1003:100::/home/dave:/bin/sh
alice2:x:1000:1000:same uid:/home/alice:/bin/bash
";
    const GROUP: &str = "\
root:x:0:
users:x:100:
alice:x:1000:alice,alice2
bob:x:1001:alice
carol:x:1002:
";

    #[test]
    fn a_group_is_private_only_when_nobody_else_can_be_in_it() {
        // Primary group, no one else's primary, members only its own names.
        assert!(is_private_group(PASSWD, GROUP, 1000, 1000));
        assert!(is_private_group(PASSWD, GROUP, 0, 0));
        // Another user listed as a member.
        assert!(!is_private_group(PASSWD, GROUP, 1001, 1001));
        // Shared as a primary group.
        assert!(!is_private_group(PASSWD, GROUP, 1002, 100));
        // Not the user's primary group, even with no members.
        assert!(!is_private_group(PASSWD, GROUP, 1002, 1002));
        // Unknown to /etc/group, or to /etc/passwd.
        assert!(!is_private_group(PASSWD, "root:x:0:\n", 1000, 1000));
        assert!(!is_private_group("", GROUP, 1000, 1000));
        // NIS inclusion brings accounts not listed here.
        assert!(!is_private_group(
            PASSWD,
            &format!("{GROUP}+:::\n"),
            1000,
            1000
        ));
        assert!(!is_private_group(
            &format!("{PASSWD}+::::::\n"),
            GROUP,
            1000,
            1000
        ));
        // Malformed lines prove nothing and hide nothing.
        let noisy = format!("garbage\n\n{GROUP}x:x:notanumber:bob\n");
        assert!(is_private_group(PASSWD, &noisy, 1000, 1000));
    }

    #[test]
    fn a_group_is_named_when_group_names_it() {
        assert_eq!(group_label(GROUP, 100), "group \"users\" (gid 100)");
        assert_eq!(group_label(GROUP, 54321), "group 54321");
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_data_dir_others_can_write_is_reported_and_logged() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        set_mode(&data, 0o777);
        let (opened, events) = crate::test_log::capture(|| AgentsDir::open(&data).map(|_| ()));
        opened.unwrap();
        let warnings: Vec<_> = events
            .iter()
            .filter(|(level, _)| *level == tracing::Level::WARN)
            .collect();
        assert_eq!(warnings.len(), 1, "{events:?}");
        assert!(
            warnings[0]
                .1
                .contains("can be changed by other users (writable by others)"),
            "{events:?}"
        );
        let shown = data_dir_warning(&data).unwrap().expect("reported");
        assert!(shown.contains(&data.display().to_string()), "{shown}");

        set_mode(&data, 0o700);
        assert_eq!(data_dir_warning(&data).unwrap(), None);
        let (opened, events) = crate::test_log::capture(|| AgentsDir::open(&data).map(|_| ()));
        opened.unwrap();
        assert!(events.is_empty(), "{events:?}");
    }
}
