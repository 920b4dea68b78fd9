//! Export: subscribers as rows, with their list memberships and consent
//! records, streamed from the database so that memory stays flat at any size.
//! Writing CSV or JSON is the caller's.

use super::sql::{query_as_with, query_scalar_with};
use futures_util::TryStreamExt as _;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{FromRow, Row};

use super::{Consent, Engine, Error, Result, Store};

/// Which people to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Who would receive mail on the list: confirmed, active, not suppressed.
    Audience(i64),
    /// Subscriptions to the list in this state: pending, confirmed, unsubscribed.
    ListStatus(i64, String),
    /// People on the list (any subscription state) whose own status is
    /// active, bounced or complained.
    ListPersonStatus(i64, String),
    /// Everyone on the list, in any subscription state (`--status all`).
    ListAll(i64),
    /// Everyone who would receive mail on at least one list: the mailable
    /// rule over each of their subscriptions.
    Active,
    /// People who left: unsubscribed as a person, or active but mailable on
    /// no list after unsubscribing from one.
    Left,
    /// People with this status: active, bounced, complained.
    PersonStatus(String),
    /// Everyone with an address, whatever their state (`--status all`).
    Everyone,
}

const SUBSCRIPTION_STATES: &str =
    "pending, confirmed, unsubscribed, active, bounced, complained, all";
const PERSON_STATES: &str = "active, unsubscribed, bounced, complained, all";

/// The person `s` may be mailed on at least one of their lists: the one
/// mailable rule, over each subscription.
macro_rules! mailable_somewhere {
    () => {
        concat!(
            "EXISTS (SELECT 1 FROM subscriptions sub WHERE sub.subscriber_id = s.id AND ",
            mailable!(),
            ")"
        )
    };
}

/// The person `s` left: unsubscribed as a person, or active, mailable on no
/// list, and unsubscribed from one. What a re-import must not subscribe.
macro_rules! left {
    () => {
        concat!(
            "(s.status = 'unsubscribed' OR (s.status = 'active' AND NOT ",
            mailable_somewhere!(),
            " AND EXISTS (SELECT 1 FROM subscriptions u WHERE u.subscriber_id = s.id \
               AND u.status = 'unsubscribed')))"
        )
    };
}

impl Selection {
    /// The selection for `--list` (its id) and `--status`.
    pub fn new(list_id: Option<i64>, status: Option<&str>) -> Result<Selection> {
        Ok(match (list_id, status) {
            (Some(l), None) => Selection::Audience(l),
            (Some(l), Some(s @ ("pending" | "confirmed" | "unsubscribed"))) => {
                Selection::ListStatus(l, s.to_string())
            }
            (Some(l), Some(s @ ("active" | "bounced" | "complained"))) => {
                Selection::ListPersonStatus(l, s.to_string())
            }
            (Some(l), Some("all")) => Selection::ListAll(l),
            (Some(_), Some(s)) => return Err(Error::BadStatus(s.into(), SUBSCRIPTION_STATES)),
            (None, None) => Selection::Active,
            (None, Some("unsubscribed")) => Selection::Left,
            (None, Some(s @ ("active" | "bounced" | "complained"))) => {
                Selection::PersonStatus(s.to_string())
            }
            (None, Some("all")) => Selection::Everyone,
            (None, Some(s @ ("pending" | "confirmed"))) => {
                return Err(Error::StatusNeedsList(s.into(), PERSON_STATES));
            }
            (None, Some(s)) => return Err(Error::BadStatus(s.into(), PERSON_STATES)),
        })
    }

