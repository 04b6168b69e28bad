//! Glob pieces used by policy rules: `*` and `?` inside one path segment or a
//! host name. Whole-segment `*` and `**` are handled by the matcher's trie.

/// Match `text` against a pattern where `*` is any run of characters (also
/// empty) and `?` is one character. Iterative, linear in practice: no
/// backtracking blow-up on hostile input.
pub fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

pub fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn stars_and_question_marks() {
        assert!(wildcard(b"*.json", b"a.json"));
        assert!(wildcard(b"*.json", b".json"));
        assert!(!wildcard(b"*.json", b"a.jsonx"));
        assert!(wildcard(b"v?", b"v1"));
        assert!(!wildcard(b"v?", b"v12"));
        assert!(wildcard(b"*.example.com", b"a.b.example.com"));
        assert!(!wildcard(b"*.example.com", b"example.com"));
        assert!(wildcard(b"a*b*c", b"aXXbYYc"));
        assert!(!wildcard(b"a*b*c", b"aXXbYY"));
    }
}
