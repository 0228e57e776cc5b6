"""Disaggregated serving (DESIGN §9) on real mounts with a real redis-server:
prefetch, KV-aware routing (cluster prefix match), prefill -> decode handoff
in the reference engine (pull and push), and push fallback.

Nodes are kvfs daemons on 127.0.0.1 over the libfabric tcp provider, as in
test_cluster.py (whose Redis helper this file uses). Outcomes are read from
the daemons' counters, the index and the engine's --json output, never from
timing.
"""
import json
import os
import pwd
import subprocess
import time
import unittest

import kvblock
from harness import BUILD, KVFSCTL, Mount, reachable_copy, read_file, write_file
from test_cluster import MiB, content, start_fixture, stop_fixture, wait_for

KVFS_LLM = os.path.join(BUILD, "bin", "kvfs-llm")
KVFS_GENMODEL = os.path.join(BUILD, "bin", "kvfs-genmodel")


def ctl(*args, user=None, check=True):
    """Run kvfsctl; parse --json output. Returns (rc, parsed or text, stderr)."""
    kw = {}
    if user is not None:
        pw = pwd.getpwnam(user)

        def drop():
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
        kw["preexec_fn"] = drop
    # Another user may not reach this checkout's build folder (a clone under
    # a 0700 directory): run a copy it can reach, from /.
    prog = KVFSCTL if user is None else reachable_copy(KVFSCTL)
    if user is not None:
        kw["cwd"] = "/"
    r = subprocess.run([prog, *args], capture_output=True, text=True, timeout=60, **kw)
    out = r.stdout
    if "--json" in args and r.returncode == 0:
        out = json.loads(out)
    return r.returncode, out, r.stderr


class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        start_fixture(cls, "kvfs-disagg-")

    @classmethod
    def tearDownClass(cls):
        stop_fixture(cls)

    def setUp(self):
        self.cname = "d%d" % (int(time.time() * 1000) % 10**9)
        self.mounts = []

    def tearDown(self):
        reports = [m.close() for m in self.mounts]
        reports = "\n".join(r for r in reports if r)
        if reports:
            self.fail("the sanitizer reported:\n" + reports)

    def node(self, name, dram="64M", lend="32M", extra=(), cluster=True):
        args = list(extra)
        if cluster:
            args += ["--cluster", self.redis.url, "--cluster-name", self.cname,
                     "--cluster-token", self.token, "--node-id", name,
                     "--listen", "127.0.0.1:0", "--remote-timeout", "1000"]
            if lend:
                args += ["--lend", lend]
        m = Mount(dram=dram, args=args).start()
        self.mounts.append(m)
        return m

    def peers(self, n):
        for m in self.mounts:
            self.assertTrue(wait_for(lambda m=m: m.stats()["remote"]["peers_alive"] >= n - 1),
                            "peers never saw each other")

    def published(self, path, node):
        return self.redis.cli("HGET", "%s:f:%s" % (self.cname, path), node)


