#!/usr/bin/env bash
# run_benchmarks.sh: moekit against its peers, side by side (docs/performance.md).
#
# Installs the peer tools (Debian packages; only this script does), builds the benchmark
# programs, writes the cases with fixed seeds, runs every tool on identical data with the same
# number of EM iterations from the same start, and prints seconds per EM iteration (median of
# RUNS runs), the ratio peer/moekit, the final log-likelihood and the peak memory
# (/usr/bin/time -v), for 1 thread and for all cores; then the Google Benchmark kernels and the
# CSV reader.
#
# The tools of a case run interleaved (run 1 of every tool, then run 2, ...), so a change of
# machine load hits all of them alike: on a shared machine the ratios are more trustworthy than
# the absolute times. Every line records the 1-minute load average before the run.
#
# Usage: bench/run_benchmarks.sh [options]
#   --no-install      do not apt-get the peers (they must already be installed)
#   --runs N          runs per figure (default 3; the median is reported)
#   --work DIR        data, tools and results (default /tmp/moekit-bench)
#   --build DIR       moekit build directory (default <repo>/build-bench)
#   --only LIST       comma-separated groups to run: gmm_D10_full, gmm_D10_diag, gmm_D2_full,
#                     gmm_D2_diag, moe_softmax, hme, mixreg, scaling, iteration, kernels
#                     (default: all)
#   --max-load L      before each run, wait until the 1-minute load average is below L
#                     (default 1.5 on this 2-core machine)
#   --max-wait S      wait at most S seconds for that (default 120), then run anyway
# Results: <work>/results.md (the table) and <work>/raw.txt (every run's output line).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK=/tmp/moekit-bench
BUILD="$ROOT/build-bench"
RUNS=3
INSTALL=1
ONLY=""
MAX_LOAD=1.5
MAX_WAIT=120
while [ $# -gt 0 ]; do
    case "$1" in
    --no-install) INSTALL=0 ;;
    --runs) RUNS="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    --build) BUILD="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --max-load) MAX_LOAD="$2"; shift ;;
    --max-wait) MAX_WAIT="$2"; shift ;;
    *) echo "run_benchmarks.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
ALL_THREADS="$(nproc)"
mkdir -p "$WORK"
RAW="$WORK/raw.txt"
: > "$RAW"

# ---- 1. Peers: Debian packages, installed here only --------------------------------------
PEERS="python3-sklearn libarmadillo-dev r-base-core r-cran-mclust r-cran-flexmix r-cran-mixtools libbenchmark-dev time"
if [ "$INSTALL" = 1 ]; then
    missing=""
    for p in $PEERS; do dpkg -s "$p" > /dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        echo "== installing:$missing"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y $missing
    fi
fi
PYTHON=/usr/bin/python3 # Debian's python, which has python3-sklearn

# ---- 2. Build (at most 2 jobs: the machine is shared) ---------------------------------------
echo "== building moekit benchmarks in $BUILD (Bench: -O3 -march=native)"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Bench -DMOEKIT_BUILD_BENCH=ON -DMOEKIT_BUILD_TESTS=OFF \
    -DMOEKIT_BUILD_APPS=OFF > "$WORK/cmake.log"
cmake --build "$BUILD" -j 2 --target bench_gen moekit_em_bench kernels_bench csv_read_bench > "$WORK/build.log"
B="$BUILD/bench"
echo "== building the Armadillo driver"
g++ -std=c++17 -O3 -march=native -fopenmp "$ROOT/bench/arma_gmm.cpp" -o "$WORK/arma_gmm" -larmadillo

