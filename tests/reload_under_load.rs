//! Reloads under load (issue 12, flaw 11): while the policy is replaced and
//! SIGHUP sent over and over, clients keep sending requests, on keep-alive
//! connections and on new ones, and every request gets its whole answer: no
//! connection reset or closed, no request lost, no 5xx. A request whose body
//! is still arriving during every one of the reloads is answered too, and
//! each new policy takes effect. Nothing here depends on how fast anything
//! is: the only time limits guard against a hang.
//!
//! The clients speak HTTP/1.1 over raw sockets, so that nothing retries or
//! reconnects behind the test's back: a keep-alive client uses one
//! connection for all its requests, and any error on it is a failure.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Reloads the test makes; each one changes the policy.
const RELOADS: usize = 30;
/// Clients on keep-alive connections, and clients opening one per request.
const KEEP_ALIVE_CLIENTS: usize = 3;
const NEW_CONNECTION_CLIENTS: usize = 1;
/// Only against a hang: a reload that never applies, a request never answered.
const HANG: Duration = Duration::from_secs(60);

/// The default test policy plus `/toggle/**`, which each reload flips
/// between open (`none`) and `deny`, and a rule named after the reload, so
/// that every reload builds a policy that differs from the running one.
fn policy(n: usize) -> String {
    let toggle = if n.is_multiple_of(2) { "none" } else { "deny" };
    format!(
        "{DEFAULT_POLICY}  - name: toggle\n    match: {{ path: \"/toggle/**\" }}\n    require: {toggle}\n  - name: pushed-{n}\n    match: {{ path: \"/pushed/{n}/**\" }}\n    require: deny\n"
    )
}

/// Written beside the file and renamed over it, as deploy tools do.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn sighup(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -HUP {pid}");
}

/// A response read whole.
struct Answer {
    status: u16,
    /// The server keeps the connection open (no `Connection: close`).
    open: bool,
    body: Vec<u8>,
}