class Prefetch(Base):
    def test_prefetch_from_a_peer_counts_missing_names(self):
        a, b = self.node("a"), self.node("b")
        self.peers(2)
        os.makedirs(a.path("m", "r0"))
        names = ["blk%d" % i for i in range(6)]
        for n in names:
            write_file(a.path("m", "r0", n), content(n, MiB + 17))
        for n in names:
            self.assertTrue(wait_for(lambda n=n: self.published("m/r0/" + n, "a")))
        paths = [b.path("m", "r0", n) for n in names] + [b.path("m", "r0", "nope"),
                                                           b.path("nowhere", "x")]
        rc, out, err = ctl("--json", "prefetch", "--wait", *paths)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out["queued"], 6)
        self.assertEqual(out["missing"], 2)
        self.assertEqual(out["fetched"], 6)
        self.assertEqual(out["failed"], 0)
        st = b.stats()
        self.assertEqual(st["prefetch"]["fetched"], 6)
        self.assertEqual(st["prefetch"]["missing"], 2)
        self.assertEqual(st["prefetch"]["bytes"], 6 * (MiB + 17))
        self.assertEqual(st["remote"]["fetched"], 6)
        for n in names:  # local now, in DRAM, byte-exact, no more network
            self.assertEqual(os.getxattr(b.path("m", "r0", n), "user.kvfs.tier"), b"dram")
            self.assertEqual(read_file(b.path("m", "r0", n)), content(n, MiB + 17))
        self.assertEqual(b.stats()["remote"]["fetched"], 6)
        rc, text, err = ctl("status", b.mnt)
        self.assertEqual(rc, 0, err)
        self.assertIn("prefetch   8 paths: 6 queued, 0 present, 2 missing", text)
        # a second prefetch finds them present
        rc, out, err = ctl("--json", "prefetch", *paths[:6])
        self.assertEqual((rc, out["present"], out["queued"]), (0, 6, 0), err)

    def test_prefetch_is_asynchronous(self):
        a, b = self.node("a"), self.node("b")
        self.peers(2)
        for i in range(4):
            write_file(a.path("f%d" % i), content("f%d" % i, 2 * MiB))
            self.assertTrue(wait_for(lambda i=i: self.published("f%d" % i, "a")))
        rc, out, err = ctl("--json", "prefetch", *[b.path("f%d" % i) for i in range(4)])
        self.assertEqual((rc, out["queued"]), (0, 4), err)
        self.assertNotIn("fetched", out)
        self.assertTrue(wait_for(lambda: b.stats()["prefetch"]["fetched"] == 4))
        for i in range(4):
            self.assertEqual(read_file(b.path("f%d" % i)), content("f%d" % i, 2 * MiB))

    def test_prefetch_promotes_from_nvme_and_never_evicts_pinned_or_open(self):
        nv = os.path.join(self.tmp, "nvme-%s" % self.cname)
        os.makedirs(nv)
        m = self.node("solo", dram="8M", extra=["--nvme", nv + ":128M", "--prefetch-bytes", "32M"],
                      cluster=False)
        write_file(m.path("pinned"), content("p", MiB))
        os.setxattr(m.path("pinned"), "user.kvfs.pin", b"1")
        write_file(m.path("open"), content("o", MiB))
        held = open(m.path("open"), "rb")
        try:
            names = ["n%02d" % i for i in range(20)]
            for n in names:  # 20 MiB through 8 MiB of DRAM: most go down to NVMe
                write_file(m.path(n), content(n, MiB))
            cold = [n for n in names if os.getxattr(m.path(n), "user.kvfs.tier") == b"nvme"]
            self.assertGreaterEqual(len(cold), 10)
            # four fit: all four end up in DRAM
            rc, out, err = ctl("--json", "prefetch", "--wait", *[m.path(n) for n in cold[:4]])
            self.assertEqual(rc, 0, err)
            self.assertEqual((out["queued"], out["promoted"], out["missing"]), (4, 4, 0))
            for n in cold[:4]:
                self.assertIn(b"dram", os.getxattr(m.path(n), "user.kvfs.tier"))
            self.assertEqual(m.stats()["prefetch"]["promoted"], 4)
            # all of them do not: DRAM turns over, but never the pinned or the open file
            rc, out, err = ctl("--json", "prefetch", "--wait", *[m.path(n) for n in cold])
            self.assertEqual(rc, 0, err)
            self.assertEqual(out["missing"], 0)
            # the pinned and the open file kept their DRAM through all that
            self.assertIn(b"dram", os.getxattr(m.path("pinned"), "user.kvfs.tier"))
            self.assertIn(b"dram", os.getxattr(m.path("open"), "user.kvfs.tier"))
            self.assertEqual(held.read(), content("o", MiB))
            self.assertEqual(read_file(m.path("pinned")), content("p", MiB))
        finally:
            held.close()

    def test_prefetch_is_bounded_in_bytes(self):
        nv = os.path.join(self.tmp, "nvme-b-%s" % self.cname)
        os.makedirs(nv)
        m = self.node("solo", dram="8M", extra=["--nvme", nv + ":128M", "--prefetch-bytes",
                                                "3M", "--prefetch-threads", "1"], cluster=False)
        names = ["n%02d" % i for i in range(16)]
        for n in names:
            write_file(m.path(n), content(n, MiB))
        cold = [n for n in names if os.getxattr(m.path(n), "user.kvfs.tier") == b"nvme"]
        self.assertGreaterEqual(len(cold), 6)
        rc, out, err = ctl("--json", "prefetch", *[m.path(n) for n in cold])
        self.assertEqual(rc, 0, err)
        # at most 3 MiB queued or in flight: the rest dropped and counted
        self.assertLessEqual(out["queued"], 3)
        self.assertEqual(out["queued"] + out["dropped"], len(cold))
        self.assertEqual(m.stats()["prefetch"]["dropped"], out["dropped"])

    def test_prefetch_only_what_the_caller_could_read(self):
        nv = os.path.join(self.tmp, "nvme-p-%s" % self.cname)
        os.makedirs(nv)
        m = self.node("solo", dram="4M", extra=["--nvme", nv + ":64M", "-o", "allow_other",
                                                "--prefetch-bytes", "16M"], cluster=False)
        os.chmod(m.base, 0o755)
        os.chmod(m.mnt, 0o755)
        os.makedirs(m.path("open"))
        os.makedirs(m.path("closed"))
        os.chmod(m.path("open"), 0o755)
        os.chmod(m.path("closed"), 0o700)
        write_file(m.path("open", "public"), content("pub", MiB))
        os.chmod(m.path("open", "public"), 0o644)
        write_file(m.path("open", "secret"), content("sec", MiB))
        os.chmod(m.path("open", "secret"), 0o600)
        write_file(m.path("closed", "inside"), content("in", MiB))
        os.chmod(m.path("closed", "inside"), 0o644)
        for i in range(8):  # push those three down to NVMe
            write_file(m.path("fill%d" % i), content("fill%d" % i, MiB))
        for p in (("open", "public"), ("open", "secret"), ("closed", "inside")):
            self.assertEqual(os.getxattr(m.path(*p), "user.kvfs.tier"), b"nvme")
        rc, out, err = ctl("--json", "prefetch", "--wait", m.path("open", "public"),
                           m.path("open", "secret"), m.path("closed", "inside"), user="nobody")
        self.assertEqual(rc, 0, err)
        self.assertEqual((out["queued"], out["denied"], out["promoted"]), (1, 2, 1))
        self.assertIn(b"dram", os.getxattr(m.path("open", "public"), "user.kvfs.tier"))
        self.assertEqual(os.getxattr(m.path("open", "secret"), "user.kvfs.tier"), b"nvme")
        self.assertEqual(os.getxattr(m.path("closed", "inside"), "user.kvfs.tier"), b"nvme")
        self.assertEqual(m.stats()["prefetch"]["denied"], 2)
        # a path that tries to leave the tree, or names the control directory
        rc, out, err = ctl("--json", "prefetch", m.path(".kvfs", "stats"))
        self.assertEqual((rc, out["queued"], out["missing"]), (0, 0, 1), err)
        fd = os.open(m.path(".kvfs", "prefetch"), os.O_RDWR)
        try:
            os.write(fd, b"../x\nopen/../closed/inside\n.kvfs/stats\n/open//public\n"
                         b"open/\x00public\n" + b"a" * 300 + b"\nopen/public\n")
            ans = dict(l.split(" ", 1) for l in os.pread(fd, 4096, 0).decode().splitlines())
        finally:
            os.close(fd)
        self.assertEqual(ans["invalid"], "6")
        self.assertEqual(ans["present"], "1")  # open/public: in DRAM now
        # a path below a file is no path
        rc, out, err = ctl("--json", "prefetch", m.path("open", "public", "x"))
        self.assertEqual((rc, out["present"], out["queued"], out["missing"]), (0, 0, 0, 1), err)


