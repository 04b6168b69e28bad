//! From a policy file's rules to compiled `Rule`s: which files make the
//! policy, each rule's checks (host, path pattern, methods, step-up) with
//! its `FILE:LINE:COL`. Never matches requests; that is `matcher`.

use super::*;

pub(super) fn diag_at(file: &str, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_string(),
        pos: crate::config::spans::Pos { line: 1, col: 1 },
        message,
    }
}

pub(super) fn policy_files(path: &Path) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| vec![diag_at(&name, format!("cannot read policy: {e}"))])?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| vec![diag_at(&name, format!("cannot list policy directory: {e}"))])?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                )
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(vec![diag_at(
            &name,
            "the policy directory has no *.yaml files".into(),
        )]);
    }
    Ok(files)
}

pub(super) fn parse_simple_require(s: &str) -> Option<Require> {
    match s {
        "none" => Some(Require::None),
        "authenticated" => Some(Require::Authenticated),
        "deny" => Some(Require::Deny),
        _ => None,
    }
}

pub(super) fn compile_rule(rf: RuleFile, at: &str, spans: &Spans) -> Result<Rule, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let pos = spans.pos(at);
    let name = match rf.name {
        Some(n) if !n.trim().is_empty() => {
            if n.chars().any(|c| c.is_control()) {
                diags.push(spans.diag(
                    &format!("{at}.name"),
                    "rule names cannot contain control characters",
                ));
            }
            if n == "default" {
                diags.push(spans.diag(
                    &format!("{at}.name"),
                    "`default` is what X-Stepgate-Rule says when no rule matched; give this rule another name",
                ));
            }
            n
        }
        _ => {
            diags.push(spans.diag(
                at,
                "every rule needs a `name` (it is sent upstream as X-Stepgate-Rule)",
            ));
            String::new()
        }
    };
    let m = rf.matches.unwrap_or(MatchFile {
        host: None,
        path: None,
        methods: None,
    });
    let host = match m.host {
        Some(h) => match validate_host(&h) {
            Ok(h) => Some(h),
            Err(e) => {
                diags.push(spans.diag(&format!("{at}.match.host"), e));
                None
            }
        },
        None => None,
    };
    let path = m.path.unwrap_or_else(|| "/**".to_string());
    if let Err(e) = validate_path_pattern(&path) {
        diags.push(spans.diag(&format!("{at}.match.path"), e));
    }
    let mut methods = Vec::new();
    if let Some(ms) = m.methods {
        if ms.is_empty() {
            diags.push(spans.diag(
                &format!("{at}.match.methods"),
                "`methods: []` matches nothing; leave it out to match every method",
            ));
        }
        for (j, meth) in ms.iter().enumerate() {
            let up = meth.to_ascii_uppercase();
            if METHODS.contains(&up.as_str()) {
                methods.push(up);
            } else {
                diags.push(spans.diag(
                    &format!("{at}.match.methods[{j}]"),
                    format!(
                        "unknown HTTP method `{meth}`; use one of {}",
                        METHODS.join(", ")
                    ),
                ));
            }
        }
    }
    let require = match rf.require.as_deref() {
        None => {
            diags.push(spans.diag(
                at,
                "every rule needs `require`: none, authenticated, step_up or deny",
            ));
            Require::Deny
        }
        Some("step_up") => Require::StepUp(step_up_settings(
            rf.step_up.unwrap_or(StepUpFile {
                methods: None,
                max_age: None,
                bind: None,
            }),
            at,
            spans,
            &mut diags,
        )),
        Some(other) => {
            if let Some(su) = rf.step_up {
                diags.push(spans.diag(
                    &format!("{at}.step_up"),
                    format!("`step_up` settings need `require: step_up` (this rule has `require: {other}`)"),
                ));
                // Their own mistakes too, so one run shows them all.
                step_up_settings(su, at, spans, &mut diags);
            }
            match parse_simple_require(other) {
                Some(r) => r,
                None => {
                    diags.push(spans.diag(
                        &format!("{at}.require"),
                        format!("`require: {other}` is not valid; use none, authenticated, step_up or deny"),
                    ));
                    Require::Deny
                }
            }
        }
    };
    if !diags.is_empty() {
        return Err(diags);
    }
    Ok(Rule {
        name,
        file: spans.file().to_string(),
        line: pos.line,
        col: pos.col,
        host,
        path,
        methods,
        require,
    })
}

