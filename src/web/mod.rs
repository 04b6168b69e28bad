//! stepgate's own pages under `/.stepgate/`: the factor choice, the PIN
//! challenge and PIN enrollment, health and assets. Every handler takes plain
//! data and returns a [`Reply`], so flows are testable without Pingora.
//! Flow errors become pages in one place, [`flow_page`].

mod account;
pub mod api;
mod email;
pub mod json;
mod pin_api;
pub mod replies;

use minijinja::context;

use crate::auth::decision::offered;
use crate::auth::principal::{AuthError, Principal};
use crate::flows::error::FlowError;
use crate::flows::pin;
use crate::gate::Gate;
use crate::policy::{Factor, Require};
use crate::reply::{field, parse_form, query_param, safe_return_to, url_encode, FormError, Reply};
use crate::util::clock;
use crate::util::clock::human_time;
use crate::util::metrics;

/// A request to a reserved path, already read and bounded.
pub struct Req<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub principal: Result<Principal, AuthError>,
    pub body: &'a [u8],
    pub content_type: Option<&'a str>,
    /// The raw Authorization header (API secret on back-channel calls).
    pub authorization: Option<&'a str>,
    pub client_ip: &'a str,
    pub tls: bool,
    /// `scheme://host` of this request, for absolute links.
    pub origin: String,
    /// The Cookie headers, joined.
    pub cookies: String,
    pub user_agent: &'a str,
    /// A step-up token presented with the request (cookie or header).
    pub stepup_token: Option<String>,
}

impl Req<'_> {
    pub fn cookie(&self, name: &str) -> Option<String> {
        crate::reply::cookie(std::iter::once(self.cookies.as_bytes()), name)
            .filter(|v| !v.is_empty())
    }

    /// This request's host for matching rules (lower case, no port), from
    /// its origin; "" when it has none.
    pub fn host(&self) -> String {
        self.origin
            .split_once("://")
            .and_then(|(_, a)| crate::request::Host::parse(a.as_bytes()).ok())
            .map(|h| h.name().to_string())
            .unwrap_or_default()
    }
}

/// Whether the request carries a step-up of this session (the
/// `X-Stepgate-Token` header or the step-up cookie), any factor, made within
/// `pin.enroll_window` and not invalidated since: what changing a recovery
/// credential asks for.
pub(crate) fn recent_stepup(gate: &Gate, req: &Req<'_>, p: &Principal) -> bool {
    let now = clock::now();
    let window = gate.settings.pin.enroll_window.as_secs() as i64;
    req.stepup_token.as_deref().is_some_and(|t| {
        gate.keys.verify_stepup(t, p, now).is_ok_and(|c| {
            let revoked = gate
                .revocations
                .revoked_before(&p.sub)
                .is_some_and(|r| c.issued_ms() <= r);
            now - c.auth_time <= window && !revoked
        })
    })
}

pub const MAX_FORM: usize = 16 * 1024;

pub async fn handle(gate: &Gate, req: &Req<'_>) -> Reply {
    if req.path.starts_with("/.stepgate/api/") {
        return api::handle(gate, req).await;
    }
    match (req.method, req.path) {
        ("GET" | "HEAD", "/.stepgate/health") => Reply::text(200, "ok"),
        ("GET" | "HEAD", "/.stepgate/ready") => match gate.store.ping().await {
            Ok(()) => Reply::text(200, "ready"),
            Err(_) => Reply::text(503, "store unavailable"),
        },
        ("GET" | "HEAD", "/.stepgate/assets/stepgate.css") => Reply::css(crate::templates::CSS),
        ("GET" | "HEAD", "/.stepgate/jwks.json") => {
            let mut r = Reply::json(200, &gate.assertion.jwks());
            r.set("Cache-Control", "public, max-age=300".into());
            r.add("Access-Control-Allow-Origin", "*".into())
        }
        (_, "/.stepgate/pin/forgot" | "/.stepgate/pin/reset" | "/.stepgate/pin/login") => {
            account::signed_out_pages(gate, req).await
        }
        _ => user_pages(gate, req).await,
    }
}

