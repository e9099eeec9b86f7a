"""Entry point `python -m harness`: Hydra composes the config, the pipeline runs one cell.

Errors in the user's input (ours and Hydra's) end as one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from harness import REPO_ROOT
from harness.config import free_mappings, register_resolvers
from harness.errors import HarnessError, first_line
from harness.hub import disable_telemetry
from harness.interrupt import Interrupted
from harness.launch import launch_rank

GROUP_NOUNS = {"selector": "selector", "model": "model", "data": "data pool", "eval": "evaluation suite"}


@hydra.main(version_base="1.3", config_path=str(REPO_ROOT / "conf"), config_name="config")
def _hydra_main(cfg: DictConfig) -> object:
    from harness.pipeline import run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_log_on_main_only(run_dir)
    made_now = only_log(run_dir, empty=True)  # Hydra has just made the folder and its empty log
    results_root = Path(to_absolute_path(cfg.paths.results))
    try:
        outcome = run(cfg, run_dir)  # the sweep summary reads the outcome (run folder, skipped or not)
        if made_now and Path(outcome.run_dir).absolute() != run_dir.absolute() and only_log(run_dir, empty=False):
            remove_with_empty_parents(run_dir, results_root)  # its record is in another folder: leave no empty one
        return outcome
    except HarnessError as exc:  # inside the job, so Hydra adds nothing to the one line
        if not exc.reported:  # with several processes, the one that failed first says it; the others exit quietly
            print(f"error: {exc}", file=sys.stderr)
        if made_now and only_log(run_dir, empty=False):
            remove_with_empty_parents(run_dir, results_root)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            exc.reported = True  # said above: main() exits with its code when the sweep re-raises it, silently
            raise  # Hydra marks this cell failed and runs the others; the sweep exits 2 at the end
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        if launch_rank() == 0:  # every process is stopped (Slurm and the launcher signal each): one line is enough
            print(interrupted_line(exc, rerun=cfg.get("rerun") is True), file=sys.stderr)
        if made_now and only_log(run_dir, empty=False):
            remove_with_empty_parents(run_dir, results_root)
        if exc.then is not None:  # submitit's time-limit signal, now that training has its checkpoint:
            exc.then()  # it pickles the call, requeues the job and exits (rank 0; the other ranks return here)
        sys.exit(exc.exit_code)


def interrupted_line(exc: Interrupted, rerun: bool = False) -> str:
    """One line instead of a traceback: where the run stopped and how to go on (with rerun=true the same command
    would archive the attempt and start over, so the line says to drop it)."""
    what = "interrupted" if exc.signame == "SIGINT" else f"stopped by {exc.signame}"
    if exc.step and rerun:
        return f"{what}; run the same command without rerun=true to resume from step {exc.step}"
    if exc.step:
        return f"{what}; run the same command again to resume from step {exc.step}"
    return f"{what} before training had a checkpoint; run the same command again to start the cell"


def run_log_on_main_only(run_dir: Path) -> None:
    """With several processes, only the main one writes the run folder's harness.log (Hydra gives each process a
    handler on it, and every stage line would be there once per process); the others keep their lines on stderr."""
    if launch_rank() == 0:
        return
    from harness.record import LOG

    log = (run_dir / LOG).resolve()
    for handler in list(logging.root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve() == log:
            logging.root.removeHandler(handler)
            handler.close()


def only_log(run_dir: Path, empty: bool) -> bool:
    """The folder holds nothing but Hydra's job log (and that log is empty, if asked)."""
    if not run_dir.is_dir():
        return False
    entries = list(run_dir.iterdir())
    return all((p.name == "harness.log" and not (empty and p.stat().st_size)) or p.name == ".lock" for p in entries)


def remove_with_empty_parents(run_dir: Path, results_root: Path) -> None:
    """A run rejected before it wrote anything leaves no folder behind, nor the empty parents its folder scheme
    made: those inside the results root (the root included), never a folder above it or the cwd."""
    shutil.rmtree(run_dir, ignore_errors=True)
    root, stop = results_root.resolve(), Path.cwd().resolve()
    for parent in run_dir.resolve().parents:
        inside = parent == root or root in parent.parents
        if not inside or parent == stop or parent in stop.parents or not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()


def explain(exc: BaseException) -> str:
    """One line for an error in the command line or config, saying what to fix."""
    if isinstance(exc, MissingConfigException) and getattr(exc, "missing_cfg_file", None):
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        options = sorted(getattr(exc, "options", None) or [])
        if group:
            noun = GROUP_NOUNS.get(group, f"'{group}' option")
            return (
                f"unknown {noun} '{option}'; available: {', '.join(options)} "
                f"(add conf/{group}/{option}.yaml to define it)"
            )
    missing = re.search(r"Missing mandatory value: ?([\w.]+)", str(exc))
    if missing:
        key = missing.group(1)
        return f"{key} is required here; pass {key}=... (see conf/ for what it takes)"
    added = new_mapping_keys(exc)
    if added:
        return added
    first = first_line(exc)
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        detail = first_line(cause)
        if detail not in first:
            first = f"{first}: {detail}"
    swept = _swept_group_key(first)
    if swept:
        first += (
            f" (a multirun composes its config once with the default {swept[0]} before it sweeps, and that one has "
            f"no such key: write ++{swept[1]}=... to set it where it exists and add it where not, or run one "
            f"command per {swept[0]})"
        )
    elif "Could not override" in first or "not in struct" in first:
        first += (
            " (check the key's spelling; `python -m harness --cfg job` prints every key; "
            "a key the config does not have yet takes a leading +)"
        )
    return first


