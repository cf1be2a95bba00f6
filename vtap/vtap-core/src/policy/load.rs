//! Loading policy files and directories.
//!
//! A file holds one or more YAML documents separated by `---` (JSON is YAML
//! too); each document is one policy (a mapping) or a list of policies; empty
//! documents are skipped. A directory contributes every `*.yaml`, `*.yml` and
//! `*.json` file directly in it, in name order; `README*`, hidden files,
//! subdirectories and other files are ignored.
//!
//! Every problem is collected into one [`LoadError`]: unreadable files, YAML
//! syntax errors, fields of the wrong type or unknown fields (with the field
//! path and the line/column), and — in [`load_and_validate`] — every
//! validation error, each naming the file of its policy.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::model::Policy;
use super::validate::{FieldError, validate_set_indexed};

/// Documents read from one file at most.
const MAX_DOCUMENTS: usize = 100_000;

/// What kind of problem a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemKind {
    /// A file or directory could not be read.
    Io,
    /// Not YAML, or not a policy (wrong type, unknown or missing field).
    Parse,
    /// A validation rule failed.
    Invalid,
}

/// One problem found while loading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// The file (or the origin given to [`parse_str`]); empty for problems
    /// about the whole set.
    pub file: String,
    /// 1-based line, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// Field path (`match.src[1]`, `policies[web].outputs[0].vlan`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wrote = false;
        if !self.file.is_empty() {
            f.write_str(&self.file)?;
            if let Some(l) = self.line {
                write!(f, ":{l}")?;
                if let Some(c) = self.column {
                    write!(f, ":{c}")?;
                }
            }
            wrote = true;
        }
        if let Some(field) = &self.field {
            if wrote {
                f.write_str(": ")?;
            }
            f.write_str(field)?;
            wrote = true;
        }
        if wrote {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

impl Problem {
    /// The problem as a `{field, message}` pair (REST error details): the
    /// field path, or the file/location when there is none.
    pub fn to_field_error(&self) -> FieldError {
        let mut loc = self.file.clone();
        if let Some(l) = self.line {
            loc = format!("{loc}:{l}");
            if let Some(c) = self.column {
                loc = format!("{loc}:{c}");
            }
        }
        match &self.field {
            Some(field) => FieldError::new(
                field.clone(),
                if self.line.is_some() {
                    format!("{} (at {loc})", self.message)
                } else {
                    self.message.clone()
                },
            ),
            None => FieldError::new(
                "",
                if loc.is_empty() {
                    self.message.clone()
                } else {
                    format!("{loc}: {}", self.message)
                },
            ),
        }
    }
}

/// Every problem found while loading (never empty). Display prints one
/// problem per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct LoadError {
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl LoadError {
    /// The problems as `{field, message}` pairs.
    pub fn field_errors(&self) -> Vec<FieldError> {
        self.problems.iter().map(Problem::to_field_error).collect()
    }
    fn single(kind: ProblemKind, file: &str, message: String) -> Self {
        LoadError {
            problems: vec![Problem {
                kind,
                file: file.to_owned(),
                line: None,
                column: None,
                field: None,
                message,
            }],
        }
    }
}

/// A policy and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The file (or origin).
    pub origin: String,
    /// The policy.
    pub policy: Policy,
}

/// Turns a serde_yaml error seen through serde_path_to_error into a problem.
fn yaml_problem(origin: &str, e: serde_path_to_error::Error<serde_yaml::Error>) -> Problem {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let loc = inner.location();
    let mut msg = inner.to_string();
    if let Some(l) = &loc {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(m) = msg.strip_suffix(&suffix) {
            msg = m.to_owned();
        }
    }
    let mut field = None;
    if path != "." {
        // serde_yaml prefixes its own path (of the field or of its parent).
        let mut p = path.as_str();
        loop {
            if let Some(m) = msg.strip_prefix(&format!("{p}: ")) {
                msg = m.to_owned();
                break;
            }
            match p.rfind(['.', '[']) {
                Some(i) if i > 0 => p = &p[..i],
                _ => break,
            }
        }
        field = Some(path);
    }
    Problem {
        kind: ProblemKind::Parse,
        file: origin.to_owned(),
        line: loc.as_ref().map(|l| l.line()),
        column: loc.as_ref().map(|l| l.column()),
        field,
        message: msg,
    }
}