/// Pages for a signed-in user; without a valid first factor, the way to sign in.
async fn user_pages(gate: &Gate, req: &Req<'_>) -> Reply {
    const PAGES: [(&str, &str); 15] = [
        ("GET", "/.stepgate/challenge"),
        ("GET", "/.stepgate/pin"),
        ("POST", "/.stepgate/pin"),
        ("GET", "/.stepgate/pin/setup"),
        ("POST", "/.stepgate/pin/setup"),
        ("GET", "/.stepgate/email"),
        ("POST", "/.stepgate/email/send"),
        ("GET", "/.stepgate/email/verify"),
        ("POST", "/.stepgate/email/verify"),
        ("GET", "/.stepgate/account"),
        ("POST", "/.stepgate/account/pin"),
        ("POST", "/.stepgate/account/questions"),
        ("POST", "/.stepgate/account/sessions/revoke"),
        ("POST", "/.stepgate/account/revoke"),
        ("POST", "/.stepgate/pin/skip"),
    ];
    if !PAGES.iter().any(|(_, path)| *path == req.path) && req.path != "/.stepgate/health" {
        return gate.pages.message(
            404,
            "Not found",
            "stepgate has no page at this address.",
            None,
        );
    }
    if !PAGES.contains(&(req.method, req.path)) {
        return Reply::text(405, "method not allowed").add("Allow", "GET, POST".into());
    }
    let Ok(p) = &req.principal else {
        return login_needed(gate, req);
    };
    match (req.method, req.path) {
        ("GET", "/.stepgate/challenge") => challenge(gate, req, p),
        ("GET", "/.stepgate/pin") => pin_page(gate, req, p).await,
        ("POST", "/.stepgate/pin") => pin_submit(gate, req, p).await,
        ("GET", "/.stepgate/pin/setup") => setup_page(gate, req, p).await,
        ("POST", "/.stepgate/pin/setup") => setup_submit(gate, req, p).await,
        ("GET", "/.stepgate/email") => email::page(gate, req, p).await,
        ("POST", "/.stepgate/email/send") => email::send(gate, req, p).await,
        ("GET", "/.stepgate/email/verify") => email::code_page(gate, req, p).await,
        ("POST", "/.stepgate/email/verify") => email::verify(gate, req, p).await,
        ("GET", "/.stepgate/account") => account::page(gate, req, p, None, None).await,
        ("POST", "/.stepgate/account/pin") => account::change_pin(gate, req, p).await,
        ("POST", "/.stepgate/account/questions") => account::set_questions(gate, req, p).await,
        ("POST", "/.stepgate/account/sessions/revoke") => {
            account::revoke_session(gate, req, p).await
        }
        ("POST", "/.stepgate/account/revoke") => account::revoke_all(gate, req, p).await,
        ("POST", "/.stepgate/pin/skip") => account::skip(gate, req, p).await,
        _ => Reply::text(405, "method not allowed").add("Allow", "GET, POST".into()),
    }
}

/// Where to send someone without a valid first factor.
pub fn login_needed(gate: &Gate, req: &Req<'_>) -> Reply {
    let return_to = safe_return_to(query_param(req.query, "return_to").as_deref());
    match login_redirect(gate, &req.origin, &return_to) {
        Some(url) => Reply::redirect(&url),
        None => gate.pages.message(
            401,
            "Please sign in",
            "You need to be signed in to the application before confirming it is you.",
            None,
        ),
    }
}

/// The configured login URL with `{return_to}` filled in, if any.
pub fn login_redirect(gate: &Gate, origin: &str, return_to: &str) -> Option<String> {
    let login = gate.settings.first_factor.login_url.as_ref()?;
    let base = gate.settings.public_url.as_deref().unwrap_or(origin);
    Some(login.replace("{return_to}", &url_encode(&format!("{base}{return_to}"))))
}

