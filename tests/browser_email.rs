//! The email-OTP step-up in a real browser: Debian's headless Chromium,
//! driven over WebDriver by `chromedriver`, signs in through the demo login
//! link, opens a route that needs an email code, picks an address on the real
//! page, reads the code from the maildir of a real SMTP server (`aiosmtpd`),
//! types a wrong code and then the right one, and lands on the upstream page,
//! which shows `x-stepgate-amr: otp`. Screenshots go to
//! `target/browser-screenshots/email-*.png`.
//!
//! Missing `chromium`, `chromedriver`, `python3` or `aiosmtpd` is a failure,
//! never a skip: the README's test command, `scripts/test.sh`, installs them.

mod common;

use common::browser::{demo_policy, screenshot_as, submit_field, upstream_header, Bench};
use common::webdriver::Session;
use common::*;

/// The rule `reports`: `/reports/**` needs an email-OTP step-up.
const REPORTS_RULE: &str = r#"  - name: reports
    match: { path: "/reports/**" }
    require: step_up
    step_up: { methods: [email_otp], max_age: 5m }
"#;

const A: &str = "alice@x.test";
const B: &str = "bert@x.test";

/// A browser, a real SMTP server and a gateway with the demo login link,
/// the `reports` rule and the site title, mailing through the server.
fn bench() -> Bench {
    let policy = demo_policy(REPORTS_RULE);
    Bench::start(&policy, "pages:\n  title: \"Acme Intranet\"\n", true)
}

fn screenshot(s: &Session, name: &str) {
    screenshot_as(s, &format!("email-{name}"));
}

#[test]
fn browser_completes_the_email_step_up_with_the_code_from_the_mailbox() {
    let b = bench();
    let s = &b.browser;

    // Sign in with the demo login link.
    let token = b.g.token("alice", &["--email", A, "--email", B]);
    s.goto(&b.g.url(&format!("/demo/login?token={token}")));
    s.wait_for_url("the demo app's home", |u| path_of(&b.g, u) == "/");
    assert_eq!(s.text(&s.find("#user")), "alice");

    // The protected page leads to the address page.
    s.goto(&b.g.url("/reports/q3"));
    let url = s.wait_for_url("the address page", |u| {
        path_of(&b.g, u).starts_with("/.stepgate/email?")
    });
    assert!(
        url.ends_with("return_to=%2Freports%2Fq3"),
        "the address page keeps return_to: {url}"
    );
    assert!(
        s.title().starts_with("Get a code by email"),
        "title: {}",
        s.title()
    );
    s.find("#email-1");
    s.find("#email-2");
    assert_eq!(
        s.text(&s.find("label[for=email-1]")),
        "a***e@x.test",
        "masked label"
    );
    assert_eq!(s.text(&s.find("label[for=email-2]")), "b***t@x.test");
    let checked = |id: &str| s.try_find(&format!("#{id}:checked")).is_ok();
    assert!(checked("email-1"), "the first address is preselected");
    // Choose the second address by clicking its label, as a person would.
    s.click(&s.find("label[for=email-2]"));
    assert!(
        checked("email-2") && !checked("email-1"),
        "the second is chosen"
    );
    screenshot(s, "1-choose");
    s.click(&s.find("#submit"));

    // The code page.
    s.wait_for_url("the code page", |u| {
        path_of(&b.g, u).starts_with("/.stepgate/email/verify")
    });
    s.find("#otp");
    assert!(
        s.title().starts_with("Enter the code"),
        "title: {}",
        s.title()
    );
    let sent = s.text(&s.find("#sent"));
    assert!(
        sent.contains("6-digit code to b***t@x.test"),
        "the page says where the code went: {sent}"
    );
    screenshot(s, "2-code");

    // The mail, read from the maildir: to the chosen address.
    let mails = b.smtp().wait_for_messages(1);
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].header("X-RcptTo"), Some(B));
    let code = mails[0].code();

    // A wrong code first: the form again, with the tries left.
    let wrong: String = code
        .chars()
        .map(|c| char::from(b'0' + ((c as u8 - b'0' + 1) % 10)))
        .collect();
    submit_field(s, "#otp", &wrong);
    let error = s.wait_for("the wrong-code message", || {
        s.text_of("#error").filter(|t| t.contains("left"))
    });
    assert!(
        error.contains("not right") && error.contains("4 tries left"),
        "error: {error}"
    );
    assert_eq!(s.response_status(), Some(401), "a wrong code answers 401");
    screenshot(s, "3-wrong-code");

    // The right code: back on the page asked for, stepped up by email.
    submit_field(s, "#otp", &code);
    s.wait_for_url("/reports/q3", |u| path_of(&b.g, u) == "/reports/q3");
    s.find("#app");
    assert_eq!(s.response_status(), Some(200));
    assert_eq!(s.text(&s.find("#path")), "GET /reports/q3");
    let header = |name: &str| upstream_header(s, name);
    assert_eq!(
        header("x-stepgate-amr").as_deref(),
        Some("otp"),
        "the upstream got X-Stepgate-Amr: otp; page:\n{}",
        s.source()
    );
    assert_eq!(header("x-stepgate-user").as_deref(), Some("alice"));
    assert_eq!(header("x-stepgate-rule").as_deref(), Some("reports"));
    let cookie = header("cookie").unwrap_or_default();
    assert!(
        !cookie.contains("stepgate_su"),
        "the step-up cookie is not forwarded upstream: {cookie}"
    );
    screenshot(s, "4-app");

    // The step-up is remembered for the rule's max_age.
    s.goto(&b.g.url("/reports/q4"));
    s.wait_for_url("/reports/q4", |u| path_of(&b.g, u) == "/reports/q4");
    assert_eq!(s.text(&s.find("#path")), "GET /reports/q4");
    assert_eq!(b.smtp().messages().len(), 1, "no second code was needed");
}
