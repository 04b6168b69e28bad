//! LoginRadius's own spelling of the JSON API (LOGINRADIUS.md): the PIN and
//! step-up operations at LoginRadius's paths, methods, query names and
//! bodies, so a client written with LoginRadius's SDKs ports by changing its
//! API domain. Served under `/.stepgate/api/identity/v2/…` always, and at
//! the root `/identity/v2/…` with `api.loginradius_root`.
//!
//! Nothing here implements a flow: each call is translated to the one
//! operation of stepgate's own API ([`super::api`]) it names, and the answer
//! is translated back to LoginRadius's shapes (an `ErrorCode` body with
//! `IsProviderError`, never a bare 429, which the SDKs swallow).

use serde_json::{json, Map, Value};

use super::json::{error, rfc3339};
use super::Req;
use crate::gate::Gate;
use crate::policy::Factor;
use crate::reply::Reply;

/// What a LoginRadius call is in stepgate's own API.
enum Call {
    /// The same operation at this own route (path under /.stepgate/api).
    Own(&'static str),
    /// Server-side validation of a step-up token for the user in the path:
    /// `/manage/account/{uid}/reauth/{pin,2fa}`.
    Validate { uid: String, factor: Factor },
    /// The questions the token's user answered.
    QuestionsOfToken,
    /// `PUT /auth/account` with only `securityquestionanswer` in the body.
    SetAnswers,
}

/// Every LoginRadius operation served, as (method, path under /identity/v2);
/// docs/openapi.yaml describes them (checked by a test).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/auth/login/pin"),
    ("POST", "/auth/pin/set/pinauthtoken"),
    ("PUT", "/auth/pin/change"),
    ("POST", "/auth/pin/forgot/email"),
    ("POST", "/auth/pin/forgot/username"),
    ("POST", "/auth/pin/forgot/otp"),
    ("GET", "/auth/session_token/invalidate"),
    ("PUT", "/auth/pin/reset/token"),
    ("PUT", "/auth/pin/reset/otp/email"),
    ("PUT", "/auth/pin/reset/otp/phone"),
    ("PUT", "/auth/pin/reset/otp/username"),
    ("PUT", "/auth/pin/reset/securityanswer/email"),
    ("PUT", "/auth/pin/reset/securityanswer/phone"),
    ("PUT", "/auth/pin/reset/securityanswer/username"),
    ("GET", "/auth/securityquestion/email"),
    ("GET", "/auth/securityquestion/username"),
    ("GET", "/auth/securityquestion/phone"),
    ("GET", "/auth/securityquestion/accesstoken"),
    ("PUT", "/auth/account"),
    ("PUT", "/auth/account/reauth/pin"),
    ("GET", "/auth/account/reauth/2fa"),
    ("GET", "/auth/account/reauth/2fa/otp/email"),
    ("PUT", "/auth/account/reauth/2fa/otp/email/verify"),
    ("GET", "/auth/account/reauth/otp/email"),
    ("PUT", "/auth/account/reauth/otp/email"),
    ("POST", "/manage/account/{uid}/reauth/pin"),
    ("POST", "/manage/account/{uid}/reauth/2fa"),
];

/// The own operation behind a LoginRadius route, or why there is none.
fn call(method: &str, route: &str) -> Result<Call, Reply> {
    if let Some(rest) = route.strip_prefix("/manage/account/") {
        if let Some((uid, action)) = rest.split_once('/') {
            let factor = match action.to_ascii_lowercase().as_str() {
                "reauth/pin" => Some(Factor::Pin),
                "reauth/2fa" => Some(Factor::EmailOtp),
                _ => None,
            };
            if let Some(factor) = factor {
                if method != "POST" {
                    return Err(not_allowed("POST"));
                }
                let uid = super::api::decode_uid(uid);
                return Ok(Call::Validate { uid, factor });
            }
        }
        return Err(unknown());
    }
    let lower = route.to_ascii_lowercase();
    let same_path = || ROUTES.iter().filter(|(_, p)| *p == lower);
    let Some(path) = same_path().find(|(m, _)| *m == method).map(|(_, p)| *p) else {
        let allowed: Vec<&str> = same_path().map(|(m, _)| *m).collect();
        return Err(match allowed.is_empty() {
            true => unknown(),
            false => not_allowed(&allowed.join(" or ")),
        });
    };
    let own = match path {
        "/auth/login/pin" => "/login/pin",
        "/auth/pin/set/pinauthtoken" => "/pin/set/pinauthtoken",
        "/auth/pin/change" => "/pin/change",
        "/auth/pin/forgot/email" => "/pin/forgot/email",
        "/auth/pin/forgot/username" => "/pin/forgot/username",
        "/auth/pin/forgot/otp" => "/pin/forgot/otp",
        "/auth/session_token/invalidate" => "/session_token/invalidate",
        "/auth/pin/reset/token" => "/pin/reset/token",
        "/auth/pin/reset/otp/email" => "/pin/reset/otp/email",
        "/auth/pin/reset/otp/phone" => "/pin/reset/otp/phone",
        "/auth/pin/reset/otp/username" => "/pin/reset/otp/username",
        "/auth/pin/reset/securityanswer/email" => "/pin/reset/securityanswer/email",
        "/auth/pin/reset/securityanswer/phone" => "/pin/reset/securityanswer/phone",
        "/auth/pin/reset/securityanswer/username" => "/pin/reset/securityanswer/username",
        "/auth/securityquestion/email"
        | "/auth/securityquestion/username"
        | "/auth/securityquestion/phone" => "/securityquestion",
        "/auth/securityquestion/accesstoken" => return Ok(Call::QuestionsOfToken),
        "/auth/account" => return Ok(Call::SetAnswers),
        "/auth/account/reauth/pin" => "/stepup/pin",
        "/auth/account/reauth/2fa" => "/stepup/trigger",
        "/auth/account/reauth/2fa/otp/email" | "/auth/account/reauth/otp/email"
            if method == "GET" =>
        {
            "/stepup/otp/email"
        }
        _ => "/stepup/otp/email",
    };
    Ok(Call::Own(own))
}

