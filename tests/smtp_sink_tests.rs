//! The in-process SMTP sink (`support::smtp_sink`): what it records and how
//! its scripted failures look to lettre and to a raw TCP client.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::smtp_sink::{Behaviour, Received, SmtpSink};
use crate::support::{message, transport};

const WAIT: Duration = Duration::from_secs(10);

/// A raw SMTP client: writes bytes, reads whole (multi-line) replies.
struct Raw {
    stream: BufReader<TcpStream>,
}

impl Raw {
    async fn connect(sink: &SmtpSink) -> Raw {
        let stream = TcpStream::connect(sink.addr()).await.unwrap();
        Raw {
            stream: BufReader::new(stream),
        }
    }

    async fn send(&mut self, bytes: &str) {
        self.stream
            .get_mut()
            .write_all(bytes.as_bytes())
            .await
            .unwrap();
    }

    /// One reply, its lines joined with `\n`, without line ends.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.stream.read_line(&mut line).await.unwrap();
            assert!(n > 0, "connection closed after {lines:?}");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    /// The reply codes of the next `n` replies.
    async fn codes(&mut self, n: usize) -> Vec<String> {
        let mut codes = Vec::new();
        for _ in 0..n {
            codes.push(self.reply().await[..3].to_string());
        }
        codes
    }

    /// Whether the server closed the connection (EOF without more bytes).
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(WAIT, self.stream.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }
}

fn status(err: &lettre::transport::smtp::Error) -> String {
    err.status().map(|c| c.to_string()).unwrap_or_default()
}

#[tokio::test]
async fn lettre_message_is_recorded_with_envelope_and_exact_data() {
    let sink = SmtpSink::start(Behaviour::new());
    let email = Message::builder()
        .from("News <news@example.test>".parse::<Mailbox>().unwrap())
        .to("ann@example.test".parse().unwrap())
        .bcc("bob@example.test".parse().unwrap())
        .subject("Dots")
        // Lines starting with "." are dot-stuffed on the wire by lettre.
        .body(String::from("Hello,\r\n.hidden\r\n..two\r\n.\r\nbye\r\n"))
        .unwrap();
    let formatted = email.formatted();

    transport(sink.port()).send(email).await.unwrap();

    let got = sink.messages();
    assert_eq!(got.len(), 1);
    let Received {
        mail_from,
        rcpt_to,
        data,
        connection,
        ..
    } = &got[0];
    assert_eq!(mail_from, "news@example.test");
    assert_eq!(rcpt_to, &["ann@example.test", "bob@example.test"]);
    assert_eq!(*connection, 1);
    // lettre always ends DATA with "\r\n.\r\n": that first CRLF ends one
    // more, empty, line of data (smtp-sink and aiosmtpd store it too).
    let mut expected = formatted.clone();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(&expected)
    );
    assert!(!String::from_utf8_lossy(data).contains("Bcc:"));
    assert_eq!(sink.connections(), 1);
}

#[tokio::test]
async fn raw_pipelined_transaction_with_dot_stuffing() {
    let sink = SmtpSink::start(Behaviour::new().rcpt_reply("reject", "550 5.1.1 user unknown"));
    let mut c = Raw::connect(&sink).await;
    assert!(c.reply().await.starts_with("220 "));
    // One write, as a PIPELINING client sends a command group.
    c.send(
        "EHLO client.test\r\n\
         MAIL FROM:<from@example.test> SIZE=100 BODY=8BITMIME\r\n\
         RCPT TO:<ok@example.test>\r\n\
         RCPT TO:<reject@example.test>\r\n\
         RCPT TO: <also-ok@example.test> NOTIFY=NEVER\r\n\
         DATA\r\n",
    )
    .await;
    let ehlo = c.reply().await;
    for ext in ["PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE "] {
        assert!(ehlo.contains(ext), "{ext} missing from {ehlo:?}");
    }
    assert!(!ehlo.contains("AUTH"), "{ehlo:?}");
    assert_eq!(c.codes(5).await, ["250", "250", "550", "250", "354"]);
    c.send("Subject: hi\r\n\r\n..leading dot\r\nline\r\n.\r\nQUIT\r\n")
        .await;
    assert_eq!(c.codes(2).await, ["250", "221"]);
    assert!(c.closed().await);

    assert_eq!(sink.wait_for(1, WAIT).await, 1);
    let got = &sink.messages()[0];
    assert_eq!(got.mail_from, "from@example.test");
    assert_eq!(got.rcpt_to, ["ok@example.test", "also-ok@example.test"]);
    assert_eq!(got.data, b"Subject: hi\r\n\r\n.leading dot\r\nline\r\n");
}

