//! A PIN's life after enrollment: change, forget and reset (by ResetToken,
//! one-time code or security answers), PINAuthTokens for identity providers
//! that make PINs mandatory, device PIN sessions and PIN login, and
//! invalidation. Pages and the JSON API call these flows; they answer with
//! data or a [`FlowError`], never with HTTP.
//!
//! Must never: reveal whether an account exists to a signed-out caller,
//! accept a reset credential twice, evaluate more guesses (PINs, codes,
//! answers) than their lockouts allow, or leave a revoked session usable on
//! any gateway.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::auth::principal::Principal;
use crate::auth::revocations::session_revocation_key;
use crate::auth::tokens::{secret_token, token_digest};
use crate::config::{ForgotMode, Question};
use crate::flows::deps::Deps;
use crate::flows::error::FlowError;
use crate::flows::pin;
use crate::flows::profile::{self, Identifier, Profile};
use crate::store::keys;
use crate::util::digest::digest_b64;
use crate::util::metrics;

fn op(operation: &str, r: &Result<impl Sized, FlowError>) {
    let outcome = match r {
        Ok(_) => "success",
        Err(FlowError::Locked { .. } | FlowError::Suspended) => "locked",
        Err(FlowError::StoreUnavailable | FlowError::Internal) => "error",
        Err(_) => "refused",
    };
    metrics::PIN_OPERATIONS
        .with_label_values(&[operation, outcome])
        .inc();
}

/// Run a flow and count its outcome under `operation`.
async fn counted<T>(
    operation: &str,
    flow: impl std::future::Future<Output = Result<T, FlowError>>,
) -> Result<T, FlowError> {
    let r = flow.await;
    op(operation, &r);
    r
}

fn json_of<T: Serialize>(v: &T) -> Result<Vec<u8>, FlowError> {
    serde_json::to_vec(v).map_err(|_| FlowError::Internal)
}

fn parse<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Result<T, FlowError> {
    serde_json::from_slice(raw).map_err(|_| FlowError::Internal)
}

/// After a successful step-up or enrollment: keep the recovery profile
/// current. A failure here must not undo the step-up; it is logged.
pub async fn remember_profile(deps: &Deps, p: &Principal) {
    if p.pin_session.is_some() {
        return; // stepgate's own session repeats a stored profile
    }
    if let Err(e) = profile::remember(&*deps.store, p).await {
        tracing::warn!(target: "stepgate", user = %p.sub, error = ?e, "could not record the recovery profile");
    }
}

// ---------- device PIN sessions ----------

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PinSession {
    pub id: String,
    pub sub: String,
    pub profile: Profile,
    /// Unix seconds, for people.
    pub created: i64,
    /// Unix ms, what invalidations are compared with; absent in sessions
    /// opened before milliseconds ([`PinSession::issued_ms`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<i64>,
    pub expires: i64,
    /// Digest of the User-Agent the session was opened with.
    ua: String,
    /// For people: what device this is.
    pub device: String,
    /// The first-factor login the session was opened under.
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
struct SessionRef {
    id: String,
    expires: i64,
}

fn ua_digest(ua: &str) -> String {
    digest_b64(ua.as_bytes())[..16].to_string()
}

fn device_label(ua: &str) -> String {
    let t: String = ua.chars().filter(|c| !c.is_control()).take(120).collect();
    if t.is_empty() {
        "unknown device".into()
    } else {
        t
    }
}

/// Open a PIN session for this device; returns the secret token.
pub async fn open_session(
    deps: &Deps,
    profile: Profile,
    login_time: Option<i64>,
    ua: &str,
) -> Result<(String, PinSession), FlowError> {
    let token = secret_token();
    let now_ms = crate::util::clock::now_ms();
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
    let raw = deps
        .store
        .get(&keys::pin_session(&token_digest(token)))
        .await?
        .ok_or(FlowError::SessionInvalid)?;
    let s: PinSession = parse(&raw)?;
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
    if crate::util::clock::now() >= s.expires {
        return Err(FlowError::SessionExpired);
    }
    Ok(s)
}

/// The user's live PIN sessions, newest first.
pub async fn sessions(deps: &Deps, sub: &str) -> Result<Vec<PinSession>, FlowError> {
    let Some(raw) = deps.store.get(&keys::pin_sessions(sub)).await? else {
        return Ok(Vec::new());
    };
    let list: Vec<SessionRef> = serde_json::from_slice(&raw).unwrap_or_default();
    let now = crate::util::clock::now();
    let cut = deps.revocations.revoked_before(sub);
    let mut out = Vec::new();
    for r in list.iter().filter(|r| r.expires > now) {
        if let Some(raw) = deps.store.get(&keys::pin_session(&r.id)).await? {
            let s: PinSession = parse(&raw)?;
            if s.sub == sub && cut.is_none_or(|t| s.issued_ms() > t) {
                out.push(s);
            }
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.issued_ms()));
    Ok(out)
}

/// End one PIN session (and the stepgate sessions opened from it) on every
/// gateway. `owner`: when given, only a session of that user is ended.
pub async fn end_session(deps: &Deps, id: &str, owner: Option<&str>) -> Result<bool, FlowError> {
    let Some(raw) = deps.store.get(&keys::pin_session(id)).await? else {
        return Ok(false);
    };
    let s: PinSession = parse(&raw)?;
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
async fn end(deps: &Deps, s: &PinSession) -> Result<(), FlowError> {
    deps.store.delete(&keys::pin_session(&s.id)).await?;
    let now_ms = crate::util::clock::now_ms();
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
            .revoke(&*deps.store, sub, crate::util::clock::now_ms(), None)
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
            crate::util::clock::now_ms(),
            deps.settings.pin.login_ttl.as_secs() as i64,
        );
        crate::util::audit::event("pin_login", &s.sub, ip, &s.id);
        Ok((access, exp, s))
    })
    .await
}

