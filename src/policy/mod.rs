//! Policy: which routes need what. Loaded from one YAML file or a directory of
//! `*.yaml` files, validated with `FILE:LINE:COL` diagnostics, and compiled into
//! an index that answers "which rule applies to this request" without scanning
//! the rules. Nothing here does I/O after loading, and nothing downstream
//! re-parses policy strings.

mod compile;
pub mod glob;
pub mod lint;
pub mod matcher;
pub mod testcases;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::spans::{serde_diag_in, value_diag, Diagnostic, Spans};
use compile::{compile_rule, diag_at, parse_simple_require, policy_files};

// ---------- file format ----------

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Option<String>,
    /// Match paths without regard to case, for apps on case-insensitive
    /// servers (IIS, some Java containers) where `/ADMIN` reaches `/admin`.
    case_insensitive: Option<bool>,
    /// The app runs a POST as the method a `_method` field names (Rails,
    /// Laravel, Symfony, Spring's HiddenHttpMethodFilter): judge form POSTs
    /// as the strictest of every method `_method` could name. Default true.
    method_override: Option<bool>,
    /// Each rule is read on its own ([`RuleFile`]), so a mistake in one
    /// rule does not hide the problems of the others.
    #[serde(default)]
    rules: Vec<serde_yaml::Value>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Option<String>,
    #[serde(rename = "match")]
    matches: Option<MatchFile>,
    require: Option<String>,
    step_up: Option<StepUpFile>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct MatchFile {
    host: Option<String>,
    path: Option<String>,
    methods: Option<Vec<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct StepUpFile {
    methods: Option<Vec<String>>,
    /// Read as written and parsed when the rule is compiled, so a bad
    /// duration is one problem among the rule's others.
    max_age: Option<serde_yaml::Value>,
    /// Request fields the step-up confirms (transaction binding).
    bind: Option<Vec<String>>,
}

/// A rule that does not convert: said of its `match` or `step_up` block
/// when that is where the problem is (`rules[2].match: unknown field …`).
fn rule_diag(
    spans: &Spans,
    text: &str,
    at: &str,
    rule: &serde_yaml::Value,
    err: &serde_yaml::Error,
) -> Diagnostic {
    let part = |key: &str, e: Option<serde_yaml::Error>| e.map(|e| (format!("{at}.{key}"), e));
    let inner = rule
        .get("match")
        .and_then(|m| part("match", MatchFile::deserialize(m).err()))
        .or_else(|| {
            rule.get("step_up")
                .and_then(|m| part("step_up", StepUpFile::deserialize(m).err()))
        });
    match inner {
        Some((path, e)) => value_diag(spans, text, &path, &e),
        None => value_diag(spans, text, at, err),
    }
}

// ---------- compiled model ----------

/// A second factor a rule can accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Factor {
    Pin,
    EmailOtp,
}

impl Factor {
    pub const ALL: [Factor; 2] = [Factor::Pin, Factor::EmailOtp];

