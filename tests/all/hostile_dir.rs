//! An agents dir holding things no registry wrote: every call returns promptly,
//! reads only regular files, writes through nothing, and cleanup
//! removes what is safe to remove.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::sync::mpsc;
use std::time::Duration;

use agentmux_registry::blocking::Registry;
use agentmux_registry::Error;
use agentmux_registry_tests::{fields, now_ms, owner, Fixture, SeedEntry};
#[cfg(not(target_vendor = "apple"))]
use rustix::fs::{mknodat, FileType, Mode, CWD};

/// Runs `f` on another thread and fails the test if it takes over 20 s: a
/// call stuck in a host file operation cannot be interrupted, so a hang must
/// be caught from outside.
fn within_limit<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} did not return within 20 s: it hangs"))
}

fn valid_entry(id: &str) -> String {
    SeedEntry::new(id, now_ms()).to_json()
}

/// Plants one of each kind of non-entry under an entry name. Returns the names
/// planted and whether a device node could be made (needs privilege).
fn plant_everything(fx: &Fixture) -> bool {
    // A symlink to a valid entry outside.
    let outside = fx.tmp.path().join("outside-sym.json");
    std::fs::write(&outside, valid_entry("sym")).unwrap();
    symlink(&outside, fx.path("sym.json")).unwrap();
    // A hard link to a valid entry outside (same file system).
    let outside = fx.tmp.path().join("outside-hard.json");
    std::fs::write(&outside, valid_entry("hard")).unwrap();
    std::fs::hard_link(&outside, fx.path("hard.json")).unwrap();
    // A FIFO: opening it for reading would block until a writer comes.
    make_fifo(&fx.path("fifo.json"));
    // A socket.
    let _listener = std::os::unix::net::UnixListener::bind(fx.path("sock.json")).unwrap();
    std::mem::forget(_listener);
    // A directory.
    std::fs::create_dir(fx.path("dir.json")).unwrap();
    // A file too large to be an entry, starting like a valid one.
    let mut big = valid_entry("big").into_bytes();
    big.truncate(big.len() - 1);
    big.extend(std::iter::repeat_n(b' ', 70 * 1024));
    big.push(b'}');
    fx.write_raw("big.json", &big);
    make_device(&fx.path("dev.json"))
}

/// Makes a FIFO at `path` (with the `mkfifo` command on macOS, where rustix
/// has no `mknodat`).
fn make_fifo(path: &std::path::Path) {
    #[cfg(not(target_vendor = "apple"))]
    mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    #[cfg(target_vendor = "apple")]
    assert!(std::process::Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(path)
        .status()
        .unwrap()
        .success());
}

/// Makes a character device with /dev/null's numbers at `path`, where
/// permitted (root on Linux); false where it could not.
fn make_device(path: &std::path::Path) -> bool {
    #[cfg(not(target_vendor = "apple"))]
    return mknodat(
        CWD,
        path,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(1, 3),
    )
    .is_ok();
    #[cfg(target_vendor = "apple")]
    {
        let _ = path;
        false
    }
}

const PLANTED: &[&str] = &["sym", "hard", "fifo", "sock", "dir", "big", "dev"];

#[test]
fn no_call_hangs_or_reads_anything_but_a_regular_file() {
    let fx = Fixture::new();
    let has_device = plant_everything(&fx);
    if !has_device {
        eprintln!(
            "note: no device node could be made here (unprivileged); that kind is not covered"
        );
    }
    fx.registry
        .write(fields("real", "http://127.0.0.1:1", "b", 1, "k"))
        .unwrap();
    let registry = fx.registry.clone();

    let (lookups, listed) = within_limit("lookup and list", move || {
        let lookups: Vec<_> = PLANTED
            .iter()
            .map(|id| (*id, registry.lookup(id)))
            .collect();
        (lookups, registry.list())
    });
    for (id, found) in lookups {
        // A hard link is a regular file: the valid entry it holds at its
        // own id's name is read (never written through; see below).
        if id == "hard" {
            assert_eq!(found.unwrap().unwrap().agent_id, "hard");
            continue;
        }
        assert!(
            matches!(found, Ok(None)),
            "{id}: expected no entry, got {found:?}"
        );
    }
    let ids: Vec<String> = listed.unwrap().into_iter().map(|e| e.agent_id).collect();
    assert_eq!(ids, ["hard", "real"]);
}