#[tokio::test]
async fn raw_session_commands_and_sequencing_errors() {
    let sink = SmtpSink::start(Behaviour::new());
    let mut c = Raw::connect(&sink).await;
    c.reply().await;
    c.send("MAIL FROM:<a@example.test>\r\n").await;
    assert_eq!(c.codes(1).await, ["503"], "MAIL before HELO");
    c.send("HELO client.test\r\nNOOP\r\nVRFY someone\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        .await;
    assert_eq!(c.codes(5).await, ["250", "250", "502", "503", "503"]);
    c.send("MAIL FROM:<>\r\nDATA\r\nRSET\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n")
        .await;
    assert_eq!(c.codes(5).await, ["250", "554", "250", "250", "250"]);
    c.send("DATA\r\n").await;
    assert_eq!(c.codes(1).await, ["354"]);
    c.send("x\r\n.\r\nMAIL FROM:<a@example.test> SIZE=999999999999\r\nQUIT\r\n")
        .await;
    assert_eq!(c.codes(3).await, ["250", "552", "221"]);
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"x\r\n");
}

#[tokio::test]
async fn rcpt_rules_reject_and_defer() {
    let sink = SmtpSink::start(
        Behaviour::new()
            .rcpt_reply("reject", "550 5.1.1 user unknown")
            .rcpt_reply("defer", "451 4.3.0 try again later"),
    );
    let smtp = transport(sink.port());
    let err = smtp
        .send(message("n@example.test", "reject@example.test", "s", "b"))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert_eq!(status(&err), "550");
    let err = smtp
        .send(message("n@example.test", "defer@example.test", "s", "b"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(status(&err), "451");
    smtp.send(message("n@example.test", "fine@example.test", "s", "b"))
        .await
        .unwrap();
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to, ["fine@example.test"]);
}

#[tokio::test]
async fn defer_first_counts_attempts_per_address_across_connections() {
    let sink = SmtpSink::start(Behaviour::new().defer_first("flaky", 2));
    let smtp = transport(sink.port());
    let send = |to: &'static str| smtp.send(message("n@example.test", to, "s", "b"));
    for _ in 0..2 {
        let err = send("flaky@example.test").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        // Another address matching the pattern has its own count.
        assert!(send("other@example.test").await.is_ok());
    }
    send("flaky@example.test").await.unwrap();
    assert_eq!(sink.rcpt_attempts("flaky@example.test"), 3);
    assert_eq!(sink.rcpt_attempts("other@example.test"), 2);
    assert_eq!(sink.connections(), 5);
    let got = sink.messages();
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].rcpt_to, ["flaky@example.test"]);

    let sink = SmtpSink::start(Behaviour::new().defer_first("", 1));
    let smtp = transport(sink.port());
    let send = |to: &'static str| smtp.send(message("n@example.test", to, "s", "b"));
    assert!(
        send("a@example.test").await.is_err(),
        "empty pattern matches all"
    );
    assert!(send("b@example.test").await.is_err());
    assert!(send("a@example.test").await.is_ok());
}

