//! Nodes of the merged tree and the table that hands them out.
//!
//! A [`Node`] is one object of the merged view: a merged directory, or a
//! non-directory living in exactly one layer. Nodes are keyed by the real
//! object on top ([`RealId`]: the upper entry if there is one, else the
//! topmost lower one), so every name that reaches the same real file (hard
//! links) gets the same node, and a name looked up again gets its old node.
//!
//! Lifetime: the kernel holds references ("lookups") on nodes it was told
//! about and drops them with FORGET. A node leaves the table when its count
//! reaches zero, so memory follows the kernel's inode cache, not the size of
//! the tree that was walked.
//!
//! Node ids: the FUSE library we use reports a node's id as its `st_ino`
//! too, so a node's id *is* its inode number. A node takes the stable inode
//! number of its object (see `Union::ino_for`) when no other live node holds
//! it; otherwise (a freed inode number reused while the kernel still holds
//! the old node, a hard link broken by copy-up) it gets a synthetic id with
//! the top bit set, unique for the life of the mount.
//!
//! Invariant: a node's lookup count only goes up while the `by_key` shard
//! holding its key is locked, and a node only leaves `by_key` under the same
//! lock after its count was seen at zero; so a node is never handed out
//! after it was dropped.

use std::ffi::{CStr, CString};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use smallvec::SmallVec;

use crate::layer::Kind;

/// Node id as the kernel sees it, and the node's `st_ino`.
pub type NodeId = u64;

/// Names of one node remembered at most (see [`Node::add_link`]).
pub const MAX_LINKS: usize = 32;

/// Ids at or above this are synthetic (never a real inode number we map).
pub const SYNTHETIC: NodeId = 1 << 63;

/// The id of the root directory (`FUSE_ROOT_ID`).
pub const ROOT_ID: NodeId = 1;

/// Identity of a real object in a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RealId {
    pub dev: u64,
    pub ino: u64,
}

/// Where an object lives: the upper layer or lower layer `n` (0 = top).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Loc {
    Upper,
    Lower(u16),
}

/// One name of a node.
#[derive(Debug, Clone)]
pub struct Link {
    pub parent: Arc<Node>,
    pub name: CString,
}

/// Mutable part of a node.
#[derive(Debug)]
pub struct NodeState {
    /// Names under which the kernel knows this node (one, except for hard
    /// links). Empty for the root and for unlinked nodes.
    pub links: SmallVec<[Link; 1]>,
    /// The object exists in the upper layer.
    pub upper: bool,
    /// Lower layers holding the object, top first: for a directory every
    /// layer merged below the upper one; for anything else at most one, and
    /// none once copied up.
    pub lowers: SmallVec<[u16; 2]>,
    /// Key in the node table.
    pub key: RealId,
    /// The upper copy holds metadata only; the data is still in `lowers[0]`.
    pub metacopy: bool,
    /// A moved directory: where its lower layers hold it (relative to the
    /// layer roots). Its descendants are found below that path in the lower
    /// layers, and below their own names in the upper layer.
    pub lower_path: Option<Arc<CString>>,
    /// An indexed copy of a lower file with this many names (0: none): its
    /// link count counts those names, not the index entry.
    pub index_nlink: u32,
    /// All names were removed; the node lives on only while open.
    pub unlinked: bool,
    /// After the last name is gone: an `O_PATH` fd on the real object, so
    /// `fstat` of a file that is still open keeps working.
    pub orphan: Option<Arc<OwnedFd>>,
    /// The index says the lower object has no extended attributes: while
    /// it is not copied up, xattr requests are answered without a syscall.
    pub lower_xattr_free: bool,
}

impl NodeState {
    /// Lower-only, and without extended attributes per the index.
    pub fn xattr_free(&self) -> bool {
        self.lower_xattr_free && !self.upper && !self.unlinked
    }

    /// State of a node with nothing behind it.
    pub fn gone() -> NodeState {
        NodeState {
            links: SmallVec::new(),
            upper: false,
            lowers: SmallVec::new(),
            key: RealId { dev: 0, ino: 0 },
            metacopy: false,
            lower_path: None,
            index_nlink: 0,
            unlinked: true,
            orphan: None,
            lower_xattr_free: false,
        }
    }

    /// The layer that holds the object itself (for a directory: its topmost
    /// layer).
    pub fn top(&self) -> Option<Loc> {
        if self.upper {
            Some(Loc::Upper)
        } else {
            self.lowers.first().map(|&l| Loc::Lower(l))
        }
    }

