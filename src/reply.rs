//! The one place for HTTP plumbing shared by pages, templates and the proxy
//! (a value layer: it imports nothing of stepgate): replies with
//! the security headers every stepgate answer carries, the strict form
//! parser, cookies (stepgate's own, named and set in one place), and
//! `return_to` checks.

use bytes::Bytes;

/// A response stepgate writes itself.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// Set by a step-up that finishes a kept request: not this reply but
    /// the kept request goes on (see [`Resend`]).
    pub resend: Option<Box<Resend>>,
}

/// The request a browser sent before its step-up, to be forwarded in place
/// of the step-up's own POST; the application answers it, and the reply's
/// `Set-Cookie` headers go with that answer.
#[derive(Debug, Clone)]
pub struct Resend {
    pub kept_id: String,
    pub method: String,
    /// Path and query, as first sent.
    pub target: String,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// The step-up just made, judged in place of the request's cookie.
    pub stepup_token: String,
}

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

impl Reply {
    fn with_security(status: u16, content_type: &str, body: Bytes) -> Reply {
        Reply {
            status,
            headers: vec![
                ("Content-Type", content_type.to_string()),
                ("Cache-Control", "no-store".into()),
                ("Content-Security-Policy", CSP.into()),
                ("X-Frame-Options", "DENY".into()),
                ("X-Content-Type-Options", "nosniff".into()),
                ("Referrer-Policy", "no-referrer".into()),
            ],
            body,
            resend: None,
        }
    }
    pub fn html(status: u16, body: String) -> Reply {
        Reply::with_security(status, "text/html; charset=utf-8", Bytes::from(body))
    }
    pub fn json(status: u16, v: &serde_json::Value) -> Reply {
        Reply::with_security(status, "application/json", Bytes::from(v.to_string()))
    }
    pub fn text(status: u16, body: &'static str) -> Reply {
        Reply::with_security(
            status,
            "text/plain; charset=utf-8",
            Bytes::from_static(body.as_bytes()),
        )
    }
    pub fn css(body: &'static str) -> Reply {
        let mut r = Reply::with_security(
            200,
            "text/css; charset=utf-8",
            Bytes::from_static(body.as_bytes()),
        );
        r.set("Cache-Control", "public, max-age=3600".into());
        r
    }
    /// 303 See Other: after a POST the browser follows with a GET.
    pub fn redirect(location: &str) -> Reply {
        let mut r = Reply::with_security(303, "text/plain; charset=utf-8", Bytes::new());
        r.headers.push(("Location", location.to_string()));
        r
    }
    pub fn set(&mut self, name: &'static str, value: String) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name, value));
    }
    pub fn add(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// Why a form was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FormError {
    BadEncoding,
    DuplicateField(String),
}

/// Parse `application/x-www-form-urlencoded` strictly: bad percent escapes,
/// invalid UTF-8 and repeated fields are errors, not guesses.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let mut out: Vec<(String, String)> = Vec::new();
    if body.is_empty() {
        return Ok(out);
    }
    for pair in body.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let k = decode_component(k)?;
        let v = decode_component(v)?;
        if out.iter().any(|(n, _)| *n == k) {
            return Err(FormError::DuplicateField(k));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn decode_component(s: &[u8]) -> Result<String, FormError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = s.get(i + 1..i + 3).ok_or(FormError::BadEncoding)?;
                let h = std::str::from_utf8(h).map_err(|_| FormError::BadEncoding)?;
                out.push(u8::from_str_radix(h, 16).map_err(|_| FormError::BadEncoding)?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| FormError::BadEncoding)
}

pub fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Query parameter (lenient: query strings come from links).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Is header `name` the one spelled `dashed` (lower case, `-`), in any case
/// and with `_` for `-` (CGI/WSGI servers read both the same)? Runs for
/// every header of every request: compares without allocating.
pub fn header_name_is(name: &[u8], dashed: &str) -> bool {
    name.len() == dashed.len()
        && name.iter().zip(dashed.as_bytes()).all(|(x, y)| {
            let x = x.to_ascii_lowercase();
            (if x == b'_' { b'-' } else { x }) == *y
        })
}

/// The value of cookie `name` across all Cookie headers.
/// stepgate's own cookies. The one place their names (the `__Host-` rule:
/// over TLS a cookie is `__Host-`-prefixed, `Secure`, `Path=/` and has no
/// `Domain`, so no sibling host can set or shadow it) and their Set-Cookie
/// attributes are decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnCookie {
    /// The step-up token (`stepgate_su`): only sent on same-site requests.
    StepUp,
    /// The device PIN session (`stepgate_ps`): sent on top-level navigation
    /// from other sites too, so a PIN login can follow a link.
    PinSession,
    /// stepgate's own first-factor session after a PIN login.
    Login,
    /// The nonce behind CSRF tokens of signed-out forms.
    Nonce,
    /// Binds an OIDC sign-in to the browser that started it. Lax: the
    /// provider's redirect back is a cross-site navigation.
    OidcBrowser,
}

