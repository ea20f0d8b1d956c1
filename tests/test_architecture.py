"""The rooms of bench/ and the arrows between them (docs/architecture.md), read from every module's imports.

Every ``import`` and ``from ... import`` is collected with ast, including those inside functions (a lazy
import is still a dependency), and each rule names the offending module, line and import when it fails.
Relative imports are resolved against the importing module's package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (importer prefix, forbidden import prefix, why)
RULES = (
    ("bench.report", "bench.studies", "the report reads only stored rows and run.json, never a study"),
    ("bench.report", "bench.measure", "the report reads only stored rows and run.json, never a measurement"),
    ("bench.studies", "bench.report", "a study writes rows; rendering is the report's"),
    ("bench.measure", "bench.studies", "how one number is taken knows no study"),
    ("bench.store", "bench.studies", "the store knows the row schema, not the studies that write it"),
    ("softmax_impls", "bench", "a variant knows nothing of the harness that measures it"),
)
# Being moved by the regression-gate and roofline work (the lead moves them into bench/report/compare.py and
# bench/tools/ at merge time); they are in no room yet, so no rule applies to them.
NOT_YET_IN_A_ROOM: set[str] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("bench", "softmax_impls"):
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, at any depth; `from a import b` yields a.b too
    (b may be a submodule), relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
    return out


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations() -> list[str]:
    found = []
    for module, path in _modules().items():
        if module in NOT_YET_IN_A_ROOM:
            continue
        for line, imported in imports_of(path, module):
            for importer, forbidden, why in RULES:
                if _within(module, importer) and _within(imported, forbidden):
                    found.append(f"{module} ({path.relative_to(ROOT)}:{line}) imports {imported}: {why}")
    return sorted(set(found))


def test_the_import_rules_hold() -> None:
    problems = violations()
    assert not problems, "import rules broken:\n" + "\n".join(problems)


@pytest.mark.parametrize("importer, forbidden, why", RULES)
def test_each_rule_is_checked_against_real_modules(importer: str, forbidden: str, why: str) -> None:
    # a rule over a room that does not exist would pass forever: every importer room holds modules
    assert any(_within(m, importer) for m in _modules()), f"no module under {importer}"


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from bench.studies import common\n\nfrom . import sibling\n")
    found = imports_of(source, "bench.report.sections.mod")
    assert (2, "bench.studies.common") in found and (4, "bench.report.sections.sibling") in found
