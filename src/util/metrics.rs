//! Prometheus metrics, registered in the default registry that
//! pingora-prometheus serves on `metrics.listen`.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
};

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("stepgate_requests_total", "Requests by decision (public, authenticated, stepped_up, challenge, unauthenticated, deny, reserved, bad_request, store_unavailable)", &["decision"]).unwrap()
});
pub static FIRST_FACTOR: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_first_factor_total",
        "First-factor answers by source (trusted_header, introspection, session_check) and result (admitted, refused, cached, unavailable)",
        &["source", "result"]
    )
    .unwrap()
});
pub static ADMITTED_BY: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_forwarded_by_source_total",
        "Requests forwarded with a user, by the first-factor source that named them (jwt, pin, oidc, introspection, session_check, trusted_header)",
        &["source"]
    )
    .unwrap()
});
pub static ADMIN_ACTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_admin_actions_total",
        "Helpdesk actions (API or CLI) by action: unlock, unlock_ip, remove_pin, revoke",
        &["action"]
    )
    .unwrap()
});
pub static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_refused_requests_total",
        "Requests refused with 400 before any rule because they cannot be read one way only, by reason",
        &["reason"]
    )
    .unwrap()
});
pub static CHALLENGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_challenges_total",
        "Step-up challenges issued, by answer (redirect, rfc9470)",
        &["kind"]
    )
    .unwrap()
});
pub static KEPT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_kept_requests_total",
        "Browser requests with a body that needed a step-up, by outcome (kept, not_kept, replayed, gone)",
        &["outcome"]
    )
    .unwrap()
});
pub static STEPUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_stepups_total",
        "Step-up attempts by factor and outcome (success, failure, locked, error)",
        &["factor", "outcome"]
    )
    .unwrap()
});
pub static LOCKOUTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_lockouts_total",
        "Lockouts started, by scope (user, ip; suspended: a PIN suspended after too many failures in a row)",
        &["scope"]
    )
    .unwrap()
});
pub static UPSTREAM_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "stepgate_upstream_errors_total",
        "Requests that failed to reach the upstream"
    )
    .unwrap()
});
pub static STORE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_store_errors_total",
        "Store operations that failed, by kind",
        &["kind"]
    )
    .unwrap()
});
pub static STORE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "stepgate_store_seconds",
        "Time of each store operation, by operation (a timed-out one counts at store.timeout)",
        &["op"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
    )
    .unwrap()
});
pub static PIN_VERIFY_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "stepgate_pin_verify_seconds",
        "Time to verify a PIN (Argon2id on the hashing threads, including queueing)",
        vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
    )
    .unwrap()
});
pub static ENROLLMENTS: LazyLock<IntCounter> =
    LazyLock::new(|| register_int_counter!("stepgate_pin_enrollments_total", "PINs set").unwrap());

pub static RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_reloads_total",
        "Configuration and policy reloads, by result (ok, error)",
        &["result"]
    )
    .unwrap()
});
pub static POLICY_RULES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("stepgate_policy_rules", "Rules in the running policy").unwrap()
});

pub static OTP_SENT: LazyLock<IntCounter> =
    LazyLock::new(|| register_int_counter!("stepgate_otp_sent_total", "Email codes sent").unwrap());
pub static OTP_SEND_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "stepgate_otp_send_failures_total",
        "Email codes the mail server refused or could not take"
    )
    .unwrap()
});
pub static OTP_VERIFICATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_otp_verifications_total",
        "Email code checks by outcome (success, failure, no_code, expired, replay)",
        &["outcome"]
    )
    .unwrap()
});

pub static STORE_UP: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "stepgate_store_up",
        "1 when the store answered its last ping, else 0"
    )
    .unwrap()
});

pub static PIN_OPERATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_pin_operations_total",
        "PIN lifecycle operations (change, forgot, reset_token, reset_otp, reset_answers, set_answers, auth_token, set_by_auth_token, login, invalidate, skip) by outcome",
        &["operation", "outcome"]
    )
    .unwrap()
});
pub static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_recovery_messages_total",
        "PIN recovery messages by channel (email, sms) and outcome (sent, failed, no_public_url: a reset link was due but no trusted address could carry it)",
        &["channel", "outcome"]
    )
    .unwrap()
});
pub static WEBHOOKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "stepgate_webhooks_total",
        "Webhook deliveries by outcome (delivered, failed after retries)",
        &["outcome"]
    )
    .unwrap()
});

/// Touch every metric so that it is exported (at zero) from the start.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&CHALLENGES);
    LazyLock::force(&KEPT);
    LazyLock::force(&REFUSED);
    LazyLock::force(&FIRST_FACTOR);
    LazyLock::force(&ADMITTED_BY);
    LazyLock::force(&ADMIN_ACTIONS);
    LazyLock::force(&STEPUPS);
    LazyLock::force(&LOCKOUTS);
    LazyLock::force(&UPSTREAM_ERRORS);
    LazyLock::force(&STORE_ERRORS);
    LazyLock::force(&STORE_SECONDS);
    LazyLock::force(&PIN_VERIFY_SECONDS);
    LazyLock::force(&ENROLLMENTS);
    LazyLock::force(&RELOADS);
    STORE_UP.set(1);
    LazyLock::force(&OTP_SENT);
    LazyLock::force(&OTP_SEND_FAILURES);
    LazyLock::force(&OTP_VERIFICATIONS);
    LazyLock::force(&POLICY_RULES);
    LazyLock::force(&PIN_OPERATIONS);
    LazyLock::force(&DELIVERIES);
    LazyLock::force(&WEBHOOKS);
}
