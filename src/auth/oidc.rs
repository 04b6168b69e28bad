//! stepgate signing browsers in itself with OpenID Connect: authorization
//! code with PKCE (S256), `state` and `nonce`, discovery, and ID-token
//! verification against the provider's keys, all by the `openidconnect`
//! crate. stepgate owns only the glue: the pending sign-in (kept in the
//! store, single use, bound to the browser that started it) and what the
//! callback turns into (stepgate's own `sgs.` session).
//!
//! Never trusts anything from the callback's query but the code and the
//! state; never signs anyone in without a verified ID token.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use openidconnect::core::{
    CoreAuthPrompt, CoreAuthenticationFlow, CoreClient, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};

use crate::config::Oidc;

/// What the provider told about itself, once discovered.
struct Discovered {
    meta: CoreProviderMetadata,
    end_session: Option<String>,
}

/// A sign-in started and not finished: kept in the store under its
/// `state`, taken (once) by the callback.
#[derive(Serialize, Deserialize, Debug)]
pub struct Pending {
    pub verifier: String,
    pub nonce: String,
    pub return_to: String,
    /// SHA-256 (hex) of the browser's nonce cookie: the callback must come
    /// from the browser that started the sign-in.
    pub browser: String,
}

/// Who signed in, from the verified ID token.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub sub: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub auth_time: Option<i64>,
    pub username: Option<String>,
}

pub struct OidcClient {
    pub cfg: Oidc,
    discovered: ArcSwapOption<Discovered>,
    last_try: AtomicI64,
    http: reqwest::Client,
}

/// Why a callback did not sign anyone in.
#[derive(Debug)]
pub enum Finish {
    /// The provider did not answer: a 503, try again later.
    Unavailable(String),
    /// It answered, and the answer does not sign anyone in.
    Refused(String),
}

impl OidcClient {
    pub fn new(cfg: Oidc) -> Result<OidcClient, String> {
        Ok(OidcClient {
            cfg,
            discovered: ArcSwapOption::empty(),
            last_try: AtomicI64::new(i64::MIN / 2),
            // Following redirects would let a provider's answer send
            // stepgate anywhere (SSRF).
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(|e| format!("OIDC HTTP client: {e}"))?,
        })
    }

    /// Fetch the discovery document and the provider's keys.
    pub async fn discover(&self) -> Result<(), String> {
        let issuer = IssuerUrl::new(self.cfg.issuer.clone()).map_err(|e| e.to_string())?;
        let meta = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| format!("discovery at {}: {e}", self.cfg.issuer))?;
        // RP-initiated logout is not part of the core metadata.
        let url = format!("{}/.well-known/openid-configuration", self.cfg.issuer);
        let end_session = match self.http.get(&url).send().await {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["end_session_endpoint"].as_str().map(str::to_string)),
            Err(_) => None,
        };
        self.discovered
            .store(Some(Arc::new(Discovered { meta, end_session })));
        Ok(())
    }

    /// The provider's metadata, discovering it now when it is not known yet
    /// (at most one try every 10 s, so a provider that is down is not
    /// hammered). `None`: the provider cannot be used right now.
    async fn ready(&self) -> Option<Arc<Discovered>> {
        if let Some(d) = self.discovered.load_full() {
            return Some(d);
        }
        let now = crate::util::clock::now();
        let last = self.last_try.load(Ordering::Relaxed);
        if now - last < 10
            || self
                .last_try
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        match self.discover().await {
            Ok(()) => self.discovered.load_full(),
            Err(e) => {
                tracing::warn!(target: "stepgate", error = %e, "OIDC provider not reachable; sign-in fails closed until it is");
                None
            }
        }
    }

    fn client(
        &self,
        d: &Discovered,
        redirect: &str,
    ) -> Result<
        openidconnect::core::CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        String,
    > {
        Ok(CoreClient::from_provider_metadata(
            d.meta.clone(),
            ClientId::new(self.cfg.client_id.clone()),
            Some(ClientSecret::new(
                String::from_utf8_lossy(self.cfg.client_secret.expose()).into_owned(),
            )),
        )
        .set_redirect_uri(RedirectUrl::new(redirect.to_string()).map_err(|e| e.to_string())?))
    }

    /// Where to send the browser, and what to keep until it comes back.
    /// `fresh`: ask the provider for a new sign-in (`prompt=login`,
    /// `max_age=0`), for PIN enrollment after an old one.
    pub async fn start(
        &self,
        redirect: &str,
        return_to: &str,
        browser: &str,
        fresh: bool,
    ) -> Result<(String, String, Pending), String> {
        let d = self
            .ready()
            .await
            .ok_or("the OIDC provider does not answer")?;
        let client = self.client(&d, redirect)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in self.cfg.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        if fresh {
            req = req
                .add_prompt(CoreAuthPrompt::Login)
                .set_max_age(std::time::Duration::from_secs(0));
        }
        let (url, state, nonce) = req.url();
        Ok((
            url.to_string(),
            state.secret().clone(),
            Pending {
                verifier: verifier.secret().clone(),
                nonce: nonce.secret().clone(),
                return_to: return_to.to_string(),
                browser: browser.to_string(),
            },
        ))
    }

    /// Exchange the code (with the PKCE verifier) and verify the ID token
    /// (signature, issuer, audience, expiry, nonce).
    pub async fn finish(
        &self,
        redirect: &str,
        code: &str,
        p: &Pending,
    ) -> Result<SignedIn, Finish> {
        let d = self
            .ready()
            .await
            .ok_or_else(|| Finish::Unavailable("the OIDC provider does not answer".into()))?;
        let client = self.client(&d, redirect).map_err(Finish::Refused)?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| Finish::Refused(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(p.verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                // An OAuth error answer (`invalid_grant`...): this sign-in
                // is refused. No answer, or not one (a 502 page from a
                // load balancer, an empty 503): the provider is down.
                e @ openidconnect::RequestTokenError::ServerResponse(_) => {
                    Finish::Refused(format!("token exchange: {e}"))
                }
                e => Finish::Unavailable(format!("token exchange: {e}")),
            })?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| Finish::Refused("the provider sent no ID token".into()))?;
        let claims = id_token
            .claims(&client.id_token_verifier(), &Nonce::new(p.nonce.clone()))
            .map_err(|e| Finish::Refused(format!("ID token refused: {e}")))?;
        Ok(SignedIn {
            sub: claims.subject().as_str().to_string(),
            email: claims.email().map(|e| e.as_str().to_string()),
            email_verified: claims.email_verified().unwrap_or(false),
            auth_time: claims.auth_time().map(|t| t.timestamp()),
            username: claims.preferred_username().map(|u| u.as_str().to_string()),
        })
    }

    /// The provider's end-session address for RP-initiated logout, when it
    /// has one.
    pub fn end_session_url(&self, post_logout: &str) -> Option<String> {
        let d = self.discovered.load_full()?;
        let base = d.end_session.as_ref()?;
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(format!(
            "{base}{sep}client_id={}&post_logout_redirect_uri={}",
            crate::reply::url_encode(&self.cfg.client_id),
            crate::reply::url_encode(post_logout)
        ))
    }
}
