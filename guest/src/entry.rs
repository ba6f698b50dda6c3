//! The on-disk entry format and the registry's input limits.

use serde::{Deserialize, Serialize};

use crate::name::{self, IdError};

/// Largest entry file that is read; a larger one is malformed.
pub const MAX_ENTRY_FILE_BYTES: u64 = 64 * 1024;
/// Longest accepted `local_url`, in bytes.
pub const MAX_LOCAL_URL_BYTES: usize = 2048;
/// Longest accepted `block_id`, in bytes.
pub const MAX_BLOCK_ID_BYTES: usize = 256;
/// Longest accepted `auth_key`, in bytes.
pub const MAX_AUTH_KEY_BYTES: usize = 1024;

/// One entry file. Field order and names are the on-disk format: serialising
/// this with `serde_json::to_vec` gives the same bytes older registry versions
/// wrote. Unknown keys are ignored when reading, and a missing `auth_key`
/// reads as empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub agent_id: String,
    pub local_url: String,
    pub block_id: String,
    pub pid: u32,
    pub updated_at: u64,
    #[serde(default)]
    pub auth_key: String,
    /// Optional: the owner's process start time. Written only when known, so
    /// entries without it are byte-identical to the historical format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_started: Option<u64>,
}

impl Entry {
    /// Parses an entry file's bytes; `None` when they are not a valid entry.
    pub fn parse(bytes: &[u8]) -> Option<Entry> {
        serde_json::from_slice(bytes).ok()
    }

    /// The bytes of this entry's file.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec(self).expect("entry serialises")
    }

    /// Whether this is the registration made by process `pid` with `auth_key`.
    pub fn is_owned_by(&self, agent_id: &str, pid: u32, auth_key: &str) -> bool {
        self.agent_id == agent_id && self.pid == pid && self.auth_key == auth_key
    }
}

/// A failed registry call, mirroring the WIT `registry-error` cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    InvalidAgentId(String),
    InvalidField(String),
    Conflict(String),
    Io(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidAgentId(m) => write!(f, "invalid agent id: {m}"),
            Error::InvalidField(m) => write!(f, "invalid field: {m}"),
            Error::Conflict(m) => write!(f, "conflict: {m}"),
            Error::Io(m) => write!(f, "registry I/O failed: {m}"),
        }
    }
}

impl From<IdError> for Error {
    fn from(e: IdError) -> Self {
        Error::InvalidAgentId(e.to_string())
    }
}

/// The entry file name of `agent_id`, or `invalid-agent-id`.
pub fn file_name_of(agent_id: &str) -> Result<String, Error> {
    Ok(name::entry_file_name(agent_id)?)
}

/// Checks the length limits of a write's fields other than the id.
pub fn check_fields(local_url: &str, block_id: &str, auth_key: &str) -> Result<(), Error> {
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
            pid_started: None,
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
    fn pid_started_is_an_optional_trailing_key() {
        let with = Entry {
            pid_started: Some(123),
            ..sample()
        };
        let json = String::from_utf8(with.to_json()).unwrap();
        assert!(
            json.ends_with(r#","auth_key":"k","pid_started":123}"#),
            "{json}"
        );
        assert_eq!(Entry::parse(json.as_bytes()), Some(with));
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
    fn field_limits_are_enforced_with_the_field_named() {
        assert!(check_fields(&"u".repeat(MAX_LOCAL_URL_BYTES), "", "").is_ok());
        let err = check_fields(&"u".repeat(MAX_LOCAL_URL_BYTES + 1), "", "").unwrap_err();
        assert!(matches!(&err, Error::InvalidField(m) if m.starts_with("local-url")));
        assert!(check_fields("", &"b".repeat(MAX_BLOCK_ID_BYTES + 1), "").is_err());
        assert!(check_fields("", "", &"k".repeat(MAX_AUTH_KEY_BYTES + 1)).is_err());
    }
}
