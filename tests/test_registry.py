"""The variant registry: entry-point discovery, unknown names, and a third-party plugin that is broken.

The plugins here are real distributions: a ``*.dist-info`` folder with METADATA and entry_points.txt and
their modules, put on sys.path, exactly what ``pip install`` of a plugin package leaves behind.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

import softmax_impls
from bench import UserError
from bench.cli import main as cli_main
from bench.studies.common import select_variants

CHAPTER = ["logsumexp", "max_subtracted", "naive", "torch"]


def test_chapter_variants_are_discovered_through_entry_points() -> None:
    declared = {ep.name: ep.value for ep in entry_points(group=softmax_impls.ENTRY_POINT_GROUP)}
    for name in CHAPTER:
        assert name in declared and name in softmax_impls.names()
    # Every declared entry point is usable, reported broken or reported as a conflict: nothing silently dropped.
    assert set(softmax_impls.names()) | set(softmax_impls.broken()) | set(softmax_impls.conflicts()) == set(declared)
    assert declared["torch"] == "softmax_impls.torch_builtin:variant"
    for name in softmax_impls.names():
        variant = softmax_impls.get(name)
        assert isinstance(variant, softmax_impls.Variant) and variant.name == name
        assert variant.summary and "\n" not in variant.summary
        assert set(variant.devices) <= {"cpu", "cuda"}


def test_unknown_name_lists_the_registered_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(softmax_impls.UnknownVariantError) as info:
        softmax_impls.get("softmaxx")
    message = str(info.value)
    assert "unknown variant 'softmaxx'" in message
    assert all(name in message for name in softmax_impls.names())
    with pytest.raises(UserError, match="registered variants: "):
        select_variants(["naive", "softmaxx"])


GOOD_MODULE = '''
import torch
from softmax_impls import Variant

def softmax(x, dim=-1):
    return torch.softmax(x, dim)

def cross_entropy(logits, target):
    return torch.nn.functional.cross_entropy(logits, target, reduction="none")

variant = Variant(name="fake_good", summary="a third-party plugin, installed next to this repository",
                  softmax=softmax, cross_entropy=cross_entropy, devices=("cpu",))
misnamed = Variant(name="something_else", summary="registered under another name",
                   softmax=softmax, cross_entropy=cross_entropy)
not_a_variant = "just a string"
'''


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """One installed distribution, fake-softmax-plugin 0.1, declaring four variants: one good, three broken."""
    (tmp_path / "fake_good_softmax.py").write_text(textwrap.dedent(GOOD_MODULE))
    (tmp_path / "fake_broken_softmax.py").write_text("import a_module_that_is_not_installed  # noqa\n")
    dist = tmp_path / "fake_softmax_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-softmax-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [softmax_bench.variants]
        fake_good = fake_good_softmax:variant
        fake_broken = fake_broken_softmax:variant
        fake_misnamed = fake_good_softmax:misnamed
        fake_notvariant = fake_good_softmax:not_a_variant
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    softmax_impls.reload()
    yield tmp_path
    monkeypatch.undo()
    for module in ("fake_good_softmax", "fake_broken_softmax"):
        sys.modules.pop(module, None)
    softmax_impls.reload()  # the registry as installed, for the tests that follow


def test_plugins_join_and_broken_ones_are_reported(plugins: Path) -> None:
    assert "fake_good" in softmax_impls.names()
    assert set(CHAPTER) <= set(softmax_impls.names())  # the others keep working
    good = softmax_impls.get("fake_good")
    x = torch.randn(4, 5)
    assert torch.allclose(good.softmax(x), torch.softmax(x, -1))

    broken = softmax_impls.broken()
    assert set(broken) == {"fake_broken", "fake_misnamed", "fake_notvariant"}
    assert "ModuleNotFoundError" in broken["fake_broken"].error
    assert "a_module_that_is_not_installed" in broken["fake_broken"].error
    assert broken["fake_broken"].target == "fake_broken_softmax:variant"
    assert "registered as 'fake_misnamed'" in broken["fake_misnamed"].error
    assert "TypeError" in broken["fake_notvariant"].error
    with pytest.raises(softmax_impls.UnknownVariantError, match="registered but failed to import"):
        softmax_impls.get("fake_broken")


def test_list_shows_broken_plugins_and_the_rest(plugins: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for name in [*CHAPTER, "fake_good"]:
        assert name in lines and "BROKEN" not in lines[name]
    assert "BROKEN" in lines["fake_broken"] and "a_module_that_is_not_installed" in lines["fake_broken"]
    assert "BROKEN" in lines["fake_misnamed"]


def test_a_plugin_trains_with_the_harness(plugins: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          fashion) -> None:
    """Every variant by default: the broken plugins are announced and left out, the good one trains."""
    import dataclasses

    from bench.store.run import Run
    from bench.studies.training import sweep as training

    chosen = select_variants(None)
    assert "fake_good" in [v.name for v in chosen] and "fake_broken" not in [v.name for v in chosen]
    assert "fake_broken" in capsys.readouterr().err
    small = dataclasses.replace(fashion, train_images=fashion.train_images[:3000],
                                train_labels=fashion.train_labels[:3000])
    run = Run.create(tmp_path / "results", ["test"], {})
    (result,) = training.train_into(run, [softmax_impls.get("fake_good")], ["standard"], torch.device("cpu"),
                                    epochs=1, dataset=small)
    assert result.status == "ok" and result.test_acc > 0.5
