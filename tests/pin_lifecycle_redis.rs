//! The PIN lifecycle across two gateways sharing one real Redis: every test
//! starts its own `redis-server` on a free loopback port and two gateways,
//! A and B, with the same config (same Redis, same signing and first-factor
//! secrets, same API secret, one folder for outgoing mail) except their
//! ports. Shown here: a PINAuthToken issued on one gateway is spent once on
//! the other; a device PIN session opened on A logs in on B and the `sgs.`
//! session it gives works on both; invalidating a session token, or a whole
//! account, on one gateway is honoured by the other within one second (the
//! only timed bound in this file, measured every 20 ms); changing the PIN on
//! A ends the user's other PIN session on B while the current one keeps
//! working; a reset link mailed through A works once, on B; the
//! security-answer lockout counts guesses on both gateways together; and with
//! Redis stopped, forgot, reset and change fail closed with 503 (1254) while
//! public routes keep flowing. Races, with requests to A and B released at
//! the same moment: one PINAuthToken, one reset link, and two PINAuthTokens
//! of one user, each spent once, with the losers told why.
//!
//! The tests in this file run one at a time (a lock), so that the one timed
//! bound is not measured while this file's other gateways hash PINs on the
//! same two cores.

mod common;

use common::api::{api, api_config, api_get, assert_forwarded_as};
use common::redis::RedisPair;
use common::*;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::blocking::{RequestBuilder, Response};
use serde_json::{json, Value};

const API: &str = "pin-lifecycle-api-secret-0123456789abcdef";
const PIN: &str = "2580";
const NEW_PIN: &str = "7391";
const OTHER_PIN: &str = "4826";
const WRONG_PIN: &str = "1397";
/// The device a PIN session is opened on, and another one.
const UA_PHONE: &str = "Mozilla/5.0 (Linux; Android 14; stepgate-test phone)";
const UA_LAPTOP: &str = "Mozilla/5.0 (X11; Linux x86_64; stepgate-test laptop)";

/// The issue's bound for an invalidation to hold on the other gateway.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);
const POLL_EVERY: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------
// Two gateways on one Redis
// ---------------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time (a failed test does not poison the others).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Redis, then A and B on it. The per-IP lockout is out of the way (all test
/// traffic comes from 127.0.0.1), so the per-user limit (5) is what counts.
/// The store timeout is 1 s, as in tests/redis.rs, for a loaded machine.
fn pair() -> RedisPair {
    RedisPair::start(|dir, store| {
        let extra_config = format!(
            "{}\
             lockout:\n  max_failures: 5\n  ip_max_failures: 1000\n\
             mail:\n  from: \"stepgate@gateway.test\"\n  dir: \"{}\"\n\
             security_questions:\n  - {{ id: q1, question: \"Name of your first pet?\" }}\n  - {{ id: q2, question: \"City you were born in?\" }}\n",
            api_config(API),
            mailbox(dir).display()
        );
        GatewayOptions {
            store: format!("{store}  timeout: 1s\n"),
            extra_config,
            ..Default::default()
        }
    })
}

/// Where both gateways write outgoing mail (`mail.dir`), in the pair's
/// directory `dir`.
fn mailbox(dir: &Path) -> PathBuf {
    dir.join("mailbox")
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// A JSON API answer.
struct Answer {
    status: u16,
    body: Value,
    text: String,
}

impl Answer {
    fn code(&self) -> Option<i64> {
        self.body["ErrorCode"].as_i64()
    }

    /// Assert the status and, for errors, the ErrorCode.
    fn expect(&self, status: u16, code: Option<i64>, what: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "{what}: expected {status} {code:?}, got {} {}",
            self.status,
            self.text
        );
    }

    fn str(&self, field: &str) -> String {
        self.body[field]
            .as_str()
            .unwrap_or_else(|| panic!("`{field}` in {}", self.text))
            .to_string()
    }
}

/// The answer to `r`, read once.
fn answer(r: Response) -> Answer {
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, body, text }
}

fn send(rb: RequestBuilder) -> Answer {
    answer(rb.send().expect("the gateway answers"))
}

/// POST /manage/pinauthtoken with the API secret.
fn issue_auth_token(g: &Gateway, uid: &str) -> String {
    let r = send(
        client()
            .post(api(g, "/manage/pinauthtoken"))
            .bearer_auth(API)
            .json(&json!({ "Uid": uid })),
    );
    r.expect(200, None, "PINAuthToken issued");
    assert!(r.body["ExpireIn"].is_string(), "ExpireIn: {}", r.text);
    r.str("PINAuthToken")
}

