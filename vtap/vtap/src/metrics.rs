//! `/metrics`: one counter snapshot of the datapath per scrape, described
//! once as a list of [`Family`] values, then encoded by a maintained client
//! crate (`vtap_core::exposition`): Prometheus text format 0.0.4 by
//! `prometheus`, OpenMetrics 1.0 (with `# EOF`) by `prometheus-client` when
//! the scraper asks for it.
//!
//! Names follow the contract in PRODUCT.md: base units, `_total` on counters,
//! bounded labels (tap names, policy names, output labels, and fixed sets of
//! directions and drop reasons).

use std::collections::BTreeMap;
use vtap_abi::drop_reason;

use vtap_core::engine::Engine;
pub use vtap_core::exposition::{Family, Kind, encode_openmetrics, encode_text, probe_families};

use crate::wire::CaptureInfo;

/// The transmit failures of the running set's output devices, as counted
/// by the devices (`tx` from [`vtap_core::netlink::tx_failures`]).
pub fn device_families(
    engine: &Engine,
    tx: &BTreeMap<String, vtap_core::netlink::TxFailures>,
) -> Vec<Family> {
    let mut dropped = Family::new(
        "vtap_output_device_tx_dropped_total",
        "Packets an output interface dropped on transmit, as the device counts them (all its traffic, vtap's copies included): e.g. vtap-vxlan without a route to a remote.",
        Kind::Counter,
        &["interface"],
    );
    let mut errors = Family::new(
        "vtap_output_device_tx_errors_total",
        "Transmit errors of an output interface, as the device counts them (all its traffic, vtap's copies included).",
        Kind::Counter,
        &["interface"],
    );
    let outputs: std::collections::BTreeSet<&str> = engine
        .assignment()
        .output_ids
        .keys()
        .filter(|k| k.capture.is_none())
        .map(|k| k.interface.as_str())
        .collect();
    for name in outputs {
        if let Some(t) = tx.get(name) {
            dropped.add(&[name], t.dropped);
            errors.add(&[name], t.errors);
        }
    }
    vec![dropped, errors]
}

