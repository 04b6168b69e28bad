//! The one error type of every flow: what a flow can answer besides
//! success, with meaning (`Locked { until }`, `WrongPin { remaining }`).
//! `http::respond` maps it to a status, an ErrorCode and words, once.

use crate::store::StoreError;

/// Everything a flow can answer besides success. Mapped to pages and JSON in
/// one place (`respond`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowError {
    /// Locked until this Unix time.
    Locked {
        until: i64,
    },
    /// Too many failures in a row: the PIN is suspended until it is reset
    /// or an admin unlocks the account (LoginRadius 1198, "suspended").
    Suspended,
    WrongPin {
        remaining: u32,
    },
    NoPin,
    PinAlreadySet,
    /// The new PIN breaks a rule; the message says which.
    PinRule(String),
    PinMismatch,
    /// PIN enrollment needs a first-factor login newer than the window.
    LoginNotFresh,
    /// The change needs what the PIN protects: a recent step-up of this
    /// session, or the current PIN (security answers of a user with a PIN).
    StepUpRequired,
    StoreUnavailable,
    Internal,
    /// The address is not one of the profile's (LoginRadius 1340).
    EmailNotInProfile,
    /// No mailer configured.
    NotConfigured,
    /// Ask again after this many seconds.
    Cooldown {
        retry_after: i64,
    },
    /// The hourly cap is reached until this Unix time (LoginRadius 1179).
    SendLimit {
        until: i64,
    },
    /// The mail server refused or was unreachable; nothing was consumed.
    MailFailed,
    /// No code pending: never sent, used, burned or expired.
    NoCode,
    WrongCode {
        remaining: u32,
    },
    /// The current PIN given to a change is wrong (LoginRadius 1241).
    WrongCurrentPin {
        remaining: u32,
    },
    /// PINAuthToken unknown or already used (1239) / expired (1240).
    AuthTokenInvalid,
    AuthTokenExpired,
    /// The reset link was already used (1242).
    ResetUsed,
    /// The reset token is unknown or expired.
    ResetInvalid,
    /// PIN session token unknown, revoked or from another device (1245) /
    /// expired (1246).
    SessionInvalid,
    SessionExpired,
    /// Security answers wrong or missing; tries left before their lockout.
    WrongAnswers {
        remaining: u32,
    },
    /// A security question id that the config does not offer.
    UnknownQuestion(String),
    /// `resetpinurl` is not on `pin.reset_urls`.
    ResetUrlNotAllowed,
    /// A feature this gateway's config turns off; the text says which.
    Disabled(&'static str),
    /// A security answer that cannot be stored; the text says why.
    BadAnswer(String),
    /// A reset code refused: wrong, used, expired or no such account (one
    /// answer for all, so it tells nothing about accounts).
    ResetCodeRefused,
    /// A kept request that is no longer there: sent already, expired, or
    /// kept for another session.
    KeptGone,
}

impl From<StoreError> for FlowError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(target: "stepgate", error = %e, "store operation failed");
        FlowError::StoreUnavailable
    }
}
