//! The email-OTP factor: send a code to an address of the user's profile,
//! verify it once. Codes come from the OS CSPRNG and are stored only as an
//! HMAC; each is single use, expires, burns after `max_tries` wrong guesses,
//! and every guess goes through the same lockout as PINs. Sending is rate
//! limited (cooldown, hourly cap); a send that fails consumes neither.
//!
//! States per user: no code → code pending (tries left) → used | burned |
//! expired. In `mfa` mode an address must first be verified as an email
//! authenticator by one successful round (purpose `enroll`).

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::auth::principal::Principal;
use crate::config::OtpMode;
use crate::flows::deps::Deps;
use crate::flows::error::FlowError;
use crate::flows::pin;
use crate::store::keys;
use crate::util::digest::digest_b64;
use crate::util::metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    StepUp,
    /// MFA mode: prove the address once to make it an authenticator.
    Enroll,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct Pending {
    mac: String,
    email: String,
    expires_at: i64,
    purpose: Purpose,
    /// What the code approves (`step_up.bind`): the values its mail showed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    txn: Option<crate::auth::binding::Txn>,
}

/// `a***e@example.com`: enough to recognise, not enough to harvest.
pub fn mask(email: &str) -> String {
    let Some((local, domain)) = email.split_once('@') else {
        return "***".into();
    };
    let chars: Vec<char> = local.chars().collect();
    match chars.len() {
        0 => format!("***@{domain}"),
        1 | 2 => format!("{}***@{domain}", chars[0]),
        n => format!("{}***{}@{domain}", chars[0], chars[n - 1]),
    }
}

fn flag_key(sub: &str, email: &str) -> String {
    format!(
        "{}:{}",
        keys::otp_verified(sub),
        &digest_b64(email.as_bytes())[..16]
    )
}

