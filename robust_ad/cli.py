"""Command line: parses options, calls the library, prints results. No logic of its own.

Exit codes (every command): 0 done; 1 anomalous parts found (``score --fail-on-anomaly``); 2 usage, data,
model or configuration error (one line on stderr); 3 some input files could not be read (listed; the rest
were processed); 4 internal error (a bug: one line, ``--debug`` shows the traceback); 130 interrupted.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand, TyperOption

from robust_ad.errors import RobustADError, counted


def _table_width() -> int | None:
    """Columns for stdout: the terminal's, or COLUMNS; else (piped, logged) 160, where rich's default of 80 cut the
    paths and names in every table."""
    terminal = getattr(sys.stdout, "isatty", lambda: False)()  # no stdout at all under a service: not one
    return None if terminal or os.environ.get("COLUMNS") else 160


console = Console(width=_table_width())
err_console = Console(stderr=True)
_state = {"debug": False}


EXIT_ANOMALOUS, EXIT_ERROR, EXIT_UNREADABLE, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 2, 3, 4, 130


def _fail(message: str, code: int) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {_printable(' '.join(message.split()))}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _printable(text: str) -> str:
    """``text`` with the bytes of a file name that is not UTF-8 (held as surrogates) shown as '?': printed as
    they are, they stopped the command after its work was done."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


ONCE = {"--category", "--model", "--onnx", "--data-root", "--corpus"}  # what a command works on: one of each


class _OnceCommand(TyperCommand):
    """A command that refuses an option naming what it works on, given twice where it takes one (click keeps the
    last: 'train --category a --category b' trained b alone and said nothing). Settings given twice keep the
    usual rule, the last one counts (a script's base arguments, then an override)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        given = args[: args.index("--")] if "--" in args else args
        for param in self.params:
            if isinstance(param, TyperOption) and not param.multiple and ONCE & set(param.opts):
                times = sum(arg.split("=", 1)[0] in param.opts for arg in given)
                if times > 1:
                    raise typer.BadParameter(f"given {times} times; this command takes one", ctx, param)
        return super().parse_args(ctx, args)


class _App(typer.Typer):
    """A Typer app whose commands turn every exception into one line on stderr and a documented exit code."""

    def command(self, *args: Any, **kwargs: Any) -> Callable:
        kwargs.setdefault("cls", _OnceCommand)
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable) -> Callable:
            @functools.wraps(fn)
            def wrapper(*a: Any, **k: Any) -> Any:
                try:
                    return fn(*a, **k)
                except (typer.Exit, typer.Abort, KeyboardInterrupt):
                    raise
                except Exception as exc:
                    if _state["debug"]:
                        raise
                    if isinstance(exc, RobustADError):
                        raise _fail(str(exc), EXIT_ERROR) from None
                    if isinstance(exc, OSError):  # a file system refusal: the user can fix it
                        where = f" ({exc.filename})" if exc.filename else ""
                        raise _fail(f"{exc.strerror or exc}{where}", EXIT_ERROR) from None
                    raise _fail(
                        f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback, "
                        "and please report it)",
                        EXIT_INTERNAL,
                    ) from None

            return register(wrapper)

        return decorator


def _app(help_text: str) -> _App:
    return _App(help=help_text, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


app = _app("robust-ad: find defects in industrial images and remove noise from them.")
datasets_app = _app("Create and validate datasets.")
encoder_app = _app("Train and evaluate robust encoders.")
app.add_typer(datasets_app, name="datasets")
app.add_typer(encoder_app, name="encoder")


def _main_process() -> bool:
    """Not one of the other processes of a torchrun group (those train in step and report nothing)."""
    return os.environ.get("RANK", "0") == "0"


def _print_version(given: bool) -> None:
    if given:
        from robust_ad import __version__

        console.print(f"robust-ad {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if _main_process() else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")


SEED = typer.Option(0, "--seed", help="Seed for splits, initialisation and synthetic data.")
FORCE = typer.Option(False, "--force", help="Overwrite existing outputs.")


@datasets_app.command("synth")
def datasets_synth(
    category: str = typer.Option(..., "--category", help="gravel, fabric or bottle."),
    out: Path = typer.Option(Path("datasets/synthetic"), "--out", help="Root folder (MVTec layout)."),
    size: int = typer.Option(256, "--size", help="Image side in pixels."),
    n_train: int = typer.Option(150, "--n-train", help="Normal training images."),
    n_test_good: int = typer.Option(30, "--n-test-good", help="Normal test images."),
    n_per_defect: int = typer.Option(12, "--n-per-defect", help="Test images per defect type."),
    seed: int = SEED,
    force: bool = FORCE,
) -> None:
    """Write a built-in example category (MVTec AD layout, exact masks), deterministic by --seed."""
    from robust_ad.api import synthesize

    counts = {"n_train": n_train, "n_test_good": n_test_good, "n_per_defect": n_per_defect}
    path = synthesize(out, category, size=size, seed=seed, force=force, **counts)
    console.print(f"wrote {path}")


@datasets_app.command("corpus")
def datasets_corpus(
    out: Path = typer.Option(..., "--out", help="Folder for images/ and manifest.csv."),
    debs: Path = typer.Option(None, "--debs", help="Use the .deb files in this folder instead of apt-get download."),
    package: list[str] = typer.Option(
        None, "--package", help="Debian package to use; repeat (default: every .deb of --debs, else all seven)."
    ),
    photos: list[Path] = typer.Option(None, "--photos", help="A folder of your own photographs; repeat."),
    patch: int = typer.Option(128, "--patch", help="Side of the square images written."),
    seed: int = SEED,
    force: bool = FORCE,
) -> None:
    """Assemble a pretraining corpus of real photographs and photo textures from installable packages."""
    from robust_ad.api import assemble_corpus
    from robust_ad.data.corpus import CorpusSettings

    counts = assemble_corpus(
        out,
        packages=package or None,
        debs=debs,
        photo_folders=photos or [],
        settings=CorpusSettings(patch=patch),
        seed=seed,
        force=force,
    )
    for source, count in counts.items():
        console.print(f"{source}: {counted(count, 'image')}")
    console.print(f"wrote {out}/manifest.csv ({counted(sum(counts.values()), 'image')})")


def _masks_text(masked: int, total: int) -> str:
    """'yes', 'no', or how many of a defect type's test images have a mask ('3 of 4')."""
    return "yes" if masked == total else "no" if not masked else f"{masked} of {total}"


