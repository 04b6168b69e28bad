mod common;
use common::*;

#[test]
fn pin_step_up_end_to_end_over_real_sockets() {
    let g = Gateway::start();
    let c = client();
    let at = g.token("alice", &["--email", "alice@example.com"]);
    let cookie = format!("access_token={at}");
    // Enroll.
    let page = c
        .get(g.url("/.stepgate/pin/setup?return_to=/admin/x"))
        .header("Cookie", &cookie)
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let csrf = csrf_of(&page.text().unwrap());
    let r = c
        .post(g.url("/.stepgate/pin/setup"))
        .header("Cookie", &cookie)
        .form(&[
            ("pin", "2580"),
            ("pin_confirm", "2580"),
            ("csrf", &csrf),
            ("return_to", "/admin/x"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    // Challenge.
    let r = c
        .post(g.url("/.stepgate/pin"))
        .header("Cookie", &cookie)
        .form(&[("pin", "2580"), ("csrf", &csrf), ("return_to", "/admin/x")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/x");
    let su = set_cookie(&r, "stepgate_su").expect("step-up cookie");
    let r = c
        .get(g.url("/admin/x"))
        .header("Cookie", format!("{cookie}; stepgate_su={su}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().unwrap();
    let headers = echo["headers"].as_array().unwrap();
    let get = |n: &str| {
        headers
            .iter()
            .find(|h| h[0] == n)
            .map(|h| h[1].as_str().unwrap().to_string())
    };
    assert_eq!(get("x-stepgate-user").as_deref(), Some("alice"));
    assert_eq!(get("x-stepgate-amr").as_deref(), Some("pin"));
    assert_eq!(get("x-stepgate-rule").as_deref(), Some("admin"));
    assert!(
        !get("cookie").unwrap_or_default().contains("stepgate_su"),
        "the step-up cookie is not forwarded"
    );
}
