//! `bulletin build`: compile a campaign and write its HTML, text and a
//! sample `.eml` (and with `--mjml` the MJML that was compiled). With a
//! database, the campaign's list must exist and its placeholders must name
//! values its subscribers have (`send` makes the same checks).

use std::process::ExitCode;

use anyhow::{Context as _, Result};

use super::compile::{
    Built, campaign_lists, check_placeholders, compile_file, format_warning, sample, sample_eml,
};
use crate::campaign;
use crate::cli::BuildArgs;
use crate::config::Config;

/// `build`'s checks against the database: its list exists and provides the
/// placeholders. Without a database file, a note says they were skipped.
fn check_against_database(config: &Config, built: &Built) -> Result<()> {
    if config.db.file().is_some_and(|path| !path.is_file()) {
        eprintln!(
            "bulletin: note: no database at {} (set by {}); placeholders not checked against the subscribers of list {}",
            config.db,
            config.db_source,
            built.campaign.lists.join(", ")
        );
        return Ok(());
    }
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        let lists = campaign_lists(&store, &built.campaign).await?;
        check_placeholders(&store, built, &lists).await
    })
}

pub(crate) fn run(config: &Config, args: &BuildArgs) -> Result<ExitCode> {
    let built = compile_file(config, &args.campaign)?;
    let file = args.campaign.display().to_string();
    for w in &built.compiled.warnings {
        eprintln!("{}", format_warning(&file, w));
    }
    check_against_database(config, &built)?;
    if args.strict && !built.compiled.warnings.is_empty() {
        return Err(campaign::Error {
            file: file.clone(),
            line: built.compiled.warnings[0].line.unwrap_or(1),
            message: format!(
                "{} deliverability warning(s) and --strict; fix them or drop --strict",
                built.compiled.warnings.len()
            ),
        }
        .into());
    }
    let body = sample(config, &built);
    let eml = sample_eml(config, &built, &body)?;
    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    let stem = &built.campaign.slug;
    let mut outputs = vec![
        (format!("{stem}.html"), body.html.clone().into_bytes()),
        (format!("{stem}.txt"), body.text.clone().into_bytes()),
        (format!("{stem}.eml"), eml),
    ];
    if args.mjml {
        outputs.push((
            format!("{stem}.mjml"),
            built.compiled.mjml.clone().into_bytes(),
        ));
    }
    println!("subject:  {}", body.subject);
    println!("list:     {}", built.campaign.lists.join(", "));
    for (name, bytes) in &outputs {
        let path = args.out.join(name);
        std::fs::write(&path, bytes).with_context(|| path.display().to_string())?;
        println!("wrote     {} ({})", path.display(), human_size(bytes.len()));
    }
    println!("warnings: {}", built.compiled.warnings.len());
    Ok(ExitCode::SUCCESS)
}

fn human_size(n: usize) -> String {
    if n < 10_000 {
        format!("{n} bytes")
    } else {
        format!("{:.1} KB", n as f64 / 1000.0)
    }
}
