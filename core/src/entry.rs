//! The on-disk entry format, the registry's field limits, ownership, and its
//! error cases.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::name::{self, IdError};

/// Largest entry file that is read; a larger one is malformed. Far above the
/// largest valid entry (about 4 KiB of fields, 6× that fully escaped).
pub const MAX_ENTRY_FILE_BYTES: u64 = 64 * 1024;
/// Longest accepted `local_url`, in bytes.
pub const MAX_LOCAL_URL_BYTES: usize = 2048;
/// Longest accepted `block_id`, in bytes.
pub const MAX_BLOCK_ID_BYTES: usize = 256;
/// Longest accepted `auth_key`, in bytes.
pub const MAX_AUTH_KEY_BYTES: usize = 1024;
/// Longest accepted key of an [`Entry::extra`] key, in bytes.
pub const MAX_EXTRA_KEY_BYTES: usize = 256;

/// The keys the registry interprets, in the order it writes them. Every other
/// key of an entry file is kept, in order, in [`Entry::extra`].
pub const KNOWN_KEYS: [&str; 11] = [
    "agent_id",
    "local_url",
    "block_id",
    "pid",
    "updated_at",
    "auth_key",
    "channel",
    "registration_nonce",
    "pid_started",
    "pid_ns",
    "beat_interval_ms",
];

/// One entry file. Field order and names are the on-disk format:
/// serialising this with `serde_json` gives the bytes agentmux-srv writes
/// (`channel` and `registration_nonce` always, empty and 0 when unset, as it
/// writes them; `pid_started`, `pid_ns` and `beat_interval_ms` only when
/// known), then every key
/// of [`Entry::extra`], in order, each value exactly as it was read or given.
/// A missing `auth_key` or `channel` reads as empty, a missing
/// `registration_nonce` as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The agent's id as the caller spelled it. Ids are case-insensitive: an
    /// entry is found by any spelling that lowercases alike.
    pub agent_id: String,
    /// Loopback HTTP base URL of the owning instance.
    pub local_url: String,
    /// The block the agent runs in.
    pub block_id: String,
    /// OS process id of the owning process; 0 when unknown.
    pub pid: u32,
    /// Unix milliseconds of the last write.
    pub updated_at: u64,
    /// The owning instance's per-launch auth key; empty in entries written
    /// before keys existed.
    pub auth_key: String,
    /// The agentmux channel that wrote the entry: empty in the per-channel
    /// registry, the writing channel in the shared one.
    pub channel: String,
    /// The registration that wrote the entry: unique per registration, at
    /// least 1; 0 for a plain write, which no conditional removal removes.
    pub registration_nonce: u64,
    /// When the owning process started, in the OS's own units.
    pub pid_started: Option<u64>,
    /// The pid namespace `pid` belongs to (Linux), stored as `pid_ns`.
    pub pid_namespace: Option<u64>,
    /// How often the owner renews the entry, in milliseconds, stored as
    /// `beat_interval_ms` (the host's `Registration` records its heartbeat):
    /// what lets any reader count missed beats (see [`crate::Health`]).
    /// `None` when the writer does not renew on a schedule.
    pub beat_interval_ms: Option<u64>,
    /// Every other key, in the order stored, each with its value as the JSON
    /// text it was stored as (numbers of any size or precision, escapes and
    /// nesting kept exactly): keys this registry does not interpret (for
    /// example agentmux-srv's `jekt_public_key`, `uid` and `uid_public_key`,
    /// or the `registration` token of registry 0.2), kept for the callers
    /// that do. A key stored twice is kept twice.
    pub extra: Vec<(String, String)>,
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("agent_id", &self.agent_id)?;
        map.serialize_entry("local_url", &self.local_url)?;
        map.serialize_entry("block_id", &self.block_id)?;
        map.serialize_entry("pid", &self.pid)?;
        map.serialize_entry("updated_at", &self.updated_at)?;
        map.serialize_entry("auth_key", &self.auth_key)?;
        map.serialize_entry("channel", &self.channel)?;
        map.serialize_entry("registration_nonce", &self.registration_nonce)?;
        if let Some(started) = self.pid_started {
            map.serialize_entry("pid_started", &started)?;
        }
        if let Some(namespace) = self.pid_namespace {
            map.serialize_entry("pid_ns", &namespace)?;
        }
        if let Some(interval) = self.beat_interval_ms {
            map.serialize_entry("beat_interval_ms", &interval)?;
        }
        for (key, text) in &self.extra {
            // Checked to be one JSON value when it was read or given.
            let raw = RawValue::from_string(text.clone()).map_err(serde::ser::Error::custom)?;
            map.serialize_entry(key, &raw)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Entry, D::Error> {
        d.deserialize_map(EntryVisitor)
    }
}

