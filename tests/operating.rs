//! Operating stepgate: hot reload (file change and SIGHUP) under load, broken
//! reloads refused with `FILE:LINE:COL` and counted, restart-only settings,
//! `policy lint` and `policy test`, TLS (h2 and h1, `__Host-` step-up cookie,
//! certificate swap on SIGHUP), per-host upstreams, graceful binary upgrade
//! under load, the access log and request ids, readiness.
//!
//! Everything runs against the real `stepgate serve` binary and the real demo
//! upstream over loopback sockets.

mod common;
use common::metrics::{metric, metrics_config};
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};

const PIN: &str = "2580";
const WRONG_PIN: &str = "1397";

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/// The default test policy plus a `/toggle/**` rule open to everyone, which
/// the reload tests flip to `deny`.
fn toggle_policy(require: &str) -> String {
    format!(
        "{DEFAULT_POLICY}  - name: toggle\n    match: {{ path: \"/toggle/**\" }}\n    require: {require}\n"
    )
}

fn opts(policy: &str, extra_config: &str) -> GatewayOptions {
    GatewayOptions {
        policy: policy.to_string(),
        extra_config: extra_config.to_string(),
        ..Default::default()
    }
}

fn policy_path(g: &Gateway) -> PathBuf {
    g.dir.path().join("policy.yaml")
}

/// Replace a file atomically (write a sibling, rename over), the way careful
/// editors and config-management tools do, so the watcher never sees half a
/// file.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Replace a file's content but keep its modification time, so the 500 ms
/// poll cannot see the change and only a SIGHUP can apply it.
fn replace_file_keeping_mtime(path: &Path, text: &str) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&tmp, path).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().modified().unwrap(), mtime);
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

fn pid(g: &Gateway) -> u32 {
    g.proc.as_ref().unwrap().child.id()
}

/// Poll `f` every 20 ms until it holds; how long it took, or None after `within`.
fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(c: &Client, url: &str) -> u16 {
    c.get(url).send().map(|r| r.status().as_u16()).unwrap_or(0)
}

/// The gateway's JSON log lines.
fn log_json(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

fn access_lines(text: &str, request_id: &str) -> Vec<serde_json::Value> {
    log_json(text)
        .into_iter()
        .filter(|v| v["target"] == "access" && v["request_id"] == request_id)
        .collect()
}

/// A load of concurrent GETs: `threads` threads, each with its own client,
/// looping until stopped, at most `max_per_thread` requests or `max_time`.
/// With `keep_alive` a thread reuses its connection; without, every request
/// opens a new one.
struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<LoadReport>>,
}

struct LoadReport {
    ok: usize,
    /// When and how each failed request failed.
    failed: Vec<(Instant, String)>,
}

impl LoadReport {
    fn describe(&self, since: Instant) -> Vec<String> {
        self.failed
            .iter()
            .take(10)
            .map(|(t, e)| {
                let at = t.saturating_duration_since(since).as_secs_f64()
                    - since.saturating_duration_since(*t).as_secs_f64();
                format!("{at:+.3}s: {e}")
            })
            .collect()
    }
}

impl Load {
    fn start(
        url: String,
        threads: usize,
        keep_alive: bool,
        max_per_thread: usize,
        max_time: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|_| {
                let (stop, url) = (stop.clone(), url.clone());
                std::thread::spawn(move || {
                    let b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10));
                    let b = if keep_alive {
                        b
                    } else {
                        b.pool_max_idle_per_host(0)
                    };
                    let c = b.build().unwrap();
                    let start = Instant::now();
                    let (mut ok, mut failed) = (0, Vec::new());
                    for _ in 0..max_per_thread {
                        if stop.load(Ordering::Relaxed) || start.elapsed() > max_time {
                            break;
                        }
                        match c.get(&url).send() {
                            Ok(r) if r.status().is_success() => {
                                // Read the body: the request is complete only then.
                                match r.bytes() {
                                    Ok(_) => ok += 1,
                                    Err(e) => failed.push((Instant::now(), format!("body: {e:?}"))),
                                }
                            }
                            Ok(r) => {
                                failed.push((Instant::now(), format!("status {}", r.status())))
                            }
                            Err(e) => failed.push((Instant::now(), format!("error: {e:?}"))),
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    LoadReport { ok, failed }
                })
            })
            .collect();
        Load { stop, handles }
    }

    fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport {
            ok: 0,
            failed: Vec::new(),
        };
        for h in self.handles {
            let r = h.join().unwrap();
            report.ok += r.ok;
            report.failed.extend(r.failed);
        }
        report
    }
}

