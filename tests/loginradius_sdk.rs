//! LoginRadius's REAL SDKs against stepgate, with only the API domain
//! changed: PyPI `loginradius-v2` 11.7.0 (module `LoginRadius`) and npm
//! `loginradius-sdk` 11.7.0, each driven by a long-lived process of
//! tests/fixtures/loginradius (`driver.py`, `driver.mjs`) that reads one JSON
//! command per line, calls the SDK method and prints what the SDK returned
//! or surfaced. Every PIN and step-up method of both SDKs is called, and what
//! it gives is then used for real (a step-up token admits a protected
//! request, a PIN-login token signs in, a reset PIN then works).
//!
//! Three ways of pointing an SDK at stepgate:
//! - Python, prefix form: `CUSTOM_DOMAIN = "http://127.0.0.1:PORT/.stepgate/api/"`.
//! - Python, root form: `CUSTOM_DOMAIN = "http://127.0.0.1:PORT/"` with
//!   `api.loginradius_root: true`.
//! - Node, root form only: the SDK's `apiDomain` is a host name, and it calls
//!   `https.request` with that host and no port, so it speaks HTTPS to port
//!   443 only, and at the root (no path prefix can be given). Each Node test
//!   runs its gateway with a TLS listener on its own loopback address
//!   `127.0.0.N:443` (the tests run as root) with a self-signed certificate
//!   for that address, trusted by the SDK through `NODE_EXTRA_CA_CERTS`.
//!
//! Every gateway sits in front of a recording upstream
//! (tests/fixtures/loginradius/upstream.py, which records every request of
//! any method); each test ends by checking that no `/identity` path and no
//! PIN ever reached it.
//!
//! Real parts: the stepgate binary, Python's `aiosmtpd` as the mail server
//! (codes and reset links are read from the mails), tests/fixtures/
//! http_receiver.py as the SMS gateway. Missing python3, aiosmtpd, the Python
//! SDK, node or the Node SDK's node_modules is a failure, never a skip:
//! `scripts/install-deps.sh test` installs them.

mod common;

use common::receiver::Receiver;
use common::smtp::{digits_after, Eml, SmtpServer};
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{json, Value};

const API_SECRET: &str = "lr-test-api-secret-0123456789abcdef0123456789";
const API_KEY: &str = "lr-test-api-key-6c1f0e2a";

const P1: &str = "2580";
const P2: &str = "3691";
const P3: &str = "4826";
const P4: &str = "5937";
const WRONG: &str = "1397";
const PINS: [&str; 5] = [P1, P2, P3, P4, WRONG];

/// Where a reset link may point (`pin.reset_urls`), and the SDKs' `resetPINUrl`.
const RESET_URL: &str = "https://app.example.test/lr/reset-pin";

const POLICY: &str = r#"
default: authenticated
rules:
  - name: public
    match: { path: "/public/**" }
    require: none
  - name: pin-area
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: mail-area
    match: { path: "/mail/**" }
    require: step_up
    step_up: { methods: [email_otp], max_age: 5m }
"#;

const QUESTIONS: &str = r#"security_questions:
  - { id: q1, question: "What was the name of your first school?" }
  - { id: q2, question: "What is your favourite colour?" }
  - { id: q3, question: "In which city were you born?" }
"#;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/loginradius");

const INSTALL_HINT: &str =
    "run `scripts/install-deps.sh test` (it installs loginradius-v2 with pip and runs `npm ci` in tests/fixtures/loginradius)";

// ---------------------------------------------------------------------------
// The SDK methods, by the Python SDK's names
// ---------------------------------------------------------------------------

/// (Python SDK attribute, method; Node SDK API, method). Both SDKs take the
/// same arguments in the same order for each of these.
#[rustfmt::skip]
const METHODS: &[(&str, &str, &str, &str)] = &[
    ("pin_authentication", "pin_login", "pinAuthenticationApi", "pinLogin"),
    ("pin_authentication", "set_pin_by_pin_auth_token", "pinAuthenticationApi", "setPINByPinAuthToken"),
    ("pin_authentication", "change_pin_by_access_token", "pinAuthenticationApi", "changePINByAccessToken"),
    ("pin_authentication", "send_forgot_pin_email_by_email", "pinAuthenticationApi", "sendForgotPINEmailByEmail"),
    ("pin_authentication", "send_forgot_pin_email_by_username", "pinAuthenticationApi", "sendForgotPINEmailByUsername"),
    ("pin_authentication", "send_forgot_pin_sms_by_phone", "pinAuthenticationApi", "sendForgotPINSMSByPhone"),
    ("pin_authentication", "reset_pin_by_reset_token", "pinAuthenticationApi", "resetPINByResetToken"),
    ("pin_authentication", "reset_pin_by_email_and_otp", "pinAuthenticationApi", "resetPINByEmailAndOtp"),
    ("pin_authentication", "reset_pin_by_phone_and_otp", "pinAuthenticationApi", "resetPINByPhoneAndOtp"),
    ("pin_authentication", "reset_pin_by_username_and_otp", "pinAuthenticationApi", "resetPINByUsernameAndOtp"),
    ("pin_authentication", "reset_pin_by_email_and_security_answer", "pinAuthenticationApi", "resetPINByEmailAndSecurityAnswer"),
    ("pin_authentication", "reset_pin_by_phone_and_security_answer", "pinAuthenticationApi", "resetPINByPhoneAndSecurityAnswer"),
    ("pin_authentication", "reset_pin_by_username_and_security_answer", "pinAuthenticationApi", "resetPINByUsernameAndSecurityAnswer"),
    ("pin_authentication", "in_validate_pin_session_token", "pinAuthenticationApi", "inValidatePinSessionToken"),
    ("authentication", "get_security_questions_by_email", "authenticationApi", "getSecurityQuestionsByEmail"),
    ("authentication", "get_security_questions_by_user_name", "authenticationApi", "getSecurityQuestionsByUserName"),
    ("authentication", "get_security_questions_by_phone", "authenticationApi", "getSecurityQuestionsByPhone"),
    ("authentication", "get_security_questions_by_access_token", "authenticationApi", "getSecurityQuestionsByAccessToken"),
    ("authentication", "update_profile_by_access_token", "authenticationApi", "updateProfileByAccessToken"),
    ("re_authentication", "mfa_re_authenticate", "reAuthenticationApi", "mfaReAuthenticate"),
    ("re_authentication", "verify_pin_authentication", "reAuthenticationApi", "verifyPINAuthentication"),
    ("re_authentication", "re_auth_send_email_otp", "reAuthenticationApi", "reAuthSendEmailOtp"),
    ("re_authentication", "re_auth_validate_email_otp", "reAuthenticationApi", "reAuthValidateEmailOtp"),
    ("re_authentication", "verify_multi_factor_pin_reauthentication", "reAuthenticationApi", "verifyMultiFactorPINReauthentication"),
    ("re_authentication", "verify_multi_factor_otp_reauthentication", "reAuthenticationApi", "verifyMultiFactorOtpReauthentication"),
];

