//! The signed-in user as stepgate knows them, whichever source said so, and
//! why a first factor was refused.

use serde::{Deserialize, Serialize};

/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The logged-in user, as the first-factor token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    /// Addresses an email OTP may be sent to: every address of the profile,
    /// less the primary one when the token says it is not verified.
    pub otp_emails: Vec<String>,
    /// Primary address (`email` claim), when present.
    pub email: Option<String>,
    /// Every address the token names (`email` first, then `emails`).
    pub emails: Vec<String>,
    /// What step-up tokens are bound to: `sid`, else `jti`, else a hash of
    /// the token itself. Never the raw token.
    pub session: String,
    /// When the first-factor login happened (`auth_time`, else `iat`).
    pub login_time: Option<i64>,
    pub expires: i64,
    /// `preferred_username` (name configurable), for PIN recovery.
    pub username: Option<String>,
    /// `phone_number` (name configurable), for PIN recovery by SMS.
    pub phone: Option<String>,
    /// Set when the first factor is stepgate's own session after a PIN
    /// login: (PIN session id, issued at in Unix ms). Such sessions end when
    /// the PIN session or the user is invalidated.
    pub pin_session: Option<(String, i64)>,
    /// Which first-factor source admitted this user: `jwt`, `pin` (a PIN
    /// login session), `oidc`, `introspection`, `session_check` or
    /// `trusted_header`. Logged, counted and named in the assertion (`ff`).
    pub source: &'static str,
}

#[derive(Debug, PartialEq, Eq, Clone)]
pub enum AuthError {
    Missing,
    TooLarge,
    Malformed,
    /// The header names an algorithm the config does not allow (incl. `none`).
    AlgorithmNotAllowed,
    /// No key with the token's `kid`; a JWKS refresh may find it.
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim(&'static str),
    /// A stepgate PIN-login session that was invalidated.
    Revoked,
    /// The source that must answer (the IdP, the app) did not: down, slow
    /// or answering nonsense. Routes that need a user fail closed.
    Unavailable(&'static str),
    /// The IdP or the app says this token or session is not (or no longer)
    /// signed in.
    Inactive,
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLarge => "too_large",
            AuthError::Malformed => "malformed",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::Revoked => "revoked",
            AuthError::Unavailable(_) => "unavailable",
            AuthError::Inactive => "inactive",
        }
    }
}

/// What stepgate keeps of a user for PIN recovery and its own sessions:
/// the addresses, username and phone the first factor named. (Its store
/// index lives in `flows::profile`.)
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub sub: String,
    /// Every address, primary first.
    #[serde(default)]
    pub emails: Vec<String>,
    /// Addresses that may receive codes (the verified ones).
    #[serde(default)]
    pub otp_emails: Vec<String>,
    pub username: Option<String>,
    pub phone: Option<String>,
}

impl Profile {
    pub fn of(p: &Principal) -> Profile {
        Profile {
            sub: p.sub.clone(),
            emails: p.emails.clone(),
            otp_emails: p.otp_emails.clone(),
            username: p.username.clone(),
            phone: p.phone.clone(),
        }
    }
}

/// `+1 (555) 010-2000` → `+15550102000`; None without 6 to 15 digits.
pub fn normalize_phone(raw: &str) -> Option<String> {
    let t = raw.trim();
    let plus = t.starts_with('+');
    let mut digits = String::new();
    for c in t.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '(' | ')' | '.' | '+' => {}
            _ => return None,
        }
    }
    if !(6..=15).contains(&digits.len()) {
        return None;
    }
    Some(if plus { format!("+{digits}") } else { digits })
}
