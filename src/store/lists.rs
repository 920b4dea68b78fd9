//! The `lists` table and the per-list counts.

use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, Row, SqliteConnection};

use super::{Error, Result, Store};

/// A mailing list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct List {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub double_opt_in: bool,
    pub public: bool,
    pub created_at: i64,
}

/// A list with the number of subscriptions in each state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCounts {
    pub list: List,
    pub confirmed: i64,
    pub pending: i64,
    pub unsubscribed: i64,
    /// Those who would receive mail: confirmed, active, not suppressed.
    pub audience: i64,
}

impl FromRow<'_, SqliteRow> for List {
    fn from_row(row: &SqliteRow) -> sqlx::Result<List> {
        Ok(List {
            id: row.try_get("id")?,
            slug: row.try_get("slug")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            double_opt_in: row.try_get("double_opt_in")?,
            public: row.try_get("public")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

impl FromRow<'_, SqliteRow> for ListCounts {
    fn from_row(row: &SqliteRow) -> sqlx::Result<ListCounts> {
        Ok(ListCounts {
            list: List::from_row(row)?,
            confirmed: row.try_get("confirmed")?,
            pending: row.try_get("pending")?,
            unsubscribed: row.try_get("unsubscribed")?,
            audience: row.try_get("audience")?,
        })
    }
}

const LIST_COLUMNS: &str = "id, slug, name, description, double_opt_in, public, created_at";

/// Slugs appear in campaign files and URLs: keep them plain.
pub(super) fn check_slug(slug: &str) -> Result<()> {
    let ok = !slug.is_empty()
        && slug.len() <= 64
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::BadSlug(slug.to_string()))
    }
}

pub(super) async fn find(conn: &mut SqliteConnection, slug: &str) -> Result<Option<List>> {
    Ok(
        sqlx::query_as(&format!("SELECT {LIST_COLUMNS} FROM lists WHERE slug = ?"))
            .bind(slug)
            .fetch_optional(conn)
            .await?,
    )
}

pub(super) async fn insert(
    conn: &mut SqliteConnection,
    slug: &str,
    name: &str,
    description: &str,
    double_opt_in: bool,
    public: bool,
    now: i64,
) -> Result<List> {
    check_slug(slug)?;
    let list = sqlx::query_as(&format!(
        "INSERT INTO lists (slug, name, description, double_opt_in, public, created_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (slug) DO NOTHING RETURNING {LIST_COLUMNS}"
    ))
    .bind(slug)
    .bind(name)
    .bind(description)
    .bind(double_opt_in)
    .bind(public)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    list.ok_or_else(|| Error::ListExists(slug.to_string()))
}

impl Store {
    /// Creates a list; an existing slug is an error.
    pub async fn create_list(
        &self,
        slug: &str,
        name: &str,
        description: &str,
        double_opt_in: bool,
        public: bool,
        now: i64,
    ) -> Result<List> {
        let mut conn = self.pool().acquire().await?;
        insert(
            &mut conn,
            slug,
            name,
            description,
            double_opt_in,
            public,
            now,
        )
        .await
    }

    /// The list called `slug`, if any.
    pub async fn list(&self, slug: &str) -> Result<Option<List>> {
        let mut conn = self.pool().acquire().await?;
        find(&mut conn, slug).await
    }

    /// The list called `slug`, or [`Error::NoList`].
    pub async fn require_list(&self, slug: &str) -> Result<List> {
        self.list(slug)
            .await?
            .ok_or_else(|| Error::NoList(slug.to_string()))
    }

    /// Every list, by slug, with its counts.
    pub async fn lists(&self) -> Result<Vec<ListCounts>> {
        Ok(sqlx::query_as(concat!(
            "SELECT l.id, l.slug, l.name, l.description, l.double_opt_in, l.public, l.created_at, \
               (SELECT count(*) FROM subscriptions WHERE list_id = l.id AND status = 'confirmed') AS confirmed, \
               (SELECT count(*) FROM subscriptions WHERE list_id = l.id AND status = 'pending') AS pending, \
               (SELECT count(*) FROM subscriptions WHERE list_id = l.id AND status = 'unsubscribed') AS unsubscribed, \
               (SELECT count(*) FROM subscriptions sub JOIN subscribers s ON s.id = sub.subscriber_id \
                 WHERE sub.list_id = l.id AND ",
            mailable!(),
            ") AS audience FROM lists l ORDER BY l.slug"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    /// How many people would receive a campaign sent to the list now.
    pub async fn audience_count(&self, list_id: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT count(*) FROM ({})",
            super::subscribers::AUDIENCE_SQL
        ))
        .bind(list_id)
        .fetch_one(self.pool())
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(check_slug("news").is_ok());
        assert!(check_slug("members-2025_x").is_ok());
        assert!(check_slug("").is_err());
        assert!(check_slug("News").is_err());
        assert!(check_slug("a b").is_err());
    }
}
