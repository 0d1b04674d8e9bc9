"""Ahead-of-time check of the Triton kernels as the public API launches them, without a GPU.

    python -m psd_kernels.tools.compile_check                      # the full matrix (make compile-check)
    python -m psd_kernels.tools.compile_check --arch 90 --dtype bfloat16 --D 500
    python -m psd_kernels.tools.compile_check --json               # one JSON object per line
    python -m psd_kernels.tools.compile_check --cpp                # also the C++ CUDA kernels of psd_kernels._C

The variants come from the launcher itself (psd_kernels.tools.launches): psd_loss / psd_clip_loss
and their backward run on meta tensors for every call of the matrix (B, D, D', teacher case and
mode, symmetric and one direction, aligned and offset inputs, reductions "none" and "mean": the
latter the one-sweep forward and the cross-term gradient tiles of a teacher with statistics of its
own; the symmetric calls also under PSD_TRITON_COLUMN_STATS=second_pass, two forward sweeps),
every launch is recorded for every config the prune functions keep, and Triton's own binder
specialises it from the real argument values (ints divisible by 16, ints equal to 1, 16-byte
aligned pointers). Identical
specialisations are compiled once, for the target GPU, with Triton's compiler and bundled
ptxas; cuobjdump reads the cubin:

    regs         registers per thread (255 is the ceiling)
    spill        local-memory stack per thread in bytes (spilled registers; 0 is the goal)
    smem         shared memory per block in bytes (Triton's dynamic + static)
    ctas         CTAs per SM that registers, shared memory and warps allow (roofline.ctas_per_sm)
    dots         tensor-core dots / dots of the kernel: each tt.dot of the TTIR must lower to the
                 arch's tensor-core op in the TTGIR (sm_80 mma.sync, sm_90 wgmma, sm_100 tcgen05)
    loads        "async" when every main loop (an innermost loop holding a dot) loads its
                 operands asynchronously (cp.async or TMA), else the count of synchronous loads

A row fails, for bfloat16 and float16 (the tensor-core path), when it spills, when a dot is not on
the arch's tensor-core instruction, when a main loop's loads are synchronous, or when its
shared memory exceeds the arch's per-block limit; the exit status is 1 when any row fails.
float32 inputs run IEEE fp32 products on the FMA units: their findings are printed as notes.
After the table, the waves: for B = 32768 (D = D' = 512, aligned bfloat16) every launch's grid
against the CTAs per SM on the arch's SM count. Compiles are cached by Triton
(~/.triton/cache), so a second run is fast; --jobs records and compiles in parallel processes.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import glob
import json
import math
import os
import re
import subprocess
import sys
import tempfile

from psd_kernels.tools import launches
from psd_kernels.tools.roofline import ctas_per_sm
from psd_kernels.vocabulary import TEACHER_CASES, TEACHER_MODES

ARCHS = (80, 90, 100)
# The psd_kernels.vocabulary dtypes the Triton kernels take.
DTYPES = ("bfloat16", "float16", "float32")
# SMs of the GPU each arch stands for: A100, H100 / H200, B200.
SMS = {80: 108, 90: 132, 100: 148}
# The most shared memory one block may use (opt-in), bytes (per SM: roofline.SMEM_PER_SM).
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024, 100: 227 * 1024}
# The tensor-core op each arch's dots must lower to, as named in the TTGIR.
TENSOR_CORE = {80: "mma.sync", 90: "wgmma", 100: "tcgen05"}
WAVES_CALL = dict(b=32768, d=512, dtype="bfloat16", offset=False)


def _shown(name: str, value) -> str:
    """A constexpr as the flags column prints it: booleans as 0/1, the teacher case by name (the
    kernels' TEACHER_* values index TEACHER_CASES, psd_kernels.backends.triton.kernels)."""
    if name == "TEACHER":
        return TEACHER_CASES[int(value)] if 0 <= int(value) < len(TEACHER_CASES) else str(value)
    return str(int(value)) if isinstance(value, bool) else str(value)


FIELDS = ("kernel", "arch", "dtype", "flags", "config", "regs", "spill_bytes", "smem", "ctas", "dots", "tc_dots",
          "sync_loads", "uses", "example")


@dataclasses.dataclass
class Variant:
    """One compiled specialisation and the recorded launches that use it."""

    arch: int
    launch: launches.Launch
    dtype: str                  # the recorded calls' input dtype (a psd_kernels.vocabulary.DTYPES name)
    uses: int = 0               # recorded launches with this specialisation
    example: str = ""

    @property
    def kernel(self) -> str:
        name = self.launch.source.split(":")[1]
        return name.removeprefix("_psd_").removeprefix("_").removesuffix("_kernel")

    def flags(self) -> str:
        """The constexprs other than tile sizes and precision, and the ints the binder fixed to 1."""
        skip = {"DOT_FP32", "PRECISION", "BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_KT"}
        return ",".join(f"{k}={_shown(k, v)}" for k, v in self.launch.constexprs if k not in skip and v is not None)

    def config(self) -> str:
        c = dict(self.launch.constexprs)
        tile = "x".join(str(c[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in c)
        aligned = f"{len(self.launch.attrs)}/{sum(1 for _, t in self.launch.signature if t != 'constexpr')}"
        return f"{tile},w{self.launch.option('num_warps')},s{self.launch.option('num_stages')},div16={aligned}"


def _tool(name: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def resource_usage(cubin: bytes) -> dict:
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


_TC_OPS = {"wgmma": re.compile(r"\bttng\.warp_group_dot\s"), "tcgen05": re.compile(r"\bttng\.tc_gen5_mma\s")}
_DOT = re.compile(r"\btt\.dot\s.*->\s*tensor<[^,]+,\s*(#\w+)")
_ASYNC_LOAD = re.compile(r"\b(ttg\.async_copy_global_to_local|ttng\.async_tma_copy_global_to_local|"
                         r"ttng\.async_tma_gather|tt\.descriptor_load)\b")
_SYNC_LOAD = re.compile(r"\btt\.load\s")


def count_dots(ttir: str) -> int:
    """Dots of the kernel before lowering."""
    return len(re.findall(r"\btt\.dot\s", ttir))


def lowered_dots(ttgir: str, arch: int) -> tuple:
    """(dots on the arch's tensor-core op, dots left on anything else) in the TTGIR.

    sm_90 and sm_100 turn a tensor-core dot into its own op (ttng.warp_group_dot,
    ttng.tc_gen5_mma), so any tt.dot left there is mma.sync or FMA; on sm_80 a tt.dot is on
    the tensor cores when its result has an nvidia_mma layout of version 2 (mma.sync).
    """
    aliases = dict(re.findall(r"^(#\w+) = (.*)$", ttgir, flags=re.M))
    mma_v2, other = 0, 0
    for m in _DOT.finditer(ttgir):
        if "nvidia_mma<{versionMajor = 2" in aliases.get(m.group(1), ""):
            mma_v2 += 1
        else:
            other += 1
    if arch >= 90:
        kind = TENSOR_CORE[arch]
        return len(_TC_OPS[kind].findall(ttgir)), mma_v2 + other
    return mma_v2, other


def main_loop_loads(ttgir: str) -> tuple:
    """(main loops, their synchronous loads, their asynchronous loads) in the TTGIR.

    A main loop is an innermost scf.for holding a dot (ops in nested scf.if regions count
    for the loop around them); software pipelining turns its operand loads into cp.async
    (ttg.async_copy_global_to_local) or TMA copies, so a tt.load left in it is synchronous.
    """
    dot = re.compile(r"\b(tt\.dot|ttng\.warp_group_dot|ttng\.tc_gen5_mma)\s")
    loops, stack = [], []            # stack: (is_for, loop index or None)
    for line in ttgir.splitlines():
        text = line.strip()
        if text.startswith("}"):
            stack.pop()
        loop = next((i for is_for, i in reversed(stack) if is_for), None)
        if loop is not None and not text.startswith("}"):
            entry = loops[loop]
            entry["dots"] += bool(dot.search(text))
            entry["sync"] += bool(_SYNC_LOAD.search(text))
            entry["async"] += bool(_ASYNC_LOAD.search(text))
        if text.endswith("{"):
            is_for = bool(re.search(r"\bscf\.for\b", text)) and not text.startswith("}")
            if is_for:
                loops.append({"dots": 0, "sync": 0, "async": 0, "parent": loop})
            stack.append((is_for, len(loops) - 1 if is_for else None))
    holds_dot = set()
    for i, entry in enumerate(loops):
        if entry["dots"]:
            parent = entry["parent"]
            while parent is not None:
                holds_dot.add(parent)
                parent = loops[parent]["parent"]
    main = [e for i, e in enumerate(loops) if e["dots"] and i not in holds_dot]
    return len(main), sum(e["sync"] for e in main), sum(e["async"] for e in main)


def compile_launch(launch: launches.Launch, arch: int) -> dict:
    """Compile for sm_<arch> (no GPU needed): registers, spills, shared memory, dots, main-loop loads."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = launch.fn
    names = fn.arg_names
    source = ASTSource(fn, dict(launch.signature),
                       constexprs={(names.index(k),): v for k, v in launch.constexprs},
                       attrs={(names.index(k),): [["tt.divisibility", 16]] for k in launch.attrs})
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(launch.options))
    (info,) = resource_usage(kernel.asm["cubin"]).values()
    smem = int(kernel.metadata.shared) + info["smem_static"]
    tc, other = lowered_dots(kernel.asm["ttgir"], arch)
    loops, sync, asynchronous = main_loop_loads(kernel.asm["ttgir"])
    return dict(regs=info["regs"], spill_bytes=info["spill_bytes"], smem=smem,
                ctas=ctas_per_sm(arch, info["regs"], smem, launch.option("num_warps")),
                dots=count_dots(kernel.asm["ttir"]), tc_dots=tc, other_dots=other, main_loops=loops,
                sync_loads=sync, async_loads=asynchronous)


def failures(row: dict) -> list:
    """Why a row fails the check (empty when it passes); float32 findings are notes()."""
    why = []
    if row["smem"] > SMEM_LIMIT[row["arch"]]:
        why.append(f"shared memory {row['smem']} > {SMEM_LIMIT[row['arch']]} on sm_{row['arch']}")
    if row["dtype"] == "float32":
        return why
    if row["other_dots"] or row["tc_dots"] < row["dots"]:
        why.append(f"{row['other_dots']} of {row['dots']} dots not on {TENSOR_CORE[row['arch']]}")
    return why + _spills_and_loads(row)


def notes(row: dict) -> list:
    """What a row shows outside the check's target: float32 runs IEEE products on the FMA units
    (no tensor cores by design), so its spills and synchronous loads are reported, not failed."""
    return _spills_and_loads(row) if row["dtype"] == "float32" else []


def _spills_and_loads(row: dict) -> list:
    why = []
    if row["spill_bytes"] > 0:
        why.append(f"spills {row['spill_bytes']} bytes per thread")
    if row["main_loops"] and (row["sync_loads"] or not row["async_loads"]):
        why.append(f"main loop loads synchronous ({row['sync_loads']} tt.load, {row['async_loads']} async)")
    return why


def _record(job) -> list:
    """[(arch, Launch, call), ...] for one (arch, dtype) of the matrix."""
    arch, dtype, batches, dims, teachers, modes = job
    calls = launches.calls(dtype, batches, dims, teachers, modes)
    return [(arch, launch, call) for call, launch in launches.record(arch, SMS[arch], calls)]


def collect(archs, dtypes, batches, dims, teachers, modes=TEACHER_MODES, pool=None):
    """(unique variants, waves launches): every recorded launch, deduplicated by its specialisation."""
    jobs = [(arch, dtype, batches, dims, teachers, modes) for arch in archs for dtype in dtypes]
    recorded = (pool.map(_record, jobs) if pool else map(_record, jobs))
    variants, waves = {}, []
    for part in recorded:
        for arch, launch, call in part:
            variant = variants.setdefault((arch,) + launch.key(),
                                          Variant(arch, launch, call.dtype, example=str(call)))
            variant.uses += 1
            if all(getattr(call, k) == v for k, v in WAVES_CALL.items()) and call.dt in (0, call.d):
                waves.append((arch, launch, call))
    return list(variants.values()), waves


def _compile_row(variant: Variant) -> dict:
    row = dict(kernel=variant.kernel, arch=variant.arch, dtype=variant.dtype, flags=variant.flags(),
               config=variant.config(), uses=variant.uses, example=variant.example)
    try:
        row.update(compile_launch(variant.launch, variant.arch))
    except Exception as exc:  # a compile error is a failing row, reported with its message
        row.update(error=f"{type(exc).__name__}: {exc}"[:300])
    return row


def run(archs=ARCHS, dtypes=DTYPES, batches=launches.BATCHES, dims=launches.DIMS, teachers=TEACHER_CASES,
        modes=TEACHER_MODES, jobs=1, on_row=None) -> tuple:
    """Record, deduplicate and compile the matrix: (rows with "failures" and "notes", waves rows)."""
    pool = concurrent.futures.ProcessPoolExecutor(jobs) if jobs > 1 else None
    try:
        variants, wave_launches = collect(archs, dtypes, batches, dims, teachers, modes, pool)
        variants.sort(key=lambda v: (v.arch, v.dtype, v.kernel, v.flags(), v.config()))
        results = pool.map(_compile_row, variants) if pool else map(_compile_row, variants)
        rows = [_finish(row, on_row) for row in results]
    finally:
        if pool:
            pool.shutdown()
    by_key = {(v.arch,) + v.launch.key(): row for v, row in zip(variants, rows)}
    return rows, wave_rows(wave_launches, by_key)


def _finish(row, on_row):
    row["failures"] = [row["error"]] if "error" in row else failures(row)
    row["notes"] = [] if "error" in row else notes(row)
    if on_row is not None:
        on_row(row)
    return row


def wave_rows(wave_launches, by_key) -> list:
    """Per distinct (arch, kernel, flags, config) launched at the waves call: its grid against the SMs."""
    out = {}
    for arch, launch, call in wave_launches:
        row = by_key[(arch,) + launch.key()]
        if "error" in row:
            continue
        teacher = call.teacher + (f" {call.mode}" if call.mode != TEACHER_MODES[0] else "")
        key = (arch, row["kernel"], row["flags"], row["config"], launch.programs, teacher, call.symmetric)
        slots = row["ctas"] * SMS[arch]
        waves = launch.programs / slots if slots else math.inf
        tail = (launch.programs % slots) / slots if slots else 0.0
        out[key] = dict(arch=arch, sms=SMS[arch], kernel=row["kernel"], flags=row["flags"], config=row["config"],
                        case=("clip " if call.symmetric else "one-direction ") + teacher,
                        programs=launch.programs, ctas=row["ctas"], waves=waves, tail=tail)
    return sorted(out.values(), key=lambda r: (r["arch"], r["case"], r["kernel"], r["config"]))


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


_HEADER = (f"{'kernel':<8} {'arch':<6} {'dtype':<8} {'regs':>4} {'spill':>5} {'smem':>6} {'ctas':>4} "
           f"{'dots':>5} {'loads':<6} {'uses':>5} flags  config  verdict")


def _table_line(row: dict) -> str:
    if "error" in row:
        return f"{row['kernel']:<8} sm_{row['arch']:<3} {row['dtype']:<8} FAIL: {row['error']}  ({row['example']})"
    verdict = "FAIL: " + "; ".join(row["failures"]) + f" (e.g. {row['example']})" if row["failures"] else "ok"
    if row["notes"]:
        verdict += " (note: " + "; ".join(row["notes"]) + ")"
    loads = "async" if not row["sync_loads"] and row["async_loads"] else f"sync{row['sync_loads']}"
    return (f"{row['kernel']:<8} sm_{row['arch']:<3} {row['dtype']:<8} {row['regs']:>4} {row['spill_bytes']:>5} "
            f"{row['smem']:>6} {row['ctas']:>4} {row['tc_dots']:>2}/{row['dots']:<2} {loads:<6} {row['uses']:>5} "
            f"{row['flags']}  {row['config']}  {verdict}")


def _waves_table(rows) -> str:
    call = WAVES_CALL
    lines = [f"\nWaves at B = {call['b']}, D = D' = {call['d']}, {call['dtype']}: each launch's programs against "
             f"CTAs per SM x SMs (A100 108, H100/H200 132, B200 148)",
             f"{'arch':<6} {'case':<38} {'kernel':<8} {'programs':>8} {'ctas':>4} {'slots':>5} {'waves':>6} "
             f"{'tail':>5}  flags  config"]
    for r in rows:
        lines.append(f"sm_{r['arch']:<3} {r['case']:<38} {r['kernel']:<8} {r['programs']:>8} {r['ctas']:>4} "
                     f"{r['ctas'] * r['sms']:>5} {r['waves']:>6.2f} {r['tail']:>5.0%}  {r['flags']}  {r['config']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Compile every Triton kernel launch of the public API for GPU "
                                                 "targets: registers, spills, shared memory, tensor cores, "
                                                 "asynchronous loads, CTAs per SM and waves.")
    parser.add_argument("--arch", type=int, nargs="+", choices=ARCHS, default=list(ARCHS))
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--B", type=int, nargs="+", default=list(launches.BATCHES), help="batch sizes")
    parser.add_argument("--D", type=int, nargs="+", default=list(launches.DIMS),
                        help="embedding dims (D, and D' of a separate teacher)")
    parser.add_argument("--teacher", nargs="+", choices=TEACHER_CASES, default=list(TEACHER_CASES),
                        help="the kernels' teacher cases")
    parser.add_argument("--mode", nargs="+", choices=TEACHER_MODES, default=list(TEACHER_MODES),
                        help="teacher modes (within_modality: the student's own embeddings as a separate teacher)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of the tables")
    parser.add_argument("--cpp", action="store_true", help="also report the C++ CUDA kernels of psd_kernels._C")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes")
    args = parser.parse_args(argv)
    if any(d < 1 for d in args.D) or any(b < 1 for b in args.B):
        parser.error(f"--B and --D take positive sizes, got {args.B} and {args.D}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the check compiles the GPU kernels")

    if args.json:
        emit = lambda row: print(json.dumps({k: row[k] for k in FIELDS + ("failures", "notes") if k in row}), flush=True)  # noqa: E731
    else:
        print(_HEADER, flush=True)
        emit = lambda row: print(_table_line(row), flush=True)  # noqa: E731
    rows, waves = run(args.arch, args.dtype, args.B, args.D, args.teacher, args.mode, args.jobs, on_row=emit)
    if args.json:
        for r in waves:
            print(json.dumps(dict(r, table="waves")))
    elif waves:
        print(_waves_table(waves))
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
    uses = sum(r["uses"] for r in rows)
    print(f"{len(rows)} Triton variants compiled (for {uses} recorded launches), {len(bad)} failing, "
          f"{noted} with notes (float32 spills or synchronous loads)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
