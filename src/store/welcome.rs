//! SQL of welcome campaigns: a campaign with `trigger = "welcome"` is frozen
//! with no audience and becomes its list's active welcome campaign (at most
//! one per list). From then on every path that confirms a subscription
//! calls [`queue_welcome`] inside its own transaction, which queues one
//! delivery row for each person it confirmed; the dispatcher sends those
//! rows like any other (claim re-check, retries, bounces) and never marks
//! the campaign sent. `bulletin cancel` ends it (`Store::cancel_campaign`).
//!
//! Exactly once per person: the row is written in the transaction that
//! changed the subscription to confirmed, only when it changed, and the
//! UNIQUE (campaign, subscriber) of `deliveries` with `ON CONFLICT DO
//! NOTHING` makes any later confirmation (a second click, a return after
//! leaving) queue nothing.

use super::sql::{Engine, begin_write, query, query_scalar};
use sqlx::AnyConnection;

use super::deliveries::{
    CampaignStatus, NewCampaign, Refreeze, Replace, replace_state, set_campaign_lists,
};
use super::{Result, Store};

/// Whether a welcome campaign has work for `dispatch`, as a condition on a
/// `campaigns` row with `?1` the time now: a queued row, a retry due, or a
/// row a dead run left `sending`. Three probes of `deliveries_work`, so an
/// idle welcome campaign with years of sent rows costs nothing.
pub(super) const HAS_WORK: &str = "(EXISTS (SELECT 1 FROM deliveries d
         WHERE d.campaign_id = campaigns.id AND d.status = 'queued')
     OR EXISTS (SELECT 1 FROM deliveries d
         WHERE d.campaign_id = campaigns.id AND d.status = 'sending')
     OR EXISTS (SELECT 1 FROM deliveries d
         WHERE d.campaign_id = campaigns.id AND d.status = 'deferred' AND d.next_attempt_at <= ?1))";

/// The active welcome campaign of list `?1`: a welcome campaign that is
/// `sending` (frozen welcome campaigns start there; `cancel` ends them).
const ACTIVE_SQL: &str = "SELECT c.id FROM campaigns c
     JOIN campaign_triggers t ON t.campaign_id = c.id AND t.trigger = 'welcome'
     WHERE c.list_id = ?1 AND c.status = 'sending'";

