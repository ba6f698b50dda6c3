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
    /// Device and inode of `data`.
    data_identity: (u64, u64),
    /// The agents directory itself.
    dir: Dir,
    /// Device and inode of `dir`, to notice when the path names another.
    identity: (u64, u64),
}

impl AgentsDir {
    /// Opens `{data_dir}/agents`, creating the data dir and the agents
    /// directory (mode 0700) when missing.
    ///
    /// Refused: an agents directory that is a symlink or not a directory, one
    /// owned by another user, or one that others could write holding a file
    /// of another user (left as it was found, so it is refused again until
    /// dealt with). One of this user's that others could read or write (older
    /// versions created it with the umask's mode, e.g. 0775) is adopted:
    /// tightened to 0700 first, then checked, its files tightened to 0600.
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
        let data_identity = identity(&data.dir_metadata().map_err(|source| Error::Directory {
            path: data_dir.to_path_buf(),
            source,
        })?);
        let identity = identity(&dir.dir_metadata().map_err(dir_error)?);
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
    /// as with Windows here, replacements are not noticed.)
    pub(crate) fn is_current(&self) -> bool {
        let data_same = std::fs::metadata(&self.data_path)
            .is_ok_and(|named| std_identity(&named) == self.data_identity);
        data_same
            && self
                .data
                .symlink_metadata(AGENTS)
                .is_ok_and(|named| identity(&named) == self.identity)
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

/// Device and inode number of a `std` metadata (zeros where the OS has none).
fn std_identity(meta: &std::fs::Metadata) -> (u64, u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        (0, 0)
    }
}

/// Device and inode number (zeros where the OS has none).
fn identity(meta: &cap_std::fs::Metadata) -> (u64, u64) {
    #[cfg(unix)]
    {
        use cap_std::fs::MetadataExt;
        (meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        (0, 0)
    }
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
    let mut builder = cap_std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use cap_std::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    parent.create_dir_with(name, &builder)
}

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
        if mode & 0o077 == 0 {
            return Ok(());
        }
        // Close it first, so nothing new can be planted while it is checked.
        // (The handle is O_PATH, which fchmod refuses; cap-std's
        // set_permissions never follows a link.)
        data.set_permissions(AGENTS, cap_std::fs::Permissions::from_mode(0o700))
            .map_err(io_error)?;
        if mode & 0o022 != 0 {
            // Others could write: whatever they left must not be trusted.
            if let Err(refused) = adopt_contents(dir, path, me) {
                // Leave it as it was found, so that every later open checks
                // it again (a 0700 directory is not checked) and refuses
                // until the user has dealt with it.
                let _ = data.set_permissions(AGENTS, cap_std::fs::Permissions::from_mode(mode));
                return Err(refused);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (data, dir, path);
    Ok(())
}

/// Checks what a directory others could write holds: refused if any name in
/// it belongs to another user (named in the error); this user's regular files
/// are tightened to 0600.
#[cfg(unix)]
fn adopt_contents(dir: &Dir, path: &Path, me: u32) -> Result<(), Error> {
    use cap_std::fs::{MetadataExt, PermissionsExt};
    let io_error = |source| Error::Directory {
        path: path.to_path_buf(),
        source,
    };
    let mut foreign = Vec::new();
    for item in dir.entries().map_err(io_error)? {
        let item = item.map_err(io_error)?;
        let name = item.file_name();
        let Ok(meta) = dir.symlink_metadata(&name) else {
            continue; // gone meanwhile
        };
        if meta.uid() != me {
            let shown =
                agentmux_registry_core::cli::printable(&name.to_string_lossy()).into_owned();
            foreign.push(format!("{shown} (uid {})", meta.uid()));
        } else if meta.is_file() && meta.mode() & 0o077 != 0 {
            // Linked files too: the registry never reads them, but they may
            // hold auth keys.
            // set_permissions on a name never follows a symlink in cap-std.
            let _ = dir.set_permissions(&name, cap_std::fs::Permissions::from_mode(0o600));
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    Err(insecure(
        path,
        &format!(
            "it was writable by other users and holds files of other users: {}; \
             remove them, then open the registry again",
            foreign.join(", ")
        ),
    ))
}
