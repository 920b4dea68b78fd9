//! Importing a file of subscribers (a CSV file, or a zip of them such as
//! Mailchimp's audience export) into a list, with a progress bar and the
//! counts printed: what `subscribers import` and `quickstart` share. Not a
//! command: commands import this module, never each other.

use std::io::{IsTerminal as _, Read as _, Seek as _};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::cli::ImportFrom;
use crate::config::Config;
use crate::import::Format;
use crate::store::{self, ImportOptions, ImportReport, Store};

/// Imports `file` into `list`; exit code 1 when a row was rejected.
pub(super) async fn import(
    store: &Store,
    config: &Config,
    file: &Path,
    list: &str,
    from: ImportFrom,
    dry_run: bool,
    welcome: bool,
) -> Result<ExitCode> {
    let name = file.display().to_string();
    if welcome {
        check_welcome(store, config, list).await?;
    }
    let mut input = std::fs::File::open(file).with_context(|| name.clone())?;
    let mut magic = [0u8; 4];
    let is_zip =
        input.read(&mut magic).with_context(|| name.clone())? == 4 && magic == *b"PK\x03\x04";
    input.rewind().with_context(|| name.clone())?;
    let file_name = file.file_name().map(|f| f.to_string_lossy().into_owned());
    let options = ImportOptions {
        dry_run,
        welcome,
        from: import_format(from),
        ..ImportOptions::new(store::now())
    };
    let mut total = ImportReport::default();
    if !is_zip {
        let size = input.metadata().map(|m| m.len()).unwrap_or(0);
        let options = ImportOptions {
            file_name,
            ..options
        };
        total = import_one(store, config, input, size, &name, list, &options).await?;
    } else {
        let mut archive = zip::ZipArchive::new(input)
            .with_context(|| format!("{name}: not a readable zip file"))?;
        let entries = zip_csv_files(&archive);
        if entries.is_empty() {
            anyhow::bail!("{name}: no .csv file in the zip");
        }
        for (index, entry_name) in entries {
            let entry = archive
                .by_index(index)
                .with_context(|| format!("{name}: {entry_name}"))?;
            let size = entry.size();
            let options = ImportOptions {
                file_name: Some(base_name(&entry_name).to_string()),
                ..options.clone()
            };
            let label = format!("{name}: {entry_name}");
            let report = import_one(store, config, entry, size, &label, list, &options).await?;
            total.add(&report);
        }
        println!("{name}: all files");
        print_counts(&total, welcome);
    }
    Ok(if total.rejected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--welcome` needs a welcome mail to send: the list must have an active
/// one, or the import is refused before it reads a row.
async fn check_welcome(store: &Store, config: &Config, list: &str) -> Result<()> {
    let db = super::db_error(config);
    let active = match store.list(list).await.map_err(&db)? {
        Some(l) => store.active_welcome(l.id).await.map_err(&db)?,
        None => None,
    };
    if active.is_none() {
        anyhow::bail!(
            "--welcome: list {list} has no welcome mail to send; `bulletin send FILE` with trigger = \"welcome\" in its front matter makes one, or import without --welcome"
        );
    }
    Ok(())
}

fn import_format(from: ImportFrom) -> Format {
    match from {
        ImportFrom::Auto => Format::Auto,
        ImportFrom::Mailchimp => Format::Mailchimp,
        ImportFrom::Listmonk => Format::Listmonk,
        ImportFrom::Keila => Format::Keila,
        ImportFrom::Ghost => Format::Ghost,
        ImportFrom::Substack => Format::Substack,
        ImportFrom::Csv => Format::Csv,
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The CSV files of a zip (Mailchimp's audience export), subscribed
/// members first and those who left last, so that a person in two files
/// ends up recorded as having left.
fn zip_csv_files<R: std::io::Read + std::io::Seek>(
    archive: &zip::ZipArchive<R>,
) -> Vec<(usize, String)> {
    let mut entries: Vec<(usize, String)> = (0..archive.len())
        .filter_map(|i| {
            archive
                .name_for_index(i)
                .and_then(Result::ok)
                .map(|n| (i, n.into_owned()))
        })
        .filter(|(_, n)| n.to_lowercase().ends_with(".csv") && !n.starts_with("__MACOSX/"))
        .collect();
    let order = |n: &str| {
        let n = base_name(n).to_lowercase();
        ["subscribed", "nonsubscribed", "unsubscribed", "cleaned"]
            .iter()
            .position(|p| n.starts_with(p))
            .unwrap_or(4)
    };
    entries.sort_by_key(|(i, n)| (order(n), *i));
    entries
}

/// Imports one CSV stream and prints its summary.
async fn import_one(
    store: &Store,
    config: &Config,
    input: impl std::io::Read,
    size: u64,
    name: &str,
    list: &str,
    options: &ImportOptions,
) -> Result<ImportReport> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        bar
    });
    let result = store
        .import(input, list, options, |bytes| {
            if let Some(bar) = &bar {
                bar.set_position(bytes)
            }
        })
        .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let (report, errors) = result.map_err(|e| match e {
        store::Error::EmptyFile | store::Error::Header(_) | store::Error::Read { .. } => {
            anyhow::Error::new(e).context(name.to_string())
        }
        other => super::db_error(config)(other),
    })?;
    for e in &errors {
        eprintln!("{name}:{}: {}", e.line, e.reason);
    }
    let would = if options.dry_run {
        " (dry run: nothing written)"
    } else {
        ""
    };
    println!("{name} -> {list}{would}");
    match report.format {
        Format::Csv => println!("  read as:             plain CSV (--from csv)"),
        format => println!(
            "  read as:             {format} export (--from {})",
            format.to_string().to_lowercase()
        ),
    }
    if options.dry_run {
        println!("  columns:");
        for (header, column) in &report.mapping {
            println!("    {header:?} -> {column}");
        }
    }
    if report.list_created {
        println!("  list {list} created");
    }
    print_counts(&report, options.welcome);
    Ok(report)
}

fn print_counts(report: &ImportReport, welcome: bool) {
    println!("  rows read:           {}", report.read);
    println!("  newly subscribed:    {}", report.imported);
    println!("  updated:             {}", report.updated);
    println!("  already subscribed:  {}", report.unchanged);
    let l = report.left;
    println!(
        "  recorded as left:    {} (unsubscribed {}, bounced {}, complained {}, blocklisted {}; never subscribed, stored without a subscription {})",
        l.total(),
        l.unsubscribed,
        l.bounced,
        l.complained,
        l.suppressed,
        l.not_subscribed
    );
    println!(
        "  already left:        {} (as recorded before: nothing to change)",
        report.already_left
    );
    println!("  duplicates in file:  {}", report.duplicates);
    let s = report.skipped;
    println!(
        "  not resubscribed:    {} (unsubscribed {}, bounced {}, complained {}, erased or suppressed {})",
        s.total(),
        s.unsubscribed,
        s.bounced,
        s.complained,
        s.suppressed
    );
    println!("  rejected:            {}", report.rejected);
    if report.welcomed > 0 || welcome {
        let verb = if report.dry_run { "would get" } else { "get" };
        println!(
            "  welcome mail:        {} newly confirmed {verb} the list's welcome mail (`bulletin dispatch` sends it)",
            report.welcomed
        );
    }
    if report.short_rows > 0 {
        println!(
            "  short rows:          {} (fewer fields than the header; the missing ones read as empty)",
            report.short_rows
        );
    }
}
