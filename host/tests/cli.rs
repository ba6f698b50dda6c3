//! The `agentmux-registry` command: subcommands, output, exit codes, the
//! default data dir, and the compiled-component cache.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn cli(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentmux-registry"))
        .args(args)
        .env_remove("AGENTMUX_DATA_HOME")
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_subcommand_round_trips_with_text_and_json_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();

    let out = cli(
        tmp.path(),
        &[
            "--data-dir",
            d,
            "write",
            "a1",
            "--url",
            "http://127.0.0.1:8123",
            "--block",
            "b7",
            "--pid",
            "42",
            "--auth-key",
            "s3cret",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "registered a1 -> http://127.0.0.1:8123\n");

    let out = cli(tmp.path(), &["--data-dir", d, "lookup", "a1"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("local-url:  http://127.0.0.1:8123") && text.contains("pid:        42"),
        "{text}"
    );
    assert!(
        !text.contains("s3cret"),
        "text output never shows the key: {text}"
    );

    let out = cli(tmp.path(), &["--data-dir", d, "--json", "lookup", "a1"]);
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            entry["auth_key"].as_str(),
            entry["block_id"].as_str(),
            entry["pid"].as_u64()
        ),
        (Some("s3cret"), Some("b7"), Some(42))
    );

    let out = cli(tmp.path(), &["--data-dir", d, "list"]);
    let text = stdout(&out);
    assert!(
        text.starts_with("AGENT") && text.contains("a1") && text.contains("http://127.0.0.1:8123"),
        "{text}"
    );
    let out = cli(tmp.path(), &["--data-dir", d, "--json", "list"]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 1);

    let out = cli(
        tmp.path(),
        &[
            "--data-dir",
            d,
            "--json",
            "cleanup",
            "--max-age-ms",
            "3600000",
        ],
    );
    assert_eq!(stdout(&out).trim(), r#"{"removed":0}"#);
    let out = cli(tmp.path(), &["--data-dir", d, "cleanup", "--dead-owners"]);
    assert!(out.status.success());

    let out = cli(tmp.path(), &["--data-dir", d, "--json", "remove", "a1"]);
    assert_eq!(stdout(&out).trim(), r#"{"removed":true}"#);
    let out = cli(tmp.path(), &["--data-dir", d, "remove", "a1"]);
    assert!(
        out.status.success(),
        "removing a missing entry is not an error"
    );
    assert_eq!(stdout(&out), "no entry for a1\n");
}

#[test]
fn exit_codes_say_missing_and_error_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();

    let out = cli(tmp.path(), &["--data-dir", d, "lookup", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no entry for agent \"nobody\""),
        "{}",
        stderr(&out)
    );

    let out = cli(
        tmp.path(),
        &["--data-dir", d, "write", "", "--url", "u", "--block", "b"],
    );
    assert_eq!(out.status.code(), Some(3), "a registry error, not a usage error");
    assert!(
        stderr(&out).contains("invalid agent id"),
        "{}",
        stderr(&out)
    );

    let out = cli(tmp.path(), &["--data-dir", d, "write", "a1"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --url/--block is a usage error"
    );
    assert!(stderr(&out).contains("--url"), "{}", stderr(&out));
}

#[test]
fn the_data_dir_defaults_to_agentmux_data_home_then_home() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |data_home: &std::ffi::OsStr, id: &str| {
        Command::new(env!("CARGO_BIN_EXE_agentmux-registry"))
            .args(["write", id, "--url", "u", "--block", "b"])
            .env("AGENTMUX_DATA_HOME", data_home)
            .env("HOME", tmp.path())
            .env("XDG_CACHE_HOME", tmp.path().join("cache"))
            .output()
            .unwrap()
    };
    let custom = tmp.path().join("custom");
    let out = run(custom.as_os_str(), "env-agent");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(custom.join("agents/env-agent.json").is_file());

    let out = run("".as_ref(), "home-agent");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tmp
        .path()
        .join(".agentmux/agents/home-agent.json")
        .is_file());
}

