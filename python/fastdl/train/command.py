"""python -m fastdl.train: train a reference model on fastdl's kernels or on PyTorch's.

    python -m fastdl.train MODEL [--data NAME|PATH] [--epochs N] [--batch-size B] [--lr LR]
        [--optimizer sgd|adam] [--size S] [--shift PIXELS] [--max-chars N] [--max-steps N] [--device cpu|cuda]
        [--backend fastdl|torch] [--amp] [--seed N] [--threads N] [--checkpoint FILE] [--resume FILE]

Both backends run the same code; the only difference is fastdl.convert(model) for --backend
fastdl, so their times compare fairly. Under torchrun every process trains its share of each batch
in DistributedDataParallel (see fastdl.train.distributed).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import dataclass, fields

import torch

import fastdl
from fastdl import models
from fastdl.train import checkpoint, distributed
from fastdl.train.data import Data, load_images, load_tagged_code, load_text, shift_randomly
from fastdl.train.loop import batches, evaluate, train
from fastdl.train.progress import Progress

# Per kind of model: the optimizer and its learning rate, batch size and epochs unless given.
DEFAULTS = {
    "image": dict(optimizer="sgd", lr=0.01, batch_size=64, epochs=10),
    "sequence": dict(optimizer="adam", lr=3e-3, batch_size=64, epochs=10),
    "lm": dict(optimizer="adam", lr=3e-3, batch_size=32, epochs=1),
    "tagger": dict(optimizer="adam", lr=3e-3, batch_size=32, epochs=2),
}
# The two small digit CNNs (a few layers, no batch norm) learn fastest at ten times the rate that
# keeps the deep ImageNet networks from diverging.
LEARNING_RATES = {"lenet5": 0.1, "mnist_cnn": 0.1}
SGD_MOMENTUM = 0.9
DEFAULT_MAX_CHARS = 1_000_000


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fastdl.train", description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=models.names())
    p.add_argument("--data", default=None,
                   help="digits (images, default), stdlib (text, default), or a path: a folder of MNIST idx "
                        "files or CIFAR-10 batches, or text files for a language model or Python files for a tagger")
    p.add_argument("--epochs", type=int, default=None, help="epochs in all, a resumed run's included")
    p.add_argument("--batch-size", type=int, default=None, help="per process")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate, decayed to zero by a cosine over --epochs")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=None,
                   help=f"sgd (momentum {SGD_MOMENTUM}) for images, adam for sequences by default")
    p.add_argument("--size", type=int, default=None, help="image side or sequence length (default: the model's)")
    p.add_argument("--shift", type=int, default=None,
                   help="augment training images by random shifts of up to this many pixels (default: size/16)")
    p.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="text read at most")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps in all (the learning rate schedule stays the --epochs one)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", choices=["fastdl", "torch"], default="fastdl")
    p.add_argument("--amp", action="store_true", help="autocast: bfloat16 on the CPU, float16 on CUDA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--checkpoint", default=None, help="save here after every epoch and at the end")
    p.add_argument("--resume", default=None, help="continue the run saved in this checkpoint")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = LEARNING_RATES.get(args.model)
    for name, value in DEFAULTS[models.spec(args.model).kind].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> dict:
    """Train as the command line says; returns the summary (and per-step training losses)."""
    args = parse_args(argv)
    world = distributed.join(args.device)
    finished = False
    try:
        summary = run(args, world)
        finished = True
        return summary
    finally:
        distributed.leave(finished)


def load_data(args: argparse.Namespace) -> tuple[Data, dict]:
    """The data for the model's kind, and the arguments that fit the model to it."""
    spec = models.spec(args.model)
    size = args.size or spec.input_size
    if spec.kind == "lm":
        data = load_text(args.data, size, args.max_chars)
        return data, dict(num_classes=data.num_classes)
    if spec.kind == "tagger":
        data = load_tagged_code(args.data, size, args.max_chars)
        return data, dict(num_classes=data.num_classes, vocab_size=len(data.vocab))
    data = load_images(args.data, (size, size))
    fit = dict(in_channels=data.in_channels) if spec.kind == "image" else dict(input_size=data.in_channels * size)
    return data, dict(num_classes=data.num_classes, **fit)


