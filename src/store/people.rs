//! SQL for the subscriber pages: one person by id, their lists, changes
//! they make themselves (name, subscriptions, sign-up, confirmation), and
//! what "download my data" returns. Every change appends an event.

use super::sql::{begin_write, query, query_as, query_scalar};
use sqlx::{AnyConnection, AnyPool, FromRow, Row};
use tokio::sync::{mpsc, oneshot};

use super::{List, Result, events};

const LIST_COLUMNS: &str =
    "l.id, l.slug, l.name, l.description, l.double_opt_in, l.public, l.created_at";

impl super::Store {
    /// The list `list`, when `subscriber` is a living (not erased) person: what
    /// an unsubscribe link needs, in one query.
    pub async fn list_for(&self, subscriber: i64, list: i64) -> Result<Option<List>> {
        let pool = &self.pool;
        let row = query(&format!(
            "SELECT {LIST_COLUMNS} FROM lists l WHERE l.id = ?
         AND EXISTS (SELECT 1 FROM subscribers s WHERE s.id = ? AND s.email IS NOT NULL)"
        ))
        .bind(list)
        .bind(subscriber)
        .fetch_optional(pool)
        .await?;
        Ok(row.as_ref().map(List::from_row).transpose()?)
    }

    pub async fn public_lists(&self) -> Result<Vec<List>> {
        let pool = &self.pool;
        let rows = query(&format!(
        "SELECT {LIST_COLUMNS} FROM lists l WHERE l.public != 0 AND l.id NOT IN (SELECT list_id FROM removed_lists) ORDER BY l.name"
    ))
    .fetch_all(pool)
    .await?;
        Ok(rows
            .iter()
            .map(List::from_row)
            .collect::<sqlx::Result<_>>()?)
    }

    /// The lists a person has a subscription row for, with its status.
    pub async fn lists_of(&self, subscriber: i64) -> Result<Vec<(List, String)>> {
        let pool = &self.pool;
        let rows = query(&format!(
        "SELECT {LIST_COLUMNS}, sub.status AS sub_status
         FROM subscriptions sub JOIN lists l ON l.id = sub.list_id
         WHERE sub.subscriber_id = ? AND l.id NOT IN (SELECT list_id FROM removed_lists) ORDER BY l.name"
    ))
    .bind(subscriber)
    .fetch_all(pool)
    .await?;
        rows.iter()
            .map(|r| Ok((List::from_row(r)?, r.get("sub_status"))))
            .collect()
    }

    /// Sets a subscription's status (creating the row) in one IMMEDIATE
    /// transaction; appends an event only when something changed. Returns
    /// whether it did. A person who is erased (or unknown) is left alone.
    pub async fn set_subscription(
        &self,
        subscriber: i64,
        list: i64,
        status: &str,
        source: &str,
        now: i64,
    ) -> Result<bool> {
        let pool = &self.pool;
        let mut tx = begin_write(pool).await?;
        let changed =
            set_subscription_in(&mut tx, subscriber, list, None, status, source, now).await?;
        tx.commit().await?;
        Ok(changed)
    }
}

/// [`Store::set_subscription`](super::Store::set_subscription) inside the caller's write transaction; its
/// event names `campaign` too, if any. Choosing a list again makes a person who had left everything active
/// again; a bounced, complained or erased person stays as they are.
async fn set_subscription_in(
    conn: &mut AnyConnection,
    subscriber: i64,
    list: i64,
    campaign: Option<i64>,
    status: &str,
    source: &str,
    now: i64,
) -> Result<bool> {
    let current: Option<(Option<String>, String)> = query_as(
        "SELECT sub.status, s.status FROM subscribers s
         LEFT JOIN subscriptions sub ON sub.subscriber_id = s.id AND sub.list_id = ?
         WHERE s.id = ? AND s.email IS NOT NULL",
    )
    .bind(list)
    .bind(subscriber)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((current, person)) = current else {
        return Ok(false);
    };
    if current.as_deref() == Some(status) {
        return Ok(false);
    }
    query(
        "INSERT INTO subscriptions (subscriber_id, list_id, status, source, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (subscriber_id, list_id) DO UPDATE SET status = ?3, source = ?4, updated_at = ?5",
    )
    .bind(subscriber)
    .bind(list)
    .bind(status)
    .bind(source)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if status == "confirmed" {
        super::welcome::queue_welcome(conn, list, &[subscriber], now).await?;
    }
    if status == "confirmed" && person == "unsubscribed" {
        query("UPDATE subscribers SET status = 'active', updated_at = ? WHERE id = ?")
            .bind(now)
            .bind(subscriber)
            .execute(&mut *conn)
            .await?;
    }
    let kind = match status {
        "unsubscribed" => "unsubscribed",
        _ => "subscribed",
    };
    let about = events::About {
        list: Some(list),
        campaign,
    };
    events::append_about(conn, subscriber, about, kind, source, None, now).await?;
    Ok(true)
}

