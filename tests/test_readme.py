"""The README's drop-in example runs as written.

    .venv/bin/python -m pytest tests/test_readme.py
"""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_drop_in_example_runs():
    pytest.importorskip("open_clip", reason="open_clip_torch is not installed")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "optimizer.step()" in b)
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert namespace["loss_fn"].step == 3
    assert namespace["checkpoint"]["loss"]["_extra_state"]["step"] == 3
