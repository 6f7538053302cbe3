"""Models: output and embed() shapes for every input size the papers use; they learn; seeds repeat."""

import pytest
import torch

from poisonbook import data, models, train

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]
EMBED = {  # (model, shape) -> embed() width
    ("convnet", (1, 28, 28)): 2048, ("convnet", (3, 32, 32)): 2048, ("convnet", (3, 64, 64)): 8192,
    ("lr", (1, 28, 28)): 784, ("mlp", (1, 28, 28)): 784, ("cnn", (1, 28, 28)): 128,
    ("resnet18", (3, 32, 32)): 512, ("resnet34", (3, 64, 64)): 512,
}


@pytest.mark.parametrize("name", list(models.MODELS))
@pytest.mark.parametrize("shape", SHAPES)
def test_output_and_embedding_shapes(name, shape):
    net = models.make(name, shape, num_classes=7)
    x = torch.rand(2, *shape)
    assert net(x).shape == (2, 7)
    feats = net.embed(x)
    assert feats.ndim == 2 and feats.shape[0] == 2
    if (name, shape) in EMBED:
        assert feats.shape[1] == EMBED[(name, shape)]


def test_convnet_is_the_reference_architecture():
    net = models.ConvNet(in_channels=1, im_size=28)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert [c.out_channels for c in convs] == [128] * 3 and convs[0].padding == (3, 3)
    assert all(n.num_groups == n.num_channels == 128 and n.affine for n in norms), "instance norm"
    assert sum(isinstance(m, torch.nn.AvgPool2d) for m in net.modules()) == 3


def test_mlp_defaults_to_the_paper_width_and_leaky_relu():
    net = models.MLP()
    assert net.hidden.out_features == 784 and net.act.negative_slope == 0.2
    assert models.MLP(hidden=128).hidden.out_features == 128


def test_unknown_model_and_non_square_images():
    with pytest.raises(ValueError, match="Unknown model"):
        models.make("vgg", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="square"):
        models.make("convnet", (1, 28, 32), 10)


def test_convnet_learns_real_digits_within_seconds():
    tr = data.balanced_subset(data.load("mnist5k", "train"), 60, seed=0)
    te = data.load("mnist5k", "test")
    torch.manual_seed(0)
    net = models.ConvNet(width=32)
    chance = train.evaluate(net, te.x, te.y)
    train.fit(net, tr.x, tr.y, epochs=6, lr=0.01, weight_decay=5e-4, batch_size=64)
    acc = train.evaluate(net, te.x, te.y)
    assert acc > 0.6 and acc > chance + 0.4, (chance, acc)


@pytest.mark.parametrize("name", ["convnet", "resnet18"])
def test_same_seed_same_weights(name):
    def build():
        train.seed_everything(5)
        return models.make(name, (3, 32, 32), 10)

    a, b = build(), build()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    train.seed_everything(6)
    c = models.make(name, (3, 32, 32), 10)
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))