/// Changes of subscription from the web pages, written by one task that
/// commits whatever has queued up in one transaction: under a burst of
/// one-click unsubscribes the requests share commits instead of queueing
/// for SQLite's single write lock one by one. Each caller gets its answer
/// only after the commit that holds its change.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::Sender<Queued>,
}

/// One change of a subscription, as the pages ask for it: `subscriber`'s
/// subscription to `list` becomes `status`; its event names `campaign`
/// (the email an unsubscribe link came in), if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub subscriber: i64,
    pub list: i64,
    pub campaign: Option<i64>,
    pub status: &'static str,
    pub source: &'static str,
    pub now: i64,
}

impl Change {
    /// Writes it inside the caller's write transaction.
    async fn write_in(&self, conn: &mut AnyConnection) -> Result<bool> {
        set_subscription_in(
            conn,
            self.subscriber,
            self.list,
            self.campaign,
            self.status,
            self.source,
            self.now,
        )
        .await
    }
}

/// A change waiting for the writer, and where its answer goes.
#[derive(Debug)]
struct Queued {
    change: Change,
    done: oneshot::Sender<Result<bool>>,
}

/// Most changes in one transaction.
const GROUP: usize = 512;

impl Writer {
    /// Starts the writing task on the current tokio runtime; it ends when
    /// the last clone of the `Writer` is dropped, after its queue is empty.
    pub fn spawn(store: super::Store) -> Writer {
        let (queue, mut rx) = mpsc::channel::<Queued>(4 * GROUP);
        tokio::spawn(async move {
            let mut group = Vec::with_capacity(GROUP);
            while rx.recv_many(&mut group, GROUP).await > 0 {
                // A panic costs its group an answer (their callers see
                // `WriterStopped`), not the writer.
                let write = std::panic::AssertUnwindSafe(write_group(&store, &mut group));
                if futures_util::FutureExt::catch_unwind(write).await.is_err() {
                    tracing::error!("subscription writer: a group of {} panicked", group.len());
                    group.clear();
                }
            }
        });
        Writer { queue }
    }

    /// False once the writing task is gone (for health checks).
    pub fn is_running(&self) -> bool {
        !self.queue.is_closed()
    }

