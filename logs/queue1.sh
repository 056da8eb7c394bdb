#!/bin/bash
cd /work/main && . .venv/bin/activate && export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false QTK_CACHE=/work/main/.cache/qtoolkit
while pgrep -f "qtk run recipes/resnet18_fmnist_static" >/dev/null; do sleep 5; done
step() { name=$1; shift; echo "$(date +%T) start $name (load $(cut -d' ' -f1 /proc/loadavg))" >> logs/queue.log; /usr/bin/time -f "%e s wall, %M KB maxrss" "$@" > logs/$name.log 2>&1; echo "$(date +%T) end $name rc=$? " >> logs/queue.log; }
step rnn_dynamic python bench/rnn_dynamic.py --out runs/rnn_dynamic_q
step bert_dynamic python bench/bert_dynamic.py --out runs/bert_dynamic_q
step cmp qtk compare-ort recipes/efficientnet_lite2_photos_static.yaml --work-dir runs/cmp_q --json runs/cmp_q.json
step optmem python bench/optimizer_memory.py --out runs/optimizer_memory
step ptq_w4 python bench/ptq_algorithms.py --variants w8 w4_nearest w4_bc w4_adaround --out runs/ptq_w4
