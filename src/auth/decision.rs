//! The access decision: a pure function of the request's facts, the compiled
//! policy, the verifiers' in-memory keys and the clock. No I/O happens here;
//! what needs the store (consuming a single-use token) is returned as an
//! obligation for the caller.

use crate::auth::first_factor::Verifier;
use crate::auth::principal::{AuthError, Principal};
use crate::auth::tokens::{Keys, StepUpClaims, StepUpTokenError};
use crate::policy::{Factor, Match, Policy, Require, StepUp};

/// What stepgate knows about a request before deciding.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// Host without port, lowercase.
    pub host: &'a str,
    pub method: &'a str,
    /// Normalized path for matching.
    pub path: &'a str,
    pub access_token: Option<&'a str>,
    pub stepup_token: Option<&'a str>,
    /// A form POST the app may run as another method (`_method`): judged as
    /// the strictest of the methods it may become.
    pub overridable: bool,
}

/// Why a step-up is (again) needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepUpReason {
    Missing,
    Invalid(StepUpTokenError),
    /// Older than the rule's `max_age`.
    TooOld,
    /// Made with a factor the rule does not accept.
    WrongFactor,
    /// A single-use rule and the token was already used, or is not fresh.
    AlreadyUsed,
    /// The user's step-ups were invalidated after this one was made.
    Revoked,
    /// A bound rule (`step_up.bind`), and the step-up approved other values
    /// (or none).
    OtherValues,
}

impl StepUpReason {
    pub fn describe(&self) -> &'static str {
        match self {
            StepUpReason::Missing => "this resource requires a step-up authentication",
            StepUpReason::Invalid(StepUpTokenError::WrongBinding) => {
                "the step-up token belongs to another session"
            }
            StepUpReason::Invalid(_) => "the step-up token is invalid or expired",
            StepUpReason::TooOld => "the step-up is older than this resource allows",
            StepUpReason::WrongFactor => "this resource requires a different step-up method",
            StepUpReason::AlreadyUsed => "this resource requires a new step-up for every request",
            StepUpReason::Revoked => "the step-up was revoked; confirm again",
            StepUpReason::OtherValues => {
                "the step-up approved other values; confirm these (see binding)"
            }
        }
    }
}

/// A single-use token the caller must use up before forwarding: its id,
/// its expiry (how long the store must remember it), and the rule's own
/// step-up, which a replay is asked for again. The requirement travels with
/// the obligation so that the answer to a replay is never judged a second
/// time (a second judgement without what the first learned from the body
/// once forwarded a used token).
#[derive(Debug)]
pub struct SingleUse<'p> {
    pub jti: String,
    pub exp: i64,
    pub step_up: &'p StepUp,
}

/// Not boxed: a decision lives on the stack for one request, and boxing its
/// forward case would cost an allocation on every forwarded request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decision<'p> {
    /// Forward upstream. `principal` is set on authenticated rules.
    Forward {
        rule: &'p str,
        principal: Option<Principal>,
        step_up: Option<StepUpClaims>,
        /// Single-use rule: the caller must consume this token id in the
        /// store before forwarding, and ask for a new step-up if it was used.
        consume: Option<SingleUse<'p>>,
    },
    Deny {
        rule: &'p str,
    },
    /// No valid first factor.
    Unauthenticated {
        rule: &'p str,
        error: AuthError,
    },
    /// A (new) step-up is needed.
    StepUp {
        rule: &'p str,
        step_up: &'p StepUp,
        principal: Principal,
        reason: StepUpReason,
    },
}

impl Decision<'_> {
    /// Label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Forward {
                principal: None, ..
            } => "public",
            Decision::Forward {
                step_up: Some(_), ..
            } => "stepped_up",
            Decision::Forward { .. } => "authenticated",
            Decision::Deny { .. } => "deny",
            Decision::Unauthenticated { .. } => "unauthenticated",
            Decision::StepUp { .. } => "challenge",
        }
    }
}

