//! Micro-benchmarks (criterion) for the per-request work of the gateway: the
//! access decision, policy lookup as the rule count grows from 10 to 10,000,
//! first-factor verification (HS256, RS256, ES256), step-up tokens, and one
//! Argon2id PIN check on the hashing pool. Results: benches/MICRO.md.
//!
//! Run: `cargo bench --bench decision -- --warm-up-time 1 --measurement-time 3`
//! (needs `openssl` on PATH to generate the RS256/ES256 keys).

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

use stepgate::auth::decision::{decide, Facts};
use stepgate::auth::first_factor::Verifier;
use stepgate::auth::principal::Principal;
use stepgate::auth::tokens::Keys;
use stepgate::config::values::Secret;
use stepgate::config::{FirstFactor, KeySource};
use stepgate::flows::pin::Hasher;
use stepgate::policy::{Factor, Policy};

/// The benches' clock (Unix seconds); tokens are minted relative to it.
const NOW: i64 = 1_700_000_000;
const HS_KEY: &[u8] = b"bench-first-factor-secret-0123456789";
const SINGLE_USE_WINDOW: i64 = 120;

/// A realistic policy for one app: public assets, an API with per-method
/// rules, step-up areas with different factors and freshness, a
/// host-specific rule and deny rules. 20 rules, `default: authenticated`.
const REALISTIC_POLICY: &str = r#"
default: authenticated
rules:
  - name: health
    match: { path: "/healthz" }
    require: none
  - name: metrics-internal
    match: { path: "/metrics" }
    require: deny
  - name: favicon
    match: { path: "/favicon.ico" }
    require: none
  - name: login
    match: { path: "/login/**" }
    require: none
  - name: public-docs
    match: { path: "/docs/**", methods: [GET, HEAD] }
    require: none
  - name: images
    match: { path: "/img/*.png" }
    require: none
  - name: api-read
    match: { path: "/api/v?/**", methods: [GET, HEAD, OPTIONS] }
    require: authenticated
  - name: api-delete
    match: { path: "/api/v?/**", methods: [DELETE] }
    require: step_up
    step_up: { methods: [pin], max_age: 0 }
  - name: api-write
    match: { path: "/api/v?/**", methods: [POST, PUT, PATCH] }
    require: authenticated
  - name: account-password
    match: { path: "/account/password" }
    require: step_up
    step_up: { methods: [pin, email_otp], max_age: 5m }
  - name: account
    match: { path: "/account/**" }
    require: authenticated
  - name: billing
    match: { path: "/billing/**" }
    require: step_up
    step_up: { methods: [email_otp, pin], max_age: 10m }
  - name: admin-user-delete
    match: { path: "/admin/users/*/delete", methods: [POST] }
    require: step_up
    step_up: { methods: [pin], max_age: 0 }
  - name: admin
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: report-export
    match: { path: "/reports/**/*.csv" }
    require: step_up
    step_up: { methods: [pin], max_age: 15m }
  - name: reports
    match: { path: "/reports/**" }
    require: authenticated
  - name: ops-console
    match: { host: "ops.example.com", path: "/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
  - name: internal
    match: { path: "/internal/**" }
    require: deny
  - name: static
    match: { path: "/static/**" }
    require: none
  - name: dashboard
    match: { path: "/dashboard/**" }
    require: authenticated
"#;

fn policy(text: String) -> Policy {
    Policy::from_sources(&[("bench.yaml".to_string(), text)]).unwrap_or_else(|diags| {
        let shown: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        panic!("bench policy does not compile:\n{}", shown.join("\n"))
    })
}

fn hs256_first_factor() -> FirstFactor {
    FirstFactor {
        claims: Default::default(),
        cookie: "access_token".into(),
        algorithms: vec![Algorithm::HS256],
        key: KeySource::Secret(Secret::new(HS_KEY)),
        issuer: Some("https://idp.example.com".into()),
        audience: None,
        login_url: None,
        leeway: Duration::from_secs(30),
        introspection: None,
        session_check: None,
        oidc: None,
        trusted_header: None,
    }
}

/// Claims a typical IdP access token carries.
fn access_claims() -> serde_json::Value {
    serde_json::json!({
        "iss": "https://idp.example.com",
        "sub": "user-8c2f4e91",
        "email": "alice@example.com",
        "email_verified": true,
        "preferred_username": "alice",
        "sid": "3f1d2b7c-5a9e-4c1b-9d0e-8f6a2b4c7d10",
        "iat": NOW - 600,
        "auth_time": NOW - 600,
        "exp": NOW + 3000,
    })
}

fn sign(alg: Algorithm, key: &EncodingKey) -> String {
    encode(&Header::new(alg), &access_claims(), key).expect("sign access token")
}

fn stepup_keys() -> Keys {
    Keys::new(&Secret::new("bench-signing-secret-".repeat(2)))
}

// ---------- 1. decide ----------

fn bench_decide(c: &mut Criterion) {
    let policy = policy(REALISTIC_POLICY.to_string());
    let verifier = Verifier::new(&hs256_first_factor()).expect("HS256 verifier");
    let keys = stepup_keys();
    let access = sign(Algorithm::HS256, &EncodingKey::from_secret(HS_KEY));
    let principal = verifier.verify(&access, NOW).expect("valid access token");
    let (stepup, _) = keys.issue_stepup(&principal, Factor::Pin, NOW - 60, 3600);

    let cases: [(&str, &str, &str, &str); 3] = [
        ("public", "/static/js/app.3f9c2a.js", "static", "public"),
        (
            "authenticated_hs256",
            "/dashboard/overview",
            "dashboard",
            "authenticated",
        ),
        ("step_up_hs256", "/admin/users/42", "admin", "stepped_up"),
    ];
    let mut g = c.benchmark_group("decide");
    for (id, path, rule, label) in cases {
        // Browsers send their cookies on every request, public ones included.
        let facts = Facts {
            host: "app.example.com",
            method: "GET",
            path,
            access_token: Some(&access),
            stepup_token: Some(&stepup),
            overridable: false,
        };
        let d = decide(&facts, &policy, &verifier, &keys, SINGLE_USE_WINDOW, NOW);
        assert_eq!((d.label(), rule_of(&d)), (label, rule), "{id}: {d:?}");
        g.bench_function(id, |b| {
            b.iter(|| {
                decide(
                    black_box(&facts),
                    &policy,
                    &verifier,
                    &keys,
                    SINGLE_USE_WINDOW,
                    NOW,
                )
            })
        });
    }
    g.finish();
}

fn rule_of<'p>(d: &stepgate::auth::decision::Decision<'p>) -> &'p str {
    use stepgate::auth::decision::Decision::*;
    match d {
        Forward { rule, .. }
        | Deny { rule }
        | Unauthenticated { rule, .. }
        | StepUp { rule, .. } => rule,
    }
}

