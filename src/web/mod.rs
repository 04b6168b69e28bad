//! stepgate's own pages under `/.stepgate/`: the factor choice, the PIN
//! challenge and PIN enrollment, health and assets. Every handler takes plain
//! data and returns a [`Reply`], so flows are testable without Pingora.
//! Flow errors become pages in one place, [`flow_page`].

mod account;
pub mod api;
mod email;
pub mod json;
pub mod loginradius;
mod oidc;
pub(crate) mod pending;
mod pin_api;
pub mod replies;
pub mod respond;

use minijinja::context;

use crate::auth::principal::{AuthError, Principal};
use crate::flows::error::FlowError;
use crate::flows::pin;
use crate::gate::Gate;
use crate::policy::Factor;
use crate::reply::{field, parse_form, query_param, safe_return_to, url_encode, FormError, Reply};
use crate::util::clock;
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
    /// `X-LoginRadius-ApiSecret`, the API secret as LoginRadius's SDKs send it.
    pub api_secret_header: Option<&'a str>,
    /// `X-LoginRadius-ApiKey`.
    pub api_key_header: Option<&'a str>,
    /// `X-Audit-Actor`: who an admin call acts for (the CLI sends its
    /// user), named in the audit line beside the caller's address.
    pub actor: Option<&'a str>,
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
    if let Some(which) = api_route(gate, req.path) {
        // Query names are matched in any case on both spellings.
        let query = loginradius::normalized_query(req.query);
        let inner = Req {
            query: query.as_deref(),
            principal: req.principal.clone(),
            cookies: req.cookies.clone(),
            origin: req.origin.clone(),
            stepup_token: req.stepup_token.clone(),
            ..*req
        };
        return match which {
            ApiRoute::Own(route) => api::route(gate, &inner, route).await,
            ApiRoute::LoginRadius(route) => loginradius::handle(gate, &inner, route).await,
        };
    }
    match (req.method, req.path) {
        ("GET" | "HEAD", "/.stepgate/health") => Reply::text(200, "ok"),
        ("GET" | "HEAD", "/.stepgate/ready") => match gate.store.ping().await {
            Ok(()) if !gate.revocations.loaded() => {
                Reply::text(503, "step-up invalidations not loaded yet")
            }
            Ok(()) => Reply::text(200, "ready"),
            Err(_) => Reply::text(503, "store unavailable"),
        },
        ("GET" | "HEAD", "/.stepgate/assets/stepgate.css") => Reply::css(crate::templates::CSS),
        ("GET" | "HEAD", "/.stepgate/jwks.json") => {
            let mut r = Reply::json(200, &gate.assertion.jwks());
            r.set("Cache-Control", "public, max-age=300".into());
            r.add("Access-Control-Allow-Origin", "*".into())
        }
        (_, "/.stepgate/oidc/start" | "/.stepgate/oidc/callback" | "/.stepgate/logout") => {
            oidc::pages(gate, req).await
        }
        (_, "/.stepgate/pin/forgot" | "/.stepgate/pin/reset" | "/.stepgate/pin/login") => {
            account::signed_out_pages(gate, req).await
        }
        _ => user_pages(gate, req).await,
    }
}

enum ApiRoute<'p> {
    /// stepgate's own spelling: the path under `/.stepgate/api`.
    Own(&'p str),
    /// LoginRadius's: the path under `/identity/v2`.
    LoginRadius(&'p str),
}

/// Which API, if any, a reserved path is addressed to. With
/// `api.loginradius_root`, every path under `/identity` (in any case) is
/// LoginRadius's: what is not an operation stepgate serves is answered 404
/// in LoginRadius's shape, never forwarded.
fn api_route<'p>(gate: &Gate, path: &'p str) -> Option<ApiRoute<'p>> {
    if let Some(own) = path.strip_prefix("/.stepgate/api") {
        if let Some(lr) = own
            .strip_prefix("/identity/v2")
            .filter(|r| r.starts_with('/'))
        {
            return Some(ApiRoute::LoginRadius(lr));
        }
        return own.starts_with('/').then_some(ApiRoute::Own(own));
    }
    if gate.settings.loginradius_root && is_identity(path) {
        let lr = match path.get(..12) {
            Some(p) if p.eq_ignore_ascii_case("/identity/v2") && path[12..].starts_with('/') => {
                &path[12..]
            }
            _ => path,
        };
        return Some(ApiRoute::LoginRadius(lr));
    }
    None
}