/// POST /pin/set/pinauthtoken?pinauthtoken=… {"PIN"} from device `ua`.
fn set_by_auth_token(g: &Gateway, token: &str, pin: &str, ua: &str) -> Answer {
    answer(common::api::set_by_auth_token(g, &client(), token, pin, ua))
}

/// POST /login/pin?session_token=… {"PIN"} from device `ua`.
fn pin_login(g: &Gateway, session_token: &str, pin: &str, ua: &str) -> Answer {
    answer(common::api::login_pin(g, &client(), session_token, pin, ua))
}

/// PIN login that must succeed; the `sgs.` access token.
fn login_ok(g: &Gateway, session_token: &str, pin: &str, ua: &str, uid: &str) -> String {
    let r = pin_login(g, session_token, pin, ua);
    r.expect(200, None, "PIN login");
    assert_eq!(r.body["Profile"]["Uid"], uid, "{}", r.text);
    assert!(r.body["expires_in"].is_string(), "{}", r.text);
    let at = r.str("access_token");
    assert!(at.starts_with("sgs."), "a stepgate session: {at}");
    at
}

/// Give `uid` a PIN with a PINAuthToken issued on `issuer` and spent on
/// `setter` from device `ua`; (session_token, access_token).
fn pin_by_auth_token(issuer: &Gateway, setter: &Gateway, uid: &str, ua: &str) -> (String, String) {
    let t = issue_auth_token(issuer, uid);
    let r = set_by_auth_token(setter, &t, PIN, ua);
    r.expect(200, None, "PIN set with the PINAuthToken");
    assert_eq!(r.body["IsPosted"], true, "{}", r.text);
    assert_eq!(r.body["Profile"]["Uid"], uid, "{}", r.text);
    assert!(r.body["session_expires_in"].is_string(), "{}", r.text);
    let access = r.str("access_token");
    assert!(access.starts_with("sgs."), "{access}");
    (r.str("session_token"), access)
}

/// GET /session_token/invalidate?session_token=…
fn invalidate_session(g: &Gateway, session_token: &str) -> Answer {
    send(
        client()
            .get(api(g, "/session_token/invalidate"))
            .query(&[("session_token", session_token)]),
    )
}

/// POST /manage/account/{uid}/invalidate with the API secret.
fn invalidate_account(g: &Gateway, uid: &str) -> Answer {
    send(
        client()
            .post(api(g, &format!("/manage/account/{uid}/invalidate")))
            .bearer_auth(API),
    )
}

/// PUT /stepup/pin with a first-factor token; the step-up token.
fn step_up(g: &Gateway, at: &str, pin: &str) -> String {
    let r = stepup_pin(g, at, pin);
    r.expect(200, None, "PIN step-up");
    r.str("SecondFactorValidationToken")
}

/// PUT /stepup/pin with a first-factor token.
fn stepup_pin(g: &Gateway, at: &str, pin: &str) -> Answer {
    answer(common::api::put_pin(g, &client(), at, pin))
}

/// An authenticated (not step-up) route with `Authorization: Bearer`.
fn app(g: &Gateway, bearer: &str) -> Response {
    client()
        .get(g.url("/app/x"))
        .bearer_auth(bearer)
        .send()
        .unwrap()
}

/// A step-up route with the access token and `X-Stepgate-Token`.
fn admin(g: &Gateway, at: &str, su: &str) -> Response {
    api_get(g, &client(), "/admin/x", at, su)
}

fn status(r: Response) -> u16 {
    r.status().as_u16()
}

/// Poll every 20 ms until each check says "refused"; the time each took
/// from `since`. Fails when one is not refused within the one-second bound.
fn refused_within_bound(since: Instant, checks: &[(&str, &dyn Fn() -> bool)]) -> Vec<Duration> {
    let mut took: Vec<Option<Duration>> = vec![None; checks.len()];
    loop {
        for (i, (_, refused)) in checks.iter().enumerate() {
            if took[i].is_none() && refused() {
                took[i] = Some(since.elapsed());
            }
        }
        if took.iter().all(Option::is_some) || since.elapsed() >= REVOCATION_BOUND {
            break;
        }
        std::thread::sleep(POLL_EVERY);
    }
    for (i, (what, _)) in checks.iter().enumerate() {
        match took[i] {
            Some(t) => assert!(
                t < REVOCATION_BOUND,
                "{what}: refused only after {t:?} (bound {REVOCATION_BOUND:?})"
            ),
            None => panic!("{what}: still accepted {REVOCATION_BOUND:?} after the invalidation"),
        }
    }
    took.into_iter().map(Option::unwrap).collect()
}

