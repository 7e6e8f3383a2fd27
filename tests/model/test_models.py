import functools
import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models import MODEL_NAMES, MODELS, PixelNormalize, build_classifier
from tasks.core import config
from tasks.core.model_spec import classifier_from_bundle
from tasks.stages.collecting.digits import digit_pixels

OPTIONS = {
    "mlp": {"hidden_sizes": (16, 8), "dropout": 0.1},
    "cnn": {"channels": (4, 8), "hidden_size": 16, "dropout": 0.1},
    "resnet": {"channels": (4, 8, 8), "blocks_per_stage": 2, "dropout": 0.1},
    "lstm": {
        "hidden_size": 8,
        "num_layers": 2,
        "bidirectional": True,
        "dropout": 0.1,
        "grad_clip": 1.0,
    },
    "gru": {
        "hidden_size": 8,
        "num_layers": 1,
        "bidirectional": False,
        "dropout": 0.1,
        "grad_clip": None,
    },
    "vit": {
        "patch_size": 2,
        "dim": 8,
        "depth": 2,
        "heads": 2,
        "mlp_ratio": 2.0,
        "dropout": 0.1,
        "pooling": "cls",
    },
    "autoencoder": {
        "channels": (4, 8),
        "code_size": 6,
        "dropout": 0.1,
        "reconstruction_weight": 1.0,
        "denoising": True,
        "noise_std": 0.3,
        "sparse": True,
        "sparsity_weight": 0.01,
    },
    "sae": {
        "hidden_sizes": (16, 8),
        "dropout": 0.1,
        "pretrain_epochs": 1,
        "pretrain_lr": 1e-3,
        "noise_std": 0.1,
    },
}
# Each family's default options plus the other settings of its switches.
CASES = [
    *((name, OPTIONS[name]) for name in OPTIONS),
    ("lstm", {**OPTIONS["lstm"], "num_layers": 1, "bidirectional": False}),
    ("gru", {**OPTIONS["gru"], "num_layers": 3, "bidirectional": True}),
    ("vit", {**OPTIONS["vit"], "pooling": "mean", "patch_size": 3}),
    ("autoencoder", {**OPTIONS["autoencoder"], "denoising": False, "sparse": False}),
    ("sae", {**OPTIONS["sae"], "pretrain_epochs": 0, "noise_std": 0.0}),
]
CASE_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]
SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3), (3, 5, 1), (1, 1, 1), (6, 11, 3)]


def build(name, shape=(8, 8, 1), num_classes=7, seed=0, **overrides):
    torch.manual_seed(seed)
    stats = [0.5] * shape[2], [0.25] * shape[2]
    return build_classifier(name, shape, num_classes, *stats, **{**OPTIONS[name], **overrides})


def random_pixels(shape, n=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)


def test_every_registered_model_has_test_options():
    assert set(OPTIONS) == set(MODELS) == set(MODEL_NAMES)


def test_the_config_knows_the_same_families_as_the_models():
    assert models.MODEL_NAMES == config.MODEL_NAMES == tuple(config.FAMILY_OPTIONS)


def keyword_options(builder):
    """The option names a builder takes: its keyword-only parameters less those bound."""
    bound: dict = {}
    if isinstance(builder, functools.partial):
        bound = builder.keywords
        builder = builder.func
    target = builder.__init__ if inspect.isclass(builder) else builder
    parameters = inspect.signature(target).parameters.values()
    return {p.name for p in parameters if p.kind is p.KEYWORD_ONLY} - set(bound)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builders_take_exactly_the_configured_options(name):
    assert keyword_options(MODELS[name]) == set(config.FAMILY_OPTIONS[name].model_fields)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_test_options_are_valid_config_sections(name):
    config.FAMILY_OPTIONS[name].model_validate(OPTIONS[name])


