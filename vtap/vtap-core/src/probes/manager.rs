//! Running probes: load a probe's object, attach its TC program with TCX on
//! the interfaces its spec selects (after vtap's own program: aya appends
//! to the hook, and every program returns `TC_ACT_UNSPEC`, so a probe never
//! changes the fate of a packet), keep attaching it to matching interfaces
//! that appear, and read its exported maps as metrics.
//!
//! Everything that can be checked before a probe runs is checked before:
//! the spec ([`super::spec::validate`]), the object (a BPF ELF with BTF),
//! every exported map and field against the object's BTF, then the
//! verifier. A probe that fails any of these changes nothing: a replaced
//! probe keeps running.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aya::programs::tc::{SchedClassifierLink, SchedClassifierLinkId};
use aya::programs::xdp::{XdpLink, XdpLinkId, XdpMode};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType, Xdp};
use aya::{Ebpf, EbpfLoader};
use serde::Serialize;
use serde_json::{Value, json};
use vtap_abi::Dir;

use super::MapLayout;
use super::batch::{self, Method};
use super::btf::{Aggregation, Btf, Field};
use super::compile::{self, CompileError};
use super::spec::{self, Hook, MetricKind, MetricSpec, ProbeSpec};
use crate::netlink::Links;
use crate::policy::model::Direction;
use crate::policy::validate::FieldError;

/// Why a probe was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeManagerError {
    /// The spec, or the spec against the object, is invalid.
    #[error("invalid probe ({} problems)", .0.len())]
    Invalid(Vec<FieldError>),
    /// The source did not compile, or the object is not usable.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The kernel's verifier refused the program (its log included).
    #[error("the verifier refused the probe:\n{0}")]
    Verifier(String),
    /// Attaching or reading failed.
    #[error("{0}")]
    Kernel(String),
    /// No such probe.
    #[error("no probe named {0}")]
    NotFound(String),
}

/// One exported metric, resolved against the object.
struct Metric {
    spec: MetricSpec,
    layout: MapLayout,
    key_fields: Vec<(Field, super::btf::LabelFormat, String)>,
    /// The value field of the samples, resolved once when the probe is
    /// loaded (`None`: the samples pick it from the decoded value).
    value_field: Option<Field>,
    /// `reset_on_read`: what was drained from the map, by raw key.
    acc: std::sync::Mutex<Accumulated>,
}

/// One entry of a metric: raw key, decoded key, decoded value.
type Row = (Vec<u8>, Value, Value);

/// Drained values of a reset-on-read metric: the running total (for
/// `/metrics`) and what the API has not returned yet (its window).
#[derive(Default)]
struct Accumulated {
    total: BTreeMap<Vec<u8>, (Value, Value)>,
    window: BTreeMap<Vec<u8>, (Value, Value)>,
}

/// Adds `b` into `a`, number by number (objects by member, arrays by
/// element); non-numbers take `b`.
fn add_values(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            *x = match (x.as_u64(), y.as_u64()) {
                (Some(p), Some(q)) => p.saturating_add(q).into(),
                _ => serde_json::Number::from_f64(
                    x.as_f64().unwrap_or(0.0) + y.as_f64().unwrap_or(0.0),
                )
                .unwrap_or_else(|| 0.into()),
            };
        }
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in y {
                match x.get_mut(k) {
                    Some(slot) => add_values(slot, v),
                    None => {
                        x.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (s, v) in x.iter_mut().zip(y) {
                add_values(s, v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// A running probe.
struct Probe {
    spec: ProbeSpec,
    /// The copy attached now.
    ebpf: Ebpf,
    /// Snapshot probes: the idle copy (loaded, not attached).
    spare: Option<Ebpf>,
    program: String,
    metrics: Vec<Metric>,
    links: BTreeMap<(String, Dir), PLink>,
    errors: BTreeMap<String, String>,
    loaded_at: SystemTime,
    load_ms: f64,
    insns: u64,
    object_bytes: usize,
}

/// A probe's attachment: a TCX link or an XDP link.
enum PLink {
    Tc(SchedClassifierLinkId),
    Xdp(XdpLinkId),
}

/// An attachment taken out of its program, to give to another one.
enum OwnedLink {
    Tc(SchedClassifierLink),
    Xdp(XdpLink),
}

fn tc_prog<'a>(e: &'a mut Ebpf, name: &str) -> Option<&'a mut SchedClassifier> {
    e.program_mut(name).and_then(|p| p.try_into().ok())
}

fn xdp_prog<'a>(e: &'a mut Ebpf, name: &str) -> Option<&'a mut Xdp> {
    e.program_mut(name).and_then(|p| p.try_into().ok())
}

fn gone() -> ProgramError {
    ProgramError::NotLoaded
}

/// Hands a link to the program `name` of `e` (one BPF_LINK_UPDATE).
fn adopt(e: &mut Ebpf, name: &str, link: OwnedLink) -> Result<PLink, ProgramError> {
    match link {
        OwnedLink::Tc(l) => tc_prog(e, name)
            .ok_or_else(gone)?
            .attach_to_link(l)
            .map(PLink::Tc),
        OwnedLink::Xdp(l) => xdp_prog(e, name)
            .ok_or_else(gone)?
            .attach_to_link(l)
            .map(PLink::Xdp),
    }
}

/// What the API shows of a probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    /// Name.
    pub name: String,
    /// `tc`.
    pub hook: String,
    /// Tap globs of the spec.
    pub taps: Vec<String>,
    /// `ingress`, `egress`, `both`.
    pub direction: String,
    /// Interfaces (and directions) it is attached to now.
    pub attached: Vec<String>,
    /// Attach errors by interface.
    pub errors: BTreeMap<String, String>,
    /// The program's name in the object.
    pub program: String,
    /// Its kernel program id.
    pub program_id: Option<u32>,
    /// Instructions of the loaded program (as the kernel reports).
    pub instructions: u64,
    /// Size of the object.
    pub object_bytes: usize,
    /// Exported metrics: name, map, type.
    pub metrics: Vec<Value>,
    /// Compile + load + attach time of the running version, ms.
    pub load_ms: f64,
    /// When it was loaded (Unix ms).
    pub loaded_unix_ms: u64,
}