/// Run the requests at the same moment (a barrier), each on its own thread.
fn at_once<const N: usize>(f: [&(dyn Fn() -> Answer + Sync); N]) -> [Answer; N] {
    let barrier = std::sync::Barrier::new(N);
    let out: Vec<Answer> = std::thread::scope(|s| {
        let h: Vec<_> = f
            .iter()
            .map(|f| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    f()
                })
            })
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).collect()
    });
    match out.try_into() {
        Ok(a) => a,
        Err(_) => unreachable!("one answer per request"),
    }
}

/// Wait (not a timing claim: a liveness bound) until `f` holds.
fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// POST /pin/forgot/email.
fn forgot_email(g: &Gateway, email: &str) -> Answer {
    answer(common::api::forgot_email(g, &client(), email, None))
}

/// PUT /pin/reset/token.
fn reset_by_token(g: &Gateway, token: &str, pin: &str) -> Answer {
    answer(common::api::reset_by_token(g, &client(), token, pin))
}

/// PUT /pin/change with `Authorization: Bearer at`.
fn change_pin(g: &Gateway, at: &str, old: &str, new: &str) -> Answer {
    answer(common::api::change_pin(g, &client(), at, old, new))
}

/// PUT /pin/reset/securityanswer/email.
fn reset_by_answers(g: &Gateway, email: &str, answers: Value, pin: &str) -> Answer {
    send(
        client()
            .put(api(g, "/pin/reset/securityanswer/email"))
            .json(&json!({ "PIN": pin, "Email": email, "SecurityAnswer": answers })),
    )
}

/// The ResetToken of the reset link in the one message to `to` in the
/// mailbox, and the link's origin.
fn reset_link_token(mailbox: &std::path::Path, to: &str) -> (String, String) {
    let to_me = |m: &smtp::Eml| {
        let h = m.header("To").unwrap_or_default();
        h == to || h.contains(&format!("<{to}>"))
    };
    let mine: Vec<smtp::Eml> = smtp::wait_for_eml(1, || {
        smtp::read_eml_dir(mailbox, false)
            .into_iter()
            .filter(to_me)
            .collect()
    });
    assert_eq!(mine.len(), 1, "one message to {to}: {mine:?}");
    let text = mine[0].all_text();
    let marker = "/.stepgate/pin/reset?token=";
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("a reset link in the message:\n{text}"));
    let token: String = text[at + marker.len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '%'))
        .collect();
    assert!(!token.is_empty(), "a token in the link:\n{text}");
    let origin_start = text[..at].rfind("http").expect("an absolute link");
    (token, text[origin_start..at].to_string())
}

// ---------------------------------------------------------------------------
// 1. PINAuthToken: issued on A, spent once on B
// ---------------------------------------------------------------------------

#[test]
fn a_pin_auth_token_issued_on_a_sets_the_pin_on_b_exactly_once() {
    let _serial = serial();
    let p = pair();
    let uid = "alice";
    let token = issue_auth_token(&p.a, uid);

    let r = set_by_auth_token(&p.b, &token, PIN, UA_PHONE);
    r.expect(200, None, "B accepts A's PINAuthToken");
    assert_eq!(r.body["IsPosted"], true, "{}", r.text);
    assert_eq!(r.body["Profile"]["Uid"], uid, "{}", r.text);
    assert!(!r.str("session_token").is_empty());
    assert!(r.str("access_token").starts_with("sgs."), "{}", r.text);

    let again = set_by_auth_token(&p.a, &token, OTHER_PIN, UA_PHONE);
    again.expect(401, Some(1239), "the same PINAuthToken a second time, on A");
    let again = set_by_auth_token(&p.b, &token, OTHER_PIN, UA_PHONE);
    again.expect(401, Some(1239), "and a third time, on B");

    // The PIN set on B is the user's PIN on A too (one store).
    let at = p.a.token(uid, &[]);
    let su = step_up(&p.a, &at, PIN);
    assert_forwarded_as(admin(&p.b, &at, &su), "/admin/x", uid, "A's step-up on B");
    stepup_pin(&p.a, &at, OTHER_PIN).expect(401, Some(1236), "the refused second PIN was not set");
    // A new token for the same user cannot replace the PIN.
    let fresh = issue_auth_token(&p.b, uid);
    set_by_auth_token(&p.a, &fresh, OTHER_PIN, UA_PHONE).expect(
        400,
        Some(1247),
        "a PIN is already set",
    );
}

