//! `vtap tap list|attach|detach`.

use clap::Subcommand;

use super::client::encode_segment;
use super::output::{self, Format, Table, emit, list_or_dash};
use super::{CliError, Ctx};
use crate::wire::{TapInfo, TapList, TapRequest};

/// `--direction` of `vtap tap attach`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectionArg {
    /// Packets from the VM.
    Ingress,
    /// Packets to the VM.
    Egress,
    /// Both.
    Both,
}

impl DirectionArg {
    fn directions(self) -> Vec<String> {
        match self {
            DirectionArg::Ingress => vec!["ingress".into()],
            DirectionArg::Egress => vec!["egress".into()],
            DirectionArg::Both => vec!["ingress".into(), "egress".into()],
        }
    }
}

/// `vtap tap ...`.
#[derive(Subcommand, Debug)]
pub enum TapCmd {
    /// List the interfaces vtap is attached to or configured for.
    List,
    /// Attach to an interface explicitly (whether or not a policy selects it).
    Attach {
        /// Interface name.
        iface: String,
        /// Directions to attach [default: both, as the daemon decides].
        #[arg(long, value_enum)]
        direction: Option<DirectionArg>,
    },
    /// Remove an explicit attachment.
    Detach {
        /// Interface name.
        iface: String,
    },
}

/// Runs `vtap tap ...`.
pub fn run(ctx: &Ctx, cmd: TapCmd) -> Result<(), CliError> {
    let client = ctx.client()?;
    let r = match &cmd {
        TapCmd::List => client.get("/api/v1/taps")?,
        TapCmd::Attach { iface, direction } => {
            let body = direction.map(|d| TapRequest {
                directions: d.directions(),
            });
            client.send(
                "PUT",
                &format!("/api/v1/taps/{}", encode_segment(iface)),
                &[],
                body.as_ref(),
                None,
            )?
        }
        TapCmd::Detach { iface } => client.send::<()>(
            "DELETE",
            &format!("/api/v1/taps/{}", encode_segment(iface)),
            &[],
            None,
            None,
        )?,
    };
    match ctx.format() {
        Format::Table => {
            let taps = match cmd {
                TapCmd::List => r.parse::<TapList>()?.taps,
                _ => vec![r.parse::<TapInfo>()?],
            };
            emit(&tap_table(&taps));
        }
        f => emit(&output::render_value(&r.body, f)),
    }
    Ok(())
}

fn packets(t: &TapInfo, dir: &str) -> String {
    t.counters
        .get(dir)
        .map(|c| c.packets.to_string())
        .unwrap_or_else(|| "-".into())
}

/// Taps as a table.
pub fn tap_table(taps: &[TapInfo]) -> String {
    if taps.is_empty() {
        return "no taps\n".into();
    }
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "DIRECTIONS",
        "INGRESS PKTS",
        "EGRESS PKTS",
        "POLICIES",
    ])
    .right(&[3, 4]);
    for tap in taps {
        let state = match &tap.error {
            Some(e) if !e.is_empty() => format!("{} ({e})", tap.state),
            _ => tap.state.clone(),
        };
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        let dirs = if sorted(&tap.attached) == sorted(&tap.directions) {
            list_or_dash(&tap.attached)
        } else {
            format!(
                "{} (wanted {})",
                list_or_dash(&tap.attached),
                list_or_dash(&tap.directions)
            )
        };
        let mut pol = tap.policies.join(",");
        if tap.explicit {
            pol = if pol.is_empty() {
                "(explicit)".into()
            } else {
                format!("{pol} (+explicit)")
            };
        }
        if pol.is_empty() {
            pol = "-".into();
        }
        t.row(vec![
            tap.name.clone(),
            state,
            dirs,
            packets(tap, "ingress"),
            packets(tap, "egress"),
            pol,
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::TapCounters;
    use std::collections::BTreeMap;

    pub(crate) fn tap(name: &str, state: &str, explicit: bool, policies: &[&str]) -> TapInfo {
        let mut counters = BTreeMap::new();
        if state == "attached" {
            counters.insert(
                "ingress".to_owned(),
                TapCounters {
                    packets: 120,
                    bytes: 12000,
                    truncated: 0,
                    classified: 40,
                },
            );
            counters.insert(
                "egress".to_owned(),
                TapCounters {
                    packets: 7,
                    bytes: 700,
                    truncated: 1,
                    classified: 7,
                },
            );
        }
        let both = vec!["ingress".to_owned(), "egress".to_owned()];
        TapInfo {
            name: name.into(),
            ifindex: if state == "missing" { 0 } else { 4 },
            mode: "tcx".into(),
            directions: both.clone(),
            attached: if state == "attached" { both } else { vec![] },
            state: state.into(),
            error: if state == "error" {
                Some("EPERM".into())
            } else {
                None
            },
            explicit,
            policies: policies.iter().map(|s| s.to_string()).collect(),
            counters,
        }
    }

    #[test]
    fn table() {
        let taps = vec![
            tap("vm1-tap", "attached", false, &["icmp", "web"]),
            tap("vnet7", "missing", true, &[]),
            tap("eth9", "error", true, &["dns"]),
        ];
        assert_eq!(
            tap_table(&taps),
            "NAME      STATE           DIRECTIONS                  INGRESS PKTS   EGRESS PKTS   POLICIES\n\
             vm1-tap   attached        ingress,egress                       120             7   icmp,web\n\
             vnet7     missing         - (wanted ingress,egress)              -             -   (explicit)\n\
             eth9      error (EPERM)   - (wanted ingress,egress)              -             -   dns (+explicit)\n"
        );
        assert_eq!(tap_table(&[]), "no taps\n");
    }

    #[test]
    fn directions() {
        assert_eq!(DirectionArg::Both.directions(), ["ingress", "egress"]);
        assert_eq!(DirectionArg::Egress.directions(), ["egress"]);
    }
}
