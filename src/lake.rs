//! The lake's object layout: how records become objects under date folders.
//!
//! Objects hold JSON lines (`jsonl`, `jsonl.gz`, `jsonl.zst`), live under `{prefix}/YYYY/MM/DD/HH/`
//! (the hour of each record, in the job's time zone) and are named from their source and offsets, so a
//! retried batch writes the same keys with the same records instead of adding copies
//! (`app_events.p3.o000000001200-000000001999.jsonl.gz`). An [`ObjectWriter`] streams one object
//! into a temporary file through the compressor, so an hour of a busy topic is never held in memory.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// How an object's JSON lines are stored: the lake layout owns its formats (the steps that write and
/// read objects name them in their config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    #[serde(rename = "jsonl.gz")]
    JsonlGz,
    #[serde(rename = "jsonl.zst")]
    JsonlZst,
    #[serde(rename = "jsonl")]
    Jsonl,
}

impl Format {
    /// The file-name extension, without the leading dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::JsonlGz => "jsonl.gz",
            Format::JsonlZst => "jsonl.zst",
            Format::Jsonl => "jsonl",
        }
    }

    /// The object's Content-Type (no Content-Encoding: clients must not decompress on the fly).
    pub fn content_type(self) -> &'static str {
        match self {
            Format::JsonlGz => "application/gzip",
            Format::JsonlZst => "application/zstd",
            Format::Jsonl => "application/x-ndjson",
        }
    }

    /// The default compression level: gzip 6 (zlib's default, what Redshift users expect), zstd 3.
    pub fn default_level(self) -> u32 {
        match self {
            Format::JsonlGz => 6,
            Format::JsonlZst => 3,
            Format::Jsonl => 0,
        }
    }

    /// The format of a key, from its extension.
    pub fn of_key(key: &str) -> Option<Format> {
        if key.ends_with(".jsonl.gz") {
            Some(Format::JsonlGz)
        } else if key.ends_with(".jsonl.zst") {
            Some(Format::JsonlZst)
        } else if key.ends_with(".jsonl") {
            Some(Format::Jsonl)
        } else {
            None
        }
    }
}

