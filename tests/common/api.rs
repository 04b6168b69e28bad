//! Helpers for the JSON API under `/.stepgate/api/`, as an API client (a
//! single-page app, a mobile app, a script) uses it: URLs, the bearer
//! header, the API secret's config, the shape of answers and errors, and
//! requests that reach the demo upstream.

use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{json, Value};

use super::{echoed, Gateway};

/// The back-channel API secret the tests configure (`api.secret`).
pub const API_SECRET: &str = "test-api-secret-0123456789abcdef0123456789";

/// `api:` config with `secret`.
pub fn api_config(secret: &str) -> String {
    format!("api:\n  secret: \"{secret}\"\n")
}

/// `api:` config with `API_SECRET`.
pub fn api_secret_config() -> String {
    api_config(API_SECRET)
}

/// The URL of an API route, e.g. `api(g, "/stepup/pin")`.
pub fn api(g: &Gateway, route: &str) -> String {
    g.url(&format!("/.stepgate/api{route}"))
}

pub fn bearer(rb: RequestBuilder, token: &str) -> RequestBuilder {
    rb.header("Authorization", format!("Bearer {token}"))
}

/// An API error: this status and a JSON `{ErrorCode, Message, Description}`
/// with this code. Returns the headers and the body for more checks.
pub fn assert_error(r: Response, status: u16, code: u64) -> (reqwest::header::HeaderMap, Value) {
    let got = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().unwrap();
    assert_eq!(got, status, "HTTP status for ErrorCode {code}: {text}");
    assert!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "errors are JSON: {headers:?}"
    );
    let body: Value = serde_json::from_str(&text).expect("a JSON error body");
    assert_eq!(body["ErrorCode"], code, "ErrorCode in {body}");
    for f in ["Message", "Description"] {
        assert!(
            body[f].as_str().is_some_and(|s| !s.is_empty()),
            "{f} is a non-empty string in {body}"
        );
    }
    (headers, body)
}

/// `200` with a JSON body, which is returned.
pub fn assert_ok_json(r: Response) -> Value {
    let status = r.status();
    let text = r.text().unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("a JSON body")
}

/// `200 {"IsPosted": true}` and nothing else.
pub fn assert_posted(r: Response) {
    assert_eq!(assert_ok_json(r), json!({"IsPosted": true}));
}

/// PUT /stepup/pin: a PIN step-up through the API.
pub fn put_pin(g: &Gateway, c: &Client, at: &str, pin: &str) -> Response {
    bearer(c.put(api(g, "/stepup/pin")), at)
        .json(&json!({ "PIN": pin }))
        .send()
        .unwrap()
}

/// A protected request from an API client (JSON, the access token in
/// Authorization), with the step-up token if any.
pub fn protected(
    g: &Gateway,
    c: &Client,
    method: reqwest::Method,
    path: &str,
    at: &str,
    su: Option<&str>,
) -> Response {
    let mut rb = bearer(c.request(method, g.url(path)), at).header("Accept", "application/json");
    if let Some(su) = su {
        rb = rb.header("X-Stepgate-Token", su);
    }
    rb.send().unwrap()
}

/// A GET from an API client (JSON, the access token in Authorization).
pub fn get_as(g: &Gateway, c: &Client, path: &str, at: &str) -> Response {
    protected(g, c, reqwest::Method::GET, path, at, None)
}

/// A GET with the access token in Authorization and the step-up token in
/// `X-Stepgate-Token` (no Accept header).
pub fn api_get(g: &Gateway, c: &Client, path: &str, at: &str, su: &str) -> Response {
    bearer(c.get(g.url(path)), at)
        .header("X-Stepgate-Token", su)
        .send()
        .unwrap()
}

/// The request reached the demo upstream: 200 and its JSON echo of `path`,
/// which is returned.
pub fn forwarded(r: Response, path: &str) -> Value {
    let echo = assert_ok_json(r);
    assert_eq!(echo["path"], path, "the upstream saw the request: {echo}");
    echo
}

/// The demo upstream answered 200 for `path` and saw `X-Stepgate-User: user`;
/// `what` names the request in failure messages.
pub fn assert_forwarded_as(r: Response, path: &str, user: &str, what: &str) {
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    assert_eq!(status, 200, "{what}: forwarded upstream; got {text}");
    let echo: Value = serde_json::from_str(&text).expect("the upstream's JSON echo");
    assert_eq!(echo["path"], path, "{what}: the upstream saw the request");
    assert_eq!(
        echoed(&echo, "x-stepgate-user").as_deref(),
        Some(user),
        "{what}: X-Stepgate-User upstream"
    );
}

/// POST `body` to an API route (no credentials).
pub fn post_json(g: &Gateway, c: &Client, route: &str, body: Value) -> Response {
    c.post(api(g, route)).json(&body).send().unwrap()
}

/// PUT `body` to an API route (no credentials).
pub fn put_json(g: &Gateway, c: &Client, route: &str, body: Value) -> Response {
    c.put(api(g, route)).json(&body).send().unwrap()
}

/// PUT /pin/change with the access token.
pub fn change_pin(g: &Gateway, c: &Client, at: &str, old: &str, new: &str) -> Response {
    bearer(c.put(api(g, "/pin/change")), at)
        .json(&json!({ "OldPIN": old, "NewPIN": new }))
        .send()
        .unwrap()
}

/// POST /pin/set/pinauthtoken?pinauthtoken=… {"PIN"} from device `ua`.
pub fn set_by_auth_token(g: &Gateway, c: &Client, token: &str, pin: &str, ua: &str) -> Response {
    post_pin_from_device(
        g,
        c,
        "/pin/set/pinauthtoken",
        ("pinauthtoken", token),
        pin,
        ua,
    )
}

/// POST /login/pin?session_token=… {"PIN"} from device `ua`.
pub fn login_pin(g: &Gateway, c: &Client, session: &str, pin: &str, ua: &str) -> Response {
    post_pin_from_device(g, c, "/login/pin", ("session_token", session), pin, ua)
}

/// POST `{"PIN": pin}` to `route?<query>` with User-Agent `ua`.
fn post_pin_from_device(
    g: &Gateway,
    c: &Client,
    route: &str,
    query: (&str, &str),
    pin: &str,
    ua: &str,
) -> Response {
    c.post(api(g, route))
        .query(&[query])
        .header("User-Agent", ua)
        .json(&json!({ "PIN": pin }))
        .send()
        .unwrap()
}

/// POST /pin/forgot/email, with a `resetpinurl` when given.
pub fn forgot_email(g: &Gateway, c: &Client, email: &str, reset_url: Option<&str>) -> Response {
    let mut body = json!({ "Email": email });
    if let Some(u) = reset_url {
        body["resetpinurl"] = json!(u);
    }
    post_json(g, c, "/pin/forgot/email", body)
}

/// PUT /pin/reset/token.
pub fn reset_by_token(g: &Gateway, c: &Client, token: &str, pin: &str) -> Response {
    put_json(
        g,
        c,
        "/pin/reset/token",
        json!({ "PIN": pin, "ResetToken": token }),
    )
}
