#!/usr/bin/env bash
# gpu_check.sh: nnrun's CUDA paths, checked once on a GPU machine, in about 6 minutes.
#
#   bash benchmarks/gpu_check.sh                 # from the repository root; results in $OUT
#   bash benchmarks/gpu_check.sh --dry-run       # the plan: every step and its exact commands
#   bash benchmarks/gpu_check.sh --only 1,5,7    # a subset (setup always runs)
#
# Results, written as the steps go (a kill leaves what was done so far), in $OUT (default
# ./gpu_check_out): gpu_check.md (one row per step: PASS / FAIL / SKIP and why, then the tables),
# gpu_check.log (every command and its output), gpu_check_results.jsonl (the rows, one JSON object
# each) and gpu_check_runs.tar.gz (the run folders' logs, summaries and configs; no weights).
# Exit status: 1 when a step (or the setup) failed, else 0.
#
# Setup. Where `import hydra` or nnrun is missing, the wheels in $NNRUN_WHEELS (default ./.whl:
# hydra_core, omegaconf, antlr4_python3_runtime, hydra_joblib_launcher, nnrun-*.whl) are installed
# with `python3 -m pip install --no-index --no-deps --no-compile --target $NNRUN_SITE` (default
# /tmp/nnrun-site), put on PYTHONPATH and PATH; no nnrun wheel: `pip install --no-deps
# --no-build-isolation --target` from a copy of the repository; no pip: the wheels are unzipped
# and nnrun copied. torch, numpy, scikit-learn, pandas, matplotlib, rich, safetensors, pyyaml and
# joblib must be there already. On a machine with internet and no wheels, install instead with
# `python3 -m pip install '.[parallel]'` into the environment, then run this script.
#
# All runs go to a scratch folder ($GPU_CHECK_WORK, default /tmp/gpu_check_work), never to the
# repository's outputs/. Every command has a timeout; the whole check keeps to $GPU_CHECK_BUDGET
# seconds (default 390): a step that cannot start in time is skipped, saying so.
#
# GPU_CHECK_DEVICE=cpu runs every step on the CPU (trainer.device=cpu, shorter runs) to test this
# script where there is no GPU; the CUDA-only step (out of memory) is skipped, seeds_on_gpus.sh gets
# a stand-in nvidia-smi, and the DDP step runs two gloo processes. Without that variable and
# without CUDA, the steps are skipped and the setup row fails.
#
# Order: 1, then 3 (torch.compile: a minute or two of CPU-bound compiling) in the background while
# the others run one after another, cheap and important first; step 8 (timings) waits for step 3
# to end, so that compiling does not skew its numbers, unless time runs short.

set -u -o pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

DRY=false
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run|-n) DRY=true ;;
        --only) shift; ONLY="${1:-}" ;;
        --only=*) ONLY="${1#--only=}" ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(pwd)