@datasets_app.command("check")
def datasets_check(
    data_root: Path = typer.Option(..., "--data-root", help="Dataset root folder."),
    category: str = typer.Option(..., "--category", help="Category (sub)folder name."),
    layout: str = typer.Option("auto", "--layout", help="auto, mvtec, visa or folder."),
    seed: int = SEED,
) -> None:
    """Validate a dataset layout and print a summary; exit non-zero when it is not usable."""
    from robust_ad.api import check_dataset
    from robust_ad.errors import DataError

    report = check_dataset(data_root, category, layout, seed)
    dataset = report.dataset
    table = Table(title=f"{dataset.category} ({dataset.layout} layout, {dataset.root})")
    for column in ("split", "type", "images", "masks"):
        table.add_column(column)
    for split, counts in dataset.counts().items():
        for defect, count in sorted(counts.items()):
            masks = "-" if defect == "good" else _masks_text(*dataset.mask_count(defect))
            table.add_row(split, defect, str(count), masks)
    console.print(table)
    sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in report.sizes.most_common())
    console.print(f"image sizes: {sizes}")
    console.print(f"formats: {', '.join(f'{k} ({n})' for k, n in report.formats.most_common())}")
    console.print(f"masks matched: {report.masks_matched}, defects without mask: {report.defects_without_mask}")
    for problem in report.problems:
        err_console.print(f"[yellow]problem:[/yellow] {problem}", highlight=False, soft_wrap=True)
    for note in report.notes:
        err_console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    if not report.usable:
        raise DataError(report.reason())
    console.print("[green]dataset is usable[/green]")


