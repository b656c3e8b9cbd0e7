"""The training command's data, all in memory and never downloaded.

Images (N,C,H,W float32, normalized per channel with the training set's statistics, resized to the
model's input size) come from scikit-learn's bundled handwritten digits by default, or from MNIST
(idx files, optionally gzipped) or CIFAR-10 (python pickle or binary batches) in a folder given by
path. Text comes from files given by path, or by default from a fixed, sorted selection of the
Python standard library's sources; it is cut into windows of characters, the targets being the
next characters (a language model) or each character's Python token class (a tagger).
"""

from __future__ import annotations

import gzip
import io
import keyword
import pickle
import sysconfig
import tokenize
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SPLIT_SEED = 0  # the digits' train/test split is fixed, whatever --seed says
DIGITS_TEST_FRACTION = 0.2
TEXT_TEST_FRACTION = 0.1
CODE_TAGS = ("space", "name", "keyword", "number", "string", "operator", "comment")


@dataclass
class Data:
    """Inputs and targets of both splits, and what the model must be built for."""

    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    num_classes: int
    in_channels: int = 1
    vocab: str = ""  # a text's distinct characters; an input id indexes this string
    unigram_entropy: float | None = None  # nats per character of the text
    description: str = ""


def load_images(source: str | None, size: tuple[int, int]) -> Data:
    """Images at `size` (H,W): the digits for None or "digits", else MNIST or CIFAR-10 under a path."""
    if source in (None, "digits"):
        (train, test), name = _digits(), "scikit-learn digits"
    else:
        root = Path(source)
        reader = _mnist if _glob(root, "*-images*idx3-ubyte*") else _cifar10
        (train, test), name = reader(root), f"{reader.__name__.strip('_')} at {root}"
    (x, y), (tx, ty) = train, test
    x, tx = _resize(x, size), _resize(tx, size)
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    x, tx = (x - mean) / std, (tx - mean) / std
    return Data((x, y), (tx, ty), num_classes=int(y.max()) + 1, in_channels=x.shape[1],
                description=f"{name}: {len(y)} train, {len(ty)} test images, {tuple(x.shape[1:])}")


def load_text(source: str | None, seq_len: int, max_chars: int) -> Data:
    """A character language model's data: windows of `seq_len` characters (inputs) and the same
    shifted by one (targets), (N,T) int64, from the first max_chars characters of the files under
    `source` (a file, or a folder read in sorted order), or for None or "stdlib" of the standard
    library's top-level .py files. The last tenth is the test split."""
    files, name = _text_files(source, "*")
    texts = ((path.read_text(encoding="utf-8", errors="replace"),) for path in files)
    text = "".join(piece for piece, in _capped(texts, max_chars))
    vocab, ids = _encode(text)
    train, test = _split_windows(ids[:-1], ids[1:], seq_len)
    return Data(train, test, num_classes=len(vocab), vocab=vocab, unigram_entropy=_entropy(text),
                description=f"{name}: {len(text)} characters, {len(vocab)} distinct, windows of {seq_len}")


def load_tagged_code(source: str | None, seq_len: int, max_chars: int) -> Data:
    """A tagger's data: windows of `seq_len` characters of Python source (inputs) and each
    character's token class from Python's own tokenizer (targets, CODE_TAGS), (N,T) int64. The .py
    files under `source`, or the standard library's for None or "stdlib"; files that do not
    tokenize are left out. The last tenth is the test split."""
    files, name = _text_files(source, "*.py")
    tagged = (t for t in map(_tag_code, files) if t is not None)
    text, tags = "", []
    for piece, piece_tags in _capped(tagged, max_chars):
        text += piece
        tags += piece_tags
    vocab, ids = _encode(text)
    train, test = _split_windows(ids, torch.tensor(tags), seq_len)
    return Data(train, test, num_classes=len(CODE_TAGS), vocab=vocab,
                description=f"{name}: {len(text)} characters of Python tagged {'/'.join(CODE_TAGS)}")


