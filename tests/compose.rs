//! Campaign files compiled to responsive email: snapshots of the example
//! campaign, one test per kind of bad input, personalisation, and the
//! `build` command end to end.

use bulletin::assets::Templates;
use bulletin::campaign;
use bulletin::config::Organisation;
use bulletin::render::{self, Compiled, Recipient, Renderer};
use expect_test::expect_file;

use crate::util::{bulletin, root, write};

fn organisation() -> Organisation {
    Organisation {
        name: "Global Alliance Against Traffic in Women".into(),
        address: "P.O. Box 36, Bangkok Noi Post Office, 10700 Bangkok, Thailand".into(),
        website: "https://gaatw.org".into(),
        logo_url: "https://gaatw.org/images/ebulletin/gaatw-logo.png".into(),
        tagline: "Human Rights at home, abroad and on the way...".into(),
    }
}

/// The one place that calls the compile API.
fn compile(file: &str, text: &str) -> Result<Compiled, campaign::Error> {
    let c = campaign::parse(file, text)?;
    let renderer = Renderer::new(&Templates::builtin())?;
    renderer.compile(
        &c,
        &render::Context {
            organisation: &organisation(),
            bases: Default::default(),
        },
    )
}

fn example() -> Compiled {
    let text = std::fs::read_to_string(root().join("campaigns/2026-11-ebulletin.md")).unwrap();
    compile("campaigns/2026-11-ebulletin.md", &text).unwrap()
}

fn recipient() -> Recipient<'static> {
    Recipient {
        email: "ana@example.net",
        name: "Ana",
        attributes: None,
        unsubscribe_url: "https://news.example/unsubscribe/TOKEN",
        preferences_url: "https://news.example/preferences/TOKEN",
        archive_url: "https://news.example/archive/2026-11-ebulletin",
    }
}

#[test]
fn example_snapshots() {
    let compiled = example();
    assert_eq!(compiled.warnings, vec![], "the example campaign is clean");
    let out = compiled.personalise(&recipient());
    assert_eq!(
        out.subject,
        "GAATW e-bulletin: safe reporting for migrant victims of crime"
    );
    expect_file!["data/ebulletin.html"].assert_eq(&out.html);
    expect_file!["data/ebulletin.txt"].assert_eq(&out.text);
}

#[test]
fn example_reproduces_the_bulletin() {
    let out = example().personalise(&recipient());
    // Words as a reader sees them, whatever the line breaks.
    let text = out.text.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "Human Rights at home, abroad and on the way...",
        "Events and News",
        "Guide for police and labour inspectors working with migrants in the UK",
        "Focus on Labour Exploitation (FLEX)",
        "Latin American Women’s Rights Service (LAWRS)",
        "safe reporting for labour exploitation",
        "safe reporting for domestic abuse",
        "Dear Ana,",
    ] {
        assert!(out.html.contains(needle), "HTML lacks {needle:?}");
        assert!(text.contains(needle), "text lacks {needle:?}");
    }
}