if [ -f "$HERE/../pyproject.toml" ] && [ -d "$HERE/../nnrun" ]; then REPO=$(cd "$HERE/.." && pwd); fi
OUT=${OUT:-./gpu_check_out}
case "$OUT" in /*) ;; *) OUT="$PWD/${OUT#./}" ;; esac
W=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
SITE=${NNRUN_SITE:-/tmp/nnrun-site}
WHEELS=${NNRUN_WHEELS:-$REPO/.whl}
MODE=${GPU_CHECK_DEVICE:-cuda}
BUDGET=${GPU_CHECK_BUDGET:-390}
MIN_START=15                     # seconds a step needs at least, else it is skipped
case "$MODE" in cuda|cpu) ;; *) echo "gpu_check.sh: GPU_CHECK_DEVICE=$MODE: use cuda or cpu" >&2; exit 2 ;; esac

# Steps: name, timeout (seconds, all of its commands together); run order (3 in the background)
declare -A NAME TIME
NAME[1]="precision: mlp/cnn/lstm x 32/bf16/16, one --multirun";          TIME[1]=150
NAME[2]="fp16 stop (SIGTERM) and resume, scaler in last.pt";             TIME[2]=120
NAME[3]="torch.compile: recompiles, saved keys";                          TIME[3]=210
NAME[4]="trainer.deterministic=true: two runs bit-identical";            TIME[4]=90
NAME[5]="NaN loss, and weights that overflow, with step checkpoints";      TIME[5]=100
NAME[6]="CUDA out of memory -> status oom";                               TIME[6]=60
NAME[7]="sync audit (set_sync_debug_mode warn)";                          TIME[7]=90
NAME[8]="benchmarks/epoch_speed.py, plain and --augment";                 TIME[8]=150
NAME[9]="scripts/seeds_on_gpus.sh, seeds 1 2";                            TIME[9]=90
NAME[10]="parallel sweep (hydra/launcher=parallel, n_jobs=2)";            TIME[10]=120
NAME[11]="torchrun DDP, 2 processes";                                     TIME[11]=120
BACKGROUND=3
ORDER=(1 2 5 6 4 7 9 10 11 8)        # the foreground steps, one after another
SHOWN=(1 3 2 5 6 4 7 9 10 11 8)      # the order of the plan and of the table

selected() { [ -z "$ONLY" ] || [[ ",${ONLY// /,}," == *",$1,"* ]]; }

# Per-mode settings: what differs on the CPU stand-in run is here and only here.
if [ "$MODE" = cpu ]; then
    DEV=cpu; DEVOV=(trainer.device=cpu); AUTOOV=(trainer.device=cpu)
    EP=2; EP2=20; EP3=2
    LIM=(trainer.limit_batches=6); LIM2=(trainer.limit_batches=10)
    MINACC=()
    SPEED=(--device cpu --models mlp --epochs 1 --repeats 1 --batches 3 --startup-repeats 0)
    SEEDS_OV="trainer.epochs=$EP trainer.plots=false trainer.device=cpu trainer.limit_batches=6"
else
    DEV=cuda; DEVOV=(trainer.device=cuda); AUTOOV=()      # AUTOOV: steps that keep trainer.device=auto
    EP=3; EP2=30; EP3=3
    LIM=(); LIM2=()
    MINACC=(--min-acc 0.3)
    SPEED=(--device cuda --epochs 3 --repeats 1 --batches 100 --startup-repeats 0)
    SEEDS_OV="trainer.epochs=$EP trainer.plots=false"
fi

LOG="$OUT/gpu_check.log"
MD="$OUT/gpu_check.md"
JSONL="$OUT/gpu_check_results.jsonl"
TARBALL="$OUT/gpu_check_runs.tar.gz"
DEADLINE=$(( SECONDS + BUDGET ))

q() {             # words as a shell would need them: plain where safe, else in single quotes
    local word out="" sq="'\\''"
    for word in "$@"; do
        if [[ -n "$word" && "$word" =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then out+=" $word"
        else out+=" '${word//\'/$sq}'"; fi
    done
    printf '%s' "${out# }"
}
say() { echo "$*"; $DRY || echo "$*" >> "$LOG"; }
one_line() { tr '\n\t|' '   ' | sed 's/  */ /g; s/^ //; s/ $//' | cut -c1-"${1:-400}"; }

# ----------------------------------------------------------------------------- results and files
# $W/res/<id>: status, seconds, reason (one line each); $W/det/<id>.md: a step's tables.

set_result() {   # id status seconds reason
    mkdir -p "$W/res"
    printf '%s\n%s\n%s\n' "$2" "$3" "$(printf '%s' "$4" | one_line 600)" > "$W/res/.$1.$BASHPID"
    mv -f "$W/res/.$1.$BASHPID" "$W/res/$1"
}

