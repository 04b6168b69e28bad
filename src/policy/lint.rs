//! `stepgate policy lint`: rules that can never win (shadowed by an earlier
//! rule), rules that can never match (reserved paths), overlaps where a later,
//! stricter rule loses to an earlier, weaker one, and sensitive-looking paths
//! left weaker than the default. Static analysis of the compiled rules; it
//! never changes what the gateway does.

use super::glob::{has_wildcard, wildcard};
use super::matcher::segments;
use super::{Policy, Require, Rule};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: warning: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// Does every path matching pattern `b` also match pattern `a`?
fn path_covers(a: &[&str], b: &[&str]) -> bool {
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        (Some((&"**", ar)), _) => (0..=b.len()).any(|i| path_covers(ar, &b[i..])),
        (None, Some(_)) => false,
        (Some(_), None) => false,
        (Some((sa, ar)), Some((sb, br))) => {
            let seg = match (*sa, *sb) {
                (_, "**") => false,
                ("*", _) => true,
                (x, "*") => x == "*",
                (x, y) if has_wildcard(x) => {
                    if has_wildcard(y) {
                        x == y
                    } else {
                        wildcard(x.as_bytes(), y.as_bytes())
                    }
                }
                (x, y) => x == y,
            };
            seg && path_covers(ar, br)
        }
    }
}

/// Can some path match both patterns? Conservative: globs inside segments
/// that are not comparable count as overlapping.
fn path_overlaps(a: &[&str], b: &[&str]) -> bool {
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        (Some((&"**", ar)), _) => {
            path_overlaps(ar, b) || (!b.is_empty() && path_overlaps(a, &b[1..]))
        }
        (_, Some((&"**", br))) => {
            path_overlaps(a, br) || (!a.is_empty() && path_overlaps(&a[1..], b))
        }
        (None, Some(_)) | (Some(_), None) => false,
        (Some((sa, ar)), Some((sb, br))) => {
            let seg = match (*sa, *sb) {
                ("*", _) | (_, "*") => true,
                (x, y) if has_wildcard(x) && has_wildcard(y) => true,
                (x, y) if has_wildcard(x) => wildcard(x.as_bytes(), y.as_bytes()),
                (x, y) if has_wildcard(y) => wildcard(y.as_bytes(), x.as_bytes()),
                (x, y) => x == y,
            };
            seg && path_overlaps(ar, br)
        }
    }
}

fn host_covers(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(x), Some(y)) if x == y => true,
        (Some(x), Some(y)) => {
            has_wildcard(x) && !has_wildcard(y) && wildcard(x.as_bytes(), y.as_bytes())
        }
    }
}

fn host_overlaps(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => true,
        (Some(x), Some(y)) => {
            x == y
                || wildcard(x.as_bytes(), y.as_bytes())
                || wildcard(y.as_bytes(), x.as_bytes())
                || (has_wildcard(x) && has_wildcard(y))
        }
    }
}

fn methods_cover(a: &[String], b: &[String]) -> bool {
    a.is_empty() || (!b.is_empty() && b.iter().all(|m| a.contains(m)))
}

fn methods_overlap(a: &[String], b: &[String]) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|m| b.contains(m))
}

/// How much a requirement demands, to compare rules: higher is stricter.
fn strength(r: &Require) -> (u8, u64) {
    match r {
        Require::None => (0, 0),
        Require::Authenticated => (1, 0),
        // Shorter max_age is stricter.
        Require::StepUp(s) => (2, u64::MAX - s.max_age.as_secs()),
        Require::Deny => (3, 0),
    }
}

fn describe(r: &Rule) -> String {
    format!("`{}` ({}:{}:{})", r.name, r.file, r.line, r.col)
}

const SENSITIVE: &[&str] = &[
    "admin", "account", "settings", "security", "billing", "payment", "transfer", "password",
    "delete", "manage", "internal", "secret", "token", "keys",
];

/// Longest `max_age` that `lint` finds reasonable for a bound step-up.
pub const BOUND_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

