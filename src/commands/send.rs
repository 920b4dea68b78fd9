//! `bulletin send FILE`: freeze a campaign file and send it (or schedule
//! it). The work is `freeze::send_file`, which `quickstart` shares.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::SendArgs;
use crate::config::Config;

/// `bulletin send FILE`: the campaign file frozen and sent.
pub(crate) fn run(config: &Config, args: &SendArgs) -> Result<ExitCode> {
    super::freeze::send_file(config, args)
}
