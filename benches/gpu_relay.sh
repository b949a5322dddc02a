#!/usr/bin/env bash
# A long GPU run in sittings on lent machines that start bare and keep nothing:
# each sitting resumes from the state the last one sent back, trains until its
# time is up, and sends back the run's files and its packed state (8-bit
# particles, zstd; `plasticity pack`) split into pieces the lender returns.
#
# Here:  cargo build --release --features cuda && bash benches/gpu_check.sh --stage
#        (a previous sitting's pieces, if any, lie in $RELAY: carry it)
# There: OUT=dir SECONDS_LEFT=480 bash benches/gpu_relay.sh [CONFIG RUN_DIR]
# Here:  bash benches/gpu_relay.sh --land DIR_OF_PIECES [RUN_DIR]
#        (the run's files into RUN_DIR, the pieces into $RELAY for the next sitting)
# $RELAY defaults to the run's relay/ folder, which is committed: a new session's checkout
# keeps only what git holds (an ignored relay/ at the top was lost that way after epoch 90).
set -uo pipefail
cd "$(dirname "$0")/.."
DEFAULT_RUN=results/eqprop-mnist-3h
RELAY="${RELAY:-$DEFAULT_RUN/relay}"
if [ "${1:-}" = "--land" ]; then
    RUN="${3:-$DEFAULT_RUN}"
    mkdir -p "$RUN" "$RELAY"
    rm -f "$RELAY"/state.tar.*
    cp "$2"/state.tar.* "$RELAY"/
    cat "$RELAY"/state.tar.* | tar x -C "$RUN" --exclude packed.safetensors
    ls -la "$RUN" "$RELAY"
    exit 0
fi
CONFIG="${1:-configs/eqprop-mnist-3h-gpu.toml}"
RUN="${2:-$DEFAULT_RUN}"
source benches/gpu_env.sh
P=target/gpu/plasticity
if ls "$RELAY"/state.tar.* >/dev/null 2>&1; then
    mkdir -p "$RUN"
    cat "$RELAY"/state.tar.* | tar x -C "$RUN"
    mv "$RUN/packed.safetensors" "$RUN/run_state.safetensors"
    echo "== resuming $RUN after epoch $(wc -l < "$RUN/metrics.jsonl")" | tee -a "$LOG"
    $P train --resume --out "$RUN" --time-limit "${SECONDS_LEFT:-480}" 2>&1 | tee -a "$LOG"
else
    echo "== starting $RUN from $CONFIG" | tee -a "$LOG"
    $P train --config "$CONFIG" --out "$RUN" --time-limit "${SECONDS_LEFT:-480}" 2>&1 | tee -a "$LOG"
fi
s=$(date +%s)
$P pack --run "$RUN" --out /tmp/packed.safetensors 2>&1 | tee -a "$LOG"
tar c -C "$RUN" metrics.jsonl config.toml checkpoint.safetensors learning_curve.png \
    -C /tmp packed.safetensors | split -b 15M -d - "$OUT/state.tar."
echo "packed and split in $(($(date +%s) - s)) s; $(date -u)" | tee -a "$LOG"
ls -la "$OUT" | tee -a "$LOG"
