//! The email-OTP step-up over real sockets: the real `stepgate serve` in
//! front of the real demo upstream, mailing through a real SMTP server
//! (Python's `aiosmtpd`, started and stopped by each test on a free port)
//! whose maildir the tests read to learn the code, exactly as a user reads
//! their inbox. Covers both modes (without MFA, MFA with enrollment), the
//! send limits (cooldown, hourly cap), burning, replay, forged addresses,
//! unverified primary addresses, SMTP outages and refusals, metrics and the
//! folder (`dir`) mailer.
//!
//! Missing `python3` or `aiosmtpd` is a failure, never a skip: the README's
//! test command, `scripts/test.sh`, installs them.

mod common;

use common::metrics::{metric, metrics_config};
use common::smtp::{Handler, SmtpServer};
use common::*;

use std::time::Duration;

use reqwest::blocking::{Client, Response};

const POLICY: &str = r#"
default: authenticated
rules:
  - name: public
    match: { path: "/public/**" }
    require: none
  - name: mail-only
    match: { path: "/mail/**" }
    require: step_up
    step_up: { methods: [email_otp], max_age: 5m }
  - name: either
    match: { path: "/either/**" }
    require: step_up
    step_up: { methods: [pin, email_otp], max_age: 5m }
"#;

/// The site name the mails must carry.
const SITE: &str = "Acme Intranet";
/// The user's addresses: the primary one, and a second one.
const A: &str = "alice@x.test";
const A_MASKED: &str = "a***e@x.test";
const B: &str = "bert@x.test";
const B_MASKED: &str = "b***t@x.test";
const PIN: &str = "2580";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A gateway with the email policy, a site title and `extra` config.
fn gateway(extra: &str) -> Gateway {
    Gateway::start_with(GatewayOptions {
        policy: POLICY.to_string(),
        extra_config: format!("pages:\n  title: \"{SITE}\"\n{extra}"),
        ..Default::default()
    })
}

/// What a response said, read once.
struct Answer {
    status: u16,
    location: String,
    su: Option<String>,
    retry_after: Option<String>,
    body: String,
}

fn answer(r: Response) -> Answer {
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let su = set_cookie(&r, "stepgate_su");
    Answer {
        status: r.status().as_u16(),
        location,
        su,
        retry_after,
        body: r.text().unwrap(),
    }
}

/// A signed-in browser user: a first-factor token and a client.
struct User<'a> {
    g: &'a Gateway,
    c: Client,
    at: String,
}

