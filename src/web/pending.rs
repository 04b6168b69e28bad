//! What a step-up page is for: the request that needed it. The pages carry
//! it along (`return_to`, `method`, `kept`, `resend`, in links and hidden
//! fields) and every one works it out again from those: the rule for that
//! method (so a POST-only rule's factors are offered), the kept request
//! (read back from the store, never from the page), and on a bound rule the
//! values the step-up approves, shown on the page and in the code's mail.

use minijinja::context;
use minijinja::value::Value;

use super::Req;
use crate::auth::binding::{self, Txn, Values};
use crate::auth::decision::offered;
use crate::auth::principal::Principal;
use crate::flows::error::FlowError;
use crate::flows::kept::{self, Kept};
use crate::gate::Gate;
use crate::policy::{Factor, Require, StepUp};
use crate::reply::{field, query_param, safe_return_to, url_encode};

/// Why a request's body was not kept, as the page says it.
fn resend_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "large" => "The form you sent was too large to keep (over 64 KiB): after confirming, send it again.",
        "upload" => "Files and uploads are not kept: after confirming, send the form again.",
        "slow" => "The form you sent did not arrive completely: after confirming, send it again.",
        "store" => "The form you sent could not be kept: after confirming, send it again.",
        "cross" => "The form was sent from another site, so it was not kept: after confirming, send it again from this site if you meant to.",
        "many" => "You have many forms waiting for a confirmation already, so this one was not kept: after confirming, send it again.",
        _ => return None,
    })
}

pub struct Pending {
    pub return_to: String,
    /// The method of the request the step-up is for.
    pub method: String,
    pub kept: Option<(String, Kept)>,
    /// Why a body was not kept: its code (carried along) and the words.
    resend: Option<(String, &'static str)>,
    pub step_up: Option<StepUp>,
    /// The rule's name (an approval made here opens that rule only).
    rule: Option<String>,
    /// A bound rule's values in that request.
    pub values: Option<Values>,
}

impl Pending {
    /// From a page's query, or its form when `form` is given.
    pub async fn read(
        gate: &Gate,
        req: &Req<'_>,
        p: &Principal,
        form: Option<&[(String, String)]>,
    ) -> Result<Pending, FlowError> {
        let get = |name: &str| -> Option<String> {
            match form {
                Some(f) => field(f, name).map(str::to_string),
                None => query_param(req.query, name),
            }
            .filter(|v| !v.is_empty())
        };
        let mut return_to = safe_return_to(get("return_to").as_deref());
        let kept = match get("kept") {
            Some(id) => {
                let k = kept::peek(gate, &id, p).await?;
                // A kept request finishes on the host it was sent to.
                if k.host != req.host() {
                    return Err(FlowError::KeptGone);
                }
                return_to = safe_return_to(Some(&k.target));
                Some((id, k))
            }
            None => None,
        };
        let method = match &kept {
            Some((_, k)) => k.method.clone(),
            None => get("method")
                .map(|m| m.to_ascii_uppercase())
                .filter(|m| crate::policy::METHODS.contains(&m.as_str()))
                .unwrap_or_else(|| "GET".into()),
        };
        // The kept request's own target, as it will be judged; else where
        // the user was going.
        let target = match &kept {
            Some((_, k)) => k.target.clone(),
            None => return_to.clone(),
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.clone(), None),
        };
        let path = crate::policy::normalize_path(&path)
            .map(|(m, _)| m)
            .unwrap_or_else(|_| "/".into());
        // Judged as the proxy will: a kept form that names `_method` (or
        // cannot be read) as every method the app could run it as.
        let overridable = kept.as_ref().is_some_and(|(_, k)| {
            crate::auth::binding::overrides_method(
                query.as_deref(),
                k.content_type.as_deref(),
                &k.body,
            ) != Some(false)
        });
        let m = gate.policy.judge(&req.host(), &method, &path, overridable);
        let rule = Some(m.rule_name().to_string());
        let step_up = match m.require {
            Require::StepUp(s) => Some(s.clone()),
            _ => None,
        };
        let values = match &step_up {
            Some(s) if s.is_bound() => {
                let (ct, body) = match &kept {
                    Some((_, k)) => (k.content_type.as_deref(), k.body.as_slice()),
                    None => (None, &[][..]),
                };
                binding::values(&s.bind, query.as_deref(), ct, body).ok()
            }
            _ => None,
        };
        Ok(Pending {
            return_to,
            method,
            kept,
            resend: get("resend").and_then(|c| resend_text(&c).map(|t| (c, t))),
            step_up,
            rule,
            values,
        })
    }

    /// The factors the rule accepts (PIN when it cannot tell).
    pub fn factors(&self) -> Vec<Factor> {
        match &self.step_up {
            Some(s) => offered(s),
            None => vec![Factor::Pin],
        }
    }

    /// The values a code mailed now shows and approves, with the rule.
    pub fn binding(&self) -> Option<(&Values, Option<&str>)> {
        self.values.as_ref().map(|v| (v, self.rule.as_deref()))
    }

    /// What a step-up made now approves, on a bound rule.
    pub fn txn(&self) -> Option<Txn> {
        self.values
            .as_ref()
            .map(|v| binding::txn(v).on_rule(self.rule.as_deref()))
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("return_to", self.return_to.clone())];
        match &self.kept {
            Some((id, _)) => out.push(("kept", id.clone())),
            None if self.method != "GET" => out.push(("method", self.method.clone())),
            None => {}
        }
        if let Some((code, _)) = &self.resend {
            out.push(("resend", code.clone()));
        }
        out
    }

    /// The query string that carries this along (`return_to=…&kept=…`).
    pub fn carry(&self) -> String {
        self.fields()
            .iter()
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// `path?carry`.
    pub fn link(&self, path: &str) -> String {
        format!("{path}?{}", self.carry())
    }

    /// For the templates: `carry` (links), `carried` (hidden fields beside
    /// `return_to`), `confirm` (the bound values shown), `resend`.
    pub fn context(&self) -> Value {
        let carried: Vec<Value> = self
            .fields()
            .into_iter()
            .filter(|(k, _)| *k != "return_to")
            .map(|(name, value)| context! { name, value })
            .collect();
        let confirm: Vec<Value> = self
            .values
            .as_ref()
            .map(binding::shown)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| context! { name, value })
            .collect();
        context! {
            carry => self.carry(),
            carried,
            confirm,
            resend => self.resend.as_ref().map(|(_, text)| *text),
            kept => self.kept.is_some(),
            // What will be sent, so the user sees what they confirm.
            kept_request => self.kept.as_ref().map(|(_, k)| {
                let path = k.target.split('?').next().unwrap_or("/").to_string();
                let fields: Vec<String> = if crate::auth::binding::is_form(k.content_type.as_deref()) {
                    form_urlencoded::parse(&k.body).map(|(n, _)| n.into_owned()).take(12).collect()
                } else {
                    Vec::new()
                };
                context! { method => &k.method, path, fields => fields.join(", ") }
            }),
        }
    }
}
