//! The preview server of `bulletin preview`: the rendered email at desktop
//! or phone width, the text part, and the warnings; the page reloads itself
//! when the campaign or a template changes. Serves loopback only.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::render::escape_html;

/// One rendering of the campaign for the sample recipient.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
    pub warnings: Vec<String>,
}

type RenderFn = dyn Fn() -> Result<Rendered, String> + Send + Sync;
type VersionFn = dyn Fn() -> Option<SystemTime> + Send + Sync;

/// Where renderings come from: `render` compiles; `version` changes when a
/// source file does.
#[derive(Clone)]
pub struct Source {
    pub render: Arc<RenderFn>,
    pub version: Arc<VersionFn>,
}

/// The last rendering: source version, generation number, result.
type Cached = Option<(Option<SystemTime>, u64, Result<Rendered, String>)>;

#[derive(Clone)]
struct AppState {
    source: Source,
    cache: Arc<Mutex<Cached>>,
}

impl AppState {
    /// The current rendering and its generation number; re-renders when a
    /// source file changed since the last one.
    fn current(&self) -> (u64, Result<Rendered, String>) {
        let version = (self.source.version)();
        let mut cache = self.cache.lock().expect("preview cache lock");
        match &*cache {
            Some((v, generation, r)) if *v == version => (*generation, r.clone()),
            other => {
                let generation = other.as_ref().map_or(1, |(_, g, _)| g + 1);
                let r = (self.source.render)();
                *cache = Some((version, generation, r.clone()));
                (generation, r)
            }
        }
    }
}

/// The preview routes.
pub fn router(source: Source) -> Router {
    let state = AppState {
        source,
        cache: Arc::new(Mutex::new(None)),
    };
    Router::new()
        .route("/", get(page))
        .route("/email.html", get(email_html))
        .route("/email.txt", get(email_text))
        .route("/version", get(version))
        .with_state(state)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Source,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(source))
        .with_graceful_shutdown(shutdown)
        .await
}

#[derive(Deserialize)]
struct ViewQuery {
    #[serde(default)]
    view: Option<String>,
}

async fn page(State(state): State<AppState>, Query(q): Query<ViewQuery>) -> Html<String> {
    let (generation, rendered) = state.current();
    let view = q.view.as_deref().unwrap_or("desktop");
    let tab = |name: &str, label: &str| {
        let current = if name == view {
            " aria-current=\"page\""
        } else {
            ""
        };
        format!("<a href=\"/?view={name}\"{current}>{label}</a>")
    };
    let main = match (&rendered, view) {
        (Err(e), _) => format!(
            "<pre class=\"error\" role=\"alert\">{}</pre>",
            escape_html(e)
        ),
        (Ok(r), "text") => format!("<pre class=\"text\">{}</pre>", escape_html(&r.text)),
        (Ok(_), v) => {
            let width = if v == "phone" { 375 } else { 800 };
            format!(
                "<iframe title=\"email\" src=\"/email.html?g={generation}\" style=\"width:{width}px\"></iframe>"
            )
        }
    };
    let (subject, warnings) = match &rendered {
        Ok(r) => (
            escape_html(&r.subject),
            r.warnings
                .iter()
                .map(|w| format!("<li>{}</li>", escape_html(w)))
                .collect::<String>(),
        ),
        Err(_) => ("(does not compile)".to_string(), String::new()),
    };
    let warnings = if warnings.is_empty() {
        String::new()
    } else {
        format!("<ul class=\"warnings\">{warnings}</ul>")
    };
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Preview: {subject}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0; background: #f4f4f4; color: #222; }}
header {{ padding: 12px 16px; background: #fff; border-bottom: 1px solid #ccc; }}
nav a {{ margin-right: 12px; }} nav a[aria-current] {{ font-weight: bold; }}
main {{ display: flex; justify-content: center; padding: 16px; }}
iframe {{ height: 80vh; border: 1px solid #bbb; background: #fff; }}
pre.text {{ background: #fff; padding: 16px; max-width: 80ch; white-space: pre-wrap; }}
pre.error {{ background: #fee; padding: 16px; color: #900; white-space: pre-wrap; }}
.warnings {{ color: #8a5a00; }}
</style></head>
<body><header><strong>Subject:</strong> {subject}
<nav>{} {} {}</nav>{warnings}</header>
<main>{main}</main>
<script>
const g = {generation};
setInterval(() => fetch('/version').then(r => r.text()).then(v => {{ if (v !== String(g)) location.reload(); }}).catch(() => {{}}), 1000);
</script>
</body></html>"#,
        tab("desktop", "Desktop"),
        tab("phone", "Phone"),
        tab("text", "Text part"),
    ))
}

async fn email_html(State(state): State<AppState>) -> Response {
    match state.current().1 {
        Ok(r) => Html(r.html).into_response(),
        Err(e) => Html(format!("<pre>{}</pre>", escape_html(&e))).into_response(),
    }
}

async fn email_text(State(state): State<AppState>) -> Response {
    let body = match state.current().1 {
        Ok(r) => r.text,
        Err(e) => e,
    };
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn version(State(state): State<AppState>) -> String {
    state.current().0.to_string()
}
