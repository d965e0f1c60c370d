"""The one training loop: encoder, decoder and denoiser training are tasks that it runs.

The engine owns what every training needs: seeding and data order, batches through ``torch.utils.data`` (or, with
``on_device``, the whole training set decoded once and kept on the device as 8-bit images, batches drawn there: no
loader processes and no host copies after the first epoch), the flip, rotation and crop augmentations (on the
device, a batch at a time), device placement, mixed precision (bf16 autocast, or fp16 with gradient scaling), optional
``torch.compile``, a progress bar per epoch, timing, per-epoch history, and an atomic checkpoint after every epoch
from which ``resume`` continues exactly (model, optimisers, scaler, history and random state). Under ``torchrun`` it
trains with DistributedDataParallel (:mod:`robust_ad.training.distributed`): each process takes its share of every
batch, and process 0 writes the checkpoint. Losses stay on the device until the end of an epoch (no host
synchronisation per step).

A task says what one optimisation step is (:meth:`Task.step`) and what to do before and after each epoch
(:meth:`Task.begin_epoch`, e.g. a learning-rate schedule; :meth:`Task.end_epoch`, e.g. validation or batch-norm
recalibration).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from robust_ad.data.resize import crop_resize
from robust_ad.device import free_memory
from robust_ad.errors import ConfigError, ModelError
from robust_ad.progress import track
from robust_ad.tensors import load_checkpoint, save_checkpoint
from robust_ad.training import distributed

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Training layout on every device: the one cuDNN's tensor-core convolutions take without transposes, and oneDNN's
# on CPUs (a default-recipe decoder epoch, 2-core Xeon, fp32: 35.0 s NCHW, 25.7 s channels-last)
MEMORY_FORMAT = torch.channels_last
CROP_SCALE = (0.5, 1.0)  # random crops take this share of an image's side
RANK_SEED_STRIDE = 1_000_003  # process r of a torchrun group draws from seed + r * stride: streams that never overlap


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX-512 BF16), where oneDNN runs bf16 convolutions
    far faster than fp32 ones; elsewhere bf16 is emulated, and slower."""
    checks = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(check is not None and check() for check in checks)


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision a training runs in. 'auto': bf16 on a CPU that computes it in hardware (the default recipe trains
    3 times faster than in fp32 on a 2-core Xeon with AMX, same detection), else fp32 (on a GPU, bf16 gained 10 % and
    cost 0.01 image AUROC). Both measured in benchmarks/training_speed.json. fp16 needs CUDA (elsewhere fp32)."""
    if precision == "auto":
        return "bf16" if device.type == "cpu" and native_bf16_cpu() else "fp32"
    return precision if device.type == "cuda" or precision == "bf16" else "fp32"


def set_learning_rate(optimizer: torch.optim.Optimizer, base: float, schedule: str, epoch: int, epochs: int) -> None:
    """The learning rate of the epoch after ``epoch`` done: ``base`` ('constant'), or a cosine decay from ``base`` to
    zero over ``epochs`` ('cosine'; a function of the epoch alone, so a resumed training continues on the curve)."""
    factor = 0.5 * (1 + math.cos(math.pi * epoch / epochs)) if schedule == "cosine" else 1.0
    for group in optimizer.param_groups:
        group["lr"] = base * factor


@dataclass
class Batch:
    """One batch on the training device: images (N, 3, H, W) in [0, 1] and labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    generator: torch.Generator  # the engine's (CPU) random stream, for task-side randomness


