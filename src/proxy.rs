//! The Pingora shell. Each phase is a few lines that follow DESIGN.md's
//! request flow and call into plain code: strip identity headers, answer
//! `/.stepgate/`, decide, forward with injected headers. No policy logic,
//! token parsing or HTML lives here.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;

use crate::auth::decision::{decide_with, Decision, Facts, StepUpReason};
use crate::auth::principal::Principal;
use crate::auth::tokens::StepUpClaims;
use crate::edge::{
    canonicalize, client_ip, credentials, header, may_override_method, strip_cookies, Credentials,
    CLIENT_CLAIMS, REROUTING,
};
use crate::gate::{Gate, Shared};
use crate::reply::{cookie, safe_return_to, wants_html, Reply};
use crate::request::{CanonicalRequest, Refusal};
use crate::store::keys;
use crate::util::clock;
use crate::util::metrics;
use crate::web::{self, login_redirect, replies, MAX_FORM};

pub struct Proxy {
    pub shared: Arc<Shared>,
}

#[derive(Default)]
pub struct Ctx {
    request_id: String,
    /// The snapshot this request started with; it keeps it to the end.
    gate: Option<Arc<Gate>>,
    label: &'static str,
    rule: String,
    principal: Option<Principal>,
    step_up: Option<StepUpClaims>,
    /// The request as parsed once at the edge; everything after uses it.
    canon: Option<CanonicalRequest>,
    /// The Authorization / first-factor cookie that was not the judged
    /// credential: removed before forwarding.
    strip_bearer: bool,
    strip_ff_cookie: bool,
    client_ip: String,
    peer_trusted: bool,
    /// Host name for logs and upstream choice (empty until parsed).
    host: String,
    started: Option<Instant>,
}

/// Write a reply stepgate made itself, with Content-Length so keep-alive
/// clients are not left waiting.
async fn send(session: &mut Session, reply: Reply) -> Result<()> {
    let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + 1))?;
    for (k, v) in reply.headers {
        resp.append_header(k, v)?;
    }
    resp.insert_header("Content-Length", reply.body.len().to_string())?;
    if let Some(id) = session.req_header().headers.get("x-request-id").cloned() {
        resp.insert_header("X-Request-Id", id)?;
    }
    let head = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head || reply.body.is_empty())
        .await?;
    if !head && !reply.body.is_empty() {
        session.write_response_body(Some(reply.body), true).await?;
    }
    Ok(())
}

/// `scheme://host` of this request, for absolute links.
fn origin(session: &Session, tls: bool, fallback_host: &str) -> String {
    let host = header(session.req_header(), "host").unwrap_or(fallback_host);
    format!("{}://{host}", if tls { "https" } else { "http" })
}

/// Where to come back to after a challenge or a sign-in: this request.
fn return_to_of(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => safe_return_to(Some(&format!("{path}?{q}"))),
        None => safe_return_to(Some(path)),
    }
}

/// A request to stepgate's own paths: its body (at most `MAX_FORM`, within
/// `timeouts.reserved_body`), then the page or API answer.
async fn reserved(
    session: &mut Session,
    ctx: &Ctx,
    gate: &Gate,
    access_token: Option<&str>,
    stepup_token: Option<String>,
) -> Result<Reply> {
    let Some(canon) = ctx.canon.as_ref() else {
        return Ok(replies::refusal(gate, Refusal::TargetForm, false));
    };
    let (method, match_path, query) = (&canon.method, canon.path.matched(), canon.query.as_deref());
    let tls = gate.settings.tls.is_some();
    let declared = header(session.req_header(), "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = Vec::new();
    if declared > MAX_FORM {
        return Ok(replies::too_large(gate, match_path));
    }
    // A body trickled a byte at a time must not hold the
    // connection: the whole of it within `timeouts.reserved_body`.
    let read = tokio::time::timeout(gate.settings.reserved_body_timeout, async {
        while let Some(chunk) = session.read_request_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_FORM {
                return Ok(false);
            }
        }
        Ok::<bool, Box<Error>>(true)
    })
    .await;
    match read {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return Ok(replies::too_large(gate, match_path)),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            session.set_keepalive(None);
            let reply = if match_path.starts_with("/.stepgate/api/") {
                crate::web::json::error(
                    408,
                    901,
                    "Request timeout",
                    "The request body did not arrive in time.",
                )
            } else {
                gate.pages.message(
                    408,
                    "Too slow",
                    "The form did not arrive in time; send it again.",
                    None,
                )
            };
            return Ok(reply);
        }
    }
    let now = clock::now();
    let principal = match access_token {
        Some(t) => gate.authenticate(t, now),
        None => Err(crate::auth::principal::AuthError::Missing),
    };
    let origin = origin(session, tls, &ctx.host);
    let req = session.req_header();
    let cookies = req
        .headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    let r = web::Req {
        method,
        path: match_path,
        query,
        principal,
        body: &body,
        content_type: header(session.req_header(), "content-type"),
        authorization: header(session.req_header(), "authorization"),
        client_ip: &ctx.client_ip,
        tls,
        origin,
        cookies,
        user_agent: header(session.req_header(), "user-agent").unwrap_or(""),
        stepup_token,
    };
    Ok(web::handle(gate, &r).await)
}

