//! The JSON-like collaborative document: a tree of maps, lists, texts and
//! counters rooted at a map, all sharing one causal graph.
//!
//! Every edit is an operation with an id `(replica, counter)` and a Lamport
//! timestamp; a transaction's operations form one [`Change`]. Semantics:
//!
//! - **map**: a write to a key replaces the writes it had seen; concurrent
//!   writes are all kept, the one with the greatest (Lamport, id) wins and
//!   the others stay readable through [`Doc::conflicts`].
//! - **list** and **text**: the Eg-walker sequence (FugueMax order), so
//!   concurrent insertions at one place never interleave.
//! - **counter**: the sum of every increment.
//!
//! Containers are created by writing a JSON object or array (a map or a
//! list), by [`Tx::create_text`], or by the first increment of a missing key.

use std::collections::{BTreeMap, HashMap};

use converge_crdt::{Dot, ReplicaId, VersionVector};
use serde::{Deserialize, Serialize};
use serde_json::{Map as JsonMap, Value as Json};

use crate::agents::Agents;
use crate::error::{DocError, LoadError};
use crate::framing;
use crate::graph::{Frontier, Graph, Lv};
use crate::seq::{self, SeqEdit, SeqOp, SeqSource};

/// One step of a path: a map key or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PathSeg {
    /// A list index.
    Index(usize),
    /// A map key.
    Key(String),
}

impl From<&str> for PathSeg {
    fn from(k: &str) -> Self {
        Self::Key(k.to_string())
    }
}

impl From<usize> for PathSeg {
    fn from(i: usize) -> Self {
        Self::Index(i)
    }
}

/// The kinds of container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerKind {
    /// Keys to values.
    Map,
    /// An ordered sequence of values.
    List,
    /// A sequence of characters.
    Text,
    /// A number changed by increments.
    Counter,
}

/// A scalar value. Binary formats keep each kind exactly; JSON views show
/// bytes as an array of numbers and non-finite floats as null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Scalar {
    /// Null.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer above `i64::MAX`.
    Uint(u64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

impl Scalar {
    /// The JSON form.
    pub fn to_json(&self) -> Json {
        match self {
            Self::Null => Json::Null,
            Self::Bool(b) => Json::Bool(*b),
            Self::Int(i) => Json::from(*i),
            Self::Uint(u) => Json::from(*u),
            Self::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
            Self::Str(s) => Json::String(s.clone()),
            Self::Bytes(b) => Json::Array(b.iter().map(|x| Json::from(*x)).collect()),
        }
    }

    /// The scalar for a JSON value, or `None` for arrays and objects.
    pub fn from_json(v: &Json) -> Option<Self> {
        Some(match v {
            Json::Null => Self::Null,
            Json::Bool(b) => Self::Bool(*b),
            Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Self::Int(i),
                (None, Some(u), _) => Self::Uint(u),
                (_, _, Some(f)) => Self::Float(f),
                _ => Self::Null,
            },
            Json::String(s) => Self::Str(s.clone()),
            Json::Array(_) | Json::Object(_) => return None,
        })
    }
}

/// What an operation writes: a scalar, a character, or a new container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Content {
    /// A scalar value.
    Scalar(Scalar),
    /// One character of a text.
    Char(char),
    /// A new, empty container (its id is the operation's id).
    Container(ContainerKind),
}

/// The operation itself, addressed to a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OpBody {
    /// Write a key of a map.
    MapSet {
        /// The key.
        key: String,
        /// The value.
        value: Content,
    },
    /// Delete a key of a map.
    MapDelete {
        /// The key.
        key: String,
    },
    /// Insert one element into a list or text at `pos` in the author's version.
    Insert {
        /// Position.
        pos: usize,
        /// The element.
        value: Content,
    },
    /// Delete the element at `pos` in the author's version.
    Delete {
        /// Position.
        pos: usize,
    },
    /// Move the list element at `from` to a new place: a new slot inserted
    /// at `to` (counted with the element still at `from`), both in the
    /// author's version. Concurrent moves of one element leave it in exactly
    /// one place: the move with the greatest (Lamport, id) wins.
    Move {
        /// Where the element is.
        from: usize,
        /// Where its new slot goes.
        to: usize,
    },
    /// Add to a counter.
    Increment {
        /// The amount (negative to subtract).
        by: i64,
    },
}

/// An operation as exchanged: the container it addresses (by the id of the
/// operation that created it; `None` for the root map) and what it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireOp {
    /// The container.
    pub container: Option<Dot>,
    /// The operation.
    pub body: OpBody,
}

/// A transaction's operations by one replica, with consecutive counters
/// starting at `id`, made on the version `parents`: the unit of history
/// replicas exchange and store (one log entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Id of the first operation.
    pub id: Dot,
    /// The version the first operation was made on.
    pub parents: Vec<Dot>,
    /// The operations, in order; each one's parent is the one before.
    pub ops: Vec<WireOp>,
}

/// A unit for positions in text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PosUnit {
    /// Unicode scalar values (what the document counts).
    Chars,
    /// UTF-8 bytes.
    Utf8,
    /// UTF-16 code units (JavaScript, browsers).
    Utf16,
}

impl PosUnit {
    pub(crate) fn len_of(self, ch: char) -> usize {
        match self {
            Self::Chars => 1,
            Self::Utf8 => ch.len_utf8(),
            Self::Utf16 => ch.len_utf16(),
        }
    }
}

/// A change in the path-based change API (the JSON forms of the HTTP API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum PathChange {
    /// Set the value at `path` (a JSON object or array creates a map or list).
    Set {
        /// Where.
        path: Vec<PathSeg>,
        /// The value.
        value: Json,
    },
    /// Delete the map key or list element at `path`.
    Delete {
        /// Where.
        path: Vec<PathSeg>,
    },
    /// In the list or text at `path`, remove `delete` items at `index` and
    /// insert `insert` there (for text, `insert` may be a string).
    Splice {
        /// The list or text.
        path: Vec<PathSeg>,
        /// Where to start.
        index: usize,
        /// How many to remove.
        #[serde(default)]
        delete: usize,
        /// What to insert.
        #[serde(default = "empty_insert")]
        insert: Json,
    },
    /// In the list at `path`, move the `count` items starting at `index` so
    /// that the first of them ends at index `to` of the resulting list.
    Move {
        /// The list.
        path: Vec<PathSeg>,
        /// First item to move.
        index: usize,
        /// How many items.
        #[serde(default = "one")]
        count: usize,
        /// Where the first moved item ends up.
        to: usize,
    },
    /// Add `by` to the counter at `path` (created at 0 if missing).
    Increment {
        /// The counter.
        path: Vec<PathSeg>,
        /// The amount.
        by: i64,
    },
}

fn one() -> usize {
    1
}

fn empty_insert() -> Json {
    Json::Array(Vec::new())
}

