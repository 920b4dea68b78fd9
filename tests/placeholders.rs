//! Placeholders and images checked against reality, through the real binary
//! against the in-process SMTP sink: a placeholder no subscriber of the list
//! has fails `build` and `send` with "did you mean"; `{{subscriber.first_name}}`
//! from an imported `First Name` column reaches each inbox; `send` says how
//! many lack a value; a misspelt list gets "did you mean" in front matter and
//! in `--list`.

use crate::dispatch::{Env, unfold};
use crate::support::pg;
use crate::support::smtp_sink::{Behaviour, Received, SmtpSink};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A project folder (`dispatch::Env`) whose database is of the engine
/// under test (`support::pg`).
fn env(port: u16) -> Env {
    let env = Env::new(port, "");
    pg::config_db(env.dir.path());
    env
}

/// The body of a received message, quoted-printable soft breaks undone.
fn body(m: &Received) -> String {
    unfold(&m.data).replace("=\r\n", "").replace("=3D", "=")
}

/// Writes `campaigns/NAME` with front matter for list `list`, then `body`
/// (which starts at line 6).
fn campaign(env: &Env, name: &str, list: &str, body: &str) -> String {
    let path = format!("campaigns/{name}");
    std::fs::write(
        env.dir.path().join(&path),
        format!("+++\nsubject = \"Hello\"\npreheader = \"p\"\nlist = \"{list}\"\n+++\n{body}"),
    )
    .unwrap();
    path
}