fn plain_yaml_problem(origin: &str, e: &serde_yaml::Error) -> Problem {
    let loc = e.location();
    Problem {
        kind: ProblemKind::Parse,
        file: origin.to_owned(),
        line: loc.as_ref().map(|l| l.line()),
        column: loc.as_ref().map(|l| l.column()),
        field: None,
        message: e.to_string(),
    }
}

/// The kind of a YAML document, from a first pass.
enum DocShape {
    Empty,
    One,
    List,
    Other(&'static str),
    Broken(Problem),
}

/// Parses the policies of one text (`origin` names it in problems).
pub fn parse_str(text: &str, origin: &str) -> Result<Vec<Policy>, LoadError> {
    parse_loaded(text, origin).map(|v| v.into_iter().map(|l| l.policy).collect())
}

fn parse_loaded(text: &str, origin: &str) -> Result<Vec<Loaded>, LoadError> {
    let (out, problems) = parse_collect(text, origin);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(LoadError { problems })
    }
}

fn parse_collect(text: &str, origin: &str) -> (Vec<Loaded>, Vec<Problem>) {
    // First pass: the shape of each document. Stop at the first error: after
    // a syntax error the iterator repeats it forever, and after an unknown
    // alias serde_yaml resumes parsing in the middle of the document, which
    // yields unbalanced documents that make it panic.
    let mut shapes = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text).take(MAX_DOCUMENTS) {
        match serde_yaml::Value::deserialize(doc) {
            Ok(v) => shapes.push(match v {
                serde_yaml::Value::Null => DocShape::Empty,
                serde_yaml::Value::Mapping(_) => DocShape::One,
                serde_yaml::Value::Sequence(_) => DocShape::List,
                serde_yaml::Value::Bool(_) => DocShape::Other("a boolean"),
                serde_yaml::Value::Number(_) => DocShape::Other("a number"),
                serde_yaml::Value::String(_) => DocShape::Other("a string"),
                serde_yaml::Value::Tagged(_) => DocShape::Other("a tagged value"),
            }),
            Err(e) => {
                shapes.push(DocShape::Broken(plain_yaml_problem(origin, &e)));
                break;
            }
        }
    }

    // Second pass: deserialize the documents that have a policy shape.
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let mut shapes = shapes.into_iter();
    let mut docs = serde_yaml::Deserializer::from_str(text);
    for (i, shape) in shapes.by_ref().enumerate() {
        let Some(doc) = docs.next() else { break };
        let prefix = |s: &str| {
            if i == 0 {
                s.to_owned()
            } else {
                format!("document {}: {s}", i + 1)
            }
        };
        match shape {
            DocShape::Empty => {}
            DocShape::Broken(p) => problems.push(p),
            DocShape::Other(what) => problems.push(Problem {
                kind: ProblemKind::Parse,
                file: origin.to_owned(),
                line: None,
                column: None,
                field: None,
                message: prefix(&format!(
                    "expected a policy (a mapping with version, name, taps, outputs, ...) or a list of policies, found {what}"
                )),
            }),
            DocShape::One => match serde_path_to_error::deserialize::<_, Policy>(doc) {
                Ok(p) => out.push(Loaded {
                    origin: origin.to_owned(),
                    policy: p,
                }),
                Err(e) => problems.push(yaml_problem(origin, e)),
            },
            DocShape::List => match serde_path_to_error::deserialize::<_, Vec<Policy>>(doc) {
                Ok(ps) => out.extend(ps.into_iter().map(|p| Loaded {
                    origin: origin.to_owned(),
                    policy: p,
                })),
                Err(e) => problems.push(yaml_problem(origin, e)),
            },
        }
    }
    (out, problems)
}

