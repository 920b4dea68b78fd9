//! The pages a subscriber reaches from an email: one-click unsubscribe
//! (RFC 8058) and the preference center (name, lists, leave everything,
//! download my data, erase me).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{AppState, Error, PreferencesLink, UnsubscribeLink, list_for, person};
use crate::links::{self, Csrf};
use crate::store::List;
use crate::store::now;
use crate::store::people;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/unsubscribe/{token}",
            get(unsubscribe_page).post(unsubscribe),
        )
        .route(
            "/preferences/{token}",
            get(preferences).post(save_preferences),
        )
        .route("/preferences/{token}/data", get(download))
        .route("/preferences/{token}/erase", get(erase_page).post(erase))
}

fn page(
    state: &AppState,
    name: &str,
    title: &str,
    data: &impl Serialize,
) -> Result<Html<String>, Error> {
    state
        .inner
        .pages
        .page(name, title, data)
        .map(Html)
        .map_err(Error::Internal)
}

fn message(state: &AppState, heading: &str, paragraphs: &[&str]) -> Result<Html<String>, Error> {
    state
        .inner
        .pages
        .message(heading, paragraphs)
        .map(Html)
        .map_err(Error::Internal)
}

/// GET: a page with one button; changes nothing (mail scanners follow links).
async fn unsubscribe_page(
    State(state): State<AppState>,
    link: UnsubscribeLink,
) -> Result<Html<String>, Error> {
    let UnsubscribeLink { claims, token } = link;
    let list = list_for(&state, claims.subscriber, claims.list).await?;
    let urls = &state.inner.urls;
    let preferences = links::Preferences {
        subscriber: claims.subscriber,
        via_list: Some(claims.list),
    };
    page(
        &state,
        "unsubscribe",
        "Unsubscribe",
        &json!({
            "list": list,
            "action": format!("/unsubscribe/{token}"),
            "preferences_url": urls.preferences(&state.inner.signer, &preferences),
        }),
    )
}

/// Does the body say `List-Unsubscribe=One-Click` (urlencoded or multipart)?
fn is_one_click(headers: &HeaderMap, body: &[u8]) -> bool {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        // A part named List-Unsubscribe whose value is One-Click.
        let text = String::from_utf8_lossy(body);
        return text.split("name=\"List-Unsubscribe\"").skip(1).any(|rest| {
            rest.split_once("\r\n\r\n")
                .or_else(|| rest.split_once("\n\n"))
                .is_some_and(|(_, value)| value.trim_start().starts_with("One-Click"))
        });
    }
    form_urlencoded::parse(body).any(|(k, v)| k == "List-Unsubscribe" && v == "One-Click")
}

/// POST with `List-Unsubscribe=One-Click`: unsubscribed from that list,
/// 200, no redirect; harmless when repeated. The event names the campaign
/// the link came in, when the token carries it.
async fn unsubscribe(
    State(state): State<AppState>,
    link: UnsubscribeLink,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let claims = link.claims;
    let list = list_for(&state, claims.subscriber, claims.list).await?;
    if !is_one_click(&headers, &body) {
        return Err(Error::BadRequest(
            "The request needs List-Unsubscribe=One-Click.",
        ));
    }
    state
        .inner
        .writer
        .set_subscription(people::Change {
            subscriber: claims.subscriber,
            list: claims.list,
            campaign: claims.campaign,
            status: "unsubscribed",
            source: "web",
            now: now(),
        })
        .await?;
    let text = format!("You will no longer receive {} at this address.", list.name);
    Ok((
        StatusCode::OK,
        message(&state, "You are unsubscribed", &[&text])?,
    )
        .into_response())
}

#[derive(Serialize)]
struct ListChoice {
    slug: String,
    name: String,
    description: String,
    subscribed: bool,
    pending: bool,
    /// The email whose link opened the page came through this list.
    via: bool,
}

/// The lists shown to a person: every public list and any list they are on;
/// `via` is the list the email they came from was sent through, if any.
async fn choices(
    state: &AppState,
    subscriber: i64,
    via: Option<i64>,
) -> Result<Vec<(List, ListChoice)>, Error> {
    let mine = state.inner.store.lists_of(subscriber).await?;
    let mut out = Vec::new();
    for l in state.inner.store.public_lists().await? {
        if !mine.iter().any(|(m, _)| m.id == l.id) {
            out.push((l, String::new()));
        }
    }
    out.extend(mine);
    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(out
        .into_iter()
        .map(|(l, status)| {
            let choice = ListChoice {
                slug: l.slug.clone(),
                name: l.name.clone(),
                description: l.description.clone(),
                subscribed: status == "confirmed" || status == "pending",
                pending: status == "pending",
                via: Some(l.id) == via,
            };
            (l, choice)
        })
        .collect())
}

#[derive(Deserialize)]
struct Saved {
    saved: Option<String>,
}

async fn preferences(
    State(state): State<AppState>,
    link: PreferencesLink,
    Query(q): Query<Saved>,
) -> Result<Html<String>, Error> {
    let PreferencesLink { claims, token } = link;
    let p = person(&state, claims.subscriber).await?;
    let lists: Vec<ListChoice> = choices(&state, p.id, claims.via_list)
        .await?
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    page(
        &state,
        "preferences",
        "Your subscription",
        &json!({
            "saved": q.saved.is_some(),
            "action": format!("/preferences/{token}"),
            "csrf": state.inner.signer.sign(&Csrf { subscriber: p.id }),
            "name": p.name,
            "lists": lists,
            "data_url": format!("/preferences/{token}/data"),
            "erase_url": format!("/preferences/{token}/erase"),
        }),
    )
}

