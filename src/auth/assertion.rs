//! The signed assertion upstream apps can verify instead of trusting bare
//! headers: a short-lived ES256 JWT in `X-Stepgate-Assertion`, its keys
//! published at `/.stepgate/jwks.json` (current and, during a rotation, the
//! previous one). Identical claims within a few seconds reuse one signature,
//! so a busy session does not pay an ECDSA signature per request.
//!
//! Must never: sign with a key that is not in the published JWKS, or reuse an
//! assertion for a different user, session, rule, method or path.

use std::hash::{BuildHasher, Hash};
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Seconds an assertion is valid.
pub const LIFETIME: i64 = 30;
/// Seconds a signed assertion is reused for identical claims.
pub const REUSE: i64 = 5;
const CACHE_MAX: usize = 10_000;

struct SigningKey {
    kid: String,
    /// Parsed once: jsonwebtoken's `encode` parses its key again for every
    /// signature (~60 % of an assertion's signing cost).
    signer: p256::ecdsa::SigningKey,
    public: serde_json::Value,
}

/// Load a PKCS#8 P-256 key, creating and keeping one (mode 0600) if `create`.
fn load_key(path: &Path, create: bool) -> Result<SigningKey, String> {
    if !path.exists() {
        if !create {
            return Err(format!("{} does not exist", path.display()));
        }
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        write_private(path, pem.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        tracing::info!(target: "stepgate", path = %path.display(), "generated a new assertion signing key");
    }
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let key = EncodingKey::from_ec_pem(&pem)
        .map_err(|e| format!("{}: not a PKCS#8 P-256 private key: {e}", path.display()))?;
    let signer = {
        use p256::pkcs8::DecodePrivateKey;
        let text =
            std::str::from_utf8(&pem).map_err(|_| format!("{}: not a PEM file", path.display()))?;
        p256::ecdsa::SigningKey::from_pkcs8_pem(text)
            .map_err(|e| format!("{}: not a PKCS#8 P-256 private key: {e}", path.display()))?
    };
    let jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let AlgorithmParameters::EllipticCurve(ec) = &jwk.algorithm else {
        return Err(format!("{}: not an EC key", path.display()));
    };
    // RFC 7638 thumbprint: members in lexicographic order, no spaces.
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        ec.x, ec.y
    );
    let kid = B64.encode(Sha256::digest(canonical.as_bytes()));
    let public = serde_json::json!({"kty": "EC", "crv": "P-256", "x": ec.x, "y": ec.y, "kid": kid, "use": "sig", "alg": "ES256"});
    Ok(SigningKey {
        kid,
        signer,
        public,
    })
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// What an assertion says.
#[derive(Serialize, Hash, Clone, Debug)]
pub struct Claims<'a> {
    pub sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
    pub amr: Vec<&'a str>,
    pub acr: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    pub rule: &'a str,
    /// The first-factor source that admitted the user (`jwt`, `pin`,
    /// `oidc`, `introspection`, `session_check`, `trusted_header`).
    pub ff: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The transaction the step-up approved (`step_up.bind`), so the app
    /// can check the approval itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txn: Option<AssertedTxn<'a>>,
    /// Not signed: only part of the cache key (the first-factor session).
    #[serde(skip)]
    pub session: &'a str,
}

/// The assertion's `txn` claim: the approved values' digest (see
/// [`crate::auth::binding`]), the bound field names, and the values.
#[derive(Serialize, Hash, Clone, Debug)]
pub struct AssertedTxn<'a> {
    pub digest: &'a str,
    pub fields: &'a [String],
    pub values: std::collections::BTreeMap<&'a str, Option<&'a str>>,
}

#[derive(Serialize)]
struct Full<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
    jti: String,
    #[serde(flatten)]
    claims: &'a Claims<'a>,
}

pub struct Signer {
    current: SigningKey,
    previous: Option<SigningKey>,
    issuer: String,
    audience: String,
    /// Signed assertions as header values, so a reused one is a reference
    /// count, not a copy and a validation of its ~600 bytes.
    cache: crate::util::cache::Expiring<u64, http::HeaderValue>,
    /// Keys the claims' hash with this process's own random key, so nobody
    /// can compute offline which other claims would share a cached
    /// assertion (`DefaultHasher::new()` has fixed keys).
    claims_hasher: std::hash::RandomState,
}

impl Signer {
    pub fn new(
        key_file: &Path,
        previous_key_file: Option<&Path>,
        issuer: String,
        audience: String,
    ) -> Result<Signer, String> {
        Ok(Signer {
            current: load_key(key_file, true).map_err(|e| format!("assertion.key_file: {e}"))?,
            previous: previous_key_file
                .map(|p| load_key(p, false))
                .transpose()
                .map_err(|e| format!("assertion.previous_key_file: {e}"))?,
            issuer,
            audience,
            cache: crate::util::cache::Expiring::new(CACHE_MAX),
            claims_hasher: std::hash::RandomState::new(),
        })
    }

