//! The `lists` table and the per-list counts: creating, renaming, editing
//! and removing lists (a removed list keeps its row, recorded in
//! `removed_lists`, so no history is lost).

use super::sql::{begin_write, flag, query, query_as, query_scalar};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, FromRow, Row};

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

impl FromRow<'_, AnyRow> for List {
    fn from_row(row: &AnyRow) -> sqlx::Result<List> {
        Ok(List {
            id: row.try_get("id")?,
            slug: row.try_get("slug")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            double_opt_in: flag(row, "double_opt_in")?,
            public: flag(row, "public")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

impl FromRow<'_, AnyRow> for ListCounts {
    fn from_row(row: &AnyRow) -> sqlx::Result<ListCounts> {
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

pub(super) async fn find(conn: &mut AnyConnection, slug: &str) -> Result<Option<List>> {
    Ok(query_as(&format!(
        "SELECT {LIST_COLUMNS} FROM lists WHERE slug = ? \
             AND id NOT IN (SELECT list_id FROM removed_lists)"
    ))
    .bind(slug)
    .fetch_optional(conn)
    .await?)
}

/// The list `slug`, or [`Error::NoList`] with the closest existing slug:
/// the one place a slug nobody has gets its "did you mean".
pub(super) async fn require(conn: &mut AnyConnection, slug: &str) -> Result<List> {
    match find(conn, slug).await? {
        Some(list) => Ok(list),
        None => Err(no_list(conn, slug).await?),
    }
}

/// The list `slug`, or `None` when no list has it or a near one; a slug one
/// typo away from an existing list is [`Error::NoList`] with the suggestion
/// (for the commands that create a missing list, such as an import).
pub(super) async fn find_unless_misspelt(
    conn: &mut AnyConnection,
    slug: &str,
) -> Result<Option<List>> {
    match find(conn, slug).await? {
        Some(list) => Ok(Some(list)),
        None => match no_list(conn, slug).await? {
            e @ Error::NoList {
                suggestion: Some(_),
                ..
            } => Err(e),
            _ => Ok(None),
        },
    }
}

/// The error for `slug`, naming the list whose display name it is (`News`
/// for the slug `news`), else the closest slug of the lists there are.
async fn no_list(conn: &mut AnyConnection, slug: &str) -> Result<Error> {
    let lists: Vec<(String, String)> = query_as(
        "SELECT slug, name FROM lists WHERE id NOT IN (SELECT list_id FROM removed_lists)",
    )
    .fetch_all(conn)
    .await?;
    let by_name = lists
        .iter()
        .find(|(_, name)| name.trim().eq_ignore_ascii_case(slug.trim()))
        .map(|(slug, _)| slug.clone());
    Ok(Error::NoList {
        slug: slug.to_string(),
        suggestion: by_name.or_else(|| {
            crate::suggest::closest(slug, lists.iter().map(|(s, _)| s.as_str())).map(String::from)
        }),
    })
}

pub(super) async fn insert(
    conn: &mut AnyConnection,
    slug: &str,
    name: &str,
    description: &str,
    double_opt_in: bool,
    public: bool,
    now: i64,
) -> Result<List> {
    check_slug(slug)?;
    let list = query_as(&format!(
        "INSERT INTO lists (slug, name, description, double_opt_in, public, created_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (slug) DO NOTHING RETURNING {LIST_COLUMNS}"
    ))
    .bind(slug)
    .bind(name)
    .bind(description)
    .bind(i64::from(double_opt_in))
    .bind(i64::from(public))
    .bind(now)
    .fetch_optional(conn)
    .await?;
    list.ok_or_else(|| Error::ListExists(slug.to_string()))
}

/// What `lists edit` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub double_opt_in: Option<bool>,
    pub public: Option<bool>,
}

impl ListChanges {
    pub fn is_empty(&self) -> bool {
        *self == ListChanges::default()
    }
}

/// What `remove_list` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedList {
    pub list: List,
    /// Confirmed and pending subscriptions the list had (kept as they were).
    pub members: i64,
}

/// Confirmed or pending subscriptions: who a list would mail or ask.
async fn members(conn: &mut AnyConnection, list_id: i64) -> Result<i64> {
    Ok(query_scalar(
        "SELECT count(*) FROM subscriptions WHERE list_id = ? AND status IN ('confirmed', 'pending')",
    )
    .bind(list_id)
    .fetch_one(conn)
    .await?)
}

/// Campaigns to the list that the dispatcher may still send.
async fn campaigns_to_come(conn: &mut AnyConnection, list_id: i64) -> Result<i64> {
    Ok(query_scalar(
        "SELECT count(*) FROM campaigns c WHERE c.status IN ('scheduled', 'sending', 'held')
             AND (c.list_id = ?1 OR EXISTS
                 (SELECT 1 FROM campaign_lists cl WHERE cl.campaign_id = c.id AND cl.list_id = ?1))",
    )
    .bind(list_id)
    .fetch_one(conn)
    .await?)
}

impl Store {
    /// Gives the list `slug` the slug `new_slug`; its subscriptions,
    /// campaigns and history stay with it (they hold its id).
    pub async fn rename_list(&self, slug: &str, new_slug: &str) -> Result<List> {
        check_slug(new_slug)?;
        let mut tx = begin_write(self.pool()).await?;
        let list = require(&mut tx, slug).await?;
        if slug != new_slug && find(&mut tx, new_slug).await?.is_some() {
            return Err(Error::ListExists(new_slug.to_string()));
        }
        let renamed = query_as(&format!(
            "UPDATE lists SET slug = ? WHERE id = ? RETURNING {LIST_COLUMNS}"
        ))
        .bind(new_slug)
        .bind(list.id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(renamed)
    }

    /// Changes the list's name, description and flags; fields left `None`
    /// stay. Subscriptions already pending or confirmed are not changed by
    /// switching double opt-in: it applies to those who join from now on.
    pub async fn edit_list(&self, slug: &str, changes: &ListChanges) -> Result<List> {
        let edited = query_as(&format!(
            "UPDATE lists SET name = coalesce(?, name), description = coalesce(?, description), \
             double_opt_in = coalesce(?, double_opt_in), public = coalesce(?, public) \
             WHERE slug = ? AND id NOT IN (SELECT list_id FROM removed_lists) RETURNING {LIST_COLUMNS}"
        ))
        .bind(&changes.name)
        .bind(&changes.description)
        .bind(changes.double_opt_in.map(i64::from))
        .bind(changes.public.map(i64::from))
        .bind(slug)
        .fetch_optional(self.pool())
        .await?;
        match edited {
            Some(list) => Ok(list),
            None => Err(no_list(&mut *self.pool().acquire().await?, slug).await?),
        }
    }

    /// Removes the list `slug`: refused while anyone is confirmed or
    /// pending on it (unless `force`) and while a campaign to it may still
    /// be sent. Nothing is deleted: the row stays, recorded in
    /// `removed_lists`, with its slug freed (`~removed-ID`), not public, so no page shows it, no
    /// command finds it and no campaign goes to it; people, subscriptions,
    /// deliveries and events stay as they were.
    pub async fn remove_list(&self, slug: &str, force: bool, now: i64) -> Result<RemovedList> {
        let mut tx = begin_write(self.pool()).await?;
        let list = require(&mut tx, slug).await?;
        let members = members(&mut tx, list.id).await?;
        if members > 0 && !force {
            return Err(Error::ListNotEmpty(slug.to_string(), members));
        }
        let campaigns = campaigns_to_come(&mut tx, list.id).await?;
        if campaigns > 0 {
            return Err(Error::ListInUse(slug.to_string(), campaigns));
        }
        query("INSERT INTO removed_lists (list_id, removed_at) VALUES (?, ?)")
            .bind(list.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        query("UPDATE lists SET public = 0, slug = slug || '~removed-' || id WHERE id = ?")
            .bind(list.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RemovedList { list, members })
    }

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

    /// The list called `slug`, or [`Error::NoList`] with a "did you mean".
    pub async fn require_list(&self, slug: &str) -> Result<List> {
        let mut conn = self.pool().acquire().await?;
        require(&mut conn, slug).await
    }

    /// Every list, by slug, with its counts.
    pub async fn lists(&self) -> Result<Vec<ListCounts>> {
        Ok(query_as(concat!(
            "SELECT l.id, l.slug, l.name, l.description, l.double_opt_in, l.public, l.created_at, \
               (SELECT count(*) FROM subscriptions WHERE list_id = l.id AND status = 'confirmed') AS confirmed, \
               (SELECT count(*) FROM subscriptions WHERE list_id = l.id AND status = 'pending') AS pending, \
               (SELECT count(*) FROM subscriptions WHERE list_id = l.id AND status = 'unsubscribed') AS unsubscribed, \
               (SELECT count(*) FROM subscriptions sub JOIN subscribers s ON s.id = sub.subscriber_id \
                 WHERE sub.list_id = l.id AND ",
            mailable!(),
            ") AS audience FROM lists l WHERE l.id NOT IN (SELECT list_id FROM removed_lists) \
             ORDER BY l.slug"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    /// How many people would receive a campaign sent to `lists` now, each
    /// counted once, and how many of them are on more than one of them.
    pub async fn audience_of_lists(&self, lists: &[i64]) -> Result<ListsAudience> {
        let (people, on_several): (i64, i64) = query_as(&format!(
            "SELECT count(*), CAST(COALESCE(SUM(CASE WHEN a.lists > 1 THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM ({}) a",
            super::subscribers::audience_of_lists_sql(self.engine())
        ))
        .bind(serde_json::to_string(lists).expect("ids serialise"))
        .fetch_one(self.pool())
        .await?;
        Ok(ListsAudience { people, on_several })
    }

    /// How many people would receive a campaign sent to the list now.
    pub async fn audience_count(&self, list_id: i64) -> Result<i64> {
        Ok(query_scalar(&format!(
            "SELECT count(*) FROM ({}) a",
            super::subscribers::AUDIENCE_SQL
        ))
        .bind(list_id)
        .fetch_one(self.pool())
        .await?)
    }
}

/// The audience of a campaign to several lists ([`Store::audience_of_lists`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListsAudience {
    /// People who would get it, once each.
    pub people: i64,
    /// Of those, how many are on more than one of the lists.
    pub on_several: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_removed_list_is_found_nowhere_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let list = store
            .create_list("news", "News", "", false, true, 1)
            .await
            .unwrap();
        store
            .add_subscriber("ann@example.org", None, "news", "cli", 1)
            .await
            .unwrap();
        let ann = store.subscriber("ann@example.org").await.unwrap().unwrap();
        let err = store.remove_list("news", false, 2).await.unwrap_err();
        assert!(matches!(err, Error::ListNotEmpty(_, 1)), "{err}");
        let removed = store.remove_list("news", true, 2).await.unwrap();
        assert_eq!((removed.list.id, removed.members), (list.id, 1));
        assert!(store.list("news").await.unwrap().is_none());
        assert!(store.lists().await.unwrap().is_empty());
        let pool = store.pool();
        assert!(store.public_lists().await.unwrap().is_empty());
        assert!(store.lists_of(ann.id).await.unwrap().is_empty());
        // Unsubscribe links in mail already sent still find it.
        assert!(store.list_for(ann.id, list.id).await.unwrap().is_some());
        let kept: (i64, i64) = query_as(
            "SELECT (SELECT count(*) FROM subscriptions WHERE list_id = ?1), \
                    (SELECT count(*) FROM events WHERE list_id = ?1)",
        )
        .bind(list.id)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(kept, (1, 1), "subscription and history kept");
        // The slug is free again; a removed list cannot be renamed or edited.
        store
            .create_list("news", "News", "", false, false, 3)
            .await
            .unwrap();
        let changes = ListChanges {
            name: Some("X".into()),
            ..ListChanges::default()
        };
        let slug = format!("news~removed-{}", list.id);
        assert!(matches!(
            store.edit_list(&slug, &changes).await,
            Err(Error::NoList { .. })
        ));
        assert!(matches!(
            store.rename_list(&slug, "old").await,
            Err(Error::NoList { .. })
        ));
    }

    #[tokio::test]
    async fn a_list_named_by_its_display_name_suggests_its_slug() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        store
            .create_list("ebulletin", "GAATW e-bulletin", "", false, true, 1)
            .await
            .unwrap();
        let suggestion = |e| match e {
            Err(Error::NoList { suggestion, .. }) => suggestion,
            other => panic!("{other:?}"),
        };
        let by_name = store.require_list("gaatw E-bulletin").await;
        assert_eq!(suggestion(by_name).as_deref(), Some("ebulletin"));
        let typo = store.require_list("ebuletin").await;
        assert_eq!(suggestion(typo).as_deref(), Some("ebulletin"));
        assert_eq!(suggestion(store.require_list("zzz").await), None);
    }

    #[test]
    fn slugs() {
        assert!(check_slug("news").is_ok());
        assert!(check_slug("members-2025_x").is_ok());
        assert!(check_slug("").is_err());
        assert!(check_slug("News").is_err());
        assert!(check_slug("a b").is_err());
    }
}