#[tokio::test]
async fn data_reply_overrides_and_421_closes() {
    let sink = SmtpSink::start(
        Behaviour::new()
            .data_reply("full", "552 5.2.2 mailbox full")
            .data_reply("bye", "421 4.3.2 shutting down"),
    );
    let err = transport(sink.port())
        .send(message("n@example.test", "full@example.test", "s", "b"))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert_eq!(status(&err), "552");

    let mut c = Raw::connect(&sink).await;
    c.reply().await;
    c.send("EHLO c\r\nMAIL FROM:<n@example.test>\r\nRCPT TO:<bye@example.test>\r\nDATA\r\n")
        .await;
    assert_eq!(c.codes(4).await, ["250", "250", "250", "354"]);
    c.send("x\r\n.\r\n").await;
    assert_eq!(c.reply().await, "421 4.3.2 shutting down");
    assert!(c.closed().await);
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn drop_after_data_closes_without_reply() {
    let sink = SmtpSink::start(Behaviour::new().drop_after_data("crash"));
    let err = transport(sink.port())
        .send(message("n@example.test", "crash@example.test", "s", "b"))
        .await
        .unwrap_err();
    assert!(err.status().is_none(), "no SMTP reply expected: {err}");

    let mut c = Raw::connect(&sink).await;
    c.reply().await;
    c.send("HELO c\r\nMAIL FROM:<n@example.test>\r\nRCPT TO:<crash@example.test>\r\nDATA\r\n")
        .await;
    assert_eq!(c.codes(4).await, ["250", "250", "250", "354"]);
    c.send("x\r\n.\r\n").await;
    assert!(c.closed().await);
    assert!(sink.messages().is_empty());

    // Other recipients are unaffected.
    transport(sink.port())
        .send(message("n@example.test", "fine@example.test", "s", "b"))
        .await
        .unwrap();
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn refuse_first_connections_then_serve() {
    let sink = SmtpSink::start(Behaviour::new().refuse_first_connections(2));
    let smtp = transport(sink.port());
    for _ in 0..2 {
        let err = smtp
            .send(message("n@example.test", "a@example.test", "s", "b"))
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(status(&err), "421");
    }
    smtp.send(message("n@example.test", "a@example.test", "s", "b"))
        .await
        .unwrap();
    assert_eq!(sink.connections(), 3);
    assert_eq!(sink.messages()[0].connection, 3);
}

#[tokio::test]
async fn delayed_data_reply_is_in_flight_until_answered() {
    // The delay only has to outlast two adjacent assertions below.
    let sink = SmtpSink::start(Behaviour::new().delay_data_reply("slow", Duration::from_secs(2)));
    let port = sink.port();
    let send = tokio::spawn(async move {
        transport(port)
            .send(message("n@example.test", "slow@example.test", "s", "b"))
            .await
    });
    assert_eq!(sink.wait_for_in_flight(1, WAIT).await, 1);
    assert!(sink.messages().is_empty(), "recorded before its 250");
    send.await.unwrap().unwrap();
    assert_eq!(sink.in_flight(), 0);
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn shutdown_during_delay_loses_the_message() {
    let sink = SmtpSink::start(Behaviour::new().delay_data_reply("", Duration::from_secs(60)));
    let port = sink.port();
    let send = tokio::spawn(async move {
        transport(port)
            .send(message("n@example.test", "a@example.test", "s", "b"))
            .await
    });
    assert_eq!(sink.wait_for_in_flight(1, WAIT).await, 1);
    sink.shutdown().await;
    let err = send.await.unwrap().unwrap_err();
    assert!(err.status().is_none(), "{err}");
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
}

fn auth_transport(
    port: u16,
    password: &str,
    mechanism: Mechanism,
) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .credentials(Credentials::new("user".into(), password.into()))
        .authentication(vec![mechanism])
        .build()
}

#[tokio::test]
async fn auth_plain_and_login() {
    let sink = SmtpSink::start(Behaviour::new().credentials("user", "s3cret"));
    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        auth_transport(sink.port(), "s3cret", mechanism)
            .send(message("n@example.test", "a@example.test", "s", "b"))
            .await
            .unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));
        let err = auth_transport(sink.port(), "wrong", mechanism)
            .send(message("n@example.test", "a@example.test", "s", "b"))
            .await
            .unwrap_err();
        assert!(err.is_permanent(), "{err}");
        assert_eq!(status(&err), "535");
    }
    let err = transport(sink.port())
        .send(message("n@example.test", "a@example.test", "s", "b"))
        .await
        .unwrap_err();
    assert_eq!(status(&err), "530", "MAIL without AUTH: {err}");
    assert_eq!(sink.messages().len(), 2);

    // Raw AUTH PLAIN with an initial response, and LOGIN step by step.
    let mut c = Raw::connect(&sink).await;
    c.reply().await;
    c.send("EHLO c\r\n").await;
    assert!(c.reply().await.contains("AUTH PLAIN LOGIN"));
    c.send("AUTH PLAIN AHVzZXIAczNjcmV0\r\n").await; // "\0user\0s3cret"
    assert_eq!(c.codes(1).await, ["235"]);
    let mut c = Raw::connect(&sink).await;
    c.reply().await;
    c.send("EHLO c\r\nAUTH LOGIN\r\n").await;
    c.reply().await;
    assert_eq!(c.reply().await, "334 VXNlcm5hbWU6");
    c.send("dXNlcg==\r\n").await; // user
    assert_eq!(c.reply().await, "334 UGFzc3dvcmQ6");
    c.send("bm9wZQ==\r\n").await; // nope
    assert_eq!(c.codes(1).await, ["535"]);
}

