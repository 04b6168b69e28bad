//! The PIN factor: rules for new PINs, Argon2id hashing on a bounded blocking
//! pool, enrollment, and verification behind the lockout (`flows::lockout`).
//!
//! Must never: hash on an async worker, store a PIN other than as a PHC
//! string, or evaluate more guesses than the lockout allows, even under
//! concurrent attempts from many gateways.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::{Lockout, PinSettings};
use crate::flows::error::FlowError;
pub use crate::flows::hasher::{Hasher, RELEASE_MEMORY};
pub use crate::flows::lockout::{
    clear_lockout, clear_on, reserve, reserve_on, Attempt, OnSuspend, MEMORY,
};
use crate::flows::user::{self, Part};
use crate::store::{keys, Store};
use crate::util::metrics;

/// Check a new PIN against the rules: digits only, length, not trivially weak.
pub fn check_new_pin(pin: &str, s: &PinSettings) -> Result<(), FlowError> {
    let n = pin.chars().count();
    if !pin.chars().all(|c| c.is_ascii_digit()) {
        return Err(FlowError::PinRule("A PIN is made of digits only.".into()));
    }
    if n < s.min_length || n > s.max_length {
        return Err(FlowError::PinRule(format!(
            "A PIN has {} to {} digits.",
            s.min_length, s.max_length
        )));
    }
    let d: Vec<i32> = pin.bytes().map(|b| (b - b'0') as i32).collect();
    let same = d.iter().all(|x| *x == d[0]);
    let step = d[1] - d[0];
    let sequence = step.abs() == 1 && d.windows(2).all(|w| w[1] - w[0] == step);
    let repeats =
        (1..=n / 2).any(|p| n.is_multiple_of(p) && p < n && d.chunks(p).all(|c| c == &d[..p]));
    if same || sequence || repeats {
        return Err(FlowError::PinRule(
            "This PIN is too easy to guess (repeated digits or a sequence). Choose another.".into(),
        ));
    }
    Ok(())
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PinRecord {
    pub phc: String,
    pub set_at: i64,
}

/// The stored form of an Argon2id (v19) PIN hash with a 16-byte salt and a
/// 32-byte output, which is what stepgate writes: one version byte, m (KiB,
/// u32), t, p, salt, hash, set_at (u32 Unix seconds), little-endian; 59
/// bytes instead of ~130 of JSON with a PHC string. Anything else (other
/// parameters from an older build, a record of another shape) stays JSON.
const COMPACT_V1: u8 = 1;
const COMPACT_LEN: usize = 1 + 4 + 1 + 1 + 16 + 32 + 4;

impl PinRecord {
    /// The bytes to store: compact when the hash has the usual shape.
    pub fn encode(&self) -> Vec<u8> {
        self.compact()
            .unwrap_or_else(|| serde_json::to_vec(self).expect("a PIN record serializes"))
    }

    fn compact(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let rest = self.phc.strip_prefix("$argon2id$v=19$m=")?;
        let (m, rest) = rest.split_once(",t=")?;
        let (t, rest) = rest.split_once(",p=")?;
        let (p, rest) = rest.split_once('$')?;
        let (salt, hash) = rest.split_once('$')?;
        let (salt, hash) = (b64.decode(salt).ok()?, b64.decode(hash).ok()?);
        if salt.len() != 16 || hash.len() != 32 {
            return None;
        }
        let set_at = u32::try_from(self.set_at).ok()?;
        let mut out = Vec::with_capacity(COMPACT_LEN);
        out.push(COMPACT_V1);
        out.extend_from_slice(&m.parse::<u32>().ok()?.to_le_bytes());
        out.push(t.parse::<u8>().ok()?);
        out.push(p.parse::<u8>().ok()?);
        out.extend_from_slice(&salt);
        out.extend_from_slice(&hash);
        out.extend_from_slice(&set_at.to_le_bytes());
        // Only what reads back as the same record is stored compactly.
        (PinRecord::decode(&out).as_ref() == Some(self)).then_some(out)
    }

    /// Read a stored record, compact or JSON.
    pub fn decode(raw: &[u8]) -> Option<PinRecord> {
        use base64::Engine;
        if raw.first() != Some(&COMPACT_V1) || raw.len() != COMPACT_LEN {
            return serde_json::from_slice(raw).ok();
        }
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let u32_at = |i: usize| u32::from_le_bytes(raw[i..i + 4].try_into().expect("4 bytes"));
        let (m, t, p) = (u32_at(1), raw[5], raw[6]);
        let (salt, hash) = (&raw[7..23], &raw[23..55]);
        Some(PinRecord {
            phc: format!(
                "$argon2id$v=19$m={m},t={t},p={p}${}${}",
                b64.encode(salt),
                b64.encode(hash)
            ),
            set_at: i64::from(u32_at(55)),
        })
    }
}

/// `sub`'s PIN record. A record in an older, larger form is rewritten in the
/// compact one as it is read (only if it did not change in between).
pub async fn load_record(store: &dyn Store, sub: &str) -> Result<Option<PinRecord>, FlowError> {
    let Some(raw) = user::read(store, sub, Part::Pin).await? else {
        return Ok(None);
    };
    let record = PinRecord::decode(&raw).ok_or(FlowError::Internal)?;
    if raw.first() == Some(&b'{') {
        // An earlier version's JSON record, rewritten compact.
        user::rewrite(store, sub, Part::Pin, &raw, record.encode()).await;
    }
    Ok(Some(record))
}

/// Where a user's PIN stands: the one answer pages, the API and admins ask
/// instead of reading a record and a lock apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinState {
    /// No PIN: the next step-up asks for enrollment.
    NotSet,
    /// Set (at this Unix time), usable now.
    Set { set_at: i64 },
    /// Set, and locked by failures until this Unix time.
    Locked { set_at: i64, until: i64 },
    /// Set, and suspended by `lockout.max_consecutive` failures in a row,
    /// until a reset or an admin unlock.
    Suspended { set_at: i64 },
}

