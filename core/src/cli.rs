//! The command-line conventions shared by the component's command mode
//! (`wasmtime run registry.wasm …`) and the host's `agentmux-registry` binary:
//! argument grammar, usage text, and every line of output, so both print the
//! same thing for the same call.
//!
//! Text output is for people: control characters (and bidirectional-text
//! controls) in stored fields are escaped, so an entry can never forge rows or
//! restyle a terminal, and auth keys are never shown. JSON output is for
//! scripts: entries are printed in their on-disk form, keys in on-disk order.

use std::borrow::Cow;

use serde_json::json;

use crate::entry::{Entry, EntryFields};
use crate::health::{Graded, Health};
use crate::ops::SweepProgress;

/// Default `cleanup` age: 4 hours, the same as agentmux-srv's startup sweep.
pub const DEFAULT_MAX_AGE_MS: u64 = 4 * 60 * 60 * 1000;

/// The channel an agentmux instance runs as when none is given: its
/// `AGENTMUX_CHANNEL` when set and not empty (pass it as `env`), else
/// `stable`.
pub fn channel_or_default(given: Option<String>, env: Option<String>) -> String {
    given
        .or(env.filter(|c| !c.is_empty()))
        .unwrap_or_else(|| "stable".into())
}

/// Usage of the component's command mode.
pub const USAGE: &str = "\
usage: registry.wasm [--json [--health]] [--shared [--channel NAME]] <command>
  write <AGENT_ID> --url URL --block BLOCK_ID [--pid PID] [--auth-key KEY] [--nonce N]
  remove <AGENT_ID>
  lookup <AGENT_ID>
  list
  cleanup [--max-age-ms MS]
The agents directory is the component's preopen, e.g.
  wasmtime run --dir ~/.agentmux/agents::/ registry.wasm list
With --shared, the preopen is the shared root, e.g.
  wasmtime run --dir ~/.agentmux/shared/agents/reactive::/ registry.wasm --shared list";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Print JSON instead of text.
    pub json: bool,
    /// With `json`, print each entry of `lookup` and `list` with its health
    /// (`{"health":…,"entry":…}`); text output always shows it.
    pub health: bool,
    /// Work on a shared registry (the preopen is a shared root).
    pub shared: bool,
    /// The channel `write` and `remove` use in a shared registry (`None`:
    /// see [`channel_or_default`]).
    pub channel: Option<String>,
    /// What to do.
    pub command: Command,
}

/// One registry operation with its arguments: what both command lines parse
/// into (the host's with clap, through the `clap` feature; the component's
/// with [`parse`]) and what [`dispatch`] runs. The doc comments are the
/// host CLI's help texts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::Subcommand))]
pub enum Command {
    /// Create or replace an agent's entry.
    Write {
        /// The agent id.
        agent_id: String,
        /// Loopback URL of the owning instance, e.g. http://127.0.0.1:8123.
        #[cfg_attr(feature = "clap", arg(long, value_name = "URL"))]
        url: String,
        /// The block the agent runs in.
        #[cfg_attr(feature = "clap", arg(long, value_name = "BLOCK_ID"))]
        block: String,
        /// Owning process id; 0 means unknown (such an entry is never judged
        /// dead by `cleanup --dead-owners`).
        #[cfg_attr(feature = "clap", arg(long, default_value_t = 0))]
        pid: u32,
        /// The owning instance's auth key.
        #[cfg_attr(feature = "clap", arg(long, value_name = "KEY", default_value = ""))]
        auth_key: String,
        /// The entry's registration_nonce; 0 (the default) for none, which no
        /// conditional removal ever removes.
        #[cfg_attr(feature = "clap", arg(long, value_name = "N", default_value_t = 0))]
        nonce: u64,
    },
    /// Remove an agent's entry (no entry is not an error); in the shared
    /// registry, its entry in the channel.
    Remove {
        /// The agent id.
        agent_id: String,
    },
    /// Show an agent's entry (in the shared registry, every channel's,
    /// freshest first); exits 1 when there is none.
    Lookup {
        /// The agent id.
        agent_id: String,
    },
    /// List every valid entry.
    List,
    /// Remove stale, malformed and unsafe entries.
    Cleanup {
        /// Entries last written longer ago than this many milliseconds are removed.
        #[cfg_attr(
            feature = "clap",
            arg(long, value_name = "MS", default_value_t = DEFAULT_MAX_AGE_MS)
        )]
        max_age_ms: u64,
        /// Also remove entries whose owning process is no longer running
        /// (the host CLI only: the component cannot see processes).
        #[cfg_attr(feature = "clap", arg(long))]
        dead_owners: bool,
    },
    /// Who holds an agent id: every entry for it in the per-channel registry
    /// and in the shared one, with channel, block, pid, owner liveness and
    /// age (the host CLI only: it reads both registries and sees processes);
    /// exits 1 when there is none.
    Owners {
        /// The agent id.
        agent_id: String,
    },
}

