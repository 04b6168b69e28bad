//! Real `redis-server` processes for the tests that run gateways on Redis:
//! started on free loopback ports, killed (SIGKILL) when dropped, and
//! restartable on the same port and data directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, Gateway, GatewayOptions};

/// Fail (not skip) when Redis is missing: the suite's one command installs it.
pub fn require_redis() {
    for bin in ["redis-server", "redis-cli"] {
        let ok = Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "`{bin}` is not installed. These tests run a real Redis: run scripts/test.sh \
             (it installs redis-server and the other test dependencies), or \
             `apt-get install redis-server` as root."
        );
    }
}

/// A `redis-server` process, SIGKILLed when dropped. Can be killed and
/// restarted on the same port with the same arguments (and data directory).
pub struct Redis {
    pub port: u16,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Redis {
    /// A plain server: no persistence.
    pub fn start(dir: &Path, extra: &[&str]) -> Redis {
        Redis::start_on(
            free_port(),
            dir,
            &["--save", "", "--appendonly", "no"],
            extra,
        )
    }

    /// A durable server: every write is fsynced to the append-only file in `dir`.
    pub fn start_durable(dir: &Path) -> Redis {
        let d = dir.to_str().unwrap().to_string();
        Redis::start_on(
            free_port(),
            dir,
            &[
                "--save",
                "",
                "--dir",
                &d,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            &[],
        )
    }

    pub fn start_on(port: u16, dir: &Path, base: &[&str], extra: &[&str]) -> Redis {
        require_redis();
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
        ];
        args.extend(base.iter().chain(extra).map(|s| s.to_string()));
        let mut r = Redis {
            port,
            args,
            dir: dir.to_path_buf(),
            child: None,
            starts: 0,
        };
        r.restart();
        r
    }

    /// (Re)start the server with the same arguments; wait until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log = self
            .dir
            .join(format!("redis-{}-{}.log", self.port, self.starts));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("redis-server starts (installed by scripts/test.sh)");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "redis-server on port {} exited ({st}): {}",
                    self.port,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis-server on port {} does not answer PING: {}",
                self.port,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `redis-cli -p PORT ARGS…` (with the password, when the server has one); stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(i) = self.args.iter().position(|a| a == "--requirepass") {
            cmd.args(["--no-auth-warning", "-a", &self.args[i + 1]]);
        }
        let out = cmd.args(args).stderr(Stdio::null()).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key, via SCAN (this node only, for cluster nodes).
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .cli(&["--scan"])
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        k.sort();
        k
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `INFO commandstats` as command → calls.
    pub fn command_calls(&self) -> BTreeMap<String, u64> {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .split(',')
                    .find_map(|f| f.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_string(), calls))
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `store:` block for the single Redis at `url`, with `more` lines
/// (two-space indented, e.g. `  timeout: 1s\n`).
pub fn redis_store(url: &str, more: &str) -> String {
    format!("  kind: redis\n  url: \"{url}\"\n{more}")
}

/// Two gateways, A and B, on one Redis, started with the same options but
/// their ports. Field order is drop order: the gateways go first, then
/// Redis, then the temporary directory.
pub struct RedisPair {
    pub a: Gateway,
    pub b: Gateway,
    pub redis: Redis,
    /// What A and B were started with, to start more gateways like them.
    pub options: GatewayOptions,
    /// Redis's directory, also for files the gateways share.
    pub dir: tempfile::TempDir,
}

impl RedisPair {
    /// A plain Redis (no persistence) in a new temporary directory, then A
    /// and B on it; see `on`.
    pub fn start(options: impl FnOnce(&Path, String) -> GatewayOptions) -> RedisPair {
        let dir = tempfile::tempdir().unwrap();
        let redis = Redis::start(dir.path(), &[]);
        RedisPair::on(dir, redis, options)
    }

    /// A and B on `redis`, whose directory is `dir`: `options` gets the
    /// directory and the `store:` block for this Redis (`redis_store`), and
    /// gives the options both gateways start with.
    pub fn on(
        dir: tempfile::TempDir,
        redis: Redis,
        options: impl FnOnce(&Path, String) -> GatewayOptions,
    ) -> RedisPair {
        let options = options(dir.path(), redis_store(&redis.url(), ""));
        let a = Gateway::start_with(options.clone());
        let b = Gateway::start_with(options.clone());
        RedisPair {
            a,
            b,
            redis,
            options,
            dir,
        }
    }

    /// One more gateway like A and B.
    pub fn another(&self) -> Gateway {
        Gateway::start_with(self.options.clone())
    }
}
