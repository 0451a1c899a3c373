//! YAML documents with positions, and deserialisation that reports every error at its place.
//!
//! serde_yaml turns text into plain serde types but forgets where each value came from once it is a
//! `serde_yaml::Value`. This module keeps the two apart: [`SourceFile`] holds the text and builds, only
//! when a diagnostic needs one, an index from YAML paths (`steps[2].after[0]`) to line and column (from
//! yaml-rust2's marked events); [`deserialize`] turns a `Value` into a config struct through
//! serde_path_to_error, so every error knows its path, and recovers from an error by pruning the offending
//! value and trying again, so that one run reports every typo in a file, not only the first.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde_yaml::Value;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diag::{did_you_mean, Diagnostic, Pos};

/// One step of a path into a YAML document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path into a YAML document, displayed as `steps[2].after[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct YamlPath(pub Vec<Seg>);

impl YamlPath {
    pub fn root() -> YamlPath {
        YamlPath(Vec::new())
    }

    pub fn key(&self, k: impl Into<String>) -> YamlPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.into()));
        p
    }

    pub fn index(&self, i: usize) -> YamlPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    pub fn parent(&self) -> Option<YamlPath> {
        if self.0.is_empty() {
            None
        } else {
            Some(YamlPath(self.0[..self.0.len() - 1].to_vec()))
        }
    }

    pub fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Seg::Key(k)) => Some(k),
            _ => None,
        }
    }

    pub fn join(&self, other: &YamlPath) -> YamlPath {
        let mut p = self.clone();
        p.0.extend(other.0.iter().cloned());
        p
    }
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where a node is: its key (for mapping entries) and its value.
#[derive(Debug, Clone, Copy)]
struct NodeSpan {
    key: Option<Pos>,
    value: Pos,
}

/// A project file: its path relative to the project root, its text, and (lazily) its position index.
#[derive(Debug)]
pub struct SourceFile {
    pub rel: PathBuf,
    pub text: String,
    spans: OnceLock<Index>,
}

/// Positions of every node, and of the second occurrence of any duplicated key.
#[derive(Debug, Default)]
struct Index {
    nodes: HashMap<YamlPath, NodeSpan>,
    duplicates: Vec<(YamlPath, Pos)>,
}

impl SourceFile {
    pub fn new(rel: impl Into<PathBuf>, text: impl Into<String>) -> SourceFile {
        SourceFile {
            rel: rel.into(),
            text: text.into(),
            spans: OnceLock::new(),
        }
    }

    fn spans(&self) -> &HashMap<YamlPath, NodeSpan> {
        &self.index().nodes
    }

    fn index(&self) -> &Index {
        self.spans.get_or_init(|| index_positions(&self.text))
    }

    /// Where the key of `path` is written (for `steps[1].retires`: the word `retires`); for a sequence item,
    /// the item. Falls back to the nearest ancestor that has a position.
    pub fn key_pos(&self, path: &YamlPath) -> Option<Pos> {
        self.lookup(path, true)
    }

    /// Where the value of `path` is written. Falls back to the nearest ancestor.
    pub fn value_pos(&self, path: &YamlPath) -> Option<Pos> {
        self.lookup(path, false)
    }

    fn lookup(&self, path: &YamlPath, prefer_key: bool) -> Option<Pos> {
        let spans = self.spans();
        let mut p = path.clone();
        loop {
            if let Some(s) = spans.get(&p) {
                return Some(if prefer_key {
                    s.key.unwrap_or(s.value)
                } else {
                    s.value
                });
            }
            p = p.parent()?;
        }
    }

    /// A diagnostic in this file at the key of `path`.
    pub fn error_at_key(
        &self,
        path: &YamlPath,
        code: &'static str,
        msg: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic::error(code, msg)
            .in_file(&self.rel)
            .at(self.key_pos(path))
    }

    /// A diagnostic in this file at the value of `path`.
    pub fn error_at_value(
        &self,
        path: &YamlPath,
        code: &'static str,
        msg: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic::error(code, msg)
            .in_file(&self.rel)
            .at(self.value_pos(path))
    }

