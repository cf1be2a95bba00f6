//! Adaptive mirroring: a policy with `when:` is in effect only while a
//! probe's metric says so ("execute applications only when needed").
//!
//! ```yaml
//! when: {probe: syn-flood, metric: syn_total, above: 200, for_seconds: 0}
//! ```
//!
//! The daemon evaluates every condition every [`EVAL_PERIOD`] from the
//! probes' samples: the metric's samples whose labels include `labels` are
//! summed; a counter is compared as its rate per second over the last
//! [`RATE_WINDOW`], a gauge as its value (`of:` overrides). The condition must
//! hold for `for_seconds` to activate the policy, and fail for
//! `hold_seconds` (default: `for_seconds`, at least 1 s) to deactivate it.
//! A missing probe or metric counts as "does not hold". Each change is
//! logged and counted; the engine recompiles the set with the policy
//! enabled or not (an atomic generation flip, like any policy change).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::probes::manager::MetricSamples;
use crate::probes::spec::MetricKind;

/// How often the daemon evaluates conditions.
pub const EVAL_PERIOD: Duration = Duration::from_millis(200);
/// The window a counter's rate is taken over.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Largest `for_seconds` / `hold_seconds`.
pub const MAX_SECONDS: f64 = 86_400.0;

/// What of the metric is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenOf {
    /// Counters: rate per second; gauges: value.
    #[default]
    Auto,
    /// Rate per second (of a counter).
    Rate,
    /// The value itself.
    Value,
}

impl WhenOf {
    fn is_auto(&self) -> bool {
        *self == WhenOf::Auto
    }
}

/// A policy's activation condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// Name of an injected probe.
    pub probe: String,
    /// One of its metrics (without the `vtap_probe_` prefix).
    pub metric: String,
    /// Only samples carrying these labels (all of them) count.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Holds while the value is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Holds while the value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Seconds the condition must hold before the policy is activated.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub for_seconds: f64,
    /// Seconds the condition must fail before the policy is deactivated
    /// (default: `for_seconds`, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_seconds: Option<f64>,
    /// Rate or value (default: rate of a counter, value of a gauge).
    #[serde(default, skip_serializing_if = "WhenOf::is_auto")]
    pub of: WhenOf,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

// Thresholds are finite (validation rejects NaN), so equality is total.
impl Eq for When {}

impl When {
    /// Seconds the condition must fail before deactivation.
    pub fn hold(&self) -> f64 {
        self.hold_seconds.unwrap_or(self.for_seconds.max(1.0))
    }

    /// Whether `v` satisfies the threshold.
    pub fn holds(&self, v: f64) -> bool {
        match (self.above, self.below) {
            (Some(a), Some(b)) => v > a && v < b,
            (Some(a), None) => v > a,
            (None, Some(b)) => v < b,
            (None, None) => false,
        }
    }

    /// A short text of the condition, for logs and status.
    pub fn describe(&self) -> String {
        let what = match self.of {
            WhenOf::Rate => format!("rate({}/{})", self.probe, self.metric),
            _ => format!("{}/{}", self.probe, self.metric),
        };
        let cmp = match (self.above, self.below) {
            (Some(a), Some(b)) => format!("between {a} and {b}"),
            (Some(a), None) => format!("> {a}"),
            (None, Some(b)) => format!("< {b}"),
            (None, None) => "?".into(),
        };
        format!("{what} {cmp}")
    }
}

