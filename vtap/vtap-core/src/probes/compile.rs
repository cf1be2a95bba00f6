//! Compiling probe source (C) into a BPF object on the appliance.
//!
//! [`compile_c`] runs `clang-19 -target bpf -O2 -g -Wall -std=gnu11 -c` on an
//! operator's source in a fresh private directory that holds only the source
//! (`probe.c`) and vtap's probe headers (`vtap_probe.h`, `vtap_abi.h`,
//! embedded in this binary). The compiler sees a fixed, minimal include path
//! — that directory, the libbpf headers and the kernel UAPI headers —
//! and nothing else of the machine's include directories (`-nostdinc`,
//! `--no-default-config`).
//!
//! The source comes from the network, and the compiler's diagnostics go back
//! to whoever sent it, so no other file of the appliance may be read:
//! `#include "/etc/shadow"` would print the file's first lines in the error
//! messages, and `asm(".incbin \"/etc/shadow\"")` would put it into the
//! object. Four layers keep files out:
//!
//! 1. Before clang runs, the source is scanned the way the preprocessor sees
//!    it (lines spliced at backslash-newline, `\r` as a newline, comments,
//!    string and character literals, the `%:` digraph, Unicode whitespace
//!    before `#`): every `#include` must name, in `"…"` or `<…>`,
//!    `vtap_probe.h`, `vtap_abi.h` or a header under `linux/`, `asm/` or
//!    `bpf/`, with no `..` and no absolute path; computed includes
//!    (`#include MACRO`), `#include_next`, `#import`, `#embed`, raw string
//!    literals (which would fool the scan), `__has_include`/`__has_embed`,
//!    `#pragma … dependency` and NUL bytes are refused. The scan is
//!    conservative: ambiguous text is refused, never let through.
//! 2. After clang ran, the files it opened (`-MD` dependency list) must all
//!    lie in the private directory or the allowed header directories, or the
//!    object is refused.
//! 3. When clang fails, its diagnostics are returned only if every file they
//!    point into is an allowed one; otherwise they are withheld.
//! 4. clang itself is confined with Landlock: it may read and execute only
//!    under `/usr` (itself, its libraries, the headers) and read
//!    `/etc/ld.so.cache`, and read and write only in the private directory.
//!    This closes what no source scan can: the assembler's `.incbin` and
//!    `.include` in inline `asm` (which token pasting can spell), and any
//!    other way the compiler might be talked into opening a file. Without
//!    Landlock (kernel built without it, or not in the `lsm=` list) nothing
//!    is compiled ([`CompileError::Io`] says why); pre-built objects still
//!    load.
//!
//! clang runs with the private directory as its working directory, an
//! environment of `PATH` only, stdin from `/dev/null`, in its own process
//! group (killed as a whole when [`COMPILE_TIMEOUT`] expires), with resource
//! limits (address space, file size, no core dumps) and `no_new_privs`; at
//! most 64 KiB of its stderr are kept. The compiler is `clang-19` from
//! `PATH`, or the program named by `VTAP_CLANG` (as for the build of the
//! datapath).
//!
//! [`compile_c`] blocks for the compiler's run (about 50 ms for a small
//! probe): call it from a blocking context (`tokio::task::spawn_blocking`).
//! [`check_object`] validates a pre-built object (or clang's output) cheaply.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Limits of compiling probe source on the appliance: the largest source.
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;
/// Wall-clock time clang may take; it is killed after that.
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest BPF object accepted (compiled or pre-built).
pub const MAX_OBJECT_BYTES: usize = 4 << 20;
/// Most bytes of clang's stderr kept (the rest is read and dropped).
pub const MAX_STDERR_BYTES: usize = 64 * 1024;

/// The probe header, as probes include it (`#include "vtap_probe.h"`).
pub const VTAP_PROBE_H: &str = include_str!("../../../../ebpf/include/vtap_probe.h");
/// vtap's ABI header, includable by probes.
pub const VTAP_ABI_H: &str = include_str!("../../../../ebpf/include/vtap_abi.h");

/// The compiler used unless `VTAP_CLANG` names another.
const CLANG: &str = "clang-19";
/// Address space clang may map (it needs ~100 MiB for a probe).
const CLANG_MAX_AS: u64 = 4 << 30;
/// Largest file clang may write (the object, the dependency list).
const CLANG_MAX_FILE: u64 = 4 * MAX_OBJECT_BYTES as u64;
/// Largest dependency list read back.
const MAX_DEPS_BYTES: u64 = 1 << 20;
/// What the error says instead of diagnostics that point outside the
/// include path.
const WITHHELD: &str = "(the compiler's messages are withheld: they point into a file outside \
                        the probe include path)";
/// Header names (`#include` targets) a probe may use, exactly.
const ALLOWED_HEADERS: [&str; 2] = ["vtap_probe.h", "vtap_abi.h"];
/// Directories of headers a probe may include (`linux/bpf.h`, …).
const ALLOWED_PREFIXES: [&str; 3] = ["linux/", "asm/", "bpf/"];
const ALLOWED_TEXT: &str = "probes may include vtap_probe.h, vtap_abi.h, linux/*, asm/*, bpf/*";

/// Errors of compiling a probe or checking its object.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The source is larger than [`MAX_SOURCE_BYTES`].
    #[error("source is {0} bytes, at most {MAX_SOURCE_BYTES}")]
    TooLarge(usize),
    /// The source was refused before compiling, or clang rejected it (its
    /// stderr, with the private directory's paths shown relative:
    /// `probe.c:3:5: error: …`).
    #[error("the compiler rejected the source:\n{0}")]
    Rejected(String),
    /// clang ran longer than [`COMPILE_TIMEOUT`] and was killed.
    #[error("compiling took longer than {0:?}")]
    Timeout(Duration),
    /// No compiler.
    #[error("clang-19 not found: install the Debian packages clang-19 and libbpf-dev")]
    NoCompiler,
    /// The bytes are not an acceptable BPF object.
    #[error("not a BPF object: {0}")]
    NotBpf(String),
    /// A local I/O failure (private directory, running clang).
    #[error("{0}")]
    Io(String),
}

