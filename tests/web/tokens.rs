//! Subscriber pages: bad tokens.

use super::*;

/// Every kind of token that must not work on a route taking `purpose`
/// tokens for (ann, `list`): (what it is, path segment).
fn bad_tokens(site: &Site, purpose: Purpose, list: i64) -> Vec<(String, String)> {
    let good = site.token(purpose, site.ann, list);
    let alphabet = "abcdefghijklmnopqrstuvwxyz234567";
    // Changes the value of the character at `i` in its high bit, which is
    // always signed data (the low bits of the last one may be padding).
    let tamper = |i: usize| {
        let mut chars: Vec<char> = good.chars().collect();
        let v = alphabet.find(chars[i]).unwrap() ^ 16;
        chars[i] = alphabet.as_bytes()[v] as char;
        chars.into_iter().collect::<String>()
    };
    let mut out = vec![
        ("tampered first character".into(), tamper(0)),
        ("tampered middle character".into(), tamper(good.len() / 2)),
        ("tampered last character".into(), tamper(good.len() - 1)),
        (
            "truncated by one".into(),
            good[..good.len() - 1].to_string(),
        ),
        (
            "truncated by half".into(),
            good[..good.len() / 2].to_string(),
        ),
        ("token twice".into(), format!("{good}{good}")),
        (
            "signed with another secret".into(),
            sign_as(
                &Signer::new(b"another secret", &[]),
                purpose,
                site.ann,
                list,
            ),
        ),
        ("unknown person".into(), site.token(purpose, 999_999, list)),
        ("erased person".into(), site.token(purpose, site.eve, list)),
        ("garbage".into(), "garbage".into()),
        ("digits".into(), "0".into()),
        ("not base32".into(), "abc!def".into()),
        ("NUL".into(), "%00".into()),
        ("path traversal".into(), "..%2F..%2Fhealthz".into()),
        ("non-ASCII".into(), "%C3%A9t%C3%A9".into()),
        ("invalid UTF-8".into(), "%FF%FE".into()),
        ("very long".into(), "a".repeat(4000)),
    ];
    if list != 0 {
        out.push(("other list".into(), site.token(purpose, site.ann, 999)));
    }
    for (p, b) in [
        (Purpose::Unsubscribe, site.news.id),
        (Purpose::Preferences, 0),
        (Purpose::Confirm, site.news.id),
        (Purpose::Bounce, 0),
        (Purpose::Csrf, 0),
    ] {
        if p != purpose {
            out.push((format!("{p:?} token"), site.token(p, site.ann, b)));
        }
    }
    out
}

#[tokio::test]
async fn every_bad_token_gets_the_same_404_and_changes_nothing() {
    let site = Site::new().await;
    let not_found = site.not_found_page().await;
    let before = site.dump().await;
    let csrf = site.csrf(site.ann);
    let leave = encode(&[("csrf", &csrf), ("action", "leave"), ("name", "Mallory")]);
    let erase = encode(&[("csrf", &csrf)]);
    // (method, path with {} for the token, form body) per purpose, with
    // valid bodies: only the token is wrong.
    let unsubscribe = [
        ("GET", "/unsubscribe/{}", None),
        (
            "POST",
            "/unsubscribe/{}",
            Some("List-Unsubscribe=One-Click"),
        ),
    ];
    let preferences = [
        ("GET", "/preferences/{}", None),
        ("POST", "/preferences/{}", Some(leave.as_str())),
        ("GET", "/preferences/{}/data", None),
        ("GET", "/preferences/{}/erase", None),
        ("POST", "/preferences/{}/erase", Some(erase.as_str())),
    ];
    let confirm = [
        ("GET", "/confirm/{}", None),
        ("POST", "/confirm/{}", Some("")),
    ];
    let routes = [
        (Purpose::Unsubscribe, site.news.id, &unsubscribe[..]),
        (Purpose::Preferences, 0, &preferences[..]),
        (Purpose::Confirm, site.events.id, &confirm[..]),
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for (purpose, list, requests) in routes {
        for (what, token) in bad_tokens(&site, purpose, list) {
            for &(method, template, body) in requests {
                let path = template.replace("{}", &token);
                let r = call(
                    &site.app,
                    request(
                        method,
                        &path,
                        body.map(|_| FORM),
                        body.map(|b| b.as_bytes().to_vec()).unwrap_or_default(),
                    ),
                )
                .await;
                checked += 1;
                if r.status != StatusCode::NOT_FOUND || r.body != not_found {
                    failures.push(format!("{what}: {method} {template} -> {}", r.status));
                }
                assert_security_headers(&what, &r);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 150, "{checked}");
    assert_eq!(site.dump().await, before, "a bad token changed something");
    assert!(site.mails(0).await.is_empty());

    // The same tokens, spelled right, do work (case folded by mail servers too).
    let good = site.token(Purpose::Preferences, site.ann, 0);
    assert_eq!(site.get(&format!("/preferences/{good}")).await.status, 200);
    let upper = good.to_ascii_uppercase();
    assert_eq!(site.get(&format!("/preferences/{upper}")).await.status, 200);
}
