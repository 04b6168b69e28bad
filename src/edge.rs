//! Reading a request at the edge, once: the canonical request (and the
//! session's request rewritten to it), the credentials, the client's
//! address, and the headers stepgate owns or refuses to pass on. The proxy's
//! phases call these; nothing here decides access.

use std::net::IpAddr;

use pingora::http::RequestHeader;
use pingora::prelude::*;

use crate::gate::Gate;
use crate::reply::{safe_return_to, wants_html, Cookies, Reply};
use crate::request::{self, CanonicalRequest, Refusal};
use crate::util::{clock, text};

pub fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Parse the request once (RFC 9112 target forms, one valid host, the path
/// decoded and re-encoded one way), then make the session's request say
/// exactly that: the canonical target and Host are what the upstream gets.
pub fn canonicalize(
    gate: &Gate,
    session: &mut Session,
    trusted: bool,
) -> Result<CanonicalRequest, Refusal> {
    let req = session.req_header();
    let http2 = req.version == http::Version::HTTP_2;
    let raw = request::Raw {
        method: req.method.as_str(),
        target: req.raw_path(),
        authority: if http2 {
            req.uri.authority().map(|a| a.as_str().as_bytes())
        } else {
            None
        },
        hosts: req
            .headers
            .get_all("host")
            .iter()
            .map(|v| v.as_bytes())
            .collect(),
        http10: req.version < http::Version::HTTP_11,
    };
    let mut canon = CanonicalRequest::parse(&raw, gate.settings.default_host.as_ref())?;
    if trusted {
        // A trusted proxy's X-Forwarded-Host is what many apps take as the
        // host (Rails, with trusted proxies): then it is the host judged.
        let xfh: Vec<&[u8]> = req
            .headers
            .get_all("x-forwarded-host")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        match xfh.as_slice() {
            [] => {}
            [one] if !one.contains(&b',') => {
                canon.host = request::Host::parse(one.trim_ascii())?;
            }
            _ => return Err(Refusal::ManyHosts),
        }
        // A kept `Forwarded: host=` must name that same host.
        for v in req.headers.get_all("forwarded").iter() {
            let v = v.to_str().map_err(|_| Refusal::BadHost)?;
            for pair in v.split([',', ';']) {
                let Some((k, h)) = pair.split_once('=') else {
                    continue;
                };
                if k.trim().eq_ignore_ascii_case("host") {
                    let h = request::Host::parse(h.trim().trim_matches('"').as_bytes())?;
                    if h.name() != canon.host.name() {
                        return Err(Refusal::ManyHosts);
                    }
                }
            }
        }
    }
    let target = if gate.settings.upstreams.raw_path {
        // The client's own bytes, only when they read exactly as the path
        // that is matched (no parameters, no doubled slashes).
        // An absolute-form target (`http://host/p?q`, already judged by its
        // authority) is forwarded in origin form, its path and query as sent.
        let raw = origin_form(req.raw_path());
        let path = &raw[..raw.iter().position(|&b| b == b'?').unwrap_or(raw.len())];
        if !canon.asterisk
            && (!path.starts_with(b"/") || !request::raw_is_faithful(path, &canon.path))
        {
            return Err(Refusal::NotFaithful);
        }
        raw
    } else {
        canon.forward_target().into_bytes()
    };
    let authority = canon.host.authority();
    // Most requests already say exactly that (a lower-case Host, a target
    // in its one encoding): then they are left as they are, not rewritten
    // with the same bytes.
    let req = session.req_header();
    let same_target = req.raw_path() == target.as_slice();
    let mut hosts = req.headers.get_all("host").iter();
    let same_host = !http2
        && hosts
            .next()
            .is_some_and(|h| h.as_bytes() == authority.as_bytes())
        && hosts.next().is_none();
    let req = session.req_header_mut();
    if !canon.asterisk && !same_target {
        req.set_raw_path(&target).map_err(|_| Refusal::BadQuery)?;
    }
    if !same_host {
        crate::forward::put(req, &crate::forward::FIXED.host, authority)
            .map_err(|_| Refusal::BadHost)?;
    }
    Ok(canon)
}

/// The origin form of a request target: an absolute-form one
/// (`scheme://authority/path?query`) without its scheme and authority (a
/// path that is empty becomes `/`); any other as it is.
fn origin_form(raw: &[u8]) -> Vec<u8> {
    if raw.starts_with(b"/") {
        return raw.to_vec();
    }
    let Some(i) = memchr::memmem::find(raw, b"://") else {
        return raw.to_vec();
    };
    let after = &raw[i + 3..];
    let rest = &after[after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len())..];
    match rest.first() {
        Some(b'/') => rest.to_vec(),
        _ => [b"/".as_slice(), rest].concat(),
    }
}

