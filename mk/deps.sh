#!/bin/sh
# Install the Debian packages kvfs builds and tests with. Does nothing when
# they are all present; uses sudo when not run as root.
set -eu

PKGS="build-essential pkg-config
libfuse3-dev fuse3 liburing-dev librocksdb-dev libcmocka-dev
libhiredis-dev libssl-dev libxxhash-dev liburcu-dev libjansson-dev
libcbor-dev libopenblas-dev libfabric-dev
redis-server fio python3 python3-cbor2 util-linux procps
clang libclang-rt-dev"

missing=""
for p in $PKGS; do
	st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	[ "$st" = "installed" ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "deps: installing$missing"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null 2>&1 || {
		echo "deps: need root or sudo to install:$missing" >&2
		exit 1
	}
	SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet; refresh them only if the
# install cannot find what it needs.
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 || {
	$SUDO apt-get update -q >/dev/null
	$SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null
}
echo "deps: done"
