while pgrep -f "dino_diag/queue.sh" > /dev/null; do sleep 10; done
P=runs/dino_diag/pilot.sh
$P tt01 100 --method-arg teacher_temp=0.01 --method-arg warmup_teacher_temp=0.01
$P tt02_st05 100 --method-arg teacher_temp=0.02 --method-arg warmup_teacher_temp=0.02 --method-arg student_temp=0.05
