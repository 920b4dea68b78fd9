//! SQL of the dispatcher: frozen campaigns, the per-recipient delivery log,
//! and the lease that keeps two runs from sending the same campaign.
//!
//! A delivery row moves `queued` -> `sending` -> `sent` | `deferred` |
//! `failed` | `skipped`; `deferred` goes back through `sending` when its
//! retry is due. `sending` is committed before the SMTP transaction and the
//! outcome after it, so after a crash the rows still `sending` are exactly
//! the messages that were in flight; `resolve_in_flight` settles them.

use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, Row, SqlitePool};

use super::Result;

/// A campaign row.
#[derive(Debug, Clone)]
pub struct CampaignRow {
    pub id: i64,
    pub slug: String,
    pub list_id: i64,
    pub subject: String,
    pub compiled: String,
    pub source_hash: String,
    pub status: String,
    pub send_at: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
}

impl FromRow<'_, SqliteRow> for CampaignRow {
    fn from_row(r: &SqliteRow) -> sqlx::Result<Self> {
        Ok(CampaignRow {
            id: r.try_get("id")?,
            slug: r.try_get("slug")?,
            list_id: r.try_get("list_id")?,
            subject: r.try_get("subject")?,
            compiled: r.try_get("compiled")?,
            source_hash: r.try_get("source_hash")?,
            status: r.try_get("status")?,
            send_at: r.try_get("send_at")?,
            created_at: r.try_get("created_at")?,
            started_at: r.try_get("started_at")?,
            finished_at: r.try_get("finished_at")?,
            lease_owner: r.try_get("lease_owner")?,
            lease_until: r.try_get("lease_until")?,
        })
    }
}

pub(super) const CAMPAIGN_COLUMNS: &str = "id, slug, list_id, subject, compiled, source_hash, status, send_at, \
     created_at, started_at, finished_at, lease_owner, lease_until";

/// A campaign to freeze.
#[derive(Debug, Clone)]
pub struct NewCampaign<'a> {
    pub slug: &'a str,
    pub list_id: i64,
    pub subject: &'a str,
    pub compiled: &'a str,
    pub source_hash: &'a str,
    pub send_at: i64,
    pub now: i64,
}

pub async fn campaign_by_slug(pool: &SqlitePool, slug: &str) -> Result<Option<CampaignRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE slug = ?"
    ))
    .bind(slug)
    .fetch_optional(pool)
    .await?)
}

pub async fn campaign_by_id(pool: &SqlitePool, id: i64) -> Result<Option<CampaignRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// All campaigns, newest first.
pub async fn campaigns(pool: &SqlitePool) -> Result<Vec<CampaignRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns ORDER BY id DESC"
    ))
    .fetch_all(pool)
    .await?)
}

/// Freezes a campaign as `scheduled`; returns its id.
pub async fn insert_campaign(pool: &SqlitePool, c: &NewCampaign<'_>) -> Result<i64> {
    let id = sqlx::query(
        "INSERT INTO campaigns (slug, list_id, subject, compiled, source_hash, status, send_at, created_at)
         VALUES (?, ?, ?, ?, ?, 'scheduled', ?, ?)",
    )
    .bind(c.slug)
    .bind(c.list_id)
    .bind(c.subject)
    .bind(c.compiled)
    .bind(c.source_hash)
    .bind(c.send_at)
    .bind(c.now)
    .execute(pool)
    .await?
    .last_insert_rowid();
    Ok(id)
}

/// Sets a campaign's status (and the start or finish time it implies).
pub async fn set_campaign_status(pool: &SqlitePool, id: i64, status: &str, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE campaigns SET status = ?2,
             started_at = CASE WHEN ?2 = 'sending' THEN COALESCE(started_at, ?3) ELSE started_at END,
             finished_at = CASE WHEN ?2 = 'sent' THEN ?3 ELSE finished_at END
         WHERE id = ?1",
    )
    .bind(id)
    .bind(status)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// Moves a scheduled campaign's time (`send --at` on a queued campaign).
pub async fn set_send_at(pool: &SqlitePool, id: i64, send_at: i64) -> Result<()> {
    sqlx::query("UPDATE campaigns SET send_at = ? WHERE id = ?")
        .bind(send_at)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Campaigns with work: scheduled and due, or sending (resumes and retries).
pub async fn due_campaigns(pool: &SqlitePool, now: i64) -> Result<Vec<CampaignRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns
         WHERE (status = 'scheduled' AND send_at <= ?) OR status = 'sending'
         ORDER BY send_at, id"
    ))
    .bind(now)
    .fetch_all(pool)
    .await?)
}

/// Takes the campaign's lease for `owner` until `until`, if it is free,
/// expired, already `owner`'s, or held by `dead_owner` (a process on this
/// host that no longer exists). Atomic: of two runs, one wins.
pub async fn try_lease(
    pool: &SqlitePool,
    id: i64,
    owner: &str,
    now: i64,
    until: i64,
    dead_owner: Option<&str>,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE campaigns SET lease_owner = ?2, lease_until = ?3
         WHERE id = ?1 AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_until < ?4 OR lease_owner = ?5)",
    )
    .bind(id)
    .bind(owner)
    .bind(until)
    .bind(now)
    .bind(dead_owner)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Extends a lease we hold; false if another run took it.
