//! FUSE passthrough: the kernel reads and writes an open file's backing
//! file directly, without a round trip to the daemon.
//!
//! The kernel allows one backing file per inode at a time, and all opens of
//! an inode must then be passthrough opens of that same file. So backing ids
//! are shared per node and counted by open handles. When a node's file moved
//! (a writer copied it up) while read-only handles still pass through to the
//! lower copy, a new open cannot switch backing files: it is refused with
//! ETXTBSY, the error for writing a file that is busy, rather than served
//! from a file that would make the two handles disagree.

use std::io;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use fuser::BackingId;

use crate::union::NodeId;

/// How the opens of one node are served.
enum Mode {
    Passthrough {
        id: Arc<BackingId>,
        upper: bool,
    },
    /// Registering a backing file failed (e.g. a stacked backing filesystem):
    /// every open of this node goes through the daemon.
    Cached,
}

struct Slot {
    mode: Mode,
    opens: usize,
}

/// How to answer one open.
pub(super) enum Decision {
    Passthrough(Arc<BackingId>),
    Cached,
    Conflict,
}

#[derive(Default)]
pub(super) struct Backings {
    slots: DashMap<NodeId, Slot>,
}

impl Backings {
    /// Decides how to serve an open of `node` whose backing fd lives in the
    /// upper layer (`upper`) or a lower one; `register` makes a backing id
    /// for it when the node has none yet. Every `Passthrough` or `Cached`
    /// answer must be matched by one [`Backings::release`].
    pub fn acquire(
        &self,
        node: NodeId,
        upper: bool,
        register: impl FnOnce() -> io::Result<BackingId>,
    ) -> Decision {
        match self.slots.entry(node) {
            Entry::Occupied(mut e) => {
                let slot = e.get_mut();
                let decision = match &slot.mode {
                    Mode::Passthrough { id, upper: u } if *u == upper => {
                        Decision::Passthrough(id.clone())
                    }
                    Mode::Passthrough { .. } => return Decision::Conflict,
                    Mode::Cached => Decision::Cached,
                };
                slot.opens += 1;
                decision
            }
            Entry::Vacant(v) => {
                let (mode, decision) = match register() {
                    Ok(id) => {
                        let id = Arc::new(id);
                        (
                            Mode::Passthrough {
                                id: id.clone(),
                                upper,
                            },
                            Decision::Passthrough(id),
                        )
                    }
                    Err(e) => {
                        tracing::debug!(node, error = %e, "no passthrough for this file");
                        (Mode::Cached, Decision::Cached)
                    }
                };
                v.insert(Slot { mode, opens: 1 });
                decision
            }
        }
    }

    /// One open handle of `node` was released.
    pub fn release(&self, node: NodeId) {
        if let Entry::Occupied(mut e) = self.slots.entry(node) {
            e.get_mut().opens -= 1;
            if e.get().opens == 0 {
                // Dropping the last Arc closes the backing id in the kernel.
                e.remove();
            }
        }
    }
}
