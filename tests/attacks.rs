//! Attacks on "what stepgate matches is what the upstream serves": requests
//! an app reads as a protected or denied route, or as another method, host or
//! user, than the one stepgate judged. Each test is named for the behaviour
//! that must hold. The real upstreams behind the findings are named in each
//! test; the demo upstream stands in for them, since it echoes exactly what
//! it received.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const POLICY: &str = r#"
default: authenticated
rules:
  - name: public
    match: { path: "/public/**" }
    require: none
  - name: users-delete
    match: { path: "/users/*", methods: [DELETE, PUT, PATCH] }
    require: step_up
    step_up: { methods: [pin], max_age: 0 }
  - name: admin
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: settings
    match: { path: "/settings/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: keys
    match: { path: "/keys/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: internal
    match: { path: "/internal/**" }
    require: deny
"#;

fn gateway(extra_config: &str) -> Gateway {
    Gateway::start_with(GatewayOptions {
        policy: POLICY.to_string(),
        extra_config: extra_config.to_string(),
        ..Default::default()
    })
}

/// One request over a fresh connection (`Connection: close` is up to the
/// caller); everything that came back within `wait`.
fn raw(port: u16, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 65536];
    while start.elapsed() < wait {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The demo upstream's JSON echo in an answer, when the request reached it.
fn echo_in(answer: &str) -> Option<Value> {
    let body = answer.split_once("\r\n\r\n")?.1;
    serde_json::from_str::<Value>(body)
        .ok()
        .filter(|v| v.get("headers").is_some())
}

// ---------------------------------------------------------------------------
// Findings (these fail until fixed)

/// Java's `String.equalsIgnoreCase` (what Spring's `AntPathMatcher` uses with
/// `setCaseSensitive(false)`), Python's `re.IGNORECASE` and JavaScript's
/// `toUpperCase()` comparisons treat `ı` (U+0131) and `İ` (U+0130) as `i`
/// and `ſ` (U+017F) as `s`; Rust's `to_lowercase` does not, so neither of
/// stepgate's two readings matches the rule. Verified against Tomcat 10 with
/// an `equalsIgnoreCase` router: `/adm%C4%B1n/x` served the admin route with
/// `X-Stepgate-Rule: default`, `/%C4%B1nternal/x` the denied one.
#[test]
fn paths_a_unicode_case_insensitive_router_reads_as_a_protected_route_are_judged_by_it() {
    let g = gateway("");
    let at = g.token("alice", &[]);
    let c = client();
    let mut served = Vec::new();
    for path in [
        "/adm%C4%B1n/x",    // admın
        "/adm%C4%B0n/x",    // admİn
        "/%C5%BFettings/x", // ſettings
        "/%C4%B1nternal/x", // ınternal (deny)
        "/%C4%B0NTERNAL/x", // İNTERNAL (deny)
    ] {
        let r = c.get(g.url(path)).bearer_auth(&at).send().unwrap();
        let status = r.status().as_u16();
        if status == 200 {
            let echo: Value = r.json().unwrap();
            served.push(format!(
                "{path} reached the app with X-Stepgate-Rule: {:?}",
                echoed(&echo, "x-stepgate-rule")
            ));
        }
    }
    assert!(
        served.is_empty(),
        "a step_up/deny route was served after only a first factor:\n{}",
        served.join("\n")
    );
}

/// Laravel and Symfony (`_method` in the query or the form), Rails
/// (`Rack::MethodOverride`, form field), Spring's `HiddenHttpMethodFilter`
/// and Express's `method-override('_method')` run a POST as the method it
/// names. stepgate judges the POST, so a rule on DELETE/PUT/PATCH is never
/// asked for.
#[test]
fn post_with_a_method_override_parameter_is_judged_as_the_overridden_method() {
    let g = gateway("");
    let at = g.token("alice", &[]);
    let c = client();
    // Held: the header spellings are removed, and a real DELETE is challenged.
    let r = c.delete(g.url("/users/5")).bearer_auth(&at).send().unwrap();
    assert_eq!(r.status(), 401, "DELETE /users/5 needs a step-up");

    let mut served = Vec::new();
    let q = c
        .post(g.url("/users/5?_method=DELETE"))
        .bearer_auth(&at)
        .send()
        .unwrap();
    if q.status() == 200 {
        let echo: Value = q.json().unwrap();
        served.push(format!(
            "POST /users/5?_method=DELETE forwarded as rule {:?}",
            echoed(&echo, "x-stepgate-rule")
        ));
    }
    let f = c
        .post(g.url("/users/5"))
        .bearer_auth(&at)
        .form(&[("_method", "DELETE")])
        .send()
        .unwrap();
    if f.status() == 200 {
        let echo: Value = f.json().unwrap();
        served.push(format!(
            "POST /users/5 with _method=DELETE in the form forwarded as rule {:?}",
            echoed(&echo, "x-stepgate-rule")
        ));
    }
    assert!(
        served.is_empty(),
        "a method override reached the app without the DELETE rule's step-up:\n{}",
        served.join("\n")
    );
}

/// stepgate decides as the bearer token's user but forwards every
/// credential: an app that reads its own cookie (or the last Authorization
/// header) acts for another user than `X-Stepgate-User` says, with the
/// step-up of the first. With a stolen session cookie and one's own PIN,
/// that is the step-up the victim never made.
#[test]
fn the_app_receives_no_credential_of_another_user_than_the_one_judged() {
    let g = gateway("");
    let alice = g.token("alice", &[]);
    let bob = g.token("bob", &[]);
    let c = client();
    let mut problems = Vec::new();
    let text = |s: String| s.into_bytes();
    // (what, [(header, value bytes)])
    type Case<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>);
    let cases: [Case; 4] = [
        (
            "bearer alice + cookie bob",
            vec![
                ("Authorization", text(format!("Bearer {alice}"))),
                ("Cookie", text(format!("access_token={bob}"))),
            ],
        ),
        (
            "two Authorization headers",
            vec![
                ("Authorization", text(format!("Bearer {alice}"))),
                ("Authorization", text(format!("Bearer {bob}"))),
            ],
        ),
        // Apps that keep the first cookie (PHP, Go) read bob's, in a
        // header with a byte that is not UTF-8.
        (
            "bob's cookie in a header with a byte that is not UTF-8",
            vec![
                (
                    "Cookie",
                    [b"x=\xe9; access_token=".as_slice(), bob.as_bytes()].concat(),
                ),
                ("Cookie", text(format!("access_token={alice}"))),
            ],
        ),
        // Werkzeug, Django and SimpleCookie trim the name and keep the last.
        (
            "bob's cookie with a space before `=`",
            vec![(
                "Cookie",
                text(format!("access_token={alice}; access_token ={bob}")),
            )],
        ),
    ];
    for (what, headers) in cases {
        let mut rb = c.get(g.url("/account"));
        for (k, v) in &headers {
            rb = rb.header(*k, reqwest::header::HeaderValue::from_bytes(v).unwrap());
        }
        let r = rb.send().unwrap();
        if r.status() != 200 {
            continue; // refused: fine
        }
        let echo: Value = r.json().unwrap();
        let user = echoed(&echo, "x-stepgate-user").unwrap_or_default();
        let carried: String = echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0] == "authorization" || h[0] == "cookie")
            .map(|h| h[1].as_str().unwrap().to_string())
            .collect();
        if carried.contains(&bob) {
            problems.push(format!(
                "{what}: X-Stepgate-User: {user}, yet the app received bob's token"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// With the peer in `trusted_proxies`, its `X-Forwarded-Host` is forwarded
/// as is, but rules are matched on `Host`. Rails' `request.host` (and any
/// app with `USE_X_FORWARDED_HOST` / trusted-proxy host handling) routes on
/// the forwarded host, here the denied one.
#[test]
fn a_kept_x_forwarded_host_is_the_host_that_was_judged() {
    let g = Gateway::start_with(GatewayOptions {
        policy: "default: none\nrules:\n  - name: admin-host\n    match: { host: \"admin.example.com\" }\n    require: deny\n".into(),
        extra_config: "trusted_proxies: [\"127.0.0.1/32\"]\n".into(),
        ..Default::default()
    });
    let denied = raw(
        g.port,
        b"GET /x HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    );
    assert_eq!(status_of(&denied), 403, "held: the admin host is denied");
    let a = raw(
        g.port,
        b"GET /x HTTP/1.1\r\nHost: www.example.com\r\nX-Forwarded-Host: admin.example.com\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    );
    if let Some(echo) = echo_in(&a) {
        let xfh = echoed(&echo, "x-forwarded-host").unwrap_or_default();
        assert!(
            !xfh.contains("admin.example.com"),
            "judged as www.example.com (rule {:?}), but the app was told X-Forwarded-Host: {xfh}",
            echoed(&echo, "x-stepgate-rule")
        );
    }
}

/// README: "a request head must be complete within 60 s of the connection
/// becoming idle". `HeadDeadline` arms its timer once per connection and
/// disarms it for good at the first head, so every later head on a
/// keep-alive connection may be trickled for as long as Pingora's per-read
/// timeout is fed.
#[test]
fn every_request_head_on_a_keep_alive_connection_has_the_head_deadline() {
    let g = gateway("timeouts:\n  request_head: 1s\n");
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s.write_all(b"GET /public/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 65536];
    let start = Instant::now();
    let mut first = Vec::new();
    while !String::from_utf8_lossy(&first).contains("body_sha256") {
        assert!(start.elapsed() < Duration::from_secs(5), "first answer");
        if let Ok(n) = s.read(&mut buf) {
            first.extend_from_slice(&buf[..n]);
        }
    }
    // Now trickle the next head, one byte every 250 ms, for 4 s (the
    // deadline is 1 s).
    let start = Instant::now();
    let head = b"GET /public/y HTTP/1.1\r\nHost: a\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for b in head.iter() {
        if start.elapsed() > Duration::from_secs(4) {
            break;
        }
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(
        closed,
        "a second head trickled for {:?} kept its connection (request_head: 1s)",
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Ideas that held (regression guards)

/// `K` (KELVIN SIGN) lower-cases to ASCII `k`: the folded reading catches it.
#[test]
fn kelvin_sign_is_read_as_k() {
    let g = gateway("");
    let at = g.token("alice", &[]);
    let r = client()
        .get(g.url("/%E2%84%AAeys/x"))
        .bearer_auth(&at)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// An h2c upgrade (Tomcat with `Http2Protocol`, Go's h2c handler) would
/// turn the connection into HTTP/2 straight to the app, past every rule.
/// Only `Upgrade: websocket` is forwarded; `HTTP2-Settings` never is.
#[test]
fn h2c_upgrade_is_never_forwarded() {
    let g = gateway("");
    let a = raw(
        g.port,
        b"GET /public/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        Duration::from_secs(2),
    );
    let echo = echo_in(&a).expect("the public request is forwarded");
    for h in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(echoed(&echo, h), None, "{h} was forwarded");
    }
}

/// CL+TE, TE variants and duplicate lengths: a second request hidden in a
/// body is never forwarded without being judged.
#[test]
fn smuggled_second_request_is_never_forwarded_unjudged() {
    let g = gateway("");
    let smuggled = "GET /internal/x HTTP/1.1\r\nHost: a\r\n\r\n";
    let attempts = [
        format!(
            "POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        ),
        format!(
            "POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        format!(
            "POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public/x HTTP/1.1\r\nHost: a\r\nX: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
    ];
    for a in &attempts {
        let out = raw(g.port, a.as_bytes(), Duration::from_millis(1200));
        assert!(
            !out.contains("\"/internal/x\""),
            "the denied route was served:\n{a:?}\n{out}"
        );
    }
}

/// Client copies of stepgate's headers, in any spelling and with bare-LF
/// line ends, never reach the app.
#[test]
fn identity_headers_in_any_spelling_never_reach_the_app() {
    let g = gateway("");
    let a = raw(
        g.port,
        b"GET /public/x HTTP/1.1\nHost: a\nX-Stepgate-User: bob\nX_Stepgate_User: bob\nX-STEPGATE-RULE: admin\nx_original_url: /admin/x\nConnection: close\n\n",
        Duration::from_secs(2),
    );
    let echo = echo_in(&a).expect("forwarded");
    assert_eq!(echoed(&echo, "x-stepgate-user"), None);
    assert_eq!(echoed(&echo, "x_stepgate_user"), None);
    assert_eq!(echoed(&echo, "x_original_url"), None);
    assert_eq!(echoed(&echo, "x-stepgate-rule").as_deref(), Some("public"));
}

/// A first-factor cookie whose value is not text is no credential: beside
/// a judged bearer token it is not forwarded either.
#[test]
fn a_first_factor_cookie_that_is_not_text_is_not_forwarded() {
    let g = gateway("");
    let alice = g.token("alice", &[]);
    let r = client()
        .get(g.url("/account"))
        .bearer_auth(&alice)
        .header(
            "Cookie",
            reqwest::header::HeaderValue::from_bytes(b"a=1; access_token=\xffbob").unwrap(),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().unwrap();
    assert_eq!(echoed(&echo, "x-stepgate-user").as_deref(), Some("alice"));
    let cookie = echoed(&echo, "cookie").unwrap_or_default();
    assert!(!cookie.contains("access_token"), "{cookie}");
    assert!(cookie.contains("a=1"), "{cookie}");
}

/// A real Express 4 app with `method-override` (tests/fixtures/override),
/// which runs a POST as any method `_method` names, GET and HEAD included
/// (Rack allows GET and HEAD too). A GET-only step-up rule must hold for a
/// POST that names `_method=GET` or `HEAD`, in the query or the form; found
/// by an attacker's review, where such a POST reached the GET handler as
/// the policy's default (`authenticated`).
#[test]
fn a_post_naming_get_or_head_in_method_needs_the_get_rules_step_up() {
    use common::api::{bearer, put_pin};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/override");
    assert!(
        dir.join("node_modules/.package-lock.json").exists(),
        "the Express test app's packages are missing: run scripts/install-deps.sh test \
         (it runs `npm ci` in {})",
        dir.display()
    );
    let log_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _app = spawn(
        Command::new("node")
            .arg(dir.join("app.js"))
            .arg(port.to_string()),
        log_dir.path().join("express.log"),
    );
    wait_for_port(port, Duration::from_secs(20));
    let g = Gateway::start_in_front_of(
        &format!("http://127.0.0.1:{port}"),
        GatewayOptions {
            policy: "default: authenticated\nrules:\n  - name: reports-export\n    match: { path: \"/reports/export\", methods: [GET] }\n    require: step_up\n    step_up: { methods: [pin], max_age: 5m }\n".into(),
            ..Default::default()
        },
    );
    let at = g.token("alice", &[]);
    let c = client();
    let handler = |r: reqwest::blocking::Response| -> (u16, Value) {
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    };
    let send = |method: reqwest::Method, path: &str, form: Option<&str>, su: Option<&str>| {
        let mut rb =
            bearer(c.request(method, g.url(path)), &at).header("Accept", "application/json");
        if let Some(f) = form {
            rb = rb
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(f.to_string());
        }
        if let Some(su) = su {
            rb = rb.header("X-Stepgate-Token", su);
        }
        handler(rb.send().unwrap())
    };
    // The rule holds for the GET itself.
    let (s, _) = send(reqwest::Method::GET, "/reports/export", None, None);
    assert_eq!(s, 401, "GET /reports/export needs a step-up");
    // A POST that Express runs as the GET (or HEAD) handler needs it too.
    for (path, form) in [
        ("/reports/export?_method=GET", None),
        ("/reports/export", Some("_method=GET")),
        ("/reports/export?_method=HEAD", None),
        ("/reports/export", Some("a=1&_method=HEAD")),
    ] {
        let (s, body) = send(reqwest::Method::POST, path, form, None);
        assert_eq!(
            s, 401,
            "POST {path} (body {form:?}) reached the app without the GET rule's step-up: {body}"
        );
    }
    // A POST that names no method is the POST it is: the default applies.
    let (s, body) = send(reqwest::Method::POST, "/reports/export", Some("a=1"), None);
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["handler"], "POST /reports/export", "{body}");
    // With the step-up, the override reaches the GET handler: this app does
    // run a POST as the method `_method` names.
    enroll_pin(&g, &c, &at, "482913");
    let r = put_pin(&g, &c, &at, "482913");
    assert_eq!(r.status(), 200);
    let su: Value = r.json().unwrap();
    let su = su["SecondFactorValidationToken"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, body) = send(
        reqwest::Method::POST,
        "/reports/export?_method=GET",
        None,
        Some(&su),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["handler"], "GET /reports/export", "{body}");
    assert_eq!(body["originalMethod"], "POST", "{body}");
    assert_eq!(body["rule"], "reports-export", "{body}");
    assert_eq!(body["amr"], "pin", "{body}");
}