    /// [`Store::set_subscription`](super::Store::set_subscription), through
    /// the writing task; true when something changed.
    pub async fn set_subscription(&self, change: Change) -> Result<bool> {
        let (done, answer) = oneshot::channel();
        let stopped = || super::Error::WriterStopped;
        let queued = Queued { change, done };
        self.queue.send(queued).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Writes a group in one transaction. Should that fail for a reason that
/// may pass (the database stayed locked, a collision, no connection), the
/// whole group gets that error (trying each change would
/// wait the busy timeout once per change); for any other failure each change
/// is tried on its own, so one bad change cannot sink the others.
async fn write_group(store: &super::Store, group: &mut Vec<Queued>) {
    async fn all(pool: &AnyPool, group: &[Queued]) -> Result<Vec<bool>> {
        let mut tx = begin_write(pool).await?;
        let mut changed = Vec::with_capacity(group.len());
        for queued in group {
            changed.push(queued.change.write_in(&mut tx).await?);
        }
        tx.commit().await?;
        Ok(changed)
    }
    match all(&store.pool, group).await {
        Ok(changed) => {
            for (c, changed) in group.drain(..).zip(changed) {
                let _ = c.done.send(Ok(changed));
            }
        }
        Err(e) if e.is_transient() => {
            for c in group.drain(..) {
                let copy = e.transient_copy().expect("a transient error copies");
                let _ = c.done.send(Err(copy));
            }
        }
        Err(_) => {
            for Queued { change, done } in group.drain(..) {
                let alone = async {
                    let mut tx = begin_write(store.pool()).await?;
                    let changed = change.write_in(&mut tx).await?;
                    tx.commit().await?;
                    Ok(changed)
                };
                let _ = done.send(alone.await);
            }
        }
    }
}

impl super::Store {
    /// The person changed their name on the preference page.
    pub async fn set_name(&self, subscriber: i64, name: &str, now: i64) -> Result<()> {
        let pool = &self.pool;
        let mut tx = begin_write(pool).await?;
        let changed =
            query("UPDATE subscribers SET name = ?1, updated_at = ?2 WHERE id = ?3 AND name != ?1")
                .bind(name)
                .bind(now)
                .bind(subscriber)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
        if changed {
            events::append(
                &mut tx,
                subscriber,
                None,
                "updated",
                "web",
                Some("name"),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Everything stored about a person, for "download my data".
    pub async fn export_person(&self, subscriber: i64) -> Result<serde_json::Value> {
        let pool = &self.pool;
        use serde_json::json;
        let Some(p) = query("SELECT email, name, attributes, status FROM subscribers WHERE id = ?")
            .bind(subscriber)
            .fetch_optional(pool)
            .await?
        else {
            return Ok(json!(null));
        };
        let (email, name, attributes, status): (Option<String>, String, String, String) =
            (p.get(0), p.get(1), p.get(2), p.get(3));
        let lists: Vec<_> = query(
            "SELECT l.slug, l.name, sub.status, c.consent_at, c.consent_ip, c.confirmed_at,
                c.confirmed_ip, c.source
         FROM subscriptions sub JOIN lists l ON l.id = sub.list_id
         LEFT JOIN consents c ON c.subscriber_id = sub.subscriber_id AND c.list_id = sub.list_id
         WHERE sub.subscriber_id = ? ORDER BY l.name",
        )
        .bind(subscriber)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            json!({
                "list": r.get::<String, _>(0),
                "name": r.get::<String, _>(1),
                "status": r.get::<String, _>(2),
                "consent": {
                    "optin_at": r.get::<Option<i64>, _>(3),
                    "optin_ip": r.get::<Option<String>, _>(4),
                    "confirmed_at": r.get::<Option<i64>, _>(5),
                    "confirmed_ip": r.get::<Option<String>, _>(6),
                    "recorded_by": r.get::<Option<String>, _>(7),
                },
            })
        })
        .collect();
        let events: Vec<_> = query(
        "SELECT e.kind, e.source, e.detail, e.created_at, l.slug AS list, c.slug AS campaign
         FROM events e LEFT JOIN lists l ON l.id = e.list_id LEFT JOIN campaigns c ON c.id = e.campaign_id
         WHERE e.subscriber_id = ? ORDER BY e.id",
    )
    .bind(subscriber)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        json!({
            "kind": r.get::<String, _>("kind"),
            "source": r.get::<String, _>("source"),
            "detail": r.get::<Option<String>, _>("detail"),
            "at": r.get::<i64, _>("created_at"),
            "list": r.get::<Option<String>, _>("list"),
            "campaign": r.get::<Option<String>, _>("campaign"),
        })
    })
    .collect();
        let deliveries: Vec<_> = query(
        "SELECT c.slug, d.status, d.sent_at FROM deliveries d JOIN campaigns c ON c.id = d.campaign_id
         WHERE d.subscriber_id = ? ORDER BY d.id",
    )
    .bind(subscriber)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        json!({
            "campaign": r.get::<String, _>(0),
            "status": r.get::<String, _>(1),
            "sent_at": r.get::<Option<i64>, _>(2),
        })
    })
    .collect();
        let attributes: serde_json::Value = serde_json::from_str(&attributes).unwrap_or(json!({}));
        Ok(json!({
            "email": email,
            "name": name,
            "status": status,
            "attributes": attributes,
            "subscriptions": lists,
            "history": events,
            "emails_received": deliveries,
        }))
    }
}

/// What a sign-up for one list did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignUp {
    /// Already confirmed: nothing to do.
    AlreadyOn,
    /// A single opt-in list, for someone who never left it: subscribed.
    Subscribed,
    /// Pending until the person confirms by email: the list asks for double
    /// opt-in, or the person had left, bounced, complained or was erased (a
    /// stranger must not be able to bring back someone who chose to go, and
    /// an address that stopped working must prove it works again).
    Pending,
}

