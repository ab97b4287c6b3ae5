//! uid/gid mapping between what the layers store and what the mount shows
//! (`uidmapping=`/`gidmapping=`, as containers/storage passes them for
//! containers with their own id ranges), and squashing (`squash_to_*`).
//!
//! A mapping `A:B:N` shows the ids `A..A+N` stored in the layers as
//! `B..B+N` in the mount, and stores ids a client sets the other way round.
//! Ids outside every range show as the overflow id (65534).

/// One `A:B:N` range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub stored: u32,
    pub shown: u32,
    pub len: u32,
}

/// The id seen for ids nobody maps.
pub const OVERFLOW_ID: u32 = 65534;

/// A set of ranges plus an optional squash; empty means identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    pub ranges: Vec<IdRange>,
    /// Every id shows as this one (`squash_to_uid=`, `squash_to_root`).
    pub squash: Option<u32>,
}

impl IdMap {
    /// Parses `A:B:N[:A:B:N…]`; empty fields (podman sends a leading `:`)
    /// are skipped.
    pub fn parse(s: &str) -> Result<Vec<IdRange>, String> {
        let fields: Vec<&str> = s.split(':').filter(|f| !f.is_empty()).collect();
        if fields.is_empty() || fields.len() % 3 != 0 {
            return Err(format!("'{s}': expected STORED:SHOWN:COUNT triples"));
        }
        let num = |f: &str| {
            f.parse::<u32>()
                .map_err(|_| format!("'{s}': '{f}' is not an id"))
        };
        fields
            .chunks(3)
            .map(|c| {
                let r = IdRange {
                    stored: num(c[0])?,
                    shown: num(c[1])?,
                    len: num(c[2])?,
                };
                if r.len == 0
                    || r.stored.checked_add(r.len - 1).is_none()
                    || r.shown.checked_add(r.len - 1).is_none()
                {
                    return Err(format!(
                        "'{s}': range {}:{}:{} is empty or overflows",
                        c[0], c[1], c[2]
                    ));
                }
                Ok(r)
            })
            .collect()
    }

    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty() && self.squash.is_none()
    }

    /// The id a stored id shows as.
    pub fn shown(&self, stored: u32) -> u32 {
        if let Some(s) = self.squash {
            return s;
        }
        if self.ranges.is_empty() {
            return stored;
        }
        self.ranges
            .iter()
            .find(|r| stored >= r.stored && stored - r.stored < r.len)
            .map_or(OVERFLOW_ID, |r| r.shown + (stored - r.stored))
    }

    /// The id to store for a shown id; `None` when no range covers it.
    pub fn stored(&self, shown: u32) -> Option<u32> {
        if self.ranges.is_empty() {
            return Some(shown);
        }
        self.ranges
            .iter()
            .find(|r| shown >= r.shown && shown - r.shown < r.len)
            .map(|r| r.stored + (shown - r.shown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_engine_forms() {
        let r = IdMap::parse(":0:100000:65536").unwrap();
        assert_eq!(
            r,
            vec![IdRange {
                stored: 0,
                shown: 100000,
                len: 65536
            }]
        );
        assert_eq!(IdMap::parse("0:1000:1:1:100000:65535").unwrap().len(), 2);
        assert!(IdMap::parse("0:1").is_err());
        assert!(IdMap::parse("0:x:1").is_err());
        assert!(IdMap::parse("0:1:0").is_err());
        assert!(IdMap::parse("4294967295:0:2").is_err());
    }

    #[test]
    fn maps_both_ways() {
        let m = IdMap {
            ranges: IdMap::parse("0:100000:65536").unwrap(),
            squash: None,
        };
        assert_eq!(m.shown(0), 100000);
        assert_eq!(m.shown(1000), 101000);
        assert_eq!(m.shown(70000), OVERFLOW_ID);
        assert_eq!(m.stored(101000), Some(1000));
        assert_eq!(m.stored(5), None);
        let id = IdMap::default();
        assert_eq!((id.shown(7), id.stored(7)), (7, Some(7)));
        let sq = IdMap {
            ranges: Vec::new(),
            squash: Some(0),
        };
        assert_eq!(sq.shown(1234), 0);
    }
}
