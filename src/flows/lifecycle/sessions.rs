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
use crate::flows::user::{self, Part, Record};
use crate::store::keys;
use crate::util::digest::digest_b64;

use super::common::{counted, parse};

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
    /// Where the session is stored.
    #[serde(skip)]
    pub(crate) kept: Kept,
}

/// Where a PIN session is stored: in its user's record (sessions this
/// version opens), or under a key of its own (`ps:<id>`, sessions an
/// earlier version opened; the record lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Kept {
    Record,
    #[default]
    OwnKey,
}

impl PinSession {
    /// When the session was opened, in Unix ms (for one opened before
    /// milliseconds: the first ms of its second, conservatively).
    pub fn issued_ms(&self) -> i64 {
        self.created_ms
            .unwrap_or_else(|| crate::auth::revocations::legacy_issued_ms(self.created))
    }
}

/// An earlier version's entry in a user's list of sessions kept under
/// their own keys.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct SessionRef {
    #[serde(rename = "i", alias = "id")]
    id: String,
    #[serde(rename = "e", alias = "expires")]
    expires: i64,
}

/// A session kept under its own key by an earlier version.
fn decode(id: &str, raw: &[u8]) -> Result<PinSession, FlowError> {
    let mut s: PinSession = parse(raw)?;
    s.id = id.to_string();
    s.kept = Kept::OwnKey;
    if let Some(ms) = s.created_ms.filter(|_| s.created == 0) {
        s.created = ms.div_euclid(1000);
    }
    Ok(s)
}

/// How long a session is still kept past its expiry, so that an expired
/// token is told apart from a wrong one (LoginRadius error 1246).
const GRACE: i64 = 86400;

/// A user's devices, as their record's [`Part::Sessions`] holds them.
#[derive(Debug, Default)]
struct Devices {
    sub: String,
    /// In opening order.
    list: Vec<Entry>,
}

#[derive(Debug, Clone)]
enum Entry {
    /// A session this version opened.
    Here(Box<PinSession>),
    /// One an earlier version keeps under its own key.
    Ref(SessionRef),
}

impl Entry {
    fn id(&self) -> &str {
        match self {
            Entry::Here(s) => &s.id,
            Entry::Ref(r) => &r.id,
        }
    }
    fn expires(&self) -> i64 {
        match self {
            Entry::Here(s) => s.expires,
            Entry::Ref(r) => r.expires,
        }
    }
}

/// The stored form (version 1): the version byte, the user's id (u16
/// length), then per session a kind byte; 0: id, opened (ms), expires,
/// User-Agent digest, device, login time (flag byte, then i64) — strings
/// with a u8 length, numbers i64 little-endian; 1 (an earlier version's
/// session): id, expires. A list moved from an earlier version's own key
/// is its JSON array of references.
const DEVICES_V1: u8 = 1;

fn encode_devices(d: &Devices) -> Vec<u8> {
    fn text(out: &mut Vec<u8>, s: &str) {
        let mut n = s.len().min(255);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        out.push(n as u8);
        out.extend_from_slice(&s.as_bytes()[..n]);
    }
    let mut out = vec![DEVICES_V1];
    let sub = &d.sub.as_bytes()[..d.sub.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(sub.len() as u16).to_le_bytes());
    out.extend_from_slice(sub);
    for e in &d.list {
        match e {
            Entry::Here(s) => {
                out.push(0);
                text(&mut out, &s.id);
                out.extend_from_slice(&s.issued_ms().to_le_bytes());
                out.extend_from_slice(&s.expires.to_le_bytes());
                text(&mut out, &s.ua);
                text(&mut out, &s.device);
                match s.login_time {
                    Some(t) => {
                        out.push(1);
                        out.extend_from_slice(&t.to_le_bytes());
                    }
                    None => out.push(0),
                }
            }
            Entry::Ref(r) => {
                out.push(1);
                text(&mut out, &r.id);
                out.extend_from_slice(&r.expires.to_le_bytes());
            }
        }
    }
    out
}

