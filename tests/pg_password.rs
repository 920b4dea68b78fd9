//! bulletin logs in to PostgreSQL with its password: against the role
//! `bulletin_pw`, which the `.ci/postgres` cluster makes give a password
//! (scram-sha-256) while every other login on loopback is trusted, the real
//! binary works with the right password from `BULLETIN_DB_PASSWORD` (a
//! password-less URL in the config file) or inside the URL (`--db`,
//! `BULLETIN_DB`), and with a wrong or missing one fails: exit 2 (`dispatch`
//! too: a refused login is not a server that cannot be reached), one line
//! naming where the URL and the password came from, neither password shown.
//!
//! Runs when `BULLETIN_TEST_POSTGRES` names a `.ci/postgres` server, and
//! prints a notice and passes otherwise.

use std::process::Output;

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};

use crate::dispatch::Env;
use crate::support::pg;
use crate::support::{output, stdout_of_success};

/// The role `.ci/postgres` checks the password of (its pg_hba.conf line).
const ROLE: &str = "bulletin_pw";

/// The admin URL, or `None` after a notice.
fn server(test: &str) -> Option<String> {
    let admin = pg::requested();
    if admin.is_none() {
        eprintln!(
            "notice: {test}: {} is not set; this test needs a PostgreSQL server that checks {ROLE}'s password (start one with .ci/postgres)",
            pg::VARIABLE
        );
    }
    admin
}

/// 16 random bytes in hex: a password that needs no escaping in SQL or a
/// URL, new on every run.
fn random_password() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh database that only `bulletin_pw` uses, with the role's password
/// set for this run.
struct ScramDatabase {
    /// `postgres://bulletin_pw@127.0.0.1:PORT/bt_…`: no password.
    url: String,
    /// The password the server expects.
    password: String,
    /// The admin's (trusted) connection to the database, to read its
    /// catalog (the tables themselves are the role's, closed to the admin).
    inside: PgConnection,
    /// Holds the advisory lock that keeps other runs of these tests (other
    /// test processes on the same cluster) from setting another password
    /// while this one is in use; released when dropped.
    _lock: PgConnection,
}

impl ScramDatabase {
    /// The URL with `password` in it.
    fn url_with(&self, password: &str) -> String {
        let mut url = url::Url::parse(&self.url).unwrap();
        url.set_password(Some(password)).unwrap();
        url.to_string()
    }
}

/// Over the trusted admin connection: creates `bulletin_pw` if this
/// cluster has none yet (the role `bulletin` may CREATE ROLE), gives it a
/// new random password and a fresh database it may connect to and create
/// tables in.
async fn scram_database(admin: &str) -> ScramDatabase {
    let connect = |url: String| async move {
        PgConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", pg::redacted(&url)))
    };
    let mut lock = connect(admin.to_string()).await;
    // One key for the role, in the admin's database: taken by every test
    // here, so that the password set below stays the one in force.
    lock.execute("SELECT pg_advisory_lock(hashtext('bulletin tests: role bulletin_pw'))")
        .await
        .unwrap();
    let password = random_password();
    let hint =
        "(.ci/postgres gives the role bulletin CREATEROLE: is the cluster older than the script?)";
    for sql in [
        format!(
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') \
             THEN CREATE ROLE {ROLE}; END IF; END$$"
        ),
        // Utility statements take no bound parameters; the password is hex.
        format!("ALTER ROLE {ROLE} LOGIN PASSWORD '{password}'"),
    ] {
        lock.execute(sql.as_str())
            .await
            .unwrap_or_else(|e| panic!("{}: {e} {hint}", sql.replace(&password, "***")));
    }
    let (database, inside) = pg::fresh_database_for(ROLE).await;
    let mut url = url::Url::parse(&database).unwrap();
    url.set_username(ROLE).unwrap();
    url.set_password(None).unwrap();
    ScramDatabase {
        url: url.to_string(),
        password,
        inside,
        _lock: lock,
    }
}

/// A test project whose bulletin.toml names the database by its URL
/// without a password, as an operator writes it.
fn project(db: &ScramDatabase) -> Env {
    let env = Env::sqlite(crate::util::free_port(), "");
    let config = env.dir.path().join("bulletin.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let line = format!("db = \"{}\"", db.url);
    std::fs::write(&config, text.replacen("db = \"b.db\"", &line, 1)).unwrap();
    Env {
        db: db.url.clone(),
        ..env
    }
}

