//! The command line, run as a real process: `check`, `serve` start-up
//! errors, `explain` and `token`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stepgate");
const FIRST_FACTOR_SECRET: &str = "test-first-factor-secret-0123456789abcdef";
const SIGNING_SECRET: &str = "test-signing-secret-0123456789abcdef0123";

const POLICY: &str = r#"default: authenticated
rules:
  - name: public
    match: { path: "/public/**" }
    require: none
  - name: admin
    match:
      host: "app.example.com"
      path: "/admin/**"
    require: step_up
    step_up:
      methods: [pin]
      max_age: 5m
  - name: internal
    match: { path: "/internal/**" }
    require: deny
"#;

/// A config directory: gateway.yaml naming policy.yaml.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(policy: &str) -> Setup {
        Setup::with_config(policy, "")
    }

    fn with_config(policy: &str, extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
        let s = Setup { dir };
        s.write_config(&format!(
            "listen: \"127.0.0.1:{port}\"\nupstream: \"http://127.0.0.1:9\"\npolicy: policy.yaml\nfirst_factor:\n  cookie: access_token\n  jwt:\n    algorithms: [HS256]\n    secret: \"{FIRST_FACTOR_SECRET}\"\nsigning:\n  secret: \"{SIGNING_SECRET}\"\nstore:\n  kind: memory\n{extra}",
            port = free_port()
        ));
        s
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.config(), text).unwrap();
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }

    fn policy(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        let mut it = args.iter();
        // Put `--config FILE` after the subcommand (and its own subcommand).
        let sub = it.next().unwrap();
        cmd.arg(sub).arg("--config").arg(self.config()).args(it);
        cmd.stdin(Stdio::null()).output().unwrap()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A diagnostic line `FILE:LINE:COL: message`.
#[derive(Debug)]
struct Diag {
    file: String,
    line: usize,
    col: usize,
    message: String,
}

/// Every line of `out` that reads as `FILE:LINE:COL: message`. The file
/// part may itself contain `:` only before the last two numeric fields.
fn diags(out: &str) -> Vec<Diag> {
    out.lines()
        .filter_map(|l| {
            let l = l.strip_prefix("stepgate: ").unwrap_or(l);
            // Split from the left on ": " after the third colon-field from the file.
            let (head, message) = l.split_once(": ")?;
            let mut parts = head.rsplitn(3, ':');
            let col = parts.next()?.parse().ok()?;
            let line = parts.next()?.parse().ok()?;
            let file = parts.next()?.to_string();
            Some(Diag {
                file,
                line,
                col,
                message: message.to_string(),
            })
        })
        .collect()
}

/// Run `check` on a policy; expect exit 1 and one diagnostic in policy.yaml.
fn check_fails(policy: &str) -> (Setup, Diag, String) {
    let s = Setup::new(policy);
    let out = s.run(&["check"]);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check should exit 1\nstdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    let ds = diags(&stderr);
    assert!(!ds.is_empty(), "no FILE:LINE:COL line in: {stderr}");
    let d = ds.into_iter().next().unwrap();
    assert_eq!(
        Path::new(&d.file),
        s.policy(),
        "diagnostic names the policy file: {stderr}"
    );
    assert!(d.line >= 1 && d.col >= 1, "{d:?}");
    assert!(!d.message.trim().is_empty(), "{d:?}");
    (s, d, stderr)
}

// ---------- check ----------

#[test]
fn check_accepts_a_valid_config() {
    let s = Setup::new(POLICY);
    let out = s.run(&["check"]);
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(stdout.contains("3 rules"), "{stdout}");
}

#[test]
fn check_warns_about_rule_paths_that_travel_encoded_and_still_passes() {
    let s = Setup::new(
        "rules:\n  - name: cafe\n    match: { path: \"/café/**\" }\n    require: deny\n",
    );
    let out = s.run(&["check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let d = diags(&stdout);
    let w = d
        .iter()
        .find(|d| d.message.starts_with("warning: rule `cafe`"))
        .unwrap_or_else(|| panic!("no warning for the non-ASCII rule: {stdout}"));
    assert_eq!((w.line, w.col), (2, 5), "{w:?}");
    assert!(w.message.contains("%C3%A9"), "{w:?}");
}

#[test]
fn check_refuses_a_short_hs256_first_factor_secret() {
    let s = Setup::new(POLICY);
    let cfg = std::fs::read_to_string(s.config()).unwrap();
    let short = cfg.replace(FIRST_FACTOR_SECRET, "12345");
    assert_ne!(short, cfg, "the setup names the first-factor secret");
    std::fs::write(s.config(), short).unwrap();
    let out = s.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("RFC 7518"), "{stderr}");
}

#[test]
fn check_accepts_a_policy_directory() {
    let s = Setup::new(POLICY);
    let pdir = s.dir.path().join("policies");
    std::fs::create_dir(&pdir).unwrap();
    std::fs::write(pdir.join("a.yaml"), POLICY).unwrap();
    std::fs::write(
        pdir.join("b.yaml"),
        "rules:\n  - name: reports\n    match: { path: \"/reports/**\" }\n    require: step_up\n    step_up: { methods: [pin, email_otp], max_age: 1h }\n",
    )
    .unwrap();
    let cfg = std::fs::read_to_string(s.config())
        .unwrap()
        .replace("policy: policy.yaml", "policy: policies");
    s.write_config(&cfg);
    let out = s.run(&["check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("4 rules"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_reports_a_yaml_syntax_error() {
    let (_s, d, _) = check_fails(
        "default: authenticated\nrules:\n  - name: a\n    match: { path: \"/a/**\"\n    require: none\n",
    );
    // The unclosed flow mapping opens on line 4; the parser notices on 4 or 5.
    assert!((4..=5).contains(&d.line), "{d:?}");
}

#[test]
fn check_reports_a_tab_indentation_error() {
    let (_s, d, _) =
        check_fails("default: authenticated\nrules:\n  - name: a\n\tmatch: { path: \"/a\" }\n");
    assert_eq!(d.line, 4, "{d:?}");
}

#[test]
fn check_reports_an_unknown_key_in_a_rule() {
    let (_s, d, _) = check_fails(
        "default: authenticated\nrules:\n  - name: a\n    match:\n      pth: \"/a/**\"\n    require: none\n",
    );
    assert_eq!((d.line, d.col), (5, 7), "{d:?}");
    assert!(d.message.contains("pth"), "{d:?}");
    // An unknown key at the rule level too.
    let (_s, d, _) = check_fails(
        "default: authenticated\nrules:\n  - name: a\n    pth: \"/a/**\"\n    require: none\n",
    );
    assert_eq!(d.line, 4, "{d:?}");
    assert!(d.message.contains("pth"), "{d:?}");
}

#[test]
fn check_reports_a_bad_duration() {
    let (_s, d, _) = check_fails(
        "default: authenticated\nrules:\n  - name: a\n    match: { path: \"/a/**\" }\n    require: step_up\n    step_up: { methods: [pin], max_age: 5 minutes }\n",
    );
    assert_eq!(d.line, 6, "{d:?}");
    assert!(d.message.contains("5 minutes"), "{d:?}");
}

/// The diagnostic for a bad `max_age` should point at `max_age`, not at the
/// first key of the `step_up` block.
#[test]
fn bad_duration_diagnostic_points_at_max_age() {
    let policy = "default: authenticated\nrules:\n  - name: a\n    match:\n      path: \"/a/**\"\n    require: step_up\n    step_up:\n      methods: [pin]\n      max_age: 5 minutes\n";
    let (_s, d, stderr) = check_fails(policy);
    assert_eq!(
        d.line, 9,
        "`max_age: 5 minutes` is on line 9; the diagnostic says line {}:\n{stderr}",
        d.line
    );
}

#[test]
fn check_reports_an_unknown_step_up_method() {
    let (_s, d, _) = check_fails(
        "default: authenticated\nrules:\n  - name: a\n    match: { path: \"/a/**\" }\n    require: step_up\n    step_up:\n      methods: [pin, sms]\n      max_age: 5m\n",
    );
    assert_eq!((d.line, d.col), (7, 22), "{d:?}");
    assert!(d.message.contains("sms"), "{d:?}");
}

#[test]
fn check_reports_a_duplicate_rule_name() {
    let (_s, d, _) = check_fails(
        "default: authenticated\nrules:\n  - name: a\n    match: { path: \"/a/**\" }\n    require: none\n  - name: a\n    match: { path: \"/b/**\" }\n    require: none\n",
    );
    assert_eq!(d.line, 6, "{d:?}");
    assert!(
        d.message.contains("`a`") || d.message.contains('a'),
        "{d:?}"
    );
    // It says where the first one is.
    assert!(d.message.contains(":3:"), "{d:?}");
}

#[test]
fn check_reports_an_unknown_config_key() {
    let s = Setup::with_config(POLICY, "bogus_key: 1\n");
    let out = s.run(&["check"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let ds = diags(&stderr);
    let d = ds
        .first()
        .unwrap_or_else(|| panic!("no diagnostic: {stderr}"));
    assert_eq!(Path::new(&d.file), s.config(), "{stderr}");
    let want_line = std::fs::read_to_string(s.config())
        .unwrap()
        .lines()
        .position(|l| l.starts_with("bogus_key"))
        .unwrap()
        + 1;
    assert_eq!((d.line, d.col), (want_line, 1), "{d:?}");
    assert!(d.message.contains("bogus_key"), "{d:?}");
}

#[test]
fn check_reports_several_problems_in_a_config_at_once() {
    let s = Setup::with_config(POLICY, "metrics:\n  listen: \"not-an-address\"\n");
    let cfg = std::fs::read_to_string(s.config())
        .unwrap()
        .replace("\"http://127.0.0.1:9\"", "\"ftp://127.0.0.1:9\"");
    s.write_config(&cfg);
    let out = s.run(&["check"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let ds = diags(&stderr);
    assert!(ds.len() >= 2, "both problems reported: {stderr}");
    assert!(ds.iter().all(|d| Path::new(&d.file) == s.config()));
}

/// A config that does not convert stops serde at its first problem; check
/// still reports one problem per section, and the policy's own problems
/// beside them, so an operator fixes them in one pass.
#[test]
fn check_reports_a_problem_in_each_config_section_and_the_policys_too() {
    let policy = "default: authenticated\nrules:\n  - name: a\n    require: step_up\n    step_up: { methods: [sms], max_age: 5x }\n";
    let s = Setup::with_config(
        policy,
        "lockout: { max_failures: many }\nbogus_key: 1\nmetrics: { listne: \"127.0.0.1:9\" }\n",
    );
    let out = s.run(&["check"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let ds = diags(&stderr);
    let cfg = std::fs::read_to_string(s.config()).unwrap();
    let line_of = |prefix: &str| cfg.lines().position(|l| l.starts_with(prefix)).unwrap() + 1;
    let in_config: Vec<(usize, &str)> = ds
        .iter()
        .filter(|d| Path::new(&d.file) == s.config())
        .map(|d| (d.line, d.message.as_str()))
        .collect();
    for (key, says) in [
        ("lockout", "expected u32"),
        ("bogus_key", "unknown field `bogus_key`"),
        ("metrics", "unknown field `listne`"),
    ] {
        assert!(
            in_config
                .iter()
                .any(|(l, m)| *l == line_of(key) && m.contains(says)),
            "{key}: {says} on line {}: {stderr}",
            line_of(key)
        );
    }
    let in_policy: Vec<&Diag> = ds
        .iter()
        .filter(|d| Path::new(&d.file) == s.policy())
        .collect();
    assert!(
        in_policy
            .iter()
            .any(|d| d.line == 5 && d.message.contains("`sms`"))
            && in_policy
                .iter()
                .any(|d| d.line == 5 && d.message.contains("`5x`")),
        "both policy problems: {stderr}"
    );
}

// ---------- serve ----------

/// Run `serve` and wait for it to exit (it must, quickly); kill it otherwise.
fn serve_exits(s: &Setup) -> (Option<i32>, String) {
    let log = s.dir.path().join("serve.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(s.config())
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let status =
        status.unwrap_or_else(|| panic!("serve kept running with a broken config:\n{out}"));
    (status.code(), out)
}

#[test]
fn serve_refuses_a_broken_policy() {
    let s = Setup::new(
        "default: authenticated\nrules:\n  - name: a\n    match: { path: \"/a/**\" }\n    require: step_up\n    step_up: { methods: [pin], max_age: 5 minutes }\n",
    );
    let (code, out) = serve_exits(&s);
    assert_ne!(code, Some(0), "{out}");
    let ds = diags(&out);
    assert!(
        ds.iter()
            .any(|d| Path::new(&d.file) == s.policy() && d.line == 6),
        "serve prints the policy problem as FILE:LINE:COL: {out}"
    );
}

#[test]
fn serve_refuses_a_broken_config() {
    let s = Setup::with_config(POLICY, "thread: 2\n");
    let (code, out) = serve_exits(&s);
    assert_ne!(code, Some(0), "{out}");
    let ds = diags(&out);
    assert!(
        ds.iter()
            .any(|d| Path::new(&d.file) == s.config() && d.message.contains("thread")),
        "{out}"
    );
}

// ---------- explain ----------

#[test]
fn explain_json_is_exactly_the_documented_shape() {
    let s = Setup::new(POLICY);
    let out = s.run(&[
        "explain",
        "GET",
        "https://app.example.com/admin/x",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim_end(),
        r#"{"rule":"admin","require":"step_up","methods":["pin"],"max_age_secs":300}"#
    );
}

#[test]
fn explain_json_says_which_rule_and_requirement() {
    let s = Setup::new(POLICY);
    let cases: &[(&str, &str, serde_json::Value)] = &[
        (
            "GET",
            "https://app.example.com/admin/x",
            serde_json::json!({"rule":"admin","require":"step_up","methods":["pin"],"max_age_secs":300}),
        ),
        (
            "get",
            "https://app.example.com/%61dmin/x",
            serde_json::json!({"rule":"admin","require":"step_up","methods":["pin"],"max_age_secs":300}),
        ),
        (
            "GET",
            "https://other.example.com/admin/x",
            serde_json::json!({"rule":null,"require":"authenticated"}),
        ),
        (
            "POST",
            "/public/form",
            serde_json::json!({"rule":"public","require":"none"}),
        ),
        (
            "GET",
            "https://app.example.com/internal/x",
            serde_json::json!({"rule":"internal","require":"deny"}),
        ),
    ];
    for (method, url, want) in cases {
        let out = s.run(&["explain", method, url, "--json"]);
        assert!(out.status.success(), "{url}: {}", text(&out.stderr));
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(&got, want, "{method} {url}");
    }
}

#[test]
fn explain_text_names_the_rule_and_where_it_is() {
    let s = Setup::new(POLICY);
    let out = s.run(&["explain", "GET", "https://app.example.com/admin/x"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("`admin`"), "{stdout}");
    // `- name: admin` is on line 6; the rule starts at column 5.
    let at = format!("{}:6:5", s.policy().display());
    assert!(stdout.contains(&at), "expected `{at}` in:\n{stdout}");
    assert!(stdout.contains("step_up"), "{stdout}");
    assert!(stdout.contains("300"), "{stdout}");

    // No rule: the default, and where it is set.
    let out = s.run(&["explain", "GET", "https://app.example.com/elsewhere"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("default"), "{stdout}");
    assert!(stdout.contains("authenticated"), "{stdout}");
    assert!(
        stdout.contains(&format!("{}:1:", s.policy().display())),
        "{stdout}"
    );
}

/// A POST an app may run as another method (`_method`) is judged as the
/// strictest of every method; explain says so when that differs.
#[test]
fn explain_says_how_a_post_that_may_override_its_method_is_judged() {
    let s = Setup::new(
        "default: authenticated\nrules:\n  - name: export\n    match: { path: \"/reports/export\", methods: [GET] }\n    require: step_up\n",
    );
    let out = s.run(&["explain", "POST", "/reports/export", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got,
        serde_json::json!({"rule": null, "require": "authenticated",
            "with_method_override": {"rule": "export", "require": "step_up"}})
    );
    let out = s.run(&["explain", "POST", "/reports/export"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("method_override") && stdout.contains("`export`"),
        "{stdout}"
    );
    // A GET is judged as itself only.
    let out = s.run(&["explain", "GET", "/reports/export", "--json"]);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(got.get("with_method_override").is_none(), "{got}");
}

#[test]
fn explain_refuses_paths_the_gateway_would_refuse() {
    let s = Setup::new(POLICY);
    for url in [
        "https://app.example.com/admin/../public/x",
        "https://app.example.com/public%2Fx",
    ] {
        let out = s.run(&["explain", "GET", url, "--json"]);
        assert_eq!(out.status.code(), Some(1), "{url}: {}", text(&out.stdout));
        assert!(text(&out.stderr).contains("400"), "{}", text(&out.stderr));
    }
    let out = s.run(&["explain", "GET", "not a url"]);
    assert_eq!(out.status.code(), Some(1));
}

// ---------- token ----------

#[test]
fn token_mints_an_hs256_jwt() {
    let s = Setup::new(POLICY);
    let out = s.run(&[
        "token",
        "--sub",
        "alice",
        "--email",
        "alice@example.com",
        "--ttl",
        "60",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout).trim().to_string();
    assert_eq!(t.split('.').count(), 3, "{t}");
    use base64::Engine;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t.split('.').nth(1).unwrap())
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 60);
}

#[test]
fn token_refuses_when_the_first_factor_uses_a_public_key() {
    let s = Setup::new(POLICY);
    let d = s.dir.path();
    let ok = Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(d.join("k.pem"))
        .status()
        .expect("openssl is installed")
        .success()
        && Command::new("openssl")
            .args(["ec", "-in"])
            .arg(d.join("k.pem"))
            .args(["-pubout", "-out"])
            .arg(d.join("pub.pem"))
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl could not make an EC key");
    s.write_config(&format!(
        "upstream: \"http://127.0.0.1:9\"\npolicy: policy.yaml\nfirst_factor:\n  jwt:\n    algorithms: [ES256]\n    public_key_file: pub.pem\nsigning:\n  secret: \"{SIGNING_SECRET}\"\nstore:\n  kind: memory\n"
    ));
    // The config itself is valid.
    let out = s.run(&["check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = s.run(&["token", "--sub", "alice"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).trim().is_empty(),
        "no token printed: {}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("public key"), "{stderr}");
}

/// `stepgate explain … | head -1` and the like: a reader that went away
/// ends the command quietly (SIGPIPE, as Unix tools do), not with Rust's
/// panic on a failed `println!` and its backtrace.
#[test]
fn a_command_whose_reader_is_gone_ends_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let s = Setup::new("default: authenticated\n");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .args(["explain", "--config"])
        .arg(s.config())
        .args(["GET", "https://app.example.com/admin/x", "--json"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    // SIGPIPE is signal 13 on Linux.
    assert_eq!(out.status.signal(), Some(13), "{:?} {err}", out.status);
}
