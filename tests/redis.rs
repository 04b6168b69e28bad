//! The Redis store over real processes: every test starts its own
//! `redis-server` (or three, for a cluster) on free loopback ports and kills
//! them at the end. Shown here: several gateways on one Redis behave as one
//! (enrollment, step-up tokens, one lockout across instances under
//! concurrency), a valid step-up token costs no Redis command, a killed Redis
//! fails closed and heals by itself without losing data (AOF), a three-master
//! Redis Cluster, key prefixes, `stepgate store migrate` from the embedded
//! store, password authentication (right and wrong), and a step-down that
//! still reaches every gateway after Redis was killed and restarted.

mod common;
use common::api::{api_get, api_secret_config, assert_forwarded_as, API_SECRET};
use common::metrics::{metric_sum, metrics_config, scrape, try_metric};
use common::redis::{redis_store, Redis, RedisPair};
use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};

const PIN: &str = "2580";
const WRONG_PIN: &str = "1397";

// ---------------------------------------------------------------------------
// Redis processes (the `Redis` helper itself is in tests/common/redis.rs)
// ---------------------------------------------------------------------------

/// Calls per command between two `INFO commandstats`, leaving out the
/// gateway's once-a-second PING and our own INFO.
fn commands_between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(k, _)| k.as_str() != "ping" && k.as_str() != "info")
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// A free port at or below 55535 whose cluster-bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p <= 55535 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

/// Three masters, no replicas, all 16384 slots assigned.
fn start_cluster(dir: &Path) -> Vec<Redis> {
    let nodes: Vec<Redis> = (0..3)
        .map(|_| {
            let port = cluster_port();
            let d = dir.to_str().unwrap().to_string();
            let conf = format!("nodes-{port}.conf");
            Redis::start_on(
                port,
                dir,
                &[
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    &d,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "5000",
                ],
                &[],
            )
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        Duration::from_secs(30),
        "every node says cluster_state:ok",
        || {
            nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        },
    );
    nodes
}

// ---------------------------------------------------------------------------
// Gateways and flows
// ---------------------------------------------------------------------------

/// Options for a gateway whose per-IP lockout is out of the way (all test
/// traffic comes from 127.0.0.1), so the per-user limit (5) is what is
/// measured. The store timeout is 1 s rather than the default 250 ms: on a
/// loaded two-core machine a cluster node has been seen to take longer than
/// 250 ms to answer, and none of these tests is about the exact bound.
fn options(mut store: String, extra: &str) -> GatewayOptions {
    if !store.contains("  timeout:") && !store.contains("kind: embedded") {
        store.push_str("  timeout: 1s\n");
    }
    GatewayOptions {
        store,
        extra_config: format!("lockout:\n  ip_max_failures: 1000\n{extra}"),
        ..Default::default()
    }
}

fn gateway(store: String, extra: &str) -> Gateway {
    Gateway::start_with(options(store, extra))
}

/// Two such gateways, A and B, on `redis` (whose directory is `dir`).
fn pair(dir: tempfile::TempDir, redis: Redis, extra: &str) -> RedisPair {
    RedisPair::on(dir, redis, |_, store| options(store, extra))
}

fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn setup_csrf(g: &Gateway, c: &Client, at: &str) -> String {
    let r = get_html(
        c,
        &g.url("/.stepgate/pin/setup?return_to=/admin/x"),
        &format!("access_token={at}"),
    );
    assert_eq!(
        r.status(),
        200,
        "the enrollment form is offered; store warnings:\n{}",
        store_warnings(g)
    );
    csrf_of(&r.text().unwrap())
}

/// The CSRF token of the PIN form: the form is only offered when the store
/// has a PIN for the user.
fn pin_csrf(g: &Gateway, c: &Client, at: &str) -> String {
    let r = get_html(
        c,
        &g.url("/.stepgate/pin?return_to=/admin/x"),
        &format!("access_token={at}"),
    );
    assert_eq!(
        r.status(),
        200,
        "the PIN form is offered (the user has a PIN in this gateway's store); store warnings:\n{}",
        store_warnings(g)
    );
    csrf_of(&r.text().unwrap())
}

fn enroll(g: &Gateway, c: &Client, at: &str, pin: &str) {
    let csrf = setup_csrf(g, c, at);
    let r = c
        .post(g.url("/.stepgate/pin/setup"))
        .header("Cookie", format!("access_token={at}"))
        .header("Accept", "text/html")
        .form(&[
            ("pin", pin),
            ("pin_confirm", pin),
            ("csrf", &csrf),
            ("return_to", "/admin/x"),
        ])
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        303,
        "enrollment succeeds; the gateway's store warnings:\n{}",
        store_warnings(g)
    );
}

