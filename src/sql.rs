//! SQL dialects, statement splitting, parsing and table lineage.
//!
//! cranium runs SQL scripts (rendered from templates, see [`crate::template`]) against PostgreSQL,
//! Redshift and MySQL. Before anything runs, `check` needs to know three things about a script: where
//! each statement starts (to run them one by one and to point at the failing one), whether it parses,
//! and which tables it reads and writes (to wire the DAG). This module answers them without I/O.
//!
//! Rules:
//! - **Splitting** uses sqlparser's tokenizer for the dialect, so a `;` inside a string, a quoted
//!   identifier, a comment or a PostgreSQL dollar-quoted body (`$$ … $$`) does not split, and neither
//!   does a `;` inside parentheses. A statement's text runs from its first to its last token that is
//!   not whitespace or a comment (comments inside it are kept, the terminating `;` is not); pieces
//!   holding only whitespace and comments are dropped. Lines and columns are 1-based, columns count
//!   characters.
//! - **Errors** carry the line/column in the whole text given (sqlparser's `at Line: L, Column: C` is
//!   removed from the message and put into [`SqlError::line`]/[`SqlError::col`]). An error at the end
//!   of input (sqlparser gives no position there) points just after the statement's last token.
//! - **Redshift statements sqlparser cannot parse.** sqlparser 0.64 parses most Redshift `COPY`
//!   (`IAM_ROLE`, `CREDENTIALS`, `MANIFEST`, `FORMAT [AS] CSV|JSON|PARQUET`, `GZIP`, `BZIP2`, `ZSTD`,
//!   `REGION`, `DELIMITER`, `IGNOREHEADER`, `DATEFORMAT`, `TIMEFORMAT`, `ACCEPTINVCHARS`,
//!   `TRUNCATECOLUMNS`, `BLANKSASNULL`, `EMPTYASNULL`, `COMPUPDATE`, `STATUPDATE`, …), `UNLOAD`,
//!   `VACUUM` and `ANALYZE` natively. It rejects some `COPY` options (`MAXERROR`, `AVRO`, `ORC`,
//!   `LZOP`, `ENCODING`, `EXPLICIT_IDS`, `FILLRECORD`, `IGNOREBLANKLINES`, `ROUNDEC`, `TRIMBLANKS`,
//!   `COMPROWS`, `NOLOAD`, `SERIALIZETOJSON`, `ACCESS_KEY_ID`, `SESSION_TOKEN`, …), some `UNLOAD`
//!   options (`KMS_KEY_ID`, …), `ANALYZE … PREDICATE COLUMNS`, `ALTER TABLE t APPEND FROM s`, and it
//!   misreads `ANALYZE COMPRESSION` (as `ANALYZE` of a table named `compression`). For the Redshift
//!   dialect only, such statements are accepted as *opaque*: their options are not checked, and
//!   [`parse`] returns a simplified equivalent statement that keeps what lineage needs:
//!   `COPY t [(cols)] FROM '…'` (writes `t`), `UNLOAD ('query') TO '…'` (reads what the inner query
//!   reads), `ANALYZE [t]` / `VACUUM [t]` (reads `t`), and `INSERT INTO t SELECT * FROM s` for
//!   `ALTER TABLE t APPEND FROM s`. The original text is always in [`StatementSource::text`].
//!   If even the targeted pattern does not match (e.g. `COPY` without `FROM`), sqlparser's error is
//!   reported.
//! - **Lineage.** Writes: the target of `INSERT` (also `REPLACE INTO`, `INSERT OVERWRITE`),
//!   `CREATE TABLE [AS]`, `CREATE [MATERIALIZED] VIEW`, `UPDATE`, `DELETE`, `MERGE`, `TRUNCATE`,
//!   `DROP TABLE/VIEW/MATERIALIZED VIEW`, `ALTER TABLE` (and the new name of a rename/swap),
//!   `COPY t FROM`, `REFRESH MATERIALIZED VIEW`, `SELECT … INTO t`. Reads: every other relation
//!   referenced (FROM, JOIN, subqueries, `USING` of MERGE/DELETE, `UPDATE … FROM`, `COPY t TO`,
//!   `CREATE TABLE … LIKE s`, `ANALYZE t`, `VACUUM t`, the query of `UNLOAD`), except names of CTEs
//!   in scope (`WITH x AS (…) SELECT … FROM x` does not read `x`) and table functions
//!   (`generate_series(…)`). A table read and written by one statement is in both sets. Names are
//!   normalised: unquoted identifiers lower-cased, quoted ones kept as written (without the quotes),
//!   parts joined with `.`.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::ops::{ControlFlow, Range};
use std::str::FromStr;

use sqlparser::ast::{
    Analyze, CopySource, CopyTarget, CreateTableLikeKind, Expr, FromTable, Ident, ObjectName,
    ObjectNamePart, ObjectType, Query, RenameTableNameKind, Select, Statement, TableFactor,
    TableObject, VacuumStatement, Visit, Visitor,
};
use sqlparser::dialect::{MySqlDialect, PostgreSqlDialect, RedshiftSqlDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{IsOptional, Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

static POSTGRES: PostgreSqlDialect = PostgreSqlDialect {};
static REDSHIFT: RedshiftSqlDialect = RedshiftSqlDialect {};
static MYSQL: MySqlDialect = MySqlDialect {};

/// The SQL dialects cranium talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    Postgres,
    Redshift,
    MySql,
}

impl Dialect {
    /// All dialects, in a stable order.
    pub const ALL: [Dialect; 3] = [Dialect::Postgres, Dialect::Redshift, Dialect::MySql];

    /// Short lower-case name (`postgres`, `redshift`, `mysql`), as written in config files.
    pub fn name(&self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::Redshift => "redshift",
            Dialect::MySql => "mysql",
        }
    }

    /// The sqlparser dialect object used to tokenize and parse this dialect.
    pub fn parser_dialect(&self) -> &'static dyn sqlparser::dialect::Dialect {
        match self {
            Dialect::Postgres => &POSTGRES,
            Dialect::Redshift => &REDSHIFT,
            Dialect::MySql => &MYSQL,
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dialect {
    type Err = String;

    /// Accepts the [`Dialect::name`]s, case-insensitively, plus `postgresql`.
    fn from_str(s: &str) -> Result<Dialect, String> {
        match s.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "redshift" => Ok(Dialect::Redshift),
            "mysql" => Ok(Dialect::MySql),
            _ => Err(format!(
                "unknown SQL dialect '{s}' (expected postgres, redshift or mysql)"
            )),
        }
    }
}

/// One statement of a script, as written (text preserved, comments kept), with where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementSource {
    /// The statement's text, from its first to its last token (no terminating `;`).
    pub text: String,
    /// 1-based line of the statement's first token in the whole script.
    pub line: usize,
    /// 1-based column (in characters) of the statement's first token.
    pub col: usize,
    /// Byte range of `text` in the whole script.
    pub byte_range: Range<usize>,
}

/// A tokenizer or parser error, positioned in the text that was given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    /// What is wrong, without the position (e.g. `Expected: an expression, found: FROM`).
    pub message: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
}

/// Tables a script reads and writes (normalised names, see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    pub reads: BTreeSet<String>,
    pub writes: BTreeSet<String>,
}

