//! Shared fixtures for the tests that drive the registry component.

#[cfg(target_os = "linux")]
pub mod etcd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentmux_registry::blocking::Registry;
use serde::{Deserialize, Serialize};

/// The on-disk record exactly as the original in-process registry declared
/// it, used to produce and check files in its format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedEntry {
    pub agent_id: String,
    pub local_url: String,
    pub block_id: String,
    pub pid: u32,
    pub updated_at: u64,
    #[serde(default)]
    pub auth_key: String,
}

impl SeedEntry {
    pub fn new(agent_id: &str, updated_at: u64) -> SeedEntry {
        SeedEntry {
            agent_id: agent_id.into(),
            local_url: "http://127.0.0.1:4100".into(),
            block_id: format!("block-{agent_id}"),
            pid: 4242,
            updated_at,
            auth_key: format!("key-{agent_id}"),
        }
    }

    /// The bytes the original registry wrote for this entry.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// How long a test waits for something that must happen before giving up.
/// Only a guard, so that a failing test ends instead of hanging: tests assert
/// what happened (counts, states), never how long it took.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// Polls `check` until it holds (true), or [`GIVE_UP_AFTER`] (false).
pub fn wait_until(mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > GIVE_UP_AFTER {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the wall clock has moved past `ms` (Unix milliseconds), so
/// that an entry stamped `ms` is older than a sweep's maximum age of zero.
pub fn wait_past_ms(ms: u64) {
    assert!(wait_until(|| now_ms() > ms), "the clock stands at {ms}");
}

/// Runs the test `name` (its full path, e.g. `module::test`) of the current
/// test binary alone in a child process, with `env` set to `1` there, and
/// fails unless it passed. For tests that need a process of their own:
/// counting its threads, or process-wide state that must start out unset.
/// The test checks `env` to tell that it is the child.
pub fn run_alone_in_a_child(name: &str, env: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(env, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} in a child process: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temp dir holding a data dir (`data/`, with `data/agents/`) and files
/// outside it that the component must never reach.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub registry: Registry,
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("outside.txt"), "outside").unwrap();
        let registry = Registry::open(tmp.path().join("data")).unwrap();
        Fixture { tmp, registry }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn agents(&self) -> PathBuf {
        self.data_dir().join("agents")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.agents().join(name)
    }

    pub fn write_raw(&self, name: &str, content: impl AsRef<[u8]>) {
        std::fs::write(self.path(name), content).unwrap();
    }

    pub fn read_raw(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    /// Names in the agents directory.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.agents())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Every path under the temp dir except the agents directory, with its
    /// content (files) or a marker (directories, links): what must not change.
    pub fn outside_snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut snap = BTreeMap::new();
        walk(self.tmp.path(), &self.agents(), &mut snap);
        snap
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

fn walk(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path == skip {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.insert(path.clone(), "<dir>".into());
            walk(&path, skip, out);
        } else if meta.is_file() {
            out.insert(
                path.clone(),
                std::fs::read_to_string(&path).unwrap_or_default(),
            );
        } else {
            out.insert(path, format!("<{:?}>", meta.file_type()));
        }
    }
}

/// The fields of a plain write, in the order tests read best.
pub fn fields(
    agent_id: &str,
    local_url: &str,
    block_id: &str,
    pid: u32,
    auth_key: &str,
) -> agentmux_registry::EntryFields {
    agentmux_registry::EntryFields {
        agent_id: agent_id.into(),
        local_url: local_url.into(),
        block_id: block_id.into(),
        pid,
        auth_key: auth_key.into(),
        ..Default::default()
    }
}

/// The owner of the registration `nonce`.
pub fn owner(pid: u32, auth_key: &str, nonce: u64) -> agentmux_registry::Owner {
    agentmux_registry::Owner {
        pid,
        auth_key: auth_key.into(),
        registration_nonce: nonce,
    }
}

/// The ids `list` returns, in its order.
pub fn listed_ids(registry: &Registry) -> Vec<String> {
    registry
        .list()
        .unwrap()
        .into_iter()
        .map(|entry| entry.agent_id)
        .collect()
}

/// Held while a test loads every core (many writer threads or processes) or
/// needs the machine quiet (heartbeats of a few milliseconds judged against
/// sweeps), so that no two of them run at once in the test binary: the
/// first kind would starve the second of the time its judgments assume.
pub fn one_heavy_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed while holding it leaves nothing to repair.
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
