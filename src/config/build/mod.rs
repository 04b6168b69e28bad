//! From the file format to the model: every check that can be made at
//! start-up, with each problem at its `FILE:LINE:COL`. The sections with
//! most to check (mail, upstreams, first factor, store) are in `sections`.

mod limits;
mod sections;
mod sources;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::*;
use super::model::*;
use super::spans::{Diagnostic, Spans};
use super::values::load_secret;
use limits::DEFAULT_SIGNING_MIN;

pub(super) struct Builder<'a> {
    pub(super) spans: &'a Spans,
    pub(super) diags: Vec<Diagnostic>,
    pub(super) base: &'a Path,
}

impl Builder<'_> {
    pub(super) fn err(&mut self, path: &str, msg: impl Into<String>) {
        self.diags.push(self.spans.diag(path, msg));
    }

    pub(super) fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    pub(super) fn build(&mut self, f: FileConfig) -> Option<Settings> {
        let listen = self.listen(f.listen);
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
        let trusted_proxies = self.trusted_proxies(&f.trusted_proxies);
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
        let signing = self.signing(f.signing);
        let metrics_listen = f.metrics.map(|m| m.listen);
        if let Some(m) = &metrics_listen {
            if m.parse::<std::net::SocketAddr>().is_err() {
                self.err(
                    "metrics.listen",
                    format!("`{m}` is not an address such as 127.0.0.1:9100"),
                );
            }
        }
        let pin = self.pin(&f.pin);
        let lockout = self.lockout(&f.lockout);
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
        let api = f.api.unwrap_or_default();
        let api_secret = match (&api.secret, &api.secret_file) {
            (None, None) => None,
            _ => self.strong_secret(
                "api",
                &SecretFile {
                    secret: api.secret.clone(),
                    secret_file: api.secret_file.clone(),
                },
                &format!(
                    "the API secret is too short; use at least {DEFAULT_SIGNING_MIN} random bytes"
                ),
                "give `secret` or `secret_file`",
            ),
        };
        let api_key = match api.key.as_deref().map(str::trim) {
            Some("") => {
                self.err("api.key", "the API key is empty; remove it or give one");
                None
            }
            Some(k) => Some(k.to_string()),
            None => None,
        };
        let loginradius_root = api.loginradius_root;
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
            let secret = self.strong_secret(
                "webhook",
                &SecretFile {
                    secret: w.secret.clone(),
                    secret_file: w.secret_file.clone(),
                },
                &format!("the webhook secret is too short; use at least {DEFAULT_SIGNING_MIN} random bytes"),
                "give `secret` or `secret_file`: receivers check the HMAC signature with it",
            )?;
            Some(Webhook {
                url: w.url,
                secret,
                timeout: w.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(5)),
            })
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
            api_key,
            loginradius_root,
            assertion,
            upstream_ca,
            upgrade_sock,
            pid_file,
            sms,
            security_questions,
            webhook,
        })
    }
}
