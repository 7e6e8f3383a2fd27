import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from tasks.core.config import (
    AUTO,
    MODEL_NAMES,
    OPTIMIZER_OPTIONS,
    ConfigError,
    Params,
    apply_override,
    apply_params,
    load_params,
    same_value,
)
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


# --- a run's params written back: only what changed, in place ---------------------------------


def browser_json(value):
    """What a browser's JSON makes of a value: whole floats lose their .0 (JavaScript has one
    number type) and, for good measure, every mapping comes back with its keys sorted."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: browser_json(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [browser_json(item) for item in value]
    return value


def form_params(params: Params, edit=lambda tree: None, browser: bool = False) -> Params:
    """The full params object a Prefect Custom run sends: the form's JSON, validated."""
    tree = json.loads(params.model_dump_json())
    edit(tree)
    return Params.model_validate(browser_json(tree) if browser else tree)


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    return [
        (old, new)
        for old, new in zip(before.splitlines(), after.splitlines(), strict=True)
        if old != new
    ]


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", path)
    return path


@pytest.mark.parametrize("browser", [False, True], ids=["pydantic-json", "browser-json"])
def test_a_ui_run_with_the_full_params_changes_exactly_the_changed_lines(
    params_copy, browser, caplog
):
    """A Custom run sends every section; params.yaml gets the two changed values on their own
    lines, comments kept, and select.candidates (never touched) stays as written."""
    before = params_copy.read_text()

    def edit(tree):
        tree["train"].update(model="mlp", epochs=5)

    wanted = form_params(load_params(params_copy), edit, browser)
    with caplog.at_level(logging.INFO, logger="mlcycle.config"):
        assert apply_params(wanted, params_copy) == wanted
    after = params_copy.read_text()
    model_comment = "# a family from models/ (mlp | cnn | resnet | lstm | gru | vit |"
    assert changed_lines(before, after) == [
        (f"  model: cnn            {model_comment}", f"  model: mlp            {model_comment}"),
        ("  epochs: 30", "  epochs: 5"),
    ]
    logged = [r.getMessage() for r in caplog.records if r.name == "mlcycle.config"]
    assert logged == [
        "params.yaml: train.model 'cnn' -> 'mlp'",
        "params.yaml: train.epochs 30 -> 5",
    ]


@pytest.mark.parametrize("browser", [False, True], ids=["pydantic-json", "browser-json"])
def test_a_ui_run_that_changed_nothing_leaves_the_file_byte_for_byte(params_copy, browser, caplog):
    before = params_copy.read_bytes()
    with caplog.at_level(logging.INFO, logger="mlcycle.config"):
        apply_params(form_params(load_params(params_copy), browser=browser), params_copy)
    assert params_copy.read_bytes() == before
    assert not [r for r in caplog.records if r.name == "mlcycle.config"]


def test_a_changed_leaf_of_the_search_space_changes_its_line_only(params_copy):
    before = params_copy.read_text()

    def edit(tree):
        tree["select"]["candidates"]["cnn"]["dropout"]["high"] = 0.6

    apply_params(form_params(load_params(params_copy), edit, browser=True), params_copy)
    assert changed_lines(before, params_copy.read_text()) == [
        ("      dropout: {low: 0.0, high: 0.5}", "      dropout: {low: 0.0, high: 0.6}")
    ]
    assert load_params(params_copy).select.candidates["cnn"]["dropout"] == {"low": 0.0, "high": 0.6}


def test_a_family_added_to_and_one_dropped_from_the_search_space_touch_their_lines_only(
    params_copy,
):
    before = params_copy.read_text()

    def edit(tree):
        candidates = tree["select"]["candidates"]
        del candidates["gru"]
        candidates["vit"] = {"depth": {"choices": [2, 3]}, "pooling": {"choices": ["cls", "mean"]}}

    wanted = form_params(load_params(params_copy), edit)
    apply_params(wanted, params_copy)
    after = params_copy.read_text()
    assert load_params(params_copy) == wanted
    gru = (
        "    gru:\n      hidden_size: {choices: [64, 128]}\n"
        "      bidirectional: {choices: [false, true]}\n"
        "      lr: {low: 0.0003, high: 0.01, log: true}\n"
    )
    vit = "    vit:\n      depth: {choices: [2, 3]}\n      pooling: {choices: [cls, mean]}\n"
    assert gru in before and after == before.replace(gru, vit)


