//! Diagnostics: what `cranium check` (and every loader) reports to a person.
//!
//! Loading a project never stops at the first problem. Every stage pushes [`Diagnostic`]s into a
//! [`Diagnostics`] list: each names the file, the line and column where the user wrote the thing, what is
//! wrong, and what to do. Rendering shows the offending line with a caret under it (codespan-reporting),
//! or one JSON object per finding for machines. Secrets are masked on the way out ([`crate::secret`]).

use std::ops::Range;
use std::path::{Path, PathBuf};

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term::{self, Config};
use serde::Serialize;

use crate::secret::Redactor;

/// How bad a finding is. Errors fail `check`; warnings fail it only with `--strict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A place in a source file: 1-based line and column (in characters), and how many characters to underline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
    #[serde(skip)]
    pub len: usize,
}

impl Pos {
    pub fn new(line: usize, col: usize, len: usize) -> Pos {
        Pos {
            line,
            col,
            len: len.max(1),
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable short name for the kind of finding (`unknown-field`, `cycle`, `sql-syntax`, ...).
    pub code: &'static str,
    pub message: String,
    /// The file, relative to the project root.
    pub file: Option<PathBuf>,
    #[serde(flatten)]
    pub pos: Option<Pos>,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            file: None,
            pos: None,
            help: None,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    pub fn in_file(mut self, file: impl Into<PathBuf>) -> Diagnostic {
        self.file = Some(file.into());
        self
    }

    pub fn at(mut self, pos: Option<Pos>) -> Diagnostic {
        self.pos = pos;
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// `file:line:col` (or as much of it as is known).
    pub fn location(&self) -> String {
        match (&self.file, self.pos) {
            (Some(f), Some(p)) => format!("{}:{}:{}", f.display(), p.line, p.col),
            (Some(f), None) => f.display().to_string(),
            (None, _) => String::new(),
        }
    }

    /// One line: `error: jobs/a.yaml:3:5: message`.
    pub fn short(&self) -> String {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let loc = self.location();
        if loc.is_empty() {
            format!("{sev}: {}", shorten(&self.message))
        } else {
            format!("{sev}: {loc}: {}", shorten(&self.message))
        }
    }
}

/// The message with every word over [`LONG_WORD`] characters (a 40,000-character value quoted in
/// it) cut to its start, an ellipsis and its length: the message stays readable.
pub fn shorten(message: &str) -> std::borrow::Cow<'_, str> {
    if message.chars().count() <= LONG_WORD {
        return message.into();
    }
    let mut out = String::with_capacity(LONG_WORD * 2);
    for (i, word) in message.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let n = word.chars().count();
        if n > LONG_WORD {
            out.extend(word.chars().take(LONG_WORD / 2));
            out.push_str(&format!("…({n} characters)"));
        } else {
            out.push_str(word);
        }
    }
    out.into()
}

/// See [`shorten`].
const LONG_WORD: usize = 120;

/// The findings of one run, with the text of the files they point into.
#[derive(Debug, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
    /// File texts by path, for showing lines (a map: a large project has thousands of files).
    sources: std::collections::HashMap<PathBuf, String>,
}

