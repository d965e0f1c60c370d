"""Published robust encoders by name: download, verification, cache, offline use (a local HTTP server)."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from typer.testing import CliRunner

from robust_ad import cli
from robust_ad.api import list_encoders
from robust_ad.cli import app
from robust_ad.errors import ModelError
from robust_ad.training import pretrained
from robust_ad.training.pretrained import REGISTRY, Published, fetch

runner = CliRunner()
NAME = "resnet18_l2_eps3"


class _Schedule:
    """Stands for the optimiser schedule the robustness library pickles (with dill) beside the weights."""

    def __init__(self) -> None:
        self.milestones = [30, 60]


class _Payload:
    """A pickled object that would run a command when unpickled: it must never be."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A full-size ResNet-18 in the robustness library's checkpoint layout, and a marker file path."""
    folder = tmp_path_factory.mktemp("hub")
    marker = folder / "code-was-executed"
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    model = {f"module.model.{k}": v for k, v in state.items()}
    model |= {f"module.attacker.model.{k}": v for k, v in state.items()}
    model |= {"module.normalizer.new_mean": torch.zeros(3, 1, 1), "module.normalizer.new_std": torch.ones(3, 1, 1)}
    payload = {
        "model": model,
        "optimizer": {"state": {}},
        "schedule": _Schedule(),
        "hook": _Payload(marker),
        "epoch": 90,
    }
    torch.save(payload, folder / f"{NAME}.ckpt")
    return folder / f"{NAME}.ckpt", marker


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate = False

    def log_message(self, *args: object) -> None:  # quiet test output
        pass

    def copyfile(self, source, outputfile) -> None:
        if not self.truncate:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(1000))  # the connection drops after 1000 bytes of a larger Content-Length


