//! The PIN lifecycle pages in a real browser: Debian's headless Chromium,
//! driven over WebDriver by `chromedriver`, goes through the real
//! `stepgate serve` in front of the real demo upstream: forgot PIN by mail
//! (the mail read from the maildir of a real `aiosmtpd` SMTP server, its
//! reset link opened in the browser), the account page (change PIN, sign out
//! a device, end all confirmations), PIN login on a device that keeps a PIN
//! session, and the skippable PIN setup offer. Screenshots go to
//! `target/browser-screenshots/lifecycle-*.png`.
//!
//! Missing `chromium`, `chromedriver`, `python3` or `aiosmtpd` is a failure,
//! never a skip: the README's test command, `scripts/test.sh`, installs them.

mod common;

use common::browser::{
    demo_policy, screenshot_as, submit_pin, upstream_header, Bench, ADMIN_PIN_RULE,
};
use common::webdriver::Session;
use common::*;

const PIN: &str = "2580";
const NEW_PIN: &str = "7391";
const WRONG_PIN: &str = "9731";
const THIRD_PIN: &str = "4826";

/// A browser and a gateway with the demo login link and the `admin` rule,
/// the site title and `extra` config (and `mail:` pointing at a real SMTP
/// server when `mail`).
fn bench(extra: &str, mail: bool) -> Bench {
    let policy = demo_policy(ADMIN_PIN_RULE);
    Bench::start(
        &policy,
        &format!("pages:\n  title: \"Acme Intranet\"\n{extra}"),
        mail,
    )
}

fn screenshot(s: &Session, name: &str) {
    screenshot_as(s, &format!("lifecycle-{name}"));
}

fn email_of(sub: &str) -> String {
    format!("{sub}@x.test")
}

/// Open the demo login link with a fresh first-factor token for `sub` (a
/// new sign-in session; email and username claims, so the recovery profile
/// can find the user); returns once the browser left the login link.
fn open_login_link(b: &Bench, sub: &str) {
    open_login_link_with(b, sub, &[]);
}

/// Like `open_login_link`, in the identity provider's sign-in session `sid`
/// (a new token for the same session keeps its `sid`).
fn open_login_link_for_session(b: &Bench, sub: &str, sid: &str) {
    open_login_link_with(b, sub, &["--sid", sid]);
}

fn open_login_link_with(b: &Bench, sub: &str, extra: &[&str]) {
    let email = email_of(sub);
    let mut args = vec!["--email", &email, "--username", sub];
    args.extend_from_slice(extra);
    let token = b.g.token(sub, &args);
    b.browser
        .goto(&b.g.url(&format!("/demo/login?token={token}")));
    b.browser.wait_for_url("away from the login link", |u| {
        !path_of(&b.g, u).starts_with("/demo/login")
    });
}

/// Sign in and check the demo app greets `sub`.
fn sign_in(b: &Bench, sub: &str) {
    open_login_link(b, sub);
    let s = &b.browser;
    s.wait_for_url("the demo app's home", |u| path_of(&b.g, u) == "/");
    assert_eq!(s.text(&s.find("#user")), sub);
}

/// Sign out: forget every cookie of the gateway's site.
fn sign_out(b: &Bench) {
    b.browser.delete_all_cookies();
    assert_eq!(b.browser.cookie("access_token"), None, "signed out");
}

fn is_pin_page(g: &Gateway, u: &str) -> bool {
    let p = path_of(g, u);
    p.starts_with("/.stepgate/pin?") || p == "/.stepgate/pin"
}

/// Open /admin/x, land on the setup page, enroll `PIN`, land on the PIN page.
fn enroll(b: &Bench) {
    let s = &b.browser;
    s.goto(&b.g.url("/admin/x"));
    s.wait_for_url("the PIN setup page", |u| {
        path_of(&b.g, u).starts_with("/.stepgate/pin/setup")
    });
    let pin = s.find("#pin");
    let confirm = s.find("#pin_confirm");
    s.send_keys(&pin, PIN);
    s.send_keys(&confirm, PIN);
    s.click(&s.find("#submit"));
    s.wait_for_url("the PIN page", |u| is_pin_page(&b.g, u));
    s.find("#pin");
}

