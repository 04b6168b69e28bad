//! The Pingora shell. Each phase is a few lines that follow DESIGN.md's
//! request flow and call into plain code: strip identity headers, answer
//! `/.stepgate/`, decide, forward with injected headers. No policy logic,
//! token parsing or HTML lives here.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;

use crate::auth::decision::{decide_matched, needs_user, Decision, SingleUse, StepUpReason};
use crate::auth::principal::{AuthError, Principal};
use crate::auth::tokens::StepUpClaims;
use crate::edge::{self, header, Edge};
use crate::forward;
use crate::gate::{Gate, Shared};
use crate::hold;
use crate::reply::Reply;
use crate::request::CanonicalRequest;
use crate::store::keys;
use crate::util::clock;
use crate::util::metrics;
use crate::web::{self, login_redirect, replies};

pub struct Proxy {
    pub shared: Arc<Shared>,
}

#[derive(Default)]
pub struct Ctx(Box<State>);

impl std::ops::Deref for Ctx {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl std::ops::DerefMut for Ctx {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.0
    }
}

/// What one request carries from filter to filter. Behind a `Box` in
/// [`Ctx`]: Pingora keeps the context inside the request's future, which
/// it moves into a new `Box` for every request on a connection, so a
/// pointer instead of ~870 bytes is that much less to copy each time.
#[derive(Default)]
pub struct State {
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
    /// The body stepgate read or put in place, what it found in it, a kept
    /// request being replayed.
    held: hold::Held,
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

/// Steps 3-4: the rule, the first factor when the rule needs a user, the
/// bound values when the rule binds fields, then the pure decision. `Err`:
/// a bound request whose values cannot be read is refused.
async fn judge<'g>(
    session: &mut Session,
    gate: &'g Gate,
    ctx: &mut State,
    edge: &Edge,
    now: i64,
) -> Result<std::result::Result<Decision<'g>, Reply>> {
    let Some(canon) = ctx.canon.as_ref() else {
        return Ok(Ok(Decision::Deny { rule: "default" }));
    };
    let mut m = gate.policy.judge(
        &ctx.host,
        &canon.method,
        canon.path.matched(),
        edge.overridable,
    );
    // A POST with a body is judged as every method `_method` could make
    // it; when that is stricter than the POST's own rule, the body itself
    // (read, at most 64 KiB) says whether it names one.
    if edge.overridable {
        let plain = gate
            .policy
            .judge(&ctx.host, &canon.method, canon.path.matched(), false);
        if !std::ptr::eq(plain.require, m.require)
            && hold::form_overrides(session, gate, &mut ctx.held, canon).await? == Some(false)
        {
            m = plain;
        }
    }
    // Whose step-ups were ended is not known before the store's
    // invalidations were read once: no step-up counts until then.
    if matches!(m.require, crate::policy::Require::StepUp(_)) && !gate.revocations.loaded() {
        ctx.rule = m.rule_name().to_string();
        ctx.label = "store_unavailable";
        return Ok(Err(replies::unavailable(gate, edge.html)));
    }
    let bound = match m.require {
        crate::policy::Require::StepUp(s) if s.is_bound() => {
            let canon = ctx.canon.as_ref().expect("parsed");
            match hold::bound_digest(session, gate, &mut ctx.held, canon, &s.bind, edge.html)
                .await?
            {
                Ok(d) => Some(d),
                Err(reply) => {
                    ctx.label = "bad_request";
                    return Ok(Err(reply));
                }
            }
        }
        _ => None,
    };
    let principal = match needs_user(&m) {
        true => Some(
            gate.sources
                .authenticate(&gate.verifier, &edge.presented, now)
                .await
                // (`decide_matched` then checks the invalidations.)
                .and_then(|p| gate.revocations_known(p)),
        ),
        false => None,
    };
    Ok(Ok(decide_matched(
        m,
        principal,
        edge.stepup_token.as_deref(),
        bound.as_deref(),
        &gate.keys,
        gate.settings.single_use_window.as_secs() as i64,
        now,
        &|sub| gate.revocations.revoked_before(sub),
    )))
}

/// Step 5 for a request that is not forwarded: the page or JSON that says
/// why and what to do.
fn answer(
    gate: &Arc<Gate>,
    ctx: &mut State,
    edge: &Edge,
    decision: Decision<'_>,
    now: i64,
    keeping: &replies::Keeping,
) -> Reply {
    match decision {
        Decision::Forward { .. } => replies::denied(gate, edge.html),
        Decision::Deny { rule } => {
            ctx.rule = rule.to_string();
            replies::denied(gate, edge.html)
        }
        Decision::Unauthenticated { rule, error } => {
            ctx.rule = rule.to_string();
            if error == AuthError::UnknownKey {
                refresh_jwks_soon(gate, now);
            }
            if let AuthError::Unavailable(source) = error {
                ctx.label = "first_factor_unavailable";
                return replies::source_unavailable(gate, edge.html, source);
            }
            // A device with a PIN session only needs the PIN.
            let to = if edge.html && gate.settings.pin.login && edge.has_pin_session {
                Some(format!(
                    "/.stepgate/pin/login?return_to={}",
                    crate::reply::url_encode(&edge.return_to)
                ))
            } else {
                login_redirect(gate, &edge.origin, &edge.return_to)
            };
            replies::sign_in(gate, edge.html, to, &error)
        }
        Decision::StepUp {
            rule,
            step_up,
            principal,
            reason,
        } => {
            ctx.rule = rule.to_string();
            tracing::info!(target: "audit", event = "challenge", user = %principal.sub, ip = %ctx.client_ip, rule = rule, reason = ?reason);
            let method = ctx.canon.as_ref().map_or("GET", |c| c.method.as_str());
            let f = replies::ForRequest {
                method,
                keeping,
                binding: ctx.held.bound.as_ref(),
            };
            replies::stepup(edge.html, &edge.return_to, step_up, reason, &f)
        }
    }
}