/// Parses the arguments after the program name: the component's grammar,
/// the host CLI's less `--dead-owners` (tested to agree). `Err` says what is
/// wrong.
pub fn parse(args: &[String]) -> Result<Invocation, String> {
    let line = Line::split(args)?;
    let command = match line.positional.first().map(String::as_str) {
        None => return Err("no command given".into()),
        Some("write") => {
            line.only_options(&["--url", "--block", "--pid", "--auth-key", "--nonce"])?;
            Command::Write {
                agent_id: line.one_id("write")?,
                url: line.option("--url").ok_or("write needs --url")?.into(),
                block: line.option("--block").ok_or("write needs --block")?.into(),
                pid: line.number("--pid", "a process id")?.unwrap_or(0),
                auth_key: line.option("--auth-key").unwrap_or_default().into(),
                nonce: line.number("--nonce", "a number")?.unwrap_or(0),
            }
        }
        Some("remove") => {
            line.only_options(&[])?;
            Command::Remove {
                agent_id: line.one_id("remove")?,
            }
        }
        Some("lookup") => {
            line.only_options(&[])?;
            Command::Lookup {
                agent_id: line.one_id("lookup")?,
            }
        }
        Some("list") => {
            line.only_options(&[])?;
            line.no_arguments("list")?;
            Command::List
        }
        Some("cleanup") => {
            line.only_options(&["--max-age-ms"])?;
            line.no_arguments("cleanup")?;
            Command::Cleanup {
                max_age_ms: line
                    .number("--max-age-ms", "a number")?
                    .unwrap_or(DEFAULT_MAX_AGE_MS),
                dead_owners: false,
            }
        }
        Some("owners") => {
            return Err(
                "owners needs the agentmux-registry CLI: it reads both registries and sees \
                 processes"
                    .into(),
            )
        }
        Some(other) => return Err(format!("unknown command {other:?}")),
    };
    if line.channel.is_some() && !line.shared {
        return Err("--channel applies to the shared registry: add --shared".into());
    }
    if line.health && !line.json {
        return Err(HEALTH_NEEDS_JSON.into());
    }
    Ok(Invocation {
        json: line.json,
        health: line.health,
        shared: line.shared,
        channel: line.channel,
        command,
    })
}

/// Why `--health` alone is refused.
pub const HEALTH_NEEDS_JSON: &str =
    "--health adds each entry's health to --json output (text output always shows it): add --json";

/// The options that take a value.
const VALUE_OPTIONS: [&str; 6] = [
    "--url",
    "--block",
    "--pid",
    "--auth-key",
    "--max-age-ms",
    "--nonce",
];

/// A command line split into its flag, its options and its positional words,
/// by the conventions the host CLI's parser (clap) follows: `--name value` or
/// `--name=value`, each option at most once, a value never taken from what
/// looks like an option, and `--` ending the options.
struct Line {
    json: bool,
    health: bool,
    shared: bool,
    channel: Option<String>,
    positional: Vec<String>,
    options: Vec<(String, String)>,
}

impl Line {
    fn split(args: &[String]) -> Result<Line, String> {
        let mut line = Line {
            json: false,
            health: false,
            shared: false,
            channel: None,
            positional: Vec::new(),
            options: Vec::new(),
        };
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name, Some(value)),
                _ => (arg.as_str(), None),
            };
            match name {
                "--" => {
                    line.positional.extend(rest.cloned());
                    break;
                }
                "--json" if inline.is_none() => {
                    if line.json {
                        return Err("--json given twice".into());
                    }
                    line.json = true;
                }
                "--health" if inline.is_none() => {
                    if line.health {
                        return Err("--health given twice".into());
                    }
                    line.health = true;
                }
                "--shared" if inline.is_none() => {
                    if line.shared {
                        return Err("--shared given twice".into());
                    }
                    line.shared = true;
                }
                "--channel" => {
                    let value = match inline {
                        Some(value) => value,
                        None => rest
                            .next()
                            .map(String::as_str)
                            .filter(|v| !looks_like_an_option(v))
                            .ok_or("--channel needs a value")?,
                    };
                    if value.is_empty() {
                        return Err("--channel needs a name".into());
                    }
                    if line.channel.replace(value.to_owned()).is_some() {
                        return Err("--channel given twice".into());
                    }
                }
                _ if VALUE_OPTIONS.contains(&name) => {
                    let value = match inline {
                        Some(value) => value,
                        None => rest
                            .next()
                            .map(String::as_str)
                            .filter(|v| !looks_like_an_option(v))
                            .ok_or_else(|| format!("{name} needs a value"))?,
                    };
                    if line.options.iter().any(|(n, _)| n == name) {
                        return Err(format!("{name} given twice"));
                    }
                    line.options.push((name.to_owned(), value.to_owned()));
                }
                _ if looks_like_an_option(arg) => return Err(format!("unknown option {arg}")),
                _ => line.positional.push(arg.clone()),
            }
        }
        Ok(line)
    }

    /// The value given for option `name`.
    fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Option `name` as a number, if given; `what` names it in the error.
    fn number<T: std::str::FromStr>(&self, name: &str, what: &str) -> Result<Option<T>, String> {
        self.option(name)
            .map(|v| v.parse().map_err(|_| format!("{name} {v:?} is not {what}")))
            .transpose()
    }

    fn only_options(&self, allowed: &[&str]) -> Result<(), String> {
        match self
            .options
            .iter()
            .find(|(n, _)| !allowed.contains(&n.as_str()))
        {
            Some((name, _)) => Err(format!("{name} does not apply here")),
            None => Ok(()),
        }
    }

    fn one_id(&self, command: &str) -> Result<String, String> {
        match &self.positional[1..] {
            [id] => Ok(id.clone()),
            [] => Err(format!("{command} needs an agent id")),
            _ => Err(format!("{command} takes one agent id")),
        }
    }

    fn no_arguments(&self, command: &str) -> Result<(), String> {
        match self.positional.len() {
            1 => Ok(()),
            _ => Err(format!("{command} takes no arguments")),
        }
    }
}

