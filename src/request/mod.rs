//! The canonical request: each request is parsed once, at the edge, into the
//! one value that the decision, the logs, the assertion and the forwarded
//! request all use. What stepgate matches is exactly what it forwards; a
//! request that cannot be read one way only is refused with 400 and a reason.
//!
//! Why so strict: every server behind stepgate reads targets, hosts and paths
//! its own way (Werkzeug serves `admin` for a target without `/`, Tomcat drops
//! `;params` and merges slashes, Node trusts whatever `Host` says). A gateway
//! is only safe when the bytes the app routes on are bytes the gateway
//! decided on. So the path is decoded once and re-encoded one way, the host
//! is validated and rewritten, and everything ambiguous is refused.
//!
//! This module must never do I/O, and nothing after it may re-parse the raw
//! target: take a [`CanonicalRequest`].

use std::fmt;

/// Why a request was refused before any rule was looked at. Each says, in
/// words a person reading a 400 page understands, what was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The target is neither `/…` nor `http(s)://host/…` (`admin`, `x:/admin`).
    TargetForm,
    /// `*` is only meaningful for OPTIONS.
    Asterisk,
    /// A `#fragment` was sent: clients never send one.
    Fragment,
    /// Userinfo (`user@`) in an absolute-form target.
    Userinfo,
    /// The method is not an upper-case token (`get`, `GE T`).
    Method,
    /// No Host (HTTP/1.0 without `default_host`, or HTTP/1.1 without Host).
    MissingHost,
    /// More than one Host header, or a trusted proxy's X-Forwarded-Host or
    /// Forwarded host that is a list or disagrees.
    ManyHosts,
    /// A Host that is not `name[:port]`, `a.b.c.d[:port]` or `[v6][:port]`.
    BadHost,
    /// A path byte or escape that servers read differently (`%2F`, `%5C`,
    /// `%00`, `%25`, `%3B`, a backslash, a control character, bad `%`).
    AmbiguousEncoding,
    /// Percent-escapes that do not decode to UTF-8.
    NotUtf8,
    /// A `.` or `..` segment, sent or encoded.
    DotSegment,
    /// A query with bytes no client sends (controls, spaces).
    BadQuery,
    /// `forward_path: raw`, and the bytes sent read differently once
    /// normalized (parameters, doubled slashes).
    NotFaithful,
    /// Two Authorization headers, or two different first-factor cookies.
    ManyCredentials,
    /// More than one Content-Type header: apps read the first or the last,
    /// so what the body is depends on who reads it.
    ManyContentTypes,
}

impl Refusal {
    /// What is wrong, for the 400 page and the JSON error.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::TargetForm => "the request target must start with `/` (or be an absolute http(s) URL)",
            Refusal::Asterisk => "the `*` target is only allowed with OPTIONS",
            Refusal::Fragment => "the request target contains a `#fragment`",
            Refusal::Userinfo => "the request target contains a user name (`user@host`)",
            Refusal::Method => "the method must be an upper-case token such as GET or POST",
            Refusal::MissingHost => "the request names no host (send a Host header)",
            Refusal::ManyHosts => "the request has more than one Host header",
            Refusal::BadHost => "the Host is not a valid host name with an optional port",
            Refusal::AmbiguousEncoding => {
                "the path contains an encoded `/`, `\\`, `%`, `;` or NUL, a backslash, a control character or a malformed `%` escape"
            }
            Refusal::NotUtf8 => "the path's percent-escapes are not UTF-8",
            Refusal::DotSegment => "the path contains a `.` or `..` segment",
            Refusal::BadQuery => "the query contains control characters or spaces",
            Refusal::ManyCredentials => {
                "the request carries two different credentials (two Authorization headers, or a sign-in cookie sent twice with different values)"
            }
            Refusal::NotFaithful => {
                "this gateway forwards paths as sent, and this one reads differently once normalized (a `;parameter` or a doubled `/`)"
            }
            Refusal::ManyContentTypes => {
                "the request has more than one Content-Type header, so servers disagree on what its body is"
            }
        }
    }

    /// A short stable name, for metrics and logs.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::TargetForm => "target_form",
            Refusal::Asterisk => "asterisk",
            Refusal::Fragment => "fragment",
            Refusal::Userinfo => "userinfo",
            Refusal::Method => "method",
            Refusal::MissingHost => "missing_host",
            Refusal::ManyHosts => "many_hosts",
            Refusal::BadHost => "bad_host",
            Refusal::AmbiguousEncoding => "ambiguous_encoding",
            Refusal::NotUtf8 => "not_utf8",
            Refusal::DotSegment => "dot_segment",
            Refusal::BadQuery => "bad_query",
            Refusal::NotFaithful => "not_faithful",
            Refusal::ManyCredentials => "many_credentials",
            Refusal::ManyContentTypes => "many_content_types",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A validated host: lower case, without a trailing dot, with its port when
