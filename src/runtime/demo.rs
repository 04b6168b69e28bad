//! The built-in demo upstream, a stand-in for "the app behind stepgate": it
//! shows the headers it received (HTML for browsers, JSON otherwise), counts
//! and hashes request bodies without holding them, and offers
//! `/demo/login?token=…` which sets the first-factor cookie, as an identity
//! provider would. Tests use it as the real upstream that records requests.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use sha2::{Digest, Sha256};

pub struct Echo {
    pub cookie: String,
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
        while let Ok(Some(chunk)) = session.read_request_body().await {
            bytes += chunk.len() as u64;
            hasher.update(&chunk);
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
            (
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html><html><head><meta charset=utf-8><title>demo app</title></head><body><h1 id=\"app\">Demo app</h1><p>You reached <code id=\"path\">{} {}</code> as <b id=\"user\">{}</b>.</p><p>Try <a href=\"/\">/</a> (signed in), <a href=\"/admin\">/admin</a> (PIN, 5 minutes), <a href=\"/billing\">/billing</a> (PIN or an emailed code; mail lands in the demo's mailbox folder), <a href=\"/public\">/public</a>. Your PIN, security questions and devices: <a id=\"account\" href=\"/.stepgate/account\">security settings</a>.</p><h2>Headers stepgate sent</h2><table>{rows}</table></body></html>",
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
