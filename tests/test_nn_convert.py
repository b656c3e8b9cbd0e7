"""fastdl.nn pooling layers as drop-ins for torch.nn's, and fastdl.convert / fastdl.revert."""

import warnings

import pytest
import torch
from torch import nn

import fastdl

LAYERS = [
    (nn.MaxPool2d, fastdl.nn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=True)),
    (nn.MaxPool2d, fastdl.nn.MaxPool2d, dict(kernel_size=2, return_indices=True)),
    (nn.AvgPool2d, fastdl.nn.AvgPool2d, dict(kernel_size=3, stride=1, padding=1, count_include_pad=False)),
    (nn.AvgPool2d, fastdl.nn.AvgPool2d, dict(kernel_size=(2, 3), divisor_override=4)),
    (nn.AdaptiveAvgPool2d, fastdl.nn.AdaptiveAvgPool2d, dict(output_size=(None, 3))),
    (nn.AdaptiveAvgPool2d, fastdl.nn.AdaptiveAvgPool2d, dict(output_size=1)),
]


@pytest.mark.parametrize("torch_cls,fastdl_cls,kwargs", LAYERS)
def test_layer_is_a_drop_in(torch_cls, fastdl_cls, kwargs):
    ours, theirs = fastdl_cls(**kwargs), torch_cls(**kwargs)
    assert isinstance(ours, torch_cls)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(2, 3, 11, 10, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = ours(a), theirs(b)
    if kwargs.get("return_indices"):
        assert torch.equal(out_a[1], out_b[1])
        out_a, out_b = out_a[0], out_b[0]
    torch.testing.assert_close(out_a, out_b, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out_b)
    out_a.backward(g)
    out_b.backward(g)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_uncovered_dtype_falls_back_visibly():
    fastdl.nn.reset_fallback_counts()
    layer = fastdl.nn.MaxPool2d(2)
    x = torch.randn(1, 2, 6, 6, dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="no fastdl kernel for torch.bfloat16 on cpu"):
        out = layer(x)
    torch.testing.assert_close(out, nn.functional.max_pool2d(x, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per layer type and reason
        layer(x)
    assert fastdl.nn.fallback_counts() == {("MaxPool2d", "no fastdl kernel for torch.bfloat16 on cpu"): 2}
    layer(torch.randn(1, 2, 6, 6))  # a covered call is not counted
    assert sum(fastdl.nn.fallback_counts().values()) == 2


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class MyPool(nn.MaxPool2d):
    """A user's subclass: not exactly nn.MaxPool2d, so convert leaves it alone."""


def test_convert_keeps_outputs_gradients_state_and_identity():
    torch.manual_seed(0)
    model = SmallCNN().double()
    reference = SmallCNN().double()
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hook_calls = []
    model.features[2].register_forward_hook(lambda *args: hook_calls.append(1))
    params_before = [id(p) for p in model.parameters()]
    keys_before = list(model.state_dict().keys())

    assert fastdl.convert(model) is model
    assert type(model.features[2]) is fastdl.nn.MaxPool2d
    assert type(model.features[6]) is fastdl.nn.AvgPool2d
    assert type(model.features[7]) is fastdl.nn.AdaptiveAvgPool2d
    assert [id(p) for p in model.parameters()] == params_before
    assert list(model.state_dict().keys()) == keys_before

    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    out, ref = model(x), reference(x)
    torch.testing.assert_close(out, ref)
    assert hook_calls == [1]
    out.sum().backward()
    ref.sum().backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    optimizer.step()  # the optimizer still holds the model's parameters
    assert not torch.equal(model.head.weight, reference.head.weight)

    fastdl.revert(model)
    assert type(model.features[2]) is nn.MaxPool2d
    assert list(model.state_dict().keys()) == keys_before


def test_convert_not_inplace_copies_and_skips_subclasses():
    model = nn.Sequential(nn.MaxPool2d(2), MyPool(2))
    converted = fastdl.convert(model, inplace=False)
    assert converted is not model
    assert type(model[0]) is nn.MaxPool2d
    assert type(converted[0]) is fastdl.nn.MaxPool2d
    assert type(converted[1]) is MyPool


def test_convert_rejects_non_modules():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fastdl.convert(lambda x: x)


def test_converted_model_loads_a_stock_checkpoint_and_back():
    stock = SmallCNN()
    converted = fastdl.convert(SmallCNN())
    converted.load_state_dict(stock.state_dict(), strict=True)
    stock.load_state_dict(converted.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(converted.eval()(x), stock.eval()(x))
