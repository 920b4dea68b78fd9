//! What goes on the wire, with the real binary against real servers on
//! loopback: internationalised addresses (SMTPUTF8 with aiosmtpd, offered
//! or not), no AUTH outside TLS (a scripted server that offers AUTH but not
//! STARTTLS), and header values cleaned of control characters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::dispatch::{Env, header, unfold};
use crate::support::servers;
use crate::support::smtp_sink::{Behaviour, SmtpSink};

const INES: &str = "ines.garcía@example.org";

/// Imports `csv` (with a header line) into list `news`.
async fn import(env: &Env, csv: &str) {
    env.ok(&["lists", "add", "news", "--name", "News"]).await;
    std::fs::write(env.dir.path().join("people.csv"), csv).unwrap();
    env.ok(&["subscribers", "import", "people.csv", "--list", "news"])
        .await;
}

/// The subscriber's status and their newest delivery (status, reply).
async fn stored(env: &Env, email: &str) -> (String, String, String) {
    let store = env.store().await;
    let person = store.subscriber(email).await.unwrap().expect("subscriber");
    let deliveries = store.deliveries_of(person.id).await.unwrap();
    let (status, reply) = deliveries.into_iter().next().expect("a delivery");
    store.close().await;
    (person.status, status, reply.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_local_part_goes_out_with_smtputf8() {
    let Some(server) = servers::aiosmtpd() else {
        return;
    };
    let env = Env::new(server.port(), "");
    import(
        &env,
        &format!("email,name,city\n{INES},Inés García,Madrid\nana@example.net,Ana,Porto\n"),
    )
    .await;
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    let messages = server.wait_for(2, Duration::from_secs(10));
    assert_eq!(messages.len(), 2);
    let ines = messages
        .iter()
        .find(|m| m.rcpt_to == [INES])
        .expect("sent to Inés");
    let envelope = String::from_utf8_lossy(&ines.raw);
    assert!(
        envelope.lines().next().unwrap().contains("SMTPUTF8"),
        "{envelope}"
    );
    assert!(ines.mail_from.is_ascii(), "{}", ines.mail_from);
    // RFC 6532: the address stays UTF-8 in the header.
    let raw = unfold(&ines.data);
    assert!(
        header(&raw, "To").is_some_and(|to| to.ends_with(&format!("<{INES}>"))),
        "{raw}"
    );
    let (person, delivery, _) = stored(&env, INES).await;
    assert_eq!((person.as_str(), delivery.as_str()), ("active", "sent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_local_part_fails_clearly_without_smtputf8_and_stays_active() {
    let Some(server) = servers::aiosmtpd_with(&[]) else {
        return;
    };
    let env = Env::new(server.port(), "");
    import(
        &env,
        &format!("email,name,city\n{INES},Inés García,Madrid\nana@example.net,Ana,Porto\n"),
    )
    .await;
    let out = env.run(&["send", "campaigns/news-1.md", "--yes"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let messages = server.wait_for(1, Duration::from_secs(10));
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].rcpt_to, ["ana@example.net"]);
    let (person, delivery, reply) = stored(&env, INES).await;
    assert_eq!(person, "active", "not the subscriber's fault: not bounced");
    assert_eq!(delivery, "failed");
    assert!(
        reply.contains("the SMTP server does not support SMTPUTF8"),
        "{reply}"
    );
    let (_, delivery, _) = stored(&env, "ana@example.net").await;
    assert_eq!(delivery, "sent");
}

/// A server that offers AUTH but not STARTTLS and records every line it
/// reads; it would accept any password.
async fn auth_without_starttls() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = lines.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut read = BufReader::new(read);
                let _ = write.write_all(b"220 scripted ESMTP\r\n").await;
                let mut line = String::new();
                while read.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    seen.lock().unwrap().push(line.trim_end().to_string());
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-scripted\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n",
                        "AUTH" => b"235 2.7.0 accepted\r\n",
                        "DATA" => b"354 go on\r\n",
                        "QUIT" => b"221 bye\r\n",
                        _ => b"250 ok\r\n",
                    };
                    if write.write_all(reply).await.is_err() || verb == "QUIT" {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
    (port, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_is_sent_without_tls() {
    let (port, lines) = auth_without_starttls().await;
    let mut env = Env::new(port, "");
    env.smtp_url = format!("smtp://mailer:hunter2@127.0.0.1:{port}");
    import(&env, "email,name,city\nana@example.net,Ana,Porto\n").await;
    let out = env.run(&["send", "campaigns/news-1.md", "--yes"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let error: Vec<&str> = stderr.lines().filter(|l| l.contains("STARTTLS")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(
        error[0].contains("does not offer STARTTLS") && error[0].contains("mailer"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let lines = lines.lock().unwrap().clone();
    assert!(lines.iter().any(|l| l.starts_with("EHLO")), "{lines:?}");
    assert!(
        !lines
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with("AUTH")),
        "AUTH reached the server: {lines:?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("MAIL")), "{lines:?}");
    let (_, delivery, _) = stored(&env, "ana@example.net").await;
    assert_ne!(delivery, "sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_names_are_stripped_and_the_message_is_sent() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = Env::new(sink.port(), "");
    import(
        &env,
        "email,name,city\nann@example.net,\"Ann\r\nBcc: x@evil.example\",Here\nnul@example.net,\"\0\",There\nesc@example.net,\"E\u{1b}[2Jsc\",Far\n",
    )
    .await;
    env.ok(&["send", "campaigns/news-1.md", "--yes"]).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 3);
    for m in &messages {
        assert_eq!(m.rcpt_to.len(), 1, "one recipient only: {:?}", m.rcpt_to);
        let text = String::from_utf8_lossy(&m.data);
        let head = text.split("\r\n\r\n").next().unwrap();
        for line in head.split("\r\n") {
            assert!(!line.starts_with("Bcc:"), "{head}");
            assert!(
                !line.chars().any(|c| c.is_control() && c != '\t'),
                "{line:?}"
            );
        }
    }
    for email in ["ann@example.net", "nul@example.net", "esc@example.net"] {
        let (_, delivery, _) = stored(&env, email).await;
        assert_eq!(delivery, "sent", "{email}");
    }
    let ann = messages
        .iter()
        .find(|m| m.rcpt_to == ["ann@example.net"])
        .unwrap();
    let raw = unfold(&ann.data);
    assert!(
        header(&raw, "To").is_some_and(|to| to.ends_with(" <ann@example.net>")),
        "{raw}"
    );
    // The name stays, as text on the subject line it was filled into.
    assert_eq!(
        header(&raw, "Subject"),
        Some("News for Ann Bcc: x@evil.example")
    );
}
