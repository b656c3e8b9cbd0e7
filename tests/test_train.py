"""The training command (python -m fastdl.train): accuracy targets on the bundled data, the two
backends' agreement, AMP, exact resume from a checkpoint, the data readers, and multi-process
training with DistributedDataParallel (gloo, two CPU processes)."""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import fastdl
from fastdl import models
from fastdl.train import checkpoint, distributed, main
from fastdl.train.data import CODE_TAGS, load_images, load_tagged_code, load_text
from fastdl.train.loop import train
from fastdl.train.progress import Progress

# One thread: these models are small, and on a shared machine a second OpenMP thread that waits
# for a core it does not get slows a step down by up to fifty times.
ONE_THREAD = ["--threads", "1"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_lenet5_reaches_97_percent_on_the_digits():
    fastdl.nn.reset_fallback_counts()
    result = main(["lenet5", *ONE_THREAD])
    assert result["test_accuracy"] >= 0.97
    assert fastdl.nn.fallback_counts() == {}


def test_lstm_classifier_reaches_95_percent_on_the_digits():
    result = main(["lstm_classifier", *ONE_THREAD])
    assert result["test_accuracy"] >= 0.95


def test_char_lm_learns_more_than_character_frequencies():
    result = main(["char_lstm", "--max-chars", "200000", "--lr", "0.005", *ONE_THREAD])
    assert result["test_loss"] < 0.8 * result["unigram_entropy"]


@pytest.mark.parametrize("model", ["lenet5", "lstm_classifier"])
def test_both_backends_follow_the_same_loss_curve(model):
    runs = [main([model, "--backend", backend, "--max-steps", "30", *ONE_THREAD])["losses"] for backend in ("fastdl", "torch")]
    torch.testing.assert_close(torch.tensor(runs[0]), torch.tensor(runs[1]), rtol=1e-4, atol=1e-5)


def test_amp_trains_in_bfloat16_on_the_cpu():
    losses = main(["lenet5", "--amp", "--max-steps", "5", *ONE_THREAD])["losses"]
    assert len(losses) == 5 and all(np.isfinite(losses))


def test_tagger_trains_on_python_token_classes():
    result = main(["bilstm_tagger", "--max-chars", "30000", "--max-steps", "20", *ONE_THREAD])
    assert result["test_accuracy"] > 0.5


@pytest.mark.parametrize("extra_steps", [0, 7], ids=["after-epoch-1", "within-epoch-2"])
def test_resume_continues_exactly(tmp_path, extra_steps):
    straight, first, resumed = (str(tmp_path / f"{name}.pt") for name in ("straight", "first", "resumed"))
    args = ["lenet5", "--epochs", "2", *ONE_THREAD]
    one_epoch = len(main([*args, "--checkpoint", straight])["losses"]) // 2
    main([*args, "--max-steps", str(one_epoch + extra_steps), "--checkpoint", first])
    main([*args, "--resume", first, "--checkpoint", resumed])
    a, b = checkpoint.load(straight), checkpoint.load(resumed)
    assert (a["epoch"], a["done_in_epoch"], a["steps"]) == (b["epoch"], b["done_in_epoch"], b["steps"]) == (2, 0, 2 * one_epoch)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-6, atol=1e-7)


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    # Closed explicitly: under Python 3.12 an unclosed GzipFile's buffered writes are not yet in the
    # file when the next line reads it (0 bytes read back; the GPU machine's run failed this way).
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def standardized(raw: np.ndarray) -> torch.Tensor:
    x = torch.tensor(raw, dtype=torch.float32)
    return (x - x.mean()) / x.std()


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_mnist_idx_files_are_read(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (2, 40, 28, 28)), rng.integers(0, 10, (2, 40))
    for i, split in enumerate(("train", "t10k")):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte{suffix}", images[i])
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte{suffix}", labels[i])
    data = load_images(str(tmp_path), (28, 28))
    assert data.train[0].shape == (40, 1, 28, 28) and data.in_channels == 1
    torch.testing.assert_close(data.train[0].flatten(), standardized(images[0]).flatten())
    assert data.train[1].tolist() == labels[0].tolist() and data.test[1].tolist() == labels[1].tolist()
    assert len(main(["lenet5", "--data", str(tmp_path), "--max-steps", "2", *ONE_THREAD])["losses"]) == 2


