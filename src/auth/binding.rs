//! Transaction binding (PSD2's "dynamic linking"): a rule's `step_up.bind`
//! names request fields; the step-up approves their values, and only them.
//!
//! The values are read the way the application will read them: a query
//! parameter, a form field (`application/x-www-form-urlencoded`) or a JSON
//! body's top-level key. Whatever an application could read two ways is
//! refused rather than guessed: a field given twice, in the query and the
//! body, or also under another case of its name (apps that read names
//! case-insensitively would see it); a body of another type on a bound rule.
//!
//! The digest an approval carries (and the assertion's `txn` claim shows) is
//! `base64url(SHA-256(JSON))` of the fields sorted by name as
//! `[["amount","100"],["to","bob"]]`, a field the request does not carry as
//! `null`: an application can recompute it from the request it received.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A bound field's value as the request carries it (`None`: absent).
pub type Values = BTreeMap<String, Option<String>>;

/// Why a request's bound values cannot be read unambiguously.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindError {
    /// The field appears more than once, or under another case of its name.
    Ambiguous(String),
    /// The body is neither a form nor JSON (an upload, text…).
    Unreadable,
    /// The body is a malformed form or JSON document.
    Malformed,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::Ambiguous(n) => write!(
                f,
                "the confirmed field `{n}` appears more than once (or also in another case), so what is approved would be unclear"
            ),
            BindError::Unreadable => f.write_str(
                "this address confirms form or JSON fields; the request body is neither",
            ),
            BindError::Malformed => f.write_str("the form or JSON body is malformed"),
        }
    }
}

/// What a step-up token records of a binding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// [`digest`] of the approved values.
    pub d: String,
    /// The bound field names, sorted.
    pub f: Vec<String>,
}

/// Media type of a `Content-Type`, lower case, without parameters.
fn media_type(ct: Option<&str>) -> String {
    ct.unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

pub fn is_form(ct: Option<&str>) -> bool {
    media_type(ct) == "application/x-www-form-urlencoded"
}

pub fn is_json(ct: Option<&str>) -> bool {
    let m = media_type(ct);
    m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
}

/// Record `name = value` for a bound field, refusing a second sighting and
/// another case of a bound name.
fn note(fields: &[String], out: &mut Values, name: &str, value: String) -> Result<(), BindError> {
    for f in fields {
        if f == name {
            if out.get(f).is_some_and(|v| v.is_some()) {
                return Err(BindError::Ambiguous(f.clone()));
            }
            out.insert(f.clone(), Some(value));
            return Ok(());
        }
        if f.eq_ignore_ascii_case(name) || f.to_lowercase() == name.to_lowercase() {
            return Err(BindError::Ambiguous(f.clone()));
        }
    }
    Ok(())
}

/// The values of `fields` in a request: its query, then its body.
pub fn values(
    fields: &[String],
    query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Values, BindError> {
    let mut out: Values = fields.iter().map(|f| (f.clone(), None)).collect();
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            note(fields, &mut out, &k, v.into_owned())?;
        }
    }
    if body.is_empty() {
        return Ok(out);
    }
    if is_form(content_type) {
        if std::str::from_utf8(body).is_err() {
            return Err(BindError::Malformed);
        }
        for (k, v) in form_urlencoded::parse(body) {
            note(fields, &mut out, &k, v.into_owned())?;
        }
    } else if is_json(content_type) {
        let top: TopLevel = serde_json::from_slice(body).map_err(|e| {
            match e.to_string().strip_prefix("duplicate key ") {
                Some(rest) => {
                    BindError::Ambiguous(rest.split('`').nth(1).unwrap_or(rest).to_string())
                }
                None => BindError::Malformed,
            }
        })?;
        for (k, v) in top.0 {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            note(fields, &mut out, &k, text)?;
        }
    } else {
        return Err(BindError::Unreadable);
    }
    Ok(out)
}

/// The digest of bound values (see the module's words).
pub fn digest(values: &Values) -> String {
    let pairs: Vec<(&String, &Option<String>)> = values.iter().collect();
    let json = serde_json::to_vec(&pairs).unwrap_or_default();
    crate::util::digest::digest_b64(&json)
}

/// The token's record of a binding.
pub fn txn(values: &Values) -> Txn {
    Txn {
        d: digest(values),
        f: values.keys().cloned().collect(),
    }
}

