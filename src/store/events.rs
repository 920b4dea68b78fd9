//! The `events` table: the append-only history of each person.

use super::sql::{query, query_as};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, FromRow, Row};

use super::{Result, Store};

/// One line of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: i64,
    pub subscriber_id: Option<i64>,
    /// Slug of the list concerned, if any.
    pub list: Option<String>,
    pub campaign_id: Option<i64>,
    /// Slug of that campaign.
    pub campaign: Option<String>,
    /// imported, subscribed, confirmed, unsubscribed, bounced, complained,
    /// erased, or a dispatcher kind.
    pub kind: String,
    /// cli, import, web, bounce, dispatch.
    pub source: String,
    pub detail: Option<String>,
    pub created_at: i64,
}

impl FromRow<'_, AnyRow> for Event {
    fn from_row(row: &AnyRow) -> sqlx::Result<Event> {
        Ok(Event {
            id: row.try_get("id")?,
            subscriber_id: row.try_get("subscriber_id")?,
            list: row.try_get("list")?,
            campaign_id: row.try_get("campaign_id")?,
            campaign: row.try_get("campaign")?,
            kind: row.try_get("kind")?,
            source: row.try_get("source")?,
            detail: row.try_get("detail")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// Appends an event about no campaign inside the caller's transaction.
pub(super) async fn append(
    conn: &mut AnyConnection,
    subscriber_id: i64,
    list_id: Option<i64>,
    kind: &str,
    source: &str,
    detail: Option<&str>,
    now: i64,
) -> Result<()> {
    let about = About {
        list: list_id,
        campaign: None,
    };
    append_about(conn, subscriber_id, about, kind, source, detail, now).await
}

/// What an event concerns besides the person: the list and the campaign
/// it came from, when known (a bounce or complaint matched to a delivery
/// knows its campaign).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct About {
    pub list: Option<i64>,
    pub campaign: Option<i64>,
}

/// Appends an event inside the caller's transaction: the one statement
/// that writes `events` one row at a time (imports write theirs in
/// batches).
pub(super) async fn append_about(
    conn: &mut AnyConnection,
    subscriber_id: i64,
    about: About,
    kind: &str,
    source: &str,
    detail: Option<&str>,
    now: i64,
) -> Result<()> {
    query(
        "INSERT INTO events (subscriber_id, list_id, campaign_id, kind, source, detail, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(subscriber_id)
    .bind(about.list)
    .bind(about.campaign)
    .bind(kind)
    .bind(source)
    .bind(detail)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

impl Store {
    /// A subscriber's history, oldest first.
    pub async fn events(&self, subscriber_id: i64) -> Result<Vec<Event>> {
        Ok(query_as(
            "SELECT e.id, e.subscriber_id, l.slug AS list, e.campaign_id, c.slug AS campaign, \
                    e.kind, e.source, e.detail, e.created_at \
             FROM events e LEFT JOIN lists l ON l.id = e.list_id \
                  LEFT JOIN campaigns c ON c.id = e.campaign_id \
             WHERE e.subscriber_id = ? ORDER BY e.created_at, e.id",
        )
        .bind(subscriber_id)
        .fetch_all(self.pool())
        .await?)
    }
}