/// A minimal gateway config written by hand (the harness only knows a single
/// upstream). `upstream` is the YAML value of `upstream:` (may span lines).
fn write_config(dir: &Path, port: u16, upstream: &str, policy: &str, extra: &str) -> PathBuf {
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
    let config = dir.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{port}\"\nthreads: 2\nupstream: {upstream}\npolicy: policy.yaml\nfirst_factor:\n  cookie: access_token\n  jwt:\n    algorithms: [HS256]\n    secret: \"{FIRST_FACTOR_SECRET}\"\nsigning:\n  secret: \"{SIGNING_SECRET}\"\nstore:\n  kind: memory\nlog:\n  format: json\n{extra}"
        ),
    )
    .unwrap();
    config
}

fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// PIN helpers that work against any base URL (http or https).

fn form_csrf(c: &Client, url: &str, at: &str) -> String {
    let r = c
        .get(url)
        .header("Cookie", format!("access_token={at}"))
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "form at {url}");
    csrf_of(&r.text().unwrap())
}

fn enroll(c: &Client, base: &str, at: &str) {
    let csrf = form_csrf(
        c,
        &format!("{base}/.stepgate/pin/setup?return_to=/admin/x"),
        at,
    );
    let r = c
        .post(format!("{base}/.stepgate/pin/setup"))
        .header("Cookie", format!("access_token={at}"))
        .header("Accept", "text/html")
        .form(&[
            ("pin", PIN),
            ("pin_confirm", PIN),
            ("csrf", &csrf),
            ("return_to", "/admin/x"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "enrollment succeeds");
}

fn post_pin(c: &Client, base: &str, at: &str, pin: &str) -> Response {
    let csrf = form_csrf(c, &format!("{base}/.stepgate/pin?return_to=/admin/x"), at);
    c.post(format!("{base}/.stepgate/pin"))
        .header("Cookie", format!("access_token={at}"))
        .header("Accept", "text/html")
        .form(&[("pin", pin), ("csrf", &csrf), ("return_to", "/admin/x")])
        .send()
        .unwrap()
}

// ---------------------------------------------------------------------------
// 1. Hot reload under load
// ---------------------------------------------------------------------------

#[test]
fn policy_change_on_disk_and_sighup_apply_without_failing_a_request_under_load() {
    let g = Gateway::start_with(opts(&toggle_policy("none"), ""));
    let c = client();
    assert_eq!(status(&c, &g.url("/toggle/x")), 200);

    let load = Load::start(g.url("/public/x"), 4, true, 3000, Duration::from_secs(30));
    let load_started = Instant::now();
    std::thread::sleep(Duration::from_millis(300));

    // (a) A change on disk, noticed by the poll.
    replace_file(&policy_path(&g), &toggle_policy("deny"));
    let by_file = wait_until(Duration::from_secs(20), || {
        status(&c, &g.url("/toggle/x")) == 403
    })
    .expect("the policy change on disk applies");

    // (b) A change the poll cannot see (same mtime); only SIGHUP applies it.
    replace_file_keeping_mtime(&policy_path(&g), &toggle_policy("none"));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        status(&c, &g.url("/toggle/x")),
        403,
        "without SIGHUP the unchanged mtime keeps the running policy"
    );
    let hup = Instant::now();
    signal(pid(&g), "HUP");
    let by_hup = wait_until(Duration::from_secs(20), || {
        status(&c, &g.url("/toggle/x")) == 200
    })
    .map(|_| hup.elapsed())
    .expect("SIGHUP applies the change");
    std::thread::sleep(Duration::from_millis(300));
    let report = load.finish();

    eprintln!(
        "reload by file change: {by_file:?}; by SIGHUP: {by_hup:?}; load: {} ok, {} failed",
        report.ok,
        report.failed.len()
    );
    assert!(report.ok > 0);
    assert!(
        report.failed.is_empty(),
        "failed requests during reload (time since the load started): {:?}",
        report.describe(load_started)
    );
    let log = g.log();
    let reloads: Vec<_> = log_json(&log)
        .into_iter()
        .filter(|v| v["message"] == "configuration reloaded")
        .collect();
    assert!(
        reloads.iter().any(|v| v["trigger"] == "file change"),
        "{log}"
    );
    assert!(reloads.iter().any(|v| v["trigger"] == "SIGHUP"), "{log}");
}

// ---------------------------------------------------------------------------
// 2. Broken reloads are refused, logged with a position, counted
// ---------------------------------------------------------------------------

/// Line 20 col 5 of this file is `requir:` (DEFAULT_POLICY starts with a
/// newline and ends at line 17).
fn policy_with_unknown_key() -> String {
    format!("{DEFAULT_POLICY}  - name: toggle\n    match: {{ path: \"/toggle/**\" }}\n    requir: deny\n")
}

/// A flow mapping left open on line 19; the parser notices at line 20 col 5.
fn policy_with_syntax_error() -> String {
    format!(
        "{DEFAULT_POLICY}  - name: toggle\n    match: {{ path: \"/toggle/**\"\n    require: deny\n"
    )
}

#[test]
fn broken_policy_is_refused_logged_with_position_and_counted_then_a_fix_applies() {
    let (metrics, mport) = metrics_config();
    let g = Gateway::start_with(opts(&toggle_policy("none"), &metrics));
    wait_for_port(mport, Duration::from_secs(10));
    let c = client();
    let errors = r#"stepgate_reloads_total{result="error"}"#;
    let oks = r#"stepgate_reloads_total{result="ok"}"#;
    let refused = |g: &Gateway| {
        log_json(&g.log())
            .into_iter()
            .filter(|v| v["level"] == "ERROR" && v["problem"].is_string())
            .map(|v| v["problem"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let file = policy_path(&g).display().to_string();

    for (what, text, expect_pos) in [
        ("syntax error", policy_with_syntax_error(), "20:5"),
        ("unknown key", policy_with_unknown_key(), "20:5"),
    ] {
        let before = metric(mport, errors);
        let seen = refused(&g).len();
        replace_file(&policy_path(&g), &text);
        wait_until(Duration::from_secs(20), || refused(&g).len() > seen)
            .unwrap_or_else(|| panic!("{what}: the refused reload is logged\n{}", g.log()));
        let problems = refused(&g)[seen..].to_vec();
        eprintln!("{what}: {problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&format!("{file}:")) && p.contains("policy.yaml:")),
            "{what}: problem names the file: {problems:?}"
        );
        if what == "unknown key" {
            assert!(
                problems[0].contains("unknown field `requir`"),
                "{problems:?}"
            );
        }
        // FILE:LINE:COL: message
        let p = &problems[0];
        assert!(
            p.starts_with(&format!("{file}:{expect_pos}: ")),
            "{what}: position {expect_pos}: {p}"
        );
        assert!(
            wait_until(Duration::from_secs(2), || metric(mport, errors)
                >= before + 1.0)
            .is_some(),
            "{what}: stepgate_reloads_total{{result=\"error\"}} went from {before} to {}",
            metric(mport, errors)
        );
        // The old policy keeps answering.
        assert_eq!(status(&c, &g.url("/toggle/x")), 200, "{what}");
        assert_eq!(status(&c, &g.url("/public/x")), 200, "{what}");
        assert_eq!(status(&c, &g.url("/internal/x")), 403, "{what}");
    }

    let ok_before = metric(mport, oks);
    replace_file(&policy_path(&g), &toggle_policy("deny"));
    let t = wait_until(Duration::from_secs(20), || {
        status(&c, &g.url("/toggle/x")) == 403
    })
    .expect("the fixed policy applies");
    eprintln!("fixed policy applied after {t:?}");
    // Counted right after the swap: the new policy may answer a moment first.
    assert!(
        wait_until(Duration::from_secs(5), || metric(mport, oks)
            >= ok_before + 1.0)
        .is_some(),
        "stepgate_reloads_total{{result=\"ok\"}} went from {ok_before} to {}",
        metric(mport, oks)
    );
}

// ---------------------------------------------------------------------------
// 3. Restart-only settings
// ---------------------------------------------------------------------------

#[test]
fn restart_only_setting_is_reported_while_live_settings_of_the_same_reload_apply() {
    let g = Gateway::start_with(opts(
        &toggle_policy("none"),
        "lockout:\n  ip_max_failures: 100\n",
    ));
    let c = client();
    std::fs::write(g.dir.path().join("policy2.yaml"), toggle_policy("deny")).unwrap();
    let text = std::fs::read_to_string(&g.config).unwrap();
    assert!(text.contains("threads: 2\n") && text.contains("policy: policy.yaml\n"));
    let changed = text
        .replace("threads: 2\n", "threads: 3\n")
        .replace("policy: policy.yaml\n", "policy: policy2.yaml\n")
        .replace(
            "lockout:\n  ip_max_failures: 100\n",
            "lockout:\n  ip_max_failures: 100\n  max_failures: 2\n",
        );
    replace_file(&g.config, &changed);

    // Live: the policy file named by the new config applies.
    let t = wait_until(Duration::from_secs(20), || {
        status(&c, &g.url("/toggle/x")) == 403
    })
    .expect("the new policy path applies");
    eprintln!("config reload applied after {t:?}");
    // Restart-only: `threads` is reported, nothing else is. Logged right
    // after the swap, so the new policy may answer a moment before it.
    let restart_lines = |log: &str| -> Vec<String> {
        log_json(log)
            .into_iter()
            .filter(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("needs a restart"))
            })
            .map(|v| v["setting"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let _ = wait_until(Duration::from_secs(5), || {
        !restart_lines(&g.log()).is_empty()
    });
    let log = g.log();
    assert_eq!(restart_lines(&log), vec!["threads".to_string()], "{log}");
    // Live: the new lockout limit (2 instead of the default 5) applies.
    let at = g.token("alice", &[]);
    let base = g.url("");
    enroll(&c, &base, &at);
    assert_eq!(post_pin(&c, &base, &at, WRONG_PIN).status(), 401);
    assert_eq!(
        post_pin(&c, &base, &at, WRONG_PIN).status(),
        429,
        "the second wrong PIN locks with max_failures: 2"
    );
}

// ---------------------------------------------------------------------------
// 4. policy lint
// ---------------------------------------------------------------------------

const LINT_POLICY: &str = r#"default: authenticated
rules:
  - name: api
    match: { path: "/api/**" }
    require: authenticated
  - name: api-users
    match: { path: "/api/users/*" }
    require: authenticated
  - name: reserved
    match: { path: "/.stepgate/x" }
    require: none
  - name: reports-read
    match: { path: "/reports/**", methods: [GET] }
    require: authenticated
  - name: reports
    match: { path: "/reports/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: open-admin
    match: { path: "/admin/report" }
    require: none
"#;

#[test]
fn policy_lint_prints_file_line_col_warnings_and_deny_warnings_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        free_port(),
        "\"http://127.0.0.1:9\"",
        LINT_POLICY,
        "",
    );
    let cfg = config.to_str().unwrap();
    let f = dir.path().join("policy.yaml").display().to_string();
    let expected = vec![
        format!("{f}:6:5: warning: rule `api-users` is never used: every request it matches is matched first by `api` ({f}:3:5)"),
        format!("{f}:9:5: warning: rule `reserved` can never match: /.stepgate/ paths are answered by stepgate and never reach rules"),
        format!("{f}:15:5: warning: rule `reports` (require: step_up) overlaps the earlier, weaker `reports-read` ({f}:12:5) (require: authenticated), which wins where both match; move `reports` above it if it should apply there"),
        format!("{f}:19:5: warning: rule `open-admin` makes a sensitive-looking path (`/admin/report`, contains \"admin\") weaker (none) than the default (authenticated)"),
    ];

    let (code, out, err) = run_cli(&["policy", "lint", "--config", cfg]);
    assert_eq!(code, 0, "warnings alone do not fail: {err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), expected, "{out}");
    let (code, out2, _) = run_cli(&["policy", "lint", "--config", cfg, "--deny-warnings"]);
    assert_eq!(code, 1, "--deny-warnings fails on warnings");
    assert_eq!(out2, out);

    // A clean policy: no warning, exit 0 even with --deny-warnings.
    std::fs::write(dir.path().join("policy.yaml"), DEFAULT_POLICY).unwrap();
    let (code, out, err) = run_cli(&["policy", "lint", "--config", cfg, "--deny-warnings"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("warning"), "{out}");
    assert!(out.trim().is_empty(), "{out}");
}

// ---------------------------------------------------------------------------
// 5. policy test
// ---------------------------------------------------------------------------

#[test]
fn policy_test_reports_failing_cases_with_what_matched_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        free_port(),
        "\"http://127.0.0.1:9\"",
        DEFAULT_POLICY,
        "",
    );
    let cfg = config.to_str().unwrap();
    let f = dir.path().join("policy.yaml").display().to_string();
    let passing = "- { method: GET, url: \"https://app.example.com/admin/x\", expect: { rule: admin, require: step_up, methods: [pin], max_age: 5m } }\n\
- { method: POST, url: /admin/delete, expect: { rule: admin-delete, require: step_up, max_age: 0s } }\n\
- { method: GET, url: /public/a, expect: { rule: public, require: none } }\n\
- { method: GET, url: /elsewhere, expect: { rule: default, require: authenticated } }\n";
    let failing = "- { method: GET, url: /admin/delete, expect: { rule: admin-delete } }\n\
- { method: GET, url: /internal/x, expect: { require: authenticated } }\n";
    let cases = dir.path().join("cases.yaml");
    std::fs::write(&cases, format!("{passing}{failing}")).unwrap();
    let c = cases.display().to_string();

    let (code, out, err) = run_cli(&["policy", "test", "--config", cfg, &c]);
    assert_eq!(code, 1, "a failing case fails the run: {out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "ok    GET https://app.example.com/admin/x".to_string(),
            "ok    POST /admin/delete".to_string(),
            "ok    GET /public/a".to_string(),
            "ok    GET /elsewhere".to_string(),
            "FAIL  GET /admin/delete".to_string(),
            format!("      {c}:5:3: expected rule `admin-delete`, matched `admin` ({f}:11:5)"),
            "FAIL  GET /internal/x".to_string(),
            format!(
                "      {c}:6:3: expected require `authenticated`, got `deny` (rule `internal`)"
            ),
            "policy test: 4 passed, 2 failed".to_string(),
        ],
        "{out}"
    );

    std::fs::write(&cases, passing).unwrap();
    let (code, out, err) = run_cli(&["policy", "test", "--config", cfg, &c]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("policy test: 4 passed, 0 failed\n"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

// ---------------------------------------------------------------------------
// 6. TLS
// ---------------------------------------------------------------------------

fn make_cert(dir: &Path, cn: &str, cert: &str, key: &str) {
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", &format!("/CN={cn}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join(key))
        .arg("-out")
        .arg(dir.join(cert))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A gateway terminating TLS with a fresh self-signed certificate for
/// 127.0.0.1 (CN `first.test`), kept in `certs`.
fn tls_gateway(certs: &Path) -> Gateway {
    make_cert(certs, "first.test", "cert.pem", "key.pem");
    Gateway::start_with(opts(
        DEFAULT_POLICY,
        &format!(
            "tls:\n  cert: \"{}\"\n  key: \"{}\"\n",
            certs.join("cert.pem").display(),
            certs.join("key.pem").display()
        ),
    ))
}

fn tls_client(http1_only: bool) -> Client {
    let b = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    let b = if http1_only { b.http1_only() } else { b };
    b.build().unwrap()
}

fn https(g: &Gateway, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", g.port)
}

#[test]
fn tls_listener_speaks_http2_and_http1() {
    let certs = tempfile::tempdir().unwrap();
    let g = tls_gateway(certs.path());
    for (h1, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let r = tls_client(h1).get(https(&g, "/public/x")).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), version);
        let echo: serde_json::Value = r.json().unwrap();
        assert_eq!(echo["path"], "/public/x");
        assert_eq!(echoed(&echo, "x-forwarded-proto").as_deref(), Some("https"));
    }
    // Plain HTTP on the TLS port is not served.
    if let Ok(r) = client().get(g.url("/public/x")).send() {
        assert!(!r.status().is_success(), "plain HTTP on the TLS port");
    }
}

#[test]
fn pin_step_up_over_tls_sets_a_secure_host_prefixed_cookie_that_opens_the_route() {
    let certs = tempfile::tempdir().unwrap();
    let g = tls_gateway(certs.path());
    let c = tls_client(false);
    let base = https(&g, "");
    let at = g.token("alice", &[]);
    enroll(&c, &base, &at);
    let r = post_pin(&c, &base, &at, PIN);
    assert_eq!(r.status(), 303);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let raw: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let cookie = raw
        .iter()
        .find(|v| v.starts_with("__Host-stepgate_su="))
        .unwrap_or_else(|| panic!("__Host-stepgate_su cookie: {raw:?}"));
    let attrs: Vec<&str> = cookie.split(';').map(str::trim).collect();
    for a in ["Secure", "Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(attrs.contains(&a), "{a} in {cookie}");
    }
    assert!(
        !attrs.iter().any(|a| a.starts_with("Domain")),
        "__Host- cookies carry no Domain: {cookie}"
    );
    assert!(
        !raw.iter().any(|v| v.starts_with("stepgate_su=")),
        "no plain cookie over TLS: {raw:?}"
    );
    let su = attrs[0].strip_prefix("__Host-stepgate_su=").unwrap();

    let r = c
        .get(https(&g, "/admin/x"))
        .header(
            "Cookie",
            format!("access_token={at}; __Host-stepgate_su={su}"),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().unwrap();
    assert_eq!(echoed(&echo, "x-stepgate-amr").as_deref(), Some("pin"));
    assert_eq!(echoed(&echo, "x-stepgate-rule").as_deref(), Some("admin"));
    assert!(
        !echoed(&echo, "cookie")
            .unwrap_or_default()
            .contains("stepgate_su"),
        "the step-up cookie is not forwarded"
    );
    // Without the cookie the route asks for step-up again, and over TLS the
    // same token under the plain name (which a sibling host or plain-HTTP
    // page could plant) is not accepted.
    for cookie in [
        format!("access_token={at}"),
        format!("access_token={at}; stepgate_su={su}"),
    ] {
        let r = c
            .get(https(&g, "/admin/x"))
            .header("Cookie", &cookie)
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "{cookie}");
    }
}

fn peer_subject(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn certificate_replaced_on_disk_is_served_to_new_connections_after_sighup() {
    let certs = tempfile::tempdir().unwrap();
    let g = tls_gateway(certs.path());
    let before = peer_subject(g.port);
    assert!(before.contains("first.test"), "{before}");
    let c = tls_client(false);
    assert_eq!(c.get(https(&g, "/public/x")).send().unwrap().status(), 200);

    make_cert(certs.path(), "rotated.test", "new-cert.pem", "new-key.pem");
    // Key first, then certificate; a reload in between would be refused (mismatch).
    std::fs::rename(
        certs.path().join("new-key.pem"),
        certs.path().join("key.pem"),
    )
    .unwrap();
    std::fs::rename(
        certs.path().join("new-cert.pem"),
        certs.path().join("cert.pem"),
    )
    .unwrap();
    // Not without a SIGHUP (certificates are not polled).
    std::thread::sleep(Duration::from_millis(1200));
    assert!(peer_subject(g.port).contains("first.test"));
    signal(pid(&g), "HUP");
    // Each probe runs two openssl processes; allow for a loaded machine.
    let t = wait_until(Duration::from_secs(10), || {
        peer_subject(g.port).contains("rotated.test")
    })
    .unwrap_or_else(|| {
        panic!(
            "new certificate served: {}\n{}",
            peer_subject(g.port),
            g.log()
        )
    });
    eprintln!("new certificate served {t:?} after SIGHUP");
    // The client that connected before keeps working.
    assert_eq!(c.get(https(&g, "/public/x")).send().unwrap().status(), 200);
    assert_eq!(
        tls_client(true)
            .get(https(&g, "/public/x"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

// ---------------------------------------------------------------------------
// 7. Per-host upstreams
// ---------------------------------------------------------------------------

#[test]
fn per_host_upstreams_route_by_host_with_a_star_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let (up1, p1) = upstream(dir.path());
    let (up2, p2) = upstream(dir.path());
    let port = free_port();
    let config = write_config(
        dir.path(),
        port,
        &format!("\n  \"a.test\": \"http://127.0.0.1:{p1}\"\n  \"*\": \"http://127.0.0.1:{p2}\""),
        DEFAULT_POLICY,
        "",
    );
    let _gw = spawn(
        Command::new(BIN).args(["serve", "--config"]).arg(&config),
        dir.path().join("gateway.log"),
    );
    wait_for_port(port, Duration::from_secs(15));
    let c = client();
    let url = format!("http://127.0.0.1:{port}/public/x");
    let get = |host: &str| {
        c.get(&url)
            .header("Host", host)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    for h in ["a.test", "A.Test:8080", "b.test", "127.0.0.1"] {
        assert_eq!(get(h), 200, "{h} with both upstreams up");
    }
    // Stop up1: only a.test is affected.
    drop(up1);
    for h in ["a.test", "A.Test:8080"] {
        assert_eq!(get(h), 502, "{h} goes to the stopped a.test upstream");
    }
    for h in ["b.test", "127.0.0.1"] {
        assert_eq!(get(h), 200, "{h} goes to the * upstream");
    }
    // Stop up2: now the fallback fails too.
    drop(up2);
    assert_eq!(get("b.test"), 502);
}

// ---------------------------------------------------------------------------
// 8. Graceful upgrade
// ---------------------------------------------------------------------------

#[test]
fn graceful_upgrade_hands_over_listeners_without_failing_a_request() {
    let mut g = Gateway::start_with(opts(DEFAULT_POLICY, "upgrade_sock: \"upgrade.sock\"\n"));
    let sock = g.dir.path().join("upgrade.sock");
    let url = g.url("/public/x");
    // Clients that keep their connection alive, and clients that open a new
    // connection for every request. (Found with this test: when the old
    // process's close timeout ends, SIGQUIT + 5 s, Pingora drops its idle
    // keep-alive connections, and a request racing that close fails with a
    // reset or an incomplete message. New connections never fail.)
    let reused = Load::start(url.clone(), 8, true, 20000, Duration::from_secs(40));
    let fresh = Load::start(url, 2, false, 20000, Duration::from_secs(40));
    std::thread::sleep(Duration::from_millis(500));

    let new = spawn(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&g.config)
            .arg("-u"),
        g.dir.path().join("gateway-new.log"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || sock.exists()).is_some(),
        "the new process waits on the upgrade socket"
    );
    std::thread::sleep(Duration::from_secs(1));
    let quit = Instant::now();
    signal(pid(&g), "QUIT");
    // The old process exits after handing over (close timeout + grace period).
    let exited = wait_until(Duration::from_secs(30), || {
        matches!(g.proc.as_mut().unwrap().child.try_wait(), Ok(Some(_)))
    })
    .map(|_| quit.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    let (reused, fresh) = (reused.finish(), fresh.finish());
    eprintln!(
        "upgrade: old exited {exited:?} after SIGQUIT; keep-alive clients: {} ok, {} failed {:?}; new-connection clients: {} ok, {} failed {:?} (times relative to SIGQUIT)",
        reused.ok,
        reused.failed.len(),
        reused.describe(quit),
        fresh.ok,
        fresh.failed.len(),
        fresh.describe(quit),
    );
    assert!(exited.is_some(), "the old process exits\n{}", g.log());
    assert!(reused.ok > 0 && fresh.ok > 0);
    assert!(
        fresh.failed.is_empty(),
        "new connections failed during the upgrade: {:?}",
        fresh.describe(quit)
    );
    assert!(
        reused.failed.is_empty(),
        "requests on kept-alive connections failed during the upgrade ({} of {}; times relative to SIGQUIT): {:?}",
        reused.failed.len(),
        reused.ok + reused.failed.len(),
        reused.describe(quit)
    );
    // The new process serves now.
    let r = client()
        .get(g.url("/public/x"))
        .header("X-Request-Id", "after-upgrade")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        wait_until(Duration::from_secs(3), || {
            access_lines(&new.log_text(), "after-upgrade").len() == 1
        })
        .is_some(),
        "the new process logged the request\n{}",
        new.log_text()
    );
}

// ---------------------------------------------------------------------------
// 9. Access log and request ids
// ---------------------------------------------------------------------------

#[test]
fn request_id_is_propagated_echoed_and_logged_in_one_json_access_line() {
    let g = Gateway::start();
    let c = client();
    let r = c
        .get(g.url("/public/x?q=1"))
        .header("X-Request-Id", "test-123")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "test-123");
    let echo: serde_json::Value = r.json().unwrap();
    assert_eq!(echoed(&echo, "x-request-id").as_deref(), Some("test-123"));
    wait_until(Duration::from_secs(3), || {
        !access_lines(&g.log(), "test-123").is_empty()
    })
    .expect("access line");
    let lines = access_lines(&g.log(), "test-123");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["method"], "GET");
    assert_eq!(l["host"], "127.0.0.1");
    assert_eq!(l["path"], "/public/x");
    assert_eq!(l["status"], 200);
    assert_eq!(l["decision"], "public");
    assert_eq!(l["rule"], "public");
    assert_eq!(l["ip"], "127.0.0.1");
    assert!(l["latency_ms"].is_number());
    assert!(l["user"].is_string());

    // Without the header: an id is generated, echoed and forwarded.
    let r = c.get(g.url("/public/y")).send().unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!id.is_empty());
    let echo: serde_json::Value = r.json().unwrap();
    assert_eq!(echoed(&echo, "x-request-id").as_deref(), Some(&*id));
    // On a reply stepgate makes itself (deny), too.
    let r = c.get(g.url("/internal/x")).send().unwrap();
    assert_eq!(r.status(), 403);
    let denied_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!denied_id.is_empty() && denied_id != id);
    wait_until(Duration::from_secs(3), || {
        !access_lines(&g.log(), &denied_id).is_empty()
    })
    .expect("access line of the denied request");
    let l = &access_lines(&g.log(), &id)[0];
    assert_eq!(l["path"], "/public/y");
    let l = &access_lines(&g.log(), &denied_id)[0];
    assert_eq!(l["status"], 403);
    assert_eq!(l["decision"], "deny");
    assert_eq!(l["rule"], "internal");
}

#[test]
fn access_log_can_be_turned_off_while_audit_events_stay() {
    // extra_config follows the harness's `log:` block, so this lands in it.
    let g = Gateway::start_with(GatewayOptions {
        extra_config: "  access: false\n".into(),
        ..Default::default()
    });
    let c = client();
    let r = c
        .get(g.url("/public/x"))
        .header("X-Request-Id", "quiet-1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // An audited event after the request: a wrong PIN.
    let at = g.token("quiet-user", &[]);
    enroll_pin(&g, &c, &at, "2580");
    let r = c
        .put(g.url("/.stepgate/api/stepup/pin"))
        .header("Authorization", format!("Bearer {at}"))
        .json(&serde_json::json!({"PIN": "1111"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    wait_until(Duration::from_secs(3), || g.log().contains("pin_failure"))
        .expect("the audit event is logged");
    assert!(
        access_lines(&g.log(), "quiet-1").is_empty(),
        "no access line with log.access: false"
    );
    assert!(!g.log().contains("\"target\":\"access\""));
}

// ---------------------------------------------------------------------------
// 10. Readiness and liveness
// ---------------------------------------------------------------------------

#[test]
fn ready_and_health_answer_with_the_memory_store() {
    let g = Gateway::start();
    let c = client();
    let r = c.get(g.url("/.stepgate/ready")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "ready");
    let r = c.get(g.url("/.stepgate/health")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "ok");
}

#[test]
fn hsts_is_sent_when_configured_and_https_upstreams_are_verified_against_upstream_ca() {
    let certs = tempfile::tempdir().unwrap();
    // A private CA and a leaf certificate for 127.0.0.1 signed by it.
    let d = certs.path();
    std::fs::write(
        d.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem",
        "req -newkey rsa:2048 -nodes -subj /CN=upstream.test -keyout key.pem -out leaf.csr",
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile leaf.ext -out cert.pem",
    ] {
        let out = Command::new("openssl").args(args.split(' ')).current_dir(d).output().expect("openssl");
        assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let tls = format!(
        "tls:\n  cert: \"{}\"\n  key: \"{}\"\n  hsts: 1d\n",
        certs.path().join("cert.pem").display(),
        certs.path().join("key.pem").display()
    );
    // A TLS gateway stands in for an https:// app.
    let app = Gateway::start_with(opts(DEFAULT_POLICY, &tls));
    let r = tls_client(false)
        .get(https(&app, "/public/x"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=86400");

    let front = |extra: &str| {
        let dir = tempfile::tempdir().unwrap().keep();
        let port = free_port();
        let cfg = write_config(
            &dir,
            port,
            &format!("https://127.0.0.1:{}", app.port),
            DEFAULT_POLICY,
            extra,
        );
        let p = spawn(
            Command::new(BIN).args(["serve", "--config"]).arg(&cfg),
            dir.join("front.log"),
        );
        wait_for_port(port, Duration::from_secs(15));
        (p, port)
    };
    // Trusting the app's certificate: forwarded over verified TLS.
    let (_trusting, port) = front(&format!(
        "upstream_ca: \"{}\"\n",
        certs.path().join("ca.pem").display()
    ));
    let r = client()
        .get(format!("http://127.0.0.1:{port}/public/x"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Not trusting it: the connection is refused, never sent in the clear.
    let (_strict, port) = front("");
    let r = client()
        .get(format!("http://127.0.0.1:{port}/public/x"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 502);
}
