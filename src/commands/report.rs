//! `bulletin report`: who got a campaign, one line per recipient (address,
//! state, attempts, last reply from the server, time, the list through
//! which they got it), failures and
//! unknowns first, streamed from the store as a table, CSV or JSON lines.
//! A campaign whose every run wrote to an outbox shows `written`, never
//! `sent`.

use std::process::ExitCode;

use anyhow::{Result, bail};
use futures_util::TryStreamExt as _;

use super::setup::{find_campaign, fmt_time, iso_time};
use crate::cli::{ReportArgs, ReportFormat};
use crate::store::RunTransport;
use crate::store::deliveries::{REPORT_ORDER, ReportRow};

/// The state of a `sent` row of a campaign that only ever wrote files.
const WRITTEN: &str = "written";

/// What an erased person's address shows as.
const ERASED: &str = "(erased)";

pub(crate) fn run(config: &crate::config::Config, args: &ReportArgs) -> Result<ExitCode> {
    // `written` is how an outbox campaign's `sent` rows show.
    let state = args
        .state
        .as_deref()
        .map(|s| if s == WRITTEN { "sent" } else { s });
    if let Some(state) = state
        && !REPORT_ORDER.contains(&state)
    {
        bail!(
            "--state {state:?}: not a delivery state; use one of {} ({WRITTEN} for sent to an outbox)",
            REPORT_ORDER.join(", ")
        );
    }
    super::runtime()?.block_on(async {
        let store = super::open_store(config).await?;
        let campaign = find_campaign(&store, &args.campaign).await?;
        let written = RunTransport::only_outboxes(&store.run_transports(campaign.id).await?);
        let mut rows = store.report(campaign.id, state.map(str::to_string));
        match args.format {
            ReportFormat::Table => println!("{}", table_header()),
            ReportFormat::Csv => println!("address,state,attempts,last_reply,time,list"),
            ReportFormat::Json => {}
        }
        let mut count = 0u64;
        while let Some(mut row) = rows.try_next().await? {
            if written && row.state == "sent" {
                row.state = WRITTEN.into();
            }
            println!("{}", line(args.format, &row)?);
            count += 1;
        }
        if count == 0 && args.format == ReportFormat::Table {
            println!(
                "(no recipients{})",
                match &args.state {
                    Some(s) => format!(" in state {s}"),
                    None => String::new(),
                }
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The table's header line, in the columns of [`line`].
fn table_header() -> String {
    format!(
        "{:<40} {:<9} {:>8}  {:<23} {:<16} last reply",
        "address", "state", "attempts", "time", "list"
    )
}

/// One recipient in `format`; times are human in the table and ISO 8601
/// (UTC) in CSV and JSON.
fn line(format: ReportFormat, row: &ReportRow) -> Result<String> {
    let address = row.email.as_deref().unwrap_or(ERASED);
    let reply = row.last_reply.as_deref().unwrap_or("");
    let list = row.list.as_deref().unwrap_or("");
    Ok(match format {
        ReportFormat::Table => format!(
            "{address:<40} {:<9} {:>8}  {:<23} {list:<16} {}",
            row.state,
            row.attempts,
            fmt_time(row.updated_at),
            reply.replace(['\r', '\n'], " ")
        ),
        ReportFormat::Csv => {
            let mut out = csv::WriterBuilder::new()
                .terminator(csv::Terminator::Any(b'\n'))
                .from_writer(Vec::new());
            out.write_record([
                address,
                &row.state,
                &row.attempts.to_string(),
                reply,
                &iso_time(row.updated_at),
                list,
            ])?;
            let bytes = out.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
            String::from_utf8_lossy(&bytes)
                .trim_end_matches('\n')
                .to_string()
        }
        ReportFormat::Json => serde_json::to_string(&serde_json::json!({
            "address": row.email,
            "state": row.state,
            "attempts": row.attempts,
            "last_reply": row.last_reply,
            "time": iso_time(row.updated_at),
            "list": row.list,
        }))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each column of a row starts under its header (a time with its
    /// offset, "2026-12-01 09:00 +01:00", is 23 characters).
    #[test]
    fn the_table_rows_line_up_under_the_header() {
        let row = ReportRow {
            email: Some("ann@example.org".into()),
            state: "sent".into(),
            attempts: 1,
            last_reply: Some("250 2.0.0 Ok".into()),
            updated_at: 1_796_000_000,
            list: Some("news".into()),
        };
        let (header, line) = (table_header(), line(ReportFormat::Table, &row).unwrap());
        assert_eq!(header.find("list"), line.find("news"), "\n{header}\n{line}");
        assert_eq!(
            header.find("last reply"),
            line.find("250 "),
            "\n{header}\n{line}"
        );
    }
}