impl Proxy {
    /// `pin.required` / `pin.offer_setup`: a signed-in user without a PIN is
    /// sent to setup (browser), or refused with ErrorCode 1243 and a
    /// PINAuthToken (API clients, required PINs only). Known PINs are
    /// answered from memory.
    async fn pin_setup_gate(
        &self,
        gate: &Gate,
        p: &Principal,
        html: bool,
        return_to: &(dyn Fn() -> String + Sync),
    ) -> Option<Reply> {
        let s = &gate.settings.pin;
        if !(s.required || s.offer_setup) {
            return None;
        }
        match crate::flows::lifecycle::needs_setup(gate, &p.sub).await {
            Ok(false) => None,
            // An optional PIN is offered only while the login is fresh
            // enough to set one up; it never locks anyone out of the app.
            Ok(true) if html && (s.required || web::login_is_fresh(gate, p)) => {
                Some(Reply::redirect(&format!(
                    "/.stepgate/pin/setup?return_to={}",
                    crate::reply::url_encode(&return_to())
                )))
            }
            Ok(true) if !s.required => None,
            // 1243, with a PINAuthToken only while the login is fresh.
            Ok(true) => Some(web::api::pin_required(gate, p).await),
            Err(_) if s.required => Some(replies::unavailable(gate, html)),
            Err(_) => None,
        }
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Some(Instant::now()),
            label: "error",
            ..Default::default()
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        crate::gate::drain::head_read();
        if crate::gate::drain::DRAINING.load(std::sync::atomic::Ordering::Relaxed) {
            session.set_keepalive(None);
        }
        // The request id: the client's (or a proxy's) when it is sane, else ours.
        let id = header(session.req_header(), "x-request-id")
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(crate::auth::tokens::request_id);
        session
            .req_header_mut()
            .insert_header("X-Request-Id", id.as_str())?;
        ctx.request_id = id;
        let gate_arc = self.shared.load();
        ctx.gate = Some(gate_arc.clone());
        let gate = &*gate_arc;
        let tls = gate.settings.tls.is_some();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());

        // 1. Read credentials, then strip every identity header the client sent.
        let req = session.req_header();
        let Credentials {
            access_token,
            stepup_token,
            conflicting,
            strip_bearer,
            strip_ff_cookie,
        } = credentials(gate, req, tls);
        (ctx.strip_bearer, ctx.strip_ff_cookie) = (strip_bearer, strip_ff_cookie);
        (ctx.client_ip, ctx.peer_trusted) = client_ip(gate, peer, req);
        let trusted = ctx.peer_trusted;
        let stripped: Vec<String> = req
            .headers
            .keys()
            .map(|k| k.as_str())
            .filter(|k| {
                let is = |names: &[&str]| {
                    names
                        .iter()
                        .any(|n| crate::reply::header_name_is(k.as_bytes(), n))
                };
                gate.owns_header(k) || is(&REROUTING) || (!trusted && is(&CLIENT_CLAIMS))
            })
            .map(str::to_string)
            .collect();
        let html = wants_html(header(req, "accept"));
        let req = session.req_header_mut();
        for name in stripped {
            req.remove_header(&name);
        }

