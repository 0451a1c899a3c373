//! One daemon per SQLite store: an exclusive lock on a file next to the database, held for the
//! daemon's life and released by the kernel when the process ends, however it ends (so a
//! SIGKILLed daemon never leaves a stale lock). The file holds the holder's pid, for the message
//! that a second daemon prints.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another cranium daemon (pid {pid}) is running on the store sqlite://{store} (lock file {lock}); \
         stop it first, or use a PostgreSQL store to run several daemons"
    )]
    Held {
        pid: String,
        store: String,
        lock: String,
    },
    #[error("cannot open the daemon lock file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    pub path: PathBuf,
}

/// Takes the daemon lock of the SQLite database at `db`.
pub fn lock_sqlite_store(db: &Path) -> Result<StoreLock, LockError> {
    let path = PathBuf::from(format!("{}.daemon.lock", db.display()));
    let io = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim().to_string();
            return Err(LockError::Held {
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid
                },
                store: db.display().to_string(),
                lock: path.display().to_string(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.flush().map_err(io)?;
    Ok(StoreLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("state.db");
        let held = lock_sqlite_store(&db).expect("first lock");
        let err = lock_sqlite_store(&db).expect_err("second lock");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("state.db"), "{msg}");
        drop(held);
        lock_sqlite_store(&db).expect("lock after release");
    }
}