#[tokio::test]
async fn one_megabyte_message() {
    let sink = SmtpSink::start(Behaviour::new());
    let line = "0123456789".repeat(7) + "\r\n"; // 72 bytes
    let body = line.repeat(1024 * 1024 / line.len() + 1);
    transport(sink.port())
        .send(message("n@example.test", "big@example.test", "big", &body))
        .await
        .unwrap();
    let data = &sink.messages()[0].data;
    assert!(data.len() > 1024 * 1024, "{}", data.len());
    assert!(data.ends_with(format!("{body}\r\n").as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    let sink = SmtpSink::start(Behaviour::new());
    let smtp = transport(sink.port());
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..40 {
        let smtp = smtp.clone();
        sends.spawn(async move {
            let to = format!("user{i}@example.test");
            smtp.send(message("n@example.test", &to, "s", "b")).await
        });
    }
    while let Some(result) = sends.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(sink.wait_for(40, WAIT).await, 40);
    assert_eq!(sink.connections(), 40);
    let mut rcpts: Vec<String> = sink
        .messages()
        .into_iter()
        .flat_map(|m| m.rcpt_to)
        .collect();
    rcpts.sort();
    let mut expected: Vec<String> = (0..40).map(|i| format!("user{i}@example.test")).collect();
    expected.sort();
    assert_eq!(rcpts, expected);
}

#[tokio::test]
async fn one_connection_carries_many_messages() {
    let sink = SmtpSink::start(Behaviour::new().rcpt_reply("reject", "550 5.1.1 user unknown"));
    let hello = ClientId::Domain("client.test".into());
    let connect =
        || AsyncSmtpConnection::connect_tokio1(sink.addr(), Some(WAIT), &hello, None, None);
    let mut conn = connect().await.unwrap();
    for to in ["a@example.test", "b@example.test"] {
        let email = message("n@example.test", to, "s", "b");
        conn.send(email.envelope(), &email.formatted())
            .await
            .unwrap();
    }
    // lettre sends QUIT and closes the connection after any failed command,
    // so a rejected recipient costs the connection.
    let email = message("n@example.test", "reject@example.test", "s", "b");
    let err = conn
        .send(email.envelope(), &email.formatted())
        .await
        .unwrap_err();
    assert_eq!(status(&err), "550");
    assert!(conn.has_broken());

    let mut conn = connect().await.unwrap();
    let email = message("n@example.test", "c@example.test", "s", "b");
    conn.send(email.envelope(), &email.formatted())
        .await
        .unwrap();
    conn.quit().await.unwrap();

    let got: Vec<(String, usize)> = sink
        .messages()
        .into_iter()
        .map(|m| (m.rcpt_to.join(","), m.connection))
        .collect();
    assert_eq!(
        got,
        [
            ("a@example.test".to_string(), 1),
            ("b@example.test".to_string(), 1),
            ("c@example.test".to_string(), 2)
        ]
    );
    assert_eq!(sink.connections(), 2);
}

#[tokio::test]
async fn wait_for_returns_the_count_on_timeout() {
    let sink = SmtpSink::start(Behaviour::new());
    assert_eq!(sink.wait_for(1, Duration::from_millis(10)).await, 0);
    assert_eq!(
        sink.wait_for_in_flight(1, Duration::from_millis(10)).await,
        0
    );
}

#[tokio::test]
async fn discard_data_keeps_envelopes_only() {
    let sink = SmtpSink::start(Behaviour::new().discard_data());
    transport(sink.port())
        .send(message("n@example.test", "a@example.test", "s", "body"))
        .await
        .unwrap();
    let got = sink.messages();
    assert_eq!(got[0].rcpt_to, ["a@example.test"]);
    assert!(got[0].data.is_empty());
}
