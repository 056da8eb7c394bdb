#!/bin/bash
cd /work/main && . .venv/bin/activate && export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false QTK_CACHE=/work/main/.cache/qtoolkit
step() { name=$1; shift; echo "$(date +%T) start $name (load $(cut -d' ' -f1 /proc/loadavg))" >> logs/queue.log; /usr/bin/time -f "%e s wall, %M KB maxrss" "$@" > logs/$name.log 2>&1; echo "$(date +%T) end $name rc=$? " >> logs/queue.log; }
step optmem_qat python bench/optimizer_memory.py --recipes qat --qat-set quantize.qat.lr=1e-5 --out runs/optimizer_memory_qat
