//! The signed assertion, checked from the upstream's side with a JWT library
//! that is not the one stepgate signs with: PyJWT (Python), given only the
//! gateway's `/.stepgate/jwks.json`, as an app behind stepgate would verify
//! `X-Stepgate-Assertion`. Also a key rotation across gateway runs: the
//! previous key stays published, so assertions signed before the rotation
//! still verify.
//!
//! Missing `python3`, PyJWT or `cryptography` is a failure, never a skip: the
//! README's test command, `scripts/test.sh`, installs them.

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};

use reqwest::blocking::Client;
use serde_json::{json, Value};

const PIN: &str = "2580";
const AUDIENCE: &str = "legacy-app";
const ISSUER: &str = "https://gateway.test";

const INSTALL_HINT: &str = "the assertion tests need `python3` with PyJWT and `cryptography` \
     (`python3 -m pip install pyjwt cryptography`); run the README's test command, \
     `scripts/test.sh` (it runs `scripts/install-deps.sh test`, which installs them), \
     then run the tests again";

fn require_pyjwt() {
    match Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => panic!("cannot run python3: {e}; {INSTALL_HINT}"),
        Ok(o) if !o.status.success() => panic!(
            "python3 cannot import PyJWT and cryptography ({}); {INSTALL_HINT}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(_) => {}
    }
}

/// Run tests/fixtures/verify_assertion.py: Ok(its JSON) when PyJWT accepts
/// the token, Err(its error) when not.
fn pyjwt(g: &Gateway, token: &str, aud: &str, iss: &str, extra: &[&str]) -> Result<Value, String> {
    require_pyjwt();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verify_assertion.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--jwks", &g.url("/.stepgate/jwks.json")])
        .args(["--aud", aud, "--iss", iss])
        .args(extra)
        .arg(token)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}; {INSTALL_HINT}"));
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("the script prints JSON"))
    } else {
        assert_eq!(
            out.status.code(),
            Some(1),
            "the script failed otherwise than by refusing the token: {stderr}"
        );
        Err(stderr)
    }
}

fn verified(g: &Gateway, token: &str) -> Value {
    pyjwt(g, token, AUDIENCE, ISSUER, &[]).unwrap_or_else(|e| panic!("PyJWT refused: {e}"))
}

fn assertion_config(key_file: Option<&Path>, previous: Option<&Path>) -> String {
    let mut s = format!("assertion:\n  audience: \"{AUDIENCE}\"\n  issuer: \"{ISSUER}\"\n");
    if let Some(k) = key_file {
        s.push_str(&format!("  key_file: \"{}\"\n", k.display()));
    }
    if let Some(p) = previous {
        s.push_str(&format!("  previous_key_file: \"{}\"\n", p.display()));
    }
    s
}

fn gateway(extra: &str) -> Gateway {
    Gateway::start_with(GatewayOptions {
        extra_config: extra.to_string(),
        ..Default::default()
    })
}

/// The X-Stepgate-Assertion the upstream received for this request.
fn upstream_assertion(
    g: &Gateway,
    c: &Client,
    method: &str,
    path: &str,
    at: &str,
    su: Option<&str>,
) -> String {
    let mut rb = c
        .request(method.parse().unwrap(), g.url(path))
        .header("Authorization", format!("Bearer {at}"));
    if let Some(su) = su {
        rb = rb.header("X-Stepgate-Token", su);
    }
    let r = rb.send().unwrap();
    assert_eq!(r.status(), 200, "forwarded: {path}");
    let echo: Value = r.json().unwrap();
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "x-stepgate-assertion")
        .and_then(|h| h[1].as_str())
        .expect("the upstream received X-Stepgate-Assertion")
        .to_string()
}

