//! Forgot and reset: a single-use ResetToken link or a code by mail or SMS
//! (links only to `public_url` or a host the config names), or security
//! answers. Must never reveal whether an account exists.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::auth::tokens::{secret_token, token_digest};
use crate::config::ForgotMode;
use crate::flows::deps::Deps;
use crate::flows::error::FlowError;
use crate::flows::pin;
use crate::flows::profile::{self, Identifier};
use crate::store::keys;
use crate::util::metrics;

use super::common::{counted, json_of, parse};
use super::sessions::invalidate_user;

#[derive(Serialize, Deserialize)]
pub(crate) struct ResetRecord {
    sub: String,
    exp: i64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ResetCode {
    mac: String,
    exp: i64,
    /// `sms` or `email`: a code is redeemed only with an identifier of the
    /// channel it went to.
    #[serde(default)]
    channel: String,
}

pub(crate) fn channel_of(id: &Identifier) -> &'static str {
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
pub(crate) fn no_link(origin: &str, sub: &str, ip: &str) {
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

pub(crate) fn reset_code(len: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

/// What went out (for tests and the audit log, never to the caller).
pub(crate) enum Outgoing {
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

pub(crate) async fn forgot_inner(
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
    let now = deps.store.now();
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

pub(crate) async fn store_reset_code(
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
pub(crate) fn deliver(deps: &Deps, out: Outgoing, sub: String, ip: String, undo_key: String) {
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
            if rec.exp <= deps.store.now() {
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
        if rec.exp <= deps.store.now() {
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
            Some(rec) if rec.exp > deps.store.now() && rec.channel == channel_of(id) => {
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

pub(crate) fn normalize_answer(a: &str) -> String {
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
pub(crate) const DECOY_PHC: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c3RlcGdhdGVkZWNveQ$0dqB0xKz7kzNnRdzJ8zq1oF3mC0y3b0h2vN2wR7JzqY";

pub(crate) async fn finish_reset(
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