/// Queues the welcome mail of list `list_id`'s active welcome campaign (if
/// it has one) for `subscriber_ids`, whose subscriptions to the list the
/// caller's transaction has just changed to confirmed; returns how many rows
/// were added. Someone who already has a row for that campaign gets none.
/// The one writer of welcome rows: every confirming path calls it, in the
/// transaction of its change, with only the people whose status changed.
pub(super) async fn queue_welcome(
    conn: &mut AnyConnection,
    list_id: i64,
    subscriber_ids: &[i64],
    now: i64,
) -> Result<u64> {
    if subscriber_ids.is_empty() {
        return Ok(0);
    }
    // The campaign first, then one insert over the ids: the insert's cost
    // is the rows it adds, whatever the number of campaigns.
    let campaign: Option<i64> = query_scalar(ACTIVE_SQL)
        .bind(list_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(campaign) = campaign else {
        return Ok(0);
    };
    let ids = serde_json::to_string(subscriber_ids).expect("numbers serialise");
    // The ids arrive as one JSON array, expanded by each engine's function.
    let done = query(over_json_ids!(
        Engine::of_connection(conn),
        "INSERT INTO deliveries (campaign_id, subscriber_id, status, attempts, updated_at)
         SELECT ?1, ids.id, 'queued', 0, ?3 FROM ",
        "?2",
        " ids WHERE true
         ON CONFLICT (campaign_id, subscriber_id) DO NOTHING"
    ))
    .bind(campaign)
    .bind(ids)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// What `freeze_welcome` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FreezeWelcome {
    /// Frozen and active, with this id.
    Frozen(i64),
    /// The list already has an active welcome campaign, this one.
    Busy(String),
}

impl Store {
    /// Freezes `c` as the active welcome campaign of its list, in one
    /// IMMEDIATE transaction that first checks the list has none: the
    /// campaign is `sending` from now on, with no delivery row (nobody
    /// already on the list gets it).
    pub async fn freeze_welcome(&self, c: &NewCampaign<'_>) -> Result<FreezeWelcome> {
        let mut tx = begin_write(self.pool()).await?;
        let active: Option<String> = query_scalar(&format!(
            "SELECT slug FROM campaigns WHERE id IN ({ACTIVE_SQL})"
        ))
        .bind(c.lists[0])
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(slug) = active {
            return Ok(FreezeWelcome::Busy(slug));
        }
        let id: i64 = query_scalar(
            "INSERT INTO campaigns (slug, list_id, subject, compiled, source_hash, status, send_at, created_at, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?7) RETURNING id",
        )
        .bind(c.slug)
        .bind(c.lists[0])
        .bind(c.subject)
        .bind(c.compiled)
        .bind(c.source_hash)
        .bind(CampaignStatus::Sending.as_str())
        .bind(c.now)
        .fetch_one(&mut *tx)
        .await?;
        set_campaign_lists(&mut tx, id, c.lists).await?;
        query("INSERT INTO campaign_triggers (campaign_id, trigger) VALUES (?, 'welcome')")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(FreezeWelcome::Frozen(id))
    }

    /// `send --replace` of a welcome campaign: new subject and content, as
    /// long as it is active and no welcome message was attempted yet (the
    /// same rule as any campaign). Its queued rows stay: they are people
    /// confirmed meanwhile, waiting for the welcome mail. Its `created_at`
    /// stays: `status` reads it as the start of "sent to each person
    /// confirmed since", which a new text does not move (`new.now` is for
    /// campaigns).
    pub async fn replace_welcome(&self, new: &Refreeze<'_>) -> Result<Replace> {
        let mut tx = begin_write(self.pool()).await?;
        let (status, attempted) = replace_state(&mut tx, new.id).await?;
        if status != CampaignStatus::Sending || attempted > 0 {
            return Ok(Replace::Refused(status, attempted));
        }
        query("UPDATE campaigns SET subject = ?2, compiled = ?3, source_hash = ?4 WHERE id = ?1")
            .bind(new.id)
            .bind(new.subject)
            .bind(new.compiled)
            .bind(new.source_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Replace::Done)
    }

    /// The slug of list `list_id`'s active welcome campaign, if any.
    pub async fn active_welcome(&self, list_id: i64) -> Result<Option<String>> {
        Ok(query_scalar(&format!(
            "SELECT slug FROM campaigns WHERE id IN ({ACTIVE_SQL})"
        ))
        .bind(list_id)
        .fetch_optional(self.pool())
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ImportOptions;

    /// A store with a single and a double opt-in list, each with an active
    /// welcome campaign; returns the two campaigns' ids too.
    async fn store() -> (tempfile::TempDir, Store, [(i64, i64); 2]) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let mut made = [(0, 0); 2];
        for (i, (slug, double)) in [("open", false), ("club", true)].into_iter().enumerate() {
            let list = store
                .create_list(slug, slug, "", double, true, 1)
                .await
                .unwrap();
            let (name, lists) = (format!("welcome-{slug}"), [list.id]);
            let new = NewCampaign {
                subject: "Welcome",
                ..NewCampaign::test(&name, &lists)
            };
            let FreezeWelcome::Frozen(id) = store.freeze_welcome(&new).await.unwrap() else {
                panic!("the list had no welcome campaign yet")
            };
            made[i] = (list.id, id);
        }
        (dir, store, made)
    }

    async fn rows(store: &Store, campaign: i64) -> Vec<i64> {
        query_scalar(
            "SELECT subscriber_id FROM deliveries WHERE campaign_id = ? AND status = 'queued' ORDER BY 1",
        )
        .bind(campaign)
        .fetch_all(store.pool())
        .await
        .unwrap()
    }

    async fn id(store: &Store, email: &str) -> i64 {
        store.subscriber(email).await.unwrap().unwrap().id
    }

    /// Every path that makes a subscription confirmed queues the welcome
    /// mail once, and only when the status changed. A new confirming path
    /// belongs in this test.
    #[tokio::test]
    async fn every_confirming_path_queues_the_welcome_mail_once() {
        let (_dir, store, [(open, open_welcome), (club, club_welcome)]) = store().await;
        // `subscribers add` on a single opt-in list: confirmed at once.
        store
            .add_subscriber("a@example.org", None, "open", "cli", 2)
            .await
            .unwrap();
        let a = id(&store, "a@example.org").await;
        // Pending on the double opt-in list: nothing yet.
        store
            .add_subscriber("b@example.org", None, "club", "cli", 2)
            .await
            .unwrap();
        let b = id(&store, "b@example.org").await;
        assert_eq!(rows(&store, club_welcome).await, Vec::<i64>::new());
        // The confirmation click, twice.
        assert!(store.confirm_from(b, club, None, 3).await.unwrap());
        assert!(!store.confirm_from(b, club, None, 4).await.unwrap());
        // `subscribers add --confirmed` of someone pending, and of someone new.
        store
            .add_subscriber("c@example.org", None, "club", "cli", 2)
            .await
            .unwrap();
        store
            .subscribe("c@example.org", None, "club", true, "cli", 3)
            .await
            .unwrap();
        store
            .subscribe("d@example.org", None, "club", true, "cli", 3)
            .await
            .unwrap();
        let (c, d) = (
            id(&store, "c@example.org").await,
            id(&store, "d@example.org").await,
        );
        // The sign-up form on a single opt-in list, and the preference page.
        let lists = [store.list("open").await.unwrap().unwrap()];
        let e = store
            .sign_up("e@example.org", "", &lists, 3)
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .set_subscription(e.subscriber, club, "confirmed", "web", 3)
                .await
                .unwrap()
        );
        // Leaving and coming back: no second welcome.
        store
            .set_subscription(a, open, "unsubscribed", "web", 4)
            .await
            .unwrap();
        assert!(
            store
                .set_subscription(a, open, "confirmed", "web", 5)
                .await
                .unwrap()
        );
        let mut open_rows = vec![a, e.subscriber];
        open_rows.sort();
        assert_eq!(rows(&store, open_welcome).await, open_rows);
        let mut club_rows = vec![b, c, d, e.subscriber];
        club_rows.sort();
        assert_eq!(rows(&store, club_welcome).await, club_rows);

        // Imports: only with `welcome`, only who the import confirmed.
        store
            .add_subscriber("f@example.org", None, "club", "cli", 5)
            .await
            .unwrap();
        let csv = "email\nb@example.org\nf@example.org\ng@example.org\n";
        let quiet = ImportOptions::new(6);
        let welcome = ImportOptions {
            welcome: true,
            ..ImportOptions::new(6)
        };
        let (report, _) = store
            .import(csv.as_bytes(), "club", &welcome, |_| {})
            .await
            .unwrap();
        assert_eq!(
            report.welcomed, 2,
            "f confirmed, g new; b was confirmed already"
        );
        let (report, _) = store
            .import(csv.as_bytes(), "club", &welcome, |_| {})
            .await
            .unwrap();
        assert_eq!(report.welcomed, 0, "the same file again confirms nobody");
        store
            .add_subscriber("h@example.org", None, "club", "cli", 7)
            .await
            .unwrap();
        let (report, _) = store
            .import("email\nh@example.org\n".as_bytes(), "club", &quiet, |_| {})
            .await
            .unwrap();
        assert_eq!((report.updated, report.welcomed), (1, 0));
        let (f, g) = (
            id(&store, "f@example.org").await,
            id(&store, "g@example.org").await,
        );
        club_rows.extend([f, g]);
        club_rows.sort();
        assert_eq!(rows(&store, club_welcome).await, club_rows);
    }

    /// A new text for the welcome mail changes what it says, not since when
    /// it greets people: `created_at` is that start.
    #[tokio::test]
    async fn replacing_the_welcome_mail_keeps_the_time_it_started() {
        let (_dir, store, [(open, welcome), _]) = store().await;
        let before = store.campaign_by_id(welcome).await.unwrap().unwrap();
        let lists = [open];
        let new = Refreeze {
            id: welcome,
            lists: &lists,
            subject: "Welcome, reader",
            compiled: "{}",
            source_hash: "new",
            send_at: 50,
            now: 50,
        };
        assert_eq!(store.replace_welcome(&new).await.unwrap(), Replace::Done);
        let after = store.campaign_by_id(welcome).await.unwrap().unwrap();
        assert_eq!(after.subject, "Welcome, reader");
        assert_eq!(after.created_at, before.created_at);
        assert_ne!(after.created_at, 50);
    }

    #[tokio::test]
    async fn one_active_welcome_per_list_and_none_after_cancel() {
        let (_dir, store, [(open, first), _]) = store().await;
        let lists = [open];
        let new = NewCampaign {
            subject: "Welcome again",
            send_at: 2,
            now: 2,
            ..NewCampaign::test("welcome-2", &lists)
        };
        assert_eq!(
            store.freeze_welcome(&new).await.unwrap(),
            FreezeWelcome::Busy("welcome-open".into())
        );
        let c = store.campaign_by_id(first).await.unwrap().unwrap();
        assert!(c.welcome && c.status == CampaignStatus::Sending);
        store
            .add_subscriber("a@example.org", None, "open", "cli", 3)
            .await
            .unwrap();
        store.cancel_campaign(first, 4).await.unwrap();
        assert_eq!(store.active_welcome(open).await.unwrap(), None);
        // Cancelled: its waiting row is skipped, and nobody new is queued.
        store
            .add_subscriber("b@example.org", None, "open", "cli", 5)
            .await
            .unwrap();
        assert_eq!(rows(&store, first).await, Vec::<i64>::new());
        assert!(matches!(
            store.freeze_welcome(&new).await.unwrap(),
            FreezeWelcome::Frozen(_)
        ));
    }
}