/// Most confirmation emails to one address in [`CONFIRMATION_WINDOW`]
/// seconds, whatever the number of sign-ups. Counted from the person's
/// `confirmation sent` events, so the limit holds across restarts and
/// processes.
pub const CONFIRMATIONS_PER_WINDOW: i64 = 3;
pub const CONFIRMATION_WINDOW: i64 = 24 * 3600;

/// Suppression reasons a confirmed sign-up lifts. A `manual` suppression is
/// the team's decision and stays: such an address is not even mailed a
/// confirmation.
const LIFTED_BY_SIGN_UP: &str = "('erased', 'bounced', 'complained')";

/// What [`Store::sign_up`](super::Store::sign_up) stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUp {
    pub subscriber: i64,
    /// Each list's outcome, in the order asked.
    pub outcomes: Vec<SignUp>,
    /// Send one confirmation email (for every `Pending` list): some list is
    /// pending and the address is under its limit of confirmation emails.
    /// The email is counted as sent when this is true.
    pub send_confirmation: bool,
}

impl super::Store {
    /// A sign-up from the web form, in one IMMEDIATE transaction: finds or
    /// creates the person and asks for each list (each once: the caller
    /// dedupes). Someone who left, bounced, complained or was erased is asked to
    /// confirm every list; confirming (`Store::confirm`) brings them back. `None`
    /// when the address must not be mailed at all (suppressed by hand).
    /// `email` is canonical (`address::normalize`).
    pub async fn sign_up(
        &self,
        email: &str,
        name: &str,
        lists: &[List],
        now: i64,
    ) -> Result<Option<SignedUp>> {
        let pool = &self.pool;
        let hash = crate::address::hash(email);
        let mut tx = begin_write(pool).await?;
        let suppressed: Option<String> =
            query_scalar("SELECT reason FROM suppressions WHERE hash = ?")
                .bind(&hash)
                .fetch_optional(&mut *tx)
                .await?;
        if suppressed.as_deref() == Some("manual") {
            return Ok(None);
        }
        // An erased person has no address any more: they come back as a new row.
        query(
        "INSERT INTO subscribers (email, email_hash, name, attributes, status, created_at, updated_at)
         VALUES (?, ?, ?, '{}', 'active', ?, ?) ON CONFLICT (email) DO NOTHING",
    )
    .bind(email)
    .bind(&hash)
    .bind(name)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
        let (id, person): (i64, String) =
            query_as("SELECT id, status FROM subscribers WHERE email = ?")
                .bind(email)
                .fetch_one(&mut *tx)
                .await?;
        let returning = person != "active" || suppressed.is_some();
        let mut outcomes = Vec::with_capacity(lists.len());
        for list in lists {
            let current: Option<String> = query_scalar(
                "SELECT status FROM subscriptions WHERE subscriber_id = ? AND list_id = ?",
            )
            .bind(id)
            .bind(list.id)
            .fetch_optional(&mut *tx)
            .await?;
            let (outcome, status) = match current.as_deref() {
                Some("confirmed") if !returning => (SignUp::AlreadyOn, None),
                None if !list.double_opt_in && !returning => {
                    (SignUp::Subscribed, Some("confirmed"))
                }
                _ => (SignUp::Pending, Some("pending")),
            };
            if let Some(status) = status {
                set_subscription_in(&mut tx, id, list.id, None, status, "web", now).await?;
            }
            outcomes.push(outcome);
        }
        let send_confirmation = outcomes.contains(&SignUp::Pending)
            && count_confirmation(&mut tx, id, "web", now).await?;
        tx.commit().await?;
        Ok(Some(SignedUp {
            subscriber: id,
            outcomes,
            send_confirmation,
        }))
    }
}

/// Records a confirmation email to `subscriber` unless the address had
/// [`CONFIRMATIONS_PER_WINDOW`] already; returns whether it may be sent.
async fn count_confirmation(
    conn: &mut AnyConnection,
    subscriber: i64,
    source: &str,
    now: i64,
) -> Result<bool> {
    let recent: i64 = query_scalar(
        "SELECT count(*) FROM events
         WHERE subscriber_id = ? AND kind = 'confirmation sent' AND created_at > ?",
    )
    .bind(subscriber)
    .bind(now - CONFIRMATION_WINDOW)
    .fetch_one(&mut *conn)
    .await?;
    if recent >= CONFIRMATIONS_PER_WINDOW {
        return Ok(false);
    }
    events::append(
        conn,
        subscriber,
        None,
        "confirmation sent",
        source,
        None,
        now,
    )
    .await?;
    Ok(true)
}

