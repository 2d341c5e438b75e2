"""Statistics, plots and the docs table of bench/evidence.py (kept apart so tests can import them without torch).

Every comparison is paired by seed: d_s = metric(method, seed s) − metric(baseline, seed s); the effect is the
mean of d_s with a 95% t-interval, mean ± t_{0.975, n−1}·sd/√n. "no effect measured" is written when the
interval contains 0: it means this run cannot tell the arms apart, not that they are equal.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

# two-sided 95% Student t quantiles t_{0.975, df}, df = 1..30 (standard table values)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
START, END = "<!-- evidence-table:start (python bench/evidence.py --write-docs) -->", "<!-- evidence-table:end -->"


def t975(df: int) -> float:
    return T975[df - 1] if df <= len(T975) else 1.96


def paired_ci(diffs: list[float]) -> tuple[float, list[float] | None]:
    """(mean, [lo, hi]) of the 95% t-interval of the mean paired difference; None with fewer than 2 pairs."""
    m = statistics.mean(diffs)
    if len(diffs) < 2:
        return m, None
    h = t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return m, [m - h, m + h]


def first_reach(curve: list, target: float) -> float | None:
    """First x of a [(x, value)] curve with value >= target (None: never)."""
    return next((x for x, v in curve if v >= target - 1e-12), None)


def summarize(method: str, s, seeds: list[int], runs: list[dict], quick: bool) -> dict:
    """One method's entry of evidence.json from its runs (dicts of bench/evidence.run_one)."""
    arms = list(s.arms)
    ok = {(r["arm"], r["seed"]): r for r in runs if "error" not in r}
    out = {"setting": s.desc, "recipe": s.recipe, "paper": s.paper, "metric": s.metric, "quick": quick,
           "seeds": seeds, "baseline": arms[0], "target": s.target,
           "errors": [r for r in runs if "error" in r],
           "arms": {a: {"modifiers": s.arms[a], "per_seed": [ok[a, sd]["final"] if (a, sd) in ok else None
                                                               for sd in seeds],
                        "curves": [ok[a, sd]["curve"] if (a, sd) in ok else None for sd in seeds],
                        "steps": next((ok[a, sd]["steps"] for sd in seeds if (a, sd) in ok), None),
                        "wall_s": [ok[a, sd]["wall_s"] for sd in seeds if (a, sd) in ok],
                        **({"image_evals": [ok[a, sd].get("image_evals") for sd in seeds if (a, sd) in ok]}
                           if method == "diffusion" else {}),
                        **({"flat_group_frac": [round(ok[a, sd]["flat_group_frac"], 3) for sd in seeds
                                                if "flat_group_frac" in ok.get((a, sd), {})]})}
                    for a in arms},
           "comparisons": []}
    for a, base in s.pairs or [(a, arms[0]) for a in arms[1:]]:
        pairs = [sd for sd in seeds if (a, sd) in ok and (base, sd) in ok]
        if not pairs:
            continue
        diffs = [ok[a, sd]["final"] - ok[base, sd]["final"] for sd in pairs]
        mean, ci = paired_ci(diffs)
        # steps (or image-evals) to the target: the fixed one, else the baseline's final value on the same seed.
        # A baseline that ends at or below its own start gives no target to reach (every curve "reaches" it at
        # step 0): that seed counts as n/a, not as 0 steps.
        tgt = {sd: s.target if s.target is not None else ok[base, sd]["final"] for sd in pairs}
        na = [sd for sd in pairs if s.target is None and ok[base, sd]["curve"][0][1] >= tgt[sd]]
        out["comparisons"].append({
            "arm": a, "vs": base, "n": len(pairs), "per_seed_diff": diffs, "mean_diff": mean, "ci95": ci,
            "steps_to_target": {"target": s.target if s.target is not None else "baseline final (same seed)",
                                "baseline_did_not_rise": na,
                                base: [None if sd in na else first_reach(ok[base, sd]["curve"], tgt[sd])
                                       for sd in pairs],
                                a: [None if sd in na else first_reach(ok[a, sd]["curve"], tgt[sd]) for sd in pairs]}})
    return out


def verdict(ci: list[float] | None, vs: str = "baseline") -> str:
    if ci is None:
        return "too few seeds"
    if ci[0] <= 0 <= ci[1]:
        return "no effect measured"
    return f"better than {vs}" if ci[0] > 0 else f"worse than {vs}"


