//! Builds the registry component from `guest/` for `wasm32-wasip2` and puts it
//! in `OUT_DIR`, where `src/runtime.rs` embeds it. The component is never
//! checked in: the crate always runs the guest built from this source tree.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());

    for watched in ["guest/src", "guest/Cargo.toml", "wit", "Cargo.lock"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }

    // A target dir of its own: the outer cargo holds the lock on the main one.
    // It sits beside the main one so that rebuilds reuse it.
    let guest_target_dir = target_dir(&out_dir).join("guest");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "agentmux-registry-guest",
        ])
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
        .unwrap_or_else(|e| panic!("could not run cargo to build the registry component: {e}"));
    if !status.success() {
        panic!(
            "building the registry component failed ({status}). \
             Is the target installed? Run: rustup target add {GUEST_TARGET}"
        );
    }
    let built = guest_target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("agentmux_registry_guest.wasm");
    std::fs::copy(&built, out_dir.join("agentmux_registry.wasm"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
}

/// The main target directory: `OUT_DIR` is `<target>/<profile>/build/<pkg>-<hash>/out`,
/// or one level deeper when cross-compiling.
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
