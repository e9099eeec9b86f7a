#!/usr/bin/env bash
# Run the cells of a sweep as ONE plain `sbatch --array` job, without Hydra's submitit launcher.
#
#   python -m harness.sweep_lines +sweep=scaling > cells.txt          # line i = the overrides of cell i
#   slurm/sbatch_array.sh [OPTIONS] cells.txt [-- SBATCH OPTIONS...]
#
# Options:
#   --record DIR      sweep record (status files, summary, logs, the generated batch script);
#                     default results/runs/_sweeps/sbatch-<time>
#   --parallel K      at most K cells at once (--array=0-N%K)
#   --gpus N          GPUs per cell (--gpus-per-node=N)
#   --procs P         processes per cell; P > 1 runs `accelerate launch --multi_gpu --num_processes P -m harness`
#   --setup LINE      a shell line run before each cell, e.g. "module load cuda/12.4" (repeatable)
#   --max-requeues N  a cell stopped by the USR1 warning (below) is requeued at most N times (default 3; 0: never)
#   --dry-run         write the batch script and print the sbatch command; submit nothing
# Everything after `--` goes to sbatch as is (--partition=gpu --time=04:00:00 --cpus-per-task=8 --mem=64G ...).
# --signal=B:USR1@120 there warns each cell two minutes before the time limit: it stops at a checkpoint and
# says how to resume (B: is needed: the cell runs in the batch step, which Slurm signals only with B:); the batch
# shell then requeues its task (`scontrol requeue`), which resumes from that checkpoint, as submitit does.
# The Python that runs the cells is $HARNESS_PYTHON, default the `python` on PATH now (a venv on a shared
# file system works on every node). Prints the array's job id; `python -m harness.sweep summary DIR` shows
# how the cells stand.
set -euo pipefail

die() {
    echo "error: $*" >&2
    exit 2
}

RECORD="" PARALLEL="" GPUS="" PROCS=1 DRY=0 MAX_REQUEUES=3
SETUP=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --record) RECORD=${2:?--record needs a folder}; shift 2 ;;
    --parallel) PARALLEL=${2:?--parallel needs a number}; shift 2 ;;
    --gpus) GPUS=${2:?--gpus needs a number}; shift 2 ;;
    --procs) PROCS=${2:?--procs needs a number}; shift 2 ;;
    --setup) SETUP+=("${2:?--setup needs a shell line}"); shift 2 ;;
    --max-requeues) MAX_REQUEUES=${2:?--max-requeues needs a number}; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) break ;;
    -*) die "unknown option $1; see slurm/sbatch_array.sh --help" ;;
    *) break ;;
    esac
