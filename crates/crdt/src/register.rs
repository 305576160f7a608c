//! The last-writer-wins register.

use serde::{Deserialize, Serialize};

use crate::{Crdt, HlcTimestamp, Validate};

/// A last-writer-wins register on hybrid logical clock timestamps.
///
/// Concurrent semantics: the write with the greatest timestamp wins and the
/// others are lost; timestamps carry the replica id, so two replicas never
/// tie (should a forged input tie, the greater value wins, so merge stays a join).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LWWRegister<T> {
    entry: Option<(HlcTimestamp, T)>,
}

impl<T> Default for LWWRegister<T> {
    fn default() -> Self {
        Self { entry: None }
    }
}

impl<T: Clone + Ord> LWWRegister<T> {
    /// The empty register.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `value` at time `ts` (from [`Hlc::tick`](crate::Hlc::tick));
    /// returns the delta. A write older than the current value is lost at once.
    pub fn set(&mut self, ts: HlcTimestamp, value: T) -> Self {
        let delta = Self {
            entry: Some((ts, value)),
        };
        self.merge(&delta);
        delta
    }

    /// The current value.
    pub fn get(&self) -> Option<&T> {
        self.entry.as_ref().map(|(_, v)| v)
    }

    /// The timestamp of the current value.
    pub fn timestamp(&self) -> Option<HlcTimestamp> {
        self.entry.as_ref().map(|(ts, _)| *ts)
    }
}

impl<T: Clone + Ord> Crdt for LWWRegister<T> {
    fn merge_owned(&mut self, other: Self) {
        if let Some(theirs) = other.entry {
            match &self.entry {
                Some(ours) if *ours >= theirs => {}
                _ => self.entry = Some(theirs),
            }
        }
    }
}

impl<T> Validate for LWWRegister<T> {
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hlc, ReplicaId};

    #[test]
    fn later_write_wins_even_if_delivered_first() {
        let mut ha = Hlc::new(ReplicaId::from_u64(1));
        let mut hb = Hlc::new(ReplicaId::from_u64(2));
        let mut a = LWWRegister::new();
        let mut b = LWWRegister::new();
        let d1 = a.set(ha.tick(100), "old");
        let d2 = b.set(hb.tick(200), "new");
        a.merge(&d2);
        b.merge(&d1);
        assert_eq!(a, b);
        assert_eq!(a.get(), Some(&"new"));
    }
}
