//! containerd's filter syntax, for `List`: several filters are alternatives
//! (any may match); the comma-separated selectors of one filter must all
//! match. A selector is a field path (`kind`, `name`, `parent`,
//! `labels."containerd.io/gc.root"`) alone (present and non-empty) or with
//! `==`, `!=` or `~=` (a regular expression) and a value, bare or quoted.

use regex::Regex;

use crate::store::snapshots::SnapshotInfo;

#[derive(Debug)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
    Matches(Regex),
}

#[derive(Debug)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// Parsed filters; an empty set matches everything.
#[derive(Debug, Default)]
pub struct Filters(Vec<Vec<Selector>>);

impl Filters {
    pub fn parse(filters: &[String]) -> Result<Filters, String> {
        let mut out = Vec::new();
        for f in filters.iter().filter(|f| !f.trim().is_empty()) {
            out.push(parse_filter(f).map_err(|e| format!("filter {f:?}: {e}"))?);
        }
        Ok(Filters(out))
    }

    pub fn matches(&self, s: &SnapshotInfo) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|all| all.iter().all(|sel| sel.matches(s)))
    }
}

impl Selector {
    fn matches(&self, s: &SnapshotInfo) -> bool {
        let value: Option<&str> = match self.path.as_slice() {
            [f] if f == "name" => Some(&s.key),
            [f] if f == "parent" => Some(&s.parent),
            [f] if f == "kind" => Some(s.kind.name()),
            [f, k] if f == "labels" => s.labels.get(k).map(String::as_str),
            _ => None,
        };
        match (&self.op, value) {
            (Op::Present, v) => v.is_some_and(|v| !v.is_empty()),
            (Op::Eq(want), v) => v == Some(want.as_str()),
            (Op::Ne(want), v) => v != Some(want.as_str()),
            (Op::Matches(re), v) => v.is_some_and(|v| re.is_match(v)),
        }
    }
}

struct Scanner<'a> {
    s: &'a str,
    pos: usize,
}

impl Scanner<'_> {
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.s.len() - trimmed.len();
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    /// A quoted string (`"…"` with `\` escapes, or `/…/`), if one starts here.
    fn quoted(&mut self) -> Result<Option<String>, String> {
        self.skip_space();
        let Some(q) = self
            .rest()
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '/')
        else {
            return Ok(None);
        };
        let mut out = String::new();
        let s = self.s;
        let mut chars = s[self.pos..].char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => out.push(e),
                    None => break,
                },
                c if c == q => {
                    self.pos += i + c.len_utf8();
                    return Ok(Some(out));
                }
                c => out.push(c),
            }
        }
        Err("unterminated quote".into())
    }

    fn field(&mut self) -> Result<String, String> {
        if let Some(q) = self.quoted()? {
            return Ok(q);
        }
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(format!("expected a field name at {:?}", self.rest()));
        }
        let f = self.rest()[..len].to_string();
        self.pos += len;
        Ok(f)
    }

    fn value(&mut self) -> Result<String, String> {
        if let Some(q) = self.quoted()? {
            return Ok(q);
        }
        let len = self.rest().find(',').unwrap_or(self.rest().len());
        let v = self.rest()[..len].trim().to_string();
        self.pos += len;
        Ok(v)
    }
}

fn parse_filter(f: &str) -> Result<Vec<Selector>, String> {
    let mut sc = Scanner { s: f, pos: 0 };
    let mut all = Vec::new();
    loop {
        let mut path = vec![sc.field()?];
        while sc.eat(".") {
            path.push(sc.field()?);
        }
        let op = if sc.eat("==") {
            Op::Eq(sc.value()?)
        } else if sc.eat("!=") {
            Op::Ne(sc.value()?)
        } else if sc.eat("~=") {
            let v = sc.value()?;
            Op::Matches(Regex::new(&v).map_err(|e| format!("bad expression {v:?}: {e}"))?)
        } else {
            Op::Present
        };
        all.push(Selector { path, op });
        if sc.eat(",") {
            continue;
        }
        sc.skip_space();
        if sc.rest().is_empty() {
            return Ok(all);
        }
        return Err(format!("unexpected {:?}", sc.rest()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::snapshots::SnapshotKind;
    use std::time::SystemTime;

    fn snap(key: &str, kind: SnapshotKind, labels: &[(&str, &str)]) -> SnapshotInfo {
        SnapshotInfo {
            key: key.into(),
            kind,
            parent: "base".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    fn f(fs: &[&str]) -> Filters {
        Filters::parse(&fs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("parses")
    }

    #[test]
    fn selectors_and_alternatives() {
        let a = snap(
            "k8s.io/1/a",
            SnapshotKind::Active,
            &[("containerd.io/gc.root", "x")],
        );
        let c = snap("k8s.io/2/c", SnapshotKind::Committed, &[]);
        assert!(f(&[]).matches(&a));
        assert!(f(&["kind==active"]).matches(&a));
        assert!(!f(&["kind==active"]).matches(&c));
        assert!(f(&["kind!=active"]).matches(&c));
        assert!(f(&[r#"labels."containerd.io/gc.root""#]).matches(&a));
        assert!(!f(&[r#"labels."containerd.io/gc.root""#]).matches(&c));
        assert!(f(&[r#"labels."containerd.io/gc.root"==x,kind==active"#]).matches(&a));
        assert!(!f(&[r#"labels."containerd.io/gc.root"==y,kind==active"#]).matches(&a));
        assert!(f(&["kind==view", "name~=^k8s\\.io/2/"]).matches(&c));
        assert!(f(&[r#"parent=="base""#]).matches(&c));
    }

    #[test]
    fn bad_filters_say_why() {
        let parse = |s: &str| Filters::parse(&[s.to_string()]).err().unwrap_or_default();
        assert!(
            parse(r#"labels."open"#).contains("unterminated"),
            "{}",
            parse(r#"labels."open"#)
        );
        assert!(parse("name~=(").contains("bad expression"));
        assert!(parse("==x").contains("field name"));
    }
}
