//! What a list's subscribers can fill in: the attribute keys they have (for
//! `render::placeholders::check`) and, per key, how many of a campaign's
//! audience have no value (for `send`'s prompt). Both are one set-based
//! statement, whatever the size of the list.

use super::sql::{query_as, query_scalar};
use super::{Result, Store};

impl Store {
    /// The distinct attribute keys of everyone subscribed to the list (any
    /// status), sorted. Keys are snake_case: the import normalises them.
    pub async fn list_keys(&self, lists: &[i64]) -> Result<Vec<String>> {
        Ok(query_scalar(self.engine().pick(
            "SELECT DISTINCT a.key FROM subscriptions sub \
             JOIN subscribers s ON s.id = sub.subscriber_id, json_each(s.attributes) a \
             WHERE sub.list_id IN (SELECT value FROM json_each(?1)) ORDER BY a.key",
            "SELECT DISTINCT a.key FROM subscriptions sub \
             JOIN subscribers s ON s.id = sub.subscriber_id \
             CROSS JOIN json_object_keys(CAST(s.attributes AS json)) a(key) \
             WHERE sub.list_id IN (SELECT CAST(value AS BIGINT) FROM json_array_elements_text(CAST(?1 AS json))) \
             ORDER BY a.key",
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
        let engine = self.engine();
        let sql = format!(
            "SELECT k.value, count(*) FROM ({}) a JOIN subscribers s ON s.id = a.id, {} \
             WHERE trim(coalesce(CASE WHEN k.value = 'name' THEN s.name ELSE {} END, '')) = '' \
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
        Ok(query_as(&sql)
            .bind(serde_json::to_string(lists).expect("ids serialise"))
            .bind(serde_json::to_string(keys).expect("strings serialise"))
            .fetch_all(self.pool())
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::query;

    #[tokio::test]
    async fn keys_and_missing_values_of_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let news = store
            .create_list("news", "News", "", false, true, 1)
            .await
            .unwrap();
        let other = store
            .create_list("other", "Other", "", false, true, 1)
            .await
            .unwrap();
        let people = [
            (
                "ann@example.org",
                Some("Ann"),
                r#"{"first_name":"Ann","city":"Lima"}"#,
                "news",
            ),
            (
                "bo@example.org",
                None,
                r#"{"first_name":"  ","n":0}"#,
                "news",
            ),
            (
                "cy@example.org",
                Some("Cy"),
                r#"{"first_name":null}"#,
                "news",
            ),
            (
                "di@example.org",
                Some("Di"),
                r#"{"postcode":"X1"}"#,
                "other",
            ),
        ];
        for (email, name, attributes, list) in people {
            store
                .add_subscriber(email, name, list, "cli", 1)
                .await
                .unwrap();
            query("UPDATE subscribers SET attributes = ? WHERE email = ?")
                .bind(attributes)
                .bind(email)
                .execute(store.pool())
                .await
                .unwrap();
        }
        assert_eq!(
            store.list_keys(&[news.id]).await.unwrap(),
            ["city", "first_name", "n"]
        );
        assert_eq!(store.list_keys(&[other.id]).await.unwrap(), ["postcode"]);
        assert_eq!(
            store.list_keys(&[news.id, other.id]).await.unwrap(),
            ["city", "first_name", "n", "postcode"],
            "a campaign to several lists can use the keys of any of them"
        );
        let keys: Vec<String> = ["city", "first_name", "n", "name", "zip"]
            .map(String::from)
            .to_vec();
        let missing = store.missing_values(&[news.id], &keys).await.unwrap();
        let expect: Vec<(String, i64)> = [
            ("city", 2),
            ("first_name", 2),
            ("n", 2),
            ("name", 1),
            ("zip", 3),
        ]
        .map(|(k, n)| (k.to_string(), n))
        .to_vec();
        assert_eq!(missing, expect);
    }
}