def _swept_group_key(message: str) -> tuple[str, str] | None:
    """(group, key) when Hydra could not override `group.key` in a multirun that sweeps the group itself
    (`-m selector=bids,influence selector.warmup_base=...`): its first composition takes the group's default."""
    override = re.match(r"Could not override '(\w+)\.([\w.]+)'", message)
    if not override or not any(a in ("-m", "--multirun") for a in sys.argv[1:]):
        return None
    group = override.group(1)
    if not any(re.match(rf"^{group}=[^=]*,", a) for a in sys.argv[1:]):
        return None
    return group, f"{group}.{override.group(2)}"


def new_mapping_keys(exc: BaseException) -> str | None:
    """`eval.fewshot='{facts: 2}'` or `eval.fewshot.facts=2` adds a key to an existing mapping, which Hydra refuses
    without a leading `+`: the one line says so and gives Hydra's own `+` form (None for any other error, such as a
    misspelt key of a typed group, where a `+` would not help)."""
    text = str(exc)
    override = re.match(r"Could not override '([^']+)'", text)
    append = re.search(r"^To append to your config use (.+)$", text, re.MULTILINE)
    full_key = str(getattr(exc.__cause__, "full_key", "") or "")
    if not (override and append):
        return None
    key = override.group(1)
    if full_key.startswith(key + "."):  # a mapping value: eval.fewshot='{facts: 2}'
        mapping, new = key, full_key[len(key) + 1 :]
    elif full_key == key and key.rpartition(".")[0] in free_mappings():  # one new key: eval.fewshot.facts=2
        mapping, _, new = key.rpartition(".")
    else:
        return None
    return (
        f"{mapping} has no key '{new}' (a plain override only changes keys it has); "
        f"to add it, use a leading +: '{append.group(1).strip()}'"
    )


def main() -> None:
    """`python -m harness`: one run or a multirun; an early-stopped multirun's summary is said before it returns."""
    try:
        _main()
    finally:
        sweep = sys.modules.get("harness.sweep")  # loaded by Hydra's callback when a multirun started
        if sweep is not None:
            sweep.end_open_sweeps()


def _main() -> None:
    disable_telemetry()  # a benchmark that runs offline makes no usage or download-count requests
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let errors reach us, so we can say them in one line
    register_resolvers()
    try:
        _hydra_main()
    except HarnessError as exc:
        logging.getLogger("harness").debug("user error", exc_info=True)
        if not getattr(exc, "reported", False):  # a multirun cell's error was said once, by the cell
            print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (
        MissingConfigException,
        ConfigCompositionException,
        OverrideParseException,
        HydraException,
        OmegaConfBaseException,
    ) as exc:
        if launch_rank() == 0:  # the same command line fails alike in every process of a launch: one line says it
            print(f"error: {explain(exc)}", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:
        if raised_in_job(exc) or not str(exc).startswith("Only one of --run, --multirun"):
            raise
        # Hydra refuses `-m ... --cfg job` with a traceback: one line, and where a sweep's cells can be seen
        print(
            f"error: {first_line(exc)}; drop -m to print one cell's config (--cfg job), or list the cells of a sweep "
            "with python -m harness.sweep_lines <the same overrides>",
            file=sys.stderr,
        )
        sys.exit(2)
    except OSError as exc:
        if raised_in_job(exc):  # the run's own I/O: not a question of where the user pointed it
            raise
        # Hydra making the run folder or its log (paths.results or hydra.run.dir is a file, or not writable)
        if launch_rank() == 0:
            print(
                f"error: cannot make the run folder or its log ({exc.strerror or exc}: {exc.filename}); "
                "point paths.results (or hydra.run.dir) at a folder you can write",
                file=sys.stderr,
            )
        sys.exit(2)
    except Exception as exc:
        said = slurm_failure(exc)
        if said is None:
            raise
        print(f"error: {said[0]}", file=sys.stderr)
        sys.exit(said[1])


def slurm_failure(exc: BaseException) -> tuple[str, int] | None:
    """One line and an exit code for submitit's errors in the launching process (None for any other error):
    sbatch refusing the array (a cluster setting to fix, exit 2), or a cell whose job failed on the cluster (its
    own line is in the sweep summary, exit 1). Submitit would show a traceback wrapping the job's whole log."""
    if not type(exc).__module__.startswith("submitit"):
        return None
    cause = exc.__cause__
    command = getattr(cause, "cmd", None) or []
    if isinstance(cause, subprocess.CalledProcessError) and any("sbatch" in str(part) for part in command):
        why = first_line(str(cause.stderr or "").strip() or f"exit code {cause.returncode}")
        fix = "fix the hydra.launcher settings (partition, time, gres, account, ...) and run the sweep again"
        return f"sbatch refused the sweep: {why}; {fix}", 2
    return f"a sweep cell failed on Slurm ({first_line(exc)}); the sweep summary has every cell's reason", 1


def raised_in_job(exc: BaseException) -> bool:
    """Whether the error came from inside the job (a frame of `_hydra_main`), not from Hydra's set-up around it."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "_hydra_main" and code.co_filename == __file__:
            return True
        tb = tb.tb_next
    return False