pub fn lint(p: &Policy) -> Vec<Warning> {
    let mut out = encoding_warnings(p);
    let norm = |s: &str| {
        if p.case_insensitive {
            super::fold(s)
        } else {
            s.to_string()
        }
    };
    let paths: Vec<String> = p.rules.iter().map(|r| norm(&r.path)).collect();
    let segs: Vec<Vec<&str>> = paths.iter().map(|s| segments(s)).collect();
    for (j, b) in p.rules.iter().enumerate() {
        let warn = |message: String| Warning {
            file: b.file.clone(),
            line: b.line,
            col: b.col,
            message,
        };
        if segs[j].first() == Some(&".stepgate") {
            out.push(warn(format!("rule `{}` can never match: /.stepgate/ paths are answered by stepgate and never reach rules", b.name)));
            continue;
        }
        let mut shadowed = false;
        for (i, a) in p.rules[..j].iter().enumerate() {
            if host_covers(&a.host, &b.host)
                && methods_cover(&a.methods, &b.methods)
                && path_covers(&segs[i], &segs[j])
            {
                out.push(warn(format!(
                    "rule `{}` is never used: every request it matches is matched first by {}",
                    b.name,
                    describe(a)
                )));
                shadowed = true;
                break;
            }
        }
        if shadowed {
            continue;
        }
        for (i, a) in p.rules[..j].iter().enumerate() {
            // An exact-path exception placed before a broader rule (`/login`
            // before `/**`) is the intended idiom, not an accident.
            let exact_exception = !has_wildcard(&paths[i]) && path_covers(&segs[j], &segs[i]);
            if !exact_exception
                && strength(&b.require) > strength(&a.require)
                && host_overlaps(&a.host, &b.host)
                && methods_overlap(&a.methods, &b.methods)
                && path_overlaps(&segs[i], &segs[j])
            {
                out.push(warn(format!(
                    "rule `{}` (require: {}) overlaps the earlier, weaker {} (require: {}), which wins where both match; move `{}` above it if it should apply there",
                    b.name,
                    b.require.name(),
                    describe(a),
                    a.require.name(),
                    b.name
                )));
            }
        }
        if let Require::StepUp(s) = &b.require {
            if s.is_bound() && s.max_age > BOUND_MAX_AGE {
                out.push(warn(format!(
                    "rule `{}` binds {} but its step-up stays good for {}s: the same values are approved again for that long; bind is meant for `max_age: 0` (one request per confirmation) or a short max_age (at most {}s)",
                    b.name,
                    s.bind.join(", "),
                    s.max_age.as_secs(),
                    BOUND_MAX_AGE.as_secs()
                )));
            }
        }
        let lower = b.path.to_ascii_lowercase();
        if strength(&b.require) < strength(&p.default)
            && matches!(b.require, Require::None | Require::Authenticated)
        {
            if let Some(word) = SENSITIVE.iter().find(|w| lower.contains(*w)) {
                out.push(warn(format!(
                    "rule `{}` makes a sensitive-looking path (`{}`, contains \"{word}\") weaker ({}) than the default ({})",
                    b.name,
                    b.path,
                    b.require.name(),
                    p.default.name()
                )));
            }
        }
    }
    out
}

