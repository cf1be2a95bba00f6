//! Prometheus exposition of metric families: Prometheus text format 0.0.4
//! through the `prometheus` crate's encoder and OpenMetrics 1.0 (with
//! `# EOF`) through `prometheus-client`'s, so escaping and number
//! formatting are the maintained crates'. Both take the families by value
//! and hand each crate its samples as they are (protocol families for
//! `prometheus`, one pre-built metric per family for `prometheus-client`)
//! instead of registering a client metric per label set: a probe map of
//! 10,000 entries is 10,000 samples per scrape (BENCHMARKS.md §6).

use std::collections::BTreeMap;

use crate::probes::manager::{HistSample, MetricSamples};
use crate::probes::spec::MetricKind;

/// The encoder failed (the crate's message).
#[derive(Debug, thiserror::Error)]
#[error("encoding metrics: {0}")]
pub struct EncodeError(pub String);

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
    /// An empty family.
    pub fn new(name: &str, help: &str, kind: Kind, labels: &[&str]) -> Self {
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
    pub fn float(&self, v: u64) -> f64 {
        match self.kind {
            Kind::GaugeMicros => v as f64 / 1e6,
            Kind::GaugeF64 => f64::from_bits(v),
            _ => v as f64,
        }
    }

    /// Adds one sample (label values in the order of `labels`).
    pub fn add(&mut self, labels: &[&str], v: u64) {
        self.samples
            .push((labels.iter().map(|s| s.to_string()).collect(), v));
    }
}

