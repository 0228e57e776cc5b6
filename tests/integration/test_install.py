"""`make install`, then an engine built against the installed libkvfs with
pkg-config: tools/libkvfs-example.c computes and saves a prompt's KV cache
on a mount, and loads it back (fast path) on its next run."""
import os
import shutil
import subprocess
import tempfile
import unittest

from harness import BUILD, ROOT, Mount, fuse_available

EXAMPLE = os.path.join(ROOT, "tools", "libkvfs-example.c")


class Install(unittest.TestCase):
    def setUp(self):
        if os.path.realpath(BUILD) != os.path.realpath(os.path.join(ROOT, "build")):
            self.skipTest("installs the plain build (a sanitized library needs its runtime)")
        if not fuse_available():
            self.skipTest("no /dev/fuse or fusermount3")
        for tool in ("make", "cc", "pkg-config"):
            if not shutil.which(tool):
                self.skipTest(tool + " is not installed")
        self.root = tempfile.mkdtemp(prefix="kvfs-install-")
        self.addCleanup(shutil.rmtree, self.root, True)

    def run_ok(self, cmd, env=None):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        self.assertEqual(r.returncode, 0, "%s:\n%s%s" % (" ".join(cmd), r.stdout, r.stderr))
        return r.stdout

    def test_an_engine_links_the_installed_library(self):
        self.run_ok(["make", "-C", ROOT, "--no-print-directory", "install", "PREFIX=/usr",
                     "DESTDIR=" + self.root])
        usr = os.path.join(self.root, "usr")
        for f in ("bin/kvfs", "bin/kvfsctl", "bin/kvfs-bench", "bin/kvfs-llm", "lib/libkvfs.a",
                  "lib/libkvfs.so", "lib/libkvfs.so.0", "include/kvfs/kvfs.h",
                  "include/kvfs/format.h", "include/kvfs/keys.h", "lib/pkgconfig/kvfs.pc"):
            self.assertTrue(os.path.exists(os.path.join(usr, f)), f)
        env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(usr, "lib", "pkgconfig"))
        flags = self.run_ok(["pkg-config", "--define-prefix", "--cflags", "--libs", "kvfs"],
                            env=env).split()
        exe = os.path.join(self.root, "example")
        self.run_ok(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", EXAMPLE, *flags,
                     "-o", exe])
        env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(usr, "lib"))
        with Mount(dram="128M") as m:
            ns = m.path("example")
            self.assertEqual(self.run_ok([exe, ns], env=env).strip(),
                             "computed and saved 4 blocks")
            self.assertEqual(len(os.listdir(ns)), 4)
            self.assertEqual(self.run_ok([exe, ns], env=env).strip(),
                             "loaded 4 blocks (fast path): identical to computing them")
            self.assertEqual(m.stats()["fast_path"]["matched_blocks"], 4)


if __name__ == "__main__":
    unittest.main()
