//! The answers the proxy gives on its own, as pages for browsers and JSON
//! for API clients: a request refused before any rule, a step-up challenge
//! (RFC 9470), a sign-in, a deny, the store being down, a body too large.

use crate::auth::decision::StepUpReason;
use crate::auth::principal::AuthError;
use crate::gate::Gate;
use crate::policy::StepUp;
use crate::reply::{url_encode, Reply};
use crate::request::Refusal;
use crate::util::metrics;

/// A 400 for a request that cannot be read one way only, saying why.
pub fn refusal(gate: &Gate, why: Refusal, html: bool) -> Reply {
    metrics::REFUSED.with_label_values(&[why.code()]).inc();
    if html {
        gate.pages.message(
            400,
            "Bad request",
            &format!("This address cannot be served safely: {why}."),
            None,
        )
    } else {
        Reply::json(
            400,
            &serde_json::json!({"error": "invalid_request", "error_description": why.describe(), "reason": why.code()}),
        )
    }
}

pub fn too_large(gate: &Gate, path: &str) -> Reply {
    if crate::web::is_api_path(gate, path) {
        crate::web::json::error(
            413,
            901,
            "Request too large",
            "stepgate accepts at most 16 KiB on its own endpoints.",
        )
    } else {
        gate.pages.message(
            413,
            "Too large",
            "This request is larger than stepgate accepts on its own pages (16 KiB).",
            None,
        )
    }
}

pub fn unavailable(gate: &Gate, html: bool) -> Reply {
    if html {
        gate.pages
            .message(
                503,
                "Temporarily unavailable",
                "stepgate cannot check your confirmation right now. Try again in a moment.",
                None,
            )
            .add("Retry-After", "5".into())
    } else {
        Reply::json(503, &serde_json::json!({"error": "temporarily_unavailable", "error_description": "the step-up store is unavailable"})).add("Retry-After", "5".into())
    }
}

/// The first-factor source that must say who the user is (the IdP, the
/// app) did not answer: closed, with a reason, never a sign-in loop.
pub fn source_unavailable(gate: &Gate, html: bool, source: &str) -> Reply {
    if html {
        gate.pages
            .message(
                503,
                "Temporarily unavailable",
                "stepgate cannot check your sign-in right now (the sign-in service does not answer). Try again in a moment.",
                None,
            )
            .add("Retry-After", "5".into())
    } else {
        Reply::json(503, &serde_json::json!({"error": "temporarily_unavailable", "error_description": format!("the first-factor source `{source}` does not answer")})).add("Retry-After", "5".into())
    }
}

/// What became of a browser request's body when it needed a step-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keeping {
    /// No body (or not a browser): nothing to keep.
    Nothing,
    /// Kept under this id; it goes upstream after the step-up.
    Kept(String),
    /// Not kept; the code (`large`, `upload`, `store`) says why, and the
    /// page tells the user the form must be sent again.
    NotKept(&'static str),
}

/// What a step-up is for: the request's method (the challenge offers the
/// factors of the rule for that method), its kept body, and on a bound
/// rule the values it asks to approve.
pub struct ForRequest<'a> {
    pub method: &'a str,
    pub keeping: &'a Keeping,
    pub binding: Option<&'a crate::auth::binding::Values>,
}

/// `/.stepgate/challenge` with everything the pages carry along.
pub fn challenge_url(return_to: &str, f: &ForRequest<'_>) -> String {
    let mut url = format!("/.stepgate/challenge?return_to={}", url_encode(return_to));
    if f.method != "GET" && f.method != "HEAD" {
        url.push_str(&format!("&method={}", url_encode(f.method)));
    }
    match f.keeping {
        Keeping::Kept(id) => url.push_str(&format!("&kept={}", url_encode(id))),
        Keeping::NotKept(why) => url.push_str(&format!("&resend={why}")),
        Keeping::Nothing => {}
    }
    url
}