/// Addresses verified as email authenticators (MFA mode).
pub async fn verified_addresses(deps: &Deps, p: &Principal) -> Result<Vec<String>, FlowError> {
    let mut out = Vec::new();
    for e in &p.otp_emails {
        if deps.store.get(&flag_key(&p.sub, e)).await?.is_some() {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// Which purpose a send to `email` has: enrollment in MFA mode while the
/// address is not yet an authenticator, else a step-up.
pub async fn purpose_for(deps: &Deps, p: &Principal, email: &str) -> Result<Purpose, FlowError> {
    if deps.settings.email_otp.mode == OtpMode::Mfa
        && deps.store.get(&flag_key(&p.sub, email)).await?.is_none()
    {
        return Ok(Purpose::Enroll);
    }
    Ok(Purpose::StepUp)
}

/// What a send answers: where it went and until when the code is good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub masked: String,
    pub expires_at: i64,
    pub purpose: Purpose,
}

/// Send a code to `email`, which must be an address of the profile.
/// `enroll_allowed`: the caller checked that an MFA enrollment may start
/// (a fresh first-factor login).
pub async fn send(
    deps: &Deps,
    p: &Principal,
    email: &str,
    ip: &str,
    enroll_allowed: bool,
) -> Result<Sent, FlowError> {
    send_for(deps, p, email, ip, enroll_allowed, None).await
}

/// [`send`] for a bound step-up: the mail shows `binding`'s values and the
/// code approves exactly them ([`verify_for`] hands back what it approves).
pub async fn send_for(
    deps: &Deps,
    p: &Principal,
    email: &str,
    ip: &str,
    enroll_allowed: bool,
    binding: Option<(&crate::auth::binding::Values, Option<&str>)>,
) -> Result<Sent, FlowError> {
    let s = &deps.settings.email_otp;
    let email = email.trim().to_ascii_lowercase();
    if !p.otp_emails.contains(&email) {
        crate::util::audit::event("otp_refused_address", &p.sub, ip, "not in profile");
        return Err(FlowError::EmailNotInProfile);
    }
    let purpose = purpose_for(deps, p, &email).await?;
    if purpose == Purpose::Enroll && !enroll_allowed {
        return Err(FlowError::LoginNotFresh);
    }
    let Some(mailer) = deps.mailer.clone() else {
        return Err(FlowError::NotConfigured);
    };
    let now = deps.store.now();
    let cool_key = keys::otp_cooldown(&p.sub);
    if !deps
        .store
        .put_if_absent(&cool_key, b"1", s.resend_cooldown)
        .await?
    {
        return Err(FlowError::Cooldown {
            retry_after: s.resend_cooldown.as_secs() as i64,
        });
    }
    let hour_key = keys::otp_hourly(&p.sub);
    let hourly = deps
        .store
        .incr(&hour_key, Duration::from_secs(3600))
        .await?;
    if hourly.value > s.max_sends_per_hour as i64 {
        deps.store.decr(&hour_key).await?;
        deps.store.delete(&cool_key).await?;
        return Err(FlowError::SendLimit {
            until: hourly.expires_at_ms.div_ceil(1000) as i64,
        });
    }
    let code: String = {
        let mut rng = rand::rngs::OsRng;
        (0..s.length)
            .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
            .collect()
    };
    let expires_at = now + s.ttl.as_secs() as i64;
    let pending = Pending {
        mac: deps.keys.otp_mac(&p.sub, &email, &code),
        email: email.clone(),
        expires_at,
        purpose,
        txn: binding.map(|(v, rule)| crate::auth::binding::txn(v).on_rule(rule)),
    };
    let raw = serde_json::to_vec(&pending).map_err(|_| FlowError::Internal)?;
    // A new code starts with all its tries.
    deps.store.delete(&keys::otp_tries(&p.sub)).await?;
    deps.store
        .put(&keys::otp(&p.sub), &raw, Some(s.ttl))
        .await?;
    let shown = binding
        .map(|(v, _)| crate::auth::binding::shown(v))
        .unwrap_or_default();
    let mail = deps
        .pages
        .otp_mail(&email, &code, s.ttl, expires_at, &shown);
    match mailer.send(mail).await {
        Ok(()) => {
            metrics::OTP_SENT.inc();
            crate::util::audit::event("otp_sent", &p.sub, ip, &mask(&email));
            Ok(Sent {
                masked: mask(&email),
                expires_at,
                purpose,
            })
        }
        Err(e) => {
            // Nothing consumed: the user may retry at once.
            let _ = deps.store.delete(&keys::otp(&p.sub)).await;
            let _ = deps.store.delete(&cool_key).await;
            let _ = deps.store.decr(&hour_key).await;
            metrics::OTP_SEND_FAILURES.inc();
            crate::util::audit::event("otp_send_failed", &p.sub, ip, &e.to_string());
            tracing::warn!(target: "stepgate", error = %e, "sending the email code failed");
            Err(FlowError::MailFailed)
        }
    }
}

/// Where a user's step-up code stands. A code is sent, then verified
/// (taken), burned (too many tries) or expired; the last three look the
/// same from outside, and say so: there is no code to enter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtpState {
    /// None waiting: never sent, verified, burned or expired.
    NoCode,
    /// Sent, and enterable until `Sent::expires_at`.
    Sent(Sent),
}

/// The user's code state now (on the store's clock).
pub async fn state(deps: &Deps, p: &Principal) -> Result<OtpState, FlowError> {
    Ok(match pending(deps, p).await? {
        Some(sent) if sent.expires_at > deps.store.now() => OtpState::Sent(sent),
        _ => OtpState::NoCode,
    })
}

/// Where a pending code went, for the code page.
pub async fn pending(deps: &Deps, p: &Principal) -> Result<Option<Sent>, FlowError> {
    Ok(record(deps, p).await?.map(|rec| Sent {
        masked: mask(&rec.email),
        expires_at: rec.expires_at,
        purpose: rec.purpose,
    }))
}

/// The user's pending code record as stored, expired or not.
async fn record(deps: &Deps, p: &Principal) -> Result<Option<Pending>, FlowError> {
    let Some(raw) = deps.store.get(&keys::otp(&p.sub)).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&raw)
        .map(Some)
        .map_err(|_| FlowError::Internal)
}

/// Verify a code. On success the code is consumed and, for an enrollment,
/// the address becomes an authenticator.
pub async fn verify(
    deps: &Deps,
    p: &Principal,
    code: &str,
    ip: &str,
) -> Result<Purpose, FlowError> {
    verify_for(deps, p, code, ip)
        .await
        .map(|(purpose, _)| purpose)
}