fn post_pin(g: &Gateway, c: &Client, at: &str, csrf: &str, pin: &str) -> Response {
    c.post(g.url("/.stepgate/pin"))
        .header("Cookie", format!("access_token={at}"))
        .header("Accept", "text/html")
        .form(&[("pin", pin), ("csrf", csrf), ("return_to", "/admin/x")])
        .send()
        .unwrap()
}

/// Step up with `pin` on `g`; the step-up token from the cookie.
fn step_up(g: &Gateway, c: &Client, at: &str, pin: &str) -> String {
    let csrf = pin_csrf(g, c, at);
    let r = post_pin(g, c, at, &csrf, pin);
    assert_eq!(
        r.status(),
        303,
        "the right PIN is accepted; the gateway's store warnings:\n{}",
        store_warnings(g)
    );
    set_cookie(&r, "stepgate_su").expect("step-up cookie")
}

/// Audit events of kind `event` for `user` in the gateway's JSON log.
fn events(g: &Gateway, event: &str, user: &str) -> usize {
    g.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event && v["user"] == user)
        .count()
}

/// The gateway's log lines about the store (for failure messages).
fn store_warnings(g: &Gateway) -> String {
    g.log()
        .lines()
        .filter(|l| l.contains("store") && !l.contains("\"target\":\"access\""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn status(c: &Client, url: &str) -> u16 {
    c.get(url).send().map(|r| r.status().as_u16()).unwrap_or(0)
}

/// Send `n` concurrent wrong PINs for one user, `n/2` to each gateway;
/// the statuses per gateway.
fn concurrent_wrong_pins(gws: [&Gateway; 2], at: &str, n: usize) -> [Vec<u16>; 2] {
    let c = client();
    let csrfs = [pin_csrf(gws[0], &c, at), pin_csrf(gws[1], &c, at)];
    let barrier = Barrier::new(n);
    let results: Vec<(usize, u16)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (g, csrf, barrier) = (gws[i % 2], &csrfs[i % 2], &barrier);
                s.spawn(move || {
                    let c = Client::builder()
                        .redirect(reqwest::redirect::Policy::none())
                        .timeout(Duration::from_secs(120))
                        .build()
                        .unwrap();
                    barrier.wait();
                    (
                        i % 2,
                        post_pin(g, &c, at, csrf, WRONG_PIN).status().as_u16(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut out = [Vec::new(), Vec::new()];
    for (g, s) in results {
        out[g].push(s);
    }
    out
}

// ---------------------------------------------------------------------------
// 1. Two gateways on one Redis behave as one
// ---------------------------------------------------------------------------

#[test]
fn two_gateways_on_one_redis_share_pins_tokens_and_one_lockout() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), &[]);
    let p = pair(dir, redis, "");
    let (a, b) = (&p.a, &p.b);
    let c = client();

    // Enrolled through A, verified on B; B's token opens A's protected route.
    let at = a.token("alice", &[]);
    enroll(a, &c, &at, PIN);
    let su_b = step_up(b, &c, &at, PIN);
    let r = api_get(a, &c, "/admin/x", &at, &su_b);
    assert_forwarded_as(r, "/admin/x", "alice", "B's step-up on A");
    // And the other way round.
    let su_a = step_up(a, &c, &at, PIN);
    let r = api_get(b, &c, "/admin/x", &at, &su_a);
    assert_forwarded_as(r, "/admin/x", "alice", "A's step-up on B");
    // B cannot enroll alice a second time: it sees A's record.
    let r = get_html(
        &c,
        &b.url("/.stepgate/pin/setup?return_to=/admin/x"),
        &format!("access_token={at}"),
    );
    assert_ne!(
        r.status(),
        200,
        "no enrollment form on B for a user A enrolled"
    );

    // Wrong PINs sent to A and B at once add up to one lockout at 5.
    let victim = a.token("victim", &[]);
    enroll(b, &c, &victim, PIN);
    const N: usize = 12;
    let [sa, sb] = concurrent_wrong_pins([a, b], &victim, N);
    let all: Vec<u16> = sa.iter().chain(&sb).copied().collect();
    let wrong = all.iter().filter(|s| **s == 401).count();
    let locked = all.iter().filter(|s| **s == 429).count();
    assert_eq!(
        (wrong, locked),
        (4, N - 4),
        "exactly 5 guesses evaluated across both gateways: 4 'wrong', the 5th and all others 'locked'; A answered {sa:?}, B answered {sb:?}"
    );
    // The audit logs of A and B together hold exactly 5 evaluated guesses.
    let mut failures = (0, 0);
    let _ = wait_until(Duration::from_secs(20), "5 pin_failure events", || {
        failures = (
            events(a, "pin_failure", "victim"),
            events(b, "pin_failure", "victim"),
        );
        failures.0 + failures.1 >= 5
    });
    std::thread::sleep(Duration::from_millis(300));
    failures = (
        events(a, "pin_failure", "victim"),
        events(b, "pin_failure", "victim"),
    );
    assert_eq!(
        failures.0 + failures.1,
        5,
        "pin_failure events on A + B: {failures:?}"
    );
    let lockouts = events(a, "lockout", "victim") + events(b, "lockout", "victim");
    assert_eq!(lockouts, 1, "one lockout event across both gateways");
    // Both gateways refuse even the right PIN now.
    for g in [a, b] {
        let csrf = pin_csrf(g, &c, &victim);
        assert_eq!(post_pin(g, &c, &victim, &csrf, PIN).status(), 429);
    }
    // alice is not affected.
    step_up(b, &c, &at, PIN);
    eprintln!("lockout across gateways: A answered {sa:?}, B answered {sb:?}; pin_failure events A={} B={}", failures.0, failures.1);
}

// ---------------------------------------------------------------------------
// 2. A valid step-up token costs no Redis command
// ---------------------------------------------------------------------------

#[test]
fn requests_with_a_valid_step_up_token_send_no_command_to_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), &[]);
    let g = gateway(redis_store(&redis.url(), ""), "");
    let c = client();
    let at = g.token("alice", &[]);
    enroll(&g, &c, &at, PIN);
    let csrf = pin_csrf(&g, &c, &at);

    // The counting works: one PIN verification is visible in commandstats.
    let before = redis.command_calls();
    let r = post_pin(&g, &c, &at, &csrf, PIN);
    assert_eq!(r.status(), 303);
    let su = set_cookie(&r, "stepgate_su").unwrap();
    let pin_cmds = commands_between(&before, &redis.command_calls());
    assert!(
        !pin_cmds.is_empty(),
        "a PIN verification reaches Redis: {pin_cmds:?}"
    );

    // Warm the connection to the upstream, then count.
    let warm = api_get(&g, &c, "/admin/x", &at, &su);
    assert_forwarded_as(warm, "/admin/x", "alice", "the warm-up request");
    let before = redis.command_calls();
    for i in 0..200 {
        let path = format!("/admin/page-{i}");
        let r = api_get(&g, &c, &path, &at, &su);
        assert_eq!(r.status(), 200, "request {i} forwarded");
    }
    let after = redis.command_calls();
    let diff = commands_between(&before, &after);
    assert!(
        diff.is_empty(),
        "200 requests with a valid step-up token sent commands to Redis: {diff:?}"
    );
    let pings = after.get("ping").copied().unwrap_or(0) - before.get("ping").copied().unwrap_or(0);
    eprintln!(
        "commands for one PIN verification: {pin_cmds:?}; for 200 step-up requests: {diff:?} (plus {pings} background PINGs)"
    );
}

// ---------------------------------------------------------------------------
// 3. Redis killed: fail closed, keep serving the rest, heal without data loss
// ---------------------------------------------------------------------------

#[test]
fn killed_redis_fails_closed_then_heals_without_losing_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start_durable(dir.path());
    let (metrics, mport) = metrics_config();
    let g = gateway(redis_store(&redis.url(), ""), &metrics);
    let c = client();
    let at = g.token("alice", &[]);
    enroll(&g, &c, &at, PIN);
    let csrf = pin_csrf(&g, &c, &at);
    let su = step_up(&g, &c, &at, PIN);
    wait_until(Duration::from_secs(10), "stepgate_store_up 1", || {
        try_metric(mport, "stepgate_store_up") == Some(1.0)
    });
    assert_eq!(status(&c, &g.url("/.stepgate/ready")), 200);

    redis.kill();
    let killed = Instant::now();

    // PIN verification fails closed, and says so promptly.
    let t = Instant::now();
    let r = post_pin(&g, &c, &at, &csrf, PIN);
    let fail_closed = t.elapsed();
    assert_eq!(
        r.status(),
        503,
        "PIN verification without a store fails closed"
    );
    assert!(set_cookie(&r, "stepgate_su").is_none());
    assert!(
        fail_closed < Duration::from_secs(5),
        "the 503 came after {fail_closed:?}"
    );
    // A second one, now that the connection is known to be gone.
    let t = Instant::now();
    assert_eq!(post_pin(&g, &c, &at, &csrf, PIN).status(), 503);
    let fail_closed_2 = t.elapsed();
    assert!(fail_closed_2 < Duration::from_secs(5));
    // A single-use rule needs the store too: closed.
    let r = c
        .post(g.url("/admin/delete"))
        .header("Authorization", format!("Bearer {at}"))
        .header("X-Stepgate-Token", &su)
        .body("id=1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 503, "single-use step-up fails closed");

    // Everything that needs no store keeps flowing.
    let r = c.get(g.url("/public/x")).send().unwrap();
    assert_eq!(r.status(), 200, "public route");
    let r = c
        .get(g.url("/app/x"))
        .header("Authorization", format!("Bearer {at}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "authenticated route");
    assert_forwarded_as(
        api_get(&g, &c, "/admin/x", &at, &su),
        "/admin/x",
        "alice",
        "a step-up made before the outage",
    );
    assert_eq!(status(&c, &g.url("/.stepgate/health")), 200);
    assert_eq!(status(&c, &g.url("/.stepgate/ready")), 503);
    let down = wait_until(Duration::from_secs(15), "stepgate_store_up 0", || {
        try_metric(mport, "stepgate_store_up") == Some(0.0)
    });
    wait_until(Duration::from_secs(5), "the outage is logged", || {
        g.log().contains("the store does not answer")
    });

    // Back on the same port and data directory: heals by itself, nothing lost.
    let outage = killed.elapsed();
    redis.restart();
    let restarted = Instant::now();
    let heal = wait_until(
        Duration::from_secs(30),
        "PIN verification works again after Redis is back",
        || {
            let r = post_pin(&g, &c, &at, &csrf, PIN);
            r.status() == 303 && set_cookie(&r, "stepgate_su").is_some()
        },
    );
    let su2 = step_up(&g, &c, &at, PIN);
    assert_forwarded_as(
        api_get(&g, &c, "/admin/x", &at, &su2),
        "/admin/x",
        "alice",
        "a step-up after Redis is back",
    );
    assert_eq!(status(&c, &g.url("/.stepgate/ready")), 200);
    wait_until(Duration::from_secs(10), "stepgate_store_up 1 again", || {
        try_metric(mport, "stepgate_store_up") == Some(1.0)
    });
    let up_again = restarted.elapsed();
    assert!(
        g.log().contains("the store answers again"),
        "the recovery is logged"
    );
    assert!(
        redis.keys().iter().any(|k| k.ends_with("}:user")),
        "the PIN record survived the SIGKILL (AOF): {:?}",
        redis.keys()
    );
    eprintln!(
        "fail closed: first 503 in {fail_closed:?}, next in {fail_closed_2:?}; store_up=0 seen {down:?} after checks; outage {outage:?}; PIN verification healed {heal:?} after restart (store_up=1 after {up_again:?})"
    );
}

// ---------------------------------------------------------------------------
// 4. Redis Cluster
// ---------------------------------------------------------------------------

#[test]
fn three_master_cluster_serves_as_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path());
    let list: Vec<String> = nodes
        .iter()
        .map(|n| format!("redis://127.0.0.1:{}", n.port))
        .collect();
    let store = format!("  kind: redis_cluster\n  nodes: [{}]\n", list.join(", "));
    let g = gateway(store, "");
    let c = client();

    let users = ["ada", "bo", "cyd", "dee", "eli", "fay"];
    let mut tokens = Vec::new();
    for u in users {
        let at = g.token(u, &[]);
        enroll(&g, &c, &at, PIN);
        let su = step_up(&g, &c, &at, PIN);
        let r = api_get(&g, &c, "/admin/x", &at, &su);
        assert_forwarded_as(r, "/admin/x", u, "a step-up on the cluster");
        tokens.push(at);
    }
    // PIN records spread over the masters.
    let per_node: Vec<usize> = nodes
        .iter()
        .map(|n| n.keys().iter().filter(|k| k.ends_with("}:user")).count())
        .collect();
    assert_eq!(
        per_node.iter().sum::<usize>(),
        users.len(),
        "one PIN record per user: {per_node:?}"
    );
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "PIN records on at least two masters: {per_node:?}"
    );
    // A user's keys share a hash tag: one slot, one node.
    for n in &nodes {
        for k in n.keys().iter().filter(|k| k.contains("{u:")) {
            let tag = &k[k.find('{').unwrap()..=k.find('}').unwrap()];
            let slot = n.cli(&["CLUSTER", "KEYSLOT", k]);
            assert_eq!(slot, n.cli(&["CLUSTER", "KEYSLOT", tag]), "{k}");
        }
    }

    // Lockout on the cluster: 4 'wrong', the 5th locks, then even the right PIN is refused.
    let at = &tokens[0];
    let csrf = pin_csrf(&g, &c, at);
    for (i, (pin, want)) in [
        (WRONG_PIN, 401),
        (WRONG_PIN, 401),
        (WRONG_PIN, 401),
        (WRONG_PIN, 401),
        (WRONG_PIN, 429),
        (PIN, 429),
    ]
    .into_iter()
    .enumerate()
    {
        let got = post_pin(&g, &c, at, &csrf, pin).status().as_u16();
        assert_eq!(
            got,
            want,
            "attempt #{} on the cluster; the gateway's store warnings:\n{}",
            i + 1,
            store_warnings(&g)
        );
    }
    // Others still step up.
    step_up(&g, &c, &tokens[1], PIN);
    eprintln!("cluster: PIN records per master {per_node:?}");
}