/// How the SDK reaches the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// Python SDK, `CUSTOM_DOMAIN = "http://127.0.0.1:PORT/.stepgate/api/"`.
    PyPrefix,
    /// Python SDK, `CUSTOM_DOMAIN = "http://127.0.0.1:PORT/"`, `api.loginradius_root`.
    PyRoot,
    /// Node SDK, `apiDomain = "127.0.0.N"` (HTTPS on 443), `api.loginradius_root`.
    NodeRoot,
}

impl Form {
    fn root(self) -> bool {
        self != Form::PyPrefix
    }
}

// ---------------------------------------------------------------------------
// The SDK driver processes
// ---------------------------------------------------------------------------

/// What the SDK gave: `Ok` what it returned (Python) or resolved to (Node),
/// `Err` the LoginRadius error it returned or rejected with.
type Outcome = Result<Value, Value>;

struct Lr {
    form: Form,
    child: Child,
    stdin: Mutex<ChildStdin>,
    lines: Mutex<mpsc::Receiver<String>>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Lr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the SDK is pointed at.
struct Target<'a> {
    /// Python: `CUSTOM_DOMAIN`; Node: `apiDomain`.
    domain: String,
    /// Node: the certificate to trust (`NODE_EXTRA_CA_CERTS`).
    ca: Option<&'a Path>,
}

impl Lr {
    fn start(form: Form, target: &Target<'_>, key: &str, secret: &str) -> Lr {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("driver.stderr");
        let mut cmd = match form {
            Form::PyPrefix | Form::PyRoot => {
                let mut c = Command::new("python3");
                c.arg(format!("{FIXTURES}/driver.py"))
                    .env("LR_DOMAIN", &target.domain);
                c
            }
            Form::NodeRoot => {
                assert!(
                    Path::new(FIXTURES)
                        .join("node_modules/loginradius-sdk/package.json")
                        .exists(),
                    "the Node SDK is not installed in {FIXTURES}/node_modules; {INSTALL_HINT}"
                );
                let mut c = Command::new("node");
                c.arg(format!("{FIXTURES}/driver.mjs"))
                    .current_dir(FIXTURES)
                    .env("LR_API_DOMAIN", &target.domain)
                    .env(
                        "NODE_EXTRA_CA_CERTS",
                        target.ca.expect("the gateway's certificate"),
                    );
                c
            }
        };
        let mut child = cmd
            .env("LR_API_KEY", key)
            .env("LR_API_SECRET", secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start the {form:?} SDK driver: {e}; {INSTALL_HINT}")
            });
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let lr = Lr {
            form,
            child,
            stdin: Mutex::new(stdin),
            lines: Mutex::new(rx),
            stderr,
            _dir: dir,
        };
        let ready = lr.read_line(Duration::from_secs(30));
        let ready: Value = serde_json::from_str(&ready).unwrap();
        if form != Form::NodeRoot {
            // The SDK's main code path uses `requests`, which it picks only
            // when it can import distutils (Python 3.11, or setuptools').
            assert_eq!(
                ready["ready"]["library"], "requests",
                "the Python SDK fell back to urllib3 (no distutils?): {ready}; {INSTALL_HINT}"
            );
        }
        lr
    }

    fn read_line(&self, within: Duration) -> String {
        match self.lines.lock().unwrap().recv_timeout(within) {
            Ok(l) => l,
            Err(e) => panic!(
                "the {:?} SDK driver gave no answer ({e}); its stderr:\n{}\n({INSTALL_HINT})",
                self.form,
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            ),
        }
    }

    /// Call the SDK method named `name` (the Python SDK's name) with `args`.
    fn call(&self, name: &str, args: Vec<Value>) -> Outcome {
        let (py_api, py_method, node_api, node_method) = METHODS
            .iter()
            .find(|m| m.1 == name)
            .unwrap_or_else(|| panic!("no SDK method {name} in METHODS"));
        let (api, method) = match self.form {
            Form::NodeRoot => (node_api, node_method),
            _ => (py_api, py_method),
        };
        let cmd = json!({"api": api, "method": method, "args": args});
        {
            let mut stdin = self.stdin.lock().unwrap();
            writeln!(stdin, "{cmd}").unwrap();
            stdin.flush().unwrap();
        }
        let line = self.read_line(Duration::from_secs(60));
        let mut v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the driver printed no JSON ({e}): {line}"));
        if let Some(ok) = v.get_mut("ok") {
            return Ok(ok.take());
        }
        if let Some(err) = v.get_mut("err") {
            return Err(err.take());
        }
        panic!("the driver printed neither ok nor err: {line}");
    }
}

/// What the SDK returned, which must be a success.
#[track_caller]
fn ok(r: Outcome, what: &str) -> Value {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: the SDK surfaced an error: {e}"),
    }
}

/// The SDK surfaced stepgate's LoginRadius error `code` (with LoginRadius's
/// whole error shape); the error body is returned.
#[track_caller]
fn lr_error(r: Outcome, code: u64, what: &str) -> Value {
    let e = match r {
        Ok(v) => panic!("{what}: expected ErrorCode {code}, the SDK returned success: {v}"),
        Err(e) => e,
    };
    assert_eq!(e["ErrorCode"], code, "{what}: ErrorCode in {e}");
    for f in ["Message", "Description"] {
        assert!(
            e[f].as_str().is_some_and(|s| !s.is_empty()),
            "{what}: {f} is a non-empty string in {e}"
        );
    }
    assert_eq!(e["IsProviderError"], false, "{what}: {e}");
    assert!(
        e.get("ProviderErrorResponse").is_some_and(Value::is_null),
        "{what}: {e}"
    );
    e
}

fn rfc3339(s: &str) -> i64 {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is RFC 3339: {e}"))
        .unix_timestamp()
}