/// What changed, where: enough to update a view without re-reading the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Patch {
    /// Path of the container that changed.
    pub path: Vec<PathSeg>,
    /// The change.
    pub action: PatchAction,
}

/// The change a [`Patch`] describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum PatchAction {
    /// A map key now holds `value` (null if it was deleted).
    Put {
        /// The key.
        key: String,
        /// Its value, materialized (`null` when deleted).
        value: Json,
    },
    /// `value` was inserted at `index` of a list or text.
    Insert {
        /// Position.
        index: usize,
        /// The element (a one-character string for text).
        value: Json,
    },
    /// The element at `index` was removed.
    Remove {
        /// Position.
        index: usize,
    },
    /// A counter changed by `by`.
    Increment {
        /// The amount.
        by: i64,
    },
}

type Cid = Option<Lv>;

#[derive(Debug, Clone)]
enum ContainerState {
    /// Per key, the writes not superseded, in LV order.
    Map(BTreeMap<String, Vec<Lv>>),
    /// Element ids (the LVs of their inserts), in order.
    List(Vec<Lv>),
    Text(Vec<char>),
    Counter(i64),
}

#[derive(Debug, Clone)]
struct Op {
    container: Cid,
    body: OpBody,
}

/// Limits on input from outside.
#[derive(Debug, Clone)]
pub struct DocLimits {
    /// Most operations in one change.
    pub max_ops_per_change: usize,
    /// Most parents of a change.
    pub max_parents: usize,
    /// Longest map key, in bytes.
    pub max_key_len: usize,
    /// Deepest nesting of a value written in one change.
    pub max_depth: usize,
    /// Most changes held for missing dependencies.
    pub max_pending_changes: usize,
    /// Most concurrent values one map key may hold. Each write of a key
    /// looks at every value it holds, so a hostile history of many
    /// concurrent writes of one key would make applying it quadratic;
    /// honest ones hold a value per writer racing on that key.
    pub max_key_conflicts: usize,
    /// Most graph runs visited, in total over one `apply_changes` call,
    /// checking that each change extends its replica's chain. Many hostile
    /// replicas taking turns would make that check quadratic in the batch;
    /// such a batch is refused instead. Honest batches visit about their
    /// size times the number of replicas editing at once.
    pub max_chain_check: u64,
}

impl Default for DocLimits {
    fn default() -> Self {
        Self {
            max_ops_per_change: 1 << 20,
            max_parents: 64,
            max_key_len: 4096,
            max_depth: 64,
            max_pending_changes: 10_000,
            max_key_conflicts: 1024,
            max_chain_check: 1 << 25,
        }
    }
}

const CHANGES_MAGIC: [u8; 4] = *b"CVch";
const CHANGES_VERSION: u16 = 1;

/// Encodes a batch of changes (versioned, checksummed) for storage or the wire.
pub fn encode_changes(changes: &[Change]) -> Vec<u8> {
    framing::frame(CHANGES_MAGIC, CHANGES_VERSION, |out| {
        framing::postcard_extend(&changes, out)
    })
}

/// Decodes a batch written by [`encode_changes`], refusing more than
/// `max_bytes`. The changes still have to apply ([`Doc::apply_changes`]
/// validates them against the document).
pub fn decode_changes(bytes: &[u8], max_bytes: usize) -> Result<Vec<Change>, LoadError> {
    let body = framing::unframe(CHANGES_MAGIC, CHANGES_VERSION, bytes, max_bytes)?;
    let (changes, rest) = postcard::take_from_bytes::<Vec<Change>>(body)
        .map_err(|e| LoadError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(LoadError::Malformed(
            "trailing bytes after the changes".into(),
        ));
    }
    Ok(changes)
}

/// A replica of a collaborative JSON document.
///
/// ```
/// use converge_crdt::ReplicaId;
/// use converge_doc::{Doc, PathChange};
/// use serde_json::json;
///
/// let mut a = Doc::new(ReplicaId::from_u64(1));
/// a.apply(&[PathChange::Set { path: vec!["todos".into()], value: json!([{"title": "milk", "done": false}]) }])?;
/// let mut b = Doc::new(ReplicaId::from_u64(2));
/// b.apply_changes(&a.changes_since(b.version()))?;
/// b.apply(&[PathChange::Set { path: vec!["todos".into(), 0.into(), "done".into()], value: json!(true) }])?;
/// a.apply_changes(&b.changes_since(a.version()))?;
/// assert_eq!(a.to_json(), json!({"todos": [{"title": "milk", "done": true}]}));
/// # Ok::<(), converge_doc::DocError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Doc {
    replica: ReplicaId,
    graph: Graph,
    agents: Agents,
    ops: Vec<Op>,
    lamport: Vec<u64>,
    /// The version the state reflects (the whole log, between calls).
    frontier: Frontier,
    containers: HashMap<Cid, ContainerState>,
    limits: DocLimits,
    /// Changes received before their dependencies.
    pending: Vec<Change>,
    /// The element shown in each move's slot (other slots show their own).
    moved: HashMap<Lv, Lv>,
}

impl Doc {
    /// An empty document (an empty root map) edited by `replica`.
    pub fn new(replica: ReplicaId) -> Self {
        let mut containers = HashMap::new();
        containers.insert(None, ContainerState::Map(BTreeMap::new()));
        Self {
            replica,
            graph: Graph::default(),
            agents: Agents::default(),
            ops: Vec::new(),
            lamport: Vec::new(),
            frontier: Frontier::new(),
            containers,
            limits: DocLimits::default(),
            pending: Vec::new(),
            moved: HashMap::new(),
        }
    }

