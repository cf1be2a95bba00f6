//! Running the real `vtap daemon` inside the testbed's host namespace, with a
//! policy directory written from strings, and talking HTTP to it over that
//! namespace's loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::cmd::{self, BgProcess};
use crate::metrics::Metrics;
use crate::netns::in_netns;
use crate::testbed::Testbed;

/// Where the `vtap` binary is: `$VTAP_BIN`, else `target/debug/vtap` of this
/// workspace (honouring `$CARGO_TARGET_DIR`).
pub fn vtap_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VTAP_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    target.join("debug").join("vtap")
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunk header"))?;
        let size_s = std::str::from_utf8(&b[..nl])?
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        let size =
            usize::from_str_radix(size_s, 16).map_err(|_| anyhow!("bad chunk size {size_s:?}"))?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
}

/// A minimal HTTP/1.1 request (`Connection: close`) from inside `ns`.
pub fn http_request(
    ns: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<HttpResponse> {
    let req = match body {
        Some(b) => format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    };
    let what = format!("{method} http://{addr}{path} in {ns}");
    let raw = in_netns(ns, move || -> Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        let mut v = Vec::new();
        s.read_to_end(&mut v)?;
        Ok(v)
    })
    .with_context(|| what.clone())?;
    parse_http_response(&raw, &what)
}

/// Parses a raw HTTP/1.1 response (status, headers, chunked or plain body).
pub fn parse_http_response(raw: &[u8], what: &str) -> Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{what}: no HTTP header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{what}: bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body).with_context(|| what.to_string())?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Polls `cond` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `vtap daemon` running in the testbed's host namespace. Dropping the
/// handle stops it (and prints its log if the thread is panicking).
#[derive(Debug)]
pub struct Daemon<'a> {
    tb: &'a Testbed,
    proc: BgProcess<'a>,
    pub policy_dir: PathBuf,
    /// `--state-dir` of the daemon (captures are under `captures/`).
    pub state_dir: PathBuf,
    pub addr: SocketAddr,
}

/// Default port of the daemon inside the host namespace (its own loopback).
pub const DAEMON_PORT: u16 = 7470;

impl Testbed {
    /// Writes `policies` (file name, YAML text) into a fresh directory,
    /// starts `vtap daemon --policies DIR --listen 127.0.0.1:7470` in the host
    /// namespace and waits until `/readyz` answers 200 (bounded).
    pub fn start_daemon(&self, policies: &[(&str, &str)]) -> Result<Daemon<'_>> {
        self.start_daemon_with(policies, &[])
    }

    /// Like [`Testbed::start_daemon`] with extra daemon arguments.
    pub fn start_daemon_with(
        &self,
        policies: &[(&str, &str)],
        extra: &[&str],
    ) -> Result<Daemon<'_>> {
        self.start_daemon_prepared(policies, extra, |_| Ok(()))
    }

    /// Like [`Testbed::start_daemon_with`], calling `prepare(state_dir)`
    /// before the daemon starts (the daemon runs in its own mount
    /// namespace: a filesystem mounted there later would not reach it).
    pub fn start_daemon_prepared(
        &self,
        policies: &[(&str, &str)],
        extra: &[&str],
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Daemon<'_>> {
        let bin = vtap_bin();
        if !bin.exists() {
            bail!(
                "vtap binary not found at {} (build it: cargo build -p vtap, or set VTAP_BIN)",
                bin.display()
            );
        }
        let policy_dir = self.path("policies", "d");
        std::fs::create_dir_all(&policy_dir)?;
        write_policy_dir(&policy_dir, policies)?;
        let state_dir = self.path("state", "d");
        std::fs::create_dir_all(&state_dir)?;
        let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], DAEMON_PORT));
        let mut c = cmd::ns_command(&self.host_ns, &bin);
        c.arg("daemon")
            .arg("--policies")
            .arg(&policy_dir)
            .arg("--listen")
            .arg(addr.to_string());
        c.arg("--state-dir").arg(&state_dir);
        // Captures write here; tests may mount a tiny filesystem on it.
        std::fs::create_dir_all(state_dir.join("captures"))?;
        prepare(&state_dir)?;
        c.args(extra);
        let level = std::env::var("VTAP_TEST_LOG").unwrap_or_else(|_| "info".into());
        c.env("VTAP_LOG", &level).env("RUST_LOG", &level);
        c.env("RUST_BACKTRACE", "1");
        let proc = self.spawn_command(c, "vtap-daemon")?;
        let mut d = Daemon {
            tb: self,
            proc,
            policy_dir,
            state_dir,
            addr,
        };
        d.wait_ready(Duration::from_secs(30))?;
        Ok(d)
    }
}

