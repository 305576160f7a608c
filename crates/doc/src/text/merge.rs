//! Merging operations into a text: runs made on the current version apply
//! directly, a run at a time; concurrent ones go through the Eg-walker
//! replay in [`crate::seq`].

use std::ops::Range;

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
