"""Print labelq's import graph by layer, from the code (grimp) and the layers of pyproject.toml.

    .venv/bin/python scripts/import_graph.py            # print the graph
    .venv/bin/python scripts/import_graph.py --write    # replace it in docs/design.md
    .venv/bin/python scripts/import_graph.py --check    # exit 1 if docs/design.md's copy is stale

The layers are those of the first ``[[tool.importlinter.contracts]]`` (the house);
``lint-imports`` (run by scripts/test.sh) is what enforces them. Each line is one
module of a layer and the labelq modules it imports, at module level or inside a
function; a subpackage's modules are shown as the subpackage.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import grimp

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
BEGIN, END = "<!-- import-graph: begin -->", "<!-- import-graph: end -->"
NAMES = ["top", "top", "services", "bottom: work", "bottom: parts", "bottom: runtimes", "bottom: base"]


def house_layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    house = config["contracts"][0]
    return [re.split(r"\s*[:|]\s*", layer) for layer in house["layers"]]


def graph_text() -> str:
    graph = grimp.build_graph("labelq")
    top_of = {m: m.split(".")[1] if m != "labelq" else "labelq" for m in graph.modules}

    def imports(tail: str) -> list[str]:
        mods = [m for m in graph.modules if top_of[m] == tail]
        found = {top_of[d] for m in mods for d in graph.find_modules_directly_imported_by(m)}
        return sorted(found - {tail, "labelq"})

    layers = house_layers()
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    width = max(len(t) for layer in layers for t in layer)
    lines = []
    for i, (layer, spec) in enumerate(zip(layers, raw, strict=True)):
        name = NAMES[i] if i < len(NAMES) else f"layer {i + 1}"
        lines.append(f"{name}: {spec}")
        for tail in layer:
            deps = imports(tail)
            lines.append(f"    {tail:<{width}} -> {', '.join(deps) if deps else '(nothing in labelq)'}")
    return "\n".join(lines) + "\n"


def block() -> str:
    return f"{BEGIN}\n```text\n{graph_text()}```\n{END}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the graph in docs/design.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/design.md's graph is stale")
    args = parser.parse_args()
    if not (args.write or args.check):
        sys.stdout.write(graph_text())
        return 0
    text = DESIGN.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        sys.stderr.write(f"{DESIGN}: no {BEGIN} ... {END} block\n")
        return 1
    new = pattern.sub(lambda _: block(), text)
    if args.check:
        if new != text:
            sys.stderr.write(f"{DESIGN}: the import graph is stale; run python scripts/import_graph.py --write\n")
            return 1
        return 0
    DESIGN.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