/// The same PINAuthToken spent on A and on B at the same moment: one PIN is
/// set, the other request is refused.
#[test]
fn a_pin_auth_token_spent_on_a_and_b_at_once_sets_one_pin() {
    let _serial = serial();
    let p = pair();
    let uid = "anneli";
    let token = issue_auth_token(&p.a, uid);
    let [ra, rb] = at_once([&|| set_by_auth_token(&p.a, &token, PIN, UA_PHONE), &|| {
        set_by_auth_token(&p.b, &token, OTHER_PIN, UA_PHONE)
    }]);
    let seen = [(ra.status, ra.code()), (rb.status, rb.code())];
    eprintln!("one PINAuthToken on A and B at once: {seen:?}");
    let (winner_pin, loser) = match (ra.status, rb.status) {
        (200, _) => (PIN, &rb),
        (_, 200) => (OTHER_PIN, &ra),
        _ => panic!("neither use succeeded: {} / {}", ra.text, rb.text),
    };
    loser.expect(401, Some(1239), "the other, simultaneous use");
    let at = p.b.token(uid, &[]);
    step_up(&p.b, &at, winner_pin);
}

/// Two PINAuthTokens for one user, spent on A and on B at the same moment:
/// the first sets the PIN, the other finds it set (400 1247). Both answering
/// 200 would leave one caller holding a PIN session for a PIN that is not
/// the user's.
#[test]
fn two_pin_auth_tokens_for_one_user_spent_at_once_set_one_pin() {
    let _serial = serial();
    let p = pair();
    const ROUNDS: usize = 3;
    let mut seen = Vec::new();
    let mut both = 0;
    for round in 0..ROUNDS {
        let uid = format!("ansgar{round}");
        let ta = issue_auth_token(&p.a, &uid);
        let tb = issue_auth_token(&p.b, &uid);
        let [ra, rb] = at_once([&|| set_by_auth_token(&p.a, &ta, PIN, UA_PHONE), &|| {
            set_by_auth_token(&p.b, &tb, OTHER_PIN, UA_LAPTOP)
        }]);
        seen.push([(ra.status, ra.code()), (rb.status, rb.code())]);
        let at = p.a.token(&uid, &[]);
        match (ra.status, rb.status) {
            (200, 200) => {
                both += 1;
                // Which of the two "set" PINs is the user's now?
                let works = [PIN, OTHER_PIN].map(|pin| stepup_pin(&p.a, &at, pin).status == 200);
                eprintln!(
                    "round {round}: both set; PIN {PIN} works: {}, PIN {OTHER_PIN} works: {}",
                    works[0], works[1]
                );
            }
            (200, _) => {
                rb.expect(400, Some(1247), "the other token");
                step_up(&p.b, &at, PIN);
            }
            (_, 200) => {
                ra.expect(400, Some(1247), "the other token");
                step_up(&p.a, &at, OTHER_PIN);
            }
            _ => panic!(
                "round {round}: neither token set a PIN: {} / {}",
                ra.text, rb.text
            ),
        }
    }
    eprintln!("two PINAuthTokens for one user at once, {ROUNDS} rounds: {seen:?}");
    assert_eq!(
        both, 0,
        "two PINAuthTokens for one user spent at once both answered 200 (each with a PIN \
         session) in {both} of {ROUNDS} rounds; only one PIN can be the user's: {seen:?}"
    );
}

// ---------------------------------------------------------------------------
// 2. A PIN session opened on A logs in on B; its session works on both
// ---------------------------------------------------------------------------

#[test]
fn a_pin_session_opened_on_a_logs_in_on_b_and_its_session_works_on_both() {
    let _serial = serial();
    let p = pair();
    let uid = "bruno";
    let (session, _) = pin_by_auth_token(&p.a, &p.a, uid, UA_PHONE);

    pin_login(&p.b, &session, PIN, UA_LAPTOP).expect(
        401,
        Some(1245),
        "the session token from another device",
    );
    pin_login(&p.b, &session, WRONG_PIN, UA_PHONE).expect(401, Some(1236), "a wrong PIN");
    let sgs = login_ok(&p.b, &session, PIN, UA_PHONE, uid);

    assert_forwarded_as(
        app(&p.b, &sgs),
        "/app/x",
        uid,
        "B, the gateway that logged in",
    );
    assert_forwarded_as(app(&p.a, &sgs), "/app/x", uid, "A, the other gateway");
    // And a second login on A, from the same session, works too.
    let sgs_a = login_ok(&p.a, &session, PIN, UA_PHONE, uid);
    assert_forwarded_as(app(&p.b, &sgs_a), "/app/x", uid, "A's login on B");
}