/// The exported samples of one metric of one probe, for Prometheus: one
/// row per map entry (per CPU with `aggregate: none`), all with the same
/// label names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricSamples {
    /// Metric name (without prefix).
    pub metric: String,
    /// Help.
    pub help: String,
    /// Type.
    pub kind: MetricKind,
    /// Label names: static labels, then key fields, then `cpu` for per-CPU
    /// `none`.
    pub label_names: Vec<String>,
    /// Label values (in the order of `label_names`) and the value of each
    /// sample (counters, gauges); histograms have one row of their static
    /// label values.
    pub rows: Vec<(Vec<String>, f64)>,
    /// Histograms: the buckets (upper bound, count — not cumulative; the
    /// last bound is `f64::MAX` for +Inf), the sum and the count.
    pub hist: Option<HistSample>,
}

impl MetricSamples {
    /// The value of every row whose labels include all of `want`.
    pub fn values_where<'a>(
        &'a self,
        want: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = f64> + 'a {
        let idx: Option<Vec<(usize, &String)>> = want
            .iter()
            .map(|(k, v)| self.label_names.iter().position(|n| n == k).map(|i| (i, v)))
            .collect();
        self.rows.iter().filter_map(move |(values, x)| {
            let idx = idx.as_ref()?;
            idx.iter()
                .all(|(i, v)| values.get(*i) == Some(*v))
                .then_some(*x)
        })
    }
}

/// One histogram sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistSample {
    /// (upper bound, count in this bucket), ascending; `f64::MAX` = +Inf.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observed values.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

