"""The library's structure, checked: no import cycle, no import from a lower layer to a higher one, no module over
450 lines. The layers are CONTRIBUTING.md's; every import counts, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ssb_trl"
MAX_LINES = 450
LAYERS = [  # lowest first; a module may import its own layer and the ones below
    [
        "ssb_trl.errors",
        "ssb_trl.validation",
        "ssb_trl.lazy",
        "ssb_trl.storage",
        "ssb_trl.stats",
        "ssb_trl.deprecations",
    ],
    ["ssb_trl.models", "ssb_trl.soft_labels"],
    ["ssb_trl.tasks", "ssb_trl.generation"],
    ["ssb_trl.jobs"],
    [
        "ssb_trl.prepare",
        "ssb_trl.label",
        "ssb_trl.eval",
        "ssb_trl.plotting",
        "ssb_trl.config",
        "ssb_trl.loss",
        "ssb_trl.collator",
        "ssb_trl.modeling",
        "ssb_trl.prediction",
        "ssb_trl.trainer_data",
        "ssb_trl.trainer",
        "ssb_trl.model_card",
        "ssb_trl.checkpoints",
    ],
    ["ssb_trl.scripts", "ssb_trl.cli", "ssb_trl.__main__"],
]
SOFT_LABEL_ORDER = ["codec", "schema", "checks", "io", "teacher"]  # the format package's own layers


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The ssb_trl modules ``name`` imports (resolved to modules, packages' own namespaces excepted)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and not name.startswith(candidate + "."):
                targets.add(candidate)
    return targets


def layer(name: str) -> int:
    matches = [
        i for i, names in enumerate(LAYERS) for prefix in names if name == prefix or name.startswith(prefix + ".")
    ]
    assert matches, f"{name} is in no layer of tests/test_layers.py: add it (and to CONTRIBUTING.md's list)"
    return matches[0]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycle = trail[trail.index(target) :] + [target] if target in trail else [node, target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    upward = []
    for name, targets in graph().items():
        if name.endswith("__init__") or Path(modules()[name]).name == "__init__.py":
            continue  # a package's namespace names what it exports, lazily
        for target in targets:
            if layer(target) > layer(name):
                upward.append(f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})")
            both = (name, target)
            if all(n.startswith("ssb_trl.soft_labels.") for n in both):
                low, high = (SOFT_LABEL_ORDER.index(n.rsplit(".", 1)[1]) for n in both)
                if high > low:
                    upward.append(f"{name} imports {target}, above it in the soft-label package")
    assert not upward, "\n".join(sorted(upward))


def test_no_library_module_is_over_450_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"
