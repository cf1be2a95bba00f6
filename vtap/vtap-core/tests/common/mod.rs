//! Shared helpers of the privileged datapath tests: a private network
//! namespace per test thread, a harness that loads the real object, applies
//! a policy set through compile → resolve → reconcile, and runs frames
//! through the real programs with BPF_PROG_TEST_RUN, and a frame builder.
#![allow(dead_code)]

pub mod frames;

use std::collections::{BTreeMap, BTreeSet};

use aya::programs::{TestRun, TestRunOptions};
use vtap_abi::{Dir, MAX_OUTPUTS, OutputStats, PolicyDrops, PolicyStats};
use vtap_core::datapath::reconcile::Reconciler;
use vtap_core::datapath::{Datapath, stats};
use vtap_core::engine::{TapState, allocate, resolve_with};
use vtap_core::netlink::{Link, Links};
use vtap_core::policy::compile::{Assignment, compile};
use vtap_core::policy::model::Policy;

/// Privileged tests need root. In CI (CI=true) they must run: no skip.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("privileged test cannot run: not root (CI must run it as root)");
    }
    eprintln!("skipping: needs root (BPF_PROG_TEST_RUN)");
    false
}

/// Moves the calling thread into a fresh network namespace with `lo` up, so
/// copies sent to ifindex 1 stay inside the test.
pub fn private_netns() {
    // SAFETY: unshare only affects the calling thread's namespaces.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let st = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(st.success());
}

/// The tap name the tests' policies use; it maps to ifindex 1 (`lo`), which
/// BPF_PROG_TEST_RUN gives the skb when no ifindex is passed.
pub const TAP: &str = "vm1-tap";
/// The output interface name of the tests' policies; it maps to `lo`.
pub const MON: &str = "mon0";

/// The real datapath with a policy set applied, and a way to run frames.
pub struct Harness {
    pub dp: Datapath,
    rec: Reconciler,
    pub assignment: Assignment,
    pub policies: Vec<Policy>,
    ifindex_of_outputs: u32,
    /// Address tables with at most this many prefix lengths use the hash
    /// lookups, others the LPM tries (0: always LPM).
    pub hash_lens: usize,
}

impl Harness {
    /// Loads the datapath; outputs resolve to `lo` (copies delivered) when
    /// `deliver`, else to ifindex 0 (counted as output_down).
    pub fn new(deliver: bool) -> Harness {
        Self::with_options(deliver, Default::default())
    }

    /// [`Harness::new`] with datapath load options (e.g. a small ring).
    pub fn with_options(deliver: bool, opts: vtap_core::datapath::LoadOptions) -> Harness {
        Harness {
            dp: Datapath::load_with(opts).expect("load datapath"),
            rec: Reconciler::new(),
            assignment: Assignment::default(),
            policies: Vec::new(),
            ifindex_of_outputs: if deliver { 1 } else { 0 },
            hash_lens: vtap_abi::MAX_LENS,
        }
    }

    /// Outputs resolve to this interface index.
    pub fn with_output_ifindex(mut self, ifindex: u32) -> Harness {
        self.ifindex_of_outputs = ifindex;
        self
    }

    /// Applies policies (already valid) like the engine does, with `TAP`
    /// attached in both directions as ifindex 1.
    pub fn apply(&mut self, policies: Vec<Policy>) {
        let (a, _, _) = allocate(&self.assignment, &policies).expect("allocate");
        let c = compile(&policies, &a).expect("compile");
        let mut taps = BTreeMap::new();
        taps.insert(
            TAP.to_string(),
            TapState {
                xdp: false,
                ifindex: 1,
                slot: 0,
                wanted: Dir::ALL.into_iter().collect(),
                attached: Dir::ALL.into_iter().collect(),
                error: None,
            },
        );
        let mut links = Links::new();
        links.insert(
            TAP.to_string(),
            Link {
                ifindex: 1,
                up: true,
                mtu: 65536,
            },
        );
        if self.ifindex_of_outputs != 0 {
            for p in &policies {
                for k in vtap_core::engine::output_keys(p) {
                    links.insert(
                        k.interface.clone(),
                        Link {
                            ifindex: self.ifindex_of_outputs,
                            up: true,
                            mtu: 65536,
                        },
                    );
                }
            }
        }
        let img = resolve_with(&c, &taps, &links, self.hash_lens);
        self.rec.apply(&self.dp, &img).expect("reconcile");
        self.assignment = a;
        self.policies = policies;
    }

