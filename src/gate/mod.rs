//! The running gateway's state. A [`Gate`] is one consistent snapshot (the
//! validated settings, the compiled policy, the page templates, and handles to
//! the long-lived parts: store, hasher, token keys). [`Shared`] holds the
//! current snapshot behind an atomically swappable handle: a request keeps the
//! snapshot it started with, and a reload replaces it whole or not at all.

pub mod drain;
pub mod tls;

use std::sync::Arc;

use std::path::{Path, PathBuf};

use arc_swap::ArcSwap;

use crate::auth::first_factor::Verifier;
use crate::auth::tokens::Keys;
use crate::config::Settings;
use crate::flows::deps::Deps;
use crate::flows::pin::Hasher;
use crate::policy::Policy;
use crate::templates::Pages;

/// One consistent snapshot: what the flows need ([`Deps`], which a Gate
/// derefs to) plus what only the proxy uses: the policy, the first-factor
/// verifier, the assertion signer and the owned header names.
pub struct Gate {
    pub deps: Deps,
    pub policy: Policy,
    pub verifier: Arc<Verifier>,
    /// The first-factor sources besides JWTs (and their caches).
    pub sources: Arc<crate::auth::sources::Sources>,
    /// stepgate's own OIDC sign-in, when `first_factor.oidc` is set.
    pub oidc: Option<Arc<crate::auth::oidc::OidcClient>>,
    pub assertion: Arc<crate::auth::assertion::Signer>,
    /// Names (lowercase, `_` as `-`) of headers stepgate owns: client copies
    /// are always removed.
    pub owned_headers: Vec<String>,
    /// The identity headers' names, parsed once.
    pub forward_names: crate::forward::Names,
}

impl std::ops::Deref for Gate {
    type Target = Deps;
    fn deref(&self) -> &Deps {
        &self.deps
    }
}

impl Gate {
    pub fn build(settings: Settings) -> Result<Gate, String> {
        let r = Rebuilt::from(&settings, None)?;
        let keys = Arc::new(Keys::new(&settings.signing));
        let mut verifier = Verifier::new(&settings.first_factor)?;
        if settings.pin.login || settings.first_factor.oidc.is_some() {
            verifier = verifier.with_sessions(keys.clone());
        }
        let store = crate::store::open(&settings.store)?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Ok(Gate {
            policy: r.policy,
            verifier: Arc::new(verifier),
            sources: Arc::new(crate::auth::sources::Sources::new(&settings.first_factor)?),
            oidc: match &settings.first_factor.oidc {
                Some(o) => Some(Arc::new(crate::auth::oidc::OidcClient::new(o.clone())?)),
                None => None,
            },
            assertion: r.assertion,
            owned_headers: r.owned_headers,
            forward_names: r.forward_names,
            deps: Deps {
                keys,
                store,
                // PIN hashing never takes every core from the proxy's workers
                // (pass-through p99 during a wrong-PIN storm: 3.6x -> 2.0x idle).
                hasher: Arc::new(Hasher::new(cores.saturating_sub(settings.threads).max(1))),
                pages: r.pages,
                mailer: r.mailer,
                revocations: Arc::default(),
                notifier: r.notifier,
                known_pins: Default::default(),
                required_pin_tokens: Arc::new(crate::flows::deps::RequiredPinTokens::new(10_000)),
                settings,
            },
        })
    }

    /// Is this request header one stepgate owns (and so strips)?
    /// Runs for every header of every request: compares without allocating.
    pub fn owns_header(&self, name: &str) -> bool {
        use crate::reply::header_name_is as same;
        let n = name.as_bytes();
        (n.len() >= 11 && same(&n[..11], "x-stepgate-"))
            || self.owned_headers.iter().any(|o| same(n, o))
    }

