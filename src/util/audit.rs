//! Audit events: every PIN failure, lockout, enrollment and success, as a
//! structured log line on the `audit` target (kept apart from access logs).

pub fn event(kind: &str, user: &str, ip: &str, detail: &str) {
    tracing::info!(target: "audit", event = kind, user = user, ip = ip, detail = detail);
}
