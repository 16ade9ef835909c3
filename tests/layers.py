#!/usr/bin/env python3
"""The core's floors, checked: ARCHITECTURE.md's invariants that a script can see.

1. Floors. Each top-level module of `shared/src` (a folder or a file) sits on a floor; a module
   may name (`crate::x`, `super::super::x`) only modules on its own floor or below. The order is
   FLOORS below, the same as in `shared/src/lib.rs` and ARCHITECTURE.md's code map. An order
   forbids circles as well: a module below cannot reach back up.
2. Only `store/` opens sealed resource bodies: `crypto::open(` (the row-bound open of a resource
   version) appears nowhere else in the workspace's sources.
3. Only `identity/admin.rs` changes people, clients and roles: no other file inserts into or
   deletes from `users`/`clients`, or updates their role, password, lock, MFA or disabled state.

4. Every query of the core passes `db::Db`: no file of the core but `db/mod.rs` and `core.rs`
   (which builds the pools) names sqlx's pool (`PgPool`, `Pool<`), so no path can run a
   statement outside a transaction, or without its role, behind a transaction-mode pooler.

5. GraphQL adds no path to the data: `graphql/` names neither sqlx nor the database
   (`crate::db`), so it reaches resources only through the store's gated reads and searches.

Exit status 1 and one line per breach; silent on success but for a one-line summary.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORE = ROOT / "shared" / "src"

# Bottom first. Modules on one line share a floor (they may use each other).
FLOORS = [
    ["clock", "meter"],
    ["fhir", "crypto"],
    ["access", "deid"],
    ["db"],
    ["audit"],
    ["search"],
    ["store"],
    ["graphql"],
    ["identity"],
    ["export"],
    ["config"],
    ["core"],
]
FLOOR = {m: i for i, ms in enumerate(FLOORS) for m in ms}

COMMENT = re.compile(r"//.*$")
NAMED = re.compile(r"\bcrate::([a-z_]+)")
GROUPED = re.compile(r"\buse crate::\{([^}]*)\}", re.S)


def code_of(path):
    """The file's text without line comments (doc links name modules without importing them)."""
    return "\n".join(COMMENT.sub("", line) for line in path.read_text().splitlines())


def module_of(path):
    rel = path.relative_to(CORE)
    return rel.parts[0].removesuffix(".rs")


def floors():
    breaches = []
    modules = sorted({module_of(p) for p in CORE.rglob("*.rs")} - {"lib"})
    unplaced = [m for m in modules if m not in FLOOR]
    for m in unplaced:
        breaches.append(f"shared/src/{m}: not on a floor (add it to tests/layers.py FLOORS)")
    for path in sorted(CORE.rglob("*.rs")):
        me = module_of(path)
        if me == "lib" or me not in FLOOR:
            continue
        text = code_of(path)
        named = set(NAMED.findall(text))
        for group in GROUPED.findall(text):
            named |= {g.strip().split("::")[0] for g in group.split(",") if g.strip()}
        for other in sorted(named):
            if other in FLOOR and FLOOR[other] > FLOOR[me]:
                breaches.append(
                    f"{path.relative_to(ROOT)}: {me} (floor {FLOOR[me]}) names crate::{other} "
                    f"(floor {FLOOR[other]}): a floor may only use floors below it"
                )
    return breaches


def sources():
    for top in ("shared/src", "server/src", "console/src", "tests/src", "tests/e2e"):
        yield from sorted((ROOT / top).rglob("*.rs"))


def sealed_bodies():
    breaches = []
    for path in sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("shared/src/store/") or rel == "shared/src/crypto/seal.rs":
            continue
        if re.search(r"\bcrypto::open\(", code_of(path)):
            breaches.append(f"{rel}: opens a sealed resource body (only shared/src/store/ may)")
    return breaches


PEOPLE = re.compile(
    r"(INSERT\s+INTO\s+(users|clients)\b"
    r"|DELETE\s+FROM\s+(users|clients)\b"
    r"|UPDATE\s+clients\b"
    r"|UPDATE\s+users\s+SET\s+[^\"]*\b(role|password_hash|admin_locked|totp_sealed)\s*=)",
    re.I | re.S,
)


def people():
    breaches = []
    for path in sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel == "shared/src/identity/admin.rs" or rel.startswith("tests/"):
            continue
        for m in PEOPLE.finditer(code_of(path)):
            breaches.append(
                f"{rel}: changes people or clients ({' '.join(m.group(0).split()[:3])}...): "
                "only shared/src/identity/admin.rs may"
            )
    return breaches


POOL = re.compile(r"\b(PgPool|Pool<|PgPoolOptions)\b")


def pools():
    breaches = []
    for path in sorted(CORE.rglob("*.rs")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ("shared/src/db/mod.rs", "shared/src/core.rs"):
            continue
        if POOL.search(code_of(path)):
            breaches.append(f"{rel}: names sqlx's pool (every query of the core passes db::Db)")
    return breaches


GRAPHQL_DATA = re.compile(r"\b(sqlx|crate::db)\b")


def graphql_through_store():
    breaches = []
    for path in sorted((CORE / "graphql").rglob("*.rs")):
        m = GRAPHQL_DATA.search(code_of(path))
        if m:
            breaches.append(
                f"{path.relative_to(ROOT)}: names {m.group(1)} (GraphQL reads only through the store)"
            )
    return breaches


def main():
    breaches = floors() + sealed_bodies() + people() + pools() + graphql_through_store()
    for b in breaches:
        print(f"architecture invariant broken: {b}", file=sys.stderr)
    if breaches:
        return 1
    print(f"core floors hold: {len(FLOOR)} modules on {len(FLOORS)} floors; sealed bodies, people, pools and GraphQL as stated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
