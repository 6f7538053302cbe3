"""The networks the four papers use, for 28x28x1, 32x32x3 and 64x64x3 inputs.

* :class:`ConvNet`: the dataset-condensation ConvNet (Zhao et al. 2021, DC; used by
  DSA, DM, RDM-DC and GUARD): width 128, depth 3, conv3x3 -> instance norm -> ReLU
  -> avg-pool 2 per block; ``embed()`` returns the flattened features DM matches.
* :class:`LogisticRegression`, :class:`MLP`, :class:`SmallCNN`: the LR, NN and CNN of
  Lu, Kamath & Yu (2023), appendix C.1.
* :func:`resnet18`, :func:`resnet34`: CIFAR-style ResNets (He et al. 2016 with a 3x3
  stem and no max-pool), used by the poisonability and D-VAE papers.
* :class:`RateVAE`, :class:`DVAE`: the rate-constrained VAE and the D-VAE of Yu et al. (2024),
  Sec. 3.2/3.4 (trained by :mod:`poisonbook.defend.vae`).

Every model takes ``in_channels``, ``num_classes`` and ``im_size`` so one
constructor call works for any of the three input shapes; :func:`make` builds
one by name for a dataset's image shape.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ConvNet", "LogisticRegression", "MLP", "SmallCNN", "ResNet", "resnet18", "resnet34", "RateVAE", "DVAE",
           "MODELS", "make"]


class ConvNet(nn.Module):
    """DC/DM ConvNet (Zhao, Mopuri & Bilen 2021; reference defaults: width 128, depth 3).

    Block: ``conv3x3 -> GroupNorm(width, width) (instance norm with affine) -> ReLU -> AvgPool2d(2)``.
    28x28 inputs get padding 3 in the first conv so the feature map is 32x32, as in the
    reference code; so a 28x28 or 32x32 input gives ``width * 4 * 4 = 2048`` features and a
    64x64 input ``width * 8 * 8`` at depth 3 (the reference uses depth 4 there).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, im_size: int = 28,
                 width: int = 128, depth: int = 3):
        super().__init__()
        layers, c = [], in_channels
        size = 32 if im_size == 28 else im_size
        for d in range(depth):
            pad = 3 if (d == 0 and im_size == 28) else 1
            layers += [nn.Conv2d(c, width, 3, padding=pad), nn.GroupNorm(width, width, affine=True),
                       nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            c, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the linear head (what DM matches)."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class LogisticRegression(nn.Module):
    """Multinomial logistic regression ``Linear(C*H*W, num_classes)`` (Lu et al. 2023, C.1: LR)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, im_size: int = 28):
        super().__init__()
        self.linear = nn.Linear(in_channels * im_size * im_size, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """One hidden layer, leaky ReLU 0.2 (Lu et al. 2023, C.1: NN = 784-784-10).

    The paper's hidden width equals the input size (784 on MNIST); the authors' code
    uses 128. ``hidden=None`` means the paper's choice.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, im_size: int = 28,
                 hidden: int | None = None, negative_slope: float = 0.2):
        super().__init__()
        d = in_channels * im_size * im_size
        self.hidden = nn.Linear(d, hidden or d)
        self.act = nn.LeakyReLU(negative_slope)
        self.out = nn.Linear(hidden or d, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.hidden(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(x))


class SmallCNN(nn.Module):
    """Two 3x3 convs (32, 64 channels), max-pool 2, fc 128, fc classes (Lu et al. 2023, C.1: CNN)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, im_size: int = 28):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        side = (im_size - 4) // 2
        self.fc1 = nn.Linear(64 * side * side, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.embed(x))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): 3x3 stem, four stages of basic blocks, global average pool."""

    def __init__(self, blocks: tuple[int, ...], in_channels: int = 3, num_classes: int = 10, im_size: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        stages, c = [], 64
        for i, n in enumerate(blocks):
            width = 64 * 2**i
            stages += [_BasicBlock(c if j == 0 else width, width, (1 if i == 0 else 2) if j == 0 else 1)
                       for j in range(n)]
            c = width
        self.stages = nn.Sequential(*stages)
        self.feature_dim = c
        self.fc = nn.Linear(c, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


def resnet18(in_channels: int = 3, num_classes: int = 10, im_size: int = 32) -> ResNet:
    return ResNet((2, 2, 2, 2), in_channels, num_classes, im_size)


def resnet34(in_channels: int = 3, num_classes: int = 10, im_size: int = 32) -> ResNet:
    return ResNet((3, 4, 6, 3), in_channels, num_classes, im_size)


MODELS = {"convnet": ConvNet, "lr": LogisticRegression, "mlp": MLP, "cnn": SmallCNN,
          "resnet18": resnet18, "resnet34": resnet34}


def make(name: str, shape: tuple[int, int, int], num_classes: int, **kwargs) -> nn.Module:
    """Build model ``name`` for images of ``shape`` = (C, H, W) with square H == W."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {', '.join(MODELS)}")
    c, h, w = shape
    if h != w:
        raise ValueError(f"models expect square images, got {h}x{w}")
    return MODELS[name](in_channels=c, num_classes=num_classes, im_size=h, **kwargs)


# ---- Rate-constrained VAE and D-VAE (Yu et al. 2024, papers/003, Sec. 3.2 and 3.4, appendix B.2) ----

class _VAEEncoder(nn.Module):
    """ResNet-18 stem, ``layer1`` and ``layer2[0]``: (C, H, W) -> (2w, H/2, W/2); 7 convs with batch norm (B.2)."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(_BasicBlock(width, width, 1), _BasicBlock(width, width, 1))
        self.layer2_0 = _BasicBlock(width, 2 * width, 2)

    def forward(self, x):
        return self.layer2_0(self.layer1(self.stem(x)))


def _vae_decoder(c_in: int, out_channels: int, width: int, sigmoid: bool) -> nn.Sequential:
    """A stride-2 transposed conv then three 3x3 transposed convs, instance norm + ReLU between (B.2)."""
    def block(a, b, k, s, p):
        return [nn.ConvTranspose2d(a, b, k, s, p), nn.InstanceNorm2d(b, affine=True), nn.ReLU()]
    layers = [*block(c_in, 2 * width, 4, 2, 1), *block(2 * width, width, 3, 1, 1),
              *block(width, width // 2, 3, 1, 1), nn.ConvTranspose2d(width // 2, out_channels, 3, 1, 1)]
    return nn.Sequential(*layers, *([nn.Sigmoid()] if sigmoid else []))


class RateVAE(nn.Module):
    """The rate-constrained VAE of Sec. 3.2 (eq. 3) with the encoder/decoder of appendix B.2 and the authors' code.

    Encoder (ResNet-18 stem, layer1, layer2[0]) -> a ``2*width`` x H/2 x W/2 map; 1x1 convs give ``mu`` and
    ``logvar`` with ``latent`` channels (256); ``post_conv`` (1x1) maps ``z`` back to ``2*width`` channels; the
    image decoder ends in a sigmoid, so reconstructions lie in [0, 1]. ``width=64`` is the paper's
    (128 x 16 x 16 on CIFAR); any even H = W works (32x32x3, 28x28x1).
    """

    def __init__(self, in_channels: int = 3, *, width: int = 64, latent: int = 256):
        super().__init__()
        self.encoder = _VAEEncoder(in_channels, width)
        self.to_mu = nn.Conv2d(2 * width, latent, 1)
        self.to_logvar = nn.Conv2d(2 * width, latent, 1)
        self.post_conv = nn.Conv2d(latent, 2 * width, 1)
        self.image_decoder = _vae_decoder(2 * width, in_channels, width, sigmoid=True)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterisation ``z = mu + sigma * eps`` (appendix B.1); the noise comes from ``generator``."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.image_decoder(self.post_conv(z))

    def forward(self, x, y=None, *, generator=None, sample: bool = True) -> dict:
        mu, logvar = self.encode(x)
        z = self.sample(mu, logvar, generator) if sample else mu
        return {"x_hat": self.decode(z), "mu": mu, "logvar": logvar, "z": z}


class DVAE(RateVAE):
    """D-VAE (Sec. 3.4, eq. 14): a :class:`RateVAE` plus a perturbation decoder ``D_theta_p`` and class embeddings.

    ``embed="paper"`` follows eq. (14), ``p_hat = D_theta_p(u_y + z)``: ``u_y`` has the latent's shape
    (``latent`` x H/2 x W/2) and ``D_theta_p`` begins with its own 1x1 conv. ``embed="code"`` is the authors'
    code with ``--use_y`` left at its (``store_false``) default: ``p_hat = D_theta_p(e_y + post_conv(z))`` with
    a ``2*width`` x H/2 x W/2 embedding ``e_y``. The perturbation decoder has the image decoder's layers
    without the sigmoid (a perturbation is signed).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, im_size: int = 32, *, width: int = 64,
                 latent: int = 256, embed: str = "paper"):
        super().__init__(in_channels, width=width, latent=latent)
        if embed not in ("paper", "code"):
            raise ValueError(f"DVAE: embed must be 'paper' or 'code', got {embed!r}")
        if im_size % 2:
            raise ValueError(f"DVAE: im_size must be even (the encoder halves it), got {im_size}")
        self.embed_mode = embed
        channels = latent if embed == "paper" else 2 * width
        # N(0, 1) like nn.Embedding (zeros or 0.1 N(0, 1) learned the class-wise pattern worse in short runs)
        self.class_embedding = nn.Parameter(torch.randn(num_classes, channels, im_size // 2, im_size // 2))
        head = [nn.Conv2d(latent, 2 * width, 1)] if embed == "paper" else []
        self.perturbation_decoder = nn.Sequential(*head, *_vae_decoder(2 * width, in_channels, width, sigmoid=False))

    def forward(self, x, y=None, *, generator=None, sample: bool = True) -> dict:
        out = super().forward(x, generator=generator, sample=sample)
        u = self.class_embedding[y]
        h = u + out["z"] if self.embed_mode == "paper" else u + self.post_conv(out["z"])
        out["p_hat"] = self.perturbation_decoder(h)
        return out