/// Values as a client gave them (`"Binding": {"amount": "100"}`): strings
/// as they are, other JSON as its text, `null` as absent.
pub fn from_json(m: &serde_json::Map<String, Value>) -> Values {
    m.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            };
            (k.clone(), v)
        })
        .collect()
}

/// Values as JSON for an API client (`"binding"` in RFC 9470 bodies).
pub fn to_json(values: &Values) -> Value {
    Value::Object(
        values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
            .collect(),
    )
}

/// Longest value shown on a page or in a mail, in characters.
pub const SHOWN_MAX: usize = 120;

/// `amount 100, to bob`: for pages and mail (escaped by their templates),
/// each value cut at [`SHOWN_MAX`] characters.
pub fn shown(values: &Values) -> Vec<(String, String)> {
    values
        .iter()
        .map(|(k, v)| {
            let v = v.as_deref().unwrap_or("(not given)");
            let cut: String = v.chars().take(SHOWN_MAX).collect();
            let v = if cut.len() < v.len() {
                format!("{cut}…")
            } else {
                cut
            };
            (k.clone(), v)
        })
        .collect()
}

/// A JSON object's top level, refusing duplicate keys (parsers disagree on
/// which of two one keeps).
struct TopLevel(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<TopLevel, A::Error> {
                let mut out: Vec<(String, Value)> = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(de::Error::custom(format!("duplicate key `{k}`")));
                    }
                    out.push((k, v));
                }
                Ok(TopLevel(out))
            }
            // Not an object: it has no top-level keys.
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<TopLevel, A::Error> {
                while s.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(TopLevel(Vec::new()))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<TopLevel, E> {
                Ok(TopLevel(Vec::new()))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TopLevel, E> {
                Ok(TopLevel(Vec::new()))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<TopLevel, E> {
                Ok(TopLevel(Vec::new()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<TopLevel, E> {
                Ok(TopLevel(Vec::new()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<TopLevel, E> {
                Ok(TopLevel(Vec::new()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<TopLevel, E> {
                Ok(TopLevel(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
    const JSON: Option<&str> = Some("application/json; charset=utf-8");

    #[test]
    fn form_json_and_query_give_the_same_values_and_digest() {
        let fields = f(&["amount", "to"]);
        let a = values(&fields, None, FORM, b"amount=100&to=bob&note=x").unwrap();
        let b = values(&fields, None, JSON, br#"{"to":"bob","amount":100}"#).unwrap();
        let c = values(&fields, Some("to=bob&amount=100"), None, b"").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(digest(&a), digest(&b));
        let d = values(&fields, None, FORM, b"amount=101&to=bob").unwrap();
        assert_ne!(digest(&a), digest(&d));
        // The documented form of the digest, recomputable by an app.
        let json = br#"[["amount","100"],["to","bob"]]"#;
        assert_eq!(digest(&a), crate::util::digest::digest_b64(json));
    }

    #[test]
    fn anything_an_app_could_read_two_ways_is_refused() {
        let fields = f(&["amount"]);
        let amb = |q: Option<&str>, ct, body: &[u8]| values(&fields, q, ct, body);
        assert!(matches!(
            amb(None, FORM, b"amount=1&amount=2"),
            Err(BindError::Ambiguous(_))
        ));
        assert!(matches!(
            amb(Some("amount=1"), FORM, b"amount=1"),
            Err(BindError::Ambiguous(_))
        ));
        assert!(matches!(
            amb(None, FORM, b"Amount=9&amount=1"),
            Err(BindError::Ambiguous(_))
        ));
        assert!(matches!(
            amb(None, JSON, br#"{"amount":1,"amount":2}"#),
            Err(BindError::Ambiguous(n)) if n == "amount"
        ));
        assert_eq!(
            amb(None, Some("multipart/form-data; boundary=x"), b"--x--"),
            Err(BindError::Unreadable)
        );
        assert_eq!(amb(None, JSON, b"{"), Err(BindError::Malformed));
    }

    #[test]
    fn absent_fields_are_null_and_shown_values_are_capped() {
        let fields = f(&["amount", "to"]);
        let v = values(&fields, None, FORM, b"amount=5").unwrap();
        assert_eq!(v.get("to"), Some(&None));
        let long = "x".repeat(500);
        let v = values(&fields, Some(&format!("amount={long}")), None, b"").unwrap();
        let s = shown(&v);
        assert_eq!(s[0].1.chars().count(), SHOWN_MAX + 1);
        assert_eq!(s[1].1, "(not given)");
        assert_eq!(from_json(to_json(&v).as_object().unwrap()), v);
    }
}