fn rejected(msg: impl Into<String>) -> CompileError {
    CompileError::Rejected(msg.into())
}

fn io_err(what: &str, e: io::Error) -> CompileError {
    CompileError::Io(format!("{what}: {e}"))
}

/// Compiles C source to a BPF ELF object (see the module documentation for
/// the include path, the checks and the limits). Returns the object's bytes,
/// already checked by [`check_object`]. Warnings of a successful compile are
/// dropped. Blocks while clang runs.
pub fn compile_c(source: &str) -> Result<Vec<u8>, CompileError> {
    compile_with_timeout(source, COMPILE_TIMEOUT)
}

/// [`compile_c`] with another time limit (tests).
fn compile_with_timeout(source: &str, timeout: Duration) -> Result<Vec<u8>, CompileError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(CompileError::TooLarge(source.len()));
    }
    scan_source(source)?;
    build(source, timeout)
}

/// Runs clang on source that passed the scan, and checks what it read and
/// wrote (layers 2 and 3 of the module documentation).
fn build(source: &str, timeout: Duration) -> Result<Vec<u8>, CompileError> {
    let dir = PrivateDir::new()?;
    let root = dir.path();
    for (name, text) in [
        ("probe.c", source),
        ("vtap_probe.h", VTAP_PROBE_H),
        ("vtap_abi.h", VTAP_ABI_H),
    ] {
        fs::write(root.join(name), text).map_err(|e| io_err(&format!("writing {name}"), e))?;
    }
    let allowed = AllowedDirs::new(root);

    let run = run_clang(root, timeout)?;
    if run.timed_out {
        return Err(CompileError::Timeout(timeout));
    }
    if !run.status.success() {
        let text = String::from_utf8_lossy(&run.stderr);
        let mut msg = if allowed.diagnostics_ok(&text) {
            relative_paths(&text, root)
        } else {
            WITHHELD.to_string()
        };
        if run.stderr_truncated {
            msg.push_str("\n(further messages dropped)");
        }
        if let Some(sig) = run.status.signal() {
            msg.push_str(&format!(
                "\n(clang was killed by signal {sig}; it may have hit a resource limit)"
            ));
        }
        if msg.trim().is_empty() {
            msg = format!("clang failed ({}) without a message", run.status);
        }
        return Err(CompileError::Rejected(msg));
    }

    allowed.check_deps(&root.join("probe.d"))?;
    let obj_path = root.join("probe.o");
    let len = fs::metadata(&obj_path)
        .map_err(|e| io_err("clang wrote no object", e))?
        .len();
    if len > MAX_OBJECT_BYTES as u64 {
        return Err(CompileError::NotBpf(format!(
            "the object is {len} bytes, at most {MAX_OBJECT_BYTES}"
        )));
    }
    let obj = fs::read(&obj_path).map_err(|e| io_err("reading the object", e))?;
    check_object(&obj)?;
    Ok(obj)
}

// ------------------------------------------------------------ running clang

/// What a run of clang left.
struct ClangRun {
    status: ExitStatus,
    stderr: Vec<u8>,
    stderr_truncated: bool,
    timed_out: bool,
}

/// The compiler to run: `VTAP_CLANG` or `clang-19`.
fn compiler() -> OsString {
    std::env::var_os("VTAP_CLANG")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| CLANG.into())
}

/// The Debian multiarch include directory of the host (`asm/*` lives there).
fn multiarch_include() -> PathBuf {
    PathBuf::from(format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH))
}

fn run_clang(dir: &Path, timeout: Duration) -> Result<ClangRun, CompileError> {
    let clang = compiler();
    let ruleset = confinement(dir, &clang)?;
    let ruleset_fd = ruleset.as_raw_fd();
    let mut cmd = Command::new(&clang);
    cmd.args([
        "--no-default-config",
        "-target",
        "bpf",
        "-O2",
        "-g",
        "-Wall",
        "-std=gnu11",
        "-nostdinc",
        "-fno-color-diagnostics",
        "-I",
        ".",
        "-isystem",
        "/usr/include/bpf",
        "-isystem",
    ])
    .arg(multiarch_include())
    .args([
        "-isystem",
        "/usr/include",
        "-MD",
        "-MF",
        "probe.d",
        "-c",
        "probe.c",
        "-o",
        "probe.o",
    ])
    .current_dir(dir)
    .env_clear()
    .env(
        "PATH",
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes system calls (setrlimit, prctl, landlock_restrict_self), which
    // are async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            for (res, lim) in [
                (libc::RLIMIT_AS, CLANG_MAX_AS),
                (libc::RLIMIT_FSIZE, CLANG_MAX_FILE),
                (libc::RLIMIT_CORE, 0),
            ] {
                let rl = libc::rlimit {
                    rlim_cur: lim,
                    rlim_max: lim,
                };
                if libc::setrlimit(res, &rl) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            landlock::restrict_self(ruleset_fd)
        });
    }
    let spawned = cmd.spawn();
    drop(ruleset);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(CompileError::NoCompiler),
        Err(e) => return Err(io_err("running clang-19", e)),
    };

    let mut err = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut truncated = false;
        let mut chunk = [0u8; 8192];
        loop {
            match err.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let room = MAX_STDERR_BYTES - kept.len();
                    truncated |= n > room;
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        (kept, truncated)
    });

    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => {
                kill_group(&mut child);
                let _ = child.wait();
                return Err(io_err("waiting for clang", e));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            kill_group(&mut child);
            break child.wait().map_err(|e| io_err("waiting for clang", e))?;
        }
        std::thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(10));
    };
    let (stderr, stderr_truncated) = reader.join().unwrap_or_default();
    Ok(ClangRun {
        status,
        stderr,
        stderr_truncated,
        timed_out,
    })
}

