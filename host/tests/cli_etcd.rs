//! The `agentmux-registry` command on etcd (`--etcd`, `--etcd-prefix`):
//! every subcommand, `watch` and `register` included, against a cluster on
//! loopback that each test starts. Linux, with the `etcd` feature; where
//! Debian's etcd is missing the tests skip with a note (`.ci/run` requires
//! it).
#![cfg(all(feature = "etcd", target_os = "linux"))]

#[path = "../../tests/src/etcd.rs"]
#[allow(dead_code)]
mod etcd;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use etcd::Cluster;

fn command(cluster: &Cluster, prefix: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentmux-registry"));
    command
        .args(["--etcd", &cluster.endpoints(), "--etcd-prefix", prefix])
        .args(args)
        .env_remove("AGENTMUX_CHANNEL");
    command
}

/// A child process killed when the test ends, even by a failed assertion
/// (it would otherwise hold the test's output open).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(cluster: &Cluster, prefix: &str, args: &[&str]) -> Output {
    command(cluster, prefix, args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every key under `prefix`, as etcd's own client lists them.
fn keys(cluster: &Cluster, prefix: &str) -> Vec<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &cluster.endpoints(),
            "get",
            "--prefix",
            "--keys-only",
            prefix,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_subcommand_works_on_etcd_under_its_prefix_only() {
    let Some(cluster) = Cluster::start(1) else {
        return;
    };
    let p = "/team-a/";
    let out = cli(
        &cluster,
        p,
        &[
            "write",
            "A1",
            "--url",
            "http://10.0.0.5:8123",
            "--block",
            "b7",
            "--auth-key",
            "s3cret",
            "--nonce",
            "9",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "registered A1 -> http://10.0.0.5:8123\n");

    let out = cli(&cluster, p, &["lookup", "a1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let entry: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(entry["agent_id"], "A1");
    assert_eq!(entry["auth_key"], "s3cret");

    let out = cli(&cluster, p, &["list"]);
    assert!(
        stdout(&out).contains("http://10.0.0.5:8123"),
        "{}",
        stdout(&out)
    );

    let out = cli(
        &cluster,
        p,
        &[
            "--shared",
            "--channel",
            "dev-a",
            "write",
            "a1",
            "--url",
            "http://10.0.0.6:1",
            "--block",
            "b8",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&cluster, p, &["owners", "a1"]);
    let text = stdout(&out);
    assert!(
        text.contains("per-channel") && text.contains("dev-a"),
        "{text}"
    );
    // Owners on other hosts: liveness is not judged by a pid here.
    assert!(!text.contains("dead"), "{text}");

    // Every key is under the prefix, and another prefix sees none of them.
    assert_eq!(
        keys(&cluster, "/"),
        ["/team-a/agents/a1.json", "/team-a/shared/a1/dev-a.json"]
    );
    let out = cli(&cluster, "/team-b/", &["lookup", "a1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));

    let out = cli(
        &cluster,
        p,
        &["cleanup", "--max-age-ms", "3600000", "--dead-owners"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        cli(&cluster, p, &["lookup", "a1"]).status.success(),
        "nothing stale was removed"
    );
    let out = cli(&cluster, p, &["remove", "a1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cli(&cluster, p, &["lookup", "a1"]).status.code(), Some(1));
    let out = cli(
        &cluster,
        p,
        &["--shared", "--channel", "dev-a", "remove", "a1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(keys(&cluster, "/").is_empty());

    // Prefixes that could share keys with another registry's, and
    // endpoints that are no URL, are usage errors.
    for (prefix, endpoints, why) in [
        ("/team-a", cluster.endpoints(), "must end with '/'"),
        (
            "/team-a/shared/",
            cluster.endpoints(),
            "is the registry's own",
        ),
        ("/team-a/", ",,".to_string(), "no endpoints"),
        (
            "/team-a/",
            "127.0.0.1:2379".to_string(),
            "expected http://HOST:PORT",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_agentmux-registry"))
            .args(["--etcd", &endpoints, "--etcd-prefix", prefix, "list"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{prefix} {endpoints}");
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
    }
}

/// Reads lines of `child`'s stdout until one satisfies `wanted` (or 30 s).
fn read_until(lines: &mut impl Iterator<Item = String>, wanted: impl Fn(&str) -> bool) -> String {
    for line in lines.by_ref() {
        if wanted(&line) {
            return line;
        }
    }
    panic!("the output ended before the line looked for");
}

#[test]
fn watch_follows_registrations_and_register_removes_its_entry_when_interrupted() {
    let Some(cluster) = Cluster::start(1) else {
        return;
    };
    let p = "/watched/";
    let mut watch = Killed(
        command(&cluster, p, &["watch", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(watch.0.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap);
    // Registered, renewed: the watch sees it; interrupted: removed.
    for signal in ["INT", "TERM"] {
        let mut register = command(
            &cluster,
            p,
            &[
                "register",
                "agent-r",
                "--url",
                "http://10.0.0.7:9",
                "--block",
                "b1",
                "--auth-key",
                "k",
                "--beat-ms",
                "300",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(Killed)
        .unwrap();
        let mut out = BufReader::new(register.0.stdout.take().unwrap()).lines();
        let first = out.next().unwrap().unwrap();
        assert_eq!(first, "registered agent-r -> http://10.0.0.7:9");
        read_until(&mut lines, |l| {
            l.contains(r#""put""#) && l.contains("agent-r")
        });
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &register.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut errors = String::new();
        std::io::Read::read_to_string(&mut register.0.stderr.take().unwrap(), &mut errors).unwrap();
        let done = Output {
            status: register.0.wait().unwrap(),
            stdout: Vec::new(),
            stderr: errors.into_bytes(),
        };
        assert!(done.status.success(), "SIG{signal}: {}", stderr(&done));
        assert!(
            stderr(&done).contains("removed the entry"),
            "{}",
            stderr(&done)
        );
        read_until(&mut lines, |l| {
            l.contains(r#""removed""#) && l.contains("agent-r")
        });
        assert_eq!(
            cli(&cluster, p, &["lookup", "agent-r"]).status.code(),
            Some(1)
        );
    }
    drop(watch);
}

#[test]
fn a_killed_registers_entry_vanishes_within_its_lease() {
    let Some(cluster) = Cluster::start(1) else {
        return;
    };
    let p = "/killed/";
    // Beats of 500 ms: a lease of 5 s (three beats, at least five seconds).
    let mut register = command(
        &cluster,
        p,
        &[
            "register",
            "agent-k",
            "--url",
            "http://10.0.0.8:9",
            "--block",
            "b1",
            "--beat-ms",
            "500",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .map(Killed)
    .unwrap();
    let mut out = BufReader::new(register.0.stdout.take().unwrap()).lines();
    assert!(out
        .next()
        .unwrap()
        .unwrap()
        .starts_with("registered agent-k"));
    // Renewed past its first lease: it lives on keep-alives, not on its TTL.
    std::thread::sleep(Duration::from_millis(6000));
    assert!(cli(&cluster, p, &["lookup", "agent-k"]).status.success());
    register.0.kill().unwrap(); // SIGKILL: nothing is removed by the process.
    let killed = Instant::now();
    let _ = register.0.wait();
    while cli(&cluster, p, &["lookup", "agent-k"]).status.success() {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the entry outlived its lease by far"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = killed.elapsed();
    // The lease is 5 s, kept alive up to the kill; etcd checks expiry
    // every 500 ms.
    // Slack for a loaded machine: each lookup here is a process.
    assert!(gone <= Duration::from_secs(7), "gone after {gone:?}");
    eprintln!("a killed register's entry vanished {gone:?} after SIGKILL");
}

#[test]
fn an_unreachable_cluster_fails_every_command_clearly_within_its_deadline() {
    let Some(mut cluster) = Cluster::start(1) else {
        return;
    };
    cluster.kill(0);
    let commands = [
        &["list"][..],
        &["lookup", "a"],
        &["write", "a", "--url", "u", "--block", "b"],
    ];
    // All at once: each waits out its own deadline.
    let results: Vec<_> = std::thread::scope(|scope| {
        let running: Vec<_> = commands
            .iter()
            .map(|args| {
                let cluster = &cluster;
                scope.spawn(move || {
                    let started = Instant::now();
                    (cli(cluster, "/down/", args), started.elapsed())
                })
            })
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (args, (out, took)) in commands.iter().zip(results) {
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stdout(&out));
        let message = stderr(&out);
        assert!(
            message.contains("etcd at http://127.0.0.1:"),
            "{args:?}: {message}"
        );
        // Each command's deadline is 10 s.
        assert!(took < Duration::from_secs(15), "{args:?} took {took:?}");
    }
}
