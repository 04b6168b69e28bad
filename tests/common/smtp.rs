//! Real SMTP servers for the email tests: Python's `aiosmtpd` on a loopback
//! port, started and stopped by the test, writing what it accepts to a
//! maildir the test reads. Also a tiny handler that refuses every message
//! with `550`, and a small reader for the `.eml` files (headers, MIME parts,
//! quoted-printable and base64 bodies).
//!
//! Missing `python3` or `aiosmtpd` is a failure, never a skip: the README's
//! test command, `scripts/test.sh`, installs them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::free_port;

const INSTALL_HINT: &str = "the email tests need `python3` with the `aiosmtpd` module (a real \
     SMTP server); run the README's test command, `scripts/test.sh` (it runs \
     `scripts/install-deps.sh test`, which installs both), then run the tests again";

/// Panic with the install hint unless `python3 -c "import aiosmtpd"` works.
pub fn require_aiosmtpd() {
    let out = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdin(Stdio::null())
        .output();
    match out {
        Err(e) => panic!("cannot run python3: {e}; {INSTALL_HINT}"),
        Ok(o) if !o.status.success() => panic!(
            "python3 cannot import aiosmtpd ({}); {INSTALL_HINT}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(_) => {}
    }
}

/// A handler module that refuses every message at DATA.
const REFUSE_PY: &str = r#"
class Refuse:
    async def handle_DATA(self, server, session, envelope):
        return "550 5.7.1 Refused by the test server"
"#;

/// How an `SmtpServer` handles what it receives.
pub enum Handler {
    /// `aiosmtpd.handlers.Mailbox`: every message goes to the maildir.
    Mailbox,
    /// Answers `550` to DATA; nothing is stored.
    Refuse,
}

/// A running `python3 -m aiosmtpd`, killed on drop.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    /// The maildir (messages land in `maildir/new`).
    pub maildir: PathBuf,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpServer {
    /// A maildir server on a free port.
    pub fn start() -> SmtpServer {
        SmtpServer::start_on(free_port(), Handler::Mailbox)
    }

    /// A server with `handler` on `port` (which must be free).
    pub fn start_on(port: u16, handler: Handler) -> SmtpServer {
        require_aiosmtpd();
        let dir = tempfile::tempdir().unwrap();
        // aiosmtpd's Maildir creates the folder with new/, cur/ and tmp/.
        let maildir = dir.path().join("maildir");
        let log = dir.path().join("aiosmtpd.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")]);
        match handler {
            Handler::Mailbox => {
                cmd.args(["-c", "aiosmtpd.handlers.Mailbox"]).arg(&maildir);
            }
            Handler::Refuse => {
                std::fs::write(dir.path().join("refuse.py"), REFUSE_PY).unwrap();
                cmd.args(["-c", "refuse.Refuse"])
                    .env("PYTHONPATH", dir.path());
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 -m aiosmtpd: {e}; {INSTALL_HINT}"));
        let mut s = SmtpServer {
            child,
            port,
            maildir,
            log,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!(
                    "aiosmtpd on port {port} exited early ({status}):\n{}\n{INSTALL_HINT}",
                    std::fs::read_to_string(&s.log).unwrap_or_default()
                );
            }
            if super::listening(port) {
                return s;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "aiosmtpd does not listen on 127.0.0.1:{port} after 30 s:\n{}",
                    std::fs::read_to_string(&s.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every message delivered so far, oldest first.
    pub fn messages(&self) -> Vec<Eml> {
        read_eml_dir(&self.maildir.join("new"), false)
    }

    /// Wait (at most 15 s) until at least `n` messages arrived; return them.
    pub fn wait_for_messages(&self, n: usize) -> Vec<Eml> {
        wait_for_eml(n, || self.messages())
    }

    /// The `YAML` for `mail:` pointing at this server.
    pub fn mail_config(&self) -> String {
        smtp_mail_config(self.port)
    }
}

/// `mail:` config for a plain SMTP server on `port` (short timeout).
pub fn smtp_mail_config(port: u16) -> String {
    format!(
        "mail:\n  from: \"stepgate@gateway.test\"\n  smtp: {{ host: \"127.0.0.1\", port: {port}, tls: none, timeout: 10s }}\n"
    )
}

pub fn wait_for_eml(n: usize, read: impl Fn() -> Vec<Eml>) -> Vec<Eml> {
    let start = Instant::now();
    loop {
        let m = read();
        if m.len() >= n {
            return m;
        }
        // Generous: a loaded CI machine hashes PINs and starts SMTP slowly.
        if start.elapsed() > Duration::from_secs(40) {
            panic!("expected {n} message(s), found {} after 40 s", m.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parse every message file in `dir` (skipping hidden files unless
/// `hidden`), ordered by modification time then name.
pub fn read_eml_dir(dir: &Path, hidden: bool) -> Vec<Eml> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| hidden || !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| (e.metadata().unwrap().modified().unwrap(), e.path()))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|(_, p)| Eml::parse(&p, &std::fs::read(&p).unwrap()))
        .collect()
}

/// One delivered message.
#[derive(Debug, Clone)]
pub struct Eml {
    pub path: PathBuf,
    /// The file as stored.
    pub raw: String,
    /// Unfolded top-level headers, in order.
    pub headers: Vec<(String, String)>,
    /// Decoded body parts: (content type, text).
    pub parts: Vec<(String, String)>,
}

fn unfold(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn header_of<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

fn decode_qp(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            if b.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            if let (Some(h), Some(l)) = (b.get(i + 1), b.get(i + 2)) {
                if let Ok(v) = u8::from_str_radix(&format!("{}{}", *h as char, *l as char), 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn decode_body(headers: &[(String, String)], body: &str) -> String {
    match header_of(headers, "Content-Transfer-Encoding")
        .unwrap_or("7bit")
        .to_ascii_lowercase()
        .as_str()
    {
        "quoted-printable" => decode_qp(body),
        "base64" => {
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .expect("base64 body"),
            )
            .into_owned()
        }
        _ => body.to_string(),
    }
}

/// The leaf parts of a (possibly nested) MIME entity.
fn leaf_parts(headers: &[(String, String)], body: &str, out: &mut Vec<(String, String)>) {
    let ct = header_of(headers, "Content-Type")
        .unwrap_or("text/plain")
        .to_string();
    if ct.to_ascii_lowercase().starts_with("multipart/") {
        let boundary = param(&ct, "boundary").expect("multipart boundary");
        let delim = format!("--{boundary}");
        for chunk in body.split(&delim).skip(1) {
            if chunk.starts_with("--") {
                break;
            }
            let chunk = chunk.strip_prefix('\n').unwrap_or(chunk);
            let (h, b) = chunk.split_once("\n\n").unwrap_or((chunk, ""));
            leaf_parts(&unfold(h), b, out);
        }
    } else {
        let mime = ct.split(';').next().unwrap().trim().to_ascii_lowercase();
        out.push((mime, decode_body(headers, body)));
    }
}

impl Eml {
    pub fn parse(path: &Path, bytes: &[u8]) -> Eml {
        let raw = String::from_utf8_lossy(bytes).replace("\r\n", "\n");
        let (h, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
        let headers = unfold(h);
        let mut parts = Vec::new();
        leaf_parts(&headers, body, &mut parts);
        Eml {
            path: path.to_path_buf(),
            raw: raw.clone(),
            headers,
            parts,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    /// The decoded part of this MIME type (`text/plain`, `text/html`).
    pub fn part(&self, mime: &str) -> Option<&str> {
        self.parts
            .iter()
            .find(|(m, _)| m == mime)
            .map(|(_, t)| t.as_str())
    }

    /// Every decoded text: subject and all parts.
    pub fn all_text(&self) -> String {
        let mut s = self.header("Subject").unwrap_or_default().to_string();
        for (_, t) in &self.parts {
            s.push('\n');
            s.push_str(t);
        }
        s
    }

    /// The code after `Your code:` in the text part, checked against the
    /// HTML part and the subject, which must carry the same code.
    pub fn code(&self) -> String {
        let text = self
            .part("text/plain")
            .unwrap_or_else(|| panic!("no text/plain part in:\n{}", self.raw));
        let code = digits_after(text, "Your code:")
            .unwrap_or_else(|| panic!("no `Your code:` in the text part:\n{text}"));
        let html = self.part("text/html").expect("an HTML part");
        assert!(
            html.contains(&code),
            "the HTML part carries the code {code}:\n{html}"
        );
        let subject = self.header("Subject").unwrap_or_default();
        assert!(
            subject.ends_with(&code),
            "the subject carries the code {code}: {subject}"
        );
        code
    }
}

/// The run of digits following `marker` (spaces skipped).
pub fn digits_after(text: &str, marker: &str) -> Option<String> {
    let i = text.find(marker)? + marker.len();
    let d: String = text[i..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    (!d.is_empty()).then_some(d)
}
