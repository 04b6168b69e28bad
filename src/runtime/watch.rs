//! Hot reload: SIGHUP, or a change to the config or a policy file on disk,
//! revalidates everything and swaps the snapshot atomically. A reload that
//! fails is refused, logged with `FILE:LINE:COL`, counted, and the running
//! snapshot stays. Runs on its own thread, never on the proxy's workers:
//! this thread builds the new snapshot, swaps it in, and later drops the
//! replaced one once the last request holding it is done
//! ([`Shared::release_retired`]), so a reload costs the workers nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::gate::Shared;
use crate::util::metrics;

/// Modification times of the config file and every policy file (a policy
/// directory's listing counts, so adding a file is a change too).
fn fingerprint(config: &Path, policy: &Path) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut out = vec![
        (config.to_path_buf(), mtime(config)),
        (policy.to_path_buf(), mtime(policy)),
    ];
    if policy.is_dir() {
        if let Ok(rd) = std::fs::read_dir(policy) {
            let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files {
                let t = mtime(&f);
                out.push((f, t));
            }
        }
    }
    out
}

pub fn reload(shared: &Shared, why: &str) {
    let started = Instant::now();
    match shared.reload() {
        Ok(r) => {
            metrics::RELOADS.with_label_values(&["ok"]).inc();
            metrics::POLICY_RULES.set(r.rules as i64);
            // took_ms: reading, validating and building the new snapshot,
            // and the swap (benches/load.sh reports it).
            let took_ms = started.elapsed().as_secs_f64() * 1000.0;
            tracing::info!(target: "stepgate", trigger = why, rules = r.rules, took_ms, retired_held = r.retired_held, "configuration reloaded");
            for what in r.needs_restart {
                tracing::warn!(target: "stepgate", setting = %what, "this setting changed but needs a restart to apply; the running value stays");
            }
        }
        Err(e) => {
            metrics::RELOADS.with_label_values(&["error"]).inc();
            for line in e.lines() {
                tracing::error!(target: "stepgate", trigger = why, problem = %line, "reload refused; the running configuration stays");
            }
        }
    }
}

/// Start the reload thread: SIGHUP and a poll of the files every 500 ms.
/// Must run before the server starts, so SIGHUP never hits its default
/// action (terminate).
pub fn spawn(shared: Arc<Shared>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut hup = rt
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) })
        .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
    std::thread::Builder::new()
        .name("stepgate-reload".into())
        .spawn(move || {
            // The reload thread keeps the normal priority: at the lowest one
            // (nice 19) a busy machine starved it for seconds, so a policy push
            // applied late. Building a snapshot is cheap next to serving (a
            // 10,000-rule policy: ~250 ms) and never blocks a worker.
            rt.block_on(async move {
                let policy_path = || shared.load().settings.policy_path.clone();
                let mut seen = fingerprint(&shared.config_path, &policy_path());
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tokio::select! {
                        _ = hup.recv() => {
                            reload(&shared, "SIGHUP");
                            seen = fingerprint(&shared.config_path, &policy_path());
                        }
                        _ = tick.tick() => {
                            // Replaced snapshots whose last request ended
                            // are dropped here, not on a worker.
                            shared.release_retired();
                            let now = fingerprint(&shared.config_path, &policy_path());
                            if now != seen {
                                seen = now;
                                reload(&shared, "file change");
                            }
                        }
                    }
                }
            })
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}
