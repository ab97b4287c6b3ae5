//! Copy-up killed half way, many threads at once, and memory under FORGET.

use super::*;

/// A fresh copy of `/proc/PID/task`'s size.
fn thread_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// How many nodes (inodes the kernel holds a reference to) the daemon
/// serving `mnt` keeps, from `unionctl status`.
fn node_count(mnt: &Path) -> u64 {
    let out = std::process::Command::new(bin("unionctl"))
        .args(["status", "--json"])
        .arg(mnt)
        .output()
        .expect("unionctl status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "unionctl status: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["nodes"].as_u64().expect("a node count")
}

/// The 8 bytes at every 8-byte offset of the big test file: the offset.
fn pattern(off: u64, buf: &mut [u8]) {
    for (i, c) in buf.chunks_mut(8).enumerate() {
        c.copy_from_slice(&(off + 8 * i as u64).to_le_bytes()[..c.len()]);
    }
}

#[test]
fn copy_up_is_atomic_when_the_daemon_is_killed() {
    const SIZE: u64 = 2 << 30;
    const CHUNK: usize = 16 << 20;
    let s = Scratch::new("atomic");
    let (l1, up, work, mnt) = (s.dir("l1"), s.dir("u"), s.dir("w"), s.dir("m"));
    let mut buf = vec![0u8; CHUNK];
    {
        let mut f = File::create(l1.join("big")).unwrap();
        for off in (0..SIZE).step_by(CHUNK) {
            pattern(off, &mut buf);
            f.write_all(&buf).unwrap();
        }
    }
    let mut m = mount(
        Via::Compat,
        std::slice::from_ref(&l1),
        Some((&up, &work)),
        &mnt,
        &[],
    );
    let pid = m.daemon_pid().expect("daemon pid");
    let big = m.p("big");
    let append = std::thread::spawn(move || {
        OpenOptions::new()
            .append(true)
            .open(&big)
            .and_then(|mut f| f.write_all(b"tail"))
    });
    let scratch = work.join("work");
    let started = wait_for(Duration::from_secs(5), || {
        fs::read_dir(&scratch).is_ok_and(|mut d| d.next().is_some())
    });
    std::thread::sleep(Duration::from_millis(50));
    let leftover = ls(&scratch);
    // SAFETY: kill(2) of the daemon we started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert!(
        wait_for(Duration::from_secs(10), || process_gone(pid)),
        "daemon survived SIGKILL"
    );
    let r = append.join().unwrap();
    eprintln!("atomic copy-up: copy seen in the work dir: {started}; entries there at the kill: {leftover:?}; append: {r:?}");
    assert!(
        r.is_err(),
        "the copy-up finished before the kill; the test proves nothing (make the file bigger)"
    );
    assert!(
        !exists(&up.join("big")),
        "a half copy is visible in the upper layer: {:?}",
        fs::symlink_metadata(up.join("big"))
    );
    m.detach();

    let m = mount(
        Via::Compat,
        std::slice::from_ref(&l1),
        Some((&up, &work)),
        &mnt,
        &[],
    );
    assert!(
        ls(&work.join("work")).is_empty(),
        "the new mount emptied <work>/work: {:?}",
        ls(&work.join("work"))
    );
    assert!(!exists(&up.join("big")));
    let mut f = File::open(m.p("big")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), SIZE);
    let mut want = vec![0u8; CHUNK];
    for off in (0..SIZE).step_by(CHUNK) {
        f.read_exact(&mut buf).unwrap();
        pattern(off, &mut want);
        assert!(buf == want, "lower file corrupted at {off}");
    }
}

