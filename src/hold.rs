//! Request bodies stepgate holds: read whole before deciding on a rule that
//! binds fields (the values judged are the bytes forwarded), kept for a
//! step-up, or put in place of a step-up's own POST when a kept request is
//! replayed. Whatever stepgate read goes upstream from `Ctx::body` through
//! `request_body_filter`, never a second reading of the client.

use std::time::Duration;

use bytes::Bytes;
use pingora::prelude::*;

use crate::edge::header;
use crate::reply::Resend;

pub enum Read {
    /// The whole body.
    Full(Bytes),
    /// Longer than the limit: not read to its end (the connection cannot
    /// be reused).
    TooLarge,
    /// Not complete within the time allowed.
    Slow,
}

/// Whether the request carries a body at all.
pub fn has_body(session: &mut Session) -> bool {
    !session.is_body_empty()
}

/// Read the whole request body, at most `limit` bytes, within `within`.
/// Pingora keeps a copy of what was read for the upstream (its retry
/// buffer), so the body is forwarded after this.
pub async fn read_body(session: &mut Session, limit: usize, within: Duration) -> Result<Read> {
    let declared =
        header(session.req_header(), "content-length").and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        session.set_keepalive(None);
        return Ok(Read::TooLarge);
    }
    session.enable_retry_buffering();
    let mut body = Vec::new();
    let read = tokio::time::timeout(within, async {
        while let Some(chunk) = session.read_request_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() > limit {
                return Ok(false);
            }
        }
        Ok::<bool, Box<Error>>(true)
    })
    .await;
    match read {
        Ok(Ok(true)) => Ok(Read::Full(Bytes::from(body))),
        Ok(Ok(false)) => {
            session.set_keepalive(None);
            Ok(Read::TooLarge)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            session.set_keepalive(None);
            Ok(Read::Slow)
        }
    }
}

/// Turn this request (a step-up's POST, its body already read) into the
/// kept one: its method, target, content type and length. The body itself
/// is put in place by `request_body_filter`.
pub fn rewrite(session: &mut Session, r: &Resend) -> Result<()> {
    let req = session.req_header_mut();
    let method = http::Method::from_bytes(r.method.as_bytes())
        .or_err(ErrorType::InternalError, "kept method")?;
    req.set_method(method);
    // The target's bytes as the browser first sent them.
    req.set_raw_path(r.target.as_bytes())?;
    req.remove_header("transfer-encoding");
    req.remove_header("content-type");
    if let Some(ct) = &r.content_type {
        req.insert_header("Content-Type", ct.as_str())?;
    }
    req.insert_header("Content-Length", r.body.len().to_string())?;
    Ok(())
}
