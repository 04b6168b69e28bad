//! The running gateway's state. A [`Gate`] is one consistent snapshot (the
//! validated settings, the compiled policy, the page templates, and handles to
//! the long-lived parts: store, hasher, token keys). [`Shared`] holds the
//! current snapshot behind an atomically swappable handle: a request keeps the
//! snapshot it started with, and a reload replaces it whole or not at all.

use std::sync::Arc;

use std::path::{Path, PathBuf};

use arc_swap::ArcSwap;

use crate::config::Settings;
use crate::identity::Verifier;
use crate::pages::Pages;
use crate::pin::Hasher;
use crate::policy::Policy;
use crate::store::Store;
use crate::tokens::Keys;

pub struct Gate {
    pub settings: Settings,
    pub policy: Policy,
    pub verifier: Arc<Verifier>,
    pub keys: Arc<Keys>,
    pub store: Arc<dyn Store>,
    pub hasher: Arc<Hasher>,
    pub pages: Pages,
    pub mailer: Option<Arc<dyn crate::mail::Mailer>>,
    pub assertion: Arc<crate::assertion::Signer>,
    /// Invalidated step-ups, shared by every snapshot.
    pub revocations: Arc<crate::revoke::Revocations>,
    /// Names (lowercase, `_` as `-`) of headers stepgate owns: client copies
    /// are always removed.
    pub owned_headers: Vec<String>,
    /// Webhook events and SMS.
    pub notifier: Arc<crate::notify::Notifier>,
    /// Users known to have a PIN (for `pin.required` / `pin.offer_setup`).
    pub known_pins: crate::lifecycle::KnownPins,
    /// PINAuthTokens handed out with 1243 answers, by user, so a client that
    /// retries does not mint (and store) a new one per request.
    pub required_pin_tokens: std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>,
}

impl Gate {
    pub fn build(settings: Settings) -> Result<Gate, String> {
        let r = Rebuilt::from(&settings)?;
        let keys = Arc::new(Keys::new(&settings.signing));
        let mut verifier = Verifier::new(&settings.first_factor)?;
        if settings.pin.login {
            verifier = verifier.with_sessions(keys.clone());
        }
        let store = crate::store::open(&settings.store)?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Ok(Gate {
            policy: r.policy,
            verifier: Arc::new(verifier),
            keys,
            store,
            // PIN hashing never takes every core from the proxy's workers
            // (pass-through p99 during a wrong-PIN storm: 3.6x -> 2.0x idle).
            hasher: Arc::new(Hasher::new(cores.saturating_sub(settings.threads).max(1))),
            pages: r.pages,
            mailer: r.mailer,
            assertion: r.assertion,
            revocations: Arc::default(),
            owned_headers: r.owned_headers,
            notifier: r.notifier,
            known_pins: Default::default(),
            required_pin_tokens: Default::default(),
            settings,
        })
    }

    /// Is this request header one stepgate owns (and so strips)?
    /// Runs for every header of every request: compares without allocating.
    pub fn owns_header(&self, name: &str) -> bool {
        fn same(a: &[u8], b: &[u8]) -> bool {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| {
                    let x = x.to_ascii_lowercase();
                    (if x == b'_' { b'-' } else { x }) == *y
                })
        }
        let n = name.as_bytes();
        (n.len() >= 11 && same(&n[..11], b"x-stepgate-"))
            || self.owned_headers.iter().any(|o| same(n, o.as_bytes()))
    }

    /// The device PIN session cookie.
    pub fn pin_session_cookie(&self, tls: bool) -> &'static str {
        if tls {
            "__Host-stepgate_ps"
        } else {
            "stepgate_ps"
        }
    }

    /// stepgate's own first-factor session after a PIN login.
    pub fn login_cookie(&self, tls: bool) -> &'static str {
        if tls {
            "__Host-stepgate_session"
        } else {
            "stepgate_session"
        }
    }

    /// The nonce behind CSRF tokens of signed-out forms.
    pub fn nonce_cookie(&self, tls: bool) -> &'static str {
        if tls {
            "__Host-stepgate_pre"
        } else {
            "stepgate_pre"
        }
    }

    /// Verify a first-factor token, including stepgate's own PIN-login
    /// sessions and their invalidations.
    pub fn authenticate(
        &self,
        token: &str,
        now: i64,
    ) -> Result<crate::identity::Principal, crate::identity::AuthError> {
        let p = self.verifier.verify(token, now)?;
        if crate::decision::session_revoked(&p, &|s| self.revocations.revoked_before(s)) {
            return Err(crate::identity::AuthError::Revoked);
        }
        Ok(p)
    }

    pub fn stepup_cookie_name(&self, tls: bool) -> &'static str {
        if tls {
            "__Host-stepgate_su"
        } else {
            "stepgate_su"
        }
    }

    /// The time a new step-up is stamped with: never at or before the user's
    /// last invalidation, so a step-up right after a step-down counts.
    pub fn stepup_now(&self, sub: &str) -> i64 {
        let now = crate::clock::now();
        match self.revocations.revoked_before(sub) {
            Some(t) if t >= now => t + 1,
            _ => now,
        }
    }

    /// How long a step-up token lives: as long as the longest `max_age` of the
    /// policy, so no rule's freshness is cut short by the token's expiry.
    pub fn stepup_ttl(&self) -> i64 {
        self.policy.longest_max_age().as_secs() as i64
    }
}

