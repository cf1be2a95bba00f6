//! The probe spec: what an operator sends to inject a probe (a YAML file for
//! the CLI, the same object as JSON over REST).
//!
//! ```yaml
//! version: 1
//! name: traffic-by-dst
//! attach: {taps: ["vm*-tap"], hook: tc, direction: ingress}
//! source: |            # C, compiled on the appliance — or
//! object: <base64>     # a pre-built BPF ELF (the CLI reads `object_file`)
//! metrics:
//!   - name: dst_packets
//!     map: dst_stats
//!     help: Packets per destination IPv4 address.
//!     type: counter
//!     value_field: packets
//!     aggregate: sum
//!     key_labels: [{field: addr, label: dst, format: ipv4}]
//! ```
//!
//! [`validate`] reports every problem with its field path, like policy
//! validation; what needs the object (maps exist, fields exist and suit
//! their formats) is checked when the object is loaded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::btf::{Aggregation, LabelFormat};
use crate::policy::validate::FieldError;

/// A probe spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// Format version (1).
    pub version: u32,
    /// Probe name: 1–63 of `[A-Za-z0-9_-]`, starting with a letter.
    pub name: String,
    /// Where it runs.
    pub attach: Attach,
    /// C source, compiled on the appliance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A pre-built BPF ELF object, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// CLI only: a file holding the C source (read by the CLI into `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_file: Option<String>,
    /// CLI only: a file holding the ELF object (read by the CLI into `object`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_file: Option<String>,
    /// The maps exported as metrics (the others stay private).
    #[serde(default)]
    pub metrics: Vec<MetricSpec>,
}

/// Where a probe runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attach {
    /// Interface names or globs.
    pub taps: Vec<String>,
    /// `tc` (TCX, after vtap's own program, any direction) or `xdp` (ingress
    /// only, before the kernel builds an skb; one XDP program per
    /// interface, so not on interfaces vtap taps in XDP mode).
    #[serde(default)]
    pub hook: Hook,
    /// `ingress` (from the VM), `egress` (to the VM) or `both`.
    #[serde(default)]
    pub direction: crate::policy::model::Direction,
}

/// The hook of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// TCX.
    #[default]
    Tc,
    /// XDP.
    Xdp,
}

/// One exported metric: a map, and how its entries become samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// Metric name (Prometheus: `vtap_probe_` is prepended in `/metrics`).
    pub name: String,
    /// The map (by its name in the object).
    pub map: String,
    /// Help text.
    #[serde(default)]
    pub help: String,
    /// Prometheus type.
    #[serde(default, rename = "type")]
    pub kind: MetricKind,
    /// Static labels of every sample.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Key fields that become labels.
    #[serde(default)]
    pub key_labels: Vec<KeyLabel>,
    /// The value's field giving the sample value (path like `a.b`); empty:
    /// the whole value (an integer).
    #[serde(default)]
    pub value_field: String,
    /// Histograms: the upper bounds of the buckets, ascending (a last
    /// `+Inf` bucket is implied). The map's key is the bucket index
    /// (0..=len), `value_field` the count of a bucket (not cumulative).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<f64>,
    /// Histograms: the value field summed into `_sum` (e.g. bytes), empty
    /// for none (`_sum` 0).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sum_field: String,
    /// Per-CPU maps: how the CPUs' values combine (`none`: one sample per
    /// CPU with a `cpu` label).
    #[serde(default = "default_aggregate")]
    pub aggregate: AggregateSpec,
    /// Read all the probe's maps at one instant while it keeps counting: two
    /// copies of the probe alternate (an atomic TCX link update), each read
    /// empties the copy that just stopped into user-space totals. Per
    /// probe: every metric or none.
    #[serde(default)]
    pub snapshot: bool,
    /// Window semantics over the API: each read returns what was counted
    /// since the previous API read, and the map is emptied (batch
    /// lookup-and-delete); `/metrics` stays monotonic (user space keeps the
    /// running total), so a scrape and an API reader never steal each
    /// other's counts.
    #[serde(default)]
    pub reset_on_read: bool,
}

fn default_aggregate() -> AggregateSpec {
    AggregateSpec::Sum
}

/// Per-CPU aggregation in a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateSpec {
    /// Sum.
    Sum,
    /// Mean.
    Avg,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// One sample per CPU.
    None,
}

impl AggregateSpec {
    /// The extraction layer's aggregation (None: per CPU).
    pub fn aggregation(self) -> Option<Aggregation> {
        match self {
            AggregateSpec::Sum => Some(Aggregation::Sum),
            AggregateSpec::Avg => Some(Aggregation::Avg),
            AggregateSpec::Min => Some(Aggregation::Min),
            AggregateSpec::Max => Some(Aggregation::Max),
            AggregateSpec::None => None,
        }
    }
}

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Monotonic.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets of a map indexed by bucket (see `buckets`).
    Histogram,
    /// Unknown.
    #[default]
    Untyped,
}