impl<'a> User<'a> {
    /// A user with both addresses (`A` primary) and a fresh login.
    fn new(g: &'a Gateway, sub: &str) -> User<'a> {
        User::with_args(g, sub, &[])
    }

    fn with_args(g: &'a Gateway, sub: &str, extra: &[&str]) -> User<'a> {
        let mut args = vec!["--email", A, "--email", B];
        args.extend_from_slice(extra);
        User::with_token(g, g.token(sub, &args))
    }

    fn with_token(g: &'a Gateway, at: String) -> User<'a> {
        User { g, c: client(), at }
    }

    fn cookie(&self) -> String {
        format!("access_token={}", self.at)
    }

    /// A browser GET (Accept: text/html) of a gateway path.
    fn get(&self, path: &str) -> Answer {
        answer(
            self.c
                .get(self.g.url(path))
                .header("Cookie", self.cookie())
                .header("Accept", "text/html")
                .send()
                .unwrap(),
        )
    }

    /// GET /.stepgate/email?return_to=…
    fn choose(&self, return_to: &str) -> Answer {
        self.get(&format!(
            "/.stepgate/email?return_to={}",
            urlencode(return_to)
        ))
    }

    /// The CSRF token of the address page (which must be offered).
    fn csrf(&self) -> String {
        let a = self.choose("/mail/x");
        assert_eq!(a.status, 200, "the address page is offered:\n{}", a.body);
        csrf_of(&a.body)
    }

    fn post(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        answer(
            self.c
                .post(self.g.url(path))
                .header("Cookie", self.cookie())
                .header("Accept", "text/html")
                .form(fields)
                .send()
                .unwrap(),
        )
    }

    /// POST /.stepgate/email/send
    fn send(&self, csrf: &str, email: &str, return_to: &str) -> Answer {
        self.post(
            "/.stepgate/email/send",
            &[("email", email), ("csrf", csrf), ("return_to", return_to)],
        )
    }

    /// POST /.stepgate/email/verify
    fn verify(&self, csrf: &str, otp: &str, return_to: &str) -> Answer {
        self.post(
            "/.stepgate/email/verify",
            &[("otp", otp), ("csrf", csrf), ("return_to", return_to)],
        )
    }

    /// An API request for `path` with the step-up token: the upstream's echo.
    fn reach(&self, path: &str, su: &str) -> serde_json::Value {
        let r = self
            .c
            .get(self.g.url(path))
            .header("Cookie", format!("{}; stepgate_su={su}", self.cookie()))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "the step-up opens {path}");
        r.json().unwrap()
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Assert the upstream saw an email-OTP step-up by `sub` under `rule`.
fn assert_otp_upstream(echo: &serde_json::Value, sub: &str, rule: &str) {
    assert_eq!(
        echoed(echo, "x-stepgate-amr").as_deref(),
        Some("otp"),
        "the upstream got X-Stepgate-Amr: otp; echo: {echo}"
    );
    assert_eq!(echoed(echo, "x-stepgate-user").as_deref(), Some(sub));
    assert_eq!(echoed(echo, "x-stepgate-rule").as_deref(), Some(rule));
}

/// A wrong code of the same length as `code`.
fn wrong_code(code: &str) -> String {
    code.chars()
        .map(|c| char::from(b'0' + ((c as u8 - b'0' + 1) % 10)))
        .collect()
}

/// Give a delivery that should not happen a moment to show up, then count.
fn settled_count(smtp: &SmtpServer) -> usize {
    std::thread::sleep(Duration::from_millis(500));
    smtp.messages().len()
}

/// Does the address page offer `address` (a radio input with that value)?
fn offers(html: &str, address: &str) -> bool {
    html.contains(&format!("value=\"{address}\""))
}

/// Unix seconds of `HH:MM:SS UTC on YYYY-MM-DD`.
fn parse_human_time(s: &str) -> i64 {
    let (clock, date) = s
        .split_once(" UTC on ")
        .unwrap_or_else(|| panic!("not `HH:MM:SS UTC on YYYY-MM-DD`: {s}"));
    let t: Vec<i64> = clock.split(':').map(|x| x.parse().unwrap()).collect();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]
}

/// The `until …` time on the code page.
fn code_page_expiry(html: &str) -> String {
    let i = html
        .find("It works once, until ")
        .expect("the code page says until when")
        + 21;
    html[i..].split(".</p>").next().unwrap().to_string()
}

// ---------------------------------------------------------------------------
// 1. Without MFA, end to end
// ---------------------------------------------------------------------------

#[test]
fn without_mfa_the_chosen_address_gets_the_code_and_the_upstream_sees_amr_otp() {
    let smtp = SmtpServer::start();
    let (metrics_yaml, mport) = metrics_config();
    let g = gateway(&format!("{}{metrics_yaml}", smtp.mail_config()));
    let u = User::with_args(&g, "u-1001", &["--sid", "sid-1001-secretish"]);
    let return_to = "/mail/report?q=1";

    // The protected route sends the browser to the challenge, which has only
    // one factor and so goes straight to the address page.
    let a = u.get(return_to);
    assert_eq!(a.status, 303, "a browser is sent to the challenge");
    assert!(
        a.location.starts_with("/.stepgate/challenge?"),
        "location: {}",
        a.location
    );
    let a = u.get(&a.location);
    assert_eq!(a.status, 303, "one factor: no choice to make");
    assert_eq!(
        a.location,
        format!("/.stepgate/email?return_to={}", urlencode(return_to))
    );
    let page = u.get(&a.location);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Get a code by email"), "{}", page.body);
    assert!(
        !page.body.contains("Verify your email address"),
        "no enrollment without MFA"
    );
    for (addr, masked) in [(A, A_MASKED), (B, B_MASKED)] {
        assert!(
            offers(&page.body, addr),
            "{addr} is offered:\n{}",
            page.body
        );
        assert!(
            page.body.contains(masked),
            "{addr} is labelled {masked}:\n{}",
            page.body
        );
    }
    let csrf = csrf_of(&page.body);

    // Choose the second address.
    let before = now();
    let a = u.send(&csrf, B, return_to);
    let after = now();
    assert_eq!(a.status, 303, "the send succeeds:\n{}", a.body);
    assert_eq!(
        a.location,
        format!("/.stepgate/email/verify?return_to={}", urlencode(return_to))
    );
    let code_page = u.get(&a.location);
    assert_eq!(code_page.status, 200);
    assert!(
        code_page.body.contains("id=\"otp\"") && code_page.body.contains("name=\"otp\""),
        "the code form:\n{}",
        code_page.body
    );
    assert!(
        code_page.body.contains(B_MASKED) && !code_page.body.contains(B),
        "the code page names the masked address only:\n{}",
        code_page.body
    );
    let expires = code_page_expiry(&code_page.body);

    // The mail: one message, to the chosen address only.
    let mails = smtp.wait_for_messages(1);
    assert_eq!(settled_count(&smtp), 1, "exactly one message");
    let m = &mails[0];
    let to = m.header("To").unwrap();
    assert!(
        to.contains(B) && !to.contains(A),
        "To: is the chosen address: {to}"
    );
    assert_eq!(m.header("X-RcptTo"), Some(B), "the envelope recipient");
    assert!(m.header("From").unwrap().contains("stepgate@gateway.test"));
    let code = m.code();
    assert_eq!(code.len(), 6, "a 6-digit code: {code}");
    let text = m.part("text/plain").unwrap();
    let html = m.part("text/html").unwrap();
    for part in [text, html] {
        assert!(part.contains(SITE), "the mail names the site:\n{part}");
        assert!(part.contains(&code), "the mail carries the code:\n{part}");
        assert!(
            part.contains("expires in 5 minutes") && part.contains(&expires),
            "the mail says when the code expires ({expires}):\n{part}"
        );
    }
    assert!(m.header("Subject").unwrap().contains(SITE));
    let at = parse_human_time(&expires);
    assert!(
        (before + 300 - 1..=after + 300 + 1).contains(&at),
        "the code expires 5 minutes after the send: {expires} ({at}), sent in [{before}, {after}]"
    );
    // Nothing else sensitive: no token, no other address, no secret, no
    // session id, no user id, no link carrying a token.
    let everything = format!("{}\n{}", m.raw, m.all_text());
    for (what, secret) in [
        ("the access token", u.at.as_str()),
        (
            "the access token's signature",
            u.at.rsplit('.').next().unwrap(),
        ),
        ("a JWT", "eyJ"),
        ("the CSRF token", csrf.as_str()),
        ("the other address", A),
        ("the signing secret", SIGNING_SECRET),
        ("the first-factor secret", FIRST_FACTOR_SECRET),
        ("the session id", "sid-1001-secretish"),
        ("the user id", "u-1001"),
        ("a link", "http"),
    ] {
        assert!(
            !everything.contains(secret),
            "the mail must not contain {what}:\n{everything}"
        );
    }

    // Enter the code: back to return_to with the step-up cookie.
    let a = u.verify(&csrf, &code, return_to);
    assert_eq!(a.status, 303, "the right code is accepted:\n{}", a.body);
    assert_eq!(a.location, return_to);
    let su = a.su.expect("the step-up cookie");
    let echo = u.reach(return_to, &su);
    assert_otp_upstream(&echo, "u-1001", "mail-only");
    assert_eq!(echo["path"].as_str(), Some(return_to), "echo: {echo}");

    assert_eq!(metric(mport, "stepgate_otp_sent_total"), 1.0);
    assert_eq!(metric(mport, "stepgate_otp_send_failures_total"), 0.0);
    assert_eq!(
        metric(
            mport,
            "stepgate_otp_verifications_total{outcome=\"success\"}"
        ),
        1.0
    );
}

/// RFC 5322 (3.6.4): every message SHOULD have a Message-ID; large mail
/// providers refuse or junk messages without one (Gmail answers
/// `550 5.7.1 … missing a valid Message-ID header`), and a relay may not add
/// it for mail from a remote client. A code that never arrives is a user
/// locked out of the protected route.
#[test]
fn the_code_mail_carries_a_message_id_and_a_date() {
    let smtp = SmtpServer::start();
    let g = gateway(&smtp.mail_config());
    let u = User::new(&g, "pat");
    let csrf = u.csrf();
    assert_eq!(u.send(&csrf, A, "/mail/x").status, 303);
    let m = &smtp.wait_for_messages(1)[0];
    assert!(m.header("Date").is_some(), "a Date header:\n{}", m.raw);
    let id = m.header("Message-ID").unwrap_or_default();
    assert!(
        id.starts_with('<') && id.ends_with('>') && id.contains('@'),
        "a Message-ID header (`<unique@host>`), found {id:?} in:\n{}",
        m.raw
    );
}

// ---------------------------------------------------------------------------
// 2. MFA mode: enroll once, then only verified addresses
// ---------------------------------------------------------------------------

#[test]
fn mfa_mode_enrolls_an_address_once_then_offers_only_the_verified_address() {
    let smtp = SmtpServer::start();
    // No cooldown: the same user sends twice in a few seconds.
    let g = gateway(&format!(
        "{}email_otp:\n  mode: mfa\n  resend_cooldown: 0s\n",
        smtp.mail_config()
    ));

    // A login that is not fresh cannot start an enrollment.
    let stale = User::with_args(&g, "carol", &["--login-age", "86400"]);
    let a = stale.choose("/mail/x");
    assert_eq!(a.status, 403, "enrollment needs a fresh login:\n{}", a.body);
    assert!(a.body.contains("Sign in again"), "{}", a.body);

    // First round: enrollment, with any address of the profile.
    let u1 = User::new(&g, "carol");
    let page = u1.choose("/mail/x");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("Verify your email address"),
        "the first round enrolls:\n{}",
        page.body
    );
    assert!(
        offers(&page.body, A) && offers(&page.body, B),
        "{}",
        page.body
    );
    let csrf = csrf_of(&page.body);
    let a = u1.send(&csrf, A, "/mail/x");
    assert_eq!(a.status, 303, "{}", a.body);
    let m = &smtp.wait_for_messages(1)[0];
    assert_eq!(m.header("X-RcptTo"), Some(A));
    let a = u1.verify(&csrf, &m.code(), "/mail/x");
    assert_eq!(a.status, 303, "the enrollment code verifies:\n{}", a.body);
    assert_eq!(a.location, "/mail/x");
    let su = a.su.expect("enrollment also steps up");
    assert_otp_upstream(&u1.reach("/mail/x", &su), "carol", "mail-only");

    // A later step-up in a new session offers only the verified address.
    let u2 = User::new(&g, "carol");
    assert_ne!(u2.at, u1.at);
    let page = u2.choose("/mail/y");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("Get a code by email") && !page.body.contains("Verify your email"),
        "a step-up, not an enrollment:\n{}",
        page.body
    );
    assert!(offers(&page.body, A), "{}", page.body);
    assert!(
        !offers(&page.body, B) && !page.body.contains(B_MASKED),
        "the unverified address is not offered:\n{}",
        page.body
    );
    let csrf = csrf_of(&page.body);
    let a = u2.send(&csrf, A, "/mail/y");
    assert_eq!(a.status, 303, "{}", a.body);
    let mails = smtp.wait_for_messages(2);
    let m = mails.last().unwrap();
    assert_eq!(m.header("X-RcptTo"), Some(A));
    let a = u2.verify(&csrf, &m.code(), "/mail/y");
    assert_eq!(a.status, 303, "{}", a.body);
    let su2 = a.su.expect("step-up cookie");
    assert_otp_upstream(&u2.reach("/mail/y", &su2), "carol", "mail-only");

    // Once an address is verified, an old login may step up with it.
    let stale = User::with_args(&g, "carol", &["--login-age", "86400"]);
    let page = stale.choose("/mail/z");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(offers(&page.body, A) && !offers(&page.body, B));
}

// ---------------------------------------------------------------------------
// 3. Resend cooldown
// ---------------------------------------------------------------------------

#[test]
fn a_second_send_within_the_cooldown_is_refused_and_sends_nothing() {
    let smtp = SmtpServer::start();
    let g = gateway(&smtp.mail_config());
    let u = User::new(&g, "dan");
    let csrf = u.csrf();
    let a = u.send(&csrf, A, "/mail/x");
    assert_eq!(a.status, 303, "{}", a.body);
    let first = smtp.wait_for_messages(1)[0].code();

    for addr in [A, B] {
        let a = u.send(&csrf, addr, "/mail/x");
        assert_eq!(
            a.status, 429,
            "a resend within 30 s is refused:\n{}",
            a.body
        );
        assert!(
            a.body.contains("A code was sent moments ago"),
            "the page says why:\n{}",
            a.body
        );
        assert!(
            a.body.contains("id=\"otp\""),
            "the code form for the pending code is shown:\n{}",
            a.body
        );
    }
    assert_eq!(settled_count(&smtp), 1, "no second mail");

    // The pending code still works.
    let a = u.verify(&csrf, &first, "/mail/x");
    assert_eq!(a.status, 303, "{}", a.body);
}

#[test]
fn with_a_one_second_cooldown_a_resend_works_after_a_second_and_replaces_the_code() {
    let smtp = SmtpServer::start();
    let g = gateway(&format!(
        "{}email_otp:\n  resend_cooldown: 1s\n",
        smtp.mail_config()
    ));
    let u = User::new(&g, "erin");
    let csrf = u.csrf();
    assert_eq!(u.send(&csrf, A, "/mail/x").status, 303);
    let first = smtp.wait_for_messages(1)[0].clone();
    std::thread::sleep(Duration::from_millis(1500));
    let a = u.send(&csrf, B, "/mail/x");
    assert_eq!(a.status, 303, "the cooldown is over:\n{}", a.body);
    let mails = smtp.wait_for_messages(2);
    assert_eq!(mails.len(), 2);
    let second = mails.iter().find(|m| m.path != first.path).unwrap();
    assert_eq!(second.header("X-RcptTo"), Some(B));
    let (c1, c2) = (first.code(), second.code());
    if c1 != c2 {
        let a = u.verify(&csrf, &c1, "/mail/x");
        assert_eq!(a.status, 401, "the first code was replaced:\n{}", a.body);
    }
    let a = u.verify(&csrf, &c2, "/mail/x");
    assert_eq!(a.status, 303, "the new code works:\n{}", a.body);
}

// ---------------------------------------------------------------------------
// 4. Hourly cap
// ---------------------------------------------------------------------------

#[test]
fn the_hourly_cap_refuses_the_third_send_with_too_many_codes() {
    let smtp = SmtpServer::start();
    // `0s` turns the cooldown off (the store treats a 0 TTL as already
    // expired), so only the hourly cap limits these sends.
    let g = gateway(&format!(
        "{}email_otp:\n  resend_cooldown: 0s\n  max_sends_per_hour: 2\n",
        smtp.mail_config()
    ));
    let u = User::new(&g, "fay");
    let csrf = u.csrf();
    assert_eq!(u.send(&csrf, A, "/mail/x").status, 303);
    assert_eq!(u.send(&csrf, B, "/mail/x").status, 303);
    let mails = smtp.wait_for_messages(2);
    for _ in 0..2 {
        let a = u.send(&csrf, A, "/mail/x");
        assert_eq!(a.status, 429, "the third send is over the cap:\n{}", a.body);
        assert!(a.body.contains("Too many codes"), "{}", a.body);
        let wait: i64 = a
            .retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .unwrap();
        // Up to an hour after the first send, whole seconds rounded up.
        assert!((1..=3601).contains(&wait), "Retry-After: {wait}");
    }
    assert_eq!(settled_count(&smtp), 2, "no third mail");
    // The refused send left the pending code alone.
    let last = mails
        .iter()
        .find(|m| m.header("X-RcptTo") == Some(B))
        .unwrap();
    let a = u.verify(&csrf, &last.code(), "/mail/x");
    assert_eq!(a.status, 303, "{}", a.body);
}

// ---------------------------------------------------------------------------
// 5. Burning after wrong codes; the shared lockout
// ---------------------------------------------------------------------------

#[test]
fn five_wrong_codes_burn_the_code_and_the_right_code_no_longer_works() {
    let smtp = SmtpServer::start();
    let g = gateway(&format!(
        "{}lockout:\n  max_failures: 100\n  ip_max_failures: 100\n",
        smtp.mail_config()
    ));
    let u = User::new(&g, "gus");
    let csrf = u.csrf();
    assert_eq!(u.send(&csrf, A, "/mail/x").status, 303);
    let code = smtp.wait_for_messages(1)[0].code();
    let wrong = wrong_code(&code);
    for left in (1..=4).rev() {
        let a = u.verify(&csrf, &wrong, "/mail/x");
        assert_eq!(a.status, 401, "a wrong code is a 401:\n{}", a.body);
        let want = format!("{left} {} left", if left == 1 { "try" } else { "tries" });
        assert!(
            a.body.contains("not right") && a.body.contains(&want),
            "the page says `{want}`:\n{}",
            a.body
        );
        assert!(a.body.contains("id=\"otp\""), "the form is offered again");
        assert!(a.su.is_none());
    }
    let a = u.verify(&csrf, &wrong, "/mail/x");
    assert_eq!(a.status, 400, "the fifth wrong code burns it:\n{}", a.body);
    assert!(a.body.contains("No valid code"), "{}", a.body);
    let a = u.verify(&csrf, &code, "/mail/x");
    assert_eq!(
        a.status, 400,
        "the right code no longer works once burned:\n{}",
        a.body
    );
    assert!(a.body.contains("No valid code"), "{}", a.body);
    assert!(a.su.is_none(), "no step-up cookie");
}

#[test]
fn wrong_codes_count_toward_the_pin_lockout() {
    let smtp = SmtpServer::start();
    let g = gateway(&format!(
        "{}email_otp:\n  resend_cooldown: 0s\n",
        smtp.mail_config()
    ));
    let u = User::new(&g, "hal");
    // Set a PIN first (fresh login).
    let setup = u.get("/.stepgate/pin/setup?return_to=/either/x");
    assert_eq!(setup.status, 200, "{}", setup.body);
    let csrf = csrf_of(&setup.body);
    let a = u.post(
        "/.stepgate/pin/setup",
        &[
            ("pin", PIN),
            ("pin_confirm", PIN),
            ("csrf", &csrf),
            ("return_to", "/either/x"),
        ],
    );
    assert_eq!(a.status, 303, "PIN set:\n{}", a.body);

    assert_eq!(u.send(&csrf, A, "/either/x").status, 303);
    let code = smtp.wait_for_messages(1)[0].code();
    let wrong = wrong_code(&code);
    for left in (1..=4).rev() {
        let a = u.verify(&csrf, &wrong, "/either/x");
        assert_eq!(a.status, 401, "{}", a.body);
        let want = format!("{left} {} left", if left == 1 { "try" } else { "tries" });
        assert!(a.body.contains(&want), "`{want}`:\n{}", a.body);
    }
    let a = u.verify(&csrf, &wrong, "/either/x");
    assert_eq!(a.status, 429, "the fifth failure locks:\n{}", a.body);
    assert!(a.body.contains("Too many attempts"), "{}", a.body);
    assert!(a.retry_after.is_some(), "Retry-After on the lockout");

    // The PIN is locked too, even the right one.
    let a = u.post(
        "/.stepgate/pin",
        &[("pin", PIN), ("csrf", &csrf), ("return_to", "/either/x")],
    );
    assert_eq!(a.status, 429, "the PIN shares the lockout:\n{}", a.body);
    assert!(a.body.contains("Too many attempts"), "{}", a.body);
    assert!(a.su.is_none());

    // And a new, right code is refused while locked.
    assert_eq!(u.send(&csrf, A, "/either/x").status, 303);
    let code = smtp.wait_for_messages(2).last().unwrap().code();
    let a = u.verify(&csrf, &code, "/either/x");
    assert_eq!(a.status, 429, "locked: even the right code:\n{}", a.body);
    assert!(a.su.is_none());
}

/// Run `f` on `n` threads released together; their answers, in thread order.
fn together<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A gateway on the embedded store (the production default), whose
/// operations really run concurrently (on blocking threads). A generous store
/// timeout keeps a busy machine from turning guesses into 503s, which would
/// hide what is tested here.
fn embedded_gateway(extra: &str) -> Gateway {
    Gateway::start_with(GatewayOptions {
        policy: POLICY.to_string(),
        extra_config: format!("pages:\n  title: \"{SITE}\"\n{extra}"),
        store: "  kind: embedded\n  path: \"store.redb\"\n  timeout: 10s\n".to_string(),
        ..Default::default()
    })
}

/// `max_tries` must hold when the guesses arrive at once, not only one by
/// one: a code that survives more than 5 wrong guesses is a code that can
/// be brute-forced faster than the design allows (with a lockout configured
/// above the default, the code's own tries are the only limit).
#[test]
fn concurrent_wrong_codes_still_burn_the_code_after_five_tries() {
    const N: usize = 16;
    let smtp = SmtpServer::start();
    let g = embedded_gateway(&format!(
        "{}lockout:\n  max_failures: 100\n  ip_max_failures: 100\n",
        smtp.mail_config()
    ));
    let u = User::new(&g, "quin");
    let csrf = u.csrf();
    assert_eq!(u.send(&csrf, A, "/mail/x").status, 303);
    let code = smtp.wait_for_messages(1)[0].code();
    let wrong = wrong_code(&code);
    let statuses = together(N, |_| {
        User::with_token(&g, u.at.clone())
            .verify(&csrf, &wrong, "/mail/x")
            .status
    });
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 400),
        "wrong codes answer 401 (tries left) or 400 (burned): {statuses:?}"
    );
    let a = u.verify(&csrf, &code, "/mail/x");
    assert_eq!(
        a.status, 400,
        "after {N} wrong guesses at once the code must be burned (max_tries 5), \
         but the right code was still accepted; answers to the guesses: {statuses:?}"
    );
    assert!(a.su.is_none(), "no step-up after {N} wrong guesses");
}

