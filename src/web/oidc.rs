//! The OIDC sign-in pages: `/.stepgate/oidc/start` (to the provider),
//! `/.stepgate/oidc/callback` (back from it: stepgate's own session), and
//! `/.stepgate/logout` (the session ended on the server, then the
//! provider's end-session page when it has one).
//!
//! Never opens a session without a verified ID token, and never lets a
//! callback carried to another browser finish a sign-in.

use subtle::ConstantTimeEq;

use super::Req;
use crate::auth::revocations::session_revocation_key;
use crate::flows::profile::Profile;
use crate::gate::Gate;
use crate::reply::{query_param, safe_return_to, OwnCookie, Reply};
use crate::store::keys;
use crate::util::clock;
use crate::util::digest::sha256_hex;

/// How long a started sign-in may take.
const PENDING_SECS: u64 = 600;

pub(super) async fn pages(gate: &Gate, req: &Req<'_>) -> Reply {
    let Some(oidc) = gate.oidc.as_ref() else {
        return gate.pages.message(
            404,
            "Not found",
            "This gateway does not sign users in itself (no first_factor.oidc).",
            None,
        );
    };
    match (req.method, req.path) {
        ("GET", "/.stepgate/oidc/start") => start(gate, req, oidc).await,
        ("GET", "/.stepgate/oidc/callback") => callback(gate, req, oidc).await,
        ("GET" | "POST", "/.stepgate/logout") => logout(gate, req, oidc).await,
        _ => Reply::text(405, "method not allowed").add("Allow", "GET".into()),
    }
}

fn redirect_uri(gate: &Gate, req: &Req<'_>) -> String {
    let base = gate.settings.public_url.as_deref().unwrap_or(&req.origin);
    format!("{base}/.stepgate/oidc/callback")
}

fn unavailable(gate: &Gate, why: &str) -> Reply {
    tracing::warn!(target: "stepgate", error = why, "OIDC sign-in unavailable");
    crate::util::metrics::FIRST_FACTOR
        .with_label_values(&["oidc", "unavailable"])
        .inc();
    gate.pages
        .message(
            503,
            "Sign-in unavailable",
            "The sign-in service does not answer right now. Try again in a moment.",
            None,
        )
        .add("Retry-After", "5".into())
}

/// Whom sign-in starts are counted for: the client address, an IPv6 one
/// by its /64 (one host may use every address of its /64).
fn start_counter(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            keys::oidc_start_ip(&format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]))
        }
        _ => keys::oidc_start_ip(ip),
    }
}

async fn start(gate: &Gate, req: &Req<'_>, oidc: &crate::auth::oidc::OidcClient) -> Reply {
    // Each start keeps a record for PENDING_SECS before anyone proved
    // anything: without a bound, anyone could fill the store.
    match gate
        .store
        .incr(
            &start_counter(req.client_ip),
            std::time::Duration::from_secs(60),
        )
        .await
    {
        Ok(n) if n.value > i64::from(oidc.cfg.starts_per_minute) => {
            crate::util::audit::event("oidc_start_limit", "", req.client_ip, "");
            let wait = ((n.expires_at_ms as i64 - crate::util::clock::now_ms()) / 1000).max(1);
            return gate
                .pages
                .message(
                    429,
                    "Too many sign-ins",
                    "Too many sign-ins were started from your network in the last minute. Wait a moment, then try again.",
                    None,
                )
                .add("Retry-After", wait.to_string());
        }
        Ok(_) => {}
        Err(_) => return super::replies::unavailable(gate, true),
    }
    let return_to = safe_return_to(query_param(req.query, "return_to").as_deref());
    let fresh = query_param(req.query, "fresh").as_deref() == Some("1");
    let browser = crate::auth::tokens::random_id();
    let (url, state, pending) = match oidc
        .start(
            &redirect_uri(gate, req),
            &return_to,
            &sha256_hex(browser.as_bytes()),
            fresh,
        )
        .await
    {
        Ok(x) => x,
        Err(e) => return unavailable(gate, &e),
    };
    let record = serde_json::to_vec(&pending).unwrap_or_default();
    let ttl = std::time::Duration::from_secs(PENDING_SECS);
    if gate
        .store
        .put(&keys::oidc_pending(&state), &record, Some(ttl))
        .await
        .is_err()
    {
        return super::replies::unavailable(gate, true);
    }
    Reply::redirect(&url).add(
        "Set-Cookie",
        OwnCookie::OidcBrowser.set(&browser, PENDING_SECS as i64, req.tls),
    )
}

fn refused(gate: &Gate, why: &str) -> Reply {
    tracing::info!(target: "audit", event = "oidc_refused", reason = why);
    crate::util::metrics::FIRST_FACTOR
        .with_label_values(&["oidc", "refused"])
        .inc();
    gate.pages.message(
        400,
        "Sign-in not completed",
        &format!("{why} Start again from the page you wanted."),
        Some(("/", "Start again")),
    )
}

