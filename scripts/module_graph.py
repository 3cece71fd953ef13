#!/usr/bin/env python3
"""The dependency graph between src/'s top-level modules, read from `crate::MODULE` paths.

    scripts/module_graph.py           print each module's dependencies and the cycles
    scripts/module_graph.py --check   exit 1 if an edge outside scripts/module_graph.allowed
                                      closes a cycle (the cycles known today are listed there
                                      and are to be removed, not added to; issue 19), or if
                                      the graph ARCHITECTURE.md prints is not the code's

A module is a file `src/NAME.rs` or a directory `src/NAME/`; `main.rs` and `lib.rs` are the
crate's roots, not modules. An edge A -> B means some file of A names `crate::B`.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
ALLOWED = Path(__file__).with_suffix(".allowed")
ARCHITECTURE = ROOT / "ARCHITECTURE.md"


def modules() -> dict[str, list[Path]]:
    found = {}
    for entry in sorted(SRC.iterdir()):
        if entry.is_dir():
            found[entry.name] = sorted(entry.rglob("*.rs"))
        elif entry.suffix == ".rs" and entry.stem not in ("main", "lib"):
            found[entry.stem] = [entry]
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges = {m: set() for m in mods}
    for m, files in mods.items():
        for f in files:
            text = f.read_text()
            # `crate::x` and `use crate::{x, y::z}`
            # The `settings!` declaration macro expands to paths into `config`.
            if re.search(r"\bsettings!\s*\{", text) and "config" in mods and m != "config":
                edges[m].add("config")
            for name in re.findall(r"crate::(\w+)", text):
                if name in mods and name != m:
                    edges[m].add(name)
            for group in re.findall(r"crate::\{([^}]*)\}", text):
                for name in re.findall(r"(?:^|,)\s*(\w+)", group):
                    if name in mods and name != m:
                        edges[m].add(name)
    return edges


def cyclic_edges(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Edges A -> B with a path back from B to A."""
    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            n = todo.pop()
            if n == goal:
                return True
            if n not in seen:
                seen.add(n)
                todo.extend(edges[n])
        return False

    return {(a, b) for a in edges for b in edges[a] if reaches(b, a)}


def printed(edges: dict[str, set[str]]) -> list[str]:
    """The graph, a line per module, as this script prints it and ARCHITECTURE.md shows it."""
    return [f"{m} -> {', '.join(sorted(edges[m])) or '(nothing)'}" for m in sorted(edges)]


def documented() -> list[str]:
    """The graph ARCHITECTURE.md shows: the `text` block that opens with `app -> `."""
    text = ARCHITECTURE.read_text()
    block = re.search(r"```text\n(app -> .*?)```", text, re.S)
    return block.group(1).strip().splitlines() if block else []


def main() -> int:
    edges = graph()
    cycles = cyclic_edges(edges)
    if "--check" not in sys.argv:
        for line in printed(edges):
            print(line)
        print(f"\n{len(cycles)} edge(s) on a cycle:")
        for a, b in sorted(cycles):
            print(f"  {a} -> {b}")
        return 0
    allowed = set()
    for line in ALLOWED.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            a, b = (p.strip() for p in line.split("->"))
            allowed.add((a, b))
    new = sorted(cycles - allowed)
    if new:
        print("module_graph: new edge(s) closing a cycle between top-level modules:", file=sys.stderr)
        for a, b in new:
            print(f"  {a} -> {b}", file=sys.stderr)
        print("Make the dependency one-way (see ARCHITECTURE.md); scripts/module_graph.py "
              "prints the graph.", file=sys.stderr)
        return 1
    if documented() != printed(edges):
        print("module_graph: ARCHITECTURE.md's graph is not the code's; put this in its place:",
              file=sys.stderr)
        for line in printed(edges):
            print(f"  {line}", file=sys.stderr)
        return 1
    gone = sorted(allowed - cycles)
    print(f"module_graph: no new cycle ({len(cycles)} known cycle edge(s) left"
          + (f"; no longer cyclic, remove from {ALLOWED.name}: "
             + ", ".join(f"{a} -> {b}" for a, b in gone) if gone else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