/// The form's hidden field must be this person's CSRF token.
fn check_csrf(state: &AppState, subscriber: i64, fields: &[(String, String)]) -> Result<(), Error> {
    let token = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    match state.inner.signer.verify::<Csrf>(token) {
        Some(c) if c.subscriber == subscriber => Ok(()),
        _ => Err(Error::BadRequest(
            "This form has expired. Go back, reload the page and try again.",
        )),
    }
}

async fn save_preferences(
    State(state): State<AppState>,
    link: PreferencesLink,
    body: Bytes,
) -> Result<Response, Error> {
    let PreferencesLink { claims, token } = link;
    let p = person(&state, claims.subscriber).await?;
    let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    check_csrf(&state, p.id, &fields)?;
    let writer = &state.inner.writer;
    let leave_all = fields.iter().any(|(k, v)| k == "action" && v == "leave");
    if let Some((_, name)) = fields.iter().find(|(k, _)| k == "name") {
        let name = super::typed_name(name)?;
        if name != p.name {
            state.inner.store.set_name(p.id, &name, now()).await?;
        }
    }
    if leave_all {
        // As `subscribers remove` without a list: every list left, and the
        // person marked unsubscribed, so no import brings them back.
        if let Some(email) = &p.email {
            state
                .inner
                .store
                .remove_subscriber(email, None, "web", now())
                .await?;
        }
        return Ok(Redirect::to(&format!("/preferences/{token}?saved=1")).into_response());
    }
    let wanted: Vec<&str> = fields
        .iter()
        .filter(|(k, _)| k == "list")
        .map(|(_, v)| v.as_str())
        .collect();
    // Each box as the page showed it: only the boxes the person changed
    // are applied, so an old tab cannot undo an unsubscribe made since.
    let shown: Vec<(&str, bool)> = fields
        .iter()
        .filter(|(k, _)| k == "shown")
        .filter_map(|(_, v)| v.rsplit_once(':'))
        .map(|(slug, state)| (slug, state == "on"))
        .collect();
    for (list, choice) in choices(&state, p.id, claims.via_list).await? {
        let want = wanted.contains(&list.slug.as_str());
        let was = shown
            .iter()
            .find(|(slug, _)| *slug == list.slug)
            .map_or(choice.subscribed, |(_, on)| *on);
        if want == was {
            continue;
        }
        let change = |status| people::Change {
            subscriber: p.id,
            list: list.id,
            campaign: None,
            status,
            source: "web",
            now: now(),
        };
        if want && !choice.subscribed {
            // The link proves the address, so no second confirmation.
            writer.set_subscription(change("confirmed")).await?;
        } else if !want && choice.subscribed {
            writer.set_subscription(change("unsubscribed")).await?;
        }
    }
    Ok(Redirect::to(&format!("/preferences/{token}?saved=1")).into_response())
}

/// Everything stored about the person, as JSON.
async fn download(State(state): State<AppState>, link: PreferencesLink) -> Result<Response, Error> {
    let p = person(&state, link.claims.subscriber).await?;
    let data = state.inner.store.export_person(p.id).await?;
    let body = serde_json::to_string_pretty(&data).map_err(Error::internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"my-data.json\"",
            ),
        ],
        body,
    )
        .into_response())
}

async fn erase_page(
    State(state): State<AppState>,
    link: PreferencesLink,
) -> Result<Html<String>, Error> {
    let PreferencesLink { claims, token } = link;
    let p = person(&state, claims.subscriber).await?;
    page(
        &state,
        "erase",
        "Erase your data",
        &json!({
            "action": format!("/preferences/{token}/erase"),
            "csrf": state.inner.signer.sign(&Csrf { subscriber: p.id }),
            "back": format!("/preferences/{token}"),
        }),
    )
}

async fn erase(
    State(state): State<AppState>,
    link: PreferencesLink,
    body: Bytes,
) -> Result<Html<String>, Error> {
    let p = person(&state, link.claims.subscriber).await?;
    let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    check_csrf(&state, p.id, &fields)?;
    if let Some(email) = &p.email {
        state.inner.store.forget(email, "web", now()).await?;
    }
    message(
        &state,
        "Your data is erased",
        &[
            "We deleted your name, address, subscriptions and history. You will not receive anything from us again.",
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_click_bodies() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        assert!(is_one_click(&h, b"List-Unsubscribe=One-Click"));
        assert!(!is_one_click(&h, b"List-Unsubscribe=Two-Click"));
        assert!(!is_one_click(&h, b""));
        let mut m = HeaderMap::new();
        m.insert(
            header::CONTENT_TYPE,
            "multipart/form-data; boundary=xyz".parse().unwrap(),
        );
        let body = b"--xyz\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--xyz--\r\n";
        assert!(is_one_click(&m, body));
        assert!(!is_one_click(
            &m,
            b"--xyz\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nOne-Click\r\n--xyz--\r\n"
        ));
    }
}
