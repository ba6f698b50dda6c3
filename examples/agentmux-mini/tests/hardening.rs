//! What `agentmux-mini` refuses, and the limits it keeps, each checked
//! against real server processes: start-up checks, auth, forwarding rules,
//! the reply cap, timeouts and the connection cap.

mod common;

#[path = "../src/ct.rs"]
mod ct;

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use agentmux_registry::blocking::Registry;
use agentmux_registry::EntryFields;
use common::*;
use serde_json::{json, Value};

const INJECT: &str = "/agentmux/reactive/inject";

/// Writes an entry for `agent_id` as any process sharing the data dir could.
/// Writes `agent_id`'s entry in the data dir's registry and in the shared
/// one (as the `stable` channel's, where the test's instances publish), so
/// an inject finds no other candidate to deliver to.
fn write_entry(registry: &Registry, agent_id: &str, url: &str, key: &str, pid: u32) {
    let fields = EntryFields {
        agent_id: agent_id.into(),
        local_url: url.into(),
        block_id: "blk".into(),
        pid,
        auth_key: key.into(),
        ..EntryFields::default()
    };
    registry
        .write(fields.clone())
        .unwrap_or_else(|e| panic!("writing {url:?} / {key:?}: {e}"));
    Registry::open_shared(registry.as_async().data_dir().join("shared"))
        .unwrap()
        .write(EntryFields {
            channel: "stable".into(),
            ..fields
        })
        .unwrap_or_else(|e| panic!("writing the shared {url:?} / {key:?}: {e}"));
}

fn inject_with(server: &Server, agent_id: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    request(
        &server.url,
        "POST",
        INJECT,
        Some(&server.key),
        &json!({ "agent_id": agent_id, "message": "m" }).to_string(),
        extra,
    )
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[test]
fn refuses_to_start_with_an_empty_missing_or_unsendable_auth_key() {
    let tmp = tempfile::tempdir().unwrap();
    let long = "k".repeat(1025);
    let cases: [(Option<&str>, &str); 6] = [
        (Some(""), "AGENTMUX_AUTH_KEY is empty"),
        (None, "AGENTMUX_AUTH_KEY is not set"),
        (Some("two words"), "visible ASCII"),
        (Some("key\r\nX-Agentmux-Hops: 0"), "visible ASCII"),
        (Some("clé"), "visible ASCII"),
        (Some(long.as_str()), "1 to 1024"),
    ];
    for (key, reason) in cases {
        let mut command = command(tmp.path());
        match key {
            Some(key) => command.env("AGENTMUX_AUTH_KEY", key),
            None => command.env_remove("AGENTMUX_AUTH_KEY"),
        };
        let (status, first_line, stderr) = run_refused(command);
        assert_eq!(first_line, "", "started with key {key:?}");
        assert_eq!(status.code(), Some(2), "key {key:?}: {stderr}");
        assert!(stderr.contains(reason), "key {key:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "key {key:?}: {stderr}");
    }
    // The longest key the registry stores is fine.
    let server = Server::start(tmp.path(), &"k".repeat(1024));
    server.register("agent-1");
}

#[test]
fn start_up_failures_exit_with_the_reason_never_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    // The registry refuses an agents "directory" that is a file.
    let bad_data_dir = tmp.path().join("data");
    std::fs::create_dir(&bad_data_dir).unwrap();
    std::fs::write(bad_data_dir.join("agents"), "").unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();

    // Data dir, arguments, environment, exit status, and what stderr says.
    type Case<'a> = (
        &'a Path,
        &'a [&'a str],
        &'a [(&'a str, &'a str)],
        i32,
        &'a str,
    );
    let cases: [Case; 7] = [
        (
            &bad_data_dir,
            &[],
            &[],
            1,
            "cannot open the agent registry: refusing agents directory",
        ),
        (
            tmp.path(),
            &["--port", taken_port.as_str()],
            &[],
            1,
            "cannot listen",
        ),
        (
            tmp.path(),
            &["--port", "http"],
            &[],
            2,
            "--port takes a number",
        ),
        (
            tmp.path(),
            &["--port", "70000"],
            &[],
            2,
            "--port takes a number",
        ),
        (tmp.path(), &["--verbose"], &[], 2, "unexpected argument"),
        (
            tmp.path(),
            &[],
            &[("AGENTMUX_MINI_MAX_CONNECTIONS", "0")],
            2,
            "AGENTMUX_MINI_MAX_CONNECTIONS must be a whole number",
        ),
        (
            tmp.path(),
            &[],
            &[("AGENTMUX_MINI_HEADER_TIMEOUT_MS", "5s")],
            2,
            "AGENTMUX_MINI_HEADER_TIMEOUT_MS must be a whole number",
        ),
    ];
    for (data_dir, args, env, code, reason) in cases {
        let mut command = command(data_dir);
        command.args(args).env("AGENTMUX_AUTH_KEY", "key");
        command.envs(env.iter().copied());
        let (status, first_line, stderr) = run_refused(command);
        assert_eq!(first_line, "", "started with {args:?} {env:?}");
        assert_eq!(status.code(), Some(code), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?} {env:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} {env:?}: {stderr}");
    }
    drop(taken);
}

