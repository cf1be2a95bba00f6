//! The deployment files in `deploy/` are usable: the systemd unit passes
//! `systemd-analyze verify`, the DaemonSet has what an eBPF agent on a
//! hypervisor needs. (The sample daemon config is checked by the daemon's
//! own parser in `vtap`'s unit tests.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vtap_testbed::cmd;

fn deploy(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(p)
}

#[test]
fn systemd_unit_verifies() {
    // systemd-analyze checks that ExecStart exists: point it at the built
    // binary (the unit's path is where an install puts it).
    let unit = std::fs::read_to_string(deploy("systemd/vtap.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/vtap daemon --config /etc/vtap/vtap.yaml"));
    let bin = vtap_testbed::vtap_bin();
    assert!(bin.exists(), "build vtap first: {}", bin.display());
    let dir = std::env::temp_dir().join(format!("vtap-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vtap.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/vtap", bin.to_str().unwrap()),
    )
    .unwrap();
    let o = cmd::run(
        std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path),
        Duration::from_secs(60),
    )
    .expect("systemd-analyze (Debian: systemd) runs");
    let _ = std::fs::remove_dir_all(&dir);
    // Only complaints about this unit count (the host's own units may have some).
    let ours: Vec<&str> = o
        .stderr
        .lines()
        .chain(o.stdout.lines())
        .filter(|l| l.contains("vtap.service"))
        .collect();
    assert!(o.success() && ours.is_empty(), "{}{}", o.stdout, o.stderr);
}

#[test]
fn daemonset_has_what_an_ebpf_agent_needs() {
    let text = std::fs::read_to_string(deploy("kubernetes/vtap-daemonset.yaml")).unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML"))
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Namespace", "ConfigMap", "DaemonSet"]);
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    assert_eq!(ds["apiVersion"], "apps/v1");
    let t = &ds["spec"]["template"];
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        t["metadata"]["labels"]
    );
    let spec = &t["spec"];
    assert_eq!(
        spec["hostNetwork"], true,
        "the VMs' taps are in the host's netns"
    );
    let a = &t["metadata"]["annotations"];
    assert_eq!(a["prometheus.io/scrape"], "true");
    assert_eq!(a["prometheus.io/path"], "/metrics");
    let c = &spec["containers"][0];
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for need in ["BPF", "NET_ADMIN", "PERFMON"] {
        assert!(caps.contains(&need), "capability {need} missing: {caps:?}");
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let bpffs = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["hostPath"]["path"] == "/sys/fs/bpf")
        .expect("the host's bpffs as a volume");
    let mounted = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|m| m["name"] == bpffs["name"] && m["mountPath"] == "/sys/fs/bpf");
    assert!(mounted, "bpffs volume not mounted at /sys/fs/bpf");
}
