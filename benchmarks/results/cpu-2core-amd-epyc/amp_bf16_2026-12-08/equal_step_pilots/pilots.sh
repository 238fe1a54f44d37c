#!/bin/bash
# equal-step pilots: does bf16 autocast on this CPU learn as fp32 does? 150 steps, seed 0, kNN on 10k/2k
cd /work/main && . .venv/bin/activate
for m in simclr simsiam byol; do
  for amp in none bf16; do
    out=runs/amp_pilots/$m-$amp
    fastssl pretrain --method $m --data cifar10 --out $out --max-steps 150 --amp $amp --no-eval --no-progress > $out.log 2>&1
    fastssl eval --checkpoint $out/last.pt --data cifar10 --train-limit 10000 --test-limit 2000 --no-linear > $out.eval 2>&1
    echo "$m $amp $(grep -E 'knn_top1|feature_erank' $out.eval | tr '\n' ' ') $(tail -1 $out/metrics.csv)"
  done
done
