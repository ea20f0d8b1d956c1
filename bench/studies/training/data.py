"""Fashion-MNIST, real: locate the four IDX files, validate them, load them once into uint8 tensors.

    from bench import data
    ds = data.load()                  # FashionMNIST(train_images uint8 [60000, 28, 28], train_labels int64 ...)
    ds.source, ds.from_cache          # where it came from

    python -m bench.studies.training.data              # where the files were found, counts, and how long loading took

Where it looks, in order (each file gzipped or not):

1. ``$FASHION_MNIST_DIR``
2. ``./data/FashionMNIST/raw``        (torchvision's layout)
3. ``/usr/share/datasets/fashion-mnist``  (Debian's package ``dataset-fashion-mnist``)
4. torchvision's download into ``./data`` (needs the network)

Every file is checked: the IDX magic number (2051 images, 2049 labels), the counts (60000 train, 10000
test), 28x28 images, labels 0-9, and a file length that matches its header. The header is read from the
first bytes of the (decompressed) stream and no more than the size it promises is ever read, so a .gz
that inflates to gigabytes costs no more memory than the real file. A location whose files fail the
checks is passed over with a warning; so is a set $FASHION_MNIST_DIR that is empty, missing or invalid
(one line naming the copy used instead). ``describe(ds)`` names the copy (folder, sha256 of each file);
training records it in run.json.

The decoded tensors are cached in ``data/cache/`` of the source
checkout (``~/.cache/softmax-bench`` for an installed copy) and read
back with ``torch.load(weights_only=True)`` (a few hundred ms instead of seconds of gunzip); the cache is
keyed by the source files' paths, sizes and mtimes, so a changed file invalidates it. Nothing found gives
one :class:`~bench.UserError` paragraph naming every place searched and how to get the data.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch

from bench import UserError

if TYPE_CHECKING:
    from bench.store.run import Run

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
LOCAL_RAW_DIR = Path("data/FashionMNIST/raw")
DOWNLOAD_ROOT = Path("data")

def default_cache_dir() -> Path:
    """<checkout>/data/cache in a source checkout (whatever the working directory), else the user's cache."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "data" / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "softmax-bench"


CACHE_DIR = default_cache_dir()
CACHE_NAME = "fashion_mnist.pt"
CACHE_FORMAT = 1

IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
ROWS = COLS = 28
NUM_CLASSES = 10

# split -> (images file, labels file, expected count)
SPLITS: dict[str, tuple[str, str, int]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
FILE_NAMES = tuple(name for images, labels, _ in SPLITS.values() for name in (images, labels))

HOW_TO_GET = (
    "Get the data with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; `make setup` does this "
    "when run as root), or download the four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from "
    "https://github.com/zalandoresearch/fashion-mnist into ./data/FashionMNIST/raw, or point "
    "$FASHION_MNIST_DIR at a folder that holds them."
)


class DataError(UserError):
    """A dataset file exists but is not valid Fashion-MNIST (wrong magic, count, shape, truncated...)."""


@dataclass(frozen=True)
class FashionMNIST:
    """The whole dataset in memory: images uint8 [N, 28, 28], labels int64 [N] in 0..9."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: Path  # the folder the IDX files came from
    from_cache: bool = False


def search_dirs() -> list[Path]:
    """The folders searched, in order: $FASHION_MNIST_DIR, ./data/FashionMNIST/raw, Debian's folder."""
    dirs = []
    env = os.environ.get("FASHION_MNIST_DIR")
    if env:
        dirs.append(Path(env).expanduser())
    dirs += [LOCAL_RAW_DIR, SYSTEM_DIR]
    return dirs


def find_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in `folder` (plain preferred over .gz), or None unless all four are there."""
    found = {}
    for name in FILE_NAMES:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            return None
    return found


# What to do about a damaged file, at the end of every DataError.
REPLACE = "replace it with an intact copy of that Fashion-MNIST file"


def _read_exactly(f: BinaryIO, path: Path, n: int) -> bytes:
    try:
        return f.read(n)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a cut .gz gives EOFError
        raise DataError(f"{path} cannot be read ({type(exc).__name__}: {exc}); {REPLACE}") from None


def _read_bounded(path: Path, magic: int, count: int) -> tuple[list[int], bytes]:
    """The IDX header's dims and the body, read as a stream: the header is checked from the first bytes, and
    no more than the header's promised body (plus one byte, to notice a longer file) is ever decompressed,
    so a gzip bomb costs at most the real file's size in memory, never what it inflates to."""
    ndim = 3 if magic == IMAGE_MAGIC else 1
    kind = "images" if magic == IMAGE_MAGIC else "labels"
    header_len = 4 + 4 * ndim
    try:
        f: BinaryIO = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({type(exc).__name__}: {exc}); {REPLACE}") from None
    with f:
        head = _read_exactly(f, path, header_len)
        if len(head) < header_len:
            raise DataError(f"{path} is {len(head)} bytes long, too short for an IDX {kind} header; {REPLACE}")
        found_magic, *dims = struct.unpack(f">{1 + ndim}I", head)
        if found_magic != magic:
            raise DataError(f"{path} has magic number {found_magic}, but an IDX {kind} file starts with {magic}: "
                            f"it is not the Fashion-MNIST {kind} file; {REPLACE}")
        expected_dims = [count, ROWS, COLS] if ndim == 3 else [count]
        if dims != expected_dims:
            raise DataError(f"{path} holds {kind} of shape {dims}, but Fashion-MNIST has {expected_dims}; {REPLACE}")
        need = count * (ROWS * COLS if ndim == 3 else 1)
        body = _read_exactly(f, path, need + 1)
    if len(body) != need:
        what = "truncated" if len(body) < need else "longer than that: padded, or not Fashion-MNIST"
        size = f"{len(body)} bytes" if len(body) <= need else "more bytes"
        raise DataError(f"{path} has {size} of {kind} after its header, but its header promises {need} "
                        f"(the file is {what}); {REPLACE}")
    return expected_dims, body


def read_idx(path: Path, magic: int, count: int) -> torch.Tensor:
    """One IDX file as a uint8 tensor ([count, 28, 28] for images, [count] for labels), fully validated."""
    dims, body = _read_bounded(path, magic, count)
    tensor = torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)
    if len(dims) == 1 and int(tensor.max()) >= NUM_CLASSES:
        raise DataError(f"{path} has label {int(tensor.max())}; Fashion-MNIST labels are 0-{NUM_CLASSES - 1}; "
                        f"{REPLACE}")
    return tensor