def test_a_value_that_grows_keeps_its_comment_in_its_column(params_copy):
    before = params_copy.read_text()
    wanted = load_params(params_copy, overrides=["select.storage=postgresql://u@db/optuna"])
    apply_params(wanted, params_copy)
    ((old, new),) = changed_lines(before, params_copy.read_text())
    assert old.startswith("  storage: null           # null: artifacts/selection/optuna.db")
    assert new.startswith("  storage: postgresql://u@db/optuna # null: artifacts/selection")


def test_a_quoted_value_stays_quoted_and_a_null_is_written_null(params_copy):
    before = params_copy.read_text()
    wanted = load_params(
        params_copy,
        overrides=["schedule.retrain_cron=0 4 * * 1", "train.early_stopping_patience=null"],
    )
    apply_params(wanted, params_copy)
    assert [new for _, new in changed_lines(before, params_copy.read_text())] == [
        "  early_stopping_patience: null # epochs without a better val loss; null trains all "
        "epochs",
        '  retrain_cron: "0 4 * * 1"     # training-pipeline/scheduled: Mondays at 03:00 ...',
    ]


def test_a_string_yaml_1_1_reads_as_a_boolean_is_written_quoted(params_copy):
    # DVC reads YAML 1.2 (`yes` is a string); PyYAML and other YAML 1.1 tools read a boolean
    wanted = load_params(params_copy, overrides=['serve.alias="yes"'])
    apply_params(wanted, params_copy)
    assert load_params(params_copy).serve.alias == "yes"
    assert yaml.safe_load(params_copy.read_text())["serve"]["alias"] == "yes"


@pytest.mark.parametrize(
    ("old", "new", "same"),
    [
        (0.0, 0, True),
        (600, 600.0, True),
        ({"low": 0.0, "high": 0.5}, {"high": 0.5, "low": 0}, True),
        ([16, 32], (16, 32), True),
        (True, 1, False),
        (None, 0, False),
        ("1", 1, False),
        ({"low": 0.0}, {"low": 0.0, "log": True}, False),
    ],
)
def test_values_compare_as_params(old, new, same):
    assert same_value(old, new) is same


def test_a_float_options_range_from_a_browser_stays_a_float_range():
    """JSON from a browser writes {low: 0.0, high: 1.0} as {low: 0, high: 1}: the search must
    still draw floats (integer bounds mean an integer range to Optuna)."""
    params = load_params(
        REPO_ROOT / "params.yaml",
        overrides=["select.candidates={mlp: {dropout: {low: 0, high: 1}, hidden_sizes: [64]}}"],
    )
    spec = params.select.candidates["mlp"]
    assert spec["dropout"] == {"low": 0.0, "high": 1.0}
    assert all(type(bound) is float for bound in spec["dropout"].values())
    assert spec["hidden_sizes"] == [64]


# --- the Custom run form: the schema Prefect builds from the params models --------------------


@pytest.fixture(scope="module")
def form_schema() -> dict:
    """The parameter schema Prefect makes of a flow taking ``params: Params | None`` (as
    training-pipeline does), the one its UI renders as the Custom run form."""
    from prefect.utilities.callables import parameter_schema

    def training_pipeline(params: Params | None = None) -> None:
        """A stand-in with the flow's signature."""

    return parameter_schema(training_pipeline).model_dump()


