//! Real QEMU VMs (TCG) on tap devices, for tests that want a guest kernel's
//! own network stack between vtap and the traffic instead of a namespace.
//!
//! The guest image (a Debian cloud kernel + a busybox initramfs with iperf3,
//! iproute2's `ip` and ethtool) is built once and cached by
//! `testbed/vm/build-image.sh` ([`ensure_image`]). A [`QemuVm`] is one guest:
//! its tap (`ip tuntap add NAME mode tap vnet_hdr`) is created in the
//! testbed's host namespace and enslaved to the bridge, QEMU runs in that
//! namespace, and a command agent on a virtio-serial port runs shell commands
//! in the guest ([`QemuVm::run`], [`QemuVm::spawn_bg`]). A [`VmSet`] boots N
//! guests on a [`Testbed`] made with `.vms(0)`: taps `vmN-tap` on `br0`,
//! `10.0.0.N/24`, `fd00::N/64`, MAC `02:76:74:00:00:NN` — the names and
//! addresses of the namespace testbed's VMs, so policies and checks carry
//! over.
//!
//! Like the namespace VMs, a `VmSet` keeps the wire silent: guests run with
//! NOARP and permanent neighbour entries for every other VM of the set, no
//! link-local address, no DAD or router solicitations, and the bridge has a
//! static FDB entry per guest MAC. (A lone [`QemuVm::boot`] does ordinary
//! ARP.)
//!
//! Everything is bounded in time; dropping a `QemuVm` kills QEMU and deletes
//! its tap, also while a test panics.
//!
//! ```no_run
//! use std::time::Duration;
//! use vtap_testbed::vm::VmSet;
//! use vtap_testbed::{Options, Testbed};
//! # fn main() -> anyhow::Result<()> {
//! let tb = Testbed::new(Options::default().vms(0))?;
//! let vms = VmSet::start(&tb, 2)?;
//! let (rc, out) = vms.vm(1).run("ping -c 3 10.0.0.2", Duration::from_secs(10))?;
//! assert_eq!(rc, 0, "{out}");
//! # Ok(()) }
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::cmd::{self, BgProcess, SHORT};
use crate::daemon::tail;
use crate::netns;
use crate::testbed::Testbed;

/// Default bound for a guest to boot until its agent answers.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time the host waits beyond a command's own timeout (the guest
/// enforces the timeout and still has to report).
const REPLY_GRACE: Duration = Duration::from_secs(10);

/// A built guest image.
#[derive(Debug, Clone)]
pub struct VmImage {
    /// `<cache>/img-<key>/`
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Cache key (hash of the build script, guest files and inputs).
    pub key: String,
    /// e.g. `6.1.0-56-cloud-amd64`
    pub kernel_release: String,
}

/// The image build script, `testbed/vm/build-image.sh`.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("vm")
        .join("build-image.sh")
}

/// The QEMU binary: `$VTAP_QEMU` or `qemu-system-x86_64`.
pub fn qemu_bin() -> String {
    std::env::var("VTAP_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

static IMAGE: OnceLock<std::result::Result<VmImage, String>> = OnceLock::new();

/// Builds the guest image if needed (once per process; a cached image takes
/// well under a second) and checks that QEMU is there. A failure is an
/// error, never a reason to skip: the test that needs VMs fails.
pub fn ensure_image() -> Result<VmImage> {
    IMAGE
        .get_or_init(|| build_image().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("VM image: {e}"))
}

fn build_image() -> Result<VmImage> {
    let qemu = qemu_bin();
    let mut c = std::process::Command::new(&qemu);
    c.arg("--version");
    cmd::run_ok(&mut c, SHORT).with_context(|| {
        format!("{qemu} not usable (scripts/install-deps.sh installs qemu-system-x86)")
    })?;
    let script = build_script();
    let mut c = std::process::Command::new("bash");
    c.arg(&script);
    let out = cmd::run_ok(&mut c, Duration::from_secs(900))?;
    let dir = PathBuf::from(
        out.stdout
            .lines()
            .last()
            .ok_or_else(|| anyhow!("{} printed no image directory", script.display()))?
            .trim(),
    );
    let env = std::fs::read_to_string(dir.join("image.env"))
        .with_context(|| format!("read {}/image.env", dir.display()))?;
    let field = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let img = VmImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initramfs.cpio"),
        key: field("KEY"),
        kernel_release: field("KERNEL_RELEASE"),
        dir,
    };
    for f in [&img.kernel, &img.initrd] {
        if !f.is_file() {
            bail!("{} missing after {}", f.display(), script.display());
        }
    }
    Ok(img)
}

/// How to boot one guest.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Short name for logs and the QEMU process (`vm1`); also the hostname.
    pub name: String,
    /// Guest MAC (eth0).
    pub mac: String,
    /// `10.0.0.1/24`
    pub ipv4: Option<String>,
    /// `fd00::1/64`; `None` disables IPv6 in the guest.
    pub ipv6: Option<String>,
    /// eth0 NOARP: the guest sends no ARP/ND; give it `neighbors`.
    pub noarp: bool,
    /// Permanent neighbour entries set in the guest after boot.
    pub neighbors: Vec<(IpAddr, String)>,
    /// A static bridge FDB entry for `mac` on the tap (no flooding).
    pub static_fdb: bool,
    pub mtu: Option<u32>,
    pub memory_mb: u32,
    pub boot_timeout: Duration,
}

