//! The registry's rules on a key-value store with revisions (etcd): the
//! operations of the component's `kv-registry` world, written once against
//! [`Store`], so the component runs them on its host's store and the unit
//! tests here on a map.
//!
//! Layout, below the prefix the host adds (which the component never sees):
//! - the per-channel registry: `agents/{entry file name}`, one key per id
//!   (the id's file name, [`crate::name::entry_file_name`]: lowercased, so
//!   ids stay case-insensitive);
//! - the shared registry: `shared/{agent dir name}/{channel's file name}`,
//!   one key per agent and channel.
//!
//! Each value is an entry in the on-disk format ([`Entry::to_json`]). A
//! value is an entry only where it is valid ([`Entry::parse`]) and stored
//! at its own key; anything else reads as no entry. Every change that
//! depends on what is stored is conditional on the revision it was judged
//! at, so a renewal never overwrites a successor and an eviction never
//! removes an entry renewed after it was judged: a lost race is judged
//! again, up to [`MAX_ATTEMPTS`] times.

use crate::entry::{file_name_of, Entry, EntryFields, Error, Owner};
use crate::name::agent_dir_name;
use crate::ops::Renewal;

/// Keys of the per-channel registry start with this.
pub const AGENTS_PREFIX: &str = "agents/";
/// Keys of the shared registry start with this.
pub const SHARED_PREFIX: &str = "shared/";
/// The most entries `lookup_all` returns in the shared registry (as the
/// file registry's).
pub const MAX_LOOKUP_ALL: usize = 256;
/// How often a conditional change judged anew after losing a race gives up:
/// each loss means another writer changed the key meanwhile.
pub const MAX_ATTEMPTS: u32 = 16;
/// The most keys one range request returns.
pub const MAX_RANGE: u32 = 1024;

/// Which registry a call works on (the contract's `layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One entry per id (the file registry's `{data_dir}/agents`).
    PerChannel,
    /// One entry per id and channel (the host-wide shared registry).
    Shared,
}

/// A key and its value as the store holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The key, below the host's prefix.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision of the key's last change (etcd's `mod_revision`); never 0.
    pub revision: u64,
}

/// The store the rules run on (the contract's `store` interface). Errors
/// are messages: the store could not be reached, or refused the request.
pub trait Store {
    /// The value at `key`, with its revision.
    fn get(&mut self, key: &str) -> Result<Option<Stored>, String>;
    /// Sets `key` to `value` (attached to `lease` when given).
    fn put(&mut self, key: &str, value: &[u8], lease: Option<u64>) -> Result<(), String>;
    /// Sets `key` to `value` only while its revision is `revision` (0: only
    /// while it is absent); false when it was not.
    fn put_if_revision(
        &mut self,
        key: &str,
        value: &[u8],
        lease: Option<u64>,
        revision: u64,
    ) -> Result<bool, String>;
    /// Deletes `key` only while its revision is `revision`; false when it
    /// was not (or the key is absent).
    fn delete_if_revision(&mut self, key: &str, revision: u64) -> Result<bool, String>;
    /// Up to `limit` keys starting with `prefix` and after `after` (when
    /// given), in key order, and whether more follow. A page may hold fewer
    /// than `limit` keys while more follow (the store bounds a page's
    /// bytes), but never none.
    fn range(
        &mut self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<Stored>, bool), String>;
}

/// The most a value may be for a read to judge it: one byte over the
/// largest entry. A store may cut longer values to this length (they are
/// no entry either way).
pub const MAX_VALUE_JUDGED: usize = crate::entry::MAX_ENTRY_FILE_BYTES as usize + 1;

/// One step of a sweep: what it looked at and removed, and where the next
/// step starts (`None`: the sweep is over).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepPage {
    /// Keys looked at.
    pub examined: u64,
    /// Keys removed.
    pub removed: u64,
    /// The key to continue after.
    pub next: Option<String>,
}

fn io(e: String) -> Error {
    Error::Io(e)
}

/// One page of `prefix`, and the key to continue after when more follow.
fn page(
    store: &mut impl Store,
    prefix: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<Stored>, Option<String>), Error> {
    let (page, more) = store.range(prefix, after, limit).map_err(io)?;
    let next = match (more, page.last()) {
        (false, _) => None,
        (true, Some(last)) => Some(last.key.clone()),
        (true, None) => {
            return Err(Error::Io(format!(
                "the store returned an empty page of {prefix:?} with more to follow"
            )))
        }
    };
    Ok((page, next))
}