@pytest.mark.parametrize("name, options", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_models_take_raw_pixels_of_any_size_and_train(name, options, shape):
    torch.manual_seed(0)
    model = build_classifier(name, shape, 7, [0.5] * shape[2], [0.25] * shape[2], **options)
    pixels = random_pixels(shape)
    labels = torch.tensor([0, 1, 2, 6])
    logits = model(pixels)
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()

    loss, batch_logits = model.training_loss(pixels, labels, nn.CrossEntropyLoss())
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert batch_logits.shape == (4, 7)
    loss.backward()
    # the stacked autoencoder's decoders serve pretraining only
    unused = {n for n, p in model.named_parameters() if p.grad is None}
    assert all(n.startswith("1.decoders.") for n in unused) if name == "sae" else not unused

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Adam's first step moves every weight with a gradient by about lr, however small it is
    torch.optim.Adam(model.parameters(), lr=0.01).step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    pushed = {
        n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 1e-6
    }
    assert pushed and pushed <= moved

    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(pixels)).all()


@pytest.mark.parametrize("name, options", CASES, ids=CASE_IDS)
def test_saved_bundle_reloads_to_the_same_logits(name, options, tmp_path):
    shape = (9, 7, 3)
    torch.manual_seed(0)
    model = build_classifier(name, shape, 4, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], **options)
    model.training_loss(random_pixels(shape, 8), torch.arange(8) % 4, nn.CrossEntropyLoss())[
        0
    ].backward()  # moves batch-norm running statistics off their initial values
    torch.optim.Adam(model.parameters(), lr=0.01).step()
    model.eval()
    pixels = random_pixels(shape, 5, seed=1)
    with torch.no_grad():
        expected = model(pixels)
    bundle = {
        "model": name,
        "options": options,
        "input_shape": shape,
        "class_names": ("a", "b", "c", "d"),
        "mean": (0.4, 0.5, 0.6),
        "std": (0.2, 0.25, 0.3),
        "state_dict": model.state_dict(),
    }
    torch.save(bundle, tmp_path / "model.pt")
    torch.manual_seed(1)  # a different initialisation, overwritten by the state dict
    loaded = classifier_from_bundle(torch.load(tmp_path / "model.pt", weights_only=True))
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), expected, rtol=0, atol=0)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(
        KeyError,
        match="unknown model 'transformer'; expected one of "
        "mlp, cnn, resnet, lstm, gru, vit, autoencoder, sae",
    ):
        build_classifier("transformer", (8, 8, 1), 2, [0.0], [1.0])


def test_pixel_normalize_scales_standardises_and_moves_channels_first():
    layer = PixelNormalize(mean=[0.5, 0.0], std=[0.5, 1.0])
    pixels = torch.tensor([[[[255, 51]]]], dtype=torch.uint8)  # (N=1, H=1, W=1, C=2)
    out = layer(pixels)
    assert out.shape == (1, 2, 1, 1)
    assert out.flatten().tolist() == pytest.approx([1.0, 0.2])


def test_pixel_normalize_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="mean has 1 channels but std has 3"):
        PixelNormalize([0.0], [1.0, 1.0, 1.0])


def test_normalisation_statistics_travel_in_the_state_dict():
    model = build_classifier("mlp", (8, 8, 1), 3, [0.3], [0.4], **OPTIONS["mlp"])
    state = model.state_dict()
    assert state["0.mean"].flatten().tolist() == pytest.approx([0.3])
    assert state["0.std"].flatten().tolist() == pytest.approx([0.4])


# --- resnet ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, final_map", [((32, 32, 3), (8, 8)), ((3, 5, 1), (1, 2)), ((1, 1, 1), (1, 1))]
)
def test_resnet_halves_the_map_per_later_stage_while_it_is_at_least_2x2(shape, final_map):
    network = build("resnet", shape).network.eval()
    x = torch.zeros(2, shape[2], shape[0], shape[1])
    assert network.stages(network.stem(x)).shape == (2, 8, *final_map)


