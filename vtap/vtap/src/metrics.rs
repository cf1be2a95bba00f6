//! `/metrics`: one counter snapshot of the datapath per scrape, described
//! once as a list of [`Family`] values, then encoded by a maintained client
//! crate: Prometheus text format 0.0.4 by `prometheus`, OpenMetrics 1.0 (with
//! `# EOF`) by `prometheus-client` when the scraper asks for it.
//!
//! Names follow the contract in PRODUCT.md: base units, `_total` on counters,
//! bounded labels (tap names, policy names, output labels, and fixed sets of
//! directions and drop reasons).

use std::collections::BTreeMap;
use vtap_abi::drop_reason;

use vtap_core::engine::Engine;
use vtap_core::probes::manager::{HistSample, Sample};
use vtap_core::probes::spec::MetricKind;

use crate::wire::CaptureInfo;

/// Counter or gauge.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Counter,
    Gauge,
    /// A gauge in seconds whose samples are microseconds.
    GaugeMicros,
    /// A float gauge whose samples are `f64::to_bits` (probe gauges).
    GaugeF64,
    /// A histogram (samples in `Family::hists`; probe histograms).
    Histogram,
}

/// One metric family: `name` is the full sample name (`..._total` for
/// counters).
#[derive(Clone, Debug)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub labels: Vec<String>,
    pub samples: Vec<(Vec<String>, u64)>,
    /// Kind::Histogram: one histogram per label set.
    pub hists: Vec<(Vec<String>, HistSample)>,
}

impl Family {
    fn new(name: &str, help: &str, kind: Kind, labels: &[&str]) -> Self {
        Family {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            samples: Vec::new(),
            hists: Vec::new(),
        }
    }
    /// A float gauge's sample value.
    fn float(&self, v: u64) -> f64 {
        match self.kind {
            Kind::GaugeMicros => v as f64 / 1e6,
            Kind::GaugeF64 => f64::from_bits(v),
            _ => v as f64,
        }
    }

    fn add(&mut self, labels: &[&str], v: u64) {
        self.samples
            .push((labels.iter().map(|s| s.to_string()).collect(), v));
    }
}

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

/// Prometheus text format 0.0.4 (`prometheus` crate).
pub fn encode_text(fams: &[Family]) -> anyhow::Result<String> {
    use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
    let r = Registry::new();
    for f in fams {
        let opts = Opts::new(&f.name, &f.help);
        let labels: Vec<&str> = f.labels.iter().map(|s| s.as_str()).collect();
        match f.kind {
            Kind::Counter => {
                let c = IntCounterVec::new(opts, &labels)?;
                for (l, v) in &f.samples {
                    let l: Vec<&str> = l.iter().map(|s| s.as_str()).collect();
                    c.with_label_values(&l).inc_by(*v);
                }
                r.register(Box::new(c))?;
            }
            Kind::Gauge => {
                let g = IntGaugeVec::new(opts, &labels)?;
                for (l, v) in &f.samples {
                    let l: Vec<&str> = l.iter().map(|s| s.as_str()).collect();
                    g.with_label_values(&l).set(*v as i64);
                }
                r.register(Box::new(g))?;
            }
            Kind::Histogram => {}
            Kind::GaugeMicros | Kind::GaugeF64 => {
                let g = prometheus::GaugeVec::new(opts, &labels)?;
                for (l, v) in &f.samples {
                    let l: Vec<&str> = l.iter().map(|s| s.as_str()).collect();
                    g.with_label_values(&l).set(f.float(*v));
                }
                r.register(Box::new(g))?;
            }
        }
    }
    let mut gathered = r.gather();
    // Histograms of known bucket counts: built as protocol families (the
    // client's histogram type only observes values one by one).
    for f in fams.iter().filter(|f| f.kind == Kind::Histogram) {
        use prometheus::proto;
        let mut mf = proto::MetricFamily::default();
        mf.set_name(f.name.clone());
        mf.set_help(f.help.clone());
        mf.set_field_type(proto::MetricType::HISTOGRAM);
        let mut metrics = Vec::new();
        for (values, h) in &f.hists {
            let mut m = proto::Metric::default();
            m.set_label(
                f.labels
                    .iter()
                    .zip(values)
                    .map(|(k, v)| {
                        let mut lp = proto::LabelPair::default();
                        lp.set_name(k.clone());
                        lp.set_value(v.clone());
                        lp
                    })
                    .collect(),
            );
            let mut hist = proto::Histogram::default();
            hist.set_sample_count(h.count);
            hist.set_sample_sum(h.sum);
            let mut cum = 0;
            hist.set_bucket(
                h.buckets
                    .iter()
                    .filter(|(b, _)| *b != f64::MAX)
                    .map(|(b, c)| {
                        cum += c;
                        let mut bk = proto::Bucket::default();
                        bk.set_upper_bound(*b);
                        bk.set_cumulative_count(cum);
                        bk
                    })
                    .collect(),
            );
            m.set_histogram(hist);
            metrics.push(m);
        }
        mf.set_metric(metrics);
        gathered.push(mf);
    }
    let mut buf = Vec::new();
    TextEncoder::new().encode(&gathered, &mut buf)?;
    Ok(String::from_utf8(buf)?)
}

