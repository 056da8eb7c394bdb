#!/bin/bash
cd /work/main && . .venv/bin/activate && export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false QTK_CACHE=/work/main/.cache/qtoolkit
step() { name=$1; shift; echo "$(date +%T) start $name (load $(cut -d' ' -f1 /proc/loadavg))" >> logs/queue.log; /usr/bin/time -f "%e s wall, %M KB maxrss" "$@" > logs/$name.log 2>&1; echo "$(date +%T) end $name rc=$? " >> logs/queue.log; }
step tune_lite2 python -m qtoolkit tune recipes/efficientnet_lite2_photos_static.yaml --tolerance 8 --max-trials 2 --setting-trials 2 --set quantize.activation_observer=minmax --set quantize.bias_correction=false --out runs/tune_lite2
