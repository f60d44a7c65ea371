#!/usr/bin/env bash
# The trainer tests, after the core suite (.ci/run runs it after scripts/test.sh): real TRL
# GRPOTrainer runs routed by the real server binary and causal-LM reward models checked against
# torch (clients/python/trainer_tests), OpenRLHF's
# own remote reward model client against the HTTP endpoint, then the
# paper's loop example (examples/laser_trl.py) for a few steps on the demo reward models, and
# the closed-loop benchmark (examples/laser_closed_loop.py) for a few steps.
#
# torch, transformers and trl (pinned in clients/python/trainer_tests/requirements.txt) live in
# a virtual environment cached outside the repository, keyed by that file's hash:
# ${LASER_TRAINER_VENVS:-~/.cache/laser-router}/trainers-<hash>. The first install downloads
# and installs about 6 GB (torch with its CUDA libraries) in 1-2 minutes here; later runs reuse it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-onnxruntime.sh
cargo build --locked --quiet
bash scripts/demo-models.sh

requirements=clients/python/trainer_tests/requirements.txt
requirements_nodeps=clients/python/trainer_tests/requirements-nodeps.txt
hash=$(cat "$requirements" "$requirements_nodeps" | sha256sum | cut -c1-12)
venv="${LASER_TRAINER_VENVS:-$HOME/.cache/laser-router}/trainers-$hash"
if [[ ! -f "$venv/.complete" ]]; then
  echo "creating the trainer environment in $venv (first run: about 6 GB, 1-2 minutes)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -r "$requirements"
  "$venv/bin/pip" install --quiet --no-deps -r "$requirements_nodeps"
  touch "$venv/.complete"
fi
# The client from this checkout (not cached: it is what is being tested).
"$venv/bin/pip" install --quiet --no-deps --force-reinstall ./clients/python

"$venv/bin/python" -m pytest -q -p no:cacheprovider -W ignore::FutureWarning clients/python/trainer_tests
# OpenRLHF's own remote-RM client against the HTTP get_reward endpoint (skipped in the core
# suite, where OpenRLHF does not import).
"$venv/bin/python" -m pytest -q -p no:cacheprovider clients/python/tests/test_http.py -k openrlhf -rs
# The paper's loop, short: it must run end to end and leave no decision unreported.
out=$(mktemp -d)
"$venv/bin/python" examples/laser_trl.py --spawn --steps 6 --alpha 1 --plot "$out/laser_trl.png" \
  2>&1 | grep -v -i warning | tee "$out/log.txt" | tail -8
grep -q ", 0 pending," "$out/log.txt"
test -s "$out/laser_trl.png"
# The paper's setting: a classifier, a likelihood LLM RM and an implicit-DPO LLM RM (tiny Llamas
# exported by scripts/export_causal_lm.py, added through Admin), routed in the same loop.
"$venv/bin/python" examples/laser_trl.py --spawn --paper-rms --steps 4 --alpha 1 --plot "$out/paper.png" \
  2>&1 | grep -v -i warning | tee "$out/paper.txt" | tail -5
grep -q ", 0 pending," "$out/paper.txt" && grep -q "^dpo " "$out/paper.txt" && grep -q "^likelihood " "$out/paper.txt"
# The closed-loop benchmark (docs/learning.md), short: it must run end to end through the server.
python3 -m pip install --quiet matplotlib onnx
python3 examples/laser_closed_loop.py --seeds 2 --steps 5 \
  --policies "random,linucb defaults,oracle,labels 10% only,offline,prior 200 + labels 10% only" \
  --out "$out/closed_loop" | tail -3
test -s "$out/closed_loop.md" && test -s "$out/closed_loop.png"
# The second loop (instructions with conflicting targets), as short.
python3 examples/laser_closed_loop.py --task instructions --seeds 2 --steps 5 \
  --policies "fixed:,random,oracle,labels 10% only,prior 200 + labels 10% only" \
  --out "$out/closed_loop_instructions" | tail -3
grep -q "rm_upbeat" "$out/closed_loop_instructions.md" && test -s "$out/closed_loop_instructions.png"
echo "trainer tests passed"
