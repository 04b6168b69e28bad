//! The JSON API under `/.stepgate/api/`, with LoginRadius's field names and
//! error codes (LOGINRADIUS.md), for single-page apps and API clients that
//! cannot follow an HTML challenge. The access token comes in
//! `Authorization: Bearer`; tokens it returns are presented on protected
//! requests in `X-Stepgate-Token`. Flow errors map to JSON in [`flow_error`].

use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::json::{body, check_api_secret, error, flow_error, rfc3339, string_field};
use super::Req;
use crate::auth::principal::Principal;
use crate::flows::error::FlowError;
use crate::flows::otp;
use crate::flows::pin;
use crate::gate::Gate;
use crate::policy::Factor;
use crate::reply::{query_param, Reply};
use crate::util::clock;
use crate::util::metrics;

/// `"Binding": {"amount": "100", …}` of a step-up call: the values the
/// token approves on a rule with `step_up.bind` (the RFC 9470 answer of the
/// refused request names them).
fn binding_of(
    m: &serde_json::Map<String, Value>,
) -> Result<Option<crate::auth::binding::Txn>, Reply> {
    Ok(binding_values(m)?.map(|v| crate::auth::binding::txn(&v)))
}

/// The `Binding` object's values, None when it is absent.
fn binding_values(
    m: &serde_json::Map<String, Value>,
) -> Result<Option<crate::auth::binding::Values>, Reply> {
    match m.get("binding") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) if !o.is_empty() && o.len() <= 32 => {
            Ok(Some(crate::auth::binding::from_json(o)))
        }
        Some(_) => Err(error(
            400,
            901,
            "Invalid field",
            "`Binding` is an object of the bound fields' values (at most 32), as the step-up challenge's `binding` names them.",
        )),
    }
}

fn token_reply(
    gate: &Gate,
    p: &Principal,
    factor: Factor,
    txn: Option<crate::auth::binding::Txn>,
) -> Reply {
    let (token, c) = gate.keys.issue_bound_stepup_ms(
        p,
        factor,
        crate::util::clock::now_ms(),
        gate.stepup_ttl(),
        txn,
    );
    crate::flows::admin::note_step_up(gate, &p.sub, factor.name());
    Reply::json(
        200,
        &json!({"SecondFactorValidationToken": token, "ExpireIn": rfc3339(c.exp)}),
    )
}

pub(super) fn unauthenticated(presented: Option<&crate::auth::principal::AuthError>) -> Reply {
    // RFC 6750 §3.1: say `invalid_token` when a token was presented and failed.
    let www = match presented {
        None | Some(crate::auth::principal::AuthError::Missing) => {
            "Bearer realm=\"stepgate\"".to_string()
        }
        Some(e) => format!(
            "Bearer realm=\"stepgate\", error=\"invalid_token\", error_description=\"{}\"",
            e.reason()
        ),
    };
    error(
        401,
        906,
        "The access token is invalid",
        "Send a valid access token in Authorization: Bearer.",
    )
    .add("WWW-Authenticate", www)
}