    /// The selection's SQL. Each FROM reads rows in subscriber id order
    /// already (an index or the table itself), so an export streams with no
    /// sort, whatever its size.
    fn clauses(&self, engine: Engine) -> Clauses {
        // Through the (list_id, status) index, in subscriber id order when
        // the status is fixed.
        const ON_LIST: &str = "subscriptions sub JOIN subscribers s ON s.id = sub.subscriber_id";
        // Every person in id order, each looked up on the list (SQLite's
        // CROSS JOIN keeps that loop order: the index would need a sort;
        // PostgreSQL takes no ON after CROSS JOIN and plans its own order).
        let person_on_list = engine.pick(
            "subscribers s CROSS JOIN subscriptions sub ON sub.subscriber_id = s.id",
            "subscribers s JOIN subscriptions sub ON sub.subscriber_id = s.id",
        );
        match self {
            Selection::Audience(_) => Clauses {
                list_consent: true,
                from: ON_LIST,
                filter: concat!("sub.list_id = ?1 AND ", mailable!()),
                status: LIST_STANDING,
                order: "sub.subscriber_id",
                changed: "sub.updated_at",
            },
            Selection::ListStatus(..) => Clauses {
                list_consent: true,
                from: ON_LIST,
                filter: "sub.list_id = ?1 AND sub.status = ?2 AND s.email IS NOT NULL",
                status: LIST_STANDING,
                order: "sub.subscriber_id",
                changed: "sub.updated_at",
            },
            Selection::ListPersonStatus(..) => Clauses {
                list_consent: true,
                from: person_on_list,
                filter: "sub.list_id = ?1 AND s.status = ?2 AND s.email IS NOT NULL",
                status: LIST_STANDING,
                order: "s.id",
                changed: "sub.updated_at",
            },
            Selection::ListAll(_) => Clauses {
                list_consent: true,
                from: person_on_list,
                filter: "sub.list_id = ?1 AND s.email IS NOT NULL",
                status: LIST_STANDING,
                order: "s.id",
                changed: "sub.updated_at",
            },
            Selection::Active => Clauses {
                list_consent: false,
                from: "subscribers s",
                filter: mailable_somewhere!(),
                // PERSON_STANDING, which is `active` for everyone here.
                status: "s.status",
                order: "s.id",
                changed: "s.updated_at",
            },
            Selection::Left => Clauses {
                list_consent: false,
                from: "subscribers s",
                filter: concat!("s.email IS NOT NULL AND ", left!()),
                // PERSON_STANDING, which is `unsubscribed` for everyone here.
                status: "'unsubscribed'",
                order: "s.id",
                changed: "s.updated_at",
            },
            Selection::Everyone => Clauses {
                list_consent: false,
                from: "subscribers s",
                filter: "s.email IS NOT NULL",
                status: PERSON_STANDING,
                order: "s.id",
                changed: "s.updated_at",
            },
            Selection::PersonStatus(_) => Clauses {
                list_consent: false,
                from: "subscribers s",
                filter: "s.status = ?1 AND s.email IS NOT NULL",
                status: PERSON_STANDING,
                order: "s.id",
                changed: "s.updated_at",
            },
        }
    }

    /// The query of `Store::export`; `with_lists` adds every subscription
    /// of each person (a lookup per row, so only when asked).
    fn export_sql(&self, engine: Engine, with_lists: bool) -> String {
        let Clauses {
            from,
            filter,
            status,
            order,
            list_consent,
            changed,
        } = self.clauses(engine);
        let consent = match list_consent {
            true => engine.pick(LIST_CONSENT, LIST_CONSENT_PG),
            false => NO_CONSENT,
        };
        // Every subscription of the person, with its consent record: the
        // primary keys of `subscriptions` and `consents` find them without a
        // sort.
        let lists = if with_lists {
            engine.pick(
                "(SELECT json_group_array(json_object('list', l.slug, 'status', x.status, \
                   'source', x.source, 'since', x.created_at, 'consent_at', c.consent_at, \
                   'consent_ip', c.consent_ip, 'confirmed_at', c.confirmed_at, \
                   'confirmed_ip', c.confirmed_ip, 'consent_source', c.source)) \
                 FROM subscriptions x JOIN lists l ON l.id = x.list_id \
                 LEFT JOIN consents c ON c.subscriber_id = x.subscriber_id AND c.list_id = x.list_id \
                 WHERE x.subscriber_id = s.id)",
                "(SELECT CAST(coalesce(json_agg(json_build_object('list', l.slug, 'status', x.status, \
                   'source', x.source, 'since', x.created_at, 'consent_at', c.consent_at, \
                   'consent_ip', c.consent_ip, 'confirmed_at', c.confirmed_at, \
                   'confirmed_ip', c.confirmed_ip, 'consent_source', c.source) \
                   ORDER BY x.list_id), '[]') AS TEXT) \
                 FROM subscriptions x JOIN lists l ON l.id = x.list_id \
                 LEFT JOIN consents c ON c.subscriber_id = x.subscriber_id AND c.list_id = x.list_id \
                 WHERE x.subscriber_id = s.id)",
            )
        } else {
            "'[]'"
        };
        format!(
            "SELECT s.email, s.name, {status} AS status, {changed} AS changed_at, s.attributes, \
             {consent}, {lists} AS lists \
             FROM {from} WHERE {filter} ORDER BY {order}"
        )
    }

