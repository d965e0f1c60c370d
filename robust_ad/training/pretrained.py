"""Robust encoders by name: the ones shipped inside robust-ad, and published ImageNet ones (a registry, a
verified download, and a cache).

Shipped (``robust_ad/encoders/``, described in its MODEL_CARD.md): encoders robust-ad pretrained itself with
``encoder pretrain`` on a corpus of photographs and photo textures from Debian packages, each with its
eps = 0 twin trained identically. They need no download; every recipe uses one by default.

The registry holds the robust classifiers of Salman et al. 2020 ("Do Adversarially Robust ImageNet Models
Transfer Better?", MadryLab), published on the Hugging Face Hub as ``madrylab/robust-imagenet-models``:
ResNet-18/50 and Wide-ResNet-50-2, L2 eps in {0, 0.01, ..., 3, 5} and L-inf eps in {0.5, ..., 8}/255.

Files are downloaded on request only (``pooch``: to a temporary file, renamed into the cache when complete,
the SHA-256 checked before use), cached under ``$ROBUST_AD_HOME/encoders`` (default: the user cache folder),
and used offline once cached. Where the publisher gives no hash, the first download's hash is recorded and
every later use is checked against it.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from robust_ad.errors import ConfigError, ModelError
from robust_ad.fileio import write_json

log = logging.getLogger(__name__)
HUB = "https://huggingface.co/madrylab/robust-imagenet-models/resolve/main"
URL_ENV = "ROBUST_AD_ENCODER_URL"  # a mirror (a factory's file server) instead of the Hub
HOME_ENV = "ROBUST_AD_HOME"
# SHA-256 of the files as published (their Git LFS object ids on the Hub's file pages).
PUBLISHED_SHA256 = {
    "resnet50_l2_eps3": "380b14e6f9750bffa1447cf7017f65da4dc5ce71a3dd112f107515dcf7b14d9d",
    "resnet18_l2_eps3": "b4315784a1a10257b05906aee94d6884678f7b77412d10100d7c05daa959eab0",
    "resnet50_l2_eps0": "72d4a99582db5d7fa86c3fd2a089f0bfd6a10f69d635bca51f6ad72ac6b458f0",
}
_ARCHS = {"resnet18": "resnet18", "resnet50": "resnet50", "wide_resnet50_2": "wide_resnet50_2"}
_L2 = ("0", "0.01", "0.03", "0.05", "0.1", "0.25", "0.5", "1", "3", "5")
_LINF = ("0.5", "1.0", "2.0", "4.0", "8.0")


@dataclass(frozen=True)
class Published:
    """One published encoder: its backbone, threat model and radius (on [0, 1] pixels), file and hash."""

    name: str
    backbone: str
    norm: str
    eps: float
    sha256: str | None
    width: float = 1.0
    shipped: bool = False  # inside the package (robust_ad/encoders/), never downloaded

    @property
    def filename(self) -> str:
        return f"{self.name}.pt" if self.shipped else f"{self.name}.ckpt"

    @property
    def twin(self) -> str:
        """The standard (eps = 0) encoder of the same architecture, trained the same way."""
        return f"{self.name.rsplit('-eps', 1)[0]}-eps0" if self.shipped else f"{self.backbone}_l2_eps0"

    @property
    def url(self) -> str:
        return f"{os.environ.get(URL_ENV, HUB).rstrip('/')}/{self.filename}"


SHIPPED_INDEX = "index.json"  # in robust_ad/encoders/: name -> backbone, norm, eps, width, sha256


def shipped_folder() -> Path:
    from importlib import resources

    return Path(str(resources.files("robust_ad") / "encoders"))


def _shipped_entries() -> dict[str, Published]:
    index = shipped_folder() / SHIPPED_INDEX
    if not index.is_file():
        return {}
    rows = json.loads(index.read_text())
    fields = ("backbone", "norm", "eps", "sha256", "width")
    return {name: Published(name, *(row[f] for f in fields), shipped=True) for name, row in rows.items()}


def write_shipped(source: str | Path, name: str, folder: str | Path | None = None) -> Path:
    """Ship the encoder of an ``encoder pretrain`` file as ``name``: its stage weights in fp16 (the classifier
    head is dropped) in ``folder`` (default: the package's), and its entry in the folder's index."""
    from robust_ad.fileio import write_atomic
    from robust_ad.training.encoder import EncoderRun

    run, _ = EncoderRun.load(source)
    folder = Path(folder) if folder is not None else shipped_folder()
    state = {
        key: value.half() if value.is_floating_point() else value
        for key, value in run.encoder.stages.state_dict().items()
    }
    path = folder / f"{name}.pt"
    buffer = io.BytesIO()  # saved to a path, torch names the archive inside after it: a temporary name, new bytes
    torch.save({"model": state}, buffer)  # each time; from a buffer the same weights give the same file and hash
    write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    index = folder / SHIPPED_INDEX
    rows = json.loads(index.read_text()) if index.is_file() else {}
    cfg = run.config
    rows[name] = {
        "backbone": cfg.backbone,
        "norm": cfg.norm,
        "eps": cfg.eps,
        "sha256": sha256_of(path),
        "width": cfg.width,
    }
    write_json(index, rows)
    return path


def _registry() -> dict[str, Published]:
    entries = dict(_shipped_entries())
    for arch, backbone in _ARCHS.items():
        for eps in _L2:
            name = f"{arch}_l2_eps{eps}"
            entries[name] = Published(name, backbone, "l2", float(eps), PUBLISHED_SHA256.get(name))
        for eps in _LINF:
            name = f"{arch}_linf_eps{eps}"
            entries[name] = Published(name, backbone, "linf", float(eps) / 255, PUBLISHED_SHA256.get(name))
    return entries


REGISTRY = _registry()


def lookup(name: str) -> Published:
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=4, cutoff=0.75)  # nearest spelling first
        hint = f" (nearest: {', '.join(close)})" if close else " ('robust-ad encoder list' shows them)"
        raise ConfigError(f"unknown published encoder '{name}'{hint}")
    return REGISTRY[name]


def at_eps(name: str, eps: float) -> Published | None:
    """The encoder of ``name``'s family (the same name up to its eps: architecture, threat model, shipped or
    published) that is robust at ``eps``, if the registry has one."""
    family = lookup(name).name.rsplit("eps", 1)[0]
    return next((e for e in REGISTRY.values() if e.name.rsplit("eps", 1)[0] == family and e.eps == eps), None)


def cache_dir() -> Path:
    """Where downloaded encoders live: $ROBUST_AD_HOME/encoders, else the user cache folder."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home) / "encoders"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robust-ad" / "encoders"


