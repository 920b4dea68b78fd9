//! Markdown body -> `Content`: sections (`# `), articles (`## `), and blocks
//! (HTML, image alone on a line, link alone on a line as a button), plus the
//! plain-text rendering of the same blocks. No IO.

use std::collections::HashMap;

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use serde::Serialize;

use super::Warning;
use super::nesting::MAX_NESTING;

/// The body, structured for the layout.
#[derive(Debug, Default, Serialize)]
pub struct Content {
    pub sections: Vec<Section>,
}

/// A `# Heading` and its articles. The first section has no title when the
/// body starts with text or an article.
#[derive(Debug, Default, Serialize)]
pub struct Section {
    pub title: String,
    pub articles: Vec<Article>,
}

/// A `## Heading` and its blocks; untitled for text before any `##`.
#[derive(Debug, Default, Serialize)]
pub struct Article {
    pub title: String,
    pub blocks: Vec<Block>,
}

/// One block of an article, in order. Exactly one field is set, so a
/// template can test each with `{{#if}}`.
#[derive(Debug, Default, Serialize)]
pub struct Block {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub button: Option<Button>,
    /// Plain-text rendering, already wrapped; links as `[n]` references.
    #[serde(skip)]
    pub text: String,
}

#[derive(Debug, Serialize)]
pub struct Image {
    pub src: String,
    pub alt: String,
    pub href: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Button {
    pub text: String,
    pub href: String,
}

/// Text width of the plain-text part.
pub const WIDTH: usize = 78;

/// Numbered link references for the text part, shared by the whole message.
#[derive(Debug, Default)]
pub struct References {
    pub urls: Vec<String>,
    /// url -> its number, so numbering stays linear in the number of links.
    numbers: HashMap<String, usize>,
}

impl References {
    /// The number of `url`, adding it when new.
    pub fn number(&mut self, url: &str) -> usize {
        if let Some(&n) = self.numbers.get(url) {
            return n;
        }
        self.urls.push(url.to_string());
        self.numbers.insert(url.to_string(), self.urls.len());
        self.urls.len()
    }
}

/// Quotes, lists or emphasis nested deeper than `nesting::MAX_NESTING`,
/// starting at byte offset `at` of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    pub at: usize,
}

/// Structures a Markdown body. `line_of` maps a byte offset of `body` to a
/// line of the campaign file, for warnings.
pub fn structure(
    body: &str,
    line_of: &dyn Fn(usize) -> usize,
    refs: &mut References,
    warnings: &mut Vec<Warning>,
) -> Result<Content, TooDeep> {
    let opts =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_SMART_PUNCTUATION;
    let events: Vec<(Event, std::ops::Range<usize>)> =
        Parser::new_ext(body, opts).into_offset_iter().collect();
    let mut content = Content::default();
    let mut i = 0;
    while i < events.len() {
        // Each top-level block runs from a Start to its matching End.
        let start = i;
        let mut depth = 0usize;
        loop {
            match &events[i].0 {
                Event::Start(_) if depth == MAX_NESTING => {
                    return Err(TooDeep {
                        at: events[i].1.start,
                    });
                }
                Event::Start(_) => depth += 1,
                Event::End(_) => depth -= 1,
                _ => {}
            }
            i += 1;
            if depth == 0 || i == events.len() {
                break;
            }
        }
        let block = &events[start..i];
        let line = line_of(block[0].1.start);
        check_links(block, line_of, warnings);
        match &block[0].0 {
            Event::Start(Tag::Heading { level, .. })
                if matches!(level, HeadingLevel::H1 | HeadingLevel::H2) =>
            {
                let title = plain_text(&block[1..block.len() - 1]);
                if *level == HeadingLevel::H1 {
                    content.sections.push(Section {
                        title,
                        articles: Vec::new(),
                    });
                } else {
                    current_section(&mut content).articles.push(Article {
                        title,
                        blocks: Vec::new(),
                    });
                }
            }
            _ => {
                let article = current_article(&mut content);
                if let Some(b) = lone_image(block, refs, warnings, line) {
                    article.blocks.push(b);
                } else if let Some(b) = lone_link(block, refs) {
                    article.blocks.push(b);
                } else {
                    let mut html = String::new();
                    pulldown_cmark::html::push_html(
                        &mut html,
                        block.iter().map(|(e, _)| e.clone()),
                    );
                    let text = text_of(block, refs);
                    // Consecutive HTML blocks share one mj-text.
                    match article.blocks.last_mut() {
                        Some(Block {
                            html: Some(prev),
                            text: prev_text,
                            ..
                        }) => {
                            prev.push_str(&html);
                            prev_text.push_str(&text);
                        }
                        _ => article.blocks.push(Block {
                            html: Some(html),
                            text,
                            ..Block::default()
                        }),
                    }
                }
            }
        }
    }
    Ok(content)
}

