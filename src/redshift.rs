//! Redshift-only SQL: `COPY` from an S3 manifest, its manifest and JSONPaths files, the staging and
//! merge statements of a load, and the query that explains a failed COPY. Nothing here runs anything:
//! it returns text, which the load step sends through the simple query protocol (Redshift is
//! PostgreSQL 8.0 underneath: no extended-protocol type lookups, no `DISTINCT ON`, no `MERGE` with
//! duplicate source rows) and which the tests check as text.
//!
//! Facts the text respects: `JSON 'auto'` matches keys case-sensitively against lower-case column
//! names, so a JSONPaths file names every column's path explicitly; `TIMEFORMAT 'auto'` does not read
//! epoch seconds or milliseconds (`'epochsecs'` / `'epochmillisecs'` do); a COPY manifest lists each
//! object once with its `content_length`; `TRUNCATE` and `VACUUM` commit implicitly, so a load's
//! transaction uses `DELETE` and never either of them.

use serde_json::json;

/// `"a"."b"`.
pub fn ident(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// `'text'` with quotes doubled.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A COPY manifest: every object once, mandatory, with its length.
pub fn manifest(bucket: &str, objects: &[(String, u64)]) -> String {
    let mut seen = std::collections::HashSet::new();
    let entries: Vec<_> = objects
        .iter()
        .filter(|(k, _)| seen.insert(k.clone()))
        .map(|(k, len)| {
            json!({"url": format!("s3://{bucket}/{k}"), "mandatory": true,
                   "meta": {"content_length": len}})
        })
        .collect();
    json!({ "entries": entries }).to_string()
}

/// A JSONPaths file: one path per column, in the COPY's column order (`$.a.b` → `$['a']['b']`).
pub fn jsonpaths(paths: &[Vec<String>]) -> String {
    let p: Vec<String> = paths
        .iter()
        .map(|segs| {
            let mut s = "$".to_string();
            for seg in segs {
                s.push_str(&format!("['{}']", seg.replace('\'', "\\'")));
            }
            s
        })
        .collect();
    json!({ "jsonpaths": p }).to_string()
}

/// How the objects are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

/// One COPY of JSON lines listed in a manifest.
#[derive(Debug, Clone)]
pub struct Copy<'a> {
    pub table: &'a str,
    pub columns: &'a [String],
    pub manifest_url: &'a str,
    pub jsonpaths_url: &'a str,
    pub iam_role: &'a str,
    pub compression: Compression,
    /// `auto`, `epochsecs`, `epochmillisecs` or a format string.
    pub timeformat: &'a str,
    pub max_errors: u64,
}

impl Copy<'_> {
    pub fn sql(&self) -> String {
        let cols = self
            .columns
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let compression = match self.compression {
            Compression::Gzip => " GZIP",
            Compression::Zstd => " ZSTD",
            Compression::None => "",
        };
        format!(
            "COPY {} ({cols}) FROM {} IAM_ROLE {} MANIFEST FORMAT AS JSON {}{compression} TIMEFORMAT {} ACCEPTINVCHARS MAXERROR {} STATUPDATE OFF COMPUPDATE OFF",
            ident(self.table),
            literal(self.manifest_url),
            literal(self.iam_role),
            literal(self.jsonpaths_url),
            literal(self.timeformat),
            self.max_errors
        )
    }
}

