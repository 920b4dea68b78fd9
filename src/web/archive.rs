//! The archive: sent campaigns as web pages with personal fields blanked.
//! `/archive/<campaign>` is the "view in browser" link of every email.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use serde_json::json;

use super::{AppState, Error};
use crate::dispatch::Frozen;
use crate::render::Recipient;
use crate::store::deliveries as db;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/archive", get(index))
        .route("/archive/{campaign}", get(show))
}

/// Campaigns the public may see: those that started sending.
fn public(status: &str) -> bool {
    matches!(status, "sending" | "sent")
}

async fn index(State(state): State<AppState>) -> Result<Html<String>, Error> {
    let campaigns: Vec<_> = db::campaigns(state.inner.store.pool())
        .await?
        .into_iter()
        .filter(|c| public(&c.status))
        .map(|c| {
            let date = chrono::DateTime::from_timestamp(c.started_at.unwrap_or(c.send_at), 0)
                .map(|d| d.format("%-d %B %Y").to_string())
                .unwrap_or_default();
            json!({ "subject": c.subject, "href": format!("/archive/{}", c.slug), "date": date })
        })
        .collect();
    state
        .inner
        .pages
        .page(
            "archive",
            "Past bulletins",
            &json!({ "campaigns": campaigns }),
        )
        .map(Html)
        .map_err(Error::Internal)
}

async fn show(
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Html<String>, Error> {
    let c = db::campaign_by_slug(state.inner.store.pool(), &slug)
        .await?
        .filter(|c| public(&c.status))
        .ok_or(Error::NotFound)?;
    let frozen: Frozen = serde_json::from_str(&c.compiled).map_err(Error::internal)?;
    let archive = state.inner.urls.archive(&c.slug);
    let subscribe = format!("{}/subscribe", state.inner.urls.base());
    let body = frozen.compiled.personalise(&Recipient {
        archive_url: &archive,
        unsubscribe_url: &subscribe,
        preferences_url: &subscribe,
        ..Recipient::BLANK
    });
    Ok(Html(body.html))
}