    /// The device PIN session cookie.
    pub fn pin_session_cookie(&self, tls: bool) -> &'static str {
        crate::reply::OwnCookie::PinSession.name(tls)
    }

    /// stepgate's own first-factor session after a PIN login.
    pub fn login_cookie(&self, tls: bool) -> &'static str {
        crate::reply::OwnCookie::Login.name(tls)
    }

    /// The nonce behind CSRF tokens of signed-out forms.
    pub fn nonce_cookie(&self, tls: bool) -> &'static str {
        crate::reply::OwnCookie::Nonce.name(tls)
    }

    /// `p`, when whether it was invalidated can be known: before the
    /// invalidations were read at all, a PIN-login session cannot be told
    /// live from ended, so the store is unavailable (503), not the user
    /// signed out (which would drop the device's session cookie).
    pub fn revocations_known(
        &self,
        p: crate::auth::principal::Principal,
    ) -> Result<crate::auth::principal::Principal, crate::auth::principal::AuthError> {
        match p.pin_session.is_some() && !self.revocations.loaded() {
            true => Err(crate::auth::principal::AuthError::Unavailable("store")),
            false => Ok(p),
        }
    }

    /// Verify a first-factor token, including stepgate's own PIN-login
    /// sessions and their invalidations.
    pub fn authenticate(
        &self,
        token: &str,
        now: i64,
    ) -> Result<crate::auth::principal::Principal, crate::auth::principal::AuthError> {
        let p = self.verifier.verify(token, now)?;
        self.not_revoked(p)
    }

    /// `p`, unless it is a PIN-login session that was invalidated.
    pub fn not_revoked(
        &self,
        p: crate::auth::principal::Principal,
    ) -> Result<crate::auth::principal::Principal, crate::auth::principal::AuthError> {
        let p = self.revocations_known(p)?;
        if crate::auth::decision::session_revoked(&p, &|s| self.revocations.revoked_before(s)) {
            return Err(crate::auth::principal::AuthError::Revoked);
        }
        Ok(p)
    }

    /// Who the request's credentials say the user is, from any configured
    /// source (may ask the IdP or the app), with stepgate's invalidations.
    pub async fn identify(
        &self,
        presented: &crate::auth::sources::Presented,
        now: i64,
    ) -> Result<crate::auth::principal::Principal, crate::auth::principal::AuthError> {
        let p = self
            .sources
            .authenticate(&self.verifier, presented, now)
            .await?;
        self.not_revoked(p)
    }

    pub fn stepup_cookie_name(&self, tls: bool) -> &'static str {
        crate::reply::OwnCookie::StepUp.name(tls)
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
    pub certs: Option<Arc<crate::gate::tls::Certs>>,
    /// Snapshots a reload replaced, kept until no request holds them any
    /// more and then dropped by [`Shared::release_retired`] on the reload
    /// thread: a proxy worker never runs a snapshot's destructor (templates,
    /// mailer, HTTP client, caches), it only lets go of its reference.
    retired: std::sync::Mutex<Vec<Arc<Gate>>>,
}

/// What a successful reload changed, and what it could not change live.
#[derive(Debug, Default)]
pub struct Reloaded {
    pub rules: usize,
    pub needs_restart: Vec<String>,
    /// Replaced snapshots still held by requests in flight (or by a
    /// background task), after this reload.
    pub retired_held: usize,
}

impl Shared {
    pub fn new(gate: Gate, config_path: &Path) -> Result<Shared, String> {
        let certs = match &gate.settings.tls {
            Some(t) => Some(crate::gate::tls::Certs::new(t)?),
            None => None,
        };
        Ok(Shared {
            current: ArcSwap::from_pointee(gate),
            config_path: config_path.to_path_buf(),
            certs,
            retired: Default::default(),
        })
    }

    /// Drop the replaced snapshots that nothing but this list holds any
    /// more, here, on the calling thread (the reload thread calls it after
    /// each reload and every 500 ms). Returns how many are still held.
    pub fn release_retired(&self) -> usize {
        let free: Vec<Arc<Gate>> = {
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            let (free, held) = std::mem::take(&mut *retired)
                .into_iter()
                // After the swap no one can take a new reference (arc-swap
                // turned every outstanding borrow into a counted one), so a
                // count of 1 stays 1.
                .partition(|g| Arc::strong_count(g) == 1);
            *retired = held;
            free
        };
        // Outside the lock: the destructors run here.
        drop(free);
        self.retired.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn load(&self) -> Arc<Gate> {
        self.current.load_full()
    }

    /// Re-read the config and the policy, validate everything, and swap in
    /// the result. On any error nothing changes and the error says
    /// `FILE:LINE:COL: …` for each problem.
    ///
    /// Everything is built here, on the caller's thread (the reload thread),
    /// before the swap; the swap is one atomic pointer store that requests
    /// never wait for. Requests in flight keep the snapshot they started
    /// with; the replaced snapshot is retired, not dropped (see
    /// [`Shared::release_retired`]). What did not change is shared with the
    /// new snapshot instead of rebuilt (mailer, webhook/SMS client, assertion
    /// signer and its cache), and caches that stay valid are carried over.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let mut settings = crate::config::load(&self.config_path).map_err(join)?;
        let old = self.load();
        let r = Rebuilt::from(&settings, Some(&old))?;
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
        keep(
            "first_factor sources",
            format!(
                "{:?}",
                (
                    &n.introspection,
                    &n.session_check,
                    &n.oidc,
                    &n.trusted_header
                )
            ) != format!(
                "{:?}",
                (
                    &p.introspection,
                    &p.session_check,
                    &p.oidc,
                    &p.trusted_header
                )
            ),
        );
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
        // Users known to have a PIN still have one (PIN records outlive any
        // config), but the set also holds users who skipped an optional PIN:
        // once a PIN is required, those must be asked again.
        let known_pins = if settings.pin.required && !o.pin.required {
            Default::default()
        } else {
            old.known_pins.clone()
        };
        let gate = Gate {
            policy: r.policy,
            verifier: old.verifier.clone(),
            sources: old.sources.clone(),
            oidc: old.oidc.clone(),
            assertion: r.assertion,
            owned_headers: r.owned_headers,
            forward_names: r.forward_names,
            deps: Deps {
                keys: old.keys.clone(),
                store: old.store.clone(),
                hasher: old.hasher.clone(),
                pages: r.pages,
                mailer: r.mailer,
                revocations: old.revocations.clone(),
                notifier: r.notifier,
                known_pins,
                // Bound to a login and checked against the running settings on
                // each use: still valid.
                required_pin_tokens: old.required_pin_tokens.clone(),
                settings,
            },
        };
        drop(old);
        let replaced = self.current.swap(Arc::new(gate));
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(replaced);
        Ok(Reloaded {
            rules,
            needs_restart,
            retired_held: self.release_retired(),
        })
    }
}

