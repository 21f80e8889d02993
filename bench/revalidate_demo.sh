#!/usr/bin/env bash
# Re-choose the post-processing of a demo run's fold 0 with the current code (the full validation again, no
# training), then predict and evaluate the demo's test cases with it: the demo's steps 5-6 on existing models.
# Usage: bash bench/revalidate_demo.sh DEMO_WORKDIR OUTPUT_FOLDER   (DEMO_WORKDIR as given to smoothseg_demo)
set -euo pipefail
run=$(cd "$1" && pwd)
out=$2
export SMOOTHSEG_RAW=$run/raw SMOOTHSEG_PREPROCESSED=$run/preprocessed SMOOTHSEG_RESULTS=$run/cpu/results
raw=$run/raw/Dataset900_SyntheticLiver
smoothseg_train 900 tumor 0 --val -device cpu
smoothseg_predict -i "$raw/imagesTs" -o "$out" -d 900 -f 0 -device cpu --clinical "$raw/clinical.csv"
smoothseg_evaluate "$raw/labelsTs" "$out" -d 900 -o "$out/eval.json"
