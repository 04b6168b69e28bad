//! Security questions: setting answers needs what the PIN protects (a
//! step-up or the current PIN; a fresh login when there is no PIN).

use std::collections::BTreeMap;

use crate::auth::principal::Principal;
use crate::config::Question;
use crate::flows::deps::Deps;
use crate::flows::error::FlowError;
use crate::flows::pin;
use crate::flows::profile::Identifier;
use crate::store::keys;

use super::auth_token::fresh_login;
use super::common::{counted, json_of, parse, remember_profile};
use super::reset::normalize_answer;

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

pub(crate) async fn answers_allowed(
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
                deps.store.now(),
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