/// Reads an entry's object: the known keys typed (each at most once, the
/// first five required), every other key's value kept as raw JSON text. Raw
/// values need serde_json's own deserializer, as [`Entry::parse`] uses.
struct EntryVisitor;

/// Sets a known key's value, once.
fn once<T, E: serde::de::Error>(
    slot: &mut Option<T>,
    value: T,
    key: &'static str,
) -> Result<(), E> {
    match slot.replace(value) {
        Some(_) => Err(E::duplicate_field(key)),
        None => Ok(()),
    }
}

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = Entry;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an agent entry (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
        use serde::de::Error as _;
        let (mut agent_id, mut local_url, mut block_id) = (None, None, None);
        let (mut pid, mut updated_at, mut auth_key) = (None, None, None);
        let (mut channel, mut nonce, mut started, mut namespace) = (None, None, None, None);
        let mut interval = None;
        let mut extra = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "agent_id" => once(&mut agent_id, map.next_value()?, "agent_id")?,
                "local_url" => once(&mut local_url, map.next_value()?, "local_url")?,
                "block_id" => once(&mut block_id, map.next_value()?, "block_id")?,
                "pid" => once(&mut pid, map.next_value()?, "pid")?,
                "updated_at" => once(&mut updated_at, map.next_value()?, "updated_at")?,
                "auth_key" => once(&mut auth_key, map.next_value()?, "auth_key")?,
                "channel" => once(&mut channel, map.next_value()?, "channel")?,
                "registration_nonce" => once(&mut nonce, map.next_value()?, "registration_nonce")?,
                "pid_started" => once(&mut started, map.next_value()?, "pid_started")?,
                "pid_ns" => once(&mut namespace, map.next_value()?, "pid_ns")?,
                // Advisory: a value that is not a whole number of
                // milliseconds (another writer's `20000.0`, `"20000"`) reads
                // as none, never making the entry unreadable.
                "beat_interval_ms" => {
                    let value: serde_json::Value = map.next_value()?;
                    once(&mut interval, value.as_u64(), "beat_interval_ms")?
                }
                _ => {
                    let raw: Box<RawValue> = map.next_value()?;
                    extra.push((key, raw.get().to_owned()));
                }
            }
        }
        Ok(Entry {
            agent_id: agent_id.ok_or_else(|| A::Error::missing_field("agent_id"))?,
            local_url: local_url.ok_or_else(|| A::Error::missing_field("local_url"))?,
            block_id: block_id.ok_or_else(|| A::Error::missing_field("block_id"))?,
            pid: pid.ok_or_else(|| A::Error::missing_field("pid"))?,
            updated_at: updated_at.ok_or_else(|| A::Error::missing_field("updated_at"))?,
            auth_key: auth_key.unwrap_or_default(),
            channel: channel.unwrap_or_default(),
            registration_nonce: nonce.unwrap_or_default(),
            pid_started: started.flatten(),
            pid_namespace: namespace.flatten(),
            beat_interval_ms: interval.flatten().filter(|&ms| ms > 0),
            extra,
        })
    }
}

