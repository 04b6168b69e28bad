//! An upstream app that trusts stepgate the right way: instead of believing
//! bare `X-Stepgate-*` headers (anyone who reaches the app without going
//! through the gateway could send them), it verifies the signed
//! `X-Stepgate-Assertion` against the gateway's published keys.
//!
//! It fetches `GATEWAY/.stepgate/jwks.json` at start, and again when an
//! assertion names a key it does not know (the gateway rotated its key; at
//! most once per `--refetch-interval`). An assertion is accepted when its
//! ES256 signature verifies, `aud`, `iss` and `exp` are right, and it was
//! made for this very request (`method`, `path`). The answer shows who the
//! user is, which factor they confirmed with (`amr`) and how long ago
//! (`now - auth_time`); a missing or invalid assertion gets `401`.
//!
//! ```sh
//! cargo run --example verify_assertion -- http://127.0.0.1:8080 --listen 127.0.0.1:9000
//! # gateway config: upstream: "http://127.0.0.1:9000"
//! # (the default assertion audience is the upstream URL, the default issuer `stepgate`)
//! ```

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use clap::Parser;
use http::Response;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "An upstream app that verifies stepgate's X-Stepgate-Assertion")]
struct Args {
    /// The gateway's base URL, e.g. http://127.0.0.1:8080 (keys at /.stepgate/jwks.json).
    gateway: String,
    /// Where this app listens.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// The expected `aud`: the gateway's `assertion.audience` (default: http://LISTEN,
    /// which is what the gateway uses when its upstream is this app).
    #[arg(long)]
    audience: Option<String>,
    /// The expected `iss`: the gateway's `assertion.issuer` (its default: `public_url`, else `stepgate`).
    #[arg(long, default_value = "stepgate")]
    issuer: String,
    /// Fetch the JWKS for an unknown `kid` at most this often (seconds).
    #[arg(long, default_value_t = 10)]
    refetch_interval: u64,
}

/// What an assertion must say about where it comes from.
pub struct Expect {
    pub audience: String,
    pub issuer: String,
}

/// The claims of a verified assertion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assertion {
    pub sub: String,
    #[serde(default)]
    pub email: Option<String>,
    /// The step-up factor (`pin`, `otp`); empty when the user only signed in.
    pub amr: Vec<String>,
    pub acr: String,
    /// When the step-up (or, without one, the login) happened.
    #[serde(default)]
    pub auth_time: Option<i64>,
    pub rule: String,
    pub method: String,
    pub path: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// Why an assertion was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    /// Its `kid` is not in the JWKS (fetch the JWKS again, then retry once).
    UnknownKey(String),
    Invalid(String),
    /// Valid, but made for another request.
    OtherRequest,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing => write!(f, "no X-Stepgate-Assertion"),
            Refusal::UnknownKey(k) => write!(f, "signed with an unknown key {k:?}"),
            Refusal::Invalid(e) => write!(f, "invalid assertion: {e}"),
            Refusal::OtherRequest => write!(f, "the assertion was made for another request"),
        }
    }
}

/// Verify `token` for the request `method path` against `jwks`: ES256 only,
/// the key chosen by `kid`, `aud`, `iss` and `exp` checked (5 s leeway).
pub fn verify(
    token: &str,
    jwks: &JwkSet,
    expect: &Expect,
    method: &str,
    path: &str,
) -> Result<Assertion, Refusal> {
    let header = decode_header(token).map_err(|e| Refusal::Invalid(e.to_string()))?;
    if header.alg != Algorithm::ES256 {
        return Err(Refusal::Invalid(format!("algorithm {:?}", header.alg)));
    }
    if header.typ.as_deref() != Some("stepgate-assertion+jwt") {
        return Err(Refusal::Invalid("not a stepgate assertion (typ)".into()));
    }
    let kid = header
        .kid
        .ok_or_else(|| Refusal::Invalid("no kid".into()))?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| Refusal::UnknownKey(kid.clone()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| Refusal::Invalid(e.to_string()))?;
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[&expect.audience]);
    v.set_issuer(&[&expect.issuer]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    v.leeway = 5;
    let a = decode::<Assertion>(token, &key, &v)
        .map_err(|e| Refusal::Invalid(e.to_string()))?
        .claims;
    if a.method != method || a.path != path {
        return Err(Refusal::OtherRequest);
    }
    Ok(a)
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What the app shows about a verified assertion.
pub fn describe(a: &Assertion, now: i64) -> serde_json::Value {
    let fresh = a.auth_time.map(|t| (now - t).max(0));
    let how = match a.amr.first() {
        Some(f) => format!("confirmed with {f}"),
        None => "signed in (no step-up)".to_string(),
    };
    let summary = match fresh {
        Some(s) => format!("{} {how} {s} s ago", a.sub),
        None => format!("{} {how}", a.sub),
    };
    serde_json::json!({
        "user": a.sub,
        "email": a.email,
        "amr": a.amr,
        "acr": a.acr,
        "rule": a.rule,
        "fresh_secs": fresh,
        "summary": summary,
    })
}

pub async fn fetch_jwks(gateway: &str) -> Result<JwkSet, String> {
    let url = format!("{}/.stepgate/jwks.json", gateway.trim_end_matches('/'));
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("{url}: {e}"))?
        .json::<JwkSet>()
        .await
        .map_err(|e| format!("{url}: {e}"))
}