    fn arguments(&self) -> AnyArguments<'_> {
        use sqlx::Arguments as _;
        let mut args = AnyArguments::default();
        // Encoding an i64 or a &str cannot fail.
        match self {
            Selection::Audience(l) | Selection::ListAll(l) => args.add(*l).expect("bind"),
            Selection::ListStatus(l, s) | Selection::ListPersonStatus(l, s) => {
                args.add(*l).expect("bind");
                args.add(s.as_str()).expect("bind");
            }
            Selection::Active | Selection::Left | Selection::Everyone => {}
            Selection::PersonStatus(s) => args.add(s.as_str()).expect("bind"),
        }
        args
    }
}

/// The consent record of a list export: the subscription's, as one JSON
/// object (found by the primary key of `consents`).
const LIST_CONSENT: &str = "(SELECT json_object('at', c.consent_at, 'ip', c.consent_ip, \
     'confirmed_at', c.confirmed_at, 'confirmed_ip', c.confirmed_ip, 'source', c.source) \
     FROM consents c WHERE c.subscriber_id = sub.subscriber_id AND c.list_id = sub.list_id) AS consent";
/// [`LIST_CONSENT`] as PostgreSQL builds it.
const LIST_CONSENT_PG: &str = "(SELECT CAST(json_build_object('at', c.consent_at, 'ip', c.consent_ip, \
     'confirmed_at', c.confirmed_at, 'confirmed_ip', c.confirmed_ip, 'source', c.source) AS TEXT) \
     FROM consents c WHERE c.subscriber_id = sub.subscriber_id AND c.list_id = sub.list_id) AS consent";
/// Exports of people (not of a list) carry consent per subscription only.
const NO_CONSENT: &str = "NULL AS consent";

/// The status column of an export of people: what a re-import of the row
/// must do. Who left every list reads as unsubscribed, an active person
/// mailable on no list (never subscribed, or only pending) as
/// nonsubscribed, anyone else as their own status.
const PERSON_STANDING: &str = concat!(
    "CASE WHEN ",
    left!(),
    " THEN 'unsubscribed' WHEN s.status = 'active' AND NOT ",
    mailable_somewhere!(),
    " THEN 'nonsubscribed' ELSE s.status END"
);

/// The status column of a list export: what a re-import of the row into
/// the list must do (`store::import` reads each value back). A bounced or
/// complained person reads as such, anyone else whose address is
/// suppressed (a blocklist entry, say) as `suppressed`, and who left every
/// list as `unsubscribed`, whatever their subscription says: the import
/// keeps all of them unmailed. Anyone else has their subscription's state.
const LIST_STANDING: &str = concat!(
    "CASE WHEN s.status IN ('bounced', 'complained') THEN s.status WHEN ",
    suppressed!(),
    " THEN 'suppressed' WHEN s.status = 'unsubscribed' THEN 'unsubscribed' ELSE sub.status END"
);

/// The SQL pieces of a selection.
struct Clauses {
    /// The rows carry the consent record of the list's subscription
    /// (`LIST_CONSENT`), else none (`NO_CONSENT`).
    list_consent: bool,
    from: &'static str,
    filter: &'static str,
    /// The status column of the rows.
    status: &'static str,
    /// The column that orders the rows by subscriber id.
    order: &'static str,
    /// When the row's status last changed: the subscription's for a list
    /// export, else the person's.
    changed: &'static str,
}

/// One exported person.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRow {
    pub email: String,
    pub name: String,
    /// For a list export the subscription state, or the person's standing
    /// where it keeps them unmailed (`LIST_STANDING`); else the person's
    /// status (`PERSON_STANDING`).
    pub status: String,
    /// When that status last changed (unix seconds).
    pub changed_at: i64,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The consent record of the exported list's subscription (empty when
    /// the export is not of one list).
    pub consent: Consent,
    /// Every subscription of the person, with its consent record.
    pub lists: Vec<ListMembership>,
}

/// One subscription of an exported person.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListMembership {
    pub list: String,
    pub status: String,
    pub source: String,
    /// When the subscription was created (unix seconds).
    pub since: i64,
    pub consent_at: Option<i64>,
    pub consent_ip: Option<String>,
    pub confirmed_at: Option<i64>,
    pub confirmed_ip: Option<String>,
    pub consent_source: Option<String>,
}

