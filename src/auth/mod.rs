//! Who the user is and what they proved: the principal, first-factor
//! verification, stepgate's own tokens (step-up, session, CSRF), step-down
//! revocations, the pure access decision, and the signed upstream assertion.
//! No store I/O happens here: what needs the store comes back as an
//! obligation or is loaded by the flows.

pub mod assertion;
pub mod binding;
pub mod decision;
pub mod first_factor;
pub mod oidc;
pub mod principal;
pub mod revocations;
pub mod sources;
pub mod tokens;