#[test]
fn html_is_fully_compiled_and_responsive() {
    let out = example().personalise(&recipient());
    assert!(!out.html.contains("<mj-"), "leftover MJML tags");
    assert!(!out.html.contains("{{"), "leftover handlebars");
    assert!(
        out.html
            .contains("@media only screen and (min-width:480px)"),
        "mrml's responsive media query"
    );
    assert!(out.html.contains("mj-column-per-100"));
    assert!(
        out.html
            .contains(r#"<a href="https://news.example/unsubscribe/TOKEN">Unsubscribe</a>"#)
    );
    assert!(
        out.html
            .contains(r#"href="https://news.example/preferences/TOKEN""#)
    );
    assert!(
        out.html
            .contains(r#"href="https://news.example/archive/2026-11-ebulletin""#)
    );
    assert!(out.html.contains("P.O. Box 36, Bangkok Noi Post Office"));
}

#[test]
fn text_part_is_wrapped_and_ends_with_links() {
    let out = example().personalise(&recipient());
    assert!(
        out.text
            .lines()
            .all(|l| l.chars().count() <= 78 || l.starts_with('[')),
        "{}",
        out.text
    );
    assert!(out.text.ends_with(
        "Unsubscribe: https://news.example/unsubscribe/TOKEN\n\
         Manage your preferences: https://news.example/preferences/TOKEN\n"
    ));
    assert!(out.text.contains("[1] https://labourexploitation.org/"));
}

#[test]
fn personalisation_escapes_script_in_name() {
    let r = Recipient {
        name: "<script>alert(1)</script>",
        ..recipient()
    };
    let out = example().personalise(&r);
    assert!(
        !out.html.contains("<script>alert(1)"),
        "script tag reached the HTML"
    );
    assert!(
        out.html
            .contains("Dear &lt;script&gt;alert(1)&lt;/script&gt;,")
    );
    assert!(
        out.text.contains("Dear <script>alert(1)</script>,"),
        "text part is not HTML"
    );
}

#[test]
fn empty_name_uses_fallback() {
    let r = Recipient {
        name: "",
        ..recipient()
    };
    assert!(example().personalise(&r).html.contains("Dear friend,"));
}

#[test]
fn raw_mjml_campaign() {
    let text = "+++\nsubject = \"Hi {{subscriber.name}}\"\nlist = \"l\"\npreheader = \"p\"\n+++\n<mjml><mj-body><mj-section><mj-column>\n<mj-text>Hello {{subscriber.name}} <a href=\"{{unsubscribe_url}}\">Unsubscribe</a></mj-text>\n</mj-column></mj-section></mj-body></mjml>\n";
    let compiled = compile("c.mjml", text).unwrap();
    assert_eq!(compiled.warnings, vec![]);
    let out = compiled.personalise(&recipient());
    assert_eq!(out.subject, "Hi Ana");
    assert!(out.html.contains("Hello Ana"));
    assert!(!out.html.contains("<mj-"));
    assert!(
        out.text.starts_with("Hello Ana Unsubscribe [1]\n"),
        "{}",
        out.text
    );
    assert!(
        out.text
            .ends_with("Manage your preferences: https://news.example/preferences/TOKEN\n")
    );
}

// --- bad input: one test per kind, each asserting the message -----------

fn error(file: &str, text: &str) -> String {
    compile(file, text).unwrap_err().to_string()
}

#[test]
fn bad_missing_front_matter() {
    assert_eq!(
        error("campaigns/x.md", "# Hello\n"),
        "campaigns/x.md:1: front matter: the file must start with a line `+++`, then lines such as \
         `subject = \"...\"` and `list = \"...\"`, then a closing `+++`"
    );
}

#[test]
fn bad_malformed_front_matter() {
    let e = error(
        "campaigns/x.md",
        "+++\nlist = \"l\"\nsubject = \"unterminated\n+++\nbody\n",
    );
    assert!(e.starts_with("campaigns/x.md:3: front matter: "), "{e}");
}

#[test]
fn bad_missing_subject() {
    assert_eq!(
        error("campaigns/x.md", "+++\nlist = \"l\"\n+++\nbody\n"),
        "campaigns/x.md:1: front matter: missing `subject`; add a line `subject = \"...\"`"
    );
}

#[test]
fn bad_unknown_template() {
    let e = error(
        "campaigns/x.md",
        "+++\nsubject = \"s\"\nlist = \"l\"\ntemplate = \"fancy\"\n+++\nbody\n",
    );
    assert_eq!(
        e,
        "campaigns/x.md:4: unknown template \"fancy\"; add templates/fancy.mjml or use one of: ebulletin"
    );
}

#[test]
fn bad_mjml_does_not_compile() {
    let e = error(
        "campaigns/x.mjml",
        "+++\nsubject = \"s\"\nlist = \"l\"\n+++\n<mjml><mj-body>\n<mj-section><mj-column><mj-text>x</mj-column>\n</mj-body></mjml>\n",
    );
    assert_eq!(
        e,
        "campaigns/x.mjml:6: MJML does not compile: <mj-text> is not closed before </mj-column>; \
         add </mj-text> near \"<mj-text>x</mj-column>\""
    );
}

// See: "compile is safe on hostile campaigns" (10,000 nested quotes or
// <div>s overflowed the stack with no file or line).
#[test]
fn bad_deep_nesting_exits_2_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let front = "+++\nsubject = \"s\"\npreheader = \"p\"\nlist = \"l\"\n+++\n\nHello.\n\n";
    let divs = format!("{}deep{}", "<div>".repeat(10_000), "</div>".repeat(10_000));
    let cases = [
        (
            "quotes.md",
            format!("{front}{} deep\n", ">".repeat(10_000)),
            9,
            "quotes, lists or emphasis",
        ),
        (
            "lists.md",
            format!(
                "{front}{}",
                (0..1_000)
                    .map(|i| format!("{}- item\n", "  ".repeat(i)))
                    .collect::<String>()
            ),
            34,
            "quotes, lists or emphasis",
        ),
        (
            "divs.md",
            format!("{front}{divs}\n"),
            9,
            "HTML or MJML elements",
        ),
        (
            "divs.mjml",
            format!(
                "{front}<mjml><mj-body><mj-section><mj-column><mj-text>\n{divs}\n</mj-text></mj-column></mj-section></mj-body></mjml>\n"
            ),
            10,
            "HTML or MJML elements",
        ),
    ];
    for (name, text, line, what) in cases {
        write(dir.path(), &format!("campaigns/{name}"), &text);
        let out = bulletin(dir.path())
            .args(["build", &format!("campaigns/{name}")])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "bulletin: campaigns/{name}:{line}: {what} nested more than 50 deep; flatten"
            )),
            "{name}: {stderr}"
        );
        assert!(!dir.path().join("out").exists(), "{name}: nothing written");
    }
}

