//! `agentmux-registry`: inspect and edit the agent registry of an agentmux-srv
//! data dir from the command line.
//!
//! Exit status: 0 on success, 1 when `lookup` finds no entry, 2 on a usage
//! error, 3 when the registry or the file system failed (messages go to
//! stderr).

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmux_registry::blocking::Registry;
use agentmux_registry::{EntryFields, SweepProgress};
use agentmux_registry_core::cli;
use clap::{CommandFactory, Parser, Subcommand};

/// Exit status: `lookup` found no entry.
const EXIT_NOT_FOUND: u8 = 1;
/// Exit status: the registry or the file system failed. (2 is clap's, for
/// usage errors.)
const EXIT_FAILED: u8 = 3;

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
        /// Owning process id; 0 means unknown (such an entry is never judged
        /// dead by `cleanup --dead-owners`).
        #[arg(long, default_value_t = 0)]
        pid: u32,
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
    /// Print a shell completion script for SHELL.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
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
            // The reader went away (`... | head`): nothing more to say.
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("agentmux-registry: {}", cli::printable(&e.to_string()));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Writes `bytes` to stdout, reporting failure instead of panicking.
fn write_out(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()
}

/// Writes one line to stdout.
fn line(text: &str) -> std::io::Result<()> {
    write_out(format!("{text}\n").as_bytes())
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
    match &cli.command {
        Command::ExportWasm { dir } => {
            export_wasm(dir).map_err(|e| format!("exporting to {}: {e}", dir.display()))?;
            line(&format!(
                "wrote {0}/registry.wasm and its WIT in {0}/wit",
                dir.display()
            ))?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "agentmux-registry",
                &mut script,
            );
            write_out(&script)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            write_out(&page)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let data_dir = match cli.data_dir.or_else(agentmux_registry::default_data_dir) {
        Some(dir) => dir,
        None => {
            return Err("no data dir: pass --data-dir, or set AGENTMUX_DATA_HOME or HOME".into())
        }
    };
    let registry = Registry::open(&data_dir)?;
    // Said on every run: other users can make the registry unavailable.
    if let Ok(Some(why)) = agentmux_registry::data_dir_warning(&data_dir) {
        let _ = writeln!(std::io::stderr(), "agentmux-registry: warning: {why}");
    }
    let json = cli.json;
    match cli.command {
        Command::ExportWasm { .. } | Command::Completions { .. } | Command::Man => {
            unreachable!("handled above")
        }
        Command::Write {
            agent_id,
            url,
            block,
            pid,
            auth_key,
        } => {
            let entry = registry.write(EntryFields {
                agent_id,
                local_url: url,
                block_id: block,
                pid,
                auth_key,
                ..EntryFields::default()
            })?;
            line(&cli::written(&entry, json))?;
        }
        Command::Remove { agent_id } => {
            let removed = registry.remove(&agent_id)?;
            line(&cli::removed(&agent_id, removed, json))?;
        }
        Command::Lookup { agent_id } => match registry.lookup(&agent_id)? {
            Some(entry) => line(&cli::found(&entry, json, now_ms()))?,
            None => {
                let (out, err) = cli::not_found(&agent_id, json);
                if let Some(out) = out {
                    line(out)?;
                }
                eprintln!("agentmux-registry: {err}");
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            }
        },
        Command::List => {
            line(&cli::listed(&registry.list()?, json, now_ms()))?;
        }
        Command::Cleanup {
            max_age_ms,
            dead_owners,
        } => {
            // Progress on a terminal only: scripts read the one result line.
            let show = std::io::stderr().is_terminal();
            let mut last = SweepProgress::default();
            let mut removed =
                registry.cleanup_stale_with_progress(Duration::from_millis(max_age_ms), |p| {
                    if show && !p.done {
                        eprint!("\rswept {} names, removed {}", p.examined, p.removed);
                    }
                    last = p;
                })?;
            if show {
                eprint!("\r\x1b[K");
            }
            if dead_owners {
                removed += registry.cleanup_dead_owners()?;
            }
            line(&cli::cleaned(removed, json))?;
            if last.failed > 0 {
                let why = cli::sweep_failures(last.failed, last.first_failure.as_deref());
                eprintln!("agentmux-registry: {}", cli::printable(&why));
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
