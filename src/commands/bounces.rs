//! `bulletin bounces parse FILE...`: read returned mail and print what each
//! message says, one JSON line per file, without touching the database.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::bounce::{self, Report};
use crate::cli::BouncesParseArgs;

/// One output line: the file and its report.
#[derive(Debug, Serialize)]
pub struct ParseLine<'a> {
    pub file: &'a str,
    #[serde(flatten)]
    pub report: &'a Report,
}

pub(crate) fn parse(args: &BouncesParseArgs) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = false;
    for path in &args.files {
        let file = path.display().to_string();
        match read(path) {
            Ok(raw) => {
                let report = bounce::parse(&raw);
                serde_json::to_writer(
                    &mut out,
                    &ParseLine {
                        file: &file,
                        report: &report,
                    },
                )?;
                out.write_all(b"\n")?;
            }
            Err(err) => {
                // One unreadable file does not stop the others.
                out.flush()?;
                eprintln!("bulletin: {file}: {err}");
                failed = true;
            }
        }
    }
    out.flush()?;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}
