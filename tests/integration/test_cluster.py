"""The remote tier: kvfs nodes as one cache, through a real redis-server on
127.0.0.1 (the cluster index) and the libfabric tcp provider (the same code
path as verbs and efa).

Each test gets its own cluster: a fresh key prefix (--cluster-name) in the
class's Redis, three daemons with their own mounts and state, and a token
file. Publishing is asynchronous, so a reader on another node polls until a
file shows up (wait_for). Tests wait on conditions with a deadline and assert
on counters, never on how long something took: a loaded machine is slower,
not wrong.
"""
import errno
import hashlib
import os
import shutil
import json
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import unittest

from harness import (BUILD, KVFS, KVFSCTL, Mount, errno_of, fuse_available, read_file,
                     run_python_as, write_file)

MiB = 1 << 20


def content(name, size):
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // 32 + 1))[:size]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NOBODY = 65534

_CHILD = r"""
import json, os, sys
out = []
for op, path in json.loads(sys.argv[1]):
    try:
        if op == "read":
            with open(path, "rb") as f:
                out.append([0, len(f.read())])
        elif op == "listdir":
            out.append([0, sorted(os.listdir(path))])
        elif op == "create":
            with open(path, "wb") as f:
                f.write(b"x")
            out.append([0, 1])
    except OSError as e:
        out.append([e.errno, None])
print(json.dumps(out), flush=True)
"""


def run_as(uid, ops):
    """Run [(op, path)...] in a child as uid/gid @uid; return [[errno, result]...]."""
    return run_python_as(uid, _CHILD, json.dumps(ops))


