"""D-VAE (Yu et al. 2024) training epoch and purification, next to one epoch of PGD adversarial training.

The paper's efficiency claim (Sec. 4.3): the two-stage D-VAE takes 41 GPU minutes on CIFAR-10 against 229 for
adversarial training. Here, on N random 32x32x3 images (10,000 on a GPU; 1,000 on CPU, with the 10,000-image
figure extrapolated linearly): one epoch of ``train_dvae`` (batch 128, Adam, the paper's width 64 on a GPU, the
cpu profile's width 8 on CPU), one inference pass of the trained model over all images (what Algorithm 1 runs
three times), and one epoch of ``adversarial_fit`` (PGD l_inf 8/255, 10 steps of 1.6/255, batch 128) of the
chapter-50 victim (the DC ConvNet, width 16 on CPU, 128 on a GPU) on the same images.
"""

from __future__ import annotations

import torch

from poisonbook import models
from poisonbook.defend import adversarial_fit, dvae_infer, train_dvae
from timing import best_seconds


def run(device: torch.device, repeats: int = 3) -> dict:
    gpu = device.type == "cuda"
    n, width, victim_width = (10_000, 64, 128) if gpu else (1_000, 8, 16)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    latent = 256 if gpu else 32
    state = {}

    def epoch():
        state["m"], _ = train_dvae(x, y, 10, kld_target=1.0, epochs=1, width=width, latent=latent, device=device)

    def purify():
        dvae_infer(state["m"], x, y)

    def at_epoch():
        torch.manual_seed(0)
        net = models.ConvNet(3, 10, 32, width=victim_width, depth=3).to(device)
        adversarial_fit(net, x.to(device), y.to(device), eps=8 / 255, alpha=1.6 / 255, steps=10, epochs=1, lr=0.01,
                        batch_size=128)

    scale = 10_000 / n
    out = {"n": n, "width": width, "latent": latent}
    for name, fn in (("dvae_train_epoch", epoch), ("dvae_inference_pass", purify), ("at_epoch", at_epoch)):
        sec = best_seconds(fn, device, repeats, warmup=0 if name != "dvae_inference_pass" else 1)
        out[name] = {"seconds": round(sec, 3), "seconds_per_10k": round(sec * scale, 2)}
    out["ratio_at_epoch_over_dvae_epoch"] = round(out["at_epoch"]["seconds"] / out["dvae_train_epoch"]["seconds"], 2)
    return out
