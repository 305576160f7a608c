//! The text subjects: converge, its peers and the rope floor, each driven
//! through [`Subject`] with the library's own natural, efficient calls.
//!
//! Optional capabilities (encoding, sync) have default methods returning an
//! error, so a subject that lacks one is reported as such, not timed.
//! Giving converge an encoding is two methods: `encode` and `load`.

use std::time::Instant;

use converge_crdt::{ReplicaId, VersionVector};
use converge_doc::text::{Text, TextChange};

use crate::trace::{Patch, Txn};

/// Error text of a capability the subject lacks.
pub(crate) const NOT_IMPLEMENTED: &str = "not implemented";
/// Prefix of the error for a run that exceeded its time limit.
pub(crate) const DNF: &str = "did not finish";

/// How often (in patches) an apply loop looks at the clock.
const CLOCK_EVERY: usize = 1024;

/// A text replica as driven by the workloads.
pub(crate) trait Subject: Sized {
    /// Name in the results.
    const NAME: &'static str;
    /// Whether this is a CRDT (the floor is not: it has no history, sync or
    /// encoding, and those metrics are left out rather than failed).
    const CRDT: bool = true;
    /// A version: what a replica has seen.
    type Version;
    /// Changes as exported for another replica.
    type Update;
    /// An update as handed to `apply_update` (decoded where the library has
    /// a decoded form, so decoding stays outside the timed region).
    type Prepared;

    /// An empty document edited by `replica` (a small number, unique per
    /// replica within one workload).
    fn new(replica: u64) -> Self;

    /// A replica holding nothing at all, to receive a whole history (`new`
    /// may already hold the creation of the text object).
    fn empty(replica: u64) -> Self {
        Self::new(replica)
    }

    /// Applies `txns` as local edits: one library transaction per trace
    /// transaction, or one for all of them when `batch`. Gives up with a
    /// [`DNF`] error once `deadline` passes.
    fn apply_txns(&mut self, txns: &[Txn], batch: bool, deadline: Instant) -> Result<(), String>;

    /// The current text.
    fn text(&mut self) -> String;

    /// The current version.
    fn version(&mut self) -> Result<Self::Version, String> {
        Err(NOT_IMPLEMENTED.into())
    }

    /// Every change not in `since`.
    fn updates_since(&mut self, _since: &Self::Version) -> Result<Self::Update, String> {
        Err(NOT_IMPLEMENTED.into())
    }

    /// Applies one transaction as local edits and returns its changes (the
    /// message a live editor would send).
    fn local_txn(&mut self, txn: &Txn) -> Result<Self::Update, String> {
        let v = self.version()?;
        self.apply_txns(std::slice::from_ref(txn), false, far_deadline())?;
        self.updates_since(&v)
    }

    /// Readies `update` for `apply_update` (untimed).
    fn prepare(update: &Self::Update) -> Self::Prepared;

    /// Merges remote changes.
    fn apply_update(&mut self, _update: Self::Prepared) -> Result<(), String> {
        Err(NOT_IMPLEMENTED.into())
    }

    /// A copy of this document edited by `replica`.
    fn fork(&mut self, _replica: u64) -> Result<Self, String> {
        Err(NOT_IMPLEMENTED.into())
    }

    /// A copy without cached encodings, for a cold `encode`; `None` when
    /// only a rebuild guarantees that.
    fn cold_copy(&mut self) -> Option<Self> {
        None
    }

    /// The full encoding with history.
    fn encode(&mut self) -> Result<Vec<u8>, String> {
        Err(NOT_IMPLEMENTED.into())
    }

    /// A document decoded from [`encode`](Self::encode)'s output.
    fn load(_bytes: &[u8]) -> Result<Self, String> {
        Err(NOT_IMPLEMENTED.into())
    }
}

/// A deadline that never comes, for untimed preparation.
pub(crate) fn far_deadline() -> Instant {
    Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600)
}

