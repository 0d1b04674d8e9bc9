"""The package's rooms: public API and internals at the top, backends/ and tools/ below.

The runtime modules (everything but psd_kernels.tools) never import psd_kernels.tools, not even
inside a function; no module-level import circle exists among psd_kernels' modules; the top of
the package holds the public API and its internals only.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "psd_kernels"


def _modules() -> dict:
    """module name -> source path of every module in psd_kernels."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str, path: Path, known, module_level_only: bool) -> set:
    """psd_kernels modules `name` imports (`from a import b` counts b when b is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # also imports under module-level if/try blocks
        stack, nodes = list(tree.body), []
        while stack:
            node = stack.pop()
            nodes.append(node)
            if isinstance(node, (ast.If, ast.Try)):
                stack.extend(node.body + node.orelse + getattr(node, "finalbody", [])
                             + [s for h in getattr(node, "handlers", []) for s in h.body])
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = _package_of(name, path).split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("psd_kernels"):
                # the deepest known module the target names (psd_kernels.x.y -> psd_kernels.x)
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target:
                    found.add(target)
    found.discard(name)
    return found


def _runtime(name: str) -> bool:
    return not (name == "psd_kernels.tools" or name.startswith("psd_kernels.tools."))


def test_runtime_never_imports_the_tools():
    modules = _modules()
    bad = {name: sorted(t for t in _imports(name, path, modules, False) if not _runtime(t))
           for name, path in modules.items() if _runtime(name)}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"runtime modules import developer tools: {bad}"


def test_no_module_level_import_circle():
    modules = _modules()
    graph = {name: _imports(name, path, modules, True) for name, path in modules.items()}
    # a module also imports its parent packages (importing psd_kernels.a.b runs psd_kernels.a)
    for name in list(graph):
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state, circles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "module-level import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_runtime_imports_no_tool_when_loaded():
    """Importing the package and running a loss loads nothing from psd_kernels.tools."""
    code = ("import sys, torch, psd_kernels\n"
            "psd_kernels.psd_clip_loss(torch.randn(4, 8), torch.randn(4, 8), 10.0, alpha_image=0.5)\n"
            "print(sorted(m for m in sys.modules if m.startswith('psd_kernels.tools')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_package_top_holds_the_api_and_its_internals_only():
    """Backends live in psd_kernels/backends, tools in psd_kernels/tools; no module at the top stands
    in for a moved one."""
    top = sorted(path.stem for path in PACKAGE.glob("*.py"))
    assert top == ["__init__", "assembly", "distributed", "functional", "loss", "schedule", "siglip_loss",
                   "validation", "vocabulary"], top
