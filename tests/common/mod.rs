//! Test harness: real processes on free loopback ports, stopped on drop.
//! `Gateway` runs the real `stepgate serve` binary in front of the real demo
//! upstream (`stepgate upstream`), which answers with JSON describing the
//! request it received.
#![allow(dead_code)]

pub mod api;
pub mod browser;
pub mod metrics;
pub mod oidc;
pub mod receiver;
pub mod redis;
pub mod smtp;
pub mod transfer;
pub mod webdriver;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const BIN: &str = env!("CARGO_BIN_EXE_stepgate");
pub const FIRST_FACTOR_SECRET: &str = "test-first-factor-secret-0123456789abcdef";
pub const SIGNING_SECRET: &str = "test-signing-secret-0123456789abcdef0123";

/// A free TCP port on 127.0.0.1 (bound and released). Never the same port
/// twice in one test binary: its tests run in parallel, and two of them
/// handed one port before either listened would talk to each other's
/// servers.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Whether something listens on 127.0.0.1:`port`. A connect from an
/// ephemeral port that happens to be `port` itself "succeeds" with nothing
/// listening (TCP simultaneous open: a socket connected to itself); that is
/// not a listener. (Ports from `free_port` are in the ephemeral range and a
/// wait loop makes many connects; Linux makes this rare, not impossible.)
pub fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
}

pub fn wait_for_port(port: u16, within: Duration) {
    let start = Instant::now();
    while start.elapsed() < within {
        if listening(port) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port} after {within:?}");
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
    let out = std::fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start process");
    Proc { child, log }
}

/// The real demo upstream, recording nothing but echoing everything.
pub fn upstream(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let p = spawn(
        Command::new(BIN).args(["upstream", "--listen", &format!("127.0.0.1:{port}")]),
        dir.join(format!("upstream-{port}.log")),
    );
    wait_for_port(port, Duration::from_secs(10));
    (p, port)
}

pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub upstream_port: u16,
    pub config: PathBuf,
    pub proc: Option<Proc>,
    pub upstream: Option<Proc>,
}

pub const DEFAULT_POLICY: &str = r#"
default: authenticated
rules:
  - name: public
    match: { path: "/public/**" }
    require: none
  - name: admin-delete
    match: { path: "/admin/delete", methods: [POST] }
    require: step_up
    step_up: { methods: [pin], max_age: 0 }
  - name: admin
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: internal
    match: { path: "/internal/**" }
    require: deny
"#;

#[derive(Clone)]
pub struct GatewayOptions {
    pub policy: String,
    /// Extra top-level YAML appended to the config.
    pub extra_config: String,
    pub store: String,
    /// Extra lines inside `first_factor:` (two-space indented), e.g.
    /// `  login_url: "https://idp.test/login?r={return_to}"\n`.
    pub first_factor_extra: String,
    /// Replaces the `jwt:` block (four-space indented lines), e.g. to use
    /// `public_key_file` or `jwks_url` instead of the HS256 test secret.
    pub jwt: Option<String>,
    /// The gateway's port, when the caller must know it before the start
    /// (an OIDC provider registers the callback URL); else a free one.
    pub port: Option<u16>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            policy: DEFAULT_POLICY.to_string(),
            extra_config: String::new(),
            store: "  kind: memory\n".to_string(),
            first_factor_extra: String::new(),
            jwt: None,
            port: None,
        }
    }
}

impl Gateway {
    pub fn start() -> Gateway {
        Gateway::start_with(GatewayOptions::default())
    }

    pub fn start_with(o: GatewayOptions) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let (up, upstream_port) = upstream(dir.path());
        Gateway::start_configured(
            dir,
            &format!("http://127.0.0.1:{upstream_port}"),
            Some(up),
            o,
        )
    }

    /// A gateway in front of an upstream the caller runs at `upstream_url`
    /// (e.g. `http://127.0.0.1:PORT`) instead of the demo upstream; the
    /// caller keeps that server alive for as long as the gateway is used.
    pub fn start_in_front_of(upstream_url: &str, o: GatewayOptions) -> Gateway {
        Gateway::start_configured(tempfile::tempdir().unwrap(), upstream_url, None, o)
    }

    fn start_configured(
        dir: tempfile::TempDir,
        upstream_url: &str,
        up: Option<Proc>,
        o: GatewayOptions,
    ) -> Gateway {
        let upstream_port = upstream_url
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let port = o.port.unwrap_or_else(free_port);
        std::fs::write(dir.path().join("policy.yaml"), &o.policy).unwrap();
        let config = dir.path().join("gateway.yaml");
        let mut f = std::fs::File::create(&config).unwrap();
        write!(
            f,
            "listen: \"127.0.0.1:{port}\"\nthreads: 2\nupstream: \"{upstream_url}\"\npolicy: policy.yaml\nfirst_factor:\n{}  cookie: access_token\n  jwt:\n{}signing:\n  secret: \"{SIGNING_SECRET}\"\nstore:\n{}log:\n  format: json\n{}",
            o.first_factor_extra,
            o.jwt.unwrap_or_else(|| format!("    algorithms: [HS256]\n    secret: \"{FIRST_FACTOR_SECRET}\"\n")),
            o.store,
            o.extra_config
        )
        .unwrap();
        drop(f);
        let mut g = Gateway {
            dir,
            port,
            upstream_port,
            config,
            proc: None,
            upstream: up,
        };
        g.launch();
        g
    }

    /// Start (or restart) the gateway process.
    pub fn launch(&mut self) {
        let log = self.dir.path().join(format!(
            "gateway-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let p = spawn(
            Command::new(BIN)
                .args(["serve", "--config"])
                .arg(&self.config),
            log,
        );
        self.proc = Some(p);
        wait_for_port(self.port, Duration::from_secs(15));
        // The port answering is not enough: it could be another process's.
        let proc = self.proc.as_mut().unwrap();
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "the gateway exited ({status}) although 127.0.0.1:{} answers; its log:\n{}",
                self.port,
                proc.log_text()
            );
        }
    }

    pub fn stop(&mut self) {
        self.proc = None;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }

    /// Mint a first-factor token with `stepgate token`.
    pub fn token(&self, sub: &str, extra: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(["token", "--config"])
            .arg(&self.config)
            .args(["--sub", sub])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

/// The current Unix time, in seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HTTP client that does not follow redirects and keeps no cookies.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A GET as a browser: `Accept: text/html` and this `Cookie` header.
pub fn get_html(
    c: &reqwest::blocking::Client,
    url: &str,
    cookie: &str,
) -> reqwest::blocking::Response {
    c.get(url)
        .header("Cookie", cookie)
        .header("Accept", "text/html")
        .send()
        .unwrap()
}

/// A response header as text ("" when absent).
pub fn header(r: &reqwest::blocking::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A request header the demo upstream received, from its JSON echo.
pub fn echoed(echo: &serde_json::Value, name: &str) -> Option<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_string())
}