// ---------------------------------------------------------------------------
// 3. Invalidation on one gateway holds on the other within one second
// ---------------------------------------------------------------------------

#[test]
fn invalidating_a_session_token_on_a_refuses_its_session_on_b_within_a_second() {
    let _serial = serial();
    let p = pair();
    let uid = "carla";
    let (session, first_access) = pin_by_auth_token(&p.a, &p.a, uid, UA_PHONE);
    let sgs = login_ok(&p.b, &session, PIN, UA_PHONE, uid);
    assert_forwarded_as(app(&p.b, &sgs), "/app/x", uid, "B before the invalidation");
    assert_forwarded_as(app(&p.a, &sgs), "/app/x", uid, "A before the invalidation");
    assert_eq!(status(app(&p.b, &first_access)), 200);

    let r = invalidate_session(&p.a, &session);
    let done = Instant::now();
    r.expect(200, None, "A invalidates the session token");
    assert_eq!(r.body["IsPosted"], true, "{}", r.text);
    let took = refused_within_bound(
        done,
        &[
            ("B, the sgs. token from the PIN login", &|| {
                status(app(&p.b, &sgs)) == 401
            }),
            ("B, the sgs. token from setting the PIN", &|| {
                status(app(&p.b, &first_access)) == 401
            }),
        ],
    );
    eprintln!(
        "session_token/invalidate on A -> refused on B after {:?} (login session) and {:?} (set-PIN session)",
        took[0], took[1]
    );
    assert_eq!(status(app(&p.a, &sgs)), 401, "A refuses it too");
    pin_login(&p.b, &session, PIN, UA_PHONE).expect(401, Some(1245), "the ended session on B");
    invalidate_session(&p.b, &session).expect(401, Some(1245), "ending it again");
}

#[test]
fn invalidating_an_account_on_b_ends_its_step_ups_and_sessions_on_a_within_a_second() {
    let _serial = serial();
    let p = pair();
    let uid = "dmitri";
    let (session, _) = pin_by_auth_token(&p.a, &p.a, uid, UA_PHONE);
    let sgs = login_ok(&p.a, &session, PIN, UA_PHONE, uid);
    let at = p.a.token(uid, &[]);
    let su = step_up(&p.a, &at, PIN);
    assert_forwarded_as(admin(&p.a, &at, &su), "/admin/x", uid, "the step-up on A");
    assert_forwarded_as(app(&p.a, &sgs), "/app/x", uid, "the sgs. token on A");
    // Another user is not affected.
    let other = "olga";
    pin_by_auth_token(&p.b, &p.b, other, UA_LAPTOP);
    let other_at = p.a.token(other, &[]);
    let other_su = step_up(&p.a, &other_at, PIN);

    let r = invalidate_account(&p.b, uid);
    let done = Instant::now();
    r.expect(200, None, "B invalidates the account");
    assert_eq!(r.body["IsPosted"], true, "{}", r.text);
    let took = refused_within_bound(
        done,
        &[
            ("A, the step-up token (X-Stepgate-Token)", &|| {
                status(admin(&p.a, &at, &su)) == 401
            }),
            ("A, the sgs. token", &|| status(app(&p.a, &sgs)) == 401),
        ],
    );
    eprintln!(
        "manage/account/{{uid}}/invalidate on B -> refused on A after {:?} (step-up token) and {:?} (sgs. token)",
        took[0], took[1]
    );
    assert_eq!(status(admin(&p.b, &at, &su)), 401, "B refuses the step-up");
    assert_eq!(status(app(&p.b, &sgs)), 401, "B refuses the sgs. token");
    pin_login(&p.a, &session, PIN, UA_PHONE).expect(401, Some(1245), "the PIN session ended");
    assert_forwarded_as(
        admin(&p.a, &other_at, &other_su),
        "/admin/x",
        other,
        "another user's step-up",
    );
    // A new step-up right away counts.
    let fresh = step_up(&p.a, &at, PIN);
    assert_forwarded_as(admin(&p.b, &at, &fresh), "/admin/x", uid, "a new step-up");
}

// ---------------------------------------------------------------------------
// 4. Change PIN on A ends the other PIN session (used on B)
// ---------------------------------------------------------------------------

