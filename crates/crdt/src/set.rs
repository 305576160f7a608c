//! Grow-only and two-phase sets.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{Crdt, Validate};

/// A grow-only set: elements are added, never removed.
///
/// Concurrent semantics: the union of everything any replica added.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Ord + Deserialize<'de>"))]
pub struct GSet<T: Ord> {
    elements: BTreeSet<T>,
}

impl<T: Ord> Default for GSet<T> {
    fn default() -> Self {
        Self {
            elements: BTreeSet::new(),
        }
    }
}

impl<T: Ord + Clone> GSet<T> {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value`; returns the delta (empty if it was already present).
    pub fn insert(&mut self, value: T) -> Self {
        let mut delta = Self::new();
        if self.elements.insert(value.clone()) {
            delta.elements.insert(value);
        }
        delta
    }

    /// Whether `value` is present.
    pub fn contains(&self, value: &T) -> bool {
        self.elements.contains(value)
    }

    /// The elements in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.elements.iter()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }
}

impl<T: Ord + Clone> Crdt for GSet<T> {
    fn merge_owned(&mut self, mut other: Self) {
        if other.elements.len() > self.elements.len() {
            std::mem::swap(&mut self.elements, &mut other.elements);
        }
        self.elements.extend(other.elements);
    }
}

/// The error of [`TwoPSet::remove`] on an element that was never added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot remove an element that this replica has not seen added")]
pub struct NotAdded;

/// A two-phase set: a grow-only set of additions and one of removals
/// (tombstones). An element once removed can never be added again.
///
/// Concurrent semantics: remove wins; the value is additions minus removals.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Ord + Deserialize<'de>"))]
pub struct TwoPSet<T: Ord> {
    added: GSet<T>,
    removed: GSet<T>,
}

impl<T: Ord> Default for TwoPSet<T> {
    fn default() -> Self {
        Self {
            added: GSet::default(),
            removed: GSet::default(),
        }
    }
}

impl<T: Ord + Clone> TwoPSet<T> {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value`; returns the delta. Adding a removed element has no
    /// visible effect (it stays removed).
    pub fn insert(&mut self, value: T) -> Self {
        Self {
            added: self.added.insert(value),
            removed: GSet::new(),
        }
    }

    /// Removes `value` for good; returns the delta. Only elements this
    /// replica has seen added can be removed.
    pub fn remove(&mut self, value: &T) -> Result<Self, NotAdded> {
        if !self.added.contains(value) {
            return Err(NotAdded);
        }
        Ok(Self {
            added: GSet::new(),
            removed: self.removed.insert(value.clone()),
        })
    }

    /// Whether `value` is present (added and not removed).
    pub fn contains(&self, value: &T) -> bool {
        self.added.contains(value) && !self.removed.contains(value)
    }

    /// The present elements in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.added.iter().filter(|v| !self.removed.contains(v))
    }

    /// Number of present elements.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether no element is present.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl<T: Ord + Clone> Crdt for TwoPSet<T> {
    fn merge_owned(&mut self, other: Self) {
        self.added.merge_owned(other.added);
        self.removed.merge_owned(other.removed);
    }
}

impl<T: Ord> Validate for GSet<T> {
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

impl<T: Ord> Validate for TwoPSet<T> {
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_p_set_remove_wins_and_is_final() {
        let mut a = TwoPSet::new();
        let d = a.insert(1);
        let mut b = TwoPSet::new();
        b.merge(&d);
        let rm = b.remove(&1).unwrap();
        let re = a.insert(1); // concurrent re-add: no effect
        a.merge(&rm);
        b.merge(&re);
        assert_eq!(a, b);
        assert!(!a.contains(&1));
        a.insert(1);
        assert!(!a.contains(&1), "removed elements never come back");
        assert_eq!(
            a.remove(&7),
            Err(NotAdded),
            "unseen elements cannot be removed"
        );
    }
}
