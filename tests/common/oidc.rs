//! A real OpenID provider for the tests: panva's `oidc-provider` on Node
//! (tests/fixtures/oidc/provider.mjs), on a free loopback port, killed when
//! dropped. Any login name signs in (sub = the name, email =
//! `<name>@example.test`), with any password but "wrong"; consent is
//! automatic. Access tokens are opaque; PKCE (S256) is required.
//!
//! Two clients are registered: `client_id` (the relying party, with the
//! given redirect URIs; it may also introspect its own tokens) and
//! `introspect_client_id` (a resource server that may only introspect the
//! relying party's tokens). Both authenticate with client_secret_basic or
//! client_secret_post.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::Digest as _;

use crate::common::{free_port, spawn, Proc};

pub const CLIENT_ID: &str = "stepgate";
pub const CLIENT_SECRET: &str = "test-oidc-client-secret-0123456789abcdef";
pub const INTROSPECT_CLIENT_ID: &str = "stepgate-introspect";
pub const INTROSPECT_SECRET: &str = "test-oidc-introspect-secret-0123456789ab";

pub struct Provider {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub issuer: String,
    pub port: u16,
    pub client_id: String,
    pub client_secret: String,
    pub introspect_client_id: String,
    pub introspect_secret: String,
    pub proc: Proc,
}

/// tests/fixtures/oidc, where provider.mjs and its node_modules live.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oidc")
}

/// Install the fixture's npm packages once (`npm ci`), unless
/// scripts/install-deps.sh did already. Guarded by a mutex within this test
/// binary and an advisory file lock on package.json across test binaries.
pub fn ensure_installed() {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let dir = fixture_dir();
    // npm writes node_modules/.package-lock.json at the end of an install.
    let done = dir.join("node_modules/.package-lock.json");
    let _guard = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    if done.exists() {
        return;
    }
    let lock =
        std::fs::File::open(dir.join("package.json")).expect("tests/fixtures/oidc/package.json");
    lock.lock().expect("lock tests/fixtures/oidc/package.json");
    if done.exists() {
        return;
    }
    let npm_ok = Command::new("npm")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        npm_ok,
        "`node`/`npm` are not installed. The OIDC tests run a real OpenID provider on Node: \
         run scripts/install-deps.sh test (it installs nodejs and the fixture's packages)."
    );
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .output()
        .expect("run npm ci");
    assert!(
        out.status.success(),
        "npm ci in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The file lock is released when `lock` is dropped.
}

/// A PKCE pair: (code_verifier, S256 code_challenge).
pub fn pkce_pair() -> (String, String) {
    let verifier =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The claims of a JWT (not verified), e.g. an ID token.
pub fn jwt_claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON payload")
}

/// Undo the HTML escaping of an attribute value.
fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The `action` of the first `<form …>…</form>` in `html` whose text
/// contains `marker`, and its hidden inputs as (name, value).
pub fn find_form(html: &str, marker: &str) -> Option<(String, Vec<(String, String)>)> {
    let mut rest = html;
    while let Some(i) = rest.find("<form") {
        let form = &rest[i..];
        let end = form
            .find("</form>")
            .map(|e| e + "</form>".len())
            .unwrap_or(form.len());
        let form = &form[..end];
        rest = &rest[i + end..];
        if !form.contains(marker) {
            continue;
        }
        let tag = &form[..form.find('>').unwrap_or(form.len())];
        let action = attr(tag, "action").unwrap_or_default();
        let mut hidden = Vec::new();
        let mut inputs = form;
        while let Some(j) = inputs.find("<input") {
            let input = &inputs[j..];
            let tag = &input[..input.find('>').unwrap_or(input.len())];
            if attr(tag, "type").as_deref() == Some("hidden") {
                if let Some(name) = attr(tag, "name") {
                    hidden.push((name, attr(tag, "value").unwrap_or_default()));
                }
            }
            inputs = &input[tag.len()..];
        }
        return Some((action, hidden));
    }
    None
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    Some(unescape(tag[i..].split('"').next()?))
}

/// `action` resolved against the page it is on.
fn resolve(page_url: &str, action: &str) -> String {
    reqwest::Url::parse(page_url)
        .and_then(|u| u.join(action))
        .unwrap_or_else(|e| panic!("form action {action:?} on {page_url}: {e}"))
        .to_string()
}

impl Provider {
    /// Start a provider whose relying party `stepgate` may redirect to
    /// `redirect_uris` (and return after logout to each one's origin + "/").
    pub fn start(dir: &Path, redirect_uris: &[&str]) -> Provider {
        Provider::start_with(dir, redirect_uris, &[])
    }

