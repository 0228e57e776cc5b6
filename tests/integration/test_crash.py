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

In about half the rounds the fault seam (`.kvfs/fault`) is also armed
while the load runs: NVMe write, read and fsync errors and catalog write
errors, at a random call, sometimes sticky. A file written in such a round
is not promised durable (a write-through that failed leaves it in DRAM
only), but every file that is visible after the restart must still be
byte-exact, and the files promised in earlier rounds must survive. An error
the load gets in such a round is expected; a wrong byte never is.

Knobs (the defaults are CI's short run):
  KVFS_CRASH_ROUNDS   rounds to run (default 5; 300 for a soak:
                      `KVFS_CRASH_ROUNDS=300 KVFS_CRASH_SECONDS=840
                      python3 tests/integration/run.py crash`)
  KVFS_CRASH_SECONDS  a time budget: no new round starts after it (default
                      none); the rounds done are printed either way
  KVFS_CRASH_FAULTS   0 to run without fault injection (default 1)
  KVFS_CRASH_FAULT_OPS  the seam's operations to arm, comma-separated
                      (default nvme_write,nvme_read,nvme_fsync,cat_write)
  KVFS_CRASH_SEED     replays a run
Every round checks that the promised files are there and reads the files
written since the last full check and a sample of the others; every 25th
round and the last read everything.
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
SECONDS = float(os.environ.get("KVFS_CRASH_SECONDS", "0"))
FAULTS = os.environ.get("KVFS_CRASH_FAULTS", "1") != "0"
SEED = int(os.environ.get("KVFS_CRASH_SEED", str(int(time.time()))))
FULL_CHECK_EVERY = 25
SAMPLE = 200
# Errors a load process may get from an armed fault seam; anything else
# (ENOTCONN from the killed daemon above all) ends it.
FAULT_ERRNOS = (5, 28)  # EIO, ENOSPC
FAULT_OPS = tuple(os.environ.get("KVFS_CRASH_FAULT_OPS",
                                 "nvme_write,nvme_read,nvme_fsync,cat_write").split(","))


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
    except OSError as e:
        if e.errno in %(fault_errnos)r:
            continue  # an armed fault: this file is not promised
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
            # Said before reading: a read that fails on an armed fault may
            # drop the file (a cache may lose a file), and the daemon may die
            # before this process can say so.
            print("R", os.path.join(d, n), flush=True)
            try:
                with open(os.path.join(root, d, n), "rb") as f:
                    data = f.read()
            except OSError as e:
                if e.errno in %(fault_errnos)r or e.errno in (2, 16):
                    continue  # an armed fault, a file gone or still being written
                raise
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
            if e.errno not in (2, 16, 1) + %(fault_errnos)r:  # gone, open, pinned, fault
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
        code = script % {"here": self.here, "fault_errnos": FAULT_ERRNOS}
        return subprocess.Popen([sys.executable, "-c", code,
                                 *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)

    def check_file(self, path, n, rnd, promised=True):
        """@path holds exactly what its name says. A file not promised may
        instead fail to read with EIO: its copy was lost to an armed fault
        (a cache may lose a file; it may not return wrong bytes)."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            if e.errno != 5 or promised:
                self.fail("round %d: reading %s: %s (seed %d)" % (rnd, path, e, SEED))
            self.lost += 1
            return
        name = n[:-4] if n.endswith(".tmp") else n
        parts = data.split(b":", 2)
        size = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1
        self.assertEqual(len(data), size, "round %d: %s is torn or short" % (rnd, path))
        self.assertEqual(data, expected(name, size), "round %d: %s" % (rnd, path))

    def check_all(self, promised, rnd, full=True, checked=None, rng=None):
        """Every promised file is there; the files visible are byte-exact: all
        of them if @full, else those not in @checked and a sample of the rest.
        @return the set of names read."""
        seen, read, others = set(), set(), []
        for d in os.listdir(self.m.mnt):
            if not d.startswith("w"):
                continue
            for n in os.listdir(os.path.join(self.m.mnt, d)):
                rel = os.path.join(d, n)
                if full or checked is None or rel not in checked:
                    self.check_file(os.path.join(self.m.mnt, rel), n, rnd, rel in promised)
                    read.add(rel)
                else:
                    others.append(rel)
                if not n.endswith(".tmp"):
                    seen.add(rel)
        for rel in (rng.sample(others, min(SAMPLE, len(others))) if rng else ()):
            self.check_file(os.path.join(self.m.mnt, rel), os.path.basename(rel), rnd,
                            rel in promised)
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
        return read

    def arm_faults(self, rng):
        """Arm one or two faults of the seam. @return the specs."""
        specs = []
        for op in rng.sample(FAULT_OPS, min(len(FAULT_OPS), rng.choice((1, 1, 2)))):
            # the NVMe sees few calls in a round; the catalog many
            nth = rng.randint(1, 40 if op == "cat_write" else 6)
            spec = "%s:%d:%s" % (op, nth, rng.choice(("EIO", "EIO", "ENOSPC")))
            if rng.random() < 0.2:
                spec += ":sticky"
            specs.append(spec)
        with open(self.m.path(".kvfs", "fault"), "w") as f:
            f.write(",".join(specs))
        return specs

    def test_kill9_rounds(self):
        rng = random.Random(SEED)
        self.lost = 0
        written, evicted = set(), set()
        checked = set()
        t0 = time.time()
        rounds = fault_rounds = delivered = stored = 0
        while rounds < ROUNDS and (not SECONDS or time.time() - t0 < SECONDS):
            rnd = rounds
            self.m.start()
            full = rnd % FULL_CHECK_EVERY == 0
            read = self.check_all(written - evicted, rnd, full, checked, rng)
            checked = read if full else checked | read
            faulty = FAULTS and rng.random() < 0.5
            creates = self.m.stats()["creates"]
            procs = [self.spawn(WRITER, self.m.mnt, w, rng.randrange(1 << 30), 60)
                     for w in ("a", "b")]
            procs.append(self.spawn(READER, self.m.mnt, rng.randrange(1 << 30)))
            procs.append(self.spawn(EVICTOR, self.m.mnt, rng.randrange(1 << 30)))
            if faulty:
                self.arm_faults(rng)
                fault_rounds += 1
            # the kill lands at a random moment of the load, not before it
            # starts (starting Python takes a while on a busy machine)
            deadline = time.time() + 10
            while self.m.stats()["creates"] == creates and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.05, 0.6))
            if faulty:
                try:
                    delivered += sum(self.m.stats()["faults_injected"].values())
                except (OSError, ValueError, KeyError):
                    pass
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
                        stored += 1
                        if not faulty:
                            written.add(rest)
                    elif kind == "T":  # evicted, or may have been
                        evicted.add(rest)
                    elif kind == "R" and faulty:  # read with faults armed: may be lost
                        evicted.add(rest)
                    elif kind == "N":  # refused: still promised
                        evicted.discard(rest)
                    elif kind == "BAD":
                        self.fail("round %d: a reader saw wrong bytes: %s (seed %d)"
                                  % (rnd, rest, SEED))
            self.m.detach()
            rounds += 1
        self.m.start()
        self.check_all(written - evicted, rounds)
        sys.stderr.write("\ncrash: %d rounds (%d with faults armed, %d faults delivered) "
                         "in %.0f s, %d files promised, %d reads of unpromised files failed "
                         "with EIO, seed %d\n"
                         % (rounds, fault_rounds, delivered, time.time() - t0,
                            len(written - evicted), self.lost, SEED))
        self.assertGreater(stored, rounds // 2)  # the load did something
        self.m.stop()


if __name__ == "__main__":
    unittest.main()
