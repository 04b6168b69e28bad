//! The gateway config's YAML format: serde structs, unknown keys refused.
//! Only `build` reads them; the rest of stepgate sees `model::Settings`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::values::Dur;

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub(crate) enum UpstreamFile {
    One(String),
    Full(UpstreamFull),
    PerHost(BTreeMap<String, String>),
}

/// `upstream: { url: …, hosts: { … }, forward_path: canonical | raw }`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamFull {
    pub(crate) url: Option<String>,
    #[serde(default)]
    pub(crate) hosts: BTreeMap<String, String>,
    pub(crate) forward_path: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) listen: Option<OneOrMany>,
    pub(crate) tls: Option<TlsFile>,
    pub(crate) threads: Option<usize>,
    pub(crate) upstream: Option<UpstreamFile>,
    pub(crate) public_url: Option<String>,
    /// The host of requests that name none (HTTP/1.0 without Host).
    pub(crate) default_host: Option<String>,
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<String>,
    pub(crate) policy: Option<String>,
    pub(crate) first_factor: Option<FirstFactorFile>,
    #[serde(default)]
    pub(crate) store: StoreFile,
    pub(crate) signing: Option<SecretFile>,
    pub(crate) metrics: Option<MetricsFile>,
    #[serde(default)]
    pub(crate) pin: PinFile,
    #[serde(default)]
    pub(crate) lockout: LockoutFile,
    #[serde(default)]
    pub(crate) step_up: StepUpFile,
    #[serde(default)]
    pub(crate) pages: PagesFile,
    #[serde(default)]
    pub(crate) headers: HeadersFile,
    #[serde(default)]
    pub(crate) log: LogFile,
    #[serde(default)]
    pub(crate) timeouts: TimeoutsFile,
    pub(crate) mail: Option<MailFile>,
    pub(crate) api: Option<ApiFile>,
    #[serde(default)]
    pub(crate) assertion: AssertionFile,
    #[serde(default)]
    pub(crate) email_otp: EmailOtpFile,
    /// Unix socket where a new binary started with `serve -u` takes over the
    /// listeners on SIGQUIT.
    pub(crate) upgrade_sock: Option<String>,
    pub(crate) pid_file: Option<String>,
    /// CA certificates (PEM) trusted for `https://` upstreams, instead of the
    /// system's.
    pub(crate) upstream_ca: Option<String>,
    pub(crate) sms: Option<SmsFile>,
    #[serde(default)]
    pub(crate) security_questions: Vec<QuestionFile>,
    pub(crate) webhook: Option<WebhookFile>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct SmsFile {
    pub(crate) webhook_url: String,
    pub(crate) timeout: Option<Dur>,
    /// Sent as `Authorization: Bearer` to the SMS gateway.
    pub(crate) secret: Option<String>,
    pub(crate) secret_file: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuestionFile {
    pub(crate) id: String,
    pub(crate) question: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookFile {
    pub(crate) url: String,
    pub(crate) secret: Option<String>,
    pub(crate) secret_file: Option<String>,
    pub(crate) timeout: Option<Dur>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    pub(crate) cert: String,
    pub(crate) key: String,
    /// Send Strict-Transport-Security with this max-age (e.g. 1y = 365d).
    pub(crate) hsts: Option<Dur>,
}

/// `api:`: the back channel's secret, and LoginRadius wire compatibility.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiFile {
    pub(crate) secret: Option<String>,
    pub(crate) secret_file: Option<String>,
    /// LoginRadius's `apikey`: when set, LoginRadius-spelled calls must carry it.
    pub(crate) key: Option<String>,
    /// Serve `/identity/v2/…` at the root (never forwarded upstream).
    #[serde(default)]
    pub(crate) loginradius_root: bool,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretFile {
    pub(crate) secret: Option<String>,
    pub(crate) secret_file: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct FirstFactorFile {
    pub(crate) cookie: Option<String>,
    pub(crate) jwt: Option<JwtFile>,
    pub(crate) login_url: Option<String>,
    pub(crate) leeway: Option<Dur>,
    #[serde(default)]
    pub(crate) claims: ClaimsFile,
    pub(crate) introspection: Option<IntrospectionFile>,
    pub(crate) session_check: Option<SessionCheckFile>,
    pub(crate) oidc: Option<OidcFile>,
    pub(crate) trusted_header: Option<TrustedHeaderFile>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct IntrospectionFile {
    pub(crate) url: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: Option<String>,
    pub(crate) client_secret_file: Option<String>,
    pub(crate) cache: Option<Dur>,
    pub(crate) timeout: Option<Dur>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionCheckFile {
    pub(crate) url: String,
    pub(crate) cookies: Vec<String>,
    pub(crate) user: String,
    pub(crate) email: Option<String>,
    pub(crate) auth_time: Option<String>,
    pub(crate) cache: Option<Dur>,
    pub(crate) timeout: Option<Dur>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct OidcFile {
    pub(crate) issuer: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: Option<String>,
    pub(crate) client_secret_file: Option<String>,
    pub(crate) scopes: Option<Vec<String>>,
    pub(crate) session_ttl: Option<Dur>,
    pub(crate) starts_per_minute: Option<u32>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrustedHeaderFile {
    pub(crate) user: String,
    pub(crate) email: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClaimsFile {
    pub(crate) email: Option<String>,
    pub(crate) emails: Option<String>,
    pub(crate) email_verified: Option<String>,
    pub(crate) phone: Option<String>,
    pub(crate) username: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtFile {
    pub(crate) algorithms: Option<Vec<String>>,
    pub(crate) secret: Option<String>,
    pub(crate) secret_file: Option<String>,
    pub(crate) public_key_file: Option<String>,
    pub(crate) jwks_file: Option<String>,
    pub(crate) jwks_url: Option<String>,
    pub(crate) jwks_refresh: Option<Dur>,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreFile {
    pub(crate) kind: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) url: Option<String>,
    pub(crate) nodes: Option<Vec<String>>,
    pub(crate) timeout: Option<Dur>,
    pub(crate) key_prefix: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) password_file: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsFile {
    pub(crate) listen: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct PinFile {
    pub(crate) required: Option<bool>,
    pub(crate) login: Option<bool>,
    pub(crate) session_ttl: Option<Dur>,
    pub(crate) min_length: Option<usize>,
    pub(crate) max_length: Option<usize>,
    pub(crate) enroll_window: Option<Dur>,
    pub(crate) login_ttl: Option<Dur>,
    pub(crate) offer_setup: Option<bool>,
    pub(crate) forgot: Option<String>,
    pub(crate) reset_ttl: Option<Dur>,
    #[serde(default)]
    pub(crate) reset_urls: Vec<String>,
    pub(crate) auth_token_ttl: Option<Dur>,
    pub(crate) forgot_ip_limit: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct LockoutFile {
    pub(crate) max_failures: Option<u32>,
    pub(crate) window: Option<Dur>,
    pub(crate) duration: Option<Dur>,
    pub(crate) ip_max_failures: Option<u32>,
    pub(crate) max_duration: Option<Dur>,
    pub(crate) max_consecutive: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepUpFile {
    pub(crate) single_use_window: Option<Dur>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct PagesFile {
    pub(crate) templates: Option<String>,
    pub(crate) title: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeadersFile {
    pub(crate) user: Option<String>,
    pub(crate) email: Option<String>,
    pub(crate) amr: Option<String>,
    pub(crate) auth_time: Option<String>,
    pub(crate) rule: Option<String>,
    pub(crate) assertion: Option<String>,
}

/// Deadlines on slow clients.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutsFile {
    /// From an idle connection to the end of its next request head.
    pub(crate) request_head: Option<Dur>,
    /// For the body of a request to stepgate's own endpoints.
    pub(crate) reserved_body: Option<Dur>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogFile {
    pub(crate) level: Option<String>,
    pub(crate) format: Option<String>,
    /// One line per request (target `access`); audit events stay on.
    pub(crate) access: Option<bool>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssertionFile {
    pub(crate) key_file: Option<String>,
    pub(crate) previous_key_file: Option<String>,
    pub(crate) audience: Option<String>,
    pub(crate) issuer: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct MailFile {
    pub(crate) from: String,
    pub(crate) smtp: Option<SmtpFile>,
    pub(crate) dir: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct SmtpFile {
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
    pub(crate) tls: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) password_file: Option<String>,
    pub(crate) timeout: Option<Dur>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmailOtpFile {
    pub(crate) mode: Option<String>,
    pub(crate) length: Option<usize>,
    pub(crate) ttl: Option<Dur>,
    pub(crate) max_tries: Option<u32>,
    pub(crate) resend_cooldown: Option<Dur>,
    pub(crate) max_sends_per_hour: Option<u32>,
}

// ---------- internal model ----------
