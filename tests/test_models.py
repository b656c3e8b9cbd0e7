"""fastdl.models: the registry; layer shapes, state_dict keys and parameter counts against torchvision
and hand counts; every model converted against stock (outputs in eval and training mode, gradients);
checkpoints between converted and stock models; revert; fine-tuning with frozen layers; torchvision's
models converted; the sequence classifier's reading of images; CharLM.sample."""

import copy
import functools

import pytest
import torch
import torchvision
from torch import nn

import fastdl
from conftest import MODEL_FLOAT32_REL_MAX, REDUCED_PRECISION_FACTOR
from fastdl import models

TORCHVISION = {
    "alexnet": torchvision.models.alexnet,
    "vgg11": torchvision.models.vgg11,
    "vgg11_bn": torchvision.models.vgg11_bn,
    "vgg16": torchvision.models.vgg16,
    "vgg16_bn": torchvision.models.vgg16_bn,
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "googlenet": functools.partial(torchvision.models.googlenet, aux_logits=False, init_weights=False),
}
# The arguments that make our model torchvision's layer for layer.
AS_TORCHVISION = {"googlenet": dict(large_kernel=3)}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes(model: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(7)  # the same dropout masks on every side
    return model(x)


def in_float64(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    return copy.deepcopy(model).double(), x.double() if x.is_floating_point() else x


def assert_match_torch(ours: list, theirs: list, reference, names: list[str]) -> None:
    """fastdl's float32 results against torch's: see MODEL_FLOAT32_REL_MAX. reference() gives the
    float64 results, computed only when a direct comparison fails."""
    expected = None
    for i, (name, a, b) in enumerate(zip(names, ours, theirs, strict=True)):
        scale = b.abs().max().item()
        if (a - b).abs().max().item() <= MODEL_FLOAT32_REL_MAX * scale:
            continue
        expected = expected or [r.detach() for r in reference()]
        r = expected[i]
        error, torch_error = (a.double() - r).abs().max().item(), (b.double() - r).abs().max().item()
        assert error <= REDUCED_PRECISION_FACTOR * torch_error, (
            f"{name}: fastdl differs from torch by {(a - b).abs().max().item():.3g} (values up to {scale:.3g}) "
            f"and from float64 by {error:.3g}, torch from float64 by {torch_error:.3g}")


def fresh(name: str) -> nn.Module:
    """The model `name` with the same weights at every call."""
    torch.manual_seed(0)
    return models.create(name)


def stock_and_converted(name: str) -> tuple[nn.Module, nn.Module]:
    stock = fresh(name)
    return stock, fastdl.convert(copy.deepcopy(stock))


def small_input(name: str, model: nn.Module, size: int | None = None) -> torch.Tensor:
    return models.random_input(name, model, 2, size or models.spec(name).small_input_size,
                               torch.Generator().manual_seed(1))


# ---- registry ---------------------------------------------------------------------------------------------


def test_registry():
    assert len(set(models.names())) == len(models.names())
    assert {models.spec(n).kind for n in models.names()} == set(models.KINDS)
    assert {"lenet5", "mnist_cnn", "lstm_classifier", "char_lstm", "bilstm_tagger", *TORCHVISION} <= set(models.names())
    with pytest.raises(KeyError, match="unknown model 'lenet'"):
        models.create("lenet")
    with pytest.raises(TypeError, match="takes no in_channels"):
        models.create("lstm_classifier", in_channels=3)
    assert models.create("resnet18", in_channels=1).conv1.in_channels == 1


@pytest.mark.parametrize("name", models.names())
def test_output_shapes_at_natural_and_small_input(name):
    s = models.spec(name)
    with torch.device("meta"):
        model = models.create(name, num_classes=7)
        for size in (s.input_size, s.small_input_size):
            out = model(models.random_input(name, model, 2, size))
            assert out.shape == ((2, 7) if s.kind in ("image", "sequence") else (2, size, 7))


# ---- parameter counts and layer shapes ------------------------------------------------------------------


@pytest.mark.parametrize("name", TORCHVISION)
def test_layer_shapes_and_keys_are_torchvisions(name):
    with torch.device("meta"):
        ours, theirs = models.create(name, 1000, 3, **AS_TORCHVISION.get(name, {})), TORCHVISION[name]()
    assert parameter_count(ours) == parameter_count(theirs)
    assert shapes(ours) == shapes(theirs)


def test_googlenet_has_the_papers_5x5_branches():
    with torch.device("meta"):
        model = models.create("googlenet", 1000, 3)
    assert model.inception3a.branch3[1].conv.kernel_size == (5, 5)
    assert parameter_count(model) == 7_005_832


def test_digit_cnn_parameter_counts():
    lenet5 = (1 * 25 * 6 + 6) + (6 * 25 * 16 + 16) + (16 * 25 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    mnist_cnn = (1 * 25 * 32 + 32) + (32 * 25 * 64 + 64) + (7 * 7 * 64 * 1024 + 1024) + (1024 * 10 + 10)
    assert parameter_count(models.create("lenet5")) == lenet5 == 61_706
    assert parameter_count(models.create("mnist_cnn")) == mnist_cnn == 3_274_634


# ---- converted against stock --------------------------------------------------------------------------------


def output_and_statistics(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The output, then the batch norms' running statistics (updated by a forward in training mode)."""
    return [run(model, x)] + [b for b in model.buffers() if b.is_floating_point()]


@pytest.mark.parametrize("name", models.names())
def test_converted_model_matches_stock(name):
    stock, converted = stock_and_converted(name)
    x = small_input(name, stock)
    names = ["output"] + [n for n, b in stock.named_buffers() if b.is_floating_point()]
    for training in (False, True):  # eval first: it leaves the running statistics as created
        stock.train(training)
        converted.train(training)
        assert_match_torch(output_and_statistics(converted, x), output_and_statistics(stock, x),
                           lambda: output_and_statistics(*in_float64(fresh(name).train(training), x)), names)


# name -> input side (None: the spec's natural size); ResNet-18 at 64x64 keeps its last batch norms'
# statistics over 8 values rather than 2.
GRADIENT_MODELS = {"lenet5": None, "mnist_cnn": None, "resnet18": 64, "lstm_classifier": None,
                   "gru_classifier": None, "char_lstm": None, "char_gru": None, "bilstm_tagger": None}


def gradients(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The gradients of a random weighting of the output, for the input (when a float) and every parameter."""
    x = x.detach().clone().requires_grad_(x.is_floating_point())
    out = run(model, x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    wants = [x] * x.requires_grad + list(model.parameters())
    return list(torch.autograd.grad((out * weights).sum(), wants))


@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_converted_model_gradients_match_stock(name):
    stock, converted = stock_and_converted(name)
    x = small_input(name, stock, GRADIENT_MODELS[name] or models.spec(name).input_size)
    names = ["input"] * x.is_floating_point() + [n for n, _ in stock.named_parameters()]
    assert_match_torch(gradients(converted.train(), x), gradients(stock.train(), x),
                       lambda: gradients(*in_float64(fresh(name).train(), x)), names)


# ---- checkpoints, revert, fine-tuning ----------------------------------------------------------------------


def fastdl_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m).__module__.startswith("fastdl.nn")]


@pytest.mark.parametrize("name", models.names())
def test_convert_covers_every_layer_and_revert_restores_torch_nn(name):
    with torch.device("meta"):
        model = models.create(name)
    types = [type(m) for m in model.modules()]
    fastdl.convert(model)
    assert fastdl_layers(model)
    assert not [m for m in model.modules() if type(m) in fastdl.nn.REPLACEMENTS]
    fastdl.revert(model)
    assert fastdl_layers(model) == []
    assert [type(m) for m in model.modules()] == types


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "lstm_classifier"])
def test_checkpoint_of_converted_model_loads_into_stock_and_back(name, tmp_path):
    torch.manual_seed(0)
    converted = fastdl.convert(models.create(name))
    x = small_input(name, converted)
    converted.train()(x)  # running statistics away from their initial values
    torch.save(converted.state_dict(), tmp_path / "model.pt")
    stock = models.create(name)
    stock.load_state_dict(torch.load(tmp_path / "model.pt"), strict=True)
    assert fastdl_layers(stock) == []
    torch.save(stock.state_dict(), tmp_path / "stock.pt")
    back = fastdl.convert(models.create(name))
    back.load_state_dict(torch.load(tmp_path / "stock.pt"), strict=True)
    out = stock.eval()(x)
    for model in (converted, back):
        assert_match_torch([model.eval()(x)], [out], lambda: [run(*in_float64(stock, x))], ["output"])


def test_fine_tuning_changes_only_unfrozen_parameters_and_keeps_batch_norm_statistics():
    torch.manual_seed(0)
    model = fastdl.convert(models.create("resnet18", num_classes=10, in_channels=1))
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("layer4."))
    model.fc = nn.Linear(model.fc.in_features, 3)  # a new head, trainable
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, labels = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 1])
    nn.functional.cross_entropy(model(x), labels).backward()
    optimizer.step()
    after = model.state_dict()
    for name, p in model.named_parameters():
        assert torch.equal(before[name], after[name]) != p.requires_grad, name
    for name, _ in model.named_buffers():
        assert torch.equal(before[name], after[name]), name


# ---- torchvision's models converted ------------------------------------------------------------------------

TORCHVISION_CONVERTED = {"resnet18": 32, "vgg11_bn": 32, "alexnet": 64, "googlenet": 32}  # smallest input sides


@pytest.mark.parametrize("name", TORCHVISION_CONVERTED)
def test_torchvision_model_converted_matches_it_and_ours(name):
    torch.manual_seed(0)
    theirs = TORCHVISION[name]().eval()
    converted = fastdl.convert(copy.deepcopy(theirs))
    ours = models.create(name, 1000, 3, **AS_TORCHVISION.get(name, {})).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, TORCHVISION_CONVERTED[name], TORCHVISION_CONVERTED[name])
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=0)
        assert_match_torch([converted(x)], [expected], lambda: [run(*in_float64(theirs, x))], ["output"])


# ---- model behaviour -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sequence_classifier_reads_image_rows_and_classifies_from_final_states(cell):
    torch.manual_seed(0)
    model = models.SequenceClassifier(4, input_size=6, hidden_size=5, num_layers=2, bidirectional=True, cell=cell)
    images = torch.randn(3, 1, 7, 6)
    out = model(images)
    torch.testing.assert_close(out, model(images[:, 0]), rtol=0, atol=0)
    steps, _ = model.rnn(images[:, 0])  # forward direction ends at the last step, backward at the first
    torch.testing.assert_close(out, model.head(torch.cat([steps[:, -1, :5], steps[:, 0, 5:]], dim=1)))
    tokens = models.create(f"{cell}_classifier", num_classes=4, vocab_size=20)
    assert tokens(models.random_input(f"{cell}_classifier", tokens, 3, 9)).shape == (3, 4)


def test_char_lm_greedy_sampling_is_deterministic_and_follows_forward():
    torch.manual_seed(0)
    lm = models.create("char_lstm", num_classes=12, dropout=0.5).train()
    start = torch.tensor([3, 1, 4])
    out = lm.sample(start, 6, temperature=0)
    assert out.shape == (9,) and torch.equal(out[:3], start)
    assert lm.training  # the mode is restored
    assert torch.equal(lm.sample(start, 6, temperature=0), out)
    lm.eval()
    # Each new token is the most likely one after those before it.
    assert torch.equal(lm(out[None, :-1])[0, 2:].argmax(-1), out[3:])
    assert torch.equal(fastdl.convert(copy.deepcopy(lm)).sample(start, 6, temperature=0), out)


def test_char_lm_temperature_sampling_draws_from_the_generator():
    torch.manual_seed(0)
    lm = models.create("char_gru", num_classes=12)
    start = torch.tensor([[1, 2], [3, 4]])

    def draw(seed, t=1.0):
        return lm.sample(start, 20, temperature=t, generator=torch.Generator().manual_seed(seed))

    a = draw(0)
    assert a.shape == (2, 22) and ((a >= 0) & (a < 12)).all()
    assert torch.equal(draw(0), a)
    assert not torch.equal(draw(1), a)
    assert torch.equal(draw(1, t=1e-6), lm.sample(start, 20, temperature=0))  # cold: the greedy choice
    with pytest.raises(ValueError, match="temperature"):
        lm.sample(start, 3, temperature=-1.0)
    with pytest.raises(ValueError, match="T0 >= 1"):
        lm.sample(torch.zeros(2, 0, dtype=torch.long), 3)
