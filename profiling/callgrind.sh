#!/usr/bin/env bash
# Instruction counts of the C core's microbenchmark under valgrind's callgrind.
#
# Usage: profiling/callgrind.sh [BINARY [ARGS...]]
#   BINARY   defaults to build/pq_bench (built with `make bench-c-bin` when missing)
#   ARGS     passed to the binary
# Environment:
#   PQ_BENCH_REPS   repetitions inside pq_bench (default 1 here: counts, not timings)
#   TOGGLE          collect only inside functions matching this pattern, e.g.
#                   TOGGLE='pq_ring_*' (callgrind --toggle-collect)
#   OUT_DIR         where results go (default profiling/out)
#
# Writes OUT_DIR/callgrind.<name>.out (open with kcachegrind or qcachegrind) and
# OUT_DIR/callgrind.<name>.{self,inclusive,annotated}.txt (callgrind_annotate: per
# function, self and inclusive; per source line), and prints
# the top of the self-cost listing.  Counts are instructions (Ir), not time: they
# are repeatable from run to run where timings on this VM are not.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
bin=${1:-$repo/build/pq_bench}
[ $# -gt 0 ] && shift
out_dir=${OUT_DIR:-$here/out}
name=$(basename "$bin")
out=$out_dir/callgrind.$name.out

command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
if [ ! -x "$bin" ]; then
    if [ "$bin" = "$repo/build/pq_bench" ]; then
        make -C "$repo" bench-c-bin
    else
        echo "no executable at $bin" >&2
        exit 1
    fi
fi
mkdir -p "$out_dir"
export PQ_BENCH_REPS=${PQ_BENCH_REPS:-1}

# --fair-sched: threads take turns round-robin, so interleavings (and the
# instructions spent in spin/backoff loops) vary less between runs.
opts=(--tool=callgrind --callgrind-out-file="$out" --dump-instr=yes --collect-jumps=yes
      --fair-sched=yes)
[ -n "${TOGGLE:-}" ] && opts+=(--toggle-collect="$TOGGLE")

valgrind "${opts[@]}" "$bin" "$@"
callgrind_annotate --auto=no "$out" > "$out_dir/callgrind.$name.self.txt"
callgrind_annotate --auto=no --inclusive=yes "$out" > "$out_dir/callgrind.$name.inclusive.txt"
callgrind_annotate --auto=yes "$out" > "$out_dir/callgrind.$name.annotated.txt"
echo
echo "== top self cost (full listing: $out_dir/callgrind.$name.self.txt)"
sed -n '/file:function/,$p' "$out_dir/callgrind.$name.self.txt" | head -20
