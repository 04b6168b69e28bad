//! The PIN lifecycle half of the JSON API (LoginRadius's PIN endpoints,
//! LOGINRADIUS.md): change, forgot, reset, security questions, PINAuthToken,
//! PIN login and session tokens. Field names as LoginRadius spells them;
//! bodies are matched case-insensitively.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::json::{body, check_api_secret, error, flow_error, rfc3339, string_field};
use super::Req;
use crate::auth::principal::Principal;
use crate::flows::error::FlowError;
use crate::flows::lifecycle;
use crate::flows::profile::{Identifier, Profile};
use crate::reply::{query_param, Reply};

/// Answer a PIN lifecycle route, or None when `route` is not one.
/// `principal`: the caller's access token from Authorization, when valid.
pub async fn route(
    gate: &crate::gate::Gate,
    req: &Req<'_>,
    route: &str,
    principal: Option<&Principal>,
) -> Option<Reply> {
    const OURS: [&str; 7] = [
        "/pin/",
        "/securityquestion",
        "/account/securityquestion",
        "/manage/pinauthtoken",
        "/login/pin",
        "/session_token/invalidate",
        "/pin/set/pinauthtoken",
    ];
    if !OURS.iter().any(|p| route.starts_with(p)) {
        return None;
    }
    let expected = super::json::ROUTES
        .iter()
        .find(|(_, path)| *path == route)
        .map(|(m, _)| *m)?;
    if req.method != expected {
        return Some(error(
            405,
            901,
            "Method not allowed",
            &format!("Use {expected}."),
        ));
    }
    let r = match route {
        "/pin/change" => change(gate, req, principal?).await,
        "/pin/forgot/email" => forgot(gate, req, "email", "email").await,
        "/pin/forgot/username" => forgot(gate, req, "username", "username").await,
        "/pin/forgot/otp" => forgot(gate, req, "phone", "phone").await,
        "/pin/reset/token" => reset_token(gate, req).await,
        "/pin/reset/otp/email" => reset_otp(gate, req, "email").await,
        "/pin/reset/otp/phone" => reset_otp(gate, req, "phone").await,
        "/pin/reset/otp/username" => reset_otp(gate, req, "username").await,
        "/pin/reset/securityanswer/email" => reset_answers(gate, req, "email").await,
        "/pin/reset/securityanswer/phone" => reset_answers(gate, req, "phone").await,
        "/pin/reset/securityanswer/username" => reset_answers(gate, req, "username").await,
        "/securityquestion" => questions(gate, req).await,
        "/account/securityquestion" => set_answers(gate, req, principal?).await,
        "/manage/pinauthtoken" => pin_auth_token(gate, req).await,
        "/pin/set/pinauthtoken" => set_by_auth_token(gate, req).await,
        "/login/pin" => login(gate, req).await,
        "/session_token/invalidate" => invalidate_session(gate, req).await,
        _ => return None,
    };
    Some(r.unwrap_or_else(|reply| reply))
}

type Answer = Result<Reply, Reply>;

fn posted() -> Answer {
    Ok(Reply::json(200, &json!({"IsPosted": true})))
}

fn identifier_field(m: &Map<String, Value>, kind: &str) -> Result<Identifier, Reply> {
    let name = match kind {
        "email" => "email",
        "username" => "username",
        _ => "phone",
    };
    let raw = string_field(m, name)?;
    Identifier::parse(kind, raw).ok_or_else(|| {
        error(
            400,
            901,
            "Invalid field",
            &format!("`{name}` is not a valid {kind}."),
        )
    })
}

fn profile_json(p: &Profile) -> Value {
    json!({
        "Uid": p.sub,
        "Email": p.emails.iter().enumerate().map(|(i, e)| json!({"Type": if i == 0 { "Primary" } else { "Secondary" }, "Value": e})).collect::<Vec<_>>(),
        "UserName": p.username,
        "PhoneId": p.phone,
    })
}

