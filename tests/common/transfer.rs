//! The recording app of the transaction tests (`tests/fixtures/transfer_app.py`:
//! every request it gets, byte for byte) and what reading stepgate's step-up
//! pages needs: a form's hidden fields, a URL's parameters, an API step-up
//! that approves values.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{json, Value};

use super::api::{api, bearer};
use super::{wait_for_port, Gateway};

/// A running `transfer_app.py`, killed on drop.
pub struct App {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request the app received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query as sent.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }
}

impl App {
    pub fn start() -> App {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let port_file = dir.path().join("port");
        let stderr = dir.path().join("app.log");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/transfer_app.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--log")
            .arg(&log)
            .arg("--port-file")
            .arg(&port_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 {script}: {e}"));
        let start = Instant::now();
        let port = loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "transfer_app.py exited early ({status}):\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                break p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "transfer_app.py did not start"
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        wait_for_port(port, Duration::from_secs(15));
        App {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Seen> {
        super::records(&self.log)
            .iter()
            .map(|v| Seen {
                method: v["method"].as_str().unwrap().to_string(),
                path: v["path"].as_str().unwrap().to_string(),
                headers: super::record_headers(v),
                body: super::record_body(v),
            })
            .collect()
    }

    /// Every request so far, after a moment for one that should not come.
    pub fn settled(&self) -> Vec<Seen> {
        std::thread::sleep(Duration::from_millis(300));
        self.requests()
    }

    /// The requests for `path` (without its query), settled.
    pub fn settled_to(&self, path: &str) -> Vec<Seen> {
        std::thread::sleep(Duration::from_millis(300));
        self.to(path)
    }

    /// The requests for `path` (without its query) so far.
    pub fn to(&self, path: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.split('?').next() == Some(path))
            .collect()
    }
}

/// `&amp;`, `&quot;`… back to text.
pub fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&#x2f;", "/")
        .replace("&#x2F;", "/")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The hidden fields (name, value) of the form posting to `action`.
pub fn hidden_fields(page: &str, action: &str) -> Vec<(String, String)> {
    let start = page
        .find(&format!("action=\"{action}\""))
        .unwrap_or_else(|| panic!("no form posting to {action} in:\n{page}"));
    let form = &page[start..];
    let form = &form[..form.find("</form>").expect("the form ends")];
    let mut out = Vec::new();
    for input in form.split("<input").skip(1) {
        let tag = &input[..input.find('>').unwrap()];
        if !tag.contains("type=\"hidden\"") {
            continue;
        }
        let attr = |name: &str| {
            let i = tag.find(&format!("{name}=\""))? + name.len() + 2;
            Some(unescape(&tag[i..][..tag[i..].find('"')?]))
        };
        out.push((attr("name").unwrap(), attr("value").unwrap_or_default()));
    }
    out
}

/// The form of `page` posting to `action`, its hidden fields and `fields`,
/// encoded as a browser sends it.
pub fn form_of(page: &str, action: &str, fields: &[(&str, &str)]) -> String {
    let mut form = hidden_fields(page, action);
    for (k, v) in fields {
        form.push((k.to_string(), v.to_string()));
    }
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&form)
        .finish()
}

/// The query parameters of a URL (or a path), decoded.
pub fn params(url: &str) -> Vec<(String, String)> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn param(url: &str, name: &str) -> Option<String> {
    params(url)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// A PIN step-up through the API approving `binding` (none: unbound).
pub fn api_pin_token(
    g: &Gateway,
    c: &Client,
    at: &str,
    pin: &str,
    binding: Option<Value>,
) -> String {
    let mut body = json!({ "PIN": pin });
    if let Some(b) = binding {
        body["Binding"] = b;
    }
    let r = bearer(c.put(api(g, "/stepup/pin")), at)
        .json(&body)
        .send()
        .unwrap();
    let status = r.status();
    let v: Value = r.json().unwrap();
    assert_eq!(status, 200, "the API step-up: {v}");
    v["SecondFactorValidationToken"]
        .as_str()
        .expect("a token")
        .to_string()
}
