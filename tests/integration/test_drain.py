"""Elastic membership: nodes that leave gracefully (`kvfsctl drain`, SIGTERM
with --drain), that join, and that are killed mid-drain. Three daemons on
real mounts with a real redis-server (test_cluster's fixture): a and b lend
32 MiB each, c has 16 MiB of DRAM and lends nothing, so what c evicts is
spilled into a's and b's lent memory.
"""
import errno
import json
import os
import signal
import subprocess
import time

import test_cluster as base
from harness import KVFSCTL, errno_of, read_file, write_file
from test_cluster import MiB, content, wait_for


class Drain(base.Cluster):

    def spill_from_c(self, prefix, n):
        """c writes @n 1 MiB files; the first ones are evicted into a and b."""
        names = ["%s%02d" % (prefix, i) for i in range(n)]
        for name in names:
            write_file(self.c.path(name), content(name, MiB))
        return names

    def lent_on(self, m, names):
        return [n for n in names if self.redis.cli("HGET", "%s:f:%s" % (self.cname, n),
                                                   m) == "lent"]

    def kvfsctl(self, *args):
        return subprocess.run([KVFSCTL, *args], capture_output=True, text=True, timeout=120)

    def test_drain_hands_over_and_leaves(self):
        # (sized so that b's 32 MiB take everything: no lent copy is dropped
        # for a newer one, which would be a cache doing its job, not a loss)
        spilled = self.spill_from_c("c", 22)
        self.assertTrue(wait_for(lambda: self.lent_on("a", spilled)))
        on_a = self.lent_on("a", spilled)
        # a's own files: six only it has, hot ones read again; one b has too
        own = ["own%02d" % i for i in range(6)]
        for n in own:
            write_file(self.a.path(n), content(n, MiB))
        for n in own[:3]:
            for _ in range(3):
                self.assertEqual(read_file(self.a.path(n)), content(n, MiB))
        write_file(self.a.path("shared"), content("shared", MiB))
        self.assertTrue(wait_for(lambda: self.published("shared", "a")))
        self.assertEqual(read_file(self.b.path("shared")), content("shared", MiB))
        self.assertTrue(wait_for(lambda: self.published("shared", "b") and
                                 all(self.published(n, "a") for n in own)))
        received_b = self.b.stats()["remote"]["offloads_received"]

        r = self.kvfsctl("drain", self.a.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("drained", r.stdout)
        d = self.a.stats()["drain"]
        self.assertEqual(d["state"], "drained")
        self.assertEqual(d["lent_copies"], len(on_a))
        self.assertEqual(d["lent_moved"], len(on_a))
        self.assertEqual(d["files_only_here"], len(own))  # not "shared": b has it
        self.assertEqual(d["files_moved"], len(own))
        self.assertEqual(d["lent_failed"] + d["files_failed"] + d["files_no_room"], 0)
        self.assertEqual(self.b.stats()["remote"]["offloads_received"],
                         received_b + len(on_a) + len(own))
        self.assertEqual(self.b.stats()["remote"]["lent_evictions"], 0)
        # a is out: no entry of it, no heartbeat, dead to the others
        for n in spilled + own + ["shared"]:
            self.assertFalse(self.published(n, "a"), n)
        self.assertEqual(self.redis.cli("EXISTS", "%s:node:a" % self.cname), "0")
        for m in (self.b, self.c):
            self.assertTrue(wait_for(lambda m=m: m.stats()["remote"]["peers_alive"] == 1))
        # ... and what it held lives on at b: c's spills, a's own files
        # (b publishes what it received asynchronously)
        self.assertTrue(wait_for(lambda: len(self.lent_on("b", on_a + own)) ==
                                 len(on_a + own)), self.lent_on("b", on_a + own))
        for n in spilled:
            self.assertEqual(read_file(self.c.path(n)), content(n, MiB), n)
        for n in own:
            self.assertEqual(read_file(self.c.path(n)), content(n, MiB), n)
        # a serves its own files locally still, outside the cluster
        self.assertEqual(read_file(self.a.path("own05")), content("own05", MiB))
        self.assertIsNone(self.a.stats().get("remote"))
        r = self.kvfsctl("status", self.a.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("drain      drained: %d/%d lent copies" % (len(on_a), len(on_a)), r.stdout)
        # no more offloads go to a
        received_a = self.a.stats().get("remote", {}).get("offloads_received", 0)
        self.spill_from_c("late", 20)
        self.assertEqual(self.a.stats().get("remote", {}).get("offloads_received", 0),
                         received_a)
        # a second drain is a no-op; --json gives the figures
        r = self.kvfsctl("--json", "drain", self.a.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["files_moved"], len(own))

    def test_drain_needs_a_cluster_and_root(self):
        from harness import Mount
        m = Mount().start()
        self.mounts.append(m)
        r = self.kvfsctl("drain", m.mnt)
        self.assertEqual(r.returncode, 1)
        self.assertIn("not in a cluster", r.stderr)
        self.assertEqual(os.stat(self.a.path(".kvfs", "drain")).st_mode & 0o777, 0o200)
        r = self.kvfsctl("drain")
        self.assertEqual(r.returncode, 2)

    def test_sigterm_with_drain(self):
        d = self.node("d", extra=("--drain",))
        for m in self.mounts:
            self.assertTrue(wait_for(lambda m=m: m.stats()["remote"]["peers_alive"] >= 3))
        names = ["d%02d" % i for i in range(8)]
        for n in names:
            write_file(d.path(n), content(n, 512 * 1024))
        self.assertTrue(wait_for(lambda: all(self.published(n, "d") for n in names)))
        d.kill(signal.SIGTERM)  # graceful: drains, then leaves
        self.assertIn("drained", d.log())
        # the new holders publish asynchronously: c looks once they did
        # (a miss would stay in its kernel's negative cache for a second)
        self.assertTrue(wait_for(lambda: all(self.lent_on("a", [n]) or self.lent_on("b", [n])
                                             for n in names)))
        for n in names:
            self.assertFalse(self.published(n, "d"), n)
            self.assertEqual(read_file(self.c.path(n)), content(n, 512 * 1024), n)

    def test_a_joining_node_receives_offloads(self):
        self.spill_from_c("x", 24)
        e = self.node("e")
        for m in self.mounts:
            self.assertTrue(wait_for(lambda m=m: m.stats()["remote"]["peers_alive"] >= 3))
        # the next placement decisions include e (the ring is rebuilt on join)
        names = self.spill_from_c("y", 40)
        self.assertGreater(e.stats()["remote"]["offloads_received"], 0)
        self.assertTrue(self.lent_on("e", names))
        for n in self.lent_on("e", names)[:3]:
            self.assertEqual(read_file(self.c.path(n)), content(n, MiB), n)

    def test_kill_during_drain_leaves_the_cluster_consistent(self):
        spilled = self.spill_from_c("k", 30)
        own = ["mine%02d" % i for i in range(24)]
        for n in own:
            write_file(self.a.path(n), content(n, MiB))
        self.assertTrue(wait_for(lambda: all(self.published(n, "a") for n in own)))
        fd = os.open(self.a.path(".kvfs", "drain"), os.O_WRONLY)
        os.write(fd, b"drain")
        os.close(fd)
        time.sleep(0.02)  # mid-drain
        self.a.kill(signal.SIGKILL)
        # what a left behind expires with its heartbeat; nothing wrong is served
        time.sleep(3 * self.timeout_ms / 1000 + 0.5)
        for m in (self.b, self.c):
            self.assertTrue(wait_for(lambda m=m: m.stats()["remote"]["peers_alive"] == 1))
        for n in spilled + own:
            try:
                data = read_file(self.c.path(n))
            except OSError as e:
                self.assertEqual(e.errno, errno.ENOENT, n)  # lost with a: a miss
                continue
            self.assertEqual(data, content(n, MiB), n)
        st = self.c.stats()["remote"]
        self.assertEqual(st["checksum_failures"], 0)
        # whatever b received is in the index under b
        for n in self.lent_on("b", spilled + own):
            self.assertEqual(read_file(self.b.path(n)), content(n, MiB), n)

    def test_unmount_during_drain(self):
        own = ["u%02d" % i for i in range(24)]
        for n in own:
            write_file(self.a.path(n), content(n, MiB))
        self.assertTrue(wait_for(lambda: all(self.published(n, "a") for n in own)))
        fd = os.open(self.a.path(".kvfs", "drain"), os.O_WRONLY)
        os.write(fd, b"drain")
        os.close(fd)
        # the shut-down and the drain's own leaving meet: one of them stops the
        # remote tier, the process exits cleanly (the sanitizers would say)
        self.a.stop()
        self.assertIsNone(self.a.pid)
        for m in (self.b, self.c):
            self.assertTrue(wait_for(lambda m=m: m.stats()["remote"]["peers_alive"] == 1))
        for n in own:
            self.assertFalse(self.published(n, "a"), n)


# Only the tests above: test_cluster runs the fixture's own.
for _name in dir(base.Cluster):
    if _name.startswith("test_") and _name not in Drain.__dict__:
        setattr(Drain, _name, None)
