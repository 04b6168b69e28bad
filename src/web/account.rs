//! Browser pages of the PIN lifecycle: the account page (change PIN,
//! security answers, PIN sessions, step-down), the optional-setup skip, and
//! the signed-out pages (forgot PIN, reset by link, PIN login on a device
//! that keeps a PIN session). Signed-out forms carry a CSRF token bound to a
//! nonce cookie.

use minijinja::context;

use super::{flow_page, login_needed, read_form, Req};
use crate::auth::principal::Principal;
use crate::flows::error::FlowError;
use crate::flows::lifecycle;
use crate::flows::pin;
use crate::flows::profile::{Identifier, Profile};
use crate::gate::Gate;
use crate::reply::{field, parse_form, query_param, safe_return_to, url_encode, OwnCookie, Reply};
use crate::util::clock;
use crate::util::clock::human_time;

/// Open a device PIN session for `p` unless this device has a live one;
/// returns the Set-Cookie value.
pub(super) async fn device_session_cookie(
    gate: &Gate,
    req: &Req<'_>,
    p: &Principal,
) -> Option<String> {
    let name = gate.pin_session_cookie(req.tls);
    if let Some(t) = req.cookie(name) {
        if lifecycle::load_session(gate, &t)
            .await
            .is_ok_and(|s| s.sub == p.sub)
        {
            return None;
        }
    }
    match lifecycle::open_session(gate, Profile::of(p), p.login_time, req.user_agent).await {
        Ok((token, _)) => Some(OwnCookie::PinSession.set(
            &token,
            gate.settings.pin.session_ttl.as_secs() as i64,
            req.tls,
        )),
        Err(e) => {
            tracing::warn!(target: "stepgate", user = %p.sub, error = ?e, "could not open a PIN session");
            None
        }
    }
}

/// The account page, with an optional notice or error.
pub(super) async fn page(
    gate: &Gate,
    req: &Req<'_>,
    p: &Principal,
    error: Option<String>,
    status: Option<u16>,
) -> Reply {
    let notice = match query_param(req.query, "done").as_deref() {
        Some("pin") => {
            Some("Your PIN was changed. Your PIN sessions on other devices were signed out.")
        }
        Some("questions") => Some("Your security answers were saved."),
        Some("session") => Some("That device was signed out."),
        Some("all") => Some("Every confirmation and PIN session of yours was ended."),
        _ => None,
    };
    let pin_set = match pin::load_record(&*gate.store, &p.sub).await {
        Ok(r) => r.is_some(),
        Err(e) => return flow_page(gate, e, "/"),
    };
    let answered = match lifecycle::answered(gate, &p.sub).await {
        Ok(a) => a,
        Err(e) => return flow_page(gate, e, "/"),
    };
    let sessions = match lifecycle::sessions(gate, &p.sub).await {
        Ok(s) => s,
        Err(e) => return flow_page(gate, e, "/"),
    };
    let current = req
        .cookie(gate.pin_session_cookie(req.tls))
        .map(|t| crate::auth::tokens::token_digest(&t));
    let sessions: Vec<_> = sessions
        .iter()
        .map(|s| context! { id => s.id, device => s.device, created => human_time(s.created), expires => human_time(s.expires), current => current.as_deref() == Some(s.id.as_str()) })
        .collect();
    let questions: Vec<_> = gate
        .settings
        .security_questions
        .iter()
        .map(|q| context! { id => q.id, question => q.question, answered => answered.contains(&q.id) })
        .collect();
    let s = &gate.settings.pin;
    gate.pages.render(
        status.unwrap_or(200),
        "account.html",
        context! { csrf => gate.keys.csrf_token(p, clock::now()), pin_set, questions, sessions, notice, error, min_length => s.min_length, max_length => s.max_length },
    )
}