    /// Parse the text as YAML. A syntax error (or a duplicate key) is a diagnostic with its position.
    pub fn parse(&self) -> Result<Value, Box<Diagnostic>> {
        serde_yaml::from_str::<Value>(&self.text).map_err(|e| {
            let mut pos = e.location().map(|l| Pos::new(l.line(), l.column(), 1));
            let msg = yaml_error_message(&e);
            if msg.starts_with("duplicate key") {
                // serde_yaml points at the mapping; point at the repeated key instead.
                if let Some((_, p)) = self.index().duplicates.first() {
                    pos = Some(*p);
                }
            }
            Box::new(
                Diagnostic::error("yaml-syntax", msg)
                    .in_file(&self.rel)
                    .at(pos),
            )
        })
    }

    /// Where `line:col` (1-based) of the string value at `path` is written in the file. Block scalars
    /// keep their lines (`|`) or join them with spaces (`>`); quoted and plain scalars start after the
    /// opening quote.
    pub fn string_position(
        &self,
        path: &YamlPath,
        line: usize,
        col: usize,
    ) -> Option<(usize, usize)> {
        // yaml-rust2 places a block scalar at its content; its style is on the key's line.
        if let Some(key) = self.spans().get(path).and_then(|s| s.key) {
            let key_line = self.text.lines().nth(key.line - 1)?;
            let after: String = key_line.chars().skip(key.col - 1 + key.len).collect();
            let header = after.trim_start().trim_start_matches(':').trim_start();
            if header.starts_with('>') {
                return self.folded_position(key.line, line, col);
            }
        }
        let (l, c) = self.string_content_start(path)?;
        if line <= 1 {
            Some((l, c + col.saturating_sub(1)))
        } else {
            Some((l + line - 1, c + col.saturating_sub(1)))
        }
    }

    /// Map a position in a folded (`>`) block's value back to the block's lines.
    fn folded_position(
        &self,
        header_line: usize,
        line: usize,
        col: usize,
    ) -> Option<(usize, usize)> {
        // The block's lines: (file line, indent, content length) until the indentation ends.
        let mut block: Vec<Option<(usize, usize, usize)>> = Vec::new();
        let mut indent = None;
        for (i, l) in self.text.lines().enumerate().skip(header_line) {
            if l.trim().is_empty() {
                block.push(None);
                continue;
            }
            let ind = l.chars().take_while(|c| *c == ' ').count();
            let want = *indent.get_or_insert(ind);
            if ind < want {
                break;
            }
            block.push(Some((i + 1, ind, l.chars().count() - ind)));
        }
        // Paragraphs of non-blank lines are joined by spaces; each blank line is one line break.
        let mut vline = 1;
        let mut i = 0;
        while i < block.len() {
            let mut para = Vec::new();
            while let Some(Some(b)) = block.get(i) {
                para.push(*b);
                i += 1;
            }
            if !para.is_empty() && vline == line {
                let mut c = col;
                for (n, (file_line, ind, len)) in para.iter().enumerate() {
                    if c <= len + 1 || n + 1 == para.len() {
                        return Some((*file_line, ind + c));
                    }
                    c -= len + 1;
                }
            }
            let mut blanks = 0;
            while let Some(None) = block.get(i) {
                blanks += 1;
                i += 1;
            }
            vline += blanks.max(1);
        }
        block
            .iter()
            .flatten()
            .next()
            .map(|(l, ind, _)| (*l, ind + 1))
    }

    /// Where the content of a string value starts: for `query: |` block scalars, the first line of the
    /// block; otherwise the value's own position (after its opening quote, if quoted).
    pub fn string_content_start(&self, path: &YamlPath) -> Option<(usize, usize)> {
        let pos = self.value_pos(path)?;
        let line = self.text.lines().nth(pos.line - 1)?;
        let rest: String = line.chars().skip(pos.col - 1).collect();
        if rest.starts_with('|') || rest.starts_with('>') {
            let next = self.text.lines().nth(pos.line)?;
            let indent = next.chars().take_while(|c| *c == ' ').count();
            Some((pos.line + 1, indent + 1))
        } else if rest.starts_with('"') || rest.starts_with('\'') {
            Some((pos.line, pos.col + 1))
        } else {
            Some((pos.line, pos.col))
        }
    }
}