impl Proxy {
    /// Before anything is read: the drain clock, the request id (the
    /// client's or a proxy's when it is sane, else ours), and the gateway
    /// snapshot this request keeps to its end.
    fn begin(&self, session: &mut Session, ctx: &mut State) -> Result<Arc<Gate>> {
        crate::gate::drain::head_read();
        if crate::gate::drain::DRAINING.load(std::sync::atomic::Ordering::Relaxed) {
            session.set_keepalive(None);
        }
        let id = header(session.req_header(), "x-request-id")
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(crate::auth::tokens::request_id);
        crate::forward::put(
            session.req_header_mut(),
            &crate::forward::FIXED.request_id,
            id.as_str(),
        )?;
        ctx.request_id = id;
        let gate = self.shared.load();
        ctx.gate = Some(gate.clone());
        Ok(gate)
    }

    /// What a forwarding decision still asks: a single-use step-up is used
    /// up in the store (once, across replicas), and a user who must set up a
    /// PIN is sent to do so. `Some(reply)` when the request must not go on.
    async fn obligations(
        &self,
        gate: &Gate,
        ctx: &mut State,
        edge: &Edge,
        consume: Option<SingleUse<'_>>,
        principal: Option<&Principal>,
        now: i64,
    ) -> Option<Reply> {
        if let Some(once) = consume {
            let ttl = std::time::Duration::from_secs((once.exp - now).max(1) as u64);
            match gate
                .store
                .put_if_absent(&keys::used_token(&once.jti), b"1", ttl)
                .await
            {
                Ok(true) => {}
                // Used before: always refused, with the rule's own step-up.
                Ok(false) => {
                    ctx.label = "challenge";
                    let method = ctx.canon.as_ref().map_or("GET", |c| c.method.as_str());
                    let f = replies::ForRequest {
                        method,
                        keeping: &replies::Keeping::Nothing,
                        binding: ctx.held.bound.as_ref(),
                    };
                    return Some(replies::stepup(
                        edge.html,
                        &edge.return_to,
                        once.step_up,
                        StepUpReason::AlreadyUsed,
                        &f,
                    ));
                }
                Err(_) => {
                    ctx.label = "store_unavailable";
                    return Some(replies::unavailable(gate, edge.html));
                }
            }
        }
        let reply = self
            .pin_setup_gate(gate, principal?, edge.html, &edge.return_to)
            .await;
        if reply.is_some() {
            ctx.label = "pin_required";
            return reply;
        }
        // A kept request goes upstream once, whichever gateway replays it.
        if let (Some(id), Some(p)) = (ctx.held.kept_id.clone(), principal) {
            match crate::flows::kept::take(gate, &id, p).await {
                Ok(_) => {
                    metrics::KEPT.with_label_values(&["replayed"]).inc();
                    crate::util::audit::event("kept_replayed", &p.sub, &ctx.client_ip, &ctx.rule);
                }
                Err(e) => {
                    ctx.label = "kept_gone";
                    metrics::KEPT.with_label_values(&["gone"]).inc();
                    return Some(web::flow_page(gate, e, "/"));
                }
            }
        }
        None
    }