/// Prometheus text format 0.0.4 (`prometheus` crate's `TextEncoder`).
/// Families sorted by name, label pairs by label name (as the crate's
/// registry gathers them); families without samples are left out.
pub fn encode_text(mut fams: Vec<Family>) -> Result<String, EncodeError> {
    use prometheus::proto;
    use prometheus::{Encoder, TextEncoder};
    fams.sort_by(|a, b| a.name.cmp(&b.name));
    let mut gathered = Vec::with_capacity(fams.len());
    for f in fams {
        if f.samples.is_empty() && f.hists.is_empty() {
            continue;
        }
        let float = |v: u64| f.float(v);
        let mut mf = proto::MetricFamily::default();
        mf.set_name(f.name.clone());
        mf.set_help(f.help.clone());
        mf.set_field_type(match f.kind {
            Kind::Counter => proto::MetricType::COUNTER,
            Kind::Histogram => proto::MetricType::HISTOGRAM,
            _ => proto::MetricType::GAUGE,
        });
        // Label positions in name order, once per family.
        let mut order: Vec<usize> = (0..f.labels.len()).collect();
        order.sort_by(|&a, &b| f.labels[a].cmp(&f.labels[b]));
        let pairs = |values: &[String]| -> Vec<proto::LabelPair> {
            order
                .iter()
                .map(|&i| {
                    let mut lp = proto::LabelPair::default();
                    lp.set_name(f.labels[i].clone());
                    lp.set_value(values[i].clone());
                    lp
                })
                .collect()
        };
        let mut metrics = Vec::with_capacity(f.samples.len() + f.hists.len());
        for (values, v) in &f.samples {
            let mut m = proto::Metric::default();
            m.set_label(pairs(values));
            match f.kind {
                Kind::Counter => {
                    let mut c = proto::Counter::default();
                    c.set_value(*v as f64);
                    m.set_counter(c);
                }
                Kind::Gauge => {
                    let mut g = proto::Gauge::default();
                    g.set_value(*v as i64 as f64);
                    m.set_gauge(g);
                }
                _ => {
                    let mut g = proto::Gauge::default();
                    g.set_value(float(*v));
                    m.set_gauge(g);
                }
            }
            metrics.push(m);
        }
        for (values, h) in &f.hists {
            let mut m = proto::Metric::default();
            m.set_label(pairs(values));
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
    TextEncoder::new()
        .encode(&gathered, &mut buf)
        .map_err(|e| EncodeError(e.to_string()))?;
    String::from_utf8(buf).map_err(|e| EncodeError(e.to_string()))
}

/// OpenMetrics 1.0 text, ending in `# EOF` (`prometheus-client` crate):
/// one registered metric per family that encodes its samples in order.
pub fn encode_openmetrics(fams: Vec<Family>) -> Result<String, EncodeError> {
    let mut r = prometheus_client::registry::Registry::default();
    for f in fams {
        // prometheus-client ends help texts with a period itself, and
        // appends `_total` to counters itself.
        let help = f.help.strip_suffix('.').unwrap_or(&f.help).to_string();
        let name = match f.kind {
            Kind::Counter => f.name.strip_suffix("_total").unwrap_or(&f.name),
            _ => &f.name,
        }
        .to_string();
        r.register(name, help, Samples(f));
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r)
        .map_err(|e| EncodeError(e.to_string()))?;
    Ok(out)
}

/// One family as a prometheus-client metric: every sample, in order.
#[derive(Debug)]
struct Samples(Family);

/// The labels of one sample, borrowed from its family.
struct LabelSet<'a> {
    names: &'a [String],
    values: &'a [String],
}

impl prometheus_client::encoding::EncodeLabelSet for LabelSet<'_> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        for (k, v) in self.names.iter().zip(self.values) {
            // The crate writes label values as they are: escape them here.
            let v = escape_label_value(v);
            (k.as_str(), v.as_ref()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// A label value with `\`, `"` and line feeds escaped (OpenMetrics).
fn escape_label_value(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(v);
    }
    let mut s = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    std::borrow::Cow::Owned(s)
}

impl prometheus_client::encoding::EncodeMetric for Samples {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let f = &self.0;
        let put = |e: &mut prometheus_client::encoding::MetricEncoder, v: u64| match f.kind {
            Kind::Counter => {
                e.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&v, None)
            }
            Kind::Gauge => e.encode_gauge(&(v as i64)),
            _ => e.encode_gauge(&f.float(v)),
        };
        for (values, v) in &f.samples {
            if f.labels.is_empty() {
                // No label set at all (not `{}`).
                put(&mut encoder, *v)?;
                continue;
            }
            let labels = LabelSet {
                names: &f.labels,
                values,
            };
            put(&mut encoder.encode_family(&labels)?, *v)?;
        }
        for (values, h) in &f.hists {
            let labels = LabelSet {
                names: &f.labels,
                values,
            };
            encoder
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    h.sum, h.count, &h.buckets, None,
                )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        use prometheus_client::metrics::MetricType;
        match self.0.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Histogram => MetricType::Histogram,
            _ => MetricType::Gauge,
        }
    }
}