/// The statements of a merge from `stage` into `target` on `keys`, keeping per key the row with the
/// greatest `order_by` (Redshift has no `DISTINCT ON`, and `MERGE` fails when one target row matches
/// several staging rows, so the staging rows are deduplicated into a temporary table first). To run
/// inside the load's transaction.
pub fn merge(
    target: &str,
    stage: &str,
    columns: &[String],
    keys: &[String],
    order_by: Option<&str>,
) -> Vec<String> {
    let cols = columns
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let k = keys.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ");
    let order = match order_by {
        Some(o) => format!("{} DESC NULLS LAST", ident(o)),
        None => k.clone(),
    };
    let latest = "cranium_latest";
    let on = keys
        .iter()
        .map(|c| format!("{t}.{c} = {latest}.{c}", t = ident(target), c = ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    vec![
        format!(
            "CREATE TEMP TABLE {latest} AS SELECT {cols} FROM (SELECT {cols}, ROW_NUMBER() OVER (PARTITION BY {k} ORDER BY {order}) AS cranium_rn FROM {}) d WHERE cranium_rn = 1",
            ident(stage)
        ),
        format!("DELETE FROM {} USING {latest} WHERE {on}", ident(target)),
        format!(
            "INSERT INTO {} ({cols}) SELECT {cols} FROM {latest}",
            ident(target)
        ),
        format!("DROP TABLE {latest}"),
    ]
}

/// How a load changes its target.
#[derive(Debug, Clone)]
pub enum LoadMode<'a> {
    Append,
    /// Delete the rows whose `column` lies in `[start, end)` (RFC 3339), then copy.
    ReplaceInterval {
        column: &'a str,
        start: String,
        end: String,
    },
    Merge {
        keys: &'a [String],
        order_by: Option<&'a str>,
    },
}

/// The staging table of a merge.
pub const STAGE: &str = "cranium_stage";

/// The tracking table's definition (Redshift has no `ON CONFLICT`: rows are deleted, then inserted).
pub const TRACKING_DDL: &str = "CREATE TABLE IF NOT EXISTS cranium_loaded_objects (\
     target varchar(512) NOT NULL, object_key varchar(1024) NOT NULL, etag varchar(128) NOT NULL, \
     rows bigint NOT NULL, load_id varchar(512) NOT NULL, loaded_at timestamp NOT NULL, \
     PRIMARY KEY (target, object_key, etag))";

/// Every statement of one load, in order, from `BEGIN` to `COMMIT`: the mode's preparation, the COPY
/// (into the target, or the staging table for a merge), the merge, and the tracking rows of `objects`
/// (key, ETag) in the same transaction. Rows per object are not known to a manifest COPY: they are
/// recorded as -1.
pub fn load_statements(
    copy: &Copy<'_>,
    target: &str,
    mode: &LoadMode<'_>,
    objects: &[(String, String)],
    load_id: &str,
) -> Vec<String> {
    let mut out = vec!["BEGIN".to_string()];
    let mut into_stage = copy.clone();
    match mode {
        LoadMode::Append => out.push(copy.sql()),
        LoadMode::ReplaceInterval { column, start, end } => {
            out.push(format!(
                "DELETE FROM {} WHERE {c} >= {} AND {c} < {}",
                ident(target),
                literal(start),
                literal(end),
                c = ident(column)
            ));
            out.push(copy.sql());
        }
        LoadMode::Merge { keys, order_by } => {
            out.push(format!(
                "CREATE TEMP TABLE {STAGE} (LIKE {})",
                ident(target)
            ));
            into_stage.table = STAGE;
            out.push(into_stage.sql());
            out.extend(merge(target, STAGE, copy.columns, keys, *order_by));
            out.push(format!("DROP TABLE {STAGE}"));
        }
    }
    if !objects.is_empty() {
        let keys = objects
            .iter()
            .map(|(k, _)| literal(k))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(format!(
            "DELETE FROM cranium_loaded_objects WHERE target = {} AND object_key IN ({keys})",
            literal(target)
        ));
        let values = objects
            .iter()
            .map(|(k, etag)| {
                format!(
                    "({}, {}, {}, -1, {}, GETDATE())",
                    literal(target),
                    literal(k),
                    literal(etag),
                    literal(load_id)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        out.push(format!(
            "INSERT INTO cranium_loaded_objects (target, object_key, etag, rows, load_id, loaded_at) VALUES {values}"
        ));
    }
    out.push("COMMIT".to_string());
    out
}

/// The rows of `SYS_LOAD_ERROR_DETAIL` for the session's last COPY: what failed, where.
pub fn load_errors_sql() -> &'static str {
    "SELECT file_name, line_number, column_name, column_type, error_message, raw_line \
     FROM sys_load_error_detail WHERE query_id = pg_last_copy_id() ORDER BY line_number LIMIT 10"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_from_a_manifest() {
        let cols = vec!["event_id".to_string(), "event_time".to_string()];
        let c = Copy {
            table: "analytics.app_events",
            columns: &cols,
            manifest_url: "s3://lake/_cranium/loads/x.manifest",
            jsonpaths_url: "s3://lake/_cranium/loads/x.jsonpaths",
            iam_role: "arn:aws:iam::123:role/it's",
            compression: Compression::Gzip,
            timeformat: "epochmillisecs",
            max_errors: 0,
        };
        assert_eq!(
            c.sql(),
            "COPY \"analytics\".\"app_events\" (\"event_id\", \"event_time\") FROM 's3://lake/_cranium/loads/x.manifest' IAM_ROLE 'arn:aws:iam::123:role/it''s' MANIFEST FORMAT AS JSON 's3://lake/_cranium/loads/x.jsonpaths' GZIP TIMEFORMAT 'epochmillisecs' ACCEPTINVCHARS MAXERROR 0 STATUPDATE OFF COMPUPDATE OFF"
        );
    }

    #[test]
    fn manifests_list_each_object_once_with_its_length() {
        let m = manifest(
            "lake",
            &[
                ("a/1.jsonl.gz".into(), 10),
                ("a/2.jsonl.gz".into(), 20),
                ("a/1.jsonl.gz".into(), 10),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&m).unwrap_or_default();
        assert_eq!(v["entries"].as_array().map(|e| e.len()), Some(2));
        assert_eq!(v["entries"][1]["url"], "s3://lake/a/2.jsonl.gz");
        assert_eq!(v["entries"][1]["meta"]["content_length"], 20);
        assert_eq!(v["entries"][1]["mandatory"], true);
    }

    #[test]
    fn a_merge_load_is_one_transaction_without_implicit_commits() {
        let cols = vec!["id".to_string(), "updated_at".to_string()];
        let keys = vec!["id".to_string()];
        let c = Copy {
            table: "a.users",
            columns: &cols,
            manifest_url: "s3://lake/m",
            jsonpaths_url: "s3://lake/j",
            iam_role: "arn:r",
            compression: Compression::Gzip,
            timeformat: "auto",
            max_errors: 0,
        };
        let s = load_statements(
            &c,
            "a.users",
            &LoadMode::Merge {
                keys: &keys,
                order_by: Some("updated_at"),
            },
            &[(
                "mysql/users/u.00000.jsonl.gz".to_string(),
                "abc".to_string(),
            )],
            "product_daily.load_users.7",
        );
        assert_eq!(s.first().map(String::as_str), Some("BEGIN"));
        assert_eq!(s.last().map(String::as_str), Some("COMMIT"));
        assert_eq!(
            s[1],
            "CREATE TEMP TABLE cranium_stage (LIKE \"a\".\"users\")"
        );
        assert!(
            s[2].starts_with("COPY \"cranium_stage\" (\"id\", \"updated_at\") FROM 's3://lake/m'")
        );
        assert!(s
            .iter()
            .any(|q| q.starts_with("INSERT INTO cranium_loaded_objects") && q.contains("'abc'")));
        assert!(!s
            .iter()
            .any(|q| q.contains("TRUNCATE") || q.contains("VACUUM")));

        let r = load_statements(
            &c,
            "a.users",
            &LoadMode::ReplaceInterval {
                column: "updated_at",
                start: "2026-03-01T00:00:00+00:00".into(),
                end: "2026-03-02T00:00:00+00:00".into(),
            },
            &[],
            "x",
        );
        assert_eq!(
            r[1],
            "DELETE FROM \"a\".\"users\" WHERE \"updated_at\" >= '2026-03-01T00:00:00+00:00' AND \"updated_at\" < '2026-03-02T00:00:00+00:00'"
        );
        assert!(r[2].starts_with("COPY \"a\".\"users\""));
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn jsonpaths_name_every_path_explicitly() {
        let j = jsonpaths(&[vec!["Type".into()], vec!["user".into(), "id".into()]]);
        assert_eq!(j, r#"{"jsonpaths":["$['Type']","$['user']['id']"]}"#);
    }

    #[test]
    fn merge_dedupes_the_stage_first() {
        let cols = vec![
            "id".to_string(),
            "name".to_string(),
            "updated_at".to_string(),
        ];
        let s = merge(
            "a.users",
            "cranium_stage",
            &cols,
            &["id".to_string()],
            Some("updated_at"),
        );
        assert_eq!(s.len(), 4);
        assert_eq!(
            s[0],
            "CREATE TEMP TABLE cranium_latest AS SELECT \"id\", \"name\", \"updated_at\" FROM (SELECT \"id\", \"name\", \"updated_at\", ROW_NUMBER() OVER (PARTITION BY \"id\" ORDER BY \"updated_at\" DESC NULLS LAST) AS cranium_rn FROM \"cranium_stage\") d WHERE cranium_rn = 1"
        );
        assert_eq!(
            s[1],
            "DELETE FROM \"a\".\"users\" USING cranium_latest WHERE \"a\".\"users\".\"id\" = cranium_latest.\"id\""
        );
        assert!(!s
            .iter()
            .any(|q| q.contains("TRUNCATE") || q.contains("VACUUM")));
    }
}
