#!/usr/bin/env python3
"""Checks that the crate's layers point one way (ARCHITECTURE.md, "Layers").

Reads the `crate::` paths of every non-test source file under src/ (comments and
`#[cfg(test)]` modules skipped) and fails when a module imports a module of a higher layer,
or when top-level modules import each other in a cycle. Prints the module graph with -v.

    model  <-  store, config  <-  features  <-  daemon  <-  transports  <-  the crate root
"""
import collections, os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
LAYERS = {
    "model": 0,
    "store": 1, "config": 1,
    "heavy": 2, "schedule": 2, "metrics": 2, "webhooks": 2, "outbound": 2,
    "inbound": 2, "feedback": 2, "health": 2,
    "daemon": 3,
    "smtp": 4, "http": 4,
    "lib": 5,
}

def module_of(path):
    parts = os.path.relpath(path, ROOT).split(os.sep)
    return parts[0][:-3] if len(parts) == 1 else parts[0]

def code(text):
    """The file without its test modules and comments."""
    text = re.sub(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*;", "", text)
    i = text.find("#[cfg(test)]")
    if i >= 0:
        text = text[:i]
    return re.sub(r"//[^\n]*", "", text)

def graph():
    edges = collections.defaultdict(set)
    for d, _, files in os.walk(ROOT):
        for f in files:
            # main.rs and cli.rs are the binary crate (they use the library as `postern::`).
            if not f.endswith(".rs") or f == "tests.rs" or f in ("main.rs", "cli.rs"):
                continue
            p = os.path.join(d, f)
            m = module_of(p)
            text = code(open(p).read())
            found = set(re.findall(r"\bcrate::(\w+)", text))
            for grp in re.findall(r"\bcrate::\{([^}]*)\}", text, re.S):
                found |= set(re.findall(r"(?:^|,)\s*(\w+)", grp))
            for t in found:
                if t != m:
                    edges[m].add(t)
    return edges

def cycles(edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(set(edges) | {t for s in edges.values() for t in s}):
        if v not in index:
            visit(v)
    return out

def main():
    edges = graph()
    problems = []
    for m, targets in sorted(edges.items()):
        if m not in LAYERS:
            problems.append(f"src/{m}: not assigned to a layer in scripts/layers.py")
            continue
        for t in sorted(targets):
            if t not in LAYERS:
                problems.append(f"{m} -> {t}: {t} is not assigned to a layer")
            elif LAYERS[t] > LAYERS[m]:
                problems.append(f"{m} (layer {LAYERS[m]}) imports {t} (layer {LAYERS[t]}): layers point one way")
    for d, _, files in os.walk(ROOT):
        for f in files:
            p = os.path.join(d, f)
            if f.endswith(".rs") and module_of(p) != "store" and re.search(r"\bsled::", code(open(p).read())):
                problems.append(f"{os.path.relpath(p, ROOT)}: only store/ may use sled")
    for c in cycles(edges):
        problems.append("cycle: " + " <-> ".join(c))
    if "-v" in sys.argv:
        for m in sorted(edges, key=lambda m: (LAYERS.get(m, 9), m)):
            print(f"{LAYERS.get(m, '?')} {m} -> {' '.join(sorted(edges[m]))}")
    for p in problems:
        print("layers:", p)
    if problems:
        sys.exit(1)
    print(f"layers: {len(edges)} modules, one way, no cycle")

main()
