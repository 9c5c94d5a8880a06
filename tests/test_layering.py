"""The package's import graph: lower layers never import higher ones, modules form no cycle, and inference (what a
deployed model loads) never pulls in the training loop. Read from the source with ast, so nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "playitback"
# Bottom to top; a module may import its own subpackage and any lower layer, never a layer at or above its own.
LAYERS = [
    {"utils", "registry"},
    {"config"},
    {"data", "models"},
    {"losses", "metrics", "synthetic"},
    {"anytime"},
    {"engine"},
    {"inference", "localisation", "visualization"},
]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}
# Modules whose layer is not their package's: utils.cli holds the command-line tools' helpers, which load configs.
MODULE_LAYER = {"playitback.utils.cli": "inference"}
# The engine modules that make up training (the loop and what only it needs).
TRAINING_LOOP = {"playitback.engine.trainer", "playitback.engine.loop", "playitback.engine.build",
                 "playitback.engine.checkpointer", "playitback.engine.evaluate", "playitback.engine.epochs"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The playitback modules that ``path`` imports (relative imports resolved), at any depth of the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            # `from playitback.config import derived` imports the submodule; `... import load_config` the package.
            submodules = {f"{target}.{alias.name}" for alias in node.names} & modules
            found |= submodules if len(submodules) == len(node.names) else submodules | {target}
    return {name for name in found if name in modules and name != module}


GRAPH = {_module_name(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return MODULE_LAYER.get(module, parts[1] if len(parts) > 1 else None)


def test_every_package_has_a_layer() -> None:
    assert {_layer(m) for m in GRAPH} - {None} == set(RANK)


def test_lower_layers_never_import_higher_ones() -> None:
    upward = [
        f"{source} imports {target}"
        for source, targets in GRAPH.items() if _layer(source) is not None
        for target in targets
        if _layer(target) is not None and _layer(target) != _layer(source)
        and RANK[_layer(target)] >= RANK[_layer(source)]
    ]
    assert not upward, upward


def test_modules_form_no_import_cycle() -> None:
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(target):], target]))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in GRAPH:
        if module not in state:
            visit(module, [module])


def _reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for target in GRAPH[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_inference_never_imports_the_training_loop() -> None:
    assert not _reachable("playitback.inference") & TRAINING_LOOP


def test_the_graph_reader_finds_known_edges() -> None:
    # The checks above pass trivially on an empty graph; these edges exist (absolute, relative and package imports).
    assert "playitback.models.encoder" in GRAPH["playitback.models.build"] | _reachable("playitback.models.build")
    assert "playitback.models.replay" in GRAPH["playitback.inference"]
    assert "playitback.config.derived" in GRAPH["playitback.data.build"]


def test_config_validation_types_no_allowed_values_of_its_own() -> None:
    """Every choice key is checked against a tuple of playitback.config.choices (which the implementing modules
    import too), never against a literal list repeated in config/load.py; and the config imports no torch."""
    load = PACKAGE / "config" / "load.py"
    literal_choices = [
        ast.unparse(node.args[1]) for node in ast.walk(ast.parse(load.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_choice"
        and isinstance(node.args[3], ast.Tuple) and all(isinstance(e, ast.Constant) for e in node.args[3].elts)
    ]
    assert literal_choices == []
    for module in ("playitback.config.load", "playitback.config.choices", "playitback.config.defaults"):
        assert "torch" not in {name.split(".")[0] for node in ast.walk(ast.parse(
            (PACKAGE.parent / (module.replace(".", "/") + ".py")).read_text()))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])}


def test_the_modules_implement_the_choices_the_config_allows() -> None:
    from playitback.config import choices
    from playitback.data import spectrogram
    from playitback.engine import checkpointer, loop, optim
    from playitback.models import encoder, evidence, mvit, playitback, saliency, tempr

    for module, names in ((spectrogram, ("PAD_MODES", "WINDOW_SCALINGS", "FEATURE_STYLES")), (checkpointer, ("CHECKPOINT_SELECTIONS",)),
                          (loop, ("NONFINITE_POLICIES",)), (optim, ("OPTIMIZERS", "LR_POLICIES")),
                          (evidence, ("MIL_POOLINGS",)), (mvit, ("POOL_MODES", "HEAD_POOLS")), (encoder, ("CLIP_NORMS",)),
                          (playitback, ("REPLAY_SOURCES", "REPLAY_RESOLUTIONS")), (saliency, ("READOUTS",)),
                          (tempr, ("FUSIONS", "FUSION_LOCATIONS"))):
        for name in names:
            assert getattr(module, name) is getattr(choices, name), (module.__name__, name)
