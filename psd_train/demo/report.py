"""Results tables and plots of psd_train runs.

    python -m psd_train.demo.report runs/sweep/results.csv          # the paired-seed tables (markdown)
    python -m psd_train.demo.report RESULTS.csv siglip              # against SigLIP instead of CLIP

summarize(results_csv)  the PSD settings each method ran with (where results.csv records them:
                        the SETTINGS columns, written by the sweep since they exist), then
                        per data size and noise level: each method's mean and spread (sample
                        std over seeds) of every headline metric, the paired differences to CLIP
                        (method minus CLIP on the same seed and data: mean, 95% paired t
                        interval over seeds and how many seeds the method won) and, where clean-caption CLIP ran on the same
                        seeds, how much of CLIP's noise gap each method wins back
regime_tables(results_csv)  CLIP's noise gap over epochs (noisy minus clean CLIP, paired by
                        seed, from each run's psd_metrics.csv), its peak, and the memorisation
                        of swapped training pairs over epochs
results_table(rows)     one table of several runs' final metrics (the demo prints it)
plot_runs(runs, path)   loss curves, zero-shot accuracy per evaluation and the alpha schedule of
                        several runs (their psd_steps.csv and psd_metrics.csv) in one figure
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd

HEADLINE = {"zeroshot_top1": "zero-shot", "i2t_r1": "i2t R@1", "t2i_r1": "t2i R@1",
            "i2t_r5": "i2t R@5", "t2i_r5": "t2i R@5", "linear_probe_top1": "linear probe",
            "shift_mean_top1": "shift (mean)"}
# Further columns of the tables: the share of swapped training pairs memorised (lower is better).
EXTRA = {"memorised_r1": "memorised"}
LOWER_IS_BETTER = {"memorised_r1"}
LABELS = {**HEADLINE, **EXTRA}
# The PSD settings a sweep run used, as the trainer resolved them (psd_train.args.SCHEDULE_FLAGS):
# results.csv columns; empty where the trainer's default applies (no ramp given: all of the run; no
# teacher scale: the teacher's own; no preset: the soft fraction, default 1) or the setting does not
# apply (the EMA momentum of a teacher that is not EMA). Older results.csv files lack them.
SETTINGS = ("psd_teacher", "psd_teacher_mode", "psd_alpha_max", "psd_schedule", "psd_ramp_epochs",
            "psd_ramp_steps", "psd_ema_momentum", "psd_teacher_scale", "psd_soft_fraction",
            "psd_soft_fraction_preset")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _groups(frame: pd.DataFrame):
    """(title, rows) per data size and noise level (the size only when there are several)."""
    sizes = frame["n_train"].nunique() if "n_train" in frame.columns else 1
    keys = ["n_train", "noise"] if sizes > 1 else ["noise"]
    for key, rows in frame.groupby(keys):
        key = key if isinstance(key, tuple) else (key,)
        noise = key[-1]
        title = (f"{int(key[0])} training images, " if sizes > 1 else "") + f"caption noise {noise:.0%}"
        yield title, key, rows


def summarize(results_csv: str, metrics=tuple(LABELS), baseline: str = "clip") -> str:
    """Markdown tables of a sweep's results.csv (see the module docstring). Values in percent."""
    if not os.path.isfile(results_csv):
        return f"(no results yet: {results_csv} does not exist)"
    frame = pd.read_csv(results_csv)
    metrics = [m for m in metrics if m in frame.columns]
    order = list(dict.fromkeys(frame["method"]))
    out = settings_table(frame, order)
    for title, key, at_noise in _groups(frame):
        seeds = sorted(int(s) for s in at_noise["seed"].unique())
        out.append(f"\n### {title}: mean ± std over seeds {seeds} (percent)\n")
        out.append("| method | runs | " + " | ".join(LABELS[m] for m in metrics) + " |")
        out.append("|---|---|" + "---|" * len(metrics))
        for method in order:
            rows = at_noise[at_noise["method"] == method]
            if rows.empty:
                continue
            cells = ["-" if rows[m].isna().all() else
                     f"{_pct(rows[m].mean())} ± {_pct(rows[m].std(ddof=1)) if rows[m].count() > 1 else '-'}"
                     for m in metrics]
            out.append(f"| {method} | {len(rows)} | " + " | ".join(cells) + " |")
        out.extend(_paired_table(at_noise, order, metrics, baseline))
        out.extend(_gap_recovered(frame, key, at_noise, order, baseline))
    return "\n".join(out)


