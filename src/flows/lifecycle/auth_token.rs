//! PINAuthTokens and mandatory PINs (`pin.required`, `pin.offer_setup`):
//! a token sets a first PIN once, and only for a fresh login or the back end.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::principal::Principal;
use crate::auth::tokens::{secret_token, token_digest};
use crate::flows::deps::Deps;
use crate::flows::error::FlowError;
use crate::flows::pin;
use crate::flows::profile::{self, Profile};
use crate::store::keys;
use crate::util::metrics;

use super::common::{counted, json_of, parse};
use super::sessions::open_session;

/// Whether a first-factor login at `login_time` is recent enough to set up
/// a new way to confirm (a PIN, recovery answers): within `window` of `now`.
/// A login of unknown time is never fresh.
pub fn fresh_login(login_time: Option<i64>, window: Duration, now: i64) -> bool {
    login_time.is_some_and(|t| now - t <= window.as_secs() as i64)
}

/// Who a PINAuthToken was minted for, which decides what setting a PIN
/// with it needs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthTokenFor {
    /// The back end, with the API secret: trusted as the server's word.
    Server,
    /// The 1243 answer to a signed-in user, for the first-factor login made
    /// at this Unix time: usable only while that login is fresh.
    Login(i64),
}

#[derive(Serialize, Deserialize)]
pub(crate) struct AuthTokenRecord {
    sub: String,
    exp: i64,
    /// Absent in tokens minted before this was recorded: treated as a login
    /// of unknown time (refused; they lived 5 minutes anyway).
    #[serde(default)]
    minted_for: Option<AuthTokenFor>,
}

/// A single-use, short-lived token that lets `uid` set a PIN.
pub async fn issue_auth_token(
    deps: &Deps,
    uid: &str,
    minted_for: AuthTokenFor,
) -> Result<(String, i64), FlowError> {
    counted("auth_token", async {
        let token = secret_token();
        let ttl = deps.settings.pin.auth_token_ttl;
        let exp = deps.store.now() + ttl.as_secs() as i64;
        let rec = AuthTokenRecord {
            sub: uid.to_string(),
            exp,
            minted_for: Some(minted_for),
        };
        // Kept an hour past expiry, so an expired token is told apart (1240).
        deps.store
            .put(
                &keys::pin_auth_token(&token_digest(&token)),
                &json_of(&rec)?,
                Some(ttl + Duration::from_secs(3600)),
            )
            .await?;
        crate::util::audit::event("pin_auth_token_issued", uid, "", "");
        Ok((token, exp))
    })
    .await
}

/// What setting a PIN with a PINAuthToken gives back.
pub struct PinSet {
    pub profile: Profile,
    /// The device PIN session (when PIN login is on) and its expiry.
    pub session: Option<(String, i64)>,
    /// A stepgate session accepted as the first factor, and its expiry.
    pub access: Option<(String, i64)>,
}

