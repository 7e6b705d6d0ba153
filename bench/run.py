"""Run the tensorvcs benchmark (issue 4): W1–W5 side by side in one process.

    python bench/run.py                 # the full run (what `make bench` does)
    python bench/run.py --quick         # a fast smoke run (small states, 1 repetition)
    python bench/run.py --only W1,W3    # some workloads

Prints Markdown tables, writes <out>/bench.json, <out>/bench.md and <out>/bench.png (out:
bench/results by default); a full run (neither --quick nor --only) also copies the chart to
docs/bench.png. Figures are medians of --reps repetitions (default 3) from this one run;
compare tensorvcs with its peers only within a run, as ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import (  # noqa: E402
    chart,
    w1_first_commit,
    w2_lora_series,
    w3_finetune_series,
    w4_bf16_series,
    w5_checkout,
)
from bench import common as c  # noqa: E402

WORKLOADS = {
    m.NAME: m
    for m in (w1_first_commit, w2_lora_series, w3_finetune_series, w4_bf16_series, w5_checkout)
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small states, 1 repetition: a smoke run")
    p.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W3")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 1)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="output folder")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG (and matplotlib)")
    p.add_argument("--workdir", default=None, help="where scratch repositories go (default: "
                   "a temporary folder in $TMPDIR)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    only = [s.strip().upper() for s in args.only.split(",") if s.strip()] or list(WORKLOADS)
    unknown = [s for s in only if s not in WORKLOADS]
    if unknown:
        print(f"unknown workload(s): {', '.join(unknown)}; have {', '.join(WORKLOADS)}",
              file=sys.stderr)
        return 2
    reps = args.reps or (1 if args.quick else 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = c.make_workdir(args.workdir)
    # a killed run still removes its scratch repositories (the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ctx = c.Context(quick=args.quick, reps=reps, workdir=workdir, out=out,
                    log=lambda s: print(s, flush=True))
    machine = c.machine_info(workdir)
    results: dict = {
        "schema": 1,
        "command": "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "reps": reps,
        "only": only,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "workloads": {},
        "seconds": {},
        "targets": [],
        "checks": {},
        "errors": {},
    }
    t_all = time.perf_counter()
    print(_machine_line(machine, reps, args.quick), flush=True)
    try:
        for name in only:
            mod = WORKLOADS[name]
            print(f"== {name} {mod.TITLE}", flush=True)
            t0 = time.perf_counter()
            try:
                res = mod.run(ctx)
            except Exception as e:  # record and go on with the other workloads
                traceback.print_exc()
                results["errors"][name] = f"{type(e).__name__}: {e}"
                continue
            results["seconds"][name] = time.perf_counter() - t0
            results["workloads"][name] = res
            results["targets"] += mod.targets(res)
            if hasattr(mod, "checks"):
                results["checks"].update(mod.checks(res))
            print(f"   {name} done in {c.fmt_s(results['seconds'][name])}", flush=True)
    finally:
        c.remove(workdir)
    results["seconds"]["total"] = time.perf_counter() - t_all
    machine["loadavg_end"] = list(os.getloadavg())

    report = render(results)
    print()
    print(report)
    c.dump_json(results, out / "bench.json")
    (out / "bench.md").write_text(report + "\n")
    png = out / "bench.png"
    if not args.no_chart and chart.draw(results, png):
        print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'}, {png}")
        if not args.quick and not args.only and not results["errors"]:
            docs = ROOT / "docs" / "bench.png"
            shutil.copyfile(png, docs)
            print(f"copied the chart to {docs}")
    else:
        why = "--no-chart" if args.no_chart else "matplotlib is missing; `make bench` installs it"
        print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'} (no chart: {why})")
    failed = [k for k, v in results["checks"].items() if not v]
    return 1 if results["errors"] or failed else 0


def _machine_line(m: dict, reps: int, quick: bool) -> str:
    return (
        f"machine: {m['cores']} cores ({m['cpu_model']}), {m['mem_total_bytes'] / c.GiB:.0f} GiB"
        f" RAM, torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']}, "
        f"numpy {m['numpy']}, zstandard {m['zstandard']}, tensorvcs {m['tensorvcs']} "
        f"(git {(m.get('git', {}).get('commit') or '?')[:10]}"
        f"{' + local edits' if m.get('git', {}).get('tensorvcs_dirty') else ''}); "
        f"load average {m['loadavg_start'][0]:.2f}"
        + (f" → {m['loadavg_end'][0]:.2f}" if "loadavg_end" in m else "")
        + f"; medians of {reps} repetition(s){' (quick)' if quick else ''}; page cache warm"
    )


def render(results: dict) -> str:
    parts = [_machine_line(results["machine"], results["reps"], results["quick"])]
    for name, res in results["workloads"].items():
        mod = WORKLOADS[name]
        parts.append(f"### {name} — {mod.TITLE}\n\n{mod.table(res)}")
        notes = res.get("notes") if isinstance(res, dict) else None
        if notes:
            parts.append("\n".join(f"- {k}: {v}" for k, v in notes.items()))
    if results["targets"]:
        rows = [
            [t["workload"], t["target"], f"{t['measured']:.3f}×", f"≤ {t['limit']}×",
             "met" if t["met"] else "**missed**",
             ", ".join(map(str, t.get("steady_commits_over_limit", []))) or "-"]
            for t in results["targets"]
        ]
        parts.append("### Targets\n\n" + c.md_table(
            ["workload", "target", "measured", "limit", "", "commits 2..N over the limit"],
            rows))
    if results["checks"]:
        parts.append("checks: " + ", ".join(
            f"{k}: {'ok' if v else 'FAILED'}" for k, v in results["checks"].items()))
    if results["errors"]:
        parts.append("errors: " + "; ".join(f"{k}: {v}" for k, v in results["errors"].items()))
    secs = results["seconds"]
    parts.append("wall time: " + ", ".join(f"{k} {c.fmt_s(v)}" for k, v in secs.items()))
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
