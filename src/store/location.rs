//! Where the database is: a SQLite file (the default) or a PostgreSQL
//! database named by a `postgres://` URL. The `db` setting is parsed here,
//! next to what it is shown as: a URL is shown without its password.

use std::path::{Path, PathBuf};

use crate::redact::{self, Password};

/// The database a [`super::Store`] opens. `Debug` shows it as `Display`
/// does, without the password.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite database file.
    File(PathBuf),
    /// A PostgreSQL database: `postgres://user@host:port/dbname`, with the
    /// password (from the URL or `BULLETIN_DB_PASSWORD`) inside.
    Postgres(url::Url),
}

/// A `db` value that is neither a file path nor a PostgreSQL URL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{shown:?} is a {scheme}:// URL; bulletin uses a SQLite file (give its path, e.g. /srv/bulletin/bulletin.db) or PostgreSQL (postgres://user@host/dbname)"
    )]
    Scheme { shown: String, scheme: String },
    #[error("{shown:?} is not a valid PostgreSQL URL: {why}")]
    BadUrl { shown: String, why: String },
}

/// Where a PostgreSQL `db` URL's password comes from
/// ([`Location::parse_with_password`]). Says which, never what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbPassword {
    /// The URL carries it (`--db` or `BULLETIN_DB`: a config file refuses
    /// one), as `user:PASSWORD@` or `?password=`.
    Url,
    /// `BULLETIN_DB_PASSWORD`, for a URL without one.
    Env,
    /// Neither (or `db` is a SQLite file).
    Missing,
}

impl Location {
    /// Reads a `db` value: `postgres://` or `postgresql://` selects
    /// PostgreSQL (its password from the URL or `password`, which comes from
    /// `BULLETIN_DB_PASSWORD`), any other `scheme://` is refused, and
    /// anything else is the path of a SQLite file.
    pub fn parse(value: &Path, password: Option<&str>) -> Result<Location, Error> {
        Self::parse_with_password(value, password).map(|(location, _)| location)
    }

    /// [`Location::parse`], and where the password came from: the URL's own
    /// (`user:password@` or `?password=`) wins over `password`.
    pub fn parse_with_password(
        value: &Path,
        password: Option<&str>,
    ) -> Result<(Location, DbPassword), Error> {
        let text = value.to_string_lossy();
        let Some(scheme) = url_scheme(&text) else {
            return Ok((Location::File(value.to_path_buf()), DbPassword::Missing));
        };
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(Error::Scheme {
                shown: shown_url(&text),
                scheme: scheme.to_string(),
            });
        }
        let bad = |why: &str| Error::BadUrl {
            shown: shown_url(&text),
            why: why.to_string(),
        };
        let mut url = url::Url::parse(&text).map_err(|e| bad(&e.to_string()))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if url.path().trim_start_matches('/').is_empty() {
            return Err(bad(
                "no database name after the host (postgres://user@host/dbname)",
            ));
        }
        let in_url = url.password().is_some() || url.query_pairs().any(|(k, _)| k == "password");
        let from = match password.filter(|p| !p.is_empty()) {
            _ if in_url => DbPassword::Url,
            Some(password) => {
                url.set_password(Some(password))
                    .map_err(|()| bad("cannot carry a password"))?;
                DbPassword::Env
            }
            None => DbPassword::Missing,
        };
        Ok((Location::Postgres(url), from))
    }

    /// True for a value that [`Location::parse`] reads as a URL: relative
    /// paths in a config file are joined to its folder, URLs are not.
    pub fn is_url(value: &Path) -> bool {
        url_scheme(&value.to_string_lossy()).is_some()
    }

    /// The SQLite file, if this is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Location::File(path) => Some(path),
            Location::Postgres(_) => None,
        }
    }
}

/// The sqlx URL of a SQLite file: `mode=rwc` creates it, `rw` does not.
pub(super) fn sqlite_url(path: &Path, create: bool) -> String {
    let mut encoded = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => encoded.push_str("%25"),
            '?' => encoded.push_str("%3F"),
            '#' => encoded.push_str("%23"),
            c => encoded.push(c),
        }
    }
    let mode = if create { "rwc" } else { "rw" };
    format!("sqlite://{encoded}?mode={mode}")
}

