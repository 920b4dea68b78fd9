//! CSV import into one list.
//!
//! The file has a header row with a required `email` column (any case); a
//! `name` column is the name, a `status` column is ignored (exports carry
//! one for information; an import never sets anyone's status), and every
//! other column becomes an attribute. UTF-8 with or without a BOM; `,` or
//! `;` (whichever the header line uses more); quoted fields; LF or CRLF
//! line ends; blank lines (all fields empty) are not rows.
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
//!
//! Rows are written in batches (10,000 by default), each in one IMMEDIATE
//! transaction, so other processes get the database between batches. The
//! whole import holds one connection. A batch travels to SQLite as one JSON
//! array per statement, expanded with `json_each`, and lookups come back as
//! one JSON array too: a handful of statements per batch, whatever its size,
//! and no limit on bound variables. Memory is one batch plus a set of 8-byte
//! keys of the addresses seen (about 20 MB per million distinct addresses).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};

use sqlx::{Connection as _, SqliteConnection};

use super::{Error, Result, Store, lists};
use crate::address;
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
}

impl ImportOptions {
    pub fn new(now: i64) -> ImportOptions {
        ImportOptions {
            dry_run: false,
            batch_size: DEFAULT_BATCH_SIZE,
            now,
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

/// What an import did (or, with `dry_run`, would do). Every data row lands
/// in exactly one of imported, updated, unchanged, skipped, rejected and
/// duplicates, so they add up to `read`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Data rows read (the header not counted).
    pub read: u64,
    /// Newly subscribed to the list (new people, or known people new to it).
    pub imported: u64,
    /// Already on the list; the row added a name or attributes, or
    /// confirmed a pending subscription.
    pub updated: u64,
    /// Already on the list; nothing to add.
    pub unchanged: u64,
    pub skipped: Skipped,
    /// Rows refused (see the `RowError`s).
    pub rejected: u64,
    /// Rows repeating an address seen earlier in the file (merged into it).
    pub duplicates: u64,
    /// The list did not exist and was (or would be) created.
    pub list_created: bool,
    pub dry_run: bool,
}

/// A refused row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct RowError {
    pub line: u64,
    pub reason: String,
}

/// A parsed, valid row waiting in a batch.
struct Row {
    email: String,
    hash: String,
    name: String,
    /// (column index, value); empty values are dropped.
    attributes: Vec<(usize, String)>,
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
    }
}

/// The header: where the email and name are, and the attribute names.
struct Header {
    email: usize,
    name: Option<usize>,
    /// Attribute name per column; `None` for email, name, status and
    /// unnamed columns.
    keys: Vec<Option<String>>,
}

fn parse_header(fields: &csv::ByteRecord) -> Result<Header> {
    let names: Vec<String> = fields
        .iter()
        .map(|f| String::from_utf8_lossy(f).trim().to_string())
        .collect();
    let find = |want: &str| names.iter().position(|n| n.eq_ignore_ascii_case(want));
    let email = find("email").ok_or_else(|| Error::NoEmailColumn(names.clone()))?;
    let name = find("name");
    let status = find("status");
    let mut seen = HashSet::new();
    let keys = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let special = i == email || Some(i) == name || Some(i) == status;
            // A repeated column name keeps its first column.
            (!special && !n.is_empty() && seen.insert(n.clone())).then(|| n.clone())
        })
        .collect();
    Ok(Header { email, name, keys })
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

/// Validates one data record into a `Row`.
fn parse_row(header: &Header, record: &csv::ByteRecord) -> Result<Row, String> {
    if record.len() != header.keys.len() {
        return Err(format!(
            "{} fields, but the header has {}",
            record.len(),
            header.keys.len()
        ));
    }
    let text = |i: usize| {
        std::str::from_utf8(&record[i])
            .map(str::trim)
            .map_err(|_| format!("column {} is not valid UTF-8", i + 1))
    };
    let raw = text(header.email)?;
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
        let column = if field == Field::Name {
            "name"
        } else {
            header.keys[i].as_deref().unwrap_or_default()
        };
        text::clean(text(i)?, field).map_err(|e| format!("{column}: {e}"))
    };
    let name = match header.name {
        Some(i) => clean(i, Field::Name)?,
        None => String::new(),
    };
    let mut attributes = Vec::new();
    for (i, key) in header.keys.iter().enumerate() {
        if key.is_some() {
            let v = clean(i, Field::Value)?;
            if !v.is_empty() {
                attributes.push((i, v));
            }
        }
    }
    Ok(Row {
        hash: address::hash(&email),
        email,
        name,
        attributes,
        duplicate: false,
    })
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
}

/// A JSON array of `items`: one bound parameter that SQL expands with
/// `json_each`, however long the batch. (Bound variables are limited to
/// 32,766 a statement, and with one parameter the SQL text never changes,
/// so each statement is prepared once per import.)
fn json_array<T: serde::Serialize>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<T> = items.into_iter().collect();
    serde_json::to_string(&items).expect("strings and numbers serialize")
}