/// Every running probe.
#[derive(Default)]
pub struct ProbeManager {
    probes: BTreeMap<String, Probe>,
    /// Where vtap's `vtap_parse_pub` is pinned (probes share it).
    parse_pub_pin: Option<std::path::PathBuf>,
    /// The final metrics of the last replaced version.
    last_replaced: Option<(String, Vec<Value>)>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ProbeManagerError {
    ProbeManagerError::Invalid(vec![FieldError::new(field, message)])
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Resolves the metrics of `s` against the object's BTF: every map exists,
/// every key field exists and suits its format, every value field exists.
fn resolve_metrics(s: &ProbeSpec, btf: &Btf) -> Result<Vec<Metric>, ProbeManagerError> {
    let mut errs = Vec::new();
    let mut out = Vec::new();
    for (i, m) in s.metrics.iter().enumerate() {
        let layout = match MapLayout::new(btf, &m.map) {
            Ok(l) => l,
            Err(e) => {
                errs.push(FieldError::new(
                    format!("metrics[{i}].map"),
                    format!("{}: {e}", m.map),
                ));
                continue;
            }
        };
        let mut key_fields = Vec::new();
        for (k, kl) in m.key_labels.iter().enumerate() {
            match layout
                .key
                .field(&kl.field)
                .and_then(|f| f.check(kl.format).map(|()| f))
            {
                Ok(f) => key_fields.push((f, kl.format, kl.label.clone())),
                Err(e) => errs.push(FieldError::new(
                    format!("metrics[{i}].key_labels[{k}].field"),
                    e.to_string(),
                )),
            }
        }
        if m.kind == MetricKind::Histogram {
            if layout.key.size() > 8 {
                errs.push(FieldError::new(
                    format!("metrics[{i}].map"),
                    format!(
                        "{}: a histogram's map is indexed by bucket: its key must be an integer, not {} bytes",
                        m.map,
                        layout.key.size()
                    ),
                ));
            }
            if !m.sum_field.is_empty()
                && let Err(e) = layout.value.field(&m.sum_field)
            {
                errs.push(FieldError::new(
                    format!("metrics[{i}].sum_field"),
                    e.to_string(),
                ));
            }
        }
        let value_field = layout.value.field(&m.value_field);
        if let (false, Err(e)) = (m.value_field.is_empty(), &value_field) {
            errs.push(FieldError::new(
                format!("metrics[{i}].value_field"),
                e.to_string(),
            ));
        }
        let value_field = value_field.ok();
        out.push(Metric {
            spec: m.clone(),
            layout,
            key_fields,
            value_field,
            acc: Default::default(),
        });
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(ProbeManagerError::Invalid(errs))
    }
}

fn dirs(d: Direction) -> Vec<Dir> {
    match d {
        Direction::Ingress => vec![Dir::Ingress],
        Direction::Egress => vec![Dir::Egress],
        Direction::Both => vec![Dir::Ingress, Dir::Egress],
    }
}

impl ProbeManager {
    /// No probes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Probes loaded from now on share the parse results of vtap's
    /// programs through the map pinned at `path` (see `vtap_probe.h`).
    pub fn set_parse_pub_pin(&mut self, path: std::path::PathBuf) {
        self.parse_pub_pin = Some(path);
    }

    /// Names of the running probes.
    pub fn names(&self) -> Vec<String> {
        self.probes.keys().cloned().collect()
    }

    /// Validates, compiles (or decodes) and loads `spec`, attaches it on
    /// the matching interfaces of `links`, and only then replaces the probe
    /// of the same name (which is detached and freed). Returns whether a
    /// probe was replaced.
    pub fn inject(&mut self, spec: ProbeSpec, links: &Links) -> Result<bool, ProbeManagerError> {
        let errs = spec::validate(&spec, false);
        if !errs.is_empty() {
            return Err(ProbeManagerError::Invalid(errs));
        }
        let started = Instant::now();
        let obj = match (&spec.source, &spec.object) {
            (Some(src), None) => compile::compile_c(src)?,
            (None, Some(b64)) => {
                use base64::Engine as _;
                let obj = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| invalid("object", format!("not base64: {e}")))?;
                compile::check_object(&obj)?;
                obj
            }
            _ => unreachable!("validated: exactly one of source and object"),
        };
        let btf = Btf::from_elf(&obj).map_err(|e| invalid("object", format!("BTF: {e}")))?;
        let metrics = resolve_metrics(&spec, &btf)?;

        let mut loader = EbpfLoader::new();
        if let Some(pin) = &self.parse_pub_pin
            && btf.map("vtap_parse_pub").is_ok()
        {
            loader.map_pin_path("vtap_parse_pub", pin.as_path());
        }
        let mut ebpf = loader
            .load(&obj)
            .map_err(|e| invalid("object", format!("loading the object: {e}")))?;
        let hook = spec.attach.hook;
        let tc: Vec<String> = ebpf
            .programs()
            .filter(|(_, p)| match hook {
                Hook::Tc => matches!(p, aya::programs::Program::SchedClassifier(_)),
                Hook::Xdp => matches!(p, aya::programs::Program::Xdp(_)),
            })
            .map(|(n, _)| n.to_string())
            .collect();
        let kind = match hook {
            Hook::Tc => "TC program (SEC(\"classifier\"))",
            Hook::Xdp => "XDP program (SEC(\"xdp\"))",
        };
        let program = match tc.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(invalid(
                    "source",
                    format!("the object has no {kind} for hook {hook:?}"),
                ));
            }
            many => {
                return Err(invalid(
                    "source",
                    format!(
                        "the object has {} of them ({}); a probe has one {kind}",
                        many.len(),
                        many.join(", ")
                    ),
                ));
            }
        };
        load_program(&mut ebpf, &program, hook)?;
        let insns = program_info(&ebpf, &program)
            .and_then(|i| i.size_translated().map(|s| s as u64 / 8))
            .unwrap_or(0);
        let spare = if spec.metrics.first().is_some_and(|m| m.snapshot) {
            let mut loader = EbpfLoader::new();
            if let Some(pin) = &self.parse_pub_pin
                && btf.map("vtap_parse_pub").is_ok()
            {
                loader.map_pin_path("vtap_parse_pub", pin.as_path());
            }
            let mut e = loader
                .load(&obj)
                .map_err(|e| invalid("object", format!("loading the object: {e}")))?;
            load_program(&mut e, &program, hook)?;
            Some(e)
        } else {
            None
        };
        let mut probe = Probe {
            spec,
            ebpf,
            spare,
            program,
            metrics,
            links: BTreeMap::new(),
            errors: BTreeMap::new(),
            loaded_at: SystemTime::now(),
            load_ms: 0.0,
            insns,
            object_bytes: obj.len(),
        };
        let name = probe.spec.name.clone();
        // Replacement: where the old version is attached and the new one
        // should be too, the new program takes over the old one's TCX link
        // with one BPF_LINK_UPDATE — same place in the chain, and every
        // packet is seen by exactly one of the two versions.
        let mut swapped = 0;
        if let Some(old) = self.probes.get_mut(&name) {
            let keys: Vec<(String, Dir)> = old.links.keys().cloned().collect();
            for key in keys {
                let Some(id) = old.links.remove(&key) else {
                    continue;
                };
                let link = match old.take_one(id) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(probe = %name, error = %e, "taking the old link");
                        continue;
                    }
                };
                let prog_name = probe.program.clone();
                match adopt(&mut probe.ebpf, &prog_name, link) {
                    Ok(nid) => {
                        probe.links.insert(key, nid);
                        swapped += 1;
                    }
                    Err(e) => {
                        // The link went with the error; the new version is
                        // attached afresh by reconcile below.
                        tracing::warn!(probe = %name, error = %e, "atomic replacement failed");
                    }
                }
            }
        }
        probe.reconcile(links);
        probe.load_ms = started.elapsed().as_secs_f64() * 1e3;
        let replaced = self.probes.insert(name.clone(), probe);
        if let Some(mut old) = replaced {
            old.detach_all();
            // Packets the old version was handling when its links moved
            // finish within an RCU grace period; then its maps hold its
            // final counts.
            grace_period();
            self.last_replaced = Some((name.clone(), old.final_json()));
            tracing::info!(probe = %name, swapped, "probe replaced");
            Ok(true)
        } else {
            self.last_replaced = None;
            tracing::info!(probe = %name, "probe injected");
            Ok(false)
        }
    }

    /// The final metrics of the version the last [`ProbeManager::inject`]
    /// replaced (read after the switch), as `read_json` gives them.
    pub fn take_replaced_final(&mut self, name: &str) -> Option<Vec<Value>> {
        match self.last_replaced.take() {
            Some((n, v)) if n == name => Some(v),
            other => {
                self.last_replaced = other;
                None
            }
        }
    }

    /// Detaches and frees a probe.
    pub fn remove(&mut self, name: &str) -> Result<(), ProbeManagerError> {
        let mut p = self
            .probes
            .remove(name)
            .ok_or_else(|| ProbeManagerError::NotFound(name.to_string()))?;
        p.detach_all();
        tracing::info!(probe = %name, "probe removed");
        Ok(())
    }

    /// Attaches running probes to matching interfaces that appeared, and
    /// forgets links of interfaces that went away.
    pub fn refresh(&mut self, links: &Links) {
        for p in self.probes.values_mut() {
            p.reconcile(links);
        }
    }

    /// Status of one probe.
    pub fn status(&self, name: &str) -> Option<ProbeStatus> {
        self.probes.get(name).map(|p| p.status())
    }

    /// Status of every probe.
    pub fn statuses(&self) -> Vec<ProbeStatus> {
        self.probes.values().map(|p| p.status()).collect()
    }

    /// `[{"name", "value", "timestamp"}]` for the metrics of a probe (all,
    /// or the one named `only`): `value` follows the map's structure — one
    /// `{"key", "value"}` per entry, per-CPU values aggregated as the spec
    /// says.
    pub fn read_json(
        &mut self,
        name: &str,
        only: Option<&str>,
    ) -> Result<Vec<Value>, ProbeManagerError> {
        let p = self
            .probes
            .get_mut(name)
            .ok_or_else(|| ProbeManagerError::NotFound(name.to_string()))?;
        p.snapshot()?;
        let p = &*p;
        let mut out = Vec::new();
        for m in &p.metrics {
            if only.is_some_and(|o| o != m.spec.name) {
                continue;
            }
            let value = if m.spec.reset_on_read || m.spec.snapshot {
                if !m.spec.snapshot {
                    p.drain(m)?;
                }
                let mut acc = m.acc.lock().unwrap();
                let table = if m.spec.reset_on_read {
                    std::mem::take(&mut acc.window)
                } else {
                    acc.total.clone()
                };
                table
                    .into_values()
                    .map(|(k, v)| json!({"key": k, "value": v}))
                    .collect()
            } else {
                let entries = p.read_map(m)?;
                m.layout
                    .decode(&entries, m.spec.aggregate.aggregation())
                    .map_err(|e| ProbeManagerError::Kernel(e.to_string()))?
            };
            out.push(json!({
                "name": m.spec.name,
                "value": value,
                "timestamp": now_unix_ms(),
            }));
        }
        if let Some(o) = only
            && out.is_empty()
        {
            return Err(ProbeManagerError::NotFound(format!("{name}/{o}")));
        }
        Ok(out)
    }

    /// What [`ProbeManager::read_json`] returns, as JSON text written
    /// straight from the map's bytes (no intermediate values: ~2× faster on
    /// large maps, see BENCHMARKS.md §6).
    pub fn read_json_text(
        &mut self,
        name: &str,
        only: Option<&str>,
    ) -> Result<String, ProbeManagerError> {
        let p = self
            .probes
            .get_mut(name)
            .ok_or_else(|| ProbeManagerError::NotFound(name.to_string()))?;
        p.snapshot()?;
        let p = &*p;
        let mut out = String::from("[");
        let mut n = 0;
        for m in &p.metrics {
            if only.is_some_and(|o| o != m.spec.name) {
                continue;
            }
            if n > 0 {
                out.push(',');
            }
            n += 1;
            out.push_str("{\"name\":");
            out.push_str(&serde_json::to_string(&m.spec.name).unwrap_or_default());
            out.push_str(",\"value\":");
            if m.spec.reset_on_read || m.spec.snapshot {
                if !m.spec.snapshot {
                    p.drain(m)?;
                }
                let mut acc = m.acc.lock().unwrap();
                let table = if m.spec.reset_on_read {
                    std::mem::take(&mut acc.window)
                } else {
                    acc.total.clone()
                };
                let v: Vec<Value> = table
                    .into_values()
                    .map(|(k, v)| json!({"key": k, "value": v}))
                    .collect();
                out.push_str(&serde_json::to_string(&v).unwrap_or_default());
            } else {
                let entries = p.read_map(m)?;
                m.layout
                    .write_json(&entries, m.spec.aggregate.aggregation(), &mut out)
                    .map_err(|e| ProbeManagerError::Kernel(e.to_string()))?;
            }
            out.push_str(&format!(",\"timestamp\":{}}}", now_unix_ms()));
        }
        out.push(']');
        if let Some(o) = only
            && n == 0
        {
            return Err(ProbeManagerError::NotFound(format!("{name}/{o}")));
        }
        Ok(out)
    }

    /// The kernel id of the map `map` of the running version of probe
    /// `name` (open it with `aya::maps::MapData::from_id`, e.g. to fill it
    /// in a test or a benchmark).
    pub fn map_id(&self, name: &str, map: &str) -> Option<u32> {
        let m = self.probes.get(name)?.ebpf.map(map)?;
        Some(map_data(m)?.info().ok()?.id())
    }

    /// Every probe's samples for `/metrics`, by probe name.
    pub fn samples(&mut self) -> BTreeMap<String, Vec<MetricSamples>> {
        self.samples_where(|_| true)
    }

    /// The samples of the named probes (those that exist).
    pub fn samples_of(&mut self, names: &[String]) -> BTreeMap<String, Vec<MetricSamples>> {
        self.samples_where(|n| names.iter().any(|x| x == n))
    }

    fn samples_where(
        &mut self,
        want: impl Fn(&str) -> bool,
    ) -> BTreeMap<String, Vec<MetricSamples>> {
        let mut out = BTreeMap::new();
        for (name, p) in self.probes.iter_mut().filter(|(n, _)| want(n)) {
            if let Err(e) = p.snapshot() {
                tracing::warn!(probe = %name, error = %e, "snapshot");
            }
            match p.samples() {
                Ok(s) => {
                    out.insert(name.clone(), s);
                }
                Err(e) => tracing::warn!(probe = %name, error = %e, "reading probe maps"),
            }
        }
        out
    }
}