// ---------- change ----------

/// Change the PIN with the current one. Ends the user's other PIN sessions
/// (`keep` is this device's).
pub async fn change(
    deps: &Deps,
    p: &Principal,
    ip: &str,
    old: &str,
    new: &str,
    keep: Option<&str>,
) -> Result<(), FlowError> {
    counted("change", async {
        pin::check_new_pin(new, &deps.settings.pin)?;
        let record = pin::load_record(&*deps.store, &p.sub)
            .await?
            .ok_or(FlowError::NoPin)?;
        let notice = |sub: &str, ip: &str| crate::flows::notice::pin_suspended(deps, sub, ip);
        let attempt = pin::reserve(&*deps.store, &deps.settings.lockout, &p.sub, ip)
            .await?
            .on_suspend(Some(&notice));
        let ok = old.len() <= 64 && deps.hasher.verify(old.to_string(), record.phc).await?;
        if !ok {
            crate::util::audit::event("pin_change_failure", &p.sub, ip, "");
            return Err(match attempt.failure(&p.sub, ip).await? {
                FlowError::WrongPin { remaining } => FlowError::WrongCurrentPin { remaining },
                other => other,
            });
        }
        attempt.success().await?;
        if old == new {
            return Err(FlowError::PinRule(
                "The new PIN must differ from the current one.".into(),
            ));
        }
        pin::store_pin(&*deps.store, &deps.hasher, &p.sub, new).await?;
        let keep = keep.or(p.pin_session.as_ref().map(|(id, _)| id.as_str()));
        let ended = end_sessions(deps, &p.sub, keep).await?;
        crate::util::audit::event(
            "pin_changed",
            &p.sub,
            ip,
            &format!("{ended} other PIN session(s) ended"),
        );
        deps.notifier
            .event("ChangePIN", &p.sub, json!({"EndedSessions": ended}));
        Ok(())
    })
    .await
}

// ---------- forgot and reset ----------

#[derive(Serialize, Deserialize)]
struct ResetRecord {
    sub: String,
    exp: i64,
}

#[derive(Serialize, Deserialize)]
struct ResetCode {
    mac: String,
    exp: i64,
    /// `sms` or `email`: a code is redeemed only with an identifier of the
    /// channel it went to.
    #[serde(default)]
    channel: String,
}

fn channel_of(id: &Identifier) -> &'static str {
    match id {
        Identifier::Phone(_) => "sms",
        _ => "email",
    }
}

/// Whether `url` may receive reset links: equal to an allowed URL, or under
/// an allowed prefix that ends in `/`.
pub fn reset_url_allowed(allowed: &[String], url: &str) -> bool {
    let base = url.split(['?', '#']).next().unwrap_or("");
    allowed
        .iter()
        .any(|a| base == a || (a.ends_with('/') && base.starts_with(a.as_str())))
}