/// Whether the user's pending code (if any, unexpired) was sent for bound
/// values: read without spending a try or the code, so a caller can refuse
/// a request the code cannot serve before it is used up.
pub async fn pending_is_bound(deps: &Deps, p: &Principal) -> Result<Option<bool>, FlowError> {
    Ok(record(deps, p)
        .await?
        .filter(|r| deps.store.now() < r.expires_at)
        .map(|r| r.txn.is_some()))
}

/// [`verify`], and what the code approves when it was sent for a bound
/// step-up ([`send_for`]).
pub async fn verify_for(
    deps: &Deps,
    p: &Principal,
    code: &str,
    ip: &str,
) -> Result<(Purpose, Option<crate::auth::binding::Txn>), FlowError> {
    let key = keys::otp(&p.sub);
    let Some(rec) = record(deps, p).await? else {
        metrics::OTP_VERIFICATIONS
            .with_label_values(&["no_code"])
            .inc();
        return Err(FlowError::NoCode);
    };
    let now = deps.store.now();
    if now >= rec.expires_at {
        metrics::OTP_VERIFICATIONS
            .with_label_values(&["expired"])
            .inc();
        return Err(FlowError::NoCode);
    }
    // Codes share the PIN's lockout, suspension included.
    let notice = |sub: &str, ip: &str| crate::flows::notice::pin_suspended(deps, sub, ip);
    let attempt = pin::reserve(&*deps.store, &deps.settings.lockout, &p.sub, ip)
        .await?
        .on_suspend(Some(&notice));
    // Each guess takes a try atomically before it is compared, so concurrent
    // guesses can never exceed `max_tries` for one code.
    let max_tries = deps.settings.email_otp.max_tries as i64;
    let tries_key = keys::otp_tries(&p.sub);
    let ttl = Duration::from_secs((rec.expires_at - now).max(1) as u64);
    let tries = deps.store.incr(&tries_key, ttl).await?.value;
    if tries > max_tries {
        // Not evaluated: released, and the run of failures goes on.
        attempt.abandon().await;
        deps.store.delete(&key).await?;
        metrics::OTP_VERIFICATIONS
            .with_label_values(&["burned"])
            .inc();
        return Err(FlowError::NoCode);
    }
    let code = code.trim();
    let right = code.len() <= 16
        && bool::from(
            deps.keys
                .otp_mac(&p.sub, &rec.email, code)
                .as_bytes()
                .ct_eq(rec.mac.as_bytes()),
        );
    if right {
        // Single use: only the caller that takes the record succeeds.
        if deps.store.take(&key).await?.is_none() {
            attempt.abandon().await;
            metrics::OTP_VERIFICATIONS
                .with_label_values(&["replay"])
                .inc();
            return Err(FlowError::NoCode);
        }
        attempt.success().await?;
        if rec.purpose == Purpose::Enroll {
            deps.store
                .put(&flag_key(&p.sub, &rec.email), b"1", None)
                .await?;
            crate::util::audit::event(
                "email_authenticator_verified",
                &p.sub,
                ip,
                &mask(&rec.email),
            );
        }
        metrics::OTP_VERIFICATIONS
            .with_label_values(&["success"])
            .inc();
        crate::util::audit::event("otp_success", &p.sub, ip, "");
        return Ok((rec.purpose, rec.txn));
    }
    metrics::OTP_VERIFICATIONS
        .with_label_values(&["failure"])
        .inc();
    crate::util::audit::event("otp_failure", &p.sub, ip, "");
    let left = (max_tries - tries).max(0) as u32;
    if left == 0 {
        deps.store.delete(&key).await?;
        crate::util::audit::event("otp_burned", &p.sub, ip, "");
    }
    match attempt.failure(&p.sub, ip).await? {
        FlowError::WrongPin { remaining } => Err(FlowError::WrongCode {
            remaining: remaining.min(left),
        }),
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn addresses_are_masked() {
        assert_eq!(mask("alice@example.com"), "a***e@example.com");
        assert_eq!(mask("al@example.com"), "a***@example.com");
        assert_eq!(mask("x"), "***");
    }
}