// ---------- 2. policy_lookup ----------

const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// `n` generated rules cycling through literal prefixes with `**`, segment
/// globs, host-specific rules and method-restricted rules. The last rule is
/// always `/app{n-1}/admin/**` (GET only), so `last_rule_path(n)` matches
/// only it, after every other rule in file order.
fn generated_policy(n: usize) -> String {
    let mut y = String::from("default: authenticated\nrules:\n");
    for i in 0..n - 1 {
        let rule = match i % 4 {
            0 => format!(
                "{{ name: r{i}, match: {{ path: \"/app{i}/admin/**\" }}, require: step_up, step_up: {{ methods: [pin], max_age: 5m }} }}"
            ),
            1 => format!("{{ name: r{i}, match: {{ path: \"/files{i}/*.pdf\" }}, require: authenticated }}"),
            2 => format!(
                "{{ name: r{i}, match: {{ host: \"tenant{i}.example.com\", path: \"/settings/**\" }}, require: step_up }}"
            ),
            _ => format!(
                "{{ name: r{i}, match: {{ path: \"/api{i}/items/*\", methods: [POST, DELETE] }}, require: step_up, step_up: {{ methods: [pin], max_age: 0 }} }}"
            ),
        };
        y.push_str("  - ");
        y.push_str(&rule);
        y.push('\n');
    }
    let last = n - 1;
    y.push_str(&format!(
        "  - {{ name: last, match: {{ path: \"/app{last}/admin/**\", methods: [GET] }}, require: step_up }}\n"
    ));
    y
}

fn last_rule_path(n: usize) -> String {
    format!("/app{}/admin/users/42/edit", n - 1)
}

const NO_MATCH_PATH: &str = "/nothing/matches/this/path/at/all";

/// `n` rules on wildcard hosts (`*.tenant{i}.example.com`), for comparison:
/// these are kept in a list that every lookup walks.
fn host_glob_policy(n: usize) -> String {
    let mut y = String::from("default: authenticated\nrules:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  - {{ name: h{i}, match: {{ host: \"*.tenant{i}.example.com\", path: \"/admin/**\" }}, require: step_up }}\n"
        ));
    }
    y
}

/// `n` rules whose glob segments share one parent (`/exports/report-{i}-*.csv`),
/// for comparison: a node keeps its glob children in a list.
fn segment_glob_policy(n: usize) -> String {
    let mut y = String::from("default: authenticated\nrules:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  - {{ name: g{i}, match: {{ path: \"/exports/report-{i}-*.csv\" }}, require: step_up }}\n"
        ));
    }
    y
}