/// Reads a JSON array that SQLite built (`json_group_array`).
fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Sql(sqlx::Error::Decode(Box::new(e))))
}

async fn lookup(
    conn: &mut SqliteConnection,
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
    let found: String = sqlx::query_scalar(
        "SELECT json_group_array(json_array(s.id, s.email, s.name, s.attributes, s.status, sub.status)) \
         FROM json_each(?1) j \
         JOIN subscribers s ON s.email = j.value \
         LEFT JOIN subscriptions sub ON sub.subscriber_id = s.id AND sub.list_id = ?2",
    )
    .bind(json_array(rows.iter().map(|r| r.email.as_str())))
    .bind(list_id)
    .fetch_one(&mut *conn)
    .await?;
    let found: Vec<(i64, String, String, String, String, Option<String>)> = from_json(&found)?;
    for (id, email, name, attributes, status, subscription) in found {
        let attributes = serde_json::from_str(&attributes).unwrap_or_default();
        known.insert(
            email.to_lowercase(),
            Known {
                id,
                name,
                attributes,
                status,
                subscription,
            },
        );
    }
    let hashes: String = sqlx::query_scalar(
        "SELECT json_group_array(x.hash) FROM json_each(?1) j JOIN suppressions x ON x.hash = j.value",
    )
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
    /// A new person, subscribed.
    Insert,
    /// A known person, new to the list.
    Subscribe {
        id: i64,
        merged: Option<Merged>,
    },
    /// A known person on the list (pending confirmed, or data added).
    Update {
        id: i64,
        confirm: bool,
        merged: Option<Merged>,
    },
    Unchanged,
}

/// New name and attributes JSON of a known person.
struct Merged {
    name: String,
    attributes: String,
}

