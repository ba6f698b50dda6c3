//! Used by build scripts to build a workspace crate as a WASI Preview 2
//! component: `cargo refresh-component` builds the shipped one
//! (`host/component/registry.wasm`) with it, and test build scripts build
//! theirs, which are never checked in.

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
    let built = build(workspace, package, &target_dir(&out_dir).join("guest"));
    let out = out_dir.join(out_name);
    std::fs::copy(&built, &out).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
    // Rerun when any file the component was built from changes: the nested
    // build's own dep-info lists them all (sources, WIT, manifests).
    rerun_on_dep_info(&built.with_extension("d"));
    for manifest in ["Cargo.lock", "Cargo.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(manifest).display()
        );
    }
    out
}

/// Builds workspace package `package` of `workspace` as a component into
/// `target_dir` and returns the path of the `.wasm`. Reproducible: the same
/// sources and toolchain give the same bytes from any checkout.
pub fn build(workspace: &Path, package: &str, target_dir: &Path) -> PathBuf {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace)
        .args(["build", "--release", "--locked", "-p", package])
        .args(["--target", GUEST_TARGET])
        .arg("--target-dir")
        .arg(target_dir);
    // Flags meant for the host build (coverage, sanitizers) must not reach the guest.
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        build.env_remove(var);
    }
    // The same bytes from any checkout: no machine paths in the component.
    build.env("CARGO_ENCODED_RUSTFLAGS", remap_flags(workspace));
    // Whole-program optimisation: a fifth fewer bytes of WebAssembly, and so
    // of native code to compile into every consumer and to load when a
    // registry is opened. (The guest has its own target dir: nothing else is
    // built with these settings.)
    build
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1");
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build {package}: {e}"));
    if !status.success() {
        panic!(
            "building the component {package} failed ({status}). \
             Is the target installed? Run: rustup target add {GUEST_TARGET}"
        );
    }
    target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_")))
}

/// `--remap-path-prefix` flags (joined by 0x1f, as `CARGO_ENCODED_RUSTFLAGS`
/// wants) that replace the workspace and cargo home paths in panic messages
/// with fixed names, so the component's bytes do not depend on where the
/// repository or the crate sources are.
fn remap_flags(workspace: &Path) -> String {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut flags = vec![format!(
        "--remap-path-prefix={}=/agentmux-registry",
        workspace.display()
    )];
    if let Some(home) = cargo_home {
        flags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    flags.join("\x1f")
}

/// Prints a `rerun-if-changed` line for every input a cargo dep-info file
/// (`target: input input ...`, spaces in paths escaped as `\ `) names.
fn rerun_on_dep_info(dep_info: &Path) {
    let text = std::fs::read_to_string(dep_info)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dep_info.display()));
    for line in text.lines() {
        let Some((_, inputs)) = line.split_once(": ") else {
            continue;
        };
        let mut path = String::new();
        let mut chars = inputs.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&' ') => path.push(chars.next().unwrap()),
                ' ' => {
                    if !path.is_empty() {
                        println!("cargo:rerun-if-changed={path}");
                        path.clear();
                    }
                }
                c => path.push(c),
            }
        }
        if !path.is_empty() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// The main target directory: `OUT_DIR` is `<target>/<profile>/build/<pkg>-<hash>/out`,
/// or `<target>/<triple>/<profile>/...` when Cargo builds for a `--target`:
/// builds for every target then share one guest build.
fn target_dir(out_dir: &Path) -> PathBuf {
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let triple = env::var_os("TARGET");
    out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent()?.parent())
        // Cargo writes `.rustc_info.json` at the target dir's root only.
        .map(|dir| match (dir.file_name(), dir.parent()) {
            (Some(name), Some(parent))
                if Some(name) == triple.as_deref() && parent.join(".rustc_info.json").is_file() =>
            {
                parent
            }
            _ => dir,
        })
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.join("guest-target"))
}
