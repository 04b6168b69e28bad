//! Differential suite: what stepgate decides is what the upstream serves.
//!
//! Four real upstream servers that route requests differently (Werkzeug/Flask,
//! Node's `http` with WHATWG URL, nginx with `merge_slashes`, an embedded
//! Tomcat) each answer every request with JSON describing the route *they*
//! see (`tests/fixtures/diff/`). One stepgate gateway runs in front of each.
//! A seeded generator builds several hundred requests per gateway (encodings,
//! `;params`, dot segments, odd targets, odd Host values, override headers),
//! sent as raw bytes, each with a valid first-factor token and no step-up
//! token. For every one, either stepgate refused it, or the upstream served a
//! route that a naive reference matcher (below) says is neither `step_up` nor
//! `deny`, saw the rule that reference names in `X-Stepgate-Rule`, and never
//! saw a routing or forwarding header the client sent.
//!
//! `DIFF_CASES=N` changes the number of generated requests per upstream
//! (default 400), `DIFF_SEED=N` the seed.
mod common;

use common::{free_port, spawn, Gateway, GatewayOptions, Proc};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const POLICY: &str = r#"
default: authenticated
rules:
  - name: billing
    match: { host: "billing.example.com", path: "/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: admin
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: export
    match: { path: "/api/users:export" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: at-admin
    match: { path: "/@admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: cafe
    match: { path: "/café/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: security
    match: { path: "/account/security/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: internal
    match: { path: "/internal/**" }
    require: deny
  - name: public
    match: { path: "/public/**" }
    require: none
"#;

// ---------------------------------------------------------------------------
// The upstream servers.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    Flask,
    Node,
    Nginx,
    Tomcat,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Flask => "flask",
            Server::Node => "node",
            Server::Nginx => "nginx",
            Server::Tomcat => "tomcat",
        }
    }
}

struct Upstream {
    proc: Proc,
    port: u16,
    _dir: tempfile::TempDir,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diff")
        .join(name)
}

/// `name` on PATH, or in one of `extra` directories.
fn program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn need(name: &str, extra: &[&str]) -> PathBuf {
    program(name, extra).unwrap_or_else(|| {
        panic!("`{name}` is not installed: run `scripts/install-deps.sh test` (the differential suite needs it)")
    })
}

/// The Tomcat jars Debian's libtomcat10-java installs (one copy of each:
/// the unversioned names), or why the Tomcat upstream must be skipped.
fn tomcat_classpath() -> Result<String, String> {
    let dir = Path::new("/usr/share/java");
    if !dir.join("tomcat10-catalina.jar").is_file() {
        return Err("no /usr/share/java/tomcat10-catalina.jar (Debian package libtomcat10-java; `scripts/install-deps.sh test` installs it)".into());
    }
    let mut jars: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| {
            n.ends_with(".jar")
                && n.strip_prefix("tomcat10-")
                    .is_some_and(|rest| !rest.contains(|c: char| c.is_ascii_digit()))
        })
        .map(|n| dir.join(n).to_string_lossy().to_string())
        .collect();
    jars.sort();
    Ok(jars.join(":"))
}

/// Start one upstream on a free loopback port. `Err` only for Tomcat, when
/// Java or the Tomcat jars are missing: that upstream is then skipped.
fn start_upstream(kind: Server) -> Result<Upstream, String> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join(format!("{}.log", kind.name()));
    let (proc, within) = match kind {
        Server::Flask => {
            let python = need("python3", &[]);
            let ok = Command::new(&python)
                .args(["-c", "import flask"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(
                ok,
                "Flask is not installed: run `scripts/install-deps.sh test` (pip install flask)"
            );
            let p = spawn(
                Command::new(python)
                    .arg(fixture("flask_app.py"))
                    .arg(port.to_string()),
                log,
            );
            (p, Duration::from_secs(60))
        }
        Server::Node => {
            let p = spawn(
                Command::new(need("node", &[]))
                    .arg(fixture("node_app.js"))
                    .arg(port.to_string()),
                log,
            );
            (p, Duration::from_secs(60))
        }
        Server::Nginx => {
            let nginx = need("nginx", &["/usr/sbin", "/usr/local/sbin"]);
            let prefix = dir.path().join("nginx");
            std::fs::create_dir_all(&prefix).unwrap();
            let conf = std::fs::read_to_string(fixture("nginx.conf.in"))
                .unwrap()
                .replace("@PORT@", &port.to_string())
                .replace("@DIR@", prefix.to_str().unwrap());
            let conf_file = prefix.join("nginx.conf");
            std::fs::write(&conf_file, conf).unwrap();
            let p = spawn(
                Command::new(nginx)
                    .arg("-e")
                    .arg(prefix.join("error.log"))
                    .arg("-c")
                    .arg(&conf_file)
                    .arg("-p")
                    .arg(&prefix),
                log,
            );
            (p, Duration::from_secs(60))
        }
        Server::Tomcat => {
            let java = program("java", &[])
                .ok_or("`java` is not installed (Debian package default-jre-headless)")?;
            let cp = tomcat_classpath()?;
            let base = dir.path().join("tomcat");
            std::fs::create_dir_all(&base).unwrap();
            let p = spawn(
                Command::new(java)
                    .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", &cp])
                    .arg(fixture("Diff.java"))
                    .arg(port.to_string())
                    .arg(&base),
                log,
            );
            // Compiling Diff.java and starting Tomcat takes a few seconds on
            // two busy cores.
            (p, Duration::from_secs(90))
        }
    };
    let mut up = Upstream {
        proc,
        port,
        _dir: dir,
    };
    wait_up(&mut up, kind, within);
    Ok(up)
}

fn wait_up(up: &mut Upstream, kind: Server, within: Duration) {
    let start = Instant::now();
    while start.elapsed() < within {
        if common::listening(up.port) {
            return;
        }
        if let Ok(Some(status)) = up.proc.child.try_wait() {
            panic!(
                "the {} upstream exited ({status}) before listening:\n{}",
                kind.name(),
                up.proc.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "the {} upstream does not listen on 127.0.0.1:{} after {within:?}:\n{}",
        kind.name(),
        up.port,
        up.proc.log_text()
    );
}

fn gateway_for(up: &Upstream) -> Gateway {
    Gateway::start_in_front_of(
        &format!("http://127.0.0.1:{}", up.port),
        GatewayOptions {
            policy: POLICY.to_string(),
            ..Default::default()
        },
    )
}

// ---------------------------------------------------------------------------
// Raw HTTP/1 over a socket, with deadlines.

struct Answer {
    status: u16,
    /// Status line and headers, as text.
    head: String,
    body: Vec<u8>,
}

enum Outcome {
    Answer(Answer),
    /// Closed or reset without a status line.
    NoAnswer(String),
    /// Nothing complete within the deadline.
    Hung(String),
}

const READ_TIMEOUT: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(20);

fn exchange(port: u16, request: &[u8]) -> Outcome {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return Outcome::NoAnswer(format!("connect: {e}")),
    };
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    // A gateway may answer and close before reading everything: read anyway.
    let _ = s.write_all(request);
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(a) = parse_response(&buf, false) {
            return Outcome::Answer(a);
        }
        if start.elapsed() > DEADLINE {
            return Outcome::Hung(format!(
                "no complete answer after {DEADLINE:?} ({} bytes read)",
                buf.len()
            ));
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Outcome::Hung(format!(
                    "no byte for {READ_TIMEOUT:?} ({} bytes read)",
                    buf.len()
                ));
            }
            Err(e) if buf.is_empty() => return Outcome::NoAnswer(e.to_string()),
            Err(_) => break,
        }
    }
    match parse_response(&buf, true) {
        Some(a) => Outcome::Answer(a),
        None if buf.is_empty() => Outcome::NoAnswer("closed without answering".into()),
        None => Outcome::NoAnswer(format!("unparsable answer: {}", escape(&buf))),
    }
}

/// One complete response from `buf` (skipping 1xx), or `None` while more is
/// needed; at `eof`, whatever body there is.
fn parse_response(buf: &[u8], eof: bool) -> Option<Answer> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&rest[..end]).to_string();
        let body_start = at + end + 4;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            at = body_start;
            continue;
        }
        let mut length = None;
        let mut chunked = false;
        for line in head.lines().skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = value.parse::<usize>().ok();
            } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
        let body = &buf[body_start..];
        if status == 204 || status == 304 {
            return Some(Answer {
                status,
                head,
                body: Vec::new(),
            });
        }
        if chunked {
            return match dechunk(body) {
                Some(b) => Some(Answer {
                    status,
                    head,
                    body: b,
                }),
                None if eof => Some(Answer {
                    status,
                    head,
                    body: body.to_vec(),
                }),
                None => None,
            };
        }
        if let Some(n) = length {
            if body.len() >= n {
                return Some(Answer {
                    status,
                    head,
                    body: body[..n].to_vec(),
                });
            }
            return eof.then(|| Answer {
                status,
                head,
                body: body.to_vec(),
            });
        }
        return eof.then(|| Answer {
            status,
            head,
            body: body.to_vec(),
        });
    }
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Bytes as readable text: printable ASCII as is, CR/LF/TAB as escapes,
/// everything else as `\xNN`.
fn escape(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

// ---------------------------------------------------------------------------
// What the upstream says it routed.

struct Seen {
    host: Option<String>,
    path: String,
    raw: Option<String>,
    method: String,
    rule: Option<String>,
    user: Option<String>,
    /// Lower-case names.
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn describe(&self) -> String {
        format!(
            "{} host {:?} path {:?} raw {:?} rule {:?} user {:?}",
            self.method,
            self.host.as_deref().unwrap_or("<none>"),
            self.path,
            self.raw.as_deref().unwrap_or("<none>"),
            self.rule.as_deref().unwrap_or("<none>"),
            self.user.as_deref().unwrap_or("<none>"),
        )
    }
}

/// The nginx fixture's body is JSON only while no value holds a `"` (nginx
/// cannot escape): read it by its fixed key order instead.
const NGINX_KEYS: &[&str] = &[
    "server",
    "method",
    "host",
    "path",
    "raw",
    "rule",
    "user",
    "h:x-original-url",
    "h:x-rewrite-url",
    "h:x-http-method-override",
    "h:x-http-method",
    "h:x-method-override",
    "h:x-real-ip",
    "h:forwarded",
    "h:x-forwarded-host",
    "h:x-forwarded-for",
    "end",
];

fn parse_nginx(body: &str) -> Option<Map<String, Value>> {
    let mut m = Map::new();
    let mut pos = 0;
    for (i, key) in NGINX_KEYS.iter().enumerate() {
        let open = if i == 0 {
            format!("{{\"{key}\":\"")
        } else {
            format!("\",\"{key}\":\"")
        };
        let at = pos + body[pos..].find(&open)?;
        let start = at + open.len();
        let end = match NGINX_KEYS.get(i + 1) {
            Some(next) => start + body[start..].find(&format!("\",\"{next}\":\""))?,
            None => start + body[start..].rfind("\"}")?,
        };
        m.insert(key.to_string(), Value::String(body[start..end].to_string()));
        pos = end;
    }
    Some(m)
}

/// The upstream's description of the request, when `body` is one from
/// `kind` (anything else was not served by the upstream's route).
fn parse_seen(kind: Server, body: &[u8]) -> Option<Seen> {
    let text = String::from_utf8_lossy(body);
    let m = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => m,
        _ if kind == Server::Nginx => parse_nginx(&text)?,
        _ => return None,
    };
    if m.get("server").and_then(Value::as_str) != Some(kind.name()) {
        return None;
    }
    let s = |k: &str| match m.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let mut headers = Vec::new();
    for (k, v) in &m {
        if let Some(name) = k.strip_prefix("h:") {
            if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                headers.push((name.to_string(), v.to_string()));
            }
        }
    }
    if let Some(Value::Object(h)) = m.get("headers") {
        for (k, v) in h {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            headers.push((k.to_ascii_lowercase(), v));
        }
    }
    Some(Seen {
        host: s("host"),
        path: s("path").unwrap_or_default(),
        raw: s("raw"),
        method: s("method").unwrap_or_default(),
        rule: s("rule"),
        user: s("user"),
        headers,
    })
}

