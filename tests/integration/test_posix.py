"""POSIX behaviour and permission checks kvfs makes on a caller's behalf
(issue 11, items 10-15).

- user.kvfs.evict on a directory evicts only files the caller could unlink;
- .kvfs/where answers only for paths the caller can look up, and refuses a
  path that is not UTF-8 or holds a NUL; .kvfs/fault refuses what it could
  never honour;
- open(O_CREAT|O_RDONLY) of a new name makes an empty sealed file
  (flock(1), lock files, pjdfstest);
- write() updates ctime; setgid directories pass on their group; O_TRUNC of
  a file being written updates mtime and ctime;
- listxattr lists no virtual attribute, so cp -a copies none of them.
"""
import errno
import os
import shutil
import subprocess
import tempfile
import time
import unittest

from harness import Mount, errno_of, write_file
from test_namespace import NsTest, UsersTest, run_as

NOBODY = 65534

def gone(path, timeout=5.0):
    """Wait until @path is gone (a tree eviction's invalidations land just
    after its reply); @return whether it went."""
    deadline = time.monotonic() + timeout
    while os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


PosixTest = NsTest


class AsUser(UsersTest):
    def test_evict_tree_applies_unlinks_rule(self):
        """Item 10."""
        p = self.m.path
        # nobody's directory holding: root's directory holding root's file;
        # root's file; a sticky world-writable directory (in which each may
        # remove only its own files)
        os.mkdir(p("mine"))
        os.chown(p("mine"), NOBODY, NOBODY)
        os.mkdir(p("mine", "roots"))
        write_file(p("mine", "roots", "f"), b"f" * 4096)
        write_file(p("mine", "g"), b"g" * 4096)
        os.mkdir(p("mine", "shared"))
        os.chmod(p("mine", "shared"), 0o1777)
        write_file(p("mine", "shared", "roots"), b"r" * 4096)
        write_file(p("mine", "shared", "nobodys"), b"n" * 4096)
        os.chown(p("mine", "shared", "nobodys"), NOBODY, NOBODY)
        # a file nobody may write, in a directory nobody may not
        os.mkdir(p("rootdir"))
        write_file(p("rootdir", "open"), b"o" * 4096)
        os.chmod(p("rootdir", "open"), 0o666)
        res = run_as(NOBODY, [["evict", p("mine")], ["evict", p("rootdir", "open")]])
        self.assertEqual(res[0][0], 0)
        self.assertEqual(res[1][0], errno.EACCES)
        self.assertTrue(gone(p("mine", "g")))  # unlink would have removed it
        self.assertTrue(gone(p("mine", "shared", "nobodys")))
        self.assertEqual(self.m.stats()["operator_evictions"], 2)
        # the others stay (opened: the daemon, not a cached name, answers)
        for f in (("mine", "roots", "f"), ("mine", "shared", "roots"), ("rootdir", "open")):
            with open(p(*f), "rb") as fd:
                self.assertEqual(len(fd.read()), 4096)

    def test_where_answers_only_what_the_caller_can_look_up(self):
        """Item 11: without a cluster an allowed question gets ENOTCONN."""
        p = self.m.path
        os.mkdir(p("priv"), 0o700)
        write_file(p("priv", "s"), b"s")
        os.mkdir(p("pub"), 0o755)
        write_file(p("pub", "s"), b"s")
        w = p(".kvfs", "where")
        res = run_as(NOBODY, [["ask", w, "priv/s\n"], ["ask", w, "priv/nothere"],
                              ["ask", w, "pub/s"], ["ask", w, "pub/s/x"],
                              ["ask", w, "elsewhere/x"]])
        self.assertEqual(res[0][0], errno.EACCES)
        self.assertEqual(res[1][0], errno.EACCES)
        self.assertEqual(res[2][0], errno.ENOTCONN)
        self.assertEqual(res[3][0], errno.ENOTDIR)
        self.assertEqual(res[4][0], errno.ENOTCONN)  # not here: only the cluster knows
        fd = os.open(w, os.O_RDWR)  # root may ask anything
        try:
            self.assertEqual(errno_of(os.write, fd, b"priv/s"), errno.ENOTCONN)
        finally:
            os.close(fd)


