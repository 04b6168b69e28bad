//! The canonical request's unit tests (generated inputs: tests/canonical_props.rs).

use super::*;

fn path(raw: &str) -> Result<(String, String), Refusal> {
    CanonicalPath::parse(raw.as_bytes()).map(|p| (p.matched, p.wire))
}

fn m(raw: &str) -> String {
    path(raw).unwrap().0
}

#[test]
fn every_escape_is_decoded_once_for_matching_and_reencoded_one_way() {
    assert_eq!(m("/api/users%3Aexport"), "/api/users:export");
    assert_eq!(m("/%40admin/x"), "/@admin/x");
    assert_eq!(m("/caf%C3%A9/x"), "/café/x");
    assert_eq!(m("/caf%c3%a9/x"), "/café/x");
    assert_eq!(m("/café/x"), "/café/x");
    assert_eq!(m("/%61dmin"), "/admin");
    assert_eq!(path("/café/x").unwrap().1, "/caf%C3%A9/x");
    assert_eq!(path("/a%20b/%3f").unwrap().1, "/a%20b/%3F");
    assert_eq!(path("/users%3Aexport").unwrap().1, "/users:export");
}

#[test]
fn params_and_empty_segments_disappear() {
    assert_eq!(m("/;x/admin"), "/admin");
    assert_eq!(m("/account/;/security/x"), "/account/security/x");
    assert_eq!(m("/admin;jsessionid=1/x"), "/admin/x");
    assert_eq!(m("//admin///x"), "/admin/x");
    assert_eq!(
        path("/admin/").unwrap(),
        ("/admin".into(), "/admin/".into())
    );
    assert_eq!(path("/").unwrap(), ("/".into(), "/".into()));
    assert_eq!(path("/;x").unwrap(), ("/".into(), "/".into()));
    assert_eq!(path("/admin;x").unwrap().1, "/admin");
}

#[test]
fn ambiguous_paths_are_refused() {
    for bad in [
        "/a%2Fb", "/a%2fb", "/a%5Cb", "/a\\b", "/a%00", "/a%25b", "/a%3Bb", "/a%zz", "/a%4",
        "/a%09b", "/a b",
    ] {
        assert_eq!(path(bad), Err(Refusal::AmbiguousEncoding), "{bad}");
    }
    for bad in [
        "/a/../b",
        "/./a",
        "/a/%2e%2e/b",
        "/a/.%2E",
        "/a/..;x/b",
        "/.;/admin",
    ] {
        assert_eq!(path(bad), Err(Refusal::DotSegment), "{bad}");
    }
    assert_eq!(path("/%C3"), Err(Refusal::NotUtf8));
    assert_eq!(path("/%C0%AF"), Err(Refusal::NotUtf8));
    assert_eq!(path("admin"), Err(Refusal::TargetForm));
}

#[test]
fn targets_without_a_leading_slash_are_refused() {
    for bad in [
        "admin",
        "x:/admin",
        "%2Fadmin",
        ";/admin",
        "../internal/x",
        "ftp://h/x",
        "",
    ] {
        assert_eq!(
            Target::parse("GET", bad.as_bytes()),
            Err(Refusal::TargetForm),
            "{bad}"
        );
    }
    assert_eq!(Target::parse("GET", b"*"), Err(Refusal::Asterisk));
    assert!(Target::parse("OPTIONS", b"*").unwrap().asterisk);
    assert_eq!(Target::parse("GET", b"/a#b"), Err(Refusal::Fragment));
    assert_eq!(
        Target::parse("GET", b"http://u@h/x"),
        Err(Refusal::Userinfo)
    );
}

#[test]
fn absolute_form_authority_is_parsed() {
    let t = Target::parse("GET", b"HTTP://Billing.Example.com:8080/x?q=1").unwrap();
    assert_eq!(
        t.authority.as_ref().unwrap().authority(),
        "billing.example.com:8080"
    );
    assert_eq!(t.path.matched(), "/x");
    assert_eq!(t.query.as_deref(), Some("q=1"));
    let t = Target::parse("GET", b"http://h").unwrap();
    assert_eq!(t.path.wire(), "/");
}

#[test]
fn hosts_are_validated() {
    let ok = |h: &str| Host::parse(h.as_bytes()).map(|h| h.authority());
    assert_eq!(ok("Billing.Example.COM."), Ok("billing.example.com".into()));
    assert_eq!(ok("a.b:80"), Ok("a.b:80".into()));
    assert_eq!(ok("127.0.0.1:9"), Ok("127.0.0.1:9".into()));
    assert_eq!(ok("[::1]:9"), Ok("[::1]:9".into()));
    assert_eq!(ok("under_score.local"), Ok("under_score.local".into()));
    for bad in [
        "",
        "billing.example.com/x",
        "billing.example.com?x",
        "billing.example.com#x",
        "billing.example.com\\x",
        "billing.example.com, x",
        "billing.example.com;x",
        "a..b",
        ".a",
        "a:",
        "a:99999",
        "a:1:2",
        "[::1",
        "[zz]",
        "u@h",
        "127.1",
        "0x7f.0.0.1",
        "1.2.3.256",
        "a b",
        "é.com",
    ] {
        assert_eq!(ok(bad), Err(Refusal::BadHost), "{bad:?}");
    }
}

fn req(target: &str, hosts: &[&str], http10: bool) -> Result<CanonicalRequest, Refusal> {
    CanonicalRequest::parse(
        &Raw {
            method: "GET",
            target: target.as_bytes(),
            authority: None,
            hosts: hosts.iter().map(|h| h.as_bytes()).collect(),
            http10,
        },
        None,
    )
}

#[test]
fn the_host_comes_from_one_place() {
    assert_eq!(req("/x", &[], false).unwrap_err(), Refusal::MissingHost);
    assert_eq!(req("/x", &[], true).unwrap_err(), Refusal::MissingHost);
    assert_eq!(
        req("/x", &["a", "b"], false).unwrap_err(),
        Refusal::ManyHosts
    );
    assert_eq!(req("/x", &[""], false).unwrap_err(), Refusal::BadHost);
    let r = req("http://billing.example.com/x", &["other"], false).unwrap();
    assert_eq!(r.host.name(), "billing.example.com");
    let d = Host::parse(b"app.example.com").unwrap();
    let r = CanonicalRequest::parse(
        &Raw {
            method: "GET",
            target: b"/x",
            authority: None,
            hosts: vec![],
            http10: true,
        },
        Some(&d),
    )
    .unwrap();
    assert_eq!(r.host, d);
}

#[test]
fn methods_must_be_upper_case_tokens() {
    let raw = |m| Raw {
        method: m,
        target: b"/x",
        authority: None,
        hosts: vec![b"h"],
        http10: false,
    };
    assert_eq!(
        CanonicalRequest::parse(&raw("get"), None).unwrap_err(),
        Refusal::Method
    );
    assert!(CanonicalRequest::parse(&raw("PROPFIND"), None).is_ok());
}

#[test]
fn raw_forwarding_only_when_it_reads_the_same() {
    let p = CanonicalPath::parse(b"/caf%C3%A9/x").unwrap();
    assert!(raw_is_faithful(b"/caf%C3%A9/x", &p));
    assert!(raw_is_faithful(
        b"/caf%c3%a9/x/",
        &CanonicalPath::parse(b"/caf%c3%a9/x/").unwrap()
    ));
    let p = CanonicalPath::parse(b"/;x/admin").unwrap();
    assert!(!raw_is_faithful(b"/;x/admin", &p));
    let p = CanonicalPath::parse(b"//admin").unwrap();
    assert!(!raw_is_faithful(b"//admin", &p));
}