impl Probe {
    /// Attaches the program to one interface and direction.
    fn attach_one(&mut self, iface: &str, dir: Dir) -> Result<PLink, ProgramError> {
        match self.spec.attach.hook {
            Hook::Tc => {
                let at = match dir {
                    Dir::Ingress => TcAttachType::Ingress,
                    Dir::Egress => TcAttachType::Egress,
                };
                tc_prog(&mut self.ebpf, &self.program)
                    .ok_or_else(gone)?
                    .attach(iface, at)
                    .map(PLink::Tc)
            }
            // Native when the driver has it (veth, tap), else generic. One
            // XDP program per interface: a busy interface is an error.
            Hook::Xdp => xdp_prog(&mut self.ebpf, &self.program)
                .ok_or_else(gone)?
                .attach(iface, XdpMode::Default)
                .map(PLink::Xdp),
        }
    }

    fn detach_one(&mut self, l: PLink) {
        let r = match l {
            PLink::Tc(id) => tc_prog(&mut self.ebpf, &self.program).map(|p| p.detach(id)),
            PLink::Xdp(id) => xdp_prog(&mut self.ebpf, &self.program).map(|p| p.detach(id)),
        };
        if let Some(Err(e)) = r {
            tracing::debug!(probe = %self.spec.name, error = %e, "detach");
        }
    }