class Parsing(PosixTest):
    """Item 12."""

    def write_ctl(self, name, data):
        fd = os.open(self.m.path(".kvfs", name), os.O_RDWR if name == "where" else os.O_WRONLY)
        try:
            return errno_of(os.write, fd, data)
        finally:
            os.close(fd)

    def test_where_refuses_what_is_not_a_path(self):
        for bad in (b"a\xff\xfeb", b"a\x00b", b"\x00", b"a/../b", b"./a", b"a//b", b"a/",
                    b"/", b"\n", b"\xc3"):
            self.assertEqual(self.write_ctl("where", bad), errno.EINVAL, bad)
        # well-formed: past the parser (no cluster here)
        for good in (b"a", b"/a/b\n", "ü/x".encode()):
            self.assertEqual(self.write_ctl("where", good), errno.ENOTCONN, good)

    def test_fault_refuses_what_it_cannot_honour(self):
        for bad in (b"nvme_read:-1:EIO", b"nvme_read:18446744073709551617:EIO",
                    b"nvme_read:9223372036854775808:EIO", b"nvme_read:1:EIO:sticky:more",
                    b"nvme_read:1:EIO:", b"nvme_read:1:EIO\x00junk", b"arena:1:EIO",
                    b"cat_write:1:EIO,arena:1:EIO"):
            self.assertEqual(self.write_ctl("fault", bad), errno.EINVAL, bad)
        os.mkdir(self.m.path("d"))  # nothing was armed
        self.assertEqual(self.m.stats()["catalog"]["errors"], 0)
        # well-formed: armed (sticky, so the worker's flush cannot take it first)
        self.assertEqual(self.write_ctl("fault", b"cat_write:1:EIO:sticky\n"), 0)
        self.assertEqual(errno_of(os.mkdir, self.m.path("e")), errno.EIO)
        self.assertEqual(self.write_ctl("fault", b"cat_write:0:EIO"), 0)
        os.mkdir(self.m.path("e"))


class ArenaFault(unittest.TestCase):
    """The arena fault is for the start (KVFS_FAULTS), where it fires."""

    def test_arena_fault_at_start(self):
        for spec, says in (("arena:1:ENOMEM", "DRAM"), ("arena:-1:ENOMEM", "KVFS_FAULTS")):
            m = Mount(dram="64M", env={"KVFS_FAULTS": spec})
            try:
                with self.assertRaises(RuntimeError) as cm:
                    m.start()
                self.assertIn(says, str(cm.exception))
            finally:
                m.close()