/// The path (and query) of a URL on the gateway.
pub fn path_of(g: &Gateway, url: &str) -> String {
    url.strip_prefix(&g.url(""))
        .unwrap_or_else(|| panic!("{url} is not on the gateway {}", g.url("")))
        .to_string()
}

/// Pull `name="csrf" value="…"` out of a page.
pub fn csrf_of(html: &str) -> String {
    let i = html
        .find("name=\"csrf\" value=\"")
        .expect("page has a csrf field")
        + "name=\"csrf\" value=\"".len();
    html[i..].split('"').next().unwrap().to_string()
}

/// The value of a Set-Cookie for `name`.
pub fn set_cookie(resp: &reqwest::blocking::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.strip_prefix(&format!("{name}="))
                .map(|r| r.split(';').next().unwrap().to_string())
        })
}

/// Enroll `pin` for the holder of access token `at` through the HTML setup
/// form (the login must be fresh and no PIN set yet).
pub fn enroll_pin(g: &Gateway, c: &reqwest::blocking::Client, at: &str, pin: &str) {
    let r = post_pin_form(
        g,
        c,
        at,
        None,
        "/.stepgate/pin/setup",
        "the enrollment form is offered",
        &[("pin", pin), ("pin_confirm", pin)],
    );
    assert_eq!(r.status(), 303, "enrollment succeeds");
}

/// A PIN step-up on the HTML page from device `ua` (the User-Agent), which
/// opens a device PIN session; returns the `stepgate_ps` cookie value.
pub fn browser_pin_session(
    g: &Gateway,
    c: &reqwest::blocking::Client,
    at: &str,
    pin: &str,
    ua: &str,
) -> String {
    let r = post_pin_form(
        g,
        c,
        at,
        Some(ua),
        "/.stepgate/pin",
        "the PIN form is offered",
        &[("pin", pin)],
    );
    assert_eq!(r.status(), 303, "the PIN step-up succeeds");
    set_cookie(&r, "stepgate_ps").expect("a device PIN session cookie")
}

/// As a browser of the holder of access token `at` (with User-Agent `ua`,
/// when given): open the HTML form at `path` for `return_to=/admin/x`, which
/// must be offered (`offered` says what), then post `fields`, its CSRF token
/// and the `return_to` to `path`; the answer to the post.
fn post_pin_form(
    g: &Gateway,
    c: &reqwest::blocking::Client,
    at: &str,
    ua: Option<&str>,
    path: &str,
    offered: &str,
    fields: &[(&str, &str)],
) -> reqwest::blocking::Response {
    let cookie = format!("access_token={at}");
    let as_browser = |rb: reqwest::blocking::RequestBuilder| {
        let rb = rb.header("Cookie", &cookie).header("Accept", "text/html");
        match ua {
            Some(ua) => rb.header("User-Agent", ua),
            None => rb,
        }
    };
    let page = as_browser(c.get(g.url(&format!("{path}?return_to=/admin/x"))))
        .send()
        .unwrap();
    assert_eq!(page.status(), 200, "{offered}");
    let csrf = csrf_of(&page.text().unwrap());
    let mut form = fields.to_vec();
    form.extend([("csrf", csrf.as_str()), ("return_to", "/admin/x")]);
    as_browser(c.post(g.url(path))).form(&form).send().unwrap()
}

/// The JSON lines a recording fixture wrote (`http_receiver.py`,
/// `transfer_app.py`), complete lines only (one being written has no
/// newline yet), oldest first.
pub fn records(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a bad record line ({e}): {l}")))
        .collect()
}

/// A record's `headers`: `[[name, value], …]` in the order received.
pub fn record_headers(v: &serde_json::Value) -> Vec<(String, String)> {
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_string(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A record's exact body (`body_b64`).
pub fn record_body(v: &serde_json::Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(v["body_b64"].as_str().unwrap())
        .unwrap()
}
