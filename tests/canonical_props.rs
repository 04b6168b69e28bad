//! Property tests of the canonical request and of rule matching: canonical
//! paths are idempotent, the spelling of an escape never changes what is
//! matched, matching agrees with a naive reference matcher, and no spelling
//! of a protected path escapes its rule.

use proptest::prelude::*;
use stepgate::policy::Policy;
use stepgate::request::{CanonicalPath, Refusal};

/// Characters a decoded segment may hold (some need encoding on the wire).
const CHARS: &[&str] = &[
    "a", "b", "z", "A", "Z", "0", "9", "-", ".", "_", "~", "!", "$", "&", "'", "(", ")", "*", "+",
    ",", "=", ":", "@", " ", "?", "#", "\"", "<", "[", "é", "É", "ü", "日", "ß",
];

fn segment() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(CHARS), 1..6)
        .prop_map(|v| v.concat())
        .prop_filter("not a dot segment", |s| s != "." && s != "..")
}

fn must_encode(b: u8) -> bool {
    !(b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b))
}

/// One of the many ways a client may spell a byte of a path.
fn spell(b: u8, choice: u8) -> String {
    let upper = format!("%{b:02X}");
    let lower = format!("%{b:02x}");
    if b >= 0x80 || must_encode(b) {
        return if choice.is_multiple_of(2) {
            upper
        } else {
            lower
        };
    }
    match choice % 3 {
        0 => (b as char).to_string(),
        1 => lower,
        _ => upper,
    }
}

