use super::*;

fn open() -> (tempfile::TempDir, Snapshots) {
    let t = tempfile::tempdir().expect("tempdir");
    let s = Snapshots::open(t.path()).expect("open");
    (t, s)
}

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn opt<'m>(m: &'m SnapshotMount, key: &str) -> Option<&'m str> {
    m.options
        .iter()
        .find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// Commits `key` on `parent` holding one file, and returns its layer dir.
fn layer(s: &Snapshots, name: &str, parent: &str, file: &str) -> PathBuf {
    let key = format!("{name}-active");
    let m = s
        .create(SnapshotKind::Active, &key, parent, HashMap::new())
        .expect("prepare");
    let upper = match m[0].kind.as_str() {
        "bind" => PathBuf::from(&m[0].source),
        _ => PathBuf::from(opt(&m[0], "upperdir").expect("upperdir")),
    };
    std::fs::write(upper.join(file), file).expect("write");
    s.commit(name, &key, HashMap::new()).expect("commit");
    upper
}

#[test]
fn prepare_commit_view_and_the_mounts_of_each() {
    let (_t, s) = open();
    let base = s
        .create(SnapshotKind::Active, "ns/1/base", "", HashMap::new())
        .expect("prepare");
    assert_eq!(base.len(), 1);
    assert_eq!(base[0].kind, "bind");
    assert!(base[0].options.contains(&"rw".to_string()));
    let l1 = layer(&s, "l1", "", "a");
    let l2 = layer(&s, "l2", "l1", "b");

    // An active snapshot on two layers: a union, nearest parent first.
    let m = s
        .create(SnapshotKind::Active, "ns/2/c", "l2", labels(&[("x", "1")]))
        .expect("prepare");
    assert_eq!(m[0].kind, FUSE_TYPE);
    let want = format!("{}:{}", l2.display(), l1.display());
    assert_eq!(opt(&m[0], "lowerdir"), Some(want.as_str()));
    assert!(opt(&m[0], "upperdir").is_some() && opt(&m[0], "workdir").is_some());
    assert_eq!(opt(&m[0], "fsname"), Some(m[0].source.as_str()));
    assert_eq!(s.mounts("ns/2/c").expect("mounts"), m);

    // Views: one parent is a read-only bind of it, more a read-only union.
    let v1 = s
        .create(SnapshotKind::View, "v1", "l1", HashMap::new())
        .expect("view");
    assert_eq!(v1[0].kind, "bind");
    assert_eq!(PathBuf::from(&v1[0].source), l1);
    assert!(v1[0].options.contains(&"ro".to_string()));
    let v2 = s
        .create(SnapshotKind::View, "v2", "l2", HashMap::new())
        .expect("view");
    assert_eq!(v2[0].kind, FUSE_TYPE);
    assert!(v2[0].options.contains(&"ro".to_string()));
    assert_eq!(opt(&v2[0], "upperdir"), None);

    let i = s.stat("ns/2/c").expect("stat");
    assert_eq!((i.kind, i.parent.as_str()), (SnapshotKind::Active, "l2"));
    assert_eq!(i.labels.get("x").map(String::as_str), Some("1"));
    let kinds: Vec<_> = s
        .list()
        .expect("list")
        .iter()
        .map(|i| (i.key.clone(), i.kind))
        .collect();
    assert_eq!(kinds.len(), 6, "{kinds:?}");
}

#[test]
fn errors_name_their_kind() {
    let (_t, s) = open();
    layer(&s, "l1", "", "a");
    s.create(SnapshotKind::Active, "a", "l1", HashMap::new())
        .expect("prepare");
    let e = s.create(SnapshotKind::Active, "a", "l1", HashMap::new());
    assert!(matches!(e, Err(SnapshotError::AlreadyExists(_))), "{e:?}");
    let e = s.create(SnapshotKind::Active, "b", "nope", HashMap::new());
    assert!(matches!(e, Err(SnapshotError::NotFound(_))), "{e:?}");
    let e = s.create(SnapshotKind::Active, "b", "a", HashMap::new());
    assert!(matches!(e, Err(SnapshotError::InvalidArgument(_))), "{e:?}");
    let e = s.remove("l1");
    assert!(
        matches!(e, Err(SnapshotError::FailedPrecondition(_))),
        "{e:?}"
    );
    let e = s.commit("l1", "a", HashMap::new());
    assert!(matches!(e, Err(SnapshotError::AlreadyExists(_))), "{e:?}");
    s.create(SnapshotKind::View, "v", "l1", HashMap::new())
        .expect("view");
    let e = s.commit("c", "v", HashMap::new());
    assert!(
        matches!(e, Err(SnapshotError::FailedPrecondition(_))),
        "{e:?}"
    );
    let e = s.mounts("l1");
    assert!(
        matches!(e, Err(SnapshotError::FailedPrecondition(_))),
        "{e:?}"
    );
    let e = s.stat("gone");
    assert!(matches!(e, Err(SnapshotError::NotFound(_))), "{e:?}");
    // Nothing above changed the table.
    let keys: Vec<_> = s.list().expect("list").into_iter().map(|i| i.key).collect();
    assert_eq!(keys, ["a", "l1", "v"]);
}

