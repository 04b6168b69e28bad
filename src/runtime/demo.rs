//! The built-in demo upstream, a stand-in for "the app behind stepgate": it
//! shows the headers it received (HTML for browsers, JSON otherwise), counts
//! and hashes request bodies without holding them, and offers
//! `/demo/login?token=…` which sets the first-factor cookie, as an identity
//! provider would. It also plays a legacy app with its own sign-in form and
//! opaque session cookie (`/demo/signin`, `/demo/signout`, and
//! `/demo/whoami` for stepgate's `session_check`). Tests use it as the real
//! upstream that records requests.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use sha2::{Digest, Sha256};

pub struct Echo {
    pub cookie: String,
}

/// The demo app's own sessions (`demo_session` cookie → user, sign-in time).
static SESSIONS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>,
> = std::sync::LazyLock::new(Default::default);

const SIGNIN_PAGE: &str = "<!doctype html><html><head><meta charset=utf-8><title>demo app: sign in</title></head><body><h1>Demo app: sign in</h1><p>This is the app's own login form and session cookie; stepgate asks <code>/demo/whoami</code> who it belongs to (<code>first_factor.session_check</code>).</p><form method=post action=/demo/signin><label>User <input id=user name=user value=demo-user></label> <button id=submit>Sign in</button></form></body></html>";

fn reply(status: u16, ctype: &str, body: String, extra: &[(&str, String)]) -> Response<Vec<u8>> {
    let mut b = Response::builder()
        .status(status)
        .header("Content-Type", ctype)
        .header("Content-Length", body.len().to_string());
    for (k, v) in extra {
        b = b.header(*k, v.as_str());
    }
    b.body(body.into_bytes()).unwrap()
}

fn demo_session(req: &pingora::http::RequestHeader) -> Option<(String, (String, i64))> {
    let id = crate::reply::cookie(
        req.headers.get_all("cookie").iter().map(|v| v.as_bytes()),
        "demo_session",
    )?;
    let s = SESSIONS.lock().unwrap_or_else(|p| p.into_inner());
    s.get(&id).cloned().map(|v| (id, v))
}

