//! The dashboard's stylesheet and script, embedded in the binary and served under names that
//! carry a hash of their content (`app.3f2a….css`), so browsers cache them for a year and a new
//! version is a new name.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        mime: "text/css; charset=utf-8",
        body: include_str!("assets/app.css"),
    },
    Asset {
        name: "app.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("assets/app.js"),
    },
];

/// FNV-1a, 64 bits: enough to tell two versions of a file apart.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn hashed_names() -> &'static Vec<String> {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let (stem, ext) = a.name.split_once('.').unwrap_or((a.name, ""));
                format!("{stem}.{:012x}.{ext}", fnv(a.body.as_bytes()) >> 16)
            })
            .collect()
    })
}

/// The URL of an asset by its plain name (`app.css` → `/assets/app.<hash>.css`).
pub fn url(name: &str) -> String {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => format!("/assets/{}", hashed_names()[i]),
        None => format!("/assets/{name}"),
    }
}

pub async fn serve(Path(name): Path<String>) -> Response {
    let names = hashed_names();
    for (i, a) in ASSETS.iter().enumerate() {
        let cache = if names[i] == name {
            "public, max-age=31536000, immutable"
        } else if a.name == name {
            "no-cache"
        } else {
            continue;
        };
        return (
            [
                (header::CONTENT_TYPE, a.mime),
                (header::CACHE_CONTROL, cache),
            ],
            a.body,
        )
            .into_response();
    }
    (StatusCode::NOT_FOUND, "no such asset\n").into_response()
}
