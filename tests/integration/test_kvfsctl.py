"""kvfsctl, the operator's tool, against a real mount: every command's human
output carries the right figures, --json parses and agrees with the mount,
and bad input gets a clear error on stderr with the documented exit status
(0 success, 1 failure, 2 usage).

Figures are checked against what the test wrote and against .kvfs/stats, never
against timing. Native blocks come from kvblock.py, the independent encoder.

A file is sealed when the kernel's RELEASE reaches the daemon, which is after
close() returns. The tests write through put(), which waits for the "sealed"
counter, so that what kvfsctl sees does not depend on that race; the
DaemonSealRaces and DaemonEvictStat classes at the end pin down what the
daemon gets wrong in that window (they fail until it is fixed).
"""
import errno
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import kvblock
from harness import KVFSCTL, Mount, MountTest, fuse_available, read_file, write_file

LAYOUT = kvblock.Layout("kvfsctl-test", 4, 2, 16, 16, "bf16", "kv")


def ctl(*args):
    return subprocess.run([KVFSCTL, *args], capture_output=True, text=True, timeout=120)


def ctl_json(*args):
    r = ctl("--json", *args)
    if r.returncode != 0:
        raise AssertionError("kvfsctl --json %s: rc %d: %s" % (args, r.returncode, r.stderr))
    return json.loads(r.stdout)


def human(n):
    """kvfsctl's size format: bytes below 1 KiB, else one decimal and a binary unit."""
    if n < 1024:
        return "%d B" % n
    v, units = n / 1024.0, ["KiB", "MiB", "GiB", "TiB"]
    u = 0
    while v >= 1024 and u + 1 < len(units):
        v /= 1024
        u += 1
    return "%.1f %s" % (v, units[u])


def ls_rows(out):
    """ls output as {name: (size, tier, hits, pin)}; checks the header is there."""
    lines = [l for l in out.splitlines() if l.strip()]
    rows = {}
    for l in lines:
        f = l.split(None, 4)
        if f[0] == "SIZE":
            continue
        rows[f[4]] = tuple(f[:4])
    return rows


def wait_sealed(m, n, timeout=10.0):
    """Wait (polling .kvfs/stats, no sleeps) until @n files have been sealed."""
    deadline = time.monotonic() + timeout
    while m.stats()["sealed"] < n:
        if time.monotonic() > deadline:
            raise AssertionError("only %d of %d files sealed" % (m.stats()["sealed"], n))


def gone(path):
    """True if the daemon no longer has @path: not listed, and open fails with ENOENT.
    (A stat may still see the kernel's cached entry for a moment: DaemonEvictStat.)"""
    if os.path.basename(path) in os.listdir(os.path.dirname(path)):
        return False
    try:
        open(path, "rb").close()
    except FileNotFoundError:
        return True
    return False


class CtlTest(MountTest):
    """A fresh mount per test, and put() to write a file and wait for its seal."""

    def setUp(self):
        super().setUp()
        self.written = 0

    def put(self, rel, data, tmp=False):
        path = self.m.path(*rel.split("/")) if isinstance(rel, str) else self.m.path(*rel)
        write_file(path, data, tmp_suffix=".tmp" if tmp else None)
        self.written += 1
        wait_sealed(self.m, self.written)
        return path


def make_block(salt=0, layout=LAYOUT):
    tokens = [(i * 7919 + salt * 104729) % 152064 for i in range(layout.tokens_per_block)]
    return kvblock.encode(layout, kvblock.root("0"), tokens, seed=salt)