/// An argument the parser reads as an option (or a mistyped one), never as
/// a value or an id: it starts with `-` and is not just `-`. An id that
/// starts with `-` is given after `--`.
fn looks_like_an_option(arg: &str) -> bool {
    arg.starts_with('-') && arg != "-"
}

/// What [`dispatch`] needs of a registry: the component's own store, or the
/// host's [`Registry`](https://docs.rs/agentmux-registry).
pub trait Backend {
    /// Why an operation failed.
    type Error: std::fmt::Display;
    /// Creates or replaces an entry; returns it as stored.
    fn write(&mut self, fields: EntryFields) -> Result<Entry, Self::Error>;
    /// Removes an entry; true when there was one.
    fn remove(&mut self, agent_id: &str) -> Result<bool, Self::Error>;
    /// The entry of `agent_id`, if there is a valid one.
    fn lookup(&mut self, agent_id: &str) -> Result<Option<Entry>, Self::Error>;
    /// In a shared registry, the channel `write` and `remove` use; `None`
    /// for a per-channel registry.
    fn channel(&self) -> Option<&str>;
    /// Every channel's entry of `agent_id`, freshest first (shared registry).
    fn lookup_all(&mut self, agent_id: &str) -> Result<Vec<Entry>, Self::Error>;
    /// Removes `agent_id`'s entry in `channel` (shared registry).
    fn remove_channel(&mut self, agent_id: &str, channel: &str) -> Result<bool, Self::Error>;
    /// Every entry of `agent_id` in the per-channel and shared registries
    /// (see [`Command::Owners`]).
    fn owners(&mut self, agent_id: &str) -> Result<Vec<Holding>, Self::Error>;
    /// Every valid entry, in any order.
    fn list(&mut self) -> Result<Vec<Entry>, Self::Error>;
    /// Sweeps entries last written more than `max_age_ms` ago (and, with
    /// `dead_owners`, those whose owner is provably dead); the sweep's final
    /// progress, `removed` counting both.
    fn cleanup(&mut self, max_age_ms: u64, dead_owners: bool)
        -> Result<SweepProgress, Self::Error>;
    /// The wall clock in Unix milliseconds, for the ages and health shown.
    fn now_ms(&self) -> u64;
    /// Whether `entry`'s owning process is provably gone, for its
    /// [`Health`]. The default, for a backend that cannot see processes (the
    /// component): never.
    fn owner_dead(&self, _entry: &Entry) -> bool {
        false
    }
}

/// How output is printed: text, or JSON with or without each entry's
/// health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// JSON instead of text.
    pub json: bool,
    /// In JSON, each entry of `lookup` and `list` as
    /// `{"health":…,"entry":…}`.
    pub health: bool,
}

impl Invocation {
    /// How this command line asks for its output.
    pub fn format(&self) -> Format {
        Format {
            json: self.json,
            health: self.health,
        }
    }
}

/// `entries` graded by `backend` at one instant.
fn graded<B: Backend>(backend: &B, entries: Vec<Entry>) -> Vec<Graded> {
    let now = backend.now_ms();
    entries
        .into_iter()
        .map(|entry| {
            let health = Health::grade(&entry, now, backend.owner_dead(&entry));
            Graded { entry, health }
        })
        .collect()
}

/// One entry of an agent id, as `owners` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// Which registry holds it: `per-channel` or `shared`.
    pub registry: &'static str,
    /// Whether its owner runs: `alive`, `dead` or `unknown`.
    pub liveness: &'static str,
    /// The entry.
    pub entry: Entry,
}

impl Holding {
    /// The entry's health at `now_ms`.
    fn health(&self, now_ms: u64) -> Health {
        Health::grade(&self.entry, now_ms, self.liveness == "dead")
    }
}