@dataclass
class Trainee:
    """The model (converted for the fastdl backend) and what trains it; all of it checkpointed."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    def state_dict(self) -> dict:
        return {name: getattr(self, name).state_dict() for name in STATE_PARTS}

    def load_state_dict(self, state: dict) -> None:
        for name in STATE_PARTS:
            getattr(self, name).load_state_dict(state[name])


STATE_PARTS = [f.name for f in fields(Trainee)]


def build(args: argparse.Namespace, model_arguments: dict, device: torch.device, total_steps: int) -> Trainee:
    """The model on `device`, its optimizer, the learning rate's schedule (cosine decay to zero over
    total_steps, computed from the step, so that a run resumed with more epochs continues on the
    longer schedule) and the gradient scaler."""
    torch.manual_seed(args.seed)
    model = models.create(args.model, **model_arguments)
    if args.backend == "fastdl":
        fastdl.convert(model)
    model.to(device)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=SGD_MOMENTUM)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
    return Trainee(model, optimizer, scheduler, scaler)


def run(args: argparse.Namespace, world: distributed.World) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    say = print if world.is_main else (lambda *a, **k: None)
    data, model_arguments = load_data(args)
    train_x, train_y = data.train
    order = distributed.sampler(len(train_y), world, args.seed)
    batches_per_epoch = math.ceil(len(order) / args.batch_size)
    max_steps = args.max_steps if args.max_steps is not None else math.inf
    images = models.spec(args.model).kind in ("image", "sequence")
    shift = args.shift if args.shift is not None else train_x.shape[-1] // 16
    trainee = build(args, model_arguments, world.device, args.epochs * batches_per_epoch)
    model = trainee.model
    torch.manual_seed(args.seed + world.rank)  # dropout differs between processes
    epoch, done_in_epoch, steps = resume(args, trainee, world) if args.resume else (0, 0, 0)
    trained = distributed.wrap(model, world)
    say(f"{args.model} on {data.description}; {args.backend} backend, {world.device.type}, "
        f"{processes(world.size)}{', amp' if args.amp else ''}")

    losses, samples, seconds, tested = [], 0, 0.0, None
    while epoch < args.epochs and steps < max_steps:
        order.set_epoch(epoch)
        todo = min(batches_per_epoch - done_in_epoch, max_steps - steps)
        progress = Progress(f"epoch {epoch + 1}/{args.epochs}", todo, sys.stderr if world.is_main else None)
        epoch_batches = batches(train_x, train_y, list(order), args.batch_size, world.device, skip=done_in_epoch)
        if images and shift:
            epoch_batches = ((shift_randomly(x, shift), y) for x, y in epoch_batches)
        losses += train(trained, itertools.islice(epoch_batches, todo), trainee.optimizer, trainee.scheduler,
                        trainee.scaler, args.amp, progress)
        progress.close()
        samples, seconds = samples + progress.samples, seconds + progress.seconds
        steps, done_in_epoch = steps + todo, done_in_epoch + todo
        if done_in_epoch == batches_per_epoch:
            epoch, done_in_epoch = epoch + 1, 0
        if world.is_main:
            test_x, test_y = data.test
            tested = evaluate(model, batches(test_x, test_y, range(len(test_y)), args.batch_size, world.device),
                              args.amp)
            say(f"  test loss {tested[0]:.4f}  acc {100 * tested[1]:.2f}%")
        if args.checkpoint:
            # Every process's RNG state goes in (a collective), then the main process writes the file.
            rng = distributed.gather(checkpoint.rng_state(world.device), world)
            if world.is_main:
                checkpoint.save(args.checkpoint, **trainee.state_dict(), rng=rng, epoch=epoch,
                                done_in_epoch=done_in_epoch, steps=steps, args=vars(args))

    summary = dict(model=args.model, backend=args.backend, device=world.device.type, processes=world.size,
                   epochs=epoch + done_in_epoch / batches_per_epoch, steps=steps, seconds=seconds,
                   samples_per_second=samples * world.size / max(seconds, 1e-9), losses=[float(x) for x in losses])
    if tested is not None:
        summary.update(test_loss=tested[0], test_accuracy=tested[1], unigram_entropy=data.unigram_entropy)
        say(summary_line(summary))
    return summary


def resume(args: argparse.Namespace, trainee: Trainee, world: distributed.World) -> tuple[int, int, int]:
    """Load the checkpoint into `trainee` and this process's RNG; returns (epoch, batches done in
    it, steps done)."""
    saved = checkpoint.load(args.resume)
    if saved["args"]["model"] != args.model:
        raise ValueError(f"{args.resume} holds a {saved['args']['model']}, not a {args.model}")
    trainee.load_state_dict(saved)
    checkpoint.set_rng_state(saved["rng"][world.rank % len(saved["rng"])], world.device)
    return saved["epoch"], saved["done_in_epoch"], saved["steps"]


def processes(count: int) -> str:
    return f"{count} process{'es' if count > 1 else ''}"


def summary_line(s: dict) -> str:
    if s["unigram_entropy"] is not None:
        quality = (f"test loss {s['test_loss']:.4f} nats/char ({s['test_loss'] / s['unigram_entropy']:.2f}x the "
                   f"unigram entropy {s['unigram_entropy']:.4f}), accuracy {100 * s['test_accuracy']:.2f}%")
    else:
        quality = f"test accuracy {100 * s['test_accuracy']:.2f}%, loss {s['test_loss']:.4f}"
    return (f"{s['model']} ({s['backend']}, {s['device']}, {processes(s['processes'])}): {quality}; "
            f"{s['steps']} steps, {s['epochs']:.2f} epochs "
            f"in {s['seconds']:.1f} s, {s['samples_per_second']:,.0f} samples/s")
