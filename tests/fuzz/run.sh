#!/bin/sh
# Run libFuzzer targets for a while each: run.sh [-q] SECONDS TARGET...
#
# A target build/fuzz/fuzz_<t> starts from its checked-in seeds
# (tests/fuzz/corpus/<t>/, never written here) and from what earlier runs
# kept (build/fuzz/corpus/<t>/, where new inputs go); tests/fuzz/<t>.dict is
# its dictionary if there is one. A crash, leak, sanitizer report or timeout
# fails the run: the input is saved under build/fuzz/crash/ and the command
# that replays it is printed. Fix the bug, then copy the input into
# tests/fuzz/corpus/<t>/ so every later `make test` replays it.
#
# -q (make test): one line per target. Otherwise each target's closing
# figures: executions, exec/s, coverage (cov: edges, ft: features), corpus.
set -u
quiet=0
if [ "${1:-}" = "-q" ]; then
	quiet=1
	shift
fi
secs=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
fail=0
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"

for bin in "$@"; do
	t=$(basename "$bin")
	t=${t#fuzz_}
	dir=$(dirname "$bin")
	work="$dir/corpus/$t"
	crash="$dir/crash"
	log="$dir/log/$t.log"
	mkdir -p "$work" "$crash" "$dir/log"
	seeds="$here/corpus/$t"
	[ -d "$seeds" ] || {
		echo "  FAIL    fuzz_$t: no seed corpus $seeds"
		fail=1
		continue
	}
	dict=""
	[ -f "$here/$t.dict" ] && dict="-dict=$here/$t.dict"
	# shellcheck disable=SC2086
	"$bin" -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix="$crash/$t-" $dict "$work" "$seeds" >"$log" 2>&1
	rc=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
	eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
	last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
	cov=$(printf '%s\n' "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
	ft=$(printf '%s\n' "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
	corp=$(printf '%s\n' "$last" | sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p')
	if [ $rc -ne 0 ]; then
		echo "  FAIL    fuzz_$t (exit $rc)"
		grep -E 'oracle failed|ERROR|SUMMARY|runtime error|Test unit written|^    #[0-9]' "$log" | head -n 30 |
			sed 's/^/    /'
		art=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
		[ -n "$art" ] && echo "    replay: $bin $art"
		echo "    full log: $log"
		fail=1
	elif [ $quiet -eq 1 ]; then
		printf '  PASS    %-24s %8s runs, cov %s ft %s\n' "fuzz_$t" "$runs" "$cov" "$ft"
	else
		printf 'fuzz_%s: %s runs in %ss, %s exec/s, cov: %s ft: %s, corpus %s\n' \
			"$t" "$runs" "$secs" "$eps" "$cov" "$ft" "$corp"
	fi
done
exit $fail