#[test]
fn nesting_at_the_limit_compiles_on_a_small_stack() {
    // Test threads have 2 MB stacks, less than the binary's main thread:
    // the deepest campaign allowed must still compile here.
    let front = "+++\nsubject = \"s\"\npreheader = \"p\"\nlist = \"l\"\n+++\n\n";
    let quotes = format!("{front}{} deep\n", ">".repeat(49));
    let html = compile("campaigns/q.md", &quotes)
        .unwrap()
        .personalise(&recipient())
        .html;
    assert_eq!(html.matches("<blockquote>").count(), 49);
    let divs = format!("{}deep{}", "<div>".repeat(50), "</div>".repeat(50));
    let both = format!("{front}{} {divs}\n", ">".repeat(48));
    let html = compile("campaigns/b.md", &both)
        .unwrap()
        .personalise(&recipient())
        .html;
    assert_eq!(html.matches("<div>").count(), 50, "{html}");
    // One level more is refused.
    let e = error(
        "campaigns/q.md",
        &format!("{front}{} deep\n", ">".repeat(50)),
    );
    assert!(
        e.starts_with("campaigns/q.md:7: quotes, lists or emphasis nested more than 50 deep"),
        "{e}"
    );
}

#[test]
fn bad_oversize_campaign() {
    let front = "+++\nsubject = \"s\"\nlist = \"l\"\n+++\n";
    let text = format!("{front}{}", "A paragraph of news.\n\n".repeat(200_000));
    assert_eq!(
        error("campaigns/big.md", &text),
        "campaigns/big.md:1: the file is 4.2 MB, over the limit of 2 MB; a campaign is read \
         whole and mail clients clip email over 102 KB, so shorten it or split it"
    );
}

#[test]
fn bad_template_syntax_names_template_file() {
    let mut t = Templates::builtin();
    t.partials[0].source = "<mj-section>{{#if org.name}}</mj-section>".into();
    t.partials[0].origin = "templates/partials/header.mjml".into();
    let e = Renderer::new(&t).err().expect("template error").to_string();
    assert!(
        e.starts_with("templates/partials/header.mjml:1: template does not parse"),
        "{e}"
    );
}

// --- warnings --------------------------------------------------------------

#[test]
fn deliverability_warnings() {
    let text = "+++\nsubject = \"s\"\nlist = \"l\"\n+++\n# S\n\n![](https://x.org/a.png)\n\nSee [this](http://x.org/) {{subscriber_name}}.\n";
    let w = compile("c.md", text).unwrap().warnings;
    let lines: Vec<(Option<usize>, &str)> =
        w.iter().map(|w| (w.line, w.message.as_str())).collect();
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == Some(9) && m.starts_with("placeholder {{subscriber_name}}")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == Some(7) && m.contains("no alt text")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == Some(9) && m.starts_with("insecure link http://x.org/")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == Some(1) && m.starts_with("no preheader")),
        "{lines:?}"
    );
}

#[test]
fn warning_for_template_without_unsubscribe() {
    let mut t = Templates::builtin();
    let footer = t.partials.iter_mut().find(|p| p.name == "footer").unwrap();
    footer.source = "<mj-section><mj-column><mj-text>bye</mj-text></mj-column></mj-section>".into();
    let c = campaign::parse(
        "c.md",
        "+++\nsubject = \"s\"\nlist = \"l\"\npreheader = \"p\"\n+++\nHello\n",
    )
    .unwrap();
    let compiled = Renderer::new(&t)
        .unwrap()
        .compile(
            &c,
            &render::Context {
                organisation: &organisation(),
                bases: Default::default(),
            },
        )
        .unwrap();
    assert!(
        compiled
            .warnings
            .iter()
            .any(|w| w.message.contains("no unsubscribe link")),
        "{:?}",
        compiled.warnings
    );
}

#[test]
fn warning_for_gmail_clipping() {
    let big = "Lorem ipsum dolor sit amet. ".repeat(4000);
    let text = format!("+++\nsubject = \"s\"\nlist = \"l\"\npreheader = \"p\"\n+++\n{big}\n");
    let w = compile("c.md", &text).unwrap().warnings;
    assert!(w.iter().any(|w| w.message.contains("Gmail clips")), "{w:?}");
}