pub async fn set_by_auth_token(
    deps: &Deps,
    token: &str,
    new: &str,
    ua: &str,
    ip: &str,
) -> Result<PinSet, FlowError> {
    counted("set_by_auth_token", async {
        if token.is_empty() || token.len() > 128 {
            return Err(FlowError::AuthTokenInvalid);
        }
        let key = keys::pin_auth_token(&token_digest(token));
        let raw = deps
            .store
            .get(&key)
            .await?
            .ok_or(FlowError::AuthTokenInvalid)?;
        let rec: AuthTokenRecord = parse(&raw)?;
        let now = deps.store.now();
        if rec.exp <= now {
            return Err(FlowError::AuthTokenExpired);
        }
        // A token handed to a session is worth what that session's login is
        // worth now: setting a PIN needs a fresh login (as on the page).
        match rec.minted_for {
            Some(AuthTokenFor::Server) => {}
            Some(AuthTokenFor::Login(t))
                if fresh_login(Some(t), deps.settings.pin.enroll_window, now) => {}
            _ => {
                crate::util::audit::event("pin_auth_token_stale_login", &rec.sub, ip, "");
                return Err(FlowError::LoginNotFresh);
            }
        }
        pin::check_new_pin(new, &deps.settings.pin)?;
        if pin::load_record(&*deps.store, &rec.sub).await?.is_some() {
            return Err(FlowError::PinAlreadySet);
        }
        if deps.store.take(&key).await?.is_none() {
            return Err(FlowError::AuthTokenInvalid);
        }
        pin::create_pin(&*deps.store, &deps.hasher, &rec.sub, new).await?;
        pin::clear_lockout(&*deps.store, &rec.sub).await?;
        metrics::ENROLLMENTS.inc();
        deps.known_pins.insert(&rec.sub);
        crate::util::audit::event("pin_set", &rec.sub, ip, "pin auth token");
        deps.notifier
            .event("SetPIN", &rec.sub, json!({"Method": "pinauthtoken"}));
        let profile = profile::load_or_bare(&*deps.store, &rec.sub).await?;
        let (session, access) = if deps.settings.pin.login {
            // A PINAuthToken is not a first-factor login: sessions from it
            // are never "fresh" (no new recovery credentials without a
            // step-up).
            let (t, s) = open_session(deps, profile.clone(), None, ua).await?;
            let access = deps.keys.issue_session(
                &profile,
                &s.id,
                None,
                deps.store.now_ms(),
                deps.settings.pin.login_ttl.as_secs() as i64,
            );
            (Some((t, s.expires)), Some(access))
        } else {
            (None, None)
        };
        Ok(PinSet {
            profile,
            session,
            access,
        })
    })
    .await
}

/// The PINAuthToken for a 1243 answer, or None when `p`'s first-factor
/// login is too old to set a PIN with (`pin.enroll_window`, the page's
/// rule): the client must sign in again. The token is bound to that login
/// ([`AuthTokenFor::Login`]); the one handed to this login in the last
/// minute is reused (a retrying client costs no store write).
pub async fn required_pin_token(
    deps: &Deps,
    p: &Principal,
) -> Result<Option<(String, i64)>, FlowError> {
    let now = deps.store.now();
    let Some(login_time) = p
        .login_time
        .filter(|_| fresh_login(p.login_time, deps.settings.pin.enroll_window, now))
    else {
        return Ok(None);
    };
    let cache_key = format!("{}\0{login_time}", p.sub);
    if let Some(kept) = deps.required_pin_tokens.get(&cache_key, now) {
        return Ok(Some(kept));
    }
    let (t, exp) = issue_auth_token(deps, &p.sub, AuthTokenFor::Login(login_time)).await?;
    // Handed out again for a minute, then a fresh one is made.
    deps.required_pin_tokens
        .insert(cache_key, (t.clone(), exp), (now + 60).min(exp), now);
    Ok(Some((t, exp)))
}

/// Does this signed-in user still have to set up a PIN (`pin.required`) or
/// be offered one (`pin.offer_setup`, unless skipped)? Answered from memory
/// once known, so requests of users with a PIN cost no store call.
pub async fn needs_setup(deps: &Deps, sub: &str) -> Result<bool, FlowError> {
    if deps.known_pins.contains(sub) {
        return Ok(false);
    }
    if pin::load_record(&*deps.store, sub).await?.is_some() {
        deps.known_pins.insert(sub);
        return Ok(false);
    }
    if !deps.settings.pin.required && deps.store.get(&keys::pin_skip(sub)).await?.is_some() {
        deps.known_pins.insert(sub);
        return Ok(false);
    }
    Ok(true)
}

/// Remember that the user chose not to set up an optional PIN.
pub async fn skip_setup(deps: &Deps, sub: &str, ip: &str) -> Result<(), FlowError> {
    counted("skip", async {
        if deps.settings.pin.required {
            return Err(FlowError::Disabled("A PIN is required on this site."));
        }
        deps.store.put(&keys::pin_skip(sub), b"1", None).await?;
        deps.known_pins.insert(sub);
        crate::util::audit::event("pin_setup_skipped", sub, ip, "");
        Ok(())
    })
    .await
}
