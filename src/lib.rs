//! bulletin: a newsletter composer and dispatcher.
//!
//! Campaign files (front matter + Markdown, or MJML) are poured into MJML
//! layouts, compiled once per campaign with mrml, personalised per recipient
//! and sent over SMTP to the subscribers kept in SQLite. See ARCHITECTURE.md
//! for which module owns what.

pub mod address; // email addresses: validation, canonical form, suppression hash (no IO)
pub mod assets; // templates: embedded defaults, overridden by files in templates/
pub mod bounce; // what comes back: bounces, complaints, auto-replies -> `Report` (no IO)
pub mod campaign; // campaign files: front matter + body, parsed (no IO)
pub mod cli; // clap `Cli`: raw arguments only
pub mod commands; // one function per CLI command; the only place that prints
pub mod compose; // compiled campaign + recipient -> MIME message (no IO)
pub mod config; // `Config`: defaults < file < env < flags
pub mod dispatch; // sending: lease, delivery log, SMTP/outbox workers; the only transport holder
pub mod dkim; // DKIM: signs the final message bytes, prints the DNS record (no IO)
pub mod imap; // the IMAP bounce mailbox: connect, unseen messages, file or keep (no bulletin rules)
pub mod import; // lists from other tools: formats, column mapping, cell rules (no IO)
pub mod links; // signed tokens for links and VERP addresses (no IO)
pub mod redact; // passwords out of URLs before they are shown (no IO)
pub mod render; // handlebars -> MJML -> HTML (mrml) + text part (no IO)
pub mod store; // the subscriber store: all SQL (sqlx, SQLite), schema in subscribers.sql
pub mod suggest; // "did you mean": the closest known list slug or placeholder key (no IO)
pub mod text; // names and attribute values people type: control characters out, length limits (no IO)
pub mod web; // axum: preview server (and later the subscriber pages)