def read_folder(files: dict[str, Path]) -> dict[str, torch.Tensor]:
    """Decode and validate the four files; keys train_images, train_labels, test_images, test_labels."""
    out: dict[str, torch.Tensor] = {}
    for split, (images, labels, count) in SPLITS.items():
        out[f"{split}_images"] = read_idx(files[images], IMAGE_MAGIC, count)
        out[f"{split}_labels"] = read_idx(files[labels], LABEL_MAGIC, count).long()
    return out


def write_idx(ds: FashionMNIST, folder: Path, compress: bool = False) -> dict[str, Path]:
    """Write `ds` as the four IDX files into `folder` (torchvision's raw layout; .gz with `compress`)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, (images_name, labels_name, count) in SPLITS.items():
        images = getattr(ds, f"{split}_images").to(torch.uint8)
        labels = getattr(ds, f"{split}_labels").to(torch.uint8)
        blobs = {images_name: struct.pack(">4I", IMAGE_MAGIC, count, ROWS, COLS) + images.numpy().tobytes(),
                 labels_name: struct.pack(">2I", LABEL_MAGIC, count) + labels.numpy().tobytes()}
        for name, blob in blobs.items():
            path = folder / (f"{name}.gz" if compress else name)
            # compresslevel 1: ten times faster than 9 and the files are only for local use
            path.write_bytes(gzip.compress(blob, compresslevel=1) if compress else blob)
            written[name] = path
    return written


def _cache_key(files: dict[str, Path]) -> list[str]:
    # Path, size and mtime of each source: replacing or editing a file changes the key.
    key = [f"format={CACHE_FORMAT}"]
    for name in FILE_NAMES:
        st = files[name].stat()
        key.append(f"{files[name].resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return key


def _read_cache(path: Path, key: list[str]) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # a damaged or foreign cache is rebuilt, never fatal
        return None
    if not isinstance(blob, dict) or blob.get("key") != key:
        return None
    tensors = {k: blob.get(k) for k in ("train_images", "train_labels", "test_images", "test_labels")}
    shapes_ok = all(isinstance(t, torch.Tensor) for t in tensors.values()) and all(
        tensors[f"{split}_images"].shape == (count, ROWS, COLS) and tensors[f"{split}_labels"].shape == (count,)
        for split, (_, _, count) in SPLITS.items())
    return tensors if shapes_ok else None


def _write_cache(path: Path, key: list[str], tensors: dict[str, torch.Tensor]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"key": key, **tensors}, tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old cache or the new, never half
    except OSError as exc:  # a read-only checkout still works, just without the speed-up
        print(f"softmax-bench: could not write the dataset cache {path} ({exc}); continuing without it",
              file=sys.stderr)


def _download(root: Path) -> str | None:
    """Try torchvision's download into root; None on success, else why it failed."""
    try:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

        for train in (True, False):
            TorchvisionFashionMNIST(str(root), train=train, download=True)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _why_incomplete(folder: Path) -> str:
    if not folder.is_dir():
        return "not found"
    if not any(folder.iterdir()):
        return "an empty folder"
    present = sorted(p.name for p in folder.glob("*idx*-ubyte*"))
    return f"incomplete (has {', '.join(present) or 'none of the files'})"


