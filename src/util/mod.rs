//! Small things every layer uses: digests, the clock, expiring caches, the
//! audit trail, metrics and the access-log writer. Nothing here knows about
//! requests, users or the gateway.

pub mod audit;
pub mod cache;
pub mod clock;
pub mod digest;
pub mod logwriter;
pub mod metrics;
