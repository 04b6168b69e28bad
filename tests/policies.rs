//! The example policies in policies/ and the example config stay valid:
//! `stepgate check` must accept each of them.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_stepgate");

fn check(config: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .env("STEPGATE_FIRST_FACTOR_SECRET", "x".repeat(32))
        .env("STEPGATE_SIGNING_SECRET", "y".repeat(32))
        .env("STEPGATE_INTROSPECTION_SECRET", "z".repeat(32))
        .env("STEPGATE_OIDC_SECRET", "o".repeat(32))
        .output()
        .unwrap()
}

#[test]
fn every_example_policy_passes_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let cfg = dir.path().join(format!("gw-{n}.yaml"));
        std::fs::write(&cfg, format!("upstream: http://127.0.0.1:9\npolicy: {}\nfirst_factor: {{ jwt: {{ secret: \"${{STEPGATE_FIRST_FACTOR_SECRET}}\" }} }}\nsigning: {{ secret: \"${{STEPGATE_SIGNING_SECRET}}\" }}\nstore: {{ kind: memory }}\n", path.display())).unwrap();
        let out = check(&cfg);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    assert!(n >= 3, "expected the example policies, found {n}");
}

#[test]
fn the_example_gateway_config_passes_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = check(&root.join("examples/gateway.yaml"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok (6 rules"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_example_first_factor_configs_pass_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("examples/first-factor")).unwrap() {
        let path = entry.unwrap().path();
        let out = check(&path);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    assert_eq!(n, 4, "session-check, introspection, trusted-header, oidc");
}

#[test]
fn example_policies_are_lint_clean() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root.join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let cfg = dir.path().join("gw.yaml");
        std::fs::write(&cfg, format!("upstream: http://127.0.0.1:9\npolicy: {}\nfirst_factor: {{ jwt: {{ secret: \"{}\" }} }}\nsigning: {{ secret: \"{}\" }}\nstore: {{ kind: memory }}\n", path.display(), "x".repeat(32), "y".repeat(32))).unwrap();
        let out = Command::new(BIN)
            .args(["policy", "lint", "--deny-warnings", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
