//! Where "already signed in" comes from, besides JWTs: a fronting SSO
//! proxy's header, RFC 7662 introspection of opaque tokens, and the app's own
//! session checked by asking the app. A request's user is the first source
//! that answers with one, in this order:
//! trusted header, stepgate's own session (PIN login, OIDC), JWT,
//! introspection, session check.
//!
//! Answers are cached (bounded, never past what the source said), so the
//! hot path asks the IdP or the app once per token or session per cache
//! period. A source that does not answer yields `AuthError::Unavailable`:
//! routes that need a user fail closed on it. This module never decides
//! access; it only says who the user is.

use crate::auth::principal::email_address;
use serde_json::Value;

use crate::auth::first_factor::Verifier;
use crate::auth::principal::{AuthError, Principal};
use crate::config::{FirstFactor, Introspection, SessionCheck, TrustedHeader};
use crate::util::cache::Expiring;
use crate::util::digest::sha256_hex;
use crate::util::metrics;

/// What a request presents, as the edge read it before stripping anything.
#[derive(Debug, Default, Clone)]
pub struct Presented {
    /// Bearer token or first-factor cookie (a JWT, an `sgs.` session, or
    /// an opaque token).
    pub token: Option<String>,
    /// Only the cookies `session_check.cookies` names, as `a=1; b=2`.
    pub app_cookies: Option<String>,
    /// `trusted_header`'s user and email, from a trusted peer only.
    pub trusted_user: Option<(String, Option<String>)>,
}

/// Answers of a source, by a digest of what was presented.
type Answers = Expiring<String, Result<Principal, AuthError>>;

/// The first-factor sources of one gateway snapshot.
pub struct Sources {
    introspection: Option<(Introspection, Answers)>,
    session_check: Option<(SessionCheck, Answers)>,
    trusted_header: Option<TrustedHeader>,
    jwt: bool,
    http: reqwest::Client,
}

/// How many answers each cache keeps.
const CACHE_MAX: usize = 100_000;
/// A "not signed in" answer is remembered this long (a flood of one bad
/// token must not become a flood at the IdP).
const NEGATIVE_SECS: i64 = 5;

fn count(source: &'static str, result: &'static str) {
    metrics::FIRST_FACTOR
        .with_label_values(&[source, result])
        .inc();
}