/// The Landlock ruleset clang runs under: read and execute beneath `/usr`
/// (and beneath the compiler's installation when `VTAP_CLANG` points
/// elsewhere), read `/etc/ld.so.cache`, everything in the private directory.
fn confinement(dir: &Path, clang: &std::ffi::OsStr) -> Result<landlock::Ruleset, CompileError> {
    let unconfined = |e: io::Error| {
        CompileError::Io(format!(
            "cannot confine the compiler with Landlock ({e}); probe source is compiled only \
             under Landlock (a kernel with CONFIG_SECURITY_LANDLOCK and landlock in its lsm= \
             list); pre-built objects can still be loaded"
        ))
    };
    let rules = landlock::Ruleset::new().map_err(unconfined)?;
    rules.allow_read(Path::new("/usr")).map_err(unconfined)?;
    let cache = Path::new("/etc/ld.so.cache");
    if cache.exists() {
        rules.allow_read(cache).map_err(unconfined)?;
    }
    if let Some(prefix) = installation_of(clang).filter(|p| !p.starts_with("/usr")) {
        rules.allow_read(&prefix).map_err(unconfined)?;
    }
    rules.allow_all(dir).map_err(unconfined)?;
    Ok(rules)
}

/// Where the compiler is installed: the directory above the one holding
/// its real binary (`/usr/lib/llvm-19` for `/usr/bin/clang-19`), or the
/// binary alone when that directory would be `/` or a top-level one.
fn installation_of(clang: &std::ffi::OsStr) -> Option<PathBuf> {
    let p = Path::new(clang);
    let found = if p.components().count() > 1 {
        p.to_path_buf()
    } else {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join(p))
            .find(|c| c.is_file())?
    };
    let real = fs::canonicalize(found).ok()?;
    match real.parent().and_then(Path::parent) {
        Some(prefix) if prefix.components().count() >= 3 => Some(prefix.to_path_buf()),
        _ => Some(real),
    }
}

/// The few Landlock calls needed to confine clang (raw system calls: the
/// libc crate has no wrappers).
mod landlock {
    use std::fs::OpenOptions;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;

