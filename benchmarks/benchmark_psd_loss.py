"""Side-by-side micro-benchmark of the contrastive losses: time, memory, FLOP/s.

    .venv/bin/python benchmarks/benchmark_psd_loss.py --preset cpu      # `make bench`: < 10 min, 2 cores
    .venv/bin/python benchmarks/benchmark_psd_loss.py --op psd_siglip_loss --preset siglip-cpu   # the sigmoid loss
    .venv/bin/python benchmarks/benchmark_psd_loss.py --preset cpu-max  # B to 65536: where each runs out of memory (about an hour)
    .venv/bin/python benchmarks/benchmark_psd_loss.py --preset gpu      # on a CUDA machine
    .venv/bin/python benchmarks/plot.py                                 # PNGs from the CSV rows

--op picks the loss: psd_clip_loss (default, the symmetric softmax loss) or psd_siglip_loss (the
sigmoid loss, against open_clip's SigLipLoss). Providers (benchmarks/providers.py, the list
benchmarks/device_check.py times too): every psd_kernels backend usable on the device ("psd-reference", "psd-cpp", "psd-triton"), a
hand-written chunked PyTorch loss, open_clip's ClipLoss (no_teacher) and ClipLoss +
DistillClipLoss (with a teacher), and Inf-CL (no_teacher, CUDA only, D a multiple of 256).
Modes: forward, backward and full (forward + backward) of the same calls. Metrics:
median time with p20/p80 over the timed repetitions after warm-up, peak extra memory
(psd_kernels/tools/peak_memory.py states the method), achieved FLOP/s (formula printed) and, for
each psd provider, the time ratio to every peer measured in the same run.

Rows are appended to benchmarks/data/<op>.csv with the fixed schema and row writer of
benchmarks/rows.py (CSV_FIELDS, append_csv), stamped with the commit and whether the tree was clean.
A case predicted (from the provider's measured growth) to need more than --mem-cap-gib,
or killed by the watchdog on the way, is recorded as "oom" and larger batches of that
provider are not tried.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from psd_kernels.tools.peak_memory import (CPU_METHOD, CPU_METHOD_IN_PROCESS, CUDA_METHOD, available_bytes,
                                          release_freed_memory_to_os)
from providers import BENCHMARK_TEACHERS, OPS, Case, all_providers
from rows import append_csv, timestamp, version_string
from runner import IsolatedWorker, measure_safely

from psd_kernels.tools.roofline import FLOP_FORMULA
from psd_kernels.vocabulary import DTYPES, NO_TEACHER

LIKE_WITH_LIKE = {
    "psd_clip_loss": "openclip-clip == PSD alpha=0; openclip-distill returns contrastive + distill == 2 x "
                     "PSD(alpha=0.5, same teacher), the same math materialised (B x B logits, separate products "
                     "per direction); torch-chunked == PSD, row chunks + checkpoint",
    "psd_siglip_loss": "openclip-siglip == PSD sigmoid alpha=0 (SigLipLoss, world size 1: one B x B logit "
                       "block); with a teacher open_clip has no peer",
}
MODES = ("forward", "backward", "full")
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
GIB = 2 ** 30

PRESETS = {
    "tiny": dict(device="cpu", batch=[64, 96], dim=[32], teacher=[NO_TEACHER, "separate"],
                 dtype=["float32"], warmup=1, min_reps=2, max_reps=3, budget_s=0.1, time_limit_s=0),
    "cpu": dict(device="cpu", batch=[1024, 2048, 4096, 8192], dim=[512], teacher=[NO_TEACHER, "separate"],
                dtype=["float32"], warmup=1, min_reps=3, max_reps=10, budget_s=2.0, time_limit_s=480.0),
    "cpu-max": dict(device="cpu", batch=[1024 << i for i in range(7)], dim=[512],
                    teacher=[NO_TEACHER], dtype=["float32"], warmup=1, min_reps=1,
                    max_reps=5, budget_s=2.0, time_limit_s=0),
    "siglip-cpu": dict(device="cpu", batch=[4096, 8192], dim=[512, 768], teacher=[NO_TEACHER, "separate"],
                       dtype=["float32"], warmup=1, min_reps=3, max_reps=5, budget_s=2.0, time_limit_s=0),
    "gpu": dict(device="cuda", batch=[4096, 16384, 32768, 65536], dim=[512],
                teacher=[NO_TEACHER, "separate"], dtype=["bfloat16"], warmup=3, min_reps=10,
                max_reps=50, budget_s=1.0, time_limit_s=0),
}
# A call predicted to take longer than this is run once, without a warm-up call.
LONG_CALL_S = 30.0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", choices=OPS, default="psd_clip_loss", help="the loss to measure")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", help="cpu or cuda (default: the preset's)")
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes B, ascending")
    parser.add_argument("--dim", type=int, nargs="+", help="embedding widths D")
    parser.add_argument("--teacher", nargs="+", choices=BENCHMARK_TEACHERS)
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES))
    parser.add_argument("--providers", nargs="+", metavar="NAME",
                        help="only providers whose name starts with one of these")
    parser.add_argument("--warmup", type=int, help="untimed calls before timing")
    parser.add_argument("--min-reps", type=int)
    parser.add_argument("--max-reps", type=int)
    parser.add_argument("--budget-s", type=float, help="seconds of timed calls per case")
    parser.add_argument("--mem-cap-gib", type=float, default=16.0,
                        help="CPU: do not run a case predicted to need more extra memory (default 16); "
                             "CUDA: the device memory is the limit")
    parser.add_argument("--isolate", choices=("auto", "process", "none"), default="auto",
                        help="measure in a watched child process per provider (auto: on CPU)")
    parser.add_argument("--out", default=DATA_DIR, help="directory of the CSV files")
    parser.add_argument("--no-csv", action="store_true", help="print only, append no rows")
    parser.add_argument("--markdown", help="also write the tables to this file")
    parser.add_argument("--time-limit-s", type=float,
                        help="skip cases predicted to end past this many seconds (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if sorted(args.batch) != args.batch or min(args.batch) < 1:
        parser.error("--batch must be positive and ascending")
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {model}, {torch.get_num_threads()} threads"


def predict_memory(provider, case: Case, history: list) -> float:
    """Extra bytes `case` needs: a*B^2 + b*B through the last two measurements (at least
    linear growth from the last one), the provider's guess before any measurement."""
    if not history:
        return provider.memory_guess(case)
    b2, m2 = history[-1]["batch"], history[-1]["mem_full"]
    if len(history) == 1:
        return m2 * (case.batch / b2) ** 2
    b1, m1 = history[-2]["batch"], history[-2]["mem_full"]
    a = max(0.0, (m2 / b2 - m1 / b1) / (b2 - b1))
    b = m2 / b2 - a * b2
    return max(a * case.batch ** 2 + b * case.batch, m2 * case.batch / b2)


