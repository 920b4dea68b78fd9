//! Lists brought from other tools: which tool wrote a file (by its header),
//! what each column means, what a row's status says about the person, and
//! the cell rules shared with exports (attribute keys, times, spreadsheet
//! neutralising). No IO: `store::import` reads the file and writes.
//!
//! The mapping of every format is in `formats.rs`, one table per tool.

mod formats;
pub mod records;

pub use formats::{Format, detect};

/// What a column of the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Column {
    Email,
    Name,
    FirstName,
    LastName,
    /// The row's status in the source tool, read by the format's rule.
    Status,
    /// A JSON object whose members become attributes (listmonk, Keila).
    JsonAttributes,
    /// When the person opted in, and from which IP address.
    OptinTime,
    OptinIp,
    /// When they confirmed (double opt-in), and from which IP address.
    ConfirmTime,
    ConfirmIp,
    /// Who recorded the consent (bulletin's own exports).
    ConsentSource,
    /// An attribute, under this (snake_case) key.
    Attribute(String),
    /// bulletin's own `lists` column (`news (confirmed), offers
    /// (unsubscribed)`): who left the list being imported into stays left.
    Lists,
    /// Mailchimp's `TAGS` (`"Board","Donor"`): attribute `tags`, read by
    /// `mailchimp_tags` (`Board, Donor`).
    Tags,
    /// Not imported, and why.
    Ignored(&'static str),
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Column::Email => f.write_str("email"),
            Column::Name => f.write_str("name"),
            Column::FirstName => {
                f.write_str("name (first part) and attribute {{subscriber.first_name}}")
            }
            Column::LastName => {
                f.write_str("name (last part) and attribute {{subscriber.last_name}}")
            }
            Column::Status => f.write_str("status"),
            Column::JsonAttributes => f.write_str("attributes (each JSON member)"),
            Column::OptinTime => f.write_str("consent: opt-in time"),
            Column::OptinIp => f.write_str("consent: opt-in IP"),
            Column::ConfirmTime => f.write_str("consent: confirmation time"),
            Column::ConfirmIp => f.write_str("consent: confirmation IP"),
            Column::ConsentSource => f.write_str("consent: recorded by"),
            Column::Attribute(k) => write!(f, "attribute {{{{subscriber.{k}}}}}"),
            Column::Lists => {
                f.write_str("standing on the list imported into (who left it stays left)")
            }
            Column::Tags => {
                f.write_str("attribute {{subscriber.tags}} (Mailchimp's tags, as Board, Donor)")
            }
            Column::Ignored(why) => write!(f, "not imported ({why})"),
        }
    }
}

/// What the source says about a person: whether they may be mailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Standing {
    /// On the list: subscribed (confirmed).
    Subscribed,
    /// Left the list: recorded as unsubscribed, never mailed, never
    /// resubscribed by a later import.
    Unsubscribed,
    /// The address bounced (Mailchimp "cleaned"): never mailed again.
    Bounced,
    /// Blocklisted: the address is suppressed (by hand: only the operator
    /// lifts it).
    Suppressed,
    /// Reported the mail as spam: a complaint, as bounce processing records
    /// one (the person `complained`, the address suppressed for it; their
    /// own confirmed sign-up later lifts it). An export of someone who
    /// complained says so, and importing it keeps it.
    Complained,
    /// Known to the source but never subscribed (Mailchimp
    /// "nonsubscribed"): stored, not put on the list.
    NotSubscribed,
}

/// How a file maps onto bulletin: the format, a `Column` per header field,
/// and the standing of rows without a status column of their own.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub format: Format,
    pub columns: Vec<Column>,
    /// Every row's standing when the file says it once (a Mailchimp
    /// `unsubscribed_…` file); else `Subscribed` unless the status column
    /// says otherwise.
    pub standing: Standing,
    pub email: usize,
}

/// A header that cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no email column in the header (found: {}); name it `email` or `Email Address`", .0.join(", "))]
    NoEmailColumn(Vec<String>),
    #[error("this is not a {format} export: no {column:?} column (found: {})", .found.join(", "))]
    NotThisFormat {
        format: Format,
        column: &'static str,
        found: Vec<String>,
    },
}