# ---- 3. Cases (fixed seeds; regenerated only if missing) -------------------------------------
gen() { # gen <name> <bench_gen arguments without the prefix> [tail]
    local name="$1" kind="$2" n="$3" c="$4" k="$5" seed="$6" tail="${7:-}"
    if [ ! -f "$WORK/$name.bin" ] || [ ! -f "$WORK/$name.start" ]; then
        echo "== generating $name"
        "$B/bench_gen" "$kind" "$n" "$c" "$k" "$seed" "$WORK/$name" $tail
    fi
}
gen gmm_D10 gmm 1000000 10 5 101
gen gmm_D2 gmm 1000000 2 5 102
gen gmm_D10_5e5 gmm 500000 10 5 107
gen gmm_D10_K10 gmm 1000000 10 10 108
gen moe_1e6 reg 1000000 5 4 103 softmax
gen moe_1e5 reg 100000 5 4 104 softmax
gen mixreg_1e6 reg 1000000 5 4 106 constant
gen mixreg_1e5 reg 100000 5 4 105 constant

wait_for_quiet() {
    local waited=0
    while awk -v max="$MAX_LOAD" '{ exit !($1 >= max) }' /proc/loadavg; do
        if [ "$waited" -ge "$MAX_WAIT" ]; then return; fi
        sleep 10
        waited=$((waited + 10))
    done
}

# once <case> <tool-label> <threads> <run> <command...>: one run, tagged and appended to RAW.
once() {
    local case="$1" label="$2" threads="$3" r="$4"; shift 4
    wait_for_quiet
    local load out rss
    load="$(cut -d' ' -f1 /proc/loadavg)"
    out="$(OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" \
        /usr/bin/time -v "$@" 2> "$WORK/time.err" | tail -1 || true)"
    rss="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.err")"
    echo "case=$case tool=$label run=$r load=$load peak_rss_kb=$rss $out" | tee -a "$RAW"
}

want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# ---- 4. Gaussian mixtures: N = 10^6, K = 5, D in {2, 10}, full and diagonal -------------------
# Every tool runs the same 5 EM iterations from the same start, so the final log-likelihoods
# must agree. mclust is single-threaded Fortran: 1 thread only.
IT=5
for D in 10 2; do
    for cov in full diag; do
        case="gmm_D${D}_${cov}"
        want "$case" || continue
        echo "== $case"
        for r in $(seq 1 "$RUNS"); do
            for t in 1 "$ALL_THREADS"; do
                once "$case" moekit "$t" "$r" "$B/moekit_em_bench" "$WORK/gmm_D$D" 1000000 "$cov" constant $IT
                once "$case" armadillo "$t" "$r" "$WORK/arma_gmm" "$WORK/gmm_D$D" 1000000 "$cov" $IT
                once "$case" sklearn "$t" "$r" "$PYTHON" "$ROOT/bench/sklearn_gmm.py" "$WORK/gmm_D$D" 1000000 "$cov" $IT
            done
            once "$case" mclust 1 "$r" Rscript "$ROOT/bench/peers.R" mclust "$WORK/gmm_D$D" 1000000 "$cov" $IT
        done
    done
done

# ---- 5. Linear experts with a softmax gate: N = 10^6, d = 5, K = 4 ----------------------------
# flexmix with a concomitant model needs seconds per iteration: it runs at N = 10^5 (moekit runs
# both sizes); the table extrapolates flexmix linearly to N = 10^6.
if want moe_softmax; then
    echo "== moe_softmax"
    for r in $(seq 1 "$RUNS"); do
        for t in 1 "$ALL_THREADS"; do
            once moe_softmax_1e6 moekit "$t" "$r" "$B/moekit_em_bench" "$WORK/moe_1e6" 1000000 full softmax $IT
            once moe_softmax_1e5 moekit "$t" "$r" "$B/moekit_em_bench" "$WORK/moe_1e5" 100000 full softmax $IT
        done
        once moe_softmax_1e5 flexmix 1 "$r" Rscript "$ROOT/bench/peers.R" flexmix "$WORK/moe_1e5" 100000 softmax 2
        # The same 2 iterations as flexmix, for the log-likelihood comparison.
        once moe_softmax_1e5_2it moekit 1 "$r" "$B/moekit_em_bench" "$WORK/moe_1e5" 100000 full softmax 2
    done
fi