pub(super) async fn change_pin(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let form = match read_form(gate, req, p, "/.stepgate/account") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let old = field(&form, "old_pin").unwrap_or("");
    let new = field(&form, "new_pin").unwrap_or("");
    if Some(new) != field(&form, "new_pin_confirm") {
        return page(
            gate,
            req,
            p,
            Some("The two new PINs differ.".into()),
            Some(400),
        )
        .await;
    }
    let keep = req
        .cookie(gate.pin_session_cookie(req.tls))
        .map(|t| crate::auth::tokens::token_digest(&t));
    match lifecycle::change(gate, p, req.client_ip, old, new, keep.as_deref()).await {
        Ok(()) => Reply::redirect("/.stepgate/account?done=pin"),
        Err(FlowError::WrongCurrentPin { remaining }) => {
            let msg = format!(
                "The current PIN is not right. {remaining} {} left before a lockout.",
                if remaining == 1 { "try" } else { "tries" }
            );
            page(gate, req, p, Some(msg), Some(401)).await
        }
        Err(FlowError::PinRule(msg)) => page(gate, req, p, Some(msg), Some(400)).await,
        Err(e) => flow_page(gate, e, "/.stepgate/account"),
    }
}

pub(super) async fn set_questions(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let form = match read_form(gate, req, p, "/.stepgate/account") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let answers: Vec<(String, String)> = form
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("q_")
                .filter(|_| !v.trim().is_empty())
                .map(|id| (id.to_string(), v.clone()))
        })
        .collect();
    if answers.is_empty() {
        return page(
            gate,
            req,
            p,
            Some("Answer at least one question.".into()),
            Some(400),
        )
        .await;
    }
    let proof = lifecycle::AnswersProof {
        recent_step_up: super::recent_stepup(gate, req, p),
        pin: field(&form, "pin"),
    };
    match lifecycle::set_answers(gate, p, &answers, proof, req.client_ip).await {
        Ok(_) => Reply::redirect("/.stepgate/account?done=questions"),
        Err(FlowError::PinRule(msg) | FlowError::BadAnswer(msg)) => {
            page(gate, req, p, Some(msg), Some(400)).await
        }
        Err(FlowError::WrongCurrentPin { remaining }) => {
            let msg = format!(
                "The current PIN is not right; the answers were not saved. {remaining} {} left before a lockout.",
                if remaining == 1 { "try" } else { "tries" }
            );
            page(gate, req, p, Some(msg), Some(401)).await
        }
        Err(FlowError::LoginNotFresh) => {
            let back = format!(
                "/.stepgate/challenge?return_to={}",
                url_encode("/.stepgate/account")
            );
            gate.pages.message(
                403,
                "Confirm it is you first",
                "Saving security answers needs a recent sign-in or confirmation.",
                Some((&back, "Confirm it is you")),
            )
        }
        Err(e) => flow_page(gate, e, "/.stepgate/account"),
    }
}

pub(super) async fn revoke_session(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let form = match read_form(gate, req, p, "/.stepgate/account") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let id = field(&form, "id").unwrap_or("");
    match lifecycle::end_session(gate, id, Some(&p.sub)).await {
        Ok(_) => Reply::redirect("/.stepgate/account?done=session"),
        Err(e) => flow_page(gate, e, "/.stepgate/account"),
    }
}

pub(super) async fn revoke_all(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    if let Err(r) = read_form(gate, req, p, "/.stepgate/account") {
        return r;
    }
    match lifecycle::invalidate_user(gate, &p.sub, req.client_ip).await {
        Ok(()) => Reply::redirect("/.stepgate/account?done=all"),
        Err(e) => flow_page(gate, e, "/.stepgate/account"),
    }
}

pub(super) async fn skip(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let form = match read_form(gate, req, p, "/.stepgate/pin/setup") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let return_to = safe_return_to(field(&form, "return_to"));
    match lifecycle::skip_setup(gate, &p.sub, req.client_ip).await {
        Ok(()) => Reply::redirect(&return_to),
        Err(e) => flow_page(gate, e, &return_to),
    }
}

// ---------- signed-out pages ----------

/// The nonce behind signed-out CSRF tokens: the cookie's, or a new one (with
/// its Set-Cookie).
fn nonce(gate: &Gate, req: &Req<'_>) -> (String, Option<String>) {
    let name = gate.nonce_cookie(req.tls);
    match req.cookie(name).filter(|n| n.len() >= 16 && n.len() <= 64) {
        Some(n) => (n, None),
        None => {
            let n = crate::auth::tokens::random_id();
            let c = OwnCookie::Nonce.set(&n, 3600, req.tls);
            (n, Some(c))
        }
    }
}

fn with_nonce(r: Reply, set: Option<String>) -> Reply {
    match set {
        Some(c) => r.add("Set-Cookie", c),
        None => r,
    }
}