impl Lineage {
    /// Add another lineage into this one.
    pub fn merge(&mut self, other: Lineage) {
        self.reads.extend(other.reads);
        self.writes.extend(other.writes);
    }
}

// ---------------------------------------------------------------------------------------------
// Quoting

/// Quote `value` as a SQL string literal for `dialect` (rules in [`crate::template`]'s docs):
/// PostgreSQL doubles `'`; Redshift doubles `'` and `\`; MySQL escapes `\` `'` NUL `\n` `\r` and
/// 0x1a. PostgreSQL and Redshift cannot store NUL in text, so a NUL is an error there.
pub fn quote_literal(dialect: Dialect, value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    match dialect {
        Dialect::Postgres | Dialect::Redshift => {
            if value.contains('\0') {
                return Err(format!(
                    "a string with a NUL character cannot be a {} literal",
                    dialect.name()
                ));
            }
            for c in value.chars() {
                match c {
                    '\'' => out.push_str("''"),
                    '\\' if dialect == Dialect::Redshift => out.push_str("\\\\"),
                    c => out.push(c),
                }
            }
        }
        Dialect::MySql => {
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\'' => out.push_str("''"),
                    '\0' => out.push_str("\\0"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\u{1a}' => out.push_str("\\Z"),
                    c => out.push(c),
                }
            }
        }
    }
    out.push('\'');
    Ok(out)
}

/// Quote `name` as one identifier: `"name"` with `""` doubling for PostgreSQL/Redshift, `` `name` ``
/// with backtick doubling for MySQL. Empty names and NUL characters are errors.
pub fn quote_identifier(dialect: Dialect, name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("an identifier cannot be empty".to_string());
    }
    if name.contains('\0') {
        return Err("an identifier cannot contain a NUL character".to_string());
    }
    let q = match dialect {
        Dialect::Postgres | Dialect::Redshift => '"',
        Dialect::MySql => '`',
    };
    let mut out = String::with_capacity(name.len() + 2);
    out.push(q);
    for c in name.chars() {
        if c == q {
            out.push(q);
        }
        out.push(c);
    }
    out.push(q);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Positions

/// Converts sqlparser locations (1-based line, 1-based character column) into byte offsets.
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> LineIndex<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    fn offset(&self, loc: Location) -> usize {
        if loc.line == 0 {
            return 0;
        }
        let Some(&start) = usize::try_from(loc.line - 1)
            .ok()
            .and_then(|l| self.starts.get(l))
        else {
            return self.text.len();
        };
        let skip = usize::try_from(loc.column.saturating_sub(1)).unwrap_or(usize::MAX);
        let rest = &self.text[start..];
        let mut off = start;
        for (n, (i, c)) in rest.char_indices().enumerate() {
            if n == skip || c == '\n' {
                return start + i;
            }
            off = start + i + c.len_utf8();
        }
        off
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Split sqlparser's `… at Line: L, Column: C` into the message and the position.
fn split_position(msg: &str) -> (String, Option<(usize, usize)>) {
    if let Some(i) = msg.rfind(" at Line: ") {
        let tail = &msg[i + " at Line: ".len()..];
        if let Some((l, c)) = tail.split_once(", Column: ") {
            if let (Ok(l), Ok(c)) = (l.trim().parse::<usize>(), c.trim().parse::<usize>()) {
                return (msg[..i].to_string(), Some((l, c)));
            }
        }
    }
    (msg.to_string(), None)
}

fn parser_error(err: ParserError, fallback: Location) -> SqlError {
    let raw = match err {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => {
            "statement is nested too deeply (recursion limit exceeded)".to_string()
        }
    };
    let (message, pos) = split_position(&raw);
    let (line, col) = pos.unwrap_or((to_usize(fallback.line), to_usize(fallback.column)));
    SqlError {
        message,
        line: line.max(1),
        col: col.max(1),
    }
}

// ---------------------------------------------------------------------------------------------
// Splitting

/// A statement's tokens plus where it is.
struct Piece {
    source: StatementSource,
    tokens: Vec<TokenWithSpan>,
    end: Location,
}

fn tokenize(dialect: Dialect, sql: &str) -> Result<Vec<TokenWithSpan>, SqlError> {
    Tokenizer::new(dialect.parser_dialect(), sql)
        .tokenize_with_location()
        .map_err(|e| SqlError {
            message: e.message,
            line: to_usize(e.location.line).max(1),
            col: to_usize(e.location.column).max(1),
        })
}

fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

fn split_pieces(dialect: Dialect, sql: &str) -> Result<Vec<Piece>, SqlError> {
    let tokens = tokenize(dialect, sql)?;
    let index = LineIndex::new(sql);
    let mut pieces = Vec::new();
    let mut current: Vec<TokenWithSpan> = Vec::new();
    let mut depth = 0usize;
    let mut flush = |current: &mut Vec<TokenWithSpan>| {
        let toks = std::mem::take(current);
        let first = toks.iter().position(|t| !is_trivia(&t.token));
        let last = toks.iter().rposition(|t| !is_trivia(&t.token));
        if let (Some(first), Some(last)) = (first, last) {
            let toks: Vec<TokenWithSpan> = toks[first..=last].to_vec();
            let start = toks[0].span.start;
            // Tokens are in source order except a COPY payload, so take the furthest end.
            let end = toks.iter().map(|t| t.span.end).max().unwrap_or(start);
            let (b0, b1) = (index.offset(start), index.offset(end));
            let b1 = b1.max(b0);
            pieces.push(Piece {
                source: StatementSource {
                    text: sql[b0..b1].to_string(),
                    line: to_usize(start.line),
                    col: to_usize(start.column),
                    byte_range: b0..b1,
                },
                tokens: toks,
                end,
            });
        }
    };
    for tok in tokens {
        match tok.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::SemiColon if depth == 0 => {
                flush(&mut current);
                continue;
            }
            _ => {}
        }
        current.push(tok);
    }
    flush(&mut current);
    Ok(pieces)
}

