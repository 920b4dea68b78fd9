//! What a list's subscribers can fill in: the attribute keys they have (for
//! `render::placeholders::check`) and, per key, how many of a campaign's
//! audience (or of the newcomers `--only-new` mails) have no value (for
//! `send`'s prompt). Both are one set-based statement, whatever the size
//! of the list.

use super::sql::{query_as, query_scalar};
use super::{Result, Store};

impl Store {
    /// The distinct attribute keys of everyone subscribed to the list (any
    /// status), sorted. Keys are snake_case: the import normalises them.
    pub async fn list_keys(&self, lists: &[i64]) -> Result<Vec<String>> {
        Ok(query_scalar(self.engine().pick(
            concat!(
                "SELECT DISTINCT a.key FROM subscriptions sub \
                 JOIN subscribers s ON s.id = sub.subscriber_id, json_each(s.attributes) a \
                 WHERE sub.list_id IN (SELECT id FROM ",
                json_ids!(sqlite, "?1"),
                " lists) ORDER BY a.key"
            ),
            concat!(
                "SELECT DISTINCT a.key FROM subscriptions sub \
                 JOIN subscribers s ON s.id = sub.subscriber_id \
                 CROSS JOIN json_object_keys(CAST(s.attributes AS json)) a(key) \
                 WHERE sub.list_id IN (SELECT id FROM ",
                json_ids!(postgres, "?1"),
                " lists) ORDER BY a.key"
            ),
        ))
        .bind(serde_json::to_string(lists).expect("ids serialise"))
        .fetch_all(self.pool())
        .await?)
    }

    /// For each of `keys` (`name` is the name column, the others
    /// attributes), how many people a campaign to the list would reach
    /// have no value: absent, null or blank, as `render` would fill it.
    /// Keys nobody lacks are absent from the answer.
    pub async fn missing_values(
        &self,
        lists: &[i64],
        keys: &[String],
    ) -> Result<Vec<(String, i64)>> {
        self.missing(lists, keys, None).await
    }

    /// [`Store::missing_values`] counted over who `send --only-new` would
    /// mail: the people of `lists` with no delivery row for campaign
    /// `campaign_id` (as `Store::first_time_count` counts them).
    pub async fn missing_values_of_newcomers(
        &self,
        campaign_id: i64,
        lists: &[i64],
        keys: &[String],
    ) -> Result<Vec<(String, i64)>> {
        self.missing(lists, keys, Some(campaign_id)).await
    }

    /// Both of the above: the audience of `lists`, with `newcomers_of` only
    /// those who have no row for that campaign.
    async fn missing(
        &self,
        lists: &[i64],
        keys: &[String],
        newcomers_of: Option<i64>,
    ) -> Result<Vec<(String, i64)>> {
        let engine = self.engine();
        let newcomers = match newcomers_of {
            Some(_) => {
                " AND NOT EXISTS (SELECT 1 FROM deliveries d \
                         WHERE d.campaign_id = ?3 AND d.subscriber_id = s.id)"
            }
            None => "",
        };
        let sql = format!(
            "SELECT k.value, count(*) FROM ({}) a JOIN subscribers s ON s.id = a.id, {} \
             WHERE trim(coalesce(CASE WHEN k.value = 'name' THEN s.name ELSE {} END, '')) = ''{newcomers} \
             GROUP BY k.value ORDER BY k.value",
            super::subscribers::audience_of_lists_sql(engine),
            engine.pick(
                "json_each(?2) k",
                "json_array_elements_text(CAST(?2 AS json)) k(value)"
            ),
            engine.pick(
                "CAST(json_extract(s.attributes, '$.\"' || k.value || '\"') AS TEXT)",
                "CAST(s.attributes AS json) ->> k.value"
            ),
        );
        let mut query = query_as(&sql)
            .bind(serde_json::to_string(lists).expect("ids serialise"))
            .bind(serde_json::to_string(keys).expect("strings serialise"));
        if let Some(id) = newcomers_of {
            query = query.bind(id);
        }
        Ok(query.fetch_all(self.pool()).await?)
    }
}
