//! Start-up: build the gate from validated settings, then hand the listeners
//! to Pingora. Anything that can fail fails here, before a port is opened,
//! with a message that says what to fix.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

use crate::config::{KeySource, Settings};
use crate::gate::drain::{ConnClock, CONN, DRAINING, IN_REQUEST};
use crate::gate::{Gate, Shared};
use crate::proxy::Proxy;

pub struct Extra {
    /// Also serve the demo upstream on this address.
    pub demo_upstream: Option<String>,
    pub upgrade: bool,
}

pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},pingora_core=warn,pingora_proxy=warn"))
    });
    // Access lines are written in batches, everything else at once
    // (src/logwriter.rs).
    let writer = crate::util::logwriter::LogWriter::start();
    if json {
        writer.serve_access_lines();
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Run the gateway; returns only on a start-up error.
pub fn run(config_path: &Path, settings: Settings, extra: Extra) -> Result<(), String> {
    crate::util::metrics::init();
    let shared = Arc::new(Shared::new(Gate::build(settings)?, config_path)?);
    let gate = shared.load();
    crate::util::metrics::POLICY_RULES.set(gate.policy.rules.len() as i64);
    if let KeySource::JwksUrl { url, refresh } = &gate.settings.first_factor.key {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let text = rt
            .block_on(crate::auth::first_factor::fetch_jwks(url))
            .map_err(|e| format!("first_factor.jwt.jwks_url: {e}"))?;
        gate.verifier
            .install_jwks(&text)
            .map_err(|e| format!("first_factor.jwt.jwks_url: {e}"))?;
        spawn_jwks_refresh(gate.verifier.clone(), url.clone(), *refresh);
    }
    // Invalidations recorded so far, and those other gateways will record.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    match rt.block_on(gate.revocations.start(&*gate.store)) {
        Ok(n) => {
            tracing::info!(target: "stepgate", revocations = n, "loaded step-up invalidations")
        }
        Err(e) => {
            tracing::error!(target: "stepgate", error = %e, "could not load step-up invalidations: step-up routes answer 503 until the store answers");
            spawn_revocation_loader(gate.revocations.clone(), gate.store.clone());
        }
    }
    drop(rt);
    spawn_sweeper(gate.store.clone());
    crate::runtime::watch::spawn(shared.clone())?;

    let mut conf = ServerConf {
        threads: gate.settings.threads,
        // With one worker, a current-thread runtime has no cross-thread
        // queues: 10-18 % less CPU per request (benches/RESULTS.md).
        work_stealing: gate.settings.threads > 1,
        ..Default::default()
    };
    conf.upgrade_sock = gate.settings.upgrade_sock.to_string_lossy().into_owned();
    conf.pid_file = gate.settings.pid_file.to_string_lossy().into_owned();
    conf.ca_file = gate
        .settings
        .upstream_ca
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    conf.grace_period_seconds = Some(5);
    conf.graceful_shutdown_timeout_seconds = Some(5);
    let opt = Opt {
        upgrade: extra.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    watch_draining(server.watch_execution_phase());
    server.bootstrap();

    let mut proxy = pingora::services::listening::Service::new(
        "stepgate".to_string(),
        HeadDeadline {
            inner: Arc::new(pingora::proxy::http_proxy(
                &server.configuration,
                Proxy {
                    shared: shared.clone(),
                },
            )),
            within: gate.settings.head_timeout,
        },
    );
    for addr in &gate.settings.listen {
        match &gate.settings.tls {
            // Pingora's default 64 KiB zeroed read buffer per connection helps
            // TLS only; plain HTTP/1 reads into its own buffer. 1,000 idle
            // connections: 134 -> 70 MiB (benches/RESULTS.md).
            None => proxy.add_listener(
                pingora::listeners::ListenerConfig::tcp(addr.as_str())
                    .l4_buffer(pingora::listeners::L4BufferSettings::default().read(0)),
            ),
            Some(t) => {
                let mut tls = pingora::listeners::tls::TlsSettings::intermediate(
                    &t.cert.to_string_lossy(),
                    &t.key.to_string_lossy(),
                )
                .map_err(|e| format!("tls: {e}"))?;
                if let Some(certs) = &shared.certs {
                    tls.set_cert_resolver(certs.clone());
                }
                tls.enable_h2();
                proxy.add_tls_with_settings(addr, None, tls);
            }
        }
    }
    server.add_service(proxy);
    if let Some(m) = &gate.settings.metrics_listen {
        let mut metrics = pingora_prometheus::prometheus_http_service();
        metrics.add_tcp(m);
        server.add_service(metrics);
    }
    if let Some(addr) = &extra.demo_upstream {
        let mut echo = pingora::services::listening::Service::new(
            "demo upstream".into(),
            crate::runtime::demo::Echo {
                cookie: gate.settings.first_factor.cookie.clone(),
            },
        );
        echo.add_tcp(addr);
        server.add_service(echo);
    }
    tracing::info!(target: "stepgate", listen = ?gate.settings.listen, policy = %gate.settings.policy_path.display(), rules = gate.policy.rules.len(), "stepgate is starting");
    // The first snapshot is not kept here: reloads free it when it is done.
    drop(gate);
    server.run_forever();
}

/// Run `task` on a thread of its own with a small runtime: background work
/// never shares the proxy's workers.
fn background(name: &str, task: impl std::future::Future<Output = ()> + Send + 'static) {
    let spawned = std::thread::Builder::new().name(name.to_string()).spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(task),
        Err(e) => tracing::error!(target: "stepgate", error = %e, "cannot start a background runtime"),
    });
    if let Err(e) = spawned {
        tracing::error!(target: "stepgate", error = %e, "cannot start a background thread");
    }
}

