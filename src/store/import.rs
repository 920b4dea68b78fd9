//! Import of a list export (bulletin's own, Mailchimp, listmonk, Keila,
//! Ghost, Substack or any CSV with an email column) into one list.
//!
//! `crate::import` says what each column of the header means (`Mapping`)
//! and what a row's status says about the person (`Standing`); this module
//! reads the rows and writes them. UTF-8 with or without a BOM; `,` or `;`
//! (whichever the header line uses more); quoted fields; LF or CRLF line
//! ends; blank lines are not rows; a row with fewer fields than the header
//! reads the missing ones as empty (counted); a quote never closed costs
//! its row only (`import::records`). Every name and attribute value goes
//! through `text::clean`; attribute keys are snake_case and merge with
//! stored keys whatever their case.
//!
//! Rules, which make a re-import of the same file change nothing:
//! * Addresses are validated and folded by `address::normalize`; a row that
//!   fails is reported with its line number and the rest goes on.
//! * Stored data is never overwritten: a name or an attribute from the file
//!   only fills a gap. Within the file the first row of an address wins and
//!   later duplicates only fill gaps.
//! * Imported subscriptions are `confirmed` (the team vouches for its list),
//!   and a `pending` one is confirmed.
//! * People who unsubscribed (from this list or from all), bounced,
//!   complained or were erased (their hash is in `suppressions`) are never
//!   subscribed again: they are counted under `skipped`.
//! * Rows the source marks unsubscribed, bounced (cleaned) or blocklisted
//!   are recorded as such (`record_left`): an unsubscribed subscription to
//!   the list, and for bounced and blocklisted addresses a suppression. They
//!   are never mailed and never resubscribed by a later import. Rows never
//!   subscribed in the source are stored without a subscription.
//! * Consent records (opt-in and confirmation time and IP) are stored on the
//!   subscription, and, like other data, only fill a gap.
//!
//! Rows are written in batches (10,000 by default), each in one write
//! transaction (`begin_write_on`), so other processes get the database
//! between batches. The whole import holds one connection. A batch travels
//! as one JSON array per statement, expanded with `json_each` on SQLite and
//! `json_array_elements` on PostgreSQL (each statement's two texts side by
//! side), and lookups come back as one JSON array too: a handful of
//! statements per batch, whatever its size, and no limit on bound
//! variables. Memory is one batch plus a set of 8-byte keys of the
//! addresses seen (about 20 MB per million distinct addresses).

use super::sql::{Engine, begin_write_on, query, query_scalar};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use sqlx::AnyConnection;

use super::{Error, Result, Store, lists};
use crate::address;
use crate::import::{self, Column, Format, Mapping, Standing, records::Records};
use crate::text::{self, Field};

/// Rows per transaction unless told otherwise: large enough that the
/// per-statement costs vanish, small enough (0.1 to 0.2 s of work) that
/// another process waiting for the database hardly notices.
pub const DEFAULT_BATCH_SIZE: usize = 10_000;

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Check and count only: nothing is written, not even the list.
    pub dry_run: bool,
    /// Rows per transaction.
    pub batch_size: usize,
    /// The time recorded on every row and event.
    pub now: i64,
    /// The tool that wrote the file (`Auto`: recognised by the header).
    pub from: Format,
    /// The file's name (without folders): tells a Mailchimp
    /// `unsubscribed_…` file from a `subscribed_…` one.
    pub file_name: Option<String>,
    /// `--welcome`: people this import confirms on the list get its active
    /// welcome campaign (`store::welcome`); without it an import queues no
    /// welcome mail.
    pub welcome: bool,
}

impl ImportOptions {
    pub fn new(now: i64) -> ImportOptions {
        ImportOptions {
            dry_run: false,
            batch_size: DEFAULT_BATCH_SIZE,
            now,
            from: Format::Auto,
            file_name: None,
            welcome: false,
        }
    }
}

/// Rows not subscribed because of an earlier choice or event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Unsubscribed from this list, or from every list.
    pub unsubscribed: u64,
    pub bounced: u64,
    pub complained: u64,
    /// Erased, or otherwise in `suppressions`.
    pub suppressed: u64,
}

impl Skipped {
    pub fn total(&self) -> u64 {
        self.unsubscribed + self.bounced + self.complained + self.suppressed
    }
}

/// Rows the source says are not subscribers: recorded so that they are
/// never mailed (and never resubscribed by a later import), or stored
/// without a subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Left {
    /// Recorded as unsubscribed from the list.
    pub unsubscribed: u64,
    /// Recorded as bounced (Mailchimp "cleaned"): suppressed.
    pub bounced: u64,
    /// Blocklisted in the source: suppressed.
    pub suppressed: u64,
    /// Complained in the source: recorded as a complaint, suppressed.
    pub complained: u64,
    /// Never subscribed in the source (Mailchimp "nonsubscribed"): stored,
    /// not put on the list.
    pub not_subscribed: u64,
}

impl Left {
    pub fn total(&self) -> u64 {
        self.unsubscribed + self.bounced + self.suppressed + self.complained + self.not_subscribed
    }
}

/// What an import did (or, with `dry_run`, would do). Every data row lands
/// in exactly one of imported, updated, unchanged, left, already_left,
/// skipped, rejected and duplicates, so they add up to `read`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// The format read (detected, or as asked).
    pub format: Format,
    /// Each header field and what it became.
    pub mapping: Vec<(String, Column)>,
    /// Data rows read (the header not counted).
    pub read: u64,
    /// Newly subscribed to the list (new people, or known people new to it).
    pub imported: u64,
    /// Already on the list; the row added a name, attributes or a consent
    /// record, or confirmed a pending subscription.
    pub updated: u64,
    /// Already on the list; nothing to add.
    pub unchanged: u64,
    /// Unsubscribed, bounced, blocklisted or never subscribed in the source.
    pub left: Left,
    /// Left in the source, and recorded so here already (a file imported
    /// again): nothing to change.
    pub already_left: u64,
    pub skipped: Skipped,
    /// Rows refused (see the `RowError`s).
    pub rejected: u64,
    /// Rows repeating an address seen earlier in the file (merged into it).
    pub duplicates: u64,
    /// Rows with fewer fields than the header, read with the rest empty.
    pub short_rows: u64,
    /// The list did not exist and was (or would be) created.
    pub list_created: bool,
    /// With `welcome`: people confirmed on the list by this import, who get
    /// (or, in a dry run, would get) its welcome mail.
    pub welcomed: u64,
    pub dry_run: bool,
}

