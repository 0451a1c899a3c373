//! A step's log in the browser: plain text in `<pre>` (the browser's search and copy work), the
//! last lines first with earlier parts loaded on demand, the raw file streamed with `Range`
//! support, and a live tail while the attempt runs (the page's script asks for the bytes after
//! the last it has, with a `Range` request).

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::pages::PageCx;
use super::{iso, parse_start, Web, WebError};
use crate::store::AttemptRecord;

/// Lines shown at first, and per "earlier lines".
pub const TAIL_LINES: usize = 1000;
/// Never read more than this for one view, however long the lines (a 200 MB line included).
const MAX_VIEW_BYTES: u64 = 4 << 20;
const CHUNK: u64 = 64 << 10;

/// The last `lines` lines of `path` that end at or before byte `end` (the file's length when
/// `None`): `(offset of the first byte shown, text)`. Reads backwards in chunks, at most
/// [`MAX_VIEW_BYTES`].
pub async fn tail(
    path: &std::path::Path,
    end: Option<u64>,
    lines: usize,
) -> std::io::Result<(u64, u64, String)> {
    let mut f = tokio::fs::File::open(path).await?;
    let len = f.metadata().await?.len();
    let end = end.unwrap_or(len).min(len);
    let mut start = end;
    let mut buf: Vec<u8> = Vec::new();
    let mut newlines = 0usize;
    while start > 0 && (end - start) < MAX_VIEW_BYTES {
        let from = start
            .saturating_sub(CHUNK)
            .max(end.saturating_sub(MAX_VIEW_BYTES));
        let mut chunk = vec![0u8; (start - from) as usize];
        f.seek(SeekFrom::Start(from)).await?;
        f.read_exact(&mut chunk).await?;
        // A trailing newline ends the last line; it does not start another.
        let counted = if start == end && chunk.last() == Some(&b'\n') {
            &chunk[..chunk.len() - 1]
        } else {
            &chunk[..]
        };
        newlines += counted.iter().filter(|b| **b == b'\n').count();
        chunk.extend_from_slice(&buf);
        buf = chunk;
        start = from;
        if newlines >= lines {
            break;
        }
    }
    // Keep exactly the last `lines` lines.
    let body_end = if buf.last() == Some(&b'\n') {
        buf.len() - 1
    } else {
        buf.len()
    };
    let mut seen = 0usize;
    let mut cut = 0usize;
    for (i, b) in buf[..body_end].iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                cut = i + 1;
                break;
            }
        }
    }
    if cut == 0 && start > 0 && seen < lines {
        // The view is capped mid-line: start at a character boundary.
        while cut < buf.len() && (buf[cut] & 0b1100_0000) == 0b1000_0000 {
            cut += 1;
        }
    }
    let first = start + cut as u64;
    Ok((
        first,
        len,
        String::from_utf8_lossy(&buf[cut..]).into_owned(),
    ))
}

/// The attempt `?attempt=ID` of the step (the latest without it), and its log file's path,
/// checked to be inside the project's log folder.
async fn find(
    web: &Web,
    job: &str,
    start: &str,
    step: &str,
    q: &HashMap<String, String>,
) -> Result<(AttemptRecord, Vec<AttemptRecord>, PathBuf), WebError> {
    let start = parse_start(start)?;
    let attempts = web.store().attempts(job, start, Some(step)).await?;
    let chosen = match q.get("attempt").and_then(|a| a.parse::<i64>().ok()) {
        Some(id) => attempts.iter().find(|a| a.id == id).cloned(),
        None => attempts.last().cloned(),
    };
    let Some(a) = chosen else {
        return Err(WebError::not_found(format!(
            "{job}.{step} has no such attempt for the interval starting {}",
            iso(start)
        )));
    };
    let Some(rel) = a.log_path.clone() else {
        return Err(WebError::not_found("this attempt wrote no log file"));
    };
    let root = web.engine().project.root.clone();
    let logs = root.join(".cranium/logs");
    let path = root.join(&rel);
    let (Ok(logs), Ok(real)) = (logs.canonicalize(), path.canonicalize()) else {
        return Err(WebError::not_found(format!(
            "the log {rel} is not on this host: it is on the host of the daemon that ran the \
             attempt{}",
            a.error.as_ref().map(|_| "").unwrap_or("")
        )));
    };
    if !real.starts_with(&logs) {
        return Err(WebError::new(
            StatusCode::FORBIDDEN,
            format!("the recorded log path {rel} is outside the project's log folder"),
        ));
    }
    Ok((a, attempts, real))
}