def _given(value) -> bool:
    return not (value is None or (isinstance(value, float) and np.isnan(value)) or value == "")


def _number(value) -> str:
    return f"{float(value):g}"


def settings_cells(row) -> list[str]:
    """teacher, teacher mode, alpha max, schedule, ramp, EMA momentum, teacher scale, soft fraction of
    one results.csv row (its SETTINGS columns)."""
    if float(row["psd_alpha_max"]) == 0:
        return ["none (alpha 0)", "-", "0", "-", "-", "-", "-", "-"]
    if row["psd_schedule"] == "constant":
        ramp = "none (constant)"
    elif _given(row["psd_ramp_steps"]):
        ramp = f"{int(row['psd_ramp_steps'])} steps"
    elif _given(row["psd_ramp_epochs"]):
        ramp = f"{_number(row['psd_ramp_epochs'])} epochs"
    else:
        ramp = "whole run"
    momentum = _number(row["psd_ema_momentum"]) if _given(row["psd_ema_momentum"]) else "-"
    scale = _number(row["psd_teacher_scale"]) if _given(row["psd_teacher_scale"]) else "own"
    if _given(row["psd_soft_fraction_preset"]):
        fraction = f"preset {row['psd_soft_fraction_preset']}"
    else:
        fraction = _number(row["psd_soft_fraction"]) if _given(row["psd_soft_fraction"]) else "1"
    return [str(row["psd_teacher"]), str(row["psd_teacher_mode"]), _number(row["psd_alpha_max"]),
            str(row["psd_schedule"]), ramp, momentum, scale, fraction]


