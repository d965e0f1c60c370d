"""Command line: parses options, calls the library, prints results. No logic of its own."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from robust_ad.errors import RobustADError

console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


class _App(typer.Typer):
    """A Typer app whose commands print a RobustADError as one line and exit with code 2."""

    def command(self, *args: Any, **kwargs: Any) -> Callable:
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable) -> Callable:
            @functools.wraps(fn)
            def wrapper(*a: Any, **k: Any) -> Any:
                try:
                    return fn(*a, **k)
                except RobustADError as exc:
                    if _state["debug"]:
                        raise
                    err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
                    raise typer.Exit(2) from None

            return register(wrapper)

        return decorator


def _app(help_text: str) -> _App:
    return _App(help=help_text, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


app = _app("robust-ad: find defects in industrial images and remove noise from them.")
datasets_app = _app("Create and validate datasets.")
app.add_typer(datasets_app, name="datasets")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks.")) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(message)s")


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
    from robust_ad.data.synth import synthesize

    path = synthesize(out, category, size, n_train, n_test_good, n_per_defect, seed, force)
    console.print(f"wrote {path}")


@datasets_app.command("check")
def datasets_check(
    data_root: Path = typer.Option(..., "--data-root", help="Dataset root folder."),
    category: str = typer.Option(..., "--category", help="Category (sub)folder name."),
    layout: str = typer.Option("auto", "--layout", help="auto, mvtec, visa or folder."),
    seed: int = SEED,
) -> None:
    """Validate a dataset layout and print a summary; exit non-zero when it is not usable."""
    from robust_ad.data import AnomalyDataset
    from robust_ad.data.check import check_dataset
    from robust_ad.errors import DataError

    report = check_dataset(AnomalyDataset.load(data_root, category, layout, seed=seed))
    dataset = report.dataset
    table = Table(title=f"{dataset.category} ({dataset.layout} layout, {dataset.root})")
    for column in ("split", "type", "images", "masks"):
        table.add_column(column)
    for split, counts in dataset.counts().items():
        for defect, count in sorted(counts.items()):
            masks = "-" if defect == "good" else ("yes" if dataset.has_masks(defect) else "no")
            table.add_row(split, defect, str(count), masks)
    console.print(table)
    sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in report.sizes.most_common())
    console.print(f"image sizes: {sizes}")
    console.print(f"formats: {', '.join(f'{k} ({n})' for k, n in report.formats.most_common())}")
    console.print(f"masks matched: {report.masks_matched}, defects without mask: {report.defects_without_mask}")
    if not report.usable:
        raise DataError(report.reason())
    console.print("[green]dataset is usable[/green]")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
