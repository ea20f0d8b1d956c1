"""bench.studies.training.data on the real Fashion-MNIST: what it loads, where it looks, the cache, and corrupt files.

Corrupt copies are the real files written into tmp_path with one of them damaged, never synthetic data.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench import UserError
from bench.cli import main as cli_main
from bench.studies.training import data


def test_real_dataset_counts_shapes_and_labels(fashion: data.FashionMNIST) -> None:
    assert fashion.train_images.shape == (60000, 28, 28) and fashion.train_images.dtype == torch.uint8
    assert fashion.test_images.shape == (10000, 28, 28) and fashion.test_images.dtype == torch.uint8
    assert fashion.train_labels.shape == (60000,) and fashion.train_labels.dtype == torch.int64
    assert fashion.test_labels.shape == (10000,) and fashion.test_labels.dtype == torch.int64
    # Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
    assert torch.bincount(fashion.train_labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(fashion.test_labels, minlength=10).tolist() == [1000] * 10
    assert int(fashion.train_images.min()) == 0 and int(fashion.train_images.max()) == 255
    # The first training and test images are both ankle boots (label 9), as every copy of the dataset has.
    assert int(fashion.train_labels[0]) == 9 and int(fashion.test_labels[0]) == 9


def test_search_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    assert data.search_dirs() == [data.LOCAL_RAW_DIR, data.SYSTEM_DIR]
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert data.search_dirs() == [tmp_path, data.LOCAL_RAW_DIR, data.SYSTEM_DIR]


def _same(a: data.FashionMNIST, b: data.FashionMNIST) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k))
               for k in ("train_images", "train_labels", "test_images", "test_labels"))


@pytest.fixture(scope="module")
def good_plain(tmp_path_factory: pytest.TempPathFactory, fashion: data.FashionMNIST) -> dict[str, Path]:
    """The real dataset written back as plain IDX files (the corrupt cases link to three of them)."""
    return data.write_idx(fashion, tmp_path_factory.mktemp("plain"))


def test_plain_files_load_and_cache(good_plain: dict[str, Path], fashion: data.FashionMNIST, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = good_plain["train-images-idx3-ubyte"].parent
    first = data.load(search=[folder], download=False, cache_dir=tmp_path / "cache")
    assert first.source == folder and not first.from_cache and _same(first, fashion)
    assert (tmp_path / "cache" / data.CACHE_NAME).is_file()

    again = data.load(search=[folder], download=False, cache_dir=tmp_path / "cache")
    assert again.from_cache and _same(again, fashion)

    # A changed source file (here: a new mtime) invalidates the cache.
    labels = good_plain["t10k-labels-idx1-ubyte"]
    st = labels.stat()
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not data.load(search=[folder], download=False, cache_dir=tmp_path / "cache").from_cache

    # The environment variable is searched first.
    monkeypatch.setenv("FASHION_MNIST_DIR", str(folder))
    assert data.load(download=False, cache_dir=tmp_path / "cache").source == folder


def test_gzipped_files_load(fashion: data.FashionMNIST, tmp_path: Path) -> None:
    data.write_idx(fashion, tmp_path / "gz", compress=True)
    loaded = data.load(search=[tmp_path / "gz"], download=False, cache_dir=None)
    assert _same(loaded, fashion) and not loaded.from_cache


def test_damaged_cache_is_rebuilt(good_plain: dict[str, Path], tmp_path: Path) -> None:
    folder = good_plain["train-images-idx3-ubyte"].parent
    cache = tmp_path / data.CACHE_NAME
    cache.write_bytes(b"not a torch file")
    assert not data.load(search=[folder], download=False, cache_dir=tmp_path).from_cache
    assert data.load(search=[folder], download=False, cache_dir=tmp_path).from_cache


def _header_then(path: Path, header: bytes) -> None:
    raw = path.read_bytes()
    path.write_bytes(header + raw[len(header):])


# name of the damaged file -> (how to damage it, words the message must contain)
CORRUPTIONS = {
    "wrong-magic": ("t10k-labels-idx1-ubyte", lambda p: _header_then(p, struct.pack(">I", 2051)),
                    "magic number 2051"),
    "truncated": ("t10k-images-idx3-ubyte", lambda p: p.write_bytes(p.read_bytes()[:-784]), "truncated"),
    "wrong-count": ("t10k-labels-idx1-ubyte",
                    lambda p: p.write_bytes(struct.pack(">2I", 2049, 9999) + p.read_bytes()[8:-1]), "[9999]"),
    "wrong-shape": ("t10k-images-idx3-ubyte",
                    lambda p: p.write_bytes(struct.pack(">4I", 2051, 10000, 784, 1) + p.read_bytes()[16:]),
                    "[10000, 784, 1]"),
    "label-out-of-range": ("train-labels-idx1-ubyte",
                           lambda p: p.write_bytes(p.read_bytes()[:-1] + bytes([10])), "label 10"),
    "header-only": ("t10k-labels-idx1-ubyte", lambda p: p.write_bytes(b"\0\0\x08"), "too short"),
    "padded": ("t10k-labels-idx1-ubyte", lambda p: p.write_bytes(p.read_bytes() + b"\0" * 100), "padded"),
}


def _corrupt_folder(good: dict[str, Path], folder: Path, name: str, damage) -> None:
    folder.mkdir()
    for other, path in good.items():
        if other != name:
            (folder / other).symlink_to(path)
    target = folder / name
    target.write_bytes(good[name].read_bytes())
    damage(target)


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_file_is_a_user_error(case: str, good_plain: dict[str, Path], tmp_path: Path) -> None:
    name, damage, words = CORRUPTIONS[case]
    folder = tmp_path / "corrupt"
    _corrupt_folder(good_plain, folder, name, damage)
    with pytest.raises(UserError) as info:
        data.load(search=[folder], download=False, cache_dir=None, quiet=True)
    message = str(info.value)
    assert name in message and words in message and str(folder) in message
    assert "replace it with an intact copy" in message  # what to do, not only what is wrong
    assert "apt-get install dataset-fashion-mnist" in message and "\n" not in message


@pytest.mark.parametrize("how", ["garbage", "cut"])
def test_broken_gzip_is_a_user_error(how: str, good_plain: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "gz"
    folder.mkdir()
    for name, path in good_plain.items():
        if name != "train-labels-idx1-ubyte":
            (folder / name).symlink_to(path)
    blob = gzip.compress(good_plain["train-labels-idx1-ubyte"].read_bytes(), compresslevel=1)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"certainly not gzip" if how == "garbage"
                                                          else blob[: len(blob) // 2])
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz cannot be read"):
        data.load(search=[folder], download=False, cache_dir=None, quiet=True)


def test_missing_everywhere_names_every_place(tmp_path: Path) -> None:
    empty, absent = tmp_path / "empty", tmp_path / "absent"
    empty.mkdir()
    (empty / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(UserError) as info:
        data.load(search=[empty, absent], download=False, cache_dir=None)
    message = str(info.value)
    assert f"{absent}: not found" in message
    assert f"{empty}: incomplete (has train-images-idx3-ubyte.gz)" in message
    assert "torchvision download: not attempted" in message and "FASHION_MNIST_DIR" in message


def test_corrupt_location_is_passed_over(good_plain: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    _corrupt_folder(good_plain, bad, "t10k-labels-idx1-ubyte", lambda p: p.write_bytes(p.read_bytes()[:-5]))
    good = good_plain["train-images-idx3-ubyte"].parent
    assert data.load(search=[bad, good], download=False, cache_dir=None).source == good
    assert f"skipping {bad}" in capsys.readouterr().err


def test_cli_without_data_prints_one_paragraph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # Nowhere to find the data, and no network: the download's failure is what the user would see offline.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.setattr(data, "_download", lambda root: "URLError: <urlopen error [Errno -3] no network>")
    code = cli_main(["train", "--variant", "naive", "--epochs", "1", "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    paragraph = err.replace("\n", " ")
    assert code == 2 and "Traceback" not in err
    for place in ("nowhere", "data/FashionMNIST/raw", "no-system-copy", "no network", "dataset-fashion-mnist"):
        assert place in paragraph
    assert not (tmp_path / "results").exists()  # no empty run folder left behind


# --- a gzip bomb, the copy that trained, and a $FASHION_MNIST_DIR passed over ----------------------------

def _gzip_stream(path: Path, header: bytes, body_bytes: int) -> None:
    """header + body_bytes zero bytes, gzipped in 1 MiB writes (a bomb: a few hundred KB on disk)."""
    block = bytes(1 << 20)
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
        f.write(header)
        for _ in range(body_bytes // len(block)):
            f.write(block)
        f.write(bytes(body_bytes % len(block)))


def test_gzip_bomb_is_refused_after_the_promised_bytes(good_plain: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "bomb"
    folder.mkdir()
    for name, path in good_plain.items():
        if name != "t10k-labels-idx1-ubyte":
            (folder / name).symlink_to(path)
    bomb = folder / "t10k-labels-idx1-ubyte.gz"
    _gzip_stream(bomb, struct.pack(">2I", data.LABEL_MAGIC, 10000), 10000 + 128 * 2**20)  # 128 MiB too long
    assert bomb.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(data.DataError) as info:
            data.read_idx(bomb, data.LABEL_MAGIC, 10000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # the header's 10000 bytes and one more, never the 128 MiB
    assert str(bomb) in str(info.value) and "padded" in str(info.value) and "replace it" in str(info.value)
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz has more bytes of labels"):
        data.load(search=[folder], download=False, cache_dir=None, quiet=True)


def test_gzip_header_is_checked_before_the_body(tmp_path: Path) -> None:
    # A wrong magic or count is refused from the first 16 bytes: the 47 MB body is never decompressed.
    wrong = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_stream(wrong, struct.pack(">4I", 2049, 60000, 28, 28), 64 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(data.DataError, match="magic number 2049, but an IDX images file starts with 2051"):
            data.read_idx(wrong, data.IMAGE_MAGIC, 60000)
        assert tracemalloc.get_traced_memory()[1] < 2**20
    finally:
        tracemalloc.stop()
    _gzip_stream(wrong, struct.pack(">4I", 2051, 60000, 28, 28), 1000)
    with pytest.raises(data.DataError, match=r"has 1000 bytes of images .* promises 47040000 .*truncated"):
        data.read_idx(wrong, data.IMAGE_MAGIC, 60000)


def test_describe_names_the_copy_and_its_sha256(good_plain: dict[str, Path], fashion: data.FashionMNIST,
                                                tmp_path: Path) -> None:
    folder = good_plain["train-images-idx3-ubyte"].parent
    ds = data.load(search=[folder], download=False, cache_dir=None)
    described = data.describe(ds)
    assert described["folder"] == str(folder.resolve())
    assert described["train_images"] == 60000 and described["test_images"] == 10000
    assert set(described["files"]) == set(data.FILE_NAMES)
    for name, path in good_plain.items():
        assert described["files"][name] == {"file": name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

    # training records the copy it trained on in run.json (here a 256-image subset of the real one)
    from bench.store.run import Run
    from bench.studies.training.sweep import train_into
    from softmax_impls import get

    run = Run.create(tmp_path / "runs", ["softmax-bench", "train"], {})
    subset = replace(fashion, train_images=fashion.train_images[:256], train_labels=fashion.train_labels[:256])
    train_into(run, [get("torch")], ["standard"], torch.device("cpu"), epochs=1, dataset=subset)
    recorded = json.loads((run.path / "run.json").read_text())["dataset"]
    assert recorded["folder"] == str(Path(fashion.source).resolve()) and recorded["train_images"] == 256
    assert all(len(f["sha256"]) == 64 for f in recorded["files"].values()) and len(recorded["files"]) == 4


@pytest.mark.parametrize("asked", ["", "missing", "empty"])
def test_fashion_mnist_dir_passed_over_is_said(asked: str, good_plain: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    good = good_plain["train-images-idx3-ubyte"].parent
    monkeypatch.setattr(data, "LOCAL_RAW_DIR", good)  # the copy found instead
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "no-system-copy")
    folder = {"": "", "missing": str(tmp_path / "nowhere"), "empty": str(tmp_path / "empty")}[asked]
    if asked == "empty":
        (tmp_path / "empty").mkdir()
    monkeypatch.setenv("FASHION_MNIST_DIR", folder)
    assert data.load(download=False, cache_dir=None).source == good
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "$FASHION_MNIST_DIR" in lines[0] and f"using the copy in {good} instead" in lines[0]
    assert folder in lines[0] and {"": "is set but empty", "missing": "not found",
                                   "empty": "an empty folder"}[asked] in lines[0]


def test_fashion_mnist_dir_used_says_nothing(good_plain: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    folder = good_plain["train-images-idx3-ubyte"].parent
    monkeypatch.setenv("FASHION_MNIST_DIR", str(folder))
    assert data.load(download=False, cache_dir=None).source == folder
    assert capsys.readouterr().err == ""
