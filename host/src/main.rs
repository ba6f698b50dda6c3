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
    /// With --json, print each entry of lookup and list with its health:
    /// {"health":"fresh|stale|dead|unknown","entry":{...}} (text output
    /// always shows it).
    #[arg(long, global = true, requires = "json")]
    health: bool,
    /// Work on the host-wide shared registry rooted at DIR (one entry per
    /// agent and channel, DIR/<agent>/<channel>.json) instead of the data
    /// dir's.
    #[arg(long, global = true, value_name = "DIR", conflicts_with_all = ["shared", "etcd"])]
    shared_dir: Option<PathBuf>,
    /// Work on the shared registry at its default root,
    /// ~/.agentmux/shared/agents/reactive.
    #[arg(long, global = true)]
    shared: bool,
    /// The channel `write` and `remove` use in the shared registry. Default:
    /// $AGENTMUX_CHANNEL when set and non-empty, else stable.
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    channel: Option<String>,
    /// Work on the registry in etcd at ENDPOINTS (comma-separated URLs,
    /// e.g. http://127.0.0.1:2379) instead of a data dir; with --shared, on
    /// its shared registry. Needs a build with the `etcd` feature.
    #[arg(
        long,
        global = true,
        value_name = "ENDPOINTS",
        conflicts_with = "data_dir"
    )]
    etcd: Option<String>,
    /// The key prefix of the registry in etcd. Default: /agentmux/$USER/.
    #[arg(long, global = true, value_name = "PREFIX", requires = "etcd")]
    etcd_prefix: Option<String>,
    /// Speak TLS to etcd, trusting the CA certificate in FILE (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "etcd")]
    etcd_ca: Option<PathBuf>,
    /// The client certificate (PEM) to present to etcd; needs --etcd-key.
    #[arg(long, global = true, value_name = "FILE", requires_all = ["etcd", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); needs --etcd-cert.
    #[arg(long, global = true, value_name = "FILE", requires_all = ["etcd", "etcd_cert"])]
    etcd_key: Option<PathBuf>,
    /// Authenticate to etcd as user NAME, with the password in
    /// $AGENTMUX_ETCD_PASSWORD.
    #[arg(long, global = true, value_name = "NAME", requires = "etcd")]
    etcd_user: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Where an etcd registry is, as the command line says.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
struct EtcdPlace {
    endpoints: String,
    prefix: Option<String>,
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    user: Option<String>,
}

