//! The engine: the one owner of kernel state.
//!
//! It holds the loaded [`Datapath`], the accepted policy set and the slot
//! assignment, and turns "this policy set, these interfaces" into attached
//! programs and an active table generation:
//!
//! 1. validate the whole set (nothing changes on error);
//! 2. assign policy slots and output ids, keeping the ones of policies and
//!    outputs that stay, and never reusing in this change a slot that the
//!    running generation still uses (its counters are zeroed before use);
//! 3. compile (pure) and resolve against the live interfaces;
//! 4. attach TCX programs to newly matching taps;
//! 5. write the inactive generation and flip ([`reconcile`]);
//! 6. detach from interfaces no policy selects any more.
//!
//! [`Engine::refresh`] repeats 3–6 when interfaces appear, disappear or
//! change index, so a policy naming an absent interface starts working when
//! the interface shows up.

use std::collections::{BTreeMap, BTreeSet};

use vtap_abi::{
    Bitmap, CaptureStats, CopyStats, Dir, GEN_ANY_BIDIR, GenConfig, LENS_LPM, MAX_LENS,
    MAX_OUTPUTS, MAX_POLICIES, NO_OUTPUT, Output, OutputStats, PolicyAction, PolicyDrops,
    PolicyStats, TapSel, cidr_table, output_kind,
};

use crate::capture::sink::Captures;
use crate::datapath::reconcile::{Image, Reconciler};
use crate::datapath::{Datapath, DatapathError, LoadOptions, stats};
use crate::netlink::Links;
use crate::policy::compile::{Assignment, CompiledSet, OutputKey, compile};
use crate::policy::model::Policy;
use crate::policy::shaping;
use crate::policy::validate::{FieldError, validate_set};

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The policy set is invalid; nothing was changed.
    #[error("invalid policy set ({} problems)", .0.len())]
    Invalid(Vec<FieldError>),
    /// The kernel refused something; the running set stays active.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// Compilation failed (an internal error: validated sets compile).
    #[error("compiling the policy set: {0}")]
    Compile(String),
    /// A capture the set names could not be set up; nothing was changed.
    #[error("capture: {0}")]
    Capture(String),
}

/// The state of one interface that policies select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapState {
    /// Interface index (0 when the interface does not exist).
    pub ifindex: u32,
    /// Index of the tap's counters in the datapath.
    pub slot: u32,
    /// Directions some policy wants on it.
    pub wanted: BTreeSet<Dir>,
    /// Directions attached now.
    pub attached: BTreeSet<Dir>,
    /// Last attach error, if any.
    pub error: Option<String>,
    /// Ingress attached with XDP instead of TCX (counting and captures only;
    /// no egress).
    pub xdp: bool,
}

/// Counters of one tap + direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapCounters {
    /// Interface name.
    pub tap: String,
    /// Direction.
    pub dir: Dir,
    /// Summed counters.
    pub stats: vtap_abi::TapStats,
}

/// Counters of one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyCounters {
    /// Policy name.
    pub policy: String,
    /// Matched packets/bytes by direction (ingress, egress).
    pub matched: [PolicyStats; 2],
    /// Per output label: mirrored / failed copies.
    pub outputs: Vec<(String, OutputStats)>,
    /// Undelivered copies by reason.
    pub drops: PolicyDrops,
}

/// Counters of one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputCounters {
    /// `IFACE` or `IFACE.VLAN`.
    pub output: String,
    /// Copies sent / failed.
    pub stats: CopyStats,
}

/// A consistent read of all counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Per tap + direction.
    pub taps: Vec<TapCounters>,
    /// Per policy.
    pub policies: Vec<PolicyCounters>,
    /// Per output.
    pub outputs: Vec<OutputCounters>,
}

/// The label of an output in metrics and logs.
pub fn output_label(k: &OutputKey) -> String {
    k.to_string()
}