    /// Replaces the limits on input.
    pub fn with_limits(mut self, limits: DocLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The replica local edits are attributed to.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// Operations held, per replica.
    pub fn version(&self) -> &VersionVector {
        self.agents.version()
    }

    /// Number of operations in the history.
    pub fn history_len(&self) -> usize {
        self.ops.len()
    }

    /// Applies path-based changes as one transaction: all of them, or none
    /// (on error nothing changes). Returns the patches, in order.
    pub fn apply(&mut self, changes: &[PathChange]) -> Result<Vec<Patch>, DocError> {
        self.transact(|tx| {
            for c in changes {
                tx.apply(c)?;
            }
            Ok(())
        })
    }

    /// Runs `f` as one transaction: every operation it makes forms one
    /// change. If `f` fails, nothing changes. Returns the patches.
    pub fn transact(
        &mut self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<(), DocError>,
    ) -> Result<Vec<Patch>, DocError> {
        let start = self.ops.len();
        let mut tx = Tx {
            doc: self,
            patches: Vec::new(),
        };
        match f(&mut tx) {
            Ok(()) => Ok(tx.patches),
            Err(e) => {
                self.rollback(start);
                Err(e)
            }
        }
    }

    /// The whole document as JSON.
    pub fn to_json(&self) -> Json {
        self.materialize(None, 0)
    }

    /// The value at `path`, as JSON; `None` if there is nothing there.
    pub fn get(&self, path: &[PathSeg]) -> Option<Json> {
        match self.resolve(path).ok()? {
            Target::Container(c) => Some(self.materialize(c, 0)),
            Target::Value(lv) => Some(self.content_json(lv)),
        }
    }

    /// Converts a position in the text at `path` between units: characters
    /// (what this API counts), UTF-8 bytes, or UTF-16 code units (what
    /// browsers count). Positions inside a character are refused.
    pub fn text_position(
        &self,
        path: &[PathSeg],
        pos: usize,
        from: PosUnit,
        to: PosUnit,
    ) -> Result<usize, DocError> {
        let Target::Container(c) = self.resolve(path)? else {
            return Err(DocError::InvalidPath {
                why: format!("{} is not a text", path_string(path)),
            });
        };
        let Some(ContainerState::Text(chars)) = self.containers.get(&c) else {
            return Err(DocError::InvalidPath {
                why: format!("{} is not a text", path_string(path)),
            });
        };
        let (mut done_from, mut done_to) = (0usize, 0usize);
        for ch in chars {
            if done_from == pos {
                return Ok(done_to);
            }
            done_from += from.len_of(*ch);
            done_to += to.len_of(*ch);
            if done_from > pos {
                break;
            }
        }
        if done_from == pos {
            Ok(done_to)
        } else {
            Err(DocError::OutOfBounds {
                pos,
                len: done_from,
            })
        }
    }

    /// Every concurrent value of the map key at `path` (the winner last),
    /// or `None` if `path` does not name a map key.
    pub fn conflicts(&self, path: &[PathSeg]) -> Option<Vec<Json>> {
        let (last, parent) = path.split_last()?;
        let PathSeg::Key(key) = last else { return None };
        let Ok(Target::Container(c)) = self.resolve(parent) else {
            return None;
        };
        let Some(ContainerState::Map(m)) = self.containers.get(&c) else {
            return None;
        };
        let mut lvs = m.get(key)?.clone();
        lvs.sort_by_key(|lv| self.rank(*lv));
        Some(lvs.into_iter().map(|lv| self.content_json(lv)).collect())
    }

    /// The changes a replica at `version` lacks, in causal order.
    pub fn changes_since(&self, version: &VersionVector) -> Vec<Change> {
        let mut out = Vec::new();
        for span in self.agents.missing_from(version) {
            let mut lv = span.start;
            while lv < span.end {
                let id = self.agents.dot(lv);
                let mut end = lv + 1;
                while end < span.end
                    && self.graph.parents_of(end).as_slice() == [end - 1]
                    && self.agents.dot(end) == Dot::new(id.replica, id.counter + (end - lv) as u64)
                {
                    end += 1;
                }
                out.push(Change {
                    id,
                    parents: self.agents.dots(&self.graph.parents_of(lv)),
                    ops: (lv..end)
                        .map(|l| WireOp {
                            container: self.ops[l].container.map(|c| self.agents.dot(c)),
                            body: self.ops[l].body.clone(),
                        })
                        .collect(),
                });
                lv = end;
            }
        }
        out
    }

    /// Encodes the document with its whole history: the changes in
    /// canonical order, versioned and checksummed. Replicas holding the same
    /// operations produce identical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let order: Vec<Lv> = self
            .graph
            .canonical_order(&self.agents)
            .unwrap_or_else(|| (0..self.ops.len()).collect());
        let mut changes: Vec<Change> = Vec::new();
        let mut prev: Option<Lv> = None;
        for lv in order {
            let id = self.agents.dot(lv);
            let parents = self.graph.parents_of(lv);
            let op = WireOp {
                container: self.ops[lv].container.map(|c| self.agents.dot(c)),
                body: self.ops[lv].body.clone(),
            };
            if let (Some(p), Some(last)) = (prev, changes.last_mut())
                && parents.as_slice() == [p]
                && id == Dot::new(last.id.replica, last.id.counter + last.ops.len() as u64)
            {
                last.ops.push(op);
            } else {
                let mut parents = self.agents.dots(&parents);
                parents.sort_unstable();
                changes.push(Change {
                    id,
                    parents,
                    ops: vec![op],
                });
            }
            prev = Some(lv);
        }
        encode_changes(&changes)
    }

    /// Loads a document written by [`Doc::encode`], to be edited by `replica`.
    pub fn load(bytes: &[u8], replica: ReplicaId) -> Result<Self, LoadError> {
        let changes = decode_changes(bytes, 256 << 20)?;
        let mut doc = Self::new(replica);
        doc.apply_changes(&changes)
            .map_err(|e| LoadError::Malformed(format!("history does not apply: {e}")))?;
        Ok(doc)
    }

    /// Applies changes from other replicas (in causal order; operations
    /// already held are skipped). All or nothing: on error nothing changes.
    /// Returns the patches.
    pub fn apply_changes(&mut self, changes: &[Change]) -> Result<Vec<Patch>, DocError> {
        let start = self.ops.len();
        let mut result = Ok(());
        let mut budget = self.limits.max_chain_check;
        for change in changes {
            result = self.push_remote(change, &mut budget);
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| self.merge_new(start));
        match result {
            Ok(patches) => Ok(patches),
            Err(e) => {
                self.rollback(start);
                Err(e)
            }
        }
    }

    /// Applies the changes whose dependencies are met and holds the rest
    /// until they are (bounded by [`DocLimits::max_pending_changes`]): for
    /// transports that deliver out of causal order. Returns the patches of
    /// what was applied. A change that turns out invalid is dropped and
    /// reported; what was applied before it stays applied.
    pub fn receive_changes(&mut self, changes: Vec<Change>) -> Result<Vec<Patch>, DocError> {
        if self.pending.len() + changes.len() > self.limits.max_pending_changes {
            return Err(DocError::TooManyPending {
                limit: self.limits.max_pending_changes,
            });
        }
        self.pending.extend(changes);
        let mut patches = Vec::new();
        loop {
            let pending = std::mem::take(&mut self.pending);
            let (ready, waiting): (Vec<Change>, Vec<Change>) =
                pending.into_iter().partition(|c| self.deps_met(c));
            self.pending = waiting;
            if ready.is_empty() {
                return Ok(patches);
            }
            for change in ready {
                patches.extend(self.apply_changes(std::slice::from_ref(&change))?);
            }
        }
    }

    /// Number of changes held for missing dependencies.
    pub fn pending_changes(&self) -> usize {
        self.pending.len()
    }

    fn deps_met(&self, c: &Change) -> bool {
        c.id.counter <= self.agents.version().get(c.id.replica) + 1
            && c.parents.iter().all(|p| self.agents.lv(*p).is_some())
    }