impl Mapping {
    /// The mapping of `header` read as `format` (`Format::Auto` detects it
    /// from the header). `file_name` (without folders) tells which
    /// Mailchimp file a header belongs to.
    pub fn new(
        header: &[String],
        format: Format,
        file_name: Option<&str>,
    ) -> Result<Mapping, Error> {
        let format = match format {
            Format::Auto => detect(header),
            f => f,
        };
        if let Some(required) = formats::required_column(format)
            && !header.iter().any(|h| loose(h) == loose(required))
        {
            return Err(Error::NotThisFormat {
                format,
                column: required,
                found: header.to_vec(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        let columns: Vec<Column> = header
            .iter()
            .map(|h| {
                let column = formats::column(format, h);
                // A repeated email, name, status or consent column keeps
                // its first column. Attribute columns with the same key
                // (`Country`, `country`) are one attribute: the first
                // non-empty value of a row wins.
                match &column {
                    Column::Ignored(_) | Column::Attribute(_) => column,
                    c if !seen.insert(c.clone()) => Column::Ignored("repeats an earlier column"),
                    _ => column,
                }
            })
            .collect();
        let email = columns
            .iter()
            .position(|c| *c == Column::Email)
            .ok_or_else(|| Error::NoEmailColumn(header.to_vec()))?;
        let standing = formats::file_standing(format, file_name, header);
        Ok(Mapping {
            format,
            columns,
            standing,
            email,
        })
    }

    /// The standing of a row whose status column holds `status`.
    pub fn standing_of(&self, status: &str) -> Standing {
        if self.standing != Standing::Subscribed {
            return self.standing;
        }
        formats::status_standing(self.format, status)
    }
}

/// A header name reduced to lower-case letters and digits, so that
/// `Email Address`, `email_address` and `E-Mail-Address` compare equal.
pub fn loose(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The attributes an import keeps of the first and last name columns too,
/// for `{{subscriber.first_name}}` (Mailchimp's *|FNAME|*) and
/// `{{subscriber.last_name}}`; the First Name and Last Name of a
/// Mailchimp-format export.
pub const NAME_ATTRIBUTES: [&str; 2] = ["first_name", "last_name"];

/// The name made of a first and a last name column (`First Name` +
/// `Last Name`): both, else whichever is there. Mailchimp-format exports
/// split a name back along the same rule.
pub fn full_name(first: &str, last: &str) -> String {
    match (first.is_empty(), last.is_empty()) {
        (false, false) => format!("{first} {last}"),
        (false, true) => first.to_string(),
        _ => last.to_string(),
    }
}

/// An attribute key as placeholders use it: lower-case snake_case
/// (`First Name` → `first_name`, `MEMBER_RATING` → `member_rating`,
/// `favouriteColour` → `favourite_colour`). Keys that differ only in case or
/// punctuation are the same key.
pub fn attribute_key(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    let mut prev_lower = false;
    for c in name.trim().chars() {
        if c.is_alphanumeric() {
            if c.is_uppercase() && prev_lower && !key.ends_with('_') {
                key.push('_');
            }
            prev_lower = c.is_lowercase() || c.is_numeric();
            key.extend(c.to_lowercase());
        } else {
            if !key.is_empty() && !key.ends_with('_') {
                key.push('_');
            }
            prev_lower = false;
        }
    }
    while key.ends_with('_') {
        key.pop();
    }
    key
}

/// What bulletin's `lists` cell (`news (confirmed), offers
/// (unsubscribed)`) says about `list`: `Unsubscribed` when the person left
/// it, else nothing (the row's status decides).
pub fn membership_standing(lists: &str, list: &str) -> Option<Standing> {
    lists
        .split(", ")
        .filter_map(|m| m.strip_suffix(')')?.split_once(" ("))
        .any(|(slug, state)| slug == list && state == "unsubscribed")
        .then_some(Standing::Unsubscribed)
}

/// Mailchimp's tags cell (`"Board","Donor"`, quotes doubled inside a tag)
/// as a readable list: `Board, Donor`. A cell without quotes is kept.
pub fn mailchimp_tags(value: &str) -> String {
    if !value.trim_start().starts_with('"') {
        return value.trim().to_string();
    }
    let (mut tags, mut tag, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                tag.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => tags.push(std::mem::take(&mut tag)),
            c => tag.push(c),
        }
    }
    tags.push(tag);
    let tags: Vec<&str> = tags
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect();
    tags.join(", ")
}

/// Reads a time as the tools write it: `2023-01-15 10:20:30` (Mailchimp,
/// UTC), RFC 3339 (`2023-01-15T10:20:30Z`, `…+02:00`, fractions), a bare
/// date, or unix seconds. `None` for anything else.
pub fn parse_time(value: &str) -> Option<i64> {
    let value = value.trim();
    // Mailchimp's form first, read by hand: every row of its exports has
    // two, and a format string is parsed anew on every call.
    if let Some(t) = parse_mailchimp_time(value) {
        return Some(t);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Some(t.timestamp());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(value, format) {
            return Some(t.timestamp());
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(value, format) {
            return Some(t.and_utc().timestamp());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp());
    }
    value.parse::<i64>().ok().filter(|_| value.len() >= 9)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), the form of every Mailchimp time; `None`
/// for anything else, including an impossible date.
fn parse_mailchimp_time(value: &str) -> Option<i64> {
    let b = value.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let date =
        chrono::NaiveDate::from_ymd_opt(number(0, 4)? as i32, number(5, 7)?, number(8, 10)?)?;
    let time = chrono::NaiveTime::from_hms_opt(number(11, 13)?, number(14, 16)?, number(17, 19)?)?;
    Some(date.and_time(time).and_utc().timestamp())
}

/// A time as exports write it: RFC 3339 in UTC (`2023-01-15T10:20:30Z`).
pub fn format_time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// A time as Mailchimp writes it: `2023-01-15 10:20:30` (UTC).
pub fn format_mailchimp_time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// Characters that make a spreadsheet read a cell as a formula (OWASP
/// "CSV injection"): `=`, `+`, `-`, `@`, tab and carriage return.
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// True when a cell, after any leading `'`, starts a formula.
fn looks_like_formula(cell: &str) -> bool {
    cell.trim_start_matches('\'').starts_with(FORMULA_STARTS)
}

/// A cell made safe for spreadsheets: one `'` in front of a value that
/// would start a formula (or of one that already starts with `'`s before
/// such a character, so that `restore` is exact).
pub fn neutralise(cell: &str) -> std::borrow::Cow<'_, str> {
    if looks_like_formula(cell) {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

/// `neutralise` undone: the `'` it added is removed on import.
pub fn restore(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if looks_like_formula(rest) => rest,
        _ => cell,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_keys_are_snake_case() {
        assert_eq!(attribute_key("First Name"), "first_name");
        assert_eq!(attribute_key("MEMBER_RATING"), "member_rating");
        assert_eq!(attribute_key("Country"), attribute_key("country"));
        assert_eq!(attribute_key("favouriteColour"), "favourite_colour");
        assert_eq!(attribute_key(" Ville / Région "), "ville_région");
        assert_eq!(attribute_key("E-mail"), "e_mail");
    }

    #[test]
    fn memberships_keep_who_left_the_list_left() {
        let cell = "news (unsubscribed), offers (confirmed)";
        assert_eq!(
            membership_standing(cell, "news"),
            Some(Standing::Unsubscribed)
        );
        assert_eq!(membership_standing(cell, "offers"), None);
        assert_eq!(membership_standing(cell, "new"), None);
        assert_eq!(membership_standing("", "news"), None);
    }

    #[test]
    fn mailchimp_tags_lose_their_quotes() {
        assert_eq!(mailchimp_tags(r#""Board","Donor""#), "Board, Donor");
        assert_eq!(
            mailchimp_tags(r#""Board", "Big ""A"" Donor""#),
            r#"Board, Big "A" Donor"#
        );
        assert_eq!(mailchimp_tags(r#""Comma, inside""#), "Comma, inside");
        assert_eq!(mailchimp_tags("vip"), "vip");
        assert_eq!(mailchimp_tags(""), "");
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("2023-01-15 10:20:30"), Some(1673778030));
        assert_eq!(parse_time("2023-01-15T10:20:30Z"), Some(1673778030));
        assert_eq!(parse_time("2023-01-15T10:20:30.000Z"), Some(1673778030));
        assert_eq!(parse_time("2023-01-15T12:20:30+02:00"), Some(1673778030));
        assert_eq!(
            parse_time("2023-01-15 10:20:30.123+00:00"),
            Some(1673778030)
        );
        assert_eq!(parse_time("2023-01-15"), Some(1673740800));
        assert_eq!(parse_time("1673778030"), Some(1673778030));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2023-02-29 10:20:30"), None, "no such day");
        assert_eq!(parse_time("2023-01-15 24:20:30"), None, "no such hour");
        assert_eq!(parse_time("2023-01-15 1a:20:30"), None);
        assert_eq!(parse_time("2024-02-29 23:59:59"), Some(1709251199));
        assert_eq!(parse_time(&format_time(1673778030)), Some(1673778030));
        assert_eq!(
            parse_time(&format_mailchimp_time(1673778030)),
            Some(1673778030)
        );
    }

    #[test]
    fn spreadsheet_cells_round_trip() {
        for cell in [
            "=1+2", "+44 20", "-5", "@SUM(A1)", "\tx", "\rx", "'=x", "''-1",
        ] {
            let safe = neutralise(cell);
            assert!(safe.starts_with('\''), "{cell:?}");
            assert_eq!(restore(&safe), cell);
        }
        for cell in ["Ann", "'quoted'", "", "a=b"] {
            assert_eq!(neutralise(cell), cell);
            assert_eq!(restore(cell), cell);
        }
    }
}
