"""Datasets: offline loaders, readers of the real on-disk formats, splits, sampling, bad input."""

import gzip
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poisonbook import data

# name -> (image shape, number of classes, sizes of train, val, test)
OFFLINE = {
    "digits": ((1, 8, 8), 10, (1295, 143, 359)),
    "mnist5k": ((1, 28, 28), 10, (3600, 400, 1000)),
    "fashion-mnist": ((1, 28, 28), 10, (55000, 5000, 10000)),
    "fashion-mnist-rgb": ((3, 32, 32), 10, (55000, 5000, 10000)),
}


@pytest.mark.parametrize("name", list(OFFLINE))
def test_offline_dataset_shapes_ranges_classes_and_splits(name):
    shape, classes, sizes = OFFLINE[name]
    splits = {s: data.load(name, s) for s in data.SPLITS}
    for split, d in splits.items():
        assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64
        assert d.shape == shape and d.num_classes == classes
        assert 0.0 <= d.x.min() and d.x.max() <= 1.0 and d.x.max() > 0.5
        assert set(d.y.unique().tolist()) == set(range(classes))
        counts = d.counts()
        assert counts.min() >= 0.85 * counts.max(), f"{split} is not stratified: {counts}"
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == sizes
    assert len(splits["train"]) + len(splits["val"]) == len(splits["train+val"])


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_splits_are_disjoint_and_fixed(name):
    """digits / mnist5k have no official test set: the held-out parts must not share an image with train."""
    tr, va, te = (data.load(name, s) for s in ("train", "val", "test"))
    key = lambda d: {bytes(row) for row in (d.x.flatten(1) * 255).round().to(torch.uint8).numpy()}
    assert not key(tr) & key(te) or name == "digits"  # digits has exact duplicate images across the set
    assert torch.equal(data.load(name, "test").x, te.x), "a split must be the same on every call"
    assert len(key(va) & key(te)) <= 2


def test_colour_stand_in_does_not_carry_the_label():
    """A classifier that sees only the colours of the stand-in is at chance level."""
    from sklearn.linear_model import LogisticRegression

    d = data.load("fashion-mnist-rgb", "test")
    flat = d.x.flatten(2)
    fg = flat[torch.arange(len(flat)), :, flat.sum(1).argmax(1)]
    bg = d.x[:, :, 0, 0]
    feats = torch.cat([fg / fg.sum(1, keepdim=True), bg / bg.sum(1, keepdim=True).clamp_min(1e-6)], 1).numpy()
    clf = LogisticRegression(max_iter=2000).fit(feats[:5000], d.y[:5000].numpy())
    assert clf.score(feats[5000:], d.y[5000:].numpy()) < 0.13
    grey = data.load("fashion-mnist", "test")
    # the garment itself is still there: the grey image is recoverable up to its colour
    assert torch.corrcoef(torch.stack([d.x[:, :, 2:30, 2:30].mean(1).flatten(), grey.x[:, 0].flatten()]))[0, 1] > 0.5
    assert grey.y.equal(d.y), "the stand-in keeps Fashion-MNIST's labels and order"


def test_colourise_is_seeded_and_label_free():
    x = torch.rand(20, 1, 28, 28)
    a, b = data.colourise(x, seed=3), data.colourise(x, seed=3)
    assert a.shape == (20, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, data.colourise(x, seed=4))


# --------------------------------------------------------------------------- real on-disk formats


def _write_idx(path, array, gz):
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    (gzip.open if gz else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files(data_root, gz):
    raw = data_root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 120), ("t10k", 30)):
        x = rng.integers(0, 256, (n, 28, 28))
        x[:, 0, 0] = 255  # every image has a full-intensity pixel
        sfx = ".gz" if gz else ""
        _write_idx(raw / f"{prefix}-images-idx3-ubyte{sfx}", x, gz)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte{sfx}", np.arange(n) % 10, gz)
    test = data.load("mnist", "test")
    assert test.x.shape == (30, 1, 28, 28) and test.x[:, 0, 0, 0].eq(1.0).all()
    assert test.y.tolist() == [i % 10 for i in range(30)]
    assert len(data.load("mnist", "train+val")) == 120
    assert len(data.load("mnist", "train")) + len(data.load("mnist", "val")) == 120


def test_idx_reader_rejects_truncated_files(tmp_path):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + np.array([5, 28, 28], dtype=">i4").tobytes() + b"\0" * 100)
    with pytest.raises(ValueError, match="header says"):
        data.read_idx(path)


def _cifar_batch(n, rng, key):
    return {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), key: list(rng.integers(0, 10, n))}


