//! First factor: verify the access token that the app or its identity
//! provider issued, and turn it into a [`Principal`]. Verification is pure
//! (keys live in memory); fetching a JWKS is the only I/O and runs in the
//! background, never on a request.
//!
//! Must never: accept an algorithm outside the configured list, use a public
//! key as an HMAC secret, or parse an oversized token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

use crate::auth::principal::{AuthError, Principal, MAX_TOKEN_LEN};
use crate::config::{is_hmac, ClaimNames, FirstFactor, KeySource};
use crate::util::digest::digest_b64;

/// The claims stepgate reads; `email`, `emails` and `email_verified` come
/// from the claim names configured in `first_factor.claims`.
struct Claims {
    sub: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    auth_time: Option<i64>,
    sid: Option<String>,
    jti: Option<String>,
    email: Option<String>,
    emails: Vec<String>,
    email_verified: Option<bool>,
    username: Option<String>,
    phone: Option<String>,
}

type Map = serde_json::Map<String, serde_json::Value>;

impl Claims {
    fn from_map(mut m: Map, names: &ClaimNames) -> Claims {
        let mut s = |k: &str| match m.remove(k) {
            Some(serde_json::Value::String(v)) => Some(v),
            _ => None,
        };
        let (sub, sid, jti, email) = (s("sub"), s("sid"), s("jti"), s(&names.email));
        let (username, phone) = (s(&names.username), s(&names.phone));
        let int = |k: &str| {
            m.get(k)
                .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
        };
        let emails = match m.get(&names.emails) {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Claims {
            sub,
            exp: int("exp"),
            nbf: int("nbf"),
            iat: int("iat"),
            auth_time: int("auth_time"),
            sid,
            jti,
            email,
            emails,
            email_verified: m.get(&names.email_verified).and_then(|v| v.as_bool()),
            username,
            phone,
        }
    }
}

/// Keys currently trusted, by `kid`; `anonymous` holds keys without one.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, DecodingKey>,
    anonymous: Vec<DecodingKey>,
}

impl KeySet {
    fn from_jwks(text: &str) -> Result<KeySet, String> {
        let set: JwkSet =
            serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut ks = KeySet::default();
        for jwk in &set.keys {
            let key =
                DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key in JWKS: {e}"))?;
            match &jwk.common.key_id {
                Some(kid) => {
                    ks.by_kid.insert(kid.clone(), key);
                }
                None => ks.anonymous.push(key),
            }
        }
        if ks.by_kid.is_empty() && ks.anonymous.is_empty() {
            return Err("the JWKS has no keys".into());
        }
        Ok(ks)
    }

    fn from_pem(pem: &[u8], algorithms: &[Algorithm]) -> Result<KeySet, String> {
        use Algorithm::*;
        let alg = algorithms[0];
        let key = match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => DecodingKey::from_rsa_pem(pem),
            ES256 | ES384 => DecodingKey::from_ec_pem(pem),
            EdDSA => DecodingKey::from_ed_pem(pem),
            HS256 | HS384 | HS512 => return Err("a PEM key cannot verify HS* tokens".into()),
        }
        .map_err(|e| format!("cannot use the public key for {alg:?}: {e}"))?;
        Ok(KeySet {
            by_kid: HashMap::new(),
            anonymous: vec![key],
        })
    }
}

pub struct Verifier {
    algorithms: Vec<Algorithm>,
    validation: Validation,
    keys: ArcSwap<KeySet>,
    leeway: i64,
    claims: ClaimNames,
    pub jwks_url: Option<String>,
    /// Unix time of the last refresh triggered by an unknown `kid`.
    last_forced_refresh: AtomicI64,
    /// Tokens verified in the last minute, so a public-key signature
    /// (0.2-0.4 ms for RS256/ES256) is checked once per token, not per request.
    cache: crate::util::cache::Expiring<String, Principal>,
    /// Keys of stepgate's own PIN-login sessions (`sgs.` tokens), when PIN
    /// login is on.
    sessions: Option<Arc<crate::auth::tokens::Keys>>,
}

/// How long a verified token is remembered (its own expiry still applies).
const VERIFIED_CACHE_SECS: i64 = 60;
const VERIFIED_CACHE_MAX: usize = 20_000;