/// Where links that stepgate sends (reset links in mail) point: `public_url`
/// when set; else this request's `origin` (`scheme://host[:port]`), but only
/// when its host is one the config names: an exact host of the per-host
/// `upstream` map, `default_host`, or an address stepgate listens on (host
/// and port). None: no link may be built, as the request's Host is the
/// client's to choose.
pub fn link_origin(settings: &crate::config::Settings, origin: &str) -> Option<String> {
    use crate::request::Host;
    if let Some(u) = &settings.public_url {
        return Some(u.trim_end_matches('/').to_string());
    }
    let (scheme, authority) = origin.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let host = Host::parse(authority.as_bytes()).ok()?;
    let same = |named: &Host, port_must_match: bool| {
        named.name() == host.name()
            && (named.port() == host.port() || (!port_must_match && named.port().is_none()))
    };
    let named = settings.upstreams.by_host.contains_key(host.name())
        || settings
            .default_host
            .as_ref()
            .is_some_and(|d| same(d, false))
        || settings.listen.iter().any(|l| {
            Host::parse(l.as_bytes()).is_ok_and(|l| {
                l.port().is_some() && !matches!(l.name(), "0.0.0.0" | "[::]") && same(&l, true)
            })
        });
    named.then(|| format!("{scheme}://{}", host.authority()))
}

/// A reset link was due but no address may carry it: say what to set, count
/// it, and send nothing.
fn no_link(origin: &str, sub: &str, ip: &str) {
    tracing::error!(
        target: "stepgate",
        origin,
        "a PIN reset link was not sent: set `public_url` in the gateway config (the request's host is not one the config names, so it cannot be trusted for links)"
    );
    metrics::DELIVERIES
        .with_label_values(&["email", "no_public_url"])
        .inc();
    crate::util::audit::event("pin_reset_no_link", sub, ip, "public_url is not set");
}