/// See the module docs.
pub struct Engine {
    dp: Datapath,
    rec: Reconciler,
    policies: Vec<Policy>,
    assignment: Assignment,
    compiled: Option<CompiledSet>,
    taps: BTreeMap<String, TapState>,
    links: Links,
    /// Interfaces named by policies that were missing at the last check
    /// (logged once when they go missing and once when they come back).
    missing: BTreeSet<String>,
    /// Interfaces attached on request (`PUT /api/v1/taps/{iface}`), with
    /// their directions, whatever the policies select.
    explicit: BTreeMap<String, BTreeSet<Dir>>,
    /// Where pcap records go (None: pcap outputs' records are not read).
    captures: Option<std::sync::Arc<Captures>>,
    /// Interfaces (globs) attached in XDP mode.
    xdp_taps: Vec<glob::Pattern>,
    /// UDP port of the VXLAN device of `vxlan:` outputs.
    tunnel_port: u16,
    /// Whether this engine created that device (and deletes it).
    tunnel_created: bool,
    /// The last error creating it (reported once per change).
    tunnel_error: Option<String>,
    /// Adaptive mirroring: the `when:` conditions of the running set.
    conditions: crate::policy::when::Conditions,
}

impl Engine {
    /// Loads the datapath; nothing is attached until policies are applied.
    pub fn new() -> Result<Self, EngineError> {
        Self::with_options(LoadOptions::default())
    }

    /// [`Engine::new`] with datapath load options.
    pub fn with_options(opts: LoadOptions) -> Result<Self, EngineError> {
        Ok(Engine {
            dp: Datapath::load_with(opts)?,
            rec: Reconciler::new(),
            policies: Vec::new(),
            assignment: Assignment::default(),
            compiled: None,
            taps: BTreeMap::new(),
            links: Links::new(),
            missing: BTreeSet::new(),
            explicit: BTreeMap::new(),
            captures: None,
            xdp_taps: Vec::new(),
            tunnel_port: crate::tunnel::DEFAULT_PORT,
            tunnel_created: false,
            tunnel_error: None,
            conditions: Default::default(),
        })
    }

    /// The datapath (tests and benchmarks run programs through it).
    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    /// The pcap ring buffer, for its one reader (None after the first call).
    pub fn take_pcap_ring(&mut self) -> Option<crate::capture::ringbuf::PcapRing> {
        self.dp.take_pcap_ring()
    }

    /// Output id → capture name, for the captures of the running set.
    pub fn capture_ids(&self) -> BTreeMap<u8, String> {
        capture_ids(&self.assignment)
    }

    /// Interfaces matching one of `patterns` are attached in XDP mode from
    /// the next change on: ingress only, counting and pcap captures (copies
    /// to interfaces are counted as `xdp_mode` drops). Call before the first
    /// [`Engine::apply`].
    pub fn set_xdp_taps(&mut self, patterns: Vec<glob::Pattern>) {
        self.xdp_taps = patterns;
    }

    /// Publishes (or stops publishing) each packet's parse result for probes
    /// (`vtap_parse_pub`, see ARCHITECTURE.md "Probes").
    pub fn set_share_parse(&self, on: bool) -> Result<(), EngineError> {
        Ok(self.dp.set_global_flag(vtap_abi::GLOBAL_SHARE_PARSE, on)?)
    }

    /// Pins `vtap_parse_pub` where probes will find it.
    pub fn pin_parse_pub(&self, path: &std::path::Path) -> Result<(), EngineError> {
        Ok(self.dp.pin_parse_pub(path)?)
    }

    /// Routes pcap records to `captures` from the next [`Engine::apply`] on.
    pub fn set_captures(&mut self, captures: std::sync::Arc<Captures>) {
        self.captures = Some(captures);
    }

    /// Datapath counters of each capture of the running set (by name).
    pub fn capture_stats(&self) -> Result<BTreeMap<String, CaptureStats>, EngineError> {
        let mut out = BTreeMap::new();
        for (id, name) in self.capture_ids() {
            let v: CaptureStats =
                stats::sum_percpu_array(&self.dp, &self.dp.maps.capture_stats, [id as u32])?
                    .remove(0)
                    .1;
            out.insert(name, v);
        }
        Ok(out)
    }

    /// The accepted policy set.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Interfaces selected by policies, with their state.
    pub fn taps(&self) -> &BTreeMap<String, TapState> {
        &self.taps
    }

    /// Slot of each policy.
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// Number of generation flips so far.
    pub fn generation_flips(&self) -> u64 {
        self.rec.flips()
    }

