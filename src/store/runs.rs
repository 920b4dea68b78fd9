//! `campaign_runs`: which transport each run of a campaign used (SMTP or the
//! outbox), so reports never call files in a folder "sent".

use super::sql::{query, query_as};
use super::{Result, Store};

/// One way a campaign's messages went out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunTransport {
    /// `smtp` or `outbox`.
    pub transport: String,
    /// `host:port`, or the outbox folder.
    pub target: String,
}

impl RunTransport {
    /// Every run wrote files (an outbox, never a server): the campaign's
    /// `sent` rows were written, and messages call them that.
    pub fn only_outboxes(runs: &[RunTransport]) -> bool {
        !runs.is_empty() && runs.iter().all(|r| r.transport == "outbox")
    }
}

impl Store {
    /// Records that a run of `campaign_id` starts on `transport` (`smtp` or
    /// `outbox`) to `target`.
    pub async fn record_run(
        &self,
        campaign_id: i64,
        transport: &str,
        target: &str,
        now: i64,
    ) -> Result<()> {
        query(
            "INSERT INTO campaign_runs (campaign_id, transport, target, started_at) VALUES (?, ?, ?, ?)",
        )
        .bind(campaign_id)
        .bind(transport)
        .bind(target)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The distinct transports the runs of `campaign_id` used, first used first.
    pub async fn run_transports(&self, campaign_id: i64) -> Result<Vec<RunTransport>> {
        let rows: Vec<(String, String)> = query_as(
            "SELECT transport, target FROM campaign_runs WHERE campaign_id = ? \
             GROUP BY transport, target ORDER BY min(id)",
        )
        .bind(campaign_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(transport, target)| RunTransport { transport, target })
            .collect())
    }
}
