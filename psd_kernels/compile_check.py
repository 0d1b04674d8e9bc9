"""Ahead-of-time check of every GPU kernel's resources, on a machine without a GPU.

    python -m psd_kernels.compile_check                      # the full matrix (make compile-check)
    python -m psd_kernels.compile_check --arch 90 --dtype bf16 --D 512 --teacher separate
    python -m psd_kernels.compile_check --json               # one JSON object per line
    python -m psd_kernels.compile_check --cpp                # also the C++ CUDA kernels of psd_kernels._C

Each Triton kernel variant the host code can launch (psd_kernels.triton_psd.compile_variants:
every kernel, constexpr combination and autotune config the prune functions can keep, for
the given dtype, embedding dim D and teacher case) is compiled for the target GPU with
Triton's own compiler and bundled ptxas (no GPU needed), and cuobjdump reads the cubin:

    regs         registers per thread (255 is the ceiling)
    spill_bytes  local-memory stack per thread (spilled registers; 0 is the goal)
    smem         shared memory per block in bytes (Triton's dynamic + static)
    mma          how the dots lowered: wgmma (Hopper tensor cores), tcgen05 (Blackwell),
                 mma.sync (pre-Hopper tensor cores), fma (no tensor core: fp32 "ieee")

A row fails when it spills, when its shared memory exceeds the arch's per-block limit,
or, on sm_90, when a dot lowered to mma.sync instead of wgmma; the exit status is 1 when
any row fails. The target is the tensor-core path (bf16, fp16): fp32 inputs run IEEE
fp32 products on the FMA units, and their spills are printed as notes, not failures. Compiles are cached by Triton (~/.triton/cache), so a
second run is fast; --jobs compiles in parallel processes.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import glob
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

ARCHS = (80, 90, 100)
DTYPES = ("bf16", "fp16", "fp32")
DIMS = (64, 256, 512, 768, 1024)
TEACHERS = ("self", "self_scaled", "separate")
# Largest shared memory one block may use (opt-in), bytes: A100 163 KB, H100/H200 and B200 227 KB.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024, 100: 227 * 1024}
FIELDS = ("kernel", "arch", "dtype", "D", "teacher", "config", "regs", "spill_bytes", "smem", "mma")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One compilable kernel instance: a JIT function, its argument types and constexprs, a config."""

    kernel: str
    source: str                     # "module:name" of the @triton.jit function (autotuned or not)
    signature: dict                 # argument name -> Triton type string ("*bf16", "i32", "constexpr")
    constexprs: dict                # constexpr name -> value
    num_warps: int
    num_stages: int
    divisible: tuple = ()           # arguments the JIT would see as multiples of 16 (aligned pointers, dims)

    @property
    def fn(self):
        """The JIT function (resolved by name, so a Variant pickles into worker processes)."""
        from triton.runtime.jit import JITFunction
        module, name = self.source.split(":")
        obj = getattr(importlib.import_module(module), name)
        while not isinstance(obj, JITFunction):  # unwrap the autotuner / heuristics
            obj = obj.fn
        return obj

    def config(self) -> str:
        shown = {k: v for k, v in self.constexprs.items() if k.startswith("BLOCK") or k.isupper()}
        flags = ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in shown.items()
                         if v is not None and k not in ("DOT_FP32", "PRECISION"))
        return f"{flags},w{self.num_warps},s{self.num_stages}"