    /// The policy spelling.
    pub fn name(self) -> &'static str {
        match self {
            Factor::Pin => "pin",
            Factor::EmailOtp => "email_otp",
        }
    }

    /// The RFC 8176 `amr` value a step-up with this factor carries.
    pub fn amr(self) -> &'static str {
        match self {
            Factor::Pin => "pin",
            Factor::EmailOtp => "otp",
        }
    }

    pub fn from_amr(amr: &str) -> Option<Factor> {
        match amr {
            "pin" => Some(Factor::Pin),
            "otp" => Some(Factor::EmailOtp),
            _ => None,
        }
    }

    fn parse(s: &str) -> Option<Factor> {
        match s {
            "pin" => Some(Factor::Pin),
            "email_otp" => Some(Factor::EmailOtp),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepUp {
    pub methods: Vec<Factor>,
    /// How old a step-up may be. Zero: single use, one request per step-up.
    pub max_age: Duration,
    /// `bind`: request fields (form field, JSON top-level key or query
    /// parameter) whose values the step-up approves; a request with other
    /// values needs a new step-up. Empty: not bound.
    pub bind: Vec<String>,
}

impl StepUp {
    pub fn accepts(&self, f: Factor) -> bool {
        self.methods.contains(&f)
    }
    pub fn single_use(&self) -> bool {
        self.max_age.is_zero()
    }
    pub fn is_bound(&self) -> bool {
        !self.bind.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Require {
    None,
    Authenticated,
    StepUp(StepUp),
    Deny,
}

impl Require {
    pub fn name(&self) -> &'static str {
        match self {
            Require::None => "none",
            Require::Authenticated => "authenticated",
            Require::StepUp(_) => "step_up",
            Require::Deny => "deny",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub host: Option<String>,
    pub path: String,
    /// Upper-case method names; empty = any method.
    pub methods: Vec<String>,
    pub require: Require,
}

impl Rule {
    /// HEAD is GET without a body to every framework (Flask, Express,
    /// servlets answer it from the GET handler), so a GET rule covers it.
    fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| m == method || (method == "HEAD" && m == "GET"))
    }
}

/// The compiled, validated policy.
#[derive(Debug)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub default: Require,
    pub case_insensitive: bool,
    /// See `method_override` in the file format.
    pub method_override: bool,
    /// Where `default` was set, for messages.
    pub default_origin: Option<String>,
    pub sources: Vec<PathBuf>,
    /// Rules as written.
    index: matcher::Index,
    /// Rules in lower case, when `case_insensitive`.
    folded: Option<matcher::Index>,
    /// No rule has an upper-case letter: a lower-case path gives the same
    /// answer from both indexes.
    rules_lower: bool,
}

impl Require {
    /// How much a requirement demands, to pick the stricter of two readings
    /// of one request: deny > step-up (the shorter `max_age` first) >
    /// authenticated > none.
    fn strength(&self) -> (u8, std::cmp::Reverse<Duration>) {
        match self {
            Require::None => (0, std::cmp::Reverse(Duration::MAX)),
            Require::Authenticated => (1, std::cmp::Reverse(Duration::MAX)),
            Require::StepUp(s) => (2, std::cmp::Reverse(s.max_age)),
            Require::Deny => (3, std::cmp::Reverse(Duration::ZERO)),
        }
    }
}

/// What a request that could be run as two methods must meet: the
/// stricter rule's requirement. Two step-ups neither of which asks all the
/// other does (other factors, other bound fields) cannot both be met by one
/// step-up: such a request is refused.
fn stricter<'a>(a: Match<'a>, b: Match<'a>) -> Match<'a> {
    static INCOMPARABLE: Require = Require::Deny;
    match (a.require, b.require) {
        (Require::StepUp(x), Require::StepUp(y)) => {
            let covers = |x: &StepUp, y: &StepUp| {
                x.methods.iter().all(|f| y.methods.contains(f))
                    && x.max_age <= y.max_age
                    && y.bind.iter().all(|f| x.bind.contains(f))
            };
            match (covers(x, y), covers(y, x)) {
                (true, _) => a,
                (_, true) => b,
                _ => Match {
                    rule: a.rule,
                    require: &INCOMPARABLE,
                },
            }
        }
        _ if b.require.strength() > a.require.strength() => b,
        _ => a,
    }
}

/// The outcome of a lookup: a rule, or the policy's default.
#[derive(Clone, Copy, Debug)]
pub struct Match<'a> {
    pub rule: Option<&'a Rule>,
    pub require: &'a Require,
}

impl<'a> Match<'a> {
    /// The name upstream apps see in `X-Stepgate-Rule`.
    pub fn rule_name(&self) -> &'a str {
        self.rule.map(|r| r.name.as_str()).unwrap_or("default")
    }
}

pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