/// The binary in the project with `args`; `password`: BULLETIN_DB_PASSWORD,
/// `db_env`: BULLETIN_DB.
async fn run(env: &Env, password: Option<&str>, db_env: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = env.command(args);
    // With no password in the URL, sqlx falls back on libpq's PGPASSWORD
    // and ~/.pgpass: neither may supply one behind the test's back.
    cmd.env_remove("PGPASSWORD")
        .env("PGPASSFILE", env.dir.path().join("no-pgpass"));
    if let Some(password) = password {
        cmd.env("BULLETIN_DB_PASSWORD", password);
    }
    if let Some(db) = db_env {
        cmd.env("BULLETIN_DB", db);
    }
    output(cmd).await
}

/// Who owns the bulletin tables: the role that created the schema.
async fn owner_of_subscribers(db: &mut ScramDatabase) -> Option<String> {
    sqlx::query_scalar("SELECT tableowner::text FROM pg_tables WHERE tablename = 'subscribers'")
        .fetch_optional(&mut db.inside)
        .await
        .unwrap()
}

/// One way of giving bulletin a wrong or no password, and where its error
/// must say the URL and the password came from.
#[derive(Default)]
struct Case<'a> {
    /// BULLETIN_DB_PASSWORD
    password: Option<&'a str>,
    /// BULLETIN_DB (else bulletin.toml's `db`)
    db_env: Option<&'a str>,
    /// --db
    flag: Option<&'a str>,
    says: String,
}

/// Whether `email` is stored, asked through the binary with the right
/// password (the tables are `bulletin_pw`'s, closed to the admin).
async fn is_stored(env: &Env, db: &ScramDatabase, email: &str) -> bool {
    let out = run(
        env,
        Some(&db.password),
        None,
        &["subscribers", "show", email],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("no subscriber"),
        "subscribers show {email}: {err}"
    );
    out.status.success()
}

// The right password, from each place bulletin reads it, logs in as the
// role that must give one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_password_logs_in_from_the_environment_or_the_url() {
    let Some(admin) = server("the_right_password_logs_in_from_the_environment_or_the_url") else {
        return;
    };
    let mut db = scram_database(&admin).await;
    let env = project(&db);
    let right = db.password.clone();

    // A password-less URL in bulletin.toml, the password in
    // BULLETIN_DB_PASSWORD: the first command creates the schema.
    let args = ["lists", "add", "news", "--name", "News"];
    let said = stdout_of_success(run(&env, Some(&right), None, &args).await, &args);
    // (`Env::command` passes `--config bulletin.toml`.)
    let created = format!(
        "created the bulletin schema in {} (set by db in bulletin.toml)",
        pg::redacted(&db.url_with(&right)),
    );
    assert!(said.contains(&created), "{said}");
    assert!(!said.contains(&right), "{said}");
    assert_eq!(
        owner_of_subscribers(&mut db).await.as_deref(),
        Some(ROLE),
        "bulletin logged in as {ROLE}"
    );
    let args = ["subscribers", "add", "ann@example.org", "--list", "news"];
    stdout_of_success(run(&env, Some(&right), None, &args).await, &args);
    assert!(is_stored(&env, &db, "ann@example.org").await);

    // The password inside the URL: --db, then BULLETIN_DB; no
    // BULLETIN_DB_PASSWORD.
    let with_password = db.url_with(&right);
    let args = ["--db", &with_password, "lists"];
    let lists = stdout_of_success(run(&env, None, None, &args).await, &args);
    assert!(lists.lines().any(|l| l.starts_with("news ")), "{lists}");
    let args = ["subscribers", "add", "bob@example.org", "--list", "news"];
    stdout_of_success(run(&env, None, Some(&with_password), &args).await, &args);
    assert!(is_stored(&env, &db, "bob@example.org").await);

    // `dispatch` (cron's command) opens it too; with nothing to send it
    // prints nothing.
    let args = ["dispatch"];
    let quiet = stdout_of_success(run(&env, Some(&right), None, &args).await, &args);
    assert_eq!(quiet, "");
}