/// Imports `csv` into list `news` (created by the import).
async fn import(env: &Env, csv: &str) {
    std::fs::write(env.dir.path().join("people.csv"), csv).unwrap();
    env.ok(&["subscribers", "import", "people.csv", "--list", "news"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_placeholder_fails_build_and_send_with_did_you_mean() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = env(sink.port());
    let file = campaign(
        &env,
        "typo.md",
        "news",
        "Dear {{subscriber.nmae}},\n\nNews.\n",
    );

    // No database file yet: built, with a note that nothing was checked.
    // (About SQLite: a PostgreSQL database the test names always exists.)
    if pg::engine() == pg::Engine::Sqlite {
        let out = env.run(&["build", &file, "--out", "out"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("placeholders not checked against the subscribers of list news"),
            "{}",
            stderr(&out)
        );
    }

    import(&env, "email,name,city\nann@example.net,Ann,Lima\n").await;
    let expected = "campaigns/typo.md:6: {{subscriber.nmae}}: no subscriber of list news has a \
                    `nmae` value; did you mean `name`?";
    for args in [
        vec!["build", &file, "--out", "out"],
        vec!["send", &file, "--yes"],
    ] {
        let out = env.run(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(sink.messages().is_empty(), "nothing sent");
    let status = env.ok(&["status"]).await;
    assert!(!status.contains("typo"), "nothing frozen: {status}");

    // A fallback makes it safe: everyone reads the fallback.
    campaign(
        &env,
        "typo.md",
        "news",
        "Dear {{subscriber.nmae | \"friend\"}},\n\nNews.\n",
    );
    env.ok(&["send", &file, "--yes"]).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert!(body(&messages[0]).contains("Dear friend,"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_name_from_a_first_name_column_reaches_each_inbox_and_send_counts_the_missing() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = env(sink.port());
    import(
        &env,
        "Email,First Name,Last Name\n\
         ana@example.net,Ana,Silva\n\
         bo@example.net,Bo,Berg\n\
         cy@example.net,,Chen\n",
    )
    .await;
    let file = campaign(
        &env,
        "first.md",
        "news",
        "Dear {{subscriber.first_name}} ({{subscriber.name}}),\n\nNews.\n",
    );
    env.ok(&["build", &file, "--out", "out"]).await;

    // Without --yes and without a terminal: refused, nothing sent.
    let out = env.run(&["send", &file]).await;
    assert_ne!(out.status.code(), Some(0));
    assert!(sink.messages().is_empty());

    let out = env.run(&["send", &file, "--yes"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "bulletin: note: 1 of 3 has no first_name; they will read an empty value — add a \
             fallback: {{subscriber.first_name | \"friend\"}}"
        ),
        "{err}"
    );
    assert!(!err.contains("have no name"), "everyone has a name: {err}");
    let mut got: Vec<(String, String)> = sink
        .messages()
        .iter()
        .map(|m| {
            let mail = body(m);
            let (text, html) = mail.split_once("text/html").expect("an HTML part");
            let greeting = |part: &str, end: char| -> String {
                let at = part.find("Dear ").expect("greeting");
                part[at..].chars().take_while(|&c| c != end).collect()
            };
            let line = greeting(text, '\r');
            assert_eq!(greeting(html, '<'), line, "HTML and text agree");
            (m.rcpt_to[0].clone(), line)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("ana@example.net".into(), "Dear Ana (Ana Silva),".into()),
            ("bo@example.net".into(), "Dear Bo (Bo Berg),".into()),
            ("cy@example.net".into(), "Dear  (Chen),".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_list_gets_did_you_mean_in_front_matter_and_flags() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = env(sink.port());
    env.ok(&["lists", "add", "ebulletin", "--name", "E-bulletin"])
        .await;
    env.ok(&[
        "subscribers",
        "add",
        "ana@example.net",
        "--list",
        "ebulletin",
    ])
    .await;
    let file = campaign(&env, "news.md", "ebuletin", "Hello.\n");
    let suggestion =
        "no list \"ebuletin\"; did you mean \"ebulletin\"? (`bulletin lists` shows all)";
    for args in [
        vec!["send", &file, "--yes"],
        vec!["build", &file, "--out", "out"],
    ] {
        let out = env.run(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("campaigns/news.md:4: {suggestion}")),
            "{args:?}: {err}"
        );
    }
    std::fs::write(env.dir.path().join("p.csv"), "email\nbo@example.net\n").unwrap();
    for args in [
        ["subscribers", "add", "bo@example.net", "--list", "ebuletin"].as_slice(),
        &["subscribers", "import", "p.csv", "--list", "ebuletin"],
        &[
            "subscribers",
            "remove",
            "ana@example.net",
            "--list",
            "ebuletin",
        ],
        &["lists", "edit", "ebuletin", "--name", "X"],
        &["lists", "rename", "ebuletin", "x"],
        &["lists", "remove", "ebuletin"],
    ] {
        let out = env.run(args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(suggestion),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Nothing was created under the misspelt name, nobody was mailed.
    let lists = env.ok(&["lists"]).await;
    assert!(!lists.contains("ebuletin "), "{lists}");
    assert!(sink.messages().is_empty());
    // A name near nothing still says how to see the lists.
    let out = env
        .run(&["subscribers", "add", "bo@example.net", "--list", "partners"])
        .await;
    assert!(
        stderr(&out).contains("no list \"partners\" (`bulletin lists` shows all"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_image_fails_until_assets_url_makes_it_absolute() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = env(sink.port());
    import(&env, "email,name\nana@example.net,Ana\n").await;
    let file = campaign(
        &env,
        "img.md",
        "news",
        "# News\n\n## Forum\n\n![The forum](images/forum.jpg)\n\nRead [the report](files/report.pdf), \
         [write to us](mailto:info@example.org) or go [to the top](#top).\n",
    );
    let config = env.dir.path().join("bulletin.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    for args in [
        vec!["build", &file, "--out", "out"],
        vec!["send", &file, "--yes"],
    ] {
        let out = env.run(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains(
                "campaigns/img.md:10: image URL \"images/forum.jpg\" is relative and would be \
                 broken in every inbox; set assets_url in bulletin.toml"
            ),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // A relative logo in the configuration is named as such.
    std::fs::write(
        &config,
        original.replace(
            "[organisation]\n",
            "[organisation]\nlogo_url = \"logo.png\"\n",
        ),
    )
    .unwrap();
    campaign(&env, "img.md", "news", "Hello.\n");
    let out = env.run(&["send", &file, "--yes"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "image URL \"logo.png\" (logo_url in [organisation] of the configuration) is relative"
        ),
        "{}",
        stderr(&out)
    );
    assert!(sink.messages().is_empty(), "nothing sent");

    // An assets_url that is not an absolute URL is refused, naming it.
    let with_assets = |assets: &str| {
        original
            .replace(
                "base_url = ",
                &format!("assets_url = \"{assets}\"\nbase_url = "),
            )
            .replace(
                "[organisation]\n",
                "[organisation]\nlogo_url = \"logo.png\"\n",
            )
    };
    std::fs::write(&config, with_assets("cdn.example.org/news")).unwrap();
    let out = env.run(&["send", &file, "--yes"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("assets_url \"cdn.example.org/news\" (set by assets_url in bulletin.toml)"),
        "{}",
        stderr(&out)
    );

    std::fs::write(&config, with_assets("https://cdn.example.org/news")).unwrap();
    campaign(
        &env,
        "img.md",
        "news",
        "# News\n\n## Forum\n\n![The forum](images/forum.jpg)\n\nRead [the report](files/report.pdf), \
         [write to us](mailto:info@example.org) or go [to the top](#top).\n",
    );
    env.ok(&["send", &file, "--yes"]).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let mail = body(&messages[0]);
    let (text, html) = mail.split_once("text/html").unwrap();
    for absolute in [
        "src=\"https://cdn.example.org/news/images/forum.jpg\"",
        "src=\"https://cdn.example.org/news/logo.png\"",
        "href=\"https://cdn.example.org/news/files/report.pdf\"",
        "href=\"mailto:info@example.org\"",
        "href=\"#top\"",
    ] {
        assert!(html.contains(absolute), "{absolute}: {html}");
    }
    assert!(!html.contains("\"images/forum.jpg\""), "{html}");
    assert!(
        text.contains("https://cdn.example.org/news/files/report.pdf"),
        "the text part's links too: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_fills_attributes_too_and_is_checked_like_the_campaign() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = env(sink.port());
    import(&env, "Email,First Name\nana@example.net,Ana\n").await;
    let header = env.dir.path().join("templates/partials/header.mjml");
    std::fs::create_dir_all(header.parent().unwrap()).unwrap();
    let write_header = |key: &str| {
        std::fs::write(
            &header,
            format!(
                "<mj-section><mj-column><mj-text>Hi {{{{subscriber.{key}}}}}!</mj-text>\
                 </mj-column></mj-section>\n"
            ),
        )
        .unwrap()
    };
    let file = campaign(&env, "layout.md", "news", "News.\n");
    write_header("frist_name");
    let out = env.run(&["send", &file, "--yes"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "templates/ebulletin.mjml:1: {{subscriber.frist_name}}: no subscriber of list news \
             has a `frist_name` value; did you mean `first_name`?"
        ),
        "{}",
        stderr(&out)
    );
    write_header("first_name");
    env.ok(&["send", &file, "--yes"]).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert!(
        body(&messages[0]).contains("Hi Ana!"),
        "{}",
        body(&messages[0])
    );
}

/// `send --only-new` says, before it asks, how many of the people it would
/// mail (the newcomers, not the whole list) have no value for a
/// placeholder without a fallback, as a plain send and `--again` do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_new_and_again_count_the_missing_values_of_whom_they_mail() {
    let sink = SmtpSink::start(Behaviour::new());
    let env = env(sink.port());
    import(
        &env,
        "email,name,country\nana@example.net,Ana,Peru\nbo@example.net,Bo,\n",
    )
    .await;
    let file = campaign(
        &env,
        "country.md",
        "news",
        "Hello from {{subscriber.country}}.\n",
    );
    let out = env.run(&["send", &file, "--yes"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("bulletin: note: 1 of 2 has no country;"),
        "{}",
        stderr(&out)
    );
    // A newcomer without a country: of the one --only-new mails, one lacks it.
    std::fs::write(
        env.dir.path().join("new.csv"),
        "email,name\ncy@example.net,Cy\n",
    )
    .unwrap();
    env.ok(&["subscribers", "import", "new.csv", "--list", "news"])
        .await;
    let out = env.run(&["send", &file, "--only-new", "--yes"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "bulletin: note: 1 of 1 has no country; they will read an empty value — add a \
             fallback: {{subscriber.country | \"...\"}}"
        ),
        "{err}"
    );
    assert_eq!(err.matches("no country").count(), 1, "{err}");
    assert_eq!(sink.messages().len(), 3);
    assert_eq!(sink.messages()[2].rcpt_to, ["cy@example.net"]);
    // --again mails all three again; two of them lack a country.
    let out = env.run(&["send", &file, "--again", "--yes"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("bulletin: note: 2 of 3 have no country;"),
        "{}",
        stderr(&out)
    );
}

/// The store's side of the placeholder checks, on the engine under test:
/// the keys a list's people have (of that list only, or of several lists),
/// who lacks each value (absent, null or blank; `name` is the name column),
/// and the audience of several lists, each person once.
#[tokio::test]
async fn keys_missing_values_and_audience_of_several_lists_on_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = pg::store_named(dir.path(), "k.db").await;
    let raw = crate::support::db::raw(store.location()).await;
    let news = store
        .create_list("news", "News", "", false, true, 1)
        .await
        .unwrap();
    let other = store
        .create_list("other", "Other", "", false, true, 1)
        .await
        .unwrap();
    let people = [
        (
            "ann@example.org",
            Some("Ann"),
            r#"{"first_name":"Ann","city":"Lima"}"#,
            "news",
        ),
        (
            "bo@example.org",
            None,
            r#"{"first_name":"  ","n":0}"#,
            "news",
        ),
        (
            "cy@example.org",
            Some("Cy"),
            r#"{"first_name":null}"#,
            "news",
        ),
        (
            "di@example.org",
            Some("Di"),
            r#"{"postcode":"X1"}"#,
            "other",
        ),
    ];
    for (email, name, attributes, list) in people {
        store
            .add_subscriber(email, name, list, "cli", 1)
            .await
            .unwrap();
        sqlx::query("UPDATE subscribers SET attributes = $1 WHERE email = $2")
            .bind(attributes)
            .bind(email)
            .execute(&raw)
            .await
            .unwrap();
    }
    assert_eq!(
        store.list_keys(&[news.id]).await.unwrap(),
        ["city", "first_name", "n"]
    );
    assert_eq!(store.list_keys(&[other.id]).await.unwrap(), ["postcode"]);
    assert_eq!(
        store.list_keys(&[news.id, other.id]).await.unwrap(),
        ["city", "first_name", "n", "postcode"],
        "a campaign to several lists can use the keys of any of them"
    );
    let keys: Vec<String> = ["city", "first_name", "n", "name", "zip"]
        .map(String::from)
        .to_vec();
    let missing = store.missing_values(&[news.id], &keys).await.unwrap();
    let expect: Vec<(String, i64)> = [
        ("city", 2),
        ("first_name", 2),
        ("n", 2),
        ("name", 1),
        ("zip", 3),
    ]
    .map(|(k, n)| (k.to_string(), n))
    .to_vec();
    assert_eq!(missing, expect);
    // Ann joins the second list too: its keys are now hers as well, and the
    // audience of both lists counts her once.
    store
        .add_subscriber("ann@example.org", None, "other", "cli", 1)
        .await
        .unwrap();
    assert_eq!(
        store.list_keys(&[other.id]).await.unwrap(),
        ["city", "first_name", "postcode"]
    );
    let both = store.audience_of_lists(&[news.id, other.id]).await.unwrap();
    assert_eq!((both.people, both.on_several), (4, 1), "ann once");
    assert_eq!(store.audience_count(other.id).await.unwrap(), 2);
    store.close().await;
}
