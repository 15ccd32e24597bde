"""Print autounet's package graph: which top-level package imports which, and every pair that imports
each other (the layers contract in pyproject.toml keeps that list empty).

    python scripts/package_graph.py            # the installed (or PYTHONPATH) autounet
"""

from __future__ import annotations

import sys
from collections import defaultdict

import grimp


def package_edges(package: str = "autounet") -> dict[str, set[str]]:
    """For each sub-package (or top-level module), the sub-packages it imports directly."""
    graph = grimp.build_graph(package, cache_dir=None)
    edges: dict[str, set[str]] = defaultdict(set)
    for module in graph.modules:
        parts = module.split(".")
        if len(parts) < 2:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            target = imported.split(".")
            if len(target) >= 2 and target[1] != parts[1]:
                edges[parts[1]].add(target[1])
    return edges


def mutual_pairs(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in edges.items() for b in targets if a < b and a in edges.get(b, set()))


def main() -> int:
    edges = package_edges()
    for source in sorted(edges):
        print(f"{source} -> {', '.join(sorted(edges[source]))}")
    pairs = mutual_pairs(edges)
    print(f"packages that import each other: {len(pairs)}" + "".join(f"\n  {a} <-> {b}" for a, b in pairs))
    return 1 if pairs else 0


if __name__ == "__main__":
    sys.exit(main())
