//! Campaign files: TOML front matter between `+++` lines, then a Markdown
//! (`.md`) or raw MJML (`.mjml`) body. Parsing only; no IO: the caller reads
//! the file and passes its name for messages.
//!
//! Every error names the file and the line and says what to fix, in the form
//! `campaigns/x.md:3: front matter: ...`.

use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;

use crate::config::line_of;

/// A problem in a campaign file, with the place to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct Error {
    pub file: String,
    pub line: usize,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The body language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Mjml,
}

impl Format {
    /// `.mjml` files are raw MJML; everything else is Markdown.
    pub fn from_file_name(name: &str) -> Format {
        if name.to_ascii_lowercase().ends_with(".mjml") {
            Format::Mjml
        } else {
            Format::Markdown
        }
    }
}

/// Front matter as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFront {
    subject: Option<String>,
    #[serde(default)]
    preheader: Option<String>,
    #[serde(default)]
    template: Option<String>,
    /// One slug or an array of slugs.
    list: Option<toml::Value>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    send_at: Option<toml::Value>,
    #[serde(default)]
    archive: Option<bool>,
    #[serde(default)]
    resend_to_new: Option<bool>,
    #[serde(default)]
    resend_until: Option<toml::Value>,
    #[serde(default)]
    trigger: Option<String>,
}

/// What sends a campaign other than `bulletin send` itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `trigger = "welcome"`: sent once to each person whose subscription
    /// to the list becomes confirmed, from `send` on; never to the people
    /// already on it.
    Welcome,
}

impl Trigger {
    /// The values `trigger` may take, as written in front matter.
    pub const ALLOWED: [&str; 1] = ["welcome"];

    pub fn parse(text: &str) -> Option<Trigger> {
        match text {
            "welcome" => Some(Trigger::Welcome),
            _ => None,
        }
    }

    /// The front matter value (and the value stored with the campaign).
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Welcome => "welcome",
        }
    }
}

/// A parsed campaign file.
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    /// The file name as given, for messages.
    pub file: String,
    /// The file stem: `2026-11-ebulletin`. Names the campaign in the store,
    /// the archive and the output files.
    pub slug: String,
    pub subject: String,
    pub preheader: Option<String>,
    pub template: String,
    /// The lists it goes to (`list = "news"` or `list = ["news", "partners"]`),
    /// in front matter order, never empty, no slug twice. A person on
    /// several gets it once, through the earliest of them.
    pub lists: Vec<String>,
    pub from: Option<String>,
    pub send_at: Option<DateTime<Utc>>,
    /// Shown in the public archive once sent (`archive = false` keeps it
    /// out; a campaign to a private list is never shown).
    pub archive: bool,
    /// `resend_to_new = true` with `resend_until = TIME`: `dispatch` sends
    /// the campaign to people who join its list later, until then.
    pub resend_until: Option<DateTime<Utc>>,
    /// `trigger = "welcome"`: a welcome mail, not a one-off send.
    pub trigger: Option<Trigger>,
    pub format: Format,
    pub body: String,
    /// 1-based line of the first body line in the file.
    pub body_line: usize,
    /// Line of each front matter key, for messages about its value.
    pub key_lines: Vec<(String, usize)>,
}

impl Campaign {
    /// Line of a front matter key (or of the front matter start).
    pub fn line_of_key(&self, key: &str) -> usize {
        self.key_lines
            .iter()
            .find(|(k, _)| k == key)
            .map_or(1, |(_, l)| *l)
    }

    /// An error at a line of this campaign's file.
    pub fn error(&self, line: usize, message: impl Into<String>) -> Error {
        Error {
            file: self.file.clone(),
            line,
            message: message.into(),
        }
    }
}

/// Default layout when the front matter names none.
pub const DEFAULT_TEMPLATE: &str = "ebulletin";

/// The largest campaign file compiled: 2 MiB. Gmail clips an email after
/// 102 KB, so a real campaign is far smaller; the limit keeps a hostile or
/// mistaken file from costing minutes and gigabytes.
pub const MAX_SOURCE_BYTES: usize = 2 * 1024 * 1024;