fn bench_policy_lookup(c: &mut Criterion) {
    let policies: Vec<(usize, Policy)> = SIZES
        .iter()
        .map(|&n| {
            let start = Instant::now();
            let p = policy(generated_policy(n));
            eprintln!(
                "policy_lookup: compiled {n} rules in {:.1?}",
                start.elapsed()
            );
            assert_eq!(p.rules.len(), n);
            assert_eq!(
                p.lookup("app.example.com", "GET", &last_rule_path(n))
                    .rule_name(),
                "last"
            );
            assert_eq!(
                p.lookup("app.example.com", "GET", NO_MATCH_PATH)
                    .rule_name(),
                "default"
            );
            (n, p)
        })
        .collect();

    let mut g = c.benchmark_group("policy_lookup");
    for (n, p) in &policies {
        let path = last_rule_path(*n);
        g.bench_with_input(BenchmarkId::new("last_rule", n), &path, |b, path| {
            b.iter(|| {
                p.lookup(black_box("app.example.com"), "GET", black_box(path))
                    .rule
                    .is_some()
            })
        });
        g.bench_with_input(
            BenchmarkId::new("no_match", n),
            &NO_MATCH_PATH,
            |b, path| {
                b.iter(|| {
                    p.lookup(black_box("app.example.com"), "GET", black_box(path))
                        .rule
                        .is_some()
                })
            },
        );
    }
    g.finish();

    // A self-timed cross-check of the 10k/10 ratio, independent of
    // criterion's statistics (the table in MICRO.md uses criterion medians).
    // Short batches of the two sizes alternate, so load from other processes
    // hits both alike; on a shared machine a batch can only get slower (the
    // thread is descheduled), so the fastest batch is the least disturbed
    // estimate, and the median is printed next to it.
    let batch = |p: &Policy, path: &str| -> f64 {
        const N: u32 = 2_000;
        let start = Instant::now();
        for _ in 0..N {
            black_box(p.lookup(black_box("app.example.com"), "GET", black_box(path)));
        }
        start.elapsed().as_nanos() as f64 / f64::from(N)
    };
    let min_median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    };
    let (small_n, small) = &policies[0];
    let (big_n, big) = &policies[policies.len() - 1];
    for (what, small_path, big_path) in [
        (
            "last_rule",
            last_rule_path(*small_n),
            last_rule_path(*big_n),
        ),
        (
            "no_match",
            NO_MATCH_PATH.to_string(),
            NO_MATCH_PATH.to_string(),
        ),
    ] {
        let (mut s, mut b) = (Vec::new(), Vec::new());
        for _ in 0..501 {
            s.push(batch(small, &small_path));
            b.push(batch(big, &big_path));
        }
        let ((s_min, s_med), (b_min, b_med)) = (min_median(s), min_median(b));
        eprintln!(
            "policy_lookup ratio check ({what}), {big_n} vs {small_n} rules: fastest batch {b_min:.0} / {s_min:.0} ns = {:.2}x, median batch {b_med:.0} / {s_med:.0} ns = {:.2}x",
            b_min / s_min,
            b_med / s_med
        );
    }

    let mut g = c.benchmark_group("policy_lookup_host_globs");
    for n in SIZES {
        let p = policy(host_glob_policy(n));
        let host = format!("eu.tenant{}.example.com", n - 1);
        assert_eq!(
            p.lookup(&host, "GET", "/admin/x").rule_name(),
            format!("h{}", n - 1)
        );
        g.bench_with_input(BenchmarkId::new("last_rule", n), &host, |b, host| {
            b.iter(|| {
                p.lookup(black_box(host), "GET", black_box("/admin/x"))
                    .rule
                    .is_some()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("policy_lookup_segment_globs");
    for n in SIZES {
        let p = policy(segment_glob_policy(n));
        let path = format!("/exports/report-{}-2024.csv", n - 1);
        assert_eq!(
            p.lookup("app.example.com", "GET", &path).rule_name(),
            format!("g{}", n - 1)
        );
        g.bench_with_input(BenchmarkId::new("last_rule", n), &path, |b, path| {
            b.iter(|| {
                p.lookup(black_box("app.example.com"), "GET", black_box(path))
                    .rule
                    .is_some()
            })
        });
    }
    g.finish();
}

// ---------- 3. first_factor_verify ----------

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (needed to generate RS256/ES256 keys)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pem_verifier(alg: Algorithm, public_pem: &Path) -> Verifier {
    Verifier::new(&FirstFactor {
        key: KeySource::PublicKeyFile(public_pem.to_path_buf()),
        algorithms: vec![alg],
        ..hs256_first_factor()
    })
    .unwrap_or_else(|e| panic!("{alg:?} verifier: {e}"))
}

fn bench_first_factor(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.pem",
        ],
    );
    openssl(
        d,
        &["rsa", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub.pem"],
    );
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.sec1.pem",
        ],
    );
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "ec.sec1.pem",
            "-out",
            "ec.pem",
        ],
    );
    openssl(d, &["ec", "-in", "ec.pem", "-pubout", "-out", "ec.pub.pem"]);
    let read = |f: &str| std::fs::read(d.join(f)).expect("read generated key");

    let cases: Vec<(&str, Verifier, String)> = vec![
        (
            "HS256",
            Verifier::new(&hs256_first_factor()).expect("HS256 verifier"),
            sign(Algorithm::HS256, &EncodingKey::from_secret(HS_KEY)),
        ),
        (
            "RS256_2048",
            pem_verifier(Algorithm::RS256, &d.join("rsa.pub.pem")),
            sign(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(&read("rsa.pem")).expect("RSA private key"),
            ),
        ),
        (
            "ES256",
            pem_verifier(Algorithm::ES256, &d.join("ec.pub.pem")),
            sign(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(&read("ec.pem")).expect("EC private key"),
            ),
        ),
    ];
    // The verifiers hold the keys in memory; the files are no longer needed.
    drop(dir);

    let mut g = c.benchmark_group("first_factor_verify");
    for (id, verifier, token) in &cases {
        let p = verifier.verify(token, NOW).expect("valid token");
        assert_eq!(p.sub, "user-8c2f4e91", "{id}");
        g.bench_function(*id, |b| b.iter(|| verifier.verify(black_box(token), NOW)));
    }
    g.finish();
}

