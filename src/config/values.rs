//! Small value types shared by the config and policy files: durations such as
//! `250ms`, `5m` or `7d`, and secrets given inline, as `${ENV}` or as a file.
//! Secrets never print their content.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A duration written as a number of seconds or a string with a unit:
/// `ms`, `s`, `m`, `h`, `d` (`90s`, `5m`, `1h30m`, `250ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Dur(pub Duration);

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. 30s, 5m, 1h or 7d".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{text}` is not a duration; write e.g. 30s, 5m, 1h or 7d"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" => {
                return Err(format!(
                    "`{text}`: a number inside a duration needs a unit (ms, s, m, h, d)"
                ))
            }
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}`; use ms, s, m, h or d"
                ))
            }
        };
        total = total.saturating_add(d);
    }
    Ok(total)
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Dur(Duration::from_secs(n))),
            Raw::Text(t) => parse_duration(&t)
                .map(Dur)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Secret bytes. Debug and Display print a placeholder, never the content.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// Expand `${NAME}` references from the environment. A reference to a variable
/// that is not set is an error, never an empty string.
pub fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{text}`"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{name}}}` is not a valid environment variable name"
            ));
        }
        let value =
            std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolve an inline-or-file secret pair. `base` is the directory of the config
/// file, for relative paths. Exactly one of the two must be given.
pub fn load_secret(
    inline: Option<&str>,
    file: Option<&str>,
    base: &std::path::Path,
    what: &str,
) -> Result<Option<Secret>, String> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(format!(
            "{what}: give either `secret` or `secret_file`, not both"
        )),
        (Some(s), None) => {
            let v = expand_env(s)?;
            if v.is_empty() {
                return Err(format!("{what}: the secret is empty"));
            }
            Ok(Some(Secret::new(v.into_bytes())))
        }
        (None, Some(f)) => {
            let path = base.join(expand_env(f)?);
            let text = std::fs::read(&path)
                .map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))?;
            let trimmed = trim_trailing_newline(&text);
            if trimmed.is_empty() {
                return Err(format!("{what}: {} is empty", path.display()));
            }
            Ok(Some(Secret::new(trimmed.to_vec())))
        }
        (None, None) => Ok(None),
    }
}

fn trim_trailing_newline(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && (b[end - 1] == b'\n' || b[end - 1] == b'\r') {
        end -= 1;
    }
    &b[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units_and_compounds() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604800));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m5").is_err());
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn env_references_must_be_set() {
        std::env::set_var("STEPGATE_TEST_SECRET_X", "abc");
        assert_eq!(expand_env("k-${STEPGATE_TEST_SECRET_X}").unwrap(), "k-abc");
        assert!(expand_env("${STEPGATE_SURELY_UNSET_VAR}")
            .unwrap_err()
            .contains("not set"));
    }
}