/// Parses a campaign file's text. `file` is used in messages and for the slug.
pub fn parse(file: &str, text: &str) -> Result<Campaign> {
    let err = |line: usize, message: String| Error {
        file: file.to_string(),
        line,
        message,
    };
    if text.len() > MAX_SOURCE_BYTES {
        return Err(err(
            1,
            format!(
                "the file is {:.1} MB, over the limit of {} MB; a campaign is read whole \
                 and mail clients clip email over 102 KB, so shorten it or split it",
                text.len() as f64 / (1024.0 * 1024.0),
                MAX_SOURCE_BYTES / (1024 * 1024)
            ),
        ));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split_inclusive('\n');
    let first = lines.next().unwrap_or("");
    if first.trim_end() != "+++" {
        return Err(err(
            1,
            "front matter: the file must start with a line `+++`, then lines such as \
             `subject = \"...\"` and `list = \"...\"`, then a closing `+++`"
                .into(),
        ));
    }
    let front_start = first.len();
    let mut offset = front_start;
    let mut front_end = None;
    for line in lines {
        if line.trim_end() == "+++" {
            front_end = Some((offset, offset + line.len()));
            break;
        }
        offset += line.len();
    }
    let Some((front_end, body_start)) = front_end else {
        return Err(err(
            1,
            "front matter: no closing `+++` line; add one after the last setting".into(),
        ));
    };
    let front_text = &text[front_start..front_end];
    let raw: RawFront = toml::from_str(front_text).map_err(|e| {
        let line = e
            .span()
            .map(|s| line_of(front_text, s.start) + 1)
            .unwrap_or(2);
        err(line, format!("front matter: {}", e.message().trim()))
    })?;
    let key_lines: Vec<(String, usize)> = front_text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let (k, _) = l.split_once('=')?;
            Some((k.trim().to_string(), i + 2))
        })
        .collect();
    let key_line = |k: &str| {
        key_lines
            .iter()
            .find(|(key, _)| key == k)
            .map_or(1, |(_, l)| *l)
    };
    let subject = match raw.subject.map(|s| s.trim().to_string()) {
        Some(s) if !s.is_empty() => s,
        Some(_) => {
            return Err(err(
                key_line("subject"),
                "front matter: `subject` is empty; write the email's subject line".into(),
            ));
        }
        None => {
            return Err(err(
                1,
                "front matter: missing `subject`; add a line `subject = \"...\"`".into(),
            ));
        }
    };
    let lists = parse_lists(raw.list.as_ref())
        .map_err(|m| err(key_line("list"), format!("front matter: {m}")))?;
    let template = raw
        .template
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_TEMPLATE.to_string());
    if !template
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(err(
            key_line("template"),
            format!(
                "front matter: template {template:?} is not a template name; use the name of a \
                 file in templates/ without `.mjml`"
            ),
        ));
    }
    let time = |key: &str, v: &toml::Value| {
        let text = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Datetime(d) => d.to_string(),
            _ => String::new(),
        };
        parse_time(&text).map_err(|m| err(key_line(key), format!("front matter: {key}: {m}")))
    };
    let send_at = raw.send_at.map(|v| time("send_at", &v)).transpose()?;
    let resend_until = match (raw.resend_to_new.unwrap_or(false), &raw.resend_until) {
        (false, None) => None,
        (true, Some(v)) => Some(time("resend_until", v)?),
        (true, None) => {
            return Err(err(
                key_line("resend_to_new"),
                "front matter: resend_to_new = true needs resend_until = TIME (until when people who join later get it)".into(),
            ));
        }
        (false, Some(_)) => {
            return Err(err(
                key_line("resend_until"),
                "front matter: resend_until needs resend_to_new = true".into(),
            ));
        }
    };
    let trigger = raw
        .trigger
        .map(|t| trigger(&t, send_at.is_some(), resend_until.is_some(), lists.len()))
        .transpose()
        .map_err(|m| err(key_line("trigger"), format!("front matter: {m}")))?;
    let body = &text[body_start..];
    let name = file.rsplit(['/', '\\']).next().unwrap_or(file);
    let slug = name
        .rsplit_once('.')
        .map_or(name, |(stem, _)| stem)
        .to_string();
    Ok(Campaign {
        file: file.to_string(),
        slug,
        subject,
        preheader: raw
            .preheader
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty()),
        template,
        lists,
        from: raw.from,
        send_at,
        archive: raw.archive.unwrap_or(true),
        resend_until,
        trigger,
        format: Format::from_file_name(file),
        body: body.to_string(),
        body_line: line_of(text, body_start),
        key_lines,
    })
}

