//! Dispatch workers: the `workers` table (who is sending which campaign,
//! and when they last said they were alive), the settling of rows a dead
//! worker left `sending`, and the per-campaign pace shared by every worker
//! (`campaign_pace`). On PostgreSQL several workers share one campaign; on
//! SQLite one run holds a campaign (the lease) and registers here too, so
//! `status` shows it.

use super::deliveries::InFlight;
use super::sql::{begin_write, query, query_as, query_scalar};
use super::{Result, Store};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

/// One running `dispatch`/`send` process, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Worker {
    /// `host:pid:random`, also in `deliveries.worker_id` of its rows.
    pub id: String,
    pub host: String,
    pub pid: i64,
    /// The campaign it is sending, if it has started one.
    pub campaign_id: Option<i64>,
    pub started_at: i64,
    pub heartbeat_at: i64,
}

impl FromRow<'_, AnyRow> for Worker {
    fn from_row(r: &AnyRow) -> sqlx::Result<Self> {
        Ok(Worker {
            id: r.try_get("id")?,
            host: r.try_get("host")?,
            pid: r.try_get("pid")?,
            campaign_id: r.try_get("campaign_id")?,
            started_at: r.try_get("started_at")?,
            heartbeat_at: r.try_get("heartbeat_at")?,
        })
    }
}

/// What a worker's in-flight rows say once the worker is gone.
const DEAD_WORKER_REPLY: &str = "in flight when its worker stopped";

impl Store {
    /// Records (or refreshes) worker `id` on `host` with process `pid`,
    /// sending `campaign_id`, alive at `now`.
    pub async fn register_worker(
        &self,
        id: &str,
        host: &str,
        pid: i64,
        campaign_id: i64,
        now: i64,
    ) -> Result<()> {
        query(
            "INSERT INTO workers (id, host, pid, campaign_id, started_at, heartbeat_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (id) DO UPDATE SET campaign_id = ?4, heartbeat_at = ?5",
        )
        .bind(id)
        .bind(host)
        .bind(pid)
        .bind(campaign_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Worker `id` is alive at `now`. False when its row is gone: another
    /// worker found it dead and settled its rows, so it must stop sending.
    pub async fn heartbeat(&self, id: &str, now: i64) -> Result<bool> {
        let done = query("UPDATE workers SET heartbeat_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Worker `id` has finished.
    pub async fn unregister_worker(&self, id: &str) -> Result<()> {
        query("DELETE FROM workers WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Workers that said they were alive at `alive_since` or later, by
    /// campaign then start.
    pub async fn live_workers(&self, alive_since: i64) -> Result<Vec<Worker>> {
        Ok(query_as(
            "SELECT id, host, pid, campaign_id, started_at, heartbeat_at FROM workers
             WHERE heartbeat_at >= ? ORDER BY campaign_id, started_at, id",
        )
        .bind(alive_since)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Settles, by `policy`, the rows of `campaign_id` left `sending` by a
    /// worker that is gone: one whose heartbeat is older than `alive_since`
    /// (its `workers` row is deleted here, so it stops when it next beats),
    /// one that finished, or a run before workers were recorded (NULL).
    /// One write transaction: of several workers noticing at once, the
    /// first settles the rows and the others find none. Returns how many.
    pub async fn settle_dead_workers(
        &self,
        campaign_id: i64,
        policy: InFlight,
        alive_since: i64,
        now: i64,
    ) -> Result<u64> {
        let mut tx = begin_write(&self.pool).await?;
        query("DELETE FROM workers WHERE heartbeat_at < ?")
            .bind(alive_since)
            .execute(&mut *tx)
            .await?;
        let done = query(
            "UPDATE deliveries SET status = ?1, updated_at = ?2, last_reply = ?3, worker_id = NULL
             WHERE campaign_id = ?4 AND status = 'sending'
               AND (worker_id IS NULL
                    OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = deliveries.worker_id))",
        )
        .bind(policy.settled_status())
        .bind(now)
        .bind(DEAD_WORKER_REPLY)
        .bind(campaign_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Reserves the next send slot of `campaign_id` at one message per
    /// `interval_us` microseconds across every worker; returns when (unix
    /// microseconds) the slot starts: `now_us`, or later when the campaign's
    /// pace is ahead. One statement (an upsert on the campaign's row), so
    /// two workers never get the same slot. A slot reserved and not used is
    /// lost: the shared rate can fall short of `[smtp] rate`, never exceed it
    /// (given clocks in step across hosts).
    pub async fn next_send_slot(
        &self,
        campaign_id: i64,
        interval_us: i64,
        now_us: i64,
    ) -> Result<i64> {
        Ok(query_scalar(
            "INSERT INTO campaign_pace (campaign_id, next_at) VALUES (?1, ?2 + ?3)
             ON CONFLICT (campaign_id) DO UPDATE SET next_at = CASE
                 WHEN campaign_pace.next_at > ?2 THEN campaign_pace.next_at + ?3
                 ELSE ?2 + ?3 END
             RETURNING next_at - ?3",
        )
        .bind(campaign_id)
        .bind(now_us)
        .bind(interval_us)
        .fetch_one(&self.pool)
        .await?)
    }
}