class CreateReadOnly(PosixTest):
    """Item 13: open(O_CREAT|O_RDONLY) of a new name is an empty sealed file."""

    def test_creates_an_empty_sealed_file(self):
        p = self.m.path("lock")
        fd = os.open(p, os.O_CREAT | os.O_RDONLY, 0o644)
        try:
            self.assertEqual(os.read(fd, 10), b"")
            self.assertEqual(os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
        with open(p, "rb") as f:  # readable at once, and again
            self.assertEqual(f.read(), b"")
        self.assertEqual(os.stat(p).st_size, 0)
        self.assertEqual(errno_of(os.open, p, os.O_WRONLY), errno.EPERM)  # sealed
        self.assertEqual(errno_of(os.open, p, os.O_CREAT | os.O_EXCL | os.O_RDONLY),
                         errno.EEXIST)
        self.assertEqual(self.m.stats()["busy_opens"], 0)

    def test_flock_lock_file_idiom(self):
        r = subprocess.run(["flock", self.m.path("lockf"), "true"], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = subprocess.run(["flock", self.m.path("lockf"), "true"], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)


class Times(PosixTest):
    """Item 14."""

    def test_write_updates_ctime(self):
        with open(self.m.path("f"), "wb") as f:
            f.write(b"a")
            f.flush()
            before = os.fstat(f.fileno())
            time.sleep(0.02)
            f.write(b"b")
            f.flush()
            after = os.fstat(f.fileno())
        self.assertGreater(after.st_mtime_ns, before.st_mtime_ns)
        self.assertGreater(after.st_ctime_ns, before.st_ctime_ns)
        self.assertGreaterEqual(after.st_ctime_ns, after.st_mtime_ns)

    def test_truncating_open_of_a_file_being_written(self):
        p = self.m.path("t")
        w = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(w, b"x" * 10000)
            before = os.fstat(w)
            time.sleep(0.02)
            t = os.open(p, os.O_WRONLY | os.O_TRUNC)
            after = os.fstat(t)
            os.close(t)
        finally:
            os.close(w)
        self.assertEqual(after.st_size, 0)
        self.assertGreater(after.st_mtime_ns, before.st_mtime_ns)
        self.assertGreater(after.st_ctime_ns, before.st_ctime_ns)

    def test_setgid_directory(self):
        d = self.m.path("g")
        os.mkdir(d)
        os.chown(d, 0, 4242)
        os.chmod(d, 0o2775)
        write_file(os.path.join(d, "f"), b"f")
        os.close(os.open(os.path.join(d, "ro"), os.O_CREAT | os.O_RDONLY, 0o644))
        os.mkdir(os.path.join(d, "sub"))
        st = os.stat(os.path.join(d, "f"))
        self.assertEqual(st.st_gid, 4242)
        self.assertEqual(os.stat(os.path.join(d, "ro")).st_gid, 4242)
        sub = os.stat(os.path.join(d, "sub"))
        self.assertEqual(sub.st_gid, 4242)
        self.assertTrue(sub.st_mode & 0o2000, oct(sub.st_mode))
        self.m.restart()  # and so they are recorded
        self.assertEqual(os.stat(os.path.join(d, "sub", )).st_gid, 4242)
        self.assertTrue(os.stat(os.path.join(d, "sub")).st_mode & 0o2000)
        # an ordinary directory: the caller's group
        os.mkdir(self.m.path("plain"))
        write_file(self.m.path("plain", "f"), b"f")
        self.assertEqual(os.stat(self.m.path("plain", "f")).st_gid, os.getgid())
        self.assertFalse(os.stat(self.m.path("plain")).st_mode & 0o2000)


class Xattrs(PosixTest):
    """Item 15: virtual attributes are readable by name and never listed."""

    def test_not_listed_but_readable(self):
        p = self.m.path("f")
        write_file(p, b"x" * 100)
        os.setxattr(p, "user.kvfs.pin", b"1")
        self.assertEqual(os.listxattr(p), [])
        self.assertEqual(os.getxattr(p, "user.kvfs.tier"), b"dram")
        self.assertEqual(os.getxattr(p, "user.kvfs.pin"), b"1")
        self.assertEqual(os.getxattr(p, "user.kvfs.hits"), b"0")

    def test_cp_a_out_and_between_mounts(self):
        os.mkdir(self.m.path("tree"))
        write_file(self.m.path("tree", "a"), b"a" * 5000)
        write_file(self.m.path("tree", "b"), b"b" * 7)
        out = tempfile.mkdtemp(prefix="kvfs-cp-", dir="/var/tmp")
        try:
            r = subprocess.run(["cp", "-a", self.m.path("tree"), out], capture_output=True,
                               text=True, timeout=60)
            self.assertEqual((r.returncode, r.stderr), (0, ""))
            for n in ("a", "b"):
                self.assertEqual(os.listxattr(os.path.join(out, "tree", n)), [])
        finally:
            shutil.rmtree(out, ignore_errors=True)
        with Mount(dram="64M") as other:
            r = subprocess.run(["cp", "-a", self.m.path("tree"), other.mnt],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual((r.returncode, r.stderr), (0, ""))
            with open(other.path("tree", "a"), "rb") as f:
                self.assertEqual(f.read(), b"a" * 5000)
            # what rsync -X does: copy every listed attribute
            for n in ("a", "b"):
                src, dst = self.m.path("tree", n), other.path("tree", n)
                for x in os.listxattr(src):
                    os.setxattr(dst, x, os.getxattr(src, x))


if __name__ == "__main__":
    unittest.main()