impl ImportReport {
    /// Adds the counts of another file of the same import (a Mailchimp zip).
    pub fn add(&mut self, other: &ImportReport) {
        self.read += other.read;
        self.imported += other.imported;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.left.unsubscribed += other.left.unsubscribed;
        self.left.bounced += other.left.bounced;
        self.left.suppressed += other.left.suppressed;
        self.left.complained += other.left.complained;
        self.left.not_subscribed += other.left.not_subscribed;
        self.already_left += other.already_left;
        self.skipped.unsubscribed += other.skipped.unsubscribed;
        self.skipped.bounced += other.skipped.bounced;
        self.skipped.complained += other.skipped.complained;
        self.skipped.suppressed += other.skipped.suppressed;
        self.rejected += other.rejected;
        self.duplicates += other.duplicates;
        self.short_rows += other.short_rows;
        self.list_created |= other.list_created;
        self.welcomed += other.welcomed;
    }
}

/// A refused row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct RowError {
    pub line: u64,
    pub reason: String,
}

/// When and from where a person consented to a list.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Consent {
    /// Opt-in (sign-up) time, unix seconds, and address.
    pub at: Option<i64>,
    pub ip: Option<String>,
    /// Double opt-in confirmation time and address.
    pub confirmed_at: Option<i64>,
    pub confirmed_ip: Option<String>,
    /// Who recorded it: `web`, or the tool an import came from.
    pub source: Option<String>,
}

impl Consent {
    pub fn is_empty(&self) -> bool {
        self.at.is_none()
            && self.ip.is_none()
            && self.confirmed_at.is_none()
            && self.confirmed_ip.is_none()
    }
}

/// A parsed, valid row waiting in a batch.
struct Row {
    email: String,
    hash: String,
    name: String,
    /// (key, value); empty values are dropped, the first of a key wins.
    attributes: Vec<(Arc<str>, String)>,
    standing: Standing,
    consent: Consent,
    /// The address appeared earlier in the file, in an earlier batch.
    duplicate: bool,
}

impl Row {
    /// Fills gaps from a later row of the same address.
    fn absorb(&mut self, other: Row) {
        if self.name.is_empty() {
            self.name = other.name;
        }
        for (k, v) in other.attributes {
            if !self.attributes.iter().any(|(k2, _)| *k2 == k) {
                self.attributes.push((k, v));
            }
        }
        if self.consent.is_empty() {
            self.consent = other.consent;
        }
    }
}

/// The header row read against the format: the mapping, and the attribute
/// key of each column shared by every row.
struct Header {
    mapping: Mapping,
    names: Vec<String>,
    keys: Vec<Option<Arc<str>>>,
    consent_source: String,
    /// The slug of the list imported into (for `Column::Lists`).
    list: String,
}

fn parse_header(fields: &csv::ByteRecord, options: &ImportOptions) -> Result<Header> {
    let names: Vec<String> = fields
        .iter()
        .map(|f| String::from_utf8_lossy(f).trim().to_string())
        .collect();
    let mapping = Mapping::new(&names, options.from, options.file_name.as_deref())?;
    let keys = mapping
        .columns
        .iter()
        .map(|c| match c {
            Column::Attribute(k) => Some(Arc::from(k.as_str())),
            Column::Tags => Some(Arc::from("tags")),
            _ => None,
        })
        .collect();
    Ok(Header {
        consent_source: mapping.format.to_string().to_lowercase(),
        mapping,
        names,
        keys,
        list: String::new(),
    })
}

/// `;` when the header line has more semicolons than commas outside quotes.
fn sniff_delimiter(first_line: &[u8]) -> u8 {
    let (mut commas, mut semis, mut quoted) = (0, 0, false);
    for &b in first_line {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => commas += 1,
            b';' if !quoted => semis += 1,
            b'\n' if !quoted => break,
            _ => {}
        }
    }
    if semis > commas { b';' } else { b',' }
}

