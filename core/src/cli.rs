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

use crate::entry::Entry;

/// Default `cleanup` age: 4 hours, the same as agentmux-srv's startup sweep.
pub const DEFAULT_MAX_AGE_MS: u64 = 4 * 60 * 60 * 1000;

/// Entries per listing batch when a CLI lists the whole registry.
pub const LIST_BATCH: u32 = 256;

/// Usage of the component's command mode.
pub const USAGE: &str = "\
usage: registry.wasm [--json] <command>
  write <AGENT_ID> --url URL --block BLOCK_ID [--pid PID] [--auth-key KEY]
  remove <AGENT_ID>
  lookup <AGENT_ID>
  list
  cleanup [--max-age-ms MS]
The agents directory is the component's preopen, e.g.
  wasmtime run --dir ~/.agentmux/agents::/ registry.wasm list";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Print JSON instead of text.
    pub json: bool,
    /// What to do.
    pub command: Command,
}

/// One registry operation with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create or replace an entry.
    Write {
        /// The agent id.
        agent_id: String,
        /// The owner's loopback URL.
        url: String,
        /// The block id.
        block: String,
        /// The owning process; 0 (unknown) when not given.
        pid: u32,
        /// The owner's auth key.
        auth_key: String,
    },
    /// Remove an entry.
    Remove {
        /// The agent id.
        agent_id: String,
    },
    /// Show an entry.
    Lookup {
        /// The agent id.
        agent_id: String,
    },
    /// Show every entry.
    List,
    /// Sweep stale entries.
    Cleanup {
        /// Entries older than this are removed.
        max_age_ms: u64,
    },
}

