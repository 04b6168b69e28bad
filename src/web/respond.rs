//! The one mapping from a flow's error to what the user is told: the HTTP
//! status, the LoginRadius-style ErrorCode and the developer's words for the
//! JSON API, and the heading, text and way out for the pages. Both
//! renderers (`json::flow_error`, `web::flow_page`) read this table; neither
//! decides a status or a code of its own, so a page and the API never
//! disagree about what went wrong.
//!
//! Never does I/O and never reads the gateway: only the error and where the
//! user was going.

use crate::flows::error::FlowError;
use crate::util::clock::{self, human_time};

/// What one flow error means, for both audiences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    pub status: u16,
    pub code: u32,
    /// API: `Message` (short, stable).
    pub message: &'static str,
    /// API: `Description` (what to do next, for a developer).
    pub description: String,
    /// Page: the heading.
    pub heading: &'static str,
    /// Page: the sentence for the person at the browser.
    pub text: String,
    /// Page: the way out (address, link text), when there is one.
    pub link: Option<(String, &'static str)>,
    /// Seconds for `Retry-After`, when waiting helps.
    pub retry_after: Option<i64>,
    /// Unix time a lockout ends, for `LockedUntil`.
    pub locked_until: Option<i64>,
}

fn with_return(path: &str, return_to: &str) -> String {
    format!("{path}?return_to={}", crate::reply::url_encode(return_to))
}