fn is_identity(path: &str) -> bool {
    crate::policy::first_segment_is(path, "identity")
}

/// Whether a reserved path is answered in JSON (either API spelling).
pub fn is_api_path(gate: &Gate, path: &str) -> bool {
    path.starts_with("/.stepgate/api/") || (gate.settings.loginradius_root && is_identity(path))
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
        ("GET", "/.stepgate/challenge") => challenge(gate, req, p).await,
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
    // stepgate signs browsers in itself: to the provider, through stepgate.
    if gate.oidc.is_some() {
        return Some(format!(
            "/.stepgate/oidc/start?return_to={}",
            url_encode(return_to)
        ));
    }
    let login = gate.settings.first_factor.login_url.as_ref()?;
    let base = gate.settings.public_url.as_deref().unwrap_or(origin);
    Some(login.replace("{return_to}", &url_encode(&format!("{base}{return_to}"))))
}

fn challenge_redirect(pending: &pending::Pending, page: &str) -> Reply {
    Reply::redirect(&pending.link(page))
}

async fn challenge(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let pending = match pending::Pending::read(gate, req, p, None).await {
        Ok(x) => x,
        Err(e) => return flow_page(gate, e, "/"),
    };
    let factors = pending.factors();
    // One factor: no choice to make.
    match factors.as_slice() {
        [Factor::Pin] => return challenge_redirect(&pending, "/.stepgate/pin"),
        [Factor::EmailOtp] => return challenge_redirect(&pending, "/.stepgate/email"),
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
        context! { factors => list, return_to => &pending.return_to, ..pending.context() },
    )
}

fn pin_form(
    gate: &Gate,
    status: u16,
    p: &Principal,
    pending: &pending::Pending,
    error: Option<String>,
) -> Reply {
    let s = &gate.settings.pin;
    let other_factors = pending.factors().len() > 1;
    gate.pages.render(
        status,
        "pin.html",
        context! { csrf => gate.keys.csrf_token(p, clock::now()), return_to => &pending.return_to, error, min_length => s.min_length, max_length => s.max_length, other_factors, ..pending.context() },
    )
}