#[test]
fn concurrent_operations_in_one_directory() {
    const THREADS: usize = 8;
    let u = setup("conc", Via::Compat, |l1, l2| {
        for k in 0..16 {
            l2.file(&format!("c/s{k}"), &format!("shared {k}").repeat(100));
        }
        for i in 0..THREADS {
            l1.file(&format!("c/own{i}-a"), &format!("own {i}"));
        }
        l1.bytes("c/race", &[0xff; THREADS * 4096]);
    });
    let dir = u.p("c");
    let barrier = std::sync::Barrier::new(THREADS);
    let deadline = Instant::now() + Duration::from_secs(4);
    let results: Vec<Result<usize, String>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (dir, barrier) = (&dir, &barrier);
                sc.spawn(move || -> Result<usize, String> {
                    barrier.wait();
                    let race = OpenOptions::new()
                        .write(true)
                        .open(dir.join("race"))
                        .map_err(|e| format!("open race: {e}"))?;
                    race.write_all_at(&[i as u8; 4096], (i * 4096) as u64)
                        .map_err(|e| format!("write race: {e}"))?;
                    drop(race);
                    let mut n = 0;
                    let mut own = 'a';
                    while Instant::now() < deadline {
                        let k = (i + n) % 16;
                        let s = fs::read_to_string(dir.join(format!("s{k}")))
                            .map_err(|e| format!("read s{k}: {e}"))?;
                        if s != format!("shared {k}").repeat(100) {
                            return Err(format!("s{k} reads wrong"));
                        }
                        let (tmp, fin) =
                            (dir.join(format!("t{i}-{n}")), dir.join(format!("r{i}-{n}")));
                        fs::write(&tmp, format!("{i}:{n}"))
                            .map_err(|e| format!("create {tmp:?}: {e}"))?;
                        fs::rename(&tmp, &fin).map_err(|e| format!("rename {tmp:?}: {e}"))?;
                        if fs::read_to_string(&fin).map_err(|e| format!("read {fin:?}: {e}"))?
                            != format!("{i}:{n}")
                        {
                            return Err(format!("{fin:?} reads wrong"));
                        }
                        if n % 10 != 0 {
                            fs::remove_file(&fin).map_err(|e| format!("unlink {fin:?}: {e}"))?;
                        }
                        let next = if own == 'a' { 'b' } else { 'a' };
                        let (from, to) = (
                            dir.join(format!("own{i}-{own}")),
                            dir.join(format!("own{i}-{next}")),
                        );
                        fs::rename(&from, &to).map_err(|e| format!("rename {from:?}: {e}"))?;
                        own = next;
                        if fs::read_to_string(&to).map_err(|e| format!("read {to:?}: {e}"))?
                            != format!("own {i}")
                        {
                            return Err(format!("{to:?} reads wrong"));
                        }
                        if n % 16 == 0 {
                            let names = ls(dir);
                            let mine = names
                                .iter()
                                .filter(|x| x.starts_with(&format!("own{i}-")))
                                .count();
                            if mine != 1 {
                                return Err(format!("thread {i} sees {mine} own{i}-* names"));
                            }
                        }
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        let pid = u.m.daemon_pid().expect("daemon pid");
        std::thread::sleep(Duration::from_millis(500));
        let threads = thread_count(pid);
        eprintln!("concurrency: daemon {pid} has {threads} threads");
        assert!(
            threads >= 3,
            "the daemon should serve with several threads, has {threads}"
        );
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut want: Vec<String> = (0..16).map(|k| format!("s{k}")).collect();
    want.push("race".into());
    for (i, r) in results.iter().enumerate() {
        let n = r.as_ref().unwrap_or_else(|e| panic!("thread {i}: {e}"));
        eprintln!("concurrency: thread {i} did {n} rounds");
        want.extend((0..*n).step_by(10).map(|k| format!("r{i}-{k}")));
        want.push(format!("own{i}-{}", if n % 2 == 0 { 'a' } else { 'b' }));
    }
    want.sort();
    drop_caches();
    assert_eq!(ls(&dir), want, "the directory after the storm");
    let race = fs::read(dir.join("race")).unwrap();
    for i in 0..THREADS {
        assert!(
            race[i * 4096..(i + 1) * 4096].iter().all(|&b| b == i as u8),
            "racing copy-up lost thread {i}'s write"
        );
    }
}

#[test]
fn forget_keeps_daemon_memory_bounded() {
    const DIRS: usize = 100;
    const FILES: usize = 1000;
    let s = Scratch::new("forget");
    let (l1, up, work, mnt) = (s.dir("l1"), s.dir("u"), s.dir("w"), s.dir("m"));
    for d in 0..DIRS {
        let dir = l1.join(format!("d{d:03}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..FILES {
            File::create(dir.join(format!("file-with-a-longish-name-{f:05}"))).unwrap();
        }
    }
    let m = mount(Via::Unionctl, &[l1], Some((&up, &work)), &mnt, &[]);
    let pid = m.daemon_pid().expect("daemon pid");
    let walk = |dirs: std::ops::Range<usize>| {
        for d in dirs {
            let dir = m.p(&format!("d{d:03}"));
            let mut n = 0;
            for e in fs::read_dir(&dir).unwrap() {
                lstat(&e.unwrap().path());
                n += 1;
            }
            assert_eq!(n, FILES);
        }
    };
    // Other tests of this run must not make the kernel forget our nodes
    // half way through a measurement.
    let caches = hold_caches();
    let settle = || {
        caches.drop_caches();
        std::thread::sleep(Duration::from_millis(500));
    };
    let base = rss_kib(pid);
    // Ten dirs at a time, the kernel forgetting in between: the daemon
    // never needs more than ~10,000 nodes. Counted by the daemon itself:
    // its RSS also holds the index's block cache and whatever the
    // allocator keeps, which made an RSS ratio here fail now and then.
    let mut batched_nodes = 0;
    let mut batched = 0;
    for b in 0..10 {
        walk(b * 10..(b + 1) * 10);
        batched_nodes = batched_nodes.max(node_count(&m.mnt));
        batched = batched.max(rss_kib(pid));
        settle();
    }
    let forgotten = node_count(&m.mnt);
    walk(0..DIRS);
    let full_nodes = node_count(&m.mnt);
    let full = rss_kib(pid);
    settle();
    walk(0..DIRS);
    let again = rss_kib(pid);
    eprintln!(
        "forget: nodes at most {batched_nodes} per batch, {forgotten} after the last, {full_nodes} after a full walk; \
         RSS KiB base {base}, batches {batched}, full walk {full}, again {again}"
    );
    let per_batch = (10 * (FILES + 1)) as u64;
    assert!(
        full_nodes >= (DIRS * FILES) as u64,
        "a full walk holds only {full_nodes} nodes: the count does not track lookups"
    );
    assert!(
        batched_nodes <= 2 * per_batch,
        "walking in forgotten batches held up to {batched_nodes} nodes (a batch is {per_batch}): nodes are not freed on FORGET"
    );
    assert!(
        forgotten < per_batch,
        "{forgotten} nodes left after the kernel forgot them"
    );
    assert!(
        again <= full + full / 5,
        "RSS grew from {full} to {again} KiB on the second walk"
    );
}