    /// The layer that holds a file's data: the upper copy, unless that is
    /// metadata only.
    pub fn data(&self) -> Option<Loc> {
        if self.upper && !self.metacopy {
            Some(Loc::Upper)
        } else {
            self.lowers.first().map(|&l| Loc::Lower(l)).or(self.top())
        }
    }

    pub fn link(&self) -> Option<&Link> {
        self.links.first()
    }
}

#[derive(Debug)]
pub struct Node {
    /// Node id and `st_ino`.
    pub id: NodeId,
    pub kind: Kind,
    lookups: AtomicU64,
    state: RwLock<NodeState>,
    /// Serialises copy-up of this node.
    pub copy_up_lock: Mutex<()>,
}

impl Node {
    pub fn new(id: NodeId, kind: Kind, state: NodeState) -> Node {
        Node {
            id,
            kind,
            lookups: AtomicU64::new(0),
            state: RwLock::new(state),
            copy_up_lock: Mutex::new(()),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    pub fn state(&self) -> RwLockReadGuard<'_, NodeState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state_mut(&self) -> RwLockWriteGuard<'_, NodeState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Acquire)
    }

    /// Adds `(parent, name)` to the node's names if it is not there yet.
    ///
    /// At most [`MAX_LINKS`] names are kept: any one of them reaches the
    /// object, and spares only matter when names are removed. A name looked
    /// up again is added again; past the cap, a node whose kept names are
    /// all gone is reached through its orphan fd until then.
    pub fn add_link(&self, parent: &Arc<Node>, name: &CStr) {
        let mut st = self.state_mut();
        if st.links.len() < MAX_LINKS
            && !st
                .links
                .iter()
                .any(|l| l.parent.id == parent.id && l.name.as_c_str() == name)
        {
            st.links.push(Link {
                parent: parent.clone(),
                name: name.to_owned(),
            });
        }
        st.unlinked = false;
    }
}

/// The table of live nodes.
#[derive(Debug)]
pub struct NodeTable {
    nodes: DashMap<NodeId, Arc<Node>>,
    by_key: DashMap<RealId, Arc<Node>>,
    next_synthetic: AtomicU64,
}

impl NodeTable {
    pub fn new(root: Node) -> NodeTable {
        let table = NodeTable {
            nodes: DashMap::new(),
            by_key: DashMap::new(),
            next_synthetic: AtomicU64::new(1),
        };
        let root = Arc::new(root);
        root.lookups.store(1, Ordering::Release);
        table.nodes.insert(root.id, root);
        table
    }