@pytest.mark.parametrize("format", ["pickle", "binary"])
def test_cifar10_batches_are_read(tmp_path, format):
    rng = np.random.default_rng(0)
    folder = tmp_path / f"cifar-10-batches-{'py' if format == 'pickle' else 'bin'}"
    folder.mkdir()
    images, labels = rng.integers(0, 256, (6, 4, 3072), dtype=np.uint8), rng.integers(0, 10, (6, 4))
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, image, label in zip(names, images, labels):
        if format == "pickle":
            (folder / name).write_bytes(pickle.dumps({b"data": image, b"labels": label.tolist()}))
        else:
            np.concatenate([label[:, None].astype(np.uint8), image], axis=1).tofile(folder / f"{name}.bin")
    data = load_images(str(tmp_path), (32, 32))
    assert data.train[0].shape == (20, 3, 32, 32) and data.in_channels == 3
    raw = images[:5].reshape(20, 3, 32, 32)
    expected = (torch.tensor(raw, dtype=torch.float32) - torch.tensor(raw.mean(axis=(0, 2, 3)), dtype=torch.float32).view(1, 3, 1, 1))
    expected /= torch.tensor(raw.std(axis=(0, 2, 3), ddof=1), dtype=torch.float32).view(1, 3, 1, 1)
    torch.testing.assert_close(data.train[0], expected)
    assert data.train[1].tolist() == labels[:5].flatten().tolist() and data.test[1].tolist() == labels[5].tolist()


def test_text_files_become_shifted_windows(tmp_path):
    (tmp_path / "a.txt").write_text("abcabcabcabc" * 10)
    data = load_text(str(tmp_path), seq_len=5, max_chars=120)
    inputs, targets = data.train
    assert data.vocab == "abc" and inputs.shape[1] == 5
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert data.unigram_entropy == pytest.approx(np.log(3))


def test_python_characters_are_tagged_by_token_class(tmp_path):
    (tmp_path / "m.py").write_text("if x1 == 'a':  # c\n    y = 2\n" * 10)
    data = load_tagged_code(str(tmp_path), seq_len=29, max_chars=10_000)
    ids, tags = data.train[0][0], data.train[1][0]
    text = "".join(data.vocab[i] for i in ids)
    assert text == "if x1 == 'a':  # c\n    y = 2\n"
    assert CODE_TAGS[:5] == ("space", "name", "keyword", "number", "string")
    assert "".join(map(str, tags.tolist())) == "2201105504445006660" + "0000105030"


# Multi-process: DDP over two gloo processes equals one process on the combined batch.

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixed_batches(steps: int, batch: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 1, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)) for _ in range(steps)]


def train_lenet(world: distributed.World, batches) -> torch.nn.Module:
    """A converted LeNet-5 (no batch norm, no dropout) after plain SGD steps on `batches`."""
    torch.manual_seed(0)
    model = fastdl.convert(models.create("lenet5"))
    trained = distributed.wrap(model, world)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train(trained, batches, optimizer, constant, scaler, False, Progress("", len(batches), None))
    return model


def ddp_worker(rank: int, port: int, steps: int, batch: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    world = distributed.join("cpu")
    finished = False
    try:
        share = list(distributed.sampler(batch, world, seed=0, shuffle=False))
        model = train_lenet(world, [(x[share], y[share]) for x, y in fixed_batches(steps, batch)])
        if world.is_main:
            torch.save({"weights": model.state_dict(), "grads": {n: p.grad for n, p in model.named_parameters()}}, out)
        finished = True
    finally:
        distributed.leave(finished)


def test_ddp_on_two_processes_equals_one_process_on_the_combined_batch(tmp_path):
    steps, batch, out = 3, 8, str(tmp_path / "ddp.pt")
    mp.spawn(ddp_worker, args=(free_port(), steps, batch, out), nprocs=2)
    ddp = torch.load(out)
    single = train_lenet(distributed.World(), fixed_batches(steps, batch))
    for name, p in single.named_parameters():
        torch.testing.assert_close(ddp["grads"][name], p.grad, rtol=1e-4, atol=1e-6)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(ddp["weights"][key], value, rtol=1e-5, atol=1e-6)


def test_torchrun_two_processes(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "fastdl.train", "lenet5", "--device", "cpu", "--max-steps", "3",
               "--checkpoint", str(tmp_path / "run.pt")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lenet5 (fastdl, cpu, 2 processes): test accuracy" in done.stdout
    assert checkpoint.load(tmp_path / "run.pt")["steps"] == 3