#[test]
fn concurrent_sends_send_one_code() {
    const N: usize = 8;
    let smtp = SmtpServer::start();
    let g = embedded_gateway(&smtp.mail_config());
    let u = User::new(&g, "rae");
    let csrf = u.csrf();
    let statuses = together(N, |_| {
        User::with_token(&g, u.at.clone())
            .send(&csrf, A, "/mail/x")
            .status
    });
    let sent = statuses.iter().filter(|s| **s == 303).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        (sent, refused),
        (1, N - 1),
        "one send, the others within the cooldown: {statuses:?}"
    );
    smtp.wait_for_messages(1);
    assert_eq!(settled_count(&smtp), 1, "one mail");
}

#[test]
fn concurrent_uses_of_the_right_code_step_up_once() {
    const N: usize = 8;
    let smtp = SmtpServer::start();
    let g = embedded_gateway(&smtp.mail_config());
    let u = User::new(&g, "sam");
    let csrf = u.csrf();
    assert_eq!(u.send(&csrf, A, "/mail/x").status, 303);
    let code = smtp.wait_for_messages(1)[0].code();
    let answers = together(N, |_| {
        let a = User::with_token(&g, u.at.clone()).verify(&csrf, &code, "/mail/x");
        (a.status, a.su.is_some())
    });
    let ok = answers.iter().filter(|(s, su)| *s == 303 && *su).count();
    // The others: 400 (already used), or 429 when more attempts are in
    // flight at once than the lockout allows (attempts are reserved).
    let refused = answers
        .iter()
        .filter(|(s, su)| (*s == 400 || *s == 429) && !*su)
        .count();
    assert_eq!(
        (ok, refused),
        (1, N - 1),
        "a code is used once, even at once: {answers:?}"
    );
}