impl OwnCookie {
    pub const ALL: [OwnCookie; 5] = [
        OwnCookie::StepUp,
        OwnCookie::PinSession,
        OwnCookie::Login,
        OwnCookie::Nonce,
        OwnCookie::OidcBrowser,
    ];

    /// Every name, with and without `__Host-`: the app never receives them.
    pub const EVERY_NAME: [&'static str; 10] = {
        let mut out = [""; 10];
        let mut i = 0;
        while i < 5 {
            out[2 * i] = Self::ALL[i].name(false);
            out[2 * i + 1] = Self::ALL[i].name(true);
            i += 1;
        }
        out
    };

    pub const fn name(self, tls: bool) -> &'static str {
        match (self, tls) {
            (OwnCookie::StepUp, true) => "__Host-stepgate_su",
            (OwnCookie::StepUp, false) => "stepgate_su",
            (OwnCookie::PinSession, true) => "__Host-stepgate_ps",
            (OwnCookie::PinSession, false) => "stepgate_ps",
            (OwnCookie::Login, true) => "__Host-stepgate_session",
            (OwnCookie::Login, false) => "stepgate_session",
            (OwnCookie::Nonce, true) => "__Host-stepgate_pre",
            (OwnCookie::Nonce, false) => "stepgate_pre",
            (OwnCookie::OidcBrowser, true) => "__Host-stepgate_oidc",
            (OwnCookie::OidcBrowser, false) => "stepgate_oidc",
        }
    }

    fn same_site(self) -> cookie::SameSite {
        match self {
            OwnCookie::StepUp | OwnCookie::Nonce => cookie::SameSite::Strict,
            OwnCookie::PinSession | OwnCookie::Login | OwnCookie::OidcBrowser => {
                cookie::SameSite::Lax
            }
        }
    }

    /// The Set-Cookie value that keeps `value` for `max_age` seconds.
    pub fn set(self, value: &str, max_age: i64, tls: bool) -> String {
        cookie::Cookie::build((self.name(tls), value))
            .path("/")
            .http_only(true)
            .same_site(self.same_site())
            .secure(tls)
            .max_age(time::Duration::seconds(max_age.max(0)))
            .build()
            .to_string()
    }

    /// The Set-Cookie value that removes it.
    pub fn clear(self, tls: bool) -> String {
        self.set("", 0, tls)
    }
}

/// The first value of cookie `name`.
pub fn cookie<'a>(headers: impl Iterator<Item = &'a [u8]>, name: &str) -> Option<String> {
    Cookies::of(headers).first(name).map(str::to_string)
}

/// Every (name, value) pair of the Cookie headers, in the order sent: the
/// one reading of cookies, as the apps behind read them. Bytes, not text: a
/// header with a byte that is not UTF-8 is still read (skipping it would
/// hide its cookies from stepgate and not from the app). Names are trimmed
/// (`a =1` is cookie `a` to Werkzeug, Django and Python's SimpleCookie),
/// values lose their surrounding quotes.
fn cookie_pairs<'a>(
    headers: impl Iterator<Item = &'a [u8]>,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    headers
        .flat_map(|h| h.split(|b| *b == b';'))
        .filter_map(|part| {
            let part = part.trim_ascii();
            let eq = memchr::memchr(b'=', part)?;
            let v = part[eq + 1..].trim_ascii();
            let v = match v {
                [b'"', inner @ .., b'"'] => inner,
                _ => v,
            };
            Some((part[..eq].trim_ascii(), v))
        })
}

/// A request's cookies, read once ([`cookie_pairs`]): lookups then cost no
/// further parsing.
pub struct Cookies<'a>(Vec<(&'a [u8], &'a [u8])>);

impl<'a> Cookies<'a> {
    pub fn of(headers: impl Iterator<Item = &'a [u8]>) -> Cookies<'a> {
        Cookies(cookie_pairs(headers).collect())
    }

    /// The first value of `name`, when it is text (every credential is).
    pub fn first(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(k, _)| *k == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// What was sent as `name`, in one pass: for a cookie that is a
    /// credential.
    pub fn named(&self, name: &str) -> Named<'a> {
        let mut values = self
            .0
            .iter()
            .filter(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| *v);
        let first = values.next();
        Named {
            first,
            ambiguous: values.any(|v| Some(v) != first),
        }
    }
}

/// One cookie name of a request ([`Cookies::named`]).
pub struct Named<'a> {
    /// Its first value as sent, text or not.
    pub first: Option<&'a [u8]>,
    /// Sent more than once with different values: two credentials, of which
    /// the app may read another than stepgate did.
    pub ambiguous: bool,
}