/// Fill the fields `(css, text)` of the current page, click `button` and
/// return once the page was replaced.
fn submit_form(s: &Session, fields: &[(&str, &str)], button: &str) {
    for (css, text) in fields {
        s.send_keys(&s.find(css), text);
    }
    let button = s.find(button);
    s.click(&button);
    s.wait_for(&format!("the form to be submitted ({fields:?})"), || {
        s.is_stale(&button).then_some(())
    });
}

/// On a PIN page (challenge or PIN login): submit a wrong PIN and check the
/// page answers 401 with `#error` and offers the form again.
fn wrong_pin_is_refused(s: &Session, pin: &str) {
    submit_pin(s, pin);
    let error = s.wait_for("the wrong-PIN error", || {
        s.text_of("#error").filter(|t| t.contains("left"))
    });
    assert!(error.contains("not right"), "error: {error}");
    assert_eq!(s.response_status(), Some(401), "a wrong PIN answers 401");
    s.find("#pin");
}

/// Wait for the upstream page of `path` and check it served `sub`.
fn upstream_page(b: &Bench, path: &str, sub: &str) {
    let s = &b.browser;
    s.wait_for_url(path, |u| path_of(&b.g, u) == path);
    s.find("#app");
    assert_eq!(s.response_status(), Some(200));
    assert_eq!(s.text(&s.find("#path")), format!("GET {path}"));
    assert_eq!(
        upstream_header(s, "x-stepgate-user").as_deref(),
        Some(sub),
        "the upstream got X-Stepgate-User; page:\n{}",
        s.source()
    );
    assert_eq!(s.text(&s.find("#user")), sub);
}

