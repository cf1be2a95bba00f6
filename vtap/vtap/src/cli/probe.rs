//! `vtap probe inject|list|get|delete|metrics`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use clap::Subcommand;
use serde_json::Value;

use super::client::encode_segment;
use super::output::{self, Format, Table, emit, list_or_dash};
use super::{CliError, Ctx};
use vtap_core::probes::spec::{self, ProbeSpec};

/// `vtap probe ...`.
#[derive(Subcommand, Debug)]
pub enum ProbeCmd {
    /// Inject (or replace) a probe from a spec file (YAML or JSON;
    /// `source_file`/`object_file` are read relative to it).
    Inject {
        /// The spec.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List probes: where attached, program, metrics.
    List,
    /// One probe.
    Get {
        /// Probe name.
        name: String,
    },
    /// Detach a probe and free its maps.
    Delete {
        /// Probe name.
        name: String,
    },
    /// Read a probe's metrics (JSON: every map entry).
    Metrics {
        /// Probe name.
        name: String,
        /// Only this metric.
        metric: Option<String>,
        /// OpenMetrics text instead of JSON.
        #[arg(long)]
        openmetrics: bool,
    },
}

fn local(msg: String) -> CliError {
    CliError::Local(vec![format!("error: {msg}")])
}

/// Reads a spec file and inlines `source_file` / `object_file`.
pub fn read_spec(file: &Path) -> Result<ProbeSpec, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| local(format!("reading {}: {e}", file.display())))?;
    let mut s: ProbeSpec =
        serde_yaml::from_str(&text).map_err(|e| local(format!("{}: {e}", file.display())))?;
    let errs = spec::validate(&s, true);
    if !errs.is_empty() {
        return Err(CliError::Local(
            errs.iter()
                .map(|e| format!("{}: {}: {}", file.display(), e.field, e.message))
                .collect(),
        ));
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    if let Some(f) = s.source_file.take() {
        let p = dir.join(&f);
        s.source = Some(
            std::fs::read_to_string(&p)
                .map_err(|e| local(format!("source_file {}: {e}", p.display())))?,
        );
    }
    if let Some(f) = s.object_file.take() {
        let p = dir.join(&f);
        let bytes =
            std::fs::read(&p).map_err(|e| local(format!("object_file {}: {e}", p.display())))?;
        s.object = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    Ok(s)
}

/// Runs `vtap probe ...`.
pub fn run(ctx: &Ctx, cmd: ProbeCmd) -> Result<(), CliError> {
    let client = ctx.client()?;
    match cmd {
        ProbeCmd::Inject { file } => {
            let s = read_spec(&file)?;
            let r = client.send(
                "PUT",
                &format!("/api/v1/probes/{}", encode_segment(&s.name)),
                &[],
                Some(&s),
                None,
            )?;
            match ctx.format() {
                Format::Table => emit(&format!(
                    "probe {} {} ({:.0} ms): attached to {}\n",
                    s.name,
                    if r.status == 201 {
                        "injected"
                    } else {
                        "replaced"
                    },
                    r.body["load_ms"].as_f64().unwrap_or(0.0),
                    list_or_dash(&strings(&r.body["attached"]))
                )),
                f => emit(&output::render_value(&r.body, f)),
            }
        }
        ProbeCmd::List => {
            let r = client.get("/api/v1/probes")?;
            match ctx.format() {
                Format::Table => emit(&list_text(&r.body)),
                f => emit(&output::render_value(&r.body, f)),
            }
        }
        ProbeCmd::Get { name } => {
            let r = client.get(&format!("/api/v1/probes/{}", encode_segment(&name)))?;
            emit(&output::render_value(
                &r.body,
                match ctx.format() {
                    Format::Table => Format::Yaml,
                    f => f,
                },
            ));
        }
        ProbeCmd::Delete { name } => {
            client.send::<()>(
                "DELETE",
                &format!("/api/v1/probes/{}", encode_segment(&name)),
                &[],
                None,
                None,
            )?;
            emit(&format!("probe {name} removed\n"));
        }
        ProbeCmd::Metrics {
            name,
            metric,
            openmetrics,
        } => {
            let mut path = format!("/api/v1/probes/{}/metrics", encode_segment(&name));
            if let Some(m) = &metric {
                path.push_str(&format!("/{}", encode_segment(m)));
            }
            if openmetrics {
                let mut out = std::io::stdout().lock();
                client.stream_to(&path, &[("format", "openmetrics")], &mut out)?;
                return Ok(());
            }
            let r = client.get(&path)?;
            match ctx.format() {
                Format::Table => emit(&output::render_value(&r.body, Format::Json)),
                f => emit(&output::render_value(&r.body, f)),
            }
        }
    }
    Ok(())
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The `probe list` table.
pub fn list_text(body: &Value) -> String {
    let probes = body["probes"].as_array().cloned().unwrap_or_default();
    if probes.is_empty() {
        return "no probes (vtap probe inject -f SPEC)\n".into();
    }
    let mut t =
        Table::new(&["NAME", "HOOK", "ATTACHED", "PROGRAM", "INSNS", "METRICS"]).right(&[4]);
    for p in &probes {
        t.row(vec![
            p["name"].as_str().unwrap_or("").into(),
            p["hook"].as_str().unwrap_or("").into(),
            list_or_dash(&strings(&p["attached"])),
            format!(
                "{} (id {})",
                p["program"].as_str().unwrap_or(""),
                p["program_id"]
                    .as_u64()
                    .map_or("-".into(), |i| i.to_string())
            ),
            p["instructions"].as_u64().unwrap_or(0).to_string(),
            list_or_dash(
                &p["metrics"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|m| m["name"].as_str().map(str::to_owned))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default(),
            ),
        ]);
    }
    t.render()
}
