"""Load encoder weights: the ``robustness`` library's checkpoints, plain torchvision state dicts, or robust-ad's own.

Files are read with ``weights_only=True`` (no pickled code runs). The ``robustness`` library pickles its
checkpoints with ``dill`` and stores an optimizer and a schedule beside the weights, which ``weights_only``
refuses; those files are read by a restricted unpickler instead: it rebuilds tensors and plain containers and
turns every other pickled object into an inert placeholder, so no pickled code is imported or executed.
What was skipped is said in one line.
"""

from __future__ import annotations

import logging
import pickle
import types
from pathlib import Path

import torch

from robust_ad.errors import ModelError
from robust_ad.models.encoder import Encoder
from robust_ad.tensors import quiet_load

# robustness checkpoints wrap the model twice: module.model.* (used) and module.attacker.model.* (a copy);
# module.normalizer.* / module.attacker.normalize.* hold the normaliser, which our encoder has built in.
# robust-ad's own encoder checkpoints keep the friendly stage names under encoder.stages.*
_PREFIXES = ("module.model.", "model.", "module.", "encoder.stages.")
_IGNORED = ("module.attacker.", "attacker.", "module.normalizer.", "normalizer.")
log = logging.getLogger(__name__)
# What the restricted unpickler builds; everything else becomes a _Skipped placeholder.
_ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch", "Size"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "Tensor"),
    *(("torch", name) for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")),
}


class _Skipped:
    """An inert stand-in for a pickled object the restricted unpickler does not build."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


def _restricted_pickle_module(skipped: set[str]) -> types.SimpleNamespace:
    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            if (module, name) in _ALLOWED:
                return super().find_class(module, name)
            skipped.add(f"{module}.{name}")
            return _Skipped

    def load(file: object, **kwargs: object) -> object:  # torch reads a legacy file's header with load()
        return Unpickler(file, **kwargs).load()

    return types.SimpleNamespace(Unpickler=Unpickler, load=load, __name__="robust_ad_restricted")


def _load(path: Path) -> object:
    """The checkpoint object: weights_only first; a restricted unpickler for dill/robustness files."""
    try:
        return quiet_load(path, weights_only=True)
    except pickle.UnpicklingError:
        skipped: set[str] = set()
        checkpoint = quiet_load(path, weights_only=False, pickle_module=_restricted_pickle_module(skipped))
        if skipped:
            names = ", ".join(sorted(skipped)[:4]) + (" ..." if len(skipped) > 4 else "")
            log.info("%s: kept the weights, skipped %d pickled objects (%s)", path.name, len(skipped), names)
        return checkpoint


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint file, with wrapper prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"encoder weights {path} not found")
    try:
        checkpoint = _load(path)
    except Exception as exc:  # a damaged or foreign file fails anywhere in the unpickler (KeyError, struct.error...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({detail})") from exc
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("modules"), dict):  # robust-ad's encoder files
        checkpoint = checkpoint["modules"].get("classifier", checkpoint)
    if isinstance(checkpoint, dict):
        for key in ("model", "state_dict"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ModelError(f"{path}: no state dict found (expected a 'model' or 'state_dict' entry of tensors)")
    state = {}
    for key, value in checkpoint.items():
        if key.startswith(_IGNORED):
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        state[key] = value
    return state


def load_encoder_weights(encoder: Encoder, path: str | Path) -> Encoder:
    """Load torchvision-named weights into ``encoder`` (layers after the cut are ignored)."""
    state = read_state_dict(path)
    target = encoder.stages.state_dict()
    mapped = {}
    for friendly, source in encoder.source_names.items():
        for key in target:
            if key.startswith(f"{friendly}."):
                rest = key[len(friendly) + 1 :]
                mapped[key] = state.get(key, state.get(f"{source}.{rest}"))
    missing = [k for k, v in mapped.items() if v is None]
    if missing:
        raise ModelError(
            f"{path}: does not fit a {encoder.backbone} encoder: {len(missing)} weights missing "
            f"(first: {encoder.source_names[missing[0].split('.')[0]]}{missing[0][missing[0].index('.') :]})"
        )
    for key, value in mapped.items():
        if value.shape != target[key].shape:
            raise ModelError(
                f"{path}: does not fit a {encoder.backbone} encoder (width {encoder.width:g}): {key} has shape "
                f"{tuple(value.shape)}, expected {tuple(target[key].shape)} (encoder.width sets the channels)"
            )
    encoder.stages.load_state_dict(mapped)
    return encoder