fn reset_code(len: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

/// What went out (for tests and the audit log, never to the caller).
enum Outgoing {
    Mail(crate::outbound::mail::Outgoing),
    Sms { to: String, text: String },
}

/// Forgot PIN by email, username or phone. Answers the same whether or not
/// the account exists; the message is delivered in the background.
/// `origin`: this request's `scheme://host`, for links when `public_url` is
/// not set.
pub async fn forgot(
    deps: &Deps,
    id: &Identifier,
    reset_url: Option<&str>,
    origin: &str,
    ip: &str,
) -> Result<(), FlowError> {
    counted("forgot", forgot_inner(deps, id, reset_url, origin, ip)).await
}

async fn forgot_inner(
    deps: &Deps,
    id: &Identifier,
    reset_url: Option<&str>,
    origin: &str,
    ip: &str,
) -> Result<(), FlowError> {
    let phone = matches!(id, Identifier::Phone(_));
    if phone && !deps.notifier.sms_configured() {
        return Err(FlowError::Disabled(
            "PIN recovery by SMS needs `sms.webhook_url` in the gateway config.",
        ));
    }
    if !phone && deps.mailer.is_none() {
        return Err(FlowError::NotConfigured);
    }
    if let Some(u) = reset_url.filter(|_| !phone) {
        if !reset_url_allowed(&deps.settings.pin.reset_urls, u) {
            return Err(FlowError::ResetUrlNotAllowed);
        }
    }
    // Per client address first, so asking about many accounts is bounded
    // too; every request counts, whatever it names.
    let by_ip = deps
        .store
        .incr(&keys::forgot_ip(ip), Duration::from_secs(3600))
        .await?;
    if by_ip.value > deps.settings.pin.forgot_ip_limit as i64 {
        crate::util::audit::event("pin_forgot_ip_limit", "", ip, "");
        return Err(FlowError::SendLimit {
            until: by_ip.expires_at_ms.div_ceil(1000) as i64,
        });
    }
    // Rate limits per identifier, whether or not it names an account.
    let limits = &deps.settings.email_otp;
    let cool = keys::forgot_cooldown(&id.key());
    if !deps
        .store
        .put_if_absent(&cool, b"1", limits.resend_cooldown)
        .await?
    {
        return Err(FlowError::Cooldown {
            retry_after: limits.resend_cooldown.as_secs() as i64,
        });
    }
    let hour = keys::forgot_hourly(&id.key());
    let n = deps.store.incr(&hour, Duration::from_secs(3600)).await?;
    if n.value > limits.max_sends_per_hour as i64 {
        return Err(FlowError::SendLimit {
            until: n.expires_at_ms.div_ceil(1000) as i64,
        });
    }
    let Some(prof) = profile::find(&*deps.store, id).await? else {
        crate::util::audit::event(
            "pin_forgot_unknown",
            "",
            ip,
            id.key().split(':').next().unwrap_or(""),
        );
        return Ok(());
    };
    let s = &deps.settings.pin;
    let now = crate::util::clock::now();
    let exp = now + s.reset_ttl.as_secs() as i64;
    let minutes = s.reset_ttl.as_secs().div_ceil(60);
    let (outgoing, undo_key) = if let Identifier::Phone(to) = id {
        let code = reset_code(limits.length);
        store_reset_code(deps, &prof.sub, &code, exp, "sms").await?;
        let text = deps.pages.sms_text(&code, minutes);
        (
            Outgoing::Sms {
                to: to.clone(),
                text,
            },
            keys::reset_otp(&prof.sub),
        )
    } else {
        let asked = match id {
            Identifier::Email(e) => Some(e.as_str()),
            _ => None,
        };
        let Some(to) = prof.mail_to(asked) else {
            crate::util::audit::event("pin_forgot_no_address", &prof.sub, ip, "");
            return Ok(());
        };
        match s.forgot {
            ForgotMode::Link => {
                let base = match reset_url {
                    Some(u) => u.to_string(),
                    None => match link_origin(&deps.settings, origin) {
                        Some(o) => format!("{o}/.stepgate/pin/reset"),
                        None => {
                            // The caller hears what an unknown account hears.
                            no_link(origin, &prof.sub, ip);
                            return Ok(());
                        }
                    },
                };
                let token = secret_token();
                let rec = ResetRecord {
                    sub: prof.sub.clone(),
                    exp,
                };
                let key = keys::reset_token(&token_digest(&token));
                deps.store
                    .put(&key, &json_of(&rec)?, Some(s.reset_ttl))
                    .await?;
                let sep = if base.contains('?') { '&' } else { '?' };
                let link = format!("{base}{sep}token={token}");
                (
                    Outgoing::Mail(deps.pages.reset_mail(&to, Some(&link), None, minutes)),
                    key,
                )
            }
            ForgotMode::Otp => {
                let code = reset_code(limits.length);
                store_reset_code(deps, &prof.sub, &code, exp, "email").await?;
                (
                    Outgoing::Mail(deps.pages.reset_mail(&to, None, Some(&code), minutes)),
                    keys::reset_otp(&prof.sub),
                )
            }
        }
    };
    deliver(deps, outgoing, prof.sub.clone(), ip.to_string(), undo_key);
    Ok(())
}

async fn store_reset_code(
    deps: &Deps,
    sub: &str,
    code: &str,
    exp: i64,
    channel: &str,
) -> Result<(), FlowError> {
    let rec = ResetCode {
        mac: deps.keys.otp_mac(sub, "pin-reset", code),
        exp,
        channel: channel.to_string(),
    };
    deps.store.delete(&keys::reset_otp_tries(sub)).await?;
    deps.store
        .put(
            &keys::reset_otp(sub),
            &json_of(&rec)?,
            Some(deps.settings.pin.reset_ttl),
        )
        .await?;
    Ok(())
}

/// Send in the background, so the answer takes as long whether or not the
/// account exists. A failed send drops the credential it carried; the
/// cooldown stays, as it does for requests about unknown accounts, so the
/// answers to a retry tell nothing either.
fn deliver(deps: &Deps, out: Outgoing, sub: String, ip: String, undo_key: String) {
    let mailer = deps.mailer.clone();
    let notifier = deps.notifier.clone();
    let store = deps.store.clone();
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let (channel, result) = match out {
            Outgoing::Mail(m) => {
                let r = match &mailer {
                    Some(mailer) => mailer.send(m).await.map_err(|e| e.to_string()),
                    None => Err("no mailer".into()),
                };
                ("email", r)
            }
            Outgoing::Sms { to, text } => ("sms", notifier.sms(&to, &text).await),
        };
        match result {
            Ok(()) => {
                metrics::DELIVERIES.with_label_values(&[channel, "sent"]).inc();
                crate::util::audit::event("pin_reset_sent", &sub, &ip, channel);
            }
            Err(e) => {
                metrics::DELIVERIES
                    .with_label_values(&[channel, "failed"])
                    .inc();
                crate::util::audit::event("pin_reset_send_failed", &sub, &ip, &e);
                tracing::warn!(target: "stepgate", channel, error = %e, "sending the PIN reset message failed");
                let _ = store.delete(&undo_key).await;
            }
        }
    });
}

