//! The `agentmux-registry` command: subcommands, output, exit codes, the
//! default data dir, and that nothing is written outside the data dir.

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
    // A live owner (this test), so `cleanup --dead-owners` below keeps it on
    // every platform.
    let pid = std::process::id().to_string();

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
            &pid,
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
        text.contains("local-url:  http://127.0.0.1:8123")
            && text.contains(&format!("pid:        {pid}")),
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
        (
            Some("s3cret"),
            Some("b7"),
            Some(u64::from(std::process::id()))
        )
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
    assert_eq!(
        out.status.code(),
        Some(3),
        "a registry error, not a usage error"
    );
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

/// Windows sets no `HOME`: `~` is the user's profile there.
#[cfg(windows)]
#[test]
fn on_windows_the_data_dir_defaults_to_the_user_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentmux-registry"))
        .args(["write", "profile-agent", "--url", "u", "--block", "b"])
        .env_remove("AGENTMUX_DATA_HOME")
        .env_remove("HOME")
        .env("USERPROFILE", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tmp
        .path()
        .join(".agentmux/agents/profile-agent.json")
        .is_file());
}

/// Opening a registry compiles nothing and caches nothing: the component was
/// compiled when the crate was built, so a run writes only the data dir.
#[test]
fn a_run_writes_nothing_outside_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();
    let out = cli(
        &home,
        &["--data-dir", d, "write", "a", "--url", "u", "--block", "b"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cli(&home, &["--data-dir", d, "list"]).status.success());
    let left: Vec<_> = std::fs::read_dir(&home).unwrap().collect();
    assert!(left.is_empty(), "wrote into HOME: {left:?}");
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["data", "home"]);
}

#[test]
fn the_quick_start_entry_survives_a_dead_owner_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();
    let out = cli(
        tmp.path(),
        &[
            "--data-dir",
            d,
            "write",
            "demo",
            "--url",
            "http://127.0.0.1:8123",
            "--block",
            "b",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(tmp.path(), &["--data-dir", d, "--json", "lookup", "demo"]);
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        entry["pid"], 0,
        "no --pid: the owner is unknown, not this short-lived command"
    );
    let out = cli(tmp.path(), &["--data-dir", d, "cleanup", "--dead-owners"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cli(tmp.path(), &["--data-dir", d, "lookup", "demo"])
        .status
        .success());
}

#[test]
fn completions_and_a_man_page_come_from_the_command_definition() {
    let tmp = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = cli(tmp.path(), &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("agentmux-registry") && script.contains("dead-owners"),
            "{shell}"
        );
    }
    let out = cli(tmp.path(), &["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    let out = cli(tmp.path(), &["man"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && page.contains(".TH"), "{page}");
    assert!(
        page.contains("agentmux\\-registry") && page.contains("cleanup"),
        "{page}"
    );
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
    assert!(
        !text.contains('\u{1b}') && text.contains("\\u{1b}"),
        "{text:?}"
    );
    // JSON keeps the exact value.
    let out = cli(tmp.path(), &["--data-dir", d, "--json", "lookup", "a"]);
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entry["block_id"], evil);
}

/// A failed stdout is an I/O error (exit 3), never a panic; a reader that
/// stops early (`| head`) ends the command quietly: exit 0, nothing on
/// stderr. Each write here is made to fail: `/dev/full` refuses every byte,
/// a pipe whose reading end is closed refuses the first, and a listing far
/// larger than a pipe holds cannot fit in one whose reader left after the
/// first line.
#[test]
fn a_failing_stdout_is_reported_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();
    // 200 rows of over 2,000 bytes each: 400 KB, where a pipe holds 64 KiB.
    let url = format!("http://127.0.0.1:1/{}", "p".repeat(2000));
    // Written through the library: 200 process launches are slow under Wine,
    // and Wine's process creation fails now and then (ERROR_INTERNAL_ERROR).
    let registry = agentmux_registry::blocking::Registry::open(d).unwrap();
    for i in 0..200 {
        let fields = agentmux_registry::EntryFields {
            agent_id: format!("a{i}"),
            local_url: url.clone(),
            block_id: "b".into(),
            ..Default::default()
        };
        registry.write(fields).unwrap();
    }
    drop(registry);
    let listing = cli(tmp.path(), &["--data-dir", d, "list"]);
    assert!(listing.status.success(), "{}", stderr(&listing));
    assert!(listing.stdout.len() > 4 << 16, "{}", listing.stdout.len());
    let list = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentmux-registry"));
        command.args(["--data-dir", d, "list"]);
        command
    };
    if std::path::Path::new("/dev/full").exists() {
        for args in [
            &["--data-dir", d, "list"][..],
            &["completions", "bash"],
            &["man"],
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_agentmux-registry"))
                .args(args)
                .stdout(std::fs::File::create("/dev/full").unwrap())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
            assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        }
    }
    let quiet = |out: Output, case: &str| {
        assert_eq!(
            (out.status.code(), stderr(&out).as_str()),
            (Some(0), ""),
            "{case}"
        );
    };

    // The reading end is closed before the command starts.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = list().stdout(writer).output().unwrap();
    quiet(out, "no reader at all");

    // The reader takes the first line, then goes away.
    let mut child = list()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with("AGENT "), "{first}");
    quiet(
        child.wait_with_output().unwrap(),
        "a reader that left early",
    );
}