/// Validates one data record into a `Row`; `short` is set when the record
/// has fewer fields than the header (the missing ones read as empty).
fn parse_row(header: &Header, record: &csv::ByteRecord, short: &mut bool) -> Result<Row, String> {
    let columns = &header.mapping.columns;
    if record.len() > columns.len() {
        return Err(format!(
            "{} fields, but the header has {}",
            record.len(),
            columns.len()
        ));
    }
    *short = record.len() < columns.len();
    let text = |i: usize| -> Result<&str, String> {
        match record.get(i) {
            None => Ok(""),
            Some(raw) => std::str::from_utf8(raw)
                .map(|t| import::restore(t.trim()))
                .map_err(|_| format!("{}: not valid UTF-8", header.names[i])),
        }
    };
    let raw = text(header.mapping.email)?;
    let email = address::normalize(raw).map_err(|e| {
        if raw.is_empty() {
            e.to_string()
        } else {
            format!("{raw:?}: {e}")
        }
    })?;
    // The one rule for typed values (`text::clean`): control characters
    // out, a value over its limit refuses the row.
    let clean = |i: usize, field: Field| {
        text::clean(text(i)?, field).map_err(|e| format!("{}: {e}", header.names[i]))
    };
    let time = |i: usize| -> Result<Option<i64>, String> {
        let v = text(i)?;
        if v.is_empty() {
            return Ok(None);
        }
        import::parse_time(v)
            .map(Some)
            .ok_or_else(|| format!("{}: cannot read {v:?} as a time", header.names[i]))
    };
    let ip = |i: usize| clean(i, Field::Value).map(|v| (!v.is_empty()).then_some(v));
    let mut row = Row {
        hash: address::hash(&email),
        email,
        name: String::new(),
        attributes: Vec::new(),
        standing: header.mapping.standing,
        consent: Consent::default(),
        duplicate: false,
    };
    let (mut first, mut last) = (String::new(), String::new());
    for (i, column) in columns.iter().enumerate() {
        match column {
            Column::Email | Column::Ignored(_) => {}
            Column::Name => row.name = clean(i, Field::Name)?,
            Column::FirstName => first = clean(i, Field::Name)?,
            Column::LastName => last = clean(i, Field::Name)?,
            Column::Status => row.standing = header.mapping.standing_of(text(i)?),
            Column::Lists if row.standing == Standing::Subscribed => {
                if let Some(left) = import::membership_standing(text(i)?, &header.list) {
                    row.standing = left;
                }
            }
            Column::Lists => {}
            Column::OptinTime => row.consent.at = time(i)?,
            Column::OptinIp => row.consent.ip = ip(i)?,
            Column::ConfirmTime => row.consent.confirmed_at = time(i)?,
            Column::ConfirmIp => row.consent.confirmed_ip = ip(i)?,
            Column::ConsentSource => row.consent.source = ip(i)?,
            Column::Attribute(_) | Column::Tags => {
                let mut v = clean(i, Field::Value)?;
                if *column == Column::Tags {
                    v = import::mailchimp_tags(&v);
                }
                let key = header.keys[i].as_ref().expect("attribute column has a key");
                if !v.is_empty() && !row.attributes.iter().any(|(k, _)| k == key) {
                    row.attributes.push((key.clone(), v));
                }
            }
            Column::JsonAttributes => json_attributes(header, i, text(i)?, &mut row.attributes)?,
        }
    }
    if row.name.is_empty() {
        row.name = import::full_name(&first, &last);
    }
    // The parts are kept too, for `{{subscriber.first_name}}` (Mailchimp's
    // *|FNAME|*) and `{{subscriber.last_name}}`.
    for (key, part) in import::NAME_ATTRIBUTES.into_iter().zip([first, last]) {
        if !part.is_empty() && !row.attributes.iter().any(|(k, _)| &**k == key) {
            row.attributes.push((key.into(), part));
        }
    }
    if row.consent.is_empty() {
        row.consent.source = None;
    } else if row.consent.source.is_none() {
        row.consent.source = Some(header.consent_source.clone());
    }
    Ok(row)
}

/// The members of a JSON object column (listmonk `attributes`, Keila
/// `Data`) as attributes: keys in snake_case, strings as they are, other
/// values as JSON text.
fn json_attributes(
    header: &Header,
    i: usize,
    value: &str,
    attributes: &mut Vec<(Arc<str>, String)>,
) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let column = &header.names[i];
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(value).map_err(|e| format!("{column}: not a JSON object ({e})"))?;
    for (k, v) in object {
        let key = import::attribute_key(&k);
        let v = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => continue,
            other => other.to_string(),
        };
        let v = text::clean(&v, Field::Value).map_err(|e| format!("{column}.{k}: {e}"))?;
        if !key.is_empty() && !v.is_empty() && !attributes.iter().any(|(k2, _)| **k2 == *key) {
            attributes.push((Arc::from(key), v));
        }
    }
    Ok(())
}

/// First 8 bytes of the hex SHA-256: the in-file duplicate key. A collision
/// (odds ~1e-8 at a million rows) only miscounts a row as a duplicate: it is
/// still written, by the same path that merges duplicates.
fn short_key(hash: &str) -> u64 {
    u64::from_str_radix(&hash[..16], 16).unwrap_or(0)
}

/// What is stored about a batch's addresses before it is written.
struct Known {
    id: i64,
    name: String,
    attributes: serde_json::Map<String, serde_json::Value>,
    status: String,
    /// The subscription to the list being imported into, if any.
    subscription: Option<String>,
    /// That subscription has a consent record.
    has_consent: bool,
}

/// A JSON array of `items`: one bound parameter that SQL expands with
/// `json_each`, however long the batch. (Bound variables are limited to
/// 32,766 a statement, and with one parameter the SQL text never changes,
/// so each statement is prepared once per import.)
fn json_array<T: serde::Serialize>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<T> = items.into_iter().collect();
    serde_json::to_string(&items).expect("strings and numbers serialize")
}

/// Reads a JSON array the database built (`json_group_array`, `json_agg`).
fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Sql(sqlx::Error::Decode(Box::new(e))))
}

