//! Gateway configuration: the YAML file format (serde, unknown keys refused)
//! and the validated internal model the rest of stepgate runs on. Everything
//! that can be checked at start-up is checked here, once: durations parsed,
//! secrets loaded, addresses and URLs validated. Nothing downstream re-parses
//! strings from the file.

pub mod spans;
pub mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::spans::{serde_diag_in, Diagnostic, Spans};
use values::{load_secret, Dur, Secret};

// ---------- file format ----------

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum UpstreamFile {
    One(String),
    Full(UpstreamFull),
    PerHost(BTreeMap<String, String>),
}

/// `upstream: { url: …, hosts: { … }, forward_path: canonical | raw }`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct UpstreamFull {
    url: Option<String>,
    #[serde(default)]
    hosts: BTreeMap<String, String>,
    forward_path: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<OneOrMany>,
    tls: Option<TlsFile>,
    threads: Option<usize>,
    upstream: Option<UpstreamFile>,
    public_url: Option<String>,
    /// The host of requests that name none (HTTP/1.0 without Host).
    default_host: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    policy: Option<String>,
    first_factor: Option<FirstFactorFile>,
    #[serde(default)]
    store: StoreFile,
    signing: Option<SecretFile>,
    metrics: Option<MetricsFile>,
    #[serde(default)]
    pin: PinFile,
    #[serde(default)]
    lockout: LockoutFile,
    #[serde(default)]
    step_up: StepUpFile,
    #[serde(default)]
    pages: PagesFile,
    #[serde(default)]
    headers: HeadersFile,
    #[serde(default)]
    log: LogFile,
    #[serde(default)]
    timeouts: TimeoutsFile,
    mail: Option<MailFile>,
    api: Option<SecretFile>,
    #[serde(default)]
    assertion: AssertionFile,
    #[serde(default)]
    email_otp: EmailOtpFile,
    /// Unix socket where a new binary started with `serve -u` takes over the
    /// listeners on SIGQUIT.
    upgrade_sock: Option<String>,
    pid_file: Option<String>,
    /// CA certificates (PEM) trusted for `https://` upstreams, instead of the
    /// system's.
    upstream_ca: Option<String>,
    sms: Option<SmsFile>,
    #[serde(default)]
    security_questions: Vec<QuestionFile>,
    webhook: Option<WebhookFile>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SmsFile {
    webhook_url: String,
    timeout: Option<Dur>,
    /// Sent as `Authorization: Bearer` to the SMS gateway.
    secret: Option<String>,
    secret_file: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct QuestionFile {
    id: String,
    question: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct WebhookFile {
    url: String,
    secret: Option<String>,
    secret_file: Option<String>,
    timeout: Option<Dur>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: String,
    key: String,
    /// Send Strict-Transport-Security with this max-age (e.g. 1y = 365d).
    hsts: Option<Dur>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    secret: Option<String>,
    secret_file: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FirstFactorFile {
    cookie: Option<String>,
    jwt: Option<JwtFile>,
    login_url: Option<String>,
    leeway: Option<Dur>,
    #[serde(default)]
    claims: ClaimsFile,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ClaimsFile {
    email: Option<String>,
    emails: Option<String>,
    email_verified: Option<String>,
    phone: Option<String>,
    username: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct JwtFile {
    algorithms: Option<Vec<String>>,
    secret: Option<String>,
    secret_file: Option<String>,
    public_key_file: Option<String>,
    jwks_file: Option<String>,
    jwks_url: Option<String>,
    jwks_refresh: Option<Dur>,
    issuer: Option<String>,
    audience: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    kind: Option<String>,
    path: Option<String>,
    url: Option<String>,
    nodes: Option<Vec<String>>,
    timeout: Option<Dur>,
    key_prefix: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    listen: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct PinFile {
    required: Option<bool>,
    login: Option<bool>,
    session_ttl: Option<Dur>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    enroll_window: Option<Dur>,
    login_ttl: Option<Dur>,
    offer_setup: Option<bool>,
    forgot: Option<String>,
    reset_ttl: Option<Dur>,
    #[serde(default)]
    reset_urls: Vec<String>,
    auth_token_ttl: Option<Dur>,
    forgot_ip_limit: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct LockoutFile {
    max_failures: Option<u32>,
    window: Option<Dur>,
    duration: Option<Dur>,
    ip_max_failures: Option<u32>,
    max_duration: Option<Dur>,
    max_consecutive: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct StepUpFile {
    single_use_window: Option<Dur>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct PagesFile {
    templates: Option<String>,
    title: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct HeadersFile {
    user: Option<String>,
    email: Option<String>,
    amr: Option<String>,
    auth_time: Option<String>,
    rule: Option<String>,
    assertion: Option<String>,
}

/// Deadlines on slow clients.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct TimeoutsFile {
    /// From an idle connection to the end of its next request head.
    request_head: Option<Dur>,
    /// For the body of a request to stepgate's own endpoints.
    reserved_body: Option<Dur>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct LogFile {
    level: Option<String>,
    format: Option<String>,
    /// One line per request (target `access`); audit events stay on.
    access: Option<bool>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct AssertionFile {
    key_file: Option<String>,
    previous_key_file: Option<String>,
    audience: Option<String>,
    issuer: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct MailFile {
    from: String,
    smtp: Option<SmtpFile>,
    dir: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SmtpFile {
    host: String,
    port: Option<u16>,
    tls: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
    timeout: Option<Dur>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct EmailOtpFile {
    mode: Option<String>,
    length: Option<usize>,
    ttl: Option<Dur>,
    max_tries: Option<u32>,
    resend_cooldown: Option<Dur>,
    max_sends_per_hour: Option<u32>,
}

// ---------- internal model ----------

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    StartTls,
    Tls,
}

#[derive(Clone, Debug)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub enum MailTransport {
    Smtp(Smtp),
    Dir(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Mail {
    pub from: String,
    pub transport: MailTransport,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssertionSettings {
    pub key_file: PathBuf,
    pub previous_key_file: Option<PathBuf>,
    pub audience: String,
    pub issuer: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtpMode {
    /// Any address of the profile.
    WithoutMfa,
    /// Only addresses verified once as an email authenticator.
    Mfa,
}

#[derive(Clone, Debug)]
pub struct EmailOtp {
    pub mode: OtpMode,
    pub length: usize,
    pub ttl: Duration,
    pub max_tries: u32,
    pub resend_cooldown: Duration,
    pub max_sends_per_hour: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port` to connect to.
    pub addr: String,
    pub tls: bool,
    /// SNI and certificate name when `tls`.
    pub sni: String,
    pub url: String,
}

#[derive(Clone, Debug)]
pub struct Upstreams {
    /// Exact host names (lowercase) to upstreams.
    pub by_host: BTreeMap<String, Upstream>,
    /// The `*` entry, or the single upstream.
    pub fallback: Option<Upstream>,
    /// `forward_path: raw`: send the client's own path bytes, when they read
    /// exactly as the canonical path (else the request is refused).
    pub raw_path: bool,
}

impl Upstreams {
    pub fn for_host(&self, host: &str) -> Option<&Upstream> {
        self.by_host
            .get(&host.to_ascii_lowercase())
            .or(self.fallback.as_ref())
    }
}

#[derive(Clone, Debug)]
pub enum KeySource {
    Secret(Secret),
    PublicKeyFile(PathBuf),
    JwksFile(PathBuf),
    JwksUrl { url: String, refresh: Duration },
}

/// Names of the first-factor claims stepgate reads besides the standard ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimNames {
    pub email: String,
    pub emails: String,
    pub email_verified: String,
    pub phone: String,
    pub username: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            email: "email".into(),
            emails: "emails".into(),
            email_verified: "email_verified".into(),
            phone: "phone_number".into(),
            username: "preferred_username".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FirstFactor {
    pub claims: ClaimNames,
    pub cookie: String,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub key: KeySource,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub login_url: Option<String>,
    pub leeway: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Embedded { path: PathBuf },
    Memory,
    Redis { url: String },
    RedisCluster { nodes: Vec<String> },
}

#[derive(Clone, Debug)]
pub struct StoreSettings {
    pub kind: StoreKind,
    /// Redis password (else from the URL).
    pub password: Option<Secret>,
    pub timeout: Duration,
    pub key_prefix: String,
}

/// What a forgot-PIN request by email or username sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForgotMode {
    /// A link carrying a single-use ResetToken.
    Link,
    /// A one-time code to enter with the new PIN.
    Otp,
}

#[derive(Clone, Debug)]
pub struct PinSettings {
    /// Every authenticated user must have a PIN (1243 until set).
    pub required: bool,
    /// PIN login with a device PIN session.
    pub login: bool,
    /// Lifetime of a device PIN session.
    pub session_ttl: Duration,
    pub min_length: usize,
    pub max_length: usize,
    pub enroll_window: Duration,
    /// Lifetime of the session stepgate issues after a PIN login.
    pub login_ttl: Duration,
    /// Offer PIN setup to users without one (skippable) when not required.
    pub offer_setup: bool,
    pub forgot: ForgotMode,
    /// Lifetime of ResetTokens and reset codes.
    pub reset_ttl: Duration,
    /// Where `resetpinurl` may point (exact URLs, or prefixes ending in `/`).
    pub reset_urls: Vec<String>,
    /// Lifetime of a PINAuthToken.
    pub auth_token_ttl: Duration,
    /// Forgot-PIN requests one client address may make in an hour (email,
    /// username and phone together), on top of the per-identifier limits.
    pub forgot_ip_limit: u32,
}

#[derive(Clone, Debug)]
pub struct Sms {
    pub webhook_url: String,
    pub timeout: Duration,
    pub secret: Option<Secret>,
}

#[derive(Clone, Debug)]
pub struct Webhook {
    pub url: String,
    pub secret: Secret,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub id: String,
    pub question: String,
}

#[derive(Clone, Debug)]
pub struct Lockout {
    pub max_failures: u32,
    pub window: Duration,
    /// The first lock; each lock that follows another without a success
    /// lasts twice as long, up to `max_duration`.
    pub duration: Duration,
    /// Failures from one client IP (all users) in the window that lock the
    /// IP for `duration`; far above `max_failures`, so one user's typos do
    /// not lock out everyone behind the same NAT.
    pub ip_max_failures: u32,
    pub max_duration: Duration,
    /// Failures in a row without a success that suspend the PIN until a
    /// reset or an admin unlock.
    pub max_consecutive: u32,
}

#[derive(Clone, Debug)]
pub struct HeaderNames {
    pub user: String,
    pub email: String,
    pub amr: String,
    pub auth_time: String,
    pub rule: String,
    pub assertion: String,
}

impl HeaderNames {
    pub fn all(&self) -> [&str; 6] {
        [
            &self.user,
            &self.email,
            &self.amr,
            &self.auth_time,
            &self.rule,
            &self.assertion,
        ]
    }
}

#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub hsts: Option<Duration>,
}

/// The validated gateway configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: Vec<String>,
    pub tls: Option<Tls>,
    pub threads: usize,
    pub upstreams: Upstreams,
    pub public_url: Option<String>,
    /// Stands in for a missing Host (HTTP/1.0 only); else such requests get 400.
    pub default_host: Option<crate::request::Host>,
    pub trusted_proxies: Vec<IpNet>,
    pub policy_path: PathBuf,
    pub first_factor: FirstFactor,
    pub store: StoreSettings,
    pub signing: Secret,
    pub metrics_listen: Option<String>,
    pub pin: PinSettings,
    pub lockout: Lockout,
    pub single_use_window: Duration,
    pub templates_dir: Option<PathBuf>,
    pub site_title: String,
    pub headers: HeaderNames,
    pub log_level: String,
    pub log_json: bool,
    pub log_access: bool,
    /// `timeouts.request_head` (60s): a connection's next request head must
    /// be complete this long after it became idle, or it is closed.
    pub head_timeout: Duration,
    /// `timeouts.reserved_body` (10s).
    pub reserved_body_timeout: Duration,
    pub mail: Option<Mail>,
    pub email_otp: EmailOtp,
    /// Back ends authenticate with it on /.stepgate/api/stepup/validate.
    pub api_secret: Option<Secret>,
    pub assertion: AssertionSettings,
    pub upstream_ca: Option<PathBuf>,
    pub upgrade_sock: PathBuf,
    pub pid_file: PathBuf,
    pub sms: Option<Sms>,
    pub security_questions: Vec<Question>,
    pub webhook: Option<Webhook>,
}

/// Load and validate a config file. All problems are returned, each with its
/// position in the file.
pub fn load(path: &Path) -> Result<Settings, Vec<Diagnostic>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            file: name.clone(),
            pos: crate::config::spans::Pos { line: 1, col: 1 },
            message: format!("cannot read config file: {e}"),
        }]
    })?;
    from_str(path, &text)
}

pub fn from_str(path: &Path, text: &str) -> Result<Settings, Vec<Diagnostic>> {
    let name = path.display().to_string();
    let file: FileConfig =
        serde_yaml::from_str(text).map_err(|e| vec![serde_diag_in(&name, text, &e)])?;
    let spans = Spans::index(&name, text);
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut b = Builder {
        spans: &spans,
        diags: Vec::new(),
        base: &base,
    };
    let s = b.build(file);
    if b.diags.is_empty() {
        Ok(s.expect("a config without diagnostics builds"))
    } else {
        Err(b.diags)
    }
}

struct Builder<'a> {
    spans: &'a Spans,
    diags: Vec<Diagnostic>,
    base: &'a Path,
}

const DEFAULT_SIGNING_MIN: usize = 32;

impl Builder<'_> {
    fn err(&mut self, path: &str, msg: impl Into<String>) {
        self.diags.push(self.spans.diag(path, msg));
    }

    fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    fn build(&mut self, f: FileConfig) -> Option<Settings> {
        let listen = match f.listen {
            None => vec!["127.0.0.1:8080".to_string()],
            Some(OneOrMany::One(a)) => vec![a],
            Some(OneOrMany::Many(v)) => v,
        };
        for (i, a) in listen.iter().enumerate() {
            if a.parse::<std::net::SocketAddr>().is_err() {
                let at = if listen.len() == 1 {
                    "listen".to_string()
                } else {
                    format!("listen[{i}]")
                };
                self.err(
                    &at,
                    format!(
                        "`{a}` is not an address; write e.g. \"127.0.0.1:8080\" or \"[::]:443\""
                    ),
                );
            }
        }
        let tls = f.tls.map(|t| Tls {
            cert: self.path(&t.cert),
            key: self.path(&t.key),
            hsts: t.hsts.map(|d| d.0),
        });
        if let Some(t) = &tls {
            for (k, p) in [("tls.cert", &t.cert), ("tls.key", &t.key)] {
                if !p.is_file() {
                    self.err(
                        k,
                        format!("{} does not exist or is not a file", p.display()),
                    );
                }
            }
        }
        let threads = match f.threads {
            Some(0) => {
                self.err("threads", "`threads` must be at least 1");
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        let upstreams = self.upstreams(f.upstream);
        let public_url = f.public_url.map(|u| u.trim_end_matches('/').to_string());
        if let Some(u) = &public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                self.err(
                    "public_url",
                    format!("`{u}` must start with http:// or https://"),
                );
            }
        }
        let default_host = match f.default_host.as_deref() {
            None => None,
            Some(h) => match crate::request::Host::parse(h.as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    self.err(
                        "default_host",
                        format!("`{h}` is not a host name such as app.example.com (an optional :port is allowed)"),
                    );
                    None
                }
            },
        };
        let mut trusted_proxies = Vec::new();
        for (i, p) in f.trusted_proxies.iter().enumerate() {
            let parsed = p
                .parse::<IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(n) => trusted_proxies.push(n),
                Err(_) => self.err(
                    &format!("trusted_proxies[{i}]"),
                    format!("`{p}` is not an IP address or CIDR range such as 10.0.0.0/8"),
                ),
            }
        }
        let policy_path = match f.policy {
            Some(p) => self.path(&p),
            None => {
                self.err(
                    "",
                    "`policy` is missing: name a policy file or a directory of *.yaml files",
                );
                PathBuf::new()
            }
        };
        let first_factor = self.first_factor(f.first_factor);
        let store = self.store(f.store);
        let signing = match f.signing {
            None => {
                self.err("", "`signing` is missing: give `signing.secret` (at least 32 bytes) or `signing.secret_file`; it signs step-up tokens and CSRF tokens");
                None
            }
            Some(s) => match load_secret(
                s.secret.as_deref(),
                s.secret_file.as_deref(),
                self.base,
                "signing",
            ) {
                Ok(Some(sec)) if sec.expose().len() >= DEFAULT_SIGNING_MIN => Some(sec),
                Ok(Some(_)) => {
                    self.err("signing", format!("the signing secret is too short; use at least {DEFAULT_SIGNING_MIN} random bytes (e.g. `openssl rand -hex 32`)"));
                    None
                }
                Ok(None) => {
                    self.err("signing", "give `secret` or `secret_file`");
                    None
                }
                Err(e) => {
                    self.err("signing", e);
                    None
                }
            },
        };
        let metrics_listen = f.metrics.map(|m| m.listen);
        if let Some(m) = &metrics_listen {
            if m.parse::<std::net::SocketAddr>().is_err() {
                self.err(
                    "metrics.listen",
                    format!("`{m}` is not an address such as 127.0.0.1:9100"),
                );
            }
        }
        let pin = PinSettings {
            required: f.pin.required.unwrap_or(false),
            login: f.pin.login.unwrap_or(true),
            session_ttl: f
                .pin
                .session_ttl
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(7 * 86400)),
            min_length: f.pin.min_length.unwrap_or(4),
            max_length: f.pin.max_length.unwrap_or(12),
            enroll_window: f
                .pin
                .enroll_window
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(600)),
            login_ttl: f
                .pin
                .login_ttl
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(900)),
            offer_setup: f.pin.offer_setup.unwrap_or(false),
            forgot: match f.pin.forgot.as_deref() {
                None | Some("link") => ForgotMode::Link,
                Some("otp") => ForgotMode::Otp,
                Some(other) => {
                    self.err("pin.forgot", format!("`{other}`: use link or otp"));
                    ForgotMode::Link
                }
            },
            reset_ttl: f
                .pin
                .reset_ttl
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(900)),
            reset_urls: f.pin.reset_urls.clone(),
            auth_token_ttl: f
                .pin
                .auth_token_ttl
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(300)),
            forgot_ip_limit: f.pin.forgot_ip_limit.unwrap_or(10),
        };
        if pin.forgot_ip_limit == 0 {
            self.err("pin.forgot_ip_limit", "must be at least 1");
        }
        for (i, u) in pin.reset_urls.iter().enumerate() {
            if !(u.starts_with("https://") || u.starts_with("http://")) || u.contains('?') {
                self.err(
                    &format!("pin.reset_urls[{i}]"),
                    format!("`{u}` must be an absolute http(s) URL without a query"),
                );
            }
        }
        for (k, d) in [
            ("pin.session_ttl", pin.session_ttl),
            ("pin.login_ttl", pin.login_ttl),
            ("pin.reset_ttl", pin.reset_ttl),
            ("pin.auth_token_ttl", pin.auth_token_ttl),
        ] {
            if d < Duration::from_secs(60) {
                self.err(k, "must be at least 1m");
            }
        }
        if pin.min_length < 4 || pin.max_length > 64 || pin.min_length > pin.max_length {
            self.err(
                "pin",
                "PIN lengths must satisfy 4 <= min_length <= max_length <= 64",
            );
        }
        let lockout = Lockout {
            max_failures: f.lockout.max_failures.unwrap_or(5),
            window: f
                .lockout
                .window
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(900)),
            duration: f
                .lockout
                .duration
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(900)),
            ip_max_failures: f.lockout.ip_max_failures.unwrap_or(100),
            max_duration: f
                .lockout
                .max_duration
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(86400)),
            max_consecutive: f.lockout.max_consecutive.unwrap_or(20),
        };
        if lockout.max_failures == 0 || lockout.ip_max_failures == 0 {
            self.err("lockout", "failure limits must be at least 1");
        }
        if lockout.window < Duration::from_secs(1) || lockout.duration < Duration::from_secs(1) {
            self.err("lockout", "`window` and `duration` must be at least 1s");
        }
        if lockout.ip_max_failures < lockout.max_failures {
            self.err(
                "lockout.ip_max_failures",
                format!(
                    "`ip_max_failures` ({}) is below `max_failures` ({}): one user's typos would lock out everyone behind the same address (an office NAT, a VPN); make it far higher (default 100)",
                    lockout.ip_max_failures, lockout.max_failures
                ),
            );
        }
        if lockout.max_duration < lockout.duration {
            self.err(
                "lockout.max_duration",
                "`max_duration` caps the growing locks; it must be at least `duration`",
            );
        }
        if lockout.max_consecutive == 0 || lockout.max_consecutive > 100 {
            self.err(
                "lockout.max_consecutive",
                "`max_consecutive` must be 1 to 100 (NIST SP 800-63B: at most 100 failures in a row per account)",
            );
        }
        let single_use_window = f
            .step_up
            .single_use_window
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(120));
        let templates_dir = f.pages.templates.map(|t| self.path(&t));
        if let Some(d) = &templates_dir {
            if !d.is_dir() {
                self.err(
                    "pages.templates",
                    format!("{} is not a directory", d.display()),
                );
            }
        }
        let h = f.headers;
        let headers = HeaderNames {
            user: h.user.unwrap_or_else(|| "X-Stepgate-User".into()),
            email: h.email.unwrap_or_else(|| "X-Stepgate-Email".into()),
            amr: h.amr.unwrap_or_else(|| "X-Stepgate-Amr".into()),
            auth_time: h.auth_time.unwrap_or_else(|| "X-Stepgate-Auth-Time".into()),
            rule: h.rule.unwrap_or_else(|| "X-Stepgate-Rule".into()),
            assertion: h.assertion.unwrap_or_else(|| "X-Stepgate-Assertion".into()),
        };
        for (k, v) in [
            ("user", &headers.user),
            ("email", &headers.email),
            ("amr", &headers.amr),
            ("auth_time", &headers.auth_time),
            ("rule", &headers.rule),
            ("assertion", &headers.assertion),
        ] {
            if http::HeaderName::from_bytes(v.as_bytes()).is_err() {
                self.err(
                    &format!("headers.{k}"),
                    format!("`{v}` is not a valid header name"),
                );
            }
        }
        let log_access = f.log.access.unwrap_or(true);
        let head_timeout = f
            .timeouts
            .request_head
            .map_or(Duration::from_secs(60), |d| d.0);
        let reserved_body_timeout = f
            .timeouts
            .reserved_body
            .map_or(Duration::from_secs(10), |d| d.0);
        if head_timeout < Duration::from_secs(1) || reserved_body_timeout < Duration::from_secs(1) {
            self.err("timeouts", "timeouts must be at least 1s");
        }
        let log_level = f.log.level.unwrap_or_else(|| "info".into());
        let log_json = match f.log.format.as_deref() {
            None | Some("json") => true,
            Some("text") => false,
            Some(other) => {
                self.err("log.format", format!("`{other}`: use json or text"));
                true
            }
        };
        let site_title = f.pages.title.unwrap_or_else(|| "stepgate".into());
        let mail = f.mail.and_then(|m| self.mail(m));
        let upstream_ca = f.upstream_ca.map(|p| self.path(&p));
        if let Some(p) = &upstream_ca {
            if !p.is_file() {
                self.err(
                    "upstream_ca",
                    format!("{} does not exist or is not a file", p.display()),
                );
            }
        }
        let api_secret = match f.api {
            None => None,
            Some(s) => match load_secret(
                s.secret.as_deref(),
                s.secret_file.as_deref(),
                self.base,
                "api",
            ) {
                Ok(Some(sec)) if sec.expose().len() >= DEFAULT_SIGNING_MIN => Some(sec),
                Ok(Some(_)) => {
                    self.err("api", format!("the API secret is too short; use at least {DEFAULT_SIGNING_MIN} random bytes"));
                    None
                }
                Ok(None) => {
                    self.err("api", "give `secret` or `secret_file`");
                    None
                }
                Err(e) => {
                    self.err("api", e);
                    None
                }
            },
        };
        let a = f.assertion;
        let assertion_audience = a.audience.unwrap_or_else(|| {
            match upstreams.as_ref().and_then(|u| {
                if u.by_host.is_empty() {
                    u.fallback.as_ref()
                } else {
                    None
                }
            }) {
                Some(u) => u.url.clone(),
                None => "stepgate-upstream".to_string(),
            }
        });
        let assertion = AssertionSettings {
            key_file: self.path(a.key_file.as_deref().unwrap_or("data/assertion-key.pem")),
            previous_key_file: a.previous_key_file.map(|p| self.path(&p)),
            audience: assertion_audience,
            issuer: a
                .issuer
                .or_else(|| public_url.clone())
                .unwrap_or_else(|| "stepgate".into()),
        };
        let e = f.email_otp;
        let email_otp = EmailOtp {
            mode: match e.mode.as_deref() {
                None | Some("without_mfa") => OtpMode::WithoutMfa,
                Some("mfa") => OtpMode::Mfa,
                Some(other) => {
                    self.err(
                        "email_otp.mode",
                        format!("`{other}`: use without_mfa or mfa"),
                    );
                    OtpMode::WithoutMfa
                }
            },
            length: e.length.unwrap_or(6),
            ttl: e.ttl.map(|d| d.0).unwrap_or(Duration::from_secs(300)),
            max_tries: e.max_tries.unwrap_or(5),
            resend_cooldown: e
                .resend_cooldown
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30)),
            max_sends_per_hour: e.max_sends_per_hour.unwrap_or(5),
        };
        if !(6..=10).contains(&email_otp.length) {
            self.err("email_otp.length", "an email code has 6 to 10 digits");
        }
        if email_otp.max_tries == 0 || email_otp.max_sends_per_hour == 0 {
            self.err(
                "email_otp",
                "`max_tries` and `max_sends_per_hour` must be at least 1",
            );
        }
        // Per-config defaults, so several gateways on one machine never share
        // an upgrade socket.
        let canonical = std::fs::canonicalize(self.spans.file())
            .unwrap_or_else(|_| PathBuf::from(self.spans.file()));
        let tag = crate::util::digest::digest_b64(canonical.to_string_lossy().as_bytes())[..10]
            .replace(['-', '_'], "x");
        let upgrade_sock = f
            .upgrade_sock
            .map(|p| self.path(&p))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("stepgate-{tag}.sock")));
        let pid_file = f
            .pid_file
            .map(|p| self.path(&p))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("stepgate-{tag}.pid")));

        let sms = f.sms.map(|s| {
            if !(s.webhook_url.starts_with("http://") || s.webhook_url.starts_with("https://")) {
                self.err(
                    "sms.webhook_url",
                    format!("`{}` must start with http:// or https://", s.webhook_url),
                );
            }
            let secret = match load_secret(
                s.secret.as_deref(),
                s.secret_file.as_deref(),
                self.base,
                "sms",
            ) {
                Ok(v) => v,
                Err(e) => {
                    self.err("sms", e);
                    None
                }
            };
            Sms {
                webhook_url: s.webhook_url,
                timeout: s.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(5)),
                secret,
            }
        });
        let mut security_questions: Vec<Question> = Vec::new();
        for (i, q) in f.security_questions.into_iter().enumerate() {
            let id = q.id.trim().to_string();
            if id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                self.err(
                    &format!("security_questions[{i}].id"),
                    format!("`{}`: an id is 1-64 letters, digits, `_` or `-`", q.id),
                );
            } else if security_questions.iter().any(|o| o.id == id) {
                self.err(
                    &format!("security_questions[{i}].id"),
                    format!("`{id}` is used twice"),
                );
            } else if q.question.trim().is_empty() {
                self.err(
                    &format!("security_questions[{i}].question"),
                    "the question is empty",
                );
            }
            security_questions.push(Question {
                id,
                question: q.question.trim().to_string(),
            });
        }
        let webhook = f.webhook.and_then(|w| {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                self.err(
                    "webhook.url",
                    format!("`{}` must start with http:// or https://", w.url),
                );
            }
            match load_secret(
                w.secret.as_deref(),
                w.secret_file.as_deref(),
                self.base,
                "webhook",
            ) {
                Ok(Some(secret)) if secret.expose().len() >= DEFAULT_SIGNING_MIN => Some(Webhook {
                    url: w.url,
                    secret,
                    timeout: w.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(5)),
                }),
                Ok(Some(_)) => {
                    self.err("webhook", format!("the webhook secret is too short; use at least {DEFAULT_SIGNING_MIN} random bytes"));
                    None
                }
                Ok(None) => {
                    self.err("webhook", "give `secret` or `secret_file`: receivers check the HMAC signature with it");
                    None
                }
                Err(e) => {
                    self.err("webhook", e);
                    None
                }
            }
        });

        let (Some(upstreams), Some(first_factor), Some(store), Some(signing)) =
            (upstreams, first_factor, store, signing)
        else {
            return None;
        };
        Some(Settings {
            listen,
            tls,
            threads,
            upstreams,
            public_url,
            default_host,
            trusted_proxies,
            policy_path,
            first_factor,
            store,
            signing,
            metrics_listen,
            pin,
            lockout,
            single_use_window,
            templates_dir,
            site_title,
            headers,
            log_level,
            log_json,
            log_access,
            head_timeout,
            reserved_body_timeout,
            mail,
            email_otp,
            api_secret,
            assertion,
            upstream_ca,
            upgrade_sock,
            pid_file,
            sms,
            security_questions,
            webhook,
        })
    }

    fn mail(&mut self, m: MailFile) -> Option<Mail> {
        if !m.from.contains('@') || m.from.parse::<lettre::message::Mailbox>().is_err() {
            self.err("mail.from", format!("`{}` is not an email address", m.from));
        }
        let transport = match (m.smtp, m.dir) {
            (Some(s), None) => {
                let tls = match s.tls.as_deref() {
                    None | Some("starttls") => SmtpTls::StartTls,
                    Some("none") => SmtpTls::None,
                    Some("tls") => SmtpTls::Tls,
                    Some(other) => {
                        self.err(
                            "mail.smtp.tls",
                            format!("`{other}`: use none, starttls or tls"),
                        );
                        SmtpTls::StartTls
                    }
                };
                let password = match load_secret(
                    s.password.as_deref(),
                    s.password_file.as_deref(),
                    self.base,
                    "mail.smtp password",
                ) {
                    Ok(p) => p,
                    Err(e) => {
                        self.err(
                            "mail.smtp",
                            e.replace("`secret`", "`password`")
                                .replace("`secret_file`", "`password_file`"),
                        );
                        None
                    }
                };
                if password.is_some() != s.username.is_some() {
                    self.err(
                        "mail.smtp",
                        "give both `username` and a password, or neither",
                    );
                }
                let port = s.port.unwrap_or(match tls {
                    SmtpTls::Tls => 465,
                    SmtpTls::StartTls => 587,
                    SmtpTls::None => 25,
                });
                MailTransport::Smtp(Smtp {
                    host: s.host,
                    port,
                    tls,
                    username: s.username,
                    password,
                    timeout: s.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(10)),
                })
            }
            (None, Some(dir)) => MailTransport::Dir(self.path(&dir)),
            _ => {
                self.err(
                    "mail",
                    "give exactly one of `smtp` (a server) or `dir` (a folder for .eml files)",
                );
                return None;
            }
        };
        Some(Mail {
            from: m.from,
            transport,
        })
    }

    fn upstream(&mut self, at: &str, url: &str) -> Option<Upstream> {
        let uri: http::Uri = match url.parse() {
            Ok(u) => u,
            Err(_) => {
                self.err(
                    at,
                    format!("`{url}` is not a URL; write e.g. http://127.0.0.1:9000"),
                );
                return None;
            }
        };
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                self.err(at, format!("`{url}` must start with http:// or https://"));
                return None;
            }
        };
        if uri.path() != "/" && !uri.path().is_empty() {
            self.err(at, format!("`{url}`: an upstream is an origin; paths are not rewritten, so leave the path out"));
            return None;
        }
        let host = uri
            .host()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Some(Upstream {
            addr,
            tls,
            sni: host,
            url: url.trim_end_matches('/').to_string(),
        })
    }

    fn upstreams(&mut self, u: Option<UpstreamFile>) -> Option<Upstreams> {
        match u {
            None => {
                self.err("", "`upstream` is missing: the URL of the app behind stepgate, e.g. upstream: \"http://127.0.0.1:9000\"");
                None
            }
            Some(UpstreamFile::One(url)) => Some(Upstreams {
                by_host: BTreeMap::new(),
                fallback: Some(self.upstream("upstream", &url)?),
                raw_path: false,
            }),
            Some(UpstreamFile::Full(full)) => {
                let raw_path = match full.forward_path.as_deref() {
                    None | Some("canonical") => false,
                    Some("raw") => true,
                    Some(other) => {
                        self.err("upstream.forward_path", format!("`{other}` is not a forward_path; use canonical (the default: the path as matched, encoded one way) or raw (the client's bytes, only when they read the same)"));
                        false
                    }
                };
                let mut map = full.hosts;
                if let Some(u) = full.url {
                    map.insert("*".into(), u);
                }
                if map.is_empty() {
                    self.err("upstream", "give `upstream.url` (or `upstream.hosts`)");
                    return None;
                }
                let mut u = self.upstreams(Some(UpstreamFile::PerHost(map)))?;
                u.raw_path = raw_path;
                Some(u)
            }
            Some(UpstreamFile::PerHost(map)) => {
                let mut by_host = BTreeMap::new();
                let mut fallback = None;
                let mut ok = true;
                for (host, url) in &map {
                    match self.upstream(&format!("upstream.{host}"), url) {
                        Some(up) if host == "*" => fallback = Some(up),
                        Some(up) => {
                            by_host.insert(host.to_ascii_lowercase(), up);
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(Upstreams {
                    by_host,
                    fallback,
                    raw_path: false,
                })
            }
        }
    }

    fn first_factor(&mut self, ff: Option<FirstFactorFile>) -> Option<FirstFactor> {
        let Some(ff) = ff else {
            self.err(
                "",
                "`first_factor` is missing: say how access tokens are verified (first_factor.jwt)",
            );
            return None;
        };
        let Some(jwt) = ff.jwt else {
            self.err("first_factor", "`first_factor.jwt` is missing: give `algorithms` and a key (`secret`, `public_key_file`, `jwks_file` or `jwks_url`)");
            return None;
        };
        let names = jwt
            .algorithms
            .clone()
            .unwrap_or_else(|| vec!["HS256".into()]);
        let mut algorithms = Vec::new();
        for (i, a) in names.iter().enumerate() {
            match a.parse::<jsonwebtoken::Algorithm>() {
                Ok(alg) => algorithms.push(alg),
                Err(_) => self.err(&format!("first_factor.jwt.algorithms[{i}]"), format!("unknown algorithm `{a}`; use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA (`none` is never accepted)")),
            }
        }
        if algorithms.is_empty() {
            self.err("first_factor.jwt.algorithms", "list at least one algorithm");
        }
        let symmetric = algorithms.iter().filter(|a| is_hmac(**a)).count();
        if symmetric != 0 && symmetric != algorithms.len() {
            self.err("first_factor.jwt.algorithms", "do not mix HS* with public-key algorithms: a public key must never be usable as an HMAC secret");
        }
        let given = [
            jwt.secret.is_some() || jwt.secret_file.is_some(),
            jwt.public_key_file.is_some(),
            jwt.jwks_file.is_some(),
            jwt.jwks_url.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            self.err("first_factor.jwt", "give exactly one key: `secret`/`secret_file` (HS*), `public_key_file`, `jwks_file` or `jwks_url`");
            return None;
        }
        let key = if jwt.secret.is_some() || jwt.secret_file.is_some() {
            if symmetric == 0 {
                self.err(
                    "first_factor.jwt.algorithms",
                    "a `secret` verifies HS256/384/512 only; list those algorithms",
                );
            }
            match load_secret(
                jwt.secret.as_deref(),
                jwt.secret_file.as_deref(),
                self.base,
                "first_factor.jwt",
            ) {
                Ok(Some(s)) => {
                    // RFC 7518 §3.2: an HMAC key at least as long as the hash.
                    // One captured token lets anyone brute-force a short key
                    // offline and then mint any user.
                    let need = algorithms
                        .iter()
                        .map(|a| match a {
                            jsonwebtoken::Algorithm::HS384 => 48,
                            jsonwebtoken::Algorithm::HS512 => 64,
                            _ => 32,
                        })
                        .max()
                        .unwrap_or(32);
                    if s.expose().len() < need {
                        self.err("first_factor.jwt", format!("the first-factor secret is {} bytes; {} needs at least {need} (RFC 7518 §3.2), or anyone holding one token can find it offline and sign in as anyone. Use the identity provider's full key", s.expose().len(), names.join("/")));
                    }
                    KeySource::Secret(s)
                }
                Ok(None) => return None,
                Err(e) => {
                    self.err("first_factor.jwt", e);
                    return None;
                }
            }
        } else {
            if symmetric != 0 {
                self.err(
                    "first_factor.jwt.algorithms",
                    "HS* algorithms need `secret`; a public key or JWKS verifies RS*/PS*/ES*/EdDSA",
                );
            }
            if let Some(p) = jwt.public_key_file {
                let p = self.path(&p);
                if !p.is_file() {
                    self.err(
                        "first_factor.jwt.public_key_file",
                        format!("{} does not exist", p.display()),
                    );
                }
                KeySource::PublicKeyFile(p)
            } else if let Some(p) = jwt.jwks_file {
                let p = self.path(&p);
                if !p.is_file() {
                    self.err(
                        "first_factor.jwt.jwks_file",
                        format!("{} does not exist", p.display()),
                    );
                }
                KeySource::JwksFile(p)
            } else {
                let url = jwt.jwks_url.unwrap_or_default();
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    self.err(
                        "first_factor.jwt.jwks_url",
                        format!("`{url}` must be an http(s) URL"),
                    );
                }
                KeySource::JwksUrl {
                    url,
                    refresh: jwt
                        .jwks_refresh
                        .map(|d| d.0)
                        .unwrap_or(Duration::from_secs(300)),
                }
            }
        };
        let d = ClaimNames::default();
        let c = ff.claims;
        let claims = ClaimNames {
            email: c.email.unwrap_or(d.email),
            emails: c.emails.unwrap_or(d.emails),
            email_verified: c.email_verified.unwrap_or(d.email_verified),
            phone: c.phone.unwrap_or(d.phone),
            username: c.username.unwrap_or(d.username),
        };
        Some(FirstFactor {
            claims,
            cookie: ff.cookie.unwrap_or_else(|| "access_token".into()),
            algorithms,
            key,
            issuer: jwt.issuer,
            audience: jwt.audience,
            login_url: ff.login_url,
            leeway: ff.leeway.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
        })
    }

    fn store(&mut self, s: StoreFile) -> Option<StoreSettings> {
        let kind = match s.kind.as_deref().unwrap_or("embedded") {
            "embedded" => StoreKind::Embedded {
                path: self.path(s.path.as_deref().unwrap_or("data/stepgate.redb")),
            },
            "memory" => StoreKind::Memory,
            "redis" => match s.url {
                Some(url) => StoreKind::Redis { url },
                None => {
                    self.err(
                        "store",
                        "`store.kind: redis` needs `store.url`, e.g. redis://127.0.0.1:6379/0",
                    );
                    return None;
                }
            },
            "redis_cluster" => match s.nodes {
                Some(nodes) if !nodes.is_empty() => StoreKind::RedisCluster { nodes },
                _ => {
                    self.err(
                        "store",
                        "`store.kind: redis_cluster` needs `store.nodes` (seed node URLs)",
                    );
                    return None;
                }
            },
            other => {
                self.err("store.kind", format!("unknown store kind `{other}`; use embedded, memory, redis or redis_cluster"));
                return None;
            }
        };
        let password = match load_secret(
            s.password.as_deref(),
            s.password_file.as_deref(),
            self.base,
            "store password",
        ) {
            Ok(p) => p,
            Err(e) => {
                self.err(
                    "store",
                    e.replace("`secret`", "`password`")
                        .replace("`secret_file`", "`password_file`"),
                );
                None
            }
        };
        let key_prefix = s.key_prefix.unwrap_or_else(|| "stepgate:".into());
        if key_prefix.contains(['{', '}']) {
            self.err("store.key_prefix", "the key prefix must not contain `{` or `}`: they would change Redis Cluster hash slots");
        }
        Some(StoreSettings {
            kind,
            password,
            timeout: s.timeout.map(|d| d.0).unwrap_or(Duration::from_millis(250)),
            key_prefix,
        })
    }
}

pub fn is_hmac(a: jsonwebtoken::Algorithm) -> bool {
    use jsonwebtoken::Algorithm::*;
    matches!(a, HS256 | HS384 | HS512)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn load_text(t: &str) -> Result<Settings, Vec<Diagnostic>> {
        from_str(Path::new("/tmp/gw.yaml"), t)
    }

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let s = load_text(&format!("upstream: http://127.0.0.1:9000\npolicy: p.yaml\nfirst_factor: {{ jwt: {{ secret: \"{SECRET}\" }} }}\nsigning: {{ secret: \"{SECRET}\" }}\n")).unwrap();
        assert_eq!(s.listen, vec!["127.0.0.1:8080"]);
        assert_eq!(s.lockout.max_failures, 5);
        assert_eq!(s.lockout.duration, Duration::from_secs(900));
        assert_eq!(s.lockout.ip_max_failures, 100);
        assert_eq!(s.lockout.max_duration, Duration::from_secs(86400));
        assert_eq!(s.lockout.max_consecutive, 20);
        assert_eq!(s.first_factor.cookie, "access_token");
        assert_eq!(s.store.timeout, Duration::from_millis(250));
        assert!(matches!(s.store.kind, StoreKind::Embedded { .. }));
        assert_eq!(s.upstreams.for_host("x").unwrap().addr, "127.0.0.1:9000");
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let e =
            load_text("upstream: http://127.0.0.1:9000\nlisten: \"127.0.0.1:1\"\nsigninq: {}\n")
                .unwrap_err();
        let s = e[0].to_string();
        assert!(
            s.starts_with("/tmp/gw.yaml:3:1: unknown field `signinq`"),
            "{s}"
        );
    }

    #[test]
    fn mixing_hmac_and_public_key_algorithms_is_refused() {
        let e = load_text(&format!("upstream: http://127.0.0.1:9000\npolicy: p.yaml\nfirst_factor:\n  jwt:\n    algorithms: [HS256, RS256]\n    secret: \"{SECRET}\"\nsigning: {{ secret: \"{SECRET}\" }}\n")).unwrap_err();
        assert!(
            e.iter()
                .any(|d| d.to_string().starts_with("/tmp/gw.yaml:5:17: do not mix")),
            "{e:?}"
        );
    }

    #[test]
    fn short_signing_secret_and_bad_addresses_are_reported_together() {
        let e = load_text("upstream: ftp://x\npolicy: p.yaml\nlisten: nowhere\nfirst_factor: { jwt: { secret: abc } }\nsigning: { secret: short }\n").unwrap_err();
        let all: Vec<String> = e.iter().map(|d| d.to_string()).collect();
        assert!(
            all.iter()
                .any(|s| s.contains(":3:9: `nowhere` is not an address")),
            "{all:?}"
        );
        assert!(
            all.iter()
                .any(|s| s.contains(":1:11: `ftp://x` must start with http://")),
            "{all:?}"
        );
        assert!(
            all.iter()
                .any(|s| s.contains("signing secret is too short")),
            "{all:?}"
        );
    }
}