/// What a caller asks to store: an [`Entry`] without its time stamp.
///
/// Named fields, so that no two of its strings can be swapped silently:
///
/// ```
/// use agentmux_registry_core::EntryFields;
/// let fields = EntryFields {
///     agent_id: "agent-1".into(),
///     local_url: "http://127.0.0.1:8123".into(),
///     block_id: "block-7".into(),
///     pid: 4242,
///     auth_key: "key".into(),
///     ..EntryFields::default()
/// };
/// assert!(fields.check().is_ok());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFields {
    /// The agent's id.
    pub agent_id: String,
    /// Loopback HTTP base URL of the owning instance.
    pub local_url: String,
    /// The block the agent runs in.
    pub block_id: String,
    /// OS process id of the owning process; 0 when unknown.
    pub pid: u32,
    /// The owning instance's per-launch auth key.
    pub auth_key: String,
    /// See [`Entry::channel`].
    pub channel: String,
    /// See [`Entry::registration_nonce`]; 0 for a plain write.
    pub registration_nonce: u64,
    /// When the owning process started; `None` lets the host fill it in.
    pub pid_started: Option<u64>,
    /// The pid namespace of `pid`; `None` lets the host fill it in.
    pub pid_namespace: Option<u64>,
    /// See [`Entry::beat_interval_ms`]; at least 1 when set.
    pub beat_interval_ms: Option<u64>,
    /// See [`Entry::extra`]: keys no other field names, each with a JSON
    /// value as text.
    pub extra: Vec<(String, String)>,
}

/// One registration, as a conditional removal names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// The stored `pid`.
    pub pid: u32,
    /// The stored `auth_key`.
    pub auth_key: String,
    /// The stored `registration_nonce`; 0 matches nothing.
    pub registration_nonce: u64,
}

impl Owner {
    /// The registration that wrote `entry`.
    pub fn of(entry: &Entry) -> Owner {
        Owner {
            pid: entry.pid,
            auth_key: entry.auth_key.clone(),
            registration_nonce: entry.registration_nonce,
        }
    }
}

impl EntryFields {
    /// The entry these fields make, written at `updated_at`.
    pub fn into_entry(self, updated_at: u64) -> Entry {
        Entry {
            agent_id: self.agent_id,
            local_url: self.local_url,
            block_id: self.block_id,
            pid: self.pid,
            updated_at,
            auth_key: self.auth_key,
            channel: self.channel,
            registration_nonce: self.registration_nonce,
            pid_started: self.pid_started,
            pid_namespace: self.pid_namespace,
            beat_interval_ms: self.beat_interval_ms,
            extra: self.extra,
        }
    }

    /// Checks every limit: the id (and a channel, when set) must name a file,
    /// each other field must be within its length limit, each extra key must
    /// be new and its value JSON, and the whole entry must fit in
    /// [`MAX_ENTRY_FILE_BYTES`].
    pub fn check(&self) -> Result<(), Error> {
        file_name_of(&self.agent_id)?;
        check_channel(&self.channel)?;
        check_lengths(&self.local_url, &self.block_id, &self.auth_key)?;
        check_extra(&self.extra)?;
        if let Some(ms) = self.beat_interval_ms {
            if !(1..=crate::health::MAX_BEAT_INTERVAL_MS).contains(&ms) {
                return Err(Error::InvalidField(format!(
                    "beat_interval_ms: {ms} is not from 1 to {} (a day)",
                    crate::health::MAX_BEAT_INTERVAL_MS
                )));
            }
        }
        let size = self.clone().into_entry(u64::MAX).to_json().len();
        if size as u64 > MAX_ENTRY_FILE_BYTES {
            return Err(Error::InvalidField(format!(
                "extra: the entry would be {size} bytes, over the limit of \
                 {MAX_ENTRY_FILE_BYTES}"
            )));
        }
        Ok(())
    }
}

impl Entry {
    /// Parses an entry file's bytes; `None` when they are not a valid entry:
    /// not the format, or a field over the limits a write enforces (so an
    /// entry no writer could have made never reaches a caller).
    pub fn parse(bytes: &[u8]) -> Option<Entry> {
        if bytes.len() as u64 > MAX_ENTRY_FILE_BYTES {
            return None;
        }
        let entry: Entry = serde_json::from_slice(bytes).ok()?;
        entry.fields_ok().then_some(entry)
    }

    fn fields_ok(&self) -> bool {
        file_name_of(&self.agent_id).is_ok()
            && check_channel(&self.channel).is_ok()
            && check_lengths(&self.local_url, &self.block_id, &self.auth_key).is_ok()
    }

    /// The fields this entry was written from (all but its time stamp): what
    /// a rewrite of the same entry passes.
    pub fn fields(&self) -> EntryFields {
        EntryFields {
            agent_id: self.agent_id.clone(),
            local_url: self.local_url.clone(),
            block_id: self.block_id.clone(),
            pid: self.pid,
            auth_key: self.auth_key.clone(),
            channel: self.channel.clone(),
            registration_nonce: self.registration_nonce,
            pid_started: self.pid_started,
            pid_namespace: self.pid_namespace,
            beat_interval_ms: self.beat_interval_ms,
            extra: self.extra.clone(),
        }
    }