fn unknown() -> Reply {
    error(
        404,
        901,
        "Not found",
        "stepgate serves LoginRadius's PIN and step-up operations only (see docs/openapi.yaml).",
    )
}

fn not_allowed(expected: &str) -> Reply {
    error(405, 901, "Method not allowed", &format!("Use {expected}."))
}

/// Query names in lower case (LoginRadius's SDKs spell them `pinAuthToken`,
/// `emailId`, `resetPINUrl`, `userName`), and an unencoded `+` of an email
/// address or phone number, which arrives as a space, put back (the Python
/// SDK writes query values as they are).
pub fn normalized_query(query: Option<&str>) -> Option<String> {
    let query = query?;
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let k = k.to_ascii_lowercase();
        let v = match k.as_str() {
            "email" | "emailid" | "phone" => v.trim_end().replace(' ', "+"),
            _ => v.into_owned(),
        };
        out.append_pair(&k, &v);
    }
    Some(out.finish())
}

/// `apikey` (query, or the `X-LoginRadius-ApiKey` header the Node SDK
/// sends), checked against `api.key` when one is configured.
fn check_api_key(gate: &Gate, req: &Req<'_>) -> Result<(), Reply> {
    let Some(want) = &gate.settings.api_key else {
        return Ok(());
    };
    let given = crate::reply::query_param(req.query, "apikey")
        .or_else(|| req.api_key_header.map(str::to_string))
        .unwrap_or_default();
    use subtle::ConstantTimeEq;
    if bool::from(given.trim().as_bytes().ct_eq(want.as_bytes())) {
        return Ok(());
    }
    Err(error(
        401,
        905,
        "The API key is invalid",
        "Send the configured API key (`api.key`) as `apikey` in the query.",
    ))
}

/// Answer a LoginRadius-spelled call; `route` is the path after `/identity/v2`.
/// `req.query` is already [`normalized_query`].
pub async fn handle(gate: &Gate, req: &Req<'_>, route: &str) -> Reply {
    lr_shape(answer(gate, req, route).await)
}

async fn answer(gate: &Gate, req: &Req<'_>, route: &str) -> Reply {
    if let Err(r) = check_api_key(gate, req) {
        return r;
    }
    let call = match call(req.method, route) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match call {
        Call::Own(own) => super::api::route(gate, req, own).await,
        Call::Validate { uid, factor } => super::api::validate_for(gate, req, &uid, Some(factor)),
        Call::QuestionsOfToken => questions_of_token(gate, req).await,
        Call::SetAnswers => set_answers(gate, req).await,
    }
}