impl Policy {
    /// Load a policy file, or every `*.yaml`/`*.yml` file of a directory in
    /// name order. All problems are collected, not only the first.
    pub fn load(path: &Path) -> Result<Policy, Vec<Diagnostic>> {
        let files = policy_files(path)?;
        let mut sources = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).map_err(|e| {
                vec![diag_at(
                    &f.display().to_string(),
                    format!("cannot read policy file: {e}"),
                )]
            })?;
            sources.push((f.display().to_string(), text));
        }
        let mut p = Policy::from_sources(&sources)?;
        p.sources = files;
        Ok(p)
    }

    /// Compile from (file name, text) pairs, in order.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Policy, Vec<Diagnostic>> {
        let mut diags = Vec::new();
        let mut rules = Vec::new();
        let mut default: Option<(Require, String)> = None;
        let mut case_insensitive: Option<(bool, String)> = None;
        let mut method_override: Option<bool> = None;
        let mut names: HashMap<String, String> = HashMap::new();

        for (file, text) in sources {
            let parsed: PolicyFile = if text.trim().is_empty() {
                PolicyFile {
                    default: None,
                    case_insensitive: None,
                    method_override: None,
                    rules: Vec::new(),
                }
            } else {
                match serde_yaml::from_str(text) {
                    Ok(p) => p,
                    Err(e) => {
                        diags.push(serde_diag_in(file, text, &e));
                        continue;
                    }
                }
            };
            let spans = Spans::index(file, text);
            if let Some(d) = &parsed.default {
                let here = format!(
                    "{file}:{}:{}",
                    spans.pos("default").line,
                    spans.pos("default").col
                );
                match parse_simple_require(d) {
                    Some(r) => {
                        if let Some((_, prev)) = &default {
                            diags.push(spans.diag(
                                "default",
                                format!(
                                    "`default` is already set at {prev}; set it in one file only"
                                ),
                            ));
                        } else {
                            default = Some((r, here));
                        }
                    }
                    None => diags.push(spans.diag(
                        "default",
                        format!("`default: {d}` is not valid; use none, authenticated or deny"),
                    )),
                }
            }
            if let Some(mo) = parsed.method_override {
                if mo != method_override.unwrap_or(mo) {
                    diags.push(spans.diag(
                        "method_override",
                        "`method_override` is set differently in another policy file",
                    ));
                }
                method_override = Some(mo);
            }
            if let Some(ci) = parsed.case_insensitive {
                let pos = spans.pos("case_insensitive");
                let here = format!("{file}:{}:{}", pos.line, pos.col);
                match &case_insensitive {
                    Some((prev, at)) if *prev != ci => diags.push(spans.diag(
                        "case_insensitive",
                        format!("`case_insensitive` is set differently at {at}"),
                    )),
                    _ => case_insensitive = Some((ci, here)),
                }
            }
            for (i, value) in parsed.rules.into_iter().enumerate() {
                let at = format!("rules[{i}]");
                // Names are checked whether or not the rest of the rule
                // converts and compiles: every problem of a file in one run.
                let name = value.get("name").and_then(|n| n.as_str());
                if let Some(name) = name.filter(|n| !n.trim().is_empty()) {
                    let pos = spans.pos(&at);
                    let here = format!("{file}:{}:{}", pos.line, pos.col);
                    if let Some(prev) = names.get(name) {
                        diags.push(spans.diag(
                            &format!("{at}.name"),
                            format!(
                                "rule name `{name}` is already used at {prev}; names must be unique"
                            ),
                        ));
                    } else {
                        names.insert(name.to_string(), here);
                    }
                }
                let rf = match RuleFile::deserialize(&value) {
                    Ok(rf) => rf,
                    Err(e) => {
                        diags.push(rule_diag(&spans, text, &at, &value, &e));
                        continue;
                    }
                };
                match compile_rule(rf, &at, &spans) {
                    Ok(rule) => rules.push(rule),
                    Err(mut d) => diags.append(&mut d),
                }
            }
        }
        if !diags.is_empty() {
            // In file order, and in each file from top to bottom.
            let order = |f: &str| sources.iter().position(|(n, _)| n == f);
            diags.sort_by_key(|d| (order(&d.file), d.pos.line, d.pos.col));
            return Err(diags);
        }
        let case_insensitive = case_insensitive.map(|(c, _)| c).unwrap_or(true);
        let mut index = matcher::Index::default();
        let mut folded = case_insensitive.then(matcher::Index::default);
        for (i, r) in rules.iter().enumerate() {
            index.insert(r.host.as_deref(), &r.path, i as u32);
            if let Some(f) = &mut folded {
                f.insert(r.host.as_deref(), &fold(&r.path), i as u32);
            }
        }
        let rules_lower = rules.iter().all(|r| fold(&r.path) == r.path);
        let (default, default_origin) = match default {
            Some((r, at)) => (r, Some(at)),
            None => (Require::Authenticated, None),
        };
        Ok(Policy {
            rules,
            default,
            case_insensitive,
            method_override: method_override.unwrap_or(true),
            default_origin,
            sources: Vec::new(),
            index,
            folded,
            rules_lower,
        })
    }

    /// Which rule applies. `host` without port, any case; `path` already
    /// canonical ([`normalize_path`]); `method` upper case.
    ///
    /// With `case_insensitive` (the default) the path is read both as sent
    /// and in lower case, and the stricter answer wins: a case-insensitive
    /// router (Express, ASP.NET, IIS) serves `/ADMIN` from `/admin`, a
    /// case-sensitive one does not, and stepgate cannot know which is behind
    /// it, so neither reading can open what the other protects.
    pub fn lookup(&self, host: &str, method: &str, path: &str) -> Match<'_> {
        let host = host.to_ascii_lowercase();
        let exact = self.find(&self.index, &host, method, path);
        let Some(folded) = &self.folded else {
            return exact;
        };
        // Most paths are lower-case ASCII already: no second reading, and
        // no allocation, when the rules are too.
        if self.rules_lower
            && path
                .bytes()
                .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
        {
            return exact;
        }
        let lower = fold(path);
        if self.rules_lower && lower == path {
            return exact;
        }
        let other = self.find(folded, &host, method, &lower);
        if other.require.strength() > exact.require.strength() {
            other
        } else {
            exact
        }
    }

    /// [`Policy::lookup`] for a request an app may run as another method:
    /// with `method_override`, a form POST (`overridable`) is judged as the
    /// strictest of every method: `_method` can name any of them (Rack
    /// allows GET and HEAD, Express's `method-override` any method), so a
    /// GET-only rule is as much in reach as a DELETE-only one.
    pub fn judge(&self, host: &str, method: &str, path: &str, overridable: bool) -> Match<'_> {
        let first = self.lookup(host, method, path);
        if !(overridable && self.method_override && method == "POST") {
            return first;
        }
        METHODS
            .iter()
            .filter(|m| **m != "POST")
            .map(|m| self.lookup(host, m, path))
            .fold(first, stricter)
    }

    fn find(&self, index: &matcher::Index, host: &str, method: &str, path: &str) -> Match<'_> {
        let segs = matcher::segments(path);
        let found = index.lookup(host, &segs, &|r| {
            self.rules[r as usize].allows_method(method)
        });
        match found {
            Some(i) => {
                let rule = &self.rules[i as usize];
                Match {
                    rule: Some(rule),
                    require: &rule.require,
                }
            }
            None => Match {
                rule: None,
                require: &self.default,
            },
        }
    }

    /// The longest `max_age` any rule accepts for `factor`: how long a step-up
    /// token is worth keeping. At least one minute.
    pub fn longest_max_age(&self) -> Duration {
        self.rules
            .iter()
            .filter_map(|r| match &r.require {
                Require::StepUp(s) => Some(s.max_age),
                _ => None,
            })
            .max()
            .unwrap_or_default()
            .max(Duration::from_secs(60))
    }
}

