//! Relative URLs in a compiled email: an inbox has no page to resolve
//! `images/forum.jpg` against, so every image and link must be absolute.
//! [`classify`] says what a URL is; [`Bases`] makes relative ones absolute
//! (`assets_url` for images and links, `base_url` for links only, since
//! `bulletin serve` serves pages, not images); [`absolutise`] rewrites the
//! final HTML and names whatever stays relative. No IO.

use url::Url;

/// What a URL in an email is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `https://…`, `mailto:`, `tel:`, `cid:`: any URL with a scheme.
    Absolute,
    /// Needs nothing: empty, `#anchor`, or a placeholder (`{{unsubscribe_url}}`,
    /// already a sentinel here) that is filled per recipient.
    Fine,
    /// `//cdn.example/x.png`: absolute but for the scheme, which an inbox
    /// cannot supply; made `https:`.
    SchemeRelative,
    /// `images/forum.jpg`, `/logo.png`: broken in every inbox unless a base
    /// makes it absolute.
    Relative,
}

/// What a URL in the HTML is, given the sentinel prefix of placeholders.
pub fn classify(url: &str) -> Kind {
    let url = url.trim();
    if url.is_empty() || url.starts_with('#') || url.starts_with(super::SENTINEL_OPEN) {
        return Kind::Fine;
    }
    if url.starts_with("//") {
        return Kind::SchemeRelative;
    }
    let has_scheme = url
        .find(':')
        .filter(|&i| {
            i > 0
                && url[..i].starts_with(|c: char| c.is_ascii_alphabetic())
                && url[..i]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        })
        .is_some();
    if has_scheme {
        Kind::Absolute
    } else {
        Kind::Relative
    }
}

/// Which attribute a URL sits in: an image source or a link target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Image,
    Link,
}

/// What relative URLs are resolved against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bases<'a> {
    /// `assets_url`: where the images and files live; resolves both.
    pub assets: Option<&'a Url>,
    /// `base_url` when the operator set it: `bulletin serve`'s pages;
    /// resolves links only.
    pub pages: Option<&'a Url>,
}

impl Bases<'_> {
    /// `url` made absolute for its role; `None` when it stays relative.
    /// Absolute and fine URLs come back as they are.
    pub fn resolve(&self, url: &str, role: Role) -> Option<String> {
        match classify(url) {
            Kind::Absolute | Kind::Fine => Some(url.to_string()),
            Kind::SchemeRelative => Some(format!("https:{}", url.trim())),
            Kind::Relative => {
                let base = match role {
                    Role::Image => self.assets,
                    Role::Link => self.assets.or(self.pages),
                }?;
                base.join(url.trim()).ok().map(String::from)
            }
        }
    }
}

/// A URL that stayed relative: which attribute and the URL as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub role: Role,
    pub url: String,
}

/// The attributes that hold URLs, as mrml writes them (double quotes) and
/// as raw HTML in a campaign may (single quotes), and CSS `url()` (mrml's
/// section backgrounds), with their role.
const ATTRIBUTES: [(&str, Role); 8] = [
    (" src=\"", Role::Image),
    (" background=\"", Role::Image),
    (" href=\"", Role::Link),
    (" src='", Role::Image),
    (" background='", Role::Image),
    (" href='", Role::Link),
    ("url('", Role::Image),
    ("url(\"", Role::Image),
];