/// Which registries a command line names.
struct Place {
    data_dir: Option<PathBuf>,
    /// The shared root, when the command works on the shared registry.
    shared_root: Option<PathBuf>,
    /// `--shared-dir` as given, for `owners`.
    shared_dir: Option<PathBuf>,
    channel: Option<String>,
    /// The etcd registry, when `--etcd` is given (`shared_root` is then
    /// unused: `shared` says which layout).
    etcd: Option<EtcdPlace>,
    /// Whether the command works on a shared registry.
    shared: bool,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Registry(cli::Command),
    /// Follow the registry's changes: one line per change (NDJSON with
    /// --json, each put with the entry's health), starting with every
    /// current entry; runs until interrupted or its output is closed.
    Watch {
        /// Only changes made from now on, not the current entries first.
        #[arg(long)]
        now: bool,
    },
    /// Register an agent and keep it registered, renewing its entry every
    /// beat, until interrupted (Ctrl-C, SIGTERM); then remove it. Exits
    /// with an error if another registration takes the id over. On etcd
    /// the entry lives on a lease of three beats: if this process dies
    /// without removing it, it vanishes within that time.
    Register {
        /// The agent id.
        agent_id: String,
        /// URL of the owning instance, e.g. http://127.0.0.1:8123 (on etcd,
        /// one the other hosts can reach).
        #[arg(long, value_name = "URL")]
        url: String,
        /// The block the agent runs in.
        #[arg(long, value_name = "BLOCK_ID")]
        block: String,
        /// The owning instance's auth key.
        #[arg(long, value_name = "KEY", default_value = "")]
        auth_key: String,
        /// How often the entry is renewed, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 1000,
              value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
        beat_ms: u64,
    },
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
    let etcd = cli.etcd.clone().map(|endpoints| EtcdPlace {
        endpoints,
        prefix: cli.etcd_prefix.clone(),
        ca: cli.etcd_ca.clone(),
        identity: cli.etcd_cert.clone().zip(cli.etcd_key.clone()),
        user: cli.etcd_user.clone(),
    });
    let place = |cli: &Cli, etcd| {
        place(
            cli.data_dir.clone(),
            cli.shared_dir.clone(),
            cli.shared,
            cli.channel.clone(),
            etcd,
        )
    };
    let outcome = match &cli.command {
        Command::Registry(command) => place(&cli, etcd).and_then(|place| {
            let format = cli::Format {
                json: cli.json,
                health: cli.health,
            };
            run_registry(place, command.clone(), format)
        }),
        Command::Watch { now } => place(&cli, etcd).and_then(|place| watch(place, *now, cli.json)),
        Command::Register {
            agent_id,
            url,
            block,
            auth_key,
            beat_ms,
        } => place(&cli, etcd).and_then(|place| {
            let fields = EntryFields {
                agent_id: agent_id.clone(),
                local_url: url.clone(),
                block_id: block.clone(),
                auth_key: auth_key.clone(),
                ..EntryFields::default()
            };
            register(place, fields, Duration::from_millis(*beat_ms), cli.json)
        }),
        Command::ExportWasm { dir } => export_wasm(dir),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "agentmux-registry",
                &mut script,
            );
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

/// What the global options say about where a command works.
fn place(
    data_dir: Option<PathBuf>,
    shared_dir: Option<PathBuf>,
    shared: bool,
    channel: Option<String>,
    etcd: Option<EtcdPlace>,
) -> Result<Place, Box<dyn Error>> {
    let shared_root = match (&shared_dir, shared) {
        (Some(dir), _) => Some(dir.clone()),
        (None, true) if etcd.is_some() => None,
        (None, true) => Some(
            agentmux_registry::shared_root()
                .ok_or("no shared root: pass --shared-dir, or set HOME")?,
        ),
        (None, false) => None,
    };
    let shared = shared || shared_dir.is_some();
    if channel.is_some() && !shared {
        // A usage error (exit status 2), as clap reports its own.
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--channel applies to the shared registry: add --shared or --shared-dir",
            )
            .exit();
    }
    Ok(Place {
        data_dir,
        shared_root,
        shared_dir,
        channel,
        etcd,
        shared,
    })
}

/// Opens the registry `place` names: on etcd, or the data dir's (or shared
/// root's) when `shared` is false (true).
fn open_place(place: &Place, shared: bool) -> Result<Registry, Box<dyn Error>> {
    if let Some(etcd) = &place.etcd {
        return open_etcd(etcd, shared);
    }
    match (&place.shared_root, shared) {
        (Some(root), true) => open(root, true),
        _ => open(&default_data_dir(place.data_dir.clone())?, false),
    }
}

/// Exits with a usage error (status 2), as clap reports its own.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
fn usage_error(why: &str) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ValueValidation, why)
        .exit()
}

#[cfg(feature = "etcd")]
fn open_etcd(place: &EtcdPlace, shared: bool) -> Result<Registry, Box<dyn Error>> {
    let read =
        |path: &Path| std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()));
    let mut etcd = agentmux_registry::Etcd::from_list(&place.endpoints);
    if let Some(prefix) = &place.prefix {
        etcd = etcd.prefix(prefix);
    }
    if let Some(ca) = &place.ca {
        etcd = etcd.ca_certificate(read(ca)?);
    }
    if let Some((cert, key)) = &place.identity {
        etcd = etcd.client_identity(read(cert)?, read(key)?);
    }
    if let Some(user) = &place.user {
        let Ok(password) = std::env::var("AGENTMUX_ETCD_PASSWORD") else {
            usage_error("--etcd-user needs the password in $AGENTMUX_ETCD_PASSWORD")
        };
        etcd = etcd.user(user, password);
    }
    // What the command line got wrong is a usage error (exit status 2).
    if let Err(agentmux_registry::Error::InvalidField(why)) = etcd.check() {
        usage_error(&why)
    }
    // A few seconds per call: a command line must not hang on a cluster
    // that is out of reach.
    let options = agentmux_registry::Options::new().call_timeout(Duration::from_secs(10));
    Ok(if shared {
        Registry::open_etcd_shared_with(&etcd, options)?
    } else {
        Registry::open_etcd_with(&etcd, options)?
    })
}

