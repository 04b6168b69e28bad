//! Tokens stepgate mints itself: the step-up token (the
//! SecondFactorValidationToken) and the CSRF token of its forms. Each kind is
//! signed with its own key derived from `signing.secret`, so one kind can
//! never be replayed as another. Verification is pure and allocation-light;
//! comparisons of MACs are constant-time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::auth::principal::Principal;
use crate::config::values::Secret;
use crate::policy::Factor;
use crate::util::digest::digest_b64;

type HmacSha256 = Hmac<Sha256>;

fn derive(secret: &Secret, purpose: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret.expose()).expect("HMAC takes any key length");
    mac.update(b"stepgate-key-v1:");
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Random identifier, 128 bits, base64url.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    B64.encode(b)
}

/// A secret token (ResetToken, PINAuthToken, PIN session token): 256 bits,
/// base64url. Only its digest is stored.
pub fn secret_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    B64.encode(b)
}

/// The store name of a secret token: a digest, so a leaked store does not
/// hand out usable tokens.
pub fn token_digest(token: &str) -> String {
    digest_b64(token.as_bytes())[..32].to_string()
}

/// Tokens of stepgate's own PIN-login sessions start with this, so the
/// first-factor verifier tells them apart without parsing.
pub const SESSION_PREFIX: &str = "sgs.";
const SESSION_TYP: &str = "stepgate+session";

/// What stepgate's own session (after a PIN login) carries: the profile the
/// PIN session was opened with.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SessionClaims {
    sub: String,
    /// The PIN session it came from.
    psid: String,
    iat: i64,
    /// When it was issued, in Unix ms (step-downs are exact to the ms);
    /// absent in sessions minted before, which are judged by `iat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat_ms: Option<i64>,
    exp: i64,
    /// The first-factor login the PIN session was opened under.
    login_time: Option<i64>,
    /// What opened it: absent for a PIN login, `oidc` for an OIDC sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    src: Option<String>,
    #[serde(default)]
    emails: Vec<String>,
    #[serde(default)]
    otp_emails: Vec<String>,
    username: Option<String>,
    phone: Option<String>,
    typ: String,
}

/// A request id: unique, not secret, so no getrandom syscall per request.
pub fn request_id() -> String {
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    B64.encode(b)
}

/// What a valid step-up token proves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepUpClaims {
    pub sub: String,
    /// Hash of the first-factor session binding ([`Principal::session`]).
    pub ssn: String,
    pub amr: Vec<String>,
    pub auth_time: i64,
    pub iat: i64,
    /// When it was issued, in Unix ms; absent in tokens minted before
    /// milliseconds (see [`StepUpClaims::issued_ms`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat_ms: Option<i64>,
    pub exp: i64,
    pub jti: String,
    typ: String,
    /// The transaction this step-up approved (`step_up.bind`), when bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<crate::auth::binding::Txn>,
}

impl StepUpClaims {
    pub fn factor(&self) -> Option<Factor> {
        self.amr.first().and_then(|a| Factor::from_amr(a))
    }

