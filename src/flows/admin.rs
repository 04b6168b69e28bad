//! What a helpdesk does for a user: see (PIN, locks, PIN sessions, last
//! step-up, recovery profile), unlock, remove the PIN, step down. One place
//! for the API (`/.stepgate/api/manage/account/{uid}`) and the CLI
//! (`stepgate admin`), so both do the same and both leave an audit line,
//! a metric and a webhook.
//!
//! Never reveals a PIN hash or a session token; never acts without a
//! caller named in the audit line.

use serde::Serialize;
use serde_json::json;

use crate::flows::deps::Deps;
use crate::flows::error::FlowError;
use crate::flows::lifecycle;
use crate::flows::lockout;
use crate::flows::user::Part;
use crate::store::keys;

/// A user's state, for people and scripts (LoginRadius-style names).
#[derive(Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Account {
    pub uid: String,
    #[serde(rename = "IsPINSet")]
    pub is_pin_set: bool,
    /// When the PIN was set (Unix seconds).
    #[serde(rename = "PINSetAt")]
    pub pin_set_at: Option<i64>,
    /// The PIN lock's end (Unix seconds), when locked now.
    pub locked_until: Option<i64>,
    /// Suspended after too many failures in a row: until a reset or unlock.
    pub suspended: bool,
    /// Wrong PINs in the current window, and in a row.
    pub failures: i64,
    pub consecutive_failures: i64,
    pub pin_sessions: Vec<SessionView>,
    pub last_step_up: Option<LastStepUp>,
    /// Addresses recovery may use (from the user's last sign-in).
    pub recovery_emails: Vec<String>,
}

#[derive(Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct SessionView {
    pub id: String,
    pub device: String,
    pub created: i64,
    pub expires: i64,
}

#[derive(Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct LastStepUp {
    pub at: i64,
    pub factor: String,
}

async fn count(store: &dyn crate::store::Store, key: &str) -> Result<i64, FlowError> {
    Ok(store
        .get(key)
        .await?
        .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok())
        .unwrap_or(0))
}

/// Remember a successful step-up (for `show`), in the user's record, in
/// the background: the step-up's answer does not wait for it, and a store
/// that fails here loses only this note. Stored as "<unix seconds>
/// <factor>"; `show` forgets it after [`lockout::MEMORY`].
pub fn note_step_up(deps: &Deps, sub: &str, factor: &'static str) {
    let v = format!("{} {factor}", deps.store.now()).into_bytes();
    let store = deps.store.clone();
    let sub = sub.to_string();
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = crate::flows::user::write(&*store, &sub, Part::LastStepUp, Some(v)).await;
        });
    }
}

/// The stored last step-up: this version's "<at> <factor>", or an earlier
/// one's JSON; None once older than [`lockout::MEMORY`].
fn last_step_up(raw: &[u8], now: i64) -> Option<LastStepUp> {
    let last = match std::str::from_utf8(raw).ok()?.split_once(' ') {
        Some((at, factor)) => LastStepUp {
            at: at.parse().ok()?,
            factor: factor.to_string(),
        },
        None => serde_json::from_slice(raw).ok()?,
    };
    (now - last.at < lockout::MEMORY.as_secs() as i64).then_some(last)
}

pub async fn show(deps: &Deps, sub: &str) -> Result<Account, FlowError> {
    let store = &*deps.store;
    let pin = crate::flows::pin::state(store, sub).await?;
    let sessions = lifecycle::sessions(deps, sub).await?;
    let last = crate::flows::user::read(store, sub, Part::LastStepUp)
        .await?
        .and_then(|v| last_step_up(&v, store.now()));
    let profile = crate::flows::profile::load(store, sub).await?;
    Ok(Account {
        uid: sub.to_string(),
        is_pin_set: pin.is_set(),
        pin_set_at: pin.set_at(),
        locked_until: match pin {
            crate::flows::pin::PinState::Locked { until, .. } => Some(until),
            _ => None,
        },
        suspended: matches!(pin, crate::flows::pin::PinState::Suspended { .. }),
        failures: count(store, &format!("{}:n", keys::failures(sub))).await?,
        consecutive_failures: count(store, &format!("{}:streak", keys::failures(sub))).await?,
        pin_sessions: sessions
            .into_iter()
            .map(|s| SessionView {
                id: s.id,
                device: s.device,
                created: s.created,
                expires: s.expires,
            })
            .collect(),
        last_step_up: last,
        recovery_emails: profile.map(|p| p.otp_emails).unwrap_or_default(),
    })
}

fn done(action: &str, sub: &str, who: &str, event: &'static str, deps: &Deps) {
    crate::util::audit::event(action, sub, who, "admin");
    crate::util::metrics::ADMIN_ACTIONS
        .with_label_values(&[action])
        .inc();
    deps.notifier.event(event, sub, json!({"By": who}));
}

/// Lift the user's PIN lock, suspension and counters, and the locks on
/// recovery by answers or codes. `who`: the caller, for the audit line.
pub async fn unlock(deps: &Deps, sub: &str, who: &str) -> Result<(), FlowError> {
    let store = &*deps.store;
    lockout::clear_lockout(store, sub).await?;
    lockout::clear_on(store, keys::answer_failures(sub)).await?;
    lockout::clear_on(store, keys::reset_otp_failures(sub)).await?;
    done("unlock", sub, who, "PINUnlocked", deps);
    Ok(())
}

/// Lift the lock on a client address (an office behind one NAT).
pub async fn unlock_ip(deps: &Deps, ip: &str, who: &str) -> Result<(), FlowError> {
    // The PIN's lockout and recovery's (answers, reset codes) on this address.
    for k in [
        keys::ip_failures(ip),
        keys::ip_answer_failures(ip),
        keys::ip_reset_failures(ip),
    ] {
        lockout::clear_on(&*deps.store, k).await?;
    }
    crate::util::audit::event("unlock_ip", "", who, ip);
    crate::util::metrics::ADMIN_ACTIONS
        .with_label_values(&["unlock_ip"])
        .inc();
    deps.notifier
        .event("IPUnlocked", "", json!({"IP": ip, "By": who}));
    Ok(())
}

/// Every lock and suspension in force (users and addresses), on every
/// gateway sharing the store.
pub async fn locks(deps: &Deps) -> Result<Vec<lockout::LockInfo>, FlowError> {
    lockout::locks(&*deps.store).await
}

/// Remove the PIN: its record, its lockout and the PIN sessions opened with
/// it. The next step-up asks for enrollment (under the fresh-login rule).
/// `Ok(false)`: there was no PIN.
pub async fn remove_pin(deps: &Deps, sub: &str, who: &str) -> Result<bool, FlowError> {
    let store = &*deps.store;
    let had = crate::flows::pin::load_record(store, sub).await?.is_some();
    crate::flows::user::write(store, sub, Part::Pin, None).await?;
    lockout::clear_lockout(store, sub).await?;
    lifecycle::end_sessions(deps, sub, None).await?;
    deps.known_pins.forget(sub);
    done("remove_pin", sub, who, "PINRemoved", deps);
    Ok(had)
}

/// Step the user down everywhere: every step-up and PIN session ends.
pub async fn revoke(deps: &Deps, sub: &str, who: &str) -> Result<(), FlowError> {
    lifecycle::invalidate_user(deps, sub, who).await?;
    crate::util::metrics::ADMIN_ACTIONS
        .with_label_values(&["revoke"])
        .inc();
    Ok(())
}