        // The one parse of the request; what it says is what is forwarded.
        let canon = match canonicalize(gate, session, trusted).and_then(|c| {
            if conflicting {
                Err(Refusal::ManyCredentials)
            } else {
                Ok(c)
            }
        }) {
            Ok(c) => c,
            Err(why) => {
                ctx.label = "bad_request";
                tracing::info!(target: "stepgate", reason = why.code(), ip = %ctx.client_ip, "request refused before any rule: {why}");
                send(session, replies::refusal(gate, why, html)).await?;
                return Ok(true);
            }
        };
        ctx.host = canon.host.name().to_string();
        if canon.asterisk {
            // `OPTIONS *` asks about the server, not a resource: answered here.
            ctx.label = "reserved";
            send(
                session,
                Reply::text(204, "").add(
                    "Allow",
                    "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS".into(),
                ),
            )
            .await?;
            return Ok(true);
        }
        let method = canon.method.clone();
        let match_path = canon.path.matched().to_string();
        let query = canon.query.clone();
        let wire_path = canon.path.wire().to_string();
        ctx.canon = Some(canon);

        // 2. stepgate's own paths, case-insensitively: a case-insensitive
        // app must never receive a `/.STEPGATE/api/…` body meant for stepgate.
        let lower = match_path.get(..10).map(str::to_ascii_lowercase);
        if lower.as_deref() == Some("/.stepgate")
            && matches!(match_path.as_bytes().get(10), None | Some(b'/'))
        {
            ctx.label = "reserved";
            let reply = reserved(
                session,
                ctx,
                gate,
                access_token.as_deref(),
                stepup_token.clone(),
            )
            .await?;
            send(session, reply).await?;
            return Ok(true);
        }

