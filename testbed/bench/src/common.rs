//! Helpers shared by the benchmark binaries (`bench-throughput`,
//! `bench-shaping`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use vtap_testbed::Testbed;
use vtap_testbed::cmd::{self, SHORT};

/// Set by the signal handler: stop at the next check.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted by a signal");
    }
    Ok(())
}

pub fn env_num(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// nsfs inode numbers of the testbed's namespaces.
pub fn netns_inodes(tb: &Testbed) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    tb.namespaces()
        .iter()
        .filter_map(|ns| std::fs::metadata(format!("/run/netns/{ns}")).ok())
        .map(|m| m.ino())
        .collect()
}

pub fn shell(program: &str, args: &[&str]) -> String {
    cmd::run(Command::new(program).args(args), SHORT)
        .map(|o| o.stdout.trim().to_string())
        .unwrap_or_default()
}

pub fn tc(tb: &Testbed, args: &[&str]) -> Result<cmd::Output> {
    let mut c = Command::new("tc");
    c.arg("-n").arg(&tb.host_ns).args(args);
    cmd::run_ok(&mut c, SHORT)
}

pub fn workspace_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}
