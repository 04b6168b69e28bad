//! The sections that are mostly limits and durations: the listeners, the
//! trusted proxies, the signing secret, the PIN rules and the lockouts.

use std::time::Duration;

use ipnet::IpNet;

use super::Builder;
use crate::config::file::*;
use crate::config::model::*;
use crate::config::values::{load_secret, Secret};

/// The shortest secret accepted for signing, the API and webhooks (bytes).
pub(super) const DEFAULT_SIGNING_MIN: usize = 32;

impl Builder<'_> {
    pub(super) fn listen(&mut self, listen: Option<OneOrMany>) -> Vec<String> {
        let listen = match listen {
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
        listen
    }

    pub(super) fn trusted_proxies(&mut self, proxies: &[String]) -> Vec<IpNet> {
        let mut trusted_proxies = Vec::new();
        for (i, p) in proxies.iter().enumerate() {
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
        trusted_proxies
    }

    pub(super) fn signing(&mut self, signing: Option<SecretFile>) -> Option<Secret> {
        match signing {
            None => {
                self.err("", "`signing` is missing: give `signing.secret` (at least 32 bytes) or `signing.secret_file`; it signs step-up tokens and CSRF tokens");
                None
            }
            Some(s) => self.strong_secret(
                "signing",
                &s,
                &format!("the signing secret is too short; use at least {DEFAULT_SIGNING_MIN} random bytes (e.g. `openssl rand -hex 32`)"),
                "give `secret` or `secret_file`",
            ),
        }
    }

    /// A secret of at least [`DEFAULT_SIGNING_MIN`] bytes from `secret` or
    /// `secret_file` at `at`; `short` and `missing` say what is wrong.
    pub(super) fn strong_secret(
        &mut self,
        at: &str,
        s: &SecretFile,
        short: &str,
        missing: &str,
    ) -> Option<Secret> {
        match load_secret(s.secret.as_deref(), s.secret_file.as_deref(), self.base, at) {
            Ok(Some(sec)) if sec.expose().len() >= DEFAULT_SIGNING_MIN => Some(sec),
            Ok(Some(_)) => {
                self.err(at, short);
                None
            }
            Ok(None) => {
                self.err(at, missing);
                None
            }
            Err(e) => {
                self.err(at, e);
                None
            }
        }
    }

    pub(super) fn pin(&mut self, p: &PinFile) -> PinSettings {
        let pin = PinSettings {
            required: p.required.unwrap_or(false),
            login: p.login.unwrap_or(true),
            session_ttl: p
                .session_ttl
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(7 * 86400)),
            min_length: p.min_length.unwrap_or(4),
            max_length: p.max_length.unwrap_or(12),
            enroll_window: p
                .enroll_window
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(600)),
            login_ttl: p.login_ttl.map(|d| d.0).unwrap_or(Duration::from_secs(900)),
            offer_setup: p.offer_setup.unwrap_or(false),
            forgot: match p.forgot.as_deref() {
                None | Some("link") => ForgotMode::Link,
                Some("otp") => ForgotMode::Otp,
                Some(other) => {
                    self.err("pin.forgot", format!("`{other}`: use link or otp"));
                    ForgotMode::Link
                }
            },
            reset_ttl: p.reset_ttl.map(|d| d.0).unwrap_or(Duration::from_secs(900)),
            reset_urls: p.reset_urls.clone(),
            auth_token_ttl: p
                .auth_token_ttl
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(300)),
            forgot_ip_limit: p.forgot_ip_limit.unwrap_or(10),
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
        pin
    }

    pub(super) fn lockout(&mut self, l: &LockoutFile) -> Lockout {
        let lockout = Lockout {
            max_failures: l.max_failures.unwrap_or(5),
            window: l.window.map(|d| d.0).unwrap_or(Duration::from_secs(900)),
            duration: l.duration.map(|d| d.0).unwrap_or(Duration::from_secs(900)),
            ip_max_failures: l.ip_max_failures.unwrap_or(100),
            max_duration: l
                .max_duration
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(86400)),
            max_consecutive: l.max_consecutive.unwrap_or(20),
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
        lockout
    }
}
