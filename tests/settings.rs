//! Settings that are wrong fail loudly, through the real binary: one
//! `bulletin: ...` line naming the setting and where it was set, exit 2,
//! nothing sent. A base_url without a scheme, a misspelt SMTP URL (even
//! for a `dispatch` with nothing due), an SMTP server that cannot be
//! reached, a misspelt config path, and (with `BULLETIN_TEST_POSTGRES`) a
//! PostgreSQL database that does not exist.

use std::process::Output;

use crate::dispatch::Env;
use crate::support::output;
use crate::support::smtp_sink::{Behaviour, SmtpSink};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one line a failed command printed: exit 2, nothing on standard
/// output, a single `bulletin: ` line on standard error.
#[track_caller]
fn one_error_line(out: &Output, what: &str) -> String {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{what}: {stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains("warning:")).collect();
    assert_eq!(lines.len(), 1, "{what}: {stderr}");
    assert!(lines[0].starts_with("bulletin: "), "{what}: {stderr}");
    lines[0].to_string()
}

// `BULLETIN_BASE_URL=news.example.org` once sent a real campaign whose
// List-Unsubscribe was `<news.example.org/unsubscribe/...>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_url_without_a_scheme_sends_nothing() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(2, &[]).await;
    for args in [&["send", "campaigns/news-1.md", "--yes"][..], &["dispatch"]] {
        let mut cmd = env.command(args);
        cmd.env("BULLETIN_BASE_URL", "news.example.org");
        let line = one_error_line(&output(cmd).await, &format!("{args:?}"));
        assert!(
            line.starts_with(
                "bulletin: base_url \"news.example.org\" (set by BULLETIN_BASE_URL) is not an absolute http:// or https:// URL; write "
            ),
            "{line}"
        );
    }
    // The same in bulletin.toml names the file.
    let config = env.dir.path().join("bulletin.toml");
    let was = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        was.replace("https://news.example.org", "news.example.org"),
    )
    .unwrap();
    let out = env.run(&["send", "campaigns/news-1.md", "--yes"]).await;
    let line = one_error_line(&out, "base_url in the file");
    assert!(
        line.contains("(set by base_url in bulletin.toml)"),
        "{line}"
    );
    std::fs::write(&config, was).unwrap();
    assert!(sink.messages().is_empty(), "nothing was sent");
    // Nothing was frozen either: the good URL sends the campaign afresh.
    let said = env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert!(said.contains("news-1: sent 2 (finished)"), "{said}");
    assert!(
        sink.messages().iter().all(|m| {
            crate::support::returned::header(m, "List-Unsubscribe")
                .contains("<https://news.example.org/unsubscribe/")
        }),
        "List-Unsubscribe on the good base_url"
    );
}

// `smpt://` said "the scheme must be smtp or smtps" without saying where the
// URL was set, and `dispatch` with nothing due exited 0 on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_smtp_url_names_where_it_was_set_even_with_nothing_due() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(1, &[]).await;
    let bad = "smpt://mailer:pw-in-url@127.0.0.1:2525";
    let shown = "bulletin: SMTP URL smpt://mailer@127.0.0.1:2525";
    let why = "the scheme must be smtp or smtps";
    // Nothing is due: `dispatch` refuses the URL all the same.
    let mut cmd = env.command(&["dispatch"]);
    cmd.env("BULLETIN_SMTP_URL", bad);
    let line = one_error_line(&output(cmd).await, "dispatch, BULLETIN_SMTP_URL");
    assert_eq!(line, format!("{shown} (set by BULLETIN_SMTP_URL): {why}"));
    let mut cmd = env.command(&["--smtp-url", bad, "dispatch"]);
    cmd.env_remove("BULLETIN_SMTP_URL");
    let line = one_error_line(&output(cmd).await, "dispatch, --smtp-url");
    assert_eq!(line, format!("{shown} (set by --smtp-url flag): {why}"));
    // In bulletin.toml (which takes no password).
    let config = env.dir.path().join("bulletin.toml");
    let was = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        was.replace(
            "[smtp]\n",
            "[smtp]\nurl = \"smpt://mailer@127.0.0.1:2525\"\n",
        ),
    )
    .unwrap();
    for args in [&["dispatch"][..], &["send", "campaigns/news-1.md", "--yes"]] {
        let mut cmd = env.command(args);
        cmd.env_remove("BULLETIN_SMTP_URL");
        let line = one_error_line(&output(cmd).await, &format!("{args:?}, [smtp] url"));
        assert_eq!(
            line,
            format!("{shown} (set by [smtp] url in bulletin.toml): {why}")
        );
    }
    assert!(sink.messages().is_empty());
}

// A run that stops because the SMTP server cannot be reached says where
// its URL was set; so does a test copy, the first send a new operator makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_be_reached_names_where_the_smtp_url_was_set() {
    let port = crate::util::free_port();
    let env = Env::new(port, "");
    env.subscribers(1, &[]).await;
    let sends = [
        &["send", "campaigns/news-1.md", "--yes"][..],
        &["test", "campaigns/news-1.md", "--to", "me@example.org"],
    ];
    for args in sends {
        let line = one_error_line(&env.run(args).await, &format!("{args:?} to a closed port"));
        assert!(
            line.contains(&format!("cannot connect to 127.0.0.1:{port}: "))
                && line.ends_with("(SMTP URL set by BULLETIN_SMTP_URL)"),
            "{line}"
        );
    }
}

// A misspelt config path printed the io error twice and named no setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_config_path_is_one_line_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = crate::support::bulletin_in(dir.path());
    cmd.env("BULLETIN_CONFIG", "bulletn.toml").arg("lists");
    let out = output(cmd).await;
    assert_eq!(
        one_error_line(&out, "BULLETIN_CONFIG"),
        "bulletin: bulletn.toml (set by BULLETIN_CONFIG): no such file"
    );
    let mut cmd = crate::support::bulletin_in(dir.path());
    cmd.args(["--config", "bulletn.toml", "lists"]);
    let out = output(cmd).await;
    assert_eq!(
        one_error_line(&out, "--config"),
        "bulletin: bulletn.toml (set by --config flag): no such file"
    );
}

// A PostgreSQL database that does not exist is a setting to fix (exit 2,
// `dispatch` too: it is not a server that cannot be reached), named with
// where the URL was set and how to create it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_that_does_not_exist_says_how_to_create_it() {
    let Some(admin) = crate::support::pg::requested() else {
        eprintln!(
            "notice: a_postgres_database_that_does_not_exist_says_how_to_create_it: {} is not set; this test needs a PostgreSQL server (start one with .ci/postgres)",
            crate::support::pg::VARIABLE
        );
        return;
    };
    let mut url = url::Url::parse(&admin).unwrap();
    let name = format!("bt_missing_{}", std::process::id());
    url.set_path(&format!("/{name}"));
    let env = Env::sqlite(crate::util::free_port(), "");
    for args in [&["lists"][..], &["dispatch"], &["init"]] {
        let mut cmd = env.command(args);
        cmd.env("BULLETIN_DB", url.as_str());
        let line = one_error_line(&output(cmd).await, &format!("{args:?}"));
        assert_eq!(
            line,
            format!(
                "bulletin: {} (set by BULLETIN_DB): no database \"{name}\" on the server; create it (createdb {name}) or fix the name",
                crate::support::pg::redacted(url.as_str())
            )
        );
    }
}
