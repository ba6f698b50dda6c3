//! Every test that drives the real registry component, as one test binary
//! (each module was once a binary of its own; one binary links wasmtime once).

mod agentmux_today;
mod backends;
// Symlink escapes: creating symlinks on Windows needs a privilege.
#[cfg(unix)]
mod containment;
// Owners in several processes stopped with SIGSTOP; its reasons to be Unix
// only are `stress`'s too (below).
#[cfg(unix)]
mod churn;
mod contract;
// The etcd backend: clusters of Debian's etcd on loopback.
#[cfg(target_os = "linux")]
mod etcd;
mod health;
// Unix modes, FIFOs, devices and other users' files.
#[cfg(unix)]
mod hostile_dir;
mod interop;
mod lifecycle;
mod limits;
// The other hosts (wasmtime CLI, Node.js, Python) are Linux programs here.
#[cfg(unix)]
mod other_hosts;
mod registration;
mod renewal;
mod runtimes;
mod scale;
mod seed_parity;
mod shared;
// Several processes replacing files others are reading. Windows's guarantee
// here comes from the file system's POSIX rename semantics (Windows 10 1809+,
// NTFS), which Wine 8 does not emulate: there, a plain `std::fs::rename` over a
// file another process is reading is refused 86% of the time, and names being
// replaced drop out of directory listings. Run on Unix only.
#[cfg(unix)]
mod stress;
mod watch;