/// Could the app run this POST as another method? Frameworks read a
/// `_method` field from the query or a form body (which stepgate streams
/// and does not read), so every form POST counts, and any POST naming
/// `_method` in its query.
pub fn may_override_method(req: &RequestHeader, query: Option<&str>) -> bool {
    // Any body can carry `_method`: Rack reads it from a body of no or any
    // form type, Laravel from JSON too. Only a POST known to have none
    // (and no `_method` in its query) is plainly a POST.
    let body = header(req, "transfer-encoding").is_some()
        || header(req, "content-length").is_some_and(|n| n.trim() != "0");
    body || query.is_some_and(query_overrides)
}

/// Whether a query names `_method` as any app would read it (decoded,
/// `;` as a separator, PHP's name mangling).
pub fn query_overrides(q: &str) -> bool {
    crate::auth::binding::overrides_method(Some(q), None, b"") != Some(false)
}

/// Headers that make an app route, or act on, another request than the one
/// decided (IIS/Symfony `X-Original-URL`, method overrides), or that claim
/// a client address: removed unless a trusted proxy sent them. Compared in
/// the `-` spelling, since CGI/WSGI servers read `_` as `-`.
pub const REROUTING: [&str; 5] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// What a proxy in front says about the request it received (the client's
/// address, the scheme, host, port, and the path before a prefix was
/// stripped: Spring and ASP.NET build links and a base path from
/// `X-Forwarded-Prefix`, Traefik's forward-auth reads `X-Forwarded-Uri`):
/// believed from a trusted proxy, removed when a client sends it.
pub const CLIENT_CLAIMS: [&str; 10] = [
    "x-real-ip",
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-forwarded-uri",
    "x-original-uri",
    "x-envoy-original-path",
];

/// The credentials a request carries: the first factor (a bearer token, the
/// first-factor cookie, or stepgate's own session after a PIN login) and the
/// step-up token, and which of them the app must not receive.
pub struct Credentials {
    pub access_token: Option<String>,
    pub stepup_token: Option<String>,
    /// Two credentials that could name two users: the app might act for
    /// the one stepgate did not judge.
    pub conflicting: bool,
    /// The Authorization / first-factor cookie that is not the judged
    /// credential: the app must not receive it.
    pub strip_bearer: bool,
    pub strip_ff_cookie: bool,
}

pub fn credentials(gate: &Gate, req: &RequestHeader, jar: &Cookies<'_>, tls: bool) -> Credentials {
    let bearer = header(req, "authorization").and_then(crate::reply::bearer);
    let ff = jar.named(&gate.settings.first_factor.cookie);
    let ff_first = ff.text();
    let conflicting = req.headers.get_all("authorization").iter().count() > 1 || ff.ambiguous;
    let access_token = bearer.or(ff_first).map(str::to_string);
    // After a PIN login, stepgate's own session stands in for an expired or
    // absent first-factor cookie.
    let own_session = gate.settings.pin.login || gate.oidc.is_some();
    let access_token = match own_session
        .then(|| jar.first(gate.login_cookie(tls)))
        .flatten()
    {
        Some(own) => match access_token {
            Some(t) if gate.verifier.verify(&t, clock::now()).is_ok() => Some(t),
            _ => Some(own.to_string()),
        },
        None => access_token,
    };
    // The app receives only the credential that was judged.
    let strip_bearer = bearer.is_some() && access_token.as_deref() != bearer;
    // (One whose value is not text is no credential, and goes too.)
    let strip_ff_cookie =
        ff.first.is_some() && (ff_first.is_none() || access_token.as_deref() != ff_first);
    let stepup_token = header(req, "x-stepgate-token")
        .or_else(|| jar.first(gate.stepup_cookie_name(tls)))
        .map(str::to_string);
    Credentials {
        access_token,
        stepup_token,
        conflicting,
        strip_bearer,
        strip_ff_cookie,
    }
}