pub async fn renew_lease(pool: &SqlitePool, id: i64, owner: &str, until: i64) -> Result<bool> {
    let done = sqlx::query("UPDATE campaigns SET lease_until = ? WHERE id = ? AND lease_owner = ?")
        .bind(until)
        .bind(id)
        .bind(owner)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn release_lease(pool: &SqlitePool, id: i64, owner: &str) -> Result<()> {
    sqlx::query("UPDATE campaigns SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?")
        .bind(id)
        .bind(owner)
        .execute(pool)
        .await?;
    Ok(())
}

/// Queues one delivery per audience member, once: run again, it adds only
/// people who joined since. One statement; memory stays flat.
pub async fn materialise(
    pool: &SqlitePool,
    campaign_id: i64,
    list_id: i64,
    now: i64,
) -> Result<u64> {
    let done = sqlx::query(&format!(
        "INSERT OR IGNORE INTO deliveries (campaign_id, subscriber_id, status, attempts, updated_at)
         SELECT ?2, a.id, 'queued', 0, ?3 FROM ({}) a",
        super::subscribers::AUDIENCE_SQL
    ))
    .bind(list_id)
    .bind(campaign_id)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// What happens to deliveries left `sending` by a run that died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// Mark `unknown`: never sent again (the default: no one mailed twice).
    Unknown,
    /// Queue again: every recipient gets the mail, maybe twice.
    Resend,
}

/// Settles rows left `sending` by a dead run; returns how many.
pub async fn resolve_in_flight(
    pool: &SqlitePool,
    campaign_id: i64,
    policy: InFlight,
    now: i64,
) -> Result<u64> {
    let status = match policy {
        InFlight::Unknown => "unknown",
        InFlight::Resend => "queued",
    };
    let done = sqlx::query(
        "UPDATE deliveries SET status = ?, updated_at = ?,
             last_reply = 'in flight when an earlier run stopped'
         WHERE campaign_id = ? AND status = 'sending'",
    )
    .bind(status)
    .bind(now)
    .bind(campaign_id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// One recipient to send to.
#[derive(Debug, Clone)]
pub struct Job {
    pub delivery_id: i64,
    pub subscriber_id: i64,
    pub email: String,
    pub name: String,
    pub attributes: String,
    pub attempts: i64,
    /// Still subscribed, active, confirmed and not suppressed at claim time.
    pub eligible: bool,
}

impl FromRow<'_, SqliteRow> for Job {
    fn from_row(r: &SqliteRow) -> sqlx::Result<Self> {
        Ok(Job {
            delivery_id: r.try_get("delivery_id")?,
            subscriber_id: r.try_get("subscriber_id")?,
            email: r.try_get("email")?,
            name: r.try_get("name")?,
            attributes: r.try_get("attributes")?,
            attempts: r.try_get("attempts")?,
            eligible: r.try_get("eligible")?,
        })
    }
}

/// The next deliveries due: queued, or deferred with their retry due.
pub async fn due_jobs(
    pool: &SqlitePool,
    campaign_id: i64,
    list_id: i64,
    now: i64,
    limit: i64,
) -> Result<Vec<Job>> {
    Ok(sqlx::query_as(
        "SELECT d.id AS delivery_id, d.subscriber_id, COALESCE(s.email, '') AS email, s.name, s.attributes, d.attempts,
                (s.status = 'active' AND s.email IS NOT NULL AND COALESCE(sub.status, '') = 'confirmed'
                 AND NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.hash = s.email_hash)) AS eligible
         FROM deliveries d
         JOIN subscribers s ON s.id = d.subscriber_id
         LEFT JOIN subscriptions sub ON sub.subscriber_id = d.subscriber_id AND sub.list_id = ?2
         WHERE d.campaign_id = ?1
           AND (d.status = 'queued' OR (d.status = 'deferred' AND d.next_attempt_at <= ?3))
         ORDER BY d.id
         LIMIT ?4",
    )
    .bind(campaign_id)
    .bind(list_id)
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sent {
        reply: String,
        message_id: String,
    },
    /// Try again at `retry_at`.
    Deferred {
        reply: String,
        retry_at: i64,
    },
    /// The message was sent but no answer came (timeout, closed
    /// connection): it may have been delivered. Never sent again.
    Unknown {
        reply: String,
    },
    /// Permanently refused; `hard_bounce` also marks the subscriber bounced.
    Failed {
        reply: String,
        hard_bounce: bool,
    },
    /// No longer subscribed or suppressed when its turn came.
    Skipped {
        reason: String,
    },
    /// Claimed but never attempted (the run stopped first): queue again.
    Unclaimed,
}

/// Marks `ids` as in flight, and records `outcomes`, in one transaction.
/// This is the group commit that brackets every SMTP transaction.
pub async fn commit(
    pool: &SqlitePool,
    campaign_id: i64,
    claim: &[i64],
    outcomes: &[(i64, i64, Outcome)],
    now: i64,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    // The common case, sent, is one statement per batch.
    let sent: Vec<(i64, &str, &str)> = outcomes
        .iter()
        .filter_map(|(d, _, o)| match o {
            Outcome::Sent { reply, message_id } => Some((*d, reply.as_str(), message_id.as_str())),
            _ => None,
        })
        .collect();
    for chunk in sent.chunks(300) {
        let values = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "WITH v(id, reply, mid) AS (VALUES {values})
             UPDATE deliveries SET status = 'sent', last_reply = v.reply, message_id = v.mid,
                 next_attempt_at = NULL, updated_at = ?, sent_at = ?
             FROM v WHERE deliveries.id = v.id"
        );
        let mut q = sqlx::query(&sql);
        for (id, reply, mid) in chunk {
            q = q.bind(id).bind(reply).bind(mid);
        }
        q.bind(now).bind(now).execute(&mut *tx).await?;
    }
    for (delivery_id, subscriber_id, outcome) in outcomes {
        let (status, reply, next): (&str, Option<&str>, Option<i64>) = match outcome {
            Outcome::Sent { .. } => continue,
            Outcome::Deferred { reply, retry_at } => ("deferred", Some(reply), Some(*retry_at)),
            Outcome::Failed { reply, .. } => ("failed", Some(reply), None),
            Outcome::Unknown { reply } => ("unknown", Some(reply), None),
            Outcome::Skipped { reason } => ("skipped", Some(reason), None),
            Outcome::Unclaimed => ("queued", None, None),
        };
        sqlx::query(
            "UPDATE deliveries SET status = ?2, last_reply = COALESCE(?3, last_reply), next_attempt_at = ?4,
                 updated_at = ?5,
                 attempts = CASE WHEN ?2 = 'queued' THEN MAX(attempts - 1, 0) ELSE attempts END
             WHERE id = ?1",
        )
        .bind(delivery_id)
        .bind(status)
        .bind(reply)
        .bind(next)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Outcome::Failed {
            reply,
            hard_bounce: true,
        } = outcome
        {
            sqlx::query("UPDATE subscribers SET status = 'bounced', updated_at = ? WHERE id = ? AND status = 'active'")
                .bind(now)
                .bind(subscriber_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO events (subscriber_id, campaign_id, kind, source, detail, created_at)
                 VALUES (?, ?, 'bounced', 'dispatch', ?, ?)",
            )
            .bind(subscriber_id)
            .bind(campaign_id)
            .bind(format!("hard: {reply}"))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
    }
    for chunk in claim.chunks(400) {
        let ids = vec!["?"; chunk.len()].join(", ");
        let sql = format!(
            "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, updated_at = ? WHERE id IN ({ids})"
        );
        let mut q = sqlx::query(&sql).bind(now);
        for id in chunk {
            q = q.bind(id);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Delivery counts by status.
pub async fn counts(pool: &SqlitePool, campaign_id: i64) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT status, COUNT(*) FROM deliveries WHERE campaign_id = ? GROUP BY status ORDER BY status")
        .bind(campaign_id)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect())
}

/// When the next deferred delivery is due, if any.
pub async fn next_retry(pool: &SqlitePool, campaign_id: i64) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE campaign_id = ? AND status = 'deferred'",
    )
    .bind(campaign_id)
    .fetch_one(pool)
    .await?)
}

