"""Batch normalization against PyTorch: outputs, running statistics and gradients over a hypothesis
search of shapes, layouts and flags; several training steps then eval through the layers; numerical
robustness on inputs with a large mean and a small spread; gradcheck, opcheck, torch.compile; bad
input. CUDA cases carry the cuda marker."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fastdl
from conftest import tolerance

DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float64]
LAYOUTS = ("contiguous", "channels_last", "strided")


@st.composite
def bn_cases(draw):
    dim = draw(st.sampled_from([2, 3, 4]))
    batch = draw(st.integers(1, 6))
    channels = draw(st.integers(1, 40))
    spatial = [draw(st.integers(1, 12)) for _ in range(dim - 2)]
    layout = draw(st.sampled_from(LAYOUTS if dim == 4 else ("contiguous", "strided")))
    return (batch, channels, *spatial), layout, draw(st.integers(0, 2**31 - 1))


def make(shape, layout, dtype, device, seed, scale=3.0, center=1.5):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale + center).to(dtype=dtype, device=device)
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.zeros((*shape[:-1], 2 * shape[-1]), dtype=dtype, device=device)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def params(channels, dtype, device, seed):
    g = torch.Generator().manual_seed(seed + 7)
    w, b, rm = (torch.randn(channels, generator=g, dtype=torch.float64).to(dtype=dtype, device=device) for _ in range(3))
    rv = (torch.rand(channels, generator=g, dtype=torch.float64) + 0.5).to(dtype=dtype, device=device)
    return w, b, rm, rv


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=120, deadline=None)
@given(case=bn_cases(), training=st.booleans(), affine=st.booleans(), running=st.booleans(),
       momentum=st.sampled_from([0.1, 0.0, 1.0, 0.37]))
@example(case=((3, 17), "contiguous", 2325), training=True, affine=False, running=False, momentum=0.1)
def test_batch_norm_matches_torch(case, training, affine, running, momentum, dtype, device):
    shape, layout, seed = case
    count = shape[0] * (shape[2] if len(shape) > 2 else 1) * (shape[3] if len(shape) > 3 else 1)
    if training and count == 1:
        return  # rejected by both (test_one_value_per_channel_in_training)
    if not training and not running:
        running = True  # eval needs running statistics
    x = make(shape, layout, dtype, device, seed)
    w, b, rm, rv = params(shape[1], dtype, device, seed)
    w, b = (w, b) if affine else (None, None)
    ours_rm, ours_rv = (rm.clone(), rv.clone()) if running else (None, None)
    ref_rm, ref_rv = (rm.clone(), rv.clone()) if running else (None, None)
    tol = tolerance("batch_norm", dtype)

    leaf_a, leaf_b = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    wa = w.clone().requires_grad_() if affine else None
    wb = w.clone().requires_grad_() if affine else None
    ba = b.clone().requires_grad_() if affine else None
    bb = b.clone().requires_grad_() if affine else None
    out = fastdl.ops.batch_norm(leaf_a, ours_rm, ours_rv, wa, ba, training, momentum, 1e-5)
    ref = F.batch_norm(leaf_b, ref_rm, ref_rv, wb, bb, training, momentum, 1e-5)
    torch.testing.assert_close(out, ref, **tol)
    if out.numel() > 1:
        assert out.stride() == ref.stride()
    if running:
        torch.testing.assert_close(ours_rm, ref_rm, **tol)
        torch.testing.assert_close(ours_rv, ref_rv, **tol)
    grad = make(shape, "contiguous", dtype, device, seed + 1, scale=1.0, center=0.0)
    out.backward(grad)
    ref.backward(grad)
    # Gradients' absolute tolerance scaled by their largest value: a channel of a few nearly equal
    # values has large input gradients that are differences of large terms, which two float32 sums in
    # different orders round differently (3 values 3.2174, 3.2164, 3.4612: gradients up to 2.7, fastdl
    # 6.7e-6 and torch 1.3e-5 from the float64 result, 1.9e-5 apart).
    def close(a, b):
        atol = tol["atol"] * max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=atol)

    close(leaf_a.grad, leaf_b.grad)
    if affine:
        close(wa.grad, wb.grad)
        close(ba.grad, bb.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("layer,shape", [("BatchNorm2d", (4, 6, 5, 7)), ("BatchNorm1d", (8, 6)),
                                         ("BatchNorm1d", (4, 6, 9))])
def test_layer_training_steps_then_eval(layer, shape, momentum, device):
    torch.manual_seed(0)
    ours = getattr(fastdl.nn, layer)(shape[1], momentum=momentum).to(device)
    theirs = getattr(torch.nn, layer)(shape[1], momentum=momentum).to(device)
    with torch.no_grad():
        theirs.weight.normal_()
        theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    for step in range(4):
        x = torch.randn(shape, device=device) * (step + 1) + step
        torch.testing.assert_close(ours(x), theirs(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name))
    ours.eval()
    theirs.eval()
    x = torch.randn(shape, device=device)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kwargs", [dict(affine=False), dict(track_running_stats=False),
                                    dict(affine=False, track_running_stats=False)])
def test_layer_flags(kwargs, device):
    torch.manual_seed(0)
    ours = fastdl.nn.BatchNorm2d(5, **kwargs).to(device)
    theirs = torch.nn.BatchNorm2d(5, **kwargs).to(device)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert repr(ours) == repr(theirs)
    for training in (True, False):  # without running statistics eval uses the batch's, as torch
        ours.train(training)
        theirs.train(training)
        x = torch.randn(3, 5, 4, 4, device=device) * 2 + 1
        torch.testing.assert_close(ours(x), theirs(x))


def test_layer_loads_an_old_checkpoint_without_num_batches_tracked():
    # A checkpoint from before PyTorch 0.4.1: no num_batches_tracked, state_dict version 1.
    state = torch.nn.BatchNorm2d(4).state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    stock, ours = torch.nn.BatchNorm2d(4), fastdl.nn.BatchNorm2d(4)
    for layer in (stock, ours):
        layer.num_batches_tracked.fill_(5)
        layer.load_state_dict(state)
    assert ours.num_batches_tracked.item() == stock.num_batches_tracked.item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("center,spread", [(1e3, 1.0), (1e4, 1e-2), (1e5, 1e-1)])
@pytest.mark.parametrize("shape,layout", [((16, 8, 14, 14), "contiguous"), ((16, 8, 14, 14), "channels_last"),
                                          ((256, 32), "contiguous"), ((16, 8, 3, 3), "contiguous")])
def test_large_mean_small_spread_is_no_worse_than_torch(center, spread, shape, layout, device):
    # The robustness criterion: against a float64 reference on the same float32 values,
    # fastdl's error must not exceed PyTorch's own (E[x^2] - E[x]^2 in float fails this).
    x = make(shape, layout, torch.float32, device, 0, scale=spread, center=center)
    ref = F.batch_norm(x.double(), None, None, training=True)
    rm, rv = torch.zeros(shape[1], device=device), torch.ones(shape[1], device=device)
    ours = fastdl.ops.batch_norm(x, rm, rv, training=True, momentum=1.0)
    theirs = F.batch_norm(x, None, None, training=True)
    error = lambda t: ((t.double() - ref).norm() / ref.norm()).item()  # noqa: E731
    assert error(ours) <= error(theirs) + 1e-7, (error(ours), error(theirs))
    assert error(ours) < 1e-5
    # The running statistics carry the batch's mean and unbiased variance exactly as well.
    dims = [0] + list(range(2, x.dim()))
    torch.testing.assert_close(rm.double(), x.double().mean(dims), rtol=1e-7, atol=0)
    torch.testing.assert_close(rv.double(), x.double().var(dims), rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape,layout", [((3, 4, 5, 6), "contiguous"), ((3, 4, 5, 6), "channels_last"),
                                          ((6, 4), "contiguous"), ((3, 4, 7), "contiguous")])
def test_gradcheck(shape, layout, training, device):
    x = make(shape, layout, torch.float64, device, 0).requires_grad_()
    w, b, rm, rv = (t.requires_grad_(i < 2) for i, t in enumerate(params(shape[1], torch.float64, device, 0)))
    fn = lambda x, w, b: fastdl.ops.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_five_dimensional_input_matches_torch(layout, training, device):
    # As F.batch_norm: (N, C, D, H, W) normalized per channel over N, D, H and W.
    x = torch.randn(3, 4, 2, 3, 5, dtype=torch.float64, device=device).to(memory_format=layout).requires_grad_()
    w, b, rm, rv = (t.requires_grad_(i < 2) for i, t in enumerate(params(4, torch.float64, device, 0)))
    ours_rm, ours_rv = rm.clone(), rv.clone()
    out = fastdl.ops.batch_norm(x, ours_rm, ours_rv, w, b, training)
    torch.testing.assert_close(out, F.batch_norm(x, rm, rv, w, b, training))
    torch.testing.assert_close((ours_rm, ours_rv), (rm, rv))
    fn = lambda x, w, b: fastdl.ops.batch_norm(x, rm.clone(), rv.clone(), w, b, training)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    fd = torch.ops.fastdl
    for shape, layout in [((3, 4, 5, 6), "contiguous"), ((3, 4, 5, 6), "channels_last"), ((6, 4), "contiguous"),
                          ((3, 4, 7), "contiguous")]:
        x = make(shape, layout, torch.float32, device, 0)
        w, b, rm, rv = params(shape[1], torch.float32, device, 0)
        for training in (True, False):
            leaf = x.detach().clone().requires_grad_()
            args = (leaf, w.clone().requires_grad_(), b.clone().requires_grad_(), rm.clone(), rv.clone(),
                    training, 0.1, 1e-5)
            torch.library.opcheck(fd.batch_norm.default, args)
            _, mean, invstd = fd.batch_norm(x, w, b, rm.clone(), rv.clone(), training, 0.1, 1e-5)
            for mask in ([True, True, True], [True, False, False], [False, True, True]):
                torch.library.opcheck(fd.batch_norm_backward.default,
                                      (torch.randn_like(x), x, w, mean, invstd, training, mask))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_training_step_matches_eager(device):
    torch.manual_seed(0)
    eager = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), fastdl.nn.BatchNorm2d(8), torch.nn.ReLU()).to(device)
    compiled_model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), fastdl.nn.BatchNorm2d(8), torch.nn.ReLU()).to(device)
    compiled_model.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(4, 3, 10, 10, device=device)
    out_e, out_c = eager(x), compiled(x)
    torch.testing.assert_close(out_c, out_e)
    out_e.sum().backward()
    out_c.sum().backward()
    for pe, pc in zip(eager.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled_model[1].running_mean, eager[1].running_mean)
    torch.testing.assert_close(compiled_model[1].running_var, eager[1].running_var)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_keeps_running_statistics(device):
    bn = fastdl.nn.BatchNorm2d(3).to(device)
    x = torch.randn(0, 3, 4, 4, device=device, requires_grad=True)
    out = bn(x)
    assert out.shape == x.shape
    assert torch.equal(bn.running_mean, torch.zeros(3, device=device))
    assert torch.equal(bn.running_var, torch.ones(3, device=device))
    out.sum().backward()
    assert torch.equal(bn.weight.grad, torch.zeros(3, device=device))
    bn.eval()
    assert bn(torch.randn(0, 3, 4, 4, device=device)).shape == (0, 3, 4, 4)


def test_one_value_per_channel_in_training():
    for shape in [(1, 3), (1, 3, 1), (1, 3, 1, 1)]:
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            fastdl.ops.batch_norm(torch.randn(shape), None, None, training=True)
    # Eval with one value is fine.
    out = fastdl.ops.batch_norm(torch.randn(1, 3), torch.zeros(3), torch.ones(3), training=False)
    assert out.shape == (1, 3)


def test_bad_input_names_the_argument():
    x = torch.randn(4, 3, 5, 5)
    rm, rv = torch.zeros(3), torch.ones(3)
    with pytest.raises(RuntimeError, match="running_mean to hold 3 values"):
        fastdl.ops.batch_norm(x, torch.zeros(4), rv, training=True)
    with pytest.raises(RuntimeError, match="weight to hold 3 values"):
        fastdl.ops.batch_norm(x, rm, rv, weight=torch.ones(4))
    with pytest.raises(RuntimeError, match=r"input of shape \(N, C\), \(N, C, L\) or \(N, C, H, W\)"):
        fastdl.ops.batch_norm(torch.randn(5), rm, rv)
    with pytest.raises(RuntimeError, match=r"input of shape"):  # the op itself (fastdl.ops flattens 5-D)
        torch.ops.fastdl.batch_norm(torch.randn(2, 3, 4, 5, 6), None, None, rm, rv, False, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="expected input to be float32 or float64"):
        fastdl.ops.batch_norm(torch.ones(4, 3, dtype=torch.int64), rm, rv)
    with pytest.raises(RuntimeError, match="running_mean and running_var when training=False"):
        fastdl.ops.batch_norm(x, None, None, training=False)
    with pytest.raises(RuntimeError, match="weight to be float32"):
        fastdl.ops.batch_norm(x, rm, rv, weight=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected 4D input"):
        fastdl.nn.BatchNorm2d(3)(torch.randn(4, 3, 5))
    with pytest.raises(RuntimeError, match=r"to hold 4 values \(one per channel of input\)"):
        fastdl.nn.BatchNorm2d(3)(torch.randn(2, 4, 3, 3))


def test_convert_maps_batch_norm_layers():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 4 * 4, 8), torch.nn.BatchNorm1d(8))
    stock = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 4 * 4, 8), torch.nn.BatchNorm1d(8))
    stock.load_state_dict(model.state_dict())
    fastdl.convert(model)
    assert type(model[1]) is fastdl.nn.BatchNorm2d and type(model[4]) is fastdl.nn.BatchNorm1d
    x = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(model(x), stock(x))
    torch.testing.assert_close(model[1].running_mean, stock[1].running_mean)