/// The client's address: the socket peer, or, when the peer is a trusted
/// proxy, the right-most X-Forwarded-For entry that is not one.
pub fn client_ip(gate: &Gate, peer: Option<IpAddr>, req: &RequestHeader) -> (String, bool) {
    let Some(peer) = peer else {
        return ("unknown".into(), false);
    };
    let trusted = |ip: &IpAddr| gate.settings.trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(&peer) {
        return (text::ip(peer), false);
    }
    let mut chain: Vec<IpAddr> = req
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    chain.push(peer);
    let ip = chain
        .iter()
        .rev()
        .find(|ip| !trusted(ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer);
    (text::ip(ip), true)
}

/// Remove the named cookies from the Cookie header(s), keeping the others.
pub fn strip_cookies(req: &mut RequestHeader, names: &[&str]) {
    // The values were checked when the request was read. Apps trim the name
    // (`a =1` is cookie `a` to Werkzeug): so does this.
    let named = |pair: &[u8]| names.iter().any(|n| n.as_bytes() == pair_name(pair));
    // A first pass that only looks: most requests carry none of the names,
    // and their headers are left as sent, nothing copied.
    if !req
        .headers
        .get_all("cookie")
        .iter()
        .any(|v| cookie_pairs(v.as_bytes()).any(named))
    {
        return;
    }
    rewrite_cookies(req, |pair| !named(pair));
}

/// Keep only the first of each named cookie (in the order sent, as
/// `reply::Cookies::first` reads them), the other cookies as they are.
fn keep_first_cookies(req: &mut RequestHeader, names: &[&str]) {
    let mut seen = vec![false; names.len()];
    rewrite_cookies(req, |pair| {
        match names.iter().position(|n| n.as_bytes() == pair_name(pair)) {
            Some(i) => !std::mem::replace(&mut seen[i], true),
            None => true,
        }
    });
}

/// The Cookie headers as one, with the pairs `keep` says yes to, in order.
fn rewrite_cookies(req: &mut RequestHeader, mut keep: impl FnMut(&[u8]) -> bool) {
    let all = req.headers.get_all("cookie");
    let mut kept: Vec<u8> = Vec::with_capacity(all.iter().map(|v| v.len()).sum());
    for pair in all.iter().flat_map(|v| cookie_pairs(v.as_bytes())) {
        if !keep(pair) {
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    req.remove_header("cookie");
    if !kept.is_empty() {
        let _ = req.insert_header("Cookie", kept);
    }
}

/// A pair's name as apps read it: up to the first `=`, trimmed.
fn pair_name(pair: &[u8]) -> &[u8] {
    pair[..memchr::memchr(b'=', pair).unwrap_or(pair.len())].trim_ascii()
}

/// The `;`-separated pairs of one Cookie header value, trimmed, empty ones
/// left out.
fn cookie_pairs(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(v);
    std::iter::from_fn(move || loop {
        let r = rest?;
        let (pair, next) = match memchr::memchr(b';', r) {
            Some(i) => (&r[..i], Some(&r[i + 1..])),
            None => (r, None),
        };
        rest = next;
        let pair = pair.trim_ascii();
        if !pair.is_empty() {
            return Some(pair);
        }
    })
}

/// What the edge read off a request, once: the credentials it carries, how
/// to answer it, and where it is going.
pub struct Edge {
    pub stepup_token: Option<String>,
    pub html: bool,
    /// Addressed to stepgate itself (`/.stepgate`, in any case: a
    /// case-insensitive app must never receive a body meant for stepgate).
    pub reserved: bool,
    /// A form POST the app may run as another method.
    pub overridable: bool,
    /// The pin-session cookie is present (a PIN login can stand in for a
    /// full sign-in).
    pub has_pin_session: bool,
    /// This request as a `return_to` (path and query, as forwarded).
    pub return_to: String,
    pub origin: String,
    /// The Authorization / first-factor cookie that was not the judged
    /// credential: removed before forwarding.
    pub strip_bearer: bool,
    pub strip_ff_cookie: bool,
    /// Everything a first-factor source may read, taken before stripping.
    pub presented: crate::auth::sources::Presented,
}

/// A request refused before any rule, with the metrics label it counts as.
pub struct Refused {
    pub label: &'static str,
    pub reply: Reply,
}

/// The client's address and whether it is a trusted proxy.
pub fn peer(gate: &Gate, session: &Session) -> (String, bool) {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    client_ip(gate, peer, session.req_header())
}

/// Step 1 of the request flow: credentials, then every identity header the
/// client sent is stripped, then the one parse of the request (what it says
/// is what is forwarded). A request that cannot be judged is answered here.
///
/// `trusted`: the peer is one of `trusted_proxies` (see [`peer`]).
pub fn read(
    gate: &Gate,
    session: &mut Session,
    trusted: bool,
    client_ip: &str,
) -> Result<(CanonicalRequest, Edge), Refused> {
    let tls = gate.settings.tls.is_some();
    let req = session.req_header();
    let jar = Cookies::of(req.headers.get_all("cookie").iter().map(|v| v.as_bytes()));
    let Credentials {
        access_token,
        stepup_token,
        conflicting,
        strip_bearer,
        strip_ff_cookie,
    } = credentials(gate, req, &jar, tls);
    let presented = crate::auth::sources::Presented {
        token: access_token,
        app_cookies: gate
            .sources
            .session_cookies()
            .and_then(|names| app_cookies(&jar, names)),
        trusted_user: gate
            .sources
            .trusted_header()
            .filter(|_| trusted)
            .and_then(|th| trusted_user(req, th)),
    };
    let from_sso = |k: &str| {
        gate.sources.trusted_header().is_some_and(|th| {
            crate::reply::header_name_is(k.as_bytes(), &th.user.to_ascii_lowercase())
                || th.email.as_ref().is_some_and(|e| {
                    crate::reply::header_name_is(k.as_bytes(), &e.to_ascii_lowercase())
                })
        })
    };
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
            gate.owns_header(k)
                || is(&REROUTING)
                || (!trusted && (is(&CLIENT_CLAIMS) || from_sso(k)))
        })
        .map(str::to_string)
        .collect();
    let html = wants_html(header(req, "accept"));
    let has_pin_session = jar.first(gate.pin_session_cookie(tls)).is_some();
    // The app's own session cookies that `session_check` vouches for: the
    // first of each is the one checked, and the only one forwarded (a
    // browser may hold one twice, for two Paths or Domains, RFC 6265 5.4);
    // one that is not text cannot be checked, so is refused.
    let mut twice: Vec<&str> = Vec::new();
    let mut conflicting = conflicting;
    for n in gate.sources.session_cookies().into_iter().flatten() {
        let c = jar.named(n);
        conflicting |= c.first.is_some() && c.text().is_none();
        if c.ambiguous {
            twice.push(n);
        }
    }
    drop(jar);
    let req = session.req_header_mut();
    if !twice.is_empty() {
        keep_first_cookies(req, &twice);
    }
    for name in stripped {
        req.remove_header(&name);
    }
    let content_types = session
        .req_header()
        .headers
        .get_all("content-type")
        .iter()
        .count();
    let canon = canonicalize(gate, session, trusted).and_then(|c| match conflicting {
        true => Err(Refusal::ManyCredentials),
        false if content_types > 1 => Err(Refusal::ManyContentTypes),
        false => Ok(c),
    });
    let canon = match canon {
        Ok(c) => c,
        Err(why) => {
            tracing::info!(target: "stepgate", reason = why.code(), ip = %client_ip, "request refused before any rule: {why}");
            return Err(Refused {
                label: "bad_request",
                reply: crate::web::replies::refusal(gate, why, html),
            });
        }
    };
    if canon.asterisk {
        // `OPTIONS *` asks about the server, not a resource: answered here.
        return Err(Refused {
            label: "reserved",
            reply: Reply::text(204, "").add(
                "Allow",
                "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS".into(),
            ),
        });
    }
    let path = canon.path.matched();
    // The first segment as any server may read it (`policy::first_segment_is`).
    // With `api.loginradius_root`, LoginRadius's own paths are stepgate's
    // too, in any case: a PIN sent there must never reach the app.
    let reserved = crate::policy::first_segment_is(path, ".stepgate")
        || (gate.settings.loginradius_root && crate::policy::first_segment_is(path, "identity"));
    let overridable =
        canon.method == "POST" && may_override_method(session.req_header(), canon.query.as_deref());
    let edge = Edge {
        stepup_token,
        html,
        reserved,
        overridable,
        has_pin_session,
        return_to: return_to_of(canon.path.wire(), canon.query.as_deref()),
        origin: origin(session, tls, canon.host.name()),
        strip_bearer,
        strip_ff_cookie,
        presented,
    };
    Ok((canon, edge))
}

/// `scheme://host` of this request, for absolute links.
pub fn origin(session: &Session, tls: bool, fallback_host: &str) -> String {
    let host = header(session.req_header(), "host").unwrap_or(fallback_host);
    format!("{}://{host}", if tls { "https" } else { "http" })
}

/// Where to come back to after a challenge or a sign-in: this request.
pub fn return_to_of(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => safe_return_to(Some(&format!("{path}?{q}"))),
        None => safe_return_to(Some(path)),
    }
}

