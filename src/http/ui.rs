//! The dashboard's static files: embedded in the binary, or read from `web-ui/` on disk with
//! `aienv serve --dev` for quick edits. Served at `/` and `/ui/...`.

use std::path::{Component, Path};

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::AppState;

macro_rules! embed {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web-ui/", $path)) as &[u8])),*]
    };
}

/// Every file of the dashboard, by path under `web-ui/`.
static FILES: &[(&str, &[u8])] = embed!(
    "index.html",
    "app.css",
    "js/app.js",
    "js/api.js",
    "js/dom.js",
    "js/overview.js",
    "js/network.js",
    "js/workspaces.js",
    "js/transfers.js",
    "js/run.js",
    "js/cluster.js",
    "js/ci.js",
    "vendor/xterm/xterm.mjs",
    "vendor/xterm/xterm.css",
    "vendor/xterm/LICENSE",
    "vendor/xterm-addon-fit/addon-fit.mjs",
    "vendor/xterm-addon-fit/LICENSE",
);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/ui/{path:.*}", web::get().to(asset));
}

async fn index(state: web::Data<AppState>) -> HttpResponse {
    serve(&state, "index.html")
}

async fn asset(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    serve(&state, &path)
}

fn serve(state: &AppState, path: &str) -> HttpResponse {
    let body = match &state.ui_dir {
        Some(dir) => {
            let safe = Path::new(path)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
            if !safe {
                return HttpResponse::NotFound().finish();
            }
            match std::fs::read(dir.join(path)) {
                Ok(bytes) => bytes,
                Err(_) => return HttpResponse::NotFound().finish(),
            }
        }
        None => match FILES.iter().find(|(name, _)| *name == path) {
            Some((_, bytes)) => bytes.to_vec(),
            None => return HttpResponse::NotFound().finish(),
        },
    };
    let content_type = match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            // xterm.js sizes and colours its rows through a <style> element it creates.
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `web-ui/` is embedded (a file missing from `FILES` would work with
    /// `--dev` and be missing from the release binary).
    #[test]
    fn every_web_ui_file_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("web-ui");
        let mut on_disk = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                let name = entry.file_name();
                // The npm manifest that pins the vendored libraries is not served.
                if name == "package.json" || name == "node_modules" {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else {
                    on_disk.push(
                        path.strip_prefix(&root)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|(name, _)| name.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }
}
