from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class RecurrentNet(nn.Module):
    """An LSTM or GRU that reads the image row by row, a sequence of H steps of W*C pixels,
    and classifies from its final state (for a bidirectional net, the forward direction's
    state after the last row beside the backward direction's after the first)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        cell: Literal["lstm", "gru"],
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
        grad_clip: float | None,
    ) -> None:
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"unknown cell {cell!r}; expected lstm or gru")
        _, width, channels = input_shape
        recurrent = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = recurrent(
            input_size=width * channels,
            hidden_size=hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            # torch warns when given dropout it cannot use (there is no layer to follow)
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.bidirectional = bidirectional
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes),
        )
        # read by the train stage, which clips the gradient norm: recurrent gradients explode
        self.grad_clip = grad_clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(batch, height, width * channels)
        _, state = self.rnn(rows)
        h_n = state[0] if isinstance(state, tuple) else state  # LSTM: (h_n, c_n)
        # h_n is (layers * directions, N, hidden), the top layer last; output[:, -1] would
        # give the backward direction after a single row, not after the whole image
        final = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.bidirectional else h_n[-1]
        return self.head(final)
