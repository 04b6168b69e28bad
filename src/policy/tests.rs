//! Policy loading, matching and canonical paths.

use super::*;

fn policy(text: &str) -> Result<Policy, Vec<Diagnostic>> {
    Policy::from_sources(&[("p.yaml".to_string(), text.to_string())])
}

const EXAMPLE: &str = r#"
default: authenticated
rules:
  - name: health
    match: { path: "/healthz" }
    require: none
  - name: admin-write
    match: { path: "/admin/**", methods: [POST, DELETE] }
    require: step_up
    step_up: { methods: [pin], max_age: 0 }
  - name: admin
    match: { host: "app.example.com", path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin, email_otp], max_age: 5m }
  - name: blocked
    match: { path: "/internal/**" }
    require: deny
"#;

#[test]
fn lookup_follows_file_order_methods_and_hosts() {
    let p = policy(EXAMPLE).unwrap();
    let m = p.lookup("app.example.com", "GET", "/admin/users");
    assert_eq!(m.rule_name(), "admin");
    assert_eq!(
        m.require,
        &Require::StepUp(StepUp {
            methods: vec![Factor::Pin, Factor::EmailOtp],
            max_age: Duration::from_secs(300),
            bind: vec![],
        })
    );
    assert_eq!(
        p.lookup("APP.example.com", "POST", "/admin/users")
            .rule_name(),
        "admin-write"
    );
    assert_eq!(
        p.lookup("other.example.com", "GET", "/admin/users")
            .rule_name(),
        "default"
    );
    assert_eq!(p.lookup("x", "GET", "/healthz").require, &Require::None);
    assert_eq!(p.lookup("x", "GET", "/internal/a").require, &Require::Deny);
    assert_eq!(
        p.lookup("x", "GET", "/elsewhere").require,
        &Require::Authenticated
    );
}

#[test]
fn errors_carry_file_line_and_column() {
    let text = "rules:\n  - name: a\n    match: { path: \"admin/**\" }\n    require: step_up\n    step_up: { methods: [pin, sms] , max_age: 5 minutes }\n";
    let errs = policy(text).unwrap_err();
    let shown: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
    // A bad duration is one problem among the rule's others, all in one run,
    // top to bottom.
    assert_eq!(
        shown,
        [
            "p.yaml:3:20: path pattern `admin/**` must start with `/`",
            "p.yaml:5:31: unknown step-up method `sms`; use pin or email_otp",
            "p.yaml:5:47: `5 minutes`: unknown unit ` minutes`; use ms, s, m, h or d",
        ]
    );
    let text = "rules:\n  - name: a\n    match: { path: \"admin/**\" }\n    require: step_up\n    step_up: { methods: [pin, sms] }\n";
    let shown: Vec<String> = policy(text)
        .unwrap_err()
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert!(
        shown.contains(&"p.yaml:3:20: path pattern `admin/**` must start with `/`".to_string()),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("p.yaml:5:31: unknown step-up method `sms`")),
        "{shown:?}"
    );
}

#[test]
fn unknown_keys_are_errors_with_position() {
    let errs =
        policy("rules:\n  - name: a\n    match: { pth: \"/x\" }\n    require: none\n").unwrap_err();
    let s = errs[0].to_string();
    assert!(
        s.starts_with("p.yaml:3:14: rules[0].match: unknown field `pth`"),
        "{s}"
    );
}

#[test]
fn duplicate_names_and_bad_methods_are_reported() {
    let errs = policy("rules:\n  - { name: a, require: none }\n  - { name: a, require: none }\n  - { name: b, require: none, match: { methods: [FETCH] } }\n").unwrap_err();
    let all: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
    assert!(
        all.iter().any(|s| s.contains("already used at p.yaml:2:5")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|s| s.contains("unknown HTTP method `FETCH`")),
        "{all:?}"
    );
}

#[test]
fn normalization_decodes_every_escape_and_refuses_ambiguity() {
    assert_eq!(
        normalize_path("/%61dmin//x").unwrap(),
        ("/admin/x".into(), "/admin/x".into())
    );
    // What is matched is what is forwarded: the parameter goes.
    assert_eq!(
        normalize_path("/admin;jsessionid=1/x").unwrap(),
        ("/admin/x".into(), "/admin/x".into())
    );
    assert_eq!(normalize_path("/a%20b").unwrap().1, "/a%20b");
    assert_eq!(normalize_path("/a/../admin"), Err(BadPath::DotSegment));
    assert_eq!(normalize_path("/a/%2e%2e/admin"), Err(BadPath::DotSegment));
    assert_eq!(normalize_path("/a/..;/admin"), Err(BadPath::DotSegment));
    assert_eq!(
        normalize_path("/admin%2fx"),
        Err(BadPath::AmbiguousEncoding)
    );
    assert_eq!(normalize_path("/admin\\x"), Err(BadPath::AmbiguousEncoding));
    assert_eq!(normalize_path("/a%zz"), Err(BadPath::AmbiguousEncoding));
    assert_eq!(normalize_path("/").unwrap().0, "/");
    assert_eq!(
        normalize_path("/caf\u{e9}/x").unwrap(),
        ("/caf\u{e9}/x".into(), "/caf%C3%A9/x".into())
    );
}

#[test]
fn case_insensitive_policies_match_any_case() {
    let p = policy("case_insensitive: true\nrules:\n  - { name: a, match: { path: \"/Admin/**\" }, require: deny }\n").unwrap();
    assert_eq!(p.lookup("h", "GET", "/ADMIN/x").rule_name(), "a");
    let p = policy("case_insensitive: false\nrules:\n  - { name: a, match: { path: \"/admin/**\" }, require: deny }\n")
            .unwrap();
    assert_eq!(p.lookup("h", "GET", "/ADMIN/x").rule_name(), "default");
}