/// The database a PostgreSQL URL names: its path without the `/` (as
/// written: a name that needs percent-encoding is shown encoded).
pub(super) fn database_name(url: &url::Url) -> String {
    url.path().trim_start_matches('/').to_string()
}

/// The scheme of `scheme://...`, if `text` starts like a URL.
fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let is_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
    is_scheme.then_some(scheme)
}

/// A URL as shown in messages: its password masked (`redact::url`).
fn shown_url(text: &str) -> String {
    redact::url(text, Password::Masked)
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => f.debug_tuple("File").field(path).finish(),
            Location::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&shown_url(url.as_str()))
                .finish(),
        }
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Location {
        Location::File(path.to_path_buf())
    }
}

impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Location {
        Location::File(path.clone())
    }
}

impl From<&Location> for Location {
    fn from(location: &Location) -> Location {
        location.clone()
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&shown_url(url.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_files_and_postgres_urls_are_postgres() {
        let file = Location::parse(Path::new("data/b:1.db"), None).unwrap();
        assert_eq!(file, Location::File("data/b:1.db".into()));
        let pg =
            Location::parse(Path::new("postgres://news@db.example/bulletin"), Some("s3")).unwrap();
        let Location::Postgres(url) = &pg else {
            panic!("{pg:?}")
        };
        assert_eq!(url.password(), Some("s3"), "BULLETIN_DB_PASSWORD fills in");
        assert_eq!(pg.to_string(), "postgres://news:***@db.example/bulletin");
        let own = Location::parse(Path::new("postgresql://u:inurl@h/d"), Some("env")).unwrap();
        let Location::Postgres(url) = own else {
            panic!()
        };
        assert_eq!(url.password(), Some("inurl"), "the URL's own password wins");
    }

    #[test]
    fn the_password_comes_from_the_url_before_the_environment() {
        for (db, given, from, userinfo) in [
            (
                "postgres://u@h/d",
                Some("env"),
                DbPassword::Env,
                Some("env"),
            ),
            (
                "postgres://u:own@h/d",
                Some("env"),
                DbPassword::Url,
                Some("own"),
            ),
            (
                "postgres://u@h/d?password=q",
                Some("env"),
                DbPassword::Url,
                None,
            ),
            ("postgres://u@h/d", Some(""), DbPassword::Missing, None),
            ("postgres://u@h/d", None, DbPassword::Missing, None),
            ("b.db", Some("env"), DbPassword::Missing, None),
        ] {
            let (location, said) = Location::parse_with_password(Path::new(db), given).unwrap();
            assert_eq!(said, from, "{db} with {given:?}");
            let password = match &location {
                Location::Postgres(url) => url.password(),
                Location::File(_) => None,
            };
            assert_eq!(password, userinfo, "{db} with {given:?}");
        }
    }

    #[test]
    fn the_password_is_never_shown() {
        let pg = Location::parse(Path::new("postgres://u:s3cret@h/d?password=q1"), None).unwrap();
        for shown in [pg.to_string(), format!("{pg:?}")] {
            assert!(
                !shown.contains("s3cret") && !shown.contains("q1"),
                "{shown}"
            );
        }
        // A password with '/' does not parse: the error still hides it.
        for value in ["postgres://u:ab/cd@h/d", "mysql://u:pw@h/d"] {
            let err = Location::parse(Path::new(value), None)
                .unwrap_err()
                .to_string();
            assert!(!err.contains("ab/cd") && !err.contains(":pw"), "{err}");
        }
    }

    #[test]
    fn other_urls_are_refused_with_what_to_write() {
        for value in ["mysql://h/db", "sqlite://x.db"] {
            let err = Location::parse(Path::new(value), None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("SQLite") && err.contains("postgres://"),
                "{err}"
            );
        }
        let err = Location::parse(Path::new("postgres://u:pw@host"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no database name") && !err.contains("pw"),
            "{err}"
        );
    }
}