/// The `trigger` value, checked against the keys it cannot go with: a
/// welcome mail has no send time of its own and goes to nobody already on
/// the list.
fn trigger(
    value: &str,
    send_at: bool,
    resend: bool,
    lists: usize,
) -> std::result::Result<Trigger, String> {
    let trigger = Trigger::parse(value.trim()).ok_or_else(|| {
        format!(
            "trigger {value:?} is not a trigger; the allowed value is {} (sent once to each \
             person confirmed on the list); leave `trigger` out for an ordinary campaign",
            Trigger::ALLOWED.map(|t| format!("{t:?}")).join(", ")
        )
    })?;
    if send_at {
        return Err(
            "trigger = \"welcome\" goes with no send_at: each person gets it when \
                    confirmed; remove send_at"
                .into(),
        );
    }
    if lists > 1 {
        return Err(
            "trigger = \"welcome\" goes with one list: each list has its own welcome \
             mail; write one file per list"
                .into(),
        );
    }
    if resend {
        return Err(
            "trigger = \"welcome\" goes with no resend_to_new: every person \
                    confirmed later gets it anyway; remove resend_to_new and resend_until"
                .into(),
        );
    }
    Ok(trigger)
}

/// The `list` value: one slug or an array of distinct slugs, not empty.
/// The error is the message without its place.
fn parse_lists(value: Option<&toml::Value>) -> std::result::Result<Vec<String>, String> {
    const HOW: &str = "write `list = \"SLUG\"`, or `list = [\"SLUG\", \"SLUG\"]` for several, \
                       naming the audience (see `bulletin lists`)";
    let items: Vec<&toml::Value> = match value {
        None => return Err(format!("missing `list`; {HOW}")),
        Some(toml::Value::Array(items)) if items.is_empty() => {
            return Err(format!("`list` is an empty array; {HOW}"));
        }
        Some(toml::Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
    };
    let mut lists: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let slug = match item {
            toml::Value::String(s) if !s.trim().is_empty() => s.trim().to_string(),
            toml::Value::String(_) => return Err(format!("`list` names an empty slug; {HOW}")),
            other => {
                return Err(format!(
                    "`list` holds {}, not a list slug in quotes; {HOW}",
                    other.type_str()
                ));
            }
        };
        if lists.contains(&slug) {
            return Err(format!(
                "`list` names {slug:?} twice; name each list once (a person on several lists gets the campaign once anyway)"
            ));
        }
        lists.push(slug);
    }
    Ok(lists)
}

/// `send --at`: a time as [`parse_time`] reads it, or `now` (to send a
/// scheduled campaign at once), which is `now` (the caller's clock).
pub fn parse_at(text: &str, now: DateTime<Utc>) -> std::result::Result<DateTime<Utc>, String> {
    if text.trim().eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    parse_time(text).map_err(|m| format!("{m}, or now"))
}