/// One GET on `conn`, its response read whole.
fn exchange(conn: &mut BufReader<TcpStream>, port: u16, path: &str) -> Result<Answer, String> {
    write!(
        conn.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: reload-under-load\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    read_response(conn)
}

/// An HTTP/1.1 response from `conn`, read whole (Content-Length or chunked).
fn read_response(conn: &mut BufReader<TcpStream>) -> Result<Answer, String> {
    let mut line = String::new();
    let read_line = |conn: &mut BufReader<TcpStream>, line: &mut String| -> Result<(), String> {
        line.clear();
        match conn.read_line(line) {
            Ok(0) => Err("connection closed before the response was complete".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    };
    read_line(conn, &mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not a status line: {line:?}"))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    loop {
        read_line(conn, &mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').unwrap_or((l, ""));
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            read_line(conn, &mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk)
                .map_err(|e| format!("chunk: {e}"))?;
            body.extend_from_slice(&chunk[..size]);
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        conn.read_exact(&mut body)
            .map_err(|e| format!("body: {e}"))?;
    } else {
        return Err(format!(
            "status {status} with neither Content-Length nor chunked"
        ));
    }
    Ok(Answer {
        status,
        open: !close,
        body,
    })
}

fn connect(port: u16) -> BufReader<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    s.set_nodelay(true).unwrap();
    BufReader::new(s)
}

#[derive(Default)]
struct Tally {
    answered: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// Send requests to `/public/x` until `stop`: on one keep-alive connection,
/// or on a new connection each time. Every answer must be a whole 200.
fn run_client(port: u16, keep_alive: bool, stop: Arc<AtomicBool>, tally: Arc<Tally>, id: usize) {
    let mut conn = keep_alive.then(|| connect(port));
    let mut sent = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let c = conn.get_or_insert_with(|| connect(port));
        sent += 1;
        match exchange(c, port, &format!("/public/x?client={id}&n={sent}")) {
            Ok(Answer {
                status: 200, open, ..
            }) => {
                tally.answered.fetch_add(1, Ordering::Relaxed);
                if keep_alive && !open {
                    tally.fail(format!(
                        "client {id}, request {sent}: the gateway closed a keep-alive connection"
                    ));
                    return;
                }
            }
            Ok(a) => {
                tally.fail(format!(
                    "client {id}, request {sent}: status {}: {}",
                    a.status,
                    String::from_utf8_lossy(&a.body)
                ));
                return;
            }
            Err(e) => {
                tally.fail(format!("client {id}, request {sent}: {e}"));
                return;
            }
        }
        if !keep_alive {
            conn = None;
        }
    }
}

/// The gateway's config for the in-process test: a memory store, a webhook.
fn config_text(webhook: &str, pin_required: bool) -> String {
    format!(
        "listen: \"127.0.0.1:9\"\nupstream: \"http://127.0.0.1:9\"\npolicy: policy.yaml\nfirst_factor:\n  cookie: access_token\n  jwt:\n    algorithms: [HS256]\n    secret: \"{FIRST_FACTOR_SECRET}\"\nsigning:\n  secret: \"{SIGNING_SECRET}\"\nstore:\n  kind: memory\nwebhook:\n  url: \"{webhook}\"\n  secret: \"webhook-secret-0123456789abcdef0123456789\"\npin:\n  required: {pin_required}\n"
    )
}

fn status(c: &reqwest::blocking::Client, url: &str) -> u16 {
    c.get(url).send().map(|r| r.status().as_u16()).unwrap_or(0)
}

#[test]
fn requests_on_keep_alive_and_new_connections_are_all_answered_while_the_policy_is_reloaded_again_and_again(
) {
    let g = Gateway::start_with(GatewayOptions {
        policy: policy(0),
        ..Default::default()
    });
    let pid = g.proc.as_ref().unwrap().child.id();
    let policy_file = g.dir.path().join("policy.yaml");
    let c = client();
    assert_eq!(status(&c, &g.url("/toggle/x")), 200);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..KEEP_ALIVE_CLIENTS + NEW_CONNECTION_CLIENTS)
        .map(|i| {
            let (stop, tally, port) = (stop.clone(), tally.clone(), g.port);
            std::thread::spawn(move || run_client(port, i < KEEP_ALIVE_CLIENTS, stop, tally, i))
        })
        .collect();
    // A request in flight through every reload: its head now, one byte of
    // its body after each reload, its answer after the last.
    let (next_byte, bytes) = std::sync::mpsc::channel::<()>();
    let slow_port = g.port;
    let slow = std::thread::spawn(move || -> Result<Answer, String> {
        let mut conn = connect(slow_port);
        write!(
            conn.get_mut(),
            "POST /public/slow HTTP/1.1\r\nHost: 127.0.0.1:{slow_port}\r\nContent-Type: application/octet-stream\r\nContent-Length: {RELOADS}\r\n\r\n"
        )
        .map_err(|e| format!("head: {e}"))?;
        for _ in 0..RELOADS {
            if bytes.recv().is_err() {
                return Err("the test stopped before the body was sent".into());
            }
            conn.get_mut()
                .write_all(b"x")
                .map_err(|e| format!("body byte: {e}"))?;
        }
        read_response(&mut conn)
    });
    // The load is running before the first reload.
    let started = Instant::now();
    while tally.answered.load(Ordering::Relaxed) < 20 && started.elapsed() < HANG {
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut answered_between_reloads = Vec::new();
    for n in 1..=RELOADS {
        let before = tally.answered.load(Ordering::Relaxed);
        replace_file(&policy_file, &policy(n));
        sighup(pid);
        // The new policy takes effect: the toggle flips, and this reload's
        // own rule applies.
        let want = if n.is_multiple_of(2) { 200 } else { 403 };
        let since = Instant::now();
        while status(&c, &g.url("/toggle/x")) != want {
            assert!(
                since.elapsed() < HANG,
                "reload {n}: /toggle/x never answered {want}\n{}",
                g.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            status(&c, &g.url(&format!("/pushed/{n}/x"))),
            403,
            "reload {n}: its own rule applies"
        );
        answered_between_reloads.push(tally.answered.load(Ordering::Relaxed) - before);
        let _ = next_byte.send(());
        if !tally.failures.lock().unwrap().is_empty() {
            break;
        }
    }
    drop(next_byte);
    stop.store(true, Ordering::Relaxed);
    for h in clients {
        h.join().unwrap();
    }
    let slow = slow.join().unwrap();

    let failures = tally.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "requests failed while the policy was reloaded: {failures:?}"
    );
    // The request that started before the first reload was forwarded whole.
    let slow = slow.unwrap_or_else(|e| panic!("the request in flight through the reloads: {e}"));
    assert_eq!(
        slow.status,
        200,
        "the request in flight through the reloads: {}",
        String::from_utf8_lossy(&slow.body)
    );
    let echo: serde_json::Value = serde_json::from_slice(&slow.body).unwrap();
    assert_eq!(echo["path"], "/public/slow", "{echo}");
    assert_eq!(
        echo["body_bytes"], RELOADS,
        "the whole body reached the app: {echo}"
    );
    let answered = tally.answered.load(Ordering::Relaxed);
    eprintln!(
        "{RELOADS} reloads; {answered} requests answered; per reload: {answered_between_reloads:?}"
    );
    // The clients were served while the reloads went on, not only before
    // and after them.
    assert!(
        answered_between_reloads.iter().sum::<usize>() > 0,
        "no request was answered during the reloads"
    );

    let log = g.log();
    let reloads: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "configuration reloaded")
        .collect();
    assert!(
        reloads.len() >= RELOADS,
        "{} reloads logged, {RELOADS} made\n{log}",
        reloads.len()
    );
    assert!(
        reloads.iter().all(|v| v["took_ms"].is_number()),
        "each reload logs how long it took: {reloads:?}"
    );
    assert!(
        !log.contains("panicked"),
        "the gateway panicked during the reloads\n{log}"
    );
}

/// What a reload builds and what it keeps, checked in-process: parts whose
/// settings did not change (the assertion signer with its signature cache,
/// the webhook client) are the running ones, the caches that stay valid are
/// carried over, and the replaced snapshot is dropped by the reload side
/// ([`Shared::release_retired`]) once nothing else holds it, never by the
/// last request that lets go of it.
#[test]
fn a_reload_keeps_what_did_not_change_and_the_reload_thread_drops_the_replaced_snapshot() {
    use stepgate::gate::{Gate, Shared};

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let hook = "https://hooks.example.com/a";
    std::fs::write(&config, config_text(hook, false)).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), policy(0)).unwrap();
    let load = || stepgate::config::load(&config).unwrap_or_else(|d| panic!("{d:?}"));
    let shared = Shared::new(Gate::build(load()).unwrap(), &config).unwrap();

    let first = shared.load();
    first.known_pins.insert("alice");
    replace_file(&dir.path().join("policy.yaml"), &policy(1));
    shared.reload().unwrap();
    let second = shared.load();
    assert!(!Arc::ptr_eq(&first, &second), "a new snapshot");
    assert!(
        second.policy.rules.iter().any(|r| r.name == "pushed-1"),
        "with the new policy"
    );
    assert!(
        Arc::ptr_eq(&first.assertion, &second.assertion),
        "same keys: the running signer, and its cache of signatures"
    );
    assert!(
        Arc::ptr_eq(&first.notifier, &second.notifier),
        "same webhook: the running client, and its connections"
    );
    assert!(
        second.known_pins.contains("alice"),
        "known PINs carried over"
    );
    assert!(Arc::ptr_eq(
        &first.required_pin_tokens,
        &second.required_pin_tokens
    ));

    // A request still holds the replaced snapshot: it stays, and letting go
    // of it does not drop it; the next release on the reload side does.
    assert_eq!(shared.release_retired(), 1, "held by `first`");
    let replaced = Arc::downgrade(&first);
    drop(first);
    assert!(
        replaced.upgrade().is_some(),
        "the last request's reference was not the last one"
    );
    assert_eq!(shared.release_retired(), 0);
    assert!(replaced.upgrade().is_none(), "dropped by release_retired");

    // What changed is rebuilt: a rotated assertion key (a new key file), a
    // new webhook; switching `pin.required` on forgets who skipped a PIN.
    let key = second.settings.assertion.key_file.clone();
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&config, config_text("https://hooks.example.com/b", true)).unwrap();
    shared.reload().unwrap();
    let third = shared.load();
    assert!(key.exists(), "a new assertion key was made");
    assert!(!Arc::ptr_eq(&second.assertion, &third.assertion));
    assert_ne!(second.assertion.jwks(), third.assertion.jwks());
    assert!(!Arc::ptr_eq(&second.notifier, &third.notifier));
    assert!(!third.known_pins.contains("alice"));
    drop(second);
    drop(third);
    assert_eq!(shared.release_retired(), 0);
}