// A wrong or missing password: no login, exit 2 whatever the command (not
// `dispatch`'s 75: a retry will not fix it), one line naming where the URL
// and the password came from, and neither password shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_password_fails_naming_the_setting() {
    let Some(admin) = server("a_wrong_or_missing_password_fails_naming_the_setting") else {
        return;
    };
    let db = scram_database(&admin).await;
    let env = project(&db);
    let right = db.password.clone();
    let wrong = random_password();
    // The schema and a list exist, so that every command would get past
    // the login.
    for args in [
        &["lists", "add", "news", "--name", "News"][..],
        &["subscribers", "add", "ann@example.org", "--list", "news"],
    ] {
        stdout_of_success(run(&env, Some(&right), None, args).await, args);
    }

    let file = "set by db in bulletin.toml";
    let wrong_url = db.url_with(&wrong);
    let none =
        "no password in the URL, BULLETIN_DB_PASSWORD or PGPASSWORD (then ~/.pgpass, if set)";
    let cases = [
        Case {
            password: Some(&wrong),
            says: format!("({file}, the password from BULLETIN_DB_PASSWORD)"),
            ..Case::default()
        },
        Case {
            says: format!("({file}, {none})"),
            ..Case::default()
        },
        // The URL's own password wins over BULLETIN_DB_PASSWORD.
        Case {
            password: Some(&right),
            flag: Some(&wrong_url),
            says: "(set by --db flag, the password in that URL)".into(),
            ..Case::default()
        },
        Case {
            db_env: Some(&wrong_url),
            says: "(set by BULLETIN_DB, the password in that URL)".into(),
            ..Case::default()
        },
        Case {
            db_env: Some(&db.url),
            says: format!("(set by BULLETIN_DB, {none})"),
            ..Case::default()
        },
    ];
    for Case {
        password,
        db_env,
        flag,
        says,
    } in &cases
    {
        // Exit codes as README's "Exit codes" says: 2 for every command
        // here, `dispatch` included (75 is for a server that cannot be
        // reached).
        for (command, code) in [
            (&["lists"][..], 2),
            (
                &["subscribers", "add", "eve@example.org", "--list", "news"][..],
                2,
            ),
            (&["dispatch"][..], 2),
        ] {
            let mut args: Vec<&str> = Vec::new();
            if let Some(url) = flag {
                args.extend(["--db", url]);
            }
            args.extend(command);
            let out = run(&env, *password, *db_env, &args).await;
            let err = String::from_utf8_lossy(&out.stderr);
            let what = format!(
                "bulletin {args:?} with BULLETIN_DB_PASSWORD {}, BULLETIN_DB {}",
                if password.is_some() { "set" } else { "unset" },
                if db_env.is_some() { "set" } else { "unset" },
            )
            .replace(&wrong, "WRONG")
            .replace(&right, "RIGHT");
            assert_eq!(
                out.status.code(),
                Some(code),
                "{what}: a login with a wrong or no password must fail \
                 (does the server check {ROLE}'s password? .ci/postgres puts a scram-sha-256 line for it in pg_hba.conf): {err}"
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{what}");
            assert_eq!(err.lines().count(), 1, "{what}: {err}");
            assert!(err.starts_with("bulletin: "), "{what}: {err}");
            assert!(
                err.contains(says.as_str())
                    && err.contains("the server refused the login")
                    && err.contains(&format!(
                        "password authentication failed for user \"{ROLE}\""
                    )),
                "{what}: {err}"
            );
            assert!(
                !err.contains(&wrong) && !err.contains(&right),
                "{what}: a password shown: {err}"
            );
        }
    }
    // PGPASSWORD, which the driver reads when bulletin has none, is named
    // when it is the one refused.
    let mut cmd = env.command(&["lists"]);
    cmd.env("PGPASSWORD", &wrong)
        .env("PGPASSFILE", env.dir.path().join("no-pgpass"));
    let out = output(cmd).await;
    let err = String::from_utf8_lossy(&out.stderr).replace(&wrong, "WRONG");
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "({file}, the password from PGPASSWORD (none in the URL or BULLETIN_DB_PASSWORD))"
        )) && err.contains("the server refused the login"),
        "{err}"
    );
    // `db copy --to` says where its password came from too.
    let sqlite = env.dir.path().join("old.db");
    let init = run(
        &env,
        None,
        None,
        &["--db", sqlite.to_str().unwrap(), "init"],
    )
    .await;
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let args = [
        "--db",
        sqlite.to_str().unwrap(),
        "db",
        "copy",
        "--to",
        &db.url,
    ];
    let out = run(&env, Some(&wrong), None, &args).await;
    let err = String::from_utf8_lossy(&out.stderr).replace(&wrong, "WRONG");
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(", the password from BULLETIN_DB_PASSWORD: the server refused the login"),
        "{err}"
    );
    assert!(is_stored(&env, &db, "ann@example.org").await);
    assert!(
        !is_stored(&env, &db, "eve@example.org").await,
        "nobody added without a login"
    );
}
