#!/bin/sh
# tests/gpu/run.sh — the GPU tier on a real device, in under 5 minutes.
#
#   sh tests/gpu/run.sh                       build with CUDA into build/gpu, then run
#   KVFS_BUILD=build sh tests/gpu/run.sh      use a CUDA build made elsewhere (no make)
#
# On a machine with an NVIDIA GPU:
#   1. the GPU layer's unit suite against the CUDA runtime (KVFS_GPU_IMPL=cuda
#      gpu_test: devices, pool, copies and batches, IPC between two
#      processes, the gather/scatter kernels against the host implementation);
#   2. the benchmark (tests/gpu/gpu_bench.c), one table, every transfer's
#      bytes compared: the kernels against plain copies, and — where FUSE is
#      available — loads and saves through a daemon started with --gpu.
# On a machine without a GPU it says so and exits 77 (nothing was tested).
set -u
cd "$(dirname "$0")/../.." || exit 1
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
TOKENS=${TOKENS:-4096}

if ! [ -e /dev/nvidiactl ] && ! [ -e /dev/nvidia0 ]; then
	echo "gpu: no NVIDIA GPU on this machine (no /dev/nvidia*): the CUDA path was not run"
	exit 77
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L

if [ -n "${KVFS_BUILD:-}" ]; then
	B=$KVFS_BUILD
else
	B=build/gpu
	echo "gpu: building with CUDA from $CUDA_HOME into $B"
	make -s -j"$(nproc)" B=$B CUDA_HOME="$CUDA_HOME" all || exit 1
fi
if ! $B/bin/kvfs --version | grep -q "CUDA support: yes"; then
	echo "gpu: $B/bin/kvfs has no CUDA support (no toolkit in $CUDA_HOME when it was built)" >&2
	exit 1
fi

fail=0
echo "gpu: unit suite on the CUDA runtime"
if ! KVFS_GPU_IMPL=cuda timeout 120 $B/tests/gpu_test; then
	echo "gpu: FAIL gpu_test (CUDA)"
	fail=1
fi

work=$(mktemp -d /var/tmp/kvfs-gpu.XXXXXX) || exit 1
mkdir "$work/mnt"
cleanup() {
	fusermount3 -u "$work/mnt" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT INT TERM
mount_args=""
if [ -e /dev/fuse ] && command -v fusermount3 >/dev/null 2>&1; then
	echo "gpu: daemon with --gpu 0:4G; benchmark through it ($TOKENS tokens)"
	if $B/bin/kvfs --state "$work/state" --dram 6G --gpu 0:4G --log "$work/kvfs.log" \
		"$work/mnt"; then
		mount_args="--mount $work/mnt/bench"
	else
		echo "gpu: FAIL the daemon did not start"
		fail=1
	fi
else
	echo "gpu: no FUSE here: the daemon rows of the table are left out"
fi
# shellcheck disable=SC2086
if ! timeout 170 $B/tests/gpu_bench $mount_args --tokens "$TOKENS" | tee "$work/table.txt"; then
	echo "gpu: FAIL gpu_bench"
	[ -f "$work/kvfs.log" ] && tail -20 "$work/kvfs.log"
	fail=1
fi
cp "$work/table.txt" "$B/gpu-bench.txt" 2>/dev/null
[ -f "$work/kvfs.log" ] && grep -i -E "gpu|device" "$work/kvfs.log" | tail -5
[ $fail = 0 ] && echo "gpu: PASS (table in $B/gpu-bench.txt)"
exit $fail
