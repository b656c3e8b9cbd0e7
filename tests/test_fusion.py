"""fastdl.fuse_conv_bn: BatchNorm folded into the convolutions of eval models (same outputs, no
BatchNorm left behind a convolution), BatchNorm + ReLU fused where no convolution precedes, and what
must not be fused left alone."""

import pytest
import torch
import torchvision
from torch import nn

import fastdl
from fastdl.fusion import BatchNormReLU2d

DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)]


def randomize_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                if m.track_running_stats:
                    m.running_mean.normal_()
                    m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.normal_()
                    m.bias.normal_()
    return model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("converted", [False, True])
def test_resnet18_folds_every_batch_norm(converted, device):
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18(num_classes=10)).to(device).double().eval()
    if converted:
        fastdl.convert(model)
    fused = fastdl.fuse_conv_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(2, 3, 64, 64, device=device, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_norm_then_relu_without_a_convolution_is_fused(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.MaxPool2d(2), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
                          nn.Conv2d(6, 4, 1))
    model = randomize_bn(model).to(device).eval()
    fused = fastdl.fuse_conv_bn(model)
    assert sum(isinstance(m, BatchNormReLU2d) for m in fused.modules()) == 1
    assert not any(type(m) is nn.ReLU for m in fused.modules())
    assert set(fused.state_dict()) == set(model.state_dict())
    x = torch.randn(3, 3, 12, 12, device=device)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x))
    # With gradients the fused layer computes relu(batch_norm(x)) differentiably.
    y = fused(x.requires_grad_())
    y.sum().backward()
    assert x.grad is not None


def test_nothing_unsafe_is_fused():
    class TwoUses(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.bn_batch = nn.BatchNorm2d(4, track_running_stats=False)

        def forward(self, x):
            y = self.conv(x)  # used by the BN and by the sum: folding would change the sum
            return self.bn(y) + y + torch.relu(self.bn_batch(y))

    model = randomize_bn(TwoUses()).eval()
    fused = fastdl.fuse_conv_bn(model)
    assert isinstance(fused.bn, nn.BatchNorm2d) and type(fused.bn_batch) is nn.BatchNorm2d
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x))


def test_training_models_are_refused():
    with pytest.raises(ValueError, match="model.eval"):
        fastdl.fuse_conv_bn(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))


@pytest.mark.parametrize("device", DEVICES)
def test_batch_norm_relu_inference_op(device):
    x = torch.randn(4, 5, 6, 7, device=device)
    x[0, 0, 0, 0] = float("nan")
    w, b, rm, rv = (torch.randn(5, device=device) for _ in range(4))
    rv = rv.abs() + 0.5
    for t in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, 0]):
        out = fastdl.ops.batch_norm_relu_inference(t, rm, rv, w, b)
        ref = torch.relu(torch.nn.functional.batch_norm(t, rm, rv, w, b))
        torch.testing.assert_close(out, ref, equal_nan=True)
        # opcheck compares outputs without equal_nan: give it a NaN-free input.
        torch.library.opcheck(torch.ops.fastdl.batch_norm_relu_inference.default,
                              (torch.nan_to_num(t), w, b, rm, rv, 1e-5))
