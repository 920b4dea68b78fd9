//! Compilation, once per campaign: front matter + Markdown -> handlebars
//! layout -> MJML -> HTML (mrml), plus the plain-text part. The result is a
//! [`Compiled`] campaign whose subject, HTML and text are per-recipient
//! [`Template`]s: literal runs and field slots, so personalising one message
//! is a few string copies, never a second MJML compile. No IO.
//!
//! Recipient placeholders (`{{subscriber.name}}`, `{{unsubscribe_url}}`, ...)
//! are swapped for alphanumeric sentinels before Markdown, handlebars and
//! mrml see the text (alphanumerics pass through all three untouched, even
//! inside URLs), and the rendered output is split at the sentinels.

pub mod html_text;
pub mod markdown;
pub mod nesting;
pub mod placeholders;
pub mod urls;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use handlebars::Handlebars;
use serde_json::{Value, json};

use crate::assets::Templates;
use crate::campaign::{Campaign, Error, Format, Result};
use crate::config::{Organisation, line_of};
use nesting::MAX_NESTING;

/// A deliverability warning; an error under `--strict`.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    /// Line in the campaign file, when the problem is there.
    pub line: Option<usize>,
    pub message: String,
}

impl Warning {
    pub fn at(line: usize, message: impl Into<String>) -> Warning {
        Warning {
            line: Some(line),
            message: message.into(),
        }
    }
    pub fn general(message: impl Into<String>) -> Warning {
        Warning {
            line: None,
            message: message.into(),
        }
    }
}

/// Gmail clips messages whose HTML is larger than this.
pub const GMAIL_CLIP_BYTES: usize = 102_000;

/// A value filled in per recipient.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Field {
    Name { fallback: String },
    Email,
    Attribute { key: String, fallback: String },
    UnsubscribeUrl,
    PreferencesUrl,
    ArchiveUrl,
}

impl Field {
    /// Parses the inside of `{{ ... }}`; `None` for names no recipient has.
    /// `{{subscriber.name | "friend"}}` gives a fallback for empty values.
    fn parse(inner: &str) -> Option<Field> {
        let (path, fallback) = match inner.split_once('|') {
            Some((p, f)) => (p.trim(), f.trim().trim_matches('"').to_string()),
            None => (inner.trim(), String::new()),
        };
        Some(match path {
            "subscriber.name" => Field::Name { fallback },
            "subscriber.email" => Field::Email,
            "unsubscribe_url" => Field::UnsubscribeUrl,
            "preferences_url" => Field::PreferencesUrl,
            "archive_url" => Field::ArchiveUrl,
            p => {
                let key = p.strip_prefix("subscriber.")?;
                if key.is_empty()
                    || !key
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
                {
                    return None;
                }
                Field::Attribute {
                    key: key.to_string(),
                    fallback,
                }
            }
        })
    }
}

/// One recipient's values.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    pub email: &'a str,
    pub name: &'a str,
    /// Subscriber attributes (a JSON object), if any.
    pub attributes: Option<&'a serde_json::Map<String, Value>>,
    pub unsubscribe_url: &'a str,
    pub preferences_url: &'a str,
    pub archive_url: &'a str,
}

impl Recipient<'_> {
    /// The archive's stand-in: every personal field blank.
    pub const BLANK: Recipient<'static> = Recipient {
        email: "",
        name: "",
        attributes: None,
        unsubscribe_url: "",
        preferences_url: "",
        archive_url: "",
    };

    fn value<'v>(&'v self, field: &'v Field, scratch: &'v mut String) -> &'v str {
        let or = |v: &'v str, fallback: &'v str| if v.trim().is_empty() { fallback } else { v };
        match field {
            Field::Name { fallback } => or(self.name, fallback),
            Field::Email => self.email,
            Field::UnsubscribeUrl => self.unsubscribe_url,
            Field::PreferencesUrl => self.preferences_url,
            Field::ArchiveUrl => self.archive_url,
            Field::Attribute { key, fallback } => match self.attributes.and_then(|a| a.get(key)) {
                Some(Value::String(s)) => or(s, fallback),
                Some(Value::Null) | None => fallback,
                Some(other) => {
                    scratch.clear();
                    let _ = write!(scratch, "{other}");
                    scratch
                }
            },
        }
    }
}

