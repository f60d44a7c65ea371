#!/usr/bin/env python3
"""Check that every import in the server crate points down its layers (docs/architecture.md).

The compiler holds the crates below the server (`crates/bandit`, `crates/store` cannot
name it); inside the server package this script holds the rest: it reads every `crate::`
path in `src/` (code, not comments; `#[cfg(test)]` modules and `tests/` folders included,
since a test that reaches up is an import like any other) and fails, naming file and line,
when a module names one at its own level that is not its sibling-in-order or one above it.

Usage: python3 scripts/check-layers.py   (exit 1 on a violation; CI runs it)
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "src"

# Top to bottom. A module may name modules on lower rows only (and itself).
LAYERS = [
    ["main"],  # the edge: the binary, the state tool, wiring, the config file
    ["state_cli"],
    ["app"],
    ["config"],
    ["api", "http_listener"],  # the wire
    ["service"],  # the domain
    ["routers"],  # components: routers read models' specs
    ["models"],
    ["telemetry", "tls", "memory", "bandit", "store"],  # plumbing and the crates below
]

# Inside a module, its parts top to bottom, where the order is part of the design.
INNER = {
    "routers": [
        ["handle"],
        ["placement"],
        ["replicas"],
        ["catalog"],
        ["instance"],
        ["decisions"],
        ["error"],
    ],
}

PATH = re.compile(r"\bcrate::([a-z_]+)(?:::([a-z_]+))?")


def rank(rows, name):
    for i, row in enumerate(rows):
        if name in row:
            return i
    return None


def module_of(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    top = parts[0]
    inner = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] != "mod") else None
    return top, inner


def code_lines(text):
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("//"):
            continue
        yield number, line.split("//")[0]


def main():
    violations = []
    for path in sorted(ROOT.rglob("*.rs")):
        if path.name == "lib.rs" and path.parent == ROOT:
            continue  # the crate root declares the modules
        top, inner = module_of(path)
        own = rank(LAYERS, top)
        if own is None:
            violations.append(f"{path}: module {top!r} is in no layer of scripts/check-layers.py")
            continue
        rows = INNER.get(top)
        for number, line in code_lines(path.read_text()):
            for match in PATH.finditer(line):
                target, target_inner = match.group(1), match.group(2)
                theirs = rank(LAYERS, target)
                if theirs is None:
                    continue
                where = f"{path.relative_to(ROOT.parent)}:{number}"
                if theirs < own:
                    violations.append(f"{where}: {top} names crate::{target} (a higher layer)")
                elif theirs == own and target != top:
                    violations.append(f"{where}: {top} names crate::{target} (its own layer)")
                elif target == top and rows and inner and inner != "tests":
                    a, b = rank(rows, inner), rank(rows, target_inner)
                    if a is not None and b is not None and b < a:
                        violations.append(
                            f"{where}: {top}::{inner} names {top}::{target_inner} (above it)"
                        )
    if violations:
        print("imports that point up (docs/architecture.md, scripts/check-layers.py):")
        print("\n".join(violations))
        return 1
    print(f"layers hold: every crate:: import in {ROOT.name}/ points down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
