//! etcd clusters on loopback for the tests: started by the tests themselves
//! from Debian's `etcd` (found on `PATH`), each member in its own temporary
//! data directory, stopped (and its directory removed) on drop.
//!
//! Where `etcd` is not installed, [`Cluster::start`] returns `None` after
//! printing a note, and the test skips; with `AGENTMUX_REQUIRE_HOSTS=1` (as
//! `.ci/run` sets) it fails instead.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One member of a cluster.
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    data_dir: PathBuf,
    process: Option<Child>,
}

/// A cluster of etcd members on loopback ports.
pub struct Cluster {
    pub members: Vec<Member>,
    _dir: tempfile::TempDir,
    initial_cluster: String,
    /// Flags every member gets (TLS), and the ones etcdctl needs with them.
    member_args: Vec<String>,
    etcdctl_args: Vec<String>,
}

/// Certificates for a cluster that speaks TLS to its clients and checks
/// theirs: a CA, the members' certificate (for 127.0.0.1) and a client's,
/// all PEM files in `dir`, made with `openssl`.
pub struct Certificates {
    pub dir: PathBuf,
}

impl Certificates {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    /// Makes them in `dir`.
    pub fn make(dir: &std::path::Path) -> Certificates {
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(dir)
                .args(args)
                .output()
                .expect("running openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=agentmux-test-ca",
        ]);
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ]);
        }
        Certificates {
            dir: dir.to_path_buf(),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Whether a missing `etcd` fails the test rather than skipping it.
fn required() -> bool {
    std::env::var("AGENTMUX_REQUIRE_HOSTS").is_ok_and(|v| v == "1")
}

fn etcd_installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Cluster {
    /// Starts `size` members and waits until the cluster answers; `None`
    /// (after a note) where `etcd` is not installed and not required.
    pub fn start(size: usize) -> Option<Cluster> {
        Self::start_with(size, None)
    }

    /// [`Cluster::start`], speaking TLS to clients and requiring their
    /// certificates (signed by `certificates`' CA) when given.
    pub fn start_with(size: usize, certificates: Option<&Certificates>) -> Option<Cluster> {
        if !etcd_installed() {
            assert!(
                !required(),
                "etcd is required (AGENTMUX_REQUIRE_HOSTS=1) but not installed: \
                 apt-get install etcd-server etcd-client"
            );
            eprintln!("note: etcd is not installed (Debian: etcd-server): skipping this test");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let scheme = if certificates.is_some() {
            "https"
        } else {
            "http"
        };
        let (member_args, etcdctl_args) = match certificates {
            None => (Vec::new(), Vec::new()),
            Some(c) => {
                let path = |name: &str| c.dir.join(name).display().to_string();
                (
                    vec![
                        "--cert-file".into(),
                        path("server.pem"),
                        "--key-file".into(),
                        path("server.key"),
                        "--trusted-ca-file".into(),
                        path("ca.pem"),
                        "--client-cert-auth".into(),
                    ],
                    vec![
                        "--cacert".into(),
                        path("ca.pem"),
                        "--cert".into(),
                        path("client.pem"),
                        "--key".into(),
                        path("client.key"),
                    ],
                )
            }
        };
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("m{i}")),
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            members,
            _dir: dir,
            initial_cluster,
            member_args,
            etcdctl_args,
        };
        for i in 0..size {
            cluster.launch(i);
        }
        cluster.wait_healthy(Duration::from_secs(30));
        Some(cluster)
    }

    fn launch(&mut self, i: usize) {
        let member = &self.members[i];
        let child = Command::new("etcd")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.client_url])
            .args(["--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "agentmux-registry-tests"])
            .args(&self.member_args)
            // Faster elections than the defaults (100 ms / 1 s), so a lost
            // leader is replaced within about a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd");
        self.members[i].process = Some(child);
    }

    /// Every member's client URL, comma-separated (the CLI's `--etcd`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until `etcdctl endpoint health` passes for every running member.
    pub fn wait_healthy(&self, within: Duration) {
        let running: Vec<&str> = self
            .members
            .iter()
            .filter(|m| m.process.is_some())
            .map(|m| m.client_url.as_str())
            .collect();
        let deadline = Instant::now() + within;
        loop {
            let healthy = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(&self.etcdctl_args)
                .args(["--endpoints", &running.join(","), "endpoint", "health"])
                .args(["--command-timeout", "1s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills member `i` (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        // The same command: etcd ignores the --initial-* flags once its
        // data directory holds a member.
        self.launch(i);
    }

    /// Makes etcdctl (and the health checks) authenticate as `user`
    /// (`name:password`), once the cluster has auth enabled.
    pub fn etcdctl_user(&mut self, user: &str) {
        self.etcdctl_args
            .extend(["--user".to_string(), user.to_string()]);
    }

    /// Runs etcdctl against the cluster (with its certificates); its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(&self.etcdctl_args)
            .args(["--endpoints", &self.endpoints()])
            .args(args)
            .output()
            .expect("running etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends `signal` (e.g. `SIGSTOP`, `SIGCONT`) to member `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        if let Some(child) = &self.members[i].process {
            let status = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .expect("running kill");
            assert!(status.success(), "kill -{signal} failed");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            // A stopped member must be resumed to die promptly.
            self.signal(i, "CONT");
            self.kill(i);
        }
    }
}
