//! `stepgate demo`, run as a user would: the session-check mode, where the
//! demo app keeps its own login form and session cookie.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn the_demo_shows_session_check_with_the_apps_own_login_form() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, app) = (free_port(), free_port());
    let demo = spawn(
        Command::new(BIN)
            .args(["demo", "--first-factor", "session-check"])
            .args(["--listen", &format!("127.0.0.1:{gw}")])
            .args(["--app", &format!("127.0.0.1:{app}")])
            .arg("--dir")
            .arg(dir.path().join("state")),
        dir.path().join("demo.log"),
    );
    wait_for_port(gw, Duration::from_secs(30));
    let out = demo.log_text();
    assert!(
        out.contains(&format!("http://127.0.0.1:{gw}/demo/signin")),
        "{out}"
    );
    let url = |p: &str| format!("http://127.0.0.1:{gw}{p}");
    let c = client();

    let r = c
        .get(url("/"))
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "signed out: to the app's own login form");
    assert!(
        header(&r, "location").contains("/demo/signin"),
        "{}",
        header(&r, "location")
    );
    let form = c.get(url("/demo/signin")).send().unwrap();
    assert_eq!(form.status(), 200);
    assert!(form.text().unwrap().contains("name=user"));
    let r = c
        .post(url("/demo/signin"))
        .form(&[("user", "ines")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let session = set_cookie(&r, "demo_session").expect("the app's own session cookie");
    let cookie = format!("demo_session={session}");

    let r = c.get(url("/")).header("Cookie", &cookie).send().unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().unwrap();
    assert_eq!(echoed(&echo, "x-stepgate-user").as_deref(), Some("ines"));
    let r = c
        .get(url("/admin"))
        .header("Cookie", &cookie)
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "the PIN step-up is asked for");
    assert!(header(&r, "www-authenticate").contains("insufficient_user_authentication"));

    let r = c
        .post(url("/demo/signout"))
        .header("Cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    std::thread::sleep(Duration::from_millis(10_500));
    let r = c
        .get(url("/"))
        .header("Cookie", &cookie)
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "signed out on the app: stepgate follows within its cache period"
    );
    drop(demo);
}