impl super::Store {
    /// Counts a confirmation email to `subscriber` sent by `source` (the
    /// CLI's `subscribers add`) against the same daily limit as the sign-up
    /// form; false when the address had [`CONFIRMATIONS_PER_WINDOW`] already
    /// and nothing may be sent.
    pub async fn count_confirmation(
        &self,
        subscriber: i64,
        source: &str,
        now: i64,
    ) -> Result<bool> {
        let mut tx = begin_write(self.pool()).await?;
        let may_send = count_confirmation(&mut tx, subscriber, source, now).await?;
        tx.commit().await?;
        Ok(may_send)
    }
}

/// The sign-up form's limit per client: `max` requests in a window of
/// `window` seconds that starts with the client's first request, counted in
/// the database (table `signup_limits`) so that every `serve` process on it
/// shares the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignUpLimit {
    pub max: i64,
    pub window: i64,
}

impl super::Store {
    /// Whether `client` (an address, as text) may send one more sign-up
    /// now: fewer than `limit.max` requests counted in its window. A read
    /// only, so the answer never waits for another writer; the request is
    /// counted afterwards by [`Store::count_sign_up`](super::Store::count_sign_up).
    pub async fn sign_up_allowed(
        &self,
        client: &str,
        limit: SignUpLimit,
        now: i64,
    ) -> Result<bool> {
        let hits: Option<i64> =
            query_scalar("SELECT hits FROM signup_limits WHERE client = ? AND window_start > ?")
                .bind(client)
                .bind(now - limit.window)
                .fetch_optional(self.pool())
                .await?;
        Ok(hits.unwrap_or(0) < limit.max)
    }