/// Hard-linked files stay: the registry's own compare-and-remove briefly
/// links an entry back into place, so a second link is not proof of a plant.
#[test]
fn cleanup_removes_every_unsafe_name_without_following_it_and_keeps_directories_and_links() {
    let fx = Fixture::new();
    let has_device = plant_everything(&fx);
    fx.registry
        .write(fields("real", "http://127.0.0.1:1", "b", 1, "k"))
        .unwrap();
    let outside_before = fx.outside_snapshot();
    let registry = fx.registry.clone();

    let removed = within_limit("cleanup", move || {
        registry.cleanup_stale(Duration::from_secs(3600))
    })
    .unwrap();

    let expected_removed = if has_device { 5 } else { 4 };
    assert_eq!(
        removed, expected_removed,
        "sym, fifo, sock, big (and dev) go"
    );
    assert_eq!(fx.names(), ["dir.json", "hard.json", "real.json"]);
    assert_eq!(
        fx.outside_snapshot(),
        outside_before,
        "the link targets are untouched"
    );
}

#[test]
fn a_hard_link_to_a_file_outside_is_not_written_through() {
    let fx = Fixture::new();
    let outside = fx.tmp.path().join("outside-hard.json");
    let original = valid_entry("hard");
    std::fs::write(&outside, &original).unwrap();
    std::fs::hard_link(&outside, fx.path("hard.json")).unwrap();

    fx.registry
        .write(fields("hard", "http://127.0.0.1:2", "b", 1, "mine"))
        .unwrap();

    assert_eq!(std::fs::read_to_string(&outside).unwrap(), original);
    assert_eq!(
        fx.registry.lookup("hard").unwrap().unwrap().auth_key,
        "mine"
    );
}

#[test]
fn write_over_a_directory_fails_cleanly() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.path("d.json")).unwrap();
    let err = fx
        .registry
        .write(fields("d", "u", "b", 1, "k"))
        .unwrap_err();
    // A conflict, as the error kinds promise for a name that is not a
    // regular file, not an I/O failure.
    assert!(
        matches!(&err, Error::Conflict(m) if m.contains("directory")),
        "{err}"
    );
    assert!(fx.path("d.json").is_dir());
    assert_eq!(fx.names(), ["d.json"], "nothing was left behind");
}

#[test]
fn temporary_files_are_swept_only_once_old() {
    let fx = Fixture::new();
    fx.write_raw(".tmp-00000000000000aa", "{\"agent_id\":");
    fx.write_raw(".tmp-00000000000000bb", "{\"agent_id\":");
    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(fx.path(".tmp-00000000000000aa"))
        .unwrap()
        .set_modified(old)
        .unwrap();

    assert_eq!(
        fx.registry
            .cleanup_stale(Duration::from_secs(3600))
            .unwrap(),
        1
    );
    assert_eq!(
        fx.names(),
        [".tmp-00000000000000bb"],
        "a fresh one may be a write in progress"
    );
}

#[test]
fn an_entry_file_holding_another_id_is_never_returned_for_it() {
    let fx = Fixture::new();
    // What agentmux-srv writes for id "a.b": its sanitiser maps it to a_b.json.
    let legacy = SeedEntry::new("a.b", now_ms()).to_json();
    fx.write_raw("a_b.json", &legacy);

    assert_eq!(fx.registry.lookup("a_b").unwrap(), None, "not a_b's entry");
    assert!(
        !fx.registry.remove("a_b").unwrap(),
        "remove leaves another id's entry alone"
    );
    assert_eq!(fx.read_raw("a_b.json"), legacy);
    // It is agentmux-srv's name for "a.b": listed and found as "a.b"'s
    // entry, in any case, and removed with it.
    let listed = fx.registry.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].agent_id, "a.b");
    assert_eq!(fx.registry.lookup("A.B").unwrap(), Some(listed[0].clone()));
    assert!(fx.registry.remove("a.b").unwrap());
    assert!(fx.names().is_empty());
}

/// `a_b.json` is "a_b"'s own name, and agentmux-srv's name for "a.b" too.
/// Writing "a_b" takes the name over from a server entry of "a.b", as the
/// server itself would: an id is never locked out of its own name by
/// another's lossy one.
#[test]
fn an_id_takes_its_own_name_over_from_another_ids_sanitised_entry() {
    let fx = Fixture::new();
    fx.write_raw("a_b.json", SeedEntry::new("a.b", now_ms()).to_json());
    let written = fx.registry.write(fields("a_b", "u", "b", 1, "k")).unwrap();
    assert_eq!(fx.registry.lookup("a_b").unwrap(), Some(written));
    assert_eq!(fx.registry.lookup("a.b").unwrap(), None);
    // A registration's renewal, the same.
    fx.write_raw("a_b.json", SeedEntry::new("a.b", now_ms()).to_json());
    let registration = agentmux_registry::EntryFields {
        registration_nonce: 4,
        ..fields("a_b", "u", "b", 1, "k")
    };
    assert_eq!(
        fx.registry.renew(registration).unwrap(),
        agentmux_registry::Renewal::Restored
    );
    assert_eq!(
        fx.registry
            .lookup("a_b")
            .unwrap()
            .unwrap()
            .registration_nonce,
        4
    );
}

