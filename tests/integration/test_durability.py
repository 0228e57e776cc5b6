"""Integrity and durability with an NVMe tier (issue 11, items 1-3).

- a file whose NVMe copy fails its checksum part-way never reads as a
  shorter file: every read of that open fails with EIO, whatever the read
  size, the read-ahead or the kernel's cached size;
- fsync/fdatasync of a file, and fsync of a directory, put the sealed files
  on NVMe before they return (or fail with EIO), so a kill -9 loses none;
- with --persist through, a sealed file that could not be written through
  is counted, retried, and says where it is.
"""
import array
import errno
import hashlib
import os
import shutil
import tempfile
import time

from harness import Mount, MountTest, errno_of, write_file

MiB = 1 << 20


def content(name, size):
    """Bytes unique at every 8-byte offset (so a segment search finds the
    right place), decided by the file's name."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") << 32
    return array.array("Q", range(seed, seed + size // 8 + 1)).tobytes()[:size]


def tier(path):
    return os.getxattr(path, "user.kvfs.tier").decode()


def find_in_segments(disk, needle):
    for root, _, files in os.walk(disk):
        for f in files:
            if not f.startswith("seg-"):
                continue
            with open(os.path.join(root, f), "rb") as fd:
                data = fd.read()
            at = data.find(needle)
            if at >= 0:
                return os.path.join(root, f), at
    return None


def flip(path, at, n=8):
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(n)
        f.seek(at)
        f.write(bytes(x ^ 0xff for x in b))


class DiskTest(MountTest):
    """A mount with one NVMe directory under /var/tmp (O_DIRECT needs a disk)."""
    dram = "32M"
    nvme = "128M"
    extra = ()

    def setUp(self):
        self.disk = tempfile.mkdtemp(prefix="kvfs-dur-", dir="/var/tmp")
        self.args = ("--nvme", "%s/d0:%s" % (self.disk, self.nvme), *self.extra)
        super().setUp()

    def tearDown(self):
        try:
            super().tearDown()
        finally:
            shutil.rmtree(self.disk, ignore_errors=True)

    def arm(self, spec):
        with open(self.m.path(".kvfs", "fault"), "w") as f:
            f.write(spec)


class NoSilentTruncation(DiskTest):
    """Item 1: a bad extent 3 MiB into a 4 MiB file."""

    def corrupt_at(self, name, off):
        """Write @name (4 MiB), unmount (it goes to NVMe), flip bytes at @off, remount."""
        write_file(self.m.path(name), content(name, 4 * MiB), tmp_suffix=".t")
        self.m.stop()
        hit = find_in_segments(self.disk, content(name, 4 * MiB)[off:off + 64])
        self.assertIsNotNone(hit, "the file's bytes are not in a segment")
        flip(hit[0], hit[1] + 16)
        self.m.start()
        self.assertEqual(tier(self.m.path(name)), "nvme")

    def read_all(self, path, chunk, stat_between=False):
        """Read @path in @chunk pieces to the end; the bytes and the error, if any."""
        fd = os.open(path, os.O_RDONLY)
        got, err = [], 0
        try:
            while True:
                try:
                    b = os.read(fd, chunk)
                except OSError as e:
                    err = e.errno
                    break
                if not b:
                    break
                got.append(b)
                if stat_between:
                    os.fstat(fd)
            # once failed, no later read of this open ends early or differs:
            # pages read before the failure may still come from the kernel's
            # cache until the daemon's invalidation lands (moments later),
            # then every read within the file fails
            if err:
                want = content(os.path.basename(path), 4 * MiB)
                deadline = time.monotonic() + 5
                while True:
                    results = []
                    for off in (0, 3 * MiB, 4 * MiB - 1):
                        os.lseek(fd, off, os.SEEK_SET)
                        try:
                            b = os.read(fd, chunk)
                        except OSError as e:
                            results.append(e.errno)
                            continue
                        self.assertNotEqual(b, b"", "end of file at %d" % off)
                        self.assertEqual(b, want[off:off + len(b)])
                        results.append(0)
                    if results == [errno.EIO] * 3:
                        break
                    self.assertLess(time.monotonic(), deadline, results)
                    time.sleep(0.01)
        finally:
            os.close(fd)
        return b"".join(got), err

    def check_never_short(self, chunk, stat_between=False):
        name = "f%d" % chunk
        self.corrupt_at(name, 3 * MiB + 4096)
        data, err = self.read_all(self.m.path(name), chunk, stat_between)
        self.assertEqual(err, errno.EIO,
                         "read %d bytes then end of file, no error (chunk %d)" %
                         (len(data), chunk))
        self.assertEqual(data, content(name, 4 * MiB)[:len(data)])
        self.assertLess(len(data), 4 * MiB)
        st = self.m.stats()
        self.assertEqual(st["lost"], 1)
        self.assertGreaterEqual(st["tiers"]["nvme"]["checksum_errors"], 1)

    def test_small_reads(self):
        self.check_never_short(4096)

    def test_large_reads_with_fstat(self):
        self.check_never_short(MiB, stat_between=True)

    def test_one_read_past_the_end(self):
        self.check_never_short(16 * MiB)

    def test_stat_of_a_lost_open_file_keeps_its_size(self):
        name = "s"
        self.corrupt_at(name, 3 * MiB + 4096)
        fd = os.open(self.m.path(name), os.O_RDONLY)
        try:
            os.lseek(fd, 3 * MiB, os.SEEK_SET)
            self.assertEqual(errno_of(os.read, fd, 4096), errno.EIO)
            time.sleep(0.2)  # the daemon's invalidation lands
            self.assertEqual(os.fstat(fd).st_size, 4 * MiB)
            os.lseek(fd, 0, os.SEEK_SET)
            self.assertEqual(errno_of(os.read, fd, 4096), errno.EIO)
        finally:
            os.close(fd)


if __name__ == "__main__":
    import unittest
    unittest.main()


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


class Fsync(DiskTest):
    """Item 2: fsync means on NVMe, with --persist back (the default)."""
    dram = "64M"

    def test_tmp_fsync_rename_dirsync_survives_kill(self):
        os.mkdir(self.m.path("d"))
        names = ["f%02d" % i for i in range(20)]
        for n in names:
            tmp = self.m.path("d", n + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, content(n, 256 * 1024))
            os.fsync(fd)
            os.close(fd)
            os.rename(tmp, self.m.path("d", n))
        dfd = os.open(self.m.path("d"), os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
        for n in names:  # plenty of DRAM: nothing was demoted, fsync put them there
            self.assertEqual(tier(self.m.path("d", n)), "dram,nvme")
        self.m.kill()
        self.m.start()
        for n in names:
            with open(self.m.path("d", n), "rb") as f:
                self.assertEqual(f.read(), content(n, 256 * 1024), n)

    def test_fsync_of_a_sealed_file_through_a_reader(self):
        write_file(self.m.path("r"), content("r", MiB))
        with open(self.m.path("r"), "rb") as f:
            self.assertEqual(tier(self.m.path("r")), "dram")
            os.fdatasync(f.fileno())
            self.assertEqual(tier(self.m.path("r")), "dram,nvme")
        self.m.kill()
        self.m.start()
        with open(self.m.path("r"), "rb") as f:
            self.assertEqual(f.read(), content("r", MiB))

    def test_fsync_before_the_seal_makes_the_seal_durable(self):
        fd = os.open(self.m.path("w"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, content("w", MiB))
        os.fsync(fd)
        os.close(fd)
        # readable means sealed, and the seal of a file fsync()ed stores it first
        with open(self.m.path("w"), "rb") as f:
            f.read(1)
        self.assertEqual(tier(self.m.path("w")), "dram,nvme")
        self.m.kill()
        self.m.start()
        with open(self.m.path("w"), "rb") as f:
            self.assertEqual(f.read(), content("w", MiB))

    def test_fsync_that_cannot_store_fails_and_is_retried(self):
        write_file(self.m.path("e"), content("e", MiB))
        self.arm("nvme_write:1:EIO")
        fd = os.open(self.m.path("e"), os.O_RDONLY)
        try:
            self.assertEqual(errno_of(os.fsync, fd), errno.EIO)
        finally:
            os.close(fd)
        st = self.m.stats()
        self.assertEqual(st["persist_failed"], 1)
        self.assertEqual(st["tiers"]["nvme"]["write_errors"], 1)
        # the worker stores it again: durable after all
        wait_for(lambda: self.m.stats()["not_durable"] == 0, what="the retry")
        self.assertEqual(tier(self.m.path("e")), "dram,nvme")
        self.m.kill()
        self.m.start()
        with open(self.m.path("e"), "rb") as f:
            self.assertEqual(f.read(), content("e", MiB))

    def test_fsync_of_a_directory_that_cannot_sync_fails(self):
        write_file(self.m.path("x"), content("x", MiB))
        self.arm("nvme_fsync:1:EIO")
        dfd = os.open(self.m.mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.assertEqual(errno_of(os.fsync, dfd), errno.EIO)
        finally:
            os.close(dfd)


class FsyncWithoutNvme(MountTest):
    """Without NVMe, fsync syncs the catalog and says so by succeeding."""

    def test_fsync_succeeds(self):
        with open(self.m.path("a"), "wb") as f:
            f.write(b"x" * 4096)
            os.fsync(f.fileno())
        with open(self.m.path("a"), "rb") as f:
            os.fsync(f.fileno())


class PersistThrough(DiskTest):
    """Item 3: --persist through says when it could not write a file through."""
    extra = ("--persist", "through")

    def test_write_error_is_counted_visible_and_retried(self):
        self.arm("nvme_write:1:EIO")
        write_file(self.m.path("a"), content("a", MiB), tmp_suffix=".t")
        st = self.m.stats()
        self.assertEqual(st["persist_failed"], 1)
        if st["not_durable"]:  # unless the retry was quicker than us
            self.assertEqual(tier(self.m.path("a")), "dram")
        wait_for(lambda: self.m.stats()["not_durable"] == 0, what="the retry")
        self.assertEqual(tier(self.m.path("a")), "dram,nvme")
        self.m.kill()
        self.m.start()
        with open(self.m.path("a"), "rb") as f:
            self.assertEqual(f.read(), content("a", MiB))

    def test_sticky_write_error_stays_not_durable(self):
        self.arm("nvme_write:1:EIO:sticky")
        write_file(self.m.path("a"), content("a", MiB), tmp_suffix=".t")
        write_file(self.m.path("b"), content("b", MiB), tmp_suffix=".t")
        time.sleep(1.5)  # a retry or more
        st = self.m.stats()
        self.assertEqual(st["persist_failed"], 2)  # files, not attempts
        self.assertEqual(st["not_durable"], 2)
        self.assertEqual(tier(self.m.path("a")), "dram")
        self.arm("nvme_write:0:EIO")  # disarm: the retry succeeds
        wait_for(lambda: self.m.stats()["not_durable"] == 0, what="the retry")
        os.unlink(self.m.path("b"))

    def quiet_then_arm(self, f, spec):
        """Arm @spec once the worker has flushed what creating @f made
        dirty (its directory's times), so the seal's commit is the next."""
        f.flush()
        time.sleep(1.3)
        self.arm(spec)

    def test_catalog_error_at_seal_is_counted(self):
        with open(self.m.path("a.t"), "wb") as f:
            f.write(content("a", MiB))
            self.quiet_then_arm(f, "cat_write:1:EIO")
        os.rename(self.m.path("a.t"), self.m.path("a"))
        st = self.m.stats()
        self.assertEqual(st["catalog"]["errors"], 1)
        self.assertEqual(st["persist_failed"], 1)
        wait_for(lambda: self.m.stats()["not_durable"] == 0, what="the retry")
        self.assertEqual(tier(self.m.path("a")), "dram,nvme")

    def test_empty_file_whose_record_failed_is_retried(self):
        os.mkdir(self.m.path("d"))
        with open(self.m.path("d", "empty"), "wb") as f:
            self.quiet_then_arm(f, "cat_write:1:EIO")
        # readable: sealed; its record failed and is counted
        with open(self.m.path("d", "empty"), "rb") as f:
            self.assertEqual(f.read(), b"")
        st = self.m.stats()
        self.assertEqual(st["catalog"]["errors"], 1)
        self.assertEqual(st["persist_failed"], 1)
        wait_for(lambda: self.m.stats()["not_durable"] == 0, what="the retry")
        self.m.kill()
        self.m.start()
        self.assertEqual(os.stat(self.m.path("d", "empty")).st_size, 0)


class NoShortReplies(MountTest):
    """A file in DRAM whose pages are scattered (small pages, two files
    written in turns) is read in 1 MiB requests: more pieces than one reply
    carries must not make a short reply, which the kernel takes for the end."""
    args = ("--page-size", "4K")

    def test_scattered_pages_read_whole(self):
        a, b = self.m.path("a"), self.m.path("b")
        da, db = content("a", 4 * MiB), content("b", 4 * MiB)
        with open(a, "wb") as fa, open(b, "wb") as fb:
            for off in range(0, 4 * MiB, 4096):
                fa.write(da[off:off + 4096])
                fb.write(db[off:off + 4096])
                fa.flush()
                fb.flush()
        fd = os.open(a, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            got = b"".join(iter(lambda: os.read(fd, MiB), b""))
        finally:
            os.close(fd)
        self.assertEqual(len(got), 4 * MiB)
        self.assertEqual(got, da)
        self.assertEqual(os.stat(a).st_size, 4 * MiB)
