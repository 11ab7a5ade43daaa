#!/usr/bin/env bash
# Regenerate the committed development results in eval/results/ from the corpora in ../shared/corpora.
#
#   make eval-dev                      # everything (about 4 hours on 2 CPU cores, mostly LLM answers)
#   make eval-dev EVAL_STEPS=retrieval # retrieval runs only (about 1 hour)
#   make reranker                      # EVAL_STEPS=reranker: train the cross-encoder into data/models
#   make eval-dev EVAL_STEPS=feedback  # issue 6: the feedback simulation (about 1 hour)
#
# Each corpus gets its own embedded index (Qdrant Edge) under $EVAL_WORK/<corpus>/index (re-ingest is idempotent: an
# unchanged file with an unchanged pipeline is skipped), full runs go to $EVAL_WORK/runs/<name>/ and
# summary.json + report.md + report.html of each are copied to eval/results/<name>/.
set -euo pipefail

SHARED=${SHARED:-../shared/corpora}
WORK=${EVAL_WORK:-data/eval}
PY=${PYTHON:-.venv/bin/python}
RESULTS=${EVAL_RESULTS:-eval/results}
STEPS=${EVAL_STEPS:-retrieval answers}
TATQA_SAMPLE=${TATQA_SAMPLE:-80}     # TAT-QA answers: a fixed seeded sample (the 1.5B model needs ~40-70 s a question)
SEC10Q_SAMPLE=${SEC10Q_SAMPLE:-20}   # sec-10q answers: likewise
ADGM_SAMPLE=${ADGM_SAMPLE:-30}       # ADGM answers (held-out split): likewise
SEED=${SEED:-0}
export HF_HUB_OFFLINE=1

if [ ! -d "$SHARED" ]; then
    echo "eval-dev: corpora not found at $SHARED (set SHARED=path/to/shared/corpora)" >&2
    exit 2
fi

index() {  # index CORPUS PATH...: ingest into collection CORPUS of its own index (exit 1 = some files failed)
    local corpus=$1
    shift
    echo "== ingest $corpus" >&2
    QDRANT_PATH="$WORK/$corpus/index" "$PY" -m ingest "$@" --collection "$corpus" --quiet || [ $? -eq 1 ]
}

run() {  # run CORPUS NAME ARGS...: one eval run, its summary and reports copied to eval/results/NAME
    local corpus=$1 name=$2
    shift 2
    echo "== eval $name" >&2
    QDRANT_PATH="$WORK/$corpus/index" "$PY" -m eval run "$@" --collection "$corpus" \
        --out "$WORK/runs/$name" --no-progress
    mkdir -p "$RESULTS/$name"
    cp "$WORK/runs/$name/summary.json" "$WORK/runs/$name/report.md" "$WORK/runs/$name/report.html" "$RESULTS/$name/"
}

SEC10Q="$SHARED/sec-10q/questions.jsonl"
OBLIQA="$SHARED/adgm/obliqa_dev.jsonl"
TATQA="$WORK/tatqa/questions.jsonl"

index adgm "$SHARED/adgm/documents"
if [[ " $STEPS " == *" reranker "* ]]; then
    # The product's reranker: trained on the train split of ObliQA dev (gold-passage hash), never on the
    # questions the ADGM runs below report (--split test). ~25 min on 2 cores; see eval/rerank_train.py.
    QDRANT_PATH="$WORK/adgm/index" "$PY" -m eval train-reranker "$OBLIQA" --collection adgm \
        --limit 800 --max-length 160 --no-progress
fi
if [[ " $STEPS " != *" retrieval "* && " $STEPS " != *" answers "* && " $STEPS " != *" feedback "* ]]; then
    exit 0
fi
"$PY" -m eval tatqa "$SHARED/tatqa/tatqa_dataset_dev.json" --out "$WORK/tatqa"
index sec10q "$SHARED/sec-10q/documents"
index tatqa "$WORK/tatqa/documents"

