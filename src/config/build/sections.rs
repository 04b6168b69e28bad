//! The config sections with most to check: mail, upstreams, the first
//! factor's keys, the store.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::file::*;
use super::super::model::*;

use super::super::is_hmac;
use super::super::values::load_secret;
use super::Builder;

type JwtParts = (
    Vec<jsonwebtoken::Algorithm>,
    KeySource,
    Option<String>,
    Option<String>,
);

impl Builder<'_> {
    pub(super) fn mail(&mut self, m: MailFile) -> Option<Mail> {
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

    pub(super) fn upstream(&mut self, at: &str, url: &str) -> Option<Upstream> {
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

    pub(super) fn upstreams(&mut self, u: Option<UpstreamFile>) -> Option<Upstreams> {
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

    pub(super) fn first_factor(&mut self, ff: Option<FirstFactorFile>) -> Option<FirstFactor> {
        let Some(ff) = ff else {
            self.err(
                "",
                "`first_factor` is missing: say how access tokens are verified (first_factor.jwt)",
            );
            return None;
        };
        let others = ff.introspection.is_some()
            || ff.session_check.is_some()
            || ff.oidc.is_some()
            || ff.trusted_header.is_some();
        let (algorithms, key, issuer, audience) = match ff.jwt {
            Some(jwt) => self.jwt(jwt)?,
            None if others => (Vec::new(), KeySource::None, None, None),
            None => {
                self.err("first_factor", "say where the signed-in user comes from: `first_factor.jwt` (algorithms and a key), `introspection`, `session_check`, `oidc` or `trusted_header`");
                return None;
            }
        };
        let introspection = ff.introspection.and_then(|i| self.introspection(i));
        let session_check = ff.session_check.and_then(|c| self.session_check(c));
        let oidc = ff.oidc.and_then(|o| self.oidc(o));
        let trusted_header = ff.trusted_header.map(|t| TrustedHeader {
            user: t.user,
            email: t.email,
        });
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
            issuer,
            audience,
            introspection,
            session_check,
            oidc,
            trusted_header,
            login_url: ff.login_url,
            leeway: ff.leeway.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
        })
    }

    /// The JWT source: (algorithms, key, issuer, audience).
    fn jwt(&mut self, jwt: JwtFile) -> Option<JwtParts> {
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
        Some((algorithms, key, jwt.issuer, jwt.audience))
    }

    /// A Redis URL the client can use (parsed, not connected: a Redis that
    /// is down at start is the store outage's business, not the config's).
    fn redis_url(&mut self, key: &str, url: &str) {
        use redis::IntoConnectionInfo;
        if url.into_connection_info().is_err() {
            // The message goes to logs: never with the password in it.
            let shown = match (url.find("://"), url.rfind('@')) {
                (Some(s), Some(at)) if at > s => format!("{}://…{}", &url[..s], &url[at..]),
                _ => url.to_string(),
            };
            self.err(
                key,
                format!("`{shown}` is not a Redis URL; use redis://[:PASSWORD@]HOST:PORT/DB, rediss://… for TLS, or unix:///PATH"),
            );
        }
    }

    pub(super) fn store(&mut self, s: StoreFile) -> Option<StoreSettings> {
        let kind = match s.kind.as_deref().unwrap_or("embedded") {
            "embedded" => StoreKind::Embedded {
                path: self.path(s.path.as_deref().unwrap_or("data/stepgate.redb")),
            },
            "memory" => StoreKind::Memory,
            "redis" => match s.url {
                Some(url) => {
                    self.redis_url("store.url", &url);
                    StoreKind::Redis { url }
                }
                None => {
                    self.err(
                        "store",
                        "`store.kind: redis` needs `store.url`, e.g. redis://127.0.0.1:6379/0",
                    );
                    return None;
                }
            },
            "redis_cluster" => match s.nodes {
                Some(nodes) if !nodes.is_empty() => {
                    for n in &nodes {
                        self.redis_url("store.nodes", n);
                    }
                    StoreKind::RedisCluster { nodes }
                }
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
