//! Changing a PIN: the current PIN under the lockout; the other PIN sessions
//! of the user end.

use serde_json::json;

use crate::auth::principal::Principal;
use crate::flows::deps::Deps;
use crate::flows::error::FlowError;
use crate::flows::pin;

use super::common::counted;
use super::sessions::end_sessions;

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
        // The other sessions it ends are not known before the
        // invalidations were read: not a half-done change.
        if !deps.revocations.loaded() {
            return Err(FlowError::StoreUnavailable);
        }
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