# ---- 6. HME 2x2 on the same data (no peer fits a 2x2 HME; mixtools hmeEM is 2 experts only) ---
if want hme; then
    echo "== hme"
    for r in $(seq 1 "$RUNS"); do
        for t in 1 "$ALL_THREADS"; do
            once hme_2x2_1e6 moekit "$t" "$r" "$B/moekit_em_bench" "$WORK/moe_1e6" 1000000 full tree $IT
        done
    done
fi

# ---- 7. Mixtures of regressions (constant gate): d = 5, K = 4 ---------------------------------
if want mixreg; then
    echo "== mixreg"
    for r in $(seq 1 "$RUNS"); do
        for t in 1 "$ALL_THREADS"; do
            once mixreg_1e6 moekit "$t" "$r" "$B/moekit_em_bench" "$WORK/mixreg_1e6" 1000000 full constant $IT
            once mixreg_1e5 moekit "$t" "$r" "$B/moekit_em_bench" "$WORK/mixreg_1e5" 100000 full constant $IT
        done
        once mixreg_1e5 flexmix 1 "$r" Rscript "$ROOT/bench/peers.R" flexmix "$WORK/mixreg_1e5" 100000 constant $IT
        once mixreg_1e5 mixtools 1 "$r" Rscript "$ROOT/bench/peers.R" mixtools "$WORK/mixreg_1e5" 100000 constant $IT
    done
fi

# ---- 8. Scaling in N and K (moekit, Gaussian mixture D = 10 full) -----------------------------
if want scaling; then
    echo "== scaling"
    for r in $(seq 1 "$RUNS"); do
        once scaling_n5e5_K5 moekit 1 "$r" "$B/moekit_em_bench" "$WORK/gmm_D10_5e5" 500000 full constant $IT
        once scaling_n1e6_K5 moekit 1 "$r" "$B/moekit_em_bench" "$WORK/gmm_D10" 1000000 full constant $IT
        once scaling_n1e6_K10 moekit 1 "$r" "$B/moekit_em_bench" "$WORK/gmm_D10_K10" 1000000 full constant $IT
    done
fi

# ---- 8b. The cost of one more iteration, and its thread scaling (moekit) ----------------------
# A fit of IT iterations also pays once for what does not repeat: the first touch of the n×K
# responsibilities it returns (page faults, which this machine does not overlap across threads:
# docs/performance.md), the final E-step and the first pass's work space. The same fits with
# IT_LONG iterations give the cost of one more iteration, (S(IT_LONG) − S(IT)) / (IT_LONG − IT),
# and its speed-up on all cores; the table below the main one prints both speed-ups.
IT_LONG=25
if want iteration; then
    echo "== iteration (moekit, $IT and $IT_LONG iterations)"
    for r in $(seq 1 "$RUNS"); do
        for t in 1 "$ALL_THREADS"; do
            for its in $IT $IT_LONG; do
                for D in 10 2; do
                    for cov in full diag; do
                        once "gmm_D${D}_${cov}" "moekit_it$its" "$t" "$r" "$B/moekit_em_bench" "$WORK/gmm_D$D" 1000000 "$cov" constant $its
                    done
                done
                once moe_softmax_1e6 "moekit_it$its" "$t" "$r" "$B/moekit_em_bench" "$WORK/moe_1e6" 1000000 full softmax $its
                once moe_softmax_1e5 "moekit_it$its" "$t" "$r" "$B/moekit_em_bench" "$WORK/moe_1e5" 100000 full softmax $its
                once hme_2x2_1e6 "moekit_it$its" "$t" "$r" "$B/moekit_em_bench" "$WORK/moe_1e6" 1000000 full tree $its
                once mixreg_1e6 "moekit_it$its" "$t" "$r" "$B/moekit_em_bench" "$WORK/mixreg_1e6" 1000000 full constant $its
                once mixreg_1e5 "moekit_it$its" "$t" "$r" "$B/moekit_em_bench" "$WORK/mixreg_1e5" 100000 full constant $its
            done
        done
    done
fi

