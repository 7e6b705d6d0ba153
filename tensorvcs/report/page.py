"""The report as one self-contained HTML page (data.py gathers what it shows).

Everything is inline: the charts are SVG drawn here, the style and the hover script are in
the page, the heatmap's values are a JSON block. The page names no URL, so it opens from
disk with no network access and makes no request.
"""

from __future__ import annotations

import json
import math
from html import escape

from .. import __version__
from .data import GROUPS, OPTIMIZER, OTHER, WEIGHTS, CommitInfo, HeatRow, ReportData
from .svg import (
    NONFINITE,
    SERIES,
    UNCHANGED,
    Frame,
    attr,
    fmt_num,
    human_bytes,
    legend,
    nice_ticks,
    ramp,
    svg,
)

GROUP_COLOURS = {WEIGHTS: "#0072b2", OPTIMIZER: "#d55e00", OTHER: "#009e73"}
REUSED_COLOURS = {WEIGHTS: "#b3d4ea", OPTIMIZER: "#f2cdb3", OTHER: "#b3e2d5"}
TAG_COLOUR = "#c26a00"
BRANCH_COLOUR = "#3a3aa8"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#1f2a44;color:#fff;padding:14px 24px}
header h1{font-size:20px;margin:0 0 4px}
header p{margin:2px 0;color:#cfd6e6}
main{padding:8px 24px 40px}
section{background:#fff;border:1px solid #e2e2e2;border-radius:6px;margin:16px 0;padding:10px 16px}
h2{font-size:16px;margin:4px 0 8px}
.note{color:#666;font-size:12px;margin:4px 0 8px}
.charts{display:flex;flex-wrap:wrap;gap:10px}
.chart{border:1px solid #eee;border-radius:4px;padding:4px 6px;background:#fff}
.chart h3{font-size:13px;margin:0 0 2px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:12px;width:100%}
th,td{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
.ref{display:inline-block;border-radius:3px;padding:0 4px;margin:0 2px 1px 0;font-size:11px;
color:#fff;background:#3a3aa8}
.ref.tag{background:#c26a00}
.warn{color:#b00000;font-weight:600}
#tip{position:fixed;pointer-events:none;background:rgba(20,20,30,.92);color:#fff;
font-size:12px;padding:4px 7px;border-radius:4px;white-space:pre;display:none;z-index:9;
max-width:640px;overflow:hidden}
svg text{fill:#333}
"""

# Hover: elements with data-tip show it; heatmap cells look their value up in the JSON block.
SCRIPT = """
(function(){
var tip=document.getElementById('tip');
var hd=JSON.parse(document.getElementById('heat-data').textContent);
function num(v){if(v===null)return 'not recorded';if(v==='nan')return 'NaN/Inf in tensor';
if(v==='inf')return 'inf (was zero)';return v===0?'0 (unchanged)':v.toExponential(3);}
function show(e,text){tip.textContent=text;tip.style.display='block';
var x=e.clientX+14,y=e.clientY+14;if(x+tip.offsetWidth>innerWidth)x=e.clientX-tip.offsetWidth-8;
if(y+tip.offsetHeight>innerHeight)y=e.clientY-tip.offsetHeight-8;
tip.style.left=x+'px';tip.style.top=y+'px';}
document.addEventListener('mousemove',function(e){
var t=e.target;var cell=t.getAttribute&&t.getAttribute('data-c');
if(cell!==null&&cell!==undefined&&t.parentNode.getAttribute('data-r')!==null){
var r=+t.parentNode.getAttribute('data-r'),c=+cell;
show(e,hd.keys[r]+'\\nstep '+hd.steps[c]+'  commit '+hd.ids[c]+'\\n|\\u0394|/|W| = '+
num(hd.values[r][c]));return;}
var el=t.closest?t.closest('[data-tip]'):null;
if(el){show(e,el.getAttribute('data-tip'));}else{tip.style.display='none';}
});
document.addEventListener('mouseleave',function(){tip.style.display='none';});
})();
"""


def render(data: ReportData) -> str:
    """The report page of ``data``."""
    commits = data.commits
    recorded = sum(c.stats_recorded for c in commits)
    stats_note = f"statistics recorded at commit time in {recorded} of {len(commits)} commits"
    if data.measured_commits:
        stats_note += (
            f"; measured from the tensors for {data.measured_commits} "
            f"({human_bytes(data.measured_bytes)} read)"
        )
    store, ts = data.store_bytes, data.torch_save_bytes
    ratio = f" ({ts / store:.1f}× smaller)" if store and ts > store else ""
    first, last = commits[0], commits[-1]
    span = f"{_id(first.id)} … {_id(last.id)}" if len(commits) > 1 else _id(first.id)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(data.title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<header><h1>{escape(data.title)}</h1>",
        f"<p>{len(commits)} commits ({span}), {escape(data.x_label)} "
        f"{fmt_num(first.x)}–{fmt_num(last.x)}; {stats_note}.</p>",
        f"<p>store: {human_bytes(store)} for these commits; one torch.save file per commit: "
        f"{human_bytes(ts)}{ratio}. Built by tensorvcs {escape(__version__)} in "
        f"{data.build_seconds:.2f} s.</p></header><main>",
        _metrics_section(data),
        _heatmap_section(data),
        _storage_section(data),
        _commits_section(data),
        '</main><div id="tip"></div>',
        f'<script type="application/json" id="heat-data">{_heat_json(data)}</script>',
        f"<script>{SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _id(oid: str) -> str:
    return oid[:12]


def _refs_short(c: CommitInfo) -> str:
    return ", ".join(c.refs)


def _step_text(c: CommitInfo) -> str:
    return "-" if c.step is None else str(c.step)


# -- metrics ------------------------------------------------------------------------------------
def _metrics_section(data: ReportData) -> str:
    body = [
        '<section id="metrics-section"><h2>Metrics</h2>',
        f'<p class="note">Every metric the commits recorded, against {escape(data.x_label)}; a '
        "dot per commit (lines join a commit to its parent), dashed lines at tags, labels at "
        "branch heads. Hover for the commit.</p>",
        '<div class="charts" id="metrics">',
    ]
    if not data.metrics:
        body.append('<p class="note">No commit in the range recorded metrics.</p>')
    for i, name in enumerate(data.metrics):
        body.append(_metric_chart(data, name, SERIES[i % len(SERIES)]))
    body.append("</div></section>")
    return "".join(body)


def _metric_chart(data: ReportData, name: str, colour: str) -> str:
    w, h = 440, 210
    commits = data.commits
    xs = [c.x for c in commits]
    vals = {
        c.id: c.metrics[name]
        for c in commits
        if name in c.metrics and math.isfinite(c.metrics[name])
    }
    lo = min(vals.values(), default=0.0)
    hi = max(vals.values(), default=1.0)
    pad = (hi - lo) * 0.06
    f = Frame(w, h, (min(xs), max(xs)), (lo - pad, hi + pad), top=22)
    by_id = {c.id: c for c in commits}
    out = [f.axes(data.x_label)]
    out.append(_ref_marks(f, commits))
    for c in commits:
        out.append(
            f'<line x1="{f.x(c.x)}" y1="{f.height - f.bottom}" x2="{f.x(c.x)}" '
            f'y2="{f.height - f.bottom - 4}" stroke="#999"/>'
        )
    for c in commits:
        if c.id not in vals:
            continue
        for p in c.parents:
            if p in vals:
                pc = by_id[p]
                out.append(
                    f'<line x1="{f.x(pc.x)}" y1="{f.y(vals[p])}" x2="{f.x(c.x)}" '
                    f'y2="{f.y(vals[c.id])}" stroke="{colour}" stroke-width="1.6"/>'
                )
    for c in commits:
        if c.id in vals:
            tip = f"{name} = {fmt_num(vals[c.id])}\n{data.x_label} {fmt_num(c.x)}  {_id(c.id)}"
            if c.refs:
                tip += f"  ({_refs_short(c)})"
            if c.message:
                tip += f"\n{c.message[:80]}"
            r = 3.2 if len(commits) <= 60 else 2.2
            out.append(
                f'<circle class="pt" cx="{f.x(c.x)}" cy="{f.y(vals[c.id])}" r="{r}" '
                f'fill="{colour}" data-tip="{attr(tip)}"/>'
            )
    missing = [c for c in commits if name in c.metrics and not math.isfinite(c.metrics[name])]
    for c in missing:  # a NaN/Inf loss: a red cross on the axis
        x, y = f.x(c.x), f.height - f.bottom - 8
        out.append(
            f'<path d="M{x - 3} {y - 3}L{x + 3} {y + 3}M{x - 3} {y + 3}L{x + 3} {y - 3}" '
            f'stroke="{NONFINITE}" stroke-width="1.6" '
            f'data-tip="{attr(f"{name} = {c.metrics[name]} at {_id(c.id)}")}"/>'
        )
    chart = svg(w, h, "".join(out), "metric-chart", f"{name} over {data.x_label}")
    return f'<div class="chart"><h3>{escape(name)}</h3>{chart}</div>'


def _ref_marks(f: Frame, commits: list[CommitInfo]) -> str:
    out = []
    for c in commits:
        tags = [r[5:] for r in c.refs if r.startswith("tag: ")]
        branches = [r for r in c.refs if not r.startswith("tag: ")]
        x = f.x(c.x)
        if tags:
            out.append(
                f'<line x1="{x}" y1="{f.top}" x2="{x}" y2="{f.height - f.bottom}" '
                f'stroke="{TAG_COLOUR}" stroke-dasharray="3,3"/>'
            )
        label = ", ".join(tags + [b.removeprefix("HEAD -> ") for b in branches])
        if label:
            colour = TAG_COLOUR if tags else BRANCH_COLOUR
            anchor = "end" if x > f.width - 60 else "start" if x < f.left + 40 else "middle"
            out.append(
                f'<text x="{x}" y="{f.top - 6}" text-anchor="{anchor}" style="fill:{colour}" '
                f'data-tip="{attr(_id(c.id) + ": " + ", ".join(c.refs))}">'
                f"{escape(label[:24])}</text>"
            )
    return "".join(out)


# -- heatmap -------------------------------------------------------------------------------------
def _scale(data: ReportData) -> tuple[float, float]:
    pos = [
        v for row in data.heat for v in row.values if v is not None and math.isfinite(v) and v > 0
    ]
    if not pos:
        return 1e-6, 1.0
    lo, hi = min(pos), max(pos)
    if hi <= lo:
        lo, hi = lo / 10, hi * 10
    return lo, hi


def _cell_colour(v: float | None, lo: float, hi: float) -> str | None:
    if v is None:
        return None
    if math.isnan(v):
        return NONFINITE
    if v == 0:
        return UNCHANGED
    v = min(v, hi)
    return ramp((math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))


def _heatmap_section(data: ReportData) -> str:
    head = [
        '<section id="heatmap-section"><h2>Which layers move</h2>',
        '<p class="note">Relative change ‖Δ‖/‖W‖ of every floating-point tensor outside the '
        "optimizer against the same key path in the commit's parent (log colour scale), rows "
        "grouped by module, one column per commit. Grey: unchanged (frozen); red: the tensor "
        "holds NaN or Inf; blank: no parent with the same dtype and shape. Hover a cell for "
        "the key path, step and value.</p>",
        '<div class="scroll" id="heatmap">',
    ]
    if not data.heat:
        head.append('<p class="note">No floating-point parameters in these commits.</p>')
        return "".join(head) + "</div></section>"
    return "".join(head) + _heatmap_svg(data) + "</div></section>"


def _heatmap_svg(data: ReportData) -> str:
    ncols, rows = len(data.commits), data.heat
    cw = max(3.0, min(22.0, 900.0 / ncols))
    ch = 11.0 if len(rows) <= 200 else max(3.0, 2200.0 / len(rows))
    names = [_row_name(row) for row in rows]
    label_w = int(min(330, max(120, 20 + 5.6 * max(len(n) for n in names))))
    top = 30
    lo, hi = _scale(data)
    body: list[str] = []
    y = float(top)
    module = None
    for r, row in enumerate(rows):
        if row.module != module:
            module = row.module
            y += 3
            body.append(
                f'<text x="4" y="{y + ch - 2}" style="font-weight:600">'
                f"{escape(module[-60:])}</text>"
            )
            y += ch
        name = names[r]
        body.append(
            f'<text x="16" y="{y + ch - 2}" data-tip="{attr(row.key)}">{escape(name)}</text>'
        )
        cells = []
        for c, v in enumerate(row.values):
            colour = _cell_colour(v, lo, hi)
            if colour is not None:
                cells.append(
                    f'<rect x="{round(label_w + c * cw, 2)}" width="{round(cw - 0.4, 2)}" '
                    f'height="{round(ch - 1, 2)}" fill="{colour}" data-c="{c}"/>'
                )
        body.append(f'<g data-r="{r}" transform="translate(0,{round(y, 2)})">{"".join(cells)}</g>')
        y += ch
    grid_bottom = y
    # column axis: steps, tags and branches
    every = max(1, math.ceil(ncols / 14))
    for c, info in enumerate(data.commits):
        x = round(label_w + c * cw + cw / 2, 2)
        if c % every == 0 or c == ncols - 1:
            body.append(
                f'<text x="{x}" y="{grid_bottom + 12}" text-anchor="middle">'
                f"{escape(fmt_num(info.x))}</text>"
            )
        tags = [r[5:] for r in info.refs if r.startswith("tag: ")]
        if tags or info.refs:
            colour = TAG_COLOUR if tags else BRANCH_COLOUR
            body.append(
                f'<path d="M{x - 4} {top - 10}L{x + 4} {top - 10}L{x} {top - 3}Z" fill="{colour}" '
                f'data-tip="{attr(_id(info.id) + ": " + ", ".join(info.refs))}"/>'
            )
        if info.nonfinite:
            body.append(
                f'<text x="{x}" y="{top - 14}" text-anchor="middle" style="fill:{NONFINITE}" '
                f'data-tip="{attr(_nonfinite_tip(info))}">!</text>'
            )
    width = int(label_w + ncols * cw + 20)
    body.append(
        f'<text x="{label_w + ncols * cw / 2}" y="{grid_bottom + 26}" text-anchor="middle" '
        f'fill="#555">{escape(data.x_label)}</text>'
    )
    # legend: the colour ramp with decade ticks, and the special colours
    ly = grid_bottom + 44
    lw = 240
    for i in range(48):
        body.append(
            f'<rect x="{round(4 + i * lw / 48, 2)}" y="{ly}" width="{round(lw / 48 + 0.3, 2)}" '
            f'height="10" fill="{ramp(i / 47)}"/>'
        )
    span = math.log10(hi) - math.log10(lo)
    for x, v, anchor in ((4, lo, "start"), (4 + lw, hi, "end")):
        body.append(
            f'<text x="{x}" y="{ly - 3}" text-anchor="{anchor}" fill="#555">{fmt_num(v)}</text>'
        )
    for d in range(math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9) + 1):
        x = round(4 + (d - math.log10(lo)) / span * lw, 2)
        body.append(
            f'<line x1="{x}" y1="{ly + 10}" x2="{x}" y2="{ly + 13}" stroke="#555"/>'
            f'<text x="{x}" y="{ly + 23}" text-anchor="middle">1e{d}</text>'
        )
    body.append(
        legend(
            [(UNCHANGED, "unchanged"), (NONFINITE, "NaN/Inf"), ("#ffffff", "no value")],
            lw + 30,
            ly + 9,
        )
    )
    height = int(ly + 30)
    return svg(max(width, 620), height, "".join(body), "heatmap", "relative change per layer")


def _row_name(row: HeatRow) -> str:
    """A heatmap row's label under its module's heading: the key path after the module."""
    name = row.key[len(row.module) :].lstrip("./") or row.key
    return "…" + name[-51:] if len(name) > 52 else name


def _heat_json(data: ReportData) -> str:
    def v(x: float | None) -> object:
        if x is None:
            return None
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf"
        return float(f"{x:.6g}")

    doc = {
        "keys": [r.key for r in data.heat],
        "steps": [fmt_num(c.x) for c in data.commits],
        "ids": [_id(c.id) for c in data.commits],
        "values": [[v(x) for x in r.values] for r in data.heat],
    }
    # "<" escaped so that no "</script>" can end the block early
    return json.dumps(doc, separators=(",", ":")).replace("<", "\\u003c")


def _nonfinite_tip(c: CommitInfo) -> str:
    lines = [f"{_id(c.id)}: {len(c.nonfinite)} tensor(s) with NaN/Inf"]
    lines += [f"{k}: {n} NaN, {i} Inf" for k, n, i in c.nonfinite[:12]]
    if len(c.nonfinite) > 12:
        lines.append(f"… and {len(c.nonfinite) - 12} more")
    return "\n".join(lines)


# -- storage -------------------------------------------------------------------------------------
def _storage_section(data: ReportData) -> str:
    exact = all(c.torch_save_exact for c in data.commits)
    how = (
        "the sizes of the files the commits recorded"
        if exact
        else "estimated from each commit's logical bytes (tensor bytes plus a small allowance "
        "per tensor for torch.save's zip entries and pickle), not measured"
    )
    note = (
        '<p class="note">Per commit: the bytes its new objects take in the store (after '
        "compression and deltas) by group, and, pale, the logical bytes of the tensors it "
        "reused unchanged (stored once, by an earlier commit). Right: the store's size after "
        "each commit against a folder with one torch.save file per commit; torch.save sizes "
        f"are {how}. Later commits re-encode their parents' chunks as deltas, so the store "
        "sizes are what those objects take now.</p>"
    )
    if data.missing_objects:
        note += (
            f'<p class="note warn">{data.missing_objects} objects the manifests name are not '
            "in the store (counted as 0 bytes); run tvcs fsck.</p>"
        )
    return (
        '<section id="storage-section"><h2>Storage</h2>'
        + note
        + '<div class="charts" id="storage">'
        + _bars(data)
        + _cumulative(data, exact)
        + "</div></section>"
    )


def _bars(data: ReportData) -> str:
    w, h = 600, 250
    commits = data.commits
    n = len(commits)
    totals = [sum(c.new_bytes.values()) + sum(c.reused_bytes.values()) for c in commits]
    f = Frame(w, h, (-0.5, n - 0.5), (0, max(totals, default=1) * 1.05 or 1), left=70, bottom=40)
    out = [_y_axis(f)]  # x ticks: one per commit, below
    bw = max(1.0, (f.x(1) - f.x(0)) * 0.8) if n > 1 else 40.0
    every = max(1, math.ceil(n / 14))
    for i, c in enumerate(commits):
        base = 0.0
        x = round(f.x(i) - bw / 2, 2)
        segments = [(g, c.new_bytes.get(g, 0), GROUP_COLOURS[g], "new") for g in GROUPS]
        segments += [(g, c.reused_bytes.get(g, 0), REUSED_COLOURS[g], "reused") for g in GROUPS]
        for g, nbytes, colour, kind in segments:
            if nbytes <= 0:
                continue
            y1, y0 = f.y(base + nbytes), f.y(base)
            what = "stored" if kind == "new" else "logical, not stored again"
            tip = (
                f"{data.x_label} {fmt_num(c.x)}  {_id(c.id)}\n{kind} {g}: {human_bytes(nbytes)} "
                f"({what})"
            )
            out.append(
                f'<rect class="bar" x="{x}" y="{y1}" width="{round(bw, 2)}" '
                f'height="{round(max(y0 - y1, 0.5), 2)}" fill="{colour}" data-tip="{attr(tip)}"/>'
            )
            base += nbytes
        if i % every == 0 or i == n - 1:
            out.append(
                f'<text x="{f.x(i)}" y="{h - f.bottom + 14}" text-anchor="middle">'
                f"{escape(fmt_num(c.x))}</text>"
            )
    out.append(
        f'<text x="{(f.left + w - f.right) / 2}" y="{h - f.bottom + 27}" text-anchor="middle" '
        f'fill="#555">{escape(data.x_label)}</text>'
    )
    items = [(GROUP_COLOURS[g], f"new {g}") for g in GROUPS] + [
        (REUSED_COLOURS[WEIGHTS], "reused (pale)")
    ]
    out.append(legend(items, f.left, h - 4, gap=4))
    chart = svg(w, h, "".join(out), "storage-chart", "new and reused bytes per commit")
    return f'<div class="chart"><h3>New vs reused bytes per commit</h3>{chart}</div>'


def _y_axis(f: Frame) -> str:
    out = [
        f'<line x1="{f.left}" y1="{f.height - f.bottom}" x2="{f.width - f.right}" '
        f'y2="{f.height - f.bottom}" stroke="#888"/>',
        f'<line x1="{f.left}" y1="{f.top}" x2="{f.left}" y2="{f.height - f.bottom}" '
        'stroke="#888"/>',
    ]
    unit = 1024 ** max(0, min(4, int(math.log(max(f.y1, 1), 1024))))
    for t in nice_ticks(f.y0 / unit, f.y1 / unit, 4):
        y = f.y(t * unit)
        out.append(
            f'<line x1="{f.left - 3}" y1="{y}" x2="{f.width - f.right}" y2="{y}" stroke="#eee"/>'
            f'<text x="{f.left - 5}" y="{y + 3}" text-anchor="end">{human_bytes(t * unit)}</text>'
        )
    return "".join(out)


def _cumulative(data: ReportData, exact: bool) -> str:
    w, h = 440, 250
    commits = data.commits
    n = len(commits)
    top = max(max(c.torch_save_total, c.store_bytes) for c in commits) * 1.05 or 1
    f = Frame(w, h, (-0.5 if n == 1 else 0, max(n - 1, 0.5)), (0, top), left=70, bottom=40)
    out = [_y_axis(f)]
    every = max(1, math.ceil(n / 8))
    for i, c in enumerate(commits):
        if i % every == 0 or i == n - 1:
            out.append(
                f'<text x="{f.x(i)}" y="{h - f.bottom + 14}" text-anchor="middle">'
                f"{escape(fmt_num(c.x))}</text>"
            )
    ts_label = "torch.save folder" + ("" if exact else " (estimated)")
    for key, colour, label, dash in (
        ("torch_save_total", "#d55e00", ts_label, ' stroke-dasharray="5,3"'),
        ("store_bytes", "#0072b2", "tensorvcs store", ""),
    ):
        pts = " ".join(f"{f.x(i)},{f.y(getattr(c, key))}" for i, c in enumerate(commits))
        out.append(
            f'<polyline class="line" points="{pts}" fill="none" stroke="{colour}" '
            f'stroke-width="2"{dash}/>'
        )
        for i, c in enumerate(commits):
            tip = f"{label} after {_id(c.id)}: {human_bytes(getattr(c, key))}"
            out.append(
                f'<circle cx="{f.x(i)}" cy="{f.y(getattr(c, key))}" r="2.5" fill="{colour}" '
                f'data-tip="{attr(tip)}"/>'
            )
    out.append(
        f'<text x="{(f.left + w - f.right) / 2}" y="{h - f.bottom + 27}" text-anchor="middle" '
        f'fill="#555">{escape(data.x_label)}</text>'
    )
    out.append(legend([("#0072b2", "tensorvcs store"), ("#d55e00", ts_label)], f.left, h - 4))
    chart = svg(w, h, "".join(out), "storage-chart", "cumulative store size")
    return f'<div class="chart"><h3>Cumulative size</h3>{chart}</div>'


# -- commit list ---------------------------------------------------------------------------------
def _commits_section(data: ReportData) -> str:
    rows = []
    for c in reversed(data.commits):
        refs = "".join(
            f'<span class="ref{" tag" if r.startswith("tag: ") else ""}">'
            f"{escape(r[5:] if r.startswith('tag: ') else r)}</span>"
            for r in c.refs
        )
        metrics = ", ".join(f"{escape(k)}={fmt_num(v)}" for k, v in c.metrics.items())
        warn = ""
        if c.nonfinite:
            keys = "<br>".join(
                f"<code>{escape(k)}</code>: {n} NaN, {i} Inf" for k, n, i in c.nonfinite[:20]
            )
            more = f"<br>… and {len(c.nonfinite) - 20} more" if len(c.nonfinite) > 20 else ""
            warn = (
                f'<details><summary class="warn">⚠ NaN/Inf in {len(c.nonfinite)} '
                f"tensor(s)</summary>{keys}{more}</details>"
            )
        stats = "" if c.stats_recorded else ' <span class="note">(stats measured)</span>'
        rows.append(
            f"<tr><td><code>{_id(c.id)}</code></td><td class='num'>{_step_text(c)}</td>"
            f"<td>{escape(c.timestamp[:19].replace('T', ' '))}</td><td>{refs}</td>"
            f"<td>{escape(c.message)}</td><td>{metrics}</td>"
            f"<td class='num'>{human_bytes(sum(c.new_bytes.values()))}</td>"
            f"<td>{warn}{stats}</td></tr>"
        )
    return (
        '<section id="commits-section"><h2>Commits</h2><div class="scroll">'
        '<table id="commits"><thead><tr><th>commit</th><th>step</th><th>date (UTC)</th>'
        "<th>refs</th><th>message</th><th>metrics</th><th>new in store</th><th>warnings</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>"
    )
