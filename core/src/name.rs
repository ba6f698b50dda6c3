//! The mapping from an agent id to the name of its entry file.
//!
//! Ids are case-insensitive, as agentmux-srv treats them: the name is made
//! from the id lowercased (Unicode `to_lowercase`), so `AgentX` and `agentx`
//! are one entry; the stored `agent_id` keeps the caller's spelling. Over
//! lowercased ids the mapping is injective and every result is one safe path
//! component:
//! - characters older registry versions kept unchanged (Unicode letters and
//!   digits, `-`, `_`) stay as they are, so such ids keep their historical
//!   `{agent_id}.json` name and old and new instances read each other's entries;
//! - every other character becomes `%XX` for each of its UTF-8 bytes. `%` is
//!   itself escaped, so the escaped form decodes uniquely, and any id that
//!   needed escaping contains a `%`, which no plain id's name does.
//!
//! Names therefore never contain `/`, `\`, NUL, `.` before the suffix, or a
//! control character, and never start with `.` (temporary files do).

use std::fmt::Write as _;

/// The suffix of every entry file.
pub const ENTRY_SUFFIX: &str = ".json";

/// The longest file name most file systems accept, in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// Why an agent id cannot name an entry file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// The id is the empty string.
    Empty,
    /// The id's file name would be `bytes` long, over [`MAX_FILE_NAME_BYTES`].
    TooLong {
        /// Length the file name would have had.
        bytes: usize,
    },
}

impl std::fmt::Display for IdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdError::Empty => f.write_str("agent id is empty"),
            IdError::TooLong { bytes } => write!(
                f,
                "agent id is too long: its entry file name would be {bytes} bytes, \
                 over the limit of {MAX_FILE_NAME_BYTES}"
            ),
        }
    }
}

/// Prefix of an entry name's claim file (which no entry name can have: entry
/// names never start with `.`).
pub const CLAIM_PREFIX: &str = ".claim-";

/// The claim file name of the entry file name `entry_name`: the prefix and a
/// 64-bit FNV-1a hash of the name, so every entry name has one of a fixed
/// length, and every instance, of any build on any host, derives the same.
pub fn claim_file_name(entry_name: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in entry_name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{CLAIM_PREFIX}{hash:016x}")
}

/// Whether a character is written into file names unchanged.
fn is_plain(c: char) -> bool {
    c.is_alphanumeric() || c == '-' || c == '_'
}

/// Whether a file name can be an entry's: it ends in `.json` and is not
/// hidden (temporary files, claims and files taken aside start with `.`).
pub fn may_name_an_entry(name: &str) -> bool {
    name.ends_with(ENTRY_SUFFIX) && !name.starts_with('.')
}

/// Whether two ids name one agent: they are equal once lowercased.
pub fn same_id(a: &str, b: &str) -> bool {
    a == b || (a.len().max(b.len()) <= LONGEST_ID && a.to_lowercase() == b.to_lowercase())
}

/// Longer ids (in bytes) cannot name a file: lowercasing shrinks a character
/// to a third of its bytes at most. Checked before anything is allocated.
const LONGEST_ID: usize = 3 * MAX_FILE_NAME_BYTES;

/// `id` lowercased as agentmux-srv does (`str::to_lowercase`).
fn lowercase(id: &str) -> Result<String, IdError> {
    if id.len() > LONGEST_ID {
        return Err(IdError::TooLong { bytes: id.len() });
    }
    Ok(id.to_lowercase())
}

/// The entry file name of `agent_id`: its lowercased form, escaped.
pub fn entry_file_name(agent_id: &str) -> Result<String, IdError> {
    escaped_name(&lowercase(agent_id)?, ENTRY_SUFFIX)
}

/// The name of `agent_id`'s directory in the shared registry: the entry file
/// name without its suffix.
pub fn agent_dir_name(agent_id: &str) -> Result<String, IdError> {
    escaped_name(&lowercase(agent_id)?, "")
}

