//! First-factor verification with public keys over real sockets: a PEM file,
//! a JWKS file, and a JWKS URL served by a real HTTP server whose keys rotate.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed by the README's test command");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh P-256 key: (private PKCS#8 PEM path, public PEM path).
fn ec_key(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let raw = dir.join(format!("{name}.raw.pem"));
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        raw.to_str().unwrap(),
    ]);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        raw.to_str().unwrap(),
        "-out",
        private.to_str().unwrap(),
    ]);
    openssl(&[
        "ec",
        "-in",
        raw.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (private, public)
}

fn jwks(keys: &[(&Path, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(pem, kid)| {
            let ek = EncodingKey::from_ec_pem(&std::fs::read(pem).unwrap()).unwrap();
            let mut jwk = Jwk::from_encoding_key(&ek, Algorithm::ES256).unwrap();
            jwk.common.key_id = Some(kid.to_string());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

fn es256_token(pem: &Path, kid: Option<&str>, sub: &str) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = kid.map(str::to_string);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    encode(
        &h,
        &serde_json::json!({"sub": sub, "exp": now + 600, "iat": now}),
        &EncodingKey::from_ec_pem(&std::fs::read(pem).unwrap()).unwrap(),
    )
    .unwrap()
}

fn status(g: &Gateway, token: &str) -> u16 {
    client()
        .get(g.url("/hello"))
        .bearer_auth(token)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn public_key_file_verifies_es256_and_refuses_hs256_made_with_the_public_key() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = ec_key(keys.path(), "k");
    let g = Gateway::start_with(GatewayOptions {
        jwt: Some(format!(
            "    algorithms: [ES256]\n    public_key_file: \"{}\"\n",
            public.display()
        )),
        ..Default::default()
    });
    assert_eq!(status(&g, &es256_token(&private, None, "alice")), 200);
    // The classic RS/HS confusion: an HS256 token whose secret is the public key.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "mallory", "exp": 9999999999u64}),
        &EncodingKey::from_secret(&std::fs::read(&public).unwrap()),
    )
    .unwrap();
    assert_eq!(status(&g, &forged), 401);
    // Another key's signature.
    let (other, _) = ec_key(keys.path(), "other");
    assert_eq!(status(&g, &es256_token(&other, None, "alice")), 401);
    // `stepgate token` refuses to mint for a public-key config.
    let out = Command::new(BIN)
        .args(["token", "--sub", "x", "--config"])
        .arg(&g.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("public key"));
}

#[test]
fn jwks_file_selects_the_key_by_kid() {
    let keys = tempfile::tempdir().unwrap();
    let (k1, _) = ec_key(keys.path(), "k1");
    let (k2, _) = ec_key(keys.path(), "k2");
    let file = keys.path().join("jwks.json");
    std::fs::write(&file, jwks(&[(&k1, "one"), (&k2, "two")])).unwrap();
    let g = Gateway::start_with(GatewayOptions {
        jwt: Some(format!(
            "    algorithms: [ES256]\n    jwks_file: \"{}\"\n",
            file.display()
        )),
        ..Default::default()
    });
    assert_eq!(status(&g, &es256_token(&k1, Some("one"), "a")), 200);
    assert_eq!(status(&g, &es256_token(&k2, Some("two"), "a")), 200);
    assert_eq!(
        status(&g, &es256_token(&k1, Some("two"), "a")),
        401,
        "kid two with key one's signature"
    );
    assert_eq!(
        status(&g, &es256_token(&k1, Some("three"), "a")),
        401,
        "unknown kid"
    );
}

#[test]
fn jwks_url_is_refetched_when_the_idp_rotates_its_keys() {
    let keys = tempfile::tempdir().unwrap();
    let (k1, _) = ec_key(keys.path(), "k1");
    let (k2, _) = ec_key(keys.path(), "k2");
    let served = keys.path().join("www");
    std::fs::create_dir(&served).unwrap();
    std::fs::write(served.join("jwks.json"), jwks(&[(&k1, "one")])).unwrap();
    let port = free_port();
    let _idp = spawn(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&served),
        keys.path().join("idp.log"),
    );
    wait_for_port(port, Duration::from_secs(10));
    let g = Gateway::start_with(GatewayOptions {
        jwt: Some(format!("    algorithms: [ES256]\n    jwks_url: \"http://127.0.0.1:{port}/jwks.json\"\n    jwks_refresh: 1h\n")),
        ..Default::default()
    });
    assert_eq!(status(&g, &es256_token(&k1, Some("one"), "a")), 200);
    // The IdP rotates to a new key; stepgate has not seen it yet.
    std::fs::write(served.join("jwks.json"), jwks(&[(&k2, "two")])).unwrap();
    let rotated = es256_token(&k2, Some("two"), "a");
    let start = Instant::now();
    let mut last = 0;
    while start.elapsed() < Duration::from_secs(20) {
        last = status(&g, &rotated);
        if last == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        last,
        200,
        "the unknown kid triggered a JWKS refetch; log:\n{}",
        g.log()
    );
    assert_eq!(
        status(&g, &es256_token(&k1, Some("one"), "a")),
        401,
        "the rotated-out key is gone"
    );
}

#[test]
fn an_unreachable_jwks_url_stops_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), "rules: []\n").unwrap();
    let cfg = dir.path().join("gw.yaml");
    let dead = free_port();
    std::fs::write(&cfg, format!("listen: \"127.0.0.1:{}\"\nupstream: http://127.0.0.1:9\npolicy: p.yaml\nfirst_factor: {{ jwt: {{ algorithms: [ES256], jwks_url: \"http://127.0.0.1:{dead}/jwks.json\" }} }}\nsigning: {{ secret: \"{SIGNING_SECRET}\" }}\nstore: {{ kind: memory }}\n", free_port())).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("first_factor.jwt.jwks_url") && err.contains("cannot fetch"),
        "{err}"
    );
}
