//! Helpdesk and ops over real processes: a locked user seen and unlocked
//! by the API and by `stepgate admin`, a PIN removed (enrollment asked
//! again), every action audited.

mod common;

use std::process::Command;
use std::time::Duration;

use common::api::*;
use common::*;
use serde_json::Value;

const PIN: &str = "2580";
const WRONG: &str = "1397";

fn gateway() -> Gateway {
    Gateway::start_with(GatewayOptions {
        // 2 s, not the default 250 ms: a redb commit on a loaded two-core
        // machine has outlasted 250 ms, and this test is not about the bound.
        store: "  kind: embedded\n  path: data.redb\n  timeout: 2s\n".into(),
        extra_config: format!(
            "{}lockout:\n  max_failures: 3\n  ip_max_failures: 5\n  window: 10m\n  duration: 10m\n",
            api_secret_config()
        ),
        ..Default::default()
    })
}

fn manage(
    c: &reqwest::blocking::Client,
    g: &Gateway,
    method: reqwest::Method,
    route: &str,
) -> reqwest::blocking::Response {
    bearer(
        c.request(method, api(g, &format!("/manage/account{route}"))),
        API_SECRET,
    )
    .send()
    .unwrap()
}

fn admin(g: &Gateway, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["admin", "--config"])
        .arg(&g.config)
        .args(args)
        .output()
        .unwrap()
}

fn lock(g: &Gateway, c: &reqwest::blocking::Client, at: &str) {
    for _ in 0..2 {
        assert_error(put_pin(g, c, at, WRONG), 401, 1236);
    }
    // The third failure starts the lock; the right PIN is refused during it.
    assert_error(put_pin(g, c, at, WRONG), 429, 1198);
    assert_error(put_pin(g, c, at, PIN), 429, 1198);
}

/// A JSON string holding an RFC 3339 time.
fn rfc3339(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
    })
}

