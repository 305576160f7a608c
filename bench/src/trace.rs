//! Editing traces (the `josephg/editing-traces` format): loading, and the
//! conversion of code-point positions to UTF-8 byte positions for libraries
//! that index text by bytes.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

/// One patch: delete `del` code points at `pos`, then insert `ins` there.
/// `bpos` / `bdel` are the same range in UTF-8 bytes of the text the patch
/// applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Patch {
    pub(crate) pos: usize,
    pub(crate) del: usize,
    pub(crate) ins: String,
    pub(crate) bpos: usize,
    pub(crate) bdel: usize,
}

/// One transaction: its author, the transactions it follows (indexes of
/// earlier transactions) and its patches, made on the author's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Txn {
    pub(crate) agent: usize,
    pub(crate) parents: Vec<usize>,
    pub(crate) patches: Vec<Patch>,
}

/// A loaded trace.
#[derive(Debug, Clone)]
pub(crate) struct Trace {
    /// The file name without `.json.gz`: the benchmark case name.
    pub(crate) name: String,
    /// The text after every transaction is applied.
    pub(crate) end: String,
    pub(crate) txns: Vec<Txn>,
    /// Whether transactions carry agents and parents (several users).
    pub(crate) concurrent: bool,
    /// Whether every inserted text is ASCII (byte and code-point positions
    /// then coincide).
    pub(crate) ascii: bool,
}

impl Trace {
    /// Number of patches.
    pub(crate) fn patches(&self) -> usize {
        self.txns.iter().map(|t| t.patches.len()).sum()
    }
}

/// The case name of a trace file: its name without `.gz` and `.json`.
pub(crate) fn case_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    name.strip_suffix(".json").unwrap_or(name).to_owned()
}

