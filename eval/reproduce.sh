#!/usr/bin/env bash
# Regenerate the committed development results in eval/results/ from the corpora in ../shared/corpora.
#
#   make eval-dev                      # everything (about 3 hours on 2 CPU cores, mostly LLM answers)
#   make eval-dev EVAL_STEPS=retrieval # retrieval runs only (about 40 minutes)
#
# Each corpus gets its own embedded index under $EVAL_WORK/<corpus>/qdrant (re-ingest is idempotent: an
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
    QDRANT_PATH="$WORK/$corpus/qdrant" "$PY" -m ingest "$@" --collection "$corpus" --quiet || [ $? -eq 1 ]
}

run() {  # run CORPUS NAME ARGS...: one eval run, its summary and reports copied to eval/results/NAME
    local corpus=$1 name=$2
    shift 2
    echo "== eval $name" >&2
    QDRANT_PATH="$WORK/$corpus/qdrant" "$PY" -m eval run "$@" --collection "$corpus" \
        --out "$WORK/runs/$name" --no-progress
    mkdir -p "$RESULTS/$name"
    cp "$WORK/runs/$name/summary.json" "$WORK/runs/$name/report.md" "$WORK/runs/$name/report.html" "$RESULTS/$name/"
}

"$PY" -m eval tatqa "$SHARED/tatqa/tatqa_dataset_dev.json" --out "$WORK/tatqa"
index sec10q "$SHARED/sec-10q/documents"
index adgm "$SHARED/adgm/documents"
index tatqa "$WORK/tatqa/documents"

SEC10Q="$SHARED/sec-10q/questions.jsonl"
OBLIQA="$SHARED/adgm/obliqa_dev.jsonl"
TATQA="$WORK/tatqa/questions.jsonl"

if [[ " $STEPS " == *" retrieval "* ]]; then
    for retriever in product dense bm25; do
        run sec10q "sec10q-$retriever" "$SEC10Q" --retriever "$retriever"
        run adgm "adgm-obliqa-dev-$retriever" "$OBLIQA" --retriever "$retriever"
    done
    run tatqa "tatqa-dev-retrieval-product" "$TATQA"
fi

if [[ " $STEPS " == *" answers "* ]]; then
    run tatqa "tatqa-dev-answers" "$TATQA" --answers --context evidence --sample "$TATQA_SAMPLE" --seed "$SEED"
    run sec10q "sec10q-unanswerable" eval/sets/sec10q-unanswerable.jsonl --answers
    run adgm "adgm-unanswerable" eval/sets/adgm-unanswerable.jsonl --answers
    run sec10q "sec10q-answers" "$SEC10Q" --answers --sample "$SEC10Q_SAMPLE" --seed "$SEED"
    run tatqa "tatqa-dev-judge" "$TATQA" --answers --context evidence --judge --sample 8 --seed 1
fi
