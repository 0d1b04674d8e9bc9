"""python -m psd_train under torchrun: 2 CPU processes, gloo, --local-loss --gather-with-grad.

    .venv/bin/python -m pytest tests/test_train_distributed.py -q

Each run is `torch.distributed.run --standalone --nproc_per_node 2` of
tests/train_distributed_worker.py (one rank of `python -m psd_train`, recorded) on a 64-image
slice of the demo data with psd-tiny: 8 rows per rank, 4 optimizer steps per epoch, 2 epochs,
soft fraction 0.5. For every teacher (self at another scale, EMA, previous epoch, frozen
distill from a local checkpoint), for the EMA teacher with --accum-freq 2 and for the EMA
teacher on the sigmoid loss (--siglip, PSDSigLipLoss): the job exits 0,
the student and the EMA / previous-epoch teacher end identical on both ranks, the ranks draw
different soft subsets, and only rank 0 writes the logs, the step log, TensorBoard and the
checkpoints. A job SIGKILLed in the middle of epoch 1 and resumed with --resume latest ends
with the metrics, losses and weights of the uninterrupted job, and draws the same soft subsets.
"""
import pytest

pytest.importorskip("open_clip_train", reason="needs the training extras: pip install '.[train]'")
import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from psd_train.demo.data import build_demo_data  # noqa: E402
from psd_train.demo.model import TRAIN_FLAGS, create_demo_model  # noqa: E402

WORKER = Path(__file__).with_name("train_distributed_worker.py")
STEPS = 8  # 64 rows / (2 ranks x 8 rows) = 4 steps per epoch, 2 epochs
KILL_AT = 6  # the middle of epoch 1 (steps 5-8)
KNOWN_MESSAGES = ("pin_memory", "falling back to CPU", "No pretrained weights loaded", "Reducer buckets")


def _this_checkout() -> str:
    """PYTHONPATH for the ranks: the worker script's folder comes first on their sys.path, not this
    checkout, so without it they would import whatever psd_train the environment installed."""
    return os.pathsep.join([str(Path(__file__).resolve().parent.parent)]
                           + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("psd_demo")
    return build_demo_data(root, noise=0.3, seed=0, n_train=64, n_val=16, n_test=40, progress=False)


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    """A frozen psd-tiny for --distill-pretrained: a local checkpoint in open_clip_train's format."""
    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save({"state_dict": create_demo_model()[0].state_dict()}, path)
    return str(path)


def flags(data, logs, name, *extra):
    return [*TRAIN_FLAGS, "--train-data", data["train_csv"], "--dataset-type", "csv", "--csv-separator", "\t",
            "--csv-img-key", "filepath", "--csv-caption-key", "title", "--batch-size", "8", "--epochs", "2",
            "--workers", "0", "--lr", "1e-3", "--warmup", "2", "--seed", "3", "--logs", str(logs), "--name", name,
            "--dist-backend", "gloo", "--local-loss", "--gather-with-grad", "--report-to", "tensorboard",
            "--psd-threads", "1", "--psd-alpha-max", "0.5", "--psd-soft-fraction", "0.5", *extra]


def launch(out: Path, argv, kill_at_step=None):
    """Run 2 ranks of the worker; (torchrun's exit status, its output, {rank: record} of the ranks that ended)."""
    out.mkdir(parents=True)
    kill = [] if kill_at_step is None else ["--kill-at-step", str(kill_at_step)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(out), *kill, "--", *argv]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": _this_checkout()})
    records = {r: torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)
               if (out / f"rank{r}.pt").exists()}
    return done.returncode, done.stdout + done.stderr, records


def steps(log_dir: Path) -> list[dict]:
    with open(log_dir / "psd_steps.csv") as f:
        return list(csv.DictReader(f))


TEACHER_FLAGS = {
    "self_scale5": ["--psd-teacher-scale", "5"],
    "ema": ["--psd-teacher", "ema", "--psd-ema-momentum", "0.8", "--psd-eval-data", None],
    "prev_epoch": ["--psd-teacher", "prev_epoch"],
    "distill": ["--distill-model", "psd-tiny", "--distill-pretrained", None],
    "ema_accum2": ["--psd-teacher", "ema", "--psd-ema-momentum", "0.8", "--batch-size", "4", "--accum-freq", "2"],
    "siglip_ema": ["--siglip", "--psd-teacher", "ema", "--psd-ema-momentum", "0.8"],
}


def teacher_flags(name, data, teacher_checkpoint):
    """TEACHER_FLAGS[name] with its file argument filled in."""
    fill = {"--psd-eval-data": data["root"], "--distill-pretrained": teacher_checkpoint}
    extra = TEACHER_FLAGS[name]
    return [fill[extra[i - 1]] if value is None else value for i, value in enumerate(extra)]