async fn pin_page(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let pending = match pending::Pending::read(gate, req, p, None).await {
        Ok(x) => x,
        Err(e) => return flow_page(gate, e, "/"),
    };
    match pin::state(&*gate.store, &p.sub).await {
        Ok(pin::PinState::NotSet) => Reply::redirect(&pending.link("/.stepgate/pin/setup")),
        // A locked or suspended PIN's form says so when it is sent.
        Ok(_) => pin_form(gate, 200, p, &pending, None),
        Err(e) => flow_page(gate, e, &pending.return_to),
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
    let pending = match pending::Pending::read(gate, req, p, Some(&form)).await {
        Ok(x) => x,
        Err(e) => return flow_page(gate, e, "/"),
    };
    let entered = field(&form, "pin").unwrap_or("");
    match check_stepup_pin(gate, p, req.client_ip, entered).await {
        Ok(()) => {
            let txn = pending.txn();
            stepup_success(gate, req, p, Factor::Pin, &pending, txn).await
        }
        Err(FlowError::WrongPin { remaining }) => {
            let msg = format!(
                "That PIN is not right. {remaining} {} left before a lockout.",
                if remaining == 1 { "try" } else { "tries" }
            );
            pin_form(gate, 401, p, &pending, Some(msg))
        }
        Err(e) => flow_page(gate, e, &pending.return_to),
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

/// Issue the step-up token as a cookie and send the browser back, or, when
/// the step-up was for a kept request, let that request go on now (the
/// proxy forwards it in place of this POST; see `Reply::resend`). `txn`:
/// what the step-up approves on a bound rule. A PIN step-up also opens a
/// device PIN session (when PIN login is on), unless this device has one.
pub(crate) async fn stepup_success(
    gate: &Gate,
    req: &Req<'_>,
    p: &Principal,
    factor: Factor,
    pending: &pending::Pending,
    txn: Option<crate::auth::binding::Txn>,
) -> Reply {
    let ttl = gate.stepup_ttl();
    let (token, _) =
        gate.keys
            .issue_bound_stepup_ms(p, factor, crate::util::clock::now_ms(), ttl, txn);
    crate::flows::admin::note_step_up(gate, &p.sub, factor.name());
    crate::flows::lifecycle::remember_profile(gate, p).await;
    let mut reply = Reply::redirect(&pending.return_to).add(
        "Set-Cookie",
        crate::reply::OwnCookie::StepUp.set(&token, ttl, req.tls),
    );
    if let Some((id, k)) = &pending.kept {
        reply.resend = Some(Box::new(crate::reply::Resend {
            kept_id: id.clone(),
            method: k.method.clone(),
            target: k.target.clone(),
            content_type: k.content_type.clone(),
            body: bytes::Bytes::from(k.body.clone()),
            stepup_token: token,
        }));
    }
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
    let pending = match pending::Pending::read(gate, req, p, None).await {
        Ok(x) => x,
        Err(e) => return flow_page(gate, e, "/"),
    };
    let return_to = &pending.return_to;
    match pin::load_record(&*gate.store, &p.sub).await {
        Ok(Some(_)) => return Reply::redirect(&pending.link("/.stepgate/pin")),
        Ok(None) => {}
        Err(e) => return flow_page(gate, e, return_to),
    }
    if !login_is_fresh(gate, p) {
        return flow_page(gate, FlowError::LoginNotFresh, return_to);
    }
    setup_form(gate, 200, p, &pending, None)
}

fn setup_form(
    gate: &Gate,
    status: u16,
    p: &Principal,
    pending: &pending::Pending,
    error: Option<String>,
) -> Reply {
    let s = &gate.settings.pin;
    let can_skip = s.offer_setup && !s.required;
    gate.pages.render(
        status,
        "pin_setup.html",
        context! { csrf => gate.keys.csrf_token(p, clock::now()), return_to => &pending.return_to, error, min_length => s.min_length, max_length => s.max_length, can_skip, ..pending.context() },
    )
}

async fn setup_submit(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let form = match read_form(gate, req, p, "/.stepgate/pin/setup") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let pending = match pending::Pending::read(gate, req, p, Some(&form)).await {
        Ok(x) => x,
        Err(e) => return flow_page(gate, e, "/"),
    };
    let return_to = &pending.return_to;
    if !login_is_fresh(gate, p) {
        return flow_page(gate, FlowError::LoginNotFresh, return_to);
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
            Reply::redirect(&pending.link("/.stepgate/pin"))
        }
        Err(FlowError::PinMismatch) => setup_form(
            gate,
            400,
            p,
            &pending,
            Some("The two PINs differ. Enter the same PIN twice.".into()),
        ),
        Err(FlowError::PinRule(msg)) => setup_form(gate, 400, p, &pending, Some(msg)),
        Err(FlowError::PinAlreadySet) => Reply::redirect(&pending.link("/.stepgate/pin")),
        Err(e) => flow_page(gate, e, return_to),
    }
}

/// The one mapping from flow errors to pages.
pub fn flow_page(gate: &Gate, e: FlowError, return_to: &str) -> Reply {
    match e {
        // A browser with no PIN is sent to set one up, not told about it.
        FlowError::NoPin => {
            return Reply::redirect(&format!(
                "/.stepgate/pin/setup?return_to={}",
                url_encode(return_to)
            ))
        }
        FlowError::LoginNotFresh => {
            let x = respond::explain(&e, return_to);
            // With OIDC, the provider is asked for a fresh sign-in.
            let login = if gate.oidc.is_some() {
                Some(format!(
                    "/.stepgate/oidc/start?fresh=1&return_to={}",
                    url_encode(return_to)
                ))
            } else {
                gate.settings
                    .first_factor
                    .login_url
                    .as_ref()
                    .and(login_redirect(
                        gate,
                        gate.settings.public_url.as_deref().unwrap_or(""),
                        &format!("/.stepgate/challenge?return_to={}", url_encode(return_to)),
                    ))
            };
            let link = login.as_deref().map(|url| (url, "sign in again"));
            return gate.pages.message(x.status, x.heading, &x.text, link);
        }
        _ => {}
    }
    let x = respond::explain(&e, return_to);
    let link = x.link.as_ref().map(|(url, text)| (url.as_str(), *text));
    let reply = gate.pages.message(x.status, x.heading, &x.text, link);
    match x.retry_after {
        Some(s) => reply.add("Retry-After", s.to_string()),
        None => reply,
    }
}
