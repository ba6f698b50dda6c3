//! `agentmux-registry`: inspect and edit the agent registry of an agentmux-srv
//! data dir from the command line.
//!
//! Exit status: 0 on success, 1 when `lookup` finds no entry, 2 on a usage or
//! registry error (the message goes to stderr).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmux_registry::blocking::Registry;
use agentmux_registry::AgentEntry;
use agentmux_registry_guest::cli;
use agentmux_registry_guest::entry::Entry;
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
    /// Write the registry component (registry.wasm) and its WIT package
    /// (wit/) into DIR, for use with other component hosts.
    ExportWasm {
        /// Directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Remove stale, malformed and unsafe entries.
    Cleanup {
        /// Entries last written longer ago than this many milliseconds are removed.
        #[arg(long, value_name = "MS", default_value_t = cli::DEFAULT_MAX_AGE_MS)]
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

/// The entry in the form the shared output conventions take.
fn shown(entry: AgentEntry) -> Entry {
    Entry {
        agent_id: entry.agent_id,
        local_url: entry.local_url,
        block_id: entry.block_id,
        pid: entry.pid,
        updated_at: entry.updated_at,
        auth_key: entry.auth_key,
        pid_started: entry.pid_started,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes the component and its WIT package into `dir`.
fn export_wasm(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("wit/deps/cli"))?;
    std::fs::write(
        dir.join("registry.wasm"),
        agentmux_registry::component_bytes(),
    )?;
    std::fs::write(dir.join("wit/registry.wit"), agentmux_registry::WIT)?;
    std::fs::write(
        dir.join("wit/deps/cli/run.wit"),
        agentmux_registry::WIT_CLI_RUN,
    )?;
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if let Command::ExportWasm { dir } = &cli.command {
        export_wasm(dir).map_err(|e| format!("exporting to {}: {e}", dir.display()))?;
        println!(
            "wrote {0}/registry.wasm and its WIT in {0}/wit",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let data_dir = match cli.data_dir.or_else(agentmux_registry::default_data_dir) {
        Some(dir) => dir,
        None => {
            return Err("no data dir: pass --data-dir, or set AGENTMUX_DATA_HOME or HOME".into())
        }
    };
    let registry = Registry::open(&data_dir)?;
    let json = cli.json;
    match cli.command {
        Command::ExportWasm { .. } => unreachable!("handled above"),
        Command::Write {
            agent_id,
            url,
            block,
            pid,
            auth_key,
        } => {
            let pid = pid.unwrap_or_else(std::process::id);
            let entry = registry.write(&agent_id, &url, &block, pid, &auth_key)?;
            println!("{}", cli::written(&shown(entry), json));
        }
        Command::Remove { agent_id } => {
            let removed = registry.remove(&agent_id)?;
            println!("{}", cli::removed(&agent_id, removed, json));
        }
        Command::Lookup { agent_id } => match registry.lookup(&agent_id)? {
            Some(entry) => println!("{}", cli::found(&shown(entry), json, now_ms())),
            None => {
                let (out, err) = cli::not_found(&agent_id, json);
                if let Some(out) = out {
                    println!("{out}");
                }
                eprintln!("agentmux-registry: {err}");
                return Ok(ExitCode::from(1));
            }
        },
        Command::List => {
            let entries: Vec<Entry> = registry.list()?.into_iter().map(shown).collect();
            println!("{}", cli::listed(&entries, json, now_ms()));
        }
        Command::Cleanup {
            max_age_ms,
            dead_owners,
        } => {
            let mut removed = registry.cleanup_stale(Duration::from_millis(max_age_ms))?;
            if dead_owners {
                removed += registry.cleanup_dead_owners()?;
            }
            println!("{}", cli::cleaned(removed, json));
        }
    }
    Ok(ExitCode::SUCCESS)
}
