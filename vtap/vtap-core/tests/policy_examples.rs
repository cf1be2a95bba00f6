//! The example policies in `mirror-policies/` are valid, alone and as a set,
//! and do what their comments say on the testbed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use vtap_abi::Dir;
use vtap_core::policy::compile::{Assignment, compile};
use vtap_core::policy::load::{load_and_validate, load_path};
use vtap_core::policy::reference::classify;
use vtap_core::policy::{Policy, validate_policy};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mirror-policies")
}

fn set() -> Vec<Policy> {
    load_and_validate(&dir()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn directory_is_a_valid_set() {
    let ps = set();
    assert!((4..=8).contains(&ps.len()), "{} policies", ps.len());
    assert!(ps.iter().any(|p| !p.enabled), "one example is disabled");
    let a = Assignment::assign(&ps, &Assignment::default()).unwrap();
    let c = compile(&ps, &a).unwrap();
    assert!(c.outputs.values().all(|o| o.interface == "mon0"
        || o.capture.as_deref() == Some("web")
        || o.vxlan.is_some()));
    // The remote (documentation address) example stays disabled: the demo
    // and tests load this directory and must send nothing off the testbed.
    for p in &ps {
        if p.outputs
            .iter()
            .any(|o| o.key().is_some_and(|k| k.vxlan.is_some()))
        {
            assert!(
                !p.enabled,
                "{} sends to a remote VTEP and must be disabled",
                p.name
            );
        }
    }
    assert_eq!(c.pcap.len(), 1, "one capture");
}

#[test]
fn each_file_is_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let ps = load_path(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ps.len(), 1, "{}", path.display());
        assert_eq!(validate_policy(&ps[0]), vec![], "{}", path.display());
        load_and_validate(&path).unwrap_or_else(|e| panic!("{e}"));
        n += 1;
    }
    assert!(n >= 4);
}

fn ipv4_tcp(src: [u8; 4], dst: [u8; 4], proto: u8, sp: u16, dp: u16, flags: u8) -> Vec<u8> {
    let mut f = vec![0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sp.to_be_bytes());
    f.extend_from_slice(&dp.to_be_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn examples_select_what_they_say() {
    let ps = set();
    let vm1 = [10, 0, 0, 1];
    let vm2 = [10, 0, 0, 2];
    // vm1 opens a web connection to vm2, vm2 answers.
    let syn = ipv4_tcp(vm1, vm2, 6, 40000, 443, 0x02);
    assert_eq!(
        classify(&ps, "vm1-tap", Dir::Ingress, &syn, None),
        names(&["tcp-syn", "web-bidir", "web-pcap"])
    );
    let synack = ipv4_tcp(vm2, vm1, 6, 443, 40000, 0x12);
    assert_eq!(
        classify(&ps, "vm2-tap", Dir::Ingress, &synack, None),
        names(&["web-bidir", "web-pcap"])
    );
    // Seen again on the receiving tap: nothing (ingress-only policies).
    assert!(classify(&ps, "vm2-tap", Dir::Egress, &syn, None).is_empty());
    // DNS answer.
    let dns = ipv4_tcp(vm2, vm1, 17, 53, 33333, 0);
    assert_eq!(
        classify(&ps, "vm2-tap", Dir::Ingress, &dns, None),
        names(&["dns"])
    );
    // ICMP echo.
    let ping = ipv4_tcp(vm1, vm2, 1, 0x0800, 0, 0);
    assert_eq!(
        classify(&ps, "vm1-tap", Dir::Ingress, &ping, None),
        names(&["icmp-to-ids"])
    );
    // The disabled debug policy never fires.
    assert!(classify(&ps, "vm3-tap", Dir::Egress, &ping, None).is_empty());
}