    /// Validates, compiles and activates `policies` atomically. On any error
    /// the running set stays active and nothing is changed.
    pub fn apply(&mut self, policies: Vec<Policy>, links: &Links) -> Result<(), EngineError> {
        let errors = validate_set(&policies);
        if !errors.is_empty() {
            return Err(EngineError::Invalid(errors));
        }
        let (assignment, fresh_slots, fresh_outputs) = allocate(&self.assignment, &policies)?;
        // A policy with a `when:` condition is compiled enabled only while
        // its condition is active (a changed condition starts inactive).
        let effective: Vec<Policy> = policies
            .iter()
            .map(|p| {
                let mut p = p.clone();
                if let Some(w) = &p.when {
                    p.enabled &= self.conditions.would_be_active(&p.name, w);
                }
                p
            })
            .collect();
        let compiled =
            compile(&effective, &assignment).map_err(|e| EngineError::Compile(e.to_string()))?;
        // New slots and ids are not used by the running generation: zero
        // their counters before any packet can reach them.
        for &slot in &fresh_slots {
            self.zero_slot(slot)?;
        }
        for &o in &fresh_outputs {
            self.zero_output(o)?;
        }
        // Captures exist and are routed before the datapath can write a
        // record for them.
        if let Some(caps) = &self.captures {
            let ids = capture_ids(&assignment);
            let slots = assignment
                .policy_slots
                .iter()
                .map(|(n, s)| (*s, n.clone()))
                .collect();
            let mut named: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for p in &policies {
                for o in &p.outputs {
                    if let crate::policy::model::Output::Pcap { pcap } = o {
                        named.entry(pcap.clone()).or_default().push(p.name.clone());
                    }
                }
            }
            caps.sync(&ids, slots, named)
                .map_err(EngineError::Capture)?;
        }
        self.activate(&compiled, links)?;
        self.conditions.sync(
            policies
                .iter()
                .filter_map(|p| p.when.as_ref().map(|w| (p.name.as_str(), w))),
        );
        self.policies = policies;
        self.assignment = assignment;
        self.compiled = Some(compiled);
        Ok(())
    }

    /// The `when:` conditions of the running set.
    pub fn conditions(&self) -> &crate::policy::when::Conditions {
        &self.conditions
    }

    /// Evaluates the `when:` conditions with the probes' samples; when a
    /// policy's activation changes, the set is recompiled and flipped in
    /// atomically. Returns the changes (already logged).
    pub fn evaluate_conditions(
        &mut self,
        now: std::time::Instant,
        samples: &BTreeMap<String, Vec<crate::probes::manager::MetricSamples>>,
    ) -> Result<Vec<crate::policy::when::Change>, EngineError> {
        let changes = self.conditions.evaluate(now, samples);
        if changes.is_empty() {
            return Ok(changes);
        }
        for c in &changes {
            let value = c.value.map(|v| format!("{v:.1}")).unwrap_or_default();
            if c.active {
                tracing::info!(policy = %c.policy, condition = %c.condition, value = %value, "condition holds: policy activated");
            } else {
                tracing::info!(policy = %c.policy, condition = %c.condition, value = %value, "condition no longer holds: policy deactivated");
            }
        }
        let policies = self.policies.clone();
        let links = self.links.clone();
        self.apply(policies, &links)?;
        Ok(changes)
    }

    /// Re-resolves the running set against `links` (interfaces appeared,
    /// disappeared or changed index). Returns whether anything changed.
    pub fn refresh(&mut self, links: &Links) -> Result<bool, EngineError> {
        let Some(compiled) = self.compiled.take() else {
            return Ok(false);
        };
        let flips = self.rec.flips();
        let before = self.taps.clone();
        let r = self.activate(&compiled, links);
        self.compiled = Some(compiled);
        r?;
        Ok(self.rec.flips() != flips || self.taps != before)
    }

    /// Interfaces attached on request, with their directions.
    pub fn explicit_taps(&self) -> &BTreeMap<String, BTreeSet<Dir>> {
        &self.explicit
    }

