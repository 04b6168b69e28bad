//! Request bodies stepgate holds: a reserved path's form or JSON (read
//! whole, bounded in size and time, then answered by `web`), a body read
//! whole before deciding on a rule that binds fields (the values judged are
//! the bytes forwarded), kept for a step-up, or put in place of a step-up's
//! own POST when a kept request is replayed. Whatever stepgate read goes upstream from `Ctx::body` through
//! `request_body_filter`, never a second reading of the client.

use std::time::Duration;

use bytes::Bytes;
use pingora::prelude::*;

use crate::auth::binding::{self, Values};
use crate::auth::principal::Principal;
use crate::edge::header;
use crate::flows::kept;
use crate::gate::Gate;
use crate::reply::{Reply, Resend};
use crate::request::{CanonicalRequest, Refusal};
use crate::util::{clock, metrics};
use crate::web::replies::{self, Keeping};
use crate::web::{self, MAX_FORM};

/// What one request's body became, kept in its context.
#[derive(Default)]
pub struct Held {
    /// The body as stepgate read it (a bound rule, a form's `_method`
    /// check) or put in place (a replayed kept request): exactly what goes
    /// upstream, through `request_body_filter`.
    pub body: Option<Bytes>,
    /// A bound rule's values in this request (`step_up.bind`).
    pub bound: Option<Values>,
    /// A kept request being replayed: taken from the store when forwarded.
    pub kept_id: Option<String>,
    /// `Set-Cookie` of the step-up that finished a kept request, sent with
    /// the application's answer to it.
    pub response_cookies: Vec<String>,
    /// A read of the body stopped before its end (too large, too slow):
    /// what was read is not the body, so nothing may be judged on it.
    pub partial: bool,
}

/// A body sent with a `Content-Encoding` (deflate, gzip…): apps that
/// inflate it read other bytes than stepgate would, so stepgate judges,
/// keeps and checks no such body.
fn encoded(session: &Session) -> bool {
    header(session.req_header(), "content-encoding")
        .is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"))
}

/// Read the whole body into `held` (once), or say it cannot be.
async fn whole_body(
    session: &mut Session,
    gate: &Gate,
    held: &mut Held,
) -> Result<std::result::Result<Bytes, Read>> {
    if let Some(b) = &held.body {
        return Ok(Ok(b.clone()));
    }
    if held.partial {
        return Ok(Err(Read::Slow));
    }
    if !has_body(session) {
        return Ok(Ok(Bytes::new()));
    }
    match read_body(session, kept::MAX_BODY, gate.settings.reserved_body_timeout).await? {
        Read::Full(b) => {
            held.body = Some(b.clone());
            Ok(Ok(b))
        }
        other => {
            held.partial = true;
            Ok(Err(other))
        }
    }
}

impl Held {
    /// Replaying `r`: its body goes upstream, its id is taken when
    /// forwarded, the step-up's cookies go with the answer. The step-up
    /// token to judge the request with.
    pub fn replaying(&mut self, r: Resend, headers: Vec<(&'static str, String)>) -> String {
        self.body = Some(r.body);
        self.kept_id = Some(r.kept_id);
        self.response_cookies = headers
            .into_iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v)
            .collect();
        r.stepup_token
    }
}

pub enum Read {
    /// The whole body.
    Full(Bytes),
    /// Longer than the limit: not read to its end (the connection cannot
    /// be reused).
    TooLarge,
    /// Not complete within the time allowed.
    Slow,
}

/// Whether the request carries a body at all.
pub fn has_body(session: &mut Session) -> bool {
    !session.is_body_empty()
}

/// Read the whole request body, at most `limit` bytes, within `within`.
/// Pingora keeps a copy of what was read for the upstream (its retry
/// buffer), so the body is forwarded after this.
pub async fn read_body(session: &mut Session, limit: usize, within: Duration) -> Result<Read> {
    let declared =
        header(session.req_header(), "content-length").and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        session.set_keepalive(None);
        return Ok(Read::TooLarge);
    }
    session.enable_retry_buffering();
    let mut body = Vec::new();
    let read = tokio::time::timeout(within, async {
        while let Some(chunk) = session.read_request_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() > limit {
                return Ok(false);
            }
        }
        Ok::<bool, Box<Error>>(true)
    })
    .await;
    match read {
        Ok(Ok(true)) => Ok(Read::Full(Bytes::from(body))),
        Ok(Ok(false)) => {
            session.set_keepalive(None);
            Ok(Read::TooLarge)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            session.set_keepalive(None);
            Ok(Read::Slow)
        }
    }
}