// ---------------------------------------------------------------------------
// 5. key_prefix
// ---------------------------------------------------------------------------

#[test]
fn gateways_with_different_key_prefixes_do_not_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), &[]);
    let a = gateway(redis_store(&redis.url(), "  key_prefix: \"app-a:\"\n"), "");
    let b = gateway(redis_store(&redis.url(), "  key_prefix: \"app-b:\"\n"), "");
    let c = client();
    let at = a.token("alice", &[]);
    enroll(&a, &c, &at, PIN);
    // B has no PIN for alice: its PIN page sends her to enrollment.
    let r = get_html(
        &c,
        &b.url("/.stepgate/pin?return_to=/admin/x"),
        &format!("access_token={at}"),
    );
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/.stepgate/pin/setup"));
    // She enrolls another PIN on B; each gateway knows only its own.
    let other = "7391";
    enroll(&b, &c, &at, other);
    step_up(&a, &c, &at, PIN);
    step_up(&b, &c, &at, other);
    let csrf = pin_csrf(&a, &c, &at);
    assert_eq!(post_pin(&a, &c, &at, &csrf, other).status(), 401);
    let csrf = pin_csrf(&b, &c, &at);
    assert_eq!(post_pin(&b, &c, &at, &csrf, PIN).status(), 401);
    let keys = redis.keys();
    let pins: Vec<&String> = keys.iter().filter(|k| k.ends_with("}:user")).collect();
    assert_eq!(pins.len(), 2, "{keys:?}");
    assert!(pins.iter().any(|k| k.starts_with("app-a:{u:")), "{keys:?}");
    assert!(pins.iter().any(|k| k.starts_with("app-b:{u:")), "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("app-a:") || k.starts_with("app-b:")),
        "every key carries a prefix: {keys:?}"
    );
}