/// Replaces the `*.yaml`/`*.yml`/`*.json` files of `dir` with `policies`.
pub fn write_policy_dir(dir: &Path, policies: &[(&str, &str)]) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_file() {
            std::fs::remove_file(&p)?;
        }
    }
    for (name, text) in policies {
        if name.contains('/') {
            bail!("policy file name {name:?} must not contain '/'");
        }
        // Write then rename, as an operator's editor or config manager would.
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}

impl<'a> Daemon<'a> {
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// The daemon's stdout + stderr so far.
    pub fn log(&self) -> String {
        format!("{}{}", self.proc.stdout(), self.proc.stderr())
    }

    /// Fails if the daemon has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.proc.try_wait()? {
            bail!(
                "vtap daemon exited ({}); log:\n{}",
                cmd::describe_status(&st),
                tail(&self.log(), 60)
            );
        }
        Ok(())
    }

    /// `GET path` on the daemon.
    pub fn get(&self, path: &str) -> Result<HttpResponse> {
        http_request(&self.tb.host_ns, self.addr, "GET", path, None)
    }

    /// Any request on the daemon.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<HttpResponse> {
        http_request(&self.tb.host_ns, self.addr, method, path, body)
    }

    /// Waits (bounded) until `/readyz` answers 200; fails early if the
    /// daemon exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            self.check_alive()?;
            match self.get("/readyz") {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("{} {}", r.status, r.body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!(
                    "vtap daemon not ready within {timeout:?} (last /readyz: {last}); log:\n{}",
                    tail(&self.log(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Scrapes and parses `/metrics`.
    pub fn metrics(&self) -> Result<Metrics> {
        let r = self.get("/metrics")?;
        if r.status != 200 {
            bail!("GET /metrics: {} {}", r.status, r.body);
        }
        Metrics::parse(&r.body)
    }

    /// Raw `/metrics` text.
    pub fn metrics_text(&self) -> Result<String> {
        let r = self.get("/metrics")?;
        if r.status != 200 {
            bail!("GET /metrics: {} {}", r.status, r.body);
        }
        Ok(r.body)
    }

    /// Rewrites the policy directory (does not signal the daemon).
    pub fn write_policies(&self, policies: &[(&str, &str)]) -> Result<()> {
        write_policy_dir(&self.policy_dir, policies)
    }

    /// Sends SIGHUP (re-read the policy directory).
    pub fn reload(&self) -> Result<()> {
        self.proc.signal(libc::SIGHUP)
    }

    /// Sends `sig` and waits (bounded) for the exit status.
    pub fn stop_with(&mut self, sig: libc::c_int) -> Result<ExitStatus> {
        self.proc.stop_with(sig, Duration::from_secs(15))
    }

    /// SIGTERM, then requires exit status 0.
    pub fn stop(mut self) -> Result<()> {
        let st = self.stop_with(libc::SIGTERM)?;
        if !st.success() {
            bail!(
                "vtap daemon exited with {} after SIGTERM; log:\n{}",
                cmd::describe_status(&st),
                tail(&self.log(), 60)
            );
        }
        Ok(())
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- vtap daemon log (pid {:?}) ----\n{}\n----",
                self.proc.pid(),
                tail(&self.log(), 80)
            );
        }
        let _ = self.proc.stop_with(libc::SIGTERM, Duration::from_secs(10));
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The BPF objects process `pid` holds, from its fds in /proc/PID/fdinfo:
/// per link fd the `ifindex` it is attached to (0 for a link without a
/// device, e.g. one whose device is gone), and the ids of its map fds.
pub fn bpf_fds(pid: u32) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut links = Vec::new();
    let mut maps = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(e?.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        if field("link_id:").is_some() {
            links.push(field("ifindex:").unwrap_or(0));
        } else if let Some(id) = field("map_id:") {
            maps.push(id);
        }
    }
    Ok((links, maps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        let b = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        assert_eq!(dechunk(b).unwrap(), b"hello world");
        assert!(dechunk(b"zz\r\n").is_err());
    }
}