/// Checks a rendered S3 key prefix (slashes at both ends already trimmed): not empty (the step
/// would write, and `mysql_to_s3` delete, at the top of the bucket), no `.` or `..` segment (S3
/// keys are flat, but HTTP clients, proxies and some servers resolve dot segments, which would put
/// objects outside the prefix), no empty segment (`a//b`), and no control character or backslash.
/// The message says what is wrong; the caller names the step's field.
pub fn check_key_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err(
            "it is empty: objects would go to the top of the bucket; give it a folder such as events/app"
                .to_string(),
        );
    }
    if let Some(c) = prefix.chars().find(|c| c.is_control() || *c == '\\') {
        return Err(format!(
            "it contains the character {c:?}: a key prefix takes no control characters or backslashes"
        ));
    }
    for seg in prefix.split('/') {
        match seg {
            "" => return Err("it has an empty folder ('//')".to_string()),
            "." | ".." => {
                return Err(format!(
                    "it has a '{seg}' folder, which could resolve outside the prefix; a key prefix takes plain folder names"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `{prefix}/YYYY/MM/DD/HH` for an instant, in `tz`.
pub fn hour_folder(prefix: &str, t: DateTime<Utc>, tz: Tz) -> String {
    let local = t.with_timezone(&tz);
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        local.format("%Y/%m/%d/%H").to_string()
    } else {
        format!("{prefix}/{}", local.format("%Y/%m/%d/%H"))
    }
}

/// `{topic}.p{partition}.o{first}-{last}.{ext}`, offsets zero-padded to 12 digits so names sort by
/// offset. Only `[A-Za-z0-9._-]` appear (Kafka topic names are restricted to those), never `+`.
pub fn object_name(topic: &str, partition: i32, first: i64, last: i64, ext: &str) -> String {
    format!("{topic}.p{partition}.o{first:012}-{last:012}.{ext}")
}

/// A time read from a record field: RFC 3339 (`2026-03-01T12:00:00Z`, any offset), a naive
/// `YYYY-MM-DD[ T]HH:MM:SS[.fff]` taken in UTC, or a number of seconds (milliseconds when above
/// 10^11) since the epoch.
pub fn parse_record_time(v: &serde_json::Value) -> Result<DateTime<Utc>, String> {
    match v {
        serde_json::Value::String(s) => {
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Ok(t.with_timezone(&Utc));
            }
            for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
                if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
                    return Ok(Utc.from_utc_datetime(&t));
                }
            }
            Err(format!(
                "'{s}' is not a time (expected RFC 3339, e.g. 2026-03-01T12:00:00Z)"
            ))
        }
        serde_json::Value::Number(n) => {
            let Some(x) = n.as_f64() else {
                return Err(format!("{n} is not a time"));
            };
            let ms = if x.abs() > 1e11 { x } else { x * 1000.0 };
            DateTime::from_timestamp_millis(ms as i64).ok_or_else(|| format!("{n} is out of range"))
        }
        other => Err(format!(
            "a {} is not a time",
            match other {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "boolean",
                serde_json::Value::Array(_) => "array",
                serde_json::Value::Object(_) => "object",
                _ => "value",
            }
        )),
    }
}

/// One object listed in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub key: String,
    pub records: u64,
    /// Uncompressed bytes (the JSON lines).
    pub bytes: u64,
    /// Bytes stored.
    pub stored_bytes: u64,
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    /// Record times, RFC 3339 UTC.
    pub min_time: Option<String>,
    pub max_time: Option<String>,
    /// The object's ETag as uploaded: a load refuses an object that changed after its manifest
    /// was written. Absent in manifests written before cranium recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// The encoder of one object.
enum Encoder {
    Gz(flate2::write::GzEncoder<BufWriter<File>>),
    Zst(zstd::Encoder<'static, BufWriter<File>>),
    Plain(BufWriter<File>),
    /// Another encoder on its own thread, fed chunks (the caller builds lines meanwhile).
    Threaded {
        tx: std::sync::mpsc::SyncSender<Vec<u8>>,
        thread: std::thread::JoinHandle<io::Result<BufWriter<File>>>,
    },
}

impl Encoder {
    fn write_all(&mut self, chunk: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Encoder::Gz(e) => e.write_all(chunk)?,
            Encoder::Zst(e) => e.write_all(chunk)?,
            Encoder::Plain(e) => e.write_all(chunk)?,
            Encoder::Threaded { tx, .. } => {
                let full = std::mem::replace(chunk, Vec::with_capacity(CHUNK + 4096));
                if tx.send(full).is_err() {
                    return Err(io::Error::other("the compressing thread stopped"));
                }
                return Ok(());
            }
        }
        chunk.clear();
        Ok(())
    }

    fn finish(self) -> io::Result<BufWriter<File>> {
        match self {
            Encoder::Gz(e) => e.finish(),
            Encoder::Zst(e) => e.finish(),
            Encoder::Plain(b) => Ok(b),
            Encoder::Threaded { tx, thread } => {
                drop(tx);
                thread
                    .join()
                    .map_err(|_| io::Error::other("the compressing thread panicked"))?
            }
        }
    }
}

/// Lines are handed to the compressor in chunks of this many bytes (one call per line costs more
/// than the compression of a short line).
const CHUNK: usize = 256 * 1024;

/// Streams JSON lines into one object's temporary file, compressing on the way.
pub struct ObjectWriter {
    enc: Encoder,
    chunk: Vec<u8>,
    file: tempfile::TempPath,
    pub records: u64,
    pub bytes: u64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub min_time: Option<DateTime<Utc>>,
    pub max_time: Option<DateTime<Utc>>,
}

impl ObjectWriter {
    /// A writer into a new temporary file in `dir`.
    pub fn new(dir: &Path, format: Format, level: u32) -> io::Result<ObjectWriter> {
        let tmp = tempfile::Builder::new()
            .prefix("cranium-object-")
            .tempfile_in(dir)?;
        let (file, path) = tmp.into_parts();
        let buf = BufWriter::with_capacity(256 * 1024, file);
        let enc = match format {
            Format::JsonlGz => Encoder::Gz(flate2::write::GzEncoder::new(
                buf,
                flate2::Compression::new(level.clamp(1, 9)),
            )),
            Format::JsonlZst => {
                let mut e = zstd::Encoder::new(buf, level.clamp(1, 19) as i32)?;
                // A frame checksum: a flipped byte in storage is an error on read, not bad data.
                e.include_checksum(true)?;
                Encoder::Zst(e)
            }
            Format::Jsonl => Encoder::Plain(buf),
        };
        Ok(ObjectWriter {
            enc,
            chunk: Vec::with_capacity(CHUNK + 4096),
            file: path,
            records: 0,
            bytes: 0,
            first_offset: -1,
            last_offset: -1,
            min_time: None,
            max_time: None,
        })
    }

    /// As [`ObjectWriter::new`], compressing on a thread of its own, so that the caller builds the
    /// next lines while the previous ones compress.
    pub fn new_threaded(dir: &Path, format: Format, level: u32) -> io::Result<ObjectWriter> {
        let mut w = ObjectWriter::new(dir, format, level)?;
        let mut inner = std::mem::replace(
            &mut w.enc,
            Encoder::Plain(BufWriter::new(tempfile::tempfile_in(dir)?)),
        );
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let thread = std::thread::Builder::new()
            .name("cranium-compress".into())
            .spawn(move || {
                for mut chunk in rx {
                    inner.write_all(&mut chunk)?;
                }
                inner.finish()
            })?;
        w.enc = Encoder::Threaded { tx, thread };
        Ok(w)
    }

    /// Append one line (without its newline) for the record at `offset`.
    pub fn write_line(
        &mut self,
        line: &[u8],
        offset: i64,
        time: Option<DateTime<Utc>>,
    ) -> io::Result<()> {
        self.chunk.extend_from_slice(line);
        self.chunk.push(b'\n');
        if self.chunk.len() >= CHUNK {
            self.flush_chunk()?;
        }
        if self.records == 0 {
            self.first_offset = offset;
        }
        self.last_offset = offset;
        self.records += 1;
        self.bytes += line.len() as u64 + 1;
        if let Some(t) = time {
            self.min_time = Some(self.min_time.map_or(t, |m| m.min(t)));
            self.max_time = Some(self.max_time.map_or(t, |m| m.max(t)));
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        self.enc.write_all(&mut self.chunk)
    }

    /// Finish the stream; returns the temporary file (deleted when dropped) and its size.
    pub fn finish(mut self) -> io::Result<(tempfile::TempPath, u64)> {
        self.flush_chunk()?;
        let buf = self.enc.finish()?;
        let file = buf.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let len = file.metadata()?.len();
        Ok((self.file, len))
    }

    pub fn path(&self) -> PathBuf {
        self.file.to_path_buf()
    }
}

/// A reader of an object's lines as it decompresses.
pub fn reader<'a>(format: Format, data: &'a [u8]) -> io::Result<Box<dyn io::BufRead + Send + 'a>> {
    const BUF: usize = 256 * 1024;
    Ok(match format {
        Format::JsonlGz => Box::new(io::BufReader::with_capacity(
            BUF,
            flate2::read::MultiGzDecoder::new(data),
        )),
        Format::JsonlZst => Box::new(io::BufReader::with_capacity(
            BUF,
            zstd::stream::read::Decoder::with_buffer(data)?,
        )),
        Format::Jsonl => Box::new(data),
    })
}

