//! `vtap policy apply|put|list|get|delete|check`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use vtap_core::policy::load::{LoadError, Loaded};

use super::client::encode_segment;
use super::output::{self, Format, Table, emit, key_values, list_or_dash};
use super::{CliError, Ctx};
use crate::wire::{ChangeResult, PolicyBatch, PolicyList, PolicyStatus};

/// `vtap policy ...`.
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Create or replace every policy of a file or directory, all or nothing.
    ///
    /// The files are parsed here first (errors are shown with file and line,
    /// and nothing is sent); the daemon validates the set and applies it
    /// atomically. Policies not named in the files are left alone.
    Apply {
        /// A policy file or a directory of them.
        #[arg(short = 'f', long = "file", value_name = "PATH")]
        path: PathBuf,
        /// Show what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Create or replace the one policy of a file, optionally only if it has
    /// not changed since it was read (--if-match).
    Put {
        /// A file with exactly one policy.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        path: PathBuf,
        /// Replace only if the running policy still has this ETag (from
        /// `vtap policy get`); otherwise the daemon answers 409.
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
        /// Show what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the policies of the daemon with their state and counters.
    List,
    /// Show one policy: its content, state, ETag and counters.
    Get {
        /// Policy name.
        name: String,
    },
    /// Delete a policy.
    Delete {
        /// Policy name.
        name: String,
        /// Delete only if the running policy still has this ETag; otherwise
        /// the daemon answers 409.
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
        /// Show what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate a policy file or directory offline (no daemon needed).
    Check {
        /// A policy file or a directory of them.
        #[arg(short = 'f', long = "file", value_name = "PATH")]
        path: PathBuf,
    },
}

/// Runs `vtap policy ...`.
pub fn run(ctx: &Ctx, cmd: PolicyCmd) -> Result<(), CliError> {
    match cmd {
        PolicyCmd::Check { path } => check(&path),
        PolicyCmd::Apply { path, dry_run } => apply(ctx, &path, dry_run),
        PolicyCmd::Put {
            path,
            if_match,
            dry_run,
        } => put(ctx, &path, if_match.as_deref(), dry_run),
        PolicyCmd::List => list(ctx),
        PolicyCmd::Get { name } => get(ctx, &name),
        PolicyCmd::Delete {
            name,
            if_match,
            dry_run,
        } => delete(ctx, &name, if_match.as_deref(), dry_run),
    }
}

fn dry_run_query(dry_run: bool) -> Vec<(&'static str, &'static str)> {
    if dry_run {
        vec![("dry_run", "true")]
    } else {
        vec![]
    }
}

/// `vtap policy check`: offline validation (parse + the daemon's rules).
fn check(path: &Path) -> Result<(), CliError> {
    match vtap_core::policy::load::load_and_validate(path) {
        Ok(policies) => {
            let mut s = String::new();
            for p in &policies {
                s.push_str(&format!(
                    "ok  {:<24} {} taps, {} outputs{}\n",
                    p.name,
                    p.taps.len(),
                    p.outputs.len(),
                    if p.enabled { "" } else { " (disabled)" }
                ));
            }
            s.push_str(&format!(
                "{}: {} policies valid\n",
                path.display(),
                policies.len()
            ));
            emit(&s);
            Ok(())
        }
        Err(e) => {
            let mut lines = vec![format!("{}: invalid", path.display())];
            lines.extend(e.to_string().lines().map(str::to_owned));
            Err(CliError::Local(lines))
        }
    }
}

/// The local error for files that do not parse.
fn load_error(path: &Path, e: &LoadError) -> CliError {
    let mut lines = vec![format!(
        "error: {}: {} problem{}; nothing was sent",
        path.display(),
        e.problems.len(),
        if e.problems.len() == 1 { "" } else { "s" }
    )];
    lines.extend(e.problems.iter().map(|p| format!("  {p}")));
    CliError::Local(lines)
}

/// Reads the policies of `path` client-side, as JSON objects. Fails on parse
/// errors, on no policy at all, and on a name defined twice.
pub fn read_policies(path: &Path) -> Result<Vec<(String, serde_json::Value)>, CliError> {
    let loaded: Vec<Loaded> =
        vtap_core::policy::load::load_path_with_origins(path).map_err(|e| load_error(path, &e))?;
    if loaded.is_empty() {
        return Err(CliError::Local(vec![format!(
            "error: {}: no policies found; nothing was sent",
            path.display()
        )]));
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    let mut dups = Vec::new();
    for l in &loaded {
        if let Some(first) = seen.insert(&l.policy.name, &l.origin) {
            dups.push(format!(
                "  {}: policy {:?} is already defined in {first}",
                l.origin, l.policy.name
            ));
        }
    }
    if !dups.is_empty() {
        let mut lines = vec![format!(
            "error: {}: duplicate policy names; nothing was sent",
            path.display()
        )];
        lines.extend(dups);
        return Err(CliError::Local(lines));
    }
    loaded
        .into_iter()
        .map(|l| {
            serde_json::to_value(&l.policy)
                .map(|v| (l.policy.name.clone(), v))
                .map_err(|e| {
                    CliError::Local(vec![format!(
                        "error: {}: policy {}: cannot encode: {e}",
                        l.origin, l.policy.name
                    )])
                })
        })
        .collect()
}

fn apply(ctx: &Ctx, path: &Path, dry_run: bool) -> Result<(), CliError> {
    let policies = read_policies(path)?;
    let client = ctx.client()?;
    let batch = PolicyBatch {
        policies: policies.into_iter().map(|(_, v)| v).collect(),
    };
    let r = client.send(
        "PUT",
        "/api/v1/policies",
        &dry_run_query(dry_run),
        Some(&batch),
        None,
    )?;
    print_change(ctx.format(), &r)
}

fn put(ctx: &Ctx, path: &Path, if_match: Option<&str>, dry_run: bool) -> Result<(), CliError> {
    let mut policies = read_policies(path)?;
    if policies.len() != 1 {
        return Err(CliError::Local(vec![format!(
            "error: {}: holds {} policies; `vtap policy put` sends exactly one (use `vtap policy apply` for several)",
            path.display(),
            policies.len()
        )]));
    }
    let (name, body) = policies.remove(0);
    let client = ctx.client()?;
    let r = client.send(
        "PUT",
        &format!("/api/v1/policies/{}", encode_segment(&name)),
        &dry_run_query(dry_run),
        Some(&body),
        if_match,
    )?;
    print_change(ctx.format(), &r)
}

fn list(ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx.client()?.get("/api/v1/policies")?;
    match ctx.format() {
        Format::Table => {
            let l: PolicyList = r.parse()?;
            emit(&policy_table(&l));
            Ok(())
        }
        f => {
            emit(&output::render_value(&r.body, f));
            Ok(())
        }
    }
}

fn get(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let r = ctx
        .client()?
        .get(&format!("/api/v1/policies/{}", encode_segment(name)))?;
    match ctx.format() {
        Format::Table => {
            let p: PolicyStatus = r.parse()?;
            emit(&policy_detail(&p));
            Ok(())
        }
        f => {
            emit(&output::render_value(&r.body, f));
            Ok(())
        }
    }
}

fn delete(ctx: &Ctx, name: &str, if_match: Option<&str>, dry_run: bool) -> Result<(), CliError> {
    let r = ctx.client()?.send::<()>(
        "DELETE",
        &format!("/api/v1/policies/{}", encode_segment(name)),
        &dry_run_query(dry_run),
        None,
        if_match,
    )?;
    print_change(ctx.format(), &r)
}

fn print_change(format: Format, r: &super::client::Reply) -> Result<(), CliError> {
    match format {
        Format::Table => {
            let c: ChangeResult = r.parse()?;
            emit(&change_table(&c));
            Ok(())
        }
        f => {
            emit(&output::render_value(&r.body, f));
            Ok(())
        }
    }
}

/// What a change did, one line per policy.
pub fn change_table(c: &ChangeResult) -> String {
    let mut t = Table::new(&["POLICY", "RESULT", "ETAG"]);
    let suffix = if c.dry_run { " (dry run)" } else { "" };
    for (names, what) in [
        (&c.created, "created"),
        (&c.replaced, "replaced"),
        (&c.deleted, "deleted"),
        (&c.unchanged, "unchanged"),
    ] {
        for n in names {
            t.row(vec![
                n.clone(),
                format!("{what}{suffix}"),
                c.etags.get(n).cloned().unwrap_or_default(),
            ]);
        }
    }
    let mut s = if t.is_empty() {
        "no policy changed\n".to_owned()
    } else {
        t.render()
    };
    if c.dry_run {
        s.push_str("dry run: nothing was applied\n");
    }
    s
}

fn enabled(p: &serde_json::Value) -> bool {
    p.get("enabled")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true)
}

fn active_text(p: &PolicyStatus) -> String {
    match (p.status.active, &p.status.reason) {
        (true, _) => "yes".into(),
        (false, Some(r)) if !r.is_empty() => format!("no ({r})"),
        (false, _) => "no".into(),
    }
}

fn matched_packets(p: &PolicyStatus) -> u64 {
    p.counters
        .matched
        .values()
        .fold(0u64, |a, c| a.saturating_add(c.packets))
}

fn sum(m: &BTreeMap<String, u64>) -> u64 {
    m.values().fold(0u64, |a, v| a.saturating_add(*v))
}

/// `vtap policy list` as a table.
pub fn policy_table(l: &PolicyList) -> String {
    let mut t = Table::new(&[
        "NAME", "ENABLED", "ACTIVE", "TAPS", "MATCHED", "MIRRORED", "DROPPED",
    ])
    .right(&[4, 5, 6]);
    for p in &l.policies {
        t.row(vec![
            policy_name(p),
            if enabled(&p.policy) { "yes" } else { "no" }.into(),
            active_text(p),
            list_or_dash(&p.taps),
            matched_packets(p).to_string(),
            sum(&p.counters.mirrored).to_string(),
            sum(&p.counters.dropped).to_string(),
        ]);
    }
    if t.is_empty() {
        return "no policies\n".into();
    }
    t.render()
}

fn policy_name(p: &PolicyStatus) -> String {
    p.policy
        .get("name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?")
        .to_owned()
}

/// `vtap policy get` as a block: summary, counters, then the policy itself
/// as YAML (what a policy file would hold).
pub fn policy_detail(p: &PolicyStatus) -> String {
    let pol = &p.policy;
    let s = |k: &str| match pol.get(k) {
        Some(serde_json::Value::String(v)) => v.clone(),
        Some(serde_json::Value::Null) | None => "-".into(),
        Some(v) => v.to_string(),
    };
    let mut pairs = vec![
        ("Name", policy_name(p)),
        ("Enabled", if enabled(pol) { "yes" } else { "no" }.into()),
        ("Active", active_text(p)),
        ("Priority", s("priority")),
        ("Direction", s("direction")),
        ("Attached to", list_or_dash(&p.taps)),
        ("ETag", p.etag.clone()),
    ];
    if let Some(f) = &p.file {
        pairs.push(("File", f.clone()));
    }
    let mut out = key_values(&pairs);

    let mut t = Table::new(&["COUNTER", "KEY", "PACKETS", "BYTES"]).right(&[2, 3]);
    for (dir, c) in &p.counters.matched {
        t.row(vec![
            "matched".into(),
            dir.clone(),
            c.packets.to_string(),
            c.bytes.to_string(),
        ]);
    }
    for (o, n) in &p.counters.mirrored {
        t.row(vec!["mirrored".into(), o.clone(), n.to_string(), "".into()]);
    }
    // Drop reasons that never happened are noise here (the JSON has them).
    for (r, n) in p.counters.dropped.iter().filter(|(_, n)| **n > 0) {
        t.row(vec!["dropped".into(), r.clone(), n.to_string(), "".into()]);
    }
    out.push('\n');
    if t.is_empty() {
        out.push_str("Counters: none yet\n");
    } else {
        out.push_str(&t.render());
    }
    out.push_str("\nPolicy:\n");
    out.push_str(&output::indent(&policy_yaml(pol), 2));
    out
}

/// The policy as YAML in the field order of a policy file (as sent when it
/// is not a policy this build knows).
fn policy_yaml(pol: &serde_json::Value) -> String {
    serde_json::from_value::<vtap_core::policy::model::Policy>(pol.clone())
        .ok()
        .and_then(|p| serde_yaml::to_string(&p).ok())
        .unwrap_or_else(|| output::render_value(pol, Format::Yaml))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{PacketsBytes, PolicyCounters, PolicyState};

    fn status(name: &str, active: bool, reason: Option<&str>) -> PolicyStatus {
        let mut counters = PolicyCounters::default();
        if active {
            counters.matched.insert(
                "ingress".into(),
                PacketsBytes {
                    packets: 10,
                    bytes: 980,
                },
            );
            counters.matched.insert(
                "egress".into(),
                PacketsBytes {
                    packets: 5,
                    bytes: 490,
                },
            );
            counters.mirrored.insert("mon0.100".into(), 15);
            counters.dropped.insert("output_down".into(), 2);
            counters.dropped.insert("clone_failed".into(), 0);
        }
        PolicyStatus {
            policy: serde_json::json!({
                "version": 1, "name": name, "priority": 100, "enabled": active,
                "taps": ["vm1-tap"], "direction": "both",
                "outputs": [{"interface": "mon0", "vlan": 100}]
            }),
            etag: format!("etag-{name}"),
            file: Some(format!("/etc/vtap/policies/{name}.yaml")),
            status: PolicyState {
                active,
                reason: reason.map(str::to_owned),
            },
            taps: if active {
                vec!["vm1-tap".into(), "vm2-tap".into()]
            } else {
                vec![]
            },
            counters,
        }
    }

    #[test]
    fn list_table() {
        let l = PolicyList {
            policies: vec![
                status("icmp-to-ids", true, None),
                status("off", false, Some("disabled")),
            ],
        };
        assert_eq!(
            policy_table(&l),
            "NAME          ENABLED   ACTIVE          TAPS              MATCHED   MIRRORED   DROPPED\n\
             icmp-to-ids   yes       yes             vm1-tap,vm2-tap        15         15         2\n\
             off           no        no (disabled)   -                       0          0         0\n"
        );
        assert_eq!(
            policy_table(&PolicyList { policies: vec![] }),
            "no policies\n"
        );
    }

    #[test]
    fn detail_block() {
        let s = policy_detail(&status("web", true, None));
        assert!(s.starts_with("Name:         web\nEnabled:      yes\nActive:       yes\nPriority:     100\nDirection:    both\nAttached to:  vm1-tap,vm2-tap\nETag:         etag-web\nFile:         /etc/vtap/policies/web.yaml\n"), "{s}");
        assert!(
            s.contains(
                "COUNTER    KEY           PACKETS   BYTES\n\
                 matched    egress              5     490\n\
                 matched    ingress            10     980\n\
                 mirrored   mon0.100           15\n\
                 dropped    output_down         2\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("\nPolicy:\n  version: 1\n  name: web\n  priority: 100\n"),
            "{s}"
        );
        assert!(!s.contains("clone_failed"), "{s}");
        // Not a policy this build knows: shown as sent.
        let mut odd = status("odd", true, None);
        odd.policy["future_field"] = serde_json::json!(1);
        assert!(policy_detail(&odd).contains("  future_field: 1\n"));
        let idle = policy_detail(&status("idle", false, Some("no matching interface")));
        assert!(
            idle.contains("Active:       no (no matching interface)\n"),
            "{idle}"
        );
        assert!(idle.contains("Counters: none yet\n"), "{idle}");
    }

    #[test]
    fn change_results() {
        let mut etags = BTreeMap::new();
        etags.insert("a".to_owned(), "e-a".to_owned());
        etags.insert("b".to_owned(), "e-b".to_owned());
        let c = ChangeResult {
            dry_run: false,
            created: vec!["a".into()],
            replaced: vec!["b".into()],
            deleted: vec![],
            unchanged: vec!["c".into()],
            etags,
        };
        assert_eq!(
            change_table(&c),
            "POLICY   RESULT      ETAG\n\
             a        created     e-a\n\
             b        replaced    e-b\n\
             c        unchanged\n"
        );
        let dry = ChangeResult {
            dry_run: true,
            created: vec![],
            replaced: vec![],
            deleted: vec!["x".into()],
            unchanged: vec![],
            etags: BTreeMap::new(),
        };
        assert_eq!(
            change_table(&dry),
            "POLICY   RESULT              ETAG\nx        deleted (dry run)\ndry run: nothing was applied\n"
        );
        let none = ChangeResult {
            dry_run: false,
            created: vec![],
            replaced: vec![],
            deleted: vec![],
            unchanged: vec![],
            etags: BTreeMap::new(),
        };
        assert_eq!(change_table(&none), "no policy changed\n");
    }

    #[test]
    fn reading_files() {
        let dir = std::env::temp_dir().join(format!("vtap-cli-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ok = "version: 1\nname: a\ntaps: [t]\noutputs: [{interface: mon0, vlan: 5}]\n";
        std::fs::write(dir.join("a.yaml"), ok).unwrap();
        std::fs::write(dir.join("b.yaml"), ok.replace("name: a", "name: b")).unwrap();
        let got = read_policies(&dir).unwrap();
        assert_eq!(
            got.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(got[0].1["outputs"][0]["vlan"], 5);
        assert_eq!(got[0].1["taps"][0], "t");

        // Duplicate name.
        std::fs::write(dir.join("c.yaml"), ok).unwrap();
        let e = read_policies(&dir).unwrap_err();
        assert!(
            e.render().contains("policy \"a\" is already defined in"),
            "{}",
            e.render()
        );
        std::fs::remove_file(dir.join("c.yaml")).unwrap();

        // Parse error: file and line, exit 1.
        std::fs::write(dir.join("d.yaml"), format!("{ok}match:\n  colour: red\n")).unwrap();
        let e = read_policies(&dir).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        let text = e.render();
        assert!(
            text.contains("d.yaml:6:3: match.colour: unknown field"),
            "{text}"
        );
        assert!(text.contains("nothing was sent"), "{text}");

        // Empty directory.
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(
            read_policies(&empty)
                .unwrap_err()
                .render()
                .contains("no policies found")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