/// Split on top-level `;` using sqlparser's tokenizer (so `;` inside strings, quoted identifiers,
/// comments and PostgreSQL dollar-quoted bodies do not split); drops empty/comment-only pieces;
/// line/col 1-based.
pub fn split_statements(dialect: Dialect, sql: &str) -> Result<Vec<StatementSource>, SqlError> {
    Ok(split_pieces(dialect, sql)?
        .into_iter()
        .map(|p| p.source)
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Parsing

fn parse_piece(dialect: Dialect, piece: &Piece) -> Result<Vec<Statement>, SqlError> {
    let d = dialect.parser_dialect();
    let opaque_first = dialect == Dialect::Redshift && starts_with_analyze_compression(piece);
    if opaque_first {
        if let Some(stmt) = redshift_opaque(piece) {
            return Ok(vec![stmt]);
        }
    }
    let native = Parser::new(d)
        .with_tokens_with_locations(piece.tokens.clone())
        .parse_statements();
    match native {
        Ok(stmts) => Ok(stmts),
        Err(e) => {
            if dialect == Dialect::Redshift {
                if let Some(stmt) = redshift_opaque(piece) {
                    return Ok(vec![stmt]);
                }
            }
            Err(parser_error(e, piece.end))
        }
    }
}

fn parse_all(
    dialect: Dialect,
    sql: &str,
) -> Result<(Vec<StatementSource>, Vec<Statement>), SqlError> {
    let pieces = split_pieces(dialect, sql)?;
    let mut statements = Vec::with_capacity(pieces.len());
    for piece in &pieces {
        statements.extend(parse_piece(dialect, piece)?);
    }
    Ok((pieces.into_iter().map(|p| p.source).collect(), statements))
}

/// Parse a (rendered) script. Errors carry line/col in `sql`.
pub fn parse(dialect: Dialect, sql: &str) -> Result<Vec<Statement>, SqlError> {
    parse_all(dialect, sql).map(|(_, s)| s)
}

/// Convenience: split, parse each statement (so an error in statement 3 reports its line in the
/// whole script), and merge lineage.
pub fn analyze(dialect: Dialect, sql: &str) -> Result<(Vec<StatementSource>, Lineage), SqlError> {
    let (sources, statements) = parse_all(dialect, sql)?;
    Ok((sources, lineage(&statements)))
}

// ---------------------------------------------------------------------------------------------
// Redshift statements sqlparser cannot parse

fn keyword_of(t: &TokenWithSpan) -> Option<Keyword> {
    match &t.token {
        Token::Word(w) => Some(w.keyword),
        _ => None,
    }
}

fn significant(piece: &Piece) -> impl Iterator<Item = &TokenWithSpan> {
    piece.tokens.iter().filter(|t| !is_trivia(&t.token))
}

fn starts_with_analyze_compression(piece: &Piece) -> bool {
    let mut it = significant(piece);
    matches!(
        (
            it.next().and_then(keyword_of),
            it.next().and_then(keyword_of)
        ),
        (Some(Keyword::ANALYZE), Some(Keyword::COMPRESSION))
    )
}

/// A parser over the piece's tokens for the targeted patterns.
fn redshift_parser(piece: &Piece) -> Parser<'static> {
    Parser::new(&REDSHIFT).with_tokens_with_locations(piece.tokens.clone())
}

/// Accept a Redshift statement sqlparser rejected (or misreads) when it starts with a known
/// keyword, returning a simplified equivalent statement for lineage. None: not such a statement,
/// or the targeted pattern does not match either.
fn redshift_opaque(piece: &Piece) -> Option<Statement> {
    let mut it = significant(piece);
    let first = it.next().and_then(keyword_of)?;
    let second = it.next().and_then(keyword_of);
    match (first, second) {
        (Keyword::COPY, _) => opaque_copy(piece).ok(),
        (Keyword::UNLOAD, _) => opaque_unload(piece).ok(),
        (Keyword::VACUUM, _) => Some(opaque_vacuum(piece)),
        (Keyword::ANALYZE, _) => Some(opaque_analyze(piece)),
        (Keyword::ALTER, Some(Keyword::TABLE)) => opaque_alter_append(piece).ok(),
        _ => None,
    }
}

/// `COPY t [(cols)] FROM 'source' …` → `COPY t [(cols)] FROM 'source'`.
fn opaque_copy(piece: &Piece) -> Result<Statement, ParserError> {
    let mut p = redshift_parser(piece);
    p.expect_keyword(Keyword::COPY)?;
    let table_name = p.parse_object_name(false)?;
    let columns = p.parse_parenthesized_column_list(IsOptional::Optional, false)?;
    p.expect_keyword(Keyword::FROM)?;
    let filename = p.parse_literal_string()?;
    Ok(Statement::Copy {
        source: CopySource::Table {
            table_name,
            columns,
        },
        to: false,
        target: CopyTarget::File { filename },
        options: vec![],
        legacy_options: vec![],
        payload: None,
    })
}

/// `UNLOAD ('query') TO 'target' …` → `UNLOAD (query) TO 'target'` (the query parsed when it can be).
fn opaque_unload(piece: &Piece) -> Result<Statement, ParserError> {
    let mut p = redshift_parser(piece);
    p.expect_keyword(Keyword::UNLOAD)?;
    p.expect_token(&Token::LParen)?;
    let text = p.parse_literal_string()?;
    p.expect_token(&Token::RParen)?;
    p.expect_keyword(Keyword::TO)?;
    let to = p.parse_literal_string()?;
    let query = match Parser::parse_sql(&REDSHIFT, &text) {
        Ok(mut v) if v.len() == 1 => match v.pop() {
            Some(Statement::Query(q)) => Some(q),
            _ => None,
        },
        _ => None,
    };
    let query_text = if query.is_some() { None } else { Some(text) };
    Ok(Statement::Unload {
        query,
        query_text,
        to: Ident::with_quote('\'', to),
        auth: None,
        with: vec![],
        options: vec![],
    })
}

/// Skip leading option keywords, then read an optional table name.
fn table_after_options(p: &mut Parser<'_>, options: &[Keyword]) -> Option<ObjectName> {
    while options.iter().any(|k| p.parse_keyword(*k)) {}
    // Words that start a trailing clause rather than name a table.
    const CLAUSES: [&str; 6] = ["TO", "BOOST", "PREDICATE", "ALL", "COMPROWS", "VERBOSE"];
    match p.peek_token().token {
        Token::Word(w)
            if w.quote_style.is_some()
                || !CLAUSES.iter().any(|c| w.value.eq_ignore_ascii_case(c)) =>
        {
            p.parse_object_name(false).ok()
        }
        _ => None,
    }
}

/// `VACUUM [options] [t] …` → `VACUUM [t]`.
fn opaque_vacuum(piece: &Piece) -> Statement {
    let mut p = redshift_parser(piece);
    let _ = p.parse_keyword(Keyword::VACUUM);
    let opts = [
        Keyword::FULL,
        Keyword::SORT,
        Keyword::DELETE,
        Keyword::ONLY,
        Keyword::REINDEX,
        Keyword::RECLUSTER,
    ];
    let table_name = table_after_options(&mut p, &opts);
    Statement::Vacuum(VacuumStatement {
        full: false,
        sort_only: false,
        delete_only: false,
        reindex: false,
        recluster: false,
        table_name,
        threshold: None,
        boost: false,
    })
}

/// `ANALYZE [COMPRESSION] [VERBOSE] [t] …` → `ANALYZE [t]`.
fn opaque_analyze(piece: &Piece) -> Statement {
    let mut p = redshift_parser(piece);
    let _ = p.parse_keyword(Keyword::ANALYZE);
    let table_name = table_after_options(&mut p, &[Keyword::COMPRESSION, Keyword::VERBOSE]);
    Statement::Analyze(Analyze {
        table_name,
        partitions: None,
        for_columns: false,
        columns: vec![],
        cache_metadata: false,
        noscan: false,
        compute_statistics: false,
        has_table_keyword: false,
    })
}

/// `ALTER TABLE t APPEND FROM s …` → `INSERT INTO t SELECT * FROM s` (same lineage).
fn opaque_alter_append(piece: &Piece) -> Result<Statement, ParserError> {
    let mut p = redshift_parser(piece);
    p.expect_keyword(Keyword::ALTER)?;
    p.expect_keyword(Keyword::TABLE)?;
    let target = p.parse_object_name(false)?;
    match p.next_token().token {
        Token::Word(w) if w.value.eq_ignore_ascii_case("APPEND") => {}
        _ => return Err(ParserError::ParserError("not ALTER TABLE … APPEND".into())),
    }
    p.expect_keyword(Keyword::FROM)?;
    let source = p.parse_object_name(false)?;
    let mut stmts = Parser::parse_sql(
        &REDSHIFT,
        &format!("INSERT INTO {target} SELECT * FROM {source}"),
    )?;
    stmts
        .pop()
        .ok_or_else(|| ParserError::ParserError("empty".into()))
}

// ---------------------------------------------------------------------------------------------
// Lineage

fn norm_ident(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

/// Normalised table name: unquoted parts lower-cased, quoted ones kept, joined with `.`.
pub fn normalize_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(id) => norm_ident(id),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[derive(Default)]
struct LineageVisitor {
    lineage: Lineage,
    /// Addresses of `ObjectName`s that are write targets (or table functions): not reads.
    skip: HashSet<usize>,
    /// CTE names in scope, one frame per enclosing query.
    ctes: Vec<Vec<String>>,
}

fn addr(name: &ObjectName) -> usize {
    name as *const ObjectName as usize
}

impl LineageVisitor {
    fn write(&mut self, name: &ObjectName) {
        self.lineage.writes.insert(normalize_name(name));
    }

    fn read(&mut self, name: &ObjectName) {
        self.lineage.reads.insert(normalize_name(name));
    }

    /// A write target that the relation visitor will also see: write it, and don't count it as a read.
    fn target(&mut self, name: &ObjectName) {
        self.write(name);
        self.skip.insert(addr(name));
    }

    fn factor_target(&mut self, factor: &TableFactor) {
        if let TableFactor::Table { name, .. } = factor {
            self.target(name);
        }
    }

    fn statement_targets(&mut self, stmt: &Statement) {
        match stmt {
            Statement::Insert(ins) => {
                if let TableObject::TableName(name) = &ins.table {
                    self.target(name);
                }
            }
            Statement::CreateTable(ct) => {
                self.target(&ct.name);
                if let Some(CreateTableLikeKind::Parenthesized(l) | CreateTableLikeKind::Plain(l)) =
                    &ct.like
                {
                    self.read(&l.name);
                }
                if let Some(c) = &ct.clone {
                    self.read(c);
                }
            }
            Statement::CreateView(cv) => self.target(&cv.name),
            Statement::RefreshMaterializedView(r) => self.target(&r.name),
            Statement::Update(u) => self.factor_target(&u.table.relation),
            Statement::Delete(d) => {
                let from = match &d.from {
                    FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v) => v,
                };
                if d.tables.is_empty() {
                    for twj in from {
                        self.factor_target(&twj.relation);
                    }
                } else {
                    // MySQL multi-table DELETE: `DELETE a FROM t AS a JOIN u …`.
                    for t in &d.tables {
                        let wanted = normalize_name(t);
                        let mut found = false;
                        let factors = from.iter().flat_map(|twj| {
                            std::iter::once(&twj.relation)
                                .chain(twj.joins.iter().map(|j| &j.relation))
                        });
                        for factor in factors {
                            if let TableFactor::Table { name, alias, .. } = factor {
                                let by_alias = t.0.len() == 1
                                    && alias
                                        .as_ref()
                                        .is_some_and(|a| norm_ident(&a.name) == wanted);
                                if by_alias || normalize_name(name) == wanted {
                                    self.target(name);
                                    found = true;
                                }
                            }
                        }
                        if !found {
                            self.write(t);
                        }
                    }
                }
            }
            Statement::Merge(m) => self.factor_target(&m.table),
            Statement::Truncate(t) => {
                for target in &t.table_names {
                    self.target(&target.name);
                }
            }
            Statement::Drop {
                object_type, names, ..
            } => {
                if matches!(
                    object_type,
                    ObjectType::Table | ObjectType::View | ObjectType::MaterializedView
                ) {
                    for n in names {
                        self.write(n);
                    }
                }
            }
            Statement::AlterTable(a) => {
                self.target(&a.name);
                for op in &a.operations {
                    match op {
                        sqlparser::ast::AlterTableOperation::RenameTable {
                            table_name: RenameTableNameKind::As(n) | RenameTableNameKind::To(n),
                        } => self.write(n),
                        sqlparser::ast::AlterTableOperation::SwapWith { table_name } => {
                            self.write(table_name)
                        }
                        _ => {}
                    }
                }
            }
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                to,
                ..
            } => {
                if *to {
                    self.read(table_name);
                } else {
                    self.write(table_name);
                }
            }
            Statement::Unload {
                query: None,
                query_text: Some(text),
                ..
            } => {
                // UNLOAD is Redshift-only; its query is a string literal.
                if let Ok(inner) = Parser::parse_sql(&REDSHIFT, text) {
                    self.lineage.reads.extend(lineage(&inner).reads);
                }
            }
            Statement::Vacuum(v) => {
                if let Some(n) = &v.table_name {
                    self.read(n);
                }
            }
            _ => {}
        }
    }
}