// ---------------------------------------------------------------------------
// 6. Replay
// ---------------------------------------------------------------------------

#[test]
fn a_used_code_cannot_be_replayed() {
    let smtp = SmtpServer::start();
    let g = gateway(&smtp.mail_config());
    let u = User::new(&g, "ivy");
    let csrf = u.csrf();
    assert_eq!(u.send(&csrf, A, "/mail/x").status, 303);
    let code = smtp.wait_for_messages(1)[0].code();
    let a = u.verify(&csrf, &code, "/mail/x");
    assert_eq!(a.status, 303);
    assert!(a.su.is_some());
    let a = u.verify(&csrf, &code, "/mail/x");
    assert_eq!(a.status, 400, "a used code is refused:\n{}", a.body);
    assert!(a.body.contains("No valid code"), "{}", a.body);
    assert!(a.su.is_none(), "no step-up cookie for a replay");
    // Replayed from another session of the same user: refused as well.
    let other = User::new(&g, "ivy");
    let a = other.verify(&other.csrf(), &code, "/mail/x");
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.su.is_none());
}

// ---------------------------------------------------------------------------
// 7. Addresses outside the profile
// ---------------------------------------------------------------------------

#[test]
fn an_address_outside_the_profile_is_refused_and_nothing_is_sent() {
    let smtp = SmtpServer::start();
    let g = gateway(&smtp.mail_config());
    let u = User::new(&g, "jo");
    let csrf = u.csrf();
    for forged in [
        "mallory@evil.test",
        "alice@x.test.evil.test",
        "alice@x.test, mallory@evil.test",
        "alice@x.test\r\nBcc: mallory@evil.test",
        "Alice <mallory@evil.test>",
        "",
    ] {
        let a = u.send(&csrf, forged, "/mail/x");
        assert_eq!(
            a.status, 400,
            "{forged:?} is not an address of the profile:\n{}",
            a.body
        );
        assert!(
            a.body.contains("Choose one of the addresses listed"),
            "{}",
            a.body
        );
        assert!(
            !a.body.contains("mallory"),
            "the forged value is not echoed"
        );
    }
    assert_eq!(settled_count(&smtp), 0, "nothing was sent");
    assert!(
        !smtp.maildir.join("new").exists()
            || std::fs::read_dir(smtp.maildir.join("new"))
                .unwrap()
                .next()
                .is_none(),
        "the maildir stays empty"
    );
    // Nothing was consumed either: a real send works at once.
    let a = u.send(&csrf, A, "/mail/x");
    assert_eq!(a.status, 303, "{}", a.body);
    let mails = smtp.wait_for_messages(1);
    assert_eq!(mails[0].header("X-RcptTo"), Some(A));
}