struct App {
    gateway: String,
    expect: Expect,
    keys: RwLock<Arc<JwkSet>>,
    last_fetch: Mutex<Option<Instant>>,
    refetch_interval: Duration,
}

impl App {
    /// Verify, fetching the JWKS again once if the key is unknown.
    async fn check(&self, token: &str, method: &str, path: &str) -> Result<Assertion, Refusal> {
        let keys = self.keys.read().unwrap().clone();
        match verify(token, &keys, &self.expect, method, path) {
            Err(Refusal::UnknownKey(kid)) => {
                if !self.may_fetch() {
                    return Err(Refusal::UnknownKey(kid));
                }
                match fetch_jwks(&self.gateway).await {
                    Ok(set) => {
                        let set = Arc::new(set);
                        *self.keys.write().unwrap() = set.clone();
                        verify(token, &set, &self.expect, method, path)
                    }
                    Err(e) => {
                        eprintln!("verify_assertion: JWKS fetch failed: {e}");
                        Err(Refusal::UnknownKey(kid))
                    }
                }
            }
            other => other,
        }
    }

    fn may_fetch(&self) -> bool {
        let mut last = self.last_fetch.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < self.refetch_interval) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

fn json_response(status: u16, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Content-Length", body.len().to_string())
        .header("Cache-Control", "no-store")
        .body(body)
        .unwrap()
}

#[async_trait]
impl ServeHttp for App {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header().clone();
        // Read (and drop) any body, so the connection stays usable.
        while let Ok(Some(_)) = session.read_request_body().await {}
        let token = req
            .headers
            .get("x-stepgate-assertion")
            .and_then(|v| v.to_str().ok());
        let result = match token {
            None => Err(Refusal::Missing),
            Some(t) => self.check(t, req.method.as_str(), req.uri.path()).await,
        };
        match result {
            Ok(a) => json_response(200, describe(&a, now())),
            Err(e) => json_response(401, serde_json::json!({ "error": e.to_string() })),
        }
    }
}

fn main() {
    let args = Args::parse();
    let keys = tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(fetch_jwks(&args.gateway))
        .unwrap_or_else(|e| {
            eprintln!("verify_assertion: no JWKS yet ({e}); fetching on the first request");
            JwkSet { keys: Vec::new() }
        });
    let app = App {
        expect: Expect {
            audience: args
                .audience
                .unwrap_or_else(|| format!("http://{}", args.listen)),
            issuer: args.issuer,
        },
        gateway: args.gateway,
        last_fetch: Mutex::new((!keys.keys.is_empty()).then(Instant::now)),
        keys: RwLock::new(Arc::new(keys)),
        refetch_interval: Duration::from_secs(args.refetch_interval),
    };
    let mut server = Server::new_with_opt_and_conf(
        Opt::default(),
        ServerConf {
            threads: 1,
            ..Default::default()
        },
    );
    server.bootstrap();
    let mut service = pingora::services::listening::Service::new("verify_assertion".into(), app);
    service.add_tcp(&args.listen);
    server.add_service(service);
    eprintln!("verify_assertion: listening on {}", args.listen);
    server.run_forever();
}
