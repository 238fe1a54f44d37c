#!/bin/bash
# usage: pilot20.sh NAME STOP_STEP [pretrain args...]: the first STOP_STEP steps of a 20-minute-budget BYOL run,
# then effective ranks and kNN of the checkpoint at STOP_STEP.
cd /work/main && . .venv/bin/activate
name=$1; stop=$2; shift 2
out=/work/pilot/runs/$name
rm -rf $out
python -m fastssl pretrain --data cifar10 --out $out --budget-minutes 20 --no-eval --no-progress --device cpu \
  --checkpoint-every $stop "$@" > /work/pilot/$name.log 2>&1 &
pid=$!
while kill -0 $pid 2>/dev/null; do
  last=$(tail -1 $out/metrics.csv 2>/dev/null | cut -d, -f1)
  if [[ "$last" =~ ^[0-9]+$ ]] && [ "$last" -ge $((stop + 10)) ]; then kill -9 $pid; break; fi
  sleep 15
done
wait $pid 2>/dev/null
python /work/pilot/rank.py $out/last.pt 2>&1 | grep erank >> /work/pilot/$name.log
python -m fastssl eval --checkpoint $out/last.pt --device cpu --no-linear --train-limit 10000 --test-limit 2000 >> /work/pilot/$name.log 2>&1
echo "$name $(grep erank /work/pilot/$name.log | cut -d' ' -f2-) $(grep knn_top1 /work/pilot/$name.log)" >> /work/pilot/summary20.txt