    // ---- internals -----------------------------------------------------

    /// Forgets operations from `start` on and rebuilds the state by replaying
    /// the log (only on the error path).
    fn rollback(&mut self, start: Lv) {
        if self.ops.len() == start && self.graph.next_lv() == start {
            return;
        }
        self.graph.truncate(start);
        self.agents.truncate(start);
        self.ops.truncate(start);
        self.lamport.truncate(start);
        self.moved.clear();
        self.containers.clear();
        self.containers
            .insert(None, ContainerState::Map(BTreeMap::new()));
        self.frontier = Frontier::new();
        // The kept prefix was valid when it was applied; replaying it is too.
        if let Err(e) = self.merge_new(0) {
            unreachable!("replaying a valid history failed: {e}");
        }
    }

    /// Adds one change to the log (not yet to the state). The chain check
    /// deducts the graph runs it visits from `budget`.
    fn push_remote(&mut self, change: &Change, budget: &mut u64) -> Result<(), DocError> {
        let bad = |why: String| DocError::InvalidChange { op: change.id, why };
        if change.ops.is_empty() {
            return Err(bad("a change holds no operation".into()));
        }
        if change.ops.len() > self.limits.max_ops_per_change {
            return Err(bad(format!(
                "{} operations exceed the limit of {}",
                change.ops.len(),
                self.limits.max_ops_per_change
            )));
        }
        if change.parents.len() > self.limits.max_parents {
            return Err(bad(format!(
                "{} parents exceed the limit of {}",
                change.parents.len(),
                self.limits.max_parents
            )));
        }
        if change.id.counter == 0
            || change
                .id
                .counter
                .checked_add(change.ops.len() as u64)
                .is_none()
        {
            return Err(bad(
                "operation counters start at 1 and must not overflow".into()
            ));
        }
        let have = self.agents.version().get(change.id.replica);
        let last = change.id.counter + change.ops.len() as u64 - 1;
        if last <= have {
            return Ok(());
        }
        if change.id.counter > have + 1 {
            return Err(DocError::Gap {
                replica: change.id.replica,
                expected: have + 1,
                found: change.id.counter,
            });
        }
        let skip = (have + 1 - change.id.counter) as usize;
        let mut parents = Frontier::new();
        if skip == 0 {
            for p in &change.parents {
                parents.push(self.agents.lv(*p).ok_or(DocError::MissingDependency {
                    op: change.id,
                    dep: *p,
                })?);
            }
            parents.sort_unstable();
            parents.dedup();
        } else {
            let prev = Dot::new(change.id.replica, have);
            parents.push(self.agents.lv(prev).ok_or(DocError::MissingDependency {
                op: change.id,
                dep: prev,
            })?);
        }
        for wop in &change.ops {
            self.check_body(&wop.body).map_err(bad)?;
        }
        let prev = (have > 0)
            .then(|| self.agents.lv(Dot::new(change.id.replica, have)))
            .flatten();
        match self.graph.extends_own_chain_within(&parents, prev, budget) {
            Some(true) => {}
            Some(false) => {
                return Err(bad(
                    "the change has not seen its replica's previous operation".into(),
                ));
            }
            None => {
                return Err(bad(format!(
                    "checking that the changes extend their replicas' chains visits more \
                     than {} graph runs (DocLimits::max_chain_check)",
                    self.limits.max_chain_check
                )));
            }
        }
        for (i, wop) in change.ops.iter().enumerate().skip(skip) {
            let container = match wop.container {
                None => None,
                Some(d) => Some(self.agents.lv(d).ok_or(DocError::MissingDependency {
                    op: change.id,
                    dep: d,
                })?),
            };
            self.check_body(&wop.body).map_err(bad)?;
            let counter = change.id.counter + i as u64;
            let ps = if i == skip {
                parents.clone()
            } else {
                smallvec::smallvec![self.graph.next_lv() - 1]
            };
            self.push_op(
                change.id.replica,
                counter,
                &ps,
                container,
                wop.body.clone(),
                false,
            );
        }
        Ok(())
    }

    fn check_body(&self, body: &OpBody) -> Result<(), String> {
        let key_ok = |k: &String| {
            if k.len() > self.limits.max_key_len {
                Err(format!(
                    "key of {} bytes exceeds the limit of {}",
                    k.len(),
                    self.limits.max_key_len
                ))
            } else {
                Ok(())
            }
        };
        match body {
            OpBody::MapSet { key, .. } | OpBody::MapDelete { key } => key_ok(key),
            OpBody::Insert { .. }
            | OpBody::Delete { .. }
            | OpBody::Move { .. }
            | OpBody::Increment { .. } => Ok(()),
        }
    }

    /// Appends an operation to the log. With `apply` (local edits, made on
    /// the current version) it is applied at once.
    fn push_op(
        &mut self,
        replica: ReplicaId,
        counter: u64,
        parents: &[Lv],
        container: Cid,
        body: OpBody,
        apply: bool,
    ) -> Lv {
        let lv = self.graph.next_lv();
        self.graph.push(parents, lv..lv + 1);
        self.agents.push(lv..lv + 1, replica, counter);
        let lamport = parents.iter().map(|p| self.lamport[*p]).max().unwrap_or(0) + 1;
        self.lamport.push(lamport);
        self.ops.push(Op { container, body });
        if apply {
            Graph::advance_frontier(&mut self.frontier, parents, &(lv..lv + 1));
        }
        lv
    }