class Route(Base):
    def chain_files(self, m, name, ns, keys, upto):
        os.makedirs(m.path(ns), exist_ok=True)
        for k in keys[:upto]:
            write_file(m.path(ns, k.hex()), b"block " + k)
        for k in keys[:upto]:
            self.assertTrue(wait_for(lambda k=k: self.published("%s/%s" % (ns, k.hex()), name)))

    def test_route_by_longest_cached_prefix(self):
        a, b, c = self.node("a"), self.node("b"), self.node("c")
        self.peers(3)
        tokens = list(range(1000, 1000 + 16 * 10 + 5))  # 10 full blocks
        keys = kvblock.chain("0", tokens, 16)
        self.assertEqual(len(keys), 10)
        self.chain_files(a, "a", "llama", keys, 8)
        # b reads blocks 0-2 and 5 (fetched from a: it holds them too); its prefix is 3
        for i in (0, 1, 2, 5):
            self.assertEqual(read_file(b.path("llama", keys[i].hex())), b"block " + keys[i])
            self.assertTrue(wait_for(lambda i=i: self.published("llama/" + keys[i].hex(), "b")))
        tf = os.path.join(self.tmp, "tokens-%s.json" % self.cname)
        with open(tf, "w") as f:
            json.dump(tokens, f)
        rc, out, err = ctl("--json", "route", c.path("llama"), "--tokens", tf)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out["blocks"], 10)
        self.assertEqual([(n["node"], n["blocks"]) for n in out["nodes"]], [("a", 8), ("b", 3)])
        self.assertEqual(out["nodes"][0]["tokens"], 128)
        self.assertEqual(out["nodes"][0]["tier"], "dram")
        self.assertEqual(out["route"], "a")
        # the same by keys; and human output
        kf = os.path.join(self.tmp, "keys-%s" % self.cname)
        with open(kf, "w") as f:
            f.write("".join(k.hex() + "\n" for k in keys))
        rc, text, err = ctl("route", c.path("llama"), "--keys", kf)
        self.assertEqual(rc, 0, err)
        self.assertIn("route: a", text)
        # routing never fetched anything to c
        self.assertEqual(c.stats()["remote"]["fetched"], 0)
        self.assertEqual(c.stats()["cluster_matches"], 2)
        # a dead node drops out of the answer
        a.kill()
        self.mounts.remove(a)
        self.assertTrue(wait_for(lambda: ctl("--json", "route", c.path("llama"), "--tokens",
                                             tf)[1]["route"] == "b", timeout=10))

    def test_route_with_the_index_unreachable(self):
        a = self.node("a")
        self.peers(1)
        tf = os.path.join(self.tmp, "tok-%s" % self.cname)
        with open(tf, "w") as f:
            f.write(" ".join(str(t) for t in range(64)))
        self.redis.stop()
        try:
            rc, out, err = ctl("route", a.path("ns"), "--tokens", tf)
            self.assertEqual(rc, 1)
            self.assertIn("index is unreachable", err)
            # the local cache still works
            write_file(a.path("local"), b"still here")
            self.assertEqual(read_file(a.path("local")), b"still here")
        finally:
            self.redis.start()

    def test_route_bad_input(self):
        a = self.node("a", cluster=False)
        bad = os.path.join(self.tmp, "bad-%s" % self.cname)
        with open(bad, "w") as f:
            f.write("1 2 three")
        rc, _, err = ctl("route", a.path("ns"), "--tokens", bad)
        self.assertEqual(rc, 1)
        self.assertIn("not a list of token ids", err)
        with open(bad, "w") as f:
            f.write(" ".join(str(t) for t in range(64)))
        rc, _, err = ctl("route", a.path("ns"), "--tokens", bad)
        self.assertEqual(rc, 1)
        self.assertIn("not a kvfs mount in a cluster", err)
        rc, _, err = ctl("route", a.path("ns"))
        self.assertEqual(rc, 2)


