#!/usr/bin/env bash
# CPU profiles of the daemon during the `ingress` and `callbacks` scenarios of
# `cargo bench --bench loop`, rendered as flame graphs in docs/.
#
#   benches/profile.sh                      # ingress (and reference) + callbacks
#   BENCH_SECONDS=5 benches/profile.sh      # shorter window
#
# Needs perf (and permission to attach: root, or kernel.perf_event_paranoid
# <= 1) and inferno (`cargo install inferno`). The bench attaches
# `perf record -F 499 --call-graph dwarf -p <pid>` for each measured window
# (BENCH_PERF=<dir>, see benches/loop/daemon.rs); this script folds the
# samples with inferno-collapse-perf and renders them with inferno-flamegraph
# (frames narrower than 0.5 px left out, which keeps the SVGs small).
# The reference server's profile is rendered too (docs is not written for
# it unless PROFILE_REFERENCE=1). perf costs the server CPU: take the rates
# from a run without it.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in perf inferno-collapse-perf inferno-flamegraph; do
  command -v "$tool" >/dev/null || { echo "profile.sh: $tool not found" >&2; exit 2; }
done
out="${PROFILE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/runbridge-profile-XXXXXX")}"
mkdir -p "$out" docs
echo "perf data and folded stacks in $out"
BENCH_PERF="$out" cargo bench --bench loop -- ingress callbacks | tee "$out/bench.txt"

render() { # scenario title svg
  local data="$out/$1.perf.data"
  [ -s "$data" ] || { echo "profile.sh: no $data" >&2; return 1; }
  perf script -i "$data" 2>/dev/null | inferno-collapse-perf --all > "$out/$1.folded"
  inferno-flamegraph --title "$2" --width 1600 --minwidth 0.5 < "$out/$1.folded" > "$3"
  echo "$3 ($(wc -l < "$out/$1.folded") distinct stacks)"
}
render ingress "runbridge: ingress (GitHub-signed 1 KB, 64 connections)" docs/profile-ingress.svg
render callbacks "runbridge: callbacks end to end (simulated provider)" docs/profile-callbacks.svg
if [ "${PROFILE_REFERENCE:-0}" = 1 ]; then
  render reference "plain sled group commit (reference)" docs/profile-reference.svg
else
  render reference "plain sled group commit (reference)" "$out/profile-reference.svg"
fi