// ---------------------------------------------------------------------------
// 8. SMTP down or refusing
// ---------------------------------------------------------------------------

#[test]
fn smtp_down_answers_502_consumes_nothing_and_a_send_works_once_the_server_is_back() {
    let port = free_port(); // nothing listens there yet
    let (metrics_yaml, mport) = metrics_config();
    // Cap 1 an hour and the 30 s cooldown: any failed send that consumed a
    // send would make the later one a 429.
    let g = gateway(&format!(
        "{}email_otp:\n  max_sends_per_hour: 1\n{metrics_yaml}",
        smtp::smtp_mail_config(port)
    ));
    let u = User::new(&g, "kim");
    let csrf = u.csrf();
    for _ in 0..3 {
        let a = u.send(&csrf, A, "/mail/x");
        assert_eq!(a.status, 502, "the mail server is down:\n{}", a.body);
        assert!(a.body.contains("could not be sent"), "{}", a.body);
        assert!(a.body.contains("Nothing was used up"), "{}", a.body);
    }
    // No code is pending: the code page sends back to the address page.
    let a = u.get("/.stepgate/email/verify?return_to=%2Fmail%2Fx");
    assert_eq!(a.status, 303);
    assert!(
        a.location.starts_with("/.stepgate/email?"),
        "{}",
        a.location
    );
    // The gateway keeps serving.
    assert_eq!(u.get("/.stepgate/health").status, 200);
    assert_eq!(u.get("/public/x").status, 200);
    assert_eq!(u.choose("/mail/x").status, 200);
    assert_eq!(metric(mport, "stepgate_otp_send_failures_total"), 3.0);
    assert_eq!(metric(mport, "stepgate_otp_sent_total"), 0.0);

    // The server comes back on that port: a send works at once.
    let smtp = SmtpServer::start_on(port, Handler::Mailbox);
    let a = u.send(&csrf, A, "/mail/x");
    assert_eq!(a.status, 303, "nothing was consumed:\n{}", a.body);
    let code = smtp.wait_for_messages(1)[0].code();
    let a = u.verify(&csrf, &code, "/mail/x");
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(metric(mport, "stepgate_otp_sent_total"), 1.0);
    assert_eq!(metric(mport, "stepgate_otp_send_failures_total"), 3.0);
}

