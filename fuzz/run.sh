#!/usr/bin/env bash
# Runs every fuzz target of charon-protocol for a bounded time and fails if
# any of them crashes, hangs or allocates out of bounds.
#
# Usage: fuzz/run.sh [SECONDS_PER_TARGET]   (default 60)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). libFuzzer's sanitizer
# flags need a nightly compiler: the installed nightly toolchain is used if
# there is one, else the stable compiler with RUSTC_BOOTSTRAP=1.
#
# Each target's corpus grows in fuzz/corpus/<target> (seeded from
# fuzz/seeds/<target>) and survives between runs; a crashing input is kept
# in fuzz/artifacts/<target>/. Both are git-ignored.
set -euo pipefail

secs=${1:-60}
if ! [[ $secs =~ ^[1-9][0-9]*$ ]]; then
    echo "run.sh: seconds per target must be a positive whole number, not '$secs'" >&2
    exit 2
fi

cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: cargo-fuzz is not installed; install it with: cargo install cargo-fuzz" >&2
    exit 2
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    # Stable rustc accepts the unstable -Z sanitizer flags cargo-fuzz passes
    # only when told it is bootstrapping itself.
    export RUSTC_BOOTSTRAP=1
fi

targets=(decode_request decode_response report_decode service_key)

# -a: debug assertions, so integer overflow is a crash, not a wrap.
build=(fuzz build -a)
echo "run.sh: building ${#targets[@]} targets (cargo ${toolchain[*]} ${build[*]})"
cargo "${toolchain[@]}" "${build[@]}"

mkdir -p logs
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    if [[ -d seeds/$t ]]; then
        cp -n "seeds/$t"/* "corpus/$t/" 2>/dev/null || true
    fi
    echo "run.sh: fuzzing $t for ${secs}s"
    # -timeout: one input taking 10 s is a hang. -malloc_limit_mb: no
    # decoder may allocate by an announced length; inputs are at most 4 KiB,
    # so 128 MiB in one allocation is a bug.
    if cargo "${toolchain[@]}" fuzz run -a "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -malloc_limit_mb=128 \
        -print_final_stats=1 >"logs/$t.log" 2>&1; then
        result=ok
    else
        result=FAILED
        failed+=("$t")
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "logs/$t.log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -1)
    echo "run.sh: $t: $result, ${execs:-?} executions (${rate:-?}/s), ${cov:-cov: ?}, corpus $(find "corpus/$t" -type f | wc -l) inputs"
done

if ((${#failed[@]})); then
    for t in "${failed[@]}"; do
        echo "run.sh: $t crashed; see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2
        tail -n 30 "logs/$t.log" >&2
    done
    exit 1
fi
echo "run.sh: all ${#targets[@]} targets ran ${secs}s each without a crash"
