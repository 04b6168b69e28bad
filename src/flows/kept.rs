//! The kept request: a browser's form or JSON request that needed a
//! step-up, kept so that it reaches the application after the step-up
//! without the user entering it again.
//!
//! Kept in the store (any gateway can finish it) for [`TTL`], sealed with
//! AES-256-GCM under a key derived from the signing secret (only the
//! gateways hold it; the store sees ciphertext), bound to the user and the
//! first-factor session, and taken atomically when replayed: it reaches the
//! application once, across gateways too.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::deps::Deps;
use super::error::FlowError;
use crate::auth::principal::Principal;
use crate::store::keys;

/// How long a kept request waits for its step-up.
pub const TTL: Duration = Duration::from_secs(600);
/// The largest body kept (larger ones, and uploads, must be sent again).
pub const MAX_BODY: usize = 64 * 1024;

/// What is replayed: exactly what the browser sent, as stepgate parsed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub method: String,
    /// Path and query as they were on the wire (what is forwarded).
    pub target: String,
    /// The host the request was for (lower case, no port).
    pub host: String,
    pub content_type: Option<String>,
    #[serde(with = "b64")]
    pub body: Vec<u8>,
    pub sub: String,
    /// The first-factor session it was kept for ([`crate::auth::tokens::session_hash`]).
    pub ssn: String,
    pub created_ms: i64,
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// Whether a body with this content type and size can be kept; `Err` says
/// why not, for the page.
pub fn keepable(content_type: Option<&str>, len: usize) -> Result<(), &'static str> {
    if len > MAX_BODY {
        return Err("it is larger than stepgate keeps (64 KiB)");
    }
    if crate::auth::binding::is_form(content_type) || crate::auth::binding::is_json(content_type) {
        return Ok(());
    }
    Err("files and uploads are not kept")
}

/// How many requests one user may have kept at a time (per [`TTL`]): a
/// signed-in user cannot fill the store with 64 KiB bodies.
pub const MAX_PER_USER: i64 = 20;

/// Keep `k` for its user; the id to finish it with. `Err(SendLimit)` when
/// the user has [`MAX_PER_USER`] kept already.
pub async fn keep(deps: &Deps, k: &Kept) -> Result<String, FlowError> {
    let count = deps.store.incr(&keys::kept_count(&k.sub), TTL).await?;
    if count.value > MAX_PER_USER {
        deps.store.decr(&keys::kept_count(&k.sub)).await?;
        return Err(FlowError::SendLimit {
            until: count.expires_at_ms.div_ceil(1000) as i64,
        });
    }
    let id = crate::auth::tokens::random_id();
    let plain = serde_json::to_vec(k).map_err(|_| FlowError::Internal)?;
    let sealed = deps.keys.seal_kept(&id, &plain);
    deps.store.put(&keys::kept(&id), &sealed, Some(TTL)).await?;
    Ok(id)
}

fn open(deps: &Deps, id: &str, sealed: &[u8], p: &Principal) -> Result<Kept, FlowError> {
    let plain = deps.keys.open_kept(id, sealed).ok_or(FlowError::KeptGone)?;
    let k: Kept = serde_json::from_slice(&plain).map_err(|_| FlowError::KeptGone)?;
    let ssn = crate::auth::tokens::session_hash(p);
    let expired = deps.store.now_ms() - k.created_ms > TTL.as_millis() as i64;
    if k.sub != p.sub || k.ssn != ssn || expired {
        return Err(FlowError::KeptGone);
    }
    Ok(k)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && crate::util::digest::is_b64url(id)
}

/// Read a kept request of this user and session, leaving it kept (pages
/// show what will be sent).
pub async fn peek(deps: &Deps, id: &str, p: &Principal) -> Result<Kept, FlowError> {
    if !valid_id(id) {
        return Err(FlowError::KeptGone);
    }
    let sealed = deps
        .store
        .get(&keys::kept(id))
        .await?
        .ok_or(FlowError::KeptGone)?;
    open(deps, id, &sealed, p)
}