fn yaml_error_message(e: &serde_yaml::Error) -> String {
    let raw = e.to_string();
    // serde_yaml appends " at line L column C"; the position is shown separately.
    let msg = match raw.find(" at line ") {
        Some(i) => raw[..i].to_string(),
        None => raw,
    };
    // Nested duplicates come as `steps[0]: duplicate entry with key "kind"`.
    if let Some(i) = msg.find("duplicate entry with key ") {
        let rest = &msg[i + "duplicate entry with key ".len()..];
        return format!("duplicate key {rest}: each key may appear once in a mapping");
    }
    format!("invalid YAML: {msg}")
}

/// Build the path → position index with yaml-rust2's marked events.
fn index_positions(text: &str) -> Index {
    enum Frame {
        Map {
            path: YamlPath,
            key: Option<(String, Pos)>,
            seen: std::collections::HashSet<String>,
        },
        Seq {
            path: YamlPath,
            next: usize,
        },
    }
    struct Recv {
        stack: Vec<Frame>,
        out: HashMap<YamlPath, NodeSpan>,
        duplicates: Vec<(YamlPath, Pos)>,
        root_done: bool,
    }
    impl Recv {
        /// The path and key position of the value that starts now, advancing the parent frame.
        fn value_slot(&mut self) -> Option<(YamlPath, Option<Pos>)> {
            match self.stack.last_mut() {
                None => {
                    if self.root_done {
                        None
                    } else {
                        self.root_done = true;
                        Some((YamlPath::root(), None))
                    }
                }
                Some(Frame::Map { path, key, .. }) => {
                    key.take().map(|(k, kp)| (path.key(k), Some(kp)))
                }
                Some(Frame::Seq { path, next }) => {
                    let p = path.index(*next);
                    *next += 1;
                    Some((p, None))
                }
            }
        }
        fn expecting_key(&self) -> bool {
            matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
        }
    }
    impl MarkedEventReceiver for Recv {
        fn on_event(&mut self, ev: Event, mark: Marker) {
            let pos = |len: usize| Pos::new(mark.line(), mark.col() + 1, len);
            match ev {
                Event::Scalar(s, style, _, _) => {
                    let len = match style {
                        TScalarStyle::Plain => s.chars().count(),
                        TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => {
                            s.chars().count() + 2
                        }
                        _ => 1,
                    };
                    if self.expecting_key() {
                        if let Some(Frame::Map { key, seen, path }) = self.stack.last_mut() {
                            let first = seen.is_empty();
                            if !seen.insert(s.clone()) {
                                self.duplicates.push((path.key(s.as_str()), pos(len)));
                            }
                            *key = Some((s, pos(len)));
                            // A block mapping's start is reported at its first key's ':'; the mapping
                            // starts at the first key.
                            if first {
                                if let Some(node) = self.out.get_mut(path) {
                                    let k = pos(len);
                                    if (node.value.line, node.value.col) > (k.line, k.col) {
                                        node.value = Pos::new(k.line, k.col, 1);
                                    }
                                }
                            }
                        }
                    } else if let Some((p, key)) = self.value_slot() {
                        self.out.insert(
                            p,
                            NodeSpan {
                                key,
                                value: pos(len),
                            },
                        );
                    }
                }
                Event::Alias(_) => {
                    if let Some((p, key)) = self.value_slot() {
                        self.out.insert(p, NodeSpan { key, value: pos(1) });
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let is_map = matches!(ev, Event::MappingStart(..));
                    if self.expecting_key() {
                        // A complex key: index its content under a placeholder so the frames stay balanced.
                        if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                            *key = Some(("?".to_string(), pos(1)));
                        }
                    }
                    let (p, key) = self.value_slot().unwrap_or((YamlPath::root(), None));
                    self.out.insert(p.clone(), NodeSpan { key, value: pos(1) });
                    self.stack.push(if is_map {
                        Frame::Map {
                            path: p,
                            key: None,
                            seen: Default::default(),
                        }
                    } else {
                        Frame::Seq { path: p, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    self.stack.pop();
                }
                _ => {}
            }
        }
    }
    let mut recv = Recv {
        stack: Vec::new(),
        out: HashMap::new(),
        duplicates: Vec::new(),
        root_done: false,
    };
    let mut parser = Parser::new_from_str(text);
    // A syntax error was already reported by serde_yaml; keep whatever was indexed before it.
    let _ = parser.load(&mut recv, false);
    Index {
        nodes: recv.out,
        duplicates: recv.duplicates,
    }
}

/// Turn `value` (found at `base` in `file`) into `T`, reporting every error with its position.
///
/// `extra_fields` are names accepted next to T's own fields by the caller (they count for "did you mean").
/// Returns `None` only when no `T` could be built even after pruning the bad values.
pub fn deserialize<T: DeserializeOwned>(
    mut value: Value,
    file: &SourceFile,
    base: &YamlPath,
    extra_fields: &[&str],
    out: &mut Vec<Diagnostic>,
) -> Option<T> {
    let mut pruned: BTreeSet<String> = BTreeSet::new();
    // Fields a "did you mean" already pointed to: their "missing field" error would say it twice.
    let mut suggested: BTreeSet<String> = BTreeSet::new();
    for _ in 0..64 {
        let err = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let rel = convert_path(err.path());
        let msg = err.inner().to_string();
        let full = base.join(&rel);
        if let Some((field, expected)) = parse_unknown_field(&msg) {
            // serde_path_to_error's path ends at the mapping (or at the field itself, depending on the
            // deserializer); normalise to the key.
            let (map_rel, key_path) = if rel.last_key() == Some(field.as_str()) {
                (rel.parent().unwrap_or_default(), full.clone())
            } else {
                (rel.clone(), full.key(&field))
            };
            let candidates: Vec<&str> = expected
                .iter()
                .map(|s| s.as_str())
                .chain(extra_fields.iter().copied())
                .collect();
            let mut d = file.error_at_key(
                &key_path,
                "unknown-field",
                format!(
                    "unknown field '{field}'{}",
                    did_you_mean(&field, candidates.iter().copied())
                ),
            );
            match crate::diag::suggest(&field, candidates.iter().copied()) {
                Some(s) => {
                    suggested.insert(base.join(&map_rel).key(s).to_string());
                }
                None if !candidates.is_empty() => {
                    d = d.help(format!("valid fields here: {}", candidates.join(", ")));
                }
                None => {}
            }
            out.push(d);
            if !prune(&mut value, &map_rel.key(&field)) {
                return None;
            }
            continue;
        }
        if let Some(field) = msg
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            let key = full.key(field).to_string();
            if !pruned.contains(&key) && !suggested.contains(&key) {
                let what = if full.0.is_empty() {
                    "the file".to_string()
                } else {
                    format!("'{full}'")
                };
                out.push(file.error_at_key(
                    &full,
                    "missing-field",
                    format!("missing field '{field}' in {what}"),
                ));
            }
            return None;
        }
        let field_name = full.to_string();
        let message = friendly_type_error(&msg);
        out.push(file.error_at_value(
            &full,
            "invalid-value",
            if field_name.is_empty() {
                message
            } else {
                format!("invalid value for '{field_name}': {message}")
            },
        ));
        if rel.0.is_empty() || !prune(&mut value, &rel) {
            return None;
        }
        pruned.insert(full.to_string());
    }
    None
}

fn convert_path(p: &serde_path_to_error::Path) -> YamlPath {
    use serde_path_to_error::Segment;
    YamlPath(
        p.iter()
            .filter_map(|s| match s {
                Segment::Seq { index } => Some(Seg::Index(*index)),
                Segment::Map { key } => Some(Seg::Key(key.clone())),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect(),
    )
}

/// `unknown field `x`, expected one of `a`, `b`` → ("x", ["a", "b"]).
fn parse_unknown_field(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.to_string())
        .collect();
    Some((field.to_string(), expected))
}

fn friendly_type_error(msg: &str) -> String {
    let mut m = msg.to_string();
    for (from, to) in [
        ("expected u8", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected usize", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a boolean", "expected true or false"),
    ] {
        if m.ends_with(from) {
            m = format!("{}{}", &m[..m.len() - from.len()], to);
        }
    }
    if let Some(rest) = m.strip_prefix("unknown variant `") {
        if let Some((v, exp)) = rest.split_once('`') {
            let options: Vec<&str> = exp.split('`').skip(1).step_by(2).collect();
            return format!(
                "unknown value '{v}'{}; expected one of: {}",
                did_you_mean(v, options.iter().copied()),
                options.join(", ")
            );
        }
    }
    m
}

/// Remove the value at `path` (a mapping entry or a sequence item). Returns false if nothing was removed.
fn prune(value: &mut Value, path: &YamlPath) -> bool {
    let Some((last, parents)) = path.0.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(i), Value::Sequence(s)) => match s.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            (_, Value::Tagged(t)) => &mut t.value,
            _ => return false,
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Seg::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

/// Walk every string in `value`, calling `f(path, &mut string)`.
pub fn for_each_string(
    value: &mut Value,
    path: &YamlPath,
    f: &mut dyn FnMut(&YamlPath, &mut String),
) {
    match value {
        Value::String(s) => f(path, s),
        Value::Sequence(seq) => {
            for (i, v) in seq.iter_mut().enumerate() {
                for_each_string(v, &path.index(i), f);
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                for_each_string(v, &path.key(key), f);
            }
        }
        Value::Tagged(t) => for_each_string(&mut t.value, path, f),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        id: String,
        #[serde(default)]
        retries: Option<u32>,
        #[serde(default)]
        after: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        job: String,
        #[serde(default)]
        steps: Vec<Inner>,
    }

    #[test]
    fn positions_of_keys_and_values() {
        let f = SourceFile::new("a.yaml", "job: a\nsteps:\n  - id: x\n    after: [y, z]\n");
        let p = YamlPath::root().key("steps").index(0).key("after").index(1);
        assert_eq!(f.value_pos(&p).map(|p| (p.line, p.col)), Some((4, 16)));
        let k = YamlPath::root().key("steps").index(0).key("after");
        assert_eq!(
            f.key_pos(&k).map(|p| (p.line, p.col, p.len)),
            Some((4, 5, 5))
        );
    }

    #[test]
    fn reports_every_error_with_its_place() {
        let text = "job: a\nsteps:\n  - id: x\n    retires: 3\n  - id: y\n    retries: three\n    colour: red\n";
        let f = SourceFile::new("a.yaml", text);
        let v = f.parse().expect("valid yaml");
        let mut out = Vec::new();
        let o: Option<Outer> = deserialize(v, &f, &YamlPath::root(), &[], &mut out);
        assert!(o.is_some());
        let got: Vec<String> = out.iter().map(|d| d.short()).collect();
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(
            got[0].contains("a.yaml:4:5: unknown field 'retires', did you mean 'retries'?"),
            "{got:#?}"
        );
        assert!(
            got[1].contains("a.yaml:6:14: invalid value for 'steps[1].retries'"),
            "{got:#?}"
        );
        assert!(got[1].contains("expected a whole number"), "{got:#?}");
        assert!(
            got[2].contains("a.yaml:7:5: unknown field 'colour'"),
            "{got:#?}"
        );
    }

    #[test]
    fn missing_field_is_reported_once() {
        let f = SourceFile::new("a.yaml", "steps: []\n");
        let v = f.parse().expect("valid yaml");
        let mut out = Vec::new();
        let o: Option<Outer> = deserialize(v, &f, &YamlPath::root(), &[], &mut out);
        assert!(o.is_none());
        assert_eq!(out.len(), 1);
        assert!(
            out[0].message.contains("missing field 'job'"),
            "{:?}",
            out[0]
        );
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_have_positions() {
        let f = SourceFile::new("a.yaml", "job: a\nsteps: [\n");
        let d = f.parse().expect_err("bad yaml");
        assert!(d.pos.is_some(), "{d:?}");
        let f = SourceFile::new("a.yaml", "job: a\njob: b\n");
        let d = f.parse().expect_err("duplicate");
        assert!(d.message.contains("duplicate key"), "{d:?}");
        assert_eq!(d.pos.map(|p| p.line), Some(2));
    }

    #[test]
    fn folded_block_positions_map_to_their_lines() {
        let f = SourceFile::new(
            "a.yaml",
            "steps:\n  - id: x\n    query: >\n      SELECT count(*)\n      FROM t\n      WHERE a = = 1\n    kind: sql\n",
        );
        let p = YamlPath::root().key("steps").index(0).key("query");
        // "SELECT count(*) FROM t WHERE a = = 1": column 34 is the second '='.
        assert_eq!(f.string_position(&p, 1, 34), Some((6, 17)));
        assert_eq!(f.string_position(&p, 1, 1), Some((4, 7)));
    }

    #[test]
    fn block_scalar_content_start() {
        let f = SourceFile::new("a.yaml", "query: |\n  SELECT 1\n");
        assert_eq!(
            f.string_content_start(&YamlPath::root().key("query")),
            Some((2, 3))
        );
    }
}
