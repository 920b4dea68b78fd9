//! The `subscribers` and `subscriptions` tables: adding, unsubscribing,
//! erasing, looking a person up, and the audience of a list.

use super::sql::{begin_write, query, query_as, query_scalar};
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, FromRow, Row};

use super::{Error, Event, List, Result, Store, events, lists};
use crate::address;

/// Who receives a campaign sent to list `?1`: the mailable rule
/// ([`super::MAILABLE`]) on the list. Ordered by subscriber id so a
/// dispatcher can resume after the last id it queued.
pub const AUDIENCE_SQL: &str = concat!(
    "SELECT s.id, s.email, s.name, s.attributes \
     FROM subscriptions sub JOIN subscribers s ON s.id = sub.subscriber_id \
     WHERE sub.list_id = ?1 AND ",
    mailable!(),
    " ORDER BY sub.subscriber_id"
);

/// Who receives a campaign sent to the lists `?1` (a JSON array of list
/// ids): every person mailable ([`super::MAILABLE`]) on at least one of
/// them, once (`id`), with `lists`, on how many of them. Beside
/// [`AUDIENCE_SQL`], which the queue uses list by list.
pub const AUDIENCE_OF_LISTS_SQL: &str = concat!(
    "SELECT sub.subscriber_id AS id, count(*) AS lists \
     FROM subscriptions sub JOIN subscribers s ON s.id = sub.subscriber_id \
     WHERE sub.list_id IN (SELECT id FROM ",
    json_ids!(sqlite, "?1"),
    " lists) AND ",
    mailable!(),
    " GROUP BY sub.subscriber_id"
);

/// [`AUDIENCE_OF_LISTS_SQL`] as PostgreSQL reads it (the JSON array of
/// list ids expanded by `json_array_elements_text`).
pub const AUDIENCE_OF_LISTS_SQL_PG: &str = concat!(
    "SELECT sub.subscriber_id AS id, count(*) AS lists \
     FROM subscriptions sub JOIN subscribers s ON s.id = sub.subscriber_id \
     WHERE sub.list_id IN (SELECT id FROM ",
    json_ids!(postgres, "?1"),
    " lists) AND ",
    mailable!(),
    " GROUP BY sub.subscriber_id"
);

/// The audience of several lists on this engine: the two texts above.
pub fn audience_of_lists_sql(engine: super::Engine) -> &'static str {
    engine.pick(AUDIENCE_OF_LISTS_SQL, AUDIENCE_OF_LISTS_SQL_PG)
}

/// A person as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscriber {
    pub id: i64,
    /// `None` once erased.
    pub email: Option<String>,
    pub name: String,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// active, unsubscribed, bounced, complained, erased.
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
}

fn parse_attributes(text: &str) -> sqlx::Result<serde_json::Map<String, serde_json::Value>> {
    serde_json::from_str(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

impl FromRow<'_, AnyRow> for Subscriber {
    fn from_row(row: &AnyRow) -> sqlx::Result<Subscriber> {
        Ok(Subscriber {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            name: row.try_get("name")?,
            attributes: parse_attributes(row.try_get("attributes")?)?,
            status: row.try_get("status")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// One person to mail, as the dispatcher needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipient {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl FromRow<'_, AnyRow> for Recipient {
    fn from_row(row: &AnyRow) -> sqlx::Result<Recipient> {
        Ok(Recipient {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            name: row.try_get("name")?,
            attributes: parse_attributes(row.try_get("attributes")?)?,
        })
    }
}

/// A person's subscription to one list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub list: String,
    pub list_id: i64,
    /// pending, confirmed, unsubscribed.
    pub status: String,
    /// What made the last change: cli, import, web, bounce.
    pub source: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// When and from where the person consented to the list.
    pub consent: super::Consent,
}

impl FromRow<'_, AnyRow> for Subscription {
    fn from_row(row: &AnyRow) -> sqlx::Result<Subscription> {
        Ok(Subscription {
            list: row.try_get("list")?,
            list_id: row.try_get("list_id")?,
            status: row.try_get("status")?,
            source: row.try_get("source")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            consent: super::Consent {
                at: row.try_get("consent_at")?,
                ip: row.try_get("consent_ip")?,
                confirmed_at: row.try_get("confirmed_at")?,
                confirmed_ip: row.try_get("confirmed_ip")?,
                source: row.try_get("consent_source")?,
            },
        })
    }
}

/// Everything stored about one person.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub subscriber: Subscriber,
    pub subscriptions: Vec<Subscription>,
    pub events: Vec<Event>,
    /// Rows in the send log, and how many of them were sent.
    pub deliveries: i64,
    pub sent: i64,
    pub suppressed: bool,
}

/// What `add_subscriber` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// A new subscription, `pending` on a double opt-in list, else `confirmed`.
    Subscribed { status: String, new_person: bool },
    /// Already subscribed; nothing changed (but the name, when given).
    Already { status: String },
    /// Was pending; confirmed now on the operator's word (`--confirmed`).
    Confirmed,
}