#[test]
fn changing_the_pin_on_a_ends_the_other_pin_session_on_b_and_keeps_the_current_one() {
    let _serial = serial();
    let p = pair();
    let uid = "elena";
    // The phone's PIN session (set with a PINAuthToken on A), signed in on A.
    let (phone, _) = pin_by_auth_token(&p.a, &p.a, uid, UA_PHONE);
    let phone_sgs = login_ok(&p.a, &phone, PIN, UA_PHONE, uid);
    // The laptop's PIN session, opened by a browser PIN step-up on B.
    let at = p.b.token(uid, &[]);
    let laptop = browser_pin_session(&p.b, &client(), &at, PIN, UA_LAPTOP);
    assert_ne!(laptop, phone);
    let laptop_sgs = login_ok(&p.b, &laptop, PIN, UA_LAPTOP, uid);
    assert_eq!(status(app(&p.b, &laptop_sgs)), 200);

    change_pin(&p.a, &phone_sgs, WRONG_PIN, NEW_PIN).expect(401, Some(1241), "a wrong OldPIN");
    let r = change_pin(&p.a, &phone_sgs, PIN, NEW_PIN);
    r.expect(200, None, "the phone changes the PIN on A");
    assert_eq!(r.body["IsPosted"], true, "{}", r.text);

    pin_login(&p.b, &laptop, NEW_PIN, UA_LAPTOP).expect(
        401,
        Some(1245),
        "the laptop's (other) PIN session, used on B",
    );
    pin_login(&p.b, &phone, PIN, UA_PHONE).expect(401, Some(1236), "the old PIN");
    let again = login_ok(&p.b, &phone, NEW_PIN, UA_PHONE, uid);
    assert_forwarded_as(
        app(&p.b, &again),
        "/app/x",
        uid,
        "a new login from the kept session",
    );
    assert_forwarded_as(
        app(&p.b, &phone_sgs),
        "/app/x",
        uid,
        "the phone's current sgs. token on B",
    );
    eventually(
        Duration::from_secs(10),
        "B refuses the laptop's sgs. token",
        || status(app(&p.b, &laptop_sgs)) == 401,
    );
    assert_eq!(status(app(&p.a, &laptop_sgs)), 401);
}

// ---------------------------------------------------------------------------
// 5. Forgot PIN: a reset link mailed through A works once, on B
// ---------------------------------------------------------------------------

#[test]
fn a_reset_link_created_on_a_works_once_on_b() {
    let _serial = serial();
    let p = pair();
    let uid = "farid";
    let email = "farid@example.test";
    let at = p.a.token(uid, &["--email", email]);
    enroll_pin(&p.a, &client(), &at, PIN); // records the recovery profile
                                           // A device PIN session opened on A, signed in on B: a reset ends it.
    let session = browser_pin_session(&p.a, &client(), &at, PIN, UA_LAPTOP);
    let sgs = login_ok(&p.b, &session, PIN, UA_LAPTOP, uid);
    assert_eq!(status(app(&p.a, &sgs)), 200);

    let r = forgot_email(&p.a, email);
    r.expect(200, None, "forgot PIN on A");
    assert_eq!(r.body["IsPosted"], true, "{}", r.text);
    // The per-address cooldown is shared: B does not send a second message.
    forgot_email(&p.b, email).expect(429, Some(1179), "forgot again at once, on B");
    let (token, origin) = reset_link_token(&mailbox(p.dir.path()), email);
    assert_eq!(origin, format!("http://127.0.0.1:{}", p.a.port), "A's link");

    let r = reset_by_token(&p.b, &token, NEW_PIN);
    r.expect(200, None, "the ResetToken from A's mail, on B");
    assert_eq!(r.body["IsPosted"], true, "{}", r.text);
    reset_by_token(&p.a, &token, OTHER_PIN).expect(400, Some(1242), "the same token again, on A");
    reset_by_token(&p.b, &token, OTHER_PIN).expect(400, Some(1242), "and on B");
    let page = client()
        .get(p.a.url("/.stepgate/pin/reset"))
        .query(&[("token", token.as_str())])
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(page.status(), 400, "the reset page on A: the link was used");

    // The reset on B ended the PIN session and its sgs. token everywhere.
    pin_login(&p.a, &session, NEW_PIN, UA_LAPTOP).expect(401, Some(1245), "the PIN session, on A");
    eventually(
        Duration::from_secs(10),
        "A refuses the sgs. token after the reset on B",
        || status(app(&p.a, &sgs)) == 401,
    );
    // The new PIN is the one on both gateways.
    let su = step_up(&p.a, &at, NEW_PIN);
    assert_forwarded_as(admin(&p.b, &at, &su), "/admin/x", uid, "the reset PIN");
    stepup_pin(&p.b, &at, PIN).expect(401, Some(1236), "the old PIN");
    stepup_pin(&p.b, &at, OTHER_PIN).expect(401, Some(1236), "the refused second reset");
}