RECIPE = typer.Option(None, "--recipe", help="Recipe YAML path or name from recipes/ (default: default).")
DATA_ROOT = typer.Option(None, "--data-root", help="Dataset root (MVTec AD, VisA or folder layout).")
EPS = typer.Option(None, "--eps", help="PGD radius of robust training on [0, 1] images; 0 = standard baseline.")
BACKBONE = typer.Option(None, "--backbone", help="resnet18, resnet50, wide_resnet50_2, vgg16 or alexnet.")
WIDTH = typer.Option(None, "--width", help="Channel multiplier of the backbone (1: torchvision's widths).")
EPOCHS = typer.Option(None, "--epochs", help="Training epochs.")
IMAGE_SIZE = typer.Option(None, "--image-size", help="Side of the square images the model is trained at.")
BATCH_SIZE = typer.Option(None, "--batch-size", help="Training batch size.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")
# the commands that read a recipe: an option left out keeps the recipe's value (its default otherwise)
RECIPE_DEVICE = typer.Option(None, "--device", help="auto, cpu or cuda (default: the recipe's, else auto).")
RECIPE_SEED = typer.Option(None, "--seed", help="Seed for splits and initialisation (default: the recipe's, else 0).")
PRECISION = typer.Option(
    None,
    "--precision",
    help="Training arithmetic: fp32, bf16 (autocast), fp16 (autocast with gradient scaling, CUDA only) or auto "
    "(bf16 on a CPU with AMX or AVX-512 BF16, else fp32). Default: the recipe's.",
)
COMPILE = typer.Option(
    None, "--compile/--no-compile", help="torch.compile the trained networks (GPU speed). Default: the recipe's."
)
RESUME = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint.")
NORM = typer.Option(None, "--norm", help="Threat model: l2 or linf.")


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


SCRATCH = "scratch"  # --encoder scratch: train the encoder per category instead of the recipe's pretrained one


def _eps_of(encoder: str | None) -> float | None:
    """The eps a published or shipped ``--encoder`` NAME is robust at (None: no name, or scratch)."""
    from robust_ad.training.pretrained import lookup

    return None if encoder in (None, SCRATCH) else lookup(encoder).eps


def _config(recipe: str | None, **overrides: Any) -> Any:
    from robust_ad.config import load_config

    return load_config(recipe or "default", overrides)


@encoder_app.command("train")
def encoder_train(
    category: list[str] = typer.Option(..., "--category", help="Category; repeat for several (task 'labels')."),
    data_root: Path = DATA_ROOT,
    out: Path = typer.Option(..., "--out", help="Encoder checkpoint file to write."),
    recipe: str = RECIPE,
    eps: float = EPS,
    norm: str = NORM,
    backbone: str = BACKBONE,
    width: float = WIDTH,
    task: str = typer.Option(None, "--task", help="Proxy task: corruption, rotation or labels (categories)."),
    epochs: int = EPOCHS,
    image_size: int = IMAGE_SIZE,
    batch_size: int = BATCH_SIZE,
    device: str = RECIPE_DEVICE,
    precision: str = PRECISION,
    compile_: bool = COMPILE,
    seed: int = RECIPE_SEED,
    resume: bool = RESUME,
    force: bool = FORCE,
) -> None:
    """Adversarially train an encoder (PGD within --eps) on a proxy task built from normal images."""
    from robust_ad.api import train_encoder

    encoder = {
        "eps": eps,
        "norm": norm,
        "backbone": backbone,
        "width": width,
        "proxy_task": task,
        "epochs": epochs,
        "batch_size": batch_size,
    }
    config = _config(
        recipe,
        category=category[0],
        data_root=str(data_root) if data_root else None,
        seed=seed,
        device=device,
        precision=precision,
        compile=compile_,
        data={"image_size": image_size},
        encoder=encoder,
    )
    _print_encoder_run(out, train_encoder(config, category, out, resume=resume, force=force))


def _print_encoder_run(out: Path, run: Any) -> None:
    if not _main_process():
        return
    last = run.history[-1]
    console.print(
        f"wrote {out}: loss {last['loss']:.4f}, adversarial train accuracy {last['adv_train_acc']:.3f}, "
        f"{run.minutes:.2f} min"
    )


