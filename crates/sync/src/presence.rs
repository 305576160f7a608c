//! Ephemeral presence: who is online and where their cursor is, kept in
//! memory with an expiry and never stored, so a vanished client's presence
//! disappears on its own.

use std::collections::BTreeMap;

use converge_crdt::ReplicaId;

/// The latest presence of each replica in each object, until it expires.
///
/// Feed it [`crate::Event::Presence`] events; relay them to the object's
/// other subscribers with [`crate::Session::send_presence`]; call
/// [`PresenceTable::expire`] from the timer loop.
#[derive(Debug, Clone, Default)]
pub struct PresenceTable {
    entries: BTreeMap<(String, ReplicaId), (Vec<u8>, u64)>,
    max_entries: usize,
}

impl PresenceTable {
    /// An empty table holding at most `max_entries` (object, replica) pairs.
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            max_entries,
        }
    }

    /// Records `from`'s presence in `object` until `expires_at`, replacing
    /// its previous one. `false` if the table is full (the update is dropped:
    /// presence is best effort).
    pub fn update(
        &mut self,
        object: &str,
        from: ReplicaId,
        payload: Vec<u8>,
        expires_at: u64,
    ) -> bool {
        let key = (object.to_owned(), from);
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            return false;
        }
        self.entries.insert(key, (payload, expires_at));
        true
    }

    /// Forgets everything that expired at or before `now`; how many entries went.
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, (_, at)| *at > now);
        before - self.entries.len()
    }

    /// Who is present in `object` at `now`, with their payloads.
    pub fn present(&self, object: &str, now: u64) -> Vec<(ReplicaId, &[u8])> {
        self.entries
            .range((object.to_owned(), ReplicaId::from_u64(0))..)
            .take_while(|((o, _), _)| o == object)
            .filter(|(_, (_, at))| *at > now)
            .map(|((_, r), (p, _))| (*r, p.as_slice()))
            .collect()
    }

    /// The earliest expiry, to arm a timer.
    pub fn next_expiry(&self) -> Option<u64> {
        self.entries.values().map(|(_, at)| *at).min()
    }

    /// Number of live entries (expired ones count until [`PresenceTable::expire`]).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_expires_and_is_bounded() {
        let (a, b) = (ReplicaId::from_u64(1), ReplicaId::from_u64(2));
        let mut t = PresenceTable::new(2);
        assert!(t.update("doc", a, b"line 3".to_vec(), 100));
        assert!(t.update("doc", b, b"line 9".to_vec(), 50));
        assert!(!t.update("other", a, vec![], 100), "full");
        assert_eq!(t.present("doc", 10).len(), 2);
        assert_eq!(t.next_expiry(), Some(50));
        assert_eq!(t.expire(50), 1);
        assert_eq!(t.present("doc", 60), vec![(a, &b"line 3"[..])]);
        assert!(
            t.update("doc", a, b"line 4".to_vec(), 200),
            "renewal replaces"
        );
        assert_eq!(t.expire(150), 0);
        assert_eq!(t.len(), 1);
    }
}
