#!/bin/bash
# images/s (or tokens) of 8 steps per method, amp none vs bf16, on this CPU
cd /work/main && . .venv/bin/activate
for m in $METHODS; do
  for amp in none bf16; do
    out=runs/amp_probe/$m-$amp
    fastssl pretrain --method $m --out $out --max-steps 8 --amp $amp --no-eval --no-progress --log-every 2 > $out.log 2>&1
    echo "$m $amp $(tail -1 $out/metrics.csv)"
  done
done
