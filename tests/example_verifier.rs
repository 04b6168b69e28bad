//! examples/verify_assertion.rs, the upstream app that verifies stepgate's
//! signed assertion: its core (`verify`) in-process against assertions made
//! by stepgate's own signer, and the built example end to end behind a real
//! gateway, including a key rotation it must follow by fetching the JWKS
//! again.
//!
//! The end-to-end test runs target/debug/examples/verify_assertion, which
//! `cargo test` (without `--test`) and `scripts/test.sh` build; run alone,
//! build it first with `cargo build --example verify_assertion`.

mod common;
use common::*;

#[path = "../examples/verify_assertion.rs"]
#[allow(dead_code)]
mod verify_assertion;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use reqwest::blocking::Client;
use serde_json::{json, Value};
use stepgate::auth::assertion::{Claims, Signer};
use verify_assertion::{describe, verify, Expect, Refusal};

const PIN: &str = "2580";

fn claims<'a>(method: &'a str, path: &'a str) -> Claims<'a> {
    Claims {
        sub: "alice",
        email: Some("alice@example.com"),
        amr: vec!["pin"],
        acr: "urn:stepgate:acr:step-up",
        auth_time: Some(verify_assertion::now() - 12),
        rule: "admin",
        ff: "jwt",
        method,
        path,
        txn: None,
        session: "sid:1",
    }
}

fn expect() -> Expect {
    Expect {
        audience: "http://app.test".into(),
        issuer: "stepgate".into(),
    }
}

fn signer(dir: &Path, name: &str) -> Signer {
    Signer::new(
        &dir.join(name),
        None,
        "stepgate".into(),
        "http://app.test".into(),
    )
    .unwrap()
}

fn jwks(s: &Signer) -> JwkSet {
    serde_json::from_value(s.jwks()).unwrap()
}

fn invalid(r: Result<verify_assertion::Assertion, Refusal>) -> String {
    match r {
        Err(Refusal::Invalid(e)) => e,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn the_core_accepts_gateway_assertions_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = signer(dir.path(), "k.pem");
    let keys = jwks(&s);
    let now = verify_assertion::now();
    let t = s.sign_fresh(&claims("GET", "/admin/x"), now);

    let a = verify(&t, &keys, &expect(), "GET", "/admin/x").expect("accepted");
    assert_eq!((a.sub.as_str(), a.rule.as_str()), ("alice", "admin"));
    assert_eq!(a.amr, vec!["pin".to_string()]);
    let shown = describe(&a, now);
    assert_eq!(shown["user"], "alice");
    assert_eq!(shown["amr"], json!(["pin"]));
    assert_eq!(shown["fresh_secs"], 12);
    assert_eq!(shown["summary"], "alice confirmed with pin 12 s ago");

    // Made for another request: another method or path.
    assert_eq!(
        verify(&t, &keys, &expect(), "POST", "/admin/x").unwrap_err(),
        Refusal::OtherRequest
    );
    assert_eq!(
        verify(&t, &keys, &expect(), "GET", "/admin/y").unwrap_err(),
        Refusal::OtherRequest
    );
    // Expired (assertions live 30 s; 5 s leeway).
    let old = s.sign_fresh(&claims("GET", "/admin/x"), now - 40);
    assert!(invalid(verify(&old, &keys, &expect(), "GET", "/admin/x")).contains("Expired"));
    // For another app, from another issuer.
    let other_aud = Expect {
        audience: "http://other.test".into(),
        issuer: "stepgate".into(),
    };
    assert!(invalid(verify(&t, &keys, &other_aud, "GET", "/admin/x")).contains("Audience"));
    let other_iss = Expect {
        audience: "http://app.test".into(),
        issuer: "https://evil.test".into(),
    };
    assert!(invalid(verify(&t, &keys, &other_iss, "GET", "/admin/x")).contains("Issuer"));
    // Signed by a key the JWKS does not have: the app should refetch.
    let stranger = signer(dir.path(), "other.pem");
    let t2 = stranger.sign_fresh(&claims("GET", "/admin/x"), now);
    assert!(matches!(
        verify(&t2, &keys, &expect(), "GET", "/admin/x"),
        Err(Refusal::UnknownKey(_))
    ));
    // A changed claim under the original signature.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = t.split('.').collect();
    let mut body: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    body["sub"] = "mallory".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(serde_json::to_vec(&body).unwrap()),
        parts[2]
    );
    assert!(invalid(verify(&forged, &keys, &expect(), "GET", "/admin/x")).contains("Signature"));
    // HS256 with the real kid (key confusion), and a JWT that is not an assertion.
    let kid = keys.keys[0].common.key_id.clone().unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(kid.clone());
    h.typ = Some("stepgate-assertion+jwt".into());
    let full = json!({"sub": "alice", "aud": "http://app.test", "iss": "stepgate", "iat": now, "exp": now + 30, "jti": "x", "amr": ["pin"], "acr": "a", "rule": "admin", "method": "GET", "path": "/admin/x"});
    let hs =
        jsonwebtoken::encode(&h, &full, &jsonwebtoken::EncodingKey::from_secret(b"guess")).unwrap();
    assert!(invalid(verify(&hs, &keys, &expect(), "GET", "/admin/x")).contains("algorithm"));
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(kid);
    let pem = std::fs::read(dir.path().join("k.pem")).unwrap();
    let plain = jsonwebtoken::encode(
        &h,
        &full,
        &jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
    )
    .unwrap();
    assert!(invalid(verify(&plain, &keys, &expect(), "GET", "/admin/x")).contains("typ"));
}

