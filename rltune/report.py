"""`rltune report RUN_DIR [RUN_DIR ...]`: one self-contained HTML page (plus the PNGs) for one run or a
comparison of runs: learning curves, KL/entropy/clipping/gradient norm, phase times, modifier metrics, the
resolved recipe and sample completions."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from rltune.logging import read_metrics

# (title, metric keys) per panel; a panel is drawn only when some run logged one of its keys.
PANELS: list[tuple[str, list[str]]] = [
    ("Held-out accuracy (greedy)", ["eval/accuracy"]),
    ("Train reward (mean)", ["reward/mean"]),
    ("KL to reference", ["algo/kl"]),
    ("Entropy", ["algo/entropy"]),
    ("Clip fraction", ["algo/clip_frac"]),
    ("Gradient norm (pre-clip)", ["train/grad_norm"]),
    ("Response length (tokens)", ["rollout/response_len"]),
    ("Flat-group fraction", ["reward/flat_group_frac"]),
    ("Loss", ["loss/total"]),
    # Async rollouts (rollout.max_staleness) and off-policy correction (tis / icepop)
    ("Staleness (versions behind)", ["rollout/staleness_mean", "rollout/staleness_max"]),
    ("Waiting (s/step)", ["time/wait_rollout", "time/wait_train"]),
    ("Rollout overlap fraction", ["rollout/overlap_frac"]),
    ("Rollout-vs-trainer KL (k3)", ["mod/tis/kl_k3", "mod/icepop/kl_k3"]),
]
PHASES = ["time/rollout", "time/reward", "time/old_logprobs", "time/advantage", "time/update", "time/sync"]


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _plot(runs: dict[str, list[dict]], keys: list[str], title: str) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    drawn = False
    for name, rows in runs.items():
        for key in keys:
            x, y = _series(rows, key)
            if x:
                label = name if len(keys) == 1 else f"{name}: {key}"
                ax.plot(x, y, marker="o" if len(x) < 20 else None, ms=3, lw=1.4, label=label)
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if len(runs) > 1 or len(keys) > 1:
        ax.legend(fontsize=7)
    data = _png(fig)
    plt.close(fig)
    return data


def _phase_plot(runs: dict[str, list[dict]]) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    means = {p: [] for p in PHASES}
    for name in names:
        rows = [r for r in runs[name] if "time/step" in r]
        for p in PHASES:
            vals = [r.get(p, 0.0) or 0.0 for r in rows]
            means[p].append(sum(vals) / len(vals) if vals else 0.0)
    if not any(any(v) for v in means.values()):
        return None
    fig, ax = plt.subplots(figsize=(5.2, 0.6 + 0.5 * len(names)))
    left = [0.0] * len(names)
    for p in PHASES:
        ax.barh(names, means[p], left=left, label=p.split("/", 1)[1])
        left = [a + b for a, b in zip(left, means[p])]
    ax.set_xlabel("seconds per step (mean)")
    ax.set_title("Time per phase", fontsize=10)
    ax.legend(fontsize=7, ncol=3)
    data = _png(fig)
    plt.close(fig)
    return data


def _samples_html(run_dir: Path) -> str:
    path = run_dir / "samples.jsonl"
    if not path.exists():
        return "<p>No samples logged.</p>"
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not recs:
        return "<p>No samples logged.</p>"
    chosen = recs[:1] + recs[-1:] if len(recs) > 1 else recs
    out = []
    for rec in chosen:
        rows = "".join(
            f"<tr><td><code>{html.escape(s['prompt'][-120:])}</code></td><td><code>{html.escape(s['completion'])}"
            f"</code></td><td>{'' if s['reward'] is None else round(s['reward'], 3)}</td></tr>"
            for s in rec["samples"]
        )
        out.append(f"<h4>step {rec['step']} (best and worst)</h4><table><tr><th>prompt</th><th>completion</th>"
                   f"<th>reward</th></tr>{rows}</table>")
    return "".join(out)


def build_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not (d / "metrics.jsonl").exists():
            raise FileNotFoundError(f"{d} has no metrics.jsonl: is it a run directory (runs/<name>)?")
    runs = {d.name: read_metrics(d) for d in dirs}
    out_dir = Path(out) if out else (dirs[0] / "report" if len(dirs) == 1 else Path("report"))
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, bytes]] = []
    for title, keys in PANELS:
        png = _plot(runs, keys, title)
        if png:
            figures.append((title, png))
    mod_keys = sorted({k for rows in runs.values() for r in rows for k in r if k.startswith("mod/")})
    for key in mod_keys:
        png = _plot(runs, [key], key)
        if png:
            figures.append((key, png))
    phase = _phase_plot(runs)
    if phase:
        figures.append(("Time per phase", phase))
    imgs = []
    for i, (title, png) in enumerate(figures):
        fname = f"fig{i:02d}.png"
        (out_dir / fname).write_bytes(png)
        b64 = base64.b64encode(png).decode()
        imgs.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{b64}">'
                    f"<figcaption>{html.escape(title)}</figcaption></figure>")
    summary = []
    for name, rows in runs.items():
        acc = [r["eval/accuracy"] for r in rows if isinstance(r.get("eval/accuracy"), (int, float))]
        steps = [r["time/step"] for r in rows if isinstance(r.get("time/step"), (int, float))]
        med = sorted(steps)[len(steps) // 2] if steps else float("nan")
        acc_s = f"{acc[0]:.3f} → {acc[-1]:.3f}" if acc else "n/a"
        summary.append(f"<tr><td>{html.escape(name)}</td><td>{len(steps)}</td><td>{acc_s}</td>"
                       f"<td>{med:.3f}</td></tr>")
    recipes = "".join(
        f"<details><summary>{html.escape(d.name)}: resolved recipe</summary><pre>"
        f"{html.escape((d / 'recipe.yaml').read_text() if (d / 'recipe.yaml').exists() else 'n/a')}</pre></details>"
        for d in dirs
    )
    samples = "".join(f"<h3>{html.escape(d.name)}</h3>{_samples_html(d)}" for d in dirs)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>rltune report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}figure{{display:inline-block;margin:.5em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .5em;font-size:90%}}
figcaption{{text-align:center;font-size:85%}}</style></head><body>
<h1>rltune report</h1>
<table id="summary"><tr><th>run</th><th>steps</th><th>held-out accuracy (first → last)</th><th>median s/step</th></tr>
{''.join(summary)}</table>
<h2>Curves</h2><div id="figures">{''.join(imgs)}</div>
<h2>Samples</h2>{samples}
<h2>Recipes</h2>{recipes}
</body></html>"""
    index = out_dir / "index.html"
    index.write_text(page)
    return index