/// When an id has entries under two names (this registry's and
/// agentmux-srv's), lookup, list and lookup-all agree on the freshest, and
/// lookup-all shows both.
#[test]
fn an_id_written_under_two_names_is_read_as_its_freshest_entry() {
    let fx = Fixture::new();
    let older = fx
        .registry
        .write(fields("My.Agent", "http://127.0.0.1:4", "old", 1, "k"))
        .unwrap();
    let mut server = SeedEntry::new("My.Agent", older.updated_at + 5_000);
    server.block_id = "fresh".into();
    fx.write_raw("my_agent.json", server.to_json());
    assert_eq!(
        fx.registry.lookup("my.agent").unwrap().unwrap().block_id,
        "fresh"
    );
    let listed = fx.registry.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].block_id, "fresh");
    let every = fx.registry.lookup_all("MY.AGENT").unwrap();
    let blocks: Vec<&str> = every.iter().map(|e| e.block_id.as_str()).collect();
    assert_eq!(blocks, ["fresh", "old"]);
}

#[test]
fn remove_owned_removes_only_the_callers_own_registration() {
    let fx = Fixture::new();
    let registered = |pid, key: &str, nonce| agentmux_registry::EntryFields {
        registration_nonce: nonce,
        ..fields("a1", "http://127.0.0.1:1", "b", pid, key)
    };
    fx.registry.write(registered(100, "old-key", 1)).unwrap();
    for wrong in [
        owner(100, "wrong-key", 1),
        owner(101, "old-key", 1),
        owner(100, "old-key", 2),
        owner(100, "old-key", 0),
    ] {
        assert!(
            !fx.registry.remove_owned("a1", &wrong).unwrap(),
            "{wrong:?}"
        );
    }
    assert!(fx.registry.lookup("a1").unwrap().is_some());

    // A successor re-registers the id; the old owner's exit path runs late.
    fx.registry.write(registered(200, "new-key", 2)).unwrap();
    assert!(!fx
        .registry
        .remove_owned("a1", &owner(100, "old-key", 1))
        .unwrap());
    assert_eq!(
        fx.registry.lookup("a1").unwrap().unwrap().auth_key,
        "new-key"
    );

    // Any spelling of the id.
    assert!(fx
        .registry
        .remove_owned("A1", &owner(200, "new-key", 2))
        .unwrap());
    assert!(fx.names().is_empty());
    assert!(!fx
        .registry
        .remove_owned("a1", &owner(200, "new-key", 2))
        .unwrap());

    // A plain write (nonce 0) is never removed conditionally, whatever the
    // owner says.
    fx.registry
        .write(fields("a1", "http://127.0.0.1:1", "b", 100, "k"))
        .unwrap();
    assert!(!fx.registry.remove_owned("a1", &owner(100, "k", 0)).unwrap());
    assert!(fx.registry.lookup("a1").unwrap().is_some());
}

#[test]
fn the_agents_dir_is_created_private_and_entries_are_owner_only() {
    let fx = Fixture::new();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fx.agents()), 0o700);
    fx.registry
        .write(fields("a1", "u", "b", 1, "secret"))
        .unwrap();
    assert_eq!(mode(&fx.path("a1.json")), 0o600);
    fx.registry
        .write(fields("a1", "u", "b", 1, "secret2"))
        .unwrap();
    assert_eq!(
        mode(&fx.path("a1.json")),
        0o600,
        "a rewrite is owner-only too"
    );
}

#[test]
fn an_existing_readable_agents_dir_is_tightened() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = tmp.path().join("agents");
    std::fs::create_dir(&agents).unwrap();
    std::fs::set_permissions(&agents, std::fs::Permissions::from_mode(0o755)).unwrap();
    Registry::open(tmp.path()).unwrap();
    assert_eq!(
        std::fs::metadata(&agents).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn an_agents_dir_of_this_user_that_others_could_write_is_adopted() {
    // What older versions left under a umask of 002 (or worse).
    for mode in [0o775, 0o777, 0o1777, 0o1700] {
        let tmp = tempfile::tempdir().unwrap();
        let agents = tmp.path().join("agents");
        std::fs::create_dir(&agents).unwrap();
        let old = agents.join("old.json");
        std::fs::write(&old, SeedEntry::new("old", now_ms()).to_json()).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&agents, std::fs::Permissions::from_mode(mode)).unwrap();
        let registry = Registry::open(tmp.path()).unwrap();
        let mode_of =
            |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode_of(&agents), 0o700, "{mode:o}: tightened");
        assert_eq!(mode_of(&old), 0o600, "{mode:o}: old entries tightened");
        assert!(registry.lookup("old").unwrap().is_some(), "and kept");
        registry.write(fields("new", "u", "b", 1, "k")).unwrap();
    }
}

