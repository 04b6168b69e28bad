//! What the upstream receives besides the request itself: the identity
//! headers (client copies were removed at the edge), the signed assertion
//! over exactly what is forwarded, `X-Forwarded-*` and `Forwarded`, and the
//! credentials that were not judged taken away. Never decides anything: the
//! decision is made; this writes it down for the app.

use std::net::IpAddr;
use std::sync::LazyLock;

use http::HeaderValue;
use pingora::http::{PreparedName, RequestHeader};
use pingora::prelude::*;

use crate::auth::binding::Values;
use crate::auth::principal::Principal;
use crate::auth::tokens::StepUpClaims;
use crate::config::HeaderNames;
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

/// The names of the identity headers (`headers:` in the config), parsed once
/// per snapshot rather than on every request.
pub struct Names {
    user: PreparedName,
    email: PreparedName,
    amr: PreparedName,
    auth_time: PreparedName,
    rule: PreparedName,
    assertion: PreparedName,
}

impl Names {
    pub fn new(h: &HeaderNames) -> std::result::Result<Names, String> {
        let p = |n: &str| {
            PreparedName::new(n).map_err(|_| format!("headers: {n:?} is not a valid header name"))
        };
        Ok(Names {
            user: p(&h.user)?,
            email: p(&h.email)?,
            amr: p(&h.amr)?,
            auth_time: p(&h.auth_time)?,
            rule: p(&h.rule)?,
            assertion: p(&h.assertion)?,
        })
    }
}

/// The fixed names stepgate writes on every request, parsed once.
pub struct Fixed {
    pub host: PreparedName,
    pub request_id: PreparedName,
    xff: PreparedName,
    xfp: PreparedName,
    xfh: PreparedName,
    forwarded: PreparedName,
}

pub static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    let p = |n: &str| PreparedName::new(n).expect("a valid header name");
    Fixed {
        host: p("Host"),
        request_id: p("X-Request-Id"),
        xff: p("X-Forwarded-For"),
        xfp: p("X-Forwarded-Proto"),
        xfh: p("X-Forwarded-Host"),
        forwarded: p("Forwarded"),
    }
});

/// Set a header (replacing any of its name) under a name parsed once. A
/// value that is no valid header value is refused as `insert_header`
/// refuses it.
pub fn put(
    req: &mut RequestHeader,
    name: &PreparedName,
    value: impl TryInto<HeaderValue>,
) -> Result<()> {
    let value = value
        .try_into()
        .explain_err(ErrorType::InvalidHTTPHeader, |_| {
            "invalid value while insert"
        })?;
    req.insert_prepared(name, value);
    Ok(())
}

/// Write the headers the app reads onto the upstream request.
pub fn upstream_request(
    gate: &Gate,
    session: &Session,
    up: &mut RequestHeader,
    f: &Forwarding<'_>,
) -> Result<()> {
    let h = &gate.forward_names;
    // Room for every header added below, in both of the header's maps at
    // once (the upstream copy of the client's header has none to spare).
    up.reserve_headers(10);
    // Every forwarded request says which rule let it through.
    put(up, &h.rule, f.rule)?;
    if let Some(p) = f.principal {
        put(up, &h.user, p.sub.as_str())?;
        if let Some(e) = &p.email {
            put(up, &h.email, e.as_str())?;
        }
    }
    if let Some(s) = f.step_up {
        if let Some(amr) = s.amr.first() {
            put(up, &h.amr, amr.as_str())?;
        }
        let mut at = String::with_capacity(12);
        text::push_i64(&mut at, s.auth_time);
        put(up, &h.auth_time, at)?;
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
        up.insert_prepared(&h.assertion, token);
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
            format!("{prev}, {peer}")
        }
        _ => f.client_ip.to_string(),
    };
    let names = &*FIXED;
    put(up, &names.xff, xff)?;
    let proto = if gate.settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    if !(f.peer_trusted && up.headers.contains_key("x-forwarded-proto")) {
        put(up, &names.xfp, proto)?;
    }
    // The host is the canonical one (the request's Host was rewritten
    // to it)
    let authority = &f.authority;
    // (a trusted proxy's X-Forwarded-Host was judged: it is this one).
    put(up, &names.xfh, authority.as_str())?;
    if f.strip_bearer {
        up.remove_header("authorization");
    }
    // RFC 7239, stepgate's own hop appended to a trusted proxy's.
    let prev = header(up, "forwarded").filter(|_| f.peer_trusted);
    let forwarded = forwarded_value(prev, f.client_ip, authority, proto);
    put(up, &names.forwarded, forwarded)?;
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
    use super::{forwarded_value, put, Names, FIXED};
    use pingora::http::{PreparedName, RequestHeader, ResponseHeader};

    /// The carried pingora-http patch (`PreparedName`, `insert_prepared`,
    /// `reserve_headers`) must write exactly what `insert_header` writes:
    /// the same names in the same case and order, a replaced header's other
    /// values gone, both of the header's maps in step (the wire form zips
    /// them, and panics when they are not).
    #[test]
    fn a_prepared_insert_writes_what_insert_header_writes() {
        let build = || {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.append_header("Host", "a.example").unwrap();
            req.append_header("x-forwarded-for", "1.2.3.4").unwrap();
            req.append_header("X-Forwarded-For", "5.6.7.8").unwrap();
            req.append_header("Cookie", "a=1").unwrap();
            req
        };
        let names = [
            "X-Forwarded-For",
            "host",
            "X-Stepgate-User",
            "cookie",
            "Forwarded",
            "x-new",
        ];
        let mut plain = build();
        for (i, n) in names.iter().enumerate() {
            plain.insert_header(n.to_string(), format!("v{i}")).unwrap();
        }
        let mut prepared = build().clone();
        prepared.reserve_headers(names.len());
        for (i, n) in names.iter().enumerate() {
            put(
                &mut prepared,
                &PreparedName::new(n).unwrap(),
                format!("v{i}"),
            )
            .unwrap();
        }
        let (mut a, mut b) = (vec![], vec![]);
        plain.header_to_h1_wire(&mut a);
        prepared.header_to_h1_wire(&mut b);
        assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
        assert_eq!(
            prepared.headers.get_all("x-forwarded-for").iter().count(),
            1
        );
        // A value insert_header refuses is refused.
        assert!(put(&mut prepared, &FIXED.xff, "a\r\nX-Evil: 1").is_err());
        assert!(PreparedName::new("bad name").is_err() && PreparedName::new("").is_err());

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("X-Request-Id", "old").unwrap();
        resp.insert_prepared(&FIXED.request_id, http::HeaderValue::from_static("new"));
        let mut w = vec![];
        resp.header_to_h1_wire(&mut w);
        assert_eq!(w, b"X-Request-Id: new\r\n");
    }

    #[test]
    fn a_configured_header_name_that_is_not_one_is_refused() {
        let mut h = crate::config::HeaderNames {
            user: "X-User".into(),
            email: "X-Email".into(),
            amr: "X-Amr".into(),
            auth_time: "X-Auth-Time".into(),
            rule: "X-Rule".into(),
            assertion: "X-Assertion".into(),
        };
        assert!(Names::new(&h).is_ok());
        h.email = "X Email".into();
        let e = Names::new(&h).err().unwrap();
        assert!(e.contains("X Email"), "{e}");
    }

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