    /// The issue time that invalidations are compared with (Unix ms): the
    /// token's own, or, for a token without one, the first ms of its `iat`
    /// second (conservative: an invalidation in that second ends it).
    pub fn issued_ms(&self) -> i64 {
        self.iat_ms
            .unwrap_or_else(|| crate::auth::revocations::legacy_issued_ms(self.iat))
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum StepUpTokenError {
    Malformed,
    BadSignature,
    Expired,
    /// Issued to another user or another first-factor session.
    WrongBinding,
}

const STEPUP_TYP: &str = "stepgate+su";

pub struct Keys {
    stepup_enc: EncodingKey,
    stepup_dec: DecodingKey,
    stepup_validation: Validation,
    csrf: Vec<u8>,
    otp: Vec<u8>,
    /// Seals kept requests (AES-256-GCM): only the gateways hold it.
    kept: ring::aead::LessSafeKey,
    session_enc: EncodingKey,
    session_dec: DecodingKey,
    /// Step-up tokens whose signature was checked, so a session's repeated
    /// requests skip base64 + HMAC + JSON (~3.5 µs); expiry and binding are
    /// still checked on every request.
    verified: crate::util::cache::Expiring<String, Verified>,
}

/// A step-up token whose signature was checked, with the first-factor
/// session it was found bound to: the same session again is compared as
/// it is, not hashed again.
#[derive(Clone)]
struct Verified {
    claims: StepUpClaims,
    session: String,
}

const VERIFIED_MAX: usize = 20_000;

/// The binding hash of a first-factor session.
pub fn session_hash(p: &Principal) -> String {
    digest_b64(p.session.as_bytes())[..22].to_string()
}

impl Keys {
    pub fn new(signing: &Secret) -> Keys {
        let su = derive(signing, "step-up-token");
        let ses = derive(signing, "pin-login-session");
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims = ["exp".to_string(), "sub".to_string()].into_iter().collect();
        Keys {
            stepup_enc: EncodingKey::from_secret(&su),
            stepup_dec: DecodingKey::from_secret(&su),
            stepup_validation: v,
            csrf: derive(signing, "csrf"),
            otp: derive(signing, "email-otp"),
            kept: ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(
                    &ring::aead::AES_256_GCM,
                    &derive(signing, "kept-request"),
                )
                .expect("a 32-byte key"),
            ),
            session_enc: EncodingKey::from_secret(&ses),
            session_dec: DecodingKey::from_secret(&ses),
            verified: crate::util::cache::Expiring::new(VERIFIED_MAX),
        }
    }

    /// Encrypt and authenticate a kept request; `id` is bound in (a sealed
    /// record cannot be moved to another id). Nonce ‖ ciphertext ‖ tag.
    pub fn seal_kept(&self, id: &str, plain: &[u8]) -> Vec<u8> {
        use ring::aead::{Aad, Nonce, NONCE_LEN};
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let mut buf = plain.to_vec();
        self.kept
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.as_bytes()),
                &mut buf,
            )
            .expect("sealing cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    /// [`Keys::seal_kept`] undone; None when the record was altered, sealed
    /// for another id or by another key.
    pub fn open_kept(&self, id: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        use ring::aead::{Aad, Nonce, NONCE_LEN};
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (n, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).ok()?;
        let mut buf = ct.to_vec();
        let plain = self
            .kept
            .open_in_place(nonce, Aad::from(id.as_bytes()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }

    /// Mint stepgate's own first-factor session after a PIN login, issued
    /// at `now_ms` (Unix ms).
    pub fn issue_session(
        &self,
        profile: &crate::auth::principal::Profile,
        psid: &str,
        login_time: Option<i64>,
        now_ms: i64,
        ttl_secs: i64,
    ) -> (String, i64) {
        self.issue_session_from(profile, psid, login_time, now_ms, ttl_secs, None)
    }

    /// [`issue_session`](Self::issue_session) for a sign-in that is not a
    /// PIN login: `src` names it (`oidc`), and the principal says so.
    pub fn issue_session_from(
        &self,
        profile: &crate::auth::principal::Profile,
        psid: &str,
        login_time: Option<i64>,
        now_ms: i64,
        ttl_secs: i64,
        src: Option<&str>,
    ) -> (String, i64) {
        let now = now_ms.div_euclid(1000);
        let c = SessionClaims {
            sub: profile.sub.clone(),
            psid: psid.to_string(),
            iat: now,
            iat_ms: Some(now_ms),
            exp: now + ttl_secs,
            login_time,
            src: src.map(str::to_string),
            emails: profile.emails.clone(),
            otp_emails: profile.otp_emails.clone(),
            username: profile.username.clone(),
            phone: profile.phone.clone(),
            typ: SESSION_TYP.to_string(),
        };
        let jwt = encode(&Header::new(Algorithm::HS256), &c, &self.session_enc)
            .expect("HS256 encoding cannot fail");
        (format!("{SESSION_PREFIX}{jwt}"), c.exp)
    }

    /// Verify stepgate's own session (without its `sgs.` prefix).
    pub fn decode_session(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Principal, crate::auth::principal::AuthError> {
        use crate::auth::principal::AuthError;
        let c = decode::<SessionClaims>(token, &self.session_dec, &self.stepup_validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed,
            })?
            .claims;
        if c.typ != SESSION_TYP {
            return Err(AuthError::Malformed);
        }
        if now >= c.exp {
            return Err(AuthError::Expired);
        }
        Ok(Principal {
            source: if c.src.as_deref() == Some("oidc") {
                "oidc"
            } else {
                "pin"
            },
            email: c.emails.first().cloned(),
            emails: c.emails,
            otp_emails: c.otp_emails,
            session: format!("ps:{}", c.psid),
            login_time: c.login_time,
            expires: c.exp,
            username: c.username,
            phone: c.phone,
            pin_session: Some((
                c.psid,
                c.iat_ms
                    .unwrap_or_else(|| crate::auth::revocations::legacy_issued_ms(c.iat)),
            )),
            sub: c.sub,
        })
    }

    /// A CSRF token for forms shown before sign-in (forgot and reset PIN,
    /// PIN login), bound to a random nonce kept in a SameSite=Strict cookie.
    pub fn anon_csrf(&self, nonce: &str, now: i64) -> String {
        let exp = now + 3600;
        format!("{exp}.{}", self.anon_mac(nonce, exp))
    }

    fn anon_mac(&self, nonce: &str, exp: i64) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.csrf).expect("any key length");
        mac.update(b"anon\0");
        mac.update(nonce.as_bytes());
        mac.update(b"\0");
        mac.update(exp.to_string().as_bytes());
        B64.encode(&mac.finalize().into_bytes()[..18])
    }

    pub fn check_anon_csrf(&self, nonce: &str, token: &str, now: i64) -> bool {
        let Some((exp, mac)) = token.split_once('.') else {
            return false;
        };
        let Ok(exp) = exp.parse::<i64>() else {
            return false;
        };
        if nonce.len() < 16 || now > exp || exp > now + 3600 + 60 {
            return false;
        }
        bool::from(self.anon_mac(nonce, exp).as_bytes().ct_eq(mac.as_bytes()))
    }

    /// Mint a step-up token for `p` at `now` (Unix seconds), valid for
    /// `ttl_secs`: [`Keys::issue_stepup_ms`] at the start of that second,
    /// for callers that only know seconds (benchmarks, tests).
    pub fn issue_stepup(
        &self,
        p: &Principal,
        factor: Factor,
        now: i64,
        ttl_secs: i64,
    ) -> (String, StepUpClaims) {
        self.issue_stepup_ms(p, factor, now.saturating_mul(1000), ttl_secs)
    }

    /// Mint a step-up token for `p`, issued at `now_ms` (Unix ms, what
    /// invalidations are compared with), valid for `ttl_secs`.
    pub fn issue_stepup_ms(
        &self,
        p: &Principal,
        factor: Factor,
        now_ms: i64,
        ttl_secs: i64,
    ) -> (String, StepUpClaims) {
        self.issue_bound_stepup_ms(p, factor, now_ms, ttl_secs, None)
    }

    /// [`Keys::issue_stepup_ms`] approving one transaction: the digest of
    /// the bound values (`step_up.bind`).
    pub fn issue_bound_stepup_ms(
        &self,
        p: &Principal,
        factor: Factor,
        now_ms: i64,
        ttl_secs: i64,
        txn: Option<crate::auth::binding::Txn>,
    ) -> (String, StepUpClaims) {
        let now = now_ms.div_euclid(1000);
        let claims = StepUpClaims {
            sub: p.sub.clone(),
            ssn: session_hash(p),
            amr: vec![factor.amr().to_string()],
            auth_time: now,
            iat: now,
            iat_ms: Some(now_ms),
            exp: now + ttl_secs,
            jti: random_id(),
            typ: STEPUP_TYP.to_string(),
            txn,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.stepup_enc)
            .expect("HS256 encoding cannot fail");
        (token, claims)
    }

    /// Verify a step-up token's signature, expiry and binding to `p`.
    /// Check a step-up token's signature and expiry only, for back ends that
    /// validate it without the user's session (`/api/stepup/validate`).
    pub fn decode_stepup(&self, token: &str, now: i64) -> Result<StepUpClaims, StepUpTokenError> {
        if token.len() > 2048 {
            return Err(StepUpTokenError::Malformed);
        }
        let c = decode::<StepUpClaims>(token, &self.stepup_dec, &self.stepup_validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => StepUpTokenError::BadSignature,
                _ => StepUpTokenError::Malformed,
            })?
            .claims;
        if c.typ != STEPUP_TYP {
            return Err(StepUpTokenError::Malformed);
        }
        if now >= c.exp {
            return Err(StepUpTokenError::Expired);
        }
        Ok(c)
    }