/// one was given. Can only be built by [`Host::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    name: String,
    port: Option<u16>,
}

impl Host {
    /// Parse `name[:port]`: a reg-name (letters, digits, `-`, `_`, `.`; labels
    /// not empty), an IPv4 address or a bracketed IPv6 address.
    pub fn parse(raw: &[u8]) -> Result<Host, Refusal> {
        if raw.is_empty() || raw.len() > 260 {
            return Err(Refusal::BadHost);
        }
        let (name, port) = if raw[0] == b'[' {
            let end = raw
                .iter()
                .position(|&b| b == b']')
                .ok_or(Refusal::BadHost)?;
            let inner = std::str::from_utf8(&raw[1..end]).map_err(|_| Refusal::BadHost)?;
            let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| Refusal::BadHost)?;
            (format!("[{ip}]"), &raw[end + 1..])
        } else {
            let end = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
            let mut name = &raw[..end];
            if name.last() == Some(&b'.') {
                name = &name[..name.len() - 1];
            }
            let label_ok = |l: &[u8]| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if name.is_empty() || name.len() > 253 || !name.split(|&b| b == b'.').all(label_ok) {
                return Err(Refusal::BadHost);
            }
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            // Something that looks like a dotted number must be an IPv4
            // address: `127.1` and `0x7f.1` mean other things to other parsers.
            if name
                .split('.')
                .next_back()
                .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
                || name.starts_with("0x")
            {
                let ip: std::net::Ipv4Addr = name.parse().map_err(|_| Refusal::BadHost)?;
                if crate::util::text::ip(ip.into()) != name {
                    return Err(Refusal::BadHost);
                }
            }
            (name, &raw[end..])
        };
        let port = match port {
            [] => None,
            [b':', digits @ ..] => {
                if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(Refusal::BadHost);
                }
                let n: u32 = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .ok_or(Refusal::BadHost)?;
                Some(u16::try_from(n).map_err(|_| Refusal::BadHost)?)
            }
            _ => return Err(Refusal::BadHost),
        };
        Ok(Host { name, port })
    }

    /// The host name for matching: lower case, no port, no trailing dot.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// `name[:port]`, as sent upstream in `Host` and `X-Forwarded-Host`.
    pub fn authority(&self) -> String {
        let mut out = String::with_capacity(self.name.len() + 6);
        out.push_str(&self.name);
        if let Some(p) = self.port {
            out.push(':');
            crate::util::text::push_u64(&mut out, u64::from(p));
        }
        out
    }
}

/// A request path, decoded once and normalized, with the one encoding of it
/// that stepgate forwards. Can only be built by [`CanonicalPath::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalPath {
    /// Decoded, `;params` removed, empty segments collapsed, no trailing `/`
    /// (except for the root): what rules match.
    matched: String,
    /// `matched` re-encoded one way, with the trailing `/` the client sent.
    wire: String,
}