/// Decide what happens to a request at time `now` (Unix seconds).
/// `single_use_window`: how recent a step-up must be to open a `max_age: 0` rule.
pub fn decide<'p>(
    facts: &Facts<'_>,
    policy: &'p Policy,
    verifier: &Verifier,
    keys: &Keys,
    single_use_window: i64,
    now: i64,
) -> Decision<'p> {
    decide_with(
        facts,
        policy,
        verifier,
        keys,
        single_use_window,
        now,
        &|_| None,
    )
}

/// [`decide`], with `revoked_before(sub)`: step-ups of that user issued at
/// or before this Unix time in **milliseconds** no longer count (an
/// invalidation: step-down, exact whatever the clock's second). The lookup
/// is in memory; the decision stays free of I/O.
pub fn decide_with<'p>(
    facts: &Facts<'_>,
    policy: &'p Policy,
    verifier: &Verifier,
    keys: &Keys,
    single_use_window: i64,
    now: i64,
    revoked_before: &dyn Fn(&str) -> Option<i64>,
) -> Decision<'p> {
    let m = policy.judge(facts.host, facts.method, facts.path, facts.overridable);
    let principal = needs_user(&m).then(|| match facts.access_token {
        None => Err(AuthError::Missing),
        Some(t) => verifier.verify(t, now),
    });
    decide_matched(
        m,
        principal,
        facts.stepup_token,
        None,
        keys,
        single_use_window,
        now,
        revoked_before,
    )
}

/// Whether the matched rule needs to know the user (so the first factor is
/// worth asking, which may cost a call to the IdP or the app).
pub fn needs_user(m: &Match<'_>) -> bool {
    matches!(m.require, Require::Authenticated | Require::StepUp(_))
}

/// The decision once the rule is known and, when [`needs_user`], the first
/// factor has answered (`principal`: `None` when it was not asked). Pure:
/// whatever I/O the first factor needed happened before, and what the
/// decision needs done (consuming a single-use step-up) is an obligation in
/// the answer.
/// `bound`: on a rule with `step_up.bind`, the digest of the request's
/// bound values ([`crate::auth::binding::digest`]); a step-up approves
/// the request only when it approved that digest (`None` never matches).
#[allow(clippy::too_many_arguments)]
pub fn decide_matched<'p>(
    m: Match<'p>,
    principal: Option<Result<Principal, AuthError>>,
    stepup_token: Option<&str>,
    bound: Option<&str>,
    keys: &Keys,
    single_use_window: i64,
    now: i64,
    revoked_before: &dyn Fn(&str) -> Option<i64>,
) -> Decision<'p> {
    let rule = m.rule_name();
    let step_up = match m.require {
        Require::None => {
            return Decision::Forward {
                rule,
                principal: None,
                step_up: None,
                consume: None,
            }
        }
        Require::Deny => return Decision::Deny { rule },
        Require::Authenticated => None,
        Require::StepUp(s) => Some(s),
    };
    let principal = match principal.unwrap_or(Err(AuthError::Missing)) {
        Err(error) => return Decision::Unauthenticated { rule, error },
        Ok(p) => p,
    };
    if session_revoked(&principal, revoked_before) {
        return Decision::Unauthenticated {
            rule,
            error: AuthError::Revoked,
        };
    }
    let Some(step_up) = step_up else {
        return Decision::Forward {
            rule,
            principal: Some(principal),
            step_up: None,
            consume: None,
        };
    };
    let need = |principal, reason| Decision::StepUp {
        rule,
        step_up,
        principal,
        reason,
    };
    let Some(token) = stepup_token else {
        return need(principal, StepUpReason::Missing);
    };
    let claims = match keys.verify_stepup(token, &principal, now) {
        Ok(c) => c,
        Err(e) => return need(principal, StepUpReason::Invalid(e)),
    };
    if revoked_before(&principal.sub).is_some_and(|t| claims.issued_ms() <= t) {
        return need(principal, StepUpReason::Revoked);
    }
    match claims.factor() {
        Some(f) if step_up.accepts(f) => {}
        _ => return need(principal, StepUpReason::WrongFactor),
    }
    if step_up.is_bound() {
        let approved = claims.txn.as_ref().map(|t| t.d.as_str());
        let other_rule = claims
            .txn
            .as_ref()
            .and_then(|t| t.r.as_deref())
            .is_some_and(|r| r != rule);
        if approved.is_none() || approved != bound || other_rule {
            return need(principal, StepUpReason::OtherValues);
        }
    }
    let age = now - claims.auth_time;
    if step_up.single_use() {
        if age > single_use_window {
            return need(principal, StepUpReason::AlreadyUsed);
        }
        let consume = Some(SingleUse {
            jti: claims.jti.clone(),
            exp: claims.exp,
            step_up,
        });
        return Decision::Forward {
            rule,
            principal: Some(principal),
            step_up: Some(claims),
            consume,
        };
    }
    if age > step_up.max_age.as_secs() as i64 {
        return need(principal, StepUpReason::TooOld);
    }
    Decision::Forward {
        rule,
        principal: Some(principal),
        step_up: Some(claims),
        consume: None,
    }
}

