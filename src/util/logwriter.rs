//! Where log lines go (stderr). Access lines, one per request, are buffered
//! and written in batches: a flusher thread writes them every 200 ms, or
//! sooner when 64 KiB are waiting, so a busy gateway makes one `write(2)` per
//! few hundred requests instead of one per request, and no worker ever waits
//! for another thread to wake up. Every other line (audit events, errors,
//! reloads) is written through at once, and flushes what was buffered before
//! it, so the log keeps its order.
//!
//! The cost: up to 200 ms of access lines can be lost if the process is
//! killed outright (audit lines never are).

use std::fmt::Write as _;
use std::io::{BufWriter, Stderr, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// The writer of JSON access lines (set when the log format is JSON).
static ACCESS: std::sync::OnceLock<LogWriter> = std::sync::OnceLock::new();

/// One access line as JSON, the same fields and shape as tracing's JSON
/// events, formatted here without tracing's per-field machinery (it cost
/// several µs per request). Returns false when JSON access lines are not
/// set up (text format): the caller logs through tracing instead.
pub fn access_json(fields: &[(&str, Field<'_>)]) -> bool {
    let Some(w) = ACCESS.get() else {
        return false;
    };
    let mut line = String::with_capacity(320);
    line.push_str("{\"timestamp\":\"");
    push_rfc3339(&mut line, time::OffsetDateTime::now_utc());
    line.push_str("\",\"level\":\"INFO\"");
    for (k, v) in fields {
        line.push_str(",\"");
        line.push_str(k);
        line.push_str("\":");
        match v {
            Field::Str(s) => push_json_str(&mut line, s),
            Field::Int(n) => crate::util::text::push_i64(&mut line, *n),
            Field::Float(f) if f.is_finite() => {
                let _ = write!(line, "{f:.3}");
            }
            Field::Float(_) => line.push('0'),
        }
    }
    line.push_str(",\"target\":\"access\"}\n");
    let _ = w
        .out
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .write_all(line.as_bytes());
    true
}

thread_local! {
    /// The whole-second part of the last timestamp written on this thread
    /// (`2026-12-03T09:45:12`), and its second.
    static SECOND: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
}

/// `t` (UTC) as RFC 3339, exactly as `time`'s `Rfc3339` writes it (the
/// fraction without trailing zeros, none when zero, then `Z`). The date and
/// time of day are formatted once per second per thread, by `time` itself.
fn push_rfc3339(out: &mut String, t: time::OffsetDateTime) {
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        let secs = t.unix_timestamp();
        if c.0 != secs {
            let whole = t.replace_nanosecond(0).unwrap_or(t);
            let text = whole
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            *c = (secs, text.trim_end_matches('Z').to_string());
        }
        out.push_str(&c.1);
    });
    let mut nanos = t.nanosecond();
    if nanos != 0 {
        let mut width = 9;
        while nanos.is_multiple_of(10) {
            nanos /= 10;
            width -= 1;
        }
        out.push('.');
        let mut len = 1;
        while 10u32.pow(len) <= nanos {
            len += 1;
        }
        for _ in len..width {
            out.push('0');
        }
        crate::util::text::push_u64(out, u64::from(nanos));
    }
    out.push('Z');
}

/// A value of an access-line field.
pub enum Field<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    // Runs of bytes that need no escape are copied whole; only `"`, `\` and
    // control characters (all ASCII, so never inside a UTF-8 sequence) stop
    // a run.
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        if b != b'"' && b != b'\\' && b >= 0x20 {
            continue;
        }
        out.push_str(&s[run..i]);
        run = i + 1;
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                let _ = write!(out, "\\u{:04x}", b);
            }
        }
    }
    out.push_str(&s[run..]);
    out.push('"');
}

#[derive(Clone)]
pub struct LogWriter {
    out: Arc<Mutex<BufWriter<Stderr>>>,
}

impl LogWriter {
    /// A writer to stderr with its flusher thread.
    pub fn start() -> LogWriter {
        let w = LogWriter {
            out: Arc::new(Mutex::new(BufWriter::with_capacity(
                64 * 1024,
                std::io::stderr(),
            ))),
        };
        let out = w.out.clone();
        let _ = std::thread::Builder::new()
            .name("stepgate-log".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(200));
                let _ = out.lock().unwrap_or_else(|p| p.into_inner()).flush();
            });
        w
    }

    /// Also write JSON access lines directly ([`access_json`]).
    pub fn serve_access_lines(&self) {
        let _ = ACCESS.set(self.clone());
    }
}

/// One log line being written; holds the lock so lines never interleave.
pub struct Line<'a> {
    out: MutexGuard<'a, BufWriter<Stderr>>,
    through: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.through {
            let _ = self.out.flush();
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            out: self.out.lock().unwrap_or_else(|p| p.into_inner()),
            through: true,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<'a> {
        Line {
            out: self.out.lock().unwrap_or_else(|p| p.into_inner()),
            through: meta.target() != "access",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_as_time_writes_them() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut cases: Vec<i128> = vec![0, 1, 10, 100_000_000, 999_999_999, 1_000_000_000];
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Within 2000..2100, with every kind of fraction.
            let secs = 946_684_800 + (x % 3_155_760_000) as i128;
            let nanos = match x % 4 {
                0 => 0,
                1 => (x >> 20) as i128 % 1_000 * 1_000_000,
                2 => (x >> 20) as i128 % 1_000_000 * 1_000,
                _ => (x >> 20) as i128 % 1_000_000_000,
            };
            cases.push(secs * 1_000_000_000 + nanos);
            // The same second again, from the per-thread cache.
            cases.push(secs * 1_000_000_000 + (nanos + 7) % 1_000_000_000);
        }
        for n in cases {
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(n).unwrap();
            let mut s = String::new();
            push_rfc3339(&mut s, t);
            let want = t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            assert_eq!(s, want);
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn every_string_reads_back_as_itself() {
        // Escapes at the start, the end, side by side, beside multi-byte
        // characters, and every control character.
        let mut cases: Vec<String> = ["", "\"", "\\\\", "é\"é", "\u{7f}\u{1f}x", "日本\n語\t"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        cases.push((0u8..0x80).map(char::from).collect());
        for case in cases {
            let mut s = String::new();
            push_json_str(&mut s, &case);
            let back: String = serde_json::from_str(&s).unwrap();
            assert_eq!(back, case, "{s}");
        }
    }
}
