//! Gateway configuration: the YAML file format (serde, unknown keys refused)
//! and the validated internal model the rest of stepgate runs on. Everything
//! that can be checked at start-up is checked here, once: durations parsed,
//! secrets loaded, addresses and URLs validated. Nothing downstream re-parses
//! strings from the file.

mod build;
mod file;
pub mod model;
pub mod spans;
pub mod values;

pub use model::*;

use std::path::Path;

use crate::config::spans::{serde_diag_in, value_diag, Diagnostic, Pos, Spans};

/// Load and validate a config file. All problems are returned, each with its
/// position in the file.
pub fn load(path: &Path) -> Result<Settings, Vec<Diagnostic>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            file: name.clone(),
            pos: crate::config::spans::Pos { line: 1, col: 1 },
            message: format!("cannot read config file: {e}"),
        }]
    })?;
    from_str(path, &text)
}

pub fn from_str(path: &Path, text: &str) -> Result<Settings, Vec<Diagnostic>> {
    let name = path.display().to_string();
    let file: file::FileConfig = match serde_yaml::from_str(text) {
        Ok(f) => f,
        Err(e) => return Err(each_section_problem(&name, text, &e)),
    };
    let spans = Spans::index(&name, text);
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut b = build::Builder {
        spans: &spans,
        diags: Vec::new(),
        base: &base,
    };
    let s = b.build(file);
    if b.diags.is_empty() {
        Ok(s.expect("a config without diagnostics builds"))
    } else {
        Err(b.diags)
    }
}

/// A config that does not convert (an unknown key, a value of the wrong
/// kind): serde_yaml stops at the first problem, so every other top-level
/// section is converted on its own too and its first problem reported, and
/// one run shows a problem in each section.
fn each_section_problem(name: &str, text: &str, first: &serde_yaml::Error) -> Vec<Diagnostic> {
    let mut out = vec![serde_diag_in(name, text, first)];
    let Ok(serde_yaml::Value::Mapping(sections)) = serde_yaml::from_str(text) else {
        return out;
    };
    let spans = Spans::index(name, text);
    let keys: Vec<(String, Pos)> = sections
        .keys()
        .filter_map(|k| k.as_str())
        .map(|k| (k.to_string(), spans.pos(k)))
        .collect();
    // The section serde_yaml stopped in: the last one starting before it.
    let at = |p: Pos| (p.line, p.col);
    let reported = keys
        .iter()
        .filter(|(_, p)| at(*p) <= at(out[0].pos))
        .max_by_key(|(_, p)| at(*p))
        .map(|(k, _)| k.clone());
    for (k, v) in sections {
        let Some(key) = k.as_str().map(str::to_string) else {
            continue;
        };
        if reported.as_deref() == Some(key.as_str()) {
            continue;
        }
        let mut one = serde_yaml::Mapping::new();
        one.insert(k, v);
        if let Err(e) = serde_yaml::from_value::<file::FileConfig>(one.into()) {
            out.push(value_diag(&spans, text, &key, &e));
        }
    }
    out.sort_by_key(|d| at(d.pos));
    out
}

/// The `policy:` a config names, read from the YAML alone (for `check`,
/// to report the policy's problems beside a config that does not load).
pub fn policy_path_of(path: &Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    let p = v.get("policy")?.as_str()?;
    Some(path.parent().unwrap_or(Path::new(".")).join(p))
}