/// OpenMetrics 1.0 text, ending in `# EOF` (`prometheus-client` crate).
pub fn encode_openmetrics(fams: &[Family]) -> anyhow::Result<String> {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family as PcFamily;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    type Labels = Vec<(String, String)>;
    let mut r = Registry::default();
    for f in fams {
        // prometheus-client ends help texts with a period itself.
        let help = f.help.strip_suffix('.').unwrap_or(&f.help);
        let label_set = |l: &Vec<String>| -> Labels {
            f.labels
                .iter()
                .zip(l)
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        match f.kind {
            Kind::Counter => {
                // prometheus-client appends `_total` itself.
                let base = f.name.strip_suffix("_total").unwrap_or(&f.name);
                if f.labels.is_empty() {
                    let c = Counter::<u64>::default();
                    c.inc_by(f.samples.iter().map(|(_, v)| *v).sum());
                    r.register(base, help, c);
                    continue;
                }
                let fam = PcFamily::<Labels, Counter>::default();
                for (l, v) in &f.samples {
                    fam.get_or_create(&label_set(l)).inc_by(*v);
                }
                r.register(base, help, fam);
            }
            Kind::Gauge => {
                let fam = PcFamily::<Labels, Gauge>::default();
                for (l, v) in &f.samples {
                    fam.get_or_create(&label_set(l)).set(*v as i64);
                }
                r.register(&f.name, help, fam);
            }
            Kind::Histogram => {
                let fam = PcFamily::<Labels, FixedHistogram>::default();
                for (l, h) in &f.hists {
                    *fam.get_or_create(&label_set(l)).0.lock().unwrap() = Some(h.clone());
                }
                r.register(&f.name, help, fam);
            }
            Kind::GaugeMicros | Kind::GaugeF64 => {
                let fam = PcFamily::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
                for (l, v) in &f.samples {
                    fam.get_or_create(&label_set(l)).set(f.float(*v));
                }
                r.register(&f.name, help, fam);
            }
        }
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r)?;
    Ok(out)
}

/// A histogram whose bucket counts are known (a probe's bucket map), for
/// prometheus-client's encoder.
#[derive(Debug, Default)]
pub struct FixedHistogram(std::sync::Mutex<Option<HistSample>>);

impl prometheus_client::encoding::EncodeMetric for FixedHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let h = self.0.lock().unwrap().clone().unwrap_or(HistSample {
            buckets: vec![(f64::MAX, 0)],
            sum: 0.0,
            count: 0,
        });
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            h.sum, h.count, &h.buckets, None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

impl prometheus_client::metrics::TypedMetric for FixedHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

/// The families of probe samples (`vtap_probe_<metric>`, label `probe`
/// first), appended to `out`; only the probe `only_probe` and the metric
/// `only_metric` when given. Samples whose label names differ from the
/// first sample of their family are dropped (a family has one label set).
pub fn probe_families(
    samples: &BTreeMap<String, Vec<Sample>>,
    only_probe: Option<&str>,
    only_metric: Option<&str>,
    out: &mut Vec<Family>,
) {
    let mut fams: BTreeMap<String, Family> = BTreeMap::new();
    for (probe, ss) in samples {
        if only_probe.is_some_and(|o| o != probe) {
            continue;
        }
        for s in ss {
            if only_metric.is_some_and(|o| o != s.metric) {
                continue;
            }
            let (kind, suffix) = match s.kind {
                MetricKind::Counter => (Kind::Counter, "_total"),
                MetricKind::Histogram => (Kind::Histogram, ""),
                _ => (Kind::GaugeF64, ""),
            };
            let base = format!("vtap_probe_{}", s.metric);
            let name = if base.ends_with("_total") || suffix.is_empty() {
                base
            } else {
                format!("{base}{suffix}")
            };
            let mut names = vec!["probe".to_string()];
            names.extend(s.labels.iter().map(|(k, _)| k.clone()));
            let f = fams.entry(name.clone()).or_insert_with(|| Family {
                name,
                help: if s.help.is_empty() {
                    format!("Probe metric {}.", s.metric)
                } else {
                    s.help.clone()
                },
                kind,
                labels: names.clone(),
                samples: Vec::new(),
                hists: Vec::new(),
            });
            if f.labels != names || f.kind != kind {
                continue;
            }
            let mut values = vec![probe.clone()];
            values.extend(s.labels.iter().map(|(_, v)| v.clone()));
            if let Some(h) = &s.hist {
                f.hists.push((values, h.clone()));
                continue;
            }
            let v = match kind {
                Kind::Counter => s.value.max(0.0) as u64,
                _ => s.value.to_bits(),
            };
            f.samples.push((values, v));
        }
    }
    out.extend(fams.into_values());
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

    fn sample() -> Vec<Family> {
        let mut c = Family::new(
            "vtap_tap_packets_total",
            "Packets.",
            Kind::Counter,
            &["tap", "direction"],
        );
        c.add(&["vm1-tap", "ingress"], 7);
        let mut g = Family::new("vtap_policy_enabled", "Enabled.", Kind::Gauge, &["policy"]);
        g.add(&["web"], 1);
        let mut f = Family::new(
            "vtap_policy_generation_flips_total",
            "Flips.",
            Kind::Counter,
            &[],
        );
        f.add(&[], 3);
        vec![c, g, f]
    }

    #[test]
    fn probe_histograms_in_both_formats() {
        let mut samples = BTreeMap::new();
        samples.insert(
            "sizes".to_string(),
            vec![Sample {
                metric: "frame_size_bytes".into(),
                help: "Frame sizes.".into(),
                kind: MetricKind::Histogram,
                labels: vec![],
                value: 0.0,
                hist: Some(HistSample {
                    buckets: vec![(64.0, 1), (128.0, 3), (f64::MAX, 2)],
                    sum: 700.0,
                    count: 6,
                }),
            }],
        );
        let mut fams = Vec::new();
        probe_families(&samples, None, None, &mut fams);
        let text = encode_text(&fams).unwrap();
        for want in [
            "# TYPE vtap_probe_frame_size_bytes histogram",
            "vtap_probe_frame_size_bytes_bucket{probe=\"sizes\",le=\"64\"} 1",
            "vtap_probe_frame_size_bytes_bucket{probe=\"sizes\",le=\"128\"} 4",
            "vtap_probe_frame_size_bytes_bucket{probe=\"sizes\",le=\"+Inf\"} 6",
            "vtap_probe_frame_size_bytes_sum{probe=\"sizes\"} 700",
            "vtap_probe_frame_size_bytes_count{probe=\"sizes\"} 6",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
        let om = encode_openmetrics(&fams).unwrap();
        for want in [
            "# TYPE vtap_probe_frame_size_bytes histogram",
            "vtap_probe_frame_size_bytes_bucket{le=\"128.0\",probe=\"sizes\"} 4",
            "vtap_probe_frame_size_bytes_bucket{le=\"+Inf\",probe=\"sizes\"} 6",
            "vtap_probe_frame_size_bytes_count{probe=\"sizes\"} 6",
        ] {
            assert!(om.contains(want), "{want:?} missing in\n{om}");
        }
    }

    #[test]
    fn both_encodings_carry_the_same_samples() {
        let t = encode_text(&sample()).unwrap();
        assert!(t.contains("# TYPE vtap_tap_packets_total counter"));
        assert!(t.contains("vtap_tap_packets_total{direction=\"ingress\",tap=\"vm1-tap\"} 7"));
        assert!(t.contains("vtap_policy_generation_flips_total 3"));
        let o = encode_openmetrics(&sample()).unwrap();
        assert!(o.contains("# TYPE vtap_tap_packets counter"), "{o}");
        assert!(
            o.contains("vtap_tap_packets_total{tap=\"vm1-tap\",direction=\"ingress\"} 7"),
            "{o}"
        );
        assert!(o.contains("vtap_policy_enabled{policy=\"web\"} 1"), "{o}");
        assert!(o.contains("vtap_policy_generation_flips_total 3"), "{o}");
        assert!(o.trim_end().ends_with("# EOF"));
        assert!(!o.contains(".."), "{o}");
    }

    #[test]
    fn accept_negotiation() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