    /// The step-up POST becomes the kept request it finished: rewritten,
    /// then read at the edge and judged like any request, with the step-up
    /// just made. `Err`: the answer instead.
    fn resend(
        &self,
        session: &mut Session,
        gate: &Gate,
        ctx: &mut State,
        r: crate::reply::Resend,
        headers: Vec<(&'static str, String)>,
    ) -> std::result::Result<Edge, Reply> {
        if hold::rewrite(session, &r).is_err() {
            return Err(web::flow_page(
                gate,
                crate::flows::error::FlowError::KeptGone,
                "/",
            ));
        }
        let token = ctx.held.replaying(r, headers);
        let (canon, mut edge) = edge::read(gate, session, ctx.peer_trusted, &ctx.client_ip)
            .map_err(|refused| refused.reply)?;
        if edge.reserved {
            return Err(web::flow_page(
                gate,
                crate::flows::error::FlowError::KeptGone,
                "/",
            ));
        }
        ctx.host = canon.host.name().to_string();
        ctx.canon = Some(canon);
        (ctx.strip_bearer, ctx.strip_ff_cookie) = (edge.strip_bearer, edge.strip_ff_cookie);
        edge.stepup_token = Some(token);
        Ok(edge)
    }

    /// `pin.required` / `pin.offer_setup`: a signed-in user without a PIN is
    /// sent to setup (browser), or refused with ErrorCode 1243 and a
    /// PINAuthToken (API clients, required PINs only). Known PINs are
    /// answered from memory.
    async fn pin_setup_gate(
        &self,
        gate: &Gate,
        p: &Principal,
        html: bool,
        return_to: &str,
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
                    crate::reply::url_encode(return_to)
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
        Ctx(Box::new(State {
            started: Some(Instant::now()),
            label: "error",
            ..Default::default()
        }))
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let gate = self.begin(session, ctx)?;
        // 1. Read the credentials, strip identity headers, parse once.
        (ctx.client_ip, ctx.peer_trusted) = edge::peer(&gate, session);
        let mut edge = match edge::read(&gate, session, ctx.peer_trusted, &ctx.client_ip) {
            Ok((canon, edge)) => {
                ctx.host = canon.host.name().to_string();
                ctx.canon = Some(canon);
                (ctx.strip_bearer, ctx.strip_ff_cookie) = (edge.strip_bearer, edge.strip_ff_cookie);
                edge
            }
            Err(refused) => {
                ctx.label = refused.label;
                send(session, refused.reply).await?;
                return Ok(true);
            }
        };
        // 2. stepgate's own paths.
        if edge.reserved {
            ctx.label = "reserved";
            let mut reply =
                hold::reserved(session, ctx.canon.as_ref(), &ctx.client_ip, &gate, &edge).await?;
            let Some(resend) = reply.resend.take() else {
                send(session, reply).await?;
                return Ok(true);
            };
            // A step-up that finished a kept request: that request goes on.
            match self.resend(session, &gate, ctx, *resend, reply.headers) {
                Ok(e) => edge = e,
                Err(reply) => {
                    send(session, reply).await?;
                    return Ok(true);
                }
            }
        }
        // 3-5. Decide, carry out what the decision asks, or answer.
        let now = clock::now();
        let decision = match judge(session, &gate, ctx, &edge, now).await? {
            Ok(d) => d,
            Err(reply) => {
                send(session, reply).await?;
                return Ok(true);
            }
        };
        ctx.label = decision.label();
        let reply = match decision {
            Decision::Forward {
                rule,
                principal,
                step_up,
                consume,
            } => {
                ctx.rule = rule.to_string();
                if let Some(reply) = self
                    .obligations(&gate, ctx, &edge, consume, principal.as_ref(), now)
                    .await
                {
                    reply
                } else {
                    if let Some(p) = &principal {
                        metrics::ADMITTED_BY.with_label_values(&[p.source]).inc();
                    }
                    ctx.principal = principal;
                    ctx.step_up = step_up;
                    return Ok(false);
                }
            }
            other => {
                let ctx: &mut State = ctx;
                let keeping = match (&other, ctx.canon.as_ref()) {
                    (Decision::StepUp { principal, .. }, Some(canon)) if edge.html => {
                        hold::keep(
                            session,
                            &gate,
                            &mut ctx.held,
                            canon,
                            &ctx.host,
                            &edge.origin,
                            principal,
                        )
                        .await?
                    }
                    _ => replies::Keeping::Nothing,
                };
                answer(&gate, ctx, &edge, other, now, &keeping)
            }
        };
        send(session, reply).await?;
        Ok(true)
    }

    /// What Pingora's error lines say about a request: method, host and
    /// path, never the query (PIN session tokens, PINAuthTokens and access
    /// tokens travel there on LoginRadius's paths).
    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        let req = session.req_header();
        format!(
            "{} {}, Host: {}",
            req.method,
            req.uri.path(),
            header(req, "host").unwrap_or("-")
        )
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let ctx: &mut State = ctx;
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
        let f = forward::Forwarding {
            rule: &ctx.rule,
            principal: ctx.principal.as_ref(),
            step_up: ctx.step_up.as_ref(),
            bound: ctx.held.bound.as_ref(),
            authority: ctx
                .canon
                .as_ref()
                .map(|c| c.host.authority())
                .unwrap_or_default(),
            client_ip: &ctx.client_ip,
            peer_trusted: ctx.peer_trusted,
            strip_bearer: ctx.strip_bearer,
            strip_ff_cookie: ctx.strip_ff_cookie,
        };
        forward::upstream_request(&gate, session, up, &f)
    }

    /// What stepgate read (a bound rule's body) or put in place (a kept
    /// request) goes upstream, in one piece, instead of a second reading.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.held.body.is_some() {
            *body = match end_of_stream {
                true => ctx.held.body.take(),
                false => Some(bytes::Bytes::new()),
            };
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for c in std::mem::take(&mut ctx.held.response_cookies) {
            resp.append_header("Set-Cookie", c)?;
        }
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
        let ff = ctx.principal.as_ref().map(|p| p.source).unwrap_or("");
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
                ("ff", Field::Str(ff)),
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
            ff,
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
