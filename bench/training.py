"""Benchmark the train stage's loop against the classic PyTorch tutorial loop: same data, model,
initial weights and epochs, one after the other in one process.

    .venv/bin/python bench/training.py [--samples 60000] [--epochs 5] [--models mlp cnn]
        [--device auto|cpu|cuda] [--threads N] [--json results.json] [--verbose]

Data: the split is built in a temporary folder by the stage functions (collect -> validate ->
preprocess, params.yaml's preprocess.*) with collect.augment_to=--samples: the sklearn digits
upscaled to 28x28 plus seeded random affine copies, MNIST scale without a download.
--samples 0 keeps the 1,797 plain 8x8 digits (augment_to null).

For each model (train.model mlp and cnn, with their train.<family> options of params.yaml):
  - ours: run_train, the train stage itself (the split kept on the device as uint8, batches by
    indexing a shuffled copy, the loss summed on the device: one host sync per epoch; a
    checkpoint written after every epoch), with params.yaml's train.* except epochs (--epochs),
    early_stopping_patience (null: every epoch runs), device (--device) and the large-batch
    recipe of fast_recipe (one-cycle schedule; the MLP at batch 1024 and lr 0.006, the others
    at batch 256 and lr 0.003; bf16 autocast on a CPU with bf16 units, cuDNN autotuning on
    CUDA; --set replaces it for every model: e.g. --set train.batch_size=64 measures the loop
    alone at the classic's batch size, in fp32).
  - classic: the PyTorch tutorial loop: a torch.utils.data.Dataset over the numpy arrays that
    returns one (float32 image tensor, label) per __getitem__, DataLoader(batch_size=64,
    shuffle=True, num_workers=0: the default, batches built in the training process), a
    .to(device) copy of every batch, fp32, Adam with lr 1e-3, CrossEntropyLoss, loss.item()
    and the batch's correct count read back per batch, model.train() / model.eval(), and
    validation through a DataLoader (batch 64, no_grad) after every epoch.
  Both build the same model class from the same spec (tasks.core.model_spec.ModelSpec.build)
  right after seeding with train.seed: the same initial weights. Classic runs with torch's
  default kernel settings (ours with what params.yaml's train.* asks: deterministic kernels,
  precision, ...). --threads N pins torch to N threads for both (the stage's own choice, one
  per core, is overridden): on a busy machine, threads beyond the idle cores stall each step.

Timing: an epoch is one pass over the train split plus one over the val split; ours also
counts its shuffle and its checkpoint write (it is timed from the stage's own log lines: its
start line, logged just before the loop, to each epoch's line, logged after the checkpoint).
Epoch 1 carries any warm-up (lazy kernel set-up, cuDNN autotuning, ours' copy of the split to
the device). Not counted: reading the split, building the model and optimiser, imports.
  throughput = train images x epochs / the sum of the epoch seconds (images/s)
  speed-up   = ours' throughput / classic's
  steady epoch = the median epoch after the first (warm-up excluded)
  time to 98% = the cumulative epoch seconds at the first epoch with val accuracy >= 0.98
  data handling alone = one epoch of classic's DataLoaders and copies to the device, with no
    model (not counted above); classic's steady epoch over that epoch minus it is the speed-up
    that feeding the same fp32 model for free would give: beyond it, a loop must compute faster
Accuracy: each run's last-epoch weights on the test split (ours from its checkpoint
last.pt; its model file holds the best-val-loss epoch, reported too) and the last val accuracy.

Targets (PASS/FAIL, exit 1 if one is missed):
  CPU: speed-up >= 3x for the MLP, >= 1.5x for the CNN
  GPU: speed-up >= 10x for the CNN at MNIST scale (--samples >= 60000 of 28x28), and one CNN
       epoch over 60,000 images (the steady epoch scaled to 60,000 train images) < 1 s
  both: test accuracy of ours at most 0.5 points below classic's (above it by any margin)
Figures go to bench/results/training-<date>-<machine>.json (machine: CPU model and cores, GPU,
torch, CUDA, python; the load average before, during and after).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from zoo import LoadSampler, build_split, machine_facts, say, verdict, write_figures

REPO = Path(__file__).resolve().parent.parent
CLASSIC_BATCH = 64
CLASSIC_LR = 1e-3  # the tutorial's Adam (and params.yaml's train.lr)
# Ours: the train stage with the settings its README recommends for large data: large batches
# with a one-cycle schedule (warm-up, then annealing) and a learning rate scaled for them. The
# MLP's steps are so cheap that only a larger batch keeps the cores busy (measured on 2 cores:
# batch 256 gives 2.5x the classic loop, 1024 gives 3.4x, at the same accuracy); families
# without a line of their own take the CNN's.
FAST_RECIPE: dict[str, dict[str, Any]] = {
    "mlp": {"batch_size": 1024, "lr_schedule": "onecycle", "lr": 0.006},
    "cnn": {"batch_size": 256, "lr_schedule": "onecycle", "lr": 0.003},
}


def fast_recipe(family: str, device: str) -> dict[str, Any]:
    """The family's FAST_RECIPE, plus what the device wants: bf16 autocast on a CPU with bf16
    units (``precision: auto`` keeps fp32 on CPUs; measured here it doubles the CNN's speed),
    cuDNN autotuning on CUDA (bf16 is ``auto``'s choice there already)."""
    import torch

    recipe = dict(FAST_RECIPE.get(family, FAST_RECIPE["cnn"]))
    if device.startswith("cuda"):
        return recipe | {"deterministic": False}
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return recipe | {"precision": "bf16"}
    return recipe


TARGET_VAL_ACCURACY = 0.98
MAX_ACCURACY_GAP = 0.005
CPU_SPEEDUP = {"mlp": 3.0, "cnn": 1.5}
GPU_CNN_SPEEDUP = 10.0
GPU_CNN_EPOCH_S = 1.0
MNIST_TRAIN = 60_000
# Plain classifiers (no objective, clipping or pretraining of their own): the classic loop fits.
MODELS = ("mlp", "cnn", "resnet", "vit")
# The train settings each row records.
TRAIN_FIGURES = (
    "optimizer",
    "lr",
    "lr_schedule",
    "batch_size",
    "seed",
    "augment_shift",
    "label_smoothing",
    "precision",
    "deterministic",
)


class EpochClock(logging.Handler):
    """time.perf_counter() at the train stage's log lines: each epoch's line (logged after that
    epoch's checkpoint is written) and the last line before the first epoch's (its start line,
    logged just before the loop)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.start: float | None = None
        self.epochs: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("train: epoch "):
            self.epochs.append(time.perf_counter())
        elif not self.epochs:
            self.start = time.perf_counter()

    def epoch_seconds(self) -> list[float]:
        if self.start is None or not self.epochs:
            raise RuntimeError("the train stage's log lines changed: no start or epoch line seen")
        return [after - before for before, after in itertools.pairwise([self.start, *self.epochs])]


def read_history(path: Path) -> list[dict[str, float]]:
    """training_history.csv of the train stage: one row per epoch."""
    lines = path.read_text().splitlines()
    columns = lines[0].split(",")
    return [dict(zip(columns, map(float, line.split(",")), strict=True)) for line in lines[1:]]


def test_accuracy(model: Any, images: np.ndarray, labels: np.ndarray, device: Any) -> float:
    import torch

    from tasks.core.model_file import predict_logits

    logits = predict_logits(model, torch.from_numpy(images).to(device))
    return (logits.argmax(dim=1).cpu().numpy() == labels).mean().item()


def run_ours(train: Any, processed: Path, root: Path, spec: Any) -> dict[str, Any]:
    """run_train into ``root``; epoch times from its log lines, accuracies from its files."""
    import torch

    from tasks.core.files import read_split
    from tasks.core.model_file import load_model
    from tasks.stages.train import run_train

    clock = EpochClock()
    logger = logging.getLogger("mlcycle.train")
    level, propagate = logger.level, logger.propagate
    logger.propagate = logger.isEnabledFor(logging.INFO)  # printed with --verbose only
    logger.setLevel(logging.INFO)
    logger.addHandler(clock)
    try:
        result = run_train(
            train, processed, root / "model.pt", root / "checkpoints", root / "reports"
        )
    finally:
        logger.removeHandler(clock)
        logger.setLevel(level)
        logger.propagate = propagate
    history = read_history(root / "reports" / "training_history.csv")
    test, _ = read_split(processed, "test")
    device = torch.device(result.device)
    last = spec.build().to(device)
    checkpoint = torch.load(root / "checkpoints" / "last.pt", map_location=device)
    last.load_state_dict(checkpoint["model_state"])
    best, _ = load_model(result.model_path)
    return {
        "epoch_seconds": clock.epoch_seconds(),
        "val_accuracy": [row["val_accuracy"] for row in history],
        "test_accuracy": test_accuracy(last, test.images, test.labels, device),
        "model_file_test_accuracy": test_accuracy(best, test.images, test.labels, "cpu"),
        "model_file_epoch": result.best_epoch,
        "device": result.device,
    }


def array_dataset(images: np.ndarray, labels: np.ndarray) -> Any:
    """The tutorial's Dataset: one (float32 image, label) per index, built on each access."""
    import torch
    from torch.utils.data import Dataset

    class ArrayDataset(Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            # ToTensor's per-sample float conversion; the model's PixelNormalize scales and
            # standardises (the same model class as ours, fed the same pixel values).
            return torch.from_numpy(images[index]).float(), int(labels[index])

    return ArrayDataset()


def tutorial_settings(seed: int) -> None:
    """Seed as run_train does before it builds its model (the same initial weights), and put
    back torch's default kernel settings, which run_train may have changed in this process
    (deterministic kernels, cuDNN autotuning, TF32): the tutorial sets none of them."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False


def run_classic(train: Any, processed: Path, spec: Any, device: Any) -> dict[str, Any]:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from tasks.core.files import read_split

    train_set, _ = read_split(processed, "train")
    val_set, _ = read_split(processed, "val")
    test, _ = read_split(processed, "test")
    tutorial_settings(train.seed)
    model = spec.build().to(device)  # the weights ours started from (same seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=CLASSIC_LR)
    loss_fn = nn.CrossEntropyLoss()
    train_loader = DataLoader(
        array_dataset(train_set.images, train_set.labels), batch_size=CLASSIC_BATCH, shuffle=True
    )
    val_loader = DataLoader(array_dataset(val_set.images, val_set.labels), batch_size=CLASSIC_BATCH)
    epoch_seconds, val_accuracy = [], []
    for _ in range(train.epochs):
        started = time.perf_counter()
        model.train()
        running_loss, correct = 0.0, 0
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            logits = model(images)
            loss = loss_fn(logits, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum().item()
        model.eval()
        val_correct = 0
        with torch.no_grad():
            for images, labels in val_loader:
                images, labels = images.to(device), labels.to(device)
                val_correct += (model(images).argmax(dim=1) == labels).sum().item()
        epoch_seconds.append(time.perf_counter() - started)
        val_accuracy.append(val_correct / len(val_set.labels))
    return {
        "epoch_seconds": epoch_seconds,
        "val_accuracy": val_accuracy,
        "test_accuracy": test_accuracy(model, test.images, test.labels, device),
        "device": str(device),
        "loader_epoch_s": round(loader_seconds(train_loader, val_loader, device), 3),
    }


def loader_seconds(train_loader: Any, val_loader: Any, device: Any) -> float:
    """One epoch of the classic loop's data handling alone (both loaders, the copies to the
    device, no model): what a loop that fed the same model for free would save at most."""
    import torch

    started = time.perf_counter()
    for loader in (train_loader, val_loader):
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def summarise(run: dict[str, Any], train_images: int) -> dict[str, Any]:
    """Throughput, steady epoch and time to TARGET_VAL_ACCURACY of one run (rounded)."""
    seconds = run["epoch_seconds"]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    cumulative, reached = 0.0, None
    for epoch_s, accuracy in zip(seconds, run["val_accuracy"], strict=True):
        cumulative += epoch_s
        if accuracy >= TARGET_VAL_ACCURACY:
            reached = cumulative
            break
    return {
        **run,
        "epoch_seconds": [round(s, 3) for s in seconds],
        "val_accuracy": [round(a, 4) for a in run["val_accuracy"]],
        "train_seconds": round(sum(seconds), 3),
        "images_per_s": round(train_images * len(seconds) / sum(seconds), 1),
        "steady_epoch_s": round(steady, 3),
        "steady_images_per_s": round(train_images / steady, 1),
        "final_val_accuracy": round(run["val_accuracy"][-1], 4),
        "test_accuracy": round(run["test_accuracy"], 4),
        "seconds_to_98": round(reached, 2) if reached is not None else None,
    }


def judge(row: dict[str, Any], device: str, mnist_scale: bool) -> list[dict[str, Any]]:
    """The targets that apply to this model on this device, each with its verdict."""
    model, ours = row["model"], row["ours"]
    checks = []
    # Speed bought with accuracy does not count: ours may fall behind classic by 0.5 points at
    # most (ahead by any margin is fine).
    behind = row["classic"]["test_accuracy"] - ours["test_accuracy"]
    checks.append(
        {
            "figure": f"{model} test accuracy behind classic (points)",
            "measured": round(100 * behind, 2),
            "target": f"<= {100 * MAX_ACCURACY_GAP:g}",
            "passed": behind <= MAX_ACCURACY_GAP + 1e-9,
        }
    )
    if device == "cpu" and model in CPU_SPEEDUP:
        bound = CPU_SPEEDUP[model]
        checks.append(
            {
                "figure": f"{model} speed-up on CPU",
                "measured": row["speedup"],
                "target": f">= {bound:g}x",
                "passed": row["speedup"] >= bound,
            }
        )
    if device.startswith("cuda") and model == "cnn":
        if mnist_scale:
            checks.append(
                {
                    "figure": "cnn speed-up on GPU (MNIST scale)",
                    "measured": row["speedup"],
                    "target": f">= {GPU_CNN_SPEEDUP:g}x",
                    "passed": row["speedup"] >= GPU_CNN_SPEEDUP,
                }
            )
        epoch_60k = MNIST_TRAIN / ours["steady_images_per_s"]
        checks.append(
            {
                "figure": "cnn epoch over 60,000 images after warm-up (s)",
                "measured": round(epoch_60k, 3),
                "target": f"< {GPU_CNN_EPOCH_S:g}",
                "passed": epoch_60k < GPU_CNN_EPOCH_S,
            }
        )
    return checks


def compare(
    params: Any, family: str, processed: Path, root: Path, device: str, recipe: dict[str, Any]
) -> dict[str, Any]:
    """Ours (params.train with ``recipe``'s changes), then classic, for one family; the row of
    the table with both runs' figures."""
    from tasks.core.config import TrainParams
    from tasks.core.files import read_split
    from tasks.core.model_spec import ModelSpec
    from tasks.training.device import resolve_device

    train = TrainParams.model_validate({**params.train.model_dump(), **recipe, "model": family})
    train_set, info = read_split(processed, "train")
    spec = ModelSpec.for_split(family, train.model_options(), info)
    images = len(train_set.labels)
    ours = summarise(run_ours(train, processed, root / family, spec), images)
    say(describe(family, "ours", ours))
    classic = summarise(run_classic(train, processed, spec, resolve_device(device)), images)
    say(describe(family, "classic", classic))
    speedup = round(ours["images_per_s"] / classic["images_per_s"], 2)
    loader = classic["loader_epoch_s"]
    # Classic without its data handling: the same model's compute, fed for free.
    ceiling = classic["steady_epoch_s"] / max(classic["steady_epoch_s"] - loader, 1e-9)
    say(
        f"[{family}] speed-up {speedup:.2f}x (ours / classic images/s); classic's data handling "
        f"alone {loader:.2f}s an epoch: removing it would give {ceiling:.2f}x"
    )
    return {
        "model": family,
        "options": train.model_options(),
        "train": {key: getattr(train, key) for key in TRAIN_FIGURES},
        "train_images": images,
        "ours": ours,
        "classic": classic,
        "speedup": speedup,
        "steady_speedup": round(ours["steady_images_per_s"] / classic["steady_images_per_s"], 2),
        "speedup_from_data_handling_alone": round(ceiling, 2),
    }


def describe(family: str, name: str, run: dict[str, Any]) -> str:
    to_98 = f"{run['seconds_to_98']:.1f}s" if run["seconds_to_98"] is not None else "not reached"
    return (
        f"[{family}] {name:<7} {run['images_per_s']:>10,.0f} images/s  epochs "
        f"{', '.join(f'{s:.2f}' for s in run['epoch_seconds'])} s  val acc "
        f"{run['final_val_accuracy']:.4f}  test acc {run['test_accuracy']:.4f}  98% val: {to_98}"
    )


def seconds_to_98(run: dict[str, Any]) -> str:
    return f"{run['seconds_to_98']:.1f}" if run["seconds_to_98"] is not None else "not reached"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | loop | images/s | steady epoch (s) | val acc | test acc | s to 98% val | "
        "speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for name in ("ours", "classic"):
            run = row[name]
            speedup = f"**{row['speedup']:.2f}x**" if name == "ours" else ""
            lines.append(
                f"| {row['model']} | {name} | {run['images_per_s']:,.0f} | "
                f"{run['steady_epoch_s']:.3f} | {run['final_val_accuracy']:.4f} | "
                f"{run['test_accuracy']:.4f} | {seconds_to_98(run)} | {speedup} |"
            )
    return "\n".join(lines)


def targets_table(checks: list[dict[str, Any]]) -> str:
    lines = ["| figure | measured | target | result |", "|---|---|---|---|"]
    lines += [
        f"| {c['figure']} | {c['measured']} | {c['target']} | {verdict(c['passed'])} |"
        for c in checks
    ]
    return "\n".join(lines)


def split_data(params: Any, samples: int, root: Path) -> tuple[Path, dict[str, Any]]:
    """The split in ``root/data/processed`` and what it holds; warns when augment_to was not
    applied (a collect stage without it)."""
    started = time.perf_counter()
    processed = build_split(params, root)
    info = json.loads((processed / "preprocess.json").read_text())
    raw = json.loads((root / "data" / "raw" / "meta.json").read_text())
    data = {
        "samples_asked": samples,
        "samples": raw["num_samples"],
        "image_shape": info.get("image_shape", raw["image_shape"]),
        "split_sizes": info["split_sizes"],
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    data["augment_applied"] = samples == 0 or raw["num_samples"] == samples
    say(
        f"[data] {data['samples']:,} images of {'x'.join(map(str, data['image_shape']))}, split "
        f"{data['split_sizes']} (built in {data['build_seconds']}s)"
    )
    if not data["augment_applied"]:
        say(
            f"[data] WARNING: collect.augment_to={samples} was not applied (collect gave "
            f"{raw['num_samples']} images): the figures are for the plain digits"
        )
    return processed, data


def run_all(
    args: argparse.Namespace, params: Any, device: str, recipes: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-training-") as tmp:
        root = Path(tmp)
        os.chdir(root)  # a relative default path of a stage lands here, never in the repo
        try:
            processed, figures["data"] = split_data(params, args.samples, root)
            shape = figures["data"]["image_shape"]
            mnist_scale = figures["data"]["samples"] >= MNIST_TRAIN and shape[:2] == [28, 28]
            figures["mnist_scale"] = mnist_scale
            figures["rows"] = [
                compare(params, family, processed, root / "runs", device, recipes[family])
                for family in args.models
            ]
        finally:
            os.chdir(REPO)
    figures["checks"] = [
        check for row in figures["rows"] for check in judge(row, device, mnist_scale)
    ]
    return figures


def pin_threads(count: int) -> None:
    """torch on ``count`` threads for the rest of this process: the train stage sets its own
    (one per core it may use) and is kept from doing so. On a machine other work keeps busy,
    more threads than idle cores make every step wait on the slowest thread."""
    import torch

    torch.set_num_threads(count)
    torch.set_num_threads = lambda _count: None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=int, default=MNIST_TRAIN, help="collect.augment_to; 0: plain digits"
    )
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each run")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["mlp", "cnn"])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--json", type=Path, help="default: bench/results/training-<date>-<machine>"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads for both loops (default: the stage's choice)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="a train.* setting of ours (repeatable), for every model instead of the large-batch "
        "recipe: "
        + "; ".join(
            f"{family} " + " ".join(f"{key}={value}" for key, value in recipe.items())
            for family, recipe in FAST_RECIPE.items()
        )
        + " (+ precision=bf16 on a CPU with bf16 units, deterministic=false on CUDA)",
    )
    parser.add_argument("--verbose", action="store_true", help="the stages' own log lines too")
    args = parser.parse_args()
    out = args.json.resolve() if args.json else None  # before the run changes folders
    sys.path.insert(0, str(REPO))

    import tasks  # noqa: F401  (telemetry switches)
    from tasks.core.config import load_params
    from tasks.core.console import configure_logging
    from tasks.training.device import resolve_device

    configure_logging(logging.INFO if args.verbose else logging.WARNING)
    if args.threads:
        pin_threads(args.threads)
    load = LoadSampler().start()
    augment = args.samples if args.samples > 0 else "null"
    params = load_params(
        REPO / "params.yaml",
        overrides=[
            f"collect.augment_to={augment}",
            f"train.epochs={args.epochs}",
            "train.early_stopping_patience=null",
            f"train.device={args.device}",
            *(args.overrides or []),
        ],
    )
    device = str(resolve_device(params.train.device))
    recipes = {
        family: fast_recipe(family, device) if args.overrides is None else {}
        for family in args.models
    }
    machine = machine_facts(device)
    figures: dict[str, Any] = {
        "date": date.today().isoformat(),
        "command": shlex.join(["python", "bench/training.py", *sys.argv[1:]]),
        "machine": machine,
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "epochs": args.epochs,
        "classic": {"batch_size": CLASSIC_BATCH, "num_workers": 0, "shuffle": True},
    }
    say(
        f"training benchmark on {device} ({machine['cpu']}, {machine['cores']} cores, "
        f"{machine['torch_threads']} torch threads{', ' + machine['gpu'] if machine['gpu'] else ''}"
        f"); load average {figures['load_average_before']}"
    )
    started = time.perf_counter()
    figures |= run_all(args, params, device, recipes)
    figures["total_seconds"] = round(time.perf_counter() - started, 1)
    figures["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    figures["load_average_1min_during"] = load.stop()
    missed = [check["figure"] for check in figures["checks"] if not check["passed"]]
    figures["targets_missed"] = missed

    say("")
    say(table(figures["rows"]))
    say("")
    say(targets_table(figures["checks"]))
    say("")
    say(
        f"{args.epochs} epochs each on {device}; {figures['data']['samples']:,} images; total "
        f"{figures['total_seconds']:.0f}s; 1-min load average during the run "
        f"{figures['load_average_1min_during']}"
    )
    write_figures(figures, "training", out)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
