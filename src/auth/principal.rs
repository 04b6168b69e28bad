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

/// An address as every source hands it on: trimmed and lowercased (codes are
/// sent to, and compared with, this form), or None when it is no address.
pub fn email_address(e: &str) -> Option<String> {
    let e = e.trim().to_ascii_lowercase();
    (!e.is_empty() && e.len() <= 254 && e.contains('@')).then_some(e)
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
    /// The request carries the app's own session of another user than the
    /// credential stepgate judged: the app would act for that other user.
    TwoUsers,
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
            AuthError::TwoUsers => "two_users",
        }
    }
}

/// What stepgate keeps of a user for PIN recovery and its own sessions:
/// the addresses, username and phone the first factor named. (Its store
/// index lives in `flows::profile`.) Stored as [`StoredProfile`].
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(from = "StoredProfile", into = "StoredProfile")]
pub struct Profile {
    pub sub: String,
    /// Every address, primary first.
    pub emails: Vec<String>,
    /// Addresses that may receive codes (the verified ones).
    pub otp_emails: Vec<String>,
    pub username: Option<String>,
    pub phone: Option<String>,
}

/// A profile as stored: one-letter names, nothing empty, and the code
/// addresses left out when they are all the addresses (the usual case).
/// Records of earlier versions (full names, every field) read the same.
#[derive(Serialize, Deserialize)]
struct StoredProfile {
    /// Left out in a user's record, whose key names the user.
    #[serde(default, rename = "s", skip_serializing_if = "String::is_empty")]
    sub: String,
    /// Only records of earlier versions name it so; in those, absent code
    /// addresses mean none.
    #[serde(default, rename = "sub", skip_serializing)]
    earlier_sub: Option<String>,
    #[serde(
        default,
        rename = "e",
        alias = "emails",
        skip_serializing_if = "Vec::is_empty"
    )]
    emails: Vec<String>,
    /// Absent: the same as `emails`.
    #[serde(
        default,
        rename = "o",
        alias = "otp_emails",
        skip_serializing_if = "Option::is_none"
    )]
    otp_emails: Option<Vec<String>>,
    #[serde(
        default,
        rename = "u",
        alias = "username",
        skip_serializing_if = "Option::is_none"
    )]
    username: Option<String>,
    #[serde(
        default,
        rename = "p",
        alias = "phone",
        skip_serializing_if = "Option::is_none"
    )]
    phone: Option<String>,
}

impl From<StoredProfile> for Profile {
    fn from(s: StoredProfile) -> Profile {
        let (sub, otp_emails) = match s.earlier_sub {
            Some(sub) => (sub, s.otp_emails.unwrap_or_default()),
            None => (s.sub, s.otp_emails.unwrap_or_else(|| s.emails.clone())),
        };
        Profile {
            otp_emails,
            sub,
            emails: s.emails,
            username: s.username,
            phone: s.phone,
        }
    }
}

impl From<Profile> for StoredProfile {
    fn from(p: Profile) -> StoredProfile {
        StoredProfile {
            otp_emails: (p.otp_emails != p.emails).then_some(p.otp_emails),
            earlier_sub: None,
            sub: p.sub,
            emails: p.emails,
            username: p.username,
            phone: p.phone,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::Profile;

    fn bob() -> Profile {
        Profile {
            sub: "bob".into(),
            emails: vec!["bob@x.io".into(), "b@y.io".into()],
            otp_emails: vec!["bob@x.io".into(), "b@y.io".into()],
            username: None,
            phone: Some("+15550102000".into()),
        }
    }

    #[test]
    fn a_profile_is_stored_small_and_reads_back() {
        let p = bob();
        let raw = serde_json::to_string(&p).unwrap();
        assert_eq!(
            raw,
            r#"{"s":"bob","e":["bob@x.io","b@y.io"],"p":"+15550102000"}"#
        );
        assert_eq!(serde_json::from_str::<Profile>(&raw).unwrap(), p);
        let unverified = Profile {
            otp_emails: vec!["b@y.io".into()],
            ..bob()
        };
        let raw = serde_json::to_string(&unverified).unwrap();
        assert!(raw.contains(r#""o":["b@y.io"]"#), "{raw}");
        assert_eq!(serde_json::from_str::<Profile>(&raw).unwrap(), unverified);
        let none = Profile {
            otp_emails: vec![],
            ..bob()
        };
        let back: Profile = serde_json::from_str(&serde_json::to_string(&none).unwrap()).unwrap();
        assert_eq!(back, none, "no code address stays none");
    }

    #[test]
    fn records_of_earlier_versions_read_as_they_meant() {
        let full = r#"{"sub":"bob","emails":["bob@x.io","b@y.io"],"otp_emails":["bob@x.io","b@y.io"],"username":null,"phone":"+15550102000"}"#;
        assert_eq!(serde_json::from_str::<Profile>(full).unwrap(), bob());
        // Written before code addresses were kept: none, not every address.
        let older = r#"{"sub":"bob","emails":["bob@x.io"],"username":"bob"}"#;
        let p: Profile = serde_json::from_str(older).unwrap();
        assert_eq!(p.sub, "bob");
        assert!(p.otp_emails.is_empty(), "{p:?}");
    }
}