/// A key field turned into a label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLabel {
    /// Path of the field in the key (empty: the whole key).
    #[serde(default)]
    pub field: String,
    /// Label name.
    pub label: String,
    /// How the value is written.
    #[serde(default = "default_format")]
    pub format: LabelFormat,
}

fn default_format() -> LabelFormat {
    LabelFormat::Decimal
}

/// Whether `s` is a valid probe name (1–63 of `[A-Za-z0-9_-]`, starting
/// with a letter).
pub fn valid_probe_name(s: &str) -> bool {
    name_ok(s, 63, &['-'])
}

/// Whether `s` is a valid metric name of a probe.
pub fn valid_metric_name(s: &str) -> bool {
    name_ok(s, 100, &[])
}

fn name_ok(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
}

/// Every problem of a spec (no object needed), with field paths. `cli` =
/// the `*_file` fields are allowed (the CLI replaces them).
pub fn validate(s: &ProbeSpec, cli: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut err = |f: String, m: String| errs.push(FieldError::new(f, m));
    if s.version != 1 {
        err(
            "version".into(),
            format!("version {} is not supported (only 1)", s.version),
        );
    }
    if !name_ok(&s.name, 63, &['-']) {
        err(
            "name".into(),
            format!(
                "{:?}: a probe name is 1 to 63 letters, digits, '_' or '-', starting with a letter",
                s.name
            ),
        );
    }
    if s.attach.taps.is_empty() {
        err(
            "attach.taps".into(),
            "at least one interface name or glob".into(),
        );
    }
    for (i, t) in s.attach.taps.iter().enumerate() {
        let plain = t.replace(['*', '?', '[', ']'], "x");
        if let Err(e) = crate::policy::validate::check_ifname(&plain) {
            err(format!("attach.taps[{i}]"), e);
        } else if glob::Pattern::new(t).is_err() {
            err(
                format!("attach.taps[{i}]"),
                format!("{t:?} is not a valid glob"),
            );
        }
    }
    if s.attach.hook == Hook::Xdp && s.attach.direction != crate::policy::model::Direction::Ingress
    {
        err(
            "attach.direction".into(),
            "an xdp probe sees only packets arriving on the interface: direction ingress".into(),
        );
    }
    let code = [
        s.source.is_some(),
        s.object.is_some(),
        cli && s.source_file.is_some(),
        cli && s.object_file.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if !cli && (s.source_file.is_some() || s.object_file.is_some()) {
        err(
            if s.source_file.is_some() { "source_file" } else { "object_file" }.into(),
            "file fields are read by the CLI; over the API send `source` (C) or `object` (base64 ELF)".into(),
        );
    }
    if code != 1 {
        err(
            "source".into(),
            "exactly one of `source` (C) or `object` (base64 BPF ELF) is required".into(),
        );
    }
    if s.metrics.is_empty() {
        err(
            "metrics".into(),
            "at least one metric (a map to export)".into(),
        );
    }
    let mut seen = BTreeMap::new();
    let mut reset_of_map: BTreeMap<&str, (usize, bool)> = BTreeMap::new();
    for (i, m) in s.metrics.iter().enumerate() {
        match reset_of_map.get(m.map.as_str()) {
            Some(&(j, r)) if r != m.reset_on_read => err(
                format!("metrics[{i}].reset_on_read"),
                format!(
                    "metrics[{j}] exports map {} with reset_on_read: {r}: every metric of a map must agree (reading resets the whole map)",
                    m.map
                ),
            ),
            Some(_) => {}
            None => {
                reset_of_map.insert(&m.map, (i, m.reset_on_read));
            }
        }
        let f = |x: &str| format!("metrics[{i}].{x}");
        if !name_ok(&m.name, 100, &[]) {
            err(
                f("name"),
                format!(
                    "{:?}: a metric name is letters, digits and '_', starting with a letter",
                    m.name
                ),
            );
        } else if let Some(j) = seen.insert(m.name.clone(), i) {
            err(f("name"), format!("duplicate of metrics[{j}].name"));
        }
        if m.map.is_empty() {
            err(f("map"), "the map to export".into());
        }
        if m.kind == MetricKind::Histogram {
            if m.buckets.is_empty() {
                err(
                    f("buckets"),
                    "a histogram needs its bucket upper bounds (ascending; +Inf is implied)".into(),
                );
            } else if m.buckets.windows(2).any(|w| w[0] >= w[1])
                || m.buckets.iter().any(|b| !b.is_finite())
            {
                err(
                    f("buckets"),
                    "bucket bounds must be finite and strictly ascending".into(),
                );
            }
            if !m.key_labels.is_empty() {
                err(
                    f("key_labels"),
                    "a histogram's key is its bucket index: no key labels".into(),
                );
            }
            if m.aggregate == AggregateSpec::None {
                err(
                    f("aggregate"),
                    "a histogram combines the CPUs: sum (the default)".into(),
                );
            }
        } else if !m.buckets.is_empty() || !m.sum_field.is_empty() {
            err(
                f("buckets"),
                "buckets and sum_field belong to histograms (type: histogram)".into(),
            );
        }
        if m.snapshot != s.metrics[0].snapshot {
            err(
                f("snapshot"),
                "snapshot is per probe (two copies of it alternate): set it on every metric or on none".into(),
            );
        }
        if m.reset_on_read && m.kind == MetricKind::Gauge {
            err(
                f("reset_on_read"),
                "reset_on_read sums what was counted between reads: it applies to counters (and untyped), not gauges".into(),
            );
        }
        let reserved = ["probe", "cpu", "__name__"];
        for l in m.labels.keys() {
            if !name_ok(l, 100, &[]) || reserved.contains(&l.as_str()) {
                err(
                    f(&format!("labels.{l}")),
                    format!("{l:?} is not a valid label name (reserved: probe, cpu)"),
                );
            }
        }
        for (k, kl) in m.key_labels.iter().enumerate() {
            if !name_ok(&kl.label, 100, &[]) || reserved.contains(&kl.label.as_str()) {
                err(
                    f(&format!("key_labels[{k}].label")),
                    format!(
                        "{:?} is not a valid label name (reserved: probe, cpu)",
                        kl.label
                    ),
                );
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> ProbeSpec {
        serde_yaml::from_str(&format!(
            "version: 1\nname: p\nattach: {{taps: [vm1-tap]}}\nsource: 'int x;'\nmetrics: [{{name: m, map: counts}}]\n{extra}"
        ))
        .unwrap()
    }

    fn fields(e: &[FieldError]) -> Vec<String> {
        e.iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn a_minimal_spec_is_valid() {
        let s = spec("");
        assert_eq!(fields(&validate(&s, false)), Vec::<String>::new());
        assert_eq!(s.attach.hook, Hook::Tc);
        assert_eq!(s.metrics[0].aggregate, AggregateSpec::Sum);
        assert_eq!(s.metrics[0].kind, MetricKind::Untyped);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut s = spec("");
        s.version = 2;
        s.name = "1bad".into();
        s.attach.taps = vec!["a b".into(), "[".into()];
        s.attach.hook = Hook::Xdp;
        s.object = Some("AAAA".into());
        s.metrics.push(s.metrics[0].clone());
        s.metrics[1].kind = MetricKind::Histogram;
        s.metrics[1].buckets = vec![2.0, 1.0];
        s.metrics[1].reset_on_read = true;
        s.metrics[1].kind = MetricKind::Gauge;
        s.metrics[1].snapshot = true;
        s.metrics[1].labels.insert("probe".into(), "x".into());
        assert_eq!(
            fields(&validate(&s, false)),
            [
                "version",
                "name",
                "attach.taps[0]",
                "attach.taps[1]",
                "attach.direction",
                "source",
                "metrics[1].reset_on_read",
                "metrics[1].name",
                "metrics[1].buckets",
                "metrics[1].snapshot",
                "metrics[1].reset_on_read",
                "metrics[1].labels.probe",
            ]
        );
    }

    #[test]
    fn histograms_need_ascending_buckets_and_no_key_labels() {
        let mut s = spec("");
        s.metrics[0].kind = MetricKind::Histogram;
        assert_eq!(fields(&validate(&s, false)), ["metrics[0].buckets"]);
        s.metrics[0].buckets = vec![64.0, 128.0, 128.0];
        assert_eq!(fields(&validate(&s, false)), ["metrics[0].buckets"]);
        s.metrics[0].buckets = vec![64.0, 128.0];
        s.metrics[0].sum_field = "bytes".into();
        assert!(validate(&s, false).is_empty());
        s.metrics[0].aggregate = AggregateSpec::None;
        s.metrics[0].key_labels.push(KeyLabel {
            field: String::new(),
            label: "b".into(),
            format: LabelFormat::Decimal,
        });
        assert_eq!(
            fields(&validate(&s, false)),
            ["metrics[0].key_labels", "metrics[0].aggregate"]
        );
    }

    #[test]
    fn files_only_from_the_cli() {
        let mut s = spec("");
        s.source = None;
        s.source_file = Some("x.c".into());
        assert!(validate(&s, true).is_empty());
        assert_eq!(fields(&validate(&s, false)), ["source_file", "source"]);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_yaml::from_str::<ProbeSpec>(
            "version: 1\nname: p\nattach: {taps: [x]}\nsource: ''\nmetrics: []\nbogus: 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
