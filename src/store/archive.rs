//! SQL of the public archive: the one rule for which campaigns anyone may
//! read. A campaign is shown when it started sending, went only to lists
//! that are public now (every one of several), its front matter did not say
//! `archive = false` (kept in the frozen row, `dispatch::Frozen::archive`),
//! and it is not a welcome mail (`store::welcome`: one person's greeting,
//! not an issue). Test copies are never stored as campaigns, so they never
//! appear.

use super::Result;
use super::deliveries::{CampaignRow, campaign_columns};
use super::sql::{Engine, query_as};

/// The archive rule, as a condition on a `campaigns` row; `$not_archived`
/// is the engine's test of the frozen `archive = false`.
macro_rules! shown {
    ($not_archived:literal) => {
        concat!(
            "status IN ('sending', 'sent')
             AND list_id IN (SELECT id FROM lists WHERE public != 0)
             AND NOT EXISTS (SELECT 1 FROM campaign_lists cl JOIN lists l ON l.id = cl.list_id
                             WHERE cl.campaign_id = campaigns.id AND l.public = 0)
             AND NOT ",
            $not_archived,
            " AND id NOT IN (SELECT campaign_id FROM campaign_triggers)"
        )
    };
}

/// [`shown!`] on this engine: the frozen `compiled` JSON read by each
/// engine's own functions (a missing `archive` key means shown).
fn shown(engine: Engine) -> &'static str {
    engine.pick(
        shown!("coalesce(json_extract(compiled, '$.archive'), 1) = 0"),
        shown!("coalesce(CAST(compiled AS json) ->> 'archive', 'true') = 'false'"),
    )
}

impl super::Store {
    /// The campaigns the archive lists, newest first.
    pub async fn archived_campaigns(&self) -> Result<Vec<CampaignRow>> {
        let pool = &self.pool;
        let (columns, shown) = (campaign_columns(self.engine()), shown(self.engine()));
        Ok(query_as(&format!(
            "SELECT {columns} FROM campaigns WHERE {shown} ORDER BY id DESC"
        ))
        .fetch_all(pool)
        .await?)
    }

    /// One campaign by slug, if the archive shows it.
    pub async fn archived_campaign(&self, slug: &str) -> Result<Option<CampaignRow>> {
        let pool = &self.pool;
        let (columns, shown) = (campaign_columns(self.engine()), shown(self.engine()));
        Ok(query_as(&format!(
            "SELECT {columns} FROM campaigns WHERE slug = ? AND {shown}"
        ))
        .bind(slug)
        .fetch_optional(pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;
    use crate::store::deliveries::{CampaignStatus, NewCampaign};

    #[tokio::test]
    async fn a_campaign_to_several_lists_is_shown_only_when_every_one_is_public() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let open = store.create_list("open", "Open", "", false, true, 1).await;
        let closed = store.create_list("closed", "Closed", "", false, false, 1);
        let (open, closed) = (open.unwrap().id, closed.await.unwrap().id);
        for (slug, lists) in [
            ("open-only", &[open][..]),
            ("open-then-closed", &[open, closed]),
            ("closed-then-open", &[closed, open]),
        ] {
            let new = NewCampaign::test(slug, lists);
            let id = store.insert_campaign(&new).await;
            let id = id.unwrap();
            let sending = CampaignStatus::Sending;
            store.set_campaign_status(id, sending, 2).await.unwrap();
        }
        let shown: Vec<String> = store
            .archived_campaigns()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.slug)
            .collect();
        assert_eq!(shown, ["open-only"]);
        assert!(
            store
                .archived_campaign("open-then-closed")
                .await
                .unwrap()
                .is_none()
        );
    }
}
