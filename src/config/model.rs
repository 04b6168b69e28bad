//! The validated internal model the rest of stepgate runs on: durations
//! parsed, secrets loaded, addresses and URLs checked. Nothing downstream
//! re-parses strings from the file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::values::Secret;

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
    JwksUrl {
        url: String,
        refresh: Duration,
    },
    /// No JWT source: bearer tokens are opaque (introspection) or absent.
    None,
}

/// RFC 7662 token introspection of opaque access tokens.
#[derive(Clone, Debug)]
pub struct Introspection {
    pub url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// An active answer is reused this long, never past the token's `exp`.
    pub cache: Duration,
    pub timeout: Duration,
}

/// The app's own session, checked by asking the app.
#[derive(Clone, Debug)]
pub struct SessionCheck {
    pub url: String,
    /// Only these cookies are sent to `url` (and they identify the session).
    pub cookies: Vec<String>,
    /// JSON pointers (RFC 6901) into the 200 answer.
    pub user: String,
    pub email: Option<String>,
    pub auth_time: Option<String>,
    pub cache: Duration,
    pub timeout: Duration,
}

/// stepgate signs browsers in itself (authorization code + PKCE).
#[derive(Clone, Debug)]
pub struct Oidc {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    /// How long stepgate's own session after an OIDC sign-in lives.
    pub session_ttl: Duration,
    /// Sign-ins one client address (an IPv6 /64) may start per minute.
    pub starts_per_minute: u32,
}

/// The user from headers a fronting SSO proxy sets; believed only from
/// `trusted_proxies`.
#[derive(Clone, Debug)]
pub struct TrustedHeader {
    pub user: String,
    pub email: Option<String>,
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
    pub introspection: Option<Introspection>,
    pub session_check: Option<SessionCheck>,
    pub oidc: Option<Oidc>,
    pub trusted_header: Option<TrustedHeader>,
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
    /// `api.key`: LoginRadius's `apikey`, checked on LoginRadius-spelled calls.
    pub api_key: Option<String>,
    /// `api.loginradius_root`: `/identity/v2/…` answered at the root.
    pub loginradius_root: bool,
    pub assertion: AssertionSettings,
    pub upstream_ca: Option<PathBuf>,
    pub upgrade_sock: PathBuf,
    pub pid_file: PathBuf,
    pub sms: Option<Sms>,
    pub security_questions: Vec<Question>,
    pub webhook: Option<Webhook>,
}