fn cached_artifacts(home: &Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(home.join("cache/agentmux-registry")) {
        Ok(dir) => dir
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn the_compiled_component_is_cached_privately_and_untrusted_artifacts_are_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    assert!(cli(tmp.path(), &["--data-dir", d, "list"]).status.success());
    let artifacts = cached_artifacts(tmp.path());
    assert_eq!(
        artifacts.len(),
        1,
        "the first run caches the compiled component"
    );
    let artifact = &artifacts[0];
    assert_eq!(mode(artifact), 0o600);
    assert_eq!(mode(artifact.parent().unwrap()), 0o700);
    let good = std::fs::read(artifact).unwrap();

    // A corrupt artifact is not loaded: the run still works and rewrites it.
    std::fs::write(artifact, b"not a compiled component").unwrap();
    assert!(cli(tmp.path(), &["--data-dir", d, "list"]).status.success());
    assert_eq!(std::fs::read(artifact).unwrap().len(), good.len());

    // One that others could have written is not trusted, even if valid.
    std::fs::set_permissions(artifact, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(cli(tmp.path(), &["--data-dir", d, "list"]).status.success());
    assert_eq!(mode(artifact), 0o600, "replaced by a private one");

    // Artifacts of other versions do not pile up: a run that caches a new
    // one keeps only the most recently written few.
    let cache = artifact.parent().unwrap();
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    let old_versions: Vec<_> = (0..6)
        .map(|i| {
            let old = cache.join(format!("{i:016x}.cwasm"));
            let file = std::fs::File::create(&old).unwrap();
            file.set_modified(long_ago - std::time::Duration::from_secs(i))
                .unwrap();
            old
        })
        .collect();
    let crashed_write = cache.join(".1.0.tmp");
    std::fs::File::create(&crashed_write)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    std::fs::remove_file(artifact).unwrap();
    assert!(cli(tmp.path(), &["--data-dir", d, "list"]).status.success());
    let mut kept = cached_artifacts(tmp.path());
    kept.sort();
    let mut expected = vec![artifact.clone()];
    expected.extend(old_versions[..3].iter().cloned());
    expected.sort();
    assert_eq!(
        kept, expected,
        "the new artifact and the three newest others"
    );
    assert!(!crashed_write.exists(), "a stale temporary file is removed");

    // The cache can be switched off.
    let off = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentmux-registry"))
        .args(["--data-dir", d, "list"])
        .env("HOME", off.path())
        .env("XDG_CACHE_HOME", off.path().join("cache"))
        .env("AGENTMUX_REGISTRY_CACHE", "off")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(cached_artifacts(off.path()).is_empty());
}

/// A tmpfs mounted `noexec` for the life of the value (needs root).
struct NoexecMount(std::path::PathBuf);

impl NoexecMount {
    fn new(at: &Path) -> Option<NoexecMount> {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "noexec,size=64m", "tmpfs"])
            .arg(at)
            .output()
            .is_ok_and(|out| out.status.success());
        mounted.then(|| NoexecMount(at.to_path_buf()))
    }
}

impl Drop for NoexecMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_cache_on_a_noexec_file_system_is_loaded_not_recompiled() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let Some(_mount) = NoexecMount::new(&tmp.path().join("home")) else {
        eprintln!("skipped: mounting a noexec tmpfs needs root");
        return;
    };
    let home = tmp.path().join("home");
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();

    assert!(cli(&home, &["--data-dir", d, "list"]).status.success());
    let artifacts = cached_artifacts(&home);
    assert_eq!(artifacts.len(), 1, "the first run caches the component");
    let cached = std::fs::metadata(&artifacts[0]).unwrap().ino();

    // Its file cannot be mapped executable here, so the second run must load
    // a copy; compiling again would replace the artifact.
    assert!(cli(&home, &["--data-dir", d, "list"]).status.success());
    assert_eq!(cached_artifacts(&home), artifacts);
    assert_eq!(
        std::fs::metadata(&artifacts[0]).unwrap().ino(),
        cached,
        "the cached artifact was used, not compiled and replaced"
    );
}

#[test]
fn the_quick_start_entry_survives_a_dead_owner_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();
    let out = cli(
        tmp.path(),
        &["--data-dir", d, "write", "demo", "--url", "http://127.0.0.1:8123", "--block", "b"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(tmp.path(), &["--data-dir", d, "--json", "lookup", "demo"]);
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entry["pid"], 0, "no --pid: the owner is unknown, not this short-lived command");
    let out = cli(tmp.path(), &["--data-dir", d, "cleanup", "--dead-owners"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cli(tmp.path(), &["--data-dir", d, "lookup", "demo"]).status.success());
}

#[test]
fn completions_and_a_man_page_come_from_the_command_definition() {
    let tmp = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = cli(tmp.path(), &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("agentmux-registry") && script.contains("dead-owners"), "{shell}");
    }
    let out = cli(tmp.path(), &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
    let out = cli(tmp.path(), &["man"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && page.contains(".TH"), "{page}");
    assert!(page.contains("agentmux\\-registry") && page.contains("cleanup"), "{page}");
}

#[test]
fn text_output_cannot_be_forged_by_stored_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();
    let evil = "b\nforged  http://x  b  1  0s ago  set\u{1b}[2J";
    let out = cli(
        tmp.path(),
        &["--data-dir", d, "write", "a", "--url", "u", "--block", evil],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(tmp.path(), &["--data-dir", d, "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "a header and one row: {text:?}");
    assert!(!text.contains('\u{1b}') && text.contains("\\u{1b}"), "{text:?}");
    // JSON keeps the exact value.
    let out = cli(tmp.path(), &["--data-dir", d, "--json", "lookup", "a"]);
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entry["block_id"], evil);
}