/// Whether a directory entry name is a policy file.
fn is_policy_file(name: &str) -> bool {
    if name.starts_with('.') || name.to_ascii_uppercase().starts_with("README") {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

/// Loads a file, or every policy file of a directory, keeping each policy's
/// file.
pub fn load_path_with_origins(path: &Path) -> Result<Vec<Loaded>, LoadError> {
    let (out, problems) = collect(path);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(LoadError { problems })
    }
}

/// What could be loaded, and every problem.
fn collect(path: &Path) -> (Vec<Loaded>, Vec<Problem>) {
    let shown = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return (
                vec![],
                LoadError::single(ProblemKind::Io, &shown, format!("cannot read: {e}")).problems,
            );
        }
    };
    if !meta.is_dir() {
        return match std::fs::read_to_string(path) {
            Ok(text) => parse_collect(&text, &shown),
            Err(e) => (
                vec![],
                LoadError::single(ProblemKind::Io, &shown, format!("cannot read: {e}")).problems,
            ),
        };
    }
    let rd = match std::fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) => {
            return (
                vec![],
                LoadError::single(
                    ProblemKind::Io,
                    &shown,
                    format!("cannot list the directory: {e}"),
                )
                .problems,
            );
        }
    };
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for entry in rd {
        match entry {
            Ok(entry) => {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !is_policy_file(&name) {
                    continue;
                }
                let p = entry.path();
                // Follows symlinks; subdirectories are ignored.
                match std::fs::metadata(&p) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => files.push((name, p)),
                    Err(e) => problems.push(Problem {
                        kind: ProblemKind::Io,
                        file: p.display().to_string(),
                        line: None,
                        column: None,
                        field: None,
                        message: format!("cannot read: {e}"),
                    }),
                }
            }
            Err(e) => problems.push(Problem {
                kind: ProblemKind::Io,
                file: shown.clone(),
                line: None,
                column: None,
                field: None,
                message: format!("cannot list the directory: {e}"),
            }),
        }
    }
    files.sort();
    let mut out = Vec::new();
    for (_, p) in files {
        let file = p.display().to_string();
        match std::fs::read_to_string(&p) {
            Ok(text) => {
                let (v, p) = parse_collect(&text, &file);
                out.extend(v);
                problems.extend(p);
            }
            Err(e) => problems.push(Problem {
                kind: ProblemKind::Io,
                file,
                line: None,
                column: None,
                field: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    (out, problems)
}

/// Loads a file, or every policy file of a directory (see the module doc).
pub fn load_path(path: &Path) -> Result<Vec<Policy>, LoadError> {
    load_path_with_origins(path).map(|v| v.into_iter().map(|l| l.policy).collect())
}

/// Validates loaded policies as one set; validation problems name the file of
/// their policy.
pub fn validate_loaded(loaded: &[Loaded]) -> Result<(), LoadError> {
    let problems = validation_problems(loaded);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LoadError { problems })
    }
}

fn validation_problems(loaded: &[Loaded]) -> Vec<Problem> {
    let policies: Vec<Policy> = loaded.iter().map(|l| l.policy.clone()).collect();
    validate_set_indexed(&policies)
        .into_iter()
        .map(|(i, e)| Problem {
            kind: ProblemKind::Invalid,
            file: i.map(|i| loaded[i].origin.clone()).unwrap_or_default(),
            line: None,
            column: None,
            field: Some(e.field),
            message: e.message,
        })
        .collect()
}

/// [`load_path`], then [`validate_set`](super::validate::validate_set) on
/// everything loaded. Parse problems are reported first; when some file does
/// not parse, the policies that did are still validated (but cross-set
/// checks may then miss policies).
pub fn load_and_validate(path: &Path) -> Result<Vec<Policy>, LoadError> {
    let (loaded, mut problems) = collect(path);
    problems.extend(validation_problems(&loaded));
    if problems.is_empty() {
        Ok(loaded.into_iter().map(|l| l.policy).collect())
    } else {
        Err(LoadError { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "version: 1\nname: a\ntaps: [t]\noutputs: [{interface: mon0}]\n";

    #[test]
    fn documents() {
        assert_eq!(parse_str("", "x").unwrap(), vec![]);
        assert_eq!(parse_str("# nothing\n", "x").unwrap(), vec![]);
        let two = format!("{OK}---\n{}", OK.replace("name: a", "name: b"));
        assert_eq!(parse_str(&two, "x").unwrap().len(), 2);
        assert_eq!(parse_str(&format!("---\n{OK}---\n"), "x").unwrap().len(), 1);
        let list = format!("- {}", OK.trim_end().replace('\n', "\n  "));
        assert_eq!(parse_str(&list, "x").unwrap().len(), 1);
        let json =
            r#"{"version":1,"name":"j","taps":["t"],"outputs":[{"interface":"mon0","vlan":3}]}"#;
        assert_eq!(parse_str(json, "x").unwrap()[0].name, "j");
    }

    #[test]
    fn unknown_field_has_path_and_location() {
        let text = format!("{OK}match:\n  colour: red\n");
        let e = parse_str(&text, "f.yaml").unwrap_err();
        assert_eq!(e.problems.len(), 1);
        let p = &e.problems[0];
        assert_eq!(p.field.as_deref(), Some("match.colour"));
        assert!(
            p.message
                .starts_with("unknown field `colour`, expected one of"),
            "{}",
            p.message
        );
        assert_eq!(p.line, Some(6));
        assert!(
            e.to_string()
                .starts_with("f.yaml:6:3: match.colour: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_terminates() {
        let e = parse_str(&format!("{OK}---\nversion: [1\n"), "f").unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].kind, ProblemKind::Parse);
    }

    #[test]
    fn every_document_reports() {
        let text = format!(
            "{OK}---\nversion: x\n---\n{OK}---\n42\n---\nversion: 1\nname: b\ntaps: [t]\noutputs: [{{interface: mon0, vlan: -1}}]\n"
        );
        let e = parse_str(&text, "f").unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
        assert_eq!(e.problems[2].field.as_deref(), Some("outputs[0].vlan"));
    }

    #[test]
    fn unknown_alias_does_not_panic() {
        // serde_yaml resumes after an unknown alias mid-document; the rest of
        // the stream must not be deserialized.
        for text in [
            "a: *nope\n---\nb: 1\n",
            "a: [*nope, 1]\n",
            "- *nope\n- 2\n",
            "x: {y: *z}\n---\n",
        ] {
            let e = parse_str(text, "f").unwrap_err();
            assert_eq!(e.problems.len(), 1, "{e}");
            assert!(e.to_string().contains("unknown anchor"), "{e}");
        }
        let ok = format!(
            "{}x: &tap vm1-tap\n",
            OK.replace("taps: [t]", "taps: [*tap]")
        );
        // An alias used before its anchor is unknown too.
        assert!(parse_str(&ok, "f").is_err());
        let ok = "version: 1\nname: a\ntaps: [&t vm1-tap]\noutputs: [{interface: mon0}]\n---\nversion: 1\nname: b\ntaps: [vm1-tap]\noutputs: [{interface: mon0}]\n";
        assert_eq!(parse_str(ok, "f").unwrap().len(), 2);
    }

    #[test]
    fn readme_and_hidden_files_are_skipped() {
        assert!(is_policy_file("a.yaml"));
        assert!(is_policy_file("b.YML"));
        assert!(is_policy_file("c.json"));
        assert!(!is_policy_file("README.yaml"));
        assert!(!is_policy_file("readme.md"));
        assert!(!is_policy_file(".a.yaml"));
        assert!(!is_policy_file("a.yaml.swp"));
    }
}