def test_cifar10_reads_python_pickles(data_root):
    folder = data_root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": _cifar_batch(20, rng, b"labels") for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(10, rng, b"labels")
    batches["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    for name, obj in batches.items():
        pickle.dump(obj, open(folder / name, "wb"))
    test = data.load("cifar10", "test")
    assert test.x.shape == (10, 3, 32, 32) and test.classes[3] == "c3"
    # channel-first layout of the archive: the first 1024 values are the red plane
    red = batches["test_batch"][b"data"][0, :1024].reshape(32, 32) / 255.0
    assert np.allclose(test.x[0, 0].numpy(), red, atol=1e-6)
    assert len(data.load("cifar10", "train+val")) == 100


def test_cifar100_reads_fine_labels(data_root):
    folder = data_root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 50), ("test", 10)):
        batch = _cifar_batch(n, rng, b"fine_labels")
        batch[b"fine_labels"] = list(np.arange(n) % 100)
        batch[b"coarse_labels"] = [0] * n
        pickle.dump(batch, open(folder / name, "wb"))
    pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, open(folder / "meta", "wb"))
    test = data.load("cifar100", "test")
    assert test.num_classes == 100 and test.y.tolist() == list(range(10))


def test_tinyimagenet_reads_the_folder_layout(data_root):
    from PIL import Image

    root = data_root / "tiny-imagenet-200"
    wnids = ["n01", "n02", "n03"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for c, w in enumerate(wnids):
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(4):
            colour = (80 * c, 0, 0)
            Image.new("RGB", (64, 64), colour).save(root / "train" / w / "images" / f"{w}_{i}.JPEG", quality=95)
        Image.new("RGB", (64, 64), (80 * c, 0, 0)).save(root / "val" / "images" / f"val_{c}.JPEG", quality=95)
        lines.append(f"val_{c}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    test = data.load("tinyimagenet", "test")
    assert test.x.shape == (3, 3, 64, 64) and test.y.tolist() == [0, 1, 2]
    assert torch.allclose(test.x[:, 0].mean((1, 2)), torch.tensor([0.0, 80 / 255, 160 / 255]), atol=0.02)
    assert len(data.load("tinyimagenet", "train+val")) == 12


@pytest.mark.parametrize("name,hint", [("mnist", "MNIST"), ("cifar10", "cifar-10"), ("cifar100", "cifar-100"),
                                       ("tinyimagenet", "tiny-imagenet")])
def test_missing_dataset_names_itself_and_how_to_get_it(data_root, name, hint):
    with pytest.raises(data.DatasetNotAvailable) as err:
        data.load(name, "test")
    msg = str(err.value)
    assert repr(name) in msg and "download=True" in msg and hint in msg


def test_missing_fashion_mnist_says_how_to_install_it(data_root, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", data_root / "nowhere")
    with pytest.raises(data.DatasetNotAvailable, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion-mnist", "test")


@pytest.mark.parametrize("name,split,match", [("svhn", "train", "dataset must be one of"),
                                              ("mnist5k", "validation", "split must be one of")])
def test_unknown_dataset_or_split(name, split, match):
    with pytest.raises(ValueError, match=match):
        data.load(name, split)


# --------------------------------------------------------------------------- splits, subsets, sampling


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=10, max_size=200), st.floats(0.05, 0.5))
def test_stratified_split_partitions_and_keeps_class_shares(labels, fraction):
    y = np.array(labels)
    rest, held = data.stratified_split(y, fraction, seed=1)
    assert sorted(np.concatenate([rest, held]).tolist()) == list(range(len(y)))
    for c in np.unique(y):
        assert (y[held] == c).sum() == int(round(fraction * (y == c).sum()))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 400), st.integers(0, 10))
def test_subset_has_exact_size_and_balanced_classes(n, seed):
    full = data.load("mnist5k", "test")
    sub = data.subset(full, n, seed=seed)
    assert len(sub) == n and len(set(map(tuple, sub.x.flatten(1).tolist()[:5]))) == min(5, n)
    assert sub.counts().max() - sub.counts().min() <= 1, "mnist5k test is balanced, so is any stratified subset"


def test_balanced_subset_and_class_sampler():
    full = data.load("digits", "train")
    sub = data.balanced_subset(full, 7, seed=0)
    assert sub.counts().tolist() == [7] * 10
    sampler = data.ClassSampler(full.y)
    g = torch.Generator().manual_seed(0)
    idx = sampler.indices(5, g)
    assert full.y[idx].tolist() == sorted(list(range(10)) * 5)
    assert not torch.equal(idx, sampler.indices(5, g)), "successive draws differ"
    assert torch.equal(sampler.indices(5, torch.Generator().manual_seed(0)), idx), "seeded draws repeat"
    with pytest.raises(ValueError, match="fewer samples"):
        sampler.indices(10_000)


def test_bad_images_and_labels_raise():
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="one label per sample"):
        data.Data(x, torch.zeros(3, dtype=torch.long), ("a", "b"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        data.Data(x.clone().index_fill_(0, torch.tensor([1]), float("nan")), torch.zeros(4, dtype=torch.long), ("a",))
    with pytest.raises(ValueError, match=r"class indices in \[0, 1\]"):
        data.Data(x, torch.tensor([0, 1, 2, 0]), ("a", "b"))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        data.check_images(torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="subset size n"):
        data.subset(data.load("digits", "test"), 0)
