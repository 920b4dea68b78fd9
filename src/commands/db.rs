//! `bulletin init` (create the database) and `bulletin db backup FILE`
//! (a consistent copy of a database in use).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::config::Config;

pub(crate) fn init(config: &Config) -> Result<ExitCode> {
    super::runtime()?.block_on(async {
        match crate::store::Store::open_existing(&config.db).await {
            Err(crate::store::Error::Missing) => {
                super::create_store(config).await?;
            }
            _ => {
                super::open_store(config).await?;
                println!(
                    "database {} (set by {}) exists; schema up to date",
                    config.db, config.db_source
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn backup(config: &Config, target: &Path) -> Result<ExitCode> {
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        store
            .backup(target)
            .await
            .with_context(|| format!("backup of {} to {}", config.db, target.display()))?;
        println!("backed up {} to {}", config.db, target.display());
        Ok(ExitCode::SUCCESS)
    })
}