/// Checks a `when:` block; errors as (field, message).
pub fn validate(w: &When) -> Vec<(String, String)> {
    let mut e = Vec::new();
    if !crate::probes::spec::valid_probe_name(&w.probe) {
        e.push((
            "when.probe".into(),
            format!("{:?} is not a probe name", w.probe),
        ));
    }
    if !crate::probes::spec::valid_metric_name(&w.metric) {
        e.push((
            "when.metric".into(),
            format!(
                "{:?} is not a probe metric name (a letter, then [A-Za-z0-9_])",
                w.metric
            ),
        ));
    }
    match (w.above, w.below) {
        (None, None) => e.push((
            "when".into(),
            "a condition needs `above: X` or `below: X` (or both: between)".into(),
        )),
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && a >= b => e.push((
            "when".into(),
            format!("above {a} and below {b} can never both hold"),
        )),
        _ => {}
    }
    for (f, v) in [("above", w.above), ("below", w.below)] {
        if v.is_some_and(|v| !v.is_finite()) {
            e.push((format!("when.{f}"), "must be a finite number".into()));
        }
    }
    for (f, v) in [
        ("for_seconds", Some(w.for_seconds)),
        ("hold_seconds", w.hold_seconds),
    ] {
        if let Some(v) = v
            && !(v.is_finite() && (0.0..=MAX_SECONDS).contains(&v))
        {
            e.push((
                format!("when.{f}"),
                format!("{v} is outside 0..{MAX_SECONDS} seconds"),
            ));
        }
    }
    e
}

/// The live state of one condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConditionStatus {
    /// The policy is in effect.
    pub active: bool,
    /// The last value compared (None: no probe, metric or rate yet).
    pub value: Option<f64>,
    /// Why there is no value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    /// Times the policy was activated / deactivated.
    pub activations: u64,
    /// See `activations`.
    pub deactivations: u64,
    /// Unix ms of the last change (0 = never).
    pub changed_unix_ms: u64,
}

#[derive(Debug)]
struct State {
    when: When,
    status: ConditionStatus,
    /// (time, summed value) of the last RATE_WINDOW, for rates.
    history: VecDeque<(Instant, f64)>,
    /// Since when the condition has held / failed without interruption.
    since: Option<(bool, Instant)>,
}

/// Evaluates the conditions of a policy set.
#[derive(Debug, Default)]
pub struct Conditions {
    states: BTreeMap<String, State>,
}

/// One change of a policy's activation.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The policy.
    pub policy: String,
    /// Now active.
    pub active: bool,
    /// The value that made it.
    pub value: Option<f64>,
    /// The condition, described.
    pub condition: String,
}