/// The recovery index on a real Redis: an address is a field of a small
/// hash (one of 262,144 buckets per kind), not a key of its own; an entry an
/// earlier version kept under its own key still finds the account, moves
/// into its bucket, and the old key is gone.
#[test]
fn the_recovery_index_is_bucketed_and_an_earlier_versions_entry_still_finds_the_account() {
    use stepgate::store::keys;
    let _serial = serial();
    let p = pair();
    let (uid, email) = ("gita", "gita@example.test");
    let at = p.a.token(uid, &["--email", email]);
    enroll_pin(&p.a, &client(), &at, PIN);
    let (bucket, field) = keys::index("email", email);
    let bucket = format!("stepgate:{bucket}");
    assert_eq!(
        p.redis.cli(&["TYPE", &bucket]).trim(),
        "hash",
        "{:?}",
        p.redis.keys()
    );
    assert_eq!(p.redis.cli(&["HGET", &bucket, &field]).trim(), uid);
    assert!(
        !p.redis.keys().iter().any(|k| k.contains('#')),
        "no per-entry keys: {:?}",
        p.redis.keys()
    );

    // As an earlier version kept it: the entry under a key of its own.
    assert_eq!(p.redis.cli(&["HDEL", &bucket, &field]).trim(), "1");
    let earlier = format!("stepgate:{}", keys::index_unbucketed("email", email));
    assert_eq!(p.redis.cli(&["SET", &earlier, uid]).trim(), "OK");
    let r = forgot_email(&p.b, email);
    r.expect(200, None, "forgot PIN on B, by the earlier entry");
    let (token, _) = reset_link_token(&mailbox(p.dir.path()), email);
    assert_eq!(
        p.redis.cli(&["EXISTS", &earlier]).trim(),
        "0",
        "the old key is gone"
    );
    assert_eq!(
        p.redis.cli(&["HGET", &bucket, &field]).trim(),
        uid,
        "moved into its bucket"
    );
    reset_by_token(&p.a, &token, NEW_PIN).expect(200, None, "the link the earlier entry sent");
    let su = step_up(&p.b, &at, NEW_PIN);
    assert_forwarded_as(admin(&p.a, &at, &su), "/admin/x", uid, "the reset PIN");
}

/// One reset link opened twice on A and twice on B at the same moment: one
/// reset happens, every other request is told the link was used (1242), as a
/// later second use is. The race is run for several users, since its outcome
/// depends on how the requests' store commands interleave.
#[test]
fn a_reset_token_spent_on_a_and_b_at_once_resets_once() {
    let _serial = serial();
    let p = pair();
    const ROUNDS: usize = 8;
    let pins = [NEW_PIN, OTHER_PIN, "6184", "9052"];
    let mut losers = Vec::new();
    for round in 0..ROUNDS {
        let uid = format!("fenna{round}");
        let email = format!("fenna{round}@example.test");
        let at = p.a.token(&uid, &["--email", &email]);
        enroll_pin(&p.a, &client(), &at, PIN);
        forgot_email(&p.b, &email).expect(200, None, "forgot PIN on B");
        let (token, _) = reset_link_token(&mailbox(p.dir.path()), &email);
        let answers = at_once([
            &|| reset_by_token(&p.a, &token, pins[0]),
            &|| reset_by_token(&p.b, &token, pins[1]),
            &|| reset_by_token(&p.a, &token, pins[2]),
            &|| reset_by_token(&p.b, &token, pins[3]),
        ]);
        let won: Vec<usize> = (0..4).filter(|i| answers[*i].status == 200).collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: exactly one use resets the PIN: {:?}",
            answers.iter().map(|r| &r.text).collect::<Vec<_>>()
        );
        for (i, r) in answers.iter().enumerate() {
            if i != won[0] {
                assert_eq!(r.status, 400, "round {round}: another use: {}", r.text);
                losers.push(r.code());
            }
        }
        step_up(&p.a, &at, pins[won[0]]);
        stepup_pin(&p.b, &at, pins[(won[0] + 1) % 4]).expect(
            401,
            Some(1236),
            "a losing request's PIN",
        );
    }
    eprintln!(
        "one ResetToken 4x at once on A and B, {ROUNDS} rounds: the other uses answered {losers:?}"
    );
    assert!(
        losers.iter().all(|c| *c == Some(1242)),
        "a simultaneous second use of a reset link must answer 400 1242 (already used), \
         as a later second use does; ErrorCodes of the losing requests: {losers:?}"
    );
}

// ---------------------------------------------------------------------------
// 6. The security-answer lockout counts on A and B together
// ---------------------------------------------------------------------------