/// The app's session cookies `session_check` names (and only those), as
/// one `Cookie` value, in the order the config names them.
fn app_cookies(jar: &Cookies<'_>, names: &[String]) -> Option<String> {
    let found: Vec<String> = names
        .iter()
        .filter_map(|n| jar.first(n).map(|v| format!("{n}={v}")))
        .collect();
    (!found.is_empty()).then(|| found.join("; "))
}

/// `trusted_header`'s user (and email) when sent once, printable and short.
fn trusted_user(
    req: &RequestHeader,
    th: &crate::config::TrustedHeader,
) -> Option<(String, Option<String>)> {
    let one = |name: &str| {
        let mut values = req.headers.get_all(name).iter();
        let v = values.next()?.to_str().ok()?.trim();
        let sane =
            !v.is_empty() && v.len() <= 256 && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        (values.next().is_none() && sane).then(|| v.to_string())
    };
    let user = one(&th.user)?;
    Some((user, th.email.as_deref().and_then(one)))
}

#[cfg(test)]
mod tests {
    use super::{origin_form, strip_cookies};

    #[test]
    fn an_absolute_form_target_is_forwarded_in_origin_form() {
        for (raw, want) in [
            (&b"http://app.example/a/b?q=1"[..], &b"/a/b?q=1"[..]),
            (b"https://app.example:8443", b"/"),
            (b"http://app.example?x=/y", b"/?x=/y"),
            (b"/a?b", b"/a?b"),
            (b"*", b"*"),
        ] {
            assert_eq!(origin_form(raw), want, "{}", String::from_utf8_lossy(raw));
        }
    }
    use pingora::http::RequestHeader;