// ---------- 4. stepup_token ----------

fn bench_stepup(c: &mut Criterion) {
    let keys = stepup_keys();
    let principal: Principal = Verifier::new(&hs256_first_factor())
        .unwrap()
        .verify(
            &sign(Algorithm::HS256, &EncodingKey::from_secret(HS_KEY)),
            NOW,
        )
        .unwrap();
    let (token, claims) = keys.issue_stepup(&principal, Factor::Pin, NOW - 60, 3600);
    assert_eq!(keys.verify_stepup(&token, &principal, NOW), Ok(claims));

    let mut g = c.benchmark_group("stepup_token");
    g.bench_function("issue", |b| {
        b.iter(|| keys.issue_stepup(black_box(&principal), Factor::Pin, NOW, 3600))
    });
    g.bench_function("verify", |b| {
        b.iter(|| keys.verify_stepup(black_box(&token), &principal, NOW))
    });
    g.finish();
}

// ---------- 4b. assertion signing, with and without its cache ----------

fn bench_assertion(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let signer = stepgate::auth::assertion::Signer::new(
        &dir.path().join("assertion.pem"),
        None,
        "stepgate".into(),
        "app".into(),
    )
    .expect("signer");
    let claims = stepgate::auth::assertion::Claims {
        sub: "alice",
        email: Some("alice@example.com"),
        amr: vec!["pin"],
        acr: "urn:stepgate:acr:step-up",
        auth_time: Some(NOW - 30),
        rule: "admin",
        ff: "jwt",
        method: "GET",
        path: "/admin/users",
        txn: None,
        session: "sid:s1",
    };
    let mut g = c.benchmark_group("assertion_sign");
    g.bench_function("fresh_es256", |b| {
        b.iter(|| signer.sign_fresh(black_box(&claims), NOW))
    });
    g.bench_function("cached_same_claims", |b| {
        b.iter(|| signer.sign(black_box(&claims), NOW))
    });
    g.finish();
}

// ---------- 5. pin_verify ----------

fn bench_pin(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let hasher = Arc::new(Hasher::new(1));
    let phc = rt
        .block_on(hasher.hash("482915".to_string()))
        .expect("hash PIN");
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    assert!(rt
        .block_on(hasher.verify("482915".into(), phc.clone()))
        .unwrap());
    assert!(!rt
        .block_on(hasher.verify("482916".into(), phc.clone()))
        .unwrap());

    let mut g = c.benchmark_group("pin_verify");
    // ~tens of ms per check: criterion's minimum of 10 samples is plenty.
    g.sample_size(10);
    g.bench_function(format!("argon2id_{}", phc_params(&phc)), |b| {
        b.iter(|| {
            rt.block_on(hasher.verify(black_box("482915".to_string()), phc.clone()))
                .unwrap()
        })
    });
    g.finish();
}

/// `m=19456,t=2,p=1` from a PHC string, as `m19456_t2_p1`.
fn phc_params(phc: &str) -> String {
    phc.split('$')
        .find(|s| s.starts_with("m="))
        .unwrap_or("unknown")
        .replace('=', "")
        .replace(',', "_")
}

criterion_group!(
    benches,
    bench_decide,
    bench_policy_lookup,
    bench_first_factor,
    bench_stepup,
    bench_assertion,
    bench_pin
);
criterion_main!(benches);