/// How field values are written into a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    Html,
    None,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum Part {
    Literal(Box<str>),
    Field(usize),
}

/// A compiled per-recipient template: literal runs and field slots.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Template {
    parts: Vec<Part>,
}

const SENTINEL_OPEN: &str = "QQbltn";
const SENTINEL_CLOSE: &str = "nltbQQ";

fn sentinel(i: usize) -> String {
    format!("{SENTINEL_OPEN}{i}{SENTINEL_CLOSE}")
}

impl Template {
    /// Splits rendered text at the sentinels.
    fn parse(text: &str) -> Template {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(SENTINEL_OPEN) {
            let after = &rest[at + SENTINEL_OPEN.len()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && after[digits..].starts_with(SENTINEL_CLOSE) {
                if at > 0 {
                    parts.push(Part::Literal(rest[..at].into()));
                }
                parts.push(Part::Field(after[..digits].parse().expect("digits")));
                rest = &after[digits + SENTINEL_CLOSE.len()..];
            } else {
                parts.push(Part::Literal(rest[..at + SENTINEL_OPEN.len()].into()));
                rest = after;
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.into()));
        }
        // Merge adjacent literals (left by a false sentinel match).
        let mut merged: Vec<Part> = Vec::with_capacity(parts.len());
        for p in parts {
            match (merged.last_mut(), p) {
                (Some(Part::Literal(a)), Part::Literal(b)) => *a = format!("{a}{b}").into(),
                (_, p) => merged.push(p),
            }
        }
        Template { parts: merged }
    }

    /// Appends this template filled for `r` to `out`.
    pub fn render_into(&self, fields: &[Field], r: &Recipient, escape: Escape, out: &mut String) {
        let mut scratch = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field(i) => {
                    let v = r.value(&fields[*i], &mut scratch);
                    match escape {
                        Escape::Html => escape_html_into(v, out),
                        Escape::None => out.push_str(v),
                    }
                }
            }
        }
    }

    /// Field indexes this template uses.
    fn uses(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(i) => Some(*i),
            Part::Literal(_) => None,
        })
    }

    /// Total length of the literal runs.
    pub fn literal_len(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.len(),
                Part::Field(_) => 0,
            })
            .sum()
    }
}

/// Escapes `& < > " '` for HTML text and attribute values.
pub fn escape_html_into(s: &str, out: &mut String) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&#39;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_html_into(s, &mut out);
    out
}

/// The compiled campaign. Serialised, it is what `send` freezes in the
/// database (without the MJML and the warnings).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Compiled {
    pub subject: Template,
    pub html: Template,
    pub text: Template,
    pub fields: Vec<Field>,
    /// The campaign-file line where each field is first written (`None`:
    /// only the layout uses it), for `placeholders::check`.
    #[serde(skip)]
    pub lines: Vec<Option<usize>>,
    /// The MJML that mrml compiled, for `build --mjml`.
    #[serde(skip)]
    pub mjml: String,
    #[serde(skip)]
    pub warnings: Vec<Warning>,
}

/// One recipient's message bodies.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Personalised {
    pub subject: String,
    pub html: String,
    pub text: String,
}

impl Compiled {
    /// Fills the templates for `r`, reusing `out`'s buffers.
    pub fn personalise_into(&self, r: &Recipient, out: &mut Personalised) {
        out.subject.clear();
        out.html.clear();
        out.text.clear();
        self.subject
            .render_into(&self.fields, r, Escape::None, &mut out.subject);
        self.html
            .render_into(&self.fields, r, Escape::Html, &mut out.html);
        self.text
            .render_into(&self.fields, r, Escape::None, &mut out.text);
    }

    pub fn personalise(&self, r: &Recipient) -> Personalised {
        let mut out = Personalised::default();
        self.personalise_into(r, &mut out);
        out
    }
}