    fn take_one(&mut self, l: PLink) -> Result<OwnedLink, ProgramError> {
        match l {
            PLink::Tc(id) => tc_prog(&mut self.ebpf, &self.program)
                .ok_or_else(gone)?
                .take_link(id)
                .map(OwnedLink::Tc),
            PLink::Xdp(id) => xdp_prog(&mut self.ebpf, &self.program)
                .ok_or_else(gone)?
                .take_link(id)
                .map(OwnedLink::Xdp),
        }
    }

    /// Attached where the spec selects, detached where not any more.
    fn reconcile(&mut self, links: &Links) {
        let patterns: Vec<glob::Pattern> = self
            .spec
            .attach
            .taps
            .iter()
            .filter_map(|t| glob::Pattern::new(t).ok())
            .collect();
        let want: BTreeSet<(String, Dir)> = links
            .keys()
            .filter(|n| patterns.iter().any(|p| p.matches(n)))
            .flat_map(|n| {
                dirs(self.spec.attach.direction)
                    .into_iter()
                    .map(move |d| (n.clone(), d))
            })
            .collect();
        let gone: Vec<(String, Dir)> = self
            .links
            .keys()
            .filter(|k| !want.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(l) = self.links.remove(&k) {
                self.detach_one(l);
            }
        }
        for (iface, dir) in want {
            if self.links.contains_key(&(iface.clone(), dir)) {
                continue;
            }
            match self.attach_one(&iface, dir) {
                Ok(l) => {
                    self.links.insert((iface.clone(), dir), l);
                    self.errors.remove(&iface);
                    tracing::info!(probe = %self.spec.name, iface = %iface, dir = dir.as_str(), "probe attached");
                }
                Err(e) => {
                    self.errors.insert(iface.clone(), e.to_string());
                }
            }
        }
    }