/// The factors the rule behind `return_to` on this request's `host`
/// accepts (PIN when it cannot tell): host-scoped rules are looked up with
/// the host, as the proxy does.
pub(crate) fn factors_for(gate: &Gate, host: &str, return_to: &str) -> Vec<Factor> {
    let policy = &gate.policy;
    let path = return_to.split('?').next().unwrap_or("/");
    let path = crate::policy::normalize_path(path)
        .map(|(m, _)| m)
        .unwrap_or_else(|_| "/".into());
    match policy.lookup(host, "GET", &path).require {
        Require::StepUp(s) => offered(s),
        _ => vec![Factor::Pin],
    }
}

fn challenge(gate: &Gate, req: &Req<'_>, _p: &Principal) -> Reply {
    let return_to = safe_return_to(query_param(req.query, "return_to").as_deref());
    let factors = factors_for(gate, &req.host(), &return_to);
    // One factor: no choice to make.
    match factors.as_slice() {
        [Factor::Pin] => {
            return Reply::redirect(&format!(
                "/.stepgate/pin?return_to={}",
                url_encode(&return_to)
            ))
        }
        [Factor::EmailOtp] => {
            return Reply::redirect(&format!(
                "/.stepgate/email?return_to={}",
                url_encode(&return_to)
            ))
        }
        _ => {}
    }
    let list: Vec<_> = factors
        .iter()
        .map(|f| match f {
            Factor::Pin => context! { id => "pin", href => "/.stepgate/pin", label => "Enter your PIN" },
            Factor::EmailOtp => context! { id => "email", href => "/.stepgate/email", label => "Get a code by email" },
        })
        .collect();
    gate.pages.render(
        200,
        "challenge.html",
        context! { factors => list, return_to },
    )
}

fn pin_form(
    gate: &Gate,
    req: &Req<'_>,
    status: u16,
    p: &Principal,
    return_to: &str,
    error: Option<String>,
) -> Reply {
    let s = &gate.settings.pin;
    let other_factors = factors_for(gate, &req.host(), return_to).len() > 1;
    gate.pages.render(
        status,
        "pin.html",
        context! { csrf => gate.keys.csrf_token(p, clock::now()), return_to, error, min_length => s.min_length, max_length => s.max_length, other_factors },
    )
}

async fn pin_page(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let return_to = safe_return_to(query_param(req.query, "return_to").as_deref());
    match pin::load_record(&*gate.store, &p.sub).await {
        Ok(None) => Reply::redirect(&format!(
            "/.stepgate/pin/setup?return_to={}",
            url_encode(&return_to)
        )),
        Ok(Some(_)) => pin_form(gate, req, 200, p, &return_to, None),
        Err(e) => flow_page(gate, e, &return_to),
    }
}

/// Parse a form body, checking the content type and the CSRF token.
fn read_form(
    gate: &Gate,
    req: &Req<'_>,
    p: &Principal,
    page: &str,
) -> Result<Vec<(String, String)>, Reply> {
    let ct = req.content_type.unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(gate.pages.message(
            415,
            "Unsupported form",
            "This form must be sent as application/x-www-form-urlencoded.",
            None,
        ));
    }
    let form = parse_form(req.body).map_err(|e| {
        let msg = match e {
            FormError::BadEncoding => {
                "The form was not correctly encoded. Go back and try again.".to_string()
            }
            FormError::DuplicateField(f) => {
                format!("The form repeated the field `{f}`. Go back and try again.")
            }
        };
        gate.pages.message(400, "Malformed form", &msg, None)
    })?;
    let csrf = field(&form, "csrf").unwrap_or("");
    if !gate.keys.check_csrf(p, csrf, clock::now()) {
        let back = format!(
            "{page}?return_to={}",
            url_encode(&safe_return_to(field(&form, "return_to")))
        );
        return Err(gate.pages.message(
            403,
            "This form has expired",
            "The form was too old or did not come from this site. Open it again and retry.",
            Some((&back, "Open the form again")),
        ));
    }
    Ok(form)
}

