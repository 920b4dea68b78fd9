//! Running unattended: no silent outbox, no database by accident, the
//! installed crontab line and systemd unit under a bare environment, closed
//! pipes, short secrets, and database hygiene (checkpoint on exit, online
//! backup, read-only files, two sends racing on one new campaign). Tests
//! about the database file itself (missing, corrupt, copied, backed up,
//! read-only) are about SQLite and stay on it; the others run on the
//! engine under test (`support::pg`).

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bulletin::store::Store;

use crate::dispatch::{Env, SECRET};
use crate::support::pg;
use crate::support::smtp_sink::{Behaviour, SmtpSink};
use crate::util::{bulletin, write};

/// A secret long enough to be accepted.
const GOOD_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

const CAMPAIGN: &str = "+++\nsubject = \"Hello\"\npreheader = \"p\"\nlist = \"news\"\n+++\n# S\n\n## A\n\nHi {{subscriber.name}}.\n";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A folder with list `news` (two people) and `campaigns/hello.md`, in the
/// `b.db` of the engine under test (`pg::db_in`), built through the CLI.
fn project() -> tempfile::TempDir {
    project_in(|d| pg::db_in(d, "b.db"))
}

/// [`project`] in the SQLite file `b.db`, for the tests about that file.
fn sqlite_project() -> tempfile::TempDir {
    project_in(|_| "b.db".to_string())
}

/// [`project`] in the database `db(dir)` names.
fn project_in(db: fn(&Path) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "campaigns/hello.md", CAMPAIGN);
    write(
        d,
        "people.csv",
        "email,name\nann@example.org,Ann\nbob@example.org,Bob\n",
    );
    bulletin(d)
        .args(["--db", &db(d)])
        .args(["subscribers", "import", "people.csv", "--list", "news"])
        .assert()
        .success();
    dir
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

// ---------------------------------------------------------------------------
// 1. No silent outbox

#[test]
fn send_without_smtp_or_outbox_stops_naming_both_settings() {
    let dir = project();
    let d = dir.path();
    let db = pg::db_in(d, "b.db");
    let runs: [&[&str]; 4] = [
        &["send", "campaigns/hello.md", "--yes"],
        &[
            "send",
            "campaigns/hello.md",
            "--yes",
            "--at",
            "2099-01-01 09:00",
        ],
        &["test", "campaigns/hello.md", "--to", "me@example.org"],
        // Sign-up confirmation emails would go nowhere.
        &["serve", "--listen", "127.0.0.1:0"],
    ];
    for args in runs {
        let out = bulletin(d)
            // Only a safety net, should `serve` start after all.
            .timeout(Duration::from_secs(120))
            .args(["--db", &db])
            .env("BULLETIN_SECRET", GOOD_SECRET)
            .args(args)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("BULLETIN_SMTP_URL") && err.contains("BULLETIN_OUTBOX"),
            "{args:?}: {err}"
        );
        assert!(!text(&out.stdout).contains("sent"), "{args:?}");
    }
    assert!(!d.join("outbox").exists(), "nothing written anywhere");
    let status = bulletin(d).args(["--db", &db, "status"]).output().unwrap();
    assert!(
        text(&status.stdout).contains("no campaigns yet"),
        "nothing frozen"
    );
}

#[test]
fn outbox_writes_say_so_and_never_sent() {
    let dir = project();
    let d = dir.path();
    let db = pg::db_in(d, "b.db");
    let out = bulletin(d)
        .args([
            "--db",
            &db,
            "--outbox",
            "out",
            "send",
            "campaigns/hello.md",
            "--yes",
        ])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("hello: written to out/: 2 (finished)"),
        "{stdout}"
    );
    assert!(!stdout.contains("sent"), "{stdout}");
    assert_eq!(std::fs::read_dir(d.join("out")).unwrap().count(), 2);
    let out = bulletin(d)
        .args([
            "--db",
            &db,
            "test",
            "campaigns/hello.md",
            "--to",
            "me@example.org",
        ])
        .env("BULLETIN_OUTBOX", "out")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(stdout.contains("written to out/"), "{stdout}");
    assert!(!stdout.contains("sent"), "{stdout}");
    let status = bulletin(d).args(["--db", &db, "status"]).output().unwrap();
    let status = text(&status.stdout);
    assert!(status.contains("written to out/ 2"), "{status}");
    assert!(!status.contains("sent 2"), "{status}");
}