joined() { local out="" part; for part in "$@"; do out+="${out:+; }$part"; done; printf '%s' "$out"; }
json_str() { local s=$1; s=${s//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }

render() {       # gpu_check.md from $W/res and $W/det, atomically
    local tmp="$OUT/.gpu_check.md.$BASHPID" id st secs reason
    {
        cat "$W/header.md" 2>/dev/null
        echo
        echo "| # | step | result | seconds | details |"
        echo "|---:|---|---|---:|---|"
        for id in 0 "${SHOWN[@]}"; do
            [ -f "$W/res/$id" ] || continue
            { read -r st; read -r secs; read -r reason; } < "$W/res/$id"
            echo "| $id | ${NAME[$id]:-setup} | **$st** | $secs | ${reason//|/\\|} |"
        done
        echo
        for id in 1 2 3 4 5 6 7 8 9 10 11; do
            [ -s "$W/det/$id.md" ] || continue
            echo "### $id. ${NAME[$id]}"
            echo
            cat "$W/det/$id.md"
            echo
        done
    } > "$tmp" && mv -f "$tmp" "$MD"
}

pack() {         # the run folders' small files, without weights or checkpoints
    tar -czf "$TARBALL.tmp" -C "$W" --exclude='*.pt' --exclude='*.safetensors' --exclude='*.png' \
        --exclude='*.sha256' --exclude='./fakebin' --exclude='./src' --exclude='./tmp' --exclude='*-ubyte' \
        --exclude='__pycache__' . 2>/dev/null
    mv -f "$TARBALL.tmp" "$TARBALL" 2>/dev/null
}

# ----------------------------------------------------------------------------- step primitives
# Inside a step (a subshell): x runs one command with a timeout (or prints it, --dry-run), its
# output in $W/logs/<step>-<tag>.log, then appended to the combined log; RC is its exit code.

FAILS=(); INFOS=(); SKIPPED=""
fail() { FAILS+=("$*"); say "    FAIL: $*"; }
info() { INFOS+=("$*"); say "    ok: $*"; }
skip() { SKIPPED="$*"; }
note() { $DRY && echo "    # $*"; return 0; }
go() { $DRY || cd "$1" || fail "cannot cd to $1"; }

left() { echo $(( STEP_END - SECONDS )); }

x() {            # tag timeout command...
    local tag=$1 t=$2; shift 2
    if $DRY; then echo "    \$ $(q "$@")    # timeout ${t}s"; RC=0; return 0; fi
    local l; l=$(left); [ "$l" -lt "$t" ] && t=$l
    LF="$W/logs/$STEP-$tag.log"
    if [ "$t" -lt 3 ]; then RC=124; echo "no time left in this step" > "$LF"; return 0; fi
    echo "\$ $(q "$@")    # timeout ${t}s, in $(pwd)" > "$LF"
    local start=$SECONDS
    timeout -k 10 "$t" "$@" >> "$LF" 2>&1 < /dev/null &
    local pid=$!
    echo "$pid" >> "$W/pids"
    wait "$pid"; RC=$?
    echo "[exit $RC after $(( SECONDS - start ))s]" >> "$LF"
    { echo "----- step $STEP/$tag"; cat "$LF"; } >> "$STEP_LOG"
    [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ] && fail "$tag: timed out after ${t}s"
    return 0
}

bgx() {          # like x, in the background: BGPID, BGLF
    local tag=$1 t=$2; shift 2
    if $DRY; then echo "    \$ $(q "$@") &    # timeout ${t}s, in the background"; BGPID=0; return 0; fi
    local l; l=$(left); [ "$l" -lt "$t" ] && t=$l
    BGLF="$W/logs/$STEP-$tag.log"
    echo "\$ $(q "$@") &    # timeout ${t}s, in $(pwd)" > "$BGLF"
    timeout -k 10 "$t" "$@" >> "$BGLF" 2>&1 < /dev/null &
    BGPID=$!
    echo "$BGPID" >> "$W/pids"
}

bgwait() {       # pid log tag: wait for a bgx command; RC
    if $DRY; then RC=0; return 0; fi
    wait "$1"; RC=$?
    echo "[exit $RC]" >> "$2"
    { echo "----- step $STEP/$3"; cat "$2"; } >> "$STEP_LOG"
    [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ] && fail "$3: timed out"
    return 0
}

last_words() {   # the last line nnrun (or Python) said about a failure, from a log
    grep -E '^(nnrun: |[A-Za-z.]*(Error|Exception): )' "$1" 2>/dev/null | tail -1 | one_line 200
}

expect_rc() {    # wanted tag [log]
    $DRY && return 0
    local log=${3:-$LF}
    if [ "$RC" -eq "$1" ]; then info "$2 exit $RC"; else fail "$2 exit $RC, expected $1${log:+ ($(last_words "$log"))}"; fi
}

check() {        # tag gpu_table.py arguments...: its last line is PASS/FAIL <reason>
    local tag=$1; shift
    if $DRY; then echo "    check: python3 $(q "$HERE/gpu_table.py" "$@")"; return 0; fi
    local out verdict t=60 l; l=$(left); [ "$l" -lt "$t" ] && t=$((l > 5 ? l : 5))
    out=$(timeout -k 5 "$t" python3 "$HERE/gpu_table.py" "$@" 2>&1)
    { echo "----- step $STEP/check $tag: gpu_table.py $*"; echo "$out"; } >> "$STEP_LOG"
    verdict=$(printf '%s\n' "$out" | grep -E '^(PASS|FAIL) ' | tail -1)
    case "$verdict" in
        PASS*) info "$tag: ${verdict#PASS }" ;;
        FAIL*) fail "$tag: ${verdict#FAIL }" ;;
        *) fail "$tag: check gave no verdict ($(printf '%s\n' "$out" | tail -1 | one_line 150))" ;;
    esac
}

grep_log() {     # tag pattern log: info when found, fail when not
    $DRY && { echo "    check: grep -E $(q "$2") <$1 log>"; return 0; }
    if grep -qE "$2" "$3" 2>/dev/null; then info "$1: '$2' in the log"; else fail "$1: no '$2' in the log"; fi
}

wait_for_file() {   # file seconds pid: until the file exists, the process ends, or time is up
    local end=$(( SECONDS + $2 ))
    while [ ! -e "$1" ] && [ "$SECONDS" -lt "$end" ] && kill -0 "$3" 2>/dev/null; do sleep 0.2; done
    [ -e "$1" ]
}

# ----------------------------------------------------------------------------- the steps

step_1() {
    local dir="$W/s1/sweep"
    go "$W/s1"
    x sweep 150 nnrun --multirun model=mlp,cnn,lstm trainer.precision=32,bf16,16 trainer.epochs=$EP \
        trainer.plots=false "${DEVOV[@]}" ${LIM[@]+"${LIM[@]}"} hydra.sweep.dir="$dir"
    expect_rc 0 sweep
    check jobs sweep "$dir" --device $DEV --jobs 9 ${MINACC[@]+"${MINACC[@]}"} --md "$W/det/1.md"
}