/// The meaning of `e` for a user who was on their way to `return_to`.
pub fn explain(e: &FlowError, return_to: &str) -> Explained {
    let x = |status: u16,
             code: u32,
             message: &'static str,
             description: String,
             heading: &'static str,
             text: String| Explained {
        status,
        code,
        message,
        description,
        heading,
        text,
        link: None,
        retry_after: None,
        locked_until: None,
    };
    let forgot = || Some(("/.stepgate/pin/forgot".to_string(), "Ask for a new link"));
    match e {
        FlowError::Locked { until } => Explained {
            retry_after: Some((until - clock::now()).max(1)),
            locked_until: Some(*until),
            ..x(
                429,
                1198,
                "The account is locked",
                format!("Too many failed attempts; locked until {}.", rfc3339(*until)),
                "Too many attempts",
                format!(
                    "Confirmation is locked after too many wrong attempts. Try again after {}.",
                    human_time(*until)
                ),
            )
        },
        FlowError::Suspended => Explained {
            link: Some(("/.stepgate/pin/forgot".into(), "Forgot PIN")),
            ..x(
                403,
                1198,
                "The account is locked (suspended)",
                "Too many failed attempts in a row: the PIN is suspended until it is reset (forgot PIN) or an administrator unlocks the account.".into(),
                "PIN suspended",
                "Your PIN is suspended after too many wrong tries. Reset it with 'Forgot PIN' or ask your helpdesk.".into(),
            )
        },
        FlowError::WrongPin { remaining } => x(
            401,
            1236,
            "The PIN is invalid",
            format!("{remaining} attempt(s) left before a lockout."),
            "Not accepted",
            "The PIN was not accepted.".into(),
        ),
        FlowError::NoPin => Explained {
            link: Some((with_return("/.stepgate/pin/setup", return_to), "Set up a PIN")),
            ..x(
                403,
                1235,
                "No PIN is set",
                "Set up a PIN on /.stepgate/pin/setup first.".into(),
                "No PIN yet",
                "You have no PIN yet. Set one up first.".into(),
            )
        },
        FlowError::PinAlreadySet => x(
            400,
            1247,
            "A PIN is already set",
            "Change it instead.".into(),
            "Not accepted",
            "A PIN is already set; change it instead.".into(),
        ),
        FlowError::PinRule(m) => x(
            400,
            1248,
            "The PIN does not meet the rules",
            m.clone(),
            "Not accepted",
            format!("The PIN was not accepted: {m}"),
        ),
        FlowError::PinMismatch => x(
            400,
            1249,
            "The PINs differ",
            "PIN and confirmation must be equal.".into(),
            "Not accepted",
            "The PIN and its confirmation differ.".into(),
        ),
        FlowError::LoginNotFresh => x(
            403,
            1250,
            "A recent login is required",
            "Sign in again, then retry within the enrollment window.".into(),
            "Sign in again",
            "Setting up a new way to confirm it is you (a PIN or an email address) needs a recent sign-in. Sign out and sign in again, then come back to this page.".into(),
        ),
        FlowError::StepUpRequired => Explained {
            link: Some((with_return("/.stepgate/challenge", return_to), "Confirm it is you")),
            ..x(
                403,
                1261,
                "A step-up is required",
                "Confirm with your PIN first: step up (PUT /.stepgate/api/stepup/pin) and send the token in X-Stepgate-Token, or send your current PIN as `PIN` with the request.".into(),
                "Confirm it is you first",
                "Saving security answers needs your PIN: enter your current PIN with the answers, or confirm with your PIN first and come back.".into(),
            )
        },
        FlowError::EmailNotInProfile => x(
            400,
            1340,
            "The email address is not in the profile",
            "Nothing was sent.".into(),
            "Unknown address",
            "That address is not one of your profile's addresses; nothing was sent.".into(),
        ),
        FlowError::NotConfigured => x(
            501,
            1233,
            "This factor is not configured",
            "The gateway has no mail settings.".into(),
            "Not available",
            "Email codes are not set up on this gateway. Choose another method.".into(),
        ),
        FlowError::Cooldown { retry_after } => Explained {
            retry_after: Some(*retry_after),
            ..x(
                429,
                1179,
                "Please wait before asking for another code",
                format!("Retry in {retry_after} seconds."),
                "Please wait",
                format!("A code was sent moments ago. You can ask for a new one in {retry_after} seconds."),
            )
        },
        FlowError::SendLimit { until } => Explained {
            retry_after: Some((until - clock::now()).max(1)),
            ..x(
                429,
                1179,
                "The OTP send limit is reached",
                format!("No more codes until {}.", rfc3339(*until)),
                "Too many codes",
                format!(
                    "Too many codes were sent to you in the last hour. You can ask for a new one after {}.",
                    human_time(*until)
                ),
            )
        },
        FlowError::MailFailed => Explained {
            link: Some((with_return("/.stepgate/email", return_to), "Try again")),
            ..x(
                502,
                1251,
                "The code could not be sent",
                "The mail server refused or did not answer; nothing was used up, retry.".into(),
                "The code could not be sent",
                "The mail server did not accept the message. Nothing was used up: try again in a moment.".into(),
            )
        },
        FlowError::NoCode => Explained {
            link: Some((with_return("/.stepgate/email", return_to), "Send a new code")),
            ..x(
                400,
                1252,
                "No valid code",
                "The code was used, expired or tried too often; ask for a new one.".into(),
                "No valid code",
                "This code was already used, has expired, or was tried too often. Ask for a new one.".into(),
            )
        },
        FlowError::WrongCode { remaining } => x(
            401,
            1253,
            "The OTP is invalid",
            format!("{remaining} attempt(s) left for this code."),
            "Not accepted",
            "The code was not accepted.".into(),
        ),
        FlowError::StoreUnavailable => Explained {
            retry_after: Some(5),
            ..x(
                503,
                1254,
                "Temporarily unavailable",
                "The gateway's store does not answer; retry shortly.".into(),
                "Temporarily unavailable",
                "stepgate cannot check your confirmation right now. Try again in a moment.".into(),
            )
        },
        FlowError::Internal => x(
            500,
            1255,
            "Internal error",
            "See the gateway log.".into(),
            "Something went wrong",
            "stepgate hit an internal error; it is in the gateway log.".into(),
        ),
        FlowError::WrongCurrentPin { remaining } => x(
            401,
            1241,
            "The current PIN is invalid",
            format!("{remaining} attempt(s) left before a lockout."),
            "Not accepted",
            "The current PIN is not right.".into(),
        ),
        FlowError::AuthTokenInvalid => x(
            401,
            1239,
            "The PINAuthToken is invalid",
            "It is unknown or was already used; ask for a new one.".into(),
            "Link not valid",
            "This PIN setup token is unknown or was already used.".into(),
        ),
        FlowError::AuthTokenExpired => x(
            401,
            1240,
            "The PINAuthToken has expired",
            "Ask for a new one.".into(),
            "Link not valid",
            "This PIN setup token has expired.".into(),
        ),
        FlowError::KeptGone => x(
            410,
            1262,
            "The kept request is gone",
            "It was sent already, expired (10 minutes) or was kept for another session; send the request again.".into(),
            "This form is no longer waiting",
            "The form you sent was already delivered, or waited too long (10 minutes). Go back to the application and send it again if it still needs sending.".into(),
        ),
        FlowError::ResetUsed => Explained {
            link: forgot(),
            ..x(
                400,
                1242,
                "The reset link was already used",
                "Ask for a new one with forgot PIN.".into(),
                "This link was already used",
                "Each reset link works once. Ask for a new one if you still need to reset your PIN.".into(),
            )
        },
        FlowError::ResetInvalid => Explained {
            link: forgot(),
            ..x(
                400,
                1256,
                "The reset token is invalid or expired",
                "Ask for a new one with forgot PIN.".into(),
                "This link is not valid",
                "The reset link has expired or is not complete. Ask for a new one.".into(),
            )
        },
        FlowError::SessionInvalid => x(
            401,
            1245,
            "The session token is invalid",
            "It is unknown, was invalidated, or belongs to another device; sign in fully.".into(),
            "Please sign in",
            "This device's PIN session has ended. Sign in again.".into(),
        ),
        FlowError::SessionExpired => x(
            401,
            1246,
            "The session token has expired",
            "Sign in fully to start a new PIN session.".into(),
            "Please sign in",
            "This device's PIN session has ended. Sign in again.".into(),
        ),
        FlowError::WrongAnswers { remaining } => x(
            401,
            1257,
            "The security answers are not right",
            format!("{remaining} attempt(s) left before a lockout."),
            "Not accepted",
            "The answers were not right.".into(),
        ),
        FlowError::UnknownQuestion(q) => x(
            400,
            1258,
            "Unknown security question",
            format!("`{q}` is not one of the configured questions (GET /.stepgate/api/securityquestion lists them)."),
            "Unknown question",
            "That question is not offered here.".into(),
        ),
        FlowError::ResetUrlNotAllowed => x(
            400,
            1259,
            "The reset URL is not allowed",
            "`resetpinurl` must be listed in `pin.reset_urls`.".into(),
            "Not allowed",
            "That reset address is not allowed.".into(),
        ),
        FlowError::Disabled(why) => x(
            501,
            1233,
            "Not enabled on this gateway",
            why.to_string(),
            "Not available",
            why.to_string(),
        ),
        FlowError::BadAnswer(why) => x(
            400,
            1260,
            "The answer is not valid",
            why.clone(),
            "Answer not accepted",
            why.clone(),
        ),
        FlowError::ResetCodeRefused => x(
            401,
            1253,
            "The OTP is invalid",
            "The code is wrong, used or expired; check it, or ask for a new one.".into(),
            "Not accepted",
            "The code is wrong, used or expired.".into(),
        ),
    }
}

