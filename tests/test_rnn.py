"""LSTM and GRU against torch.nn with the same weights: outputs, final states and every gradient
(input, h0, c0, weights, biases) over a grid of sizes, layers, directions, batch_first, bias,
sequence lengths and packed variable-length batches; unbatched input; cells; dropout between
layers (statistically in training, exactly in eval); LSTM with projections (proj_size); gradcheck,
opcheck, torch.compile; bad input; convert. CUDA cases carry the cuda marker."""

import copy
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastdl
from conftest import REDUCED_PRECISION_FACTOR, tolerance

DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)]
KINDS = ["LSTM", "GRU"]

# input_size, hidden_size, num_layers, bidirectional, batch_first, bias, T, N, given states
GRID = [
    (3, 5, 1, False, False, True, 7, 4, True),
    (8, 16, 2, True, True, True, 5, 3, False),
    (4, 9, 3, False, True, False, 1, 1, True),
    (17, 33, 1, True, False, False, 4, 2, True),
    (1, 1, 1, False, False, True, 3, 5, False),
    (6, 24, 2, True, False, True, 10, 1, True),
    (5, 8, 1, False, False, True, 1, 6, True),
    (6, 10, 2, True, True, False, 5, 9, True),
    (80, 256, 1, False, False, True, 3, 1, True),  # CPU LSTM: W_ih too large per row to re-read per step
    (3, 4, 2, True, False, True, 3, 300, True),  # above the CPU packed product's batch limit: at::mm
]


def make_pair(kind, dtype, device, *args, **kwargs):
    torch.manual_seed(len(args) + sum(int(a) for a in args))
    ref = getattr(torch.nn, kind)(*args, **kwargs).to(device=device, dtype=dtype)
    with torch.no_grad():  # weights away from torch's small uniform init, to exercise saturation
        for p in ref.parameters():
            p.mul_(3.0)
    ours = getattr(fastdl.nn, kind)(*args, **kwargs).to(device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def states_of(kind, num_states, batch, hidden, dtype, device, gen, proj=0):
    """h0 (and c0) for num_states layers and directions; with an LSTM's proj_size, h0 is proj wide."""
    def shape(width):
        return (num_states, batch, width) if batch is not None else (num_states, width)
    h = torch.randn(shape(proj or hidden), generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    c = torch.randn(shape(hidden), generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return (h, c) if kind == "LSTM" else h


def leaves(x):
    if isinstance(x, tuple):
        return tuple(t.detach().clone().requires_grad_() for t in x)
    return None if x is None else x.detach().clone().requires_grad_()


def flat(x):
    return list(x) if isinstance(x, tuple) else ([] if x is None else [x])


def run_and_backward(module, x, hx, gen_seed):
    """Forward, then backward of a random weighting of the output and every final state."""
    out, states = module(x, hx)
    data = out.data if hasattr(out, "batch_sizes") else out
    g = torch.Generator().manual_seed(gen_seed)
    loss = (data * torch.randn(data.shape, generator=g, dtype=torch.float64).to(data)).sum()
    for s in flat(states):
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=torch.float64).to(s)).sum()
    loss.backward()
    return out, states


def results(module, x, hx):
    """(name, tensor) for the output, the final states and the gradients of x, hx and every parameter."""
    xl, hl = leaves(x), leaves(hx)
    out, states = run_and_backward(module, xl, hl, 11)
    named = [("output", out)] + [(f"final state {i}", s) for i, s in enumerate(flat(states))]
    named += [("grad of x", xl.grad)] + [(f"grad of state {i}", h.grad) for i, h in enumerate(flat(hl))]
    return named + [(f"grad of {n}", p.grad) for n, p in module.named_parameters()]


def max_error(t, ref64):
    return (t.double() - ref64).abs().max().item() if t.numel() else 0.0


def compare(kind, ref, ours, x, hx, dtype):
    """Every result of ours within the table's tolerance of torch's; on CUDA in float32 (cuDNN sums in
    another order) a result outside it passes if its error against a float64 run of torch's module is at
    most REDUCED_PRECISION_FACTOR times torch's own (plus a few float32 roundings of the largest value)."""
    tol = tolerance("rnn", dtype)
    exact = None
    if dtype == torch.float32 and x.is_cuda:  # first, while torch's module holds no gradients to copy
        hx64 = tuple(t.double() for t in hx) if isinstance(hx, tuple) else None if hx is None else hx.double()
        exact = results(copy.deepcopy(ref).double(), x.double(), hx64)
    mine, theirs = results(ours, x, hx), results(ref, x, hx)
    for i, ((name, got), (_, want)) in enumerate(zip(mine, theirs, strict=True)):
        assert got is not None, name
        if exact is None:
            torch.testing.assert_close(got, want, **tol, msg=lambda m, name=name: f"{name}: {m}")
            continue
        ref64 = exact[i][1]
        floor = 4 * torch.finfo(dtype).eps * ref64.abs().max().item()
        err_ours, err_torch = max_error(got, ref64), max_error(want, ref64)
        assert torch.allclose(got, want, **tol) or err_ours <= REDUCED_PRECISION_FACTOR * err_torch + floor, \
            f"{name}: error {err_ours:.3g} against float64, torch's {err_torch:.3g}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", GRID, ids=[f"case{i}" for i in range(len(GRID))])