class Push(Base):
    def test_push_to_a_named_node_and_fallback(self):
        a, b, c = self.node("a"), self.node("b"), self.node("c", lend=None)
        self.peers(3)
        os.makedirs(a.path("p"))
        os.setxattr(a.path("p"), "user.kvfs.push", b"b")
        self.assertEqual(os.getxattr(a.path("p"), "user.kvfs.push"), b"b")
        for i in range(4):
            write_file(a.path("p", "x%d" % i), content("x%d" % i, MiB))
        self.assertTrue(wait_for(lambda: a.stats()["push"]["pushed"] == 4))
        self.assertEqual(a.stats()["push"]["bytes"], 4 * MiB)
        self.assertEqual(b.stats()["remote"]["offloads_received"], 4)
        for i in range(4):  # kept in b's index entry, as a lent copy; and still on a
            self.assertTrue(wait_for(lambda i=i: self.published("p/x%d" % i, "b") == "lent"))
            self.assertEqual(self.published("p/x%d" % i, "a"), "dram")
        served = a.stats()["remote"]["served"]
        for i in range(4):  # b finds them at home: no fetch from a
            self.assertEqual(read_file(b.path("p", "x%d" % i)), content("x%d" % i, MiB))
        self.assertEqual(a.stats()["remote"]["served"], served)
        # c lends nothing: no room, kept local and counted
        os.setxattr(a.path("p"), "user.kvfs.push", b"c")
        write_file(a.path("p", "y"), content("y", MiB))
        self.assertTrue(wait_for(lambda: a.stats()["push"]["fallbacks"] == 1))
        # a node that is not alive
        os.setxattr(a.path("p"), "user.kvfs.push", b"ghost")
        write_file(a.path("p", "z"), content("z", MiB))
        self.assertTrue(wait_for(lambda: a.stats()["push"]["fallbacks"] == 2))
        self.assertEqual(read_file(a.path("p", "z")), content("z", MiB))
        self.assertEqual(a.stats()["push"]["pushed"], 4)
        # bad node ids; clearing
        with self.assertRaises(OSError):
            os.setxattr(a.path("p"), "user.kvfs.push", b"no/slash")
        os.setxattr(a.path("p"), "user.kvfs.push", b"")
        with self.assertRaises(OSError):
            os.getxattr(a.path("p"), "user.kvfs.push")