/// Take a kept request to replay it: once, whichever gateway asks first. A
/// request kept for another user or session is put back untouched.
pub async fn take(deps: &Deps, id: &str, p: &Principal) -> Result<Kept, FlowError> {
    if !valid_id(id) {
        return Err(FlowError::KeptGone);
    }
    let sealed = deps
        .store
        .take(&keys::kept(id))
        .await?
        .ok_or(FlowError::KeptGone)?;
    match open(deps, id, &sealed, p) {
        Ok(k) => {
            // Sent on: its place in the user's quota is free again.
            let _ = deps.store.decr(&keys::kept_count(&k.sub)).await;
            Ok(k)
        }
        Err(e) => {
            if deps.keys.open_kept(id, &sealed).is_some() {
                restore_sealed(deps, id, &sealed).await;
            }
            Err(e)
        }
    }
}

/// Put a taken request back (its replay could not go on), for what is left
/// of its time.
pub async fn restore(deps: &Deps, id: &str, k: &Kept) {
    if let Ok(plain) = serde_json::to_vec(k) {
        let sealed = deps.keys.seal_kept(id, &plain);
        restore_sealed(deps, id, &sealed).await;
    }
}

async fn restore_sealed(deps: &Deps, id: &str, sealed: &[u8]) {
    let _ = deps.store.put(&keys::kept(id), sealed, Some(TTL)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(sub: &str, session: &str) -> Principal {
        Principal {
            source: "jwt",
            sub: sub.into(),
            otp_emails: vec![],
            email: None,
            emails: vec![],
            session: session.into(),
            login_time: None,
            expires: crate::util::clock::now() + 600,
            username: None,
            phone: None,
            pin_session: None,
        }
    }

    fn kept(p: &Principal) -> Kept {
        Kept {
            method: "POST".into(),
            target: "/transfer?x=1".into(),
            host: "app.test".into(),
            content_type: Some("application/x-www-form-urlencoded".into()),
            body: b"amount=100&to=bob".to_vec(),
            sub: p.sub.clone(),
            ssn: crate::auth::tokens::session_hash(p),
            created_ms: crate::util::clock::now_ms(),
        }
    }

    #[tokio::test]
    async fn kept_once_for_its_session_only_and_sealed() {
        let deps = Deps::for_tests("");
        let alice = user("alice", "s1");
        let other_session = user("alice", "s2");
        let bob = user("bob", "s1");
        let k = kept(&alice);
        let id = keep(&deps, &k).await.unwrap();
        let raw = deps.store.get(&keys::kept(&id)).await.unwrap().unwrap();
        assert!(
            !raw.windows(9).any(|w| w == b"amount=10"),
            "the store sees ciphertext"
        );
        assert_eq!(peek(&deps, &id, &alice).await.unwrap(), k);
        assert_eq!(take(&deps, &id, &bob).await, Err(FlowError::KeptGone));
        assert_eq!(
            take(&deps, &id, &other_session).await,
            Err(FlowError::KeptGone)
        );
        assert_eq!(take(&deps, &id, &alice).await.unwrap(), k);
        assert_eq!(take(&deps, &id, &alice).await, Err(FlowError::KeptGone));
        // A record sealed for one id does not open under another.
        let id2 = keep(&deps, &k).await.unwrap();
        let sealed = deps.store.get(&keys::kept(&id2)).await.unwrap().unwrap();
        deps.store
            .put(&keys::kept("forged"), &sealed, None)
            .await
            .unwrap();
        assert_eq!(
            take(&deps, "forged", &alice).await,
            Err(FlowError::KeptGone)
        );
        assert!(keepable(Some("multipart/form-data; boundary=x"), 10).is_err());
        assert!(keepable(Some("application/json"), MAX_BODY + 1).is_err());
        assert!(keepable(Some("application/json"), MAX_BODY).is_ok());
    }
}
