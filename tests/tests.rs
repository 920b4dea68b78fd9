//! The integration tests: one binary, one module per area.

mod support; // SMTP servers: the in-process sink, smtp-sink and aiosmtpd; a raw observer pool on a test's database; the engine under test (SQLite, or PostgreSQL with BULLETIN_TEST_POSTGRES)
mod util; // shared helpers: running the binary, temp dirs, fixtures, a tiny HTTP client

mod bounce_rules; // returned mail applied: VERP/Message-ID matching, hard/soft/complaint/mailto rules, scan
mod bounces; // bounce/complaint/auto-reply parsing: fixtures, corpus accuracy, `bounces parse`
mod campaigns; // the campaign lifecycle: cancel mid-run, --replace, --only-new, --again prompts, report, status
mod compose; // campaign files -> HTML/text/eml snapshots, bad input, personalisation
mod db_copy; // `db copy --to postgres://…`: every table row by row, refused twice, sequences, unreachable targets (BULLETIN_TEST_POSTGRES)
mod dispatch; // the dispatcher against the in-process sink: exactly once, faults, kill -9, overlap
mod dkim; // DKIM signatures on received messages, verified by viadkim and python3-dkim; tampering fails
mod doctor; // `bulletin doctor` against the sink, aiosmtpd, smtp-sink and `bulletin serve`: lines and exit codes
mod engines; // SQLite and PostgreSQL: subscribers.pg.sql builds what subscribers.sql builds, run twice; fresh databases (BULLETIN_TEST_POSTGRES)
mod faults; // SMTP faults against scripted servers: bounce vs refusal, unknown after the dot, stops, SIGTERM, reactivate
mod import; // lists from Mailchimp (zip), listmonk, Keila, Ghost, Substack, plain CSV; exports, consent, round trips
mod inbound; // `bounces imap` against Dovecot on loopback (BULLETIN_INTEROP=1 requires it): 200 messages, kill -9, exactly once
mod inbound_webhooks; // POST /webhooks/{ses,postmark,mailgun,sendgrid} over a real socket: signatures, replays, stale, malformed
mod interop; // lettre against Postfix smtp-sink and aiosmtpd (BULLETIN_INTEROP=1 requires them)
mod multilist; // campaigns to several lists: each person once, through the earliest list; List-Id, unsubscribe and preferences per list; the claim switching lists
mod operator; // small operator commands: subscribers add on double opt-in lists, test --to/--as, lists rename/edit/remove
mod ops; // running unattended: no silent outbox or accidental database, cron/systemd examples, pipes, secrets, backup
mod pg_password; // PostgreSQL logins with a password (scram): BULLETIN_DB_PASSWORD or the URL's own works; wrong or none exits 2, naming both sources, never the password (BULLETIN_TEST_POSTGRES)
mod pg_tls; // TLS to PostgreSQL as sslmode asks: require, verify-full against the test CA; refused without; an untrusted certificate exits 2 naming the setting (BULLETIN_TEST_POSTGRES)
mod placeholders; // placeholders and images against the list: did you mean, first_name end to end, missing values, relative URLs, misspelt lists
mod settings; // wrong settings fail loudly naming the setting: base_url without a scheme, a misspelt SMTP URL (dispatch with nothing due too), an unreachable SMTP server, a misspelt config path, a PostgreSQL database that does not exist (BULLETIN_TEST_POSTGRES)
mod smtp_sink_tests; // the test sink itself: envelope, data, scripted failures, AUTH, pipelining
mod store; // subscriber store: import fixture counts, round trip, erasure, CLI
mod unattended; // what cron and a lost .env meet: no SMTP without the secret, a campaign keeps its transport, quiet dispatch, counts, test copies, doctor's transport
mod web; // subscriber pages (tests/web/, one file per area): every route and bad token, stored state, one-click end to end, SIGTERM, Chromium (BULLETIN_BROWSER=1 requires it)
mod welcome; // welcome mail: trigger = "welcome" sent once per confirmation (sign-up clicked twice, add, import --welcome), cancel, leavers
mod wire; // on the wire: SMTPUTF8 with aiosmtpd (offered or not), no AUTH outside TLS, control characters in names
mod workers; // several dispatch processes sharing one campaign on PostgreSQL: exactly once, SIGKILL settled by policy, shared rate, status
