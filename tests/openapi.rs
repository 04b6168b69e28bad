//! Keeps docs/openapi.yaml in sync with the gateway: its API operations are
//! exactly `stepgate::web::json::ROUTES`, and its LoginRadius-spelled ones
//! exactly `stepgate::web::loginradius::ROUTES`, each naming the own
//! operation it is; its references resolve, its error codes are the ones
//! the code answers with, and every documented operation, called on a
//! running gateway, answers with a documented status and a body that fits
//! the documented schema (failures and successes, step-up and PIN
//! lifecycle, both spellings and both forms of LoginRadius's paths).

mod common;

use common::*;

use std::collections::BTreeSet;

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

const SPEC: &str = include_str!("../docs/openapi.yaml");
const PREFIX: &str = "/.stepgate/api";
/// LoginRadius's paths as documented (the root form); the prefix form is
/// `PREFIX` + this.
const LR: &str = "/identity/v2";
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
/// type (one name), required, properties, additionalProperties: false,
/// items, format: date-time.
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
        Some("null") if !v.is_null() => return Err(format!("{at}: {v} is not null")),
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
    let lr = &schemes["loginRadiusApiSecret"];
    assert_eq!(
        (&lr["type"], &lr["in"], &lr["name"]),
        (
            &json!("apiKey"),
            &json!("header"),
            &json!("X-LoginRadius-ApiSecret")
        )
    );
}

#[test]
fn documented_api_operations_are_exactly_the_routes() {
    let s = spec();
    let documented: BTreeSet<(String, String)> = operations(&s)
        .into_iter()
        .filter(|(_, p, _)| p.starts_with(PREFIX))
        .map(|(m, p, _)| (m, p[PREFIX.len()..].to_string()))
        .collect();
    let routes: BTreeSet<(String, String)> = stepgate::web::json::ROUTES
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
            let tags = op["tags"].as_array().expect("tags");
            assert_eq!(tags.len(), 1, "{m} {p} has one tag");
            match tags[0].as_str().unwrap() {
                // Signed-out recovery: no credential at all.
                "pin-recovery" => assert_eq!(*security, json!([]), "{m} {p} is public"),
                // PIN sessions: a token in the query, as with LoginRadius.
                "pin-session" => assert!(
                    matches!(cred_of(&s, op.clone()), Cred::Query(_)),
                    "{m} {p} takes a query token: {security}"
                ),
                tag => {
                    let scheme = if tag == "back-channel" {
                        "apiSecret"
                    } else {
                        "accessToken"
                    };
                    assert_eq!(*security, json!([{ scheme: [] }]), "{m} {p} uses {scheme}");
                }
            }
        } else if !p.starts_with(LR) {
            // The only other paths: the application's protected routes.
            assert!(!p.starts_with("/.stepgate"), "{p} is not an API route");
            assert_eq!(
                op["responses"]["401"]["$ref"],
                "#/components/responses/InsufficientUserAuthentication"
            );
        }
    }
}

/// The own operation that an operation of LoginRadius's spelling names in
/// its `x-stepgate-same-as`.
fn same_as<'a>(ops: &'a [(String, String, Value)], op: &Value) -> &'a (String, String, Value) {
    let id = op["x-stepgate-same-as"]
        .as_str()
        .expect("an x-stepgate-same-as");
    ops.iter()
        .find(|(_, _, o)| o["operationId"] == id)
        .unwrap_or_else(|| panic!("x-stepgate-same-as {id} is an operationId"))
}