#[cfg(not(feature = "etcd"))]
fn open_etcd(_: &EtcdPlace, _shared: bool) -> Result<Registry, Box<dyn Error>> {
    Err(
        "--etcd: this agentmux-registry was built without etcd support; \
         build it with `--features etcd`"
            .into(),
    )
}

fn default_data_dir(data_dir: Option<PathBuf>) -> Result<PathBuf, Box<dyn Error>> {
    Ok(data_dir
        .or_else(agentmux_registry::default_data_dir)
        .ok_or("no data dir: pass --data-dir, or set AGENTMUX_DATA_HOME or HOME")?)
}

/// Opens the registry of `dir` (the data dir's, or a shared root's), and
/// says on stderr when other users could change the directory holding it.
fn open(dir: &Path, shared: bool) -> Result<Registry, Box<dyn Error>> {
    // One command, a few calls: reading the directory for each beats
    // reading it whole to serve lookups from notifications.
    let options = agentmux_registry::Options::new().lookups_from_notifications(false);
    let registry = if shared {
        Registry::open_shared_with(dir, options)?
    } else {
        Registry::open_with(dir, options)?
    };
    // Said on every run: other users can make the registry unavailable.
    let parent = if shared { dir.parent() } else { Some(dir) };
    if let Some(Ok(Some(why))) = parent.map(agentmux_registry::data_dir_warning) {
        let _ = writeln!(std::io::stderr(), "agentmux-registry: warning: {why}");
    }
    Ok(registry)
}

/// Runs a registry command where `place` says.
fn run_registry(
    place: Place,
    command: cli::Command,
    format: cli::Format,
) -> Result<Outcome, Box<dyn Error>> {
    let mut host = if let (cli::Command::Owners { .. }, Some(_)) = (&command, &place.etcd) {
        // Both layouts of the etcd registry.
        Host {
            registry: open_place(&place, false)?,
            channel: None,
            shared: Some(open_place(&place, true)?),
        }
    } else if let cli::Command::Owners { .. } = command {
        // Both registries: the data dir's, and the shared one (the default
        // root only when it exists: looking must not create it).
        let per_channel = open(&default_data_dir(place.data_dir)?, false)?;
        let root = place
            .shared_dir
            .clone()
            .or_else(|| agentmux_registry::shared_root().filter(|r| r.is_dir()));
        let shared = root.map(|root| open(&root, true)).transpose()?;
        Host {
            registry: per_channel,
            channel: None,
            shared,
        }
    } else if place.shared {
        let registry = open_place(&place, true)?;
        let channel =
            cli::channel_or_default(place.channel, std::env::var("AGENTMUX_CHANNEL").ok());
        Host {
            registry,
            channel: Some(channel),
            shared: None,
        }
    } else {
        Host {
            registry: open_place(&place, false)?,
            channel: None,
            shared: None,
        }
    };
    let mut stdout = std::io::stdout().lock();
    cli::dispatch(command, format, &mut host, &mut stdout).map_err(|e| match e {
        cli::Failure::Registry(e) => Box::new(e) as Box<dyn Error>,
        cli::Failure::Output(e) => Box::new(e),
    })
}

