//! `agentmux-mini`: a small agentmux-srv stand-in that uses the registry the
//! way agentmux-srv does.
//!
//! - `POST /agentmux/reactive/register`   `{"agent_id", "block_id"}`: host an agent here.
//! - `POST /agentmux/reactive/unregister` `{"agent_id"}`: stop hosting it.
//! - `POST /agentmux/reactive/inject`     `{"agent_id", "message"}`: deliver to a
//!   local agent, or look the agent up and forward the request to the
//!   instance that owns it, with that instance's `X-AuthKey`: first in the
//!   data dir's registry, then in the host-wide shared one, where instances
//!   of other channels publish their agents (freshest entry first, each
//!   candidate tried until one delivers).
//!
//! Each agent is registered in both registries, as agentmux-srv does: in the
//! data dir's, and in the shared one under this instance's channel
//! (`AGENTMUX_CHANNEL`, default `stable`).
//! - `GET  /agentmux/reactive/inbox/{agent_id}`: messages delivered to a local agent.
//! - `GET  /agentmux/registry/discovery`: every agent of both registries,
//!   `{"agents": [{"registry", "health", "entry"}]}` (auth keys left out),
//!   kept current by watching the registries (see the registry's `watch`
//!   module for where that rescans).
//! - `GET  /agentmux/registry/events`: the same as server-sent events: a
//!   `snapshot` first, then a `put`, `removed` or `resync` event per change.
//!   The stream ends at the connection limit (below); a client reconnects
//!   and starts from a new snapshot.
//!
//! Every route requires exactly one `X-AuthKey` equal to this instance's key
//! (`AGENTMUX_AUTH_KEY`, 1 to 1024 visible ASCII characters; compared in
//! constant time), as agentmux-srv's auth middleware does. Forwards go only to
//! `http://HOST:PORT` with a loopback IP or `localhost` (taken as 127.0.0.1,
//! never looked up), never to this instance's own socket address, only with a
//! key that can be sent as a header, and at most one hop. A forwarded reply
//! over the reply limit is refused without being read in full.
//! At startup (after binding) it sweeps entries older than 4 hours and entries
//! of dead instances. On SIGTERM or Ctrl-C it removes its own entries.
//!
//! Usage: `AGENTMUX_AUTH_KEY=key agentmux-mini [--data-dir DIR]
//! [--shared-dir DIR] [--port N]` (the shared root defaults to
//! `~/.agentmux/shared/agents/reactive`).
//! It prints `listening on http://127.0.0.1:PORT` once it accepts requests.
//! A configuration it cannot use (exit status 2), or a port or registry it
//! cannot open (exit status 1), makes it print why on stderr and exit
//! without serving.
//!
//! Limits, from the environment (all optional; whole numbers):
//! - `AGENTMUX_MINI_MAX_CONNECTIONS` (64): connections served at once; one
//!   more is answered `503` and closed at once.
//! - `AGENTMUX_MINI_HEADER_TIMEOUT_MS` (5000): time a connection has to send
//!   its request head; idle and half-sent connections are closed after it.
//! - `AGENTMUX_MINI_CONNECTION_TIMEOUT_MS` (15000): the longest a connection
//!   stays open, body, handling and reply included. Each carries one request.
//! - `AGENTMUX_MINI_MAX_REPLY_BYTES` (1048576): the largest reply body read
//!   from an owner; a larger one is a `502`.
//! - `AGENTMUX_MINI_HEARTBEAT_MS` (20000): how often each agent's entries are
//!   renewed (agentmux-srv's beat); below the 60 s eviction grace.

mod ct;
mod discovery;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use agentmux_registry::liveness::{owner_liveness, should_evict_after_failed_forward, Liveness};
use agentmux_registry::{AgentEntry, EntryFields, Registration, Registry};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
    ReadBuf,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

const HOPS_HEADER: &str = "x-agentmux-hops";
/// A forwarded inject is delivered or refused by the owner; it never moves on.
const MAX_HOPS: u32 = 1;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// agentmux-srv's beat and grace: a live agent's entry is never older than
/// the grace, so a failed forward evicts only an entry its owner stopped
/// renewing (or one whose owner is dead), never a just-registered one. (The
/// beat can be set, `AGENTMUX_MINI_HEARTBEAT_MS`, below the grace.)
const HEARTBEAT: Duration = Duration::from_secs(20);
const EVICTION_GRACE: Duration =
    Duration::from_millis(agentmux_registry::compat::FORWARD_FAILURE_GRACE_MS);