@encoder_app.command("pretrain")
def encoder_pretrain(
    corpus: Path = typer.Option(..., "--corpus", help="A corpus folder written by 'robust-ad datasets corpus'."),
    out: Path = typer.Option(..., "--out", help="Encoder checkpoint file to write (.pt)."),
    recipe: str = RECIPE,
    eps: float = EPS,
    norm: str = NORM,
    backbone: str = BACKBONE,
    width: float = WIDTH,
    epochs: int = EPOCHS,
    image_size: int = IMAGE_SIZE,
    batch_size: int = BATCH_SIZE,
    device: str = RECIPE_DEVICE,
    precision: str = PRECISION,
    compile_: bool = COMPILE,
    seed: int = RECIPE_SEED,
    resume: bool = RESUME,
    force: bool = FORCE,
) -> None:
    """Robust (PGD) pretraining of an encoder on a photo corpus: which source image does a patch come from?"""
    from robust_ad.api import pretrain_encoder

    encoder = {
        "eps": eps,
        "norm": norm,
        "backbone": backbone,
        "width": width,
        "epochs": epochs,
        "batch_size": batch_size,
    }
    data = {"image_size": image_size}
    config = _config(
        recipe, seed=seed, device=device, precision=precision, compile=compile_, data=data, encoder=encoder
    )
    _print_encoder_run(out, pretrain_encoder(config, corpus, out, resume=resume, force=force))


@encoder_app.command("list")
def encoder_list() -> None:
    """The robust encoders that --encoder NAME accepts (shipped and published), with hash status and cache state."""
    from robust_ad.api import list_encoders
    from robust_ad.training.pretrained import cache_dir

    table = Table(title=f"robust encoders (shipped with robust-ad, or downloaded once into {cache_dir()})")
    table.add_column("name", no_wrap=True)
    for column in ("backbone", "threat model", "eps", "SHA-256 from", "cached"):
        table.add_column(column)
    for row in list_encoders():
        status = "published" if row["verified"] else ("recorded at first download" if row["sha256"] else "unverified")
        status = "shipped" if row["shipped"] else status
        eps = f"{row['eps'] * 255:g}/255" if row["norm"] == "linf" else f"{row['eps']:g}"
        table.add_row(row["name"], row["backbone"], row["norm"], eps, status, row["cached"])
    console.print(table)


@encoder_app.command("fetch")
def encoder_fetch(name: str = typer.Argument(..., help="A name from 'robust-ad encoder list'.")) -> None:
    """Download a published robust encoder into the cache (hash-checked), for later offline use."""
    from robust_ad.api import fetch_encoder

    console.print(f"{name}: {fetch_encoder(name)}")


@encoder_app.command("eval")
def encoder_eval(
    encoder: Path = typer.Option(
        ..., "--encoder", help="Encoder file of 'encoder train' / 'encoder pretrain', or a published encoder's name."
    ),
    category: list[str] = typer.Option(None, "--category", help="Categories to evaluate on (held-out normals)."),
    corpus: Path = typer.Option(None, "--corpus", help="Or: the held-out images of a pretraining corpus."),
    data_root: Path = DATA_ROOT,
    eps: float = typer.Option(None, "--eps", help="Attack radius (default: the training eps)."),
    norm: str = typer.Option(None, "--norm", help="l2 or linf (default: the training norm)."),
    steps: int = typer.Option(20, "--steps", help="PGD steps (stronger than training)."),
    restarts: int = typer.Option(2, "--restarts", help="Random restarts per image."),
    device: str = DEVICE,
    seed: int = SEED,
    out: Path = typer.Option(None, "--out", help="Also write the results as JSON here."),
    force: bool = FORCE,
) -> None:
    """Clean and PGD accuracy of an encoder's proxy classifier on held-out normal images."""
    from robust_ad.api import evaluate_encoder

    result = evaluate_encoder(
        encoder, category or [], data_root, eps, norm, steps, restarts, device, seed, out, force, corpus
    )
    table = Table(title=f"{encoder}")
    for column in ("clean accuracy", f"PGD accuracy ({result['norm']}, eps={result['eps']})", "images"):
        table.add_column(column)
    table.add_row(_number(result["clean_acc"], 3), _number(result["pgd_acc"], 3), str(result["n"]))
    console.print(table)


def _run_folder(category: str, mode: str) -> Path:
    """Where train writes a category's run by default: runs/<category>, a denoiser's runs/<category>-denoise."""
    return Path("runs") / (category if mode == "detect" else f"{category}-denoise")