/// Turn this request (a step-up's POST, its body already read) into the
/// kept one: its method, target, content type and length. The body itself
/// is put in place by `request_body_filter`.
pub fn rewrite(session: &mut Session, r: &Resend) -> Result<()> {
    let req = session.req_header_mut();
    let method = http::Method::from_bytes(r.method.as_bytes())
        .or_err(ErrorType::InternalError, "kept method")?;
    req.set_method(method);
    // The target's bytes as the browser first sent them.
    req.set_raw_path(r.target.as_bytes())?;
    // Nothing of the step-up POST's body framing goes with the kept body.
    for h in [
        "transfer-encoding",
        "content-type",
        "content-encoding",
        "content-range",
        "content-md5",
        "digest",
        "content-digest",
        "expect",
    ] {
        req.remove_header(h);
    }
    if let Some(ct) = &r.content_type {
        req.insert_header("Content-Type", ct.as_str())?;
    }
    req.insert_header("Content-Length", r.body.len().to_string())?;
    Ok(())
}

/// Whether a form POST carries a method override (`_method`, in any case),
/// reading its body (at most `kept::MAX_BODY`; it is forwarded as read).
/// None: it cannot tell (a multipart body, a larger one, `_method` in the
/// query), and the request stays judged as every method it could become.
pub async fn form_overrides(
    session: &mut Session,
    gate: &Gate,
    held: &mut Held,
    canon: &CanonicalRequest,
) -> Result<Option<bool>> {
    if canon
        .query
        .as_deref()
        .is_some_and(crate::edge::query_overrides)
    {
        return Ok(None);
    }
    let ct = header(session.req_header(), "content-type").map(str::to_string);
    let (form, json) = (
        binding::is_form(ct.as_deref()),
        binding::is_json(ct.as_deref()),
    );
    if encoded(session) || (has_body(session) && !form && !json) {
        return Ok(None);
    }
    let declared =
        header(session.req_header(), "content-length").and_then(|v| v.trim().parse::<usize>().ok());
    if held.body.is_none() && has_body(session) && declared.is_none_or(|n| n > kept::MAX_BODY) {
        return Ok(None);
    }
    let Ok(body) = whole_body(session, gate, held).await? else {
        return Ok(None);
    };
    if body.is_empty() {
        return Ok(Some(false));
    }
    // Every spelling an app reads as `_method` (PHP mangling, arrays, `;`).
    Ok(binding::overrides_method(None, ct.as_deref(), &body))
}

/// The digest of a bound rule's values in this request, its body read
/// whole first (`kept::MAX_BODY` at most: a bound request that is larger
/// cannot be judged, and is refused).
pub async fn bound_digest(
    session: &mut Session,
    gate: &Gate,
    held: &mut Held,
    canon: &CanonicalRequest,
    fields: &[String],
    html: bool,
) -> Result<std::result::Result<String, Reply>> {
    let refuse = |why: &str| Ok(Err(replies::binding_refused(gate, html, why)));
    if encoded(session) {
        return refuse(
            "its body is compressed (Content-Encoding), and apps read it after inflating it",
        );
    }
    let body = match whole_body(session, gate, held).await? {
        Ok(b) => b,
        Err(Read::TooLarge) => return refuse("its body is larger than 64 KiB"),
        Err(_) => return refuse("its body did not arrive in time"),
    };
    let query = canon.query.clone();
    let ct = header(session.req_header(), "content-type");
    match binding::values(fields, query.as_deref(), ct, &body) {
        Ok(v) => {
            let d = binding::digest(&v);
            held.bound = Some(v);
            Ok(Ok(d))
        }
        Err(e) => Ok(Err(replies::binding_refused(gate, html, &e.to_string()))),
    }
}