async fn lookup(
    conn: &mut AnyConnection,
    list_id: i64,
    rows: &[Row],
) -> Result<(HashMap<String, Known>, HashSet<String>)> {
    let mut known = HashMap::new();
    let mut suppressed = HashSet::new();
    if rows.is_empty() {
        return Ok((known, suppressed));
    }
    // `s.email = j.value` compares with the column's NOCASE collation, so
    // it probes the unique index on email once per row of the batch. The
    // answer is one JSON array too: one row to hand over instead of
    // thousands.
    let engine = Engine::of_connection(conn);
    let found: String = query_scalar(engine.pick(
        "SELECT json_group_array(json_array(s.id, s.email, s.name, s.attributes, s.status, sub.status, \
                c.subscriber_id IS NOT NULL)) \
         FROM json_each(?1) j \
         JOIN subscribers s ON s.email = j.value \
         LEFT JOIN subscriptions sub ON sub.subscriber_id = s.id AND sub.list_id = ?2 \
         LEFT JOIN consents c ON c.subscriber_id = s.id AND c.list_id = ?2",
        "SELECT CAST(coalesce(json_agg(json_build_array(s.id, s.email, s.name, s.attributes, s.status, \
                sub.status, CAST(c.subscriber_id IS NOT NULL AS INTEGER))), '[]') AS TEXT) \
         FROM json_array_elements_text(CAST(?1 AS json)) j \
         JOIN subscribers s ON s.email = j.value \
         LEFT JOIN subscriptions sub ON sub.subscriber_id = s.id AND sub.list_id = ?2 \
         LEFT JOIN consents c ON c.subscriber_id = s.id AND c.list_id = ?2",
    ))
    .bind(json_array(rows.iter().map(|r| r.email.as_str())))
    .bind(list_id)
    .fetch_one(&mut *conn)
    .await?;
    type Found = (
        i64,
        String,
        String,
        String,
        String,
        Option<String>,
        Option<i64>,
    );
    let found: Vec<Found> = from_json(&found)?;
    for (id, email, name, attributes, status, subscription, has_consent) in found {
        let attributes = serde_json::from_str(&attributes).unwrap_or_default();
        known.insert(
            email.to_lowercase(),
            Known {
                id,
                name,
                attributes,
                status,
                subscription,
                has_consent: has_consent == Some(1),
            },
        );
    }
    let hashes: String = query_scalar(engine.pick(
        "SELECT json_group_array(x.hash) FROM json_each(?1) j JOIN suppressions x ON x.hash = j.value",
        "SELECT CAST(coalesce(json_agg(x.hash), '[]') AS TEXT) \
         FROM json_array_elements_text(CAST(?1 AS json)) j JOIN suppressions x ON x.hash = j.value",
    ))
    .bind(json_array(rows.iter().map(|r| r.hash.as_str())))
    .fetch_one(&mut *conn)
    .await?;
    let hashes: Vec<String> = from_json(&hashes)?;
    suppressed.extend(hashes);
    Ok((known, suppressed))
}

/// The fate of one row.
enum Plan {
    Skip,
    /// A new person, subscribed (or, with `None`, stored without a
    /// subscription: never subscribed in the source).
    Insert(Option<&'static str>),
    /// A new person who left in the source.
    InsertLeft(Standing),
    /// A known person, new to the list.
    Subscribe {
        id: i64,
        merged: Option<Merged>,
    },
    /// A known person on the list (pending confirmed, data or consent added).
    Update {
        id: i64,
        confirm: bool,
        merged: Option<Merged>,
    },
    /// A known person who left in the source.
    Leave {
        id: i64,
        standing: Standing,
    },
    Unchanged,
}

impl Plan {
    /// The row makes the person's subscription to the list confirmed (what
    /// `write` passes to `queue_welcome`).
    fn confirms(&self) -> bool {
        matches!(
            self,
            Plan::Insert(Some(_)) | Plan::Subscribe { .. } | Plan::Update { confirm: true, .. }
        )
    }
}

/// New name and attributes JSON of a known person.
struct Merged {
    name: String,
    attributes: String,
}

/// A stored key the same as `key` but for case or punctuation.
fn has_key(attributes: &serde_json::Map<String, serde_json::Value>, key: &str) -> bool {
    attributes.contains_key(key) || attributes.keys().any(|k| import::attribute_key(k) == key)
}

fn merge(known: &Known, row: &Row) -> Option<Merged> {
    let fill_name = known.name.is_empty() && !row.name.is_empty();
    let mut added = row
        .attributes
        .iter()
        .filter(|(k, _)| !has_key(&known.attributes, k))
        .peekable();
    if !fill_name && added.peek().is_none() {
        return None;
    }
    let mut attributes = known.attributes.clone();
    for (k, v) in added {
        attributes.insert(k.to_string(), v.clone().into());
    }
    Some(Merged {
        name: if fill_name { &row.name } else { &known.name }.clone(),
        attributes: serde_json::Value::Object(attributes).to_string(),
    })
}

fn new_attributes(row: &Row) -> String {
    let map: serde_json::Map<String, serde_json::Value> = row
        .attributes
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone().into()))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// The plan of a row the source says is subscribed, and its count.
fn plan_subscribed<'r>(
    row: &Row,
    known: Option<&Known>,
    report: &'r mut ImportReport,
) -> (Plan, &'r mut u64) {
    let Some(k) = known else {
        return (Plan::Insert(Some("confirmed")), &mut report.imported);
    };
    match (k.status.as_str(), k.subscription.as_deref()) {
        // Unsubscribed from everything (erased people have no address, so
        // they are caught by the suppression check before this).
        (status, _) if status != "active" => (Plan::Skip, &mut report.skipped.unsubscribed),
        (_, Some("unsubscribed")) => (Plan::Skip, &mut report.skipped.unsubscribed),
        (_, None) => (
            Plan::Subscribe {
                id: k.id,
                merged: merge(k, row),
            },
            &mut report.imported,
        ),
        (_, Some(sub)) => {
            let confirm = sub == "pending";
            let consent = !k.has_consent && !row.consent.is_empty();
            match merge(k, row) {
                None if !confirm && !consent => (Plan::Unchanged, &mut report.unchanged),
                merged => (
                    Plan::Update {
                        id: k.id,
                        confirm,
                        merged,
                    },
                    &mut report.updated,
                ),
            }
        }
    }
}