    /// Every metric's value now (non-resetting reads), for a version that
    /// no longer runs.
    fn final_json(&mut self) -> Vec<Value> {
        // A snapshot probe's two copies both hold counts: empty both.
        if self.spare.is_some() {
            let _ = self.drain_copy(true);
            let _ = self.drain_copy(false);
        }
        let mut out = Vec::new();
        for m in &self.metrics {
            let value = if m.spec.reset_on_read || m.spec.snapshot {
                if !m.spec.snapshot && self.drain(m).is_err() {
                    continue;
                }
                let acc = m.acc.lock().unwrap();
                let table = if m.spec.reset_on_read {
                    &acc.window
                } else {
                    &acc.total
                };
                table
                    .values()
                    .map(|(k, v)| json!({"key": k, "value": v}))
                    .collect()
            } else {
                match self.read_map(m).and_then(|e| {
                    m.layout
                        .decode(&e, m.spec.aggregate.aggregation())
                        .map_err(|e| ProbeManagerError::Kernel(e.to_string()))
                }) {
                    Ok(v) => v,
                    Err(_) => continue,
                }
            };
            out.push(json!({"name": m.spec.name, "value": value, "timestamp": now_unix_ms()}));
        }
        out
    }

    fn detach_all(&mut self) {
        let links = std::mem::take(&mut self.links);
        for (_, l) in links {
            self.detach_one(l);
        }
    }

    fn read_map(&self, m: &Metric) -> Result<batch::Entries, ProbeManagerError> {
        let map = self
            .ebpf
            .map(&m.spec.map)
            .ok_or_else(|| ProbeManagerError::Kernel(format!("map {} is gone", m.spec.map)))?;
        let fd = map_fd(map).ok_or_else(|| {
            ProbeManagerError::Kernel(format!("map {}: unsupported map kind", m.spec.map))
        })?;
        batch::read(fd, Method::Auto).map_err(|e| ProbeManagerError::Kernel(e.to_string()))
    }

    /// Snapshot probes: the idle copy takes over every link of the active
    /// one (one BPF_LINK_UPDATE per link), and after a grace period the copy
    /// that stopped is emptied into the totals: every map of it as of one
    /// instant, while the probe keeps counting in the other copy.
    fn snapshot(&mut self) -> Result<(), ProbeManagerError> {
        let Some(mut spare) = self.spare.take() else {
            return Ok(());
        };
        let program = self.program.clone();
        let keys: Vec<(String, Dir)> = self.links.keys().cloned().collect();
        let mut moved = BTreeMap::new();
        for key in keys {
            let id = self.links.remove(&key).expect("listed");
            let link = self
                .take_one(id)
                .map_err(|e| ProbeManagerError::Kernel(e.to_string()))?;
            let nid = adopt(&mut spare, &program, link)
                .map_err(|e| ProbeManagerError::Kernel(format!("snapshot switch: {e}")))?;
            moved.insert(key, nid);
        }
        let stopped = std::mem::replace(&mut self.ebpf, spare);
        self.spare = Some(stopped);
        self.links = moved;
        // Packets the stopped copy was handling finish within an RCU grace
        // period.
        grace_period();
        self.drain_copy(true)
    }

    /// Empties every exported map of one copy (the spare one, or the
    /// active) into the metrics' accumulators.
    fn drain_copy(&self, spare: bool) -> Result<(), ProbeManagerError> {
        let src = if spare {
            self.spare.as_ref().unwrap_or(&self.ebpf)
        } else {
            &self.ebpf
        };
        let maps: BTreeSet<&str> = self.metrics.iter().map(|m| m.spec.map.as_str()).collect();
        for map in maps {
            let m = self
                .metrics
                .iter()
                .find(|m| m.spec.map == map)
                .expect("listed");
            self.drain_from(src, m)?;
        }
        Ok(())
    }

    /// Empties a reset-on-read map into the accumulators of every metric
    /// that exports it (they all see every count once).
    fn drain(&self, m: &Metric) -> Result<(), ProbeManagerError> {
        self.drain_from(&self.ebpf, m)
    }