// ---------------------------------------------------------------------------
// 2. No database by accident

#[test]
fn commands_on_a_missing_database_name_it_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "campaigns/hello.md", CAMPAIGN);
    let runs: [(&[&str], &str); 6] = [
        (&["lists"], "BULLETIN_DB"),
        (&["status"], "BULLETIN_DB"),
        (&["dispatch"], "BULLETIN_DB"),
        (&["subscribers", "show", "ann@example.org"], "BULLETIN_DB"),
        (&["send", "campaigns/hello.md", "--yes"], "BULLETIN_DB"),
        (&["bounces", "list"], "BULLETIN_DB"),
    ];
    for (args, source) in runs {
        let out = bulletin(d)
            .env("BULLETIN_DB", "data/live.db")
            .env("BULLETIN_SECRET", GOOD_SECRET)
            .env("BULLETIN_OUTBOX", "out")
            .args(args)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("no database at data/live.db (set by BULLETIN_DB)")
                && err.contains(source)
                && err.contains("bulletin init"),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // The default, named as such.
    let out = bulletin(d).arg("lists").output().unwrap();
    assert!(text(&out.stderr).contains("no database at bulletin.db (set by default)"));
    // `bounces ingest` from an MTA: exit 75, so the message is kept.
    let out = bulletin(d)
        .args(["--db", "data/live.db", "bounces", "ingest"])
        .env("BULLETIN_SECRET", GOOD_SECRET)
        .write_stdin("From: MAILER-DAEMON\r\nSubject: x\r\n\r\nhello\r\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--db flag"));
    assert!(!d.join("data").exists() && !d.join("bulletin.db").exists());
    assert!(!d.join("out").exists());
}

#[test]
fn bounces_ingest_exits_75_on_any_error_so_the_mta_retries() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "corrupt.db", &"x".repeat(8192));
    write(d, "bad.toml", "db = \"b.db\"\nnope = 1\n");
    let message = "From: MAILER-DAEMON@example.org\r\nSubject: x\r\n\r\nhello\r\n";
    let runs: [&[&str]; 2] = [
        &["--db", "corrupt.db", "bounces", "ingest"],
        &["--config", "bad.toml", "bounces", "ingest"],
    ];
    for args in runs {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("bulletin"));
        cmd.current_dir(d)
            .env_remove("BULLETIN_DB")
            .env_remove("BULLETIN_CONFIG")
            .env("BULLETIN_SECRET", GOOD_SECRET)
            .args(args);
        let out = assert_cmd::Command::from_std(cmd)
            .write_stdin(message)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(75), "{args:?}: {err}");
        assert!(
            err.starts_with("bulletin: ") && err.lines().count() == 1,
            "{err}"
        );
    }
}

#[test]
fn only_init_and_adding_data_create_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = bulletin(d)
        .args(["--db", "a/one.db", "init"])
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("created database a/one.db (set by --db flag)"));
    let out = bulletin(d)
        .args(["--db", "a/one.db", "init"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("exists"),
        "{}",
        text(&out.stdout)
    );
    let out = bulletin(d)
        .args(["--db", "two.db", "lists", "add", "news", "--name", "News"])
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).starts_with("created database two.db"),
        "{}",
        text(&out.stdout)
    );
    write(d, "people.csv", "email\nann@example.org\n");
    let out = bulletin(d)
        .args([
            "--db",
            "three.db",
            "subscribers",
            "import",
            "people.csv",
            "--list",
            "news",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("created database three.db"));
    // A dry run writes nothing, not even the database.
    let out = bulletin(d)
        .args([
            "--db",
            "four.db",
            "subscribers",
            "import",
            "people.csv",
            "--list",
            "news",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!d.join("four.db").exists());
}

#[test]
fn a_database_url_other_than_postgres_is_refused_not_made_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for url in ["mysql://db/news", "sqlite://news.db"] {
        let out = bulletin(d)
            .args(["--db", url, "lists", "add", "news", "--name", "News"])
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("URL") && err.contains("postgres://"), "{err}");
    }
    // A PostgreSQL URL is a database server: nobody listens on port 1, so
    // the command fails naming the server (without the password).
    let out = bulletin(d)
        .args(["--db", "postgres://u:secret@127.0.0.1:1/news"])
        .args(["lists", "add", "news", "--name", "News"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("postgres://u:***@127.0.0.1:1/news"), "{err}");
    assert!(!err.contains("secret"), "{err}");
    assert_eq!(
        std::fs::read_dir(d).unwrap().count(),
        0,
        "no folder postgres:"
    );
}