/// For the reset page: is this ResetToken usable (without using it)?
pub async fn check_reset_token(deps: &Deps, token: &str) -> Result<(), FlowError> {
    if token.is_empty() || token.len() > 128 {
        return Err(FlowError::ResetInvalid);
    }
    let d = token_digest(token);
    match deps.store.get(&keys::reset_token(&d)).await? {
        Some(raw) => {
            let rec: ResetRecord = parse(&raw)?;
            if rec.exp <= crate::util::clock::now() {
                return Err(FlowError::ResetInvalid);
            }
            Ok(())
        }
        None if deps.store.get(&keys::reset_used(&d)).await?.is_some() => Err(FlowError::ResetUsed),
        None => Err(FlowError::ResetInvalid),
    }
}

/// Reset the PIN with the ResetToken from a forgot-PIN link (single use).
pub async fn reset_by_token(
    deps: &Deps,
    token: &str,
    new: &str,
    ip: &str,
) -> Result<(), FlowError> {
    counted("reset_token", async {
        pin::check_new_pin(new, &deps.settings.pin)?;
        if token.is_empty() || token.len() > 128 {
            return Err(FlowError::ResetInvalid);
        }
        let d = token_digest(token);
        let used = keys::reset_used(&d);
        let Some(raw) = deps.store.get(&keys::reset_token(&d)).await? else {
            return Err(if deps.store.get(&used).await?.is_some() {
                FlowError::ResetUsed
            } else {
                FlowError::ResetInvalid
            });
        };
        // The single-use deps: whoever marks the token used first wins; the
        // mark exists before the record goes, so every loser reads 1242.
        if !deps
            .store
            .put_if_absent(&used, b"1", Duration::from_secs(86400))
            .await?
        {
            return Err(FlowError::ResetUsed);
        }
        deps.store.delete(&keys::reset_token(&d)).await?;
        let rec: ResetRecord = parse(&raw)?;
        if rec.exp <= crate::util::clock::now() {
            return Err(FlowError::ResetInvalid);
        }
        finish_reset(deps, &rec.sub, new, ip, "token").await
    })
    .await
}

/// Reset the PIN with the code a forgot-PIN request sent. Every refusal
/// looks the same (no account, no code, wrong code, used up), so answers
/// never tell whether an account exists; guesses are limited per code and
/// per client address.
pub async fn reset_by_otp(
    deps: &Deps,
    id: &Identifier,
    code: &str,
    new: &str,
    ip: &str,
) -> Result<(), FlowError> {
    counted("reset_otp", async {
        pin::check_new_pin(new, &deps.settings.pin)?;
        let prof = profile::find(&*deps.store, id).await?;
        let sub = match &prof {
            Some(p) => p.sub.clone(),
            None => format!("unknown:{}", id.key()),
        };
        let attempt = pin::reserve_on(
            &*deps.store,
            &deps.settings.lockout,
            keys::reset_otp_failures(&sub),
            keys::ip_reset_failures(ip),
        )
        .await?;
        let refused = FlowError::ResetCodeRefused;
        let key = keys::reset_otp(&sub);
        let rec: Option<ResetCode> = match deps.store.get(&key).await? {
            Some(raw) => Some(parse(&raw)?),
            None => None,
        };
        let max = deps.settings.email_otp.max_tries as i64;
        let ok = match &rec {
            Some(rec) if rec.exp > crate::util::clock::now() && rec.channel == channel_of(id) => {
                let tries = deps
                    .store
                    .incr(&keys::reset_otp_tries(&sub), deps.settings.pin.reset_ttl)
                    .await?;
                let mac = deps.keys.otp_mac(&sub, "pin-reset", code.trim());
                let right = bool::from(mac.as_bytes().ct_eq(rec.mac.as_bytes()));
                if !right && tries.value >= max {
                    // Burned: a new forgot request sends a new code.
                    deps.store.delete(&key).await?;
                }
                right && tries.value <= max
            }
            _ => false,
        };
        // Single use, even against a concurrent right guess elsewhere.
        if !ok || deps.store.take(&key).await?.is_none() {
            crate::util::audit::event("pin_reset_wrong_code", &sub, ip, "");
            return Err(match attempt.failure(&sub, ip).await? {
                FlowError::Locked { until } => FlowError::Locked { until },
                _ => refused,
            });
        }
        attempt.success().await?;
        finish_reset(deps, &sub, new, ip, "otp").await
    })
    .await
}

