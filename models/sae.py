from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class StackedAutoencoder(nn.Module):
    """Stacked (denoising) autoencoders, the deep-belief-net recipe with autoencoders in place
    of RBMs (Bengio et al., 2007; Vincent et al., 2010): flatten, a stack of Linear + ReLU
    encoder layers, a classifier head (dropout, linear) on the last code.

    Each encoder layer has its own linear decoder back to that layer's input. Greedy pretraining
    (``pretrain_epochs`` > 0) trains layer k alone to reconstruct its input, the frozen codes of
    layers < k, from a noised copy (:meth:`pretrain_loss` over :meth:`pretrain_parameters`);
    fine-tuning then trains the whole encoder and the head on the labels. The decoders stay
    modules, unused after pretraining, so checkpoints of either phase hold every layer.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        hidden_sizes: Sequence[int],
        dropout: float,
        pretrain_epochs: int,
        pretrain_lr: float,
        noise_std: float,
    ) -> None:
        super().__init__()
        height, width, channels = input_shape
        sizes = [height * width * channels, *hidden_sizes]
        self.flatten = nn.Flatten()
        self.encoders = nn.ModuleList(
            nn.Sequential(nn.Linear(size_in, size_out), nn.ReLU())
            for size_in, size_out in itertools.pairwise(sizes)
        )
        self.decoders = nn.ModuleList(
            nn.Linear(size_out, size_in) for size_in, size_out in itertools.pairwise(sizes)
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(sizes[-1], num_classes))
        self.pretrain_layers = len(hidden_sizes) if pretrain_epochs > 0 else 0
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_lr = pretrain_lr
        self.noise_std = noise_std

    def encode(self, x: torch.Tensor, layers: int | None = None) -> torch.Tensor:
        """The code after the first ``layers`` encoder layers (all of them by default)."""
        h = self.flatten(x)
        for encoder in self.encoders[:layers]:
            h = encoder(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))

    def pretrain_parameters(self, layer: int) -> Iterator[nn.Parameter]:
        """Layer ``layer``'s encoder and decoder parameters: all that its pretraining moves."""
        return itertools.chain(self.encoders[layer].parameters(), self.decoders[layer].parameters())

    def pretrain_loss(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer ``layer``'s denoising reconstruction error of its own input, the codes of the
        (frozen) layers below it."""
        if not 0 <= layer < len(self.encoders):
            raise IndexError(f"layer {layer} out of range; the stack has {len(self.encoders)}")
        with torch.no_grad():
            clean = self.encode(x, layer)
        noisy = clean
        if self.training and self.noise_std > 0:
            noisy = clean + self.noise_std * torch.randn_like(clean)
        return F.mse_loss(self.reconstruct_layer(noisy, layer), clean)

    def reconstruct_layer(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer ``layer``'s autoencoder applied to its input ``h``."""
        return self.decoders[layer](self.encoders[layer](h))