/// The registry's own limit on an entry's `auth_key`.
const MAX_KEY_BYTES: usize = 1024;
/// The most of a forwarded reply's status line and headers that is read.
const MAX_REPLY_HEAD_BYTES: usize = 16 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

struct Agent {
    inbox: Vec<String>,
    /// Keep the registry entries fresh (the data dir's and the shared one);
    /// dropping them removes the entries.
    _registrations: [Registration; 2],
}

struct App {
    registry: Registry,
    /// The host-wide shared registry, where this instance's channel is
    /// `channel`.
    shared: Registry,
    channel: String,
    auth_key: String,
    local_url: String,
    /// The listening socket's address: a forward to it would reach this very
    /// instance, whatever the entry's URL spells.
    this_addr: SocketAddr,
    max_reply_bytes: usize,
    heartbeat: Duration,
    discovery: Arc<discovery::Discovery>,
    agents: Mutex<HashMap<String, Agent>>,
    /// Held across a registration, so that the guard kept for an id is
    /// always the one whose entry was written last.
    registering: tokio::sync::Mutex<()>,
}

impl App {
    /// The hosted agents. A handler that panicked mid-update leaves only
    /// whole entries behind, so a poisoned map is still usable.
    fn agents(&self) -> MutexGuard<'_, HashMap<String, Agent>> {
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Shared = Arc<App>;

/// The key of a hosted agent: ids are case-insensitive, as the registry's.
fn local_key(agent_id: &str) -> String {
    agent_id.to_lowercase()
}

#[derive(Deserialize)]
struct RegisterBody {
    agent_id: String,
    #[serde(default)]
    block_id: String,
}

#[derive(Deserialize)]
struct InjectBody {
    agent_id: String,
    message: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn require_key(State(app): State<Shared>, request: Request, next: Next) -> Response {
    let mut given = request.headers().get_all("x-authkey").iter();
    let accepted = match (given.next(), given.next()) {
        (Some(key), None) => ct::eq(key.as_bytes(), app.auth_key.as_bytes()),
        _ => false,
    };
    if !accepted {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong X-AuthKey");
    }
    next.run(request).await
}

async fn register(State(app): State<Shared>, Json(body): Json<RegisterBody>) -> Response {
    // Re-registering replaces the old registration. Each has its own token,
    // so dropping the old guard (whenever that happens, even after the new
    // entry is written) never removes the new entry.
    let fields = EntryFields {
        agent_id: body.agent_id.clone(),
        local_url: app.local_url.clone(),
        block_id: body.block_id.clone(),
        auth_key: app.auth_key.clone(),
        ..EntryFields::default()
    };
    let shared_fields = EntryFields {
        channel: app.channel.clone(),
        ..fields.clone()
    };
    let _order = app.registering.lock().await;
    let registration = match Registration::register(&app.registry, fields, app.heartbeat).await {
        Ok(registration) => registration,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let shared = match Registration::register(&app.shared, shared_fields, app.heartbeat).await {
        Ok(registration) => registration,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let replaced = app.agents().insert(
        local_key(&body.agent_id),
        Agent {
            inbox: Vec::new(),
            _registrations: [registration, shared],
        },
    );
    // Outside the map's lock: dropping removes nothing of the new entry.
    drop(replaced);
    Json(json!({ "registered": body.agent_id })).into_response()
}

async fn unregister(State(app): State<Shared>, Json(body): Json<RegisterBody>) -> Response {
    let agent = app.agents().remove(&local_key(&body.agent_id));
    // Dropping the guard removes the entry if it is still ours.
    let removed = agent.is_some();
    drop(agent);
    Json(json!({ "unregistered": removed })).into_response()
}

async fn discovery_route(State(app): State<Shared>) -> Response {
    discovery::discovery(&app.discovery)
}

async fn events_route(State(app): State<Shared>) -> Response {
    discovery::events(app.discovery.clone())
}

async fn inbox(State(app): State<Shared>, Path(agent_id): Path<String>) -> Response {
    match app.agents().get(&local_key(&agent_id)) {
        Some(agent) => Json(json!({ "messages": agent.inbox })).into_response(),
        None => error(StatusCode::NOT_FOUND, "agent not hosted here"),
    }
}

async fn inject(
    State(app): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<InjectBody>,
) -> Response {
    if let Some(agent) = app.agents().get_mut(&local_key(&body.agent_id)) {
        agent.inbox.push(body.message);
        return Json(json!({ "delivered": "local" })).into_response();
    }
    let hops = match hops_of(&headers) {
        Ok(hops) => hops,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    if hops >= MAX_HOPS {
        return error(
            StatusCode::NOT_FOUND,
            "agent not hosted here (hop limit reached)",
        );
    }
    // The data dir's entries first (more than one when agentmux-srv and this
    // registry wrote the id under different names), then every channel's in
    // the shared registry, each freshest first.
    let mut candidates: Vec<(&Registry, AgentEntry)> = Vec::new();
    match app.registry.lookup_all(&body.agent_id).await {
        Ok(found) => candidates.extend(found.into_iter().map(|entry| (&app.registry, entry))),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    match app.shared.lookup_all(&body.agent_id).await {
        Ok(found) => candidates.extend(found.into_iter().map(|entry| (&app.shared, entry))),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    let payload = json!({ "agent_id": body.agent_id, "message": body.message }).to_string();
    let mut last = None;
    let mut tried: Vec<String> = Vec::new();
    for (registry, entry) in candidates {
        // An instance publishes its agent in both registries: one try each,
        // and a dead owner's entries go from both.
        if tried.contains(&entry.local_url) {
            if owner_liveness(&entry) == Liveness::Dead {
                let _ = registry.evict(&entry).await;
            }
            continue;
        }
        tried.push(entry.local_url.clone());
        match deliver(&app, registry, &entry, hops, &payload).await {
            Ok(delivered) => return delivered,
            Err(failed) => last = Some(failed),
        }
    }
    last.unwrap_or_else(|| error(StatusCode::NOT_FOUND, "agent not found"))
}

/// Forwards `payload` to the owner `entry` names (found in `registry`): the
/// owner's answer when it delivered, or why it could not (the caller tries
/// the next candidate). An owner that is gone has its entry evicted.
async fn deliver(
    app: &App,
    registry: &Registry,
    entry: &AgentEntry,
    hops: u32,
    payload: &str,
) -> Result<Response, Response> {
    let target = match resolve_target(&entry.local_url, app.this_addr) {
        // Our own stale or forged entry: we do not host the agent, and must not loop.
        Ok(Target::ThisInstance) => {
            return Err(error(
                StatusCode::NOT_FOUND,
                "agent not hosted here, and its registry entry points to this instance",
            ))
        }
        Ok(Target::Peer(address)) => Ok(address),
        Err(reason) => Err(reason),
    };
    if owner_liveness(entry) == Liveness::Dead {
        // Fail fast: the owner is gone, its entry only points nowhere.
        let _ = registry.evict(entry).await;
        return Err(unreachable(entry, "owner process is not running"));
    }
    let target = target.map_err(|reason| error(StatusCode::BAD_GATEWAY, reason))?;
    if !sendable_key(&entry.auth_key) {
        return Err(error(
            StatusCode::BAD_GATEWAY,
            "refusing to forward: the owner's auth key cannot be sent in an X-AuthKey header \
             (it must be 1 to 1024 visible ASCII characters)",
        ));
    }
    let forwarded = forward(
        target,
        &entry.auth_key,
        hops + 1,
        payload,
        app.max_reply_bytes,
    )
    .await;
    match forwarded {
        Ok((status, response)) if (200..300).contains(&status) => Ok(Json(
            json!({ "delivered": "forwarded", "via": entry.local_url, "owner": response }),
        )
        .into_response()),
        Ok((status, response)) => Err(error(
            StatusCode::BAD_GATEWAY,
            format!("owner {} answered {status}: {response}", entry.local_url),
        )),
        // The owner is up and answered: no reason to evict it.
        Err(ForwardError::BadReply(reason)) => Err(error(
            StatusCode::BAD_GATEWAY,
            format!("owner {} sent an unusable reply: {reason}", entry.local_url),
        )),
        Err(ForwardError::Unreachable(reason)) => {
            if should_evict_after_failed_forward(entry, EVICTION_GRACE) {
                // Only the very entry judged: never a renewal or a successor.
                let _ = registry.evict(entry).await;
            }
            Err(unreachable(entry, &reason))
        }
    }
}

/// The request's hop count. Missing is 0; a malformed or repeated header is
/// refused, so no reading of it can be lower than what a sender meant.
fn hops_of(headers: &HeaderMap) -> Result<u32, String> {
    let mut values = headers.get_all(HOPS_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(0),
        (Some(value), None) => value
            .to_str()
            .ok()
            .filter(|v| (1..=3).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("malformed {HOPS_HEADER} header")),
        _ => Err(format!("more than one {HOPS_HEADER} header")),
    }
}

fn unreachable(entry: &AgentEntry, reason: &str) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        Json(json!({
            "error": "agent unreachable",
            "agent_id": entry.agent_id,
            "owner": entry.local_url,
            "reason": reason,
        })),
    )
        .into_response()
}

/// Whether `key` can go into a header line as it is: no controls (a CR or LF
/// would start a header of the entry writer's choosing), no spaces (trimmed
/// by receivers), nothing the registry would not store.
fn sendable_key(key: &str) -> bool {
    (1..=MAX_KEY_BYTES).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

enum Target {
    ThisInstance,
    Peer(SocketAddr),
}

/// Where an entry's `local_url` (`http://HOST:PORT`, optionally with a
/// trailing `/`) leads, compared by socket address, so `localhost`,
/// `127.0.0.1` and `[::ffff:127.0.0.1]` at this instance's port are all this
/// instance. `Err` says why it is not forwarded to.
fn resolve_target(url: &str, this_addr: SocketAddr) -> Result<Target, String> {
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "refusing to forward: the owner's URL {url:?} holds characters that cannot be sent"
        ));
    }
    let unsupported =
        || format!("refusing to forward: the owner's URL {url:?} is not http://HOST:PORT");
    let authority = url.strip_prefix("http://").ok_or_else(unsupported)?;
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    let (host, port) = authority.rsplit_once(':').ok_or_else(unsupported)?;
    let port = parse_port(port)
        .filter(|&port| port != 0)
        .ok_or_else(unsupported)?;
    let ip = if host.eq_ignore_ascii_case("localhost") {
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
    } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    };
    let Some(ip) = ip.map(|ip| ip.to_canonical()).filter(IpAddr::is_loopback) else {
        return Err(format!(
            "refusing to forward to non-loopback URL {url:?}: only loopback IP addresses \
             and localhost are forwarded to"
        ));
    };
    let address = SocketAddr::new(ip, port);
    Ok(if address == this_addr {
        Target::ThisInstance
    } else {
        Target::Peer(address)
    })
}

fn parse_port(text: &str) -> Option<u16> {
    // `u16::from_str` would also take a leading `+`.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

enum ForwardError {
    /// The owner could not be reached, or did not answer in time.
    Unreachable(String),
    /// The owner answered with a reply that is not used: too large or malformed.
    BadReply(String),
}

/// POSTs an inject to the owner over plain HTTP/1.1; returns status and body.
async fn forward(
    target: SocketAddr,
    auth_key: &str,
    hops: u32,
    payload: &str,
    max_reply_bytes: usize,
) -> Result<(u16, Value), ForwardError> {
    let exchange = async {
        let mut stream = TcpStream::connect(target)
            .await
            .map_err(|e| ForwardError::Unreachable(format!("connect: {e}")))?;
        let request = format!(
            "POST /agentmux/reactive/inject HTTP/1.1\r\nHost: {target}\r\nX-AuthKey: {auth_key}\r\n\
             {HOPS_HEADER}: {hops}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{payload}",
            payload.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| ForwardError::Unreachable(format!("send: {e}")))?;
        let (status, body) = read_reply(BufReader::new(stream), max_reply_bytes).await?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    };
    tokio::time::timeout(FORWARD_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(ForwardError::Unreachable(format!(
                "no answer within {FORWARD_TIMEOUT:?}"
            )))
        })
}

fn bad_reply(reason: impl Into<String>) -> ForwardError {
    ForwardError::BadReply(reason.into())
}

fn receive_error(e: io::Error) -> ForwardError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        bad_reply("the reply ended early")
    } else {
        ForwardError::Unreachable(format!("receive: {e}"))
    }
}

