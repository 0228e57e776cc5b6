"""Eviction on a real mount (DESIGN §2 rules 2 and 3): when a write needs
room, sealed files that nobody has open and that are not pinned disappear,
least valuable first; open and pinned files never do; if nothing can go, the
write fails with ENOSPC and nothing else is disturbed.

Every file carries the SHA-256 of its name, repeated, so any read can be
checked against the name it was opened by. Sizes are whole 64 KiB pages, so
an 8 MiB arena holds exactly eight 1 MiB files.
"""
import errno
import hashlib
import os
import threading

from harness import MountTest, errno_of, read_file

MiB = 1 << 20


def content(name, size=MiB):
    h = hashlib.sha256(name.encode()).digest()
    return (h * (size // len(h) + 1))[:size]


def put(path, size=MiB, tmp=True):
    """Write a file the way engines do: a temporary name, then rename."""
    data = content(os.path.basename(path), size)
    target = path + ".tmp" if tmp else path
    with open(target, "wb") as f:
        f.write(data)
    if tmp:
        os.rename(target, path)
    return data


def check(path, size=MiB):
    """True if @path reads back as its content; False if it is gone (ENOENT)."""
    try:
        data = read_file(path)
    except FileNotFoundError:
        return False
    if data != content(os.path.basename(path), size):
        raise AssertionError("%s: wrong bytes (%d bytes read)" % (path, len(data)))
    return True


def write_raw(path, size=MiB):
    """create + one write of @size bytes; returns the errno of the write (0 if ok)
    and leaves the file closed (and so sealed, possibly short)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, content(os.path.basename(path), size))
        return 0
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)


class Eviction(MountTest):
    dram = "8M"

    def sane(self, st=None):
        st = st or self.m.stats()
        self.assertLessEqual(st["used_bytes"], st["capacity_bytes"])
        self.assertLessEqual(st["tiers"]["dram"]["used_bytes"],
                             st["tiers"]["dram"]["capacity_bytes"])
        self.assertEqual(st["open_handles"], 0)
        return st

    def test_fill_past_capacity_evicts_sealed_files(self):
        m = self.m
        os.makedirs(m.path("d"))
        names = ["f%02d" % i for i in range(24)]
        for n in names:
            put(m.path("d", n))  # every write succeeds
        st = self.sane()
        self.assertEqual(st["capacity_bytes"], 8 * MiB)
        self.assertGreater(st["evictions"], 0)
        self.assertEqual(st["enospc"], 0)
        listed = set(os.listdir(m.path("d")))
        survivors = {n for n in names if check(m.path("d", n))}
        gone = set(names) - survivors
        self.assertEqual(listed, survivors)  # evicted names are gone from the listing
        self.assertEqual(len(survivors), st["files"])
        self.assertLessEqual(len(survivors), 8)
        self.assertEqual(st["evictions"], len(gone))
        self.assertEqual(st["evicted_bytes"], len(gone) * MiB)
        self.assertIn(names[-1], survivors)  # the newest file is never the victim
        for n in gone:
            self.assertEqual(errno_of(open, m.path("d", n), "rb"), errno.ENOENT)
            self.assertEqual(errno_of(os.getxattr, m.path("d", n), "user.kvfs.hits"),
                             errno.ENOENT)

    def test_open_files_never_evicted(self):
        m = self.m
        held = {}
        for n in ("a", "b", "c"):
            put(m.path(n))
            held[n] = open(m.path(n), "rb")
        try:
            for i in range(20):
                put(m.path("w%02d" % i))
            st = m.stats()
            self.assertGreaterEqual(st["evictions"], 15)
            for n, f in held.items():
                f.seek(0)
                self.assertEqual(f.read(), content(n))
                self.assertEqual(read_file(m.path(n)), content(n))  # still reachable by name
            # Everything else pinned: nothing can be evicted; the next write fails.
            others = [n for n in os.listdir(m.mnt) if n.startswith("w")]
            self.assertEqual(len(others), 5)
            for n in others:
                os.setxattr(m.path(n), "user.kvfs.pin", b"1")
            before = m.stats()
            self.assertEqual(before["tiers"]["dram"]["free_bytes"], 0)
            self.assertEqual(write_raw(m.path("full")), errno.ENOSPC)
            after = m.stats()
            self.assertGreater(after["enospc"], before["enospc"])
            self.assertEqual(after["evictions"], before["evictions"])  # nothing disturbed
            for n, f in held.items():
                f.seek(0)
                self.assertEqual(f.read(), content(n))
            for n in others:
                self.assertTrue(check(m.path(n)))
            # A failed write leaves an empty file the writer removes, as engines do.
            self.assertEqual(os.stat(m.path("full")).st_size, 0)
            os.unlink(m.path("full"))
        finally:
            for f in held.values():
                f.close()
        # Closed again: the held files are evictable and writes succeed.
        self.assertEqual(write_raw(m.path("next")), 0)
        self.assertTrue(check(m.path("next")))
        present = [n for n in held if n in os.listdir(m.mnt)]
        self.assertEqual(len(present), 2)  # exactly one of a, b, c made room
        for n in others:
            self.assertTrue(check(m.path(n)))
        self.sane()

    def test_pinned_files_never_evicted(self):
        m = self.m
        for n in ("p1", "p2"):
            put(m.path(n))
            os.setxattr(m.path(n), "user.kvfs.pin", b"1")
            self.assertEqual(os.getxattr(m.path(n), "user.kvfs.pin"), b"1")
        st = m.stats()["tiers"]["dram"]
        self.assertEqual((st["pinned_files"], st["pinned_bytes"]), (2, 2 * MiB))
        self.assertEqual(errno_of(os.setxattr, m.path("p1"), "user.kvfs.pin", b"2"),
                         errno.EINVAL)
        self.assertEqual(errno_of(os.setxattr, m.mnt, "user.kvfs.pin", b"1"), errno.EISDIR)
        for i in range(30):
            put(m.path("x%02d" % i))
        self.assertGreaterEqual(m.stats()["evictions"], 24)
        self.assertTrue(check(m.path("p1")))
        self.assertTrue(check(m.path("p2")))
        # Unpinned (by value, and by removing the attribute): evictable again.
        os.setxattr(m.path("p1"), "user.kvfs.pin", b"0")
        os.removexattr(m.path("p2"), "user.kvfs.pin")
        self.assertEqual(os.getxattr(m.path("p2"), "user.kvfs.pin"), b"0")
        st = m.stats()["tiers"]["dram"]
        self.assertEqual((st["pinned_files"], st["pinned_bytes"]), (0, 0))
        for i in range(30):
            put(m.path("y%02d" % i))
        self.assertFalse(check(m.path("p1")))
        self.assertFalse(check(m.path("p2")))
        self.sane()

    def test_file_larger_than_capacity(self):
        m = self.m
        put(m.path("pinned"))
        os.setxattr(m.path("pinned"), "user.kvfs.pin", b"1")
        put(m.path("held"))
        put(m.path("other"))
        with open(m.path("held"), "rb") as held:
            # Growing past what can be made free: ENOSPC (or EFBIG) partway through.
            fd = os.open(m.path("big.tmp"), os.O_WRONLY | os.O_CREAT, 0o644)
            chunk, err, written = content("big", MiB), 0, 0
            try:
                for _ in range(9):
                    os.write(fd, chunk)
                    written += MiB
            except OSError as e:
                err = e.errno
            finally:
                os.close(fd)
            self.assertIn(err, (errno.ENOSPC, errno.EFBIG))
            self.assertLessEqual(written, 6 * MiB)  # pinned + held stay: 6 MiB at most
            self.assertEqual(held.read(), content("held"))
            os.unlink(m.path("big.tmp"))
        self.assertTrue(check(m.path("pinned")))
        self.assertTrue(check(m.path("held")))
        # Past the arena itself: EFBIG, for a write and for a truncate.
        fd = os.open(m.path("huge.tmp"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            self.assertEqual(errno_of(os.pwrite, fd, b"x", 8 * MiB), errno.EFBIG)
            self.assertEqual(errno_of(os.ftruncate, fd, 8 * MiB + 1), errno.EFBIG)
            self.assertEqual(os.fstat(fd).st_size, 0)
            # Straddling the end: a short write up to it (as for RLIMIT_FSIZE), or EFBIG.
            try:
                n = os.pwrite(fd, b"x" * 4096, 8 * MiB - 2048)
            except OSError as e:
                self.assertEqual(e.errno, errno.EFBIG)
                n = 0
            self.assertIn(n, (0, 2048))
            self.assertEqual(errno_of(os.pwrite, fd, b"x", 8 * MiB), errno.EFBIG)
        finally:
            os.close(fd)
        self.assertEqual(os.stat(m.path("huge.tmp")).st_size, 8 * MiB if n else 0)
        os.unlink(m.path("huge.tmp"))
        # Consistent afterwards: everything still listed is whole, and writes work.
        st = self.sane()
        names = [n for n in os.listdir(m.mnt) if n != ".kvfs"]
        self.assertEqual(len(names), st["files"])
        for n in names:
            self.assertTrue(check(m.path(n)))
        self.assertEqual(st["tiers"]["dram"]["pinned_files"], 1)
        put(m.path("after"))
        self.assertTrue(check(m.path("after")))

    def test_one_file_the_size_of_the_arena(self):
        """A file exactly as large as the arena fits by evicting everything
        else; one page more is EFBIG at exactly the arena's end."""
        m = self.m
        for i in range(4):
            put(m.path("s%d" % i))
        fd = os.open(m.path("whole"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for i in range(8):
                self.assertEqual(os.write(fd, content("whole", MiB)), MiB)
            self.assertEqual(errno_of(os.write, fd, b"y" * 65536), errno.EFBIG)
        finally:
            os.close(fd)
        self.assertEqual(read_file(m.path("whole")), content("whole", MiB) * 8)
        st = self.sane()
        self.assertEqual(st["files"], 1)
        self.assertEqual(st["evictions"], 4)
        for i in range(4):
            self.assertFalse(check(m.path("s%d" % i)))

    def test_operator_evict_file(self):
        m = self.m
        for n in ("a", "b", "c"):
            put(m.path(n))
        os.setxattr(m.path("a"), "user.kvfs.evict", b"1")
        self.assertNotIn("a", os.listdir(m.mnt))
        self.assertEqual(errno_of(open, m.path("a"), "rb"), errno.ENOENT)
        st = m.stats()
        self.assertEqual(st["operator_evictions"], 1)
        self.assertEqual(st["files"], 2)
        # Open: EBUSY, and the file stays whole.
        with open(m.path("b"), "rb") as f:
            self.assertEqual(errno_of(os.setxattr, m.path("b"), "user.kvfs.evict", b"1"),
                             errno.EBUSY)
            self.assertEqual(f.read(), content("b"))
        self.assertTrue(check(m.path("b")))
        # Pinned: EPERM.
        os.setxattr(m.path("c"), "user.kvfs.pin", b"1")
        self.assertEqual(errno_of(os.setxattr, m.path("c"), "user.kvfs.evict", b"1"),
                         errno.EPERM)
        self.assertTrue(check(m.path("c")))
        # Only "1" means evict; control files cannot be evicted.
        self.assertEqual(errno_of(os.setxattr, m.path("b"), "user.kvfs.evict", b"0"),
                         errno.EINVAL)
        self.assertEqual(errno_of(os.setxattr, m.path(".kvfs", "stats"), "user.kvfs.evict",
                                  b"1"), errno.EPERM)
        self.assertEqual(m.stats()["operator_evictions"], 1)
        os.setxattr(m.path("c"), "user.kvfs.pin", b"0")
        os.setxattr(m.path("b"), "user.kvfs.evict", b"1")
        os.setxattr(m.path("c"), "user.kvfs.evict", b"1\n")
        self.assertEqual([n for n in os.listdir(m.mnt) if n != ".kvfs"], [])
        st = self.sane()
        self.assertEqual((st["operator_evictions"], st["files"], st["used_bytes"]), (3, 0, 0))

    def test_operator_evict_tree(self):
        m = self.m
        os.makedirs(m.path("t", "b", "c"))
        os.makedirs(m.path("keep"))
        tree = ["t/f1", "t/b/f2", "t/b/f3", "t/b/c/f4", "t/b/c/pinned", "t/b/c/open"]
        for p in tree + ["keep/k1", "t0"]:
            put(m.path(p), 256 << 10)
        os.setxattr(m.path("t/b/c/pinned"), "user.kvfs.pin", b"1")
        writing = open(m.path("t/b/writing"), "wb")  # not sealed yet: stays
        writing.write(b"w" * 1000)
        writing.flush()
        with open(m.path("t/b/c/open"), "rb") as held:
            os.setxattr(m.path("t"), "user.kvfs.evict", b"1")
            self.assertEqual(held.read(), content("open", 256 << 10))
        writing.close()
        self.assertEqual(read_file(m.path("t/b/writing")), b"w" * 1000)
        for p in ("t/f1", "t/b/f2", "t/b/f3", "t/b/c/f4"):
            self.assertFalse(check(m.path(p)), p)
        for p in ("t/b/c/pinned", "t/b/c/open", "keep/k1", "t0"):
            self.assertTrue(check(m.path(p), 256 << 10), p)
        self.assertEqual(sorted(os.listdir(m.path("t"))), ["b"])
        self.assertEqual(sorted(os.listdir(m.path("t/b"))), ["c", "writing"])
        self.assertEqual(sorted(os.listdir(m.path("t/b/c"))), ["open", "pinned"])
        st = self.sane()
        self.assertEqual(st["operator_evictions"], 4)
        self.assertEqual(st["directories"], 4)
        # The whole mount: everything evictable goes, directories stay.
        os.setxattr(m.path("t/b/c/pinned"), "user.kvfs.pin", b"0")
        os.setxattr(m.mnt, "user.kvfs.evict", b"1")
        st = self.sane()
        self.assertEqual((st["files"], st["used_bytes"], st["directories"]), (0, 0, 4))
        self.assertEqual(st["operator_evictions"], 9)
        self.assertTrue(os.path.isdir(m.path("t/b/c")))

    def test_eviction_removes_catalog_records(self):
        m = self.m
        os.makedirs(m.path("d"))
        for i in range(20):
            put(m.path("d", "f%02d" % i))  # 12 evicted by pressure
        os.setxattr(m.path("d", "f19"), "user.kvfs.evict", b"1")  # and one by hand
        st = m.stats()
        self.assertEqual(st["operator_evictions"], 1)
        self.assertGreaterEqual(st["evictions"], 12)
        live = st["files"]
        self.assertEqual(live, 7)
        m.restart()
        st = m.stats()
        # Only the files that were alive at the stop were dropped; evicted
        # ones left no record behind to resurrect or to count.
        self.assertEqual(st["restart_dropped"], live)
        self.assertEqual(st["files"], 0)
        self.assertEqual(st["directories"], 1)
        self.assertEqual(os.listdir(m.path("d")), [])
        for i in range(20):
            self.assertEqual(errno_of(open, m.path("d", "f%02d" % i), "rb"), errno.ENOENT)
        put(m.path("d", "f00"))  # the names are free again
        self.assertTrue(check(m.path("d", "f00")))
        m.restart()
        self.assertEqual(m.stats()["restart_dropped"], 1)

    def test_readers_racing_eviction(self):
        m = self.m
        os.makedirs(m.path("r"))
        names = ["old%d" % i for i in range(6)]
        for n in names:
            put(m.path("r", n))
        new = ["new%02d" % i for i in range(40)]
        done = threading.Event()
        results = {"ok": 0, "enoent": 0, "errors": []}
        lock = threading.Lock()

        def reader(k):
            i = k
            pool = names + new
            while not done.is_set() or i < k + len(pool):
                n = pool[i % len(pool)]
                i += 1
                try:
                    ok = check(m.path("r", n))
                except (AssertionError, OSError) as e:
                    with lock:
                        results["errors"].append("%s: %r" % (n, e))
                    continue
                with lock:
                    results["ok" if ok else "enoent"] += 1

        def writer():
            try:
                for n in new:
                    put(m.path("r", n))
            except OSError as e:
                with lock:
                    results["errors"].append("writer %s: %r" % (n, e))
            finally:
                done.set()

        threads = [threading.Thread(target=reader, args=(k * 7,)) for k in range(3)]
        threads.append(threading.Thread(target=writer))
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertFalse(any(t.is_alive() for t in threads))
        self.assertEqual(results["errors"], [])
        self.assertGreater(results["ok"], 0)
        self.assertTrue(m.alive())
        st = self.sane()
        self.assertGreaterEqual(st["evictions"], 46 - 8)
        self.assertTrue(check(m.path("r", new[-1])))


class EvictionOrder(MountTest):
    """Which file goes first. Reads here are opens (user.kvfs.hits), and
    membership is checked with listdir, which does not count as an access."""
    dram = "8M"
    args = ("--policy", "lru")

    def listed(self, d="."):
        return set(os.listdir(self.m.path(d)))

    def test_lru_evicts_least_recently_opened(self):
        m = self.m
        files = "ABCDEFGH"
        for n in files:
            put(m.path(n))
        self.assertEqual(m.stats()["evictions"], 0)  # exactly full
        self.assertTrue(check(m.path("A")))  # A is now the most recent
        put(m.path("I"))
        self.assertEqual(self.listed() - {".kvfs"}, set("ACDEFGHI"))
        put(m.path("J"))
        self.assertEqual(self.listed() - {".kvfs"}, set("ADEFGHIJ"))
        self.assertEqual(m.stats()["policy"], "lru")
        for n in "ADEFGHIJ":
            self.assertTrue(check(m.path(n)))


def frequency_workload(test):
    """Write X and Y1..Y14 into 16 MiB; open X seven times, then each Y once,
    then write Z1..Z8. Returns the names still listed."""
    m = test.m
    put(m.path("X"))
    ys = ["Y%02d" % i for i in range(1, 15)]
    for n in ys:
        put(m.path(n))
    for _ in range(7):
        test.assertTrue(check(m.path("X")))
    for n in ys:
        test.assertTrue(check(m.path(n)))
    test.assertEqual(os.getxattr(m.path("X"), "user.kvfs.hits"), b"7")
    test.assertEqual(m.stats()["evictions"], 0)
    for i in range(1, 9):
        put(m.path("Z%d" % i))
    test.assertGreater(m.stats()["evictions"], 0)
    return set(os.listdir(m.mnt)), ys


class FrequencyMQ(MountTest):
    dram = "16M"

    def test_mq_keeps_a_file_read_many_times(self):
        listed, ys = frequency_workload(self)
        self.assertEqual(self.m.stats()["policy"], "mq")
        self.assertIn("X", listed)  # read 7 times: kept over files read once
        self.assertNotIn(ys[0], listed)  # the oldest file read once went first
        self.assertIn("Z8", listed)
        self.assertTrue(check(self.m.path("X")))


class FrequencyLRU(MountTest):
    """The same workload under plain LRU evicts X first: the MQ test above
    measures the policy, not the workload."""
    dram = "16M"
    args = ("--policy", "lru")

    def test_lru_drops_it(self):
        listed, ys = frequency_workload(self)
        self.assertNotIn("X", listed)


class EvictionNoKernelCache(MountTest):
    """With the kernel's name and attribute caches off, every stat reaches
    the daemon: an evicted file does not exist for os.path.exists either."""
    dram = "8M"
    args = ("--entry-timeout", "0", "--attr-timeout", "0", "--negative-timeout", "0")

    def test_evicted_files_do_not_exist(self):
        m = self.m
        names = ["f%02d" % i for i in range(16)]
        for n in names:
            put(m.path(n))
        gone = [n for n in names if n not in os.listdir(m.mnt)]
        self.assertEqual(len(gone), 8)
        for n in gone:
            self.assertFalse(os.path.exists(m.path(n)))
            self.assertEqual(errno_of(os.stat, m.path(n)), errno.ENOENT)
        for n in set(names) - set(gone):
            self.assertTrue(os.path.exists(m.path(n)))
            self.assertEqual(os.stat(m.path(n)).st_size, MiB)