class Status(CtlTest):
    dram = "64M"

    def test_status_human_figures(self):
        self.put("a", os.urandom(100000))
        self.put("b", os.urandom(5000))
        read_file(self.m.path("a"))
        r = ctl("status", self.m.mnt)
        self.assertEqual(r.returncode, 0, r.stderr)
        st = self.m.stats()
        out = r.stdout
        self.assertIn("64.0 MiB (67108864 bytes)", out)
        self.assertIn("used %s (%d bytes)" % (human(st["used_bytes"]), st["used_bytes"]), out)
        self.assertIn("2 files, 0 directories", out)
        self.assertIn("(%d hits, %d misses)" % (st["hits"], st["misses"]), out)
        self.assertEqual(st["hits"], 1)
        self.assertIn("policy mq", out)
        dram = [l for l in out.splitlines() if l.startswith("dram")]
        self.assertEqual(len(dram), 1, out)
        f = dram[0].split()
        # dram  CAP unit  USED unit  FREE unit  PINNED unit  FILES  PINNED  PAGE unit
        self.assertEqual(" ".join(f[1:3]), "64.0 MiB")
        self.assertEqual(" ".join(f[3:5]), human(st["tiers"]["dram"]["used_bytes"]))
        self.assertEqual(" ".join(f[5:7]), human(st["tiers"]["dram"]["free_bytes"]))
        self.assertEqual(f[9], "2")  # files
        self.assertEqual(f[10], "0")  # pinned files
        self.assertIn("native     0 valid, 0 invalid", out)
        self.assertIn("evictions  0", out)
        self.assertEqual(r.stderr, "")

    def test_status_json_matches_stats(self):
        self.put("x", b"y" * 12345)
        got = ctl_json("status", self.m.mnt)
        st = self.m.stats()
        self.assertEqual(got["capacity_bytes"], 64 << 20)
        self.assertEqual(got["tiers"]["dram"]["capacity_bytes"], 64 << 20)
        self.assertEqual(got["files"], 1)
        for k in ("capacity_bytes", "used_bytes", "files", "directories", "hits", "evictions",
                  "native", "tiers"):
            self.assertEqual(got[k], st[k], k)

    def test_status_shows_pinned(self):
        self.put("p", b"z" * 70000)
        self.put("q", b"z" * 100)
        r = ctl("pin", self.m.path("p"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("pinned " + self.m.path("p"), r.stdout)
        st = self.m.stats()
        self.assertEqual(st["tiers"]["dram"]["pinned_files"], 1)
        out = ctl("status", self.m.mnt).stdout
        f = [l for l in out.splitlines() if l.startswith("dram")][0].split()
        self.assertEqual(" ".join(f[7:9]), human(st["tiers"]["dram"]["pinned_bytes"]))
        self.assertNotEqual(st["tiers"]["dram"]["pinned_bytes"], 0)
        self.assertEqual(f[10], "1")
        self.assertEqual(ctl_json("status", self.m.mnt)["tiers"]["dram"]["pinned_files"], 1)
        r = ctl("unpin", self.m.path("p"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("unpinned", r.stdout)
        self.assertEqual(self.m.stats()["tiers"]["dram"]["pinned_files"], 0)

    def test_status_errors(self):
        d = tempfile.mkdtemp()
        try:
            r = ctl("status", d)
            self.assertEqual(r.returncode, 1)
            self.assertEqual(r.stdout, "")
            self.assertEqual(r.stderr.strip(), "kvfsctl: %s: not a kvfs mount" % d)
            r = ctl("status", os.path.join(d, "nope"))
            self.assertEqual(r.returncode, 1)
            self.assertIn("kvfsctl: %s: No such file or directory" % os.path.join(d, "nope"),
                          r.stderr)
            r = ctl("--json", "status", d)
            self.assertEqual(r.returncode, 1)
            self.assertEqual(r.stdout, "")
        finally:
            shutil.rmtree(d)


class Ls(CtlTest):
    def setUp(self):
        super().setUp()
        os.makedirs(self.m.path("model", "sub"))
        self.put("model/one", b"1" * 1000)
        self.put("model/two", b"2" * 70000, tmp=True)
        self.put("model/sub/three", b"3" * 3)
        read_file(self.m.path("model", "two"))
        read_file(self.m.path("model", "two"))

    def test_ls_human(self):
        r = ctl("ls", self.m.path("model"))
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = ls_rows(r.stdout)
        self.assertEqual(rows["one"], ("1000", "dram", "0", "no"))
        self.assertEqual(rows["two"], ("70000", "dram", "2", "no"))
        self.assertEqual(rows["sub/"], ("-", "dir", "-", "-"))
        self.assertEqual(set(rows), {"one", "two", "sub/"})  # not recursive

    def test_ls_root_skips_control_dir(self):
        rows = ls_rows(ctl("ls", self.m.mnt).stdout)
        self.assertEqual(set(rows), {"model/"})
        rows = ls_rows(ctl("ls", "-R", self.m.mnt).stdout)
        self.assertEqual(set(rows), {"model/", "model/one", "model/two", "model/sub/",
                                     "model/sub/three"})
        self.assertFalse(any(".kvfs" in k for k in rows))

    def test_ls_pinned_and_file_args(self):
        ctl("pin", self.m.path("model", "one"))
        r = ctl("ls", self.m.path("model", "one"), self.m.path("model", "two"))
        rows = ls_rows(r.stdout)
        self.assertEqual(rows[self.m.path("model", "one")], ("1000", "dram", "0", "yes"))
        self.assertEqual(rows[self.m.path("model", "two")][3], "no")

    def test_ls_json_recursive(self):
        got = ctl_json("ls", "-R", self.m.path("model"))
        by = {os.path.relpath(e["path"], self.m.path("model")): e for e in got}
        self.assertEqual(set(by), {"one", "two", "sub", "sub/three"})
        self.assertEqual(by["two"]["size"], 70000)
        self.assertEqual(by["two"]["hits"], 2)
        self.assertEqual(by["two"]["tier"], "dram")
        self.assertEqual(by["two"]["type"], "file")
        self.assertIs(by["two"]["pinned"], False)
        self.assertNotIn("key", by["two"])
        self.assertEqual(by["sub"]["type"], "dir")
        self.assertEqual(by["sub/three"]["size"], 3)
        # --json may come anywhere on the line
        r = ctl("ls", self.m.path("model"), "--json")
        self.assertEqual(len(json.loads(r.stdout)), 3)

    def test_ls_native_key(self):
        blk = make_block(1)
        self.put(("model", blk.hex), blk.data, tmp=True)
        got = ctl_json("ls", self.m.path("model", blk.hex))
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0]["key"], blk.hex)
        self.assertEqual(got[0]["size"], len(blk.data))

    def test_ls_missing_path(self):
        missing = self.m.path("model", "gone")
        r = ctl("ls", missing, self.m.path("model", "one"))
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.strip(), "kvfsctl: %s: No such file or directory" % missing)
        self.assertIn("1000", r.stdout)  # the other path is still listed


class LargeDir(CtlTest):
    dram = "64M"
    args = ("--page-size", "4K")
    N = 3000

    def test_ls_and_du_large_directory(self):
        d = self.m.path("big")
        os.mkdir(d)
        for i in range(self.N):
            with open(os.path.join(d, "%05d" % i), "wb") as f:
                f.write(b"k" * (i % 7 + 1))
        wait_sealed(self.m, self.N)
        total = sum(i % 7 + 1 for i in range(self.N))
        r = ctl("ls", d)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = ls_rows(r.stdout)
        self.assertEqual(len(rows), self.N)
        self.assertEqual(rows["02999"][0], str(2999 % 7 + 1))
        got = ctl_json("du", d)
        self.assertEqual(got[0]["files"], self.N)
        self.assertEqual(got[0]["bytes"], total)
        self.assertEqual(len(ctl_json("ls", "-R", self.m.mnt)), self.N + 1)


class Du(CtlTest):
    def test_du_sums(self):
        sizes = {"a/x": 1000, "a/y": 65536, "a/b/z": 300000, "c/w": 7}
        for rel, n in sizes.items():
            os.makedirs(os.path.dirname(self.m.path(rel)), exist_ok=True)
            self.put(rel, os.urandom(n))
        a = sum(n for k, n in sizes.items() if k.startswith("a/"))
        r = ctl("du", self.m.path("a"), self.m.path("c"))
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[0], "%s: 3 files, %s (%d bytes)" % (self.m.path("a"), human(a), a))
        self.assertEqual(lines[1].split(), ["dram", "3", "files,"] + human(a).split() +
                         ["(%d" % a, "bytes)"])
        self.assertEqual(lines[2], "%s: 1 files, 7 B (7 bytes)" % self.m.path("c"))
        total = sum(sizes.values())
        self.assertEqual(lines[-1], "total: 4 files, %s (%d bytes)" % (human(total), total))

        got = ctl_json("du", self.m.mnt)
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0]["files"], 4)
        self.assertEqual(got[0]["bytes"], total)
        self.assertEqual(got[0]["directories"], 3)  # a, a/b, c; not .kvfs
        self.assertEqual(got[0]["tiers"], {"dram": {"files": 4, "bytes": total}})
        got = ctl_json("du", self.m.path("a", "b", "z"))
        self.assertEqual((got[0]["files"], got[0]["bytes"]), (1, 300000))

    def test_du_missing(self):
        r = ctl("du", self.m.path("nope"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("kvfsctl: %s: No such file or directory" % self.m.path("nope"), r.stderr)


class Evict(CtlTest):
    def test_evict_file(self):
        self.put("f", b"f" * 5000)
        r = ctl("evict", self.m.path("f"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "%s: evicted" % self.m.path("f"))
        self.assertTrue(gone(self.m.path("f")))
        st = self.m.stats()
        self.assertEqual(st["operator_evictions"], 1)
        self.assertEqual(st["files"], 0)

    def test_evict_pinned_and_open(self):
        self.put("p", b"p" * 5000)
        self.put("o", b"o" * 5000)
        self.assertEqual(ctl("pin", self.m.path("p")).returncode, 0)
        r = ctl("evict", self.m.path("p"))
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout.strip(), "%s: pinned, not evicted" % self.m.path("p"))
        self.assertTrue(os.path.exists(self.m.path("p")))
        with open(self.m.path("o"), "rb"):
            r = ctl("evict", self.m.path("o"))
            self.assertEqual(r.returncode, 1)
            self.assertEqual(r.stdout.strip(), "%s: open, not evicted" % self.m.path("o"))
            got = json.loads(ctl("--json", "evict", self.m.path("o")).stdout)
            self.assertEqual(got, [{"path": self.m.path("o"), "type": "file", "evicted": False,
                                    "bytes": 5000, "reason": "open"}])
        self.assertTrue(os.path.exists(self.m.path("o")))
        self.assertEqual(self.m.stats()["operator_evictions"], 0)
        # unpinned, it goes
        self.assertEqual(ctl("unpin", self.m.path("p")).returncode, 0)
        r = ctl("evict", self.m.path("p"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(gone(self.m.path("p")))

    def test_evict_directory(self):
        os.makedirs(self.m.path("d", "e"))
        sizes = {"d/1": 1 << 20, "d/2": 2 << 20, "d/e/3": 100}
        for rel, n in sizes.items():
            self.put(rel, b"x" * n)
        self.put("d/keep", b"k" * 4000)
        self.put("other", b"o" * 10)
        self.assertEqual(ctl("pin", self.m.path("d", "keep")).returncode, 0)
        r = ctl("evict", self.m.path("d"))
        self.assertEqual(r.returncode, 0, r.stderr)
        n = sum(sizes.values())
        self.assertEqual(r.stdout.strip(),
                         "%s: evicted 3 files (%s), 1 files (%s) stay: pinned or open" %
                         (self.m.path("d"), human(n), human(4000)))
        self.assertEqual(human(n), "3.0 MiB")
        for rel in sizes:
            self.assertTrue(gone(self.m.path(rel)), rel)
        self.assertTrue(os.path.exists(self.m.path("d", "keep")))
        self.assertTrue(os.path.exists(self.m.path("other")))
        self.assertEqual(self.m.stats()["operator_evictions"], 3)
        # JSON, after unpinning: the last one goes
        ctl("unpin", self.m.path("d", "keep"))
        got = ctl_json("evict", self.m.path("d"))
        self.assertEqual(got, [{"path": self.m.path("d"), "type": "dir", "evicted_files": 1,
                                "evicted_bytes": 4000, "remaining_files": 0,
                                "remaining_bytes": 0}])

    def test_evict_errors(self):
        r = ctl("evict", self.m.path("nope"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("kvfsctl: %s: No such file or directory" % self.m.path("nope"), r.stderr)
        r = ctl("evict", self.m.path(".kvfs"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("Operation not permitted", r.stderr)
        d = tempfile.mkdtemp()
        try:
            p = os.path.join(d, "f")
            write_file(p, b"1")
            for cmd in ("evict", "pin", "unpin"):
                r = ctl(cmd, p)
                self.assertEqual(r.returncode, 1, cmd)
                self.assertEqual(r.stderr.strip(), "kvfsctl: %s: not on a kvfs mount" % p)
            self.assertTrue(os.path.exists(p))
        finally:
            shutil.rmtree(d)
        os.mkdir(self.m.path("dir"))
        r = ctl("pin", self.m.path("dir"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("Is a directory", r.stderr)

    def test_tool_adds_no_misses(self):
        """Walking and evicting looks up only names that exist: the operator's
        tool must not move the cache's hit rate."""
        os.makedirs(self.m.path("a", "b"))
        self.put("a/b/f", b"1" * 10)
        before = self.m.stats()
        for args in (("ls", "-R", self.m.mnt), ("du", self.m.mnt), ("pin", self.m.path("a", "b", "f")),
                     ("status", self.m.mnt), ("evict", self.m.path("a"))):
            ctl(*args)
        after = self.m.stats()
        self.assertEqual(after["misses"], before["misses"])
        self.assertEqual(after["hits"], before["hits"])


class Show(CtlTest):
    def assert_valid_output(self, out, blk, path):
        self.assertIn("file          %s\n" % path, out)
        self.assertIn("model         kvfs-test\n".replace("kvfs-test", LAYOUT.model_id), out)
        self.assertIn("layout        4 layers, 2 kv heads, head dim 16, bf16, kv, "
                      "16 tokens per block\n", out)
        self.assertIn("key           %s\n" % blk.hex, out)
        self.assertIn("parent        %s\n" % blk.parent.hex(), out)
        self.assertIn("tokens        16: %s ...\n" % " ".join(str(t) for t in blk.tokens[:8]),
                      out)
        self.assertIn("header        4096 bytes\n", out)
        self.assertIn("layer         2048 bytes, stride 4096\n", out)
        for i in range(4):
            off = 4096 + i * 4096
            csum = kvblock.xxh3_64(blk.data[off:off + 2048])
            self.assertRegex(out, r"\n +%d +%d  %016x\n" % (i, off, csum))
        self.assertTrue(out.endswith("verdict       valid\n"), out)

    def test_show_valid_in_mount(self):
        blk = make_block(3)
        p = self.m.path(blk.hex)
        self.put(blk.hex, blk.data, tmp=True)
        r = ctl("show", p)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assert_valid_output(r.stdout, blk, p)
        got = ctl_json("show", p)
        self.assertIs(got["valid"], True)
        self.assertIs(got["native"], True)
        self.assertEqual(got["key"], blk.hex)
        self.assertEqual(got["parent"], blk.parent.hex())
        self.assertEqual(got["file_bytes"], len(blk.data))
        self.assertEqual(got["layout"], {"num_layers": 4, "num_kv_heads": 2, "head_dim": 16,
                                         "dtype": "bf16", "kind": "kv",
                                         "tokens_per_block": 16})
        self.assertEqual(got["tokens"], list(blk.tokens[:8]))
        self.assertEqual(got["num_tokens"], 16)
        self.assertEqual(got["extra_len"], 0)
        self.assertEqual([l["offset"] for l in got["layers"]], [4096, 8192, 12288, 16384])
        self.assertTrue(all(l["ok"] for l in got["layers"]))

    def test_show_outside_mount_and_corrupt(self):
        d = tempfile.mkdtemp()
        try:
            blk = kvblock.encode(LAYOUT, kvblock.root("0"), range(16), extra=["lora-a"])
            p = os.path.join(d, "blk")
            write_file(p, blk.data)
            r = ctl("show", p)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("key           %s\n" % blk.hex, r.stdout)
            ex = bytes(kvblock.cbor2.dumps(("lora-a",), canonical=True))
            self.assertIn("extra keys    %d bytes: %s\n" % (len(ex), " ".join(
                "%02x" % b for b in ex)), r.stdout)
            self.assertIn("verdict       valid", r.stdout)

            # one flipped byte in layer 2's data
            bad = bytearray(blk.data)
            bad[4096 + 2 * 4096 + 10] ^= 0xFF
            write_file(p, bytes(bad))
            r = ctl("show", p)
            self.assertEqual(r.returncode, 1)
            self.assertIn("verdict       INVALID: layer checksum mismatch", r.stdout)
            marked = [l.split()[0] for l in r.stdout.splitlines() if l.endswith("  BAD")]
            self.assertEqual(marked, ["2"])
            got = json.loads(ctl("--json", "show", p).stdout)
            self.assertIs(got["valid"], False)
            self.assertEqual(got["why"], "layer checksum mismatch")
            self.assertEqual([l["ok"] for l in got["layers"]], [True, True, False, True])

            # a broken header
            bad = bytearray(blk.data)
            bad[kvblock.OFF_NUM_LAYERS] = 5
            write_file(p, bytes(bad))
            r = ctl("show", p)
            self.assertEqual(r.returncode, 1)
            self.assertIn("verdict       INVALID: header checksum mismatch", r.stdout)

            # a truncated one
            write_file(p, blk.data[:10000])
            r = ctl("show", p)
            self.assertEqual(r.returncode, 1)
            self.assertIn("INVALID: ", r.stdout)

            write_file(p, b"just some bytes, not a block")
            r = ctl("show", p)
            self.assertEqual(r.returncode, 1)
            self.assertEqual(r.stdout.strip(), "%s: not a native kvfs block" % p)
            self.assertEqual(json.loads(ctl("--json", "show", p).stdout)["native"], False)
            write_file(p, b"")
            self.assertEqual(ctl("show", p).returncode, 1)
        finally:
            shutil.rmtree(d)

    def test_show_invalid_in_mount(self):
        blk = make_block(4)
        bad = bytearray(blk.data)
        bad[-100] ^= 1  # last layer's padding: not zero
        bad[4096 + 5] ^= 1  # layer 0's data
        self.put("bad", bytes(bad))
        self.assertEqual(self.m.stats()["native"]["invalid"], 1)
        r = ctl("show", self.m.path("bad"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("verdict       INVALID: ", r.stdout)
        got = json.loads(ctl("--json", "show", self.m.path("bad")).stdout)
        self.assertIs(got["valid"], False)

    def test_show_usage(self):
        r = ctl("show")
        self.assertEqual(r.returncode, 2)
        self.assertIn("kvfsctl: show: missing FILE", r.stderr)
        r = ctl("show", self.m.path("nope"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("kvfsctl: %s: No such file or directory" % self.m.path("nope"), r.stderr)


class Cli(unittest.TestCase):
    """Usage: no mount needed."""

    def test_help_and_version(self):
        for args in (("--help",), ("help",), ("-h",)):
            r = ctl(*args)
            self.assertEqual(r.returncode, 0, args)
            for cmd in ("status", "ls", "du", "show", "pin", "unpin", "evict", "--json"):
                self.assertIn(cmd, r.stdout)
        r = ctl("--version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^kvfsctl \d+\.\d+\.\d+\n$")

    def test_usage_errors(self):
        cases = [((), "kvfsctl: kvfsctl: missing command"),
                 (("frobnicate",), "kvfsctl: frobnicate: unknown command"),
                 (("--bogus", "status", "/"), "kvfsctl: --bogus: unknown option"),
                 (("status",), "kvfsctl: status: missing MOUNT"),
                 (("status", "/a", "/b"), "kvfsctl: status: one MOUNT only"),
                 (("pin",), "kvfsctl: pin: missing FILE"),
                 (("unpin",), "kvfsctl: unpin: missing FILE"),
                 (("evict",), "kvfsctl: evict: missing PATH"),
                 (("du", "-R", "/"), "kvfsctl: -R: only ls takes it")]
        for args, msg in cases:
            r = ctl(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertEqual(r.stdout, "", args)
            self.assertEqual(r.stderr.splitlines()[0], msg, args)


class DaemonSealRaces(MountTest):
    """Daemon bugs found while testing kvfsctl (fail until fs/ops.c is fixed).

    A writer that has closed its file is done with it: a rename, an open for
    reading, the key xattr and an operator eviction must all see the file
    sealed (ops.c rule 1: they wait for the pending seal). They do not while
    seal_file() runs: it drops in->writers to 0 before validating the block
    and sets in->sealed only after taking fs->lock, so seal_pending() is false
    in that window and nobody waits. For native blocks the window includes
    the validation, and setxattr(user.kvfs.evict) never waits at all."""
    dram = "256M"
    args = ("--page-size", "4K")
    N = 300

    def test_native_block_sealed_after_close_and_rename(self):
        layout = kvblock.Layout("race", 4, 2, 16, 16, "bf16", "kv")
        nokey = busy = 0
        for i in range(self.N):
            blk = kvblock.encode(layout, kvblock.root("0"), [i] * 16)
            p = self.m.path(blk.hex)
            write_file(p, blk.data, tmp_suffix=".tmp")  # close, then rename
            try:
                os.getxattr(p, "user.kvfs.key")
            except OSError as e:
                self.assertEqual(e.errno, errno.ENODATA)
                nokey += 1
            try:
                open(p, "rb").close()
            except OSError as e:
                self.assertEqual(e.errno, errno.EBUSY)
                busy += 1
        self.assertEqual((nokey, busy), (0, 0),
                         "of %d native blocks renamed after close: %d had no user.kvfs.key, "
                         "%d could not be opened (EBUSY)" % (self.N, nokey, busy))

    def test_evict_right_after_close(self):
        busy, n = 0, 2000  # the window is narrow: a few in a thousand
        for i in range(n):
            p = self.m.path("f%d" % i)
            write_file(p, b"x" * 5000)
            try:
                os.setxattr(p, "user.kvfs.evict", b"1")
            except OSError as e:
                self.assertEqual(e.errno, errno.EBUSY)
                busy += 1
        self.assertEqual(busy, 0, "%d of %d closed files refused eviction with EBUSY "
                         "(kvfsctl: 'open, not evicted')" % (busy, n))


class EvictStat(MountTest):
    """An evicted file is gone for stat() too: `kvfsctl evict` returns only
    once the kernel dropped the names it cached (entry and attribute timeouts
    are 30 s, so only the daemon's invalidation removes them). A request on a
    directory runs with the kernel holding that directory's lock, which the
    invalidation of its entries needs, so a directory-level user.kvfs.evict
    drops the cached names just after it returns; kvfsctl evicts a tree file
    by file instead. A few rounds, since how much of the invalidation queue
    is drained before the first stat varies."""
    dram = "256M"
    args = ("--page-size", "4K")
    N = 300
    ROUNDS = 10

    def fill(self, r):
        d = self.m.path("d%d" % r)
        os.mkdir(d)
        names = [os.path.join(d, str(i)) for i in range(self.N)]
        for p in names:
            write_file(p, b"x")
        wait_sealed(self.m, self.N * (r + 1))
        for p in names:
            os.stat(p)  # the kernel caches every entry
        return d, names

    def test_kvfsctl_evicted_files_do_not_stat(self):
        stale = []
        for r in range(self.ROUNDS):
            d, names = self.fill(r)
            res = ctl("evict", d)
            self.assertEqual(res.returncode, 0, res.stderr)
            self.assertIn("evicted %d files" % self.N, res.stdout)
            self.assertEqual(os.listdir(d), [])
            stale.append(sum(os.path.exists(p) for p in reversed(names)))
        self.assertEqual(stale, [0] * self.ROUNDS, "evicted files a stat() still found, per round")

    def test_evicted_file_does_not_stat(self):
        d, names = self.fill(0)
        for p in names[:50]:
            os.setxattr(p, "user.kvfs.evict", b"1")
            self.assertFalse(os.path.exists(p), p)

    def test_directory_evict_names_drop_soon_after(self):
        d, names = self.fill(0)
        os.setxattr(d, "user.kvfs.evict", b"1")
        self.assertEqual(os.listdir(d), [])
        deadline = time.time() + 5
        while time.time() < deadline and any(os.path.exists(p) for p in names):
            time.sleep(0.01)
        self.assertFalse(any(os.path.exists(p) for p in names))


if __name__ == "__main__":
    unittest.main()
