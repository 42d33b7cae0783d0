#!/usr/bin/env bash
# IMDB beyond the labels on one GPU: a forward and a backward word language model (trained at the
# same time), two forward and two backward classifiers fine-tuned from them (at the same time),
# scored alone and as the mean of their probabilities on the 25,000 test reviews.
#
#   SEQMODELS_DATA_DIR=/path/to/data bash benchmarks/pretraining_gpu.sh [root]
#
# Sizes and lengths come from the environment (defaults: the recipe measured in docs/results.md, 93.58%
# in 5.7 minutes on one H100): EMB, HIDDEN, LAYERS, LM_BATCH, LM_STEPS_PER_EPOCH, LM_EPOCHS, LM_LR,
# LM_DROPOUT, LM_SEED, FT_EPOCHS, FT_LR, SEEDS (the fine-tunes'); LM_EXTRA and FT_EXTRA add arguments to
# every language-model / classifier run (smaller data for a dry run). Prints each stage's wall time and
# the ensemble table (pretraining.py --ensemble).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
ROOT=${1:-benchmark_runs/gpu}
EMB=${EMB:-400} HIDDEN=${HIDDEN:-1024} LAYERS=${LAYERS:-1}
LM_BATCH=${LM_BATCH:-256} LM_STEPS_PER_EPOCH=${LM_STEPS_PER_EPOCH:-1250} LM_EPOCHS=${LM_EPOCHS:-4}
LM_LR=${LM_LR:-0.003} LM_DROPOUT=${LM_DROPOUT:-0.2} FT_EPOCHS=${FT_EPOCHS:-3} FT_LR=${FT_LR:-0.004}
SEEDS=${SEEDS:-"1 2"} LM_SEED=${LM_SEED:-0}
read -r -a LM_EXTRA <<<"${LM_EXTRA:-}"
read -r -a FT_EXTRA <<<"${FT_EXTRA:-}"
QUIET=(--trainer.enable_progress_bar false --trainer.enable_model_summary false)
SIZES=(--model.embedding_dim "$EMB" --model.backbone.init_args.hidden_size "$HIDDEN"
       --model.backbone.init_args.num_layers "$LAYERS" --model.backbone.init_args.impl native)
[ "$LAYERS" -gt 1 ] && SIZES+=(--model.backbone.init_args.dropout 0.2)
if [ -e "$ROOT/lightning_logs" ]; then
    # the runs are found by name under version_0: another run's folders would be mixed in
    echo "error: $ROOT already holds runs; give a new folder as the first argument." >&2
    exit 2
fi
mkdir -p "$ROOT"
stamp() { echo "# $(date -u +%T) $*"; }
since() { echo $(( $(date +%s) - $1 )); }
pids=()
wait_all() {  # a bare `wait` would let a failed run go unnoticed until the next stage
    for pid in "${pids[@]}"; do
        wait "$pid" || { echo "error: a run failed; its log is in $ROOT/*.log" >&2; exit 1; }
    done
    pids=()
}

start=$(date +%s)
stamp "encoding the reviews (tokenizer, language-model stream, classifier splits)"
# once, before the runs that read the caches at the same time
$PYTHON main.py fit --config configs/imdb_lm.yaml "${QUIET[@]}" "${SIZES[@]}" "${LM_EXTRA[@]}" \
    --trainer.fast_dev_run true \
    --trainer.default_root_dir "$ROOT/encode" >"$ROOT/encode.log" 2>&1
$PYTHON main.py fit --config configs/imdb_lstm_pretrained.yaml "${QUIET[@]}" "${SIZES[@]}" "${FT_EXTRA[@]}" \
    --trainer.fast_dev_run true --trainer.default_root_dir "$ROOT/encode" >>"$ROOT/encode.log" 2>&1
stamp "encoded in $(since "$start") s"

lm_start=$(date +%s)
for direction in forward backward; do
    reverse=$([ $direction = backward ] && echo true || echo false)
    $PYTHON main.py fit --config configs/imdb_lm.yaml "${QUIET[@]}" "${SIZES[@]}" --run_name "lm_$direction" \
        --seed_everything "$LM_SEED" --trainer.default_root_dir "$ROOT" --trainer.precision bf16-mixed \
        --data.reverse "$reverse" \
        --data.batch_size "$LM_BATCH" --data.samples_per_epoch $((LM_BATCH * LM_STEPS_PER_EPOCH)) \
        --trainer.max_epochs "$LM_EPOCHS" --optimizer.init_args.lr "$LM_LR" --model.dropout "$LM_DROPOUT" \
        "${LM_EXTRA[@]}" \
        >"$ROOT/lm_$direction.log" 2>&1 &
    pids+=($!)
done
wait_all
stamp "language models trained in $(since "$lm_start") s"
$PYTHON - "$ROOT" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from pretraining import language_model_summary
for direction in ("forward", "backward"):
    ppl = language_model_summary(Path(sys.argv[1]) / "lightning_logs" / f"lm_{direction}" / "version_0")["val/ppl"]
    print(f"# {direction} language model, validation perplexity by step:", ", ".join(f"{s}: {v:.1f}" for s, v in ppl))
EOF

lm() { echo "$ROOT/lightning_logs/lm_$1/version_0/checkpoints/last.ckpt"; }
ft_start=$(date +%s)
for seed in $SEEDS; do
    for direction in forward backward; do
        option=$([ $direction = backward ] && echo --model.init_backward_from || echo --model.init_from)
        $PYTHON main.py fit --config configs/imdb_lstm_pretrained.yaml "${QUIET[@]}" "${SIZES[@]}" \
            --run_name "ft_${direction}_s$seed" --seed_everything "$seed" \
            --trainer.default_root_dir "$ROOT" --trainer.precision bf16-mixed --trainer.max_epochs "$FT_EPOCHS" \
            --optimizer.init_args.lr "$FT_LR" "$option" "$(lm $direction)" "${FT_EXTRA[@]}" \
            >"$ROOT/ft_${direction}_s$seed.log" 2>&1 &
        pids+=($!)
    done
done
wait_all
stamp "classifiers fine-tuned in $(since "$ft_start") s"

score_start=$(date +%s)
$PYTHON benchmarks/pretraining.py --root "$ROOT" \
    --ensemble "$ROOT"/lightning_logs/ft_*/version_0/checkpoints/best-*.ckpt
stamp "scored in $(since "$score_start") s; $(since "$start") s in all"
