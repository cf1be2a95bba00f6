//! Running commands with a time bound, in the root namespace or inside a
//! testbed namespace (`ip netns exec NS ...`), and background processes that
//! are ended when their handle is dropped.
//!
//! Every child is started in its own process group so that a timeout or a
//! drop ends the command *and* whatever it spawned, and nothing else.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::marker::PhantomData;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Default bound for short configuration commands (`ip`, `sysctl`, `ethtool`).
pub const SHORT: Duration = Duration::from_secs(20);

/// What a finished command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// A `Command` for `program` run inside network namespace `ns`.
pub fn ns_command(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.arg("netns").arg("exec").arg(ns).arg(program);
    c
}

/// Human-readable form of a command line, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn kill_group(pid: u32, sig: libc::c_int) {
    // The child was started with process_group(0): its pgid is its pid.
    // SAFETY: kill(2) with a negative pid signals that process group only.
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

/// Runs `cmd` to completion, killing it (and its process group) after
/// `timeout`. A timeout is an error; a non-zero exit is not (see [`run_ok`]).
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    run_with_stdin(cmd, None, timeout)
}

/// Like [`run`], feeding `stdin` to the command.
pub fn run_with_stdin(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    let what = describe(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    let pid = child.id();
    if let Some(input) = stdin {
        use std::io::Write;
        let mut w = child.stdin.take().expect("piped stdin");
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let (status, timed_out) = match rx.recv_timeout(timeout) {
        Ok(st) => (st?, false),
        Err(_) => {
            kill_group(pid, libc::SIGKILL);
            (rx.recv().map_err(|_| anyhow!("waiter vanished"))??, true)
        }
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    if timed_out {
        bail!(
            "`{what}` did not finish within {timeout:?} (killed); stdout: {stdout:?} stderr: {stderr:?}"
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs `cmd` and fails unless it exits 0; the error carries its output.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = describe(cmd);
    let out = run(cmd, timeout)?;
    if !out.success() {
        bail!(
            "`{what}` failed ({}): {}{}",
            out.status,
            out.stderr.trim(),
            if out.stdout.trim().is_empty() {
                String::new()
            } else {
                format!(" / stdout: {}", out.stdout.trim())
            }
        );
    }
    Ok(out)
}

/// Shorthand: `ip [-n NS] ARGS...`, which must succeed.
pub fn ip(ns: Option<&str>, args: &[&str]) -> Result<Output> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.arg("-n").arg(ns);
    }
    c.args(args);
    run_ok(&mut c, SHORT)
}

/// Runs `program args...` inside `ns`, which must succeed.
pub fn ns_run_ok(ns: &str, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
    let mut c = ns_command(ns, program);
    c.args(args);
    run_ok(&mut c, timeout)
}

/// A process running in the background (usually inside a namespace) whose
/// stdout and stderr go to files. Dropping the handle ends it: SIGTERM to its
/// process group, SIGKILL after two seconds.
///
/// The lifetime ties the process to the testbed it runs in, so it is always
/// ended before the testbed's namespaces are deleted.
#[derive(Debug)]
pub struct BgProcess<'a> {
    child: Option<Child>,
    what: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _tb: PhantomData<&'a ()>,
}

impl<'a> BgProcess<'a> {
    /// Starts `cmd`, sending its output to `log_base.out` / `log_base.err`.
    pub fn spawn(mut cmd: Command, log_base: &Path) -> Result<BgProcess<'a>> {
        let what = describe(&cmd);
        let stdout_path = log_base.with_extension("out");
        let stderr_path = log_base.with_extension("err");
        let so = File::create(&stdout_path)
            .with_context(|| format!("create {}", stdout_path.display()))?;
        let se = File::create(&stderr_path)
            .with_context(|| format!("create {}", stderr_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(so)
            .stderr(se)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        Ok(BgProcess {
            child: Some(child),
            what,
            stdout_path,
            stderr_path,
            _tb: PhantomData,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn describe(&self) -> &str {
        &self.what
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Current contents of the process's stdout file.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Current contents of the process's stderr file.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends `sig` to the process itself (not its group).
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("process already reaped"))?;
        // SAFETY: plain kill(2) on the pid of a child we have not reaped yet.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        if rc != 0 {
            bail!(
                "kill({pid}, {sig}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Returns the exit status if the process has ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("process already reaped"),
        }
    }

    /// Waits up to `timeout` for the process to end by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig`, waits up to `timeout` for the exit and returns its status.
    /// If the process does not end in time it is killed and an error returned.
    pub fn stop_with(&mut self, sig: libc::c_int, timeout: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            self.reap_group();
            return Ok(st);
        }
        self.signal(sig)?;
        match self.wait_timeout(timeout)? {
            Some(st) => {
                self.reap_group();
                Ok(st)
            }
            None => {
                self.kill_now();
                bail!(
                    "`{}` did not exit within {timeout:?} after signal {sig}; killed",
                    self.what
                )
            }
        }
    }

    /// Forgets a child that has been reaped already. (Its process group is
    /// not signalled any more: once reaped, its id may belong to someone else.)
    fn reap_group(&mut self) {
        self.child.take();
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

impl Drop for BgProcess<'_> {
    fn drop(&mut self) {
        let Some(c) = self.child.as_mut() else { return };
        if let Ok(Some(_)) = c.try_wait() {
            self.reap_group();
            return;
        }
        let pid = c.id();
        kill_group(pid, libc::SIGTERM);
        if let Ok(None) = self.wait_timeout(Duration::from_secs(2)) {
            self.kill_now();
        } else {
            self.reap_group();
        }
    }
}

/// Describes how a process ended, e.g. `exit 0` or `signal 9`.
pub fn describe_status(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{st}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_captures_output_and_status() {
        let o = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(o.status.code(), Some(3));
        assert_eq!(o.stdout, "out\n");
        assert_eq!(o.stderr, "err\n");
        assert!(
            run_ok(
                Command::new("sh").args(["-c", "exit 3"]),
                Duration::from_secs(10)
            )
            .is_err()
        );
    }

    #[test]
    fn run_kills_on_timeout() {
        let t = Instant::now();
        let e = run(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(format!("{e}").contains("did not finish"), "{e}");
    }

    #[test]
    fn background_process_ends_on_drop() {
        let base = std::env::temp_dir().join(format!("vtap-testbed-cmd-{}", std::process::id()));
        let mut c = Command::new("sleep");
        c.arg("30");
        let p = BgProcess::spawn(c, &base).unwrap();
        let pid = p.pid().unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(p);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        let _ = std::fs::remove_file(base.with_extension("out"));
        let _ = std::fs::remove_file(base.with_extension("err"));
    }
}
