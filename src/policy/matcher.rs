//! The compiled rule index. Rules are stored in a trie over path segments,
//! one trie per exact host plus one for rules without a host and one per host
//! glob, so a lookup walks the request's segments instead of scanning rules:
//! its cost grows with the path's depth and the number of patterns that can
//! match it, not with the size of the policy. The winner is still the first
//! matching rule in file order (lowest index).

use std::collections::HashMap;

use super::glob::{has_wildcard, wildcard};

/// Children keyed by glob patterns. `*suffix` patterns (the common
/// `*.pdf`, `*.tenant.example.com`) are found by hashing the text's suffix of
/// each length in use, so thousands of them cost a handful of lookups; other
/// patterns are tried one by one.
#[derive(Debug)]
struct Globs<T> {
    by_suffix: HashMap<Box<[u8]>, T>,
    suffix_lens: Vec<usize>,
    other: Vec<(Box<[u8]>, T)>,
}

impl<T> Default for Globs<T> {
    fn default() -> Self {
        Globs {
            by_suffix: HashMap::new(),
            suffix_lens: Vec::new(),
            other: Vec::new(),
        }
    }
}

impl<T: Default> Globs<T> {
    fn entry(&mut self, pattern: &str) -> &mut T {
        let b = pattern.as_bytes();
        if let Some(lit) = pattern.strip_prefix('*').filter(|l| !has_wildcard(l)) {
            if !self.suffix_lens.contains(&lit.len()) {
                self.suffix_lens.push(lit.len());
            }
            return self.by_suffix.entry(lit.as_bytes().into()).or_default();
        }
        let pos = self.other.iter().position(|(g, _)| &**g == b);
        let i = pos.unwrap_or_else(|| {
            self.other.push((b.into(), T::default()));
            self.other.len() - 1
        });
        &mut self.other[i].1
    }

    fn matching<'a>(&'a self, text: &'a [u8]) -> impl Iterator<Item = &'a T> + 'a {
        let by_suffix = self
            .suffix_lens
            .iter()
            .filter(|l| **l <= text.len())
            .filter_map(move |l| self.by_suffix.get(&text[text.len() - l..]));
        by_suffix.chain(
            self.other
                .iter()
                .filter(move |(g, _)| wildcard(g, text))
                .map(|(_, n)| n),
        )
    }
}

#[derive(Default, Debug)]
struct Node {
    /// Rules whose pattern ends at this node, ascending.
    terminals: Vec<u32>,
    literal: HashMap<Box<str>, Node>,
    /// Whole-segment `*`: exactly one segment.
    star: Option<Box<Node>>,
    /// Segments with `*`/`?` inside, such as `*.json`.
    globs: Globs<Node>,
    /// `**`: zero or more segments.
    deep: Option<Box<Node>>,
}

impl Node {
    fn insert(&mut self, segs: &[&str], rule: u32) {
        let Some((first, rest)) = segs.split_first() else {
            self.terminals.push(rule);
            return;
        };
        let child = match *first {
            "**" => self.deep.get_or_insert_with(Default::default).as_mut(),
            "*" => self.star.get_or_insert_with(Default::default).as_mut(),
            s if has_wildcard(s) => self.globs.entry(s),
            s => self.literal.entry(s.into()).or_default(),
        };
        child.insert(rest, rule);
    }

    fn find(&self, segs: &[&str], best: &mut u32, accept: &dyn Fn(u32) -> bool) {
        match segs.split_first() {
            None => {
                for &r in &self.terminals {
                    if r >= *best {
                        break;
                    }
                    if accept(r) {
                        *best = r;
                        break;
                    }
                }
            }
            Some((first, rest)) => {
                if let Some(n) = self.literal.get(*first) {
                    n.find(rest, best, accept);
                }
                if let Some(n) = &self.star {
                    if !first.is_empty() {
                        n.find(rest, best, accept);
                    }
                }
                for n in self.globs.matching(first.as_bytes()) {
                    n.find(rest, best, accept);
                }
            }
        }
        if let Some(n) = &self.deep {
            for skip in 0..=segs.len() {
                n.find(&segs[skip..], best, accept);
            }
        }
    }
}

/// Splits a path pattern or a normalized request path into segments. The
/// leading `/` is dropped and so is one trailing `/`: `/a/` and `/a` are the
/// same resource to the matcher.
pub fn segments(path: &str) -> Vec<&str> {
    let p = path.strip_prefix('/').unwrap_or(path);
    let p = p.strip_suffix('/').unwrap_or(p);
    if p.is_empty() {
        Vec::new()
    } else {
        p.split('/').collect()
    }
}

#[derive(Default, Debug)]
pub struct Index {
    any_host: Node,
    exact_hosts: HashMap<Box<str>, Node>,
    glob_hosts: Globs<Node>,
}