    /// The JWKS document for `/.stepgate/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        let mut keys = vec![self.current.public.clone()];
        if let Some(p) = &self.previous {
            keys.push(p.public.clone());
        }
        serde_json::json!({ "keys": keys })
    }

    /// Sign `c` at `now`, reusing a signature of identical claims made in the
    /// last few seconds.
    pub fn sign(&self, c: &Claims<'_>, now: i64) -> http::HeaderValue {
        let key = self.claims_hasher.hash_one(c);
        if let Some(token) = self.cache.get(&key, now) {
            return token;
        }
        let token = http::HeaderValue::try_from(self.sign_fresh(c, now))
            .expect("a JWT (base64url and dots) is a valid header value");
        self.cache.insert(key, token.clone(), now + REUSE, now);
        token
    }

    /// Always a new signature (the benchmark's baseline): a compact JWS,
    /// ES256 (the signature is r ‖ s, 64 bytes, RFC 7518 §3.4).
    pub fn sign_fresh(&self, c: &Claims<'_>, now: i64) -> String {
        use p256::ecdsa::signature::Signer as _;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.current.kid.clone());
        header.typ = Some("stepgate-assertion+jwt".into());
        let full = Full {
            iss: &self.issuer,
            aud: &self.audience,
            iat: now,
            exp: now + LIFETIME,
            jti: crate::auth::tokens::random_id(),
            claims: c,
        };
        let mut jws = format!("{}.{}", jws_part(&header), jws_part(&full));
        let sig: p256::ecdsa::Signature = self.current.signer.sign(jws.as_bytes());
        jws.push('.');
        jws.push_str(&B64.encode(sig.to_bytes()));
        jws
    }
}

/// A JWS part: its JSON, base64url without padding.
fn jws_part<T: Serialize>(v: &T) -> String {
    B64.encode(serde_json::to_vec(v).expect("a JWS part serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};

    fn claims<'a>(path: &'a str) -> Claims<'a> {
        Claims {
            sub: "alice",
            email: Some("a@x.io"),
            amr: vec!["pin"],
            acr: "urn:stepgate:step-up",
            auth_time: Some(100),
            rule: "admin",
            ff: "jwt",
            method: "GET",
            path,
            txn: None,
            session: "sid:1",
        }
    }

    #[test]
    fn assertions_verify_against_the_published_jwks_and_are_reused_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::new(
            &dir.path().join("k.pem"),
            None,
            "stepgate".into(),
            "app".into(),
        )
        .unwrap();
        let t = s.sign(&claims("/a"), 1000);
        let t_str = t.to_str().unwrap().to_string();
        assert_eq!(
            s.sign(&claims("/a"), 1003),
            t,
            "same claims within REUSE seconds"
        );
        assert_ne!(
            s.sign(&claims("/a"), 1006),
            t,
            "renewed after REUSE seconds"
        );
        assert_ne!(
            s.sign(&claims("/b"), 1003),
            t,
            "another path is another assertion"
        );
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(s.jwks()).unwrap();
        let head = decode_header(&t_str).unwrap();
        assert_eq!(head.typ.as_deref(), Some("stepgate-assertion+jwt"));
        let kid = head.kid.unwrap();
        let jwk = jwks.find(&kid).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["app"]);
        v.validate_exp = false;
        let data =
            decode::<serde_json::Value>(&t_str, &DecodingKey::from_jwk(jwk).unwrap(), &v).unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.claims["path"], "/a");
        assert_eq!(
            data.claims["exp"].as_i64().unwrap() - data.claims["iat"].as_i64().unwrap(),
            LIFETIME
        );
        // The key was kept: a second signer on the same file has the same kid.
        let again = Signer::new(
            &dir.path().join("k.pem"),
            None,
            "stepgate".into(),
            "app".into(),
        )
        .unwrap();
        assert_eq!(again.jwks()["keys"][0]["kid"], kid.as_str());
    }

    #[test]
    fn the_previous_key_is_published_during_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let old = Signer::new(&dir.path().join("old.pem"), None, "i".into(), "a".into()).unwrap();
        let s = Signer::new(
            &dir.path().join("new.pem"),
            Some(&dir.path().join("old.pem")),
            "i".into(),
            "a".into(),
        )
        .unwrap();
        let keys = s.jwks()["keys"].as_array().unwrap().clone();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1]["kid"], old.jwks()["keys"][0]["kid"]);
        assert!(Signer::new(
            &dir.path().join("new.pem"),
            Some(&dir.path().join("missing.pem")),
            "i".into(),
            "a".into()
        )
        .is_err());
    }
}