    const CREATE_RULESET_VERSION: u32 = 1;
    const RULE_PATH_BENEATH: libc::c_int = 1;
    const ACCESS_FS_EXECUTE: u64 = 1 << 0;
    const ACCESS_FS_READ_FILE: u64 = 1 << 2;
    const ACCESS_FS_READ_DIR: u64 = 1 << 3;

    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
    }

    #[repr(C, packed)]
    struct PathBeneathAttr {
        allowed_access: u64,
        parent_fd: i32,
    }

    /// A ruleset, built in the parent; [`restrict_self`] applies it in the
    /// child.
    pub(super) struct Ruleset {
        fd: OwnedFd,
        handled: u64,
    }

    impl Ruleset {
        /// A ruleset that handles every file-system access the running
        /// kernel's Landlock knows: what no rule allows is denied.
        pub(super) fn new() -> io::Result<Ruleset> {
            // SAFETY: the version query takes no attribute (null, size 0).
            let abi = unsafe {
                libc::syscall(
                    libc::SYS_landlock_create_ruleset,
                    std::ptr::null::<RulesetAttr>(),
                    0usize,
                    CREATE_RULESET_VERSION,
                )
            };
            if abi < 0 {
                return Err(io::Error::last_os_error());
            }
            let handled: u64 = match abi {
                1 => (1 << 13) - 1,     // up to MAKE_SYM
                2 => (1 << 14) - 1,     // + REFER
                3 | 4 => (1 << 15) - 1, // + TRUNCATE
                _ => (1 << 16) - 1,     // + IOCTL_DEV
            };
            let attr = RulesetAttr {
                handled_access_fs: handled,
            };
            // SAFETY: attr is a valid landlock_ruleset_attr prefix of the
            // size passed; the kernel only reads it.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_landlock_create_ruleset,
                    &attr as *const RulesetAttr,
                    std::mem::size_of::<RulesetAttr>(),
                    0u32,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: the kernel returned a new file descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
            Ok(Ruleset { fd, handled })
        }

        /// Allows reading (and executing) files beneath the directory
        /// `path`, or the file `path`.
        pub(super) fn allow_read(&self, path: &Path) -> io::Result<()> {
            let access = if path.is_dir() {
                ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
            } else {
                ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE
            };
            self.add(path, access)
        }

        /// Allows every access beneath the directory `path`.
        pub(super) fn allow_all(&self, path: &Path) -> io::Result<()> {
            self.add(path, self.handled)
        }

        fn add(&self, path: &Path, access: u64) -> io::Result<()> {
            let target = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                .open(path)?;
            let attr = PathBeneathAttr {
                allowed_access: access & self.handled,
                parent_fd: target.as_raw_fd(),
            };
            // SAFETY: attr is a valid, packed landlock_path_beneath_attr;
            // both descriptors are open for the duration of the call.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_landlock_add_rule,
                    self.fd.as_raw_fd(),
                    RULE_PATH_BENEATH,
                    &attr as *const PathBeneathAttr,
                    0u32,
                )
            };
            if r < 0 {
                return Err(io::Error::other(format!(
                    "{}: {}",
                    path.display(),
                    io::Error::last_os_error()
                )));
            }
            Ok(())
        }

        /// The ruleset's descriptor, for [`restrict_self`] in the child.
        pub(super) fn as_raw_fd(&self) -> RawFd {
            self.fd.as_raw_fd()
        }
    }

    /// Sets `no_new_privs` and confines the calling process with the
    /// ruleset. Async-signal-safe (two system calls): meant for `pre_exec`.
    pub(super) fn restrict_self(ruleset: RawFd) -> io::Result<()> {
        // SAFETY: plain system calls on integers.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Kills clang's process group (clang and anything it started); the child
/// is not reaped yet, so its id (the group's) cannot have been reused.
fn kill_group(child: &mut std::process::Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals that process group;
        // no memory is involved.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.kill();
}

/// Shows paths of the private directory relative to it, as the operator
/// wrote them (`probe.c:3:1: …`).
fn relative_paths(text: &str, dir: &Path) -> String {
    let d = dir.display().to_string();
    text.replace(&format!("{d}/"), "").replace(&d, ".")
}

// ------------------------------------------------------- private directory

/// A fresh directory (mode 0700) under the system's temporary directory,
/// removed with everything in it when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> Result<PrivateDir, CompileError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let mut last = None;
        for _ in 0..16 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let p = base.join(format!(
                "vtap-probe-{}-{}-{nanos:08x}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            match fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(PrivateDir(p)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(io_err("creating a private directory", e)),
            }
        }
        Err(io_err(
            "creating a private directory",
            last.unwrap_or_else(|| io::Error::other("name collisions")),
        ))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ------------------------------------------------ files clang may have read

/// The directories whose files a compile may read: the private directory
/// and the header directories behind the allowed include names (as real
/// paths, symlinks resolved).
struct AllowedDirs {
    dirs: Vec<PathBuf>,
    base: PathBuf,
}

impl AllowedDirs {
    fn new(private: &Path) -> AllowedDirs {
        let multiarch = multiarch_include();
        let candidates = [
            private.to_path_buf(),
            "/usr/include/linux".into(),
            "/usr/include/asm".into(),
            "/usr/include/asm-generic".into(),
            "/usr/include/bpf".into(),
            multiarch.join("asm"),
        ];
        AllowedDirs {
            dirs: candidates
                .iter()
                .filter_map(|p| fs::canonicalize(p).ok())
                .collect(),
            base: private.to_path_buf(),
        }
    }

    /// Whether `path` (relative to the private directory, as clang names
    /// it) is a file inside one of the directories.
    fn allows(&self, path: &str) -> bool {
        if path.is_empty() {
            return false;
        }
        match fs::canonicalize(self.base.join(path)) {
            Ok(real) => self.dirs.iter().any(|d| real.starts_with(d)),
            Err(_) => false,
        }
    }

    /// Whether every file that clang's diagnostics point into (`FILE:LINE:`
    /// at the start of a message line, `In file included from FILE:LINE:`)
    /// is allowed; clang's pseudo-files (`<scratch space>`, `<built-in>`,
    /// `<command line>`) are.
    fn diagnostics_ok(&self, text: &str) -> bool {
        text.lines().all(|line| {
            if line.starts_with(char::is_whitespace) {
                return true; // a source excerpt, caret or continuation
            }
            let line = line.strip_prefix("In file included from ").unwrap_or(line);
            match location_file(line) {
                None => true,
                Some(f) if f.starts_with('<') && f.ends_with('>') => true,
                Some(f) => self.allows(f),
            }
        })
    }

    /// Checks clang's dependency list (`-MD`): every file read is allowed.
    fn check_deps(&self, deps: &Path) -> Result<(), CompileError> {
        let mut text = String::new();
        fs::File::open(deps)
            .map_err(|e| io_err("reading clang's dependency list", e))?
            .take(MAX_DEPS_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| io_err("reading clang's dependency list", e))?;
        let text = text.replace("\\\n", " ");
        let mut words = text.split_whitespace();
        if words.next() != Some("probe.o:") {
            return Err(CompileError::Io(
                "clang's dependency list is not in the expected form".into(),
            ));
        }
        for f in words {
            if f.contains('\\') || !self.allows(f) {
                return Err(rejected(format!(
                    "the source reached {f}, a file outside the probe include path \
                     ({ALLOWED_TEXT})"
                )));
            }
        }
        Ok(())
    }
}

/// The file of a diagnostic line `FILE:LINE:…`: the text before the first
/// `:` that is followed by digits and another `:`.
fn location_file(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    let mut i = 0;
    while let Some(off) = line[i..].find(':') {
        let c = i + off;
        let digits = b[c + 1..].iter().take_while(|x| x.is_ascii_digit()).count();
        if digits > 0 && b.get(c + 1 + digits) == Some(&b':') {
            return (c > 0).then(|| &line[..c]);
        }
        i = c + 1;
    }
    None
}

// ------------------------------------------------------------ source scan

/// Identifiers refused anywhere outside comments and literals: they probe
/// for files outside the include path.
const FORBIDDEN_IDENTS: [&str; 3] = ["__has_include", "__has_include_next", "__has_embed"];

/// Directives that read files other than through the checked `#include`.
const FORBIDDEN_DIRECTIVES: [&str; 3] = ["include_next", "import", "embed"];

/// Scans the source as the preprocessor will see it and refuses file
/// inclusions outside the allowed headers (see the module documentation).
fn scan_source(src: &str) -> Result<(), CompileError> {
    if src.contains('\0') {
        return Err(rejected("the source contains a NUL byte"));
    }
    let mut in_comment = false;
    for (lineno, line) in logical_lines(src) {
        scan_line(&line, lineno, &mut in_comment)?;
    }
    Ok(())
}

/// Splits the source into logical lines, as translation phases 1–2 do: `\r\n`
/// and a lone `\r` end lines like `\n`, and a backslash followed only by
/// horizontal whitespace up to the end of the line joins the next line
/// (clang accepts the whitespace). Each line comes with the number of its
/// first physical line.
fn logical_lines(src: &str) -> Vec<(usize, Vec<u8>)> {
    let norm = src.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut start = 1;
    for (i, phys) in norm.split('\n').enumerate() {
        let b = phys.as_bytes();
        let trimmed = b
            .iter()
            .rposition(|&c| !matches!(c, b' ' | b'\t' | 0x0b | 0x0c))
            .map_or(0, |p| p + 1);
        if trimmed > 0 && b[trimmed - 1] == b'\\' {
            cur.extend_from_slice(&b[..trimmed - 1]);
            continue;
        }
        cur.extend_from_slice(b);
        out.push((start, std::mem::take(&mut cur)));
        start = i + 2;
    }
    if !cur.is_empty() {
        out.push((start, cur));
    }
    out
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c >= 0x80
}

fn is_ident_continue(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

fn is_hspace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | 0x0b | 0x0c)
}