/// Read a user's devices; `sub`: whose they are when the stored form does
/// not say (an earlier version's list).
fn decode_devices(raw: &[u8], sub: &str) -> Result<Devices, FlowError> {
    if raw.first() == Some(&b'[') {
        let refs: Vec<SessionRef> = parse(raw)?;
        return Ok(Devices {
            sub: sub.to_string(),
            list: refs.into_iter().map(Entry::Ref).collect(),
        });
    }
    struct R<'a>(&'a [u8]);
    impl R<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], FlowError> {
            if self.0.len() < n {
                return Err(FlowError::Internal);
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Ok(a)
        }
        fn byte(&mut self) -> Result<u8, FlowError> {
            Ok(self.take(1)?[0])
        }
        fn int(&mut self) -> Result<i64, FlowError> {
            Ok(i64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            ))
        }
        fn text(&mut self, n: usize) -> Result<String, FlowError> {
            String::from_utf8(self.take(n)?.to_vec()).map_err(|_| FlowError::Internal)
        }
        fn short(&mut self) -> Result<String, FlowError> {
            let n = usize::from(self.byte()?);
            self.text(n)
        }
    }
    let mut r = R(raw);
    if r.byte()? != DEVICES_V1 {
        return Err(FlowError::Internal);
    }
    let n = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes"));
    let sub = r.text(usize::from(n))?;
    let mut list = Vec::new();
    while !r.0.is_empty() {
        list.push(match r.byte()? {
            0 => {
                let id = r.short()?;
                let created_ms = r.int()?;
                let expires = r.int()?;
                let ua = r.short()?;
                let device = r.short()?;
                let login_time = match r.byte()? {
                    0 => None,
                    _ => Some(r.int()?),
                };
                Entry::Here(Box::new(PinSession {
                    id,
                    sub: sub.clone(),
                    profile: Profile::default(),
                    created: created_ms.div_euclid(1000),
                    created_ms: Some(created_ms),
                    expires,
                    ua,
                    device,
                    login_time,
                    kept: Kept::Record,
                }))
            }
            1 => {
                let id = r.short()?;
                Entry::Ref(SessionRef {
                    id,
                    expires: r.int()?,
                })
            }
            _ => return Err(FlowError::Internal),
        });
    }
    Ok(Devices { sub, list })
}

fn devices_of(r: &Record, sub: &str) -> Result<Devices, FlowError> {
    match r.get(Part::Sessions) {
        Some(raw) => decode_devices(raw, sub),
        None => Ok(Devices {
            sub: sub.to_string(),
            list: Vec::new(),
        }),
    }
}

fn store_devices(r: &mut Record, d: &Devices) {
    r.set(
        Part::Sessions,
        (!d.list.is_empty()).then(|| encode_devices(d)),
    );
}