    /// Replaces the set of interfaces attached on request and re-resolves.
    /// On error the previous set stays.
    pub fn set_explicit_taps(
        &mut self,
        explicit: BTreeMap<String, BTreeSet<Dir>>,
        links: &Links,
    ) -> Result<(), EngineError> {
        let before = std::mem::replace(&mut self.explicit, explicit);
        let compiled = match self.compiled.take() {
            Some(c) => c,
            None => {
                let (a, _, _) = allocate(&self.assignment, &[])?;
                self.assignment = a;
                compile(&[], &self.assignment).map_err(|e| EngineError::Compile(e.to_string()))?
            }
        };
        let r = self.activate(&compiled, links);
        self.compiled = Some(compiled);
        if r.is_err() {
            self.explicit = before;
        }
        r
    }

    /// Detaches from every interface (and deletes vtap's VXLAN device).
    pub fn shutdown(&mut self) {
        self.dp.detach_all();
        self.taps.clear();
        if self.tunnel_created {
            if let Err(e) = crate::tunnel::delete_device() {
                tracing::warn!(error = %e, "deleting the VXLAN device");
            }
            self.tunnel_created = false;
        }
    }

    /// The UDP destination port of `vxlan:` outputs (takes effect when the
    /// VXLAN device is next created).
    pub fn set_tunnel_port(&mut self, port: u16) {
        self.tunnel_port = port;
    }

    /// Why vtap's VXLAN device could not be made, if it could not.
    pub fn tunnel_error(&self) -> Option<&str> {
        self.tunnel_error.as_deref()
    }