/// Loads a trace from a gzipped (or plain) JSON file.
pub(crate) fn load(path: &Path) -> Result<Trace, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut json = String::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut json)
            .map_err(|e| format!("{}: gunzip: {e}", path.display()))?;
    } else {
        json = String::from_utf8(bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let value: Value =
        serde_json::from_str(&json).map_err(|e| format!("{}: JSON: {e}", path.display()))?;
    parse(case_name(path), &value).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse(name: String, v: &Value) -> Result<Trace, String> {
    let end = v["endContent"]
        .as_str()
        .ok_or("no endContent string")?
        .to_owned();
    let raw = v["txns"].as_array().ok_or("no txns array")?;
    let concurrent = raw.iter().any(|t| t.get("parents").is_some());
    let mut txns = Vec::with_capacity(raw.len() + 1);
    // A start text becomes a first transaction inserting it.
    let start = v["startContent"].as_str().unwrap_or("");
    if !start.is_empty() {
        if concurrent {
            return Err("startContent in a concurrent trace is not supported".into());
        }
        txns.push(Txn {
            agent: 0,
            parents: Vec::new(),
            patches: vec![patch(0, 0, start)],
        });
    }
    for (i, t) in raw.iter().enumerate() {
        let num = |x: &Value, what: &str| {
            x.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| format!("txn {i}: bad {what}"))
        };
        let (agent, parents) = if concurrent {
            let parents = t["parents"]
                .as_array()
                .ok_or_else(|| format!("txn {i}: no parents"))?
                .iter()
                .map(|p| num(p, "parent"))
                .collect::<Result<Vec<_>, _>>()?;
            if parents.iter().any(|&p| p >= i) {
                return Err(format!("txn {i}: a parent is not an earlier transaction"));
            }
            (num(&t["agent"], "agent")?, parents)
        } else {
            let idx = txns.len();
            (0, idx.checked_sub(1).into_iter().collect())
        };
        let patches = t["patches"]
            .as_array()
            .ok_or_else(|| format!("txn {i}: no patches"))?
            .iter()
            .map(|p| {
                let ins = p[2]
                    .as_str()
                    .ok_or_else(|| format!("txn {i}: bad insert"))?;
                Ok(patch(num(&p[0], "pos")?, num(&p[1], "delCount")?, ins))
            })
            .collect::<Result<Vec<_>, String>>()?;
        txns.push(Txn {
            agent,
            parents,
            patches,
        });
    }
    let ascii = txns
        .iter()
        .all(|t| t.patches.iter().all(|p| p.ins.is_ascii()));
    let mut trace = Trace {
        name,
        end,
        txns,
        concurrent,
        ascii,
    };
    if !ascii && !concurrent {
        fill_byte_positions(&mut trace.txns)?;
    }
    Ok(trace)
}

fn patch(pos: usize, del: usize, ins: &str) -> Patch {
    Patch {
        pos,
        del,
        ins: ins.to_owned(),
        bpos: pos,
        bdel: del,
    }
}

/// Sets the byte positions of a sequential trace's patches by replaying it on
/// a chunked string (untimed preparation).
fn fill_byte_positions(txns: &mut [Txn]) -> Result<(), String> {
    let mut text = Chunked::default();
    for p in txns.iter_mut().flat_map(|t| t.patches.iter_mut()) {
        p.bpos = text.byte_offset(p.pos)?;
        p.bdel = text.byte_offset(p.pos + p.del)? - p.bpos;
        text.splice(p.pos, p.del, &p.ins)?;
    }
    Ok(())
}

/// Sets the byte positions of `patches`, applied in order to `text`.
pub(crate) fn byte_positions(text: &str, patches: &mut [Patch]) -> Result<(), String> {
    let mut s = text.to_owned();
    for p in patches {
        let offset = |s: &str, pos: usize| {
            s.char_indices()
                .map(|(b, _)| b)
                .chain([s.len()])
                .nth(pos)
                .ok_or_else(|| format!("position {pos} out of bounds"))
        };
        p.bpos = offset(&s, p.pos)?;
        p.bdel = offset(&s, p.pos + p.del)? - p.bpos;
        s.replace_range(p.bpos..p.bpos + p.bdel, &p.ins);
    }
    Ok(())
}

/// A string in chunks of a few hundred bytes, each with its code-point count:
/// enough to map code points to bytes in O(chunks + chunk size).
#[derive(Default)]
struct Chunked {
    chunks: Vec<(String, usize)>,
}

const CHUNK: usize = 512;

impl Chunked {
    /// The chunk holding code point `pos` (the last chunk for the end) and
    /// the code points before it.
    fn find(&self, pos: usize) -> Result<(usize, usize), String> {
        let mut before = 0;
        for (i, (_, n)) in self.chunks.iter().enumerate() {
            if pos < before + n || i + 1 == self.chunks.len() && pos == before + n {
                return Ok((i, before));
            }
            before += n;
        }
        if pos == 0 {
            return Ok((0, 0));
        }
        Err(format!("position {pos} out of bounds ({before})"))
    }

    fn byte_offset(&self, pos: usize) -> Result<usize, String> {
        let (i, before) = self.find(pos)?;
        let bytes_before: usize = self.chunks[..i].iter().map(|(s, _)| s.len()).sum();
        Ok(bytes_before
            + self
                .chunks
                .get(i)
                .map_or(0, |(s, _)| char_byte(s, pos - before)))
    }

    fn splice(&mut self, pos: usize, mut del: usize, ins: &str) -> Result<(), String> {
        while del > 0 {
            let (i, before) = self.find(pos)?;
            let (s, n) = self
                .chunks
                .get_mut(i)
                .ok_or_else(|| format!("delete past the end at {pos}"))?;
            let at = pos - before;
            let k = del.min(*n - at);
            if k == 0 {
                return Err(format!("delete past the end at {pos}"));
            }
            let (from, to) = (char_byte(s, at), char_byte(s, at + k));
            s.replace_range(from..to, "");
            *n -= k;
            del -= k;
            if *n == 0 {
                self.chunks.remove(i);
            }
        }
        if ins.is_empty() {
            return Ok(());
        }
        if self.chunks.is_empty() {
            self.chunks.push((String::new(), 0));
        }
        let (i, before) = self.find(pos)?;
        let (s, n) = &mut self.chunks[i];
        s.insert_str(char_byte(s, pos - before), ins);
        *n += ins.chars().count();
        if s.len() > CHUNK {
            let half = *n / 2;
            let tail = s.split_off(char_byte(s, half));
            let tail_n = *n - half;
            *n = half;
            self.chunks.insert(i + 1, (tail, tail_n));
        }
        Ok(())
    }
}

/// Byte offset of code point `k` in `s` (`s.len()` for the end).
fn char_byte(s: &str, k: usize) -> usize {
    s.char_indices().nth(k).map_or(s.len(), |(b, _)| b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_positions_follow_multibyte_text() {
        let mut txns = vec![Txn {
            agent: 0,
            parents: vec![],
            patches: vec![
                patch(0, 0, "héllo"),
                patch(2, 0, "😀"),
                patch(3, 2, ""),
                patch(4, 0, "x"),
            ],
        }];
        fill_byte_positions(&mut txns).unwrap();
        let b: Vec<_> = txns[0].patches.iter().map(|p| (p.bpos, p.bdel)).collect();
        // "héllo" -> "hé😀llo" -> "hé😀o" -> "hé😀ox"
        assert_eq!(b, [(0, 0), (3, 0), (7, 2), (8, 0)]);
        let mut again = txns[0].patches.clone();
        byte_positions("", &mut again).unwrap();
        assert_eq!(again, txns[0].patches);
    }

    #[test]
    fn chunks_split_and_map_positions() {
        let mut c = Chunked::default();
        for i in 0..2000 {
            c.splice(i, 0, if i % 3 == 0 { "é" } else { "a" }).unwrap();
        }
        assert!(c.chunks.len() > 2);
        let s: String = c.chunks.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(c.byte_offset(1500).unwrap(), char_byte(&s, 1500));
        c.splice(10, 1500, "").unwrap();
        let s2: String = c.chunks.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(s2.chars().count(), 500);
        assert_eq!(c.byte_offset(500).unwrap(), s2.len());
    }
}
