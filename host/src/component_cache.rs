//! A per-user cache of the compiled component, so that only the first process
//! ever compiles it (Cranelift, ~100–250 ms) and later ones load it (~1 ms, mapped).
//!
//! A cached artifact is native code, so it is trusted only as far as the
//! files it comes from: the cache directory (`$XDG_CACHE_HOME/agentmux-registry`
//! or `~/.cache/agentmux-registry`) and the artifact must be owned by this
//! user and writable by nobody else, and the artifact is loaded through the
//! very descriptor whose owner and mode were checked (mapped, on Linux, not
//! copied). An artifact that fails any check, or that wasmtime refuses
//! (another version or configuration), is ignored and replaced. The cache
//! keeps the few most recently written artifacts and removes older ones.
//! Set `AGENTMUX_REGISTRY_CACHE=off` to always compile.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{Read, Write};
use std::path::PathBuf;

use wasmtime::component::Component;
use wasmtime::Engine;

/// The component for `bytes`, loaded from the cache or compiled (and cached).
/// `digest` identifies `bytes` (computed at build time, so that no process
/// hashes the whole component on start).
pub(crate) fn load_or_compile(
    engine: &Engine,
    bytes: &[u8],
    digest: &str,
) -> wasmtime::Result<Component> {
    let Some(dir) = cache_dir() else {
        return Component::new(engine, bytes);
    };
    let file = dir.join(format!("{:016x}.cwasm", cache_key(engine, digest)));
    if let Some(component) = load(engine, &file) {
        return Ok(component);
    }
    let component = Component::new(engine, bytes)?;
    // The cache is only an optimisation: failing to fill it is not an error.
    if let Ok(serialized) = component.serialize() {
        let _ = store(&dir, &file, &serialized);
    }
    Ok(component)
}

fn cache_dir() -> Option<PathBuf> {
    if std::env::var_os("AGENTMUX_REGISTRY_CACHE").is_some_and(|v| v == "off") {
        return None;
    }
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".cache"),
    };
    Some(base.join("agentmux-registry"))
}

/// Changes whenever the component or anything wasmtime needs to match does.
fn cache_key(engine: &Engine, digest: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    digest.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

#[cfg(unix)]
fn private_and_mine(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.uid() == rustix::process::geteuid().as_raw() && meta.mode() & 0o022 == 0
}

fn load(engine: &Engine, file: &std::path::Path) -> Option<Component> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let dir_meta = std::fs::symlink_metadata(file.parent()?).ok()?;
        if !dir_meta.is_dir() || !private_and_mine(&dir_meta) {
            return None;
        }
        let mut opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(file)
            .ok()?;
        let meta = opened.metadata().ok()?;
        if !meta.is_file() || !private_and_mine(&meta) {
            return None;
        }
        // SAFETY (both branches): deserializing runs the artifact's code later.
        // It comes from a file that only this user can have written (checked
        // above on the descriptor it is loaded through), produced by
        // `Component::serialize`; wasmtime verifies its version and
        // configuration before use. Artifacts are only ever written aside and
        // renamed into place, never changed in place, so a mapped one stays
        // as it was checked.
        if let Some(checked) = crate::descriptor_path(&opened) {
            // Maps the checked file instead of copying it: ~1 ms less per process.
            if let Ok(component) = unsafe { Component::deserialize_file(engine, checked) } {
                return Some(component);
            }
            // On a file system mounted noexec the mapping cannot become
            // executable; a copy in memory can.
        }
        let mut artifact = Vec::with_capacity(meta.len() as usize);
        opened.read_to_end(&mut artifact).ok()?;
        unsafe { Component::deserialize(engine, &artifact) }.ok()
    }
    #[cfg(not(unix))]
    {
        let _ = (engine, file);
        None
    }
}

fn store(dir: &std::path::Path, file: &std::path::Path, artifact: &[u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        if !private_and_mine(&std::fs::symlink_metadata(dir)?) {
            return Ok(());
        }
        // Written aside and renamed into place: readers never see half a file.
        let temp = dir.join(format!(
            ".{}.{}.tmp",
            std::process::id(),
            cache_key_suffix()
        ));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        let written = out
            .write_all(artifact)
            .and_then(|()| std::fs::rename(&temp, file));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written?;
        prune(dir);
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = (dir, file, artifact);
        Ok(())
    }
}

/// How many compiled components the cache keeps: one per version in use,
/// with room for a few installed side by side.
const KEEP_ARTIFACTS: usize = 4;

/// A temporary file this old is a crashed writer's leftover.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(600);

/// Keeps the cache from growing with every upgrade: removes all but the
/// [`KEEP_ARTIFACTS`] most recently written artifacts, and stale temporary
/// files. A version whose artifact goes is only compiled again (and cached)
/// by its next process.
#[cfg(unix)]
fn prune(dir: &std::path::Path) {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    let mut artifacts = Vec::new();
    for entry in listing.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(meta) = entry.metadata() else { continue };
        let written = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        if name.ends_with(".cwasm") && meta.is_file() {
            artifacts.push((written, entry.path()));
        } else if name.starts_with('.')
            && name.ends_with(".tmp")
            && written.elapsed().is_ok_and(|age| age > STALE_TEMP)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    artifacts.sort_by_key(|(written, _)| std::cmp::Reverse(*written));
    for (_, stale) in artifacts.into_iter().skip(KEEP_ARTIFACTS) {
        let _ = std::fs::remove_file(stale);
    }
}

/// Distinguishes concurrent writers within one process.
fn cache_key_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