/// The families of probe samples (`vtap_probe_<metric>`, label `probe`
/// first), appended to `out`; only the probe `only_probe` and the metric
/// `only_metric` when given. Metrics of several probes with the same name
/// share a family when their label names and kind agree; one that differs
/// from the first of its family is left out (a family has one label set).
pub fn probe_families(
    samples: BTreeMap<String, Vec<MetricSamples>>,
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
            let kind = match s.kind {
                MetricKind::Counter => Kind::Counter,
                MetricKind::Histogram => Kind::Histogram,
                _ => Kind::GaugeF64,
            };
            let base = format!("vtap_probe_{}", s.metric);
            let name = if kind != Kind::Counter || base.ends_with("_total") {
                base
            } else {
                format!("{base}_total")
            };
            let mut names = Vec::with_capacity(s.label_names.len() + 1);
            names.push("probe".to_string());
            names.extend(s.label_names);
            let f = fams.entry(name.clone()).or_insert_with(|| Family {
                name,
                help: if s.help.is_empty() {
                    format!("Probe metric {}.", s.metric)
                } else {
                    s.help
                },
                kind,
                labels: names.clone(),
                samples: Vec::new(),
                hists: Vec::new(),
            });
            if f.labels != names || f.kind != kind {
                continue;
            }
            let with_probe = |mut values: Vec<String>| {
                values.insert(0, probe.clone());
                values
            };
            if let Some(h) = s.hist {
                if let Some((values, _)) = s.rows.into_iter().next() {
                    f.hists.push((with_probe(values), h));
                }
                continue;
            }
            f.samples.reserve(s.rows.len());
            for (values, x) in s.rows {
                let v = match kind {
                    Kind::Counter => x.max(0.0) as u64,
                    _ => x.to_bits(),
                };
                f.samples.push((with_probe(values), v));
            }
        }
    }
    out.extend(fams.into_values());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::manager::MetricSamples;

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
            vec![MetricSamples {
                metric: "frame_size_bytes".into(),
                help: "Frame sizes.".into(),
                kind: MetricKind::Histogram,
                label_names: vec![],
                rows: vec![(vec![], 0.0)],
                hist: Some(HistSample {
                    buckets: vec![(64.0, 1), (128.0, 3), (f64::MAX, 2)],
                    sum: 700.0,
                    count: 6,
                }),
            }],
        );
        let mut fams = Vec::new();
        probe_families(samples, None, None, &mut fams);
        let text = encode_text(fams.clone()).unwrap();
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
        let om = encode_openmetrics(fams).unwrap();
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
        let t = encode_text(sample()).unwrap();
        assert!(t.contains("# TYPE vtap_tap_packets_total counter"));
        assert!(t.contains("vtap_tap_packets_total{direction=\"ingress\",tap=\"vm1-tap\"} 7"));
        assert!(t.contains("vtap_policy_generation_flips_total 3"));
        let o = encode_openmetrics(sample()).unwrap();
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
    fn label_values_are_escaped_in_openmetrics() {
        let mut f = Family::new("x_total", "X.", Kind::Counter, &["name"]);
        f.add(&["a\"b\\c\nd"], 1);
        let o = encode_openmetrics(vec![f.clone()]).unwrap();
        assert!(o.contains(r#"x_total{name="a\"b\\c\nd"} 1"#), "{o}");
        let t = encode_text(vec![f]).unwrap();
        assert!(t.contains(r#"x_total{name="a\"b\\c\nd"} 1"#), "{t}");
    }

    #[test]
    fn probe_families_merge_probes_and_keep_rows_in_order() {
        let ms = |v: f64| MetricSamples {
            metric: "packets".into(),
            help: String::new(),
            kind: MetricKind::Counter,
            label_names: vec!["dst".into()],
            rows: vec![
                ("10.0.0.2".to_string(), v),
                ("10.0.0.1".to_string(), v + 1.0),
            ]
            .into_iter()
            .map(|(d, v)| (vec![d], v))
            .collect(),
            hist: None,
        };
        let samples = BTreeMap::from([
            ("a".to_string(), vec![ms(1.0)]),
            ("b".to_string(), vec![ms(5.0)]),
        ]);
        let mut fams = Vec::new();
        probe_families(samples, None, None, &mut fams);
        assert_eq!(fams.len(), 1);
        assert_eq!(fams[0].name, "vtap_probe_packets_total");
        assert_eq!(fams[0].labels, ["probe", "dst"]);
        let rows: Vec<(Vec<String>, u64)> = fams[0].samples.clone();
        assert_eq!(
            rows,
            [
                (vec!["a".to_string(), "10.0.0.2".to_string()], 1),
                (vec!["a".to_string(), "10.0.0.1".to_string()], 2),
                (vec!["b".to_string(), "10.0.0.2".to_string()], 5),
                (vec!["b".to_string(), "10.0.0.1".to_string()], 6),
            ]
        );
        let o = encode_openmetrics(fams).unwrap();
        assert!(o.contains("# TYPE vtap_probe_packets counter"), "{o}");
        assert!(
            o.contains("vtap_probe_packets_total{probe=\"b\",dst=\"10.0.0.1\"} 6"),
            "{o}"
        );
    }
}