pub fn stepup(
    html: bool,
    return_to: &str,
    step_up: &StepUp,
    reason: StepUpReason,
    f: &ForRequest<'_>,
) -> Reply {
    metrics::CHALLENGES
        .with_label_values(&[if html { "redirect" } else { "rfc9470" }])
        .inc();
    let challenge = challenge_url(return_to, f);
    if html {
        return Reply::redirect(&challenge);
    }
    // RFC 9470: tell API clients what authentication would be enough.
    let methods: Vec<&str> = step_up.methods.iter().map(|f| f.name()).collect();
    let max_age = step_up.max_age.as_secs();
    let www = format!(
        "Bearer error=\"insufficient_user_authentication\", error_description=\"{}\", acr_values=\"{}\", max_age={max_age}",
        reason.describe(),
        methods.join(" ")
    );
    let mut body = serde_json::json!({
        "error": "insufficient_user_authentication",
        "error_description": reason.describe(),
        "methods": methods,
        "max_age": max_age,
        "challenge": challenge,
        "endpoints": {
            "trigger": "/.stepgate/api/stepup/trigger",
            "pin": "/.stepgate/api/stepup/pin",
            "email_otp_send": "/.stepgate/api/stepup/otp/email",
            "email_otp_verify": "/.stepgate/api/stepup/otp/email",
            "present_token_in": "X-Stepgate-Token",
        },
    });
    if matches!(reason, StepUpReason::Invalid(_) | StepUpReason::Revoked) {
        // LoginRadius's code for a second-factor validation token that is
        // not (or no longer) valid, for clients written to its API.
        body["ErrorCode"] = serde_json::json!(1193);
        body["Message"] = serde_json::json!("The second-factor validation token is invalid");
        body["Description"] = serde_json::json!(reason.describe());
    }
    if let Some(v) = f.binding {
        // What the step-up must approve: send it as `Binding` with the
        // step-up call.
        body["bind"] = serde_json::json!(step_up.bind);
        body["binding"] = crate::auth::binding::to_json(v);
    }
    Reply::json(401, &body).add("WWW-Authenticate", www)
}

/// A bound rule's request whose values cannot be read unambiguously:
/// refused (400), never guessed.
pub fn binding_refused(gate: &Gate, html: bool, why: &str) -> Reply {
    if html {
        gate.pages.message(
            400,
            "This request cannot be confirmed",
            &format!("stepgate cannot tell what this request asks to approve: {why}."),
            None,
        )
    } else {
        Reply::json(
            400,
            &serde_json::json!({"error": "invalid_request", "error_description": format!("the request's confirmed fields cannot be read: {why}")}),
        )
    }
}

/// A `deny` rule's answer.
pub fn denied(gate: &Gate, html: bool) -> Reply {
    if html {
        gate.pages.message(
            403,
            "Not allowed",
            "This address is not available through this gateway.",
            None,
        )
    } else {
        Reply::json(
            403,
            &serde_json::json!({"error": "forbidden", "error_description": "denied by policy"}),
        )
    }
}

/// No valid first factor: browsers go to `to` (PIN login or the login
/// URL) or see a page; API clients get 401 with `WWW-Authenticate`.
pub fn sign_in(gate: &Gate, html: bool, to: Option<String>, error: &AuthError) -> Reply {
    match (html, to) {
        (true, Some(url)) => Reply::redirect(&url),
        (true, None) => gate.pages.message(
            401,
            "Please sign in",
            "You need to be signed in to the application to open this page.",
            None,
        ),
        (false, _) => {
            let www = match error {
                AuthError::Missing => "Bearer realm=\"stepgate\"".to_string(),
                e => format!(
                    "Bearer realm=\"stepgate\", error=\"invalid_token\", error_description=\"{}\"",
                    e.reason()
                ),
            };
            Reply::json(
                401,
                &serde_json::json!({"error": "invalid_token", "error_description": error.reason()}),
            )
            .add("WWW-Authenticate", www)
        }
    }
}
