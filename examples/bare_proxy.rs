//! The floor of what stepgate costs: a Pingora proxy that only forwards.
//!
//! Same Pingora version and features as stepgate (it uses the crate's own
//! dependency), and the same `ServerConf` settings as `src/server.rs`
//! (threads from the command line, work stealing on, 5 s grace periods), so
//! `benches/load.sh` can put stepgate side by side with it. No header is
//! read, added or removed, nothing is logged.
//!
//! ```sh
//! cargo build --release --example bare_proxy
//! target/release/examples/bare_proxy --listen 127.0.0.1:8100 --upstream 127.0.0.1:8000 --threads 1
//! ```
//!
//! The tuning flags (`--no-work-stealing`, `--keepalive-pool`,
//! `--l4-read-buffer`) exist to try settings on the floor before proposing
//! them for stepgate; their defaults are what stepgate runs with.

use std::path::PathBuf;

use async_trait::async_trait;
use clap::Parser;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};

/// The same allocator as stepgate, so the floor differs from stepgate only
/// by what stepgate does per request.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "A Pingora proxy that only forwards (benchmark baseline)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8100")]
    listen: String,
    /// The upstream, HOST:PORT (plain HTTP).
    #[arg(long)]
    upstream: String,
    /// Worker threads (stepgate's `threads:`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Use one single-threaded runtime per thread instead of a
    /// work-stealing runtime (Pingora's default, and stepgate's, is stealing).
    #[arg(long)]
    no_work_stealing: bool,
    /// Idle upstream connections kept per process (Pingora's default: 128).
    #[arg(long, default_value_t = 128)]
    keepalive_pool: usize,
    /// Per-connection L4 read buffer of the listener, bytes (Pingora's
    /// default: 64 KiB, allocated zeroed for every downstream connection; 0
    /// reads straight from the socket).
    #[arg(long)]
    l4_read_buffer: Option<usize>,
    /// Directory for the pid file and upgrade socket.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
}

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args = Args::parse();
    let port = args.listen.rsplit(':').next().unwrap_or("0").to_string();
    let mut conf = ServerConf {
        threads: args.threads,
        work_stealing: !args.no_work_stealing,
        upstream_keepalive_pool_size: args.keepalive_pool,
        ..Default::default()
    };
    conf.upgrade_sock = args
        .dir
        .join(format!("bare-proxy-{port}.sock"))
        .to_string_lossy()
        .into_owned();
    conf.pid_file = args
        .dir
        .join(format!("bare-proxy-{port}.pid"))
        .to_string_lossy()
        .into_owned();
    conf.grace_period_seconds = Some(5);
    conf.graceful_shutdown_timeout_seconds = Some(5);
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream: args.upstream,
        },
    );
    match args.l4_read_buffer {
        None => proxy.add_tcp(&args.listen),
        Some(n) => proxy.add_listener(
            ListenerConfig::tcp(args.listen.as_str())
                .l4_buffer(L4BufferSettings::default().read(n)),
        ),
    }
    server.add_service(proxy);
    server.run_forever();
}
