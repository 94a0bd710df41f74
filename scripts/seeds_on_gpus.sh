#!/usr/bin/env bash
# Seeds of one experiment side by side on a GPU box: seed k on GPU k mod the number of GPUs,
# each in the background with its own log, then wait and report every exit code.
#   scripts/seeds_on_gpus.sh "model=cnn data=fashion_mnist data.root=/data/fashion" 1 2 3 4
# nnrun's exit codes: 0 done, 1 failed while training, 2 bad config or data, 130/143 stopped.
set -uo pipefail
overrides=$1; shift
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
[ "$gpus" -gt 0 ] || { echo "no GPU found (nvidia-smi)"; exit 2; }
mkdir -p logs
declare -A pids
i=0
for seed in "$@"; do
    gpu=$(( i % gpus )); i=$(( i + 1 ))
    # word splitting of $overrides is intended: it holds several key=value words
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$gpu nohup nnrun $overrides trainer.seed="$seed" run_name="seed$seed" \
        > "logs/seed$seed.log" 2>&1 &
    pids[$seed]=$!
    echo "seed $seed on GPU $gpu: pid ${pids[$seed]}, log logs/seed$seed.log"
done
failed=0
for seed in "${!pids[@]}"; do
    wait "${pids[$seed]}"; code=$?
    [ "$code" -eq 0 ] || { echo "seed $seed exited $code: see logs/seed$seed.log"; failed=1; }
done
[ "$failed" -eq 0 ] && echo "all seeds finished" && nnrun-report outputs
exit "$failed"