impl Sources {
    pub fn new(ff: &FirstFactor) -> Result<Sources, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("first-factor HTTP client: {e}"))?;
        Ok(Sources {
            introspection: ff
                .introspection
                .clone()
                .map(|i| (i, Expiring::new(CACHE_MAX))),
            session_check: ff
                .session_check
                .clone()
                .map(|c| (c, Expiring::new(CACHE_MAX))),
            trusted_header: ff.trusted_header.clone(),
            jwt: !matches!(ff.key, crate::config::KeySource::None),
            http,
        })
    }

    pub fn trusted_header(&self) -> Option<&TrustedHeader> {
        self.trusted_header.as_ref()
    }

    pub fn session_cookies(&self) -> Option<&[String]> {
        self.session_check
            .as_ref()
            .map(|(c, _)| c.cookies.as_slice())
    }

    /// The user this request presents, from the first source that answers.
    /// Errors: the most telling refusal (an unreachable source wins, so a
    /// down IdP is a 503, not a sign-in loop).
    pub async fn authenticate(
        &self,
        verifier: &Verifier,
        p: &Presented,
        now: i64,
    ) -> Result<Principal, AuthError> {
        // Set by the edge only when `trusted_header` is configured and the
        // peer is a trusted proxy.
        if let Some((user, email)) = &p.trusted_user {
            count("trusted_header", "admitted");
            let q = trusted_principal(user, email.as_deref(), now);
            return self.same_user_as_the_app_session(q, p, now).await;
        }
        let mut refusal = AuthError::Missing;
        let keep = |e: AuthError, refusal: &mut AuthError| {
            let rank = |e: &AuthError| match e {
                AuthError::Missing => 0,
                AuthError::Unavailable(_) => 3,
                AuthError::Expired | AuthError::Inactive | AuthError::Revoked => 2,
                _ => 1,
            };
            if rank(&e) > rank(refusal) {
                *refusal = e;
            }
        };
        if let Some(t) = p.token.as_deref() {
            let own = t.starts_with(crate::auth::tokens::SESSION_PREFIX);
            let jwt_shaped = t.bytes().filter(|b| *b == b'.').count() == 2;
            let judged = if own || (self.jwt && jwt_shaped) || self.introspection.is_none() {
                Some(verifier.verify(t, now))
            } else if let Some((cfg, cache)) = &self.introspection {
                Some(self.introspect(cfg, cache, verifier, t, now).await)
            } else {
                None
            };
            match judged {
                Some(Ok(q)) => return self.same_user_as_the_app_session(q, p, now).await,
                Some(Err(e)) => keep(e, &mut refusal),
                None => {}
            }
        }
        if let (Some((cfg, cache)), Some(cookies)) = (&self.session_check, p.app_cookies.as_deref())
        {
            match self.check_session(cfg, cache, cookies, now).await {
                Ok(p) => return Ok(p),
                Err(e) => keep(e, &mut refusal),
            }
        }
        Err(refusal)
    }

    /// A user admitted by another source than `session_check`, on a request
    /// that also carries the app's session cookies: the app acts on those,
    /// so they must be this user's (asked of the app, cached as any check).
    /// Another user's is refused; one the app does not know, or no check
    /// configured, changes nothing; an app that does not answer fails closed.
    async fn same_user_as_the_app_session(
        &self,
        q: Principal,
        p: &Presented,
        now: i64,
    ) -> Result<Principal, AuthError> {
        let (Some((cfg, cache)), Some(cookies)) = (&self.session_check, p.app_cookies.as_deref())
        else {
            return Ok(q);
        };
        match self.check_session(cfg, cache, cookies, now).await {
            Ok(app) if app.sub != q.sub => {
                tracing::info!(target: "audit", event = "two_users", user = %q.sub, app_user = %app.sub, "the app's session is another user's; refused");
                Err(AuthError::TwoUsers)
            }
            Err(e @ AuthError::Unavailable(_)) => Err(e),
            _ => Ok(q),
        }
    }

    async fn introspect(
        &self,
        cfg: &Introspection,
        cache: &Answers,
        verifier: &Verifier,
        token: &str,
        now: i64,
    ) -> Result<Principal, AuthError> {
        if token.len() > crate::auth::principal::MAX_TOKEN_LEN {
            return Err(AuthError::TooLarge);
        }
        let key = sha256_hex(token.as_bytes());
        if let Some(answer) = cache.get(&key, now) {
            count("introspection", "cached");
            return answer;
        }
        let sent = self
            .http
            .post(&cfg.url)
            .basic_auth(
                &cfg.client_id,
                Some(String::from_utf8_lossy(cfg.client_secret.expose())),
            )
            .header("Accept", "application/json")
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .timeout(cfg.timeout)
            .send()
            .await;
        let body: Value = match sent {
            Ok(r) if r.status().is_success() => match r.json().await {
                Ok(v) => v,
                Err(e) => return unavailable("introspection", &e.to_string()),
            },
            Ok(r) => {
                return unavailable(
                    "introspection",
                    &format!("the endpoint answered {}", r.status()),
                )
            }
            Err(e) => return unavailable("introspection", &e.to_string()),
        };
        let answer = introspection_principal(&body, verifier.claim_names(), verifier.leeway(), now);
        let until = match &answer {
            Ok(p) => (now + cfg.cache.as_secs() as i64).min(p.expires + 1),
            Err(_) => now + NEGATIVE_SECS,
        };
        cache.insert(key, answer.clone(), until, now);
        count(
            "introspection",
            if answer.is_ok() {
                "admitted"
            } else {
                "refused"
            },
        );
        answer
    }

    async fn check_session(
        &self,
        cfg: &SessionCheck,
        cache: &Answers,
        cookies: &str,
        now: i64,
    ) -> Result<Principal, AuthError> {
        let key = sha256_hex(cookies.as_bytes());
        if let Some(answer) = cache.get(&key, now) {
            count("session_check", "cached");
            return answer;
        }
        let sent = self
            .http
            .get(&cfg.url)
            .header("Cookie", cookies)
            .header("Accept", "application/json")
            .timeout(cfg.timeout)
            .send()
            .await;
        let answer = match sent {
            Ok(r) if r.status() == 401 || r.status() == 403 => Err(AuthError::Inactive),
            Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                Ok(v) => session_principal(&v, cfg, &key, now),
                Err(e) => {
                    return unavailable("session_check", &format!("the answer is not JSON: {e}"))
                }
            },
            Ok(r) => {
                return unavailable("session_check", &format!("the app answered {}", r.status()))
            }
            Err(e) => return unavailable("session_check", &e.to_string()),
        };
        let until = match &answer {
            Ok(_) => now + cfg.cache.as_secs() as i64,
            Err(_) => now + NEGATIVE_SECS.min(cfg.cache.as_secs() as i64).max(1),
        };
        cache.insert(key, answer.clone(), until, now);
        count(
            "session_check",
            if answer.is_ok() {
                "admitted"
            } else {
                "refused"
            },
        );
        answer
    }
}

