#!/bin/sh
# tests/gpu/run.sh — the GPU tier on a real device, in under 5 minutes.
#
#   sh tests/gpu/run.sh
#
# Builds kvfs with CUDA (CUDA_HOME, default /usr/local/cuda) in build/gpu,
# then on a machine with an NVIDIA GPU:
#   1. the GPU layer's unit suite against the CUDA runtime (KVFS_GPU_IMPL=cuda
#      build/gpu/tests/gpu_test: devices, pool, copies, IPC between two
#      processes, the gather/scatter kernels against the host implementation);
#   2. a daemon with --gpu 0:SIZE on a fresh mount, and the benchmark
#      (tests/gpu/gpu_bench.c) through it: one table, every transfer's bytes
#      compared.
# On a machine without a GPU it says so and exits 77 (nothing was tested).
set -u
cd "$(dirname "$0")/../.." || exit 1
B=build/gpu
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
TOKENS=${TOKENS:-4096}

if ! [ -e /dev/nvidiactl ] && ! [ -e /dev/nvidia0 ]; then
	echo "gpu: no NVIDIA GPU on this machine (no /dev/nvidia*): the CUDA path was not run"
	exit 77
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L

echo "gpu: building with CUDA from $CUDA_HOME into $B"
make -s -j"$(nproc)" B=$B CUDA_HOME="$CUDA_HOME" all || exit 1
if ! $B/bin/kvfs --version | grep -q "CUDA support: yes"; then
	echo "gpu: no CUDA toolkit in $CUDA_HOME: set CUDA_HOME" >&2
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
echo "gpu: daemon with --gpu 0:4G, benchmark through it ($TOKENS tokens)"
if ! $B/bin/kvfs --state "$work/state" --dram 4G --gpu 0:4G --log "$work/kvfs.log" "$work/mnt"; then
	echo "gpu: FAIL the daemon did not start"
	exit 1
fi
if ! timeout 150 $B/tests/gpu_bench --mount "$work/mnt/bench" --tokens "$TOKENS" | tee "$B/gpu-bench.txt"; then
	echo "gpu: FAIL gpu_bench (daemon log follows)"
	tail -20 "$work/kvfs.log"
	fail=1
fi
grep -i -E "gpu|device" "$work/kvfs.log" | tail -5
[ $fail = 0 ] && echo "gpu: PASS (table in $B/gpu-bench.txt)"
exit $fail