/// The reset link in a PIN reset mail, checked against its HTML part.
fn reset_link(b: &Bench, mail: &smtp::Eml) -> String {
    let text = mail
        .part("text/plain")
        .unwrap_or_else(|| panic!("no text/plain part in:\n{}", mail.raw));
    let prefix = b.g.url("/.stepgate/pin/reset?token=");
    let i = text
        .find(&prefix)
        .unwrap_or_else(|| panic!("no {prefix}… link in the text part:\n{text}"));
    let link: String = text[i..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    assert!(link.len() > prefix.len(), "the link has a token: {link}");
    let html = mail.part("text/html").expect("an HTML part");
    assert!(
        unescape_html(html).contains(&format!("href=\"{link}\"")),
        "the HTML part links to {link}:\n{html}"
    );
    link
}

/// Decode the character references of HTML text (`&amp;`, `&#x2f;`, …), as
/// a mail client does before following a link.
fn unescape_html(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let decoded = rest.find(';').and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn browser_resets_a_forgotten_pin_with_the_link_from_the_mail() {
    let b = bench("pin:\n  forgot: link\n", true);
    let s = &b.browser;
    let smtp = b.smtp.as_ref().unwrap();

    // Enroll and step up once: the recovery profile now knows alice's
    // address, and this device keeps a PIN session.
    const SID: &str = "alice-idp-session";
    open_login_link_for_session(&b, "alice", SID);
    upstream_page(&b, "/", "alice");
    enroll(&b);
    assert_eq!(
        s.attribute(&s.find("a#forgot"), "href").as_deref(),
        Some("/.stepgate/pin/forgot"),
        "the PIN page links to the forgot page"
    );
    submit_pin(s, PIN);
    upstream_page(&b, "/admin/x", "alice");
    assert!(s.cookie("stepgate_ps").is_some(), "a device PIN session");

    // Signed out of the identity provider (the first-factor cookie is
    // gone); the device still remembers alice for a PIN login.
    s.delete_cookie("access_token");
    s.goto(&b.g.url("/reports/q1"));
    s.wait_for_url("the PIN login page", |u| {
        path_of(&b.g, u).starts_with("/.stepgate/pin/login")
    });
    s.find("#pin");

    // Forgot the PIN: ask for a reset link.
    s.click(&s.find("a#forgot"));
    s.wait_for_url("the forgot page", |u| {
        path_of(&b.g, u) == "/.stepgate/pin/forgot"
    });
    assert!(
        s.title().starts_with("Forgot your PIN"),
        "title: {}",
        s.title()
    );
    screenshot(s, "forgot-1-form");

    // An unknown address gets the same answer (and no mail, checked at the
    // end), so the page tells nobody which accounts exist.
    submit_form(s, &[("#identifier", "nobody@x.test")], "#submit");
    let unknown = s.wait_for("the forgot answer", || s.text_of("p#message"));
    assert!(
        unknown.contains("If an account matches, we sent a message"),
        "message: {unknown}"
    );
    assert_eq!(s.response_status(), Some(200));

    s.goto(&b.g.url("/.stepgate/pin/forgot"));
    submit_form(s, &[("#identifier", &email_of("alice"))], "#submit");
    let message = s.wait_for("the forgot answer", || s.text_of("p#message"));
    assert_eq!(message, unknown, "the same answer for a known address");
    assert_eq!(s.response_status(), Some(200));
    assert!(s.try_find("#identifier").is_err(), "no form on the answer");
    screenshot(s, "forgot-2-sent");

    // The mail arrives at the real SMTP server, to alice.
    let mails = s.wait_for("the reset mail in the maildir", || {
        Some(smtp.messages()).filter(|m| !m.is_empty())
    });
    assert_eq!(mails.len(), 1, "one mail");
    let mail = &mails[0];
    assert_eq!(mail.header("X-RcptTo"), Some(email_of("alice").as_str()));
    assert_eq!(
        mail.header("Subject"),
        Some("Reset your Acme Intranet PIN"),
        "subject"
    );
    let link = reset_link(&b, mail);

    // The link from the mail: choose a new PIN.
    s.goto(&link);
    assert!(
        s.title().starts_with("Choose a new PIN"),
        "title: {}; page:\n{}",
        s.title(),
        s.source()
    );
    assert_eq!(s.response_status(), Some(200));
    screenshot(s, "forgot-3-reset-form");

    // Two different PINs, then a weak one: the form again, with an error,
    // and the link still works.
    for (pin, confirm, want) in [(NEW_PIN, THIRD_PIN, "differ"), ("1111", "1111", "")] {
        submit_form(s, &[("#pin", pin), ("#pin_confirm", confirm)], "#submit");
        let error = s.wait_for("the reset form's error", || s.text_of("#error"));
        assert!(error.contains(want), "error for {pin}/{confirm}: {error}");
        assert_eq!(s.response_status(), Some(400), "{pin}/{confirm} is refused");
        s.find("#pin");
    }
    submit_form(
        s,
        &[("#pin", NEW_PIN), ("#pin_confirm", NEW_PIN)],
        "#submit",
    );
    let heading = s.wait_for("the reset answer", || s.text_of("h1"));
    assert_eq!(heading, "Your PIN was reset", "page:\n{}", s.source());
    assert_eq!(s.response_status(), Some(200));
    screenshot(s, "forgot-4-reset-done");

    // The reset ended this device's PIN session: no PIN login any more.
    s.goto(&b.g.url("/reports/q1"));
    let heading = s.wait_for("the sign-in page", || s.text_of("h1"));
    assert_eq!(heading, "Please sign in", "page:\n{}", s.source());
    assert_eq!(s.response_status(), Some(401));
    assert!(s.try_find("#pin").is_err(), "no PIN login after a reset");
    assert_eq!(
        s.cookie("stepgate_ps"),
        None,
        "the ended PIN session's cookie is cleared"
    );

    // Signed in again, in the same identity-provider session: the reset
    // ended the earlier confirmation, so /admin asks for the PIN; the old
    // PIN is refused, the new one opens /admin/x.
    open_login_link_for_session(&b, "alice", SID);
    upstream_page(&b, "/", "alice");
    s.goto(&b.g.url("/admin/x"));
    s.wait_for_url("the PIN page", |u| is_pin_page(&b.g, u));
    wrong_pin_is_refused(s, PIN);
    submit_pin(s, NEW_PIN);
    upstream_page(&b, "/admin/x", "alice");
    assert_eq!(upstream_header(s, "x-stepgate-amr").as_deref(), Some("pin"));

    // The link works once.
    s.goto(&link);
    let heading = s.wait_for("the used-link page", || s.text_of("h1"));
    assert_eq!(
        heading,
        "This link was already used",
        "page:\n{}",
        s.source()
    );
    assert_eq!(s.response_status(), Some(400));
    assert!(s.try_find("#pin").is_err(), "no PIN form on a used link");
    screenshot(s, "forgot-5-used-link");
    assert_eq!(smtp.messages().len(), 1, "no other mail was sent");
}

#[test]
fn browser_changes_the_pin_on_the_account_page() {
    let b = bench(
        "security_questions:\n  - { id: q1, question: \"Your first pet's name?\" }\n",
        false,
    );
    let s = &b.browser;
    sign_in(&b, "carol");
    enroll(&b);

    s.goto(&b.g.url("/.stepgate/account"));
    assert!(
        s.title().starts_with("Your security settings"),
        "title: {}",
        s.title()
    );
    s.find("form#change-pin");
    assert!(s.try_find("#no-pin").is_err(), "carol has a PIN");
    screenshot(s, "account-1");

    // A wrong current PIN: the account page again, with an error.
    submit_form(
        s,
        &[
            ("#old_pin", WRONG_PIN),
            ("#new_pin", NEW_PIN),
            ("#new_pin_confirm", NEW_PIN),
        ],
        "#change-submit",
    );
    let error = s.wait_for("the wrong-current-PIN error", || s.text_of("#error"));
    assert!(error.contains("current PIN is not right"), "error: {error}");
    assert_eq!(s.response_status(), Some(401));
    assert!(s.try_find("#notice").is_err(), "no notice with an error");
    screenshot(s, "account-2-wrong-pin");

    // New PINs that differ, then a weak one: refused, nothing changed.
    for (new, confirm) in [(NEW_PIN, THIRD_PIN), ("1111", "1111")] {
        submit_form(
            s,
            &[
                ("#old_pin", PIN),
                ("#new_pin", new),
                ("#new_pin_confirm", confirm),
            ],
            "#change-submit",
        );
        let error = s.wait_for("the change form's error", || s.text_of("#error"));
        assert!(!error.is_empty(), "an error for {new}/{confirm}");
        assert_eq!(s.response_status(), Some(400), "{new}/{confirm} is refused");
        assert!(s.try_find("#notice").is_err(), "no notice with an error");
    }

    // The right one: changed.
    submit_form(
        s,
        &[
            ("#old_pin", PIN),
            ("#new_pin", NEW_PIN),
            ("#new_pin_confirm", NEW_PIN),
        ],
        "#change-submit",
    );
    s.wait_for_url("the account page after the change", |u| {
        path_of(&b.g, u) == "/.stepgate/account?done=pin"
    });
    let notice = s.text(&s.find("#notice"));
    assert!(notice.contains("Your PIN was changed"), "notice: {notice}");
    assert!(s.try_find("#error").is_err(), "no error after the change");
    screenshot(s, "account-3-changed");

    // Security answers on the same page.
    let label = s.text(&s.find("label[for=q-q1]"));
    assert!(!label.contains("(answered)"), "not answered yet: {label}");
    // Carol has a PIN: the answers need it.
    submit_form(
        s,
        &[("#q-q1", "Rex"), ("#questions-pin", NEW_PIN)],
        "#questions-submit",
    );
    s.wait_for_url("the account page after saving answers", |u| {
        path_of(&b.g, u) == "/.stepgate/account?done=questions"
    });
    assert!(s
        .text(&s.find("#notice"))
        .contains("security answers were saved"));
    let label = s.text(&s.find("label[for=q-q1]"));
    assert!(label.contains("(answered)"), "answered now: {label}");

    // The PIN challenge takes the new PIN, not the old one.
    s.goto(&b.g.url("/admin/x"));
    s.wait_for_url("the PIN page", |u| is_pin_page(&b.g, u));
    wrong_pin_is_refused(s, PIN);
    submit_pin(s, NEW_PIN);
    upstream_page(&b, "/admin/x", "carol");
    assert_eq!(upstream_header(s, "x-stepgate-amr").as_deref(), Some("pin"));

    // That step-up opened a PIN session on this device; changing the PIN
    // again signs out other devices only, so this one stays listed.
    let sessions = account_sessions(&b);
    assert_eq!(sessions.len(), 1, "this device: {sessions:?}");
    assert!(sessions[0].contains("(this device)"), "{}", sessions[0]);
    submit_form(
        s,
        &[
            ("#old_pin", NEW_PIN),
            ("#new_pin", THIRD_PIN),
            ("#new_pin_confirm", THIRD_PIN),
        ],
        "#change-submit",
    );
    s.wait_for_url("the account page after the second change", |u| {
        path_of(&b.g, u) == "/.stepgate/account?done=pin"
    });
    let sessions = account_sessions(&b);
    assert_eq!(
        sessions.len(),
        1,
        "the PIN change kept this device's PIN session: {sessions:?}"
    );
    assert!(sessions[0].contains("(this device)"), "{}", sessions[0]);
}

/// Open the account page and return the text of its device list entries.
fn account_sessions(b: &Bench) -> Vec<String> {
    let s = &b.browser;
    s.goto(&b.g.url("/.stepgate/account"));
    s.find("h1");
    let mut out = Vec::new();
    while let Some(t) = s.text_of(&format!("li#session-{}", out.len() + 1)) {
        out.push(t);
    }
    assert_eq!(
        out.is_empty(),
        s.try_find("p#no-sessions").is_ok(),
        "p#no-sessions exactly when no device is listed; page:\n{}",
        s.source()
    );
    out
}

#[test]
fn browser_signs_out_a_device_and_ends_all_confirmations() {
    let b = bench("", false);
    let s = &b.browser;
    sign_in(&b, "dave");
    enroll(&b);
    submit_pin(s, PIN);
    upstream_page(&b, "/admin/x", "dave");
    assert!(
        s.cookie("stepgate_ps").is_some(),
        "the PIN step-up opened a device PIN session"
    );

    // The account page lists this device.
    let sessions = account_sessions(&b);
    assert_eq!(sessions.len(), 1, "one device: {sessions:?}");
    assert!(
        sessions[0].contains("(this device)"),
        "the entry marks this device: {}",
        sessions[0]
    );
    screenshot(s, "sessions-1-listed");

    // Sign out this device.
    s.click(&s.find("li#session-1 button.revoke"));
    s.wait_for_url("the account page after the sign-out", |u| {
        path_of(&b.g, u) == "/.stepgate/account?done=session"
    });
    assert!(s
        .text(&s.find("#notice"))
        .contains("That device was signed out"));
    s.find("p#no-sessions");
    assert!(s.try_find("li#session-1").is_err(), "the device is gone");
    assert_eq!(account_sessions(&b).len(), 0, "still gone after a reload");
    screenshot(s, "sessions-2-signed-out");

    // The step-up itself is still remembered...
    s.goto(&b.g.url("/admin/y"));
    upstream_page(&b, "/admin/y", "dave");

    // ...until every confirmation is ended.
    s.goto(&b.g.url("/.stepgate/account"));
    s.click(&s.find("#revoke-all-submit"));
    s.wait_for_url("the account page after ending everything", |u| {
        path_of(&b.g, u) == "/.stepgate/account?done=all"
    });
    assert!(s
        .text(&s.find("#notice"))
        .contains("Every confirmation and PIN session of yours was ended"));
    s.goto(&b.g.url("/admin/x"));
    s.wait_for_url("the PIN page again", |u| is_pin_page(&b.g, u));
    s.find("#pin");
    screenshot(s, "sessions-3-pin-again");

    // A new PIN step-up opens a new device session, which "end all" ends too.
    submit_pin(s, PIN);
    upstream_page(&b, "/admin/x", "dave");
    let sessions = account_sessions(&b);
    assert_eq!(sessions.len(), 1, "the new device session: {sessions:?}");
    s.click(&s.find("#revoke-all-submit"));
    s.wait_for_url("the account page after ending everything again", |u| {
        path_of(&b.g, u) == "/.stepgate/account?done=all"
    });
    s.find("p#no-sessions");
    assert!(s.try_find("li#session-1").is_err(), "no device listed");
    s.goto(&b.g.url("/admin/y"));
    s.wait_for_url("the PIN page once more", |u| is_pin_page(&b.g, u));
}

#[test]
fn browser_signs_in_with_the_pin_on_a_device_with_a_pin_session() {
    let b = bench("", false);
    let s = &b.browser;
    sign_in(&b, "erin");
    enroll(&b);
    submit_pin(s, PIN);
    upstream_page(&b, "/admin/x", "erin");
    assert!(
        s.cookie("stepgate_ps").is_some(),
        "the PIN step-up opened a device PIN session"
    );

    // The first factor is gone (as when its token expires): protected pages
    // now ask only for the PIN.
    s.delete_cookie("access_token");
    s.goto(&b.g.url("/reports/q3"));
    let url = s.wait_for_url("the PIN login page", |u| {
        path_of(&b.g, u).starts_with("/.stepgate/pin/login")
    });
    assert!(
        url.ends_with("return_to=%2Freports%2Fq3"),
        "the PIN login page keeps return_to: {url}"
    );
    assert!(
        s.title().starts_with("Welcome back"),
        "title: {}",
        s.title()
    );
    let intro = s.text(&s.find("main"));
    assert!(
        intro.contains("remembers you as e***n@x.test"),
        "the page says who the device remembers: {intro}"
    );
    s.find("a#forgot");
    screenshot(s, "login-1-form");

    // A wrong PIN: the form again, with an error.
    wrong_pin_is_refused(s, WRONG_PIN);
    assert!(
        path_of(&b.g, &s.current_url()).starts_with("/.stepgate/pin/login"),
        "still on the PIN login page"
    );
    screenshot(s, "login-2-wrong-pin");

    // The right PIN: the page asked for, as erin.
    submit_pin(s, PIN);
    upstream_page(&b, "/reports/q3", "erin");
    let session = s.cookie("stepgate_session").unwrap_or_default();
    assert!(
        session.starts_with("sgs."),
        "the PIN login set stepgate's own session: {session:?}"
    );
    let cookie = upstream_header(s, "cookie").unwrap_or_default();
    assert!(
        !cookie.contains("stepgate_session") && !cookie.contains("stepgate_ps"),
        "stepgate's cookies do not reach the upstream: {cookie}"
    );
    screenshot(s, "login-3-app");

    // The session opened by the PIN login keeps the user signed in.
    s.goto(&b.g.url("/reports/q4"));
    upstream_page(&b, "/reports/q4", "erin");

    // A step_up route without a first factor also goes to the PIN login.
    s.delete_cookie("stepgate_session");
    s.goto(&b.g.url("/admin/z"));
    let url = s.wait_for_url("the PIN login page for /admin/z", |u| {
        path_of(&b.g, u).starts_with("/.stepgate/pin/login")
    });
    assert!(url.ends_with("return_to=%2Fadmin%2Fz"), "return_to: {url}");
}

#[test]
fn browser_skips_the_optional_pin_setup_once() {
    let b = bench("pin:\n  offer_setup: true\n", false);
    let s = &b.browser;

    // Signing in lands on the app's home, an authenticated route: frank has
    // no PIN, so he is offered the setup first.
    open_login_link(&b, "frank");
    let url = s.wait_for_url("the PIN setup page", |u| {
        path_of(&b.g, u).starts_with("/.stepgate/pin/setup")
    });
    assert!(
        url.ends_with("return_to=%2F") || url.ends_with("return_to=/"),
        "the setup page keeps return_to: {url}"
    );
    assert!(
        s.title().starts_with("Set up a PIN"),
        "title: {}",
        s.title()
    );
    s.find("#pin");
    let skip = s.find("#skip");
    assert_eq!(s.text(&skip), "Not now");
    screenshot(s, "skip-1-offer");

    // Not now: back to the page asked for.
    s.click(&skip);
    upstream_page(&b, "/", "frank");

    // Later visits are not interrupted.
    s.goto(&b.g.url("/reports/q3"));
    upstream_page(&b, "/reports/q3", "frank");
    s.goto(&b.g.url("/"));
    upstream_page(&b, "/", "frank");

    // The choice is remembered by the gateway, not the browser: signed out
    // and in again, frank goes straight to the app.
    sign_out(&b);
    sign_in(&b, "frank");
    upstream_page(&b, "/", "frank");

    // Skipping set no PIN: the account page offers the setup.
    s.goto(&b.g.url("/.stepgate/account"));
    s.find("p#no-pin");
}