/// Whether `p` is a stepgate PIN-login session that was invalidated: its
/// PIN session ended, or all of the user's sessions were ended at or after
/// the millisecond it was issued. Other first factors are the identity
/// provider's to revoke.
pub fn session_revoked(p: &Principal, revoked_before: &dyn Fn(&str) -> Option<i64>) -> bool {
    let Some((id, issued_ms)) = &p.pin_session else {
        return false;
    };
    revoked_before(&p.sub).is_some_and(|t| *issued_ms <= t)
        || revoked_before(&crate::auth::revocations::session_revocation_key(id)).is_some()
}

/// The factors a user may use for a rule, in the order pages offer them.
pub fn offered(step_up: &StepUp) -> Vec<Factor> {
    Factor::ALL
        .iter()
        .copied()
        .filter(|f| step_up.accepts(*f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::Secret;
    use crate::config::{FirstFactor, KeySource};
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use std::time::Duration;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn setup() -> (Policy, Verifier, Keys) {
        let policy = Policy::from_sources(&[(
            "p.yaml".into(),
            r#"
default: authenticated
rules:
  - { name: public, match: { path: "/public/**" }, require: none }
  - { name: once, match: { path: "/admin/delete" }, require: step_up, step_up: { methods: [pin], max_age: 0 } }
  - { name: admin, match: { path: "/admin/**" }, require: step_up, step_up: { methods: [pin], max_age: 5m } }
  - { name: mail, match: { path: "/mail/**" }, require: step_up, step_up: { methods: [email_otp], max_age: 5m } }
  - { name: gone, match: { path: "/gone" }, require: deny }
"#
            .into(),
        )])
        .unwrap();
        let ff = FirstFactor {
            claims: Default::default(),
            cookie: "access_token".into(),
            algorithms: vec![Algorithm::HS256],
            key: KeySource::Secret(Secret::new(KEY)),
            issuer: None,
            audience: None,
            login_url: None,
            introspection: None,
            session_check: None,
            oidc: None,
            trusted_header: None,
            leeway: Duration::from_secs(0),
        };
        (
            policy,
            Verifier::new(&ff).unwrap(),
            Keys::new(&Secret::new("s".repeat(32))),
        )
    }

    fn access(sub: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": sub, "exp": 10_000, "sid": "S"}),
            &EncodingKey::from_secret(KEY),
        )
        .unwrap()
    }

    fn facts<'a>(path: &'a str, at: Option<&'a str>, su: Option<&'a str>) -> Facts<'a> {
        Facts {
            host: "app",
            method: "GET",
            path,
            access_token: at,
            stepup_token: su,
            overridable: false,
        }
    }

    #[test]
    fn public_and_deny_need_no_token() {
        let (p, v, k) = setup();
        assert_eq!(
            decide(&facts("/public/x", None, None), &p, &v, &k, 120, 1000).label(),
            "public"
        );
        assert_eq!(
            decide(&facts("/gone", None, None), &p, &v, &k, 120, 1000).label(),
            "deny"
        );
        assert!(matches!(
            decide(&facts("/home", None, None), &p, &v, &k, 120, 1000),
            Decision::Unauthenticated {
                error: AuthError::Missing,
                ..
            }
        ));
    }

    #[test]
    fn step_up_freshness_and_factor_are_enforced() {
        let (p, v, k) = setup();
        let at = access("alice");
        let principal = v.verify(&at, 1000).unwrap();
        assert!(matches!(
            decide(&facts("/admin/x", Some(&at), None), &p, &v, &k, 120, 1000),
            Decision::StepUp {
                reason: StepUpReason::Missing,
                ..
            }
        ));
        let (su, _) = k.issue_stepup(&principal, Factor::Pin, 1000, 3600);
        assert_eq!(
            decide(
                &facts("/admin/x", Some(&at), Some(&su)),
                &p,
                &v,
                &k,
                120,
                1300
            )
            .label(),
            "stepped_up"
        );
        assert!(matches!(
            decide(
                &facts("/admin/x", Some(&at), Some(&su)),
                &p,
                &v,
                &k,
                120,
                1301
            ),
            Decision::StepUp {
                reason: StepUpReason::TooOld,
                ..
            }
        ));
        assert!(matches!(
            decide(
                &facts("/mail/x", Some(&at), Some(&su)),
                &p,
                &v,
                &k,
                120,
                1001
            ),
            Decision::StepUp {
                reason: StepUpReason::WrongFactor,
                ..
            }
        ));
    }

    #[test]
    fn single_use_rules_return_a_consume_obligation_only_when_fresh() {
        let (p, v, k) = setup();
        let at = access("alice");
        let principal = v.verify(&at, 1000).unwrap();
        let (su, c) = k.issue_stepup(&principal, Factor::Pin, 1000, 3600);
        match decide(
            &facts("/admin/delete", Some(&at), Some(&su)),
            &p,
            &v,
            &k,
            120,
            1010,
        ) {
            Decision::Forward {
                consume: Some(SingleUse { jti, .. }),
                ..
            } => assert_eq!(jti, c.jti),
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            decide(
                &facts("/admin/delete", Some(&at), Some(&su)),
                &p,
                &v,
                &k,
                120,
                1200
            ),
            Decision::StepUp {
                reason: StepUpReason::AlreadyUsed,
                ..
            }
        ));
    }

    #[test]
    fn a_revoked_step_up_no_longer_counts() {
        let (p, v, k) = setup();
        let at = access("alice");
        let principal = v.verify(&at, 1000).unwrap();
        let (su, _) = k.issue_stepup_ms(&principal, Factor::Pin, 1_000_000, 3600);
        let f = facts("/admin/x", Some(&at), Some(&su));
        let revoked = |sub: &str| (sub == "alice").then_some(1_000_000);
        assert!(matches!(
            decide_with(&f, &p, &v, &k, 120, 1001, &revoked),
            Decision::StepUp {
                reason: StepUpReason::Revoked,
                ..
            }
        ));
        let earlier = |_: &str| Some(999_999);
        assert_eq!(
            decide_with(&f, &p, &v, &k, 120, 1001, &earlier).label(),
            "stepped_up"
        );
    }

    /// Two invalidations in one second with a step-up between them: the
    /// step-up counts after the first and is refused after the second.
    #[test]
    fn a_step_up_between_two_invalidations_in_one_second_ends_with_the_second() {
        let (p, v, k) = setup();
        let at = access("alice");
        let principal = v.verify(&at, 1000).unwrap();
        let first = 1_000_100;
        let (su, _) = k.issue_stepup_ms(&principal, Factor::Pin, 1_000_400, 3600);
        let second = 1_000_700;
        let f = facts("/admin/x", Some(&at), Some(&su));
        let after_first = |_: &str| Some(first);
        assert_eq!(
            decide_with(&f, &p, &v, &k, 120, 1000, &after_first).label(),
            "stepped_up"
        );
        let after_second = |_: &str| Some(second);
        assert!(matches!(
            decide_with(&f, &p, &v, &k, 120, 1000, &after_second),
            Decision::StepUp {
                reason: StepUpReason::Revoked,
                ..
            }
        ));
        // At the same millisecond: issued "at or before" is refused.
        let same = |_: &str| Some(1_000_400);
        assert!(matches!(
            decide_with(&f, &p, &v, &k, 120, 1000, &same),
            Decision::StepUp {
                reason: StepUpReason::Revoked,
                ..
            }
        ));
    }

    #[test]
    fn pin_login_sessions_end_at_an_invalidation_in_their_own_second() {
        let mut s = Principal {
            source: "jwt",
            sub: "alice".into(),
            otp_emails: vec![],
            email: None,
            emails: vec![],
            session: "ps:p1".into(),
            login_time: None,
            expires: 0,
            username: None,
            phone: None,
            pin_session: Some(("p1".into(), 1_000_400)),
        };
        assert!(!session_revoked(&s, &|k| (k == "alice").then_some(1_000_399)));
        assert!(session_revoked(&s, &|k| (k == "alice").then_some(1_000_400)));
        assert!(session_revoked(&s, &|k| (k == "ps:p1").then_some(1)));
        // A session token from before milliseconds: the start of its second.
        s.pin_session = Some((
            "p1".into(),
            crate::auth::revocations::legacy_issued_ms(1000),
        ));
        assert!(session_revoked(&s, &|k| (k == "alice").then_some(1_000_900)));
    }

    #[test]
    fn another_users_step_up_token_does_not_count() {
        let (p, v, k) = setup();
        let bob = v.verify(&access("bob"), 1000).unwrap();
        let (su, _) = k.issue_stepup(&bob, Factor::Pin, 1000, 3600);
        let at = access("alice");
        assert!(matches!(
            decide(
                &facts("/admin/x", Some(&at), Some(&su)),
                &p,
                &v,
                &k,
                120,
                1000
            ),
            Decision::StepUp {
                reason: StepUpReason::Invalid(StepUpTokenError::WrongBinding),
                ..
            }
        ));
    }

    #[test]
    fn a_bound_approval_opens_its_values_on_its_rule_only() {
        use crate::auth::binding;
        let policy = Policy::from_sources(&[(
            "p.yaml".into(),
            r#"
default: authenticated
rules:
  - { name: transfer, match: { path: "/transfer" }, require: step_up, step_up: { methods: [pin], max_age: 5m, bind: [amount, to] } }
  - { name: wire, match: { path: "/wire" }, require: step_up, step_up: { methods: [pin], max_age: 5m, bind: [amount, to] } }
"#
            .into(),
        )])
        .unwrap();
        let (_, verifier, keys) = setup();
        let at = access("alice");
        let p = verifier.verify(&at, 1_000).unwrap();
        let values = binding::values(
            &["amount".to_string(), "to".to_string()],
            Some("amount=100&to=bob"),
            None,
            b"",
        )
        .unwrap();
        let d = binding::digest(&values);
        let decide_on = |path: &str, token: &str, bound: &str| {
            let m = policy.judge("app", "POST", path, false);
            decide_matched(
                m,
                Some(Ok(p.clone())),
                Some(token),
                Some(bound),
                &keys,
                30,
                1_000,
                &|_| None,
            )
            .label()
        };
        let (on_transfer, _) = keys.issue_bound_stepup_ms(
            &p,
            Factor::Pin,
            1_000_000,
            300,
            Some(binding::txn(&values).on_rule(Some("transfer"))),
        );
        assert_eq!(decide_on("/transfer", &on_transfer, &d), "stepped_up");
        assert_eq!(
            decide_on("/transfer", &on_transfer, "other-digest"),
            "challenge"
        );
        assert_eq!(
            decide_on("/wire", &on_transfer, &d),
            "challenge",
            "another operation"
        );
        // An API client's approval names no rule: its values open any rule binding them.
        let (any_rule, _) = keys.issue_bound_stepup_ms(
            &p,
            Factor::Pin,
            1_000_000,
            300,
            Some(binding::txn(&values)),
        );
        assert_eq!(decide_on("/wire", &any_rule, &d), "stepped_up");
        let (unbound, _) = keys.issue_stepup_ms(&p, Factor::Pin, 1_000_000, 300);
        assert_eq!(decide_on("/transfer", &unbound, &d), "challenge");
    }
}