impl FromRow<'_, AnyRow> for ExportRow {
    fn from_row(row: &AnyRow) -> sqlx::Result<ExportRow> {
        let attributes: &str = row.try_get("attributes")?;
        let lists: &str = row.try_get("lists")?;
        let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
        Ok(ExportRow {
            consent: match row.try_get::<Option<&str>, _>("consent")? {
                Some(json) => serde_json::from_str(json).map_err(decode)?,
                None => Consent::default(),
            },
            lists: serde_json::from_str(lists).map_err(decode)?,
            email: row.try_get("email")?,
            name: row.try_get("name")?,
            status: row.try_get("status")?,
            changed_at: row.try_get("changed_at")?,
            attributes: serde_json::from_str(attributes)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        })
    }
}

impl Store {
    /// Every attribute name used by the selected people, sorted: the extra
    /// CSV columns of an export.
    pub async fn attribute_keys(&self, selection: &Selection) -> Result<Vec<String>> {
        let Clauses { from, filter, .. } = selection.clauses(self.engine());
        let keys = self.engine().pick(
            "JOIN json_each(s.attributes) j",
            "CROSS JOIN json_object_keys(CAST(s.attributes AS json)) j(key)",
        );
        let sql = format!("SELECT DISTINCT j.key FROM {from} {keys} WHERE {filter} ORDER BY j.key");
        Ok(query_scalar_with::<String>(&sql, selection.arguments())
            .fetch_all(self.pool())
            .await?)
    }

    /// Streams the selected people, in id order, to `each`; returns how many.
    /// `each` may fail (a closed pipe, say): the export stops there. Rows
    /// carry no `lists` (see `export_with_lists`).
    pub async fn export<E: From<Error>>(
        &self,
        selection: &Selection,
        each: impl FnMut(ExportRow) -> Result<(), E>,
    ) -> Result<u64, E> {
        self.export_rows(selection, false, each).await
    }

    /// `export`, with every subscription of each person in `lists`.
    pub async fn export_with_lists<E: From<Error>>(
        &self,
        selection: &Selection,
        each: impl FnMut(ExportRow) -> Result<(), E>,
    ) -> Result<u64, E> {
        self.export_rows(selection, true, each).await
    }

    async fn export_rows<E: From<Error>>(
        &self,
        selection: &Selection,
        with_lists: bool,
        mut each: impl FnMut(ExportRow) -> Result<(), E>,
    ) -> Result<u64, E> {
        let sql = selection.export_sql(self.engine(), with_lists);
        let mut rows = query_as_with::<ExportRow>(&sql, selection.arguments()).fetch(self.pool());
        let mut n = 0;
        while let Some(row) = rows.try_next().await.map_err(Error::from)? {
            each(row)?;
            n += 1;
        }
        Ok(n)
    }

    /// How many people the selection holds.
    pub async fn count(&self, selection: &Selection) -> Result<i64> {
        let Clauses { from, filter, .. } = selection.clauses(self.engine());
        let sql = format!("SELECT count(*) FROM {from} WHERE {filter}");
        Ok(query_scalar_with::<i64>(&sql, selection.arguments())
            .fetch_one(self.pool())
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections() {
        assert_eq!(
            Selection::new(Some(1), None).unwrap(),
            Selection::Audience(1)
        );
        assert_eq!(
            Selection::new(Some(1), Some("pending")).unwrap(),
            Selection::ListStatus(1, "pending".into())
        );
        assert_eq!(Selection::new(None, None).unwrap(), Selection::Active);
        assert!(matches!(
            Selection::new(None, Some("confirmed")),
            Err(Error::StatusNeedsList(..))
        ));
        assert_eq!(
            Selection::new(None, Some("unsubscribed")).unwrap(),
            Selection::Left
        );
        assert_eq!(
            Selection::new(None, Some("all")).unwrap(),
            Selection::Everyone
        );
        assert!(Selection::new(Some(1), Some("erased")).is_err());
    }

    /// Rows stream in the order an index or the table gives them: no
    /// selection sorts its whole result first.
    #[tokio::test]
    async fn exports_need_no_sort() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        for selection in [
            Selection::Audience(1),
            Selection::ListStatus(1, "confirmed".into()),
            Selection::ListPersonStatus(1, "active".into()),
            Selection::ListAll(1),
            Selection::Active,
            Selection::Left,
            Selection::PersonStatus("bounced".into()),
            Selection::Everyone,
        ] {
            let sql = format!(
                "EXPLAIN QUERY PLAN {}",
                selection.export_sql(Engine::Sqlite, true)
            );
            let plan: Vec<String> = super::super::sql::query_with(&sql, selection.arguments())
                .fetch_all(store.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.get("detail"))
                .collect();
            assert!(
                !plan.iter().any(|step| step.contains("TEMP B-TREE")),
                "{selection:?}: {plan:?}"
            );
        }
    }
}
