"""docs/architecture.md's import graph is the code's, and the training core imports no command
or lab tool (the data flow is one way: config -> data -> model -> trainer -> outputs)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "leafnet"
# What `python -m leafnet.train` runs on; nothing in it may import a command or a lab tool.
TRAINING = {
    "banded", "baseline", "config", "data", "data.cache", "data.datamodule", "data.images", "data.splits",
    "data.duplicates", "data.stream", "data.synthetic", "data.synthetic.field",
    "data.synthetic.lab", "data.synthetic.paint", "data.synthetic.render", "data.synthetic.writer", "errors", "figures", "files", "model", "module", "optim", "perf", "runs",
    "schema", "train", "training.callbacks", "training.outcome", "training.resume",
    "training.quiet", "training.rundir", "training.sweep", "training.tune", "zoo",
}  # fmt: skip


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts not in (["lab"], ["training"]):
            found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, list[str]]:
    """module -> the leafnet modules it imports (at the top or inside a function)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module != "leafnet" and not node.module.startswith("leafnet."):
                    continue
                base = node.module.removeprefix("leafnet").removeprefix(".")
                subs = [f"{base}.{a.name}".lstrip(".") for a in node.names]
                deps.update([s for s in subs if s in modules] or [base])
            elif isinstance(node, ast.Import):
                deps.update(a.name.removeprefix("leafnet.") for a in node.names)
        graph[name] = sorted(d for d in deps if d in modules and d != name)
    return graph


def test_the_documented_import_graph_is_the_codes() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    documented = {
        m.group(1): [] if m.group(2) == "(nothing of leafnet)" else m.group(2).split(", ")
        for m in re.finditer(r"^(\S+) +<- (.+)$", text, flags=re.M)
    }
    assert documented == import_graph()


def test_training_imports_no_command_or_lab_tool() -> None:
    graph = import_graph()
    assert set(graph) >= TRAINING
    for name in TRAINING:
        assert set(graph[name]) <= TRAINING, (name, set(graph[name]) - TRAINING)
