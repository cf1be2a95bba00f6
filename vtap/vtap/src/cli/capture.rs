//! `vtap capture list|show|stream`.

use std::io::IsTerminal;

use clap::Subcommand;

use super::client::encode_segment;
use super::output::{self, Format, Table, emit, list_or_dash};
use super::{CliError, Ctx};
use crate::wire::{CaptureInfo, CaptureList};

/// `vtap capture ...`.
#[derive(Subcommand, Debug)]
pub enum CaptureCmd {
    /// List captures: state, files, sizes, packet and loss counters.
    List,
    /// One capture in detail, with its files.
    Show {
        /// Capture name.
        name: String,
    },
    /// Write the capture's live pcapng stream to stdout (pipe it to
    /// `tcpdump -r -`, `tshark -r -` or a file).
    Stream {
        /// Capture name.
        name: String,
        /// Stop after this many packets.
        #[arg(long, short = 'c')]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
}

/// Runs `vtap capture ...`.
pub fn run(ctx: &Ctx, cmd: CaptureCmd) -> Result<(), CliError> {
    let client = ctx.client()?;
    match cmd {
        CaptureCmd::List => {
            let r = client.get("/api/v1/captures")?;
            match ctx.format() {
                Format::Table => emit(&list_text(&r.parse::<CaptureList>()?.captures)),
                f => emit(&output::render_value(&r.body, f)),
            }
        }
        CaptureCmd::Show { name } => {
            let r = client.get(&format!("/api/v1/captures/{}", encode_segment(&name)))?;
            match ctx.format() {
                Format::Table => emit(&show_text(&r.parse::<CaptureInfo>()?)),
                f => emit(&output::render_value(&r.body, f)),
            }
        }
        CaptureCmd::Stream {
            name,
            count,
            seconds,
        } => {
            let mut stdout = std::io::stdout().lock();
            if stdout.is_terminal() {
                return Err(CliError::Usage(
                    "the stream is binary pcapng: pipe it (`| tcpdump -r -`) or redirect it to a file"
                        .into(),
                ));
            }
            let c = count.map(|n| n.to_string());
            let s = seconds.map(|n| n.to_string());
            let mut q: Vec<(&str, &str)> = Vec::new();
            if let Some(c) = &c {
                q.push(("packets", c));
            }
            if let Some(s) = &s {
                q.push(("seconds", s));
            }
            client.stream_to(
                &format!("/api/v1/captures/{}/stream", encode_segment(&name)),
                &q,
                &mut stdout,
            )?;
        }
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn losses(c: &CaptureInfo) -> String {
    let l: Vec<String> = [
        ("ring_full", c.ring_full),
        ("file_error", c.not_written_error),
        ("stopped", c.not_written_stopped),
        ("writer_queue_full", c.writer_queue_full),
        ("stream_lagged", c.stream_lost),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(r, n)| format!("{r}={n}"))
    .collect();
    if l.is_empty() {
        "-".into()
    } else {
        l.join(",")
    }
}

/// The `capture list` table.
pub fn list_text(caps: &[CaptureInfo]) -> String {
    if caps.is_empty() {
        return "no captures (name one in a policy output: `pcap: NAME`)\n".into();
    }
    let mut t = Table::new(&[
        "NAME", "STATE", "POLICIES", "CAPTURED", "WRITTEN", "FILES", "SIZE", "LOST",
    ])
    .right(&[3, 4, 5, 6]);
    for c in caps {
        t.row(vec![
            c.name.clone(),
            c.state.clone(),
            list_or_dash(&c.policies),
            c.packets.to_string(),
            c.written_packets.to_string(),
            c.files.len().to_string(),
            human_bytes(c.files.iter().map(|f| f.bytes).sum()),
            losses(c),
        ]);
    }
    t.render()
}

/// The `capture show` text.
pub fn show_text(c: &CaptureInfo) -> String {
    let mut out = format!(
        "name:        {}\nstate:       {}{}\npolicies:    {}\ndirectory:   {}\ncaptured:    {} packets, {} (captured {})\nwritten:     {} packets, {}\nstreams:     {} subscribers, {} packets streamed\nlost:        {}\nwriter lag:  {:.3} s\n",
        c.name,
        c.state,
        c.state_detail
            .as_ref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default(),
        list_or_dash(&c.policies),
        c.dir,
        c.packets,
        human_bytes(c.bytes),
        human_bytes(c.cap_bytes),
        c.written_packets,
        human_bytes(c.written_bytes),
        c.subscribers,
        c.streamed,
        losses(c),
        c.writer_lag_seconds,
    );
    out.push_str("files:\n");
    if c.files.is_empty() {
        out.push_str("  -\n");
    }
    for f in &c.files {
        let cur = if c.current.as_deref() == Some(f.path.as_str()) {
            "  (current)"
        } else {
            ""
        };
        out.push_str(&format!("  {}  {}{cur}\n", f.path, human_bytes(f.bytes)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> CaptureInfo {
        CaptureInfo {
            name: "web".into(),
            policies: vec!["web-pcap".into()],
            state: "error".into(),
            state_detail: Some("No space left on device (os error 28)".into()),
            dir: "/var/lib/vtap/captures/web".into(),
            current: None,
            files: vec![crate::wire::CaptureFile {
                path: "/var/lib/vtap/captures/web/web-20261122T000000.000000Z.pcapng".into(),
                bytes: 3 << 20,
            }],
            packets: 10,
            bytes: 15000,
            cap_bytes: 640,
            ring_full: 2,
            received: 10,
            written_packets: 7,
            written_bytes: 900,
            not_written_error: 3,
            not_written_stopped: 0,
            writer_queue_full: 0,
            writer_lag_seconds: 0.002,
            subscribers: 1,
            streamed: 10,
            stream_lost: 0,
            config: serde_json::json!({}),
        }
    }

    #[test]
    fn list_shows_losses_and_sizes() {
        let t = list_text(&[info()]);
        assert!(t.contains("web-pcap"), "{t}");
        assert!(t.contains("3.0 MiB"), "{t}");
        assert!(t.contains("ring_full=2,file_error=3"), "{t}");
        assert!(list_text(&[]).contains("no captures"));
    }

    #[test]
    fn show_names_the_error() {
        let t = show_text(&info());
        assert!(
            t.contains("error (No space left on device (os error 28))"),
            "{t}"
        );
        assert!(
            t.contains("web-20261122T000000.000000Z.pcapng  3.0 MiB"),
            "{t}"
        );
    }
}
