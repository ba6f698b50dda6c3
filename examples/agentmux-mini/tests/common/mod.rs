//! Running `agentmux-mini` processes and talking HTTP/1.1 to them.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// How long a test waits for an answer that must come: generous, because
/// the machine running the tests may be slow and busy.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// An instance on `data_dir`, whose shared registry is `{data_dir}/shared`
/// (never the user's own), in the default channel.
pub fn command(data_dir: &Path) -> Command {
    command_in(data_dir, &data_dir.join("shared"))
}

/// An instance on `data_dir` and the shared root `shared_dir`.
pub fn command_in(data_dir: &Path, shared_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentmux-mini"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--shared-dir")
        .arg(shared_dir)
        .env_remove("AGENTMUX_CHANNEL");
    command
}

pub struct Server {
    pub child: Child,
    pub url: String,
    pub key: String,
}

impl Server {
    pub fn start(data_dir: &Path, key: &str) -> Server {
        Server::start_with(data_dir, key, &[])
    }

    /// Starts a server with extra environment (e.g. its limits).
    pub fn start_with(data_dir: &Path, key: &str, env: &[(&str, &str)]) -> Server {
        Server::spawn(command(data_dir), key, env)
    }

    /// Starts a server on `data_dir` and the shared root `shared_dir`, with
    /// extra environment (e.g. its channel).
    pub fn start_in(data_dir: &Path, shared_dir: &Path, key: &str, env: &[(&str, &str)]) -> Server {
        Server::spawn(command_in(data_dir, shared_dir), key, env)
    }

    fn spawn(mut command: Command, key: &str, env: &[(&str, &str)]) -> Server {
        command.env("AGENTMUX_AUTH_KEY", key).stdout(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        Server {
            child,
            url,
            key: key.into(),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn authority(&self) -> &str {
        self.url.strip_prefix("http://").unwrap()
    }

    pub fn port(&self) -> u16 {
        self.authority()
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap()
    }

    pub fn post(&self, path: &str, key: Option<&str>, body: Value) -> (u16, Value) {
        request(&self.url, "POST", path, key, &body.to_string(), &[])
    }

    pub fn inject(&self, agent_id: &str, message: &str) -> (u16, Value) {
        self.post(
            "/agentmux/reactive/inject",
            Some(&self.key),
            json!({ "agent_id": agent_id, "message": message }),
        )
    }

    pub fn register(&self, agent_id: &str) {
        let (status, body) = self.post(
            "/agentmux/reactive/register",
            Some(&self.key),
            json!({ "agent_id": agent_id, "block_id": "blk" }),
        );
        assert_eq!(status, 200, "{body}");
    }

    pub fn inbox(&self, agent_id: &str) -> Vec<String> {
        let (status, body) = request(
            &self.url,
            "GET",
            &format!("/agentmux/reactive/inbox/{agent_id}"),
            Some(&self.key),
            "",
            &[],
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body["messages"].clone()).unwrap()
    }

    /// `GET /agentmux/registry/discovery`: the status and JSON body.
    pub fn discovery(&self) -> (u16, Value) {
        request(
            &self.url,
            "GET",
            "/agentmux/registry/discovery",
            Some(&self.key),
            "",
            &[],
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many file descriptors the server has open.
    #[cfg(target_os = "linux")]
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// The server's peak resident memory so far, in KiB.
    #[cfg(target_os = "linux")]
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|kib| kib.trim().strip_suffix("kB"))
            .map(|kib| kib.trim().parse().unwrap())
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the server until it exits, for configurations it must refuse:
/// returns its exit status, its first line of stdout (empty when it never
/// announced itself) and its stderr. A server that started anyway is killed
/// as soon as it announces itself, so this never waits on one.
pub fn run_refused(mut command: Command) -> (ExitStatus, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    if !first_line.is_empty() {
        let _ = child.kill();
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child.wait().unwrap(), first_line, stderr)
}

/// A connection to `base` (`http://IP:PORT`) that gives up connecting, and
/// each read, after [`ANSWER_WITHIN`].
pub fn connect(base: &str) -> TcpStream {
    let address = base.strip_prefix("http://").unwrap().parse().unwrap();
    let stream = TcpStream::connect_timeout(&address, ANSWER_WITHIN).unwrap();
    stream.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    stream
}

/// Everything the peer sends until it closes the connection; panics if it
/// is still open after [`ANSWER_WITHIN`].
pub fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        // A reset after the server's last byte ends the exchange too.
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "the server neither answered nor closed the connection: {e} (got {:?})",
            String::from_utf8_lossy(&raw)
        );
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// The head of an HTTP/1.1 request, up to and including its blank line.
pub fn request_head(
    method: &str,
    path: &str,
    host: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    if let Some(key) = key {
        head += &format!("X-AuthKey: {key}\r\n");
    }
    for (name, value) in extra {
        head += &format!("{name}: {value}\r\n");
    }
    head + "\r\n"
}

/// The status and JSON body of a raw HTTP/1.1 response.
pub fn parse_response(raw: &str) -> (u16, Value) {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// One HTTP/1.1 exchange on loopback; returns the status and JSON body.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut headers = vec![("Connection", "close")];
    headers.extend_from_slice(extra);
    let length = body.len().to_string();
    if method == "POST" {
        headers.push(("Content-Type", "application/json"));
        headers.push(("Content-Length", &length));
    }
    let authority = base.strip_prefix("http://").unwrap();
    let head = request_head(method, path, authority, key, &headers);
    let mut stream = connect(base);
    stream
        .write_all(format!("{head}{body}").as_bytes())
        .unwrap();
    parse_response(&read_until_closed(&mut stream))
}