fn normalize_answer(a: &str) -> String {
    a.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Reset the PIN with security answers. Every question the user answered
/// must be answered right; failures count toward a lockout of their own.
pub async fn reset_by_answers(
    deps: &Deps,
    id: &Identifier,
    given: &BTreeMap<String, String>,
    new: &str,
    ip: &str,
) -> Result<(), FlowError> {
    counted("reset_answers", async {
        pin::check_new_pin(new, &deps.settings.pin)?;
        let prof = profile::find(&*deps.store, id).await?;
        // Unknown accounts go through the same steps, lockout included.
        let sub = match &prof {
            Some(p) => p.sub.clone(),
            None => format!("unknown:{}", id.key()),
        };
        let stored: BTreeMap<String, String> = match &prof {
            Some(p) => match deps.store.get(&keys::answers(&p.sub)).await? {
                Some(raw) => parse(&raw)?,
                None => BTreeMap::new(),
            },
            None => BTreeMap::new(),
        };
        let attempt = pin::reserve_on(
            &*deps.store,
            &deps.settings.lockout,
            keys::answer_failures(&sub),
            keys::ip_answer_failures(ip),
        )
        .await?;
        let mut ok = !stored.is_empty();
        if stored.is_empty() {
            // As long as a real check, so timing tells nothing.
            let _ = deps.hasher.verify("x".into(), DECOY_PHC.to_string()).await;
        }
        for (qid, phc) in &stored {
            let answer = given
                .get(qid)
                .map(|a| normalize_answer(a))
                .unwrap_or_default();
            if answer.is_empty()
                || answer.len() > 256
                || !deps.hasher.verify(answer, phc.clone()).await?
            {
                ok = false;
                break;
            }
        }
        if !ok {
            crate::util::audit::event("pin_reset_wrong_answers", &sub, ip, "");
            return Err(match attempt.failure(&sub, ip).await? {
                FlowError::WrongPin { remaining } => FlowError::WrongAnswers { remaining },
                other => other,
            });
        }
        attempt.success().await?;
        finish_reset(deps, &sub, new, ip, "security_answers").await
    })
    .await
}

/// An Argon2id hash of nothing anyone can answer, for equal-time refusals.
const DECOY_PHC: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c3RlcGdhdGVkZWNveQ$0dqB0xKz7kzNnRdzJ8zq1oF3mC0y3b0h2vN2wR7JzqY";

async fn finish_reset(
    deps: &Deps,
    sub: &str,
    new: &str,
    ip: &str,
    how: &str,
) -> Result<(), FlowError> {
    pin::store_pin(&*deps.store, &deps.hasher, sub, new).await?;
    // Proven by the mailbox, phone or answers: the PIN lockout is lifted,
    // a suspension and the memory of earlier locks included.
    pin::clear_lockout(&*deps.store, sub).await?;
    deps.known_pins.insert(sub);
    invalidate_user(deps, sub, ip).await?;
    crate::util::audit::event("pin_reset", sub, ip, how);
    deps.notifier.event("ResetPIN", sub, json!({"Method": how}));
    Ok(())
}

// ---------- security questions ----------

/// What a session shows to set recovery answers, which can replace the PIN
/// (a reset by answers), so they need what the PIN needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct AnswersProof<'a> {
    /// A step-up of this very session, made within `pin.enroll_window` and
    /// not invalidated since (the caller checked it: it holds the request).
    pub recent_step_up: bool,
    /// The current PIN, typed with the answers.
    pub pin: Option<&'a str>,
}

/// Set (or replace) the user's answers. A user with a PIN proves it: a
/// recent step-up, or the current PIN (verified under the PIN lockout); a
/// fresh login is not enough, as it does not know the PIN. A user without a
/// PIN needs a recent step-up or a fresh first-factor login, like any new
/// way to confirm.
pub async fn set_answers(
    deps: &Deps,
    p: &Principal,
    answers: &[(String, String)],
    proof: AnswersProof<'_>,
    ip: &str,
) -> Result<usize, FlowError> {
    counted("set_answers", async {
        let qs = &deps.settings.security_questions;
        if qs.is_empty() {
            return Err(FlowError::Disabled(
                "No security questions are configured on this gateway.",
            ));
        }
        if answers.is_empty() {
            return Err(FlowError::BadAnswer("Give at least one answer.".into()));
        }
        let mut normalized = Vec::new();
        for (qid, a) in answers {
            if !qs.iter().any(|q| &q.id == qid) {
                return Err(FlowError::UnknownQuestion(qid.clone()));
            }
            let a = normalize_answer(a);
            if a.is_empty() || a.len() > 256 {
                return Err(FlowError::BadAnswer(
                    "Each answer needs 1 to 256 characters.".into(),
                ));
            }
            normalized.push((qid.clone(), a));
        }
        answers_allowed(deps, p, proof, ip).await?;
        let key = keys::answers(&p.sub);
        let mut stored: BTreeMap<String, String> = match deps.store.get(&key).await? {
            Some(raw) => parse(&raw)?,
            None => BTreeMap::new(),
        };
        for (qid, a) in normalized {
            stored.insert(qid, deps.hasher.hash(a).await?);
        }
        deps.store.put(&key, &json_of(&stored)?, None).await?;
        remember_profile(deps, p).await;
        crate::util::audit::event(
            "security_answers_set",
            &p.sub,
            ip,
            &stored.len().to_string(),
        );
        Ok(stored.len())
    })
    .await
}