async fn pin_submit(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let form = match read_form(gate, req, p, "/.stepgate/pin") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let return_to = safe_return_to(field(&form, "return_to"));
    let entered = field(&form, "pin").unwrap_or("");
    match check_stepup_pin(gate, p, req.client_ip, entered).await {
        Ok(()) => stepup_success(gate, req, p, Factor::Pin, &return_to).await,
        Err(FlowError::WrongPin { remaining }) => {
            let msg = format!(
                "That PIN is not right. {remaining} {} left before a lockout.",
                if remaining == 1 { "try" } else { "tries" }
            );
            pin_form(gate, req, 401, p, &return_to, Some(msg))
        }
        Err(e) => flow_page(gate, e, &return_to),
    }
}

/// A PIN step-up check under the lockout, counted in
/// `stepgate_stepups_total{factor="pin"}` by outcome (pages and API).
pub(crate) async fn check_stepup_pin(
    gate: &Gate,
    p: &Principal,
    ip: &str,
    entered: &str,
) -> Result<(), FlowError> {
    let notice = |sub: &str, ip: &str| crate::flows::notice::pin_suspended(gate, sub, ip);
    let r = pin::verify(
        &*gate.store,
        &gate.hasher,
        &gate.settings.lockout,
        &p.sub,
        ip,
        entered,
        Some(&notice),
    )
    .await;
    let outcome = match &r {
        Ok(()) => "success",
        Err(FlowError::WrongPin { .. }) => "failure",
        Err(FlowError::Locked { .. } | FlowError::Suspended) => "locked",
        Err(_) => "error",
    };
    metrics::STEPUPS.with_label_values(&["pin", outcome]).inc();
    r
}

/// Issue the step-up token as a cookie and send the browser back. A PIN
/// step-up also opens a device PIN session (when PIN login is on), unless
/// this device has one.
pub(crate) async fn stepup_success(
    gate: &Gate,
    req: &Req<'_>,
    p: &Principal,
    factor: Factor,
    return_to: &str,
) -> Reply {
    let ttl = gate.stepup_ttl();
    let (token, _) = gate
        .keys
        .issue_stepup_ms(p, factor, crate::util::clock::now_ms(), ttl);
    let name = gate.stepup_cookie_name(req.tls);
    let secure = if req.tls { "; Secure" } else { "" };
    crate::flows::lifecycle::remember_profile(gate, p).await;
    let reply = Reply::redirect(return_to).add(
        "Set-Cookie",
        format!("{name}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={ttl}{secure}"),
    );
    if factor != Factor::Pin || !gate.settings.pin.login || p.pin_session.is_some() {
        return reply;
    }
    match account::device_session_cookie(gate, req, p).await {
        Some(c) => reply.add("Set-Cookie", c),
        None => reply,
    }
}

/// PIN enrollment needs a login younger than `pin.enroll_window`.
pub fn login_is_fresh(gate: &Gate, p: &Principal) -> bool {
    crate::flows::lifecycle::fresh_login(
        p.login_time,
        gate.settings.pin.enroll_window,
        clock::now(),
    )
}

async fn setup_page(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let return_to = safe_return_to(query_param(req.query, "return_to").as_deref());
    match pin::load_record(&*gate.store, &p.sub).await {
        Ok(Some(_)) => {
            return Reply::redirect(&format!(
                "/.stepgate/pin?return_to={}",
                url_encode(&return_to)
            ))
        }
        Ok(None) => {}
        Err(e) => return flow_page(gate, e, &return_to),
    }
    if !login_is_fresh(gate, p) {
        return flow_page(gate, FlowError::LoginNotFresh, &return_to);
    }
    setup_form(gate, 200, p, &return_to, None)
}