/// `GET …/steps/{step}/log[?attempt=ID][&before=OFFSET]`.
pub async fn page(
    cx: PageCx,
    Path((job, start, step)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    let (web, q) = (&cx.web, &cx.q);
    let (a, attempts, path) = find(web, &job, &start, &step, q).await?;
    let before = q.get("before").and_then(|b| b.parse::<u64>().ok());
    let (first, len, text) = tail(&path, before, TAIL_LINES)
        .await
        .map_err(|e| WebError::not_found(format!("cannot read the log {}: {e}", path.display())))?;
    let interval_start = iso(a.interval.start);
    let base = format!(
        "/jobs/{}/intervals/{}/steps/{}",
        super::auth::url_encode(&job),
        interval_start,
        super::auth::url_encode(&step)
    );
    let title = format!("{job}.{step} log");
    let ctx = minijinja::context! {
        job => job,
        step => step,
        base => base,
        interval_start => interval_start,
        attempt => pages::ser(pages::attempt_view(&a)),
        attempts => pages::ser(attempts.iter().map(pages::attempt_view).collect::<Vec<_>>()),
        text => text,
        first => first,
        len => len,
        earlier => first > 0,
        running => a.state == crate::store::StepState::Running,
    };
    cx.render("log.html", "log", title, ctx)
}

use super::pages;

/// One `bytes=` range of a file of `len` bytes: `(start, end exclusive)`.
fn range(spec: &str, len: u64) -> Option<(u64, u64)> {
    let spec = spec.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        return Some((len.saturating_sub(n), len));
    }
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        len
    } else {
        b.parse::<u64>().ok()?.saturating_add(1).min(len)
    };
    (start < end || (start == len && end == len)).then_some((start, end))
}

/// `GET …/steps/{step}/log.txt[?attempt=ID]`: the raw file, streamed; `Range: bytes=…` answers
/// 206 with that part (the live tail asks for `bytes=N-`).
pub async fn raw(
    cx: PageCx,
    Path((job, start, step)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    let (web, q) = (&cx.web, &cx.q);
    let (a, _, path) = find(web, &job, &start, &step, q).await?;
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| WebError::not_found(format!("cannot read the log: {e}")))?;
    let len = f
        .metadata()
        .await
        .map_err(|e| WebError::not_found(format!("cannot read the log: {e}")))?
        .len();
    let name = format!("{job}.{step}.attempt-{}.log", a.attempt);
    let disposition = format!(
        "inline; filename=\"{}\"",
        name.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-' && c != '_',
            "_"
        )
    );
    let requested = cx
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|r| range(r, len));
    let (status, from, to) = match requested {
        None => (StatusCode::OK, 0, len),
        Some(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
        Some(None) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response())
        }
    };
    f.seek(SeekFrom::Start(from))
        .await
        .map_err(|e| WebError::not_found(format!("cannot read the log: {e}")))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(f.take(to - from)));
    let mut res = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_DISPOSITION, disposition)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, to - from)
        .header(header::CACHE_CONTROL, "no-cache");
    if status == StatusCode::PARTIAL_CONTENT {
        let last = if to > from { to - 1 } else { from };
        res = res.header(header::CONTENT_RANGE, format!("bytes {from}-{last}/{len}"));
    }
    res.body(body)
        .map_err(|e| WebError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tail_keeps_the_last_lines_and_says_where_they_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, &text).unwrap();
        let (first, len, t) = tail(&p, None, 1000).await.unwrap();
        assert_eq!(len as usize, text.len());
        assert!(t.starts_with("line 4000\n"), "{:.40}", t);
        assert!(t.ends_with("line 4999\n"));
        assert_eq!(t.lines().count(), 1000);
        assert_eq!(&text[first as usize..], t);
        let (first2, _, t2) = tail(&p, Some(first), 1000).await.unwrap();
        assert!(t2.starts_with("line 3000\n") && t2.ends_with("line 3999\n"));
        assert_eq!(&text[first2 as usize..first as usize], t2);
        let (f3, _, t3) = tail(&p, Some(0), 1000).await.unwrap();
        assert_eq!((f3, t3.as_str()), (0, ""));
    }

    #[tokio::test]
    async fn one_huge_line_is_cut_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.log");
        let mut text = "é".repeat(5 << 20);
        text.push('\n');
        std::fs::write(&p, &text).unwrap();
        let (first, _, t) = tail(&p, None, 1000).await.unwrap();
        assert!(t.len() as u64 <= MAX_VIEW_BYTES);
        assert!(first > 0 && !t.contains('\u{fffd}'));
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(range("bytes=-10", 100), Some((90, 100)));
        assert_eq!(range("bytes=100-", 100), Some((100, 100)));
        assert_eq!(range("bytes=200-", 100), None);
        assert_eq!(range("bytes=0-1,5-6", 100), None);
        assert_eq!(range("lines=1-2", 100), None);
    }
}