async fn answers_allowed(
    deps: &Deps,
    p: &Principal,
    proof: AnswersProof<'_>,
    ip: &str,
) -> Result<(), FlowError> {
    if proof.recent_step_up {
        return Ok(());
    }
    let has_pin = pin::load_record(&*deps.store, &p.sub).await?.is_some();
    match (has_pin, proof.pin.filter(|pin| !pin.is_empty())) {
        (true, Some(entered)) => pin::verify(
            &*deps.store,
            &deps.hasher,
            &deps.settings.lockout,
            &p.sub,
            ip,
            entered,
            Some(&|sub: &str, ip: &str| crate::flows::notice::pin_suspended(deps, sub, ip)),
        )
        .await
        .map_err(|e| match e {
            FlowError::WrongPin { remaining } => FlowError::WrongCurrentPin { remaining },
            other => other,
        }),
        (true, None) => {
            crate::util::audit::event("security_answers_refused", &p.sub, ip, "no step-up or PIN");
            Err(FlowError::StepUpRequired)
        }
        (false, _)
            if fresh_login(
                p.login_time,
                deps.settings.pin.enroll_window,
                crate::util::clock::now(),
            ) =>
        {
            Ok(())
        }
        (false, _) => Err(FlowError::LoginNotFresh),
    }
}

/// The questions to answer for a reset: every configured one, whoever asks,
/// so the list never tells whether (or how) an account exists. A reset
/// needs right answers to every question the user answered; answers to
/// other questions are ignored.
pub fn questions_for(deps: &Deps, _id: &Identifier) -> Result<Vec<Question>, FlowError> {
    let qs = &deps.settings.security_questions;
    if qs.is_empty() {
        return Err(FlowError::Disabled(
            "No security questions are configured on this gateway.",
        ));
    }
    Ok(qs.clone())
}

/// The questions a signed-in user has answered (account page).
pub async fn answered(deps: &Deps, sub: &str) -> Result<Vec<String>, FlowError> {
    Ok(match deps.store.get(&keys::answers(sub)).await? {
        Some(raw) => parse::<BTreeMap<String, String>>(&raw)?
            .into_keys()
            .collect(),
        None => Vec::new(),
    })
}

