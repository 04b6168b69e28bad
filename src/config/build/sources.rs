//! The first-factor sources besides JWTs: introspection, the app's own
//! session, stepgate's OIDC sign-in. Each is checked as far as can be
//! without the network (an IdP that is down at start is the runtime's
//! business: it fails closed then, it does not stop the gateway).

use std::time::Duration;

use super::Builder;
use crate::config::file::*;
use crate::config::model::*;
use crate::config::values::{load_secret, Secret};

fn is_http_url(u: &str) -> bool {
    (u.starts_with("http://") || u.starts_with("https://")) && u.len() > "https://".len()
}

impl Builder<'_> {
    fn client_secret(
        &mut self,
        at: &str,
        inline: Option<&str>,
        file: Option<&str>,
    ) -> Option<Secret> {
        match load_secret(inline, file, self.base, at) {
            Ok(Some(s)) if !s.expose().is_empty() => Some(s),
            Ok(_) => {
                self.err(at, "give `client_secret_file` (or `client_secret`)");
                None
            }
            Err(e) => {
                self.err(at, e);
                None
            }
        }
    }

    pub(super) fn introspection(&mut self, i: IntrospectionFile) -> Option<Introspection> {
        let at = "first_factor.introspection";
        if !is_http_url(&i.url) {
            self.err(
                &format!("{at}.url"),
                format!(
                    "`{}` is not an http(s) URL of an RFC 7662 introspection endpoint",
                    i.url
                ),
            );
        }
        let secret = self.client_secret(
            at,
            i.client_secret.as_deref(),
            i.client_secret_file.as_deref(),
        )?;
        let cache = i.cache.map(|d| d.0).unwrap_or(Duration::from_secs(60));
        if cache > Duration::from_secs(3600) {
            self.err(
                &format!("{at}.cache"),
                "at most 1h: a token revoked at the IdP must stop working soon",
            );
        }
        Some(Introspection {
            url: i.url,
            client_id: i.client_id,
            client_secret: secret,
            cache,
            timeout: i.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(5)),
        })
    }

    pub(super) fn session_check(&mut self, c: SessionCheckFile) -> Option<SessionCheck> {
        let at = "first_factor.session_check";
        if !is_http_url(&c.url) {
            self.err(
                &format!("{at}.url"),
                format!("`{}` is not an http(s) URL of the app", c.url),
            );
        }
        if c.cookies.is_empty() {
            self.err(&format!("{at}.cookies"), "name the app's session cookie(s), e.g. [\"PHPSESSID\"]; only these are sent to the url");
        }
        for (i, name) in c.cookies.iter().enumerate() {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if !ok {
                self.err(
                    &format!("{at}.cookies[{i}]"),
                    format!("`{name}` is not a cookie name"),
                );
            }
        }
        for (k, v) in [
            ("user", Some(&c.user)),
            ("email", c.email.as_ref()),
            ("auth_time", c.auth_time.as_ref()),
        ] {
            if let Some(v) = v {
                if !(v.is_empty() || v.starts_with('/')) {
                    self.err(
                        &format!("{at}.{k}"),
                        format!("`{v}` is not a JSON pointer; write e.g. \"/user/id\""),
                    );
                }
            }
        }
        let cache = c.cache.map(|d| d.0).unwrap_or(Duration::from_secs(30));
        if cache > Duration::from_secs(600) {
            self.err(
                &format!("{at}.cache"),
                "at most 10m: signing out of the app must end stepgate's view of the session soon",
            );
        }
        Some(SessionCheck {
            url: c.url,
            cookies: c.cookies,
            user: c.user,
            email: c.email,
            auth_time: c.auth_time,
            cache,
            timeout: c.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(5)),
        })
    }

    pub(super) fn oidc(&mut self, o: OidcFile) -> Option<Oidc> {
        let at = "first_factor.oidc";
        let issuer = o.issuer.trim_end_matches('/').to_string();
        if !is_http_url(&issuer) {
            self.err(&format!("{at}.issuer"), format!("`{}` is not an http(s) issuer URL (discovery is at {{issuer}}/.well-known/openid-configuration)", o.issuer));
        }
        let secret = self.client_secret(
            at,
            o.client_secret.as_deref(),
            o.client_secret_file.as_deref(),
        )?;
        let scopes = o
            .scopes
            .unwrap_or_else(|| vec!["openid".into(), "email".into()]);
        if !scopes.iter().any(|s| s == "openid") {
            self.err(&format!("{at}.scopes"), "must include `openid`");
        }
        let session_ttl = o
            .session_ttl
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(8 * 3600));
        if session_ttl < Duration::from_secs(60) {
            self.err(&format!("{at}.session_ttl"), "must be at least 1m");
        }
        let starts_per_minute = o.starts_per_minute.unwrap_or(120);
        if starts_per_minute == 0 {
            self.err(&format!("{at}.starts_per_minute"), "must be at least 1");
        }
        Some(Oidc {
            issuer,
            client_id: o.client_id,
            client_secret: secret,
            scopes,
            session_ttl,
            starts_per_minute,
        })
    }
}