    pub fn verify_stepup(
        &self,
        token: &str,
        p: &Principal,
        now: i64,
    ) -> Result<StepUpClaims, StepUpTokenError> {
        if token.len() > 2048 {
            return Err(StepUpTokenError::Malformed);
        }
        let (c, bound_session) = match self.verified.get(token, now) {
            Some(v) => (v.claims, Some(v.session)),
            None => {
                let c = decode::<StepUpClaims>(token, &self.stepup_dec, &self.stepup_validation)
                    .map_err(|e| match e.kind() {
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                            StepUpTokenError::BadSignature
                        }
                        _ => StepUpTokenError::Malformed,
                    })?
                    .claims;
                if c.typ != STEPUP_TYP {
                    return Err(StepUpTokenError::Malformed);
                }
                (c, None)
            }
        };
        if now >= c.exp {
            return Err(StepUpTokenError::Expired);
        }
        // Whether this is the session the token was found bound to is no
        // secret from the one presenting it; the hash is what must match.
        let session_bound = match &bound_session {
            Some(s) if *s == p.session => subtle::Choice::from(1),
            _ => c.ssn.as_bytes().ct_eq(session_hash(p).as_bytes()),
        };
        let bound = c.sub.as_bytes().ct_eq(p.sub.as_bytes()) & session_bound;
        if !bool::from(bound) {
            return Err(StepUpTokenError::WrongBinding);
        }
        if bound_session.is_none() {
            let v = Verified {
                claims: c.clone(),
                session: p.session.clone(),
            };
            self.verified.insert(token.to_string(), v, c.exp, now);
        }
        Ok(c)
    }

    /// A CSRF token for forms of the session `p`, valid for an hour.
    pub fn csrf_token(&self, p: &Principal, now: i64) -> String {
        let exp = now + 3600;
        format!("{exp}.{}", self.csrf_mac(p, exp))
    }

    fn csrf_mac(&self, p: &Principal, exp: i64) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.csrf).expect("any key length");
        mac.update(p.sub.as_bytes());
        mac.update(b"\0");
        mac.update(p.session.as_bytes());
        mac.update(b"\0");
        mac.update(exp.to_string().as_bytes());
        B64.encode(&mac.finalize().into_bytes()[..18])
    }

    /// The stored form of an email code: an HMAC bound to user and address.
    pub fn otp_mac(&self, sub: &str, email: &str, code: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.otp).expect("any key length");
        for part in [sub, email, code] {
            mac.update(part.as_bytes());
            mac.update(b"\0");
        }
        B64.encode(mac.finalize().into_bytes())
    }

    pub fn check_csrf(&self, p: &Principal, token: &str, now: i64) -> bool {
        let Some((exp, mac)) = token.split_once('.') else {
            return false;
        };
        let Ok(exp) = exp.parse::<i64>() else {
            return false;
        };
        if now > exp || exp > now + 3600 + 60 {
            return false;
        }
        bool::from(self.csrf_mac(p, exp).as_bytes().ct_eq(mac.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(sub: &str, session: &str) -> Principal {
        Principal {
            source: "jwt",
            username: None,
            phone: None,
            pin_session: None,
            otp_emails: vec![],
            sub: sub.into(),
            email: None,
            emails: vec![],
            session: session.into(),
            login_time: None,
            expires: 0,
        }
    }

    fn keys() -> Keys {
        Keys::new(&Secret::new("x".repeat(32)))
    }

    #[test]
    fn stepup_token_is_bound_to_user_and_session() {
        let k = keys();
        let alice = principal("alice", "sid:1");
        let (t, c) = k.issue_stepup(&alice, Factor::Pin, 1000, 300);
        assert_eq!(k.verify_stepup(&t, &alice, 1100).unwrap(), c);
        assert_eq!(
            k.verify_stepup(&t, &principal("bob", "sid:1"), 1100),
            Err(StepUpTokenError::WrongBinding)
        );
        assert_eq!(
            k.verify_stepup(&t, &principal("alice", "sid:2"), 1100),
            Err(StepUpTokenError::WrongBinding)
        );
        assert_eq!(
            k.verify_stepup(&t, &alice, 1300),
            Err(StepUpTokenError::Expired)
        );
    }

    #[test]
    fn a_verified_token_stays_bound_to_its_session_whichever_came_first() {
        // The cache remembers the session a token was found bound to; a
        // wrong session tried first must not be what it remembers.
        let k = keys();
        let alice = principal("alice", "sid:1");
        let thief = principal("alice", "sid:9");
        let (t, c) = k.issue_stepup(&alice, Factor::Pin, 1000, 300);
        for _ in 0..2 {
            assert_eq!(
                k.verify_stepup(&t, &thief, 1100),
                Err(StepUpTokenError::WrongBinding)
            );
            assert_eq!(k.verify_stepup(&t, &alice, 1100).unwrap(), c);
        }
        assert_eq!(
            k.verify_stepup(&t, &alice, 1300),
            Err(StepUpTokenError::Expired)
        );
    }

    #[test]
    fn tampered_or_foreign_key_tokens_are_refused() {
        let k = keys();
        let alice = principal("alice", "sid:1");
        let (t, _) = k.issue_stepup(&alice, Factor::Pin, 1000, 300);
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = B64.encode(br#"{"sub":"alice","ssn":"x","amr":["pin"],"auth_time":1000,"iat":1000,"exp":99999,"jti":"j","typ":"stepgate+su"}"#);
        parts[1] = &forged;
        assert_eq!(
            k.verify_stepup(&parts.join("."), &alice, 1100),
            Err(StepUpTokenError::BadSignature)
        );
        let other = Keys::new(&Secret::new("y".repeat(32)));
        assert_eq!(
            other.verify_stepup(&t, &alice, 1100),
            Err(StepUpTokenError::BadSignature)
        );
    }

    #[test]
    fn csrf_tokens_are_bound_and_expire() {
        let k = keys();
        let a = principal("alice", "sid:1");
        let t = k.csrf_token(&a, 1000);
        assert!(k.check_csrf(&a, &t, 1000));
        assert!(!k.check_csrf(&principal("alice", "sid:2"), &t, 1000));
        assert!(!k.check_csrf(&a, &t, 1000 + 3601));
        assert!(!k.check_csrf(&a, "garbage", 1000));
    }

    #[test]
    fn pin_login_sessions_round_trip_and_refuse_tampering() {
        let k = keys();
        let prof = crate::auth::principal::Profile {
            sub: "alice".into(),
            emails: vec!["a@x.io".into()],
            otp_emails: vec!["a@x.io".into()],
            ..Default::default()
        };
        let (t, exp) = k.issue_session(&prof, "ps1", Some(900), 1_000_250, 600);
        assert_eq!(exp, 1600);
        let rest = t.strip_prefix(SESSION_PREFIX).unwrap();
        let p = k.decode_session(rest, 1100).unwrap();
        assert_eq!(p.sub, "alice");
        assert_eq!(
            p.pin_session,
            Some(("ps1".into(), 1_000_250)),
            "issued at, in ms"
        );
        assert_eq!(p.login_time, Some(900));
        assert_eq!(p.email.as_deref(), Some("a@x.io"));
        assert_eq!(
            k.decode_session(rest, 1600),
            Err(crate::auth::principal::AuthError::Expired)
        );
        // A step-up token is not a session, even though both are HS256.
        let (su, _) = k.issue_stepup(&principal("alice", "s"), Factor::Pin, 1000, 300);
        assert!(k.decode_session(&su, 1100).is_err());
        let other = Keys::new(&Secret::new("y".repeat(32)));
        assert_eq!(
            other.decode_session(rest, 1100),
            Err(crate::auth::principal::AuthError::BadSignature)
        );
    }

    #[test]
    fn anonymous_csrf_is_bound_to_its_nonce() {
        let k = keys();
        let t = k.anon_csrf("nonce-nonce-nonce-1", 1000);
        assert!(k.check_anon_csrf("nonce-nonce-nonce-1", &t, 1000));
        assert!(!k.check_anon_csrf("nonce-nonce-nonce-2", &t, 1000));
        assert!(!k.check_anon_csrf("short", &k.anon_csrf("short", 1000), 1000));
        assert!(!k.check_anon_csrf("nonce-nonce-nonce-1", &t, 1000 + 3601));
    }

    #[test]
    fn step_up_tokens_carry_their_issue_time_in_ms() {
        let k = keys();
        let alice = principal("alice", "sid:1");
        let (t, c) = k.issue_stepup_ms(&alice, Factor::Pin, 1_000_250, 300);
        assert_eq!((c.iat, c.auth_time, c.exp), (1000, 1000, 1300));
        assert_eq!(c.issued_ms(), 1_000_250);
        assert_eq!(k.decode_stepup(&t, 1100).unwrap().issued_ms(), 1_000_250);
    }

    #[test]
    fn tokens_from_before_milliseconds_count_as_issued_at_the_start_of_their_second() {
        let k = keys();
        let alice = principal("alice", "sid:1");
        let old = serde_json::json!({
            "sub": "alice", "ssn": session_hash(&alice), "amr": ["pin"],
            "auth_time": 1000, "iat": 1000, "exp": 1300, "jti": "j", "typ": STEPUP_TYP,
        });
        let t = encode(&Header::new(Algorithm::HS256), &old, &k.stepup_enc).unwrap();
        let c = k.verify_stepup(&t, &alice, 1100).unwrap();
        assert_eq!(c.iat_ms, None);
        assert_eq!(c.issued_ms(), 1_000_000);
        let old_session = serde_json::json!({
            "sub": "alice", "psid": "ps1", "iat": 1000, "exp": 1600,
            "login_time": null, "username": null, "phone": null, "typ": SESSION_TYP,
        });
        let t = encode(&Header::new(Algorithm::HS256), &old_session, &k.session_enc).unwrap();
        let p = k.decode_session(&t, 1100).unwrap();
        assert_eq!(p.pin_session, Some(("ps1".into(), 1_000_000)));
    }
}