// ---------- PINAuthToken and mandatory PINs ----------

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
struct AuthTokenRecord {
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
        let exp = crate::util::clock::now() + ttl.as_secs() as i64;
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
        let now = crate::util::clock::now();
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
        let profile = profile::load(&*deps.store, &rec.sub)
            .await?
            .unwrap_or(Profile {
                sub: rec.sub.clone(),
                ..Default::default()
            });
        let (session, access) = if deps.settings.pin.login {
            // A PINAuthToken is not a first-factor login: sessions from it
            // are never "fresh" (no new recovery credentials without a
            // step-up).
            let (t, s) = open_session(deps, profile.clone(), None, ua).await?;
            let access = deps.keys.issue_session(
                &profile,
                &s.id,
                None,
                crate::util::clock::now_ms(),
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
    let now = crate::util::clock::now();
    let Some(login_time) = p
        .login_time
        .filter(|_| fresh_login(p.login_time, deps.settings.pin.enroll_window, now))
    else {
        return Ok(None);
    };
    let fresh_from = now + deps.settings.pin.auth_token_ttl.as_secs() as i64 - 60;
    let cache_key = format!("{}\0{login_time}", p.sub);
    if let Some((t, exp)) = deps
        .required_pin_tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&cache_key)
        .filter(|(_, exp)| *exp >= fresh_from)
        .cloned()
    {
        return Ok(Some((t, exp)));
    }
    let (t, exp) = issue_auth_token(deps, &p.sub, AuthTokenFor::Login(login_time)).await?;
    crate::util::bounded::insert(
        &mut deps
            .required_pin_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
        10_000,
        cache_key,
        (t.clone(), exp),
        |_, (_, e)| *e >= fresh_from,
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_urls_must_be_listed() {
        let allowed = vec![
            "https://app.example.com/reset".to_string(),
            "https://id.example.com/pin/".to_string(),
        ];
        assert!(reset_url_allowed(&allowed, "https://app.example.com/reset"));
        assert!(reset_url_allowed(
            &allowed,
            "https://app.example.com/reset?x=1"
        ));
        assert!(reset_url_allowed(
            &allowed,
            "https://id.example.com/pin/reset"
        ));
        assert!(!reset_url_allowed(
            &allowed,
            "https://app.example.com/reset2"
        ));
        assert!(!reset_url_allowed(
            &allowed,
            "https://app.example.com.evil.io/reset"
        ));
        assert!(!reset_url_allowed(&allowed, "https://id.example.com/pinx"));
        assert!(!reset_url_allowed(&[], "https://app.example.com/reset"));
    }

    fn settings(extra: &str) -> crate::config::Settings {
        let secret = "0123456789abcdef0123456789abcdef";
        crate::config::from_str(
            std::path::Path::new("/tmp/gw.yaml"),
            &format!("policy: p.yaml\nfirst_factor: {{ jwt: {{ secret: \"{secret}\" }} }}\nsigning: {{ secret: \"{secret}\" }}\n{extra}"),
        )
        .unwrap()
    }

    #[test]
    fn links_use_public_url_when_set_whatever_the_host() {
        let s =
            settings("upstream: http://127.0.0.1:9000\npublic_url: \"https://gw.example.com/\"\n");
        for origin in ["http://attacker.example", "http://127.0.0.1:8080", ""] {
            assert_eq!(
                link_origin(&s, origin).as_deref(),
                Some("https://gw.example.com"),
                "{origin}"
            );
        }
    }

    #[test]
    fn without_public_url_links_follow_only_hosts_the_config_names() {
        let s = settings(
            "listen: [\"127.0.0.1:8443\", \"0.0.0.0:9443\"]\nupstream: { \"app.example.com\": \"http://127.0.0.1:9000\", \"*\": \"http://127.0.0.1:9001\" }\n",
        );
        assert_eq!(
            link_origin(&s, "https://App.Example.com.").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            link_origin(&s, "https://app.example.com:8443").as_deref(),
            Some("https://app.example.com:8443")
        );
        // Where stepgate itself listens (address and port).
        assert_eq!(
            link_origin(&s, "http://127.0.0.1:8443").as_deref(),
            Some("http://127.0.0.1:8443")
        );
        for refused in [
            "http://attacker.example",
            "http://app.example.com.attacker.example",
            "http://127.0.0.1:9999",
            "http://127.0.0.1",
            "http://0.0.0.0:9443",
            "http://app.example.com@attacker.example",
            "http://app.example.com/x",
            "javascript://app.example.com",
            "app.example.com",
            "",
        ] {
            assert_eq!(link_origin(&s, refused), None, "{refused}");
        }
        // A single upstream names no host.
        let single = settings("upstream: http://127.0.0.1:9000\n");
        assert_eq!(link_origin(&single, "http://app.example.com"), None);
    }

    #[test]
    fn forgot_requests_per_address_default_to_ten_an_hour() {
        let base = "upstream: http://127.0.0.1:9000\n";
        assert_eq!(settings(base).pin.forgot_ip_limit, 10);
        let s = settings(&format!("{base}pin: {{ forgot_ip_limit: 3 }}\n"));
        assert_eq!(s.pin.forgot_ip_limit, 3);
    }

    #[test]
    fn an_ended_sessions_invalidation_outlives_every_session_token_it_gave() {
        let login_ttl = Duration::from_secs(900);
        // Ended a day before it would have expired.
        assert_eq!(
            ended_session_ttl(1000 + 86400, 1000, login_ttl),
            Duration::from_secs(86400 + 900 + 3600)
        );
        // Already expired: the last session token may still live login_ttl.
        assert_eq!(
            ended_session_ttl(500, 1000, login_ttl),
            Duration::from_secs(900 + 3600)
        );
    }

    #[test]
    fn a_login_is_fresh_only_within_the_window_and_when_its_time_is_known() {
        let w = Duration::from_secs(600);
        assert!(fresh_login(Some(1000), w, 1600));
        assert!(!fresh_login(Some(1000), w, 1601));
        assert!(!fresh_login(None, w, 1000));
    }

    #[test]
    fn answers_normalise_case_and_spaces() {
        assert_eq!(
            normalize_answer("  Saint   Mary's\tSchool "),
            "saint mary's school"
        );
    }

    #[test]
    fn decoy_hash_is_a_valid_phc_string() {
        assert!(argon2::password_hash::PasswordHash::new(DECOY_PHC).is_ok());
    }
}
