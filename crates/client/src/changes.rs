//! Building a transaction: a list of path-based changes.

use converge_doc::{PathChange, PathSeg};
use serde_json::Value;

/// The changes of one transaction, as [`DocRef::change`](crate::DocRef::change)
/// collects them. Each method adds one [`PathChange`]; nothing is checked
/// until the whole list is applied, when either every change applies or
/// none is kept.
///
/// Paths are lists of map keys and list indices, most easily written with
/// [`path!`](crate::path).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    list: Vec<PathChange>,
}

impl Changes {
    /// Sets the map key or replaces the list element at `path`. A JSON
    /// object or array becomes a map or list whose parts merge separately;
    /// a string is one value (use [`Changes::splice_text`] for a text that
    /// several replicas edit).
    pub fn set(&mut self, path: impl Into<Vec<PathSeg>>, value: impl Into<Value>) {
        self.push(PathChange::Set {
            path: path.into(),
            value: value.into(),
        })
    }

    /// Deletes the map key or list element at `path`.
    pub fn delete(&mut self, path: impl Into<Vec<PathSeg>>) {
        self.push(PathChange::Delete { path: path.into() })
    }

    /// Inserts `value` at `index` of the list at `list`.
    pub fn insert(&mut self, list: impl Into<Vec<PathSeg>>, index: usize, value: impl Into<Value>) {
        self.push(PathChange::Splice {
            path: list.into(),
            index,
            delete: 0,
            insert: Value::Array(vec![value.into()]),
        })
    }

    /// In the list at `list`, removes `delete` items at `index` and inserts
    /// the items of `insert` (an array) there.
    pub fn splice(
        &mut self,
        list: impl Into<Vec<PathSeg>>,
        index: usize,
        delete: usize,
        insert: Vec<Value>,
    ) {
        self.push(PathChange::Splice {
            path: list.into(),
            index,
            delete,
            insert: Value::Array(insert),
        })
    }

    /// In the text at `text`, removes `delete` characters at character
    /// `index` and inserts `insert` there. A missing map key becomes a new
    /// text, and a string value becomes a text with its content.
    /// Concurrent edits of one text merge character by character.
    pub fn splice_text(
        &mut self,
        text: impl Into<Vec<PathSeg>>,
        index: usize,
        delete: usize,
        insert: &str,
    ) {
        self.push(PathChange::Splice {
            path: text.into(),
            index,
            delete,
            insert: Value::String(insert.to_string()),
        })
    }

    /// In the list at `list`, moves the item at `from` so that it ends at
    /// index `to`. Concurrent moves of one item leave it in one place.
    pub fn move_item(&mut self, list: impl Into<Vec<PathSeg>>, from: usize, to: usize) {
        self.push(PathChange::Move {
            path: list.into(),
            index: from,
            count: 1,
            to,
        })
    }

    /// Adds `by` to the counter at `path` (a missing map key starts at 0).
    pub fn increment(&mut self, path: impl Into<Vec<PathSeg>>, by: i64) {
        self.push(PathChange::Increment {
            path: path.into(),
            by,
        })
    }

    /// Adds a change in its general form.
    pub fn push(&mut self, change: PathChange) {
        self.list.push(change);
    }

    /// The changes so far, in order.
    pub fn as_slice(&self) -> &[PathChange] {
        &self.list
    }
}

/// A path into a document, from map keys (`&str`) and list indices
/// (`usize`): `path!["todos", 0, "title"]` is a `Vec<PathSeg>`.
///
/// ```
/// use converge::{PathSeg, path};
///
/// assert_eq!(
///     path!["todos", 0, "title"],
///     vec![PathSeg::Key("todos".into()), PathSeg::Index(0), PathSeg::Key("title".into())],
/// );
/// let i = 3;
/// assert_eq!(path!["todos", i].len(), 2);
/// ```
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => {
        ::std::vec![$($crate::PathSeg::from($seg)),*]
    };
}
