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
    /// The rule it was approved on, when the step-up page knew it: the
    /// approval then opens that rule only (another operation with the same
    /// fields needs its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<String>,
}

impl Txn {
    /// This approval, for rule `rule` only.
    pub fn on_rule(mut self, rule: Option<&str>) -> Txn {
        self.r = rule.map(str::to_string);
        self
    }
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

/// The names an app may read a parameter `k` as, lower case: as sent;
/// PHP's (leading whitespace dropped, `.` and ` ` and an unmatched `[` read
/// as `_`); and an array's base (`amount[]`, `amount[x]`, qs and PHP).
fn readings(k: &str) -> Vec<String> {
    let k = k.trim_start().to_lowercase();
    let php = |s: &str| -> String {
        let mut out = String::with_capacity(s.len());
        let mut bracket_done = false;
        for (i, c) in s.char_indices() {
            match c {
                '.' | ' ' => out.push('_'),
                '[' if !bracket_done && !s[i..].contains(']') => {
                    bracket_done = true;
                    out.push('_')
                }
                c => out.push(c),
            }
        }
        out
    };
    let mut out = vec![k.clone(), php(&k)];
    if let Some(i) = k.find('[') {
        out.push(k[..i].to_string());
        out.push(php(&k[..i]));
    }
    out
}

/// Whether an app may read the parameter `k` as `field` (any case, PHP's
/// name mangling, array syntax).
fn same_name(k: &str, field: &str) -> bool {
    let f = field.to_lowercase();
    readings(k).contains(&f)
}

/// Record `name = value` for a bound field, refusing a second sighting and
/// any other spelling an app may read as a bound name.
fn note(fields: &[String], out: &mut Values, name: &str, value: String) -> Result<(), BindError> {
    for f in fields {
        if f == name {
            if out.get(f).is_some_and(|v| v.is_some()) {
                return Err(BindError::Ambiguous(f.clone()));
            }
            out.insert(f.clone(), Some(value));
            return Ok(());
        }
        if same_name(name, f) {
            return Err(BindError::Ambiguous(f.clone()));
        }
    }
    Ok(())
}

/// Whether a request names a method override (`_method`) in its query or
/// its form or JSON body, under any spelling an app reads as it. `None`: the
/// body cannot be read (another type), so it cannot be told.
pub fn overrides_method(
    query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Option<bool> {
    let field = ["_method".to_string()];
    if let Some(q) = query {
        match values(&field, Some(q), None, b"") {
            Ok(v) if v.values().any(Option::is_some) => return Some(true),
            Ok(_) => {}
            Err(_) => return Some(true),
        }
    }
    if body.is_empty() {
        return Some(false);
    }
    if !is_form(content_type) && !is_json(content_type) {
        return None;
    }
    match values(&field, None, content_type, body) {
        Ok(v) => Some(v.values().any(Option::is_some)),
        // Named twice or in two spellings: it is there.
        Err(BindError::Ambiguous(_)) => Some(true),
        Err(_) => None,
    }
}

/// `a=1&b=2` strictly: escapes must decode to UTF-8 (a lossy decoding would
/// let two byte strings share one approval).
fn pairs(text: &[u8]) -> Result<Vec<(String, String)>, BindError> {
    let text = std::str::from_utf8(text).map_err(|_| BindError::Malformed)?;
    let decode = |s: &str| -> Result<String, BindError> {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| BindError::Malformed)
    };
    let mut out = Vec::new();
    for piece in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

/// Rack 2 (Rails up to 7.0, Sinatra) also splits on `;`: a bound name in a
/// `;`-joined piece would be read by such an app and not by the rest.
fn semicolon_names(fields: &[String], text: &[u8]) -> Result<(), BindError> {
    let text = String::from_utf8_lossy(text);
    for piece in text.split('&') {
        for sub in piece.split(';').skip(1) {
            let k = sub.split('=').next().unwrap_or("");
            let k = k.replace('+', " ");
            let k = percent_encoding::percent_decode_str(&k).decode_utf8_lossy();
            if let Some(f) = fields.iter().find(|f| same_name(&k, f)) {
                return Err(BindError::Ambiguous(f.clone()));
            }
        }
    }
    Ok(())
}

/// A parameter list (a query or a form body), for the bound fields.
fn note_all(fields: &[String], out: &mut Values, text: &[u8]) -> Result<(), BindError> {
    semicolon_names(fields, text)?;
    for (k, v) in pairs(text)? {
        note(fields, out, &k, v)?;
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
        note_all(fields, &mut out, q.as_bytes())?;
    }
    if body.is_empty() {
        return Ok(out);
    }
    if is_form(content_type) {
        note_all(fields, &mut out, body)?;
    } else if is_json(content_type) {
        let top: TopLevel = serde_json::from_slice(body).map_err(|e| {
            match e.to_string().strip_prefix("duplicate key ") {
                Some(rest) => {
                    BindError::Ambiguous(rest.split('`').nth(1).unwrap_or(rest).to_string())
                }
                None => BindError::Malformed,
            }
        })?;
        for (k, raw) in top.0 {
            // A string's value; anything else as its exact text (a number
            // too large for a float stays itself).
            let raw = raw.get().trim();
            let text = match raw.starts_with('"') {
                true => serde_json::from_str::<String>(raw).map_err(|_| BindError::Malformed)?,
                false => raw.to_string(),
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
        r: None,
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
/// which of two one keeps); values kept as their text.
struct TopLevel(Vec<(String, Box<serde_json::value::RawValue>)>);

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<TopLevel, A::Error> {
                let mut out: Vec<(String, Box<serde_json::value::RawValue>)> = Vec::new();
                while let Some((k, v)) =
                    m.next_entry::<String, Box<serde_json::value::RawValue>>()?
                {
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
    fn spellings_other_apps_read_as_a_bound_name_are_refused() {
        let fields = f(&["amount", "to_account"]);
        let v = |body: &[u8]| values(&fields, None, FORM, body);
        for body in [
            &b"amount=100&to_account=bob&+amount=9"[..],
            b"amount=100&to_account=bob&%20amount=9",
            b"amount=100&to_account=bob&to.account=mallory",
            b"amount=100&to_account=bob&to+account=mallory",
            b"amount=100&to_account=bob&to[account=mallory",
            b"amount=100&to_account=bob&amount[]=9",
            b"amount=100&to_account=bob&amount[x]=9",
            b"amount[0]=9&amount=100&to_account=bob",
            b"amount=100&x=1;amount=9&to_account=bob",
        ] {
            assert!(
                matches!(v(body), Err(BindError::Ambiguous(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let q = values(
            &fields,
            Some("amount=100&to_account=bob&x=1;amount=999"),
            None,
            b"",
        );
        assert!(matches!(q, Err(BindError::Ambiguous(_))));
        // Bytes that are not UTF-8 are not one lossy value.
        assert_eq!(
            v(b"amount=100&to_account=bob%FE"),
            Err(BindError::Malformed)
        );
        // Numbers stay their text.
        let j = values(
            &fields,
            None,
            JSON,
            br#"{"amount":100000000000000000001,"to_account":"b"}"#,
        )
        .unwrap();
        assert_eq!(j["amount"].as_deref(), Some("100000000000000000001"));
        // Unrelated names are fine.
        assert!(v(b"amount=100&to_account=bob&memo=x.y&note[1]=z").is_ok());
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
