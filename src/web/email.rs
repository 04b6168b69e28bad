//! The email-OTP pages: choose an address, send a code, enter it. Same CSRF,
//! CSP and `return_to` rules as the PIN pages; flow errors become pages in
//! [`super::flow_page`].

use minijinja::context;

use super::pending::Pending;
use super::{flow_page, login_is_fresh, read_form, stepup_success, Req};
use crate::auth::principal::Principal;
use crate::config::OtpMode;
use crate::flows::error::FlowError;
use crate::flows::otp::{self, mask};
use crate::gate::Gate;
use crate::policy::Factor;
use crate::reply::{field, Reply};
use crate::util::clock;
use crate::util::metrics;

/// The addresses this user may pick now, and whether picking one enrolls it.
async fn choices(gate: &Gate, p: &Principal) -> Result<(Vec<String>, bool), FlowError> {
    if gate.settings.email_otp.mode == OtpMode::WithoutMfa {
        return Ok((p.otp_emails.clone(), false));
    }
    let verified = otp::verified_addresses(gate, p).await?;
    if verified.is_empty() {
        Ok((p.otp_emails.clone(), true))
    } else {
        Ok((verified, false))
    }
}

fn choose_form(
    gate: &Gate,
    status: u16,
    p: &Principal,
    pending: &Pending,
    (addresses, enrolling): (&[String], bool),
    error: Option<String>,
) -> Reply {
    let list: Vec<_> = addresses
        .iter()
        .map(|a| context! { value => a, masked => mask(a) })
        .collect();
    let other_factors = pending.factors().len() > 1;
    gate.pages.render(status, "email.html", context! { csrf => gate.keys.csrf_token(p, clock::now()), return_to => &pending.return_to, addresses => list, enrolling, error, other_factors, ..pending.context() })
}

pub async fn page(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let pending = match Pending::read(gate, req, p, None).await {
        Ok(x) => x,
        Err(e) => return flow_page(gate, e, "/"),
    };
    if gate.mailer.is_none() {
        return flow_page(gate, FlowError::NotConfigured, &pending.return_to);
    }
    match choices(gate, p).await {
        Ok((addresses, enrolling)) => {
            if enrolling && !login_is_fresh(gate, p) {
                return flow_page(gate, FlowError::LoginNotFresh, &pending.return_to);
            }
            choose_form(gate, 200, p, &pending, (&addresses, enrolling), None)
        }
        Err(e) => flow_page(gate, e, &pending.return_to),
    }
}

pub async fn send(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let form = match read_form(gate, req, p, "/.stepgate/email") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let pending = match Pending::read(gate, req, p, Some(&form)).await {
        Ok(x) => x,
        Err(e) => return flow_page(gate, e, "/"),
    };
    let return_to = &pending.return_to;
    let email = field(&form, "email").unwrap_or("");
    // On a bound rule the mail shows what the code approves.
    match otp::send_for(gate, p, email, req.client_ip, login_is_fresh(gate, p), pending.binding()).await {
        Ok(_) => Reply::redirect(&pending.link("/.stepgate/email/verify")),
        Err(FlowError::Cooldown { retry_after }) => match otp::pending(gate, p).await {
            // A code is already on its way: show its form, say why no new one.
            Ok(Some(sent)) => code_form(gate, 429, p, &pending, &sent, Some(format!("A code was sent moments ago. You can ask for a new one in {retry_after} seconds."))),
            _ => flow_page(gate, FlowError::Cooldown { retry_after }, return_to),
        },
        Err(FlowError::EmailNotInProfile) => match choices(gate, p).await {
            Ok((addresses, enrolling)) => choose_form(gate, 400, p, &pending, (&addresses, enrolling), Some("Choose one of the addresses listed.".into())),
            Err(e) => flow_page(gate, e, return_to),
        },
        Err(e) => flow_page(gate, e, return_to),
    }
}

fn code_form(
    gate: &Gate,
    status: u16,
    p: &Principal,
    pending: &Pending,
    sent: &otp::Sent,
    error: Option<String>,
) -> Reply {
    gate.pages.render(
        status,
        "email_code.html",
        context! { csrf => gate.keys.csrf_token(p, clock::now()), return_to => &pending.return_to, masked => &sent.masked, expires => crate::util::clock::human_time(sent.expires_at), length => gate.settings.email_otp.length, error, ..pending.context() },
    )
}

pub async fn code_page(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let pending = match Pending::read(gate, req, p, None).await {
        Ok(x) => x,
        Err(e) => return flow_page(gate, e, "/"),
    };
    match otp::state(gate, p).await {
        Ok(otp::OtpState::Sent(sent)) => code_form(gate, 200, p, &pending, &sent, None),
        Ok(otp::OtpState::NoCode) => Reply::redirect(&pending.link("/.stepgate/email")),
        Err(e) => flow_page(gate, e, &pending.return_to),
    }
}

pub async fn verify(gate: &Gate, req: &Req<'_>, p: &Principal) -> Reply {
    let form = match read_form(gate, req, p, "/.stepgate/email") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let pending = match Pending::read(gate, req, p, Some(&form)).await {
        Ok(x) => x,
        Err(e) => return flow_page(gate, e, "/"),
    };
    let return_to = &pending.return_to;
    let code = field(&form, "otp").unwrap_or("");
    match otp::verify_for(gate, p, code, req.client_ip).await {
        Ok((_, txn)) => {
            metrics::STEPUPS
                .with_label_values(&["email_otp", "success"])
                .inc();
            // The code approves what its mail showed, nothing else.
            stepup_success(gate, req, p, Factor::EmailOtp, &pending, txn).await
        }
        Err(FlowError::WrongCode { remaining }) => {
            metrics::STEPUPS
                .with_label_values(&["email_otp", "failure"])
                .inc();
            match otp::pending(gate, p).await {
                Ok(Some(sent)) => {
                    let msg = format!(
                        "That code is not right. {remaining} {} left.",
                        if remaining == 1 { "try" } else { "tries" }
                    );
                    code_form(gate, 401, p, &pending, &sent, Some(msg))
                }
                // The code burned with that guess.
                _ => flow_page(gate, FlowError::NoCode, return_to),
            }
        }
        Err(e) => {
            let outcome = if matches!(e, FlowError::Locked { .. } | FlowError::Suspended) {
                "locked"
            } else {
                "error"
            };
            metrics::STEPUPS
                .with_label_values(&["email_otp", outcome])
                .inc();
            flow_page(gate, e, return_to)
        }
    }
}
