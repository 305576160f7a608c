//! Merging operations into a text: runs made on the current version apply
//! directly, a run at a time; concurrent ones go through the Eg-walker
//! replay in [`crate::seq`].

use std::ops::Range;

use jumprope::JumpRopeBuf;

use crate::error::DocError;
use crate::graph::{Frontier, Graph, Lv};
use crate::seq::{self, SeqEdit, SeqOp, SeqSource};
use crate::text::oplog::{OpKind, OpLog};

/// An edit to apply to the text, in current positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Edit<'a> {
    /// Insert one character, made by op `.1`.
    InsertChar(usize, Lv, char),
    /// Insert a run of text, made by ops `.1..`.
    InsertStr(usize, Lv, &'a str),
    /// Delete `.1` characters from `.0`.
    Delete(usize, usize),
}

/// Computes the edits that bring a text at version `from` to `from ∪ to`,
/// and the resulting version. `len` is the text's length at `from`.
pub(crate) fn merge<'a>(
    oplog: &'a OpLog,
    from: &[Lv],
    to: &[Lv],
    len: usize,
) -> Result<(Vec<Edit<'a>>, Frontier), DocError> {
    merge_new(oplog, from, to, len, None, &mut None)
}

/// [`merge`], told which ops are new when the caller knows (`known_new`:
/// exactly the ops in `to` but not in `from`, as when every op from some LV
/// on was just received), and keeping the replay state in `cache` between
/// calls so that concurrent changes received one at a time each replay only
/// themselves (see [`seq::ReplayCache`]).
pub(crate) fn merge_new<'a>(
    oplog: &'a OpLog,
    from: &[Lv],
    to: &[Lv],
    len: usize,
    known_new: Option<Range<Lv>>,
    cache: &mut Option<seq::ReplayCache>,
) -> Result<(Vec<Edit<'a>>, Frontier), DocError> {
    let graph = &oplog.graph;
    let new_spans = match known_new {
        Some(span) if span.is_empty() => Vec::new(),
        Some(span) => vec![span],
        None => graph.diff(from, to).1,
    };
    let mut edits = Vec::new();
    let mut frontier: Frontier = from.iter().copied().collect();
    if new_spans.is_empty() {
        return Ok((edits, frontier));
    }
    let fail = |lv: Lv, why: String| DocError::InvalidChange {
        op: oplog.agents.dot(lv),
        why,
    };
    // Fast path: operations made on exactly the current version apply as
    // they are, a whole run at a time.
    let mut len = len;
    let mut rest: Vec<Lv> = Vec::new();
    for span in new_spans.iter().rev() {
        let mut lv = span.start;
        while lv < span.end {
            let parents = graph.parents_of(lv);
            if !rest.is_empty() || parents != frontier {
                rest.extend(lv..span.end);
                break;
            }
            let (run, k) = oplog.run_at(lv);
            let n = (run.lvs.end - lv)
                .min(span.end - lv)
                .min(graph.chain_end(lv) - lv);
            let pos = run.pos_at(k);
            match run.kind {
                OpKind::Insert if pos <= len => {
                    edits.push(Edit::InsertStr(pos, lv, oplog.run_text(run, k, n)));
                    len += n;
                }
                OpKind::Delete if run.fwd && pos + n <= len => {
                    edits.push(Edit::Delete(pos, n));
                    len -= n;
                }
                OpKind::Delete if !run.fwd && pos < len && pos + 1 >= n => {
                    edits.push(Edit::Delete(pos + 1 - n, n));
                    len -= n;
                }
                _ => return Err(fail(lv, format!("position {pos} is past the end ({len})"))),
            }
            Graph::advance_frontier(&mut frontier, &parents, &(lv..lv + n));
            lv += n;
        }
    }
    if rest.is_empty() {
        // The text moved past the cached state's version.
        *cache = None;
        return Ok((edits, frontier));
    }
    // Slow path: replay the conflict zone (or continue the cached replay).
    let replayed = seq::replay_cached(oplog, &frontier, to, Some(&rest), cache)
        .map_err(|(lv, why)| fail(lv, why))?;
    for edit in replayed {
        edits.push(match edit {
            SeqEdit::Insert(pos, lv) => {
                Edit::InsertChar(pos, lv, oplog.op(lv).ch.unwrap_or('\u{fffd}'))
            }
            SeqEdit::Delete(pos) => Edit::Delete(pos, 1),
            // Texts have no move operation, so their replay never emits one.
            SeqEdit::Move { .. } => unreachable!("text replay emitted a move"),
        });
    }
    for lv in rest {
        Graph::advance_frontier(&mut frontier, &graph.parents_of(lv), &(lv..lv + 1));
    }
    Ok((edits, frontier))
}

/// The most ops a checkout can describe: LVs travel through a rope as
/// characters, and there are this many Unicode scalar values.
const MAX_CHECKOUT_OPS: usize = 0x10_FFFF - 0x800;

/// The *checkout* of the log's whole version: which op inserted each
/// character of the text, in document order, as runs of consecutive LVs.
/// Stored in encodings so that loading needs no replay. `None` if the
/// history does not replay or is too long to describe.
pub(crate) fn checkout(oplog: &OpLog) -> Option<Vec<Range<Lv>>> {
    if oplog.len() > MAX_CHECKOUT_OPS {
        return None;
    }
    let (edits, _) = merge(oplog, &[], &oplog.frontier, 0).ok()?;
    // A rope of LVs, each stored as a character: position arithmetic is
    // the rope's, exactly as when the text itself was built.
    let mut rope = JumpRopeBuf::new();
    let mut buf = String::new();
    for edit in edits {
        buf.clear();
        match edit {
            Edit::InsertChar(pos, lv, _) => {
                buf.push(lv_char(lv));
                rope.insert(pos, &buf);
            }
            Edit::InsertStr(pos, lv, s) => {
                buf.extend((lv..lv + s.chars().count()).map(lv_char));
                rope.insert(pos, &buf);
            }
            Edit::Delete(pos, n) => rope.remove(pos..pos + n),
        }
    }
    let mut spans: Vec<Range<Lv>> = Vec::new();
    for ch in rope.to_string().chars() {
        let lv = char_lv(ch);
        match spans.last_mut() {
            Some(span) if span.end == lv => span.end += 1,
            _ => spans.push(lv..lv + 1),
        }
    }
    Some(spans)
}

/// LV `lv` (at most [`MAX_CHECKOUT_OPS`]) as a character, skipping surrogates.
fn lv_char(lv: Lv) -> char {
    let v = if lv < 0xD800 { lv } else { lv + 0x800 };
    // In range: `lv <= MAX_CHECKOUT_OPS` is checked by the caller.
    char::from_u32(v as u32).unwrap_or(char::MAX)
}

fn char_lv(ch: char) -> Lv {
    let v = ch as Lv;
    if v < 0xD800 { v } else { v - 0x800 }
}

impl SeqSource for OpLog {
    fn graph(&self) -> &Graph {
        &self.graph
    }
    fn agents(&self) -> &crate::agents::Agents {
        &self.agents
    }
    fn seq_op(&self, lv: Lv) -> Option<SeqOp> {
        let op = self.op(lv);
        Some(match op.kind {
            OpKind::Insert => SeqOp::Insert(op.pos),
            OpKind::Delete => SeqOp::Delete(op.pos),
        })
    }
}
