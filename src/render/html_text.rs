//! The plain-text part of a raw MJML campaign, made from its rendered HTML:
//! block elements become paragraphs, links numbered references, and the
//! head, styles and conditional comments are dropped. No IO.

use super::markdown::{References, wrap};
use super::{Slots, footer_text};
use crate::config::Organisation;

/// Converts rendered HTML into wrapped text with the standard footer.
pub(crate) fn convert(html: &str, org: &Organisation, slots: &Slots) -> String {
    let body = html.find("<body").map_or(html, |at| &html[at..]);
    let mut refs = References::default();
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut href: Option<(String, usize)> = None;
    let mut skip_depth = 0usize;
    let mut rest = body;

    let end_paragraph = |current: &mut String, paragraphs: &mut Vec<String>| {
        let p = current.split_whitespace().collect::<Vec<_>>().join(" ");
        if !p.is_empty() {
            paragraphs.push(p);
        }
        current.clear();
    };

    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |e| &after[e + 3..]);
            continue;
        }
        if rest.starts_with('<') {
            let end = rest.find('>').map_or(rest.len(), |e| e + 1);
            let tag = &rest[1..end.saturating_sub(1)];
            rest = &rest[end..];
            let closing = tag.starts_with('/');
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_lowercase();
            match name.as_str() {
                "style" | "script" | "title" => {
                    if closing {
                        skip_depth = skip_depth.saturating_sub(1);
                    } else if !tag.ends_with('/') {
                        skip_depth += 1;
                    }
                }
                "a" if !closing => {
                    href = attr(tag, "href").map(|h| (h, current.len()));
                }
                "a" => {
                    if let Some((url, at)) = href.take() {
                        let label = current[at..].trim().to_string();
                        if label.is_empty() || label == url {
                            current.truncate(at);
                            current.push(' ');
                            current.push_str(&url);
                        } else if !url.is_empty() && !url.starts_with('#') {
                            current.push_str(&format!(" [{}]", refs.number(&url)));
                        }
                    }
                }
                "img" => {
                    if let Some(alt) = attr(tag, "alt").filter(|a| !a.is_empty()) {
                        current.push_str(&format!(" [{alt}] "));
                    }
                }
                "br" => current.push('\n'),
                "p" | "div" | "td" | "tr" | "table" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6"
                | "li" | "ul" | "ol" | "blockquote" => {
                    if name == "li" && !closing {
                        end_paragraph(&mut current, &mut paragraphs);
                        current.push_str("- ");
                    } else {
                        end_paragraph(&mut current, &mut paragraphs);
                    }
                }
                _ => {}
            }
            continue;
        }
        let end = rest.find('<').unwrap_or(rest.len());
        if skip_depth == 0 {
            current.push_str(&decode_entities(&rest[..end]));
        }
        rest = &rest[end..];
    }
    end_paragraph(&mut current, &mut paragraphs);

    let mut out = String::new();
    for p in paragraphs {
        out.push_str(&wrap(&p, "", ""));
        out.push('\n');
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

fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!("{name}=\"");
    let at = tag.find(&needle)? + needle.len();
    let value = &tag[at..];
    Some(decode_entities(&value[..value.find('"')?]))
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_links_and_footer() {
        let slots = Slots {
            unsubscribe: "U".into(),
            preferences: "P".into(),
            archive: "A".into(),
        };
        let html = "<html><head><style>p{}</style></head><body><!--[if mso]>x<![endif]--><p>Hello &amp; <a href=\"https://x.org\">welcome</a></p><ul><li>one</li></ul></body></html>";
        let text = convert(html, &Organisation::default(), &slots);
        assert!(
            text.starts_with("Hello & welcome [1]\n\n- one\n\nLinks:\n[1] https://x.org\n"),
            "{text}"
        );
        assert!(
            text.ends_with("Unsubscribe: U\nManage your preferences: P\n"),
            "{text}"
        );
    }
}
