#!/usr/bin/env bash
# One nnrun training as a SLURM batch job that survives preemption and time limits:
#   sbatch scripts/slurm_job.sh model=cnn data=fashion_mnist data.root=/data/fashion
# SLURM sends SIGUSR1 two minutes before the end; nnrun finishes the step, saves last.pt and exits
# 138; this script then requeues the job, and the rerun continues the same run (trainer.resume=auto).
# The log is nnrun-<job id>.out in the folder you submit from, appended to by every requeued attempt.
#SBATCH --job-name=nnrun
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=nnrun-%j.out
#SBATCH --open-mode=append
set -uo pipefail
echo "nnrun job ${SLURM_JOB_ID:-?}, attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )), on $(hostname) at $(date)"
# nnrun runs in the background so that this shell can pass the signal on
nnrun trainer.requeue_signal=SIGUSR1 trainer.resume=auto "$@" &
child=$!
signalled=false
trap 'signalled=true; kill -USR1 "$child" 2>/dev/null' USR1
wait "$child"; code=$?
while $signalled; do    # the trap cut the wait short: wait again for nnrun's own exit code (bash keeps it)
    signalled=false
    wait "$child"; code=$?
done
if [ "$code" -eq 138 ]; then
    echo "nnrun saved its state after SIGUSR1: requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$code"