/// Line numbers of byte offsets in one text, each in O(log n): a campaign
/// with thousands of articles asks for thousands of them, and counting
/// newlines from the start each time made compiling quadratic.
pub(crate) struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> LineIndex {
        LineIndex {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// The 1-based line of byte offset `at`, as `config::line_of` counts.
    pub(crate) fn line(&self, at: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < at) + 1
    }
}

/// Compile-time settings that are not in the campaign file.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub organisation: &'a Organisation,
    /// What relative image and link URLs resolve against (`assets_url`,
    /// `base_url`); a URL none resolves is an error.
    pub bases: urls::Bases<'a>,
}

/// Fields found so far; each distinct placeholder gets one slot.
#[derive(Default)]
struct FieldTable {
    fields: Vec<Field>,
    /// The campaign-file line of each field's first use, when it has one.
    lines: Vec<Option<usize>>,
    /// field -> its slot, so thousands of distinct placeholders stay linear.
    slots: HashMap<Field, usize>,
}

impl FieldTable {
    fn slot(&mut self, f: Field) -> String {
        sentinel(self.index(f))
    }

    /// The slot of `f`, recording `line` as where it is first written.
    fn slot_at(&mut self, f: Field, line: usize) -> String {
        let i = self.index(f);
        self.lines[i].get_or_insert(line);
        sentinel(i)
    }

    fn index(&mut self, f: Field) -> usize {
        let next = self.fields.len();
        let i = *self.slots.entry(f.clone()).or_insert(next);
        if i == next {
            self.fields.push(f);
            self.lines.push(None);
        }
        i
    }

    /// Replaces `{{ ... }}` placeholders in `text` by sentinels; unknown ones
    /// are dropped with a warning at their line (`first_line` is the line of
    /// `text`'s start).
    fn substitute(&mut self, text: &str, first_line: usize, warnings: &mut Vec<Warning>) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        let mut consumed = 0;
        let mut lines: Option<LineIndex> = None;
        while let Some(open) = rest.find("{{") {
            let Some(close) = rest[open..].find("}}") else {
                break;
            };
            let inner = &rest[open + 2..open + close];
            if inner.contains('\n') {
                out.push_str(&rest[..open + 2]);
                consumed += open + 2;
                rest = &rest[open + 2..];
                continue;
            }
            out.push_str(&rest[..open]);
            let inner_clean = inner.trim_matches(|c| c == '{' || c == '}').trim();
            let line = first_line
                + lines
                    .get_or_insert_with(|| LineIndex::new(text))
                    .line(consumed + open)
                - 1;
            match Field::parse(inner_clean) {
                Some(f) => out.push_str(&self.slot_at(f, line)),
                None => warnings.push(Warning::at(
                    line,
                    match Field::parse(&format!("subscriber.{inner_clean}")) {
                        Some(_) => format!(
                            "placeholder {{{{{inner_clean}}}}} names nothing and will be empty; \
                             did you mean {{{{subscriber.{inner_clean}}}}}?"
                        ),
                        None => format!(
                            "placeholder {{{{{inner_clean}}}}} names nothing a recipient has and will \
                             be empty; use subscriber.name, subscriber.email, subscriber.<attribute>, \
                             unsubscribe_url, preferences_url or archive_url"
                        ),
                    },
                )),
            }
            let end = open + close + 2;
            consumed += end;
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }
}

/// Compiles campaigns with a set of templates.
pub struct Renderer {
    hbs: Handlebars<'static>,
    layouts: Vec<String>,
    /// Attribute keys the layouts and partials name as `subscriber.KEY`:
    /// offered to handlebars as slots, like `subscriber.name`.
    layout_keys: Vec<String>,
}

impl Renderer {
    /// Registers the layouts and partials; a template that does not parse is
    /// an error naming its file and line.
    pub fn new(templates: &Templates) -> Result<Renderer> {
        let mut hbs = Handlebars::new();
        hbs.register_escape_fn(escape_html);
        hbs.set_prevent_indent(true);
        for t in &templates.partials {
            hbs.register_partial(&t.name, &t.source)
                .map_err(|e| template_error(&t.origin, &e))?;
        }
        for t in &templates.layouts {
            hbs.register_template_string(&t.name, &t.source)
                .map_err(|e| template_error(&t.origin, &e))?;
        }
        Ok(Renderer {
            hbs,
            layouts: templates.layouts.iter().map(|t| t.name.clone()).collect(),
            layout_keys: layout_keys(templates),
        })
    }

