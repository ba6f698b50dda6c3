//! `agentmux-mini`: a small agentmux-srv stand-in that uses the registry the
//! way agentmux-srv does.
//!
//! - `POST /agentmux/reactive/register`   `{"agent_id", "block_id"}`: host an agent here.
//! - `POST /agentmux/reactive/unregister` `{"agent_id"}`: stop hosting it.
//! - `POST /agentmux/reactive/inject`     `{"agent_id", "message"}`: deliver to a
//!   local agent, or look the agent up in the registry and forward the request
//!   to the instance that owns it, with that instance's `X-AuthKey`.
//! - `GET  /agentmux/reactive/inbox/{agent_id}`: messages delivered to a local agent.
//!
//! Every route requires `X-AuthKey` equal to this instance's key
//! (`AGENTMUX_AUTH_KEY`), as agentmux-srv's auth middleware does. Forwards go
//! only to loopback URLs, never to this instance itself, and at most one hop.
//! At startup (after binding) it sweeps entries older than 4 hours and entries
//! of dead instances. On SIGTERM or Ctrl-C it removes its own entries.
//!
//! Usage: `AGENTMUX_AUTH_KEY=key agentmux-mini --data-dir DIR [--port N]`.
//! It prints `listening on http://127.0.0.1:PORT` once it accepts requests.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmux_registry::liveness::{owner_liveness, should_evict_after_failed_forward, Liveness};
use agentmux_registry::{AgentEntry, EntryFields, Owner, Registration, Registry};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOPS_HEADER: &str = "x-agentmux-hops";
/// A forwarded inject is delivered or refused by the owner; it never moves on.
const MAX_HOPS: u32 = 1;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_secs(30);
/// A just-registered entry is not evicted when its owner's liveness is unknown.
const EVICTION_GRACE: Duration = Duration::from_secs(10);

struct Agent {
    inbox: Vec<String>,
    /// Keeps the registry entry fresh; dropping it removes the entry.
    _registration: Registration,
}

struct App {
    registry: Registry,
    auth_key: String,
    local_url: String,
    agents: Mutex<HashMap<String, Agent>>,
    /// Held across a registration, so that the guard kept for an id is
    /// always the one whose entry was written last.
    registering: tokio::sync::Mutex<()>,
}

