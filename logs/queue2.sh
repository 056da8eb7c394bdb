#!/bin/bash
cd /work/main && . .venv/bin/activate && export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false QTK_CACHE=/work/main/.cache/qtoolkit
while pgrep -f "qtk compare-ort" >/dev/null; do sleep 5; done
echo "$(date +%T) end cmp (orphaned from queue1)" >> logs/queue.log
step() { name=$1; shift; echo "$(date +%T) start $name (load $(cut -d' ' -f1 /proc/loadavg))" >> logs/queue.log; /usr/bin/time -f "%e s wall, %M KB maxrss" "$@" > logs/$name.log 2>&1; echo "$(date +%T) end $name rc=$? " >> logs/queue.log; }
step optmem python bench/optimizer_memory.py --out runs/optimizer_memory
step ptq_w4 python bench/ptq_algorithms.py --variants w8 w4_nearest w4_adaround --out runs/ptq_w4