fn unavailable(source: &'static str, why: &str) -> Result<Principal, AuthError> {
    tracing::warn!(target: "stepgate", source, error = why, "first-factor source did not answer; failing closed");
    count(source, "unavailable");
    Err(AuthError::Unavailable(source))
}

fn trusted_principal(user: &str, email: Option<&str>, now: i64) -> Principal {
    let email = email.and_then(email_address);
    let emails: Vec<String> = email.iter().cloned().collect();
    Principal {
        sub: user.to_string(),
        otp_emails: emails.clone(),
        email,
        emails,
        // The fronting proxy's session is not visible: step-ups are bound
        // to the user at this gateway.
        session: format!("th:{}", &sha256_hex(user.as_bytes())[..32]),
        login_time: None,
        expires: now + 300,
        username: None,
        phone: None,
        pin_session: None,
        source: "trusted_header",
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn int_at(v: &Value, pointer: &str) -> Option<i64> {
    let x = v.pointer(pointer)?;
    x.as_i64()
        .or_else(|| x.as_f64().map(|f| f as i64))
        .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
}

/// RFC 7662 §2.2: `active` must be `true`; `exp` and `nbf` are checked
/// here as well (an IdP's clock or cache may lag).
pub fn introspection_principal(
    body: &Value,
    claims: &crate::config::ClaimNames,
    leeway: i64,
    now: i64,
) -> Result<Principal, AuthError> {
    if body.get("active") != Some(&Value::Bool(true)) {
        return Err(AuthError::Inactive);
    }
    let sub = body
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(AuthError::MissingClaim("sub"))?;
    let exp = body.get("exp").and_then(Value::as_i64);
    if exp.is_some_and(|e| now > e + leeway) {
        return Err(AuthError::Expired);
    }
    if body
        .get("nbf")
        .and_then(Value::as_i64)
        .is_some_and(|n| now + leeway < n)
    {
        return Err(AuthError::NotYetValid);
    }
    let email = body
        .get(&claims.email)
        .and_then(Value::as_str)
        .and_then(email_address);
    let verified = body.get(&claims.email_verified).and_then(Value::as_bool) != Some(false);
    let mut emails: Vec<String> = email.iter().cloned().collect();
    if let Some(more) = body.get(&claims.emails).and_then(Value::as_array) {
        for e in more
            .iter()
            .filter_map(Value::as_str)
            .filter_map(email_address)
        {
            if !emails.contains(&e) {
                emails.push(e);
            }
        }
    }
    let otp_emails = emails
        .iter()
        .filter(|e| verified || Some(*e) != email.as_ref())
        .cloned()
        .collect();
    let session = match body.get("sid").and_then(Value::as_str) {
        Some(sid) => format!("sid:{sid}"),
        None => match body.get("jti").and_then(Value::as_str) {
            Some(j) => format!("jti:{j}"),
            None => format!(
                "it:{}",
                &sha256_hex(format!("{sub}\0{}", exp.unwrap_or(0)).as_bytes())[..32]
            ),
        },
    };
    Ok(Principal {
        sub: sub.to_string(),
        otp_emails,
        email,
        emails,
        session,
        login_time: body
            .get("auth_time")
            .and_then(Value::as_i64)
            .or_else(|| body.get("iat").and_then(Value::as_i64)),
        expires: exp.unwrap_or(now + 300),
        username: body
            .get(&claims.username)
            .and_then(Value::as_str)
            .map(str::to_string),
        phone: body
            .get(&claims.phone)
            .and_then(Value::as_str)
            .map(str::to_string),
        pin_session: None,
        source: "introspection",
    })
}

/// The app's 200 answer, read through the configured JSON pointers.
pub fn session_principal(
    body: &Value,
    cfg: &SessionCheck,
    session_key: &str,
    now: i64,
) -> Result<Principal, AuthError> {
    let sub = match body.pointer(&cfg.user) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        // A 200 that names nobody is a signed-out answer, not a user "".
        _ => return Err(AuthError::MissingClaim("user")),
    };
    let email = cfg
        .email
        .as_deref()
        .and_then(|p| str_at(body, p))
        .and_then(email_address);
    let emails: Vec<String> = email.iter().cloned().collect();
    Ok(Principal {
        sub,
        otp_emails: emails.clone(),
        email,
        emails,
        // Step-ups are bound to this app session: a new login needs a new step-up.
        session: format!("app:{}", &session_key[..32]),
        login_time: cfg.auth_time.as_deref().and_then(|p| int_at(body, p)),
        // The app says nothing of expiry: the answer holds for the cache
        // period (the principal's own expiry only bounds caches above it).
        expires: now + cfg.cache.as_secs() as i64 + 300,
        username: None,
        phone: None,
        pin_session: None,
        source: "session_check",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn introspection_needs_active_true_and_a_subject_and_checks_expiry() {
        let c = crate::config::ClaimNames::default();
        let ok = json!({"active": true, "sub": "alice", "exp": 2000, "email": "a@x.test", "auth_time": 900});
        let p = introspection_principal(&ok, &c, 0, 1000).unwrap();
        assert_eq!(
            (p.sub.as_str(), p.login_time, p.expires, p.source),
            ("alice", Some(900), 2000, "introspection")
        );
        assert_eq!(p.email.as_deref(), Some("a@x.test"));
        for bad in [
            json!({"active": false, "sub": "alice"}),
            json!({"active": "true", "sub": "a"}),
            json!({"sub": "a"}),
        ] {
            assert_eq!(
                introspection_principal(&bad, &c, 0, 1000).unwrap_err(),
                AuthError::Inactive,
                "{bad}"
            );
        }
        assert_eq!(
            introspection_principal(&json!({"active": true}), &c, 0, 1000).unwrap_err(),
            AuthError::MissingClaim("sub")
        );
        assert_eq!(
            introspection_principal(
                &json!({"active": true, "sub": "a", "exp": 999}),
                &c,
                0,
                1000
            )
            .unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn a_session_answer_is_read_through_its_pointers() {
        let cfg = SessionCheck {
            url: "http://x".into(),
            cookies: vec!["sid".into()],
            user: "/user/id".into(),
            email: Some("/user/email".into()),
            auth_time: Some("/user/login_at".into()),
            cache: Duration::from_secs(30),
            timeout: Duration::from_secs(1),
        };
        let key = sha256_hex(b"sid=1");
        let p = session_principal(
            &json!({"user": {"id": 42, "email": "b@x.test", "login_at": "77"}}),
            &cfg,
            &key,
            100,
        )
        .unwrap();
        assert_eq!(
            (p.sub.as_str(), p.login_time, p.source),
            ("42", Some(77), "session_check")
        );
        assert!(p.session.starts_with("app:"));
        assert!(session_principal(&json!({"user": {"id": ""}}), &cfg, &key, 100).is_err());
        assert!(session_principal(&json!({}), &cfg, &key, 100).is_err());
    }
}
