//! Joining two sorted maps, the inner loop of most merges.

use std::collections::BTreeMap;

/// What happens to entries present on only one side, and how to combine
/// entries present on both. Each callback returns `None` to drop the entry.
pub(crate) struct JoinOps<L, R, B> {
    /// Whether `left` can change or drop an entry; when it cannot, merging a
    /// small map into a large one touches only the small map's keys.
    pub(crate) left_may_change: bool,
    pub(crate) left: L,
    pub(crate) right: R,
    pub(crate) both: B,
}

/// Joins `b` into `a` key by key.
///
/// Chooses between updating `a` in place (when `b` is small) and a linear
/// merge of both sorted sequences rebuilt into a fresh map (when both are
/// large): the latter is O(|a| + |b|) with a bulk-built tree.
pub(crate) fn join_maps<K, V, L, R, B>(
    a: &mut BTreeMap<K, V>,
    b: BTreeMap<K, V>,
    mut ops: JoinOps<L, R, B>,
) where
    K: Ord,
    L: FnMut(&K, V) -> Option<V>,
    R: FnMut(&K, V) -> Option<V>,
    B: FnMut(&K, V, V) -> Option<V>,
{
    if b.is_empty() && !ops.left_may_change {
        return;
    }
    if b.len().saturating_mul(8) < a.len() {
        if ops.left_may_change {
            let old = std::mem::take(a);
            *a = old
                .into_iter()
                .filter_map(|(k, v)| {
                    if b.contains_key(&k) {
                        Some((k, v))
                    } else {
                        (ops.left)(&k, v).map(|v| (k, v))
                    }
                })
                .collect();
        }
        for (k, vb) in b {
            match a.remove(&k) {
                Some(va) => {
                    if let Some(v) = (ops.both)(&k, va, vb) {
                        a.insert(k, v);
                    }
                }
                None => {
                    if let Some(v) = (ops.right)(&k, vb) {
                        a.insert(k, v);
                    }
                }
            }
        }
        return;
    }
    let old = std::mem::take(a);
    let mut out: Vec<(K, V)> = Vec::with_capacity(old.len().max(b.len()));
    let mut left = old.into_iter().peekable();
    let mut right = b.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (Some((ka, _)), Some((kb, _))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => Some(true),
                std::cmp::Ordering::Greater => Some(false),
                std::cmp::Ordering::Equal => None,
            },
        };
        match take_left {
            Some(true) => {
                if let Some((k, v)) = left.next() {
                    if !ops.left_may_change {
                        out.push((k, v));
                    } else if let Some(v) = (ops.left)(&k, v) {
                        out.push((k, v));
                    }
                }
            }
            Some(false) => {
                if let Some((k, v)) = right.next()
                    && let Some(v) = (ops.right)(&k, v)
                {
                    out.push((k, v));
                }
            }
            None => {
                if let (Some((k, va)), Some((_, vb))) = (left.next(), right.next())
                    && let Some(v) = (ops.both)(&k, va, vb)
                {
                    out.push((k, v));
                }
            }
        }
    }
    // `out` is sorted and unique: collecting into a BTreeMap bulk-builds it.
    *a = out.into_iter().collect();
}