done
[[ $# -ge 1 && $1 != -- ]] || die "no file of override lines; usage: slurm/sbatch_array.sh [OPTIONS] cells.txt [-- SBATCH OPTIONS]"
LINES=$(realpath "$1")
shift
[[ ${1:-} == -- ]] && shift
SBATCH_ARGS=("$@")

PY=${HARNESS_PYTHON:-$(command -v python || command -v python3)}
[[ $PY == /* ]] || PY=$PWD/$PY # absolute, but not through symlinks: a venv's python must stay the venv's
N=$("$PY" -m harness.sweep count "$LINES") || exit 2
((N > 0)) || die "$LINES has no cell lines; write one line of overrides per cell"
[[ -z $PARALLEL || $PARALLEL =~ ^[1-9][0-9]*$ ]] || die "--parallel must be a whole number >= 1, got '$PARALLEL'"
[[ $MAX_REQUEUES =~ ^[0-9]+$ ]] || die "--max-requeues must be a whole number >= 0, got '$MAX_REQUEUES'"
"$PY" -m harness.launch check "${GPUS:-0}" "$PROCS" || exit 2
"$PY" -m harness.sweep_lines --check "$LINES" || exit 2 # every cell composes and type-checks before submission
command -v sbatch >/dev/null 2>&1 || die "sbatch not found; run this on a Slurm login node (or start slurm/cluster.sh)"

RECORD=$(realpath -m "${RECORD:-results/runs/_sweeps/sbatch-$(date +%Y%m%d-%H%M%S)}")
mkdir -p "$RECORD/logs"
if ((PROCS > 1)); then
    LAUNCH="\"$PY\" -m accelerate.commands.launch --multi_gpu --num_processes $PROCS -m harness"
else
    LAUNCH="\"$PY\" -m harness"
fi
ARRAY="0-$((N - 1))${PARALLEL:+%$PARALLEL}"
SCRIPT=$RECORD/array.sbatch
{
    echo "#!/usr/bin/env bash"
    echo "# Written by slurm/sbatch_array.sh: cell \$SLURM_ARRAY_TASK_ID = line \$SLURM_ARRAY_TASK_ID of $LINES"
    echo "#SBATCH --job-name=harness"
    echo "#SBATCH --array=$ARRAY"
    echo "#SBATCH --output=$RECORD/logs/%A_%a.out"
    echo "#SBATCH --ntasks=1"
    echo "#SBATCH --requeue"
    echo "#SBATCH --open-mode=append" # a requeued task's log keeps the earlier attempts' lines
    [[ -n $GPUS ]] && echo "#SBATCH --gpus-per-node=$GPUS"
    echo "cd $(printf %q "$PWD")"
    cat <<'EOF'
# Slurm's time limit, preemption and requeue send SIGTERM to every process of the batch step, this shell included:
# note it and go on, so the cell is reported below only when this shell was not signalled, i.e. when its process
# ended alone (killed for memory, crashed) and no requeue comes. `sbatch --signal=B:USR1@SECONDS` warns this shell
# alone before the time limit (without B: Slurm signals srun's steps only, and the cell runs in this one): pass it
# on to the cell, which stops at a checkpoint and says how to resume. Left untrapped, USR1 would end this shell.
signalled="" cell=""
trap 'signalled=TERM' TERM
trap 'signalled=USR1; warn_cell' USR1
EOF
    if ((PROCS > 1)); then
        cat <<'EOF'
warn_cell() { # `accelerate launch` (torchrun's agent) would die of USR1: its worker processes get it instead
    [[ -n $cell ]] || return 0 # not started yet: warned once it starts
    pkill -USR1 -P "$cell" || kill -TERM "$cell" 2>/dev/null || true # no worker yet: the agent stops on SIGTERM
}
EOF
    else
        cat <<'EOF'
warn_cell() { [[ -z $cell ]] || kill -USR1 "$cell" 2>/dev/null || true; }
EOF
    fi
    for line in "${SETUP[@]}"; do echo "$line"; done
    cat <<EOF
export HARNESS_SWEEP_RECORD=$(printf %q "$RECORD") HARNESS_SWEEP_CELL=\$SLURM_ARRAY_TASK_ID
export HARNESS_SWEEP_LOG=$(printf %q "$RECORD")/logs/\${SLURM_ARRAY_JOB_ID}_\${SLURM_ARRAY_TASK_ID}.out
cell_file=\$(mktemp)
# a cell whose overrides cannot be read is not run (an empty list would run the default cell under its name)
if ! "$PY" -m harness.sweep argv $(printf %q "$LINES") "\$SLURM_ARRAY_TASK_ID" >"\$cell_file"; then
    rm -f "\$cell_file"
    [[ -z \$signalled ]] || exit 143 # stopped by Slurm while reading them: the requeued task reads them again
    echo "error: cannot read the overrides of cell \$SLURM_ARRAY_TASK_ID (see above); the cell was not run" >&2
    "$PY" -m harness.sweep end-cell $(printf %q "$RECORD") "\$SLURM_ARRAY_TASK_ID" 2 || true
    exit 2
fi
mapfile -d '' -t overrides <"\$cell_file"
rm -f "\$cell_file"
echo "cell \$SLURM_ARRAY_TASK_ID (restart \${SLURM_RESTART_COUNT:-0}): \${overrides[*]}"
# In the background (SIGINT and SIGQUIT as usual for it), so that this shell's traps run while the cell runs.
( trap - INT QUIT; exec $LAUNCH "\${overrides[@]}" ) &
cell=\$!
[[ \$signalled != USR1 ]] || warn_cell
while kill -0 "\$cell" 2>/dev/null; do wait "\$cell"; done # a trapped signal ends a wait early
wait "\$cell"
rc=\$?
# bash (5.2) can lose the status of a child killed by the very signal this shell traps at that moment: wait gives -1.
# That child ended of that signal; without a trapped signal there is no such race (an unknown end counts as failed).
if ((rc < 0)); then [[ -n \$signalled ]] && rc=\$((128 + \$(kill -l "\$signalled"))) || rc=1; fi
# A cell stopped with this shell (time limit, preemption, requeue) reports when it runs again, or has reported
# itself (harness.cli's "stopped by SIGTERM" / "stopped by SIGUSR1" line); any other end reports now, a process killed alone included
# (rc >= 128: the OOM killer's SIGKILL is 137), or the summary would show it running forever.
if [[ -z \$signalled ]]; then
    "$PY" -m harness.sweep end-cell $(printf %q "$RECORD") "\$SLURM_ARRAY_TASK_ID" "\$rc" || true
elif [[ \$signalled == USR1 ]]; then # warned before the time limit: a cell that stopped at its checkpoint goes again
    "$PY" -m harness.sweep requeue-cell $(printf %q "$RECORD") "\$SLURM_ARRAY_TASK_ID" $MAX_REQUEUES || true
fi
exit \$rc
EOF
} >"$SCRIPT"
"$PY" -m harness.sweep plan "$LINES" "$RECORD" sbatch || exit 2

if ((DRY)); then
    echo "sbatch --parsable ${SBATCH_ARGS[*]} $SCRIPT"
    exit 0
fi
JOB=$(sbatch --parsable "${SBATCH_ARGS[@]}" "$SCRIPT") || die "sbatch refused the array (see above); nothing was submitted"
echo "$JOB" >"$RECORD/job_id"
echo "submitted array $JOB: $N cells, record in $RECORD" >&2
echo "$JOB"
