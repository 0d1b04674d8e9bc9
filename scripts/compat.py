"""The compatibility run: psd built CPU-only and tested on each declared torch / Triton stack.

    make compat                                  # the floor and the pins (several GB of downloads)
    python3 scripts/compat.py --stack floor      # one stack

For each stack: a scratch virtual environment .compat/<stack>/venv (reused when its torch is
already the stack's), the stack's torch, torchvision and triton with requirements.txt's other
lines, a copy of the working tree in .compat/<stack>/src built with PSD_SKIP_CUDA_BUILD=1
(psd_kernels._C is built inside the copy, so the checkout's own build is untouched), then the
whole pytest suite there (the library tests and the trainer's, the 2-rank torchrun test among
them). Each stack's result (versions, passed / failed / skipped, minutes) is printed and
appended to docs/compatibility.md's table with the date and the commit. Exits 1 when a stack
fails. Not part of `make test`: each stack downloads a CUDA build of torch (about 4 GB).
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".compat"
TABLE = ROOT / "docs" / "compatibility.md"
TABLE_HEAD = ("| date | commit | stack | python | torch | triton | numpy | open_clip_torch | build | passed | failed "
              "| skipped | minutes |")

# The range setup.py declares (psd_kernels/tools/info.py): its floor, torch 2.9 and the versions
# requirements.txt pins, each torch with the torchvision and triton it was released with. numpy
# < 2.4 for Triton 3.4 / 3.5, whose interpreter fails under numpy 2.4 (tests/triton_interpreter.py):
# with it the interpreted Triton tests run on those stacks instead of being skipped.
STACKS = {
    "floor": {"torch": "2.8.0", "torchvision": "0.23.0", "triton": "3.4.0", "numpy": "<2.4"},
    "torch-2.9": {"torch": "2.9.1", "torchvision": "0.24.1", "triton": "3.5.1", "numpy": "<2.4"},
    "pins": None,  # requirements.txt as it is
}


def requirements(stack: str) -> list[str]:
    """requirements.txt with the stack's versions of the packages it names."""
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    versions = STACKS[stack] or {}
    kept = [line for line in lines if re.split(r"[=<>! ]", line)[0] not in versions]
    return [name + (spec if spec[0] in "<>=!" else f"=={spec}") for name, spec in versions.items()] + kept


def run(cmd, log, **kwargs) -> subprocess.CompletedProcess:
    print("$", " ".join(map(str, cmd)), flush=True)
    with open(log, "a") as handle:
        return subprocess.run(list(map(str, cmd)), stdout=handle, stderr=subprocess.STDOUT, text=True, **kwargs)


def copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored) into dest."""
    if dest.exists():
        shutil.rmtree(dest)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def installed(python: Path, package: str) -> str:
    out = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "missing"


def counts(summary: str) -> dict:
    found = {key: int(n) for n, key in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    found["failed"] = found.get("failed", 0) + found.get("error", 0) + found.get("errors", 0)
    return {key: found.get(key, 0) for key in ("passed", "failed", "skipped")}


def run_stack(stack: str, pytest_args: list[str]) -> dict:
    home = SCRATCH / stack
    home.mkdir(parents=True, exist_ok=True)
    log = home / "log.txt"
    log.write_text("")
    venv, src = home / "venv", home / "src"
    python = venv / "bin" / "python"
    started = time.time()
    if not python.exists():
        run([sys.executable, "-m", "venv", venv], log, check=True)
    run([python, "-m", "pip", "install", "-q", "setuptools", "wheel", *requirements(stack)], log, check=True)
    copy_tree(src)
    env = dict(os.environ, PSD_SKIP_CUDA_BUILD="1")
    build = run([python, "-m", "pip", "install", "-q", "--no-build-isolation", "--use-pep517", "-e", "."], log, cwd=src, env=env)
    built = time.time()
    result = {"stack": stack, "python": ".".join(map(str, sys.version_info[:2])),
              "torch": installed(python, "torch"), "triton": installed(python, "triton"),
              "numpy": installed(python, "numpy"),
              "open_clip_torch": installed(python, "open_clip_torch"),
              "build": "ok" if build.returncode == 0 else "FAILED", "passed": 0, "failed": 0, "skipped": 0}
    if build.returncode == 0:
        test = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", *pytest_args],
                              cwd=src, capture_output=True, text=True, env=dict(os.environ))
        with open(log, "a") as handle:
            handle.write(test.stdout + test.stderr)
        tail = test.stdout.strip().splitlines()[-1] if test.stdout.strip() else ""
        result.update(counts(tail))
        if test.returncode != 0 and result["failed"] == 0:
            result["failed"] = 1  # pytest failed without a counted failure (collection, crash)
    result["minutes"] = f"{(time.time() - started) / 60:.1f} (build {(built - started) / 60:.1f})"
    result["ok"] = result["build"] == "ok" and result["failed"] == 0 and result["passed"] > 0
    print(f"{stack}: torch {result['torch']}, triton {result['triton']}: build {result['build']}, "
          f"{result['passed']} passed, {result['failed']} failed, {result['skipped']} skipped "
          f"in {result['minutes']} min (log: {log})", flush=True)
    return result


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+changes" if dirty else "")


def append_rows(results: list[dict]) -> None:
    text = TABLE.read_text()
    if TABLE_HEAD not in text:
        raise SystemExit(f"{TABLE} has no results table headed {TABLE_HEAD!r}")
    today, head = datetime.date.today().isoformat(), commit()
    rows = "".join(f"| {today} | {head} | {r['stack']} | {r['python']} | {r['torch']} | {r['triton']} | {r['numpy']} | "
                   f"{r['open_clip_torch']} | {r['build']} | {r['passed']} | {r['failed']} | {r['skipped']} | "
                   f"{r['minutes']} |\n" for r in results)
    lines = text.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith(TABLE_HEAD)) + 2  # past the rule
    while at < len(lines) and lines[at].startswith("|"):
        at += 1
    TABLE.write_text("".join(lines[:at]) + rows + "".join(lines[at:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", action="append", choices=sorted(STACKS),
                        help="a stack to run (repeatable; default: floor and pins)")
    parser.add_argument("--no-record", action="store_true", help=f"do not append the results to {TABLE.name}")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = parser.parse_args(argv)
    results = [run_stack(stack, args.pytest_args) for stack in args.stack or ["floor", "pins"]]
    if not args.no_record:
        append_rows(results)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
