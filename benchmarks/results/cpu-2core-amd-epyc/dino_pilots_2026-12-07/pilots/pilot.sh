#!/bin/bash
# usage: pilot.sh NAME STEPS [pretrain args...]
cd /work/main && . .venv/bin/activate
name=$1; steps=$2; shift 2
out=runs/dino_diag/$name
fastssl pretrain --method dino --data cifar10 --out $out --max-steps $steps --log-every 10 --no-progress --no-eval "$@" > $out.log 2>&1
fastssl eval --checkpoint $out/last.pt --train-limit 10000 --test-limit 2000 --no-linear > $out.eval 2>&1
echo "$name $steps $* :: $(grep -h 'knn_top1\|feature_erank' $out.eval | tr '\n' ' ') :: $(tail -1 $out/metrics.csv | cut -d, -f3,10,11)" >> runs/dino_diag/summary.txt