/// Rows still to settle: queued, sending or deferred.
pub async fn open_count(pool: &SqlitePool, campaign_id: i64) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM deliveries WHERE campaign_id = ? AND status IN ('queued', 'sending', 'deferred')",
    )
    .bind(campaign_id)
    .fetch_one(pool)
    .await?)
}

/// Events of a kind since a time, for a campaign's list (for `status`).
pub async fn events_since(
    pool: &SqlitePool,
    list_id: i64,
    campaign_id: i64,
    kind: &str,
    since: i64,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE kind = ?3 AND created_at >= ?4
             AND (campaign_id = ?2 OR (campaign_id IS NULL AND (list_id = ?1 OR list_id IS NULL)))",
    )
    .bind(list_id)
    .bind(campaign_id)
    .bind(kind)
    .bind(since)
    .fetch_one(pool)
    .await?)
}

/// A setting, e.g. the generated development secret.
pub async fn setting(pool: &SqlitePool, key: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(pool)
            .await?,
    )
}

/// Stores a setting unless it exists; returns the stored value.
pub async fn setting_or_insert(pool: &SqlitePool, key: &str, value: &str) -> Result<String> {
    sqlx::query("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)")
        .bind(key)
        .bind(value)
        .execute(pool)
        .await?;
    Ok(setting(pool, key)
        .await?
        .unwrap_or_else(|| value.to_string()))
}

impl super::Store {
    /// One person's deliveries, newest first: (status, last SMTP reply or
    /// failure reason).
    pub async fn deliveries_of(&self, subscriber_id: i64) -> Result<Vec<(String, Option<String>)>> {
        Ok(sqlx::query_as(
            "SELECT status, last_reply FROM deliveries WHERE subscriber_id = ? ORDER BY id DESC",
        )
        .bind(subscriber_id)
        .fetch_all(self.pool())
        .await?)
    }
}