/// Files of this user's that cannot be trusted after others could write the
/// directory: refused, named, and left untouched (a chmod through a hard link
/// would change a file outside the data dir).
#[test]
fn an_adopted_dir_holding_files_others_could_change_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = tmp.path().join("agents");
    std::fs::create_dir(&agents).unwrap();
    let outside = tmp.path().join("outside.sh");
    std::fs::write(&outside, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::hard_link(&outside, agents.join("linked.json")).unwrap();
    let open_to_all = agents.join("open.json");
    std::fs::write(&open_to_all, SeedEntry::new("open", now_ms()).to_json()).unwrap();
    std::fs::set_permissions(&open_to_all, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mine = agents.join("mine.json");
    std::fs::write(&mine, SeedEntry::new("mine", now_ms()).to_json()).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&agents, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mode_of = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    for attempt in 0..2 {
        let err = Registry::open(tmp.path()).unwrap_err();
        assert!(
            matches!(&err, Error::InsecureDirectory { reason, .. }
                if reason.contains("\"linked.json\" (2 hard links)")
                    && reason.contains("\"open.json\" (writable by others)")
                    && !reason.contains("mine.json")),
            "attempt {attempt}: {err}"
        );
        // Others are locked out, the mark says "not checked", and nothing in
        // it was changed.
        assert_eq!(mode_of(&agents), 0o1700);
        assert_eq!(mode_of(&outside), 0o755, "nothing changed through the link");
        assert_eq!(mode_of(&open_to_all), 0o666);
        assert_eq!(
            mode_of(&mine),
            0o644,
            "nothing tightened before the check passed"
        );
    }
    std::fs::remove_file(agents.join("linked.json")).unwrap();
    std::fs::remove_file(&open_to_all).unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    assert_eq!(mode_of(&agents), 0o700);
    assert_eq!(mode_of(&mine), 0o600);
    assert!(registry.lookup("mine").unwrap().is_some());
}

/// A test that cannot run here (it needs root, or `chattr`) is skipped with a
/// note, unless `AGENTMUX_REQUIRE_ROOT=1` (as `.ci/run` sets), which makes it
/// a failure.
fn skip_unless_required(why: &str) {
    if std::env::var("AGENTMUX_REQUIRE_ROOT").is_ok_and(|v| v == "1") {
        panic!("cannot run, and AGENTMUX_REQUIRE_ROOT=1 requires it: {why}");
    }
    eprintln!("note: skipped: {why}");
}

/// A data dir holding an empty `agents/`, for a test that gives files to
/// another user: only root can, so elsewhere `None` (and the test is skipped).
fn agents_dir_as_root() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if !rustix::process::geteuid().is_root() {
        skip_unless_required("needs root to create another user's file");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let agents = tmp.path().join("agents");
    std::fs::create_dir(&agents).unwrap();
    Some((tmp, agents))
}

#[test]
fn an_agents_dir_others_could_write_holding_their_files_is_refused_naming_them() {
    let Some((tmp, agents)) = agents_dir_as_root() else {
        return;
    };
    std::fs::write(agents.join("planted.json"), "{}").unwrap();
    std::fs::write(agents.join("mine.json"), "{}").unwrap();
    let escape = "esc\u{1b}[2J.json";
    std::fs::write(agents.join(escape), "{}").unwrap();
    // A name that reads like two entries of the list.
    let forged = "a.json (uid 0), b.json";
    std::fs::write(agents.join(forged), "{}").unwrap();
    for name in ["planted.json", escape, forged] {
        rustix::fs::chown(
            agents.join(name),
            Some(rustix::fs::Uid::from_raw(54321)),
            None,
        )
        .unwrap();
    }
    std::fs::set_permissions(&agents, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Refused every time, not just the first.
    for attempt in 0..2 {
        let err = Registry::open(tmp.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, Error::InsecureDirectory { reason, .. }
                if reason.contains("\"planted.json\" (uid 54321)")
                    && reason.contains("\"a.json (uid 0), b.json\" (uid 54321)")
                    && !reason.contains("mine.json")),
            "attempt {attempt}: {err}"
        );
        assert!(
            !text.contains('\u{1b}') && text.contains("esc\\u{1b}[2J.json"),
            "{text:?}"
        );
        assert_eq!(
            std::fs::metadata(&agents).unwrap().permissions().mode() & 0o7777,
            0o1700
        );
    }
    // Once the planted files are gone, it is adopted.
    for name in ["planted.json", escape, forged] {
        std::fs::remove_file(agents.join(name)).unwrap();
    }
    Registry::open(tmp.path()).unwrap();
    assert_eq!(
        std::fs::metadata(&agents).unwrap().permissions().mode() & 0o7777,
        0o700
    );
}

/// Issue: adoption closed the directory to 0700 before checking it, so a
/// second process opening it meanwhile, or any process after a crash
/// mid-check, trusted what others had planted. The mark stays until the
/// check has passed.
#[test]
fn a_directory_whose_adoption_was_interrupted_is_checked_again() {
    let Some((tmp, agents)) = agents_dir_as_root() else {
        return;
    };
    let planted = agents.join("evil.json");
    std::fs::write(&planted, SeedEntry::new("evil", now_ms()).to_json()).unwrap();
    rustix::fs::chown(&planted, Some(rustix::fs::Uid::from_raw(54321)), None).unwrap();
    // What a process killed after closing the directory, before its check
    // finished, leaves behind.
    std::fs::set_permissions(&agents, std::fs::Permissions::from_mode(0o1700)).unwrap();
    let err = Registry::open(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, Error::InsecureDirectory { reason, .. } if reason.contains("evil.json")),
        "{err}"
    );
}

