"""psd_train's hold on open_clip_train: the version guard, the patch and its undoing, the teacher feed.

    .venv/bin/python -m pytest tests/test_train_compat.py -q
"""
import pytest

pytest.importorskip("open_clip_train", reason="needs the training extras: pip install '.[train]'")
import logging  # noqa: E402
import warnings  # noqa: E402

import open_clip_train.main as oc_main  # noqa: E402
import torch  # noqa: E402

from psd_train import compat  # noqa: E402
from psd_train.compat import OpenClipVersionError, check_open_clip, patched  # noqa: E402
from psd_train.feed import StudentWithTeacher, for_loop  # noqa: E402


def test_installed_open_clip_passes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_open_clip()


def test_changed_signature_stops_with_both_versions(monkeypatch):
    def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, args, tb_writer=None):
        pass

    monkeypatch.setattr(oc_main, "train_one_epoch", train_one_epoch)
    with pytest.raises(OpenClipVersionError) as error:
        check_open_clip()
    message = str(error.value)
    assert f"open_clip_torch {compat.installed_version()} is installed" in message
    assert "supports open_clip_torch 3.3.x (tested with 3.3.0)" in message
    assert "open_clip_train.main.train_one_epoch(" in message and "\n" not in message


def test_missing_name_stops(monkeypatch):
    monkeypatch.delattr(oc_main, "setup_logging")
    with pytest.raises(OpenClipVersionError, match="open_clip_train.main.setup_logging is missing"):
        check_open_clip()


def test_untested_version_with_the_same_signatures_warns(monkeypatch):
    monkeypatch.setattr(compat, "installed_version", lambda: "3.4.0")
    with pytest.warns(UserWarning, match="open_clip_torch 3.4.0 is untested"):
        check_open_clip()


@pytest.mark.parametrize("quiet", [False, True])
def test_patched_swaps_and_restores(quiet):
    original = {name: getattr(oc_main, name) for name in ("train_one_epoch", "setup_logging", "create_loss")}
    handlers = list(logging.root.handlers)

    def replacement(*args, **kwargs):
        pass

    import open_clip_train.data as oc_data

    csv_dataset = oc_data.CsvDataset

    class Dataset(csv_dataset):
        pass

    ddp = torch.nn.parallel.DistributedDataParallel
    with patched(oc_main, replacement, quiet=quiet, csv_dataset=Dataset):
        assert torch.nn.parallel.DistributedDataParallel is compat.CpuAwareDDP
        assert oc_main.train_one_epoch is replacement
        assert oc_data.CsvDataset is Dataset
        assert oc_main.create_loss is original["create_loss"]  # never replaced
        assert (oc_main.setup_logging is not original["setup_logging"]) == quiet
        oc_main.setup_logging(None, logging.INFO)
        console = [h for h in logging.root.handlers if h not in handlers]
        assert [h.level for h in console] == [logging.WARNING if quiet else logging.NOTSET]
    assert {name: getattr(oc_main, name) for name in original} == original
    assert oc_data.CsvDataset is csv_dataset
    assert logging.root.handlers == handlers
    assert torch.nn.parallel.DistributedDataParallel is ddp


def test_feed_hides_the_teacher_from_the_optimizer():
    student, teacher = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    model, loss = for_loop(student, teacher, loss_fn=lambda **kw: kw, accum_freq=1)
    assert isinstance(model, StudentWithTeacher)
    assert list(model.parameters()) == list(student.parameters())
    assert model.module is student  # what open_clip_train's unwrap_model reads
    assert for_loop(student, None, loss_fn=len, accum_freq=1) == (student, len)


def test_scale_counted_once_keeps_the_value_and_divides_the_gradient():
    scale = torch.tensor(14.3, requires_grad=True)
    _, loss = for_loop(torch.nn.Linear(2, 2), None, loss_fn=lambda logit_scale, **kw: logit_scale, accum_freq=3)
    passed = loss(logit_scale=scale * 1.0, image_features=None)
    assert passed.item() == scale.item()
    passed.backward()
    assert scale.grad.item() == pytest.approx(1 / 3, rel=1e-7)


@pytest.mark.parametrize("version", ["2.8.0", "2.9.1+cu128", torch.__version__])
def test_torch_in_the_supported_range_passes(version):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.check_torch(version)


def test_older_torch_stops_with_both_versions():
    with pytest.raises(compat.TorchVersionError) as error:
        compat.check_torch("2.7.1+cu126")
    assert str(error.value) == ("torch 2.7.1+cu126 is installed; psd supports torch 2.8 to 2.14 "
                                "(tested stacks: docs/compatibility.md)")


def test_newer_torch_warns_and_runs():
    with pytest.warns(UserWarning, match=r"torch 2\.15\.0 is newer than the releases psd is tested on "
                                         r"\(torch 2\.8 to 2\.14\)"):
        compat.check_torch("2.15.0")