/// The plan of a row the source says left or never subscribed.
fn plan_left<'r>(
    row: &Row,
    known: Option<&Known>,
    report: &'r mut ImportReport,
) -> (Plan, &'r mut u64) {
    let plan = match (known, row.standing) {
        (None, Standing::NotSubscribed) => Plan::Insert(None),
        (None, standing) => Plan::InsertLeft(standing),
        (Some(_), Standing::NotSubscribed) => Plan::Unchanged,
        (Some(k), standing) => {
            // Already recorded: a re-import of the same file changes nothing.
            // (A person already bounced or complained never gets here:
            // `plan` skips them; until they are, the row has work to do.)
            let done = k.subscription.as_deref() == Some("unsubscribed")
                && match standing {
                    Standing::Bounced | Standing::Complained => false,
                    Standing::Suppressed => k.status != "active",
                    _ => true,
                };
            if done {
                return (Plan::Unchanged, &mut report.already_left);
            }
            Plan::Leave { id: k.id, standing }
        }
    };
    let bucket = match row.standing {
        Standing::Unsubscribed => &mut report.left.unsubscribed,
        Standing::Bounced => &mut report.left.bounced,
        Standing::Suppressed => &mut report.left.suppressed,
        Standing::Complained => &mut report.left.complained,
        Standing::Subscribed | Standing::NotSubscribed => &mut report.left.not_subscribed,
    };
    (plan, bucket)
}

/// Decides every row of a batch and counts the non-duplicates.
fn plan(
    rows: &[Row],
    known: &HashMap<String, Known>,
    suppressed: &HashSet<String>,
    report: &mut ImportReport,
) -> Vec<Plan> {
    rows.iter()
        .map(|row| {
            // A known status names the reason best; the suppression list
            // catches the erased (who are no longer known by address).
            let known = known.get(&row.email);
            let (plan, bucket): (Plan, &mut u64) = if let Some(k) =
                known.filter(|k| k.status == "bounced" || k.status == "complained")
            {
                if row.standing != Standing::Subscribed {
                    // The file says they left too: nothing asked of us.
                    (Plan::Skip, &mut report.already_left)
                } else if k.status == "bounced" {
                    (Plan::Skip, &mut report.skipped.bounced)
                } else {
                    (Plan::Skip, &mut report.skipped.complained)
                }
            } else if suppressed.contains(&row.hash)
                && (known.is_none() || row.standing == Standing::Subscribed)
            {
                // Erased (no longer known by address: nothing of theirs is
                // stored again), or suppressed and asked to be subscribed.
                (Plan::Skip, &mut report.skipped.suppressed)
            } else if row.standing == Standing::Subscribed {
                plan_subscribed(row, known, report)
            } else {
                plan_left(row, known, report)
            };
            if row.duplicate {
                report.duplicates += 1;
            } else {
                *bucket += 1;
            }
            plan
        })
        .collect()
}

/// Inserts the batch's new people (status per plan) in one statement and
/// returns their ids, in the order of `plans`' inserts.
async fn insert_people(
    conn: &mut AnyConnection,
    rows: &[Row],
    plans: &[Plan],
    now: i64,
) -> Result<Vec<i64>> {
    let new: Vec<(&str, &str, &str, String, &str)> = rows
        .iter()
        .zip(plans)
        .filter_map(|(r, p)| {
            let status = match p {
                Plan::Insert(_) | Plan::InsertLeft(Standing::Unsubscribed) => "active",
                Plan::InsertLeft(Standing::Bounced) => "bounced",
                Plan::InsertLeft(Standing::Complained) => "complained",
                Plan::InsertLeft(_) => "unsubscribed",
                _ => return None,
            };
            Some((
                r.email.as_str(),
                r.hash.as_str(),
                r.name.as_str(),
                new_attributes(r),
                status,
            ))
        })
        .collect();
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let emails = json_array(new.iter().map(|n| n.0));
    let engine = Engine::of_connection(conn);
    query(engine.pick(
        "INSERT INTO subscribers (email, email_hash, name, attributes, status, created_at, updated_at) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, ?2, ?2 \
         FROM json_each(?1)",
        "INSERT INTO subscribers (email, email_hash, name, attributes, status, created_at, updated_at) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, ?2, ?2 \
         FROM json_array_elements(CAST(?1 AS json))",
    ))
    .bind(json_array(new))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    // Their ids, looked up by address in one query (rows of `RETURNING`
    // would cross to us one by one), in the order of `new`: the caller
    // pairs them with its rows by position.
    let ids: String = query_scalar(engine.pick(
        "SELECT json_group_array(id) FROM (SELECT s.id FROM json_each(?1) j \
         JOIN subscribers s ON s.email = j.value ORDER BY j.key)",
        "SELECT CAST(coalesce(json_agg(s.id ORDER BY j.n), '[]') AS TEXT) \
         FROM json_array_elements_text(CAST(?1 AS json)) WITH ORDINALITY j(value, n) \
         JOIN subscribers s ON s.email = j.value",
    ))
    .bind(emails)
    .fetch_one(&mut *conn)
    .await?;
    from_json(&ids)
}

/// A subscription to write: subscriber id and consent record.
type Sub<'a> = (i64, &'a Consent);

