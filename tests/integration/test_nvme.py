"""The NVMe tier on a real mount: placement, persistence, integrity, faults.

Segment directories live under /var/tmp (O_DIRECT needs a disk filesystem;
tmpfs refuses it), inside each test's own temporary directory.
"""
import errno
import hashlib
import os
import shutil
import subprocess
import tempfile
import time

from harness import KVFSCTL, Mount, MountTest, errno_of, read_file, write_file

MiB = 1 << 20


def content(name, size):
    """Self-describing bytes: a file's name decides them."""
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // 32 + 1))[:size]


def tier(path):
    return os.getxattr(path, "user.kvfs.tier").decode()


def cold_read(path):
    """Read bypassing the kernel page cache (a file written through the mount
    stays there), so the bytes come from the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)


class NvmeMount(MountTest):
    dram = "32M"
    nvme = "256M"
    extra = ()

    def setUp(self):
        self.disk = tempfile.mkdtemp(prefix="kvfs-nvme-", dir="/var/tmp")
        self.args = ("--nvme", "%s/d0:%s" % (self.disk, self.nvme),
                     "--nvme", "%s/d1:%s" % (self.disk, self.nvme), *self.extra)
        super().setUp()

    def tearDown(self):
        try:
            super().tearDown()
        finally:
            shutil.rmtree(self.disk, ignore_errors=True)

    def fill(self, n, size=4 * MiB, prefix="f"):
        names = ["%s%03d" % (prefix, i) for i in range(n)]
        for name in names:
            write_file(self.m.path(name), content(name, size), tmp_suffix=".tmp")
        return names

    def check(self, names, size=4 * MiB):
        for name in names:
            self.assertEqual(cold_read(self.m.path(name)), content(name, size), name)


class Placement(NvmeMount):
    def test_demotion_promotion_and_capacity(self):
        names = self.fill(24)  # 96 MiB through 32 MiB of DRAM
        st = self.m.stats()
        self.assertGreater(st["demotions"], 10)
        self.assertEqual(st["evictions"], 0)  # nothing lost: NVMe took them
        self.assertEqual(st["capacity_bytes"], 32 * MiB + 512 * MiB)
        self.assertEqual(tier(self.m.path(names[0])), "nvme")
        self.assertIn("dram", tier(self.m.path(names[-1])))
        # df shows both tiers
        sv = os.statvfs(self.m.mnt)
        self.assertEqual(sv.f_blocks * sv.f_frsize, (32 + 512) * MiB)
        # served from NVMe, then promoted when read again
        before = self.m.stats()["tiers"]["nvme"]["read_bytes"]
        self.assertEqual(cold_read(self.m.path(names[0])), content(names[0], 4 * MiB))
        self.assertGreaterEqual(self.m.stats()["tiers"]["nvme"]["read_bytes"] - before, 4 * MiB)
        cold_read(self.m.path(names[0]))
        self.assertEqual(tier(self.m.path(names[0])), "dram,nvme")
        self.assertGreaterEqual(self.m.stats()["promotions"], 1)
        self.check(names)

    def test_nvme_full_evicts_least_valuable(self):
        # 32 MiB DRAM + 2 x 24 MiB NVMe: writing 128 MiB must evict
        shutil.rmtree(self.disk, ignore_errors=True)
        self.m.close()
        self.disk = tempfile.mkdtemp(prefix="kvfs-nvme-", dir="/var/tmp")
        self.m = Mount(dram="32M", args=("--nvme", "%s/d0:24M" % self.disk,
                                         "--nvme", "%s/d1:24M" % self.disk)).start()
        names = self.fill(32)
        st = self.m.stats()
        self.assertGreater(st["tiers"]["nvme"]["evictions"], 0)
        self.assertLessEqual(st["used_bytes"], st["capacity_bytes"])
        alive = [n for n in names if os.path.exists(self.m.path(n))]
        self.assertLess(len(alive), 32)
        self.assertIn(names[-1], alive)  # the newest stays
        self.check(alive)


class Persistence(NvmeMount):
    def test_restart_keeps_nvme_files_byte_exact(self):
        names = self.fill(20)
        self.m.restart()
        st = self.m.stats()
        # a clean unmount wrote the DRAM-only files too: nothing is lost
        self.assertEqual(st["restart_recovered"], 20)
        self.assertEqual(st["restart_dropped"], 0)
        self.assertEqual(sorted(n for n in os.listdir(self.m.mnt) if n != ".kvfs"), names)
        for n in names:
            self.assertEqual(tier(self.m.path(n)), "nvme")
        self.check(names)

    def test_kill_keeps_what_reached_nvme(self):
        names = self.fill(20)
        on_nvme = [n for n in names if "nvme" in tier(self.m.path(n))]
        dram_only = [n for n in names if n not in on_nvme]
        self.assertTrue(on_nvme and dram_only)
        self.m.kill()
        self.m.start()
        visible = sorted(n for n in os.listdir(self.m.mnt) if n != ".kvfs")
        self.assertEqual(visible, sorted(on_nvme))
        self.check(on_nvme)

    def test_unlinked_and_renamed_files_stay_that_way(self):
        names = self.fill(16)
        os.unlink(self.m.path(names[0]))
        os.rename(self.m.path(names[1]), self.m.path("renamed"))
        self.m.kill()
        self.m.start()
        self.assertFalse(os.path.exists(self.m.path(names[0])))
        self.assertFalse(os.path.exists(self.m.path(names[1])))
        if os.path.exists(self.m.path("renamed")):
            self.assertEqual(cold_read(self.m.path("renamed")), content(names[1], 4 * MiB))
        visible = len(os.listdir(self.m.mnt)) - 1
        used = self.m.stats()["tiers"]["nvme"]["used_bytes"]
        self.assertGreater(visible, 0)
        # a clean restart now keeps exactly those; the unlinked file's space was freed
        self.m.restart()
        self.assertEqual(self.m.stats()["restart_recovered"], visible)
        self.assertEqual(self.m.stats()["tiers"]["nvme"]["used_bytes"], used)


class WriteThrough(NvmeMount):
    extra = ("--persist", "through")

    def test_every_sealed_file_is_on_nvme(self):
        names = self.fill(4, size=MiB)
        for n in names:
            self.assertEqual(tier(self.m.path(n)), "dram,nvme")
        self.m.kill()  # no clean unmount
        self.m.start()
        self.check(names, size=MiB)


class Integrity(NvmeMount):
    def test_flipped_byte_is_never_returned(self):
        names = self.fill(16)
        victim = names[0]
        self.assertEqual(tier(self.m.path(victim)), "nvme")
        # find the victim's bytes in a segment file and flip one
        needle = content(victim, 4 * MiB)[4096:4096 + 64]
        hit = None
        for root, _, files in os.walk(self.disk):
            for f in files:
                if not f.startswith("seg-"):
                    continue
                data = open(os.path.join(root, f), "rb").read()
                at = data.find(needle)
                if at >= 0:
                    hit = (os.path.join(root, f), at + 7)
                    break
            if hit:
                break
        self.assertIsNotNone(hit, "the victim's bytes are not in any segment")
        with open(hit[0], "r+b") as f:
            f.seek(hit[1])
            b = f.read(1)
            f.seek(hit[1])
            f.write(bytes([b[0] ^ 0xff]))
        e = errno_of(cold_read, self.m.path(victim))
        self.assertIn(e, (errno.EIO, errno.ENOENT))
        st = self.m.stats()
        self.assertEqual(st["lost"], 1)
        self.assertGreaterEqual(st["tiers"]["nvme"]["checksum_errors"], 1)
        self.assertFalse(os.path.exists(self.m.path(victim)))
        self.check(names[1:])


class Faults(NvmeMount):
    def arm(self, spec):
        with open(self.m.path(".kvfs", "fault"), "w") as f:
            f.write(spec)

    def test_write_error_keeps_file_in_dram(self):
        self.m.close()
        self.m = Mount(dram="32M", args=("--nvme", "%s/wt:64M" % self.disk,
                                         "--persist", "through")).start()
        self.arm("nvme_write:1:EIO")
        write_file(self.m.path("a"), content("a", MiB), tmp_suffix=".t")
        self.assertEqual(tier(self.m.path("a")), "dram")
        st = self.m.stats()
        self.assertEqual(st["tiers"]["nvme"]["write_errors"], 1)
        self.assertEqual(st["faults_injected"]["nvme_write"], 1)
        self.assertEqual(cold_read(self.m.path("a")), content("a", MiB))
        write_file(self.m.path("b"), content("b", MiB), tmp_suffix=".t")
        self.assertEqual(tier(self.m.path("b")), "dram,nvme")

    def test_read_error_drops_the_only_copy(self):
        names = self.fill(12)
        victim = names[0]
        self.assertEqual(tier(self.m.path(victim)), "nvme")
        self.arm("nvme_read:1:EIO")
        self.assertIn(errno_of(cold_read, self.m.path(victim)), (errno.EIO, errno.ENOENT))
        # the kernel forgets the name when the daemon's invalidation lands
        deadline = time.monotonic() + 5
        while os.path.exists(self.m.path(victim)) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertFalse(os.path.exists(self.m.path(victim)))
        st = self.m.stats()
        self.assertEqual(st["lost"], 1)
        self.assertEqual(st["tiers"]["nvme"]["read_errors"], 1)
        self.check(names[1:])

    def test_enospc_stops_nvme_not_dram(self):
        self.arm("nvme_write:1:ENOSPC")
        names = self.fill(24)
        st = self.m.stats()
        self.assertEqual(st["tiers"]["nvme"]["full"], 1)
        self.assertGreater(st["evictions"], 0)  # DRAM keeps working by evicting
        alive = [n for n in names if os.path.exists(self.m.path(n))]
        self.check(alive)
        self.assertIn(names[-1], alive)

    def test_fsync_fault_at_shutdown_is_survived(self):
        self.fill(4)
        self.arm("nvme_fsync:1:EIO")
        self.m.restart()
        self.assertTrue(self.m.alive())


class Verify(NvmeMount):
    def test_kvfsctl_verify_finds_and_drops_corruption(self):
        names = self.fill(12)
        r = subprocess.run([KVFSCTL, "verify", self.m.mnt], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("12 files verified", r.stdout)
        # corrupt one NVMe-only file on disk
        victim = names[0]
        needle = content(victim, 4 * MiB)[8192:8192 + 64]
        for root, _, files in os.walk(self.disk):
            for f in files:
                if f.startswith("seg-"):
                    p = os.path.join(root, f)
                    data = open(p, "rb").read()
                    at = data.find(needle)
                    if at >= 0:
                        with open(p, "r+b") as fh:
                            fh.seek(at)
                            fh.write(b"\0")
        r = subprocess.run([KVFSCTL, "verify", self.m.mnt], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn(victim, r.stdout + r.stderr)
        self.assertFalse(os.path.exists(self.m.path(victim)))


class Fsck(NvmeMount):
    def fsck(self, *args):
        return subprocess.run([KVFSCTL, "fsck", *args, self.m.state], capture_output=True,
                              text=True, timeout=120)

    def test_fsck_clean_corrupt_repair(self):
        names = self.fill(10)
        r = self.fsck()
        self.assertEqual(r.returncode, 2)  # the daemon holds the state directory
        self.assertIn("in use", r.stderr)
        self.m.stop()
        r = self.fsck()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("clean", r.stdout)
        self.assertIn("10 NVMe records", r.stdout)
        # flip a byte of the first file's bytes on disk
        needle = content(names[0], 4 * MiB)[4096:4096 + 64]
        for root, _, files in os.walk(self.disk):
            for f in files:
                if f.startswith("seg-"):
                    p = os.path.join(root, f)
                    data = open(p, "rb").read()
                    at = data.find(needle)
                    if at >= 0:
                        with open(p, "r+b") as fh:
                            fh.seek(at + 3)
                            fh.write(bytes([data[at + 3] ^ 1]))
        r = self.fsck()
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("failing their checksum", r.stdout)
        r = self.fsck("--no-verify")
        self.assertEqual(r.returncode, 0, r.stdout)  # the records themselves are fine
        r = self.fsck("--repair")
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("repaired", r.stdout)
        self.assertEqual(self.fsck().returncode, 0)
        self.m.start()
        self.assertFalse(os.path.exists(self.m.path(names[0])))
        self.check(names[1:])