impl Visitor for LineageVisitor {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        self.statement_targets(stmt);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let names = query
            .with
            .as_ref()
            .map(|w| {
                w.cte_tables
                    .iter()
                    .map(|c| norm_ident(&c.alias.name))
                    .collect()
            })
            .unwrap_or_default();
        self.ctes.push(names);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.ctes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        // PostgreSQL `SELECT … INTO new_table`; MySQL `INTO @var` is a variable, not a table.
        if let Some(into) = &select.into {
            for target in &into.targets {
                let name = match target {
                    Expr::Identifier(id) => ObjectName::from(vec![id.clone()]),
                    Expr::CompoundIdentifier(ids) => ObjectName::from(ids.clone()),
                    _ => continue,
                };
                if !normalize_name(&name).starts_with('@') {
                    self.write(&name);
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name,
            args: Some(_),
            ..
        } = factor
        {
            // A table function such as generate_series(…), not a relation.
            self.skip.insert(addr(name));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if self.skip.contains(&addr(relation)) {
            return ControlFlow::Continue(());
        }
        let name = normalize_name(relation);
        if relation.0.len() == 1 && self.ctes.iter().any(|frame| frame.contains(&name)) {
            return ControlFlow::Continue(());
        }
        self.lineage.reads.insert(name);
        ControlFlow::Continue(())
    }
}

/// Tables a script reads and writes, names normalised (unquoted identifiers lower-cased, quoted
/// kept, parts joined with '.').
pub fn lineage(statements: &[Statement]) -> Lineage {
    let mut total = Lineage::default();
    for stmt in statements {
        let mut v = LineageVisitor::default();
        let _ = stmt.visit(&mut v);
        total.merge(v.lineage);
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Mapping rendered positions back to the template source

/// A piece of one template source line: literal text, or a tag (`{{ }}`, `{% %}`, `{# #}`).
#[derive(Debug)]
struct Segment<'a> {
    /// Character column (0-based) where the segment starts in the source line.
    start: usize,
    text: &'a str,
    tag: bool,
}

/// Split one source line into literal text and template tags (tags that do not close on the
/// line run to its end).
fn segments(line: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut lit_start = 0usize; // byte
    let mut i = 0usize; // byte
    let bytes = line.as_bytes();
    while i + 1 < bytes.len() {
        let close = match (bytes[i], bytes[i + 1]) {
            (b'{', b'{') => "}}",
            (b'{', b'%') => "%}",
            (b'{', b'#') => "#}",
            _ => {
                i += 1;
                continue;
            }
        };
        if lit_start < i {
            out.push(Segment {
                start: line[..lit_start].chars().count(),
                text: &line[lit_start..i],
                tag: false,
            });
        }
        let end = line[i + 2..]
            .find(close)
            .map(|j| i + 2 + j + 2)
            .unwrap_or(line.len());
        out.push(Segment {
            start: line[..i].chars().count(),
            text: &line[i..end],
            tag: true,
        });
        i = end;
        lit_start = end;
    }
    if lit_start < line.len() {
        out.push(Segment {
            start: line[..lit_start].chars().count(),
            text: &line[lit_start..],
            tag: false,
        });
    }
    out
}

/// Map a 1-based character column of a rendered line to the matching source line's column.
fn map_column(src_line: &str, rendered_line: &str, col: usize) -> usize {
    let segs = segments(src_line);
    let rendered: Vec<char> = rendered_line.chars().collect();
    let target = col.saturating_sub(1); // 0-based
    let mut pos = 0usize; // 0-based position in rendered chars
    let find_from = |needle: &str, from: usize| -> Option<usize> {
        let n: Vec<char> = needle.chars().collect();
        if n.is_empty() || n.len() > rendered.len() || from > rendered.len() - n.len() {
            return None;
        }
        (from..=rendered.len().saturating_sub(n.len())).find(|&k| rendered[k..k + n.len()] == n[..])
    };
    for (k, seg) in segs.iter().enumerate() {
        let len = seg.text.chars().count();
        if !seg.tag {
            if target < pos + len {
                return seg.start + (target - pos) + 1;
            }
            pos += len;
            continue;
        }
        // Where does the next literal text resume in the rendered line?
        let next_lit = segs[k + 1..].iter().find(|s| !s.tag);
        let resume = match next_lit {
            None => rendered.len(),
            Some(lit) => {
                let is_last = segs.last().is_some_and(|l| std::ptr::eq(l, lit));
                let lit_chars = lit.text.chars().count();
                if is_last && rendered_line.ends_with(lit.text) && rendered.len() >= pos + lit_chars
                {
                    rendered.len() - lit_chars
                } else {
                    find_from(lit.text, pos).unwrap_or(pos)
                }
            }
        };
        if target < resume {
            return seg.start + 1;
        }
        pos = resume.max(pos);
    }
    // Past the end: keep the offset past the source line's end.
    let src_len = src_line.chars().count();
    src_len + 1 + target.saturating_sub(pos)
}

/// How well a source line explains a rendered line: characters of its literal text found in order.
fn line_score(src_line: &str, rendered_line: &str) -> usize {
    let mut score = 0;
    let mut rest = rendered_line;
    for seg in segments(src_line) {
        if seg.tag {
            continue;
        }
        let lit = seg.text.trim();
        if lit.is_empty() {
            continue;
        }
        match rest.find(lit) {
            Some(i) => {
                score += lit.chars().count();
                rest = &rest[i + lit.len()..];
            }
            None => return 0,
        }
    }
    score
}

/// Map a line/col in the rendered text back to the template source.
///
/// Rendered SQL keeps the source's line structure except where loops (or whitespace control)
/// change it. With equal line counts the line maps 1:1 and the column is mapped by walking the
/// line's tags: literal text aligns, a column inside a tag's output maps to the start of the tag.
/// Otherwise the source line that best explains the rendered line (all of its literal text found
/// in order, most text wins, nearest line breaks ties) is used; with no match, the same line
/// clamped to the source.
pub fn map_to_source(source: &str, rendered: &str, line: usize, col: usize) -> (usize, usize) {
    let src_lines: Vec<&str> = source.split('\n').collect();
    let out_lines: Vec<&str> = rendered.split('\n').collect();
    let line = line.max(1);
    let col = col.max(1);
    let rendered_line = out_lines.get(line - 1).copied().unwrap_or("");
    let strip_cr = |s: &str| {
        s.strip_suffix('\r')
            .map(str::to_string)
            .unwrap_or_else(|| s.to_string())
    };
    if src_lines.len() == out_lines.len() {
        let src = src_lines.get(line - 1).copied().unwrap_or("");
        return (
            line.min(src_lines.len()),
            map_column(&strip_cr(src), &strip_cr(rendered_line), col),
        );
    }
    let mut best: Option<(usize, usize)> = None; // (score, index)
    if !rendered_line.trim().is_empty() {
        for (i, s) in src_lines.iter().enumerate() {
            let score = line_score(s, rendered_line);
            if score == 0 {
                continue;
            }
            let better = match best {
                None => true,
                Some((bs, bi)) => {
                    score > bs || (score == bs && i.abs_diff(line - 1) < bi.abs_diff(line - 1))
                }
            };
            if better {
                best = Some((score, i));
            }
        }
    }
    match best {
        Some((_, i)) => (
            i + 1,
            map_column(&strip_cr(src_lines[i]), &strip_cr(rendered_line), col),
        ),
        None => {
            let l = line.min(src_lines.len()).max(1);
            let len = src_lines.get(l - 1).map(|s| s.chars().count()).unwrap_or(0);
            (l, col.min(len + 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::ast::{Expr, SetExpr, Value as SqlValue};

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn lin(dialect: Dialect, sql: &str) -> Lineage {
        match analyze(dialect, sql) {
            Ok((_, l)) => l,
            Err(e) => panic!("{sql}: {e:?}"),
        }
    }

    fn assert_lineage(dialect: Dialect, sql: &str, reads: &[&str], writes: &[&str]) {
        let l = lin(dialect, sql);
        assert_eq!(l.reads, set(reads), "reads of {sql}");
        assert_eq!(l.writes, set(writes), "writes of {sql}");
    }

    // ---- dialects

    #[test]
    fn dialect_names_round_trip() {
        for d in Dialect::ALL {
            assert_eq!(d.name().parse::<Dialect>(), Ok(d));
            assert_eq!(d.to_string(), d.name());
        }
        assert_eq!("PostgreSQL".parse::<Dialect>(), Ok(Dialect::Postgres));
        assert!("oracle".parse::<Dialect>().is_err());
    }

    // ---- splitting

    #[test]
    fn split_keeps_semicolons_in_strings_comments_and_dollar_bodies() {
        let sql = "SELECT 'a;b', \"c;d\" FROM t; -- note; here\n\
                   /* block; comment */ SELECT $$ x ; y $$;\n\
                   CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\n\
                   -- only a comment;\n\
                   ;;\n\
                   SELECT 3";
        let got = split_statements(Dialect::Postgres, sql).unwrap();
        let texts: Vec<&str> = got.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "SELECT 'a;b', \"c;d\" FROM t",
                "SELECT $$ x ; y $$",
                "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
                "SELECT 3",
            ]
        );
        let pos: Vec<(usize, usize)> = got.iter().map(|s| (s.line, s.col)).collect();
        assert_eq!(pos, vec![(1, 1), (2, 22), (3, 1), (6, 1)]);
        for s in &got {
            assert_eq!(&sql[s.byte_range.clone()], s.text);
        }
    }

    #[test]
    fn split_trailing_statement_without_semicolon_and_inner_comments() {
        let sql = "\n\n  INSERT INTO t -- target\n  SELECT 1;\n\n  SELECT /* ; */ 2\n";
        let got = split_statements(Dialect::Postgres, sql).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].text, "INSERT INTO t -- target\n  SELECT 1");
        assert_eq!((got[0].line, got[0].col), (3, 3));
        assert_eq!(got[1].text, "SELECT /* ; */ 2");
        assert_eq!((got[1].line, got[1].col), (6, 3));
        let start = sql.find("SELECT /*").unwrap();
        assert_eq!(got[1].byte_range, start..start + got[1].text.len());
    }

    #[test]
    fn split_mysql_backslash_escapes_and_backticks() {
        let sql = "SELECT 'it\\'s; fine', `we;ird` FROM t; SELECT 2 # hash comment;\n";
        let got = split_statements(Dialect::MySql, sql).unwrap();
        let texts: Vec<&str> = got.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts,
            vec!["SELECT 'it\\'s; fine', `we;ird` FROM t", "SELECT 2"]
        );
    }

    #[test]
    fn split_empty_and_comment_only() {
        assert!(split_statements(Dialect::Postgres, "").unwrap().is_empty());
        assert!(split_statements(Dialect::Postgres, " -- x;\n/* y; */ ;\n;")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn split_counts_columns_in_characters_and_bytes_in_bytes() {
        let sql = "SELECT 'é'; SELECT 2";
        let got = split_statements(Dialect::Postgres, sql).unwrap();
        assert_eq!((got[1].line, got[1].col), (1, 13));
        assert_eq!(&sql[got[1].byte_range.clone()], "SELECT 2");
    }

    #[test]
    fn tokenizer_error_has_position() {
        let e = split_statements(Dialect::Postgres, "SELECT 1;\nSELECT 'open").unwrap_err();
        assert_eq!((e.line, e.col), (2, 8));
        assert!(e.message.contains("Unterminated string"), "{}", e.message);
        assert!(!e.message.contains("Line:"), "{}", e.message);
    }

    // ---- parsing

    #[test]
    fn error_in_third_statement_reports_its_line_and_column() {
        let sql = "SELECT 1;\nSELECT 2\n  FROM t;\n\n  SELECT a,, b FROM t;\nSELECT 4;";
        let e = parse(Dialect::Postgres, sql).unwrap_err();
        assert_eq!((e.line, e.col), (5, 12), "{e:?}");
        assert_eq!(e.message, "Expected: an expression, found: ,");
        // The same through analyze, and in the other dialects.
        for d in Dialect::ALL {
            let e = analyze(d, sql).unwrap_err();
            assert_eq!((e.line, e.col), (5, 12), "{d:?}: {e:?}");
        }
    }

    #[test]
    fn error_on_the_first_line_of_a_later_statement_adds_the_column_offset() {
        let e = parse(Dialect::Postgres, "SELECT 1; SELECT * FROM t WHERE a = = 1").unwrap_err();
        assert_eq!((e.line, e.col), (1, 37), "{e:?}");
        assert_eq!(e.message, "Expected: an expression, found: =");
    }

    #[test]
    fn error_at_end_of_input_points_after_the_statement() {
        let e = parse(Dialect::Postgres, "SELECT 1;\n  SELECT * FROM\n\n").unwrap_err();
        assert_eq!((e.line, e.col), (2, 16), "{e:?}");
        assert!(e.message.contains("EOF"), "{}", e.message);
    }

    #[test]
    fn parse_returns_one_statement_per_piece() {
        let stmts = parse(Dialect::MySql, "SELECT 1; SELECT 2;; SELECT 3").unwrap();
        assert_eq!(stmts.len(), 3);
    }

    // ---- Redshift statements

    #[test]
    fn redshift_copy_native_and_opaque() {
        // Parsed natively by sqlparser 0.64.
        let native = "COPY analytics.events FROM 's3://bucket/events/2026/03/08/' \
                      IAM_ROLE 'arn:aws:iam::123:role/load' MANIFEST FORMAT JSON 'auto' GZIP";
        let stmts = parse(Dialect::Redshift, native).unwrap();
        assert!(
            matches!(&stmts[0], Statement::Copy { legacy_options, .. } if !legacy_options.is_empty())
        );
        assert_lineage(Dialect::Redshift, native, &[], &["analytics.events"]);
        // Options sqlparser does not know: accepted opaquely, lineage from the pattern.
        let opaque = "COPY \"Raw\".events (id, payload) FROM 's3://b/p' IAM_ROLE 'arn' \
                      MAXERROR 10 FORMAT AS AVRO 'auto' COMPROWS 1000";
        assert!(
            Parser::parse_sql(&REDSHIFT, opaque).is_err(),
            "no longer opaque?"
        );
        let stmts = parse(Dialect::Redshift, opaque).unwrap();
        assert_eq!(
            stmts[0].to_string(),
            "COPY \"Raw\".events (id, payload) FROM 's3://b/p'"
        );
        assert_lineage(Dialect::Redshift, opaque, &[], &["Raw.events"]);
        // Only for Redshift.
        assert!(parse(Dialect::Postgres, opaque).is_err());
        // A COPY that does not match the pattern is still an error.
        let e = parse(Dialect::Redshift, "SELECT 1;\nCOPY garbage").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn redshift_unload_native_and_opaque() {
        let native =
            "UNLOAD ('select * from venue v join category c on v.id = c.id where v.name = ''x''') \
                      TO 's3://b/unload/' IAM_ROLE 'arn' PARQUET ALLOWOVERWRITE";
        assert!(matches!(
            parse(Dialect::Redshift, native).unwrap()[0],
            Statement::Unload { .. }
        ));
        assert_lineage(Dialect::Redshift, native, &["category", "venue"], &[]);
        let opaque = "UNLOAD ('select * from sales.orders') TO 's3://b/u/' IAM_ROLE 'arn' \
                      KMS_KEY_ID 'k' ENCRYPTED";
        assert!(
            Parser::parse_sql(&REDSHIFT, opaque).is_err(),
            "no longer opaque?"
        );
        assert_lineage(Dialect::Redshift, opaque, &["sales.orders"], &[]);
        // An inner query that does not parse gives no lineage but is accepted.
        let bad_inner = "UNLOAD ('select from from') TO 's3://b/u/' IAM_ROLE 'arn' KMS_KEY_ID 'k'";
        assert_lineage(Dialect::Redshift, bad_inner, &[], &[]);
    }

    #[test]
    fn redshift_vacuum_and_analyze() {
        // Native.
        for sql in [
            "VACUUM",
            "VACUUM FULL events TO 75 PERCENT",
            "VACUUM DELETE ONLY events BOOST",
            "ANALYZE events",
            "ANALYZE",
        ] {
            assert!(Parser::parse_sql(&REDSHIFT, sql).is_ok(), "{sql}");
            assert!(parse(Dialect::Redshift, sql).is_ok(), "{sql}");
        }
        assert_lineage(
            Dialect::Redshift,
            "VACUUM SORT ONLY events",
            &["events"],
            &[],
        );
        assert_lineage(Dialect::Redshift, "ANALYZE events", &["events"], &[]);
        // ANALYZE COMPRESSION is misread natively (as a table named compression): handled opaquely.
        assert_lineage(Dialect::Redshift, "ANALYZE COMPRESSION", &[], &[]);
        assert_lineage(
            Dialect::Redshift,
            "ANALYZE COMPRESSION sales.orders COMPROWS 1000",
            &["sales.orders"],
            &[],
        );
        // Not parsed natively.
        let pred = "ANALYZE events PREDICATE COLUMNS";
        assert!(
            Parser::parse_sql(&REDSHIFT, pred).is_err(),
            "no longer opaque?"
        );
        assert_lineage(Dialect::Redshift, pred, &["events"], &[]);
        assert_lineage(Dialect::Redshift, "ANALYZE PREDICATE COLUMNS", &[], &[]);
        assert_lineage(
            Dialect::Redshift,
            "VACUUM RECLUSTER \"Events\" TO 75 PERCENT BOOST",
            &["Events"],
            &[],
        );
    }

    #[test]
    fn redshift_alter_table_append() {
        let sql = "ALTER TABLE analytics.events APPEND FROM staging.events IGNOREEXTRA";
        assert!(
            Parser::parse_sql(&REDSHIFT, sql).is_err(),
            "no longer opaque?"
        );
        assert_lineage(
            Dialect::Redshift,
            sql,
            &["staging.events"],
            &["analytics.events"],
        );
        assert!(parse(Dialect::Postgres, sql).is_err());
    }

    // ---- lineage

    #[test]
    fn lineage_ctes_are_not_reads() {
        assert_lineage(
            Dialect::Postgres,
            "WITH recent AS (SELECT * FROM raw.events WHERE ts > now() - interval '1 day'),\n\
                  agg AS (SELECT user_id, count(*) AS n FROM recent GROUP BY 1)\n\
             INSERT INTO marts.daily SELECT * FROM agg",
            &["raw.events"],
            &["marts.daily"],
        );
        // A CTE name only hides tables inside its own query.
        assert_lineage(
            Dialect::Postgres,
            "SELECT * FROM (WITH x AS (SELECT 1 AS a) SELECT * FROM x) s JOIN x ON true",
            &["x"],
            &[],
        );
        // Recursive CTE referring to itself.
        assert_lineage(
            Dialect::Postgres,
            "WITH RECURSIVE tree AS (SELECT id FROM nodes UNION ALL SELECT n.id FROM nodes n JOIN tree t ON n.parent = t.id) SELECT * FROM tree",
            &["nodes"],
            &[],
        );
    }

    #[test]
    fn lineage_joins_and_subqueries() {
        assert_lineage(
            Dialect::Postgres,
            "SELECT o.id FROM sales.orders o\n\
             LEFT JOIN sales.customers c ON c.id = o.customer_id\n\
             WHERE o.id IN (SELECT order_id FROM sales.refunds)\n\
               AND EXISTS (SELECT 1 FROM (SELECT * FROM audit.log) l WHERE l.id = o.id)",
            &[
                "audit.log",
                "sales.customers",
                "sales.orders",
                "sales.refunds",
            ],
            &[],
        );
    }

    #[test]
    fn lineage_insert_select_reading_its_target() {
        assert_lineage(
            Dialect::Postgres,
            "INSERT INTO t (a) SELECT a + 1 FROM t WHERE a < 10",
            &["t"],
            &["t"],
        );
        assert_lineage(Dialect::Postgres, "INSERT INTO t VALUES (1)", &[], &["t"]);
    }

    #[test]
    fn lineage_create_table_as_and_views() {
        assert_lineage(
            Dialect::Postgres,
            "CREATE TABLE marts.users AS SELECT * FROM raw.users u JOIN raw.accounts a USING (id);\n\
             CREATE VIEW v_users AS SELECT * FROM marts.users;\n\
             CREATE MATERIALIZED VIEW mv AS SELECT count(*) FROM raw.events;\n\
             REFRESH MATERIALIZED VIEW mv",
            &["marts.users", "raw.accounts", "raw.events", "raw.users"],
            &["marts.users", "mv", "v_users"],
        );
    }

    #[test]
    fn lineage_merge_delete_update() {
        assert_lineage(
            Dialect::Postgres,
            "MERGE INTO dim.customers AS t USING (SELECT * FROM stage.customers) AS s ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET name = s.name \
             WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, s.name)",
            &["stage.customers"],
            &["dim.customers"],
        );
        assert_lineage(
            Dialect::Postgres,
            "DELETE FROM facts f USING stage.deleted d WHERE f.id = d.id",
            &["stage.deleted"],
            &["facts"],
        );
        assert_lineage(
            Dialect::Postgres,
            "UPDATE facts SET v = s.v FROM stage s WHERE facts.id = s.id",
            &["stage"],
            &["facts"],
        );
        assert_lineage(
            Dialect::Redshift,
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            &["s"],
            &["t"],
        );
    }

    #[test]
    fn lineage_ddl_and_copy() {
        assert_lineage(
            Dialect::Postgres,
            "TRUNCATE a, b; DROP TABLE IF EXISTS c; DROP VIEW w; DROP INDEX i; \
             ALTER TABLE d RENAME TO e; COPY f FROM STDIN; COPY g TO STDOUT; \
             COPY (SELECT * FROM h) TO STDOUT; CREATE TABLE n (LIKE m)",
            &["g", "h", "m"],
            &["a", "b", "c", "d", "e", "f", "n", "w"],
        );
        assert_lineage(
            Dialect::Postgres,
            "SELECT * INTO new_t FROM old_t",
            &["old_t"],
            &["new_t"],
        );
        assert_lineage(
            Dialect::Postgres,
            "SELECT * FROM generate_series(1, 3) g JOIN t ON t.id = g",
            &["t"],
            &[],
        );
    }

    #[test]
    fn lineage_names_are_normalised() {
        assert_lineage(
            Dialect::Postgres,
            "INSERT INTO \"Marts\".\"DailyUsers\" SELECT * FROM Raw.Users JOIN \"raw\".\"Users\" ON true",
            &["raw.Users", "raw.users"],
            &["Marts.DailyUsers"],
        );
    }

    #[test]
    fn lineage_mysql() {
        assert_lineage(
            Dialect::MySql,
            "INSERT INTO `Analytics`.`DailyUsers` SELECT * FROM app.Users u JOIN `app`.`Orders` o ON o.uid = u.id;\n\
             REPLACE INTO cache SELECT 1;\n\
             DELETE a FROM t1 AS a JOIN t2 ON a.id = t2.id",
            &["app.Orders", "app.users", "t2"],
            &["Analytics.DailyUsers", "cache", "t1"],
        );
    }

    #[test]
    fn lineage_redshift() {
        assert_lineage(
            Dialect::Redshift,
            "BEGIN;\n\
             CREATE TEMP TABLE stage (LIKE analytics.events);\n\
             COPY stage FROM 's3://bucket/events/' IAM_ROLE 'arn:aws:iam::1:role/r' FORMAT AS JSON 'auto' GZIP;\n\
             DELETE FROM analytics.events USING stage WHERE events.id = stage.id;\n\
             INSERT INTO analytics.events SELECT * FROM stage;\n\
             END;",
            &["analytics.events", "stage"],
            &["analytics.events", "stage"],
        );
    }

    #[test]
    fn lineage_of_parsed_statements_directly() {
        let stmts = parse(
            Dialect::Postgres,
            "INSERT INTO a SELECT * FROM b; SELECT * FROM c",
        )
        .unwrap();
        let l = lineage(&stmts);
        assert_eq!(l.reads, set(&["b", "c"]));
        assert_eq!(l.writes, set(&["a"]));
        assert_eq!(lineage(&[]), Lineage::default());
    }

    // ---- quoting (the template filters build on these)

    fn where_literal(stmt: &Statement) -> Option<String> {
        let Statement::Query(q) = stmt else {
            return None;
        };
        let SetExpr::Select(sel) = q.body.as_ref() else {
            return None;
        };
        let Some(Expr::BinaryOp { right, .. }) = &sel.selection else {
            return None;
        };
        match right.as_ref() {
            Expr::Value(v) => match &v.value {
                SqlValue::SingleQuotedString(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    #[test]
    fn quoted_literals_round_trip_through_the_parser() {
        let nasty = [
            "plain",
            "it's",
            "'; DROP TABLE x; --",
            "\\'; DROP TABLE x; --",
            "back\\slash\\",
            "multi\nline\r\n",
            "ctrl-z \u{1a} tab\t",
            "unicode é ☃",
        ];
        for d in Dialect::ALL {
            for s in nasty {
                let lit = quote_literal(d, s).unwrap();
                let sql = format!("SELECT * FROM t WHERE name = {lit}");
                let stmts = parse(d, &sql).unwrap_or_else(|e| panic!("{d:?} {sql}: {e:?}"));
                assert_eq!(stmts.len(), 1, "{d:?} {sql}");
                assert_eq!(where_literal(&stmts[0]).as_deref(), Some(s), "{d:?} {sql}");
            }
        }
        // MySQL can hold NUL in a string.
        let lit = quote_literal(Dialect::MySql, "nul\0byte").unwrap();
        let stmts = parse(
            Dialect::MySql,
            &format!("SELECT * FROM t WHERE name = {lit}"),
        )
        .unwrap();
        assert_eq!(where_literal(&stmts[0]).as_deref(), Some("nul\0byte"));
    }

    #[test]
    fn quote_literal_rules() {
        assert_eq!(
            quote_literal(Dialect::Postgres, "a'b\\c").unwrap(),
            "'a''b\\c'"
        );
        assert_eq!(
            quote_literal(Dialect::Redshift, "a'b\\c").unwrap(),
            "'a''b\\\\c'"
        );
        assert_eq!(
            quote_literal(Dialect::MySql, "a'b\\c\0d\ne\rf\u{1a}").unwrap(),
            "'a''b\\\\c\\0d\\ne\\rf\\Z'"
        );
        assert!(quote_literal(Dialect::Postgres, "a\0b").is_err());
        assert!(quote_literal(Dialect::Redshift, "a\0b").is_err());
    }

    #[test]
    fn quote_identifier_rules() {
        assert_eq!(
            quote_identifier(Dialect::Postgres, "My \"T\"").unwrap(),
            "\"My \"\"T\"\"\""
        );
        assert_eq!(quote_identifier(Dialect::Redshift, "x").unwrap(), "\"x\"");
        assert_eq!(quote_identifier(Dialect::MySql, "a`b").unwrap(), "`a``b`");
        assert!(quote_identifier(Dialect::MySql, "").is_err());
        assert!(quote_identifier(Dialect::Postgres, "a\0").is_err());
    }

    // ---- map_to_source

    #[test]
    fn map_same_line_count_walks_the_tags() {
        let source = "SELECT *\nFROM {{ params.schema }}.events WHERE a = {{ params.v | sql_literal }} AND AND b\n";
        let rendered = "SELECT *\nFROM analytics.events WHERE a = 'some value' AND AND b\n";
        let rline = rendered.lines().nth(1).unwrap();
        let col = rline.find("AND b").unwrap() + 1;
        let scol = source.lines().nth(1).unwrap().find("AND b").unwrap() + 1;
        assert_eq!(map_to_source(source, rendered, 2, col), (2, scol));
        // Before any tag: unchanged.
        assert_eq!(map_to_source(source, rendered, 2, 1), (2, 1));
        // Inside a rendered expression: the start of its `{{`.
        let inside = rline.find("some").unwrap() + 1;
        let tag = source.lines().nth(1).unwrap().find("{{ params.v").unwrap() + 1;
        assert_eq!(map_to_source(source, rendered, 2, inside), (2, tag));
        // Between two tags.
        let ev = rline.find(".events").unwrap() + 1;
        let sev = source.lines().nth(1).unwrap().find(".events").unwrap() + 1;
        assert_eq!(map_to_source(source, rendered, 2, ev), (2, sev));
    }

    #[test]
    fn map_if_block_keeps_lines() {
        let source =
            "SELECT a,\n{% if params.full %}\n  b,\n{% endif %}\n  c\nFROM t WHERE x = = 1\n";
        let rendered = "SELECT a,\n\n  b,\n\n  c\nFROM t WHERE x = = 1\n";
        assert_eq!(map_to_source(source, rendered, 6, 20), (6, 20));
        let rendered_false = "SELECT a,\n\n\n  c\nFROM t WHERE x = = 1\n";
        // Not the same line count (the block was dropped with its line): found by text.
        assert_eq!(map_to_source(source, rendered_false, 5, 20), (6, 20));
    }

    #[test]
    fn map_loop_expansion_finds_the_line() {
        let source = "SELECT\n{% for c in params.cols %}\n  {{ c }},\n{% endfor %}\n  1\nFROM {{ params.t }} WHERE x = = 1\n";
        let rendered = "SELECT\n\n  a,\n\n  b,\n\n  c,\n\n  1\nFROM tbl WHERE x = = 1\n";
        let rline = rendered.lines().nth(9).unwrap();
        let col = rline.find("= = 1").unwrap() + 3;
        let sline = source.lines().nth(5).unwrap();
        let scol = sline.find("= = 1").unwrap() + 3;
        assert_eq!(map_to_source(source, rendered, 10, col), (6, scol));
        // A line of the loop body maps to the body's line.
        assert_eq!(map_to_source(source, rendered, 5, 3), (3, 3));
        // No match at all: same line, clamped.
        assert_eq!(map_to_source("a\nb", "x\ny\nz\nw", 4, 9), (2, 2));
    }

    #[test]
    fn map_end_to_end_with_analyze() {
        let source = "SELECT 1;\n\nSELECT {{ params.cols }}\nFROM {{ params.t }} WHERE a = = 2;\n";
        let rendered = "SELECT 1;\n\nSELECT a, b, c\nFROM events WHERE a = = 2;\n";
        let e = analyze(Dialect::Postgres, rendered).unwrap_err();
        assert_eq!((e.line, e.col), (4, 23));
        let scol = source.lines().nth(3).unwrap().find("= 2").unwrap() + 1;
        assert_eq!(map_to_source(source, rendered, e.line, e.col), (4, scol));
    }

    #[test]
    fn map_and_split_never_panic_on_odd_input() {
        let alphabet = [
            '{', '}', '%', '#', '☃', 'é', '\n', ' ', 'a', ';', '\'', '-', '$', '"', '\r',
        ];
        let mut seed = 0x2545_f491_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as usize
        };
        for _ in 0..300 {
            let mut gen = |n: usize| -> String {
                (0..n).map(|_| alphabet[next() % alphabet.len()]).collect()
            };
            let (a, b) = (gen(12), gen(9));
            for line in 0..5 {
                for col in 0..8 {
                    let (l, c) = map_to_source(&a, &b, line, col);
                    assert!(l >= 1 && c >= 1);
                }
            }
            for d in Dialect::ALL {
                let _ = analyze(d, &a);
            }
        }
    }
}