def _recorded_hashes() -> dict[str, str]:
    path = cache_dir() / "hashes.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def expected_sha256(entry: Published) -> str | None:
    """The published hash, else the one recorded at the first download, else None (never downloaded)."""
    return entry.sha256 or _recorded_hashes().get(entry.name)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def identify(path: str | Path) -> Published | None:
    """The registry's encoder whose file ``path`` is, by SHA-256 (published, shipped, or recorded at the first
    download), if any: such a file used by path says its architecture and eps through the registry."""
    recorded = _recorded_hashes()
    known = {entry.sha256 or recorded.get(entry.name): entry for entry in REGISTRY.values()}
    known.pop(None, None)
    return known.get(sha256_of(Path(path)))


def shipped_path(entry: Published) -> Path:
    return shipped_folder() / entry.filename


def cache_state(entry: Published) -> str:
    """A downloadable encoder's cache file: 'yes' (its hash is the expected one), 'hash differs' (fetch refuses
    it), 'not checked' (no hash known yet: fetch checks that it loads and records it), '' (not cached)."""
    path = cache_dir() / entry.filename
    if not path.is_file():
        return ""
    expected = expected_sha256(entry)
    if expected is None:
        return "not checked"
    return "yes" if sha256_of(path) == expected else "hash differs"