#[test]
fn by_default_the_stricter_of_exact_and_folded_case_wins() {
    let p = policy("rules:\n  - { name: admin, match: { path: \"/admin/**\" }, require: step_up }\n  - { name: pub, match: { path: \"/Public/**\" }, require: none }\n").unwrap();
    // A case-insensitive app serves /ADMIN from /admin: protected.
    assert_eq!(p.lookup("h", "GET", "/ADMIN/x").rule_name(), "admin");
    // A case-sensitive app serves /public as something else than
    // /Public: the public rule does not open it.
    assert_eq!(p.lookup("h", "GET", "/public/x").rule_name(), "default");
    assert_eq!(p.lookup("h", "GET", "/Public/x").rule_name(), "pub");
    let p = policy("rules:\n  - { name: cafe, match: { path: \"/café/**\" }, require: deny }\n")
        .unwrap();
    assert_eq!(p.lookup("h", "GET", "/CAFÉ/x").rule_name(), "cafe");
}

#[test]
fn unicode_case_look_alikes_fold_to_the_ascii_they_stand_for() {
    assert_eq!(fold("adm\u{131}n"), "admin");
    assert_eq!(fold("adm\u{130}n"), "admin");
    assert_eq!(fold("\u{17f}ettings"), "settings");
    assert_eq!(fold("\u{212a}eys"), "keys");
    assert_eq!(fold("Stra\u{df}e"), "strasse");
    assert_eq!(fold("CAF\u{c9}"), "caf\u{e9}");
    let p = policy("rules:\n  - { name: admin, match: { path: \"/admin/**\" }, require: step_up }\n  - { name: sec, match: { path: \"/internal/**\" }, require: deny }\n").unwrap();
    for path in [
        "/adm\u{131}n/x",
        "/adm\u{130}n/x",
        "/\u{130}NTERNAL/x",
        "/\u{131}nternal/x",
    ] {
        assert_ne!(p.lookup("h", "GET", path).rule_name(), "default", "{path}");
    }
}

#[test]
fn form_posts_are_judged_as_the_methods_they_may_override_to() {
    let p = policy("rules:\n  - { name: del, match: { path: \"/users/*\", methods: [DELETE] }, require: step_up }\n").unwrap();
    assert_eq!(p.judge("h", "POST", "/users/5", true).rule_name(), "del");
    assert_eq!(
        p.judge("h", "POST", "/users/5", false).rule_name(),
        "default"
    );
    assert_eq!(p.judge("h", "GET", "/users/5", true).rule_name(), "default");
    // `_method` can name GET or HEAD as well (Rack, Express's
    // method-override): a GET-only rule is in reach of a POST too.
    let p = policy("rules:\n  - { name: export, match: { path: \"/reports/export\", methods: [GET] }, require: step_up }\n  - { name: opts, match: { path: \"/o\", methods: [OPTIONS] }, require: deny }\n").unwrap();
    assert_eq!(
        p.judge("h", "POST", "/reports/export", true).rule_name(),
        "export"
    );
    assert_eq!(p.judge("h", "POST", "/o", true).rule_name(), "opts");
    assert_eq!(
        p.judge("h", "POST", "/reports/export", false).rule_name(),
        "default"
    );
    let p = policy("method_override: false\nrules:\n  - { name: del, match: { path: \"/users/*\", methods: [DELETE] }, require: step_up }\n").unwrap();
    assert_eq!(
        p.judge("h", "POST", "/users/5", true).rule_name(),
        "default"
    );
}

#[test]
fn head_is_covered_by_get_rules() {
    let p =
        policy("rules:\n  - { name: r, match: { path: \"/x\", methods: [GET] }, require: deny }\n")
            .unwrap();
    assert_eq!(p.lookup("h", "HEAD", "/x").rule_name(), "r");
    assert_eq!(p.lookup("h", "POST", "/x").rule_name(), "default");
}

#[test]
fn one_run_reports_every_problem_of_every_rule() {
    let text = "\
rules:
  - name: admin
    match: { path: /admin/**, methods: [GET, PSOT] }
    require: step_upp
    step_up: { methods: [pin, sms], max_age: 5x }
  - name: admin
    match: { path: /a/**, colour: red }
    require: none
  - name: default
    require: step_up
    step_up: { max_age: -3 }
  - name: fine
    require: step_up
    step_up: { max_age: 300 }
";
    let shown: Vec<String> = policy(text)
        .unwrap_err()
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        shown,
        [
            "p.yaml:3:46: unknown HTTP method `PSOT`; use one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, CONNECT, TRACE",
            "p.yaml:4:14: `require: step_upp` is not valid; use none, authenticated, step_up or deny",
            "p.yaml:5:14: `step_up` settings need `require: step_up` (this rule has `require: step_upp`)",
            "p.yaml:5:31: unknown step-up method `sms`; use pin or email_otp",
            "p.yaml:5:46: `5x`: unknown unit `x`; use ms, s, m, h or d",
            // A rule that does not convert still has its name checked.
            "p.yaml:6:11: rule name `admin` is already used at p.yaml:2:5; names must be unique",
            "p.yaml:7:27: rules[1].match: unknown field `colour`, expected one of `host`, `path`, `methods`",
            "p.yaml:9:11: `default` is what X-Stepgate-Rule says when no rule matched; give this rule another name",
            "p.yaml:11:25: `-3` is not a duration; write whole seconds or e.g. 30s, 5m, 1h",
        ]
    );
}
