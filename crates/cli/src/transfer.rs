//! `converge export` and `converge import`: documents with their whole
//! history, moved between nodes (or kept as a backup) through files.
//!
//! A document travels as converge-doc's canonical encoding, what
//! `GET /v1/docs/{id}/export` gives and `POST /v1/docs/{id}/import` takes
//! (versioned and checksummed on its own). On disk there are two layouts:
//!
//! - **a directory**: one file per document, `<ID>.cvdoc`, holding that
//!   encoding as is. Bytes of the id other than ASCII letters, digits, `-`,
//!   `_` and `.` (and a leading `.`) are written `%XX`.
//! - **an export file** (any other `--out`), version 1, all integers
//!   little-endian:
//!
//! ```text
//! header   "CVEXPORT" (8 bytes), version: u16 = 1
//! record   tag: u8 = 1, id_len: u16, id: UTF-8 (1..=1024 bytes),
//!          len: u64, the document's encoding (len bytes),
//!          crc: u32 (CRC-32 of every byte of the record before it)
//! trailer  tag: u8 = 0, count: u64 (records before it),
//!          crc: u32 (CRC-32 of tag and count)
//! ```
//!
//! Nothing may follow the trailer. A file whose trailer is missing was cut
//! short; `import` checks the whole file before sending anything, so a
//! damaged file imports nothing. Exports are written to `NAME.partial` and
//! renamed when complete.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde_json::json;

use crate::client::{LIST_PAGE, Target, agent, answer, encode_id, list_pages, unreachable};

/// The export file's first bytes.
const MAGIC: &[u8; 8] = b"CVEXPORT";
/// The export file format this build writes and reads.
const VERSION: u16 = 1;
const TAG_RECORD: u8 = 1;
const TAG_END: u8 = 0;
/// Longest document id (the store's limit).
const MAX_ID_BYTES: usize = 1024;
/// Largest document encoding read back (converge-doc's load limit).
const MAX_DOC_BYTES: u64 = 256 << 20;
/// The extension of a document file in a directory export.
const DOC_EXT: &str = "cvdoc";

