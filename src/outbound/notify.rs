//! Messages stepgate sends over HTTP: PIN lifecycle events to the configured
//! webhook (signed, so receivers can trust them) and text messages through
//! the SMS gateway's webhook.
//!
//! Webhook requests carry `X-Stepgate-Event`, `X-Stepgate-Delivery` (a unique
//! id, the same on retries) and `X-Stepgate-Signature: t=<unix>,v1=<hex>`
//! where `v1` is HMAC-SHA256 over `"<t>.<body>"` with `webhook.secret`.
//! Receivers recompute it, compare in constant time and refuse old `t`.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::config::{Sms, Webhook};
use crate::util::metrics;

pub struct Notifier {
    client: reqwest::Client,
    webhook: Option<Webhook>,
    sms: Option<Sms>,
}

/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

/// Delays between webhook delivery attempts.
const RETRIES: [Duration; 3] = [
    Duration::from_millis(0),
    Duration::from_millis(500),
    Duration::from_secs(3),
];

impl Notifier {
    pub fn new(webhook: Option<Webhook>, sms: Option<Sms>) -> Result<Notifier, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Notifier {
            client,
            webhook,
            sms,
        })
    }

    pub fn sms_configured(&self) -> bool {
        self.sms.is_some()
    }

    /// Post `event` about `uid` to the webhook, in the background, with
    /// retries; failures are logged and counted, never shown to the user.
    pub fn event(&self, event: &'static str, uid: &str, data: Value) {
        let Some(w) = self.webhook.clone() else {
            return;
        };
        let delivery = crate::auth::tokens::random_id();
        let body = json!({
            "Event": event,
            "Uid": uid,
            "Time": crate::util::clock::now(),
            "Id": delivery,
            "Data": data,
        })
        .to_string();
        let client = self.client.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(target: "stepgate", event, "no runtime to deliver the webhook");
            return;
        };
        rt.spawn(async move {
            for (attempt, delay) in RETRIES.iter().enumerate() {
                tokio::time::sleep(*delay).await;
                let t = crate::util::clock::now();
                let r = client
                    .post(&w.url)
                    .timeout(w.timeout)
                    .header("Content-Type", "application/json")
                    .header("X-Stepgate-Event", event)
                    .header("X-Stepgate-Delivery", &delivery)
                    .header(
                        "X-Stepgate-Signature",
                        signature(w.secret.expose(), t, body.as_bytes()),
                    )
                    .body(body.clone())
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => {
                        metrics::WEBHOOKS.with_label_values(&["delivered"]).inc();
                        return;
                    }
                    Ok(resp) => tracing::warn!(target: "stepgate", event, attempt, status = resp.status().as_u16(), "webhook refused"),
                    Err(e) => tracing::warn!(target: "stepgate", event, attempt, error = %e, "webhook unreachable"),
                }
            }
            metrics::WEBHOOKS.with_label_values(&["failed"]).inc();
            tracing::error!(target: "stepgate", event, delivery = %delivery, "webhook delivery failed after retries");
        });
    }

    /// Send a text message through the SMS gateway: POST `{"to","message"}`.
    pub async fn sms(&self, to: &str, message: &str) -> Result<(), String> {
        let Some(s) = &self.sms else {
            return Err("no SMS gateway is configured".into());
        };
        let mut req = self
            .client
            .post(&s.webhook_url)
            .timeout(s.timeout)
            .json(&json!({"to": to, "message": message}));
        if let Some(secret) = &s.secret {
            req = req.header(
                "Authorization",
                format!("Bearer {}", String::from_utf8_lossy(secret.expose())),
            );
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the SMS gateway answered {}", r.status())),
            Err(e) if e.is_timeout() => Err(format!(
                "the SMS gateway did not answer within {:?}",
                s.timeout
            )),
            Err(e) => Err(format!("the SMS gateway is unreachable: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_over_time_and_body() {
        // Known answer, from Python's hmac: HMAC-SHA256("key", "1700000000.{}").
        let s = signature(b"key", 1_700_000_000, b"{}");
        assert_eq!(
            s,
            "t=1700000000,v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert_ne!(s, signature(b"key", 1_700_000_000, b"{ }"));
        assert_ne!(s, signature(b"kez", 1_700_000_000, b"{}"));
        assert_ne!(s, signature(b"key", 1_700_000_001, b"{}"));
    }
}