@pytest.fixture(scope="module")
def runs(data, teacher_checkpoint, tmp_path_factory):
    """Every teacher's job, each launched on first use."""
    root = tmp_path_factory.mktemp("dist")
    done = {}

    def run(name):
        if name not in done:
            status, output, records = launch(root / name, flags(data, root / "logs", name,
                                                               *teacher_flags(name, data, teacher_checkpoint)))
            done[name] = {"status": status, "output": output, "records": records, "log_dir": root / "logs" / name}
        return done[name]
    return run


@pytest.mark.parametrize("teacher", list(TEACHER_FLAGS))
def test_two_ranks_train_in_step(teacher, runs):
    run = runs(teacher)
    assert run["status"] == 0, run["output"][-3000:]
    one, two = run["records"][0], run["records"][1]
    assert one["status"] == two["status"] == 0
    assert one["loss_world"] == two["loss_world"] == 2
    # the student and the teacher copy: the same on both ranks, to the bit
    assert one["student"].keys() == two["student"].keys()
    for name, value in one["student"].items():
        assert torch.equal(value, two["student"][name]), name
    if teacher in ("ema", "ema_accum2", "prev_epoch", "siglip_ema"):
        assert one["teacher"] is not None
        for name, value in one["teacher"].items():
            assert torch.equal(value, two["teacher"][name]), name
    # each rank softens 4 of its own 8 rows (2 micro-batches of 4 with --accum-freq 2) per direction
    # at steps 1-7 (alpha is 0 at step 0), drawn from its own stream
    drawn = list(one["soft"])
    assert drawn == list(two["soft"]) and len(drawn) == 2 * (STEPS - 1)
    assert all(len(one["soft"][key]) == len(two["soft"][key]) == 4 for key in drawn)
    assert sum(one["soft"][key] != two["soft"][key] for key in drawn) >= len(drawn) // 2
    # only rank 0 writes: the step log once per epoch, the checkpoint after every epoch, TensorBoard
    assert two["written"] == [] and not two["tensorboard"] and one["tensorboard"]
    assert one["written"].count("psd_steps.csv") == 2 and one["written"].count("psd_latest.pt") == 2
    log_dir = run["log_dir"]
    assert [int(r["step"]) for r in steps(log_dir)] == list(range(1, STEPS + 1))
    assert len(os.listdir(log_dir / "tensorboard")) == 1
    assert sorted(os.listdir(log_dir / "checkpoints")) == ["epoch_1.pt", "epoch_2.pt", "psd_latest.pt"]
    assert sorted(p for p in os.listdir(log_dir) if p.startswith("out")) == ["out.log"]
    # a CPU run's console: none of the framework messages psd_train knows the cause of
    for message in KNOWN_MESSAGES:
        assert message not in run["output"]


def test_killed_job_resumes_to_the_uninterrupted_result(runs, data, tmp_path):
    reference = runs("ema")  # the same flags, never interrupted
    assert reference["status"] == 0, reference["output"][-3000:]
    argv = flags(data, tmp_path / "logs", "killed", *teacher_flags("ema", data, None))
    status, output, records = launch(tmp_path / "first", argv, kill_at_step=KILL_AT)
    assert status == -signal.SIGKILL, output[-3000:]
    assert records == {}  # neither rank got to the end
    log_dir = tmp_path / "logs" / "killed"
    assert [int(r["step"]) for r in steps(log_dir)] == [1, 2, 3, 4]  # epoch 0 done, epoch 1 lost

    status, output, records = launch(tmp_path / "resumed", argv + ["--resume", "latest"])
    assert status == 0, output[-3000:]
    resumed, full = records[0], reference["records"][0]
    with open(log_dir / "psd_final_metrics.json") as f, open(reference["log_dir"] / "psd_final_metrics.json") as g:
        metrics, expected = json.load(f), json.load(g)
    assert metrics == pytest.approx(expected, abs=1e-6)
    got, want = steps(log_dir), steps(reference["log_dir"])
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert [float(r["loss"]) for r in got] == pytest.approx([float(r["loss"]) for r in want], rel=1e-5)
    for part in ("student", "teacher"):
        for name, value in full[part].items():
            torch.testing.assert_close(resumed[part][name], value, rtol=1e-5, atol=1e-6, msg=name)
    # the resumed job ran epoch 1 only (PSDLoss steps 4-7), and drew the soft subsets of the
    # uninterrupted job, rank by rank
    for rank in (0, 1):
        redo = records[rank]["soft"]
        assert sorted({step for step, _ in redo}) == [4, 5, 6, 7]
        assert all(redo[key] == reference["records"][rank]["soft"][key] for key in redo)
