//! Subscriber pages: headless Chromium.

use super::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// What the browser saw, collected before the session closes.
struct Seen {
    ticked_before: bool,
    ticked_after: bool,
    notice: String,
    url_after: String,
}

async fn drive_preferences(driver: &str, page: &str, profile: &Path) -> Result<Seen, String> {
    use fantoccini::{ClientBuilder, Locator};
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    // Plain HTTP to chromedriver on loopback: no TLS connector needed.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(driver)
        .await
        .map_err(|e| format!("start a Chromium session: {e}"))?;
    let steps = async {
        client.goto(page).await?;
        let news = client.find(Locator::Css("#list-news")).await?;
        let ticked_before = news.is_selected().await?;
        news.click().await?;
        client
            .find(Locator::Css("button[value=save]"))
            .await?
            .click()
            .await?;
        let notice = client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(".notice"))
            .await?
            .text()
            .await?;
        let ticked_after = client
            .find(Locator::Css("#list-news"))
            .await?
            .is_selected()
            .await?;
        let url_after = client.current_url().await?.to_string();
        Ok::<_, fantoccini::error::CmdError>(Seen {
            ticked_before,
            ticked_after,
            notice,
            url_after,
        })
    };
    let seen = steps.await.map_err(|e| e.to_string());
    // Always end the session, so no Chromium outlives the test.
    let closed = client.close().await;
    let seen = seen?;
    closed.map_err(|e| format!("close the session: {e}"))?;
    Ok(seen)
}

/// Waits until something accepts connections on `port` (up to 30 s).
async fn wait_for_port(port: u16) -> bool {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_unticks_a_list_on_the_preference_page() {
    let required = std::env::var("BULLETIN_BROWSER").is_ok_and(|v| v == "1");
    if !required && !Path::new(CHROMEDRIVER).exists() {
        eprintln!(
            "note: browser test skipped: {CHROMEDRIVER} not found (apt-get install chromium \
             chromium-driver; BULLETIN_BROWSER=1 makes this a failure)"
        );
        return;
    }
    for bin in [CHROMEDRIVER, CHROMIUM] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: apt-get install chromium chromium-driver"
        );
    }
    let site = Site::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(web::serve(listener, site.state.clone(), async {
        let _ = stopped.await;
    }));

    let port = free_port();
    let driver = Child(
        std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                site.dir.path().join("chromedriver.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    assert!(wait_for_port(port).await, "chromedriver did not listen");
    let page = format!("http://{addr}{}", site.preferences_path(site.ann));
    let profile = site.dir.path().join("chromium-profile");
    let seen = drive_preferences(&format!("http://127.0.0.1:{port}"), &page, &profile).await;
    drop(driver);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let seen = seen.unwrap_or_else(|e| {
        panic!(
            "{e}\nchromedriver log:\n{}",
            std::fs::read_to_string(site.dir.path().join("chromedriver.log")).unwrap_or_default()
        )
    });

    assert!(seen.ticked_before, "news was ticked");
    assert!(!seen.ticked_after, "and is unticked after saving");
    assert_eq!(seen.notice, "Your choices are saved.");
    assert_eq!(seen.url_after, format!("{page}?saved=1"));
    // What the browser did is stored.
    assert_eq!(
        site.subscription(site.ann, &site.news).await.as_deref(),
        Some("unsubscribed")
    );
    assert_eq!(
        site.subscription(site.ann, &site.staff).await.as_deref(),
        Some("confirmed")
    );
    let person = site
        .store
        .subscriber_by_id(site.ann)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(person.name, "Ann");
    assert_eq!(site.audience(&site.news).await, 1);
}