class Task:
    """What a training is made of: its modules, its optimisers, one step, and an end-of-epoch hook."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]

    def train_mode(self) -> None:
        """Put the modules in the mode of a training step (frozen parts stay in eval mode)."""
        for module in self.modules.values():
            module.train()

    def step(self, batch: Batch, engine: Engine) -> dict[str, torch.Tensor]:
        """One optimisation step (through :meth:`Engine.optimize`, calling trained modules through
        :meth:`Engine.trained`); returns the losses to record."""
        raise NotImplementedError

    def begin_epoch(self, engine: Engine) -> None:
        """Work before each epoch (``engine.epoch`` epochs are done), e.g. setting learning rates."""

    def end_epoch(self, engine: Engine) -> dict[str, float]:
        """Work after each epoch (validation, statistics); returns extra history entries."""
        return {}

    def metadata(self) -> dict:
        """What the checkpoint holds beside the training state (so that it can be used on its own)."""
        return {}


class Engine:
    """Runs a :class:`Task` for ``epochs`` over ``dataset``; see the module docstring."""

    def __init__(
        self,
        task: Task,
        dataset: Dataset,
        epochs: int,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        checkpoint_path: str | Path | None = None,
        precision: str = "fp32",
        workers: int = 0,
        flip: bool = True,
        description: str = "epoch",
        compile: bool = False,
        crop: int | None = None,
        on_device: bool = False,
        rotate: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ConfigError("no training images")
        self.task, self.dataset, self.epochs, self.batch_size = task, dataset, epochs, batch_size
        self.device = torch.device(device)
        self.seed, self.checkpoint_path, self.workers, self.flip = seed, checkpoint_path, workers, flip
        self.description, self.compile, self.crop, self.on_device = description, compile, crop, on_device
        self.rotate = rotate
        self.precision = effective_precision(precision, self.device)
        if precision == "fp16" and self.precision != precision:
            log.warning("precision fp16 needs CUDA: training in fp32 on the CPU (bf16 runs on CPUs)")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.local_batch_size = distributed.local_batch_size(batch_size)
        self.rank = distributed.rank()
        self.generator = torch.Generator().manual_seed(seed + RANK_SEED_STRIDE * self.rank)  # augmentation, task
        # data order: a stream of its own, since DataLoader draws differently from it with and without workers
        self.order = torch.Generator().manual_seed(seed + 1)
        self.history: list[dict[str, float]] = []
        self.epoch = 0
        self._train_loader: DataLoader | None = None
        self._resident: tuple[torch.Tensor, torch.Tensor] | None = None
        self._sampler = distributed.sampler(dataset, seed + 1)
        self._trained: dict[str, nn.Module] = {}

    # -- what tasks call -------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward-pass precision context (a no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def trained(self, name: str) -> nn.Module:
        """The task's module ``name`` for the forward pass of a training step: wrapped in DDP under torchrun (its
        gradients are then averaged over the processes), and compiled with ``compile``. Attacks and frozen parts
        call the module itself."""
        return self._trained.get(name, self.task.modules[name])

    def optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward ``loss`` and step ``optimizer`` (gradient scaling in fp16; the scale updates per batch)."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """A batch's training augmentation, on the batch's device: random horizontal flips (with ``flip``), random
        vertical flips and transpositions (with ``rotate``; with ``flip`` too, each of the square's eight symmetries
        equally likely; square images alone are transposed) and, with ``crop``, a random square crop of each image
        (a share ``CROP_SCALE`` of its shorter side) resized to ``crop`` (the product's resize). Draws from the
        engine's random stream."""
        n, (height, width) = len(images), images.shape[-2:]
        if self.flip:
            images = self._randomly(images, images.flip(-1))
        if self.rotate:
            images = self._randomly(images, images.flip(-2))
            if height == width:
                images = self._randomly(images, images.transpose(-2, -1))
        if self.crop is not None:
            low, high = CROP_SCALE
            side = min(height, width)
            sides = (side * (low + (high - low) * torch.rand(n, generator=self.generator))).round().clamp(8, side)
            tops, lefts = ((torch.rand(n, generator=self.generator) * (d - sides + 1)).floor() for d in (height, width))
            top, left, sides = (t.long().to(images.device) for t in (tops, lefts, sides))
            images = crop_resize(images, top, left, sides, self.crop)
        return images.contiguous(memory_format=MEMORY_FORMAT)

    def _randomly(self, images: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        """Each image of the batch, or (with probability 1/2, drawn from the engine's stream) its ``changed`` one."""
        chosen = (torch.rand(len(images), generator=self.generator) < 0.5).to(images.device)
        return torch.where(chosen.view(-1, 1, 1, 1), changed, images)

    def loader(self, dataset: Dataset | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of (images, labels) in order from ``dataset`` (default: the training set), for the work of
        :meth:`Task.end_epoch`: read in this process, or, for the training set with ``on_device``, taken from the
        device."""
        if dataset is None and self.on_device:
            images, labels = self._resident_data()
            step = self.batch_size
            return ((images[i : i + step].float().div_(255), labels[i : i + step]) for i in range(0, len(labels), step))
        return DataLoader(dataset if dataset is not None else self.dataset, batch_size=self.batch_size)

    def _resident_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set on the device as (N, 3, H, W) uint8 images and (N,) labels, read once (by the loader
        processes). 8-bit: exact for images read from 8-bit files at their own size, within half a grey level
        otherwise. Refused, before reading, where it would take more than half the device's free memory (a GPU's, or
        the host's available memory)."""
        if self._resident is None:
            first = self.dataset[0][0]
            need = len(self.dataset) * first.numel()  # type: ignore[arg-type]
            free = free_memory(self.device)
            if need > free // 2:
                raise ConfigError(
                    f"data.on_device: {len(self.dataset)} training images of {tuple(first.shape)} take "  # type: ignore[arg-type]
                    f"{need / 2**30:.1f} GiB as 8-bit images, more than half the {free / 2**30:.1f} GiB free on "
                    f"{self.device}; set data.on_device: false"
                )
            loader = DataLoader(self.dataset, batch_size=self.batch_size, num_workers=self.workers)
            parts = [
                (images.mul(255).round_().to(self.device, torch.uint8), labels.to(self.device))
                for images, labels in track(loader, "copying the training images to the device")
            ]
            self._resident = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        return self._resident

    def _training_loader(self) -> DataLoader:
        """The shuffled training batches, read by ``workers`` processes that live for the whole training (each
        keeps its own image cache of up to ``data.cache_mb``)."""
        if self._train_loader is None:
            self._train_loader = DataLoader(
                self.dataset,
                batch_size=self.local_batch_size,
                shuffle=self._sampler is None,
                sampler=self._sampler,
                generator=self.order if self._sampler is None else None,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0,
            )
        return self._train_loader

    # -- the loop --------------------------------------------------------------------------------------------
    def _order(self) -> torch.Tensor | None:
        """Start this epoch's data order (the distributed sampler's epoch); returns the epoch's indices of the
        resident training set for this process (None: read by the loader)."""
        if self._sampler is not None:
            self._sampler.set_epoch(self.epoch)
        if not self.on_device:
            return None
        if self._sampler is not None:
            return torch.tensor(list(self._sampler))
        return torch.randperm(len(self.dataset), generator=self.order)  # type: ignore[arg-type]

    def _batches(self, order: torch.Tensor | None) -> Iterator[Batch]:
        if order is not None:
            images, labels = self._resident_data()
            for chunk in order.to(self.device).split(self.local_batch_size):
                yield Batch(self.augment(images[chunk].float().div_(255)), labels[chunk], self.generator)
            return
        for images, labels in self._training_loader():
            images = self.augment(images.to(self.device, non_blocking=True))
            yield Batch(images, labels.to(self.device, non_blocking=True), self.generator)

    def _streams(self) -> dict:
        """This process's random streams: augmentation and task (``generator``), and the global ones that PGD's
        random starts and dropout draw from."""
        return {
            "generator": self.generator.get_state(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def _state(self, streams: list[dict]) -> dict:
        """The checkpoint: process 0's streams at the top (as a one-process training writes them), and every
        process's in ``process_streams``, so that a resumed torchrun training draws what an uninterrupted one
        would."""
        return {
            **self.task.metadata(),
            "modules": {name: module.state_dict() for name, module in self.task.modules.items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.task.optimizers.items()},
            "scaler": self.scaler.state_dict(),
            **streams[0],
            "process_streams": streams,
            "order": self.order.get_state(),
            "history": self.history,
            "epoch": self.epoch,
        }

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        if "modules" not in state or set(state["modules"]) != set(self.task.modules):
            raise ModelError(f"{path}: a checkpoint of another kind of training; cannot resume from it")
        for name, module in self.task.modules.items():
            module.load_state_dict(state["modules"][name])
        for name, optimizer in self.task.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.scaler.load_state_dict(state["scaler"])
        self.order.set_state(state["order"])
        self.history, self.epoch = list(state["history"]), int(state["epoch"])
        streams = state.get("process_streams") or [state]  # written before every process's were kept: process 0's
        if len(streams) == distributed.world_size():
            mine = streams[self.rank]
            self.generator.set_state(mine["generator"])
            torch.set_rng_state(mine["rng"])
            if mine["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(mine["cuda_rng"])
        else:  # another number of processes: each draws anew, so the result differs from an uninterrupted run's
            log.warning(
                "the checkpoint was written by %d training processes, this training has %d: random streams start anew",
                len(streams),
                distributed.world_size(),
            )
            self.generator.manual_seed(self.seed + RANK_SEED_STRIDE * self.rank + self.epoch)
            torch.manual_seed(self.seed + RANK_SEED_STRIDE * self.rank + self.epoch)
        log.info("resuming %s after epoch %d", self.description, self.epoch)

    def _to_device(self) -> None:
        for module in self.task.modules.values():
            module.to(self.device, memory_format=MEMORY_FORMAT)
        for optimizer in self.task.optimizers.values():
            for state in optimizer.state.values():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor) and key != "step":
                        state[key] = value.to(self.device)

    def fit(self, resume: bool = False) -> list[dict[str, float]]:
        """Train until ``epochs``; with ``resume``, continue from the checkpoint. Returns the history."""
        # PGD's random starts draw from the global stream, its own per process; a resumed run restores the streams
        # of its last epoch instead
        torch.manual_seed(self.seed + RANK_SEED_STRIDE * self.rank)
        if resume:
            if self.checkpoint_path is None or not Path(self.checkpoint_path).is_file():
                raise ModelError(f"--resume: no checkpoint at {self.checkpoint_path} to resume from")
            self._restore(Path(self.checkpoint_path))
        self._to_device()
        if self.on_device:
            self._resident_data()  # before the first epoch's clock starts
        self._trained = {name: distributed.wrap(module, self.device) for name, module in self.task.modules.items()}
        if self.compile:
            self._trained = {name: torch.compile(module) for name, module in self._trained.items()}
        while self.epoch < self.epochs:
            began = time.perf_counter()
            self.task.begin_epoch(self)
            self.task.train_mode()
            sums: dict[str, torch.Tensor] = {}
            count = torch.zeros((), device=self.device)
            order = self._order()
            steps = len(self._training_loader()) if order is None else math.ceil(len(order) / self.local_batch_size)
            for batch in track(self._batches(order), f"{self.description} {self.epoch + 1}/{self.epochs}", steps):
                for name, value in self.task.step(batch, self).items():
                    sums[name] = sums.get(name, 0.0) + value.detach().float() * len(batch.images)
                self.scaler.update()
                count += len(batch.images)
            self.epoch += 1
            totals = distributed.total({**sums, "count": count})
            count = totals.pop("count")
            row: dict[str, float] = {"epoch": self.epoch, **{k: float(v / count) for k, v in totals.items()}}
            row.update(self.task.end_epoch(self))
            for module in self.task.modules.values():
                distributed.share_buffers(module)
            row["seconds"] = time.perf_counter() - began
            self.history.append(row)
            log.info(
                "%s %d: %s",
                self.description,
                self.epoch,
                ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"),
            )
            if self.checkpoint_path is not None:
                streams = distributed.gathered(self._streams())  # every process takes part
                if distributed.is_main():
                    save_checkpoint(self.checkpoint_path, self._state(streams))
        for module in self.task.modules.values():
            module.eval()
        return self.history
