//! `agentmux-registry`: inspect and edit the agent registry of an agentmux-srv
//! data dir from the command line.
//!
//! Exit status: 0 on success, 1 when `lookup` finds no entry, 2 on a usage
//! error, 3 when the registry or the file system failed (messages go to
//! stderr).

use std::error::Error;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmux_registry::blocking::Registry;
use agentmux_registry::{AgentEntry, EntryFields, SweepProgress};
use agentmux_registry_core::cli::{self, Outcome};
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
    #[command(flatten)]
    Registry(cli::Command),
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Registry(command) => run_registry(cli.data_dir, command, cli.json),
        Command::ExportWasm { dir } => export_wasm(&dir),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "agentmux-registry", &mut script);
            write_out(&script).map_err(Into::into)
        }
        Command::Man => man(),
    };
    match outcome {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::NotFound(why)) => {
            eprintln!("agentmux-registry: {why}");
            ExitCode::from(EXIT_NOT_FOUND)
        }
        Ok(Outcome::Incomplete(why)) => {
            eprintln!("agentmux-registry: {why}");
            ExitCode::from(EXIT_FAILED)
        }
        // The reader went away (`... | head`): nothing more to say.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "agentmux-registry: {}",
                cli::terminal_safe(&cli::with_causes(&*e))
            );
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Runs a registry command on the registry of `data_dir` (or the default).
fn run_registry(
    data_dir: Option<PathBuf>,
    command: cli::Command,
    json: bool,
) -> Result<Outcome, Box<dyn Error>> {
    let data_dir = data_dir
        .or_else(agentmux_registry::default_data_dir)
        .ok_or("no data dir: pass --data-dir, or set AGENTMUX_DATA_HOME or HOME")?;
    let registry = Registry::open(&data_dir)?;
    // Said on every run: other users can make the registry unavailable.
    if let Ok(Some(why)) = agentmux_registry::data_dir_warning(&data_dir) {
        let _ = writeln!(std::io::stderr(), "agentmux-registry: warning: {why}");
    }
    let mut stdout = std::io::stdout().lock();
    cli::dispatch(command, json, &mut Host(registry), &mut stdout).map_err(|e| match e {
        cli::Failure::Registry(e) => Box::new(e) as Box<dyn Error>,
        cli::Failure::Output(e) => Box::new(e),
    })
}

/// The registry as the commands' backend.
struct Host(Registry);

impl cli::Backend for Host {
    type Error = agentmux_registry::Error;

    fn write(&mut self, fields: EntryFields) -> Result<AgentEntry, Self::Error> {
        self.0.write(fields)
    }

    fn remove(&mut self, agent_id: &str) -> Result<bool, Self::Error> {
        self.0.remove(agent_id)
    }

    fn lookup(&mut self, agent_id: &str) -> Result<Option<AgentEntry>, Self::Error> {
        self.0.lookup(agent_id)
    }

    fn list(&mut self) -> Result<Vec<AgentEntry>, Self::Error> {
        self.0.list()
    }

    fn cleanup(
        &mut self,
        max_age_ms: u64,
        dead_owners: bool,
    ) -> Result<SweepProgress, Self::Error> {
        // Progress on a terminal only: scripts read the one result line.
        let show = std::io::stderr().is_terminal();
        let mut last = SweepProgress::default();
        self.0
            .cleanup_stale_with_progress(Duration::from_millis(max_age_ms), |p| {
                if show && !p.done {
                    eprint!("\rswept {} names, removed {}", p.examined, p.removed);
                }
                last = p;
            })?;
        if show {
            eprint!("\r\x1b[K");
        }
        if dead_owners {
            last.add(self.0.sweep_dead_owners()?);
        }
        Ok(last)
    }

    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Writes `bytes` to stdout, reporting failure instead of panicking.
fn write_out(bytes: &[u8]) -> std::io::Result<Outcome> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()?;
    Ok(Outcome::Done)
}

/// Writes the component and its WIT package into `dir`.
fn export_wasm(dir: &Path) -> Result<Outcome, Box<dyn Error>> {
    let export = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join("wit/deps/cli"))?;
        std::fs::write(
            dir.join("registry.wasm"),
            agentmux_registry::component_bytes(),
        )?;
        std::fs::write(dir.join("wit/registry.wit"), agentmux_registry::WIT)?;
        std::fs::write(
            dir.join("wit/deps/cli/run.wit"),
            agentmux_registry::WIT_CLI_RUN,
        )
    };
    export().map_err(|e| format!("exporting to {}: {e}", dir.display()))?;
    let done = format!(
        "wrote {0}/registry.wasm and its WIT in {0}/wit\n",
        dir.display()
    );
    Ok(write_out(done.as_bytes())?)
}

/// Prints the man page.
fn man() -> Result<Outcome, Box<dyn Error>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    Ok(write_out(&page)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's clap grammar and the component's parser read every
    /// command line the component accepts the same way, and refuse the same
    /// malformed ones.
    #[test]
    fn both_command_lines_parse_the_same_grammar() {
        let host = |line: &str| {
            let args = std::iter::once("agentmux-registry").chain(line.split_whitespace());
            match Cli::try_parse_from(args) {
                Ok(Cli {
                    command: Command::Registry(command),
                    json,
                    ..
                }) => Some(cli::Invocation { json, command }),
                Ok(_) => panic!("{line:?} is not a registry command"),
                Err(_) => None,
            }
        };
        let component = |line: &str| {
            let args: Vec<String> = line.split_whitespace().map(String::from).collect();
            cli::parse(&args).ok()
        };
        for line in [
            "write a1 --url u --block b",
            "--json write a1 --url u --block b --pid 7 --auth-key k",
            "write a1 --block b --url u --auth-key k --json",
            "remove a1",
            "lookup a1 --json",
            "list",
            "cleanup",
            "cleanup --max-age-ms 5",
            "cleanup --max-age-ms=5",
            "write a --url=u --block=b --pid=3",
            "write a --url u=v --block b",
            "lookup -- -x",
            "write --url u --block b -- -x",
            "lookup -",
        ] {
            let parsed = host(line);
            assert!(parsed.is_some(), "{line:?}");
            assert_eq!(parsed, component(line), "{line:?}");
        }
        for line in [
            "",
            "frobnicate",
            "write a1 --block b",
            "write a1 --url u --block b --pid x",
            "lookup",
            "lookup a b",
            "list extra",
            "lookup a1 --url u",
            "list --verbose",
            "cleanup --max-age-ms -1",
            "write a --url u --url v --block b",
            "--json --json list",
            "write a --url --json --block b",
            "write a --url -x --block b",
            "write -x --url u --block b",
            "lookup -x",
            "list --json=yes",
            "lookup a b --",
        ] {
            assert_eq!(host(line), None, "{line:?}");
            assert_eq!(component(line), None, "{line:?}");
        }
        // The one difference: the component cannot see processes.
        let dead = "cleanup --dead-owners";
        assert!(matches!(
            host(dead).map(|i| i.command),
            Some(cli::Command::Cleanup {
                dead_owners: true,
                ..
            })
        ));
        assert_eq!(component(dead), None);
    }
}