impl Index {
    /// Add a rule. `host` is lowercase; `path` a validated pattern.
    pub fn insert(&mut self, host: Option<&str>, path: &str, rule: u32) {
        let node = match host {
            None => &mut self.any_host,
            Some(h) if has_wildcard(h) => self.glob_hosts.entry(h),
            Some(h) => self.exact_hosts.entry(h.into()).or_default(),
        };
        node.insert(&segments(path), rule);
    }

    /// The lowest rule index whose host and path match and that `accept`
    /// (the method check) agrees to.
    pub fn lookup(&self, host: &str, segs: &[&str], accept: &dyn Fn(u32) -> bool) -> Option<u32> {
        let mut best = u32::MAX;
        self.any_host.find(segs, &mut best, accept);
        if let Some(n) = self.exact_hosts.get(host) {
            n.find(segs, &mut best, accept);
        }
        for n in self.glob_hosts.matching(host.as_bytes()) {
            n.find(segs, &mut best, accept);
        }
        (best != u32::MAX).then_some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(rules: &[(Option<&str>, &str)]) -> Index {
        let mut ix = Index::default();
        for (i, (h, p)) in rules.iter().enumerate() {
            ix.insert(*h, p, i as u32);
        }
        ix
    }

    fn find(ix: &Index, host: &str, path: &str) -> Option<u32> {
        ix.lookup(host, &segments(path), &|_| true)
    }

    #[test]
    fn double_star_matches_any_depth_including_none() {
        let ix = index(&[(None, "/admin/**")]);
        assert_eq!(find(&ix, "h", "/admin"), Some(0));
        assert_eq!(find(&ix, "h", "/admin/"), Some(0));
        assert_eq!(find(&ix, "h", "/admin/a/b/c"), Some(0));
        assert_eq!(find(&ix, "h", "/administrator"), None);
    }

    #[test]
    fn single_star_is_exactly_one_segment() {
        let ix = index(&[(None, "/users/*/edit")]);
        assert_eq!(find(&ix, "h", "/users/42/edit"), Some(0));
        assert_eq!(find(&ix, "h", "/users/edit"), None);
        assert_eq!(find(&ix, "h", "/users/4/2/edit"), None);
    }

    #[test]
    fn first_rule_in_file_order_wins_over_more_specific_later_rule() {
        let ix = index(&[(None, "/**"), (None, "/admin/**")]);
        assert_eq!(find(&ix, "h", "/admin/x"), Some(0));
        let ix = index(&[(None, "/admin/**"), (None, "/**")]);
        assert_eq!(find(&ix, "h", "/admin/x"), Some(0));
        assert_eq!(find(&ix, "h", "/other"), Some(1));
    }

    #[test]
    fn hosts_exact_and_glob() {
        let ix = index(&[
            (Some("app.example.com"), "/a/**"),
            (Some("*.example.com"), "/b/**"),
            (None, "/c"),
        ]);
        assert_eq!(find(&ix, "app.example.com", "/a/x"), Some(0));
        assert_eq!(find(&ix, "other.example.com", "/a/x"), None);
        assert_eq!(find(&ix, "other.example.com", "/b"), Some(1));
        assert_eq!(find(&ix, "anything", "/c"), Some(2));
    }

    #[test]
    fn segment_globs_and_middle_double_star() {
        let ix = index(&[(None, "/files/**/*.pdf"), (None, "/api/v?/**")]);
        assert_eq!(find(&ix, "h", "/files/a/b/x.pdf"), Some(0));
        assert_eq!(find(&ix, "h", "/files/x.pdf"), Some(0));
        assert_eq!(find(&ix, "h", "/files/x.txt"), None);
        assert_eq!(find(&ix, "h", "/api/v2/users"), Some(1));
    }

    #[test]
    fn thousands_of_suffix_globs_are_indexed_and_still_match_like_wildcards() {
        let mut rules: Vec<(Option<String>, String)> = (0..3000)
            .map(|i| (Some(format!("*.t{i}.example.com")), "/x".to_string()))
            .collect();
        rules.push((None, "/f/*.pdf".into()));
        rules.push((None, "/f/a*z".into()));
        let mut ix = Index::default();
        for (i, (h, p)) in rules.iter().enumerate() {
            ix.insert(h.as_deref(), p, i as u32);
        }
        assert_eq!(find(&ix, "app.t2999.example.com", "/x"), Some(2999));
        assert_eq!(find(&ix, "a.b.t7.example.com", "/x"), Some(7));
        assert_eq!(
            find(&ix, "t7.example.com", "/x"),
            None,
            "`*.` needs a label before the dot"
        );
        assert_eq!(find(&ix, "h", "/f/r.pdf"), Some(3000));
        assert_eq!(find(&ix, "h", "/f/abcz"), Some(3001));
        assert_eq!(find(&ix, "h", "/f/r.pdfx"), None);
    }

    #[test]
    fn method_filter_falls_through_to_next_rule() {
        let ix = index(&[(None, "/x"), (None, "/x")]);
        assert_eq!(ix.lookup("h", &segments("/x"), &|r| r == 1), Some(1));
    }
}
