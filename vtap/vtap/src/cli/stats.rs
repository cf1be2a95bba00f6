//! `vtap stats`: one consistent read of every counter.

use super::output::{self, Format, Table, emit};
use super::{CliError, Ctx};
use crate::wire::Stats;

/// Runs `vtap stats`.
pub fn run(ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx.client()?.get("/api/v1/stats")?;
    match ctx.format() {
        Format::Table => emit(&stats_text(&r.parse()?)),
        f => emit(&output::render_value(&r.body, f)),
    }
    Ok(())
}

/// The stats in sections: taps, policies, outputs.
pub fn stats_text(s: &Stats) -> String {
    let mut out = String::new();

    out.push_str("TAPS\n");
    let mut t = Table::new(&[
        "NAME",
        "DIRECTION",
        "PACKETS",
        "BYTES",
        "CLASSIFIED",
        "TRUNCATED",
    ])
    .right(&[2, 3, 4, 5]);
    for tap in &s.taps {
        for (dir, c) in &tap.counters {
            t.row(vec![
                tap.name.clone(),
                dir.clone(),
                c.packets.to_string(),
                c.bytes.to_string(),
                c.classified.to_string(),
                c.truncated.to_string(),
            ]);
        }
    }
    out.push_str(&section(&t, "no taps"));

    out.push_str("\nPOLICIES\n");
    let mut t = Table::new(&[
        "NAME",
        "MATCHED",
        "BYTES",
        "MIRRORED",
        "DROPPED",
        "DROP REASONS",
    ])
    .right(&[1, 2, 3, 4]);
    for p in &s.policies {
        let c = &p.counters;
        let matched = c
            .matched
            .values()
            .fold(0u64, |a, v| a.saturating_add(v.packets));
        let bytes = c
            .matched
            .values()
            .fold(0u64, |a, v| a.saturating_add(v.bytes));
        let mirrored = c.mirrored.values().fold(0u64, |a, v| a.saturating_add(*v));
        let dropped = c.dropped.values().fold(0u64, |a, v| a.saturating_add(*v));
        let reasons: Vec<String> = c
            .dropped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        t.row(vec![
            p.name.clone(),
            matched.to_string(),
            bytes.to_string(),
            mirrored.to_string(),
            dropped.to_string(),
            if reasons.is_empty() {
                "-".into()
            } else {
                reasons.join(",")
            },
        ]);
    }
    out.push_str(&section(&t, "no policies"));

    out.push_str("\nOUTPUTS\n");
    let mut t = Table::new(&["OUTPUT", "SENT", "FAILED"]).right(&[1, 2]);
    for o in &s.outputs {
        t.row(vec![
            o.output.clone(),
            o.sent.to_string(),
            o.failed.to_string(),
        ]);
    }
    out.push_str(&section(&t, "no outputs"));

    out.push_str(&format!("\nPolicy-set switches: {}\n", s.generation_flips));
    out
}

fn section(t: &Table, empty: &str) -> String {
    if t.is_empty() {
        format!("  ({empty})\n")
    } else {
        output::indent(&t.render(), 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{
        OutputStats, PacketsBytes, PolicyCounters, PolicyStats, TapCounters, TapInfo,
    };
    use std::collections::BTreeMap;

    #[test]
    fn sections() {
        let mut counters = BTreeMap::new();
        counters.insert(
            "ingress".to_owned(),
            TapCounters {
                packets: 10,
                bytes: 1000,
                truncated: 0,
                classified: 4,
            },
        );
        let tap = TapInfo {
            name: "vm1-tap".into(),
            ifindex: 3,
            mode: "tcx".into(),
            directions: vec!["ingress".into()],
            attached: vec!["ingress".into()],
            state: "attached".into(),
            error: None,
            explicit: false,
            policies: vec!["icmp".into()],
            counters,
        };
        let mut pc = PolicyCounters::default();
        pc.matched.insert(
            "ingress".into(),
            PacketsBytes {
                packets: 4,
                bytes: 392,
            },
        );
        pc.mirrored.insert("mon0.100".into(), 3);
        pc.dropped.insert("output_down".into(), 1);
        pc.dropped.insert("clone_failed".into(), 0);
        let s = Stats {
            taps: vec![tap],
            policies: vec![PolicyStats {
                name: "icmp".into(),
                counters: pc,
            }],
            outputs: vec![OutputStats {
                output: "mon0.100".into(),
                sent: 3,
                failed: 0,
            }],
            generation_flips: 2,
        };
        assert_eq!(
            stats_text(&s),
            "TAPS\n\
             \x20 NAME      DIRECTION   PACKETS   BYTES   CLASSIFIED   TRUNCATED\n\
             \x20 vm1-tap   ingress          10    1000            4           0\n\
             \n\
             POLICIES\n\
             \x20 NAME   MATCHED   BYTES   MIRRORED   DROPPED   DROP REASONS\n\
             \x20 icmp         4     392          3         1   output_down=1\n\
             \n\
             OUTPUTS\n\
             \x20 OUTPUT     SENT   FAILED\n\
             \x20 mon0.100      3        0\n\
             \n\
             Policy-set switches: 2\n"
        );
        let empty = Stats {
            taps: vec![],
            policies: vec![],
            outputs: vec![],
            generation_flips: 0,
        };
        assert_eq!(
            stats_text(&empty),
            "TAPS\n  (no taps)\n\nPOLICIES\n  (no policies)\n\nOUTPUTS\n  (no outputs)\n\nPolicy-set switches: 0\n"
        );
    }
}