fn current_section(content: &mut Content) -> &mut Section {
    if content.sections.is_empty() {
        content.sections.push(Section::default());
    }
    content.sections.last_mut().expect("just pushed")
}

fn current_article(content: &mut Content) -> &mut Article {
    let section = current_section(content);
    if section.articles.is_empty() {
        section.articles.push(Article::default());
    }
    section.articles.last_mut().expect("just pushed")
}

/// Warns of `http://` links and images without alt text, with their line.
fn check_links(
    block: &[(Event, std::ops::Range<usize>)],
    line_of: &dyn Fn(usize) -> usize,
    warnings: &mut Vec<Warning>,
) {
    for (k, (event, range)) in block.iter().enumerate() {
        match event {
            Event::Start(Tag::Link { dest_url, .. })
            | Event::Start(Tag::Image { dest_url, .. })
                if dest_url.starts_with("http://") =>
            {
                warnings.push(Warning::at(
                    line_of(range.start),
                    format!(
                        "insecure link {dest_url}; use https:// (mail clients flag http links)"
                    ),
                ));
            }
            _ => {}
        }
        if let Event::Start(Tag::Image { dest_url, .. }) = event {
            let alt = plain_text(&block[k + 1..]);
            if alt.trim().is_empty() {
                warnings.push(Warning::at(
                    line_of(range.start),
                    format!(
                        "image {dest_url} has no alt text; write ![what it shows]({dest_url}) \
                         for readers who see no images"
                    ),
                ));
            }
        }
    }
}

/// A paragraph holding one image (optionally linked) and nothing else.
fn lone_image(
    block: &[(Event, std::ops::Range<usize>)],
    refs: &mut References,
    _warnings: &mut [Warning],
    _line: usize,
) -> Option<Block> {
    let inner = strip_paragraph(block)?;
    let (href, inner) = match inner {
        [
            (Event::Start(Tag::Link { dest_url, .. }), _),
            rest @ ..,
            (Event::End(TagEnd::Link), _),
        ] => (Some(dest_url.to_string()), rest),
        _ => (None, inner),
    };
    let [
        (Event::Start(Tag::Image { dest_url, .. }), _),
        alt @ ..,
        (Event::End(TagEnd::Image), _),
    ] = inner
    else {
        return None;
    };
    if alt
        .iter()
        .any(|(e, _)| matches!(e, Event::Start(Tag::Image { .. })))
    {
        return None;
    }
    let alt = plain_text(alt);
    let mut text = format!("[{}]", if alt.is_empty() { "image" } else { &alt });
    if let Some(h) = &href {
        text.push_str(&format!(" [{}]", refs.number(h)));
    }
    text.push_str("\n\n");
    Some(Block {
        image: Some(Image {
            src: dest_url.to_string(),
            alt,
            href,
        }),
        text,
        ..Block::default()
    })
}

/// A paragraph holding one text link and nothing else: a button.
fn lone_link(block: &[(Event, std::ops::Range<usize>)], refs: &mut References) -> Option<Block> {
    let inner = strip_paragraph(block)?;
    let [
        (Event::Start(Tag::Link { dest_url, .. }), _),
        label @ ..,
        (Event::End(TagEnd::Link), _),
    ] = inner
    else {
        return None;
    };
    if label.iter().any(|(e, _)| {
        matches!(
            e,
            Event::Start(Tag::Image { .. }) | Event::Start(Tag::Link { .. })
        )
    }) {
        return None;
    }
    let label = plain_text(label);
    let n = refs.number(dest_url);
    Some(Block {
        text: wrap(&format!("{label} [{n}]"), "", "") + "\n",
        button: Some(Button {
            text: label,
            href: dest_url.to_string(),
        }),
        ..Block::default()
    })
}

fn strip_paragraph<'a, 'e>(
    block: &'a [(Event<'e>, std::ops::Range<usize>)],
) -> Option<&'a [(Event<'e>, std::ops::Range<usize>)]> {
    match block {
        [
            (Event::Start(Tag::Paragraph), _),
            inner @ ..,
            (Event::End(TagEnd::Paragraph), _),
        ] => {
            // Ignore white space around the lone element.
            let inner = trim_space(inner);
            Some(inner)
        }
        _ => None,
    }
}