// ---------------------------------------------------------------------------
// 6. store migrate: embedded → redis
// ---------------------------------------------------------------------------

#[test]
fn store_migrate_moves_pins_from_embedded_to_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), &[]);
    let db = dir.path().join("stepgate.redb");
    let embedded = format!("  kind: embedded\n  path: \"{}\"\n", db.display());
    let mut g = gateway(embedded.clone(), "");
    let c = client();
    let users = ["alice", "bob"];
    for u in users {
        let at = g.token(u, &["--email", &format!("{u}@example.test")]);
        enroll(&g, &c, &at, PIN);
        // A failure counter too: short-lived, it stays behind.
        let csrf = pin_csrf(&g, &c, &at);
        assert_eq!(post_pin(&g, &c, &at, &csrf, WRONG_PIN).status(), 401);
    }
    g.stop();

    let text = std::fs::read_to_string(&g.config).unwrap();
    assert!(text.contains(&embedded));
    let to = g.config.with_file_name("gateway-redis.yaml");
    std::fs::write(&to, text.replace(&embedded, &redis_store(&redis.url(), ""))).unwrap();
    let out = Command::new(BIN)
        .args(["store", "migrate", "--from"])
        .arg(&g.config)
        .arg("--to")
        .arg(&to)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "migrate: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("copied 2 record(s) and 2 recovery index entries"),
        "the command says how many records and index entries it copied: {stdout}"
    );
    // The recovery index came along: forgot-PIN by email finds both users.
    for u in users {
        let (bucket, field) = stepgate::store::keys::index("email", &format!("{u}@example.test"));
        assert_eq!(
            redis
                .cli(&["HGET", &format!("stepgate:{bucket}"), &field])
                .trim(),
            u,
            "{u}'s email index entry in Redis"
        );
    }
    let keys = redis.keys();
    assert_eq!(
        keys.iter().filter(|k| k.ends_with("}:user")).count(),
        2,
        "{keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.ends_with(":fail")),
        "failure counters are short-lived and stay behind: {keys:?}"
    );

    // The same gateway, now on Redis: no re-enrollment needed.
    std::fs::copy(&to, &g.config).unwrap();
    g.launch();
    for u in users {
        let at = g.token(u, &[]);
        let su = step_up(&g, &c, &at, PIN);
        let r = api_get(&g, &c, "/admin/x", &at, &su);
        assert_forwarded_as(r, "/admin/x", u, "a step-up with the migrated PIN");
    }
    eprintln!("migrate said: {}", stdout.trim());
}

