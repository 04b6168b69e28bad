//! A real HTTP receiver for tests: `tests/fixtures/http_receiver.py`
//! (Python's standard library only) on a free loopback port, standing in for
//! an SMS gateway or a webhook endpoint. It records every POST (path,
//! headers, exact body) and answers 200, or, when told, an error status or
//! nothing at all, so failure handling can be tested. Killed on drop.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the receiver answers the next POSTs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 `{"ok": true}`.
    Ok,
    /// This HTTP status.
    Status(u16),
    /// No answer (the connection stays open until the mode changes).
    Hang,
}

impl Mode {
    fn arg(self) -> String {
        match self {
            Mode::Ok => "ok".into(),
            Mode::Status(s) => s.to_string(),
            Mode::Hang => "hang".into(),
        }
    }
}

/// One recorded POST.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    /// Header names as sent, in order.
    pub headers: Vec<(String, String)>,
    /// The exact body bytes.
    pub body: Vec<u8>,
}

impl Recorded {
    /// A header's value (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body of POST {} is not JSON ({e}): {}",
                self.path,
                self.text()
            )
        })
    }
}

/// A running `http_receiver.py`, killed on drop.
pub struct Receiver {
    child: Child,
    pub port: u16,
    /// JSON lines, one per POST.
    pub log: PathBuf,
    /// Writing a mode here changes the answers at once.
    pub control: PathBuf,
    /// The receiver's own stderr.
    pub stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/http_receiver.py"
);

impl Receiver {
    /// A receiver answering 200.
    pub fn start() -> Receiver {
        Receiver::start_with(Mode::Ok)
    }

    /// A receiver answering in `mode` until told otherwise.
    pub fn start_with(mode: Mode) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let control = dir.path().join("mode");
        let port_file = dir.path().join("port");
        let stderr = dir.path().join("receiver.log");
        let err = std::fs::File::create(&stderr).unwrap();
        let child = Command::new("python3")
            .arg(SCRIPT)
            .arg("--log")
            .arg(&log)
            .arg("--control")
            .arg(&control)
            .arg("--port-file")
            .arg(&port_file)
            .args(["--port", "0", "--mode", &mode.arg()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 {SCRIPT}: {e}"));
        let mut r = Receiver {
            child,
            port: 0,
            log,
            control,
            stderr,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = r.child.try_wait().unwrap() {
                panic!(
                    "http_receiver.py exited early ({status}):\n{}",
                    std::fs::read_to_string(&r.stderr).unwrap_or_default()
                );
            }
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                if let Ok(p) = p.trim().parse::<u16>() {
                    r.port = p;
                    break;
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "http_receiver.py did not start within 30 s:\n{}",
                    std::fs::read_to_string(&r.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        super::wait_for_port(r.port, Duration::from_secs(15));
        r
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answer every following POST in `mode`.
    pub fn set_mode(&self, mode: Mode) {
        self.write_control(&mode.arg());
    }

    /// Answer the next `count` POSTs in `mode`, then 200.
    pub fn set_mode_for(&self, mode: Mode, count: u32) {
        self.write_control(&format!("{} {count}", mode.arg()));
    }

    fn write_control(&self, text: &str) {
        // Written aside and renamed, so the receiver never reads half a mode.
        let tmp = self.control.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.control).unwrap();
    }

    /// Every POST recorded so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        super::records(&self.log)
            .iter()
            .map(|v| Recorded {
                path: v["path"].as_str().unwrap().to_string(),
                headers: super::record_headers(v),
                body: super::record_body(v),
            })
            .collect()
    }

    /// Wait until at least `n` POSTs were recorded (polling, at most
    /// `timeout`); return all of them. Panics on timeout.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let start = Instant::now();
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            if start.elapsed() > timeout {
                panic!(
                    "expected {n} POST(s) at the receiver, got {} after {timeout:?}: {:?}",
                    got.len(),
                    got.iter().map(|r| r.text()).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until `n` POSTs satisfy `pred`; return those. Panics on timeout.
    pub fn wait_for_matching(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Recorded) -> bool,
    ) -> Vec<Recorded> {
        let start = Instant::now();
        loop {
            let got: Vec<Recorded> = self.requests().into_iter().filter(&pred).collect();
            if got.len() >= n {
                return got;
            }
            if start.elapsed() > timeout {
                panic!(
                    "expected {n} matching POST(s) at the receiver, got {} after {timeout:?}; all: {:?}",
                    got.len(),
                    self.requests().iter().map(|r| r.text()).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
