//! The tools bulletin imports from: how each is recognised by its header,
//! what its columns mean and what its statuses say. One table per tool; the
//! README's "Coming from Mailchimp / listmonk / …" table says the same.

use super::{Column, Standing, attribute_key, loose};

/// The tool that wrote a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// Recognised by the header.
    #[default]
    Auto,
    Mailchimp,
    Listmonk,
    Keila,
    Ghost,
    Substack,
    /// Any CSV with an email column (bulletin's own exports included).
    Csv,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Auto => "auto",
            Format::Mailchimp => "Mailchimp",
            Format::Listmonk => "listmonk",
            Format::Keila => "Keila",
            Format::Ghost => "Ghost",
            Format::Substack => "Substack",
            Format::Csv => "CSV",
        })
    }
}

/// Email columns as tools and languages name them, compared `loose`ly.
const EMAIL_NAMES: &[&str] = &[
    "email",
    "emailaddress",
    "mail",
    "emailadresse",
    "adresseemail",
    "adressemail",
    "correoelectrónico",
    "direccióndecorreoelectrónico",
    "indirizzoemail",
    "emailadres",
    "endereçodeemail",
];
const FIRST_NAMES: &[&str] = &[
    "firstname",
    "fname",
    "givenname",
    "vorname",
    "prénom",
    "prenom",
    "nombre",
    "nome",
    "voornaam",
];
const LAST_NAMES: &[&str] = &[
    "lastname",
    "lname",
    "surname",
    "familyname",
    "nachname",
    "nom",
    "nomdefamille",
    "apellido",
    "apellidos",
    "cognome",
    "achternaam",
    "sobrenome",
];

/// The format whose signature columns `header` has; `Csv` when none.
pub fn detect(header: &[String]) -> Format {
    let has = |name: &str| header.iter().any(|h| loose(h) == name);
    // OPTIN_TIME alone is not enough: bulletin's own exports have it too.
    // UNSUB_TIME and CLEAN_TIME, spelt as Mailchimp does, mark its
    // unsubscribed and cleaned files (bulletin's Mailchimp-format exports
    // carry only those; its own exports spell attributes in snake_case).
    let exact = |name: &str| header.iter().any(|h| h.trim() == name);
    if has("memberrating")
        || has("leid")
        || has("euid")
        || exact("UNSUB_TIME")
        || exact("CLEAN_TIME")
    {
        Format::Mailchimp
    } else if has("uuid") && has("attributes") && has("status") {
        Format::Listmonk
    } else if has("externalid") && has("data") {
        Format::Keila
    } else if has("subscribedtoemails") {
        Format::Ghost
    } else if has("emaildisabled") || has("activesubscription") {
        Format::Substack
    } else {
        Format::Csv
    }
}

/// The column that names a format when it is asked for with `--from`.
pub(super) fn required_column(format: Format) -> Option<&'static str> {
    match format {
        Format::Auto | Format::Csv | Format::Mailchimp => None,
        Format::Listmonk => Some("attributes"),
        Format::Keila => Some("Data"),
        Format::Ghost => Some("subscribed_to_emails"),
        Format::Substack => Some("email_disabled"),
    }
}

/// What the header field `name` means in `format`.
pub(super) fn column(format: Format, name: &str) -> Column {
    let key = loose(name);
    let common = match key.as_str() {
        k if EMAIL_NAMES.contains(&k) => Some(Column::Email),
        "name" | "fullname" => Some(Column::Name),
        k if FIRST_NAMES.contains(&k) => Some(Column::FirstName),
        k if LAST_NAMES.contains(&k) => Some(Column::LastName),
        "" => Some(Column::Ignored("no name")),
        _ => None,
    };
    if let Some(c) = common {
        return c;
    }
    match (format, key.as_str()) {
        (Format::Mailchimp, "optintime") => Column::OptinTime,
        (Format::Mailchimp, "optinip") => Column::OptinIp,
        (Format::Mailchimp, "confirmtime") => Column::ConfirmTime,
        (Format::Mailchimp, "confirmip") => Column::ConfirmIp,
        (
            Format::Mailchimp,
            "memberrating" | "leid" | "euid" | "lastchanged" | "latitude" | "longitude" | "gmtoff"
            | "dstoff",
        ) => Column::Ignored("Mailchimp's own data"),
        (Format::Mailchimp, "cc") => Column::Attribute("country_code".into()),
        (Format::Mailchimp, "tags") => Column::Tags,
        (Format::Listmonk, "status") | (Format::Keila, "status") => Column::Status,
        (Format::Listmonk, "attributes") | (Format::Keila, "data") => Column::JsonAttributes,
        (Format::Listmonk | Format::Ghost | Format::Substack, "createdat") => Column::OptinTime,
        (Format::Listmonk, "updatedat") => Column::Ignored("listmonk's own data"),
        (Format::Ghost, "subscribedtoemails") | (Format::Substack, "emaildisabled") => {
            Column::Status
        }
        (Format::Csv, "status") => Column::Status,
        (Format::Csv, "optintime") => Column::OptinTime,
        (Format::Csv, "optinip") => Column::OptinIp,
        (Format::Csv, "confirmtime") => Column::ConfirmTime,
        (Format::Csv, "confirmip") => Column::ConfirmIp,
        (Format::Csv, "consentsource") => Column::ConsentSource,
        (Format::Csv, "lists") => Column::Lists,
        _ => {
            let key = attribute_key(name);
            if key.is_empty() {
                Column::Ignored("no letters or digits in the name")
            } else {
                Column::Attribute(key)
            }
        }
    }
}