def _tool(name: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def resource_usage(cubin: bytes, function: str | None = None) -> dict:
    """{function name: {"regs", "spill_bytes", "smem_static"}} from cuobjdump --dump-resource-usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True,
                              text=True, check=True).stdout
    return parse_resource_usage(text)


_USAGE = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+)")


def parse_resource_usage(text: str) -> dict:
    return {m.group(1): {"regs": int(m.group(2)), "spill_bytes": int(m.group(3)), "smem_static": int(m.group(4))}
            for m in _USAGE.finditer(text)}


def mma_kind(ptx: str) -> str:
    """How the kernel's dots lowered, read from its PTX (the worst kind when mixed)."""
    if "mma.sync" in ptx:
        return "mma.sync"
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if "tcgen05.mma" in ptx:
        return "tcgen05"
    return "fma"


def compile_variant(variant: Variant, arch: int) -> dict:
    """Compile for sm_<arch> (no GPU needed) and read registers, spills, shared memory and the mma kind."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = variant.fn.arg_names
    constexprs = {(names.index(k),): v for k, v in variant.constexprs.items()}
    # what Triton's launcher specialises on: 16-byte aligned pointers and ints divisible by 16
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in variant.divisible if k in names}
    source = ASTSource(variant.fn, variant.signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=variant.num_warps, num_stages=variant.num_stages))
    usage = resource_usage(kernel.asm["cubin"])
    (info,) = usage.values()
    return dict(regs=info["regs"], spill_bytes=info["spill_bytes"],
                smem=int(kernel.metadata.shared) + info["smem_static"], mma=mma_kind(kernel.asm["ptx"]))


def failures(row: dict) -> list:
    """Why a row fails the check (empty when it passes). The target is the tensor-core path, 16-bit
    inputs; fp32 runs IEEE fp32 products on the FMA units, and its spills are reported by notes()."""
    why = []
    if row["spill_bytes"] > 0 and row["dtype"] != "fp32":
        why.append(f"spills {row['spill_bytes']} bytes per thread")
    if row["smem"] > SMEM_LIMIT[row["arch"]]:
        why.append(f"shared memory {row['smem']} > {SMEM_LIMIT[row['arch']]} on sm_{row['arch']}")
    if row["arch"] == 90 and row["dtype"] != "fp32" and row["mma"] == "mma.sync":
        why.append("a dot lowered to mma.sync on sm_90 (wgmma expected)")
    return why


def notes(row: dict) -> list:
    """What a row shows that is outside the check's target (fp32 spills)."""
    if row["spill_bytes"] > 0 and row["dtype"] == "fp32":
        return [f"fp32 (IEEE, FMA) spills {row['spill_bytes']} bytes per thread"]
    return []


def matrix_rows(archs, dtypes, dims, teachers):
    """(variant, arch, dtype, D, teacher) for every point of the matrix."""
    from psd_kernels.triton_psd import compile_variants
    for dtype in dtypes:
        for d in dims:
            for teacher in teachers:
                for arch in archs:
                    for variant in compile_variants(dtype, d, teacher, arch):
                        yield variant, arch, dtype, d, teacher


def _compile_row(job) -> dict:
    variant, arch, dtype, d, teacher = job
    row = dict(kernel=variant.kernel, arch=arch, dtype=dtype, D=d, teacher=teacher, config=variant.config())
    try:
        row.update(compile_variant(variant, arch))
    except Exception as exc:  # a compile error is a failing row, reported with its message
        row.update(regs=-1, spill_bytes=-1, smem=-1, mma="error", error=f"{type(exc).__name__}: {exc}"[:300])
    return row


def run(archs=ARCHS, dtypes=DTYPES, dims=DIMS, teachers=TEACHERS, jobs=1, on_row=None) -> list:
    """Compile the matrix; returns the rows (each with "failures") in a stable order."""
    work = list(matrix_rows(archs, dtypes, dims, teachers))
    rows = []
    if jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
            results = pool.map(_compile_row, work)
            for row in results:
                rows.append(_finish(row, on_row))
    else:
        for job in work:
            rows.append(_finish(_compile_row(job), on_row))
    return rows


def _finish(row, on_row):
    row["failures"] = [row["error"]] if "error" in row else failures(row)
    row["notes"] = [] if "error" in row else notes(row)
    if on_row is not None:
        on_row(row)
    return row


def cpp_rows() -> list:
    """Registers and spills of the CUDA kernels in the built extension, per arch (cuobjdump on the .so)."""
    import psd_kernels
    sos = glob.glob(os.path.join(os.path.dirname(psd_kernels.__file__), "_C*.so"))
    if not sos:
        return [dict(kernel="psd_kernels._C", error="the extension is not built")]
    text = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", sos[0]], capture_output=True,
                          text=True).stdout
    rows = []
    for block in re.split(r"Fatbin elf code:", text)[1:]:
        arch = re.search(r"arch = sm_(\d+)", block)
        for name, info in parse_resource_usage(block).items():
            row = dict(kernel=_demangle(name), arch=int(arch.group(1)) if arch else -1, **info)
            row["failures"] = [f"spills {info['spill_bytes']} bytes per thread"] if info["spill_bytes"] else []
            rows.append(row)
    if not rows:
        rows.append(dict(kernel="psd_kernels._C", error="no CUDA kernels in the extension (built without CUDA)"))
    return rows


def _demangle(name: str) -> str:
    try:
        return subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip() or name
    except OSError:
        return name


def _table_line(row: dict) -> str:
    verdict = "FAIL: " + "; ".join(row["failures"]) if row["failures"] else "ok"
    if row["notes"]:
        verdict += " (note: " + "; ".join(row["notes"]) + ")"
    return (f"{row['kernel']:<12} sm_{row['arch']:<4} {row['dtype']:<5} {row['D']:>5} {row['teacher']:<12} "
            f"{row['regs']:>4} {row['spill_bytes']:>6} {row['smem']:>7} {row['mma']:<9} {row['config']}  {verdict}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Compile every Triton kernel variant for GPU targets and "
                                                 "report registers, spills, shared memory and tensor-core use.")
    parser.add_argument("--arch", type=int, nargs="+", choices=ARCHS, default=list(ARCHS))
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--D", type=int, nargs="+", default=list(DIMS), help="embedding dims")
    parser.add_argument("--teacher", nargs="+", choices=TEACHERS, default=list(TEACHERS))
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of the table")
    parser.add_argument("--cpp", action="store_true", help="also report the C++ CUDA kernels of psd_kernels._C")
    parser.add_argument("--jobs", type=int, default=1, help="parallel compile processes")
    args = parser.parse_args(argv)
    if any(d < 1 for d in args.D):
        parser.error(f"--D takes positive embedding dims, got {args.D}")

    if args.json:
        emit = lambda row: print(json.dumps({k: row[k] for k in FIELDS + ("failures", "notes") if k in row}), flush=True)  # noqa: E731
    else:
        print(f"{'kernel':<12} {'arch':<7} {'dtype':<5} {'D':>5} {'teacher':<12} {'regs':>4} {'spill':>6} "
              f"{'smem':>7} {'mma':<9} config  verdict", flush=True)
        emit = lambda row: print(_table_line(row), flush=True)  # noqa: E731
    rows = run(args.arch, args.dtype, args.D, args.teacher, args.jobs, on_row=emit)
    bad = [r for r in rows if r["failures"]]
    if args.cpp:
        for row in cpp_rows():
            if args.json:
                print(json.dumps(row))
            elif "error" in row:
                print(f"C++ CUDA: {row['error']}")
            else:
                verdict = "FAIL: " + row["failures"][0] if row["failures"] else "ok"
                print(f"C++ CUDA sm_{row['arch']}: {row['kernel']}: {row['regs']} regs, "
                      f"{row['spill_bytes']} spill bytes, {row['smem_static']} static smem  {verdict}")
            bad += [row] if row.get("failures") else []
    noted = sum(1 for r in rows if r.get("notes"))
    print(f"{len(rows)} Triton variants compiled, {len(bad)} failing, {noted} with notes (fp32 spills)",
          file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