def wait_for(fn, timeout=8.0, step=0.1):
    """Poll fn() until it returns a true value or @timeout seconds pass; return
    the last value. Tests wait on conditions, never for a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


class Redis:
    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="kvfs-redis-")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--logfile",
             os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ok = wait_for(lambda: self.cli("PING") == "PONG", timeout=10, step=0.05)
        if not ok:
            raise RuntimeError("redis-server did not start")
        return self

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def cli(self, *args):
        r = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                           text=True, timeout=10)
        return r.stdout.strip()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port


def have_redis():
    return shutil.which("redis-server") and shutil.which("redis-cli")


def start_fixture(cls, prefix):
    """A test class's shared parts: skip without FUSE or Redis, else a
    redis-server, a scratch directory and a cluster token file in it."""
    if not fuse_available():
        raise unittest.SkipTest("no /dev/fuse or fusermount3")
    if not have_redis():
        raise unittest.SkipTest("redis-server is not installed (make deps)")
    cls.redis = Redis().start()
    cls.tmp = tempfile.mkdtemp(prefix=prefix)
    cls.token = os.path.join(cls.tmp, "token")
    with open(cls.token, "w") as f:
        f.write("a-shared-secret-of-enough-length\n")


def stop_fixture(cls):
    cls.redis.close()
    shutil.rmtree(cls.tmp, ignore_errors=True)


class Cluster(unittest.TestCase):
    """Three nodes: a and b lend 32 MiB each, c lends nothing and has little DRAM."""
    timeout_ms = 1000

    @classmethod
    def setUpClass(cls):
        start_fixture(cls, "kvfs-cluster-")
        cls.bad_token = os.path.join(cls.tmp, "bad-token")
        with open(cls.bad_token, "w") as f:
            f.write("not-the-cluster-secret-at-all!!\n")

    @classmethod
    def tearDownClass(cls):
        stop_fixture(cls)

    def node(self, name, dram="64M", lend="32M", token=None, extra=()):
        args = ["--cluster", self.redis.url, "--cluster-name", self.cname,
                "--cluster-token", token or self.token, "--node-id", name,
                "--listen", "127.0.0.1:0", "--remote-timeout", str(self.timeout_ms), *extra]
        if lend:
            args += ["--lend", lend]
        m = Mount(dram=dram, args=args).start()
        self.mounts.append(m)
        return m

    def setUp(self):
        self.cname = "t%d" % (int(time.time() * 1000) % 10**9)
        self.mounts = []
        self.a = self.node("a")
        self.b = self.node("b")
        self.c = self.node("c", dram="16M", lend=None)
        # every node sees the others alive
        for m in self.mounts:
            self.assertTrue(wait_for(lambda m=m: m.stats()["remote"]["peers_alive"] >= 2),
                            "peers never saw each other")

    def tearDown(self):
        reports = []
        for m in self.mounts:
            reports.append(m.close())
        reports = "\n".join(r for r in reports if r)
        if reports:
            self.fail("the sanitizer reported:\n" + reports)

    def published(self, path, node):
        """Is @path in the index for @node?"""
        return self.redis.cli("HGET", "%s:f:%s" % (self.cname, path), node) != ""

    # --- tests ------------------------------------------------------------------
    def test_file_written_on_one_node_is_read_on_another(self):
        data = content("x", 3 * MiB + 123)
        os.makedirs(self.a.path("model", "layer"))
        write_file(self.a.path("model", "layer", "blk"), data)
        self.assertTrue(wait_for(lambda: self.published("model/layer/blk", "a")))
        # b has neither the directories nor the file: both come from the cluster
        got = read_file(self.b.path("model", "layer", "blk"))
        self.assertEqual(got, data)
        st = self.b.stats()["remote"]
        self.assertEqual(st["fetched"], 1)
        self.assertEqual(st["fetched_bytes"], len(data))
        self.assertEqual(st["dirs_created"], 2)
        self.assertGreaterEqual(self.a.stats()["remote"]["served"], 1)
        # now a local file on b: read again without the network
        self.assertEqual(read_file(self.b.path("model", "layer", "blk")), data)
        self.assertEqual(self.b.stats()["remote"]["fetched"], 1)
        self.assertEqual(os.getxattr(self.b.path("model", "layer", "blk"),
                                     "user.kvfs.tier").decode(), "dram")
        # and b offers it too
        self.assertTrue(wait_for(lambda: self.published("model/layer/blk", "b")))
        r = subprocess.run([KVFSCTL, "where", self.c.path("model", "layer", "blk")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("a ", r.stdout)
        self.assertIn("b ", r.stdout)
        # `where` did not fetch it to c
        self.assertEqual(self.c.stats()["remote"]["fetched"], 0)

    def test_missing_everywhere_is_a_miss(self):
        self.assertFalse(os.path.exists(self.b.path("nowhere")))
        self.assertEqual(errno_of(open, self.b.path("nowhere", "x"), "rb"), errno.ENOENT)
        self.assertGreaterEqual(self.b.stats()["remote"]["fetch_misses"], 1)
        # creating it locally works as ever
        write_file(self.b.path("nowhere"), b"here now")
        self.assertEqual(read_file(self.b.path("nowhere")), b"here now")

    def test_rename_and_unlink_update_the_index(self):
        write_file(self.a.path("f.tmp"), content("f", MiB))
        os.rename(self.a.path("f.tmp"), self.a.path("f"))
        self.assertTrue(wait_for(lambda: self.published("f", "a")))
        self.assertFalse(self.published("f.tmp", "a"))
        self.assertEqual(read_file(self.b.path("f")), content("f", MiB))
        os.mkdir(self.a.path("d"))
        write_file(self.a.path("d", "g"), b"g" * 1000)
        os.rename(self.a.path("d"), self.a.path("e"))
        self.assertTrue(wait_for(lambda: self.published("e/g", "a")))
        self.assertTrue(wait_for(lambda: not self.published("d/g", "a")))
        os.unlink(self.a.path("e", "g"))
        self.assertTrue(wait_for(lambda: not self.published("e/g", "a")))

    def test_offload_from_a_full_node_and_back(self):
        # c has 16 MiB of DRAM and no NVMe: what it must evict goes to a or b
        names = ["blk%02d" % i for i in range(40)]
        for n in names:
            write_file(self.c.path(n), content(n, MiB))
        st = self.c.stats()
        self.assertGreater(st["evictions"], 0)
        self.assertEqual(st["remote"]["spilled"], st["evictions"])
        received = (self.a.stats()["remote"]["offloads_received"] +
                    self.b.stats()["remote"]["offloads_received"])
        self.assertEqual(received, st["remote"]["spilled"])
        # the first files were evicted here; the cluster still has every one
        self.assertTrue(wait_for(lambda: self.published("blk00", "a") or
                                 self.published("blk00", "b")))
        for n in names:
            self.assertEqual(read_file(self.c.path(n)), content(n, MiB), n)
        self.assertGreater(self.c.stats()["remote"]["fetched"], 0)
        # and any node reads them
        for n in names[:5]:
            self.assertEqual(read_file(self.a.path(n)), content(n, MiB), n)

    def test_a_file_on_nvme_only_is_served(self):
        # d's DRAM holds 16 MiB: the first of 24 files are demoted to NVMe
        disk = tempfile.mkdtemp(prefix="kvfs-cluster-nvme-", dir="/var/tmp")
        self.addCleanup(shutil.rmtree, disk, True)
        d = self.node("d", dram="16M", lend=None,
                      extra=("--nvme", os.path.join(disk, "d0") + ":256M"))
        for m in self.mounts:
            self.assertTrue(wait_for(lambda m=m: m.stats()["remote"]["peers_alive"] >= 3))
        names = ["n%02d" % i for i in range(24)]
        for n in names:
            write_file(d.path(n), content(n, MiB))
        self.assertEqual(os.getxattr(d.path("n00"), "user.kvfs.tier").decode(), "nvme")
        # the index follows the demotion
        tier = lambda: self.redis.cli("HGET", "%s:f:n00" % self.cname, "d")
        self.assertTrue(wait_for(lambda: tier() == "nvme"), tier())
        promotions = d.stats()["promotions"]
        # b asks d, the only holder: d brings it into DRAM and serves it
        self.assertEqual(read_file(self.b.path("n00")), content("n00", MiB))
        st = d.stats()
        self.assertEqual(st["remote"]["refused"], 0)
        self.assertGreaterEqual(st["remote"]["served"], 1)
        self.assertEqual(st["promotions"], promotions + 1)
        self.assertIn("dram", os.getxattr(d.path("n00"), "user.kvfs.tier").decode())
        self.assertTrue(wait_for(lambda: tier() == "dram"), tier())  # and the promotion

    def test_offload_of_nvme_victims(self):
        # e holds 8 MiB in DRAM and 16 MiB on NVMe: what NVMe must drop goes to a or b
        disk = tempfile.mkdtemp(prefix="kvfs-cluster-nvme-", dir="/var/tmp")
        self.addCleanup(shutil.rmtree, disk, True)
        e = self.node("e", dram="8M", lend=None,
                      extra=("--nvme", os.path.join(disk, "d0") + ":16M"))
        for m in self.mounts:
            self.assertTrue(wait_for(lambda m=m: m.stats()["remote"]["peers_alive"] >= 3))
        names = ["v%02d" % i for i in range(40)]
        for n in names:
            write_file(e.path(n), content(n, MiB))
        st = e.stats()
        self.assertGreater(st["tiers"]["nvme"]["evictions"], 0)
        self.assertGreater(st["remote"]["spilled"], 0)
        self.assertEqual(st["remote"]["spill_failed"], 0)
        # 40 MiB written into 24 MiB of tiers: the cluster still has every file
        for n in names:
            self.assertEqual(read_file(e.path(n)), content(n, MiB), n)
        self.assertGreater(e.stats()["remote"]["fetched"], 0)

    def test_lent_memory_is_a_cache(self):
        # c spills 100 MiB into the 64 MiB that a and b lend: they drop their
        # least recently used copies for newer ones instead of refusing
        names = ["w%03d" % i for i in range(100)]
        for n in names:
            write_file(self.c.path(n), content(n, MiB))
        st = self.c.stats()["remote"]
        self.assertEqual(st["spill_failed"], 0)
        self.assertGreater(st["spilled"], 64)
        dropped = (self.a.stats()["remote"]["lent_evictions"] +
                   self.b.stats()["remote"]["lent_evictions"])
        self.assertGreater(dropped, 0)
        # what was dropped left the index; the newest spills are all there
        self.assertTrue(wait_for(lambda: not self.published("w000", "a") and
                                 not self.published("w000", "b")))
        for n in names[-30:]:
            self.assertEqual(read_file(self.c.path(n)), content(n, MiB), n)
        self.assertEqual(errno_of(open, self.c.path("w000"), "rb"), errno.ENOENT)

    def test_unlink_frees_lent_copies(self):
        for i in range(30):
            write_file(self.c.path("u%02d" % i), content("u%d" % i, MiB))
        lent = lambda: (self.a.stats()["remote"]["lend_used_bytes"] +
                        self.b.stats()["remote"]["lend_used_bytes"])
        self.assertGreater(lent(), 0)
        for i in range(30):
            os.unlink(self.c.path("u%02d" % i))  # fetched back first if evicted
        self.assertTrue(wait_for(lambda: lent() == 0), "lent copies stayed: %d" % lent())

    def test_peer_killed_during_transfers(self):
        names = ["k%d" % i for i in range(6)]
        for n in names:
            write_file(self.a.path(n), content(n, 8 * MiB))
        self.assertTrue(wait_for(lambda: all(self.published(n, "a") for n in names)))
        results = {}
        served = self.a.stats()["remote"]["served"]

        def reader():
            for n in names:
                try:
                    results[n] = read_file(self.b.path(n))
                except OSError as e:
                    results[n] = e.errno

        t = threading.Thread(target=reader)
        t.start()
        # a is in the middle of serving b when it dies
        self.assertTrue(wait_for(lambda: self.a.stats()["remote"]["served"] > served,
                                 step=0.005))
        self.a.kill(signal.SIGKILL)
        # every read ends (each is bounded by the remote timeout): never a hang
        t.join(60)
        self.assertFalse(t.is_alive(), "a read hung after the peer died")
        for n, r in results.items():
            if isinstance(r, bytes):
                self.assertEqual(r, content(n, 8 * MiB), n)  # whole or nothing
            else:
                self.assertIn(r, (errno.ENOENT, errno.EIO), n)
        self.assertTrue(self.b.alive())
        # once its heartbeat expires, the dead node's entries are ignored: no
        # transfer is even tried (nothing times out or fails in transit)
        self.assertTrue(wait_for(lambda: self.b.stats()["remote"]["peers_alive"] == 1 and
                                 self.c.stats()["remote"]["peers_alive"] == 1, timeout=30))
        tried = lambda: sum(m.stats()["remote"][k] for m in (self.b, self.c)
                            for k in ("timeouts", "conn_errors"))
        before = tried()
        self.assertFalse(os.path.exists(self.b.path("k5-never")))
        for n in names:
            if not isinstance(results[n], bytes):
                self.assertFalse(os.path.exists(self.c.path(n)))
        self.assertEqual(tried(), before)

    def test_redis_down_then_back(self):
        write_file(self.a.path("before"), b"b" * 5000)
        self.assertTrue(wait_for(lambda: self.published("before", "a")))
        self.redis.stop()
        try:
            # local service goes on; misses are fast; errors are counted
            write_file(self.a.path("during"), b"d" * 7000)
            self.assertEqual(read_file(self.a.path("during")), b"d" * 7000)
            # b's miss fails on the index at once: counted, no transfer tried
            st0 = self.b.stats()["remote"]
            self.assertFalse(os.path.exists(self.b.path("during")))
            st = self.b.stats()["remote"]
            self.assertGreater(st["redis_errors"], st0["redis_errors"])
            self.assertEqual((st["timeouts"], st["conn_errors"]),
                             (st0["timeouts"], st0["conn_errors"]))
            self.assertTrue(wait_for(lambda: self.a.stats()["remote"]["redis_errors"] > 0))
        finally:
            self.redis.start()  # empty: it kept nothing
        # every node resynchronises its entries
        self.assertTrue(wait_for(lambda: self.published("before", "a") and
                                 self.published("during", "a"), timeout=15))
        self.assertGreater(self.a.stats()["remote"]["resyncs"], 1)
        # b's kernel cached the miss for --negative-timeout: it shows up after
        self.assertTrue(wait_for(lambda: os.path.exists(self.b.path("during")), timeout=15))
        self.assertEqual(read_file(self.b.path("during")), b"d" * 7000)

    def test_wrong_token_is_refused(self):
        write_file(self.a.path("secret"), content("s", 2 * MiB))
        self.assertTrue(wait_for(lambda: self.published("secret", "a")))
        d = self.node("d", token=self.bad_token)
        # d knows where the file is (the index is no secret)...
        self.assertTrue(wait_for(lambda: d.stats()["remote"]["peers_alive"] >= 3))
        # ... but no holder gives it to d
        self.assertFalse(os.path.exists(d.path("secret")))
        st = d.stats()["remote"]
        self.assertEqual(st["fetched"], 0)
        self.assertTrue(wait_for(lambda: self.a.stats()["remote"]["auth_refused"] +
                                 self.b.stats()["remote"]["auth_refused"] > 0 or
                                 d.stats()["remote"]["auth_rejected"] > 0))
        # d's own files are never fetched by the real cluster either
        write_file(d.path("intruder"), b"i" * 4096)
        self.assertTrue(wait_for(lambda: self.published("intruder", "d")))
        self.assertFalse(os.path.exists(self.b.path("intruder")))
        self.assertEqual(read_file(self.b.path("secret")), content("s", 2 * MiB))

    def test_corruption_on_the_wire_is_caught(self):
        data = content("c", 4 * MiB)
        write_file(self.a.path("one"), data)
        self.assertTrue(wait_for(lambda: self.published("one", "a")))
        # a single holder whose bytes arrive corrupt: a miss, never wrong bytes
        with open(self.c.path(".kvfs", "fault"), "w") as f:
            f.write("net_read:1:5:sticky")
        self.assertEqual(errno_of(open, self.c.path("one"), "rb"), errno.ENOENT)
        self.assertGreater(self.c.stats()["remote"]["checksum_failures"], 0)
        with open(self.c.path(".kvfs", "fault"), "w") as f:
            f.write("net_read:0:5")  # disarm
        # two holders: the first transfer is corrupted, the next holder serves it
        self.assertEqual(read_file(self.b.path("one")), data)
        self.assertTrue(wait_for(lambda: self.published("one", "b")))

        def corrupt_once_then_look():
            # armed until a lookup reaches the daemon (c's kernel cached the
            # miss for --negative-timeout; until then nothing is fetched)
            with open(self.c.path(".kvfs", "fault"), "w") as f:
                f.write("net_read:1:5")
            return os.path.exists(self.c.path("one"))

        self.assertTrue(wait_for(corrupt_once_then_look, timeout=15))
        self.assertEqual(read_file(self.c.path("one")), data)
        st = self.c.stats()["remote"]
        self.assertGreaterEqual(st["checksum_failures"], 2)
        self.assertEqual(st["fetched"], 1)

    def test_permissions_travel_with_the_file(self):
        """Issue 11 item 5: owner, group and mode come from the node that holds the
        file, for the file and for the directories made for it."""
        if os.getuid() != 0:
            self.skipTest("needs root to run a child as another user")
        d = self.node("d", lend=None, extra=("-o", "allow_other"))
        os.chmod(d.base, 0o755)  # others may reach the mount point
        for m in self.mounts:
            self.assertTrue(wait_for(lambda m=m: m.stats()["remote"]["peers_alive"] >= 3))
        # on a, root makes a private directory and file, a public pair, and a
        # file that belongs to nobody and is private to it
        os.mkdir(self.a.path("priv"), 0o700)
        write_file(self.a.path("priv", "s"), b"root only")
        os.chmod(self.a.path("priv", "s"), 0o600)
        os.makedirs(self.a.path("pub", "sub"))
        os.chmod(self.a.path("pub"), 0o751)
        write_file(self.a.path("pub", "sub", "p"), b"for all")
        os.chmod(self.a.path("pub", "sub", "p"), 0o644)
        write_file(self.a.path("pub", "sub", "mine"), b"nobody's")
        os.chown(self.a.path("pub", "sub", "mine"), NOBODY, NOBODY)
        os.chmod(self.a.path("pub", "sub", "mine"), 0o600)
        for p in ("priv/s", "pub/sub/p", "pub/sub/mine"):
            self.assertTrue(wait_for(lambda p=p: self.published(p, "a")), p)
        # on d, an unprivileged user asks for all of them
        res = run_as(NOBODY, [("read", d.path("priv", "s")),
                              ("read", d.path("pub", "sub", "p")),
                              ("read", d.path("pub", "sub", "mine")),
                              ("create", d.path("pub", "sub", "new"))])
        self.assertEqual(res[0][0], errno.EACCES, res)
        self.assertEqual(res[1], [0, 7], res)
        self.assertEqual(res[2], [0, 8], res)
        self.assertEqual(res[3][0], errno.EACCES, res)  # sub is root's 0755, as on a
        self.assertEqual(d.stats()["remote"]["fetched"], 3)
        # what d made carries a's owner and mode
        want = {("priv",): (0o700, 0, stat.S_IFDIR), ("priv", "s"): (0o600, 0, stat.S_IFREG),
                ("pub",): (0o751, 0, stat.S_IFDIR), ("pub", "sub"): (0o755, 0, stat.S_IFDIR),
                ("pub", "sub", "p"): (0o644, 0, stat.S_IFREG),
                ("pub", "sub", "mine"): (0o600, NOBODY, stat.S_IFREG)}
        for parts, (mode, uid, kind) in want.items():
            got = lambda: os.stat(d.path(*parts))
            self.assertTrue(wait_for(lambda: (stat.S_IMODE(got().st_mode), got().st_uid) ==
                                     (mode, uid)), (parts, oct(got().st_mode), got().st_uid))
            self.assertEqual(stat.S_IFMT(got().st_mode), kind, parts)
            self.assertEqual(got().st_gid, NOBODY if uid == NOBODY else 0, parts)
        # and the kernel enforces them: the private directory cannot be listed
        res = run_as(NOBODY, [("listdir", d.path("priv")), ("read", d.path("priv", "s"))])
        self.assertEqual(res[0][0], errno.EACCES, res)
        self.assertEqual(res[1][0], errno.EACCES, res)

    def listen_addr(self, node):
        """The 127.0.0.1 port @node listens on, from its record in the index."""
        rec = self.redis.cli("GET", "%s:node:%s" % (self.cname, node)).split()
        raw = bytes.fromhex(rec[1])  # a sockaddr_in: family, port (big-endian), address
        return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")

    def test_connection_flood_leaves_room_for_peers(self):
        """Issue 11 item 8: idle connections to the listen port are cut down to
        --unproven-conns; the node keeps the descriptors its peers and its
        fast path need."""
        import resource
        d = self.node("d", lend=None, extra=("--unproven-conns", "8"))
        for m in self.mounts:
            self.assertTrue(wait_for(lambda m=m: m.stats()["remote"]["peers_alive"] >= 3))
        write_file(self.a.path("wanted"), content("wanted", MiB))
        self.assertTrue(wait_for(lambda: self.published("wanted", "a")))
        # the daemon gets 100 descriptors more than it uses; 300 connections come
        used = len(os.listdir("/proc/%d/fd" % d.pid))
        resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (used + 100, used + 100))
        host, port = self.listen_addr("d")
        flood = []
        try:
            for _ in range(300):
                s = socket.socket()
                s.settimeout(10)
                s.connect((host, port))
                flood.append(s)
            # the daemon cuts them down to 8 (and each after 10 s)
            cut = lambda: d.stats()["remote"]["conns_cut"]
            self.assertTrue(wait_for(lambda: cut() >= 292, timeout=30), cut())
            self.assertLess(len(os.listdir("/proc/%d/fd" % d.pid)), used + 100)
            # a peer's file is fetched, and the fast path registers
            self.assertEqual(read_file(d.path("wanted")), content("wanted", MiB))
            fpdrv = os.path.join(BUILD, "tests", "fpdrv")
            r = subprocess.run([fpdrv, "save", d.path("ns"), "fast", "1", "2"],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(json.loads(r.stdout.strip().splitlines()[-1])["fast"], 1,
                             r.stdout + r.stderr)
        finally:
            for s in flood:
                s.close()
        self.assertTrue(d.alive())

    def test_status_and_metrics_show_the_cluster(self):
        r = subprocess.run([KVFSCTL, "status", self.a.mnt], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("cluster    node a on tcp", r.stdout)
        for n in ("b", "c"):
            self.assertRegex(r.stdout, r"\n%s\s+alive" % n)
        r = subprocess.run([KVFSCTL, "where", self.a.path("nothing")], capture_output=True,
                           text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("held by no node", r.stdout)


class RemoteOptions(unittest.TestCase):
    """Bad remote-tier options: a one-line error and a non-zero exit."""

    def run_kvfs(self, *args):
        mnt = tempfile.mkdtemp(prefix="kvfs-opt-")
        try:
            return subprocess.run([KVFS, *args, mnt], capture_output=True, text=True, timeout=30)
        finally:
            subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
            shutil.rmtree(mnt, ignore_errors=True)

    def test_bad_options(self):
        cases = [
            (["--cluster", "redis://127.0.0.1:1"], "--cluster-token"),
            (["--cluster", "http://x", "--cluster-token", "/dev/null"], "invalid --cluster"),
            (["--fabric", "carrier-pigeon", "--listen", "127.0.0.1:0",
              "--cluster-token", "/dev/null"], "invalid --fabric"),
            (["--lend", "lots", "--listen", "127.0.0.1:0", "--cluster-token", "/dev/null"],
             "invalid --lend"),
            (["--lend", "1G"], "need --cluster"),
            (["--listen", "127.0.0.1:0", "--cluster-token", "/nonexistent/token"], "token"),
            (["--listen", "127.0.0.1:0", "--cluster-token", "/dev/null"], "token"),
            (["--listen", "127.0.0.1:0", "--cluster-token", "/dev/null", "--node-id", "a b"],
             "node"),
        ]
        for args, want in cases:
            r = self.run_kvfs(*args)
            self.assertNotEqual(r.returncode, 0, args)
            self.assertIn(want, r.stderr, args)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)


if __name__ == "__main__":
    unittest.main()
