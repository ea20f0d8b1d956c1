"""Install real plugin distributions for a test: a ``*.dist-info`` folder with METADATA and entry_points.txt
plus the plugin's module, on sys.path, which is exactly what ``pip install`` of a plugin package leaves.

    def test_x(tmp_path, monkeypatch):
        install_plugin(tmp_path, monkeypatch, "nan_plugin", NAN_SOURCE, {"nan_everywhere": "variant"})
        softmax_impls.get("nan_everywhere")   # registered like any variant

Misbehaving plugins used by several test files live here too (:data:`MISBEHAVING`), so each is written once.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import softmax_impls

# Source of a module defining well-formed Variants that misbehave at call time. `torch` is the baseline
# they wrap, so their (wrong) outputs have the right shape unless a test wants otherwise.
MISBEHAVING = '''
import os, sys, time
import torch
from softmax_impls import Variant


def _softmax(x, dim=-1):
    return torch.softmax(x, dim)


def _ce(logits, target):
    return torch.nn.functional.cross_entropy(logits, target, reduction="none")


def _exits(*args, **kwargs):
    sys.exit(3)  # a stray sys.exit, or a library's argparse error


def _nan_softmax(x, dim=-1):
    return torch.full_like(x, float("nan"))


def _nan_ce(logits, target):
    return logits.sum(-1) * float("nan")


def _wrong_shape_softmax(x, dim=-1):
    return torch.softmax(x, dim)[..., :1].contiguous()


def _wrong_shape_ce(logits, target):
    return torch.nn.functional.cross_entropy(logits, target, reduction="none")[:1]


def _mutating_softmax(x, dim=-1):
    y = torch.softmax(x, dim)
    with torch.no_grad():
        x.mul_(1000.0)  # writes into the harness's input
    return y


def _mutating_ce(logits, target):
    out = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    with torch.no_grad():
        logits.mul_(1000.0)
    return out


def _sleepy_softmax(x, dim=-1):
    time.sleep(float(os.environ.get("SLEEPY_SECONDS", "30")))
    return torch.softmax(x, dim)


def _sleepy_ce(logits, target):
    time.sleep(float(os.environ.get("SLEEPY_SECONDS", "30")))
    return torch.nn.functional.cross_entropy(logits, target, reduction="none")


def _repeat(fn):
    """fn done SLOWDOWN times over (the probe's helper: whole repeats, the fraction as a slice of the rows)."""
    from bench.tools.compare_probe import repeated

    return repeated(fn, lambda: float(os.environ.get("SLOWDOWN", "1")))


exits = Variant(name="exits", summary="calls sys.exit", softmax=_exits, cross_entropy=_exits)
nan_everywhere = Variant(name="nan_everywhere", summary="returns NaN", softmax=_nan_softmax, cross_entropy=_nan_ce)
wrong_shape = Variant(name="wrong_shape", summary="returns the wrong shape", softmax=_wrong_shape_softmax,
                      cross_entropy=_wrong_shape_ce)
mutates_input = Variant(name="mutates_input", summary="scales its input in place", softmax=_mutating_softmax,
                        cross_entropy=_mutating_ce)
sleepy = Variant(name="sleepy", summary="sleeps SLEEPY_SECONDS per call", softmax=_sleepy_softmax,
                 cross_entropy=_sleepy_ce)
slowed = Variant(name="slowed", summary="torch done SLOWDOWN times over", softmax=_repeat(_softmax),
                 cross_entropy=_repeat(_ce))
'''


def install_plugin(where: Path, monkeypatch: pytest.MonkeyPatch, dist: str, source: str,
                   entries: dict[str, str], module: str | None = None) -> str:
    """Write module `module` (default: `<dist>_mod`) from `source` and a distribution `dist` 0.1 whose
    entry points map each name of `entries` to `module:<attribute>`; put it on sys.path and reload the
    registry. Returns the module name. The monkeypatch undoes sys.path; :func:`forget` drops the module."""
    module = module or f"{dist}_mod"
    folder = where / f"site-{dist}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    info = folder / f"{dist}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {module}:{attr}" for name, attr in entries.items())
    (info / "entry_points.txt").write_text(f"[{softmax_impls.ENTRY_POINT_GROUP}]\n{lines}\n")
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop(module, None)
    softmax_impls.reload()
    return module


@pytest.fixture
def misbehaving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The misbehaving plugins of :data:`MISBEHAVING`, installed as one distribution; removed afterwards."""
    names = ("exits", "nan_everywhere", "wrong_shape", "mutates_input", "sleepy", "slowed")
    module = install_plugin(tmp_path, monkeypatch, "misbehaving_plugins", MISBEHAVING,
                            {n: n for n in names})
    yield names
    monkeypatch.undo()
    sys.modules.pop(module, None)
    softmax_impls.reload()