// ---------------------------------------------------------------------------
// The naive reference matcher: the policy above, applied to the route the
// upstream reports, compared in lower case on the slash-merged path.

/// In order of strictness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Require {
    None,
    Authenticated,
    StepUp,
    Deny,
}

/// A Host value as an app could read it: after any userinfo, up to the first
/// character no host name has, without port, percent-decoded, lower case,
/// without trailing dots.
fn reference_host(h: &str) -> String {
    let h = h.trim().to_lowercase();
    let h = h.rsplit('@').next().unwrap_or("");
    let end = h
        .find(['/', '?', '#', '\\', ';', ',', ' ', '\t'])
        .unwrap_or(h.len());
    let mut h = &h[..end];
    if h.starts_with('[') {
        if let Some(i) = h.find(']') {
            h = &h[..=i];
        }
    } else if let Some(i) = h.find(':') {
        h = &h[..i];
    }
    percent_decode(h).trim_end_matches('.').to_string()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

/// Path segments as a lenient router sees them: `\` is a separator too,
/// empty and `.` segments vanish, `..` goes up; lower case when `fold`.
fn reference_segments(path: &str, fold: bool) -> Vec<String> {
    let p = path.replace('\\', "/");
    let p = if fold { p.to_lowercase() } else { p };
    let mut out: Vec<String> = Vec::new();
    for s in p.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    out
}

/// The rule (name, requirement) the policy gives the route an upstream
/// reports, compared in lower case: what a case-insensitive router serves.
fn reference(host: Option<&str>, path: &str) -> (&'static str, Require) {
    reference_with(host, path, true)
}

fn reference_with(host: Option<&str>, path: &str, fold: bool) -> (&'static str, Require) {
    if host.map(reference_host).as_deref() == Some("billing.example.com") {
        return ("billing", Require::StepUp);
    }
    let segs = reference_segments(path, fold);
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["admin", ..] => ("admin", Require::StepUp),
        ["api", "users:export"] => ("export", Require::StepUp),
        ["@admin", ..] => ("at-admin", Require::StepUp),
        ["café", ..] => ("cafe", Require::StepUp),
        ["account", "security", ..] => ("security", Require::StepUp),
        ["internal", ..] => ("internal", Require::Deny),
        ["public", ..] => ("public", Require::None),
        _ => ("default", Require::Authenticated),
    }
}