/// Enroll `PIN` through the HTML form and step up through the JSON API.
fn step_up(g: &Gateway, c: &Client, at: &str) -> String {
    let cookie = format!("access_token={at}");
    let page = c
        .get(g.url("/.stepgate/pin/setup"))
        .header("Cookie", &cookie)
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let csrf = csrf_of(&page.text().unwrap());
    let r = c
        .post(g.url("/.stepgate/pin/setup"))
        .header("Cookie", &cookie)
        .form(&[("pin", PIN), ("pin_confirm", PIN), ("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "enrolled");
    let r = c
        .put(g.url("/.stepgate/api/stepup/pin"))
        .header("Authorization", format!("Bearer {at}"))
        .json(&json!({"PIN": PIN}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "stepped up");
    let body: Value = r.json().unwrap();
    body["SecondFactorValidationToken"]
        .as_str()
        .unwrap()
        .to_string()
}

fn jwks(g: &Gateway, c: &Client) -> Value {
    let r = c.get(g.url("/.stepgate/jwks.json")).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// The common claims of every assertion: iss, aud, a 30-second life, a jti,
/// an ES256 header whose kid is the RFC 7638 thumbprint of the signing key.
fn assert_envelope(v: &Value) {
    let (h, c) = (&v["header"], &v["claims"]);
    assert_eq!(h["alg"], "ES256");
    assert_eq!(h["typ"], "stepgate-assertion+jwt");
    assert_eq!(h["kid"], v["thumbprint"], "kid is the RFC 7638 thumbprint");
    assert_eq!(c["iss"], ISSUER);
    assert_eq!(c["aud"], AUDIENCE);
    let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
    assert_eq!(exp - iat, 30, "assertions live 30 seconds");
    assert!((now() - iat).abs() <= 60, "iat is now: {iat}");
    assert!(
        c["jti"].as_str().is_some_and(|j| j.len() >= 16),
        "a jti: {c}"
    );
}

#[test]
fn pyjwt_verifies_assertions_of_authenticated_and_stepped_up_requests() {
    let g = gateway(&assertion_config(None, None));
    let c = client();
    let at = g.token("alice", &["--email", "alice@example.com"]);

    // Signed in, no step-up: the login is the authentication.
    let t = upstream_assertion(&g, &c, "GET", "/app/page?x=1", &at, None);
    let v = verified(&g, &t);
    assert_envelope(&v);
    let claims = &v["claims"];
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["amr"], json!([]));
    assert_eq!(claims["acr"], "urn:stepgate:acr:login");
    assert_eq!(claims["rule"], "default");
    assert_eq!(claims["method"], "GET");
    assert_eq!(claims["path"], "/app/page", "the path, without the query");
    let login = claims["auth_time"].as_i64().unwrap();
    assert!((now() - login).abs() <= 60, "auth_time is the login");

    // Stepped up with the PIN.
    let su = step_up(&g, &c, &at);
    for (method, path) in [("GET", "/admin/x?y=2"), ("POST", "/admin/users")] {
        let t = upstream_assertion(&g, &c, method, path, &at, Some(&su));
        let v = verified(&g, &t);
        assert_envelope(&v);
        let claims = &v["claims"];
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["amr"], json!(["pin"]));
        assert_eq!(claims["acr"], "urn:stepgate:acr:step-up");
        assert_eq!(claims["rule"], "admin");
        assert_eq!(claims["method"], method);
        assert_eq!(claims["path"], path.split('?').next().unwrap());
        let auth_time = claims["auth_time"].as_i64().unwrap();
        assert!(
            auth_time >= login,
            "auth_time is the step-up, not the login"
        );
    }

    // PyJWT refuses what an app must refuse.
    let t = upstream_assertion(&g, &c, "GET", "/admin/x", &at, Some(&su));
    let e = pyjwt(&g, &t, "another-app", ISSUER, &[]).unwrap_err();
    assert!(e.starts_with("InvalidAudienceError"), "{e}");
    let e = pyjwt(&g, &t, AUDIENCE, "https://evil.test", &[]).unwrap_err();
    assert!(e.starts_with("InvalidIssuerError"), "{e}");
    let e = pyjwt(&g, &t, AUDIENCE, ISSUER, &["--later", "31"]).unwrap_err();
    assert!(e.starts_with("ExpiredSignatureError"), "{e}");
    verified(&g, &t);
    // A changed claim under the original signature.
    let parts: Vec<&str> = t.split('.').collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = "mallory".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    let e = pyjwt(&g, &forged, AUDIENCE, ISSUER, &[]).unwrap_err();
    assert!(e.starts_with("InvalidSignatureError"), "{e}");

    // A client-sent assertion never reaches the upstream as such.
    let r = c
        .get(g.url("/app/page"))
        .header("Authorization", format!("Bearer {at}"))
        .header("X-Stepgate-Assertion", &forged)
        .send()
        .unwrap();
    let echo: Value = r.json().unwrap();
    let sent: Vec<&Value> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "x-stepgate-assertion")
        .collect();
    assert_eq!(sent.len(), 1);
    assert_ne!(sent[0][1], forged.as_str());
}

#[test]
fn the_default_audience_is_the_upstream_url() {
    let g = gateway("");
    let c = client();
    let at = g.token("alice", &[]);
    let t = upstream_assertion(&g, &c, "GET", "/app", &at, None);
    let aud = format!("http://127.0.0.1:{}", g.upstream_port);
    let v = pyjwt(&g, &t, &aud, "stepgate", &[])
        .unwrap_or_else(|e| panic!("audience {aud}, issuer stepgate: {e}"));
    assert_eq!(v["claims"]["sub"], "alice");
    assert_eq!(
        v["kids"].as_array().unwrap().len(),
        1,
        "one key, no rotation"
    );
    // The key was generated beside the config and is kept private.
    let key = g.dir.path().join("data/assertion-key.pem");
    assert!(key.exists(), "generated at {}", key.display());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key file is private: {mode:o}");
    }
}

#[test]
fn assertions_signed_before_a_key_rotation_still_verify() {
    let keys = tempfile::tempdir().unwrap();
    let (old, new) = (keys.path().join("old.pem"), keys.path().join("new.pem"));
    let c = client();

    // A first run generates old.pem and signs with it.
    let g = gateway(&assertion_config(Some(&old), None));
    assert!(old.exists(), "the gateway generated its key");
    let old_kids = kids(&jwks(&g, &c));
    assert_eq!(old_kids.len(), 1);
    let at = g.token("alice", &[]);
    let before = upstream_assertion(&g, &c, "GET", "/app/before", &at, None);
    let v = verified(&g, &before);
    assert_eq!(v["header"]["kid"], old_kids[0].as_str());
    drop(g);

    // The rotation: a new key, the old one kept as the previous key.
    let g = gateway(&assertion_config(Some(&new), Some(&old)));
    let published = kids(&jwks(&g, &c));
    assert_eq!(
        published.len(),
        2,
        "current and previous key: {published:?}"
    );
    assert_eq!(published[1], old_kids[0], "the previous key comes second");
    assert_ne!(published[0], old_kids[0], "a new current key");
    // The old run's assertion verifies against the new JWKS. (Leeway: the
    // restart may outlast its 30 seconds on a busy machine; what this checks
    // is the signature and the kid.)
    let v = pyjwt(&g, &before, AUDIENCE, ISSUER, &["--leeway", "600"])
        .unwrap_or_else(|e| panic!("the pre-rotation assertion: {e}"));
    assert_eq!(v["kids"], json!(published));
    assert_eq!(v["header"]["kid"], old_kids[0].as_str());
    assert_eq!(v["claims"]["path"], "/app/before");
    // New assertions are signed with the new key.
    let at = g.token("alice", &[]);
    let after = upstream_assertion(&g, &c, "GET", "/app/after", &at, None);
    let v = verified(&g, &after);
    assert_eq!(v["header"]["kid"], published[0].as_str());
    drop(g);

    // Once the rotation is over (no previous key), old assertions are refused.
    let g = gateway(&assertion_config(Some(&new), None));
    assert_eq!(kids(&jwks(&g, &c)), vec![published[0].clone()]);
    let e = pyjwt(&g, &before, AUDIENCE, ISSUER, &["--leeway", "600"]).unwrap_err();
    assert!(
        e.starts_with("PyJWKClientError") && e.contains(&old_kids[0]),
        "no key for the old kid: {e}"
    );
}
