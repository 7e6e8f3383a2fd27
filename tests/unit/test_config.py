from pathlib import Path

import pytest
import yaml

from tasks.core.config import ConfigError, Params, apply_override, load_params
from tests.helpers import REPO_ROOT


def write_params(tmp_path: Path, edit) -> Path:
    tree = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    edit(tree)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_repository_params_load_into_frozen_typed_objects():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.collect.source == "sklearn-digits"
    assert params.train.cnn.channels == (32, 64)
    with pytest.raises(Exception, match="frozen"):
        params.train.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(
            lambda tree: tree["train"].update(epoch=3),
            r"train\.epoch: unknown key",
            id="unknown-key",
        ),
        pytest.param(
            lambda tree: tree["train"].update(epochs="ten"),
            r"train\.epochs: .*integer.*'ten'",
            id="wrong-type-with-the-value",
        ),
        pytest.param(
            lambda tree: tree["preprocess"].pop("seed"),
            r"preprocess\.seed: missing",
            id="missing-key",
        ),
        pytest.param(
            lambda tree: tree["train"].update(model="transformer"),
            r"train\.model: unknown model 'transformer'.*mlp, cnn",
            id="unknown-model-lists-the-known-ones",
        ),
        pytest.param(
            lambda tree: tree["collect"].update(source="s3://bucket"),
            r"collect\.source: unknown source 's3://bucket'",
            id="unknown-source",
        ),
        pytest.param(
            lambda tree: tree["preprocess"].update(val_fraction=0.5, test_fraction=0.5),
            r"val_fraction \+ test_fraction is 1",
            id="split-fractions-leave-no-train-split",
        ),
    ],
)
def test_a_bad_params_file_names_the_key_and_the_problem(tmp_path, edit, message):
    """One wrong entry in params.yaml fails loading with a ConfigError naming it."""
    path = write_params(tmp_path, edit)
    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_not_yaml_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_exponent_notation_is_a_number_as_dvc_reads_it(tmp_path):
    path = write_params(tmp_path, lambda tree: None)
    path.write_text(path.read_text().replace("lr: 0.001", "lr: 1e-4"))
    assert load_params(path).train.lr == 1e-4
    assert load_params(path, overrides=["train.lr=1e-3"]).train.lr == 1e-3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.cnn.channels=[16, 0]", r"train\.cnn\.channels\.1: .*greater than or equal to 1"),
        ("train.mlp.hidden_sizes=[]", r"train\.mlp\.hidden_sizes: .*at least 1 item"),
        ("train.seed=-1", r"train\.seed: .*greater than or equal to 0"),
        ("preprocess.seed=-5", r"preprocess\.seed: .*greater than or equal to 0"),
        ("train.lr=fast", r"train\.lr: .*number.*'fast'"),
    ],
    ids=[
        "cnn-channel-zero",
        "no-mlp-hidden-sizes",
        "negative-train-seed",
        "negative-preprocess-seed",
        "lr-not-a-number",
    ],
)
def test_an_override_with_a_bad_value_is_named(override, message):
    """Overrides are checked like params.yaml: sizes and seeds are bounded, types enforced."""
    with pytest.raises(ConfigError, match=message):
        load_params(REPO_ROOT / "params.yaml", overrides=[override])


def test_overrides_parse_values_as_yaml():
    params = load_params(
        REPO_ROOT / "params.yaml",
        overrides=[
            "train.epochs=3",
            "train.cnn.channels=[8, 16]",
            "collect.source=npz:data/my.npz",
            "preprocess.image_size=null",
        ],
    )
    assert params.train.epochs == 3
    assert params.train.cnn.channels == (8, 16)
    assert params.collect.source == "npz:data/my.npz"
    assert params.preprocess.image_size is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs", "expected section.key=value"),
        ("train.nope=1", "train.nope is not a key"),
        ("nope.epochs=1", "nope is not a section"),
        ("train.epochs.deeper=1", "train.epochs is not a section"),
    ],
)
def test_bad_overrides_are_named(override, message):
    tree = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    with pytest.raises(ConfigError, match=message):
        apply_override(tree, override)


def test_flat_params_use_dotted_keys(tiny_params: Params):
    flat = tiny_params.flat()
    assert flat["train.epochs"] == 2
    assert flat["train.cnn.channels"] == [8, 16]
    assert all("." in key for key in flat)


def test_only_the_trained_familys_options_matter():
    """The registry's params check ignores the options of the families a run could not train
    (and the search space, when the model was fixed)."""
    params = load_params(REPO_ROOT / "params.yaml", overrides=["train.model=cnn"])
    inert = params.inert_prefixes()
    assert "select." in inert and "train.mlp." in inert and "train.cnn." not in inert
    assert params.train.model_options() == dict(params.train.cnn.model_dump())


def test_with_auto_the_candidates_options_matter():
    params = load_params(REPO_ROOT / "params.yaml", overrides=["train.model=auto"])
    inert = params.inert_prefixes()
    assert "select." not in inert
    assert not {f"train.{family}." for family in params.select.candidates} & set(inert)
    with pytest.raises(ValueError, match="the select stage's choice"):
        params.train.model_options()


def test_the_config_knows_the_families_without_importing_torch():
    import subprocess
    import sys

    code = "import sys, tasks.core.config as c; c.load_params(); print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def candidates_edit(family: str, space):
    return lambda tree: tree["select"]["candidates"].update({family: space})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(
            candidates_edit("transformer", {}),
            r"^\S+: select\.candidates\.transformer: unknown model; expected one "
            r"of mlp, cnn, resnet, lstm, gru, vit, autoencoder, sae",
            id="unknown-model",
        ),
        pytest.param(
            candidates_edit("mlp", {"dropout": {"low": 0.5, "high": 0.1}}),
            r"mlp\.dropout: empty range \(low 0\.5 is above high 0\.1\)",
            id="empty-range",
        ),
        pytest.param(
            candidates_edit("cnn", {"channels": {"choices": []}}),
            r"cnn\.channels: empty range \(choices must be a non-empty list\)",
            id="empty-choices",
        ),
        pytest.param(
            candidates_edit("cnn", {"kernel": {"choices": [3, 5]}}),
            r"cnn\.kernel: unknown option; expected one of channels, hidden_size, dropout, "
            r"optimizer, lr, weight_decay, momentum",
            id="unknown-option",
        ),
        pytest.param(
            candidates_edit("mlp", {"lr": {"low": 0.0, "high": 0.1, "log": True}}),
            r"mlp\.lr: a log range needs low above 0",
            id="log-range-from-zero",
        ),
        pytest.param(
            candidates_edit("mlp", {"lr": {"min": 0.1, "max": 1}}),
            r"mlp\.lr: expected a value, \{low: a, high: b",
            id="not-a-range",
        ),
        pytest.param(
            lambda tree: tree["select"].update(candidates={}),
            r"select\.candidates: .*expected a mapping of model families",
            id="no-candidates",
        ),
        pytest.param(
            lambda tree: tree["train"].update(model="resnet50"),
            r"train\.model: unknown model 'resnet50'; expected auto or one of mlp, cnn",
            id="unknown-train-model",
        ),
    ],
)
def test_a_bad_search_space_fails_in_one_line_naming_the_key(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_params(write_params(tmp_path, edit))
    assert "\n" not in str(error.value)
