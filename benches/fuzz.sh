#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ (one after another) and reports, per target, the CPU
# seconds spent, the executions made and whether a crash artifact was found.
#
#   bash benches/fuzz.sh [SECONDS]   # each target for SECONDS (default 600); grows
#                                    # fuzz/corpus/<target>/, then minimizes it (cargo fuzz cmin)
#   bash benches/fuzz.sh --smoke     # each target for 1 s on a copy of the corpus (the tree
#                                    # is left as it was); for the test suite
#
# Both modes first replay fuzz/regressions/<target>/* (inputs that once crashed) and exit
# non-zero if any target fails to build, crashes, times out or runs out of memory.
# Installs cargo-fuzz if missing (crates.io), and iproute2 if `ip` is missing: the
# hbone_connect and socks5_negotiate targets run their servers in a private network
# namespace, so they need root. Set WEFT_FUZZ_SKIP_REGRESSIONS=1 to skip the replay.
# Crash artifacts land in fuzz/artifacts/<target>/ (ignored by git); reproduce one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail

usage() {
    echo "usage: bash benches/fuzz.sh [SECONDS|--smoke]" >&2
    exit 2
}

smoke=0
seconds=600
case "${1:-}" in
    "") ;;
    --smoke) smoke=1; seconds=1 ;;
    -h|--help) usage ;;
    *) [[ $1 =~ ^[1-9][0-9]*$ ]] || usage; seconds=$1 ;;
esac
[[ $# -le 1 ]] || usage

cd "$(dirname "$0")/.."
root=$(pwd)
fuzz_dir="$root/fuzz"
export CARGO_TARGET_DIR="$fuzz_dir/target"
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="$CARGO_TARGET_DIR/$triple/release"

# The sanitizer flags need nightly; without a nightly toolchain, let stable accept them.
if rustup run nightly rustc --version >/dev/null 2>&1; then
    cargo_fuzz=(cargo +nightly fuzz)
else
    echo "fuzz.sh: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
    cargo_fuzz=(cargo fuzz)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
if ! command -v ip >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
        echo "fuzz.sh: installing iproute2 (ip)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2
    else
        echo "fuzz.sh: warning: no \`ip\` command; hbone_connect and socks5_negotiate will fail" >&2
    fi
fi

echo "== building the fuzz targets (cargo fuzz build, release + debug assertions + ASan)"
"${cargo_fuzz[@]}" build
mapfile -t targets < <("${cargo_fuzz[@]}" list)
[[ ${#targets[@]} -gt 0 ]] || { echo "fuzz.sh: no fuzz targets found" >&2; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# CPU seconds (user + system) of a command, into $cpu; its exit code into $rc.
timed() {
    local out="$scratch/time"
    rc=0
    if [[ -x /usr/bin/time ]]; then
        /usr/bin/time -f "%U %S" -o "$out" "$@" || rc=$?
        cpu=$(awk 'END { printf "%.1f", $1 + $2 }' "$out")
    else
        # `times` must run in this shell (not a $(...) subshell) to see its children.
        local before after
        times >"$out"
        before=$(awk 'NR == 2 { print $1, $2 }' "$out")
        "$@" || rc=$?
        times >"$out"
        after=$(awk 'NR == 2 { print $1, $2 }' "$out")
        cpu=$(awk -v b="$before" -v a="$after" 'function s(t,  m) { m = t; sub(/m.*/, "", m);
            sub(/^[0-9]+m/, "", t); sub(/s$/, "", t); return m * 60 + t }
            BEGIN { split(b, x, " "); split(a, y, " ");
                    printf "%.1f", s(y[1]) + s(y[2]) - s(x[1]) - s(x[2]) }')
    fi
}

failed=()
report=()
for t in "${targets[@]}"; do
    bin="$bin_dir/$t"
    corpus="$fuzz_dir/corpus/$t"
    artifacts="$fuzz_dir/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    flags=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "-artifact_prefix=$artifacts/")
    [[ -f "$fuzz_dir/dicts/$t.dict" ]] && flags+=("-dict=$fuzz_dir/dicts/$t.dict")
    log="$scratch/$t.log"

    regressions=("$fuzz_dir/regressions/$t"/*)
    if [[ ${WEFT_FUZZ_SKIP_REGRESSIONS:-0} != 1 && -e ${regressions[0]} ]]; then
        echo "== $t: replaying ${#regressions[@]} regression input(s)"
        if ! "$bin" "${flags[@]}" "${regressions[@]}" >"$log" 2>&1; then
            grep -E "panicked at|ERROR: |SUMMARY" "$log" | head -5 >&2 || true
            echo "== $t: a regression input still fails (fuzz/regressions/$t/)" >&2
            failed+=("$t (regression)")
        fi
    fi

    echo "== $t: fuzzing for ${seconds}s"
    marker="$scratch/$t.start"
    touch "$marker"
    if [[ $smoke -eq 1 ]]; then
        # New inputs go to a scratch dir, so the committed corpus stays as it is.
        mkdir -p "$scratch/$t.new"
        dirs=("$scratch/$t.new" "$corpus")
    else
        dirs=("$corpus")
    fi
    timed "$bin" "${flags[@]}" "-max_total_time=$seconds" "${dirs[@]}" >"$log" 2>&1
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [[ -z $execs ]]; then
        execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    fi
    execs=${execs:-0}
    found=$(find "$artifacts" -newer "$marker" -type f \
        \( -name "crash-*" -o -name "timeout-*" -o -name "oom-*" -o -name "leak-*" \) | sort | tr "\n" " ")
    if [[ $rc -ne 0 || -n $found ]]; then
        result="CRASH ${found:-"(exit $rc, no artifact)"}"
        grep -E "panicked at|ERROR: |SUMMARY" "$log" | head -5 >&2 || true
        cp "$log" "$artifacts/last-run.log"
        failed+=("$t")
    else
        result="no crash"
    fi
    rate=$(awk -v e="$execs" -v s="$seconds" 'BEGIN { printf "%d", e / s }')
    line=$(printf "%-18s cpu %8ss  execs %11s  (%s/s wall)  %s" "$t" "$cpu" "$execs" "$rate" "$result")
    echo "$line"
    report+=("$line")
done

if [[ $smoke -eq 0 ]]; then
    for t in "${targets[@]}"; do
        before=$(find "$fuzz_dir/corpus/$t" -type f | wc -l)
        echo "== $t: minimizing the corpus ($before inputs)"
        "${cargo_fuzz[@]}" cmin "$t" "$fuzz_dir/corpus/$t" -- -timeout=10 -rss_limit_mb=2048 \
            >"$scratch/$t.cmin.log" 2>&1 || {
            tail -5 "$scratch/$t.cmin.log" >&2
            failed+=("$t (cmin)")
        }
        echo "   $(find "$fuzz_dir/corpus/$t" -type f | wc -l) inputs, $(du -sh "$fuzz_dir/corpus/$t" | cut -f1)"
    done
fi

echo
echo "== summary ($([[ $smoke -eq 1 ]] && echo smoke || echo "${seconds}s per target"))"
printf '%s\n' "${report[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "all ${#targets[@]} targets ran without a crash"