impl Verifier {
    /// Build from config. A `jwks_url` is fetched by the caller (see
    /// [`fetch_jwks`]) and installed with [`Verifier::install_jwks`].
    pub fn new(ff: &FirstFactor) -> Result<Verifier, String> {
        let keys = match &ff.key {
            KeySource::Secret(s) => KeySet {
                by_kid: HashMap::new(),
                anonymous: vec![DecodingKey::from_secret(s.expose())],
            },
            KeySource::PublicKeyFile(p) => {
                let pem =
                    std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                KeySet::from_pem(&pem, &ff.algorithms)?
            }
            KeySource::JwksFile(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                KeySet::from_jwks(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
            KeySource::JwksUrl { .. } | KeySource::None => KeySet::default(),
        };
        // Without a JWT source the list is empty and every JWT is refused
        // (AlgorithmNotAllowed) before any key is looked for.
        let mut validation =
            Validation::new(ff.algorithms.first().copied().unwrap_or(Algorithm::RS256));
        validation.algorithms = ff.algorithms.clone();
        // Time claims are checked against the caller's clock in `verify`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims =
            ["exp".to_string(), "sub".to_string()].into_iter().collect();
        match &ff.issuer {
            Some(i) => validation.set_issuer(&[i]),
            None => validation.iss = None,
        }
        match &ff.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        Ok(Verifier {
            algorithms: ff.algorithms.clone(),
            validation,
            keys: ArcSwap::from_pointee(keys),
            leeway: ff.leeway.as_secs() as i64,
            claims: ff.claims.clone(),
            jwks_url: match &ff.key {
                KeySource::JwksUrl { url, .. } => Some(url.clone()),
                _ => None,
            },
            last_forced_refresh: AtomicI64::new(0),
            cache: crate::util::cache::Expiring::new(VERIFIED_CACHE_MAX),
            sessions: None,
        })
    }

    /// Also accept stepgate's own PIN-login sessions, signed with `keys`.
    pub fn with_sessions(mut self, keys: Arc<crate::auth::tokens::Keys>) -> Verifier {
        self.sessions = Some(keys);
        self
    }

    pub fn claim_names(&self) -> &ClaimNames {
        &self.claims
    }

    pub fn leeway(&self) -> i64 {
        self.leeway
    }

    pub fn install_jwks(&self, text: &str) -> Result<usize, String> {
        let ks = KeySet::from_jwks(text)?;
        let n = ks.by_kid.len() + ks.anonymous.len();
        self.keys.store(Arc::new(ks));
        // A rotated-out key must stop opening doors at once.
        self.cache.clear();
        Ok(n)
    }

    /// Whether an unknown `kid` may trigger a refresh now (at most one every
    /// 30 seconds, so forged `kid`s cannot make stepgate hammer the IdP).
    pub fn may_force_refresh(&self, now: i64) -> bool {
        let last = self.last_forced_refresh.load(Ordering::Relaxed);
        now - last >= 30
            && self
                .last_forced_refresh
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Verify an access token at time `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLarge);
        }
        if let Some(t) = token.strip_prefix(crate::auth::tokens::SESSION_PREFIX) {
            return match &self.sessions {
                Some(k) => k.decode_session(t, now),
                None => Err(AuthError::Malformed),
            };
        }
        if let Some(p) = self.cache.get(token, now) {
            return Ok(p);
        }
        let p = self.verify_uncached(token, now)?;
        // Remembered for a minute at most, and never past the token's expiry.
        let until = (now + VERIFIED_CACHE_SECS).min(p.expires + self.leeway + 1);
        self.cache.insert(token.to_string(), p.clone(), until, now);
        Ok(p)
    }

    /// Full verification, no cache (benchmarks measure both).
    pub fn verify_uncached(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let keys = self.keys.load();
        let candidates: Vec<&DecodingKey> = match &header.kid {
            Some(kid) => match keys.by_kid.get(kid) {
                Some(k) => vec![k],
                None if keys.anonymous.is_empty()
                    || !is_hmac(header.alg) && !keys.by_kid.is_empty() =>
                {
                    return Err(AuthError::UnknownKey)
                }
                None => keys.anonymous.iter().collect(),
            },
            None => keys.anonymous.iter().chain(keys.by_kid.values()).collect(),
        };
        if candidates.is_empty() {
            return Err(AuthError::UnknownKey);
        }
        let mut last = AuthError::BadSignature;
        for key in candidates {
            match decode::<Map>(token, key, &self.validation) {
                Ok(data) => {
                    return self.principal(token, Claims::from_map(data.claims, &self.claims), now)
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature => AuthError::BadSignature,
                        K::InvalidIssuer => return Err(AuthError::WrongIssuer),
                        K::InvalidAudience => return Err(AuthError::WrongAudience),
                        K::MissingRequiredClaim(c) if c == "sub" => {
                            return Err(AuthError::MissingClaim("sub"))
                        }
                        K::MissingRequiredClaim(_) => return Err(AuthError::MissingClaim("exp")),
                        K::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
                        _ => AuthError::Malformed,
                    };
                }
            }
        }
        Err(last)
    }

    fn principal(&self, token: &str, c: Claims, now: i64) -> Result<Principal, AuthError> {
        let sub = c
            .sub
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or(AuthError::MissingClaim("sub"))?;
        let exp = c.exp.ok_or(AuthError::MissingClaim("exp"))?;
        if now > exp + self.leeway {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = c.nbf {
            if now + self.leeway < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        let session = match (c.sid, c.jti) {
            (Some(sid), _) if !sid.is_empty() => format!("sid:{sid}"),
            (_, Some(jti)) if !jti.is_empty() => format!("jti:{jti}"),
            _ => format!("tok:{}", digest_b64(token.as_bytes())),
        };
        let mut emails = Vec::new();
        let mut otp_emails = Vec::new();
        let unverified = c.email_verified == Some(false);
        for (i, e) in c.email.iter().chain(c.emails.iter()).enumerate() {
            let Some(e) = crate::auth::principal::email_address(e) else {
                continue;
            };
            if !emails.contains(&e) {
                if !(i == 0 && c.email.is_some() && unverified) {
                    otp_emails.push(e.clone());
                }
                emails.push(e);
            }
        }
        Ok(Principal {
            source: "jwt",
            sub,
            otp_emails,
            email: emails.first().cloned(),
            emails,
            session,
            login_time: c.auth_time.or(c.iat),
            expires: exp,
            username: c
                .username
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty() && u.len() <= 256),
            phone: c
                .phone
                .and_then(|p| crate::auth::principal::normalize_phone(&p)),
            pin_session: None,
        })
    }
}

/// Fetch a JWKS document (start-up and background refresh).
pub async fn fetch_jwks(url: &str) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    resp.text().await.map_err(|e| format!("reading {url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::Secret;
    use base64::Engine;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use std::time::Duration;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn ff(algs: Vec<Algorithm>, key: KeySource) -> FirstFactor {
        FirstFactor {
            claims: Default::default(),
            cookie: "access_token".into(),
            algorithms: algs,
            key,
            issuer: Some("idp".into()),
            audience: None,
            login_url: None,
            introspection: None,
            session_check: None,
            oidc: None,
            trusted_header: None,
            leeway: Duration::from_secs(30),
        }
    }

    fn hs() -> Verifier {
        Verifier::new(&ff(
            vec![Algorithm::HS256],
            KeySource::Secret(Secret::new(KEY)),
        ))
        .unwrap()
    }

    fn mint(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(KEY),
        )
        .unwrap()
    }

    #[test]
    fn valid_token_yields_principal_bound_to_sid() {
        let t = mint(
            serde_json::json!({"sub":"u1","exp":2000,"iat":900,"iss":"idp","sid":"s9","email":"A@x.io","emails":["b@x.io"]}),
        );
        let p = hs().verify(&t, 1000).unwrap();
        assert_eq!(p.sub, "u1");
        assert_eq!(p.session, "sid:s9");
        assert_eq!(p.emails, vec!["a@x.io", "b@x.io"]);
        assert_eq!(p.login_time, Some(900));
    }

    #[test]
    fn time_issuer_and_signature_are_enforced() {
        let v = hs();
        let t = mint(serde_json::json!({"sub":"u","exp":1000,"iss":"idp"}));
        assert_eq!(v.verify(&t, 1031), Err(AuthError::Expired));
        assert!(v.verify(&t, 1029).is_ok());
        let t = mint(serde_json::json!({"sub":"u","exp":5000,"nbf":2000,"iss":"idp"}));
        assert_eq!(v.verify(&t, 1000), Err(AuthError::NotYetValid));
        let t = mint(serde_json::json!({"sub":"u","exp":5000,"iss":"evil"}));
        assert_eq!(v.verify(&t, 1000), Err(AuthError::WrongIssuer));
        let mut t = mint(serde_json::json!({"sub":"u","exp":5000,"iss":"idp"}));
        t.pop();
        t.push('A');
        assert!(matches!(
            v.verify(&t, 1000),
            Err(AuthError::BadSignature) | Err(AuthError::Malformed)
        ));
    }

    #[test]
    fn alg_none_and_unlisted_algorithms_are_refused() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"u","exp":9999999999}"#)
        );
        assert!(hs().verify(&none, 1000).is_err());
        let t = encode(
            &Header::new(Algorithm::HS512),
            &serde_json::json!({"sub":"u","exp":5000,"iss":"idp"}),
            &EncodingKey::from_secret(KEY),
        )
        .unwrap();
        assert_eq!(hs().verify(&t, 1000), Err(AuthError::AlgorithmNotAllowed));
    }

    #[test]
    fn oversized_tokens_are_refused_before_parsing() {
        assert_eq!(
            hs().verify(&"a".repeat(MAX_TOKEN_LEN + 1), 0),
            Err(AuthError::TooLarge)
        );
    }
}
