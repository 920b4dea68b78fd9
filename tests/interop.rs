//! lettre against independent SMTP servers: Postfix's `smtp-sink` and
//! `aiosmtpd`. Skipped with a notice when a server is missing, unless
//! `BULLETIN_INTEROP=1` (as in `.ci/run`), which makes that a failure.

use std::time::Duration;

use lettre::{AsyncTransport, Message};

use crate::support::servers::{self, Dumped, Server};
use crate::support::transport;

/// Sends three messages, the second also Bcc'd, and checks what `server`
/// dumped: envelope sender, envelope recipients and body.
async fn three_messages(server: Server) {
    let smtp = transport(server.port());
    for i in 0..3 {
        let mut builder = Message::builder()
            .from("news@example.test".parse().unwrap())
            .to(format!("reader{i}@example.test").parse().unwrap())
            .subject(format!("Issue {i}"));
        if i == 1 {
            builder = builder.bcc("archive@example.test".parse().unwrap());
        }
        let body = format!("Hello reader {i}.\r\n.a line starting with a dot\r\nBye.\r\n");
        smtp.send(builder.body(body).unwrap()).await.unwrap();
    }

    let mut got = server.wait_for(3, Duration::from_secs(10));
    assert_eq!(got.len(), 3, "{:?} dumped {got:?}", server.kind());
    got.sort_by(|a, b| a.rcpt_to.cmp(&b.rcpt_to));
    for (i, m) in got.iter().enumerate() {
        let Dumped {
            mail_from,
            rcpt_to,
            data,
            ..
        } = m;
        assert_eq!(mail_from, "news@example.test");
        let mut want = vec![format!("reader{i}@example.test")];
        if i == 1 {
            want.push("archive@example.test".into());
        }
        assert_eq!(rcpt_to, &want);
        // smtp-sink stores LF line ends; compare without CRs.
        let text = String::from_utf8_lossy(data).replace("\r\n", "\n");
        let (head, body) = text.split_once("\n\n").expect("header/body separator");
        assert!(head.contains(&format!("Subject: Issue {i}\n")), "{head}");
        assert!(!head.contains("Bcc:"), "{head}");
        // lettre always ends DATA with "\r\n.\r\n", so a body that already
        // ends with CRLF arrives with one more, empty, line.
        assert_eq!(
            body,
            format!("Hello reader {i}.\n.a line starting with a dot\nBye.\n\n")
        );
    }
    server.stop();
}

#[tokio::test]
async fn postfix_smtp_sink_receives_lettre_messages() {
    let Some(server) = servers::postfix_smtp_sink() else {
        return;
    };
    three_messages(server).await;
}

#[tokio::test]
async fn aiosmtpd_receives_lettre_messages() {
    let Some(server) = servers::aiosmtpd() else {
        return;
    };
    three_messages(server).await;
}

/// `bulletin send` to an independent server: every recipient once, with the
/// bulk-mail headers intact as that server stored them.
async fn campaign_to(server: Server) {
    let env = crate::dispatch::Env::new(server.port(), "");
    let all = env.subscribers(20, &[]).await;
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    let got = tokio::task::spawn_blocking(move || server.wait_for(20, Duration::from_secs(30)))
        .await
        .unwrap();
    let mut rcpts: Vec<String> = got.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    rcpts.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(rcpts, want, "each recipient exactly once");
    for m in &got {
        assert!(
            m.mail_from.starts_with("bounces+") && m.mail_from.ends_with("@alliance.example"),
            "{}",
            m.mail_from
        );
        let text = String::from_utf8_lossy(&m.data)
            .replace("\r\n", "\n")
            .replace("\n ", " ");
        assert!(
            text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
            "{text}"
        );
        assert!(text.contains("List-Unsubscribe: <https://news.example.org/unsubscribe/"));
        assert!(text.contains("List-Id: \"News\" <news.alliance.example>"));
        assert!(text.contains("Content-Type: multipart/alternative"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulletin_sends_a_campaign_to_postfix_smtp_sink() {
    if let Some(server) = servers::postfix_smtp_sink() {
        campaign_to(server).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulletin_sends_a_campaign_to_aiosmtpd() {
    if let Some(server) = servers::aiosmtpd() {
        campaign_to(server).await;
    }
}
