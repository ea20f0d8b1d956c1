"""`python -m bench.tools.train_speed --profile`: where a training step's time goes, on the real Fashion-MNIST.

Short runs (one round of ours, 30 batches of the chapter's), so the assertions are about the shape and sanity
of the figures, not their values: every phase present and positive, their sum close to the step timed whole.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import softmax_impls
from bench.measure.host import torch_threads
from bench.studies.training import data, model
from bench.studies.training.presets import REGIMES
from bench.tools import step_profile as profiling
from bench.tools import train_speed

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def step_profile(fashion: data.FashionMNIST) -> profiling.StepProfile:
    regime = REGIMES["standard"]
    prepared = model.prepare(fashion, CPU, torch.float32, regime.pixel_scale)
    return profiling.profile_ours(softmax_impls.get("naive"), regime, prepared, CPU, torch.float32, seed=0,
                                    rounds=1, top=5)


@pytest.fixture(scope="module")
def chapter_timings(fashion: data.FashionMNIST, tmp_path_factory: pytest.TempPathFactory
                    ) -> profiling.ChapterTimings:
    pytest.importorskip("torchvision")
    root = tmp_path_factory.mktemp("chapter")
    train_speed.write_idx_folder(fashion, Path(root))
    timings = profiling.ChapterTimings(max_steps=30, keep=10)
    with warnings.catch_warnings():  # the chapter's code warns (4 workers on 2 CPUs...): as train_speed.main
        warnings.simplefilter("ignore", UserWarning)
        train_speed.chapter_pipeline(Path(root), 1, 0, log=lambda _: None, timings=timings)
    return timings


def test_our_step_is_split_into_every_phase(step_profile: profiling.StepProfile):
    p = step_profile
    assert list(p.phases) == [key for key, _ in profiling.PHASES]
    assert all(sec > 0 for sec in p.phases.values())
    assert p.steps == 235 and p.batch_size == 256 and p.threads == 1 and p.variant == "naive"
    # The phases are consecutive slices of the instrumented step, so their medians add up to about its median;
    # and the instrumented step is the uninstrumented one plus a few perf_counter calls. The factors are wide
    # because a shared 2-CPU machine stalls steps at random.
    total = sum(p.phases.values())
    assert 0.5 * p.instrumented_step_s < total < 1.5 * p.instrumented_step_s
    assert 0.25 * p.plain_step_s < total < 4 * p.plain_step_s
    assert p.evaluate_s > 0
    names = [name for name, _, _ in p.top_ops]
    assert len(names) == 5 and "aten::mm" in names  # the forward X @ W and backward's gradient of W
    assert all(calls > 0 and sec > 0 for _, calls, sec in p.top_ops)
    assert sum(sec for _, _, sec in p.top_ops) <= p.profiled_self_cpu_s * (1 + 1e-9)


def test_our_profile_prints_a_table(step_profile: profiling.StepProfile):
    text = profiling.format_step_profile(step_profile)
    for key, what in profiling.PHASES:
        assert key in text and what in text
    assert "uninstrumented step" in text and "aten::mm" in text


def test_chapter_timings_split_its_epoch(chapter_timings: profiling.ChapterTimings):
    t = chapter_timings
    assert t.epochs == 1 and t.steps == 30 and len(t.kept) == 10 and len(t.evaluate_s) == 1
    assert t.startup_s > 0 and t.wait_s > 0 and t.step_s > 0 and t.evaluate_s[0] > 0
    assert t.alone_step_s is not None and t.alone_step_s > 0
    text = profiling.format_chapter_timings(t, total_s=sum(s for _, s in t.rows()) + 1.0)
    assert "waiting for the next batch" in text and "the step alone" in text
    assert "outside the epochs (imports, datasets, loaders): 1.00 s" in text


def test_both_profiles_print_together(step_profile: profiling.StepProfile,
                                      chapter_timings: profiling.ChapterTimings):
    text = profiling.format_profiles(step_profile, chapter_timings)
    assert "intra-op threads" in text and "per training step: the chapter" in text


def test_the_instrumented_epoch_is_train_epoch(fashion: data.FashionMNIST):
    # The marks must not change what a step does: one epoch each way from the same start gives the same
    # weights, bit for bit (so the phases time train_epoch's own step; a change there shows up here).
    regime = REGIMES["standard"]
    prepared = model.prepare(fashion, CPU, torch.float32, regime.pixel_scale)
    variant = softmax_impls.get("naive")
    nets = [model.init_model(variant, CPU, torch.float32, 0, regime.init_std) for _ in range(2)]
    args = (prepared.X_train, prepared.y_train, regime.lr, regime.batch_size)
    with torch_threads(model.train_threads(CPU)):  # as in training
        model.train_epoch(nets[0], *args, torch.Generator().manual_seed(1))
        samples: dict[str, list[float]] = {key: [] for key, _ in profiling.PHASES}
        whole: list[float] = []
        profiling._instrumented_epoch(nets[1], *args, torch.Generator().manual_seed(1), samples, whole)
    assert torch.equal(nets[0].W, nets[1].W) and torch.equal(nets[0].b, nets[1].b)
    assert len(whole) == 235 and all(len(v) == 235 for v in samples.values())
