//! What registry operations report, and how the bulk ones are batched: the
//! types the contract's `renewal` enum and `sweep-progress` record map to on
//! both sides of it.

/// Entries per guest call when a host lists the registry: bounds the
/// component's memory (a valid entry is at most about 4 KiB) and the time of
/// each call.
pub const LIST_BATCH: u32 = 256;

/// Directory names per guest call when a host sweeps the registry.
pub const SWEEP_BATCH: u32 = 256;

/// What a renewal did (the contract's `renewal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The entry was this registration's and was rewritten.
    Refreshed,
    /// There was no entry (or only a malformed file): it was written anew.
    Restored,
    /// Another registration owns the id now; nothing was changed.
    Superseded,
}

/// How far a sweep has come (the contract's `sweep-progress`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepProgress {
    /// Directory names looked at so far.
    pub examined: u64,
    /// Directory names removed so far.
    pub removed: u64,
    /// Names that could not be read or removed so far (for example,
    /// permission denied); they stay for the next sweep. A name another
    /// instance removed or rewrote meanwhile is not a failure.
    pub failed: u64,
    /// Why the first of the `failed` names failed.
    pub first_failure: Option<String>,
    /// True once every name was looked at.
    pub done: bool,
}

impl SweepProgress {
    /// Adds the totals of `later`, a pass that ran after this one; the first
    /// failure stays the earliest.
    pub fn add(&mut self, later: SweepProgress) {
        self.examined += later.examined;
        self.removed += later.removed;
        self.failed += later.failed;
        if self.first_failure.is_none() {
            self.first_failure = later.first_failure;
        }
        self.done = later.done;
    }
}

/// Puts a whole listing in the order every front end shows it: by agent id;
/// in a shared registry by agent id in any case, then each id's channels
/// freshest first.
pub fn sort_listing(entries: &mut [crate::Entry], shared: bool) {
    if shared {
        entries.sort_by_cached_key(|e| {
            (
                e.agent_id.to_lowercase(),
                std::cmp::Reverse(e.updated_at),
                e.channel.clone(),
            )
        });
    } else {
        entries.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    }
}

/// Writes `From` impls between two types of the same shape: records whose
/// fields have the same names (each converted with `Into`; `both A, B`
/// writes both directions), or enums whose unit cases have the same names.
/// Each side of the contract lists every record's fields once, in one file,
/// and the list is checked by the compiler: the source is destructured
/// exhaustively, so a field added to either type and missing from the list
/// fails the build.
///
/// ```
/// # use agentmux_registry_core::same_shape;
/// struct Wire { id: String, n: u32 }
/// struct Domain { id: String, n: u32 }
/// same_shape!(Wire => Domain { id, n });
/// let d: Domain = Wire { id: "a".into(), n: 1 }.into();
/// assert_eq!((d.id.as_str(), d.n), ("a", 1));
/// ```
#[macro_export]
macro_rules! same_shape {
    (both $a:ty, $b:ty { $($field:ident),+ $(,)? }) => {
        $crate::same_shape!($a => $b { $($field),+ });
        $crate::same_shape!($b => $a { $($field),+ });
    };
    (enum $from:ty => $to:ty { $($case:ident),+ $(,)? }) => {
        impl ::core::convert::From<$from> for $to {
            fn from(value: $from) -> $to {
                type From_ = $from;
                type To_ = $to;
                match value {
                    $(From_::$case => To_::$case),+
                }
            }
        }
    };
    ($from:ty => $to:ty { $($field:ident),+ $(,)? }) => {
        impl ::core::convert::From<$from> for $to {
            fn from(value: $from) -> $to {
                type From_ = $from;
                type To_ = $to;
                let From_ { $($field),+ } = value;
                To_ { $($field: $field.into()),+ }
            }
        }
    };
}

/// The mappings of the records every world of the contract shares (entry
/// fields, entries, owners, renewals) between core's types and the
/// generated ones in module `$wit`, each record's fields listed once:
/// - `host`: fields and owners to the contract, entries both ways, renewals
///   from it;
/// - `guest`: the reverse.
#[macro_export]
macro_rules! shared_records {
    (host: $wit:ident) => {
        $crate::shared_records!(@records $wit,
            [$crate::EntryFields => $wit::EntryFields],
            [$crate::Owner => $wit::Owner],
            [$wit::Renewal => $crate::Renewal]);
    };
    (guest: $wit:ident) => {
        $crate::shared_records!(@records $wit,
            [$wit::EntryFields => $crate::EntryFields],
            [$wit::Owner => $crate::Owner],
            [$crate::Renewal => $wit::Renewal]);
    };
    (@records $wit:ident,
        [$fields_from:ty => $fields_to:ty],
        [$owner_from:ty => $owner_to:ty],
        [$renewal_from:ty => $renewal_to:ty]) => {
        $crate::same_shape!($fields_from => $fields_to {
            agent_id, local_url, block_id, pid, auth_key, channel, registration_nonce, pid_started,
            pid_namespace, beat_interval_ms, extra
        });
        $crate::same_shape!($owner_from => $owner_to { pid, auth_key, registration_nonce });
        $crate::same_shape!(enum $renewal_from => $renewal_to { Refreshed, Restored, Superseded });
        $crate::same_shape!(both $wit::AgentEntry, $crate::Entry {
            agent_id, local_url, block_id, pid, updated_at, auth_key, channel, registration_nonce,
            pid_started, pid_namespace, beat_interval_ms, extra
        });
    };
}