/// A step-up answer: the SecondFactorValidationToken, checked with its ExpireIn.
#[track_caller]
fn stepup_token(v: &Value, what: &str) -> String {
    let exp = rfc3339(
        v["ExpireIn"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: ExpireIn in {v}")),
    );
    assert!(exp > now(), "{what}: ExpireIn is ahead: {v}");
    v["SecondFactorValidationToken"]
        .as_str()
        .filter(|t| t.len() > 20)
        .unwrap_or_else(|| panic!("{what}: SecondFactorValidationToken in {v}"))
        .to_string()
}

#[track_caller]
fn assert_posted(v: Value, what: &str) {
    assert_eq!(v["IsPosted"], true, "{what}: {v}");
}

#[track_caller]
fn assert_valid(v: Value, valid: bool, what: &str) {
    // LoginRadius answers `{"IsValid"}`; more fields do not bother an SDK.
    assert_eq!(v["IsValid"], valid, "{what}: {v}");
}

// ---------------------------------------------------------------------------
// The recording upstream
// ---------------------------------------------------------------------------

struct Recorded {
    method: String,
    path: String,
    body: Vec<u8>,
}

struct Recorder {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Recorder {
    fn start() -> Recorder {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let port_file = dir.path().join("port");
        let mut child = Command::new("python3")
            .arg(format!("{FIXTURES}/upstream.py"))
            .arg("--log")
            .arg(&log)
            .arg("--port-file")
            .arg(&port_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .expect("start python3 upstream.py");
        let start = Instant::now();
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok())
            {
                break p;
            }
            if let Some(s) = child.try_wait().unwrap() {
                panic!("upstream.py exited ({s})");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "upstream.py did not start"
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        wait_for_port(port, Duration::from_secs(10));
        Recorder {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<Recorded> {
        use base64::Engine as _;
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                Recorded {
                    method: v["method"].as_str().unwrap().to_string(),
                    path: v["path"].as_str().unwrap().to_string(),
                    body: base64::engine::general_purpose::STANDARD
                        .decode(v["body_b64"].as_str().unwrap())
                        .unwrap(),
                }
            })
            .collect()
    }
}

/// Whether a path is under `/identity`, in any case.
fn under_identity(path: &str) -> bool {
    path.get(..9)
        .is_some_and(|p| p.eq_ignore_ascii_case("/identity"))
        && matches!(path.as_bytes().get(9), None | Some(b'/') | Some(b'?'))
}

/// Whether a recorded request carries a PIN of these tests (or a `PIN` field).
fn carries_pin(r: &Recorded) -> bool {
    let body = String::from_utf8_lossy(&r.body).to_ascii_lowercase();
    body.contains("\"pin\"")
        || body.contains("pin\":")
        || PINS.iter().any(|p| body.contains(p) || r.path.contains(p))
}

// ---------------------------------------------------------------------------
// A gateway, its upstream, mail and SMS servers, and an SDK pointed at it
// ---------------------------------------------------------------------------

struct Env {
    form: Form,
    lr: Lr,
    g: Gateway,
    up: Recorder,
    smtp: SmtpServer,
    sms: Option<Receiver>,
    http: Client,
    /// The gateway's base URL for direct requests (http or https on 127.0.0.1).
    base: String,
    /// What the SDK is pointed at.
    domain: String,
    /// Node: the gateway's certificate.
    cert: Option<PathBuf>,
    _certs: Option<tempfile::TempDir>,
}

/// A loopback address `127.0.0.N` whose port 443 is free, never the same
/// twice in this test binary.
fn loopback_443() -> Ipv4Addr {
    static GIVEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    // Start somewhere that depends on the process, so two runs of this
    // binary at once rarely probe the same addresses.
    let offset = std::process::id() % 200;
    for i in 0..200u32 {
        // 127.0.0.40 to 127.0.0.239.
        let n = (40 + (offset + i) % 200) as u8;
        if given.contains(&n) {
            continue;
        }
        let ip = Ipv4Addr::new(127, 0, 0, n);
        if TcpListener::bind((ip, 443)).is_ok() {
            given.push(n);
            return ip;
        }
    }
    panic!("no free 127.0.0.N:443 (binding port 443 needs root)");
}

impl Env {
    /// A gateway for `form` with `extra` config (besides `api`, `mail`,
    /// `email_otp`, and `sms` when `with_sms`).
    fn start(form: Form, extra: &str, with_sms: bool) -> Env {
        let up = Recorder::start();
        let smtp = SmtpServer::start();
        let sms = with_sms.then(Receiver::start);
        let mut config = format!(
            "api:\n  secret: \"{API_SECRET}\"\n  key: \"{API_KEY}\"\n  loginradius_root: {}\n{}email_otp:\n  resend_cooldown: 0s\n  max_sends_per_hour: 50\n",
            form.root(),
            smtp.mail_config(),
        );
        if let Some(r) = &sms {
            config.push_str(&format!(
                "sms:\n  webhook_url: \"{}\"\n  timeout: 5s\n",
                r.url("/send")
            ));
        }
        config.push_str(extra);
        let (g, base, domain, cert, certs) = match form {
            Form::PyPrefix | Form::PyRoot => {
                let g = Gateway::start_in_front_of(
                    &up.url(),
                    GatewayOptions {
                        policy: POLICY.to_string(),
                        extra_config: config,
                        ..Default::default()
                    },
                );
                let base = g.url("");
                let domain = match form {
                    Form::PyPrefix => format!("{base}/.stepgate/api/"),
                    _ => format!("{base}/"),
                };
                (g, base, domain, None, None)
            }
            Form::NodeRoot => {
                let ip = loopback_443();
                let certs = tempfile::tempdir().unwrap();
                let cert = certs.path().join("cert.pem");
                let key = certs.path().join("key.pem");
                let out = Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    ])
                    .arg("-subj")
                    .arg(format!("/CN={ip}"))
                    .arg("-addext")
                    .arg(format!("subjectAltName=IP:{ip},IP:127.0.0.1"))
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert)
                    .output()
                    .expect("openssl");
                assert!(
                    out.status.success(),
                    "openssl: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let g = tls_gateway(ip, &cert, &key, &up, &config);
                let base = format!("https://127.0.0.1:{}", g.port);
                (g, base, ip.to_string(), Some(cert), Some(certs))
            }
        };
        let lr = Lr::start(
            form,
            &Target {
                domain: domain.clone(),
                ca: cert.as_deref(),
            },
            API_KEY,
            API_SECRET,
        );
        let http = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .danger_accept_invalid_certs(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Env {
            form,
            lr,
            g,
            up,
            smtp,
            sms,
            http,
            base,
            domain,
            cert,
            _certs: certs,
        }
    }

    /// Another SDK process pointed at the same gateway, with this key and secret.
    fn sdk_with(&self, key: &str, secret: &str) -> Lr {
        Lr::start(
            self.form,
            &Target {
                domain: self.domain.clone(),
                ca: self.cert.as_deref(),
            },
            key,
            secret,
        )
    }

    fn call(&self, name: &str, args: Vec<Value>) -> Outcome {
        self.lr.call(name, args)
    }

    /// A first-factor access token for `u`, logged in just now.
    fn login(&self, u: &User) -> String {
        self.g.token(
            u.sub,
            &[
                "--email",
                u.email,
                "--email",
                u.email2,
                "--username",
                u.username,
                "--phone",
                u.phone,
                "--login-age",
                "0",
            ],
        )
    }

    /// A PINAuthToken for `uid` from the back channel (stepgate's own
    /// `POST /.stepgate/api/manage/pinauthtoken`: no SDK method has it).
    fn pin_auth_token(&self, uid: &str) -> String {
        let r = self
            .http
            .post(format!("{}/.stepgate/api/manage/pinauthtoken", self.base))
            .bearer_auth(API_SECRET)
            .json(&json!({ "Uid": uid }))
            .send()
            .unwrap();
        let status = r.status();
        let body: Value = r.json().unwrap();
        assert_eq!(status, 200, "a PINAuthToken: {body}");
        body["PINAuthToken"].as_str().unwrap().to_string()
    }

    /// Set `pin` for `u` with set_pin_by_pin_auth_token; the answer.
    fn set_pin(&self, u: &User, pin: &str) -> Value {
        let t = self.pin_auth_token(u.sub);
        let v = ok(
            self.call(
                "set_pin_by_pin_auth_token",
                vec![json!({ "PIN": pin }), json!(t)],
            ),
            "set_pin_by_pin_auth_token",
        );
        assert_posted(v.clone(), "set_pin_by_pin_auth_token");
        assert_eq!(v["Profile"]["Uid"], u.sub, "{v}");
        v
    }

    /// verify_pin_authentication with `pin`, which must work: the token.
    fn pin_works(&self, at: &str, pin: &str) -> String {
        let v = ok(
            self.call(
                "verify_pin_authentication",
                vec![json!(at), json!({ "PIN": pin })],
            ),
            &format!("verify_pin_authentication with {pin}"),
        );
        stepup_token(&v, "verify_pin_authentication")
    }

    /// verify_pin_authentication with `pin`, which must be refused with 1236.
    fn pin_refused(&self, at: &str, pin: &str) {
        lr_error(
            self.call(
                "verify_pin_authentication",
                vec![json!(at), json!({ "PIN": pin })],
            ),
            1236,
            &format!("verify_pin_authentication with the wrong PIN {pin}"),
        );
    }

    /// A protected request from an API client: status and body.
    fn reach(&self, path: &str, at: &str, su: Option<&str>) -> (u16, String) {
        let mut rb = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(at)
            .header("Accept", "application/json");
        if let Some(su) = su {
            rb = rb.header("X-Stepgate-Token", su);
        }
        let r = rb.send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// The request reached the upstream as `user`.
    #[track_caller]
    fn assert_admitted(&self, path: &str, at: &str, su: Option<&str>, user: &str, what: &str) {
        let (status, body) = self.reach(path, at, su);
        assert_eq!(status, 200, "{what}: forwarded; got {body}");
        let echo: Value = serde_json::from_str(&body).expect("the upstream's echo");
        assert_eq!(echo["path"], path, "{what}: {echo}");
        assert_eq!(
            echoed(&echo, "x-stepgate-user").as_deref(),
            Some(user),
            "{what}: X-Stepgate-User upstream: {echo}"
        );
    }

    #[track_caller]
    fn assert_refused(&self, path: &str, at: &str, su: Option<&str>, what: &str) {
        let (status, body) = self.reach(path, at, su);
        assert_eq!(status, 401, "{what}: refused; got {body}");
    }

    /// Messages delivered to `addr` so far.
    fn mails_to(&self, addr: &str) -> Vec<Eml> {
        self.smtp
            .messages()
            .into_iter()
            .filter(|m| {
                m.header("X-RcptTo")
                    .is_some_and(|r| r.eq_ignore_ascii_case(addr))
            })
            .collect()
    }

    /// Wait for message number `seen + 1` to `addr`.
    fn next_mail_to(&self, addr: &str, seen: usize) -> Eml {
        let start = Instant::now();
        loop {
            let mut m = self.mails_to(addr);
            if m.len() > seen {
                return m.swap_remove(seen);
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!(
                    "no message {} to {addr} after 20 s; all recipients: {:?}",
                    seen + 1,
                    self.smtp
                        .messages()
                        .iter()
                        .map(|m| m.header("X-RcptTo").unwrap_or_default().to_string())
                        .collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of every test: nothing under `/identity`, and no PIN, ever
    /// reached the upstream, though it did see the protected requests.
    fn assert_nothing_reached_upstream(&self) {
        let seen = self.up.requests();
        assert!(
            !seen.is_empty(),
            "the upstream saw the protected requests (it records)"
        );
        for r in &seen {
            assert!(
                !under_identity(&r.path),
                "{:?}: {} {} was forwarded to the upstream",
                self.form,
                r.method,
                r.path
            );
            assert!(
                !carries_pin(r),
                "{:?}: a PIN reached the upstream: {} {} {}",
                self.form,
                r.method,
                r.path,
                String::from_utf8_lossy(&r.body)
            );
        }
    }
}

/// A gateway with a TLS listener on `ip:443` (for the Node SDK) and one on
/// `127.0.0.1:<free port>` (for the test's own requests and the harness's
/// wait), in front of `up`.
fn tls_gateway(ip: Ipv4Addr, cert: &Path, key: &Path, up: &Recorder, extra: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: [\"127.0.0.1:{port}\", \"{ip}:443\"]\nthreads: 2\nupstream: \"{}\"\npolicy: policy.yaml\ntls:\n  cert: \"{}\"\n  key: \"{}\"\nfirst_factor:\n  cookie: access_token\n  jwt:\n    algorithms: [HS256]\n    secret: \"{FIRST_FACTOR_SECRET}\"\nsigning:\n  secret: \"{SIGNING_SECRET}\"\nstore:\n  kind: memory\nlog:\n  format: json\n{extra}",
            up.url(),
            cert.display(),
            key.display(),
        ),
    )
    .unwrap();
    let mut g = Gateway {
        dir,
        port,
        upstream_port: up.port,
        config,
        proc: None,
        upstream: None,
    };
    g.launch();
    let start = Instant::now();
    while TcpStream::connect((ip, 443)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "nothing listens on {ip}:443:\n{}",
            g.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    g
}

/// A user as the identity provider describes them.
struct User {
    sub: &'static str,
    /// The primary address.
    email: &'static str,
    /// A second address, with a `+` (the Python SDK puts query values in the
    /// URL unencoded).
    email2: &'static str,
    username: &'static str,
    phone: &'static str,
}

const ANN: User = User {
    sub: "ann-7f3a",
    email: "ann@corp.test",
    email2: "ann+stepup@corp.test",
    username: "ann.lr",
    phone: "+15550102000",
};

const BOB: &str = "bob-9c2e";

/// The text part of a mail.
fn text_of(m: &Eml) -> String {
    m.part("text/plain")
        .unwrap_or_else(|| panic!("a text part in:\n{}", m.all_text()))
        .to_string()
}

/// The six-digit code after `Your code:` in a mail.
fn code_in(m: &Eml) -> String {
    let text = text_of(m);
    let code = digits_after(&text, "Your code:")
        .unwrap_or_else(|| panic!("no `Your code:` in the mail:\n{text}"));
    assert_eq!(code.len(), 6, "a six-digit code: {code}");
    code
}

/// The ResetToken of the link to `RESET_URL` in a forgot-PIN mail.
fn reset_token_in(m: &Eml) -> String {
    let text = text_of(m);
    let at = text
        .find(RESET_URL)
        .unwrap_or_else(|| panic!("the mail links to {RESET_URL}:\n{text}"));
    let rest = text[at + RESET_URL.len()..]
        .strip_prefix("?token=")
        .unwrap_or_else(|| panic!("`?token=` follows {RESET_URL}:\n{text}"));
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    assert!(token.len() >= 32, "a long random token: {token:?}");
    token
}

// ---------------------------------------------------------------------------
// Scenarios, each run with every form
// ---------------------------------------------------------------------------

/// set_pin_by_pin_auth_token, pin_login (its access token signs in),
/// in_validate_pin_session_token, change_pin_by_access_token, wrong PINs.
fn pin_sessions(form: Form) {
    let env = Env::start(form, "", false);
    let u = &ANN;
    let at = env.login(u);

    // A PIN set with a PINAuthToken opens a device PIN session.
    let t = env.pin_auth_token(u.sub);
    let set = ok(
        env.call(
            "set_pin_by_pin_auth_token",
            vec![json!({ "PIN": P1 }), json!(t)],
        ),
        "set_pin_by_pin_auth_token",
    );
    assert_posted(set.clone(), "set_pin_by_pin_auth_token");
    assert_eq!(set["Profile"]["Uid"], u.sub, "{set}");
    let session = set["session_token"]
        .as_str()
        .expect("session_token")
        .to_string();
    assert!(
        rfc3339(
            set["session_expires_in"]
                .as_str()
                .expect("session_expires_in")
        ) > now()
    );
    let sgs = set["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    env.assert_admitted(
        "/app/set",
        &sgs,
        None,
        u.sub,
        "the access token of set_pin_by_pin_auth_token",
    );
    // The PINAuthToken is single use.
    lr_error(
        env.call(
            "set_pin_by_pin_auth_token",
            vec![json!({ "PIN": P2 }), json!(t)],
        ),
        1239,
        "a used PINAuthToken",
    );

    // PIN login with the device session.
    lr_error(
        env.call("pin_login", vec![json!({ "PIN": WRONG }), json!(session)]),
        1236,
        "pin_login with a wrong PIN",
    );
    let login = ok(
        env.call("pin_login", vec![json!({ "PIN": P1 }), json!(session)]),
        "pin_login",
    );
    assert_eq!(login["Profile"]["Uid"], u.sub, "{login}");
    assert!(rfc3339(login["expires_in"].as_str().expect("expires_in")) > now());
    let pin_at = login["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    // The PIN login's access token is a first factor: the app opens, and
    // the SDK steps up with it.
    env.assert_admitted("/app/x", &pin_at, None, u.sub, "the pin_login access token");
    env.assert_refused("/admin/x", &pin_at, None, "a PIN area without a step-up");
    let su = env.pin_works(&pin_at, P1);
    env.assert_admitted(
        "/admin/x",
        &pin_at,
        Some(&su),
        u.sub,
        "a step-up made with the pin_login token",
    );

    // Invalidating the session ends it and the access token it gave.
    assert_posted(
        ok(
            env.call("in_validate_pin_session_token", vec![json!(session)]),
            "in_validate_pin_session_token",
        ),
        "in_validate_pin_session_token",
    );
    lr_error(
        env.call("pin_login", vec![json!({ "PIN": P1 }), json!(session)]),
        1245,
        "pin_login with an invalidated session",
    );
    env.assert_refused(
        "/app/y",
        &pin_at,
        None,
        "the access token of an invalidated PIN session",
    );

    // Change the PIN with the first-factor access token.
    lr_error(
        env.call(
            "change_pin_by_access_token",
            vec![json!(at), json!({ "OldPIN": WRONG, "NewPIN": P2 })],
        ),
        1241,
        "change_pin_by_access_token with a wrong current PIN",
    );
    assert_posted(
        ok(
            env.call(
                "change_pin_by_access_token",
                vec![json!(at), json!({ "OldPIN": P1, "NewPIN": P2 })],
            ),
            "change_pin_by_access_token",
        ),
        "change_pin_by_access_token",
    );
    let su = env.pin_works(&at, P2);
    env.pin_refused(&at, P1);
    env.assert_admitted(
        "/admin/after-change",
        &at,
        Some(&su),
        u.sub,
        "the new PIN's step-up",
    );

    env.assert_nothing_reached_upstream();
}

/// mfa_re_authenticate, verify_pin_authentication, re_auth_send_email_otp,
/// re_auth_validate_email_otp, verify_multi_factor_{pin,otp}_reauthentication,
/// the wrong key and secret, 1340 and the lockout (1198 with its Data).
fn step_up(form: Form) {
    // Three failures lock (the default is five): each PIN check is an
    // Argon2 verification, slow in a debug build.
    let env = Env::start(form, "lockout:\n  max_failures: 3\n", false);
    let u = &ANN;
    let at = env.login(u);
    env.set_pin(u, P1);

    // The trigger: which factors are set up.
    let t = ok(
        env.call("mfa_re_authenticate", vec![json!(at)]),
        "mfa_re_authenticate",
    );
    assert_eq!(t["IsEmailOtpAuthenticatorVerified"], true, "{t}");
    assert_eq!(t["Email"], json!([u.email, u.email2]), "{t}");
    assert_eq!(t["IsOTPAuthenticatorVerified"], false, "{t}");
    assert!(t["OTPPhoneNo"].is_string(), "OTPPhoneNo is present: {t}");
    assert_eq!(t["IsPINSet"], true, "{t}");

    // Step-up by PIN: the token admits the PIN area, and only for this user.
    env.assert_refused("/admin/x", &at, None, "the PIN area without a step-up");
    let pin_su = env.pin_works(&at, P1);
    env.assert_admitted(
        "/admin/x",
        &at,
        Some(&pin_su),
        u.sub,
        "the PIN step-up token",
    );
    env.assert_refused(
        "/mail/x",
        &at,
        Some(&pin_su),
        "a PIN step-up in the email area",
    );
    let bob = env.g.token(BOB, &["--email", "bob@corp.test"]);
    env.assert_refused(
        "/admin/x",
        &bob,
        Some(&pin_su),
        "Ann's step-up token with Bob's access token",
    );
    let validate_pin = |token: &str, uid: &str| {
        env.call(
            "verify_multi_factor_pin_reauthentication",
            vec![json!({ "SecondFactorValidationToken": token }), json!(uid)],
        )
    };
    let validate_otp = |token: &str, uid: &str| {
        env.call(
            "verify_multi_factor_otp_reauthentication",
            vec![json!({ "SecondFactorValidationToken": token }), json!(uid)],
        )
    };
    assert_valid(
        ok(validate_pin(&pin_su, u.sub), "validate pin"),
        true,
        "Ann's PIN token for Ann",
    );
    assert_valid(
        ok(validate_pin(&pin_su, BOB), "validate pin"),
        false,
        "Ann's PIN token for Bob",
    );
    assert_valid(
        ok(
            validate_pin("not-a-second-factor-validation-token", u.sub),
            "validate pin",
        ),
        false,
        "garbage for Ann",
    );
    assert_valid(
        ok(validate_otp(&pin_su, u.sub), "validate otp"),
        false,
        "a PIN token on the email-OTP (2fa) validation",
    );

    // Step-up by email code, to the second address (it has a `+`).
    let seen = env.mails_to(u.email2).len();
    assert_posted(
        ok(
            env.call("re_auth_send_email_otp", vec![json!(at), json!(u.email2)]),
            "re_auth_send_email_otp",
        ),
        "re_auth_send_email_otp",
    );
    let code = code_in(&env.next_mail_to(u.email2, seen));
    let v = ok(
        env.call(
            "re_auth_validate_email_otp",
            vec![json!(at), json!({ "EmailId": u.email2, "Otp": code })],
        ),
        "re_auth_validate_email_otp",
    );
    let otp_su = stepup_token(&v, "re_auth_validate_email_otp");
    env.assert_admitted(
        "/mail/x",
        &at,
        Some(&otp_su),
        u.sub,
        "the email-OTP step-up token",
    );
    env.assert_refused(
        "/admin/y",
        &at,
        Some(&otp_su),
        "an email step-up in the PIN area",
    );
    assert_valid(
        ok(validate_otp(&otp_su, u.sub), "validate otp"),
        true,
        "Ann's OTP token for Ann",
    );
    assert_valid(
        ok(validate_otp(&otp_su, BOB), "validate otp"),
        false,
        "Ann's OTP token for Bob",
    );
    assert_valid(
        ok(
            validate_otp("not-a-second-factor-validation-token", u.sub),
            "validate otp",
        ),
        false,
        "garbage for Ann",
    );
    assert_valid(
        ok(validate_pin(&otp_su, u.sub), "validate pin"),
        false,
        "an email-OTP token on the PIN validation",
    );

    // An address that is not the user's: 1340, and nothing is sent.
    let before = env.smtp.messages().len();
    lr_error(
        env.call(
            "re_auth_send_email_otp",
            vec![json!(at), json!("mallory@evil.test")],
        ),
        1340,
        "re_auth_send_email_otp to a foreign address",
    );

    // The wrong API secret on a manage call: 907.
    let wrong_secret = env.sdk_with(API_KEY, "not-the-api-secret-0123456789abcdef0123456789");
    lr_error(
        wrong_secret.call(
            "verify_multi_factor_pin_reauthentication",
            vec![
                json!({ "SecondFactorValidationToken": pin_su }),
                json!(u.sub),
            ],
        ),
        907,
        "verify_multi_factor_pin_reauthentication with a wrong API secret",
    );
    // The wrong API key: 905 before anything else, so PINs sent with it
    // are never tried and do not count toward the lockout.
    let wrong_key = env.sdk_with("not-the-api-key", API_SECRET);
    for _ in 0..4 {
        lr_error(
            wrong_key.call(
                "verify_pin_authentication",
                vec![json!(at), json!({ "PIN": WRONG })],
            ),
            905,
            "verify_pin_authentication with a wrong API key",
        );
    }
    lr_error(
        wrong_key.call(
            "pin_login",
            vec![json!({ "PIN": P1 }), json!("some-session")],
        ),
        905,
        "pin_login with a wrong API key",
    );
    env.pin_works(&at, P1);

    // Lockout: two wrong PINs are 1236, the third locks (1198, with when
    // it ends in Data: LoginRadius's 403, not a 429 the SDKs swallow), and
    // then the right PIN is locked out too.
    for left in (1..=2).rev() {
        let e = lr_error(
            env.call(
                "verify_pin_authentication",
                vec![json!(at), json!({ "PIN": WRONG })],
            ),
            1236,
            "a wrong PIN",
        );
        assert!(
            e["Description"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{left} attempt(s) left")),
            "{e}"
        );
    }
    let e = lr_error(
        env.call(
            "verify_pin_authentication",
            vec![json!(at), json!({ "PIN": WRONG })],
        ),
        1198,
        "the third wrong PIN",
    );
    let retry = e["Data"]["RetryAfter"]
        .as_i64()
        .unwrap_or_else(|| panic!("Data.RetryAfter: {e}"));
    assert!(retry > 0, "{e}");
    let until = rfc3339(
        e["Data"]["LockedUntil"]
            .as_str()
            .unwrap_or_else(|| panic!("Data.LockedUntil: {e}")),
    );
    assert!(until > now() && until <= now() + retry + 5, "{e}");
    let e = lr_error(
        env.call(
            "verify_pin_authentication",
            vec![json!(at), json!({ "PIN": P1 })],
        ),
        1198,
        "the right PIN while locked",
    );
    assert!(e["Data"]["LockedUntil"].is_string(), "{e}");
    assert_eq!(
        env.smtp.messages().len(),
        before,
        "no mail to a foreign address"
    );

    env.assert_nothing_reached_upstream();
}

/// send_forgot_pin_email_by_email and _by_username with resetPINUrl (link
/// mode), reset_pin_by_reset_token, a used link (1242).
fn forgot_by_link(form: Form) {
    let env = Env::start(
        form,
        &format!("pin:\n  forgot: link\n  reset_urls: [\"{RESET_URL}\"]\n"),
        false,
    );
    let u = &ANN;
    let at = env.login(u);
    env.set_pin(u, P1);
    // A step-up records the recovery profile (the addresses of the token).
    let old_su = env.pin_works(&at, P1);

    // By email: the link goes to resetPINUrl.
    let seen = env.mails_to(u.email).len();
    assert_posted(
        ok(
            env.call(
                "send_forgot_pin_email_by_email",
                vec![json!({ "Email": u.email }), Value::Null, json!(RESET_URL)],
            ),
            "send_forgot_pin_email_by_email",
        ),
        "send_forgot_pin_email_by_email",
    );
    let token = reset_token_in(&env.next_mail_to(u.email, seen));
    assert_posted(
        ok(
            env.call(
                "reset_pin_by_reset_token",
                vec![json!({ "ResetToken": token, "PIN": P2 })],
            ),
            "reset_pin_by_reset_token",
        ),
        "reset_pin_by_reset_token",
    );
    env.pin_refused(&at, P1);
    let su = env.pin_works(&at, P2);
    env.assert_admitted(
        "/admin/reset",
        &at,
        Some(&su),
        u.sub,
        "a step-up with the reset PIN",
    );
    // A reset ends the step-ups made before it.
    let v = ok(
        env.call(
            "verify_multi_factor_pin_reauthentication",
            vec![
                json!({ "SecondFactorValidationToken": old_su }),
                json!(u.sub),
            ],
        ),
        "verify_multi_factor_pin_reauthentication",
    );
    assert_valid(v, false, "a step-up from before the reset");
    // The link works once.
    lr_error(
        env.call(
            "reset_pin_by_reset_token",
            vec![json!({ "ResetToken": token, "PIN": P3 })],
        ),
        1242,
        "a used reset link",
    );
    env.pin_works(&at, P2);

    // By username: a link to the account's address.
    let seen = env.mails_to(u.email).len();
    assert_posted(
        ok(
            env.call(
                "send_forgot_pin_email_by_username",
                vec![
                    json!({ "UserName": u.username }),
                    Value::Null,
                    json!(RESET_URL),
                ],
            ),
            "send_forgot_pin_email_by_username",
        ),
        "send_forgot_pin_email_by_username",
    );
    let token = reset_token_in(&env.next_mail_to(u.email, seen));
    assert_posted(
        ok(
            env.call(
                "reset_pin_by_reset_token",
                vec![json!({ "ResetToken": token, "PIN": P3 })],
            ),
            "reset_pin_by_reset_token (username link)",
        ),
        "reset_pin_by_reset_token",
    );
    env.pin_works(&at, P3);

    env.assert_nothing_reached_upstream();
}

/// Forgot PIN by code: send_forgot_pin_email_by_email / _by_username (code
/// mode) and send_forgot_pin_sms_by_phone, then reset_pin_by_{email,
/// username,phone}_and_otp.
fn forgot_by_code(form: Form) {
    let env = Env::start(form, "pin:\n  forgot: otp\n", true);
    let u = &ANN;
    let at = env.login(u);
    env.set_pin(u, P1);
    env.pin_works(&at, P1);

    // By email.
    let seen = env.mails_to(u.email).len();
    assert_posted(
        ok(
            env.call(
                "send_forgot_pin_email_by_email",
                vec![json!({ "Email": u.email })],
            ),
            "send_forgot_pin_email_by_email (code)",
        ),
        "send_forgot_pin_email_by_email",
    );
    let code = code_in(&env.next_mail_to(u.email, seen));
    let wrong = format!("{}{}", &code[..5], (code.as_bytes()[5] - b'0' + 1) % 10);
    lr_error(
        env.call(
            "reset_pin_by_email_and_otp",
            vec![json!({ "Email": u.email, "OTP": wrong, "PIN": P2 })],
        ),
        1253,
        "reset_pin_by_email_and_otp with a wrong code",
    );
    assert_posted(
        ok(
            env.call(
                "reset_pin_by_email_and_otp",
                vec![json!({ "Email": u.email, "OTP": code, "PIN": P2 })],
            ),
            "reset_pin_by_email_and_otp",
        ),
        "reset_pin_by_email_and_otp",
    );
    env.pin_refused(&at, P1);
    let su = env.pin_works(&at, P2);
    env.assert_admitted(
        "/admin/by-email",
        &at,
        Some(&su),
        u.sub,
        "a step-up with the reset PIN",
    );

    // By username.
    let seen = env.mails_to(u.email).len();
    assert_posted(
        ok(
            env.call(
                "send_forgot_pin_email_by_username",
                vec![json!({ "UserName": u.username })],
            ),
            "send_forgot_pin_email_by_username (code)",
        ),
        "send_forgot_pin_email_by_username",
    );
    let code = code_in(&env.next_mail_to(u.email, seen));
    assert_posted(
        ok(
            env.call(
                "reset_pin_by_username_and_otp",
                vec![json!({ "UserName": u.username, "OTP": code, "PIN": P3 })],
            ),
            "reset_pin_by_username_and_otp",
        ),
        "reset_pin_by_username_and_otp",
    );
    env.pin_works(&at, P3);

    // By phone: the code comes through the SMS gateway.
    let sms = env.sms.as_ref().unwrap();
    assert_posted(
        ok(
            env.call(
                "send_forgot_pin_sms_by_phone",
                vec![json!({ "Phone": u.phone })],
            ),
            "send_forgot_pin_sms_by_phone",
        ),
        "send_forgot_pin_sms_by_phone",
    );
    let got = sms.wait_for(1, Duration::from_secs(20));
    let body = got[0].json();
    assert_eq!(body["to"], u.phone, "{body}");
    let message = body["message"].as_str().expect("message");
    let code = digits_after(message, "code:").unwrap_or_else(|| panic!("a code in {message}"));
    assert_eq!(code.len(), 6, "{message}");
    assert_posted(
        ok(
            env.call(
                "reset_pin_by_phone_and_otp",
                vec![json!({ "Phone": u.phone, "OTP": code, "PIN": P4 })],
            ),
            "reset_pin_by_phone_and_otp",
        ),
        "reset_pin_by_phone_and_otp",
    );
    let su = env.pin_works(&at, P4);
    env.assert_admitted(
        "/admin/by-phone",
        &at,
        Some(&su),
        u.sub,
        "a step-up with the reset PIN",
    );

    env.assert_nothing_reached_upstream();
}

/// Security answers set with update_profile_by_access_token, the four
/// get_security_questions_by_* and reset_pin_by_{email,username,phone}_and_security_answer.
fn security_answers(form: Form) {
    let env = Env::start(form, QUESTIONS, false);
    let u = &ANN;
    let at = env.login(u);

    // Answers first, while the login is fresh and there is no PIN yet (a
    // user with a PIN would also have to prove it).
    let answers = json!({ "q1": "Elm Street School", "q2": "Teal" });
    assert_posted(
        ok(
            env.call(
                "update_profile_by_access_token",
                vec![json!(at), json!({ "SecurityQuestionAnswer": answers })],
            ),
            "update_profile_by_access_token with SecurityQuestionAnswer",
        ),
        "update_profile_by_access_token",
    );
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("a list of questions: {v}"))
            .iter()
            .map(|q| {
                assert!(q["Question"].as_str().is_some_and(|s| !s.is_empty()), "{q}");
                q["QuestionId"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let mine = ok(
        env.call("get_security_questions_by_access_token", vec![json!(at)]),
        "get_security_questions_by_access_token",
    );
    assert_eq!(
        ids(&mine),
        ["q1", "q2"],
        "the questions Ann answered: {mine}"
    );
    for (method, id) in [
        ("get_security_questions_by_email", u.email),
        ("get_security_questions_by_user_name", u.username),
        ("get_security_questions_by_phone", u.phone),
    ] {
        let v = ok(env.call(method, vec![json!(id)]), method);
        // Every configured question, for any name (nothing tells whether
        // an account exists).
        assert_eq!(ids(&v), ["q1", "q2", "q3"], "{method}: {v}");
    }

    env.set_pin(u, P1);
    env.pin_works(&at, P1);

    let reset = |method: &str, field: &str, id: &str, answers: Value, pin: &str| {
        let mut body = json!({ "SecurityAnswer": answers, "PIN": pin });
        body[field] = json!(id);
        env.call(method, vec![body])
    };
    lr_error(
        reset(
            "reset_pin_by_email_and_security_answer",
            "Email",
            u.email,
            json!({ "q1": "Elm Street School", "q2": "Red" }),
            P2,
        ),
        1257,
        "a wrong security answer",
    );
    // A client that asks the user every listed question and sends all the
    // answers (q3 was never set) works too: only the user's are checked.
    let all_listed = json!({ "q1": "elm street   school ", "q2": "TEAL", "q3": "Lisbon" });
    for (method, field, id, pin, given) in [
        (
            "reset_pin_by_email_and_security_answer",
            "Email",
            u.email,
            P2,
            &answers,
        ),
        (
            "reset_pin_by_username_and_security_answer",
            "UserName",
            u.username,
            P3,
            &all_listed,
        ),
        (
            "reset_pin_by_phone_and_security_answer",
            "Phone",
            u.phone,
            P4,
            &answers,
        ),
    ] {
        assert_posted(
            ok(reset(method, field, id, given.clone(), pin), method),
            method,
        );
        if pin == P2 {
            // The old PIN is gone.
            env.pin_refused(&at, P1);
        }
        let su = env.pin_works(&at, pin);
        env.assert_admitted("/admin/answers", &at, Some(&su), u.sub, method);
    }

    env.assert_nothing_reached_upstream();
}

#[test]
fn python_prefix_pin_login_sessions_and_change() {
    pin_sessions(Form::PyPrefix);
}
#[test]
fn python_root_pin_login_sessions_and_change() {
    pin_sessions(Form::PyRoot);
}
#[test]
fn node_root_pin_login_sessions_and_change() {
    pin_sessions(Form::NodeRoot);
}

#[test]
fn python_prefix_step_up_validation_and_errors() {
    step_up(Form::PyPrefix);
}
#[test]
fn python_root_step_up_validation_and_errors() {
    step_up(Form::PyRoot);
}
#[test]
fn node_root_step_up_validation_and_errors() {
    step_up(Form::NodeRoot);
}

#[test]
fn python_prefix_forgot_pin_by_reset_link() {
    forgot_by_link(Form::PyPrefix);
}
#[test]
fn python_root_forgot_pin_by_reset_link() {
    forgot_by_link(Form::PyRoot);
}
#[test]
fn node_root_forgot_pin_by_reset_link() {
    forgot_by_link(Form::NodeRoot);
}

#[test]
fn python_prefix_forgot_pin_by_email_username_and_sms_code() {
    forgot_by_code(Form::PyPrefix);
}
#[test]
fn python_root_forgot_pin_by_email_username_and_sms_code() {
    forgot_by_code(Form::PyRoot);
}
#[test]
fn node_root_forgot_pin_by_email_username_and_sms_code() {
    forgot_by_code(Form::NodeRoot);
}

#[test]
fn python_prefix_security_questions_and_resets_by_answers() {
    security_answers(Form::PyPrefix);
}
#[test]
fn python_root_security_questions_and_resets_by_answers() {
    security_answers(Form::PyRoot);
}
#[test]
fn node_root_security_questions_and_resets_by_answers() {
    security_answers(Form::NodeRoot);
}

// ---------------------------------------------------------------------------
// The root form never forwards /identity
// ---------------------------------------------------------------------------

/// With `api.loginradius_root`, every path under `/identity`, in any case,
/// is stepgate's: operations it does not serve are a LoginRadius-shaped 404,
/// and neither they nor the PINs sent to them reach the upstream. Without
/// it (the control), the same requests are the app's and do reach it.
#[test]
fn the_root_form_answers_every_identity_path_itself_and_forwards_none() {
    let up = Recorder::start();
    let root = Gateway::start_in_front_of(
        &up.url(),
        GatewayOptions {
            policy: POLICY.to_string(),
            extra_config: format!("api:\n  secret: \"{API_SECRET}\"\n  loginradius_root: true\n"),
            ..Default::default()
        },
    );
    let c = client();
    let at = root.token(ANN.sub, &["--email", ANN.email]);
    let pin_body = json!({ "PIN": P1 });

    let lr_shaped = |r: reqwest::blocking::Response, status: u16, what: &str| -> Value {
        let got = r.status().as_u16();
        let text = r.text().unwrap();
        assert_eq!(got, status, "{what}: {text}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: JSON: {text}"));
        assert!(v["ErrorCode"].is_u64(), "{what}: an ErrorCode body: {v}");
        assert_eq!(v["IsProviderError"], false, "{what}: {v}");
        v
    };
    // Unknown operations: 404 with an ErrorCode, with or without a token,
    // whatever the method and the case.
    for (method, path) in [
        ("GET", "/identity/v2/auth/whatever"),
        ("POST", "/identity/v2/auth/whatever"),
        ("PUT", "/IDENTITY/v2/auth/whatever"),
        ("POST", "/Identity/V2/Auth/Nothing/Here"),
        ("GET", "/identity"),
        ("GET", "/IdEnTiTy/v1/auth/login"),
        ("POST", "/identity/v2/manage/account/ann/reauth/password"),
    ] {
        for token in [None, Some(at.as_str())] {
            let mut rb = c
                .request(method.parse().unwrap(), root.url(path))
                .header("Accept", "application/json");
            if let Some(t) = token {
                rb = rb.bearer_auth(t);
            }
            if method != "GET" {
                rb = rb.json(&pin_body);
            }
            let v = lr_shaped(rb.send().unwrap(), 404, &format!("{method} {path}"));
            assert_eq!(v["ErrorCode"], 901, "{method} {path}: {v}");
        }
    }
    // Known operations in other cases are answered by stepgate (here: no
    // PIN set, a bad session), not forwarded.
    lr_shaped(
        c.put(root.url("/IDENTITY/V2/AUTH/ACCOUNT/REAUTH/PIN"))
            .bearer_auth(&at)
            .json(&pin_body)
            .send()
            .unwrap(),
        403,
        "PUT /IDENTITY/V2/AUTH/ACCOUNT/REAUTH/PIN",
    );
    lr_shaped(
        c.post(root.url("/Identity/v2/auth/login/PIN?session_token=nope"))
            .json(&pin_body)
            .send()
            .unwrap(),
        401,
        "POST /Identity/v2/auth/login/PIN",
    );
    // The control on this gateway: other paths, PIN bodies and all, are
    // forwarded and recorded.
    let r = c
        .post(root.url("/public/identity/v2/auth/login/pin"))
        .json(&pin_body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(root.url("/identityx/v2/auth/whatever"))
        .bearer_auth(&at)
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a path that is not under /identity is the app's"
    );

    let seen = up.requests();
    assert!(
        seen.iter()
            .any(|r| r.path == "/public/identity/v2/auth/login/pin" && carries_pin(r)),
        "the recorder records PIN bodies it gets"
    );
    assert!(seen.iter().any(|r| r.path == "/identityx/v2/auth/whatever"));
    for r in &seen {
        assert!(
            !under_identity(&r.path),
            "forwarded: {} {}",
            r.method,
            r.path
        );
    }
    assert_eq!(
        seen.len(),
        2,
        "only the two control requests were forwarded"
    );

    // Without loginradius_root, /identity is the app's: forwarded.
    let up2 = Recorder::start();
    let prefix = Gateway::start_in_front_of(
        &up2.url(),
        GatewayOptions {
            policy: POLICY.to_string(),
            extra_config: format!("api:\n  secret: \"{API_SECRET}\"\n"),
            ..Default::default()
        },
    );
    let at2 = prefix.token(ANN.sub, &["--email", ANN.email]);
    let r = c
        .post(prefix.url("/identity/v2/auth/login/pin?session_token=x"))
        .bearer_auth(&at2)
        .json(&pin_body)
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "without loginradius_root the app gets /identity"
    );
    let seen = up2.requests();
    assert!(
        seen.iter()
            .any(|r| under_identity(&r.path) && carries_pin(r)),
        "the control reached the app"
    );
}
