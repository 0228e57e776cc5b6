"""FUSE passthrough of sealed files in DRAM (DESIGN §5): reads and mmap of a
sealed file never reach the daemon (its READ counter stays at zero), the
bytes are the same as on the read path, and the eviction rules are the same:
an open file is never evicted and a writer meets ENOSPC when every byte of
DRAM is held by open files.

The suite runs twice under `make test`, the second time with every daemon
started with --no-passthrough (KVFS_TEST_NO_PASSTHROUGH=1): the same checks
then hold on the read path, and the counters say which path served them.
"""
import errno
import mmap
import os

from harness import NO_PASSTHROUGH, Mount, MountTest, fuse_available, read_file
from test_eviction import MiB, check, content, put
from test_nvme import cold_read

SIZES = [1, 4095, 4096, 65537, 3 * MiB + 17]


class Passthrough(MountTest):
    dram = "8M"

    def setUp(self):
        super().setUp()
        self.pt = self.m.config()["passthrough"]
        if not NO_PASSTHROUGH and not self.pt:
            self.skipTest("the kernel does not offer FUSE passthrough (Linux >= 6.9, "
                          "CONFIG_FUSE_PASSTHROUGH, root)")

    def test_config_says_which_path(self):
        self.assertEqual(self.m.config()["passthrough"], not NO_PASSTHROUGH)
        self.assertEqual(self.m.config()["dram_store"], "tmpfs")
        log = self.m.log()
        self.assertIn("FUSE passthrough: off (--no-passthrough)" if NO_PASSTHROUGH
                      else "FUSE passthrough: on", log)
        # the backends in placement order, and the documented names agree with them
        put(self.m.path("a"), MiB)
        st = self.m.stats()
        self.assertEqual([b["name"] for b in st["backends"]], ["dram"])
        self.assertEqual(st["backends"][0]["used_bytes"], st["tiers"]["dram"]["used_bytes"])
        self.assertEqual(st["backends"][0]["capacity_bytes"], 8 * MiB)
        self.assertEqual(st["backends"][0]["files"], 1)

    def test_reads_and_mmap_never_reach_the_daemon(self):
        m = self.m
        for s in SIZES:
            put(m.path("f%d" % s), s)
        before = m.stats()
        for s in SIZES:
            # drop what the writer left in the page cache: a read must come
            # from somewhere (the daemon, or the DRAM file by passthrough)
            self.assertEqual(cold_read(m.path("f%d" % s)), content("f%d" % s, s))
            with open(m.path("f%d" % s), "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
                    self.assertEqual(mm[:], content("f%d" % s, s))
                f.seek(s // 2)
                self.assertEqual(f.read(), content("f%d" % s, s)[s // 2:])
        st = m.stats()
        opens = 2 * len(SIZES)
        if NO_PASSTHROUGH:
            self.assertGreater(st["reads"] - before["reads"], 0)
            self.assertEqual(st["passthrough_opens"], 0)
        else:
            self.assertEqual(st["reads"], 0)  # not one READ came to the daemon
            self.assertEqual(st["read_bytes"], 0)
            self.assertEqual(st["passthrough_opens"] - before["passthrough_opens"], opens)
        self.assertEqual(st["passthrough_refused"], 0)
        self.assertEqual(st["hits"] - before["hits"], opens)  # hits counted at open

    def test_empty_file(self):
        put(self.m.path("e"), 0)
        self.assertEqual(read_file(self.m.path("e")), b"")

    def test_many_opens_of_one_file_share_it(self):
        m = self.m
        put(m.path("a"), MiB)
        fds = [os.open(m.path("a"), os.O_RDONLY) for _ in range(5)]
        try:
            for fd in fds:
                self.assertEqual(os.pread(fd, MiB, 0), content("a", MiB))
        finally:
            for fd in fds[:3]:
                os.close(fd)
        # some still open, then a new one: still the same path, still right
        fd = os.open(m.path("a"), os.O_RDONLY)
        self.assertEqual(os.pread(fd, 100, 10), content("a", MiB)[10:110])
        for fd in fds[3:] + [fd]:
            os.close(fd)
        self.assertEqual(m.stats()["open_handles"], 0)

    def test_open_file_is_never_evicted_and_storage_stays(self):
        """The same rules as the read path: an open (leased) file survives a
        fill past capacity, mmap included, and goes only after its close."""
        m = self.m
        put(m.path("held"), 2 * MiB)
        f = open(m.path("held"), "rb")
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        for i in range(20):
            put(m.path("x%02d" % i))
        st = m.stats()
        self.assertGreater(st["evictions"], 0)
        self.assertLessEqual(st["tiers"]["dram"]["used_bytes"], 8 * MiB)
        self.assertTrue(os.path.exists(m.path("held")))
        self.assertEqual(mm[:], content("held", 2 * MiB))
        f.seek(0)
        self.assertEqual(f.read(), content("held", 2 * MiB))
        # closed but still mapped: the kernel keeps its open; still not evicted
        f.close()
        for i in range(20, 30):
            put(m.path("x%02d" % i))
        self.assertTrue(os.path.exists(m.path("held")))
        self.assertEqual(mm[:], content("held", 2 * MiB))
        mm.close()
        for i in range(30, 40):
            put(m.path("x%02d" % i))
        self.assertFalse(os.path.exists(m.path("held")))
        self.assertEqual(m.stats()["open_handles"], 0)

    def test_writer_enospc_when_open_files_hold_dram(self):
        m = self.m
        held = []
        for i in range(8):
            put(m.path("h%d" % i))
            held.append(open(m.path("h%d" % i), "rb"))
        try:
            with self.assertRaises(OSError) as cm:
                put(m.path("new"))
            self.assertEqual(cm.exception.errno, errno.ENOSPC)
            for i, f in enumerate(held):
                self.assertEqual(f.read(), content("h%d" % i))
        finally:
            for f in held:
                f.close()
        put(m.path("new2"))  # room again once they are closed
        self.assertTrue(check(m.path("new2")))


class BackingOpenRefused(MountTest):
    """A kernel that refuses BACKING_OPEN (here: the fault seam, EPERM on the
    first call) costs that open its passthrough, never the open itself."""
    dram = "16M"

    def setUp(self):
        if not fuse_available():
            self.skipTest("no /dev/fuse or fusermount3")
        self.m = Mount(dram=self.dram, env={"KVFS_FAULTS": "backing_open:1:EPERM"}).start()
        if not self.m.config()["passthrough"]:
            self.skipTest("passthrough is off (kernel, or --no-passthrough)")

    def test_refusal_falls_back_to_the_read_path(self):
        m = self.m
        put(m.path("a"), MiB)
        put(m.path("b"), MiB)
        fa = open(m.path("a"), "rb")  # refused: the read path
        fa2 = open(m.path("a"), "rb")  # the same inode: must stay on the read path
        # the writer left its pages in the page cache: drop them, so READs come
        os.posix_fadvise(fa.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        self.assertEqual(fa.read(), content("a", MiB))
        self.assertEqual(fa2.read(), content("a", MiB))
        st = m.stats()
        self.assertEqual(st["passthrough_refused"], 1)
        self.assertEqual(st["passthrough_opens"], 0)
        self.assertGreater(st["reads"], 0)
        self.assertTrue(check(m.path("b")))  # the next file passes through
        self.assertEqual(m.stats()["passthrough_opens"], 1)
        fa.close()
        fa2.close()
        reads = m.stats()["reads"]
        self.assertTrue(check(m.path("a")))  # closed: now it can pass through too
        st = m.stats()
        self.assertEqual(st["passthrough_opens"], 2)
        self.assertEqual(st["reads"], reads)


class NvmeOnlyIsBroughtIn(MountTest):
    """A sealed file only on NVMe is read into DRAM at open (checksums checked)
    and passed through; with no room in DRAM it is served by the read path.
    Room is made only by dropping DRAM copies NVMe holds already (here all
    of them: --persist through), so an open never costs a file its copy."""
    dram = "4M"

    def setUp(self):
        if not fuse_available():
            self.skipTest("no /dev/fuse or fusermount3")
        self.m = Mount(dram=self.dram)
        self.m.args = ["--nvme", os.path.join(self.m.base, "nvme") + ":64M",
                       "--persist", "through"]
        self.m.start()
        self.pt = self.m.config()["passthrough"]

    def test_promoted_at_open_or_read_path_without_room(self):
        m = self.m
        put(m.path("cold"), MiB)
        for i in range(8):  # push it out of DRAM: it stays on NVMe
            put(m.path("w%d" % i), MiB)
        self.assertEqual(os.getxattr(m.path("cold"), "user.kvfs.tier"), b"nvme")
        st = m.stats()
        self.assertEqual([b["name"] for b in st["backends"]], ["dram", "nvme"])
        self.assertEqual(st["backends"][1]["files"], st["tiers"]["nvme"]["files"])
        self.assertEqual(st["backends"][1]["used_bytes"], st["tiers"]["nvme"]["used_bytes"])
        before = m.stats()
        self.assertEqual(cold_read(m.path("cold")), content("cold", MiB))
        st = m.stats()
        if self.pt:
            self.assertEqual(st["passthrough_opens"] - before["passthrough_opens"], 1)
            self.assertEqual(st["reads"], before["reads"])
            self.assertIn(b"dram", os.getxattr(m.path("cold"), "user.kvfs.tier"))
        # every byte of DRAM held open: a cold file cannot come in, read path
        held = []
        for i in range(4):
            put(m.path("h%d" % i), MiB)
            held.append(open(m.path("h%d" % i), "rb"))
        try:
            victims = [n for n in ("w%d" % i for i in range(8))
                       if os.getxattr(m.path(n), "user.kvfs.tier") == b"nvme"]
            self.assertTrue(victims)
            before = m.stats()
            self.assertEqual(cold_read(m.path(victims[0])), content(victims[0], MiB))
            st = m.stats()
            if self.pt:
                self.assertEqual(st["passthrough_no_room"] - before["passthrough_no_room"], 1)
            self.assertGreater(st["reads"], before["reads"])
        finally:
            for f in held:
                f.close()
