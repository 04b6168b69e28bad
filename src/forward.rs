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
use crate::util::{clock, text};

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
        let mut at = String::with_capacity(12);
        text::push_i64(&mut at, s.auth_time);
        up.insert_header(h.auth_time.clone(), at)?;
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
        (true, Some(prev)) => {
            let peer = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| text::ip(a.ip()))
                .unwrap_or_default();
            let mut v = String::with_capacity(prev.len() + 2 + peer.len());
            v.push_str(prev);
            v.push_str(", ");
            v.push_str(&peer);
            v
        }
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
    let prev = match (f.peer_trusted, header(up, "forwarded")) {
        (true, Some(prev)) => Some(prev),
        _ => None,
    };
    let forwarded = forwarded_value(prev, f.client_ip, authority, proto);
    up.insert_header("Forwarded", forwarded)?;
    Ok(())
}

/// The `Forwarded` value: a trusted proxy's hops, then stepgate's own
/// (`for=…;host="…";proto=…`). The client address is already text (written
/// from a parsed address, or `unknown`): an IPv4 address that parses is
/// written back as it is (Rust's parser takes only the dotted-decimal form
/// `Display` writes), IPv6 goes in quoted brackets, anything else is
/// `unknown`.
fn forwarded_value(prev: Option<&str>, client_ip: &str, authority: &str, proto: &str) -> String {
    let mut v = String::with_capacity(
        prev.map_or(0, |p| p.len() + 2) + client_ip.len() + authority.len() + 32,
    );
    if let Some(prev) = prev {
        v.push_str(prev);
        v.push_str(", ");
    }
    v.push_str("for=");
    match client_ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => {
            v.push_str("\"[");
            v.push_str(&text::ip(IpAddr::V6(ip)));
            v.push_str("]\"");
        }
        Ok(IpAddr::V4(_)) => v.push_str(client_ip),
        Err(_) => v.push_str("unknown"),
    }
    v.push_str(";host=\"");
    v.push_str(authority);
    v.push_str("\";proto=");
    v.push_str(proto);
    v
}

#[cfg(test)]
mod tests {
    use super::forwarded_value;

    #[test]
    fn the_forwarded_hop_names_the_client_host_and_scheme() {
        let cases = [
            (
                None,
                "10.1.2.3",
                "app.example:8443",
                "https",
                r#"for=10.1.2.3;host="app.example:8443";proto=https"#,
            ),
            (
                None,
                "2001:db8::1",
                "app.example",
                "http",
                r#"for="[2001:db8::1]";host="app.example";proto=http"#,
            ),
            (
                None,
                "unknown",
                "app.example",
                "http",
                r#"for=unknown;host="app.example";proto=http"#,
            ),
            // Not an address a parse wrote: never copied into the header.
            (
                None,
                "1.2.3.4\";x=\"",
                "a",
                "http",
                r#"for=unknown;host="a";proto=http"#,
            ),
            (
                None,
                "001.2.3.4",
                "a",
                "http",
                r#"for=unknown;host="a";proto=http"#,
            ),
            (
                Some("for=192.0.2.60;proto=https"),
                "192.0.2.60",
                "app.example",
                "https",
                r#"for=192.0.2.60;proto=https, for=192.0.2.60;host="app.example";proto=https"#,
            ),
        ];
        for (prev, ip, host, proto, want) in cases {
            assert_eq!(forwarded_value(prev, ip, host, proto), want);
        }
    }
}
