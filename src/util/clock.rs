//! The one clock: Unix seconds (and milliseconds, for exact step-downs).
//! Pure code takes `now` as an argument; only the shell reads it from here.

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