impl VmConfig {
    /// A guest with one IPv4 address (`ip_cidr`, e.g. `10.0.0.1/24`),
    /// ordinary ARP, no IPv6, 256 MiB.
    pub fn new(name: &str, mac: &str, ip_cidr: &str) -> VmConfig {
        VmConfig {
            name: name.to_string(),
            mac: mac.to_string(),
            ipv4: Some(ip_cidr.to_string()),
            ipv6: None,
            noarp: false,
            neighbors: Vec::new(),
            static_fdb: false,
            mtu: None,
            memory_mb: 256,
            boot_timeout: BOOT_TIMEOUT,
        }
    }

    fn cmdline(&self) -> String {
        let mut s = String::from("console=ttyS0 panic=-1");
        if let Some(ip) = &self.ipv4 {
            s.push_str(&format!(" vtap.ip={ip}"));
        }
        if let Some(ip) = &self.ipv6 {
            s.push_str(&format!(" vtap.ip6={ip}"));
        }
        if self.noarp {
            s.push_str(" vtap.noarp=1");
        }
        if let Some(m) = self.mtu {
            s.push_str(&format!(" vtap.mtu={m}"));
        }
        s.push_str(&format!(" vtap.hostname={}", self.name));
        s
    }
}

/// What a guest command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A command running in the background in a guest ([`QemuVm::spawn_bg`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestProcess {
    /// Guest pid, also its process group (killed as a group).
    pub pid: u32,
    /// Guest path of its stdout + stderr.
    pub log: String,
    /// Guest path where its exit code is written when it ends.
    pub rc_file: String,
}

/// The host end of the agent connection.
struct Agent {
    sock: UnixStream,
    /// Bytes received and not yet consumed as lines.
    pending: Vec<u8>,
    next_id: u64,
}

enum Line {
    Text(String),
    Eof,
    Timeout,
}