/// What `remove_subscriber` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Lists whose subscription changed to unsubscribed.
    pub lists: Vec<String>,
}

/// What `reactivate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reactivated {
    /// Was bounced; now active, the bounce suppression lifted, and
    /// mailable on these lists (slugs; none when confirmed on no list).
    Reactivated { lists: Vec<String> },
    /// Was active and unsuppressed already: nothing changed.
    AlreadyActive,
}

/// The event detail of a subscription the operator confirmed without a
/// confirmation email (`subscribers add --confirmed`).
const CONSENT_ON_RECORD: &str = "confirmed by the operator: consent on record";

const SUBSCRIBER_COLUMNS: &str = "id, email, name, attributes, status, created_at, updated_at";

pub(super) fn canonical(email: &str) -> Result<String> {
    address::normalize(email).map_err(|e| Error::address(email, e))
}

pub(super) async fn find_by_email(
    conn: &mut AnyConnection,
    email: &str,
) -> Result<Option<Subscriber>> {
    Ok(query_as(&format!(
        "SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE email = ?"
    ))
    .bind(email)
    .fetch_optional(conn)
    .await?)
}

async fn hash_suppressed(conn: &mut AnyConnection, hash: &str) -> Result<bool> {
    Ok(
        query_scalar::<i64>("SELECT count(*) FROM suppressions WHERE hash = ?")
            .bind(hash)
            .fetch_one(conn)
            .await?
            > 0,
    )
}

impl Store {
    /// The person with this address (any spelling), if stored.
    pub async fn subscriber(&self, email: &str) -> Result<Option<Subscriber>> {
        let email = canonical(email)?;
        let mut conn = self.pool().acquire().await?;
        find_by_email(&mut conn, &email).await
    }

