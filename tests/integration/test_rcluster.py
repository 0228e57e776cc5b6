"""The cluster index on a Redis Cluster: 3 masters and 3 replicas of the
installed redis-server on loopback (--cluster-enabled yes, then
`redis-cli --cluster create ... --cluster-replicas 1`), given to the daemons
as --cluster redis-cluster://HOST:PORT,...

The remote tier's own tests (test_cluster.Cluster) run again on it, those
that do not stop Redis as a whole, and a master is killed while a node reads
files from its peers: reads go on, each returns the right bytes or a miss
while the slot has no master, and once the replica took over every file is
found again.
"""
import errno
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import test_cluster as base
from harness import errno_of, read_file, write_file
from test_cluster import MiB, content, wait_for


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class RedisCluster:
    """6 redis-servers in cluster mode, 3 masters with a replica each."""
    NODES = 6

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="kvfs-rcluster-")
        self.ports, self.procs = [], {}
        port = 30000 + (os.getpid() % 2000) * 5
        while len(self.ports) < self.NODES:
            # the cluster bus listens on port + 10000
            if port_free(port) and port_free(port + 10000):
                self.ports.append(port)
            port += 1

    def spawn(self, port):
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes-%d.conf" % port,
             "--cluster-node-timeout", "1000", "--repl-diskless-sync-delay", "0",
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--logfile", os.path.join(self.dir, "%d.log" % port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self):
        for p in self.ports:
            self.spawn(p)
        for p in self.ports:
            if not wait_for(lambda p=p: self.cli_at(p, "PING") == "PONG", timeout=10, step=0.05):
                raise RuntimeError("redis-server did not start")
        r = subprocess.run(["redis-cli", "--cluster", "create",
                            *["127.0.0.1:%d" % p for p in self.ports],
                            "--cluster-replicas", "1", "--cluster-yes"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode:
            raise RuntimeError("redis-cli --cluster create: " + r.stdout + r.stderr)
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout=30):
        """Every live node says the cluster is ok, and every replica is in sync
        (one that never synchronised cannot take over)."""
        def ok():
            for p in self.live():
                if "cluster_state:ok" not in self.cli_at(p, "CLUSTER", "INFO"):
                    return False
                info = self.cli_at(p, "INFO", "replication")
                if "role:slave" in info and ("master_link_status:up" not in info or
                                             "master_sync_in_progress:0" not in info):
                    return False
            return True
        if not wait_for(ok, timeout=timeout, step=0.1):
            raise RuntimeError("the redis cluster did not become healthy")

    def live(self):
        return [p for p in self.ports if self.procs.get(p)]

    def cli_at(self, port, *args):
        r = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                           text=True, timeout=10)
        return r.stdout.strip()

    def cli(self, *args):
        """A command through any live node, following redirects (-c)."""
        return self.cli_at(self.live()[0], "-c", *args)

    def masters(self):
        return [p for p in self.live()
                if "role:master" in self.cli_at(p, "INFO", "replication")]

    def master_of(self, key):
        slot = int(self.cli_at(self.live()[0], "CLUSTER", "KEYSLOT", key))
        for line in self.cli_at(self.live()[0], "CLUSTER", "NODES").splitlines():
            f = line.split()
            if "master" not in f[2] or "fail" in f[2]:
                continue
            for rng in f[8:]:
                lo, _, hi = rng.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(f[1].split("@")[0].rsplit(":", 1)[1])
        return None

    def kill(self, port):
        self.procs[port].kill()
        self.procs[port].wait()
        self.procs[port] = None

    def stop(self):
        for p in self.live():
            self.kill(p)

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self):
        return "redis-cluster://" + ",".join("127.0.0.1:%d" % p for p in self.ports[:3])