    /// Keeps vtap's VXLAN device and its program in step with the set: made
    /// (and the links re-read) when some `vxlan:` output exists, deleted
    /// when none does. Failures leave the outputs unresolved (their copies
    /// count as output_down) and are logged once.
    fn sync_tunnel(&mut self, compiled: &CompiledSet, links: &Links) -> Option<Links> {
        use crate::tunnel;
        // Only enabled policies' outputs need the device.
        let wanted = compiled
            .actions
            .iter()
            .filter(|(slot, _)| compiled.enabled.test(**slot as usize))
            .flat_map(|(_, ids)| ids)
            .any(|id| compiled.outputs.get(id).is_some_and(|k| k.vxlan.is_some()));
        if !wanted {
            if self.tunnel_created || self.dp.tunnel_ifindex().is_some() {
                self.dp.detach_tunnel();
                if self.tunnel_created {
                    match tunnel::delete_device() {
                        Ok(()) => tracing::info!(
                            device = tunnel::DEVICE,
                            "no vxlan output left; VXLAN device deleted"
                        ),
                        Err(e) => tracing::warn!(error = %e, "deleting the VXLAN device"),
                    }
                    self.tunnel_created = false;
                    return crate::netlink::list_links_blocking().ok();
                }
            }
            return None;
        }
        let mut fresh = None;
        let ok = match links.get(tunnel::DEVICE) {
            Some(l) if l.up && self.dp.tunnel_ifindex() == Some(l.ifindex) => return None,
            _ => match tunnel::ensure_device(self.tunnel_port) {
                Ok(ifindex) => {
                    if !self.tunnel_created {
                        tracing::info!(
                            device = tunnel::DEVICE,
                            ifindex,
                            port = self.tunnel_port,
                            "VXLAN device for vxlan outputs ready"
                        );
                    }
                    self.tunnel_created = true;
                    fresh = crate::netlink::list_links_blocking().ok();
                    self.dp
                        .attach_tunnel(tunnel::DEVICE, ifindex)
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            },
        };
        match ok {
            Ok(()) => self.tunnel_error = None,
            Err(e) => {
                if self.tunnel_error.as_deref() != Some(&e) {
                    tracing::error!(error = %e, "vxlan outputs: the VXLAN device is not usable; their copies count as output_down");
                }
                self.tunnel_error = Some(e);
            }
        }
        fresh
    }

    fn activate(&mut self, compiled: &CompiledSet, links: &Links) -> Result<(), EngineError> {
        let fresh = self.sync_tunnel(compiled, links);
        let links = fresh.as_ref().unwrap_or(links);
        // Which interfaces and directions the policies select.
        let mut wanted: BTreeMap<String, BTreeSet<Dir>> = BTreeMap::new();
        for name in links.keys() {
            for dir in Dir::ALL {
                if !compiled.tap_bitmap(name, dir).is_empty() {
                    wanted.entry(name.clone()).or_default().insert(dir);
                }
            }
        }
        let mut taps: BTreeMap<String, TapState> = BTreeMap::new();
        for (name, dirs) in &self.explicit {
            if links.contains_key(name) {
                wanted
                    .entry(name.clone())
                    .or_default()
                    .extend(dirs.iter().copied());
            } else {
                taps.insert(
                    name.clone(),
                    TapState {
                        xdp: false,
                        ifindex: 0,
                        slot: 0,
                        wanted: BTreeSet::new(),
                        attached: BTreeSet::new(),
                        error: Some("interface does not exist (yet)".to_string()),
                    },
                );
            }
        }
        // Names that match no interface yet are reported too.
        for rule in &compiled.taps {
            for p in &rule.patterns {
                let text = p.as_str();
                let is_glob = text.contains(['*', '?', '[']);
                if !is_glob && !links.contains_key(text) {
                    taps.entry(text.to_string()).or_insert_with(|| TapState {
                        xdp: false,
                        ifindex: 0,
                        slot: 0,
                        wanted: BTreeSet::new(),
                        attached: BTreeSet::new(),
                        error: Some("interface does not exist (yet)".to_string()),
                    });
                }
            }
        }
        // Counter slots: a tap that stays (same name and ifindex) keeps its
        // slot; a new one takes a slot no current tap holds (so none that a
        // packet may still be counting into) and starts from zero.
        let kept: BTreeMap<&String, u32> = self
            .taps
            .iter()
            .filter(|(n, t)| t.ifindex != 0 && links.get(*n).map(|l| l.ifindex) == Some(t.ifindex))
            .map(|(n, t)| (n, t.slot))
            .collect();
        let held: BTreeSet<u32> = self
            .taps
            .values()
            .filter(|t| t.ifindex != 0)
            .map(|t| t.slot)
            .collect();
        let mut free = (0..vtap_abi::MAX_TAPS).filter(|s| !held.contains(s));
        for (name, dirs) in &wanted {
            let ifindex = links[name].ifindex;
            let slot = match kept.get(name) {
                Some(&s) => s,
                None => {
                    let Some(s) = free.next() else {
                        tracing::warn!(iface = %name, "too many tapped interfaces; not attaching");
                        continue;
                    };
                    for dir in Dir::ALL {
                        stats::zero_percpu::<vtap_abi::TapStats>(
                            &self.dp,
                            &self.dp.maps.tap_stats,
                            s * 2 + dir as u32,
                        )?;
                    }
                    s
                }
            };
            let xdp = self.xdp_taps.iter().any(|p| p.matches(name));
            let mut dirs = dirs.clone();
            let mut error = None;
            if xdp && dirs.remove(&Dir::Egress) {
                error = Some(
                    "XDP mode taps only see ingress (packets from the VM); egress is not tapped"
                        .to_string(),
                );
            }
            let attached: BTreeSet<Dir> = match self.taps.get(name) {
                Some(t) if t.ifindex == ifindex && t.xdp == xdp => {
                    t.attached.intersection(&dirs).copied().collect()
                }
                _ => BTreeSet::new(),
            };
            taps.insert(
                name.clone(),
                TapState {
                    ifindex,
                    slot,
                    wanted: dirs,
                    attached,
                    error,
                    xdp,
                },
            );
        }
        // Activate first: entries for taps not attached yet are harmless, and
        // a tap is counted from its first packet once attached.
        let image = resolve(compiled, &taps, links);
        self.rec.apply(&self.dp, &image)?;
        // Detach what is no longer wanted (or whose interface changed index:
        // the kernel already removed that link with the old device).
        let attached: Vec<(String, Dir)> = self.dp.attached().cloned().collect();
        for (name, dir) in attached {
            if !taps.get(&name).is_some_and(|t| t.attached.contains(&dir)) {
                if let Err(e) = self.dp.detach(&name, dir) {
                    tracing::debug!(iface = %name, error = %e, "detach");
                }
                tracing::info!(iface = %name, dir = dir.as_str(), "detached");
            }
        }
        // Attach what is wanted and not attached yet.
        for (name, st) in taps.iter_mut() {
            let missing: Vec<Dir> = st.wanted.difference(&st.attached).copied().collect();
            for dir in missing {
                let r = if st.xdp && dir == Dir::Ingress {
                    self.dp.attach_xdp(name)
                } else {
                    self.dp.attach(name, st.ifindex, dir)
                };
                match r {
                    Ok(()) => {
                        st.attached.insert(dir);
                        tracing::info!(iface = %name, ifindex = st.ifindex, dir = dir.as_str(), xdp = st.xdp, "attached");
                    }
                    Err(e) => {
                        tracing::warn!(iface = %name, dir = dir.as_str(), error = %e, "attach failed");
                        st.error = Some(e.to_string());
                    }
                }
            }
        }
        self.report_missing(compiled, &taps, links);
        self.taps = taps;
        self.links = links.clone();
        Ok(())
    }

    /// Logs, once per change, taps and output interfaces that do not exist.
    fn report_missing(
        &mut self,
        compiled: &CompiledSet,
        taps: &BTreeMap<String, TapState>,
        links: &Links,
    ) {
        let mut missing = BTreeSet::new();
        for (name, st) in taps {
            if st.ifindex == 0 {
                missing.insert(name.clone());
                if !self.missing.contains(name) {
                    tracing::warn!(iface = %name, "tap interface does not exist; will attach when it appears");
                }
            }
        }
        for key in compiled.outputs.values().filter(|k| k.capture.is_none()) {
            if !links.contains_key(&key.interface)
                && missing.insert(key.interface.clone())
                && !self.missing.contains(&key.interface)
            {
                tracing::warn!(
                    iface = %key.interface,
                    "output interface does not exist; its copies are counted as output_down until it appears"
                );
            }
        }
        for name in self
            .missing
            .difference(&missing)
            .filter(|n| links.contains_key(*n))
        {
            tracing::info!(iface = %name, "interface appeared");
        }
        self.missing = missing;
    }

    fn zero_slot(&self, slot: u16) -> Result<(), DatapathError> {
        let m = &self.dp.maps;
        let s = slot as u32;
        for d in 0..2 {
            stats::zero_percpu::<PolicyStats>(&self.dp, &m.policy_stats, s * 2 + d)?;
        }
        stats::zero_percpu::<PolicyDrops>(&self.dp, &m.policy_drops, s)?;
        // Full token buckets for the new policy (all zero = full).
        m.rate.update(&s, &vtap_abi::RateState::default())?;
        for o in 0..MAX_OUTPUTS as u32 {
            stats::zero_percpu::<OutputStats>(
                &self.dp,
                &m.output_stats,
                s * MAX_OUTPUTS as u32 + o,
            )?;
        }
        Ok(())
    }

    fn zero_output(&self, o: u8) -> Result<(), DatapathError> {
        let m = &self.dp.maps;
        stats::zero_percpu::<CopyStats>(&self.dp, &m.copy_stats, o as u32)?;
        stats::zero_percpu::<CaptureStats>(&self.dp, &m.capture_stats, o as u32)?;
        for s in 0..MAX_POLICIES as u32 {
            stats::zero_percpu::<OutputStats>(
                &self.dp,
                &m.output_stats,
                s * MAX_OUTPUTS as u32 + o as u32,
            )?;
        }
        Ok(())
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Result<Snapshot, EngineError> {
        let dp = &self.dp;
        let mut snap = Snapshot::default();
        for (name, st) in &self.taps {
            for &dir in &st.attached {
                snap.taps.push(TapCounters {
                    tap: name.clone(),
                    dir,
                    stats: stats::tap_stats(dp, st.slot, dir)?,
                });
            }
        }
        let labels: BTreeMap<u8, String> = self
            .assignment
            .output_ids
            .iter()
            .map(|(k, id)| (*id, output_label(k)))
            .collect();
        for p in &self.policies {
            let Some(&slot) = self.assignment.policy_slots.get(&p.name) else {
                continue;
            };
            let s = slot as u32;
            let m: Vec<(u32, PolicyStats)> =
                stats::sum_percpu_array(dp, &dp.maps.policy_stats, [s * 2, s * 2 + 1])?;
            let drops: PolicyDrops = stats::sum_percpu_array(dp, &dp.maps.policy_drops, [s])?
                .remove(0)
                .1;
            let mut outputs = Vec::new();
            let ids = self
                .compiled
                .as_ref()
                .and_then(|c| c.actions.get(&slot))
                .cloned()
                .unwrap_or_default();
            for o in ids {
                let v: OutputStats = stats::sum_percpu_array(
                    dp,
                    &dp.maps.output_stats,
                    [s * MAX_OUTPUTS as u32 + o as u32],
                )?
                .remove(0)
                .1;
                outputs.push((labels.get(&o).cloned().unwrap_or_default(), v));
            }
            snap.policies.push(PolicyCounters {
                policy: p.name.clone(),
                matched: [m[0].1, m[1].1],
                outputs,
                drops,
            });
        }
        for (id, label) in &labels {
            let v: CopyStats = stats::sum_percpu_array(dp, &dp.maps.copy_stats, [*id as u32])?
                .remove(0)
                .1;
            snap.outputs.push(OutputCounters {
                output: label.clone(),
                stats: v,
            });
        }
        Ok(snap)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Assigns slots and output ids ([`Assignment::assign`]: kept names keep
/// theirs, new ones prefer numbers the previous assignment did not use) and
/// returns the slots and ids that are new in this change.
pub fn allocate(
    prev: &Assignment,
    policies: &[Policy],
) -> Result<(Assignment, Vec<u16>, Vec<u8>), EngineError> {
    let next =
        Assignment::assign(policies, prev).map_err(|e| EngineError::Compile(e.to_string()))?;
    let fresh_slots = next
        .policy_slots
        .iter()
        .filter(|(n, s)| prev.policy_slots.get(*n) != Some(*s))
        .map(|(_, s)| *s)
        .collect();
    let fresh_outputs = next
        .output_ids
        .iter()
        .filter(|(k, id)| prev.output_ids.get(*k) != Some(*id))
        .map(|(_, id)| *id)
        .collect();
    Ok((next, fresh_slots, fresh_outputs))
}

/// Output id → capture name.
fn capture_ids(a: &Assignment) -> BTreeMap<u8, String> {
    a.output_ids
        .iter()
        .filter_map(|(k, id)| k.capture.clone().map(|c| (*id, c)))
        .collect()
}

/// The outputs of a policy.
pub fn output_keys(p: &Policy) -> Vec<OutputKey> {
    p.output_keys()
}

/// Resolves a compiled set against the attached taps and live interfaces.
pub fn resolve(c: &CompiledSet, taps: &BTreeMap<String, TapState>, links: &Links) -> Image {
    resolve_with(c, taps, links, MAX_LENS)
}

/// [`resolve`] with a limit on the distinct prefix lengths an address table
/// may have to use the exact-match hashes (0 = always the LPM tries; tests
/// use it to cover both lookup paths).
pub fn resolve_with(
    c: &CompiledSet,
    taps: &BTreeMap<String, TapState>,
    links: &Links,
    max_hash_lens: usize,
) -> Image {
    let mut img = Image::empty();
    img.cfg = GenConfig {
        used_fields: c.used_fields,
        flags: if c.bidir.is_empty() { 0 } else { GEN_ANY_BIDIR },
        bidir: c.bidir,
        wildcard: c.wildcard,
        lens: Default::default(),
    };
    for (name, st) in taps {
        if st.ifindex == 0 {
            continue;
        }
        for &dir in &st.wanted {
            let policies = c.tap_bitmap(name, dir);
            img.taps.insert(
                (st.ifindex, dir as u8),
                TapSel {
                    policies,
                    tap_slot: st.slot,
                    _pad: 0,
                },
            );
        }
    }
    img.ether = c.ether_types.clone();
    // Each address table goes to exact-match hashes when it uses few
    // distinct prefix lengths (one lookup per length), else to its LPM trie.
    let v4 = |m: &BTreeMap<ipnet::Ipv4Net, Bitmap>| -> Vec<(u8, [u8; 16], Bitmap)> {
        m.iter()
            .map(|(n, b)| {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&n.network().octets());
                (n.prefix_len(), a, *b)
            })
            .collect()
    };
    let v6 = |m: &BTreeMap<ipnet::Ipv6Net, Bitmap>| -> Vec<(u8, [u8; 16], Bitmap)> {
        m.iter()
            .map(|(n, b)| (n.prefix_len(), n.network().octets(), *b))
            .collect()
    };
    let tables = [
        (cidr_table::SRC4, v4(&c.src4)),
        (cidr_table::DST4, v4(&c.dst4)),
        (cidr_table::SRC6, v6(&c.src6)),
        (cidr_table::DST6, v6(&c.dst6)),
    ];
    for (t, entries) in tables {
        let lens: BTreeSet<u8> = entries.iter().map(|e| e.0).collect();
        let lens_cfg = &mut img.cfg.lens[t as usize];
        if lens.len() <= max_hash_lens.min(MAX_LENS) {
            lens_cfg.n = lens.len() as u8;
            for (i, l) in lens.iter().rev().enumerate() {
                lens_cfg.len[i] = *l;
            }
            for (len, addr, b) in entries {
                img.cidr.insert((t, len, addr), b);
            }
            continue;
        }
        lens_cfg.n = LENS_LPM;
        for (len, addr, b) in entries {
            match t {
                cidr_table::SRC4 => img.src4.insert((len, addr[..4].try_into().unwrap()), b),
                cidr_table::DST4 => img.dst4.insert((len, addr[..4].try_into().unwrap()), b),
                cidr_table::SRC6 => img.src6.insert((len, addr), b),
                _ => img.dst6.insert((len, addr), b),
            };
        }
    }
    img.proto = c.proto.clone();
    img.tcp_flags = c.tcp_flags.clone();
    img.sport = c.sport.clone();
    img.dport = c.dport.clone();
    for (&slot, ids) in &c.actions {
        let mut a = PolicyAction::default();
        for (k, &id) in ids.iter().enumerate().take(a.out_ids.len()) {
            a.out_ids[k] = id;
            a.outputs |= 1u64 << id;
        }
        if let Some(sh) = c.shaping.get(&slot) {
            sh.write(&mut a, shaping::flow_seed());
        }
        img.actions[slot as usize] = a;
    }
    for (&id, key) in &c.outputs {
        if let Some(pc) = c.pcap.get(&id) {
            img.outputs[id as usize] = Output {
                kind: output_kind::PCAP,
                snaplen: pc.snaplen,
                policies: pc.policies,
                ..Output::default()
            };
            continue;
        }
        let mut out = Output {
            // A missing or down output: 0, counted as output_down.
            ifindex: links
                .get(&key.interface)
                .filter(|l| l.up)
                .map_or(0, |l| l.ifindex),
            vlan: key.vlan,
            kind: output_kind::IFACE,
            ..Output::default()
        };
        if let Some(x) = &key.vxlan {
            out.kind = output_kind::VXLAN;
            out.vni = x.vni;
            match x.remote {
                std::net::IpAddr::V4(a) => out.remote[0] = u32::from(a),
                std::net::IpAddr::V6(a) => {
                    out.flags = vtap_abi::output_flags::REMOTE6;
                    let o = a.octets();
                    for (w, c) in out.remote.iter_mut().zip(o.chunks_exact(4)) {
                        *w = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                    }
                }
            }
        }
        img.outputs[id as usize] = out;
    }
    let _ = (Bitmap::EMPTY, NO_OUTPUT);
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::Link;
    use crate::policy::load::parse_str;

    #[test]
    fn outputs_resolve_to_zero_when_missing_or_down() {
        let ps = parse_str(
            "version: 1\nname: a\ntaps: [t0]\noutputs: [{interface: up0}, {interface: down0, vlan: 5}, {interface: gone0}]\n",
            "t",
        )
        .unwrap();
        let (a, _, _) = allocate(&Assignment::default(), &ps).unwrap();
        let c = compile(&ps, &a).unwrap();
        let mut links = Links::new();
        links.insert(
            "up0".into(),
            Link {
                ifindex: 7,
                up: true,
                mtu: 1500,
            },
        );
        links.insert(
            "down0".into(),
            Link {
                ifindex: 8,
                up: false,
                mtu: 1500,
            },
        );
        let img = resolve(&c, &BTreeMap::new(), &links);
        let by_name = |n: &str| {
            img.outputs[a
                .output_ids
                .iter()
                .find(|(k, _)| k.interface == n)
                .unwrap()
                .1
                .to_owned() as usize]
        };
        assert_eq!(by_name("up0").ifindex, 7);
        assert_eq!(by_name("down0").ifindex, 0);
        assert_eq!(by_name("down0").vlan, 5);
        assert_eq!(by_name("gone0").ifindex, 0);
    }
}
