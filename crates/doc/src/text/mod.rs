//! Collaborative plain text: a log of position-based operations plus the
//! current text, merged with the Eg-walker algorithm.
//!
//! Local edits are appended to the [`OpLog`] and applied to a rope directly,
//! with no CRDT metadata per character: typing costs about what editing a
//! plain rope costs. Remote operations made on the version this text is at
//! also apply directly; only truly concurrent operations go through the
//! Eg-walker replay.

mod encode;
mod merge;
pub mod oplog;

use converge_crdt::{ReplicaId, VersionVector};
use jumprope::JumpRopeBuf;

use crate::doc::PosUnit;
use crate::error::DocError;
pub use crate::error::LoadError;
pub use encode::LoadLimits;
pub use oplog::{Limits, OpKind, OpLog, TextChange};

/// A replica of one collaborative text.
///
/// ```
/// use converge_doc::text::Text;
/// use converge_crdt::ReplicaId;
///
/// let mut a = Text::new(ReplicaId::from_u64(1));
/// a.insert(0, "hello world")?;
/// let mut b = Text::new(ReplicaId::from_u64(2));
/// b.apply_changes(&a.changes_since(b.version())?)?;
/// // Concurrent edits at the same place do not interleave.
/// a.insert(5, ", dear")?;
/// b.insert(5, " there")?;
/// let (from_a, from_b) = (a.changes_since(b.version())?, b.changes_since(a.version())?);
/// a.apply_changes(&from_b)?;
/// b.apply_changes(&from_a)?;
/// assert_eq!(a.to_string(), b.to_string());
/// # Ok::<(), converge_doc::DocError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Text {
    replica: ReplicaId,
    oplog: OpLog,
    /// The text at the log's whole version (between calls, always).
    content: JumpRopeBuf,
    limits: Limits,
    /// The history of a text loaded by [`Text::load`], still encoded; when
    /// set, `oplog` is empty. Decoded on first need (see [`Text::oplog`]).
    lazy: Option<Box<encode::Lazy>>,
    /// The state the last concurrent merge's replay ended with, so that the
    /// next one can continue from it (valid while the text stays at the
    /// version it ends at; checked on use).
    replay: Option<crate::seq::ReplayCache>,
}

impl Text {
    /// An empty text edited by `replica`.
    pub fn new(replica: ReplicaId) -> Self {
        Self {
            replica,
            oplog: OpLog::default(),
            content: JumpRopeBuf::new(),
            limits: Limits::default(),
            lazy: None,
            replay: None,
        }
    }

    /// Replaces the limits applied to imported changes.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The replica that local edits are attributed to.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// Length in characters (Unicode scalar values).
    pub fn len_chars(&self) -> usize {
        self.content.len_chars()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.len_chars() == 0
    }

    /// The UTF-8 byte offset of character position `pos`.
    pub fn chars_to_utf8(&self, pos: usize) -> Result<usize, DocError> {
        self.convert(pos, PosUnit::Chars, PosUnit::Utf8)
    }

    /// The character position of UTF-8 byte offset `byte` (which must fall
    /// on a character boundary).
    pub fn utf8_to_chars(&self, byte: usize) -> Result<usize, DocError> {
        self.convert(byte, PosUnit::Utf8, PosUnit::Chars)
    }

    /// The UTF-16 code-unit offset of character position `pos` (what
    /// browsers and JavaScript count).
    pub fn chars_to_utf16(&self, pos: usize) -> Result<usize, DocError> {
        self.convert(pos, PosUnit::Chars, PosUnit::Utf16)
    }

    /// The character position of UTF-16 offset `units` (which must not fall
    /// inside a surrogate pair).
    pub fn utf16_to_chars(&self, units: usize) -> Result<usize, DocError> {
        self.convert(units, PosUnit::Utf16, PosUnit::Chars)
    }

    /// Walks the text counting in `from` units until `at`, returning the
    /// count in `to` units. Linear in the text's chunks, not its characters.
    fn convert(&self, at: usize, from: PosUnit, to: PosUnit) -> Result<usize, DocError> {
        let rope = self.content.borrow();
        let (mut done_from, mut done_to) = (0usize, 0usize);
        for (chunk, chars) in rope.substrings_with_len() {
            let size = |u: PosUnit| match u {
                PosUnit::Chars => chars,
                PosUnit::Utf8 => chunk.len(),
                PosUnit::Utf16 => chunk.encode_utf16().count(),
            };
            let chunk_from = size(from);
            if done_from + chunk_from < at {
                done_from += chunk_from;
                done_to += size(to);
                continue;
            }
            // The target lies in this chunk: walk its characters.
            for ch in chunk.chars() {
                if done_from == at {
                    return Ok(done_to);
                }
                done_from += from.len_of(ch);
                done_to += to.len_of(ch);
                if done_from > at {
                    return Err(DocError::OutOfBounds {
                        pos: at,
                        len: done_from,
                    });
                }
            }
        }
        if done_from == at {
            Ok(done_to)
        } else {
            Err(DocError::OutOfBounds {
                pos: at,
                len: done_from,
            })
        }
    }