impl Agent {
    fn read_line(&mut self, deadline: Instant) -> Result<Line> {
        loop {
            if let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
                let rest = self.pending.split_off(nl + 1);
                let mut line = std::mem::replace(&mut self.pending, rest);
                line.pop();
                return Ok(Line::Text(String::from_utf8_lossy(&line).into_owned()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Line::Timeout);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.sock.set_read_timeout(Some(wait))?;
            let mut buf = [0u8; 16384];
            match self.sock.read(&mut buf) {
                Ok(0) => return Ok(Line::Eof),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Line::Timeout);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn send(&mut self, script: &str, guest_timeout_s: u64) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let line = format!("{id} {guest_timeout_s} {}\n", b64_encode(script.as_bytes()));
        self.sock.set_write_timeout(Some(Duration::from_secs(10)))?;
        self.sock
            .write_all(line.as_bytes())
            .context("write to the guest agent")?;
        Ok(id)
    }

    /// Waits for the reply to request `id`; replies to other (older) ids are
    /// skipped. `Ok(None)` when `deadline` passes first.
    fn reply(&mut self, id: u64, deadline: Instant) -> Result<Option<(GuestOutput, bool)>> {
        let tag = format!("@@VTAP {id} ");
        let mut section: Option<u8> = None; // b'o' stdout, b'e' stderr
        let (mut out, mut err) = (String::new(), String::new());
        loop {
            let line = match self.read_line(deadline)? {
                Line::Text(l) => l,
                Line::Timeout => return Ok(None),
                Line::Eof => bail!("the guest agent closed the connection (QEMU exited?)"),
            };
            if let Some(rest) = line.strip_prefix(&tag) {
                let mut w = rest.split_whitespace();
                match w.next() {
                    Some("OUT") => section = Some(b'o'),
                    Some("ERR") => section = Some(b'e'),
                    Some("END") => {
                        let code = w.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
                        let timed_out = w.next() == Some("1");
                        return Ok(Some((
                            GuestOutput {
                                code,
                                stdout: decode_lines(&out)?,
                                stderr: decode_lines(&err)?,
                            },
                            timed_out,
                        )));
                    }
                    _ => {}
                }
            } else if line.starts_with("@@VTAP ") {
                section = None; // another request's reply
            } else {
                match section {
                    Some(b'o') => out.push_str(line.trim()),
                    Some(b'e') => err.push_str(line.trim()),
                    _ => {}
                }
            }
        }
    }
}

fn decode_lines(b64: &str) -> Result<String> {
    let bytes = b64_decode(b64).context("bad base64 from the guest agent")?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                s.push(B64[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn b64_decode(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' | b' ' => continue,
            _ => bail!("invalid base64 byte {c:#x}"),
        };
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

static BOOT_SEQ: AtomicU32 = AtomicU32::new(0);

/// One QEMU guest on a tap device. Dropping it kills QEMU and deletes the tap.
pub struct QemuVm {
    pub config: VmConfig,
    pub host_ns: String,
    pub tap: String,
    pub bridge: String,
    /// Serial console of the guest (kernel messages, init, agent errors).
    pub console_log: PathBuf,
    /// Host wall time from starting QEMU to the agent's first answer.
    pub boot_time: Duration,
    proc: Option<BgProcess<'static>>,
    agent: Mutex<Agent>,
    sock_path: PathBuf,
    bg_seq: AtomicU32,
}

impl std::fmt::Debug for QemuVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuVm")
            .field("name", &self.config.name)
            .field("host_ns", &self.host_ns)
            .field("tap", &self.tap)
            .field("mac", &self.config.mac)
            .field("ipv4", &self.config.ipv4)
            .field("pid", &self.pid())
            .finish()
    }
}

/// Deletes `tap` in `ns` if it exists there.
fn delete_tap(ns: &str, tap: &str) -> Result<()> {
    if !netns::exists(ns) {
        return Ok(());
    }
    let mut c = std::process::Command::new("ip");
    c.args(["-n", ns, "link", "show", tap]);
    if cmd::run(&mut c, SHORT)?.success() {
        cmd::ip(Some(ns), &["link", "del", tap])?;
    }
    Ok(())
}

impl QemuVm {
    /// Boots a guest with one IPv4 address and ordinary ARP: creates tap
    /// `tap` in `host_ns` on `bridge`, starts QEMU there and waits (at most
    /// [`BOOT_TIMEOUT`]) until the agent answers. Logs go to `log_dir`.
    pub fn boot(
        host_ns: &str,
        tap: &str,
        bridge: &str,
        mac: &str,
        ip_cidr: &str,
        log_dir: &Path,
    ) -> Result<QemuVm> {
        let name = tap.strip_suffix("-tap").unwrap_or(tap);
        QemuVm::boot_with(
            host_ns,
            tap,
            bridge,
            VmConfig::new(name, mac, ip_cidr),
            log_dir,
        )
    }

    /// Boots a guest as `config` says (see [`QemuVm::boot`]).
    pub fn boot_with(
        host_ns: &str,
        tap: &str,
        bridge: &str,
        config: VmConfig,
        log_dir: &Path,
    ) -> Result<QemuVm> {
        let img = ensure_image()?;
        if tap.is_empty() || tap.len() > 15 {
            bail!("tap name {tap:?} must be 1..=15 characters");
        }
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("create {}", log_dir.display()))?;
        let seq = BOOT_SEQ.fetch_add(1, Ordering::SeqCst);
        let stem = format!("qemu-{}-{seq:03}", config.name);
        let console_log = log_dir.join(format!("{stem}-console.log"));
        let mut sock_path = log_dir.join(format!("{stem}.sock"));
        if sock_path.as_os_str().len() > 100 {
            sock_path =
                std::env::temp_dir().join(format!("vtapvm-{}-{seq}.sock", std::process::id()));
        }
        for p in [&console_log, &sock_path] {
            if p.to_string_lossy().contains(',') {
                bail!("QEMU cannot take a path with ',': {}", p.display());
            }
        }
        let _ = std::fs::remove_file(&sock_path);

        // From here on, dropping `vm` kills QEMU and removes the tap.
        let mut vm = QemuVm {
            host_ns: host_ns.to_string(),
            tap: tap.to_string(),
            bridge: bridge.to_string(),
            console_log,
            boot_time: Duration::ZERO,
            proc: None,
            agent: Mutex::new(Agent {
                // Placeholder until QEMU's socket is connected.
                sock: UnixStream::pair()?.0,
                pending: Vec::new(),
                next_id: 1,
            }),
            sock_path,
            bg_seq: AtomicU32::new(0),
            config,
        };
        // The tap: ours (unique namespace), so a leftover of that name goes.
        delete_tap(host_ns, tap)?;
        cmd::ip(
            Some(host_ns),
            &["tuntap", "add", tap, "mode", "tap", "vnet_hdr"],
        )?;
        if let Some(m) = vm.config.mtu {
            cmd::ip(Some(host_ns), &["link", "set", tap, "mtu", &m.to_string()])?;
        }
        cmd::ip(Some(host_ns), &["link", "set", tap, "master", bridge, "up"])?;
        if vm.config.static_fdb {
            cmd::run_ok(
                std::process::Command::new("bridge").args([
                    "-n",
                    host_ns,
                    "fdb",
                    "replace",
                    &vm.config.mac,
                    "dev",
                    tap,
                    "master",
                    "static",
                ]),
                SHORT,
            )?;
        }

        let t0 = Instant::now();
        let mut c = cmd::ns_command(host_ns, qemu_bin());
        c.args(["-name", &vm.config.name, "-accel", "tcg", "-smp", "1"])
            .args(["-m", &vm.config.memory_mb.to_string()])
            // $VTAP_QEMU_CPU: e.g. `max` for guest programs that need more
            // than the default CPU model's instructions (Hyperscan: SSSE3).
            .args(
                std::env::var("VTAP_QEMU_CPU")
                    .ok()
                    .filter(|c| !c.is_empty())
                    .map(|c| vec!["-cpu".to_string(), c])
                    .unwrap_or_default(),
            )
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-no-reboot", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", vm.console_log.display()))
            .arg("-kernel")
            .arg(&img.kernel)
            .arg("-initrd")
            .arg(&img.initrd)
            .args(["-append", &vm.config.cmdline()])
            .arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off"
            ))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={}", vm.config.mac))
            .args(["-device", "virtio-serial-pci"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=off",
                vm.sock_path.display()
            ))
            .args(["-device", "virtserialport,chardev=agent,name=vtap.agent"]);
        vm.proc = Some(BgProcess::spawn(c, &log_dir.join(&stem))?);
        vm.connect_and_wait(vm.config.boot_timeout)
            .with_context(|| format!("{} did not boot", vm.config.name))?;
        vm.boot_time = t0.elapsed();
        if !vm.config.neighbors.is_empty() {
            let mut script = String::new();
            for (ip, mac) in &vm.config.neighbors {
                script.push_str(&format!(
                    "ip neigh replace {ip} lladdr {mac} dev eth0 nud permanent\n"
                ));
            }
            script.push_str("ip neigh show dev eth0 nud permanent | wc -l\n");
            vm.run_ok(&script, Duration::from_secs(20))
                .context("setting the guest's neighbours")?;
        }
        Ok(vm)
    }

    /// Fails with QEMU's stderr and the console's tail if QEMU has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(p) = self.proc.as_mut()
            && let Some(st) = p.try_wait()?
        {
            bail!(
                "QEMU exited ({}): {}\nconsole:\n{}",
                cmd::describe_status(&st),
                p.stderr().trim(),
                self.console_tail(30)
            );
        }
        Ok(())
    }

    fn connect_and_wait(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        // QEMU creates the socket (server=on,wait=off) right at start.
        let sock = loop {
            self.check_alive()?;
            match UnixStream::connect(&self.sock_path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "cannot connect to {} within {timeout:?}: {e}",
                        self.sock_path.display()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        self.agent.get_mut().unwrap_or_else(|e| e.into_inner()).sock = sock;
        // Ping until the agent answers; each ping gets its own id, so a late
        // answer to an earlier one is skipped.
        loop {
            self.check_alive()?;
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "the guest agent did not answer within {timeout:?}; console:\n{}",
                    self.console_tail(30)
                );
            }
            let agent = self.agent.get_mut().unwrap_or_else(|e| e.into_inner());
            let id = agent.send("true", 5)?;
            let wait = (deadline - now).min(Duration::from_millis(500));
            match agent.reply(id, Instant::now() + wait) {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => {}
                Err(e) => {
                    self.check_alive()?;
                    return Err(e);
                }
            }
        }
    }

    /// The last `n` lines of the guest console.
    pub fn console_tail(&self, n: usize) -> String {
        tail(
            &std::fs::read_to_string(&self.console_log).unwrap_or_default(),
            n,
        )
    }

    /// QEMU's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(|p| p.pid())
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn mac(&self) -> &str {
        &self.config.mac
    }

    /// Runs `script` with `sh` in the guest and returns its exit code, stdout
    /// and stderr. The guest kills the script's process group after
    /// `timeout` (rounded up to whole seconds): that is an error, as is a
    /// guest that stops answering.
    pub fn output(&self, script: &str, timeout: Duration) -> Result<GuestOutput> {
        let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let secs = secs.max(1);
        let mut agent = self.agent.lock().unwrap_or_else(|e| e.into_inner());
        let id = agent.send(script, secs)?;
        let deadline = Instant::now() + Duration::from_secs(secs) + REPLY_GRACE;
        match agent.reply(id, deadline) {
            Ok(Some((out, false))) => Ok(out),
            Ok(Some((out, true))) => bail!(
                "{}: `{}` did not finish within {timeout:?} (killed); stdout: {:?} stderr: {:?}",
                self.config.name,
                script.trim(),
                out.stdout,
                out.stderr
            ),
            Ok(None) => bail!(
                "{}: no answer from the guest agent for `{}` within {:?}; console:\n{}",
                self.config.name,
                script.trim(),
                Duration::from_secs(secs) + REPLY_GRACE,
                self.console_tail(20)
            ),
            Err(e) => Err(e.context(format!(
                "{}: `{}`; console:\n{}",
                self.config.name,
                script.trim(),
                self.console_tail(20)
            ))),
        }
    }

    /// Like [`QemuVm::output`]: the exit code and stdout followed by stderr.
    pub fn run(&self, script: &str, timeout: Duration) -> Result<(i32, String)> {
        let o = self.output(script, timeout)?;
        Ok((o.code, o.stdout + &o.stderr))
    }

    /// Runs `script` and fails unless it exits 0; returns its stdout.
    pub fn run_ok(&self, script: &str, timeout: Duration) -> Result<String> {
        let o = self.output(script, timeout)?;
        if o.code != 0 {
            bail!(
                "{}: `{}` failed (exit {}): {}{}",
                self.config.name,
                script.trim(),
                o.code,
                o.stderr.trim(),
                if o.stdout.trim().is_empty() {
                    String::new()
                } else {
                    format!(" / stdout: {}", o.stdout.trim())
                }
            );
        }
        Ok(o.stdout)
    }

    /// Writes `data` to `path` in the guest (through the agent, in base64
    /// chunks; a few hundred KiB take well under a second).
    pub fn put_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let q = shell_quote(path);
        self.run_ok(&format!(": > {q}"), SHORT)?;
        for chunk in data.chunks(32 * 1024) {
            self.run_ok(
                &format!("printf %s '{}' | base64 -d >> {q}", b64_encode(chunk)),
                SHORT,
            )?;
        }
        let size = self.run_ok(&format!("wc -c < {q}"), SHORT)?;
        if size.trim().parse::<usize>().ok() != Some(data.len()) {
            bail!(
                "{path} in the guest has {} bytes, not {}",
                size.trim(),
                data.len()
            );
        }
        Ok(())
    }

    /// Starts `script` in the background in the guest (its own session;
    /// stdout + stderr to a log file in the guest) and returns at once, e.g.
    /// `iperf3 -s` or `httpd -f -p 80 -h /www`.
    pub fn spawn_bg(&self, script: &str) -> Result<GuestProcess> {
        let n = self.bg_seq.fetch_add(1, Ordering::SeqCst);
        let base = format!("/run/vtap-bg/{n}");
        let launcher = format!(
            "mkdir -p /run/vtap-bg\n\
             {{ cat /etc/vtap/profile; echo {b64} | base64 -d; }} > {base}.sh\n\
             setsid sh -c 'sh {base}.sh; echo $? > {base}.rc' > {base}.log 2>&1 < /dev/null &\n\
             echo $!\n",
            b64 = b64_encode(script.as_bytes()),
        );
        let out = self.run_ok(&launcher, Duration::from_secs(20))?;
        let pid = out
            .trim()
            .parse()
            .map_err(|_| anyhow!("spawn_bg: no pid in {out:?}"))?;
        Ok(GuestProcess {
            pid,
            log: format!("{base}.log"),
            rc_file: format!("{base}.rc"),
        })
    }

    /// Output of a background command so far.
    pub fn bg_output(&self, p: &GuestProcess) -> Result<String> {
        self.run_ok(&format!("cat {}", p.log), Duration::from_secs(20))
    }

    /// Waits (bounded) for a background command to end; returns its exit code.
    pub fn bg_wait(&self, p: &GuestProcess, timeout: Duration) -> Result<i32> {
        let secs = timeout.as_secs().max(1);
        let script = format!(
            "i=0; while [ ! -s {rc} ] && [ $i -lt {n} ]; do sleep 0.1; i=$((i+1)); done; cat {rc}",
            rc = p.rc_file,
            n = secs * 10
        );
        let out = self.output(&script, timeout + Duration::from_secs(5))?;
        out.stdout.trim().parse().map_err(|_| {
            anyhow!(
                "{}: background pid {} still running after {timeout:?}",
                self.config.name,
                p.pid
            )
        })
    }

    /// Waits (bounded) until something listens on TCP (or, with `udp`, UDP)
    /// port `port` in the guest, e.g. a server started with
    /// [`QemuVm::spawn_bg`]. (Servers' own "listening" lines may sit in a
    /// stdio buffer: their log is a file.)
    pub fn wait_listening(&self, port: u16, udp: bool, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let flags = if udp { "-lun" } else { "-ltn" };
        loop {
            let (rc, _) = self.run(
                &format!("netstat {flags} | awk '{{print $4}}' | grep -q ':{port}$'"),
                Duration::from_secs(10),
            )?;
            if rc == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: nothing listens on {} port {port} after {timeout:?}",
                    self.config.name,
                    if udp { "UDP" } else { "TCP" }
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills a background command (its whole process group).
    pub fn bg_kill(&self, p: &GuestProcess) -> Result<()> {
        self.run(
            &format!(
                "kill -TERM -{0} 2>/dev/null; sleep 0.2; kill -KILL -{0} 2>/dev/null; true",
                p.pid
            ),
            Duration::from_secs(10),
        )?;
        Ok(())
    }

    /// Powers the guest off (ACPI poweroff from inside, so QEMU exits by
    /// itself), kills QEMU if it has not exited within 10 s, and deletes the
    /// tap. The tap name is free for a new [`QemuVm::boot`] afterwards.
    pub fn stop(mut self) -> Result<()> {
        let r = self.shutdown(true);
        let tap = self.delete_tap();
        r.and(tap)
    }

    fn shutdown(&mut self, graceful: bool) -> Result<()> {
        let Some(mut p) = self.proc.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        if graceful && p.try_wait()?.is_none() {
            let sent = {
                let mut agent = self.agent.lock().unwrap_or_else(|e| e.into_inner());
                agent.send("poweroff -f", 5)
            };
            match sent {
                Ok(_) => match p.wait_timeout(Duration::from_secs(10))? {
                    Some(_) => {}
                    None => {
                        result = Err(anyhow!(
                            "{}: QEMU still running 10 s after poweroff; killed",
                            self.config.name
                        ))
                    }
                },
                Err(e) => result = Err(e.context("poweroff request")),
            }
        }
        // Ends QEMU if still running: SIGTERM to its group, SIGKILL after 2 s.
        drop(p);
        let _ = std::fs::remove_file(&self.sock_path);
        result
    }

    fn delete_tap(&mut self) -> Result<()> {
        if self.tap.is_empty() {
            return Ok(());
        }
        let r = delete_tap(&self.host_ns, &self.tap);
        self.tap.clear();
        r
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        if std::thread::panicking() && self.proc.is_some() {
            eprintln!(
                "---- console of {} (tail) ----\n{}\n----",
                self.config.name,
                self.console_tail(25)
            );
        }
        let _ = self.shutdown(false);
        if let Err(e) = self.delete_tap() {
            eprintln!("vtap-testbed: cannot delete tap: {e:#}");
        }
    }
}

/// Name, tap and addresses of VM `index` of a [`VmSet`] (the namespace
/// testbed's scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// 1-based.
    pub index: usize,
    /// `vmN`
    pub name: String,
    /// `vmN-tap`
    pub tap: String,
    /// `02:76:74:00:00:NN`
    pub mac: String,
    /// `10.0.0.N`
    pub ipv4: Ipv4Addr,
    /// `fd00::N`
    pub ipv6: Ipv6Addr,
}

