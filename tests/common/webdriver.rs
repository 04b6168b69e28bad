//! A small W3C WebDriver client over plain HTTP (reqwest blocking), driving
//! Debian's real headless Chromium through a `chromedriver` child process.
//! Everything is stopped on drop: the session is deleted, then chromedriver
//! is killed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::free_port;

/// The W3C key under which an element reference is returned.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long to wait for anything the browser does (page loads, element
/// changes). Generous: a busy 2-core machine can be slow to start Chromium.
pub const WAIT: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "the browser tests need Debian's `chromium` and `chromium-driver` \
     (same version); run the README's test command, `scripts/test.sh`, which installs them \
     (as root, via apt), then run the tests again";

/// Path of a browser tool: `$ENV` when set, else `default`. Panics with an
/// install hint when it is missing, so the test fails instead of skipping.
fn tool(env: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    if !p.is_file() {
        panic!(
            "{} not found (set {env} to override the path): {INSTALL_HINT}",
            p.display()
        );
    }
    p
}

/// A running `chromedriver --port=P`, killed on drop.
pub struct Driver {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Start chromedriver on a free port and wait until it reports ready.
    /// Its log goes to `dir/chromedriver.log`.
    pub fn start(dir: &Path) -> Driver {
        let exe = tool("CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(&exe)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.join("chromedriver-verbose.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {INSTALL_HINT}", exe.display()));
        let mut d = Driver { child, port, log };
        let http = http_client(Duration::from_secs(10));
        let start = Instant::now();
        loop {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!(
                    "chromedriver exited early ({status}):\n{}\n{INSTALL_HINT}",
                    std::fs::read_to_string(&d.log).unwrap_or_default()
                );
            }
            if super::listening(port) {
                let ready = http
                    .get(format!("http://127.0.0.1:{port}/status"))
                    .send()
                    .ok()
                    .and_then(|r| r.json::<Value>().ok())
                    .is_some_and(|v| v["value"]["ready"] == true);
                if ready {
                    return d;
                }
            }
            if start.elapsed() > WAIT {
                let log = std::fs::read_to_string(&d.log).unwrap_or_default();
                let _ = d.child.kill();
                panic!("chromedriver on port {port} not ready after {WAIT:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Open a headless Chromium session with a fresh profile in `profile`.
    pub fn session(&self, profile: &Path) -> Session {
        let chromium = tool("CHROMIUM", "/usr/bin/chromium");
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--disable-quic".into(),
            "--no-proxy-server".into(),
            // Tall enough that the demo app's header table fits a screenshot.
            "--window-size=1280,1600".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "implicit": 0, "pageLoad": 60_000, "script": 30_000 },
                    "goog:chromeOptions": {
                        "binary": chromium.to_str().unwrap(),
                        "args": args,
                    }
                }
            }
        });
        let base = format!("http://127.0.0.1:{}", self.port);
        // Starting Chromium is the slowest step; give it plenty of time.
        let http = http_client(Duration::from_secs(180));
        let resp = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .unwrap_or_else(|e| panic!("new WebDriver session: {e}"));
        let status = resp.status();
        let v: Value = resp.json().expect("new session answers JSON");
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "new WebDriver session failed ({status}): {v}\nchromedriver log:\n{}\n\
                     If Chromium could not start: {INSTALL_HINT}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            })
            .to_string();
        Session {
            http,
            base: format!("{base}/session/{id}"),
        }
    }
}

fn http_client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .unwrap()
}

/// A WebDriver error answer (`{"value":{"error","message"}}`).
#[derive(Debug)]
pub struct WdError {
    pub error: String,
    pub message: String,
}

/// One browser session; deleted on drop (which closes Chromium).
pub struct Session {
    http: reqwest::blocking::Client,
    base: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).send();
    }
}

