//! The on-disk entry format, the registry's field limits, ownership, and its
//! error cases.

use serde::{Deserialize, Serialize};

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
/// Longest accepted `registration` token, in bytes.
pub const MAX_REGISTRATION_BYTES: usize = 128;

/// One entry file. Field order and names are the on-disk format: serialising
/// this with `serde_json` gives the same bytes older registry versions wrote
/// (the optional keys are written only when known). Unknown keys are ignored
/// when reading, and a missing `auth_key` reads as empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The agent's id, exactly as registered (case-sensitive).
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
    #[serde(default)]
    pub auth_key: String,
    /// When the owning process started, in the OS's own units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_started: Option<u64>,
    /// The pid namespace `pid` belongs to (Linux), stored as `pid_ns`.
    #[serde(default, rename = "pid_ns", skip_serializing_if = "Option::is_none")]
    pub pid_namespace: Option<u64>,
    /// The token of the registration that wrote the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<String>,
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
    /// When the owning process started; `None` lets the host fill it in.
    pub pid_started: Option<u64>,
    /// The pid namespace of `pid`; `None` lets the host fill it in.
    pub pid_namespace: Option<u64>,
    /// The registration token; `None` for a plain write.
    pub registration: Option<String>,
}

/// One registration, as a conditional removal names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// The stored `pid`.
    pub pid: u32,
    /// The stored `auth_key`.
    pub auth_key: String,
    /// The stored `registration` token.
    pub registration: Option<String>,
}

impl Owner {
    /// The registration that wrote `entry`.
    pub fn of(entry: &Entry) -> Owner {
        Owner {
            pid: entry.pid,
            auth_key: entry.auth_key.clone(),
            registration: entry.registration.clone(),
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
            pid_started: self.pid_started,
            pid_namespace: self.pid_namespace,
            registration: self.registration,
        }
    }

    /// Checks every limit: the id must name a file, and each other field must
    /// be within its length limit.
    pub fn check(&self) -> Result<(), Error> {
        file_name_of(&self.agent_id)?;
        check_lengths(
            &self.local_url,
            &self.block_id,
            &self.auth_key,
            self.registration.as_deref(),
        )
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
            && check_lengths(
                &self.local_url,
                &self.block_id,
                &self.auth_key,
                self.registration.as_deref(),
            )
            .is_ok()
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
            pid_started: self.pid_started,
            pid_namespace: self.pid_namespace,
            registration: self.registration.clone(),
        }
    }

    /// The bytes of this entry's file.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec(self).expect("entry serialises")
    }

    /// Whether this is `agent_id`'s entry written by the registration `owner`.
    pub fn is_owned_by(&self, agent_id: &str, owner: &Owner) -> bool {
        self.agent_id == agent_id
            && self.pid == owner.pid
            && self.auth_key == owner.auth_key
            && self.registration == owner.registration
    }

    /// Whether this is `agent_id`'s entry written by registration `token`.
    pub fn is_registration(&self, agent_id: &str, token: &str) -> bool {
        self.agent_id == agent_id && self.registration.as_deref() == Some(token)
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

fn check_lengths(
    local_url: &str,
    block_id: &str,
    auth_key: &str,
    registration: Option<&str>,
) -> Result<(), Error> {
    for (field, value, limit) in [
        ("local-url", local_url, MAX_LOCAL_URL_BYTES),
        ("block-id", block_id, MAX_BLOCK_ID_BYTES),
        ("auth-key", auth_key, MAX_AUTH_KEY_BYTES),
        (
            "registration",
            registration.unwrap_or(""),
            MAX_REGISTRATION_BYTES,
        ),
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
            pid_started: None,
            pid_namespace: None,
            registration: None,
        }
    }

    fn fields() -> EntryFields {
        EntryFields {
            agent_id: "a1".into(),
            ..EntryFields::default()
        }
    }

    #[test]
    fn writes_the_historical_byte_format() {
        assert_eq!(
            String::from_utf8(sample().to_json()).unwrap(),
            r#"{"agent_id":"a1","local_url":"http://127.0.0.1:9","block_id":"b","pid":42,"updated_at":1700000000000,"auth_key":"k"}"#
        );
    }

    #[test]
    fn optional_keys_trail_in_a_fixed_order() {
        let with = Entry {
            pid_started: Some(123),
            pid_namespace: Some(7),
            registration: Some("t1".into()),
            ..sample()
        };
        let json = String::from_utf8(with.to_json()).unwrap();
        assert!(
            json.ends_with(r#","auth_key":"k","pid_started":123,"pid_ns":7,"registration":"t1"}"#),
            "{json}"
        );
        assert_eq!(Entry::parse(json.as_bytes()), Some(with.clone()));
        assert_eq!(with.fields().into_entry(with.updated_at), with);
    }

    #[test]
    fn reads_entries_without_auth_key_and_with_extra_keys() {
        let old = br#"{"agent_id":"a1","local_url":"http://127.0.0.1:9","block_id":"b","pid":42,"updated_at":1700000000000}"#;
        assert_eq!(Entry::parse(old).unwrap().auth_key, "");
        let extra = br#"{"agent_id":"a1","local_url":"http://127.0.0.1:9","block_id":"b","pid":42,"updated_at":1700000000000,"auth_key":"k","future":[1]}"#;
        assert_eq!(Entry::parse(extra).unwrap(), sample());
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
                registration: Some("r".repeat(MAX_REGISTRATION_BYTES + 1)),
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
                registration: Some("r".repeat(MAX_REGISTRATION_BYTES + 1)),
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
    fn ownership_needs_pid_key_and_token_to_match() {
        let mine = Entry {
            registration: Some("t1".into()),
            ..sample()
        };
        let owner = Owner::of(&mine);
        assert!(mine.is_owned_by("a1", &owner));
        assert!(!mine.is_owned_by("a2", &owner));
        for other in [
            Owner {
                registration: Some("t2".into()),
                ..owner.clone()
            },
            Owner {
                registration: None,
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
        assert!(mine.is_registration("a1", "t1"));
        assert!(!mine.is_registration("a1", "t2"));
        assert!(!sample().is_registration("a1", "t1"));
    }
}