/// A test that cannot run here (it needs root, or `chattr`) is skipped with a
/// note, unless `AGENTMUX_REQUIRE_ROOT=1` (as `.ci/run` sets), which makes it
/// a failure.
#[cfg(target_os = "linux")]
fn skip_unless_required(why: &str) {
    if std::env::var("AGENTMUX_REQUIRE_ROOT").is_ok_and(|v| v == "1") {
        panic!("cannot run, and AGENTMUX_REQUIRE_ROOT=1 requires it: {why}");
    }
    eprintln!("note: skipped: {why}");
}

/// A sweep that could not remove everything says so: the result line, then
/// the reason on stderr, and exit code 3.
#[cfg(target_os = "linux")]
#[test]
fn cleanup_that_could_not_remove_a_stale_entry_fails_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let agents = data.join("agents");
    std::fs::create_dir_all(&agents).unwrap();
    // Private already, so that opening it adopts nothing (adoption would
    // have to tighten the immutable file too).
    std::fs::set_permissions(&agents, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let stuck = agents.join("stuck.json");
    std::fs::write(
        &stuck,
        r#"{"agent_id":"stuck","local_url":"u","block_id":"b","pid":0,"updated_at":1,"auth_key":"k"}"#,
    )
    .unwrap();
    let chattr = |flag: &str| {
        Command::new("chattr")
            .arg(flag)
            .arg(&stuck)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    // Immutable: not even root can rename or unlink it.
    if !chattr("+i") {
        skip_unless_required("cannot make a file immutable here (needs root and chattr)");
        return;
    }
    let out = cli(
        tmp.path(),
        &["--data-dir", data.to_str().unwrap(), "cleanup"],
    );
    chattr("-i");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("removed 0"), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("could not remove 1") && err.contains("stuck.json"),
        "{err}"
    );
}