    /// The person with this id (erased people included).
    pub async fn subscriber_by_id(&self, id: i64) -> Result<Option<Subscriber>> {
        Ok(query_as(&format!(
            "SELECT {SUBSCRIBER_COLUMNS} FROM subscribers WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Subscribes `email` to the list `slug` (operator action, `source`
    /// "cli" or "web"). Refuses suppressed addresses, people who are not
    /// active, and people who unsubscribed from that list: only the person
    /// may undo their own choice.
    pub async fn add_subscriber(
        &self,
        email: &str,
        name: Option<&str>,
        slug: &str,
        source: &str,
        now: i64,
    ) -> Result<Added> {
        self.subscribe(email, name, slug, false, source, now).await
    }

    /// [`Store::add_subscriber`]; with `consent_on_record` a double opt-in
    /// list subscribes the person confirmed at once (the operator holds
    /// their consent), and a pending subscription becomes confirmed.
    pub async fn subscribe(
        &self,
        email: &str,
        name: Option<&str>,
        slug: &str,
        consent_on_record: bool,
        source: &str,
        now: i64,
    ) -> Result<Added> {
        let email = canonical(email)?;
        let mut tx = begin_write(self.pool()).await?;
        let list: List = lists::require(&mut tx, slug).await?;
        let hash = address::hash(&email);
        if hash_suppressed(&mut tx, &hash).await? {
            return Err(Error::Suppressed(email));
        }
        let (id, new_person) = match find_by_email(&mut tx, &email).await? {
            Some(s) if s.status != "active" => {
                return Err(Error::NotActive {
                    email,
                    status: s.status,
                });
            }
            Some(s) => {
                if let Some(name) = name.filter(|n| *n != s.name) {
                    query("UPDATE subscribers SET name = ?, updated_at = ? WHERE id = ?")
                        .bind(name)
                        .bind(now)
                        .bind(s.id)
                        .execute(&mut *tx)
                        .await?;
                }
                (s.id, false)
            }
            None => {
                let id: i64 = query_scalar(
                    "INSERT INTO subscribers (email, email_hash, name, status, created_at, updated_at) \
                     VALUES (?, ?, ?, 'active', ?, ?) RETURNING id",
                )
                .bind(&email)
                .bind(&hash)
                .bind(name.unwrap_or(""))
                .bind(now)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                (id, true)
            }
        };
        let existing: Option<String> = query_scalar(
            "SELECT status FROM subscriptions WHERE subscriber_id = ? AND list_id = ?",
        )
        .bind(id)
        .bind(list.id)
        .fetch_optional(&mut *tx)
        .await?;
        let pending = list.double_opt_in && !consent_on_record;
        let added = match existing.as_deref() {
            Some("unsubscribed") => return Err(Error::Unsubscribed(email, list.slug)),
            Some("pending") if consent_on_record => {
                query(
                    "UPDATE subscriptions SET status = 'confirmed', source = ?, updated_at = ? \
                     WHERE subscriber_id = ? AND list_id = ?",
                )
                .bind(source)
                .bind(now)
                .bind(id)
                .bind(list.id)
                .execute(&mut *tx)
                .await?;
                super::welcome::queue_welcome(&mut tx, list.id, &[id], now).await?;
                let detail = Some(CONSENT_ON_RECORD);
                events::append(&mut tx, id, Some(list.id), "confirmed", source, detail, now)
                    .await?;
                Added::Confirmed
            }
            Some(status) => Added::Already {
                status: status.to_string(),
            },
            None => {
                let status = if pending { "pending" } else { "confirmed" };
                query(
                    "INSERT INTO subscriptions (subscriber_id, list_id, status, source, created_at, updated_at) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(id)
                .bind(list.id)
                .bind(status)
                .bind(source)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if !pending {
                    super::welcome::queue_welcome(&mut tx, list.id, &[id], now).await?;
                }
                let detail = if pending {
                    Some("pending confirmation")
                } else {
                    (list.double_opt_in).then_some(CONSENT_ON_RECORD)
                };
                events::append(
                    &mut tx,
                    id,
                    Some(list.id),
                    "subscribed",
                    source,
                    detail,
                    now,
                )
                .await?;
                Added::Subscribed {
                    status: status.to_string(),
                    new_person,
                }
            }
        };
        tx.commit().await?;
        Ok(added)
    }

    /// Unsubscribes `email` from the list `slug`, or with `None` from every
    /// list, which also marks the person unsubscribed so no import brings
    /// them back.
    pub async fn remove_subscriber(
        &self,
        email: &str,
        slug: Option<&str>,
        source: &str,
        now: i64,
    ) -> Result<Removed> {
        let email = canonical(email)?;
        let mut tx = begin_write(self.pool()).await?;
        let person = find_by_email(&mut tx, &email)
            .await?
            .ok_or_else(|| Error::NoSubscriber(email.clone()))?;
        let list_id = match slug {
            Some(slug) => Some(lists::require(&mut tx, slug).await?.id),
            None => None,
        };
        let changed: Vec<(i64, String)> = query_as(
            "UPDATE subscriptions SET status = 'unsubscribed', source = ?, updated_at = ? \
             WHERE subscriber_id = ? AND status != 'unsubscribed' AND (?4 IS NULL OR list_id = ?4) \
             RETURNING list_id, (SELECT slug FROM lists WHERE id = list_id)",
        )
        .bind(source)
        .bind(now)
        .bind(person.id)
        .bind(list_id)
        .fetch_all(&mut *tx)
        .await?;
        for (list_id, _) in &changed {
            events::append(
                &mut tx,
                person.id,
                Some(*list_id),
                "unsubscribed",
                source,
                None,
                now,
            )
            .await?;
        }
        if slug.is_none() && person.status == "active" {
            query("UPDATE subscribers SET status = 'unsubscribed', updated_at = ? WHERE id = ?")
                .bind(now)
                .bind(person.id)
                .execute(&mut *tx)
                .await?;
            events::append(
                &mut tx,
                person.id,
                None,
                "unsubscribed",
                source,
                Some("all lists"),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        let mut lists: Vec<String> = changed.into_iter().map(|(_, s)| s).collect();
        lists.sort();
        Ok(Removed { lists })
    }

    /// Changes a person's status (bounced, complained, unsubscribed) and
    /// records the event; bounced and complained addresses are also
    /// suppressed. For the bounce handler and the web pages.
    pub async fn set_status(
        &self,
        subscriber_id: i64,
        status: &str,
        source: &str,
        detail: Option<&str>,
        now: i64,
    ) -> Result<()> {
        if !matches!(status, "active" | "unsubscribed" | "bounced" | "complained") {
            return Err(Error::BadStatus(
                status.to_string(),
                "active, unsubscribed, bounced, complained",
            ));
        }
        let mut tx = begin_write(self.pool()).await?;
        let hash: Option<Option<String>> = query_scalar(
            "UPDATE subscribers SET status = ?, updated_at = ? \
             WHERE id = ? AND status != 'erased' RETURNING email_hash",
        )
        .bind(status)
        .bind(now)
        .bind(subscriber_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(hash) = hash else {
            return Err(Error::NoSubscriber(format!("#{subscriber_id}")));
        };
        if let (Some(hash), true) = (hash, matches!(status, "bounced" | "complained")) {
            super::suppress_hash(&mut tx, &hash, status, now).await?;
        }
        events::append(&mut tx, subscriber_id, None, status, source, detail, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Everything stored about the person with this address.
    pub async fn profile(&self, email: &str) -> Result<Option<Profile>> {
        let email = canonical(email)?;
        let Some(subscriber) = self.subscriber(&email).await? else {
            return Ok(None);
        };
        let subscriptions = query_as(
            "SELECT l.slug AS list, s.list_id, s.status, s.source, s.created_at, s.updated_at, \
                    c.consent_at, c.consent_ip, c.confirmed_at, c.confirmed_ip, c.source AS consent_source \
             FROM subscriptions s JOIN lists l ON l.id = s.list_id \
             LEFT JOIN consents c ON c.subscriber_id = s.subscriber_id AND c.list_id = s.list_id \
             WHERE s.subscriber_id = ? ORDER BY l.slug",
        )
        .bind(subscriber.id)
        .fetch_all(self.pool())
        .await?;
        let events = self.events(subscriber.id).await?;
        let (deliveries, sent): (i64, i64) = query_as(
            "SELECT count(*), CAST(coalesce(sum(CASE WHEN status = 'sent' THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM deliveries WHERE subscriber_id = ?",
        )
        .bind(subscriber.id)
        .fetch_one(self.pool())
        .await?;
        let suppressed = self.is_hash_suppressed(&address::hash(&email)).await?;
        Ok(Some(Profile {
            subscriber,
            subscriptions,
            events,
            deliveries,
            sent,
            suppressed,
        }))
    }

    /// Erases a person: the address, name and attributes are deleted, the
    /// subscriptions removed, event details and SMTP replies scrubbed, an
    /// `erased` event appended, and the address's hash added to
    /// `suppressions` so it is never mailed or imported again. The row stays
    /// (email NULL, status erased) so delivery counts stay true. An address
    /// that is not stored is suppressed all the same. Returns whether a
    /// person was stored.
    pub async fn forget(&self, email: &str, source: &str, now: i64) -> Result<bool> {
        let email = canonical(email)?;
        let mut tx = begin_write(self.pool()).await?;
        let person = find_by_email(&mut tx, &email).await?;
        if let Some(p) = &person {
            query("UPDATE events SET detail = NULL WHERE subscriber_id = ? AND detail IS NOT NULL")
                .bind(p.id)
                .execute(&mut *tx)
                .await?;
            query("UPDATE deliveries SET last_reply = NULL WHERE subscriber_id = ?")
                .bind(p.id)
                .execute(&mut *tx)
                .await?;
            // Consent records have no foreign key to cascade (schema step 7).
            query("DELETE FROM consents WHERE subscriber_id = ?")
                .bind(p.id)
                .execute(&mut *tx)
                .await?;
            query("DELETE FROM subscriptions WHERE subscriber_id = ?")
                .bind(p.id)
                .execute(&mut *tx)
                .await?;
            query(
                "UPDATE subscribers SET email = NULL, email_hash = NULL, name = '', \
                 attributes = '{}', status = 'erased', updated_at = ? WHERE id = ?",
            )
            .bind(now)
            .bind(p.id)
            .execute(&mut *tx)
            .await?;
            events::append(&mut tx, p.id, None, "erased", source, None, now).await?;
        }
        super::suppress_hash(&mut tx, &address::hash(&email), "erased", now).await?;
        // Returned mail kept for review may name the address (a complaint
        // forwarded by hand, an auto-reply): it goes too.
        query(self.engine().pick(
            "DELETE FROM unmatched WHERE instr(lower(sender), ?1) > 0 \
             OR instr(lower(subject), ?1) > 0",
            "DELETE FROM unmatched WHERE strpos(lower(sender), ?1) > 0 \
             OR strpos(lower(subject), ?1) > 0",
        ))
        .bind(email.to_lowercase())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // The write-ahead log still holds the pages as they were; fold it
        // into the file (where secure_delete has zeroed them) and empty it.
        // Best effort: with a reader in the way this waits up to the busy
        // timeout and gives up, and the frames are overwritten once SQLite
        // starts the log again. The erasure itself is committed either way.
        // PostgreSQL has no such log to fold: VACUUM reclaims dead rows.
        if self.engine() == super::Engine::Sqlite {
            let _ = query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(self.pool())
                .await;
        }
        Ok(person.is_some())
    }

    /// Returns a bounced person to active and lifts the bounce suppression
    /// of their address, recorded as a `reactivated` event. Never overrides
    /// an unsubscribe, a complaint, an erasure or a manual suppression.
    pub async fn reactivate(&self, email: &str, source: &str, now: i64) -> Result<Reactivated> {
        let email = canonical(email)?;
        let hash = address::hash(&email);
        let mut tx = begin_write(self.pool()).await?;
        let suppression: Option<String> =
            query_scalar("SELECT reason FROM suppressions WHERE hash = ?")
                .bind(&hash)
                .fetch_optional(&mut *tx)
                .await?;
        let refuse = |why: &str| Error::NotReactivated {
            email: email.clone(),
            why: why.to_string(),
        };
        let Some(person) = find_by_email(&mut tx, &email).await? else {
            return Err(match suppression.as_deref() {
                Some("erased") => refuse("was erased at their request"),
                _ => Error::NoSubscriber(email.clone()),
            });
        };
        match (person.status.as_str(), suppression.as_deref()) {
            ("unsubscribed", _) => return Err(refuse("unsubscribed; only they can sign up again")),
            ("complained", _) | (_, Some("complained")) => {
                return Err(refuse("complained about our mail (marked it as spam)"));
            }
            ("active", None) => return Ok(Reactivated::AlreadyActive),
            ("active" | "bounced", None | Some("bounced")) => {}
            (_, Some(reason)) => return Err(refuse(&format!("is suppressed ({reason})"))),
            (status, None) => return Err(refuse(&format!("is {status}"))),
        }
        query("UPDATE subscribers SET status = 'active', updated_at = ? WHERE id = ?")
            .bind(now)
            .bind(person.id)
            .execute(&mut *tx)
            .await?;
        query("DELETE FROM suppressions WHERE hash = ? AND reason = 'bounced'")
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        super::bounces::reset_score(&mut tx, person.id, source, now).await?;
        let detail = format!("was {}", person.status);
        events::append(
            &mut tx,
            person.id,
            None,
            "reactivated",
            source,
            Some(&detail),
            now,
        )
        .await?;
        let lists = query_scalar(concat!(
            "SELECT l.slug FROM subscriptions sub JOIN subscribers s ON s.id = sub.subscriber_id \
             JOIN lists l ON l.id = sub.list_id WHERE s.id = ? AND ",
            mailable!(),
            " ORDER BY l.slug"
        ))
        .bind(person.id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Reactivated::Reactivated { lists })
    }

    /// The people a campaign to `list_id` goes to ([`AUDIENCE_SQL`]),
    /// streamed: memory stays flat whatever the size of the list.
    pub fn audience(&self, list_id: i64) -> BoxStream<'_, Result<Recipient>> {
        query_as::<Recipient>(AUDIENCE_SQL)
            .bind(list_id)
            .fetch(self.pool())
            .map(|r| r.map_err(Error::from))
            .boxed()
    }
}
