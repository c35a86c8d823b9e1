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
    "adapters", "adapters.lightning", "adapters.pytorch", "adapters.tensorboard",
    "banded", "baseline", "config", "data", "data.cache", "data.datamodule", "data.images", "data.splits",
    "data.duplicates", "data.folder", "data.sampling", "data.stream", "data.synthetic", "data.synthetic.field",
    "data.synthetic.lab", "data.synthetic.paint", "data.synthetic.render", "data.synthetic.writer", "errors", "figures", "files", "kernels", "model", "module", "optim", "perf", "pooling", "rank", "runs",
    "records", "schema", "tables", "train", "training.board", "training.callbacks", "training.checkpoint", "training.outcome", "training.resume",
    "training.bookkeeping", "training.logs", "training.quiet", "training.rundir", "training.sweep", "training.tune", "zoo",
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


# Config a study opts into (experiment=lr_study's report); everything else in conf/ is what a
# plain `python -m leafnet.train` may compose, and the commands' own configs.
STUDY_CONFIGS = ("experiment", "hparams_search")


def test_training_configs_name_no_command_or_lab_tool() -> None:
    """Hydra builds what a config's `_target_` names: a dependency the import graph cannot see."""
    conf = REPO / "conf"
    training = [conf / "train.yaml"] + [
        p for p in conf.glob("*/**/*.yaml") if p.relative_to(conf).parts[0] not in STUDY_CONFIGS
    ]
    named = {
        (path.relative_to(REPO), target.removeprefix("leafnet.").rpartition(".")[0])
        for path in training
        for target in re.findall(r"_target_:\s*(leafnet\.[\w.]+)", path.read_text())
    }
    assert named, "no leafnet _target_ found: the pattern no longer matches the configs"
    assert {(p, m) for p, m in named if m not in TRAINING} == set()
