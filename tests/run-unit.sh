#!/bin/sh
# Run each cmocka suite; print one line per suite, the full output on failure.
fail=0
# Sanitized builds: reports fail the suite; uninstrumented libraries are
# suppressed (tests/tsan.supp).
here=$(cd "$(dirname "$0")" && pwd)
export TSAN_OPTIONS="suppressions=$here/tsan.supp ${TSAN_OPTIONS:-}"
for t in "$@"; do
	out=$("$t" 2>&1)
	rc=$?
	name=$(basename "$t")
	if [ $rc -eq 0 ]; then
		n=$(printf '%s\n' "$out" | grep -c '^\[       OK \]')
		s=$(printf '%s\n' "$out" | grep -c '^\[  SKIPPED \]')
		printf '  PASS    %-24s %3d tests%s\n' "$name" "$n" "$([ "$s" -gt 0 ] && echo ", $s skipped")"
	else
		printf '  FAIL    %s (exit %d)\n' "$name" "$rc"
		printf '%s\n' "$out" | sed 's/^/    /'
		fail=1
	fi
done
exit $fail
