//! `stepgate admin`: the helpdesk's commands, on the configured store (the
//! same `flows::admin` functions the API runs). Human output reads as
//! sentences; `--json` prints the API's shapes for scripts.
//!
//! The embedded store has one writer: while a gateway runs on it, these
//! commands say so and point at the API, which does the same through the
//! running gateway.

use std::path::Path;

use crate::config::Settings;
use crate::flows::admin;
use crate::gate::Gate;
use crate::util::clock::human_time;

/// What to do, as the command line said it.
pub enum Action {
    Show(String),
    Unlock(String),
    RemovePin(String),
    Revoke(String),
    UnlockIp(String),
    Locks,
}

fn who() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// Run `action`; the text to print, or why it could not be done.
pub fn run(
    config: &Path,
    settings: Settings,
    action: Action,
    json: bool,
) -> Result<String, String> {
    let embedded = matches!(
        settings.store.kind,
        crate::config::StoreKind::Embedded { .. }
    );
    let api_hint = settings.public_url.clone().unwrap_or_else(|| {
        format!(
            "http://{}",
            settings.listen.first().cloned().unwrap_or_default()
        )
    });
    let gate = Gate::build(settings).map_err(|e| {
        if embedded && (e.contains("lock") || e.contains("already open") || e.contains("in use")) {
            format!(
                "{e}\nThe embedded store is in use by a running gateway (it has one writer). Ask that gateway instead, with the API secret:\n  curl -H \"Authorization: Bearer $SECRET\" {api_hint}/.stepgate/api/manage/account/USER"
            )
        } else {
            format!("{}: {e}", config.display())
        }
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        gate.revocations
            .start(&*gate.store)
            .await
            .map_err(|e| format!("store: {e}"))?;
        let who = who();
        let failed = |e: crate::flows::error::FlowError| {
            let x = crate::web::respond::explain(&e, "/");
            format!("{} ({})", x.message, x.description)
        };
        match action {
            Action::Show(sub) => {
                let a = admin::show(&gate, &sub).await.map_err(failed)?;
                Ok(if json {
                    serde_json::to_string_pretty(&a).unwrap_or_default()
                } else {
                    describe(&a)
                })
            }
            Action::Unlock(sub) => {
                admin::unlock(&gate, &sub, &who).await.map_err(failed)?;
                Ok(say(
                    json,
                    &format!("{sub}: unlocked (PIN lock, suspension and counters lifted)"),
                    serde_json::json!({"IsPosted": true}),
                ))
            }
            Action::RemovePin(sub) => {
                let had = admin::remove_pin(&gate, &sub, &who).await.map_err(failed)?;
                let text = if had {
                    format!("{sub}: PIN removed; the next step-up asks them to set one up")
                } else {
                    format!("{sub}: had no PIN; nothing removed")
                };
                Ok(say(json, &text, serde_json::json!({"IsDeleted": had})))
            }
            Action::Revoke(sub) => {
                admin::revoke(&gate, &sub, &who).await.map_err(failed)?;
                Ok(say(
                    json,
                    &format!("{sub}: stepped down everywhere (step-ups and PIN sessions ended)"),
                    serde_json::json!({"IsPosted": true}),
                ))
            }
            Action::Locks => {
                let list = admin::locks(&gate).await.map_err(failed)?;
                Ok(if json {
                    serde_json::to_string_pretty(&crate::web::api::locks_json(&list))
                        .unwrap_or_default()
                } else {
                    describe_locks(&list)
                })
            }
            Action::UnlockIp(ip) => {
                admin::unlock_ip(&gate, &ip, &who).await.map_err(failed)?;
                Ok(say(
                    json,
                    &format!("{ip}: address unlocked"),
                    serde_json::json!({"IsPosted": true}),
                ))
            }
        }
    })
}

/// `admin locks` for people: one line per lock.
pub fn describe_locks(list: &[crate::flows::lockout::LockInfo]) -> String {
    if list.is_empty() {
        return "no locks in force".into();
    }
    let mut out = vec![format!("{} lock(s) in force:", list.len())];
    for l in list {
        let who = match (&l.uid, &l.ip) {
            (Some(u), _) => format!("user {u}"),
            (None, Some(ip)) => format!("address {ip}"),
            _ => "?".into(),
        };
        let what = if l.kind == "pin" {
            "PIN and email codes"
        } else {
            "PIN recovery"
        };
        let state = match (l.suspended, l.locked_until) {
            (true, _) => "SUSPENDED until unlocked".to_string(),
            (false, Some(t)) => format!("locked until {}", human_time(t)),
            (false, None) => "locked".into(),
        };
        let fix = match &l.uid {
            Some(u) => format!("stepgate admin user unlock {u}"),
            None => format!(
                "stepgate admin unlock --ip {}",
                l.ip.as_deref().unwrap_or("")
            ),
        };
        out.push(format!("  {who}: {what} {state} (lift: {fix})"));
    }
    out.join("\n")
}

fn say(json: bool, text: &str, body: serde_json::Value) -> String {
    if json {
        body.to_string()
    } else {
        text.to_string()
    }
}

/// `user show` for people.
pub fn describe(a: &admin::Account) -> String {
    let mut out = vec![format!("user {}", a.uid)];
    out.push(match (a.is_pin_set, a.pin_set_at) {
        (true, Some(at)) => format!("  PIN: set at {}", human_time(at)),
        (true, None) => "  PIN: set".into(),
        (false, _) => "  PIN: not set".into(),
    });
    out.push(match (a.suspended, a.locked_until) {
        (true, _) => {
            "  lock: SUSPENDED (too many failures in a row): `stepgate admin user unlock` lifts it"
                .into()
        }
        (false, Some(until)) => format!("  lock: locked until {}", human_time(until)),
        (false, None) => "  lock: not locked".into(),
    });
    out.push(format!(
        "  failures: {} in the current window, {} in a row",
        a.failures, a.consecutive_failures
    ));
    out.push(match &a.last_step_up {
        Some(s) => format!("  last step-up: {} at {}", s.factor, human_time(s.at)),
        None => "  last step-up: none recorded".into(),
    });
    if a.pin_sessions.is_empty() {
        out.push("  PIN sessions: none".into());
    } else {
        out.push(format!("  PIN sessions: {}", a.pin_sessions.len()));
        for s in &a.pin_sessions {
            out.push(format!(
                "    {} on {}, until {}",
                s.id,
                s.device,
                human_time(s.expires)
            ));
        }
    }
    out.push(if a.recovery_emails.is_empty() {
        "  recovery: no address known".into()
    } else {
        format!("  recovery: {}", a.recovery_emails.join(", "))
    });
    out.join("\n")
}