#[test]
fn a_refusing_smtp_server_answers_502_and_counts_send_failures() {
    let refusing = SmtpServer::start_on(free_port(), Handler::Refuse);
    let (metrics_yaml, mport) = metrics_config();
    let g = gateway(&format!("{}{metrics_yaml}", refusing.mail_config()));
    let u = User::new(&g, "lee");
    let csrf = u.csrf();
    let before = metric(mport, "stepgate_otp_send_failures_total");
    for i in 1..=2 {
        let a = u.send(&csrf, A, "/mail/x");
        assert_eq!(
            a.status, 502,
            "a 550 is a 502 (and no cooldown after a failure):\n{}",
            a.body
        );
        assert!(a.body.contains("could not be sent"), "{}", a.body);
        assert_eq!(
            metric(mport, "stepgate_otp_send_failures_total"),
            before + i as f64
        );
    }
    assert_eq!(metric(mport, "stepgate_otp_sent_total"), 0.0);
    // Still serving.
    assert_eq!(u.get("/.stepgate/health").status, 200);
}

/// A server that accepts the connection and never says a word: the send is
/// bounded by `mail.smtp.timeout`, answers 502, and the gateway serves
/// other requests while it waits.
#[test]
fn a_silent_smtp_server_times_out_into_a_502_while_the_gateway_keeps_serving() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accept and hold every connection, writing nothing.
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = held.clone();
        std::thread::spawn(move || {
            for c in silent.incoming().flatten() {
                held.lock().unwrap().push(c);
            }
        });
    }
    let (metrics_yaml, mport) = metrics_config();
    let g = gateway(&format!(
        "mail:\n  from: \"stepgate@gateway.test\"\n  smtp: {{ host: \"127.0.0.1\", port: {port}, tls: none, timeout: 3s }}\n{metrics_yaml}"
    ));
    let u = User::new(&g, "tom");
    let csrf = u.csrf();
    let (a, health) = std::thread::scope(|s| {
        let send = s.spawn(|| u.send(&csrf, A, "/mail/x"));
        // While the send waits on the silent server, other requests flow.
        let start = std::time::Instant::now();
        while held.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let health = client().get(g.url("/.stepgate/health")).send().unwrap();
        (send.join().unwrap(), health.status().as_u16())
    });
    assert_eq!(health, 200, "the gateway serves while a send waits");
    assert_eq!(
        a.status, 502,
        "no answer within the timeout is a 502:\n{}",
        a.body
    );
    assert!(a.body.contains("could not be sent"), "{}", a.body);
    assert!(!held.lock().unwrap().is_empty(), "the gateway did connect");
    assert_eq!(metric(mport, "stepgate_otp_send_failures_total"), 1.0);
    // Nothing consumed: the next send is tried again (and fails again).
    assert_eq!(u.send(&csrf, A, "/mail/x").status, 502);
}

