//! Placeholders checked against the list they go to: which `subscriber.X`
//! keys a compiled campaign uses, which of them no subscriber of the list
//! has (an error, with "did you mean"), and which have no fallback (so an
//! empty value shows as nothing). No IO: the caller passes the keys the list
//! has (`Store::list_keys`) and the counts it finds (`Store::missing_values`).

use std::collections::{BTreeMap, HashSet};

use super::{Compiled, Field};
use crate::campaign::{Campaign, Error, Result};

/// The keys every subscriber has, whatever the list: the columns of the
/// `subscribers` table that placeholders read.
pub const ALWAYS: [&str; 2] = ["email", "name"];

/// One `subscriber.X` key as the campaign uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    /// `name`, `email` or an attribute key.
    pub key: String,
    /// The campaign-file line where it is first written; `None` when only
    /// the layout uses it.
    pub line: Option<usize>,
    /// Some use has no fallback, so a subscriber without a value reads an
    /// empty one (never true for `email`, which everyone has).
    pub bare: bool,
}

/// The `subscriber.X` keys of `compiled` that its subject, HTML or text
/// fill in, by key. (The layout's data offers `subscriber.name` to every
/// layout; a layout that does not use it asks nobody for a name.)
pub fn keys(compiled: &Compiled) -> Vec<KeyUse> {
    let filled: HashSet<usize> = [&compiled.subject, &compiled.html, &compiled.text]
        .into_iter()
        .flat_map(|t| t.uses())
        .collect();
    let mut uses: BTreeMap<&str, KeyUse> = BTreeMap::new();
    for (i, field) in compiled.fields.iter().enumerate() {
        if !filled.contains(&i) {
            continue;
        }
        let (key, bare) = match field {
            Field::Name { fallback } => ("name", fallback.is_empty()),
            Field::Email => ("email", false),
            Field::Attribute { key, fallback } => (key.as_str(), fallback.is_empty()),
            Field::UnsubscribeUrl | Field::PreferencesUrl | Field::ArchiveUrl => continue,
        };
        let line = compiled.lines.get(i).copied().flatten();
        let entry = uses.entry(key).or_insert_with(|| KeyUse {
            key: key.to_string(),
            line,
            bare: false,
        });
        entry.bare |= bare;
        entry.line = match (entry.line, line) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    uses.into_values().collect()
}

/// Fails on each key without a fallback that no subscriber of `list` has
/// (`known`: the list's attribute keys), naming the line, the closest key
/// and the fallback syntax. Keys with a fallback pass: everyone gets it.
pub fn check(c: &Campaign, compiled: &Compiled, list: &str, known: &[String]) -> Result<()> {
    let all: Vec<&str> = ALWAYS
        .iter()
        .copied()
        .chain(known.iter().map(String::as_str))
        .collect();
    let mut unknown: Vec<KeyUse> = keys(compiled)
        .into_iter()
        .filter(|u| u.bare && !all.contains(&u.key.as_str()))
        .collect();
    unknown.sort_by_key(|u| u.line);
    let mut unknown = unknown.into_iter();
    let Some(first) = unknown.next() else {
        return Ok(());
    };
    let mut message = unknown_message(&first, list, &all);
    for other in unknown {
        message.push_str(&format!(
            "; also {{{{subscriber.{}}}}} {}{}",
            other.key,
            other
                .line
                .map_or("in the layout".to_string(), |l| format!("at line {l}")),
            crate::suggest::closest(&other.key, all.iter().copied())
                .map(|near| format!(" (did you mean `{near}`?)"))
                .unwrap_or_default()
        ));
    }
    Err(match first.line {
        Some(line) => c.error(line, message),
        // Only the layout names it.
        None => Error {
            file: format!("templates/{}.mjml", c.template),
            line: 1,
            message: format!(
                "{message} (in this layout or its partials; used by {})",
                c.file
            ),
        },
    })
}

/// The first Mailchimp merge tag (`*|FNAME|*`) in `text`: its byte offset
/// and what to write here instead. Mailchimp users paste them; sent as
/// written, every recipient would read `*|FNAME|*`.
pub fn merge_tag(text: &str) -> Option<(usize, String)> {
    let mut from = 0;
    while let Some(open) = text[from..].find("*|").map(|i| from + i) {
        let inner_start = open + 2;
        let len = text[inner_start..].find("|*")?;
        let tag = &text[inner_start..inner_start + len];
        if !tag.is_empty()
            && tag.len() <= 40
            && tag
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b':')
        {
            let instead = match tag {
                "FNAME" => "{{subscriber.first_name | \"friend\"}}".to_string(),
                "LNAME" => "{{subscriber.last_name}}".to_string(),
                "EMAIL" => "{{subscriber.email}}".to_string(),
                "UNSUB" => "{{unsubscribe_url}}".to_string(),
                "UPDATE_PROFILE" => "{{preferences_url}}".to_string(),
                "ARCHIVE" | "ARCHIVE_LINK_SHORT" => "{{archive_url}}".to_string(),
                other => format!("{{{{subscriber.{}}}}}", other.to_ascii_lowercase()),
            };
            return Some((
                open,
                format!(
                    "*|{tag}|* is a Mailchimp merge tag, which bulletin sends as written; write {instead} instead"
                ),
            ));
        }
        from = inner_start;
    }
    None
}