fn watch_draining(mut phases: tokio::sync::broadcast::Receiver<pingora::server::ExecutionPhase>) {
    use pingora::server::ExecutionPhase as P;
    background("stepgate-drain", async move {
        while let Ok(phase) = phases.recv().await {
            if matches!(
                phase,
                P::GracefulUpgradeTransferringFds | P::GracefulTerminate | P::ShutdownStarted
            ) {
                DRAINING.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(target: "stepgate", ?phase, "draining: closing keep-alive connections after their next response");
            }
        }
    });
}

/// Holds the verifier (shared by every snapshot), never a snapshot: a
/// replaced snapshot is freed once its requests are done.
fn spawn_jwks_refresh(
    verifier: Arc<crate::auth::first_factor::Verifier>,
    url: String,
    every: Duration,
) {
    background("stepgate-jwks", async move {
        loop {
            tokio::time::sleep(every).await;
            match crate::auth::first_factor::fetch_jwks(&url)
                .await
                .and_then(|t| verifier.install_jwks(&t))
            {
                Ok(n) => tracing::info!(target: "stepgate", keys = n, "JWKS refreshed"),
                Err(e) => {
                    tracing::warn!(target: "stepgate", error = %e, "JWKS refresh failed; keeping the previous keys")
                }
            }
        }
    });
}

/// Until the store's invalidations are read, no step-up counts (see
/// `auth::revocations`): read them again every second until they are.
fn spawn_revocation_loader(
    revocations: Arc<crate::auth::revocations::Revocations>,
    store: Arc<dyn crate::store::Store>,
) {
    background("stepgate-revocations", async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Ok(n) = revocations.load(&*store).await {
                tracing::info!(target: "stepgate", revocations = n, "loaded step-up invalidations; step-up routes open again");
                return;
            }
        }
    });
}

/// Watch the store every second (metric `stepgate_store_up`) and reclaim
/// expired entries of the embedded store every ten minutes.
fn spawn_sweeper(store: Arc<dyn crate::store::Store>) {
    background("stepgate-store-watch", async move {
        let mut tick: u64 = 0;
        let mut was_up = true;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tick += 1;
            // The store's state, for the metric and the log.
            let ping = store.ping().await;
            let up = ping.is_ok();
            crate::util::metrics::STORE_UP.set(up as i64);
            if up != was_up {
                if up {
                    tracing::info!(target: "stepgate", "the store answers again");
                } else {
                    let why = ping.err().map(|e| e.to_string()).unwrap_or_default();
                    tracing::error!(target: "stepgate", error = %why, "the store does not answer: protected routes fail closed (503)");
                }
                was_up = up;
            }
            if tick.is_multiple_of(600) {
                if let Err(e) = store.sweep().await {
                    tracing::warn!(target: "stepgate", error = %e, "store sweep failed");
                }
            }
        }
    });
}

/// Serve only the demo upstream (tests and examples use it as a real app).
pub fn run_upstream(listen: &str, cookie: &str) -> Result<(), String> {
    let mut server = Server::new_with_opt_and_conf(
        Opt::default(),
        ServerConf {
            threads: 1,
            ..Default::default()
        },
    );
    server.bootstrap();
    let mut echo = pingora::services::listening::Service::new(
        "demo upstream".into(),
        crate::runtime::demo::Echo {
            cookie: cookie.to_string(),
        },
    );
    echo.add_tcp(listen);
    server.add_service(echo);
    server.run_forever();
}

/// The HTTP/1 service with a deadline on request heads: a connection whose
/// next head is not complete within `within` (`timeouts.request_head`) of
/// becoming idle is closed. Pingora only bounds each read (60 s), so a head
/// trickled a byte at a time would hold its buffer (up to 1 MiB) forever.
/// Pingora serves a keep-alive connection's requests in one call, so the
/// proxy marks each request's start and end ([`head_read`],
/// [`request_done`]) and the deadline restarts for every head.
struct HeadDeadline<A> {
    inner: Arc<A>,
    within: Duration,
}

#[async_trait::async_trait]
impl<A: pingora::apps::ServerApp + Send + Sync + 'static> pingora::apps::ServerApp
    for HeadDeadline<A>
{
    async fn process_new(
        self: &Arc<Self>,
        stream: pingora::protocols::Stream,
        shutdown: &pingora::server::ShutdownWatch,
    ) -> Option<pingora::protocols::Stream> {
        // HTTP/2 multiplexes requests on tasks of their own; its streams
        // have their own flow control and idle timeout.
        if matches!(
            stream.selected_alpn_proto(),
            Some(pingora::protocols::ALPN::H2)
        ) {
            return self.inner.process_new(stream, shutdown).await;
        }
        use std::sync::atomic::Ordering::Relaxed;
        let start = tokio::time::Instant::now();
        let clock = Arc::new(ConnClock {
            start,
            idle_since: std::sync::atomic::AtomicU64::new(0),
        });
        let serve = CONN.scope(clock.clone(), self.inner.process_new(stream, shutdown));
        tokio::pin!(serve);
        let mut check = start + self.within;
        loop {
            tokio::select! {
                done = &mut serve => return done,
                _ = tokio::time::sleep_until(check) => {
                    let now = tokio::time::Instant::now();
                    match clock.idle_since.load(Relaxed) {
                        IN_REQUEST => check = now + self.within,
                        since => {
                            let due = start + Duration::from_millis(since) + self.within;
                            if due <= now {
                                crate::util::metrics::REFUSED.with_label_values(&["head_timeout"]).inc();
                                return None;
                            }
                            check = due;
                        }
                    }
                }
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
