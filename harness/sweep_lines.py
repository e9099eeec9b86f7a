"""`python -m harness.sweep_lines [SWEEP OVERRIDES...]`: the cells of a sweep, one line of overrides each.

Takes what `python -m harness -m ...` takes (including `+sweep=PRESET`), checks every cell the same way,
and prints line i = the overrides of cell i, for `slurm/sbatch_array.sh` or any other scheduler.
`python -m harness.sweep_lines --check FILE` checks a file of such lines (written by hand, say) instead.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from harness import REPO_ROOT
from harness.errors import HarnessError


def sweep_lines(arguments: Sequence[str], check: bool = True) -> list[str]:
    """Compose the sweep as a multirun would, check its cells, and return one shell-quoted line per cell."""
    return [shlex.join(cell) for cell in _cells(arguments, None, check)]


def planned(arguments: Sequence[str]) -> tuple[list[list[str]], DictConfig]:
    """The cells a multirun of these arguments launches, in launch order, each the full list of its overrides
    (unchecked: `python -m harness.plan` states their cost before anything composes them), and the multirun's
    Hydra config (its launcher)."""
    return _multirun(arguments, None, check=False)


def check_lines(path: str | Path) -> int:
    """Check every cell of a file of override lines (written by hand, say) as a multirun would; returns the count."""
    from harness.sweep import count_lines, read_line

    cells = [read_line(Path(path), i) for i in range(count_lines(Path(path)))]
    _cells([], cells, check=True)
    return len(cells)


def _cells(arguments: Sequence[str], given: list[list[str]] | None, check: bool) -> list[list[str]]:
    return _multirun(arguments, given, check)[0]


def _multirun(
    arguments: Sequence[str], given: list[list[str]] | None, check: bool
) -> tuple[list[list[str]], DictConfig]:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    from harness.cli import explain
    from harness.config import register_resolvers
    from harness.sweep import check_cells, planned_cells

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "conf"), job_name="harness"):
            hydra = GlobalHydra.instance().hydra
            assert hydra is not None
            config = hydra.compose_config(
                "config", overrides=list(arguments), run_mode=RunMode.MULTIRUN, with_log_configuration=False
            )
            cells = planned_cells(config) if given is None else given
            if check:
                check_cells(config, cells)
    except (HydraException, OmegaConfBaseException) as exc:
        raise HarnessError(explain(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    return cells, config.hydra


def main(argv: Sequence[str] | None = None) -> int:
    """Print the cells' override lines; a bad sweep is one line on stderr and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    try:
        if args[:1] == ["--check"] and len(args) == 2:
            print(f"{check_lines(args[1])} cell(s) checked", file=sys.stderr)
            return 0
        lines = sweep_lines(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