// ---------------------------------------------------------------------------
// The built example behind a real gateway
// ---------------------------------------------------------------------------

/// target/debug/examples/verify_assertion, built from the current source.
fn example_binary() -> PathBuf {
    let bin = Path::new(BIN)
        .parent()
        .unwrap()
        .join("examples/verify_assertion");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/verify_assertion.rs");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is not built: run `cargo build --example verify_assertion` \
                 (or `cargo test` / scripts/test.sh, which build examples)",
                bin.display()
            )
        });
    let changed = std::fs::metadata(&source).unwrap().modified().unwrap();
    assert!(
        built >= changed,
        "{} is older than its source: run `cargo build --example verify_assertion`",
        bin.display()
    );
    bin
}

/// Point the gateway's `upstream:` at `port` and add `extra` config; restart.
fn reconfigure(g: &mut Gateway, port: u16, extra: &str) {
    let text = std::fs::read_to_string(&g.config).unwrap();
    let mut out: String = text
        .lines()
        .map(|l| {
            if l.starts_with("upstream:") {
                format!("upstream: \"http://127.0.0.1:{port}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out.push_str(extra);
    std::fs::write(&g.config, out).unwrap();
    g.stop();
    g.launch();
}

fn get(c: &Client, url: &str, at: &str, su: Option<&str>) -> (u16, Value) {
    let mut rb = c.get(url).header("Authorization", format!("Bearer {at}"));
    if let Some(su) = su {
        rb = rb.header("X-Stepgate-Token", su);
    }
    let r = rb.send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("JSON from the app ({status}): {e}: {text}"));
    (status, body)
}

fn step_up(g: &Gateway, c: &Client, at: &str) -> String {
    let cookie = format!("access_token={at}");
    let page = c
        .get(g.url("/.stepgate/pin/setup"))
        .header("Cookie", &cookie)
        .header("Accept", "text/html")
        .send()
        .unwrap();
    let csrf = csrf_of(&page.text().unwrap());
    let r = c
        .post(g.url("/.stepgate/pin/setup"))
        .header("Cookie", &cookie)
        .form(&[("pin", PIN), ("pin_confirm", PIN), ("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = c
        .put(g.url("/.stepgate/api/stepup/pin"))
        .header("Authorization", format!("Bearer {at}"))
        .json(&json!({"PIN": PIN}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().unwrap()["SecondFactorValidationToken"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_example_app_verifies_what_the_gateway_forwards() {
    let bin = example_binary();
    let mut g = Gateway::start();
    let port = free_port();
    let app = spawn(
        Command::new(&bin)
            .arg(g.url(""))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--refetch-interval", "1"]),
        g.dir.path().join("verify_assertion.log"),
    );
    wait_for_port(port, Duration::from_secs(15));
    // The gateway now forwards to the example (the default audience is
    // its URL, the default issuer `stepgate`: the example's defaults).
    reconfigure(&mut g, port, "");
    let c = client();
    let at = g.token("alice", &["--email", "alice@example.com"]);

    let (st, body) = get(&c, &g.url("/app/page?x=1"), &at, None);
    assert_eq!(st, 200, "signed in: {body}\n{}", app.log_text());
    assert_eq!(body["user"], "alice");
    assert_eq!(body["email"], "alice@example.com");
    assert_eq!(body["amr"], json!([]));
    assert_eq!(body["rule"], "default");
    assert!(body["summary"]
        .as_str()
        .unwrap()
        .starts_with("alice signed in (no step-up)"));

    let su = step_up(&g, &c, &at);
    let (st, body) = get(&c, &g.url("/admin/x"), &at, Some(&su));
    assert_eq!(st, 200, "stepped up: {body}");
    assert_eq!(body["amr"], json!(["pin"]));
    assert_eq!(body["rule"], "admin");
    let fresh = body["fresh_secs"].as_i64().unwrap();
    assert!((0..=60).contains(&fresh), "stepped up just now: {fresh}");

    // Straight to the app, around the gateway: refused.
    let direct = format!("http://127.0.0.1:{port}/admin/x");
    let r = c
        .get(&direct)
        .header("X-Stepgate-User", "alice")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(&direct)
        .header("X-Stepgate-Assertion", "e30.e30.e30")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    // The gateway rotates its key: the app fetches the JWKS again.
    let new_key = g.dir.path().join("new-key.pem");
    reconfigure(
        &mut g,
        port,
        &format!("assertion:\n  key_file: \"{}\"\n", new_key.display()),
    );
    let start = Instant::now();
    loop {
        let (st, body) = get(&c, &g.url("/app/after-rotation"), &at, None);
        if st == 200 {
            assert_eq!(body["user"], "alice");
            break;
        }
        assert!(
            body["error"].as_str().unwrap_or("").contains("unknown key"),
            "only the new key is unknown for a moment: {body}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the app never picked up the new key: {body}\n{}",
            app.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(app);
}