    /// The bytes of this entry's file.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec(self).expect("entry serialises")
    }

    /// Whether this is `agent_id`'s entry (in any spelling) written by the
    /// registration `owner`. Never for a nonce of 0: a plain write is no
    /// registration.
    pub fn is_owned_by(&self, agent_id: &str, owner: &Owner) -> bool {
        self.is_registration(agent_id, owner.registration_nonce)
            && self.pid == owner.pid
            && self.auth_key == owner.auth_key
    }

    /// Whether this is `agent_id`'s entry (in any spelling) written by the
    /// registration with nonce `nonce` (never for 0).
    pub fn is_registration(&self, agent_id: &str, nonce: u64) -> bool {
        nonce != 0 && self.registration_nonce == nonce && self.is_of(agent_id)
    }

    /// Whether this is `agent_id`'s entry, in any spelling.
    pub fn is_of(&self, agent_id: &str) -> bool {
        name::same_id(&self.agent_id, agent_id)
    }

    /// The value of extra key `key`, as JSON text.
    pub fn extra_value(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A failed registry call: the WIT `registry-error` cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The agent id cannot name an entry.
    InvalidAgentId(String),
    /// A field other than the id is unacceptable.
    InvalidField(String),
    /// The id's entry file holds something else; nothing was changed.
    Conflict(String),
    /// The file system refused an operation.
    Io(String),
}

impl Error {
    /// The text of an error of kind `kind` (its WIT case name) with `message`.
    /// The one place the registry's error texts are written.
    pub fn describe(kind: ErrorKind, message: &str) -> String {
        match kind {
            ErrorKind::InvalidAgentId => format!("invalid agent id: {message}"),
            ErrorKind::InvalidField => format!("invalid field: {message}"),
            ErrorKind::Conflict => format!("conflict: {message}"),
            ErrorKind::Io => format!("registry I/O failed: {message}"),
        }
    }

    /// This error's kind and message.
    pub fn parts(&self) -> (ErrorKind, &str) {
        match self {
            Error::InvalidAgentId(m) => (ErrorKind::InvalidAgentId, m),
            Error::InvalidField(m) => (ErrorKind::InvalidField, m),
            Error::Conflict(m) => (ErrorKind::Conflict, m),
            Error::Io(m) => (ErrorKind::Io, m),
        }
    }
}

/// The kinds of [`Error`], without their messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// See [`Error::InvalidAgentId`].
    InvalidAgentId,
    /// See [`Error::InvalidField`].
    InvalidField,
    /// See [`Error::Conflict`].
    Conflict,
    /// See [`Error::Io`].
    Io,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, message) = self.parts();
        f.write_str(&Error::describe(kind, message))
    }
}

impl std::error::Error for Error {}

impl From<IdError> for Error {
    fn from(e: IdError) -> Self {
        Error::InvalidAgentId(e.to_string())
    }
}

/// How the `io` message of a call that found its entry claimed by another
/// call begins: hosts wait and call again (the component waits only
/// briefly, since it has no timer to sleep on).
pub const BUSY_PREFIX: &str = "busy: ";

/// Whether an `io` message says the entry was claimed by another call.
pub fn is_busy(message: &str) -> bool {
    message.starts_with(BUSY_PREFIX)
}

/// The entry file name of `agent_id`, or `invalid-agent-id`.
pub fn file_name_of(agent_id: &str) -> Result<String, Error> {
    Ok(name::entry_file_name(agent_id)?)
}

/// A channel, when set, must name a file, as an id does.
fn check_channel(channel: &str) -> Result<(), Error> {
    if channel.is_empty() {
        return Ok(());
    }
    match name::entry_file_name(channel) {
        Ok(_) => Ok(()),
        Err(IdError::TooLong { bytes }) => Err(Error::InvalidField(format!(
            "channel is too long: its file name would be {bytes} bytes, over the limit of {}",
            name::MAX_FILE_NAME_BYTES
        ))),
        Err(IdError::Empty) => Ok(()),
    }
}

