//! `bulletin lists`: the lists with their counts, and `lists add`.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{ListsArgs, ListsCommand};
use crate::config::Config;
use crate::store;

pub(crate) fn run(config: &Config, args: &ListsArgs) -> Result<ExitCode> {
    super::runtime()?.block_on(async {
        let store = match &args.command {
            None => super::open_store(config).await?,
            Some(ListsCommand::Add { .. }) => super::create_store(config).await?,
        };
        match &args.command {
            None => show(config, &store).await,
            Some(ListsCommand::Add {
                slug,
                name,
                description,
                double_opt_in,
                public,
            }) => {
                let list = store
                    .create_list(
                        slug,
                        name,
                        description,
                        *double_opt_in,
                        *public,
                        store::now(),
                    )
                    .await
                    .map_err(super::db_error(config))?;
                println!("created list {} ({})", list.slug, flags(&list));
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn flags(list: &store::List) -> String {
    let mut f = Vec::new();
    if list.double_opt_in {
        f.push("double opt-in");
    }
    if list.public {
        f.push("public");
    }
    if f.is_empty() {
        "-".into()
    } else {
        f.join(", ")
    }
}

async fn show(config: &Config, store: &store::Store) -> Result<ExitCode> {
    let lists = store.lists().await.map_err(super::db_error(config))?;
    if lists.is_empty() {
        println!("no lists yet; create one with `bulletin lists add SLUG --name NAME`");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "SLUG".to_string(),
        "NAME".into(),
        "FLAGS".into(),
        "CONFIRMED".into(),
        "PENDING".into(),
        "UNSUBSCRIBED".into(),
        "RECEIVING".into(),
    ]];
    for l in &lists {
        rows.push([
            l.list.slug.clone(),
            l.list.name.clone(),
            flags(&l.list),
            l.confirmed.to_string(),
            l.pending.to_string(),
            l.unsubscribed.to_string(),
            l.audience.to_string(),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i < 3 {
                line.push_str(&format!("{cell:<w$}  "));
            } else {
                line.push_str(&format!("{cell:>w$}  "));
            }
        }
        println!("{}", line.trim_end());
    }
    Ok(ExitCode::SUCCESS)
}