    /// Applies every operation from `start` on to the state; on error the
    /// caller rolls back.
    fn merge_new(&mut self, start: Lv) -> Result<Vec<Patch>, DocError> {
        let mut patches = Vec::new();
        let end = self.graph.next_lv();
        let mut rest = Vec::new();
        for lv in start..end {
            let parents = self.graph.parents_of(lv);
            if rest.is_empty() && parents == self.frontier {
                self.apply_direct(lv, &mut patches)?;
                Graph::advance_frontier(&mut self.frontier, &parents, &(lv..lv + 1));
            } else {
                rest.push(lv);
            }
        }
        if rest.is_empty() {
            return Ok(patches);
        }
        // Maps and counters do not depend on order: apply in causal order.
        let mut seq_containers: Vec<Cid> = Vec::new();
        for &lv in &rest {
            match &self.ops[lv].body {
                OpBody::Insert { value, .. } => {
                    let c = self.ops[lv].container;
                    self.check_container(lv, c, &[ContainerKind::List, ContainerKind::Text])?;
                    let is_text = matches!(self.containers.get(&c), Some(ContainerState::Text(_)));
                    if is_text != matches!(value, Content::Char(_)) {
                        return Err(DocError::InvalidChange {
                            op: self.agents.dot(lv),
                            why: "texts hold characters and lists hold values".into(),
                        });
                    }
                    if let Some(kind) = self.created_kind(lv) {
                        self.containers.insert(Some(lv), empty_container(kind));
                    }
                    if !seq_containers.contains(&c) {
                        seq_containers.push(c);
                    }
                }
                OpBody::Delete { .. } | OpBody::Move { .. } => {
                    let c = self.ops[lv].container;
                    let kinds: &[ContainerKind] = match self.ops[lv].body {
                        OpBody::Move { .. } => &[ContainerKind::List],
                        _ => &[ContainerKind::List, ContainerKind::Text],
                    };
                    self.check_container(lv, c, kinds)?;
                    if !seq_containers.contains(&c) {
                        seq_containers.push(c);
                    }
                }
                _ => self.apply_direct(lv, &mut patches)?,
            }
        }
        let advance = |f: &mut Frontier| {
            for &lv in &rest {
                Graph::advance_frontier(f, &self.graph.parents_of(lv), &(lv..lv + 1));
            }
        };
        if seq_containers.is_empty() {
            // Nothing to replay: move the version in place. A copy per call
            // would cost the frontier's width each time, which receiving
            // many concurrent changes one at a time makes quadratic.
            let mut frontier = std::mem::take(&mut self.frontier);
            advance(&mut frontier);
            self.frontier = frontier;
            return Ok(patches);
        }
        let mut target = self.frontier.clone();
        advance(&mut target);
        // Sequences: replay the conflict zone of each one touched.
        for c in seq_containers {
            let view = SeqView {
                doc: self,
                container: c,
            };
            let edits = seq::replay(&view, &self.frontier, &target).map_err(|(lv, why)| {
                DocError::InvalidChange {
                    op: self.agents.dot(lv),
                    why,
                }
            })?;
            for edit in edits {
                self.apply_seq_edit(c, edit, &mut patches);
            }
        }
        self.frontier = target;
        Ok(patches)
    }

    fn created_kind(&self, lv: Lv) -> Option<ContainerKind> {
        match &self.ops[lv].body {
            OpBody::MapSet {
                value: Content::Container(k),
                ..
            }
            | OpBody::Insert {
                value: Content::Container(k),
                ..
            } => Some(*k),
            _ => None,
        }
    }

    fn check_container(&self, lv: Lv, c: Cid, kinds: &[ContainerKind]) -> Result<(), DocError> {
        let Some(kind) = self.containers.get(&c).map(ContainerState::kind) else {
            return Err(DocError::InvalidChange {
                op: self.agents.dot(lv),
                why: "operation addresses an operation that did not create a container".into(),
            });
        };
        if kinds.contains(&kind) {
            Ok(())
        } else {
            Err(DocError::InvalidChange {
                op: self.agents.dot(lv),
                why: format!("operation does not apply to a {kind:?} container"),
            })
        }
    }

    /// Applies op `lv`, whose parents are exactly the current version (or
    /// which is a map or counter op, whose effect does not depend on order).
    fn apply_direct(&mut self, lv: Lv, patches: &mut Vec<Patch>) -> Result<(), DocError> {
        let c = self.ops[lv].container;
        let fail = |doc: &Self, why: String| DocError::InvalidChange {
            op: doc.agents.dot(lv),
            why,
        };
        match self.ops[lv].body.clone() {
            OpBody::MapSet { key, .. } | OpBody::MapDelete { key } => {
                self.check_container(lv, c, &[ContainerKind::Map])?;
                let parents = self.graph.parents_of(lv);
                let is_set = matches!(self.ops[lv].body, OpBody::MapSet { .. });
                let old = self.map_winner(c, &key);
                let live: Vec<Lv> = match self.containers.get(&c) {
                    Some(ContainerState::Map(m)) => m.get(&key).cloned().unwrap_or_default(),
                    _ => Vec::new(),
                };
                let mut kept: Vec<Lv> = live
                    .into_iter()
                    .filter(|v| !self.graph.contains(&parents, *v))
                    .collect();
                if is_set {
                    kept.push(lv);
                }
                if kept.len() > self.limits.max_key_conflicts {
                    return Err(fail(
                        self,
                        format!(
                            "map key {key:?} would hold more than {} concurrent values \
                             (DocLimits::max_key_conflicts)",
                            self.limits.max_key_conflicts
                        ),
                    ));
                }
                if let Some(ContainerState::Map(m)) = self.containers.get_mut(&c) {
                    if kept.is_empty() {
                        m.remove(&key);
                    } else {
                        m.insert(key.clone(), kept);
                    }
                }
                if let Some(kind) = self.created_kind(lv) {
                    self.containers.insert(Some(lv), empty_container(kind));
                }
                let new = self.map_winner(c, &key);
                if new != old {
                    let value = new.map_or(Json::Null, |w| self.content_json(w));
                    self.push_patch(patches, c, PatchAction::Put { key, value });
                }
            }
            OpBody::Increment { by } => {
                self.check_container(lv, c, &[ContainerKind::Counter])?;
                if let Some(ContainerState::Counter(n)) = self.containers.get_mut(&c) {
                    *n = n.saturating_add(by);
                }
                self.push_patch(patches, c, PatchAction::Increment { by });
            }
            OpBody::Insert { pos, value } => {
                self.check_container(lv, c, &[ContainerKind::List, ContainerKind::Text])?;
                let len = self.seq_len(c);
                if pos > len {
                    return Err(fail(
                        self,
                        format!("insert at {pos} is past the end ({len})"),
                    ));
                }
                let is_text = matches!(self.containers.get(&c), Some(ContainerState::Text(_)));
                if is_text != matches!(value, Content::Char(_)) {
                    return Err(fail(
                        self,
                        "texts hold characters and lists hold values".into(),
                    ));
                }
                if let Some(kind) = self.created_kind(lv) {
                    self.containers.insert(Some(lv), empty_container(kind));
                }
                self.apply_seq_edit(c, SeqEdit::Insert(pos, lv), patches);
            }
            OpBody::Delete { pos } => {
                self.check_container(lv, c, &[ContainerKind::List, ContainerKind::Text])?;
                let len = self.seq_len(c);
                if pos >= len {
                    return Err(fail(
                        self,
                        format!("delete at {pos} is past the end ({len})"),
                    ));
                }
                self.apply_seq_edit(c, SeqEdit::Delete(pos), patches);
            }
            OpBody::Move { from, to } => {
                self.check_container(lv, c, &[ContainerKind::List])?;
                let len = self.seq_len(c);
                if from >= len || to > len {
                    return Err(fail(
                        self,
                        format!("move from {from} to {to} is out of bounds ({len})"),
                    ));
                }
                // The new slot goes in with the element still in place; the
                // element then leaves its old slot.
                let to = if to > from { to - 1 } else { to };
                self.apply_seq_edit(c, SeqEdit::Move { from, to, lv }, patches);
            }
        }
        Ok(())
    }

