//! Hot reload: what the daemon watches, and how it knows that something changed.
//!
//! A file watcher (inotify, through `notify`) wakes the daemon as soon as `cranium.yaml`, a job
//! file, a SQL file or a Lua script changes; a periodic rescan of the same files' sizes and times
//! is the fallback where events are lost (network file systems, editors that rename). Either way
//! the daemon reloads only when the [`Fingerprint`] differs from the loaded one.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tokio::sync::mpsc;

/// The folders (and the file) a project is made of.
pub fn watched(root: &Path) -> Vec<PathBuf> {
    vec![
        root.join(crate::project::PROJECT_FILE),
        root.join("jobs"),
        root.join("sql"),
        root.join("scripts"),
    ]
}

fn relevant(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "sql" | "lua")
    )
}

/// Size and modification time of every project file, sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

impl Fingerprint {
    pub fn of(root: &Path) -> Fingerprint {
        let mut files = Vec::new();
        let mut stack = watched(root);
        while let Some(p) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                if let Ok(rd) = std::fs::read_dir(&p) {
                    stack.extend(rd.flatten().map(|e| e.path()));
                }
            } else if relevant(&p) {
                files.push((p, meta.len(), meta.modified().ok()));
            }
        }
        files.sort();
        Fingerprint(files)
    }

    /// A short hash of the fingerprinted files' paths and contents as they are now (taken right
    /// after a load), shown by `/health` and `cranium status`.
    pub fn hash(&self) -> String {
        let mut h = crc32fast::Hasher::new();
        for (p, _, _) in &self.0 {
            h.update(p.to_string_lossy().as_bytes());
            if let Ok(bytes) = std::fs::read(p) {
                h.update(&bytes);
            }
        }
        format!("{:08x}", h.finalize())
    }
}

/// Starts a watcher that sends `()` (coalesced) whenever a project file may have changed. `None`
/// when the platform has no watcher: the periodic rescan still works.
pub fn watch(root: &Path) -> Option<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    use notify::Watcher;
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if ev.paths.iter().any(|p| relevant(p)) || ev.paths.is_empty() {
                // Full: a wake-up is already pending.
                let _ = tx.try_send(());
            }
        }
    })
    .map_err(|e| tracing::warn!("no file watcher ({e}); reloads rely on the periodic rescan"))
    .ok()?;
    for p in watched(root) {
        if p.exists() {
            if let Err(e) = watcher.watch(&p, notify::RecursiveMode::Recursive) {
                tracing::warn!(path = %p.display(), "cannot watch: {e}");
            }
        }
    }
    // The root itself, non-recursively, so that a folder created later (jobs/) is noticed.
    let _ = watcher.watch(root, notify::RecursiveMode::NonRecursive);
    Some((watcher, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_changes_the_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cranium.yaml"), "name: x\n").expect("write");
        std::fs::create_dir(dir.path().join("jobs")).expect("mkdir");
        std::fs::write(dir.path().join("jobs/a.yaml"), "job: a\n").expect("write");
        std::fs::write(dir.path().join("jobs/notes.txt"), "ignored").expect("write");
        let a = Fingerprint::of(dir.path());
        assert_eq!(a.0.len(), 2);
        assert_eq!(a, Fingerprint::of(dir.path()));
        let before = a.hash();
        std::fs::write(dir.path().join("jobs/a.yaml"), "job: ab\n").expect("write");
        assert_ne!(a, Fingerprint::of(dir.path()));
        assert_ne!(before, Fingerprint::of(dir.path()).hash());
    }
}
