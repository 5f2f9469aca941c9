#!/usr/bin/env bash
# Fuzzes every parser of untrusted input (README "Tests"): the DCP
# .metadata pickle decoder and mapping, torch.save items, Content-Range /
# Range / size parsing, AIStore JSON errors. Each target runs SECONDS
# (default 300), two at a time; the corpus in fuzz/corpus/<target> grows,
# then is minimised (cargo fuzz cmin). A crash or timeout stops with the
# input in fuzz/artifacts/<target>/: copy it to tests/fixtures/fuzz/<target>/
# and it is replayed by the normal test suite.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(metadata item range ais_error s3_error)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p fuzz/logs
cargo +nightly fuzz build -O --debug-assertions

run() {
  local t=$1
  mkdir -p "fuzz/corpus/$t"
  # -timeout: one input taking 10 s is a finding (a hang), not slowness;
  # -rss_limit_mb: so is an input that makes the parser allocate 2 GiB.
  cargo +nightly fuzz run -O --debug-assertions "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"fuzz/logs/$t.log" 2>&1
}

failed=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  pids=()
  for t in "${targets[@]:i:2}"; do
    run "$t" &
    pids+=("$!:$t")
  done
  for p in "${pids[@]}"; do
    if ! wait "${p%%:*}"; then
      echo "FINDING in ${p#*:}: see fuzz/logs/${p#*:}.log and fuzz/artifacts/${p#*:}/"
      failed=1
    fi
  done
done

for t in "${targets[@]}"; do
  cargo +nightly fuzz cmin -O --debug-assertions "$t" "fuzz/corpus/$t" >"fuzz/logs/$t.cmin.log" 2>&1 || true
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$' || echo '?')
  echo "$t: ${runs} executions in ${secs} s, corpus $(ls "fuzz/corpus/$t" | wc -l) inputs ($(du -sh "fuzz/corpus/$t" | cut -f1))"
done
exit $failed
