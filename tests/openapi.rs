//! Keeps docs/openapi.yaml in sync with the gateway: its API operations are
//! exactly `stepgate::endpoints::api::ROUTES`, its references resolve, its
//! error codes are the ones the code answers with, and every documented
//! operation, called on a running gateway, answers with a documented status
//! and a body that fits the documented schema (failures and successes).

mod common;
#[path = "common/smtp.rs"]
mod smtp;

use common::*;

use std::collections::BTreeSet;

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

const SPEC: &str = include_str!("../docs/openapi.yaml");
const PREFIX: &str = "/.stepgate/api";
const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
const API_SECRET: &str = "openapi-test-api-secret-0123456789abcdef";
const PIN: &str = "2580";
const EMAIL: &str = "alice@example.com";

fn spec() -> Value {
    serde_yaml::from_str(SPEC).expect("docs/openapi.yaml is YAML")
}

/// Every operation: (METHOD, path template, operation object).
fn operations(spec: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (k, op) in item.as_object().unwrap() {
            if HTTP_METHODS.contains(&k.as_str()) {
                out.push((k.to_ascii_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    out
}

/// Follow a local `$ref` (`#/components/...`).
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = spec
                .pointer(r.strip_prefix('#').expect("local $ref"))
                .unwrap_or_else(|| panic!("$ref {r} does not resolve"));
            resolve(spec, target)
        }
        None => v,
    }
}

/// Check `v` against a (small) JSON Schema subset: $ref, oneOf, const, enum,
/// type, required, properties, additionalProperties: false, items,
/// format: date-time.
fn check(spec: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if let Some(alts) = schema.get("oneOf").and_then(Value::as_array) {
        let errs: Vec<String> = alts
            .iter()
            .filter_map(|s| check(spec, s, v, at).err())
            .collect();
        return if errs.len() == alts.len() - 1 {
            Ok(())
        } else {
            Err(format!(
                "{at}: matches {} of oneOf: {errs:?}",
                alts.len() - errs.len()
            ))
        };
    }
    if let Some(c) = schema.get("const") {
        if c != v {
            return Err(format!("{at}: {v} is not the const {c}"));
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{at}: {v} is not one of {e:?}"));
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let o = v.as_object().ok_or(format!("{at}: {v} is not an object"))?;
            let props = schema.get("properties").and_then(Value::as_object);
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let r = r.as_str().unwrap();
                if !o.contains_key(r) {
                    return Err(format!("{at}: `{r}` is required in {v}"));
                }
            }
            for (k, val) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => check(spec, s, val, &format!("{at}.{k}"))?,
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        return Err(format!("{at}: `{k}` is not documented"))
                    }
                    None => {}
                }
            }
        }
        Some("array") => {
            let a = v.as_array().ok_or(format!("{at}: {v} is not an array"))?;
            if let Some(items) = schema.get("items") {
                for (i, x) in a.iter().enumerate() {
                    check(spec, items, x, &format!("{at}[{i}]"))?;
                }
            }
        }
        Some("string") => {
            let s = v.as_str().ok_or(format!("{at}: {v} is not a string"))?;
            if schema.get("format").and_then(Value::as_str) == Some("date-time") {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| format!("{at}: {s:?} is not a date-time: {e}"))?;
            }
        }
        Some("integer") if !v.is_i64() && !v.is_u64() => {
            return Err(format!("{at}: {v} is not an integer"))
        }
        Some("boolean") if !v.is_boolean() => return Err(format!("{at}: {v} is not a boolean")),
        _ => {}
    }
    Ok(())
}

