//! TLS termination with certificates that can be replaced while running:
//! the listener asks [`Certs`] for the certificate on every handshake, and a
//! reload swaps it atomically. Connections already open keep theirs.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{load_certs_and_key_files, ClientHello, CryptoProvider, ResolvesServerCert};

use crate::config::Tls;

#[derive(Debug)]
pub struct Certs {
    current: ArcSwap<CertifiedKey>,
}

fn load(t: &Tls) -> Result<CertifiedKey, String> {
    pingora::tls::install_default_crypto_provider();
    let (cert, key) = (t.cert.to_string_lossy(), t.key.to_string_lossy());
    let (chain, key) = load_certs_and_key_files(&cert, &key)
        .map_err(|e| format!("tls: cannot load {cert} / {key}: {e}"))?
        .ok_or_else(|| format!("tls: {cert} has no certificate or {key} has no private key"))?;
    if chain.is_empty() {
        return Err(format!("tls: {cert} has no certificate"));
    }
    let provider = CryptoProvider::get_default().ok_or("tls: no crypto provider")?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls: unusable private key {}: {e}", t.key.display()))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| {
        format!(
            "tls: {cert} and {} do not belong together: {e}",
            t.key.display()
        )
    })?;
    Ok(ck)
}

impl Certs {
    pub fn new(t: &Tls) -> Result<Arc<Certs>, String> {
        Ok(Arc::new(Certs {
            current: ArcSwap::from_pointee(load(t)?),
        }))
    }

    /// Re-read the files; on error the running certificate stays.
    pub fn reload(&self, t: &Tls) -> Result<(), String> {
        self.current.store(Arc::new(load(t)?));
        Ok(())
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