/// How a command that ran ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It did what was asked.
    Done,
    /// `lookup` found no entry; the text says so (for stderr).
    NotFound(String),
    /// A sweep could not remove every name it should have; the text says how
    /// many and why (for stderr). What it did print on stdout is true.
    Incomplete(String),
}

/// Why [`dispatch`] failed.
#[derive(Debug)]
pub enum Failure<E> {
    /// The registry operation failed.
    Registry(E),
    /// Writing the output failed (for example, its reader went away).
    Output(std::io::Error),
}

impl<E> From<std::io::Error> for Failure<E> {
    fn from(e: std::io::Error) -> Self {
        Failure::Output(e)
    }
}

/// Runs `command` on `backend`, writing its output lines to `out`. The one
/// place each command's behaviour and output are decided, for every command
/// line.
pub fn dispatch<B: Backend>(
    command: Command,
    format: Format,
    backend: &mut B,
    out: &mut dyn std::io::Write,
) -> Result<Outcome, Failure<B::Error>> {
    let json = format.json;
    match command {
        Command::Write {
            agent_id,
            url,
            block,
            pid,
            auth_key,
            nonce,
        } => {
            let fields = EntryFields {
                agent_id,
                local_url: url,
                block_id: block,
                pid,
                auth_key,
                channel: backend.channel().unwrap_or_default().into(),
                registration_nonce: nonce,
                ..EntryFields::default()
            };
            let entry = backend.write(fields).map_err(Failure::Registry)?;
            writeln!(out, "{}", written(&entry, json))?;
        }
        Command::Remove { agent_id } => {
            let removed = match backend.channel().map(str::to_owned) {
                Some(channel) => backend.remove_channel(&agent_id, &channel),
                None => backend.remove(&agent_id),
            }
            .map_err(Failure::Registry)?;
            writeln!(out, "{}", self::removed(&agent_id, removed, json))?;
        }
        Command::Lookup { agent_id } => {
            let now = backend.now_ms();
            let shown = if backend.channel().is_some() {
                let entries = backend.lookup_all(&agent_id).map_err(Failure::Registry)?;
                let entries = graded(backend, entries);
                (!entries.is_empty()).then(|| found_all(&entries, format, now))
            } else {
                let entry = backend.lookup(&agent_id).map_err(Failure::Registry)?;
                let entry = graded(backend, entry.into_iter().collect()).pop();
                entry.map(|entry| found(&entry, format, now))
            };
            match shown {
                Some(shown) => writeln!(out, "{shown}")?,
                None => {
                    return not_found_outcome(&agent_id, json, backend.channel().is_some(), out)
                }
            }
        }
        Command::List => {
            let mut entries = backend.list().map_err(Failure::Registry)?;
            let shared = backend.channel().is_some();
            crate::ops::sort_listing(&mut entries, shared);
            let entries = graded(backend, entries);
            writeln!(
                out,
                "{}",
                listed(&entries, format, shared, backend.now_ms())
            )?;
        }
        Command::Owners { agent_id } => {
            let holdings = backend.owners(&agent_id).map_err(Failure::Registry)?;
            if holdings.is_empty() {
                return not_found_outcome(&agent_id, json, true, out);
            }
            writeln!(out, "{}", owned(&holdings, json, backend.now_ms()))?;
        }
        Command::Cleanup {
            max_age_ms,
            dead_owners,
        } => {
            let progress = backend
                .cleanup(max_age_ms, dead_owners)
                .map_err(Failure::Registry)?;
            let written =
                writeln!(out, "{}", cleaned(progress.removed, json)).and_then(|()| out.flush());
            if progress.failed > 0 {
                // As for a missing entry: the outcome decides the exit status.
                let why = sweep_failures(progress.failed, progress.first_failure.as_deref());
                return Ok(Outcome::Incomplete(terminal_safe(&why).into_owned()));
            }
            written?;
        }
    }
    out.flush()?;
    Ok(Outcome::Done)
}

/// The outcome of a `lookup` or `owners` that found nothing, after printing
/// what JSON output prints for it (`null`, or `[]` for a list).
fn not_found_outcome<E>(
    agent_id: &str,
    json: bool,
    list: bool,
    out: &mut dyn std::io::Write,
) -> Result<Outcome, Failure<E>> {
    let (stdout, why) = not_found(agent_id, json);
    // The outcome decides the exit status, whether or not the output could
    // be written.
    if let Some(stdout) = stdout {
        let stdout = if list { "[]" } else { stdout };
        let _ = writeln!(out, "{stdout}").and_then(|()| out.flush());
    }
    Ok(Outcome::NotFound(why))
}

/// Characters that change how text is laid out or read rather than showing
/// as themselves: control characters (C0, DEL, C1), the line and paragraph
/// separators, and the format characters (bidirectional controls, zero-width
/// characters, byte order mark, tags).
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{600}'..='\u{605}'
                | '\u{61c}'
                | '\u{6dd}'
                | '\u{70f}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        )
}