/// `GET /auth/securityquestion/accesstoken`: the questions this user answered.
async fn questions_of_token(gate: &Gate, req: &Req<'_>) -> Reply {
    let p = match super::api::bearer_principal(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let answered = match crate::flows::lifecycle::answered(gate, &p.sub).await {
        Ok(a) => a,
        Err(e) => return super::json::flow_error(e),
    };
    let list: Vec<Value> = gate
        .settings
        .security_questions
        .iter()
        .filter(|q| answered.contains(&q.id))
        .map(|q| json!({"QuestionId": q.id, "Question": q.question}))
        .collect();
    Reply::json(200, &Value::Array(list))
}

/// `PUT /auth/account` (LoginRadius's profile update) carrying security
/// answers as `{"securityquestionanswer": {"<QuestionId>": "<answer>"}}`:
/// stepgate's `PUT /account/securityquestion`. Any other profile field is
/// the identity provider's, not stepgate's: refused, nothing saved.
async fn set_answers(gate: &Gate, req: &Req<'_>) -> Reply {
    let m = match super::json::body(req) {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Some(k) = m
        .keys()
        .find(|k| !matches!(k.as_str(), "securityquestionanswer" | "pin"))
    {
        return error(
            400,
            901,
            "Unsupported field",
            &format!("stepgate keeps only security answers; `{k}` belongs to the identity provider's profile. Nothing was saved."),
        );
    }
    let list: Vec<Value> = match m.get("securityquestionanswer") {
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| json!({"QuestionId": k, "Answer": v}))
            .collect(),
        Some(Value::Array(a)) => a.clone(),
        _ => {
            return error(
                400,
                901,
                "Missing field",
                "The body needs `securityquestionanswer`: {\"<QuestionId>\": \"<answer>\"}.",
            )
        }
    };
    let mut own = Map::new();
    own.insert("securityquestionanswer".into(), Value::Array(list));
    if let Some(pin) = m.get("pin") {
        own.insert("PIN".into(), pin.clone());
    }
    let body = serde_json::to_vec(&Value::Object(own)).unwrap_or_default();
    let inner = Req {
        body: &body,
        principal: req.principal.clone(),
        cookies: req.cookies.clone(),
        origin: req.origin.clone(),
        stepup_token: req.stepup_token.clone(),
        ..*req
    };
    super::api::route(gate, &inner, "/account/securityquestion").await
}

/// An own answer in LoginRadius's shapes: errors carry `IsProviderError`
/// and `ProviderErrorResponse` as LoginRadius's do; a lockout or send limit
/// is 403 with its `Data` (when it ends), not 429, which both SDKs replace
/// by a generic error of their own.
fn lr_shape(mut reply: Reply) -> Reply {
    if reply.status < 400 {
        return reply;
    }
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&reply.body) else {
        return reply;
    };
    if !body.contains_key("ErrorCode") {
        return reply;
    }
    body.insert("IsProviderError".into(), Value::Bool(false));
    body.insert("ProviderErrorResponse".into(), Value::Null);
    let retry_after = reply
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.parse::<i64>().ok());
    if reply.status == 429 {
        let mut data = Map::new();
        if let Some(s) = retry_after {
            data.insert("RetryAfter".into(), json!(s));
            let until = body
                .get("LockedUntil")
                .cloned()
                .unwrap_or_else(|| json!(rfc3339(crate::util::clock::now() + s)));
            data.insert("LockedUntil".into(), until);
        }
        body.insert("Data".into(), Value::Object(data));
        reply.status = 403;
    }
    reply.body = serde_json::to_vec(&Value::Object(body))
        .unwrap_or_default()
        .into();
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_lower_and_plus_restored() {
        let q = normalized_query(Some(
            "pinAuthToken=abc&emailId=a b@x.org&Phone= 15550100&userName=Jo",
        ))
        .unwrap();
        let got: Vec<(String, String)> =
            form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        assert_eq!(
            got,
            vec![
                ("pinauthtoken".into(), "abc".into()),
                ("emailid".into(), "a+b@x.org".into()),
                ("phone".into(), "+15550100".into()),
                ("username".into(), "Jo".into()),
            ]
        );
    }

    #[test]
    fn every_route_has_an_operation_and_methods_are_checked() {
        for (m, p) in ROUTES {
            let p = p.replace("{uid}", "u1");
            assert!(call(m, &p).is_ok(), "{m} {p}");
            let other = "DELETE";
            assert_eq!(call(other, &p).err().map(|r| r.status), Some(405), "{p}");
        }
        assert_eq!(call("GET", "/auth/nope").err().map(|r| r.status), Some(404));
        assert!(matches!(
            call("POST", "/manage/account/u%2F1/reauth/PIN"),
            Ok(Call::Validate { uid, factor: Factor::Pin }) if uid == "u/1"
        ));
    }

    #[test]
    fn too_many_becomes_403_with_data() {
        let r = error(429, 1198, "locked", "x").add("Retry-After", "60".into());
        let r = lr_shape(r);
        assert_eq!(r.status, 403);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["ErrorCode"], 1198);
        assert_eq!(v["IsProviderError"], false);
        assert_eq!(v["Data"]["RetryAfter"], 60);
        assert!(v["Data"]["LockedUntil"].is_string());
    }
}