@app.command("train")
def train(
    category: str = typer.Option(..., "--category", help="Product category to train on (normal images only)."),
    data_root: Path = DATA_ROOT,
    mode: str = typer.Option(
        None,
        "--mode",
        help="detect (anomalies) or denoise (noisy to clean images); default: the recipe's, else detect.",
    ),
    noise: list[str] = typer.Option(
        None,
        "--noise",
        help="denoise: a noise to train on; repeat (gaussian, poisson, salt_pepper, jpeg, sensor; default: all).",
    ),
    recipe: str = RECIPE,
    eps: float = EPS,
    backbone: str = BACKBONE,
    encoder: str = typer.Option(
        None,
        "--encoder",
        help="A robust encoder by name ('robust-ad encoder list'; default: the recipe's shipped one), or 'scratch' "
        "to train one on the category's proxy task.",
    ),
    encoder_weights: Path = typer.Option(None, "--encoder-weights", help="Robust checkpoint to use as encoder."),
    encoder_finetune_epochs: int = typer.Option(
        None, "--encoder-finetune-epochs", help="Fine-tune the loaded encoder on the category's proxy task."
    ),
    out: Path = typer.Option(None, "--out", help="Run folder (default: runs/<category>, runs/<category>-denoise)."),
    epochs: int = typer.Option(None, "--epochs", help="Decoder (or, with --mode denoise, denoiser) training epochs."),
    encoder_epochs: int = typer.Option(None, "--encoder-epochs", help="Robust encoder training epochs."),
    image_size: int = IMAGE_SIZE,
    batch_size: int = BATCH_SIZE,
    device: str = RECIPE_DEVICE,
    precision: str = PRECISION,
    compile_: bool = COMPILE,
    seed: int = RECIPE_SEED,
    resume: bool = RESUME,
    force: bool = FORCE,
) -> None:
    """Train a model for one category: a decoder on the robust encoder (the shipped one unless told), then
    calibration; with --mode denoise, a skip denoiser."""
    from robust_ad.api import encoder_at_eps
    from robust_ad.api import train as train_run
    from robust_ad.config import from_scratch
    from robust_ad.errors import ConfigError

    resumed = out or _run_folder(category, mode or "detect")
    if resume and recipe is None and (resumed / "config.yaml").is_file():
        # the run's own settings under the flags given now: only those can differ from it (laid over the default
        # recipe, every setting the run's recipe changed was said to be ignored)
        recipe = str(resumed / "config.yaml")
    config = _config(
        recipe,
        mode=mode,
        category=category,
        data_root=str(data_root) if data_root else None,
        seed=seed,
        device=device,
        precision=precision,
        compile=compile_,
        data={"image_size": image_size, "batch_size": batch_size},
        encoder={
            "eps": _eps_of(encoder) if eps is None else eps,  # a named encoder's own eps, unless --eps says
            "backbone": backbone,
            "epochs": encoder_epochs,
            "weights": str(encoder_weights) if encoder_weights else None,
            "pretrained": None if encoder == SCRATCH else encoder,
            "finetune_epochs": encoder_finetune_epochs,
        },
        autoencoder={"epochs": epochs},  # the decoder's, or the mirror denoiser's
        denoise={"noises": noise or None, "epochs": epochs},  # the skip denoiser's
    )
    if encoder is not None and encoder_weights is not None:
        raise ConfigError("give one of --encoder NAME or --encoder-weights PATH, not both")
    if noise and config.mode != "denoise":
        raise ConfigError("--noise applies to --mode denoise (this run detects anomalies)")
    if encoder == SCRATCH:
        config = from_scratch(config)
    elif encoder is None and encoder_weights is None and eps is not None:
        config = encoder_at_eps(config, eps)
    run_dir = train_run(config, out or _run_folder(category, config.mode), resume=resume, force=force)
    if _main_process():
        console.print(f"[green]trained[/green] {category}: run folder {run_dir}")