    /// Compiles a campaign. Errors name the campaign (or template) file, the
    /// line, and what to fix.
    pub fn compile(&self, c: &Campaign, ctx: &Context) -> Result<Compiled> {
        let mut warnings = Vec::new();
        for (text, line) in [
            (c.subject.as_str(), c.line_of_key("subject")),
            (
                c.preheader.as_deref().unwrap_or(""),
                c.line_of_key("preheader"),
            ),
            (c.body.as_str(), c.body_line),
        ] {
            if let Some((at, message)) = placeholders::merge_tag(text) {
                return Err(c.error(line + LineIndex::new(text).line(at) - 1, message));
            }
        }
        let mut table = FieldTable::default();
        let subject = table.substitute(&c.subject, c.line_of_key("subject"), &mut warnings);
        let preheader = c
            .preheader
            .as_deref()
            .map(|p| table.substitute(p, c.line_of_key("preheader"), &mut warnings));
        let body = table.substitute(&c.body, c.body_line, &mut warnings);
        let org = ctx.organisation;
        let body_lines = LineIndex::new(&body);
        let line_in_file = |at: usize| c.body_line + body_lines.line(at) - 1;
        let too_deep = |at: usize, what: &str| {
            c.error(
                line_in_file(at),
                format!(
                    "{what} nested more than {MAX_NESTING} deep; flatten the structure here \
                     (no mail client shows that many levels)"
                ),
            )
        };
        if let Some(at) = nesting::too_deep(&body, MAX_NESTING) {
            return Err(too_deep(at, "HTML or MJML elements"));
        }

        let (mjml, text) = match c.format {
            Format::Markdown => {
                if !self.layouts.contains(&c.template) {
                    return Err(c.error(
                        c.line_of_key("template"),
                        format!(
                            "unknown template {:?}; add templates/{}.mjml or use one of: {}",
                            c.template,
                            c.template,
                            self.layouts.join(", ")
                        ),
                    ));
                }
                let mut refs = markdown::References::default();
                let content = markdown::structure(&body, &line_in_file, &mut refs, &mut warnings)
                    .map_err(|e| too_deep(e.at, "quotes, lists or emphasis"))?;
                let data = json!({
                    "campaign": { "subject": subject, "preheader": preheader, "slug": c.slug },
                    "org": org,
                    "sections": content.sections,
                    "subscriber": self.subscriber_data(&mut table),
                    "unsubscribe_url": table.slot(Field::UnsubscribeUrl),
                    "preferences_url": table.slot(Field::PreferencesUrl),
                    "archive_url": table.slot(Field::ArchiveUrl),
                });
                let mjml = self.hbs.render(&c.template, &data).map_err(|e| {
                    let origin = e
                        .template_name
                        .clone()
                        .unwrap_or_else(|| c.template.clone());
                    Error {
                        file: format!("templates/{origin}.mjml"),
                        line: e.line_no.unwrap_or(1),
                        message: format!("template: {}", e.reason()),
                    }
                })?;
                for url in &mut refs.urls {
                    if let Some(absolute) = ctx.bases.resolve(url, urls::Role::Link) {
                        *url = absolute;
                    }
                }
                let text = text_part(&content, &refs, org, &table_slots(&mut table));
                (mjml, Some(text))
            }
            Format::Mjml => (body.clone(), None),
        };

        let parsed = mrml::parse(&mjml)
            .map_err(|e| self.mjml_error(c, &mjml, &e.to_string(), mrml_position(&e)))?;
        let mjml_lines = LineIndex::new(&mjml);
        for w in &parsed.warnings {
            let line = match c.format {
                Format::Mjml => Some(c.body_line + mjml_lines.line(w.span.start) - 1),
                Format::Markdown => None,
            };
            warnings.push(Warning {
                line,
                message: format!(
                    "MJML: {} ({})",
                    w.kind.as_str(),
                    snippet(&mjml, w.span.start)
                ),
            });
        }
        let html = parsed
            .element
            .render(&mrml::prelude::render::RenderOptions::default())
            .map_err(|e| self.mjml_error(c, &mjml, &e.to_string(), None))?;
        let html = urls::absolutise(&html, &ctx.bases)
            .map_err(|unresolved| relative_error(c, org, &unresolved))?;

        let text = match text {
            Some(t) => t,
            None => {
                let slots = table_slots(&mut table);
                html_text::convert(&html, org, &slots)
            }
        };

        let compiled = Compiled {
            subject: Template::parse(&subject),
            html: Template::parse(&html),
            text: Template::parse(&text),
            fields: table.fields,
            lines: table.lines,
            mjml,
            warnings: Vec::new(),
        };
        check(c, &compiled, &mut warnings);
        Ok(Compiled {
            warnings,
            ..compiled
        })
    }