/// A reference to an element of the current page.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Session {
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WdError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().map_err(|e| WdError {
            error: "transport".into(),
            message: format!("{method} {url}: {e}"),
        })?;
        let ok = resp.status().is_success();
        let v: Value = resp.json().map_err(|e| WdError {
            error: "bad response".into(),
            message: format!("{method} {url}: {e}"),
        })?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if ok {
            Ok(value)
        } else {
            Err(WdError {
                error: value["error"].as_str().unwrap_or("unknown").to_string(),
                message: value["message"].as_str().unwrap_or("").to_string(),
            })
        }
    }

    fn get(&self, path: &str) -> Result<Value, WdError> {
        self.call(reqwest::Method::GET, path, None)
    }

    fn post(&self, path: &str, body: Value) -> Result<Value, WdError> {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    fn delete(&self, path: &str) -> Result<Value, WdError> {
        self.call(reqwest::Method::DELETE, path, None)
    }

    /// The value of the cookie `name` visible to the current page (HttpOnly
    /// cookies included), if there is one.
    pub fn cookie(&self, name: &str) -> Option<String> {
        match self.get(&format!("/cookie/{name}")) {
            Ok(v) => v["value"].as_str().map(str::to_string),
            Err(e) if e.error == "no such cookie" => None,
            Err(e) => panic!("get cookie {name}: {e:?}"),
        }
    }

    /// Delete the cookie `name` of the current page's site.
    pub fn delete_cookie(&self, name: &str) {
        self.delete(&format!("/cookie/{name}"))
            .unwrap_or_else(|e| panic!("delete cookie {name}: {e:?}"));
    }

    /// Delete every cookie of the current page's site (signing out).
    pub fn delete_all_cookies(&self) {
        self.delete("/cookie")
            .unwrap_or_else(|e| panic!("delete all cookies: {e:?}"));
    }

    /// Navigate and wait for the page load (redirects are followed).
    pub fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }))
            .unwrap_or_else(|e| panic!("navigate to {url}: {e:?}"));
    }

    pub fn current_url(&self) -> String {
        self.get("/url")
            .unwrap_or_else(|e| panic!("current url: {e:?}"))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn title(&self) -> String {
        self.get("/title")
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    }

    pub fn source(&self) -> String {
        self.get("/source")
            .unwrap_or_else(|e| panic!("page source: {e:?}"))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Find one element; `using` is a W3C strategy ("css selector", "xpath").
    pub fn try_find_by(&self, using: &str, value: &str) -> Result<Element, WdError> {
        let v = self.post("/element", json!({ "using": using, "value": value }))?;
        v[ELEMENT_KEY]
            .as_str()
            .map(|id| Element(id.to_string()))
            .ok_or_else(|| WdError {
                error: "bad response".into(),
                message: format!("no element reference in {v}"),
            })
    }

    pub fn try_find(&self, css: &str) -> Result<Element, WdError> {
        self.try_find_by("css selector", css)
    }

    /// Find an element by CSS selector, waiting for it to appear.
    pub fn find(&self, css: &str) -> Element {
        let mut last = None;
        let found = self.wait_for_or(&format!("element {css}"), || match self.try_find(css) {
            Ok(e) => Some(e),
            Err(e) => {
                last = Some(e);
                None
            }
        });
        found.unwrap_or_else(|what| panic!("{what}\nlast WebDriver error: {last:?}"))
    }

    pub fn try_text(&self, e: &Element) -> Result<String, WdError> {
        Ok(self
            .get(&format!("/element/{}/text", e.0))?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    pub fn text(&self, e: &Element) -> String {
        self.try_text(e)
            .unwrap_or_else(|err| panic!("element text: {err:?}"))
    }

    /// The attribute `name` of `e`, as written in the markup.
    pub fn attribute(&self, e: &Element, name: &str) -> Option<String> {
        self.get(&format!("/element/{}/attribute/{name}", e.0))
            .unwrap_or_else(|err| panic!("element attribute {name}: {err:?}"))
            .as_str()
            .map(str::to_string)
    }

    /// The text of the element matching `css`, if there is one now.
    pub fn text_of(&self, css: &str) -> Option<String> {
        let e = self.try_find(css).ok()?;
        self.try_text(&e).ok()
    }

    pub fn send_keys(&self, e: &Element, text: &str) {
        self.post(&format!("/element/{}/value", e.0), json!({ "text": text }))
            .unwrap_or_else(|err| panic!("send keys: {err:?}"));
    }

    pub fn click(&self, e: &Element) {
        self.post(&format!("/element/{}/click", e.0), json!({}))
            .unwrap_or_else(|err| panic!("click: {err:?}"));
    }

    /// True once `e` no longer belongs to the current document (the page was
    /// replaced, e.g. after a form post).
    pub fn is_stale(&self, e: &Element) -> bool {
        match self.get(&format!("/element/{}/name", e.0)) {
            Ok(_) => false,
            Err(err) => err.error == "stale element reference" || err.error == "no such element",
        }
    }

    /// Run `script` (a function body) in the page and return its result.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, WdError> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
    }

    /// The HTTP status of the response that produced the current document
    /// (Navigation Timing `responseStatus`), when the browser reports it.
    pub fn response_status(&self) -> Option<u16> {
        self.execute(
            "const n = performance.getEntriesByType('navigation')[0]; return n ? n.responseStatus : null;",
            vec![],
        )
        .ok()?
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let b64 = self
            .get("/screenshot")
            .unwrap_or_else(|e| panic!("screenshot: {e:?}"));
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("screenshot is base64")
    }

    pub fn save_screenshot(&self, path: &Path) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        let png = self.screenshot();
        assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
        std::fs::write(path, png).unwrap();
    }

    /// Poll `f` until it gives a value; on timeout panic with the current
    /// URL and page source, which is what one needs to see what went wrong.
    pub fn wait_for<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        self.wait_for_or(what, f).unwrap_or_else(|m| panic!("{m}"))
    }

    /// Like `wait_for`, but gives the timeout report back instead of panicking.
    fn wait_for_or<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return Ok(v);
            }
            if start.elapsed() > WAIT {
                let url = self.get("/url").map(|v| v.to_string()).unwrap_or_default();
                let src = self
                    .get("/source")
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                return Err(format!(
                    "waited {WAIT:?} for {what}; the browser is at {url}, page:\n{src}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the current URL satisfies `pred`; returns it.
    pub fn wait_for_url(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for(&format!("the URL to be {what}"), || {
            let u = self.get("/url").ok()?.as_str()?.to_string();
            pred(&u).then_some(u)
        })
    }
}

/// A headless Chromium session with a fresh profile, its chromedriver and
/// the temporary directory both live in. Field order is drop order: the
/// session goes first (closing Chromium), then chromedriver, then the
/// directory. Derefs to the `Session`.
pub struct Browser {
    pub session: Session,
    _driver: Driver,
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Start chromedriver and open a session. Call it before starting
    /// anything else, so a missing browser fails fast with the install hint.
    pub fn start() -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let driver = Driver::start(dir.path());
        let profile = dir.path().join("profile");
        std::fs::create_dir_all(&profile).unwrap();
        let session = driver.session(&profile);
        Browser {
            session,
            _driver: driver,
            _dir: dir,
        }
    }
}

impl std::ops::Deref for Browser {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}