/// Skips horizontal whitespace and comments that end on this line from
/// `pos`; `None` when a block comment runs past the end of the line.
fn skip_space(line: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        while pos < line.len() && is_hspace(line[pos]) {
            pos += 1;
        }
        if line[pos..].starts_with(b"/*") {
            let end = find(&line[pos + 2..], b"*/")?;
            pos += 2 + end + 2;
        } else if line[pos..].starts_with(b"//") {
            return Some(line.len());
        } else {
            return Some(pos);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Scans one logical line; `in_comment` carries an open block comment from
/// line to line.
fn scan_line(line: &[u8], lineno: usize, in_comment: &mut bool) -> Result<(), CompileError> {
    let mut pos = 0;
    // Nothing but whitespace, comments and (conservatively: clang treats
    // Unicode whitespace as whitespace) non-ASCII bytes seen on this line.
    let mut at_start = true;
    let mut pragma = false;
    let mut after_pragma_op = false;
    let mut ident_end = usize::MAX;
    let mut last_ident: &[u8] = b"";
    while pos < line.len() {
        if *in_comment {
            match find(&line[pos..], b"*/") {
                Some(e) => {
                    pos += e + 2;
                    *in_comment = false;
                }
                None => return Ok(()),
            }
            continue;
        }
        let c = line[pos];
        let rest = &line[pos..];
        if is_hspace(c) || (at_start && c >= 0x80) {
            pos += 1;
        } else if rest.starts_with(b"/*") {
            *in_comment = true;
            pos += 2;
        } else if rest.starts_with(b"//") {
            return Ok(());
        } else if at_start && (c == b'#' || rest.starts_with(b"%:")) {
            at_start = false;
            pos += if c == b'#' { 1 } else { 2 };
            let (next, is_pragma) = directive(line, pos, lineno)?;
            pos = next;
            pragma = is_pragma;
        } else if c == b'"' || c == b'\'' {
            at_start = false;
            if c == b'"'
                && ident_end == pos
                && matches!(last_ident, b"R" | b"LR" | b"uR" | b"UR" | b"u8R")
            {
                return Err(rejected(format!(
                    "line {lineno}: raw string literals are not allowed in probes"
                )));
            }
            let start = pos + 1;
            pos = start;
            while pos < line.len() && line[pos] != c {
                pos += if line[pos] == b'\\' { 2 } else { 1 };
            }
            let body = &line[start..pos.min(line.len())];
            if after_pragma_op && find(body, b"dependency").is_some() {
                return Err(rejected(format!(
                    "line {lineno}: pragma dependency is not allowed in probes"
                )));
            }
            after_pragma_op = false;
            pos += 1; // the closing quote (past the end when unterminated)
        } else if is_ident_start(c) || c.is_ascii_digit() {
            at_start = false;
            let start = pos;
            while pos < line.len() && is_ident_continue(line[pos]) {
                pos += 1;
            }
            let word = &line[start..pos];
            if let Some(bad) = FORBIDDEN_IDENTS.iter().find(|f| f.as_bytes() == word) {
                return Err(rejected(format!(
                    "line {lineno}: {bad} is not allowed in probes"
                )));
            }
            if pragma && word == b"dependency" {
                return Err(rejected(format!(
                    "line {lineno}: #pragma dependency is not allowed in probes"
                )));
            }
            if word == b"_Pragma" {
                after_pragma_op = true;
            }
            last_ident = word;
            ident_end = pos;
        } else {
            at_start = false;
            pos += 1;
        }
    }
    Ok(())
}

/// Checks a directive whose `#` ends at `pos`; returns where scanning goes
/// on and whether it is a `#pragma`.
fn directive(line: &[u8], pos: usize, lineno: usize) -> Result<(usize, bool), CompileError> {
    let spanning = || {
        rejected(format!(
            "line {lineno}: a comment spanning lines inside a preprocessor directive is not \
             allowed in probes"
        ))
    };
    let start = skip_space(line, pos).ok_or_else(spanning)?;
    let mut end = start;
    while end < line.len() && (line[end].is_ascii_alphanumeric() || line[end] == b'_') {
        end += 1;
    }
    if end < line.len() && (line[end] == b'\\' || line[end] >= 0x80 || line[end] == b'$') {
        return Err(rejected(format!(
            "line {lineno}: malformed preprocessor directive"
        )));
    }
    let name = &line[start..end];
    if let Some(bad) = FORBIDDEN_DIRECTIVES.iter().find(|d| d.as_bytes() == name) {
        return Err(rejected(format!(
            "line {lineno}: #{bad} is not allowed: {ALLOWED_TEXT} with #include"
        )));
    }
    if name != b"include" {
        return Ok((end, name == b"pragma"));
    }
    let t = skip_space(line, end).ok_or_else(spanning)?;
    let close = match line.get(t) {
        Some(b'"') => b'"',
        Some(b'<') => b'>',
        _ => {
            return Err(rejected(format!(
                "line {lineno}: #include must name a header in \"...\" or <...> \
                 (no macros): {ALLOWED_TEXT}"
            )));
        }
    };
    let name_end = line[t + 1..]
        .iter()
        .position(|&c| c == close)
        .map(|p| t + 1 + p);
    let shown = |upto: usize| {
        let s = String::from_utf8_lossy(&line[t..upto.min(line.len())]);
        s.chars().take(120).collect::<String>()
    };
    let Some(name_end) = name_end else {
        return Err(rejected(format!(
            "line {lineno}: #include {} is not allowed: {ALLOWED_TEXT}",
            shown(line.len())
        )));
    };
    let header = &line[t + 1..name_end];
    if !header_allowed(header) {
        return Err(rejected(format!(
            "line {lineno}: #include {} is not allowed: {ALLOWED_TEXT}",
            shown(name_end + 1)
        )));
    }
    Ok((name_end + 1, false))
}

/// Whether an `#include` target may be used: an allowed name, or a plain
/// relative path under an allowed directory.
fn header_allowed(h: &[u8]) -> bool {
    let Ok(h) = std::str::from_utf8(h) else {
        return false;
    };
    let plain = !h.is_empty()
        && h.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'+' | b'.' | b'/'))
        && !h.starts_with('/')
        && !h.contains("..")
        && !h.contains("//");
    plain
        && (ALLOWED_HEADERS.contains(&h)
            || ALLOWED_PREFIXES
                .iter()
                .any(|p| h.len() > p.len() && h.starts_with(p) && !h.ends_with('/')))
}

