//! HTTP: the subscriber pages of `bulletin serve` (one-click unsubscribe,
//! preference center, sign-up with double opt-in, archive) and the campaign
//! preview server. The only module that imports axum.
//!
//! Every link that names a person carries a signed token (`links::Signer`).
//! A token that is tampered, truncated, for another purpose or for someone
//! who no longer exists gets the same plain 404 page, and changes nothing.
//! Nothing here logs an address.

mod archive;
mod pages;
pub mod preview;
mod server;
mod signup;
mod subscriber;
pub mod webhooks;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Router, middleware};
use tokio_util::task::TaskTracker;

use crate::dispatch::Mailer;
use crate::links::{self, Signer, Token, Urls};
use crate::store::{Store, people};
pub use pages::Pages;
pub use server::{Limits, RETRY_AFTER_SECS};
pub use signup::{ConfirmationError, Confirmations};

/// Largest request body accepted; forms here are small.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Shared state of the subscriber pages.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    signer: Signer,
    urls: Urls,
    pages: Pages,
    /// Sends the double opt-in emails; `None` disables sign-up mail.
    mailer: Option<Mailer>,
    from: String,
    /// Every subscription change made on these pages goes through it.
    writer: people::Writer,
    /// Work that outlives its request (sign-ups and their emails), so that
    /// shutdown can wait for it.
    tasks: TaskTracker,
    /// The sending services whose notifications are accepted; `None`: all
    /// webhook routes answer 404.
    webhooks: Option<webhooks::Settings>,
}

impl AppState {
    pub fn new(
        store: Store,
        signer: Signer,
        urls: Urls,
        pages: Pages,
        mailer: Option<Mailer>,
        from: String,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                signer,
                urls,
                pages,
                mailer,
                from,
                writer: people::Writer::spawn(store.clone()),
                tasks: TaskTracker::new(),
                webhooks: None,
                store,
            }),
        }
    }

    /// Turns on the webhooks `settings` configures. Call it on a state just
    /// made, before it is shared.
    pub fn with_webhooks(mut self, settings: webhooks::Settings) -> AppState {
        Arc::get_mut(&mut self.inner)
            .expect("with_webhooks is called before the state is shared")
            .webhooks = Some(settings);
        self
    }
}

impl AppState {
    /// Waits until the work that answers left running (sign-ups and their
    /// confirmation emails) is done. New work may start meanwhile.
    pub async fn drain(&self) {
        let tasks = &self.inner.tasks;
        tasks.close();
        tasks.wait().await;
        tasks.reopen();
    }
}

/// The whole application, without a socket (tests call it with `oneshot`).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .merge(subscriber::router())
        .merge(signup::router())
        .merge(archive::router())
        .merge(webhooks::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

/// How long shutdown waits for sign-ups and their emails.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Serves until `shutdown` resolves, with the default [`Limits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, Limits::default(), shutdown).await
}

/// Serves until `shutdown` resolves; in-flight requests are finished, then
/// the work they left running (up to [`DRAIN_LIMIT`]).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let served = server::run(listener, router(state.clone()), limits, shutdown).await;
    if tokio::time::timeout(DRAIN_LIMIT, state.drain())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: gave up waiting for sign-up emails after {DRAIN_LIMIT:?}");
    }
    served
}

async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<&'static str, Error> {
    state.inner.store.ping().await.map_err(Error::internal)?;
    if !state.inner.writer.is_running() {
        return Err(Error::internal("the subscription writer has stopped"));
    }
    Ok("ok\n")
}

async fn not_found(axum::extract::State(state): axum::extract::State<AppState>) -> Error {
    let _ = state;
    Error::NotFound
}

/// Strict headers on every response: no framing, no referrer, no scripts.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The one error type of the web layer. 4xx carry a message for the
/// person; internal errors are logged and show no detail.
#[derive(Debug)]
pub enum Error {
    /// Unknown route, or a link that is not valid: the same page for both.
    NotFound,
    BadRequest(&'static str),
    /// A webhook whose credentials or signature do not check out.
    Unauthorized(&'static str),
    TooManyRequests,
    /// The database stayed locked: try again (mail clients retry a one-click
    /// unsubscribe on 503).
    Unavailable,
    Internal(String),
}

impl Error {
    fn internal(e: impl std::fmt::Display) -> Error {
        Error::Internal(e.to_string())
    }
}

impl From<crate::store::Error> for Error {
    fn from(e: crate::store::Error) -> Error {
        if e.is_transient() {
            tracing::warn!("answered 503: {e}");
            return Error::Unavailable;
        }
        Error::internal(e)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, heading, text) = match &self {
            Error::NotFound => (
                StatusCode::NOT_FOUND,
                "This link does not work",
                "The page you asked for is not here. If you followed a link from an email, \
                 check that the whole link was copied.",
            ),
            Error::BadRequest(m) => (StatusCode::BAD_REQUEST, "Something is missing", *m),
            Error::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "Not authorised", *m),
            Error::TooManyRequests => (
                StatusCode::TOO_MANY_REQUESTS,
                "Please wait a moment",
                "Too many requests came from your network. Try again in a few minutes.",
            ),
            Error::Unavailable => {
                let body = pages::plain(
                    "Please try again in a moment",
                    &["We are busy right now and nothing was changed. Try again in a few seconds."],
                );
                let retry = HeaderValue::from(server::RETRY_AFTER_SECS);
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, retry)],
                    Html(body),
                )
                    .into_response();
            }
            Error::Internal(e) => {
                tracing::error!("internal error: {}", without_addresses(e));
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "Nothing was changed. Please try again later.",
                )
            }
        };
        let body = pages::plain(heading, &[text]);
        (status, Html(body)).into_response()
    }
}