#[test]
fn remove_takes_the_directory_and_keeps_the_rest() {
    let (t, s) = open();
    let l1 = layer(&s, "l1", "", "a");
    let m = s
        .create(SnapshotKind::Active, "c", "l1", HashMap::new())
        .expect("prepare");
    let upper = PathBuf::from(opt(&m[0], "upperdir").expect("upper"));
    s.remove("c").expect("remove");
    assert!(!upper.exists());
    assert!(l1.join("a").exists());
    s.remove("l1").expect("remove");
    assert!(!l1.exists());
    assert!(s.list().expect("list").is_empty());
    // Nothing left in staging either.
    let tmp: Vec<_> = std::fs::read_dir(t.path().join("tmp"))
        .expect("tmp")
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn a_directory_the_table_does_not_name_is_cleaned_up() {
    let (t, s) = open();
    layer(&s, "l1", "", "a");
    // What a crash between the rename and the table write leaves.
    let orphan = t.path().join("snapshots/999");
    std::fs::create_dir_all(orphan.join("fs/deep")).expect("mkdir");
    drop(s);
    let s = Snapshots::open(t.path()).expect("reopen");
    assert!(!orphan.exists());
    assert_eq!(s.list().expect("list").len(), 1);
    // And a later snapshot never reuses an id the table gave out.
    let m = s
        .create(SnapshotKind::Active, "n", "", HashMap::new())
        .expect("prepare");
    assert!(m[0].source.ends_with("/snapshots/2/fs"), "{}", m[0].source);
}

#[test]
fn labels_update_by_path_or_whole() {
    let (_t, s) = open();
    s.create(
        SnapshotKind::Active,
        "a",
        "",
        labels(&[("k1", "v1"), ("k2", "v2")]),
    )
    .expect("prepare");
    let mut i = s.stat("a").expect("stat");
    i.labels = labels(&[("k1", "new"), ("k3", "v3")]);
    let paths = ["labels.k1".to_string(), "labels.k2".to_string()];
    let out = s.update(i.clone(), &paths).expect("update");
    assert_eq!(out.labels, labels(&[("k1", "new")]));
    let out = s.update(i.clone(), &[]).expect("update");
    assert_eq!(out.labels, labels(&[("k1", "new"), ("k3", "v3")]));
    assert!(out.updated >= out.created);
    let e = s.update(i, &["parent".to_string()]);
    assert!(matches!(e, Err(SnapshotError::InvalidArgument(_))), "{e:?}");
}

#[test]
fn usage_counts_blocks_and_inodes_once_per_hard_link() {
    let (_t, s) = open();
    let m = s
        .create(SnapshotKind::Active, "a", "", HashMap::new())
        .expect("prepare");
    let fs = PathBuf::from(&m[0].source);
    std::fs::create_dir(fs.join("d")).expect("mkdir");
    std::fs::write(fs.join("d/f"), vec![7u8; 64 * 1024]).expect("write");
    std::fs::hard_link(fs.join("d/f"), fs.join("g")).expect("link");
    std::os::unix::fs::symlink("/etc", fs.join("escape")).expect("symlink");
    let u = s.usage("a").expect("usage");
    // fs, d, f (once), escape: the symlink is not followed.
    assert_eq!(u.inodes, 4);
    assert!(u.size >= 64 * 1024, "{u:?}");
    s.commit("c", "a", HashMap::new()).expect("commit");
    assert_eq!(s.usage("c").expect("usage"), u);
}

#[test]
fn a_root_mount_options_cannot_name_is_refused() {
    let t = tempfile::tempdir().expect("tempdir");
    let e = Snapshots::open(&t.path().join("a,b"));
    assert!(matches!(e, Err(SnapshotError::InvalidArgument(_))), "{e:?}");
}
