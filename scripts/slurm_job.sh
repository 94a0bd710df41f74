#!/usr/bin/env bash
# One nnrun training as a SLURM batch job that survives preemption and time limits:
#   sbatch scripts/slurm_job.sh model=cnn data=fashion_mnist data.root=/data/fashion
# SLURM sends SIGUSR1 two minutes before the end; nnrun finishes the step, saves last.pt and exits
# 138; this script then requeues the job, and the rerun continues the same run (trainer.resume=auto).
#SBATCH --job-name=nnrun
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
set -uo pipefail
# nnrun runs in the background so that this shell can pass the signal on
nnrun trainer.requeue_signal=SIGUSR1 trainer.resume=auto "$@" &
child=$!
trap 'kill -USR1 "$child"' USR1
wait "$child"; code=$?
if kill -0 "$child" 2>/dev/null; then      # the trap cut the wait short: nnrun is still saving
    wait "$child"; code=$?
fi
if [ "$code" -eq 138 ]; then
    echo "nnrun saved its state after SIGUSR1: requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$code"