/// Answer stepgate's own spelling of an API call; `route` is the path under
/// `/.stepgate/api` (the LoginRadius spelling translates to these too).
pub async fn route(gate: &Gate, req: &Req<'_>, route: &str) -> Reply {
    // `/manage/account/{uid}[/{action}]`: the back channel's per-user calls.
    if let Some(rest) = route.strip_prefix("/manage/account/") {
        let (uid, action) = rest.split_once('/').unwrap_or((rest, ""));
        return match (action, req.method) {
            ("invalidate", "POST") => invalidate(gate, req, uid).await,
            ("unlock", "POST") => unlock(gate, req, uid).await,
            ("pin", "DELETE") => remove_pin(gate, req, uid).await,
            ("", "GET") => show_account(gate, req, uid).await,
            ("invalidate" | "unlock", _) => error(405, 901, "Method not allowed", "Use POST."),
            ("pin", _) => error(405, 901, "Method not allowed", "Use DELETE."),
            ("", _) => error(405, 901, "Method not allowed", "Use GET."),
            _ => error(404, 901, "Not found", "No such API endpoint."),
        };
    }
    if let Some(ip) = route
        .strip_prefix("/manage/ip/")
        .and_then(|r| r.strip_suffix("/unlock"))
    {
        return match req.method {
            "POST" => unlock_ip(gate, req, ip).await,
            _ => error(405, 901, "Method not allowed", "Use POST."),
        };
    }
    if route == "/manage/locks" {
        return match req.method {
            "GET" => locks(gate, req).await,
            _ => error(405, 901, "Method not allowed", "Use GET."),
        };
    }
    if route == "/stepup/validate" {
        return match req.method {
            "POST" => validate(gate, req),
            _ => error(405, 901, "Method not allowed", "Use POST."),
        };
    }
    // The API takes the access token from Authorization only, never from
    // the cookie: a cross-site link must not be able to send codes or spend
    // a user's cooldown and hourly cap.
    let principal = header_principal(req);
    let p = match &principal {
        Ok(p) => p,
        Err(e)
            if matches!(
                route,
                "/stepup/trigger" | "/stepup/pin" | "/stepup/otp/email"
            ) =>
        {
            return unauthenticated(Some(e))
        }
        Err(e) if matches!(route, "/pin/change" | "/account/securityquestion") => {
            return unauthenticated(Some(e))
        }
        Err(_) => {
            return match super::pin_api::route(gate, req, route, None).await {
                Some(r) => r,
                None => error(404, 901, "Not found", "No such API endpoint."),
            }
        }
    };
    if let Some(r) = super::pin_api::route(gate, req, route, Some(p)).await {
        return r;
    }
    match (req.method, route) {
        ("GET", "/stepup/trigger") => trigger(gate, p).await,
        ("PUT", "/stepup/pin") => stepup_pin(gate, req, p).await,
        ("GET", "/stepup/otp/email") => send_otp(gate, req, p).await,
        ("POST", "/stepup/otp/email") => send_bound_otp(gate, req, p).await,
        ("PUT", "/stepup/otp/email") => verify_otp(gate, req, p).await,
        (_, "/stepup/trigger" | "/stepup/pin" | "/stepup/otp/email") => error(
            405,
            901,
            "Method not allowed",
            "See the API description (docs/openapi.yaml).",
        ),
        _ => error(404, 901, "Not found", "No such API endpoint."),
    }
}

async fn trigger(gate: &Gate, p: &Principal) -> Reply {
    let pin_set = match pin::load_record(&*gate.store, &p.sub).await {
        Ok(r) => r.is_some(),
        Err(e) => return flow_error(e),
    };
    let verified = match gate.settings.email_otp.mode {
        crate::config::OtpMode::WithoutMfa => !p.otp_emails.is_empty() && gate.mailer.is_some(),
        crate::config::OtpMode::Mfa => match otp::verified_addresses(gate, p).await {
            Ok(v) => !v.is_empty(),
            Err(e) => return flow_error(e),
        },
    };
    // LoginRadius's whole field set (the SDKs' models read it): factors
    // stepgate does not offer are false or empty.
    Reply::json(
        200,
        &json!({
            "IsPINSet": pin_set,
            "IsPINAuthenticatorVerified": pin_set,
            "IsEmailOtpAuthenticatorVerified": verified,
            "Email": p.otp_emails,
            "IsOTPAuthenticatorVerified": false,
            "OTPPhoneNo": "",
            "OTPStatus": null,
            "IsGoogleAuthenticatorVerified": false,
            "IsAuthenticatorVerified": false,
            "IsSecurityQuestionAuthenticatorVerified": false,
            "IsSecurityQuestionAuthenticatorEnabled": false,
            "IsSmsOtpAuthenticatorVerified": false,
        }),
    )
}

async fn stepup_pin(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let m = match body(req) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let entered = match string_field(&m, "pin") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let txn = match binding_of(&m) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match super::check_stepup_pin(gate, p, req.client_ip, entered).await {
        Ok(()) => {
            crate::flows::lifecycle::remember_profile(gate, p).await;
            token_reply(gate, p, Factor::Pin, txn)
        }
        Err(e) => flow_error(e),
    }
}

async fn send_otp(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let email = query_param(req.query, "emailid").filter(|e| !e.is_empty());
    send_code(gate, req, p, email, None).await
}

/// Send a code to `email` (the primary address when None), for `values`
/// when the step-up is bound.
async fn send_code(
    gate: &Gate,
    req: &Req<'_>,
    p: &Principal,
    email: Option<String>,
    values: Option<&crate::auth::binding::Values>,
) -> Reply {
    let Some(email) = email.or_else(|| p.otp_emails.first().cloned()) else {
        return flow_error(FlowError::EmailNotInProfile);
    };
    let fresh = super::login_is_fresh(gate, p);
    let binding = values.map(|v| (v, None));
    match otp::send_for(gate, p, &email, req.client_ip, fresh, binding).await {
        Ok(_) => Reply::json(200, &json!({"IsPosted": true})),
        Err(e) => flow_error(e),
    }
}