/// Parse a signed-out form and check its CSRF token against the nonce cookie.
fn read_signed_out_form(
    gate: &Gate,
    req: &Req<'_>,
    back: &str,
) -> Result<Vec<(String, String)>, Reply> {
    if !req
        .content_type
        .unwrap_or("")
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(gate.pages.message(
            415,
            "Unsupported form",
            "This form must be sent as application/x-www-form-urlencoded.",
            None,
        ));
    }
    let form = parse_form(req.body).map_err(|_| {
        gate.pages.message(
            400,
            "Malformed form",
            "The form was not correctly encoded. Go back and try again.",
            None,
        )
    })?;
    let nonce = req.cookie(gate.nonce_cookie(req.tls)).unwrap_or_default();
    if !gate
        .keys
        .check_anon_csrf(&nonce, field(&form, "csrf").unwrap_or(""), clock::now())
    {
        return Err(gate.pages.message(
            403,
            "This form has expired",
            "The form was too old or did not come from this site. Open it again and retry.",
            Some((back, "Open the form again")),
        ));
    }
    Ok(form)
}

pub(super) async fn signed_out_pages(gate: &Gate, req: &Req<'_>) -> Reply {
    match (req.method, req.path) {
        ("GET", "/.stepgate/pin/forgot") => forgot_form(gate, req, None, 200),
        ("POST", "/.stepgate/pin/forgot") => forgot_submit(gate, req).await,
        ("GET", "/.stepgate/pin/reset") => reset_page(gate, req).await,
        ("POST", "/.stepgate/pin/reset") => reset_submit(gate, req).await,
        ("GET", "/.stepgate/pin/login") => {
            let return_to = safe_return_to(query_param(req.query, "return_to").as_deref());
            login_page(gate, req, &return_to, None, 200).await
        }
        ("POST", "/.stepgate/pin/login") => login_submit(gate, req).await,
        _ => Reply::text(405, "method not allowed").add("Allow", "GET, POST".into()),
    }
}

fn forgot_form(gate: &Gate, req: &Req<'_>, error: Option<&str>, status: u16) -> Reply {
    let (n, set) = nonce(gate, req);
    let r = gate.pages.render(
        status,
        "pin_forgot.html",
        context! { csrf => gate.keys.anon_csrf(&n, clock::now()), error, sent => false, link_mode => gate.settings.pin.forgot == crate::config::ForgotMode::Link },
    );
    with_nonce(r, set)
}

async fn forgot_submit(gate: &Gate, req: &Req<'_>) -> Reply {
    let form = match read_signed_out_form(gate, req, "/.stepgate/pin/forgot") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let typed = field(&form, "identifier").unwrap_or("").trim();
    let kind = if typed.contains('@') {
        "email"
    } else {
        "username"
    };
    let Some(id) = Identifier::parse(kind, typed) else {
        return forgot_form(
            gate,
            req,
            Some("Enter the email address or username of your account."),
            400,
        );
    };
    let minutes = gate.settings.pin.reset_ttl.as_secs().div_ceil(60);
    match lifecycle::forgot(gate, &id, None, &req.origin, req.client_ip).await {
        // A cooldown says nothing about the account: it applies to any name.
        Ok(()) | Err(FlowError::Cooldown { .. }) => {
            gate.pages
                .render(200, "pin_forgot.html", context! { sent => true, minutes })
        }
        Err(e) => flow_page(gate, e, "/"),
    }
}

fn reset_form(
    gate: &Gate,
    req: &Req<'_>,
    token: &str,
    error: Option<String>,
    status: u16,
) -> Reply {
    let (n, set) = nonce(gate, req);
    let s = &gate.settings.pin;
    let r = gate.pages.render(
        status,
        "pin_reset.html",
        context! { csrf => gate.keys.anon_csrf(&n, clock::now()), token, error, min_length => s.min_length, max_length => s.max_length },
    );
    with_nonce(r, set)
}

async fn reset_page(gate: &Gate, req: &Req<'_>) -> Reply {
    let token = query_param(req.query, "token").unwrap_or_default();
    match lifecycle::check_reset_token(gate, &token).await {
        Ok(()) => reset_form(gate, req, &token, None, 200),
        Err(e) => flow_page(gate, e, "/"),
    }
}