fn too_large(max_bytes: usize) -> ForwardError {
    bad_reply(format!("its body is over the {max_bytes}-byte limit"))
}

/// Reads an HTTP/1.1 reply: at most [`MAX_REPLY_HEAD_BYTES`] of head and
/// `max_bytes` of body. A body declared larger is refused before any of it
/// is read; one that turns out larger is refused once the limit is passed.
async fn read_reply<R: AsyncBufRead + Unpin>(
    mut reader: R,
    max_bytes: usize,
) -> Result<(u16, Vec<u8>), ForwardError> {
    let mut head_budget = MAX_REPLY_HEAD_BYTES;
    let status_line = read_line(&mut reader, &mut head_budget).await?;
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .filter(|code| code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad_reply("malformed status line"))?;
    let mut content_length = None;
    let mut chunked = false;
    loop {
        let line = read_line(&mut reader, &mut head_budget).await?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad_reply("malformed header line"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length = Some(value)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad_reply("malformed Content-Length"))?;
            if content_length.replace(length).is_some() {
                return Err(bad_reply("more than one Content-Length"));
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !value.eq_ignore_ascii_case("chunked") {
                return Err(bad_reply(format!(
                    "unsupported Transfer-Encoding {value:?}"
                )));
            }
            chunked = true;
        }
    }
    let mut body = Vec::new();
    match (chunked, content_length) {
        (true, Some(_)) => return Err(bad_reply("both Content-Length and chunked")),
        (true, None) => read_chunked(&mut reader, &mut head_budget, max_bytes, &mut body).await?,
        (false, Some(length)) => {
            if length > max_bytes as u64 {
                return Err(too_large(max_bytes));
            }
            body.resize(length as usize, 0);
            reader.read_exact(&mut body).await.map_err(receive_error)?;
        }
        (false, None) => {
            // Delimited by the close (the request said `Connection: close`).
            (&mut reader)
                .take(max_bytes as u64 + 1)
                .read_to_end(&mut body)
                .await
                .map_err(receive_error)?;
            if body.len() > max_bytes {
                return Err(too_large(max_bytes));
            }
        }
    }
    Ok((status, body))
}

