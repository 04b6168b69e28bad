//! Small things every layer uses: digests, the clock, expiring caches, the
//! audit trail, metrics, the access-log writer and allocation-light text
//! formatting. Nothing here knows about requests, users or the gateway.

pub mod audit;
pub mod cache;
pub mod clock;
pub mod digest;
pub mod logwriter;
pub mod metrics;
pub mod text;