    fn apply_seq_edit(&mut self, c: Cid, edit: SeqEdit, patches: &mut Vec<Patch>) {
        let action = match (self.containers.get_mut(&c), edit) {
            (Some(ContainerState::List(items)), SeqEdit::Insert(pos, lv)) => {
                items.insert(pos, lv);
                PatchAction::Insert {
                    index: pos,
                    value: Json::Null,
                }
            }
            (Some(ContainerState::Text(chars)), SeqEdit::Insert(pos, lv)) => {
                let ch = match &self.ops[lv].body {
                    OpBody::Insert {
                        value: Content::Char(ch),
                        ..
                    } => *ch,
                    _ => '\u{fffd}',
                };
                chars.insert(pos, ch);
                PatchAction::Insert {
                    index: pos,
                    value: Json::String(ch.to_string()),
                }
            }
            (Some(ContainerState::List(items)), SeqEdit::Delete(pos)) => {
                items.remove(pos);
                PatchAction::Remove { index: pos }
            }
            (Some(ContainerState::Text(chars)), SeqEdit::Delete(pos)) => {
                chars.remove(pos);
                PatchAction::Remove { index: pos }
            }
            (Some(ContainerState::List(items)), SeqEdit::Move { from, to, lv }) => {
                let slot = items.remove(from);
                items.insert(to, lv);
                let elem = self.moved.get(&slot).copied().unwrap_or(slot);
                self.moved.insert(lv, elem);
                self.push_patch(patches, c, PatchAction::Remove { index: from });
                PatchAction::Insert {
                    index: to,
                    value: Json::Null,
                }
            }
            _ => return,
        };
        let action = match (action, edit) {
            (
                PatchAction::Insert {
                    index,
                    value: Json::Null,
                },
                SeqEdit::Insert(_, lv) | SeqEdit::Move { lv, .. },
            ) => PatchAction::Insert {
                index,
                value: self.content_json(self.element(lv)),
            },
            (a, _) => a,
        };
        self.push_patch(patches, c, action);
    }

    fn push_patch(&self, patches: &mut Vec<Patch>, c: Cid, action: PatchAction) {
        // A container no longer reachable from the root changes silently.
        if let Some(path) = self.path_of(c) {
            patches.push(Patch { path, action });
        }
    }

    /// The element shown in list slot `slot` (a move's slot shows the
    /// element it moved).
    fn element(&self, slot: Lv) -> Lv {
        self.moved.get(&slot).copied().unwrap_or(slot)
    }

    fn seq_len(&self, c: Cid) -> usize {
        match self.containers.get(&c) {
            Some(ContainerState::List(v)) => v.len(),
            Some(ContainerState::Text(v)) => v.len(),
            _ => 0,
        }
    }

    /// Sort key of a map write: greatest wins.
    fn rank(&self, lv: Lv) -> (u64, Dot) {
        (self.lamport[lv], self.agents.dot(lv))
    }

    fn map_winner(&self, c: Cid, key: &str) -> Option<Lv> {
        match self.containers.get(&c) {
            Some(ContainerState::Map(m)) => {
                m.get(key)?.iter().copied().max_by_key(|lv| self.rank(*lv))
            }
            _ => None,
        }
    }

    /// The JSON of what op `lv` wrote.
    fn content_json(&self, lv: Lv) -> Json {
        match &self.ops[lv].body {
            OpBody::MapSet { value, .. } | OpBody::Insert { value, .. } => match value {
                Content::Scalar(v) => v.to_json(),
                Content::Char(c) => Json::String(c.to_string()),
                Content::Container(_) => self.materialize(Some(lv), 0),
            },
            _ => Json::Null,
        }
    }

    fn materialize(&self, c: Cid, depth: usize) -> Json {
        if depth > 512 {
            return Json::Null;
        }
        match self.containers.get(&c) {
            Some(ContainerState::Map(m)) => {
                let mut out = JsonMap::new();
                for key in m.keys() {
                    if let Some(w) = self.map_winner(c, key) {
                        out.insert(key.clone(), self.content_json_depth(w, depth + 1));
                    }
                }
                Json::Object(out)
            }
            Some(ContainerState::List(items)) => Json::Array(
                items
                    .iter()
                    .map(|lv| self.content_json_depth(self.element(*lv), depth + 1))
                    .collect(),
            ),
            Some(ContainerState::Text(chars)) => Json::String(chars.iter().collect()),
            Some(ContainerState::Counter(n)) => Json::from(*n),
            None => Json::Null,
        }
    }

    fn content_json_depth(&self, lv: Lv, depth: usize) -> Json {
        match &self.ops[lv].body {
            OpBody::MapSet {
                value: Content::Container(_),
                ..
            }
            | OpBody::Insert {
                value: Content::Container(_),
                ..
            } => self.materialize(Some(lv), depth),
            _ => self.content_json(lv),
        }
    }

    /// The current path of container `c`, if reachable from the root.
    fn path_of(&self, c: Cid) -> Option<Vec<PathSeg>> {
        let mut path = Vec::new();
        let mut cur = c;
        while let Some(lv) = cur {
            let op = &self.ops[lv];
            let parent = op.container;
            match &op.body {
                OpBody::MapSet { key, .. } => {
                    if self.map_winner(parent, key) != Some(lv) {
                        return None;
                    }
                    path.push(PathSeg::Key(key.clone()));
                }
                OpBody::Insert { .. } => {
                    let Some(ContainerState::List(items)) = self.containers.get(&parent) else {
                        return None;
                    };
                    path.push(PathSeg::Index(
                        items.iter().position(|x| self.element(*x) == lv)?,
                    ));
                }
                _ => return None,
            }
            cur = parent;
        }
        path.reverse();
        Some(path)
    }