pub fn is_hmac(a: jsonwebtoken::Algorithm) -> bool {
    use jsonwebtoken::Algorithm::*;
    matches!(a, HS256 | HS384 | HS512)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn load_text(t: &str) -> Result<Settings, Vec<Diagnostic>> {
        from_str(Path::new("/tmp/gw.yaml"), t)
    }

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let s = load_text(&format!("upstream: http://127.0.0.1:9000\npolicy: p.yaml\nfirst_factor: {{ jwt: {{ secret: \"{SECRET}\" }} }}\nsigning: {{ secret: \"{SECRET}\" }}\n")).unwrap();
        assert_eq!(s.listen, vec!["127.0.0.1:8080"]);
        assert_eq!(s.lockout.max_failures, 5);
        assert_eq!(s.lockout.duration, Duration::from_secs(900));
        assert_eq!(s.lockout.ip_max_failures, 100);
        assert_eq!(s.lockout.max_duration, Duration::from_secs(86400));
        assert_eq!(s.lockout.max_consecutive, 20);
        assert_eq!(s.first_factor.cookie, "access_token");
        assert_eq!(s.store.timeout, Duration::from_millis(250));
        assert!(matches!(s.store.kind, StoreKind::Embedded { .. }));
        assert_eq!(s.upstreams.for_host("x").unwrap().addr, "127.0.0.1:9000");
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let e =
            load_text("upstream: http://127.0.0.1:9000\nlisten: \"127.0.0.1:1\"\nsigninq: {}\n")
                .unwrap_err();
        let s = e[0].to_string();
        assert!(
            s.starts_with("/tmp/gw.yaml:3:1: unknown field `signinq`"),
            "{s}"
        );
    }

    #[test]
    fn a_redis_url_that_does_not_parse_is_refused_where_it_is_written() {
        let base = format!("upstream: http://127.0.0.1:9000\npolicy: p.yaml\nfirst_factor: {{ jwt: {{ secret: \"{SECRET}\" }} }}\nsigning: {{ secret: \"{SECRET}\" }}\n");
        let e = load_text(&format!(
            "{base}store:\n  kind: redis\n  url: \"http://nope\"\n"
        ))
        .unwrap_err();
        assert!(
            e.iter().any(|d| d
                .to_string()
                .starts_with("/tmp/gw.yaml:7:8: `http://nope` is not a Redis URL")),
            "{e:?}"
        );
        let e = load_text(&format!(
            "{base}store:\n  kind: redis_cluster\n  nodes: [\"redis://10.0.0.1:7000\", \"10.0.0.2\"]\n"
        ))
        .unwrap_err();
        assert!(
            e.iter()
                .any(|d| d.to_string().contains("`10.0.0.2` is not a Redis URL")),
            "{e:?}"
        );
        let e = load_text(&format!(
            "{base}store:\n  kind: redis\n  url: \"redis://:pa#ss@h:1/x/y\"\n"
        ))
        .unwrap_err();
        let all = format!("{e:?}");
        assert!(
            all.contains("not a Redis URL") && !all.contains("pa#ss"),
            "{all}"
        );
        for url in [
            "redis://10.0.0.5:6379/0",
            "rediss://:pw@redis.internal:6380",
            "unix:///run/redis.sock",
        ] {
            load_text(&format!("{base}store:\n  kind: redis\n  url: \"{url}\"\n"))
                .unwrap_or_else(|e| panic!("{url}: {e:?}"));
        }
    }

    #[test]
    fn mixing_hmac_and_public_key_algorithms_is_refused() {
        let e = load_text(&format!("upstream: http://127.0.0.1:9000\npolicy: p.yaml\nfirst_factor:\n  jwt:\n    algorithms: [HS256, RS256]\n    secret: \"{SECRET}\"\nsigning: {{ secret: \"{SECRET}\" }}\n")).unwrap_err();
        assert!(
            e.iter()
                .any(|d| d.to_string().starts_with("/tmp/gw.yaml:5:17: do not mix")),
            "{e:?}"
        );
    }

    #[test]
    fn short_signing_secret_and_bad_addresses_are_reported_together() {
        let e = load_text("upstream: ftp://x\npolicy: p.yaml\nlisten: nowhere\nfirst_factor: { jwt: { secret: abc } }\nsigning: { secret: short }\n").unwrap_err();
        let all: Vec<String> = e.iter().map(|d| d.to_string()).collect();
        assert!(
            all.iter()
                .any(|s| s.contains(":3:9: `nowhere` is not an address")),
            "{all:?}"
        );
        assert!(
            all.iter()
                .any(|s| s.contains(":1:11: `ftp://x` must start with http://")),
            "{all:?}"
        );
        assert!(
            all.iter()
                .any(|s| s.contains("signing secret is too short")),
            "{all:?}"
        );
    }
}