#[test]
fn auth_takes_exactly_one_x_authkey_that_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), "key-1");
    let register = json!({ "agent_id": "agent-1" }).to_string();
    let path = "/agentmux/reactive/register";
    let refused: [&[(&str, &str)]; 6] = [
        &[],
        &[("X-AuthKey", "")],
        &[("X-AuthKey", "key-")],
        &[("X-AuthKey", "KEY-1")],
        &[("X-AuthKey", "key-1"), ("X-AuthKey", "wrong")],
        &[("X-AuthKey", "wrong"), ("X-AuthKey", "key-1")],
    ];
    for headers in refused {
        let (status, body) = request(&server.url, "POST", path, None, &register, headers);
        assert_eq!(status, 401, "{headers:?}: {body}");
    }
    let (status, body) = request(&server.url, "POST", path, Some("key-1"), &register, &[]);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn key_comparison_takes_as_long_whichever_byte_differs() {
    assert!(ct::eq(b"key-1", b"key-1"));
    assert!(ct::eq(b"", b""));
    assert!(!ct::eq(b"key-1", b"key-2"));
    assert!(!ct::eq(b"key-1", b"Key-1"));
    assert!(!ct::eq(b"key-1", b"key-"));
    assert!(!ct::eq(b"", b"k"));

    // An early-exit comparison (`==`, memcmp) refuses a first-byte mismatch
    // hundreds of times faster than a last-byte one; this one must not.
    const LEN: usize = 1 << 20;
    let key = vec![b'k'; LEN];
    let mut differs_first = key.clone();
    differs_first[0] = b'x';
    let mut differs_last = key.clone();
    differs_last[LEN - 1] = b'x';
    let time = |candidate: &[u8]| {
        let started = Instant::now();
        assert!(!ct::eq(black_box(candidate), black_box(&key)));
        started.elapsed()
    };
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        first.push(time(&differs_first));
        last.push(time(&differs_last));
    }
    first.sort();
    last.sort();
    let (first, last) = (first[10], last[10]);
    assert!(
        first * 4 >= last,
        "median {first:?} when the first byte differs, {last:?} when the last does"
    );
}