def _shipped(entry: Published) -> Path:
    path = shipped_path(entry)
    if not path.is_file():
        raise ModelError(f"{path}: the shipped encoder {entry.name} is missing from this installation; reinstall")
    if sha256_of(path) != entry.sha256:
        raise ModelError(f"{path}: SHA-256 differs from the shipped encoder's {entry.sha256}; reinstall robust-ad")
    return path


def fetch(name: str) -> Path:
    """The verified local file of a published encoder: from the cache, else downloaded (with progress)."""
    import pooch
    import requests

    entry = lookup(name)
    if entry.shipped:
        return _shipped(entry)
    target = cache_dir() / entry.filename
    expected = expected_sha256(entry)
    if target.is_file():
        actual = sha256_of(target)
        if expected is None:  # put there by hand before any download: checked as a download would be
            return _trust_on_first_use(entry, target, downloaded=False)
        if actual == expected:
            return target
        raise ModelError(
            f"{target}: SHA-256 {actual} differs from the expected {expected}; delete the file to download it again"
        )
    manual = f"put the file there by hand: {target}" + (f" (SHA-256 {expected})" if expected else "")
    pooch.get_logger().setLevel(logging.WARNING)  # its 'Downloading data from' line: the progress bar says it
    try:
        path = Path(
            pooch.retrieve(
                entry.url,
                known_hash=f"sha256:{expected}" if expected else None,
                fname=entry.filename,
                path=cache_dir(),
                progressbar=os.environ.get("ROBUST_AD_QUIET") is None,
            )
        )
    except requests.exceptions.RequestException as exc:
        reason = type(exc).__name__
        raise ModelError(f"cannot download {entry.url} ({reason}; offline?): {manual}") from None
    except ValueError as exc:  # pooch: the hash does not match; it has removed the file
        raise ModelError(f"{entry.url}: downloaded file refused ({str(exc).splitlines()[0]})") from None
    return path if expected else _trust_on_first_use(entry, path, downloaded=True)


def _trust_on_first_use(entry: Published, path: Path, downloaded: bool) -> Path:
    """An encoder file without a published hash: refused unless it is a checkpoint of the entry's network (a
    ``downloaded`` one is removed; one put there by hand is left for its owner), else its hash is recorded, and
    every later use is checked against it."""
    from robust_ad.models.encoder import Encoder
    from robust_ad.training.weights import load_encoder_weights

    try:  # a checkpoint that fits the entry's network, or its hash would be recorded as the published file's
        load_encoder_weights(Encoder(entry.backbone, "layer4", ["layer4"], entry.width), path)
    except ModelError as exc:
        if downloaded:
            path.unlink()
            raise ModelError(f"{exc}; removed it from the cache: fetch {entry.name} again") from None
        raise ModelError(f"{exc}: replace it with the published file, or delete it to download that") from None
    write_json(cache_dir() / "hashes.json", {**_recorded_hashes(), entry.name: sha256_of(path)})
    log.warning("%s has no published SHA-256; recorded the hash of %s", entry.name, path)
    return path


def classifier(name: str) -> torch.nn.Module:
    """The whole published ImageNet classifier (normalisation included), for robustness checks."""
    import torchvision

    from robust_ad.models.encoder import IMAGENET_MEAN, IMAGENET_STD
    from robust_ad.training.weights import read_state_dict

    entry = lookup(name)
    if entry.shipped:
        raise ConfigError(
            f"{name} is a feature extractor without its pretraining head: its accuracies are in "
            "robust_ad/encoders/MODEL_CARD.md ('encoder eval --corpus' evaluates an 'encoder pretrain' file)"
        )
    net = getattr(torchvision.models, entry.backbone)(weights=None)
    net.load_state_dict(read_state_dict(fetch(name)))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    class Normalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - self.mean) / self.std)

    return Normalised().eval()