fn trim_space<'a, 'e>(
    mut s: &'a [(Event<'e>, std::ops::Range<usize>)],
) -> &'a [(Event<'e>, std::ops::Range<usize>)] {
    let blank = |e: &Event| match e {
        Event::Text(t) => t.trim().is_empty(),
        Event::SoftBreak | Event::HardBreak => true,
        _ => false,
    };
    while let Some(((e, _), rest)) = s.split_first() {
        if !blank(e) {
            break;
        }
        s = rest;
    }
    while let Some(((e, _), rest)) = s.split_last() {
        if !blank(e) {
            break;
        }
        s = rest;
    }
    s
}

/// The text of inline events, markup dropped.
pub fn plain_text(events: &[(Event, std::ops::Range<usize>)]) -> String {
    let mut out = String::new();
    for (e, _) in events {
        match e {
            Event::Text(t) | Event::Code(t) => out.push_str(t),
            Event::SoftBreak | Event::HardBreak => out.push(' '),
            _ => {}
        }
    }
    out.trim().to_string()
}

/// Wraps `text` at [`WIDTH`], never breaking a word (a URL stays whole).
pub fn wrap(text: &str, first: &str, rest: &str) -> String {
    let opts = textwrap::Options::new(WIDTH)
        .break_words(false)
        .initial_indent(first)
        .subsequent_indent(rest);
    let mut out = String::new();
    for line in text.split('\n') {
        for l in textwrap::wrap(line, &opts) {
            out.push_str(l.trim_end());
            out.push('\n');
        }
    }
    out
}

/// Plain text of one top-level block: paragraphs wrapped, lists with
/// markers, quotes with `> `, links as numbered references.
fn text_of(block: &[(Event, std::ops::Range<usize>)], refs: &mut References) -> String {
    let mut out = String::new();
    let mut line = String::new();
    // (ordered next number, depth) per open list.
    let mut lists: Vec<Option<u64>> = Vec::new();
    let mut quote = 0usize;
    let mut link: Option<(String, usize)> = None;
    let mut in_code = false;
    let mut item_marker: Option<String> = None;

    let flush = |out: &mut String,
                 line: &mut String,
                 lists: &[Option<u64>],
                 quote: usize,
                 marker: &mut Option<String>| {
        let text = line.trim().to_string();
        line.clear();
        if text.is_empty() {
            return;
        }
        let q = "> ".repeat(quote);
        let indent = "  ".repeat(lists.len().saturating_sub(1));
        let (first, rest) = match marker.take() {
            Some(m) => {
                let pad = " ".repeat(m.chars().count());
                (format!("{q}{indent}{m}"), format!("{q}{indent}{pad}"))
            }
            None if !lists.is_empty() => {
                let pad = format!("{indent}  ");
                (format!("{q}{pad}"), format!("{q}{pad}"))
            }
            None => (q.clone(), q),
        };
        out.push_str(&wrap(&text, &first, &rest));
    };

    for (event, _) in block {
        match event {
            Event::Start(Tag::List(start)) => {
                flush(&mut out, &mut line, &lists, quote, &mut item_marker);
                lists.push(*start);
            }
            Event::End(TagEnd::List(_)) => {
                flush(&mut out, &mut line, &lists, quote, &mut item_marker);
                lists.pop();
                if lists.is_empty() {
                    out.push('\n');
                }
            }
            Event::Start(Tag::Item) => {
                flush(&mut out, &mut line, &lists, quote, &mut item_marker);
                item_marker = Some(match lists.last_mut() {
                    Some(Some(n)) => {
                        let m = format!("{n}. ");
                        *n += 1;
                        m
                    }
                    _ => "- ".to_string(),
                });
            }
            Event::End(TagEnd::Item) => flush(&mut out, &mut line, &lists, quote, &mut item_marker),
            Event::Start(Tag::BlockQuote(_)) => {
                flush(&mut out, &mut line, &lists, quote, &mut item_marker);
                quote += 1;
            }
            Event::End(TagEnd::BlockQuote(_)) => {
                flush(&mut out, &mut line, &lists, quote, &mut item_marker);
                quote -= 1;
                if quote == 0 {
                    out.push('\n');
                }
            }
            Event::Start(Tag::CodeBlock(kind)) => {
                flush(&mut out, &mut line, &lists, quote, &mut item_marker);
                in_code = true;
                let _ = matches!(kind, CodeBlockKind::Fenced(_));
            }
            Event::End(TagEnd::CodeBlock) => {
                in_code = false;
                out.push('\n');
            }
            Event::Start(Tag::Heading { .. }) => {
                flush(&mut out, &mut line, &lists, quote, &mut item_marker)
            }
            Event::End(TagEnd::Heading(_)) => {
                let heading = line.trim().to_string();
                line.clear();
                out.push_str(&wrap(&heading, "", ""));
                out.push('\n');
            }
            Event::End(TagEnd::Paragraph) => {
                flush(&mut out, &mut line, &lists, quote, &mut item_marker);
                if lists.is_empty() {
                    let q = "> ".repeat(quote);
                    out.push_str(q.trim_end());
                    out.push('\n');
                }
            }
            Event::Start(Tag::Link { dest_url, .. }) => {
                link = Some((dest_url.to_string(), line.len()));
            }
            Event::End(TagEnd::Link) => {
                if let Some((url, at)) = link.take() {
                    let label = line[at..].trim();
                    if label == url || label.is_empty() {
                        line.truncate(at);
                        line.push_str(&url);
                    } else if !url.starts_with('#') {
                        let n = refs.number(&url);
                        line.push_str(&format!(" [{n}]"));
                    }
                }
            }
            Event::Start(Tag::Image { .. }) => line.push('['),
            Event::End(TagEnd::Image) => line.push(']'),
            Event::Text(t) if in_code => {
                for l in t.lines() {
                    out.push_str(&"> ".repeat(quote));
                    out.push_str("    ");
                    out.push_str(l);
                    out.push('\n');
                }
            }
            Event::Text(t) | Event::Code(t) => line.push_str(t),
            Event::SoftBreak => line.push(' '),
            Event::HardBreak => line.push('\n'),
            Event::Rule => out.push_str(&format!("{}\n\n", "-".repeat(WIDTH))),
            Event::Html(h) | Event::InlineHtml(h) => line.push_str(&strip_tags(h)),
            Event::End(TagEnd::TableRow) | Event::End(TagEnd::TableHead) => {
                let row = line.trim().trim_end_matches('|').trim().to_string();
                line.clear();
                out.push_str(&wrap(&row, "", ""));
            }
            Event::End(TagEnd::TableCell) => line.push_str(" | "),
            Event::End(TagEnd::Table) => out.push('\n'),
            _ => {}
        }
    }
    flush(&mut out, &mut line, &lists, quote, &mut item_marker);
    out
}

