//! RFC 5965 abuse reports (ARF): the `message/feedback-report` part is
//! header-style fields, read with the same block reader as DSNs.

use super::dsn;

/// What a feedback report says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Feedback {
    /// `abuse`, `auth-failure`, `fraud`, `not-spam`, `opt-out`, `virus`, ...
    pub feedback_type: Option<String>,
    /// `Original-Rcpt-To` addresses: who complained.
    pub recipients: Vec<String>,
    pub original_mail_from: Option<String>,
}

/// Reads a feedback-report part.
pub fn parse(text: &str) -> Feedback {
    let mut fb = Feedback::default();
    for block in dsn::blocks(text) {
        if fb.feedback_type.is_none() {
            fb.feedback_type = block
                .get("feedback-type")
                .map(|t| t.trim().to_ascii_lowercase());
        }
        for v in block
            .all("original-rcpt-to")
            .chain(block.all("removal-recipient"))
        {
            if let Some(a) = dsn::address_field(v)
                && !fb.recipients.contains(&a)
            {
                fb.recipients.push(a);
            }
        }
        if fb.original_mail_from.is_none() {
            fb.original_mail_from = block.get("original-mail-from").and_then(dsn::address_field);
        }
    }
    fb
}

/// Feedback types that mean "this person does not want the mail".
pub fn is_complaint(feedback_type: &str) -> bool {
    matches!(
        feedback_type,
        "abuse" | "fraud" | "opt-out" | "optout" | "virus" | "other"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_feedback_fields() {
        let fb = parse(
            "Feedback-Type: Abuse\r\nUser-Agent: x/1\r\nVersion: 1\r\n\
             Original-Mail-From: <bounces+abc@news.example.org>\r\n\
             Original-Rcpt-To: <Reader@example.com>\r\n",
        );
        assert_eq!(fb.feedback_type.as_deref(), Some("abuse"));
        assert_eq!(fb.recipients, ["reader@example.com"]);
        assert_eq!(
            fb.original_mail_from.as_deref(),
            Some("bounces+abc@news.example.org")
        );
        assert!(is_complaint("abuse"));
        assert!(!is_complaint("auth-failure"));
    }
}