/// Decode an object's bytes into its lines (for tests and checks that read objects back).
pub fn decode(format: Format, data: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    match format {
        Format::JsonlGz => {
            flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out)?;
        }
        Format::JsonlZst => {
            zstd::stream::read::Decoder::new(data)?.read_to_end(&mut out)?;
        }
        Format::Jsonl => out.extend_from_slice(data),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefixes_that_could_leave_their_folder_are_refused() {
        for ok in [
            "events",
            "events/app_events",
            "mysql/users/2026/03/01",
            "a.b/c-d_e",
        ] {
            assert_eq!(check_key_prefix(ok), Ok(()), "{ok}");
        }
        let why = |p: &str| check_key_prefix(p).expect_err(p);
        assert_eq!(
            why(""),
            "it is empty: objects would go to the top of the bucket; give it a folder such as events/app"
        );
        assert_eq!(
            why("mysql/../../etc"),
            "it has a '..' folder, which could resolve outside the prefix; a key prefix takes plain folder names"
        );
        assert!(why("a/./b").starts_with("it has a '.' folder"));
        assert_eq!(why("a//b"), "it has an empty folder ('//')");
        assert_eq!(
            why("a\n/b"),
            "it contains the character '\\n': a key prefix takes no control characters or backslashes"
        );
        assert!(why("a\\..\\b").contains("'\\\\'"));
        assert!(why("a\0b").contains("'\\0'"));
    }

    #[test]
    fn folders_follow_the_time_zone() {
        let t = DateTime::parse_from_rfc3339("2026-03-01T00:30:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        assert_eq!(
            hour_folder("events/x/", t, chrono_tz::UTC),
            "events/x/2026/03/01/00"
        );
        assert_eq!(
            hour_folder("events/x", t, chrono_tz::America::New_York),
            "events/x/2026/02/28/19"
        );
    }

    #[test]
    fn names_sort_by_offset_and_avoid_plus() {
        let n = object_name("app_events", 3, 1200, 1999, "jsonl.gz");
        assert_eq!(n, "app_events.p3.o000000001200-000000001999.jsonl.gz");
        assert!(!n.contains('+'));
    }

    #[test]
    fn record_times() {
        let j = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
        let want = "2026-03-01T12:00:00+00:00";
        for v in [
            r#""2026-03-01T12:00:00Z""#,
            r#""2026-03-01T13:00:00+01:00""#,
            r#""2026-03-01 12:00:00""#,
            "1772366400",
            "1772366400000",
        ] {
            let t = parse_record_time(&j(v)).map(|t| t.to_rfc3339());
            assert_eq!(t.as_deref(), Ok(want), "{v}");
        }
        assert!(parse_record_time(&j(r#""yesterday""#)).is_err());
        assert!(parse_record_time(&j("null")).is_err());
    }

    #[test]
    fn writer_round_trip() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        for f in [Format::JsonlGz, Format::JsonlZst, Format::Jsonl] {
            let mut w = ObjectWriter::new(dir.path(), f, f.default_level())?;
            w.write_line(br#"{"a":1}"#, 10, None)?;
            w.write_line(br#"{"a":2}"#, 12, None)?;
            assert_eq!((w.first_offset, w.last_offset, w.records), (10, 12, 2));
            let (p, len) = w.finish()?;
            let data = std::fs::read(&p)?;
            assert_eq!(data.len() as u64, len);
            assert_eq!(decode(f, &data)?, b"{\"a\":1}\n{\"a\":2}\n");
        }
        Ok(())
    }
}