    /// Operations held, per replica (operation counters). Known without
    /// decoding a loaded history.
    pub fn version(&self) -> &VersionVector {
        match &self.lazy {
            Some(lazy) => lazy.version(),
            None => self.oplog.version(),
        }
    }

    /// The log of every operation.
    ///
    /// A loaded text's history is decoded and validated on the first call
    /// (or the first edit, merge or `changes_since` that needs it); a
    /// history that does not decode, which only a hand-made file that
    /// passed the checksum can have, gives its [`LoadError`] here every
    /// time, while the loaded text stays readable.
    pub fn oplog(&self) -> Result<&OpLog, LoadError> {
        match &self.lazy {
            Some(lazy) => lazy.oplog(self.content.len_chars()),
            None => Ok(&self.oplog),
        }
    }

    /// Decodes a loaded history into `self.oplog`, for changing it. On
    /// error nothing changes.
    #[inline]
    fn history_mut(&mut self) -> Result<&mut OpLog, LoadError> {
        if self.lazy.is_some() {
            self.decode_history()?;
        }
        Ok(&mut self.oplog)
    }

    /// Decodes a loaded history into `self.oplog` (the rare half of
    /// [`Self::history_mut`], kept out of the editing path).
    #[cold]
    fn decode_history(&mut self) -> Result<(), LoadError> {
        if let Some(lazy) = self.lazy.take() {
            let chars = self.content.len_chars();
            if let Err(e) = lazy.oplog(chars) {
                self.lazy = Some(lazy);
                return Err(e);
            }
            // Decoded just above: taking it cannot fail.
            self.oplog = lazy.into_oplog(chars)?;
        }
        Ok(())
    }

    /// Drops the cached merge state (a local edit moves the text off the
    /// version it ends at). Checked first: dropping a `None` in place is
    /// not free, and local typing does this on every keystroke.
    #[inline]
    fn forget_replay(&mut self) {
        if self.replay.is_some() {
            self.replay = None;
        }
    }

    /// Inserts `text` at character position `pos`.
    pub fn insert(&mut self, pos: usize, text: &str) -> Result<(), DocError> {
        let len = self.len_chars();
        if pos > len {
            return Err(DocError::OutOfBounds { pos, len });
        }
        let n = text.chars().count();
        if n == 0 {
            return Ok(());
        }
        self.forget_replay();
        let replica = self.replica;
        self.history_mut()?
            .push_local(replica, OpKind::Insert, pos, n, text);
        self.content.insert(pos, text);
        Ok(())
    }

    /// Deletes `len` characters starting at character position `pos`.
    pub fn delete(&mut self, pos: usize, len: usize) -> Result<(), DocError> {
        let total = self.len_chars();
        if pos.checked_add(len).is_none_or(|end| end > total) {
            return Err(DocError::OutOfBounds {
                pos: pos.saturating_add(len),
                len: total,
            });
        }
        if len == 0 {
            return Ok(());
        }
        self.forget_replay();
        let replica = self.replica;
        self.history_mut()?
            .push_local(replica, OpKind::Delete, pos, len, "");
        self.content.remove(pos..pos + len);
        Ok(())
    }

    /// Encodes the text with its whole history (compact, versioned,
    /// checksummed). [`Text::load`] reads it back. A loaded text that has
    /// not changed since returns the bytes it was loaded from, without
    /// decoding its history.
    pub fn encode(&self) -> Vec<u8> {
        match &self.lazy {
            Some(lazy) => lazy.bytes().to_vec(),
            None => encode::encode(&self.oplog, &self.content.borrow().to_string()),
        }
    }

    /// Loads an encoded text, to be edited further by `replica`, with
    /// default limits.
    pub fn load(bytes: &[u8], replica: ReplicaId) -> Result<Self, LoadError> {
        Self::load_with_limits(bytes, replica, &LoadLimits::default())
    }

    /// Loads an encoded text, refusing input beyond `limits`.
    pub fn load_with_limits(
        bytes: &[u8],
        replica: ReplicaId,
        limits: &LoadLimits,
    ) -> Result<Self, LoadError> {
        let mut text = Self::new(replica);
        let (oplog, checkout) = match encode::decode(bytes, limits)? {
            encode::Decoded::Lazy {
                text: content,
                history,
            } => {
                // The stored text; the history waits until needed.
                text.content = JumpRopeBuf::new_from_str(&content);
                text.lazy = Some(history);
                return Ok(text);
            }
            encode::Decoded::Eager { oplog, checkout } => (oplog, checkout),
        };
        if let Some(content) = checkout {
            // The stored text at the whole version: no replay needed.
            text.content = JumpRopeBuf::new_from_str(&content);
        } else if oplog.graph.is_chain() {
            text.content = replay_chain(&oplog)?;
        } else {
            let (edits, _) = merge::merge(&oplog, &[], &oplog.frontier, 0)
                .map_err(|e| LoadError::Malformed(format!("history does not replay: {e}")))?;
            apply_edits(&mut text.content, edits);
        }
        text.oplog = oplog;
        Ok(text)
    }