fn walk_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => walk_refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk_refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_description_is_openapi_3_1_with_resolving_references() {
    let s = spec();
    assert!(s["openapi"].as_str().unwrap().starts_with("3.1."));
    let mut refs = Vec::new();
    walk_refs(&s, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        assert!(
            s.pointer(r.strip_prefix('#').unwrap()).is_some(),
            "$ref {r} resolves"
        );
    }
    let mut ids = BTreeSet::new();
    for (m, p, op) in operations(&s) {
        let id = op["operationId"].as_str().expect("an operationId");
        assert!(ids.insert(id.to_string()), "operationId {id} is unique");
        let statuses: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        assert!(
            statuses.iter().any(|k| k.starts_with('2')),
            "{m} {p} documents a success"
        );
    }
    let schemes = &s["components"]["securitySchemes"];
    for name in ["accessToken", "apiSecret"] {
        assert_eq!(schemes[name]["type"], "http", "{name}");
        assert_eq!(schemes[name]["scheme"], "bearer", "{name}");
    }
    assert_eq!(schemes["stepUpToken"]["name"], "X-Stepgate-Token");
}

#[test]
fn documented_api_operations_are_exactly_the_routes() {
    let s = spec();
    let documented: BTreeSet<(String, String)> = operations(&s)
        .into_iter()
        .filter(|(_, p, _)| p.starts_with(PREFIX))
        .map(|(m, p, _)| (m, p[PREFIX.len()..].to_string()))
        .collect();
    let routes: BTreeSet<(String, String)> = stepgate::endpoints::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let only_documented: Vec<_> = documented.difference(&routes).collect();
    let only_routes: Vec<_> = routes.difference(&documented).collect();
    assert!(
        only_documented.is_empty() && only_routes.is_empty(),
        "docs/openapi.yaml and api::ROUTES differ: documented but not in ROUTES: \
         {only_documented:?}; in ROUTES but not documented: {only_routes:?}"
    );
    for (m, p, op) in operations(&s) {
        let security = &op["security"];
        if p.starts_with(PREFIX) {
            let scheme = if op["tags"] == json!(["back-channel"]) {
                "apiSecret"
            } else {
                "accessToken"
            };
            assert_eq!(*security, json!([{ scheme: [] }]), "{m} {p} uses {scheme}");
        } else {
            // The only other paths: the application's protected routes.
            assert!(!p.starts_with("/.stepgate"), "{p} is not an API route");
            assert_eq!(
                op["responses"]["401"]["$ref"],
                "#/components/responses/InsufficientUserAuthentication"
            );
        }
    }
}

/// `(status, ErrorCode)` pairs in source text: `error(STATUS, CODE, …)` calls
/// and `"ErrorCode": CODE` literals.
fn codes_in(src: &str) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let num = |s: &str| -> Option<(u64, usize)> {
        let t = s.trim_start();
        let skipped = s.len() - t.len();
        let d: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
        d.parse().ok().map(|n| (n, skipped + d.len()))
    };
    for (i, _) in src.match_indices("error(") {
        let rest = &src[i + "error(".len()..];
        let Some((_, used)) = num(rest) else { continue };
        let Some(after) = rest[used..].trim_start().strip_prefix(',') else {
            continue;
        };
        if let Some((code, _)) = num(after) {
            out.insert(code);
        }
    }
    for (i, _) in src.match_indices("\"ErrorCode\": ") {
        if let Some((code, _)) = num(&src[i + "\"ErrorCode\": ".len()..]) {
            out.insert(code);
        }
    }
    out
}

