//! The test OpenID provider itself (tests/fixtures/oidc, driven through
//! tests/common/oidc.rs): discovery, minted tokens and RFC 7662
//! introspection, the authorization code flow with PKCE as a browser without
//! JavaScript would run it, prompt=login and max_age, RP-initiated logout,
//! and the request counts. A guard for the fixture the OIDC tests rely on.

mod common;

use std::time::Duration;

use common::oidc::{jwt_claims, pkce_pair, Provider};

fn browser() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn location(r: &reqwest::blocking::Response) -> String {
    common::header(r, "location")
}

fn query_param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

struct Rp {
    redirect_uri: String,
    verifier: String,
}

/// GET the authorization endpoint with PKCE; the answer (not followed).
fn authorize(
    p: &Provider,
    b: &reqwest::blocking::Client,
    redirect_uri: &str,
    extra: &[(&str, &str)],
) -> (reqwest::blocking::Response, Rp) {
    let (verifier, challenge) = pkce_pair();
    let mut q = vec![
        ("client_id", p.client_id.as_str()),
        ("response_type", "code"),
        ("scope", "openid email profile"),
        ("redirect_uri", redirect_uri),
        ("state", "st-1"),
        ("nonce", "n-1"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    q.retain(|(k, _)| extra.iter().all(|(e, _)| e != k));
    q.extend_from_slice(extra);
    let url = reqwest::Url::parse_with_params(&p.url("/auth"), &q).unwrap();
    let r = b.get(url).send().unwrap();
    (
        r,
        Rp {
            redirect_uri: redirect_uri.to_string(),
            verifier,
        },
    )
}

/// From a 303 to the interaction page: fetch it, sign in as `login`, follow
/// back through the resume URL; the final redirect to the relying party.
fn sign_in(
    p: &Provider,
    b: &reqwest::blocking::Client,
    r: reqwest::blocking::Response,
    login: &str,
) -> String {
    assert_eq!(
        r.status(),
        303,
        "the authorization endpoint asks for a sign-in"
    );
    let page_url = p.url(&location(&r));
    assert!(page_url.contains("/interaction/"), "{page_url}");
    let page = b.get(&page_url).send().unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().unwrap();
    let uid = page_url.rsplit('/').next().unwrap();
    assert!(
        html.contains(&format!(
            "<form method=\"post\" action=\"/interaction/{uid}/login\">"
        )),
        "{html}"
    );
    assert!(html.contains("name=\"login\"") && html.contains("name=\"password\""));

    let bad = p.login_form(b, &html, &page_url, login, "wrong");
    assert_eq!(bad.status(), 401, "password \"wrong\" is refused");
    assert!(
        bad.text().unwrap().contains("name=\"login\""),
        "the form is offered again"
    );

    let ok = p.login_form(b, &html, &page_url, login, "anything");
    assert_eq!(ok.status(), 303, "{}", ok.text().unwrap_or_default());
    let resume = location(&ok);
    assert!(resume.starts_with(&p.url("/auth/")), "{resume}");
    // Consent is automatic: the resume goes straight back to the client.
    let back = b.get(&resume).send().unwrap();
    assert_eq!(back.status(), 303, "{}", back.text().unwrap_or_default());
    location(&back)
}

fn code_of(p: &Provider, redirect: &str, rp: &Rp) -> String {
    assert!(redirect.starts_with(&rp.redirect_uri), "{redirect}");
    assert_eq!(query_param(redirect, "state").as_deref(), Some("st-1"));
    assert_eq!(
        query_param(redirect, "iss").as_deref(),
        Some(p.issuer.as_str())
    );
    query_param(redirect, "code").unwrap_or_else(|| panic!("no code in {redirect}"))
}

fn exchange(p: &Provider, code: &str, rp: &Rp, verifier: &str) -> reqwest::blocking::Response {
    common::client()
        .post(p.url("/token"))
        .basic_auth(&p.client_id, Some(&p.client_secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", rp.redirect_uri.as_str()),
            ("code_verifier", verifier),
        ])
        .send()
        .unwrap()
}

#[test]
fn discovery_minted_tokens_and_introspection() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::start(dir.path(), &["http://127.0.0.1:1/cb"]);

    let d = p.discovery();
    assert_eq!(d["issuer"], p.issuer);
    for (k, path) in [
        ("authorization_endpoint", "/auth"),
        ("token_endpoint", "/token"),
        ("userinfo_endpoint", "/me"),
        ("jwks_uri", "/jwks"),
        ("introspection_endpoint", "/token/introspection"),
        ("end_session_endpoint", "/session/end"),
    ] {
        assert_eq!(d[k], p.url(path), "{k}");
    }
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let jwks: serde_json::Value = common::client()
        .get(p.url("/jwks"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert!(
        key["kid"].is_string() && key.get("d").is_none(),
        "a public key with a kid: {key}"
    );

    let at = p.mint_token("alice", 120);
    let v = p.introspect(&at);
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["sub"], "alice");
    assert_eq!(v["email"], "alice@example.test");
    assert_eq!(v["client_id"], p.client_id);
    assert_eq!(v["scope"], "openid email profile");
    let exp = v["exp"].as_i64().unwrap();
    assert!(
        (exp - common::now() - 120).abs() <= 5,
        "exp {exp} is about now + 120"
    );

    // The relying party may introspect its own tokens, with client_secret_post.
    let v: serde_json::Value = common::client()
        .post(p.url("/token/introspection"))
        .form(&[
            ("token", at.as_str()),
            ("client_id", p.client_id.as_str()),
            ("client_secret", p.client_secret.as_str()),
        ])
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["active"], true, "{v}");

    let wrong = common::client()
        .post(p.url("/token/introspection"))
        .basic_auth(&p.introspect_client_id, Some("not-the-secret"))
        .form(&[("token", at.as_str())])
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let ui = common::client()
        .get(p.url("/me"))
        .bearer_auth(&at)
        .send()
        .unwrap();
    assert_eq!(ui.status(), 200);
    let ui: serde_json::Value = ui.json().unwrap();
    assert_eq!(ui["email"], "alice@example.test");

    p.revoke(&at);
    assert_eq!(p.introspect(&at), serde_json::json!({"active": false}));
    assert_eq!(p.introspect("no-such-token")["active"], false);

    let c = p.counts();
    assert_eq!(c["introspection"], 5, "{c}");
    assert_eq!(c["test_token"], 1, "{c}");
    assert_eq!(c["userinfo"], 1, "{c}");
    assert_eq!(p.count("token"), 0);
    p.reset_counts();
    assert_eq!(p.counts(), serde_json::json!({}));
}

#[test]
fn authorization_code_flow_with_pkce() {
    let dir = tempfile::tempdir().unwrap();
    let rp_port = common::free_port();
    let redirect_uri = format!("http://127.0.0.1:{rp_port}/.stepgate/oidc/callback");
    let p = Provider::start(dir.path(), &[&redirect_uri]);
    let b = browser();

    // PKCE is required of the client.
    let url = reqwest::Url::parse_with_params(
        &p.url("/auth"),
        &[
            ("client_id", p.client_id.as_str()),
            ("response_type", "code"),
            ("scope", "openid"),
            ("redirect_uri", redirect_uri.as_str()),
            ("state", "s"),
        ],
    )
    .unwrap();
    let r = b.get(url).send().unwrap();
    assert_eq!(r.status(), 303);
    let to = location(&r);
    assert!(to.starts_with(&redirect_uri), "{to}");
    assert_eq!(
        query_param(&to, "error").as_deref(),
        Some("invalid_request"),
        "{to}"
    );

    let (r, rp) = authorize(&p, &b, &redirect_uri, &[]);
    let redirect = sign_in(&p, &b, r, "bob");
    let code = code_of(&p, &redirect, &rp);

    let bad = exchange(&p, &code, &rp, &pkce_pair().0);
    assert_eq!(bad.status(), 400, "a wrong code_verifier is refused");
    // A refused exchange consumes nothing it should not: get a fresh code.
    let (r, rp) = authorize(&p, &b, &redirect_uri, &[]);
    assert_eq!(r.status(), 303, "the session signs in without a form");
    let code = code_of(&p, &location(&r), &rp);
    let t = exchange(&p, &code, &rp, &rp.verifier);
    assert_eq!(t.status(), 200);
    let t: serde_json::Value = t.json().unwrap();
    let at = t["access_token"].as_str().unwrap();
    assert!(!at.contains('.'), "the access token is opaque: {at}");
    assert_eq!(t["token_type"], "Bearer");
    let id = jwt_claims(t["id_token"].as_str().unwrap());
    assert_eq!(id["sub"], "bob", "{id}");
    assert_eq!(id["email"], "bob@example.test");
    assert_eq!(id["email_verified"], true);
    assert_eq!(id["iss"], p.issuer);
    assert_eq!(id["aud"], p.client_id);
    assert_eq!(id["nonce"], "n-1");
    let auth_time = id["auth_time"].as_i64().expect("auth_time");
    assert!((common::now() - auth_time).abs() < 30);

    let v = p.introspect(at);
    assert_eq!(v["active"], true);
    assert_eq!(v["sub"], "bob");
    assert_eq!(v["email"], "bob@example.test");

    // client_secret_post at the token endpoint.
    let (r, rp) = authorize(&p, &b, &redirect_uri, &[]);
    let code = code_of(&p, &location(&r), &rp);
    let t = common::client()
        .post(p.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_verifier", rp.verifier.as_str()),
            ("client_id", p.client_id.as_str()),
            ("client_secret", p.client_secret.as_str()),
        ])
        .send()
        .unwrap();
    assert_eq!(t.status(), 200);

    // prompt=login asks for a fresh sign-in, and auth_time moves.
    std::thread::sleep(Duration::from_millis(1100));
    let (r, rp) = authorize(&p, &b, &redirect_uri, &[("prompt", "login")]);
    let redirect = sign_in(&p, &b, r, "bob");
    let t: serde_json::Value = exchange(&p, &code_of(&p, &redirect, &rp), &rp, &rp.verifier)
        .json()
        .unwrap();
    let fresh = jwt_claims(t["id_token"].as_str().unwrap())["auth_time"]
        .as_i64()
        .unwrap();
    assert!(fresh > auth_time, "auth_time {fresh} after {auth_time}");

    // max_age: a sign-in older than that is asked again.
    std::thread::sleep(Duration::from_millis(2100));
    let (r, rp) = authorize(&p, &b, &redirect_uri, &[("max_age", "1")]);
    let redirect = sign_in(&p, &b, r, "bob");
    let code = code_of(&p, &redirect, &rp);
    assert_eq!(exchange(&p, &code, &rp, &rp.verifier).status(), 200);
    let (r, _) = authorize(&p, &b, &redirect_uri, &[("max_age", "600")]);
    assert!(
        location(&r).starts_with(&redirect_uri),
        "a recent sign-in is enough"
    );

    // RP-initiated logout back to the relying party's origin + "/".
    let post_logout = format!("http://127.0.0.1:{rp_port}/");
    let logout_url = reqwest::Url::parse_with_params(
        &p.url("/session/end"),
        &[
            ("client_id", p.client_id.as_str()),
            ("post_logout_redirect_uri", post_logout.as_str()),
            ("state", "bye"),
        ],
    )
    .unwrap()
    .to_string();
    let page = b.get(&logout_url).send().unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().unwrap();
    let done = p.confirm_logout(&b, &html, &logout_url);
    assert_eq!(done.status(), 303);
    assert_eq!(location(&done), format!("{post_logout}?state=bye"));
    let other = reqwest::Url::parse_with_params(
        &p.url("/session/end"),
        &[
            ("client_id", p.client_id.as_str()),
            ("post_logout_redirect_uri", "http://evil.test/"),
        ],
    )
    .unwrap();
    assert_eq!(
        b.get(other).send().unwrap().status(),
        400,
        "only registered URIs"
    );

    // Signed out: the next authorization asks for a sign-in again.
    let (r, _) = authorize(&p, &b, &redirect_uri, &[]);
    assert!(
        location(&r).starts_with("/interaction/"),
        "{}",
        location(&r)
    );

    let c = p.counts();
    assert_eq!(c["authorization"], 8, "{c}");
    assert_eq!(c["token"], 5, "{c}");
    assert_eq!(c["login"], 6, "{c}");
    assert_eq!(c["end_session"], 2, "{c}");
    assert_eq!(c["end_session_confirm"], 1, "{c}");
}