// ------------------------------------------------------------ object check

const EM_BPF: u16 = 247;
const ET_REL: u16 = 1;
const SHN_XINDEX: u16 = 0xffff;

/// Checks that bytes are an ELF64 little-endian relocatable object for
/// `EM_BPF`, at most [`MAX_OBJECT_BYTES`], whose section headers lie within
/// the file and which has a non-empty `.BTF` section (probes need BTF for
/// their maps). [`CompileError::NotBpf`] says what is wrong.
pub fn check_object(obj: &[u8]) -> Result<(), CompileError> {
    let bad = |why: String| Err(CompileError::NotBpf(why));
    if obj.len() > MAX_OBJECT_BYTES {
        return bad(format!(
            "the object is {} bytes, at most {MAX_OBJECT_BYTES}",
            obj.len()
        ));
    }
    if obj.len() < 64 || &obj[..4] != b"\x7fELF" {
        return bad("not an ELF file".into());
    }
    if obj[4] != 2 {
        return bad("not a 64-bit ELF file".into());
    }
    if obj[5] != 1 {
        return bad("not a little-endian ELF file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([obj[o], obj[o + 1]]);
    let machine = u16_at(18);
    if machine != EM_BPF {
        return bad(format!(
            "ELF machine {machine} ({}), not BPF ({EM_BPF})",
            machine_name(machine)
        ));
    }
    let e_type = u16_at(16);
    if e_type != ET_REL {
        return bad(format!(
            "ELF type {e_type}, not a relocatable object (compile with -c)"
        ));
    }
    let sections = Sections::of(obj).map_err(|w| CompileError::NotBpf(w.to_string()))?;
    match sections
        .find(".BTF")
        .map_err(|w| CompileError::NotBpf(w.to_string()))?
    {
        Some((_, 0)) | None => bad("the object has no .BTF section (compile it with -g)".into()),
        Some(_) => Ok(()),
    }
}

fn machine_name(m: u16) -> &'static str {
    match m {
        3 => "x86",
        40 => "ARM",
        62 => "x86-64",
        183 => "AArch64",
        243 => "RISC-V",
        _ => "other",
    }
}

/// The section header table of an ELF64 little-endian file, bounds-checked.
struct Sections<'a> {
    obj: &'a [u8],
    shoff: usize,
    count: usize,
    /// (offset, size) of the section name string table.
    names: (usize, usize),
}

impl<'a> Sections<'a> {
    const SHDR: usize = 64;

    fn of(obj: &'a [u8]) -> Result<Sections<'a>, &'static str> {
        let u16_at = |o: usize| u16::from_le_bytes([obj[o], obj[o + 1]]);
        let shoff = u64::from_le_bytes(obj[0x28..0x30].try_into().unwrap());
        if u16_at(0x3a) as usize != Self::SHDR {
            return Err("unexpected ELF section header size");
        }
        let shoff = usize::try_from(shoff).map_err(|_| "section headers out of bounds")?;
        if shoff == 0 {
            return Err("no section headers");
        }
        if shoff.checked_add(Self::SHDR).is_none_or(|e| e > obj.len()) {
            return Err("section headers out of bounds (truncated file?)");
        }
        let mut s = Sections {
            obj,
            shoff,
            count: 1,
            names: (0, 0),
        };
        // Extended numbering: counts that do not fit live in section 0.
        let count = match u16_at(0x3c) {
            0 => usize::try_from(s.field(0, 0x20)?).map_err(|_| "too many sections")?,
            n => n as usize,
        };
        let end = count
            .checked_mul(Self::SHDR)
            .and_then(|l| l.checked_add(shoff))
            .ok_or("section headers out of bounds")?;
        if count == 0 || end > obj.len() {
            return Err("section headers out of bounds");
        }
        s.count = count;
        let strndx = match u16_at(0x3e) {
            SHN_XINDEX => s.field(0, 0x28)? as usize & 0xffff_ffff,
            n => n as usize,
        };
        if strndx == 0 || strndx >= count {
            return Err("no section name table");
        }
        s.names = s.range(strndx)?;
        Ok(s)
    }

    /// The 8 bytes at `off` of section header `i`, little-endian (callers
    /// mask the 32-bit fields: sh_name at 0, sh_type at 4, sh_link at 0x28).
    fn field(&self, i: usize, off: usize) -> Result<u64, &'static str> {
        let at = self.shoff + i * Self::SHDR + off;
        let b = self
            .obj
            .get(at..at + 8)
            .ok_or("section headers out of bounds")?;
        Ok(u64::from_le_bytes(b.try_into().unwrap()))
    }

    /// (offset, size) of section `i`'s contents, checked against the file
    /// (SHT_NOBITS sections occupy no bytes).
    fn range(&self, i: usize) -> Result<(usize, usize), &'static str> {
        let sh_type = self.field(i, 0x04)? & 0xffff_ffff;
        let off = self.field(i, 0x18)?;
        let size = self.field(i, 0x20)?;
        if sh_type == 8 {
            return Ok((0, 0));
        }
        let end = off.checked_add(size).ok_or("section out of bounds")?;
        if end > self.obj.len() as u64 {
            return Err("a section lies beyond the end of the file");
        }
        Ok((off as usize, size as usize))
    }

    /// The name of section `i`.
    fn name(&self, i: usize) -> Result<&'a [u8], &'static str> {
        let off = (self.field(i, 0)? & 0xffff_ffff) as usize;
        let table = &self.obj[self.names.0..self.names.0 + self.names.1];
        let rest = table.get(off..).ok_or("section name out of bounds")?;
        let len = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or("unterminated section name")?;
        Ok(&rest[..len])
    }

    /// (offset, size) of the first section called `name`.
    fn find(&self, name: &str) -> Result<Option<(usize, usize)>, &'static str> {
        for i in 1..self.count {
            if self.name(i)? == name.as_bytes() {
                return self.range(i).map(Some);
            }
        }
        Ok(None)
    }
}