def shift_randomly(images: Tensor, max_shift: int) -> Tensor:
    """Each image of (N,C,H,W) moved by its own random whole-pixel offset of at most max_shift in
    each direction, the border repeated into the uncovered edge (augmentation: a digit means the
    same a little off centre)."""
    n, _, h, w = images.shape
    padded = F.pad(images, [max_shift] * 4, mode="replicate")
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (n, 1), device=images.device) for _ in range(2))
    rows = (dy + torch.arange(h, device=images.device))[:, :, None]
    cols = (dx + torch.arange(w, device=images.device))[:, None, :]
    return padded[torch.arange(n, device=images.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def _digits() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(len(y) * DIGITS_TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def _mnist(root: Path):
    """MNIST's idx files (train-images-idx3-ubyte, t10k-labels-idx1-ubyte, ... optionally .gz)."""
    def split(prefix):
        images = _read_idx(_glob(root, f"{prefix}-images*idx3-ubyte*")[0])
        labels = _read_idx(_glob(root, f"{prefix}-labels*idx1-ubyte*")[0])
        return torch.from_numpy(images).float().unsqueeze(1), torch.from_numpy(labels).long()

    return split("train"), split("t10k")


def _read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes: two zero bytes, type code 0x08, rank, big-endian int32 sizes."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = bytearray(f.read())  # writable, as torch.from_numpy wants
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    rank = raw[3]
    shape = np.frombuffer(raw, dtype=">i4", count=rank, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def _cifar10(root: Path):
    """CIFAR-10's python pickle batches (data_batch_1..5, test_batch) or binary ones (*.bin)."""
    def split(pattern):
        if pickles := [p for p in _glob(root, pattern) if p.suffix != ".bin" and p.is_file()]:
            batches = [pickle.loads(p.read_bytes(), encoding="bytes") for p in pickles]
            data = np.concatenate([b[b"data"] for b in batches])
            labels = np.concatenate([b[b"labels"] for b in batches])
        elif binaries := _glob(root, pattern + ".bin"):
            records = np.concatenate([np.fromfile(p, dtype=np.uint8).reshape(-1, 1 + 3072) for p in binaries])
            data, labels = records[:, 1:], records[:, 0]
        else:
            raise FileNotFoundError(f"no MNIST idx files and no CIFAR-10 batches ({pattern}) under {root}")
        images = torch.from_numpy(np.ascontiguousarray(data)).float().reshape(-1, 3, 32, 32)
        return images, torch.from_numpy(np.asarray(labels)).long()

    return split("data_batch_[1-5]"), split("test_batch")


def _glob(root: Path, pattern: str) -> list[Path]:
    """Matches in the folder itself, or else in its subfolders (the archives' own folder names)."""
    return sorted(root.glob(pattern)) or sorted(root.glob(f"*/{pattern}"))


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _text_files(source: str | None, pattern: str) -> tuple[list[Path], str]:
    if source in (None, "stdlib"):
        return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")), "Python standard library"
    root = Path(source)
    return (sorted(p for p in root.rglob(pattern) if p.is_file()) if root.is_dir() else [root]), str(root)


def _capped(pieces, max_chars: int):
    """The leading pieces, each a tuple of aligned sequences (text, and per-character values), up to
    max_chars characters in all, the last one cut short."""
    left = max_chars
    for piece in pieces:
        if left <= 0:
            return
        yield tuple(sequence[:left] for sequence in piece)
        left -= len(piece[0])


def _encode(text: str) -> tuple[str, Tensor]:
    """The sorted distinct characters, and the text as their indices (int64)."""
    if not text:
        raise ValueError("no text to train on")
    vocab = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(vocab)}
    return vocab, torch.tensor([lookup[c] for c in text], dtype=torch.int64)


def _split_windows(inputs: Tensor, targets: Tensor, seq_len: int):
    """Train and test (inputs, targets) of non-overlapping windows, (N,T), of two aligned streams."""
    cut = int(len(inputs) * (1 - TEXT_TEST_FRACTION))
    splits = []
    for part in (slice(0, cut), slice(cut, None)):
        n = len(inputs[part]) // seq_len
        if n < 1:
            raise ValueError(f"{len(inputs)} characters are too few for windows of {seq_len}")
        splits.append((inputs[part][: n * seq_len].view(n, seq_len), targets[part][: n * seq_len].view(n, seq_len)))
    return splits


def _tag_code(path: Path) -> tuple[str, list[int]] | None:
    """A Python file's text and the CODE_TAGS index of each character; None if it does not tokenize."""
    text = path.read_text(encoding="utf-8", errors="replace")
    line_starts = np.cumsum([0] + [len(line) for line in io.StringIO(text).readlines()])
    tags = [0] * len(text)
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            tag = _token_tag(token)
            start = line_starts[token.start[0] - 1] + token.start[1]
            end = line_starts[token.end[0] - 1] + token.end[1]
            tags[start:end] = [tag] * (end - start)
    except (SyntaxError, tokenize.TokenError):
        return None
    return text, tags


def _token_tag(token: tokenize.TokenInfo) -> int:
    if token.type == tokenize.NAME:
        return CODE_TAGS.index("keyword" if keyword.iskeyword(token.string) else "name")
    name = tokenize.tok_name[token.type]
    if name == "STRING" or name.startswith("FSTRING"):
        return CODE_TAGS.index("string")
    return CODE_TAGS.index({"NUMBER": "number", "OP": "operator", "COMMENT": "comment"}.get(name, "space"))


def _entropy(text: str) -> float:
    counts = np.array(list(Counter(text).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


__all__ = ["CODE_TAGS", "Data", "load_images", "load_tagged_code", "load_text", "shift_randomly"]
