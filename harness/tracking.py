"""Experiment tracking: nothing by default, Weights & Biases with logger=wandb (offline works).

The tracker starts in stage 1, before the selection (which may take hours), so that a logger that cannot start (the
package missing, not logged in, no network, a bad project or entity) fails the run before any work with its one-line
error. A plain preflight (import, mode, an API key present) would miss what only the server can say, such as a bad
project; starting the run itself checks everything. Its files go under `<paths.results>/wandb/`, never into the run
folder, whose first file must be the manifest (a folder with files but no manifest is refused as foreign); the
manifest records where they are (`tracker`).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from harness.errors import HarnessError, first_line


class Tracker:
    """No-op tracker: the run record on disk is the source of truth."""

    def log(self, data: dict[str, Any], step: int | None = None) -> None:
        pass

    def summary(self, data: dict[str, Any]) -> None:
        pass

    def table(self, name: str, frame: pd.DataFrame) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass

    def describe(self) -> dict[str, Any] | None:
        """Where the tracker keeps this run (for the manifest); None when it keeps nothing."""
        return None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Finish the run, as failed when the cell stopped with an error or an interruption."""
        self.finish(exit_code=0 if kind is None else 1)


class WandbTracker(Tracker):
    """Logs training curves, the results table and the summary to one wandb run."""

    def __init__(self, cfg: DictConfig, files_dir: Path, name: str, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise HarnessError("logger=wandb needs the wandb package; pip install -e '.[wandb]'") from None

        self._wandb = wandb
        self._finished = False
        try:
            self.run = wandb.init(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                mode=cfg.logger.mode,
                tags=list(cfg.logger.tags),
                name=name,
                dir=str(files_dir),
                config=config,
                reinit="finish_previous",
            )
        except Exception as exc:  # no network, no API key, a bad project or entity: wandb's own multi-line errors
            raise HarnessError(
                f"logger=wandb could not start a run ({first_line(exc)}); log in (wandb login), or set "
                "logger.mode=offline (WANDB_MODE=offline) where there is no network, or use logger=none"
            ) from None

    def log(self, data: dict[str, Any], step: int | None = None) -> None:
        self.run.log(data, step=step)

    def summary(self, data: dict[str, Any]) -> None:
        for key, value in data.items():
            self.run.summary[key] = value

    def table(self, name: str, frame: pd.DataFrame) -> None:
        self.run.log({name: self._wandb.Table(dataframe=frame.astype(str) if frame.empty else frame)})

    def finish(self, exit_code: int = 0) -> None:
        if not self._finished:  # once: the success path finishes it, the cell's exit would again
            self._finished = True
            self.run.finish(exit_code=exit_code)

    def describe(self) -> dict[str, Any] | None:
        files = getattr(self.run, "dir", None)  # <dir>/wandb/<offline-|>run-<time>-<id>/files
        return {"name": "wandb", "id": getattr(self.run, "id", None), "dir": str(Path(files).parent) if files else None}


def tracker_dir(cfg: DictConfig) -> Path:
    """Where a tracker writes its files: the results root (wandb adds `wandb/`), outside every run folder."""
    return Path(to_absolute_path(str(cfg.paths.results)))


def make_tracker(cfg: DictConfig, files_dir: Path, name: str) -> Tracker:
    """The run's tracker, writing under files_dir: wandb with logger=wandb (a one-line HarnessError when it cannot
    start), else a no-op. A context manager: leaving it finishes the run (failed, on an exception)."""
    if cfg.logger.name == "wandb":
        return WandbTracker(cfg, files_dir, name, OmegaConf.to_container(cfg, resolve=True))
    return Tracker()
