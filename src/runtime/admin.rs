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
    let via = ApiTarget::of(&settings);
    // A memory store lives inside the gateway's process: a store of this
    // command's own would be empty, and "not locked" from it would be a
    // wrong answer to a helpdesk. Only the running gateway can say.
    if matches!(settings.store.kind, crate::config::StoreKind::Memory) {
        return match via {
            Some(t) => t.run(action, json),
            None => Err(format!(
                "`store.kind: memory` keeps every record inside the running gateway's process, so this command cannot read or change them on its own. Set `api.secret` in {} so it goes through that gateway, or ask it yourself:\n  curl -H \"Authorization: Bearer $SECRET\" {api_hint}/.stepgate/api/manage/account/USER",
                config.display()
            )),
        };
    }
    let gate = match Gate::build(settings) {
        Ok(g) => g,
        // The embedded store has one writer: a running gateway holds it, so
        // the command goes through that gateway's API.
        Err(e)
            if embedded
                && (e.contains("lock") || e.contains("already open") || e.contains("in use")) =>
        {
            return match via {
                Some(t) => t.run(action, json),
                None => Err(format!(
                    "{e}\nThe embedded store is in use by a running gateway (it has one writer). Set `api.secret` in {} so this command can go through that gateway, or ask it yourself:\n  curl -H \"Authorization: Bearer $SECRET\" {api_hint}/.stepgate/api/manage/account/USER",
                    config.display()
                )),
            };
        }
        Err(e) => return Err(format!("{}: {e}", config.display())),
    };
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
                    serde_json::to_string_pretty(&crate::web::api::account_json(&a))
                        .unwrap_or_default()
                } else {
                    describe(&a)
                })
            }
            Action::Unlock(ref sub) => {
                admin::unlock(&gate, sub, &who).await.map_err(failed)?;
                Ok(say(json, &action, serde_json::json!({"IsPosted": true})))
            }
            Action::RemovePin(ref sub) => {
                let had = admin::remove_pin(&gate, sub, &who).await.map_err(failed)?;
                Ok(say(json, &action, serde_json::json!({"IsDeleted": had})))
            }
            Action::Revoke(ref sub) => {
                admin::revoke(&gate, sub, &who).await.map_err(failed)?;
                Ok(say(json, &action, serde_json::json!({"IsPosted": true})))
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
            Action::UnlockIp(ref ip) => {
                admin::unlock_ip(&gate, ip, &who).await.map_err(failed)?;
                Ok(say(json, &action, serde_json::json!({"IsPosted": true})))
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

/// The running gateway's admin API, on its own listener (loopback when it
/// listens on every address), with the configured API secret.
struct ApiTarget {
    base: String,
    secret: String,
}

impl ApiTarget {
    fn of(s: &Settings) -> Option<ApiTarget> {
        let secret = String::from_utf8(s.api_secret.as_ref()?.expose().to_vec()).ok()?;
        let listen = s.listen.first()?;
        let addr: std::net::SocketAddr = listen.parse().ok()?;
        let host = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let scheme = if s.tls.is_some() { "https" } else { "http" };
        Some(ApiTarget {
            base: format!("{scheme}://{host}:{}/.stepgate/api", addr.port()),
            secret,
        })
    }

    fn run(self, action: Action, json: bool) -> Result<String, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(self.call(action, json))
    }

    async fn send(&self, method: reqwest::Method, path: &str) -> Result<serde_json::Value, String> {
        // Its own listener, on this machine: the certificate names the
        // public host, not this address.
        let c = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let url = format!("{}{path}", self.base);
        let r = c
            .request(method, &url)
            .bearer_auth(&self.secret)
            .header("X-Audit-Actor", who())
            .send()
            .await
            .map_err(|e| format!("the running gateway did not answer at {url}: {e}"))?;
        let status = r.status();
        let v: serde_json::Value = r
            .json()
            .await
            .map_err(|e| format!("the running gateway answered {status} without JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "{} ({}; the running gateway answered {status})",
                v["Message"].as_str().unwrap_or("refused"),
                v["Description"].as_str().unwrap_or("")
            ));
        }
        Ok(v)
    }

    async fn call(&self, action: Action, json: bool) -> Result<String, String> {
        use reqwest::Method;
        let enc = |s: &str| crate::reply::url_encode(s);
        match action {
            Action::Show(sub) => {
                let mut v = self
                    .send(Method::GET, &format!("/manage/account/{}", enc(&sub)))
                    .await?;
                if json {
                    return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
                }
                unformat_times(&mut v);
                let a: admin::Account = serde_json::from_value(v).map_err(|e| e.to_string())?;
                Ok(describe(&a))
            }
            Action::Unlock(ref sub) => {
                let path = format!("/manage/account/{}/unlock", enc(sub));
                let v = self.send(Method::POST, &path).await?;
                Ok(say(json, &action, v))
            }
            Action::RemovePin(ref sub) => {
                let path = format!("/manage/account/{}/pin", enc(sub));
                let v = self.send(Method::DELETE, &path).await?;
                Ok(say(json, &action, v))
            }
            Action::Revoke(ref sub) => {
                let path = format!("/manage/account/{}/invalidate", enc(sub));
                let v = self.send(Method::POST, &path).await?;
                Ok(say(json, &action, v))
            }
            Action::UnlockIp(ref ip) => {
                let v = self
                    .send(Method::POST, &format!("/manage/ip/{}/unlock", enc(ip)))
                    .await?;
                Ok(say(json, &action, v))
            }
            Action::Locks => {
                let v = self.send(Method::GET, "/manage/locks").await?;
                if json {
                    return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
                }
                let mut v = v;
                for l in v.as_array_mut().into_iter().flatten() {
                    unformat_times(l);
                }
                let list: Vec<crate::flows::lockout::LockInfo> =
                    serde_json::from_value(v).map_err(|e| e.to_string())?;
                Ok(describe_locks(&list))
            }
        }
    }
}