def settings_table(frame: pd.DataFrame, order: list) -> list[str]:
    """Lines of the table of the PSD settings each method ran with; [] for a results.csv without
    the SETTINGS columns. A method whose runs differ lists each variant (a / b)."""
    if not set(SETTINGS) <= set(frame.columns):
        return []
    lines = []
    for method in order:
        rows = frame[(frame["method"] == method) & frame["psd_alpha_max"].notna()]
        variants = list(dict.fromkeys(tuple(settings_cells(r)) for _, r in rows.iterrows()))
        if not variants:
            lines.append(f"| {method} | " + " | ".join(["not recorded"] * 8) + " |")
            continue
        cells = [" / ".join(dict.fromkeys(v[i] for v in variants)) for i in range(8)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return ["\n### PSD settings each method ran with (the trainer's defaults where the method sets nothing)\n",
            "| method | teacher | teacher mode | alpha max | alpha schedule | alpha ramp | EMA momentum | "
            "teacher scale | soft fraction |", "|---|" + "---|" * 8, *lines]


def paired_interval(diff: pd.Series, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of paired differences d_1..d_n: the paired t interval
    mean +- t_{(1+level)/2, n-1} * sd / sqrt(n) (sd the sample std); low = high = mean when n = 1."""
    from scipy import stats

    n, mean = len(diff), float(diff.mean())
    if n < 2:
        return mean, mean, mean
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * float(diff.std(ddof=1)) / np.sqrt(n)
    return mean, mean - half, mean + half


def _paired_table(at_noise: pd.DataFrame, order: list, metrics: list, baseline: str) -> list[str]:
    """Lines of the paired-difference table (method - baseline on the same seed and data): mean,
    95% paired t interval, seeds won; [] when no method has a seed paired with the baseline."""
    base = at_noise[at_noise["method"] == baseline].set_index("seed")
    lines = []
    for method in order:
        rows = at_noise[at_noise["method"] == method].set_index("seed")
        paired = rows.index.intersection(base.index)
        if method == baseline or len(paired) == 0:
            continue
        cells = []
        for m in metrics:
            diff = (rows.loc[paired, m] - base.loc[paired, m]).dropna()
            if diff.empty:
                cells.append("-")
                continue
            mean, low, high = paired_interval(100 * diff)
            won = int((diff < 0).sum()) if m in LOWER_IS_BETTER else int((diff > 0).sum())
            interval = f" [{low:+.1f}, {high:+.1f}]" if len(diff) > 1 else ""
            cells.append(f"{mean:+.1f}{interval} ({won}/{len(diff)})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return [f"\npaired difference to {baseline} (method - {baseline}, same seed and data; points): mean "
            "[95% paired t interval over seeds], seeds won / paired (for memorised, won means lower)\n",
            "| method | " + " | ".join(LABELS[m] for m in metrics) + " |", "|---|" + "---|" * len(metrics),
            *lines]


def _gap_recovered(frame, key, at_noise, order, baseline, metrics=("zeroshot_top1", "shift_mean_top1")) -> list[str]:
    """Lines of a table: the share of the noise gap (clean CLIP - noisy CLIP, same seeds) each
    method wins back, (method - noisy CLIP) / gap, from the seed means."""
    if key[-1] == 0:
        return []
    clean = frame[(frame["noise"] == 0) & (frame["method"] == baseline)]
    if len(key) > 1:
        clean = clean[clean["n_train"] == key[0]]
    clean = clean.set_index("seed")
    base = at_noise[at_noise["method"] == baseline].set_index("seed")
    seeds = clean.index.intersection(base.index)
    metrics = [m for m in metrics if m in frame.columns]
    if len(seeds) == 0 or not metrics:
        return []
    gaps = {m: clean.loc[seeds, m].mean() - base.loc[seeds, m].mean() for m in metrics}
    out = []
    for method in order:
        rows = at_noise[at_noise["method"] == method].set_index("seed")
        paired = rows.index.intersection(seeds)
        if method == baseline or len(paired) == 0:
            continue
        cells = []
        for m in metrics:
            won = rows.loc[paired, m].mean() - base.loc[paired, m].mean()
            cells.append(f"{100 * won / gaps[m]:+.0f}%" if gaps[m] > 0 else "-")
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    if not out:
        return []
    return [f"\nnoise gap (clean {baseline} - noisy {baseline}, seeds {sorted(int(s) for s in seeds)}): "
            + ", ".join(f"{HEADLINE[m]} {100 * g:.1f} points" for m, g in gaps.items())
            + "; share of it each method wins back (method - noisy CLIP) / gap:\n",
            "| method | " + " | ".join(HEADLINE[m] for m in metrics) + " |", "|---|" + "---|" * len(metrics), *out]


CURVE_METRICS = {"zeroshot_top1": "zero-shot", "i2t_r1": "i2t R@1", "shift_mean_top1": "shift (mean)",
                 "train_zeroshot_top1": "train zero-shot"}


def load_curves(results_csv: str, method: str = "clip") -> pd.DataFrame:
    """The per-evaluation rows (psd_metrics.csv) of every finished run of `method` listed in a
    sweep's results.csv, with its n_train, noise and seed; for a results folder without the runs'
    logs, its curves.csv (those rows of every method, with a method column)."""
    folder = os.path.dirname(os.path.abspath(results_csv))
    logs, saved = os.path.join(folder, "logs"), os.path.join(folder, "curves.csv")
    if not os.path.isdir(logs) and os.path.isfile(saved):  # a results folder: the curves kept as one CSV
        curves = pd.read_csv(saved)
        return curves[curves["method"] == method].drop(columns="method").reset_index(drop=True)
    frame = pd.read_csv(results_csv)
    parts = []
    for r in frame[frame["method"] == method].itertuples():
        n_train = int(getattr(r, "n_train"))
        path = os.path.join(logs, f"{method}-n{n_train}-noise{r.noise}-seed{r.seed}", "psd_metrics.csv")
        if os.path.isfile(path):
            curve = pd.read_csv(path)
            curve["n_train"], curve["noise"], curve["seed"] = n_train, r.noise, r.seed
            steps_csv = os.path.join(os.path.dirname(path), "psd_steps.csv")
            if os.path.isfile(steps_csv):  # the mean training loss of each epoch (0-based there)
                loss = pd.read_csv(steps_csv).groupby("epoch")["loss"].mean()
                curve["train_loss"] = [loss.get(e - 1, np.nan) for e in curve["epoch"]]
            parts.append(curve)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def regime_tables(results_csv: str, method: str = "clip", every: int = 5) -> str:
    """CLIP's noise gap over epochs and its memorisation of swapped pairs (module docstring)."""
    if not os.path.isfile(results_csv):
        return f"(no results yet: {results_csv} does not exist)"
    curves = load_curves(results_csv, method)
    if curves.empty or (curves["noise"] == 0).sum() == 0:
        return "(no per-epoch curves of clean-caption runs)"
    out = []
    for n_train, by_size in curves.groupby("n_train"):
        clean = by_size[by_size["noise"] == 0].set_index(["seed", "epoch"])
        last = int(by_size["epoch"].max())
        noises = sorted(x for x in by_size["noise"].unique() if x > 0)
        # the epochs most runs evaluated: a run with another --eval-every would add one-seed rows
        runs_per_epoch = by_size.groupby("epoch")[["noise", "seed"]].apply(lambda g: len(g.drop_duplicates()))
        n_runs = len(by_size[["noise", "seed"]].drop_duplicates())
        evaluated = sorted(int(e) for e, n in runs_per_epoch.items() if 2 * n > n_runs)
        epochs = evaluated if len(evaluated) <= 8 else [e for e in evaluated if e % every == 0 or e in (1, last)]
        metrics = [m for m in CURVE_METRICS if m in by_size.columns]
        seeds = sorted(int(s) for s in by_size["seed"].unique())
        out.append(f"\n### {method}, {n_train} training images: clean accuracy and noisy - clean gap over "
                   f"epochs (points, mean ± std over seeds {seeds}, paired by seed; an epoch averages the seeds "
                   "that evaluated it)\n")
        head = ["epoch"] + [f"{CURVE_METRICS[m]} clean" for m in metrics[:3]]
        head += [f"{CURVE_METRICS[m]} gap {p:.0%}" for p in noises for m in metrics[:3]]
        out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for e in epochs:
            cells = [str(e)]
            c = clean.xs(e, level="epoch") if e in clean.index.get_level_values("epoch") else None
            for m in metrics[:3]:
                cells.append("-" if c is None else f"{_pct(c[m].mean())} ± {_pct(c[m].std(ddof=1))}")
            for p in noises:
                noisy = by_size[(by_size["noise"] == p) & (by_size["epoch"] == e)].set_index("seed")
                for m in metrics[:3]:
                    if c is None or noisy.empty:
                        cells.append("-")
                        continue
                    s = noisy.index.intersection(c.index)
                    d = 100 * (noisy.loc[s, m] - c.loc[s, m])
                    cells.append(f"{d.mean():+.1f} ± {d.std(ddof=1):.1f}" if len(s) > 1 else f"{d.mean():+.1f}")
            out.append("| " + " | ".join(cells) + " |")
        out.append(f"\n### {method}, {n_train} training images: peak and final held-out zero-shot, "
                   "memorisation of the swapped training pairs (mean over seeds)\n")
        out.append("| noise | peak zero-shot (epoch) | final zero-shot | final - peak | final shift (mean) | "
                   "train zero-shot | clean pairs fit (R@1) | swapped pairs memorised (R@1, count) | "
                   "swapped images retrieving their true caption |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for p, rows in by_size.groupby("noise"):
            per_seed = rows.sort_values("epoch").groupby("seed")
            peak = per_seed["zeroshot_top1"].max()
            peak_epoch = per_seed.apply(lambda g: int(g.loc[g["zeroshot_top1"].idxmax(), "epoch"]),
                                        include_groups=False)
            final = per_seed.last()
            n_swapped = int(round(p * n_train))
            mem = final["memorised_r1"].mean() if "memorised_r1" in final and p > 0 else np.nan
            cells = [f"{p:.0%}", f"{_pct(peak.mean())} ({', '.join(map(str, peak_epoch.tolist()))})",
                     _pct(final["zeroshot_top1"].mean()), f"{100 * (final['zeroshot_top1'] - peak).mean():+.1f}",
                     _pct(final["shift_mean_top1"].mean()),
                     _pct(final["train_zeroshot_top1"].mean()) if "train_zeroshot_top1" in final else "-",
                     _pct(final["train_fit_r1"].mean()) if "train_fit_r1" in final else "-",
                     "-" if np.isnan(mem) else f"{_pct(mem)}% ({mem * n_swapped:.0f} of {n_swapped})",
                     "-" if np.isnan(mem) else _pct(final["swapped_true_r1"].mean())]
            out.append("| " + " | ".join(cells) + " |")
        out.append(f"\n### {method}, {n_train} training images: training set and held-out set over epochs "
                   "(mean over seeds; loss: the epoch's mean training loss; memorised: percent of the swapped "
                   "pairs whose image ranks its wrong caption first)\n")
        noise_levels = sorted(by_size["noise"].unique())
        head = ["epoch"]
        for p in noise_levels:
            head += [f"loss {p:.0%}", f"train zero-shot {p:.0%}", f"held-out zero-shot {p:.0%}"]
            head += [f"memorised {p:.0%}"] if p > 0 else []
        out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for e in epochs:
            cells = [str(e)]
            for p in noise_levels:
                rows = by_size[(by_size["noise"] == p) & (by_size["epoch"] == e)]
                keys = ["train_loss", "train_zeroshot_top1", "zeroshot_top1"] + (["memorised_r1"] if p > 0 else [])
                for k in keys:
                    v = rows[k].mean() if k in rows and len(rows) else np.nan
                    cells.append("-" if np.isnan(v) else (f"{v:.2f}" if k == "train_loss" else _pct(v)))
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def results_table(rows: dict[str, dict], metrics=None) -> str:
    """A markdown table: one row per run label, one column per metric (percent)."""
    if metrics is None:
        metrics = [k for k in next(iter(rows.values()))]
    head = "| run | " + " | ".join(LABELS.get(m, m.replace("_top1", "")) for m in metrics) + " |"
    lines = [head, "|---|" + "---|" * len(metrics)]
    for label, values in rows.items():
        lines.append(f"| {label} | " + " | ".join(_pct(values[m]) if m in values and values[m] == values[m] else "-"
                                                 for m in metrics) + " |")
    return "\n".join(lines)


def plot_runs(runs: dict[str, str], path: str, reference: dict[str, str] | None = None) -> str:
    """Plot loss (smoothed), zero-shot accuracy and alpha against the step for each run's log dir.
    reference: {label: log dir} of runs drawn as grey reference lines in the accuracy panel only
    (e.g. CLIP on clean captions)."""
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
    for label, log_dir in (reference or {}).items():
        metrics_csv = os.path.join(log_dir, "psd_metrics.csv")
        if os.path.isfile(metrics_csv):
            metrics = pd.read_csv(metrics_csv)
            axes[1].plot(metrics["step"], 100 * metrics["zeroshot_top1"], color="grey", linestyle=":", marker=".",
                         label=f"{label} zero-shot")
    axes[0].set(title="training loss (each run's own objective, 10-step mean)", xlabel="step", ylabel="loss")
    axes[1].set(title="held-out accuracy", xlabel="step", ylabel="percent")
    axes[2].set(title="alpha schedule", xlabel="step", ylabel="alpha")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center right" if ax is axes[1] else "best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    results = sys.argv[1] if len(sys.argv) > 1 else "runs/sweep/results.csv"
    baseline = sys.argv[2] if len(sys.argv) > 2 else "clip"   # siglip: the sigmoid-loss methods' baseline
    print(summarize(results, baseline=baseline))
    print(regime_tables(results, method=baseline))