impl<'a> Named<'a> {
    /// The first value, when it is text (every credential is).
    pub fn text(&self) -> Option<&'a str> {
        self.first.and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Accept `return_to` only as a same-origin path; anything else becomes `/`.
pub fn safe_return_to(raw: Option<&str>) -> String {
    let Some(r) = raw else { return "/".into() };
    let ok = r.starts_with('/')
        && !r.starts_with("//")
        && !r.starts_with("/\\")
        && r.len() <= 2048
        && !r.chars().any(|c| c.is_control() || c == '\\')
        && (!r.starts_with("/.stepgate/") || r == "/.stepgate/account");
    if ok {
        r.to_string()
    } else {
        "/".into()
    }
}

pub fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The credentials of an `Authorization: Bearer …` header; the scheme is
/// case-insensitive (RFC 9110 §11.1).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Does the client want a page (a browser) rather than JSON?
pub fn wants_html(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("text/html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jar(headers: &[&'static [u8]]) -> Cookies<'static> {
        Cookies::of(headers.iter().copied())
    }

    #[test]
    fn cookies_are_read_as_the_apps_behind_read_them() {
        // A byte that is not UTF-8 hides nothing else in its header.
        let j = jar(&[b"x=\xe9; sid=bob", b"sid=alice"]);
        assert_eq!(j.first("sid"), Some("bob"));
        assert!(j.named("sid").ambiguous);
        // Names are trimmed, as Werkzeug, Django and SimpleCookie do.
        let j = jar(&[b"sid=alice; sid =bob"]);
        assert!(j.named("sid").ambiguous);
        assert_eq!(jar(&[b" sid = \"q\" "]).first("sid"), Some("q"));
        // The same value twice is one credential.
        let j = jar(&[b"sid=alice", b"sid=alice; a=1"]);
        assert!(!j.named("sid").ambiguous && !j.named("a").ambiguous);
        assert!(j.named("none").first.is_none() && !j.named("none").ambiguous);
        // A value that is not text is no credential, though it was sent.
        let j = jar(&[b"sid=\xff"]);
        assert_eq!(j.first("sid"), None);
        assert!(j.named("sid").first.is_some() && j.named("sid").text().is_none());
        assert_eq!(jar(&[b"novalue; =x; sid="]).first("sid"), Some(""));
    }

    #[test]
    fn own_cookies_follow_the_host_prefix_rule_over_tls() {
        for c in OwnCookie::ALL {
            let v = c.set("tok", 60, true);
            assert!(
                v.starts_with("__Host-stepgate_") && v.contains("=tok"),
                "{v}"
            );
            for a in ["Secure", "Path=/", "HttpOnly", "Max-Age=60"] {
                assert!(v.contains(a), "{v} has {a}");
            }
            assert!(!v.to_ascii_lowercase().contains("domain"), "{v}");
            let plain = c.set("tok", 60, false);
            assert!(
                plain.starts_with("stepgate_") && !plain.contains("Secure"),
                "{plain}"
            );
            assert!(c.clear(true).contains("Max-Age=0"));
        }
        assert!(OwnCookie::StepUp
            .set("t", 1, true)
            .contains("SameSite=Strict"));
        assert!(OwnCookie::PinSession
            .set("t", 1, true)
            .contains("SameSite=Lax"));
    }

    #[test]
    fn forms_are_parsed_strictly() {
        assert_eq!(
            parse_form(b"pin=1234&csrf=a%2Bb&return_to=%2Fx").unwrap()[1].1,
            "a+b"
        );
        assert_eq!(parse_form(b"a=%zz"), Err(FormError::BadEncoding));
        assert_eq!(parse_form(b"a=%ff"), Err(FormError::BadEncoding));
        assert_eq!(
            parse_form(b"a=1&a=2"),
            Err(FormError::DuplicateField("a".into()))
        );
        assert_eq!(parse_form(b"a=%4"), Err(FormError::BadEncoding));
    }

    #[test]
    fn return_to_must_stay_on_this_origin() {
        assert_eq!(safe_return_to(Some("/admin?x=1")), "/admin?x=1");
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "javascript:alert(1)",
            "/a\nb",
            "/.stepgate/pin",
        ] {
            assert_eq!(safe_return_to(Some(bad)), "/", "{bad}");
        }
    }

    #[test]
    fn cookies_are_found_across_headers() {
        let hs: Vec<&[u8]> = vec![b"a=1; stepgate_su=tok", b"access_token=at"];
        assert_eq!(
            cookie(hs.clone().into_iter(), "stepgate_su").as_deref(),
            Some("tok")
        );
        assert_eq!(
            cookie(hs.into_iter(), "access_token").as_deref(),
            Some("at")
        );
    }
}