impl PinState {
    pub fn is_set(&self) -> bool {
        !matches!(self, PinState::NotSet)
    }
    pub fn set_at(&self) -> Option<i64> {
        match self {
            PinState::NotSet => None,
            PinState::Set { set_at }
            | PinState::Locked { set_at, .. }
            | PinState::Suspended { set_at } => Some(*set_at),
        }
    }
}

/// `sub`'s PIN state now (on the store's clock).
pub async fn state(store: &dyn Store, sub: &str) -> Result<PinState, FlowError> {
    let Some(record) = load_record(store, sub).await? else {
        return Ok(PinState::NotSet);
    };
    let lock_key = format!("{}:lock", keys::failures(sub));
    let set_at = record.set_at;
    Ok(
        match crate::flows::lockout::lock_state(store.get(&lock_key).await?, store.now()) {
            Some(FlowError::Suspended) => PinState::Suspended { set_at },
            Some(FlowError::Locked { until }) => PinState::Locked { set_at, until },
            _ => PinState::Set { set_at },
        },
    )
}

/// Verify `pin` for `sub`, under the lockout. Ok(()) on a right PIN.
/// `on_suspend` is told when this guess suspends the PIN.
pub async fn verify(
    store: &dyn Store,
    hasher: &Arc<Hasher>,
    lockout: &Lockout,
    sub: &str,
    ip: &str,
    pin: &str,
    on_suspend: Option<OnSuspend<'_>>,
) -> Result<(), FlowError> {
    let record = load_record(store, sub).await?.ok_or(FlowError::NoPin)?;
    let attempt = reserve(store, lockout, sub, ip)
        .await?
        .on_suspend(on_suspend);
    // A PIN longer than any allowed one cannot be right; still counted.
    let started = Instant::now();
    let ok = if pin.len() > 64 {
        false
    } else {
        match hasher.verify(pin.to_string(), record.phc).await {
            Ok(ok) => ok,
            Err(e) => {
                attempt.abandon().await;
                return Err(e);
            }
        }
    };
    metrics::PIN_VERIFY_SECONDS.observe(started.elapsed().as_secs_f64());
    if ok {
        attempt.success().await?;
        crate::util::audit::event("pin_success", sub, ip, "");
        Ok(())
    } else {
        crate::util::audit::event("pin_failure", sub, ip, "");
        Err(attempt.failure(sub, ip).await?)
    }
}

/// Store `pin` as `sub`'s PIN (new or replacing), hashed.
pub async fn store_pin(
    store: &dyn Store,
    hasher: &Arc<Hasher>,
    sub: &str,
    pin: &str,
) -> Result<(), FlowError> {
    let phc = hasher.hash(pin.to_string()).await?;
    let rec = PinRecord {
        phc,
        set_at: store.now(),
    }
    .encode();
    user::write(store, sub, Part::Pin, Some(rec)).await
}

/// Store a first PIN: refused with `PinAlreadySet` when one exists, also
/// when several first PINs race on any number of gateways (a short lock in
/// the store spans the check, the hash and the write).
pub async fn create_pin(
    store: &dyn Store,
    hasher: &Arc<Hasher>,
    sub: &str,
    pin: &str,
) -> Result<(), FlowError> {
    let lock = format!("{}:setting", keys::pin(sub));
    if !store
        .put_if_absent(&lock, b"1", std::time::Duration::from_secs(30))
        .await?
    {
        return Err(FlowError::PinAlreadySet);
    }
    let r = async {
        if load_record(store, sub).await?.is_some() {
            return Err(FlowError::PinAlreadySet);
        }
        store_pin(store, hasher, sub, pin).await
    }
    .await;
    let _ = store.delete(&lock).await;
    r
}

/// Enroll a first PIN. The caller has checked the login's freshness.
pub async fn enroll(
    store: &dyn Store,
    hasher: &Arc<Hasher>,
    settings: &PinSettings,
    sub: &str,
    ip: &str,
    pin: &str,
    confirm: &str,
) -> Result<(), FlowError> {
    if pin != confirm {
        return Err(FlowError::PinMismatch);
    }
    check_new_pin(pin, settings)?;
    create_pin(store, hasher, sub, pin).await?;
    metrics::ENROLLMENTS.inc();
    crate::util::audit::event("pin_set", sub, ip, "");
    Ok(())
}

#[cfg(test)]
#[path = "pin_tests.rs"]
mod tests;
