//! The JSON API's shared plumbing: the route table, request bodies, the API
//! secret check, error bodies, and the one mapping from flow errors to API
//! answers (status, LoginRadius-style ErrorCode, words for developers). The
//! pages' wording of the same errors is `web::flow_page`; both take the
//! status and code from [`status_and_code`].

use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use super::Req;
use crate::flows::error::FlowError;
use crate::gate::Gate;
use crate::reply::Reply;
use crate::util::clock;

/// Every API operation, as (method, path under /.stepgate/api). The OpenAPI
/// description in docs/openapi.yaml is checked against this list by a test.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/stepup/trigger"),
    ("PUT", "/stepup/pin"),
    ("GET", "/stepup/otp/email"),
    ("PUT", "/stepup/otp/email"),
    ("POST", "/stepup/validate"),
    ("POST", "/manage/account/{uid}/invalidate"),
    ("POST", "/manage/account/{uid}/unlock"),
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

pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The one mapping from flow errors to API answers.
pub fn flow_error(e: FlowError) -> Reply {
    match e {
        FlowError::Locked { until } => Reply::json(
            429,
            &json!({"ErrorCode": 1198, "Message": "The account is locked", "Description": format!("Too many failed attempts; locked until {}.", rfc3339(until)), "LockedUntil": rfc3339(until)}),
        )
        .add("Retry-After", (until - clock::now()).max(1).to_string()),
        FlowError::Suspended => error(403, 1198, "The account is locked (suspended)", "Too many failed attempts in a row: the PIN is suspended until it is reset (forgot PIN) or an administrator unlocks the account."),
        FlowError::WrongPin { remaining } => error(401, 1236, "The PIN is invalid", &format!("{remaining} attempt(s) left before a lockout.")),
        FlowError::NoPin => error(403, 1235, "No PIN is set", "Set up a PIN on /.stepgate/pin/setup first."),
        FlowError::PinAlreadySet => error(400, 1247, "A PIN is already set", "Change it instead."),
        FlowError::PinRule(m) => error(400, 1248, "The PIN does not meet the rules", &m),
        FlowError::PinMismatch => error(400, 1249, "The PINs differ", "PIN and confirmation must be equal."),
        FlowError::LoginNotFresh => error(403, 1250, "A recent login is required", "Sign in again, then retry within the enrollment window."),
        FlowError::StepUpRequired => error(403, 1261, "A step-up is required", "Confirm with your PIN first: step up (PUT /.stepgate/api/stepup/pin) and send the token in X-Stepgate-Token, or send your current PIN as `PIN` with the request."),
        FlowError::EmailNotInProfile => error(400, 1340, "The email address is not in the profile", "Nothing was sent."),
        FlowError::NotConfigured => error(501, 1233, "This factor is not configured", "The gateway has no mail settings."),
        FlowError::Cooldown { retry_after } => {
            error(429, 1179, "Please wait before asking for another code", &format!("Retry in {retry_after} seconds.")).add("Retry-After", retry_after.to_string())
        }
        FlowError::SendLimit { until } => error(429, 1179, "The OTP send limit is reached", &format!("No more codes until {}.", rfc3339(until)))
            .add("Retry-After", (until - clock::now()).max(1).to_string()),
        FlowError::MailFailed => error(502, 1251, "The code could not be sent", "The mail server refused or did not answer; nothing was used up, retry."),
        FlowError::NoCode => error(400, 1252, "No valid code", "The code was used, expired or tried too often; ask for a new one."),
        FlowError::WrongCode { remaining } => error(401, 1253, "The OTP is invalid", &format!("{remaining} attempt(s) left for this code.")),
        FlowError::StoreUnavailable => error(503, 1254, "Temporarily unavailable", "The gateway's store does not answer; retry shortly.").add("Retry-After", "5".into()),
        FlowError::Internal => error(500, 1255, "Internal error", "See the gateway log."),
        FlowError::WrongCurrentPin { remaining } => error(401, 1241, "The current PIN is invalid", &format!("{remaining} attempt(s) left before a lockout.")),
        FlowError::AuthTokenInvalid => error(401, 1239, "The PINAuthToken is invalid", "It is unknown or was already used; ask for a new one."),
        FlowError::AuthTokenExpired => error(401, 1240, "The PINAuthToken has expired", "Ask for a new one."),
        FlowError::ResetUsed => error(400, 1242, "The reset link was already used", "Ask for a new one with forgot PIN."),
        FlowError::ResetInvalid => error(400, 1256, "The reset token is invalid or expired", "Ask for a new one with forgot PIN."),
        FlowError::SessionInvalid => error(401, 1245, "The session token is invalid", "It is unknown, was invalidated, or belongs to another device; sign in fully."),
        FlowError::SessionExpired => error(401, 1246, "The session token has expired", "Sign in fully to start a new PIN session."),
        FlowError::WrongAnswers { remaining } => error(401, 1257, "The security answers are not right", &format!("{remaining} attempt(s) left before a lockout.")),
        FlowError::UnknownQuestion(q) => error(400, 1258, "Unknown security question", &format!("`{q}` is not one of the configured questions (GET /.stepgate/api/securityquestion lists them).")),
        FlowError::ResetUrlNotAllowed => error(400, 1259, "The reset URL is not allowed", "`resetpinurl` must be listed in `pin.reset_urls`."),
        FlowError::Disabled(why) => error(501, 1233, "Not enabled on this gateway", why),
        FlowError::BadAnswer(why) => error(400, 1260, "The answer is not valid", &why),
        FlowError::ResetCodeRefused => error(401, 1253, "The OTP is invalid", "The code is wrong, used or expired; check it, or ask for a new one."),
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
    let given = req
        .authorization
        .and_then(crate::reply::bearer)
        .unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(secret.expose())) {
        return Err(error(
            401,
            907,
            "The API secret is invalid",
            "Send the configured API secret in Authorization: Bearer.",
        )
        .add("WWW-Authenticate", "Bearer realm=\"stepgate-api\"".into()));
    }
    Ok(())
}