@pytest.fixture
def server(checkpoint: tuple[Path, Path], tmp_path: Path, monkeypatch) -> Iterator[http.server.HTTPServer]:
    folder = checkpoint[0].parent

    class Handler(_Handler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(pretrained.URL_ENV, f"http://127.0.0.1:{httpd.server_port}")
    monkeypatch.setenv(pretrained.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _with_hash(monkeypatch, sha: str | None) -> None:
    monkeypatch.setitem(REGISTRY, NAME, Published(NAME, "resnet18", "l2", 3.0, sha))


def test_fetch_verifies_caches_and_then_works_offline(checkpoint, server, monkeypatch) -> None:
    _with_hash(monkeypatch, _sha(checkpoint[0]))
    path = fetch(NAME)
    assert path == pretrained.cache_dir() / f"{NAME}.ckpt" and _sha(path) == _sha(checkpoint[0])
    server.shutdown()
    server.server_close()
    assert fetch(NAME) == path  # the cache, with the server gone


def test_a_wrong_hash_is_refused_and_nothing_stays_in_the_cache(checkpoint, server, monkeypatch) -> None:
    _with_hash(monkeypatch, "0" * 64)
    with pytest.raises(ModelError, match="downloaded file refused"):
        fetch(NAME)
    assert not any(pretrained.cache_dir().glob("*.ckpt*"))


def test_an_interrupted_transfer_leaves_no_usable_file(checkpoint, server, monkeypatch) -> None:
    _with_hash(monkeypatch, None)  # even without a hash to check, a short file is never kept
    monkeypatch.setattr(_Handler, "truncate", True)
    with pytest.raises(ModelError, match="cannot download"):
        fetch(NAME)
    assert not (pretrained.cache_dir() / f"{NAME}.ckpt").exists()


def test_an_unpublished_hash_is_recorded_at_first_download_and_checked_after(checkpoint, server, monkeypatch) -> None:
    _with_hash(monkeypatch, None)
    path = fetch(NAME)
    assert pretrained.expected_sha256(REGISTRY[NAME]) == _sha(checkpoint[0])
    path.write_bytes(path.read_bytes()[:-10] + b"tampered!!")
    with pytest.raises(ModelError, match="differs from the expected"):
        fetch(NAME)


def test_an_unpublished_encoder_file_that_does_not_load_is_never_trusted(checkpoint, server, monkeypatch) -> None:
    """Without a published hash, the first file's was recorded whatever it held: junk put in the cache by hand was
    'cached' and trusted ever after. Now it must load as a checkpoint first (a download that does not is removed,
    a file put there by hand is left); encoder list says what it is."""
    from robust_ad.api import list_encoders

    _with_hash(monkeypatch, None)
    target = pretrained.cache_dir() / f"{NAME}.ckpt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"junk!")
    assert {row["name"]: row["cached"] for row in list_encoders()}[NAME] == "not checked"
    with pytest.raises(ModelError, match=r"not a readable PyTorch checkpoint .*: replace it with the published file"):
        fetch(NAME)
    assert target.read_bytes() == b"junk!" and pretrained.expected_sha256(REGISTRY[NAME]) is None  # the owner's
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, target)  # a user trial: a checkpoint of another network
    with pytest.raises(ModelError, match=r"does not fit a resnet18 encoder.*: replace it with the published file"):
        fetch(NAME)
    assert pretrained.expected_sha256(REGISTRY[NAME]) is None  # its hash was recorded, pinning the wrong file
    target.unlink()
    assert fetch(NAME) == target  # the real file, downloaded now, loads: its hash is recorded
    assert {row["name"]: row["cached"] for row in list_encoders()}[NAME] == "yes"
    target.write_bytes(b"junk!")
    assert {row["name"]: row["cached"] for row in list_encoders()}[NAME] == "hash differs"


def test_offline_and_not_cached_says_where_to_put_the_file(checkpoint, server, monkeypatch) -> None:
    sha = _sha(checkpoint[0])
    _with_hash(monkeypatch, sha)
    url = os.environ[pretrained.URL_ENV]
    server.shutdown()
    server.server_close()
    with pytest.raises(ModelError) as error:
        fetch(NAME)
    target = pretrained.cache_dir() / f"{NAME}.ckpt"
    assert str(error.value) == (
        f"cannot download {url}/{NAME}.ckpt (ConnectionError; offline?): put the file there by hand: {target} "
        f"(SHA-256 {sha})"
    )
    result = subprocess.run(  # a user trial: the download library's own line came first (two lines)
        [sys.executable, "-m", "robust_ad", "encoder", "fetch", NAME], capture_output=True, text=True, timeout=120
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: cannot download"), lines


def test_train_with_a_published_encoder_loads_it_without_running_pickled_code(
    checkpoint, server, monkeypatch, synth_root: Path, tmp_path: Path
) -> None:
    from robust_ad import rundir

    _with_hash(monkeypatch, _sha(checkpoint[0]))
    recipe = tmp_path / "tiny.yaml"  # its eps and architecture (the shipped encoder's) give way to the named one's
    recipe.write_text(
        "data: {image_size: 32, batch_size: 8}\nencoder: {eps: 1.0, backbone: resnet18, width: 0.5, norm: l2}\n"
        "autoencoder: {epochs: 1, decoder_width: 0.25}\n"
    )
    out = tmp_path / "run"
    args = ["train", "--category", "bottle", "--data-root", str(synth_root), "--recipe", str(recipe)]
    result = runner.invoke(app, [*args, "--encoder", NAME, "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert not checkpoint[1].exists()  # the pickled command never ran
    config = rundir.read_config(out)
    assert config.encoder.pretrained == NAME and config.encoder.backbone == "resnet18" and config.encoder.eps == 3.0
    assert config.encoder.width == 1.0
    torch.manual_seed(0)  # the fixture's weights, rebuilt
    state = torchvision.models.resnet18(weights=None).state_dict()
    assert torch.equal(rundir.load_model(out).encoder.stages.conv1.weight, state["conv1.weight"])
    assert rundir.read_training(out).encoder_source == NAME


def test_train_offline_with_an_uncached_encoder_fails_before_making_the_run_folder(
    checkpoint, server, monkeypatch, synth_root: Path, tmp_path: Path
) -> None:
    """The download comes before the run folder: nothing is left to --resume or --force."""
    _with_hash(monkeypatch, _sha(checkpoint[0]))
    server.shutdown()
    server.server_close()
    out = tmp_path / "run"
    args = ["train", "--category", "bottle", "--data-root", str(synth_root), "--encoder", NAME, "--out", str(out)]
    result = runner.invoke(app, args)
    # pooch may log first what it tries to download (in this process, to whichever stream it was imported with)
    last = result.output.strip().splitlines()[-1]
    assert result.exit_code == 2 and last.startswith("error: cannot download") and not out.exists()


def test_encoder_list_and_unknown_names(monkeypatch) -> None:
    from rich.console import Console

    monkeypatch.setattr(cli, "console", Console(width=160))  # as piped output without COLUMNS (below)
    result = runner.invoke(app, ["encoder", "list"])
    assert (
        result.exit_code == 0 and "resnet50_l2_eps3" in result.output and "wide_resnet50_2_linf_eps4.0" in result.output
    )
    assert "…" not in result.output and "in package" in result.output  # no cell cut short
    result = runner.invoke(app, ["encoder", "fetch", "resnet50_l2_eps7"])
    assert result.exit_code == 2 and "unknown published encoder 'resnet50_l2_eps7'" in result.output
    result = runner.invoke(app, ["encoder", "fetch", "resnet50_l2_eps33"])  # a slip: the nearest name first
    assert result.exit_code == 2 and "(nearest: resnet50_l2_eps3, " in result.output


def test_piped_output_is_160_columns_wide_unless_columns_says(monkeypatch) -> None:
    monkeypatch.setattr(cli.sys, "stdout", None)  # no stdout at all (a service): not a terminal
    monkeypatch.delenv("COLUMNS", raising=False)
    assert cli._table_width() == 160
    monkeypatch.setenv("COLUMNS", "100")
    assert cli._table_width() is None  # rich reads it


def test_encoder_eval_of_a_published_encoder_measures_prediction_stability(
    checkpoint, server, monkeypatch, synth_root: Path
) -> None:
    import json

    _with_hash(monkeypatch, _sha(checkpoint[0]))
    out = Path(os.environ[pretrained.HOME_ENV]).parent / "eval.json"
    args = ["encoder", "eval", "--encoder", NAME, "--category", "bottle", "--data-root", str(synth_root)]
    result = runner.invoke(app, [*args, "--steps", "2", "--restarts", "1", "--eps", "0.05", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["clean_acc"] is None and 0 <= saved["pgd_acc"] <= 1 and saved["n"] > 0 and saved["norm"] == "l2"


def test_a_published_encoder_can_be_fine_tuned_on_the_category(
    checkpoint, server, monkeypatch, synth_root: Path, tmp_path: Path
) -> None:
    from robust_ad import rundir

    _with_hash(monkeypatch, _sha(checkpoint[0]))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "data: {image_size: 32, batch_size: 8}\n"
        "encoder: {batch_size: 8, pgd_steps: 1}\n"
        "autoencoder: {epochs: 1, decoder_width: 0.25}\n"
    )
    out = tmp_path / "run"
    args = ["train", "--category", "bottle", "--data-root", str(synth_root), "--recipe", str(recipe), "--out", str(out)]
    result = runner.invoke(app, [*args, "--encoder", NAME, "--encoder-finetune-epochs", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    info = rundir.read_training(out)
    assert info.encoder_source.startswith(f"{NAME}, fine-tuned 1 epochs") and len(info.encoder_history) == 1
    torch.manual_seed(0)
    published = torchvision.models.resnet18(weights=None).state_dict()["layer1.0.conv1.weight"]
    tuned = rundir.load_model(out).encoder.stages.layer1[0].conv1.weight
    assert tuned.shape == published.shape and not torch.equal(tuned, published)


SHIPPED = "robust-ad-test-l2-eps0.5"


@pytest.fixture
def shipped(monkeypatch, tmp_path: Path) -> Path:
    """A robust encoder, its eps 0 twin and a sibling robust at eps 2 shipped as the package ships its own (fp16,
    indexed, hashed)."""
    from robust_ad.config import EncoderConfig
    from robust_ad.training.encoder import train_encoder

    folder = tmp_path / "shipped"
    images = np.random.default_rng(0).random((16, 32, 32, 3), dtype=np.float32)
    for eps in (0.5, 0.0, 2.0):
        config = EncoderConfig(width=0.125, epochs=1, eps=eps, batch_size=8)
        train_encoder(images, config, checkpoint_path=tmp_path / f"enc{eps}.pt")
        pretrained.write_shipped(tmp_path / f"enc{eps}.pt", SHIPPED.replace("eps0.5", f"eps{eps:g}"), folder)
    monkeypatch.setattr(pretrained, "shipped_folder", lambda: folder)
    for name, entry in pretrained._shipped_entries().items():
        monkeypatch.setitem(REGISTRY, name, entry)
    return folder


def test_a_shipped_encoder_is_fp16_hash_checked_and_loads(shipped: Path, tmp_path: Path) -> None:
    from robust_ad.models.encoder import Encoder
    from robust_ad.training.encoder import EncoderRun
    from robust_ad.training.weights import load_encoder_weights

    path = fetch(SHIPPED)
    assert path == shipped / f"{SHIPPED}.pt" and REGISTRY[SHIPPED].twin == "robust-ad-test-l2-eps0"
    assert torch.load(path, weights_only=True)["model"]["conv1.weight"].dtype == torch.float16
    trained = EncoderRun.load(tmp_path / "enc0.5.pt")[0].encoder
    loaded = load_encoder_weights(Encoder(width=0.125), path)
    assert torch.allclose(loaded.stages.conv1.weight, trained.stages.conv1.weight, atol=1e-3)
    listed = {row["name"]: row for row in list_encoders()}
    assert listed[SHIPPED]["shipped"] and listed[SHIPPED]["cached"] and listed[SHIPPED]["verified"]
    result = runner.invoke(app, ["encoder", "eval", "--encoder", SHIPPED, "--category", "bottle"])
    assert result.exit_code == 2 and "MODEL_CARD.md" in result.output
    path.write_bytes(path.read_bytes()[:-1] + b"x")  # a damaged installation
    with pytest.raises(ModelError, match="SHA-256 differs"):
        fetch(SHIPPED)


def test_shipping_an_encoder_again_gives_the_same_file(shipped: Path, tmp_path: Path) -> None:
    again = pretrained.write_shipped(tmp_path / "enc0.5.pt", SHIPPED, tmp_path / "again")
    assert again.read_bytes() == (shipped / f"{SHIPPED}.pt").read_bytes()


def test_a_recipes_shipped_encoder_is_the_default_eps0_its_twin_and_scratch_opts_out(
    shipped: Path, synth_root: Path, tmp_path: Path
) -> None:
    from robust_ad import rundir

    recipe = tmp_path / "shipped.yaml"
    recipe.write_text(
        f"data: {{image_size: 32, batch_size: 8}}\nencoder: {{pretrained: {SHIPPED}, epochs: 1, batch_size: 8}}\n"
        "autoencoder: {epochs: 1, decoder_width: 0.25}\n"
    )
    args = ["train", "--category", "bottle", "--data-root", str(synth_root), "--recipe", str(recipe), "--device", "cpu"]
    expected = {
        (): (SHIPPED, 0.5, SHIPPED),
        ("--eps", "0"): ("robust-ad-test-l2-eps0", 0.0, "robust-ad-test-l2-eps0"),
        ("--encoder", "scratch"): (None, 1.0, "trained"),
        ("--eps", "2"): ("robust-ad-test-l2-eps2", 2.0, "robust-ad-test-l2-eps2"),  # the family's one at eps 2
        ("--eps", "0.25"): (None, 0.25, "trained"),  # no named encoder at that eps: one trained on the category
    }
    for extra, (name, eps, source) in expected.items():
        out = tmp_path / f"run{len(extra)}{extra[-1] if extra else ''}"
        result = runner.invoke(app, [*args, *extra, "--out", str(out)])
        assert result.exit_code == 0, result.output
        config = rundir.read_config(out)
        assert (config.encoder.pretrained, config.encoder.eps) == (name, eps)
        assert rundir.read_training(out).encoder_source == source
        assert config.encoder.width == (0.125 if name else 1.0)  # the shipped encoder's width, else the recipe's


def test_the_package_ships_the_recipes_encoder_its_twin_and_a_model_card() -> None:
    from robust_ad.config import load_config
    from robust_ad.models.encoder import Encoder
    from robust_ad.training.weights import load_encoder_weights

    folder = pretrained.shipped_folder()
    shipped = {name: entry for name, entry in REGISTRY.items() if entry.shipped}
    card = (folder / "MODEL_CARD.md").read_text()
    for recipe in ("default", "mvtec", "synthetic"):
        name = load_config(recipe).encoder.pretrained
        assert name in shipped and shipped[name].twin in shipped and name in card and shipped[name].twin in card
    assert sum((folder / entry.filename).stat().st_size for entry in shipped.values()) <= 25 * 2**20
    for name, entry in shipped.items():
        path = fetch(name)  # hash-checked
        encoder = load_encoder_weights(Encoder(entry.backbone, width=entry.width), path)
        assert all(torch.isfinite(p).all() for p in encoder.parameters())


def test_the_api_refuses_an_eps_its_named_encoder_is_not_robust_at(shipped: Path, synth_root: Path) -> None:
    """A notebook user who set encoder.eps 3 over a recipe naming the eps-1 encoder got eps 1 without a word (the
    name overwrote the eps); now that is refused before any work, and encoder_at_eps does what --eps does."""
    from robust_ad.api import encoder_at_eps, resolve_encoder
    from robust_ad.config import load_config
    from robust_ad.errors import ConfigError

    def config(**encoder: object):
        return load_config(None, {"data_root": str(synth_root), "encoder": {"pretrained": SHIPPED, **encoder}})

    assert resolve_encoder(config()).encoder.eps == 0.5  # no eps given: the name's
    assert resolve_encoder(config(eps=0)).encoder.pretrained == "robust-ad-test-l2-eps0"  # eps 0: its twin
    with pytest.raises(ConfigError, match=f"encoder.eps 3 contradicts encoder.pretrained {SHIPPED}, robust at eps 0.5"):
        resolve_encoder(config(eps=3))
    sibling = resolve_encoder(encoder_at_eps(config(), 2)).encoder
    assert (sibling.pretrained, sibling.eps) == ("robust-ad-test-l2-eps2", 2)
    trained = resolve_encoder(encoder_at_eps(config(), 0.25)).encoder  # none at 0.25: trained on the category
    assert (trained.pretrained, trained.eps) == (None, 0.25)


def test_a_registry_file_used_by_path_records_its_own_eps(
    shipped: Path, checkpoint, server, monkeypatch, caplog
) -> None:
    """--encoder-weights with a shipped or downloaded encoder's file recorded the recipe's eps (they do not carry
    it); the registry knows them by hash. An unknown foreign file still records the config's eps, with a warning
    (once: a resumed run's comparison of settings is quiet)."""
    from robust_ad.api import _warn_ignored_on_resume, resolve_encoder
    from robust_ad.config import load_config

    def resolved(weights: Path):
        return resolve_encoder(load_config(None, {"encoder": {"weights": str(weights), "eps": 1.0}})).encoder

    sibling = resolved(shipped / "robust-ad-test-l2-eps2.pt")
    assert (sibling.eps, sibling.width, sibling.backbone) == (2.0, 0.125, "resnet18")
    caplog.clear()
    assert resolved(checkpoint[0]).eps == 1.0  # not in the registry yet: the config's
    assert caplog.text.count("does not say the eps") == 1
    caplog.clear()
    config = load_config(None, {"encoder": {"weights": str(checkpoint[0]), "eps": 1.0}})
    _warn_ignored_on_resume(config, resolve_encoder(config, quiet=True))
    assert "does not say the eps" not in caplog.text
    _with_hash(monkeypatch, None)
    downloaded = fetch(NAME)  # its hash recorded at the first download
    assert resolved(downloaded).eps == 3.0 and resolved(checkpoint[0]).eps == 3.0  # the same bytes anywhere
