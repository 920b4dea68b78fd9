//! SQL of the dispatcher: frozen campaigns, the per-recipient delivery log,
//! and the lease that keeps two runs from sending the same campaign.
//!
//! A delivery row moves `queued` -> `sending` -> `sent` | `deferred` |
//! `failed` | `skipped`; `deferred` goes back through `sending` when its
//! retry is due. `sending` is committed before the SMTP transaction and the
//! outcome after it, so after a crash the rows still `sending` are exactly
//! the messages that were in flight; `resolve_in_flight` settles them.
//!
//! A campaign moves between the states of [`CampaignStatus`]; which moves
//! are allowed is written once, in [`CampaignStatus::comes_from`], and
//! `move_campaign`, the one statement that changes `campaigns.status`,
//! enforces it in its `UPDATE`.

use super::sql::{
    Engine, begin_rows, begin_write, begin_write_waiting, flag, query, query_as, query_scalar,
    take_write_lock,
};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Connection as _, FromRow, Row};

use super::Result;

/// Where a campaign is in its life. Stored as text in `campaigns.status`
/// (`Finished` is `sent` there, which `status --format json` also shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(into = "&'static str")]
pub enum CampaignStatus {
    /// Frozen, waiting for its time (`send --at`, or not yet started).
    Scheduled,
    /// A run has started it; resumable.
    Sending,
    /// Every delivery settled.
    Finished,
    /// `bulletin cancel`: nothing more is sent.
    Cancelled,
    /// Long overdue when `dispatch` found it; only `send` starts it.
    Held,
}

impl CampaignStatus {
    pub const ALL: [CampaignStatus; 5] = [
        CampaignStatus::Scheduled,
        CampaignStatus::Sending,
        CampaignStatus::Finished,
        CampaignStatus::Cancelled,
        CampaignStatus::Held,
    ];

    /// The text stored in `campaigns.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Scheduled => "scheduled",
            CampaignStatus::Sending => "sending",
            CampaignStatus::Finished => "sent",
            CampaignStatus::Cancelled => "cancelled",
            CampaignStatus::Held => "held",
        }
    }

    pub fn parse(text: &str) -> Option<CampaignStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The lifecycle, in one place: the states a campaign may enter `self`
    /// from. `scheduled` is entered only by freezing (and by `--replace`,
    /// which stays in it); `sending` from a due schedule, a held campaign
    /// that `send` starts, or a finished one that `send --only-new` reopens.
    pub fn comes_from(self) -> &'static [CampaignStatus] {
        use CampaignStatus::*;
        match self {
            Scheduled => &[Scheduled, Held],
            Sending => &[Scheduled, Held, Finished],
            Finished => &[Sending],
            Cancelled => &[Scheduled, Sending, Held],
            Held => &[Scheduled],
        }
    }

    /// `bulletin cancel` may stop it: it is not over yet.
    pub fn can_cancel(self) -> bool {
        CampaignStatus::Cancelled.comes_from().contains(&self)
    }

    /// What `bulletin cancel` does in this state. `mails_newcomers`: a sent
    /// campaign's `resend_to_new` window is still open; cancelling ends it
    /// and the campaign stays `sent` (what went out stays, the archive keeps
    /// it).
    pub fn on_cancel(self, mails_newcomers: bool) -> OnCancel {
        if self.can_cancel() {
            OnCancel::Stop
        } else if self == CampaignStatus::Finished && mails_newcomers {
            OnCancel::EndNewcomers
        } else {
            OnCancel::Refuse
        }
    }

    /// `send --replace` may refreeze it: no run has started it. (A
    /// `sending` campaign that sent nothing yet is refused too: a run may be
    /// about to claim.)
    pub fn can_replace(self) -> bool {
        CampaignStatus::Scheduled.comes_from().contains(&self)
    }

    /// Over: neither sending nor waiting.
    pub fn is_over(self) -> bool {
        matches!(self, CampaignStatus::Finished | CampaignStatus::Cancelled)
    }
}

/// What `bulletin cancel` does ([`CampaignStatus::on_cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCancel {
    /// Becomes `cancelled`; its unsent rows are dropped.
    Stop,
    /// Stays `sent`; its `resend_to_new` window ends now.
    EndNewcomers,
    /// Over already.
    Refuse,
}

impl From<CampaignStatus> for &'static str {
    fn from(s: CampaignStatus) -> &'static str {
        s.as_str()
    }
}

impl std::fmt::Display for CampaignStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A campaign row.
#[derive(Debug, Clone)]
pub struct CampaignRow {
    pub id: i64,
    pub slug: String,
    pub list_id: i64,
    pub subject: String,
    pub compiled: String,
    pub source_hash: String,
    pub status: CampaignStatus,
    pub send_at: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    /// A welcome campaign (`store::welcome`): its rows come from
    /// confirmations, never from the list, and it never finishes by itself.
    pub welcome: bool,
    /// Front matter `resend_until`: until when people who join get it.
    pub resend_until: Option<i64>,
    /// When `bulletin cancel` ended that window early.
    pub resend_closed_at: Option<i64>,
}

impl CampaignRow {
    /// Until when the campaign still goes to people who join its lists:
    /// its `resend_to_new` window, while open and not ended by `cancel`.
    pub fn mails_newcomers_until(&self, now: i64) -> Option<i64> {
        let open = !self.welcome
            && self.resend_closed_at.is_none()
            && matches!(
                self.status,
                CampaignStatus::Finished | CampaignStatus::Sending
            );
        self.resend_until.filter(|&until| open && until > now)
    }
}

impl FromRow<'_, AnyRow> for CampaignRow {
    fn from_row(r: &AnyRow) -> sqlx::Result<Self> {
        Ok(CampaignRow {
            id: r.try_get("id")?,
            slug: r.try_get("slug")?,
            list_id: r.try_get("list_id")?,
            subject: r.try_get("subject")?,
            compiled: r.try_get("compiled")?,
            source_hash: r.try_get("source_hash")?,
            status: {
                let text: String = r.try_get("status")?;
                CampaignStatus::parse(&text).ok_or_else(|| sqlx::Error::ColumnDecode {
                    index: "status".into(),
                    source: format!("unknown campaign status {text:?}").into(),
                })?
            },
            send_at: r.try_get("send_at")?,
            created_at: r.try_get("created_at")?,
            started_at: r.try_get("started_at")?,
            finished_at: r.try_get("finished_at")?,
            lease_owner: r.try_get("lease_owner")?,
            lease_until: r.try_get("lease_until")?,
            welcome: flag(r, "welcome")?,
            resend_until: r.try_get("resend_until")?,
            resend_closed_at: r.try_get("resend_closed_at")?,
        })
    }
}

/// The columns of a [`CampaignRow`], over `campaigns`, as a macro so that
/// both engines' texts below share them.
macro_rules! campaign_columns {
    ($resend_until:literal) => {
        concat!(
            "id, slug, list_id, subject, compiled, source_hash, status, send_at, \
             created_at, started_at, finished_at, lease_owner, lease_until, resend_closed_at, ",
            $resend_until,
            " AS resend_until, \
             EXISTS (SELECT 1 FROM campaign_triggers t WHERE t.campaign_id = campaigns.id \
                 AND t.trigger = 'welcome') AS welcome"
        )
    };
}

/// The frozen front matter `resend_until` (unix seconds) of a `campaigns`
/// row, read from its `compiled` JSON.
pub(super) fn resend_until_sql(engine: Engine) -> &'static str {
    engine.pick(
        "json_extract(compiled, '$.resend_until')",
        "CAST(CAST(compiled AS json) ->> 'resend_until' AS BIGINT)",
    )
}

/// The columns a [`CampaignRow`] reads, on this engine.
pub(super) fn campaign_columns(engine: Engine) -> &'static str {
    engine.pick(
        campaign_columns!("json_extract(compiled, '$.resend_until')"),
        campaign_columns!("CAST(CAST(compiled AS json) ->> 'resend_until' AS BIGINT)"),
    )
}

/// A campaign to freeze.
#[derive(Debug, Clone)]
pub struct NewCampaign<'a> {
    pub slug: &'a str,
    /// The lists it goes to, in front matter order; the first is
    /// `campaigns.list_id`. Never empty.
    pub lists: &'a [i64],
    pub subject: &'a str,
    pub compiled: &'a str,
    pub source_hash: &'a str,
    pub send_at: i64,
    pub now: i64,
}

#[cfg(test)]
impl<'a> NewCampaign<'a> {
    /// A campaign for the store's unit tests: `slug` to `lists`, frozen and
    /// due at time 1 (override fields with `..NewCampaign::test(…)`).
    pub(crate) fn test(slug: &'a str, lists: &'a [i64]) -> Self {
        NewCampaign {
            slug,
            lists,
            subject: "s",
            compiled: "{}",
            source_hash: "h",
            send_at: 1,
            now: 1,
        }
    }
}

impl super::Store {
    pub async fn campaign_by_slug(&self, slug: &str) -> Result<Option<CampaignRow>> {
        let pool = &self.pool;
        let columns = campaign_columns(self.engine());
        Ok(
            query_as(&format!("SELECT {columns} FROM campaigns WHERE slug = ?"))
                .bind(slug)
                .fetch_optional(pool)
                .await?,
        )
    }

    pub async fn campaign_by_id(&self, id: i64) -> Result<Option<CampaignRow>> {
        let pool = &self.pool;
        let columns = campaign_columns(self.engine());
        Ok(
            query_as(&format!("SELECT {columns} FROM campaigns WHERE id = ?"))
                .bind(id)
                .fetch_optional(pool)
                .await?,
        )
    }

    /// All campaigns, newest first.
    pub async fn campaigns(&self) -> Result<Vec<CampaignRow>> {
        let pool = &self.pool;
        let columns = campaign_columns(self.engine());
        Ok(
            query_as(&format!("SELECT {columns} FROM campaigns ORDER BY id DESC"))
                .fetch_all(pool)
                .await?,
        )
    }