type Shared = Arc<App>;

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
    let given = request
        .headers()
        .get("x-authkey")
        .and_then(|v| v.to_str().ok());
    if given != Some(app.auth_key.as_str()) {
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
    let _order = app.registering.lock().await;
    let registration = match Registration::register(&app.registry, fields, HEARTBEAT).await {
        Ok(registration) => registration,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let replaced = app.agents.lock().unwrap().insert(
        body.agent_id.clone(),
        Agent {
            inbox: Vec::new(),
            _registration: registration,
        },
    );
    // Outside the map's lock: dropping removes nothing of the new entry.
    drop(replaced);
    Json(json!({ "registered": body.agent_id })).into_response()
}

async fn unregister(State(app): State<Shared>, Json(body): Json<RegisterBody>) -> Response {
    let agent = app.agents.lock().unwrap().remove(&body.agent_id);
    // Dropping the guard removes the entry if it is still ours.
    let removed = agent.is_some();
    drop(agent);
    Json(json!({ "unregistered": removed })).into_response()
}

async fn inbox(State(app): State<Shared>, Path(agent_id): Path<String>) -> Response {
    match app.agents.lock().unwrap().get(&agent_id) {
        Some(agent) => Json(json!({ "messages": agent.inbox })).into_response(),
        None => error(StatusCode::NOT_FOUND, "agent not hosted here"),
    }
}

async fn inject(
    State(app): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<InjectBody>,
) -> Response {
    if let Some(agent) = app.agents.lock().unwrap().get_mut(&body.agent_id) {
        agent.inbox.push(body.message);
        return Json(json!({ "delivered": "local" })).into_response();
    }
    let hops: u32 = headers
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    if hops >= MAX_HOPS {
        return error(
            StatusCode::NOT_FOUND,
            "agent not hosted here (hop limit reached)",
        );
    }
    let entry = match app.registry.lookup(&body.agent_id).await {
        Ok(Some(entry)) => entry,
        Ok(None) => return error(StatusCode::NOT_FOUND, "agent not found"),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if entry.local_url == app.local_url {
        // Our own stale entry: we do not host the agent, and must not loop.
        return error(StatusCode::NOT_FOUND, "agent not found");
    }
    if owner_liveness(&entry) == Liveness::Dead {
        // Fail fast: the owner is gone, its entry only points nowhere.
        evict(&app, &entry).await;
        return unreachable(&entry, "owner process is not running");
    }
    let Some(target) = loopback_target(&entry.local_url) else {
        return error(
            StatusCode::BAD_GATEWAY,
            format!(
                "refusing to forward to non-loopback URL {}",
                entry.local_url
            ),
        );
    };
    let payload = json!({ "agent_id": body.agent_id, "message": body.message }).to_string();
    match forward(target, &entry.auth_key, hops + 1, &payload).await {
        Ok((status, response)) if (200..300).contains(&status) => {
            Json(json!({ "delivered": "forwarded", "via": entry.local_url, "owner": response }))
                .into_response()
        }
        Ok((status, response)) => error(
            StatusCode::BAD_GATEWAY,
            format!("owner {} answered {status}: {response}", entry.local_url),
        ),
        Err(reason) => {
            if should_evict_after_failed_forward(&entry, EVICTION_GRACE) {
                evict(&app, &entry).await;
            }
            unreachable(&entry, &reason)
        }
    }
}

/// Removes `entry` only if it is still that registration (never a fresh
/// re-registration of the same agent).
async fn evict(app: &App, entry: &AgentEntry) {
    let _ = app
        .registry
        .remove_owned(&entry.agent_id, &Owner::of(entry))
        .await;
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

/// `http://127.0.0.1:PORT` (or `localhost`, `[::1]`) → its socket address;
/// `None` for anything that is not plain HTTP on loopback.
fn loopback_target(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let ip: std::net::IpAddr = match host {
        "localhost" => Ipv4Addr::LOCALHOST.into(),
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?,
    };
    ip.is_loopback().then_some(SocketAddr::new(ip, port))
}

/// POSTs an inject to the owner over plain HTTP/1.1; returns status and body.
async fn forward(
    target: SocketAddr,
    auth_key: &str,
    hops: u32,
    payload: &str,
) -> Result<(u16, Value), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!(
            "POST /agentmux/reactive/inject HTTP/1.1\r\nHost: {target}\r\nX-AuthKey: {auth_key}\r\n\
             {HOPS_HEADER}: {hops}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{payload}",
            payload.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        parse_response(&response).ok_or_else(|| "malformed response".to_string())
    };
    tokio::time::timeout(FORWARD_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {FORWARD_TIMEOUT:?}")))
}

fn parse_response(raw: &[u8]) -> Option<(u16, Value)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let data_dir = arg("--data-dir")
        .map(Into::into)
        .or_else(agentmux_registry::default_data_dir)
        .expect("pass --data-dir or set AGENTMUX_DATA_HOME or HOME");
    let port: u16 = arg("--port").map_or(0, |p| p.parse().expect("--port takes a number"));
    let auth_key = std::env::var("AGENTMUX_AUTH_KEY").expect("set AGENTMUX_AUTH_KEY");

    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .expect("bind");
    let local_url = format!("http://{}", listener.local_addr().unwrap());
    let registry = Registry::open(&data_dir).expect("open the agent registry");
    // After binding, as agentmux-srv does: sweep old entries and dead instances'.
    // A failed sweep is logged, never hidden; the server still starts.
    let stale = registry
        .cleanup_stale(Duration::from_secs(4 * 3600))
        .await
        .unwrap_or_else(|e| {
            eprintln!("startup sweep of stale entries failed: {e}");
            0
        });
    let dead = registry.cleanup_dead_owners().await.unwrap_or_else(|e| {
        eprintln!("startup sweep of dead owners' entries failed: {e}");
        0
    });

    let app = Arc::new(App {
        registry,
        auth_key,
        local_url: local_url.clone(),
        agents: Mutex::new(HashMap::new()),
        registering: tokio::sync::Mutex::new(()),
    });
    let router = Router::new()
        .route("/agentmux/reactive/register", post(register))
        .route("/agentmux/reactive/unregister", post(unregister))
        .route("/agentmux/reactive/inject", post(inject))
        .route("/agentmux/reactive/inbox/{agent_id}", get(inbox))
        .layer(middleware::from_fn_with_state(app.clone(), require_key))
        .with_state(app.clone());

    println!("listening on {local_url} (swept {stale} stale and {dead} dead entries)");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .expect("serve");
    // Dropping the guards removes this instance's entries (if still its own).
    app.agents.lock().unwrap().clear();
}