async fn callback(gate: &Gate, req: &Req<'_>, oidc: &crate::auth::oidc::OidcClient) -> Reply {
    if let Some(err) = query_param(req.query, "error") {
        return refused(gate, &format!("The sign-in service answered `{err}`."));
    }
    let (Some(code), Some(state)) = (
        query_param(req.query, "code"),
        query_param(req.query, "state"),
    ) else {
        return refused(gate, "The sign-in answer is incomplete.");
    };
    // Single use: taken, so a replayed callback finds nothing.
    let pending = match gate.store.take(&keys::oidc_pending(&state)).await {
        Ok(Some(bytes)) => match serde_json::from_slice::<crate::auth::oidc::Pending>(&bytes) {
            Ok(p) => p,
            Err(_) => return refused(gate, "The sign-in record is damaged."),
        },
        Ok(None) => return refused(gate, "This sign-in link was already used or has expired."),
        Err(_) => return super::replies::unavailable(gate, true),
    };
    let browser = req
        .cookie(OwnCookie::OidcBrowser.name(req.tls))
        .map(|b| sha256_hex(b.as_bytes()))
        .unwrap_or_default();
    if !bool::from(browser.as_bytes().ct_eq(pending.browser.as_bytes())) {
        return refused(gate, "This sign-in was started in another browser.");
    }
    let who = match oidc.finish(&redirect_uri(gate, req), &code, &pending).await {
        Ok(w) => w,
        Err(crate::auth::oidc::Finish::Unavailable(e)) => {
            tracing::warn!(target: "stepgate", error = %e, "OIDC provider did not answer the callback; failing closed");
            crate::util::metrics::FIRST_FACTOR
                .with_label_values(&["oidc", "unavailable"])
                .inc();
            // The pending sign-in is used up: the link starts a new one
            // from the page that was wanted.
            let again = safe_return_to(Some(&pending.return_to));
            return gate
                .pages
                .message(
                    503,
                    "Sign-in service unavailable",
                    "The sign-in service does not answer, so this sign-in could not be completed. Try again in a moment.",
                    Some((&again, "Try again")),
                )
                .add("Retry-After", "5".into());
        }
        Err(crate::auth::oidc::Finish::Refused(e)) => {
            tracing::warn!(target: "stepgate", error = %e, "OIDC callback refused");
            return refused(gate, "The sign-in could not be verified.");
        }
    };
    let emails: Vec<String> = who
        .email
        .as_deref()
        .and_then(crate::auth::principal::email_address)
        .into_iter()
        .collect();
    let profile = Profile {
        sub: who.sub.clone(),
        otp_emails: if who.email_verified {
            emails.clone()
        } else {
            Vec::new()
        },
        emails,
        username: who.username.clone(),
        phone: None,
    };
    let psid = format!("oidc-{}", crate::auth::tokens::random_id());
    let ttl = oidc.cfg.session_ttl.as_secs() as i64;
    let (token, _) = gate.keys.issue_session_from(
        &profile,
        &psid,
        who.auth_time,
        clock::now_ms(),
        ttl,
        Some("oidc"),
    );
    crate::util::audit::event("oidc_sign_in", &who.sub, req.client_ip, &psid);
    crate::util::metrics::FIRST_FACTOR
        .with_label_values(&["oidc", "admitted"])
        .inc();
    Reply::redirect(&safe_return_to(Some(&pending.return_to)))
        .add("Set-Cookie", OwnCookie::Login.set(&token, ttl, req.tls))
        .add("Set-Cookie", OwnCookie::OidcBrowser.clear(req.tls))
}

async fn logout(gate: &Gate, req: &Req<'_>, oidc: &crate::auth::oidc::OidcClient) -> Reply {
    // The session ends on the server: a saved copy of the cookie is refused.
    if let Ok(p) = &req.principal {
        if let Some((psid, _)) = &p.pin_session {
            let ttl = std::time::Duration::from_secs(oidc.cfg.session_ttl.as_secs() + 60);
            if gate
                .revocations
                .revoke(
                    &*gate.store,
                    &session_revocation_key(psid),
                    clock::now_ms(),
                    Some(ttl),
                )
                .await
                .is_err()
            {
                return super::replies::unavailable(gate, true);
            }
            crate::util::audit::event("logout", &p.sub, req.client_ip, psid);
        }
    }
    let base = gate.settings.public_url.as_deref().unwrap_or(&req.origin);
    let to = oidc
        .end_session_url(&format!("{base}/"))
        .unwrap_or_else(|| "/".to_string());
    Reply::redirect(&to).add("Set-Cookie", OwnCookie::Login.clear(req.tls))
}

#[cfg(test)]
mod tests {
    #[test]
    fn starts_are_counted_per_address_and_per_ipv6_64() {
        use super::start_counter;
        assert_eq!(start_counter("203.0.113.7"), start_counter("203.0.113.7"));
        assert_ne!(start_counter("203.0.113.7"), start_counter("203.0.113.8"));
        assert_eq!(
            start_counter("2001:db8:1:2::1"),
            start_counter("2001:db8:1:2:ffff:1:2:3")
        );
        assert_ne!(
            start_counter("2001:db8:1:2::1"),
            start_counter("2001:db8:1:3::1")
        );
        assert_eq!(start_counter("unknown"), start_counter("unknown"));
    }
}