impl Conditions {
    /// Follows a new policy set: policies without `when` are dropped, a
    /// changed `when` starts over (inactive).
    pub fn sync<'a>(&mut self, policies: impl IntoIterator<Item = (&'a str, &'a When)>) {
        let mut next = BTreeMap::new();
        for (name, w) in policies {
            let st = match self.states.remove(name) {
                Some(s) if s.when == *w => s,
                _ => State {
                    when: w.clone(),
                    status: ConditionStatus::default(),
                    history: VecDeque::new(),
                    since: None,
                },
            };
            next.insert(name.to_string(), st);
        }
        self.states = next;
    }

    /// Whether any policy has a condition.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The probes the conditions read.
    pub fn probes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.states.values().map(|s| s.when.probe.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether `policy` with condition `w` is active: it is now, with this
    /// very condition.
    pub fn would_be_active(&self, policy: &str, w: &When) -> bool {
        self.states
            .get(policy)
            .is_some_and(|s| s.when == *w && s.status.active)
    }

    /// Whether `policy` (which has a condition) is active now.
    pub fn is_active(&self, policy: &str) -> bool {
        self.states.get(policy).is_some_and(|s| s.status.active)
    }

    /// Status of one policy's condition.
    pub fn status(&self, policy: &str) -> Option<&ConditionStatus> {
        self.states.get(policy).map(|s| &s.status)
    }

    /// Status of every condition, by policy.
    pub fn statuses(&self) -> BTreeMap<String, (When, ConditionStatus)> {
        self.states
            .iter()
            .map(|(n, s)| (n.clone(), (s.when.clone(), s.status.clone())))
            .collect()
    }

    /// One evaluation at `now` with the probes' samples (probe name →
    /// samples). Returns the activations that changed.
    pub fn evaluate(
        &mut self,
        now: Instant,
        samples: &BTreeMap<String, Vec<MetricSamples>>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for (name, st) in self.states.iter_mut() {
            let w = &st.when;
            let (value, missing) = match samples.get(&w.probe) {
                None => (None, Some(format!("probe {} is not loaded", w.probe))),
                Some(ss) => {
                    let mut kind = None;
                    let mut sum = 0.0;
                    for s in ss.iter().filter(|s| s.metric == w.metric) {
                        kind = Some(s.kind);
                        sum += match &s.hist {
                            Some(h) if s.values_where(&w.labels).next().is_some() => h.count as f64,
                            Some(_) => 0.0,
                            None => s.values_where(&w.labels).sum::<f64>(),
                        };
                    }
                    // A probe whose metric has no sample yet (empty map)
                    // has the value 0: its spec names the kind.
                    let rate = match w.of {
                        WhenOf::Rate => true,
                        WhenOf::Value => false,
                        WhenOf::Auto => !matches!(kind, Some(MetricKind::Gauge)),
                    };
                    if rate {
                        st.history.push_back((now, sum));
                        if st.history.iter().any(|(_, v)| *v > sum) {
                            // A counter reset (probe replaced): start over.
                            st.history.clear();
                            st.history.push_back((now, sum));
                        }
                        while st.history.len() > 2
                            && now.duration_since(st.history[1].0) >= RATE_WINDOW
                        {
                            st.history.pop_front();
                        }
                        let (t0, v0) = st.history[0];
                        let dt = now.duration_since(t0).as_secs_f64();
                        if dt > 0.0 {
                            (Some((sum - v0) / dt), None)
                        } else {
                            (None, Some("collecting a rate".into()))
                        }
                    } else {
                        st.history.clear();
                        (Some(sum), None)
                    }
                }
            };
            let holds = value.is_some_and(|v| w.holds(v));
            st.status.value = value;
            st.status.missing = missing;
            let since = match st.since {
                Some((h, t)) if h == holds => t,
                _ => {
                    st.since = Some((holds, now));
                    now
                }
            };
            let held = now.duration_since(since).as_secs_f64();
            let flip = if st.status.active {
                !holds && held >= w.hold()
            } else {
                holds && held >= w.for_seconds
            };
            if flip {
                st.status.active = !st.status.active;
                if st.status.active {
                    st.status.activations += 1;
                } else {
                    st.status.deactivations += 1;
                }
                st.status.changed_unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                changes.push(Change {
                    policy: name.clone(),
                    active: st.status.active,
                    value,
                    condition: w.describe(),
                });
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn when(yaml: &str) -> When {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn sample(metric: &str, kind: MetricKind, dst: &str, v: f64) -> MetricSamples {
        MetricSamples {
            metric: metric.into(),
            help: String::new(),
            kind,
            label_names: vec!["dst".into()],
            rows: vec![(vec![dst.into()], v)],
            hist: None,
        }
    }

    fn probe(ss: Vec<MetricSamples>) -> BTreeMap<String, Vec<MetricSamples>> {
        BTreeMap::from([("syn-flood".to_string(), ss)])
    }

    #[test]
    fn counter_rate_activates_at_once_and_deactivates_after_hold() {
        let w = when("{probe: syn-flood, metric: syn_total, above: 100}");
        assert!(validate(&w).is_empty());
        let mut c = Conditions::default();
        c.sync([("p", &w)]);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let s = |v: f64| {
            probe(vec![sample(
                "syn_total",
                MetricKind::Counter,
                "10.0.0.2",
                v,
            )])
        };
        // Slow: 10/s.
        assert!(c.evaluate(at(0), &s(0.0)).is_empty());
        assert!(c.evaluate(at(200), &s(2.0)).is_empty());
        assert!(!c.is_active("p"));
        // Flood: +200 in 200 ms → far above 100/s → active at once.
        let ch = c.evaluate(at(400), &s(202.0));
        assert_eq!(ch.len(), 1, "{ch:?}");
        assert!(ch[0].active && c.is_active("p"));
        // Flood over: the rate falls under 100/s once the window slides
        // past it, and the policy stays on for hold (1 s) more.
        let mut v = 202.0;
        let mut off_at = None;
        for i in 3..20u64 {
            v += 1.0;
            if let Some(ch) = c.evaluate(at(i * 200), &s(v)).first() {
                assert!(!ch.active);
                off_at = Some(i * 200);
                break;
            }
        }
        let off = off_at.expect("deactivated");
        assert!((1400..=2800).contains(&off), "deactivated at {off} ms");
        let st = &c.statuses()["p"].1;
        assert_eq!((st.activations, st.deactivations), (1, 1));
    }

    #[test]
    fn for_seconds_labels_gauges_and_missing_probes() {
        let w = when(
            "{probe: syn-flood, metric: half_open, labels: {dst: 10.0.0.2}, above: 5, for_seconds: 1}",
        );
        let mut c = Conditions::default();
        c.sync([("p", &w)]);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // No probe: no value, not active.
        assert!(c.evaluate(at(0), &BTreeMap::new()).is_empty());
        assert!(
            c.statuses()["p"]
                .1
                .missing
                .as_deref()
                .unwrap()
                .contains("not loaded")
        );
        let s = |a: f64, b: f64| {
            probe(vec![
                sample("half_open", MetricKind::Gauge, "10.0.0.2", a),
                sample("half_open", MetricKind::Gauge, "10.0.0.3", b),
            ])
        };
        // Only dst 10.0.0.2 counts (gauge value, not rate).
        assert!(c.evaluate(at(100), &s(1.0, 100.0)).is_empty());
        assert_eq!(c.statuses()["p"].1.value, Some(1.0));
        // Holds from 200 ms; active only after 1 s of holding.
        assert!(c.evaluate(at(200), &s(6.0, 0.0)).is_empty());
        assert!(c.evaluate(at(800), &s(6.0, 0.0)).is_empty());
        let ch = c.evaluate(at(1200), &s(6.0, 0.0));
        assert!(ch.len() == 1 && ch[0].active);
        // An interruption restarts the clock of the other side.
        assert!(c.evaluate(at(1400), &s(1.0, 0.0)).is_empty());
        assert!(c.evaluate(at(1600), &s(9.0, 0.0)).is_empty());
        assert!(c.is_active("p"));
        // A changed condition starts over, inactive.
        let w2 = when("{probe: syn-flood, metric: half_open, above: 50}");
        c.sync([("p", &w2)]);
        assert!(!c.is_active("p"));
        // Dropped with the policy.
        c.sync(std::iter::empty());
        assert!(c.is_empty());
    }

    #[test]
    fn validation() {
        let bad = |y: &str, field: &str| {
            let e = validate(&when(y));
            assert!(e.iter().any(|(f, _)| f == field), "{y}: {e:?}");
        };
        bad("{probe: p, metric: m}", "when");
        bad("{probe: p, metric: m, above: 5, below: 1}", "when");
        bad("{probe: p, metric: 'a-b', above: 1}", "when.metric");
        bad("{probe: 'Bad Name', metric: m, above: 1}", "when.probe");
        bad(
            "{probe: p, metric: m, above: 1, for_seconds: -1}",
            "when.for_seconds",
        );
        bad("{probe: p, metric: m, above: .nan}", "when.above");
        assert!(serde_yaml::from_str::<When>("{probe: p, metric: m, above: 1, bogus: 1}").is_err());
        assert!(
            validate(&when(
                "{probe: p, metric: m, above: 1, below: 5, of: value}"
            ))
            .is_empty()
        );
    }
}