    /// The layouts' `subscriber` object: every key they name, as a slot.
    fn subscriber_data(&self, table: &mut FieldTable) -> Value {
        let mut subscriber = serde_json::Map::new();
        for key in &self.layout_keys {
            let field = Field::Attribute {
                key: key.clone(),
                fallback: String::new(),
            };
            subscriber.insert(key.clone(), table.slot(field).into());
        }
        subscriber.insert(
            "name".into(),
            table
                .slot(Field::Name {
                    fallback: String::new(),
                })
                .into(),
        );
        subscriber.insert("email".into(), table.slot(Field::Email).into());
        Value::Object(subscriber)
    }

    fn mjml_error(&self, c: &Campaign, mjml: &str, message: &str, at: Option<usize>) -> Error {
        // mrml cannot say where an unclosed element started; find it.
        let (message, at) = match (at, unbalanced(mjml)) {
            (None, Some((pos, m))) => (m, Some(pos)),
            (_, _) => (message.to_string(), at),
        };
        let message = message.as_str();
        match (c.format, at) {
            (Format::Mjml, Some(at)) => c.error(
                c.body_line + line_of(mjml, at) - 1,
                format!(
                    "MJML does not compile: {message} near {:?}",
                    snippet(mjml, at)
                ),
            ),
            (Format::Mjml, None) => {
                c.error(c.body_line, format!("MJML does not compile: {message}"))
            }
            (Format::Markdown, at) => Error {
                file: format!("templates/{}.mjml", c.template),
                line: 1,
                message: format!(
                    "the MJML made from this template and {} does not compile: {message}{}; run \
                     `bulletin build --mjml {}` and check the .mjml file",
                    c.file,
                    at.map(|a| format!(
                        " at line {} near {:?}",
                        line_of(mjml, a),
                        snippet(mjml, a)
                    ))
                    .unwrap_or_default(),
                    c.file
                ),
            },
        }
    }
}