#[test]
fn entries_whose_key_or_url_cannot_be_sent_are_not_forwarded_to() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    let a = Server::start(tmp.path(), "key-of-a");
    let b = Server::start(tmp.path(), "key-of-b");
    a.register("victim");

    // A sound entry is forwarded to, so every refusal below is the entry's.
    write_entry(&registry, "victim", &a.url, "key-of-a", a.pid());
    let (status, body) = b.inject("victim", "sound");
    assert_eq!(
        (status, body["delivered"].as_str()),
        (200, Some("forwarded")),
        "{body}"
    );

    for key in [
        // Would authenticate at A, then add a header of the entry writer's choosing.
        "key-of-a\r\nX-Agentmux-Hops: 0",
        "key-of-a\nX-Injected: 1",
        "",
        "key-of-a ",
        "key\u{7f}",
    ] {
        write_entry(&registry, "victim", &a.url, key, a.pid());
        let (status, body) = b.inject("victim", "forged");
        assert_eq!(status, 502, "key {key:?}: {body}");
        assert!(
            error_of(&body).contains("auth key cannot be sent"),
            "key {key:?}: {body}"
        );
    }
    for url in [
        format!("{}\r\nX-Injected: 1", a.url),
        format!("{}/\r\n", a.url),
        format!("{} ", a.url),
    ] {
        write_entry(&registry, "victim", &url, "key-of-a", a.pid());
        let (status, body) = b.inject("victim", "forged");
        assert_eq!(status, 502, "url {url:?}: {body}");
        assert!(
            error_of(&body).contains("cannot be sent"),
            "url {url:?}: {body}"
        );
    }
    assert_eq!(a.inbox("victim"), ["sound"], "nothing else reached A");
}

#[test]
fn a_forward_to_this_instance_is_detected_by_socket_address() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    let b = Server::start(tmp.path(), "key-of-b");
    let port = b.port();
    for url in [
        format!("http://localhost:{port}"),
        format!("http://LocalHost:{port}"),
        format!("http://[::ffff:127.0.0.1]:{port}"),
        format!("{}/", b.url),
        b.url.clone(),
    ] {
        write_entry(&registry, "alias", &url, "key-of-b", b.pid());
        let (status, body) = b.inject("alias", "to myself");
        assert_eq!(status, 404, "{url}: {body}");
        assert!(
            error_of(&body).contains("points to this instance"),
            "{url}: {body}"
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_crlf_key_on_a_localhost_alias_makes_no_forwarding_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    let b = Server::start(tmp.path(), "key-of-b");
    assert_eq!(b.inject("nobody", "warm-up").0, 404);
    let before = b.open_fds();
    // Reaches B itself under another name, and resets the hop count to 0 at
    // each hop: with neither check, B forwarded to itself without end.
    write_entry(
        &registry,
        "looped",
        &format!("http://localhost:{}", b.port()),
        "key-of-b\r\nX-Agentmux-Hops: 0",
        b.pid(),
    );
    let (status, body) = b.inject("looped", "round and round");
    let after = b.open_fds();
    assert!(
        after <= before + 4,
        "{before} fds before the inject, {after} after; it answered {status} {body}"
    );
    assert_eq!(status, 404, "{body}");
}

#[test]
fn repeated_or_malformed_hop_counts_are_not_forwarded() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Server::start(tmp.path(), "key-of-a");
    let b = Server::start(tmp.path(), "key-of-b");
    a.register("agent-1");
    let hops = "X-Agentmux-Hops";
    let malformed: [&[(&str, &str)]; 5] = [
        &[(hops, "0"), (hops, "1")],
        &[(hops, "")],
        &[(hops, "zero")],
        &[(hops, "+0")],
        &[(hops, "-1")],
    ];
    for headers in malformed {
        let (status, body) = inject_with(&b, "agent-1", headers);
        assert_eq!(status, 400, "{headers:?}: {body}");
    }
    // The limit itself: a request forwarded once is not forwarded again.
    assert_eq!(inject_with(&b, "agent-1", &[(hops, "1")]).0, 404);
    assert_eq!(inject_with(&b, "agent-1", &[(hops, "0")]).0, 200);
    assert_eq!(a.inbox("agent-1"), ["m"], "only the hop-0 request arrived");
}

