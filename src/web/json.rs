//! The JSON API's shared plumbing: the route table, request bodies, the API
//! secret check, error bodies, and the one mapping from flow errors to API
//! answers (status, LoginRadius-style ErrorCode, words for developers). The
//! pages' wording of the same errors is `web::flow_page`; both render
//! `web::respond::explain`, so they cannot disagree.

use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use super::Req;
use crate::flows::error::FlowError;
use crate::gate::Gate;
use crate::reply::Reply;

/// Every API operation, as (method, path under /.stepgate/api). The OpenAPI
/// description in docs/openapi.yaml is checked against this list by a test.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/stepup/trigger"),
    ("PUT", "/stepup/pin"),
    ("GET", "/stepup/otp/email"),
    ("POST", "/stepup/otp/email"),
    ("PUT", "/stepup/otp/email"),
    ("POST", "/stepup/validate"),
    ("POST", "/manage/account/{uid}/invalidate"),
    ("POST", "/manage/account/{uid}/unlock"),
    ("GET", "/manage/account/{uid}"),
    ("DELETE", "/manage/account/{uid}/pin"),
    ("GET", "/manage/locks"),
    ("POST", "/manage/ip/{ip}/unlock"),
    ("PUT", "/pin/change"),
    ("POST", "/pin/forgot/email"),
    ("POST", "/pin/forgot/username"),
    ("POST", "/pin/forgot/otp"),
    ("PUT", "/pin/reset/token"),
    ("PUT", "/pin/reset/otp/email"),
    ("PUT", "/pin/reset/otp/phone"),
    ("PUT", "/pin/reset/otp/username"),
    ("PUT", "/pin/reset/securityanswer/email"),
    ("PUT", "/pin/reset/securityanswer/phone"),
    ("PUT", "/pin/reset/securityanswer/username"),
    ("GET", "/securityquestion"),
    ("PUT", "/account/securityquestion"),
    ("POST", "/manage/pinauthtoken"),
    ("POST", "/pin/set/pinauthtoken"),
    ("POST", "/login/pin"),
    ("GET", "/session_token/invalidate"),
];

/// `{ErrorCode, Message, Description}` with the HTTP status that fits.
pub fn error(status: u16, code: u32, message: &str, description: &str) -> Reply {
    Reply::json(
        status,
        &json!({"ErrorCode": code, "Message": message, "Description": description}),
    )
}

pub use super::respond::rfc3339;

/// A flow error as the API tells it: status, ErrorCode and words from
/// [`respond::explain`](super::respond::explain), the one mapping.
pub fn flow_error(e: FlowError) -> Reply {
    let x = super::respond::explain(&e, "/");
    let mut body = json!({"ErrorCode": x.code, "Message": x.message, "Description": x.description});
    if let Some(until) = x.locked_until {
        body["LockedUntil"] = json!(rfc3339(until));
    }
    let reply = Reply::json(x.status, &body);
    match x.retry_after {
        Some(s) => reply.add("Retry-After", s.to_string()),
        None => reply,
    }
}

/// Parse a JSON object body; field names are matched case-insensitively, as
/// LoginRadius clients spell them variously (`OTP`, `Otp`).
pub fn body(req: &Req<'_>) -> Result<Map<String, Value>, Reply> {
    let v: Value = serde_json::from_slice(req.body).map_err(|e| {
        error(
            400,
            901,
            "Malformed JSON",
            &format!("The request body is not valid JSON: {e}."),
        )
    })?;
    match v {
        Value::Object(m) => Ok(m
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect()),
        _ => Err(error(
            400,
            901,
            "Malformed JSON",
            "The request body must be a JSON object.",
        )),
    }
}

pub fn string_field<'a>(m: &'a Map<String, Value>, name: &str) -> Result<&'a str, Reply> {
    match m.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(error(
            400,
            901,
            "Invalid field",
            &format!("`{name}` must be a string."),
        )),
        None => Err(error(
            400,
            901,
            "Missing field",
            &format!("The body needs `{name}`."),
        )),
    }
}

/// Back-channel calls authenticate with the API secret (constant time).
pub fn check_api_secret(gate: &Gate, req: &Req<'_>) -> Result<(), Reply> {
    let Some(secret) = &gate.settings.api_secret else {
        return Err(error(
            501,
            1233,
            "The back-channel API is not configured",
            "Set `api.secret` in the gateway config.",
        ));
    };
    // `Authorization: Bearer <secret>`, or `X-LoginRadius-ApiSecret` as
    // LoginRadius's SDKs send it.
    let matches = |given: Option<&str>| {
        given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(secret.expose())))
    };
    let bearer = req.authorization.and_then(crate::reply::bearer);
    if !(matches(bearer) || matches(req.api_secret_header.map(str::trim))) {
        return Err(error(
            401,
            907,
            "The API secret is invalid",
            "Send the configured API secret in Authorization: Bearer (or X-LoginRadius-ApiSecret).",
        )
        .add("WWW-Authenticate", "Bearer realm=\"stepgate-api\"".into()));
    }
    Ok(())
}