    /// Freezes a campaign as `scheduled` with its lists; returns its id.
    pub async fn insert_campaign(&self, c: &NewCampaign<'_>) -> Result<i64> {
        let pool = &self.pool;
        let mut tx = begin_write(pool).await?;
        let id: i64 = query_scalar(
            "INSERT INTO campaigns (slug, list_id, subject, compiled, source_hash, status, send_at, created_at)
             VALUES (?, ?, ?, ?, ?, 'scheduled', ?, ?) RETURNING id",
        )
    .bind(c.slug)
    .bind(c.lists[0])
    .bind(c.subject)
    .bind(c.compiled)
    .bind(c.source_hash)
    .bind(c.send_at)
    .bind(c.now)
    .fetch_one(&mut *tx)
    .await?;
        set_campaign_lists(&mut tx, id, c.lists).await?;
        tx.commit().await?;
        Ok(id)
    }
}

/// Records the lists of campaign `id` (`campaign_lists`), in order,
/// replacing any it had. A campaign has a handful of lists: one statement
/// each, one text for both engines.
pub(super) async fn set_campaign_lists(
    conn: &mut AnyConnection,
    id: i64,
    lists: &[i64],
) -> Result<()> {
    query("DELETE FROM campaign_lists WHERE campaign_id = ?")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    for (position, list_id) in (0_i64..).zip(lists) {
        query("INSERT INTO campaign_lists (campaign_id, list_id, position) VALUES (?, ?, ?)")
            .bind(id)
            .bind(list_id)
            .bind(position)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// [`Store::set_campaign_status`](super::Store::set_campaign_status) inside
/// the caller's transaction: the one statement that changes
/// `campaigns.status`, so every transition (run, finish, hold, cancel,
/// replace, reopen) is checked against [`CampaignStatus::comes_from`].
async fn move_campaign(
    conn: &mut AnyConnection,
    id: i64,
    status: CampaignStatus,
    now: i64,
) -> Result<bool> {
    // The states it may come from, one parameter each (`?4`, `?5`, ...).
    let from = status.comes_from();
    let marks = vec!["?"; from.len()].join(", ");
    let mut update = query(&format!(
        "UPDATE campaigns SET status = ?2,
             started_at = CASE WHEN ?2 = 'sending' THEN COALESCE(started_at, ?3) ELSE started_at END,
             finished_at = CASE WHEN ?2 IN ('sent', 'cancelled') THEN ?3 ELSE finished_at END
         WHERE id = ?1 AND status IN ({marks})",
    ))
    .bind(id)
    .bind(status.as_str())
    .bind(now);
    for state in from {
        update = update.bind(state.as_str());
    }
    let done = update.execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

impl super::Store {
    /// The lists a campaign goes to, in front matter order (ids).
    pub async fn campaign_lists(&self, campaign_id: i64) -> Result<Vec<i64>> {
        let pool = &self.pool;
        Ok(query_scalar(
            "SELECT list_id FROM campaign_lists WHERE campaign_id = ? ORDER BY position",
        )
        .bind(campaign_id)
        .fetch_all(pool)
        .await?)
    }

    /// Moves a campaign to `status` (setting the start or finish time it
    /// implies) if its current state allows it ([`CampaignStatus::comes_from`]);
    /// false if it was in another state (e.g. cancelled meanwhile).
    pub async fn set_campaign_status(
        &self,
        id: i64,
        status: CampaignStatus,
        now: i64,
    ) -> Result<bool> {
        let mut conn = self.pool.acquire().await?;
        move_campaign(&mut conn, id, status, now).await
    }

    /// Moves a scheduled campaign's time (`send --at` on a queued campaign).
    pub async fn set_send_at(&self, id: i64, send_at: i64) -> Result<()> {
        let pool = &self.pool;
        query("UPDATE campaigns SET send_at = ? WHERE id = ?")
            .bind(send_at)
            .bind(id)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Campaigns with work: scheduled and due, or sending (resumes and retries).
    /// A welcome campaign is always `sending`; it has work only when a row is
    /// queued, due for a retry, or left `sending` by a dead run.
    pub async fn due_campaigns(&self, now: i64) -> Result<Vec<CampaignRow>> {
        let pool = &self.pool;
        let columns = campaign_columns(self.engine());
        Ok(query_as(&format!(
            "SELECT {columns} FROM campaigns
         WHERE ((status = 'scheduled' AND send_at <= ?1) OR status = 'sending')
           AND (campaigns.id NOT IN (SELECT campaign_id FROM campaign_triggers)
                OR {})
         ORDER BY send_at, id",
            super::welcome::HAS_WORK
        ))
        .bind(now)
        .fetch_all(pool)
        .await?)
    }

    /// Takes the campaign's lease for `owner` until `until`, if it is free,
    /// expired, already `owner`'s, or held by `dead_owner` (a process on this
    /// host that no longer exists). Atomic: of two runs, one wins.
    pub async fn try_lease(
        &self,
        id: i64,
        owner: &str,
        now: i64,
        until: i64,
        dead_owner: Option<&str>,
    ) -> Result<bool> {
        let pool = &self.pool;
        let done = query(
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
    pub async fn renew_lease(&self, id: i64, owner: &str, until: i64) -> Result<bool> {
        let pool = &self.pool;
        let done = query("UPDATE campaigns SET lease_until = ? WHERE id = ? AND lease_owner = ?")
            .bind(until)
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn release_lease(&self, id: i64, owner: &str) -> Result<()> {
        let pool = &self.pool;
        query("UPDATE campaigns SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?")
        .bind(id)
        .bind(owner)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Queues one delivery per audience member, once: run again, it adds only
    /// people who joined since (what `send --only-new` relies on). No row is
    /// added to a cancelled campaign, whatever run was starting. Memory stays
    /// flat: one `INSERT ... SELECT` per list of the campaign for each
    /// [`QUEUE_CHUNK`] subscriber ids, each chunk a write transaction of its
    /// own, so that nobody waits for the write lock (an unsubscribe on the
    /// pages, another worker starting on the same campaign) while a list of
    /// a million is queued. A chunk whose audience all have their row
    /// already ([`UNQUEUED_SQL`], a read) takes no write lock: workers
    /// joining a campaign another worker queued, or a resumed run, do not
    /// queue up behind each other's writes (on PostgreSQL, where several
    /// start together, the last of them waited out the others' and gave up).
    pub async fn materialise(&self, campaign_id: i64, now: i64) -> Result<u64> {
        self.materialise_by(campaign_id, now, QUEUE_CHUNK).await
    }

    /// [`Self::materialise`], `chunk` subscriber ids per transaction.
    async fn materialise_by(&self, campaign_id: i64, now: i64, chunk: i64) -> Result<u64> {
        let pool = &self.pool;
        let lists: Vec<i64> = query_scalar(
            "SELECT list_id FROM campaign_lists WHERE campaign_id = ? ORDER BY position",
        )
        .bind(campaign_id)
        .fetch_all(pool)
        .await?;
        let last: Option<i64> = query_scalar("SELECT MAX(id) FROM subscribers")
            .fetch_one(pool)
            .await?;
        let mut queued = 0;
        let mut after = 0;
        while after < last.unwrap_or(0) {
            let ids = (after, after + chunk);
            after = ids.1;
            let mut conn = pool.acquire().await?;
            if !anyone_unqueued(&mut conn, campaign_id, &lists, ids).await? {
                continue;
            }
            drop(conn);
            // Workers starting together all find the chunk unqueued and
            // wait for the lock in turn: the first queues it, and each of
            // the others, finding it queued once it holds the lock, lets go.
            let mut tx = begin_write_waiting(pool, QUEUE_PATIENCE).await?;
            if anyone_unqueued(&mut tx, campaign_id, &lists, ids).await? {
                for &list_id in &lists {
                    queued += queue_list(&mut tx, campaign_id, list_id, ids, now).await?;
                }
            }
            tx.commit().await?;
        }
        Ok(queued)
    }
}

/// One person of list `?1`'s audience (the `a` of
/// [`AUDIENCE_SQL`](super::subscribers::AUDIENCE_SQL),
/// written around it) with subscriber ids after `?2` up to `?3` and no row
/// for campaign `?4` yet, if any.
const UNQUEUED_SQL: &str = "SELECT a.id FROM ({audience}) a WHERE a.id > ?2 AND a.id <= ?3
       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.campaign_id = ?4 AND d.subscriber_id = a.id)
     LIMIT 1";

/// Whether anyone of the campaign's `lists` with subscriber ids in `ids`
/// has no row yet ([`UNQUEUED_SQL`]), read without the write lock.
async fn anyone_unqueued(
    conn: &mut AnyConnection,
    campaign_id: i64,
    lists: &[i64],
    ids: (i64, i64),
) -> Result<bool> {
    for &list_id in lists {
        let text = UNQUEUED_SQL.replace("{audience}", super::subscribers::AUDIENCE_SQL);
        let one: Option<i64> = query_scalar(&text)
            .bind(list_id)
            .bind(ids.0)
            .bind(ids.1)
            .bind(campaign_id)
            .fetch_optional(&mut *conn)
            .await?;
        if one.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How long [`Store::materialise`] waits for the write lock (on
/// PostgreSQL): longer than the busy timeout, as the holder may be another
/// worker queueing a chunk of the same campaign, and giving up would stop
/// a run (or an operator's `send`) that only had to wait its turn.
const QUEUE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// The subscriber ids [`Store::materialise`] queues in one transaction.
const QUEUE_CHUNK: i64 = 10_000;

/// Queues the audience of one of the campaign's lists through that list.
/// Lists go in front matter order and a person has one row per campaign
/// (`ON CONFLICT DO NOTHING`), so someone on several lists is queued once,
/// through the earliest list they may be mailed on. Only subscriber ids
/// after `ids.0`, up to `ids.1`.
async fn queue_list(
    conn: &mut AnyConnection,
    campaign_id: i64,
    list_id: i64,
    ids: (i64, i64),
    now: i64,
) -> Result<u64> {
    let done = query(&format!(
        "INSERT INTO deliveries (campaign_id, subscriber_id, list_id, status, attempts, updated_at)
         SELECT ?2, a.id, ?1, 'queued', 0, ?3 FROM ({}) a
         WHERE a.id > ?4 AND a.id <= ?5
           AND EXISTS (SELECT 1 FROM campaigns WHERE id = ?2 AND status != 'cancelled')
         ON CONFLICT DO NOTHING",
        super::subscribers::AUDIENCE_SQL
    ))
    .bind(list_id)
    .bind(campaign_id)
    .bind(now)
    .bind(ids.0)
    .bind(ids.1)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// What happens to deliveries left `sending` by a run that died: the
/// `[dispatch] in_flight` setting, `"unknown"` or `"resend"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InFlight {
    /// Mark `unknown`: never sent again (the default: no one mailed twice).
    Unknown,
    /// Queue again: every recipient gets the mail, maybe twice.
    Resend,
}

impl InFlight {
    /// The status a row left `sending` by a dead run or worker gets.
    pub fn settled_status(self) -> &'static str {
        match self {
            InFlight::Unknown => "unknown",
            InFlight::Resend => "queued",
        }
    }
}

impl super::Store {
    /// Settles rows left `sending` by a dead run; returns how many.
    pub async fn resolve_in_flight(
        &self,
        campaign_id: i64,
        policy: InFlight,
        now: i64,
    ) -> Result<u64> {
        let pool = &self.pool;
        let status = policy.settled_status();
        let done = query(
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
}

impl super::Store {
    /// Rows `worker` still holds `sending` in `campaign_id`, but for
    /// `handed` (rows it handed to an SMTP connection and heard nothing
    /// more of), queued again with their attempt given back. After a round
    /// failed and every outcome of the run was recorded: a round whose
    /// answer was lost with the connection may still have been committed
    /// by the server, and the rows it claimed reached no connection, so
    /// left alone they would be settled by the in-flight policy (`unknown`,
    /// never sent) although nobody tried to send them. Returns how many.
    pub async fn give_back_unhanded(
        &self,
        campaign_id: i64,
        worker: &str,
        handed: &[i64],
        now: i64,
    ) -> Result<u64> {
        let handed = serde_json::to_string(handed).expect("ids serialise");
        let sql = over_json_ids!(
            self.engine(),
            "UPDATE deliveries SET status = 'queued', next_attempt_at = NULL, updated_at = ?4,
                 attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
             WHERE campaign_id = ?1 AND worker_id = ?2 AND status = 'sending'
               AND id NOT IN (SELECT id FROM ",
            "?3",
            " handed)"
        );
        let done = query(sql)
            .bind(campaign_id)
            .bind(worker)
            .bind(handed)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// One recipient handed to a worker: read in the transaction whose claim
/// statement found them still mailable and marked the row `sending`.
#[derive(Debug, Clone)]
pub struct Job {
    pub delivery_id: i64,
    pub subscriber_id: i64,
    /// The list through which this person receives the campaign: its
    /// List-Id and unsubscribe link name it.
    pub list_id: i64,
    pub email: String,
    pub name: String,
    pub attributes: String,
    pub attempts: i64,
}

impl FromRow<'_, AnyRow> for Job {
    fn from_row(r: &AnyRow) -> sqlx::Result<Self> {
        Ok(Job {
            delivery_id: r.try_get("delivery_id")?,
            subscriber_id: r.try_get("subscriber_id")?,
            list_id: r.try_get("list_id")?,
            email: r.try_get("email")?,
            name: r.try_get("name")?,
            attributes: r.try_get("attributes")?,
            attempts: r.try_get("attempts")?,
        })
    }
}

/// What one claim handed out.
#[derive(Debug, Default)]
pub struct Claimed {
    /// Marked `sending`, with the recipient's data, in claim order.
    pub jobs: Vec<Job>,
    /// Rows whose person may no longer be mailed, marked `skipped`.
    pub skipped: u64,
    /// Fewer jobs than asked for: nothing else is due now.
    pub exhausted: bool,
}

/// The claim's second chance, over a row `c` (`c.subscriber_id`) of
/// campaign `?1` whose person left the row's list: the earliest other list
/// of the campaign on which they may still be mailed, or NULL. A macro so
/// that [`CLAIM_SQL`] can embed it in `concat!`.
macro_rules! other_list_sql {
    () => {
        concat!(
            "SELECT cl.list_id FROM campaign_lists cl
                 JOIN subscriptions sub ON sub.subscriber_id = c.subscriber_id AND sub.list_id = cl.list_id
                 JOIN subscribers s ON s.id = c.subscriber_id
             WHERE cl.campaign_id = ?1 AND ",
            mailable!(),
            " ORDER BY cl.position LIMIT 1"
        )
    };
}

/// The claim: up to `?4` due rows of campaign `?1` (retries whose time `?3`
/// has come, then queued rows), each re-checked against the mailable rule on
/// the row's list (`?2`, the campaign's first list, for rows queued before
/// rows had one) in this same statement. Who may still be mailed becomes
/// `sending`; who left that list but may be mailed on another list of the
/// campaign becomes `sending` through the earliest such list
/// ([`OTHER_LIST_SQL`]); who left altogether becomes `skipped` with the
/// reason. Both searches walk `deliveries_work` in order and stop at the
/// limit, so a claim reads the rows it hands out, whatever the size of the
/// campaign. The claimed rows name their worker (`?6`).
///
/// `$lock` is what locks the due rows: nothing on SQLite (one writer, one
/// run per campaign), `FOR UPDATE SKIP LOCKED` on PostgreSQL, where several
/// workers claim from one campaign at once and each passes over the rows
/// another is claiming ([`CLAIM_SQL_PG`]). `$with` is `WITH ` when the
/// claim's common table expressions come first. `$limit` bounds each
/// search: `?4` on SQLite; on PostgreSQL `{want}`, the number written into
/// the text ([`with_want`]), because the planner takes a parameter limit
/// for a tenth of the campaign, so it would plan the statement afresh at
/// every execution rather than keep one plan. `$gate` is a further
/// condition on the due rows ([`SENT_AND_CLAIM_SQL_PG`]'s). `$after` is a
/// further condition on the queued rows: where the search starts
/// ([`CLAIM_AFTER_SQL_PG`]). `$materialized` is
/// ` MATERIALIZED` on PostgreSQL, which otherwise writes the check's
/// subqueries out again at every reference to `checked` and `verdict` and
/// plans and runs each copy. `$returning` is what the statement hands back
/// ([`CLAIM_SQL`], [`CLAIM_SQL_PG`]).
macro_rules! claim_sql {
    ($with:literal, $limit:literal, $gate:literal, $after:literal, $lock:literal, $materialized:literal, $($returning:tt)*) => {
        concat!(
    $with, "due(id, first) AS (
         SELECT id, 0 FROM (SELECT id FROM deliveries
             WHERE campaign_id = ?1 AND status = 'deferred' AND next_attempt_at <= ?3", $gate, "
             ORDER BY next_attempt_at, id LIMIT ", $limit, $lock, ") AS retries
         UNION ALL
         SELECT id, 1 FROM (SELECT id FROM deliveries
             WHERE campaign_id = ?1 AND status = 'queued'", $gate, $after, "
             ORDER BY next_attempt_at, id LIMIT ", $limit, $lock, ") AS firsts
         LIMIT ?4),
     home(id, subscriber_id, list_id) AS (
         SELECT d.id, d.subscriber_id, COALESCE(d.list_id, ?2)
         FROM due JOIN deliveries d ON d.id = due.id),
     checked(id, subscriber_id, list_id, why) AS", $materialized, " (
         SELECT h.id, h.subscriber_id, h.list_id, COALESCE((SELECT CASE
                 WHEN ",
    mailable!(),
    " THEN ''
                 WHEN s.status != 'active' THEN s.status || ' before their turn'
                 WHEN sub.status IS NULL THEN 'not on the list at their turn'
                 WHEN sub.status != 'confirmed' THEN 'subscription ' || sub.status || ' before their turn'
                 ELSE 'address suppressed before their turn' END
             FROM subscribers s
             LEFT JOIN subscriptions sub ON sub.subscriber_id = s.id AND sub.list_id = h.list_id
             WHERE s.id = h.subscriber_id), 'no such subscriber')
         FROM home h),
     verdict(id, via, why) AS", $materialized, " (
         SELECT c.id, CASE WHEN c.why = '' THEN c.list_id ELSE (",
    other_list_sql!(),
    ") END, c.why FROM checked c)",
    $($returning)*
        )
    };
}

/// The update that marks the checked rows (the `verdict` of [`claim_sql!`]).
macro_rules! mark_claimed_sql {
    () => {
        "UPDATE deliveries SET
         status = CASE WHEN v.via IS NOT NULL THEN 'sending' ELSE 'skipped' END,
         list_id = COALESCE(v.via, deliveries.list_id),
         attempts = attempts + CASE WHEN v.via IS NOT NULL THEN 1 ELSE 0 END,
         last_reply = CASE WHEN v.via IS NOT NULL THEN last_reply ELSE v.why END,
         next_attempt_at = CASE WHEN v.via IS NOT NULL THEN next_attempt_at END,
         worker_id = CASE WHEN v.via IS NOT NULL THEN ?6 END,
         updated_at = ?5
     FROM verdict v WHERE deliveries.id = v.id"
    };
}

/// The claim on SQLite ([`claim_sql!`]): the ids and new statuses, and
/// [`CLAIMED_JOBS_SQL`] reads the recipients after it.
pub const CLAIM_SQL: &str = claim_sql!(
    "WITH ",
    "?4",
    "",
    "",
    "",
    "",
    concat!(
        "\n     ",
        mark_claimed_sql!(),
        " RETURNING deliveries.id, deliveries.status"
    )
);

/// The claim on PostgreSQL without its `WITH`: the due rows locked
/// `FOR UPDATE SKIP LOCKED`, and the recipients read in the same statement
/// (one round trip, no second plan over a list of ids). Rows: delivery_id,
/// status, subscriber_id, list_id, attempts, email, name, attributes.
macro_rules! claim_body_pg {
    ($gate:literal, $after:literal) => {
        claim_sql!(
            "",
            "{want}",
            $gate,
            $after,
            " FOR UPDATE SKIP LOCKED",
            " MATERIALIZED",
            concat!(
                ",\n     claimed AS (",
                mark_claimed_sql!(),
                " RETURNING deliveries.id, deliveries.status, deliveries.subscriber_id,
                     deliveries.list_id, deliveries.attempts)
             SELECT c.id AS delivery_id, c.status, c.subscriber_id, c.list_id, c.attempts,
                 s.email, s.name, s.attributes,
                 (SELECT MAX(id) FROM due WHERE first = 1) AS last_first
             FROM claimed c LEFT JOIN subscribers s ON s.id = c.subscriber_id"
            )
        )
    };
}

/// The claim on PostgreSQL ([`claim_body_pg!`]); `{want}` is replaced
/// by [`with_want`].
pub const CLAIM_SQL_PG: &str = concat!("WITH ", claim_body_pg!("", ""));

/// [`CLAIM_SQL_PG`] from a cursor: the search for queued rows starts after
/// the highest queued row the ledger's claims took (`?7`; `?8` in
/// [`SENT_AND_CLAIM_AFTER_SQL_PG`]; the statement returns it as
/// `last_first`; retries, found by their time, do not move it). An update leaves the row's old index
/// entry in place until vacuum, so without it every claim would walk past
/// the entries of all the rows sent so far (dead, but still read) to reach
/// the next queued one: a claim's cost would grow with the rows sent,
/// where SQLite, which replaces index entries in place, has none to walk.
/// Only rows with no time, as queued rows are (rows queued again by the
/// in-flight policy keep theirs), and only a hint: a search that finds
/// nothing after the cursor searches again from the start ([`claim`],
/// [`Ledger`]), so a row given back behind it (or settled back to the
/// queue after a dead worker) is sent before the pass ends, but only once
/// the rows after the cursor are used up: on a large campaign, hours later
/// than in order.
pub const CLAIM_AFTER_SQL_PG: &str = concat!(
    "WITH ",
    claim_body_pg!("", " AND next_attempt_at IS NULL AND id > ?7")
);

/// A PostgreSQL claim's text with its limit written in: one text, so one
/// plan kept by the server, per number of rows asked for (at most the
/// number of connections).
fn with_want(text: &str, want: usize) -> String {
    text.replace("{want}", &want.to_string())
}

/// A PostgreSQL round whose outcomes are all deliveries, as one statement
/// (so one implicit transaction, committed before its rows are handed
/// out): record `sent` on the rows the worker still holds, as
/// [`record_sent`] does, and claim as [`CLAIM_SQL_PG`] does. Unless a
/// delivered person has a bounce score to lower, which reads and writes
/// what bounce processing writes too: then nothing is recorded or claimed,
/// and a row with status `blocked` says so, for the round's transaction to
/// do both. `?7` is a JSON array of [delivery id, reply, message id]: one
/// text, whatever the number of outcomes.
macro_rules! sent_and_claim_pg {
    ($after:literal) => {
        concat!(
            "WITH v(id, reply, mid) AS (
         SELECT CAST(j.value ->> 0 AS BIGINT), j.value ->> 1, j.value ->> 2
         FROM json_array_elements(CAST(?7 AS json)) j),
     scored(blocked) AS (SELECT 1 FROM v JOIN deliveries d ON d.id = v.id
         JOIN bounce_scores b ON b.subscriber_id = d.subscriber_id LIMIT 1),
     recorded AS (UPDATE deliveries SET status = 'sent', last_reply = v.reply, message_id = v.mid,
             next_attempt_at = NULL, updated_at = ?5, sent_at = ?5
         FROM v WHERE deliveries.id = v.id AND deliveries.worker_id = ?6
             AND NOT EXISTS (SELECT 1 FROM scored)),
     ",
            claim_body_pg!(" AND NOT EXISTS (SELECT 1 FROM scored)", $after),
            "
     UNION ALL SELECT NULL, 'blocked', NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM scored"
        )
    };
}

/// The round of [`sent_and_claim_pg!`], its claim as [`CLAIM_SQL_PG`].
const SENT_AND_CLAIM_SQL_PG: &str = sent_and_claim_pg!("");

/// The round of [`sent_and_claim_pg!`], its claim from the cursor `?8`, as
/// [`CLAIM_AFTER_SQL_PG`].
const SENT_AND_CLAIM_AFTER_SQL_PG: &str =
    sent_and_claim_pg!(" AND next_attempt_at IS NULL AND id > ?8");

/// [`other_list_sql!`] as text, for documentation and tests.
pub const OTHER_LIST_SQL: &str = other_list_sql!();

/// The recipients of rows just claimed on SQLite (`?1`: a JSON array of
/// delivery ids), read in the claim's transaction: what a worker may use.
const CLAIMED_JOBS_SQL: &str = "SELECT d.id AS delivery_id, d.subscriber_id, d.list_id, s.email, s.name, s.attributes, d.attempts \
     FROM json_each(?1) j JOIN deliveries d ON d.id = j.value \
     JOIN subscribers s ON s.id = d.subscriber_id";

/// What one claim statement took: the jobs, how many rows it skipped, and
/// on PostgreSQL the highest id its search for queued rows took (taken or
/// skipped; not a retry's), which moves the cursor ([`CLAIM_AFTER_SQL_PG`]).
#[derive(Default)]
struct Taken {
    jobs: Vec<Job>,
    skipped: u64,
    last_first: Option<i64>,
}

impl Taken {
    fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.skipped == 0
    }
}

/// Claims up to `want` due rows for `worker` on the caller's connection,
/// in its transaction if it has one (see [`CLAIM_SQL`]); rows skipped
/// along the way do not count against `want`. On PostgreSQL the first
/// search for queued rows starts after `from` when it is not 0, and any
/// later one from the start once nothing is left after it; `cursor`, the
/// highest queued row the ledger's claims took, moves up with each
/// ([`CLAIM_AFTER_SQL_PG`]). SQLite always searches from the start.
async fn claim(
    tx: &mut AnyConnection,
    campaign: &CampaignRow,
    worker: &str,
    want: usize,
    now: i64,
    cursor: &mut i64,
    mut from: i64,
) -> Result<Claimed> {
    let mut claimed = Claimed::default();
    while claimed.jobs.len() < want {
        let left = want - claimed.jobs.len();
        let taken = match Engine::of_connection(tx) {
            Engine::Sqlite => claim_sqlite(tx, campaign, worker, left, now).await?,
            Engine::Postgres => claim_postgres(tx, campaign, worker, left, now, from).await?,
        };
        *cursor = (*cursor).max(taken.last_first.unwrap_or(0));
        if taken.is_empty() {
            if from != 0 {
                // Nothing after the cursor: rows given back behind it.
                from = 0;
                continue;
            }
            claimed.exhausted = true;
            break;
        }
        claimed.jobs.extend(taken.jobs);
        claimed.skipped += taken.skipped;
    }
    Ok(claimed)
}

/// One claim statement on SQLite, then the recipients of the rows it marked
/// `sending`.
async fn claim_sqlite(
    tx: &mut AnyConnection,
    campaign: &CampaignRow,
    worker: &str,
    want: usize,
    now: i64,
) -> Result<Taken> {
    let rows = claim_query(CLAIM_SQL, campaign, worker, want, now)
        .fetch_all(&mut *tx)
        .await?;
    let rows: Vec<(i64, String)> = rows
        .iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("status")?)))
        .collect::<sqlx::Result<_>>()?;
    let (sending, skipped): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, s)| s == "sending");
    let skipped = skipped.len() as u64;
    if sending.is_empty() {
        return Ok(Taken {
            skipped,
            ..Taken::default()
        });
    }
    let ids: Vec<i64> = sending.into_iter().map(|(id, _)| id).collect();
    let ids = serde_json::to_string(&ids).expect("ids serialise");
    let jobs = query_as(CLAIMED_JOBS_SQL)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
    Ok(Taken {
        jobs,
        skipped,
        last_first: None,
    })
}

/// One claim statement on PostgreSQL, which reads the recipients too,
/// from the cursor `after` unless it is 0.
async fn claim_postgres(
    tx: &mut AnyConnection,
    campaign: &CampaignRow,
    worker: &str,
    want: usize,
    now: i64,
    after: i64,
) -> Result<Taken> {
    let text = if after == 0 {
        CLAIM_SQL_PG
    } else {
        CLAIM_AFTER_SQL_PG
    };
    let text = with_want(text, want);
    let mut q = claim_query(&text, campaign, worker, want, now);
    if after != 0 {
        q = q.bind(after);
    }
    let rows = q.fetch_all(&mut *tx).await?;
    let (taken, _) = read_claim_pg(&rows)?;
    Ok(taken)
}

/// A claim statement ([`claim_sql!`]) with its parameters bound: `?1` the
/// campaign, `?2` its first list, `?3` and `?5` now, `?4` how many rows,
/// `?6` the worker.
fn claim_query<'q>(
    text: &str,
    campaign: &CampaignRow,
    worker: &'q str,
    want: usize,
    now: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query(text)
        .bind(campaign.id)
        .bind(campaign.list_id)
        .bind(now)
        .bind(want as i64)
        .bind(now)
        .bind(worker)
}

/// The rows of [`CLAIM_SQL_PG`] or [`SENT_AND_CLAIM_SQL_PG`] (or their
/// cursor forms): what they took, and whether the outcomes were left
/// unrecorded.
fn read_claim_pg(rows: &[AnyRow]) -> Result<(Taken, bool)> {
    let mut taken = Taken {
        jobs: Vec::with_capacity(rows.len()),
        ..Taken::default()
    };
    let mut blocked = false;
    for row in rows {
        let status: String = row.try_get("status")?;
        if status == "blocked" {
            blocked = true;
            continue;
        }
        taken.last_first = row.try_get("last_first")?;
        if status == "sending" {
            taken.jobs.push(Job::from_row(row)?);
        } else {
            taken.skipped += 1;
        }
    }
    Ok((taken, blocked))
}

/// One round of [`Ledger::record_and_claim`], as its private steps
/// pass it on: `outcomes` of `worker`'s rows of `campaign` to record, and
/// `want` rows to claim for it, at `now`.
#[derive(Clone, Copy)]
struct Round<'a> {
    campaign: &'a CampaignRow,
    worker: &'a str,
    want: usize,
    outcomes: &'a [(i64, i64, Outcome)],
    now: i64,
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

/// The dispatcher's hold on the delivery log for one pass: a connection
/// of its own, on which the ledger's rounds run one after another
/// ([`Ledger::record_and_claim`]). Held, so that a round costs only its own
/// statements (on PostgreSQL the common round is one statement, so one
/// round trip): a connection taken from the pool for each round and given
/// back costs two more round trips, because sqlx tests it with a ping when
/// it is taken and again when it is given back. The held connection is
/// tested only after it sat idle for [`LEDGER_IDLE`] (a slow `rate`, slow
/// servers), when the server may have dropped it, and replaced if so.
/// It also keeps where its next claim's search starts
/// ([`CLAIM_AFTER_SQL_PG`]).
pub struct Ledger {
    store: super::Store,
    conn: sqlx::pool::PoolConnection<sqlx::Any>,
    last_used: std::time::Instant,
    /// The highest queued row this ledger's claims took (0: none yet), where
    /// its next search for queued rows starts.
    after: i64,
}

/// How long the ledger's connection may sit idle before a round tests it.
const LEDGER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

impl super::Store {
    /// A connection for the dispatcher's rounds ([`Ledger`]).
    pub async fn ledger(&self) -> Result<Ledger> {
        Ok(Ledger {
            store: self.clone(),
            conn: self.pool.acquire().await?,
            last_used: std::time::Instant::now(),
            after: 0,
        })
    }

    /// One round ([`Ledger::record_and_claim`]) on a connection taken for
    /// it: the dispatcher's last try after its own connection failed, and
    /// what tests use.
    pub async fn record_and_claim(
        &self,
        campaign: &CampaignRow,
        worker: &str,
        want: usize,
        outcomes: &[(i64, i64, Outcome)],
        now: i64,
    ) -> Result<Claimed> {
        self.ledger()
            .await?
            .record_and_claim(campaign, worker, want, outcomes, now)
            .await
    }
}

impl Ledger {
    /// Records `outcomes` and claims up to `want` rows for `worker`
    /// ([`CLAIM_SQL`]), committed before the claimed rows are handed out:
    /// the group commit that brackets every SMTP transaction (together, but
    /// for a PostgreSQL claim made short by skipped rows, whose rest is
    /// claimed in a statement of its own).
    /// On PostgreSQL a round locks only the rows it writes (the worker's
    /// own, and the rows it claims `FOR UPDATE SKIP LOCKED`), so several
    /// workers' rounds commit side by side, and the common round (only
    /// deliveries to record) is one statement ([`SENT_AND_CLAIM_SQL_PG`]).
    pub async fn record_and_claim(
        &mut self,
        campaign: &CampaignRow,
        worker: &str,
        want: usize,
        outcomes: &[(i64, i64, Outcome)],
        now: i64,
    ) -> Result<Claimed> {
        let all_sent = outcomes
            .iter()
            .all(|(_, _, o)| matches!(o, Outcome::Sent { .. }));
        if self.last_used.elapsed() >= LEDGER_IDLE && self.conn.ping().await.is_err() {
            // Dropped while idle (a server restart, a proxy's timeout):
            // nothing was sent on it since, so a new one is as good.
            self.conn = self.store.pool.acquire().await?;
        }
        self.last_used = std::time::Instant::now();
        let round = Round {
            campaign,
            worker,
            want,
            outcomes,
            now,
        };
        if self.store.engine() == Engine::Postgres && want > 0 && !outcomes.is_empty() && all_sent {
            return self.record_sent_and_claim(round).await;
        }
        self.record_and_claim_in_transaction(round).await
    }

    /// [`SENT_AND_CLAIM_SQL_PG`], then what it left: the whole round in a
    /// transaction when a delivered person has a bounce score to lower, or
    /// more rows (in a transaction of their own) when skipped rows made the
    /// claim short.
    async fn record_sent_and_claim(&mut self, round: Round<'_>) -> Result<Claimed> {
        let Round {
            campaign,
            worker,
            want,
            outcomes,
            now,
        } = round;
        let sent: Vec<(i64, &str, &str)> = outcomes
            .iter()
            .filter_map(|(d, _, o)| match o {
                Outcome::Sent { reply, message_id } => {
                    Some((*d, reply.as_str(), message_id.as_str()))
                }
                _ => None,
            })
            .collect();
        let sent = serde_json::to_string(&sent).expect("outcomes serialise");
        let from = self.after;
        let text = if from == 0 {
            SENT_AND_CLAIM_SQL_PG
        } else {
            SENT_AND_CLAIM_AFTER_SQL_PG
        };
        let text = with_want(text, want);
        let mut q = claim_query(&text, campaign, worker, want, now).bind(sent);
        if from != 0 {
            q = q.bind(from);
        }
        let rows = q.fetch_all(&mut *self.conn).await?;
        let (taken, unrecorded) = read_claim_pg(&rows)?;
        if unrecorded {
            // Nothing was recorded or claimed: the round's transaction does both.
            return self.record_and_claim_in_transaction(round).await;
        }
        self.after = self.after.max(taken.last_first.unwrap_or(0));
        // The claim hands out fewer rows than asked only when no more are
        // due (or free to take) after where it started.
        let short = taken.jobs.len() + (taken.skipped as usize) < want;
        let mut claimed = Claimed {
            exhausted: short && from == 0,
            jobs: taken.jobs,
            skipped: taken.skipped,
        };
        if claimed.exhausted || claimed.jobs.len() == want {
            return Ok(claimed);
        }
        // Skipped rows (or the cursor) made the claim short: claim the
        // rest, in one transaction, so that a failure leaves only the rows
        // above to give back (each claim statement would commit on its own);
        // from the start when nothing is left after the cursor.
        let left = want - claimed.jobs.len();
        let from = if short { 0 } else { self.after };
        let (conn, cursor) = (&mut self.conn, &mut self.after);
        let rest = async {
            let mut tx = begin_rows(conn).await?;
            let more = claim(&mut tx, campaign, worker, left, now, cursor, from).await?;
            tx.commit().await?;
            Ok::<_, super::Error>(more)
        };
        match rest.await {
            Ok(more) => {
                claimed.exhausted = more.exhausted;
                claimed.skipped += more.skipped;
                claimed.jobs.extend(more.jobs);
                Ok(claimed)
            }
            Err(e) => {
                // The rows claimed already were committed `sending`: give
                // them back before failing, or the in-flight policy would
                // settle them, never attempted (best effort: the database
                // may be failing too), on a connection taken for it: this
                // one may be what failed.
                let back: Vec<_> = claimed
                    .jobs
                    .iter()
                    .map(|j| (j.delivery_id, j.subscriber_id, Outcome::Unclaimed))
                    .collect();
                let give_back = Round {
                    want: 0,
                    outcomes: &back,
                    ..round
                };
                if let Ok(mut fresh) = self.store.ledger().await {
                    let _ = fresh.record_and_claim_in_transaction(give_back).await;
                }
                Err(e)
            }
        }
    }

    /// [`Self::record_and_claim`] as one transaction, whatever the
    /// outcomes. On PostgreSQL a round that records a hard bounce or lowers
    /// a bounce score, which read and write what others write too, takes
    /// the write lock first ([`super::sql::begin_rows`]).
    async fn record_and_claim_in_transaction(&mut self, round: Round<'_>) -> Result<Claimed> {
        let Round {
            campaign,
            worker,
            want,
            outcomes,
            now,
        } = round;
        let mut tx = begin_rows(&mut self.conn).await?;
        let delivered: Vec<i64> = outcomes
            .iter()
            .filter(|(_, _, o)| matches!(o, Outcome::Sent { .. }))
            .map(|(_, subscriber, _)| *subscriber)
            .collect();
        let hard_bounce = outcomes.iter().any(|(_, _, o)| {
            matches!(
                o,
                Outcome::Failed {
                    hard_bounce: true,
                    ..
                }
            )
        });
        if hard_bounce {
            take_write_lock(&mut tx).await?;
        }
        // Before the first write: it may take the write lock.
        super::bounces::lower_scores_after_delivery(&mut tx, campaign.id, &delivered, now).await?;
        record_sent(&mut tx, worker, outcomes, now).await?;
        record_others(&mut tx, campaign.id, worker, outcomes, now).await?;
        let claimed = if want == 0 {
            Claimed::default()
        } else {
            let from = self.after;
            claim(&mut tx, campaign, worker, want, now, &mut self.after, from).await?
        };
        tx.commit().await?;
        Ok(claimed)
    }
}

/// The outcomes other than sent, one statement each (they are few), on
/// rows `worker` still holds; a hard bounce also stops mail to the address
/// ([`super::bounces::record_hard_bounce`]), under the write lock the round
/// took for it.
async fn record_others(
    tx: &mut AnyConnection,
    campaign: i64,
    worker: &str,
    outcomes: &[(i64, i64, Outcome)],
    now: i64,
) -> Result<()> {
    for (delivery_id, subscriber_id, outcome) in outcomes {
        let (status, reply, next): (&str, Option<&str>, Option<i64>) = match outcome {
            Outcome::Sent { .. } => continue,
            Outcome::Deferred { reply, retry_at } => ("deferred", Some(reply), Some(*retry_at)),
            Outcome::Failed { reply, .. } => ("failed", Some(reply), None),
            Outcome::Unknown { reply } => ("unknown", Some(reply), None),
            Outcome::Skipped { reason } => ("skipped", Some(reason), None),
            Outcome::Unclaimed => ("queued", None, None),
        };
        // A row already in the outcome's state recorded it before: a round
        // whose answer was lost, recorded again by the last try. Once is
        // enough (an attempt given back twice would be one too few).
        let changed = query(
            "UPDATE deliveries SET status = ?2, last_reply = COALESCE(?3, last_reply), next_attempt_at = ?4,
                 updated_at = ?5,
                 attempts = CASE WHEN ?2 = 'queued' AND attempts > 0 THEN attempts - 1 ELSE attempts END
             WHERE id = ?1 AND worker_id = ?6 AND status <> ?2",
        )
        .bind(delivery_id)
        .bind(status)
        .bind(reply)
        .bind(next)
        .bind(now)
        .bind(worker)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if let Outcome::Failed {
            reply,
            hard_bounce: true,
        } = outcome
            && (changed || !failed_by(tx, *delivery_id, worker).await?)
        {
            // The bounce is the person's whoever holds the row now (a
            // worker taken for dead still heard the server's refusal), but
            // it is recorded once.
            let campaign = Some(campaign);
            super::bounces::record_hard_bounce(
                tx,
                *subscriber_id,
                campaign,
                "dispatch",
                reply,
                now,
            )
            .await?;
        }
    }
    Ok(())
}

/// `worker` recorded the row `failed` already.
async fn failed_by(tx: &mut AnyConnection, delivery_id: i64, worker: &str) -> Result<bool> {
    let failed: Option<i64> = query_scalar(
        "SELECT 1 FROM deliveries WHERE id = ?1 AND worker_id = ?2 AND status = 'failed'",
    )
    .bind(delivery_id)
    .bind(worker)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(failed.is_some())
}

/// The common outcome, sent, as one statement per 300 rows. Like every
/// outcome, only on rows `worker` still holds: a row settled because its
/// worker was taken for dead is no longer that worker's to record.
async fn record_sent(
    tx: &mut AnyConnection,
    worker: &str,
    outcomes: &[(i64, i64, Outcome)],
    now: i64,
) -> Result<()> {
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
             FROM v WHERE deliveries.id = v.id AND deliveries.worker_id = ?"
        );
        let mut q = query(&sql);
        for (id, reply, mid) in chunk {
            q = q.bind(id).bind(reply).bind(mid);
        }
        q.bind(now).bind(now).bind(worker).execute(&mut *tx).await?;
    }
    Ok(())
}

impl super::Store {
    /// Delivery counts by status.
    pub async fn delivery_counts(&self, campaign_id: i64) -> Result<Vec<(String, i64)>> {
        let pool = &self.pool;
        let rows = query("SELECT status, COUNT(*) FROM deliveries WHERE campaign_id = ? GROUP BY status ORDER BY status")
        .bind(campaign_id)
        .fetch_all(pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect())
    }
}

/// When campaign `?1`'s next deferred delivery is due: one step into
/// `deliveries_work`.
const NEXT_RETRY_SQL: &str =
    "SELECT MIN(next_attempt_at) FROM deliveries WHERE campaign_id = ?1 AND status = 'deferred'";

impl super::Store {
    /// When the next deferred delivery is due, if any.
    pub async fn next_retry(&self, campaign_id: i64) -> Result<Option<i64>> {
        let pool = &self.pool;
        Ok(query_scalar(NEXT_RETRY_SQL)
            .bind(campaign_id)
            .fetch_one(pool)
            .await?)
    }

    /// Events of a kind since a time, for a campaign and its lists (for
    /// `status`).
    pub async fn events_since(&self, campaign_id: i64, kind: &str, since: i64) -> Result<i64> {
        let pool = &self.pool;
        Ok(query_scalar(
            "SELECT COUNT(*) FROM events WHERE kind = ?2 AND created_at >= ?3
             AND (campaign_id = ?1 OR (campaign_id IS NULL AND (list_id IS NULL
                 OR list_id IN (SELECT list_id FROM campaign_lists WHERE campaign_id = ?1))))",
        )
        .bind(campaign_id)
        .bind(kind)
        .bind(since)
        .fetch_one(pool)
        .await?)
    }

    /// Stores a setting unless it exists; returns the stored value.
    pub async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String> {
        let pool = &self.pool;
        query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(pool)
            .await?;
        Ok(self
            .setting(key)
            .await?
            .unwrap_or_else(|| value.to_string()))
    }
}

/// The states of a delivery in the order `report` lists them: what needs a
/// look first (failed, unknown), then what is still open, then the rest.
pub const REPORT_ORDER: [&str; 7] = [
    "failed", "unknown", "deferred", "skipped", "sending", "queued", "sent",
];

/// One line of `bulletin report`: a recipient of a campaign.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportRow {
    /// `None` once the person was erased.
    pub email: Option<String>,
    pub state: String,
    pub attempts: i64,
    /// The server's last reply, or why the row was skipped.
    pub last_reply: Option<String>,
    /// When the row last changed (unix seconds).
    pub updated_at: i64,
    /// The slug of the list through which the person receives it.
    pub list: Option<String>,
}

impl FromRow<'_, AnyRow> for ReportRow {
    fn from_row(r: &AnyRow) -> sqlx::Result<Self> {
        Ok(ReportRow {
            email: r.try_get("email")?,
            state: r.try_get("status")?,
            attempts: r.try_get("attempts")?,
            last_reply: r.try_get("last_reply")?,
            updated_at: r.try_get("updated_at")?,
            list: r.try_get("list")?,
        })
    }
}

/// What `cancel_campaign` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// Cancelled; `dropped` queued or deferred rows will not be sent.
    Done { dropped: u64 },
    /// A sent campaign no longer goes to people who join (its
    /// `resend_to_new` window, open until `until`, ended).
    NewcomersEnded { until: i64 },
    /// The campaign was already in this state, which cannot be cancelled.
    Refused(CampaignStatus),
}

