#!/usr/bin/env bash
# Session 11: why local/global seed 3's base learned MQAR but not passkey, and what teaches it. From the
# recipe's seed-3 local base (runs/ext64/seed3/local/base, 4000 steps): `steps` reads its checkpoints at
# 1000 / 2000 / 3000 steps at 128 (4000 is the chain's own base read); each other lever continues it for
# 1000 steps at L0 (configs/extend_64x.py's base_rand stage with overrides) and reads passkey and MQAR at 128
# (100 prompts, 16 MQAR rows). Run from the repository root, then gather_base.py.
#   A  base_rand as it is (stride 2, lr 3e-4) on passkey 0.5 / MQAR 0.3 of the rows
#   B  exact positions, lr 1e-3, passkey 0.5 / MQAR 0.3   (recipe v7's base_passkey stage)
#   C  stride 2, lr 1e-3, passkey 0.5 / MQAR 0.3
#   E  stride 2, lr 1e-3, the base's mix (passkey 0.2 / MQAR 0.55)
set -euo pipefail
lever=${1:?usage: base_levers.sh steps|A|B|C|E}
base=runs/ext64/seed3/local/base
read128=(--lengths=128 --passkey_samples=20)
if [ "$lever" = steps ]; then
  for s in 1000 2000 3000; do
    python -m eval --workdir=$base --step=$s --tasks=passkey "${read128[@]}" --tag=probe128
  done
  exit
fi
mix50=(--config.data.passkey_rate=0.5 --config.data.mqar_rate=0.3)
case $lever in
  A) name=A_rand_pk50; args=("${mix50[@]}") ;;
  B) name=B_lr1e3_pk50; args=("${mix50[@]}" --config.data.position_stride=1 --config.optim.learning_rate=1e-3) ;;
  C) name=C_rand_lr1e3_pk50; args=("${mix50[@]}" --config.optim.learning_rate=1e-3) ;;
  E) name=E_rand_lr1e3; args=(--config.optim.learning_rate=1e-3) ;;
  *) echo "unknown lever $lever" >&2; exit 2 ;;
esac
wd=runs/probe_s3base/$name
python train.py --config=configs/extend_64x.py:base_rand,local --workdir=$wd --config.seed=3 \
  --config.init_from=$base "${args[@]}"
python -m eval --workdir=$wd --tasks=passkey,mqar "${read128[@]}" --mqar_samples=16
