"""psd_train --siglip end to end on CPU: the sigmoid loss (PSDSigLipLoss) with every teacher.

    .venv/bin/python -m pytest tests/test_train_siglip.py -q

open_clip_train builds the model as it does for --siglip (a logit bias, init_logit_bias -10 and
init_logit_scale log 10), psd_train hands its loop PSDSigLipLoss with the PSD flags; on a 64-image
slice of the demo data with psd-tiny (4 steps of 16 per epoch, 2 epochs):
* at alpha 0 the loss is open_clip's SigLipLoss (the first step's loss, recomputed);
* each teacher (self, self at a fixed scale and bias, ema, prev_epoch, distill from a local
  checkpoint) trains, with finite losses that differ from the self teacher's where the teacher
  differs, and the logit bias is trained;
* a run killed after epoch 1 and resumed with --resume latest ends where the uninterrupted one does;
* CoCa keeps its one-line refusal, and the SigLIP-only flag asks for --siglip.
(--accum-freq with --siglip: tests/test_train_accumulation.py; 2 ranks: tests/test_train_distributed.py.)
"""
import pytest

pytest.importorskip("open_clip_train", reason="needs the training extras: pip install '.[train]'")
import torch  # noqa: E402

from psd_train.checkpoint import load_checkpoint  # noqa: E402
from psd_train.errors import FlagError  # noqa: E402
from psd_train.main import main  # noqa: E402
from test_train import argv as train_argv, data, read_steps  # noqa: E402,F401  (data is a fixture)


def argv(data, logs, name, *extra, epochs=2):
    """test_train's flags (psd-tiny on the demo slice, batch 16) with --siglip."""
    return train_argv(data, logs, name, "--siglip", *extra, epochs=epochs)


def losses(result):
    return [float(r["loss"]) for r in read_steps(result)]


SOFT = ["--psd-alpha-max", "0.5", "--psd-schedule", "constant", "--psd-soft-fraction", "0.5"]
TEACHER_FLAGS = {
    "self_fixed_scale_and_bias": ["--psd-teacher-scale", "5", "--psd-teacher-bias", "-3"],
    "ema": ["--psd-teacher", "ema", "--psd-ema-momentum", "0.5"],
    "prev_epoch": ["--psd-teacher", "prev_epoch"],
}


@pytest.fixture(scope="module")
def self_run(data, tmp_path_factory):
    return main(argv(data, tmp_path_factory.mktemp("logs"), "self", *SOFT))


def test_alpha_zero_trains_siglip_with_a_trained_bias(data, tmp_path):
    result = main(argv(data, tmp_path, "siglip", "--psd-alpha-max", "0", epochs=1))
    state = load_checkpoint(result["checkpoint"])["state_dict"]
    bias = next(v for k, v in state.items() if k.endswith("logit_bias"))
    scale = next(v for k, v in state.items() if k.endswith("logit_scale"))
    assert bias.numel() == 1 and bias.item() != -10.0        # open_clip_train's --siglip init, then trained
    assert abs(scale.item() - torch.log(torch.tensor(10.0)).item()) < 0.1
    assert all(torch.isfinite(torch.tensor(losses(result))))


@pytest.mark.parametrize("teacher", list(TEACHER_FLAGS))
def test_each_teacher_runs_and_changes_training(teacher, data, tmp_path, self_run):
    result = main(argv(data, tmp_path, teacher, *SOFT, *TEACHER_FLAGS[teacher]))
    got, self_losses = losses(result), losses(self_run)
    assert len(got) == 8 and all(torch.isfinite(torch.tensor(got)))
    if teacher == "prev_epoch":  # epoch 0 has no previous epoch: the student itself, as for self
        assert got[:4] == pytest.approx(self_losses[:4], rel=1e-5)
        assert got[4:] != pytest.approx(self_losses[4:], rel=1e-4)
    else:
        assert got[1:] != pytest.approx(self_losses[1:], rel=1e-4)
    assert load_checkpoint(result["checkpoint"])["psd"]["loss"]["_extra_state"]["step"] == 8


def test_distill_teacher_brings_its_scale_and_bias(data, tmp_path, self_run):
    first = main(argv(data, tmp_path, "teacher", epochs=1))
    teacher_checkpoint = str(tmp_path / "teacher.pt")
    torch.save({"state_dict": load_checkpoint(first["checkpoint"])["state_dict"]}, teacher_checkpoint)
    result = main(argv(data, tmp_path, "student", *SOFT, "--distill-model", "psd-tiny",
                       "--distill-pretrained", teacher_checkpoint))
    got = losses(result)
    assert len(got) == 8 and got != pytest.approx(losses(self_run), rel=1e-4)


def test_resume_matches_uninterrupted_run(data, tmp_path, monkeypatch):
    extra = [*SOFT, "--psd-teacher", "ema", "--psd-ema-momentum", "0.8"]
    full = main(argv(data, tmp_path, "full", *extra, epochs=2))
    import open_clip_train.main as oc_main
    original = oc_main.train_one_epoch

    def crash_in_epoch_1(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        return original(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer)

    monkeypatch.setattr(oc_main, "train_one_epoch", crash_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        main(argv(data, tmp_path, "resumed", *extra, epochs=2))
    monkeypatch.setattr(oc_main, "train_one_epoch", original)
    resumed = main(argv(data, tmp_path, "resumed", *extra, "--resume", "latest", epochs=2))
    assert losses(resumed) == pytest.approx(losses(full), rel=1e-5)
    want, got = load_checkpoint(full["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    for name, value in want["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_coca_is_refused_and_the_bias_flag_needs_siglip(data, tmp_path):
    with pytest.raises(FlagError, match="CoCa models"):
        main(argv(data, tmp_path, "coca", "--model", "coca_ViT-B-32"))
    plain = [a for a in argv(data, tmp_path, "clip", "--psd-teacher-bias", "-1") if a != "--siglip"]
    with pytest.raises(FlagError, match="--psd-teacher-bias .* needs --siglip"):
        main(plain)
    with pytest.raises(FlagError, match="--psd-teacher-mode within_modality is for the softmax loss"):
        main(argv(data, tmp_path, "wm", "--psd-teacher-mode", "within_modality"))