    fn with_cookies(values: &[&[u8]]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for v in values {
            req.append_header("Cookie", v.to_vec()).unwrap();
        }
        req
    }

    fn cookies(req: &RequestHeader) -> Vec<Vec<u8>> {
        req.headers
            .get_all("cookie")
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    }

    #[test]
    fn named_cookies_go_and_the_others_stay_in_order() {
        let mut req = with_cookies(&[b"a=1; stepgate_su=x;b=2", b" c=3 ;stepgate_su=y"]);
        strip_cookies(&mut req, &["stepgate_su"]);
        assert_eq!(cookies(&req), [b"a=1; b=2; c=3".to_vec()]);
    }

    #[test]
    fn a_request_without_them_is_left_as_sent() {
        let mut req = with_cookies(&[b"a=1", b"stepgate_suffix=2; xstepgate_su=3"]);
        strip_cookies(&mut req, &["stepgate_su"]);
        assert_eq!(
            cookies(&req),
            [
                b"a=1".to_vec(),
                b"stepgate_suffix=2; xstepgate_su=3".to_vec()
            ]
        );
    }

    #[test]
    fn a_name_with_spaces_before_the_equals_sign_is_still_that_name() {
        let mut req = with_cookies(&[b"a=1; stepgate_su =x; stepgate_su\t= y"]);
        strip_cookies(&mut req, &["stepgate_su"]);
        assert_eq!(cookies(&req), [b"a=1".to_vec()]);
    }

    #[test]
    fn only_named_cookies_leave_no_header() {
        let mut req = with_cookies(&[b"stepgate_su=x; access_token"]);
        strip_cookies(&mut req, &["stepgate_su", "access_token"]);
        assert!(cookies(&req).is_empty());
    }

    #[test]
    fn bytes_that_are_not_utf8_do_not_hide_a_named_cookie() {
        let mut req = with_cookies(&[b"n=\xe9t\xe9; stepgate_su=x"]);
        strip_cookies(&mut req, &["stepgate_su"]);
        assert_eq!(cookies(&req), [b"n=\xe9t\xe9".to_vec()]);
    }
}