    fn resolve(&self, path: &[PathSeg]) -> Result<Target, DocError> {
        let mut target = Target::Container(None);
        for (i, seg) in path.iter().enumerate() {
            let not_found = || DocError::PathNotFound {
                path: path_string(&path[..=i]),
            };
            let Target::Container(c) = target else {
                return Err(not_found());
            };
            let lv = match (self.containers.get(&c), seg) {
                (Some(ContainerState::Map(_)), PathSeg::Key(k)) => {
                    self.map_winner(c, k).ok_or_else(not_found)?
                }
                (Some(ContainerState::List(items)), PathSeg::Index(i)) => {
                    self.element(*items.get(*i).ok_or_else(not_found)?)
                }
                _ => return Err(not_found()),
            };
            target = if self.created_kind(lv).is_some() {
                Target::Container(Some(lv))
            } else {
                Target::Value(lv)
            };
        }
        Ok(target)
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Container(Cid),
    /// A scalar written by this op.
    Value(Lv),
}

impl ContainerState {
    fn kind(&self) -> ContainerKind {
        match self {
            Self::Map(_) => ContainerKind::Map,
            Self::List(_) => ContainerKind::List,
            Self::Text(_) => ContainerKind::Text,
            Self::Counter(_) => ContainerKind::Counter,
        }
    }
}

fn empty_container(kind: ContainerKind) -> ContainerState {
    match kind {
        ContainerKind::Map => ContainerState::Map(BTreeMap::new()),
        ContainerKind::List => ContainerState::List(Vec::new()),
        ContainerKind::Text => ContainerState::Text(Vec::new()),
        ContainerKind::Counter => ContainerState::Counter(0),
    }
}

fn path_string(path: &[PathSeg]) -> String {
    let parts: Vec<String> = path
        .iter()
        .map(|s| match s {
            PathSeg::Key(k) => format!("{k:?}"),
            PathSeg::Index(i) => i.to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// One container's operations, as the sequence replay sees them.
struct SeqView<'a> {
    doc: &'a Doc,
    container: Cid,
}

impl SeqSource for SeqView<'_> {
    fn graph(&self) -> &Graph {
        &self.doc.graph
    }
    fn agents(&self) -> &Agents {
        &self.doc.agents
    }
    fn seq_op(&self, lv: Lv) -> Option<SeqOp> {
        let op = self.doc.ops.get(lv)?;
        if op.container != self.container {
            return None;
        }
        match op.body {
            OpBody::Insert { pos, .. } => Some(SeqOp::Insert(pos)),
            OpBody::Delete { pos } => Some(SeqOp::Delete(pos)),
            OpBody::Move { from, to } => Some(SeqOp::Move { from, to }),
            _ => None,
        }
    }
    fn lamport(&self, lv: Lv) -> u64 {
        self.doc.lamport.get(lv).copied().unwrap_or(0)
    }
}

/// A transaction in progress: local edits, applied as they are made.
#[derive(Debug)]
pub struct Tx<'a> {
    doc: &'a mut Doc,
    patches: Vec<Patch>,
}

impl Tx<'_> {
    /// Applies one path-based change.
    pub fn apply(&mut self, change: &PathChange) -> Result<(), DocError> {
        match change {
            PathChange::Set { path, value } => self.set(path, value),
            PathChange::Delete { path } => self.delete(path),
            PathChange::Splice {
                path,
                index,
                delete,
                insert,
            } => self.splice(path, *index, *delete, insert),
            PathChange::Move {
                path,
                index,
                count,
                to,
            } => self.move_items(path, *index, *count, *to),
            PathChange::Increment { path, by } => self.increment(path, *by),
        }
    }

    /// Sets the value at `path`: a map key (created if missing) or an
    /// existing list element (replaced). Objects and arrays become maps and lists.
    pub fn set(&mut self, path: &[PathSeg], value: &Json) -> Result<(), DocError> {
        let (last, parent) = path.split_last().ok_or_else(|| DocError::InvalidPath {
            why: "cannot replace the root: set its keys".into(),
        })?;
        let c = self.container_at(parent)?;
        match (self.kind_of(c), last) {
            (ContainerKind::Map, PathSeg::Key(k)) => {
                self.write_value(c, Slot::Key(k.clone()), value, 0)
            }
            (ContainerKind::List, PathSeg::Index(i)) => {
                let len = self.doc.seq_len(c);
                if *i >= len {
                    return Err(DocError::OutOfBounds { pos: *i, len });
                }
                self.op(c, OpBody::Delete { pos: *i })?;
                self.write_value(c, Slot::Index(*i), value, 0)
            }
            (kind, _) => Err(DocError::InvalidPath {
                why: format!(
                    "{} is a {kind:?}: cannot set {last:?} in it",
                    path_string(parent)
                ),
            }),
        }
    }

    /// Deletes the map key or list element at `path`.
    pub fn delete(&mut self, path: &[PathSeg]) -> Result<(), DocError> {
        let (last, parent) = path.split_last().ok_or_else(|| DocError::InvalidPath {
            why: "cannot delete the root".into(),
        })?;
        let c = self.container_at(parent)?;
        match (self.kind_of(c), last) {
            (ContainerKind::Map, PathSeg::Key(k)) => {
                if self.doc.map_winner(c, k).is_none() {
                    return Err(DocError::PathNotFound {
                        path: path_string(path),
                    });
                }
                self.op(c, OpBody::MapDelete { key: k.clone() })
            }
            (ContainerKind::List | ContainerKind::Text, PathSeg::Index(i)) => {
                self.splice_raw(c, *i, 1, &[])
            }
            (kind, _) => Err(DocError::InvalidPath {
                why: format!(
                    "{} is a {kind:?}: cannot delete {last:?} from it",
                    path_string(parent)
                ),
            }),
        }
    }