#[test]
fn an_agents_dir_that_is_a_symlink_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    symlink(&elsewhere, tmp.path().join("agents")).unwrap();
    let err = Registry::open(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, Error::InsecureDirectory { reason, .. } if reason.contains("symbolic link")),
        "{err}"
    );
}

#[test]
fn an_agents_dir_owned_by_another_user_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = tmp.path().join("agents");
    std::fs::create_dir(&agents).unwrap();
    std::fs::set_permissions(&agents, std::fs::Permissions::from_mode(0o700)).unwrap();
    let other = rustix::fs::Uid::from_raw(rustix::process::geteuid().as_raw() + 4242);
    if rustix::fs::chown(&agents, Some(other), None).is_err() {
        eprintln!("note: cannot chown here (unprivileged): another owner cannot be set up");
        return;
    }
    let err = Registry::open(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, Error::InsecureDirectory { reason, .. } if reason.contains("owned by uid")),
        "{err}"
    );
}

#[test]
fn a_deleted_and_recreated_agents_dir_is_followed() {
    let fx = Fixture::new();
    fx.registry
        .write(fields("before", "u", "b", 1, "k"))
        .unwrap();
    std::fs::remove_dir_all(fx.agents()).unwrap();
    std::fs::create_dir(fx.agents()).unwrap();
    std::fs::set_permissions(fx.agents(), std::fs::Permissions::from_mode(0o700)).unwrap();
    fx.write_raw("other.json", valid_entry("other"));

    // A write checks at once: it lands in the new directory.
    fx.registry
        .write(fields("after", "u", "b", 1, "k"))
        .unwrap();
    assert_eq!(fx.names(), ["after.json", "other.json"]);
    // Read-only calls check at most every 100 ms.
    std::thread::sleep(Duration::from_millis(150));
    assert!(
        fx.registry.lookup("other").unwrap().is_some(),
        "sees the new directory"
    );

    std::fs::remove_dir_all(fx.agents()).unwrap();
    fx.registry
        .write(fields("again", "u", "b", 1, "k"))
        .unwrap();
    assert_eq!(
        fx.names(),
        ["again.json"],
        "a deleted directory is recreated"
    );
}

/// Makes one file impossible to rename or unlink, even for root, until
/// dropped: the immutable attribute (`chattr +i`). `None` where it cannot be
/// set (not root, no `chattr`, or a file system without it).
struct Unremovable(std::path::PathBuf);

impl Unremovable {
    fn set(path: &std::path::Path) -> Option<Unremovable> {
        let set = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .is_ok_and(|out| out.status.success());
        set.then(|| Unremovable(path.to_path_buf()))
    }
}

