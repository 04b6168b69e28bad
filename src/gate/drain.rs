//! Connection-level state the proxy and the server share: whether this
//! process is draining, and each HTTP/1 connection's idle clock for the
//! request-head deadline. The server sets them up; the proxy marks them.

use std::sync::Arc;

/// Set when this process is handing its listeners to a new one, or shutting
/// down: from then on every response says `Connection: close`, so keep-alive
/// clients move to the new process before Pingora drops idle connections.
pub static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A connection's clock for the server's head deadline: when it started, and when it
/// last became idle (ms after the start), or `IN_REQUEST`.
pub struct ConnClock {
    pub start: tokio::time::Instant,
    pub idle_since: std::sync::atomic::AtomicU64,
}

tokio::task_local! {
    pub static CONN: Arc<ConnClock>;
}

pub const IN_REQUEST: u64 = u64::MAX;

/// Called by the proxy once a request head has been parsed: the head
/// deadline does not apply while the request is served.
pub fn head_read() {
    let _ = CONN.try_with(|c| {
        c.idle_since
            .store(IN_REQUEST, std::sync::atomic::Ordering::Relaxed)
    });
}

/// Called by the proxy when a request is done: the connection is idle
/// again, and its next head has `timeouts.request_head` from now.
pub fn request_done() {
    let _ = CONN.try_with(|c| {
        c.idle_since.store(
            c.start.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        )
    });
}