/// The API writes times as RFC 3339; the CLI's shapes hold Unix seconds.
fn unformat_times(v: &mut serde_json::Value) {
    use time::format_description::well_known::Rfc3339;
    let unix = |x: &mut serde_json::Value| {
        if let Some(t) = x
            .as_str()
            .and_then(|s| time::OffsetDateTime::parse(s, &Rfc3339).ok())
        {
            *x = serde_json::json!(t.unix_timestamp());
        }
    };
    for k in ["PINSetAt", "LockedUntil"] {
        if let Some(x) = v.get_mut(k) {
            unix(x);
        }
    }
    if let Some(x) = v.get_mut("LastStepUp").and_then(|l| l.get_mut("At")) {
        unix(x);
    }
    for s in v
        .get_mut("PinSessions")
        .and_then(|p| p.as_array_mut())
        .into_iter()
        .flatten()
    {
        for k in ["Created", "Expires"] {
            if let Some(x) = s.get_mut(k) {
                unix(x);
            }
        }
    }
}

/// What a done action answers: the API's body for scripts, else a
/// sentence (the same whether the store was reached directly or through a
/// running gateway's API).
fn say(json: bool, action: &Action, body: serde_json::Value) -> String {
    if json {
        return body.to_string();
    }
    match action {
        Action::Unlock(sub) => {
            format!("{sub}: unlocked (PIN lock, suspension and counters lifted)")
        }
        Action::RemovePin(sub) if body["IsDeleted"] == true => {
            format!("{sub}: PIN removed; the next step-up asks them to set one up")
        }
        Action::RemovePin(sub) => format!("{sub}: had no PIN; nothing removed"),
        Action::Revoke(sub) => {
            format!("{sub}: stepped down everywhere (step-ups and PIN sessions ended)")
        }
        Action::UnlockIp(ip) => format!("{ip}: address unlocked"),
        Action::Show(_) | Action::Locks => body.to_string(),
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
