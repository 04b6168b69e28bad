//! What the upstream receives besides the request itself: the identity
//! headers (client copies were removed at the edge), the signed assertion
//! over exactly what is forwarded, `X-Forwarded-*` and `Forwarded`, and the
//! credentials that were not judged taken away. Never decides anything: the
//! decision is made; this writes it down for the app.

use std::net::IpAddr;

use pingora::http::RequestHeader;
use pingora::prelude::*;

use crate::auth::binding::Values;
use crate::auth::principal::Principal;
use crate::auth::tokens::StepUpClaims;
use crate::edge::{header, strip_cookies};
use crate::gate::Gate;
use crate::util::clock;

/// What the decision said about a forwarded request.
pub struct Forwarding<'a> {
    pub rule: &'a str,
    pub principal: Option<&'a Principal>,
    pub step_up: Option<&'a StepUpClaims>,
    /// A bound rule's values (the assertion's `txn.values`).
    pub bound: Option<&'a Values>,
    /// The canonical host (with port when it had one).
    pub authority: String,
    pub client_ip: &'a str,
    pub peer_trusted: bool,
    /// The Authorization / first-factor cookie that was not the judged
    /// credential: removed.
    pub strip_bearer: bool,
    pub strip_ff_cookie: bool,
}

/// Write the headers the app reads onto the upstream request.
pub fn upstream_request(
    gate: &Gate,
    session: &Session,
    up: &mut RequestHeader,
    f: &Forwarding<'_>,
) -> Result<()> {
    let h = &gate.settings.headers;
    // Every forwarded request says which rule let it through.
    up.insert_header(h.rule.clone(), f.rule)?;
    if let Some(p) = f.principal {
        up.insert_header(h.user.clone(), p.sub.as_str())?;
        if let Some(e) = &p.email {
            up.insert_header(h.email.clone(), e.as_str())?;
        }
    }
    if let Some(s) = f.step_up {
        if let Some(amr) = s.amr.first() {
            up.insert_header(h.amr.clone(), amr.as_str())?;
        }
        up.insert_header(h.auth_time.clone(), s.auth_time.to_string())?;
    }
    hop_headers(gate, session, up, f)?;
    // stepgate's own cookies (the step-up token...) are never the app's; the
    // first-factor cookie goes too when it was not the judged credential.
    // One pass over the Cookie headers for both.
    const OWN: usize = crate::reply::OwnCookie::EVERY_NAME.len();
    let mut names = [""; OWN + 1];
    names[..OWN].copy_from_slice(&crate::reply::OwnCookie::EVERY_NAME);
    names[OWN] = gate.settings.first_factor.cookie.as_str();
    strip_cookies(up, &names[..OWN + usize::from(f.strip_ff_cookie)]);
    if let Some(p) = f.principal {
        let token = assertion(gate, up, f, p);
        up.insert_header(h.assertion.clone(), token)?;
    }
    Ok(())
}

/// The signed assertion, over what the upstream actually receives.
fn assertion(
    gate: &Gate,
    up: &RequestHeader,
    f: &Forwarding<'_>,
    p: &Principal,
) -> http::HeaderValue {
    let su = f.step_up;
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
        rule: f.rule,
        ff: p.source,
        method: up.method.as_str(),
        path: up.uri.path(),
        txn: su
            .and_then(|s| s.txn.as_ref())
            .map(|t| crate::auth::assertion::AssertedTxn {
                digest: &t.d,
                fields: &t.f,
                values: f
                    .bound
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str(), v.as_deref()))
                    .collect(),
            }),
        session: &p.session,
    };
    gate.assertion.sign(&claims, clock::now())
}

/// `X-Forwarded-*` and `Forwarded` (RFC 7239): believed from trusted
/// proxies only, else replaced; the credential that was not judged goes.
fn hop_headers(
    gate: &Gate,
    session: &Session,
    up: &mut RequestHeader,
    f: &Forwarding<'_>,
) -> Result<()> {
    // X-Forwarded-*: believed from trusted proxies only, else replaced.
    let xff = match (
        f.peer_trusted,
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
        _ => f.client_ip.to_string(),
    };
    up.insert_header("X-Forwarded-For", xff)?;
    let proto = if gate.settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    if !(f.peer_trusted && up.headers.contains_key("x-forwarded-proto")) {
        up.insert_header("X-Forwarded-Proto", proto)?;
    }
    // The host is the canonical one (the request's Host was rewritten
    // to it)
    let authority = &f.authority;
    // (a trusted proxy's X-Forwarded-Host was judged: it is this one).
    up.insert_header("X-Forwarded-Host", authority.as_str())?;
    if f.strip_bearer {
        up.remove_header("authorization");
    }
    // RFC 7239, stepgate's own hop appended to a trusted proxy's.
    let node = match f.client_ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("\"[{ip}]\""),
        Ok(ip) => ip.to_string(),
        Err(_) => "unknown".to_string(),
    };
    let hop = format!("for={node};host=\"{authority}\";proto={proto}");
    let forwarded = match (f.peer_trusted, header(up, "forwarded")) {
        (true, Some(prev)) => format!("{prev}, {hop}"),
        _ => hop,
    };
    up.insert_header("Forwarded", forwarded)?;
    Ok(())
}
