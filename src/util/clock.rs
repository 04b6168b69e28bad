//! The one clock: Unix seconds. Pure code takes `now` as an argument; only
//! the shell reads it from here.

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