fn join(d: Vec<crate::config::spans::Diagnostic>) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// What every snapshot builds from its settings, at start and on each
/// reload (the long-lived parts, such as the store, are built once). On a
/// reload, a part whose settings did not change is the previous snapshot's.
struct Rebuilt {
    policy: Policy,
    pages: Pages,
    mailer: Option<Arc<dyn crate::outbound::mail::Mailer>>,
    assertion: Arc<crate::auth::assertion::Signer>,
    notifier: Arc<crate::outbound::notify::Notifier>,
    owned_headers: Vec<String>,
    forward_names: crate::forward::Names,
}

impl Rebuilt {
    fn from(settings: &Settings, previous: Option<&Gate>) -> Result<Rebuilt, String> {
        let a = &settings.assertion;
        // Re-read the key files (a rotation replaces them and sends SIGHUP);
        // the same keys keep the running signer and its signature cache.
        let signer = crate::auth::assertion::Signer::new(
            &a.key_file,
            a.previous_key_file.as_deref(),
            a.issuer.clone(),
            a.audience.clone(),
        )?;
        let assertion = match previous {
            Some(p) if p.settings.assertion == *a && p.assertion.jwks() == signer.jwks() => {
                p.assertion.clone()
            }
            _ => Arc::new(signer),
        };
        let mailer = match previous {
            Some(p) if same_mail(settings.mail.as_ref(), p.settings.mail.as_ref()) => {
                p.mailer.clone()
            }
            _ => settings
                .mail
                .as_ref()
                .map(crate::outbound::mail::build)
                .transpose()?,
        };
        // Its HTTP client keeps its connections to the webhook and the SMS
        // gateway.
        let notifier = match previous {
            Some(p)
                if same_webhook(settings.webhook.as_ref(), p.settings.webhook.as_ref())
                    && same_sms(settings.sms.as_ref(), p.settings.sms.as_ref()) =>
            {
                p.notifier.clone()
            }
            _ => Arc::new(crate::outbound::notify::Notifier::new(
                settings.webhook.clone(),
                settings.sms.clone(),
            )?),
        };
        Ok(Rebuilt {
            policy: Policy::load(&settings.policy_path).map_err(join)?,
            pages: Pages::new(settings.templates_dir.clone(), &settings.site_title)?,
            mailer,
            assertion,
            notifier,
            owned_headers: settings
                .headers
                .all()
                .iter()
                .map(|h| h.to_ascii_lowercase().replace('_', "-"))
                .collect(),
            forward_names: crate::forward::Names::new(&settings.headers)?,
        })
    }
}

// Field by field, so that a new setting of these parts fails to compile here
// until it is compared (a forgotten one would keep a stale part on reload).

fn same_mail(a: Option<&crate::config::Mail>, b: Option<&crate::config::Mail>) -> bool {
    use crate::config::{Mail, MailTransport, Smtp};
    let (Some(Mail { from, transport }), Some(b)) = (a, b) else {
        return a.is_none() && b.is_none();
    };
    *from == b.from
        && match (transport, &b.transport) {
            (MailTransport::Dir(x), MailTransport::Dir(y)) => x == y,
            (
                MailTransport::Smtp(Smtp {
                    host,
                    port,
                    tls,
                    username,
                    password,
                    timeout,
                }),
                MailTransport::Smtp(y),
            ) => {
                *host == y.host
                    && *port == y.port
                    && *tls == y.tls
                    && *username == y.username
                    && *password == y.password
                    && *timeout == y.timeout
            }
            _ => false,
        }
}

fn same_webhook(a: Option<&crate::config::Webhook>, b: Option<&crate::config::Webhook>) -> bool {
    let (
        Some(crate::config::Webhook {
            url,
            secret,
            timeout,
        }),
        Some(b),
    ) = (a, b)
    else {
        return a.is_none() && b.is_none();
    };
    *url == b.url && *secret == b.secret && *timeout == b.timeout
}

fn same_sms(a: Option<&crate::config::Sms>, b: Option<&crate::config::Sms>) -> bool {
    let (
        Some(crate::config::Sms {
            webhook_url,
            timeout,
            secret,
        }),
        Some(b),
    ) = (a, b)
    else {
        return a.is_none() && b.is_none();
    };
    *webhook_url == b.webhook_url && *timeout == b.timeout && *secret == b.secret
}
