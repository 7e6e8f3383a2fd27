"""The options section of each model family (``train.<family>``) and the family names.

The config knows the families without importing torch; tests/model/test_models.py keeps
``FAMILY_OPTIONS`` and ``models.MODELS`` in step.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.core.config.base import PositiveInts, Section


class MLPParams(Section):
    hidden_sizes: PositiveInts = Field(description="Widths of the hidden layers.")
    dropout: float = Field(ge=0, lt=1, description="Dropout before the head.")


class CNNParams(Section):
    channels: PositiveInts = Field(description="Conv block widths, one block per entry.")
    hidden_size: int = Field(ge=1, description="Width of the dense layer before the head.")
    dropout: float = Field(ge=0, lt=1, description="Dropout before the head.")


class ResNetParams(Section):
    channels: PositiveInts = Field(description="One residual stage per entry (its width).")
    blocks_per_stage: int = Field(ge=1, description="Residual blocks in each stage.")
    dropout: float = Field(ge=0, lt=1, description="Dropout before the head.")


class RecurrentParams(Section):
    hidden_size: int = Field(ge=1, description="Width of the recurrent layer.")
    num_layers: int = Field(ge=1, description="Stacked recurrent layers.")
    bidirectional: bool = Field(description="Read the image rows both ways.")
    dropout: float = Field(ge=0, lt=1, description="Between stacked layers and before the head.")
    grad_clip: float | None = Field(
        None, gt=0, description="Clip the gradient norm to this in the train stage; null does not."
    )


class ViTParams(Section):
    patch_size: int = Field(ge=1, description="Square patches; the image is padded to fit.")
    dim: int = Field(ge=1, description="Embedding width; a multiple of heads.")
    depth: int = Field(ge=1, description="Transformer encoder layers.")
    heads: int = Field(ge=1, description="Attention heads; they divide dim.")
    mlp_ratio: float = Field(gt=0, description="Feed-forward width as a multiple of dim.")
    dropout: float = Field(ge=0, lt=1, description="Dropout in the encoder and before the head.")
    pooling: Literal["cls", "mean"] = Field(description="Class token or mean of the patches.")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ViTParams:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        return self


class AutoencoderParams(Section):
    channels: PositiveInts = Field(description="Encoder conv widths (the decoder mirrors them).")
    code_size: int = Field(ge=1, description="The code the classifier head reads.")
    dropout: float = Field(ge=0, lt=1, description="Dropout before the head.")
    reconstruction_weight: float = Field(ge=0, description="Reconstruction loss's weight.")
    denoising: bool = Field(description="Reconstruct clean inputs from noised ones.")
    noise_std: float = Field(ge=0, description="Gaussian noise, in standardised pixel units.")
    sparse: bool = Field(description="L1 penalty on the code.")
    sparsity_weight: float = Field(ge=0, description="Weight of the L1 penalty on the code.")


class SAEParams(Section):
    hidden_sizes: PositiveInts = Field(description="The stacked autoencoders' code sizes.")
    dropout: float = Field(ge=0, lt=1, description="Fine-tuning dropout.")
    pretrain_epochs: int = Field(
        ge=0, description="Greedy pretraining epochs per layer; 0 trains from scratch."
    )
    pretrain_lr: float = Field(gt=0, description="Learning rate of the greedy pretraining.")
    noise_std: float = Field(ge=0, description="Denoising noise while pretraining; 0 is none.")


# Each model family of models/ and the section of its options (train.<family>).
FAMILY_OPTIONS: dict[str, type[Section]] = {
    "mlp": MLPParams,
    "cnn": CNNParams,
    "resnet": ResNetParams,
    "lstm": RecurrentParams,
    "gru": RecurrentParams,
    "vit": ViTParams,
    "autoencoder": AutoencoderParams,
    "sae": SAEParams,
}
MODEL_NAMES: tuple[str, ...] = tuple(FAMILY_OPTIONS)
