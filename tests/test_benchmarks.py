"""The benchmark tooling (benchmarks/): its peers compute the loss they claim, its memory
method sees real allocations, the script and the plot run end to end; plus small
pytest-benchmark cases per provider so regressions show.

    .venv/bin/python -m pytest tests/test_benchmarks.py -q
    .venv/bin/python -m pytest tests/test_benchmarks.py -q --benchmark-skip   # without the timed cases
"""
import csv
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH_DIR)

import benchmark_psd_loss  # noqa: E402
import device_check  # noqa: E402
import plot  # noqa: E402
import providers  # noqa: E402
import rows as bench_rows  # noqa: E402
from chunked_loss import chunked_clip_loss  # noqa: E402
from device_stages import timing as device_timing  # noqa: E402
from providers import Case, InfClProvider, all_providers, make_inputs  # noqa: E402
from runner import IsolatedWorker  # noqa: E402

from psd_kernels import psd_clip_loss  # noqa: E402
from psd_kernels.tools import roofline  # noqa: E402
from psd_kernels.vocabulary import NO_TEACHER, OPS  # noqa: E402

VERSION = re.compile(r"^psd \S+ git [0-9a-f]{7,}(\+dirty)?; torch \S+")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny cases run faster and steadier on one thread (no OpenMP hand-offs on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _teacher_kwargs(teacher, b, d_teacher, dtype):
    if teacher == "self_scaled":
        return {"teacher_scale": torch.tensor(1.7, dtype=dtype)}
    if teacher == "separate":
        return {"teacher_image": torch.randn(b, d_teacher, dtype=dtype),
                "teacher_text": torch.randn(b, d_teacher, dtype=dtype),
                "teacher_scale": torch.tensor(2.5, dtype=dtype)}
    return {}


@pytest.mark.parametrize("teacher", providers.BENCHMARK_TEACHERS)
@pytest.mark.parametrize("b,chunk", [(97, 32), (5, 1), (64, 64)])
def test_chunked_loss_matches_reference_float64(teacher, b, chunk):
    """Loss and gradients (image, text, scale) of the chunked peer equal the reference's."""
    d, d_teacher = 19, 11
    image = torch.randn(b, d, dtype=torch.float64, requires_grad=True)
    text = torch.randn(b, d, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    kwargs = _teacher_kwargs(teacher, b, d_teacher, torch.float64)
    alphas = {} if teacher == NO_TEACHER else {"alpha_image": 0.3, "alpha_text": 0.6}
    want = psd_clip_loss(image, text, scale, backend="reference", **alphas, **kwargs)
    got = chunked_clip_loss(image, text, scale, chunk=chunk, **alphas, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(torch.autograd.grad(got, (image, text, scale)),
                    torch.autograd.grad(want, (image, text, scale))):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any aten op produces while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("chunk,holds_b_by_b", [(32, False), (100, True)])
def test_chunked_loss_never_builds_b_by_b(chunk, holds_b_by_b):
    """With chunk c no op output exceeds c x B elements in forward or backward (c = B: it does)."""
    b, d = 100, 16
    inputs = make_inputs(Case(b, d, "separate"), torch.device("cpu"))
    recorder = _LargestOutput()
    with recorder:
        loss = chunked_clip_loss(inputs["image"], inputs["text"], inputs["scale"],
                                 teacher_image=inputs["teacher_image"], teacher_text=inputs["teacher_text"],
                                 teacher_scale=inputs["teacher_scale"], alpha_image=0.5, chunk=chunk)
        loss.backward()
    assert (recorder.largest >= b * b) == holds_b_by_b
    assert recorder.largest <= chunk * b


@pytest.mark.parametrize("teacher", ["self_scaled", "separate"])
def test_open_clip_distill_is_twice_psd_at_half_alpha(teacher):
    """ClipLoss + DistillClipLoss (contrastive + distill) == 2 x PSD(alpha=0.5), values and gradients;
    ClipLoss == PSD(alpha=0): the mapping the benchmark prints."""
    loss_mod = pytest.importorskip("open_clip.loss", reason="open_clip_torch is not installed")
    b, d = 37, 24
    image = F.normalize(torch.randn(b, d, dtype=torch.float64), dim=1).requires_grad_()
    text = F.normalize(torch.randn(b, d, dtype=torch.float64), dim=1).requires_grad_()
    scale = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
    kwargs = _teacher_kwargs(teacher, b, 13, torch.float64)
    t_image = kwargs.get("teacher_image", image.detach())
    t_text = kwargs.get("teacher_text", text.detach())
    contrastive, distill = loss_mod.DistillClipLoss()(image, text, scale, t_image, t_text, kwargs["teacher_scale"])
    psd = psd_clip_loss(image, text, scale, alpha_image=0.5, backend="reference", **kwargs)
    torch.testing.assert_close(contrastive + distill, 2 * psd, rtol=1e-12, atol=1e-12)
    for g, w in zip(torch.autograd.grad(contrastive + distill, (image, text, scale)),
                    torch.autograd.grad(2 * psd, (image, text, scale))):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    clip = loss_mod.ClipLoss()(image, text, scale)
    torch.testing.assert_close(clip, psd_clip_loss(image, text, scale, backend="reference"),
                               rtol=1e-12, atol=1e-12)


def test_peak_memory_sees_a_freed_allocation():
    """A 64 MiB buffer allocated and freed inside the window shows; an empty window shows ~0. In a
    fresh process, as the benchmarks measure: memory other tests freed in this one could be reused."""
    code = """
import torch
from psd_kernels.tools.peak_memory import PeakMemory, release_freed_memory_to_os
release_freed_memory_to_os()
meter = PeakMemory(torch.device("cpu"))
meter.start()
buffer = torch.ones(16 << 20)       # 64 MiB, touched
del buffer
print(meter.peak())
meter.start()
print(meter.peak())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    freed, empty = map(int, out.stdout.split())
    assert freed >= 60 << 20 and empty < 16 << 20, (freed, empty)


class _Grows:
    def __init__(self, per_b2, per_b):
        self.per_b2, self.per_b = per_b2, per_b

    def memory_guess(self, case):
        return 123.0


def test_memory_prediction_follows_measured_growth():
    quadratic = [{"batch": b, "mem_full": 8.0 * b * b} for b in (1024, 2048)]
    linear = [{"batch": b, "mem_full": 1000.0 * b} for b in (1024, 2048)]
    provider = _Grows(0, 0)
    case = Case(8192, 16)
    assert benchmark_psd_loss.predict_memory(provider, case, []) == 123.0
    assert benchmark_psd_loss.predict_memory(provider, case, quadratic) == pytest.approx(8.0 * 8192 ** 2)
    assert benchmark_psd_loss.predict_memory(provider, case, linear) == pytest.approx(1000.0 * 8192)
    assert benchmark_psd_loss.predict_memory(provider, case, quadratic[:1]) == pytest.approx(8.0 * 8192 ** 2)


def test_cases_past_the_memory_cap_or_the_deadline_are_not_run():
    """_attempt records "oom" / "skipped" from the predictions without measuring anything."""
    provider = _Grows(0, 0)
    provider.name = "grows"
    history = [{"batch": 1024, "mem_full": 1 << 20, "full_s": 1.0}]
    settings = {"warmup": 1, "min_reps": 3, "max_reps": 10, "budget_s": 2.0, "seed": 0}
    record = benchmark_psd_loss._attempt(provider, Case(1 << 20, 8), torch.device("cpu"), history,
                                         None, settings, cap=16 << 30, deadline=None)
    assert record["status"] == "oom" and record["predicted_bytes"] == pytest.approx((1 << 20) * 1024 ** 2)
    record = benchmark_psd_loss._attempt(provider, Case(2048, 8), torch.device("cpu"), history,
                                         None, settings, cap=16 << 30, deadline=time.monotonic() + 10)
    assert record["status"] == "skipped" and "16 s" in record["message"]     # 1 warm-up + 3 reps of 4 s


def test_loss_check_flags_a_provider_that_disagrees():
    case = Case(64, 8, "separate")
    records = [{"case": case, "provider": "psd-reference", "status": "ok", "loss": 4.0},
               {"case": case, "provider": "openclip-distill", "status": "ok", "loss": 8.0},
               {"case": case, "provider": "torch-chunked", "status": "ok", "loss": 4.1}]
    problems = benchmark_psd_loss.loss_checks(records)
    assert len(problems) == 1 and problems[0].startswith("torch-chunked")


def test_worker_is_killed_over_its_memory_limit_then_restarts():
    """The watchdog turns an oversized child into status "oom"; the next request gets a fresh child."""
    case = Case(32, 8)
    settings = {"warmup": 0, "min_reps": 1, "max_reps": 1, "budget_s": 0.0}
    tight = IsolatedWorker(rss_limit_bytes=32 << 20)      # below what importing torch takes
    try:
        result = tight.run("torch-chunked", case, "cpu", settings)
        assert result["status"] == "oom" and "killed" in result["message"]
        tight.rss_limit_bytes = 8 << 30
        result = tight.run("torch-chunked", case, "cpu", settings)
        assert result["status"] == "ok", result
        assert result["mem_full"] >= 0 and len(result["full"]) == 1
    finally:
        tight.close()


@pytest.mark.parametrize("op", OPS)
def test_cpu_benchmark_writes_versioned_rows_in_the_schema_and_plot_draws_them(tmp_path, op):
    """A tiny sweep in-process, for each op: every provider of the op measured, rows in the fixed
    schema stamped with the commit and whether the tree was clean, PNGs written."""
    markdown = tmp_path / "table.md"
    code = benchmark_psd_loss.main(["--op", op, "--preset", "tiny", "--isolate", "none", "--batch", "24", "40",
                                    "--warmup", "0", "--min-reps", "1", "--max-reps", "2",
                                    "--out", str(tmp_path), "--markdown", str(markdown)])
    assert code == 0
    with open(tmp_path / f"{op}.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == bench_rows.CSV_FIELDS
        rows = list(reader)
    assert len({r["version"] for r in rows}) == 1 and VERSION.match(rows[0]["version"]), rows[0]["version"]
    assert {r["op"] for r in rows} == {op}
    providers, _ = all_providers(torch.device("cpu"))
    timed = {(r["provider"], r["mode"], r["x_value"], json.loads(r["config"])["teacher"])
             for r in rows if r["metric"] == "time" and float(r["p50"]) > 0}
    assert {r["provider"] for r in rows} == {p.name for p in providers if p.op == op}
    for provider in (p for p in providers if p.op == op):
        for teacher in (NO_TEACHER, "separate"):
            if provider.unavailable(Case(24, 32, teacher), torch.device("cpu")) is None:
                assert {(provider.name, m, b, teacher) for m in ("forward", "backward", "full")
                        for b in ("24", "40")} <= timed
    assert any(r["metric"].startswith("speedup_vs_") for r in rows)
    assert any(r["metric"] == "memory" and r["unit"] == "MiB" for r in rows)
    assert "| B | provider |" in markdown.read_text()
    assert plot.main(["--data", str(tmp_path / f"{op}.csv"), "--out", str(tmp_path / "plots")]) == 0
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 10_000 for p in pngs)


def test_commit_names_the_head_and_dirty_when_files_other_than_the_data_changed(tmp_path):
    """benchmarks/rows.commit: the short commit, "+dirty" for a changed or new file; appended
    benchmark data (benchmarks/data) leaves the tree clean; no git repository: no commit."""
    assert bench_rows.commit(str(tmp_path)) == ""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "benchmarks" / "data").mkdir(parents=True)
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "benchmarks" / "data" / "rows.csv").write_text("op\n")
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()
    assert bench_rows.commit(str(tmp_path)) == head
    (tmp_path / "benchmarks" / "data" / "rows.csv").write_text("op\nrow\n")
    assert bench_rows.commit(str(tmp_path)) == head
    (tmp_path / "code.py").write_text("a = 2\n")
    assert bench_rows.commit(str(tmp_path)) == head + "+dirty"


def test_device_check_shares_the_schema_providers_and_row_writer():
    """The GPU check writes the benchmarks' CSV schema through their one row writer and times
    providers from the one list (benchmarks/providers.py) on the roofline's Case."""
    assert benchmark_psd_loss.append_csv is bench_rows.append_csv and device_check.Recorder is bench_rows.Recorder
    assert device_timing.all_providers is providers.all_providers
    assert device_timing.Case is providers.Case is roofline.Case
    assert device_timing.make_inputs is providers.make_inputs
    for op, names in device_timing.GPU_PROVIDERS.items():
        chosen, skipped = device_timing.gpu_providers(torch.device("cpu"), False, op)
        assert {p.name for p in chosen} <= set(names) and all(p.op == op for p in chosen)
        assert f"psd-{'siglip-' if op == 'psd_siglip_loss' else ''}triton" in skipped    # no CUDA here
    assert "inf-cl" in device_timing.gpu_providers(torch.device("cpu"), False)[1]


def test_inf_cl_provider_says_why_it_does_not_run():
    cpu = torch.device("cpu")
    _, skipped = all_providers(cpu, torch.bfloat16)
    assert "need a CUDA device" in skipped["inf-cl"]
    inf_cl = InfClProvider("inf-cl", "")
    assert "need a CUDA device" in inf_cl.unavailable(Case(64, 512), cpu)
    assert "multiple of its head_dim 256, got D = 500" in inf_cl.unavailable(Case(64, 500), torch.device("cuda"))
    assert "hard labels only" in inf_cl.unavailable(Case(64, 512, "separate"), torch.device("cuda"))


def test_triton_variants_set_their_environment_around_the_call(monkeypatch):
    """A variant provider sets its environment for the call only (psd_kernels.backends.triton.launcher reads it)."""
    monkeypatch.delenv("PSD_TRITON_COLUMN_STATS", raising=False)
    seen = {}
    monkeypatch.setattr("psd_kernels.psd_clip_loss",
                        lambda *a, **k: seen.setdefault("mode", os.environ.get("PSD_TRITON_COLUMN_STATS")))
    variant = providers.PSDProvider("psd-triton [second pass]", "", backend="triton",
                                    env=(("PSD_TRITON_COLUMN_STATS", "second_pass"),))
    variant.build(Case(8, 4))(make_inputs(Case(8, 4), torch.device("cpu")))
    assert seen["mode"] == "second_pass" and "PSD_TRITON_COLUMN_STATS" not in os.environ
    assert providers.TRITON_VARIANTS == {"psd-triton [second pass]": {"PSD_TRITON_COLUMN_STATS": "second_pass"}}


def test_device_check_imports_without_numpy():
    """The GPU machine's python may have torch and triton only."""
    code = f"import sys; sys.modules['numpy'] = None; sys.path.insert(0, {BENCH_DIR!r}); import device_check"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_device_check_dry_run_reaches_every_stage_and_writes_plottable_rows(tmp_path):
    """The GPU check end to end on CPU (TRITON_INTERPRET=1, tiny sizes): rows in the shared schema,
    stamped with the commit, plottable time and memory rows, every stage reached."""
    result = subprocess.run([sys.executable, os.path.join(BENCH_DIR, "device_check.py"), "--dry-run",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(tmp_path / "device_check.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == bench_rows.CSV_FIELDS
        rows = list(reader)
    assert {r["op"] for r in rows} == {"psd_correctness", "matmul_bf16", "psd_clip_loss", "psd_siglip_loss"}
    assert all(VERSION.match(r["version"]) and "; triton " in r["version"] for r in rows)
    timed = {r["provider"] for r in rows if r["op"] == "psd_clip_loss" and r["metric"] == "time"}
    assert {"psd-cpp", "psd-triton", "psd-triton [second pass]"} <= timed
    timed = {r["provider"] for r in rows if r["op"] == "psd_siglip_loss" and r["metric"] == "time"}
    assert {"psd-siglip-cpp", "psd-siglip-triton", "openclip-siglip"} <= timed
    checked = {r["x_value"].split(":")[0] for r in rows if r["op"] == "psd_correctness"}
    assert checked == {"psd_loss", "psd_clip_loss", "psd_siglip_loss"}
    assert not any("FAIL" in json.loads(r["config"]).get("status", "") for r in rows if r["op"] == "psd_correctness")
    assert all(json.loads(r["config"]) is not None for r in rows)
    assert "inf-cl not run: Inf-CL's Triton kernels need a CUDA device" in result.stdout
    assert "## B = 64, D = 16" in result.stdout and "total" in result.stdout
    assert plot.main(["--data", str(tmp_path / "device_check.csv"), "--out", str(tmp_path / "plots")]) == 0


_PROVIDERS, _ = all_providers(torch.device("cpu"))


@pytest.mark.parametrize("teacher", [NO_TEACHER, "separate"])
@pytest.mark.parametrize("provider", _PROVIDERS, ids=[p.name for p in _PROVIDERS])
def test_pytest_benchmark_times_each_providers_forward_backward(benchmark, provider, teacher):
    """pytest-benchmark: forward + backward at B=256, D=64 (compare runs with --benchmark-compare)."""
    case = Case(256, 64, teacher)
    if provider.unavailable(case, torch.device("cpu")) is not None:
        pytest.skip(provider.unavailable(case, torch.device("cpu")))
    benchmark.group = f"psd_clip_loss B=256 D=64 teacher={teacher}"
    fn, inputs = provider.build(case), make_inputs(case, torch.device("cpu"))

    def step():
        for name in ("image", "text", "scale"):
            inputs[name].grad = None
        loss = fn(inputs)
        loss.backward()
        return loss

    loss = benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)
    assert torch.isfinite(loss) and torch.isfinite(inputs["image"].grad).all()
