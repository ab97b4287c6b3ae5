"""Runs every workload on every implementation, round by round, and keeps the figures.

Within a round the implementations run one after the other (in an order that
rotates from round to round), so a ratio to the kernel pairs figures taken
within seconds of each other.
"""

import os
import shutil
import subprocess
import time

from .system import BenchError, drop_caches, log, memory_kib, mount_fstype, pid_alive
from .workloads import CheckFailed


class StepFailed(Exception):
    pass


class Suite:
    def __init__(self, sizes, data, unions, workloads, ctx, runs_dir, out_dir):
        """runs_dir: upper, work and mount directories (beside the layers); out_dir: commands' output."""
        self.sizes, self.data, self.unions, self.workloads = sizes, data, unions, workloads
        self.ctx, self.runs_dir, self.out_dir = ctx, runs_dir, out_dir
        self.values = {}  # row -> impl -> [figure or None per round]
        self.extras = {}  # row -> impl -> [dict per round]
        self.problems = []  # dicts: workload, impl, round, kind, message
        self.fingerprints = {}  # workload -> impl -> fingerprint
        self.live = []  # mounts to take down if we are interrupted
        self.phases = {}  # seconds spent in each phase of the last run, for the progress log

    def phase(self, name, started):
        now = time.monotonic()
        self.phases[name] = now - started
        return now

    def run(self):
        for wl in self.workloads:
            started = time.monotonic()
            for rnd in range(self.sizes.runs):
                shift = rnd % len(self.unions)
                for union in self.unions[shift:] + self.unions[:shift]:
                    t0 = time.monotonic()
                    self.run_once(wl, union, rnd)
                    phases = ", ".join(f"{k} {v:.1f}" for k, v in self.phases.items())
                    log(f"{wl.name} run {rnd + 1} on {union.label}: {time.monotonic() - t0:.1f} s ({phases})")
            self.compare_fingerprints(wl)
            log(f"{wl.name}: done in {time.monotonic() - started:.0f} s")

    def record(self, table, row, union, rnd, value):
        runs = table.setdefault(row, {}).setdefault(union.key, [None] * self.sizes.runs)
        runs[rnd] = value

    def problem(self, wl, union, rnd, kind, message):
        log(f"PROBLEM {wl.name} on {union.label} (run {rnd + 1}): {kind}: {message}")
        self.problems.append(dict(workload=wl.name, rows=[r.key for r in wl.rows], impl=union.key,
                                  round=rnd + 1, kind=kind, message=message))

    def run_once(self, wl, union, rnd):
        base = os.path.join(self.runs_dir, union.key)
        upper, work, mnt = (os.path.join(base, d) for d in ("upper", "work", "mnt"))
        for d in (upper, work, mnt):
            os.makedirs(d)
        self.ctx.scratch = os.path.join(self.out_dir, union.key)
        os.makedirs(self.ctx.scratch, exist_ok=True)
        self.phases = {}
        t = time.monotonic()
        wl.prepare_upper(self.ctx, upper)
        t = self.phase("prepare", t)
        stack = self.data.stack(wl.stack)
        self.ctx.union, self.ctx.stack, self.ctx.base = union, stack, base
        mounted = union.mount(stack, upper, work, mnt)  # BenchError stops the suite
        self.live.append(mounted)
        t = self.phase("mount", t)
        try:
            wl.before(self.ctx, mnt)
            t = self.phase("before", t)
            drop_caches() if wl.cold else os.sync()
            t = self.phase("drop" if wl.cold else "sync", t)
            for step in wl.steps(self.ctx, mnt):
                self.record(self.values, step.row, union, rnd, self.timed(step, mounted))
            t = self.phase("timed", t)
            wl.check(self.ctx, mnt, upper)
            t = self.phase("check", t)
            if getattr(wl, "rss", False) and mounted.pid:
                self.record_memory(wl, union, rnd, mounted)
            seen = self.fingerprints.setdefault(wl.name, {})
            if union.key not in seen:  # the first good run of each implementation is compared
                fp = wl.fingerprint(self.ctx, mnt)
                if fp is not None:
                    seen[union.key] = fp
        except StepFailed as e:
            self.problem(wl, union, rnd, "failed", str(e))
        except CheckFailed as e:
            self.problem(wl, union, rnd, "wrong result", str(e))
        except (OSError, subprocess.SubprocessError) as e:
            self.problem(wl, union, rnd, "error", f"{type(e).__name__}: {e}")
        finally:
            t = time.monotonic()
            for issue in wl.cleanup(self.ctx):
                self.problem(wl, union, rnd, "unmount", issue)
            for issue in mounted.unmount():
                self.problem(wl, union, rnd, "unmount", issue)
            self.live.remove(mounted)
            if mount_fstype(mnt) is not None:
                raise BenchError(f"{union.label}: {mnt} is still mounted after unmount")
            shutil.rmtree(base)
            self.phase("umount", t)

    def timed(self, step, mounted):
        out = open(step.stdout, "wb") if step.stdout else subprocess.DEVNULL
        try:
            t0 = time.perf_counter()
            p = subprocess.run(step.argv, stdout=out, stderr=subprocess.PIPE, env=self.ctx.env,
                               cwd=step.cwd, timeout=self.sizes.timeout_s)
            wall = time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{step.row}: still running after {self.sizes.timeout_s} s: {' '.join(step.argv)}")
        finally:
            if step.stdout:
                out.close()
        err = p.stderr.decode(errors="replace").strip()
        if mounted.pid and not pid_alive(mounted.pid):
            raise StepFailed(f"{step.row}: the daemon (pid {mounted.pid}) died; {err[-300:]}")
        if p.returncode != 0:
            raise StepFailed(f"{step.row}: {' '.join(step.argv)} exited {p.returncode}: {err[-500:]}")
        if err and step.quiet:
            raise StepFailed(f"{step.row}: exit 0 but printed errors: {err[-500:]}")
        return step.value(wall, step.stdout) if step.value else wall

    def record_memory(self, wl, union, rnd, mounted):
        rss, hwm = memory_kib(mounted.pid)
        extra = {"rss_kib": rss, "peak_rss_kib": hwm}
        if hasattr(union, "status"):
            extra["status"] = union.status(mounted.mnt)
        self.record(self.values, "rss_peak", union, rnd, hwm / 1024)
        self.record(self.extras, "rss_peak", union, rnd, extra)

    def compare_fingerprints(self, wl):
        fps = self.fingerprints.get(wl.name, {})
        reference = fps.get("kernel")
        if reference is None:
            return
        for union in self.unions:
            fp = fps.get(union.key)
            if fp is None or fp == reference:
                continue
            missing = sorted(set(reference) - set(fp))[:5]
            extra = sorted(set(fp) - set(reference))[:5]
            self.problem(wl, union, 0, "differs from kernel overlayfs",
                         f"{len(fp)} vs {len(reference)} items; missing {missing}, extra {extra}")

    def emergency_cleanup(self):
        for mounted in reversed(self.live):
            try:
                mounted.unmount()
            except Exception as e:  # keep going: every mount must come down
                log(f"could not unmount {mounted.mnt}: {e}")
        self.live.clear()
