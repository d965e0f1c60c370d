"""The Python API: one function per CLI command, so a notebook can do what the command line does."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from robust_ad.config import ARCHITECTURE, NAMED_ENCODER_DECIDES, Config, for_mode, from_scratch, load_config
from robust_ad.errors import ConfigError, DataError, ModelError, RobustADError, counted
from robust_ad.fileio import EVALUATION, RUN, check_writable, refuse_inside, write_json

if TYPE_CHECKING:  # the API imports its heavy modules when called: 'import robust_ad.api' stays light
    import numpy as np

    from robust_ad.data.dataset import AnomalyDataset

log = logging.getLogger(__name__)


def _check_out(out: str | Path, suffix: str, force: bool, data: str | Path | None, resume: bool = False) -> None:
    """An output file of the named type (so --force cannot replace a dataset image or a model file) outside the
    ``data`` read (data root or corpus), not overwritten without ``force`` (``resume`` continues it)."""
    if Path(out).suffix != suffix:
        raise ConfigError(f"--out must name a {suffix} file, got {out}")
    inputs = [data] if data and Path(data).is_dir() else []  # "": no data root given (not the working directory)
    if resume:
        refuse_inside(out, inputs)
    else:
        check_writable(out, force, inputs=inputs)


def _input_paths(paths: str | Path | list[str | Path], files: list[Path]) -> list[Path]:
    """What a command reads: the files, and the folders it was given (an output may not lie inside either)."""
    from robust_ad.scoring.files import as_list

    return [*files, *(Path(p) for p in as_list(paths) if Path(p).is_dir())]


def synthesize(out: str | Path, category: str, **options) -> Path:
    """``robust-ad datasets synth``: a built-in example category in the MVTec AD layout, exact masks, deterministic
    by ``seed`` (options: :func:`robust_ad.data.synth.synthesize`'s size, n_train, n_test_good, n_per_defect,
    seed, force)."""
    from robust_ad.data.synth import synthesize as write_category

    return write_category(out, category, **options)


def assemble_corpus(out: str | Path, **options) -> dict:
    """``robust-ad datasets corpus``: a pretraining corpus of photographs and photo textures; images per source
    (options: :func:`robust_ad.data.corpus.assemble_corpus`'s)."""
    from robust_ad.data.corpus import assemble_corpus as assemble

    return assemble(out, **options)


def check_dataset(data_root: str | Path, category: str, layout: str = "auto", seed: int = 0):
    """``robust-ad datasets check``: decode every image and mask of a dataset; the report's ``problems`` make it
    unusable (``usable``, ``reason()``), its ``notes`` are said but not refused."""
    from robust_ad.data import AnomalyDataset
    from robust_ad.data.check import check_dataset as check

    return check(AnomalyDataset.load(data_root, category, layout, seed=seed))


def _as_config(config: Config | dict) -> Config:
    """A config, or a dict of settings over the default recipe (as ``--recipe`` left out)."""
    return load_config("default", config) if isinstance(config, dict) else config


def train_encoder(
    config: Config | dict, categories: str | list[str], out: str | Path, resume: bool = False, force: bool = False
):
    """``robust-ad encoder train``: robust proxy training on the normal images of ``categories``."""
    from robust_ad.data.loading import labelled_files
    from robust_ad.device import resolve_device
    from robust_ad.scoring.files import as_list
    from robust_ad.training import distributed
    from robust_ad.training.encoder import train_encoder as _train

    config, categories = _as_config(config), as_list(categories)  # one category alone is one, not its letters
    _check_out(out, ".pt", force, config.data_root, resume)
    files = labelled_files(config, categories, "train")
    with distributed.process_group(resolve_device(config.device)) as device:
        return _train(
            files,
            config.encoder.model_copy(update={"pretrained": None}),  # it trains one: none is named
            None,
            device,
            config.seed,
            out,
            resume,
            categories,
            config.precision,
            config.data.workers,
            compile=config.compile,
            on_device=config.data.on_device,
        )


def pretrain_encoder(
    config: Config | dict, corpus: str | Path, out: str | Path, resume: bool = False, force: bool = False
):
    """``robust-ad encoder pretrain``: robust (PGD) training on a corpus from ``datasets corpus``. The proxy task
    is which source image a patch comes from (as many classes as source images) and which corruption it carries
    (``labels+corruption``), on random crops of half to all of each corpus image, resized to
    ``data.image_size``. Every tenth patch of each photograph is held out ('encoder eval --corpus')."""
    from robust_ad.data.corpus import corpus_files
    from robust_ad.device import resolve_device
    from robust_ad.training import distributed
    from robust_ad.training.encoder import train_encoder as _train

    config = _as_config(config)
    files = corpus_files(corpus, "train", cache_mb=config.data.cache_mb)
    _check_out(out, ".pt", force, corpus, resume)
    n_sources = len(set(files.labels))
    files = files.verify(config.data.skip_bad, f"reading the corpus ({len(files)} images, {n_sources} sources)")
    encoder = config.encoder.model_copy(update={"proxy_task": "labels+corruption", "pretrained": None})
    with distributed.process_group(resolve_device(config.device)) as device:
        return _train(
            files,
            encoder,
            None,
            device,
            config.seed,
            out,
            resume,
            [str(corpus)],
            config.precision,
            config.data.workers,
            compile=config.compile,
            on_device=config.data.on_device,
            crop=config.data.image_size,
        )


def list_encoders() -> list[dict]:
    """``robust-ad encoder list``: the shipped and the published robust encoders, whether verified, and their cache
    state ('in package', or :func:`~robust_ad.training.pretrained.cache_state`'s)."""
    from robust_ad.training.pretrained import REGISTRY, cache_state, expected_sha256

    return [
        {
            "name": e.name,
            "backbone": e.backbone,
            "norm": e.norm,
            "eps": e.eps,
            "verified": e.sha256 is not None,
            "shipped": e.shipped,
            "sha256": expected_sha256(e),
            "cached": "in package" if e.shipped else cache_state(e),
        }
        for e in REGISTRY.values()
    ]


def fetch_encoder(name: str) -> Path:
    """``robust-ad encoder fetch NAME``: download (or find in the cache) and verify a published encoder."""
    from robust_ad.training.pretrained import fetch

    return fetch(name)


def evaluate_encoder(
    encoder: str | Path,
    categories: str | list[str] | None,
    data_root: str | Path,
    eps: float | None = None,
    norm: str | None = None,
    steps: int = 20,
    restarts: int = 2,
    device: str = "auto",
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
    corpus: str | Path | None = None,
) -> dict:
    """``robust-ad encoder eval``: clean and PGD accuracy on the held-out normal images of ``categories``, or on
    the held-out images of the ``corpus`` an ``encoder pretrain`` encoder was trained on.

    ``encoder`` is a file of ``encoder train`` / ``encoder pretrain``, or a published encoder's name; for the
    latter, whose classes are ImageNet's, the accuracy under attack is the share of its own predictions that
    PGD within ``eps`` (default: its training eps) cannot move."""
    from torch.utils.data import DataLoader

    from robust_ad.data.corpus import corpus_files
    from robust_ad.data.loading import labelled_files
    from robust_ad.device import resolve_device
    from robust_ad.scoring.files import as_list
    from robust_ad.training import pretrained
    from robust_ad.training.encoder import EncoderRun, attack_accuracy
    from robust_ad.training.encoder import evaluate_encoder as _evaluate

    categories = as_list(categories or [])  # one category alone is one, not its letters
    if out is not None:
        _check_out(out, ".json", force, corpus or data_root)
    if bool(categories) == (corpus is not None):
        raise ConfigError("give either categories or a corpus to evaluate on")
    if not Path(encoder).is_file() and str(encoder) in pretrained.REGISTRY:
        entry = pretrained.lookup(str(encoder))
        dev = resolve_device(device)
        model = pretrained.classifier(entry.name).to(dev)
        config = load_config(None, {"data_root": str(data_root) if data_root else None, "seed": seed})
        files = corpus_files(corpus, "val", 224) if corpus else labelled_files(config, categories, "val")
        images = DataLoader(files, 16)
        eps, norm = entry.eps if eps is None else eps, norm or entry.norm
        result = attack_accuracy(model, ((x, None) for x, _ in images), eps, norm, steps, restarts, dev)
        result = {**result, "clean_acc": None, "target": "the model's own predictions"}
    else:
        run, _ = EncoderRun.load(encoder)
        data = {"image_size": run.image_size}
        config = load_config(None, {"data_root": str(data_root) if data_root else None, "seed": seed, "data": data})
        if corpus is not None:
            files = corpus_files(corpus, "val", run.image_size)
            if run.proxy.uses_labels and max(files.labels) >= run.proxy.n_labels:
                raise ConfigError(f"{encoder} was not pretrained on the corpus {corpus} (it has more sources)")
        elif run.proxy.uses_labels and list(categories) != run.categories:
            raise ConfigError(f"this encoder classifies the categories {run.categories}: evaluate on exactly those")
        else:
            files = labelled_files(config, categories, "val")
        result = _evaluate(run, files, None, eps, norm, steps, restarts, resolve_device(device), seed)
    if out is not None:
        write_json(out, {"encoder": str(encoder), "categories": categories, "corpus": corpus and str(corpus), **result})
    return result


def encoder_at_eps(config: Config, eps: float) -> Config:
    """``config`` for an explicitly asked ``eps``: its named encoder when robust at that eps (eps 0: its standard
    twin), else the one of its family robust at ``eps`` (e.g. another shipped one), else an encoder trained on
    the category at ``eps``."""
    from robust_ad.training.pretrained import at_eps, lookup

    name = config.encoder.pretrained
    config = config.model_copy(update={"encoder": config.encoder.model_copy(update={"eps": eps})})
    if not name or eps == 0 or lookup(name).eps == eps:
        return config
    sibling = at_eps(name, eps)
    if sibling is not None:
        log.info("--eps %g: using %s instead of %s", eps, sibling.name, name)
        return config.model_copy(update={"encoder": config.encoder.model_copy(update={"pretrained": sibling.name})})
    robust_at = lookup(name).eps
    log.info("--eps %g: %s is robust at eps %g; training the encoder on the category instead", eps, name, robust_at)
    return from_scratch(config)


def with_published_encoder(config: Config) -> Config:
    """``config`` with the backbone, norm and eps of its published encoder (``encoder.pretrained``); eps = 0
    asks for the standard twin (the same architecture's eps-0 checkpoint). Any other eps given (a recipe's or an
    override's, not the default) is a contradiction, refused: :func:`encoder_at_eps` (what ``--eps`` does)
    resolves an eps asked for."""
    from robust_ad.training.pretrained import lookup

    name = config.encoder.pretrained
    if not name or config.encoder.weights:  # the user's weights replace the recipe's named encoder
        return from_scratch(config) if name else config
    entry = lookup(name)
    given = config.encoder.model_fields_set  # by a recipe or an option, not defaults
    for key in ARCHITECTURE:
        if key in given and getattr(config.encoder, key) != getattr(entry, key):
            raise ConfigError(
                f"encoder.{key} {getattr(config.encoder, key)} contradicts encoder.pretrained {name}, a "
                f"{entry.backbone} of width {entry.width:g} ({entry.norm}): name an encoder of that architecture "
                "('robust-ad encoder list'), or train one on the category (--encoder scratch)"
            )
    if "eps" in given and config.encoder.eps not in (0, entry.eps):
        eps = f"{config.encoder.eps:g}"
        raise ConfigError(
            f"encoder.eps {eps} contradicts encoder.pretrained {name}, robust at eps {entry.eps:g}: name an encoder "
            f"robust at eps {eps} ('robust-ad encoder list'; train --eps {eps} without --encoder picks one, as "
            "robust_ad.api.encoder_at_eps does), or train one on the category (--encoder scratch)"
        )
    if config.encoder.eps == 0 and entry.eps != 0:
        entry = lookup(entry.twin)
        log.info("eps 0: using %s, the standard twin of %s", entry.name, name)
    encoder = config.encoder.model_copy(
        update={
            "pretrained": entry.name,
            "backbone": entry.backbone,
            "norm": entry.norm,
            "eps": entry.eps,
            "width": entry.width,
        }
    )
    return config.model_copy(update={"encoder": encoder})


def with_encoder_file(config: Config, quiet: bool = False) -> Config:
    """``config`` with the architecture and eps of its ``encoder.weights`` file where the file says them: a robust-ad
    encoder file records them, and a published or shipped encoder used by path is known by its hash. The file, not
    the recipe, decides the architecture its weights fit and the eps the run records. Other weights files do not say
    their eps: the run records the config's (``--eps``). What it decides is logged unless ``quiet``."""
    from robust_ad.training.encoder import file_architecture
    from robust_ad.training.pretrained import identify

    say = logging.DEBUG if quiet else logging.WARNING

    weights = config.encoder.weights
    if not weights or not Path(weights).is_file():
        return config
    recorded, what = file_architecture(weights), "a robust-ad encoder file"
    if recorded is None:
        entry = identify(weights)
        if entry is None:  # a torchvision or robustness-library file: its eps is the user's to say
            log.log(
                say,
                "%s does not say the eps it was trained at: the run records encoder.eps %g (give --eps with its own)",
                weights,
                config.encoder.eps,
            )
            return config
        recorded, what = {k: getattr(entry, k) for k in NAMED_ENCODER_DECIDES}, f"encoder {entry.name}"
    if all(getattr(config.encoder, k) == v for k, v in recorded.items()):
        return config
    if recorded["eps"] != config.encoder.eps:
        log.log(
            say,
            "%s (%s) was trained at eps %g: the run records that, not %g",
            weights,
            what,
            recorded["eps"],
            config.encoder.eps,
        )
    log.log(
        min(say, logging.INFO),
        "%s: a %s encoder of width %g: using that architecture",
        weights,
        recorded["backbone"],
        recorded["width"],
    )
    return config.model_copy(update={"encoder": config.encoder.model_copy(update=recorded)})


def resolve_encoder(config: Config, quiet: bool = False) -> Config:
    """``config`` with the architecture (and, for a published name, the eps) of the encoder it loads:
    :func:`with_published_encoder`, then :func:`with_encoder_file` (``quiet``: the latter logs nothing)."""
    return with_encoder_file(with_published_encoder(config), quiet)


def _prepare_encoder(model, config: Config, train_files, run_dir: Path, resume: bool, device) -> dict:
    """Fine-tune the loaded encoder (published or the user's: ``train`` loads it before the run folder is made)
    when ``encoder.finetune_epochs``, or adversarially train the encoder from scratch; resumable, in the run
    folder."""
    from robust_ad import rundir
    from robust_ad.training.encoder import train_encoder as _train

    source = config.encoder.pretrained or config.encoder.weights
    encoder_config, initial = config.encoder, None
    if source:  # already loaded by ``train``
        if config.encoder.finetune_epochs == 0:
            return {"encoder_source": str(source), "encoder_minutes": 0.0}
        encoder_config = config.encoder.model_copy(update={"epochs": config.encoder.finetune_epochs})
        initial = model.encoder
    path = run_dir / rundir.ENCODER
    run = _train(
        train_files,
        encoder_config,
        None,
        device,
        config.seed,
        path,
        resume and path.is_file(),
        precision=config.precision,
        workers=config.data.workers,
        compile=config.compile,
        on_device=config.data.on_device,
        initial=initial,
    )
    model.encoder.load_state_dict(run.encoder.state_dict())
    fine_tuned = f"{source}, fine-tuned {encoder_config.epochs} epochs on the category's proxy task"
    return {
        "encoder_source": fine_tuned if source else "trained",
        "encoder_minutes": run.minutes,
        "encoder_history": run.history,
    }


def _verification_images(dataset, size: int, normal) -> tuple:
    """Up to 8 held-out normal and 8 defect images (spread over the defect types) at twice the model's size,
    kept in the run folder for the ONNX parity check of ``export``."""
    import numpy as np

    from robust_ad.data.arrays import load_samples

    def readable(samples) -> np.ndarray:  # never fail a finished training over a verification image
        try:
            return load_samples(samples, 2 * size, skip_bad=True).images
        except DataError:
            return np.zeros((0, 2 * size, 2 * size, 3), np.float32)

    defects = [s for s in dataset.test if s.label == 1]
    return readable(normal[:8]), readable(defects[:: max(1, len(defects) // 8)][:8])


def _check_calibration_images(dataset, config: Config) -> None:
    """A detection model calibrated on one normal image has no spread to normalise by (every other image scored
    1e6 or more, all anomalous): refused before training."""
    from robust_ad.scoring.calibration import MIN_CALIBRATION

    calibrating = len(dataset.val) or len(dataset.train)  # without held-out images: the training images
    if config.mode == "detect" and calibrating < MIN_CALIBRATION:
        total = len(dataset.train) + len(dataset.val)
        raise DataError(
            f"category '{dataset.category}' has {counted(total, 'normal training image')}, {len(dataset.val)} of "
            f"them held out to calibrate on (data.val_fraction {config.data.val_fraction:g}): calibrating needs at "
            f"least {MIN_CALIBRATION}; add normal images or raise data.val_fraction"
        )


def _refuse_resume_or_overwrite(run_dir: Path, resume: bool, force: bool) -> None:
    from robust_ad import rundir
    from robust_ad.errors import OverwriteError

    if resume and not rundir.is_unfinished(run_dir):
        if rundir.is_finished(run_dir):
            raise OverwriteError(f"run {run_dir} already finished: nothing to resume (--force trains it again)")
        raise OverwriteError(f"--resume: {run_dir} holds no interrupted run to continue")
    if not resume and not force and rundir.is_unfinished(run_dir):
        raise OverwriteError(
            f"run folder {run_dir} holds an interrupted run: pass --resume to continue it, or --force to start over"
        )


def _warn_ignored_on_resume(given: Config, saved: Config) -> None:
    """A resumed run continues with its own config.yaml: say which settings given now differ and are ignored."""

    def flat(values: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in values.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    with contextlib.suppress(RobustADError):  # compared as the run stored it: encoder resolved, mode applied
        given = for_mode(resolve_encoder(given, quiet=True))  # the run's own config says it, once
    now, then = flat(given.to_dict()), flat(saved.to_dict())
    same_root = not now["data_root"] or Path(now["data_root"]).resolve() == Path(str(then["data_root"])).resolve()
    ignored = [f"{k} {now[k]!r} (the run's {then.get(k)!r})" for k in now if now[k] != then.get(k)]
    ignored = [item for item in ignored if not (item.startswith("data_root ") and same_root)]
    if ignored:
        shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        log.warning("resuming with the run's own settings (its config.yaml); ignored: %s", shown)


def _fit(model, config: Config, dataset, run_dir: Path, resume: bool, device):
    """The training of ``train``: the encoder (loaded, fine-tuned or trained), then the decoder; returns the
    training files, the held-out normal set, the corruption (denoising) and what the encoder and decoder
    trainings report."""
    from robust_ad import rundir
    from robust_ad.data.loading import image_files, load_split
    from robust_ad.device import seed_everything
    from robust_ad.training.autoencoder import fit_decoder
    from robust_ad.training.noise import random_corruption

    seed_everything(config.seed)
    train_files = image_files(dataset, "train", config)
    val_set = load_split(dataset, "val", config) if dataset.val else None
    info = _prepare_encoder(model, config, train_files, run_dir, resume, device)
    corrupt = random_corruption(config.denoise) if config.mode == "denoise" else None
    history = fit_decoder(
        model,
        config.autoencoder,
        train_files,
        val_set.images if val_set else None,
        config.data.batch_size,
        device,
        config.seed,
        run_dir / rundir.CHECKPOINT,
        resume,
        corrupt,
        config.precision,
        config.data.workers,
        compile=config.compile,
        on_device=config.data.on_device,
    )
    return train_files, val_set, corrupt, info, history


def train(config: Config | dict, out: str | Path, resume: bool = False, force: bool = False) -> Path:
    """``robust-ad train``: robust encoder, then decoder, then calibration; returns the run folder. ``config``: a
    :class:`~robust_ad.config.Config` (``load_config``), or a dict of settings over the default recipe.

    With ``resume`` the run folder's own config.yaml is used and training continues where it stopped.
    Everything that can be checked (config, model layers, dataset, run folder) is checked before training.
    """
    import time
    from datetime import UTC, datetime

    import torch
    from torch.utils.data import DataLoader

    from robust_ad import machine, rundir
    from robust_ad.data.arrays import load_samples
    from robust_ad.data.images import write_image
    from robust_ad.data.loading import open_dataset
    from robust_ad.device import resolve_device, seed_everything
    from robust_ad.fileio import output_folder
    from robust_ad.scoring.calibration import calibrate
    from robust_ad.scoring.scorer import AnomalyScorer, correct_colour
    from robust_ad.tensors import to_images, to_tensor
    from robust_ad.training import distributed
    from robust_ad.training.autoencoder import colour_error
    from robust_ad.training.build import build_autoencoder
    from robust_ad.training.engine import effective_precision
    from robust_ad.training.pretrained import fetch
    from robust_ad.training.weights import load_encoder_weights
    from robust_ad.viz import reconstruction_grid

    config = _as_config(config)  # a dict: as train without --recipe
    run_dir = Path(out)
    _refuse_resume_or_overwrite(run_dir, resume, force)
    if resume:
        given, config = config, rundir.read_config(run_dir)
        _warn_ignored_on_resume(given, config)
    config = for_mode(resolve_encoder(config))
    device = resolve_device(config.device)
    seed_everything(config.seed)  # the initial weights too: the same config trains the same model in any process
    model = build_autoencoder(config)  # checks the backbone's layer names before any work
    dataset = open_dataset(config)
    _check_calibration_images(dataset, config)
    # absolute: eval and export --size read the run's data from any working directory
    config = config.model_copy(update={"data_root": os.path.abspath(dataset.root)})
    read = [dataset.root, *([config.encoder.weights] if config.encoder.weights else [])]
    with distributed.process_group(device) as device:
        distributed.local_batch_size(config.data.batch_size)  # splits over the processes: checked before writing
        if config.encoder.weights or config.encoder.pretrained:
            # loaded here, once, before the run folder is made: a file that does not fit, or a published encoder
            # that cannot be downloaded, leaves nothing behind (a published one: one download into the shared cache)
            with distributed.main_first():
                load_encoder_weights(model.encoder, config.encoder.weights or fetch(config.encoder.pretrained))
        if not (config.encoder.pretrained or config.encoder.weights) or config.encoder.finetune_epochs:
            distributed.local_batch_size(config.encoder.batch_size)
        if not distributed.is_main():  # trains in step with process 0, which alone writes the run folder
            _fit(model, config, dataset, run_dir, resume, device)
            return run_dir
        with output_folder(run_dir, force, RUN, inputs=read, keep=resume):
            if not resume:
                rundir.write_config(run_dir, config)
            earlier = rundir.trained_seconds(run_dir) if resume else 0.0  # the interrupted part, by its epochs
            began = time.perf_counter() - earlier
            train_files, val_set, corrupt, info, history = _fit(model, config, dataset, run_dir, resume, device)
            rundir.write_losses(run_dir, history)
            shown = (val_set or load_samples(dataset.train[:16], config.data.image_size)).images

            given = shown  # what the model is given: the noisy images in denoising mode
            if corrupt is not None:
                given = to_images(corrupt(to_tensor(shown), torch.Generator().manual_seed(config.seed)))
            reconstructed = model.reconstruct(given)
            decoder_colour = colour_error(shown, reconstructed)
            memory = None
            if config.mode == "detect":
                scorer = AnomalyScorer(model, config.scoring, config.data.image_size).to(device)
                train_batches = (images for images, _ in DataLoader(train_files, config.data.batch_size))
                record = calibrate(scorer, train_batches, shown, config.data.batch_size, held_out=val_set is not None)
                record["train_aspect_ratio"] = train_files.aspect_ratio
                rundir.write_calibration(run_dir, rundir.Calibration.model_validate(record))
                memory = scorer.memory_statistics()
                reconstructed = to_images(  # as scoring has it
                    correct_colour(to_tensor(reconstructed), scorer.colour_matrix.cpu(), scorer.colour_offset.cpu())
                )
            write_image(run_dir / rundir.GRID, reconstruction_grid(given, reconstructed))
            colour = colour_error(shown, reconstructed)
            held_out = dataset.val or dataset.train
            rundir.write_verification(run_dir, *_verification_images(dataset, config.data.image_size, held_out))
            rundir.write_split(run_dir, dataset)
            rundir.save_model(run_dir, model.cpu(), memory)
            minutes = (time.perf_counter() - began) / 60
            decoder_minutes = sum(row["seconds"] for row in history) / 60
            rundir.write_training(
                run_dir,
                rundir.TrainingInfo(
                    category=config.category,
                    eps=config.encoder.eps,
                    device=str(device),
                    machine=machine.describe(),
                    minutes=minutes,
                    decoder_minutes=decoder_minutes,
                    processes=distributed.world_size(),
                    precision=effective_precision(config.precision, device),
                    colour_error_255=colour,
                    decoder_colour_error_255=decoder_colour if config.mode == "detect" else [],
                    finished=datetime.now(UTC).isoformat(timespec="seconds"),
                    **info,
                ),
            )
            (run_dir / rundir.CHECKPOINT).unlink(missing_ok=True)
    return run_dir


def _torch_predictor(scorer, batch_size: int, calibration):
    """The torch twin of the ONNX predictor: full-size frames resized on the host with the graph's resize, checked
    against the training images as ``calibration`` describes them."""
    import numpy as np

    from robust_ad.data.resize import resize_image
    from robust_ad.runtime import FrameCheck
    from robust_ad.scoring.inference import predict

    check_frames = FrameCheck(
        calibration.train_aspect_ratio,
        scorer.train_size,
        calibration.train_channel_spread,
        calibration.train_colour_range,
    )

    def run(images):
        for image in images:
            check_frames(image)
        resized = np.stack([resize_image(image, scorer.train_size) for image in images])
        prediction = predict(scorer, resized, batch_size)
        return prediction.maps, prediction.scores, prediction.raw_scores

    return run


def _check_finite(value: float | None, name: str) -> None:
    import math

    if value is not None and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")


def score(
    paths: str | Path | list[str | Path],
    model: str | Path | None = None,
    out: str | Path = "results",
    threshold: float | None = None,
    batch_size: int = 16,
    device: str = "auto",
    onnx: str | Path | None = None,
    force: bool = False,
    category: str | None = None,
    overlays: bool = True,
):
    """``robust-ad score``: a verdict, score and heat-map overlay per image (``overlays``: at most 1024 px a panel);
    scores.csv / scores.json in ``out``.

    ``onnx`` scores with the exported file through onnxruntime instead of torch. With neither ``model`` nor
    ``onnx``, the run of ``category`` in ./runs is used, else the most recently trained run there.
    """
    from robust_ad.fileio import output_folder
    from robust_ad.scoring.files import resolve_paths, score_files

    files = resolve_paths(paths)
    predictor, chosen, vmax, used = _scoring_model(model, onnx, threshold, batch_size, device, category)
    with output_folder(out, force, "results folder", inputs=_input_paths(paths, files), models=[used]) as folder:
        return score_files(files, predictor, chosen, folder, vmax, batch_size, overlays, str(used))


def _scoring_model(model, onnx, threshold: float | None, batch_size: int, device: str, category: str | None):
    """What scores, for :func:`score` and :func:`predict`: (predictor, threshold, map_vmax, the run or file)."""
    from robust_ad import rundir
    from robust_ad.device import resolve_device

    if model is not None and onnx is not None:
        raise ConfigError("give one of --model RUN_FOLDER or --onnx FILE, not both")
    if batch_size < 1:
        raise ConfigError(f"--batch must be at least 1, got {batch_size}")
    _check_finite(threshold, "--threshold")
    if onnx is not None:
        from robust_ad.runtime import InferenceSession

        session = InferenceSession(onnx, device=device)
        if session.metadata.get("mode") != "detect":
            raise ModelError(f"{onnx} is a denoising model: score needs a detection model's ONNX file")
        meta = session.metadata
        if threshold is None:  # a threshold given here replaces the file's anyway
            _warn_if_stale(Path(onnx), meta)
        chosen = meta["threshold"] if threshold is None else threshold
        return session.predictor(batch_size), chosen, meta["map_vmax"], onnx
    if model is None:
        model = rundir.find_run(category)
        log.info("scoring with the run %s", model)
    scorer = rundir.load_scorer(model, resolve_device(device))
    calibration = rundir.read_calibration(model)
    predictor = _torch_predictor(scorer, batch_size, calibration)
    chosen = calibration.threshold if threshold is None else threshold
    return predictor, chosen, calibration.map_vmax, model


@dataclass
class Frames:
    """What :func:`predict` gives for frames in memory: per frame the anomaly map (at the model's size, in
    normal-standard-deviation units), the normalised and raw image scores, and the verdict at ``threshold``."""

    maps: np.ndarray
    scores: np.ndarray
    raw_scores: np.ndarray
    verdicts: list[str]
    threshold: float


def predict(
    frames,
    model: str | Path | None = None,
    onnx: str | Path | None = None,
    threshold: float | None = None,
    batch_size: int = 16,
    device: str = "auto",
    category: str | None = None,
) -> Frames:
    """``robust-ad score`` for frames in memory (a camera grab, a notebook): a list of (H, W, 3) RGB frames of any
    sizes, or an (N, H, W, 3) array; uint8, uint16 or float in [0, 1] (:func:`robust_ad.runtime.as_frames`). The
    model is chosen as :func:`score` chooses it; nothing is written."""
    import numpy as np

    from robust_ad.runtime import as_frames
    from robust_ad.scoring.files import verdict

    predictor, chosen, _, _ = _scoring_model(model, onnx, threshold, batch_size, device, category)
    images = [as_frames(np.asarray(frame)[None])[0] for frame in frames]
    if not images:
        raise DataError("no frames given")
    maps, scores, raw = predictor(images)
    return Frames(maps, scores, raw, [verdict(float(s), chosen) for s in scores], chosen)


def _warn_if_stale(onnx: Path, meta: dict) -> None:
    """Warns when an ONNX file sits in a run folder whose threshold has changed since it was exported (it carries
    the threshold of its export; a file recalibrated at another size carries its own), or when it was exported at
    another size before exports were recalibrated there (its threshold does not hold at its size)."""
    from robust_ad import rundir

    if not (onnx.parent / rundir.CALIBRATION).is_file() or str(meta.get("calibration", "")).startswith("recalibrated"):
        return
    try:
        calibration, config = rundir.read_calibration(onnx.parent), rundir.read_config(onnx.parent)
    except RobustADError:  # not this file's run after all: nothing to compare with
        return
    if "calibration" not in meta and meta["image_size"] != config.data.image_size:
        log.warning(
            "%s was exported at %d px, not the training size %d, by a robust-ad that kept the training size's "
            "threshold there: its verdicts are wrong; export it again",
            onnx,
            meta["image_size"],
            config.data.image_size,
        )
    elif abs(calibration.threshold - meta["threshold"]) > 1e-6:
        log.warning(
            "%s carries the threshold %.3f, its run folder's calibration.json now %.3f: export again (--force) to "
            "score with the new one",
            onnx,
            meta["threshold"],
            calibration.threshold,
        )


def evaluate(
    model: str | Path,
    data_root: str | Path | None = None,
    category: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 16,
    force: bool = False,
) -> dict:
    """``robust-ad eval``: metrics.json, scores.csv (per test image), roc.png and report.html for a model on its
    category's test split.

    Writes into ``out`` (default ``<model>/eval``) only; the model's own files are never changed.
    """
    from robust_ad import machine, rundir
    from robust_ad.data.loading import load_split, open_dataset
    from robust_ad.device import resolve_device
    from robust_ad.fileio import output_folder, write_text
    from robust_ad.report import html_report, roc_figure
    from robust_ad.scoring.evaluate import evaluate as _evaluate
    from robust_ad.scoring.evaluate import per_image_csv
    from robust_ad.scoring.inference import predict

    config = rundir.read_config(model)
    scorer = rundir.load_scorer(model, resolve_device(device))
    calibration = rundir.read_calibration(model)
    dataset = unseen(open_dataset(config, data_root, category), model)
    test = load_split(dataset, "test", config)
    with output_folder(out or Path(model) / "eval", force, EVALUATION, inputs=[dataset.root], models=[model]) as folder:
        prediction = predict(scorer, test.images, batch_size, "evaluating")
        metrics = _evaluate(test, prediction, calibration.threshold)
        metrics.update(
            {
                "category": dataset.category,
                "model": os.path.abspath(model),
                "model_sha256": rundir.model_digest(model),
                "eps": config.encoder.eps,
                "image_size": config.data.image_size,
                "machine": machine.describe(),
            }
        )
        if metrics["f1_max_threshold"] is not None:
            metrics["f1_max_threshold_rule"] = (
                f"F1-optimal on the labelled test split of {dataset.root}; optimistic, since it is tuned on the "
                "evaluated images; use it with 'score --threshold' if you accept that"
            )
        write_json(folder / "metrics.json", metrics)
        write_text(folder / "scores.csv", per_image_csv(test, prediction, calibration.threshold))
        roc_figure(folder / "roc.png", test, prediction, f"{dataset.category} (eps={config.encoder.eps})")
        html_report(folder, metrics, test, prediction, calibration.map_vmax)
    return metrics


def unseen(dataset: AnomalyDataset, run: str | Path) -> AnomalyDataset:
    """``dataset`` without the test images that ``run`` trained or calibrated on (its split.json): a folder of good
    images that grew since training draws its test share anew, and images it had trained on were scored as unseen
    (optimistic metrics). Said when it happens; refused when no normal test image is left."""
    import dataclasses

    from robust_ad import rundir

    seen = rundir.seen_images(run)
    if not seen and dataset.layout == "folder":
        log.warning(
            "%s does not record the images it trained on (trained before robust-ad kept split.json): if %s changed "
            "since, its test share may hold them",
            run,
            dataset.root,
        )
    test = [s for s in dataset.test if s.path.relative_to(dataset.root).as_posix() not in seen]
    if len(test) < len(dataset.test):
        left_out = len(dataset.test) - len(test)
        if not any(s.label == 0 for s in test):
            raise DataError(
                f"every normal test image of {dataset.root} is one {run} trained or calibrated on: add good images "
                "it has not seen to evaluate it"
            )
        log.warning(
            "%s of %s %s among the images %s trained or calibrated on: left out of the evaluation",
            counted(left_out, "test image"),
            dataset.root,
            "is" if left_out == 1 else "are",
            run,
        )
    return dataclasses.replace(dataset, test=test)


def set_threshold(
    model: str | Path, value: float | None = None, from_eval: str | Path | None = None, reason: str | None = None
):
    """``robust-ad threshold``: adopt a new threshold for a run (a value, or the F1-optimal one an ``eval``
    found), recording the one it replaces. Returns the new calibration record."""
    import json

    from robust_ad import rundir
    from robust_ad.fileio import output_folder

    if (value is None) == (from_eval is None):
        raise ConfigError("give one of --value X or --from-eval EVAL_FOLDER")
    category = rundir.read_config(model).category  # a run folder ('not found' said as such)
    if from_eval is not None:
        path = Path(from_eval) / "metrics.json" if Path(from_eval).is_dir() else Path(from_eval)
        if not path.is_file():
            raise ConfigError(f"{path} not found (run 'robust-ad eval' first)")
        try:
            metrics = json.loads(path.read_text())
        except (ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
            raise ConfigError(f"{path} is not the metrics.json of 'robust-ad eval' ({type(exc).__name__})") from exc
        if not isinstance(metrics, dict):
            raise ConfigError(f"{path} is not the metrics.json of 'robust-ad eval' (a JSON {type(metrics).__name__})")
        own = (rundir.model_digest(model), category)
        if (metrics.get("model_sha256", own[0]), metrics.get("category", own[1])) != own:  # older: category only
            measured = f"another model ({metrics.get('model')})"
            if metrics.get("category", category) != category:
                measured = f"category '{metrics['category']}', not the model's '{category}'"
            elif metrics.get("model") == os.path.abspath(model):
                measured = "the model this folder held before it was trained again"
            raise ConfigError(
                f"{path} evaluated {measured}: its threshold is in that model's units; evaluate {model} first "
                f"('robust-ad eval --model {model}')"
            )
        value = metrics.get("f1_max_threshold")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{path}: f1_max_threshold {value!r} is not a number")
        if value is None:
            raise ConfigError(
                f"{path} has no F1-optimal threshold (the evaluation needs both normal and defective test images)"
            )
        reason = reason or f"F1-optimal on the test split evaluated in {path} (optimistic: tuned on those images)"
    _check_finite(value, "the threshold")
    with output_folder(model, False, RUN, keep=True):
        calibration = rundir.read_calibration(model)
        history = [
            *calibration.previous_thresholds,
            {"threshold": calibration.threshold, "rule": calibration.threshold_rule},
        ]
        updated = calibration.model_copy(
            update={
                "threshold": float(value),
                "threshold_rule": reason or "set by hand",
                "previous_thresholds": history,
            }
        )
        rundir.write_calibration(model, updated)
    above = updated.normal_images_above()
    if above > len(updated.normal_scores) / 2:
        log.warning(
            "the threshold %.3f flags %d of %d held-out normal images as anomalous",
            updated.threshold,
            above,
            len(updated.normal_scores),
        )
    passed, defects = _defects_passed(model, updated)
    if passed:  # the other direction: a threshold that lets defects through was said nothing of
        log.warning(
            "the threshold %.4g passes %d of the %d defective images kept with the run (verification.npz) as normal",
            updated.threshold,
            passed,
            defects,
        )
    return updated


def _defects_passed(model: str | Path, calibration) -> tuple[int, int]:
    """How many of the run's kept defective images (verification.npz) score at or below its threshold, of how many."""
    import numpy as np

    from robust_ad import rundir

    try:
        defects = rundir.read_verification(model)["defect"]
    except ModelError:  # a run of before, without the file: nothing to tell
        return 0, 0
    if not len(defects):
        return 0, 0
    scorer = rundir.load_scorer(model, "cpu")
    predictor = _torch_predictor(scorer, 16, calibration)
    _, scores, _ = predictor([image.astype(np.float32) / 255.0 for image in defects])
    return int((scores <= calibration.threshold).sum()), len(defects)


def export(run_dir: str | Path, out: str | Path | None = None, **options) -> dict:
    """``robust-ad export``: see :func:`robust_ad.export.export` for the options. Returns the file's metadata and
    parity numbers, with ``path``: the file written (default ``<run_dir>/model.onnx``)."""
    from robust_ad.export import export as _export

    return _export(run_dir, out, **options)


def denoise(
    paths: str | Path | list[str | Path],
    model: str | Path,
    out: str | Path,
    compare: bool = False,
    device: str = "auto",
    force: bool = False,
    sigma: float | None = None,
    guard: bool | None = None,
) -> tuple[list[dict], list[dict]]:
    """``robust-ad denoise``: clean copies of the images in ``out`` (same bit depth and channels); ``sigma`` is a
    known noise level in 8-bit grey levels (default: the skip denoiser estimates it per image); ``guard``
    overrides the model's SURE guard (``denoise.guard``)."""
    from collections import Counter

    from robust_ad.denoising import denoise_files
    from robust_ad.device import resolve_device
    from robust_ad.fileio import output_folder
    from robust_ad.scoring.files import output_names, resolve_paths

    if sigma is not None and not 0 <= sigma <= 255:
        raise ConfigError(f"--sigma must be a noise level between 0 and 255 grey levels, got {sigma}")
    files = resolve_paths(paths)
    names = output_names(paths, files)  # one output would silently replace another of the same name
    shared = next((name for name, count in Counter(names.values()).items() if count > 1), None)
    if shared is not None:
        clash = [str(p) for p in files if names[p] == shared][:2]
        raise DataError(
            f"two inputs share the output name {shared} ({', '.join(clash)}): denoise them into separate --out folders"
        )
    with output_folder(out, force, "output folder", inputs=_input_paths(paths, files), models=[model]) as folder:
        return denoise_files(files, model, folder, compare, resolve_device(device), sigma, guard, names)


def evaluate_denoiser(
    model: str | Path,
    baseline: str | Path | None = None,
    data_root: str | Path | None = None,
    category: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    force: bool = False,
) -> list[dict]:
    """``robust-ad eval --mode denoise``: PSNR/SSIM vs the noisy input, OpenCV NLM and the eps=0 ``baseline``
    (denoise_metrics.json), and every method's result on one test image at each level (denoise_examples.png)."""
    from robust_ad import machine, rundir
    from robust_ad.data.images import write_image
    from robust_ad.data.loading import load_split, open_dataset
    from robust_ad.denoising import evaluate_denoising, load_denoiser
    from robust_ad.device import resolve_device
    from robust_ad.fileio import output_folder
    from robust_ad.viz import denoising_grid

    config = rundir.read_config(model)
    dev = resolve_device(device)
    models = {f"robust-ad (eps={config.encoder.eps})": load_denoiser(model, dev)}
    if baseline is not None:
        base_eps = rundir.read_config(baseline).encoder.eps
        models[f"robust-ad standard (eps={base_eps})"] = load_denoiser(baseline, dev)
    dataset = unseen(open_dataset(config, data_root, category), model)
    tune = load_split(dataset, "val", config).images if dataset.val else load_split(dataset, "train", config).images
    test = load_split(dataset, "test", config).images
    models_read = [model, *([baseline] if baseline is not None else [])]
    with output_folder(
        out or Path(model) / "eval", force, EVALUATION, inputs=[dataset.root], models=models_read
    ) as folder:
        examples: dict = {}
        rows = evaluate_denoising(models, tune[:16], test, seed=config.seed, examples=examples)
        write_image(folder / "denoise_examples.png", denoising_grid(test[0], examples))
        write_json(
            folder / "denoise_metrics.json",
            {"category": dataset.category, "model": str(model), "machine": machine.describe(), "rows": rows},
        )
    return rows