async fn read_chunked<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    trailer_budget: &mut usize,
    max_bytes: usize,
    body: &mut Vec<u8>,
) -> Result<(), ForwardError> {
    loop {
        // Each chunk carries at least one byte of body, so with a bounded
        // line per chunk the number of lines read is bounded too.
        let mut line_budget = 1024;
        let line = read_line(reader, &mut line_budget).await?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = Some(size)
            .filter(|s| (1..=15).contains(&s.len()))
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| bad_reply("malformed chunk size"))?;
        if size == 0 {
            while !read_line(reader, trailer_budget).await?.is_empty() {}
            return Ok(());
        }
        if size > (max_bytes - body.len()) as u64 {
            return Err(too_large(max_bytes));
        }
        let start = body.len();
        body.resize(start + size as usize, 0);
        reader
            .read_exact(&mut body[start..])
            .await
            .map_err(receive_error)?;
        if !read_line(reader, &mut line_budget).await?.is_empty() {
            return Err(bad_reply("malformed chunk"));
        }
    }
}

/// One line, without its line ending, of at most `budget` bytes (which it
/// uses up).
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    budget: &mut usize,
) -> Result<String, ForwardError> {
    let mut line = Vec::new();
    let read = reader
        .take(*budget as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(receive_error)?;
    *budget -= read;
    if line.pop() != Some(b'\n') {
        return Err(bad_reply(if *budget == 0 {
            "a line of the reply is over its length limit"
        } else {
            "the reply ended early"
        }));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| bad_reply("the reply's head is not text"))
}

/// Connection and size limits, from the environment (see the crate doc).
struct Limits {
    max_connections: u32,
    header_timeout: Duration,
    connection_timeout: Duration,
    max_reply_bytes: usize,
    heartbeat: Duration,
}

impl Limits {
    fn from_env() -> Result<Limits, String> {
        let millis =
            |name, default| env_number(name, default, 1..=3_600_000).map(Duration::from_millis);
        Ok(Limits {
            max_connections: env_number("AGENTMUX_MINI_MAX_CONNECTIONS", 64, 1..=65_536)? as u32,
            header_timeout: millis("AGENTMUX_MINI_HEADER_TIMEOUT_MS", 5_000)?,
            connection_timeout: millis("AGENTMUX_MINI_CONNECTION_TIMEOUT_MS", 15_000)?,
            max_reply_bytes: env_number("AGENTMUX_MINI_MAX_REPLY_BYTES", 1 << 20, 1..=1 << 30)?
                as usize,
            // Shorter than the eviction grace, or live agents would be evicted.
            heartbeat: env_number(
                "AGENTMUX_MINI_HEARTBEAT_MS",
                HEARTBEAT.as_millis() as u64,
                1..=EVICTION_GRACE.as_millis() as u64 - 1,
            )
            .map(Duration::from_millis)?,
        })
    }
}

fn env_number(name: &str, default: u64, range: RangeInclusive<u64>) -> Result<u64, String> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(default);
    };
    value
        .to_str()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            format!(
                "{name} must be a whole number from {} to {}, not {value:?}",
                range.start(),
                range.end()
            )
        })
}

