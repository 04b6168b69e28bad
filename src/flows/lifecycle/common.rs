//! What the PIN lifecycle flows share: outcome metrics and record encoding.

use serde::{Deserialize, Serialize};

use crate::auth::principal::Principal;
use crate::flows::deps::Deps;
use crate::flows::error::FlowError;
use crate::flows::profile::{self};
use crate::util::metrics;

pub(crate) fn op(operation: &str, r: &Result<impl Sized, FlowError>) {
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
pub(crate) async fn counted<T>(
    operation: &str,
    flow: impl std::future::Future<Output = Result<T, FlowError>>,
) -> Result<T, FlowError> {
    let r = flow.await;
    op(operation, &r);
    r
}

pub(crate) fn json_of<T: Serialize>(v: &T) -> Result<Vec<u8>, FlowError> {
    serde_json::to_vec(v).map_err(|_| FlowError::Internal)
}

pub(crate) fn parse<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Result<T, FlowError> {
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
