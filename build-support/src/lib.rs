//! Used by build scripts to build a workspace crate as a WASI Preview 2
//! component, so no `.wasm` is ever checked in.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target every component is built for.
pub const GUEST_TARGET: &str = "wasm32-wasip2";

/// Builds workspace package `package` (release, `wasm32-wasip2`), copies
/// its component to `$OUT_DIR/{out_name}` and returns that path. Call from a
/// build script of a crate that sits directly under the workspace root.
pub fn build_component(package: &str, out_name: &str) -> PathBuf {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir
        .parent()
        .expect("crate sits under the workspace root");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());

    // A target dir of its own, because the outer cargo holds the lock on the
    // main one; it sits beside the main one so that rebuilds reuse it.
    let guest_target_dir = target_dir(&out_dir).join("guest");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace)
        .args(["build", "--release", "--locked", "-p", package])
        .args(["--target", GUEST_TARGET])
        .arg("--target-dir")
        .arg(&guest_target_dir);
    // Flags meant for the host build (coverage, sanitizers) must not reach the guest.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        build.env_remove(var);
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build {package}: {e}"));
    if !status.success() {
        panic!(
            "building the component {package} failed ({status}). \
             Is the target installed? Run: rustup target add {GUEST_TARGET}"
        );
    }
    let artifact = format!("{}.wasm", package.replace('-', "_"));
    let built = guest_target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join(artifact);
    let out = out_dir.join(out_name);
    std::fs::copy(&built, &out).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
    out
}

/// Asks cargo to rerun the build script when any of `paths` (relative to the
/// workspace root) changes.
pub fn rerun_if_changed(paths: &[&str]) {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir
        .parent()
        .expect("crate sits under the workspace root");
    for path in paths {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
}

/// The main target directory: `OUT_DIR` is `<target>/<profile>/build/<pkg>-<hash>/out`.
fn target_dir(out_dir: &Path) -> PathBuf {
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent()?.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.join("guest-target"))
}
