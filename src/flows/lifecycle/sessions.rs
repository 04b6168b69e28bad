//! Device PIN sessions and PIN login: a PIN session is bound to one device
//! (its User-Agent), lives `pin.session_ttl`, and ends on every gateway when
//! it, or its user, is invalidated.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::auth::revocations::session_revocation_key;
use crate::auth::tokens::{secret_token, token_digest};
use crate::flows::deps::Deps;
use crate::flows::error::FlowError;
use crate::flows::pin;
use crate::flows::profile::Profile;
use crate::store::keys;
use crate::util::digest::digest_b64;

use super::common::{counted, json_of, parse};

/// A device's PIN session. Stored compactly (short field names, no copy of
/// its id, which is the key, or of the user's profile, which has a record of
/// its own): names of earlier versions are still read.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PinSession {
    #[serde(skip)]
    pub id: String,
    #[serde(rename = "s", alias = "sub")]
    pub sub: String,
    /// The user's recovery profile, read from its own record for sessions
    /// handed out (`load_session`, `sessions`); sessions opened before 0.2
    /// carry a copy.
    #[serde(default, skip_serializing)]
    pub profile: Profile,
    /// Unix seconds, for people (stored only by versions before 0.2; read
    /// from `created_ms` otherwise).
    #[serde(default, rename = "created", skip_serializing)]
    pub created: i64,
    /// Unix ms, what invalidations are compared with; absent in sessions
    /// opened before milliseconds ([`PinSession::issued_ms`]).
    #[serde(
        default,
        rename = "m",
        alias = "created_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_ms: Option<i64>,
    #[serde(rename = "e", alias = "expires")]
    pub expires: i64,
    /// Digest of the User-Agent the session was opened with.
    #[serde(rename = "u", alias = "ua")]
    ua: String,
    /// For people: what device this is ([`device_label`]).
    #[serde(rename = "d", alias = "device")]
    pub device: String,
    /// The first-factor login the session was opened under.
    #[serde(
        default,
        rename = "l",
        alias = "login_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub login_time: Option<i64>,
}