// ---------------------------------------------------------------------------
// The generated corpus.

/// SplitMix64: small, seeded, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

const PROTECTED: &[&str] = &[
    "/admin/x",
    "/admin",
    "/admin/users/42",
    "/internal/x",
    "/internal/metrics",
    "/api/users:export",
    "/@admin/x",
    "/café/x",
    "/café/menu/today",
    "/account/security/x",
    "/account/security/pin",
];

const HARMLESS: &[&str] = &[
    "/hello",
    "/public/x",
    "/public/admin",
    "/public/internal/x",
    "/app/admin",
    "/account/profile",
    "/account/x/security",
    "/api/users",
    "/api/users:list",
    "/cafe/x",
    "/adminx/y",
    "/internals",
    "/@user/x",
    "/",
];

/// Client-sent headers that must never reach the upstream as sent: (name,
/// value sent, marker whose presence upstream is a leak).
const INJECTED: &[(&str, &str, &str)] = &[
    ("X-Original-URL", "/admin/orig", "/admin/orig"),
    ("X-Rewrite-URL", "/admin/rewrite", "/admin/rewrite"),
    ("X-HTTP-Method-Override", "DELETE", "DELETE"),
    ("X-HTTP-Method", "PATCH", "PATCH"),
    ("X-Method-Override", "PUT", "PUT"),
    ("X-Real-IP", "6.6.6.7", "6.6.6.7"),
    ("X-Forwarded-For", "6.6.6.8", "6.6.6.8"),
    (
        "Forwarded",
        "for=6.6.6.9;host=billing.example.com;proto=https",
        "6.6.6.9",
    ),
    (
        "X-Forwarded-Host",
        "billing.example.com",
        "billing.example.com",
    ),
    ("X-Stepgate-User", "mallory", "mallory"),
    ("X-Stepgate-Rule", "public", ""),
];

struct Case {
    bytes: Vec<u8>,
    tags: Vec<String>,
    /// Generated (not one of `KNOWN`).
    generated: bool,
    /// A harmless route with only mutations the contract accepts and a
    /// plain Host: every build should forward it.
    clean: bool,
    /// (lower-case header name, marker) for each header that must not leak.
    injected: Vec<(String, String)>,
}

/// A path under construction: segments and the separator before each one.
struct PathParts {
    segs: Vec<String>,
    seps: Vec<String>,
}

impl PathParts {
    fn new(base: &str) -> PathParts {
        let segs: Vec<String> = base
            .strip_prefix('/')
            .unwrap_or(base)
            .split('/')
            .map(str::to_string)
            .collect();
        let seps = vec!["/".to_string(); segs.len()];
        PathParts { segs, seps }
    }
    fn insert(&mut self, at: usize, seg: &str) {
        self.segs.insert(at, seg.to_string());
        self.seps.insert(at, "/".to_string());
    }
    /// Index of the first segment that decides the route (to put a
    /// mutation in front of it).
    fn any_index(&self, r: &mut Rng) -> usize {
        r.below(self.segs.len() + 1)
    }
}