// ---------------------------------------------------------------------------
// 7. Password
// ---------------------------------------------------------------------------

#[test]
fn redis_password_from_a_file_and_a_wrong_one_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), &["--requirepass", "s3cret-redis-pw"]);
    let good_pw = dir.path().join("redis-password");
    std::fs::write(&good_pw, "s3cret-redis-pw\n").unwrap();
    let bad_pw = dir.path().join("wrong-password");
    std::fs::write(&bad_pw, "not-the-password\n").unwrap();
    let pw_store = |f: &Path| {
        redis_store(
            &redis.url(),
            &format!("  password_file: \"{}\"\n", f.display()),
        )
    };

    let good = gateway(pw_store(&good_pw), "");
    let c = client();
    let at = good.token("alice", &[]);
    enroll(&good, &c, &at, PIN);
    let su = step_up(&good, &c, &at, PIN);
    assert_forwarded_as(
        api_get(&good, &c, "/admin/x", &at, &su),
        "/admin/x",
        "alice",
        "a step-up with the right password",
    );
    assert_eq!(status(&c, &good.url("/.stepgate/ready")), 200);
    assert!(
        !redis.keys().is_empty(),
        "the PIN is in the password-protected Redis"
    );

    let bad = gateway(pw_store(&bad_pw), "");
    // Anything that needs the store fails closed.
    let r = get_html(
        &c,
        &bad.url("/.stepgate/pin?return_to=/admin/x"),
        &format!("access_token={at}"),
    );
    assert_eq!(r.status(), 503, "PIN page");
    let csrf = pin_csrf(&good, &c, &at);
    assert_eq!(
        post_pin(&bad, &c, &at, &csrf, PIN).status(),
        503,
        "PIN check"
    );
    let r = c
        .post(bad.url("/admin/delete"))
        .header("Authorization", format!("Bearer {at}"))
        .header("X-Stepgate-Token", &su)
        .body("id=1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 503, "single-use step-up route");
    assert_eq!(status(&c, &bad.url("/.stepgate/ready")), 503);
    assert_eq!(status(&c, &bad.url("/public/x")), 200, "public routes flow");
    // The log says why: Redis refused the password.
    let says_why = |l: &str| {
        let l = l.to_lowercase();
        l.contains("wrongpass")
            || l.contains("authentication failed")
            || l.contains("authenticationfailed")
    };
    wait_until(
        Duration::from_secs(10),
        "the log names the refused password",
        || bad.log().lines().any(says_why),
    );
    let why = bad
        .log()
        .lines()
        .find(|l| says_why(l))
        .unwrap_or("")
        .to_string();
    eprintln!("wrong password logged as: {why}");
    assert!(
        !bad.log().contains("not-the-password"),
        "the password is not logged"
    );
    assert!(
        !good.log().contains("s3cret-redis-pw"),
        "the password is not logged"
    );
}