/// Drops HTML tags from raw HTML in Markdown, for the text part.
fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(md: &str) -> (Content, References, Vec<Warning>) {
        let mut refs = References::default();
        let mut warnings = Vec::new();
        let c = structure(
            md,
            &|at| crate::config::line_of(md, at),
            &mut refs,
            &mut warnings,
        )
        .unwrap();
        (c, refs, warnings)
    }

    #[test]
    fn sections_articles_images_buttons() {
        let md = "Intro text.\n\n# Events\n\n## First\n\n![A photo](https://x.org/a.png)\n\nBody with [a link](https://x.org/l).\n\n[Read more](https://x.org/more)\n\n## Second\n\nMore.\n";
        let (c, refs, w) = run(md);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.sections.len(), 2);
        assert_eq!(c.sections[0].title, "");
        assert_eq!(c.sections[1].title, "Events");
        let a = &c.sections[1].articles;
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].title, "First");
        assert_eq!(a[0].blocks[0].image.as_ref().unwrap().alt, "A photo");
        assert!(
            a[0].blocks[1]
                .html
                .as_ref()
                .unwrap()
                .contains("<a href=\"https://x.org/l\">a link</a>")
        );
        assert_eq!(
            a[0].blocks[2].button.as_ref().unwrap().href,
            "https://x.org/more"
        );
        assert_eq!(a[0].blocks[1].text, "Body with a link [1].\n\n");
        assert_eq!(refs.urls, ["https://x.org/l", "https://x.org/more"]);
    }

    #[test]
    fn warnings_carry_lines() {
        let md = "# S\n\n![](https://x.org/a.png)\n\nSee [this](http://x.org/).\n";
        let (_, _, w) = run(md);
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(w[0].line, Some(3));
        assert!(w[0].message.contains("alt text"));
        assert_eq!(w[1].line, Some(5));
        assert!(w[1].message.contains("http://x.org/"));
    }

    #[test]
    fn text_lists_quotes_and_wrapping() {
        let long = "word ".repeat(30);
        let md = format!("- one\n- two [x](https://x.org)\n\n1. a\n2. b\n\n> quoted\n\n{long}\n");
        let (c, _, _) = run(&md);
        let text: String = c.sections[0].articles[0]
            .blocks
            .iter()
            .map(|b| b.text.as_str())
            .collect();
        assert!(text.contains("- one\n- two x [1]\n"), "{text}");
        assert!(text.contains("1. a\n2. b\n"), "{text}");
        assert!(text.contains("> quoted\n"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
    }
}
