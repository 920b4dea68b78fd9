//! The integration tests: one binary, one module per area.

mod util; // shared helpers: running the binary, temp dirs, fixtures

mod bounces;
mod compose; // campaign files -> HTML/text/eml snapshots, bad input, personalisation // bounce/complaint/auto-reply parsing: fixtures, corpus accuracy, `bounces parse`