/// A rule's `step_up:` block; problems go to `diags`.
fn step_up_settings(
    su: StepUpFile,
    at: &str,
    spans: &Spans,
    diags: &mut Vec<Diagnostic>,
) -> StepUp {
    let mut bind: Vec<String> = Vec::new();
    for (j, f) in su.bind.iter().flatten().enumerate() {
        let at = format!("{at}.step_up.bind[{j}]");
        if f.is_empty() || f.len() > 64 || f.chars().any(|c| c.is_control()) {
            diags.push(spans.diag(
                &at,
                format!("`{f}` is not a field name: 1 to 64 characters, no control characters"),
            ));
        } else if bind.contains(f) {
            diags.push(spans.diag(&at, format!("`{f}` is listed twice")));
        } else {
            bind.push(f.clone());
        }
    }
    if su.bind.as_ref().is_some_and(|b| b.is_empty()) {
        diags.push(spans.diag(
            &format!("{at}.step_up.bind"),
            "`step_up.bind` is empty; list the request fields the step-up confirms, or remove it",
        ));
    }
    let mut factors = Vec::new();
    match su.methods {
        None => factors.push(Factor::Pin),
        Some(list) => {
            if list.is_empty() {
                diags.push(spans.diag(
                    &format!("{at}.step_up.methods"),
                    "`step_up.methods` is empty; list at least one of pin, email_otp",
                ));
            }
            for (j, f) in list.iter().enumerate() {
                match Factor::parse(f) {
                    Some(f) if !factors.contains(&f) => factors.push(f),
                    Some(_) => {}
                    None => diags.push(spans.diag(
                        &format!("{at}.step_up.methods[{j}]"),
                        format!("unknown step-up method `{f}`; use pin or email_otp"),
                    )),
                }
            }
        }
    }
    let max_age = match su.max_age.as_ref().map(max_age) {
        None => DEFAULT_MAX_AGE,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            diags.push(spans.diag(&format!("{at}.step_up.max_age"), e));
            DEFAULT_MAX_AGE
        }
    };
    StepUp {
        methods: factors,
        max_age,
        bind,
    }
}

/// `step_up.max_age`: seconds, or a duration with units (`5m`, `1h30m`).
fn max_age(v: &serde_yaml::Value) -> Result<Duration, String> {
    match v {
        serde_yaml::Value::Number(n) => n.as_u64().map(Duration::from_secs).ok_or_else(|| {
            format!("`{n}` is not a duration; write whole seconds or e.g. 30s, 5m, 1h")
        }),
        serde_yaml::Value::String(t) => crate::config::values::parse_duration(t),
        _ => Err("`max_age` is a duration: whole seconds or e.g. 30s, 5m, 1h".into()),
    }
}

pub(super) fn validate_host(h: &str) -> Result<String, String> {
    let h = h.trim().to_ascii_lowercase();
    if h.is_empty() {
        return Err("`host` is empty; leave it out to match every host".into());
    }
    if h.contains(':') && !h.starts_with('[') {
        return Err(format!(
            "`host: {h}` must not carry a port; hosts are matched without the port"
        ));
    }
    if !h.chars().all(|c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | '?' | '_' | '[' | ']' | ':')
    }) {
        return Err(format!(
            "`host: {h}` has characters a host name cannot have"
        ));
    }
    Ok(h)
}

pub(super) fn validate_path_pattern(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("path pattern `{p}` must start with `/`"));
    }
    if p.contains(['?', '#']) && p.contains('#') {
        return Err(format!("path pattern `{p}` must not contain `#`"));
    }
    if p.contains(';') || p.contains('%') || p.contains('\\') {
        return Err(format!(
            "path pattern `{p}` must not contain `;`, `%` or `\\`: requests are matched after decoding and normalization"
        ));
    }
    if p.contains("//") {
        return Err(format!("path pattern `{p}` has an empty segment (`//`)"));
    }
    for seg in matcher::segments(p) {
        if seg.contains("**") && seg != "**" {
            return Err(format!(
                "in `{p}`, `**` must be a whole segment (`/a/**/b`), not part of `{seg}`"
            ));
        }
        if seg == "." || seg == ".." {
            return Err(format!(
                "path pattern `{p}` must not contain `.` or `..` segments"
            ));
        }
        if seg.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!(
                "path pattern `{p}` contains spaces or control characters"
            ));
        }
    }
    Ok(())
}