/// A diagnostic safe to print on a terminal: invisible characters (see
/// [`is_invisible`]) are escaped as `\u{…}`, and nothing else is. For
/// messages whose quoted values are already escaped (the registry's errors
/// quote names and ids with Rust's `{:?}`), so they are not escaped twice.
pub fn terminal_safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_invisible) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_invisible(c) {
            out += &format!("\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` safe to print on a terminal: invisible characters (see
/// [`is_invisible`]) and backslashes are escaped as in a Rust string literal.
pub fn printable(s: &str) -> Cow<'_, str> {
    let needs = |c: char| c == '\\' || is_invisible(c);
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs(c) {
            out.extend(c.escape_debug());
            if c.escape_debug().len() == 1 {
                // escape_debug leaves some format characters as they are.
                out.pop();
                out += &format!("\\u{{{:x}}}", c as u32);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// An entry as JSON, keys in on-disk order. Invisible characters in values
/// are written as `\uXXXX` escapes (JSON only requires it below U+0020), so
/// the output is safe on a terminal and still decodes to the exact values.
fn entry_json(entry: &Entry) -> String {
    let json = String::from_utf8(entry.to_json()).expect("JSON is UTF-8");
    if !json.chars().any(is_invisible) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if is_invisible(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out += &format!("\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A table cell: [`printable`], and quoted when it holds white space or a quote
/// (or is empty), so no value can pass for several columns.
fn cell(s: &str) -> Cow<'_, str> {
    // Any white space (U+3000 and the other wide spaces too) could pass for
    // a column gap.
    if !s.is_empty() && !s.contains(|c: char| c == '"' || c.is_whitespace()) {
        return printable(s);
    }
    Cow::Owned(format!("\"{}\"", printable(s).replace('"', "\\\"")))
}

/// Output of `write`.
pub fn written(entry: &Entry, json: bool) -> String {
    if json {
        entry_json(entry)
    } else {
        format!(
            "registered {} -> {}",
            printable(&entry.agent_id),
            printable(&entry.local_url)
        )
    }
}

/// Output of `remove`.
pub fn removed(agent_id: &str, removed: bool, json: bool) -> String {
    match (json, removed) {
        (true, _) => json!({ "removed": removed }).to_string(),
        (false, true) => format!("removed {}", printable(agent_id)),
        (false, false) => format!("no entry for {}", printable(agent_id)),
    }
}

/// An entry in JSON output: the entry, or with `format.health`
/// `{"health":…,"entry":…}` (the entry's own keys could include `health`).
fn graded_json(graded: &Graded, format: Format) -> String {
    if format.health {
        format!(
            "{{\"health\":\"{}\",\"entry\":{}}}",
            graded.health,
            entry_json(&graded.entry)
        )
    } else {
        entry_json(&graded.entry)
    }
}

/// Output of `lookup` when the agent has an entry.
pub fn found(graded: &Graded, format: Format, now_ms: u64) -> String {
    if format.json {
        return graded_json(graded, format);
    }
    let entry = &graded.entry;
    let mut text = format!(
        "agent-id:   {}\nlocal-url:  {}\nblock-id:   {}\npid:        {}\nupdated-at: {} ({})\nhealth:     {}\nauth-key:   {} (shown with --json)",
        printable(&entry.agent_id),
        printable(&entry.local_url),
        printable(&entry.block_id),
        entry.pid,
        entry.updated_at,
        age(entry.updated_at, now_ms),
        graded.health,
        key_state(entry)
    );
    if !entry.channel.is_empty() {
        text += &format!("\nchannel:    {}", printable(&entry.channel));
    }
    if entry.registration_nonce != 0 {
        text += &format!("\nnonce:      {}", entry.registration_nonce);
    }
    if !entry.extra.is_empty() {
        let keys: Vec<Cow<'_, str>> = entry.extra.iter().map(|(k, _)| printable(k)).collect();
        text += &format!("\nother keys: {} (shown with --json)", keys.join(", "));
    }
    text
}

/// Output of a shared registry's `lookup`: every channel's entry, freshest
/// first (a JSON array with `--json`).
pub fn found_all(entries: &[Graded], format: Format, now_ms: u64) -> String {
    if format.json {
        return json_array(entries, format);
    }
    let blocks: Vec<String> = entries.iter().map(|e| found(e, format, now_ms)).collect();
    blocks.join("\n\n")
}

/// Entries as a JSON array.
fn json_array(entries: &[Graded], format: Format) -> String {
    let items: Vec<String> = entries.iter().map(|e| graded_json(e, format)).collect();
    format!("[{}]", items.join(","))
}

/// Output of `owners`.
pub fn owned(holdings: &[Holding], json: bool, now_ms: u64) -> String {
    if json {
        let items: Vec<String> = holdings
            .iter()
            .map(|h| {
                format!(
                    "{{\"registry\":\"{}\",\"liveness\":\"{}\",\"health\":\"{}\",\"age_ms\":{},\"entry\":{}}}",
                    h.registry,
                    h.liveness,
                    h.health(now_ms),
                    now_ms.saturating_sub(h.entry.updated_at),
                    entry_json(&h.entry)
                )
            })
            .collect();
        return format!("[{}]", items.join(","));
    }
    let rows: Vec<[Cow<'_, str>; 9]> = holdings
        .iter()
        .map(|h| {
            [
                Cow::Borrowed(h.registry),
                cell(if h.entry.channel.is_empty() {
                    "-"
                } else {
                    &h.entry.channel
                }),
                cell(&h.entry.agent_id),
                cell(&h.entry.block_id),
                Cow::Owned(h.entry.pid.to_string()),
                Cow::Borrowed(h.liveness),
                Cow::Owned(age(h.entry.updated_at, now_ms)),
                Cow::Borrowed(h.health(now_ms).as_str()),
                cell(&h.entry.local_url),
            ]
        })
        .collect();
    table(
        &[
            "REGISTRY", "CHANNEL", "AGENT", "BLOCK", "PID", "OWNER", "UPDATED", "HEALTH", "URL",
        ],
        &rows,
    )
}

/// Columns padded to their widest cell, the last one unpadded.
fn table<const N: usize>(titles: &[&str; N], rows: &[[Cow<'_, str>; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
                .max(titles[c].len())
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (c, cell) in cells.iter().enumerate() {
            if c + 1 == N {
                text += cell;
            } else {
                text += &format!("{cell:w$}  ", w = widths[c]);
            }
        }
        text
    };
    let mut out = line(titles.to_vec());
    for row in rows {
        out.push('\n');
        out += &line(row.iter().map(|c| c.as_ref()).collect());
    }
    out
}

/// Output of `lookup` when there is no entry: stdout (JSON only) and stderr.
pub fn not_found(agent_id: &str, json: bool) -> (Option<&'static str>, String) {
    (
        json.then_some("null"),
        format!("no entry for agent \"{}\"", printable(agent_id)),
    )
}

/// Output of `list` (with a CHANNEL column for a shared registry).
pub fn listed(entries: &[Graded], format: Format, shared: bool, now_ms: u64) -> String {
    if format.json {
        return json_array(entries, format);
    }
    if entries.is_empty() {
        return "no agents registered".into();
    }
    if shared {
        let rows: Vec<[Cow<'_, str>; 8]> = entries
            .iter()
            .map(|Graded { entry: e, health }| {
                [
                    cell(&e.agent_id),
                    cell(&e.channel),
                    cell(&e.local_url),
                    cell(&e.block_id),
                    Cow::Owned(e.pid.to_string()),
                    Cow::Owned(age(e.updated_at, now_ms)),
                    Cow::Borrowed(health.as_str()),
                    Cow::Borrowed(key_state(e)),
                ]
            })
            .collect();
        return table(
            &[
                "AGENT", "CHANNEL", "URL", "BLOCK", "PID", "UPDATED", "HEALTH", "KEY",
            ],
            &rows,
        );
    }
    let rows: Vec<[Cow<'_, str>; 4]> = entries
        .iter()
        .map(|Graded { entry: e, .. }| {
            [
                cell(&e.agent_id),
                cell(&e.local_url),
                cell(&e.block_id),
                Cow::Owned(age(e.updated_at, now_ms)),
            ]
        })
        .collect();
    let width = |column: usize, title: &str| {
        rows.iter()
            .map(|r| r[column].chars().count())
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let (id_w, url_w, block_w) = (width(0, "AGENT"), width(1, "URL"), width(2, "BLOCK"));
    let age_w = width(3, "UPDATED");
    let mut out = format!(
        "{:id_w$}  {:url_w$}  {:block_w$}  {:>10}  {:age_w$}  HEALTH   KEY",
        "AGENT", "URL", "BLOCK", "PID", "UPDATED"
    );
    for (g, [id, url, block, updated]) in entries.iter().zip(&rows) {
        out += &format!(
            "\n{id:id_w$}  {url:url_w$}  {block:block_w$}  {:>10}  {updated:age_w$}  {:7}  {}",
            g.entry.pid,
            g.health.as_str(),
            key_state(&g.entry)
        );
    }
    out
}

/// A `watch` line: an entry put (created or changed), with its health.
pub fn watched_put(graded: &Graded, json: bool, now_ms: u64) -> String {
    let entry = &graded.entry;
    if json {
        return format!(
            "{{\"event\":\"put\",\"health\":\"{}\",\"entry\":{}}}",
            graded.health,
            entry_json(entry)
        );
    }
    format!(
        "put {}{} -> {} block {} pid {} ({}, {})",
        cell(&entry.agent_id),
        channel_suffix(&entry.channel),
        cell(&entry.local_url),
        cell(&entry.block_id),
        entry.pid,
        graded.health,
        age(entry.updated_at, now_ms)
    )
}

/// A `watch` line: an id's (and channel's) entry removed.
pub fn watched_removed(agent_id: &str, channel: &str, json: bool) -> String {
    if json {
        return json!({ "event": "removed", "agent_id": agent_id, "channel": channel }).to_string();
    }
    format!("removed {}{}", cell(agent_id), channel_suffix(channel))
}

/// ` channel NAME` for a `watch` line, nothing in a per-channel registry.
fn channel_suffix(channel: &str) -> String {
    if channel.is_empty() {
        String::new()
    } else {
        format!(" channel {}", cell(channel))
    }
}

/// A `watch` line: notifications were lost, and `entries` is the full
/// current set.
pub fn watched_resync(entries: &[Graded], json: bool) -> String {
    if json {
        let items: Vec<String> = entries
            .iter()
            .map(|g| graded_json(g, Format { json, health: true }))
            .collect();
        return format!("{{\"event\":\"resync\",\"entries\":[{}]}}", items.join(","));
    }
    let ids: Vec<Cow<'_, str>> = entries.iter().map(|g| cell(&g.entry.agent_id)).collect();
    match ids.is_empty() {
        true => "resync: no entries".into(),
        false => format!("resync: {} entries: {}", ids.len(), ids.join(" ")),
    }
}

/// Output of `cleanup`.
pub fn cleaned(removed: u64, json: bool) -> String {
    if json {
        json!({ "removed": removed }).to_string()
    } else {
        format!("removed {removed} stale or invalid entries")
    }
}

/// What a sweep could not do: `failed` names it could not remove, and why the
/// first failed. They stay for the next sweep.
pub fn sweep_failures(failed: u64, first_failure: Option<&str>) -> String {
    let why = first_failure
        .map(|why| format!("; the first: {why}"))
        .unwrap_or_default();
    format!("could not remove {failed} name(s) that should have gone, left for the next sweep{why}")
}

/// `error` and each of its causes, joined by ": " (an error's own text does
/// not repeat its cause's).
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text += &format!(": {e}");
        cause = e.source();
    }
    text
}

/// "5s ago", "3m ago", "2h ago", "4d ago".
fn age(updated_at: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(updated_at) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// The auth key is a credential: text output says only whether there is one.
fn key_state(entry: &Entry) -> &'static str {
    if entry.auth_key.is_empty() {
        "none"
    } else {
        "set"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: Format = Format {
        json: false,
        health: false,
    };
    const JSON: Format = Format {
        json: true,
        health: false,
    };

    fn unknown(entry: &Entry) -> Graded {
        Graded {
            entry: entry.clone(),
            health: Health::Unknown,
        }
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(
            parse(&args(
                "--json write a1 --url u --block b --pid 7 --auth-key k"
            ))
            .unwrap(),
            Invocation {
                json: true,
                health: false,
                shared: false,
                channel: None,
                command: Command::Write {
                    agent_id: "a1".into(),
                    url: "u".into(),
                    block: "b".into(),
                    pid: 7,
                    auth_key: "k".into(),
                    nonce: 0,
                }
            }
        );
        let shared = parse(&args(
            "--shared --channel dev-a write a1 --url u --block b --nonce 9",
        ))
        .unwrap();
        assert!(shared.shared);
        assert_eq!(shared.channel.as_deref(), Some("dev-a"));
        assert!(matches!(shared.command, Command::Write { nonce: 9, .. }));
        assert_eq!(channel_or_default(None, None), "stable");
        assert_eq!(channel_or_default(None, Some(String::new())), "stable");
        assert_eq!(channel_or_default(None, Some("dev-b".into())), "dev-b");
        assert_eq!(
            channel_or_default(Some("x".into()), Some("dev-b".into())),
            "x"
        );
        assert_eq!(
            parse(&args("lookup a1")).unwrap().command,
            Command::Lookup {
                agent_id: "a1".into()
            }
        );
        assert!(parse(&args("remove a1 --json")).unwrap().json);
        assert_eq!(parse(&args("list")).unwrap().command, Command::List);
        assert_eq!(
            parse(&args("cleanup")).unwrap().command,
            Command::Cleanup {
                max_age_ms: DEFAULT_MAX_AGE_MS,
                dead_owners: false
            }
        );
        assert_eq!(
            parse(&args("cleanup --max-age-ms 5")).unwrap().command,
            Command::Cleanup {
                max_age_ms: 5,
                dead_owners: false
            }
        );
    }

    #[test]
    fn refuses_bad_command_lines_with_a_reason() {
        for (line, why) in [
            ("", "no command"),
            ("frobnicate", "unknown command"),
            ("write a1 --block b", "needs --url"),
            ("write a1 --url u --block b --pid x", "not a process id"),
            ("lookup", "needs an agent id"),
            ("lookup a b", "one agent id"),
            ("list extra", "takes no arguments"),
            ("lookup a1 --url u", "does not apply"),
            ("list --verbose", "unknown option"),
            ("write a1 --url", "needs a value"),
        ] {
            let err = parse(&args(line)).unwrap_err();
            assert!(err.contains(why), "{line:?}: {err}");
        }
    }

    #[test]
    fn write_without_pid_records_an_unknown_owner() {
        assert!(matches!(
            parse(&args("write a --url u --block b")).unwrap().command,
            Command::Write { pid: 0, .. }
        ));
    }

    fn entry_with(agent_id: &str, block_id: &str) -> Entry {
        let mut entry = Entry::parse(br#"{"agent_id":"a","local_url":"u","block_id":"b","pid":1,"updated_at":0,"auth_key":"k","pid_started":5}"#).unwrap();
        entry.agent_id = agent_id.into();
        entry.block_id = block_id.into();
        entry
    }

    #[test]
    fn text_output_escapes_control_characters() {
        let forged = entry_with(
            "a",
            "b\nevil  http://x  c  1  0s ago  set\u{1b}[31m\u{202e}",
        );
        for out in [
            listed(&[unknown(&forged)], TEXT, false, 0),
            found(&unknown(&forged), TEXT, 0),
        ] {
            assert!(
                !out.contains('\u{1b}') && !out.contains('\u{202e}'),
                "{out:?}"
            );
            assert!(
                out.contains("\\u{1b}") && out.contains("\\u{202e}"),
                "{out:?}"
            );
        }
        assert_eq!(
            listed(&[unknown(&forged)], TEXT, false, 0).lines().count(),
            2,
            "one row per entry"
        );
        assert_eq!(printable("plain-id_1"), "plain-id_1");
        assert_eq!(printable("a\\b\tc"), "a\\\\b\\tc");
        let (_, err) = not_found("x\ny", false);
        assert!(!err.contains('\n'), "{err:?}");
    }

    #[test]
    fn no_stored_value_can_fake_lines_or_columns() {
        for sneaky in [
            "u\u{2028}x",
            "a\u{61c}b",
            "zero\u{200b}width",
            "bom\u{feff}",
            "c1\u{9b}2J",
            "del\u{7f}",
        ] {
            let e = entry_with("a", sneaky);
            let out = listed(&[unknown(&e)], TEXT, false, 0);
            assert!(
                out.lines().all(|l| !l.chars().any(is_invisible)),
                "{sneaky:?}: {out:?}"
            );
            assert_eq!(out.lines().count(), 2, "{sneaky:?}: {out:?}");
            let json = found(&unknown(&e), JSON, 0);
            assert!(!json.chars().any(is_invisible), "{json:?}");
            let back: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(back["block_id"], sneaky, "JSON keeps the exact value");
        }
        // An id with spaces cannot pose as an id, a URL and a block.
        let e = entry_with("x  http://attacker:1  blk", "b");
        let out = listed(&[unknown(&e)], TEXT, false, 0);
        assert!(out.contains("\"x  http://attacker:1  blk\""), "{out}");
        // Nor with wide spaces.
        let wide = "x\u{3000}\u{3000}http://attacker:1\u{3000}blk";
        let out = listed(&[unknown(&entry_with(wide, "b"))], TEXT, false, 0);
        assert!(out.contains(&format!("\"{wide}\"")), "{out}");
        let long_ago = entry_with("a", "b");
        let out = listed(&[unknown(&long_ago)], TEXT, false, u64::MAX / 2);
        let header_key = out.lines().next().unwrap().find("KEY").unwrap();
        assert_eq!(
            out.lines().nth(1).unwrap().find("set"),
            Some(header_key),
            "{out}"
        );
    }

    #[test]
    fn json_output_keeps_the_on_disk_key_order() {
        let entry = entry_with("a", "b");
        let disk = String::from_utf8(entry.to_json()).unwrap();
        assert_eq!(found(&unknown(&entry), JSON, 0), disk);
        assert_eq!(
            listed(&[unknown(&entry)], JSON, false, 0),
            format!("[{disk}]")
        );
        assert_eq!(listed(&[], JSON, false, 0), "[]");
        assert!(disk.starts_with(r#"{"agent_id":"a","local_url":"u","block_id":"b","pid":1,"updated_at":0,"auth_key":"k""#));
    }

    #[test]
    fn text_output_never_shows_the_key() {
        let entry = Entry::parse(br#"{"agent_id":"a","local_url":"u","block_id":"b","pid":1,"updated_at":0,"auth_key":"secret"}"#).unwrap();
        assert!(!found(&unknown(&entry), TEXT, 0).contains("secret"));
        assert!(!listed(&[unknown(&entry)], TEXT, false, 0).contains("secret"));
        assert!(
            found(&unknown(&entry), JSON, 0).contains("secret"),
            "JSON is for scripts that forward"
        );
    }
}