#[test]
fn only_loopback_ip_targets_are_forwarded_to() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    let a = Server::start(tmp.path(), "key-of-a");
    let b = Server::start(tmp.path(), "key-of-b");
    a.register("agent-1");
    let port = a.port();
    for url in [
        format!("http://0.0.0.0:{port}"),
        "http://192.0.2.1:80".into(),
        "http://[::ffff:192.0.2.1]:80".into(),
        format!("http://example.com:{port}"),
        format!("http://localhost.example.com:{port}"),
        format!("http://user@127.0.0.1:{port}"),
        format!("https://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}/elsewhere"),
        format!("http://127.0.0.1:+{port}"),
        "http://127.0.0.1:0".into(),
        format!("http://127.1:{port}"),
    ] {
        write_entry(&registry, "agent-1", &url, "key-of-a", a.pid());
        let (status, body) = b.inject("agent-1", "refused");
        assert_eq!(status, 502, "{url}: {body}");
        assert!(
            error_of(&body).starts_with("refusing to forward"),
            "{url}: {body}"
        );
    }
    // Loopback however it is spelled reaches A.
    for url in [
        format!("http://LOCALHOST:{port}"),
        format!("http://[::ffff:127.0.0.1]:{port}"),
    ] {
        write_entry(&registry, "agent-1", &url, "key-of-a", a.pid());
        let (status, body) = b.inject("agent-1", &url);
        assert_eq!(status, 200, "{url}: {body}");
    }
    assert_eq!(
        a.inbox("agent-1"),
        [
            format!("http://LOCALHOST:{port}"),
            format!("http://[::ffff:127.0.0.1]:{port}")
        ]
    );
}

/// A one-connection stand-in for an owner: accepts a connection, reads the
/// start of the request, then hands the connection to `reply`.
fn fake_owner<T: Send + 'static>(
    reply: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (String, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let owner = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
        let mut request = [0; 4096];
        let _ = stream.read(&mut request).unwrap();
        reply(stream)
    });
    (url, owner)
}

/// Waits until the forwarding server closes its side, discarding what it sends.
fn until_closed(mut stream: TcpStream) {
    let _ = std::io::copy(&mut stream, &mut std::io::sink());
}

#[cfg(target_os = "linux")]
#[test]
fn replies_over_the_cap_are_a_502_without_being_read_in_full() {
    const MIB: usize = 1 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    let b = Server::start(tmp.path(), "key-of-b");
    let over_the_cap = "its body is over the 1048576-byte limit";
    let forward = |url: &str| {
        write_entry(&registry, "far", url, "owner-key", std::process::id());
        b.inject("far", "hello")
    };
    // A reply refused with a 502 saying `why`.
    let assert_refused = |url: &str, why: &str| {
        let (status, body) = forward(url);
        assert_eq!(status, 502, "{body}");
        assert!(error_of(&body).contains(why), "{body}");
    };
    assert_eq!(forward("http://127.0.0.1:9").0, 502, "warm-up");
    let peak_before = b.peak_rss_kib();

    // 16 MiB declared: refused on the head alone, while the owner waits.
    let (url, owner) = fake_owner(|mut stream| {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 16 * MIB);
        stream.write_all(head.as_bytes()).unwrap();
        until_closed(stream);
    });
    assert_refused(&url, over_the_cap);
    owner.join().unwrap();

    // 16 MiB delimited by the close: B hangs up once past the cap, so the
    // owner cannot deliver it all.
    let (url, owner) = fake_owner(|mut stream| {
        stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n\"").unwrap();
        stream.write_all(&vec![b'x'; 16 * MIB]).is_ok()
    });
    assert_refused(&url, over_the_cap);
    assert!(!owner.join().unwrap(), "the whole 16 MiB was read");

    // Chunked, 2 MiB in 64 KiB chunks.
    let (url, owner) = fake_owner(|mut stream| {
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
        for _ in 0..32 {
            if stream.write_all(chunk.as_bytes()).is_err() {
                return;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        until_closed(stream);
    });
    assert_refused(&url, over_the_cap);
    owner.join().unwrap();

    // A head that never ends is cut off too.
    let (url, owner) = fake_owner(|mut stream| {
        stream.write_all(b"HTTP/1.1 200 OK\r\nX-Long: ").unwrap();
        let _ = stream.write_all(&vec![b'a'; 100_000]);
        until_closed(stream);
    });
    assert_refused(&url, "over its length limit");
    owner.join().unwrap();

    // Less than one of the oversize replies: none was held whole.
    let growth_kib = b.peak_rss_kib().saturating_sub(peak_before);
    assert!(
        growth_kib < 16 * 1024,
        "peak memory grew by {growth_kib} KiB"
    );

    // Up to the cap, with a length or chunked, the reply is passed on.
    let exactly_the_cap = format!("\"{}\"", "x".repeat(MIB - 2));
    let (url, owner) = fake_owner(move |mut stream| {
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{exactly_the_cap}",
            exactly_the_cap.len()
        );
        stream.write_all(reply.as_bytes()).unwrap();
        until_closed(stream);
    });
    let (status, body) = forward(&url);
    assert_eq!(status, 200, "{}", error_of(&body));
    assert_eq!(body["owner"].as_str().map(str::len), Some(MIB - 2));
    owner.join().unwrap();
    let (url, owner) = fake_owner(|mut stream| {
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  b\r\n{\"delivered\r\n9;ext=1\r\n\":\"local\"\r\n1\r\n}\r\n0\r\n\r\n",
            )
            .unwrap();
        until_closed(stream);
    });
    let (status, body) = forward(&url);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["owner"], json!({ "delivered": "local" }));
    owner.join().unwrap();
}

