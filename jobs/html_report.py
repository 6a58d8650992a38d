"""`ddnm-batch report OUTPUT --html`: a static page, OUTPUT/report.html, plus its thumbnails under
OUTPUT/report/. It opens from disk with no server and no network: styles and histograms (SVG) are
inline, and every image is a relative link to a PNG beside the page.

Grid tiles come from the worker's panels (``--panels``) when they exist: the panel holds the exact
observation the metrics were computed from (noise and random masks seeded per image on the worker), so
the page does not re-run any degradation on the driver. Without panels the grid shows restored | ground
truth (| uncertainty) and says that the observation needs ``--panels``.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from typing import Any

import numpy as np
import pandas as pd

from cluster import storage
from cluster.images import decode_image, encode_png
from cluster.outputs import output_urls
from jobs import layout, results
from jobs.errors import JobError
from jobs.summary import run_solver, task_summary

METRICS = {  # column -> (label, format, higher is better)
    "psnr": ("PSNR (dB)", ".2f", True),
    "ssim": ("SSIM", ".4f", True),
    "lpips": ("LPIPS", ".4f", False),
    "consistency": ("consistency ‖Ax₀−y‖", ".3g", False),
}
GAP = 2  # white columns between a panel's tiles (cluster.outputs.panel)
CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2330;margin:0;
 background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff;min-height:100vh}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:32px 0 10px;border-bottom:1px solid #e3e6eb;padding-bottom:4px}
h3{font-size:14px;margin:18px 0 8px;color:#3b4456}
.meta{color:#5b6475;font-size:12.5px}.meta code{background:#f0f2f5;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:6px 0}
th,td{padding:4px 10px;border-bottom:1px solid #eceef2;text-align:right;white-space:nowrap}
th{background:#f3f5f8;font-weight:600;color:#3b4456}td.l,th.l{text-align:left}
.ok{color:#1b7f3b}.bad{color:#b3261e}.note{color:#5b6475;font-size:12.5px;margin:4px 0}
.hists{display:flex;flex-wrap:wrap;gap:18px}.hists figure{margin:0}
figcaption{font-size:12px;color:#5b6475;text-align:center}
.grid{display:grid;gap:6px 14px;align-items:start;margin-bottom:8px}
.grid .hd{font-size:12px;font-weight:600;color:#3b4456;text-align:center}
.grid .key{font-size:12px;text-align:left;align-self:center;word-break:break-all}
.grid .key span{display:block;color:#5b6475;font-variant-numeric:tabular-nums}
.grid img{width:128px;height:auto;image-rendering:pixelated;border:1px solid #d9dde4;display:block}
.err{font-family:ui-monospace,Menlo,monospace;font-size:12px;text-align:left;white-space:normal}
"""


def fmt(value: Any, spec: str) -> str:
    """A number as the page shows it, with a format spec such as ".2f" ('–' for none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec) if isinstance(value, float) else str(value)


def num(value: Any, spec: str, *, metric: str = "", key: str = "", tag: str = "td") -> str:
    """A cell whose data-value holds the exact number (the browser test compares it with the table)."""
    exact = "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))
    attrs = f' data-metric="{html.escape(metric)}" data-value="{exact}"' if metric else ""
    attrs += f' data-key="{html.escape(key)}"' if key else ""
    return f"<{tag}{attrs}>{fmt(value, spec)}</{tag}>"


def histogram_svg(
    values: np.ndarray, label: str, *, bins: int = 20, width: int = 270, height: int = 130
) -> str:
    """An inline SVG histogram with its axis range, count scale and a dashed line at the mean."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return (f'<svg width="{width}" height="{height}" role="img">'
                f'<text x="8" y="20">{html.escape(label)}: no values</text></svg>')
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    left, right, top, bottom = 30, 8, 8, 30
    pw, ph = width - left - right, height - top - bottom
    cmax = max(int(counts.max()), 1)
    bw = pw / bins
    bars = "".join(
        f'<rect x="{left + i * bw + 0.5:.1f}" y="{top + ph - c / cmax * ph:.1f}" '
        f'width="{max(bw - 1, 1):.1f}" height="{c / cmax * ph:.1f}" fill="#5b7db8">'
        f"<title>{edges[i]:.4g} – {edges[i + 1]:.4g}: {c}</title></rect>"
        for i, c in enumerate(counts)
        if c
    )
    mx = left + (float(v.mean()) - lo) / (hi - lo) * pw
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="histogram of {label}" '
        f'font-family="system-ui,sans-serif" font-size="10" fill="#3b4456">'
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#8a93a3"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#8a93a3"/>{bars}'
        f'<line x1="{mx:.1f}" y1="{top}" x2="{mx:.1f}" y2="{top + ph}" stroke="#c0392b" '
        f'stroke-dasharray="3 2">'
        f"<title>mean {v.mean():.4g}</title></line>"
        f'<text x="{left}" y="{height - 16}" text-anchor="start">{lo:.4g}</text>'
        f'<text x="{left + pw}" y="{height - 16}" text-anchor="end">{hi:.4g}</text>'
        f'<text x="{left + pw / 2}" y="{height - 3}" text-anchor="middle" font-size="11">{html.escape(label)}'
        f' (n={len(v)})</text><text x="{left - 4}" y="{top + 8}" text-anchor="end">{cmax}</text>'
        f'<text x="{left - 4}" y="{top + ph}" text-anchor="end">0</text></svg>'
    )