// ---------------------------------------------------------------------------
// 3. The installed examples under a bare environment

/// The environment lines and the command of the crontab entry.
fn crontab() -> (Vec<String>, String) {
    let text = std::fs::read_to_string(crate::util::root().join("examples/crontab")).unwrap();
    let mut vars = Vec::new();
    let mut command = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.splitn(6, ' ').collect();
        if fields.len() == 6 && !fields[0].contains('=') {
            command = Some(fields[5].to_string());
        } else {
            vars.push(line.to_string());
        }
    }
    (vars, command.expect("a job line in examples/crontab"))
}

/// `Key=value` lines of a systemd unit's [Service] section.
fn unit_keys(name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(crate::util::root().join("examples").join(name)).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Replaces the install paths of the examples with the test's.
fn installed(line: &str, dir: &Path) -> String {
    line.replace("/srv/bulletin", &dir.display().to_string())
        .replace(
            "/usr/local/bin/bulletin",
            &assert_cmd::cargo::cargo_bin("bulletin")
                .display()
                .to_string(),
        )
}

/// Queues `campaigns/news-1.md` to be due in a moment, and waits until it
/// is due. (Far enough ahead that a slow machine still schedules it.)
async fn queue_soon(env: &Env) {
    let due = chrono::Utc::now() + chrono::Duration::seconds(6);
    let at = due.to_rfc3339();
    let out = env
        .ok(&["send", "campaigns/news-1.md", "--yes", "--at", &at])
        .await;
    assert!(out.contains("scheduled"), "{out}");
    let left = (due - chrono::Utc::now()).num_milliseconds().max(0) as u64;
    tokio::time::sleep(Duration::from_millis(left + 1100)).await;
}

fn dot_env(env: &Env) -> String {
    format!(
        "# test\nBULLETIN_SECRET={SECRET}\nBULLETIN_SMTP_URL={}\nBULLETIN_CONFIG=bulletin.toml\n",
        env.smtp_url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crontab_line_sends_by_smtp_under_a_bare_environment() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    pg::config_db(env.dir.path());
    env.subscribers(3, &[]).await;
    let dir = env.dir.path().to_path_buf();
    std::fs::write(dir.join(".env"), dot_env(&env)).unwrap();
    let (vars, command) = crontab();
    // The line as the old example had it (`.` does not export): it must
    // fail loudly, not write to an outbox and say "sent".
    queue_soon(&env).await;
    let old = installed(
        "cd /srv/bulletin && . ./.env && /usr/local/bin/bulletin dispatch",
        &dir,
    );
    let out: Output = blocking({
        let old = old.clone();
        move || {
            Command::new("env")
                .args(["-i", "/bin/sh", "-c", &old])
                .output()
                .unwrap()
        }
    })
    .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("BULLETIN_SMTP_URL"), "{out:?}");
    assert!(!dir.join("outbox").exists());
    assert!(sink.messages().is_empty());
    // The example's line, as installed.
    let cron = installed(&command, &dir);
    let vars: Vec<String> = vars.iter().map(|v| installed(v, &dir)).collect();
    let out: Output = blocking(move || {
        Command::new("env")
            .arg("-i")
            .args(&vars)
            .args(["/bin/sh", "-c", &cron])
            .output()
            .unwrap()
    })
    .await;
    assert!(out.status.success(), "{command}: {out:?}");
    assert!(
        text(&out.stdout).contains("news-1: sent 3 (finished)"),
        "{out:?}"
    );
    assert_eq!(sink.messages().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_unit_sends_by_smtp_with_only_its_environment_file() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    pg::config_db(env.dir.path());
    env.subscribers(2, &[]).await;
    let dir = env.dir.path().to_path_buf();
    // Quoted values, as systemd and sh both read them.
    std::fs::write(
        dir.join(".env"),
        dot_env(&env) + "BULLETIN_FROM=\"Test Alliance <news@alliance.example>\"\n",
    )
    .unwrap();
    queue_soon(&env).await;
    let keys = unit_keys("bulletin-dispatch.service");
    let key = |k: &str| {
        keys.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| installed(v, &dir))
            .unwrap_or_else(|| panic!("{k}= in the unit"))
    };
    // systemd: EnvironmentFile= (KEY=VALUE, quotes removed), no shell.
    let file = std::fs::read_to_string(key("EnvironmentFile")).unwrap();
    let vars: Vec<(String, String)> = file
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect();
    let exec = key("ExecStart");
    let mut words = exec.split_whitespace();
    let mut cmd = Command::new(words.next().unwrap());
    cmd.args(words)
        .env_clear()
        .envs(vars)
        .current_dir(key("WorkingDirectory"));
    let out = blocking(move || cmd.output().unwrap()).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("news-1: sent 2 (finished)"),
        "{out:?}"
    );
    assert_eq!(sink.messages().len(), 2);
}

