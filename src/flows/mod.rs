//! The flows that do I/O: PIN enrollment and verification under the
//! lockout, email codes, the recovery profile, and the PIN lifecycle (PIN
//! sessions, resets, PINAuthTokens, setup). Each answers with a value or a
//! [`error::FlowError`]; turning either into HTTP happens in `http`.

pub mod admin;
pub mod deps;
pub mod error;
pub mod hasher;
pub mod kept;
pub mod lifecycle;
pub mod lockout;
pub mod notice;
pub mod otp;
pub mod pin;
pub mod profile;
pub mod user;

#[cfg(test)]
mod tests;
