"""Crash test: kill -9 the daemon at random moments of a mixed load, restart,
check what survived.

Each round starts the daemon on the same state, runs writers (tmp + rename,
the connector idiom), readers and an evictor against it for a random time,
then kills the daemon with SIGKILL. After every restart:
  - every visible file is complete and byte-exact (its content names it and
    its size, so a torn or short file cannot pass);
  - every file promised durable is there: with --persist through a file is
    on NVMe before its rename returns, so each name a writer printed after
    its rename returned, and that the evictor did not evict (or try to, with
    no answer before the kill), must survive.

KVFS_CRASH_ROUNDS sets the number of rounds (default 5; 50 or more for a
thorough run: `KVFS_CRASH_ROUNDS=50 make integration TESTS=test_crash`).
KVFS_CRASH_SEED replays a run.
"""
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

from harness import Mount, fuse_available

ROUNDS = int(os.environ.get("KVFS_CRASH_ROUNDS", "5"))
SEED = int(os.environ.get("KVFS_CRASH_SEED", str(int(time.time()))))


def expected(name, size):
    """The bytes a file named @name (without any .tmp suffix) must hold."""
    head = ("%s:%d:" % (name, size)).encode()
    pattern = hashlib.sha256(name.encode()).digest()
    body = (pattern * (size // 32 + 1))[:max(0, size - len(head))]
    return (head + body)[:size]


# The load, run as separate processes so that they die with the mount. Each
# prints one line per thing done *after* the daemon confirmed it.
WRITER = r"""
import os, random, sys, hashlib
sys.path.insert(0, %(here)r)
from test_crash import expected
root, wid, seed, nmax = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
d = os.path.join(root, "w" + wid)
os.makedirs(d, exist_ok=True)
for i in range(nmax):
    name = "%%s-%%d-%%d" %% (wid, seed, i)
    size = rng.choice([64, 4096, 20000, 65536, 65537, 140000])
    path = os.path.join(d, name)
    try:
        with open(path + ".tmp", "wb") as f:
            data = expected(name, size)
            # in pieces, so a kill can land mid-file
            for off in range(0, size, 32768):
                f.write(data[off:off + 32768])
        os.rename(path + ".tmp", path)
    except OSError:
        sys.exit(0)
    print("W", os.path.join("w" + wid, name), flush=True)
"""

READER = r"""
import os, random, sys
sys.path.insert(0, %(here)r)
from test_crash import expected
root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
while True:
    try:
        ds = [d for d in os.listdir(root) if d.startswith("w")]
        if not ds:
            continue
        d = rng.choice(ds)
        names = [n for n in os.listdir(os.path.join(root, d)) if not n.endswith(".tmp")]
        for n in rng.sample(names, min(5, len(names))):
            try:
                with open(os.path.join(root, d, n), "rb") as f:
                    data = f.read()
            except OSError:
                continue
            size = int(data.split(b":")[1]) if data.count(b":") >= 2 else -1
            if data != expected(n, size):
                print("BAD", d, n, len(data), flush=True)
    except OSError:
        sys.exit(0)
"""

EVICTOR = r"""
import os, random, sys, time
root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
while True:
    try:
        ds = [d for d in os.listdir(root) if d.startswith("w")]
        if not ds:
            continue
        d = rng.choice(ds)
        names = [n for n in os.listdir(os.path.join(root, d)) if not n.endswith(".tmp")]
        if not names:
            continue
        n = rng.choice(names)
        # Said before trying: if the daemon dies with the request in flight,
        # the file may or may not be gone, and nothing is promised about it.
        print("T", os.path.join(d, n), flush=True)
        try:
            os.setxattr(os.path.join(root, d, n), "user.kvfs.evict", b"1")
        except OSError as e:
            if e.errno not in (2, 16, 1):  # gone, open, pinned
                sys.exit(0)
            print("N", os.path.join(d, n), flush=True)
        time.sleep(0.01)
    except OSError:
        sys.exit(0)
"""


class Crash(unittest.TestCase):
    def setUp(self):
        if not fuse_available():
            self.skipTest("no /dev/fuse or fusermount3")
        self.disk = tempfile.mkdtemp(prefix="kvfs-crash-", dir="/var/tmp")
        self.here = os.path.dirname(os.path.abspath(__file__))
        # Room for every round's files (~8 MiB a round): an NVMe eviction
        # would drop files the test counts as promised.
        nvme = "%dM" % max(1024, ROUNDS * 16)
        self.m = Mount(dram="16M", args=("--nvme", os.path.join(self.disk, "d0") + ":" + nvme,
                                         "--persist", "through"))

    def tearDown(self):
        self.m.close()
        shutil.rmtree(self.disk, ignore_errors=True)

    def spawn(self, script, *args):
        return subprocess.Popen([sys.executable, "-c", script % {"here": self.here},
                                 *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)

    def check_all(self, promised, rnd):
        seen = set()
        for d in os.listdir(self.m.mnt):
            if not d.startswith("w"):
                continue
            for n in os.listdir(os.path.join(self.m.mnt, d)):
                path = os.path.join(self.m.mnt, d, n)
                with open(path, "rb") as f:
                    data = f.read()
                name = n[:-4] if n.endswith(".tmp") else n
                parts = data.split(b":", 2)
                size = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1
                self.assertEqual(len(data), size, "round %d: %s is torn or short" % (rnd, path))
                self.assertEqual(data, expected(name, size), "round %d: %s" % (rnd, path))
                if not n.endswith(".tmp"):
                    seen.add(os.path.join(d, n))
        missing = sorted(promised - seen)
        nv = self.m.stats()["tiers"]["nvme"]
        self.assertLess(nv["used_bytes"], 0.9 * nv["capacity_bytes"],
                        "round %d: the NVMe tier is nearly full, so evictions may drop "
                        "promised files: give the test a bigger --nvme" % rnd)
        if missing:
            with open(os.path.join(self.disk, "log-at-failure"), "w") as f:
                f.write(self.m.log())
            self.fail("round %d: %d files promised durable are gone, e.g. %s (seed %d); "
                      "the daemon's log ends:\n%s" % (rnd, len(missing), missing[:5], SEED,
                                                    self.m.log()[-4000:]))

    def test_kill9_rounds(self):
        rng = random.Random(SEED)
        written, evicted = set(), set()
        for rnd in range(ROUNDS):
            self.m.start()
            self.check_all(written - evicted, rnd)
            procs = [self.spawn(WRITER, self.m.mnt, w, rng.randrange(1 << 30), 60)
                     for w in ("a", "b")]
            procs.append(self.spawn(READER, self.m.mnt, rng.randrange(1 << 30)))
            procs.append(self.spawn(EVICTOR, self.m.mnt, rng.randrange(1 << 30)))
            time.sleep(rng.uniform(0.05, 0.6))
            # The load dies on the dead mount (ENOTCONN) before it is detached:
            # after that its paths would be a plain directory it could write to.
            self.m.kill(detach=False)
            for p in procs:
                try:
                    out, _ = p.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    out, _ = p.communicate()
                for line in out.splitlines():
                    kind, _, rest = line.partition(" ")
                    if kind == "W":
                        written.add(rest)
                    elif kind == "T":  # evicted, or may have been
                        evicted.add(rest)
                    elif kind == "N":  # refused: still promised
                        evicted.discard(rest)
                    elif kind == "BAD":
                        self.fail("round %d: a reader saw wrong bytes: %s (seed %d)"
                                  % (rnd, rest, SEED))
            self.m.detach()
        self.m.start()
        self.check_all(written - evicted, ROUNDS)
        self.assertGreater(len(written), ROUNDS)  # the load did something
        self.m.stop()


if __name__ == "__main__":
    unittest.main()