def quantiles(values) -> dict:
    p20, p50, p80 = np.percentile(np.asarray(values, dtype=float), [20, 50, 80])
    return {"p50": float(p50), "p20": float(p20), "p80": float(p80)}


def _predicted_call_s(history: list, batch: int) -> float:
    """Seconds of one full call at `batch`: the last measured time grown as B^2."""
    if not history:
        return 0.0
    return history[-1]["full_s"] * (batch / history[-1]["batch"]) ** 2


def _attempt(provider, case, device, history, worker, settings, cap, deadline) -> dict:
    """Measure one case unless its predicted memory or time rules it out."""
    record = {"case": case, "provider": provider.name}
    predicted = predict_memory(provider, case, history)
    if device.type == "cpu":
        limit = min(cap, available_bytes() - 2 * GIB)
    else:
        limit = torch.cuda.get_device_properties(device).total_memory
    call_s = _predicted_call_s(history, case.batch)
    run_settings = dict(settings)
    if call_s > LONG_CALL_S:
        run_settings.update(warmup=0, min_reps=1, max_reps=1)
    reps_s = min(run_settings["budget_s"], run_settings["max_reps"] * call_s)
    case_s = run_settings["warmup"] * call_s + max(run_settings["min_reps"] * call_s, reps_s)
    if predicted > limit:
        return dict(record, status="oom", predicted_bytes=predicted,
                    message=f"not run: predicted {predicted / GIB:.1f} GiB > limit {limit / GIB:.1f} GiB")
    if deadline is not None and time.monotonic() + case_s > deadline:
        return dict(record, status="skipped", predicted_bytes=predicted,
                    message=f"not run: predicted {case_s:.0f} s would pass the time limit "
                            f"(predicted memory {predicted / GIB:.2f} GiB)")
    if worker is not None:
        record.update(worker.run(provider.name, case, device.type, run_settings))
    else:
        record.update(measure_safely(provider, case, device, **run_settings))
    return record