/// The key of `agent_id`'s entry (in `channel`, shared).
pub fn entry_key(layout: Layout, agent_id: &str, channel: &str) -> Result<String, Error> {
    match layout {
        Layout::PerChannel => Ok(format!("{AGENTS_PREFIX}{}", file_name_of(agent_id)?)),
        Layout::Shared => {
            if channel.is_empty() {
                return Err(Error::InvalidField(
                    "channel is empty: every entry of the shared registry has one".into(),
                ));
            }
            Ok(format!(
                "{}{}",
                agent_prefix(agent_id)?,
                file_name_of(channel)?
            ))
        }
    }
}

/// The prefix of every key of `agent_id` in the shared registry.
fn agent_prefix(agent_id: &str) -> Result<String, Error> {
    let dir = agent_dir_name(agent_id).map_err(Error::from)?;
    Ok(format!("{SHARED_PREFIX}{dir}/"))
}

/// The prefix of every key of `layout`.
pub fn layout_prefix(layout: Layout) -> &'static str {
    match layout {
        Layout::PerChannel => AGENTS_PREFIX,
        Layout::Shared => SHARED_PREFIX,
    }
}

/// The entry `value` holds if it is a valid entry stored at its own key:
/// what every read accepts.
pub fn entry_at(layout: Layout, key: &str, value: &[u8]) -> Option<Entry> {
    let entry = Entry::parse(value)?;
    let own = entry_key(layout, &entry.agent_id, &entry.channel).ok()?;
    (own == key).then_some(entry)
}

/// The layout's checks of `fields`, beyond [`EntryFields::check`].
fn check_layout(layout: Layout, fields: &EntryFields) -> Result<String, Error> {
    fields.check()?;
    entry_key(layout, &fields.agent_id, &fields.channel)
}

/// Creates or replaces the entry of `fields` (attached to `lease`), stamped
/// `now`; returns it as stored.
pub fn write(
    store: &mut impl Store,
    layout: Layout,
    fields: EntryFields,
    lease: Option<u64>,
    now: u64,
) -> Result<Entry, Error> {
    let key = check_layout(layout, &fields)?;
    let entry = fields.into_entry(now);
    store.put(&key, &entry.to_json(), lease).map_err(io)?;
    Ok(entry)
}

/// One heartbeat step of the registration `fields.registration_nonce`:
/// rewrites the entry (attached to `lease`) while it is this registration's,
/// writes it when there is none (or only an invalid value), and changes
/// nothing when another registration holds the key.
pub fn renew(
    store: &mut impl Store,
    layout: Layout,
    fields: EntryFields,
    lease: Option<u64>,
    now: u64,
) -> Result<Renewal, Error> {
    let key = check_layout(layout, &fields)?;
    if fields.registration_nonce == 0 {
        return Err(Error::InvalidField(
            "registration-nonce is 0: only a registration can be renewed".into(),
        ));
    }
    let value = fields.clone().into_entry(now).to_json();
    for _ in 0..MAX_ATTEMPTS {
        let stored = store.get(&key).map_err(io)?;
        let (renewal, revision) = match &stored {
            None => (Renewal::Restored, 0),
            Some(s) => match entry_at(layout, &key, &s.value) {
                Some(e) if e.is_registration(&fields.agent_id, fields.registration_nonce) => {
                    (Renewal::Refreshed, s.revision)
                }
                Some(_) => return Ok(Renewal::Superseded),
                None => (Renewal::Restored, s.revision),
            },
        };
        if store
            .put_if_revision(&key, &value, lease, revision)
            .map_err(io)?
        {
            return Ok(renewal);
        }
    }
    Err(contended(&key))
}

fn contended(key: &str) -> Error {
    Error::Io(format!(
        "{key}: changed by other writers {MAX_ATTEMPTS} times while this call judged it"
    ))
}

/// Deletes the key while `remove` says yes to the entry it holds (judged
/// at its revision; `None` for a value that is no entry); true when deleted.
fn delete_unless(
    store: &mut impl Store,
    layout: Layout,
    key: &str,
    remove: impl Fn(Option<&Entry>) -> bool,
) -> Result<bool, Error> {
    for _ in 0..MAX_ATTEMPTS {
        let Some(stored) = store.get(key).map_err(io)? else {
            return Ok(false);
        };
        if !remove(entry_at(layout, key, &stored.value).as_ref()) {
            return Ok(false);
        }
        if store.delete_if_revision(key, stored.revision).map_err(io)? {
            return Ok(true);
        }
    }
    Err(contended(key))
}