    /// In the list or text at `path`, removes `delete` items at `index` and
    /// inserts `insert` (an array of values, or a string for text). Splicing
    /// a string into a missing key or a string value makes it a text.
    pub fn splice(
        &mut self,
        path: &[PathSeg],
        index: usize,
        delete: usize,
        insert: &Json,
    ) -> Result<(), DocError> {
        let c = match self.doc.resolve(path) {
            Ok(Target::Container(c)) => c,
            Ok(Target::Value(lv)) if insert.is_string() => {
                // A plain string value becomes a text with the same content.
                let Json::String(s) = self.doc.content_json(lv) else {
                    return Err(DocError::InvalidPath {
                        why: format!("{} is not a list or text", path_string(path)),
                    });
                };
                self.create_text(path)?;
                let c = self.container_at(path)?;
                let items: Vec<Json> = s.chars().map(|ch| Json::String(ch.to_string())).collect();
                self.splice_raw(c, 0, 0, &items)?;
                c
            }
            Err(_) if insert.is_string() && !path.is_empty() => {
                self.create_text(path)?;
                self.container_at(path)?
            }
            _ => {
                return Err(DocError::InvalidPath {
                    why: format!("{} is not a list or text", path_string(path)),
                });
            }
        };
        let items: Vec<Json> = match insert {
            Json::String(s) => s.chars().map(|ch| Json::String(ch.to_string())).collect(),
            Json::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        self.splice_raw(c, index, delete, &items)
    }

    /// In the list at `path`, moves the `count` items starting at `index` so
    /// that the first of them ends up at index `to` of the result.
    pub fn move_items(
        &mut self,
        path: &[PathSeg],
        index: usize,
        count: usize,
        to: usize,
    ) -> Result<(), DocError> {
        let c = self.container_at(path)?;
        if self.kind_of(c) != ContainerKind::List {
            return Err(DocError::InvalidPath {
                why: format!("{} is not a list: only list items move", path_string(path)),
            });
        }
        let len = self.doc.seq_len(c);
        let bad = index.checked_add(count).is_none_or(|e| e > len)
            || to.checked_add(count).is_none_or(|e| e > len);
        if bad {
            return Err(DocError::OutOfBounds {
                pos: index.max(to).saturating_add(count),
                len,
            });
        }
        // One move per item; moving forward, the last item first, so the
        // ones still to move keep their positions.
        let order: Vec<usize> = if to > index {
            (0..count).rev().collect()
        } else {
            (0..count).collect()
        };
        for k in order {
            let (from, dest) = (index + k, to + k);
            if from == dest {
                continue;
            }
            // `to` counts with the item still at `from`.
            let slot = if dest > from { dest + 1 } else { dest };
            self.op(c, OpBody::Move { from, to: slot })?;
        }
        Ok(())
    }

    /// Adds `by` to the counter at `path`, creating it at 0 under a missing map key.
    pub fn increment(&mut self, path: &[PathSeg], by: i64) -> Result<(), DocError> {
        let c = match self.doc.resolve(path) {
            Ok(Target::Container(c)) if self.kind_of(c) == ContainerKind::Counter => c,
            Err(_) if matches!(path.last(), Some(PathSeg::Key(_))) => {
                let (last, parent) = path.split_last().ok_or_else(|| DocError::InvalidPath {
                    why: "no path".into(),
                })?;
                let p = self.container_at(parent)?;
                let PathSeg::Key(k) = last else {
                    unreachable!("matched a key above")
                };
                if self.kind_of(p) != ContainerKind::Map {
                    return Err(DocError::InvalidPath {
                        why: format!("{} is not a map", path_string(parent)),
                    });
                }
                self.op(
                    p,
                    OpBody::MapSet {
                        key: k.clone(),
                        value: Content::Container(ContainerKind::Counter),
                    },
                )?;
                self.container_at(path)?
            }
            _ => {
                return Err(DocError::InvalidPath {
                    why: format!("{} is not a counter", path_string(path)),
                });
            }
        };
        self.op(c, OpBody::Increment { by })
    }

    /// Creates an empty text under the map key at `path` (replacing what was there).
    pub fn create_text(&mut self, path: &[PathSeg]) -> Result<(), DocError> {
        let (last, parent) = path.split_last().ok_or_else(|| DocError::InvalidPath {
            why: "cannot replace the root".into(),
        })?;
        let c = self.container_at(parent)?;
        match (self.kind_of(c), last) {
            (ContainerKind::Map, PathSeg::Key(k)) => self.op(
                c,
                OpBody::MapSet {
                    key: k.clone(),
                    value: Content::Container(ContainerKind::Text),
                },
            ),
            (ContainerKind::List, PathSeg::Index(i)) => {
                let len = self.doc.seq_len(c);
                if *i >= len {
                    return Err(DocError::OutOfBounds { pos: *i, len });
                }
                self.op(c, OpBody::Delete { pos: *i })?;
                self.op(
                    c,
                    OpBody::Insert {
                        pos: *i,
                        value: Content::Container(ContainerKind::Text),
                    },
                )
            }
            (kind, _) => Err(DocError::InvalidPath {
                why: format!("{} is a {kind:?}", path_string(parent)),
            }),
        }
    }

    fn splice_raw(
        &mut self,
        c: Cid,
        index: usize,
        delete: usize,
        items: &[Json],
    ) -> Result<(), DocError> {
        let len = self.doc.seq_len(c);
        if index.checked_add(delete).is_none_or(|e| e > len) {
            return Err(DocError::OutOfBounds {
                pos: index.saturating_add(delete),
                len,
            });
        }
        for _ in 0..delete {
            self.op(c, OpBody::Delete { pos: index })?;
        }
        let is_text = self.kind_of(c) == ContainerKind::Text;
        for (k, item) in items.iter().enumerate() {
            if is_text {
                let ch = match item.as_str().map(|s| (s.chars().next(), s.chars().count())) {
                    Some((Some(ch), 1)) => ch,
                    _ => {
                        return Err(DocError::InvalidPath {
                            why: "a text takes a string or single characters".into(),
                        });
                    }
                };
                self.op(
                    c,
                    OpBody::Insert {
                        pos: index + k,
                        value: Content::Char(ch),
                    },
                )?;
            } else {
                self.write_value(c, Slot::Index(index + k), item, 0)?;
            }
        }
        Ok(())
    }

    fn write_value(
        &mut self,
        c: Cid,
        slot: Slot,
        value: &Json,
        depth: usize,
    ) -> Result<(), DocError> {
        if depth > self.doc.limits.max_depth {
            return Err(DocError::InvalidPath {
                why: format!(
                    "value nests deeper than {} levels",
                    self.doc.limits.max_depth
                ),
            });
        }
        let content = match value {
            Json::Object(_) => Content::Container(ContainerKind::Map),
            Json::Array(_) => Content::Container(ContainerKind::List),
            v => Content::Scalar(Scalar::from_json(v).unwrap_or(Scalar::Null)),
        };
        let body = match slot {
            Slot::Key(key) => {
                if key.len() > self.doc.limits.max_key_len {
                    return Err(DocError::InvalidPath {
                        why: format!(
                            "key of {} bytes exceeds the limit of {}",
                            key.len(),
                            self.doc.limits.max_key_len
                        ),
                    });
                }
                OpBody::MapSet {
                    key,
                    value: content,
                }
            }
            Slot::Index(pos) => OpBody::Insert {
                pos,
                value: content,
            },
        };
        let lv = self.doc.graph.next_lv();
        self.op(c, body)?;
        match value {
            Json::Object(fields) => {
                for (k, v) in fields {
                    self.write_value(Some(lv), Slot::Key(k.clone()), v, depth + 1)?;
                }
            }
            Json::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.write_value(Some(lv), Slot::Index(i), v, depth + 1)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn op(&mut self, c: Cid, body: OpBody) -> Result<(), DocError> {
        let doc = &mut *self.doc;
        let counter = doc.agents.version().get(doc.replica) + 1;
        let parents = doc.frontier.clone();
        let lv = doc.push_op(doc.replica, counter, &parents, c, body, false);
        // Local ops are made on the current version: the direct path applies.
        doc.apply_direct(lv, &mut self.patches)?;
        Graph::advance_frontier(&mut doc.frontier, &parents, &(lv..lv + 1));
        Ok(())
    }

    fn container_at(&self, path: &[PathSeg]) -> Result<Cid, DocError> {
        match self.doc.resolve(path)? {
            Target::Container(c) => Ok(c),
            Target::Value(_) => Err(DocError::InvalidPath {
                why: format!("{} is a value, not a container", path_string(path)),
            }),
        }
    }

    fn kind_of(&self, c: Cid) -> ContainerKind {
        self.doc
            .containers
            .get(&c)
            .map_or(ContainerKind::Map, ContainerState::kind)
    }
}

enum Slot {
    Key(String),
    Index(usize),
}