/// RFC 3339 in UTC, or "" for a time that cannot be written.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant, so a new one cannot slip past the table unexplained.
    fn all() -> Vec<FlowError> {
        vec![
            FlowError::Locked {
                until: 2_000_000_000,
            },
            FlowError::Suspended,
            FlowError::WrongPin { remaining: 2 },
            FlowError::NoPin,
            FlowError::PinAlreadySet,
            FlowError::PinRule("too short".into()),
            FlowError::PinMismatch,
            FlowError::LoginNotFresh,
            FlowError::StepUpRequired,
            FlowError::StoreUnavailable,
            FlowError::Internal,
            FlowError::EmailNotInProfile,
            FlowError::NotConfigured,
            FlowError::Cooldown { retry_after: 30 },
            FlowError::SendLimit {
                until: 2_000_000_000,
            },
            FlowError::MailFailed,
            FlowError::NoCode,
            FlowError::WrongCode { remaining: 1 },
            FlowError::WrongCurrentPin { remaining: 1 },
            FlowError::AuthTokenInvalid,
            FlowError::AuthTokenExpired,
            FlowError::ResetUsed,
            FlowError::ResetInvalid,
            FlowError::SessionInvalid,
            FlowError::SessionExpired,
            FlowError::WrongAnswers { remaining: 1 },
            FlowError::UnknownQuestion("pet".into()),
            FlowError::ResetUrlNotAllowed,
            FlowError::Disabled("off"),
            FlowError::BadAnswer("empty".into()),
            FlowError::ResetCodeRefused,
        ]
    }

    #[test]
    fn every_error_has_a_status_a_code_and_words_for_both_audiences() {
        for e in all() {
            let x = explain(&e, "/back");
            assert!((400..600).contains(&x.status), "{e:?}: {}", x.status);
            assert!(x.code >= 900, "{e:?}: code {}", x.code);
            assert!(!x.message.is_empty() && !x.description.is_empty(), "{e:?}");
            assert!(!x.heading.is_empty() && !x.text.is_empty(), "{e:?}");
            if x.status == 429 || x.status == 503 {
                assert!(
                    x.retry_after.is_some_and(|s| s >= 1),
                    "{e:?} says when to retry"
                );
            }
        }
    }

    #[test]
    fn wrong_answers_are_401_and_links_keep_the_way_back() {
        assert_eq!(
            explain(&FlowError::WrongPin { remaining: 1 }, "/").status,
            401
        );
        assert_eq!(explain(&FlowError::AuthTokenExpired, "/").code, 1240);
        let x = explain(&FlowError::NoCode, "/pay?x=1");
        assert_eq!(
            x.link.unwrap().0,
            "/.stepgate/email?return_to=%2Fpay%3Fx%3D1"
        );
        let l = explain(
            &FlowError::Locked {
                until: 2_000_000_000,
            },
            "/",
        );
        assert_eq!(l.locked_until, Some(2_000_000_000));
        assert_eq!(rfc3339(2_000_000_000), "2033-05-18T03:33:20Z");
    }
}
