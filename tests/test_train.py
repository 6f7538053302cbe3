"""The training loop: it learns, it repeats under a seed, it resumes exactly, it rejects bad input."""

import pytest
import torch

from poisonbook import data, models, train
from poisonbook.cache import Checkpoint, CheckpointMismatch

RECIPE = dict(epochs=4, lr=0.05, batch_size=64, schedule="step", weight_decay=5e-4, seed=3)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train"), data.load("digits", "test")


def _model():
    train.seed_everything(0)
    return models.ConvNet(im_size=8, width=16, depth=2)


def _weights(m):
    return [t.clone() for t in m.state_dict().values()]


def test_fit_lowers_the_loss_and_beats_chance(digits):
    tr, te = digits
    m = _model()
    hist = train.fit(m, tr.x, tr.y, **RECIPE)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert train.evaluate(m, te.x, te.y) > 0.8
    assert not m.training, "fit leaves the model in eval mode"


def test_same_seed_same_run_different_seed_different_run(digits):
    tr, _ = digits
    a, b, c = _model(), _model(), _model()
    train.fit(a, tr.x, tr.y, **RECIPE)
    train.fit(b, tr.x, tr.y, **RECIPE)
    train.fit(c, tr.x, tr.y, **{**RECIPE, "seed": 4})
    assert all(torch.equal(p, q) for p, q in zip(_weights(a), _weights(b)))
    assert not all(torch.equal(p, q) for p, q in zip(_weights(a), _weights(c)))


def test_augmentation_draws_from_the_run_generator_and_resume_is_exact(digits, tmp_path):
    """A run killed after epoch 2 and resumed equals the uninterrupted run, augmentation included."""
    tr, _ = digits
    noise = lambda x, g: x + 0.05 * torch.randn(x.shape, generator=g)
    full = _model()
    full_hist = train.fit(full, tr.x, tr.y, augment=noise, **RECIPE)

    class Killed(Exception):
        pass

    def kill(epoch, model, history):
        if epoch == 1:
            raise Killed

    ckpt = tmp_path / "run.pt"
    with pytest.raises(Killed):
        train.fit(_model(), tr.x, tr.y, augment=noise, checkpoint=ckpt, callback=kill, **RECIPE)
    resumed = models.ConvNet(im_size=8, width=16, depth=2)  # other initial weights: the checkpoint must win
    hist = train.fit(resumed, tr.x, tr.y, augment=noise, checkpoint=ckpt, **RECIPE)
    assert hist["loss"] == full_hist["loss"]
    assert all(torch.equal(p, q) for p, q in zip(_weights(full), _weights(resumed)))


def test_checkpoint_of_another_configuration_is_refused(digits, tmp_path):
    tr, _ = digits
    ckpt = tmp_path / "run.pt"
    train.fit(_model(), tr.x, tr.y, checkpoint=ckpt, **{**RECIPE, "epochs": 1})
    with pytest.raises(CheckpointMismatch, match="another configuration"):
        train.fit(_model(), tr.x, tr.y, checkpoint=ckpt, **{**RECIPE, "epochs": 1, "lr": 0.1})


def test_checkpoint_every_k_steps():
    ck = Checkpoint("unused.pt", every=3)
    assert [s for s in range(10) if ck.due(s, 9)] == [2, 5, 8, 9]
    with pytest.raises(ValueError, match="every"):
        Checkpoint("unused.pt", every=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(optimizer="rmsprop"), "optimizer must be one of"),
    (dict(schedule="linear"), "schedule must be one of"),
    (dict(lr=0.0), "lr must lie in"),
])
def test_bad_settings_raise(digits, kwargs, match):
    tr, _ = digits
    with pytest.raises(ValueError, match=match):
        train.fit(_model(), tr.x[:8], tr.y[:8], **{**RECIPE, "epochs": 1, **kwargs})


def test_bad_data_raises():
    m = _model()
    x = torch.rand(8, 1, 8, 8)
    with pytest.raises(ValueError, match="one label per sample"):
        train.fit(m, x, torch.zeros(7, dtype=torch.long), epochs=1, lr=0.1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        train.evaluate(m, x / 0 * 0, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="floating point"):
        train.predict(m, (x * 255).to(torch.uint8))


def test_seed_and_device_validation():
    with pytest.raises(ValueError, match="seed"):
        train.seed_everything(-1)
    assert train.choose_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            train.choose_device("cuda")
