//! The one clock: Unix seconds (and milliseconds, for exact step-downs).
//! Pure code takes `now` as an argument; the shell reads it from here; the
//! flows read it from their store ([`crate::store::Store::now_ms`]), whose
//! expiries run on the same [`Clock`], so a test can move time for both.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// The system clock, or a hand-moved one for tests (shared by clones).
#[derive(Clone, Default, Debug)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system's time.
    pub fn system() -> Clock {
        Clock(None)
    }
    /// A clock that stands at `start_ms` until [`Clock::advance`] moves it.
    pub fn fake(start_ms: i64) -> Clock {
        Clock(Some(Arc::new(AtomicI64::new(start_ms))))
    }
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            None => now_ms(),
            Some(t) => t.load(Ordering::Relaxed),
        }
    }
    pub fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
    /// Move a fake clock on (a system clock cannot be moved).
    pub fn advance(&self, by: std::time::Duration) {
        if let Some(t) = &self.0 {
            t.fetch_add(by.as_millis() as i64, Ordering::Relaxed);
        }
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds: the clock of invalidations and of the credentials
/// judged against them.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A Unix time for people (UTC).
pub fn human_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[hour]:[minute]:[second] UTC on [year]-[month]-[day]"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