#[test]
fn a_locked_user_is_seen_and_unlocked_through_the_api_and_steps_up_at_once() {
    let g = gateway();
    let c = client();
    let alice = g.token("alice", &["--email", "alice@x.io", "--login-age", "0"]);
    enroll_pin(&g, &c, &alice, PIN);
    lock(&g, &c, &alice);

    // Only with the API secret.
    let r = c.get(api(&g, "/manage/account/alice")).send().unwrap();
    assert_error(r, 401, 907);
    let r = manage(&c, &g, reqwest::Method::GET, "/alice");
    assert_eq!(r.status(), 200);
    let a: Value = r.json().unwrap();
    assert_eq!(a["Uid"], "alice");
    assert_eq!(a["IsPINSet"], true);
    assert!(
        a["LockedUntil"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{a}"
    );
    assert_eq!(a["ConsecutiveFailures"], 3, "{a}");
    assert!(
        a.get("Phc").is_none() && !a.to_string().contains("argon2"),
        "no PIN hash: {a}"
    );

    // The list of locks in force, over the API.
    let locks = || -> Value {
        bearer(c.get(api(&g, "/manage/locks")), API_SECRET)
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let list = locks();
    assert!(
        list.as_array().unwrap().iter().any(|l| l["Uid"] == "alice"
            && l["Scope"] == "user"
            && l["LockedUntil"].as_str().is_some_and(|t| t.ends_with('Z'))),
        "{list}"
    );
    assert_error(c.get(api(&g, "/manage/locks")).send().unwrap(), 401, 907);

    assert_posted(manage(&c, &g, reqwest::Method::POST, "/alice/unlock"));
    let list = locks();
    assert!(
        !list.as_array().unwrap().iter().any(|l| l["Uid"] == "alice"),
        "an unlocked user is not listed: {list}"
    );
    let r = put_pin(&g, &c, &alice, PIN);
    assert_eq!(r.status(), 200, "unlocked: the step-up works at once");
    // The step-up is remembered for the helpdesk.
    let mut last = Value::Null;
    for _ in 0..50 {
        last = manage(&c, &g, reqwest::Method::GET, "/alice")
            .json()
            .unwrap();
        if last["LastStepUp"]["Factor"] == "pin" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(last["LastStepUp"]["Factor"], "pin", "{last}");
    assert_eq!(last["LockedUntil"], Value::Null);

    // Remove the PIN: the next step-up asks for enrollment.
    let r = manage(&c, &g, reqwest::Method::DELETE, "/alice/pin");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["IsDeleted"], true);
    assert_error(put_pin(&g, &c, &alice, PIN), 403, 1235);
    let a: Value = manage(&c, &g, reqwest::Method::GET, "/alice")
        .json()
        .unwrap();
    assert_eq!(a["IsPINSet"], false);
    let r = manage(&c, &g, reqwest::Method::DELETE, "/alice/pin");
    assert_eq!(
        r.json::<Value>().unwrap()["IsDeleted"],
        false,
        "nothing left to delete"
    );

    let log = g.log();
    for action in ["\"unlock\"", "\"remove_pin\""] {
        assert!(log.contains(action), "audit line for {action}:\n{log}");
    }
}

#[test]
fn the_cli_answers_is_alice_locked_and_unlocks_her() {
    let mut g = gateway();
    let c = client();
    let alice = g.token("alice", &["--email", "alice@x.io", "--login-age", "0"]);
    enroll_pin(&g, &c, &alice, PIN);
    lock(&g, &c, &alice);

    // While the gateway runs, the embedded store has one writer: the CLI
    // goes through the running gateway's API (with the configured secret).
    let out = admin(&g, &["user", "show", "alice"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("user alice") && text.contains("locked until"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = admin(&g, &["--json", "user", "show", "alice"]);
    let a: Value = serde_json::from_slice(&out.stdout).unwrap();
    let api_shape = assert_ok_json(
        c.get(api(&g, "/manage/account/alice"))
            .bearer_auth(API_SECRET)
            .send()
            .unwrap(),
    );
    assert_eq!(a, api_shape, "the API's shape, times as RFC 3339");
    assert!(rfc3339(&a["LockedUntil"]), "{a}");
    // An office behind one address: bob's typos on top of alice's lock it.
    let bob = g.token("bob", &["--email", "bob@x.io", "--login-age", "0"]);
    enroll_pin(&g, &c, &bob, PIN);
    assert_error(put_pin(&g, &c, &bob, WRONG), 401, 1236);
    assert_error(put_pin(&g, &c, &bob, WRONG), 429, 1198);
    let out = admin(&g, &["locks"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("user alice") && text.contains("address 127.0.0.1"),
        "users and addresses locked now, while the gateway runs: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = admin(&g, &["unlock", "--ip", "127.0.0.1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = admin(&g, &["--json", "locks"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !list.as_array().unwrap().iter().any(|l| l["Scope"] == "ip"),
        "{list}"
    );
    assert!(
        g.log().contains("for cli:"),
        "the audit line names the CLI user: {}",
        g.log()
    );

    g.stop();
    let out = admin(&g, &["user", "show", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("user alice") && text.contains("locked until"),
        "{text}"
    );
    assert!(text.contains("3 in a row"), "{text}");
    let out = admin(&g, &["--json", "user", "show", "alice"]);
    let a: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rfc3339(&a["LockedUntil"]),
        "the same shape from the store itself: {a}"
    );
    assert!(rfc3339(&a["PINSetAt"]), "{a}");
    // "Who is locked out?": the list of locks in force names alice.
    let out = admin(&g, &["locks"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("user alice: PIN and email codes locked until"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("stepgate admin user unlock alice"), "{text}");
    let out = admin(&g, &["--json", "locks"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mine: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["Uid"] == "alice")
        .collect();
    assert_eq!(mine.len(), 1, "{list}");
    assert_eq!(mine[0]["Scope"], "user");
    assert_eq!(mine[0]["Kind"], "pin");
    assert_eq!(mine[0]["Suspended"], false);
    assert!(mine[0]["LockedUntil"].is_string(), "{list}");

    let out = admin(&g, &["user", "unlock", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice: unlocked"));
    let out = admin(&g, &["unlock", "--ip", "127.0.0.1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = admin(&g, &["user", "show", "alice"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("not locked"));
    let out = admin(&g, &["locks"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no locks in force",
        "a lifted lock is not listed"
    );

    g.launch();
    let r = put_pin(&g, &c, &alice, PIN);
    assert_eq!(
        r.status(),
        200,
        "unlocked by the CLI: the step-up works at once"
    );

    g.stop();
    let out = admin(&g, &["user", "reset-pin", "alice"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("PIN removed"),
        "{out:?}"
    );
    g.launch();
    assert_error(put_pin(&g, &c, &alice, PIN), 403, 1235);
}

/// Two gateways on one Redis: `show` (API and CLI, while both run) sees the
/// PIN sessions opened on either, with their devices.
#[test]
fn show_reflects_pin_sessions_opened_on_two_gateways_sharing_redis() {
    common::redis::require_redis();
    let pair = common::redis::RedisPair::start(|_, store| GatewayOptions {
        store,
        extra_config: api_secret_config(),
        ..Default::default()
    });
    let c = client();
    let at = pair
        .a
        .token("alice", &["--email", "alice@x.io", "--login-age", "0"]);
    enroll_pin(&pair.a, &c, &at, PIN);
    let phone = "Mozilla/5.0 (Linux; Android 14; stepgate-admin phone)";
    let laptop = "Mozilla/5.0 (X11; Linux x86_64; stepgate-admin laptop)";
    browser_pin_session(&pair.a, &client(), &at, PIN, phone);
    browser_pin_session(&pair.b, &client(), &at, PIN, laptop);

    let a: Value = manage(&c, &pair.b, reqwest::Method::GET, "/alice")
        .json()
        .unwrap();
    let sessions = a["PinSessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{a}");
    let devices: Vec<&str> = sessions
        .iter()
        .map(|s| s["Device"].as_str().unwrap())
        .collect();
    assert!(devices.iter().any(|d| d.contains("Android")), "{devices:?}");
    assert!(
        devices
            .iter()
            .any(|d| d.contains("Linux") && !d.contains("Android")),
        "{devices:?}"
    );

    // The CLI on the same Redis, while both gateways run.
    let out = admin(&pair.a, &["--json", "user", "show", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["PinSessions"].as_array().unwrap().len(), 2, "{cli}");
    assert_eq!(cli["LastStepUp"]["Factor"], "pin", "{cli}");

    // Revoke from the CLI: the sessions end on both gateways.
    let out = admin(&pair.a, &["user", "revoke", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a: Value = manage(&c, &pair.a, reqwest::Method::GET, "/alice")
        .json()
        .unwrap();
    assert_eq!(a["PinSessions"].as_array().unwrap().len(), 0, "{a}");

    // A lock made on one gateway is listed by the other and by the CLI
    // (the registry on Redis), and gone from both once lifted.
    for _ in 0..5 {
        let _ = put_pin(&pair.a, &c, &at, WRONG);
    }
    let listed = |out: &std::process::Output| -> Vec<Value> {
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        v.as_array().unwrap().clone()
    };
    let api_list: Value = bearer(c.get(api(&pair.b, "/manage/locks")), API_SECRET)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        api_list
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["Uid"] == "alice"),
        "{api_list}"
    );
    let cli = listed(&admin(&pair.b, &["--json", "locks"]));
    assert!(cli.iter().any(|l| l["Uid"] == "alice"), "{cli:?}");
    let out = admin(&pair.b, &["user", "unlock", "alice"]);
    assert!(out.status.success());
    let cli = listed(&admin(&pair.a, &["--json", "locks"]));
    assert!(!cli.iter().any(|l| l["Uid"] == "alice"), "{cli:?}");
}

/// A memory store lives in the gateway's process: `stepgate admin` cannot
/// see it on its own and says so, instead of answering "not locked" from an
/// empty store of its own; with `api.secret` it asks the running gateway.
#[test]
fn admin_on_a_memory_store_asks_the_running_gateway_or_says_it_cannot() {
    let with_api = Gateway::start_with(GatewayOptions {
        extra_config: format!(
            "{}lockout:\n  max_failures: 3\n  window: 10m\n  duration: 10m\n",
            api_secret_config()
        ),
        ..Default::default()
    });
    let c = client();
    let alice = with_api.token("alice", &["--email", "alice@x.io", "--login-age", "0"]);
    enroll_pin(&with_api, &c, &alice, PIN);
    lock(&with_api, &c, &alice);
    let out = admin(&with_api, &["user", "show", "alice", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(a["IsPINSet"], true, "{a}");
    assert!(
        a["LockedUntil"].as_str().is_some(),
        "the gateway's lock: {a}"
    );

    let without = Gateway::start();
    let out = admin(&without, &["user", "show", "alice"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("store.kind: memory") && stderr.contains("api.secret"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "no answer from an empty store of its own"
    );
}