/// Entry files another user left behind (a `sudo` run) cannot be read: each
/// is skipped at once, never waited on, so a listing past hundreds of them
/// answers, and a lookup of one says why. (Waiting 50 ms on each, as for
/// Windows's pending deletes, made 800 of them exceed the 30 s call limit.)
#[cfg(target_os = "linux")]
#[test]
fn another_users_unreadable_entries_are_skipped_without_waiting() {
    use std::os::unix::fs::{chown, PermissionsExt};
    if !rustix::process::geteuid().is_root() {
        skip_unless_required("needs root to make another user's files");
        return;
    }
    const USER: u32 = 4243;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("data");
    let agents = data.join("agents");
    std::fs::create_dir_all(&agents).unwrap();
    for dir in [&data, &agents] {
        chown(dir, Some(USER), Some(USER)).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    for i in 0..800 {
        let path = agents.join(format!("root-{i}.json"));
        std::fs::write(
            &path,
            format!(
                r#"{{"agent_id":"root-{i}","local_url":"http://127.0.0.1:1","block_id":"b","pid":1,"updated_at":1,"auth_key":"k"}}"#
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let as_user = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid", "4243", "--regid", "4243", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_agentmux-registry"))
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .env("HOME", &data)
            .env_remove("AGENTMUX_DATA_HOME")
            .output()
            .unwrap()
    };
    let out = as_user(&[
        "write",
        "mine",
        "--url",
        "http://127.0.0.1:2",
        "--block",
        "b",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = as_user(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("mine"), "{}", stdout(&out));
    assert!(!stdout(&out).contains("root-"), "{}", stdout(&out));

    let out = as_user(&["lookup", "root-7"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("\"root-7.json\" cannot be read: permission denied"),
        "{}",
        stderr(&out)
    );
}

/// A data dir others can write is said on every run (they could replace
/// `agents` and make the registry unavailable); the command still runs.
#[cfg(unix)]
#[test]
fn a_data_dir_others_can_write_is_reported_on_stderr() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = cli(tmp.path(), &["--data-dir", data.to_str().unwrap(), "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("agentmux-registry: warning: "),
        "{}",
        stderr(&out)
    );
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = cli(tmp.path(), &["--data-dir", data.to_str().unwrap(), "list"]);
    assert!(
        out.status.success() && stderr(&out).is_empty(),
        "{}",
        stderr(&out)
    );
}

/// An owner's start time read from another time namespace is on another
/// clock: the CLI does not record it, so the owner is never judged dead for
/// it (`cleanup --dead-owners` keeps the entry).
#[cfg(target_os = "linux")]
#[test]
fn a_write_from_another_time_namespace_never_makes_a_live_owner_dead() {
    let unshare = ["--time", "--boottime", "100000", "--fork"];
    let usable = Command::new("unshare")
        .args(unshare)
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        eprintln!("note: skipped: `unshare --time` is missing or not permitted here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut owner = Command::new("sleep").arg("60").spawn().unwrap();
    let out = Command::new("unshare")
        .args(unshare)
        .arg(env!("CARGO_BIN_EXE_agentmux-registry"))
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--json",
            "write",
            "victim",
            "--url",
            "http://127.0.0.1:1",
            "--block",
            "b",
        ])
        .args(["--pid", &owner.id().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("pid_started"), "{}", stdout(&out));

    let d = data.to_str().unwrap();
    let out = cli(tmp.path(), &["--data-dir", d, "cleanup", "--dead-owners"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let found = cli(tmp.path(), &["--data-dir", d, "lookup", "victim"]);
    owner.kill().unwrap();
    let _ = owner.wait();
    assert!(found.status.success(), "the live owner's entry was removed");
}

/// `cleanup --dead-owners` that could not remove a dead owner's entry says
/// so as a sweep does: how many it removed (the malformed file beside it),
/// then on stderr how many it could not remove and why, and exit code 3.
#[cfg(target_os = "linux")]
#[test]
fn a_dead_owner_entry_that_cannot_be_removed_is_reported_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    // Written while its owner runs (so its start time and pid namespace are
    // recorded), then the owner ends.
    let mut owner = Command::new("sleep").arg("1000").spawn().unwrap();
    let pid = owner.id().to_string();
    let args = [
        "--data-dir",
        d,
        "write",
        "dead",
        "--url",
        "u",
        "--block",
        "b",
        "--pid",
        &pid,
    ];
    assert!(cli(tmp.path(), &args).status.success());
    owner.kill().unwrap();
    owner.wait().unwrap();
    std::fs::write(data.join("agents/bad.json"), "junk").unwrap();
    let stuck = data.join("agents/dead.json");
    let chattr = |flag: &str| {
        Command::new("chattr")
            .arg(flag)
            .arg(&stuck)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if !chattr("+i") {
        skip_unless_required("cannot make a file immutable here (needs root and chattr)");
        return;
    }
    let out = cli(tmp.path(), &["--data-dir", d, "cleanup", "--dead-owners"]);
    chattr("-i");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "removed 1 stale or invalid entries\n");
    let err = stderr(&out);
    assert!(
        err.contains("could not remove 1") && err.contains("dead.json"),
        "{err}"
    );
    // Once it can be removed, it is.
    let out = cli(
        tmp.path(),
        &["--data-dir", d, "--json", "cleanup", "--dead-owners"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "{\"removed\":1}\n");
}

/// A lookup that finds nothing exits 1 even when its output cannot be
/// written: the exit status says what happened to the registry, whatever
/// became of the reader.
#[test]
fn a_missing_entry_exits_1_even_when_the_reader_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_agentmux-registry"))
        .args([
            "--data-dir",
            d.to_str().unwrap(),
            "--json",
            "lookup",
            "nobody",
        ])
        .env_remove("AGENTMUX_DATA_HOME")
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no entry for agent"),
        "{}",
        stderr(&out)
    );
}

/// An error is printed with each of its causes once: "what: why".
#[cfg(unix)]
#[test]
fn an_error_prints_each_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let not_a_dir = file.join("data");
    let out = cli(
        tmp.path(),
        &["--data-dir", not_a_dir.to_str().unwrap(), "list"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&not_a_dir.display().to_string()), "{err}");
    assert_eq!(err.matches("Not a directory").count(), 1, "{err}");
}

/// `--shared-dir`: one entry per agent and channel; `--channel` (default
/// `$AGENTMUX_CHANNEL`, else `stable`) says which; `lookup` shows every
/// channel's entry freshest first; `--json` shows every stored key.
#[test]
fn the_shared_registry_is_written_and_read_per_channel() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reactive");
    let r = root.to_str().unwrap();
    let run = |channel_env: Option<&str>, args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentmux-registry"));
        command
            .args(args)
            .env("HOME", tmp.path())
            .env_remove("AGENTMUX_DATA_HOME")
            .env_remove("AGENTMUX_CHANNEL");
        if let Some(channel) = channel_env {
            command.env("AGENTMUX_CHANNEL", channel);
        }
        command.output().unwrap()
    };
    let write = [
        "--shared-dir",
        r,
        "write",
        "AgentX",
        "--url",
        "http://127.0.0.1:1",
        "--block",
        "b",
    ];
    let out = run(None, &[&write[..], &["--nonce", "7"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let stored = std::fs::read_to_string(root.join("agentx/stable.json")).unwrap();
    assert!(
        stored.contains(r#""channel":"stable","registration_nonce":7"#),
        "{stored}"
    );
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert!(run(Some("dev-a"), &write).status.success());
    assert!(
        root.join("agentx/dev-a.json").is_file(),
        "channel from the environment"
    );
    // An entry agentmux-srv wrote, with keys this crate does not interpret.
    std::fs::write(
        root.join("agentx/dev-b.json"),
        r#"{"agent_id":"AgentX","local_url":"http://127.0.0.1:3","block_id":"b","pid":0,"updated_at":1,"auth_key":"","channel":"dev-b","registration_nonce":0,"uid":"u-1"}"#,
    )
    .unwrap();

    let out = run(None, &["--shared-dir", r, "--json", "lookup", "agentx"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let channels: Vec<&str> = all.iter().map(|e| e["channel"].as_str().unwrap()).collect();
    assert_eq!(channels, ["dev-a", "stable", "dev-b"], "freshest first");
    assert_eq!(all[2]["uid"], "u-1", "every stored key");
    let text = stdout(&run(None, &["--shared-dir", r, "list"]));
    assert!(
        text.starts_with("AGENT") && text.lines().next().unwrap().contains("CHANNEL"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4, "{text}");

    let out = run(
        None,
        &["--shared-dir", r, "--channel", "dev-a", "remove", "AGENTX"],
    );
    assert_eq!(stdout(&out), "removed AGENTX\n");
    assert!(!root.join("agentx/dev-a.json").exists());
    assert!(
        root.join("agentx/stable.json").exists(),
        "other channels stay"
    );
    let missing = run(None, &["--shared-dir", r, "--json", "lookup", "nobody"]);
    assert_eq!(
        (missing.status.code(), stdout(&missing)),
        (Some(1), "[]\n".into())
    );
    // --channel means nothing to a per-channel registry.
    // A usage error, exit status 2.
    let out = run(None, &["--channel", "x", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--channel applies to the shared registry"));
    let out = run(None, &["--shared-dir", r, "--channel=", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// `owners ID`: every entry of the id in the data dir's registry and the
/// shared one, with registry, channel, block, pid, owner liveness and age.
#[test]
fn owners_shows_who_holds_an_id_in_both_registries() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let root = tmp.path().join("reactive");
    let (d, r) = (data.to_str().unwrap(), root.to_str().unwrap());
    let pid = std::process::id().to_string();
    let w = |extra: &[&str], block: &str| {
        let args = [
            extra,
            &[
                "write",
                "dup",
                "--url",
                "http://127.0.0.1:1",
                "--block",
                block,
                "--pid",
                &pid,
            ],
        ]
        .concat();
        assert!(cli(tmp.path(), &args).status.success());
    };
    w(&["--data-dir", d], "b-local");
    w(&["--shared-dir", r, "--channel", "dev-a"], "b-dev");
    w(&["--shared-dir", r, "--channel", "stable"], "b-stable");
    let out = cli(
        tmp.path(),
        &["--data-dir", d, "--shared-dir", r, "owners", "DUP"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().collect();
    assert!(
        rows[0].starts_with("REGISTRY") && rows[0].contains("OWNER"),
        "{text}"
    );
    assert_eq!(rows.len(), 4, "{text}");
    assert!(
        rows[1].starts_with("per-channel") && rows[1].contains("b-local"),
        "{text}"
    );
    assert!(rows[2..].iter().all(|r| r.starts_with("shared")), "{text}");
    assert!(rows[1..].iter().all(|r| r.contains(" alive ")), "{text}");
    let json = cli(
        tmp.path(),
        &[
            "--data-dir",
            d,
            "--shared-dir",
            r,
            "--json",
            "owners",
            "dup",
        ],
    );
    let all: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[1]["registry"], "shared");
    assert_eq!(all[1]["entry"]["block_id"], "b-stable", "freshest first");
    let none = cli(
        tmp.path(),
        &["--data-dir", d, "--shared-dir", r, "owners", "nobody"],
    );
    assert_eq!(none.status.code(), Some(1));
}

/// `list` has a HEALTH column; `lookup` a health line; `--json --health`
/// wraps each entry as `{"health":…,"entry":…}` (an entry may have a key
/// `health` of its own); `--health` without `--json` is a usage error.
#[test]
fn list_and_lookup_show_each_entry_s_health() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();
    let registry = agentmux_registry::blocking::Registry::open(d).unwrap();
    let write = |id: &str, beat: Option<u64>| {
        registry
            .write(agentmux_registry::EntryFields {
                agent_id: id.into(),
                local_url: "http://127.0.0.1:1".into(),
                block_id: "b".into(),
                beat_interval_ms: beat,
                // A key of the entry's own named like the wrapper's.
                extra: vec![("health".into(), "\"forged\"".into())],
                ..Default::default()
            })
            .unwrap()
    };
    write("fresh", Some(3_600_000));
    write("plain", None);
    let stale = write("stale", Some(1));
    // Three beats of 1 ms missed by the time the command reads the clock.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    while now() <= stale.updated_at + 3 {
        std::thread::yield_now();
    }

    let out = cli(tmp.path(), &["--data-dir", d, "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let health_of = |id: &str| {
        let header = text.lines().next().unwrap();
        let column = header.find("HEALTH").expect("a HEALTH column");
        let row = text.lines().find(|l| l.starts_with(id)).unwrap();
        row[column..].split_whitespace().next().unwrap().to_owned()
    };
    assert_eq!(
        (health_of("fresh"), health_of("plain"), health_of("stale")),
        ("fresh".into(), "unknown".into(), "stale".into()),
        "{text}"
    );

    let out = cli(tmp.path(), &["--data-dir", d, "lookup", "stale"]);
    assert!(
        stdout(&out).contains("\nhealth:     stale\n"),
        "{}",
        stdout(&out)
    );

    let out = cli(
        tmp.path(),
        &["--data-dir", d, "--json", "--health", "lookup", "fresh"],
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["health"], "fresh", "{shown}");
    assert_eq!(shown["entry"]["agent_id"], "fresh", "{shown}");
    assert_eq!(shown["entry"]["health"], "forged", "the entry's own key");

    let out = cli(tmp.path(), &["--data-dir", d, "--json", "--health", "list"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let healths: Vec<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["health"].as_str().unwrap())
        .collect();
    assert_eq!(healths, ["fresh", "unknown", "stale"], "{shown}");

    // Without --health, JSON is the entries as stored.
    let out = cli(tmp.path(), &["--data-dir", d, "--json", "lookup", "fresh"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["health"], "forged", "{shown}");

    let out = cli(tmp.path(), &["--data-dir", d, "--health", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// Sends `signal` to the child `process`.
#[cfg(unix)]
fn signal(process: &std::process::Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(process.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// wasmtime reads `WASMTIME_BACKTRACE_DETAILS` (its trap messages suggest
/// setting it to 1), and compiled code records the setting it gives: the
/// registry opens whatever it says at run time.
#[test]
fn the_registry_opens_whatever_wasmtime_backtrace_details_says() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for value in ["1", "0"] {
        let out = Command::new(env!("CARGO_BIN_EXE_agentmux-registry"))
            .args(["--data-dir", data.to_str().unwrap(), "list"])
            .env("HOME", tmp.path())
            .env("WASMTIME_BACKTRACE_DETAILS", value)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "WASMTIME_BACKTRACE_DETAILS={value}: {}",
            stderr(&out)
        );
    }
}

/// Waits for `child` to exit, for 30 s at most: past that it is killed and
/// the test fails, saying it did not end after `cause`.
#[cfg(unix)]
fn exit_after(child: &mut std::process::Child, cause: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running 30 s after {cause}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `watch --json`: one JSON object per line, flushed as each change comes,
/// the current entries first; SIGTERM ends it, and so does a closed output
/// (exit 0, as for `| head`).
#[cfg(unix)]
#[test]
fn watch_prints_ndjson_per_change_and_ends_on_sigterm_and_a_closed_pipe() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();
    let registry = agentmux_registry::blocking::Registry::open(d).unwrap();
    let write = |id: &str| {
        registry
            .write(agentmux_registry::EntryFields {
                agent_id: id.into(),
                local_url: "http://127.0.0.1:1".into(),
                block_id: "b".into(),
                ..Default::default()
            })
            .unwrap()
    };
    write("before");
    let spawn = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentmux-registry"));
        command
            .args(["--data-dir", d, "--json", "watch"])
            .env("HOME", tmp.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // SIGINT and SIGTERM as a terminal's foreground job has them, whatever
        // this test inherited (a shell ignores SIGINT in jobs it starts with
        // `&`, and the watch rightly keeps ignoring it then).
        // SAFETY: `signal` is async-signal-safe, as `pre_exec` requires.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                Ok(())
            });
        }
        command.spawn().unwrap()
    };
    let mut watcher = spawn();
    let mut lines = std::io::BufReader::new(watcher.stdout.take().unwrap()).lines();
    let mut next =
        || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    let first = next();
    assert_eq!(
        (
            &first["event"],
            &first["entry"]["agent_id"],
            &first["health"]
        ),
        (&"put".into(), &"before".into(), &"unknown".into()),
        "{first}"
    );
    write("during");
    let put = next();
    assert_eq!(put["entry"]["agent_id"], "during", "{put}");
    registry.remove("before").unwrap();
    let removed = next();
    assert_eq!(
        removed,
        serde_json::json!({"event": "removed", "agent_id": "before", "channel": ""})
    );
    signal(&watcher, rustix::process::Signal::TERM);
    let status = exit_after(&mut watcher, "SIGTERM");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "{status:?}");

    // Ctrl-C (SIGINT) ends it the same way, after the lines it printed.
    let mut watcher = spawn();
    let mut out = std::io::BufReader::new(watcher.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("\"during\""), "{line}");
    signal(&watcher, rustix::process::Signal::INT);
    let status = exit_after(&mut watcher, "SIGINT");
    assert_eq!(status.signal(), Some(2), "{status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "", "nothing after the interrupt");

    // A reader that goes away ends the watch at once, quietly, with no
    // change to write.
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_agentmux-registry"))
        .args(["--data-dir", d, "watch", "--now"])
        .env("HOME", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(watcher.stdout.take());
    let status = exit_after(&mut watcher, "its reader went away");
    let errors = std::io::read_to_string(watcher.stderr.take().unwrap()).unwrap();
    assert!(status.success(), "{status:?}: {errors}");

    // And one that goes away after a line: the same.
    let mut watcher = spawn();
    let mut out = std::io::BufReader::new(watcher.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("\"during\""), "{line}");
    drop(out);
    write("after");
    let status = exit_after(&mut watcher, "its reader went away");
    let errors = std::io::read_to_string(watcher.stderr.take().unwrap()).unwrap();
    assert!(status.success(), "{status:?}: {errors}");
    assert_eq!(errors, "");
}

/// `register`'s command: the data dir `d`, a fresh HOME.
#[cfg(unix)]
fn register_command(home: &Path, d: &str, id: &str, beat_ms: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentmux-registry"));
    command
        .args(["--data-dir", d, "register", id])
        .args(["--url", "http://127.0.0.1:9", "--block", "b"])
        .args(["--beat-ms", beat_ms])
        .env_remove("AGENTMUX_DATA_HOME")
        .env("HOME", home)
        .stderr(std::process::Stdio::piped());
    command
}

/// Waits, for 30 s at most, until `registry` has an entry of `id`.
#[cfg(unix)]
fn wait_for_entry(registry: &agentmux_registry::blocking::Registry, id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while registry.lookup(id).unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never registered"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `register` catches SIGINT and SIGTERM from before it writes its entry: a
/// signal that comes once the entry is written, while its line is not out
/// yet (its output is full here), still removes the entry, and it exits 0.
#[cfg(target_os = "linux")]
#[test]
fn register_removes_its_entry_on_a_signal_that_comes_before_its_line_is_out() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();
    let registry = agentmux_registry::blocking::Registry::open(d).unwrap();
    let (reader, mut writer) = std::io::pipe().unwrap();
    let size = rustix::pipe::fcntl_getpipe_size(&writer).unwrap();
    writer.write_all(&vec![b'.'; size]).unwrap();
    let mut child = register_command(tmp.path(), d, "r1", "100000")
        .stdout(writer)
        .spawn()
        .unwrap();
    wait_for_entry(&registry, "r1");
    signal(&child, rustix::process::Signal::TERM);
    let out = std::io::read_to_string(reader).unwrap();
    let status = exit_after(&mut child, "SIGTERM");
    let errors = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(status.success(), "{status:?}: {errors}");
    assert!(
        errors.contains("stopped by SIGTERM: removed the entry"),
        "{errors}"
    );
    assert_eq!(&out[size..], "registered r1 -> http://127.0.0.1:9\n");
    assert_eq!(registry.lookup("r1").unwrap(), None);
}

/// `register` taken over by another registration (a write of its id) stops
/// and fails (exit 3), saying so, and leaves the other's entry alone.
#[cfg(unix)]
#[test]
fn register_fails_when_another_registration_takes_its_id_over() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();
    let mut child = register_command(tmp.path(), d, "r2", "20")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "registered r2 -> http://127.0.0.1:9\n");
    let out = cli(
        tmp.path(),
        &[
            "--data-dir",
            d,
            "write",
            "r2",
            "--url",
            "http://127.0.0.1:10",
            "--block",
            "b2",
            "--nonce",
            "5",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let status = exit_after(&mut child, "its id was taken over");
    let errors = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(3), "{errors}");
    assert!(errors.contains("\"r2\" was taken over"), "{errors}");
    let out = cli(tmp.path(), &["--data-dir", d, "--json", "lookup", "r2"]);
    assert!(
        stdout(&out).contains("http://127.0.0.1:10"),
        "{}",
        stdout(&out)
    );
}