def subschemas(schema):
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from subschemas(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from subschemas(value)


def test_the_form_offers_the_model_families_and_devices_as_choices(form_schema):
    train = form_schema["definitions"]["TrainParams"]["properties"]
    assert train["model"]["enum"] == [AUTO, *MODEL_NAMES]
    assert train["device"]["enum"][:4] == ["auto", "cpu", "cuda", "cuda:0"]
    # cuda:N beyond the form's choices still loads from params.yaml and overrides
    assert (
        load_params(REPO_ROOT / "params.yaml", ["train.device=cuda:12"]).train.device == "cuda:12"
    )
    with pytest.raises(ConfigError, match=r"train\.device: unknown device 'gpu'"):
        load_params(REPO_ROOT / "params.yaml", ["train.device=gpu"])


def test_no_field_of_the_form_is_a_choice_with_null(form_schema):
    """The form shows an anyOf with null as tabs whose null tab reads 'Property is type
    "None"': nullable fields are plain optional inputs instead (the flow's own `params`
    parameter, null meaning params.yaml as it is, aside)."""
    sections = form_schema["definitions"]
    assert not [
        s
        for s in subschemas(sections)
        if {"type": "null"} in s.get("anyOf", []) or s.get("type") == "null"
    ]
    preprocess = sections["PreprocessParams"]
    assert preprocess["properties"]["image_size"]["type"] == "integer"
    assert "image_size" not in preprocess["required"]


def test_the_search_space_is_fields_per_family_not_one_json_value(form_schema):
    candidates = form_schema["definitions"]["SelectParams"]["properties"]["candidates"]
    assert list(candidates["properties"]) == list(MODEL_NAMES)
    cnn = candidates["properties"]["cnn"]["properties"]
    assert list(cnn) == ["channels", "hidden_size", "dropout", *OPTIMIZER_OPTIONS]
    # fixed first: an option left out shows one empty input, not a range's four
    assert [branch["title"] for branch in cnn["dropout"]["anyOf"]] == ["fixed", "range", "choices"]
    assert [branch["title"] for branch in cnn["channels"]["anyOf"]] == ["fixed", "choices"]


def test_prefect_accepts_what_the_form_sends(form_schema):
    """Prefect's server validates a Custom run's parameters against the schema: the repository's
    params, a nullable field left out (the form's empty input) or null, and a changed search
    space pass; the flow's model reads a left-out nullable field as null."""
    from prefect.utilities.schema_tools.validation import validate

    tree = load_params(REPO_ROOT / "params.yaml").model_dump(mode="json")
    assert validate({"params": tree}, form_schema) == []
    del tree["preprocess"]["image_size"]
    tree["select"]["candidates"]["lstm"] = {"grad_clip": 2, "bidirectional": {"choices": [True]}}
    tree = browser_json(tree)
    assert validate({"params": tree}, form_schema) == []
    assert Params.model_validate(tree).preprocess.image_size is None
    tree["train"]["model"] = "transformer"
    assert validate({"params": tree}, form_schema) != []


def test_layouts_the_line_editor_does_not_write_still_get_the_values(params_copy):
    """A block list becomes a one-line list; a block scalar it cannot delimit makes it dump
    the file whole (comments kept): the values are right either way."""
    text = params_copy.read_text()
    text = text.replace("    channels: [32, 64]\n", "    channels:\n      - 32\n      - 64\n")
    text = text.replace("  source: sklearn-digits\n", "  source: >-\n    sklearn-digits\n")
    params_copy.write_text(text)
    wanted = load_params(params_copy, ["train.cnn.channels=[8, 16]", "collect.source=npz:a.npz"])
    assert apply_params(wanted, params_copy) == wanted
    assert "# where torchvision datasets are" in params_copy.read_text()


def test_a_params_file_that_leaves_out_a_nullable_key_names_it(tmp_path):
    # the Prefect form may omit a nullable key (it reads as None); a params.yaml may not
    text = (REPO_ROOT / "params.yaml").read_text()
    line = next(line for line in text.splitlines() if line.startswith("  image_size: null"))
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(line + "\n", "", 1))
    with pytest.raises(ConfigError, match=r"preprocess\.image_size: missing \(write null"):
        load_params(path)


def test_a_family_registered_once_has_its_train_section():
    """FAMILY_OPTIONS is the one registration: train.<family> follows from it, in its order."""
    from tasks.core.config import FAMILY_OPTIONS, TrainParams

    sections = {
        name: field.annotation
        for name, field in TrainParams.model_fields.items()
        if name in FAMILY_OPTIONS
    }
    assert (
        list(sections) == list(FAMILY_OPTIONS) == list(TrainParams.model_fields)[-len(sections) :]
    )
    assert sections == FAMILY_OPTIONS