/// The names other writers used for `agent_id`'s entry, which lookups and
/// removals also look at, each accepted only while the entry it holds is
/// `agent_id`'s (see [`same_id`]): the case-preserving escaped name of
/// registry versions before ids were case-insensitive, and the
/// `_`-sanitised names of agentmux-srv (lowercased today, case-preserving
/// in its 0.32 module). Names equal to [`entry_file_name`] or to each other
/// are left out, so for a lowercase id of plain characters this is empty.
pub fn other_writers_names(agent_id: &str) -> Vec<String> {
    let Ok(own) = entry_file_name(agent_id) else {
        return Vec::new();
    };
    let lower = agent_id.to_lowercase();
    let candidates = [
        escaped_name(agent_id, ENTRY_SUFFIX).ok(),
        sanitised_name(&lower, ENTRY_SUFFIX),
        sanitised_name(agent_id, ENTRY_SUFFIX),
    ];
    let mut names: Vec<String> = Vec::new();
    for name in candidates.into_iter().flatten() {
        if name != own && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The names agentmux-srv gives `agent_id`'s directory in the shared
/// registry, when it differs from [`agent_dir_name`]: its `_`-sanitised
/// lowercased id.
pub fn other_writers_dir_names(agent_id: &str) -> Vec<String> {
    let Ok(own) = agent_dir_name(agent_id) else {
        return Vec::new();
    };
    sanitised_name(&agent_id.to_lowercase(), "")
        .filter(|name| *name != own)
        .into_iter()
        .collect()
}

/// agentmux-srv's name: every character other than a plain one becomes `_`.
/// `None` when it is not one valid name (too long, or `.`-led: never, since
/// `.` is sanitised).
fn sanitised_name(id: &str, suffix: &str) -> Option<String> {
    let mut name: String = id
        .chars()
        .map(|c| if is_plain(c) { c } else { '_' })
        .collect();
    name.push_str(suffix);
    (name.len() > suffix.len() && name.len() <= MAX_FILE_NAME_BYTES).then_some(name)
}

fn escaped_name(id: &str, suffix: &str) -> Result<String, IdError> {
    let mut name = String::with_capacity(id.len() + suffix.len());
    let mut utf8 = [0u8; 4];
    for c in id.chars() {
        if is_plain(c) {
            name.push(c);
        } else {
            for byte in c.encode_utf8(&mut utf8).bytes() {
                // Writing to a String cannot fail.
                let _ = write!(name, "%{byte:02X}");
            }
        }
        if name.len() + suffix.len() > MAX_FILE_NAME_BYTES {
            // Stop early: a 10 MB id must not build a 30 MB name first.
            return Err(IdError::TooLong {
                bytes: name.len() + suffix.len(),
            });
        }
    }
    if name.is_empty() {
        return Err(IdError::Empty);
    }
    name.push_str(suffix);
    Ok(name)
}

#[cfg(test)]
mod tests {

    #[test]
    fn claim_file_names_are_fnv_1a_of_the_entry_name() {
        // A value every build and host must derive alike (two names whose
        // 64-bit hashes collide share one claim; listings do not use it).
        assert_eq!(claim_file_name(""), ".claim-cbf29ce484222325");
        assert_eq!(
            claim_file_name("alcbfjmcplpcheka.json"),
            claim_file_name("migoplepfnlggakk.json")
        );
        assert_eq!(
            claim_file_name("alcbfjmcplpcheka.json"),
            ".claim-32d8bb5f9a5f6f6d"
        );
    }

    use super::*;
    use proptest::prelude::*;

    /// Inverse of the mapping, used only to prove injectivity.
    fn decode(name: &str) -> Option<String> {
        let stem = name.strip_suffix(ENTRY_SUFFIX)?;
        let mut bytes = Vec::new();
        let mut rest = stem;
        while let Some(c) = rest.chars().next() {
            if c == '%' {
                let hex = rest.get(1..3)?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &rest[3..];
            } else {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                rest = &rest[c.len_utf8()..];
            }
        }
        String::from_utf8(bytes).ok()
    }

    #[test]
    fn plain_ids_keep_their_historical_name() {
        assert_eq!(entry_file_name("agent-1_x").unwrap(), "agent-1_x.json");
        assert_eq!(entry_file_name("ünïcødé7").unwrap(), "ünïcødé7.json");
        assert_eq!(entry_file_name("代理").unwrap(), "代理.json");
    }

    #[test]
    fn ids_that_used_to_collide_get_distinct_names() {
        assert_eq!(entry_file_name("a_b").unwrap(), "a_b.json");
        assert_eq!(entry_file_name("a.b").unwrap(), "a%2Eb.json");
        assert_eq!(entry_file_name("a%2Eb").unwrap(), "a%252eb.json");
    }

    #[test]
    fn ids_are_case_insensitive_as_agentmux_srv_makes_them() {
        assert_eq!(entry_file_name("AgentX").unwrap(), "agentx.json");
        assert_eq!(entry_file_name("Ünïcødé7").unwrap(), "ünïcødé7.json");
        // `str::to_lowercase`, as the server: a final sigma is `ς`.
        assert_eq!(entry_file_name("ΟΔΟΣ").unwrap(), "οδος.json");
        assert_eq!(entry_file_name("A.B").unwrap(), "a%2Eb.json");
        assert_eq!(agent_dir_name("AgentX").unwrap(), "agentx");
        assert!(same_id("AgentX", "agentX") && !same_id("AgentX", "agentY"));
        // The Kelvin sign lowercases to one byte: 3 × 255 bytes of it are
        // still a valid id, one more is not.
        let kelvins = "\u{212A}".repeat(MAX_FILE_NAME_BYTES - ENTRY_SUFFIX.len());
        assert_eq!(
            entry_file_name(&kelvins).unwrap().len(),
            MAX_FILE_NAME_BYTES
        );
        assert!(entry_file_name(&format!("{kelvins}\u{212A}")).is_err());
    }

    #[test]
    fn other_writers_names_are_the_legacy_and_server_names() {
        assert!(other_writers_names("agent-1").is_empty());
        assert_eq!(other_writers_names("AgentX"), ["AgentX.json"]);
        assert_eq!(other_writers_names("a.b"), ["a_b.json"]);
        assert_eq!(
            other_writers_names("My.Agent"),
            ["My%2EAgent.json", "my_agent.json", "My_Agent.json"]
        );
    }

    #[test]
    fn shared_registry_dirs_are_named_as_agentmux_srv_names_them() {
        assert_eq!(agent_dir_name("AgentX").unwrap(), "agentx");
        assert!(other_writers_dir_names("AgentX").is_empty());
        assert_eq!(agent_dir_name("My.Agent").unwrap(), "my%2Eagent");
        assert_eq!(other_writers_dir_names("My.Agent"), ["my_agent"]);
        assert_eq!(agent_dir_name(""), Err(IdError::Empty));
    }

    #[test]
    fn hostile_ids_become_one_component() {
        assert_eq!(entry_file_name("..").unwrap(), "%2E%2E.json");
        assert_eq!(entry_file_name("../x").unwrap(), "%2E%2E%2Fx.json");
        assert_eq!(
            entry_file_name("/etc/passwd").unwrap(),
            "%2Fetc%2Fpasswd.json"
        );
        assert_eq!(entry_file_name("a\\b").unwrap(), "a%5Cb.json");
        assert_eq!(entry_file_name("\0").unwrap(), "%00.json");
    }

    #[test]
    fn empty_and_oversized_ids_are_refused() {
        assert_eq!(entry_file_name(""), Err(IdError::Empty));
        let longest_plain = "a".repeat(MAX_FILE_NAME_BYTES - ENTRY_SUFFIX.len());
        assert_eq!(
            entry_file_name(&longest_plain).unwrap().len(),
            MAX_FILE_NAME_BYTES
        );
        assert!(matches!(
            entry_file_name(&format!("{longest_plain}a")),
            Err(IdError::TooLong { .. })
        ));
        assert!(matches!(
            entry_file_name(&".".repeat(10_000)),
            Err(IdError::TooLong { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn mapping_is_injective(a in any::<String>(), b in any::<String>()) {
            if let (Ok(na), Ok(nb)) = (entry_file_name(&a), entry_file_name(&b)) {
                prop_assert_eq!(na == nb, a.to_lowercase() == b.to_lowercase());
                prop_assert_eq!(na == nb, same_id(&a, &b));
            }
        }

        #[test]
        fn mapping_round_trips(id in any::<String>()) {
            if let Ok(name) = entry_file_name(&id) {
                prop_assert_eq!(decode(&name), Some(id.to_lowercase()));
            }
        }

        #[test]
        fn names_are_one_valid_component(id in any::<String>()) {
            match entry_file_name(&id) {
                Ok(name) => {
                    prop_assert!(name.len() <= MAX_FILE_NAME_BYTES);
                    prop_assert!(name.ends_with(ENTRY_SUFFIX));
                    prop_assert!(!name.starts_with('.'));
                    prop_assert!(name != "." && name != "..");
                    prop_assert!(!name.chars().any(|c| c == '/' || c == '\\' || c == '\0' || c.is_control()));
                    prop_assert_eq!(name[..name.len() - ENTRY_SUFFIX.len()].contains('.'), false);
                }
                Err(IdError::Empty) => prop_assert!(id.is_empty()),
                Err(IdError::TooLong { bytes }) => prop_assert!(bytes > MAX_FILE_NAME_BYTES),
            }
        }

        #[test]
        fn plain_ids_map_to_themselves(id in "[\\p{Alphabetic}\\p{Nd}_-]{1,40}") {
            // Only ids whose every char the seed keeps; the regex classes are close to
            // char::is_alphanumeric, so filter on the real predicate.
            prop_assume!(id.chars().all(is_plain));
            let lower = id.to_lowercase();
            prop_assume!(lower.chars().all(is_plain));
            prop_assert_eq!(entry_file_name(&id).unwrap(), format!("{lower}.json"));
        }
    }
}