impl Drop for Unremovable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// Issue: a name a sweep could not remove was skipped silently, so
/// `cleanup` reported success while a stale entry stayed forever. It is now
/// counted, with the first reason, and the rest of the sweep goes on.
#[test]
fn a_name_a_sweep_cannot_remove_is_counted_and_explained() {
    let fx = Fixture::new();
    fx.write_raw("stuck.json", SeedEntry::new("stuck", 1).to_json());
    fx.write_raw("old.json", SeedEntry::new("old", 1).to_json());
    let Some(_stuck) = Unremovable::set(&fx.path("stuck.json")) else {
        skip_unless_required("cannot make a file immutable here (needs root and chattr)");
        return;
    };
    let mut last = None;
    let removed = fx
        .registry
        .cleanup_stale_with_progress(Duration::from_secs(3600), |p| last = Some(p))
        .unwrap();
    assert_eq!(removed, 1, "the other stale entry is still removed");
    let last = last.expect("progress");
    assert_eq!((last.removed, last.failed), (1, 1));
    let why = last.first_failure.expect("a reason");
    assert!(why.contains("stuck.json"), "{why}");
    assert_eq!(fx.names(), ["stuck.json"]);
}

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn set_mode(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Whether `gid` is this user's private group by the host's documented rule
/// (checked here independently): this user's primary group in /etc/passwd,
/// nobody else's, and listed in /etc/group with no other member.
fn is_my_private_group(gid: u32) -> bool {
    let me = rustix::process::geteuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let mut names = Vec::new();
    let mut primary = false;
    for fields in passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
        let [name, _, uid, primary_gid, ..] = fields[..] else {
            continue;
        };
        let (Ok(uid), Ok(primary_gid)) = (uid.parse::<u32>(), primary_gid.parse::<u32>()) else {
            continue;
        };
        if uid == me {
            names.push(name.to_owned());
            primary |= primary_gid == gid;
        } else if primary_gid == gid {
            return false;
        }
    }
    let entries: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4 && f[2].parse() == Ok(gid))
        .collect();
    primary
        && !entries.is_empty()
        && entries.iter().all(|f| {
            f[3].split(',')
                .all(|m| m.is_empty() || names.iter().any(|n| n == m))
        })
}

/// Lays out `agents/` as the old module left it (mode `dir_mode`, two
/// entries of mode `file_mode`, group this process's), opens it, and checks
/// it was adopted: owner-only modes, entries kept, writes and lookups work.
fn legacy_layout_is_adopted(dir_mode: u32, file_mode: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let agents = tmp.path().join("agents");
    std::fs::create_dir(&agents).unwrap();
    let gid = rustix::process::getegid();
    let files = ["old-1.json", "old-2.json"];
    for (name, id) in files.iter().zip(["old-1", "old-2"]) {
        let path = agents.join(name);
        std::fs::write(&path, SeedEntry::new(id, now_ms()).to_json()).unwrap();
        rustix::fs::chown(&path, None, Some(gid)).unwrap();
        set_mode(&path, file_mode);
    }
    rustix::fs::chown(&agents, None, Some(gid)).unwrap();
    set_mode(&agents, dir_mode);

    let registry = Registry::open(tmp.path())
        .unwrap_or_else(|e| panic!("{dir_mode:o}/{file_mode:o} layout refused: {e}"));
    assert_eq!(mode_of(&agents), 0o700, "the directory ends owner-only");
    for name in files {
        assert_eq!(mode_of(&agents.join(name)), 0o600, "{name} ends owner-only");
    }
    let old = registry.lookup("old-1").unwrap().expect("old entries kept");
    assert_eq!(old.auth_key, "key-old-1");
    registry
        .write(fields("new", "http://127.0.0.1:2", "b", 1, "k"))
        .unwrap();
    assert_eq!(registry.lookup("new").unwrap().unwrap().auth_key, "k");
    assert_eq!(mode_of(&agents.join("new.json")), 0o600);
    assert_eq!(registry.list().unwrap().len(), 3);
}

/// Issue: under umask 002 (users with a private group) the old module left
/// `agents/` 0775 with 0664 files; group write counted as "writable by
/// others", so the directory was refused and left 01700 for good.
#[test]
fn the_umask_002_layout_with_the_users_private_group_is_adopted_and_usable() {
    let gid = rustix::process::getegid().as_raw();
    if !is_my_private_group(gid) {
        eprintln!("note: skipped: this user's group {gid} is not a private group here");
        return;
    }
    legacy_layout_is_adopted(0o775, 0o664);
}

/// Issue: a 0755 directory was made 0700, but its 0644 files (auth keys)
/// were left readable by others.
#[test]
fn the_umask_022_layout_is_adopted_with_owner_only_files() {
    legacy_layout_is_adopted(0o755, 0o644);
}

/// A group other users are in: one with members in /etc/group, else a gid
/// nobody here is in (`None` name), which is no one's private group either.
fn a_shared_group() -> (u32, Option<String>) {
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && !f[3].is_empty() && f[2].parse::<u32>().is_ok())
        .map(|f| (f[2].parse().unwrap(), Some(f[0].to_owned())))
        .unwrap_or((54321, None))
}