async fn reset_submit(gate: &Gate, req: &Req<'_>) -> Reply {
    let form = match read_signed_out_form(gate, req, "/.stepgate/pin/forgot") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let token = field(&form, "token").unwrap_or("");
    let (pin1, pin2) = (
        field(&form, "pin").unwrap_or(""),
        field(&form, "pin_confirm").unwrap_or(""),
    );
    if pin1 != pin2 {
        return reset_form(
            gate,
            req,
            token,
            Some("The two PINs differ. Enter the same PIN twice.".into()),
            400,
        );
    }
    match lifecycle::reset_by_token(gate, token, pin1, req.client_ip).await {
        Ok(()) => gate.pages.message(
            200,
            "Your PIN was reset",
            "Use your new PIN from now on. Your PIN sessions and confirmations on every device were ended.",
            Some(("/", "Continue")),
        ),
        Err(FlowError::PinRule(msg)) => reset_form(gate, req, token, Some(msg), 400),
        Err(e) => flow_page(gate, e, "/"),
    }
}

async fn login_page(
    gate: &Gate,
    req: &Req<'_>,
    return_to: &str,
    error: Option<String>,
    status: u16,
) -> Reply {
    let Some(token) = req.cookie(gate.pin_session_cookie(req.tls)) else {
        return login_needed(gate, req);
    };
    let session = match lifecycle::load_session(gate, &token).await {
        Ok(s) => s,
        Err(FlowError::StoreUnavailable) => {
            return flow_page(gate, FlowError::StoreUnavailable, return_to)
        }
        Err(_) => return login_needed(gate, req).add("Set-Cookie", clear_cookie(req)),
    };
    let who = session
        .profile
        .otp_emails
        .first()
        .map(|e| crate::flows::otp::mask(e));
    let login_url = super::login_redirect(gate, &req.origin, return_to);
    let (n, set) = nonce(gate, req);
    let s = &gate.settings.pin;
    let r = gate.pages.render(
        status,
        "pin_login.html",
        context! { csrf => gate.keys.anon_csrf(&n, clock::now()), return_to, error, who, login_url, min_length => s.min_length, max_length => s.max_length },
    );
    with_nonce(r, set)
}

fn clear_cookie(req: &Req<'_>) -> String {
    OwnCookie::PinSession.clear(req.tls)
}

async fn login_submit(gate: &Gate, req: &Req<'_>) -> Reply {
    let form = match read_signed_out_form(gate, req, "/.stepgate/pin/login") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let return_to = safe_return_to(field(&form, "return_to"));
    let token = req
        .cookie(gate.pin_session_cookie(req.tls))
        .unwrap_or_default();
    let entered = field(&form, "pin").unwrap_or("");
    match lifecycle::pin_login(gate, &token, entered, req.user_agent, req.client_ip).await {
        Ok((access, exp, _)) => {
            let max_age = (exp - clock::now()).max(1);
            let reply = Reply::redirect(&return_to).add(
                "Set-Cookie",
                OwnCookie::Login.set(&access, max_age, req.tls),
            );
            // The PIN was just entered: that is a PIN step-up for the new
            // session too, so a PIN-protected return_to does not ask again.
            match gate.authenticate(&access, clock::now()) {
                Ok(p) => {
                    crate::util::metrics::STEPUPS
                        .with_label_values(&["pin", "success"])
                        .inc();
                    let ttl = gate.stepup_ttl();
                    let (su, _) = gate.keys.issue_stepup_ms(
                        &p,
                        crate::policy::Factor::Pin,
                        crate::util::clock::now_ms(),
                        ttl,
                    );
                    reply.add("Set-Cookie", OwnCookie::StepUp.set(&su, ttl, req.tls))
                }
                Err(_) => reply,
            }
        }
        Err(FlowError::WrongPin { remaining }) => {
            let msg = format!(
                "That PIN is not right. {remaining} {} left before a lockout.",
                if remaining == 1 { "try" } else { "tries" }
            );
            login_page(gate, req, &return_to, Some(msg), 401).await
        }
        Err(FlowError::SessionInvalid | FlowError::SessionExpired) => {
            login_needed(gate, req).add("Set-Cookie", clear_cookie(req))
        }
        Err(e) => flow_page(gate, e, &return_to),
    }
}