#[test]
fn documented_error_codes_are_the_ones_the_gateway_answers_with() {
    let s = spec();
    let p = &s["components"]["schemas"]["Error"]["properties"]["ErrorCode"];
    let documented: BTreeSet<u64> = p["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    let mut in_code = codes_in(include_str!("../src/endpoints/api.rs"));
    in_code.extend(codes_in(include_str!("../src/proxy.rs")));
    assert!(
        in_code.contains(&1236) && in_code.contains(&901),
        "{in_code:?}"
    );
    assert_eq!(documented, in_code, "ErrorCode enum vs the code");
    let table = p["description"].as_str().unwrap();
    for c in documented {
        assert!(table.contains(&format!("`{c}`")), "{c} is explained");
    }
}

// ---------------------------------------------------------------------------
// Against a running gateway
// ---------------------------------------------------------------------------

const POLICY: &str = r#"
default: authenticated
rules:
  - name: settings
    match: { path: "/settings" }
    require: step_up
    step_up: { methods: [pin, email_otp], max_age: 5m }
"#;

/// The URL of an operation, path and query parameters filled from the
/// documented examples.
fn url_for(g: &Gateway, path: &str, op: &Value, item: &Value) -> String {
    let mut url = path.to_string();
    let mut query = Vec::new();
    let params = item["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(op["parameters"].as_array().into_iter().flatten());
    for p in params {
        let example = p["example"].as_str();
        match p["in"].as_str().unwrap() {
            "path" => {
                let name = p["name"].as_str().unwrap();
                url = url.replace(&format!("{{{name}}}"), example.expect("path example"));
            }
            "query" => {
                if let Some(e) = example {
                    query.push(format!("{}={e}", p["name"].as_str().unwrap()));
                }
            }
            _ => {}
        }
    }
    assert!(
        !url.contains('{'),
        "every path parameter has an example: {url}"
    );
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    g.url(&url)
}

/// Assert `r` is documented for `op` (status and JSON schema); its body.
fn assert_documented(s: &Value, what: &str, op: &Value, r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let is_json = r
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("application/json"));
    let text = r.text().unwrap();
    assert_ne!(status, 404, "{what} is served: {text}");
    let documented = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{what}: status {status} is not documented: {text}"));
    let resp = resolve(s, documented);
    let body = if is_json {
        serde_json::from_str(&text).unwrap()
    } else {
        Value::Null
    };
    if let Some(schema) = resp.pointer("/content/application~1json/schema") {
        assert!(is_json, "{what}: {status} is JSON: {text}");
        check(s, schema, &body, "body")
            .unwrap_or_else(|e| panic!("{what}: {status} does not fit its schema: {e}"));
    }
    (status, body)
}

struct Call<'a> {
    method: String,
    url: String,
    auth: Option<String>,
    step_up: Option<&'a str>,
    body: Option<Value>,
}

fn send(c: &Client, call: &Call<'_>) -> Response {
    let mut rb = c.request(call.method.parse().unwrap(), &call.url);
    if let Some(a) = &call.auth {
        rb = rb.header("Authorization", format!("Bearer {a}"));
    }
    if let Some(su) = call.step_up {
        rb = rb.header("X-Stepgate-Token", su);
    }
    if let Some(b) = &call.body {
        rb = rb.json(b);
    }
    rb.send().unwrap()
}

fn enroll(g: &Gateway, c: &Client, at: &str) {
    enroll_pin(g, c, at, PIN);
}

/// The code in the (one) message the folder mailer wrote.
fn mailed_code(dir: &std::path::Path) -> String {
    let m = smtp::wait_for_eml(1, || smtp::read_eml_dir(dir, false));
    assert_eq!(m.len(), 1, "one code was mailed");
    m[0].code()
}