    fn drain_from(&self, src: &Ebpf, m: &Metric) -> Result<(), ProbeManagerError> {
        let map = src
            .map(&m.spec.map)
            .ok_or_else(|| ProbeManagerError::Kernel(format!("map {} is gone", m.spec.map)))?;
        let fd = map_fd(map).ok_or_else(|| {
            ProbeManagerError::Kernel(format!("map {}: unsupported map kind", m.spec.map))
        })?;
        let entries = batch::read_and_delete(fd, Method::Auto)
            .map_err(|e| ProbeManagerError::Kernel(e.to_string()))?;
        for m in self.metrics.iter().filter(|x| x.spec.map == m.spec.map) {
            let decoded = m
                .layout
                .decode(&entries, m.spec.aggregate.aggregation())
                .map_err(|e| ProbeManagerError::Kernel(e.to_string()))?;
            let mut guard = m.acc.lock().unwrap();
            let acc = &mut *guard;
            for ((k, _), d) in entries.iter().zip(decoded) {
                let key = d.get("key").cloned().unwrap_or(Value::Null);
                let value = d.get("value").cloned().unwrap_or(Value::Null);
                for table in [&mut acc.total, &mut acc.window] {
                    match table.get_mut(k) {
                        Some((_, v)) => add_values(v, &value),
                        None => {
                            table.insert(k.to_vec(), (key.clone(), value.clone()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A histogram metric: one sample from its bucket-indexed map.
    fn histogram(&self, m: &Metric) -> Result<MetricSamples, ProbeManagerError> {
        let n = m.spec.buckets.len();
        let mut counts = vec![0u64; n + 1];
        let mut sum = 0.0;
        let mut add = |key: &Value, value: &Value| {
            let Some(i) = key.as_u64() else {
                return;
            };
            let i = (i as usize).min(n);
            counts[i] += pick(value, &m.spec.value_field).unwrap_or(0.0) as u64;
            if !m.spec.sum_field.is_empty() {
                sum += pick(value, &m.spec.sum_field).unwrap_or(0.0);
            }
        };
        let (rows, _) = self.current(m)?;
        for (_, key, value) in &rows {
            add(key, value);
        }
        let buckets: Vec<(f64, u64)> = m
            .spec
            .buckets
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(counts.iter().copied())
            .collect();
        Ok(MetricSamples {
            metric: m.spec.name.clone(),
            help: m.spec.help.clone(),
            kind: MetricKind::Histogram,
            label_names: m.spec.labels.keys().cloned().collect(),
            rows: vec![(m.spec.labels.values().cloned().collect(), 0.0)],
            hist: Some(HistSample {
                count: counts.iter().sum(),
                buckets,
                sum,
            }),
        })
    }

    /// A metric's entries now, as (raw key, decoded key, decoded value):
    /// the running totals for accumulating metrics (`reset_on_read`,
    /// `snapshot`), else the map as it is, per-CPU values aggregated as the
    /// spec says. The flag: values are arrays with one slot per CPU
    /// (`aggregate: none` on a per-CPU map).
    fn current(&self, m: &Metric) -> Result<(Vec<Row>, bool), ProbeManagerError> {
        let split = m.spec.aggregate.aggregation().is_none();
        if m.spec.reset_on_read || m.spec.snapshot {
            if !m.spec.snapshot {
                self.drain(m)?;
            }
            let acc = m.acc.lock().unwrap();
            let rows = acc
                .total
                .iter()
                .map(|(k, (key, value))| (k.clone(), key.clone(), value.clone()))
                .collect();
            return Ok((rows, split));
        }
        let entries = self.read_map(m)?;
        let decoded = m
            .layout
            .decode(&entries, m.spec.aggregate.aggregation())
            .map_err(|e| ProbeManagerError::Kernel(e.to_string()))?;
        let rows = entries
            .iter()
            .zip(decoded)
            .map(|((k, _), mut d)| (k.to_vec(), d["key"].take(), d["value"].take()))
            .collect();
        Ok((rows, split && entries.map_type().is_per_cpu()))
    }

    fn samples(&self) -> Result<Vec<MetricSamples>, ProbeManagerError> {
        let mut out = Vec::new();
        for m in &self.metrics {
            if m.spec.kind == MetricKind::Histogram {
                out.push(self.histogram(m)?);
                continue;
            }
            let mut ms = MetricSamples {
                metric: m.spec.name.clone(),
                help: m.spec.help.clone(),
                kind: m.spec.kind,
                label_names: m.spec.labels.keys().cloned().collect(),
                rows: Vec::new(),
                hist: None,
            };
            ms.label_names
                .extend(m.key_fields.iter().map(|(_, _, l)| l.clone()));
            let labels = |k: &[u8], cpu: Option<usize>| -> Result<Vec<String>, ProbeManagerError> {
                let mut v: Vec<String> = Vec::with_capacity(ms_width(m) + 1);
                v.extend(m.spec.labels.values().cloned());
                for (f, fmt, _) in &m.key_fields {
                    v.push(
                        f.format(k, *fmt)
                            .map_err(|e| ProbeManagerError::Kernel(e.to_string()))?,
                    );
                }
                if let Some(c) = cpu {
                    v.push(c.to_string());
                }
                Ok(v)
            };
            let split = m.spec.aggregate.aggregation().is_none();
            let accumulating = m.spec.reset_on_read || m.spec.snapshot;
            match (&m.value_field, accumulating) {
                // The map as it is, the value field read straight from the
                // bytes (no decoded JSON value per entry).
                (Some(field), false) => {
                    let entries = self.read_map(m)?;
                    let per_cpu = entries.map_type().is_per_cpu();
                    if per_cpu && split {
                        ms.label_names.push("cpu".into());
                    }
                    let stride = m.layout.value.per_cpu_stride();
                    let number = |b: &[u8]| -> Option<f64> { field.decode(b).ok()?.as_f64() };
                    for (k, v) in entries.iter() {
                        if !per_cpu {
                            if let Some(x) = number(v) {
                                ms.rows.push((labels(k, None)?, x));
                            }
                            continue;
                        }
                        let slots = v.chunks_exact(stride.max(1)).map(number);
                        match m.spec.aggregate.aggregation() {
                            None => {
                                for (c, x) in slots.enumerate() {
                                    if let Some(x) = x {
                                        ms.rows.push((labels(k, Some(c))?, x));
                                    }
                                }
                            }
                            Some(how) => {
                                let xs: Option<Vec<f64>> = slots.collect();
                                if let Some(x) = xs.and_then(|xs| aggregate(&xs, how)) {
                                    ms.rows.push((labels(k, None)?, x));
                                }
                            }
                        }
                    }
                }
                _ => {
                    let (rows, per_cpu) = self.current(m)?;
                    if per_cpu {
                        ms.label_names.push("cpu".into());
                    }
                    for (k, _, value) in &rows {
                        match value {
                            Value::Array(a) if per_cpu => {
                                for (c, v) in a.iter().enumerate() {
                                    if let Some(x) = pick(v, &m.spec.value_field) {
                                        ms.rows.push((labels(k, Some(c))?, x));
                                    }
                                }
                            }
                            v => {
                                if let Some(x) = pick(v, &m.spec.value_field) {
                                    ms.rows.push((labels(k, None)?, x));
                                }
                            }
                        }
                    }
                }
            }
            out.push(ms);
        }
        Ok(out)
    }

    fn status(&self) -> ProbeStatus {
        ProbeStatus {
            name: self.spec.name.clone(),
            hook: match self.spec.attach.hook {
                Hook::Tc => "tc",
                Hook::Xdp => "xdp",
            }
            .into(),
            taps: self.spec.attach.taps.clone(),
            direction: match self.spec.attach.direction {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
                Direction::Both => "both",
            }
            .into(),
            attached: self
                .links
                .keys()
                .map(|(i, d)| format!("{i}:{}", d.as_str()))
                .collect(),
            errors: self.errors.clone(),
            program: self.program.clone(),
            program_id: program_info(&self.ebpf, &self.program).map(|i| i.id()),
            instructions: self.insns,
            object_bytes: self.object_bytes,
            metrics: self
                .metrics
                .iter()
                .map(|m| json!({"name": m.spec.name, "map": m.spec.map, "type": m.spec.kind}))
                .collect(),
            load_ms: self.load_ms,
            loaded_unix_ms: self
                .loaded_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        }
    }
}

/// Loads (verifies) the probe's program of the hook's type.
fn load_program(e: &mut Ebpf, name: &str, hook: Hook) -> Result<(), ProbeManagerError> {
    let r = match hook {
        Hook::Tc => tc_prog(e, name).ok_or_else(gone).and_then(|p| p.load()),
        Hook::Xdp => xdp_prog(e, name).ok_or_else(gone).and_then(|p| p.load()),
    };
    r.map_err(|e| ProbeManagerError::Verifier(verifier_text(&e)))
}

/// The kernel's information on a loaded program.
fn program_info(e: &Ebpf, name: &str) -> Option<aya::programs::ProgramInfo> {
    match e.program(name)? {
        aya::programs::Program::SchedClassifier(p) => p.info().ok(),
        aya::programs::Program::Xdp(p) => p.info().ok(),
        _ => None,
    }
}

/// Returns after an RCU grace period: every BPF program run that had
/// started has finished (see `datapath::sys::RcuBarrier`).
fn grace_period() {
    static BARRIER: std::sync::OnceLock<Option<crate::datapath::sys::RcuBarrier>> =
        std::sync::OnceLock::new();
    let b = BARRIER.get_or_init(|| crate::datapath::sys::RcuBarrier::standalone().ok());
    if b.as_ref().and_then(|b| b.wait().ok()).is_none() {
        // No barrier map (should not happen as root): a generous pause.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The number at `path` (dot-separated) of a decoded value; the value
/// itself for an empty path.
/// The number of labels of a metric's samples (static and key fields).
fn ms_width(m: &Metric) -> usize {
    m.spec.labels.len() + m.key_fields.len()
}

/// Per-CPU numbers combined as a spec's `aggregate` says.
fn aggregate(xs: &[f64], how: Aggregation) -> Option<f64> {
    let first = *xs.first()?;
    Some(match how {
        Aggregation::Sum => xs.iter().sum(),
        Aggregation::Avg => xs.iter().sum::<f64>() / xs.len() as f64,
        Aggregation::Min => xs.iter().copied().fold(first, f64::min),
        Aggregation::Max => xs.iter().copied().fold(first, f64::max),
    })
}

fn pick(v: &Value, path: &str) -> Option<f64> {
    let mut cur = v;
    if !path.is_empty() {
        for part in path.split('.') {
            cur = cur.get(part)?;
        }
    }
    cur.as_f64()
}

fn map_data(m: &aya::maps::Map) -> Option<&aya::maps::MapData> {
    use aya::maps::Map;
    match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::Queue(d)
        | Map::Stack(d)
        | Map::LpmTrie(d) => Some(d),
        _ => None,
    }
}

fn map_fd(m: &aya::maps::Map) -> Option<std::os::fd::BorrowedFd<'_>> {
    Some(map_data(m)?.fd().as_fd())
}

/// The verifier's message and log of a failed program load.
fn verifier_text(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let log: Vec<&str> = log.lines().collect();
            // The end of the log says why; keep it bounded.
            let tail = log[log.len().saturating_sub(40)..].join("\n");
            format!("{io_error}\n{tail}")
        }
        other => other.to_string(),
    }
}