/// The current snapshot and how to replace it.
pub struct Shared {
    pub current: ArcSwap<Gate>,
    pub config_path: PathBuf,
    /// The listeners' certificate, when stepgate terminates TLS.
    pub certs: Option<Arc<crate::tls::Certs>>,
}

/// What a successful reload changed, and what it could not change live.
#[derive(Debug, Default)]
pub struct Reloaded {
    pub rules: usize,
    pub needs_restart: Vec<String>,
}

impl Shared {
    pub fn new(gate: Gate, config_path: &Path) -> Result<Shared, String> {
        let certs = match &gate.settings.tls {
            Some(t) => Some(crate::tls::Certs::new(t)?),
            None => None,
        };
        Ok(Shared {
            current: ArcSwap::from_pointee(gate),
            config_path: config_path.to_path_buf(),
            certs,
        })
    }

    pub fn load(&self) -> Arc<Gate> {
        self.current.load_full()
    }

    /// Re-read the config and the policy, validate everything, and swap in
    /// the result. On any error nothing changes and the error says
    /// `FILE:LINE:COL: …` for each problem.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let mut settings = crate::config::load(&self.config_path).map_err(join)?;
        let r = Rebuilt::from(&settings)?;
        let old = self.load();
        let o = &old.settings;
        let mut needs_restart = Vec::new();
        let mut keep = |what: &str, changed: bool| {
            if changed {
                needs_restart.push(what.to_string());
            }
        };
        keep("listen", settings.listen != o.listen);
        keep(
            "tls",
            format!("{:?}", settings.tls) != format!("{:?}", o.tls),
        );
        keep("threads", settings.threads != o.threads);
        keep("upstream_ca", settings.upstream_ca != o.upstream_ca);
        keep(
            "store",
            format!("{:?}", settings.store) != format!("{:?}", o.store),
        );
        keep(
            "metrics.listen",
            settings.metrics_listen != o.metrics_listen,
        );
        keep("signing", settings.signing != o.signing);
        let (n, p) = (&settings.first_factor, &o.first_factor);
        let key_changed = match (&n.key, &p.key) {
            (crate::config::KeySource::Secret(a), crate::config::KeySource::Secret(b)) => a != b,
            (a, b) => format!("{a:?}") != format!("{b:?}"),
        };
        keep(
            "first_factor.jwt",
            key_changed
                || n.algorithms != p.algorithms
                || n.issuer != p.issuer
                || n.audience != p.audience
                || n.leeway != p.leeway,
        );
        keep("pin.login", settings.pin.login != o.pin.login);
        keep("first_factor.claims", n.claims != p.claims);
        // Restart-only settings keep their running values.
        settings.pin.login = o.pin.login;
        settings.listen = o.listen.clone();
        settings.tls = o.tls.clone();
        settings.threads = o.threads;
        settings.store = o.store.clone();
        settings.metrics_listen = o.metrics_listen.clone();
        settings.upstream_ca = o.upstream_ca.clone();
        settings.signing = o.signing.clone();
        settings.first_factor = crate::config::FirstFactor {
            cookie: n.cookie.clone(),
            login_url: n.login_url.clone(),
            ..p.clone()
        };
        let rules = r.policy.rules.len();
        if let (Some(certs), Some(t)) = (&self.certs, &settings.tls) {
            certs.reload(t)?;
        }
        let gate = Gate {
            policy: r.policy,
            verifier: old.verifier.clone(),
            keys: old.keys.clone(),
            store: old.store.clone(),
            hasher: old.hasher.clone(),
            pages: r.pages,
            mailer: r.mailer,
            assertion: r.assertion,
            revocations: old.revocations.clone(),
            owned_headers: r.owned_headers,
            notifier: r.notifier,
            known_pins: Default::default(),
            required_pin_tokens: Default::default(),
            settings,
        };
        self.current.store(Arc::new(gate));
        Ok(Reloaded {
            rules,
            needs_restart,
        })
    }
}

fn join(d: Vec<crate::yamlspan::Diagnostic>) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// What every snapshot builds from its settings, at start and on each
/// reload (the long-lived parts, such as the store, are built once).
struct Rebuilt {
    policy: Policy,
    pages: Pages,
    mailer: Option<Arc<dyn crate::mail::Mailer>>,
    assertion: Arc<crate::assertion::Signer>,
    notifier: Arc<crate::notify::Notifier>,
    owned_headers: Vec<String>,
}

impl Rebuilt {
    fn from(settings: &Settings) -> Result<Rebuilt, String> {
        let a = &settings.assertion;
        Ok(Rebuilt {
            policy: Policy::load(&settings.policy_path).map_err(join)?,
            pages: Pages::new(settings.templates_dir.clone(), &settings.site_title)?,
            mailer: settings.mail.as_ref().map(crate::mail::build).transpose()?,
            assertion: Arc::new(crate::assertion::Signer::new(
                &a.key_file,
                a.previous_key_file.as_deref(),
                a.issuer.clone(),
                a.audience.clone(),
            )?),
            notifier: Arc::new(crate::notify::Notifier::new(
                settings.webhook.clone(),
                settings.sms.clone(),
            )?),
            owned_headers: settings
                .headers
                .all()
                .iter()
                .map(|h| h.to_ascii_lowercase().replace('_', "-"))
                .collect(),
        })
    }
}
