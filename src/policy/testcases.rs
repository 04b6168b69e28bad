//! `stepgate policy test`: policy authors' own cases, run like a test suite.
//!
//! ```yaml
//! - { method: GET, url: "https://app.example.com/admin/x", expect: { rule: admin, require: step_up } }
//! ```
//! `rule: default` expects that no rule matches. A failing case says what
//! matched instead.

use serde::Deserialize;

use super::{normalize_path, Policy, Require};
use crate::config::spans::{serde_diag_in, Diagnostic, Spans};
use crate::config::values::Dur;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    method: String,
    url: String,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    rule: Option<String>,
    require: Option<String>,
    methods: Option<Vec<String>>,
    max_age: Option<Dur>,
}

pub struct Outcome {
    /// `FILE:LINE:COL` of the case.
    pub at: String,
    pub name: String,
    /// None when it passed; else what was wrong.
    pub failure: Option<String>,
}

fn split_url(url: &str) -> Result<(String, String), String> {
    if url.starts_with('/') {
        return Ok((
            String::new(),
            url.split('?').next().unwrap_or("/").to_string(),
        ));
    }
    let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("`{url}` has no host"))?
        .to_string();
    Ok((host, uri.path().to_string()))
}

pub fn run(policy: &Policy, file: &str, text: &str) -> Result<Vec<Outcome>, Vec<Diagnostic>> {
    let cases: Vec<Case> =
        serde_yaml::from_str(text).map_err(|e| vec![serde_diag_in(file, text, &e)])?;
    let spans = Spans::index(file, text);
    let mut out = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let pos = spans.pos(&format!("[{i}]"));
        let at = format!("{file}:{}:{}", pos.line, pos.col);
        let name = format!("{} {}", c.method.to_ascii_uppercase(), c.url);
        let failure = check(policy, c).err();
        out.push(Outcome { at, name, failure });
    }
    Ok(out)
}

fn check(policy: &Policy, c: &Case) -> Result<(), String> {
    let (host, path) = split_url(&c.url)?;
    let (path, _) = normalize_path(&path)
        .map_err(|e| format!("the gateway refuses this path with 400 ({e:?}) before any rule"))?;
    let m = policy.lookup(&host, &c.method.to_ascii_uppercase(), &path);
    let got_rule = m.rule_name();
    let mut problems = Vec::new();
    if let Some(r) = &c.expect.rule {
        if r != got_rule {
            let where_ = m
                .rule
                .map(|r| format!(" ({}:{}:{})", r.file, r.line, r.col))
                .unwrap_or_default();
            problems.push(format!("expected rule `{r}`, matched `{got_rule}`{where_}"));
        }
    }
    if let Some(r) = &c.expect.require {
        if r != m.require.name() {
            problems.push(format!(
                "expected require `{r}`, got `{}` (rule `{got_rule}`)",
                m.require.name()
            ));
        }
    }
    if c.expect.methods.is_some() || c.expect.max_age.is_some() {
        match m.require {
            Require::StepUp(s) => {
                if let Some(ms) = &c.expect.methods {
                    let got: Vec<&str> = s.methods.iter().map(|f| f.name()).collect();
                    if ms.iter().map(String::as_str).collect::<Vec<_>>() != got {
                        problems.push(format!(
                            "expected step-up methods {ms:?}, got {got:?} (rule `{got_rule}`)"
                        ));
                    }
                }
                if let Some(d) = c.expect.max_age {
                    if d.0 != s.max_age {
                        problems.push(format!(
                            "expected max_age {}s, got {}s (rule `{got_rule}`)",
                            d.0.as_secs(),
                            s.max_age.as_secs()
                        ));
                    }
                }
            }
            r => problems.push(format!(
                "expected a step_up requirement, got `{}` (rule `{got_rule}`)",
                r.name()
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_and_failing_cases_say_what_matched() {
        let p = Policy::from_sources(&[("p.yaml".into(), "rules:\n  - { name: admin, match: { path: \"/admin/**\" }, require: step_up, step_up: { max_age: 5m } }\n".into())]).unwrap();
        let cases = "- { method: GET, url: \"https://a.example/admin/x\", expect: { rule: admin, require: step_up, methods: [pin], max_age: 5m } }\n- { method: GET, url: /other, expect: { rule: admin } }\n";
        let out = run(&p, "c.yaml", cases).unwrap();
        assert!(out[0].failure.is_none(), "{:?}", out[0].failure);
        assert_eq!(out[1].at, "c.yaml:2:3");
        assert_eq!(
            out[1].failure.as_deref(),
            Some("expected rule `admin`, matched `default`")
        );
    }

    #[test]
    fn unknown_keys_in_cases_are_errors() {
        let p = Policy::from_sources(&[("p.yaml".into(), "rules: []\n".into())]).unwrap();
        let e = run(
            &p,
            "c.yaml",
            "- { method: GET, url: /, expect: { rul: x } }\n",
        )
        .err()
        .unwrap();
        assert!(e[0].to_string().starts_with("c.yaml:1:"), "{}", e[0]);
    }
}
