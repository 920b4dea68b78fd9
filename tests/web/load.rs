//! Subscriber pages: a server that sheds load. Slow clients against the
//! real `bulletin serve` (header timeout, connection limit), a database
//! held locked by another connection (503 with Retry-After, then the
//! retried unsubscribe applied), and `X-Forwarded-For` over several lines.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or resets it); what it
/// sent first. Gives up after 60 s, so a server that never closes fails the
/// test instead of hanging it.
async fn until_closed(mut s: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the server closed the slow connection");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_healthz_keeps_answering() {
    let sink = SmtpSink::start(Behaviour::new());
    let (env, _) = env_on_engine(sink.port()).await;
    let config = env.dir.path().join("bulletin.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "[serve]\nheader_timeout_secs = 4\nidle_timeout_secs = 30\nmax_connections = 220\n",
    );
    std::fs::write(&config, text).unwrap();
    // `serve` never creates the database.
    env.ok(&["init"]).await;
    let server = Served::start(&env).await;
    let addr = server.addr.clone();

    // 200 clients that send half a request head and then nothing.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let r = http(&addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "ok\n"),
        "{}",
        server.log()
    );

    // Over the limit: turned away at once with a 503 and Retry-After.
    let mut over = Vec::new();
    for _ in 0..40 {
        over.push(TcpStream::connect(&addr).await.unwrap());
    }
    let mut shed = 0;
    let mut kept = Vec::new();
    for s in over {
        let mut peek = [0u8; 1];
        let answered = tokio::time::timeout(Duration::from_millis(500), s.peek(&mut peek)).await;
        if matches!(answered, Ok(Ok(n)) if n > 0) {
            let answer = String::from_utf8_lossy(&until_closed(s).await).into_owned();
            assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
            assert!(answer.contains("Retry-After: 5\r\n"), "{answer}");
            shed += 1;
        } else {
            kept.push(s);
        }
    }
    assert!((20..=40).contains(&shed), "{shed} of 40 turned away");

    // The slow ones are closed by the server once their time is up, and
    // none of them got an answer to a request it never finished.
    let closed = futures_util::future::join_all(slow.into_iter().map(until_closed)).await;
    for got in &closed {
        let got = String::from_utf8_lossy(got);
        assert!(!got.contains("200 OK"), "{got}");
    }
    futures_util::future::join_all(kept.into_iter().map(until_closed)).await;
    let r = http(&addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200);

    // A keep-alive connection left idle after its answer is closed too.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&until_closed(idle).await).into_owned();
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_answers_503_and_the_retried_unsubscribe_is_applied() {
    let site = Site::new().await;
    // The pages on their own connections, with a short busy timeout.
    let store = Store::open_with(site.store.location(), Duration::from_millis(300))
        .await
        .unwrap();
    let state = app_state(store, site.signer.clone(), None);
    let app = web::router(state);
    let path = site.unsubscribe_path(site.ann, &site.news);
    let one_click = || {
        request(
            "POST",
            &path,
            Some(FORM),
            b"List-Unsubscribe=One-Click".to_vec(),
        )
    };

    let lock = hold_write_lock(site.store.location()).await;
    let r = call(&app, one_click()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.header(header::RETRY_AFTER), "5");
    assert!(r.body.contains("nothing was changed"), "{}", r.body);
    assert_security_headers("503", &r);
    lock.rollback().await.unwrap();
    assert_eq!(
        site.subscription(site.ann, &site.news).await.as_deref(),
        Some("confirmed"),
        "not applied while locked"
    );

    // The mail client tries again, as RFC 8058 clients do on 503.
    let r = call(&app, one_click()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        site.subscription(site.ann, &site.news).await.as_deref(),
        Some("unsubscribed")
    );
}

#[tokio::test]
async fn x_forwarded_for_is_read_from_the_proxy_s_last_line() {
    let site = Site::new().await;
    // From the local proxy: the client forged a first line, the proxy
    // added the second.
    let from = |lines: &[&str], email: &str| {
        let mut r = request(
            "POST",
            "/subscribe",
            Some(FORM),
            encode(&[("email", email), ("list", "news")]).into(),
        );
        r.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        for line in lines {
            r.headers_mut()
                .append("x-forwarded-for", line.parse().unwrap());
        }
        r
    };
    for i in 0..10 {
        let forged = format!("203.0.113.{i}");
        let r = call(
            &site.app,
            from(&[&forged, "198.51.100.7"], &format!("p{i}@example.net")),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
        site.state.drain().await; // counted after the answer
    }
    // A new forged first line does not make a new client.
    let r = call(
        &site.app,
        from(&["203.0.113.99", "198.51.100.7"], "late@example.net"),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // The same first line with another proxy-added address is another
    // client.
    let r = call(
        &site.app,
        from(&["198.51.100.7", "198.51.100.8"], "other@example.net"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    site.state.drain().await;
}
