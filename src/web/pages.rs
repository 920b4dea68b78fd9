//! Rendering the subscriber pages from `templates/web/` (handlebars, HTML
//! escaping on) inside `layout.html`.

use handlebars::Handlebars;
use serde::Serialize;
use serde_json::{Value, json};

use crate::assets::Templates;
use crate::config::Organisation;
use crate::render::escape_html;

/// The page templates, parsed once.
pub struct Pages {
    hbs: Handlebars<'static>,
    org: Value,
}

impl Pages {
    /// Registers the pages; a template that does not parse names its file.
    pub fn new(templates: &Templates, org: &Organisation) -> Result<Pages, String> {
        let mut hbs = Handlebars::new();
        hbs.register_escape_fn(escape_html);
        for t in &templates.pages {
            hbs.register_template_string(&t.name, &t.source)
                .map_err(|e| format!("{}: {e}", t.origin))?;
        }
        Ok(Pages {
            hbs,
            org: json!(org),
        })
    }

    /// Renders page `name` with `data` inside the layout.
    pub fn page(&self, name: &str, title: &str, data: &impl Serialize) -> Result<String, String> {
        let mut data = serde_json::to_value(data).map_err(|e| e.to_string())?;
        if let Value::Object(m) = &mut data {
            m.insert("org".into(), self.org.clone());
        }
        let body = self.hbs.render(name, &data).map_err(|e| e.to_string())?;
        self.hbs
            .render(
                "layout",
                &json!({ "title": title, "org": self.org, "body": body }),
            )
            .map_err(|e| e.to_string())
    }

    /// A heading and paragraphs.
    pub fn message(&self, heading: &str, paragraphs: &[&str]) -> Result<String, String> {
        self.page(
            "message",
            heading,
            &json!({ "heading": heading, "paragraphs": paragraphs }),
        )
    }

    /// Renders a non-page template (the confirmation email text).
    pub fn text(&self, name: &str, data: &impl Serialize) -> Result<String, String> {
        let mut data = serde_json::to_value(data).map_err(|e| e.to_string())?;
        if let Value::Object(m) = &mut data {
            m.insert("org".into(), self.org.clone());
        }
        // Plain text: no HTML escaping.
        let mut hbs = self.hbs.clone();
        hbs.register_escape_fn(handlebars::no_escape);
        hbs.render(name, &data).map_err(|e| e.to_string())
    }
}

/// A minimal page that needs no templates (for errors).
pub fn plain(heading: &str, paragraphs: &[&str]) -> String {
    let body: String = paragraphs
        .iter()
        .map(|p| format!("<p>{}</p>", escape_html(p)))
        .collect();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{h}</title>\
         <style>body{{font:17px/1.5 system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;color:#1d1d1d}}</style>\
         </head><body><main><h1>{h}</h1>{body}</main></body></html>",
        h = escape_html(heading)
    )
}