// ------------------------------------------------------------------- tests

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::MapLayout;
    use crate::probes::btf::{Btf, LabelFormat};

    const TRAFFIC_BY_DST: &str = include_str!("../../../../ebpf/probes/traffic_by_dst.c");

    fn rejected_msg(r: Result<Vec<u8>, CompileError>) -> String {
        match r {
            Err(CompileError::Rejected(m)) => m,
            other => panic!("expected Rejected, got {:?}", other.map(|o| o.len())),
        }
    }

    fn scan_msg(src: &str) -> String {
        match scan_source(src) {
            Err(CompileError::Rejected(m)) => m,
            other => panic!("expected the scan to refuse {src:?}, got {other:?}"),
        }
    }

    #[test]
    fn library_probe_compiles_with_btf_layouts() {
        let t = Instant::now();
        let obj = compile_c(TRAFFIC_BY_DST).expect("traffic_by_dst.c compiles");
        eprintln!("compiled traffic_by_dst.c in {:?}", t.elapsed());
        check_object(&obj).unwrap();
        let btf = Btf::from_elf(&obj).unwrap();
        let def = btf.map("dst_stats").unwrap();
        assert_eq!(def.map_type, Some(5), "BPF_MAP_TYPE_PERCPU_HASH");
        assert_eq!(def.max_entries, Some(16384));
        let layout = MapLayout::new(&btf, "dst_stats").unwrap();
        assert_eq!(layout.key.size(), 4);
        assert_eq!(layout.value.size(), 16);
        let addr = layout.key.field("addr").unwrap();
        addr.check(LabelFormat::Ipv4).unwrap();
        assert_eq!(
            addr.format(&[10, 0, 1, 5], LabelFormat::Ipv4).unwrap(),
            "10.0.1.5"
        );
        layout.value.field("packets").unwrap();
        layout.value.field("bytes").unwrap();
    }

    #[test]
    fn header_includes_and_all_allowed_forms_compile() {
        let src = r##"
#include <linux/bpf.h>
  # include "vtap_probe.h" // again, with a comment
%:include <vtap_abi.h>
#include <asm/types.h>
#include <bpf/bpf_helpers.h>
/* a comment that mentions #include "/etc/passwd" */
// #include "/etc/passwd"
const char s[] = "#include \"/etc/passwd\" in a string";
char LICENSE[] SEC("license") = "GPL";
SEC("classifier") int p(struct __sk_buff *skb) {
	struct vtap_probe_pkt pkt;
	if (vtap_probe_parse(skb, &pkt) == 0 && pkt.dport == 443)
		return VTAP_PROBE_PASS + s[0] - '#';
	return VTAP_PROBE_PASS;
}
"##;
        let obj = compile_c(src).unwrap();
        check_object(&obj).unwrap();
    }

    #[test]
    fn syntax_error_is_rejected_with_clangs_message() {
        let msg = rejected_msg(compile_c("int f(void) { return 1 +; }\n"));
        eprintln!("{msg}");
        assert!(msg.contains("error"), "{msg}");
        assert!(msg.contains("probe.c:1:"), "{msg}");
        assert!(!msg.contains("vtap-probe-"), "private dir leaked: {msg}");
        // An error inside the probe header names it relatively too.
        let msg = rejected_msg(compile_c(
            "#include \"vtap_probe.h\"\nint f(void) { return undefined_thing; }\n",
        ));
        assert!(msg.contains("probe.c:2:"), "{msg}");
        assert!(!msg.contains("/tmp"), "{msg}");
    }

    #[test]
    fn forbidden_includes_are_refused_before_compiling() {
        for (src, line) in [
            ("#include \"/etc/passwd\"\n", 1),
            ("int x;\n#include </etc/passwd>\n", 2),
            ("#include \"../../x\"\n", 1),
            ("#include <linux/../../../etc/passwd>\n", 1),
            ("\n\n#include <stdio.h>\n", 3),
            ("#include \"probe.c\"\n", 1),
            ("#include \"bpf/\"\n", 1),
            ("#include <linux/*x*/bpf.h>\n", 1),
        ] {
            let msg = rejected_msg(compile_c(src));
            assert!(
                msg.starts_with(&format!("line {line}: #include ")),
                "{src:?}: {msg}"
            );
            assert!(
                msg.contains("is not allowed: probes may include vtap_probe.h"),
                "{msg}"
            );
        }
        // Spellings that the preprocessor also treats as directives.
        for src in [
            "#inc\\\nlude \"/etc/passwd\"\n",
            "#include \\  \n\"/etc/passwd\"\n",
            "int x;\r#include \"/etc/passwd\"\n",
            "/* a\n */ #include \"/etc/passwd\"\n",
            "/* a */ # /* b */ include /* c */ \"/etc/passwd\"\n",
            "\u{a0}#include \"/etc/passwd\"\n",
            "\x0c#include \"/etc/passwd\"\n",
            "%:include \"/etc/passwd\"\n",
            "#define F \"/etc/passwd\"\n#include F\n",
            "#include_next <linux/bpf.h>\n",
            "#import \"/etc/passwd\"\n",
            "static const char d[] = {\n#embed \"/etc/passwd\"\n};\n",
            "# /*\n*/ include \"/etc/passwd\"\n",
            "#\\u0069nclude \"/etc/passwd\"\n",
            "#if __has_include(\"/etc/shadow\")\n#endif\n",
            "#pragma GCC dependency \"/etc/passwd\"\n",
            "_Pragma(\"GCC dependency \\\"/etc/passwd\\\"\")\n",
            "const char *s = R\"x(\")x\";\n#include \"/etc/passwd\"\n",
            "int x;\0\n",
        ] {
            scan_msg(src);
        }
        // A quote or comment opener inside literals/comments does not hide
        // a later directive.
        for src in [
            "const char *s = \"/*\";\n#include \"/etc/passwd\"\n",
            "char c = '\"';\n#include \"/etc/passwd\"\n",
            "const char *s = \"unterminated;\n#include \"/etc/passwd\"\n",
            "// comment \\\n continued\n#include \"/etc/passwd\"\n",
        ] {
            scan_msg(src);
        }
    }

    #[test]
    fn diagnostics_pointing_outside_are_withheld() {
        // #line is harmless but moves diagnostics to a foreign file name:
        // the messages are withheld rather than trusted.
        let msg = rejected_msg(compile_c("#line 1 \"/etc/passwd\"\nint x = ;\n"));
        assert_eq!(msg, WITHHELD);
        assert_eq!(location_file("probe.c:3:4: error: x"), Some("probe.c"));
        assert_eq!(
            location_file("In file included from probe.c:1:").map(|_| ()),
            Some(())
        );
        assert_eq!(location_file("clang-19: error: unknown argument"), None);
    }

    #[test]
    fn files_outside_the_include_path_never_leak_past_the_scan() {
        // What the scan refuses, were it bypassed: Landlock denies the file…
        let msg = rejected_msg(build("#include \"/etc/passwd\"\n", COMPILE_TIMEOUT));
        assert!(msg.contains("cannot open file '/etc/passwd'"), "{msg}");
        assert!(!msg.contains("root:"), "{msg}");
        // … diagnostics quoting a readable foreign file (under /usr, which
        // clang needs) are withheld (stdio.h fails without libc's include
        // path)…
        let msg = rejected_msg(build(
            "#include \"/usr/include/stdio.h\"\n",
            COMPILE_TIMEOUT,
        ));
        assert_eq!(msg, WITHHELD);
        // … and a readable foreign file that compiles fails the dependency
        // check.
        let wordsize = multiarch_include().join("bits/wordsize.h");
        let msg = rejected_msg(build(
            &format!("#include \"{}\"\nint y;\n", wordsize.display()),
            COMPILE_TIMEOUT,
        ));
        assert!(msg.contains("outside the probe include path"), "{msg}");
        // A missing header names only the header.
        let msg = rejected_msg(compile_c("#include <linux/no_such_header.h>\n"));
        assert!(
            msg.contains("'linux/no_such_header.h' file not found"),
            "{msg}"
        );
    }

    #[test]
    fn the_assembler_cannot_read_files_either() {
        // Token pasting spells `asm` past any scan; Landlock stops the read.
        let src = "#define C(a, b) a##b\n\
                   C(as, m)(\".section .rodata.x,\\\"a\\\"\\n.incbin \\\"/etc/hostname\\\"\");\n\
                   int x;\n";
        let msg = rejected_msg(compile_c(src));
        assert!(msg.contains("incbin"), "{msg}");
        // The same through the public include path is fine.
        let ok = "asm(\".section .rodata.x,\\\"a\\\"\\n.incbin \\\"/usr/include/linux/bpf.h\\\"\");\n\
                  int x;\n";
        compile_c(ok).unwrap();
    }

    #[test]
    fn oversized_source_is_refused() {
        let src = format!("/*{}*/\n", "x".repeat(MAX_SOURCE_BYTES));
        match compile_c(&src) {
            Err(CompileError::TooLarge(n)) => assert_eq!(n, src.len()),
            other => panic!("{:?}", other.map(|o| o.len())),
        }
    }

    #[test]
    fn timeout_kills_the_compiler() {
        match compile_with_timeout(TRAFFIC_BY_DST, Duration::from_millis(1)) {
            Err(CompileError::Timeout(d)) => assert_eq!(d, Duration::from_millis(1)),
            other => panic!("{:?}", other.map(|o| o.len())),
        }
    }

    #[test]
    fn check_object_refuses_what_is_not_a_bpf_object() {
        let not_bpf = |obj: &[u8]| match check_object(obj) {
            Err(CompileError::NotBpf(why)) => why,
            other => panic!("expected NotBpf, got {other:?}"),
        };
        assert_eq!(not_bpf(b"garbage"), "not an ELF file");
        assert_eq!(not_bpf(&[0u8; 100]), "not an ELF file");
        let exe = fs::read("/bin/true").unwrap();
        assert!(not_bpf(&exe).contains("x86-64"), "{}", not_bpf(&exe));
        assert!(not_bpf(&vec![0u8; MAX_OBJECT_BYTES + 1]).contains("at most"));

        let obj = compile_c(TRAFFIC_BY_DST).unwrap();
        check_object(&obj).unwrap();
        // Truncated: section headers (at the end) missing.
        assert!(not_bpf(&obj[..obj.len() / 2]).contains("bounds"));
        // Not relocatable.
        let mut exec = obj.clone();
        exec[16] = 2;
        assert!(not_bpf(&exec).contains("relocatable"));
        // Big-endian.
        let mut be = obj.clone();
        be[5] = 2;
        assert!(not_bpf(&be).contains("little-endian"));
        // Without BTF: compiled without -g by hand.
        let dir = PrivateDir::new().unwrap();
        fs::write(dir.path().join("a.c"), "int x = 1;\n").unwrap();
        let st = Command::new(compiler())
            .args(["-target", "bpf", "-O2", "-c", "a.c", "-o", "a.o"])
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        let nobtf = fs::read(dir.path().join("a.o")).unwrap();
        assert!(not_bpf(&nobtf).contains(".BTF"));
    }

    #[test]
    fn private_dirs_are_removed() {
        let d = PrivateDir::new().unwrap();
        let p = d.path().to_path_buf();
        assert!(p.is_dir());
        drop(d);
        assert!(!p.exists());
    }
}
