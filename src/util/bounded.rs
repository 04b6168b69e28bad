//! The in-memory caches (verified tokens, reused assertions, PINAuthTokens
//! handed out) are bounded the same way: when one is full, entries that are
//! no longer useful go; if it is still full, it starts over.

use std::collections::HashMap;
use std::hash::Hash;

/// Insert `key` → `value` into `map`, keeping it at most `max` entries:
/// when full, drop the entries `useful` refuses first, then everything.
pub fn insert<K: Eq + Hash, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    key: K,
    value: V,
    useful: impl FnMut(&K, &mut V) -> bool,
) {
    if map.len() >= max {
        map.retain(useful);
        if map.len() >= max {
            map.clear();
        }
    }
    map.insert(key, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_stale_entries_then_everything() {
        let mut m: HashMap<u32, u32> = (0..4).map(|i| (i, i)).collect();
        insert(&mut m, 4, 10, 10, |_, v| *v >= 2);
        assert_eq!(m.len(), 3, "stale 0 and 1 went: {m:?}");
        let mut m: HashMap<u32, u32> = (0..4).map(|i| (i, i)).collect();
        insert(&mut m, 4, 10, 10, |_, _| true);
        assert_eq!(m.len(), 1, "nothing stale: starts over");
        let mut m: HashMap<u32, u32> = HashMap::new();
        insert(&mut m, 4, 1, 1, |_, _| false);
        assert_eq!(m.len(), 1, "below the bound nothing is dropped");
    }
}