fn spelled(segs: &[String], choices: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut k = 0;
    for s in segs {
        out.push(b'/');
        for &b in s.as_bytes() {
            let c = choices[k % choices.len()];
            k += 1;
            if b >= 0x80 && c % 4 == 3 {
                // Raw UTF-8 on the wire, as some clients send it.
                out.push(b);
            } else {
                out.extend_from_slice(spell(b, c).as_bytes());
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn the_spelling_of_escapes_never_changes_the_matched_path(
        segs in prop::collection::vec(segment(), 1..5),
        choices in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let raw = spelled(&segs, &choices);
        let p = CanonicalPath::parse(&raw).unwrap();
        prop_assert_eq!(p.matched(), format!("/{}", segs.join("/")));
        // And one spelling is forwarded, whatever was sent.
        let plain = spelled(&segs, &[2]);
        let plain = CanonicalPath::parse(&plain).unwrap();
        prop_assert_eq!(p.wire(), plain.wire());
    }

    #[test]
    fn canonical_paths_are_idempotent(raw in prop::collection::vec(prop::sample::select(&[
        "/", "/", "a", "B", "%41", "%2e", ".", "..", ";", ";x=1", "%3B", "%2F", "%25", "%C3%A9",
        "é", "%C3", "%", "%4", "\\", "~", "+", "%20", ":", "@", "%40",
    ][..]), 1..12)) {
        let raw = format!("/{}", raw.concat());
        if let Ok(p) = CanonicalPath::parse(raw.as_bytes()) {
            let again = CanonicalPath::parse(p.wire().as_bytes()).expect("a canonical path parses");
            prop_assert_eq!(again.matched(), p.matched());
            prop_assert_eq!(again.wire(), p.wire());
            prop_assert!(p.wire().is_ascii());
            prop_assert!(!p.matched().contains("//"));
        }
    }
}

// ---------- matching against a naive reference ----------

/// Glob match over segments, written the obvious (exponential) way.
fn naive_match(pat: &[&str], segs: &[&str]) -> bool {
    match pat.split_first() {
        None => segs.is_empty(),
        Some((&"**", rest)) => (0..=segs.len()).any(|i| naive_match(rest, &segs[i..])),
        Some((&"*", rest)) => !segs.is_empty() && naive_match(rest, &segs[1..]),
        Some((lit, rest)) => segs.first() == Some(lit) && naive_match(rest, &segs[1..]),
    }
}

fn split(p: &str) -> Vec<&str> {
    p.trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect()
}

fn strength(req: &str) -> u8 {
    match req {
        "none" => 0,
        "authenticated" => 1,
        "step_up" => 2,
        _ => 3,
    }
}

fn reference(rules: &[(String, &str)], path: &str, fold: bool) -> String {
    let find = |path: &str, lower_rules: bool| {
        let segs = split(path);
        rules
            .iter()
            .enumerate()
            .find(|(_, (p, _))| {
                let p = if lower_rules {
                    p.to_lowercase()
                } else {
                    p.clone()
                };
                naive_match(&split(&p), &segs)
            })
            .map(|(i, (_, r))| (format!("r{i}"), *r))
            .unwrap_or(("default".into(), "authenticated"))
    };
    let exact = find(path, false);
    if !fold {
        return exact.0;
    }
    let folded = find(&path.to_lowercase(), true);
    if strength(folded.1) > strength(exact.1) {
        folded.0
    } else {
        exact.0
    }
}

fn pattern() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(&["a", "b", "A", "é", "É", "*", "**"][..]),
        1..4,
    )
    .prop_map(|v| format!("/{}", v.join("/")))
    .prop_filter("one ** per pattern keeps the reference fast", |p| {
        p.matches("**").count() <= 1
    })
}

fn policy(rules: &[(String, &str)], fold: bool) -> Policy {
    let mut y = format!("case_insensitive: {fold}\nrules:\n");
    for (i, (p, r)) in rules.iter().enumerate() {
        let step = if *r == "step_up" {
            ", step_up: { methods: [pin] }"
        } else {
            ""
        };
        y.push_str(&format!(
            "  - {{ name: r{i}, match: {{ path: \"{p}\" }}, require: {r}{step} }}\n"
        ));
    }
    Policy::from_sources(&[("p.yaml".into(), y)]).expect("generated policy is valid")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn matching_agrees_with_a_naive_reference(
        rules in prop::collection::vec((pattern(), prop::sample::select(&["none", "authenticated", "step_up", "deny"][..])), 1..6),
        path in prop::collection::vec(prop::sample::select(&["a", "b", "A", "B", "é", "É", "c"][..]), 0..5),
        fold in any::<bool>(),
    ) {
        let path = format!("/{}", path.join("/"));
        let p = policy(&rules, fold);
        prop_assert_eq!(p.lookup("h", "GET", &path).rule_name(), reference(&rules, &path, fold));
    }

    /// However a client spells a path under a protected prefix (escapes,
    /// case, parameters, doubled slashes, trailing slash), stepgate either
    /// refuses it or applies the protecting rule.
    #[test]
    fn no_spelling_of_a_protected_path_escapes_its_rule(
        prefix in prop::sample::select(&["admin", "api/users:export", "@admin", "café", "account/security"][..]),
        tail in prop::collection::vec(segment(), 0..3),
        choices in prop::collection::vec(any::<u8>(), 1..16),
        noise in prop::collection::vec(prop::sample::select(&["", "", "/", ";x", ";", "/;y"][..]), 1..6),
        upper in any::<bool>(),
    ) {
        let p = Policy::from_sources(&[("p.yaml".into(), "default: none\nrules:\n  - { name: admin, match: { path: \"/admin/**\" }, require: deny }\n  - { name: export, match: { path: \"/api/users:export\" }, require: deny }\n  - { name: at, match: { path: \"/@admin/**\" }, require: deny }\n  - { name: cafe, match: { path: \"/café/**\" }, require: deny }\n  - { name: sec, match: { path: \"/account/security/**\" }, require: deny }\n".into())]).unwrap();
        let mut segs: Vec<String> = prefix.split('/').map(str::to_string).collect();
        if prefix != "api/users:export" {
            segs.extend(tail);
        }
        if upper {
            segs = segs.iter().map(|s| s.to_uppercase()).collect();
        }
        // Spell each segment, then sprinkle parameters and empty segments
        // between them the way Tomcat-style servers would ignore.
        let mut raw = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            raw.extend_from_slice(&spelled(std::slice::from_ref(s), &choices[i % choices.len()..]));
            raw.extend_from_slice(noise[i % noise.len()].as_bytes());
        }
        match CanonicalPath::parse(&raw) {
            Err(e) => prop_assert!(matches!(e, Refusal::AmbiguousEncoding | Refusal::NotUtf8 | Refusal::DotSegment), "{e:?}"),
            Ok(c) => {
                let got = p.lookup("h", "GET", c.matched());
                prop_assert!(
                    got.require == &stepgate::policy::Require::Deny,
                    "{} -> {} matched {}", String::from_utf8_lossy(&raw), c.matched(), got.rule_name()
                );
            }
        }
    }
}