impl Diagnostics {
    pub fn new() -> Diagnostics {
        Diagnostics::default()
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    pub fn extend(&mut self, ds: impl IntoIterator<Item = Diagnostic>) {
        self.items.extend(ds);
    }

    /// Remember a file's text so that rendering can show its lines.
    pub fn add_source(&mut self, file: impl Into<PathBuf>, text: impl Into<String>) {
        self.sources
            .entry(file.into())
            .or_insert_with(|| text.into());
    }

    /// Read the text of every file a finding points into (relative to `root`), unless already known.
    /// Done once at the end, so a clean check of a large project copies no file texts.
    pub fn load_sources(&mut self, root: &Path) {
        let files: Vec<PathBuf> = self
            .items
            .iter()
            .filter_map(|d| d.file.clone())
            .filter(|f| !self.sources.contains_key(f))
            .collect();
        for f in files {
            if let Ok(text) = std::fs::read_to_string(root.join(&f)) {
                self.sources.insert(f, text);
            }
        }
    }

    pub fn merge(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
        for (f, t) in other.sources {
            self.add_source(f, t);
        }
    }

    pub fn items(&self) -> &[Diagnostic] {
        &self.items
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub fn warning_count(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Order by file, then position, then message, and drop exact repeats.
    pub fn sort(&mut self) {
        self.items.sort_by(|a, b| {
            (
                &a.file,
                a.pos.map(|p| (p.line, p.col)),
                a.severity,
                &a.message,
            )
                .cmp(&(
                    &b.file,
                    b.pos.map(|p| (p.line, p.col)),
                    b.severity,
                    &b.message,
                ))
        });
        self.items.dedup();
    }

    fn source(&self, file: &Path) -> Option<&str> {
        self.sources.get(file).map(|t| t.as_str())
    }

    /// Render every finding for a person: the message, `file:line:col`, the line with a caret, and help.
    pub fn render(&self, redactor: &Redactor) -> String {
        let mut files = SimpleFiles::new();
        let mut ids: Vec<(PathBuf, usize)> = Vec::new();
        let config = Config::default();
        let mut out = String::new();
        for d in &self.items {
            let mut cs = match d.severity {
                Severity::Error => CsDiagnostic::error(),
                Severity::Warning => CsDiagnostic::warning(),
            }
            .with_message(shorten(&d.message).into_owned());
            let mut plain_location = None;
            let mut excerpt = None;
            if let (Some(file), Some(pos)) = (&d.file, d.pos) {
                let long = self.source(file).and_then(|text| {
                    text.split('\n')
                        .nth(pos.line.saturating_sub(1))
                        .filter(|l| l.chars().count() > LONG_LINE)
                });
                if let Some(line) = long {
                    // The whole line would bury the message: a window of it around the column.
                    plain_location = Some(d.location());
                    excerpt = Some(window(line.trim_end_matches('\r'), pos));
                } else if let Some(text) = self.source(file) {
                    let id = match ids.iter().find(|(f, _)| f == file) {
                        Some((_, id)) => *id,
                        None => {
                            let id = files.add(file.display().to_string(), text.to_string());
                            ids.push((file.clone(), id));
                            id
                        }
                    };
                    cs = cs.with_labels(vec![Label::primary(id, byte_range(text, pos))]);
                } else {
                    plain_location = Some(d.location());
                }
            } else if d.file.is_some() {
                plain_location = Some(d.location());
            }
            let mut notes = Vec::new();
            if let Some(loc) = plain_location {
                notes.push(format!("in {loc}"));
            }
            if let Some(x) = excerpt {
                notes.push(x);
            }
            if let Some(h) = &d.help {
                notes.push(format!("help: {h}"));
            }
            cs = cs.with_notes(notes);
            match term::emit_into_string(&config, &files, &cs) {
                Ok(s) => out.push_str(&s),
                Err(_) => {
                    out.push_str(&d.short());
                    out.push('\n');
                }
            }
        }
        redactor.redact(&out)
    }

    /// One JSON document: `{"errors":N,"warnings":N,"diagnostics":[...]}`.
    pub fn to_json(&self, redactor: &Redactor) -> String {
        let doc = serde_json::json!({
            "errors": self.error_count(),
            "warnings": self.warning_count(),
            "diagnostics": self.items,
        });
        redactor.redact(&doc.to_string())
    }
}

/// Lines longer than this (in characters) are shown as a window around the column.
const LONG_LINE: usize = 200;
/// Characters shown on each side of the column in such a window.
const WINDOW_SIDE: usize = 60;

/// `…before|text|after…` of a long `line` around `pos`, and a caret line under the text.
fn window(line: &str, pos: Pos) -> String {
    let chars: Vec<char> = line.chars().collect();
    let at = pos.col.saturating_sub(1).min(chars.len());
    let len = pos.len.clamp(1, WINDOW_SIDE);
    let from = at.saturating_sub(WINDOW_SIDE);
    let to = (at + len + WINDOW_SIDE).min(chars.len());
    let mut shown: String = chars[from..to]
        .iter()
        .map(|c| if c.is_control() { ' ' } else { *c })
        .collect();
    let lead = if from > 0 { "…" } else { "" };
    if to < chars.len() {
        shown.push('…');
    }
    let pad = lead.chars().count() + (at - from);
    format!(
        "line {} is {} characters long; columns {}-{} of it:\n{lead}{shown}\n{}{}",
        pos.line,
        chars.len(),
        from + 1,
        to,
        " ".repeat(pad),
        "^".repeat(len.min(to.saturating_sub(at)).max(1))
    )
}

/// The byte range in `text` that `pos` covers (clamped to the line).
pub fn byte_range(text: &str, pos: Pos) -> Range<usize> {
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i + 1 == pos.line {
            let content = line.trim_end_matches(['\n', '\r']);
            let start = char_to_byte(content, pos.col.saturating_sub(1));
            let end = char_to_byte(content, pos.col.saturating_sub(1) + pos.len).max(start);
            if start == end {
                // An empty line or a position past its end: point at the line end.
                return offset + start..offset + start;
            }
            return offset + start..offset + end;
        }
        offset += line.len();
    }
    text.len()..text.len()
}

fn char_to_byte(s: &str, chars: usize) -> usize {
    s.char_indices()
        .nth(chars)
        .map(|(b, _)| b)
        .unwrap_or(s.len())
}

/// The nearest candidate to `word`, if one is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_lowercase();
    let mut best: Option<(&str, f64)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&lower, &c.to_lowercase());
        let close = score >= 0.8 || strsim::levenshtein(&lower, &c.to_lowercase()) <= 2;
        if close && best.is_none_or(|(_, s)| score > s) {
            best = Some((c, score));
        }
    }
    best.map(|(c, _)| c)
}

