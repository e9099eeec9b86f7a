"""Experiment tracking: nothing by default, Weights & Biases with logger=wandb (offline works)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
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

    def finish(self) -> None:
        pass


class WandbTracker(Tracker):
    """Logs training curves, the results table and the summary to one wandb run."""

    def __init__(self, cfg: DictConfig, run_dir: Path, name: str, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise HarnessError("logger=wandb needs the wandb package; pip install -e '.[wandb]'") from None

        self._wandb = wandb
        try:
            self.run = wandb.init(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                mode=cfg.logger.mode,
                tags=list(cfg.logger.tags),
                name=name,
                dir=str(run_dir),
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

    def finish(self) -> None:
        self.run.finish()


def make_tracker(cfg: DictConfig, run_dir: Path, name: str) -> Tracker:
    """The run's tracker: wandb with logger=wandb (a one-line HarnessError when it cannot start), else a no-op."""
    if cfg.logger.name == "wandb":
        return WandbTracker(cfg, run_dir, name, OmegaConf.to_container(cfg, resolve=True))
    return Tracker()
