//! Passwords out of URLs before a URL is shown: the one rule for every
//! message, error and printed setting that names an SMTP, PostgreSQL or
//! IMAP URL (`dispatch::transport`, `store::location`, `imap`, `db copy`).
//! No IO.

/// What a password in a URL becomes when the URL is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Password {
    /// `user:***@host`: says that there is one (the database as shown
    /// everywhere, the IMAP URL refused for carrying one).
    Masked,
    /// `user@host`: gone (an SMTP URL in an error; the `db` line `db copy`
    /// prints for the config file, the password going in the environment).
    Removed,
}

/// `text` with its password masked or removed: the one in the user
/// information (`scheme://user:PASSWORD@host`) and a `password=` query
/// parameter. A URL that does not parse (a raw '/' in the password, a port
/// that is not a number) has everything from the first ':' after `://` up
/// to the last '@' taken for the password. Text without a password, or
/// that is no URL at all (a SQLite path), comes back unchanged.
pub fn url(text: &str, password: Password) -> String {
    let hidden = match password {
        Password::Masked => Some("***"),
        Password::Removed => None,
    };
    let Ok(mut url) = url::Url::parse(text) else {
        return unparsed(text, hidden);
    };
    if url.password().is_none() && hides_userinfo(text) {
        // A '?' or '#' in the password makes the parser end the host
        // there and take the password for a query or fragment.
        return unparsed(text, hidden);
    }
    if url.password().is_some() {
        let _ = url.set_password(hidden);
    }
    if url.query_pairs().any(|(k, _)| k == "password") {
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter_map(|(k, v)| match (k == "password", hidden) {
                (false, _) => Some((k.into_owned(), v.into_owned())),
                (true, Some(h)) => Some((k.into_owned(), h.to_string())),
                (true, None) => None,
            })
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    url.to_string()
}

/// True when a '@' after `://` has a ':' before it in what a person wrote
/// as user information (up to the last '@'), though the parser found no
/// password there: the part after the ':' may be one.
fn hides_userinfo(text: &str) -> bool {
    text.split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// [`url`] for text the `url` crate refuses: cut at `://`, the last '@'
/// and the first ':' between them.
fn unparsed(text: &str, hidden: Option<&str>) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return text.to_string();
    };
    match (userinfo.split_once(':'), hidden) {
        (None, _) => text.to_string(),
        (Some((user, _)), Some(h)) => format!("{scheme}://{user}:{h}@{host}"),
        (Some((user, _)), None) => format!("{scheme}://{user}@{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::Password::{Masked, Removed};
    use super::url;

    #[track_caller]
    fn check(text: &str, masked: &str, removed: &str) {
        assert_eq!(url(text, Masked), masked, "masked");
        assert_eq!(url(text, Removed), removed, "removed");
    }

    #[test]
    fn a_question_mark_in_the_password_does_not_show_it() {
        for text in [
            "smtp://mailer:8412?Tq@smtp.example.org:587",
            "smtp://mailer:ab#cd@smtp.example.org:587",
        ] {
            for how in [Masked, Removed] {
                let shown = url(text, how);
                assert!(!shown.contains("8412") && !shown.contains("cd@"), "{shown}");
                assert!(
                    shown.contains("mailer") && shown.contains("smtp.example.org"),
                    "{shown}"
                );
            }
        }
        assert_eq!(
            url("postgres://u@h/d?x=a@b", Masked),
            "postgres://u@h/d?x=a@b"
        );
    }
    #[test]
    fn smtp() {
        check(
            "smtp://user:pass@host",
            "smtp://user:***@host",
            "smtp://user@host",
        );
        check(
            "smtps://mailer:s3cret@smtp.example.org:465?tls=required",
            "smtps://mailer:***@smtp.example.org:465?tls=required",
            "smtps://mailer@smtp.example.org:465?tls=required",
        );
        // Percent-encoded, as `SmtpUrl::parse` reads them.
        check(
            "smtps://a%40b:p%3As@h",
            "smtps://a%40b:***@h",
            "smtps://a%40b@h",
        );
        // A port that is not a number: cut by hand, the password still goes.
        check("smtp://u:pw@h:x", "smtp://u:***@h:x", "smtp://u@h:x");
    }

    #[test]
    fn postgres() {
        check(
            "postgres://user:pass@host/db",
            "postgres://user:***@host/db",
            "postgres://user@host/db",
        );
        check(
            "postgresql://news:s3@db.example:5433/bulletin?sslmode=require",
            "postgresql://news:***@db.example:5433/bulletin?sslmode=require",
            "postgresql://news@db.example:5433/bulletin?sslmode=require",
        );
        check(
            "postgres://u:s3cret@h/d?password=q1",
            "postgres://u:***@h/d?password=***",
            "postgres://u@h/d",
        );
        check(
            "postgres://u@h/d?sslmode=require&password=q1",
            "postgres://u@h/d?sslmode=require&password=***",
            "postgres://u@h/d?sslmode=require",
        );
        // A raw '/' in the password: the URL does not parse.
        check(
            "postgres://u:ab/cd@h/d",
            "postgres://u:***@h/d",
            "postgres://u@h/d",
        );
        check(
            "postgres://:pw@h/d",
            "postgres://:***@h/d",
            "postgres://h/d",
        );
    }

    #[test]
    fn imap() {
        check(
            "imaps://bounces%40example.org:pw@imap.example.org:993/INBOX",
            "imaps://bounces%40example.org:***@imap.example.org:993/INBOX",
            "imaps://bounces%40example.org@imap.example.org:993/INBOX",
        );
        check(
            "imap://b:pw@127.0.0.1/INBOX",
            "imap://b:***@127.0.0.1/INBOX",
            "imap://b@127.0.0.1/INBOX",
        );
    }

    #[test]
    fn passwords_with_at_and_colon() {
        check("smtp://u:p@ss@h", "smtp://u:***@h", "smtp://u@h");
        check("smtp://u:p:s@h:25", "smtp://u:***@h:25", "smtp://u@h:25");
    }

    #[test]
    fn nothing_to_hide() {
        for text in [
            "smtp://127.0.0.1:25",
            "smtp://mailer@smtp.example.org:2525?tls=required",
            "postgres://news@db.example/bulletin",
            "imaps://b@imap.example.org/INBOX",
            "https://news.example.org/",
            "data/b:1.db",
            "bulletin.db",
        ] {
            check(text, text, text);
        }
    }
}
