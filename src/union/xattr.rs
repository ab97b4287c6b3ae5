//! Extended attributes (POSIX ACLs included, which are xattrs in
//! `system.posix_acl_*`). The union's own xattrs are invisible: they are
//! neither listed, nor readable, nor settable through the mount.

use std::ffi::CStr;

use nix::errno::Errno;

use super::copyup::CopyData;
use super::{NodeId, Result, Union};
use crate::layer::whiteout::is_internal_xattr;

/// Answer to a size-or-data xattr request.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrReply {
    /// The caller asked for the size (buffer size 0).
    Size(u32),
    Data(Vec<u8>),
}

impl Union {
    /// The union's own xattrs, and the override xattr when owner and mode
    /// live there.
    fn is_hidden_xattr(&self, name: &[u8]) -> bool {
        is_internal_xattr(name)
            || (self.cfg.override_stat.is_some()
                && name == super::override_stat::CONTAINERS.to_bytes())
    }

    pub fn getxattr(&self, id: NodeId, attr: &CStr, size: u32) -> Result<XattrReply> {
        if self.is_hidden_xattr(attr.to_bytes()) {
            return Err(Errno::ENODATA);
        }
        let node = self.node(id)?;
        if node.state().xattr_free() {
            return Err(Errno::ENODATA);
        }
        let real = self.real(&node)?;
        if size == 0 {
            let n = real.dir.dir.get_xattr_into(real.name(), attr, &mut [])?;
            return Ok(XattrReply::Size(n as u32));
        }
        let mut buf = vec![0u8; size as usize];
        let n = real.dir.dir.get_xattr_into(real.name(), attr, &mut buf)?;
        buf.truncate(n);
        Ok(XattrReply::Data(buf))
    }

    pub fn listxattr(&self, id: NodeId, size: u32) -> Result<XattrReply> {
        let node = self.node(id)?;
        if node.state().xattr_free() {
            return Ok(match size {
                0 => XattrReply::Size(0),
                _ => XattrReply::Data(Vec::new()),
            });
        }
        let real = self.real(&node)?;
        let raw = match real.dir.dir.list_xattr(real.name()) {
            Ok(l) => l,
            Err(Errno::ENOTSUP) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut list = Vec::with_capacity(raw.len());
        for name in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if !self.is_hidden_xattr(name) {
                list.extend_from_slice(name);
                list.push(0);
            }
        }
        if size == 0 {
            Ok(XattrReply::Size(list.len() as u32))
        } else if list.len() > size as usize {
            Err(Errno::ERANGE)
        } else {
            Ok(XattrReply::Data(list))
        }
    }

    pub fn setxattr(&self, id: NodeId, attr: &CStr, value: &[u8], flags: i32) -> Result<()> {
        if self.is_hidden_xattr(attr.to_bytes()) {
            return Err(Errno::EPERM);
        }
        let node = self.node(id)?;
        self.upper()?;
        self.copy_up(&node, CopyData::Meta)?;
        let real = self.real(&node)?;
        real.dir.dir.set_xattr(real.name(), attr, value, flags)
    }

    pub fn removexattr(&self, id: NodeId, attr: &CStr) -> Result<()> {
        if self.is_hidden_xattr(attr.to_bytes()) {
            return Err(Errno::ENODATA);
        }
        let node = self.node(id)?;
        self.upper()?;
        {
            // Nothing to remove: no reason to copy up.
            let real = self.real(&node)?;
            if real.dir.dir.get_xattr(real.name(), attr)?.is_none() {
                return Err(Errno::ENODATA);
            }
        }
        self.copy_up(&node, CopyData::Meta)?;
        let real = self.real(&node)?;
        real.dir.dir.remove_xattr(real.name(), attr)
    }
}
