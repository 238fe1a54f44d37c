P=runs/dino_diag/pilot.sh
$P base100 100
$P tt02 100 --method-arg teacher_temp=0.02 --method-arg warmup_teacher_temp=0.02
$P cm099 100 --method-arg center_momentum=0.99
$P k256 100 --method-arg out_dim=256
$P nonorm 100 --method-arg norm_last_layer=false