/// The standing of every row of a file, when the file says it: Mailchimp
/// exports members of each status in their own file, recognised by its name
/// or else by the columns only that file has.
pub(super) fn file_standing(
    format: Format,
    file_name: Option<&str>,
    header: &[String],
) -> Standing {
    if format != Format::Mailchimp {
        return Standing::Subscribed;
    }
    let name = file_name.unwrap_or_default().to_lowercase();
    let has = |col: &str| header.iter().any(|h| loose(h) == col);
    if name.starts_with("nonsubscribed") {
        Standing::NotSubscribed
    } else if name.starts_with("unsubscribed") || has("unsubtime") {
        Standing::Unsubscribed
    } else if name.starts_with("cleaned") || has("cleantime") {
        Standing::Bounced
    } else {
        Standing::Subscribed
    }
}

/// What a row's status value says, per tool. Unknown values subscribe (a
/// plain CSV's `status` was informational before), except where the tool's
/// own vocabulary is closed: there anything but "subscribed" is not mailed.
pub(super) fn status_standing(format: Format, status: &str) -> Standing {
    let status = loose(status);
    match format {
        Format::Listmonk => match status.as_str() {
            "blocklisted" => Standing::Suppressed,
            "enabled" | "" => Standing::Subscribed,
            _ => Standing::Unsubscribed,
        },
        Format::Keila => match status.as_str() {
            "active" | "" => Standing::Subscribed,
            "unreachable" => Standing::Bounced,
            _ => Standing::Unsubscribed,
        },
        // Ghost: subscribed_to_emails.
        Format::Ghost => match status.as_str() {
            "false" | "0" | "no" => Standing::Unsubscribed,
            _ => Standing::Subscribed,
        },
        // Substack: email_disabled.
        Format::Substack => match status.as_str() {
            "true" | "1" | "yes" => Standing::Unsubscribed,
            _ => Standing::Subscribed,
        },
        Format::Auto | Format::Mailchimp | Format::Csv => match status.as_str() {
            "unsubscribed" | "unsubscribe" | "optedout" | "optout" => Standing::Unsubscribed,
            "bounced" | "cleaned" | "hardbounce" | "unreachable" => Standing::Bounced,
            "blocklisted" | "blacklisted" | "blocked" | "suppressed" => Standing::Suppressed,
            "complained" | "complaint" | "spam" | "abuse" => Standing::Complained,
            "nonsubscribed" | "transactional" => Standing::NotSubscribed,
            _ => Standing::Subscribed,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(names: &str) -> Vec<String> {
        names.split(',').map(str::to_string).collect()
    }

    #[test]
    fn detection_by_header() {
        let cases = [
            (
                "Email Address,First Name,Last Name,MEMBER_RATING,OPTIN_TIME",
                Format::Mailchimp,
            ),
            (
                "email,name,status,optin_time,optin_ip,consent_source",
                Format::Csv,
            ),
            (
                "E-Mail-Adresse,Vorname,Nachname,MEMBER_RATING,OPTIN_TIME",
                Format::Mailchimp,
            ),
            (
                "uuid,email,name,attributes,status,created_at,updated_at",
                Format::Listmonk,
            ),
            (
                "Email,First name,Last name,Data,Status,External ID",
                Format::Keila,
            ),
            (
                "id,email,name,note,subscribed_to_emails,complimentary_plan",
                Format::Ghost,
            ),
            (
                "email,active_subscription,expiry,plan,email_disabled",
                Format::Substack,
            ),
            ("email,name,city", Format::Csv),
        ];
        for (h, f) in cases {
            assert_eq!(detect(&header(h)), f, "{h}");
        }
    }

    #[test]
    fn columns_match_loosely() {
        for email in [
            "Email Address",
            "E-mail",
            "email_address",
            "EMAIL",
            "Adresse e-mail",
        ] {
            assert_eq!(column(Format::Csv, email), Column::Email, "{email}");
        }
        assert_eq!(column(Format::Csv, "First Name"), Column::FirstName);
        assert_eq!(column(Format::Mailchimp, "Prénom"), Column::FirstName);
        assert_eq!(
            column(Format::Csv, "Favourite Colour"),
            Column::Attribute("favourite_colour".into())
        );
    }

    #[test]
    fn mailchimp_files() {
        let h = header("Email Address,UNSUB_TIME");
        assert_eq!(
            file_standing(Format::Mailchimp, None, &h),
            Standing::Unsubscribed
        );
        let h = header("Email Address,OPTIN_TIME");
        assert_eq!(
            file_standing(Format::Mailchimp, Some("cleaned_members_export_1.csv"), &h),
            Standing::Bounced
        );
        assert_eq!(
            file_standing(
                Format::Mailchimp,
                Some("nonsubscribed_members_export_1.csv"),
                &h
            ),
            Standing::NotSubscribed
        );
        assert_eq!(
            file_standing(Format::Mailchimp, None, &h),
            Standing::Subscribed
        );
    }
}