/// What `replace_campaign` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replace {
    Done,
    /// Not replaceable: in this state, with this many messages attempted.
    Refused(CampaignStatus, i64),
}

/// The replacement content of a campaign (`send --replace`).
#[derive(Debug, Clone)]
pub struct Refreeze<'a> {
    pub id: i64,
    /// The lists, in front matter order (the first is `campaigns.list_id`).
    pub lists: &'a [i64],
    pub subject: &'a str,
    pub compiled: &'a str,
    pub source_hash: &'a str,
    pub send_at: i64,
    /// When it is frozen again: a campaign's `created_at` (`status` says
    /// "frozen" then), as for one frozen for the first time. A welcome
    /// campaign keeps its own (the start of "each person confirmed since").
    pub now: i64,
}

/// Rows of a campaign that a message was attempted for (anything but
/// `queued` and `skipped`): once there is one, the campaign cannot change.
const ATTEMPTED_SQL: &str = "SELECT COUNT(*) FROM deliveries \
    WHERE campaign_id = ?1 AND status NOT IN ('queued', 'skipped')";

/// Campaign `id`'s status and how many of its messages were attempted
/// ([`ATTEMPTED_SQL`]), read in the caller's transaction: what decides
/// whether `send --replace` may refreeze it.
pub(super) async fn replace_state(
    tx: &mut AnyConnection,
    id: i64,
) -> Result<(CampaignStatus, i64)> {
    let status: String = query_scalar("SELECT status FROM campaigns WHERE id = ?")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    let status = CampaignStatus::parse(&status).unwrap_or(CampaignStatus::Finished);
    let attempted: i64 = query_scalar(ATTEMPTED_SQL)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    Ok((status, attempted))
}

