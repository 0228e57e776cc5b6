"""--gpu on machines without a GPU: a CUDA build starts and serves normally, and only
--gpu fails, with one line saying why; the pool's start-up checks on the tests'
stand-in device (--gpu-standin). The CUDA path itself runs in tests/gpu/run.sh."""
import errno
import os
import shutil
import subprocess
import tempfile
import time
import unittest

from harness import BUILD, KVFS, Mount, MountTest, fuse_available, read_file, write_file
from test_daemon import FuseTest, is_mounted
from test_fastpath import NOBODY, drv, last_json


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


STANDIN = ("--gpu-standin", "--gpu", "0:64M")


class DeviceBuffers(MountTest):
    """Engines' device buffers (libkvfs kvfs_dev_register, kvfs_load_start_ex) on the
    stand-in GPU: the daemon opens the IPC handle and copies each layer in itself."""
    dram = "64M"
    args = STANDIN + ("-o", "allow_other")

    def test_prefill_saves_decode_loads_into_device_pages(self):
        ns = self.m.path("model", "ns")
        drv("save", ns, "fast", 3, 6)            # one process saves ...
        got = last_json(drv("devload", ns, 3, 6).stdout)  # ... another loads to its GPU
        self.assertEqual((got["reg"], got["matched"], got["err"]), (0, 6, 0))
        self.assertEqual((got["bad_blocks"], got["bad_early"], got["fast"]), (0, 0, 1))

    def test_prefill_saves_from_device_pages(self):
        # semi-PD: a prefill process saves from its device pages; a decode process
        # loads them into its own device pages, another through host memory
        ns = self.m.path("model", "pd")
        got = last_json(drv("devsave", ns, 9, 5).stdout)
        self.assertEqual((got["reg"], got["saved"], got["written"], got["errors"]),
                         (0, 5, 5, 0))
        self.assertEqual(len([f for f in os.listdir(ns) if not f.startswith(".")]), 5)
        got = last_json(drv("devload", ns, 9, 5).stdout)
        self.assertEqual((got["matched"], got["bad_blocks"], got["bad_early"]), (5, 0, 0))
        got = last_json(drv("load", ns, "posix", 9, 5).stdout)
        self.assertEqual((got["matched"], got["bad_blocks"]), (5, 0))
        # saving again finds them present
        got = last_json(drv("devsave", ns, 9, 5).stdout)
        self.assertEqual((got["saved"], got["present"], got["written"]), (5, 5, 0))

    def test_stats_metrics_and_kvfsctl_show_the_pool(self):
        ns = self.m.path("model", "st")
        drv("save", ns, "fast", 12, 3)
        drv("devload", ns, 12, 3)
        drv("devsave", ns, 13, 2)
        last_json(drv("devreg", self.m.mnt, ns, "garbage").stdout)
        st = self.m.stats()["gpu"]
        self.assertEqual(st["pools"], [{"device": 0, "impl": "shm", "bytes": 64 << 20,
                                        "block_bytes": 64 << 10, "blocks": 1024,
                                        "free_blocks": 1024}])
        self.assertEqual((st["registrations"], st["refused"], st["copy_errors"],
                          st["saved_blocks"]), (2, 1, 0, 2))
        self.assertEqual(st["loaded_bytes"], 3 * 4 * 2 * 16 * 2 * 32 * 4)
        metrics = self.m.metrics()
        self.assertIn('kvfs_gpu_pool_bytes{device="0"} %d' % (64 << 20), metrics)
        self.assertIn("kvfs_gpu_refused_total 1", metrics)
        r = subprocess.run([os.path.join(BUILD, "bin", "kvfsctl"), "status", self.m.mnt],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("device 0 (shm): pool 64.0 MiB, 64.0 MiB free", r.stdout)
        self.assertIn("2 engine registrations, 1 refused, 0 copy errors", r.stdout)
        cfg = self.m.config()
        self.assertEqual((cfg["gpu"], cfg["gpu_standin"]),
                         ([{"device": 0, "bytes": 64 << 20}], True))

    def test_engine_dying_mid_transfer(self):
        ns = self.m.path("model", "die")
        drv("save", ns, "fast", 11, 8)
        iovs = self.m.path(".kvfs", "iovs")
        for _ in range(3):
            r = drv("devdie", ns, 11, 8)
            self.assertIn("loading 8", r.stdout)
        # its ring, buffers and device registrations go once the daemon sees it gone
        deadline = time.time() + 10
        while os.listdir(iovs) and time.time() < deadline:
            time.sleep(0.1)
        self.assertEqual(os.listdir(iovs), [])
        got = last_json(drv("devload", ns, 11, 8).stdout)
        self.assertEqual((got["matched"], got["bad_blocks"]), (8, 0))

    def test_bad_registrations_are_refused(self):
        ns = self.m.path("model", "ns")
        drv("save", ns, "fast", 4, 2)
        cases = {"good": 0, "garbage": -errno.EINVAL, "foreign": -errno.EXDEV,
                 "kind": -errno.EXDEV, "stale": -errno.ESTALE, "unsealed": -errno.EPERM,
                 "other": -errno.EPERM}
        for case, want in cases.items():
            with self.subTest(case=case):
                got = last_json(drv("devreg", self.m.mnt, ns, case).stdout)
                self.assertEqual(got["rc"], want)
        self.assertIn("refused", self.m.log())
        # and the daemon goes on serving everyone
        got = last_json(drv("devload", ns, 4, 2).stdout)
        self.assertEqual((got["matched"], got["bad_blocks"]), (2, 0))

    def test_only_readable_blocks_reach_device_memory(self):
        if os.getuid() != 0:
            self.skipTest("needs root to act as another user")
        os.chmod(self.m.base, 0o755)
        ns = self.m.path("shared")
        drv("save", ns, "fast", 5, 3)
        os.chmod(ns, 0o755)
        for name in os.listdir(ns):
            os.chmod(os.path.join(ns, name), 0o600)
        got = last_json(drv("devload", ns, 5, 3, user=NOBODY, check=False).stdout)
        self.assertEqual((got["reg"], got["matched"]), (0, 0))
        for name in os.listdir(ns):
            os.chmod(os.path.join(ns, name), 0o644)
        got = last_json(drv("devload", ns, 5, 3, user=NOBODY).stdout)
        self.assertEqual((got["matched"], got["bad_blocks"]), (3, 0))


class DeviceLoadsFromNvme(unittest.TestCase):
    def setUp(self):
        if not fuse_available():
            self.skipTest("no /dev/fuse or fusermount3")
        self.disk = tempfile.mkdtemp(prefix="kvfs-nvme-", dir="/var/tmp")

    def tearDown(self):
        shutil.rmtree(self.disk, ignore_errors=True)

    def test_blocks_only_on_nvme_reach_device_pages(self):
        with Mount(dram="16M", args=STANDIN + ("--nvme", "%s/d0:128M" % self.disk)) as m:
            ns = m.path("ns")
            drv("save", ns, "fast", 14, 6)
            for i in range(12):  # 24 MiB through 16 MiB of DRAM
                write_file(m.path("other%d" % i), os.urandom(2 << 20), tmp_suffix=".t")
            names = [n for n in os.listdir(ns) if not n.startswith(".")]
            tiers = [os.getxattr(os.path.join(ns, n), "user.kvfs.tier").decode() for n in names]
            self.assertIn("nvme", tiers)
            got = last_json(drv("devload", ns, 14, 6).stdout)
            self.assertEqual((got["matched"], got["err"], got["bad_blocks"]), (6, 0, 0))


class DeviceCopyFailure(unittest.TestCase):
    def setUp(self):
        if not fuse_available():
            self.skipTest("no /dev/fuse or fusermount3")

    def test_a_failed_device_copy_fails_that_load_only(self):
        # the daemon's second device copy fails, as a CUDA error would
        with Mount(args=STANDIN, env={"KVFS_FAULTS": "gpu_copy:2:EIO"}) as m:
            ns = m.path("ns")
            drv("save", ns, "fast", 6, 2)
            got = last_json(drv("devload", ns, 6, 2, check=False).stdout)
            self.assertEqual((got["matched"], got["err"]), (2, -errno.EIO))
            self.assertIn("device copy", m.log())
            self.assertEqual(m.stats()["gpu"]["copy_errors"], 1)
            got = last_json(drv("devload", ns, 6, 2).stdout)
            self.assertEqual((got["err"], got["bad_blocks"]), (0, 0))

    def test_no_gpu_pool_no_device_buffers(self):
        with Mount() as m:
            ns = m.path("ns")
            drv("save", ns, "fast", 7, 1)
            got = last_json(drv("devreg", m.mnt, ns, "good").stdout)
            self.assertEqual(got["rc"], -errno.ENODEV)


if __name__ == "__main__":
    unittest.main()
