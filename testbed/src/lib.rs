//! Throwaway network-namespace testbeds for vtap's end-to-end tests, demo and
//! benchmarks.
//!
//! A [`Testbed`] is a "host" namespace with a Linux bridge `br0` and one veth
//! per VM (`vmN-tap`, the interfaces vtap taps, like a hypervisor's tap
//! devices), a namespace per VM (`eth0`, `10.0.0.N/24`, `fd00::N/64`), monitor
//! namespaces behind `monN`, and optionally a remote host reached over VXLAN
//! (`vx0`). Names carry a unique per-run prefix; everything is removed when
//! the testbed is dropped, also while a test panics.
//!
//! ```no_run
//! use vtap_testbed::{Options, Testbed};
//! # fn main() -> anyhow::Result<()> {
//! let tb = Testbed::new(Options::default().vms(2))?;
//! let daemon = tb.start_daemon(&[("icmp.yaml", "version: 1\nname: icmp\n...")])?;
//! let cap = tb.capture_monitor(0)?;
//! let ping = tb.ping(1, 2, 10, false)?;
//! let got = cap.stop()?;
//! println!("{} copies, vtap says {:?}", got.frames.len(),
//!     daemon.metrics()?.get("vtap_policy_mirrored_packets_total", &[("policy", "icmp")])?);
//! daemon.stop()?;
//! # Ok(()) }
//! ```

pub mod attack;
pub mod capture;
pub mod cmd;
pub mod daemon;
pub mod metrics;
pub mod netns;
pub mod suricata;
pub mod testbed;
pub mod traffic;
pub mod vm;

pub use capture::{Capture, Captured, Frame, IpInfo, icmp_frame, inject, parse_frame, read_pcap};
pub use daemon::{Daemon, HttpResponse, bpf_fds, vtap_bin, wait_until};
pub use metrics::{Metrics, Sample};
pub use testbed::{Monitor, Options, Remote, Testbed, Vm};
pub use traffic::{PingReport, TcpReport, Udp, UdpFlow, UdpReport};

/// A file of the probe library (`ebpf/probes/FILE`), as text.
pub fn probe_library(file: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ebpf/probes")
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether we run in CI (`CI=true` or `CI=1`), where privileged tests must
/// not skip.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Gate for privileged tests: returns `true` when the test may run. Outside
/// CI and without root it prints `skipping: needs root` and returns `false`;
/// in CI without root it panics, so a skip cannot hide a regression.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if in_ci() {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    eprintln!("{test}: skipping: needs root");
    false
}
