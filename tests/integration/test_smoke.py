"""Smoke: the daemon mounts, serves a file, reports it, and unmounts cleanly."""
import os
import subprocess

from harness import KVFS, MountTest, read_file, write_file


class Smoke(MountTest):
    def test_write_read_stat(self):
        data = os.urandom(3 << 20)
        write_file(self.m.path("blk"), data, tmp_suffix=".tmp")
        self.assertEqual(read_file(self.m.path("blk")), data)
        self.assertEqual(os.stat(self.m.path("blk")).st_size, len(data))
        st = self.m.stats()
        self.assertEqual(st["files"], 1)
        self.assertGreaterEqual(st["used_bytes"], len(data))
        self.assertEqual(st["hits"], 1)

    def test_version_and_help(self):
        r = subprocess.run([KVFS, "--version"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        self.assertTrue(r.stdout.startswith("kvfs "))
        r = subprocess.run([KVFS, "--help"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        self.assertIn("--dram", r.stdout)