def sweep(args, device: torch.device, log=print) -> list[dict]:
    """Measure every (config, B, provider); returns one record per case.

    Within a config, batch sizes ascend in the outer loop, so a --time-limit-s cut drops
    the largest batches of every provider alike; the time is shared evenly by the
    configs still to run. On CPU each provider has its own watched child process.
    """
    isolate = args.isolate == "process" or (args.isolate == "auto" and device.type == "cpu")
    cap = args.mem_cap_gib * GIB
    settings = {"warmup": args.warmup, "min_reps": args.min_reps, "max_reps": args.max_reps,
                "budget_s": args.budget_s, "seed": args.seed}
    configs = list(itertools.product(args.dim, args.teacher, args.dtype))
    start, records, told = time.monotonic(), [], set()
    for index, (dim, teacher, dtype) in enumerate(configs):
        deadline = None
        if args.time_limit_s:
            left = args.time_limit_s - (time.monotonic() - start)
            deadline = time.monotonic() + left / (len(configs) - index)
        providers, skipped = all_providers(device, DTYPES[dtype])
        for name, reason in skipped.items():
            if (name, reason) not in told:
                told.add((name, reason))
                log(f"skipped {name}: {reason}")
        providers = [p for p in providers if p.op == args.op
                     and (not args.providers or any(p.name.startswith(x) for x in args.providers))
                     and p.unavailable(Case(1, dim, teacher, dtype), device) is None]
        workers = {p.name: IsolatedWorker(int(cap + GIB)) if isolate else None for p in providers}
        history = {p.name: [] for p in providers}
        stop = {}
        try:
            for batch in args.batch:
                case = Case(batch, dim, teacher, dtype)
                for provider in providers:
                    if provider.name in stop:
                        record = dict(case=case, provider=provider.name, status=stop[provider.name][0],
                                      message=stop[provider.name][1])
                    else:
                        record = _attempt(provider, case, device, history[provider.name],
                                          workers[provider.name], settings, cap, deadline)
                    if record["status"] == "ok":
                        history[provider.name].append({
                            "batch": batch, "mem_full": record["mem_full"],
                            "full_s": quantiles(record["full"])["p50"] / 1e3})
                    elif provider.name not in stop:
                        outcome = {"oom": "ran out of memory", "skipped": "was skipped"}.get(
                            record["status"], "failed")
                        stop[provider.name] = (
                            "oom" if record["status"] == "oom" else "skipped",
                            f"not run: B={batch} {outcome} ({record.get('message', '')})")
                    records.append(record)
                    log(progress_line(record))
        finally:
            for worker in workers.values():
                if worker is not None:
                    worker.close()
    return records


def progress_line(record: dict) -> str:
    case = record["case"]
    head = f"{record['provider']:<17} B={case.batch:<6} D={case.dim} teacher={case.teacher} {case.dtype}:"
    if record["status"] != "ok":
        return f"{head} {record['status'].upper()} {record.get('message', '')}"
    q = {mode: quantiles(record[mode]) for mode in MODES}
    return (f"{head} full {q['full']['p50']:.2f} ms [{q['full']['p20']:.2f}, {q['full']['p80']:.2f}] "
            f"fwd {q['forward']['p50']:.2f} bwd {q['backward']['p50']:.2f} "
            f"peak {record['mem_full'] / 2**20:.1f} MiB, {record['reps']} reps, loss {record['loss']:.5f}")


def flops_unit(device: torch.device) -> tuple[str, float]:
    return ("TFLOP/s", 1e12) if device.type == "cuda" else ("GFLOP/s", 1e9)


def speedups(records: list[dict]) -> dict:
    """{(config json, B, mode, psd provider): {peer: (p50 ratio, low, high)}}: peer time / psd time."""
    ok = [r for r in records if r["status"] == "ok"]
    out = {}
    for mine in ok:
        if not mine["provider"].startswith("psd-"):
            continue
        for peer in ok:
            if peer is mine or peer["case"] != mine["case"]:
                continue
            for mode in MODES:
                a, b = quantiles(mine[mode]), quantiles(peer[mode])
                key = (json.dumps(mine["case"].config(), sort_keys=True), mine["case"].batch, mode,
                       mine["provider"])
                out.setdefault(key, {})[peer["provider"]] = (
                    b["p50"] / a["p50"], b["p20"] / a["p80"], b["p80"] / a["p20"])
    return out


def loss_checks(records: list[dict]) -> list[str]:
    """Each provider's loss against the first psd provider's on the same inputs (like with like)."""
    problems = []
    ok = [r for r in records if r["status"] == "ok"]
    for mine in ok:
        anchor = next((r for r in ok if r["case"] == mine["case"] and r["provider"].startswith("psd-")), None)
        if anchor is None or anchor is mine:
            continue
        factor = 2.0 if mine["provider"] == "openclip-distill" else 1.0
        tol = 1e-3 if mine["case"].dtype in ("float32", "float64") else 3e-2
        expected, got = anchor["loss"], mine["loss"] / factor
        if abs(got - expected) > tol * max(1.0, abs(expected)):
            problems.append(f"{mine['provider']} B={mine['case'].batch} {mine['case'].config()}: loss "
                            f"{got:.6f} (after /{factor:g}) vs {anchor['provider']} {expected:.6f}")
    return problems


