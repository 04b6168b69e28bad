//! Real-browser end-to-end tests: Debian's headless Chromium, driven over
//! WebDriver by `chromedriver`, goes through the real `stepgate serve` in
//! front of the real demo upstream, exactly as a user would: sign in through
//! the demo login link, open a protected page, set up a PIN, pass the PIN
//! challenge, and get locked out after too many wrong PINs.
//!
//! Missing `chromium` or `chromedriver` is a failure, never a skip: the
//! README's test command installs them.

mod common;

use common::browser::{
    demo_policy, screenshot_dir, submit_pin, upstream_header, Bench, ADMIN_PIN_RULE,
};
use common::*;

const PIN: &str = "2580";

/// A browser and a gateway with the demo login link and the `admin` rule.
fn bench() -> Bench {
    Bench::start(&demo_policy(ADMIN_PIN_RULE), "", false)
}

/// Sign in with the demo login link and check the demo app greets `sub`.
fn sign_in(b: &Bench, sub: &str) {
    let token = b.g.token(sub, &["--email", &format!("{sub}@example.com")]);
    b.browser
        .goto(&b.g.url(&format!("/demo/login?token={token}")));
    b.browser
        .wait_for_url("the demo app's home", |u| path_of(&b.g, u) == "/");
    b.browser.find("#app");
    assert_eq!(b.browser.text(&b.browser.find("#user")), sub);
}

/// Open /admin/x, land on the setup page, enroll `PIN` and land on the PIN
/// page. Returns after saving screenshots when `shots` is given.
fn enroll(b: &Bench, shots: Option<&str>) {
    let s = &b.browser;
    s.goto(&b.g.url("/admin/x"));
    let url = s.wait_for_url("the PIN setup page", |u| {
        path_of(&b.g, u).starts_with("/.stepgate/pin/setup")
    });
    assert!(
        url.ends_with("return_to=%2Fadmin%2Fx") || url.ends_with("return_to=/admin/x"),
        "the setup page keeps return_to: {url}"
    );
    let pin = s.find("#pin");
    let confirm = s.find("#pin_confirm");
    assert!(
        s.title().starts_with("Set up a PIN"),
        "title: {}",
        s.title()
    );
    if let Some(prefix) = shots {
        s.save_screenshot(&screenshot_dir().join(format!("{prefix}-1-pin-setup.png")));
    }
    s.send_keys(&pin, PIN);
    s.send_keys(&confirm, PIN);
    s.click(&s.find("#submit"));
    s.wait_for_url("the PIN page", |u| {
        let p = path_of(&b.g, u);
        p.starts_with("/.stepgate/pin?") || p == "/.stepgate/pin"
    });
    s.find("#pin");
    assert!(
        s.try_find("#pin_confirm").is_err(),
        "the PIN page asks for the PIN once"
    );
    assert!(
        s.title().starts_with("Enter your PIN"),
        "title: {}",
        s.title()
    );
}

#[test]
fn browser_enrolls_a_pin_and_passes_the_pin_challenge() {
    let b = bench();
    let s = &b.browser;
    sign_in(&b, "alice");
    enroll(&b, Some("enroll"));
    s.save_screenshot(&screenshot_dir().join("enroll-2-pin.png"));

    submit_pin(s, PIN);
    s.wait_for_url("/admin/x, the page asked for", |u| {
        path_of(&b.g, u) == "/admin/x"
    });
    s.find("#app");
    assert_eq!(s.response_status(), Some(200));
    assert_eq!(s.text(&s.find("#user")), "alice");
    assert_eq!(s.text(&s.find("#path")), "GET /admin/x");
    let header = |name: &str| upstream_header(s, name);
    assert_eq!(
        header("x-stepgate-amr").as_deref(),
        Some("pin"),
        "the upstream got X-Stepgate-Amr: pin; page:\n{}",
        s.source()
    );
    assert_eq!(header("x-stepgate-user").as_deref(), Some("alice"));
    assert_eq!(header("x-stepgate-rule").as_deref(), Some("admin"));
    let cookie = header("cookie").unwrap_or_default();
    assert!(
        cookie.contains("access_token=") && !cookie.contains("stepgate_su"),
        "the step-up cookie is not forwarded upstream: {cookie}"
    );
    s.save_screenshot(&screenshot_dir().join("enroll-3-app.png"));

    // The step-up is remembered: a second visit goes straight through.
    s.goto(&b.g.url("/admin/y"));
    s.wait_for_url("/admin/y", |u| path_of(&b.g, u) == "/admin/y");
    assert_eq!(s.text(&s.find("#path")), "GET /admin/y");
}

#[test]
fn browser_sees_error_and_lockout_pages() {
    let b = bench();
    let s = &b.browser;
    sign_in(&b, "bob");
    enroll(&b, None);

    // Four wrong PINs: each answer is the PIN page again, saying how many
    // tries are left.
    for left in (1..=4).rev() {
        submit_pin(s, "9731");
        let want = format!(
            "{left} {} left before a lockout",
            if left == 1 { "try" } else { "tries" }
        );
        let error = s.wait_for(&format!("the error \"{want}\""), || {
            s.text_of("#error").filter(|t| t.contains(&want))
        });
        assert!(error.contains("not right"), "error text: {error}");
        assert_eq!(s.response_status(), Some(401), "a wrong PIN answers 401");
        assert!(s.try_find("#pin").is_ok(), "the PIN form is offered again");
        if left == 4 {
            s.save_screenshot(&screenshot_dir().join("lockout-1-wrong-pin.png"));
        }
    }

    // The fifth wrong PIN locks the factor.
    submit_pin(s, "9731");
    let message = s.wait_for("the lockout page", || {
        s.text_of("#message")
            .filter(|t| t.contains("Try again after"))
    });
    assert!(message.contains("locked"), "lockout message: {message}");
    assert_eq!(s.response_status(), Some(429), "the lockout page is a 429");
    assert!(
        s.title().starts_with("Too many attempts"),
        "title: {}",
        s.title()
    );
    assert!(
        s.source().contains("Too many attempts"),
        "lockout heading; page:\n{}",
        s.source()
    );
    assert!(
        s.try_find("#pin").is_err(),
        "no PIN form on the lockout page"
    );
    s.save_screenshot(&screenshot_dir().join("lockout-2-locked.png"));

    // While locked, even the right PIN is refused and /admin stays closed.
    s.goto(&b.g.url("/admin/x"));
    s.wait_for_url("the PIN page", |u| {
        path_of(&b.g, u).starts_with("/.stepgate/pin")
    });
    submit_pin(s, PIN);
    let message = s.wait_for("the lockout page again", || {
        s.text_of("#message")
            .filter(|t| t.contains("Try again after"))
    });
    assert!(message.contains("locked"), "lockout message: {message}");
    assert_eq!(s.response_status(), Some(429), "still locked: 429");
    assert!(
        !path_of(&b.g, &s.current_url()).starts_with("/admin"),
        "a locked user does not reach /admin"
    );
}