/// A browser's request that needs a step-up and has a body: kept (a form
/// or JSON body of at most 64 KiB) so it reaches the application after the
/// step-up, or not, and the pages say it must be sent again.
#[allow(clippy::too_many_arguments)]
pub async fn keep(
    session: &mut Session,
    gate: &Gate,
    held: &mut Held,
    canon: &CanonicalRequest,
    host: &str,
    origin: &str,
    principal: &Principal,
) -> Result<Keeping> {
    if matches!(canon.method.as_str(), "GET" | "HEAD" | "OPTIONS") || !has_body(session) {
        return Ok(Keeping::Nothing);
    }
    // Only the site's own forms: a cross-site POST must not ride on the
    // user's next step-up (it is refused its cookie-less way as before).
    let req = session.req_header();
    let fetch_site = header(req, "sec-fetch-site").map(|v| v.trim().to_ascii_lowercase());
    let from_elsewhere = fetch_site
        .as_deref()
        .is_some_and(|v| v != "same-origin" && v != "none")
        || header(req, "origin")
            .map(str::trim)
            .is_some_and(|o| !o.eq_ignore_ascii_case(origin));
    if from_elsewhere {
        return Ok(not_kept("cross"));
    }
    if encoded(session) {
        return Ok(not_kept("upload"));
    }
    let method = canon.method.clone();
    let ct = header(session.req_header(), "content-type").map(str::to_string);
    let body = match whole_body(session, gate, held).await? {
        Ok(b) => b,
        Err(Read::TooLarge) => return Ok(not_kept("large")),
        Err(_) => return Ok(not_kept("slow")),
    };
    if body.is_empty() {
        return Ok(Keeping::Nothing);
    }
    if kept::keepable(ct.as_deref(), body.len()).is_err() {
        return Ok(not_kept(if body.len() > kept::MAX_BODY {
            "large"
        } else {
            "upload"
        }));
    }
    let Ok(target) = std::str::from_utf8(session.req_header().raw_path()).map(str::to_string)
    else {
        return Ok(not_kept("upload"));
    };
    let k = kept::Kept {
        method,
        target,
        host: host.to_string(),
        content_type: ct,
        body: body.to_vec(),
        sub: principal.sub.clone(),
        ssn: crate::auth::tokens::session_hash(principal),
        created_ms: gate.store.now_ms(),
    };
    Ok(match kept::keep(gate, &k).await {
        Ok(id) => {
            metrics::KEPT.with_label_values(&["kept"]).inc();
            Keeping::Kept(id)
        }
        Err(crate::flows::error::FlowError::SendLimit { .. }) => not_kept("many"),
        Err(_) => not_kept("store"),
    })
}

/// Not kept, and why (for the page).
pub fn not_kept(why: &'static str) -> Keeping {
    metrics::KEPT.with_label_values(&["not_kept"]).inc();
    Keeping::NotKept(why)
}

/// A request to stepgate's own paths: its body (at most `MAX_FORM`, within
/// `timeouts.reserved_body`), then the page or API answer.
pub async fn reserved(
    session: &mut Session,
    canon: Option<&CanonicalRequest>,
    client_ip: &str,
    gate: &Gate,
    edge: &crate::edge::Edge,
) -> Result<Reply> {
    let stepup_token = edge.stepup_token.clone();
    let Some(canon) = canon else {
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
    // A step-up POST may turn into a kept request (`Reply::resend`): Pingora
    // then needs what was read to send a body upstream at all.
    session.enable_retry_buffering();
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
            let reply = if web::is_api_path(gate, match_path) {
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
    let principal = gate.identify(&edge.presented, now).await;
    let origin = edge.origin.clone();
    let req = session.req_header();
    let cookies = req
        .headers
        .get_all("cookie")
        .iter()
        // A byte that is not UTF-8 spoils its own cookie, not the others
        // of its header (as `reply::Cookies` reads them).
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
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
        client_ip,
        tls,
        origin,
        cookies,
        user_agent: header(session.req_header(), "user-agent").unwrap_or(""),
        stepup_token,
        api_secret_header: header(session.req_header(), "x-loginradius-apisecret"),
        api_key_header: header(session.req_header(), "x-loginradius-apikey"),
        actor: header(session.req_header(), "x-audit-actor"),
    };
    Ok(web::handle(gate, &r).await)
}