def _reach(vals: list, na: int = 0) -> str:
    """Median steps over the seeds that reached the target (reached/seeds); `na` seeds had no target."""
    if vals and na == len(vals):
        return f"n/a (baseline did not rise on any of {na} seeds)"
    hit = [v for v in vals if v is not None]
    tail = f"; {na} n/a: baseline did not rise" if na else ""
    return (f"{statistics.median(hit):g} ({len(hit)}/{len(vals) - na}{tail})" if hit
            else f"— (0/{len(vals) - na}{tail})")


def render_table(res: dict) -> str:
    """The Evidence table (markdown) for evidence.json's content `res`."""
    quick = any(m.get("quick") for m in res["methods"].values())
    L = [START, "",
         f"Generated from `bench/results/evidence.json` (`{res.get('command', 'python bench/evidence.py')}`)"
         + (": **the quick run** (fewer steps and seeds than the full table; a first look, not the evidence)."
            if quick else "."),
         "Effect = mean over seeds of (method − baseline) on the same seed, with a 95% t-interval. "
         "Steps to target: median over seeds of the first evaluation at or above the target (reached/seeds).", "",
         "| method | setting | metric | seeds | arm vs reference | effect (95% CI) | reading | steps to target "
         "(reference; arm) |",
         "|---|---|---|---|---|---|---|---|"]
    for name, m in res["methods"].items():
        for c in m["comparisons"]:
            ci = c["ci95"]
            eff = f"{c['mean_diff']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
            st, vs = c["steps_to_target"], c.get("vs", m["baseline"])
            na = len(st.get("baseline_did_not_rise", []))
            L.append(f"| {name}{' (quick)' if m.get('quick') else ''} | {m['setting']} | {m['metric']} | {c['n']} | "
                     f"{c['arm']} vs {vs} | {eff} | {verdict(ci, vs)} | {_reach(st[vs], na)}; {_reach(st[c['arm']], na)} |")
    L += ["", END]
    return "\n".join(L)


def write_docs(res: dict, path: Path) -> None:
    """Replace the Evidence table in docs/modifiers.md (between its markers), or add the section before
    "## Writing your own"."""
    text, table = path.read_text(), render_table(res)
    if START in text:
        head, _, rest = text.partition(START)
        text = head + table + rest.partition(END)[2]
    else:
        sec = ("## Evidence: the modifiers in their papers' conditions\n\n`bench/evidence.py` runs each modifier "
               "against its baseline on the same seeds, in a setting chosen to match the paper's conditions "
               "(the settings are fixed in the script; see its docstring).\n\n" + table + "\n\n")
        anchor = "## Writing your own"
        text = text.replace(anchor, sec + anchor, 1) if anchor in text else text.rstrip("\n") + "\n\n" + sec
    path.write_text(text)


def plot_method(method: str, m: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (arm, a) in enumerate(m["arms"].items()):
        color = f"C{i}"
        curves = [c for c in a["curves"] if c]
        for c in curves:
            ax.plot(*zip(*c), color=color, alpha=0.25, lw=1)
        if curves and all(len(c) == len(curves[0]) for c in curves):
            xs = [p[0] for p in curves[0]]
            ax.plot(xs, [statistics.mean(c[j][1] for c in curves) for j in range(len(xs))], color=color, lw=2.5,
                    marker="o", ms=3, label=f"{arm} (mean of {len(curves)})")
    if m.get("target") is not None:
        ax.axhline(m["target"], color="grey", ls="--", lw=0.8, label=f"target {m['target']}")
    ax.set(xlabel="denoiser image-evals" if method == "diffusion" else "step", ylabel=m["metric"][:40],
           title=f"{method}{' (quick)' if m.get('quick') else ''}: held-out metric")
    ax.legend(fontsize=8)
    for j, c in enumerate(m["comparisons"]):
        bx.scatter([j] * len(c["per_seed_diff"]), c["per_seed_diff"], color="grey", s=12, zorder=3)
        if c["ci95"]:
            bx.errorbar([j], [c["mean_diff"]], yerr=[[c["mean_diff"] - c["ci95"][0]], [c["ci95"][1] - c["mean_diff"]]],
                        fmt="o", color=f"C{j + 1}", capsize=5, zorder=4)
    bx.axhline(0, color="black", lw=0.8)
    bx.set(xticks=range(len(m["comparisons"])), xticklabels=[f"{c['arm']}\n− {c.get('vs', m['baseline'])}" for c in m["comparisons"]],
           ylabel="paired difference (per seed, mean, 95% CI)", title="method − baseline, same seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