// ---------------------------------------------------------------------------
// 4. Pipes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_into_a_closed_pipe_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let db = pg::db_in(&d, "b.db");
    {
        let store = Store::open(pg::location(&db)).await.unwrap();
        for i in 0..300 {
            let slug = format!("list-{i}");
            store
                .create_list(&slug, &slug, "", false, false, 1)
                .await
                .unwrap();
            store
                .add_subscriber("ann@example.org", Some("Ann"), &slug, "cli", 1)
                .await
                .unwrap();
        }
        store.close().await;
    }
    let runs: [&[&str]; 3] = [
        &["subscribers", "show", "ann@example.org"],
        &["lists"],
        &["subscribers", "export"],
    ];
    blocking(move || {
        for args in runs {
            for _ in 0..15 {
                let mut child = Command::new(assert_cmd::cargo::cargo_bin("bulletin"))
                    .current_dir(&d)
                    .env_remove("BULLETIN_DB")
                    .env_remove("BULLETIN_CONFIG")
                    .args(["--no-config", "--db", &db])
                    .args(args)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut first = String::new();
                std::io::BufReader::new(child.stdout.take().unwrap())
                    .read_line(&mut first)
                    .unwrap();
                // The reader goes away after one line, like `| head -1`.
                let out = child.wait_with_output().unwrap();
                assert!(!first.is_empty());
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{args:?}: {}",
                    text(&out.stderr)
                );
                assert!(!text(&out.stderr).contains("panicked"), "{args:?}");
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 5. Secrets

#[test]
fn short_secrets_are_refused_by_every_command_that_signs_or_verifies() {
    let dir = project();
    let d = dir.path();
    let db = pg::db_in(d, "b.db");
    std::fs::create_dir_all(d.join("Maildir/new")).unwrap();
    let runs: [(&[&str], i32); 7] = [
        (&["build", "campaigns/hello.md"], 2),
        (&["send", "campaigns/hello.md", "--yes"], 2),
        (&["dispatch"], 2),
        (&["test", "campaigns/hello.md", "--to", "me@example.org"], 2),
        (&["serve", "--listen", "127.0.0.1:0"], 2),
        (&["bounces", "ingest"], 75),
        (&["bounces", "scan", "Maildir"], 2),
    ];
    for (secret, previous) in [("a", ""), (GOOD_SECRET, "old-and-short")] {
        for (args, code) in runs {
            let out = bulletin(d)
                .args(["--db", &db, "--outbox", "out"])
                .env("BULLETIN_SECRET", secret)
                .env("BULLETIN_PREVIOUS_SECRETS", previous)
                .args(args)
                .write_stdin("")
                .output()
                .unwrap();
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
            assert!(err.contains("openssl rand -hex 32"), "{args:?}: {err}");
        }
    }
    assert!(!d.join("out").exists() && !d.join("build").exists());
    // Commands that neither sign nor verify still work.
    bulletin(d)
        .args(["--db", &db, "lists"])
        .env("BULLETIN_SECRET", "a")
        .assert()
        .success();
}

// ---------------------------------------------------------------------------
// 6. Database hygiene

#[test]
fn the_database_file_alone_holds_everything_after_a_command() {
    let dir = sqlite_project();
    let d = dir.path();
    bulletin(d)
        .args([
            "--db",
            "b.db",
            "subscribers",
            "add",
            "cat@example.org",
            "--list",
            "news",
        ])
        .assert()
        .success();
    // Copy the .db file only, as a careless backup would.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(d.join("b.db"), copy.path().join("b.db")).unwrap();
    let out = bulletin(copy.path())
        .args(["--db", "b.db", "subscribers", "export", "--list", "news"])
        .output()
        .unwrap();
    let csv = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        csv.contains("cat@example.org") && csv.contains("ann@example.org"),
        "{csv}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_opens_and_holds_the_data_while_another_connection_writes() {
    let dir = sqlite_project();
    let d = dir.path().to_path_buf();
    let store = Store::open(&d.join("b.db")).await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                store
                    .add_subscriber(&format!("w{i}@example.net"), None, "news", "cli", 1)
                    .await
                    .unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = blocking({
        let d = d.clone();
        move || {
            bulletin(&d)
                .args(["--db", "b.db", "db", "backup", "copy.db"])
                .output()
                .unwrap()
        }
    })
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("backed up b.db to copy.db"));
    writer.await.unwrap();
    let copy = Store::open(&d.join("copy.db")).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&crate::support::db::raw(copy.location()).await)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    assert!(copy.subscriber("ann@example.org").await.unwrap().is_some());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM subscribers")
        .fetch_one(&crate::support::db::raw(copy.location()).await)
        .await
        .unwrap();
    assert!((2..=402).contains(&n), "{n}");
    // Again: the backup replaces the file.
    let out = blocking(move || {
        bulletin(&d)
            .args(["--db", "b.db", "db", "backup", "copy.db"])
            .output()
            .unwrap()
    })
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    store.close().await;
}

#[test]
fn a_read_only_database_is_one_clear_line() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = sqlite_project();
    let d = dir.path();
    let ro = d.join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::copy(d.join("b.db"), ro.join("b.db")).unwrap();
    std::fs::set_permissions(ro.join("b.db"), std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root writes anyway: run as nobody when we are root.
    let probe = ro.join("probe");
    let root = std::fs::write(&probe, "").is_ok();
    let _ = std::fs::remove_file(&probe);
    let mut cmd = if root {
        if !Path::new("/usr/bin/setpriv").exists() {
            eprintln!("notice: running as root without setpriv; read-only test skipped");
            return;
        }
        for p in [d, d.parent().unwrap()] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
        }
        let mut c = Command::new("/usr/bin/setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(assert_cmd::cargo::cargo_bin("bulletin"));
        c
    } else {
        Command::new(assert_cmd::cargo::cargo_bin("bulletin"))
    };
    let out = cmd
        .current_dir(&ro)
        .env_remove("BULLETIN_DB")
        .args([
            "--no-config",
            "--db",
            "b.db",
            "subscribers",
            "add",
            "x@example.org",
            "--list",
            "news",
        ])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    if err.contains("Permission denied") && err.contains("os error 13") && !err.contains("b.db") {
        eprintln!("notice: nobody cannot run the test binary here; read-only test skipped: {err}");
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("b.db") && err.contains("read-only"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sends_racing_on_one_new_campaign_get_a_clear_answer() {
    let sink = SmtpSink::start(Behaviour::new().delay_data_reply("", Duration::from_millis(20)));
    let env = Env::new(sink.port(), "");
    pg::config_db(env.dir.path());
    env.subscribers(20, &[]).await;
    for round in 0..3 {
        if round > 0 {
            // A fresh campaign each round.
            let text = std::fs::read_to_string(env.dir.path().join("campaigns/news-1.md")).unwrap();
            std::fs::write(
                env.dir.path().join(format!("campaigns/race-{round}.md")),
                text,
            )
            .unwrap();
        }
        let file = if round == 0 {
            "campaigns/news-1.md".to_string()
        } else {
            format!("campaigns/race-{round}.md")
        };
        let args = ["send", file.as_str(), "--yes"];
        let (a, b) = tokio::join!(env.run(&args), env.run(&args));
        for out in [&a, &b] {
            let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
            assert!(!all.contains("UNIQUE"), "{all}");
            if !out.status.success() {
                assert!(
                    all.contains("already being sent")
                        || all.contains("another run is sending it")
                        || all.contains("was already sent"),
                    "{all}"
                );
            }
        }
    }
    // Nobody got two copies.
    let messages = sink.messages();
    assert_eq!(messages.len(), 60, "{}", messages.len());
}