def _warn_if_env_passed_over(found: FashionMNIST, problems: list[str]) -> None:
    """$FASHION_MNIST_DIR set, yet another copy is used: one line on stderr naming both, so a study never
    trains on another copy than the one asked for without saying so."""
    env = os.environ.get("FASHION_MNIST_DIR")
    if env is None:
        return
    if not env.strip():
        why = "is set but empty"
    else:
        asked = Path(env).expanduser()
        if found.source == asked:
            return
        why = next((p[len(f"{asked}: "):] for p in problems if p.startswith(f"{asked}: ")), "was not used")
        why = f"({asked}): {why}"
    print(f"softmax-bench: $FASHION_MNIST_DIR {why}; using the copy in {found.source} instead", file=sys.stderr)


_SHA256: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:  # 30 MB of gzip take ~0.1 s; a sweep that trains several times hashes once
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def describe(ds: FashionMNIST) -> dict[str, Any]:
    """Which copy of Fashion-MNIST `ds` is, for run.json: the folder, each of the four files as stored (name and
    sha256, gzipped or not), and how many images each split holds (a test may train on a subset)."""
    files = find_files(Path(ds.source)) or {}
    return {"folder": str(Path(ds.source).resolve()),
            "files": {name: {"file": path.name, "sha256": _sha256(path)} for name, path in files.items()},
            "train_images": int(ds.train_images.shape[0]), "test_images": int(ds.test_images.shape[0])}


def record(run: Run, ds: FashionMNIST) -> None:
    """Write :func:`describe` into the run's run.json under "dataset". A resumed run that trains on another
    copy keeps the earlier description under "earlier_datasets": both copies trained rows of this run."""
    desc = describe(ds)
    previous = run.info.get("dataset")
    if previous and previous != desc:
        run.info.setdefault("earlier_datasets", []).append(previous)
    run.info["dataset"] = desc
    run.save_info()


def load(search: list[Path] | None = None, download: bool = True, cache_dir: Path | None = CACHE_DIR,
         quiet: bool = False) -> FashionMNIST:
    """Fashion-MNIST from the first valid location (see the module docstring), cached after the first load.

    `search` replaces the default folders, `download=False` skips torchvision's download, `cache_dir=None`
    disables the cache. Raises UserError (one paragraph) when no valid copy is found.
    """
    folders = search_dirs() if search is None else [Path(p) for p in search]
    problems: list[str] = []

    def attempt(folder: Path) -> FashionMNIST | None:
        files = find_files(folder)
        if files is None:
            problems.append(f"{folder}: {_why_incomplete(folder)}")
            return None
        key = _cache_key(files)
        cache = cache_dir / CACHE_NAME if cache_dir is not None else None
        tensors = _read_cache(cache, key) if cache is not None else None
        if tensors is not None:
            return FashionMNIST(**tensors, source=folder, from_cache=True)
        try:
            tensors = read_folder(files)
        except DataError as exc:
            problems.append(f"{folder}: {exc}")
            if not quiet:
                print(f"softmax-bench: skipping {folder}: {exc}", file=sys.stderr)
            return None
        if cache is not None:
            _write_cache(cache, key, tensors)
        return FashionMNIST(**tensors, source=folder)

    for folder in folders:
        found = attempt(folder)
        if found is not None:
            if search is None and not quiet:
                _warn_if_env_passed_over(found, problems)
            return found
    if download:
        why = _download(DOWNLOAD_ROOT)
        if why is None:
            found = attempt(DOWNLOAD_ROOT / "FashionMNIST" / "raw")
            if found is not None:
                if search is None and not quiet:
                    _warn_if_env_passed_over(found, problems)
                return found
        else:
            problems.append(f"torchvision download into {DOWNLOAD_ROOT}/: {why}")
    else:
        problems.append("torchvision download: not attempted")
    raise UserError("Fashion-MNIST (the four IDX files, gzipped or not) was not found or is not valid. Searched: "
                    + "; ".join(problems) + ". " + HOW_TO_GET)


def main() -> int:
    start = time.perf_counter()
    try:
        ds = load()
    except UserError as exc:
        print(f"softmax-bench: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"Fashion-MNIST from {ds.source} ({'cache' if ds.from_cache else 'IDX files'}) in {seconds:.2f} s: "
          f"train {tuple(ds.train_images.shape)}, test {tuple(ds.test_images.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
