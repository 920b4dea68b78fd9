//! How deeply a campaign may nest: quotes, lists, emphasis and HTML or MJML
//! elements. mrml parses and renders elements recursively, so 10,000 nested
//! `<div>`s or `>` quotes overflowed the stack and killed the process with
//! no file or line; `Renderer::compile` refuses them first with a
//! `campaign::Error` at the line where the limit is crossed. No IO.

/// The deepest nesting a campaign may use. Real newsletters stay under 10;
/// the layout adds about 10 more, and mrml needs well under a thread's
/// 2 MB stack for the total.
pub const MAX_NESTING: usize = 50;

/// Elements that never have a closing tag.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];

/// The byte offset of the first tag in `text` that opens an element more
/// than `max` elements deep, counting `<name ...>` as opening (unless void
/// or written `<name/>`) and `</name>` as closing. Comments and things that
/// merely look like tags (`<https://...>`, `a < b`) do not count. Linear in
/// the length of `text`.
pub fn too_deep(text: &str, max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut from = 0;
    while let Some(found) = text[from..].find('<') {
        let at = from + found;
        let rest = &text[at + 1..];
        if let Some(comment) = rest.strip_prefix("!--") {
            // An unclosed comment hides the rest of the text.
            let end = comment.find("-->")?;
            from = at + 4 + end + 3;
            continue;
        }
        from = at + 1;
        let closing = rest.starts_with('/');
        let name_part = &rest[usize::from(closing)..];
        let name_len = name_part
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-')
            .count();
        let starts_with_letter = name_part
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic());
        let ends_tag_name = matches!(
            name_part.as_bytes().get(name_len),
            Some(b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/')
        );
        if !starts_with_letter || !ends_tag_name {
            continue;
        }
        // No `>` left: no tag can open.
        let end = rest.find('>')?;
        let name = name_part[..name_len].to_ascii_lowercase();
        if closing {
            depth = depth.saturating_sub(1);
        } else if !rest[..end].ends_with('/') && !VOID.contains(&name.as_str()) {
            depth += 1;
            if depth > max {
                return Some(at);
            }
        }
        from = at + 1 + end + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_open_elements() {
        assert_eq!(too_deep("<div><p>x</p></div>", 2), None);
        assert_eq!(too_deep("<div><p>x</p></div>", 1), Some(5));
        // Siblings do not add up.
        assert_eq!(too_deep(&"<p>x</p>".repeat(1000), 1), None);
        let deep = format!("{}x{}", "<div>".repeat(60), "</div>".repeat(60));
        assert_eq!(too_deep(&deep, MAX_NESTING), Some(5 * MAX_NESTING));
    }

    #[test]
    fn void_self_closing_comments_and_non_tags_do_not_count() {
        let text = "<br><img src=x><mj-image src=\"y\" /><!-- <div><div> -->\
                    <https://example.org> <a@b.example> 1 < 2 <3 <-- x <div class=\"c\">";
        assert_eq!(too_deep(text, 1), None);
        assert_eq!(too_deep(text, 0), Some(text.find("<div class").unwrap()));
        assert_eq!(too_deep("<!-- never closed <div>", 0), None);
        assert_eq!(too_deep("<div", 0), None);
    }
}
