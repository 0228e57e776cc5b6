"""--gpu on machines without a GPU: a CUDA build starts and serves normally, and only
--gpu fails, with one line saying why; the pool's start-up checks on the tests'
stand-in device (--gpu-standin). The CUDA path itself runs in tests/gpu/run.sh."""
import os
import subprocess
import unittest

from harness import KVFS, read_file, write_file
from test_daemon import FuseTest, is_mounted


def cuda_built():
    r = subprocess.run([KVFS, "--version"], capture_output=True, text=True, timeout=30)
    return "CUDA support: yes" in r.stdout


def have_gpu():
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


class GpuOption(FuseTest):
    def run_kvfs(self, *args):
        mnt = self.dir("mnt")
        state = os.path.join(self.tmp, "state")
        return subprocess.run([KVFS, "--state", state, *args, mnt], capture_output=True,
                              text=True, timeout=60), mnt

    def test_version_says_cuda(self):
        r = subprocess.run([KVFS, "--version"], capture_output=True, text=True, timeout=30)
        self.assertIn("CUDA support: yes" if cuda_built() else "CUDA support: no", r.stdout)

    def test_without_a_gpu_only_gpu_fails(self):
        if have_gpu():
            self.skipTest("this machine has a GPU (tests/gpu/run.sh covers it)")
        r, mnt = self.run_kvfs("--gpu", "0:1G")
        if cuda_built():
            self.assertOneLineError(r, "--gpu 0:1.0 GiB", "no CUDA driver", "cudaError")
        else:
            self.assertOneLineError(r, "--gpu 0:1.0 GiB", "without CUDA support")
        self.assertFalse(is_mounted(mnt))
        # the same binary without --gpu serves normally
        m = self.mount(dram="16M").start()
        write_file(m.path("f"), b"bytes")
        self.assertEqual(read_file(m.path("f")), b"bytes")

    def test_bad_gpu_options(self):
        for arg in ("0", "x:1G", ":1G", "0:", "0:0", "-1:1G", "0:1Q"):
            with self.subTest(arg=arg):
                r, mnt = self.run_kvfs("--gpu", arg)
                self.assertOneLineError(r, "--gpu")
        r, _ = self.run_kvfs("--gpu", "0:1G", "--gpu", "0:2G")
        self.assertOneLineError(r, "device 0 given twice")

    def test_standin_pool_checks(self):
        # the stand-in has two devices of 1 GiB each
        r, mnt = self.run_kvfs("--gpu-standin", "--gpu", "5:64M")
        self.assertOneLineError(r, "--gpu 5:64.0 MiB", "no device 5")
        r, mnt = self.run_kvfs("--gpu-standin", "--gpu", "0:2G")
        self.assertOneLineError(r, "--gpu 0:2.0 GiB", "out of memory")
        self.assertFalse(is_mounted(mnt))
        m = self.mount(dram="16M", args=["--gpu-standin", "--gpu", "0:64M", "--gpu",
                                         "1:32M"]).start()
        write_file(m.path("f"), b"bytes")
        self.assertEqual(read_file(m.path("f")), b"bytes")
        log = m.log()
        self.assertIn("GPU pool on shm device 0: 64.0 MiB", log)
        self.assertIn("GPU pool on shm device 1: 32.0 MiB", log)


if __name__ == "__main__":
    unittest.main()
