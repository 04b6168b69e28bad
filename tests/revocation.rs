//! Step-down: `POST /.stepgate/api/manage/account/{uid}/invalidate` (API
//! secret) ends a user's step-ups, on one gateway and, through Redis pub/sub,
//! on every gateway sharing the store, at once.

mod common;

use std::time::{Duration, Instant};

use common::api::{api_config, api_get};
use common::redis::RedisPair;
use common::*;

const API: &str = "api-secret-for-tests-0123456789abcdef";

/// Enroll a PIN and step up on `g`; returns (access token, step-up token).
fn step_up(g: &Gateway, sub: &str) -> (String, String) {
    let at = g.token(sub, &[]);
    enroll_pin(g, &client(), &at, "2580");
    pin_step_up(g, &at)
}

fn pin_step_up(g: &Gateway, at: &str) -> (String, String) {
    let r = client()
        .put(g.url("/.stepgate/api/stepup/pin"))
        .bearer_auth(at)
        .body(r#"{"PIN":"2580"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    (
        at.to_string(),
        v["SecondFactorValidationToken"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

fn admin(g: &Gateway, at: &str, su: &str) -> u16 {
    api_get(g, &client(), "/admin/x", at, su).status().as_u16()
}

fn invalidate(g: &Gateway, uid: &str, secret: &str) -> reqwest::blocking::Response {
    client()
        .post(g.url(&format!("/.stepgate/api/manage/account/{uid}/invalidate")))
        .bearer_auth(secret)
        .send()
        .unwrap()
}

#[test]
fn invalidation_ends_the_users_step_ups_and_a_new_one_works_at_once() {
    let g = Gateway::start_with(GatewayOptions {
        extra_config: api_config(API),
        ..Default::default()
    });
    let (at, su) = step_up(&g, "alice");
    let (bob_at, bob_su) = step_up(&g, "bob");
    assert_eq!(admin(&g, &at, &su), 200);
    assert_eq!(
        invalidate(&g, "alice", "wrong-secret-wrong-secret-wrong-secret").status(),
        401,
        "the API secret is required"
    );
    assert_eq!(admin(&g, &at, &su), 200, "a refused call changes nothing");
    let r = invalidate(&g, "alice", API);
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().unwrap()["IsPosted"], true);
    let r = api_get(&g, &client(), "/admin/x", &at, &su);
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("revoked"));
    assert_eq!(
        admin(&g, &bob_at, &bob_su),
        200,
        "other users keep their step-ups"
    );
    // The back-channel check agrees.
    let v: serde_json::Value = client()
        .post(g.url("/.stepgate/api/stepup/validate"))
        .bearer_auth(API)
        .body(format!(
            r#"{{"secondfactorvalidationtoken":"{su}","uid":"alice"}}"#
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["IsValid"], false);
    // Stepping up again right away counts.
    let (_, fresh) = pin_step_up(&g, &at);
    assert_eq!(admin(&g, &at, &fresh), 200);
    assert!(g.log().contains("step_down"), "audited");
}

#[test]
fn an_invalidation_survives_a_restart_of_the_gateway() {
    let mut g = Gateway::start_with(GatewayOptions {
        extra_config: api_config(API),
        // 2 s, not 250 ms: not a test of the bound (a loaded machine).
        store: "  kind: embedded\n  path: store.redb\n  timeout: 2s\n".into(),
        ..Default::default()
    });
    let (at, su) = step_up(&g, "carol");
    assert_eq!(invalidate(&g, "carol", API).status(), 200);
    g.stop();
    g.launch();
    assert_eq!(admin(&g, &at, &su), 401);
}

#[test]
fn an_invalidation_on_one_gateway_holds_on_another_within_a_second() {
    let p = RedisPair::start(|_, store| GatewayOptions {
        extra_config: api_config(API),
        store,
        ..Default::default()
    });
    let (a, b) = (&p.a, &p.b);
    let (at, su) = step_up(a, "dave");
    assert_eq!(admin(b, &at, &su), 200, "B accepts A's step-up");
    assert_eq!(invalidate(a, "dave", API).status(), 200);
    let start = Instant::now();
    let mut status = 200;
    while start.elapsed() < Duration::from_secs(1) {
        status = admin(b, &at, &su);
        if status == 401 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        status, 401,
        "B refused the revoked step-up within one second"
    );
    // A gateway started later learns it from the store.
    let c = p.another();
    assert_eq!(admin(&c, &at, &su), 401);
}
