//! Sign-up with double opt-in, and the confirmation email (`Confirmations`,
//! also sent by `bulletin subscribers add`). The answer to a sign-up is the same whether
//! or not the address is known, so the form reveals nothing about who is on
//! a list; a honeypot field and a per-client rate limit keep bots out.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use serde_json::json;

use super::{AppState, ClientIp, ConfirmLink, Error, Pages, list_for};
use crate::dispatch::Mailer;
use crate::links::{Signer, Urls};
use crate::store::people;
use crate::store::{List, now};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/subscribe", get(form).post(subscribe))
        .route("/confirm/{token}", get(confirm_page).post(confirm))
}

async fn form(State(state): State<AppState>) -> Result<Html<String>, Error> {
    let lists = state.inner.store.public_lists().await?;
    state
        .inner
        .pages
        .page(
            "subscribe",
            "Subscribe",
            &json!({ "action": "/subscribe", "lists": lists }),
        )
        .map(Html)
        .map_err(Error::Internal)
}

const THANKS: &[&str] = &[
    "If this address can receive our mail, a message is on its way to it. \
     Open the link in that message to confirm your subscription.",
    "Lists that ask for confirmation send you nothing until you confirm.",
];

const SUBSCRIBED: &[&str] = &[
    "Thank you. Every email we send has a link to leave.",
    "If this address left us before, a message is on its way to it: open the link in it \
     to confirm that it is really you.",
];

async fn subscribe(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    body: Bytes,
) -> Result<Html<String>, Error> {
    if let Some(ip) = ip {
        limit_sign_ups(&state, &ip.to_string()).await?;
    }
    let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.trim().to_string())
    };
    // The answer depends only on the lists chosen, never on the address.
    let answer = |confirming: bool| {
        let (heading, text) = if confirming {
            ("Check your inbox", THANKS)
        } else {
            ("Thank you", SUBSCRIBED)
        };
        state
            .inner
            .pages
            .message(heading, text)
            .map(Html)
            .map_err(Error::Internal)
    };
    let email = get("email").unwrap_or_default();
    let email = crate::address::normalize(&email).map_err(|_| {
        Error::BadRequest("That does not look like an email address. Go back and check it.")
    })?;
    let name = super::typed_name(&get("name").unwrap_or_default())?;
    // Each public list once, however often the form names it; unknown and
    // private lists are ignored.
    let public = state.inner.store.public_lists().await?;
    let asked: std::collections::HashSet<&str> = fields
        .iter()
        .filter(|(k, _)| k == "list")
        .map(|(_, slug)| slug.as_str())
        .collect();
    let chosen: Vec<_> = public
        .iter()
        .filter(|l| asked.contains(l.slug.as_str()))
        .collect();
    if chosen.is_empty() {
        return Err(Error::BadRequest(
            "Choose at least one list. Go back and tick one.",
        ));
    }
    let confirming = chosen.iter().any(|l| l.double_opt_in);
    // A bot filled the hidden field: answer as usual, do nothing.
    if get("website").is_some_and(|v| !v.is_empty()) {
        return answer(confirming);
    }
    // The answer goes out before anything about the address is looked up,
    // so neither its words nor the time it takes can tell a stranger
    // whether the address is known, left, bounced or was erased.
    let lists: Vec<List> = chosen.into_iter().cloned().collect();
    let job = state.clone();
    state.inner.tasks.spawn(async move {
        sign_up(&job, &email, &name, &lists).await;
    });
    answer(confirming)
}

/// Refuses a client over [`super::SIGN_UP_LIMIT`], and counts the request
/// after the answer (a sign-up's answer never waits for a writer). The
/// count is shared by every server on the database; requests that arrive
/// at once may each read the count before any of them is added, so a burst
/// can pass the limit by the number of requests in flight.
async fn limit_sign_ups(state: &AppState, client: &str) -> Result<(), Error> {
    let store = &state.inner.store;
    if !store
        .sign_up_allowed(client, super::SIGN_UP_LIMIT, now())
        .await?
    {
        return Err(Error::TooManyRequests);
    }
    let (store, client) = (store.clone(), client.to_string());
    state.inner.tasks.spawn(async move {
        if let Err(e) = store
            .count_sign_up(&client, super::SIGN_UP_LIMIT, now())
            .await
        {
            tracing::warn!("sign-up not counted against the rate limit: {e}");
        }
    });
    Ok(())
}

