"""Dependencies point one way: masks -> attention -> distributed -> layers -> models -> diffusion/pipelines ->
training -> cli."""

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "veil"
# rank of each subpackage; a module may import only from packages of lower or equal rank
RANK = {
    "masks": 0, "attention": 1, "distributed": 1.5, "layers": 2, "models": 3, "data": 3, "text": 3,
    "diffusion": 4, "pipelines": 4, "training": 5, "bench": 6, "cli": 6,
}


def _imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return [m for m in out if m.startswith("veil.")]


def test_no_upward_imports():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        if len(rel) < 2 or rel[0] not in RANK:
            continue
        own = RANK[rel[0]]
        for mod in _imports(path):
            top = mod.split(".")[1]
            if top in RANK and RANK[top] > own:
                bad.append(f"{'/'.join(rel)} imports {mod}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_layering_test_sees_a_violation(tmp_path):
    # the walker itself must catch an upward import
    f = tmp_path / "x.py"
    f.write_text("from veil.cli.main import main\n")
    assert _imports(f) == ["veil.cli.main"]