/// Prints each change of the registry where `place` says, flushed line by
/// line, until interrupted or the output is closed.
fn watch(place: Place, now: bool, json: bool) -> Result<Outcome, Box<dyn Error>> {
    use agentmux_registry::watch::{Change, Start};
    use agentmux_registry::Graded;
    let registry = open_place(&place, place.shared)?;
    let start = if now { Start::Now } else { Start::Current };
    let graded = |entry: AgentEntry| registry.graded(entry);
    // `--channel` names the one channel to follow (shared registry).
    let channel = place.shared.then_some(place.channel).flatten();
    let of_channel = |c: &str| {
        channel
            .as_deref()
            .is_none_or(|wanted| agentmux_registry_core::name::same_id(c, wanted))
    };
    end_when_output_closes();
    let mut stdout = std::io::stdout().lock();
    for change in registry.watch(start)? {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let line = match change? {
            Change::Put(entry) if of_channel(&entry.channel) => {
                cli::watched_put(&graded(entry), json, now_ms)
            }
            Change::Removed { agent_id, channel } if of_channel(&channel) => {
                cli::watched_removed(&agent_id, &channel, json)
            }
            Change::Resync(entries) => {
                let entries: Vec<Graded> = entries
                    .into_iter()
                    .filter(|e| of_channel(&e.channel))
                    .map(graded)
                    .collect();
                cli::watched_resync(&entries, json)
            }
            _ => continue,
        };
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
    }
    Ok(Outcome::Done)
}

/// Registers `fields` where `place` says, prints the entry, renews it every
/// `beat` until SIGINT or SIGTERM, then removes it. Taken over by another
/// registration, it fails (the entry is that one's now).
fn register(
    place: Place,
    mut fields: EntryFields,
    beat: Duration,
    json: bool,
) -> Result<Outcome, Box<dyn Error>> {
    let registry = open_place(&place, place.shared)?;
    if place.shared {
        fields.channel =
            cli::channel_or_default(place.channel, std::env::var("AGENTMUX_CHANNEL").ok());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Caught from before the entry is written: a signal sent once its
        // line is out, or while it is being written, removes it.
        let mut signals = Signals::new()?;
        let registration =
            agentmux_registry::Registration::register(registry.as_async(), fields, beat).await?;
        write_out(format!("{}\n", cli::written(registration.entry(), json)).as_bytes())?;
        // The heartbeat notices a takeover at a renewal: checked as often.
        let mut check = tokio::time::interval(beat);
        let signal = loop {
            tokio::select! {
                signal = signals.next() => break signal?,
                _ = check.tick() => {
                    if registration.is_superseded() {
                        return Err(format!(
                            "{:?} was taken over by another registration; this one ended",
                            registration.entry().agent_id
                        )
                        .into());
                    }
                }
            }
        };
        let removed = registration.unregister().await?;
        let line = if removed {
            format!("stopped by {signal}: removed the entry")
        } else {
            format!("stopped by {signal}: the entry was no longer this registration's")
        };
        eprintln!("agentmux-registry: {line}");
        Ok(Outcome::Done)
    })
}

/// SIGINT (Ctrl-C) and, on Unix, SIGTERM, caught from when this is made.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(windows)]
        {
            Ok(Signals {
                ctrl_c: tokio::signal::windows::ctrl_c()?,
            })
        }
    }

    /// Waits for the next signal; says which came.
    async fn next(&mut self) -> std::io::Result<&'static str> {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => Ok("SIGTERM"),
                _ = self.interrupt.recv() => Ok("SIGINT"),
            }
        }
        #[cfg(windows)]
        {
            self.ctrl_c.recv().await;
            Ok("Ctrl-C")
        }
    }
}

/// Ends the process (exit 0, as for `| head`) once nobody reads its
/// output, without waiting for the next line to fail to write: a thread
/// waits for the output to report an error or a hang-up (Linux; elsewhere
/// the next write finds it).
fn end_when_output_closes() {
    #[cfg(target_os = "linux")]
    {
        use rustix::event::{poll, PollFd, PollFlags};
        let _ = std::thread::Builder::new()
            .name("output watch".into())
            .spawn(|| {
                let stdout = std::io::stdout();
                loop {
                    let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
                    match poll(&mut fds, None) {
                        Ok(_) | Err(rustix::io::Errno::INTR) => {}
                        Err(_) => return,
                    }
                    let revents = fds[0].revents();
                    if revents.intersects(PollFlags::ERR | PollFlags::HUP) {
                        std::process::exit(0);
                    }
                    if revents.intersects(PollFlags::NVAL) {
                        return;
                    }
                }
            });
    }
}

