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

    /// Forgets every worker of `campaign_id` but `id`, and returns how many.
    /// For a run that holds the campaign's lease (SQLite): it is the
    /// campaign's only live worker, and a run killed before it could say it
    /// had finished left its row behind.
    pub async fn forget_other_workers(&self, campaign_id: i64, id: &str) -> Result<u64> {
        let done = query("DELETE FROM workers WHERE campaign_id = ? AND id <> ?")
            .bind(campaign_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::deliveries::NewCampaign;

    /// A campaign to list `a` with ann, bob and cy queued.
    async fn campaign(store: &Store) -> crate::store::deliveries::CampaignRow {
        let list = store.create_list("a", "A", "", false, false, 1).await;
        let list = list.unwrap().id;
        for email in ["ann@example.org", "bob@example.org", "cy@example.org"] {
            store
                .add_subscriber(email, None, "a", "cli", 1)
                .await
                .unwrap();
        }
        let lists = [list];
        let new = NewCampaign::test("c", &lists);
        let id = store.insert_campaign(&new).await.unwrap();
        store.materialise(id, 1).await.unwrap();
        store.campaign_by_id(id).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_dead_workers_rows_are_settled_once_and_a_live_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let c = campaign(&store).await;
        store
            .register_worker("h:1:a", "h", 1, c.id, 10)
            .await
            .unwrap();
        store
            .register_worker("h:2:b", "h", 2, c.id, 10)
            .await
            .unwrap();
        let dead = store
            .record_and_claim(&c, "h:1:a", 2, &[], 10)
            .await
            .unwrap();
        let live = store
            .record_and_claim(&c, "h:2:b", 1, &[], 10)
            .await
            .unwrap();
        assert_eq!((dead.jobs.len(), live.jobs.len()), (2, 1));
        // Worker b beats at 100; a has been silent since 10.
        assert!(store.heartbeat("h:2:b", 100).await.unwrap());
        let alive_since = 100 - 60;
        let settled = store.settle_dead_workers(c.id, InFlight::Unknown, alive_since, 100);
        assert_eq!(settled.await.unwrap(), 2);
        // Whoever notices next finds nothing more to settle.
        let again = store.settle_dead_workers(c.id, InFlight::Unknown, alive_since, 101);
        assert_eq!(again.await.unwrap(), 0);
        let counts = store.delivery_counts(c.id).await.unwrap();
        assert_eq!(counts, [("sending".into(), 1), ("unknown".into(), 2)]);
        // The dead worker is gone: it stops at its next heartbeat, and its
        // late outcomes change nothing.
        assert!(!store.heartbeat("h:1:a", 102).await.unwrap());
        let late = crate::store::deliveries::Outcome::Sent {
            reply: "250 ok".into(),
            message_id: "<m@x>".into(),
        };
        let job = &dead.jobs[0];
        let outcomes = [(job.delivery_id, job.subscriber_id, late)];
        store
            .record_and_claim(&c, "h:1:a", 0, &outcomes, 103)
            .await
            .unwrap();
        let counts = store.delivery_counts(c.id).await.unwrap();
        assert_eq!(counts, [("sending".into(), 1), ("unknown".into(), 2)]);
        let live_workers = store.live_workers(alive_since).await.unwrap();
        let ids: Vec<&str> = live_workers.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, ["h:2:b"]);
    }

    #[tokio::test]
    async fn resend_puts_a_dead_workers_rows_back_in_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let c = campaign(&store).await;
        store
            .register_worker("h:1:a", "h", 1, c.id, 10)
            .await
            .unwrap();
        store
            .record_and_claim(&c, "h:1:a", 3, &[], 10)
            .await
            .unwrap();
        let settled = store.settle_dead_workers(c.id, InFlight::Resend, 50, 100);
        assert_eq!(settled.await.unwrap(), 3);
        let counts = store.delivery_counts(c.id).await.unwrap();
        assert_eq!(counts, [("queued".into(), 3)]);
    }

    #[tokio::test]
    async fn send_slots_are_spaced_across_callers_and_never_shared() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        // Three workers ask at the same moment: one slot each, 100 ms apart.
        let mut slots = Vec::new();
        for _ in 0..3 {
            slots.push(store.next_send_slot(7, 100_000, 1_000_000).await.unwrap());
        }
        assert_eq!(slots, [1_000_000, 1_100_000, 1_200_000]);
        // After a pause the pace starts again from now, not from the past.
        let later = store.next_send_slot(7, 100_000, 5_000_000).await.unwrap();
        assert_eq!(later, 5_000_000);
        // Another campaign has its own pace.
        assert_eq!(
            store.next_send_slot(8, 100_000, 1_000_000).await.unwrap(),
            1_000_000
        );
    }
}
