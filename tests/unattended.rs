//! What a new user walking through the README found, each through the real
//! binary against the in-process SMTP sink: no SMTP sending without
//! `BULLETIN_SECRET`, a campaign keeps its transport kind, a quiet
//! `dispatch` while retries wait, recipients (not attempts) counted, one
//! outbox file per test copy, and `doctor` naming the transport.

use crate::dispatch::Env;
use crate::support::output;
use crate::support::smtp_sink::{Behaviour, SmtpSink};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Adds `outbox = "outbox"` to the project's bulletin.toml: both an outbox
/// and (in the environment) an SMTP URL are configured.
fn with_outbox_in_config(env: &Env) {
    let path = env.dir.path().join("bulletin.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("outbox = \"outbox\"\n{config}")).unwrap();
}

fn outbox_files(env: &Env) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(env.dir.path().join("outbox")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_sending_commands_refuse_to_run_without_the_secret() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.subscribers(2, &[]).await;
    let commands: [&[&str]; 4] = [
        &["send", "campaigns/news-1.md", "--yes"],
        &["test", "campaigns/news-1.md", "--to", "me@example.net"],
        &["doctor", "--send-test", "me@example.net"],
        // Sign-up confirmations go out over SMTP.
        &["serve", "--listen", "127.0.0.1:0"],
    ];
    for args in commands {
        let mut cmd = env.command(args);
        cmd.env_remove("BULLETIN_SECRET");
        let out = output(cmd).await;
        let stderr = text(&out.stderr);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(
            format!("{stdout}{stderr}").contains("BULLETIN_SECRET is not set")
                && format!("{stdout}{stderr}").contains("set -a; . ./.env"),
            "{args:?}: {stdout}{stderr}"
        );
    }
    assert!(sink.messages().is_empty(), "nothing went out over SMTP");
    // A dispatch with nothing due still fails: a cron job that lost its
    // environment is noticed before the next campaign is due.
    let mut cmd = env.command(&["dispatch"]);
    cmd.env_remove("BULLETIN_SECRET");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("BULLETIN_SECRET is not set"));
    // Trying it out with the outbox keeps the development secret.
    let mut cmd = env.command(&["send", "campaigns/news-1.md", "--yes"]);
    cmd.env_remove("BULLETIN_SECRET")
        .env_remove("BULLETIN_SMTP_URL")
        .env("BULLETIN_OUTBOX", "outbox");
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("development secret"));
    assert_eq!(outbox_files(&env).len(), 2);
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_started_over_smtp_is_not_finished_into_the_outbox() {
    let sink = SmtpSink::start(Behaviour::new().defer_first("slow", 1));
    // The retry is due 3 s later: well after the send ends, even on a
    // loaded machine (the send must end with it deferred).
    let env = Env::new(sink.port(), "retry_wait_secs = 0\nretry_base_secs = 3");
    with_outbox_in_config(&env);
    env.subscribers(3, &["slow@example.net"]).await;
    let out = env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert!(out.contains("deferred 1"), "{out}");
    assert_eq!(sink.messages().len(), 3);
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    // Cron without BULLETIN_SMTP_URL: the outbox in bulletin.toml would
    // take over. The campaign is refused, nothing is claimed or written.
    let mut cmd = env.command(&["dispatch"]);
    cmd.env_remove("BULLETIN_SMTP_URL");
    let out = output(cmd).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}{stderr}", text(&out.stdout));
    assert!(
        stderr.contains("news-1: started over SMTP via 127.0.0.1:")
            && stderr.contains("this run would send to the outbox folder")
            && stderr.contains("(outbox in bulletin.toml)"),
        "{stderr}"
    );
    assert!(outbox_files(&env).is_empty(), "{:?}", outbox_files(&env));
    // `send` resuming it the same way is refused too.
    let mut cmd = env.command(&["send", "campaigns/news-1.md", "--yes"]);
    cmd.env_remove("BULLETIN_SMTP_URL");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("keeps the transport it started with"));
    assert!(outbox_files(&env).is_empty());
    // With the SMTP URL back, the deferred person gets the mail.
    let out = env.ok(&["dispatch"]).await;
    assert!(out.contains("news-1: sent 1 (finished)"), "{out}");
    assert_eq!(sink.rcpt_attempts("slow@example.net"), 2);
    assert_eq!(sink.messages().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_written_to_the_outbox_does_not_go_on_over_smtp() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    with_outbox_in_config(&env);
    env.subscribers(2, &[]).await;
    // Queued, then dispatched into the outbox (no SMTP URL).
    let mut cmd = env.command(&["send", "campaigns/news-1.md", "--yes"]);
    cmd.env_remove("BULLETIN_SMTP_URL");
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(outbox_files(&env).len(), 2);
    // Sent to who joined since, this time with the SMTP URL set: refused,
    // naming where this run's transport came from.
    env.add_confirmed("new@example.net", "news").await;
    let out = env
        .run(&["send", "campaigns/news-1.md", "--yes", "--only-new"])
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}{stderr}", text(&out.stdout));
    assert!(
        stderr.contains("started to the outbox folder")
            && stderr.contains("this run would send over SMTP via 127.0.0.1:")
            && stderr.contains("(BULLETIN_SMTP_URL)"),
        "{stderr}"
    );
    assert!(sink.messages().is_empty(), "nothing went over SMTP");
    assert_eq!(outbox_files(&env).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_is_silent_while_a_retry_waits() {
    let sink = SmtpSink::start(Behaviour::new().defer_first("slow", 1));
    // The retry is an hour away: every dispatch until then finds it waiting.
    let env = Env::new(sink.port(), "retry_wait_secs = 0\nretry_base_secs = 3600");
    env.subscribers(2, &["slow@example.net"]).await;
    let out = env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert!(out.contains("retries pending"), "{out}");
    for _ in 0..2 {
        let out = env.run(&["dispatch"]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "", "cron would mail this");
        assert_eq!(text(&out.stderr), "", "cron would mail this");
    }
    assert_eq!(sink.rcpt_attempts("slow@example.net"), 1);
    let status = env.ok(&["status", "--format", "json"]).await;
    let status: serde_json::Value = serde_json::from_str(status.lines().next().unwrap()).unwrap();
    assert_eq!(status["deliveries"]["deferred"], 1, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_counts_people_deferred_not_attempts() {
    // Retries 1 s, then 2 s, are waited for in the run; the third (4 s) is
    // left to dispatch: one person, three deferrals, still deferred.
    let sink = SmtpSink::start(Behaviour::new().defer_first("slow", 5));
    let env = Env::new(
        sink.port(),
        "retry_wait_secs = 3\nretry_base_secs = 1\nmax_attempts = 10",
    );
    env.subscribers(2, &["slow@example.net"]).await;
    let Some(out) = on_a_terminal(&env, "send campaigns/news-1.md --yes").await else {
        return;
    };
    assert_eq!(sink.rcpt_attempts("slow@example.net"), 3, "{out}");
    assert!(
        out.contains("news-1: sent 2, deferred 1 (retries pending"),
        "{out}"
    );
    // The progress line says what the run is waiting for, and never
    // shows an empty 0/0 bar.
    assert!(out.contains("waiting to retry 1 (next at "), "{out}");
    assert!(!out.contains("0/0"), "{out}");
    let status = env.ok(&["status", "--format", "json"]).await;
    let status: serde_json::Value = serde_json::from_str(status.lines().next().unwrap()).unwrap();
    assert_eq!(status["deliveries"]["deferred"], 1, "{status}");
}

/// Runs `bulletin ARGS` in the project under a pseudo-terminal (util-linux
/// `script`), as a person at a terminal sees it: what was shown, bars
/// included. `None` (with a notice) without `script`.
async fn on_a_terminal(env: &Env, args: &str) -> Option<String> {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !crate::support::servers::interop_required(),
            "BULLETIN_INTEROP=1 but util-linux `script` is not installed"
        );
        eprintln!("notice: util-linux `script` not installed; terminal output not checked");
        return None;
    }
    let bin = assert_cmd::cargo::cargo_bin("bulletin");
    let line = format!("{} --config bulletin.toml {args}", bin.display());
    let mut cmd = env.command(&[]);
    // The same environment as the binary gets, through `script`.
    let vars: Vec<(String, String)> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
        .collect();
    cmd = std::process::Command::new("script");
    for (k, _) in std::env::vars() {
        if k.starts_with("BULLETIN_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(vars)
        .current_dir(env.dir.path())
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null());
    let out = output(cmd).await;
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    Some(shown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_copies_to_the_outbox_get_one_file_each() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    with_outbox_in_config(&env);
    env.subscribers(1, &[]).await;
    let to = "a@example.net,b@example.net,Carl+news@example.net";
    let mut cmd = env.command(&["test", "campaigns/news-1.md", "--to", to]);
    cmd.env_remove("BULLETIN_SMTP_URL");
    let out = output(cmd).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let files = outbox_files(&env);
    assert_eq!(files.len(), 3, "{files:?}\n{stdout}");
    for (file, addr) in
        files
            .iter()
            .zip(["a@example.net", "b@example.net", "Carl_news@example.net"])
    {
        assert!(file.ends_with(&format!("-{addr}.eml")), "{files:?}");
        assert!(stdout.contains(&format!("outbox/{file}")), "{stdout}");
    }
    // Each file holds the copy to its own address.
    for (file, addr) in
        files
            .iter()
            .zip(["a@example.net", "b@example.net", "Carl+news@example.net"])
    {
        let eml = std::fs::read_to_string(env.dir.path().join("outbox").join(file)).unwrap();
        assert!(eml.contains(&format!("To: {addr}")), "{file}: {eml}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_which_transport_sending_uses_and_why() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    env.ok(&["lists", "add", "news", "--name", "News"]).await;
    let transport_line = |out: &str| {
        out.lines()
            .find(|l| l.contains("  transport: "))
            .unwrap_or_else(|| panic!("no transport line in:\n{out}"))
            .to_string()
    };
    // SMTP only.
    let out = env.run(&["doctor"]).await;
    let line = transport_line(&text(&out.stdout));
    assert!(
        line.starts_with("ok    transport: SMTP via 127.0.0.1:")
            && line.ends_with("(BULLETIN_SMTP_URL)"),
        "{line}"
    );
    // Both: SMTP is used, the outbox ignored, and doctor warns.
    with_outbox_in_config(&env);
    let out = env.run(&["doctor"]).await;
    let line = transport_line(&text(&out.stdout));
    assert!(
        line.starts_with("warn  transport: SMTP via 127.0.0.1:")
            && line.contains("(BULLETIN_SMTP_URL); the outbox ")
            && line.contains("(outbox in bulletin.toml) is ignored"),
        "{line}"
    );
    // The outbox alone: nothing is sent, and doctor says so.
    let mut cmd = env.command(&["doctor"]);
    cmd.env_remove("BULLETIN_SMTP_URL");
    let out = output(cmd).await;
    let line = transport_line(&text(&out.stdout));
    assert!(
        line.starts_with("warn  transport: the outbox folder ")
            && line.contains("(outbox in bulletin.toml): messages are written there, not sent"),
        "{line}"
    );
}

// See: issue 14 item 2. Cron runs `dispatch` while the PostgreSQL server is
// down (nothing listens on port 1 of loopback): exit 75 so the next run
// retries, one line naming the database without its password and the
// setting that chose it. Needs no server, so it runs on both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_against_an_unreachable_database_server_exits_75_naming_the_setting() {
    let env = Env::new(0, "");
    let down = "postgres://bulletin:sekrit@127.0.0.1:1/news";
    let shown = "postgres://bulletin:***@127.0.0.1:1/news";
    let config = env.dir.path().join("bulletin.toml");
    let text_of = std::fs::read_to_string(&config).unwrap();
    let first = text_of.lines().next().unwrap().to_string();
    assert!(first.starts_with("db = "), "{first}");
    // The file names the server; its password comes from the environment
    // (a password in the file is refused).
    let in_file = "postgres://bulletin@127.0.0.1:1/news";
    std::fs::write(
        &config,
        text_of.replacen(&first, &format!("db = {in_file:?}"), 1),
    )
    .unwrap();
    let chosen_by: [(&str, Option<&str>, &str); 3] = [
        // Env runs with `--config bulletin.toml`.
        ("the config file", None, "db in bulletin.toml"),
        ("BULLETIN_DB", Some("BULLETIN_DB"), "BULLETIN_DB"),
        ("--db", Some("--db"), "--db flag"),
    ];
    for (case, how, source) in chosen_by {
        let mut cmd = match how {
            Some("--db") => env.command(&["--db", down, "dispatch"]),
            _ => env.command(&["dispatch"]),
        };
        if how.is_none() {
            cmd.env("BULLETIN_DB_PASSWORD", "sekrit");
        }
        if how == Some("BULLETIN_DB") {
            cmd.env("BULLETIN_DB", down);
        }
        let out = output(cmd).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(75), "{case}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{case}: one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("bulletin: {shown} (set by {source}): ")),
            "{case}: {stderr}"
        );
        assert!(stderr.contains("cannot be reached"), "{case}: {stderr}");
        assert!(!stderr.contains("sekrit"), "{case}: {stderr}");
    }
    // A command run by hand fails as usual, with the same line.
    let mut cmd = env.command(&["status"]);
    cmd.env("BULLETIN_DB", down);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with(&format!("bulletin: {shown} (set by BULLETIN_DB): ")),
        "{}",
        text(&out.stderr)
    );
}

// See: walkthrough report (Scaling out). Something listens at the host and
// port the URL names but never answers as PostgreSQL (another service on a
// mistyped port, a server hung at startup): `dispatch` and `doctor` gave
// up after `store::CONNECT_TIMEOUT`, not never (cron's runs piled up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_server_that_never_answers_is_given_up_on() {
    let env = Env::new(0, "");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accepts every connection and holds it, saying nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    let url = format!("postgres://bulletin@127.0.0.1:{port}/news");
    let mut cmd = env.command(&["dispatch"]);
    cmd.env("BULLETIN_DB", &url);
    // A hang detector, far past the connect timeout.
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), output(cmd))
        .await
        .expect("dispatch waited for a silent server without end");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.starts_with(&format!("bulletin: {url} (set by BULLETIN_DB): ")),
        "{stderr}"
    );
    assert!(
        stderr.contains("cannot be reached: no answer within 10 s"),
        "{stderr}"
    );

    let mut cmd = env.command(&["doctor"]);
    cmd.env("BULLETIN_DB", &url);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), output(cmd))
        .await
        .expect("doctor waited for a silent server without end");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("FAIL") && l.contains("no answer within 10 s")),
        "{stdout}"
    );
}