/// Calls `f` on every patch, checking `deadline` every [`CLOCK_EVERY`]
/// patches and after each transaction (where `end_txn` is called).
fn drive<E: std::fmt::Display>(
    txns: &[Txn],
    deadline: Instant,
    mut f: impl FnMut(&Patch) -> Result<(), E>,
    mut end_txn: impl FnMut(),
) -> Result<(), String> {
    let mut n = 0usize;
    for txn in txns {
        for p in &txn.patches {
            f(p).map_err(|e| format!("patch {p:?}: {e}"))?;
            n += 1;
            if n.is_multiple_of(CLOCK_EVERY) && Instant::now() > deadline {
                return Err(DNF.into());
            }
        }
        end_txn();
    }
    Ok(())
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

// ---------------------------------------------------------------- converge

/// converge-doc's [`Text`]. It has no transactions: `batch` makes no
/// difference.
#[derive(Clone)]
pub(crate) struct Converge(Text);

impl Subject for Converge {
    const NAME: &'static str = "converge";
    type Version = VersionVector;
    type Update = Vec<TextChange>;
    type Prepared = Vec<TextChange>;

    fn new(replica: u64) -> Self {
        Self(Text::new(ReplicaId::from_u64(replica)))
    }

    fn apply_txns(&mut self, txns: &[Txn], _batch: bool, deadline: Instant) -> Result<(), String> {
        let t = &mut self.0;
        drive(
            txns,
            deadline,
            |p| {
                if p.del > 0 {
                    t.delete(p.pos, p.del)?;
                }
                t.insert(p.pos, &p.ins)
            },
            || {},
        )
    }

    fn text(&mut self) -> String {
        self.0.to_string()
    }

    fn version(&mut self) -> Result<VersionVector, String> {
        Ok(self.0.version().clone())
    }

    fn updates_since(&mut self, since: &VersionVector) -> Result<Vec<TextChange>, String> {
        self.0.changes_since(since).map_err(err)
    }

    fn prepare(update: &Vec<TextChange>) -> Vec<TextChange> {
        update.clone()
    }

    fn apply_update(&mut self, update: Vec<TextChange>) -> Result<(), String> {
        self.0.apply_changes(&update).map_err(err)
    }

    fn fork(&mut self, replica: u64) -> Result<Self, String> {
        let mut copy = Self::new(replica);
        copy.apply_update(self.0.changes_since(&VersionVector::new()).map_err(err)?)?;
        Ok(copy)
    }

    fn cold_copy(&mut self) -> Option<Self> {
        Some(self.clone())
    }

    fn encode(&mut self) -> Result<Vec<u8>, String> {
        Ok(self.0.encode())
    }

    fn load(bytes: &[u8]) -> Result<Self, String> {
        Text::load(bytes, ReplicaId::from_u64(1))
            .map(Self)
            .map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------- automerge

/// automerge's `AutoCommit` with one text object at `text`.
pub(crate) struct Automerge {
    doc: automerge::AutoCommit,
    /// The text object, once known (a replica that has only received
    /// changes looks it up when first needed).
    text: Option<automerge::ObjId>,
}

fn actor(replica: u64) -> automerge::ActorId {
    automerge::ActorId::from(replica.to_le_bytes())
}

impl Automerge {
    fn with_doc(doc: automerge::AutoCommit) -> Result<Self, String> {
        let mut doc = Self { doc, text: None };
        doc.obj()?;
        Ok(doc)
    }

    /// The text object.
    fn obj(&mut self) -> Result<automerge::ObjId, String> {
        use automerge::ReadDoc;
        if let Some(text) = &self.text {
            return Ok(text.clone());
        }
        match self.doc.get(automerge::ROOT, "text").map_err(err)? {
            Some((automerge::Value::Object(automerge::ObjType::Text), text)) => {
                self.text = Some(text.clone());
                Ok(text)
            }
            other => Err(format!("no text object at the root: {other:?}")),
        }
    }
}

impl Subject for Automerge {
    const NAME: &'static str = "automerge";
    type Version = Vec<automerge::ChangeHash>;
    type Update = Vec<automerge::Change>;
    type Prepared = Vec<automerge::Change>;

    fn new(replica: u64) -> Self {
        use automerge::transaction::Transactable;
        let mut doc = automerge::AutoCommit::new().with_actor(actor(replica));
        let text = doc
            .put_object(automerge::ROOT, "text", automerge::ObjType::Text)
            .expect("a text object at the root");
        doc.commit();
        Self {
            doc,
            text: Some(text),
        }
    }

    fn empty(replica: u64) -> Self {
        Self {
            doc: automerge::AutoCommit::new().with_actor(actor(replica)),
            text: None,
        }
    }

    fn apply_txns(&mut self, txns: &[Txn], batch: bool, deadline: Instant) -> Result<(), String> {
        use automerge::transaction::Transactable;
        let text = &self.obj()?;
        let doc = &mut self.doc;
        // AutoCommit keeps one open transaction until `commit`.
        let doc = std::cell::RefCell::new(doc);
        drive(
            txns,
            deadline,
            |p| {
                let del = isize::try_from(p.del).map_err(err)?;
                doc.borrow_mut()
                    .splice_text(text, p.pos, del, &p.ins)
                    .map_err(err)
            },
            || {
                if !batch {
                    doc.borrow_mut().commit();
                }
            },
        )?;
        doc.borrow_mut().commit();
        Ok(())
    }

    fn text(&mut self) -> String {
        use automerge::ReadDoc;
        match self.obj() {
            Ok(text) => self.doc.text(&text).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    fn version(&mut self) -> Result<Self::Version, String> {
        Ok(self.doc.get_heads())
    }

    fn updates_since(&mut self, since: &Self::Version) -> Result<Self::Update, String> {
        Ok(self.doc.get_changes(since))
    }

    fn local_txn(&mut self, txn: &Txn) -> Result<Self::Update, String> {
        use automerge::transaction::Transactable;
        let text = self.obj()?;
        for p in &txn.patches {
            let del = isize::try_from(p.del).map_err(err)?;
            self.doc
                .splice_text(&text, p.pos, del, &p.ins)
                .map_err(err)?;
        }
        Ok(match self.doc.commit() {
            Some(_) => self.doc.get_last_local_change().into_iter().collect(),
            None => Vec::new(),
        })
    }

    fn prepare(update: &Self::Update) -> Self::Prepared {
        update.clone()
    }

    fn apply_update(&mut self, update: Self::Prepared) -> Result<(), String> {
        self.doc.apply_changes(update).map_err(err)
    }

    fn fork(&mut self, replica: u64) -> Result<Self, String> {
        Ok(Self {
            doc: self.doc.fork().with_actor(actor(replica)),
            text: self.text.clone(),
        })
    }

    fn cold_copy(&mut self) -> Option<Self> {
        // automerge keeps no cached encoding.
        self.fork(u64::MAX).ok()
    }

    fn encode(&mut self) -> Result<Vec<u8>, String> {
        Ok(self.doc.save())
    }

    fn load(bytes: &[u8]) -> Result<Self, String> {
        Self::with_doc(automerge::AutoCommit::load(bytes).map_err(err)?)
    }
}

// ---------------------------------------------------------------- yrs

/// yrs: a `Doc` with a root `TextRef`, indexed by UTF-8 bytes
/// (`OffsetKind::Bytes`, yrs' default; it has no code-point mode).
pub(crate) struct Yrs {
    doc: yrs::Doc,
    text: yrs::TextRef,
}

impl Subject for Yrs {
    const NAME: &'static str = "yrs";
    type Version = yrs::StateVector;
    type Update = Vec<u8>;
    type Prepared = yrs::Update;

    fn new(replica: u64) -> Self {
        let doc = yrs::Doc::with_options(yrs::Options {
            offset_kind: yrs::OffsetKind::Bytes,
            ..yrs::Options::with_client_id(yrs::ClientID::new(replica))
        });
        let text = doc.get_or_insert_text("text");
        Self { doc, text }
    }

    fn apply_txns(&mut self, txns: &[Txn], batch: bool, deadline: Instant) -> Result<(), String> {
        use yrs::{Text as _, Transact};
        let text = &self.text;
        let edit = |t: &mut yrs::TransactionMut, p: &Patch| -> Result<(), String> {
            let pos = u32::try_from(p.bpos).map_err(err)?;
            if p.bdel > 0 {
                text.remove_range(t, pos, u32::try_from(p.bdel).map_err(err)?);
            }
            if !p.ins.is_empty() {
                text.insert(t, pos, &p.ins);
            }
            Ok(())
        };
        if batch {
            let mut t = self.doc.transact_mut();
            let mut n = 0usize;
            for p in txns.iter().flat_map(|t| &t.patches) {
                edit(&mut t, p)?;
                n += 1;
                if n.is_multiple_of(CLOCK_EVERY) && Instant::now() > deadline {
                    // Committing a huge transaction is what takes forever:
                    // abandon it (leaking this document).
                    std::mem::forget(t);
                    return Err(DNF.into());
                }
            }
            drop(t);
            if Instant::now() > deadline {
                return Err(DNF.into());
            }
            return Ok(());
        }
        for (i, txn) in txns.iter().enumerate() {
            let mut t = self.doc.transact_mut();
            for p in &txn.patches {
                edit(&mut t, p)?;
            }
            drop(t);
            if i.is_multiple_of(64) && Instant::now() > deadline {
                return Err(DNF.into());
            }
        }
        Ok(())
    }

    fn text(&mut self) -> String {
        use yrs::{GetString, Transact};
        self.text.get_string(&self.doc.transact())
    }

    fn version(&mut self) -> Result<Self::Version, String> {
        use yrs::{ReadTxn, Transact};
        Ok(self.doc.transact().state_vector())
    }

    fn updates_since(&mut self, since: &Self::Version) -> Result<Self::Update, String> {
        use yrs::{ReadTxn, Transact};
        Ok(self.doc.transact().encode_state_as_update_v1(since))
    }

    fn local_txn(&mut self, txn: &Txn) -> Result<Self::Update, String> {
        use yrs::{Text as _, Transact};
        let mut t = self.doc.transact_mut();
        for p in &txn.patches {
            let pos = u32::try_from(p.bpos).map_err(err)?;
            if p.bdel > 0 {
                self.text
                    .remove_range(&mut t, pos, u32::try_from(p.bdel).map_err(err)?);
            }
            if !p.ins.is_empty() {
                self.text.insert(&mut t, pos, &p.ins);
            }
        }
        // Only this transaction's changes (a state diff would resend the
        // whole delete set every time).
        Ok(t.encode_update_v1())
    }

    fn prepare(update: &Self::Update) -> Self::Prepared {
        use yrs::updates::decoder::Decode;
        yrs::Update::decode_v1(update).expect("yrs encodes decodable updates")
    }

    fn apply_update(&mut self, update: Self::Prepared) -> Result<(), String> {
        use yrs::Transact;
        self.doc.transact_mut().apply_update(update).map_err(err)
    }

    fn fork(&mut self, replica: u64) -> Result<Self, String> {
        let mut copy = Self::new(replica);
        let all = self.updates_since(&yrs::StateVector::default())?;
        copy.apply_update(Self::prepare(&all))?;
        Ok(copy)
    }

    fn cold_copy(&mut self) -> Option<Self> {
        self.fork(u64::from(u32::MAX)).ok()
    }

    fn encode(&mut self) -> Result<Vec<u8>, String> {
        use yrs::{ReadTxn, Transact};
        Ok(self
            .doc
            .transact()
            .encode_state_as_update_v2(&yrs::StateVector::default()))
    }

    fn load(bytes: &[u8]) -> Result<Self, String> {
        use yrs::updates::decoder::Decode;
        let mut doc = Self::new(u64::from(u32::MAX));
        doc.apply_update(yrs::Update::decode_v2(bytes).map_err(err)?)?;
        Ok(doc)
    }
}

// ---------------------------------------------------------------- loro

/// loro: a `LoroDoc` with a root `LoroText`, indexed by code points
/// (`insert` / `delete`, not the `_utf8` variants).
pub(crate) struct Loro {
    doc: loro::LoroDoc,
    text: loro::LoroText,
}

impl Loro {
    fn with_doc(doc: loro::LoroDoc) -> Self {
        let text = doc.get_text("text");
        Self { doc, text }
    }
}

impl Subject for Loro {
    const NAME: &'static str = "loro";
    type Version = loro::VersionVector;
    type Update = Vec<u8>;
    type Prepared = Vec<u8>;

    fn new(replica: u64) -> Self {
        let doc = loro::LoroDoc::new();
        doc.set_peer_id(replica).expect("a valid peer id");
        Self::with_doc(doc)
    }

    fn apply_txns(&mut self, txns: &[Txn], batch: bool, deadline: Instant) -> Result<(), String> {
        let Self { doc, text } = self;
        // loro auto-commits: everything up to `commit` is one transaction.
        drive(
            txns,
            deadline,
            |p| {
                if p.del > 0 {
                    text.delete(p.pos, p.del)?;
                }
                if !p.ins.is_empty() {
                    text.insert(p.pos, &p.ins)?;
                }
                Ok::<(), loro::LoroError>(())
            },
            || {
                if !batch {
                    doc.commit();
                }
            },
        )?;
        doc.commit();
        Ok(())
    }

    fn text(&mut self) -> String {
        self.text.to_string()
    }

    fn version(&mut self) -> Result<Self::Version, String> {
        Ok(self.doc.oplog_vv())
    }

    fn updates_since(&mut self, since: &Self::Version) -> Result<Self::Update, String> {
        self.doc
            .export(loro::ExportMode::updates(since))
            .map_err(err)
    }

    fn prepare(update: &Self::Update) -> Self::Prepared {
        update.clone()
    }

    fn apply_update(&mut self, update: Self::Prepared) -> Result<(), String> {
        self.doc.import(&update).map(drop).map_err(err)
    }

    fn fork(&mut self, replica: u64) -> Result<Self, String> {
        let doc = self.doc.fork();
        doc.set_peer_id(replica).map_err(err)?;
        Ok(Self::with_doc(doc))
    }

    // `cold_copy`: a fork shares loro's cached encoded blocks; rebuild.

    fn encode(&mut self) -> Result<Vec<u8>, String> {
        self.doc.export(loro::ExportMode::Snapshot).map_err(err)
    }

    fn load(bytes: &[u8]) -> Result<Self, String> {
        Ok(Self::with_doc(
            loro::LoroDoc::from_snapshot(bytes).map_err(err)?,
        ))
    }
}

// ---------------------------------------------------------------- diamond-types

/// diamond-types' `ListCRDT` (oplog + branch). It has no transactions.
#[derive(Clone)]
pub(crate) struct DiamondTypes {
    doc: diamond_types::list::ListCRDT,
    agent: diamond_types::AgentId,
}

impl Subject for DiamondTypes {
    const NAME: &'static str = "diamond-types";
    type Version = Vec<usize>;
    type Update = Vec<u8>;
    type Prepared = Vec<u8>;

    fn new(replica: u64) -> Self {
        let mut doc = diamond_types::list::ListCRDT::new();
        let agent = doc.get_or_create_agent_id(&format!("r{replica}"));
        Self { doc, agent }
    }

    fn apply_txns(&mut self, txns: &[Txn], _batch: bool, deadline: Instant) -> Result<(), String> {
        let Self { doc, agent } = self;
        drive(
            txns,
            deadline,
            |p| {
                if p.del > 0 {
                    doc.delete_without_content(*agent, p.pos..p.pos + p.del);
                }
                if !p.ins.is_empty() {
                    doc.insert(*agent, p.pos, &p.ins);
                }
                Ok::<(), String>(())
            },
            || {},
        )
    }

    fn text(&mut self) -> String {
        self.doc.branch.content().to_string()
    }

    fn version(&mut self) -> Result<Self::Version, String> {
        Ok(self.doc.oplog.local_version_ref().to_vec())
    }

    fn updates_since(&mut self, since: &Self::Version) -> Result<Self::Update, String> {
        Ok(self
            .doc
            .oplog
            .encode_from(diamond_types::list::encoding::ENCODE_PATCH, since))
    }

    fn prepare(update: &Self::Update) -> Self::Prepared {
        update.clone()
    }

    fn apply_update(&mut self, update: Self::Prepared) -> Result<(), String> {
        self.doc
            .merge_data_and_ff(&update)
            .map(drop)
            .map_err(|e| format!("{e:?}"))
    }

    fn fork(&mut self, replica: u64) -> Result<Self, String> {
        let mut doc = self.doc.clone();
        let agent = doc.get_or_create_agent_id(&format!("r{replica}"));
        Ok(Self { doc, agent })
    }

    fn cold_copy(&mut self) -> Option<Self> {
        Some(self.clone())
    }

    fn encode(&mut self) -> Result<Vec<u8>, String> {
        Ok(self
            .doc
            .oplog
            .encode(diamond_types::list::encoding::ENCODE_FULL))
    }

    fn load(bytes: &[u8]) -> Result<Self, String> {
        let mut doc =
            diamond_types::list::ListCRDT::load_from(bytes).map_err(|e| format!("{e:?}"))?;
        let agent = doc.get_or_create_agent_id("loaded");
        Ok(Self { doc, agent })
    }
}

// ---------------------------------------------------------------- floor

/// The floor: the same edits on a `jumprope::JumpRopeBuf`, no CRDT metadata.
pub(crate) struct Floor(jumprope::JumpRopeBuf);

impl Subject for Floor {
    const NAME: &'static str = "floor";
    const CRDT: bool = false;
    type Version = ();
    type Update = ();
    type Prepared = ();

    fn new(_replica: u64) -> Self {
        Self(jumprope::JumpRopeBuf::new())
    }

    fn apply_txns(&mut self, txns: &[Txn], _batch: bool, deadline: Instant) -> Result<(), String> {
        let rope = &mut self.0;
        drive(
            txns,
            deadline,
            |p| {
                if p.del > 0 {
                    rope.remove(p.pos..p.pos + p.del);
                }
                if !p.ins.is_empty() {
                    rope.insert(p.pos, &p.ins);
                }
                Ok::<(), String>(())
            },
            || {},
        )
    }

    fn text(&mut self) -> String {
        self.0.to_string()
    }

    fn prepare(_update: &()) {}
}