if [[ " $STEPS " == *" retrieval "* ]]; then
    # Fusion weights, tuned on the train split (the defaults in assistant/settings.py come from this table).
    QDRANT_PATH="$WORK/adgm/index" "$PY" -m eval tune-fusion "$OBLIQA" --collection adgm --sample 400 \
        > "$RESULTS/fusion-tuning.md"
    # ADGM, held-out split: the ablation (sparse, dense, plain RRF, tuned RRF = the product's fusion).
    for retriever in bm25 dense hybrid; do
        run adgm "adgm-test-$retriever" "$OBLIQA" --split test --retriever "$retriever"
    done
    RETRIEVAL_DENSE_WEIGHT=1.0 run adgm "adgm-test-hybrid-plain" "$OBLIQA" --split test --retriever hybrid
    # The trained cross-encoder (make reranker) on a seeded sample, against the same sample without it.
    run adgm "adgm-test300-hybrid-rerank" "$OBLIQA" --split test --sample 300 --retriever hybrid --rerank
    run adgm "adgm-test300-hybrid" "$OBLIQA" --split test --sample 300 --retriever hybrid
    # Chunking ablation: short rules packed together (the pre-issue-4 chunker's behaviour).
    CHUNK_PACK_RULES=true index adgm-packed "$SHARED/adgm/documents"
    CHUNK_PACK_RULES=true run adgm-packed "adgm-test-packed-hybrid" "$OBLIQA" --split test --retriever hybrid
    for retriever in product dense bm25; do
        run sec10q "sec10q-$retriever" "$SEC10Q" --retriever "$retriever"
    done
    RETRIEVAL_INFER_FILTERS=false run sec10q "sec10q-product-no-inferred-filters" "$SEC10Q"
    run sec10q "sec10q-product-rerank" "$SEC10Q" --rerank
    run tatqa "tatqa-dev-retrieval-product" "$TATQA"
fi

if [[ " $STEPS " == *" answers "* ]]; then
    # Refusal checks (no LLM): how often each would refuse answerable (train split) and unanswerable questions.
    QDRANT_PATH="$WORK/sec10q/index" "$PY" -m eval calibrate-refusal "$SEC10Q" eval/sets/sec10q-unanswerable.jsonl \
        --collection sec10q --sample 300 --rerank > "$RESULTS/refusal-calibration-sec10q.md"
    QDRANT_PATH="$WORK/adgm/index" "$PY" -m eval calibrate-refusal "$OBLIQA" eval/sets/adgm-unanswerable.jsonl \
        --collection adgm --sample 300 --rerank > "$RESULTS/refusal-calibration-adgm.md"
    run tatqa "tatqa-dev-answers" "$TATQA" --answers --context evidence --sample "$TATQA_SAMPLE" --seed "$SEED"
    for set in sec10q-unanswerable sec10q-unanswerable-heldout; do
        run sec10q "$set" "eval/sets/$set.jsonl" --answers
    done
    for set in adgm-unanswerable adgm-unanswerable-heldout; do
        run adgm "$set" "eval/sets/$set.jsonl" --answers
    done
    # Answers to held-out ADGM questions as users get them: do they cite a gold rule (citation_hit)?
    run adgm "adgm-test30-answers" "$OBLIQA" --answers --split test --sample "$ADGM_SAMPLE" --seed "$SEED"
    run sec10q "sec10q-answers" "$SEC10Q" --answers --sample "$SEC10Q_SAMPLE" --seed "$SEED"
    run tatqa "tatqa-dev-judge" "$TATQA" --answers --context evidence --judge --sample 8 --seed 1
fi

if [[ " $STEPS " == *" feedback "* ]]; then
    # Issue 6: simulated users' feedback on ObliQA dev → feedback memory, learned reranker / embedder versions.
    # The simulation writes learned versions and re-embedded collections, so it works on its own copies of the
    # ADGM and sec-10q indexes (about 1 hour on 2 cores; the learning runs are ~11 and ~18 minutes).
    for sim in feedback-simulation feedback-simulation-diligent; do
        rm -rf "$WORK/sim/$sim" "$WORK/sim/$sim-index"
        mkdir -p "$WORK/sim/$sim-index"
        cp -r "$WORK/adgm/index/adgm" "$WORK/sec10q/index/sec10q" "$WORK/sim/$sim-index/"
        rm -f "$WORK/sim/$sim-index"/*/*.lock
    done
    QDRANT_PATH="$WORK/sim/feedback-simulation-index" "$PY" -m eval simulate "$OBLIQA" --collection adgm \
        --out "$WORK/sim/feedback-simulation" --learn 1000 --repeat 300 --unseen 300 \
        --paraphrases eval/sets/obliqa-dev-paraphrases.jsonl --thresholds 0.75,0.8,0.85,0.9 \
        --train reranker,embedder --dev "$SEC10Q@sec10q" --no-progress
    QDRANT_PATH="$WORK/sim/feedback-simulation-diligent-index" "$PY" -m eval simulate "$OBLIQA" --collection adgm \
        --out "$WORK/sim/feedback-simulation-diligent" --learn 1000 --repeat 300 --unseen 300 \
        --paraphrases eval/sets/obliqa-dev-paraphrases.jsonl --thresholds 0.85 --train "" --p-mark 1.0 \
        --p-correct 1.0 --no-progress
    for sim in feedback-simulation feedback-simulation-diligent; do
        mkdir -p "$RESULTS/$sim"
        cp "$WORK/sim/$sim/report.md" "$WORK/sim/$sim/report.json" "$RESULTS/$sim/"
    done
fi