/// Every key of `agent_id` in the shared registry, with its value.
fn agent_keys(store: &mut impl Store, agent_id: &str) -> Result<Vec<Stored>, Error> {
    let prefix = agent_prefix(agent_id)?;
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (items, next) = page(store, &prefix, after.as_deref(), MAX_RANGE)?;
        all.extend(items);
        match next {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}

/// Removes `agent_id`'s entry: in the shared registry, `channel`'s, or
/// every channel's when `channel` is `None`. True when one was removed. A
/// value that is not a valid entry at its key is removed too, as a file
/// registry removes a malformed file at the id's name.
pub fn remove(
    store: &mut impl Store,
    layout: Layout,
    agent_id: &str,
    channel: Option<&str>,
) -> Result<bool, Error> {
    match (layout, channel) {
        (Layout::PerChannel, Some(_)) => Err(Error::InvalidField(
            "channels are the shared registry's".into(),
        )),
        (Layout::PerChannel, None) => {
            let key = entry_key(layout, agent_id, "")?;
            delete_unless(store, layout, &key, |_| true)
        }
        (Layout::Shared, Some(channel)) => {
            let key = entry_key(layout, agent_id, channel)?;
            delete_unless(store, layout, &key, |_| true)
        }
        (Layout::Shared, None) => {
            let mut removed = false;
            for stored in agent_keys(store, agent_id)? {
                removed |= delete_unless(store, layout, &stored.key, |_| true)?;
            }
            Ok(removed)
        }
    }
}

/// Removes `agent_id`'s entries (every channel's, shared) written by the
/// registration `owner`; true when one was removed.
pub fn remove_owned(
    store: &mut impl Store,
    layout: Layout,
    agent_id: &str,
    owner: &Owner,
) -> Result<bool, Error> {
    let owned = |e: Option<&Entry>| e.is_some_and(|e| e.is_owned_by(agent_id, owner));
    match layout {
        Layout::PerChannel => {
            let key = entry_key(layout, agent_id, "")?;
            delete_unless(store, layout, &key, owned)
        }
        Layout::Shared => {
            let mut removed = false;
            for stored in agent_keys(store, agent_id)? {
                removed |= delete_unless(store, layout, &stored.key, owned)?;
            }
            Ok(removed)
        }
    }
}

/// Removes `judged`'s entry only while it is still exactly `judged`.
pub fn evict(store: &mut impl Store, layout: Layout, judged: &Entry) -> Result<bool, Error> {
    let key = entry_key(layout, &judged.agent_id, &judged.channel)?;
    delete_unless(store, layout, &key, |e| e == Some(judged))
}

/// Every entry of `agent_id`, freshest first (shared: one per channel, at
/// most [`MAX_LOOKUP_ALL`]; per-channel: none or one).
pub fn lookup_all(
    store: &mut impl Store,
    layout: Layout,
    agent_id: &str,
) -> Result<Vec<Entry>, Error> {
    match layout {
        Layout::PerChannel => Ok(lookup(store, layout, agent_id)?.into_iter().collect()),
        Layout::Shared => {
            let mut entries: Vec<Entry> = agent_keys(store, agent_id)?
                .into_iter()
                .filter_map(|s| entry_at(layout, &s.key, &s.value))
                .filter(|e| e.is_of(agent_id))
                .collect();
            entries.sort_by_key(|e| std::cmp::Reverse(e.updated_at));
            entries.truncate(MAX_LOOKUP_ALL);
            Ok(entries)
        }
    }
}

/// The entry of `agent_id` (shared: the freshest channel's), if any.
pub fn lookup(
    store: &mut impl Store,
    layout: Layout,
    agent_id: &str,
) -> Result<Option<Entry>, Error> {
    match layout {
        Layout::PerChannel => {
            let key = entry_key(layout, agent_id, "")?;
            Ok(store
                .get(&key)
                .map_err(io)?
                .and_then(|s| entry_at(layout, &key, &s.value))
                .filter(|e| e.is_of(agent_id)))
        }
        Layout::Shared => Ok(lookup_all(store, layout, agent_id)?.into_iter().next()),
    }
}

/// One page of a listing: up to `max` valid entries after key `after`, and
/// the key to continue after (`None` once the listing is over).
pub fn list_page(
    store: &mut impl Store,
    layout: Layout,
    after: Option<&str>,
    max: u32,
) -> Result<(Vec<Entry>, Option<String>), Error> {
    let (items, next) = page(store, layout_prefix(layout), after, max.clamp(1, MAX_RANGE))?;
    let entries = items
        .into_iter()
        .filter_map(|s| entry_at(layout, &s.key, &s.value))
        .collect();
    Ok((entries, next))
}

/// How far ahead of `now` an `updated_at` may be before a sweep takes it
/// for one no writer stamped (as the file registry's).
pub const FUTURE_TOLERANCE_MS: u64 = 3_600_000;

/// One step of a sweep: looks at up to `max` keys of `layout` after
/// `after`, and removes every value that is no entry at its key
/// (malformed, oversized, another key's) and every entry last written more
/// than `max_age_ms` before `now` (or over an hour after it), each only
/// while it is still what was judged.
pub fn sweep_page(
    store: &mut impl Store,
    layout: Layout,
    after: Option<&str>,
    max: u32,
    max_age_ms: u64,
    now: u64,
) -> Result<SweepPage, Error> {
    let (items, next) = page(store, layout_prefix(layout), after, max.clamp(1, MAX_RANGE))?;
    let mut swept = SweepPage {
        examined: items.len() as u64,
        removed: 0,
        next,
    };
    for item in items {
        let stale = match entry_at(layout, &item.key, &item.value) {
            None => true,
            Some(e) => {
                now.saturating_sub(e.updated_at) > max_age_ms
                    || e.updated_at > now.saturating_add(FUTURE_TOLERANCE_MS)
            }
        };
        if stale
            && store
                .delete_if_revision(&item.key, item.revision)
                .map_err(io)?
        {
            swept.removed += 1;
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A store in a map, with a switch that makes the next conditional
    /// change lose its race once (another writer changed the key).
    #[derive(Default)]
    struct MapStore {
        keys: BTreeMap<String, (Vec<u8>, u64, Option<u64>)>,
        revision: u64,
        lose_next_race: Option<Vec<u8>>,
        /// Cuts pages after this many bytes of values (0: no cut).
        cut_pages_at: usize,
    }

    impl MapStore {
        fn page_bytes(&self) -> usize {
            if self.cut_pages_at == 0 {
                usize::MAX
            } else {
                self.cut_pages_at
            }
        }
        fn set(&mut self, key: &str, value: &[u8], lease: Option<u64>) {
            self.revision += 1;
            self.keys
                .insert(key.into(), (value.to_vec(), self.revision, lease));
        }
        fn race(&mut self, key: &str) {
            if let Some(value) = self.lose_next_race.take() {
                self.set(key, &value, None);
            }
        }
    }

    impl Store for MapStore {
        fn get(&mut self, key: &str) -> Result<Option<Stored>, String> {
            Ok(self.keys.get(key).map(|(v, r, _)| Stored {
                key: key.into(),
                value: v.clone(),
                revision: *r,
            }))
        }
        fn put(&mut self, key: &str, value: &[u8], lease: Option<u64>) -> Result<(), String> {
            self.set(key, value, lease);
            Ok(())
        }
        fn put_if_revision(
            &mut self,
            key: &str,
            value: &[u8],
            lease: Option<u64>,
            revision: u64,
        ) -> Result<bool, String> {
            self.race(key);
            let now = self.keys.get(key).map_or(0, |(_, r, _)| *r);
            if now != revision {
                return Ok(false);
            }
            self.set(key, value, lease);
            Ok(true)
        }
        fn delete_if_revision(&mut self, key: &str, revision: u64) -> Result<bool, String> {
            self.race(key);
            if self.keys.get(key).map(|(_, r, _)| *r) != Some(revision) {
                return Ok(false);
            }
            self.keys.remove(key);
            Ok(true)
        }
        fn range(
            &mut self,
            prefix: &str,
            after: Option<&str>,
            limit: u32,
        ) -> Result<(Vec<Stored>, bool), String> {
            let mut all = self
                .keys
                .iter()
                .filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a))
                .map(|(k, (v, r, _))| Stored {
                    key: k.clone(),
                    value: v.clone(),
                    revision: *r,
                });
            // Pages of at most `page_bytes` values' bytes, as a store may cut them.
            let mut page = Vec::new();
            let mut bytes = 0;
            for s in all.by_ref() {
                if page.len() == limit as usize
                    || (!page.is_empty() && bytes + s.value.len() > self.page_bytes())
                {
                    return Ok((page, true));
                }
                bytes += s.value.len();
                page.push(s);
            }
            Ok((page, false))
        }
    }

    fn fields(id: &str, channel: &str, nonce: u64) -> EntryFields {
        EntryFields {
            agent_id: id.into(),
            local_url: "http://127.0.0.1:1".into(),
            block_id: "b".into(),
            pid: 7,
            auth_key: "k".into(),
            channel: channel.into(),
            registration_nonce: nonce,
            ..EntryFields::default()
        }
    }

    #[test]
    fn keys_are_lowercased_file_names_under_their_layout() {
        assert_eq!(
            entry_key(Layout::PerChannel, "Agent-X", "").unwrap(),
            "agents/agent-x.json"
        );
        assert_eq!(
            entry_key(Layout::Shared, "Agent X", "Dev-A").unwrap(),
            "shared/agent%20x/dev-a.json"
        );
        assert!(matches!(
            entry_key(Layout::Shared, "a", ""),
            Err(Error::InvalidField(_))
        ));
        assert!(matches!(
            entry_key(Layout::PerChannel, "", ""),
            Err(Error::InvalidAgentId(_))
        ));
    }

    #[test]
    fn lookups_are_case_insensitive_and_keep_the_spelling() {
        let mut s = MapStore::default();
        write(&mut s, Layout::PerChannel, fields("AgentX", "", 0), None, 5).unwrap();
        let found = lookup(&mut s, Layout::PerChannel, "agentx")
            .unwrap()
            .unwrap();
        assert_eq!(found.agent_id, "AgentX");
        assert_eq!(found.updated_at, 5);
    }

    #[test]
    fn a_value_at_a_key_not_its_own_is_no_entry() {
        let mut s = MapStore::default();
        let other = fields("b", "", 0).into_entry(1).to_json();
        s.set("agents/a.json", &other, None);
        s.set("agents/c.json", b"not json", None);
        assert_eq!(lookup(&mut s, Layout::PerChannel, "a").unwrap(), None);
        let (listed, next) = list_page(&mut s, Layout::PerChannel, None, 10).unwrap();
        assert!(listed.is_empty());
        assert_eq!(next, None);
    }

    #[test]
    fn renewal_refreshes_its_own_restores_a_missing_and_spares_a_successor() {
        let mut s = MapStore::default();
        let l = Layout::PerChannel;
        assert_eq!(
            renew(&mut s, l, fields("a", "", 1), Some(9), 1).unwrap(),
            Renewal::Restored
        );
        assert_eq!(s.keys["agents/a.json"].2, Some(9));
        assert_eq!(
            renew(&mut s, l, fields("a", "", 1), Some(9), 2).unwrap(),
            Renewal::Refreshed
        );
        write(&mut s, l, fields("a", "", 2), None, 3).unwrap();
        assert_eq!(
            renew(&mut s, l, fields("a", "", 1), Some(9), 4).unwrap(),
            Renewal::Superseded
        );
        assert_eq!(
            lookup(&mut s, l, "a").unwrap().unwrap().registration_nonce,
            2
        );
        assert!(matches!(
            renew(&mut s, l, fields("a", "", 0), None, 5),
            Err(Error::InvalidField(_))
        ));
    }

    #[test]
    fn a_renewal_that_loses_its_race_to_a_successor_is_superseded() {
        let mut s = MapStore::default();
        let l = Layout::PerChannel;
        renew(&mut s, l, fields("a", "", 1), None, 1).unwrap();
        // Between the renewal's read and its write, a successor registers.
        s.lose_next_race = Some(fields("a", "", 2).into_entry(2).to_json());
        assert_eq!(
            renew(&mut s, l, fields("a", "", 1), None, 3).unwrap(),
            Renewal::Superseded
        );
        assert_eq!(
            lookup(&mut s, l, "a").unwrap().unwrap().registration_nonce,
            2
        );
    }

    #[test]
    fn an_eviction_spares_an_entry_renewed_after_it_was_judged() {
        let mut s = MapStore::default();
        let l = Layout::PerChannel;
        let judged = write(&mut s, l, fields("a", "", 1), None, 1).unwrap();
        s.lose_next_race = Some(fields("a", "", 1).into_entry(2).to_json());
        assert!(!evict(&mut s, l, &judged).unwrap());
        assert!(lookup(&mut s, l, "a").unwrap().is_some());
        let now = lookup(&mut s, l, "a").unwrap().unwrap();
        assert!(evict(&mut s, l, &now).unwrap());
        assert_eq!(lookup(&mut s, l, "a").unwrap(), None);
    }

    #[test]
    fn removal_by_owner_spares_other_registrations() {
        let mut s = MapStore::default();
        let l = Layout::Shared;
        write(&mut s, l, fields("a", "one", 1), None, 1).unwrap();
        write(&mut s, l, fields("A", "two", 2), None, 2).unwrap();
        let owner = Owner::of(&fields("a", "one", 1).into_entry(0));
        assert!(remove_owned(&mut s, l, "A", &owner).unwrap());
        let left = lookup_all(&mut s, l, "a").unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].channel, "two");
        assert!(!remove_owned(&mut s, l, "a", &owner).unwrap());
        assert!(!remove_owned(&mut s, l, "a", &Owner::default()).unwrap());
    }

    #[test]
    fn the_shared_registry_keeps_one_entry_per_channel_freshest_first() {
        let mut s = MapStore::default();
        let l = Layout::Shared;
        write(&mut s, l, fields("a", "stable", 0), None, 1).unwrap();
        write(&mut s, l, fields("a", "dev", 0), None, 3).unwrap();
        write(&mut s, l, fields("ab", "dev", 0), None, 2).unwrap();
        let all = lookup_all(&mut s, l, "A").unwrap();
        let channels: Vec<_> = all.iter().map(|e| e.channel.as_str()).collect();
        assert_eq!(channels, ["dev", "stable"]);
        assert_eq!(lookup(&mut s, l, "a").unwrap().unwrap().channel, "dev");
        assert!(remove(&mut s, l, "a", Some("dev")).unwrap());
        assert!(remove(&mut s, l, "a", None).unwrap());
        assert!(lookup_all(&mut s, l, "a").unwrap().is_empty());
        assert_eq!(lookup_all(&mut s, l, "ab").unwrap().len(), 1);
        assert!(matches!(
            write(&mut s, l, fields("a", "", 0), None, 1),
            Err(Error::InvalidField(_))
        ));
    }

    #[test]
    fn short_pages_do_not_end_a_listing_and_sweeps_remove_what_is_no_entry() {
        let mut s = MapStore {
            cut_pages_at: 1,
            ..MapStore::default()
        };
        let l = Layout::PerChannel;
        for i in 0..5 {
            write(&mut s, l, fields(&format!("agent-{i}"), "", 0), None, 1_000).unwrap();
        }
        s.set("agents/garbage.json", b"not an entry", None);
        s.set(
            "agents/agent-9.json",
            &fields("other", "", 0).into_entry(1_000).to_json(),
            None,
        );
        let mut seen = 0;
        let mut after = None;
        loop {
            let (entries, next) = list_page(&mut s, l, after.as_deref(), 10).unwrap();
            seen += entries.len();
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, 5, "every entry, one key per page");
        // A sweep: the two that are no entry go; fresh entries stay, stale go.
        s.cut_pages_at = 0;
        let swept = sweep_page(&mut s, l, None, 100, 60_000, 2_000).unwrap();
        assert_eq!((swept.examined, swept.removed, swept.next), (7, 2, None));
        let swept = sweep_page(&mut s, l, None, 100, 60_000, 100_000).unwrap();
        assert_eq!((swept.examined, swept.removed), (5, 5));
        assert!(s.keys.is_empty());
        // One stamped over an hour ahead is no writer's: it goes too.
        write(&mut s, l, fields("ahead", "", 0), None, 10_000_000).unwrap();
        assert_eq!(
            sweep_page(&mut s, l, None, 100, u64::MAX, 1_000)
                .unwrap()
                .removed,
            1
        );
    }

    #[test]
    fn a_listing_pages_through_every_entry_once() {
        let mut s = MapStore::default();
        let l = Layout::PerChannel;
        for i in 0..25 {
            write(&mut s, l, fields(&format!("agent-{i:02}"), "", 0), None, 1).unwrap();
        }
        s.set("shared/x/y.json", b"{}", None);
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (entries, next) = list_page(&mut s, l, after.as_deref(), 10).unwrap();
            seen.extend(entries.into_iter().map(|e| e.agent_id));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let want: Vec<String> = (0..25).map(|i| format!("agent-{i:02}")).collect();
        assert_eq!(seen, want);
    }
}
