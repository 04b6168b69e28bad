//! Notices to a user about their factors, sent in the background: a
//! webhook event and a mail to the recovery profile's address.

use serde_json::json;

use crate::flows::deps::Deps;

/// A run of failures suspended `sub`'s PIN: post `PINSuspended` to the
/// webhook and, when mail is configured, tell the user at the primary
/// address of their recovery profile. Everything happens in the background;
/// a failed send is logged and audited, never shown to anyone.
pub fn pin_suspended(deps: &Deps, sub: &str, ip: &str) {
    let failures = deps.settings.lockout.max_consecutive;
    deps.notifier.event(
        "PINSuspended",
        sub,
        json!({"ConsecutiveFailures": failures, "Unlock": ["reset", "admin"]}),
    );
    let Some(mailer) = deps.mailer.clone() else {
        return;
    };
    let forgot = deps
        .settings
        .public_url
        .as_deref()
        .map(|u| format!("{}/.stepgate/pin/forgot", u.trim_end_matches('/')));
    let mut mail = deps.pages.suspended_mail(failures, forgot.as_deref());
    let store = deps.store.clone();
    let (sub, ip) = (sub.to_string(), ip.to_string());
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(target: "stepgate", user = %sub, "no runtime to mail the suspension notice");
        return;
    };
    rt.spawn(async move {
        let to = match crate::flows::profile::load(&*store, &sub).await {
            Ok(p) => p.and_then(|p| p.emails.first().or(p.otp_emails.first()).cloned()),
            Err(e) => {
                tracing::warn!(target: "stepgate", user = %sub, error = ?e, "cannot read the recovery profile for the suspension notice");
                None
            }
        };
        let Some(to) = to else {
            crate::util::audit::event("pin_suspended_not_mailed", &sub, &ip, "no address");
            return;
        };
        mail.to = to;
        match mailer.send(mail).await {
            Ok(()) => crate::util::audit::event("pin_suspended_mailed", &sub, &ip, ""),
            Err(e) => {
                tracing::warn!(target: "stepgate", user = %sub, error = %e, "mailing the suspension notice failed");
                crate::util::audit::event("pin_suspended_not_mailed", &sub, &ip, &e.to_string());
            }
        }
    });
}