async fn change(gate: &crate::gate::Gate, req: &Req<'_>, p: &Principal) -> Answer {
    let m = body(req)?;
    let old = string_field(&m, "oldpin")?;
    let new = string_field(&m, "newpin")?;
    let keep = req
        .cookie(gate.pin_session_cookie(req.tls))
        .map(|t| crate::auth::tokens::token_digest(&t));
    lifecycle::change(gate, p, req.client_ip, old, new, keep.as_deref())
        .await
        .map_err(flow_error)?;
    posted()
}

async fn forgot(gate: &crate::gate::Gate, req: &Req<'_>, kind: &str, _field: &str) -> Answer {
    let m = body(req)?;
    let id = identifier_field(&m, kind)?;
    let reset_url = match m.get("resetpinurl") {
        Some(Value::String(u)) if !u.is_empty() => Some(u.clone()),
        _ => query_param(req.query, "resetpinurl").filter(|u| !u.is_empty()),
    };
    lifecycle::forgot(gate, &id, reset_url.as_deref(), &req.origin, req.client_ip)
        .await
        .map_err(flow_error)?;
    posted()
}

async fn reset_token(gate: &crate::gate::Gate, req: &Req<'_>) -> Answer {
    let m = body(req)?;
    let new = string_field(&m, "pin")?;
    let token = string_field(&m, "resettoken")?;
    lifecycle::reset_by_token(gate, token, new, req.client_ip)
        .await
        .map_err(flow_error)?;
    posted()
}

async fn reset_otp(gate: &crate::gate::Gate, req: &Req<'_>, kind: &str) -> Answer {
    let m = body(req)?;
    let new = string_field(&m, "pin")?;
    let id = identifier_field(&m, kind)?;
    let code = string_field(&m, "otp")?;
    lifecycle::reset_by_otp(gate, &id, code, new, req.client_ip)
        .await
        .map_err(flow_error)?;
    posted()
}

async fn reset_answers(gate: &crate::gate::Gate, req: &Req<'_>, kind: &str) -> Answer {
    let m = body(req)?;
    let new = string_field(&m, "pin")?;
    let id = identifier_field(&m, kind)?;
    let answers = match m.get("securityanswer") {
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(error(
                    400,
                    901,
                    "Invalid field",
                    "`SecurityAnswer` maps question ids to answer strings.",
                )),
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?,
        _ => {
            return Err(error(
                400,
                901,
                "Missing field",
                "The body needs `SecurityAnswer`: {\"<QuestionId>\": \"<answer>\"}.",
            ))
        }
    };
    lifecycle::reset_by_answers(gate, &id, &answers, new, req.client_ip)
        .await
        .map_err(flow_error)?;
    posted()
}

async fn questions(gate: &crate::gate::Gate, req: &Req<'_>) -> Answer {
    let id = ["email", "username", "phone"]
        .iter()
        .find_map(|k| {
            query_param(req.query, k)
                .filter(|v| !v.is_empty())
                .map(|v| (*k, v))
        })
        .ok_or_else(|| {
            error(
                400,
                901,
                "Missing parameter",
                "Give `email`, `username` or `phone` in the query.",
            )
        })?;
    let id = Identifier::parse(id.0, &id.1).ok_or_else(|| {
        error(
            400,
            901,
            "Invalid parameter",
            &format!("`{}` is not a valid {}.", id.1, id.0),
        )
    })?;
    let qs = lifecycle::questions_for(gate, &id).map_err(flow_error)?;
    Ok(Reply::json(
        200,
        &Value::Array(
            qs.iter()
                .map(|q| json!({"QuestionId": q.id, "Question": q.question}))
                .collect(),
        ),
    ))
}

