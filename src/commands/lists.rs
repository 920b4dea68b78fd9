//! `bulletin lists`: the lists with their counts, and `lists add`,
//! `rename`, `edit` and `remove`.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cli::{ListsArgs, ListsCommand};
use crate::config::Config;
use crate::store;

pub(crate) fn run(config: &Config, args: &ListsArgs) -> Result<ExitCode> {
    super::runtime()?.block_on(async {
        let store = match &args.command {
            Some(ListsCommand::Add { .. }) => super::create_store(config).await?,
            _ => super::open_store(config).await?,
        };
        let db = super::db_error(config);
        match &args.command {
            None => return show(config, &store).await,
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
                    .map_err(db)?;
                println!("created list {} ({})", list.slug, settings_words(&list));
            }
            Some(ListsCommand::Rename { slug, new_slug }) => {
                let list = store.rename_list(slug, new_slug).await.map_err(db)?;
                println!(
                    "renamed list {slug} to {}: campaign files must now say list = \"{}\"",
                    list.slug, list.slug
                );
            }
            Some(ListsCommand::Edit {
                slug,
                name,
                description,
                double_opt_in,
                public,
            }) => {
                edit(
                    &store,
                    config,
                    slug,
                    name,
                    description,
                    *double_opt_in,
                    *public,
                )
                .await?
            }
            Some(ListsCommand::Remove { slug, force }) => {
                let removed = store
                    .remove_list(slug, *force, store::now())
                    .await
                    .map_err(db)?;
                println!(
                    "removed list {slug}; {} subscriber(s) on it kept with their history",
                    removed.members
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn edit(
    store: &store::Store,
    config: &Config,
    slug: &str,
    name: &Option<String>,
    description: &Option<String>,
    double_opt_in: Option<bool>,
    public: Option<bool>,
) -> Result<()> {
    let changes = store::ListChanges {
        name: name.clone(),
        description: description.clone(),
        double_opt_in,
        public,
    };
    if changes.is_empty() {
        bail!(
            "lists edit {slug}: nothing to change; give --name, --description, --double-opt-in yes|no or --public yes|no"
        );
    }
    if changes.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        bail!("lists edit {slug}: --name is empty; a list needs a name");
    }
    let list = store
        .edit_list(slug, &changes)
        .await
        .map_err(super::db_error(config))?;
    println!(
        "list {}: name {:?}, description {:?} ({})",
        list.slug,
        list.name,
        list.description,
        settings_words(&list)
    );
    Ok(())
}

/// A list's settings in words, for a sentence: both always named.
fn settings_words(list: &store::List) -> String {
    let opt_in = if list.double_opt_in {
        "double opt-in"
    } else {
        "single opt-in"
    };
    let public = if list.public { "public" } else { "not public" };
    format!("{opt_in}, {public}")
}

/// A list's settings for the FLAGS column: only those that are on.
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