@app.command("score")
def score(
    paths: list[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    model: Path = typer.Option(
        None, "--model", help="Run folder (default: runs/<--category>, else the most recent run in runs/)."
    ),
    category: str = typer.Option(None, "--category", help="Use runs/<category> when --model is not given."),
    onnx: Path = typer.Option(None, "--onnx", help="Score with an exported ONNX file (onnxruntime) instead."),
    out: Path = typer.Option(Path("results"), "--out", help="Folder for scores.csv, scores.json and overlays."),
    threshold: float = typer.Option(None, "--threshold", help="Normalised-score threshold (default: calibrated)."),
    batch: int = typer.Option(16, "--batch", help="Images per inference batch."),
    fail_on_anomaly: bool = typer.Option(
        False, "--fail-on-anomaly", help="Exit with code 1 if any image is anomalous."
    ),
    no_overlays: bool = typer.Option(
        False, "--no-overlays", help="Scores only: no heat-map overlay PNGs (the fastest on a line)."
    ),
    device: str = DEVICE,
    force: bool = FORCE,
) -> None:
    """Score images: verdict, score and heat-map overlay per image.

    Exit codes: 0 done; 1 anomalies found (with --fail-on-anomaly); 2 error; 3 some files could not be read
    (this wins over 1: an unreadable frame is never hidden by an anomaly); 4 internal error; 130 interrupted;
    143 stopped (SIGTERM).
    """
    from robust_ad.api import score as score_images

    run = score_images(paths, model, out, threshold, batch, device, onnx, force, category, not no_overlays)
    console.print(f"model: {run.model}")
    table = Table(title=f"{counted(len(run.rows), 'image')} scored, {run.n_anomalous} anomalous ({out}/scores.csv)")
    for column in ("path", "normalised score", "raw score", "verdict"):
        table.add_column(column)
    for row in run.rows[:50]:
        colour = "red" if row["verdict"] == "anomalous" else "green"
        table.add_row(
            _printable(row["path"]),
            _number(row["normalized_score"], 2),
            _number(row["raw_score"], 3),
            f"[{colour}]{row['verdict']}[/{colour}]",
        )
    if len(run.rows) > 50:
        table.add_row(f"... and {len(run.rows) - 50} more in scores.csv", "", "", "")
    console.print(table)
    for error in run.errors:
        err_console.print(f"[yellow]skipped:[/yellow] {_printable(error['error'])}", highlight=False, soft_wrap=True)
    if run.errors:
        raise typer.Exit(EXIT_UNREADABLE)
    if fail_on_anomaly and run.n_anomalous:
        raise typer.Exit(EXIT_ANOMALOUS)


@app.command("eval")
def evaluate(
    model: Path = typer.Option(..., "--model", help="Run folder written by 'robust-ad train'."),
    mode: str = typer.Option("detect", "--mode", help="detect (anomaly metrics) or denoise (PSNR/SSIM)."),
    baseline: Path = typer.Option(None, "--baseline", help="denoise: the standard (eps=0) run to compare with."),
    category: str = typer.Option(None, "--category", help="Category (default: the model's)."),
    data_root: Path = DATA_ROOT,
    out: Path = typer.Option(None, "--out", help="Report folder (default: <model>/eval)."),
    device: str = DEVICE,
    force: bool = FORCE,
) -> None:
    """Image AUROC, pixel AUROC, AUPRO and F1 on the test split, per defect type; ROC curves and an HTML report."""
    from robust_ad.api import evaluate as evaluate_model
    from robust_ad.errors import ConfigError

    if mode not in ("detect", "denoise"):
        raise ConfigError(f"--mode must be detect or denoise, got {mode}")
    if mode == "denoise":
        return _evaluate_denoiser(model, baseline, data_root, category, out, device, force)
    if baseline is not None:  # it was ignored: the report compared nothing
        raise ConfigError(
            "--baseline compares denoisers (--mode denoise); to compare two detection models, evaluate each (--out "
            "apart) and compare their metrics.json and scores.csv"
        )
    metrics = evaluate_model(model, data_root, category, out, device, force=force)
    table = Table(title=f"{metrics['category']} (eps={metrics['eps']}), threshold {metrics['threshold']:.2f}")
    keys = ("image_auroc", "pixel_auroc", "aupro", "f1", "recall")
    for column in ("defect type", "n", *keys):
        table.add_column(column)

    for defect, values in metrics["per_defect_type"].items():
        table.add_row(defect, str(values["n"]), *(_number(values[k], 3) for k in keys))
    table.add_row("[bold]all[/bold]", str(metrics["n_anomalous"]), *(_number(metrics[k], 3) for k in keys))
    console.print(table)
    normal = metrics["false_positive_rate"]
    if normal is not None:
        console.print(f"normal test images flagged at the threshold: {normal:.1%} of {metrics['n_normal']}")
    console.print(f"report: {out or Path(model) / 'eval'}/report.html")


@app.command("threshold")
def threshold(
    model: Path = typer.Option(..., "--model", help="Run folder whose threshold to change."),
    value: float = typer.Option(None, "--value", help="The new threshold on the normalised score."),
    from_eval: Path = typer.Option(
        None, "--from-eval", help="Adopt the F1-optimal threshold of an 'eval' folder (or its metrics.json)."
    ),
    reason: str = typer.Option(None, "--reason", help="Why, recorded beside the threshold."),
) -> None:
    """Adopt a new threshold for a run, explicitly; the one it replaces is kept in calibration.json."""
    from robust_ad.api import set_threshold

    calibration = set_threshold(model, value, from_eval, reason)
    previous = calibration.previous_thresholds[-1]["threshold"]
    console.print(
        f"threshold of {model}: {previous:.4g} -> {calibration.threshold:.4g} ({calibration.threshold_rule}); "
        f"{calibration.normal_images_above()} of {len(calibration.normal_scores)} held-out normal images score above "
        f"it; 'robust-ad export --model {model} --force' carries it into the run's ONNX file (at the training size: "
        "one exported at another size refits its own)"
    )


@app.command("export")
def export(
    model: Path = typer.Option(..., "--model", help="Run folder written by 'robust-ad train'."),
    out: Path = typer.Option(None, "--out", help="ONNX file to write (default: <model>/model.onnx)."),
    fp16: bool = typer.Option(False, "--fp16", help="Networks in half precision (for GPUs); scoring stays fp32."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset version."),
    batch: str = typer.Option("dynamic", "--batch", help="'dynamic' or a fixed batch size."),
    size: tuple[int, int] = typer.Option(
        None,
        "--size",
        help="Square processing size H W (default: the training size); another size is recalibrated there on the "
        "run's normal images.",
    ),
    input_format: str = typer.Option("uint8", "--input-format", help="uint8 (0-255) or float ([0, 1])."),
    reconstruction: bool = typer.Option(False, "--reconstruction", help="Also output the reconstruction."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the onnxruntime-vs-torch parity check."),
    force: bool = FORCE,
) -> None:
    """Export the whole scoring graph (preprocessing, maps, normalised score), or a denoiser (noisy frame in, clean
    frame out, any size), as one ONNX file."""
    from robust_ad.api import export as export_model
    from robust_ad.errors import ConfigError

    if input_format not in ("uint8", "float"):
        raise ConfigError(f"--input-format must be uint8 or float, got {input_format}")
    meta = export_model(
        model,
        out,
        fp16=fp16,
        opset=opset,
        batch=batch,
        size=tuple(size) if size else None,
        uint8=input_format == "uint8",
        reconstruction=reconstruction,
        verify=not no_verify,
        force=force,
    )
    console.print(f"wrote {meta['path']}")
    if "parity_images" not in meta:
        console.print("parity with torch: not verified (--no-verify)")
    elif "parity_score_max_diff" in meta:
        console.print(
            f"parity with torch on {meta['parity_images']} held-out images of the run: max |score difference| "
            f"{meta['parity_score_max_diff']:.1e}, max |map difference| {meta['parity_map_max_diff']:.1e} "
            f"(normal std units), identical verdicts; on uniform noise {meta['parity_noise_max_diff']:.1e}"
        )
    else:
        console.print(
            f"parity with torch on {meta['parity_images']} held-out images with noise (sigma 25 grey levels; the "
            f"model changed {meta['parity_pixels_changed']:.0%} of their pixels): max |difference| "
            f"{meta['parity_image_max_diff']:.1e}, on uniform noise {meta['parity_noise_max_diff']:.1e}"
        )


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("demo"), "--out", help="Folder for the example data, run, results and report."),
    category: str = typer.Option("bottle", "--category", help="Built-in example category: bottle, fabric or gravel."),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings: a smoke check in about a minute."),
    device: str = DEVICE,
    force: bool = FORCE,
) -> None:
    """The whole job on built-in example data: generate, check, train, evaluate, score, export, ONNX score."""
    from robust_ad.demo import run_demo

    result = run_demo(out, category, quick, force, device)
    m = result["metrics"]
    table = Table(title=f"robust-ad demo: {category} ({result['minutes']:.1f} min)")
    table.add_column("step")
    table.add_column("result")
    table.add_row("model", result["run_dir"])
    table.add_row(
        "image AUROC / pixel AUROC / AUPRO / F1",
        " / ".join("n/a" if m[k] is None else f"{m[k]:.3f}" for k in ("image_auroc", "pixel_auroc", "aupro", "f1")),
    )
    table.add_row("evaluation report", f"{result['run_dir']}/eval/report.html")
    table.add_row("scored test images", f"{result['scored']} ({result['anomalous']} anomalous), {result['results']}")
    table.add_row("ONNX model", f"{result['onnx']} (verdicts agree with torch on {result['onnx_agreement']:.0%})")
    console.print(table)


def _evaluate_denoiser(
    model: Path,
    baseline: Path | None,
    data_root: Path | None,
    category: str | None,
    out: Path | None,
    device: str,
    force: bool,
) -> None:
    from robust_ad.api import evaluate_denoiser
    from robust_ad.training.noise import level_text

    rows = evaluate_denoiser(model, baseline, data_root, category, out, device, force)
    table = Table(title="denoising: mean PSNR (dB) / SSIM on the test images")
    for column in ("noise", "level", "method", "PSNR", "SSIM"):
        table.add_column(column)
    for row in rows:
        level = level_text(row["noise"], row["level"])
        table.add_row(row["noise"], level, row["method"], f"{row['psnr']:.2f}", f"{row['ssim']:.3f}")
    console.print(table)
    folder = out or Path(model) / "eval"
    console.print(f"written: {folder}/denoise_metrics.json, {folder}/denoise_examples.png (one test image per level)")


@app.command("denoise")
def denoise(
    paths: list[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    model: Path = typer.Option(..., "--model", help="Run folder of 'robust-ad train --mode denoise'."),
    out: Path = typer.Option(
        ..., "--out", help="Folder for the denoised images, under the names and subfolders they had (not an input)."
    ),
    compare: bool = typer.Option(
        False, "--compare", help="Also write side-by-side noisy | denoised PNGs (comparison/<name>.png)."
    ),
    sigma: float = typer.Option(
        None, "--sigma", help="Known noise level (std on 0..255 grey levels); default: estimated per image."
    ),
    guard: bool = typer.Option(
        None,
        "--guard/--no-guard",
        help="Blend output and input by SURE so the output is not worse than its input (default: the model's).",
    ),
    device: str = DEVICE,
    force: bool = FORCE,
) -> None:
    """Denoise images at their own size; outputs keep each input's bit depth and channels. Exit code 3 if some
    were unreadable."""
    from robust_ad.api import denoise as denoise_images

    written, errors = denoise_images(paths, model, out, compare, device, force, sigma, guard)
    console.print(f"denoised {counted(len(written), 'image')} into {out}")
    for error in errors:
        err_console.print(f"[yellow]skipped:[/yellow] {_printable(error['error'])}", highlight=False, soft_wrap=True)
    if errors:
        raise typer.Exit(EXIT_UNREADABLE)


def _interrupted(argv: list[str]) -> str:
    """What an interrupted command left: a training continues with --resume; any other output is incomplete."""
    words = [word for word in argv if not word.startswith("-")]
    if words[:1] == ["train"] or words[:2] in (["encoder", "train"], ["encoder", "pretrain"]):
        return "interrupted (an interrupted training continues with --resume)"
    if words[:1] == ["score"]:
        return "interrupted: scores.csv lists the frames scored before it, the others as 'not scored'"
    return "interrupted: any output it had begun is incomplete; run the command again (with --force to replace it)"


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler, a CI cancel, timeout) unwinds like Ctrl-C: output folders record what was written and
    release their locks; the exit code is the conventional 128 + 15."""
    err_console.print(_interrupted(sys.argv[1:]).replace("interrupted", "terminated", 1))
    raise SystemExit(128 + signum)


def main() -> None:
    """Console-script entry point: usage errors, like every other error, are one line (exit 2)."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        code = app(standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print(_interrupted(sys.argv[1:]))
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # click's usage errors (typer vendors its own click): they format themselves
        if not hasattr(exc, "format_message"):
            raise
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "robust-ad"
        sys.exit(_fail(f"{exc.format_message()} (see '{command} --help')", EXIT_ERROR).exit_code)
    if code == EXIT_INTERRUPTED:  # typer answers Ctrl-C with this code, silently
        err_console.print(_interrupted(sys.argv[1:]))
    sys.exit(code or 0)