// ---------------------------------------------------------------------------
// 9. email_verified: false
// ---------------------------------------------------------------------------

fn token_with(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(FIRST_FACTOR_SECRET.as_bytes()),
    )
    .unwrap()
}

fn claims(sub: &str, verified: bool) -> serde_json::Value {
    let n = now();
    serde_json::json!({
        "sub": sub, "iat": n, "exp": n + 3600, "sid": format!("sid-{sub}"),
        "email": A, "email_verified": verified,
        // The primary again, in other case: it must not slip back in.
        "emails": ["ALICE@X.TEST", B],
    })
}

#[test]
fn an_unverified_primary_address_is_not_offered_nor_sent_to() {
    let smtp = SmtpServer::start();
    let g = gateway(&smtp.mail_config());

    // Control: a verified primary is offered.
    let ok = User::with_token(&g, token_with(claims("mo", true)));
    let page = ok.choose("/mail/x");
    assert_eq!(page.status, 200);
    assert!(
        offers(&page.body, A) && offers(&page.body, B),
        "{}",
        page.body
    );

    let u = User::with_token(&g, token_with(claims("ned", false)));
    let page = u.choose("/mail/x");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(offers(&page.body, B), "{}", page.body);
    assert!(
        !page.body.contains(A) && !page.body.contains(A_MASKED),
        "the unverified primary is not offered:\n{}",
        page.body
    );
    let csrf = csrf_of(&page.body);
    for forged in [A, "ALICE@X.TEST", " alice@x.test "] {
        let a = u.send(&csrf, forged, "/mail/x");
        assert_eq!(a.status, 400, "{forged:?} is not sendable:\n{}", a.body);
    }
    assert_eq!(
        settled_count(&smtp),
        0,
        "nothing sent to the unverified address"
    );
    let a = u.send(&csrf, B, "/mail/x");
    assert_eq!(a.status, 303, "{}", a.body);
    let m = &smtp.wait_for_messages(1)[0];
    assert_eq!(m.header("X-RcptTo"), Some(B));
    let a = u.verify(&csrf, &m.code(), "/mail/x");
    assert_eq!(a.status, 303, "{}", a.body);
    assert_otp_upstream(&u.reach("/mail/x", &a.su.unwrap()), "ned", "mail-only");
}