#[test]
fn idle_and_half_sent_heads_are_closed_after_the_header_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let header_timeout = Duration::from_millis(1000);
    let server = Server::start_with(
        tmp.path(),
        "key",
        &[
            ("AGENTMUX_MINI_HEADER_TIMEOUT_MS", "1000"),
            ("AGENTMUX_MINI_CONNECTION_TIMEOUT_MS", "600000"),
        ],
    );
    let half_head = format!("POST {INJECT} HTTP/1.1\r\nHost: {}\r\n", server.authority());
    for sent in ["", half_head.as_str()] {
        let mut stream = connect(&server.url);
        let started = Instant::now();
        stream.write_all(sent.as_bytes()).unwrap();
        let reply = read_until_closed(&mut stream);
        assert_eq!(reply, "", "after sending {sent:?}");
        assert!(
            started.elapsed() >= header_timeout - Duration::from_millis(100),
            "closed after {:?}, before the timeout",
            started.elapsed()
        );
        // Well before the default (5 s): the configured timeout was used.
        assert!(
            started.elapsed() < Duration::from_millis(4500),
            "closed after {:?}: the setting was ignored",
            started.elapsed()
        );
    }
    // A connection is never left idle after its request either.
    let mut stream = connect(&server.url);
    let head = request_head(
        "GET",
        "/agentmux/reactive/inbox/nobody",
        server.authority(),
        Some("key"),
        &[("Connection", "keep-alive")],
    );
    stream.write_all(head.as_bytes()).unwrap();
    let reply = read_until_closed(&mut stream);
    assert_eq!(parse_response(&reply).0, 404);
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
}

