"""Reference recurrent models on stock nn.LSTM / nn.GRU (batch_first): a sequence classifier, a
character-level language model and a bidirectional LSTM tagger. Shapes: N batch, T steps, I input
features, V vocabulary."""

from __future__ import annotations

import torch
from torch import Tensor, nn

RECURRENT_LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU}


def recurrent_layer(cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float,
                    bidirectional: bool = False) -> nn.LSTM | nn.GRU:
    if cell not in RECURRENT_LAYERS:
        raise ValueError(f"cell must be one of {sorted(RECURRENT_LAYERS)}, but got {cell!r}")
    return RECURRENT_LAYERS[cell](input_size, hidden_size, num_layers, batch_first=True, dropout=dropout,
                                  bidirectional=bidirectional)


class SequenceClassifier(nn.Module):
    """An LSTM or GRU classifying whole sequences from the last layer's final hidden state.

    Input: (N, T, I) features with I = input_size; or (N, C, H, W) images read row by row, the top
    row first (T = H, I = C * W: input_size 28 for MNIST digits); or, when vocab_size is given,
    (N, T) int64 token ids embedded into input_size features. Output: (N, num_classes) logits from
    the final hidden state of the last layer; bidirectional, the forward direction's (after step
    T-1) and the backward direction's (after step 0) concatenated.
    """

    def __init__(self, num_classes: int = 10, input_size: int = 28, hidden_size: int = 128, num_layers: int = 1,
                 bidirectional: bool = False, cell: str = "lstm", vocab_size: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, input_size) if vocab_size is not None else None
        self.rnn = recurrent_layer(cell, input_size, hidden_size, num_layers, dropout, bidirectional)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        elif x.dim() == 4:
            x = x.permute(0, 2, 1, 3).flatten(2)
        _, state = self.rnn(x)
        h = state[0] if isinstance(self.rnn, nn.LSTM) else state  # (num_layers * directions, N, hidden)
        directions = 2 if self.rnn.bidirectional else 1
        return self.head(torch.cat(list(h[-directions:]), dim=1))


class CharLM(nn.Module):
    """A character-level language model: Embedding -> stacked LSTM or GRU -> Linear.

    forward: (N, T) int64 ids in [0, vocab_size) -> (N, T, vocab_size) logits of the token that
    follows each position (train with cross-entropy against the ids shifted by one).
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 32, hidden_size: int = 256, num_layers: int = 2,
                 cell: str = "lstm", dropout: float = 0.0):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = recurrent_layer(cell, embedding_dim, hidden_size, num_layers, dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, ids: Tensor) -> Tensor:
        return self.logits_and_state(ids)[0]

    def logits_and_state(self, ids: Tensor, state=None) -> tuple[Tensor, object]:
        """(N, T) ids and the recurrent state after the previous ones (None at the start) ->
        (N, T, vocab_size) logits and the state after these."""
        out, state = self.rnn(self.embedding(ids), state)
        return self.head(out), state

    @torch.no_grad()
    def sample(self, start: Tensor, length: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """Continue `start`, (T0,) or (N, T0) int64 ids with T0 >= 1, by `length` tokens.

        Returns start followed by the new tokens: (T0 + length,) or (N, T0 + length). Temperature 0
        takes the most likely token at every step (greedy, deterministic); a positive temperature
        draws from softmax(logits / temperature) with `generator` (lower: closer to greedy). Runs in
        eval mode (no dropout) and restores the previous mode.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, but got {temperature}")
        if start.dim() not in (1, 2) or start.shape[-1] == 0:
            raise ValueError(f"start must be (T0,) or (N, T0) token ids with T0 >= 1, but got {tuple(start.shape)}")
        was_training = self.training
        self.eval()
        try:
            ids = start.view(1, -1) if start.dim() == 1 else start
            tokens, state = [ids], None
            for _ in range(length):
                logits, state = self.logits_and_state(tokens[-1], state)
                tokens.append(self._next_token(logits[:, -1], temperature, generator))
        finally:
            self.train(was_training)
        out = torch.cat(tokens, dim=1)
        return out.view(-1) if start.dim() == 1 else out

    @staticmethod
    def _next_token(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
        """(N, V) logits -> (N, 1) ids."""
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        probabilities = torch.softmax(logits.double() / temperature, dim=-1)
        return torch.multinomial(probabilities, 1, generator=generator)


class BiLSTMTagger(nn.Module):
    """A tagger: Embedding -> bidirectional LSTM -> Linear on every step.

    forward: (N, T) int64 ids in [0, vocab_size) -> (N, T, num_tags) logits, each step seeing the
    whole sequence (forward and backward states concatenated).
    """

    def __init__(self, num_tags: int, vocab_size: int = 128, embedding_dim: int = 64, hidden_size: int = 128,
                 num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = recurrent_layer("lstm", embedding_dim, hidden_size, num_layers, dropout, bidirectional=True)
        self.head = nn.Linear(2 * hidden_size, num_tags)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.rnn(self.embedding(ids))[0])