fn setup_form(
    gate: &Gate,
    status: u16,
    p: &Principal,
    return_to: &str,
    error: Option<String>,
) -> Reply {
    let s = &gate.settings.pin;
    let can_skip = s.offer_setup && !s.required;
    gate.pages.render(
        status,
        "pin_setup.html",
        context! { csrf => gate.keys.csrf_token(p, clock::now()), return_to, error, min_length => s.min_length, max_length => s.max_length, can_skip },
    )
}

async fn setup_submit(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let form = match read_form(gate, req, p, "/.stepgate/pin/setup") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let return_to = safe_return_to(field(&form, "return_to"));
    if !login_is_fresh(gate, p) {
        return flow_page(gate, FlowError::LoginNotFresh, &return_to);
    }
    let (pin1, pin2) = (
        field(&form, "pin").unwrap_or(""),
        field(&form, "pin_confirm").unwrap_or(""),
    );
    match pin::enroll(
        &*gate.store,
        &gate.hasher,
        &gate.settings.pin,
        &p.sub,
        req.client_ip,
        pin1,
        pin2,
    )
    .await
    {
        Ok(()) => {
            gate.known_pins.insert(&p.sub);
            crate::flows::lifecycle::remember_profile(gate, p).await;
            gate.notifier
                .event("SetPIN", &p.sub, serde_json::json!({"Method": "setup"}));
            Reply::redirect(&format!(
                "/.stepgate/pin?return_to={}",
                url_encode(&return_to)
            ))
        }
        Err(FlowError::PinMismatch) => setup_form(
            gate,
            400,
            p,
            &return_to,
            Some("The two PINs differ. Enter the same PIN twice.".into()),
        ),
        Err(FlowError::PinRule(msg)) => setup_form(gate, 400, p, &return_to, Some(msg)),
        Err(FlowError::PinAlreadySet) => Reply::redirect(&format!(
            "/.stepgate/pin?return_to={}",
            url_encode(&return_to)
        )),
        Err(e) => flow_page(gate, e, &return_to),
    }
}