fn merge(known: &Known, row: &Row, header: &Header) -> Option<Merged> {
    let fill_name = known.name.is_empty() && !row.name.is_empty();
    let mut added = row
        .attributes
        .iter()
        .map(|(i, v)| (header.keys[*i].as_deref().unwrap_or_default(), v))
        .filter(|(k, _)| !known.attributes.contains_key(*k))
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

fn new_attributes(row: &Row, header: &Header) -> String {
    let map: serde_json::Map<String, serde_json::Value> = row
        .attributes
        .iter()
        .map(|(i, v)| {
            (
                header.keys[*i].clone().unwrap_or_default(),
                v.clone().into(),
            )
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Decides every row of a batch and counts the non-duplicates.
fn plan(
    rows: &[Row],
    header: &Header,
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
                if k.status == "bounced" {
                    (Plan::Skip, &mut report.skipped.bounced)
                } else {
                    (Plan::Skip, &mut report.skipped.complained)
                }
            } else if suppressed.contains(&row.hash) {
                (Plan::Skip, &mut report.skipped.suppressed)
            } else if let Some(k) = known {
                match (k.status.as_str(), k.subscription.as_deref()) {
                    // Unsubscribed from everything (erased people have no
                    // address, so they are caught by the suppression above).
                    (status, _) if status != "active" => {
                        (Plan::Skip, &mut report.skipped.unsubscribed)
                    }
                    (_, Some("unsubscribed")) => (Plan::Skip, &mut report.skipped.unsubscribed),
                    (_, None) => (
                        Plan::Subscribe {
                            id: k.id,
                            merged: merge(k, row, header),
                        },
                        &mut report.imported,
                    ),
                    (_, Some(sub)) => {
                        let confirm = sub == "pending";
                        match merge(k, row, header) {
                            None if !confirm => (Plan::Unchanged, &mut report.unchanged),
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
            } else {
                (Plan::Insert, &mut report.imported)
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

/// Writes one planned batch inside `conn`'s transaction: a handful of
/// statements per batch, each taking the whole batch as one JSON array.
async fn write(
    conn: &mut SqliteConnection,
    list_id: i64,
    header: &Header,
    rows: &[Row],
    plans: &[Plan],
    now: i64,
) -> Result<()> {
    // New people, all at once; then their ids, looked up by address in
    // one query (rows of `RETURNING` would cross to us one by one).
    let new: Vec<(&str, &str, &str, String)> = rows
        .iter()
        .zip(plans)
        .filter(|(_, p)| matches!(p, Plan::Insert))
        .map(|(r, _)| {
            let attributes = new_attributes(r, header);
            (
                r.email.as_str(),
                r.hash.as_str(),
                r.name.as_str(),
                attributes,
            )
        })
        .collect();
    let mut subscribe: Vec<i64> = Vec::new();
    if !new.is_empty() {
        let emails = json_array(new.iter().map(|n| n.0));
        sqlx::query(
            "INSERT INTO subscribers (email, email_hash, name, attributes, status, created_at, updated_at) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, 'active', ?2, ?2 \
             FROM json_each(?1)",
        )
        .bind(json_array(new))
        .bind(now)
        .execute(&mut *conn)
        .await?;
        let ids: String = sqlx::query_scalar(
            "SELECT json_group_array(s.id) FROM json_each(?1) j JOIN subscribers s ON s.email = j.value",
        )
        .bind(emails)
        .fetch_one(&mut *conn)
        .await?;
        subscribe = from_json(&ids)?;
    }
    let mut merged: Vec<(i64, &str, &str)> = Vec::new();
    let mut confirm: Vec<i64> = Vec::new();
    for plan in plans {
        match plan {
            Plan::Subscribe { id, merged: m } => {
                subscribe.push(*id);
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
            }
            Plan::Skip | Plan::Insert | Plan::Unchanged => {}
        }
    }
    if !merged.is_empty() {
        sqlx::query(
            "UPDATE subscribers SET name = j.value ->> 1, attributes = j.value ->> 2, updated_at = ?2 \
             FROM json_each(?1) j WHERE subscribers.id = j.value ->> 0",
        )
        .bind(json_array(merged))
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    if !confirm.is_empty() {
        let ids = json_array(confirm);
        sqlx::query(
            "UPDATE subscriptions SET status = 'confirmed', source = 'import', updated_at = ?3 \
             WHERE list_id = ?2 AND status = 'pending' \
               AND subscriber_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(&ids)
        .bind(list_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO events (subscriber_id, list_id, kind, source, created_at) \
             SELECT value, ?2, 'confirmed', 'import', ?3 FROM json_each(?1)",
        )
        .bind(&ids)
        .bind(list_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    if !subscribe.is_empty() {
        let ids = json_array(subscribe);
        sqlx::query(
            "INSERT INTO subscriptions (subscriber_id, list_id, status, source, created_at, updated_at) \
             SELECT value, ?2, 'confirmed', 'import', ?3, ?3 FROM json_each(?1)",
        )
        .bind(&ids)
        .bind(list_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO events (subscriber_id, list_id, kind, source, created_at) \
             SELECT value, ?2, 'imported', 'import', ?3 FROM json_each(?1)",
        )
        .bind(&ids)
        .bind(list_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl Store {
    /// Imports CSV from `input` into the list `slug` (created when missing,
    /// named after its slug). `progress` is called after each batch with the
    /// number of bytes read so far. Returns the counts and the refused rows;
    /// an `Err` is a problem with the whole file or the database.
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
            // (With CR as a terminator too, csv reports CRLF files' line
            // numbers one short.)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_reader(input);
        let fatal = |e: csv::Error| Error::Read {
            line: e.position().map(|p| p.line()).unwrap_or(0),
            message: e.to_string(),
        };
        let mut record = csv::ByteRecord::new();
        if !csv.read_byte_record(&mut record).map_err(fatal)? {
            return Err(Error::EmptyFile);
        }
        let header = parse_header(&record)?;
        lists::check_slug(slug)?;

        let mut report = ImportReport {
            dry_run: options.dry_run,
            ..ImportReport::default()
        };
        // One connection for the whole import: its statements stay prepared
        // and its page cache stays warm from batch to batch.
        let mut conn = self.pool().acquire().await?;
        let list_id = match lists::find(&mut conn, slug).await? {
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
            // A blank line (or a lone CR) is no row.
            let blank = more && record.iter().all(|f| f.trim_ascii().is_empty());
            if more && !blank {
                report.read += 1;
                let line = record.position().map(|p| p.line()).unwrap_or(0);
                match parse_row(&header, &record) {
                    Err(reason) => {
                        report.rejected += 1;
                        errors.push(RowError { line, reason });
                    }
                    Ok(mut row) => {
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
                import_batch(&mut conn, list_id, &header, &batch, options, &mut report).await?;
                batch.clear();
                in_batch.clear();
                progress(csv.position().byte());
            }
            if !more {
                break;
            }
        }
        progress(csv.position().byte());
        Ok((report, errors))
    }
}

/// Plans and writes one batch in one IMMEDIATE transaction (so the plan is
/// made on the data it changes); a dry run only looks up and plans.
async fn import_batch(
    conn: &mut SqliteConnection,
    list_id: i64,
    header: &Header,
    rows: &[Row],
    options: &ImportOptions,
    report: &mut ImportReport,
) -> Result<()> {
    if options.dry_run {
        let (known, suppressed) = lookup(conn, list_id, rows).await?;
        plan(rows, header, &known, &suppressed, report);
        return Ok(());
    }
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let (known, suppressed) = lookup(&mut tx, list_id, rows).await?;
    let plans = plan(rows, header, &known, &suppressed, report);
    write(&mut tx, list_id, header, rows, &plans, options.now).await?;
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
        let h = parse_header(&csv::ByteRecord::from(vec![
            " Email ", "Name", "city", "", "status", "city",
        ]))
        .unwrap();
        assert_eq!(h.email, 0);
        assert_eq!(h.name, Some(1));
        assert_eq!(
            h.keys,
            vec![None, None, Some("city".to_string()), None, None, None]
        );
        let err = parse_header(&csv::ByteRecord::from(vec!["mail", "name"]))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "no \"email\" column in the header (found: mail, name)"
        );
    }
}