/// The registry as the commands' backend.
struct Host {
    registry: Registry,
    /// The channel of a shared `registry`.
    channel: Option<String>,
    /// For `owners`: the shared registry beside the per-channel `registry`.
    shared: Option<Registry>,
}

impl cli::Backend for Host {
    type Error = agentmux_registry::Error;

    fn write(&mut self, fields: EntryFields) -> Result<AgentEntry, Self::Error> {
        self.registry.write(fields)
    }

    fn remove(&mut self, agent_id: &str) -> Result<bool, Self::Error> {
        self.registry.remove(agent_id)
    }

    fn lookup(&mut self, agent_id: &str) -> Result<Option<AgentEntry>, Self::Error> {
        self.registry.lookup(agent_id)
    }

    fn channel(&self) -> Option<&str> {
        self.channel.as_deref()
    }

    fn lookup_all(&mut self, agent_id: &str) -> Result<Vec<AgentEntry>, Self::Error> {
        self.registry.lookup_all(agent_id)
    }

    fn remove_channel(&mut self, agent_id: &str, channel: &str) -> Result<bool, Self::Error> {
        self.registry.remove_channel(agent_id, channel)
    }

    fn owners(&mut self, agent_id: &str) -> Result<Vec<cli::Holding>, Self::Error> {
        use agentmux_registry::liveness::Liveness;
        let mut holdings = Vec::new();
        let registries = std::iter::once(("per-channel", &self.registry))
            .chain(self.shared.iter().map(|r| ("shared", r)));
        for (registry_name, registry) in registries {
            for entry in registry.lookup_all(agent_id)? {
                let liveness = match registry.owner_liveness(&entry) {
                    Liveness::Alive => "alive",
                    Liveness::Dead => "dead",
                    Liveness::Unknown => "unknown",
                };
                holdings.push(cli::Holding {
                    registry: registry_name,
                    liveness,
                    entry,
                });
            }
        }
        Ok(holdings)
    }

    fn list(&mut self) -> Result<Vec<AgentEntry>, Self::Error> {
        self.registry.list()
    }

    fn cleanup(
        &mut self,
        max_age_ms: u64,
        dead_owners: bool,
    ) -> Result<SweepProgress, Self::Error> {
        // Progress on a terminal only: scripts read the one result line.
        let show = std::io::stderr().is_terminal();
        let mut last = SweepProgress::default();
        self.registry
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
            last.add(self.registry.sweep_dead_owners()?);
        }
        Ok(last)
    }

    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn owner_dead(&self, entry: &AgentEntry) -> bool {
        self.registry.owner_liveness(entry) == agentmux_registry::liveness::Liveness::Dead
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
                    health,
                    shared,
                    channel,
                    ..
                }) => Some(cli::Invocation {
                    json,
                    health,
                    shared,
                    channel,
                    command,
                }),
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
            "--shared list",
            "--shared --channel dev-a write a --url u --block b --nonce 3",
            "write a --url u --block b --nonce=3 --shared --channel=c",
            "--shared lookup a",
            "--json --health list",
            "lookup a --health --json",
            "--shared --json --health lookup a",
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
            "write a --url u --block b --nonce -1",
            "write a --url u --block b --nonce x",
            "--shared --shared list",
            "--shared --channel a --channel b list",
            "--shared --channel list",
            "--shared --channel= list",
            "remove a --nonce 3",
            "--health list",
            "lookup a --health",
            "--json --health --health list",
            "--json --health=yes list",
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
        // Nor read both registries at once.
        assert!(matches!(
            host("owners a").map(|i| i.command),
            Some(cli::Command::Owners { .. })
        ));
        assert_eq!(component("owners a"), None);
    }
}
