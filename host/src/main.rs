//! `agentmux-registry`: inspect and edit the agent registry of an agentmux-srv
//! data dir from the command line.
//!
//! Exit status: 0 on success, 1 when `lookup` finds no entry, 2 on a usage or
//! registry error (the message goes to stderr).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmux_registry::blocking::Registry;
use agentmux_registry::AgentEntry;
use clap::{Parser, Subcommand};

/// Inspect and edit the cross-instance agent registry of agentmux-srv.
#[derive(Parser)]
#[command(name = "agentmux-registry", version)]
struct Cli {
    /// The agentmux data dir (entries live in its `agents/` directory).
    /// Default: $AGENTMUX_DATA_HOME when set and non-empty, else ~/.agentmux.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print JSON (entries in their on-disk format) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or replace an agent's entry.
    Write {
        /// The agent id.
        agent_id: String,
        /// Loopback URL of the owning instance, e.g. http://127.0.0.1:8123.
        #[arg(long, value_name = "URL")]
        url: String,
        /// The block the agent runs in.
        #[arg(long, value_name = "BLOCK_ID")]
        block: String,
        /// Owning process id [default: this command's own]
        #[arg(long)]
        pid: Option<u32>,
        /// The owning instance's auth key.
        #[arg(long, value_name = "KEY", default_value = "")]
        auth_key: String,
    },
    /// Remove an agent's entry (no entry is not an error).
    Remove {
        /// The agent id.
        agent_id: String,
    },
    /// Show an agent's entry; exits 1 when there is none.
    Lookup {
        /// The agent id.
        agent_id: String,
    },
    /// List every valid entry.
    List,
    /// Remove stale, malformed and unsafe entries.
    Cleanup {
        /// Entries last written longer ago than this many milliseconds are removed.
        #[arg(long, value_name = "MS", default_value_t = 4 * 60 * 60 * 1000)]
        max_age_ms: u64,
        /// Also remove entries whose owning process is no longer running.
        #[arg(long)]
        dead_owners: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentmux-registry: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let data_dir = match cli.data_dir.or_else(agentmux_registry::default_data_dir) {
        Some(dir) => dir,
        None => {
            return Err("no data dir: pass --data-dir, or set AGENTMUX_DATA_HOME or HOME".into())
        }
    };
    let registry = Registry::open(&data_dir)?;
    let json = cli.json;
    match cli.command {
        Command::Write {
            agent_id,
            url,
            block,
            pid,
            auth_key,
        } => {
            let pid = pid.unwrap_or_else(std::process::id);
            let entry = registry.write(&agent_id, &url, &block, pid, &auth_key)?;
            if json {
                println!("{}", serde_json::to_string(&entry)?);
            } else {
                println!("registered {} -> {}", entry.agent_id, entry.local_url);
            }
        }
        Command::Remove { agent_id } => {
            let removed = registry.remove(&agent_id)?;
            if json {
                println!("{}", serde_json::json!({ "removed": removed }));
            } else if removed {
                println!("removed {agent_id}");
            } else {
                println!("no entry for {agent_id}");
            }
        }
        Command::Lookup { agent_id } => match registry.lookup(&agent_id)? {
            Some(entry) if json => println!("{}", serde_json::to_string(&entry)?),
            Some(entry) => print_entry(&entry),
            None => {
                if json {
                    println!("null");
                }
                eprintln!("agentmux-registry: no entry for agent {agent_id:?}");
                return Ok(ExitCode::from(1));
            }
        },
        Command::List => {
            let entries = registry.list()?;
            if json {
                println!("{}", serde_json::to_string(&entries)?);
            } else {
                print_table(&entries);
            }
        }
        Command::Cleanup {
            max_age_ms,
            dead_owners,
        } => {
            let mut removed = registry.cleanup_stale(Duration::from_millis(max_age_ms))?;
            if dead_owners {
                removed += registry.cleanup_dead_owners()?;
            }
            if json {
                println!("{}", serde_json::json!({ "removed": removed }));
            } else {
                println!("removed {removed} stale or invalid entries");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// "5s ago", "3m ago", "2h ago", "4d ago".
fn age(updated_at: u64) -> String {
    let secs = now_ms().saturating_sub(updated_at) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// The auth key is a credential: text output says only whether there is one.
fn key_state(entry: &AgentEntry) -> &'static str {
    if entry.auth_key.is_empty() {
        "none"
    } else {
        "set"
    }
}

fn print_entry(entry: &AgentEntry) {
    println!("agent-id:   {}", entry.agent_id);
    println!("local-url:  {}", entry.local_url);
    println!("block-id:   {}", entry.block_id);
    println!("pid:        {}", entry.pid);
    println!(
        "updated-at: {} ({})",
        entry.updated_at,
        age(entry.updated_at)
    );
    println!("auth-key:   {} (shown with --json)", key_state(entry));
}

fn print_table(entries: &[AgentEntry]) {
    if entries.is_empty() {
        println!("no agents registered");
        return;
    }
    let width = |f: fn(&AgentEntry) -> usize, title: &str| {
        entries.iter().map(f).max().unwrap_or(0).max(title.len())
    };
    let id_w = width(|e| e.agent_id.chars().count(), "AGENT");
    let url_w = width(|e| e.local_url.chars().count(), "URL");
    let block_w = width(|e| e.block_id.chars().count(), "BLOCK");
    println!(
        "{:id_w$}  {:url_w$}  {:block_w$}  {:>7}  {:8}  KEY",
        "AGENT", "URL", "BLOCK", "PID", "UPDATED"
    );
    for e in entries {
        println!(
            "{:id_w$}  {:url_w$}  {:block_w$}  {:>7}  {:8}  {}",
            e.agent_id,
            e.local_url,
            e.block_id,
            e.pid,
            age(e.updated_at),
            key_state(e)
        );
    }
}
