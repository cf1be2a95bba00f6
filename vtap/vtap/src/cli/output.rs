//! Output of the client commands: `--output table|json|yaml`, aligned
//! tables, key/value blocks, and the error text.
//!
//! `json` and `yaml` print the daemon's answer as it came (so no field is
//! lost); `table` decodes it into the [`wire`](crate::wire) types and renders
//! it for people.

use std::io::Write;

use crate::wire::ErrorBody;

/// `--output`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned tables for people.
    #[default]
    Table,
    /// The API's JSON, pretty-printed.
    Json,
    /// The API's JSON as YAML.
    Yaml,
}

/// Writes `s` to stdout; a closed pipe (`| head`) is not an error.
pub fn emit(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// Writes `s` to stderr.
pub fn emit_err(s: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(s.as_bytes());
    let _ = err.flush();
}

/// A JSON value as `json` (pretty) or `yaml` text, ending with a newline.
pub fn render_value(v: &serde_json::Value, format: Format) -> String {
    match format {
        Format::Yaml => match serde_yaml::to_string(v) {
            Ok(s) => s,
            // Cannot happen for JSON values; never panic anyway.
            Err(_) => render_value(v, Format::Json),
        },
        Format::Json | Format::Table => {
            let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
            s.push('\n');
            s
        }
    }
}

/// `error: <error>` then `  <field>: <message>` per detail.
pub fn format_error(e: &ErrorBody) -> String {
    let mut s = format!("error: {}\n", one_line(&e.error));
    for d in &e.details {
        if d.field.is_empty() {
            s.push_str(&format!("  {}\n", one_line(&d.message)));
        } else {
            s.push_str(&format!(
                "  {}: {}\n",
                one_line(&d.field),
                one_line(&d.message)
            ));
        }
    }
    s
}

/// `s` with line breaks and control characters made visible as spaces, so a
/// server's text cannot break the layout or drive the terminal.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// An aligned text table: a header row, then rows; columns separated by
/// three spaces, no trailing blanks.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (all left-aligned).
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            align: vec![Align::Left; headers.len()],
            rows: Vec::new(),
        }
    }

    /// Right-aligns the columns at these indexes (numbers).
    pub fn right(mut self, cols: &[usize]) -> Table {
        for &c in cols {
            if let Some(a) = self.align.get_mut(c) {
                *a = Align::Right;
            }
        }
        self
    }

    /// Adds a row (missing cells are empty, extra cells dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| one_line(&c)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, ending with a newline.
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let width = |s: &str| s.chars().count();
        let mut w: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(width(c));
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.headers).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i > 0 {
                    line.push_str("   ");
                }
                let pad = w[i] - width(c);
                let last = i + 1 == n;
                match self.align[i] {
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(c);
                    }
                    Align::Left => {
                        line.push_str(c);
                        if !last {
                            line.push_str(&" ".repeat(pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `Key:   value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let w = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        + 1;
    let mut s = String::new();
    for (k, v) in pairs {
        let key = format!("{k}:");
        s.push_str(&format!("{key:<w$}  {}\n", one_line(v)));
    }
    s
}

/// `text` with every line indented by `n` spaces.
pub fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    let mut s = String::new();
    for l in text.lines() {
        if l.is_empty() {
            s.push('\n');
        } else {
            s.push_str(&pad);
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// A comma-separated list, or `-` when empty.
pub fn list_or_dash<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items
            .iter()
            .map(|s| s.as_ref())
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorDetail;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["NAME", "ENABLED", "MATCHED", "POLICIES"]).right(&[2]);
        t.row(vec![
            "web".into(),
            "yes".into(),
            "12345".into(),
            "a,b".into(),
        ]);
        t.row(vec![
            "icmp-to-ids".into(),
            "no".into(),
            "7".into(),
            "".into(),
        ]);
        assert_eq!(
            t.render(),
            "NAME          ENABLED   MATCHED   POLICIES\n\
             web           yes         12345   a,b\n\
             icmp-to-ids   no              7\n"
        );
    }

    #[test]
    fn table_edge_cases() {
        let t = Table::new(&["A", "B"]);
        assert!(t.is_empty());
        assert_eq!(t.render(), "A   B\n");
        let mut t = Table::new(&["A", "B"]);
        // Short and long rows, control characters, wide chars counted by char.
        t.row(vec!["x".into()]);
        t.row(vec!["é\nz".into(), "b".into(), "dropped".into()]);
        assert_eq!(t.render(), "A     B\nx\né z   b\n");
    }

    #[test]
    fn error_format() {
        let e = ErrorBody {
            error: "policy set rejected".into(),
            details: vec![
                ErrorDetail {
                    field: "policies[1].match.src[0]".into(),
                    message: "not a CIDR: \"10.0.0.300/24\"".into(),
                },
                ErrorDetail {
                    field: "".into(),
                    message: "at most 256 policies".into(),
                },
            ],
        };
        assert_eq!(
            format_error(&e),
            "error: policy set rejected\n  policies[1].match.src[0]: not a CIDR: \"10.0.0.300/24\"\n  at most 256 policies\n"
        );
        let multi = ErrorBody {
            error: "line one\nline two\x1b[31m".into(),
            details: vec![],
        };
        assert_eq!(format_error(&multi), "error: line one line two [31m\n");
    }

    #[test]
    fn values_and_blocks() {
        let v = serde_json::json!({"a": [1, 2], "b": {"c": "d"}});
        let y = render_value(&v, Format::Yaml);
        assert_eq!(serde_yaml::from_str::<serde_json::Value>(&y).unwrap(), v);
        let j = render_value(&v, Format::Json);
        assert!(j.ends_with("}\n"));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&j).unwrap(), v);
        assert_eq!(
            key_values(&[("Name", "web".into()), ("Priority", "100".into())]),
            "Name:      web\nPriority:  100\n"
        );
        assert_eq!(indent("a\n\nb", 2), "  a\n\n  b\n");
        assert_eq!(list_or_dash::<&str>(&[]), "-");
        assert_eq!(list_or_dash(&["a", "b"]), "a,b");
    }
}