/// The legacy-app part: its sign-in form, sign-out and whoami.
fn own_session_pages(req: &pingora::http::RequestHeader, body: &[u8]) -> Option<Response<Vec<u8>>> {
    match (req.method.as_str(), req.uri.path()) {
        ("GET", "/demo/signin") => Some(reply(200, "text/html; charset=utf-8", SIGNIN_PAGE.into(), &[])),
        ("POST", "/demo/signin") => {
            let form = crate::reply::parse_form(body).unwrap_or_default();
            let user = crate::reply::field(&form, "user")
                .unwrap_or("")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .take(64)
                .collect::<String>();
            if user.is_empty() {
                return Some(reply(400, "text/plain", "a user name, please".into(), &[]));
            }
            let id = crate::auth::tokens::random_id();
            SESSIONS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), (user, crate::util::clock::now()));
            Some(reply(303, "text/plain", String::new(), &[
                ("Location", "/".into()),
                ("Set-Cookie", format!("demo_session={id}; Path=/; HttpOnly; SameSite=Lax")),
            ]))
        }
        ("POST", "/demo/signout") => {
            if let Some((id, _)) = demo_session(req) {
                SESSIONS.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            }
            Some(reply(303, "text/plain", String::new(), &[
                ("Location", "/demo/signin".into()),
                ("Set-Cookie", "demo_session=; Path=/; Max-Age=0".into()),
            ]))
        }
        ("GET", "/demo/whoami") => Some(match demo_session(req) {
            Some((_, (user, at))) => reply(
                200,
                "application/json",
                serde_json::json!({"user": {"id": user, "email": format!("{user}@example.com"), "login_at": at}}).to_string(),
                &[],
            ),
            None => reply(401, "application/json", "{\"error\":\"signed out\"}".into(), &[]),
        }),
        _ => None,
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[async_trait]
impl ServeHttp for Echo {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header().clone();
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut form = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            bytes += chunk.len() as u64;
            hasher.update(&chunk);
            if form.len() < 4096 {
                form.extend_from_slice(&chunk[..chunk.len().min(4096 - form.len())]);
            }
        }
        if let Some(r) = own_session_pages(&req, &form) {
            return r;
        }
        let path = req
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        if req.uri.path() == "/demo/login" {
            let token = crate::reply::query_param(req.uri.query(), "token").unwrap_or_default();
            let safe: String = token
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                .collect();
            return Response::builder()
                .status(303)
                .header("Location", "/")
                .header(
                    "Set-Cookie",
                    format!("{}={safe}; Path=/; HttpOnly; SameSite=Lax", self.cookie),
                )
                .header("Content-Length", "0")
                .body(Vec::new())
                .unwrap();
        }
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let html = req
            .headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
        let (ctype, body) = if html {
            let rows: String = headers
                .iter()
                .map(|(k, v)| format!("<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v)))
                .collect();
            let user = headers
                .iter()
                .find(|(k, _)| k == "x-stepgate-user")
                .map(|(_, v)| v.as_str())
                .unwrap_or("(not signed in)");
            // What the signed assertion says, decoded for reading (an app
            // must verify it: README "Verifying the assertion").
            let claims = headers
                .iter()
                .find(|(k, _)| k == "x-stepgate-assertion")
                .and_then(|(_, v)| v.split('.').nth(1))
                .and_then(|p| {
                    use base64::Engine;
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok()
                })
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .map(|v| {
                    format!(
                        "<h2>The assertion's claims (decoded, not verified here)</h2><pre id=\"claims\">{}</pre>",
                        escape(&serde_json::to_string_pretty(&v).unwrap_or_default())
                    )
                })
                .unwrap_or_default();
            (
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html><html><head><meta charset=utf-8><title>demo app</title><style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}table{{border-collapse:collapse;width:100%;table-layout:fixed}}th,td{{border-bottom:1px solid #ddd;padding:.3rem;text-align:left;vertical-align:top}}th{{width:14rem;font-weight:600}}td{{overflow-wrap:anywhere;font-family:monospace;font-size:.85rem}}pre{{background:#f6f6f6;padding:.6rem;overflow-x:auto}}</style></head><body><h1 id=\"app\">Demo app</h1><p>You reached <code id=\"path\">{} {}</code> as <b id=\"user\">{}</b>.</p><p>Try <a href=\"/\">/</a> (signed in), <a href=\"/admin\">/admin</a> (PIN, 5 minutes), <a href=\"/billing\">/billing</a> (PIN or an emailed code; mail lands in the demo's mailbox folder), <a href=\"/public\">/public</a>. Your PIN, security questions and devices: <a id=\"account\" href=\"/.stepgate/account\">security settings</a>.</p>{claims}<h2>Headers stepgate sent</h2><table>{rows}</table></body></html>",
                    escape(req.method.as_str()),
                    escape(&path),
                    escape(user)
                ),
            )
        } else {
            (
                "application/json",
                serde_json::json!({
                    "method": req.method.as_str(),
                    "path": path,
                    "headers": headers,
                    "body_bytes": bytes,
                    "body_sha256": hex(&hasher.finalize()),
                })
                .to_string(),
            )
        };
        Response::builder()
            .status(200)
            .header("Content-Type", ctype)
            .header("Content-Length", body.len().to_string())
            .body(body.into_bytes())
            .unwrap()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub const DEMO_POLICY: &str = r#"# stepgate demo policy: first match wins.
default: authenticated
rules:
  - name: demo-login
    match: { path: "/demo/login" }
    require: none
  - name: demo-signin
    match: { path: "/demo/signin" }
    require: none
  - name: demo-signout
    match: { path: "/demo/signout", methods: [POST] }
    require: none
  - name: public
    match: { path: "/public/**" }
    require: none
  - name: admin-delete
    match: { path: "/admin/delete", methods: [POST] }
    require: step_up
    step_up: { methods: [pin], max_age: 0 }
  - name: billing
    match: { path: "/billing/**" }
    require: step_up
    step_up: { methods: [pin, email_otp], max_age: 10m }
  - name: admin
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
"#;