/// Every family, from one snapshot of the datapath and the captures.
pub fn families(engine: &Engine, captures: &[CaptureInfo]) -> anyhow::Result<Vec<Family>> {
    use Kind::*;
    let snap = engine.snapshot()?;
    let td = &["tap", "direction"];
    let mut tap_packets = Family::new(
        "vtap_tap_packets_total",
        "Packets seen on a tapped interface.",
        Counter,
        td,
    );
    let mut tap_bytes = Family::new(
        "vtap_tap_bytes_total",
        "Bytes seen on a tapped interface.",
        Counter,
        td,
    );
    let mut tap_trunc = Family::new(
        "vtap_tap_truncated_packets_total",
        "Packets whose headers ended early (parsed as far as possible and passed unchanged).",
        Counter,
        td,
    );
    let mut tap_class = Family::new(
        "vtap_tap_classified_packets_total",
        "Packets that matched at least one policy.",
        Counter,
        td,
    );
    for t in &snap.taps {
        let l = [t.tap.as_str(), t.dir.as_str()];
        tap_packets.add(&l, t.stats.packets);
        tap_bytes.add(&l, t.stats.bytes);
        tap_trunc.add(&l, t.stats.truncated);
        tap_class.add(&l, t.stats.classified);
    }

    let pd = &["policy", "direction"];
    let mut matched = Family::new(
        "vtap_policy_matched_packets_total",
        "Packets matched by a policy.",
        Counter,
        pd,
    );
    let mut matched_b = Family::new(
        "vtap_policy_matched_bytes_total",
        "Bytes matched by a policy.",
        Counter,
        pd,
    );
    let mut mirrored = Family::new(
        "vtap_policy_mirrored_packets_total",
        "Copies delivered to an output for a policy (a copy shared by several policies counts for each).",
        Counter,
        &["policy", "output"],
    );
    let mut dropped = Family::new(
        "vtap_policy_dropped_copies_total",
        "Copies selected by a policy that were not delivered, by reason.",
        Counter,
        &["policy", "reason"],
    );
    for p in &snap.policies {
        for (i, d) in ["ingress", "egress"].iter().enumerate() {
            matched.add(&[p.policy.as_str(), d], p.matched[i].packets);
            matched_b.add(&[p.policy.as_str(), d], p.matched[i].bytes);
        }
        for (out, s) in &p.outputs {
            mirrored.add(&[p.policy.as_str(), out.as_str()], s.mirrored);
        }
        for (i, name) in drop_reason::NAMES.iter().enumerate() {
            if let Some(name) = name {
                dropped.add(&[p.policy.as_str(), name], p.drops.reason[i]);
            }
        }
    }
    let mut enabled = Family::new(
        "vtap_policy_enabled",
        "1 when the policy is enabled, 0 when disabled.",
        Gauge,
        &["policy"],
    );
    for p in engine.policies() {
        enabled.add(&[p.name.as_str()], p.enabled as u64);
    }
    // Adaptive mirroring (policies with `when:`).
    let mut cond_active = Family::new(
        "vtap_policy_condition_active",
        "1 while the policy's when: condition holds (the policy is in effect), else 0.",
        Gauge,
        &["policy"],
    );
    let mut cond_value = Family::new(
        "vtap_policy_condition_value",
        "The value last compared by the policy's when: condition (rate per second of a counter, or value).",
        GaugeF64,
        &["policy"],
    );
    let mut activations = Family::new(
        "vtap_policy_activations_total",
        "Times the policy's when: condition started to hold (policy activated).",
        Counter,
        &["policy"],
    );
    let mut deactivations = Family::new(
        "vtap_policy_deactivations_total",
        "Times the policy's when: condition stopped holding (policy deactivated).",
        Counter,
        &["policy"],
    );
    for (name, (_, st)) in engine.conditions().statuses() {
        let l = [name.as_str()];
        cond_active.add(&l, st.active as u64);
        if let Some(v) = st.value {
            cond_value.add(&l, v.to_bits());
        }
        activations.add(&l, st.activations);
        deactivations.add(&l, st.deactivations);
    }

    let mut out_sent = Family::new(
        "vtap_output_packets_total",
        "Copies sent to an output.",
        Counter,
        &["output"],
    );
    let mut out_failed = Family::new(
        "vtap_output_failed_packets_total",
        "Copies that could not be sent to an output.",
        Counter,
        &["output"],
    );
    for o in &snap.outputs {
        out_sent.add(&[o.output.as_str()], o.stats.sent);
        out_failed.add(&[o.output.as_str()], o.stats.failed);
    }

    let mut attached = Family::new(
        "vtap_tap_attached",
        "1 when vtap is attached to the interface in that direction.",
        Gauge,
        td,
    );
    for (name, st) in engine.taps() {
        for d in &st.wanted {
            attached.add(&[name.as_str(), d.as_str()], st.attached.contains(d) as u64);
        }
    }
    let mut flips = Family::new(
        "vtap_policy_generation_flips_total",
        "Atomic switches to a new policy generation.",
        Counter,
        &[],
    );
    flips.add(&[], engine.generation_flips());

    let c = &["capture"];
    let mut cap_packets = Family::new(
        "vtap_capture_packets_total",
        "Packets captured for a pcap capture (put in the ring buffer by the datapath).",
        Counter,
        c,
    );
    let mut cap_bytes = Family::new(
        "vtap_capture_bytes_total",
        "Original bytes of the packets captured for a pcap capture.",
        Counter,
        c,
    );
    let mut cap_written = Family::new(
        "vtap_capture_written_packets_total",
        "Packets written to a capture's pcapng files.",
        Counter,
        c,
    );
    let mut cap_written_b = Family::new(
        "vtap_capture_written_bytes_total",
        "Bytes written to a capture's pcapng files.",
        Counter,
        c,
    );
    let mut cap_lost = Family::new(
        "vtap_capture_lost_packets_total",
        "Packets of a capture not written to its files or not sent to a live subscriber, by reason (ring_full: lost for every consumer; file_error, stopped, writer_queue_full: files only; stream_lagged: one subscriber).",
        Counter,
        &["capture", "reason"],
    );
    let mut cap_lag = Family::new(
        "vtap_capture_writer_lag_seconds",
        "Delay between the capture of the last written packet and its write.",
        GaugeMicros,
        c,
    );
    let mut cap_error = Family::new(
        "vtap_capture_file_error",
        "1 when a capture's file output failed (e.g. disk full) and is being retried.",
        Gauge,
        c,
    );
    let mut cap_subs = Family::new(
        "vtap_capture_stream_subscribers",
        "Live stream subscribers of a capture.",
        Gauge,
        c,
    );
    for ci in captures {
        let n = [ci.name.as_str()];
        cap_packets.add(&n, ci.packets);
        cap_bytes.add(&n, ci.bytes);
        cap_written.add(&n, ci.written_packets);
        cap_written_b.add(&n, ci.written_bytes);
        for (r, v) in [
            ("ring_full", ci.ring_full),
            ("file_error", ci.not_written_error),
            ("stopped", ci.not_written_stopped),
            ("writer_queue_full", ci.writer_queue_full),
            ("stream_lagged", ci.stream_lost),
        ] {
            cap_lost.add(&[ci.name.as_str(), r], v);
        }
        cap_lag.add(&n, (ci.writer_lag_seconds * 1e6) as u64);
        cap_error.add(&n, (ci.state == "error") as u64);
        cap_subs.add(&n, ci.subscribers);
    }

    Ok(vec![
        cap_packets,
        cap_bytes,
        cap_written,
        cap_written_b,
        cap_lost,
        cap_lag,
        cap_error,
        cap_subs,
        tap_packets,
        tap_bytes,
        tap_trunc,
        tap_class,
        matched,
        matched_b,
        mirrored,
        dropped,
        enabled,
        cond_active,
        cond_value,
        activations,
        deactivations,
        out_sent,
        out_failed,
        attached,
        flips,
    ])
}

/// The content type of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .any(|m| m.trim().starts_with("application/openmetrics-text"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