// --- the build command ------------------------------------------------------

#[test]
fn build_writes_html_text_eml_and_mjml() {
    let dir = tempfile::tempdir().unwrap();
    let out = bulletin(dir.path())
        .args([
            "build",
            root()
                .join("campaigns/2026-11-ebulletin.md")
                .to_str()
                .unwrap(),
            "--out",
            "o",
            "--mjml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("subject:  GAATW e-bulletin"), "{stdout}");
    for ext in ["html", "txt", "eml", "mjml"] {
        let path = dir.path().join(format!("o/2026-11-ebulletin.{ext}"));
        assert!(path.exists(), "{} missing", path.display());
    }
    let eml = std::fs::read_to_string(dir.path().join("o/2026-11-ebulletin.eml")).unwrap();
    assert!(eml.contains("Content-Type: multipart/alternative"));
    assert!(eml.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    let mjml = std::fs::read_to_string(dir.path().join("o/2026-11-ebulletin.mjml")).unwrap();
    assert!(mjml.contains("<mj-body"));
}

#[test]
fn build_bad_campaign_exits_2_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "campaigns/x.md",
        "+++\nlist = \"l\"\nsubject = 3\n+++\nbody\n",
    );
    let out = bulletin(dir.path())
        .args(["build", "campaigns/x.md", "--out", "o"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("bulletin: campaigns/x.md:3: front matter: "),
        "{stderr}"
    );
    assert!(!dir.path().join("o").exists(), "nothing is written");
}

#[test]
fn build_strict_turns_warnings_into_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "c.md",
        "+++\nsubject = \"s\"\nlist = \"l\"\n+++\nSee [x](http://x.org/).\n",
    );
    let out = bulletin(dir.path())
        .args(["build", "c.md", "--out", "o", "--strict"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("c.md:5: warning: insecure link http://x.org/"),
        "{stderr}"
    );
    assert!(stderr.contains("--strict"), "{stderr}");
    assert!(!dir.path().join("o").exists());
    // Without --strict the same campaign builds, with the warning printed.
    let out = bulletin(dir.path())
        .args(["build", "c.md", "--out", "o"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("warning: insecure link")
    );
}

// --- the preview server -----------------------------------------------------

#[test]
fn preview_serves_and_rerenders_on_change() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let campaign = write(
        dir.path(),
        "c.md",
        "+++\nsubject = \"First\"\nlist = \"l\"\npreheader = \"p\"\n+++\nHello one\n",
    );
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("bulletin"));
    cmd.current_dir(dir.path())
        .args(["--no-config", "preview", "c.md", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped());
    let mut child = crate::util::Child(cmd.spawn().unwrap());
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();

    let (status, page) = crate::util::http_get(&addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<strong>Subject:</strong> First"), "{page}");
    assert!(page.contains("?view=phone"), "width switch");
    let (_, phone) = crate::util::http_get(&addr, "/?view=phone");
    assert!(phone.contains("width:375px"));
    let (_, html) = crate::util::http_get(&addr, "/email.html");
    assert!(html.contains("Hello one") && !html.contains("<mj-"));
    let (_, text) = crate::util::http_get(&addr, "/email.txt");
    assert!(text.starts_with("Example Alliance"), "{text}");
    let (_, v1) = crate::util::http_get(&addr, "/version");

    // Edit the campaign: the next request re-renders.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(
        &campaign,
        "+++\nsubject = \"Second\"\nlist = \"l\"\npreheader = \"p\"\n+++\nHello two\n",
    )
    .unwrap();
    let f = std::fs::File::options()
        .write(true)
        .open(&campaign)
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    let (_, v2) = crate::util::http_get(&addr, "/version");
    assert_ne!(v1, v2);
    let (_, html) = crate::util::http_get(&addr, "/email.html");
    assert!(html.contains("Hello two"));

    // A broken edit shows the error instead of the email.
    std::fs::write(&campaign, "+++\nlist = \"l\"\n+++\nx\n").unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(10))
        .unwrap();
    let (_, page) = crate::util::http_get(&addr, "/");
    assert!(
        page.contains("c.md:1: front matter: missing `subject`"),
        "{page}"
    );
}

#[test]
fn help_output_is_committed() {
    // See: bat tests/integration_tests.rs::test_help. Refresh with UPDATE_EXPECT=1.
    let out = bulletin(&root()).arg("--help").output().unwrap();
    assert!(out.status.success());
    expect_file!["data/help.txt"].assert_eq(&String::from_utf8(out.stdout).unwrap());
}