/// What another user really could have written is still refused, naming
/// the file and why, while this user's private-group files are not named.
#[test]
fn a_file_writable_by_a_shared_group_or_by_all_is_refused_naming_it_and_why() {
    let Some((tmp, agents)) = agents_dir_as_root() else {
        return;
    };
    let (shared_gid, shared_name) = a_shared_group();
    let shared = agents.join("shared.json");
    std::fs::write(&shared, SeedEntry::new("shared", now_ms()).to_json()).unwrap();
    rustix::fs::chown(&shared, None, Some(rustix::fs::Gid::from_raw(shared_gid))).unwrap();
    set_mode(&shared, 0o664);
    let world = agents.join("world.json");
    std::fs::write(&world, SeedEntry::new("world", now_ms()).to_json()).unwrap();
    set_mode(&world, 0o666);
    let private_group = is_my_private_group(rustix::process::getegid().as_raw());
    let mine = agents.join("mine.json");
    std::fs::write(&mine, SeedEntry::new("mine", now_ms()).to_json()).unwrap();
    set_mode(&mine, if private_group { 0o664 } else { 0o644 });
    set_mode(&agents, 0o775);

    let err = Registry::open(tmp.path()).unwrap_err();
    let Error::InsecureDirectory { reason, .. } = &err else {
        panic!("{err}");
    };
    let group = match &shared_name {
        Some(name) => format!("group {name:?} (gid {shared_gid})"),
        None => format!("group {shared_gid}"),
    };
    assert!(
        reason.contains(&format!(
            "\"shared.json\" (writable by {group}, which is not this user's private group)"
        )),
        "{err}"
    );
    assert!(
        reason.contains("\"world.json\" (writable by others)"),
        "{err}"
    );
    assert!(!reason.contains("mine.json"), "{err}");
    assert_eq!(mode_of(&agents), 0o1700, "locked, and marked unchecked");
    assert_eq!(
        mode_of(&shared),
        0o664,
        "nothing changed before the check passed"
    );
    assert_eq!(mode_of(&world), 0o666);

    std::fs::remove_file(&shared).unwrap();
    std::fs::remove_file(&world).unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    assert_eq!((mode_of(&agents), mode_of(&mine)), (0o700, 0o600));
    assert!(registry.lookup("mine").unwrap().is_some());
}

/// With an ACL, a file's group bits are the ACL's mask: 0664 may let a named
/// user write it, whatever its group is.
#[test]
fn a_group_writable_file_with_an_acl_is_refused_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = tmp.path().join("agents");
    std::fs::create_dir(&agents).unwrap();
    let file = agents.join("acl.json");
    std::fs::write(&file, SeedEntry::new("acl", now_ms()).to_json()).unwrap();
    set_mode(&file, 0o644);
    // user::rw- user:54321:rw- group::r-- mask::rw- other::r--
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 6, 54321),
        (0x04, 4, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    let set = rustix::fs::setxattr(
        &file,
        "system.posix_acl_access",
        &acl,
        rustix::fs::XattrFlags::empty(),
    );
    if let Err(e) = set {
        eprintln!("note: skipped: no POSIX ACLs here ({e})");
        return;
    }
    assert_eq!(mode_of(&file), 0o664, "the mask shows as group bits");
    set_mode(&agents, 0o775);

    let err = Registry::open(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, Error::InsecureDirectory { reason, .. }
            if reason.contains("\"acl.json\" (group-writable with an ACL: other users may write it)")),
        "{err}"
    );
}