        // 3-5. Decide.
        let policy = &gate.policy;
        let now = clock::now();
        let overridable =
            method == "POST" && may_override_method(session.req_header(), query.as_deref());
        let facts = Facts {
            host: &ctx.host,
            method: &method,
            path: &match_path,
            access_token: access_token.as_deref(),
            stepup_token: stepup_token.as_deref(),
            overridable,
        };
        let decision = decide_with(
            &facts,
            policy,
            &gate.verifier,
            &gate.keys,
            gate.settings.single_use_window.as_secs() as i64,
            now,
            &|sub| gate.revocations.revoked_before(sub),
        );
        ctx.label = decision.label();
        // Only answers that send the user somewhere need it: built lazily,
        // off the forwarding path.
        let return_to = || return_to_of(&wire_path, query.as_deref());
        let reply = match decision {
            Decision::Forward {
                rule,
                principal,
                step_up,
                consume,
            } => {
                ctx.rule = rule.to_string();
                if let Some((jti, exp)) = consume {
                    let ttl = std::time::Duration::from_secs((exp - now).max(1) as u64);
                    match gate
                        .store
                        .put_if_absent(&keys::used_token(&jti), b"1", ttl)
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => {
                            ctx.label = "challenge";
                            let m = policy.judge(&ctx.host, &method, &match_path, overridable);
                            if let crate::policy::Require::StepUp(s) = m.require {
                                send(
                                    session,
                                    replies::stepup(
                                        html,
                                        &return_to(),
                                        s,
                                        StepUpReason::AlreadyUsed,
                                    ),
                                )
                                .await?;
                                return Ok(true);
                            }
                        }
                        Err(_) => {
                            ctx.label = "store_unavailable";
                            send(session, replies::unavailable(gate, html)).await?;
                            return Ok(true);
                        }
                    }
                }
                if let Some(p) = &principal {
                    if let Some(reply) = self.pin_setup_gate(gate, p, html, &return_to).await {
                        ctx.label = "pin_required";
                        send(session, reply).await?;
                        return Ok(true);
                    }
                }
                ctx.principal = principal;
                ctx.step_up = step_up;
                return Ok(false);
            }
            Decision::Deny { rule } => {
                ctx.rule = rule.to_string();
                replies::denied(gate, html)
            }
            Decision::Unauthenticated { rule, error } => {
                ctx.rule = rule.to_string();
                if error == crate::auth::principal::AuthError::UnknownKey {
                    refresh_jwks_soon(&gate_arc, now);
                }
                let origin = origin(session, tls, &ctx.host);
                // A device with a PIN session only needs the PIN (looked
                // up here, not on every request).
                let has_pin_session = html
                    && gate.settings.pin.login
                    && cookie(
                        session
                            .req_header()
                            .headers
                            .get_all("cookie")
                            .iter()
                            .map(|v| v.as_bytes()),
                        gate.pin_session_cookie(tls),
                    )
                    .is_some();
                let pin_login = has_pin_session.then(|| {
                    format!(
                        "/.stepgate/pin/login?return_to={}",
                        crate::reply::url_encode(&return_to())
                    )
                });
                let to = pin_login.or_else(|| login_redirect(gate, &origin, &return_to()));
                replies::sign_in(gate, html, to, &error)
            }
            Decision::StepUp {
                rule,
                step_up,
                principal,
                reason,
            } => {
                ctx.rule = rule.to_string();
                tracing::info!(target: "audit", event = "challenge", user = %principal.sub, ip = %ctx.client_ip, rule = rule, reason = ?reason);
                replies::stepup(html, &return_to(), step_up, reason)
            }
        };
        send(session, reply).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let gate = ctx.gate.get_or_insert_with(|| self.shared.load());
        let Some(up) = gate.settings.upstreams.for_host(&ctx.host) else {
            return Error::e_explain(ErrorType::HTTPStatus(502), "no upstream for this host");
        };
        Ok(Box::new(HttpPeer::new(
            up.addr.as_str(),
            up.tls,
            up.sni.clone(),
        )))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let gate = ctx.gate.clone().unwrap_or_else(|| self.shared.load());
        let h = &gate.settings.headers;
        // Every forwarded request says which rule let it through.
        up.insert_header(h.rule.clone(), ctx.rule.as_str())?;
        if let Some(p) = &ctx.principal {
            up.insert_header(h.user.clone(), p.sub.as_str())?;
            if let Some(e) = &p.email {
                up.insert_header(h.email.clone(), e.as_str())?;
            }
        }
        if let Some(s) = &ctx.step_up {
            if let Some(amr) = s.amr.first() {
                up.insert_header(h.amr.clone(), amr.as_str())?;
            }
            up.insert_header(h.auth_time.clone(), s.auth_time.to_string())?;
        }
        // X-Forwarded-*: believed from trusted proxies only, else replaced.
        let xff = match (
            ctx.peer_trusted,
            header(session.req_header(), "x-forwarded-for"),
        ) {
            (true, Some(prev)) => format!(
                "{prev}, {}",
                session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default()
            ),
            _ => ctx.client_ip.clone(),
        };
        up.insert_header("X-Forwarded-For", xff)?;
        let proto = if gate.settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        if !(ctx.peer_trusted && up.headers.contains_key("x-forwarded-proto")) {
            up.insert_header("X-Forwarded-Proto", proto)?;
        }
        // The host is the canonical one (the request's Host was rewritten
        // to it)
        let authority = ctx
            .canon
            .as_ref()
            .map(|c| c.host.authority())
            .unwrap_or_default();
        // (a trusted proxy's X-Forwarded-Host was judged: it is this one).
        up.insert_header("X-Forwarded-Host", authority.as_str())?;
        if ctx.strip_bearer {
            up.remove_header("authorization");
        }
        if ctx.strip_ff_cookie {
            strip_cookies(up, &[gate.settings.first_factor.cookie.as_str()]);
        }
        // RFC 7239, stepgate's own hop appended to a trusted proxy's.
        let node = match ctx.client_ip.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("\"[{ip}]\""),
            Ok(ip) => ip.to_string(),
            Err(_) => "unknown".to_string(),
        };
        let hop = format!("for={node};host=\"{authority}\";proto={proto}");
        let forwarded = match (ctx.peer_trusted, header(up, "forwarded")) {
            (true, Some(prev)) => format!("{prev}, {hop}"),
            _ => hop,
        };
        up.insert_header("Forwarded", forwarded)?;
        // The step-up token is stepgate's; the app never needs to see it.
        strip_cookies(
            up,
            &[
                "stepgate_su",
                "__Host-stepgate_su",
                "stepgate_ps",
                "__Host-stepgate_ps",
                "stepgate_session",
                "__Host-stepgate_session",
                "stepgate_pre",
                "__Host-stepgate_pre",
            ],
        );
        // The signed assertion, over what the upstream actually receives.
        if let Some(p) = &ctx.principal {
            let su = ctx.step_up.as_ref();
            let claims = crate::auth::assertion::Claims {
                sub: &p.sub,
                email: p.email.as_deref(),
                amr: su
                    .map(|s| s.amr.iter().map(String::as_str).collect())
                    .unwrap_or_default(),
                acr: if su.is_some() {
                    "urn:stepgate:acr:step-up"
                } else {
                    "urn:stepgate:acr:login"
                },
                auth_time: su.map(|s| s.auth_time).or(p.login_time),
                rule: &ctx.rule,
                method: up.method.as_str(),
                path: up.uri.path(),
                session: &p.session,
            };
            let token = gate.assertion.sign(&claims, clock::now());
            up.insert_header(h.assertion.clone(), token)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if !resp.headers.contains_key("x-request-id") {
            resp.insert_header("X-Request-Id", ctx.request_id.as_str())?;
        }
        if let Some(max_age) = ctx
            .gate
            .as_ref()
            .and_then(|g| g.settings.tls.as_ref())
            .and_then(|t| t.hsts)
        {
            resp.insert_header(
                "Strict-Transport-Security",
                format!("max-age={}", max_age.as_secs()),
            )?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(c) => *c,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 500,
            },
        };
        if code == 502 || matches!(e.esource(), ErrorSource::Upstream) {
            metrics::UPSTREAM_ERRORS.inc();
        }
        if code > 0 && session.response_written().is_none() {
            ctx.label = "upstream_error";
            let reply = if code == 502 {
                self.shared.load().pages.message(
                    502,
                    "The application is not answering",
                    "stepgate could not reach the application behind it. Try again in a moment.",
                    None,
                )
            } else {
                self.shared.load().pages.message(
                    code,
                    "Request failed",
                    "The request could not be completed.",
                    None,
                )
            };
            // The connection is not reused after a proxy failure: say so.
            session.set_keepalive(None);
            let _ = send(session, reply).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        crate::gate::drain::request_done();
        metrics::REQUESTS.with_label_values(&[ctx.label]).inc();
        if ctx.gate.as_ref().is_some_and(|g| !g.settings.log_access) {
            return;
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        let latency_ms = ctx
            .started
            .map(|s| s.elapsed().as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        let user = ctx.principal.as_ref().map(|p| p.sub.as_str()).unwrap_or("");
        if tracing::enabled!(target: "access", tracing::Level::INFO) {
            use crate::util::logwriter::{access_json, Field};
            if access_json(&[
                ("request_id", Field::Str(&ctx.request_id)),
                ("method", Field::Str(req.method.as_str())),
                ("host", Field::Str(&ctx.host)),
                (
                    "path",
                    Field::Str(ctx.canon.as_ref().map_or("", |c| c.path.wire())),
                ),
                ("status", Field::Int(status as i64)),
                ("decision", Field::Str(ctx.label)),
                ("rule", Field::Str(&ctx.rule)),
                ("user", Field::Str(user)),
                ("ip", Field::Str(&ctx.client_ip)),
                ("latency_ms", Field::Float(latency_ms)),
            ]) {
                return;
            }
        }
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            method = %req.method,
            host = %ctx.host,
            path = ctx.canon.as_ref().map_or("", |c| c.path.wire()),
            status,
            decision = ctx.label,
            rule = %ctx.rule,
            user,
            ip = %ctx.client_ip,
            latency_ms,
        );
    }
}

/// A token named a key we do not know: the IdP may have rotated its keys.
/// Refetch the JWKS in the background, at most once every 30 seconds.
fn refresh_jwks_soon(gate: &Arc<Gate>, now: i64) {
    let Some(url) = gate.verifier.jwks_url.clone() else {
        return;
    };
    if !gate.verifier.may_force_refresh(now) {
        return;
    }
    let gate = gate.clone();
    tokio::spawn(async move {
        match crate::auth::first_factor::fetch_jwks(&url)
            .await
            .and_then(|t| gate.verifier.install_jwks(&t))
        {
            Ok(n) => {
                tracing::info!(target: "stepgate", keys = n, "JWKS refreshed after an unknown kid")
            }
            Err(e) => tracing::warn!(target: "stepgate", error = %e, "JWKS refresh failed"),
        }
    });
}