    /// The changes a replica at `version` lacks, in causal order. A
    /// loaded history is decoded first unless `version` already has it
    /// all; its error is returned as by [`Text::oplog`].
    pub fn changes_since(&self, version: &VersionVector) -> Result<Vec<TextChange>, LoadError> {
        if self.lazy.is_some() && version.dominates(self.version()) {
            return Ok(Vec::new());
        }
        Ok(self.oplog()?.changes_since(version))
    }

    /// Applies changes from another replica (in causal order; ones already
    /// held are skipped). On error nothing changes.
    pub fn apply_changes(&mut self, changes: &[TextChange]) -> Result<(), DocError> {
        let held = |c: &TextChange| {
            (c.id.counter + c.len as u64).saturating_sub(1) <= self.version().get(c.id.replica)
        };
        if self.lazy.is_some()
            && changes
                .iter()
                .all(|c| c.check(&self.limits).is_ok() && held(c))
        {
            // Nothing new: a loaded history stays encoded.
            return Ok(());
        }
        self.history_mut()?;
        let start = self.oplog.len();
        let old_frontier = self.oplog.frontier.clone();
        let mut pushed = Ok(());
        let mut budget = self.limits.max_chain_check;
        for change in changes {
            pushed = self
                .oplog
                .push_remote(change, &self.limits, &mut budget)
                .map(|_| ());
            if pushed.is_err() {
                break;
            }
        }
        let len = self.len_chars();
        // The text is at the log's whole version, so the new ops are
        // exactly the ones just pushed.
        let new = start..self.oplog.len();
        let merged = match pushed {
            Ok(()) => merge::merge_new(
                &self.oplog,
                &old_frontier,
                &self.oplog.frontier,
                len,
                Some(new),
                &mut self.replay,
            )
            .and_then(|(edits, f)| check_edits(len, &edits).map(|()| (edits, f))),
            Err(e) => Err(e),
        };
        let (edits, _) = match merged {
            Ok(m) => m,
            Err(e) => {
                // A cached state may name the ops being forgotten.
                self.replay = None;
                self.oplog.truncate(start, old_frontier);
                return Err(e);
            }
        };
        apply_edits(&mut self.content, edits);
        Ok(())
    }
}

/// The text of a log whose history is one chain (each operation made on
/// the one before), built run by run with no merge bookkeeping: the common
/// case of a text edited by one replica at a time.
fn replay_chain(oplog: &OpLog) -> Result<JumpRopeBuf, LoadError> {
    let mut content = JumpRopeBuf::new();
    let mut len = 0usize;
    for run in &oplog.runs {
        let (pos, n) = (run.pos, run.len());
        match (run.kind, run.fwd) {
            (OpKind::Insert, _) if pos <= len => {
                content.insert(pos, &oplog.text[run.content.clone()]);
                len += n;
            }
            (OpKind::Delete, true) if pos.checked_add(n).is_some_and(|end| end <= len) => {
                content.remove(pos..pos + n);
                len -= n;
            }
            (OpKind::Delete, false) if pos < len && pos + 1 >= n => {
                content.remove(pos + 1 - n..pos + 1);
                len -= n;
            }
            _ => {
                return Err(LoadError::Malformed(format!(
                    "history does not replay: operation {} at position {pos} is past the end ({len})",
                    run.lvs.start
                )));
            }
        }
    }
    Ok(content)
}

/// Checks that `edits` stay within a text of `len` characters. Merges of
/// honest histories always do; a loaded text whose stored checkout
/// disagreed with its history might not, and must get an error, not a
/// panic in the rope.
fn check_edits(mut len: usize, edits: &[merge::Edit<'_>]) -> Result<(), DocError> {
    for edit in edits {
        let (pos, end, grow) = match *edit {
            merge::Edit::InsertChar(pos, _, _) => (pos, pos, 1),
            merge::Edit::InsertStr(pos, _, s) => (pos, pos, s.chars().count()),
            merge::Edit::Delete(pos, n) => (pos, pos.saturating_add(n), 0),
        };
        if end > len {
            return Err(DocError::OutOfBounds { pos: end, len });
        }
        len = len + grow - (end - pos);
    }
    Ok(())
}

/// Applies merge output to the rope. Positions were validated by the merge.
fn apply_edits(content: &mut JumpRopeBuf, edits: Vec<merge::Edit<'_>>) {
    let mut buf = [0u8; 4];
    for edit in edits {
        match edit {
            merge::Edit::InsertChar(pos, _, ch) => content.insert(pos, ch.encode_utf8(&mut buf)),
            merge::Edit::InsertStr(pos, _, s) => content.insert(pos, s),
            merge::Edit::Delete(pos, n) => content.remove(pos..pos + n),
        }
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.content.borrow())
    }
}