/// The documented statuses of an operation.
fn statuses(op: &Value) -> BTreeSet<String> {
    op["responses"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// The JSON schema of a documented answer, references followed.
fn answer_schema<'a>(s: &'a Value, response: &'a Value) -> Option<&'a Value> {
    resolve(s, response)
        .pointer("/content/application~1json/schema")
        .map(|schema| resolve(s, schema))
}

#[test]
fn documented_loginradius_operations_are_exactly_its_routes_and_name_their_own() {
    let s = spec();
    let ops = operations(&s);
    let documented: BTreeSet<(String, String)> = ops
        .iter()
        .filter(|(_, p, _)| p.starts_with(LR))
        .map(|(m, p, _)| (m.clone(), p[LR.len()..].to_string()))
        .collect();
    let routes: BTreeSet<(String, String)> = stepgate::web::loginradius::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let only_documented: Vec<_> = documented.difference(&routes).collect();
    let only_routes: Vec<_> = routes.difference(&documented).collect();
    assert!(
        only_documented.is_empty() && only_routes.is_empty(),
        "docs/openapi.yaml and loginradius::ROUTES differ: documented but not in ROUTES: \
         {only_documented:?}; in ROUTES but not documented: {only_routes:?}"
    );
    assert!(
        s["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "loginradius"),
        "the loginradius tag is described"
    );
    for (m, p, op) in ops.iter().filter(|(_, p, _)| p.starts_with(LR)) {
        let what = format!("{m} {p}");
        assert_eq!(op["tags"], json!(["loginradius"]), "{what}");
        let (_, own_path, own) = same_as(&ops, op);
        assert!(
            own_path.starts_with(PREFIX) && !own_path[PREFIX.len()..].starts_with(LR),
            "{what} names an operation of the own spelling, not {own_path}"
        );
        // Success bodies are the own operation's.
        for st in statuses(own).iter().filter(|st| st.starts_with('2')) {
            assert_eq!(
                answer_schema(&s, &op["responses"][st]),
                answer_schema(&s, &own["responses"][st]),
                "{what}: {st} is {own_path}'s"
            );
        }
        // Errors have LoginRadius's shape, except a body too large, refused
        // before the call is translated.
        for (st, r) in op["responses"].as_object().unwrap() {
            if st.starts_with('2') || st == "413" {
                continue;
            }
            assert_eq!(
                resolve(&s, r).pointer("/content/application~1json/schema/$ref"),
                Some(&json!("#/components/schemas/LrError")),
                "{what}: {st} is an LrError"
            );
        }
        // The signed-in user's own questions: the only operation that is not
        // its own operation's credential and answers (that listing is public).
        if p == &format!("{LR}/auth/securityquestion/accesstoken") {
            assert_eq!(op["security"], json!([{ "accessToken": [] }]), "{what}");
            continue;
        }
        // The same credentials; the API secret also in X-LoginRadius-ApiSecret.
        let mut security = own["security"].clone();
        if security == json!([{ "apiSecret": [] }]) {
            security = json!([{ "apiSecret": [] }, { "loginRadiusApiSecret": [] }]);
        }
        assert_eq!(
            op["security"], security,
            "{what} uses {own_path}'s credentials"
        );
        // The same statuses, a 429 as 403, and 401 for `api.key`.
        let mut expected: BTreeSet<String> = statuses(own)
            .into_iter()
            .map(|st| if st == "429" { "403".to_string() } else { st })
            .collect();
        expected.insert("401".to_string());
        assert_eq!(statuses(op), expected, "{what}: the statuses of {own_path}");
    }
}

/// How an API operation takes its credential, from its `security`.
enum Cred {
    /// `Authorization: Bearer` (access token or API secret).
    Bearer,
    /// An `apiKey` scheme in the query, by parameter name.
    Query(String),
    /// None: a signed-out operation.
    Public,
}

fn cred_of(s: &Value, op: Value) -> Cred {
    let Some(req) = op["security"].as_array().and_then(|a| a.first()) else {
        return Cred::Public;
    };
    let name = req.as_object().unwrap().keys().next().expect("a scheme");
    let scheme = &s["components"]["securitySchemes"][name];
    match (scheme["type"].as_str(), scheme["in"].as_str()) {
        (Some("http"), _) => Cred::Bearer,
        (Some("apiKey"), Some("query")) => {
            Cred::Query(scheme["name"].as_str().unwrap().to_string())
        }
        other => panic!("scheme {name}: {other:?}"),
    }
}

/// `(status, ErrorCode)` pairs in source text: `error(STATUS, CODE, …)` calls,
/// the `x(STATUS, CODE, …)` rows of the flow-error table in web/respond.rs,
/// and `"ErrorCode": CODE` literals.
fn codes_in(src: &str) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let num = |s: &str| -> Option<(u64, usize)> {
        let t = s.trim_start();
        let skipped = s.len() - t.len();
        let d: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
        d.parse().ok().map(|n| (n, skipped + d.len()))
    };
    let calls = src
        .match_indices("error(")
        .map(|(i, _)| i + "error(".len())
        .chain(
            src.match_indices("x(")
                .filter(|(i, _)| *i > 0 && matches!(src.as_bytes()[i - 1], b' ' | b'.'))
                .map(|(i, _)| i + "x(".len()),
        );
    for start in calls {
        let rest = &src[start..];
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
    let mut in_code = codes_in(include_str!("../src/web/api.rs"));
    in_code.extend(codes_in(include_str!("../src/web/json.rs")));
    in_code.extend(codes_in(include_str!("../src/web/pin_api.rs")));
    in_code.extend(codes_in(include_str!("../src/web/loginradius.rs")));
    in_code.extend(codes_in(include_str!("../src/proxy.rs")));
    in_code.extend(codes_in(include_str!("../src/web/replies.rs")));
    in_code.extend(codes_in(include_str!("../src/web/respond.rs")));
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
fn url_for(s: &Value, g: &Gateway, path: &str, op: &Value, item: &Value) -> String {
    let mut url = path.to_string();
    let mut query = Vec::new();
    let params = item["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(op["parameters"].as_array().into_iter().flatten());
    for p in params {
        let p = resolve(s, p);
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
    /// More request headers.
    headers: Vec<(&'static str, String)>,
}

/// A call of an operation with its documented examples, the credential
/// `cred` (when given) placed where the operation takes it.
fn call_for<'a>(
    s: &Value,
    g: &Gateway,
    method: &str,
    path: &str,
    op: &Value,
    cred: Option<&str>,
) -> Call<'a> {
    let mut url = url_for(s, g, path, op, &s["paths"][path]);
    let mut auth = None;
    match (cred_of(s, op.clone()), cred) {
        (Cred::Query(name), Some(v)) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{sep}{name}={v}");
        }
        (_, v) => auth = v.map(str::to_string),
    }
    Call {
        method: method.to_string(),
        url,
        auth,
        step_up: None,
        body: op
            .pointer("/requestBody/content/application~1json/example")
            .cloned(),
        headers: Vec::new(),
    }
}

/// The documented operation `method` `path`.
fn find(ops: &[(String, String, Value)], method: &str, path: &str) -> (String, String, Value) {
    ops.iter()
        .find(|(m, p, _)| m == method && p == path)
        .unwrap_or_else(|| panic!("{method} {path} is documented"))
        .clone()
}

fn send(c: &Client, call: &Call<'_>) -> Response {
    let mut rb = c.request(call.method.parse().unwrap(), &call.url);
    if let Some(a) = &call.auth {
        rb = rb.header("Authorization", format!("Bearer {a}"));
    }
    if let Some(su) = call.step_up {
        rb = rb.header("X-Stepgate-Token", su);
    }
    for (k, v) in &call.headers {
        rb = rb.header(*k, v);
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
    let call_for = |method: &str, path: &str, op: &Value, auth: Option<&str>| {
        call_for(&s, &g, method, path, op, auth)
    };
    let secret_for = |op: &Value| -> String {
        if op["security"][0].get("apiSecret").is_some() {
            API_SECRET.to_string()
        } else if matches!(cred_of(&s, op.clone()), Cred::Query(_)) {
            // PIN session tokens and PINAuthTokens: the user has none yet.
            "not-a-token-0123456789".to_string()
        } else {
            at.clone()
        }
    };
    // 1. Every operation without credentials, then with the documented
    //    examples: answered, documented, fitting its schema. Signed-out
    //    operations are called once. (The mailbox must hold only the step-up
    //    code afterwards: alice has no recovery profile yet, so the forgot
    //    examples send nothing.) LoginRadius's paths have a test of their
    //    own: this gateway does not serve them at the root.
    for (m, p, op) in ops.iter().filter(|(_, p, _)| !p.starts_with(LR)) {
        let what = format!("{m} {p}");
        let (st, body) = assert_documented(&s, &what, op, send(&c, &call_for(m, p, op, None)));
        if matches!(cred_of(&s, op.clone()), Cred::Public) && p.starts_with(PREFIX) {
            assert!(
                ![json!(906), json!(907)].contains(&body["ErrorCode"]),
                "{what} is public: {body}"
            );
            continue;
        }
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
    let find = |m: &str, route: &str| find(&ops, m, route);
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
    assert_eq!((st, v), (200, json!({"IsValid": true, "IsBound": false})));
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
        Some(json!({"secondfactorvalidationtoken": su, "uid": "alice"})),
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

/// The reset link's token in the (last) message of `dir`.
fn mailed_reset_token(dir: &std::path::Path, n: usize) -> String {
    let m = smtp::wait_for_eml(n, || smtp::read_eml_dir(dir, false));
    assert_eq!(m.len(), n, "{n} message(s) were mailed");
    let text = m[n - 1]
        .part("text/plain")
        .expect("a text part")
        .to_string();
    let i = text
        .find("/.stepgate/pin/reset?token=")
        .expect("a reset link")
        + "/.stepgate/pin/reset?token=".len();
    text[i..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

#[test]
fn the_pin_lifecycle_answers_as_documented() {
    let s = spec();
    let g = Gateway::start_with(GatewayOptions {
        policy: POLICY.to_string(),
        extra_config: format!(
            "api:\n  secret: \"{API_SECRET}\"\nmail:\n  from: \"stepgate@gateway.test\"\n  dir: mailbox\npin:\n  required: true\nsecurity_questions:\n  - {{ id: q1, question: \"What was the colour of your first bicycle?\" }}\n  - {{ id: q2, question: \"In which town was your first school?\" }}\n"
        ),
        ..Default::default()
    });
    let c = client();
    let ops = operations(&s);
    let mailbox = g.dir.path().join("mailbox");
    let api = |r: &str| format!("{PREFIX}{r}");
    // An operation with its examples, `cred` where it takes it, `body` or
    // the example body, at `url` (path and query) or the example URL.
    let call =
        |m: &str, route: &str, cred: Option<&str>, body: Option<Value>, url: Option<&str>| {
            let (m, p, op) = find(&ops, m, route);
            let mut call = call_for(&s, &g, &m, &p, &op, cred);
            if body.is_some() {
                call.body = body;
            }
            if let Some(u) = url {
                call.url = g.url(u);
            }
            assert_documented(&s, &format!("{m} {p}"), &op, send(&c, &call))
        };
    let run = |m: &str, route: &str, cred: Option<&str>, body: Option<Value>| {
        call(m, route, cred, body, None)
    };
    let code = |v: &Value| v["ErrorCode"].clone();
    let bob = g.token("bob", &["--email", "bob@example.com", "--username", "Bob"]);

    // 1. pin.required: an API client of a user without a PIN is refused with
    //    1243 and a PINAuthToken, on any signed-in route.
    let (st, refused) = call("GET", "/{protectedPath}", Some(&bob), None, Some("/home"));
    assert_eq!((st, code(&refused)), (403, json!(1243)), "{refused}");
    let pat = refused["PINAuthToken"].as_str().unwrap().to_string();

    // 2. Set the PIN with it (single use): a device PIN session and a
    //    stepgate session come back; the route opens.
    let set_pin = json!({ "PIN": PIN });
    let (st, set) = run(
        "POST",
        &api("/pin/set/pinauthtoken"),
        Some(&pat),
        Some(set_pin.clone()),
    );
    assert_eq!(st, 200, "{set}");
    assert_eq!(set["Profile"]["Uid"], "bob");
    let session = set["session_token"].as_str().unwrap().to_string();
    let (st, again) = run(
        "POST",
        &api("/pin/set/pinauthtoken"),
        Some(&pat),
        Some(set_pin),
    );
    assert_eq!(
        (st, code(&again)),
        (401, json!(1239)),
        "a PINAuthToken works once"
    );
    let (st, _) = call("GET", "/{protectedPath}", Some(&bob), None, Some("/home"));
    assert_eq!(st, 200, "with a PIN the route opens");

    // 3. PIN login: the session token and the PIN give a stepgate session
    //    that is accepted as the first factor.
    let (st, wrong) = run(
        "POST",
        &api("/login/pin"),
        Some(&session),
        Some(json!({"PIN": "1397"})),
    );
    assert_eq!((st, code(&wrong)), (401, json!(1236)));
    let (st, login) = run("POST", &api("/login/pin"), Some(&session), None);
    assert_eq!(st, 200, "{login}");
    let sgs = login["access_token"].as_str().unwrap().to_string();
    assert!(sgs.starts_with("sgs."), "{sgs}");
    let (st, trigger) = run("GET", &api("/stepup/trigger"), Some(&sgs), None);
    assert_eq!((st, trigger["IsPINSet"].clone()), (200, json!(true)));

    // 4. Invalidating the session ends it and the stepgate session.
    let (st, v) = run(
        "GET",
        &api("/session_token/invalidate"),
        Some(&session),
        None,
    );
    assert_eq!((st, v), (200, json!({"IsPosted": true})));
    let (st, ended) = run("POST", &api("/login/pin"), Some(&session), None);
    assert_eq!((st, code(&ended)), (401, json!(1245)));
    let (st, _) = run("GET", &api("/stepup/trigger"), Some(&sgs), None);
    assert_eq!(st, 401, "the stepgate session ended with its PIN session");
    let (st, twice) = run(
        "GET",
        &api("/session_token/invalidate"),
        Some(&session),
        None,
    );
    assert_eq!((st, code(&twice)), (401, json!(1245)));

    // 5. Change the PIN with the access token.
    let change = &api("/pin/change");
    let (st, v) = run(
        "PUT",
        change,
        Some(&bob),
        Some(json!({"OldPIN": "1397", "NewPIN": "1470"})),
    );
    assert_eq!((st, code(&v)), (401, json!(1241)));
    let (st, v) = run(
        "PUT",
        change,
        Some(&bob),
        Some(json!({"OldPIN": PIN, "NewPIN": PIN})),
    );
    assert_eq!(
        (st, code(&v)),
        (400, json!(1248)),
        "the new PIN must differ"
    );
    let (st, v) = run(
        "PUT",
        change,
        Some(&bob),
        Some(json!({"OldPIN": PIN, "NewPIN": "1470"})),
    );
    assert_eq!((st, v), (200, json!({"IsPosted": true})));

    // 6. Security answers: set them (with the PIN), list the questions, reset
    //    the PIN with them. Unknown accounts get questions too.
    let answers = &api("/account/securityquestion");
    let (st, v) = run(
        "PUT",
        answers,
        Some(&bob),
        Some(json!({"securityquestionanswer": [{"QuestionId": "q9", "Answer": "x"}]})),
    );
    assert_eq!((st, code(&v)), (400, json!(1258)));
    // Bob has a PIN: the answers need it (or a step-up), not only a fresh
    // login.
    let (st, v) = run(
        "PUT",
        answers,
        Some(&bob),
        Some(json!({"securityquestionanswer": [{"QuestionId": "q1", "Answer": "Blue"}]})),
    );
    assert_eq!((st, code(&v)), (403, json!(1261)));
    let (st, v) = run(
        "PUT",
        answers,
        Some(&bob),
        Some(
            json!({"securityquestionanswer": [{"QuestionId": "q1", "Answer": "Blue"}], "PIN": "1470"}),
        ),
    );
    assert_eq!((st, v), (200, json!({"IsPosted": true})));
    let questions = &api("/securityquestion");
    let (st, qs) = call(
        "GET",
        questions,
        None,
        None,
        Some(&format!("{questions}?username=BOB")),
    );
    assert_eq!(
        (st, qs),
        (
            200,
            json!([
                {"QuestionId": "q1", "Question": "What was the colour of your first bicycle?"},
                {"QuestionId": "q2", "Question": "In which town was your first school?"}
            ])
        )
    );
    let (st, decoy) = call(
        "GET",
        questions,
        None,
        None,
        Some(&format!("{questions}?username=nobody")),
    );
    assert_eq!(st, 200, "{decoy}");
    assert_eq!(decoy.as_array().unwrap().len(), 2, "{decoy}");
    let by_answers = &api("/pin/reset/securityanswer/username");
    let (st, v) = run(
        "PUT",
        by_answers,
        None,
        Some(json!({"PIN": "3692", "UserName": "BOB", "SecurityAnswer": {"q1": "green"}})),
    );
    assert_eq!((st, code(&v)), (401, json!(1257)));
    let (st, v) = run(
        "PUT",
        by_answers,
        None,
        Some(json!({"PIN": "3692", "UserName": "BOB", "SecurityAnswer": {"q1": "  BLUE "}})),
    );
    assert_eq!((st, v), (200, json!({"IsPosted": true})));

    // 7. Forgot by email: the same answer for an unknown address; for bob, a
    //    link whose ResetToken works once.
    let forgot = &api("/pin/forgot/email");
    let (st, v) = run(
        "POST",
        forgot,
        None,
        Some(json!({"Email": "nobody@example.com"})),
    );
    assert_eq!((st, v), (200, json!({"IsPosted": true})));
    let (st, v) = run(
        "POST",
        forgot,
        None,
        Some(json!({"Email": "bob@example.com"})),
    );
    assert_eq!((st, v), (200, json!({"IsPosted": true})));
    let (st, v) = run(
        "POST",
        forgot,
        None,
        Some(json!({"Email": "bob@example.com"})),
    );
    assert_eq!((st, code(&v)), (429, json!(1179)), "cooldown");
    let (st, v) = run(
        "POST",
        forgot,
        None,
        Some(json!({"Email": "bob@example.com", "resetpinurl": "https://evil.example/steal"})),
    );
    assert_eq!((st, code(&v)), (400, json!(1259)));
    let token = mailed_reset_token(&mailbox, 1);
    let reset = &api("/pin/reset/token");
    let (st, v) = run(
        "PUT",
        reset,
        None,
        Some(json!({"PIN": "2580", "ResetToken": token})),
    );
    assert_eq!((st, v), (200, json!({"IsPosted": true})));
    let (st, v) = run(
        "PUT",
        reset,
        None,
        Some(json!({"PIN": "2580", "ResetToken": token})),
    );
    assert_eq!(
        (st, code(&v)),
        (400, json!(1242)),
        "a ResetToken works once"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        smtp::read_eml_dir(&mailbox, false).len(),
        1,
        "nothing was sent for the unknown address"
    );
}

/// A gateway for LoginRadius's paths: the API secret, mail to a folder,
/// security questions, and `api.loginradius_root` as given.
fn loginradius_gateway(root: bool) -> Gateway {
    Gateway::start_with(GatewayOptions {
        policy: POLICY.to_string(),
        extra_config: format!(
            "api:\n  secret: \"{API_SECRET}\"\n  loginradius_root: {root}\nmail:\n  from: \"stepgate@gateway.test\"\n  dir: mailbox\nsecurity_questions:\n  - {{ id: q1, question: \"What was the colour of your first bicycle?\" }}\n  - {{ id: q2, question: \"In which town was your first school?\" }}\n"
        ),
        ..Default::default()
    })
}

#[test]
fn loginradius_paths_answer_as_documented_in_both_forms() {
    let s = spec();
    // Root form here; the prefix form on a gateway of its own (the forgot
    // cooldowns would otherwise answer the second call), which does not
    // serve the root.
    let g = loginradius_gateway(true);
    let off = loginradius_gateway(false);
    let c = client();
    let all = operations(&s);
    let ops: Vec<_> = all.iter().filter(|(_, p, _)| p.starts_with(LR)).collect();
    let code = |v: &Value| v["ErrorCode"].clone();

    // 1. Every operation without credentials, with the documented examples:
    //    answered, documented, fitting its schema; the same status in the
    //    prefix form; not stepgate's at the root without loginradius_root.
    //    (alice has no recovery profile yet: the forgot examples send
    //    nothing.)
    for (m, p, op) in &ops {
        let what = format!("{m} {p}");
        let (st, body) =
            assert_documented(&s, &what, op, send(&c, &call_for(&s, &g, m, p, op, None)));
        match cred_of(&s, op.clone()) {
            Cred::Public => assert!(
                ![json!(905), json!(906), json!(907)].contains(&code(&body)),
                "{what} is public: {body}"
            ),
            _ => assert_eq!(st, 401, "{what} needs credentials: {body}"),
        }
        let mut prefixed = call_for(&s, &off, m, p, op, None);
        prefixed.url = prefixed.url.replacen(LR, &format!("{PREFIX}{LR}"), 1);
        let (st2, body2) = assert_documented(
            &s,
            &format!("{what} (prefix form)"),
            op,
            send(&c, &prefixed),
        );
        assert_eq!(
            (st2, code(&body2)),
            (st, code(&body)),
            "{what}: both forms answer alike: {body} / {body2}"
        );
        let r = send(&c, &call_for(&s, &off, m, p, op, None));
        let text = r.text().unwrap();
        assert!(
            !text.contains("ErrorCode"),
            "{what}: without api.loginradius_root the root path is the app's: {text}"
        );
    }

    // 2. With loginradius_root everything under /identity is stepgate's:
    //    what it does not serve is 404 (405 for another method), in
    //    LoginRadius's shape, never forwarded.
    let lr_error = json!({ "$ref": "#/components/schemas/LrError" });
    for (m, path, want) in [
        ("POST", "/identity/v2/auth/login", 404),
        ("POST", "/identity/v2/auth/login/2fa", 404),
        ("GET", "/identity/v2/auth/socialidentity", 404),
        ("PUT", "/IDENTITY/v2/auth/password/change", 404),
        ("GET", "/identity/v1/whatever", 404),
        ("GET", "/identity", 404),
        ("DELETE", "/identity/v2/auth/account/reauth/pin", 405),
    ] {
        let r = c.request(m.parse().unwrap(), g.url(path)).send().unwrap();
        assert_eq!(r.status().as_u16(), want, "{m} {path}");
        let body: Value = r.json().unwrap();
        check(&s, &lr_error, &body, "body").unwrap_or_else(|e| panic!("{m} {path}: {e}"));
        assert_eq!(code(&body), json!(901), "{m} {path}");
    }

    // 3. The successes, in LoginRadius's spelling.
    let at = g.token("alice", &["--email", EMAIL]);
    enroll(&g, &c, &at);
    // An operation with its examples, `cred` where it takes it, `body` or
    // the example body, at `url` or the example URL, with `headers`; the
    // status, the body and the Retry-After header.
    let run = |m: &str,
               path: &str,
               cred: Option<&str>,
               body: Option<Value>,
               url: Option<&str>,
               headers: Vec<(&'static str, String)>| {
        let (m, p, op) = find(&all, m, path);
        let mut call = call_for(&s, &g, &m, &p, &op, cred);
        if body.is_some() {
            call.body = body;
        }
        if let Some(u) = url {
            call.url = g.url(u);
        }
        call.headers = headers;
        let r = send(&c, &call);
        let retry_after = header(&r, "retry-after");
        let (st, v) = assert_documented(&s, &format!("{m} {p}"), &op, r);
        (st, v, retry_after)
    };
    let lr = |r: &str| format!("{LR}{r}");
    let secret = || vec![("X-LoginRadius-ApiSecret", API_SECRET.to_string())];

    // The trigger: LoginRadius's whole field set.
    let (st, trigger, _) = run(
        "GET",
        &lr("/auth/account/reauth/2fa"),
        Some(&at),
        None,
        None,
        vec![],
    );
    assert_eq!(st, 200);
    assert_eq!(
        (
            &trigger["IsPINSet"],
            &trigger["IsPINAuthenticatorVerified"],
            &trigger["IsEmailOtpAuthenticatorVerified"],
            &trigger["Email"],
            &trigger["OTPStatus"],
        ),
        (
            &json!(true),
            &json!(true),
            &json!(true),
            &json!([EMAIL]),
            &Value::Null
        ),
        "{trigger}"
    );

    // Step up by PIN; the back end validates it for the uid in the path,
    // with the secret in X-LoginRadius-ApiSecret, and for the PIN only.
    let pin = &lr("/auth/account/reauth/pin");
    let (st, wrong, _) = run(
        "PUT",
        pin,
        Some(&at),
        Some(json!({"PIN": "1397"})),
        None,
        vec![],
    );
    assert_eq!((st, code(&wrong)), (401, json!(1236)), "{wrong}");
    assert_eq!(wrong["IsProviderError"], json!(false));
    let (st, tok, _) = run("PUT", pin, Some(&at), None, None, vec![]);
    assert_eq!(st, 200, "{tok}");
    let su = tok["SecondFactorValidationToken"]
        .as_str()
        .unwrap()
        .to_string();
    let validate = |factor: &str, uid: &str, token: &str| {
        let (st, v, _) = run(
            "POST",
            &lr(&format!("/manage/account/{{uid}}/reauth/{factor}")),
            None,
            Some(json!({ "SecondFactorValidationToken": token })),
            Some(&lr(&format!("/manage/account/{uid}/reauth/{factor}"))),
            secret(),
        );
        assert_eq!(st, 200, "{v}");
        v["IsValid"].clone()
    };
    assert_eq!(validate("pin", "alice", &su), json!(true));
    assert_eq!(validate("pin", "bob", &su), json!(false), "another user's");
    assert_eq!(
        validate("2fa", "alice", &su),
        json!(false),
        "a PIN step-up is not an MFA one"
    );

    // An email code; a second one at once is 403 with Data here, where the
    // own spelling answers 429.
    let (st, posted, _) = run(
        "GET",
        &lr("/auth/account/reauth/otp/email"),
        Some(&at),
        None,
        None,
        vec![],
    );
    assert_eq!((st, posted), (200, json!({"IsPosted": true})));
    let (st, again, retry_after) = run(
        "GET",
        &lr("/auth/account/reauth/2fa/otp/email"),
        Some(&at),
        None,
        None,
        vec![],
    );
    assert_eq!((st, code(&again)), (403, json!(1179)), "{again}");
    assert!(again["Data"]["RetryAfter"].is_i64(), "{again}");
    assert_eq!(retry_after, again["Data"]["RetryAfter"].to_string());
    let (st, own, _) = run(
        "GET",
        &format!("{PREFIX}/stepup/otp/email"),
        Some(&at),
        None,
        None,
        vec![],
    );
    assert_eq!(
        (st, code(&own)),
        (429, json!(1179)),
        "the own spelling: {own}"
    );
    let otp = mailed_code(&g.dir.path().join("mailbox"));
    let (st, tok, _) = run(
        "PUT",
        &lr("/auth/account/reauth/2fa/otp/email/verify"),
        Some(&at),
        Some(json!({"EmailId": EMAIL, "Otp": otp})),
        None,
        vec![],
    );
    assert_eq!(st, 200, "{tok}");
    let su = tok["SecondFactorValidationToken"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(validate("2fa", "alice", &su), json!(true));
    assert_eq!(
        validate("pin", "alice", &su),
        json!(false),
        "an MFA step-up is not a PIN one"
    );

    // Security answers through the profile update, in LoginRadius's form;
    // any other profile field refuses the whole update.
    let account = &lr("/auth/account");
    let (st, v, _) = run(
        "PUT",
        account,
        Some(&at),
        Some(json!({"securityquestionanswer": {"q1": "Blue"}, "PIN": PIN})),
        None,
        vec![],
    );
    assert_eq!((st, v), (200, json!({"IsPosted": true})));
    let (st, v, _) = run(
        "PUT",
        account,
        Some(&at),
        Some(json!({"FirstName": "Alice", "securityquestionanswer": {"q2": "Paris"}, "PIN": PIN})),
        None,
        vec![],
    );
    assert_eq!((st, code(&v)), (400, json!(901)), "{v}");
    let (st, qs, _) = run(
        "GET",
        &lr("/auth/securityquestion/accesstoken"),
        Some(&at),
        None,
        None,
        vec![],
    );
    assert_eq!(
        (st, qs),
        (
            200,
            json!([{"QuestionId": "q1", "Question": "What was the colour of your first bicycle?"}])
        ),
        "only the answer saved"
    );
}
