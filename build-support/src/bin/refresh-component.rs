//! Rebuilds the registry components from `guest/` and `guest-kv/` and
//! refreshes the copies the `agentmux-registry` package ships:
//! `host/component/registry.wasm`, `host/component/registry-kv.wasm` and
//! `host/wit/` (a copy of the contract the component implements,
//! `wit/<CONTRACT>/`; each released contract keeps its own frozen folder under
//! `wit/`). With `--check`, changes nothing and fails if either differs from
//! what the sources build.
//!
//! `cargo refresh-component` / `cargo refresh-component --check` (an alias in
//! `.cargo/config.toml`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The contract version the component implements: its folder under `wit/`.
const CONTRACT: &str = "0.3.0";

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!(
                "refresh-component: unknown argument {other:?}; usage: refresh-component [--check]"
            );
            return ExitCode::from(2);
        }
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut shipped: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for (package, file) in [
        ("agentmux-registry-guest", "registry.wasm"),
        ("agentmux-registry-guest-kv", "registry-kv.wasm"),
    ] {
        let built = agentmux_registry_build_support::build(
            workspace,
            package,
            &workspace.join("target/guest"),
        );
        shipped.push((
            workspace.join("host/component").join(file),
            std::fs::read(&built).expect("reading the built component"),
        ));
    }
    for wit in ["registry.wit", "deps/cli/run.wit"] {
        let source = workspace.join("wit").join(CONTRACT).join(wit);
        let bytes =
            std::fs::read(&source).unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
        shipped.push((workspace.join("host/wit").join(wit), bytes));
    }
    let mut stale = Vec::new();
    for (path, bytes) in &shipped {
        if std::fs::read(path).ok().as_ref() == Some(bytes) {
            continue;
        }
        if check {
            stale.push(path.display().to_string());
        } else {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            println!("refreshed {}", path.display());
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "refresh-component: the shipped copies differ from what the sources build:\n  {}\n\
             run `cargo refresh-component` and commit the result",
            stale.join("\n  ")
        );
        return ExitCode::FAILURE;
    }
    if check {
        println!("host/component/*.wasm and host/wit/ match the sources");
    }
    ExitCode::SUCCESS
}