/// Writes one planned batch inside `conn`'s transaction: a handful of
/// statements per batch, each taking the whole batch as one JSON array.
/// With `welcome`, queues the welcome mail of everyone it confirmed on the
/// list and returns how many.
async fn write(
    conn: &mut AnyConnection,
    list_id: i64,
    rows: &[Row],
    plans: &[Plan],
    now: i64,
    welcome: bool,
) -> Result<u64> {
    let mut new_ids = insert_people(conn, rows, plans, now).await?.into_iter();
    let mut subscribe: Vec<Sub> = Vec::new();
    let mut left: Vec<(i64, &str, Standing, &Consent)> = Vec::new();
    let mut merged: Vec<(i64, &str, &str)> = Vec::new();
    let mut confirm: Vec<i64> = Vec::new();
    let mut consents: Vec<Sub> = Vec::new();
    for (row, plan) in rows.iter().zip(plans) {
        match plan {
            Plan::Insert(Some(_)) => subscribe.push((new_ids.next().unwrap_or(0), &row.consent)),
            Plan::Insert(None) => {
                new_ids.next();
            }
            Plan::InsertLeft(standing) => left.push((
                new_ids.next().unwrap_or(0),
                &row.hash,
                *standing,
                &row.consent,
            )),
            Plan::Leave { id, standing } => left.push((*id, &row.hash, *standing, &row.consent)),
            Plan::Subscribe { id, merged: m } => {
                subscribe.push((*id, &row.consent));
                if let Some(m) = m {
                    merged.push((*id, &m.name, &m.attributes));
                }
            }
            Plan::Update {
                id,
                confirm: c,
                merged: m,
            } => {
                if let Some(m) = m {
                    merged.push((*id, &m.name, &m.attributes));
                }
                if *c {
                    confirm.push(*id);
                }
                if !row.consent.is_empty() {
                    consents.push((*id, &row.consent));
                }
            }
            Plan::Skip | Plan::Unchanged => {}
        }
    }
    if !merged.is_empty() {
        query(Engine::of_connection(conn).pick(
            "UPDATE subscribers SET name = j.value ->> 1, attributes = j.value ->> 2, updated_at = ?2 \
             FROM json_each(?1) j WHERE subscribers.id = j.value ->> 0",
            "UPDATE subscribers SET name = j.value ->> 1, attributes = j.value ->> 2, updated_at = ?2 \
             FROM json_array_elements(CAST(?1 AS json)) j WHERE subscribers.id = CAST(j.value ->> 0 AS BIGINT)",
        ))
        .bind(json_array(merged))
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    let confirmed: Vec<i64> = match welcome {
        true => confirm
            .iter()
            .copied()
            .chain(subscribe.iter().map(|s| s.0))
            .collect(),
        false => Vec::new(),
    };
    confirm_pending(conn, list_id, confirm, now).await?;
    insert_consents(conn, list_id, &consents).await?;
    subscribe_confirmed(conn, list_id, &subscribe, now).await?;
    record_left(conn, list_id, &left, now).await?;
    super::welcome::queue_welcome(conn, list_id, &confirmed, now).await
}

async fn confirm_pending(
    conn: &mut AnyConnection,
    list_id: i64,
    confirm: Vec<i64>,
    now: i64,
) -> Result<()> {
    if confirm.is_empty() {
        return Ok(());
    }
    let ids = json_array(confirm);
    let engine = Engine::of_connection(conn);
    query(over_json_ids!(
        engine,
        "UPDATE subscriptions SET status = 'confirmed', source = 'import', updated_at = ?3 \
         WHERE list_id = ?2 AND status = 'pending' AND subscriber_id IN (SELECT id FROM ",
        "?1",
        " ids)"
    ))
    .bind(&ids)
    .bind(list_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    query(over_json_ids!(
        engine,
        "INSERT INTO events (subscriber_id, list_id, kind, source, created_at) \
         SELECT ids.id, ?2, 'confirmed', 'import', ?3 FROM ",
        "?1",
        " ids"
    ))
    .bind(&ids)
    .bind(list_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores the consent records of a batch's subscriptions (each
/// `[id, consent]`). A record only fills a gap: one stored is never
/// overwritten.
async fn insert_consents(
    conn: &mut AnyConnection,
    list_id: i64,
    consents: &[Sub<'_>],
) -> Result<()> {
    // Flat arrays `[id, at, ip, confirmed_at, confirmed_ip, source]`: an
    // index per value, where object members would cost a path lookup each.
    let records = json_array(
        consents
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(id, c)| (id, c.at, &c.ip, c.confirmed_at, &c.confirmed_ip, &c.source)),
    );
    if records == "[]" {
        return Ok(());
    }
    query(Engine::of_connection(conn).pick(
        "INSERT INTO consents (subscriber_id, list_id, consent_at, consent_ip, confirmed_at, confirmed_ip, source) \
         SELECT value ->> 0, ?2, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5 \
         FROM json_each(?1) WHERE true \
         ON CONFLICT (subscriber_id, list_id) DO NOTHING",
        "INSERT INTO consents (subscriber_id, list_id, consent_at, consent_ip, confirmed_at, confirmed_ip, source) \
         SELECT CAST(value ->> 0 AS BIGINT), ?2, CAST(value ->> 1 AS BIGINT), value ->> 2, \
                CAST(value ->> 3 AS BIGINT), value ->> 4, value ->> 5 \
         FROM json_array_elements(CAST(?1 AS json)) \
         ON CONFLICT (subscriber_id, list_id) DO NOTHING",
    ))
    .bind(records)
    .bind(list_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn subscribe_confirmed(
    conn: &mut AnyConnection,
    list_id: i64,
    subscribe: &[Sub<'_>],
    now: i64,
) -> Result<()> {
    if subscribe.is_empty() {
        return Ok(());
    }
    // Only the ids: the consent records go in their own flat array below.
    let subs = json_array(subscribe.iter().map(|(id, _)| id));
    let engine = Engine::of_connection(conn);
    query(over_json_ids!(
        engine,
        "INSERT INTO subscriptions (subscriber_id, list_id, status, source, created_at, updated_at) \
         SELECT ids.id, ?2, 'confirmed', 'import', ?3, ?3 FROM ",
        "?1",
        " ids"
    ))
    .bind(&subs)
    .bind(list_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    query(over_json_ids!(
        engine,
        "INSERT INTO events (subscriber_id, list_id, kind, source, created_at) \
         SELECT ids.id, ?2, 'imported', 'import', ?3 FROM ",
        "?1",
        " ids"
    ))
    .bind(&subs)
    .bind(list_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    insert_consents(conn, list_id, subscribe).await
}

/// Records people who left in the source tool: the subscription to the
/// list becomes (or is created) `unsubscribed`; a bounced address also
/// marks the person bounced, a blocklisted one unsubscribed from all, a
/// complaint complained and off every other list too; all three are added
/// to `suppressions`. Each change is an event.
///
/// This is the import's one writer of unsubscribes and bounces; the
/// suppressions go through the store's one writer (`suppress_hashes`).
async fn record_left(
    conn: &mut AnyConnection,
    list_id: i64,
    left: &[(i64, &str, Standing, &Consent)],
    now: i64,
) -> Result<()> {
    if left.is_empty() {
        return Ok(());
    }
    // One reading of each standing: the event, the person's new status and
    // the suppression reason (for the store's one suppression writer).
    let mut suppressed: Vec<(&str, &str)> = Vec::new();
    let rows = json_array(left.iter().map(|(id, hash, standing, _)| {
        let (kind, person, suppression) = match standing {
            Standing::Bounced => ("bounced", Some("bounced"), Some("bounced")),
            Standing::Suppressed => ("suppressed", Some("unsubscribed"), Some("manual")),
            Standing::Complained => ("complained", Some("complained"), Some("complained")),
            _ => ("unsubscribed", None, None),
        };
        if let Some(reason) = suppression {
            suppressed.push((hash, reason));
        }
        serde_json::json!([id, null, kind, person])
    }));
    let engine = Engine::of_connection(conn);
    query(engine.pick(
        "INSERT INTO subscriptions (subscriber_id, list_id, status, source, created_at, updated_at) \
         SELECT value ->> 0, ?2, 'unsubscribed', 'import', ?3, ?3 FROM json_each(?1) WHERE true \
         ON CONFLICT (subscriber_id, list_id) DO UPDATE SET status = 'unsubscribed', source = 'import', \
             updated_at = excluded.updated_at WHERE status <> 'unsubscribed'",
        "INSERT INTO subscriptions (subscriber_id, list_id, status, source, created_at, updated_at) \
         SELECT CAST(value ->> 0 AS BIGINT), ?2, 'unsubscribed', 'import', ?3, ?3 \
         FROM json_array_elements(CAST(?1 AS json)) \
         ON CONFLICT (subscriber_id, list_id) DO UPDATE SET status = 'unsubscribed', source = 'import', \
             updated_at = excluded.updated_at WHERE subscriptions.status <> 'unsubscribed'",
    ))
    .bind(&rows)
    .bind(list_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    query(engine.pick(
        "UPDATE subscribers SET status = j.value ->> 3, updated_at = ?2 \
         FROM json_each(?1) j \
         WHERE subscribers.id = j.value ->> 0 AND j.value ->> 3 IS NOT NULL \
           AND subscribers.status IN ('active', 'unsubscribed') AND subscribers.status <> j.value ->> 3",
        "UPDATE subscribers SET status = j.value ->> 3, updated_at = ?2 \
         FROM json_array_elements(CAST(?1 AS json)) j \
         WHERE subscribers.id = CAST(j.value ->> 0 AS BIGINT) AND j.value ->> 3 IS NOT NULL \
           AND subscribers.status IN ('active', 'unsubscribed') AND subscribers.status <> j.value ->> 3",
    ))
    .bind(&rows)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    super::suppress_hashes(conn, &suppressed, now).await?;
    query(engine.pick(
        "INSERT INTO events (subscriber_id, list_id, kind, source, created_at) \
         SELECT value ->> 0, ?2, value ->> 2, 'import', ?3 FROM json_each(?1)",
        "INSERT INTO events (subscriber_id, list_id, kind, source, created_at) \
         SELECT CAST(value ->> 0 AS BIGINT), ?2, value ->> 2, 'import', ?3 \
         FROM json_array_elements(CAST(?1 AS json))",
    ))
    .bind(&rows)
    .bind(list_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let complained: Vec<i64> = left
        .iter()
        .filter(|(_, _, standing, _)| *standing == Standing::Complained)
        .map(|(id, ..)| *id)
        .collect();
    leave_every_list(conn, &complained, list_id, now).await?;
    let consents: Vec<Sub> = left.iter().map(|(id, _, _, c)| (*id, *c)).collect();
    insert_consents(conn, list_id, &consents).await
}

/// Unsubscribes the people in `ids` from every list but `list_id` (which
/// the caller has just done), each with an event, as a complaint through
/// the bounce path does: someone who marked our mail as spam wants none of
/// it, and a later sign-up (which lifts the complaint) must not bring back
/// lists they never chose again.
async fn leave_every_list(
    conn: &mut AnyConnection,
    ids: &[i64],
    list_id: i64,
    now: i64,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids = json_array(ids);
    let engine = Engine::of_connection(conn);
    query(over_json_ids!(
        engine,
        "INSERT INTO events (subscriber_id, list_id, kind, source, detail, created_at) \
         SELECT sub.subscriber_id, sub.list_id, 'unsubscribed', 'import', 'complaint', ?3 \
         FROM subscriptions sub JOIN ",
        "?1",
        " ids ON sub.subscriber_id = ids.id \
         WHERE sub.list_id <> ?2 AND sub.status <> 'unsubscribed'"
    ))
    .bind(&ids)
    .bind(list_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    query(over_json_ids!(
        engine,
        "UPDATE subscriptions SET status = 'unsubscribed', source = 'import', updated_at = ?3 \
         WHERE subscriber_id IN (SELECT id FROM ",
        "?1",
        " ids) AND list_id <> ?2 AND status <> 'unsubscribed'"
    ))
    .bind(&ids)
    .bind(list_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// Imports CSV from `input` into the list `slug` (created when missing,
    /// named after its slug), read as `options.from`. `progress` is called
    /// after each batch with the number of bytes read so far. Returns the
    /// counts and the refused rows; an `Err` is a problem with the whole
    /// file or the database.
    pub async fn import(
        &self,
        input: impl Read,
        slug: &str,
        options: &ImportOptions,
        mut progress: impl FnMut(u64),
    ) -> Result<(ImportReport, Vec<RowError>)> {
        let mut input = BufReader::with_capacity(1 << 16, input);
        let read_err = |e: std::io::Error| Error::Read {
            line: 1,
            message: e.to_string(),
        };
        let buf = input.fill_buf().map_err(read_err)?;
        let bom = buf.starts_with(b"\xEF\xBB\xBF");
        let delimiter = sniff_delimiter(if bom { &buf[3..] } else { buf });
        if bom {
            input.consume(3);
        }
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(delimiter)
            // Lines end at LF; a CR before it is trimmed with the field.
            .terminator(csv::Terminator::Any(b'\n'))
            .from_reader(Records::new(input, delimiter));
        let fatal = |e: csv::Error| Error::Read {
            line: e.position().map(|p| p.line()).unwrap_or(0),
            message: e.to_string(),
        };
        let mut record = csv::ByteRecord::new();
        if !csv.read_byte_record(&mut record).map_err(fatal)? {
            return Err(Error::EmptyFile);
        }
        csv.get_mut().claim_line();
        csv.get_mut().set_header_fields(record.len());
        let mut header = parse_header(&record, options)?;
        header.list = slug.to_string();
        lists::check_slug(slug)?;

        let mut report = ImportReport {
            dry_run: options.dry_run,
            format: header.mapping.format,
            mapping: header
                .names
                .iter()
                .cloned()
                .zip(header.mapping.columns.iter().cloned())
                .collect(),
            ..ImportReport::default()
        };
        // One connection for the whole import: its statements stay prepared
        // and its page cache stays warm from batch to batch.
        let mut conn = self.pool().acquire().await?;
        let list_id = match lists::find_unless_misspelt(&mut conn, slug).await? {
            Some(l) => l.id,
            None => {
                report.list_created = true;
                if options.dry_run {
                    -1
                } else {
                    lists::insert(&mut conn, slug, slug, "", false, false, options.now)
                        .await?
                        .id
                }
            }
        };

        let mut errors = Vec::new();
        let mut seen: HashSet<u64> = HashSet::new();
        let batch_size = options.batch_size.max(1);
        let mut batch: Vec<Row> = Vec::with_capacity(batch_size);
        let mut in_batch: HashMap<String, usize> = HashMap::with_capacity(batch_size);
        loop {
            let more = csv.read_byte_record(&mut record).map_err(fatal)?;
            for u in csv.get_mut().take_unclosed() {
                report.read += 1;
                report.rejected += 1;
                errors.push(RowError {
                    line: u.line,
                    reason: format!(
                        "a quoted field opens on this line and is never closed; row skipped, the {} lines after it read as rows",
                        u.reread
                    ),
                });
            }
            if more {
                report.read += 1;
                let line = csv.get_mut().claim_line();
                let mut short = false;
                match parse_row(&header, &record, &mut short) {
                    Err(reason) => {
                        report.rejected += 1;
                        errors.push(RowError { line, reason });
                    }
                    Ok(mut row) => {
                        report.short_rows += u64::from(short);
                        if let Some(&i) = in_batch.get(&row.email) {
                            report.duplicates += 1;
                            batch[i].absorb(row);
                        } else {
                            row.duplicate = !seen.insert(short_key(&row.hash));
                            if row.duplicate && options.dry_run {
                                // Nothing stored to merge into: just count.
                                report.duplicates += 1;
                            } else {
                                in_batch.insert(row.email.clone(), batch.len());
                                batch.push(row);
                            }
                        }
                    }
                }
            }
            if batch.len() >= batch_size || (!more && !batch.is_empty()) {
                import_batch(&mut conn, list_id, &batch, options, &mut report).await?;
                batch.clear();
                in_batch.clear();
                progress(csv.get_ref().bytes());
            }
            if !more {
                break;
            }
        }
        errors.sort_by_key(|e| e.line);
        progress(csv.get_ref().bytes());
        Ok((report, errors))
    }
}

/// Plans and writes one batch in one IMMEDIATE transaction (so the plan is
/// made on the data it changes); a dry run only looks up and plans.
async fn import_batch(
    conn: &mut AnyConnection,
    list_id: i64,
    rows: &[Row],
    options: &ImportOptions,
    report: &mut ImportReport,
) -> Result<()> {
    if options.dry_run {
        let (known, suppressed) = lookup(conn, list_id, rows).await?;
        let plans = plan(rows, &known, &suppressed, report);
        if options.welcome {
            report.welcomed += plans.iter().filter(|p| p.confirms()).count() as u64;
        }
        return Ok(());
    }
    let mut tx = begin_write_on(conn).await?;
    let (known, suppressed) = lookup(&mut tx, list_id, rows).await?;
    let plans = plan(rows, &known, &suppressed, report);
    report.welcomed += write(&mut tx, list_id, rows, &plans, options.now, options.welcome).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimiter_sniffing() {
        assert_eq!(sniff_delimiter(b"email,name\n"), b',');
        assert_eq!(sniff_delimiter(b"email;name;city\na,b"), b';');
        assert_eq!(sniff_delimiter(b"\"a;b;c\",email\n"), b',');
    }

    #[test]
    fn header_columns() {
        let options = ImportOptions::new(0);
        let h = parse_header(
            &csv::ByteRecord::from(vec![" Email ", "Name", "City", "", "status", "city"]),
            &options,
        )
        .unwrap();
        assert_eq!(h.mapping.email, 0);
        assert_eq!(h.keys[2].as_deref(), Some("city"));
        assert_eq!(
            h.keys[5].as_deref(),
            Some("city"),
            "one attribute, whatever the case"
        );
        let err = parse_header(
            &csv::ByteRecord::from(vec!["mail address", "name"]),
            &options,
        )
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "no email column in the header (found: mail address, name); name it `email` or `Email Address`"
        );
    }
}