step_2() {
    local run="$W/s2/run"
    local ov=(trainer.precision=16 '~callbacks.early_stopping' trainer.checkpoint_every_n_steps=2
              "trainer.epochs=$EP2" trainer.plots=false "${DEVOV[@]}" ${LIM2[@]+"${LIM2[@]}"})
    go "$W/s2"
    bgx first 90 nnrun "${ov[@]}" hydra.run.dir="$run"
    note "wait (<= 60 s) for $run/checkpoints/last.pt, 1 s more, then: kill -TERM <pid>; expect exit 143"
    if ! $DRY; then
        if wait_for_file "$run/checkpoints/last.pt" 60 "$BGPID"; then
            sleep 1
            kill -TERM "$BGPID" 2>/dev/null
        else
            fail "no checkpoints/last.pt within 60 s"
            kill -TERM "$BGPID" 2>/dev/null
        fi
        bgwait "$BGPID" "$BGLF" first
        LF=$BGLF
    fi
    expect_rc 143 "first run, SIGTERM:"
    check stopped run "$run" --status interrupted
    check scaler scaler "$run/checkpoints/last.pt"
    x resume 90 nnrun "${ov[@]}" trainer.resume="$run"
    expect_rc 0 resume
    grep_log resume "resuming" "${LF:-}"
    check resumed run "$run" --status completed --device $DEV
    check scaler-after scaler "$run/checkpoints/last.pt"
}

step_3() {
    local run="$W/s3/run"
    go "$W/s3"
    x compile 210 env TORCH_LOGS=recompiles nnrun model=cnn trainer.compile=true trainer.epochs=$EP3 \
        trainer.plots=false "${DEVOV[@]}" ${LIM[@]+"${LIM[@]}"} hydra.run.dir="$run"
    expect_rc 0 compile
    check run run "$run" --status completed --device $DEV
    check recompiles recompiles "${LF:-<compile log>}" --epochs $EP3
    check keys keys "$run/model.safetensors"
}

step_4() {
    local ov=(model=cnn trainer.deterministic=true trainer.seed=7 "trainer.epochs=$EP" trainer.plots=false
              "${DEVOV[@]}" ${LIM[@]+"${LIM[@]}"})
    go "$W/s4"
    if [ "$MODE" = cpu ]; then        # one after the other on a small CPU
        x a 90 nnrun "${ov[@]}" hydra.run.dir="$W/s4/a"; expect_rc 0 "run a"
        x b 90 nnrun "${ov[@]}" hydra.run.dir="$W/s4/b"; expect_rc 0 "run b"
    else                              # side by side on the GPU
        bgx a 90 nnrun "${ov[@]}" hydra.run.dir="$W/s4/a"; local pa=$BGPID la=${BGLF:-}
        bgx b 90 nnrun "${ov[@]}" hydra.run.dir="$W/s4/b"; local pb=$BGPID lb=${BGLF:-}
        bgwait "$pa" "$la" a; expect_rc 0 "run a" "$la"
        bgwait "$pb" "$lb" b; expect_rc 0 "run b" "$lb"
    fi
    check a run "$W/s4/a" --status completed --device $DEV
    check b run "$W/s4/b" --status completed --device $DEV
    check same same "$W/s4/a/model.safetensors" "$W/s4/b/model.safetensors"
}

step_5() {
    local run="$W/s5/run"
    go "$W/s5"
    x nan 60 nnrun optimizer=sgd optimizer.lr=1e30 trainer.checkpoint_every_n_steps=1 trainer.epochs=$EP \
        trainer.plots=false "${DEVOV[@]}" hydra.run.dir="$run"
    expect_rc 1 nan
    check status run "$run" --status nan_loss
    check checkpoints finite "$run/checkpoints"
    # a finite loss whose update overflows float32: the weights go infinite with no NaN loss yet
    local blow="$W/s5/blow"
    x blow 60 nnrun optimizer=sgd optimizer.lr=3e38 optimizer.weight_decay=3e38 trainer.checkpoint_every_n_steps=1 \
        trainer.epochs=$EP trainer.plots=false "${DEVOV[@]}" hydra.run.dir="$blow"
    expect_rc 1 blow
    check blow-status run "$blow" --status nan_loss
    check blow-checkpoints finite "$blow/checkpoints"
}

step_6() {
    if [ "$MODE" = cpu ]; then skip "CUDA out of memory needs a GPU (GPU_CHECK_DEVICE=cpu)"; return 0; fi
    local run="$W/s6/run"
    go "$W/s6"
    x oom 60 python3 "$HERE/gpu_audit.py" oom --fraction 0.002 -- 'model.hidden=[16384,16384]' trainer.epochs=1 \
        trainer.plots=false trainer.device=cuda hydra.run.dir="$run"
    expect_rc 1 oom
    check status run "$run" --status oom
    grep_log message "out of GPU memory" "${LF:-}"
}

