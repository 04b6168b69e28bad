//! The bench of the browser tests (a real headless Chromium through
//! `webdriver`, a gateway in front of the demo upstream and, for the mail
//! flows, a real SMTP server) and helpers for the pages they go through.

use std::path::PathBuf;

use super::smtp::{require_aiosmtpd, SmtpServer};
use super::webdriver::{Browser, Session};
use super::{Gateway, GatewayOptions};

/// A policy for the browser tests: the demo login link is public, every
/// other route needs a login, then `rules` (YAML list items, two-space
/// indented).
pub fn demo_policy(rules: &str) -> String {
    format!(
        "default: authenticated\nrules:\n  - name: demo-login\n    match: {{ path: \"/demo/login\" }}\n    require: none\n{rules}"
    )
}

/// The rule `admin`: `/admin/**` needs a PIN step-up at most 5 minutes old.
pub const ADMIN_PIN_RULE: &str = r#"  - name: admin
    match: { path: "/admin/**" }
    require: step_up
    step_up: { methods: [pin], max_age: 5m }
"#;

/// A browser, a gateway and, for mail, the SMTP server the gateway mails
/// through. Field order is drop order: the browser (session, then
/// chromedriver) first, then the gateway, then the SMTP server.
pub struct Bench {
    pub browser: Browser,
    pub g: Gateway,
    pub smtp: Option<SmtpServer>,
}

impl Bench {
    /// Start the browser before anything else, so a missing browser fails
    /// fast with the install hint; then, with `mail`, a real SMTP server
    /// (aiosmtpd, checked first); then a gateway with `policy`, `extra`
    /// top-level config and, with `mail`, `mail:` pointing at the server.
    pub fn start(policy: &str, extra: &str, mail: bool) -> Bench {
        if mail {
            require_aiosmtpd();
        }
        let browser = Browser::start();
        let smtp = mail.then(SmtpServer::start);
        let mail_config = smtp.as_ref().map(|m| m.mail_config()).unwrap_or_default();
        let g = Gateway::start_with(GatewayOptions {
            policy: policy.to_string(),
            extra_config: format!("{extra}{mail_config}"),
            ..Default::default()
        });
        Bench { browser, g, smtp }
    }

    /// The SMTP server (the bench must have been started with `mail`).
    pub fn smtp(&self) -> &SmtpServer {
        self.smtp.as_ref().expect("a bench started with mail")
    }
}

/// Where the browser tests save screenshots: `browser-screenshots/` in the
/// target directory (created).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("browser-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Save a screenshot of `s` as `<screenshot_dir>/<name>.png`.
pub fn screenshot_as(s: &Session, name: &str) {
    s.save_screenshot(&screenshot_dir().join(format!("{name}.png")));
}

/// Type `text` into the field `css` of the current page and click
/// `#submit`; returns once the old page is gone (the browser may still be
/// loading the answer).
pub fn submit_field(s: &Session, css: &str, text: &str) {
    let field = s.find(css);
    s.send_keys(&field, text);
    s.click(&s.find("#submit"));
    s.wait_for(&format!("the form with {css} to be submitted"), || {
        s.is_stale(&field).then_some(())
    });
}

/// Type `pin` into the PIN page (`#pin`) and submit; see `submit_field`.
pub fn submit_pin(s: &Session, pin: &str) {
    submit_field(s, "#pin", pin);
}

/// A request header the demo upstream received, from its HTML page.
pub fn upstream_header(s: &Session, name: &str) -> Option<String> {
    s.try_find_by("xpath", &format!("//tr[th='{name}']/td"))
        .ok()
        .map(|e| s.text(&e))
}