impl VmSpec {
    pub fn new(index: usize) -> VmSpec {
        VmSpec {
            index,
            name: format!("vm{index}"),
            tap: format!("vm{index}-tap"),
            mac: format!("02:76:74:00:00:{index:02x}"),
            ipv4: Ipv4Addr::new(10, 0, 0, index as u8),
            ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, index as u16),
        }
    }
}

/// N QEMU guests on a testbed's bridge `br0` (testbed made with `.vms(0)`).
/// Each can be stopped and booted again ([`VmSet::stop`], [`VmSet::boot`]);
/// its tap is deleted and re-created with the same name.
#[derive(Debug)]
pub struct VmSet<'a> {
    /// Guest memory of VMs booted from now on (default 256 MiB).
    pub memory_mb: u32,
    tb: &'a Testbed,
    specs: Vec<VmSpec>,
    vms: Vec<Option<QemuVm>>,
    /// Directory of consoles, QEMU logs and agent sockets.
    pub log_dir: PathBuf,
}

impl<'a> VmSet<'a> {
    /// Boots `n` guests (in parallel) and waits until all answer.
    pub fn start(tb: &'a Testbed, n: usize) -> Result<VmSet<'a>> {
        let mut set = VmSet::new(tb, n)?;
        set.boot_all()?;
        Ok(set)
    }

    /// The set without booting anything yet (see [`VmSet::boot`]).
    pub fn new(tb: &'a Testbed, n: usize) -> Result<VmSet<'a>> {
        if !tb.vms.is_empty() {
            bail!(
                "VmSet needs a testbed without namespace VMs (Options::default().vms(0)); it has {}",
                tb.vms.len()
            );
        }
        if n == 0 || n > 250 {
            bail!("a VmSet has 1..=250 VMs, not {n}");
        }
        let log_dir = tb.path("qemu", "d");
        std::fs::create_dir_all(&log_dir)?;
        Ok(VmSet {
            memory_mb: 256,
            tb,
            specs: (1..=n).map(VmSpec::new).collect(),
            vms: (0..n).map(|_| None).collect(),
            log_dir,
        })
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Name, tap and addresses of VM `i` (1-based).
    pub fn spec(&self, i: usize) -> &VmSpec {
        &self.specs[i - 1]
    }

    /// Address of VM `i`, IPv4 or IPv6.
    pub fn addr(&self, i: usize, v6: bool) -> IpAddr {
        let s = self.spec(i);
        if v6 {
            IpAddr::V6(s.ipv6)
        } else {
            IpAddr::V4(s.ipv4)
        }
    }

    /// The boot configuration of VM `i`: silent (NOARP, permanent neighbours
    /// for every other VM of the set, static FDB entry), IPv4 and IPv6.
    pub fn config(&self, i: usize) -> VmConfig {
        let s = self.spec(i);
        let mut c = VmConfig::new(&s.name, &s.mac, &format!("{}/24", s.ipv4));
        c.ipv6 = Some(format!("{}/64", s.ipv6));
        c.noarp = true;
        c.static_fdb = true;
        c.mtu = self.tb.options.mtu;
        c.memory_mb = self.memory_mb;
        for o in self.specs.iter().filter(|o| o.index != i) {
            c.neighbors.push((IpAddr::V4(o.ipv4), o.mac.clone()));
            c.neighbors.push((IpAddr::V6(o.ipv6), o.mac.clone()));
        }
        c
    }

    /// Boots VM `i` (which must not be running) and waits for its agent.
    pub fn boot(&mut self, i: usize) -> Result<&QemuVm> {
        if self.vms[i - 1].is_some() {
            bail!("vm{i} is running already");
        }
        let tap = self.spec(i).tap.clone();
        let vm = QemuVm::boot_with(&self.tb.host_ns, &tap, "br0", self.config(i), &self.log_dir)?;
        Ok(self.vms[i - 1].insert(vm))
    }

    /// Boots every VM that is not running, in parallel.
    pub fn boot_all(&mut self) -> Result<()> {
        let todo: Vec<usize> = (1..=self.len())
            .filter(|&i| self.vms[i - 1].is_none())
            .collect();
        let jobs: Vec<(usize, String, VmConfig)> = todo
            .iter()
            .map(|&i| (i, self.spec(i).tap.clone(), self.config(i)))
            .collect();
        let host_ns = self.tb.host_ns.clone();
        let log_dir = self.log_dir.clone();
        let results: Vec<(usize, Result<QemuVm>)> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .into_iter()
                .map(|(i, tap, cfg)| {
                    let (host_ns, log_dir) = (&host_ns, &log_dir);
                    (
                        i,
                        s.spawn(move || QemuVm::boot_with(host_ns, &tap, "br0", cfg, log_dir)),
                    )
                })
                .collect();
            handles
                .into_iter()
                .map(|(i, h)| {
                    (
                        i,
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow!("boot thread panicked"))),
                    )
                })
                .collect()
        });
        let mut first_err = None;
        for (i, r) in results {
            match r {
                Ok(vm) => self.vms[i - 1] = Some(vm),
                Err(e) => {
                    first_err.get_or_insert(e.context(format!("vm{i}")));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Powers VM `i` off and deletes its tap.
    pub fn stop(&mut self, i: usize) -> Result<()> {
        match self.vms[i - 1].take() {
            Some(vm) => vm.stop(),
            None => Ok(()),
        }
    }

    /// VM `i` (1-based); panics if it is not running.
    pub fn vm(&self, i: usize) -> &QemuVm {
        self.vms[i - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("vm{i} is not running"))
    }

    /// VM `i` if it is running.
    pub fn get(&self, i: usize) -> Option<&QemuVm> {
        self.vms.get(i - 1).and_then(|v| v.as_ref())
    }

    /// The running VMs.
    pub fn running(&self) -> impl Iterator<Item = &QemuVm> {
        self.vms.iter().flatten()
    }

    /// `ping -c count -i 0.2` from VM `from` to VM `to`; returns the number
    /// of replies.
    pub fn ping(&self, from: usize, to: usize, count: u32, v6: bool) -> Result<u32> {
        let dst = self.addr(to, v6);
        let (_, out) = self.vm(from).run(
            &format!("ping -c {count} -i 0.2 -W 2 {dst}"),
            Duration::from_secs(u64::from(count) / 5 + 10),
        )?;
        out.lines()
            .find_map(|l| {
                let (_, r) = l.split_once("transmitted, ")?;
                r.split_whitespace().next()?.parse().ok()
            })
            .ok_or_else(|| anyhow!("cannot parse ping output: {out}"))
    }

    /// Powers off every VM (bounded), deleting their taps.
    pub fn stop_all(mut self) -> Result<()> {
        let mut r = Ok(());
        for i in 1..=self.len() {
            if let Err(e) = self.stop(i) {
                r = r.and(Err(e));
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "echo 'x' \"$y\"\n",
        ] {
            let e = b64_encode(s.as_bytes());
            assert_eq!(b64_decode(&e).unwrap(), s.as_bytes(), "{s:?} -> {e}");
        }
        assert_eq!(b64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64_encode(b"fo"), "Zm8=");
        assert_eq!(b64_decode("Zm9v\nYmFy\n").unwrap(), b"foobar");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(b64_decode(&b64_encode(&all)).unwrap(), all);
        assert!(b64_decode("Zm9v!").is_err());
    }

    #[test]
    fn specs_follow_the_testbed_scheme() {
        let s = VmSpec::new(12);
        assert_eq!(s.tap, "vm12-tap");
        assert_eq!(s.mac, "02:76:74:00:00:0c");
        assert_eq!(s.ipv4, Ipv4Addr::new(10, 0, 0, 12));
        assert_eq!(s.ipv6.to_string(), "fd00::c");
    }

    #[test]
    fn cmdline_carries_the_guest_settings() {
        let mut c = VmConfig::new("vm1", "02:76:74:00:00:01", "10.0.0.1/24");
        assert_eq!(
            c.cmdline(),
            "console=ttyS0 panic=-1 vtap.ip=10.0.0.1/24 vtap.hostname=vm1"
        );
        c.ipv6 = Some("fd00::1/64".into());
        c.noarp = true;
        c.mtu = Some(9000);
        assert!(
            c.cmdline()
                .ends_with("vtap.ip6=fd00::1/64 vtap.noarp=1 vtap.mtu=9000 vtap.hostname=vm1")
        );
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
