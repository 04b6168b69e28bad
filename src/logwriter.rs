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

use std::io::{BufWriter, Stderr, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

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
