"""Medians, ratios to kernel overlayfs, the printed table and the JSON file."""

import json
import statistics

CACHE_NOTES = {
    "cold": "fresh mount and upper layer, caches dropped (sync; echo 3 > drop_caches) right before",
    "hot": "fresh mount, the file read once through the mount before the timed read",
    "warm": "fresh mount, the lower file read straight from its layer directory before (page cache warm), never through the mount",
    "fresh": "fresh mount and upper layer, inputs in the page cache, dirty data synced before",
    "again": "the same mount right after the cold walk (measures the kernel's caching of the union)",
    "warm dirs": "right after the cold row above, on the same mount: the directories are known, the names are new",
    "warm index": "a second mount of a stack already mounted (layerfs: its index already built), on a fresh upper layer",
}


def median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ratios(values, kernel):
    """impl/kernel, pairing figures of the same round."""
    return [v / k for v, k in zip(values, kernel) if v is not None and k]


def summarize(suite):
    rows = {}
    for wl in suite.workloads:
        for row in wl.rows:
            runs = suite.values.get(row.key, {})
            kernel = runs.get("kernel")
            entry = {"label": row.label.format(**suite.sizes.as_dict()), "cache": row.cache,
                     "unit": row.unit, "workload": wl.name, "runs": runs, "median": {}, "ratio_to_kernel": {},
                     "ratios": {}}
            for union in suite.unions:
                vals = runs.get(union.key)
                if vals is None:
                    continue
                entry["median"][union.key] = median(vals)
                if kernel and union.key != "kernel":
                    r = ratios(vals, kernel)
                    entry["ratios"][union.key] = r
                    entry["ratio_to_kernel"][union.key] = median(r)
            if row.key in suite.extras:
                entry["extras"] = suite.extras[row.key]
            rows[row.key] = entry
    return rows


def cell(entry, key, flagged):
    value = entry["median"].get(key)
    if value is None:
        return "FAIL" if key in entry["runs"] or flagged else "–"
    text = f"{value:.1f} MiB" if entry["unit"] == "MiB" else fmt_seconds(value)
    ratio = entry["ratio_to_kernel"].get(key)
    if ratio is not None:
        text += f" ({ratio:.2f}×)"
    return text + (" !" if flagged else "")


def fmt_seconds(s):
    return f"{s:.3f} s" if s < 10 else f"{s:.1f} s"


def table(suite, rows):
    flagged = {(r, p["impl"]) for p in suite.problems for r in p["rows"]}
    head = ["workload", "cache"] + [u.label for u in suite.unions]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, entry in rows.items():
        cells = [entry["label"], entry["cache"]]
        cells += [cell(entry, u.key, (key, u.key) in flagged) for u in suite.unions]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(suite):
    used = {e.cache for wl in suite.workloads for e in wl.rows}
    out = [f"- {name}: {text}" for name, text in CACHE_NOTES.items() if name in used]
    out.append("- figures: median wall time of the command (random read: fio's own time for the reads); "
               "(N×) is the median of per-run ratios to kernel overlayfs; ! marks a problem listed below")
    return "\n".join(out)


def problems_text(suite):
    if not suite.problems:
        return "No problems: every command succeeded and every result checked out."
    return "PROBLEMS:\n" + "\n".join(
        f"- {p['workload']} on {p['impl']} (run {p['round']}): {p['kind']}: {p['message']}"
        for p in suite.problems)


def write_json(path, meta, rows, suite):
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows, "problems": suite.problems}, f, indent=1)