/// What the gateway itself says about the outage (the line logged when the
/// store stops answering, and the warning on each failed store operation)
/// should name a refused password, not report a timeout: Redis did answer.
#[test]
fn a_refused_redis_password_is_named_in_the_store_outage_log() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), &["--requirepass", "s3cret-redis-pw"]);
    let bad_pw = dir.path().join("wrong-password");
    std::fs::write(&bad_pw, "not-the-password\n").unwrap();
    let g = gateway(
        redis_store(
            &redis.url(),
            // The default timeout, as ops would run it.
            &format!(
                "  password_file: \"{}\"\n  timeout: 250ms\n",
                bad_pw.display()
            ),
        ),
        "",
    );
    let c = client();
    let at = g.token("alice", &[]);
    let r = get_html(
        &c,
        &g.url("/.stepgate/pin?return_to=/admin/x"),
        &format!("access_token={at}"),
    );
    assert_eq!(r.status(), 503, "fails closed");
    wait_until(Duration::from_secs(10), "the outage is logged", || {
        g.log().contains("the store does not answer")
    });
    let outage: Vec<String> = g
        .log()
        .lines()
        .filter(|l| l.contains("the store does not answer") || l.contains("store operation failed"))
        .map(str::to_string)
        .collect();
    assert!(
        outage.iter().any(|l| {
            let l = l.to_lowercase();
            l.contains("wrongpass") || l.contains("authentication")
        }),
        "the outage lines do not say that Redis refused the password:\n{}",
        outage.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 8. Step-down pushed through Redis, after Redis was killed and restarted
// ---------------------------------------------------------------------------

#[test]
fn a_step_down_after_redis_restarts_reaches_the_other_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start_durable(dir.path());
    let mut p = pair(dir, redis, &api_secret_config());
    let (a, b) = (&p.a, &p.b);
    let c = client();
    let at = a.token("alice", &[]);
    enroll(a, &c, &at, PIN);
    let su = step_up(a, &c, &at, PIN);
    assert_eq!(api_get(b, &c, "/admin/x", &at, &su).status(), 200);

    p.redis.kill();
    for g in [a, b] {
        wait_until(Duration::from_secs(15), "the outage is noticed", || {
            g.log().contains("the store does not answer")
        });
    }
    p.redis.restart();
    for g in [a, b] {
        wait_until(Duration::from_secs(30), "ready again", || {
            status(&c, &g.url("/.stepgate/ready")) == 200
        });
    }
    // Invalidate on A (retried while A's store connection heals).
    let invalidate = || {
        c.post(a.url("/.stepgate/api/manage/account/alice/invalidate"))
            .bearer_auth(API_SECRET)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    wait_until(Duration::from_secs(30), "A invalidates alice", || {
        invalidate() == 200
    });
    assert_eq!(api_get(a, &c, "/admin/x", &at, &su).status(), 401);
    // B hears of it: its subscription came back with Redis.
    let took = wait_until(
        Duration::from_secs(10),
        "B refuses the step-up A invalidated after Redis came back",
        || api_get(b, &c, "/admin/x", &at, &su).status() == 401,
    );
    eprintln!("step-down reached B {took:?} after A answered");
}

/// A gateway that starts while Redis is down cannot know whose step-ups were
/// ended: it once took "nothing loaded" for "nobody stepped down" and let an
/// invalidated step-up through. Until it has read the invalidations, step-up
/// routes answer 503 (and never 200 for that token); then the token is
/// refused, and a new step-up opens the route.
#[test]
fn a_gateway_started_while_redis_is_down_opens_no_step_up_until_it_has_read_the_invalidations() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start_durable(dir.path());
    let mut g = gateway(redis_store(&redis.url(), ""), &api_secret_config());
    let c = client();
    let at = g.token("alice", &[]);
    enroll(&g, &c, &at, PIN);
    let su = step_up(&g, &c, &at, PIN);
    assert_eq!(api_get(&g, &c, "/admin/x", &at, &su).status(), 200);
    let r = c
        .post(g.url("/.stepgate/api/manage/account/alice/invalidate"))
        .bearer_auth(API_SECRET)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(api_get(&g, &c, "/admin/x", &at, &su).status(), 401);

    // Many other users stepped down before: the map is read in pages.
    let name = redis
        .keys()
        .into_iter()
        .find(|k| k.ends_with("revocations"))
        .expect("the invalidations hash");
    let filler: Vec<String> = (0..2500)
        .flat_map(|i| [format!("user-{i}"), "1700000000000".to_string()])
        .collect();
    let mut args = vec!["HSET", name.as_str()];
    args.extend(filler.iter().map(String::as_str));
    assert_eq!(redis.cli(&args).trim(), "2500");
    g.stop();
    assert_eq!(redis.cli(&["SAVE"]).trim(), "OK");
    redis.kill();
    g.launch();
    let r = api_get(&g, &c, "/admin/x", &at, &su);
    assert_eq!(
        r.status(),
        503,
        "an invalidated step-up after a restart without the store"
    );
    assert!(r.text().unwrap().contains("temporarily_unavailable"));
    let r = c.get(g.url("/public/x")).send().unwrap();
    assert_eq!(r.status(), 200, "routes without a step-up keep flowing");
    assert!(g.log().contains("could not load step-up invalidations"));
    // The back end is not told "invalid" either: it cannot be known yet.
    let r = c
        .post(g.url("/.stepgate/api/stepup/validate"))
        .bearer_auth(API_SECRET)
        .json(&serde_json::json!({"secondfactorvalidationtoken": su, "uid": "alice"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);

    redis.restart();
    let mut seen = Vec::new();
    wait_until(Duration::from_secs(30), "the invalidation is read", || {
        let st = api_get(&g, &c, "/admin/x", &at, &su).status().as_u16();
        seen.push(st);
        st == 401
    });
    assert!(
        seen.iter().all(|s| *s == 503 || *s == 401),
        "never forwarded: {seen:?}"
    );
    assert!(g.log().contains("step-up routes open again"));
    assert_eq!(status(&c, &g.url("/.stepgate/ready")), 200);
    let su2 = step_up(&g, &c, &at, PIN);
    assert_forwarded_as(
        api_get(&g, &c, "/admin/x", &at, &su2),
        "/admin/x",
        "alice",
        "a step-up after the invalidations were read",
    );
}

/// One record per user, and records an earlier version wrote (one key per
/// part: a PIN record as JSON with its PHC string, a profile with full field
/// names) still work: the first read moves them into the user's record in
/// the compact form and deletes them, on a real Redis through the binary.
#[test]
fn records_of_an_earlier_version_work_and_move_into_the_users_record() {
    use ::redis::Commands;
    use stepgate::flows::pin::PinRecord;
    use stepgate::flows::user::{Part, Record};
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), &[]);
    let g = gateway(redis_store(&redis.url(), ""), "");
    let c = client();
    let at = g.token("alice", &["--email", "alice@x.io"]);
    enroll(&g, &c, &at, PIN);
    step_up(&g, &c, &at, PIN);
    let keys = redis.keys();
    assert!(
        !keys.iter().any(|k| k.contains(":fail")),
        "a right PIN leaves no counter behind: {keys:?}"
    );
    let user_keys: Vec<&String> = keys.iter().filter(|k| k.contains("{u:")).collect();
    assert_eq!(
        user_keys.len(),
        1,
        "one key for everything about alice: {keys:?}"
    );
    let record_key = user_keys[0].clone();
    assert!(record_key.ends_with("}:user"), "{record_key}");
    let mut r = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let raw: Vec<u8> = r.get(&record_key).unwrap();
    let record = Record::decode(&raw).expect("a user record");
    let compact = record.get(Part::Pin).expect("the PIN").to_vec();
    assert_eq!(compact.len(), 59, "written compact");
    let pin = PinRecord::decode(&compact).expect("a PIN record");
    assert!(pin.phc.starts_with("$argon2id$v=19$"), "{}", pin.phc);
    assert_eq!(
        record.get(Part::Profile),
        Some(&br#"{"e":["alice@x.io"]}"#[..]),
        "the profile, without the id the key already names"
    );

    // What an earlier version stored: one key per part.
    let base = record_key.strip_suffix(":user").unwrap();
    let (pin_key, profile_key) = (format!("{base}:pin"), format!("{base}:profile"));
    let old_pin = serde_json::to_vec(&pin).unwrap();
    let old_profile = br#"{"sub":"alice","emails":["alice@x.io"],"otp_emails":["alice@x.io"],"username":null,"phone":null}"#;
    let _: () = r.del(&record_key).unwrap();
    let _: () = r.set(&pin_key, &old_pin).unwrap();
    let _: () = r.set(&profile_key, &old_profile[..]).unwrap();

    // A wrong PIN is still wrong and the right one still right.
    let csrf = pin_csrf(&g, &c, &at);
    assert_eq!(post_pin(&g, &c, &at, &csrf, WRONG_PIN).status(), 401);
    let su = step_up(&g, &c, &at, PIN);
    let resp = api_get(&g, &c, "/admin/x", &at, &su);
    assert_forwarded_as(
        resp,
        "/admin/x",
        "alice",
        "a step-up with the earlier records",
    );

    let keys = redis.keys();
    assert!(
        !keys.contains(&pin_key) && !keys.contains(&profile_key),
        "the earlier keys are gone: {keys:?}"
    );
    let raw: Vec<u8> = r.get(&record_key).unwrap();
    let record = Record::decode(&raw).expect("a user record again");
    assert_eq!(
        record.get(Part::Pin),
        Some(compact.as_slice()),
        "the JSON PIN record was moved in the compact form"
    );
    assert_eq!(
        record.get(Part::Profile),
        Some(&br#"{"e":["alice@x.io"]}"#[..])
    );
}

/// A store that slows down is seen before and when it fails: every store
/// operation's time is in `stepgate_store_seconds{op}`, and one that outlasts
/// `store.timeout` fails closed (503), is observed at the timeout, and is
/// named in the gateway's warning (here Redis is paused with `CLIENT PAUSE`,
/// a live server that does not answer).
#[test]
fn a_store_operation_that_outlasts_the_timeout_is_named_and_timed() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), &[]);
    let (metrics, mport) = metrics_config();
    let mut store = redis_store(&redis.url(), "");
    store.push_str("  timeout: 300ms\n");
    let g = gateway(store, &metrics);
    let c = client();
    let at = g.token("alice", &[]);
    enroll(&g, &c, &at, PIN);
    let csrf = pin_csrf(&g, &c, &at);
    let count = |op: &str| metric_sum(mport, "stepgate_store_seconds_count", &[("op", op)]);
    let fast = |op: &str| {
        metric_sum(
            mport,
            "stepgate_store_seconds_bucket",
            &[("op", op), ("le", "0.25")],
        )
    };
    assert!(
        count("get") + count("field_get") >= 1.0,
        "the enrollment's reads are timed:\n{}",
        scrape(mport)
    );

    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "3000", "ALL"]).trim(), "OK");
    let r = post_pin(&g, &c, &at, &csrf, PIN);
    assert_eq!(
        r.status(),
        503,
        "no store answer: the PIN check fails closed"
    );
    assert!(set_cookie(&r, "stepgate_su").is_none());

    // Redis's client gives up at the same bound ("timed out"), or the
    // gateway's own timeout does ("did not answer"): either names the
    // operation.
    let warning = g
        .log()
        .lines()
        .find(|l| l.contains("store operation failed"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no store warning:\n{}", store_warnings(&g)));
    let op = ["did not answer a ", "(during a "]
        .iter()
        .find_map(|m| warning.split(m).nth(1))
        .and_then(|r| r.split([' ', ')']).next())
        .unwrap_or_else(|| panic!("the warning names no operation: {warning}"))
        .to_string();
    assert!(
        warning.contains("within 300ms") || warning.contains("timed out"),
        "{warning}"
    );
    assert!(
        count(&op) - fast(&op) >= 1.0,
        "the timed-out {op} is observed at the timeout, above 0.25 s:\n{}",
        scrape(mport)
    );
    assert!(metric_sum(mport, "stepgate_store_errors_total", &[]) >= 1.0);
}