/// Parses a time given by a person: RFC 3339 (`2026-12-01T09:00:00+01:00`),
/// or a local date and time (`2026-12-01 09:00`, `2026-12-01T09:00:00`).
pub fn parse_time(text: &str) -> std::result::Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Ok(d) = DateTime::<FixedOffset>::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            return Local
                .from_local_datetime(&n)
                .earliest()
                .map(|d| d.with_timezone(&Utc))
                .ok_or_else(|| format!("{t:?} does not exist in the local time zone"));
        }
    }
    Err(format!(
        "{t:?} is not a time; write it as 2026-12-01T09:00:00+01:00 or 2026-12-01 09:00 (local time)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "+++\nsubject = \"Hello\"\nlist = \"news\"\npreheader = \"pre\"\n+++\n# Body\n";

    #[test]
    fn at_now_is_the_current_time_and_other_times_read_as_parse_time() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        assert_eq!(parse_at(" NOW ", now).unwrap(), now);
        assert_eq!(
            parse_at("2026-12-01T09:00:00+01:00", now).unwrap(),
            parse_time("2026-12-01T09:00:00+01:00").unwrap()
        );
        let e = parse_at("tomorrow", now).unwrap_err();
        assert!(e.ends_with(", or now"), "{e}");
    }

    #[test]
    fn parses_front_matter_and_body() {
        let c = parse("campaigns/2026-11-x.md", GOOD).unwrap();
        assert_eq!(c.subject, "Hello");
        assert_eq!(c.lists, ["news"]);
        assert_eq!(c.preheader.as_deref(), Some("pre"));
        assert_eq!(c.template, "ebulletin");
        assert_eq!(c.slug, "2026-11-x");
        assert_eq!(c.body, "# Body\n");
        assert_eq!(c.body_line, 6);
        assert_eq!(c.format, Format::Markdown);
        assert_eq!(c.line_of_key("list"), 3);
        assert!(c.archive, "archived unless the front matter says not");
    }

    #[test]
    fn list_is_one_slug_or_an_array_of_distinct_slugs() {
        let with = |list: &str| format!("+++\nsubject = \"s\"\nlist = {list}\n+++\n");
        let c = parse("x.md", &with("[\"ebulletin\", \" partners \"]")).unwrap();
        assert_eq!(c.lists, ["ebulletin", "partners"], "in order, trimmed");
        assert_eq!(parse("x.md", &with("[\"news\"]")).unwrap().lists, ["news"]);
        // An array over several lines: the error names the `list` line.
        let t = "+++\nsubject = \"s\"\nlist = [\n  \"a\",\n  \"b\",\n  \"a\",\n]\n+++\n";
        let e = parse("x.md", t).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("names \"a\" twice"), "{e}");
        for (list, says) in [
            ("[]", "empty array"),
            ("[\"a\", \"\"]", "empty slug"),
            ("\"  \"", "empty slug"),
            ("[\"a\", 3]", "holds integer"),
            ("[[\"a\"]]", "holds array"),
            ("7", "holds integer"),
        ] {
            let e = parse("c.md", &with(list)).unwrap_err();
            assert_eq!((e.file.as_str(), e.line), ("c.md", 3), "{list}: {e}");
            assert!(e.message.contains(says), "{list}: {e}");
            assert!(
                e.message.contains("list = [\"SLUG\""),
                "{list}: the fix: {e}"
            );
        }
        let e = parse("c.md", "+++\nsubject = \"s\"\n+++\n").unwrap_err();
        assert!(e.message.contains("missing `list`"), "{e}");
    }

    #[test]
    fn resend_to_new_needs_an_end_and_the_end_needs_it() {
        let t = "+++\nsubject = \"s\"\nlist = \"l\"\nresend_to_new = true\nresend_until = 2026-12-31T00:00:00Z\n+++\n";
        let c = parse("x.md", t).unwrap();
        assert_eq!(
            c.resend_until.unwrap().to_rfc3339(),
            "2026-12-31T00:00:00+00:00"
        );
        let t = "+++\nsubject = \"s\"\nlist = \"l\"\nresend_to_new = true\n+++\n";
        let e = parse("x.md", t).unwrap_err().to_string();
        assert!(
            e.starts_with("x.md:4: ") && e.contains("resend_until"),
            "{e}"
        );
        let t = "+++\nsubject = \"s\"\nlist = \"l\"\nresend_until = \"2026-12-31 09:00\"\n+++\n";
        let e = parse("x.md", t).unwrap_err().to_string();
        assert!(
            e.starts_with("x.md:4: ") && e.contains("resend_to_new = true"),
            "{e}"
        );
        assert_eq!(
            parse("x.md", "+++\nsubject = \"s\"\nlist = \"l\"\n+++\n")
                .unwrap()
                .resend_until,
            None
        );
    }

    #[test]
    fn archive_false_keeps_a_campaign_out_of_the_archive() {
        let t = "+++\nsubject = \"s\"\nlist = \"l\"\narchive = false\n+++\n";
        assert!(!parse("x.md", t).unwrap().archive);
        let t = "+++\nsubject = \"s\"\nlist = \"l\"\narchive = \"no\"\n+++\n";
        let e = parse("x.md", t).unwrap_err();
        assert_eq!(e.line, 4, "{e}");
    }

    #[test]
    fn send_at_forms() {
        let t = "+++\nsubject = \"s\"\nlist = \"l\"\nsend_at = 2026-12-01T09:00:00Z\n+++\n";
        let c = parse("x.md", t).unwrap();
        assert_eq!(c.send_at.unwrap().to_rfc3339(), "2026-12-01T09:00:00+00:00");
        let t =
            "+++\nsubject = \"s\"\nlist = \"l\"\nsend_at = \"2026-12-01T10:00:00+01:00\"\n+++\n";
        let c = parse("x.md", t).unwrap();
        assert_eq!(c.send_at.unwrap().to_rfc3339(), "2026-12-01T09:00:00+00:00");
        let t = "+++\nsubject = \"s\"\nlist = \"l\"\nsend_at = \"tomorrow\"\n+++\n";
        let e = parse("x.md", t).unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.message.contains("not a time"), "{e}");
    }

    #[test]
    fn trigger_welcome_and_its_errors() {
        let t = "+++\nsubject = \"Hi\"\nlist = \"l\"\ntrigger = \"welcome\"\n+++\n";
        assert_eq!(parse("w.md", t).unwrap().trigger, Some(Trigger::Welcome));
        assert_eq!(parse("x.md", GOOD).unwrap().trigger, None);
        let t = "+++\nsubject = \"Hi\"\nlist = [\"l\", \"m\"]\ntrigger = \"welcome\"\n+++\n";
        let e = parse("w.md", t).unwrap_err().to_string();
        assert!(e.contains("goes with one list"), "{e}");
        let t = "+++\nsubject = \"Hi\"\nlist = \"l\"\ntrigger = \"signup\"\n+++\n";
        let e = parse("w.md", t).unwrap_err().to_string();
        assert!(
            e.starts_with("w.md:4: front matter: trigger \"signup\""),
            "{e}"
        );
        assert!(e.contains("\"welcome\""), "names the allowed value: {e}");
        let t = "+++\nsubject = \"Hi\"\nlist = \"l\"\n\ntrigger = 1\n+++\n";
        let e = parse("w.md", t).unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        let t = "+++\nsubject = \"Hi\"\nlist = \"l\"\nsend_at = 2026-12-01T09:00:00Z\ntrigger = \"welcome\"\n+++\n";
        let e = parse("w.md", t).unwrap_err().to_string();
        assert!(
            e.starts_with("w.md:5: ") && e.contains("remove send_at"),
            "{e}"
        );
        let t = "+++\nsubject = \"Hi\"\nlist = \"l\"\ntrigger = \"welcome\"\nresend_to_new = true\nresend_until = 2026-12-31T00:00:00Z\n+++\n";
        let e = parse("w.md", t).unwrap_err().to_string();
        assert!(
            e.starts_with("w.md:4: ") && e.contains("resend_to_new"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_line_and_fix() {
        let e = parse("c.md", "# no front matter\n").unwrap_err();
        assert_eq!(
            e.to_string().split(':').take(2).collect::<Vec<_>>(),
            ["c.md", "1"]
        );
        let e = parse("c.md", "+++\nsubject = \"s\"\n").unwrap_err();
        assert!(e.message.contains("closing `+++`"), "{e}");
        let e = parse("c.md", "+++\nlist = \"l\"\n\nsubject = oops\n+++\n").unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        let e = parse("c.md", "+++\nlist = \"l\"\n+++\n").unwrap_err();
        assert!(e.message.contains("missing `subject`"), "{e}");
        let e = parse(
            "c.md",
            "+++\nsubject = \"s\"\nlist = \"l\"\ncolour = 1\n+++\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("colour"), "{e}");
    }
}
