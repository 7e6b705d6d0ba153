"""The benchmark's chart: one PNG with a panel per question (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(results: dict[str, Any], path: Path) -> bool:
    """Draw ``results`` (bench.json's content) to ``path``; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    w = results.get("workloads", {})
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    m = results.get("machine", {})
    fig.suptitle(
        f"tensorvcs benchmark — {m.get('cores')} cores, torch {m.get('torch')}, "
        f"load avg {m.get('loadavg_start', [0])[0]:.2f}→{m.get('loadavg_end', [0])[0]:.2f}"
        f"{' (quick run)' if results.get('quick') else ''}; medians of "
        f"{results.get('reps')} repetitions",
        fontsize=12,
    )
    _w1(axes[0][0], axes[0][1], w.get("W1"))
    _series(axes[1][0], w)
    _w5(axes[1][1], w.get("W5"))
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _none(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: not run", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _w1(ax_t: Any, ax_b: Any, w1: dict[str, Any] | None) -> None:
    if not w1 or "states" not in w1:
        _none(ax_t, "W1")
        _none(ax_b, "W1")
        return
    writers = w1["writers"]
    states = w1["states"]
    width = 0.8 / len(writers)
    for j, wname in enumerate(writers):
        xs = [i + (j - (len(writers) - 1) / 2) * width for i in range(len(states))]
        gbs = [st["writers"][wname]["write_gb_per_s"] for st in states]
        ratio = [st["writers"][wname]["bytes_over_raw"] for st in states]
        ax_t.bar(xs, gbs, width, label=wname)
        ax_b.bar(xs, ratio, width, label=wname)
    for ax in (ax_t, ax_b):
        ax.set_xticks(range(len(states)))
        ax.set_xticklabels([st["state"] for st in states], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    ax_t.set_title("W1 first commit: write throughput incl. fsync (raw GB/s, higher is better)")
    ax_t.set_ylabel("GB/s")
    ax_t.legend(fontsize=8, loc="upper left")
    ax_b.set_title("W1 first commit: bytes on disk / raw bytes (lower is better)")
    ax_b.set_ylabel("on disk / raw")
    ax_b.axhline(1.0, color="grey", lw=0.8)
    ax_b.set_ylim(0, 1.25)
    ax_b.legend(fontsize=8, loc="upper center", ncol=3)


def _series(ax: Any, w: dict[str, Any]) -> None:
    drew = False
    styles = {"W2": ("o-", "LoRA (W2)"), "W3": ("s-", "full fine-tune fp32+AdamW (W3)"),
              "W4": ("^-", "bf16 weights every step (W4)")}
    for name, (style, label) in styles.items():
        r = w.get(name)
        if not r or "commits" not in r:
            continue
        ys = [max(x["stored_over_raw"], 1e-5) for x in r["commits"]]
        line = ax.plot(range(1, len(ys) + 1), ys, style, label=label)[0]
        if name != "W2" and r.get("target"):
            ax.axhline(r["target"], color=line.get_color(), ls="--", lw=1,
                       label=f"{name} target ≤ {r['target']}×")
        drew = True
    if not drew:
        _none(ax, "W2–W4")
        return
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yscale("log")
    ax.set_xlabel("commit")
    ax.set_ylabel("new bytes stored / raw bytes of the state")
    title = "Series: bytes stored per commit / raw (lower is better)"
    if w.get("W2") and "repo_over_reference" in w["W2"]:
        v = w["W2"]["repo_over_reference"]
        title += f"\nW2 repository / (base + N×adapters+opt) = {v:.3f}× (target ≤ 1.05×)"
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def _w5(ax: Any, r: dict[str, Any] | None) -> None:
    if not r or "tvcs_full_seconds" not in r:
        _none(ax, "W5")
        return
    bars = [
        ("full W3 state\ntensorvcs", r["tvcs_full_seconds"], "C0"),
        ("full W3 state\ntorch.load", r["torch_load_seconds"], "C1"),
        ("W2 full\ntensorvcs", r["w2_full_seconds"], "C0"),
        ("W2 *lora*\ntensorvcs", r["w2_partial_seconds"], "C0"),
        ("one tensor\ntensorvcs", r["tvcs_one_tensor_seconds"], "C0"),
        ("one tensor\ntorch.load mmap", r["torch_load_mmap_one_tensor_seconds"], "C1"),
        ("one tensor\nsafetensors", r["safetensors_one_tensor_seconds"], "C2"),
    ]
    ax.bar(range(len(bars)), [b[1] for b in bars], color=[b[2] for b in bars])
    for i, b in enumerate(bars):
        ax.text(i, b[1], f"{b[1] * 1000:.0f} ms" if b[1] >= 0.01 else f"{b[1] * 1000:.1f} ms",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels([b[0] for b in bars], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (log)")
    ax.set_title("W5 checkout / load time (lower is better; warm page cache)")
    ax.grid(axis="y", alpha=0.3, which="both")
