//! SQL for returned mail: finding the delivery a signed bounce or complaint
//! is about, applying the rules in one transaction per message, recorded in
//! `inbound` so the same message is applied once, and keeping the mail that
//! proved nothing in `unmatched` for review.

use super::sql::{begin_write, query, query_as, query_scalar};
use sqlx::Row;

use super::{Result, Store, events};

/// What one message does to one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Hard bounce: no more mail to this address.
    Hard { reason: String },
    /// Soft bounce: counted; enough of them from different campaigns make
    /// the address bounced.
    Soft { reason: String },
    /// A spam complaint: unsubscribed from every list, never mailed again.
    Complaint { reason: String },
    /// Mail to the List-Unsubscribe mailto address.
    Unsubscribe { list_id: i64 },
}

/// Soft-bounce rule: a subscriber whose soft-bounce score reaches `limit`
/// is bounced; the score halves every `window_secs` (`bounce::score`).
#[derive(Debug, Clone, Copy)]
pub struct SoftRule {
    pub limit: i64,
    pub window_secs: i64,
}

impl SoftRule {
    /// The rule from the `[bounces]` settings `soft_limit` and
    /// `soft_window_days` (each at least 1).
    pub fn from_settings(limit: i64, window_days: i64) -> SoftRule {
        SoftRule {
            limit: limit.max(1),
            window_secs: window_days.max(1) * 86_400,
        }
    }
}

/// A person's soft-bounce score now and how it got there, for
/// `subscribers show`.
#[derive(Debug, Clone, PartialEq)]
pub struct BounceScore {
    /// The score at the time asked for, decayed.
    pub score: f64,
    /// Each change, oldest first.
    pub history: Vec<ScoreChange>,
}

/// One change of a soft-bounce score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreChange {
    pub at: i64,
    /// The campaign's slug, when the change came from one.
    pub campaign: Option<String>,
    /// What changed it: the bounce's status and reason, or "delivered".
    pub why: String,
    /// The score right after the change.
    pub score: f64,
}

/// What applying an action changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The person's status changed to this.
    Status(String),
    /// Recorded (a soft bounce under the limit, a repeat), nothing else.
    Recorded,
    /// Unsubscribed from the list.
    Unsubscribed,
}

/// The person and campaign of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOwner {
    pub subscriber: i64,
    pub campaign: i64,
    /// `None` once the person is erased.
    pub email: Option<String>,
}

/// Returned mail that proved nothing and changed nobody, for review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmatchedMail {
    /// sha256 hex of the raw message.
    pub hash: String,
    /// bounce, complaint or unsubscribe.
    pub kind: String,
    /// The From address of the message, as written.
    pub sender: String,
    pub subject: String,
    /// Why it was not matched, e.g. "no VERP token and no Message-ID of ours".
    pub reason: String,
    pub received_at: i64,
}

/// A bounce or complaint event, for `bounces list`.
#[derive(Debug, Clone)]
pub struct BounceEvent {
    pub at: i64,
    pub kind: String,
    pub email: Option<String>,
    pub campaign: Option<String>,
    pub source: String,
    pub detail: Option<String>,
}

impl Store {
    /// Whether this raw message (by sha256 hex) was processed before.
    pub async fn inbound_seen(&self, hash: &str) -> Result<bool> {
        let seen: Option<i64> = query_scalar("SELECT 1 FROM inbound WHERE hash = ?")
            .bind(hash)
            .fetch_optional(self.pool())
            .await?;
        Ok(seen.is_some())
    }

