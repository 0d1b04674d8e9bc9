"""Results tables and plots of psd_train runs.

    python -m psd_train.demo.report runs/sweep/results.csv          # the paired-seed tables (markdown)

summarize(results_csv)  per noise level: each method's mean and spread (sample std over
                        seeds) of every headline metric, then the paired differences to CLIP
                        (method minus CLIP on the same seed and data: mean, std and how many
                        seeds the method won)
results_table(rows)     one table of several runs' final metrics (the demo prints it)
plot_runs(runs, path)   loss curves, zero-shot accuracy per evaluation and the alpha schedule of
                        several runs (their psd_steps.csv and psd_metrics.csv) in one figure
"""
from __future__ import annotations

import os
import sys

import pandas as pd

HEADLINE = {"zeroshot_top1": "zero-shot", "i2t_r1": "i2t R@1", "t2i_r1": "t2i R@1",
            "i2t_r5": "i2t R@5", "t2i_r5": "t2i R@5", "linear_probe_top1": "linear probe",
            "shift_mean_top1": "shift (mean)"}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def summarize(results_csv: str, metrics=tuple(HEADLINE), baseline: str = "clip") -> str:
    """Markdown tables of a sweep's results.csv (see the module docstring). Values in percent."""
    if not os.path.isfile(results_csv):
        return f"(no results yet: {results_csv} does not exist)"
    frame = pd.read_csv(results_csv)
    metrics = [m for m in metrics if m in frame.columns]
    order = list(dict.fromkeys(frame["method"]))
    out = []
    for noise, at_noise in frame.groupby("noise"):
        seeds = sorted(int(s) for s in at_noise["seed"].unique())
        out.append(f"\n### caption noise {noise:.0%}: mean ± std over seeds {seeds} (percent)\n")
        out.append("| method | runs | " + " | ".join(HEADLINE[m] for m in metrics) + " |")
        out.append("|---|---|" + "---|" * len(metrics))
        for method in order:
            rows = at_noise[at_noise["method"] == method]
            if rows.empty:
                continue
            cells = [f"{_pct(rows[m].mean())} ± {_pct(rows[m].std(ddof=1)) if len(rows) > 1 else '-'}" for m in metrics]
            out.append(f"| {method} | {len(rows)} | " + " | ".join(cells) + " |")
        base = at_noise[at_noise["method"] == baseline].set_index("seed")
        if base.empty:
            continue
        out.append(f"\npaired difference to {baseline} (method - {baseline}, same seed and data): "
                   "mean ± std, seeds won / paired\n")
        out.append("| method | " + " | ".join(HEADLINE[m] for m in metrics) + " |")
        out.append("|---|" + "---|" * len(metrics))
        for method in order:
            if method == baseline:
                continue
            rows = at_noise[at_noise["method"] == method].set_index("seed")
            paired = rows.index.intersection(base.index)
            if len(paired) == 0:
                continue
            cells = []
            for m in metrics:
                diff = rows.loc[paired, m] - base.loc[paired, m]
                spread = _pct(diff.std(ddof=1)) if len(diff) > 1 else "-"
                cells.append(f"{100 * diff.mean():+.1f} ± {spread} ({int((diff > 0).sum())}/{len(diff)})")
            out.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def results_table(rows: dict[str, dict], metrics=None) -> str:
    """A markdown table: one row per run label, one column per metric (percent)."""
    if metrics is None:
        metrics = [k for k in next(iter(rows.values()))]
    head = "| run | " + " | ".join(HEADLINE.get(m, m.replace("_top1", "")) for m in metrics) + " |"
    lines = [head, "|---|" + "---|" * len(metrics)]
    for label, values in rows.items():
        lines.append(f"| {label} | " + " | ".join(_pct(values[m]) if m in values else "-" for m in metrics) + " |")
    return "\n".join(lines)


def plot_runs(runs: dict[str, str], path: str) -> str:
    """Plot loss (smoothed), zero-shot accuracy and alpha against the step for each run's log dir."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, log_dir in runs.items():
        steps = pd.read_csv(os.path.join(log_dir, "psd_steps.csv"))
        axes[0].plot(steps["step"], steps["loss"].rolling(10, min_periods=1).mean(), label=label)
        axes[2].plot(steps["step"], steps["alpha"], label=label)
        metrics_csv = os.path.join(log_dir, "psd_metrics.csv")
        if os.path.isfile(metrics_csv):
            metrics = pd.read_csv(metrics_csv)
            axes[1].plot(metrics["step"], 100 * metrics["zeroshot_top1"], marker="o", label=f"{label} zero-shot")
            axes[1].plot(metrics["step"], 100 * metrics["i2t_r1"], marker="x", linestyle="--",
                         label=f"{label} i2t R@1")
    axes[0].set(title="training loss (each run's own objective, 10-step mean)", xlabel="step", ylabel="loss")
    axes[1].set(title="held-out accuracy", xlabel="step", ylabel="percent")
    axes[2].set(title="alpha schedule", xlabel="step", ylabel="alpha")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(summarize(sys.argv[1] if len(sys.argv) > 1 else "runs/sweep/results.csv"))