/// Rules whose paths hold characters that travel percent-encoded, or that
/// servers read in more than one way. stepgate decodes every escape before
/// matching, so the rule itself matches; what can stay ambiguous is how the
/// app reads the same bytes. `stepgate check` and `policy lint` show these.
pub fn encoding_warnings(p: &Policy) -> Vec<Warning> {
    let mut out = Vec::new();
    for r in &p.rules {
        let warn = |message: String| Warning {
            file: r.file.clone(),
            line: r.line,
            col: r.col,
            message,
        };
        let non_ascii: String = r.path.chars().filter(|c| !c.is_ascii()).collect();
        if !non_ascii.is_empty() {
            let sample = r.path.chars().find(|c| !c.is_ascii()).unwrap_or('?');
            let mut buf = [0u8; 4];
            let wire: String = sample
                .encode_utf8(&mut buf)
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect();
            out.push(warn(format!(
                "rule `{}`: path `{}` has non-ASCII characters; browsers send them as UTF-8 escapes (`{sample}` as `{wire}`), which stepgate decodes before matching, but an app that normalizes Unicode (NFC/NFD) or reads escapes as Latin-1 can serve the same page under other spellings that this rule does not cover; prefer an ASCII path or add those spellings",
                r.name, r.path
            )));
        }
        let encoded: String = r
            .path
            .chars()
            .filter(|c| {
                c.is_ascii() && !c.is_ascii_alphanumeric() && !"-._~!$&'()*,=:@/?".contains(*c)
            })
            .collect();
        if !encoded.is_empty() {
            out.push(warn(format!(
                "rule `{}`: path `{}` has `{encoded}`, which clients send percent-encoded; stepgate matches the decoded form, but an app that routes on undecoded bytes sees another path",
                r.name, r.path
            )));
        }
        if r.path.contains('+') {
            out.push(warn(format!(
                "rule `{}`: path `{}` has `+`, which some apps read as a space in paths; stepgate treats it as `+`",
                r.name, r.path
            )));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_that_need_encoding_on_the_wire_are_pointed_out() {
        let w = warnings("rules:\n  - { name: cafe, match: { path: \"/café/**\" }, require: deny }\n  - { name: plus, match: { path: \"/a+b\" }, require: deny }\n  - { name: brackets, match: { path: \"/x[1]\" }, require: deny }\n  - { name: plain, match: { path: \"/api/users:export\" }, require: deny }\n");
        assert!(
            w.iter()
                .any(|s| s.contains("rule `cafe`") && s.contains("%C3%A9")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|s| s.contains("rule `plus`") && s.contains("space")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|s| s.contains("rule `brackets`") && s.contains("`[]`")),
            "{w:?}"
        );
        assert!(!w.iter().any(|s| s.contains("rule `plain`")), "{w:?}");
    }

    fn warnings(text: &str) -> Vec<String> {
        let p = Policy::from_sources(&[("p.yaml".into(), text.into())]).unwrap();
        lint(&p).iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn shadowed_rules_are_reported_with_position() {
        let w = warnings("rules:\n  - { name: all, match: { path: \"/api/**\" }, require: authenticated }\n  - { name: users, match: { path: \"/api/users/*\" }, require: authenticated }\n");
        assert_eq!(w, vec!["p.yaml:3:5: warning: rule `users` is never used: every request it matches is matched first by `all` (p.yaml:2:5)"]);
    }

    #[test]
    fn stricter_later_overlap_is_reported_but_not_the_reverse() {
        let w = warnings("rules:\n  - { name: read, match: { path: \"/admin/**\", methods: [GET] }, require: authenticated }\n  - { name: admin, match: { path: \"/admin/**\" }, require: step_up }\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("p.yaml:3:5: warning: rule `admin` (require: step_up) overlaps the earlier, weaker `read`"), "{w:?}");
        let w = warnings("rules:\n  - { name: admin, match: { path: \"/admin/**\" }, require: step_up }\n  - { name: rest, match: { path: \"/**\" }, require: authenticated }\n");
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn method_subsets_and_hosts_decide_shadowing() {
        let w = warnings("rules:\n  - { name: a, match: { host: \"a.example.com\", path: \"/x\" }, require: none }\n  - { name: b, match: { path: \"/x\" }, require: none }\n  - { name: c, match: { path: \"/y\", methods: [GET] }, require: none }\n  - { name: d, match: { path: \"/y\", methods: [GET, POST] }, require: none }\n");
        assert!(w.is_empty(), "{w:?}");
        let w = warnings("rules:\n  - { name: a, match: { host: \"*.example.com\", path: \"/x/**\" }, require: none }\n  - { name: b, match: { host: \"a.example.com\", path: \"/x/*.pdf\", methods: [GET] }, require: none }\n");
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn reserved_and_sensitive_paths_are_reported() {
        let w = warnings("default: authenticated\nrules:\n  - { name: r, match: { path: \"/.stepgate/x\" }, require: none }\n  - { name: open-admin, match: { path: \"/admin/report\" }, require: none }\n");
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("can never match"));
        assert!(w[1]
            .starts_with("p.yaml:4:5: warning: rule `open-admin` makes a sensitive-looking path"));
    }
}