async fn set_answers(gate: &crate::gate::Gate, req: &Req<'_>, p: &Principal) -> Answer {
    let m = body(req)?;
    let list = match m.get("securityquestionanswer") {
        Some(Value::Array(a)) => a,
        _ => {
            return Err(error(
                400,
                901,
                "Missing field",
                "The body needs `securityquestionanswer`: [{\"QuestionId\", \"Answer\"}].",
            ))
        }
    };
    let mut answers = Vec::new();
    for item in list {
        let o: Map<String, Value> = match item {
            Value::Object(o) => o
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            _ => {
                return Err(error(
                    400,
                    901,
                    "Invalid field",
                    "Each answer is {\"QuestionId\", \"Answer\"}.",
                ))
            }
        };
        answers.push((
            string_field(&o, "questionid")?.to_string(),
            string_field(&o, "answer")?.to_string(),
        ));
    }
    let pin = match m.get("pin") {
        None => None,
        Some(_) => Some(string_field(&m, "pin")?),
    };
    let proof = lifecycle::AnswersProof {
        recent_step_up: super::recent_stepup(gate, req, p),
        pin,
    };
    lifecycle::set_answers(gate, p, &answers, proof, req.client_ip)
        .await
        .map_err(flow_error)?;
    posted()
}

async fn pin_auth_token(gate: &crate::gate::Gate, req: &Req<'_>) -> Answer {
    check_api_secret(gate, req)?;
    let m = body(req)?;
    let uid = string_field(&m, "uid")?;
    if uid.is_empty() || uid.len() > 256 {
        return Err(error(
            400,
            901,
            "Invalid field",
            "`Uid` is the user's id (sub).",
        ));
    }
    let (token, exp) = lifecycle::issue_auth_token(gate, uid, lifecycle::AuthTokenFor::Server)
        .await
        .map_err(flow_error)?;
    Ok(Reply::json(
        200,
        &json!({"PINAuthToken": token, "ExpireIn": rfc3339(exp)}),
    ))
}

async fn set_by_auth_token(gate: &crate::gate::Gate, req: &Req<'_>) -> Answer {
    let token = query_param(req.query, "pinauthtoken").unwrap_or_default();
    let m = body(req)?;
    let new = string_field(&m, "pin")?;
    let set = lifecycle::set_by_auth_token(gate, &token, new, req.user_agent, req.client_ip)
        .await
        .map_err(flow_error)?;
    let mut out = json!({"IsPosted": true, "Profile": profile_json(&set.profile)});
    if let Some((t, exp)) = set.session {
        out["session_token"] = json!(t);
        out["session_expires_in"] = json!(rfc3339(exp));
    }
    if let Some((t, exp)) = set.access {
        out["access_token"] = json!(t);
        out["expires_in"] = json!(rfc3339(exp));
    }
    Ok(Reply::json(200, &out))
}

async fn login(gate: &crate::gate::Gate, req: &Req<'_>) -> Answer {
    let token = query_param(req.query, "session_token").unwrap_or_default();
    let m = body(req)?;
    let entered = string_field(&m, "pin")?;
    let (access, exp, s) =
        lifecycle::pin_login(gate, &token, entered, req.user_agent, req.client_ip)
            .await
            .map_err(flow_error)?;
    Ok(Reply::json(
        200,
        &json!({"Profile": profile_json(&s.profile), "access_token": access, "expires_in": rfc3339(exp)}),
    ))
}

async fn invalidate_session(gate: &crate::gate::Gate, req: &Req<'_>) -> Answer {
    let token = query_param(req.query, "session_token").unwrap_or_default();
    let s = match lifecycle::load_session(gate, &token).await {
        Ok(s) => s,
        // An expired session can still be ended.
        Err(FlowError::SessionExpired) => lifecycle::find_session(gate, &token)
            .await
            .map_err(flow_error)?
            .ok_or_else(|| flow_error(FlowError::SessionInvalid))?,
        Err(e) => return Err(flow_error(e)),
    };
    lifecycle::end_session(gate, &s.id, Some(&s.sub))
        .await
        .map_err(flow_error)?;
    posted()
}