    pub fn get(&self, id: NodeId) -> Option<Arc<Node>> {
        self.nodes.get(&id).map(|n| n.clone())
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Returns the node for `key` with one more lookup reference, creating
    /// it when there is none (or when the one there is of another kind: the
    /// real inode number was reused). `make` gives the preferred id (the
    /// stable inode number) and the initial state of a new node.
    pub fn acquire<E>(
        &self,
        key: RealId,
        kind: Kind,
        make: impl FnOnce() -> Result<(NodeId, NodeState), E>,
    ) -> Result<Arc<Node>, E> {
        let entry = match self.by_key.entry(key) {
            Entry::Occupied(e) if e.get().kind == kind => {
                let node = e.get().clone();
                node.lookups.fetch_add(1, Ordering::AcqRel);
                return Ok(node);
            }
            entry => entry,
        };
        let (preferred, state) = make()?;
        let node = self.claim(preferred, kind, state);
        match entry {
            Entry::Occupied(mut e) => {
                e.insert(node.clone());
            }
            Entry::Vacant(e) => {
                e.insert(node.clone());
            }
        }
        Ok(node)
    }

    /// Inserts a new node under `preferred` if that id is free, else under a
    /// fresh synthetic id.
    fn claim(&self, preferred: NodeId, kind: Kind, state: NodeState) -> Arc<Node> {
        let mut state = Some(state);
        let mut build = |id: NodeId| {
            let node = Arc::new(Node::new(
                id,
                kind,
                state.take().unwrap_or_else(NodeState::gone),
            ));
            node.lookups.store(1, Ordering::Release);
            node
        };
        if preferred > ROOT_ID && preferred < SYNTHETIC {
            if let Entry::Vacant(v) = self.nodes.entry(preferred) {
                let node = build(preferred);
                v.insert(node.clone());
                return node;
            }
        }
        loop {
            let id = SYNTHETIC | self.next_synthetic.fetch_add(1, Ordering::Relaxed);
            if let Entry::Vacant(v) = self.nodes.entry(id) {
                let node = build(id);
                v.insert(node.clone());
                return node;
            }
        }
    }

    /// Drops `n` lookup references; the node leaves the table at zero.
    pub fn forget(&self, id: NodeId, n: u64) {
        if id == ROOT_ID {
            return;
        }
        let Some(node) = self.get(id) else { return };
        let prev = node
            .lookups
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_sub(n))
            })
            .unwrap_or(0);
        if prev > n {
            return;
        }
        let key = node.state().key;
        self.by_key
            .remove_if(&key, |_, v| Arc::ptr_eq(v, &node) && v.lookups() == 0);
        self.nodes
            .remove_if(&id, |_, v| Arc::ptr_eq(v, &node) && v.lookups() == 0);
    }

    /// Moves a node to a new key (its top object changed, e.g. after
    /// copy-up).
    pub fn rekey(&self, node: &Arc<Node>, new_key: RealId) {
        let old = {
            let mut st = node.state_mut();
            std::mem::replace(&mut st.key, new_key)
        };
        if old == new_key {
            return;
        }
        self.by_key.remove_if(&old, |_, v| Arc::ptr_eq(v, node));
        self.by_key.insert(new_key, node.clone());
    }

    /// Forgets the key of a node whose last name is gone, so a new object
    /// that reuses the real inode number does not find it.
    pub fn unhash(&self, node: &Arc<Node>) {
        let key = node.state().key;
        self.by_key.remove_if(&key, |_, v| Arc::ptr_eq(v, node));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(key: RealId) -> NodeState {
        NodeState {
            key,
            upper: true,
            unlinked: false,
            ..NodeState::gone()
        }
    }

    fn table() -> NodeTable {
        NodeTable::new(Node::new(
            ROOT_ID,
            Kind::Dir,
            state(RealId { dev: 0, ino: 0 }),
        ))
    }

    fn get(t: &NodeTable, key: RealId, kind: Kind, ino: u64) -> Arc<Node> {
        t.acquire::<()>(key, kind, || Ok((ino, state(key))))
            .unwrap()
    }

    #[test]
    fn same_key_same_node_and_forget_frees() {
        let t = table();
        let key = RealId { dev: 1, ino: 42 };
        let a = get(&t, key, Kind::File, 42);
        let b = get(&t, key, Kind::File, 42);
        assert_eq!(a.id, 42);
        assert_eq!(a.id, b.id);
        assert_eq!(a.lookups(), 2);
        t.forget(a.id, 1);
        assert!(t.get(a.id).is_some());
        t.forget(a.id, 1);
        assert!(t.get(a.id).is_none());
        assert_eq!(t.len(), 1);
        let c = get(&t, key, Kind::File, 42);
        assert_eq!(c.id, 42, "a forgotten id is free again");
    }

    #[test]
    fn taken_inode_number_gets_synthetic_id() {
        let t = table();
        let a = get(&t, RealId { dev: 1, ino: 5 }, Kind::File, 5);
        let b = get(&t, RealId { dev: 1, ino: 6 }, Kind::File, 5);
        assert_eq!(a.id, 5);
        assert!(b.id >= SYNTHETIC);
        let r = get(&t, RealId { dev: 1, ino: 9 }, Kind::File, ROOT_ID);
        assert!(r.id >= SYNTHETIC, "the root id is never handed out");
    }

    #[test]
    fn kind_change_gets_new_node() {
        let t = table();
        let key = RealId { dev: 1, ino: 7 };
        let a = get(&t, key, Kind::File, 7);
        let b = get(&t, key, Kind::Dir, 7);
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn rekey_moves_node() {
        let t = table();
        let k1 = RealId { dev: 1, ino: 1 };
        let k2 = RealId { dev: 1, ino: 2 };
        let a = get(&t, k1, Kind::File, 11);
        t.rekey(&a, k2);
        let b = get(&t, k2, Kind::File, 12);
        assert_eq!(a.id, b.id);
        let c = get(&t, k1, Kind::File, 13);
        assert_ne!(a.id, c.id);
    }

    #[test]
    fn root_is_never_forgotten() {
        let t = table();
        t.forget(ROOT_ID, 100);
        assert!(t.get(ROOT_ID).is_some());
    }
}