    /// Runs one frame through the program of `dir`; asserts it returned
    /// TC_ACT_UNSPEC and left the frame byte-identical.
    pub fn run(&self, dir: Dir, frame: &[u8]) {
        self.try_run(dir, frame).unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_TEST_RUN on {} bytes {}: {e}",
                frame.len(),
                frame.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        })
    }

    /// Like [`Harness::run`], but returns the syscall's error: the kernel's
    /// BPF_PROG_TEST_RUN refuses (EINVAL) an untagged IPv4/IPv6 frame whose
    /// L3 header is shorter than its fixed part, so such frames cannot be
    /// tested untagged (with a VLAN tag in front they can, see
    /// `truncated_and_odd_frames_pass_unchanged`).
    pub fn try_run(&self, dir: Dir, frame: &[u8]) -> Result<(), String> {
        let mut out = vec![0u8; frame.len() + 256];
        let r = self
            .dp
            .program(dir)
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .map_err(|e| format!("{e:?}"))?;
        assert_eq!(r.return_value as i32, -1, "TC_ACT_UNSPEC");
        assert_eq!(
            &out[..r.data_size_out as usize],
            frame,
            "frame altered by the tap"
        );
        Ok(())
    }

    /// Whether the kernel's test runner refuses this frame (see `try_run`).
    pub fn kernel_refuses(frame: &[u8]) -> bool {
        frame.len() < 14
            || match u16::from_be_bytes([frame[12], frame[13]]) {
                0x0800 => frame.len() < 14 + 20,
                0x86dd => frame.len() < 14 + 40,
                _ => false,
            }
    }

    /// Per policy name: matched packets (ingress, egress).
    pub fn matched(&self) -> BTreeMap<String, [u64; 2]> {
        let mut m = BTreeMap::new();
        for (name, &slot) in &self.assignment.policy_slots {
            let s = slot as u32;
            let v: Vec<(u32, PolicyStats)> =
                stats::sum_percpu_array(&self.dp, &self.dp.maps.policy_stats, [s * 2, s * 2 + 1])
                    .unwrap();
            m.insert(name.clone(), [v[0].1.packets, v[1].1.packets]);
        }
        m
    }

    /// Names of the policies whose matched counter moved since `before`.
    pub fn fired_since(&self, before: &BTreeMap<String, [u64; 2]>) -> BTreeSet<String> {
        self.matched()
            .into_iter()
            .filter(|(n, v)| before.get(n) != Some(v))
            .map(|(n, _)| n)
            .collect()
    }

    /// Runs a frame and returns the policies that fired.
    pub fn classify(&self, dir: Dir, frame: &[u8]) -> BTreeSet<String> {
        let before = self.matched();
        self.run(dir, frame);
        self.fired_since(&before)
    }

    /// (mirrored, failed) copies of a policy to an output id.
    pub fn output_stats(&self, policy: &str, output_id: u8) -> OutputStats {
        let s = self.assignment.policy_slots[policy] as u32;
        stats::sum_percpu_array(
            &self.dp,
            &self.dp.maps.output_stats,
            [s * MAX_OUTPUTS as u32 + output_id as u32],
        )
        .unwrap()
        .remove(0)
        .1
    }

    /// Drop reasons of a policy.
    pub fn drops(&self, policy: &str) -> PolicyDrops {
        let s = self.assignment.policy_slots[policy] as u32;
        stats::sum_percpu_array(&self.dp, &self.dp.maps.policy_drops, [s])
            .unwrap()
            .remove(0)
            .1
    }
}

/// Parses one policy from YAML.
pub fn policy(yaml: &str) -> Policy {
    let mut v = vtap_core::policy::load::parse_str(yaml, "test").expect("parse");
    assert_eq!(v.len(), 1);
    v.remove(0)
}