/// `html` with every relative URL in `src`, `background` and `href`
/// attributes and CSS `url()` resolved against `bases`; or each distinct URL that no base
/// resolves, in order of appearance. One pass over the HTML.
pub fn absolutise(html: &str, bases: &Bases) -> Result<String, Vec<Unresolved>> {
    let mut out = String::with_capacity(html.len());
    let mut unresolved: Vec<Unresolved> = Vec::new();
    // The next place of each attribute at or after `done`; each is searched
    // for again only once passed, so the HTML is read once whatever the
    // number of URLs.
    let find = |attr: &str, from: usize| html[from..].find(attr).map(|at| from + at);
    let mut next: Vec<Option<usize>> = ATTRIBUTES.iter().map(|(a, _)| find(a, 0)).collect();
    let mut done = 0;
    while let Some((i, at)) = next
        .iter()
        .enumerate()
        .filter_map(|(i, at)| at.map(|at| (i, at)))
        .min_by_key(|&(_, at)| at)
    {
        let (attr, role) = ATTRIBUTES[i];
        let value_start = at + attr.len();
        let quote = if attr.ends_with('"') { '"' } else { '\'' };
        let Some(len) = html[value_start..].find(quote) else {
            break;
        };
        let url = &html[value_start..value_start + len];
        out.push_str(&html[done..value_start]);
        match bases.resolve(url, role) {
            Some(absolute) => out.push_str(&absolute),
            None => {
                out.push_str(url);
                if !unresolved.iter().any(|u| u.url == url) {
                    unresolved.push(Unresolved {
                        role,
                        url: url.to_string(),
                    });
                }
            }
        }
        done = value_start + len;
        for (j, (attr, _)) in ATTRIBUTES.iter().enumerate() {
            if next[j].is_some_and(|at| at < done) {
                next[j] = find(attr, done);
            }
        }
    }
    out.push_str(&html[done..]);
    if unresolved.is_empty() {
        Ok(out)
    } else {
        Err(unresolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_urls() {
        for url in [
            "https://x.org/a.png",
            "http://x.org",
            "mailto:a@b.org",
            "tel:+441234",
            "cid:logo",
            "data:image/png;base64,AA",
        ] {
            assert_eq!(classify(url), Kind::Absolute, "{url}");
        }
        for url in ["", "#top", " #top", "QQbltn3nltbQQ", "QQbltn0nltbQQ?x=1"] {
            assert_eq!(classify(url), Kind::Fine, "{url}");
        }
        assert_eq!(classify("//cdn.x.org/a.png"), Kind::SchemeRelative);
        for url in [
            "images/forum.jpg",
            "logo.png",
            "/logo.png",
            "./a.png",
            "../a.png",
            "1http:x",
            "page?x=http://y",
        ] {
            assert_eq!(classify(url), Kind::Relative, "{url}");
        }
    }

    #[test]
    fn images_need_assets_url_and_links_take_either() {
        let assets = Url::parse("https://cdn.example.org/news/").unwrap();
        let pages = Url::parse("https://news.example.org").unwrap();
        let none = Bases::default();
        assert_eq!(none.resolve("a.png", Role::Image), None);
        assert_eq!(
            none.resolve("//cdn.x/a.png", Role::Image).as_deref(),
            Some("https://cdn.x/a.png")
        );
        let only_pages = Bases {
            assets: None,
            pages: Some(&pages),
        };
        assert_eq!(only_pages.resolve("a.png", Role::Image), None);
        assert_eq!(
            only_pages.resolve("/archive", Role::Link).as_deref(),
            Some("https://news.example.org/archive")
        );
        let both = Bases {
            assets: Some(&assets),
            pages: Some(&pages),
        };
        assert_eq!(
            both.resolve("images/forum.jpg", Role::Image).as_deref(),
            Some("https://cdn.example.org/news/images/forum.jpg")
        );
        assert_eq!(
            both.resolve("files/report.pdf", Role::Link).as_deref(),
            Some("https://cdn.example.org/news/files/report.pdf")
        );
        assert_eq!(
            both.resolve("/logo.png", Role::Image).as_deref(),
            Some("https://cdn.example.org/logo.png")
        );
        assert_eq!(
            both.resolve("mailto:a@b.org", Role::Link).as_deref(),
            Some("mailto:a@b.org")
        );
    }

    #[test]
    fn absolutise_rewrites_or_names_each_relative_url_once() {
        let html = "<img src=\"a.png\" alt=\"A\"><a href=\"#x\">x</a>\
                    <a href=\"QQbltn1nltbQQ\">u</a><img src=\"a.png\"><a href=\"doc.pdf\">d</a>\
                    <td background=\"bg.png\"></td><a href=\"https://x.org\">y</a><img src='q.png'>\
                    <div style=\"background:url('q.png') #fff\"></div>";
        assert_eq!(
            absolutise(html, &Bases::default()).unwrap_err(),
            [
                Unresolved {
                    role: Role::Image,
                    url: "a.png".into()
                },
                Unresolved {
                    role: Role::Link,
                    url: "doc.pdf".into()
                },
                Unresolved {
                    role: Role::Image,
                    url: "bg.png".into()
                },
                Unresolved {
                    role: Role::Image,
                    url: "q.png".into()
                },
            ]
        );
        let assets = Url::parse("https://cdn.example.org/").unwrap();
        let bases = Bases {
            assets: Some(&assets),
            pages: None,
        };
        assert_eq!(
            absolutise(html, &bases).unwrap(),
            "<img src=\"https://cdn.example.org/a.png\" alt=\"A\"><a href=\"#x\">x</a>\
             <a href=\"QQbltn1nltbQQ\">u</a><img src=\"https://cdn.example.org/a.png\">\
             <a href=\"https://cdn.example.org/doc.pdf\">d</a>\
             <td background=\"https://cdn.example.org/bg.png\"></td><a href=\"https://x.org\">y</a>\
             <img src='https://cdn.example.org/q.png'>\
             <div style=\"background:url('https://cdn.example.org/q.png') #fff\"></div>"
        );
    }
}