#[test]
fn a_half_sent_body_is_closed_after_the_connection_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let connection_timeout = Duration::from_millis(1500);
    let server = Server::start_with(
        tmp.path(),
        "key",
        &[("AGENTMUX_MINI_CONNECTION_TIMEOUT_MS", "1500")],
    );
    let head = |key| {
        request_head(
            "POST",
            INJECT,
            server.authority(),
            key,
            &[
                ("Content-Type", "application/json"),
                ("Content-Length", "100"),
            ],
        )
    };
    let mut stream = connect(&server.url);
    let started = Instant::now();
    stream
        .write_all(format!("{}{{\"agent_id\"", head(Some("key"))).as_bytes())
        .unwrap();
    let reply = read_until_closed(&mut stream);
    assert_eq!(reply, "");
    assert!(
        started.elapsed() >= connection_timeout - Duration::from_millis(100),
        "closed after {:?}, before the timeout",
        started.elapsed()
    );
    // Well before the default (15 s): the configured timeout was used.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closed after {:?}: the setting was ignored",
        started.elapsed()
    );
    // Without the key, the body is not even waited for.
    let mut stream = connect(&server.url);
    stream
        .write_all(format!("{}{{\"agent_id\"", head(None)).as_bytes())
        .unwrap();
    assert_eq!(parse_response(&read_until_closed(&mut stream)).0, 401);
}

#[test]
fn connections_over_the_cap_get_a_503_and_a_freed_slot_is_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        tmp.path(),
        "key",
        &[
            ("AGENTMUX_MINI_MAX_CONNECTIONS", "2"),
            ("AGENTMUX_MINI_HEADER_TIMEOUT_MS", "600000"),
        ],
    );
    // Accepted in order: these two take both slots, the third finds none.
    let mut held = [connect(&server.url), connect(&server.url)];
    let mut third = connect(&server.url);
    let (status, body) = parse_response(&read_until_closed(&mut third));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "too many open connections");

    // A held connection is still served; once it has closed, its slot is free.
    let inbox = request_head(
        "GET",
        "/agentmux/reactive/inbox/nobody",
        server.authority(),
        Some("key"),
        &[],
    );
    held[0].write_all(inbox.as_bytes()).unwrap();
    assert_eq!(parse_response(&read_until_closed(&mut held[0])).0, 404);
    server.register("agent-1");
}

#[cfg(target_os = "linux")]
#[test]
fn a_flood_of_half_sent_requests_keeps_fds_bounded_and_the_server_serving() {
    use rustix::process::{prlimit, Pid, Resource, Rlimit};
    const CAP: usize = 16;
    const FLOOD: usize = 600;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        tmp.path(),
        "key",
        &[
            ("AGENTMUX_MINI_MAX_CONNECTIONS", "16"),
            ("AGENTMUX_MINI_HEADER_TIMEOUT_MS", "2000"),
        ],
    );
    // Fewer fds than the flood needs, as on a host where they run short.
    let limit = Rlimit {
        current: Some(256),
        maximum: Some(256),
    };
    prlimit(Pid::from_raw(server.pid() as i32), Resource::Nofile, limit).unwrap();
    server.register("before");
    let baseline = server.open_fds();

    let half_head = format!("POST {INJECT} HTTP/1.1\r\nHost: {}\r\n", server.authority());
    let mut peak = baseline;
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        let mut stream = connect(&server.url);
        stream.write_all(half_head.as_bytes()).unwrap();
        flood.push(stream);
        peak = peak.max(server.open_fds());
    }
    // Those over the cap are refused at once, the rest closed at the timeout.
    let mut refused = 0;
    for stream in &mut flood {
        let reply = read_until_closed(stream);
        if reply.is_empty() {
            continue;
        }
        assert_eq!(parse_response(&reply).0, 503, "{reply}");
        refused += 1;
    }
    peak = peak.max(server.open_fds());
    eprintln!("fds: {baseline} before the flood, at most {peak} during it; {refused} refused");
    assert!(
        peak <= baseline + CAP + 8,
        "{baseline} fds before the flood, {peak} during it"
    );
    server.register("after");
}

/// A data dir that other users can write is said at start: they could
/// replace `agents` and make forwarding stop.
#[cfg(unix)]
#[test]
fn a_data_dir_others_can_write_is_reported_at_start() {
    use std::io::{BufRead, Read};
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut child = common::command(&data)
        .env("AGENTMUX_AUTH_KEY", "k")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on "), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("agentmux-mini: warning: "), "{err}");
}