/// `text` with every word that holds an `@` replaced: errors from SMTP
/// servers and the database may quote an address, and logs must not.
pub(crate) fn without_addresses(text: &str) -> String {
    text.split(' ')
        .map(|w| if w.contains('@') { "<address>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A name from a form, cleaned by the one rule for typed values
/// (`text::clean`); too long is the person's to fix.
fn typed_name(raw: &str) -> Result<String, Error> {
    crate::text::clean(raw, crate::text::Field::Name)
        .map_err(|_| Error::BadRequest("That name is too long. Go back and shorten it."))
}

/// The living person a token names; erased or unknown: the plain 404.
async fn person(state: &AppState, id: i64) -> Result<crate::store::Subscriber, Error> {
    match state.inner.store.subscriber_by_id(id).await? {
        Some(p) if p.email.is_some() => Ok(p),
        _ => Err(Error::NotFound),
    }
}

/// The list a token names (`subscriber`, `list`), while the person lives;
/// otherwise the plain 404.
async fn list_for(
    state: &AppState,
    subscriber: i64,
    list: i64,
) -> Result<crate::store::List, Error> {
    state
        .inner
        .store
        .list_for(subscriber, list)
        .await?
        .ok_or(Error::NotFound)
}

/// A verified token from the path, with its claims of type `T` (one per
/// purpose, `links::Token`): the extractor refuses anything else with the
/// plain 404.
pub struct Link<T> {
    pub claims: T,
    /// The token as it came, for the page's own form action.
    pub token: String,
}

pub type UnsubscribeLink = Link<links::Unsubscribe>;
pub type PreferencesLink = Link<links::Preferences>;
pub type ConfirmLink = Link<links::Confirm>;

impl<T: Token + Send> FromRequestParts<AppState> for Link<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::NotFound)?;
        let token = params.get("token").ok_or(Error::NotFound)?;
        let claims = state
            .inner
            .signer
            .verify::<T>(token)
            .ok_or(Error::NotFound)?;
        Ok(Link {
            claims,
            token: token.clone(),
        })
    }
}

/// The client, as far as the rate limit is concerned: the peer address, or
/// behind a reverse proxy on this host (a loopback peer) the last address
/// of the last `X-Forwarded-For` line, which that proxy appended (lines
/// before it, like addresses before it, are the client's to forge); an IPv6
/// client counts as its /64, which one household or server holds.
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    fn of(peer: Option<IpAddr>, forwarded_for: &[&str]) -> Option<IpAddr> {
        let forwarded = || {
            forwarded_for
                .last()?
                .rsplit(',')
                .next()
                .and_then(|a| a.trim().parse::<IpAddr>().ok())
        };
        let ip = match peer {
            Some(p) if p.is_loopback() => forwarded().or(Some(p)),
            other => other,
        };
        ip.map(|ip| match ip {
            IpAddr::V6(v6) => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
            v4 => v4,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        Ok(ClientIp(ClientIp::of(peer, &forwarded)))
    }
}

/// The sign-up form's limit per client address: 10 requests in 10 minutes
/// from the client's first, shared through the database by every `serve`
/// process on it (`Store::sign_up_allowed`).
const SIGN_UP_LIMIT: people::SignUpLimit = people::SignUpLimit {
    max: 10,
    window: 600,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_carry_no_address() {
        assert_eq!(
            without_addresses("550 5.1.1 <ann@example.org>: unknown user x@y"),
            "550 5.1.1 <address> unknown user <address>"
        );
        assert_eq!(without_addresses("no address"), "no address");
    }

    #[test]
    fn client_behind_a_local_proxy_and_ipv6_prefixes() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let local = ip("127.0.0.1");
        // The proxy's own entry is the last one; anything before it is the
        // client's to forge.
        assert_eq!(
            ClientIp::of(local, &["203.0.113.9, 198.51.100.7"]),
            ip("198.51.100.7")
        );
        // Several lines: the proxy's is the last one.
        assert_eq!(
            ClientIp::of(local, &["203.0.113.9", "198.51.100.7"]),
            ip("198.51.100.7")
        );
        assert_eq!(ClientIp::of(local, &[]), local);
        assert_eq!(ClientIp::of(local, &["garbage"]), local);
        assert_eq!(ClientIp::of(local, &["198.51.100.7", ""]), local);
        // From anyone else the header is ignored.
        assert_eq!(
            ClientIp::of(ip("198.51.100.8"), &["203.0.113.9"]),
            ip("198.51.100.8")
        );
        assert_eq!(
            ClientIp::of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), &[]),
            ip("2001:db8:1:2::")
        );
        assert_eq!(ClientIp::of(None, &["203.0.113.9"]), None);
    }
}
