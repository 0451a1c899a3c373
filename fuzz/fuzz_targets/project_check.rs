//! A whole project from bytes, through the load and check `cranium check` runs (and its text and
//! JSON reports): the job-file loader, `cranium.yaml`, `${VAR}` interpolation, step checks (SQL
//! lineage, templates, Lua syntax), the DAG and the diagnostics renderer.
//!
//! Input: NUL-separated parts `jobs/a.yaml \0 cranium.yaml \0 sql/a.sql \0 jobs/b.yaml \0
//! scripts/a.lua`. Missing parts: the fixture project's `cranium.yaml` and `SELECT 1;`, no second
//! job, no script. Connections are only named, never opened.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cranium::config::interp::Env;
use libfuzzer_sys::fuzz_target;

const BASE_CONFIG: &[u8] = include_bytes!("../../tests/fixtures/base/cranium.yaml");

fn root() -> &'static Path {
    static ROOT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = ROOT.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("cranium-fuzz-")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("cranium-fuzz-").tempdir()
        }
        .expect("a temporary folder");
        let p = dir.path().to_path_buf();
        for d in ["jobs", "sql", "scripts"] {
            std::fs::create_dir_all(p.join(d)).expect("project folders");
        }
        (dir, p)
    });
    p
}

fn put(root: &Path, rel: &str, bytes: Option<&[u8]>) {
    let p = root.join(rel);
    match bytes {
        Some(b) => std::fs::write(&p, b).expect("write a project file"),
        None => {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0);
    let root = root();
    put(root, "jobs/a.yaml", Some(parts.next().unwrap_or(b"")));
    put(
        root,
        "cranium.yaml",
        Some(parts.next().unwrap_or(BASE_CONFIG)),
    );
    put(
        root,
        "sql/a.sql",
        Some(parts.next().unwrap_or(b"SELECT 1;\n")),
    );
    put(root, "jobs/b.yaml", parts.next());
    put(root, "scripts/a.lua", parts.next());

    let env = Env::from_pairs([("FUZZ_SET", "value"), ("FUZZ_URL", "postgres://u:pw@h/db")]);
    match cranium::check::check(root, &env) {
        Ok(c) => {
            let _ = c.diagnostics.render(&c.project.redactor);
            let _ = c.diagnostics.to_json(&c.project.redactor);
            let _ = c.diagnostics.has_errors();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