    /// Marks a message processed without acting on it (auto-replies,
    /// delays, unmatched or unrecognised mail).
    pub async fn inbound_record(&self, hash: &str, kind: &str, now: i64) -> Result<bool> {
        let done = query(
            "INSERT INTO inbound (hash, kind, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(hash)
        .bind(kind)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Who a delivery (named by a VERP or Message-ID token) went to.
    pub async fn delivery_owner(&self, delivery_id: i64) -> Result<Option<DeliveryOwner>> {
        let row = query(
            "SELECT d.subscriber_id, d.campaign_id, s.email FROM deliveries d
             LEFT JOIN subscribers s ON s.id = d.subscriber_id WHERE d.id = ?",
        )
        .bind(delivery_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| DeliveryOwner {
            subscriber: r.get(0),
            campaign: r.get(1),
            email: r.get(2),
        }))
    }

    /// Keeps a message that changed nobody for review, and marks it
    /// processed, in one transaction; `false` if it was processed before.
    pub async fn record_unmatched(&self, mail: &UnmatchedMail) -> Result<bool> {
        let mut tx = begin_write(self.pool()).await?;
        let fresh = query(
            "INSERT INTO inbound (hash, kind, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&mail.hash)
        .bind(&mail.kind)
        .bind(mail.received_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if fresh {
            query(
                "INSERT INTO unmatched (hash, kind, sender, subject, reason, received_at)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&mail.hash)
            .bind(&mail.kind)
            .bind(&mail.sender)
            .bind(&mail.subject)
            .bind(&mail.reason)
            .bind(mail.received_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(fresh)
    }

    /// Messages kept for review since `since`, oldest first.
    pub async fn unmatched_since(&self, since: i64) -> Result<Vec<UnmatchedMail>> {
        let rows = query(
            "SELECT hash, kind, sender, subject, reason, received_at FROM unmatched
             WHERE received_at >= ? ORDER BY id",
        )
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| UnmatchedMail {
                hash: r.get(0),
                kind: r.get(1),
                sender: r.get(2),
                subject: r.get(3),
                reason: r.get(4),
                received_at: r.get(5),
            })
            .collect())
    }

    /// Applies `action` to `subscriber` for the message `hash`, once: a
    /// message already in `inbound` changes nothing and returns `None`.
    /// `source` says where the report came from (pipe, file, maildir, imap,
    /// webhook:ses...); the events it writes carry it, for `bounces list`.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_inbound(
        &self,
        hash: &str,
        subscriber: i64,
        campaign: Option<i64>,
        action: &Action,
        soft: SoftRule,
        source: &str,
        now: i64,
    ) -> Result<Option<Applied>> {
        let mut tx = begin_write(self.pool()).await?;
        let kind = match action {
            Action::Hard { .. } | Action::Soft { .. } => "bounce",
            Action::Complaint { .. } => "complaint",
            Action::Unsubscribe { .. } => "unsubscribe",
        };
        let fresh = query("INSERT INTO inbound (hash, kind, subscriber_id, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(hash)
            .bind(kind)
            .bind(subscriber)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !fresh {
            return Ok(None);
        }
        let row = query("SELECT email_hash, status FROM subscribers WHERE id = ?")
            .bind(subscriber)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.commit().await?;
            return Ok(Some(Applied::Recorded));
        };
        let (hash, status): (Option<String>, String) = (row.get(0), row.get(1));
        let set_status = |new: &'static str| -> Option<&'static str> {
            (status == "active"
                || (new == "complained" && status != "erased" && status != "complained"))
                .then_some(new)
        };
        let applied = match action {
            Action::Hard { reason } => {
                record_hard_bounce(&mut tx, subscriber, campaign, source, reason, now).await?
            }
            Action::Soft { reason } => {
                bounce_event(
                    &mut tx,
                    subscriber,
                    campaign,
                    "bounced",
                    source,
                    &format!("soft: {reason}"),
                    now,
                )
                .await?;
                let score =
                    raise_score(&mut tx, subscriber, campaign, source, reason, soft, now).await?;
                match score {
                    Some(score) if crate::bounce::score::reaches(score, soft.limit) => {
                        let detail = format!("soft-bounce score {score:.1} reached {}", soft.limit);
                        bounce_event(
                            &mut tx, subscriber, campaign, "bounced", source, &detail, now,
                        )
                        .await?;
                        self::stop(
                            &mut tx,
                            subscriber,
                            hash.as_deref(),
                            set_status("bounced"),
                            "bounced",
                            now,
                        )
                        .await?
                    }
                    _ => Applied::Recorded,
                }
            }
            Action::Complaint { reason } => {
                let lists: Vec<i64> = query_scalar(
                    "SELECT list_id FROM subscriptions WHERE subscriber_id = ? AND status != 'unsubscribed'",
                )
                .bind(subscriber)
                .fetch_all(&mut *tx)
                .await?;
                query("UPDATE subscriptions SET status = 'unsubscribed', source = 'bounce', updated_at = ? WHERE subscriber_id = ?")
                    .bind(now)
                    .bind(subscriber)
                    .execute(&mut *tx)
                    .await?;
                for l in lists {
                    let about = events::About {
                        list: Some(l),
                        campaign,
                    };
                    events::append_about(
                        &mut tx,
                        subscriber,
                        about,
                        "unsubscribed",
                        "bounce",
                        Some("complaint"),
                        now,
                    )
                    .await?;
                }
                bounce_event(
                    &mut tx,
                    subscriber,
                    campaign,
                    "complained",
                    source,
                    reason,
                    now,
                )
                .await?;
                self::stop(
                    &mut tx,
                    subscriber,
                    hash.as_deref(),
                    set_status("complained"),
                    "complained",
                    now,
                )
                .await?
            }
            Action::Unsubscribe { list_id } => {
                let changed = query(
                    "UPDATE subscriptions SET status = 'unsubscribed', source = 'mailto', updated_at = ?
                     WHERE subscriber_id = ? AND list_id = ? AND status != 'unsubscribed'",
                )
                .bind(now)
                .bind(subscriber)
                .bind(list_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if changed > 0 {
                    let about = events::About {
                        list: Some(*list_id),
                        campaign,
                    };
                    events::append_about(
                        &mut tx,
                        subscriber,
                        about,
                        "unsubscribed",
                        "mailto",
                        None,
                        now,
                    )
                    .await?;
                    Applied::Unsubscribed
                } else {
                    Applied::Recorded
                }
            }
        };
        tx.commit().await?;
        Ok(Some(applied))
    }

    /// `subscriber`'s soft-bounce score at `now` and its history; `None`
    /// when it never had one.
    pub async fn bounce_score(&self, subscriber: i64, now: i64) -> Result<Option<BounceScore>> {
        let rows = query(
            "SELECT e.created_at, c.slug, e.detail FROM events e
             LEFT JOIN campaigns c ON c.id = e.campaign_id
             WHERE e.subscriber_id = ? AND e.kind IN ('soft_bounce', 'bounce_score_lowered')
             ORDER BY e.id",
        )
        .bind(subscriber)
        .fetch_all(self.pool())
        .await?;
        let history: Vec<ScoreChange> = rows
            .iter()
            .filter_map(|r| {
                let detail: Option<String> = r.get(2);
                let (score, why) = parse_score_detail(detail.as_deref()?)?;
                Some(ScoreChange {
                    at: r.get(0),
                    campaign: r.get(1),
                    why: why.to_string(),
                    score,
                })
            })
            .collect();
        if history.is_empty() {
            return Ok(None);
        }
        let stored: Option<(f64, i64, i64)> = query_as(
            "SELECT score, computed_at, half_life FROM bounce_scores WHERE subscriber_id = ?",
        )
        .bind(subscriber)
        .fetch_optional(self.pool())
        .await?;
        let score = stored.map_or(0.0, |(score, at, half_life)| {
            crate::bounce::score::decayed(score, at, now, half_life)
        });
        Ok(Some(BounceScore { score, history }))
    }

    /// Bounce and complaint events since `since`, newest last.
    pub async fn bounce_events(&self, since: i64) -> Result<Vec<BounceEvent>> {
        let rows = query(
            "SELECT e.created_at, e.kind, s.email, c.slug, e.source, e.detail
             FROM events e LEFT JOIN subscribers s ON s.id = e.subscriber_id
             LEFT JOIN campaigns c ON c.id = e.campaign_id
             WHERE e.kind IN ('bounced', 'complained') AND e.created_at >= ?
             ORDER BY e.id",
        )
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| BounceEvent {
                at: r.get(0),
                kind: r.get(1),
                email: r.get(2),
                campaign: r.get(3),
                source: r.get(4),
                detail: r.get(5),
            })
            .collect())
    }
}

/// Records a hard bounce, inside the caller's transaction: a `bounced`
/// event naming the campaign, the address suppressed, an active person
/// marked `bounced`. The one way a hard bounce is recorded, whether it comes
/// back as returned mail or a webhook (`source` pipe, file, maildir, imap,
/// webhook:ses...) or as the dispatcher's SMTP reply ("dispatch").
pub(super) async fn record_hard_bounce(
    tx: &mut sqlx::AnyConnection,
    subscriber: i64,
    campaign: Option<i64>,
    source: &str,
    reason: &str,
    now: i64,
) -> Result<Applied> {
    let detail = format!("hard: {reason}");
    event(tx, subscriber, campaign, "bounced", source, &detail, now).await?;
    let person: Option<(Option<String>, String)> =
        query_as("SELECT email_hash, status FROM subscribers WHERE id = ?")
            .bind(subscriber)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((hash, status)) = person else {
        return Ok(Applied::Recorded);
    };
    let new = (status == "active").then_some("bounced");
    stop(tx, subscriber, hash.as_deref(), new, "bounced", now).await
}

/// The detail of a score-change event: the score after the change, then
/// why. Read back by [`parse_score_detail`].
fn score_detail(score: f64, why: &str) -> String {
    format!("score {score:.2}: {why}")
}

/// `score 1.60: 552 5.2.2 mailbox full` -> (1.6, "552 5.2.2 mailbox full").
fn parse_score_detail(detail: &str) -> Option<(f64, &str)> {
    let (score, why) = detail.strip_prefix("score ")?.split_once(": ")?;
    Some((score.parse().ok()?, why))
}

/// Adds a soft bounce to `subscriber`'s score, inside the caller's
/// transaction, and returns the new score; `None` when the campaign's soft
/// bounce was counted before (a retried message that bounces three times is
/// one problem). The change is a `soft_bounce` event.
///
/// A server that accepted the message and bounced it later made the
/// dispatcher halve the score first (the delivery looked successful); the
/// bounce undoes that halving (`bounce::score::undo_delivery`). Otherwise a
/// mailbox full on every campaign would settle at a score of 2 and never
/// bounce.
async fn raise_score(
    tx: &mut sqlx::AnyConnection,
    subscriber: i64,
    campaign: Option<i64>,
    source: &str,
    reason: &str,
    soft: SoftRule,
    now: i64,
) -> Result<Option<f64>> {
    use crate::bounce::score;
    if let Some(campaign) = campaign {
        let counted: Option<i64> = query_scalar(
            "SELECT 1 FROM events WHERE subscriber_id = ? AND campaign_id = ? AND kind = 'soft_bounce'",
        )
        .bind(subscriber)
        .bind(campaign)
        .fetch_optional(&mut *tx)
        .await?;
        if counted.is_some() {
            return Ok(None);
        }
    }
    // What this campaign's delivery, if the dispatcher counted it a success,
    // did to the score: (when, the score it left).
    let halved: Option<(i64, Option<String>)> = match campaign {
        None => None,
        Some(campaign) => {
            query_as(
                "SELECT created_at, detail FROM events
                 WHERE subscriber_id = ? AND campaign_id = ? AND kind = 'bounce_score_lowered'",
            )
            .bind(subscriber)
            .bind(campaign)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    let stored: Option<(f64, i64, i64)> =
        query_as("SELECT score, computed_at, half_life FROM bounce_scores WHERE subscriber_id = ?")
            .bind(subscriber)
            .fetch_optional(&mut *tx)
            .await?;
    let half_life = stored.map_or(soft.window_secs.max(1), |(_, _, h)| h);
    let mut current = stored.map_or(0.0, |(s, at, _)| score::decayed(s, at, now, half_life));
    if let Some((halved_at, detail)) = halved
        && let Some((halved_to, _)) = detail.as_deref().and_then(parse_score_detail)
    {
        current = score::undo_delivery(current, halved_to, halved_at, now, half_life);
    }
    let new = score::after_soft_bounce(current);
    query(
        "INSERT INTO bounce_scores (subscriber_id, score, computed_at, half_life) VALUES (?, ?, ?, ?)
         ON CONFLICT (subscriber_id) DO UPDATE SET
             score = excluded.score, computed_at = excluded.computed_at, half_life = excluded.half_life",
    )
    .bind(subscriber)
    .bind(new)
    .bind(now)
    .bind(soft.window_secs.max(1))
    .execute(&mut *tx)
    .await?;
    let detail = score_detail(new, reason);
    event(
        tx,
        subscriber,
        campaign,
        "soft_bounce",
        source,
        &detail,
        now,
    )
    .await?;
    Ok(Some(new))
}

/// The soft-bounce scores of those of `people` who have one: (subscriber,
/// score, computed at, half-life).
async fn scores_of(
    tx: &mut sqlx::AnyConnection,
    people: &[i64],
) -> Result<Vec<(i64, f64, i64, i64)>> {
    if people.is_empty() {
        return Ok(Vec::new());
    }
    let ids = serde_json::to_string(people).expect("integers serialise");
    let engine = super::Engine::of_connection(tx);
    Ok(query_as(over_json_ids!(
        engine,
        "SELECT subscriber_id, score, computed_at, half_life FROM bounce_scores
         WHERE subscriber_id IN (SELECT id FROM ",
        "?1",
        " ids)"
    ))
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?)
}

/// Halves the soft-bounce score of each of `delivered` that has one, inside
/// the dispatcher's commit of their `sent` rows: a delivery that succeeds
/// after soft bounces says the problem may be over. Each change is a
/// `bounce_score_lowered` event; a score that becomes negligible is dropped.
/// A read-then-write of what bounce processing writes too: in a round that
/// locks only its rows ([`super::sql::begin_rows`]) it runs before the
/// round's first write, and takes the write lock when there is a score to
/// lower (then reads the scores again under it).
pub(super) async fn lower_scores_after_delivery(
    tx: &mut sqlx::AnyConnection,
    campaign: i64,
    delivered: &[i64],
    now: i64,
) -> Result<()> {
    use crate::bounce::score;
    let mut scored = scores_of(tx, delivered).await?;
    if !scored.is_empty() && super::Engine::of_connection(tx) == super::Engine::Postgres {
        super::sql::take_write_lock(tx).await?;
        scored = scores_of(tx, delivered).await?;
    }
    for (subscriber, stored, at, half_life) in scored {
        let new = score::after_delivery(score::decayed(stored, at, now, half_life));
        if new < score::NEGLIGIBLE {
            query("DELETE FROM bounce_scores WHERE subscriber_id = ?")
                .bind(subscriber)
                .execute(&mut *tx)
                .await?;
        } else {
            query("UPDATE bounce_scores SET score = ?, computed_at = ? WHERE subscriber_id = ?")
                .bind(new)
                .bind(now)
                .bind(subscriber)
                .execute(&mut *tx)
                .await?;
        }
        let detail = score_detail(new, "delivered");
        let kind = "bounce_score_lowered";
        event(
            tx,
            subscriber,
            Some(campaign),
            kind,
            "dispatch",
            &detail,
            now,
        )
        .await?;
    }
    Ok(())
}

/// Drops `subscriber`'s soft-bounce score, inside the caller's transaction
/// (`subscribers reactivate`: the operator says the address works again),
/// with a `bounce_score_lowered` event when there was one.
pub(super) async fn reset_score(
    tx: &mut sqlx::AnyConnection,
    subscriber: i64,
    source: &str,
    now: i64,
) -> Result<()> {
    let dropped = query("DELETE FROM bounce_scores WHERE subscriber_id = ?")
        .bind(subscriber)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if dropped > 0 {
        let detail = score_detail(0.0, "reactivated");
        event(
            tx,
            subscriber,
            None,
            "bounce_score_lowered",
            source,
            &detail,
            now,
        )
        .await?;
    }
    Ok(())
}

/// Appends a bounce-handling event that names the campaign and the source
/// of the report it came from.
async fn bounce_event(
    tx: &mut sqlx::AnyConnection,
    subscriber: i64,
    campaign: Option<i64>,
    kind: &str,
    source: &str,
    detail: &str,
    now: i64,
) -> Result<()> {
    event(tx, subscriber, campaign, kind, source, detail, now).await
}

async fn event(
    tx: &mut sqlx::AnyConnection,
    subscriber: i64,
    campaign: Option<i64>,
    kind: &str,
    source: &str,
    detail: &str,
    now: i64,
) -> Result<()> {
    let about = events::About {
        list: None,
        campaign,
    };
    events::append_about(tx, subscriber, about, kind, source, Some(detail), now).await
}

/// Sets the person's status (when `new` is given) and suppresses the
/// address (by its hash; an erased person has none left to suppress).
async fn stop(
    tx: &mut sqlx::AnyConnection,
    subscriber: i64,
    hash: Option<&str>,
    new: Option<&'static str>,
    reason: &str,
    now: i64,
) -> Result<Applied> {
    if let Some(hash) = hash {
        super::suppress_hash(tx, hash, reason, now).await?;
    }
    match new {
        Some(status) => {
            query("UPDATE subscribers SET status = ?, updated_at = ? WHERE id = ?")
                .bind(status)
                .bind(now)
                .bind(subscriber)
                .execute(&mut *tx)
                .await?;
            Ok(Applied::Status(status.to_string()))
        }
        None => Ok(Applied::Recorded),
    }
}