// ---------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------

#[test]
fn a_code_no_longer_works_after_its_ttl() {
    let smtp = SmtpServer::start();
    let g = gateway(&format!("{}email_otp:\n  ttl: 2s\n", smtp.mail_config()));
    let u = User::new(&g, "uma");
    let csrf = u.csrf();
    assert_eq!(u.send(&csrf, A, "/mail/x").status, 303);
    let code = smtp.wait_for_messages(1)[0].code();
    std::thread::sleep(Duration::from_millis(3500));
    let a = u.verify(&csrf, &code, "/mail/x");
    assert_eq!(a.status, 400, "an expired code is refused:\n{}", a.body);
    assert!(a.body.contains("No valid code"), "{}", a.body);
    assert!(a.su.is_none());
}

/// The mail tells the lifetime in words a person reads: `1 minute`, not
/// `1 minutes`.
#[test]
fn a_one_minute_code_says_one_minute_in_the_mail() {
    let smtp = SmtpServer::start();
    let g = gateway(&format!("{}email_otp:\n  ttl: 1m\n", smtp.mail_config()));
    let u = User::new(&g, "vic");
    let csrf = u.csrf();
    assert_eq!(u.send(&csrf, A, "/mail/x").status, 303);
    let m = &smtp.wait_for_messages(1)[0];
    for mime in ["text/plain", "text/html"] {
        let part = m.part(mime).unwrap();
        assert!(
            part.contains("expires in 1 minute (") && !part.contains("1 minutes"),
            "{mime}: the expiry reads `expires in 1 minute (…)`:\n{part}"
        );
    }
}

// ---------------------------------------------------------------------------
// 10. The folder mailer
// ---------------------------------------------------------------------------

#[test]
fn the_dir_mailer_writes_one_eml_per_message_with_the_code() {
    let out = tempfile::tempdir().unwrap();
    let mailbox = out.path().join("mailbox"); // created by the gateway
    let g = gateway(&format!(
        "mail:\n  from: \"stepgate@gateway.test\"\n  dir: \"{}\"\nemail_otp:\n  resend_cooldown: 0s\n",
        mailbox.display()
    ));
    let u = User::new(&g, "ola");
    let csrf = u.csrf();
    assert_eq!(u.send(&csrf, A, "/mail/x").status, 303);
    let mails = smtp::wait_for_eml(1, || smtp::read_eml_dir(&mailbox, false));
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert!(
        m.path.extension().is_some_and(|e| e == "eml"),
        "{}",
        m.path.display()
    );
    assert!(m.header("To").unwrap().contains(A));
    let first = m.code();
    assert!(m.all_text().contains(SITE));

    assert_eq!(u.send(&csrf, B, "/mail/x").status, 303);
    let mails = smtp::wait_for_eml(2, || smtp::read_eml_dir(&mailbox, false));
    assert_eq!(mails.len(), 2, "one file per message");
    assert_eq!(
        smtp::read_eml_dir(&mailbox, true).len(),
        2,
        "no half-written files are left behind"
    );
    let second = mails
        .iter()
        .find(|x| x.header("To").unwrap().contains(B))
        .expect("the second message, to the second address");
    if second.code() != first {
        let a = u.verify(&csrf, &first, "/mail/x");
        assert_eq!(a.status, 401, "the second send replaced the first code");
    }
    let a = u.verify(&csrf, &second.code(), "/mail/x");
    assert_eq!(a.status, 303, "the code from the file works:\n{}", a.body);
    assert_otp_upstream(&u.reach("/mail/x", &a.su.unwrap()), "ola", "mail-only");
}