#[test]
fn consent_for_more_scopes_is_granted_without_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let redirect_uri = format!("http://127.0.0.1:{}/cb", common::free_port());
    let p = Provider::start(dir.path(), &[&redirect_uri]);
    let b = browser();

    let (r, rp) = authorize(&p, &b, &redirect_uri, &[("scope", "openid")]);
    let redirect = sign_in(&p, &b, r, "carol");
    let t: serde_json::Value = exchange(&p, &code_of(&p, &redirect, &rp), &rp, &rp.verifier)
        .json()
        .unwrap();
    let id = jwt_claims(t["id_token"].as_str().unwrap());
    assert_eq!(id["sub"], "carol");
    assert!(id.get("email").is_none(), "scope openid only: {id}");

    // More scopes on the same session: a consent interaction, granted at once.
    let (r, rp) = authorize(&p, &b, &redirect_uri, &[]);
    assert_eq!(r.status(), 303);
    let page = p.url(&location(&r));
    assert!(page.contains("/interaction/"), "{page}");
    let r = b.get(&page).send().unwrap();
    assert_eq!(r.status(), 303, "no consent page");
    let r = b.get(location(&r)).send().unwrap();
    let t: serde_json::Value = exchange(&p, &code_of(&p, &location(&r), &rp), &rp, &rp.verifier)
        .json()
        .unwrap();
    let id = jwt_claims(t["id_token"].as_str().unwrap());
    assert_eq!(id["email"], "carol@example.test", "{id}");
    assert_eq!(p.count("login"), 2);
    assert_eq!(p.count("interaction"), 2);
}