/// The full session an entry names (an earlier version's is read from its
/// own key; None when that is gone).
async fn resolve(deps: &Deps, e: Entry) -> Result<Option<PinSession>, FlowError> {
    match e {
        Entry::Here(s) => Ok(Some(*s)),
        Entry::Ref(r) => match deps.store.get(&keys::pin_session(&r.id)).await? {
            Some(raw) => Ok(Some(decode(&r.id, &raw)?)),
            None => Ok(None),
        },
    }
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

/// Open a PIN session for this device; returns the secret token. The token
/// starts with its user's locator ([`keys::user_locator`]) and a dot, so it
/// leads to the record the session is kept in.
pub async fn open_session(
    deps: &Deps,
    profile: Profile,
    login_time: Option<i64>,
    ua: &str,
) -> Result<(String, PinSession), FlowError> {
    let sub = profile.sub.clone();
    let token = format!("{}.{}", keys::user_locator(&sub), secret_token());
    let now_ms = deps.store.now_ms();
    let now = now_ms.div_euclid(1000);
    let ttl = deps.settings.pin.session_ttl;
    let s = PinSession {
        id: token_digest(&token),
        sub: sub.clone(),
        created: now,
        created_ms: Some(now_ms),
        expires: now + ttl.as_secs() as i64,
        ua: ua_digest(ua),
        device: device_label(ua),
        login_time,
        profile,
        kept: Kept::Record,
    };
    let ended = user::update(&*deps.store, &sub, |r| {
        let mut d = devices_of(r, &sub)?;
        d.sub = sub.clone();
        d.list.retain(|e| e.expires() + GRACE > now);
        // The list is in opening order: the oldest devices make room.
        let mut ended = Vec::new();
        while d.list.iter().filter(|e| e.expires() > now).count() >= MAX_SESSIONS {
            let i = d
                .list
                .iter()
                .position(|e| e.expires() > now)
                .expect("counted above");
            ended.push(d.list.remove(i));
        }
        d.list.push(Entry::Here(Box::new(s.clone())));
        store_devices(r, &d);
        Ok::<_, FlowError>(ended)
    })
    .await??;
    for e in ended {
        if let Some(old) = resolve(deps, e).await? {
            end(deps, &old).await?;
        }
    }
    crate::util::audit::event("pin_session_opened", &s.sub, "", &s.id);
    Ok((token, s))
}

/// The session a token names, as stored: live or not.
pub async fn find_session(deps: &Deps, token: &str) -> Result<Option<PinSession>, FlowError> {
    if token.is_empty() || token.len() > 128 {
        return Ok(None);
    }
    let id = token_digest(token);
    let Some((locator, _)) = token.split_once('.') else {
        // An earlier version's token: its session has a key of its own.
        return match deps.store.get(&keys::pin_session(&id)).await? {
            Some(raw) => Ok(Some(decode(&id, &raw)?)),
            None => Ok(None),
        };
    };
    if locator.len() != 22 || !crate::util::digest::is_b64url(locator) {
        return Ok(None);
    }
    let Some(r) = user::read_at(&*deps.store, locator).await? else {
        return Ok(None);
    };
    let d = devices_of(&r, "")?;
    if d.sub.is_empty() || keys::user_locator(&d.sub) != locator {
        return Ok(None);
    }
    Ok(d.list.into_iter().find_map(|e| match e {
        Entry::Here(s) if bool::from(s.id.as_bytes().ct_eq(id.as_bytes())) => Some(*s),
        _ => None,
    }))
}

/// The live session a token names.
pub async fn load_session(deps: &Deps, token: &str) -> Result<PinSession, FlowError> {
    let mut s = find_session(deps, token)
        .await?
        .ok_or(FlowError::SessionInvalid)?;
    // Before the invalidations were read, an ended session cannot be told
    // from a live one: unavailable, so the device keeps its cookie.
    if !deps.revocations.loaded() {
        return Err(FlowError::StoreUnavailable);
    }
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
    // Which were ended is not known before the invalidations were read: an
    // empty list here would let "end the other sessions" end none.
    if !deps.revocations.loaded() {
        return Err(FlowError::StoreUnavailable);
    }
    let r = user::read_all(&*deps.store, sub).await?;
    let d = devices_of(&r, sub)?;
    let now = deps.store.now();
    let cut = deps.revocations.revoked_before(sub);
    let mut out = Vec::new();
    for e in d.list.into_iter().filter(|e| e.expires() > now) {
        if let Some(s) = resolve(deps, e).await? {
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
/// gateway. `owner`: the user it must belong to; without one, only a
/// session an earlier version keeps under its own key can be found by id
/// (this version's are found through their token, [`find_session`]).
pub async fn end_session(deps: &Deps, id: &str, owner: Option<&str>) -> Result<bool, FlowError> {
    if let Some(sub) = owner {
        let r = user::read_all(&*deps.store, sub).await?;
        let here = devices_of(&r, sub)?.list.into_iter().find_map(|e| match e {
            Entry::Here(s) if s.id == id => Some(*s),
            _ => None,
        });
        if let Some(s) = here {
            end(deps, &s).await?;
            return Ok(true);
        }
    }
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
    user::update(&*deps.store, &s.sub, |r| {
        let mut d = devices_of(r, &s.sub)?;
        d.list.retain(|e| e.id() != s.id);
        store_devices(r, &d);
        Ok::<_, FlowError>(())
    })
    .await??;
    if s.kept == Kept::OwnKey {
        deps.store.delete(&keys::pin_session(&s.id)).await?;
    }
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
        let r = user::read_all(&*deps.store, sub).await?;
        for e in devices_of(&r, sub)?.list {
            if let Entry::Ref(r) = e {
                deps.store.delete(&keys::pin_session(&r.id)).await?;
            }
        }
        user::write(&*deps.store, sub, Part::Sessions, None).await?;
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