/// Bytes a path segment carries as themselves on the wire; every other byte
/// is percent-encoded (upper-case hex). `;` is never among them: a raw `;`
/// starts a parameter (removed), and `%3B` is refused on input because
/// servers disagree on whether a decoded `;` starts one.
fn literal_in_segment(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl CanonicalPath {
    /// Canonicalize the raw path of a request target (`/…`, without query).
    pub fn parse(raw: &[u8]) -> Result<CanonicalPath, Refusal> {
        if raw.first() != Some(&b'/') {
            return Err(Refusal::TargetForm);
        }
        let mut matched = String::with_capacity(raw.len());
        let mut wire = String::with_capacity(raw.len() + 8);
        let mut trailing = false;
        let mut decoded: Vec<u8> = Vec::with_capacity(64);
        for seg in raw[1..].split(|&b| b == b'/') {
            // `;params` end at the next raw `/`, as in servlet containers.
            let bare = match seg.iter().position(|&b| b == b';') {
                Some(i) => &seg[..i],
                None => seg,
            };
            decoded.clear();
            let mut i = 0;
            while i < bare.len() {
                let b = bare[i];
                let v = if b == b'%' {
                    let (Some(h), Some(l)) = (
                        bare.get(i + 1).copied().and_then(hex),
                        bare.get(i + 2).copied().and_then(hex),
                    ) else {
                        return Err(Refusal::AmbiguousEncoding);
                    };
                    i += 3;
                    let v = h * 16 + l;
                    if matches!(v, b'/' | b'\\' | b'%' | b';' | 0) {
                        return Err(Refusal::AmbiguousEncoding);
                    }
                    v
                } else {
                    i += 1;
                    if b == b'\\' {
                        return Err(Refusal::AmbiguousEncoding);
                    }
                    b
                };
                if v < 0x20 || v == 0x7f || (v == b' ' && b != b'%') {
                    return Err(Refusal::AmbiguousEncoding);
                }
                decoded.push(v);
            }
            let text = std::str::from_utf8(&decoded).map_err(|_| Refusal::NotUtf8)?;
            if text == "." || text == ".." {
                return Err(Refusal::DotSegment);
            }
            trailing = text.is_empty();
            if text.is_empty() {
                continue;
            }
            matched.push('/');
            matched.push_str(text);
            wire.push('/');
            for &b in text.as_bytes() {
                if literal_in_segment(b) {
                    wire.push(b as char);
                } else {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    wire.push('%');
                    wire.push(HEX[(b >> 4) as usize] as char);
                    wire.push(HEX[(b & 15) as usize] as char);
                }
            }
        }
        if matched.is_empty() {
            matched.push('/');
        }
        if trailing || wire.is_empty() {
            wire.push('/');
        }
        Ok(CanonicalPath { matched, wire })
    }

    /// The decoded path rules match (`/café/x`).
    pub fn matched(&self) -> &str {
        &self.matched
    }

    /// The path forwarded upstream (`/caf%C3%A9/x`).
    pub fn wire(&self) -> &str {
        &self.wire
    }
}

/// A query string as received, checked for bytes no client sends. Its
/// parameters are not rewritten: no rule matches on them.
fn check_query(q: &[u8]) -> Result<String, Refusal> {
    if q.iter().any(|&b| b <= b' ' || b == 0x7f || b == b'#') {
        return Err(Refusal::BadQuery);
    }
    String::from_utf8(q.to_vec()).map_err(|_| Refusal::BadQuery)
}

/// The parts of a request target: path, query and, in absolute form, the
/// authority (which wins over `Host`, RFC 9112 §3.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub path: CanonicalPath,
    pub query: Option<String>,
    pub authority: Option<Host>,
    /// The `*` of `OPTIONS *`.
    pub asterisk: bool,
}

impl Target {
    pub fn parse(method: &str, raw: &[u8]) -> Result<Target, Refusal> {
        if raw.contains(&b'#') {
            return Err(Refusal::Fragment);
        }
        if raw == b"*" {
            if method != "OPTIONS" {
                return Err(Refusal::Asterisk);
            }
            return Ok(Target {
                path: CanonicalPath::parse(b"/")?,
                query: None,
                authority: None,
                asterisk: true,
            });
        }
        let lower_starts =
            |p: &[u8]| raw.len() >= p.len() && raw[..p.len()].eq_ignore_ascii_case(p);
        let (authority, rest) = if raw.first() == Some(&b'/') {
            (None, raw)
        } else if lower_starts(b"http://") || lower_starts(b"https://") {
            let after = &raw[raw.iter().position(|&b| b == b':').unwrap_or(0) + 3..];
            let end = after
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(after.len());
            let auth = &after[..end];
            if auth.contains(&b'@') {
                return Err(Refusal::Userinfo);
            }
            (Some(Host::parse(auth)?), &after[end..])
        } else {
            return Err(Refusal::TargetForm);
        };
        let (path, query) = match rest.iter().position(|&b| b == b'?') {
            Some(i) => (&rest[..i], Some(check_query(&rest[i + 1..])?)),
            None => (rest, None),
        };
        let path = if path.is_empty() { &b"/"[..] } else { path };
        Ok(Target {
            path: CanonicalPath::parse(path)?,
            query,
            authority,
            asterisk: false,
        })
    }
}