fn unknown_message(u: &KeyUse, list: &str, all: &[&str]) -> String {
    let hint = match crate::suggest::closest(&u.key, all.iter().copied()) {
        Some(near) => format!("did you mean `{near}`?"),
        None => {
            let mut sorted = all.to_vec();
            sorted.sort_unstable();
            let more = sorted.len().saturating_sub(12);
            sorted.truncate(12);
            let etc = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("the list has {}{etc}", sorted.join(", "))
        }
    };
    format!(
        "{{{{subscriber.{key}}}}}: no subscriber of list {list} has a `{key}` value; {hint} \
         (or give a fallback: {{{{subscriber.{key} | \"...\"}}}})",
        key = u.key
    )
}

/// The line `send` prints for a key that `missing` of `total` recipients
/// have no value for.
pub fn missing_line(key: &str, missing: i64, total: i64) -> String {
    let fallback = if key.contains("name") {
        "friend"
    } else {
        "..."
    };
    let have = if missing == 1 { "has" } else { "have" };
    format!(
        "{} of {} {have} no {key}; they will read an empty value — add a fallback: \
         {{{{subscriber.{key} | \"{fallback}\"}}}}",
        thousands(missing),
        thousands(total)
    )
}

/// `5000` -> `5,000`.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assets::Templates;
    use crate::config::Organisation;
    use crate::render::{Context, Renderer};

    fn compile(body: &str) -> (Campaign, Compiled) {
        let text =
            format!("+++\nsubject = \"Hi {{{{subscriber.name}}}}\"\nlist = \"news\"\n+++\n{body}");
        let c = crate::campaign::parse("campaigns/x.md", &text).unwrap();
        let renderer = Renderer::new(&Templates::builtin()).unwrap();
        let org = Organisation::default();
        let compiled = renderer
            .compile(
                &c,
                &Context {
                    organisation: &org,
                    bases: Default::default(),
                },
            )
            .unwrap();
        (c, compiled)
    }

    #[test]
    fn keys_say_where_and_whether_a_fallback_covers_them() {
        let (_, compiled) = compile(
            "Dear {{subscriber.first_name}},\n\n{{subscriber.city | \"your town\"}} \
             {{subscriber.email}} {{subscriber.first_name | \"x\"}}\n",
        );
        let uses = keys(&compiled);
        let find = |k: &str| uses.iter().find(|u| u.key == k).unwrap().clone();
        assert_eq!(find("first_name").line, Some(5));
        assert!(find("first_name").bare);
        assert!(!find("city").bare);
        assert!(!find("email").bare);
        assert!(find("name").bare, "the subject has no fallback");
        assert_eq!(find("name").line, Some(2));
    }

    #[test]
    fn an_unknown_key_without_fallback_is_an_error_with_did_you_mean() {
        let (c, compiled) = compile("Dear {{subscriber.nmae}},\n\n{{subscriber.ctiy}}\n");
        let err = check(&c, &compiled, "news", &["city".into()]).unwrap_err();
        assert_eq!(err.file, "campaigns/x.md");
        assert_eq!(err.line, 5);
        assert!(
            err.message.starts_with(
                "{{subscriber.nmae}}: no subscriber of list news has a `nmae` value; did you mean `name`?"
            ),
            "{}",
            err.message
        );
        assert!(
            err.message
                .contains("also {{subscriber.ctiy}} at line 7 (did you mean `city`?)"),
            "{}",
            err.message
        );
        let (c, compiled) = compile("{{subscriber.postcode}}\n");
        let err = check(&c, &compiled, "news", &["city".into()]).unwrap_err();
        assert!(
            err.message.contains("the list has city, email, name"),
            "{err}"
        );
    }

    #[test]
    fn a_name_the_layout_offers_but_nothing_uses_is_not_a_key() {
        let text = "+++\nsubject = \"Hi\"\nlist = \"news\"\n+++\n\n{{subscriber.city}}\n";
        let c = crate::campaign::parse("campaigns/x.md", text).unwrap();
        let org = Organisation::default();
        let compiled = Renderer::new(&Templates::builtin())
            .unwrap()
            .compile(
                &c,
                &Context {
                    organisation: &org,
                    bases: Default::default(),
                },
            )
            .unwrap();
        let uses: Vec<String> = keys(&compiled).into_iter().map(|u| u.key).collect();
        assert_eq!(uses, ["city"]);
    }

    #[test]
    fn known_keys_and_fallbacks_pass() {
        let (c, compiled) = compile("{{subscriber.first_name}} {{subscriber.nmae | \"friend\"}}\n");
        check(&c, &compiled, "news", &["first_name".into()]).unwrap();
        assert!(check(&c, &compiled, "news", &[]).is_err());
    }

    #[test]
    fn a_merge_tag_fails_the_compile_at_its_line_and_a_bare_key_gets_did_you_mean() {
        let text = "+++\nsubject = \"Hi\"\nlist = \"news\"\n+++\n# News\n\nDear *|FNAME|*,\n";
        let c = crate::campaign::parse("campaigns/x.md", text).unwrap();
        let org = Organisation::default();
        let ctx = Context {
            organisation: &org,
            bases: Default::default(),
        };
        let renderer = Renderer::new(&Templates::builtin()).unwrap();
        let e = renderer.compile(&c, &ctx).unwrap_err().to_string();
        assert!(
            e.starts_with("campaigns/x.md:7: *|FNAME|* is a Mailchimp merge tag"),
            "{e}"
        );
        let (_, compiled) = compile("Dear {{first_name}},\n");
        let w = &compiled.warnings[0].message;
        assert!(w.contains("did you mean {{subscriber.first_name}}?"), "{w}");
    }

    #[test]
    fn mailchimp_merge_tags_are_found_with_what_to_write() {
        let (at, m) = merge_tag("Dear *|FNAME|*,\nbye").unwrap();
        assert_eq!(at, 5);
        assert!(m.contains("{{subscriber.first_name | \"friend\"}}"), "{m}");
        let (_, m) = merge_tag("x *|MMERGE3|* y").unwrap();
        assert!(m.contains("{{subscriber.mmerge3}}"), "{m}");
        assert!(
            merge_tag("a *|b|* c | d * e").is_none(),
            "lower case is not a tag"
        );
        assert!(merge_tag("no tags").is_none());
    }

    #[test]
    fn missing_lines_read_like_numbers() {
        assert_eq!(
            missing_line("first_name", 412, 5000),
            "412 of 5,000 have no first_name; they will read an empty value — add a fallback: \
             {{subscriber.first_name | \"friend\"}}"
        );
        assert!(missing_line("country", 1, 26).starts_with("1 of 26 has no country; "));
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