PROMPT = ("Disaggregated serving splits prefill from decode: one node computes the "
          "prompt's KV cache, another generates the answer. ") * 6


class Handoff(Base):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.model = os.path.join(cls.tmp, "model")
        r = subprocess.run([KVFS_GENMODEL, "--out", cls.model, "--layers", "2", "--hidden",
                            "64", "--heads", "4", "--kv-heads", "2", "--intermediate", "128",
                            "--max-pos", "2048", "--seed", "5"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode:
            raise RuntimeError(r.stderr)

    def llm(self, *args):
        dump = os.path.join(self.tmp, "logits-%d.bin" % len(os.listdir(self.tmp)))
        r = subprocess.run([KVFS_LLM, "--model", self.model, "--json", "--max-new", "8",
                            "--dump-logits", dump, *args, PROMPT],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(dump, "rb") as f:
            return json.loads(r.stdout), f.read()

    def handoff(self, push):
        a, b = self.node("a"), self.node("b")
        self.peers(2)
        ref, ref_logits = self.llm("--no-cache")
        pre = ["--push", "b"] if push else []
        p, p_logits = self.llm("--cache", a.path("llama"), "--role", "prefill", *pre)
        self.assertEqual(p_logits, ref_logits)
        nblocks = len(PROMPT) // 16
        self.assertEqual(p["cache"]["saves_written"], nblocks)
        if push:
            self.assertTrue(wait_for(lambda: a.stats()["push"]["pushed"] == nblocks))
        else:
            self.assertTrue(wait_for(lambda: self.redis.cli(
                "HLEN", "%s:held:a" % self.cname) != "" and
                int(self.redis.cli("SCARD", "%s:held:a" % self.cname)) >= nblocks))
        served = a.stats()["remote"]["served"]
        d, d_logits = self.llm("--cache", b.path("llama"), "--role", "decode")
        # bit-identical to one process doing both, and the same tokens
        self.assertEqual(d_logits, ref_logits)
        self.assertEqual(d["requests"][0]["tokens"], ref["requests"][0]["tokens"])
        req = d["requests"][0]
        self.assertEqual(req["reused_tokens"], nblocks * 16)
        # kvfs_cluster_match as the request left the queue: the prefill node
        # held all of it (with push, b held it too, and b comes first on a tie)
        lp = req["longest_prefix"]
        self.assertEqual(lp["blocks"], nblocks)
        if push:
            # b's lent copies, or a: the early prefetch may be moving b's copies from
            # lent memory into local files, which the index learns a moment later
            self.assertIn((lp["node"], lp["self"]), (("b", True), ("a", False)))
        else:
            self.assertEqual((lp["node"], lp["tier"], lp["self"]), ("a", "dram", False))
        self.assertFalse(req["fallback"])
        st = b.stats()
        self.assertEqual(st["remote"]["fetched"], nblocks)
        if push:  # from b's own lent memory: a served nothing
            self.assertEqual(a.stats()["remote"]["served"], served)
        else:
            self.assertEqual(a.stats()["remote"]["served"], served + nblocks)
        return req

    def test_pull(self):
        self.handoff(push=False)

    def test_push(self):
        self.handoff(push=True)


if __name__ == "__main__":
    unittest.main()
