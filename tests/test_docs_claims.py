"""What the docs state, kept true: flags, signatures and the README's measured figures.

    .venv/bin/python -m pytest tests/test_docs_claims.py -q

* every `--psd-*` flag that README.md or docs/ names is one of python -m psd_train's flags, and a
  flag documented as "`--a` (alias `--b`)" is shown by --help under the name --a with --b beside it;
* every call of a public psd_kernels function in a code block of README.md or docs/ uses its
  parameters, and a call written as the signature (positional arguments named as the parameters)
  lists every parameter, in order, with its real default;
* every figure of the README's Measured table is in a file its row cites: literally, or, for a
  CSV of benchmark rows, as the p50 of a row with that unit (ms, MiB, x) at the README's precision.
"""
from __future__ import annotations

import ast
import csv
import inspect
import re
from pathlib import Path

import pytest

import psd_kernels

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PUBLIC = {name: getattr(psd_kernels, name)
          for name in ("psd_loss", "psd_clip_loss", "psd_clip_loss_distributed", "PSDLoss", "psd_siglip_loss",
                       "psd_siglip_loss_distributed", "PSDSigLipLoss")}


def _flag_options() -> dict:
    """Each --psd-* option string -> the option strings of its flag, in --help's order."""
    args = pytest.importorskip("psd_train.args")
    out = {}
    for action in args.psd_parser()._actions:
        for option in action.option_strings:
            out[option] = tuple(action.option_strings)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_psd_flag_the_docs_name_is_in_help_under_that_name(doc):
    options = _flag_options()
    text = doc.read_text()
    named = set(re.findall(r"(--psd-[a-z0-9]+(?:-[a-z0-9]+)*)", text))
    assert not named - set(options), f"{doc.name} names flags psd_train does not have: {sorted(named - set(options))}"
    for primary, alias in re.findall(r"`(--psd-[a-z0-9-]+)[^`]*` \(alias `(--psd-[a-z0-9-]+)`\)", text):
        shown = options[primary]
        assert shown[0] == primary and alias in shown, \
            f"{doc.name} documents {primary} with the alias {alias}; --help shows {', '.join(shown)}"


def _calls(doc: Path):
    """(name, ast.Call) of each public function called in the doc's ```python blocks."""
    for block in re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in PUBLIC:
                yield node.func.id, node


def _parameters(name: str) -> dict:
    target = PUBLIC[name].__init__ if inspect.isclass(PUBLIC[name]) else PUBLIC[name]
    params = inspect.signature(target).parameters
    return {k: v for k, v in params.items() if k != "self"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_calls_match_the_signatures(doc):
    checked = 0
    for name, call in _calls(doc):
        params = _parameters(name)
        unknown = [k.arg for k in call.keywords if k.arg not in params]
        assert not unknown, f"{doc.name}: {name}() has no parameter {unknown}"
        positional = [a.id for a in call.args if isinstance(a, ast.Name)]
        if len(positional) != len(call.args) or positional != list(params)[:len(positional)] or not positional:
            continue  # an example call, not the signature
        written = positional + [k.arg for k in call.keywords]
        assert written == list(params), (f"{doc.name} writes {name}({', '.join(written)}); "
                                         f"the function is {name}{inspect.signature(PUBLIC[name])}")
        for keyword in call.keywords:
            default = params[keyword.arg].default
            assert ast.literal_eval(keyword.value) == default, \
                f"{doc.name}: {name}'s {keyword.arg} defaults to {default!r}, not {ast.unparse(keyword.value)}"
        checked += 1
    if doc.name == "api.md":
        assert checked >= 3, "docs/api.md writes the signatures of psd_loss, psd_clip_loss and psd_siglip_loss"


# -- the README's Measured table ----------------------------------------------------------------
NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
UNIT_FIGURE = re.compile(rf"(?<![\w.])({NUMBER}) ?(ms|MiB|x)\b")
FIGURE = re.compile(rf"(?<![\w.])[+-]?{NUMBER}")


def measured_rows() -> list[tuple[str, str, list[Path]]]:
    """(what, result, cited files) of each row of README.md's Measured table."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Measured", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("what", "---") or set(cells[0]) <= {"-"}:
            continue
        cited = [ROOT / link for link in re.findall(r"\]\(([^)#]+)", cells[2])]
        rows.append((cells[0], cells[1], cited))
    return rows


def _csv_values(path: Path) -> dict | None:
    """unit -> the p50 values of a benchmark CSV's rows with that unit (benchmarks/rows.py's schema);
    None for a CSV of another schema (its text is searched instead)."""
    values = {}
    with path.open() as handle:
        reader = csv.DictReader(handle)
        if not {"unit", "p50"} <= set(reader.fieldnames or ()):
            return None
        for row in reader:
            values.setdefault(row["unit"], []).append(float(row["p50"]))
    return values


def _in_csv(figure: str, unit: str, values: dict) -> bool:
    decimals = len(figure.split(".")[1]) if "." in figure else 0
    target = float(figure.replace(",", ""))
    return any(round(v, decimals) == target for v in values.get(unit, ()))


@pytest.mark.parametrize("what, result, cited", measured_rows(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_measured_figure_is_in_a_file_the_row_cites(what, result, cited):
    assert cited, f"the Measured row {what!r} cites no file"
    for path in cited:
        assert path.exists(), f"the Measured row {what!r} cites {path.relative_to(ROOT)}, which does not exist"
    schema = {p: _csv_values(p) for p in cited if p.suffix == ".csv"}
    csvs = [values for values in schema.values() if values is not None]
    texts = "\n".join(p.read_text() for p in cited if schema.get(p) is None)
    missing = []
    for figure, unit in UNIT_FIGURE.findall(result):
        if not any(_in_csv(figure, unit, values) for values in csvs) and f"{figure} {unit}" not in texts \
                and f"{figure}{unit}" not in texts:
            missing.append(f"{figure} {unit}")
    plain = UNIT_FIGURE.sub("", result)
    for figure in FIGURE.findall(plain):
        if not re.search(rf"(?<![\w.]){re.escape(figure)}(?![\d])", texts + "\n" + what):
            missing.append(figure)
    assert not missing, (f"the Measured row {what!r}: {missing} appear in none of "
                         f"{[str(p.relative_to(ROOT)) for p in cited]}")