/// Issue: adoption chmodded `agents` by name, so someone able to write the
/// data dir could swap in a symlink between the steps: the chmods landed on
/// the link's target and the registry ran in a directory still open to them.
/// Every chmod now goes through the descriptor that was checked, and the
/// open is refused when the name no longer leads there.
#[test]
fn agents_swapped_for_a_symlink_during_adoption_gets_no_chmod_and_is_not_served() {
    use agentmux_registry::test_hooks::{on_adoption_step, AdoptionStep};
    for step in [
        AdoptionStep::Opened,
        AdoptionStep::Closed,
        AdoptionStep::Checked,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().to_path_buf();
        let agents = data.join("agents");
        let moved = data.join("agents.moved");
        let decoy = data.join("decoy");
        std::fs::create_dir(&agents).unwrap();
        std::fs::write(
            agents.join("victim.json"),
            SeedEntry::new("victim", now_ms()).to_json(),
        )
        .unwrap();
        set_mode(&agents.join("victim.json"), 0o644);
        set_mode(&agents, 0o775);
        std::fs::create_dir(&decoy).unwrap();
        let planted = decoy.join("victim.json");
        let mut forged = SeedEntry::new("victim", now_ms());
        forged.local_url = "http://127.0.0.1:6666".into();
        std::fs::write(&planted, forged.to_json()).unwrap();
        set_mode(&planted, 0o666);
        set_mode(&decoy, 0o777);

        let swap = {
            let (agents, moved) = (agents.clone(), moved.clone());
            move |at: AdoptionStep| {
                if at == step {
                    std::fs::rename(&agents, &moved).unwrap();
                    symlink("decoy", &agents).unwrap();
                }
            }
        };
        let hook = on_adoption_step(&data, swap);
        let opened = Registry::open(&data);
        drop(hook);

        assert_eq!(
            mode_of(&decoy),
            0o777,
            "{step:?}: a chmod landed on the link's target"
        );
        assert_eq!(mode_of(&planted), 0o666, "{step:?}");
        match opened {
            Err(Error::InsecureDirectory { reason, .. }) => {
                assert!(
                    reason.contains("replaced while it was being adopted"),
                    "{reason}"
                )
            }
            Err(e) => panic!("{step:?}: {e}"),
            Ok(_) => panic!(
                "{step:?}: opened although `agents` was swapped; the directory checked is {:o}",
                mode_of(&moved)
            ),
        }
        // The chmods all landed on the directory that was checked.
        assert_eq!(mode_of(&moved), 0o700, "{step:?}");
        assert_eq!(mode_of(&moved.join("victim.json")), 0o600, "{step:?}");
    }
}

/// The same race, undone before the end: the name leads back to the checked
/// directory, which was made private through its descriptor and is served.
#[test]
fn agents_swapped_and_swapped_back_during_adoption_is_served_private() {
    use agentmux_registry::test_hooks::{on_adoption_step, AdoptionStep};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().to_path_buf();
    let agents = data.join("agents");
    let decoy = data.join("decoy");
    std::fs::create_dir(&agents).unwrap();
    std::fs::write(
        agents.join("victim.json"),
        SeedEntry::new("victim", now_ms()).to_json(),
    )
    .unwrap();
    set_mode(&agents.join("victim.json"), 0o644);
    set_mode(&agents, 0o775);
    std::fs::create_dir(&decoy).unwrap();
    set_mode(&decoy, 0o777);

    let swap = {
        let (agents, moved) = (agents.clone(), data.join("agents.moved"));
        move |at: AdoptionStep| match at {
            AdoptionStep::Opened => {
                std::fs::rename(&agents, &moved).unwrap();
                symlink("decoy", &agents).unwrap();
            }
            AdoptionStep::Checked => {
                std::fs::remove_file(&agents).unwrap();
                std::fs::rename(&moved, &agents).unwrap();
            }
            _ => {}
        }
    };
    let hook = on_adoption_step(&data, swap);
    let registry = Registry::open(&data).unwrap();
    drop(hook);

    assert_eq!(
        mode_of(&decoy),
        0o777,
        "no chmod landed on the link's target"
    );
    assert_eq!(mode_of(&agents), 0o700);
    assert_eq!(mode_of(&agents.join("victim.json")), 0o600);
    registry
        .write(fields("new", "http://127.0.0.1:2", "b", 1, "k"))
        .unwrap();
    assert!(agents.join("new.json").exists() && !decoy.join("new.json").exists());
    assert_eq!(
        registry.lookup("victim").unwrap().unwrap().auth_key,
        "key-victim"
    );
}

/// Issue: a data dir other users can write was not flagged at all. They
/// cannot reach entries, but can rename or replace `agents`; callers can
/// now see that (and `Registry::open` logs it).
#[test]
fn a_data_dir_others_can_write_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    set_mode(&data, 0o777);
    let registry = Registry::open(&data).unwrap();
    registry.write(fields("a1", "u", "b", 1, "k")).unwrap();
    let warning = agentmux_registry::data_dir_warning(&data)
        .unwrap()
        .expect("a data dir writable by all is reported");
    assert!(
        warning.contains(&data.display().to_string())
            && warning.contains("can be changed by other users (writable by others)"),
        "{warning}"
    );

    set_mode(&data, 0o700);
    assert_eq!(agentmux_registry::data_dir_warning(&data).unwrap(), None);
    if is_my_private_group(rustix::process::getegid().as_raw()) {
        set_mode(&data, 0o775);
        assert_eq!(
            agentmux_registry::data_dir_warning(&data).unwrap(),
            None,
            "this user's private group is no one else"
        );
    }
}
