//! The running gateway's shared state, built once from the validated config.
//! The policy sits behind an atomically swappable handle: a request keeps the
//! policy it started with, and a reload replaces it whole or not at all.

use std::sync::Arc;

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
    pub policy: ArcSwap<Policy>,
    pub verifier: Verifier,
    pub keys: Keys,
    pub store: Arc<dyn Store>,
    pub hasher: Arc<Hasher>,
    pub pages: Pages,
    /// Names (lowercase, `_` as `-`) of headers stepgate owns: client copies
    /// are always removed.
    pub owned_headers: Vec<String>,
}

impl Gate {
    pub fn build(settings: Settings) -> Result<Gate, String> {
        let policy = Policy::load(&settings.policy_path).map_err(|d| {
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        let verifier = Verifier::new(&settings.first_factor)?;
        let keys = Keys::new(&settings.signing);
        let store = crate::store::open(&settings.store)?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let pages = Pages::new(settings.templates_dir.clone(), &settings.site_title)?;
        let owned_headers = settings
            .headers
            .all()
            .iter()
            .map(|h| h.to_ascii_lowercase().replace('_', "-"))
            .collect();
        Ok(Gate {
            policy: ArcSwap::from_pointee(policy),
            verifier,
            keys,
            store,
            hasher: Arc::new(Hasher::new(cores)),
            pages,
            owned_headers,
            settings,
        })
    }

    /// Is this request header one stepgate owns (and so strips)?
    pub fn owns_header(&self, name: &str) -> bool {
        let n = name.to_ascii_lowercase().replace('_', "-");
        n.starts_with("x-stepgate-") || self.owned_headers.iter().any(|h| *h == n)
    }

    pub fn stepup_cookie_name(&self, tls: bool) -> &'static str {
        if tls {
            "__Host-stepgate_su"
        } else {
            "stepgate_su"
        }
    }

    /// How long a step-up token lives: as long as the longest `max_age` of the
    /// policy, so no rule's freshness is cut short by the token's expiry.
    pub fn stepup_ttl(&self) -> i64 {
        self.policy.load().longest_max_age().as_secs() as i64
    }
}