#[derive(clap::Args, Debug)]
pub(crate) struct ExportArgs {
    /// Documents to export; none means every document on the node.
    ids: Vec<String>,
    /// Where to write: an existing directory (or a path ending in `/`) gets
    /// one `<ID>.cvdoc` file per document; any other path gets one export
    /// file holding them all.
    #[arg(long, short, value_name = "FILE|DIR")]
    out: PathBuf,
    /// Ids asked for per page when listing every document (tests use a
    /// small page to cover paging).
    #[arg(long, default_value_t = LIST_PAGE, hide = true)]
    list_page: usize,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ImportArgs {
    /// An export file, a directory of `<ID>.cvdoc` files, or one `.cvdoc`
    /// file.
    path: PathBuf,
    /// The document id for a single `.cvdoc` file (default: from its name).
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    target: Target,
}

/// `converge export`.
pub(crate) fn export(args: ExportArgs) -> Result<()> {
    let started = Instant::now();
    let explicit = !args.ids.is_empty();
    let ids = if explicit {
        args.ids.clone()
    } else {
        list_all(&args.target, args.list_page.clamp(1, LIST_PAGE))?
    };
    let to_dir = args.out.is_dir() || args.out.as_os_str().to_string_lossy().ends_with('/');
    let mut sink = if to_dir {
        Sink::dir(&args.out)?
    } else {
        Sink::file(&args.out)?
    };
    let progress = Progress::new(ids.len() as u64, "exporting");
    let mut skipped = Vec::new();
    let (mut docs, mut bytes) = (0u64, 0u64);
    let mut write_all = || -> Result<()> {
        for id in &ids {
            let Some(doc) = fetch(&args.target, id, explicit)? else {
                // Deleted since the listing.
                skipped.push(id.clone());
                progress.advance(0);
                continue;
            };
            sink.write(id, &doc)?;
            docs += 1;
            bytes += doc.len() as u64;
            progress.advance(doc.len() as u64);
        }
        Ok(())
    };
    if let Err(e) = write_all() {
        progress.finish();
        sink.abandon();
        return Err(e);
    }
    sink.finish()?;
    progress.finish();
    let elapsed = started.elapsed();
    if args.target.json {
        outln!(
            "{}",
            json!({
                "documents": docs,
                "bytes": bytes,
                "out": args.out.display().to_string(),
                "layout": if to_dir { "directory" } else { "file" },
                "skipped": skipped,
                "seconds": elapsed.as_secs_f64(),
            })
        )?;
    } else {
        outln!(
            "exported {docs} document{} ({}) to {} in {}",
            plural(docs),
            HumanBytes(bytes),
            args.out.display(),
            seconds(elapsed)
        )?;
        if !skipped.is_empty() {
            outln!(
                "skipped {} deleted while exporting: {}",
                skipped.len(),
                skipped.join(", ")
            )?;
        }
    }
    Ok(())
}

/// `converge import`.
pub(crate) fn import(args: ImportArgs) -> Result<()> {
    let started = Instant::now();
    let source = Source::open(&args.path, args.id.as_deref())?;
    let total = source.count();
    let progress = Progress::new(total, "importing");
    let (mut docs, mut changed, mut ops, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut deleted = Vec::new();
    source.for_each(|id, doc| {
        let url = args
            .target
            .at(&format!("/v1/docs/{}/import", encode_id(&id)));
        let what = format!("POST {url} ({id})");
        let resp = agent()
            .post(&url)
            .header("content-type", "application/octet-stream")
            .send(&doc[..])
            .map_err(|e| unreachable(&what, e))?;
        if resp.status().as_u16() == 410 {
            // Deleted on this node: its id takes no more writes, by design.
            deleted.push(id);
            progress.advance(doc.len() as u64);
            return Ok(());
        }
        let answer = answer(resp, &what)?;
        let added = answer["ops_added"].as_u64().unwrap_or(0);
        docs += 1;
        ops += added;
        changed += u64::from(added > 0);
        bytes += doc.len() as u64;
        progress.advance(doc.len() as u64);
        Ok(())
    })?;
    progress.finish();
    let elapsed = started.elapsed();
    if args.target.json {
        outln!(
            "{}",
            json!({
                "documents": docs,
                "changed": changed,
                "unchanged": docs - changed,
                "ops_added": ops,
                "bytes": bytes,
                "skipped_deleted": deleted,
                "seconds": elapsed.as_secs_f64(),
            })
        )?;
    } else {
        outln!(
            "imported {docs} document{} ({}) in {}: {changed} changed ({ops} operation{} added), {} already up to date",
            plural(docs),
            HumanBytes(bytes),
            seconds(elapsed),
            plural(ops),
            docs - changed
        )?;
        if !deleted.is_empty() {
            outln!(
                "skipped {} deleted on this node (a deleted id takes no more writes): {}",
                deleted.len(),
                deleted.join(", ")
            )?;
        }
    }
    Ok(())
}

/// The encoding of document `id`; `None` if it is gone and was not asked
/// for by name (deleted since the listing).
fn fetch(target: &Target, id: &str, explicit: bool) -> Result<Option<Vec<u8>>> {
    let url = target.at(&format!("/v1/docs/{}/export", encode_id(id)));
    let what = format!("GET {url}");
    let mut resp = agent()
        .get(&url)
        .call()
        .map_err(|e| unreachable(&what, e))?;
    let status = resp.status().as_u16();
    if !explicit && (status == 404 || status == 410) {
        return Ok(None);
    }
    if status != 200 {
        answer(resp, &what)?;
        bail!("{what}: status {status}");
    }
    let doc = resp
        .body_mut()
        .with_config()
        .limit(MAX_DOC_BYTES)
        .read_to_vec()
        .with_context(|| format!("{what}: reading the document"))?;
    Ok(Some(doc))
}

/// Every document id on the node, page by page.
fn list_all(target: &Target, page: usize) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    list_pages(target, "", page, None, |page| {
        ids.extend_from_slice(page);
        Ok(())
    })?;
    Ok(ids)
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// A progress bar on stderr (documents, and bytes as its message), shown
/// only when stderr is a terminal.
struct Progress {
    bar: Option<ProgressBar>,
    bytes: std::cell::Cell<u64>,
}

impl Progress {
    fn new(docs: u64, verb: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(docs);
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} documents, {msg} ({elapsed}, {eta} left)",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(verb.to_string());
            bar.set_message(HumanBytes(0).to_string());
            bar
        });
        Self {
            bar,
            bytes: std::cell::Cell::new(0),
        }
    }

    fn advance(&self, bytes: u64) {
        self.bytes.set(self.bytes.get() + bytes);
        if let Some(bar) = &self.bar {
            bar.set_message(HumanBytes(self.bytes.get()).to_string());
            bar.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Where `export` writes.
enum Sink {
    /// One export file, written to `partial` and renamed to `path`.
    File {
        out: BufWriter<File>,
        partial: PathBuf,
        path: PathBuf,
        count: u64,
    },
    /// One `.cvdoc` file per document.
    Dir(PathBuf),
}

impl Sink {
    fn file(path: &Path) -> Result<Self> {
        let partial = partial_path(path);
        let file =
            File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        let mut out = BufWriter::new(file);
        out.write_all(MAGIC)
            .and_then(|()| out.write_all(&VERSION.to_le_bytes()))
            .with_context(|| format!("writing {}", partial.display()))?;
        Ok(Self::File {
            out,
            partial,
            path: path.to_path_buf(),
            count: 0,
        })
    }

    fn dir(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("creating the directory {}", path.display()))?;
        Ok(Self::Dir(path.to_path_buf()))
    }

    fn write(&mut self, id: &str, doc: &[u8]) -> Result<()> {
        match self {
            Self::File {
                out,
                partial,
                count,
                ..
            } => {
                let record = record_bytes(id, doc)?;
                out.write_all(&record)
                    .with_context(|| format!("writing {}", partial.display()))?;
                *count += 1;
            }
            Self::Dir(dir) => {
                let name = format!("{}.{DOC_EXT}", file_stem(id));
                if name.len() > 255 {
                    bail!(
                        "document id {id:?} is too long for a file name: export to a file instead of a directory"
                    );
                }
                let path = dir.join(name);
                let partial = partial_path(&path);
                std::fs::write(&partial, doc)
                    .and_then(|()| std::fs::rename(&partial, &path))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Removes the unfinished export file (a directory keeps the documents
    /// written completely).
    fn abandon(self) {
        if let Self::File { out, partial, .. } = self {
            drop(out);
            let _ = std::fs::remove_file(partial);
        }
    }

    fn finish(self) -> Result<()> {
        let Self::File {
            out,
            partial,
            path,
            count,
        } = self
        else {
            return Ok(());
        };
        let mut trailer = vec![TAG_END];
        trailer.extend_from_slice(&count.to_le_bytes());
        trailer.extend_from_slice(&crc32fast::hash(&trailer).to_le_bytes());
        let mut out = out;
        out.write_all(&trailer)
            .and_then(|()| out.flush())
            .with_context(|| format!("writing {}", partial.display()))?;
        let file = out
            .into_inner()
            .map_err(|e| anyhow!("writing {}: {}", partial.display(), e.error()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", partial.display()))?;
        std::fs::rename(&partial, &path)
            .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

/// One record of the export file.
fn record_bytes(id: &str, doc: &[u8]) -> Result<Vec<u8>> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        bail!(
            "document id of {} bytes: ids have 1 to {MAX_ID_BYTES}",
            id.len()
        );
    }
    let mut record = Vec::with_capacity(1 + 2 + id.len() + 8 + doc.len() + 4);
    record.push(TAG_RECORD);
    // Checked above: at most MAX_ID_BYTES, which fits in a u16.
    record.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_le_bytes());
    record.extend_from_slice(id.as_bytes());
    record.extend_from_slice(&(doc.len() as u64).to_le_bytes());
    record.extend_from_slice(doc);
    let crc = crc32fast::hash(&record);
    record.extend_from_slice(&crc.to_le_bytes());
    Ok(record)
}

/// A document id as a file name stem.
fn file_stem(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for (i, b) in id.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') || (b == b'.' && i > 0);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The document id a file name stem stands for.
fn id_from_stem(stem: &str) -> Result<String> {
    let bytes = stem.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| anyhow!("{stem:?}: a `%` must be followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow!("{stem:?} does not decode to a UTF-8 id"))
}

/// What `import` reads.
enum Source {
    /// An export file, checked whole: `count` records.
    File { path: PathBuf, count: u64 },
    /// `.cvdoc` files, with their ids.
    Docs(Vec<(String, PathBuf)>),
}

impl Source {
    fn open(path: &Path, id: Option<&str>) -> Result<Self> {
        if path.is_dir() {
            if id.is_some() {
                bail!("--id names the document of a single .{DOC_EXT} file, not a directory");
            }
            let mut docs = Vec::new();
            let entries = std::fs::read_dir(path)
                .with_context(|| format!("reading the directory {}", path.display()))?;
            for entry in entries {
                let p = entry
                    .with_context(|| format!("reading the directory {}", path.display()))?
                    .path();
                if p.extension().is_some_and(|e| e == DOC_EXT) && p.is_file() {
                    docs.push((doc_id(&p)?, p));
                }
            }
            docs.sort();
            if docs.is_empty() {
                bail!("{} holds no .{DOC_EXT} file", path.display());
            }
            return Ok(Self::Docs(docs));
        }
        let mut head = [0u8; 8];
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let is_export = match file.read_exact(&mut head) {
            Ok(()) => &head == MAGIC,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => false,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if is_export {
            if id.is_some() {
                bail!("--id names the document of a single .{DOC_EXT} file, not an export file");
            }
            // Check every record before sending any.
            let count = read_export(path, |_, _| Ok(()))?;
            return Ok(Self::File {
                path: path.to_path_buf(),
                count,
            });
        }
        let id = match id {
            Some(id) => id.to_string(),
            None if path.extension().is_some_and(|e| e == DOC_EXT) => doc_id(path)?,
            None => bail!(
                "{} is neither an export file nor a .{DOC_EXT} document file (or give its id with --id)",
                path.display()
            ),
        };
        Ok(Self::Docs(vec![(id, path.to_path_buf())]))
    }

    fn count(&self) -> u64 {
        match self {
            Self::File { count, .. } => *count,
            Self::Docs(docs) => docs.len() as u64,
        }
    }

    fn for_each(&self, mut f: impl FnMut(String, Vec<u8>) -> Result<()>) -> Result<()> {
        match self {
            Self::File { path, .. } => read_export(path, f).map(|_| ()),
            Self::Docs(docs) => {
                for (id, path) in docs {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    f(id.clone(), bytes)?;
                }
                Ok(())
            }
        }
    }
}

/// The id of a `.cvdoc` file, from its name.
fn doc_id(path: &Path) -> Result<String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| anyhow!("{}: the file name is not UTF-8", path.display()))?;
    id_from_stem(stem).with_context(|| format!("the file name of {}", path.display()))
}

/// Reads an export file record by record, handing each to `f`; returns
/// the number of records. Any damage is an error naming where it is.
fn read_export(path: &Path, mut f: impl FnMut(String, Vec<u8>) -> Result<()>) -> Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = BufReader::new(file);
    let at = |what: &str, n: u64| format!("{}: record {n}: {what}", path.display());
    let mut head = [0u8; 10];
    r.read_exact(&mut head)
        .with_context(|| format!("{}: too short for an export file", path.display()))?;
    if &head[..8] != MAGIC {
        bail!("{}: not a converge export file", path.display());
    }
    let version = u16::from_le_bytes([head[8], head[9]]);
    if version != VERSION {
        bail!(
            "{}: export format version {version}; this build reads version {VERSION} (use a matching converge)",
            path.display()
        );
    }
    let mut n = 0u64;
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)
            .with_context(|| at("cut short: the end marker is missing", n))?;
        match tag[0] {
            TAG_END => {
                let mut rest = [0u8; 12];
                r.read_exact(&mut rest)
                    .with_context(|| at("cut short in the end marker", n))?;
                let mut trailer = vec![TAG_END];
                trailer.extend_from_slice(&rest[..8]);
                let count = u64::from_le_bytes(rest[..8].try_into().unwrap_or([0; 8]));
                let crc = u32::from_le_bytes(rest[8..].try_into().unwrap_or([0; 4]));
                if crc != crc32fast::hash(&trailer) || count != n {
                    bail!(
                        "{}: the end marker does not match the {n} records read (damaged file)",
                        path.display()
                    );
                }
                let mut extra = [0u8; 1];
                if r.read(&mut extra)
                    .with_context(|| format!("reading {}", path.display()))?
                    != 0
                {
                    bail!("{}: bytes after the end marker", path.display());
                }
                return Ok(n);
            }
            TAG_RECORD => {}
            other => bail!(at(&format!("unknown record tag {other}"), n)),
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&tag);
        let mut len2 = [0u8; 2];
        r.read_exact(&mut len2)
            .with_context(|| at("cut short", n))?;
        hasher.update(&len2);
        let id_len = usize::from(u16::from_le_bytes(len2));
        if id_len == 0 || id_len > MAX_ID_BYTES {
            bail!(at(&format!("an id of {id_len} bytes"), n));
        }
        let mut id = vec![0u8; id_len];
        r.read_exact(&mut id).with_context(|| at("cut short", n))?;
        hasher.update(&id);
        let mut len8 = [0u8; 8];
        r.read_exact(&mut len8)
            .with_context(|| at("cut short", n))?;
        hasher.update(&len8);
        let len = u64::from_le_bytes(len8);
        if len > MAX_DOC_BYTES {
            bail!(at(
                &format!("a document of {len} bytes, over the limit of {MAX_DOC_BYTES}"),
                n
            ));
        }
        let mut doc = Vec::new();
        (&mut r)
            .take(len)
            .read_to_end(&mut doc)
            .with_context(|| at("reading", n))?;
        if doc.len() as u64 != len {
            bail!(at("cut short", n));
        }
        hasher.update(&doc);
        let mut crc = [0u8; 4];
        r.read_exact(&mut crc).with_context(|| at("cut short", n))?;
        if u32::from_le_bytes(crc) != hasher.finalize() {
            bail!(at("checksum mismatch (damaged file)", n));
        }
        let id = String::from_utf8(id).map_err(|_| anyhow!(at("the id is not UTF-8", n)))?;
        f(id, doc)?;
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_export(path: &Path, docs: &[(&str, &[u8])]) {
        let mut sink = Sink::file(path).expect("sink");
        for (id, doc) in docs {
            sink.write(id, doc).expect("write");
        }
        sink.finish().expect("finish");
    }

    fn read_all(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        read_export(path, |id, doc| {
            out.push((id, doc));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn export_files_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("all.cvx");
        write_export(&path, &[("a", b"first"), ("b/ü", b""), ("c", &[7u8; 5000])]);
        assert!(!partial_path(&path).exists(), "renamed when complete");
        let docs = read_all(&path).expect("read");
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1], ("b/ü".to_string(), Vec::new()));
        assert_eq!(docs[2].1, vec![7u8; 5000]);
        let empty = dir.path().join("none.cvx");
        write_export(&empty, &[]);
        assert!(read_all(&empty).expect("read").is_empty());
    }

    #[test]
    fn damaged_export_files_are_refused_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("all.cvx");
        write_export(&path, &[("a", b"first"), ("b", b"second")]);
        let good = std::fs::read(&path).expect("read");
        let bad = dir.path().join("bad.cvx");
        let check = |bytes: &[u8], expect: &str| {
            std::fs::write(&bad, bytes).expect("write");
            let err = read_all(&bad).expect_err("damaged");
            assert!(format!("{err:#}").contains(expect), "{expect}: {err:#}");
        };
        // Every cut is detected.
        for cut in 0..good.len() {
            std::fs::write(&bad, &good[..cut]).expect("write");
            assert!(read_all(&bad).is_err(), "cut at {cut}");
        }
        let mut flipped = good.clone();
        flipped[23] ^= 1; // in the first document's bytes
        check(&flipped, "checksum");
        let mut longer = good.clone();
        longer.push(0);
        check(&longer, "after the end marker");
        let mut version = good.clone();
        version[8] = 9;
        check(&version, "version 9");
        // A valid document encoding alone is not an export file.
        check(b"CVch\x01\x00rest", "not a converge export file");
    }

    #[test]
    fn ids_map_to_file_names_and_back() {
        for id in ["notes", "a/b", ".hidden", "..", "ü x%", "v1.2-final_3"] {
            let stem = file_stem(id);
            assert!(
                !stem.contains('/') && !stem.starts_with('.'),
                "{id}: {stem}"
            );
            assert_eq!(id_from_stem(&stem).expect("decode"), id);
        }
        assert_eq!(file_stem("v1.2-final_3"), "v1.2-final_3");
        assert!(id_from_stem("bad%zz").is_err());
    }
}