/// `, did you mean 'x'?` or nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    suggest(word, candidates)
        .map(|s| format!(", did you mean '{s}'?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_very_long_line_is_shown_as_a_window_around_the_column() {
        let mut line = "x".repeat(40_000);
        line.replace_range(20_000..20_003, "BAD");
        let text = format!("a: 1\nb: {line}\n");
        let mut ds = Diagnostics::default();
        ds.add_source("f.yaml", &text);
        ds.push(
            Diagnostic::error("bad-value", "bad value")
                .in_file("f.yaml")
                .at(Some(Pos {
                    line: 2,
                    col: 20_004,
                    len: 3,
                })),
        );
        let out = ds.render(&Redactor::default());
        assert!(out.len() < 1_000, "{} bytes: {out}", out.len());
        assert!(out.contains("in f.yaml:2:20004"), "{out}");
        assert!(
            out.contains("line 2 is 40003 characters long; columns 19944-20066 of it:"),
            "{out}"
        );
        let lines: Vec<&str> = out.lines().collect();
        let shown = lines
            .iter()
            .position(|l| l.contains("…x") && l.contains("BAD"))
            .expect(&out);
        let (text_line, caret_line) = (lines[shown], lines[shown + 1]);
        let col = |l: &str, pat: &str| l.find(pat).map(|b| l[..b].chars().count());
        assert_eq!(col(text_line, "BAD"), col(caret_line, "^^^"), "{out}");
        assert!(text_line.trim_end().ends_with('…'));
    }

    #[test]
    fn renders_caret_under_the_offending_text() {
        let mut ds = Diagnostics::new();
        ds.add_source("jobs/a.yaml", "job: a\nsteps:\n  - id: x\n    retires: 3\n");
        ds.push(
            Diagnostic::error(
                "unknown-field",
                "unknown field 'retires', did you mean 'retries'?",
            )
            .in_file("jobs/a.yaml")
            .at(Some(Pos::new(4, 5, 7))),
        );
        let out = ds.render(&Redactor::default());
        assert!(out.contains("jobs/a.yaml:4:5"), "{out}");
        assert!(out.contains("retires: 3"), "{out}");
        assert!(out.contains("^^^^^^^"), "{out}");
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("retires", ["retries", "timeout", "after"]),
            Some("retries")
        );
        assert_eq!(suggest("zzz", ["retries", "timeout"]), None);
    }

    #[test]
    fn json_has_location() {
        let mut ds = Diagnostics::new();
        ds.push(
            Diagnostic::error("x", "bad")
                .in_file("a.yaml")
                .at(Some(Pos::new(2, 3, 1))),
        );
        let j = ds.to_json(&Redactor::default());
        assert!(
            j.contains("\"line\":2") && j.contains("\"col\":3") && j.contains("\"errors\":1"),
            "{j}"
        );
    }
}