#[test]
fn the_security_answer_lockout_counts_wrong_answers_on_both_gateways() {
    let _serial = serial();
    let p = pair();
    let uid = "greta";
    let email = "greta@example.test";
    let at = p.a.token(uid, &["--email", email]);
    enroll_pin(&p.a, &client(), &at, PIN);
    let r = send(
        client()
            .put(api(&p.b, "/account/securityquestion"))
            .bearer_auth(&at)
            .json(&json!({ "securityquestionanswer": [
                { "QuestionId": "q1", "Answer": "Rex the Dog" },
            ], "PIN": PIN })),
    );
    r.expect(200, None, "answers set on B");
    let r = send(
        client()
            .get(api(&p.a, "/securityquestion"))
            .query(&[("email", email)]),
    );
    r.expect(200, None, "the questions, on A");
    let listed = r.body.as_array().cloned().unwrap_or_default();
    assert!(
        listed.iter().any(|q| q["QuestionId"] == "q1"),
        "A lists the question answered on B: {}",
        r.text
    );

    // max_failures 5: guesses 1-4 are "wrong", the 5th locks.
    let gws = [&p.a, &p.b, &p.a, &p.b, &p.a];
    let mut seen = Vec::new();
    for (i, g) in gws.iter().enumerate() {
        let r = reset_by_answers(g, email, json!({ "q1": format!("wrong {i}") }), NEW_PIN);
        seen.push((r.status, r.code()));
        let name = if i % 2 == 0 { "A" } else { "B" };
        if i < 4 {
            r.expect(
                401,
                Some(1257),
                &format!("wrong answer #{} on {name}", i + 1),
            );
        } else {
            r.expect(
                429,
                Some(1198),
                &format!("wrong answer #{} on {name}", i + 1),
            );
        }
    }
    // Locked on both, even with the right answer.
    for (name, g) in [("B", &p.b), ("A", &p.a)] {
        reset_by_answers(g, email, json!({ "q1": "rex the dog" }), NEW_PIN).expect(
            429,
            Some(1198),
            &format!("the right answer after the lockout, on {name}"),
        );
    }
    // Nothing was reset: the PIN is the old one.
    step_up(&p.b, &at, PIN);
    eprintln!("security-answer guesses A,B,A,B,A answered {seen:?}");
}

// ---------------------------------------------------------------------------
// 7. Redis stopped: the lifecycle fails closed, public routes flow
// ---------------------------------------------------------------------------

#[test]
fn with_redis_stopped_forgot_reset_and_change_fail_closed_and_public_routes_flow() {
    let _serial = serial();
    let mut p = pair();
    let uid = "hiro";
    let email = "hiro@example.test";
    let at = p.a.token(uid, &["--email", email]);
    enroll_pin(&p.a, &client(), &at, PIN);
    forgot_email(&p.a, email).expect(200, None, "forgot PIN while Redis is up");
    let (token, _) = reset_link_token(&mailbox(p.dir.path()), email);
    assert_eq!(
        status(client().get(p.a.url("/public/x")).send().unwrap()),
        200
    );

    p.redis.kill();

    let timed = |what: &str, f: &dyn Fn() -> Answer| {
        let t = Instant::now();
        let r = f();
        let took = t.elapsed();
        r.expect(503, Some(1254), what);
        eprintln!("Redis stopped: {what} -> 503 in {took:?}");
    };
    timed("forgot on A", &|| forgot_email(&p.a, email));
    timed("forgot on B", &|| {
        forgot_email(&p.b, "someone@example.test")
    });
    timed("reset by token on B", &|| {
        reset_by_token(&p.b, &token, NEW_PIN)
    });
    timed("reset by token on A", &|| {
        reset_by_token(&p.a, &token, NEW_PIN)
    });
    timed("change on A", &|| change_pin(&p.a, &at, PIN, NEW_PIN));
    timed("change on B", &|| change_pin(&p.b, &at, PIN, NEW_PIN));

    for (name, g) in [("A", &p.a), ("B", &p.b)] {
        let r = client().get(g.url("/public/x")).send().unwrap();
        assert_forwarded_public(r, name);
        // An authenticated route needs no store either.
        assert_forwarded_as(app(g, &at), "/app/x", uid, name);
    }
}

fn assert_forwarded_public(r: Response, name: &str) {
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    assert_eq!(status, 200, "public route on {name} without Redis: {text}");
    let echo: Value = serde_json::from_str(&text).expect("the upstream's JSON echo");
    assert_eq!(echo["path"], "/public/x", "{name}");
}
