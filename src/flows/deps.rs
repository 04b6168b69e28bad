//! What a flow needs, and nothing else: the settings, the store, the PIN
//! hasher, token keys, templates for messages, the mailer and notifier, the
//! revocation map and the small caches the PIN flows keep. The gateway's
//! snapshot holds one (and derefs to it); a unit test builds one with an
//! in-memory store ([`Deps::for_tests`]), without a gateway or sockets.

use std::sync::Arc;

use crate::auth::revocations::Revocations;
use crate::auth::tokens::Keys;
use crate::config::Settings;
use crate::flows::pin::Hasher;
use crate::outbound::mail::Mailer;
use crate::outbound::notify::Notifier;
use crate::store::Store;
use crate::templates::Pages;

/// PINAuthTokens handed out, by `sub \0 login time`: (token, expiry).
pub type RequiredPinTokens = crate::util::cache::Expiring<String, (String, i64)>;

pub struct Deps {
    pub settings: Settings,
    pub keys: Arc<Keys>,
    pub store: Arc<dyn Store>,
    pub hasher: Arc<Hasher>,
    /// Page and message templates (mails are rendered by the flows).
    pub pages: Pages,
    pub mailer: Option<Arc<dyn Mailer>>,
    /// Invalidated step-ups, shared by every snapshot.
    pub revocations: Arc<Revocations>,
    /// Webhook events and SMS.
    pub notifier: Arc<Notifier>,
    /// Users known to have a PIN (for `pin.required` / `pin.offer_setup`);
    /// carried into the next snapshot by a reload.
    pub known_pins: Arc<KnownPins>,
    /// PINAuthTokens handed out with 1243 answers, by user, so a client that
    /// retries does not mint (and store) a new one per request; carried into
    /// the next snapshot by a reload.
    pub required_pin_tokens: Arc<RequiredPinTokens>,
}

impl Deps {
    /// Deps over an in-memory store, from a config text (the gateway's YAML;
    /// `upstream`, `policy`, `first_factor` and `signing` may be left out).
    pub fn for_tests(extra: &str) -> Deps {
        Deps::for_tests_at(extra, crate::util::clock::Clock::system())
    }

    /// [`Deps::for_tests`] on `clock` (a fake one moves the flows' time and
    /// the store's expiries together).
    pub fn for_tests_at(extra: &str, clock: crate::util::clock::Clock) -> Deps {
        let text = format!(
            "upstream: http://127.0.0.1:9\npolicy: p.yaml\nfirst_factor: {{ jwt: {{ secret: \"test-first-factor-secret-0123456789abcdef\" }} }}\nsigning: {{ secret: \"test-signing-secret-0123456789abcdef0123\" }}\nstore: {{ kind: memory }}\n{extra}"
        );
        let settings =
            crate::config::from_str(std::path::Path::new("/tmp/stepgate-test.yaml"), &text)
                .expect("test settings are valid");
        Deps {
            keys: Arc::new(Keys::new(&settings.signing)),
            store: Arc::new(crate::store::memory::MemoryStore::with_clock(clock)),
            hasher: Arc::new(Hasher::new(1)),
            pages: Pages::new(None, &settings.site_title).expect("built-in templates"),
            mailer: settings
                .mail
                .as_ref()
                .map(crate::outbound::mail::build)
                .transpose()
                .expect("test mailer"),
            revocations: Arc::new(crate::auth::revocations::Revocations::for_empty_store()),
            notifier: Arc::new(
                Notifier::new(settings.webhook.clone(), settings.sms.clone()).expect("notifier"),
            ),
            known_pins: Default::default(),
            required_pin_tokens: Arc::new(RequiredPinTokens::new(10_000)),
            settings,
        }
    }
}

/// Subjects known to have a PIN (or to have skipped an optional one), per
/// gateway snapshot; bounded (a forgotten subject costs one store read).
pub struct KnownPins {
    set: quick_cache::sync::Cache<String, ()>,
}

impl Default for KnownPins {
    fn default() -> Self {
        KnownPins {
            set: quick_cache::sync::Cache::new(Self::MAX),
        }
    }
}

impl KnownPins {
    const MAX: usize = 200_000;

    pub fn contains(&self, sub: &str) -> bool {
        self.set.get(sub).is_some()
    }

    pub fn insert(&self, sub: &str) {
        self.set.insert(sub.to_string(), ());
    }

    /// The subject's PIN went away (removed, reset by an admin).
    pub fn forget(&self, sub: &str) {
        self.set.remove(sub);
    }
}