    /// Counts one sign-up request from `client` at `now`: one more in its
    /// window, or the first of a new one when its window has ended. One
    /// atomic upsert, so servers counting at once lose no request. Rows
    /// whose window ended are dropped.
    pub async fn count_sign_up(&self, client: &str, limit: SignUpLimit, now: i64) -> Result<()> {
        let ended = now - limit.window;
        query(
            "INSERT INTO signup_limits (client, window_start, hits) VALUES (?1, ?2, 1)
             ON CONFLICT (client) DO UPDATE SET
                 hits = CASE WHEN signup_limits.window_start <= ?3 THEN 1
                             ELSE signup_limits.hits + 1 END,
                 window_start = CASE WHEN signup_limits.window_start <= ?3 THEN ?2
                                     ELSE signup_limits.window_start END",
        )
        .bind(client)
        .bind(now)
        .bind(ended)
        .execute(self.pool())
        .await?;
        query("DELETE FROM signup_limits WHERE window_start <= ? AND client != ?")
            .bind(ended)
            .bind(client)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

impl super::Store {
    /// Double opt-in confirmed: a pending subscription becomes confirmed, and a
    /// person who had left everything, bounced or complained is active again;
    /// the suppression an erasure, bounce or complaint left on the address is
    /// lifted (only a confirmed sign-up does that). Anything else (already
    /// confirmed, unsubscribed since, erased) is left alone.
    pub async fn confirm(&self, subscriber: i64, list: i64, now: i64) -> Result<bool> {
        self.confirm_from(subscriber, list, None, now).await
    }

    /// `confirm`, recording the click as the consent record: its time and the
    /// address it came from (`ip`), with the sign-up time as the opt-in.
    pub async fn confirm_from(
        &self,
        subscriber: i64,
        list: i64,
        ip: Option<std::net::IpAddr>,
        now: i64,
    ) -> Result<bool> {
        let pool = &self.pool;
        let mut tx = begin_write(pool).await?;
        // The click is the consent record, and the sign-up (when the
        // subscription became pending) the opt-in. Written first, while the
        // subscription is still pending; nothing when it is not.
        query(
        "INSERT INTO consents (subscriber_id, list_id, consent_at, confirmed_at, confirmed_ip, source)
         SELECT subscriber_id, list_id, updated_at, ?3, ?4, 'web' FROM subscriptions
         WHERE subscriber_id = ?1 AND list_id = ?2 AND status = 'pending'
         ON CONFLICT (subscriber_id, list_id) DO UPDATE SET consent_at = excluded.consent_at,
             consent_ip = NULL, confirmed_at = excluded.confirmed_at,
             confirmed_ip = excluded.confirmed_ip, source = 'web'",
    )
    .bind(subscriber)
    .bind(list)
    .bind(now)
    .bind(ip.map(|ip| ip.to_string()))
    .execute(&mut *tx)
    .await?;
        let confirmed = query(
            "UPDATE subscriptions SET status = 'confirmed', updated_at = ?
         WHERE subscriber_id = ? AND list_id = ? AND status = 'pending'
         AND subscriber_id IN (SELECT id FROM subscribers WHERE email IS NOT NULL)",
        )
        .bind(now)
        .bind(subscriber)
        .bind(list)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if confirmed {
            super::welcome::queue_welcome(&mut tx, list, &[subscriber], now).await?;
            query(
                "UPDATE subscribers SET status = 'active', updated_at = ?
             WHERE id = ? AND status IN ('unsubscribed', 'bounced', 'complained')",
            )
            .bind(now)
            .bind(subscriber)
            .execute(&mut *tx)
            .await?;
            let lifted = query(&format!(
                "DELETE FROM suppressions WHERE reason IN {LIFTED_BY_SIGN_UP}
             AND hash = (SELECT email_hash FROM subscribers WHERE id = ?)"
            ))
            .bind(subscriber)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            let detail = lifted.then_some("suppression lifted");
            events::append(
                &mut tx,
                subscriber,
                Some(list),
                "confirmed",
                "web",
                detail,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(confirmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    async fn store_with(people: usize) -> (tempfile::TempDir, Store, i64, Vec<i64>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let list = store
            .create_list("news", "News", "", false, true, 1)
            .await
            .unwrap()
            .id;
        let mut ids = Vec::new();
        for i in 0..people {
            store
                .add_subscriber(&format!("p{i}@example.org"), None, "news", "cli", 1)
                .await
                .unwrap();
            ids.push(
                store
                    .subscriber(&format!("p{i}@example.org"))
                    .await
                    .unwrap()
                    .unwrap()
                    .id,
            );
        }
        (dir, store, list, ids)
    }

    /// A change from the pages, about no campaign.
    fn change(subscriber: i64, list: i64, status: &'static str, now: i64) -> Change {
        Change {
            subscriber,
            list,
            campaign: None,
            status,
            source: "web",
            now,
        }
    }

    async fn count(store: &Store, sql: &str) -> i64 {
        query_scalar(sql).fetch_one(store.pool()).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writer_records_every_concurrent_change_once() {
        let (_dir, store, list, ids) = store_with(300).await;
        let writer = Writer::spawn(store.clone());
        // Every person twice at once: one change each, one "false".
        let tasks: Vec<_> = ids
            .iter()
            .chain(ids.iter())
            .map(|&id| {
                let w = writer.clone();
                tokio::spawn(async move {
                    w.set_subscription(change(id, list, "unsubscribed", 2))
                        .await
                })
            })
            .collect();
        let mut changed = 0;
        for t in tasks {
            changed += t.await.unwrap().unwrap() as usize;
        }
        assert_eq!(changed, ids.len());
        assert_eq!(
            count(
                &store,
                "SELECT count(*) FROM subscriptions WHERE status = 'unsubscribed'"
            )
            .await,
            300
        );
        assert_eq!(
            count(
                &store,
                "SELECT count(*) FROM events WHERE kind = 'unsubscribed'"
            )
            .await,
            300
        );
    }

    #[tokio::test]
    async fn writer_leaves_erased_and_unknown_people_alone() {
        let (_dir, store, list, ids) = store_with(2).await;
        store.forget("p0@example.org", "cli", 2).await.unwrap();
        let writer = Writer::spawn(store.clone());
        assert!(
            !writer
                .set_subscription(change(ids[0], list, "confirmed", 3))
                .await
                .unwrap()
        );
        assert!(
            !writer
                .set_subscription(change(9_999, list, "confirmed", 3))
                .await
                .unwrap()
        );
        assert_eq!(
            count(
                &store,
                &format!(
                    "SELECT count(*) FROM subscriptions WHERE subscriber_id = {}",
                    ids[0]
                )
            )
            .await,
            0
        );
        // A change that fails (no such list) does not sink one that is fine
        // in the same group.
        let (bad, good) = tokio::join!(
            writer.set_subscription(change(ids[1], 77, "confirmed", 3)),
            writer.set_subscription(change(ids[1], list, "unsubscribed", 3)),
        );
        assert!(bad.is_err());
        assert!(good.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_locked_database_fails_the_group_and_the_writer_goes_on() {
        let (dir, _store, list, ids) = store_with(5).await;
        let store = Store::open_with(
            &dir.path().join("t.db"),
            std::time::Duration::from_millis(100),
        )
        .await
        .unwrap();
        let writer = Writer::spawn(store.clone());
        let mut lock = begin_write(store.pool()).await.unwrap();
        query("INSERT INTO settings (key, value) VALUES ('held', 'yes')")
            .execute(&mut *lock)
            .await
            .unwrap();
        let tasks: Vec<_> = ids
            .iter()
            .map(|&id| {
                let w = writer.clone();
                tokio::spawn(async move {
                    w.set_subscription(change(id, list, "unsubscribed", 2))
                        .await
                })
            })
            .collect();
        for t in tasks {
            let err = t.await.unwrap().unwrap_err();
            assert!(err.is_transient(), "{err:?}");
        }
        lock.rollback().await.unwrap();
        assert!(writer.is_running());
        assert!(
            writer
                .set_subscription(change(ids[0], list, "unsubscribed", 3))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn choosing_a_list_again_reactivates_who_left_everything() {
        // (status before, status after leaving the list and choosing it again)
        for (before, after) in [("unsubscribed", "active"), ("bounced", "bounced")] {
            let (_dir, store, list, ids) = store_with(1).await;
            let pool = store.pool();
            query("UPDATE subscribers SET status = ?")
                .bind(before)
                .execute(pool)
                .await
                .unwrap();
            for (status, now) in [("unsubscribed", 2), ("confirmed", 3)] {
                let changed = store
                    .set_subscription(ids[0], list, status, "web", now)
                    .await;
                assert!(changed.unwrap());
            }
            let p = store.subscriber_by_id(ids[0]).await.unwrap().unwrap();
            assert_eq!(p.status, after, "{before}");
        }
    }

    #[tokio::test]
    async fn sign_up_limit_is_shared_by_every_handle_and_its_window_ends() {
        let (dir, store, _, _) = store_with(0).await;
        // Another server's handle on the same database.
        let other = Store::open(&dir.path().join("t.db")).await.unwrap();
        let limit = SignUpLimit {
            max: 3,
            window: 600,
        };
        let client = "198.51.100.7";
        for (at, handle) in [(1000, &store), (1001, &other), (1002, &store)] {
            assert!(handle.sign_up_allowed(client, limit, at).await.unwrap());
            handle.count_sign_up(client, limit, at).await.unwrap();
        }
        assert!(!other.sign_up_allowed(client, limit, 1100).await.unwrap());
        assert!(
            store
                .sign_up_allowed("198.51.100.8", limit, 1100)
                .await
                .unwrap()
        );
        // The window is 600 s from the client's first request.
        assert!(!store.sign_up_allowed(client, limit, 1599).await.unwrap());
        assert!(store.sign_up_allowed(client, limit, 1600).await.unwrap());
        other
            .count_sign_up("203.0.113.1", limit, 1600)
            .await
            .unwrap();
        // A new window starts at one; rows of windows that ended go.
        store.count_sign_up(client, limit, 2300).await.unwrap();
        assert_eq!(
            count(
                &store,
                "SELECT hits FROM signup_limits WHERE client = '198.51.100.7'"
            )
            .await,
            1
        );
        assert_eq!(count(&store, "SELECT count(*) FROM signup_limits").await, 1);
    }

    #[tokio::test]
    async fn confirm_only_confirms_pending() {
        let (_dir, store, list, ids) = store_with(1).await;
        store
            .set_subscription(ids[0], list, "pending", "web", 2)
            .await
            .unwrap();
        assert!(store.confirm(ids[0], list, 3).await.unwrap());
        assert!(!store.confirm(ids[0], list, 4).await.unwrap());
        store
            .set_subscription(ids[0], list, "unsubscribed", "web", 5)
            .await
            .unwrap();
        assert!(!store.confirm(ids[0], list, 6).await.unwrap());
        assert_eq!(
            count(
                &store,
                "SELECT count(*) FROM events WHERE kind = 'confirmed'"
            )
            .await,
            1
        );
    }
}
