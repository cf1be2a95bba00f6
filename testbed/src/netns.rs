//! Entering a network namespace from a thread, and listing/removing named
//! namespaces (`/run/netns/NAME`, the ones `ip netns` manages).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::cmd;

/// Runs `f` on a fresh thread that has joined network namespace `ns`.
///
/// `setns(CLONE_NEWNET)` changes only the calling thread, so sockets created
/// inside `f` belong to `ns` while the rest of the process stays where it is.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let handle = spawn_in_netns(ns, f)?;
    handle
        .join()
        .map_err(|_| anyhow!("thread in netns {ns} panicked"))?
}

/// Like [`in_netns`] but returns the thread handle at once.
pub fn spawn_in_netns<T, F>(ns: &str, f: F) -> Result<thread::JoinHandle<Result<T>>>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    let file =
        File::open(&path).with_context(|| format!("open {path} (does netns {ns} exist?)"))?;
    let ns_owned = ns.to_string();
    Ok(thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            // SAFETY: setns on a valid namespace fd; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!(
                    "setns({ns_owned}) failed: {}",
                    std::io::Error::last_os_error()
                );
            }
            drop(file);
            f()
        })?)
}

/// Names of all namespaces in `/run/netns`.
pub fn list() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

pub fn add(ns: &str) -> Result<()> {
    cmd::ip(None, &["netns", "add", ns])?;
    Ok(())
}

/// Pids of processes living in `ns` (`ip netns pids`).
pub fn pids(ns: &str) -> Vec<i32> {
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "pids", ns]);
    match cmd::run(&mut c, cmd::SHORT) {
        Ok(o) if o.success() => o
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// Deletes `ns` after killing the processes still inside it. Only ever
/// called on namespaces this library created (unique per-run names), so the
/// processes in them are ours.
pub fn delete(ns: &str) -> Result<()> {
    if !exists(ns) {
        return Ok(());
    }
    for _ in 0..50 {
        let p = pids(ns);
        if p.is_empty() {
            break;
        }
        for pid in p {
            // SAFETY: kill(2) on a pid that lives in our own namespace.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    cmd::ip(None, &["netns", "del", ns])?;
    Ok(())
}

/// Deletes every namespace whose name starts with `prefix`; returns them.
pub fn sweep(prefix: &str) -> Vec<String> {
    let mut gone = Vec::new();
    if prefix.len() < 3 {
        // Refuse to sweep with a prefix that could match someone else's.
        return gone;
    }
    for ns in list() {
        if ns.starts_with(prefix) && delete(&ns).is_ok() {
            gone.push(ns);
        }
    }
    gone
}