    /// As `start`, with more provider.mjs arguments, e.g.
    /// `["--access-token-ttl", "5"]` or `["--post-logout-redirect-uri", URI]`.
    pub fn start_with(dir: &Path, redirect_uris: &[&str], extra_args: &[&str]) -> Provider {
        ensure_installed();
        let port = free_port();
        let issuer = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new("node");
        cmd.current_dir(fixture_dir())
            .arg("provider.mjs")
            .args(["--port", &port.to_string(), "--issuer", &issuer])
            .args(["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET])
            .args(["--introspect-client-id", INTROSPECT_CLIENT_ID])
            .args(["--introspect-secret", INTROSPECT_SECRET]);
        for uri in redirect_uris {
            cmd.args(["--redirect-uri", uri]);
        }
        cmd.args(extra_args);
        let mut proc = spawn(&mut cmd, dir.join(format!("oidc-provider-{port}.log")));
        let start = Instant::now();
        loop {
            if proc.log_text().lines().any(|l| l == "ready") {
                break;
            }
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("the OIDC provider exited ({status}):\n{}", proc.log_text());
            }
            // Node's start (loading oidc-provider, an RSA key) takes well
            // under a second alone, but the full suite loads both cores.
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the OIDC provider is not ready after 120s:\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Provider {
            issuer,
            port,
            client_id: CLIENT_ID.to_string(),
            client_secret: CLIENT_SECRET.to_string(),
            introspect_client_id: INTROSPECT_CLIENT_ID.to_string(),
            introspect_secret: INTROSPECT_SECRET.to_string(),
            proc,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// The provider's own log (requests, one a line, and errors).
    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    fn http() -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    fn post_json(&self, path: &str, form: &[(&str, &str)]) -> serde_json::Value {
        let r = Self::http().post(self.url(path)).form(form).send().unwrap();
        let status = r.status();
        let text = r.text().unwrap();
        assert!(status.is_success(), "POST {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: {e}: {text}"))
    }

    /// The discovery document.
    pub fn discovery(&self) -> serde_json::Value {
        Self::http()
            .get(self.url("/.well-known/openid-configuration"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// An opaque access token for `login`, issued to the relying party with
    /// scope "openid email profile", valid `ttl` seconds; introspection
    /// reports it active with sub = `login`.
    pub fn mint_token(&self, login: &str, ttl: u64) -> String {
        self.mint_token_scoped(login, ttl, "openid email profile")
    }

    pub fn mint_token_scoped(&self, login: &str, ttl: u64, scope: &str) -> String {
        let ttl = ttl.to_string();
        let v = self.post_json(
            "/test/token",
            &[("login", login), ("ttl", &ttl), ("scope", scope)],
        );
        v["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// Destroy an access token: introspection answers `active: false` after.
    pub fn revoke(&self, token: &str) {
        self.post_json("/test/revoke", &[("token", token)]);
    }

    /// Requests seen per endpoint: `discovery`, `jwks`, `authorization`,
    /// `authorization_resume`, `interaction`, `login`, `token`,
    /// `introspection`, `revocation`, `userinfo`, `end_session`,
    /// `end_session_confirm`, `end_session_success`, `test_token`,
    /// `test_revoke`, `other`; absent keys were never called.
    pub fn counts(&self) -> serde_json::Value {
        Self::http()
            .get(self.url("/test/counts"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// One endpoint's count (0 when never called).
    pub fn count(&self, endpoint: &str) -> u64 {
        self.counts()[endpoint].as_u64().unwrap_or(0)
    }

    pub fn reset_counts(&self) {
        self.post_json("/test/counts/reset", &[]);
    }

    /// RFC 7662 introspection of `token` as the introspection client.
    pub fn introspect(&self, token: &str) -> serde_json::Value {
        let r = Self::http()
            .post(self.url("/token/introspection"))
            .basic_auth(&self.introspect_client_id, Some(&self.introspect_secret))
            .form(&[("token", token)])
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "introspection");
        r.json().unwrap()
    }

    /// Submit the sign-in form found in `page_html` (the provider's
    /// interaction page, fetched from `page_url`) with `client`, which should
    /// keep cookies. A good sign-in answers 303 to the authorization
    /// endpoint's resume URL (`/auth/UID`); password "wrong" answers 401 with
    /// the form again.
    pub fn login_form(
        &self,
        client: &reqwest::blocking::Client,
        page_html: &str,
        page_url: &str,
        login: &str,
        password: &str,
    ) -> reqwest::blocking::Response {
        let (action, mut fields) = find_form(page_html, "name=\"login\"")
            .unwrap_or_else(|| panic!("no sign-in form on {page_url}:\n{page_html}"));
        fields.push(("login".into(), login.into()));
        fields.push(("password".into(), password.into()));
        client
            .post(resolve(page_url, &action))
            .form(&fields)
            .send()
            .unwrap()
    }

    /// Confirm the provider's RP-initiated logout page (`page_html`, from
    /// `page_url` = the end_session request): posts its xsrf and
    /// logout=yes. Answers 303 to the post_logout_redirect_uri (or the
    /// provider's own success page).
    pub fn confirm_logout(
        &self,
        client: &reqwest::blocking::Client,
        page_html: &str,
        page_url: &str,
    ) -> reqwest::blocking::Response {
        let (action, mut fields) = find_form(page_html, "name=\"xsrf\"")
            .unwrap_or_else(|| panic!("no logout form on {page_url}:\n{page_html}"));
        fields.retain(|(k, _)| k != "logout");
        fields.push(("logout".into(), "yes".into()));
        client
            .post(resolve(page_url, &action))
            .form(&fields)
            .send()
            .unwrap()
    }
}
