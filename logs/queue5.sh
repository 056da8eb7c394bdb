#!/bin/bash
cd /work/main && . .venv/bin/activate && export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false QTK_CACHE=/work/main/.cache/qtoolkit
step() { name=$1; shift; echo "$(date +%T) start $name (load $(cut -d' ' -f1 /proc/loadavg))" >> logs/queue.log; /usr/bin/time -f "%e s wall, %M KB maxrss" "$@" > logs/$name.log 2>&1; echo "$(date +%T) end $name rc=$? " >> logs/queue.log; }
step zoo_graph2 qtk zoo --models densenet121 convnext_tiny mobilenet_v3_large mobilenet_v2 --runtime onnxruntime --runtime openvino --rounds 3 --repeats 10 --threads 2 --out runs/zoo_graph2
