#!/usr/bin/env python3
"""Lists functions under src/ longer than the limit (default 80 lines), test code excluded.

A function is counted from its `fn` line to its closing brace. Tables (a function that is
one `match` or array of data) may be exempted with a `// fn_length: table` comment on the
line before the `fn`. Exits non-zero when any other function is over the limit.
"""
import os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
LIMIT = int(sys.argv[1]) if len(sys.argv) > 1 else 80
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")

def functions(lines):
    i = 0
    while i < len(lines):
        m = FN.match(lines[i])
        if not m:
            i += 1
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j].split("//")[0])
            code = re.sub(r"'(\\.|[^'\\])'", "''", code)
            depth += code.count("{") - code.count("}")
            if "{" in code:
                started = True
            if started and depth <= 0:
                break
            if not started and code.rstrip().endswith(";"):
                break
            j += 1
        exempt = i > 0 and "fn_length: table" in lines[i - 1]
        yield m.group(6), i + 1, j - i + 1, exempt
        i += 1

bad = []
for d, _, files in os.walk(ROOT):
    for f in files:
        if not f.endswith(".rs") or f == "tests.rs":
            continue
        p = os.path.join(d, f)
        lines = open(p).read().split("\n")
        cut = next((k for k, l in enumerate(lines) if l.startswith("#[cfg(test)]")), len(lines))
        for name, line, n, exempt in functions(lines[:cut]):
            if n > LIMIT and not exempt:
                bad.append((n, f"{os.path.relpath(p, ROOT)}:{line} {name}"))
for n, where in sorted(bad, reverse=True):
    print(f"{n:4} lines  src/{where}")
if bad:
    print(f"fn_length: {len(bad)} functions over {LIMIT} lines")
    sys.exit(1)
print(f"fn_length: no function over {LIMIT} lines")