# ---- 9. The table ----------------------------------------------------------------------------
"$PYTHON" - "$RAW" "$ALL_THREADS" << 'EOF' | tee "$WORK/results.md"
import re, statistics, sys
raw, all_threads = sys.argv[1], sys.argv[2]
rows = {}
for line in open(raw):
    f = dict(re.findall(r"(\w+)=(\S+)", line))
    if "seconds_per_iteration" not in f:
        print("(failed run: %s)" % line.strip())
        continue
    rows.setdefault((f["case"], f["tool"], f["threads"]), []).append(f)
def med(runs, field):
    return statistics.median(float(r[field]) for r in runs)
moekit = {(c, t): med(runs, "seconds_per_iteration") for (c, tool, t), runs in rows.items() if tool == "moekit"}
print("| case | tool | threads | runs | s/iteration (median) | CPU s/iteration | peer / moekit (same threads) | peer / moekit (moekit %s threads) | log-likelihood | peak RSS (MB) | load (1-min) per run |" % all_threads)
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (case, tool, threads), runs in sorted(rows.items()):
    if tool.startswith("moekit_it"):
        continue  # section 8b: the table below
    s = med(runs, "seconds_per_iteration")
    same = moekit.get((case, threads))
    best = moekit.get((case, all_threads))
    r1 = "" if tool == "moekit" or same is None else "%.1f" % (s / same)
    r2 = "" if tool == "moekit" or best is None else "%.1f" % (s / best)
    print("| %s | %s | %s | %d | %.4g | %.4g | %s | %s | %s | %.0f | %s |"
          % (case, tool, threads, len(runs), s, med(runs, "cpu_seconds_per_iteration"), r1, r2,
             runs[-1]["loglik"], med(runs, "peak_rss_kb") / 1024.0, "/".join(r["load"] for r in runs)))
# The cost of one more iteration (section 8b): from the medians of the whole-fit seconds.
short = [k for k in rows if k[1].startswith("moekit_it")]
its = sorted({int(k[1][len("moekit_it"):]) for k in short})
if short and len(its) != 2:
    print("(section 8b: expected runs of two iteration counts, found %s)" % its)
if len(its) == 2:
    a, b = its
    print()
    print("| case | s/iteration over %d iterations, 1 / %s threads | speed-up | s per added iteration (%d → %d), 1 / %s threads | speed-up |" % (a, all_threads, a, b, all_threads))
    print("|---|---|---|---|---|")
    for case in sorted({k[0] for k in short}):
        def total(its_, t):
            runs = rows.get((case, "moekit_it%d" % its_, t))
            return None if runs is None else med(runs, "seconds")
        vals = [total(i, t) for i in (a, b) for t in ("1", all_threads)]
        if None in vals:
            print("| %s | (incomplete: a run of %d or %d iterations at 1 or %s threads failed) | | | |"
                  % (case, a, b, all_threads))
            continue
        s1, sT, l1, lT = vals
        m1, mT = (l1 - s1) / (b - a), (lT - sT) / (b - a)
        print("| %s | %.4g / %.4g | %.2f | %.4g / %.4g | %.2f |" % (case, s1 / a, sT / a, s1 / sT, m1, mT, m1 / mT))
EOF

# ---- 10. Kernels and the CSV reader ------------------------------------------------------------
if want kernels; then
    for t in 1 "$ALL_THREADS"; do
        wait_for_quiet
        echo "== kernels_bench, $t thread(s), load $(cut -d' ' -f1 /proc/loadavg)"
        OMP_NUM_THREADS="$t" "$B/kernels_bench" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
            | tee "$WORK/kernels_$t.txt"
    done
    # 10^6 rows of 10 and of 2 columns (the D = 10 and D = 2 cases), 1 thread and all cores.
    : > "$WORK/csv_read.txt"
    for cols in 10 2; do
        for t in 1 "$ALL_THREADS"; do
            wait_for_quiet
            echo "== csv_read_bench, $cols columns, $t thread(s), load $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$WORK/csv_read.txt"
            OMP_NUM_THREADS="$t" "$B/csv_read_bench" "$WORK/csv_read_bench.csv" 1000000 "$cols" | tee -a "$WORK/csv_read.txt"
        done
    done
fi
echo "== results in $WORK/results.md, raw runs in $RAW"
