"""Autograd beyond one eager reverse pass, through convolution, pooling, batch normalization and RNNs.

Double backward (the gradient of a gradient, as a gradient penalty takes): gradgradcheck in float64,
a third derivative, and penalties whose gradients must equal those through torch's own layers, for
every subset of first-order gradients a penalty may use. Forward-mode AD (jvp): gradcheck with
check_forward_ad, forward over reverse (gradgradcheck's check_fwd_over_rev), torch.func.jvp and a
Hessian against torch; the ops without forward-mode formulas raise an error naming themselves.
Compiled autograd (torch._dynamo's compiled_autograd) gives torch's parameter gradients."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import fastdl

DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)]


def leaves(*shapes, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, dtype=torch.float64, generator=g).to(device).requires_grad_() for s in shapes]


def distinct(shape, device, seed=0):
    """Values far apart, so that a finite-difference step cannot change which element is a maximum."""
    g = torch.Generator().manual_seed(seed)
    n = torch.Size(shape).numel()
    return (torch.randperm(n, generator=g).double() / n).reshape(shape).to(device).requires_grad_()


def penalty_gradients(fn, inputs, wrt):
    """A gradient penalty: the first-order gradients of a nonlinear loss of fn(*inputs) with respect to
    inputs[i] for i in wrt, recorded, and a nonlinear function of them differentiated with respect
    to every input. Returns the penalty and its gradients (zeros where it does not reach an input)."""
    out = fn(*inputs)
    firsts = torch.autograd.grad((out.sin() * out).sum(), [inputs[i] for i in wrt], create_graph=True)
    penalty = sum((g * g.cos()).sum() for g in firsts)
    return (penalty, *torch.autograd.grad(penalty, inputs, allow_unused=True, materialize_grads=True))


def assert_penalties_match(ours, reference, inputs):
    for wrt in itertools.chain.from_iterable(itertools.combinations(range(len(inputs)), k)
                                             for k in range(1, len(inputs) + 1)):
        copies = [t.detach().clone().requires_grad_() for t in inputs]
        expected = penalty_gradients(reference, copies, wrt)
        got = penalty_gradients(ours, inputs, wrt)
        for a, b in zip(got, expected):
            # Float64 sums in another order (Winograd's transforms round more): 1e-10 of the largest value.
            atol = 1e-10 * max(1.0, b.abs().max().item())
            torch.testing.assert_close(a, b, rtol=1e-9, atol=atol, msg=lambda m: f"penalty on {wrt}: {m}")


# ---- convolution

CONV_CASES = [
    ("direct", dict(padding=1), (2, 3, 6, 7), (4, 3, 3, 3)),
    ("direct", dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2), (2, 4, 9, 8), (6, 2, 3, 2)),
    ("direct", dict(stride=2), (3, 7, 7), (2, 3, 1, 1)),  # unbatched
    ("winograd2", dict(padding=1), (2, 3, 6, 7), (4, 3, 3, 3)),
    ("winograd4", dict(padding=(0, 2)), (3, 9, 8), (2, 3, 3, 3)),  # unbatched
]


def conv_fn(algorithm, options):
    return lambda x, w, b: fastdl.ops.conv2d(x, w, b, algorithm=algorithm, **options)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm,options,x_shape,w_shape", CONV_CASES)
def test_conv2d_gradgradcheck(algorithm, options, x_shape, w_shape, device):
    inputs = leaves(x_shape, w_shape, (w_shape[0],), device=device)
    assert gradgradcheck(conv_fn(algorithm, options), inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm,options,x_shape,w_shape", CONV_CASES)
def test_conv2d_penalties_match_torch(algorithm, options, x_shape, w_shape, device):
    inputs = leaves(x_shape, w_shape, (w_shape[0],), device=device)
    assert_penalties_match(conv_fn(algorithm, options), lambda x, w, b: F.conv2d(x, w, b, **options), inputs)


@pytest.mark.parametrize("algorithm", ["direct", "winograd4"])
def test_conv2d_third_derivative(algorithm):
    def input_gradient(x, w):
        out = fastdl.ops.conv2d(x, w, padding=1, algorithm=algorithm)
        return torch.autograd.grad((out * out * out).sum(), x, create_graph=True)[0]
    assert gradgradcheck(input_gradient, leaves((1, 2, 5, 5), (2, 2, 3, 3)))


def test_conv2d_module_gradient_penalty_trains_like_torch():
    """A converted discriminator-like block with an R1 penalty (the squared norm of the input gradient)
    in its loss: the parameters' gradients equal torch's."""
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                    torch.nn.LeakyReLU(0.2), torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 4, 3),
                                    torch.nn.AvgPool2d(2), torch.nn.AdaptiveAvgPool2d(1)).double()
    ours = fastdl.convert(reference, inplace=False)
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    grads = []
    for model in (reference, ours):
        xi = x.clone().requires_grad_()
        score = model(xi).sum()
        (gx,) = torch.autograd.grad(score, xi, create_graph=True)
        (score + gx.square().sum()).backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)


# ---- pooling

POOL_CASES = {
    "max": (lambda t: fastdl.ops.max_pool2d(t, 3, 2, 1, ceil_mode=True), lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True)),
    "max_dilated": (lambda t: fastdl.ops.max_pool2d(t, (3, 2), 1, (1, 0), dilation=(2, 1)),
                    lambda t: F.max_pool2d(t, (3, 2), 1, (1, 0), dilation=(2, 1))),
    "max_indices": (lambda t: fastdl.ops.max_pool2d(t, 2, return_indices=True)[0], lambda t: F.max_pool2d(t, 2)),
    "avg": (lambda t: fastdl.ops.avg_pool2d(t, 3, 2, 1, ceil_mode=True, count_include_pad=False),
            lambda t: F.avg_pool2d(t, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
    "avg_divisor": (lambda t: fastdl.ops.avg_pool2d(t, (2, 3), 1, divisor_override=5),
                    lambda t: F.avg_pool2d(t, (2, 3), 1, divisor_override=5)),
    "adaptive": (lambda t: fastdl.ops.adaptive_avg_pool2d(t, (3, 2)), lambda t: F.adaptive_avg_pool2d(t, (3, 2))),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 7, 8), (3, 7, 8)])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pool_gradgradcheck_and_penalty(case, shape, device):
    ours, reference = POOL_CASES[case]
    x = distinct(shape, device)
    assert gradgradcheck(ours, (x,))
    assert_penalties_match(ours, reference, [x])


@pytest.mark.parametrize("case", ["max", "avg", "adaptive"])
def test_pool_gradient_reaching_the_input_only_through_the_window_is_zero(case):
    # As torch's: the input gradient of a pooling layer does not depend on the input's values
    # (max pooling's maxima positions aside), so a loss on it has a zero input gradient, not an error.
    ours, reference = POOL_CASES[case]
    for fn in (ours, reference):
        x = distinct((1, 2, 6, 6), "cpu")
        (g,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x)
        assert torch.equal(gg, torch.zeros_like(x))


def test_pool_channels_last_gradgradcheck():
    x = distinct((2, 3, 8, 8), "cpu").detach().to(memory_format=torch.channels_last).requires_grad_()
    assert gradgradcheck(lambda t: fastdl.ops.max_pool2d(t, 2), (x,))
    assert gradgradcheck(lambda t: fastdl.ops.avg_pool2d(t, 3, 1, 1), (x,))


# ---- batch normalization

def bn_fn(op, training, channels, device):
    g = torch.Generator().manual_seed(1)
    running_mean = torch.randn(channels, dtype=torch.float64, generator=g).to(device)
    running_var = (torch.rand(channels, dtype=torch.float64, generator=g) + 0.5).to(device)
    return lambda x, w=None, b=None: op(x, running_mean.clone(), running_var.clone(), w, b, training=training)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (5, 3), (4, 3, 7)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradgradcheck_and_penalty(training, shape, affine, device):
    channels = shape[1]
    inputs = leaves(shape, *([(channels,), (channels,)] if affine else []), device=device)
    ours = bn_fn(fastdl.ops.batch_norm, training, channels, device)
    assert gradgradcheck(ours, inputs)
    assert_penalties_match(ours, bn_fn(F.batch_norm, training, channels, device), inputs)


def test_batch_norm_third_derivative():
    def input_gradient(x, w, b):
        out = fastdl.ops.batch_norm(x, None, None, w, b, training=True)
        return torch.autograd.grad((out * out * out).sum(), x, create_graph=True)[0]
    assert gradgradcheck(input_gradient, leaves((4, 2, 3, 3), (2,), (2,)))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_batch_norm_double_backward_16bit_matches_float64(dtype):
    # 16-bit inputs with float32 parameters (as under autocast): the second-order gradients are computed
    # in float32 and returned in each argument's dtype; compare with the float64 computation.
    x, w, b = leaves((8, 4, 5, 5), (4,), (4,), device="cuda")
    low = [x.detach().to(dtype).requires_grad_(), w.detach().float().requires_grad_(),
           b.detach().float().requires_grad_()]
    fn = lambda x, w, b: fastdl.ops.batch_norm(x, None, None, w, b, training=True)  # noqa: E731
    expected = penalty_gradients(fn, [x, w, b], (0, 1))
    got = penalty_gradients(fn, low, (0, 1))
    for a, e, t in zip(got[1:], expected[1:], low):
        assert a.dtype == t.dtype
        torch.testing.assert_close(a.double(), e, rtol=5e-2, atol=5e-2 * e.abs().max().item())


def test_first_order_gradients_unchanged_by_create_graph():
    # create_graph=True records the backward ops' own nodes; the first-order values are the same.
    x, w, b = leaves((2, 3, 6, 6), (4, 3, 3, 3), (4,))
    fn = lambda x, w, b: fastdl.ops.max_pool2d(  # noqa: E731
        fastdl.ops.batch_norm(fastdl.ops.conv2d(x, w, b), None, None, training=True), 2)
    plain = torch.autograd.grad(fn(x, w, b).square().sum(), (x, w, b))
    recorded = torch.autograd.grad(fn(x, w, b).square().sum(), (x, w, b), create_graph=True)
    for a, r in zip(plain, recorded):
        assert r.requires_grad
        torch.testing.assert_close(r, a, rtol=0, atol=0)
    assert gradcheck(fn, (x, w, b))


# ---- forward-mode AD

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm,options,x_shape,w_shape", CONV_CASES)
def test_conv2d_forward_ad(algorithm, options, x_shape, w_shape, device):
    inputs = leaves(x_shape, w_shape, (w_shape[0],), device=device)
    fn = conv_fn(algorithm, options)
    assert gradcheck(fn, inputs, check_forward_ad=True)
    assert gradgradcheck(fn, inputs, check_fwd_over_rev=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_pool_forward_ad(case, device):
    x = distinct((2, 3, 7, 8), device)
    assert gradcheck(POOL_CASES[case][0], (x,), check_forward_ad=True)
    assert gradgradcheck(POOL_CASES[case][0], (x,), check_fwd_over_rev=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_forward_ad(training, affine, device):
    inputs = leaves((4, 3, 5, 6), *([(3,), (3,)] if affine else []), device=device)
    assert gradcheck(bn_fn(fastdl.ops.batch_norm, training, 3, device), inputs, check_forward_ad=True)


def test_batch_norm_forward_over_reverse_raises():
    (x,) = leaves((4, 3, 5))
    fn = bn_fn(fastdl.ops.batch_norm, True, 3, "cpu")
    with pytest.raises(RuntimeError, match="fastdl.batch_norm_backward: forward-mode AD .* is not supported"):
        gradgradcheck(fn, (x,), check_fwd_over_rev=True)


@pytest.mark.parametrize("module", [fastdl.nn.LSTM, fastdl.nn.GRU])
def test_rnn_forward_ad_raises(module):
    layer = module(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    name = "lstm_layer" if module is fastdl.nn.LSTM else "gru_layer"
    with pytest.raises(RuntimeError, match=f"fastdl.{name}: forward-mode AD .* is not supported"):
        torch.func.jvp(lambda t: layer(t)[0], (x,), (torch.ones_like(x),))


def test_jvp_of_a_converted_model_matches_torch():
    torch.manual_seed(0)
    # Batch statistics (no running ones: a transform refuses their in-place update, in torch too).
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1),
                                    torch.nn.BatchNorm2d(8, track_running_stats=False), torch.nn.ReLU(),
                                    torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 4, 3), torch.nn.AvgPool2d(2),
                                    torch.nn.AdaptiveAvgPool2d(1)).double()
    ours = fastdl.convert(reference, inplace=False)
    x, v = torch.randn(4, 3, 12, 12, dtype=torch.float64), torch.randn(4, 3, 12, 12, dtype=torch.float64)
    out, tangent = torch.func.jvp(ours, (x,), (v,))
    expected_out, expected_tangent = torch.func.jvp(reference, (x,), (v,))
    torch.testing.assert_close(out, expected_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tangent, expected_tangent, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("strategy", ["reverse-mode", "forward-mode"])
def test_conv2d_hessian_matches_torch(strategy):
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    def hessian(conv):
        return torch.autograd.functional.hessian(lambda w_: conv(x, w_).pow(3).sum(), w, vectorize=True,
                                                 outer_jacobian_strategy=strategy)
    torch.testing.assert_close(hessian(fastdl.ops.conv2d), hessian(F.conv2d), rtol=1e-10, atol=1e-10)


# ---- compiled autograd

def compiled_autograd_gradients(model, *inputs):
    model.zero_grad()
    with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
        out = model(*inputs)
        (out[0] if isinstance(out, tuple) else out).square().sum().backward()
    return [p.grad for p in model.parameters()]


def test_compiled_autograd_cnn():
    # Batch norm and max pooling with indices return outputs that are not differentiable, which
    # compiled autograd refuses to see marked as such (csrc/autograd/autograd_utils.h).
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                    torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 4, 3), torch.nn.AvgPool2d(2),
                                    torch.nn.AdaptiveAvgPool2d(1))
    ours = fastdl.convert(reference, inplace=False)
    x = torch.randn(4, 3, 12, 12)
    reference(x).square().sum().backward()
    for got, expected in zip(compiled_autograd_gradients(ours, x), (p.grad for p in reference.parameters())):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
        out, _ = fastdl.ops.max_pool2d(x, 2, return_indices=True)
        out.square().sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(F.max_pool2d(x, 2).square().sum(), x)[0])


@pytest.mark.parametrize("module", [torch.nn.LSTM, torch.nn.GRU])
def test_compiled_autograd_rnn(module):
    torch.manual_seed(0)
    reference = module(3, 5, num_layers=2, bidirectional=True)
    ours = fastdl.convert(reference, inplace=False)
    x = torch.randn(6, 4, 3)
    reference(x)[0].square().sum().backward()
    for got, expected in zip(compiled_autograd_gradients(ours, x), (p.grad for p in reference.parameters())):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
