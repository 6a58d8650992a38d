"""`ddnm-batch compare OUT_A OUT_B [...] [--html PATH]`: runs over the same keys, joined per key.

Each later run is compared with the first: per metric, the mean of the paired differences (run - A) over
the keys that are ok in both, with a 95% percentile-bootstrap interval (keys resampled with
replacement, seeded); FID / KID of each run side by side (set metrics are not paired per key). The
page shows the same tables and, side by side, the keys where the runs differ most.
"""

from __future__ import annotations

import html
import os
from typing import Any

import numpy as np
import pandas as pd

from cluster import storage
from jobs import html_report as hr
from jobs.errors import EXIT_OK, JobError
from jobs.summary import run_solver

RESAMPLES = 2000


def bootstrap_ci(
    diffs: np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `diffs` (n >= 1)."""
    d = np.asarray(diffs, float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def paired(a: pd.DataFrame, b: pd.DataFrame, *, seed: int = 0) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """(the joined ok rows, one dict per metric: n, mean_a, mean_b, diff, ci_low, ci_high)."""
    ok = lambda df: df[df["status"] == "ok"].set_index("key")  # noqa: E731
    j = ok(a).merge(ok(b), how="inner", left_index=True, right_index=True, suffixes=("_a", "_b"))
    rows = []
    for m, (label, dec, higher) in hr.METRICS.items():
        both = j[[f"{m}_a", f"{m}_b"]].dropna()
        if not len(both):
            continue
        d = (both[f"{m}_b"] - both[f"{m}_a"]).to_numpy()
        lo, hi = bootstrap_ci(d, seed=seed)
        rows.append(
            {
                "metric": m,
                "label": label,
                "spec": dec,
                "higher_is_better": higher,
                "n": len(d),
                "mean_a": float(both[f"{m}_a"].mean()),
                "mean_b": float(both[f"{m}_b"].mean()),
                "diff": float(d.mean()),
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    return j, rows


def _verdict(r: dict[str, Any]) -> str:
    if r["ci_low"] <= 0 <= r["ci_high"]:
        return "no clear difference"
    better = (r["diff"] > 0) == r["higher_is_better"]
    return "B better" if better else "A better"


def print_tables(runs: list[dict], pairs: list[tuple], stream=None) -> None:
    for i, run in enumerate(runs):
        sm = (run["manifest"] or {}).get("set_metrics") or {}
        s = run["spec"].get("spec", {})
        print(
            f"run {chr(65 + i)}: {run['output']}  ({run_solver(run['spec']) or '?'}, steps {s.get('steps')}, "
            f"{len(run['df'])} images, "
            f"FID {hr.fmt(sm.get('fid'), '.3f')}, KID {hr.fmt(sm.get('kid'), '.5f')})",
            file=stream,
        )
    for name, joined, rows in pairs:
        print(
            f"\n{name}: paired over {len(joined)} keys ok in both (diff = B - A, 95% bootstrap CI)",
            file=stream,
        )
        print(
            f"{'metric':<14} {'n':>5} {'mean A':>10} {'mean B':>10} {'diff':>10} {'95% CI':>22}  verdict",
            file=stream,
        )
        for r in rows:
            d = r["spec"]
            ci = f"[{r['ci_low']:{d}}, {r['ci_high']:{d}}]"
            print(
                f"{r['metric']:<14} {r['n']:>5} {r['mean_a']:>10{d}} {r['mean_b']:>10{d}} "
                f"{r['diff']:>+10{d}} {ci:>22}  {_verdict(r)}",
                file=stream,
            )


def _page(runs: list[dict], pairs: list[tuple], thumbs: list, top: int) -> str:
    parts = [
        f"<h1>Run comparison: {html.escape(' vs '.join(_solvers(runs)))}</h1>",
        "<h2>Runs</h2>",
        "<table><tr><th class=l>run</th><th class=l>output</th><th class=l>task</th><th class=l>solver</th>"
        "<th class=l>solver settings</th><th>steps</th>"
        "<th>images</th><th>ok</th><th>FID</th><th>KID</th><th>KID std</th></tr>",
    ]
    for i, run in enumerate(runs):
        sm = (run["manifest"] or {}).get("set_metrics") or {}
        s, df = run["spec"].get("spec", {}), run["df"]
        parts.append(
            f"<tr><td class=l><b>{chr(65 + i)}</b></td><td class=l><code>{html.escape(run['output'])}"
            f"</code></td><td class=l>{html.escape(str(s.get('task')))}</td>"
            f"<td class=l>{html.escape(str(run_solver(run['spec']) or '?'))}</td>"
            f"<td class=l>{html.escape(_settings_text(s.get('solver_settings')))}</td>"
            f"<td>{s.get('steps')}</td>"
            f"<td>{len(df)}</td><td>{int((df['status'] == 'ok').sum())}</td>"
            + hr.num(sm.get("fid"), ".3f", metric=f"fid_{i}")
            + hr.num(sm.get("kid"), ".5f", metric=f"kid_{i}")
            + hr.num(sm.get("kid_std"), ".5f")
            + "</tr>"
        )
    parts.append("</table>")
    for p, (name, joined, rows) in enumerate(pairs):
        b = p + 1
        parts.append(
            f"<h2>{html.escape(name)}: paired differences</h2>"
            f'<p class="note">Over the {len(joined)} keys ok in both runs; diff = {chr(65 + b)} − A; '
            f"95% percentile bootstrap over keys ({RESAMPLES} resamples, seed 0).</p>"
            "<table><tr><th class=l>metric</th><th>n</th><th>mean A</th>"
            f"<th>mean {chr(65 + b)}</th><th>diff</th><th>95% CI</th><th class=l>verdict</th></tr>"
        )
        for r in rows:
            d, m = r["spec"], r["metric"]
            parts.append(
                f"<tr><td class=l>{html.escape(r['label'])}</td><td>{r['n']}</td>"
                + hr.num(r["mean_a"], d, metric=f"{m}_mean_a")
                + hr.num(r["mean_b"], d, metric=f"{m}_mean_b")
                + hr.num(r["diff"], d, metric=f"{m}_diff")
                + f"<td>[{r['ci_low']:{d}}, {r['ci_high']:{d}}]</td>"
                f"<td class=l>{_verdict(r).replace('B', chr(65 + b))}</td></tr>"
            )
        parts.append("</table>")
        by = "psnr" if "psnr_a" in joined and joined["psnr_a"].notna().any() else "consistency"
        if by + "_a" in joined and len(joined):
            gap = (joined[f"{by}_b"] - joined[f"{by}_a"]).abs().sort_values(ascending=False, kind="stable")
            keys = gap.index[:top].tolist()
            parts.append(f"<h3>The {len(keys)} keys where the runs differ most (|Δ {by.upper()}|)</h3>")
            parts.append(_side_by_side(runs[0], runs[b], chr(65 + b), keys, joined, by, thumbs[0], thumbs[b]))
    return hr.page(f"Run comparison: {' vs '.join(_solvers(runs))}", "".join(parts))


def _solvers(runs: list[dict]) -> list[str]:
    """Each run's solver, as the page titles name them (``A: DDNM``, ...)."""
    return [f"{chr(65 + i)}: {hr.solver_title(run_solver(r['spec']) or '?')}" for i, r in enumerate(runs)]


def _settings_text(settings: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((settings or {}).items())) or "defaults"


def _side_by_side(
    ra: dict,
    rb: dict,
    name_b: str,
    keys: list[str],
    joined: pd.DataFrame,
    by: str,
    thumbs_a: hr.Thumbs,
    thumbs_b: hr.Thumbs,
) -> str:
    head = "".join(
        f'<div class="hd">{h}</div>' for h in ("", "A restored", f"{name_b} restored", "ground truth")
    )
    cells = []
    dec = hr.METRICS[by][1]
    for k in keys:
        ta, tb = hr.key_tiles(ra, k, thumbs_a), hr.key_tiles(rb, k, thumbs_b)
        va, vb = float(joined.loc[k, f"{by}_a"]), float(joined.loc[k, f"{by}_b"])
        stats = (
            f"<span>{by.upper()} A {hr.fmt(va, dec)}</span>"
            f"<span>{by.upper()} {name_b} {hr.fmt(vb, dec)}</span>"
            f'<span data-metric="{by}_delta" data-key="{html.escape(k)}" data-value="{vb - va!r}">'
            f"Δ {vb - va:+{dec}}</span>"
        )
        cells.append(
            f'<div class="key">{html.escape(k)}{stats}</div>'
            + "".join(
                f"<div>{hr.img(t, f'{k} {label}')}</div>"
                for t, label in (
                    (ta.get("restored"), "A"),
                    (tb.get("restored"), name_b),
                    (ta.get("truth") or ta.get("input"), "truth"),
                )
            )
        )
    return (
        f'<div class="grid" style="grid-template-columns:minmax(140px,220px) repeat(3,130px)">'
        f"{head}{''.join(cells)}</div>"
    )


def compare(
    outputs: list[str], options: dict[str, Any], *, html_path: str | None = None, top: int = 6, seed: int = 0
) -> int:
    if len(outputs) < 2:
        raise JobError(f"compare needs at least two outputs, got {len(outputs)}")
    runs = []
    for out in outputs:
        run = hr.load_run(out, options)
        if not len(run["df"]):
            raise JobError(f"{out}: no committed rows to compare")
        runs.append({**run, "options": options})
    pairs = []
    for i, run in enumerate(runs[1:], start=1):
        joined, rows = paired(runs[0]["df"], run["df"], seed=seed)
        pairs.append((f"{chr(65 + i)} vs A", joined, rows))
    print_tables(runs, pairs)
    if html_path:
        stem = os.path.splitext(html_path)[0]
        folder, rel = stem + "_files", os.path.basename(stem) + "_files"
        storage.remove(folder, options)
        thumbs = [
            hr.Thumbs(storage.join(folder, chr(97 + i)), f"{rel}/{chr(97 + i)}", options)
            for i in range(len(runs))
        ]
        text = _page(runs, pairs, thumbs, top)
        storage.write_bytes(html_path, text.encode(), options)
        print(f"\nwrote {html_path}")
    return EXIT_OK
