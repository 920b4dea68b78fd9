//! SQL for the subscriber pages: one person by id, their lists, changes
//! they make themselves (name, subscriptions, sign-up, confirmation), and
//! what "download my data" returns. Every change appends an event.

use sqlx::{FromRow, Row, SqlitePool};

use super::{List, Result, events};

const LIST_COLUMNS: &str =
    "l.id, l.slug, l.name, l.description, l.double_opt_in, l.public, l.created_at";

pub async fn list(pool: &SqlitePool, id: i64) -> Result<Option<List>> {
    let row = sqlx::query(&format!(
        "SELECT {LIST_COLUMNS} FROM lists l WHERE l.id = ?"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(List::from_row).transpose()?)
}

pub async fn public_lists(pool: &SqlitePool) -> Result<Vec<List>> {
    let rows = sqlx::query(&format!(
        "SELECT {LIST_COLUMNS} FROM lists l WHERE l.public != 0 ORDER BY l.name"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(List::from_row)
        .collect::<sqlx::Result<_>>()?)
}

/// The lists a person has a subscription row for, with its status.
pub async fn lists_of(pool: &SqlitePool, subscriber: i64) -> Result<Vec<(List, String)>> {
    let rows = sqlx::query(&format!(
        "SELECT {LIST_COLUMNS}, sub.status AS sub_status
         FROM subscriptions sub JOIN lists l ON l.id = sub.list_id
         WHERE sub.subscriber_id = ? ORDER BY l.name"
    ))
    .bind(subscriber)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((List::from_row(r)?, r.get("sub_status"))))
        .collect()
}

/// Sets a subscription's status (creating the row); appends an event only
/// when something changed. Returns whether it did.
pub async fn set_subscription(
    pool: &SqlitePool,
    subscriber: i64,
    list: i64,
    status: &str,
    source: &str,
    now: i64,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    let current: Option<String> = sqlx::query_scalar(
        "SELECT status FROM subscriptions WHERE subscriber_id = ? AND list_id = ?",
    )
    .bind(subscriber)
    .bind(list)
    .fetch_optional(&mut *tx)
    .await?;
    if current.as_deref() == Some(status) {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO subscriptions (subscriber_id, list_id, status, source, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (subscriber_id, list_id) DO UPDATE SET status = ?3, source = ?4, updated_at = ?5",
    )
    .bind(subscriber)
    .bind(list)
    .bind(status)
    .bind(source)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let kind = match status {
        "confirmed" => "subscribed",
        "unsubscribed" => "unsubscribed",
        _ => "subscribed",
    };
    events::append(&mut tx, subscriber, Some(list), kind, source, None, now).await?;
    tx.commit().await?;
    Ok(true)
}

pub async fn set_name(pool: &SqlitePool, subscriber: i64, name: &str, now: i64) -> Result<()> {
    sqlx::query("UPDATE subscribers SET name = ?, updated_at = ? WHERE id = ?")
        .bind(name)
        .bind(now)
        .bind(subscriber)
        .execute(pool)
        .await?;
    Ok(())
}

/// Everything stored about a person, for "download my data".
pub async fn export(pool: &SqlitePool, subscriber: i64) -> Result<serde_json::Value> {
    use serde_json::json;
    let Some(p) =
        sqlx::query("SELECT email, name, attributes, status FROM subscribers WHERE id = ?")
            .bind(subscriber)
            .fetch_optional(pool)
            .await?
    else {
        return Ok(json!(null));
    };
    let (email, name, attributes, status): (Option<String>, String, String, String) =
        (p.get(0), p.get(1), p.get(2), p.get(3));
    let lists: Vec<_> = lists_of(pool, subscriber)
        .await?
        .into_iter()
        .map(|(l, status)| json!({ "list": l.slug, "name": l.name, "status": status }))
        .collect();
    let events: Vec<_> = sqlx::query(
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
    let deliveries: Vec<_> = sqlx::query(
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

/// Finds or creates the subscriber for a web sign-up. `None` when the
/// address must not be mailed (suppressed, bounced, complained).
pub async fn signup(pool: &SqlitePool, email: &str, name: &str, now: i64) -> Result<Option<i64>> {
    let hash = crate::address::hash(email);
    // `email` is canonical (address::normalize).
    let suppressed: Option<i64> = sqlx::query_scalar("SELECT 1 FROM suppressions WHERE hash = ?")
        .bind(&hash)
        .fetch_optional(pool)
        .await?;
    if suppressed.is_some() {
        return Ok(None);
    }
    let existing = sqlx::query("SELECT id, status FROM subscribers WHERE email = ?")
        .bind(email)
        .fetch_optional(pool)
        .await?;
    match existing {
        Some(r) => {
            let status: String = r.get("status");
            Ok(matches!(status.as_str(), "active" | "unsubscribed").then(|| r.get("id")))
        }
        None => {
            let id = sqlx::query(
                "INSERT INTO subscribers (email, email_hash, name, attributes, status, created_at, updated_at)
                 VALUES (?, ?, ?, '{}', 'active', ?, ?)",
            )
            .bind(email)
            .bind(&hash)
            .bind(name)
            .bind(now)
            .bind(now)
            .execute(pool)
            .await?
            .last_insert_rowid();
            Ok(Some(id))
        }
    }
}

/// A sign-up for one list: a pending subscription unless already confirmed.
/// Returns whether a confirmation email should go out.
pub async fn request_subscription(
    pool: &SqlitePool,
    subscriber: i64,
    list: i64,
    now: i64,
) -> Result<bool> {
    let current: Option<String> = sqlx::query_scalar(
        "SELECT status FROM subscriptions WHERE subscriber_id = ? AND list_id = ?",
    )
    .bind(subscriber)
    .bind(list)
    .fetch_optional(pool)
    .await?;
    if current.as_deref() == Some("confirmed") {
        return Ok(false);
    }
    set_subscription(pool, subscriber, list, "pending", "web", now).await?;
    Ok(true)
}

/// Double opt-in confirmed: the subscription becomes confirmed and a person
/// who had left everything is active again.
pub async fn confirm(pool: &SqlitePool, subscriber: i64, list: i64, now: i64) -> Result<bool> {
    let current: Option<String> = sqlx::query_scalar(
        "SELECT status FROM subscriptions WHERE subscriber_id = ? AND list_id = ?",
    )
    .bind(subscriber)
    .bind(list)
    .fetch_optional(pool)
    .await?;
    if current.as_deref() != Some("pending") {
        return Ok(false);
    }
    sqlx::query("UPDATE subscribers SET status = 'active', updated_at = ? WHERE id = ? AND status = 'unsubscribed'")
        .bind(now)
        .bind(subscriber)
        .execute(pool)
        .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE subscriptions SET status = 'confirmed', updated_at = ? WHERE subscriber_id = ? AND list_id = ?")
        .bind(now)
        .bind(subscriber)
        .bind(list)
        .execute(&mut *tx)
        .await?;
    events::append(
        &mut tx,
        subscriber,
        Some(list),
        "confirmed",
        "web",
        None,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
