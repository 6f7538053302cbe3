"""Issue 10, "nothing stale, nothing silent": every bad input of the library stops with a library error.

One table: (call, expected error type, a word the message must contain). ``BadInput`` (a
``ValueError``) for bad arguments, ``CorruptFile`` (a ``ValueError``) for unreadable cache,
checkpoint and record files, ``FloatingPointError`` naming the iteration for diverging loops,
``DatasetNotAvailable`` for missing or broken datasets. Each call builds its own tiny input.
Below the table: the stale-key cases (a checkpoint or cache entry from other data, settings or
code is never returned) and the inputs that must now work (epochs=0 with a cosine schedule,
float64 images, int32 labels, n_grid=2).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import tempfile
import urllib.error
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from poisonbook import cache, checks, condense, data, models, profiles, results, theory, train
from poisonbook import augment as aug
from poisonbook.cache import CheckpointMismatch, CorruptFile
from poisonbook.checks import BadInput
from poisonbook.data import DatasetNotAvailable
from poisonbook.defend import influence_removal, maxup_fit, sever
from poisonbook.poison import gradient_canceling, gradient_matching, grad_pc, margin_loss_fn, retrain, tgda

LOGISTIC = margin_loss_fn("logistic")
TMP = Path(tempfile.mkdtemp(prefix="poisonbook-bad-input-"))


# ----------------------------------------------------------------------------- tiny inputs


def imgs(n=8, c=1, s=8, seed=0):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed))


def labs(n=8, k=2):
    return torch.arange(n) % k


def lr_net(k=2, s=8):
    torch.manual_seed(0)
    return models.LogisticRegression(1, k, s)


def nan_net(k=2):
    net = lr_net(k)
    with torch.no_grad():
        next(net.parameters())[0, 0] = math.nan
    return net


def or_data():
    g = torch.Generator().manual_seed(0)
    P = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    X = P.repeat_interleave(5, 0) + 0.05 * torch.randn(20, 2, generator=g, dtype=torch.float64)
    return X, torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64).repeat_interleave(5)


def lin1():
    m = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        m.weight.fill_(-0.5)
    return m


def file_with(name: str, content: bytes | object) -> Path:
    path = TMP / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return path


def fit(model=None, x=None, y=None, **kw):
    kw = {"epochs": 1, "lr": 0.1, "batch_size": 4, **kw}
    return train.fit(model or lr_net(), imgs() if x is None else x, labs() if y is None else y, **kw)


def gc(model=None, X=None, y=None, loss=LOGISTIC, **kw):
    Xo, yo = or_data()
    return gradient_canceling(model or lin1(), loss, Xo if X is None else X, yo if y is None else y, 0.5,
                              **{"epochs": 2, "lr": 1.0, **kw})


def tg(model=None, X=None, y=None, **kw):
    net = model or lr_net()
    x = imgs(8) if X is None else X
    return tgda(net, x, labs() if y is None else y, imgs(4, seed=1), labs(4), 0.25, **{"epochs": 2, **kw})


def rt(y=None, **kw):
    return retrain(lambda: lr_net(), imgs(), labs() if y is None else y, imgs(2, seed=1), labs(2),
                   imgs(4, seed=2), labs(4), **{"epochs": 2, "lr": 0.1, **kw})


def record(**kw):
    args = dict(profile="cpu", chapter="c", experiment="e", config={}, metrics={"acc": 1.0}, seeds=0,
                wall_time=1.0, root=TMP / "results")
    args.update(kw)
    extra = args.pop("extra", {})
    return results.save_record(**args, **extra)


def offline_root(setup):
    """Call ``data.load`` with a fresh data root prepared by ``setup(root)`` and no Debian Fashion-MNIST."""
    def call(name, split="test", download=False, patch=None):
        root = Path(tempfile.mkdtemp(dir=TMP))
        setup(root)
        with mock.patch.dict(os.environ, {"POISONBOOK_DATA": str(root)}), \
                mock.patch.object(data, "DEBIAN_FASHION_MNIST", root / "nowhere"):
            if patch is None:
                return data.load(name, split, download=download)
            with mock.patch(patch, side_effect=urllib.error.URLError("[Errno -3] no network")):
                return data.load(name, split, download=download)
    return call


def _cifar_empty(root):
    (root / "cifar-10-batches-py").mkdir()


def _cifar_truncated(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": list(range(1000))})[:40])


def _tiny_empty(root):
    (root / "tiny-imagenet-200").mkdir()


def _nothing(root):
    pass


def ckpt_load(path):
    return cache.Checkpoint(path, {"a": 1}).load()


# ----------------------------------------------------------------------------- the table

CASES = [
    # cache and checkpoint files (CorruptFile names the file and the fix)
    ("checkpoint: empty file", lambda: ckpt_load(file_with("empty.pt", b"")), CorruptFile, "delete"),
    ("checkpoint: garbage bytes", lambda: ckpt_load(file_with("garbage.pt", b"\x80\x02garbage")), CorruptFile,
     "garbage.pt"),
    ("checkpoint: not a dict", lambda: ckpt_load(file_with("list.pt", [1, 2])), CorruptFile, "not a checkpoint"),
    ("checkpoint: dict without state", lambda: ckpt_load(file_with("nokey.pt", {"a": 1})), CorruptFile, "key/state"),
    ("cached: empty file", lambda: cache.cached("thing", {}, lambda: 1, root=_empty_cache_root()), CorruptFile,
     "refresh=True"),
    ("Checkpoint every=0", lambda: cache.Checkpoint(TMP / "x.pt", every=0), BadInput, "every"),
    # run records
    ("load_record: truncated JSON", lambda: results.load_record(file_with("rec.json", b'{"schema": 1, "me')),
     CorruptFile, "rec.json"),
    ("load_record: not a dict", lambda: results.load_record(file_with("list.json", b"[1, 2]")), CorruptFile,
     "not a run record"),
    ("save_record: chapter with ..", lambda: record(chapter="a..b"), BadInput, "plain name"),
    ("save_record: experiment ../x", lambda: record(experiment="../x"), BadInput, "plain name"),
    ("save_record: backslash", lambda: record(experiment="..\\x"), BadInput, "plain name"),
    ("save_record: profile ''", lambda: record(profile=""), BadInput, "profile"),
    ("save_record: profile 'gpu'", lambda: record(profile="gpu"), BadInput, "profile"),
    ("save_record: profile '../..'", lambda: record(profile="../.."), BadInput, "profile"),
    ("save_record: extra git_commit", lambda: record(extra={"git_commit": "x"}), BadInput, "overwrite"),
    ("save_record: extra library_version", lambda: record(extra={"library_version": "9"}), BadInput, "overwrite"),
    ("save_record: extra schema", lambda: record(extra={"schema": 2}), BadInput, "overwrite"),
    ("save_record: seeds='12'", lambda: record(seeds="12"), BadInput, "seeds"),
    ("save_record: seeds=[1.5]", lambda: record(seeds=[1.5]), BadInput, "seeds"),
    ("save_record: wall_time nan", lambda: record(wall_time=math.nan), BadInput, "wall_time"),
    ("save_record: wall_time -1", lambda: record(wall_time=-1.0), BadInput, "wall_time"),
    ("save_record: no metrics", lambda: record(metrics={}), BadInput, "metric"),
    ("profiles.get: unknown profile", lambda: profiles.get("tour", "gpu"), ValueError, "Unknown profile"),
    # data
    ("Data: label >= classes", lambda: data.Data(imgs(4), torch.tensor([0, 1, 2, 0]), ("a", "b")), BadInput,
     "class indices"),
    ("Data: negative label", lambda: data.Data(imgs(4), torch.tensor([0, -1, 1, 0]), ("a", "b")), BadInput,
     "class indices"),
    ("Data: float labels", lambda: data.Data(imgs(4), torch.zeros(4), ("a",)), BadInput, "integer"),
    ("Data: wrong length", lambda: data.Data(imgs(4), torch.zeros(3, dtype=torch.long), ("a",)), BadInput,
     "one label per sample"),
    ("Data: [0, 255] images", lambda: data.Data(imgs(4) * 255, labs(4), ("a", "b")), BadInput, "255"),
    ("Data: NaN image", lambda: data.Data(imgs(4) / 0 * 0, labs(4), ("a", "b")), BadInput, "NaN"),
    ("Data: uint8 images", lambda: data.Data(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), labs(4), ("a", "b")),
     BadInput, "floating"),
    ("balanced_subset(d, -1)", lambda: data.balanced_subset(data.Data(imgs(4), labs(4), ("a", "b")), -1), BadInput,
     "per_class"),
    ("ClassSampler.indices(-2)", lambda: data.ClassSampler(labs(4)).indices(-2), BadInput, "n (samples"),
    ("ClassSampler: negative labels", lambda: data.ClassSampler(torch.tensor([0, 1, -1])), BadInput,
     "class indices"),
    ("ClassSampler: no labels", lambda: data.ClassSampler(torch.zeros(0, dtype=torch.long)), BadInput,
     "at least one"),
    ("colourise: (N, H, W) with N=3", lambda: data.colourise(torch.rand(3, 28, 28)), BadInput, "(N, C, H, W)"),
    ("colourise: 3 channels", lambda: data.colourise(torch.rand(2, 3, 28, 28)), BadInput, "channel"),
    ("subset n=0", lambda: data.subset(data.Data(imgs(4), labs(4), ("a", "b")), 0), BadInput, "subset size"),
    ("subset n=2.5", lambda: data.subset(data.Data(imgs(4), labs(4), ("a", "b")), 2.5), BadInput, "integer"),
    ("load: unknown dataset", lambda: data.load("svhn"), BadInput, "dataset"),
    ("load: unknown split", lambda: data.load("digits", "validation"), BadInput, "split"),
    ("load: empty cifar-10 folder", lambda: offline_root(_cifar_empty)("cifar10"), DatasetNotAvailable,
     "test_batch"),
    ("load: truncated cifar pickle", lambda: offline_root(_cifar_truncated)("cifar10"), DatasetNotAvailable,
     "truncated"),
    ("load: empty tiny-imagenet folder", lambda: offline_root(_tiny_empty)("tinyimagenet"), DatasetNotAvailable,
     "wnids.txt"),
    ("load: download=True offline", lambda: offline_root(_nothing)("mnist", download=True,
                                                                  patch="torchvision.datasets.MNIST"),
     DatasetNotAvailable, "offline"),
    ("load: fashion-mnist-rgb missing names itself", lambda: offline_root(_nothing)("fashion-mnist-rgb"),
     DatasetNotAvailable, "'fashion-mnist-rgb'"),
    # train
    ("fit: label >= classes", lambda: fit(y=labs() + 1), BadInput, "class indices"),
    ("fit: negative label", lambda: fit(y=labs() - 1), BadInput, "class indices"),
    ("fit: float labels", lambda: fit(y=labs().float()), BadInput, "integer"),
    ("fit: wrong length", lambda: fit(y=labs(7)), BadInput, "one label per sample"),
    ("fit: empty data", lambda: fit(x=imgs(0), y=labs(0)), BadInput, "at least 1"),
    ("fit: lr nan", lambda: fit(lr=math.nan), BadInput, "lr"),
    ("fit: lr inf", lambda: fit(lr=math.inf), BadInput, "lr"),
    ("fit: epochs -1", lambda: fit(epochs=-1), BadInput, "epochs"),
    ("fit: epochs 1.5", lambda: fit(epochs=1.5), BadInput, "epochs"),
    ("fit: unknown schedule", lambda: fit(schedule="linear"), BadInput, "schedule"),
    ("fit: lr huge diverges", lambda: fit(model=models.MLP(1, 2, 8), lr=1e30, epochs=3), FloatingPointError,
     "iteration"),
    ("fit: NaN weight", lambda: fit(model=nan_net()), FloatingPointError, "iteration"),
    ("predict: empty", lambda: train.predict(lr_net(), imgs(0)), BadInput, "at least 1"),
    ("evaluate: empty", lambda: train.evaluate(lr_net(), imgs(0), labs(0)), BadInput, "at least 1"),
    ("evaluate: label >= classes", lambda: train.evaluate(lr_net(), imgs(), labs() + 5), BadInput,
     "class indices"),
    ("seed_everything(-1)", lambda: train.seed_everything(-1), BadInput, "seed"),
    # condense
    ("dm: label >= num_classes", lambda: condense.dm(imgs(), labs() * 2, 1, iterations=1, num_classes=2,
                                                     width=4, depth=1), BadInput, "class indices"),
    ("dm: float labels", lambda: condense.dm(imgs(), labs().float(), 1, iterations=1, width=4, depth=1), BadInput,
     "integer"),
    ("dm: ipc 0", lambda: condense.dm(imgs(), labs(), 0, iterations=1, width=4, depth=1), BadInput, "ipc"),
    ("dm: momentum 1.5", lambda: condense.dm(imgs(), labs(), 1, iterations=1, momentum=1.5, width=4, depth=1),
     BadInput, "momentum"),
    ("dm: lr nan", lambda: condense.dm(imgs(), labs(), 1, iterations=1, lr=math.nan, width=4, depth=1), BadInput,
     "lr"),
    ("dm: diverges", lambda: condense.dm(imgs(), labs(), 1, iterations=5, lr=1e38, init="noise", strategy=None,
                                         width=4, depth=1), FloatingPointError, "iteration"),
    ("dc: outer_loop 0", lambda: condense.dc(imgs(), labs(), 1, iterations=1, loops=(0, 1), width=4, depth=1),
     BadInput, "outer_loop"),
    ("evaluate_synthetic: empty synthetic set", lambda: condense.evaluate_synthetic(
        imgs(0), labs(0), imgs(), labs(), num_models=1, epochs=1), BadInput, "at least 1"),
    ("evaluate_synthetic: float labels", lambda: condense.evaluate_synthetic(
        imgs(2), labs(2).float(), imgs(), labs(), num_models=1, epochs=1), BadInput, "integer"),
    ("evaluate_synthetic: test label >= num_classes", lambda: condense.evaluate_synthetic(
        imgs(2), labs(2), imgs(), labs() + 1, num_models=1, epochs=1, num_classes=2), BadInput, "class indices"),
    ("evaluate_synthetic: wrong-length labels", lambda: condense.evaluate_synthetic(
        imgs(2), labs(3), imgs(), labs(), num_models=1, epochs=1), BadInput, "one label per sample"),
    ("random_subset: empty", lambda: condense.random_subset(imgs(0), labs(0), 1), BadInput, "at least 1"),
    ("random_subset: negative labels", lambda: condense.random_subset(imgs(), labs() - 1, 1), BadInput,
     "class indices"),
    ("dm_loss: NaN", lambda: condense.dm_loss(torch.full((2, 3, 4), math.nan), torch.zeros(2, 1, 4)), BadInput,
     "NaN"),
    ("match_distance: NaN", lambda: condense.match_distance([torch.full((2, 2), math.nan)], [torch.ones(2, 2)]),
     BadInput, "NaN"),
    ("channel_stats: one 1x1 image", lambda: condense.channel_stats(torch.rand(1, 1, 1, 1)), BadInput, "2 pixel"),
    # poison
    ("GC: {0,1} labels, one-logit margin loss", lambda: gc(y=(or_data()[1] > 0).double()), BadInput, "-1 or +1"),
    ("GC: label >= classes", lambda: gc(lr_net(), imgs(), labs() + 1, F.cross_entropy), BadInput, "class indices"),
    ("GC: float labels, 2 logits", lambda: gc(lr_net(), imgs(), labs().float(), F.cross_entropy), BadInput,
     "integer"),
    ("GC: wrong-length labels", lambda: gc(lr_net(), imgs(), labs(7), F.cross_entropy), BadInput,
     "one label per sample"),
    ("GC: empty data", lambda: gc(X=torch.zeros(0, 2, dtype=torch.float64), y=torch.zeros(0)), BadInput,
     "at least 1"),
    ("GC: lr nan", lambda: gc(lr=math.nan), BadInput, "lr"),
    ("GC: lr inf", lambda: gc(lr=math.inf), BadInput, "lr"),
    ("GC: lr huge diverges", lambda: gc(lr_net(), imgs(), labs(), F.cross_entropy, lr=1e300, epochs=5),
     FloatingPointError, "iteration"),
    ("GC: NaN weight", lambda: gc(nan_net(), imgs(), labs(), F.cross_entropy), FloatingPointError, "iteration"),
    ("grad_pc: label >= classes", lambda: grad_pc(lr_net(), F.cross_entropy, imgs(), labs() + 1, 0.1), BadInput,
     "class indices"),
    ("grad_pc: wrong-length labels", lambda: grad_pc(lr_net(), F.cross_entropy, imgs(), labs(7), 0.1), BadInput,
     "one label per sample"),
    ("tgda: label >= classes", lambda: tg(y=labs() + 1), BadInput, "class indices"),
    ("tgda: [0, 255] data", lambda: tg(X=imgs() * 255), BadInput, "255"),
    ("tgda: leader_lr nan", lambda: tg(leader_lr=math.nan), BadInput, "leader_lr"),
    ("tgda: NaN weight", lambda: tg(model=nan_net()), FloatingPointError, "iteration"),
    ("tgda: follower_lr huge diverges", lambda: tg(follower_lr=1e300, epochs=4), FloatingPointError, "iteration"),
    ("retrain: label >= classes", lambda: rt(y=labs() + 1), BadInput, "class indices"),
    ("retrain: lr nan", lambda: rt(lr=math.nan), BadInput, "lr"),
    ("retrain: lr huge diverges", lambda: rt(lr=1e38, epochs=4), FloatingPointError, "iteration"),
    ("gradient_matching: [0, 255] data", lambda: gradient_matching(lr_net(), imgs() * 255, labs(), 0.25, steps=1),
     BadInput, "255"),
    ("gradient_matching: label >= classes", lambda: gradient_matching(lr_net(), imgs(), labs() + 1, 0.25, steps=1),
     BadInput, "class indices"),
    ("gradient_matching: eps_x 8 (not 8/255)", lambda: gradient_matching(lr_net(), imgs(), labs(), 0.25, eps_x=8),
     BadInput, "8/255"),
    # defend
    ("sever: label >= classes", lambda: sever(lr_net(), F.cross_entropy, imgs(), labs() + 1, 0.1), BadInput,
     "class indices"),
    ("sever: float labels", lambda: sever(lr_net(), F.cross_entropy, imgs(), labs().float(), 0.1), BadInput,
     "integer"),
    ("influence_removal: label >= classes", lambda: influence_removal(lr_net(), F.cross_entropy, imgs(),
                                                                      labs() + 1, 0.1), BadInput, "class indices"),
    ("influence_removal: remove_frac 1", lambda: influence_removal(lr_net(), F.cross_entropy, imgs(), labs(), 1.0),
     BadInput, "remove_frac"),
    ("maxup_fit: [0, 255] data", lambda: maxup_fit(lr_net(), imgs() * 255, labs(), loss_fn=F.cross_entropy,
                                                   epochs=1, lr=0.1), BadInput, "255"),
    ("maxup_fit: label >= classes", lambda: maxup_fit(lr_net(), imgs(), labs() + 1, loss_fn=F.cross_entropy,
                                                      epochs=1, lr=0.1), BadInput, "class indices"),
    ("maxup_fit: NaN weight", lambda: maxup_fit(nan_net(), imgs(), labs(), loss_fn=F.cross_entropy, epochs=1,
                                                lr=0.1), FloatingPointError, "iteration"),
    # theory
    ("threshold_from_inner(nan)", lambda: theory.threshold_from_inner(math.nan, -0.28, math.inf), BadInput,
     "finite"),
    ("threshold_from_inner(a=nan)", lambda: theory.threshold_from_inner(0.1, math.nan, math.inf), BadInput,
     "a (lower end"),
    ("threshold_from_inner(a > b)", lambda: theory.threshold_from_inner(0.1, 1.0, -1.0), BadInput, "a <= b"),
    ("lambda_threshold(nan)", lambda: theory.lambda_threshold(math.nan, -0.28, math.inf), BadInput, "finite"),
    ("interval_endpoints n_grid=1", lambda: theory.interval_endpoints("logistic", margin_range=(-1, 1), n_grid=1),
     BadInput, "n_grid"),
    ("numeric_interval n_grid=1", lambda: theory.numeric_interval(lambda t: t, -1.0, 1.0, n_grid=1), BadInput,
     "n_grid"),
    ("numeric_interval lo > hi", lambda: theory.numeric_interval(lambda t: t, 1.0, -1.0), BadInput, "hi"),
    ("threshold_from_logits: empty", lambda: theory.threshold_from_logits(torch.zeros(0, 3), torch.zeros(0)),
     BadInput, "n >= 1"),
    ("threshold_from_margins: NaN", lambda: theory.threshold_from_margins([0.5, math.nan]), BadInput,
     "non-finite"),
    ("check_eps_d('1')", lambda: theory.check_eps_d("1"), BadInput, "eps_d"),
    # augment
    ("augment: uint8 images", lambda: aug.augment(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "flip",
                                                  torch.Generator()), BadInput, "floating"),
]


@pytest.fixture(scope="module", autouse=True)
def _remove_scratch_folder():
    yield
    shutil.rmtree(TMP, ignore_errors=True)


def _empty_cache_root() -> Path:
    root = Path(tempfile.mkdtemp(dir=TMP))
    (root / f"thing-{cache.config_hash({})}.pt").write_bytes(b"")
    return root


@pytest.mark.parametrize("call, error, word", [pytest.param(c, e, w, id=i) for i, c, e, w in CASES])
def test_bad_input_stops_with_a_library_error(call, error, word):
    with pytest.raises(error) as info:
        call()
    assert word in str(info.value), f"message lacks {word!r}: {info.value}"
    assert issubclass(error, (BadInput, CorruptFile, FloatingPointError, DatasetNotAvailable)) \
        or error is ValueError  # profiles' own ValueError for unknown names


def test_the_table_covers_every_group():
    assert len(CASES) >= 100
    assert len({i for i, *_ in CASES}) == len(CASES), "case names are unique"


# ----------------------------------------------------------------------------- stale keys


def test_config_hash_is_exact_for_tensors_arrays_and_key_types():
    a = torch.arange(5000.0)
    b = a.clone()
    b[2500] = -1.0
    assert cache.config_hash({"x": a}) != cache.config_hash({"x": b}), "repr abbreviates; bytes do not"
    assert cache.config_hash({"x": a.numpy()}) != cache.config_hash({"x": b.numpy()})
    assert cache.config_hash({"x": a}) != cache.config_hash({"x": a.double()}), "dtype is part of the key"
    assert cache.config_hash({"x": a}) != cache.config_hash({"x": a.view(50, 100)}), "shape is part of the key"
    assert cache.config_hash({1: "a"}) != cache.config_hash({"1": "a"})
    assert cache.config_hash({"x": a}) == cache.config_hash({"x": a.clone()})


def test_the_key_includes_the_library_source(monkeypatch):
    before = cache.config_hash({"n": 1})
    monkeypatch.setattr(cache, "_SOURCE_HASH", {None: "0" * 64})
    assert cache.config_hash({"n": 1}) != before


def test_fit_never_resumes_a_checkpoint_of_other_data(tmp_path):
    x, y = imgs(16), labs(16)
    ckpt = tmp_path / "fit.pt"
    train.fit(lr_net(), x, y, epochs=1, lr=0.1, checkpoint=ckpt)
    order = torch.cat([torch.nonzero(y == c).flatten().flip(0) for c in (0, 1)])  # reorder within each class
    x2, y2 = torch.cat([x[y == 0].flip(0), x[y == 1].flip(0)]), y[order].sort().values
    assert x2.sum() == pytest.approx(x.sum()) and len(x2) == len(x)  # the old key could not tell them apart
    for xb, yb in ((x2, y2), (imgs(16, seed=5), y)):
        with pytest.raises(CheckpointMismatch, match="another configuration"):
            train.fit(lr_net(), xb, yb, epochs=1, lr=0.1, checkpoint=ckpt)
    train.fit(lr_net(), x, y, epochs=1, lr=0.1, checkpoint=ckpt)  # the same data resumes (finished: returns)


def test_dm_never_resumes_a_checkpoint_of_reordered_images(tmp_path):
    x, y = imgs(8), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    kw = dict(iterations=2, width=4, depth=1, strategy=None, checkpoint=tmp_path / "dm.pt")
    condense.dm(x, y, 1, **kw)
    x2 = torch.cat([x[:4].flip(0), x[4:]])  # same n, shape, sum and label sum
    with pytest.raises(CheckpointMismatch):
        condense.dm(x2, y, 1, **kw)


def test_stale_temporary_files_are_removed_on_the_next_write(tmp_path):
    path = tmp_path / "r.json"
    dead = tmp_path / ".r.json.999999999.abc.tmp"  # a writer pid that does not exist
    dead.write_text("{half")
    cache.atomic_write_text(path, "{}")
    assert not dead.exists() and path.read_text() == "{}"
    assert (path.stat().st_mode & 0o777) == 0o644


# ----------------------------------------------------------------------------- inputs that must work


def test_epochs_zero_and_cosine_trains_nothing():
    net = lr_net()
    before = [p.clone() for p in net.parameters()]
    hist = train.fit(net, imgs(), labs(), epochs=0, lr=0.1, schedule="cosine")
    assert hist["loss"] == [] and all(torch.equal(p, q) for p, q in zip(before, net.parameters()))


def test_float64_images_and_int32_labels_are_converted():
    x, y = imgs(16).double(), labs(16).int()
    hist = train.fit(lr_net(), x, y, epochs=3, lr=0.5)
    assert hist["loss"][-1] < hist["loss"][0]
    d = data.Data(x, y, ("a", "b"))
    assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64


def test_interval_endpoints_with_two_grid_points_is_correct():
    a, b = theory.interval_endpoints("logistic", margin_range=(-1, 1), n_grid=2)
    assert a == pytest.approx(-1 / (1 + math.e), abs=1e-6) and b == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-6)


def test_profiles_get_returns_copies():
    cfg = profiles.get("poisonability-or", "ci")
    cfg.targets.append((9.0, 9.0))
    assert (9.0, 9.0) not in profiles.get("poisonability-or", "ci").targets


def test_records_are_strict_json_with_mode_0644(tmp_path):
    path = results.save_record("cpu", "c", "e", config={}, metrics={"x": math.nan}, seeds=[1, 2], wall_time=0.5,
                               root=tmp_path)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in a record"))
    assert (path.stat().st_mode & 0o777) == 0o644 and results.load_record(path)["seeds"] == [1, 2]


def test_model_labels_accepts_signed_targets_for_one_logit_models():
    X, y = or_data()
    assert torch.equal(checks.model_labels(lin1(), X, y, margin=True), y)


def test_condensation_accepts_float64_images():
    x, y = imgs(8).double(), labs(8).int()
    out = condense.dm(x, y, 1, iterations=1, width=4, depth=1, strategy=None)
    assert out.x.dtype == torch.float32 and torch.isfinite(out.x).all()
