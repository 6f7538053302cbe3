"""The channels-last instance norm of poisonbook.condense (``condense._norm``) against independent references.

* Values and first derivatives equal ``F.group_norm`` evaluated in float64 (another kernel, double precision)
  at 3e-5 relative, on maps whose mean is 60 times their spread, where a one-pass variance cancels (PyTorch's
  own channels-last float32 ``group_norm`` is 2e-4 to 2e-3 off there), and the output keeps the input's
  memory layout.
* ``gradcheck`` / ``gradgradcheck``: the backward and the double backward (DC's ``create_graph``) against
  finite differences.
* Under ``torch.func`` (DC's per-class gradients: ``vmap`` of ``grad``) it gives the per-class loop's gradients
  of the plain ``GroupNorm`` network.
* ``fast_norms`` swaps only one-channel-per-group affine group norms and shares their parameters.
* The features of a channels-last ConvNet with swapped norms equal float64 ones.
"""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from poisonbook import models
from poisonbook.condense._norm import InstanceNorm, fast_norms, instance_norm

CL = torch.channels_last


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("shape", [(4, 16, 32, 32), (3, 8, 8, 8), (2, 5, 7, 3), (1, 3, 1, 4)])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_values_and_gradients_equal_float64_group_norm(shape, layout):
    g = torch.Generator().manual_seed(sum(shape))
    x64 = (3.0 + 0.05 * torch.randn(shape, generator=g)).double()  # mean >> spread; float32 values, exactly
    w64, b64 = torch.randn(shape[1], generator=g, dtype=torch.float64), torch.randn(shape[1], generator=g,
                                                                                     dtype=torch.float64)
    dy64 = torch.randn(shape, generator=g, dtype=torch.float64)
    ref = [t.clone().requires_grad_(True) for t in (x64, w64, b64)]
    y_ref = F.group_norm(ref[0], shape[1], ref[1], ref[2], 1e-5)
    grads_ref = torch.autograd.grad(y_ref, ref, dy64)

    fmt = CL if layout == "channels_last" else torch.contiguous_format
    ours = [x64.float().contiguous(memory_format=fmt).requires_grad_(True), w64.float().requires_grad_(True),
            b64.float().requires_grad_(True)]
    y = instance_norm(*ours, 1e-5)
    grads = torch.autograd.grad(y, ours, dy64.float().contiguous(memory_format=fmt))
    assert y.is_contiguous(memory_format=fmt)
    for a, b in zip((y, *grads), (y_ref, *grads_ref)):  # PyTorch's channels-last group_norm: 2e-4 to 2e-3 off
        assert _rel(a, b) < 3e-5


def test_backward_and_double_backward_against_finite_differences():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_(True)
    w = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(instance_norm, (x, w, b))
    assert torch.autograd.gradgradcheck(instance_norm, (x, w, b))


def test_per_class_gradients_under_torch_func_equal_the_plain_loop():
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    plain = models.ConvNet(1, 3, 28, width=8).double()
    fast = fast_norms(copy.deepcopy(plain))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(4).view(3, 4)
    params = {k: p.detach() for k, p in fast.named_parameters()}

    def loss(p, xc, yc):
        return F.cross_entropy(functional_call(fast, p, (xc,)), yc)

    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for c in range(3):
        loop = torch.autograd.grad(F.cross_entropy(plain(x[c]), y[c]), list(plain.parameters()))
        for (name, _), b in zip(plain.named_parameters(), loop):
            if name.startswith("features.") and name.endswith(".bias") and b.abs().max() < 1e-12:
                assert batched[name][c].abs().max() < 1e-12  # a conv bias before a norm: zero gradient
            else:
                assert _rel(batched[name][c], b) < 1e-10, name


def test_fast_norms_swaps_instance_norms_only_and_shares_their_parameters():
    net = nn.Sequential(nn.GroupNorm(4, 4), nn.GroupNorm(2, 4), nn.GroupNorm(4, 4, affine=False),
                        nn.Sequential(nn.GroupNorm(3, 3)))
    keys = list(net.state_dict())
    weight = net[0].weight
    fast_norms(net)
    assert [type(m) for m in (net[0], net[1], net[2], net[3][0])] == [InstanceNorm, nn.GroupNorm, nn.GroupNorm,
                                                                      InstanceNorm]
    assert net[0].weight is weight and list(net.state_dict()) == keys


def test_channels_last_convnet_features_equal_float64():
    """DM's real features through a channels-last ConvNet with swapped norms against float64."""
    torch.manual_seed(0)
    base = models.ConvNet(1, 10, 28, width=128).train().requires_grad_(False)
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    ref = copy.deepcopy(base).double().embed(x.double())
    net = fast_norms(copy.deepcopy(base).to(memory_format=CL))
    assert any(isinstance(m, InstanceNorm) for m in net.modules())
    with torch.inference_mode():
        assert _rel(net.embed(x.contiguous(memory_format=CL)), ref) < 1e-5