/// The work of a sign-up, after the answer: store it, then send one
/// confirmation email for every list that waits for it (at most
/// `people::CONFIRMATIONS_PER_WINDOW` a day per address). Failures are
/// logged without the address.
async fn sign_up(state: &AppState, email: &str, name: &str, lists: &[List]) {
    let signed_up = match state.inner.store.sign_up(email, name, lists, now()).await {
        Ok(Some(signed_up)) => signed_up,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(
                "sign-up not stored: {}",
                super::without_addresses(&e.to_string())
            );
            return;
        }
    };
    let pending: Vec<&List> = lists
        .iter()
        .zip(&signed_up.outcomes)
        .filter(|(_, outcome)| **outcome == people::SignUp::Pending)
        .map(|(list, _)| list)
        .collect();
    if signed_up.send_confirmation {
        send_confirmation(state, signed_up.subscriber, email, name, &pending).await;
    } else if !pending.is_empty() {
        tracing::warn!(
            "sign-up of subscriber {}: no confirmation sent, the address had {} in the last 24 hours",
            signed_up.subscriber,
            people::CONFIRMATIONS_PER_WINDOW
        );
    }
}

/// Sends the double opt-in email through the page state's mailer; failures
/// are logged (without the address) and do not change the answer.
async fn send_confirmation(
    state: &AppState,
    subscriber: i64,
    email: &str,
    name: &str,
    lists: &[&List],
) {
    let Some(mailer) = &state.inner.mailer else {
        tracing::warn!(
            "sign-up of subscriber {subscriber} not confirmed by mail: no mailer configured"
        );
        return;
    };
    let confirmations = Confirmations {
        pages: &state.inner.pages,
        urls: &state.inner.urls,
        signer: &state.inner.signer,
        mailer,
        from: &state.inner.from,
    };
    if let Err(e) = confirmations.send(subscriber, email, name, lists).await {
        tracing::warn!(
            "confirmation for subscriber {subscriber} not sent: {}",
            super::without_addresses(&e.to_string())
        );
    }
}

/// The double opt-in email, one confirmation link per list: the one recipe
/// for the sign-up form and `bulletin subscribers add`. Callers count it
/// first (`people::sign_up`, `Store::count_confirmation`).
pub struct Confirmations<'a> {
    pub pages: &'a Pages,
    pub urls: &'a Urls,
    pub signer: &'a Signer,
    pub mailer: &'a Mailer,
    pub from: &'a str,
}

/// Why a confirmation email was not sent.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmationError {
    #[error("confirm-email template: {0}")]
    Template(String),
    #[error("{0}")]
    Send(#[from] crate::dispatch::Error),
}

impl Confirmations<'_> {
    /// Sends it; returns the server's reply.
    pub async fn send(
        &self,
        subscriber: i64,
        email: &str,
        name: &str,
        lists: &[&List],
    ) -> Result<String, ConfirmationError> {
        let links: Vec<_> = lists
            .iter()
            .map(|l| {
                let claims = crate::links::Confirm {
                    subscriber,
                    list: l.id,
                };
                let url = self.urls.confirm(self.signer, &claims);
                json!({ "name": l.name, "confirm_url": url })
            })
            .collect();
        let text = self
            .pages
            .text("confirm-email", &json!({ "name": name, "lists": links }))
            .map_err(ConfirmationError::Template)?;
        let names: Vec<&str> = lists.iter().map(|l| l.name.as_str()).collect();
        let subject = format!("Please confirm: {}", names.join(", "));
        Ok(self
            .mailer
            .send_text(self.from, email, &subject, &text)
            .await?)
    }
}

async fn confirm_page(
    State(state): State<AppState>,
    link: ConfirmLink,
) -> Result<Html<String>, Error> {
    let ConfirmLink { claims, token } = link;
    let list = list_for(&state, claims.subscriber, claims.list).await?;
    state
        .inner
        .pages
        .page(
            "confirm",
            "Confirm",
            &json!({ "list": list, "action": format!("/confirm/{token}") }),
        )
        .map(Html)
        .map_err(Error::Internal)
}

async fn confirm(
    State(state): State<AppState>,
    ip: super::ClientIp,
    link: ConfirmLink,
) -> Result<Html<String>, Error> {
    let claims = link.claims;
    let list = list_for(&state, claims.subscriber, claims.list).await?;
    let confirmed = state
        .inner
        .store
        .confirm_from(claims.subscriber, claims.list, ip.0, now())
        .await?;
    // Not pending any more: confirmed by an earlier click, or left since the
    // link was sent, in which case the person's latest choice stands.
    let subscribed = confirmed
        || state
            .inner
            .store
            .lists_of(claims.subscriber)
            .await?
            .iter()
            .any(|(l, status)| l.id == list.id && status == "confirmed");
    let pages = &state.inner.pages;
    let page = if subscribed {
        let text = format!(
            "You will receive {} at this address. Every email has a link to leave.",
            list.name
        );
        pages.message("You are subscribed", &[&text])
    } else {
        let text = format!(
            "You left {} after this link was sent to you, so it no longer subscribes you.",
            list.name
        );
        pages.page(
            "message",
            "Nothing to confirm",
            &json!({
                "heading": "Nothing to confirm",
                "paragraphs": [text],
                "link": { "href": "/subscribe", "text": format!("Sign up for {} again", list.name) },
            }),
        )
    };
    page.map(Html).map_err(Error::Internal)
}