struct Config {
    data_dir: PathBuf,
    shared_dir: PathBuf,
    channel: String,
    port: u16,
    auth_key: String,
    limits: Limits,
}

const USAGE: &str =
    "usage: AGENTMUX_AUTH_KEY=key agentmux-mini [--data-dir DIR] [--shared-dir DIR] [--port N]";

impl Config {
    fn from_env() -> Result<Config, String> {
        let mut data_dir = None;
        let mut shared_dir = None;
        let mut port = 0;
        let mut args = std::env::args_os().skip(1);
        while let Some(arg) = args.next() {
            match arg.to_str() {
                Some("--data-dir") => {
                    let dir = args
                        .next()
                        .ok_or_else(|| format!("--data-dir takes a directory; {USAGE}"))?;
                    data_dir = Some(PathBuf::from(dir));
                }
                Some("--shared-dir") => {
                    let dir = args
                        .next()
                        .ok_or_else(|| format!("--shared-dir takes a directory; {USAGE}"))?;
                    shared_dir = Some(PathBuf::from(dir));
                }
                Some("--port") => {
                    let value = args.next().unwrap_or_default();
                    port = value.to_str().and_then(parse_port).ok_or_else(|| {
                        format!("--port takes a number from 0 to 65535, not {value:?}")
                    })?;
                }
                _ => return Err(format!("unexpected argument {arg:?}; {USAGE}")),
            }
        }
        let data_dir = data_dir
            .or_else(agentmux_registry::default_data_dir)
            .ok_or_else(|| "pass --data-dir DIR, or set AGENTMUX_DATA_HOME or HOME".to_string())?;
        let shared_dir = shared_dir
            .or_else(agentmux_registry::shared_root)
            .ok_or_else(|| "pass --shared-dir DIR, or set HOME".to_string())?;
        let auth_key = match std::env::var_os("AGENTMUX_AUTH_KEY") {
            None => {
                return Err(
                    "AGENTMUX_AUTH_KEY is not set; it holds this instance's auth key".into(),
                )
            }
            Some(key) if key.is_empty() => {
                return Err(
                    "AGENTMUX_AUTH_KEY is empty; an empty key would let any request in".into(),
                )
            }
            Some(key) => key
                .into_string()
                .ok()
                .filter(|key| sendable_key(key))
                .ok_or_else(|| {
                    format!(
                        "AGENTMUX_AUTH_KEY must be 1 to {MAX_KEY_BYTES} visible ASCII characters \
                         (no spaces or control characters), so it can be sent as a header"
                    )
                })?,
        };
        Ok(Config {
            data_dir,
            shared_dir,
            channel: agentmux_registry::compat::channel_from_env(),
            port,
            auth_key,
            limits: Limits::from_env()?,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(reason) => {
            eprintln!("agentmux-mini: {reason}");
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("agentmux-mini: {reason}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, config.port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", config.port))?;
    let this_addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let local_url = format!("http://{this_addr}");
    let registry = Registry::open(&config.data_dir)
        .map_err(|e| format!("cannot open the agent registry: {}", e.with_causes()))?;
    // Other users who can write the data dir can make the registry unavailable.
    if let Ok(Some(why)) = agentmux_registry::data_dir_warning(&config.data_dir) {
        eprintln!("agentmux-mini: warning: {why}");
    }
    let shared = Registry::open_shared(&config.shared_dir)
        .map_err(|e| format!("cannot open the shared agent registry: {}", e.with_causes()))?;
    // After binding, as agentmux-srv does: sweep old entries and dead
    // instances', in both registries. A failed sweep is logged, never hidden;
    // the server still starts.
    let (mut stale, mut dead) = (0, 0);
    for registry in [&registry, &shared] {
        stale += registry
            .cleanup_stale(Duration::from_secs(4 * 3600))
            .await
            .unwrap_or_else(|e| {
                eprintln!("startup sweep of stale entries failed: {}", e.with_causes());
                0
            });
        dead += registry.cleanup_dead_owners().await.unwrap_or_else(|e| {
            eprintln!(
                "startup sweep of dead owners' entries failed: {}",
                e.with_causes()
            );
            0
        });
    }
    // Before announcing: a SIGTERM right after the announcement is handled.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };

    // Known before announcing: the first discovery request sees every agent.
    let discovery = discovery::Discovery::start(registry.clone(), shared.clone()).await?;
    let app = Arc::new(App {
        registry,
        shared,
        channel: config.channel,
        auth_key: config.auth_key,
        local_url: local_url.clone(),
        this_addr,
        max_reply_bytes: config.limits.max_reply_bytes,
        heartbeat: config.limits.heartbeat,
        discovery,
        agents: Mutex::new(HashMap::new()),
        registering: tokio::sync::Mutex::new(()),
    });
    let router = Router::new()
        .route("/agentmux/reactive/register", post(register))
        .route("/agentmux/reactive/unregister", post(unregister))
        .route("/agentmux/reactive/inject", post(inject))
        .route("/agentmux/reactive/inbox/{agent_id}", get(inbox))
        .route("/agentmux/registry/discovery", get(discovery_route))
        .route("/agentmux/registry/events", get(events_route))
        .layer(middleware::from_fn_with_state(app.clone(), require_key))
        .with_state(app.clone());

    println!("listening on {local_url} (swept {stale} stale and {dead} dead entries)");
    serve(listener, router, &config.limits, shutdown).await;
    // Dropping the guards removes this instance's entries (if still its own).
    app.agents().clear();
    Ok(())
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// open connections finish (each within its lifetime).
async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let busy_body = r#"{"error":"too many open connections"}"#;
    let busy_reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{busy_body}",
        busy_body.len()
    );
    let (stop, stopped) = watch::channel(());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("accepting a connection failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Never waits: a client that does not read cannot stall this loop.
            let _ = stream.try_write(busy_reply.as_bytes());
            continue;
        };
        let io = TokioIo::new(Slotted {
            slot: Some(slot),
            stream,
        });
        let connection = http.serve_connection(io, TowerToHyperService::new(router.clone()));
        let mut stopped = stopped.clone();
        let lifetime = limits.connection_timeout;
        tokio::spawn(async move {
            let mut connection = pin!(connection);
            let _ = tokio::time::timeout(lifetime, async {
                tokio::select! {
                    _ = connection.as_mut() => return,
                    _ = stopped.changed() => connection.as_mut().graceful_shutdown(),
                }
                let _ = connection.as_mut().await;
            })
            .await;
        });
    }
    // New connections are refused from here on, not left waiting in the backlog.
    drop(listener);
    drop(stop);
    let _ = slots.acquire_many(limits.max_connections).await;
}

/// An accepted socket that holds one of the connection slots until it
/// starts to close.
struct Slotted {
    // Declared before `stream` so that it is dropped, and the slot freed,
    // before the socket closes: a client that saw the close finds it free.
    slot: Option<OwnedSemaphorePermit>,
    stream: TcpStream,
}

impl AsyncRead for Slotted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Slotted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.slot = None;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