class RedisClusterIndex(base.Cluster):
    """test_cluster.Cluster with its index on a Redis Cluster."""

    @classmethod
    def setUpClass(cls):
        if not base.fuse_available():
            raise unittest.SkipTest("no /dev/fuse or fusermount3")
        if not base.have_redis():
            raise unittest.SkipTest("redis-server is not installed (make deps)")
        super().setUpClass()  # a single server, unused: replaced below
        cls.redis.close()
        cls.redis = RedisCluster().start()

    # Redis as a whole going down is the single server's test; the cluster's
    # is a master failing over (below). The rest is covered by test_cluster.
    test_redis_down_then_back = None
    test_lent_memory_is_a_cache = None
    test_unlink_frees_lent_copies = None
    test_peer_killed_during_transfers = None
    test_wrong_token_is_refused = None
    test_corruption_on_the_wire_is_caught = None
    test_offload_of_nvme_victims = None

    def test_index_keys_spread_over_the_masters(self):
        names = ["s/%03d" % i for i in range(60)]
        os.makedirs(self.a.path("s"))
        for n in names:
            write_file(self.a.path(n), content(n, 4096))
        self.assertTrue(wait_for(lambda: all(self.published(n, "a") for n in names)))
        masters = self.redis.masters()
        self.assertEqual(len(masters), 3)
        for p in masters:
            self.assertGreater(int(self.redis.cli_at(p, "DBSIZE")), 5, p)
        self.assertEqual(read_file(self.b.path("s", "042")), content("s/042", 4096))

    def test_master_failover_mid_run(self):
        names = ["fo%02d" % i for i in range(40)]
        for n in names:
            write_file(self.a.path(n), content(n, 256 * 1024))
        self.assertTrue(wait_for(lambda: all(self.published(n, "a") for n in names)))
        victim = self.redis.master_of("%s:f:%s" % (self.cname, names[20]))
        self.assertIsNotNone(victim)
        results = {}

        def reader():
            for n in names:
                try:
                    results[n] = read_file(self.b.path(n))
                except OSError as e:
                    results[n] = e.errno
                time.sleep(0.05)

        t = threading.Thread(target=reader)
        t.start()
        time.sleep(0.5)
        self.redis.kill(victim)  # mid-run
        t.join(120)
        self.assertFalse(t.is_alive(), "a read hung while a master failed over")
        for n, r in results.items():
            if isinstance(r, bytes):
                self.assertEqual(r, content(n, 256 * 1024), n)  # never wrong bytes
            else:
                self.assertEqual(r, errno.ENOENT, n)  # a miss at worst
        self.assertTrue(self.b.alive() and self.a.alive())
        # the replica takes over; a's entries are all there again (its
        # resync rewrites what the asynchronous replica had not got)
        self.assertTrue(wait_for(lambda: all(self.published(n, "a") for n in names),
                                 timeout=30))
        for n in names:  # c never looked: no cached misses
            self.assertEqual(read_file(self.c.path(n)), content(n, 256 * 1024), n)
        st = self.c.stats()["remote"]
        self.assertEqual(st["checksum_failures"], 0)
        self.assertGreater(self.b.stats()["remote"]["index_map_refreshes"], 1)
        # the killed master comes back as a replica of the one that replaced it
        self.redis.spawn(victim)
        self.redis.wait_healthy()
        self.assertIn("role:slave", self.redis.cli_at(victim, "INFO", "replication"))

    def test_a_plain_server_is_not_a_cluster(self):
        single = base.Redis().start()
        self.addCleanup(single.close)
        m = base.Mount(args=["--cluster", "redis-cluster://127.0.0.1:%d" % single.port,
                             "--cluster-token", self.token, "--node-id", "x",
                             "--listen", "127.0.0.1:0"]).start()
        self.mounts.append(m)
        write_file(m.path("f"), b"local")  # it serves locally, counting errors
        self.assertEqual(read_file(m.path("f")), b"local")
        self.assertTrue(wait_for(lambda: m.stats()["remote"]["redis_errors"] > 0))
        self.assertEqual(errno_of(open, m.path("elsewhere"), "rb"), errno.ENOENT)
        self.assertIn("cluster support disabled", m.log())


if __name__ == "__main__":
    unittest.main()