/// The one mapping from flow errors to pages.
pub fn flow_page(gate: &Gate, e: FlowError, return_to: &str) -> Reply {
    let pages = &gate.pages;
    match e {
        FlowError::Locked { until } => {
            let wait = (until - clock::now()).max(1);
            pages
                .message(
                    429,
                    "Too many attempts",
                    &format!(
                        "Confirmation is locked after too many wrong attempts. Try again after {}.",
                        human_time(until)
                    ),
                    None,
                )
                .add("Retry-After", wait.to_string())
        }
        FlowError::Suspended => pages.message(
            403,
            "PIN suspended",
            "Your PIN is suspended after too many wrong tries. Reset it with 'Forgot PIN' or ask your helpdesk.",
            Some(("/.stepgate/pin/forgot", "Forgot PIN")),
        ),
        FlowError::LoginNotFresh => {
            let login = gate
                .settings
                .first_factor
                .login_url
                .as_ref()
                .map(|_| "sign in again");
            let msg = "Setting up a new way to confirm it is you (a PIN or an email address) needs a recent sign-in. Sign out and sign in again, then come back to this page.";
            match (
                login,
                login_redirect(
                    gate,
                    gate.settings.public_url.as_deref().unwrap_or(""),
                    &format!("/.stepgate/challenge?return_to={}", url_encode(return_to)),
                ),
            ) {
                (Some(text), Some(url)) => {
                    pages.message(403, "Sign in again", msg, Some((&url, text)))
                }
                _ => pages.message(403, "Sign in again", msg, None),
            }
        }
        FlowError::StepUpRequired => pages.message(
            403,
            "Confirm it is you first",
            "Saving security answers needs your PIN: enter your current PIN with the answers, or confirm with your PIN first and come back.",
            Some((
                &format!("/.stepgate/challenge?return_to={}", url_encode(return_to)),
                "Confirm it is you",
            )),
        ),
        FlowError::StoreUnavailable => pages
            .message(
                503,
                "Temporarily unavailable",
                "stepgate cannot check your confirmation right now. Try again in a moment.",
                None,
            )
            .add("Retry-After", "5".into()),
        FlowError::NoPin => Reply::redirect(&format!(
            "/.stepgate/pin/setup?return_to={}",
            url_encode(return_to)
        )),
        FlowError::WrongPin { .. }
        | FlowError::PinMismatch
        | FlowError::PinRule(_)
        | FlowError::PinAlreadySet => {
            pages.message(400, "Not accepted", "The PIN was not accepted.", None)
        }
        FlowError::EmailNotInProfile => pages.message(400, "Unknown address", "That address is not one of your profile's addresses; nothing was sent.", None),
        FlowError::NotConfigured => pages.message(501, "Not available", "Email codes are not set up on this gateway. Choose another method.", None),
        FlowError::Cooldown { retry_after } => pages
            .message(429, "Please wait", &format!("A code was sent moments ago. You can ask for a new one in {retry_after} seconds."), None)
            .add("Retry-After", retry_after.to_string()),
        FlowError::SendLimit { until } => pages
            .message(429, "Too many codes", &format!("Too many codes were sent to you in the last hour. You can ask for a new one after {}.", human_time(until)), None)
            .add("Retry-After", (until - clock::now()).max(1).to_string()),
        FlowError::MailFailed => pages.message(
            502,
            "The code could not be sent",
            "The mail server did not accept the message. Nothing was used up: try again in a moment.",
            Some((&format!("/.stepgate/email?return_to={}", url_encode(return_to)), "Try again")),
        ),
        FlowError::NoCode => pages.message(
            400,
            "No valid code",
            "This code was already used, has expired, or was tried too often. Ask for a new one.",
            Some((&format!("/.stepgate/email?return_to={}", url_encode(return_to)), "Send a new code")),
        ),
        FlowError::WrongCode { .. } => pages.message(401, "Not accepted", "The code was not accepted.", None),
        FlowError::WrongCurrentPin { .. } => pages.message(401, "Not accepted", "The current PIN is not right.", None),
        FlowError::AuthTokenInvalid | FlowError::AuthTokenExpired => pages.message(400, "Link not valid", "This PIN setup token is unknown, used or expired.", None),
        FlowError::ResetUsed => pages.message(
            400,
            "This link was already used",
            "Each reset link works once. Ask for a new one if you still need to reset your PIN.",
            Some(("/.stepgate/pin/forgot", "Ask for a new link")),
        ),
        FlowError::ResetInvalid => pages.message(
            400,
            "This link is not valid",
            "The reset link has expired or is not complete. Ask for a new one.",
            Some(("/.stepgate/pin/forgot", "Ask for a new link")),
        ),
        FlowError::SessionInvalid | FlowError::SessionExpired => pages.message(401, "Please sign in", "This device's PIN session has ended. Sign in again.", None),
        FlowError::WrongAnswers { .. } => pages.message(401, "Not accepted", "The answers were not right.", None),
        FlowError::UnknownQuestion(_) => pages.message(400, "Unknown question", "That question is not offered here.", None),
        FlowError::ResetUrlNotAllowed => pages.message(400, "Not allowed", "That reset address is not allowed.", None),
        FlowError::Disabled(why) => pages.message(501, "Not available", why, None),
        FlowError::BadAnswer(why) => pages.message(400, "Answer not accepted", &why, None),
        FlowError::ResetCodeRefused => pages.message(401, "Not accepted", "The code is wrong, used or expired.", None),
        FlowError::Internal => pages.message(
            500,
            "Something went wrong",
            "stepgate hit an internal error; it is in the gateway log.",
            None,
        ),
    }
}
