#!/usr/bin/env bash
# Seeds of one experiment side by side on a GPU box: seed k on the k-th of the GPUs this job may use
# (round-robin), each in the background with its own log, then wait and report every exit code.
#   scripts/seeds_on_gpus.sh "model=cnn data=fashion_mnist data.root=/data/fashion" 1 2 3 4
# The GPUs: those CUDA_VISIBLE_DEVICES names when it is set (a SLURM allocation, your own subset),
# else every GPU nvidia-smi lists, or every MIG device where the GPUs are split into MIG devices.
# CPU threads: the cores this job may use, shared out among the seeds (OMP_NUM_THREADS, unless set).
# nnrun's exit codes: 0 done, 1 failed while training, 2 bad config or data, 130/143 stopped.
set -uo pipefail
overrides=$1; shift
[ "$#" -gt 0 ] || { echo "give the seeds after the overrides, e.g. seeds_on_gpus.sh \"model=cnn\" 1 2 3"; exit 2; }
declare -A seen
for seed in "$@"; do        # each seed names a log and a run: empty or repeated ones would hide a run
    [[ "$seed" =~ ^[0-9]+$ ]] || { echo "seed '$seed' is not a whole number"; exit 2; }
    [ -z "${seen[$seed]:-}" ] || { echo "seed $seed is given twice"; exit 2; }
    seen[$seed]=1
done
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then        # set, even empty: the GPUs this job was given
    IFS=, read -ra given <<< "${CUDA_VISIBLE_DEVICES// /}"
    devices=()
    for d in "${given[@]}"; do [ -n "$d" ] && devices+=("$d"); done
    [ "${#devices[@]}" -gt 0 ] || { echo "CUDA_VISIBLE_DEVICES is set but names no GPU: this job has none"; exit 2; }
else
    # each GPU nvidia-smi -L lists, or its MIG devices where it is split ("  MIG ... (UUID: MIG-...)")
    mapfile -t devices < <(nvidia-smi -L 2>/dev/null | awk '
        /^GPU [0-9]+:/ { if (gpu != "" && !mig) print gpu; gpu = $2; sub(":", "", gpu); mig = 0; next }
        /^ *MIG / && match($0, /UUID: MIG-[^)]*/) { print substr($0, RSTART + 6, RLENGTH - 6); mig = 1 }
        END { if (gpu != "" && !mig) print gpu }')
fi
[ "${#devices[@]}" -gt 0 ] || { echo "no GPU found (CUDA_VISIBLE_DEVICES is empty and nvidia-smi -L lists none)"; exit 2; }
cores=$(nproc 2>/dev/null || echo 1)
threads=${OMP_NUM_THREADS:-$(( cores / $# > 0 ? cores / $# : 1 ))}
mkdir -p logs
declare -A pids
i=0
for seed in "$@"; do
    device=${devices[$(( i % ${#devices[@]} ))]}; i=$(( i + 1 ))
    # word splitting of $overrides is intended: it holds several key=value words
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$device OMP_NUM_THREADS=$threads nohup nnrun $overrides trainer.seed="$seed" \
        run_name="seed$seed" > "logs/seed$seed.log" 2>&1 &
    pids[$seed]=$!
    echo "seed $seed on GPU $device with $threads CPU threads: pid ${pids[$seed]}, log logs/seed$seed.log"
done
failed=0
for seed in "${!pids[@]}"; do
    wait "${pids[$seed]}"; code=$?
    [ "$code" -eq 0 ] || { echo "seed $seed exited $code: see logs/seed$seed.log"; failed=1; }
done
[ "$failed" -eq 0 ] && echo "all seeds finished" && nnrun-report outputs
exit "$failed"