/// The attribute keys that layouts and partials name as `subscriber.KEY`
/// (`name` and `email` are columns, not attributes), sorted, once each.
fn layout_keys(templates: &Templates) -> Vec<String> {
    let mut keys = std::collections::BTreeSet::new();
    for t in templates.layouts.iter().chain(&templates.partials) {
        for (at, _) in t.source.match_indices("subscriber.") {
            let key: String = t.source[at + "subscriber.".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            if !key.is_empty() && key != "name" && key != "email" {
                keys.insert(key);
            }
        }
    }
    keys.into_iter().collect()
}

/// The first MJML element that is closed by the wrong tag or never closed:
/// its position and a message.
fn unbalanced(mjml: &str) -> Option<(usize, String)> {
    let mut stack: Vec<(&str, usize)> = Vec::new();
    let mut rest = mjml;
    let mut offset = 0;
    while let Some(at) = rest.find('<') {
        let pos = offset + at;
        let tag = &rest[at + 1..];
        let end = tag.find('>')?;
        let inner = &tag[..end];
        let closing = inner.starts_with('/');
        let name = inner
            .trim_start_matches('/')
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("");
        if name == "mjml" || name.starts_with("mj-") {
            if closing {
                match stack.pop() {
                    Some((open, _)) if open == name => {}
                    Some((open, open_at)) => {
                        return Some((
                            open_at,
                            format!("<{open}> is not closed before </{name}>; add </{open}>"),
                        ));
                    }
                    None => return Some((pos, format!("</{name}> closes nothing"))),
                }
            } else if !inner.ends_with('/') {
                stack.push((name, pos));
            }
        }
        offset = pos + 1 + end;
        rest = &mjml[offset..];
    }
    stack
        .pop()
        .map(|(open, at)| (at, format!("<{open}> is never closed; add </{open}>")))
}

/// The error for URLs that stayed relative: the first, at its line in the
/// campaign (or naming `logo_url` or the layout it came from), with the fix;
/// the others counted.
fn relative_error(c: &Campaign, org: &Organisation, unresolved: &[urls::Unresolved]) -> Error {
    let first = &unresolved[0];
    let (what, fix) = match first.role {
        urls::Role::Image => (
            "image",
            "set assets_url in bulletin.toml to where your images are online, or use an absolute https:// URL",
        ),
        urls::Role::Link => (
            "link",
            "set assets_url (or base_url) in bulletin.toml, or use an absolute https:// URL",
        ),
    };
    let (line, from) = if first.url == org.logo_url {
        (
            1,
            " (logo_url in [organisation] of the configuration)".to_string(),
        )
    } else {
        match find_line(c, &first.url) {
            Some(line) => (line, String::new()),
            None => (1, format!(" (in the layout templates/{}.mjml)", c.template)),
        }
    };
    let more = match &unresolved[1..] {
        [] => String::new(),
        rest => format!(
            "; also relative: {}",
            rest.iter()
                .take(5)
                .map(|u| u.url.as_str())
                .collect::<Vec<_>>()
                .join(", ")
                + if rest.len() > 5 { ", ..." } else { "" }
        ),
    };
    c.error(
        line,
        format!(
            "{what} URL {:?}{from} is relative and would be broken in every inbox; {fix}{more}",
            first.url
        ),
    )
}

/// The sentinels of the link fields, for the text parts.
pub(crate) struct Slots {
    pub unsubscribe: String,
    pub preferences: String,
    pub archive: String,
}

fn table_slots(table: &mut FieldTable) -> Slots {
    Slots {
        unsubscribe: table.slot(Field::UnsubscribeUrl),
        preferences: table.slot(Field::PreferencesUrl),
        archive: table.slot(Field::ArchiveUrl),
    }
}

fn template_error(origin: &str, e: &handlebars::TemplateError) -> Error {
    Error {
        file: origin.to_string(),
        line: e.pos().map_or(1, |(l, _)| l),
        message: format!("template does not parse: {}", e.reason()),
    }
}

fn mrml_position(e: &mrml::prelude::parser::Error) -> Option<usize> {
    use mrml::prelude::parser::Error as E;
    match e {
        E::UnexpectedElement { position, .. }
        | E::UnexpectedToken { position, .. }
        | E::MissingAttribute { position, .. }
        | E::InvalidAttribute { position, .. }
        | E::InvalidFormat { position, .. }
        | E::IncludeLoaderError { position, .. } => Some(position.start),
        _ => None,
    }
}

fn snippet(text: &str, at: usize) -> String {
    let start = at.min(text.len());
    let mut end = (start + 40).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut s = start;
    while !text.is_char_boundary(s) {
        s -= 1;
    }
    text[s..end].lines().next().unwrap_or("").to_string()
}

/// The plain-text part of a Markdown campaign.
fn text_part(
    content: &markdown::Content,
    refs: &markdown::References,
    org: &Organisation,
    slots: &Slots,
) -> String {
    let mut out = String::new();
    out.push_str(&markdown::wrap(&org.name, "", ""));
    if !org.tagline.is_empty() {
        out.push_str(&markdown::wrap(&org.tagline, "", ""));
    }
    out.push('\n');
    for section in &content.sections {
        if !section.title.is_empty() {
            let title = &section.title;
            out.push_str(&format!(
                "\n{title}\n{}\n\n",
                "=".repeat(title.chars().count().min(78))
            ));
        }
        for article in &section.articles {
            if !article.title.is_empty() {
                out.push_str(&markdown::wrap(&article.title, "", ""));
                out.push_str(&"-".repeat(article.title.chars().count().min(78)));
                out.push_str("\n\n");
            }
            for block in &article.blocks {
                out.push_str(&block.text);
            }
        }
    }
    if !refs.urls.is_empty() {
        out.push_str("Links:\n");
        for (i, url) in refs.urls.iter().enumerate() {
            out.push_str(&format!("[{}] {url}\n", i + 1));
        }
        out.push('\n');
    }
    footer_text(&mut out, org, slots);
    out
}

/// The text footer: sender, address, then the links, last.
pub(crate) fn footer_text(out: &mut String, org: &Organisation, slots: &Slots) {
    out.push_str("-- \n");
    out.push_str(&markdown::wrap(
        &format!("{}, {}", org.name, org.address),
        "",
        "",
    ));
    out.push_str(&format!("View in your browser: {}\n\n", slots.archive));
    out.push_str(&format!("Unsubscribe: {}\n", slots.unsubscribe));
    out.push_str(&format!("Manage your preferences: {}\n", slots.preferences));
}

/// Deliverability checks on the compiled result.
fn check(c: &Campaign, compiled: &Compiled, warnings: &mut Vec<Warning>) {
    if c.preheader.is_none() {
        warnings.push(Warning::at(
            1,
            "no preheader: inbox previews will show the first text of the email; add `preheader = \"...\"`",
        ));
    }
    let unsub = compiled
        .fields
        .iter()
        .position(|f| *f == Field::UnsubscribeUrl);
    if !unsub.is_some_and(|u| compiled.html.uses().any(|i| i == u)) {
        warnings.push(Warning::general(format!(
            "template {:?} has no unsubscribe link; put {{{{unsubscribe_url}}}} in its footer",
            c.template
        )));
    }
    let size = compiled.html.literal_len() + 60 * compiled.html.uses().count();
    if size > GMAIL_CLIP_BYTES {
        warnings.push(Warning::general(format!(
            "HTML is {} KB; Gmail clips messages over 102 KB and hides the rest, unsubscribe link included",
            size / 1000
        )));
    }
    // Links and images in the final HTML that the Markdown checks cannot see
    // (templates, raw MJML). Sets say what was reported already, and only the
    // first few are located in the file (each search reads the whole body),
    // so a campaign with thousands of links still compiles in linear time.
    let mut insecure = warned_urls(warnings, "insecure link ", ";");
    let mut no_alt = warned_urls(warnings, "image ", " has no alt text");
    let mut found: Vec<(String, String)> = Vec::new();
    let html: String = compiled
        .html
        .parts
        .iter()
        .map(|p| match p {
            Part::Literal(s) => s.as_ref(),
            Part::Field(_) => "",
        })
        .collect();
    for attr in ["href=\"http://", "src=\"http://"] {
        for (at, _) in html.match_indices(attr) {
            let url_start = at + attr.len() - "http://".len();
            let url: String = html[url_start..]
                .chars()
                .take_while(|&c| c != '"')
                .collect();
            if insecure.insert(url.clone()) {
                let message = format!("insecure link {url}; use https://");
                found.push((url, message));
            }
        }
    }
    for (at, _) in html.match_indices("<img") {
        let tag: String = html[at..].chars().take_while(|&c| c != '>').collect();
        if tag.contains("alt=\"\"") || !tag.contains("alt=") {
            let src = tag
                .split("src=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
                .to_string();
            if no_alt.insert(src.clone()) {
                let message = format!("image {src} has no alt text");
                found.push((src, message));
            }
        }
    }
    let more = found.len().saturating_sub(MAX_HTML_WARNINGS);
    for (url, message) in found.into_iter().take(MAX_HTML_WARNINGS) {
        warnings.push(Warning {
            line: find_line(c, &url),
            message,
        });
    }
    if more > 0 {
        warnings.push(Warning::general(format!(
            "{more} more insecure links or images without alt text in the HTML"
        )));
    }
}

/// Link and image warnings located in the file, at most; the rest are counted.
const MAX_HTML_WARNINGS: usize = 20;

/// The URLs that warnings already name, as `{prefix}URL{suffix}...`.
fn warned_urls(warnings: &[Warning], prefix: &str, suffix: &str) -> HashSet<String> {
    warnings
        .iter()
        .filter_map(|w| w.message.strip_prefix(prefix)?.split_once(suffix))
        .map(|(url, _)| url.to_string())
        .collect()
}

/// The campaign line where `needle` occurs, if it does.
fn find_line(c: &Campaign, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    c.body
        .find(needle)
        .map(|at| c.body_line + line_of(&c.body, at) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_counts_as_line_of() {
        for text in ["", "a", "\n", "a\nb\n\nc", "\n\nx\n"] {
            let index = LineIndex::new(text);
            for at in 0..=text.len() + 1 {
                assert_eq!(index.line(at), line_of(text, at), "{text:?} at {at}");
            }
        }
    }

    #[test]
    fn each_distinct_field_gets_one_slot() {
        let mut table = FieldTable::default();
        let a = table.slot(Field::Email);
        let b = table.slot(Field::UnsubscribeUrl);
        assert_eq!(table.slot(Field::Email), a);
        assert_ne!(a, b);
        assert_eq!(table.fields, [Field::Email, Field::UnsubscribeUrl]);
    }

    #[test]
    fn template_splits_at_sentinels() {
        let t = Template::parse(&format!(
            "a{}b{}{}c QQbltnx",
            sentinel(0),
            sentinel(1),
            sentinel(0)
        ));
        assert_eq!(
            t.parts,
            vec![
                Part::Literal("a".into()),
                Part::Field(0),
                Part::Literal("b".into()),
                Part::Field(1),
                Part::Field(0),
                Part::Literal("c QQbltnx".into()),
            ]
        );
    }

    #[test]
    fn field_parse() {
        assert_eq!(
            Field::parse("subscriber.name | \"friend\""),
            Some(Field::Name {
                fallback: "friend".into()
            })
        );
        assert_eq!(
            Field::parse("subscriber.city"),
            Some(Field::Attribute {
                key: "city".into(),
                fallback: String::new()
            })
        );
        assert_eq!(Field::parse("name"), None);
        assert_eq!(Field::parse("subscriber."), None);
    }

    #[test]
    fn personalise_escapes_html_only_in_html() {
        let fields = vec![Field::Name {
            fallback: "friend".into(),
        }];
        let t = Template::parse(&format!("<p>Hi {}</p>", sentinel(0)));
        let r = Recipient {
            name: "<script>alert('x')</script>",
            ..Recipient::BLANK
        };
        let mut html = String::new();
        t.render_into(&fields, &r, Escape::Html, &mut html);
        assert_eq!(
            html,
            "<p>Hi &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;</p>"
        );
        let mut text = String::new();
        t.render_into(&fields, &r, Escape::None, &mut text);
        assert_eq!(text, "<p>Hi <script>alert('x')</script></p>");
        let mut fb = String::new();
        t.render_into(&fields, &Recipient::BLANK, Escape::Html, &mut fb);
        assert_eq!(fb, "<p>Hi friend</p>");
    }

    #[test]
    fn attributes_fill_and_fall_back() {
        let attrs: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"city":"Lima","n":3,"empty":null}"#).unwrap();
        let fields = vec![
            Field::Attribute {
                key: "city".into(),
                fallback: String::new(),
            },
            Field::Attribute {
                key: "n".into(),
                fallback: String::new(),
            },
            Field::Attribute {
                key: "empty".into(),
                fallback: "-".into(),
            },
        ];
        let t = Template::parse(&format!("{}/{}/{}", sentinel(0), sentinel(1), sentinel(2)));
        let r = Recipient {
            attributes: Some(&attrs),
            ..Recipient::BLANK
        };
        let mut out = String::new();
        t.render_into(&fields, &r, Escape::None, &mut out);
        assert_eq!(out, "Lima/3/-");
    }
}
