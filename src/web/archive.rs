//! The archive: sent campaigns as web pages with personal fields blanked.
//! `/archive/<campaign>` is the "view in browser" link of every email.
//! Which campaigns it shows is `store::archive`'s rule (public lists only,
//! not `archive = false`); anything else is the plain 404.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use serde_json::json;

use super::{AppState, Error};
use crate::dispatch::Frozen;
use crate::render::{Personalised, Recipient};
use crate::store::deliveries::CampaignRow;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/archive", get(index))
        .route("/archive/{campaign}", get(show))
}

/// The campaign as anyone may see it: every personal field blank, the
/// unsubscribe and preference links pointing to the sign-up page.
fn blank(state: &AppState, c: &CampaignRow) -> Result<Personalised, Error> {
    let frozen: Frozen = serde_json::from_str(&c.compiled).map_err(Error::internal)?;
    let archive = state.inner.urls.archive(&c.slug);
    let subscribe = format!("{}/subscribe", state.inner.urls.base());
    Ok(frozen.compiled.personalise(&Recipient {
        archive_url: &archive,
        unsubscribe_url: &subscribe,
        preferences_url: &subscribe,
        ..Recipient::BLANK
    }))
}

async fn index(State(state): State<AppState>) -> Result<Html<String>, Error> {
    let mut campaigns = Vec::new();
    for c in state.inner.store.archived_campaigns().await? {
        let date = chrono::DateTime::from_timestamp(c.started_at.unwrap_or(c.send_at), 0)
            .map(|d| d.format("%-d %B %Y").to_string())
            .unwrap_or_default();
        // `c.subject` is the front matter's, placeholders and all: show the
        // subject the campaign's page has.
        let subject = blank(&state, &c)?.subject;
        campaigns.push(
            json!({ "subject": subject, "href": format!("/archive/{}", c.slug), "date": date }),
        );
    }
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
    let c = state
        .inner
        .store
        .archived_campaign(&slug)
        .await?
        .ok_or(Error::NotFound)?;
    Ok(Html(blank(&state, &c)?.html))
}