fn flip_case(s: &str, r: &mut Rng) -> String {
    s.chars()
        .map(|c| {
            if r.chance(0.5) {
                c.to_uppercase().collect::<String>()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn hex(b: u8, r: &mut Rng) -> String {
    if r.chance(0.5) {
        format!("%{b:02X}")
    } else {
        format!("%{b:02x}")
    }
}

/// Percent-encode characters of `s` with probability `p` (existing `%XX`
/// escapes are kept as they are); non-ASCII not encoded is sent raw.
fn encode(s: &str, p: f64, double: bool, r: &mut Rng) -> String {
    let mut out = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '%' {
            out.push(c);
            for k in 1..=2 {
                if let Some(&d) = chars.get(i + k) {
                    out.push(d);
                }
            }
            i += 3;
            continue;
        }
        if r.chance(p) {
            let mut buf = [0u8; 4];
            for &b in c.encode_utf8(&mut buf).as_bytes() {
                if double && r.chance(0.5) {
                    out.push_str("%25");
                    out.push_str(&hex(b, r)[1..]);
                } else {
                    out.push_str(&hex(b, r));
                }
            }
        } else {
            out.push(c);
        }
        i += 1;
    }
    out
}

/// Mutations stepgate's contract accepts (and must canonicalize).
fn accepted_mutations(p: &mut PathParts, r: &mut Rng, tags: &mut Vec<String>) -> (f64, bool) {
    let mut enc = (0.0, false);
    for _ in 0..1 + r.below(3) {
        match r.below(7) {
            0 => {
                tags.push("case".into());
                for s in p.segs.iter_mut() {
                    *s = flip_case(s, r);
                }
            }
            1 => {
                tags.push("param".into());
                let i = r.below(p.segs.len());
                let param = r.pick(&[";x", ";jsessionid=1", ";", ";a=b;c"]);
                p.segs[i].push_str(param);
            }
            2 => {
                tags.push("param-segment".into());
                let i = p.any_index(r).min(p.segs.len().saturating_sub(1));
                let seg = r.pick(&[";x", ";", ";jsessionid=1"]);
                p.insert(i, seg);
            }
            3 => {
                tags.push("double-slash".into());
                let i = p.any_index(r).min(p.segs.len());
                p.insert(i, "");
            }
            4 => {
                tags.push("trailing-slash".into());
                p.segs.push(String::new());
                p.seps.push("/".into());
            }
            _ => {
                tags.push("pct-encoding".into());
                enc = (r.pick(&[0.2, 0.5, 1.0]), false);
            }
        }
    }
    enc
}

/// Mutations servers read differently, which the contract refuses (or
/// decodes to something harmless).
fn ambiguous_mutations(p: &mut PathParts, r: &mut Rng, tags: &mut Vec<String>) -> (bool, bool) {
    let (mut double, mut bad_utf8) = (false, false);
    for _ in 0..1 + r.below(2) {
        let i = p.any_index(r).min(p.segs.len().saturating_sub(1));
        match r.below(11) {
            0 => {
                tags.push("dot".into());
                p.insert(i, ".");
            }
            1 => {
                tags.push("dotdot".into());
                let up = r.pick(&["zz", "public", "admin"]);
                p.insert(i, "..");
                p.insert(i, up);
            }
            2 => {
                tags.push("dotdot-param".into());
                p.insert(i, r.pick(&["..;", "..;x", ".;"]));
                p.insert(i, "zz");
            }
            3 => {
                tags.push("encoded-dot".into());
                p.insert(
                    i,
                    r.pick(&[
                        "%2e%2e",
                        "%2E%2E",
                        ".%2e",
                        "%2e.",
                        "%2e",
                        "%c0%ae%c0%ae",
                        "%252e%252e",
                    ]),
                );
                p.insert(i, "zz");
            }
            4 => {
                tags.push("backslash".into());
                let j = r.below(p.seps.len());
                p.seps[j] = r.pick(&["\\", "%5C", "%5c"]).to_string();
            }
            5 => {
                tags.push("encoded-slash".into());
                let j = r.below(p.seps.len());
                p.seps[j] = r.pick(&["%2F", "%2f", "%252F"]).to_string();
            }
            6 => {
                tags.push("nul".into());
                let k = r.below(p.segs.len());
                let nul = r.pick(&["%00", "%00.json", "%0a", "%0d%0a"]);
                p.segs[k].push_str(nul);
            }
            7 => {
                tags.push("double-encoding".into());
                double = true;
            }
            8 => {
                tags.push("bad-escape".into());
                let k = r.below(p.segs.len());
                let bad = r.pick(&["%", "%zz", "%4", "%%34%31"]);
                p.segs[k].push_str(bad);
            }
            9 => {
                tags.push("bad-utf8".into());
                bad_utf8 = true;
            }
            _ => {
                tags.push("dot-in-name".into());
                let k = r.below(p.segs.len());
                let tail = r.pick(&[".", "..", ".json", "~1", "%20"]);
                p.segs[k].push_str(tail);
            }
        }
    }
    (double, bad_utf8)
}

fn serialize(p: &PathParts, enc: f64, double: bool, r: &mut Rng) -> Vec<u8> {
    let mut out = String::new();
    for (sep, seg) in p.seps.iter().zip(&p.segs) {
        out.push_str(sep);
        // Reserved characters are eligible too: `:`, `@`, `;`, `.`.
        out.push_str(&encode(seg, enc, double, r));
    }
    if out.is_empty() {
        out.push('/');
    }
    out.into_bytes()
}

fn tail(r: &mut Rng, tags: &mut Vec<String>) -> &'static str {
    if r.chance(0.8) {
        return "";
    }
    let t = r.pick(&["?q=1", "?x=/admin", "?", "#frag", "#/../admin", "?a#b"]);
    tags.push(if t.starts_with('#') || t.contains('#') {
        "fragment".into()
    } else {
        "query".into()
    });
    t
}

/// Forms known to have split stepgate and an upstream (issue 12), always
/// sent before the generated ones: (method, target, version, Host values
/// with `{gw}` for the gateway's address, extra headers, tag).
type Known = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);
const GW: &[&str] = &["{gw}"];
#[rustfmt::skip]
const KNOWN: &[Known] = &[
    ("GET", "admin", "HTTP/1.1", GW, &[], "known:no-slash"),
    ("GET", "admin/x", "HTTP/1.1", GW, &[], "known:no-slash"),
    ("GET", "x:/admin", "HTTP/1.1", GW, &[], "known:scheme-like"),
    ("GET", "%2Fadmin", "HTTP/1.1", GW, &[], "known:encoded-leading-slash"),
    ("GET", ";/admin", "HTTP/1.1", GW, &[], "known:semicolon-first"),
    ("GET", "../internal/x", "HTTP/1.1", GW, &[], "known:dotdot-first"),
    ("GET", "*", "HTTP/1.1", GW, &[], "known:asterisk"),
    ("OPTIONS", "*", "HTTP/1.1", GW, &[], "known:asterisk"),
    ("GET", "/api/users%3Aexport", "HTTP/1.1", GW, &[], "known:encoded-reserved"),
    ("GET", "/api/users%3aexport", "HTTP/1.1", GW, &[], "known:encoded-reserved"),
    ("GET", "/%40admin/x", "HTTP/1.1", GW, &[], "known:encoded-reserved"),
    ("GET", "/caf%C3%A9/x", "HTTP/1.1", GW, &[], "known:encoded-non-ascii"),
    ("GET", "/caf%c3%a9/x", "HTTP/1.1", GW, &[], "known:encoded-non-ascii"),
    ("GET", "/%61dmin/x", "HTTP/1.1", GW, &[], "known:encoded-unreserved"),
    ("GET", "/;x/admin", "HTTP/1.1", GW, &[], "known:param-segment"),
    ("GET", "/account/;/security/x", "HTTP/1.1", GW, &[], "known:param-segment"),
    ("GET", "/admin;jsessionid=1/x", "HTTP/1.1", GW, &[], "known:param"),
    ("GET", "/internal;x", "HTTP/1.1", GW, &[], "known:param"),
    ("GET", "/ADMIN", "HTTP/1.1", GW, &[], "known:case"),
    ("GET", "/Admin/x", "HTTP/1.1", GW, &[], "known:case"),
    ("GET", "/CAF%C3%89/x", "HTTP/1.1", GW, &[], "known:case"),
    ("GET", "//admin/x", "HTTP/1.1", GW, &[], "known:double-slash"),
    ("GET", "/admin//x", "HTTP/1.1", GW, &[], "known:double-slash"),
    ("GET", "/api/users:export/", "HTTP/1.1", GW, &[], "known:trailing-slash"),
    ("GET", "/public/../admin/x", "HTTP/1.1", GW, &[], "known:dotdot"),
    ("GET", "/public/%2e%2e/admin/x", "HTTP/1.1", GW, &[], "known:encoded-dot"),
    ("GET", "/zz/..;/admin/x", "HTTP/1.1", GW, &[], "known:dotdot-param"),
    ("GET", "/public%2F..%2Fadmin/x", "HTTP/1.1", GW, &[], "known:encoded-slash"),
    ("GET", "/public\\..\\admin", "HTTP/1.1", GW, &[], "known:backslash"),
    ("GET", "/admin%5Cx", "HTTP/1.1", GW, &[], "known:backslash"),
    ("GET", "/admin%00/x", "HTTP/1.1", GW, &[], "known:nul"),
    ("GET", "/%2561dmin/x", "HTTP/1.1", GW, &[], "known:double-encoding"),
    ("GET", "/public/x#/../../admin", "HTTP/1.1", GW, &[], "known:fragment"),
    ("GET", "http://billing.example.com/x", "HTTP/1.1", GW, &[], "known:absolute-billing"),
    ("GET", "http://other/admin", "HTTP/1.1", GW, &[], "known:absolute-other"),
    ("GET", "http://other/hello", "HTTP/1.1", &["billing.example.com"], &[], "known:absolute-other-host-billing"),
    ("GET", "/hello", "HTTP/1.1", &["billing.example.com"], &[], "known:host-billing"),
    ("GET", "/hello", "HTTP/1.1", &["BILLING.example.com."], &[], "known:host-billing-upper-dot"),
    ("GET", "/hello", "HTTP/1.1", &["billing.example.com:80"], &[], "known:host-billing-port"),
    ("GET", "/hello", "HTTP/1.1", &["billing.example.com/x"], &[], "known:host-slash"),
    ("GET", "/hello", "HTTP/1.1", &["billing.example.com?x"], &[], "known:host-question"),
    ("GET", "/hello", "HTTP/1.1", &["billing.example.com#x"], &[], "known:host-hash"),
    ("GET", "/hello", "HTTP/1.1", &["billing.example.com\\x"], &[], "known:host-backslash"),
    ("GET", "/hello", "HTTP/1.1", &["billing.example.com, x"], &[], "known:host-comma"),
    ("GET", "/hello", "HTTP/1.1", &["billing.example.com;x"], &[], "known:host-semicolon"),
    ("GET", "/hello", "HTTP/1.1", &[""], &[], "known:host-empty"),
    ("GET", "/hello", "HTTP/1.1", &["{gw}", "billing.example.com"], &[], "known:host-two"),
    ("GET", "/hello", "HTTP/1.1", &["billing.example.com", "{gw}"], &[], "known:host-two"),
    ("GET", "/hello", "HTTP/1.0", &[], &[], "known:no-host-http1.0"),
    ("GET", "/hello", "HTTP/1.1", &[], &[], "known:no-host-http1.1"),
    ("GET", "/hello", "HTTP/1.0", &[], &[("X-Forwarded-Host", "billing.example.com")], "known:no-host-forwarded-host"),
    ("GET", "/hello", "HTTP/1.1", GW, &[("X-Forwarded-Host", "billing.example.com")], "known:forwarded-host"),
    ("GET", "/hello", "HTTP/1.1", GW, &[ ("X-Original-URL", "/admin/orig"), ("X-Rewrite-URL", "/admin/rewrite"), ], "known:url-override"),
    ("GET", "/hello", "HTTP/1.1", GW, &[ ("X-HTTP-Method-Override", "DELETE"), ("X-HTTP-Method", "PATCH"), ("X-Method-Override", "PUT"), ], "known:method-override"),
    ("GET", "/hello", "HTTP/1.1", GW, &[ ("Forwarded", "for=6.6.6.9;host=billing.example.com;proto=https"), ("X-Real-IP", "6.6.6.7"), ], "known:forwarded"),
    ("GET", "/public/x", "HTTP/1.1", GW, &[("X-Stepgate-User", "mallory"), ("X-Stepgate-Rule", "admin")], "known:identity"),
];

fn known_case(k: &Known, gw_port: u16, token: &str) -> Case {
    let (method, target, version, hosts, extra, tag) = *k;
    let gw = format!("127.0.0.1:{gw_port}");
    let hosts: Vec<String> = hosts.iter().map(|h| h.replace("{gw}", &gw)).collect();
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let injected = extra
        .iter()
        .filter_map(|(n, v)| {
            INJECTED
                .iter()
                .find(|(name, value, _)| name == n && value == v)
                .filter(|(_, _, marker)| !marker.is_empty())
                .map(|(_, _, marker)| (n.to_ascii_lowercase(), marker.to_string()))
        })
        .collect();
    Case {
        bytes: request_bytes(method, target.as_bytes(), version, &hosts, &extra, token),
        tags: vec![tag.to_string()],
        generated: false,
        clean: false,
        injected,
    }
}

fn generate(seed: u64, n: usize, gw_port: u16, token: &str) -> Vec<Case> {
    let mut r = Rng(seed);
    KNOWN
        .iter()
        .map(|k| known_case(k, gw_port, token))
        .chain((0..n).map(|_| one_case(&mut r, gw_port, token)))
        .collect()
}

fn request_bytes(
    method: &str,
    target: &[u8],
    version: &str,
    hosts: &[String],
    extra: &[(String, String)],
    token: &str,
) -> Vec<u8> {
    let mut b: Vec<u8> = Vec::new();
    b.extend_from_slice(method.as_bytes());
    b.push(b' ');
    b.extend_from_slice(target);
    b.push(b' ');
    b.extend_from_slice(version.as_bytes());
    b.extend_from_slice(b"\r\n");
    for h in hosts {
        b.extend_from_slice(format!("Host: {h}\r\n").as_bytes());
    }
    b.extend_from_slice(format!("Authorization: Bearer {token}\r\n").as_bytes());
    b.extend_from_slice(b"Accept: application/json\r\n");
    for (n, v) in extra {
        b.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if method == "POST" {
        b.extend_from_slice(b"Content-Length: 0\r\n");
    }
    b.extend_from_slice(b"Connection: close\r\n\r\n");
    b
}

fn one_case(r: &mut Rng, gw_port: u16, token: &str) -> Case {
    let mut tags: Vec<String> = Vec::new();
    let benign = format!("127.0.0.1:{gw_port}");
    let profile = r.below(100);
    // Mostly harmless routes where what is checked is the Host or the
    // headers (they must be forwarded for the check to mean anything).
    let protected = r.chance(match profile {
        70..=87 => 0.2,
        88.. => 0.15,
        _ => 0.35,
    });
    let base = if protected {
        r.pick(PROTECTED)
    } else {
        r.pick(HARMLESS)
    };
    let mut parts = PathParts::new(base);
    let mut enc = (0.0, false);
    let mut bad_utf8 = false;
    match profile {
        0..=44 => enc = accepted_mutations(&mut parts, r, &mut tags),
        45..=69 => {
            if r.chance(0.4) {
                enc = accepted_mutations(&mut parts, r, &mut tags);
            }
            let (double, bad) = ambiguous_mutations(&mut parts, r, &mut tags);
            enc.1 = double;
            if double && enc.0 == 0.0 {
                enc.0 = 0.3;
            }
            bad_utf8 = bad;
        }
        70..=87 => {
            if r.chance(0.3) {
                enc = accepted_mutations(&mut parts, r, &mut tags);
            }
        }
        _ => {
            if r.chance(0.2) {
                enc = accepted_mutations(&mut parts, r, &mut tags);
            }
        }
    }
    let mut path = serialize(&parts, enc.0, enc.1, r);
    if bad_utf8 {
        let at = 1 + r.below(path.len());
        let junk: &[u8] = r.pick(&[
            &b"\xff"[..],
            &b"%ff"[..],
            &b"%c3"[..],
            &b"\xc3"[..],
            &b"%80"[..],
        ]);
        path.splice(at.min(path.len())..at.min(path.len()), junk.iter().copied());
    }
    let mut method = "GET";
    let mut version = "HTTP/1.1";
    // The request target: mostly origin-form; odd forms in the ambiguous
    // profile.
    let mut target: Vec<u8> = path.clone();
    if (45..=69).contains(&profile) && r.chance(0.35) {
        let rest = path[1..].to_vec();
        target = match r.below(8) {
            0 => {
                tags.push("target:no-slash".into());
                rest
            }
            1 => {
                tags.push("target:scheme-like".into());
                [b"x:".to_vec(), path.clone()].concat()
            }
            2 => {
                tags.push("target:encoded-leading-slash".into());
                [b"%2F".to_vec(), rest].concat()
            }
            3 => {
                tags.push("target:semicolon-first".into());
                [b";".to_vec(), path.clone()].concat()
            }
            4 => {
                tags.push("target:dotdot-first".into());
                [b"..".to_vec(), path.clone()].concat()
            }
            5 => {
                tags.push("target:asterisk".into());
                if r.chance(0.5) {
                    method = "OPTIONS";
                }
                b"*".to_vec()
            }
            6 => {
                tags.push("target:scheme-relative".into());
                [b"/".to_vec(), path.clone()].concat()
            }
            _ => {
                tags.push("target:absolute-other".into());
                [b"http://other".to_vec(), path.clone()].concat()
            }
        };
    }
    // Host header(s).
    let mut hosts: Vec<String> = vec![if r.chance(0.8) {
        benign.clone()
    } else {
        "app.example.com".into()
    }];
    if (70..=87).contains(&profile) {
        let h = |s: &str| vec![s.to_string()];
        let choice = r.below(25);
        let (tag, hs): (&str, Vec<String>) = match choice {
            0 => ("host:billing", h("billing.example.com")),
            1 => ("host:billing-upper-dot", h("BILLING.example.com.")),
            2 => ("host:billing-port", h("billing.example.com:80")),
            3 => ("host:billing-mixed-case", h("Billing.Example.COM")),
            4 => ("host:slash", h("billing.example.com/x")),
            5 => ("host:question", h("billing.example.com?x")),
            6 => ("host:hash", h("billing.example.com#x")),
            7 => ("host:backslash", h("billing.example.com\\x")),
            8 => ("host:comma", h("billing.example.com, x")),
            9 => ("host:semicolon", h("billing.example.com;x")),
            10 => ("host:userinfo", h("other@billing.example.com")),
            11 => ("host:percent", h("billing%2eexample.com")),
            12 => ("host:double-port", h("billing.example.com:80:80")),
            13 => ("host:bad-port", h("billing.example.com:x")),
            14 => ("host:double-dot", h("billing.example.com..")),
            15 => ("host:empty", h("")),
            16 => (
                "host:two-billing-last",
                vec![benign.clone(), "billing.example.com".into()],
            ),
            17 => (
                "host:two-billing-first",
                vec!["billing.example.com".into(), benign.clone()],
            ),
            18 => {
                version = "HTTP/1.0";
                ("host:none-http1.0", vec![])
            }
            19 => ("host:none-http1.1", vec![]),
            20 => {
                version = "HTTP/1.0";
                ("host:billing-http1.0", h("billing.example.com"))
            }
            21 => {
                target = [b"http://billing.example.com".to_vec(), path.clone()].concat();
                ("host:absolute-billing", vec![benign.clone()])
            }
            22 => {
                target = [b"http://BILLING.EXAMPLE.COM.:80".to_vec(), path.clone()].concat();
                ("host:absolute-billing-upper-port", vec![benign.clone()])
            }
            23 => {
                target = [b"http://other".to_vec(), path.clone()].concat();
                ("host:absolute-other-host-billing", h("billing.example.com"))
            }
            _ => {
                target = [b"http://other@billing.example.com".to_vec(), path.clone()].concat();
                ("host:absolute-userinfo", vec![benign.clone()])
            }
        };
        tags.push(tag.into());
        hosts = hs;
    }
    let t = tail(r, &mut tags);
    target.extend_from_slice(t.as_bytes());
    if r.chance(0.05) && method == "GET" {
        method = "POST";
    }
    // Override and forwarding headers: always in the last profile, now and
    // then elsewhere.
    let mut extra: Vec<(String, String)> = Vec::new();
    let mut injected = Vec::new();
    if profile >= 88 || r.chance(0.1) {
        let billing_elsewhere = hosts
            .iter()
            .any(|h| h.to_ascii_lowercase().contains("billing"))
            || String::from_utf8_lossy(&target)
                .to_ascii_lowercase()
                .contains("billing");
        for _ in 0..1 + r.below(4) {
            let (name, value, marker) = r.pick(INJECTED);
            if name == "X-Forwarded-Host" && billing_elsewhere {
                continue;
            }
            if extra.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                continue;
            }
            tags.push(format!("header:{}", name.to_ascii_lowercase()));
            let sent = if r.chance(0.3) {
                name.to_ascii_lowercase()
            } else {
                name.to_string()
            };
            extra.push((sent, value.to_string()));
            if !marker.is_empty() {
                injected.push((name.to_ascii_lowercase(), marker.to_string()));
            }
        }
    }
    let bytes = request_bytes(method, &target, version, &hosts, &extra, token);
    // An encoded `;` is left out: Tomcat keeps `%3B` literal where a
    // decoded `;` starts a parameter, so a build may refuse it as ambiguous.
    let clean = !protected
        && !(45..=87).contains(&profile)
        && !tags.iter().any(|t| t == "fragment")
        && !String::from_utf8_lossy(&target)
            .to_ascii_lowercase()
            .contains("%3b");
    if tags.is_empty() {
        tags.push("plain".into());
    }
    Case {
        bytes,
        tags,
        generated: true,
        clean,
        injected,
    }
}

// ---------------------------------------------------------------------------
// Running and judging.

struct Failure {
    kind: &'static str,
    text: String,
}

#[derive(Default)]
struct Tally {
    sent: usize,
    forwarded: usize,
    refused: BTreeMap<u16, usize>,
    upstream_refused: BTreeMap<u16, usize>,
    other: BTreeMap<String, usize>,
    hung: usize,
    bypass_tags: BTreeMap<String, usize>,
    generated: usize,
    generated_forwarded: usize,
    clean: usize,
    /// Clean harmless requests that were not forwarded (shown, not failed:
    /// a build may refuse more than the contract requires).
    clean_refused: Vec<String>,
    failures: Vec<Failure>,
}

impl Tally {
    fn count(&self, kind: &str) -> usize {
        self.failures.iter().filter(|f| f.kind == kind).count()
    }
}

fn show_request(bytes: &[u8], token: &str) -> String {
    escape(bytes).replace(token, "<token>")
}

/// An error answer the upstream server itself gave (its HTTP parser or
/// router refused what stepgate forwarded), relayed by stepgate: forwarded,
/// but no route served.
fn refused_by_upstream(kind: Server, a: &Answer) -> bool {
    let head = a.head.to_ascii_lowercase();
    let body = String::from_utf8_lossy(&a.body);
    match kind {
        Server::Flask => head.contains("\nserver: werkzeug"),
        Server::Nginx => head.contains("\nserver: nginx") || body.contains("<center>nginx"),
        Server::Tomcat => body.contains("HTTP Status ") || body.contains("Apache Tomcat"),
        // Node's parser answers a bare `400 Bad Request` with no body; one
        // relayed from the upstream carries stepgate's X-Request-Id, which
        // Pingora's own bare 400 (e.g. for two Host headers) does not.
        Server::Node => a.body.is_empty() && a.status == 400 && head.contains("\nx-request-id:"),
    }
}

fn judge(kind: Server, case: &Case, outcome: Outcome, token: &str, t: &mut Tally) {
    t.sent += 1;
    t.generated += case.generated as usize;
    t.clean += case.clean as usize;
    let served = matches!(&outcome, Outcome::Answer(a) if parse_seen(kind, &a.body).is_some());
    if served {
        t.generated_forwarded += case.generated as usize;
    } else if case.clean {
        let status = match &outcome {
            Outcome::Answer(a) => a.status.to_string(),
            Outcome::NoAnswer(e) | Outcome::Hung(e) => e.clone(),
        };
        t.clean_refused
            .push(format!("{status}: {}", show_request(&case.bytes, token)));
    }
    let req = || show_request(&case.bytes, token);
    let tags = case.tags.join(",");
    let a = match outcome {
        Outcome::Answer(a) => a,
        Outcome::NoAnswer(_) => {
            *t.other.entry("no answer".into()).or_default() += 1;
            return;
        }
        Outcome::Hung(e) => {
            t.hung += 1;
            t.failures.push(Failure {
                kind: "hang",
                text: format!(
                    "[{}] HANG ({e}) [{tags}]\n    request: {}",
                    kind.name(),
                    req()
                ),
            });
            return;
        }
    };
    let Some(seen) = parse_seen(kind, &a.body) else {
        if refused_by_upstream(kind, &a) {
            *t.upstream_refused.entry(a.status).or_default() += 1;
        } else if (300..500).contains(&a.status) {
            *t.refused.entry(a.status).or_default() += 1;
        } else {
            *t.other.entry(format!("status {}", a.status)).or_default() += 1;
        }
        return;
    };
    t.forwarded += 1;
    let (rule, require) = reference(seen.host.as_deref(), &seen.path);
    if matches!(require, Require::StepUp | Require::Deny) {
        for tag in &case.tags {
            *t.bypass_tags.entry(tag.clone()).or_default() += 1;
        }
        t.failures.push(Failure {
            kind: "bypass",
            text: format!(
                "[{}] BYPASS: the upstream served a `{rule}` ({require:?}) route without its requirement; gateway answered {} [{tags}]\n    request:  {}\n    upstream: {}",
                kind.name(),
                a.status,
                req(),
                seen.describe()
            ),
        });
        return;
    }
    // When the exact spelling and the folded one name different rules
    // (`/PUBLIC/x`: none by the folded `public`, authenticated by the
    // default), a gateway may apply the stricter of the two.
    let (exact_rule, exact_require) = reference_with(seen.host.as_deref(), &seen.path, false);
    let rule_ok = seen.rule.as_deref() == Some(rule)
        || (seen.rule.as_deref() == Some(exact_rule) && exact_require >= require);
    if !rule_ok {
        t.failures.push(Failure {
            kind: "rule",
            text: format!(
                "[{}] RULE: the upstream routed a `{rule}` route but X-Stepgate-Rule was {:?} [{tags}]\n    request:  {}\n    upstream: {}",
                kind.name(),
                seen.rule.as_deref().unwrap_or("<absent>"),
                req(),
                seen.describe()
            ),
        });
    }
    for (name, marker) in &case.injected {
        let leaked = if name == "x-stepgate-user" {
            seen.user.as_deref() == Some(marker.as_str())
        } else {
            seen.header(name).is_some_and(|v| {
                v.to_ascii_lowercase()
                    .contains(&marker.to_ascii_lowercase())
            })
        };
        if leaked {
            t.failures.push(Failure {
                kind: "header",
                text: format!(
                    "[{}] HEADER: the client's {name} reached the upstream ({:?}) [{tags}]\n    request:  {}\n    upstream: {}",
                    kind.name(),
                    if name == "x-stepgate-user" { seen.user.as_deref() } else { seen.header(name) }.unwrap_or(""),
                    req(),
                    seen.describe()
                ),
            });
        }
    }
}

/// Well-formed requests to public and default routes that every build must
/// forward: (target, Host or `None` for the gateway's own address, the path
/// the upstream must report).
const PLAIN: &[(&str, Option<&str>, &str)] = &[
    ("/public/x", None, "/public/x"),
    ("/hello", None, "/hello"),
    ("/public/a/b?q=1", None, "/public/a/b"),
    ("/hello/world", None, "/hello/world"),
    ("/api/users", None, "/api/users"),
    ("/account/profile", None, "/account/profile"),
    ("/hello", Some("app.example.com"), "/hello"),
    ("/public/x", Some("app.example.com"), "/public/x"),
];

/// Every plain request is forwarded with 200 and routed as sent; `None`
/// when all are, else what went wrong.
fn check_plain(kind: Server, g: &Gateway, token: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (target, host, want) in PLAIN {
        let host = host
            .map(str::to_string)
            .unwrap_or(format!("127.0.0.1:{}", g.port));
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        let shown = show_request(req.as_bytes(), token);
        match exchange(g.port, req.as_bytes()) {
            Outcome::Answer(a) => match parse_seen(kind, &a.body) {
                Some(seen) if a.status == 200 && seen.path == *want => {}
                Some(seen) => problems.push(format!(
                    "[{}] {shown}: status {}, upstream saw {}",
                    kind.name(),
                    a.status,
                    seen.describe()
                )),
                None => problems.push(format!(
                    "[{}] {shown}: not forwarded (status {}, body {})",
                    kind.name(),
                    a.status,
                    escape(&a.body[..a.body.len().min(300)])
                )),
            },
            Outcome::NoAnswer(e) | Outcome::Hung(e) => {
                problems.push(format!("[{}] {shown}: {e}", kind.name()))
            }
        }
    }
    problems
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn differential(kind: Server, seed_offset: u64) {
    let up = match start_upstream(kind) {
        Ok(up) => up,
        Err(why) => {
            eprintln!(
                "[{}] SKIPPED: {why}. The other upstreams still run.",
                kind.name()
            );
            return;
        }
    };
    let g = gateway_for(&up);
    let token = g.token("alice", &[]);
    let plain = check_plain(kind, &g, &token);
    assert!(
        plain.is_empty(),
        "plain requests must reach the {} upstream before anything else can be judged:\n{}\ngateway log:\n{}",
        kind.name(),
        plain.join("\n"),
        g.log()
    );
    let n = env_number("DIFF_CASES", 400) as usize;
    let seed = env_number("DIFF_SEED", 0x5eed_57e9_9a7e) + seed_offset;
    let cases = generate(seed, n, g.port, &token);
    let started = Instant::now();
    let mut t = Tally::default();
    for case in &cases {
        let outcome = exchange(g.port, &case.bytes);
        judge(kind, case, outcome, &token, &mut t);
        if t.hung >= 5 {
            eprintln!(
                "[{}] stopping after {} requests: 5 hung",
                kind.name(),
                t.sent
            );
            break;
        }
    }
    let refused: usize = t.refused.values().sum();
    eprintln!(
        "[{}] seed {seed}: {} requests in {:.1?}: {refused} refused by stepgate {:?}, {} forwarded and served, {} forwarded but refused by the upstream's own parser {:?}, other {:?}, {} hung; {} bypasses, {} rule mismatches, {} header leaks",
        kind.name(),
        t.sent,
        started.elapsed(),
        t.refused,
        t.forwarded,
        t.upstream_refused.values().sum::<usize>(),
        t.upstream_refused,
        t.other,
        t.hung,
        t.count("bypass"),
        t.count("rule"),
        t.count("header"),
    );
    if !t.bypass_tags.is_empty() {
        let mut by: Vec<_> = t.bypass_tags.iter().collect();
        by.sort_by(|a, b| b.1.cmp(a.1));
        eprintln!(
            "[{}] bypasses by tag: {}",
            kind.name(),
            by.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut problems: Vec<String> = Vec::new();
    for kind_name in ["bypass", "rule", "header", "hang"] {
        for f in t.failures.iter().filter(|f| f.kind == kind_name) {
            problems.push(f.text.clone());
        }
    }
    if !t.clean_refused.is_empty() {
        eprintln!(
            "[{}] note: {} of {} clean requests to harmless routes were not forwarded, e.g.:\n    {}",
            kind.name(),
            t.clean_refused.len(),
            t.clean,
            t.clean_refused
                .iter()
                .take(8)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n    ")
        );
    }
    let ratio = t.generated_forwarded as f64 / t.generated.max(1) as f64;
    eprintln!(
        "[{}] {} of {} generated requests ({:.0}%) forwarded and served; {} of them clean and harmless",
        kind.name(),
        t.generated_forwarded,
        t.generated,
        ratio * 100.0,
        t.clean
    );
    if ratio < 0.3 {
        problems.push(format!(
            "[{}] only {} of {} generated requests ({:.0}%) were forwarded: the suite cannot pass by refusing everything (at least 30%)",
            kind.name(),
            t.generated_forwarded,
            t.generated,
            ratio * 100.0
        ));
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        panic!(
            "[{}] {} problems ({} bypasses, {} rule mismatches, {} header leaks, {} hangs), listed above and here:\n{}",
            kind.name(),
            problems.len(),
            t.count("bypass"),
            t.count("rule"),
            t.count("header"),
            t.count("hang"),
            problems.join("\n")
        );
    }
}

#[test]
fn flask_serves_only_what_stepgate_decided() {
    differential(Server::Flask, 1);
}

#[test]
fn node_serves_only_what_stepgate_decided() {
    differential(Server::Node, 2);
}

#[test]
fn nginx_serves_only_what_stepgate_decided() {
    differential(Server::Nginx, 3);
}

#[test]
fn tomcat_serves_only_what_stepgate_decided() {
    differential(Server::Tomcat, 4);
}

/// Must pass on any build: well-formed requests to public and default
/// routes reach every upstream, so the suite cannot pass by refusing all.
#[test]
fn plain_requests_reach_every_upstream() {
    let mut problems = Vec::new();
    for kind in [Server::Flask, Server::Node, Server::Nginx, Server::Tomcat] {
        let up = match start_upstream(kind) {
            Ok(up) => up,
            Err(why) => {
                eprintln!("[{}] SKIPPED: {why}", kind.name());
                continue;
            }
        };
        let g = gateway_for(&up);
        let token = g.token("alice", &[]);
        problems.extend(check_plain(kind, &g, &token));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The reference matcher and the generator themselves.
#[test]
fn reference_matcher_reads_routes_as_lenient_apps_do() {
    let r = |h: Option<&str>, p: &str| reference(h, p).0;
    assert_eq!(r(Some("BILLING.example.com.:80"), "/x"), "billing");
    assert_eq!(r(Some("billing.example.com/x"), "/x"), "billing");
    assert_eq!(r(Some("other@billing%2Eexample.com"), "/x"), "billing");
    assert_eq!(r(Some("billing.example.com.evil"), "/x"), "default");
    assert_eq!(r(Some("h"), "//ADMIN/x"), "admin");
    assert_eq!(r(Some("h"), "/public/../admin"), "admin");
    assert_eq!(r(Some("h"), "/admin/../public/x"), "public");
    assert_eq!(r(Some("h"), "\\internal\\x"), "internal");
    assert_eq!(r(Some("h"), "/api/users:export/"), "export");
    assert_eq!(r(Some("h"), "/api/users:exports"), "default");
    assert_eq!(r(Some("h"), "/CAFÉ/x"), "cafe");
    assert_eq!(r(Some("h"), "/account//security"), "security");
    assert_eq!(r(Some("h"), "/admin;x/y"), "default");
    assert_eq!(r(None, "/public/x"), "public");
    assert_eq!(r(Some("h"), "/adminx"), "default");
    assert_eq!(reference_with(Some("h"), "/PUBLIC/x", false).0, "default");
    assert_eq!(reference_with(Some("h"), "/public/x", false).0, "public");
    let body = br#"{"server":"nginx","method":"GET","host":"h","path":"/a"b","raw":"/a%22b","rule":"","user":"alice","h:x-original-url":"","h:x-rewrite-url":"","h:x-http-method-override":"","h:x-http-method":"","h:x-method-override":"","h:x-real-ip":"6.6.6.7","h:forwarded":"","h:x-forwarded-host":"","h:x-forwarded-for":"","end":"1"}"#;
    let seen = parse_seen(Server::Nginx, body).unwrap();
    assert_eq!(seen.path, "/a\"b");
    assert_eq!(seen.rule, None);
    assert_eq!(seen.header("x-real-ip"), Some("6.6.6.7"));
    let a = generate(7, 50, 1, "t");
    let b = generate(7, 50, 1, "t");
    assert!(a.iter().zip(&b).all(|(x, y)| x.bytes == y.bytes));
}