/// A code for a bound step-up from an API client: the mail shows the
/// values (`Binding`, as the challenge's `binding` names them) and the code
/// approves exactly those, as on the browser's page.
async fn send_bound_otp(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let m = match body(req) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let values = match binding_values(&m) {
        Ok(Some(v)) => v,
        Ok(None) => {
            return error(
                400,
                901,
                "Missing field",
                "`Binding` is an object of the bound fields' values (at most 32), as the step-up challenge's `binding` names them; for a code without values use GET.",
            )
        }
        Err(r) => return r,
    };
    let email = match m.get("emailid") {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) if !e.is_empty() => Some(e.clone()),
        Some(_) => return error(400, 901, "Invalid field", "`EmailId` must be a string."),
    };
    send_code(gate, req, p, email, Some(&values)).await
}

/// A code whose mail showed no values cannot approve any: the user never
/// saw what they would confirm.
fn unbound_code() -> Reply {
    error(
        400,
        901,
        "Code not sent for these values",
        "This code was sent without the values to confirm, so it cannot approve a `Binding`: ask for a code with POST /.stepgate/api/stepup/otp/email {\"EmailId\",\"Binding\"}, whose mail shows them.",
    )
}

async fn verify_otp(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let m = match body(req) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let code = match string_field(&m, "otp") {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(Value::String(e)) = m.get("emailid") {
        if !p.otp_emails.contains(&e.trim().to_ascii_lowercase()) {
            return flow_error(FlowError::EmailNotInProfile);
        }
    }
    let asked = match binding_of(&m) {
        Ok(t) => t,
        Err(r) => return r,
    };
    // Refused before the code is spent when it can be told already.
    if asked.is_some() {
        match otp::pending_is_bound(gate, p).await {
            Ok(Some(false)) => return unbound_code(),
            Ok(_) => {}
            Err(e) => return flow_error(e),
        }
    }
    match otp::verify_for(gate, p, code, req.client_ip).await {
        // A new code without values replaced the one looked at above.
        Ok((_, None)) if asked.is_some() => unbound_code(),
        Ok((_, sent_for)) => {
            metrics::STEPUPS
                .with_label_values(&["email_otp", "success"])
                .inc();
            crate::flows::lifecycle::remember_profile(gate, p).await;
            // A code mailed for a transaction approves that one, and only
            // a code mailed with values approves any.
            token_reply(gate, p, Factor::EmailOtp, sent_for)
        }
        Err(e) => {
            metrics::STEPUPS
                .with_label_values(&[
                    "email_otp",
                    if matches!(e, FlowError::Locked { .. } | FlowError::Suspended) {
                        "locked"
                    } else {
                        "failure"
                    },
                ])
                .inc();
            flow_error(e)
        }
    }
}

/// A manage call: the API secret, and the user id from the path.
fn manage_uid(gate: &Gate, req: &Req<'_>, uid: &str) -> Result<String, Reply> {
    check_api_secret(gate, req)?;
    checked_uid(decode_uid(uid))
}

/// A user id as a manage path carries it (percent-encoded).
pub(super) fn decode_uid(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// A user id a manage call can act on: not empty, at most 256 bytes.
fn checked_uid(uid: String) -> Result<String, Reply> {
    if uid.is_empty() || uid.len() > 256 {
        return Err(error(
            400,
            901,
            "Invalid user id",
            "The path needs the user's id (sub).",
        ));
    }
    Ok(uid)
}

/// End every step-up of a user on every gateway (e.g. the IdP calls this on
/// a password change): step-down.
async fn invalidate(gate: &Gate, req: &Req<'_>, uid: &str) -> Reply {
    let uid = match manage_uid(gate, req, uid) {
        Ok(u) => u,
        Err(r) => return r,
    };
    match crate::flows::lifecycle::invalidate_user(gate, &uid, req.client_ip).await {
        Ok(()) => Reply::json(200, &json!({"IsPosted": true})),
        Err(e) => flow_error(e),
    }
}

/// Lift a user's lockouts (an admin, through the back end): the PIN's lock,
/// suspension and run of failures, and the locks on recovery by answers or
/// code. Client IPs' locks stay.
async fn unlock(gate: &Gate, req: &Req<'_>, uid: &str) -> Reply {
    let uid = match manage_uid(gate, req, uid) {
        Ok(u) => u,
        Err(r) => return r,
    };
    match crate::flows::admin::unlock(gate, &uid, &caller(req)).await {
        Ok(()) => Reply::json(200, &json!({"IsPosted": true})),
        Err(e) => flow_error(e),
    }
}

/// A user's state for a helpdesk: PIN, locks, PIN sessions, last step-up.
async fn show_account(gate: &Gate, req: &Req<'_>, uid: &str) -> Reply {
    let uid = match manage_uid(gate, req, uid) {
        Ok(u) => u,
        Err(r) => return r,
    };
    match crate::flows::admin::show(gate, &uid).await {
        Ok(a) => Reply::json(200, &account_json(&a)),
        Err(e) => flow_error(e),
    }
}

/// `admin user show --json` and `GET /manage/account/{uid}`: times as
/// RFC 3339, as the rest of the API writes them.
pub fn account_json(a: &crate::flows::admin::Account) -> serde_json::Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    for k in ["PINSetAt", "LockedUntil"] {
        if let Some(t) = v[k].as_i64() {
            v[k] = json!(rfc3339(t));
        }
    }
    if let Some(t) = v["LastStepUp"]["At"].as_i64() {
        v["LastStepUp"]["At"] = json!(rfc3339(t));
    }
    if let Some(list) = v["PinSessions"].as_array_mut() {
        for s in list {
            for k in ["Created", "Expires"] {
                if let Some(t) = s[k].as_i64() {
                    s[k] = json!(rfc3339(t));
                }
            }
        }
    }
    v
}

/// `admin locks --json` and `GET /manage/locks`: times as RFC 3339.
pub fn locks_json(list: &[crate::flows::lockout::LockInfo]) -> serde_json::Value {
    serde_json::Value::Array(
        list.iter()
            .map(|l| {
                let mut v = serde_json::to_value(l).unwrap_or_default();
                if let Some(t) = l.locked_until {
                    v["LockedUntil"] = serde_json::json!(rfc3339(t));
                }
                v
            })
            .collect(),
    )
}

/// Who an admin call is made by, for the audit line: the caller's address,
/// and whom it acts for when it says (`X-Audit-Actor`, e.g. `cli:alice`).
fn caller(req: &Req<'_>) -> String {
    match req
        .actor
        .filter(|a| !a.is_empty() && a.len() <= 64 && a.bytes().all(|b| b.is_ascii_graphic()))
    {
        Some(a) => format!("api:{} for {a}", req.client_ip),
        None => format!("api:{}", req.client_ip),
    }
}

/// Lift the locks on a client address (an office behind one NAT).
async fn unlock_ip(gate: &Gate, req: &Req<'_>, ip: &str) -> Reply {
    if let Err(r) = check_api_secret(gate, req) {
        return r;
    }
    let ip = percent_encoding::percent_decode_str(ip).decode_utf8_lossy();
    let Ok(addr) = ip.parse::<std::net::IpAddr>() else {
        return error(
            400,
            901,
            "Invalid address",
            "The path needs an IPv4 or IPv6 address.",
        );
    };
    match crate::flows::admin::unlock_ip(gate, &addr.to_string(), &caller(req)).await {
        Ok(()) => Reply::json(200, &json!({"IsPosted": true})),
        Err(e) => flow_error(e),
    }
}

/// Every lock and suspension in force, for a helpdesk.
async fn locks(gate: &Gate, req: &Req<'_>) -> Reply {
    if let Err(r) = check_api_secret(gate, req) {
        return r;
    }
    match crate::flows::admin::locks(gate).await {
        Ok(list) => Reply::json(200, &locks_json(&list)),
        Err(e) => flow_error(e),
    }
}

/// Remove a user's PIN (a helpdesk's "forgot PIN and the recovery address
/// is gone"): the next step-up asks for enrollment.
async fn remove_pin(gate: &Gate, req: &Req<'_>, uid: &str) -> Reply {
    let uid = match manage_uid(gate, req, uid) {
        Ok(u) => u,
        Err(r) => return r,
    };
    match crate::flows::admin::remove_pin(gate, &uid, &caller(req)).await {
        Ok(had) => Reply::json(200, &json!({"IsDeleted": had})),
        Err(e) => flow_error(e),
    }
}

/// Back-channel validation by the app's back end, authenticated with the
/// API secret (compared in constant time). The back end names the user the
/// token must belong to (`Uid` in the body, else `uid` in the query, names
/// in any case): a token is only ever valid for its own user.
fn validate(gate: &Gate, req: &Req<'_>) -> Reply {
    let m = match secret_and_body(gate, req) {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Err(r) = string_field(&m, "secondfactorvalidationtoken") {
        return r;
    }
    let uid = match m.get("uid") {
        Some(Value::String(u)) => Some(u.clone()),
        Some(_) => {
            return error(400, 901, "Invalid field", "`Uid` must be a string.");
        }
        None => query_param(req.query, "uid"),
    };
    let Some(uid) = uid.filter(|u| !u.is_empty()) else {
        return error(
            400,
            901,
            "Missing field",
            "The body needs `Uid` (or `uid` in the query): the user the token must belong to.",
        );
    };
    validate_token(gate, &m, &uid, None)
}

fn secret_and_body(gate: &Gate, req: &Req<'_>) -> Result<serde_json::Map<String, Value>, Reply> {
    check_api_secret(gate, req)?;
    body(req)
}

/// Validation for the user `uid` of a manage path (LoginRadius's
/// `/manage/account/{uid}/reauth/{pin,2fa}`), of a token made with `factor`
/// when one is named: a token of another user, or of another factor, is
/// `IsValid: false`.
pub(super) fn validate_for(gate: &Gate, req: &Req<'_>, uid: &str, factor: Option<Factor>) -> Reply {
    let m = match secret_and_body(gate, req) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match checked_uid(uid.to_string()) {
        Ok(uid) => validate_token(gate, &m, &uid, factor),
        Err(r) => r,
    }
}

fn validate_token(
    gate: &Gate,
    m: &serde_json::Map<String, Value>,
    uid: &str,
    factor: Option<Factor>,
) -> Reply {
    let token = match string_field(m, "secondfactorvalidationtoken") {
        Ok(s) => s,
        Err(r) => return r,
    };
    // Whether it was invalidated cannot be known yet: not "invalid".
    if !gate.revocations.loaded() {
        return super::replies::unavailable(gate, false);
    }
    let claims = gate
        .keys
        .decode_stepup(token, clock::now())
        .ok()
        .filter(|c| {
            let revoked = gate
                .revocations
                .revoked_before(&c.sub)
                .is_some_and(|t| c.issued_ms() <= t);
            let factor_ok = factor.is_none_or(|f| c.factor() == Some(f));
            bool::from(uid.as_bytes().ct_eq(c.sub.as_bytes())) && !revoked && factor_ok
        });
    let mut out = json!({"IsValid": claims.is_some()});
    // What a valid token approves, when it was made for one transaction.
    if let Some(c) = &claims {
        out["IsBound"] = json!(c.txn.is_some());
        if let Some(t) = &c.txn {
            out["Binding"] = json!({"Digest": t.d, "Fields": t.f});
        }
    }
    Reply::json(200, &out)
}

/// The caller from the access token in Authorization only (see [`route`]).
fn header_principal(req: &Req<'_>) -> Result<Principal, crate::auth::principal::AuthError> {
    match req.authorization.and_then(crate::reply::bearer) {
        Some(_) => req.principal.clone(),
        None => Err(crate::auth::principal::AuthError::Missing),
    }
}

/// [`header_principal`], or the 401 that says why not.
pub(super) fn bearer_principal(req: &Req<'_>) -> Result<Principal, Reply> {
    header_principal(req).map_err(|e| unauthenticated(Some(&e)))
}

/// The answer to an API client of a signed-in user without a PIN when
/// `pin.required` is on: 403 ErrorCode 1243, with a PINAuthToken to set one
/// only while the first-factor login is fresh (`pin.enroll_window`, as the
/// setup page); a stale login is told to sign in again, and gets none.
pub async fn pin_required(gate: &Gate, p: &Principal) -> Reply {
    match crate::flows::lifecycle::required_pin_token(gate, p).await {
        Ok(Some((token, exp))) => Reply::json(
            403,
            &json!({
                "ErrorCode": 1243,
                "Message": "A PIN is required",
                "Description": "Set a PIN with POST /.stepgate/api/pin/set/pinauthtoken?pinauthtoken=<PINAuthToken>.",
                "PINAuthToken": token,
                "ExpireIn": rfc3339(exp),
            }),
        ),
        Ok(None) => Reply::json(
            403,
            &json!({
                "ErrorCode": 1243,
                "Message": "A PIN is required",
                "Description": "Setting a PIN needs a recent sign-in: sign in again, then retry to get a PINAuthToken.",
            }),
        ),
        Err(e) => flow_error(e),
    }
}