fn check_extra(extra: &[(String, String)]) -> Result<(), Error> {
    for (i, (key, value)) in extra.iter().enumerate() {
        let bad = |why: String| Err(Error::InvalidField(format!("extra key {key:?}: {why}")));
        if key.is_empty() || key.len() > MAX_EXTRA_KEY_BYTES {
            return bad(format!("keys are 1 to {MAX_EXTRA_KEY_BYTES} bytes"));
        }
        if KNOWN_KEYS.contains(&key.as_str()) {
            return bad("the registry sets this key itself (use its field)".into());
        }
        if extra[..i].iter().any(|(k, _)| k == key) {
            return bad("given twice".into());
        }
        // Kept as given: one JSON value, no white space around it.
        match serde_json::from_str::<&RawValue>(value) {
            Ok(raw) if raw.get() == value => {}
            Ok(_) => return bad(format!("the value has white space around it: {value:?}")),
            Err(_) => return bad(format!("the value is not JSON text: {value:?}")),
        }
    }
    Ok(())
}

fn check_lengths(local_url: &str, block_id: &str, auth_key: &str) -> Result<(), Error> {
    for (field, value, limit) in [
        ("local-url", local_url, MAX_LOCAL_URL_BYTES),
        ("block-id", block_id, MAX_BLOCK_ID_BYTES),
        ("auth-key", auth_key, MAX_AUTH_KEY_BYTES),
    ] {
        if value.len() > limit {
            return Err(Error::InvalidField(format!(
                "{field} is {} bytes, over the limit of {limit}",
                value.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            agent_id: "a1".into(),
            local_url: "http://127.0.0.1:9".into(),
            block_id: "b".into(),
            pid: 42,
            updated_at: 1_700_000_000_000,
            auth_key: "k".into(),
            channel: String::new(),
            registration_nonce: 0,
            pid_started: None,
            pid_namespace: None,
            beat_interval_ms: None,
            extra: Vec::new(),
        }
    }

    fn fields() -> EntryFields {
        EntryFields {
            agent_id: "a1".into(),
            ..EntryFields::default()
        }
    }

    /// agentmux-srv's format: its six keys, then `channel` and
    /// `registration_nonce` always (older readers ignore keys they do not
    /// know).
    #[test]
    fn writes_the_byte_format_agentmux_srv_writes() {
        assert_eq!(
            String::from_utf8(sample().to_json()).unwrap(),
            r#"{"agent_id":"a1","local_url":"http://127.0.0.1:9","block_id":"b","pid":42,"updated_at":1700000000000,"auth_key":"k","channel":"","registration_nonce":0}"#
        );
    }

    /// A value this registry does not interpret is kept as the exact text
    /// stored: numbers of any size or precision, escapes, nesting of any
    /// depth, a key stored twice. None of them makes the entry unreadable.
    #[test]
    fn unknown_values_are_kept_exactly_as_stored() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let stored = format!(
            r#"{{"agent_id":"a1","local_url":"u","block_id":"b","pid":1,"updated_at":2,"auth_key":"","channel":"","registration_nonce":0,"uid":123456789012345678901234567890,"f":1.10,"e":"\u00e9","z":-0,"big":1e400,"deep":{deep},"uid":"again"}}"#
        );
        let entry = Entry::parse(stored.as_bytes()).expect("readable");
        assert_eq!(entry.extra_value("f"), Some("1.10"));
        assert_eq!(entry.extra_value("e"), Some(r#""\u00e9""#));
        assert_eq!(entry.extra.len(), 7, "the key stored twice is kept twice");
        assert_eq!(String::from_utf8(entry.to_json()).unwrap(), stored);
        // Given values are stored as given, or refused.
        let fields = EntryFields {
            extra: vec![("uid".into(), "123456789012345678901234567890".into())],
            ..fields()
        };
        assert!(fields.check().is_ok());
        let written = fields.into_entry(5).to_json();
        assert!(String::from_utf8(written)
            .unwrap()
            .ends_with(r#""uid":123456789012345678901234567890}"#));
        let spaced = EntryFields {
            extra: vec![("uid".into(), " 1".into())],
            ..self::fields()
        };
        assert!(matches!(spaced.check(), Err(Error::InvalidField(m)) if m.contains("white space")));
    }

    #[test]
    fn optional_keys_trail_in_a_fixed_order() {
        let with = Entry {
            channel: "dev-a".into(),
            registration_nonce: 9,
            pid_started: Some(123),
            pid_namespace: Some(7),
            beat_interval_ms: Some(20_000),
            extra: vec![
                ("zeta".into(), "[1,{\"b\":2,\"a\":1}]".into()),
                ("alpha".into(), "\"x\"".into()),
            ],
            ..sample()
        };
        let json = String::from_utf8(with.to_json()).unwrap();
        assert!(
            json.ends_with(
                r#","auth_key":"k","channel":"dev-a","registration_nonce":9,"pid_started":123,"pid_ns":7,"beat_interval_ms":20000,"zeta":[1,{"b":2,"a":1}],"alpha":"x"}"#
            ),
            "{json}"
        );
        assert_eq!(Entry::parse(json.as_bytes()), Some(with.clone()));
        assert_eq!(with.fields().into_entry(with.updated_at), with);
    }

    #[test]
    fn a_malformed_beat_interval_reads_as_none_and_keeps_the_entry() {
        for value in ["20000.0", "\"20000\"", "-1", "0", "null", "{}"] {
            let stored = format!(
                r#"{{"agent_id":"a1","local_url":"u","block_id":"b","pid":1,"updated_at":2,"beat_interval_ms":{value}}}"#
            );
            let entry = Entry::parse(stored.as_bytes()).expect(&stored);
            assert_eq!(entry.beat_interval_ms, None, "{value}");
        }
    }

    #[test]
    fn reads_entries_without_auth_key_and_with_extra_keys() {
        let old = br#"{"agent_id":"a1","local_url":"http://127.0.0.1:9","block_id":"b","pid":42,"updated_at":1700000000000}"#;
        assert_eq!(Entry::parse(old).unwrap().auth_key, "");
        let extra = br#"{"agent_id":"a1","local_url":"http://127.0.0.1:9","block_id":"b","pid":42,"updated_at":1700000000000,"auth_key":"k","channel":"","registration_nonce":0,"future":[1]}"#;
        let entry = Entry::parse(extra).unwrap();
        assert_eq!(entry.extra, [("future".to_string(), "[1]".to_string())]);
        assert_eq!(entry.to_json(), extra);
    }

    /// What agentmux-srv writes today (keys in its order, `channel` and
    /// `registration_nonce` always present, identity keys after them) is
    /// read with every key, and written back byte for byte.
    #[test]
    fn reads_and_rewrites_todays_server_entries_byte_for_byte() {
        let shared = br#"{"agent_id":"AgentX","local_url":"http://127.0.0.1:9","block_id":"b","pid":42,"updated_at":1700000000000,"auth_key":"k","channel":"dev-a","registration_nonce":7,"jekt_public_key":"bWFkZSB1cA==","uid":"u-1","uid_public_key":"cHVi"}"#;
        let entry = Entry::parse(shared).unwrap();
        assert_eq!(
            (entry.channel.as_str(), entry.registration_nonce),
            ("dev-a", 7)
        );
        assert_eq!(entry.extra_value("uid"), Some("\"u-1\""));
        assert_eq!(entry.to_json(), shared);
        // Per-channel: an empty channel and a 0 nonce, written back as such.
        let plain = br#"{"agent_id":"a1","local_url":"http://127.0.0.1:9","block_id":"b","pid":42,"updated_at":1700000000000,"auth_key":"k","channel":"","registration_nonce":0}"#;
        assert_eq!(Entry::parse(plain), Some(sample()));
        assert_eq!(sample().to_json(), plain);
        // The original module's entries (six keys) read the same.
        let old = br#"{"agent_id":"a1","local_url":"http://127.0.0.1:9","block_id":"b","pid":42,"updated_at":1700000000000,"auth_key":"k"}"#;
        assert_eq!(Entry::parse(old), Some(sample()));
    }

    #[test]
    fn extra_keys_are_checked_on_write() {
        let with = |extra: Vec<(&str, &str)>| EntryFields {
            extra: extra
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            ..fields()
        };
        assert!(
            with(vec![("uid", "\"u\""), ("n", "1"), ("o", "{\"a\":[null]}")])
                .check()
                .is_ok()
        );
        for (bad, why) in [
            (with(vec![("pid", "1")]), "sets this key itself"),
            (
                with(vec![("registration_nonce", "1")]),
                "sets this key itself",
            ),
            (with(vec![("u", "1"), ("u", "2")]), "given twice"),
            (with(vec![("u", "not json")]), "not JSON"),
            (with(vec![("", "1")]), "bytes"),
            (with(vec![("u", "1 2")]), "not JSON"),
        ] {
            match bad.check() {
                Err(Error::InvalidField(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let big = "\"".to_string() + &"x".repeat(MAX_ENTRY_FILE_BYTES as usize) + "\"";
        match with(vec![("big", &big)]).check() {
            Err(Error::InvalidField(m)) => assert!(m.contains("over the limit of 65536"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"agent_id":"a1"}"#,
            br#"{"agent_id":"a1","local_url":"u","block_id":"b","pid":-1,"updated_at":1}"#,
            br#"{"agent_id":"a1","local_url":"u","block_id":"b","pid":1,"updated_at":"x"}"#,
            br#"{"agent_id":"","local_url":"u","block_id":"b","pid":1,"updated_at":1}"#,
        ] {
            assert_eq!(
                Entry::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn reads_apply_the_limits_writes_do() {
        let at_limit = Entry {
            local_url: "u".repeat(MAX_LOCAL_URL_BYTES),
            ..sample()
        };
        assert!(Entry::parse(&at_limit.to_json()).is_some());
        for over in [
            Entry {
                local_url: "u".repeat(MAX_LOCAL_URL_BYTES + 1),
                ..sample()
            },
            Entry {
                block_id: "b".repeat(MAX_BLOCK_ID_BYTES + 1),
                ..sample()
            },
            Entry {
                auth_key: "k".repeat(MAX_AUTH_KEY_BYTES + 1),
                ..sample()
            },
            Entry {
                channel: "c".repeat(300),
                ..sample()
            },
            Entry {
                agent_id: "a".repeat(300),
                ..sample()
            },
        ] {
            assert_eq!(Entry::parse(&over.to_json()), None);
        }
    }

    #[test]
    fn field_limits_are_enforced_with_the_field_named() {
        let ok = EntryFields {
            local_url: "u".repeat(MAX_LOCAL_URL_BYTES),
            ..fields()
        };
        assert!(ok.check().is_ok());
        let err = EntryFields {
            local_url: "u".repeat(MAX_LOCAL_URL_BYTES + 1),
            ..fields()
        }
        .check()
        .unwrap_err();
        assert!(matches!(&err, Error::InvalidField(m) if m.starts_with("local-url")));
        for bad in [
            EntryFields {
                block_id: "b".repeat(MAX_BLOCK_ID_BYTES + 1),
                ..fields()
            },
            EntryFields {
                auth_key: "k".repeat(MAX_AUTH_KEY_BYTES + 1),
                ..fields()
            },
            EntryFields {
                channel: "c".repeat(300),
                ..fields()
            },
        ] {
            assert!(matches!(bad.check(), Err(Error::InvalidField(_))));
        }
        assert!(matches!(
            EntryFields::default().check(),
            Err(Error::InvalidAgentId(_))
        ));
    }

    #[test]
    fn ownership_needs_pid_key_and_a_nonzero_nonce_to_match() {
        let mine = Entry {
            registration_nonce: 5,
            ..sample()
        };
        let owner = Owner::of(&mine);
        assert!(mine.is_owned_by("a1", &owner));
        assert!(mine.is_owned_by("A1", &owner), "ids are case-insensitive");
        assert!(!mine.is_owned_by("a2", &owner));
        for other in [
            Owner {
                registration_nonce: 6,
                ..owner.clone()
            },
            Owner {
                registration_nonce: 0,
                ..owner.clone()
            },
            Owner {
                pid: 43,
                ..owner.clone()
            },
            Owner {
                auth_key: "other".into(),
                ..owner.clone()
            },
        ] {
            assert!(!mine.is_owned_by("a1", &other), "{other:?}");
        }
        // A plain write (nonce 0) is no registration: nothing owns it.
        assert!(!sample().is_owned_by("a1", &Owner::of(&sample())));
        assert!(mine.is_registration("a1", 5));
        assert!(!mine.is_registration("a1", 6));
        assert!(!sample().is_registration("a1", 0));
    }
}