def test_layer_matches_torch(case, kind, dtype, device):
    I, H, L, bidir, batch_first, bias, T, N, given = case
    ref, ours = make_pair(kind, dtype, device, I, H, num_layers=L, bidirectional=bidir, batch_first=batch_first,
                          bias=bias)
    gen = torch.Generator().manual_seed(T * 100 + N)
    shape = (N, T, I) if batch_first else (T, N, I)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    hx = states_of(kind, L * (2 if bidir else 1), N, H, dtype, device, gen) if given else None
    compare(kind, ref, ours, x, hx, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lengths,enforce_sorted,bidir,layers,given", [
    ([5, 3, 3, 1], True, False, 1, True),
    ([2, 6, 1, 4], False, True, 2, True),
    ([3, 3, 3], False, True, 1, False),
    ([4], True, True, 2, False),
    ([1, 7, 2, 7, 5], False, False, 2, True),
    ([3, 1, 4, 1, 5, 9, 2, 6, 5], False, True, 1, True),  # 9 sequences: the CPU LSTM's per-step projection
])
def test_packed_matches_torch(lengths, enforce_sorted, bidir, layers, given, kind, device):
    check_packed(kind, device, torch.float64, lengths, enforce_sorted, bidir, layers, given)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_row_blocks_match_torch(kind, dtype):
    """With 16 or more rows per thread, each CPU thread runs the time loop of its own block of rows
    (csrc/cpu/rnn.cpp, for_row_blocks): uneven blocks (37 rows on two threads: 20 and 17), and
    packed sequences whose per-step batch shrinks across a block boundary, in both directions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref, ours = make_pair(kind, dtype, "cpu", 5, 12, num_layers=2, bidirectional=True)
        gen = torch.Generator().manual_seed(37)
        x = torch.randn((6, 37, 5), generator=gen, dtype=torch.float64).to(dtype)
        compare(kind, ref, ours, x, states_of(kind, 4, 37, 12, dtype, "cpu", gen), dtype)
        lengths = [(i * 7) % 9 + 1 for i in range(40)]
        check_packed(kind, "cpu", dtype, lengths, False, True, 1, True)
    finally:
        torch.set_num_threads(threads)


def check_packed(kind, device, dtype, lengths, enforce_sorted, bidir, layers, given, proj=0):
    I, H = 3, 7
    ref, ours = make_pair(kind, dtype, device, I, H, num_layers=layers, bidirectional=bidir,
                          **({"proj_size": proj} if proj else {}))
    gen = torch.Generator().manual_seed(sum(lengths))
    padded = torch.randn((max(lengths), len(lengths), I), generator=gen, dtype=dtype).to(device)
    hx = states_of(kind, layers * (2 if bidir else 1), len(lengths), H, dtype, device, gen, proj) if given else None
    tol = tolerance("rnn", dtype)
    xa, xb = leaves(padded), leaves(padded)
    ha, hb = leaves(hx), leaves(hx)
    pack = lambda t: pack_padded_sequence(t, torch.tensor(lengths), enforce_sorted=enforce_sorted)  # noqa: E731
    out_r, st_r = run_and_backward(ref, pack(xa), ha, 5)
    out_o, st_o = run_and_backward(ours, pack(xb), hb, 5)
    assert torch.equal(out_o.batch_sizes, out_r.batch_sizes)
    if not enforce_sorted:
        assert torch.equal(out_o.unsorted_indices, out_r.unsorted_indices)
    torch.testing.assert_close(pad_packed_sequence(out_o)[0], pad_packed_sequence(out_r)[0], **tol)
    for a, b in zip(flat(st_o), flat(st_r), strict=True):
        torch.testing.assert_close(a, b, **tol)
    torch.testing.assert_close(xb.grad, xa.grad, **tol)
    for a, b in zip(flat(hb), flat(ha), strict=True):
        torch.testing.assert_close(a.grad, b.grad, **tol)
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, **tol)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("given", [False, True])
def test_unbatched_matches_torch(kind, batch_first, given):
    dtype = torch.float64
    ref, ours = make_pair(kind, dtype, "cpu", 4, 6, num_layers=2, bidirectional=True, batch_first=batch_first)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((5, 4), generator=gen, dtype=dtype)
    hx = states_of(kind, 4, None, 6, dtype, "cpu", gen) if given else None
    compare(kind, ref, ours, x, hx, dtype)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,bias,given", [((4, 3), True, True), ((1, 3), False, True), ((3,), True, True),
                                              ((6, 3), True, False), ((3,), False, False)])
def test_cell_matches_torch(kind, dtype, shape, bias, given):
    torch.manual_seed(1)
    ref = getattr(torch.nn, kind)(3, 10, bias=bias).to(dtype)
    ours = getattr(fastdl.nn, kind)(3, 10, bias=bias).to(dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape, dtype=dtype)
    state_shape = (*shape[:-1], 10)
    hx = None
    if given:
        hx = (torch.randn(state_shape, dtype=dtype), torch.randn(state_shape, dtype=dtype))
        hx = hx if kind == "LSTMCell" else hx[0]
    tol = tolerance("rnn", dtype)
    xa, xb, ha, hb = leaves(x), leaves(x), leaves(hx), leaves(hx)
    out_r, out_o = ref(xa, ha), ours(xb, hb)
    loss = lambda outs: sum((o * torch.arange(o.numel(), dtype=dtype).view(o.shape).cos()).sum()  # noqa: E731
                            for o in flat(outs))
    loss(out_r).backward()
    loss(out_o).backward()
    for a, b in zip(flat(out_o), flat(out_r), strict=True):
        torch.testing.assert_close(a, b, **tol)
    torch.testing.assert_close(xb.grad, xa.grad, **tol)
    for a, b in zip(flat(hb), flat(ha), strict=True):
        torch.testing.assert_close(a.grad, b.grad, **tol)
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, **tol)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_cpu_autocast_runs_in_the_given_dtype(kind):
    # fastdl registers no CPU autocast kernel: under autocast its layers compute in float32, products
    # included, and give what they give outside it (torch.nn.LSTM itself fails there in 2.14.1).
    torch.manual_seed(4)
    layer = getattr(fastdl.nn, kind)(8, 16)
    x = torch.randn(5, 3, 8) if kind in ("LSTM", "GRU") else torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = torch.utils._pytree.tree_leaves(layer(x))
    for a, b in zip(inside, torch.utils._pytree.tree_leaves(layer(x)), strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_eval_is_exact_and_training_is_statistically_torchs(kind):
    dtype = torch.float64
    ref, ours = make_pair(kind, dtype, "cpu", 4, 8, num_layers=3, dropout=0.4)
    x = torch.randn(6, 3, 4, dtype=dtype)
    ref.eval(), ours.eval()
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **tolerance("rnn", dtype))
    ref.train(), ours.train()
    runs = 400
    with torch.no_grad():
        samples_r = torch.stack([ref(x)[0] for _ in range(runs)])
        samples_o = torch.stack([ours(x)[0] for _ in range(runs)])
    # Dropout acts: outputs vary from run to run, about as much as torch's do ...
    var_r, var_o = samples_r.var(0).mean(), samples_o.var(0).mean()
    assert var_r > 1e-4
    assert 0.75 < (var_o / var_r).item() < 1.33
    # ... around the same mean (inverted dropout keeps the expectation of each layer's input).
    spread = (samples_r.var(0) / runs).sqrt().clamp_min(1e-6)
    z = ((samples_o.mean(0) - samples_r.mean(0)) / spread).abs()
    assert z.mean().item() < 2.0
    # The last layer's output is never dropped.
    single_r, single_o = make_pair(kind, dtype, "cpu", 4, 8, num_layers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that dropout needs num_layers > 1
        single_r.dropout = single_o.dropout = 0.5
    single_r.train(), single_o.train()
    torch.testing.assert_close(single_o(x)[0], single_r(x)[0], **tolerance("rnn", dtype))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch_sizes", [[], [3, 2, 2, 1]])
def test_gradcheck_layer_ops(reverse, batch_sizes):
    gen = torch.Generator().manual_seed(7)
    I, H, N = 3, 4, 3
    shape = (sum(batch_sizes), I) if batch_sizes else (3, N, I)

    def rand(*s):
        return torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_()

    x, h0, c0 = rand(*shape), rand(N, H), rand(N, H)
    lstm_w = (rand(4 * H, I), rand(4 * H, H), rand(4 * H), rand(4 * H))
    gru_w = (rand(3 * H, I), rand(3 * H, H), rand(3 * H), rand(3 * H))

    def lstm(*a, w_hr=None):
        return torch.ops.fastdl.lstm_layer(*a, w_hr, batch_sizes, reverse, False)[:3]

    def gru(*a):
        return torch.ops.fastdl.gru_layer(*a, batch_sizes, reverse, False)[:2]

    assert torch.autograd.gradcheck(lstm, (x, h0, c0, *lstm_w))
    assert torch.autograd.gradcheck(gru, (x, h0, *gru_w))
    # Without biases, and gradients of the output alone (final states unused).
    assert torch.autograd.gradcheck(lambda *a: lstm(*a, None, None)[0], (x, h0, c0, *lstm_w[:2]))
    assert torch.autograd.gradcheck(lambda *a: gru(*a, None, None)[0], (x, h0, *gru_w[:2]))
    # With projections (proj_size 2): h0 and weight_hh's columns 2 wide, weight_hr (2, H).
    P = 2
    proj_w = (lstm_w[0], rand(4 * H, P), *lstm_w[2:])
    assert torch.autograd.gradcheck(lambda x, h0, c0, *w: lstm(x, h0, c0, *w[:4], w_hr=w[4]),
                                    (x, rand(N, P), c0, *proj_w, rand(P, H)))
    assert torch.autograd.gradcheck(lambda x, h0, c0, *w: lstm(x, h0, c0, w[0], w[1], None, None, w_hr=w[2])[1],
                                    (x, rand(N, P), c0, *proj_w[:2], rand(P, H)))


def test_opcheck():
    fd = torch.ops.fastdl
    gen = torch.Generator().manual_seed(2)

    def rand(*s):
        return torch.randn(s, generator=gen).requires_grad_()

    I, H, N = 3, 5, 4
    for batch_sizes, x in (([], rand(3, N, I)), ([4, 3, 1], rand(8, I))):
        h0, c0 = rand(N, H), rand(N, H)
        lw = (rand(4 * H, I), rand(4 * H, H), rand(4 * H), rand(4 * H))
        gw = (rand(3 * H, I), rand(3 * H, H), rand(3 * H), None)
        P = 2  # projections: h0 and weight_hh's columns P wide, weight_hr (P, H)
        pw = (lw[0], rand(4 * H, P), *lw[2:], rand(P, H))
        for reverse in (False, True):
            torch.library.opcheck(fd.lstm_layer.default, (x, h0, c0, *lw, None, batch_sizes, reverse, False))
            torch.library.opcheck(fd.lstm_layer.default, (x, h0[:, :P], c0, *pw, batch_sizes, reverse, False))
            torch.library.opcheck(fd.gru_layer.default, (x, h0, *gw, batch_sizes, reverse, False))
        out, hy, cy, gates, cells, hidden = fd.lstm_layer(x.detach(), h0.detach(), c0.detach(),
                                                          *(w.detach() for w in lw), None, batch_sizes, False, True)
        pout, phy, pcy, pgates, pcells, phidden = fd.lstm_layer(x.detach(), h0[:, :P].detach(), c0.detach(),
                                                                *(w.detach() for w in pw), batch_sizes, False, True)
        gout, ghy, saved = fd.gru_layer(x.detach(), h0.detach(), *(w.detach() for w in gw[:3]), None, batch_sizes,
                                        False, True)
        for mask in ([True, True, True], [False, True, False]):
            torch.library.opcheck(fd.lstm_layer_backward.default,
                                  (torch.randn_like(out), None, torch.randn_like(cy), x.detach(), h0.detach(),
                                   c0.detach(), lw[0].detach(), lw[1].detach(), None, out, gates, cells, hidden,
                                   batch_sizes, False, mask))
            torch.library.opcheck(fd.lstm_layer_backward.default,
                                  (torch.randn_like(pout), torch.randn_like(phy), None, x.detach(),
                                   h0[:, :P].detach(), c0.detach(), pw[0].detach(), pw[1].detach(), pw[4].detach(),
                                   pout, pgates, pcells, phidden, batch_sizes, False, mask))
            torch.library.opcheck(fd.gru_layer_backward.default,
                                  (None, torch.randn_like(ghy), x.detach(), h0.detach(), gw[0].detach(),
                                   gw[1].detach(), gout, saved, batch_sizes, False, mask))


@pytest.mark.parametrize("kind,extra", [("LSTM", {}), ("GRU", {}), ("LSTM", {"proj_size": 3})],
                         ids=["LSTM", "GRU", "LSTM-proj"])
def test_torch_compile_training_step_matches_eager(kind, extra):
    # Dynamo refuses every module that is a torch.nn.LSTM/GRU (fastdl's are) unless allow_rnn is set;
    # the functional API compiles as it is.
    ref, ours = make_pair(kind, torch.float32, "cpu", 4, 6, num_layers=2, bidirectional=True, batch_first=True,
                          **extra)
    weights = [getattr(ours, n) for n in ours._flat_weights_names]
    run = fastdl.ops.lstm if kind == "LSTM" else fastdl.ops.gru

    def functional(x):
        return run(x, weights, num_layers=2, bidirectional=True, batch_first=True)

    x = torch.randn(3, 5, 4)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        outputs = [torch.compile(functional, fullgraph=True)(x), torch.compile(ours, fullgraph=True)(x)]
    out_e, st_e = ref(x)
    (out_e.sum() + sum(s.sum() for s in flat(st_e))).backward()
    for out_c, st_c in outputs:
        torch.testing.assert_close(out_c, out_e, **tolerance("rnn", torch.float32))
        for p in ours.parameters():
            p.grad = None
        (out_c.sum() + sum(s.sum() for s in flat(st_c))).backward()
        for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch(kind):
    ref, ours = make_pair(kind, torch.float32, "cpu", 4, 6, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 4, requires_grad=True)
    out_o, st_o = ours(x)
    out_r, st_r = ref(x)
    assert out_o.shape == out_r.shape == (5, 0, 12)
    for a, b in zip(flat(st_o), flat(st_r), strict=True):
        assert a.shape == b.shape
    out_o.sum().backward()
    assert x.grad.shape == x.shape
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in ours.parameters())


def test_bad_input_names_the_argument():
    fd = torch.ops.fastdl
    x, h0, c0 = torch.randn(3, 2, 4), torch.randn(2, 5), torch.randn(2, 5)
    w_ih, w_hh, b = torch.randn(20, 4), torch.randn(20, 5), torch.randn(20)
    with pytest.raises(RuntimeError, match=r"expected weight_ih of shape \(20, 6\)"):
        fd.lstm_layer(torch.randn(3, 2, 6), h0, c0, w_ih, w_hh, b, b, None, [], False, False)
    with pytest.raises(RuntimeError, match=r"expected h0 of shape \[2, 5\]"):
        fd.lstm_layer(x, torch.randn(3, 5), c0, w_ih, w_hh, b, b, None, [], False, False)
    with pytest.raises(RuntimeError, match=r"expected c0 of shape \[2, 5\]"):
        fd.lstm_layer(x, h0, torch.randn(2, 4), w_ih, w_hh, b, b, None, [], False, False)
    with pytest.raises(RuntimeError, match="expected weight_hh of shape"):
        fd.gru_layer(x, h0, torch.randn(15, 4), torch.randn(20, 5), None, None, [], False, False)
    with pytest.raises(RuntimeError, match=r"expected bias_hh of shape \[20\]"):
        fd.lstm_layer(x, h0, c0, w_ih, w_hh, b, torch.randn(15), None, [], False, False)
    with pytest.raises(RuntimeError, match="expected h0 to have the dtype of input"):
        fd.lstm_layer(x, h0.double(), c0, w_ih, w_hh, b, b, None, [], False, False)
    # Projections (proj_size 3): weight_hh (20, 3), h0 (2, 3), weight_hr (3, 5).
    w_hh3, h03, w_hr = torch.randn(20, 3), torch.randn(2, 3), torch.randn(3, 5)
    with pytest.raises(RuntimeError, match=r"expected weight_hh of shape \[20, 3\]"):
        fd.lstm_layer(x, h03, c0, w_ih, w_hh, b, b, w_hr, [], False, False)
    with pytest.raises(RuntimeError, match=r"expected h0 of shape \[2, 3\]"):
        fd.lstm_layer(x, h0, c0, w_ih, w_hh3, b, b, w_hr, [], False, False)
    with pytest.raises(RuntimeError, match=r"expected weight_hr of shape \(proj_size, hidden_size\)"):
        fd.lstm_layer(x, h03, c0, w_ih, w_hh3, b, b, torch.randn(15), [], False, False)
    with pytest.raises(RuntimeError, match="expected weight_hr to have the dtype of input"):
        fd.lstm_layer(x, h03, c0, w_ih, w_hh3, b, b, w_hr.double(), [], False, False)
    with pytest.raises(RuntimeError, match=r"expected c0 of shape \[2, 5\]"):
        fd.lstm_layer(x, h03, h03, w_ih, w_hh3, b, b, w_hr, [], False, False)
    with pytest.raises(RuntimeError, match="expected input to be float32 or float64"):
        fd.gru_layer(x.long(), h0, torch.randn(15, 4), torch.randn(15, 5), None, None, [], False, False)
    with pytest.raises(RuntimeError, match=r"expected input of shape \(T, N, input_size\)"):
        fd.gru_layer(torch.randn(2, 4), h0, torch.randn(15, 4), torch.randn(15, 5), None, None, [], False, False)
    with pytest.raises(RuntimeError, match="at least one time step"):
        fd.gru_layer(torch.randn(0, 2, 4), h0, torch.randn(15, 4), torch.randn(15, 5), None, None, [], False, False)
    with pytest.raises(RuntimeError, match="batch_sizes to be positive and non-increasing"):
        fd.gru_layer(torch.randn(5, 4), h0, torch.randn(15, 4), torch.randn(15, 5), None, None, [2, 3], False, False)
    with pytest.raises(RuntimeError, match=r"sum\(batch_sizes\) = 4 rows"):
        fd.gru_layer(torch.randn(5, 4), h0, torch.randn(15, 4), torch.randn(15, 5), None, None, [2, 2], False, False)
    with pytest.raises(RuntimeError, match="keep_workspace=True"):
        fd.gru_layer_backward(None, h0, x, h0, torch.randn(15, 4), torch.randn(15, 5), torch.randn(3, 2, 5),
                              torch.empty(0), [], False, [True, True, True])
    # The modules reject what torch.nn rejects, with torch's messages.
    lstm = fastdl.nn.LSTM(4, 5, num_layers=2)
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. Expected 4, got 6"):
        lstm(torch.randn(3, 2, 6))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(2, 2, 5\), got \[1, 2, 5\]"):
        lstm(x, (torch.randn(1, 2, 5), torch.randn(2, 2, 5)))
    with pytest.raises(ValueError, match="input dtype .* does not match weight dtype"):
        lstm(x.double())
    with pytest.raises(ValueError, match="LSTM: Expected input to be 2D or 3D, got 4D instead"):
        lstm(torch.randn(3, 2, 4, 1))
    with pytest.raises(RuntimeError, match="For batched 3-D input, hx should also be 3-D"):
        fastdl.nn.GRU(4, 5)(x, torch.randn(2, 5))
    with pytest.raises(RuntimeError, match=r"expected hx\[1\] of shape \(2, 5\)"):
        fastdl.nn.LSTMCell(4, 5)(torch.randn(2, 4), (torch.randn(2, 5), torch.randn(3, 5)))
    with pytest.raises(RuntimeError, match=r"fastdl.gru_cell: expected input of shape \(N, 4\) .* got shape \(2, 3\)"):
        fastdl.nn.GRUCell(4, 5)(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match=r"fastdl.lstm_cell: expected input of shape \(N, 4\)"):
        fastdl.nn.LSTMCell(4, 5)(torch.randn(3, 6))
    with pytest.raises(ValueError, match=r"fastdl.lstm_cell: expected hx to be a pair \(h, c\) .* a sequence of 1"):
        fastdl.nn.LSTMCell(4, 5)(torch.randn(2, 4), (torch.randn(2, 5),))
    with pytest.raises(ValueError, match=r"fastdl.lstm_cell: expected hx to be a pair \(h, c\) .* got Tensor"):
        fastdl.nn.LSTMCell(4, 5)(torch.randn(2, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="GRUCell: Expected input to be 1D or 2D, got 3D instead"):
        fastdl.nn.GRUCell(4, 5)(torch.randn(2, 3, 4))


def test_double_backward_raises():
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    lstm = fastdl.nn.LSTM(4, 5).double()
    out, _ = lstm(x)
    (g,) = torch.autograd.grad((out * out).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for fastdl::lstm_layer_backward is not implemented"):
        g.sum().backward()


# input_size, hidden_size, proj_size, num_layers, bidirectional, batch_first, bias, T, N, given states
PROJ_GRID = [
    (3, 6, 4, 1, False, False, True, 5, 3, True),
    (5, 8, 3, 2, True, True, True, 4, 2, False),
    (4, 7, 2, 2, True, False, False, 3, 9, True),
    (6, 5, 1, 1, False, False, True, 1, 1, True),
    (4, 9, 5, 2, False, False, True, 3, 40, True),  # 16+ rows per CPU thread: each runs its own rows
    (3, 4, 2, 1, True, False, True, 3, 300, True),  # above the CPU packed product's batch limit: at::mm
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", PROJ_GRID, ids=[f"case{i}" for i in range(len(PROJ_GRID))])
def test_lstm_with_projections_matches_torch(case, dtype, device):
    """proj_size > 0: h = W_hr (o * tanh(c)), h0, h_n and the output proj_size wide, c hidden_size wide."""
    fastdl.nn.reset_fallback_counts()
    I, H, P, L, bidir, batch_first, bias, T, N, given = case
    ref, ours = make_pair("LSTM", dtype, device, I, H, num_layers=L, bidirectional=bidir, batch_first=batch_first,
                          bias=bias, proj_size=P)
    gen = torch.Generator().manual_seed(T * 100 + N)
    shape = (N, T, I) if batch_first else (T, N, I)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    hx = states_of("LSTM", L * (2 if bidir else 1), N, H, dtype, device, gen, P) if given else None
    compare("LSTM", ref, ours, x, hx, dtype)
    assert fastdl.nn.fallback_counts() == {}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lengths,enforce_sorted,bidir,layers,given", [
    ([5, 3, 3, 1], True, False, 1, True),
    ([2, 6, 1, 4], False, True, 2, True),
    ([1, 7, 2, 7, 5], False, False, 2, False),
])
def test_packed_lstm_with_projections_matches_torch(lengths, enforce_sorted, bidir, layers, given, device):
    check_packed("LSTM", device, torch.float64, lengths, enforce_sorted, bidir, layers, given, proj=3)


def test_unbatched_lstm_with_projections_matches_torch():
    dtype = torch.float64
    ref, ours = make_pair("LSTM", dtype, "cpu", 4, 6, num_layers=2, bidirectional=True, proj_size=2)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((5, 4), generator=gen, dtype=dtype)
    compare("LSTM", ref, ours, x, states_of("LSTM", 4, None, 6, dtype, "cpu", gen, 2), dtype)
    compare("LSTM", ref, ours, x, None, dtype)


def test_modules_keep_torchs_interface_and_convert_maps_them():
    model = torch.nn.ModuleDict({"lstm": torch.nn.LSTM(4, 6, 2, bidirectional=True), "gru": torch.nn.GRU(4, 6),
                                 "lstm_cell": torch.nn.LSTMCell(4, 6), "gru_cell": torch.nn.GRUCell(4, 6, bias=False)})
    stock = {k: repr(v) for k, v in model.items()}
    keys = list(model.state_dict())
    fastdl.convert(model)
    assert [type(m) for m in model.values()] == [fastdl.nn.LSTM, fastdl.nn.GRU, fastdl.nn.LSTMCell,
                                                 fastdl.nn.GRUCell]
    assert {k: repr(v) for k, v in model.items()} == stock
    assert list(model.state_dict()) == keys
    model["lstm"].flatten_parameters()
    x = torch.randn(3, 2, 4)
    out, _ = model["lstm"](x)
    fastdl.revert(model)
    assert type(model["lstm"]) is torch.nn.LSTM
    torch.testing.assert_close(model["lstm"](x)[0], out, **tolerance("rnn", torch.float32))


class _FakeStream:
    """Stands in for torch.cuda.Stream on the CPU: records what _on_two_streams asks of it."""

    def __init__(self, *args, **kwargs):
        self.waited_for = []

    def wait_stream(self, other):
        self.waited_for.append(other)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_two_stream_plumbing_keeps_directions_and_layers_in_order(kind, monkeypatch):
    """fastdl/ops/rnn.py's _on_two_streams (CUDA only) with the stream calls faked on the CPU: outputs and
    final states in torch's order, the side stream ordered after the caller's and back, every tensor that
    crosses recorded on the stream that uses it. tests/test_rnn_cuda.py runs it on streams."""
    import contextlib

    import fastdl.ops.rnn as rnn_ops

    main, entered, recorded = _FakeStream(), [], []
    monkeypatch.setattr(rnn_ops, "_concurrent_directions", lambda x: True)
    monkeypatch.setattr(rnn_ops, "_SIDE_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: entered.append(s) or contextlib.nullcontext())
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: recorded.append((t.data_ptr(), s)), raising=False)
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(6, 10, num_layers=2, bidirectional=True)
    ours = getattr(fastdl.nn, kind)(6, 10, num_layers=2, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(7, 3, 6)
    got, want = ours(x), ref(x)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(got[1] if kind == "LSTM" else (got[1],), want[1] if kind == "LSTM" else (want[1],)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    side = rnn_ops._SIDE_STREAMS[0]
    assert entered == [side, side]  # one side-stream section per layer
    assert side.waited_for == [main, main] and main.waited_for == [side, side]
    states = 2 if kind == "LSTM" else 1
    assert sum(s is side for _, s in recorded) == 2 * (1 + states + 4)  # per layer: input, states, weights
    assert sum(s is main for _, s in recorded) == 2 * (1 + states)  # per layer: output, final states
