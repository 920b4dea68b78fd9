//! SQL of the public archive: the one rule for which campaigns anyone may
//! read. A campaign is shown when it started sending, went only to lists
//! that are public now (every one of several), and its front matter did not say `archive = false` (kept in
//! the frozen row, `dispatch::Frozen::archive`). Test copies are never
//! stored as campaigns, so they never appear.

use sqlx::SqlitePool;

use super::Result;
use super::deliveries::{CAMPAIGN_COLUMNS, CampaignRow};

/// The archive rule, as a condition on a `campaigns` row.
const SHOWN: &str = "status IN ('sending', 'sent')
     AND list_id IN (SELECT id FROM lists WHERE public != 0)
     AND NOT EXISTS (SELECT 1 FROM campaign_lists cl JOIN lists l ON l.id = cl.list_id
                     WHERE cl.campaign_id = campaigns.id AND l.public = 0)
     AND coalesce(json_extract(compiled, '$.archive'), 1) != 0";

/// The campaigns the archive lists, newest first.
pub async fn campaigns(pool: &SqlitePool) -> Result<Vec<CampaignRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE {SHOWN} ORDER BY id DESC"
    ))
    .fetch_all(pool)
    .await?)
}

/// One campaign by slug, if the archive shows it.
pub async fn campaign(pool: &SqlitePool, slug: &str) -> Result<Option<CampaignRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE slug = ? AND {SHOWN}"
    ))
    .bind(slug)
    .fetch_optional(pool)
    .await?)
}