# ------------------------------------------------------------------------------------------ data


def load_run(output: str, options: dict[str, Any]) -> dict[str, Any]:
    """The run's final table (as pandas), manifest (None while incomplete) and spec file."""
    if storage.read_json(storage.join(output, layout.PLAN_FILE), options) is None:
        raise JobError(f"{output}: no job here (no {layout.PLAN_FILE})")
    manifest = storage.read_json(storage.join(output, layout.MANIFEST_FILE), options)
    if manifest is not None:
        table = results.read_table(storage.join(output, layout.METRICS_FILE), options)
    else:
        table = results.read_committed(output, options)
    spec = storage.read_json(storage.join(output, layout.SPEC_FILE), options) or {}
    return {"output": output, "df": table.to_pandas(), "manifest": manifest, "spec": spec}


def pick_keys(df: pd.DataFrame, *, per_group: int = 3, sample: int = 6, seed: int = 0) -> dict[str, list]:
    """Worst, median and best ok keys by PSNR (by consistency without PSNR), and a seeded sample."""
    ok = df[df["status"] == "ok"]
    by = "psnr" if ok["psnr"].notna().any() else "consistency"
    ranked = ok.dropna(subset=[by]).sort_values([by, "key"], ascending=[by == "psnr", True])
    keys = ranked["key"].tolist()  # worst first
    n, mid = len(keys), len(keys) // 2
    lo = max(0, min(mid - per_group // 2, n - per_group))
    rng = np.random.default_rng(seed)
    rand = (
        sorted(rng.choice(sorted(ok["key"]), size=min(sample, len(ok)), replace=False).tolist())
        if len(ok)
        else []
    )
    return {
        "by": by,
        f"worst {by.upper()}": keys[:per_group],
        f"median {by.upper()}": keys[lo : lo + per_group],
        f"best {by.upper()}": keys[::-1][:per_group],
        f"random sample (seed {seed})": rand,
    }


# ------------------------------------------------------------------------------------ thumbnails


class Thumbs:
    """Writes tiles as PNGs under `folder_url` and returns their links relative to the page."""

    def __init__(self, folder_url: str, rel: str, options: dict[str, Any]):
        self.folder, self.rel, self.options = folder_url, rel, options

    def put(self, key: str, role: str, image) -> str:
        name = f"{hashlib.sha1(key.encode()).hexdigest()[:12]}-{role}.png"
        storage.write_bytes(storage.join(self.folder, name), encode_png(image), self.options)
        return f"{self.rel}/{name}"


def _read(url: str, options: dict[str, Any]):
    try:
        return decode_image(storage.read_bytes(url, options), url)
    except (FileNotFoundError, ValueError):
        return None


def key_tiles(run: dict[str, Any], key: str, thumbs: Thumbs) -> dict[str, str | None]:
    """{role: link} for observation, restored, truth (evaluate) or input (restore), uncertainty."""
    out, opts = run["output"], run.get("options", {})
    urls = output_urls(out, key)
    mode = run["spec"].get("spec", {}).get("mode", "evaluate")
    tiles: dict[str, Any] = {}
    pan = _read(urls["panels"], opts)
    restored = _read(urls["images"], opts)
    if pan is not None and restored is not None:
        w = restored.shape[2]
        parts = [pan[:, :, i * (w + GAP) : i * (w + GAP) + w] for i in range(3)]
        roles = (
            ("observation", "restored", "truth")
            if mode == "evaluate"
            else ("input", "observation", "restored")
        )
        tiles.update(zip(roles, parts, strict=True))
    else:
        tiles["restored"] = restored
        root = run["spec"].get("input_root")
        if root:
            tiles["truth" if mode == "evaluate" else "input"] = _read(storage.join(root, key), opts)
    tiles["uncertainty"] = _read(urls["std"], opts)
    return {role: (thumbs.put(key, role, img) if img is not None else None) for role, img in tiles.items()}


# ----------------------------------------------------------------------------------------- page


def page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
        f"<body><main>{body}</main></body></html>"
    )


def solver_title(solver: str) -> str:
    """A solver's name as a page title writes it (``ddnm+`` -> ``DDNM+``)."""
    return str(solver).upper()


def img(link: str | None, alt: str) -> str:
    return (
        f'<img src="{html.escape(link)}" alt="{html.escape(alt)}">' if link else '<div class="note">–</div>'
    )


def grid(run: dict[str, Any], keys: list[str], thumbs: Thumbs, df: pd.DataFrame) -> str:
    rows = {k: key_tiles(run, k, thumbs) for k in keys}
    order = [
        r
        for r in ("input", "observation", "restored", "truth", "uncertainty")
        if any(t.get(r) for t in rows.values())
    ]
    labels = {"truth": "ground truth", "uncertainty": "uncertainty (std)"}
    head = '<div class="hd"></div>' + "".join(f'<div class="hd">{labels.get(r, r)}</div>' for r in order)
    by_key = df.set_index("key")
    cells = []
    for k in keys:
        r = by_key.loc[k]
        stats = "".join(
            f'<span data-metric="{m}" data-key="{html.escape(k)}" data-value="{float(r[m])!r}">'
            f"{METRICS[m][0].split(' ')[0]} {fmt(float(r[m]), METRICS[m][1])}</span>"
            for m in ("psnr", "ssim", "lpips")
            if pd.notna(r[m])
        )
        cells.append(
            f'<div class="key">{html.escape(k)}{stats}</div>'
            + "".join(f"<div>{img(rows[k].get(role), f'{k} {role}')}</div>" for role in order)
        )
    style = f"grid-template-columns:minmax(140px,220px) repeat({len(order)},130px)"
    return f'<div class="grid" style="{style}">{head}{"".join(cells)}</div>'


def summary_tables(summary: list[dict[str, Any]], set_metrics: dict | None) -> str:
    """Counts and throughput per task; then, per task, one row per metric: mean, median, n."""
    out = [
        "<table><tr><th class=l>task</th><th class=l>solver</th><th>images</th><th>ok</th><th>failed</th>"
        "<th>images/s</th>"
        "<th>images/s per worker</th><th>model calls per image</th></tr>"
    ]
    for s in summary:
        out.append(
            f"<tr><td class=l>{html.escape(str(s['task']))}</td>"
            f"<td class=l>{html.escape(str(s['solver']))}</td>"
            f"{num(s['count'], 'd', metric='count')}"
            f"<td class=ok>{s['ok']}</td><td class={'bad' if s['failed'] else 'ok'}>{s['failed']}</td>"
            + num(s["img_per_s"], ".3f", metric="img_per_s")
            + num(s["img_per_s_worker"], ".3f", metric="img_per_s_worker")
            + num(s["model_calls"], ".0f", metric="model_calls")
            + "</tr>"
        )
    out.append("</table>")
    sm = set_metrics or {}
    kid_std = "–" if sm.get("kid_std") is None else "± " + fmt(sm["kid_std"], ".5f")
    for s in summary:
        title = (f"<h3>{html.escape(str(s['task']))} · {html.escape(str(s['solver']))}</h3>"
                 if len(summary) > 1 else "")
        out.append(
            f"{title}<table><tr><th class=l>metric</th><th>mean</th><th>median</th><th>images</th>"
            "<th class=l>better</th></tr>"
        )
        for m, (label, spec, higher) in METRICS.items():
            out.append(
                f"<tr><td class=l>{label}</td>{num(s[f'{m}_mean'], spec, metric=f'{m}_mean')}"
                f"{num(s[f'{m}_median'], spec, metric=f'{m}_median')}<td>{s[f'{m}_n']}</td>"
                f"<td class=l>{'higher' if higher else 'lower'}</td></tr>"
            )
        out.append(
            f"<tr><td class=l>FID (set vs ground-truth set)</td>{num(sm.get('fid'), '.3f', metric='fid')}"
            f"<td>–</td><td>{sm.get('images', '–')}</td><td class=l>lower</td></tr>"
        )
        out.append(
            f"<tr><td class=l>KID (mean ± std over subsets)</td>{num(sm.get('kid'), '.5f', metric='kid')}"
            f"<td>{kid_std}</td><td>{sm.get('images', '–')}</td>"
            "<td class=l>lower</td></tr></table>"
        )
    return "".join(out)


def render(run: dict[str, Any], thumbs: Thumbs, *, seed: int = 0) -> str:
    df, manifest, spec = run["df"], run["manifest"], run["spec"]
    s = spec.get("spec", {})
    sm = (manifest or {}).get("set_metrics")
    solver = run_solver(spec) or "?"
    summary = task_summary(df, manifest, solver=solver)
    settings = ", ".join(f"{k}={v}" for k, v in (s.get("settings") or {}).items())
    parts = [
        f"<h1>{html.escape(solver_title(solver))} evaluation: {html.escape(str(s.get('task', '?')))}"
        f"{' (' + html.escape(settings) + ')' if settings else ''}</h1>",
        f'<p class="meta">output <code>{html.escape(run["output"])}</code> · mode {s.get("mode")} · '
        f"model {html.escape(str(s.get('model')))} · {s.get('steps')} steps · eta {s.get('eta')} · "
        f"σ<sub>y</sub> {s.get('sigma_y')} · K={s.get('samples')} samples · seed {s.get('seed')} · "
        f"spec <code>{spec.get('spec_hash', '?')}</code> · code "
        f"<code>{str((spec.get('code_version') or {}).get('git') or '?')[:10]}</code>"
        f"{'' if manifest else ' · <b class=bad>incomplete: no manifest yet, committed shards only</b>'}</p>",
        "<h2>Summary</h2>",
        summary_tables(summary, sm),
    ]
    notes = [
        "Means and medians over ok images. PSNR / SSIM / LPIPS against the input image; LPIPS of the PNG "
        "as written. FID / KID: restored set vs the ground-truth set (Inception pool features)."
    ]
    if sm is None:
        notes.append("FID / KID not computed: run with --inception-weights.")
    else:
        notes.append(
            f"FID / KID over {sm['images']} images (KID: {sm['kid_subsets']} subsets of "
            f"{sm['kid_subset_size']}). {sm.get('note', '')}"
        )
    if df["lpips"].isna().all():
        notes.append("LPIPS not computed: run with --lpips-weights.")
    hashes = spec.get("weights_hashes") or {}
    if hashes:
        notes.append("Weights: " + "; ".join(f"{k} {v[:19]}…" for k, v in hashes.items()))
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    ok = df[df["status"] == "ok"]
    hists = "".join(
        f"<figure>{histogram_svg(ok[m].dropna().to_numpy(), METRICS[m][0])}</figure>"
        for m in METRICS
        if ok[m].notna().any()
    )
    parts += [
        "<h2>Distributions</h2>",
        f'<div class="hists">{hists}</div>',
        '<p class="note">Dashed red line: the mean. Hover a bar for its range and count.</p>',
    ]
    picks = pick_keys(df, seed=seed)
    by = picks.pop("by")
    parts.append(f"<h2>Images (ranked by {by.upper()})</h2>")
    if not (df["status"] == "ok").any():
        parts.append('<p class="note">No restored images.</p>')
    elif not storage.exists(storage.join(run["output"], "panels"), run.get("options", {})):
        parts.append(
            '<p class="note">No panels in this output: the observation column needs a run with --panels.</p>'
        )
    for name, keys in picks.items():
        if keys:
            parts += [f"<h3>{html.escape(name)}</h3>", grid(run, keys, thumbs, df)]
    failed = df[df["status"] != "ok"].sort_values("key")
    parts.append(f"<h2>Failed images ({len(failed)})</h2>")
    if len(failed):
        parts.append(
            "<table><tr><th class=l>key</th><th class=l>reason</th></tr>"
            + "".join(
                f'<tr><td class=l>{html.escape(k)}</td><td class="err">{html.escape(str(e))}</td></tr>'
                for k, e in zip(failed["key"], failed["error"], strict=True)
            )
            + "</table>"
        )
    else:
        parts.append('<p class="note">None.</p>')
    parts.append(
        f'<p class="meta" style="margin-top:30px">manifest counts: '
        f"<code>{html.escape(json.dumps((manifest or {}).get('counts', {})))}</code></p>"
    )
    return page(f"{solver_title(solver)} report {s.get('task', '')}", "".join(parts))


def write_report(output: str, options: dict[str, Any], *, seed: int = 0) -> str:
    """Write OUTPUT/report.html and OUTPUT/report/*.png; -> the page's URL."""
    run = {**load_run(output, options), "options": options}
    folder = storage.join(output, layout.REPORT_DIR)
    storage.remove(folder, options)  # thumbnails of an older report
    text = render(run, Thumbs(folder, layout.REPORT_DIR, options), seed=seed)
    url = storage.join(output, layout.REPORT_FILE)
    storage.write_bytes(url, text.encode(), options)
    return url