step_7() {
    go "$W/s7"
    local m pids=() logs=()
    for m in mlp cnn; do
        local cmd=(python3 "$HERE/gpu_audit.py" sync --json "$W/s7/$m.json" --label "$m" -- "model=$m" trainer.epochs=2
                   trainer.limit_batches=20 trainer.plots=false "${DEVOV[@]}" hydra.run.dir="$W/s7/$m")
        if [ "$MODE" = cpu ]; then x "$m" 90 "${cmd[@]}"; expect_rc 0 "$m"
        else bgx "$m" 90 "${cmd[@]}"; pids+=("$BGPID"); logs+=("${BGLF:-}"); fi
    done
    if [ "$MODE" != cpu ]; then
        bgwait "${pids[0]}" "${logs[0]}" mlp; expect_rc 0 mlp "${logs[0]}"
        bgwait "${pids[1]}" "${logs[1]}" cnn; expect_rc 0 cnn "${logs[1]}"
    fi
    check audit audit "$W/s7/mlp.json" "$W/s7/cnn.json" --md "$W/det/7.md"
}

step_8() {
    go "$W/s8"
    x plain 75 python3 "$REPO/benchmarks/epoch_speed.py" "${SPEED[@]}"
    expect_rc 0 plain
    check plain pipes "${LF:-<plain log>}" --md "$W/s8/plain.md"
    x augment 75 python3 "$REPO/benchmarks/epoch_speed.py" "${SPEED[@]}" --augment
    expect_rc 0 augment
    check augment pipes "${LF:-<augment log>}" --md "$W/s8/augment.md"
    $DRY || { echo "plain:"; cat "$W/s8/plain.md"; echo; echo "--augment:"; cat "$W/s8/augment.md"; } \
        > "$W/det/8.md" 2>/dev/null
}

step_9() {
    go "$W/s9"
    if [ "$MODE" = cpu ]; then
        note "GPU_CHECK_DEVICE=cpu: a stand-in nvidia-smi that lists one GPU goes first on PATH"
        PATH="$W/fakebin:$PATH"
    fi
    x seeds 90 bash "$REPO/scripts/seeds_on_gpus.sh" "$SEEDS_OV" 1 2
    expect_rc 0 seeds
    check runs runs "$W/s9/outputs" --count 2 --status completed --device $DEV --relative "$W/s9" --md "$W/det/9.md"
}

step_10() {
    local dir="$W/s10/sweep"
    go "$W/s10"
    x sweep 120 nnrun --multirun hydra/launcher=parallel hydra.launcher.n_jobs=2 model=mlp,cnn trainer.epochs=$EP \
        trainer.plots=false ${AUTOOV[@]+"${AUTOOV[@]}"} ${LIM[@]+"${LIM[@]}"} hydra.sweep.dir="$dir"
    expect_rc 0 sweep
    check jobs sweep "$dir" --device $DEV --jobs 2 --md "$W/det/10.md"
}

