//! The integration tests: one binary, one module per area.

mod support; // SMTP servers: the in-process sink, smtp-sink and aiosmtpd
mod util; // shared helpers: running the binary, temp dirs, fixtures, a tiny HTTP client

mod bounce_rules; // returned mail applied: VERP/Message-ID matching, hard/soft/complaint/mailto rules, scan
mod bounces; // bounce/complaint/auto-reply parsing: fixtures, corpus accuracy, `bounces parse`
mod compose; // campaign files -> HTML/text/eml snapshots, bad input, personalisation
mod dispatch; // the dispatcher against the in-process sink: exactly once, faults, kill -9, overlap
mod import; // lists from Mailchimp (zip), listmonk, Keila, Ghost, Substack, plain CSV; exports, consent, round trips
mod interop; // lettre against Postfix smtp-sink and aiosmtpd (BULLETIN_INTEROP=1 requires them)
mod ops; // running unattended: no silent outbox or accidental database, cron/systemd examples, pipes, secrets, backup
mod smtp_sink_tests; // the test sink itself: envelope, data, scripted failures, AUTH, pipelining
mod store; // subscriber store: import fixture counts, round trip, erasure, CLI
mod web; // subscriber pages (tests/web/, one file per area): every route and bad token, stored state, one-click end to end, SIGTERM, Chromium (BULLETIN_BROWSER=1 requires it)
