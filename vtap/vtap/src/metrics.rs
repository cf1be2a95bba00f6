//! `/metrics`: a fresh registry per scrape, filled from one counter snapshot
//! of the datapath and encoded by the `prometheus` crate. Names follow the
//! contract in PRODUCT.md (base units, `_total` counters, bounded labels:
//! tap names, policy names, output labels and fixed reason/direction sets).

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use vtap_abi::drop_reason;
use vtap_core::engine::Engine;

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// Renders every metric in Prometheus text format 0.0.4.
pub fn render(engine: &Engine) -> anyhow::Result<String> {
    let snap = engine.snapshot()?;
    let r = Registry::new();
    let tap_packets = counter(
        &r,
        "vtap_tap_packets_total",
        "Packets seen on a tapped interface.",
        &["tap", "direction"],
    );
    let tap_bytes = counter(
        &r,
        "vtap_tap_bytes_total",
        "Bytes seen on a tapped interface.",
        &["tap", "direction"],
    );
    let tap_trunc = counter(
        &r,
        "vtap_tap_truncated_packets_total",
        "Packets whose headers ended early (parsed as far as possible and passed unchanged).",
        &["tap", "direction"],
    );
    let tap_class = counter(
        &r,
        "vtap_tap_classified_packets_total",
        "Packets that matched at least one policy.",
        &["tap", "direction"],
    );
    for t in &snap.taps {
        let l = [t.tap.as_str(), t.dir.as_str()];
        tap_packets.with_label_values(&l).inc_by(t.stats.packets);
        tap_bytes.with_label_values(&l).inc_by(t.stats.bytes);
        tap_trunc.with_label_values(&l).inc_by(t.stats.truncated);
        tap_class.with_label_values(&l).inc_by(t.stats.classified);
    }

    let matched = counter(
        &r,
        "vtap_policy_matched_packets_total",
        "Packets matched by a policy.",
        &["policy", "direction"],
    );
    let matched_b = counter(
        &r,
        "vtap_policy_matched_bytes_total",
        "Bytes matched by a policy.",
        &["policy", "direction"],
    );
    let mirrored = counter(
        &r,
        "vtap_policy_mirrored_packets_total",
        "Copies delivered to an output for a policy (a copy shared by several policies counts for each).",
        &["policy", "output"],
    );
    let dropped = counter(
        &r,
        "vtap_policy_dropped_copies_total",
        "Copies selected by a policy that were not delivered, by reason.",
        &["policy", "reason"],
    );
    let active = gauge(
        &r,
        "vtap_policy_enabled",
        "1 when the policy is enabled, 0 when disabled.",
        &["policy"],
    );
    for p in &snap.policies {
        for (i, d) in ["ingress", "egress"].iter().enumerate() {
            matched
                .with_label_values(&[p.policy.as_str(), d])
                .inc_by(p.matched[i].packets);
            matched_b
                .with_label_values(&[p.policy.as_str(), d])
                .inc_by(p.matched[i].bytes);
        }
        for (out, s) in &p.outputs {
            mirrored
                .with_label_values(&[p.policy.as_str(), out.as_str()])
                .inc_by(s.mirrored);
        }
        for (i, name) in drop_reason::NAMES.iter().enumerate() {
            if let Some(name) = name {
                dropped
                    .with_label_values(&[p.policy.as_str(), name])
                    .inc_by(p.drops.reason[i]);
            }
        }
    }
    for p in engine.policies() {
        active
            .with_label_values(&[p.name.as_str()])
            .set(p.enabled as i64);
    }

    let out_sent = counter(
        &r,
        "vtap_output_packets_total",
        "Copies sent to an output.",
        &["output"],
    );
    let out_failed = counter(
        &r,
        "vtap_output_failed_packets_total",
        "Copies that could not be sent to an output.",
        &["output"],
    );
    for o in &snap.outputs {
        out_sent
            .with_label_values(&[o.output.as_str()])
            .inc_by(o.stats.sent);
        out_failed
            .with_label_values(&[o.output.as_str()])
            .inc_by(o.stats.failed);
    }

    let attached = gauge(
        &r,
        "vtap_tap_attached",
        "1 when vtap is attached to the interface in that direction.",
        &["tap", "direction"],
    );
    for (name, st) in engine.taps() {
        for d in &st.wanted {
            attached
                .with_label_values(&[name.as_str(), d.as_str()])
                .set(st.attached.contains(d) as i64);
        }
    }
    let flips = prometheus::IntCounter::new(
        "vtap_policy_generation_flips_total",
        "Atomic switches to a new policy generation.",
    )?;
    r.register(Box::new(flips.clone()))?;
    flips.inc_by(engine.generation_flips());

    let mut buf = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut buf)?;
    Ok(String::from_utf8(buf)?)
}