/// Parses the arguments after the program name. `Err` says what is wrong.
pub fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut json = false;
    let mut positional = Vec::new();
    let mut options: Vec<(String, String)> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--url" | "--block" | "--pid" | "--auth-key" | "--max-age-ms" => {
                let value = rest.next().ok_or_else(|| format!("{arg} needs a value"))?;
                options.push((arg.clone(), value.clone()));
            }
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            _ => positional.push(arg.clone()),
        }
    }
    let option = |name: &str| {
        options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let allowed: &[&str] = match positional.first().map(String::as_str) {
        Some("write") => &["--url", "--block", "--pid", "--auth-key"],
        Some("cleanup") => &["--max-age-ms"],
        _ => &[],
    };
    if let Some((name, _)) = options.iter().find(|(n, _)| !allowed.contains(&n.as_str())) {
        return Err(format!("{name} does not apply here"));
    }
    let one_id = |command: &str| match &positional[1..] {
        [id] => Ok(id.clone()),
        [] => Err(format!("{command} needs an agent id")),
        _ => Err(format!("{command} takes one agent id")),
    };
    let command = match positional.first().map(String::as_str) {
        None => return Err("no command given".into()),
        Some("write") => Command::Write {
            agent_id: one_id("write")?,
            url: option("--url").ok_or("write needs --url")?,
            block: option("--block").ok_or("write needs --block")?,
            pid: option("--pid")
                .map(|p| {
                    p.parse()
                        .map_err(|_| format!("--pid {p:?} is not a process id"))
                })
                .transpose()?
                .unwrap_or(0),
            auth_key: option("--auth-key").unwrap_or_default(),
        },
        Some("remove") => Command::Remove {
            agent_id: one_id("remove")?,
        },
        Some("lookup") => Command::Lookup {
            agent_id: one_id("lookup")?,
        },
        Some("list") if positional.len() == 1 => Command::List,
        Some("cleanup") if positional.len() == 1 => Command::Cleanup {
            max_age_ms: option("--max-age-ms")
                .map(|m| {
                    m.parse()
                        .map_err(|_| format!("--max-age-ms {m:?} is not a number"))
                })
                .transpose()?
                .unwrap_or(DEFAULT_MAX_AGE_MS),
        },
        Some(command @ ("list" | "cleanup")) => {
            return Err(format!("{command} takes no arguments"))
        }
        Some(other) => return Err(format!("unknown command {other:?}")),
    };
    Ok(Invocation { json, command })
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

/// Output of `lookup` when the agent has an entry.
pub fn found(entry: &Entry, json: bool, now_ms: u64) -> String {
    if json {
        return entry_json(entry);
    }
    format!(
        "agent-id:   {}\nlocal-url:  {}\nblock-id:   {}\npid:        {}\nupdated-at: {} ({})\nauth-key:   {} (shown with --json)",
        printable(&entry.agent_id),
        printable(&entry.local_url),
        printable(&entry.block_id),
        entry.pid,
        entry.updated_at,
        age(entry.updated_at, now_ms),
        key_state(entry)
    )
}

/// Output of `lookup` when there is no entry: stdout (JSON only) and stderr.
pub fn not_found(agent_id: &str, json: bool) -> (Option<&'static str>, String) {
    (
        json.then_some("null"),
        format!("no entry for agent \"{}\"", printable(agent_id)),
    )
}

/// Output of `list`.
pub fn listed(entries: &[Entry], json: bool, now_ms: u64) -> String {
    if json {
        let items: Vec<String> = entries.iter().map(entry_json).collect();
        return format!("[{}]", items.join(","));
    }
    if entries.is_empty() {
        return "no agents registered".into();
    }
    let rows: Vec<[Cow<'_, str>; 4]> = entries
        .iter()
        .map(|e| {
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
        "{:id_w$}  {:url_w$}  {:block_w$}  {:>10}  {:age_w$}  KEY",
        "AGENT", "URL", "BLOCK", "PID", "UPDATED"
    );
    for (e, [id, url, block, updated]) in entries.iter().zip(&rows) {
        out += &format!(
            "\n{id:id_w$}  {url:url_w$}  {block:block_w$}  {:>10}  {updated:age_w$}  {}",
            e.pid,
            key_state(e)
        );
    }
    out
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
                command: Command::Write {
                    agent_id: "a1".into(),
                    url: "u".into(),
                    block: "b".into(),
                    pid: 7,
                    auth_key: "k".into()
                }
            }
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
                max_age_ms: DEFAULT_MAX_AGE_MS
            }
        );
        assert_eq!(
            parse(&args("cleanup --max-age-ms 5")).unwrap().command,
            Command::Cleanup { max_age_ms: 5 }
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
            listed(std::slice::from_ref(&forged), false, 0),
            found(&forged, false, 0),
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
            listed(&[forged], false, 0).lines().count(),
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
            let out = listed(std::slice::from_ref(&e), false, 0);
            assert!(
                out.lines().all(|l| !l.chars().any(is_invisible)),
                "{sneaky:?}: {out:?}"
            );
            assert_eq!(out.lines().count(), 2, "{sneaky:?}: {out:?}");
            let json = found(&e, true, 0);
            assert!(!json.chars().any(is_invisible), "{json:?}");
            let back: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(back["block_id"], sneaky, "JSON keeps the exact value");
        }
        // An id with spaces cannot pose as an id, a URL and a block.
        let e = entry_with("x  http://attacker:1  blk", "b");
        let out = listed(std::slice::from_ref(&e), false, 0);
        assert!(out.contains("\"x  http://attacker:1  blk\""), "{out}");
        // Nor with wide spaces.
        let wide = "x\u{3000}\u{3000}http://attacker:1\u{3000}blk";
        let out = listed(&[entry_with(wide, "b")], false, 0);
        assert!(out.contains(&format!("\"{wide}\"")), "{out}");
        let long_ago = entry_with("a", "b");
        let out = listed(std::slice::from_ref(&long_ago), false, u64::MAX / 2);
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
        assert_eq!(found(&entry, true, 0), disk);
        assert_eq!(
            listed(std::slice::from_ref(&entry), true, 0),
            format!("[{disk}]")
        );
        assert_eq!(listed(&[], true, 0), "[]");
        assert!(disk.starts_with(r#"{"agent_id":"a","local_url":"u","block_id":"b","pid":1,"updated_at":0,"auth_key":"k""#));
    }

    #[test]
    fn text_output_never_shows_the_key() {
        let entry = Entry::parse(br#"{"agent_id":"a","local_url":"u","block_id":"b","pid":1,"updated_at":0,"auth_key":"secret"}"#).unwrap();
        assert!(!found(&entry, false, 0).contains("secret"));
        assert!(!listed(std::slice::from_ref(&entry), false, 0).contains("secret"));
        assert!(
            found(&entry, true, 0).contains("secret"),
            "JSON is for scripts that forward"
        );
    }
}
