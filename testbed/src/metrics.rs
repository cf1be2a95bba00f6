//! A small parser for the Prometheus text exposition format, enough to read
//! counters from `/metrics` in tests.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Result, anyhow, bail};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", key(&self.name, &self.labels))?;
        write!(f, " {}", self.value)
    }
}

/// Canonical key: `name{a="x",b="y"}` with labels sorted (`name` alone when
/// there are none).
pub fn key(name: &str, labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let l: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    format!("{name}{{{}}}", l.join(","))
}

/// All samples of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str)> {
    // s starts just after '{'; returns the rest after '}'.
    let mut labels = BTreeMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        if i < b.len() && b[i] == b'}' {
            return Ok((labels, &s[i + 1..]));
        }
        let start = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        if i >= b.len() {
            bail!("unterminated label set");
        }
        let name = s[start..i].trim().to_string();
        i += 1;
        if i >= b.len() || b[i] != b'"' {
            bail!("label {name} has no quoted value");
        }
        i += 1;
        let mut v = String::new();
        let mut chars = s[i..].char_indices();
        let mut end = None;
        while let Some((j, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => v.push('\n'),
                    Some((_, c2)) => v.push(c2),
                    None => bail!("dangling escape"),
                },
                '"' => {
                    end = Some(i + j + 1);
                    break;
                }
                c => v.push(c),
            }
        }
        i = end.ok_or_else(|| anyhow!("unterminated value of label {name}"))?;
        labels.insert(name, v);
    }
}

fn parse_value(s: &str) -> Result<f64> {
    Ok(match s {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s.parse().map_err(|_| anyhow!("bad sample value {s:?}"))?,
    })
}

impl Metrics {
    /// Parses exposition text (Prometheus 0.0.4 or OpenMetrics).
    pub fn parse(text: &str) -> Result<Metrics> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |e: anyhow::Error| e.context(format!("metrics line {}: {line:?}", n + 1));
            let name_end = line
                .find(|c: char| c == '{' || c.is_whitespace())
                .ok_or_else(|| err(anyhow!("no value")))?;
            let name = line[..name_end].to_string();
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end + 1..]).map_err(err)?
            } else {
                (BTreeMap::new(), &line[name_end..])
            };
            let v = rest
                .split_whitespace()
                .next()
                .ok_or_else(|| err(anyhow!("no value")))?;
            let value = parse_value(v).map_err(err)?;
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Ok(Metrics { samples })
    }

    /// `key -> value` for every sample (see [`key`]).
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .map(|s| (key(&s.name, &s.labels), s.value))
            .collect()
    }

    /// Samples of `name` whose labels include all of `labels`.
    pub fn find<'m>(&'m self, name: &str, labels: &[(&str, &str)]) -> Vec<&'m Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(|x| x == v).unwrap_or(false))
            })
            .collect()
    }

    /// The value of the single sample of `name` with these labels; `None`
    /// if there is none (an error if there are several).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Result<Option<f64>> {
        let f = self.find(name, labels);
        match f.len() {
            0 => Ok(None),
            1 => Ok(Some(f[0].value)),
            n => bail!(
                "{n} samples of {name} match {labels:?}: {:?}",
                f.iter().map(|s| s.to_string()).collect::<Vec<_>>()
            ),
        }
    }

    /// Sum over the samples of `name` whose labels include `labels` (0 if none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).iter().map(|s| s.value).sum()
    }

    /// All samples whose name starts with `prefix`, one per line.
    pub fn dump(&self, prefix: &str) -> String {
        self.samples
            .iter()
            .filter(|s| s.name.starts_with(prefix))
            .map(|s| format!("{s}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP vtap_policy_mirrored_packets_total Copies sent.
# TYPE vtap_policy_mirrored_packets_total counter
vtap_policy_mirrored_packets_total{policy="icmp",output="mon0.100"} 10
vtap_policy_mirrored_packets_total{output="mon0.200",policy="icmp"} 4 1700000000000
vtap_tap_packets_total{tap="vm1-tap",direction="ingress"} 5
vtap_weird{l="a \"q\" \\ b\nc"} +Inf
up 1
"#;

    #[test]
    fn parses_and_queries() {
        let m = Metrics::parse(TEXT).unwrap();
        assert_eq!(m.samples.len(), 5);
        assert_eq!(
            m.get(
                "vtap_policy_mirrored_packets_total",
                &[("output", "mon0.100")]
            )
            .unwrap(),
            Some(10.0)
        );
        assert_eq!(
            m.sum("vtap_policy_mirrored_packets_total", &[("policy", "icmp")]),
            14.0
        );
        assert!(
            m.get("vtap_policy_mirrored_packets_total", &[("policy", "icmp")])
                .is_err()
        );
        assert_eq!(m.get("nope", &[]).unwrap(), None);
        assert_eq!(m.get("up", &[]).unwrap(), Some(1.0));
        let s = &m.find("vtap_weird", &[])[0];
        assert_eq!(s.labels["l"], "a \"q\" \\ b\nc");
        let map = m.to_map();
        assert_eq!(
            map["vtap_policy_mirrored_packets_total{output=\"mon0.200\",policy=\"icmp\"}"],
            4.0
        );
        assert_eq!(
            map["vtap_tap_packets_total{direction=\"ingress\",tap=\"vm1-tap\"}"],
            5.0
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(Metrics::parse("x{a=\"b\" 1").is_err());
        assert!(Metrics::parse("x notanumber").is_err());
    }
}