# --- recurrent ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recurrent_nets_expose_their_gradient_clip(name):
    assert build(name, grad_clip=0.5).grad_clip == 0.5
    assert build(name, grad_clip=None).grad_clip is None
    assert build("cnn").grad_clip is None


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_single_layer_recurrent_nets_build_without_warnings(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(name, num_layers=1, dropout=0.3)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_bidirectional_nets_read_each_direction_after_the_whole_image(name):
    network = build(name, (5, 4, 2), num_layers=2, bidirectional=True).network.eval()
    x = torch.randn(3, 2, 5, 4)
    rows = x.permute(0, 2, 3, 1).reshape(3, 5, 8)  # H steps of W*C features
    with torch.no_grad():
        output, _ = network.rnn(rows)
        hidden = network.rnn.hidden_size
        # forward after the last row, backward after the first (which it reads last)
        final = torch.cat([output[:, -1, :hidden], output[:, 0, hidden:]], dim=1)
        torch.testing.assert_close(network(x), network.head(final))


def test_recurrent_nets_read_rows_in_order():
    network = build("gru", (4, 3, 1)).network.eval()
    x = torch.randn(2, 1, 4, 3)
    with torch.no_grad():
        assert not torch.allclose(network(x), network(x.flip(2)))


# --- vit ------------------------------------------------------------------------------------


def test_vit_builds_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build("vit", (7, 5, 3), pooling="mean")


@pytest.mark.parametrize(
    "shape, patch_size, patches", [((8, 8, 1), 2, 16), ((7, 5, 3), 3, 6), ((1, 1, 1), 4, 1)]
)
def test_vit_pads_the_image_to_whole_patches(shape, patch_size, patches):
    cls = build("vit", shape, patch_size=patch_size, pooling="cls").network
    mean = build("vit", shape, patch_size=patch_size, pooling="mean").network
    assert cls.pos_embed.shape == (1, patches + 1, 8)
    assert mean.pos_embed.shape == (1, patches, 8) and mean.cls_token is None


def test_vit_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="dim 8 is not a multiple of heads 3"):
        build("vit", heads=3)


# --- autoencoder ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_autoencoder_reconstructs_to_the_input_shape(shape):
    network = build("autoencoder", shape).network.eval()
    x = torch.randn(3, shape[2], shape[0], shape[1])
    assert network.encode(x).shape == (3, 6)
    assert network.reconstruct(x).shape == x.shape
    assert network.decode(torch.randn(3, 6)).shape == x.shape


def autoencoder_loss(**overrides):
    model = build("autoencoder", **overrides).eval()  # eval: no noise, no dropout
    pixels = random_pixels((8, 8, 1), 6)
    labels = torch.arange(6)
    with torch.no_grad():
        loss, _ = model.training_loss(pixels, labels, nn.CrossEntropyLoss())
        code = model.network.encode(model[0](pixels))
        error = F.mse_loss(model.network.decode(code), model[0](pixels))
    return loss.item(), error.item(), code.abs().mean().item()


def test_autoencoder_loss_adds_the_weighted_reconstruction_error():
    plain, error, _ = autoencoder_loss(reconstruction_weight=0.0, sparse=False)
    weighted, _, _ = autoencoder_loss(reconstruction_weight=2.5, sparse=False)
    assert error > 0
    assert weighted - plain == pytest.approx(2.5 * error, rel=1e-4)


def test_sparse_autoencoder_loss_adds_the_l1_penalty_on_the_code():
    dense, _, _ = autoencoder_loss(sparse=False, sparsity_weight=0.5)
    sparse, _, code_l1 = autoencoder_loss(sparse=True, sparsity_weight=0.5)
    assert code_l1 > 0
    assert sparse - dense == pytest.approx(0.5 * code_l1, rel=1e-4)