def csv_rows(records: list[dict], device: torch.device, stamp: str, version: str, method: str, op: str):
    dev = device_name(device)
    unit, scale = flops_unit(device)
    base = {"op": op, "x_name": "B", "device": dev, "timestamp": stamp, "version": version}
    for record in records:
        case = record["case"]
        config = case.config()
        row = dict(base, provider=record["provider"], x_value=case.batch)
        if record["status"] != "ok":
            gib = record.get("predicted_bytes", record.get("observed_bytes", float("nan"))) / GIB
            yield dict(row, mode="full", metric=record["status"], unit="GiB", p50=gib, p20=gib, p80=gib,
                       config=json.dumps(dict(config, message=record.get("message", "")), sort_keys=True))
            continue
        timing = json.dumps(dict(config, reps=record["reps"], warmup=record["warmup"]), sort_keys=True)
        for mode in MODES:
            q = quantiles(record[mode])
            yield dict(row, mode=mode, metric="time", unit="ms", config=timing, **q)
            flops = case.flops(mode)
            yield dict(row, mode=mode, metric="throughput", unit=unit, config=timing,
                       p50=flops / (q["p50"] / 1e3) / scale, p20=flops / (q["p80"] / 1e3) / scale,
                       p80=flops / (q["p20"] / 1e3) / scale)
        mem_config = json.dumps(dict(config, method=method), sort_keys=True)
        for mode in ("forward", "full"):
            mib = record[f"mem_{mode}"] / 2 ** 20
            yield dict(row, mode=mode, metric="memory", unit="MiB", p50=mib, p20=mib, p80=mib,
                       config=mem_config)
    for (config, batch, mode, provider), peers in speedups(records).items():
        for peer, (mid, low, high) in peers.items():
            yield dict(base, provider=provider, mode=mode, metric=f"speedup_vs_{peer}", unit="x",
                       x_value=batch, p50=mid, p20=low, p80=high, config=config)


def markdown_tables(records: list[dict], device: torch.device) -> str:
    unit, scale = flops_unit(device)
    ratios = speedups(records)
    lines = []
    configs = list(dict.fromkeys(json.dumps(r["case"].config(), sort_keys=True) for r in records))
    for config in configs:
        c = json.loads(config)
        teacher = c["teacher"] + (f", D'={c['teacher_dim']}" if c["teacher"] == "separate" else "")
        lines += [f"\n#### D={c['dim']}, teacher={teacher}, alpha={c['alpha']}, {c['dtype']}\n",
                  f"| B | provider | forward ms | backward ms | full ms [p20, p80] | full {unit} "
                  f"| peak extra MiB | psd speed-up (peer time / psd time, full) |",
                  "|---:|---|---:|---:|---:|---:|---:|---|"]
        for r in (r for r in records if json.dumps(r["case"].config(), sort_keys=True) == config):
            b = r["case"].batch
            if r["status"] != "ok":
                lines.append(f"| {b} | {r['provider']} | {r['status'].upper()}: {r.get('message', '')} "
                             f"| | | | | |")
                continue
            q = {mode: quantiles(r[mode]) for mode in MODES}
            rate = r["case"].flops("full") / (q["full"]["p50"] / 1e3) / scale
            peers = ratios.get((config, b, "full", r["provider"]), {})
            vs = ", ".join(f"{mid:.2f}x vs {peer}" for peer, (mid, _, _) in peers.items())
            lines.append(f"| {b} | {r['provider']} | {q['forward']['p50']:.1f} | {q['backward']['p50']:.1f} "
                         f"| {q['full']['p50']:.1f} [{q['full']['p20']:.1f}, {q['full']['p80']:.1f}] "
                         f"| {rate:.2f} | {r['mem_full'] / 2**20:.1f} | {vs} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    isolate = args.isolate == "process" or (args.isolate == "auto" and device.type == "cpu")
    if device.type == "cuda":
        method = CUDA_METHOD
    else:
        method = CPU_METHOD if isolate else CPU_METHOD_IN_PROCESS
        release_freed_memory_to_os()
    stamp = timestamp()
    version = version_string()
    header = [f"device: {device_name(device)}; {version}; {stamp}",
              f"timing: median [p20, p80] of {args.min_reps}..{args.max_reps} repetitions after "
              f"{args.warmup} warm-up call(s) ({'CUDA events' if device.type == 'cuda' else 'time.perf_counter'})",
              f"memory: {method}",
              f"FLOP/s: {FLOP_FORMULA}",
              f"op: {args.op}; like with like: {LIKE_WITH_LIKE[args.op]}"]
    for line in header:
        print(line, flush=True)
    records = sweep(args, device, log=lambda line: print(line, flush=True))
    tables = markdown_tables(records, device)
    print(tables)
    problems = loss_checks(records)
    for problem in problems:
        print(f"LOSS MISMATCH: {problem}")
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(f"- {line}" for line in header) + "\n" + tables + "\n")
    if not args.no_csv:
        path = append_csv(csv_rows(records, device, stamp, version, method, args.op), args.out, f"{args.op}.csv")
        print(f"appended rows to {path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
