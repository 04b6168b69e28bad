//! A PIN's life after enrollment: change, forget and reset (by ResetToken,
//! one-time code or security answers), PINAuthTokens for identity providers
//! that make PINs mandatory, device PIN sessions and PIN login, and
//! invalidation. Pages and the JSON API call these flows; they answer with
//! data or a [`FlowError`], never with HTTP.
//!
//! Must never: reveal whether an account exists to a signed-out caller,
//! accept a reset credential twice, evaluate more guesses (PINs, codes,
//! answers) than their lockouts allow, or leave a revoked session usable on
//! any gateway.

mod answers;
mod auth_token;
mod change;
mod common;
mod reset;
mod sessions;

pub use answers::*;
pub use auth_token::*;
pub use change::*;
pub use common::remember_profile;
pub use reset::*;
pub use sessions::*;

#[cfg(test)]
mod tests {
    use super::auth_token::*;
    use super::reset::*;
    use super::sessions::*;
    use std::time::Duration;

    #[test]
    fn devices_are_named_by_browser_and_system() {
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
        let firefox_android =
            "Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0";
        let safari_iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1";
        let edge = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0";
        assert_eq!(device_label(chrome), "Chrome on Linux");
        assert_eq!(device_label(firefox_android), "Firefox on Android");
        assert_eq!(device_label(safari_iphone), "Safari on iOS");
        assert_eq!(device_label(edge), "Edge on Windows");
        assert_eq!(device_label("curl/8.5.0"), "curl/8.5.0");
        assert_eq!(device_label("\u{7}"), "unknown device");
        assert_eq!(device_label(&"x".repeat(500)).len(), 40);
    }

    #[test]
    fn reset_urls_must_be_listed() {
        let allowed = vec![
            "https://app.example.com/reset".to_string(),
            "https://id.example.com/pin/".to_string(),
        ];
        assert!(reset_url_allowed(&allowed, "https://app.example.com/reset"));
        assert!(reset_url_allowed(
            &allowed,
            "https://app.example.com/reset?x=1"
        ));
        assert!(reset_url_allowed(
            &allowed,
            "https://id.example.com/pin/reset"
        ));
        assert!(!reset_url_allowed(
            &allowed,
            "https://app.example.com/reset2"
        ));
        assert!(!reset_url_allowed(
            &allowed,
            "https://app.example.com.evil.io/reset"
        ));
        assert!(!reset_url_allowed(&allowed, "https://id.example.com/pinx"));
        assert!(!reset_url_allowed(&[], "https://app.example.com/reset"));
    }

    fn settings(extra: &str) -> crate::config::Settings {
        let secret = "0123456789abcdef0123456789abcdef";
        crate::config::from_str(
            std::path::Path::new("/tmp/gw.yaml"),
            &format!("policy: p.yaml\nfirst_factor: {{ jwt: {{ secret: \"{secret}\" }} }}\nsigning: {{ secret: \"{secret}\" }}\n{extra}"),
        )
        .unwrap()
    }

    #[test]
    fn links_use_public_url_when_set_whatever_the_host() {
        let s =
            settings("upstream: http://127.0.0.1:9000\npublic_url: \"https://gw.example.com/\"\n");
        for origin in ["http://attacker.example", "http://127.0.0.1:8080", ""] {
            assert_eq!(
                link_origin(&s, origin).as_deref(),
                Some("https://gw.example.com"),
                "{origin}"
            );
        }
    }

    #[test]
    fn without_public_url_links_follow_only_hosts_the_config_names() {
        let s = settings(
            "listen: [\"127.0.0.1:8443\", \"0.0.0.0:9443\"]\nupstream: { \"app.example.com\": \"http://127.0.0.1:9000\", \"*\": \"http://127.0.0.1:9001\" }\n",
        );
        assert_eq!(
            link_origin(&s, "https://App.Example.com.").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            link_origin(&s, "https://app.example.com:8443").as_deref(),
            Some("https://app.example.com:8443")
        );
        // Where stepgate itself listens (address and port).
        assert_eq!(
            link_origin(&s, "http://127.0.0.1:8443").as_deref(),
            Some("http://127.0.0.1:8443")
        );
        for refused in [
            "http://attacker.example",
            "http://app.example.com.attacker.example",
            "http://127.0.0.1:9999",
            "http://127.0.0.1",
            "http://0.0.0.0:9443",
            "http://app.example.com@attacker.example",
            "http://app.example.com/x",
            "javascript://app.example.com",
            "app.example.com",
            "",
        ] {
            assert_eq!(link_origin(&s, refused), None, "{refused}");
        }
        // A single upstream names no host.
        let single = settings("upstream: http://127.0.0.1:9000\n");
        assert_eq!(link_origin(&single, "http://app.example.com"), None);
    }

    #[test]
    fn forgot_requests_per_address_default_to_ten_an_hour() {
        let base = "upstream: http://127.0.0.1:9000\n";
        assert_eq!(settings(base).pin.forgot_ip_limit, 10);
        let s = settings(&format!("{base}pin: {{ forgot_ip_limit: 3 }}\n"));
        assert_eq!(s.pin.forgot_ip_limit, 3);
    }

    #[test]
    fn an_ended_sessions_invalidation_outlives_every_session_token_it_gave() {
        let login_ttl = Duration::from_secs(900);
        // Ended a day before it would have expired.
        assert_eq!(
            ended_session_ttl(1000 + 86400, 1000, login_ttl),
            Duration::from_secs(86400 + 900 + 3600)
        );
        // Already expired: the last session token may still live login_ttl.
        assert_eq!(
            ended_session_ttl(500, 1000, login_ttl),
            Duration::from_secs(900 + 3600)
        );
    }

    #[test]
    fn a_login_is_fresh_only_within_the_window_and_when_its_time_is_known() {
        let w = Duration::from_secs(600);
        assert!(fresh_login(Some(1000), w, 1600));
        assert!(!fresh_login(Some(1000), w, 1601));
        assert!(!fresh_login(None, w, 1000));
    }

    #[test]
    fn answers_normalise_case_and_spaces() {
        assert_eq!(
            normalize_answer("  Saint   Mary's\tSchool "),
            "saint mary's school"
        );
    }

    #[test]
    fn decoy_hash_is_a_valid_phc_string() {
        assert!(argon2::password_hash::PasswordHash::new(DECOY_PHC).is_ok());
    }
}