/// The one view of a request that every later step uses.
#[derive(Clone, Debug)]
pub struct CanonicalRequest {
    /// Upper-case token.
    pub method: String,
    pub host: Host,
    pub path: CanonicalPath,
    pub query: Option<String>,
    pub asterisk: bool,
}

/// What the edge knows of a request before canonicalizing it.
pub struct Raw<'a> {
    pub method: &'a str,
    /// The request target exactly as sent.
    pub target: &'a [u8],
    /// HTTP/2's `:authority`, when there is one.
    pub authority: Option<&'a [u8]>,
    /// Every Host header value.
    pub hosts: Vec<&'a [u8]>,
    /// HTTP/1.0 may leave Host out; `default_host` then stands in.
    pub http10: bool,
}

impl CanonicalRequest {
    /// Parse a request once. `default_host`: the host of requests that name
    /// none (HTTP/1.0 without Host), when the config sets one.
    pub fn parse(raw: &Raw<'_>, default_host: Option<&Host>) -> Result<CanonicalRequest, Refusal> {
        let m = raw.method.as_bytes();
        if m.is_empty()
            || m.len() > 32
            || !m
                .iter()
                .all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_' || b.is_ascii_digit())
        {
            return Err(Refusal::Method);
        }
        let target = Target::parse(raw.method, raw.target)?;
        if raw.hosts.len() > 1 {
            return Err(Refusal::ManyHosts);
        }
        let header_host = match raw.hosts.first() {
            Some(h) => Some(Host::parse(trim_ows(h))?),
            None => None,
        };
        let h2 = match raw.authority {
            Some(a) => Some(Host::parse(a)?),
            None => None,
        };
        let host = match (target.authority, h2, header_host) {
            (Some(a), _, _) => a,
            (None, Some(a), _) => a,
            (None, None, Some(h)) => h,
            (None, None, None) => match (raw.http10, default_host) {
                (true, Some(d)) => d.clone(),
                _ => return Err(Refusal::MissingHost),
            },
        };
        Ok(CanonicalRequest {
            method: raw.method.to_string(),
            host,
            path: target.path,
            query: target.query,
            asterisk: target.asterisk,
        })
    }

    /// The origin-form target forwarded upstream: canonical path and the
    /// query as received.
    pub fn forward_target(&self) -> String {
        if self.asterisk {
            return "*".to_string();
        }
        match &self.query {
            Some(q) => format!("{}?{q}", self.path.wire()),
            None => self.path.wire().to_string(),
        }
    }
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Decode a canonical wire path back (for `forward_path: raw`): raw bytes
/// are forwarded only when decoding them naively, with no parameter
/// stripping and no slash merging, gives exactly the path that was matched,
/// so servers that do neither still route what was decided.
pub fn raw_is_faithful(raw_path: &[u8], p: &CanonicalPath) -> bool {
    let mut out = Vec::with_capacity(raw_path.len());
    let mut i = 0;
    while i < raw_path.len() {
        if raw_path[i] == b'%' {
            match (
                raw_path.get(i + 1).copied().and_then(hex),
                raw_path.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => out.push(h * 16 + l),
                _ => return false,
            }
            i += 3;
        } else {
            out.push(raw_path[i]);
            i += 1;
        }
    }
    let s = match std::str::from_utf8(&out) {
        Ok(s) => s,
        Err(_) => return false,
    };
    let s = if s.len() > 1 {
        s.strip_suffix('/').unwrap_or(s)
    } else {
        s
    };
    s == p.matched()
}

#[cfg(test)]
mod tests;