step_11() {
    if [ "$MODE" != cpu ] && ! $DRY; then
        local gpus
        gpus=$(timeout 30 nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU')
        [ "${gpus:-0}" -ge 2 ] || { skip "$gpus GPU(s) in nvidia-smi --list-gpus; DDP needs 2 or more"; return 0; }
    fi
    note "only when nvidia-smi --list-gpus shows 2 or more GPUs (GPU_CHECK_DEVICE=cpu: gloo on the CPU)"
    go "$W/s11"
    x ddp 120 python3 -m torch.distributed.run --standalone --nproc_per_node=2 -m nnrun trainer.strategy=ddp \
        trainer.epochs=$EP trainer.plots=false data.batch_size=32 ${AUTOOV[@]+"${AUTOOV[@]}"} \
        ${LIM[@]+"${LIM[@]}"} hydra.run.dir="$W/s11/run"
    expect_rc 0 ddp
    check run run "$W/s11/run" --status completed --device $DEV
}

# ----------------------------------------------------------------------------- running a step

# run_step id: in a subshell (an error in a step fails that step, not the script); the result in
# $W/res/<id>. Skips when CUDA is missing or the time budget cannot cover MIN_START seconds.
run_step() {
    local id=$1 start=$SECONDS
    if [ "$id" != 0 ] && [ "$MODE" = cuda ] && [ "${HAVE_CUDA:-no}" != yes ]; then
        set_result "$id" SKIP 0 "no CUDA: ${CUDA_WHY:-torch.cuda.is_available() is false}"; return
    fi
    if [ "${SETUP_OK:-no}" != yes ]; then set_result "$id" SKIP 0 "setup failed: nnrun is not runnable"; return; fi
    local budget=$(( DEADLINE - SECONDS - 3 )) t=${TIME[$id]}
    [ "$budget" -lt "$t" ] && t=$budget
    if [ "$t" -lt "$MIN_START" ]; then
        set_result "$id" SKIP 0 "out of time: ${budget}s of the ${BUDGET}s budget left"; return
    fi
    say ""
    say "===== step $id: ${NAME[$id]} (up to ${t}s, at +${SECONDS}s)"
    set_result "$id" RUNNING - "started at +${SECONDS}s, up to ${t}s"
    render
    (
        STEP=$id STEP_END=$(( SECONDS + t )) STEP_LOG="$W/logs/$id-all.log"
        mkdir -p "$W/s$id"
        : > "$STEP_LOG"
        set +e
        "step_$id"
        secs=$(( SECONDS - start ))
        if [ -n "$SKIPPED" ]; then set_result "$id" SKIP "$secs" "$SKIPPED"
        elif [ "${#FAILS[@]}" -gt 0 ]; then set_result "$id" FAIL "$secs" "$(joined "${FAILS[@]}")"
        else set_result "$id" PASS "$secs" "$(joined "${INFOS[@]}")"; fi
    ) &
    local sub=$!
    echo "$sub" >> "$W/shpids"       # waited for in the background, so that a signal is handled at once
    wait "$sub"
    local code=$?
    [ "$code" -eq 0 ] || set_result "$id" FAIL $(( SECONDS - start )) "the step's script stopped (exit $code); see gpu_check.log"
}

collect() {      # the result of a step that ran: into the log, the JSON lines, the tarball
    local id=$1 st secs reason
    [ -f "$W/res/$id" ] || return 0
    { read -r st; read -r secs; read -r reason; } < "$W/res/$id"
    [ -f "$W/logs/$id-all.log" ] && cat "$W/logs/$id-all.log" >> "$LOG"
    say "----- step $id: $st (${secs}s) $reason"
    printf '{"step": %s, "name": %s, "result": %s, "seconds": %s, "reason": %s}\n' "$id" \
        "$(json_str "${NAME[$id]:-setup}")" "$(json_str "$st")" "$( [ "$secs" = - ] && echo null || echo "$secs")" \
        "$(json_str "$reason")" >> "$JSONL"
    render
    pack
}

# ----------------------------------------------------------------------------- dry run: the plan

if $DRY; then
    echo "gpu_check.sh plan (--dry-run): mode $MODE, budget ${BUDGET}s, scratch $W, results in $OUT"
    echo
    echo "0. setup"
    echo "    \$ nvidia-smi; python3 -c 'import torch; ...'    # versions, CUDA, GPU count"
    echo "    when (cd $W && python3 -c 'import hydra, omegaconf, nnrun.conf, nnrun.pipeline') fails or nnrun is not on PATH:"
    echo "    \$ $(q python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE") $(q "$WHEELS")/*.whl"
    echo "    \$ export PYTHONPATH=$SITE\${PYTHONPATH:+:\$PYTHONPATH} PATH=$SITE/bin:\$PATH"
    echo "    no nnrun-*.whl there: \$ $(q python3 -m pip install -q --no-deps --no-build-isolation --target "$SITE" "$W/src")    # a copy of $REPO"
    echo "    no pip: each wheel unzipped into $SITE, nnrun/ and conf/ copied, bin/nnrun and bin/nnrun-report written"
    for id in "${SHOWN[@]}"; do
        selected "$id" || continue
        echo
        bg=""; [ "$id" = "$BACKGROUND" ] && bg=", in the background, started after step 1"
        echo "$id. ${NAME[$id]}    (timeout ${TIME[$id]}s$bg)"
        (
            STEP=$id STEP_END=$(( SECONDS + TIME[$id] )) STEP_LOG=/dev/null
            set +e
            "step_$id"
            [ -n "$SKIPPED" ] && echo "    SKIP: $SKIPPED"
            true
        )
    done
    echo
    echo "then: gpu_check.md, gpu_check.log, gpu_check_results.jsonl, gpu_check_runs.tar.gz in $OUT; exit 1 if any step failed"
    exit 0
fi

# ----------------------------------------------------------------------------- setup

mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create $OUT" >&2; exit 2; }
if [ -e "$W" ] && [ ! -e "$W/.gpu_check_work" ] && [ -n "$(ls -A "$W" 2>/dev/null)" ]; then
    W=$(mktemp -d /tmp/gpu_check_work.XXXXXX)       # never empty a folder that is not ours
elif [ -e "$W/.gpu_check_work" ]; then
    rm -rf "$W"
fi
mkdir -p "$W"/{logs,res,det,tmp} && touch "$W/.gpu_check_work" "$W/pids" "$W/shpids"
rm -f "$MD" "$LOG" "$JSONL" "$TARBALL"
cd "$W" || exit 2                           # python3 -c in the repository would import its nnrun/ folder
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
unset NNRUN_DEBUG

on_signal() {
    trap - TERM INT HUP
    say ""
    say "gpu_check.sh: stopped by a signal at +${SECONDS}s; results so far are kept"
    local pid id
    while read -r pid; do kill -TERM "$pid" 2>/dev/null; done < "$W/shpids"    # the steps' shells first
    while read -r pid; do kill -TERM "$pid" 2>/dev/null; done < "$W/pids"      # then their commands
    for id in 0 "${SHOWN[@]}"; do
        if [ -f "$W/res/$id" ] && [ "$(head -1 "$W/res/$id")" = RUNNING ]; then
            set_result "$id" FAIL - "killed: the check was stopped by a signal at +${SECONDS}s"
            [ -f "$W/logs/$id-all.log" ] && cat "$W/logs/$id-all.log" >> "$LOG"
            cat "$W"/logs/"$id"-*.log >> "$LOG" 2>/dev/null
        fi
    done
    render; pack
    exit 143
}
trap on_signal TERM INT HUP

{
    echo "# nnrun GPU check"
    echo
    echo "- started $(date -u '+%Y-%m-%d %H:%M:%S UTC') on ${HOSTNAME:-$(uname -n)}, mode **$MODE**, budget ${BUDGET}s, scratch $W"
    echo "- repository $REPO$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null | sed 's/^/ at commit /')"
    echo "- run order: ${ORDER[*]}; step $BACKGROUND in the background from after step 1$( [ -n "$ONLY" ] && echo "; --only $ONLY")"
} > "$W/header.md"
render

say "gpu_check.sh: mode $MODE, budget ${BUDGET}s, scratch $W, results in $OUT"
STEP=0 STEP_END=$(( SECONDS + 200 )) STEP_LOG="$W/logs/0-all.log"
: > "$STEP_LOG"
setup_fail=()
set_result 0 RUNNING - "setting up"

x nvidia-smi 30 nvidia-smi
GPU_LINE=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -4 | one_line 300)
GPUS=$(timeout 30 nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU')

nnrun_ready() { (cd "$W" && python3 -c 'import hydra, omegaconf, nnrun.conf, nnrun.pipeline') >/dev/null 2>&1 \
                && command -v nnrun >/dev/null && command -v nnrun-report >/dev/null; }

write_bin() {    # name module:function: a console script, as pip would write it
    mkdir -p "$SITE/bin"
    printf '#!%s\nimport sys\nfrom %s import %s\nsys.exit(%s())\n' "$(command -v python3)" "${2%%:*}" "${2##*:}" \
        "${2##*:}" > "$SITE/bin/$1"
    chmod +x "$SITE/bin/$1"
}

HOW="already installed"
if ! nnrun_ready; then
    shopt -s nullglob
    whls=("$WHEELS"/*.whl)
    nnrun_whl=("$WHEELS"/nnrun-*.whl)
    shopt -u nullglob
    case "$SITE" in /tmp/*|*nnrun*) rm -rf "$SITE" ;; esac
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
    if [ "${#whls[@]}" -gt 0 ]; then
        x pip-wheels 120 python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${whls[@]}"
        HOW="${#whls[@]} wheels from $WHEELS into $SITE"
        if [ "$RC" -ne 0 ]; then          # no pip: a wheel is a zip file
            for w in "${whls[@]}"; do x unzip 60 python3 -m zipfile -e "$w" "$SITE"; done
            HOW="${#whls[@]} wheels unzipped into $SITE (pip failed)"
        fi
    else
        HOW="no wheels in $WHEELS"
    fi
    if ! (cd "$W" && python3 -c 'import nnrun.conf, nnrun.pipeline') >/dev/null 2>&1 && [ "${#nnrun_whl[@]}" -eq 0 ]; then
        mkdir -p "$W/src" && cp -r "$REPO/nnrun" "$REPO/conf" "$REPO/pyproject.toml" "$REPO/README.md" "$W/src/"
        x pip-repo 120 python3 -m pip install -q --no-deps --no-build-isolation --target "$SITE" "$W/src"
        HOW="$HOW; nnrun from the repository (pip --target)"
        if ! (cd "$W" && python3 -c 'import nnrun.conf') >/dev/null 2>&1; then
            rm -rf "$SITE/nnrun"; cp -r "$REPO/nnrun" "$SITE/nnrun"; cp -r "$REPO/conf" "$SITE/nnrun/conf"
            HOW="$HOW; nnrun copied from the repository"
        fi
    fi
    for pair in nnrun=nnrun.__main__:main nnrun-report=nnrun.report.results:main; do
        [ -x "$SITE/bin/${pair%%=*}" ] || write_bin "${pair%%=*}" "${pair#*=}"
    done
fi
x versions 120 python3 -c '
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda_available", torch.cuda.is_available(), "device_count", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print("device", i, p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}")
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:
    print("triton missing:", type(exc).__name__)
import hydra, omegaconf, nnrun
print("hydra", hydra.__version__, "omegaconf", omegaconf.__version__, "nnrun", nnrun.__file__)
'
VERSIONS=$(grep -E '^(python|torch|cuda_available|device|triton|hydra) ' "$LF" | one_line 600)
CC_LINE=$(command -v gcc || command -v cc || echo "none (torch.compile on CUDA needs one for Triton)")
grep -q '^cuda_available True' "$LF" && HAVE_CUDA=yes || HAVE_CUDA=no
(cd "$W" && timeout 60 python3 -c 'import hydra_plugins.hydra_joblib_launcher') >/dev/null 2>&1 \
    || setup_fail+=("hydra_joblib_launcher is not importable (step 10 will fail)")
if nnrun_ready && (cd "$W" && timeout 120 nnrun --help >/dev/null 2>&1); then
    SETUP_OK=yes
else
    SETUP_OK=no; setup_fail+=("nnrun is not runnable after setup ($HOW)")
fi
if [ "$MODE" = cuda ] && [ "$HAVE_CUDA" != yes ]; then
    CUDA_WHY="torch.cuda.is_available() is false"
    setup_fail+=("$CUDA_WHY: the CUDA steps are skipped (GPU_CHECK_DEVICE=cpu runs them on the CPU)")
fi
# the nnrun that runs against the repository's files: a stale wheel would check old code
NNRUN_DIR=$(cd "$W" && timeout 60 python3 -c 'import nnrun, os; print(os.path.dirname(nnrun.__file__))' 2>/dev/null)
SAME="nnrun in use: ${NNRUN_DIR:-not importable}"
if [ -n "$NNRUN_DIR" ] && [ -d "$REPO/nnrun" ] && [ "$NNRUN_DIR" != "$REPO/nnrun" ]; then
    differ=$( { diff -rq -x __pycache__ -x conf "$REPO/nnrun" "$NNRUN_DIR";
                [ -d "$NNRUN_DIR/conf" ] && diff -rq -x __pycache__ "$REPO/conf" "$NNRUN_DIR/conf"; } 2>&1 | wc -l)
    SAME="$SAME; $( [ "$differ" -eq 0 ] && echo "same files as $REPO" || echo "**$differ files differ from $REPO** (a stale wheel?)")"
    [ "$differ" -eq 0 ] || { diff -rq -x __pycache__ -x conf "$REPO/nnrun" "$NNRUN_DIR" >> "$LOG" 2>&1; }
fi
if [ "$MODE" = cpu ]; then                  # a stand-in for scripts/seeds_on_gpus.sh
    mkdir -p "$W/fakebin"
    printf '#!/bin/sh\necho "GPU 0: CPU stand-in (UUID: GPU-00000000-0000-0000-0000-000000000000)"\n' > "$W/fakebin/nvidia-smi"
    chmod +x "$W/fakebin/nvidia-smi"
fi
{
    echo "- GPU: ${GPU_LINE:-none (nvidia-smi gave nothing)}; nvidia-smi --list-gpus: ${GPUS:-0}"
    echo "- $VERSIONS"
    echo "- nnrun: $HOW; PATH nnrun = $(command -v nnrun || echo missing); C compiler: $CC_LINE"
    echo "- $SAME"
} >> "$W/header.md"
say "GPU: ${GPU_LINE:-none}; $VERSIONS"
if [ "${#setup_fail[@]}" -gt 0 ]; then
    set_result 0 FAIL $SECONDS "$(joined "${setup_fail[@]}")"
else
    set_result 0 PASS $SECONDS "$HOW; CUDA $HAVE_CUDA; ${SAME#nnrun in use: }"
fi
collect 0

# ----------------------------------------------------------------------------- the steps, in order

BG_PID=""
start_background() {
    selected "$BACKGROUND" && [ -z "$BG_PID" ] || return 0
    ( LOG="$W/logs/$BACKGROUND-bg.log"; run_step "$BACKGROUND" ) &
    BG_PID=$!
    echo "$BG_PID" >> "$W/shpids"
    sleep 1
}
selected 1 || start_background
for id in "${ORDER[@]}"; do
    [ "$id" = 1 ] || start_background      # after step 1, whose samples/s should not share the CPUs with it
    selected "$id" || continue
    if [ "$id" = 8 ] && [ -n "$BG_PID" ] && kill -0 "$BG_PID" 2>/dev/null; then
        # timings on a machine that is compiling are not timings: wait for step 3 while time allows
        say "waiting for step $BACKGROUND (background) before step 8"
        while kill -0 "$BG_PID" 2>/dev/null && [ $(( DEADLINE - SECONDS )) -gt $(( TIME[8] - 30 )) ]; do sleep 1; done
    fi
    run_step "$id"
    collect "$id"
done
if [ -n "$BG_PID" ]; then
    wait "$BG_PID"
    [ -f "$W/logs/$BACKGROUND-bg.log" ] && cat "$W/logs/$BACKGROUND-bg.log" >> "$LOG"
    collect "$BACKGROUND"
fi

failed=$(for f in "$W"/res/*; do head -1 "$f"; done | grep -c -E '^(FAIL|RUNNING)')
say ""
render; pack
say "gpu_check.sh: done in ${SECONDS}s; $failed failed; $MD:"
echo
cat "$MD"                                   # the table on stdout too, in case only that comes back
[ "$failed" -eq 0 ]