/// How many people mailable on a list of campaign `?1` have no delivery row
/// for it: who `send --only-new` and `resend_to_new` would mail first.
const FIRST_TIME_SQL: &str = concat!(
    "SELECT COUNT(DISTINCT s.id) FROM campaign_lists cl
         JOIN subscriptions sub ON sub.list_id = cl.list_id
         JOIN subscribers s ON s.id = sub.subscriber_id
     WHERE cl.campaign_id = ?1 AND ",
    mailable!(),
    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.campaign_id = ?1 AND d.subscriber_id = s.id)"
);

/// The rows of campaign `?1` (only state `?2` unless it is NULL), one
/// `UNION ALL` part per state in [`REPORT_ORDER`], each an index walk.
static REPORT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    REPORT_ORDER
        .iter()
        .map(|state| {
            format!(
                "SELECT * FROM (SELECT s.email, d.status, d.attempts, d.last_reply, d.updated_at, \
                 l.slug AS list \
                 FROM deliveries d LEFT JOIN subscribers s ON s.id = d.subscriber_id \
                 LEFT JOIN lists l ON l.id = COALESCE(d.list_id, (SELECT list_id FROM campaigns WHERE id = ?1)) \
                 WHERE d.campaign_id = ?1 AND d.status = '{state}' AND (?2 IS NULL OR ?2 = '{state}')) AS part_{state}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
});

impl super::Store {
    /// Cancels a campaign in one IMMEDIATE transaction: its status becomes
    /// `cancelled` and its queued and deferred rows `skipped` ("campaign
    /// cancelled"), so no claim after the commit finds anything. Rows
    /// already `sending` finish and are recorded; sent rows stay.
    pub async fn cancel_campaign(&self, id: i64, now: i64) -> Result<Cancel> {
        let columns = campaign_columns(self.engine());
        let mut tx = begin_write(self.pool()).await?;
        let c: CampaignRow = query_as(&format!("SELECT {columns} FROM campaigns WHERE id = ?"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let newcomers_until = c.mails_newcomers_until(now);
        match c.status.on_cancel(newcomers_until.is_some()) {
            OnCancel::Refuse => return Ok(Cancel::Refused(c.status)),
            OnCancel::EndNewcomers => {
                query("UPDATE campaigns SET resend_closed_at = ?2 WHERE id = ?1")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                let until = newcomers_until.expect("the window is open");
                return Ok(Cancel::NewcomersEnded { until });
            }
            OnCancel::Stop => {}
        }
        if !move_campaign(&mut tx, id, CampaignStatus::Cancelled, now).await? {
            return Ok(Cancel::Refused(c.status));
        }
        let dropped = query(
            "UPDATE deliveries SET status = 'skipped', last_reply = 'campaign cancelled',
                 next_attempt_at = NULL, updated_at = ?2
             WHERE campaign_id = ?1 AND status IN ('queued', 'deferred')",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(Cancel::Done { dropped })
    }

    /// Refreezes a campaign that has attempted no message yet, in one
    /// IMMEDIATE transaction: new subject, content, lists and time; its
    /// queued rows are dropped (the next run queues the audience again).
    pub async fn replace_campaign(&self, new: &Refreeze<'_>) -> Result<Replace> {
        let mut tx = begin_write(self.pool()).await?;
        let (status, attempted) = replace_state(&mut tx, new.id).await?;
        if !status.can_replace() || attempted > 0 {
            return Ok(Replace::Refused(status, attempted));
        }
        query("DELETE FROM deliveries WHERE campaign_id = ?")
            .bind(new.id)
            .execute(&mut *tx)
            .await?;
        query(
            "UPDATE campaigns SET list_id = ?2, subject = ?3, compiled = ?4, source_hash = ?5,
                 send_at = ?6, created_at = ?7
             WHERE id = ?1",
        )
        .bind(new.id)
        .bind(new.lists[0])
        .bind(new.subject)
        .bind(new.compiled)
        .bind(new.source_hash)
        .bind(new.send_at)
        .bind(new.now)
        .execute(&mut *tx)
        .await?;
        // Entering `scheduled` stamps no time, hence no `now`.
        if !move_campaign(&mut tx, new.id, CampaignStatus::Scheduled, 0).await? {
            return Ok(Replace::Refused(status, attempted));
        }
        set_campaign_lists(&mut tx, new.id, new.lists).await?;
        tx.commit().await?;
        Ok(Replace::Done)
    }

    /// How many of the campaign's audience (on any of its lists) have no
    /// delivery row for it yet: who `send --only-new` would mail for the
    /// first time.
    pub async fn first_time_count(&self, campaign_id: i64) -> Result<i64> {
        Ok(query_scalar(FIRST_TIME_SQL)
            .bind(campaign_id)
            .fetch_one(self.pool())
            .await?)
    }

    /// Moves back to `sending` every sent campaign whose frozen
    /// `resend_until` (front matter `resend_to_new`) is still ahead and one
    /// of whose lists has someone with no row for it; returns their slugs.
    /// The run that follows queues only those people (`materialise`).
    pub async fn reopen_for_new(&self, now: i64) -> Result<Vec<String>> {
        let candidates: Vec<(i64, String)> = query_as(&format!(
            "SELECT id, slug FROM campaigns
             WHERE status = 'sent' AND {} > ?
                 AND resend_closed_at IS NULL
             ORDER BY id",
            resend_until_sql(self.engine())
        ))
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        let mut reopened = Vec::new();
        for (id, slug) in candidates {
            if self.first_time_count(id).await? > 0
                && self
                    .set_campaign_status(id, CampaignStatus::Sending, now)
                    .await?
            {
                reopened.push(slug);
            }
        }
        Ok(reopened)
    }

    /// A campaign's slug (its name in messages), by id.
    pub async fn campaign_slug(&self, campaign_id: i64) -> Result<Option<String>> {
        Ok(query_scalar("SELECT slug FROM campaigns WHERE id = ?")
            .bind(campaign_id)
            .fetch_optional(self.pool())
            .await?)
    }

    /// The slugs of the lists a campaign goes to, in front matter order
    /// (for `status`).
    pub async fn campaign_list_slugs(&self, campaign_id: i64) -> Result<Vec<String>> {
        Ok(query_scalar(
            "SELECT l.slug FROM campaign_lists cl JOIN lists l ON l.id = cl.list_id
             WHERE cl.campaign_id = ? ORDER BY cl.position",
        )
        .bind(campaign_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// How many people a campaign was sent to (`sent` or `unknown` rows).
    pub async fn received_count(&self, campaign_id: i64) -> Result<i64> {
        Ok(query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE campaign_id = ? AND status IN ('sent', 'unknown')",
        )
        .bind(campaign_id)
        .fetch_one(self.pool())
        .await?)
    }

    /// Every recipient of a campaign, in [`REPORT_ORDER`] (or only `state`),
    /// streamed: each state is one walk of `deliveries_work`, so nothing is
    /// sorted or held in memory whatever the size of the campaign.
    pub fn report(
        &self,
        campaign_id: i64,
        state: Option<String>,
    ) -> futures_util::stream::BoxStream<'_, Result<ReportRow>> {
        use futures_util::{StreamExt as _, TryStreamExt as _};
        query_as::<ReportRow>(REPORT_SQL.as_str())
            .bind(campaign_id)
            .bind(state)
            .fetch(self.pool())
            .map_err(super::Error::from)
            .boxed()
    }

    /// One person's deliveries, newest first: (status, last SMTP reply or
    /// failure reason).
    pub async fn deliveries_of(&self, subscriber_id: i64) -> Result<Vec<(String, Option<String>)>> {
        Ok(query_as(
            "SELECT status, last_reply FROM deliveries WHERE subscriber_id = ? ORDER BY id DESC",
        )
        .bind(subscriber_id)
        .fetch_all(self.pool())
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// The plan of `sql` with every parameter bound to 1, one line a step.
    async fn plan(store: &Store, sql: &str, params: usize) -> Vec<String> {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut q = query(&explain);
        for _ in 0..params {
            q = q.bind(1i64);
        }
        q.fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect()
    }

    #[tokio::test]
    async fn claims_and_retries_read_the_work_index_in_order_without_a_sort() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        for (sql, params) in [(CLAIM_SQL, 6), (NEXT_RETRY_SQL, 1)] {
            let steps = plan(&store, sql, params).await;
            let text = steps.join("\n");
            assert!(!text.contains("TEMP B-TREE"), "a sort in\n{text}");
            assert!(
                steps.iter().all(|s| !s.starts_with("SCAN deliveries")),
                "a full scan in\n{text}"
            );
            assert!(text.contains("INDEX deliveries_work"), "{text}");
        }
        // Both searches of the claim (retries due, then queued rows).
        let claim = plan(&store, CLAIM_SQL, 6).await;
        let searches = claim
            .iter()
            .filter(|s| s.contains("INDEX deliveries_work (campaign_id=? AND status=?"))
            .count();
        assert_eq!(searches, 2, "{claim:#?}");
    }

    #[tokio::test]
    async fn the_report_walks_the_work_index_state_by_state_without_a_sort() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let steps = plan(&store, REPORT_SQL.as_str(), 2).await;
        let text = steps.join("\n");
        assert!(!text.contains("TEMP B-TREE"), "a sort in\n{text}");
        assert!(
            steps.iter().all(|s| !s.starts_with("SCAN d")),
            "a full scan in\n{text}"
        );
        let searches = steps
            .iter()
            .filter(|s| s.contains("INDEX deliveries_work (campaign_id=? AND status=?"))
            .count();
        assert_eq!(searches, REPORT_ORDER.len(), "{text}");
    }

    #[test]
    fn the_first_time_count_embeds_the_mailable_rule() {
        assert!(FIRST_TIME_SQL.contains(crate::store::MAILABLE));
    }

    #[test]
    fn the_lifecycle_allows_only_its_moves() {
        use CampaignStatus::*;
        for s in CampaignStatus::ALL {
            assert_eq!(CampaignStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(CampaignStatus::parse("sent"), Some(Finished));
        assert!(Scheduled.can_cancel() && Sending.can_cancel() && Held.can_cancel());
        assert!(!Finished.can_cancel() && !Cancelled.can_cancel());
        assert_eq!(Finished.on_cancel(true), OnCancel::EndNewcomers);
        assert_eq!(Finished.on_cancel(false), OnCancel::Refuse);
        assert_eq!(Cancelled.on_cancel(true), OnCancel::Refuse);
        assert_eq!(Sending.on_cancel(true), OnCancel::Stop);
        assert!(Scheduled.can_replace() && Held.can_replace());
        assert!(!Sending.can_replace() && !Finished.can_replace() && !Cancelled.can_replace());
        // Nothing leaves `cancelled`; only `send --only-new` reopens `sent`.
        for to in CampaignStatus::ALL {
            assert!(!to.comes_from().contains(&Cancelled), "{to} from cancelled");
        }
        let from_finished: Vec<_> = CampaignStatus::ALL
            .into_iter()
            .filter(|to| to.comes_from().contains(&Finished))
            .collect();
        assert_eq!(from_finished, [Sending]);
    }

    #[tokio::test]
    async fn a_cancelled_campaign_gets_no_new_rows_and_is_not_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let list = store
            .create_list("news", "News", "", false, false, 1)
            .await
            .unwrap();
        store
            .add_subscriber("a@example.net", None, "news", "cli", 1)
            .await
            .unwrap();
        let lists = [list.id];
        let new = NewCampaign::test("c", &lists);
        let id = store.insert_campaign(&new).await.unwrap();
        assert_eq!(
            store.cancel_campaign(id, 2).await.unwrap(),
            Cancel::Done { dropped: 0 }
        );
        assert_eq!(store.materialise(id, 3).await.unwrap(), 0);
        for to in [CampaignStatus::Sending, CampaignStatus::Finished] {
            assert!(!store.set_campaign_status(id, to, 3).await.unwrap());
        }
        assert_eq!(
            store.cancel_campaign(id, 4).await.unwrap(),
            Cancel::Refused(CampaignStatus::Cancelled)
        );
    }

    #[tokio::test]
    async fn a_hard_bounce_at_send_time_suppresses_the_address_as_returned_mail_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let list = store.create_list("news", "News", "", false, false, 1).await;
        let list = list.unwrap();
        for email in ["ann@example.org", "bob@example.org"] {
            store
                .add_subscriber(email, None, "news", "cli", 1)
                .await
                .unwrap();
        }
        let lists = [list.id];
        let new = NewCampaign::test("c", &lists);
        let id = store.insert_campaign(&new).await.unwrap();
        let campaign = store.campaign_by_id(id).await.unwrap().unwrap();
        store.materialise(id, 1).await.unwrap();
        let claimed = store
            .record_and_claim(&campaign, "test:1:1", 2, &[], 2)
            .await
            .unwrap();
        let ann = claimed.jobs.iter().find(|j| j.email == "ann@example.org");
        let ann = ann.unwrap();
        let failed = Outcome::Failed {
            reply: "RCPT: 550 5.1.1 no such user".into(),
            hard_bounce: true,
        };
        let outcomes = [(ann.delivery_id, ann.subscriber_id, failed)];
        store
            .record_and_claim(&campaign, "test:1:1", 0, &outcomes, 3)
            .await
            .unwrap();

        assert!(store.is_suppressed("ann@example.org").await.unwrap());
        assert!(!store.is_suppressed("bob@example.org").await.unwrap());
        let profile = store.profile("ann@example.org").await.unwrap().unwrap();
        assert_eq!(profile.subscriber.status, "bounced");
        let event = profile.events.iter().find(|e| e.kind == "bounced").unwrap();
        assert_eq!(event.source, "dispatch");
        let counts = store.delivery_counts(id).await.unwrap();
        assert_eq!(counts, [("failed".into(), 1), ("sending".into(), 1)]);
    }

    /// The last try records again what a round whose answer was lost had
    /// recorded: the row is left as once.
    #[tokio::test]
    async fn an_outcome_recorded_twice_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, campaign, claimed) = two_claimed(dir.path()).await;
        let (bounced, retried) = (&claimed.jobs[0], &claimed.jobs[1]);
        // The second row is deferred and claimed again: its second attempt.
        let deferred = Outcome::Deferred {
            reply: "451 4.3.0 try again".into(),
            retry_at: 3,
        };
        let outcomes = [(retried.delivery_id, retried.subscriber_id, deferred)];
        let retry = store
            .record_and_claim(&campaign, "test:1:1", 1, &outcomes, 3)
            .await
            .unwrap();
        let given_back = &retry.jobs[0];
        assert_eq!(
            (given_back.delivery_id, given_back.attempts),
            (retried.delivery_id, 2)
        );
        let failed = Outcome::Failed {
            reply: "RCPT: 550 5.1.1 no such user".into(),
            hard_bounce: true,
        };
        let outcomes = [
            (bounced.delivery_id, bounced.subscriber_id, failed),
            (
                given_back.delivery_id,
                given_back.subscriber_id,
                Outcome::Unclaimed,
            ),
        ];
        for now in [4, 5] {
            store
                .record_and_claim(&campaign, "test:1:1", 0, &outcomes, now)
                .await
                .unwrap();
        }
        let profile = store.profile(&bounced.email).await.unwrap().unwrap();
        let bounces = profile.events.iter().filter(|e| e.kind == "bounced");
        assert_eq!(bounces.count(), 1, "{:?}", profile.events);
        assert!(store.is_suppressed(&bounced.email).await.unwrap());
        let again = store
            .record_and_claim(&campaign, "test:1:1", 3, &[], 6)
            .await
            .unwrap();
        let row = again
            .jobs
            .iter()
            .find(|j| j.delivery_id == given_back.delivery_id);
        assert_eq!(row.unwrap().attempts, 2, "its attempt given back once");
    }

    #[tokio::test]
    async fn rows_claimed_and_never_handed_out_go_back_to_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        // Worker 1 holds two rows and handed out one; worker 2 holds one.
        let (store, campaign, claimed) = two_claimed(dir.path()).await;
        let handed = claimed.jobs[0].delivery_id;
        let others = store
            .record_and_claim(&campaign, "test:2:2", 1, &[], 2)
            .await
            .unwrap();
        assert_eq!(others.jobs.len(), 1);
        let back = store
            .give_back_unhanded(campaign.id, "test:1:1", &[handed], 3)
            .await
            .unwrap();
        assert_eq!(back, 1, "worker 1's row it did not hand out");
        let counts = store.delivery_counts(campaign.id).await.unwrap();
        assert_eq!(counts, [("queued".into(), 1), ("sending".into(), 2)]);
        let again = store
            .record_and_claim(&campaign, "test:1:1", 1, &[], 4)
            .await
            .unwrap();
        assert_eq!(again.jobs[0].attempts, 1, "the attempt was given back");
        let all = store
            .give_back_unhanded(campaign.id, "test:2:2", &[], 5)
            .await
            .unwrap();
        assert_eq!(all, 1, "with nothing handed out, all of worker 2's");
    }

    /// A store in `dir` with [`two_lists`]'s campaign queued, and its first
    /// two rows claimed by worker `test:1:1`.
    async fn two_claimed(dir: &std::path::Path) -> (Store, CampaignRow, Claimed) {
        let store = Store::open(&dir.join("t.db")).await.unwrap();
        let (_, _, campaign) = two_lists(&store).await;
        store.materialise(campaign.id, 1).await.unwrap();
        let claimed = store
            .record_and_claim(&campaign, "test:1:1", 2, &[], 2)
            .await
            .unwrap();
        (store, campaign, claimed)
    }

    /// Two lists, `a` and `b`, and a campaign to both (in that order): ann
    /// on a only, bob on both, cy on b only.
    async fn two_lists(store: &Store) -> (i64, i64, CampaignRow) {
        let a = store.create_list("a", "A", "", false, false, 1).await;
        let b = store.create_list("b", "B", "", false, false, 1).await;
        let (a, b) = (a.unwrap().id, b.unwrap().id);
        for (email, lists) in [
            ("ann@example.org", &["a"][..]),
            ("bob@example.org", &["a", "b"]),
            ("cy@example.org", &["b"]),
        ] {
            for list in lists {
                store
                    .add_subscriber(email, None, list, "cli", 1)
                    .await
                    .unwrap();
            }
        }
        let lists = [a, b];
        let new = NewCampaign::test("c", &lists);
        let id = store.insert_campaign(&new).await.unwrap();
        let campaign = store.campaign_by_id(id).await.unwrap().unwrap();
        (a, b, campaign)
    }

    /// Each claimed job's (email, list) in claim order.
    fn jobs(claimed: &Claimed) -> Vec<(&str, i64)> {
        claimed
            .jobs
            .iter()
            .map(|j| (j.email.as_str(), j.list_id))
            .collect()
    }

    #[tokio::test]
    async fn the_queue_is_built_chunk_by_chunk_and_misses_no_id() {
        for chunk in [1, 2, 3] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("t.db")).await.unwrap();
            let (a, b, campaign) = two_lists(&store).await;
            let queued = store.materialise_by(campaign.id, 2, chunk).await;
            assert_eq!(queued.unwrap(), 3, "chunks of {chunk}");
            assert_eq!(
                store.materialise_by(campaign.id, 2, chunk).await.unwrap(),
                0
            );
            assert_each_once_through_their_earliest_list(&store, (a, b), &campaign).await;
        }
    }

    /// Claims everything queued by [`two_lists`]' campaign: ann and bob
    /// through list `a`, cy through `b`, once each.
    async fn assert_each_once_through_their_earliest_list(
        store: &Store,
        (a, b): (i64, i64),
        campaign: &CampaignRow,
    ) {
        let claimed = store
            .record_and_claim(campaign, "test:1:1", 5, &[], 3)
            .await
            .unwrap();
        let mut got = jobs(&claimed);
        got.sort();
        let want = [
            ("ann@example.org", a),
            ("bob@example.org", a),
            ("cy@example.org", b),
        ];
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn several_lists_queue_each_person_once_through_their_earliest_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let (a, b, campaign) = two_lists(&store).await;
        assert_eq!(campaign.list_id, a, "the first list is the campaign's list");
        assert_eq!(store.campaign_lists(campaign.id).await.unwrap(), [a, b]);
        let audience = store.audience_of_lists(&[a, b]).await.unwrap();
        assert_eq!((audience.people, audience.on_several), (3, 1));
        assert_eq!(store.first_time_count(campaign.id).await.unwrap(), 3);
        assert_eq!(store.materialise(campaign.id, 2).await.unwrap(), 3);
        assert_eq!(store.materialise(campaign.id, 2).await.unwrap(), 0);
        assert_eq!(store.first_time_count(campaign.id).await.unwrap(), 0);
        assert_each_once_through_their_earliest_list(&store, (a, b), &campaign).await;
    }

    #[tokio::test]
    async fn queueing_a_campaign_again_waits_for_no_writer_unless_someone_joined() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path).await.unwrap();
        let (_, _, campaign) = two_lists(&store).await;
        assert_eq!(store.materialise(campaign.id, 2).await.unwrap(), 3);
        // Another writer holds the database (an import, another worker
        // queueing): everybody has a row, so queueing again needs no lock.
        let impatient = Store::open_with(&path, std::time::Duration::from_millis(100))
            .await
            .unwrap();
        let writer = super::super::sql::begin_write(store.pool()).await.unwrap();
        assert_eq!(impatient.materialise(campaign.id, 3).await.unwrap(), 0);
        writer.rollback().await.unwrap();
        // Someone joined: their row is written under the lock, so it waits.
        store
            .add_subscriber("dee@example.org", None, "b", "cli", 4)
            .await
            .unwrap();
        let writer = super::super::sql::begin_write(store.pool()).await.unwrap();
        let err = impatient.materialise(campaign.id, 5).await.unwrap_err();
        assert!(matches!(err, crate::store::Error::Locked(_)), "{err:?}");
        writer.rollback().await.unwrap();
        assert_eq!(impatient.materialise(campaign.id, 6).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn the_claim_sends_through_another_list_of_the_campaign_when_one_was_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let (a, b, campaign) = two_lists(&store).await;
        store.materialise(campaign.id, 2).await.unwrap();
        // After queueing: bob leaves a (still on b), ann leaves a (on nothing else).
        for email in ["bob@example.org", "ann@example.org"] {
            store
                .remove_subscriber(email, Some("a"), "cli", 3)
                .await
                .unwrap();
        }
        let claimed = store
            .record_and_claim(&campaign, "test:1:1", 5, &[], 4)
            .await
            .unwrap();
        let mut got = jobs(&claimed);
        got.sort();
        assert_eq!(got, [("bob@example.org", b), ("cy@example.org", b)]);
        assert_eq!(claimed.skipped, 1);
        let rows: Vec<(String, String, Option<i64>, Option<String>)> = query_as(
            "SELECT s.email, d.status, d.list_id, d.last_reply FROM deliveries d
             JOIN subscribers s ON s.id = d.subscriber_id ORDER BY s.email",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        let ann = &rows[0];
        assert_eq!(
            (ann.1.as_str(), ann.2, ann.3.as_deref()),
            (
                "skipped",
                Some(a),
                Some("subscription unsubscribed before their turn")
            )
        );
        assert_eq!(
            (rows[1].1.as_str(), rows[1].2),
            ("sending", Some(b)),
            "bob switched to b"
        );
    }

    #[tokio::test]
    async fn rows_queued_before_rows_had_a_list_go_through_the_first_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let (a, _, campaign) = two_lists(&store).await;
        store.materialise(campaign.id, 2).await.unwrap();
        query("UPDATE deliveries SET list_id = NULL")
            .execute(store.pool())
            .await
            .unwrap();
        let claimed = store
            .record_and_claim(&campaign, "test:1:1", 5, &[], 3)
            .await
            .unwrap();
        let got = jobs(&claimed);
        // cy is not on a but is on b: the claim switches them, as for a leaver.
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got.iter()
                .filter(|(e, _)| *e != "cy@example.org")
                .all(|(_, l)| *l == a)
        );
    }

    #[tokio::test]
    async fn campaigns_frozen_before_several_lists_get_their_one_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let list = store.create_list("news", "News", "", false, false, 1).await;
        let list = list.unwrap().id;
        // A campaign row as step 6 wrote it: no campaign_lists row.
        query(
            "INSERT INTO campaigns (slug, list_id, subject, compiled, source_hash, status, send_at, created_at)
             VALUES ('old', ?, 's', '{}', 'h', 'sent', 1, 1)",
        )
        .bind(list)
        .execute(store.pool())
        .await
        .unwrap();
        sqlx::raw_sql("PRAGMA user_version = 6")
            .execute(store.pool())
            .await
            .unwrap();
        crate::store::schema::apply(store.pool()).await.unwrap();
        let old = store.campaign_by_slug("old").await.unwrap().unwrap();
        assert_eq!(store.campaign_lists(old.id).await.unwrap(), [list]);
        assert_eq!(store.campaign_list_slugs(old.id).await.unwrap(), ["news"]);
    }
}