impl PinSession {
    /// When the session was opened, in Unix ms (for one opened before
    /// milliseconds: the first ms of its second, conservatively).
    pub fn issued_ms(&self) -> i64 {
        self.created_ms
            .unwrap_or_else(|| crate::auth::revocations::legacy_issued_ms(self.created))
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct SessionRef {
    #[serde(rename = "i", alias = "id")]
    id: String,
    #[serde(rename = "e", alias = "expires")]
    expires: i64,
}

/// A stored session: its record, with the id it is stored under.
fn decode(id: &str, raw: &[u8]) -> Result<PinSession, FlowError> {
    let mut s: PinSession = parse(raw)?;
    s.id = id.to_string();
    if let Some(ms) = s.created_ms.filter(|_| s.created == 0) {
        s.created = ms.div_euclid(1000);
    }
    Ok(s)
}

/// Fill in the profile of sessions handed out (all of one user): read once,
/// from its own record, for those without an earlier version's copy.
async fn with_profile(deps: &Deps, sessions: &mut [PinSession]) -> Result<(), FlowError> {
    let mut read: Option<Profile> = None;
    for s in sessions.iter_mut().filter(|s| s.profile.sub != s.sub) {
        if read.as_ref().is_none_or(|p| p.sub != s.sub) {
            read = Some(crate::flows::profile::load_or_bare(&*deps.store, &s.sub).await?);
        }
        s.profile = read.clone().expect("read above");
    }
    Ok(())
}

pub(crate) fn ua_digest(ua: &str) -> String {
    digest_b64(ua.as_bytes())[..16].to_string()
}

/// What people see for a device: "Firefox on Android", or, for a client
/// this does not know, the start of its User-Agent.
pub(crate) fn device_label(ua: &str) -> String {
    let has = |s: &str| ua.contains(s);
    let os = [
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("CrOS", "ChromeOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("Linux", "Linux"),
    ]
    .into_iter()
    .find(|(k, _)| has(k));
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("SamsungBrowser/", "Samsung Internet"),
        ("Firefox/", "Firefox"),
        ("FxiOS/", "Firefox"),
        ("CriOS/", "Chrome"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
    ]
    .into_iter()
    .find(|(k, _)| has(k));
    match (browser, os) {
        (Some((_, b)), Some((_, o))) => format!("{b} on {o}"),
        (None, Some((_, o))) => format!("a browser on {o}"),
        _ => {
            let t: String = ua.chars().filter(|c| !c.is_control()).take(40).collect();
            match t.trim() {
                "" => "unknown device".into(),
                t => t.to_string(),
            }
        }
    }
}

/// How many PIN sessions (devices) a user keeps: opening one more ends the
/// oldest, so no one can grow a user's records without bound.
pub const MAX_SESSIONS: usize = 20;

/// Open a PIN session for this device; returns the secret token.
pub async fn open_session(
    deps: &Deps,
    profile: Profile,
    login_time: Option<i64>,
    ua: &str,
) -> Result<(String, PinSession), FlowError> {
    let token = secret_token();
    let now_ms = deps.store.now_ms();
    let now = now_ms.div_euclid(1000);
    let ttl = deps.settings.pin.session_ttl;
    let s = PinSession {
        id: token_digest(&token),
        sub: profile.sub.clone(),
        created: now,
        created_ms: Some(now_ms),
        expires: now + ttl.as_secs() as i64,
        ua: ua_digest(ua),
        device: device_label(ua),
        login_time,
        profile,
    };
    // Kept a day past expiry, so an expired token is told apart (1246).
    let keep = ttl + Duration::from_secs(86400);
    deps.store
        .put(&keys::pin_session(&s.id), &json_of(&s)?, Some(keep))
        .await?;
    let list_key = keys::pin_sessions(&s.sub);
    let mut list: Vec<SessionRef> = match deps.store.get(&list_key).await? {
        Some(raw) => serde_json::from_slice(&raw).unwrap_or_default(),
        None => Vec::new(),
    };
    list.retain(|r| r.expires > now);
    // The list is in opening order: the oldest devices make room.
    while list.len() >= MAX_SESSIONS {
        let oldest = list.remove(0);
        if let Some(raw) = deps.store.get(&keys::pin_session(&oldest.id)).await? {
            end(deps, &decode(&oldest.id, &raw)?).await?;
        }
    }
    list.push(SessionRef {
        id: s.id.clone(),
        expires: s.expires,
    });
    deps.store
        .put(&list_key, &json_of(&list)?, Some(keep))
        .await?;
    crate::util::audit::event("pin_session_opened", &s.sub, "", &s.id);
    Ok((token, s))
}

/// The live session a token names.
pub async fn load_session(deps: &Deps, token: &str) -> Result<PinSession, FlowError> {
    if token.is_empty() || token.len() > 128 {
        return Err(FlowError::SessionInvalid);
    }
    let id = token_digest(token);
    let raw = deps
        .store
        .get(&keys::pin_session(&id))
        .await?
        .ok_or(FlowError::SessionInvalid)?;
    let mut s = decode(&id, &raw)?;
    if deps
        .revocations
        .revoked_before(&s.sub)
        .is_some_and(|t| s.issued_ms() <= t)
        || deps
            .revocations
            .revoked_before(&session_revocation_key(&s.id))
            .is_some()
    {
        return Err(FlowError::SessionInvalid);
    }
    if deps.store.now() >= s.expires {
        return Err(FlowError::SessionExpired);
    }
    with_profile(deps, std::slice::from_mut(&mut s)).await?;
    Ok(s)
}

/// The user's live PIN sessions, newest first.
pub async fn sessions(deps: &Deps, sub: &str) -> Result<Vec<PinSession>, FlowError> {
    let Some(raw) = deps.store.get(&keys::pin_sessions(sub)).await? else {
        return Ok(Vec::new());
    };
    let list: Vec<SessionRef> = serde_json::from_slice(&raw).unwrap_or_default();
    let now = deps.store.now();
    let cut = deps.revocations.revoked_before(sub);
    let mut out = Vec::new();
    for r in list.iter().filter(|r| r.expires > now) {
        if let Some(raw) = deps.store.get(&keys::pin_session(&r.id)).await? {
            let s = decode(&r.id, &raw)?;
            if s.sub == sub && cut.is_none_or(|t| s.issued_ms() > t) {
                out.push(s);
            }
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.issued_ms()));
    with_profile(deps, &mut out).await?;
    Ok(out)
}

/// End one PIN session (and the stepgate sessions opened from it) on every
/// gateway. `owner`: when given, only a session of that user is ended.
pub async fn end_session(deps: &Deps, id: &str, owner: Option<&str>) -> Result<bool, FlowError> {
    let Some(raw) = deps.store.get(&keys::pin_session(id)).await? else {
        return Ok(false);
    };
    let s = decode(id, &raw)?;
    if owner.is_some_and(|o| o != s.sub) {
        return Ok(false);
    }
    end(deps, &s).await?;
    Ok(true)
}

/// How long the invalidation of a PIN session ending at `now` must be
/// kept: until the last credential it could have given is dead. PIN logins
/// need a live session, so the last stepgate session from it was issued
/// before `expires` and lives `pin.login_ttl` more; an hour of margin covers
/// clock skew between gateways and a `login_ttl` shortened by a reload.
pub fn ended_session_ttl(expires: i64, now: i64, login_ttl: Duration) -> Duration {
    Duration::from_secs((expires - now).max(0) as u64) + login_ttl + Duration::from_secs(3600)
}

/// End a loaded PIN session: drop it and revoke it on every gateway, for as
/// long as anything it gave could still be presented.
pub(crate) async fn end(deps: &Deps, s: &PinSession) -> Result<(), FlowError> {
    deps.store.delete(&keys::pin_session(&s.id)).await?;
    let now_ms = deps.store.now_ms();
    let ttl = ended_session_ttl(
        s.expires,
        now_ms.div_euclid(1000),
        deps.settings.pin.login_ttl,
    );
    deps.revocations
        .revoke(
            &*deps.store,
            &session_revocation_key(&s.id),
            now_ms,
            Some(ttl),
        )
        .await?;
    crate::util::audit::event("pin_session_ended", &s.sub, "", &s.id);
    deps.notifier
        .event("SessionInvalidated", &s.sub, json!({"SessionId": s.id}));
    Ok(())
}

/// End every PIN session of `sub` except `keep`.
pub async fn end_sessions(deps: &Deps, sub: &str, keep: Option<&str>) -> Result<usize, FlowError> {
    let mut n = 0;
    // `sessions` read and checked each record already.
    for s in sessions(deps, sub).await? {
        if Some(s.id.as_str()) != keep {
            end(deps, &s).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// End every PIN session and step-up of `sub` on every gateway (the IdP calls
/// this on a password change; the account page offers it).
pub async fn invalidate_user(deps: &Deps, sub: &str, ip: &str) -> Result<(), FlowError> {
    counted("invalidate", async {
        deps.revocations
            .revoke(&*deps.store, sub, deps.store.now_ms(), None)
            .await?;
        // Sessions are already dead by the revocation time; dropping the
        // records keeps the account page tidy.
        if let Some(raw) = deps.store.get(&keys::pin_sessions(sub)).await? {
            let list: Vec<SessionRef> = serde_json::from_slice(&raw).unwrap_or_default();
            for r in list {
                deps.store.delete(&keys::pin_session(&r.id)).await?;
            }
            deps.store.delete(&keys::pin_sessions(sub)).await?;
        }
        crate::util::audit::event("invalidate", sub, ip, "PIN sessions and step-ups");
        deps.notifier.event("StepDown", sub, json!({}));
        Ok(())
    })
    .await
}

/// PIN login: the device's PIN session plus the PIN give a short-lived
/// stepgate session that the gateway accepts as the first factor.
pub async fn pin_login(
    deps: &Deps,
    token: &str,
    entered: &str,
    ua: &str,
    ip: &str,
) -> Result<(String, i64, PinSession), FlowError> {
    counted("login", async {
        if !deps.settings.pin.login {
            return Err(FlowError::Disabled(
                "PIN login is turned off on this gateway.",
            ));
        }
        let s = load_session(deps, token).await?;
        if !bool::from(s.ua.as_bytes().ct_eq(ua_digest(ua).as_bytes())) {
            crate::util::audit::event("pin_session_other_device", &s.sub, ip, &s.id);
            return Err(FlowError::SessionInvalid);
        }
        pin::verify(
            &*deps.store,
            &deps.hasher,
            &deps.settings.lockout,
            &s.sub,
            ip,
            entered,
            Some(&|sub: &str, ip: &str| crate::flows::notice::pin_suspended(deps, sub, ip)),
        )
        .await?;
        let (access, exp) = deps.keys.issue_session(
            &s.profile,
            &s.id,
            s.login_time,
            deps.store.now_ms(),
            deps.settings.pin.login_ttl.as_secs() as i64,
        );
        crate::util::audit::event("pin_login", &s.sub, ip, &s.id);
        Ok((access, exp, s))
    })
    .await
}
