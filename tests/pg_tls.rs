//! TLS to PostgreSQL, as the URL's `sslmode` and `sslrootcert` ask: against
//! the `.ci/postgres` cluster, whose certificate for 127.0.0.1 is signed by
//! the throwaway test CA in `tests/data/pg-tls` and which lets the role
//! `bulletin_tls` in over TLS only. The real binary logs in with
//! `sslmode=require` (so it encrypted) and with `verify-full` against that
//! CA; it is refused without TLS, and `verify-full` without the CA (the web
//! PKI roots only) fails as a setting to fix (exit 2, `dispatch` too: no
//! retry makes the certificate trusted), naming the setting.
//!
//! Runs when `BULLETIN_TEST_POSTGRES` names a `.ci/postgres` server, and
//! prints a notice and passes otherwise.

use std::process::Output;

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};

use crate::support::pg;
use crate::util::{bulletin, root};

/// The role `.ci/postgres` lets in over TLS only (its pg_hba.conf line).
const ROLE: &str = "bulletin_tls";

/// A fresh database that `bulletin_tls` may create tables in, over the
/// trusted admin connection (the role is made if this cluster has none
/// yet); its URL names the role, with no parameters.
async fn tls_database(admin: &str) -> String {
    let mut conn = PgConnection::connect(admin).await.unwrap();
    // Two runs of this test at once on one cluster (two test processes)
    // would both find no role and both create it: one at a time.
    conn.execute("SELECT pg_advisory_lock(hashtext('bulletin tests: role bulletin_tls'))")
        .await
        .unwrap();
    conn.execute(
        format!(
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') \
             THEN CREATE ROLE {ROLE} LOGIN; END IF; END$$"
        )
        .as_str(),
    )
    .await
    .unwrap();
    conn.close().await.unwrap();
    let (database, inside) = pg::fresh_database_for(ROLE).await;
    inside.close().await.unwrap();
    let mut url = url::Url::parse(&database).unwrap();
    url.set_username(ROLE).unwrap();
    url.to_string()
}

fn run(dir: &std::path::Path, db: &str, args: &[&str]) -> Output {
    bulletin(dir)
        .args(["--db", db])
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulletin_speaks_tls_to_postgresql_as_the_url_asks() {
    let Some(admin) = pg::requested() else {
        eprintln!(
            "notice: pg_tls: {} is not set; this test needs a PostgreSQL server with TLS (start one with .ci/postgres)",
            pg::VARIABLE
        );
        return;
    };
    let url = tls_database(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hint = "(does the cluster offer TLS? .ci/postgres turns it on when openssl is installed)";

    // Encrypted: the role is let in over TLS only.
    let out = run(d, &format!("{url}?sslmode=require"), &["init"]);
    assert!(out.status.success(), "{} {hint}", stderr(&out));

    // Without TLS the server refuses it: the role's rule holds.
    let out = run(d, &format!("{url}?sslmode=disable"), &["lists"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no encryption"), "{}", stderr(&out));

    // The server's certificate checked against the CA that signed it, and
    // for the host in the URL.
    let ca = root().join("tests/data/pg-tls/ca.crt");
    let verified = format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        ca.to_str().unwrap()
    );
    let out = run(d, &verified, &["lists", "add", "news", "--name", "News"]);
    assert!(out.status.success(), "{} {hint}", stderr(&out));
    let out = run(d, &verified, &["lists"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("news"),
        "{}",
        stderr(&out)
    );

    // Checked against the web PKI roots only, the test CA is unknown: a
    // setting to fix, so exit 2 even from cron's `dispatch`, one line
    // naming where the URL was set.
    let out = run(d, &format!("{url}?sslmode=verify-full"), &["dispatch"]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("(set by --db flag; TLS as its sslmode and sslrootcert say)")
            && text.contains("TLS with the database server failed"),
        "{text}"
    );
}