def test_autoencoder_noises_its_input_only_when_denoising_in_training():
    pixels = random_pixels((8, 8, 1), 6)
    labels = torch.arange(6)

    def two_losses(**overrides):
        model = build("autoencoder", dropout=0.0, **overrides)
        with torch.no_grad():
            return [model.training_loss(pixels, labels, nn.CrossEntropyLoss())[0] for _ in "ab"]

    first, second = two_losses(denoising=True, noise_std=0.5)
    assert first != second
    first, second = two_losses(denoising=False, noise_std=0.5)
    assert first == second
    model = build("autoencoder", denoising=True, noise_std=0.5, dropout=0.0)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), model(pixels))  # forward: clean input


@pytest.fixture(scope="module")
def digits_pixels():
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digit_pixels(digits.images)
    return torch.from_numpy(pixels), torch.from_numpy(digits.target)


def test_denoising_autoencoder_removes_noise_from_held_out_digits(digits_pixels):
    pixels, labels = digits_pixels
    train, test = pixels[:1500], pixels[1500:]
    scaled = train.float() / 255.0
    noise_std = 0.8
    torch.manual_seed(0)
    model = build_classifier(
        "autoencoder",
        (8, 8, 1),
        10,
        [scaled.mean().item()],
        [scaled.std().item()],
        channels=(8, 16),
        code_size=16,
        dropout=0.0,
        reconstruction_weight=1.0,
        denoising=True,
        noise_std=noise_std,
        sparse=False,
        sparsity_weight=0.0,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        batch = torch.randint(0, len(train), (64,))
        loss, _ = model.training_loss(train[batch], labels[batch], nn.CrossEntropyLoss())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        clean = model[0](test)
        noisy = clean + noise_std * torch.randn_like(clean)
        denoised = model.network.reconstruct(noisy)
    assert denoised.shape == clean.shape
    assert F.mse_loss(denoised, clean) < 0.6 * F.mse_loss(noisy, clean)


# --- sae ------------------------------------------------------------------------------------


def test_sae_offers_greedy_pretraining_unless_told_not_to():
    model = build("sae", hidden_sizes=(16, 8, 4), pretrain_epochs=3, pretrain_lr=0.01)
    assert model.pretrain_layers == 3
    assert (model.network.pretrain_epochs, model.network.pretrain_lr) == (3, 0.01)
    assert build("sae", pretrain_epochs=0).pretrain_layers == 0
    assert build("mlp").pretrain_layers == 0


def test_sae_pretrain_parameters_are_one_layers_encoder_and_decoder():
    network = build("sae").network
    for layer in (0, 1):
        expected = [
            *network.encoders[layer].parameters(),
            *network.decoders[layer].parameters(),
        ]
        assert {id(p) for p in network.pretrain_parameters(layer)} == {id(p) for p in expected}
    assert any(key.startswith("1.decoders.1.") for key in build("sae").state_dict())


def pretrain(model, pixels, layer, steps=50):
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # all: frozen ones get no grad
    for _ in range(steps):
        loss = model.pretrain_loss(pixels, layer)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_sae_pretraining_fits_each_layer_and_freezes_the_ones_below(digits_pixels):
    model = build("sae", hidden_sizes=(32, 16), noise_std=0.1)
    pixels = digits_pixels[0][:64]

    def clean_loss(layer):
        model.eval()  # no noise
        with torch.no_grad():
            return model.pretrain_loss(pixels, layer).item()

    start = clean_loss(0)
    pretrain(model, pixels, 0)
    assert clean_loss(0) < 0.7 * start

    first_layer = {k: v.clone() for k, v in model.network.encoders[0].state_dict().items()}
    start = clean_loss(1)
    model.zero_grad(set_to_none=True)
    model.pretrain_loss(pixels, 1).backward()
    assert all(p.grad is None for p in model.network.encoders[0].parameters())
    pretrain(model, pixels, 1)
    assert clean_loss(1) < 0.7 * start
    for key, value in model.network.encoders[0].state_dict().items():
        assert torch.equal(value, first_layer[key])


def test_sae_pretrain_loss_rejects_a_layer_outside_the_stack():
    with pytest.raises(IndexError, match="layer 2 out of range; the stack has 2"):
        build("sae").pretrain_loss(random_pixels((8, 8, 1)), 2)