#[test]
fn every_documented_operation_is_served_and_answers_as_documented() {
    let s = spec();
    let g = Gateway::start_with(GatewayOptions {
        policy: POLICY.to_string(),
        extra_config: format!(
            "api:\n  secret: \"{API_SECRET}\"\nmail:\n  from: \"stepgate@gateway.test\"\n  dir: mailbox\n"
        ),
        ..Default::default()
    });
    let c = client();
    let at = g.token("alice", &["--email", EMAIL]);
    let ops = operations(&s);
    let call_for = |method: &str, path: &str, op: &Value, auth: Option<&str>| Call {
        method: method.to_string(),
        url: url_for(&g, path, op, &s["paths"][path]),
        auth: auth.map(str::to_string),
        step_up: None,
        body: op
            .pointer("/requestBody/content/application~1json/example")
            .cloned(),
    };
    let secret_for = |op: &Value| -> String {
        if op["security"][0].get("apiSecret").is_some() {
            API_SECRET.to_string()
        } else {
            at.clone()
        }
    };
    // 1. Every operation without credentials, then with the documented
    //    examples: answered, documented, fitting its schema.
    for (m, p, op) in &ops {
        let what = format!("{m} {p}");
        let (st, _) = assert_documented(&s, &what, op, send(&c, &call_for(m, p, op, None)));
        assert_eq!(st, 401, "{what} needs credentials");
        let secret = secret_for(op);
        let (_, body) =
            assert_documented(&s, &what, op, send(&c, &call_for(m, p, op, Some(&secret))));
        assert!(
            ![json!(906), json!(907)].contains(&body["ErrorCode"])
                && body["error"] != "invalid_token",
            "{what} accepts its credentials: {body}"
        );
    }

    // 2. The successes, in the order a client goes through them.
    let find = |m: &str, route: &str| {
        ops.iter()
            .find(|(om, op_path, _)| om == m && op_path.as_str() == route)
            .unwrap_or_else(|| panic!("{m} {route} is documented"))
            .clone()
    };
    let run = |m: &str, route: &str, auth: &str, step_up: Option<&str>, body: Option<Value>| {
        let (m, p, op) = find(m, route);
        let mut call = call_for(&m, &p, &op, Some(auth));
        call.step_up = step_up;
        if body.is_some() {
            call.body = body;
        }
        assert_documented(&s, &format!("{m} {p}"), &op, send(&c, &call))
    };
    let api = |r: &str| format!("{PREFIX}{r}");
    enroll(&g, &c, &at);
    let (st, trigger) = run("GET", &api("/stepup/trigger"), &at, None, None);
    assert_eq!((st, trigger["IsPINSet"].clone()), (200, json!(true)));
    let (st, wrong) = run(
        "PUT",
        &api("/stepup/pin"),
        &at,
        None,
        Some(json!({"PIN": "1397"})),
    );
    assert_eq!((st, wrong["ErrorCode"].clone()), (401, json!(1236)));
    let (st, tok) = run("PUT", &api("/stepup/pin"), &at, None, None);
    assert_eq!(st, 200);
    let su = tok["SecondFactorValidationToken"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, _) = run("GET", "/{protectedPath}", &at, Some(&su), None);
    assert_eq!(st, 200, "the token opens the protected route");
    let (st, _) = run("POST", "/{protectedPath}", &at, Some(&su), None);
    assert_eq!(st, 200);
    let (st, v) = run(
        "POST",
        &api("/stepup/validate"),
        API_SECRET,
        None,
        Some(json!({"secondfactorvalidationtoken": su, "uid": "alice"})),
    );
    assert_eq!((st, v), (200, json!({"IsValid": true})));
    // Step-down: the token stops counting, here and for the back end.
    let (m, p, op) = find("POST", &api("/manage/account/{uid}/invalidate"));
    let mut call = call_for(&m, &p, &op, Some(API_SECRET));
    call.url = g.url(&api("/manage/account/alice/invalidate"));
    let (st, v) = assert_documented(&s, "step-down of alice", &op, send(&c, &call));
    assert_eq!((st, v), (200, json!({"IsPosted": true})));
    let (st, _) = run("GET", "/{protectedPath}", &at, Some(&su), None);
    assert_eq!(st, 401, "an invalidated step-up no longer opens the route");
    let (st, v) = run(
        "POST",
        &api("/stepup/validate"),
        API_SECRET,
        None,
        Some(json!({"secondfactorvalidationtoken": su})),
    );
    assert_eq!((st, v), (200, json!({"IsValid": false})));
    // Step 1 already sent a code (the documented example address).
    let (st, posted) = run("GET", &api("/stepup/otp/email"), &at, None, None);
    assert_eq!(
        (st, posted["ErrorCode"].clone()),
        (429, json!(1179)),
        "cooldown"
    );
    let code = mailed_code(&g.dir.path().join("mailbox"));
    let (st, tok) = run(
        "PUT",
        &api("/stepup/otp/email"),
        &at,
        None,
        Some(json!({"EmailId": EMAIL, "OTP": code})),
    );
    assert_eq!(st, 200);
    assert!(tok["SecondFactorValidationToken"].is_string());
}