/// Default freshness when a step_up rule gives no `max_age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// The case-insensitive reading of a path: what a router comparing without
/// case (Java's `equalsIgnoreCase`, .NET's OrdinalIgnoreCase, Python's
/// `casefold`) could take it for. Each character goes through its upper case
/// and back, so `ı` and `İ` read as `i`, `ſ` as `s`, the Kelvin sign as `k`,
/// `ß` and `ẞ` as `ss`; a combining dot left by `İ` is dropped. Folding more
/// than an app does never opens anything: the stricter reading wins.
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
            continue;
        }
        for u in c.to_uppercase() {
            for l in u.to_lowercase() {
                if l != '\u{307}' {
                    out.push(l);
                }
            }
        }
    }
    out
}

/// Why a request path was refused before matching.
pub type BadPath = crate::request::Refusal;

/// Canonicalize a request path (`/…`, no query) the way the gateway does:
/// returns `(match_path, forward_path)`. One implementation for the proxy,
/// `explain`, `policy test` and the challenge pages:
/// [`crate::request::CanonicalPath`].
pub fn normalize_path(raw: &str) -> Result<(String, String), BadPath> {
    let p = crate::request::CanonicalPath::parse(raw.as_bytes())?;
    Ok((p.matched().to_string(), p.wire().to_string()))
}

#[cfg(test)]
mod tests;

/// Whether a path's first segment reads as `name` (lower case ASCII) to
/// any server: in any case (Unicode folding, as rules match), without the
/// trailing dots and spaces Windows drops. What decides whether a path is
/// stepgate's own; runs for every request, so an ASCII segment is compared
/// without allocating.
pub fn first_segment_is(path: &str, name: &str) -> bool {
    let first = path.split('/').nth(1).unwrap_or("");
    let first = first.trim_end_matches(['.', ' ', '\u{a0}']);
    if first.is_ascii() {
        return first.eq_ignore_ascii_case(name);
    }
    fold(first) == name
}
