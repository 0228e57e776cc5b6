"""The namespace contract (DESIGN §2, fs/ops.c header) on a real mount.

Every rule has a test that fails without it: write-once sealing, no partial
reads, atomic rename and its refusals, unlink/rmdir, readdir (complete,
linear, no duplicates under concurrent deletes), attributes, statfs, fsync,
xattrs, unsupported operations, bad names, the .kvfs control directory,
kernel-enforced permissions and the catalog fault seam.
"""
import ctypes
import errno
import json
import os
import platform
import random
import re
import stat
import struct
import subprocess
import sys
import threading
import time
import unittest

from harness import KVFSCTL, MountTest, errno_of, read_file, run_python_as, write_file

PAGE = 64 << 10  # the daemon's default page size (NVMe's unit; file shapes around it)
UNIT = 4096  # DRAM is charged in whole pages of the store's tmpfs
NOBODY = 65534
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_libc.renameat2.restype = ctypes.c_int


_SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61, "riscv64": 61}.get(platform.machine())
_libc.syscall.restype = ctypes.c_long


def getdents_batches(path, bufsize=2048):
    """Yield the names of @path one getdents64() batch at a time, with a small buffer so
    that the kernel asks the daemon for few entries per READDIR (os.scandir's buffer
    lets a recent kernel fetch thousands at once)."""
    if _SYS_GETDENTS64 is None:
        raise unittest.SkipTest("getdents64 number unknown on " + platform.machine())
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    buf = ctypes.create_string_buffer(bufsize)
    try:
        while True:
            n = _libc.syscall(_SYS_GETDENTS64, fd, buf, bufsize)
            if n < 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e), path)
            if n == 0:
                return
            raw, off, names = buf.raw[:n], 0, []
            while off < n:
                reclen = struct.unpack_from("<H", raw, off + 16)[0]
                names.append(os.fsdecode(raw[off + 19:off + reclen].split(b"\0", 1)[0]))
                off += reclen
            yield [x for x in names if x not in (".", "..")]
    finally:
        os.close(fd)


def renameat2(old, new, flags):
    """renameat2(AT_FDCWD, old, AT_FDCWD, new, flags); raises OSError on failure."""
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old)


def restart(m):
    """m.restart(), waiting until every thread of the old daemon is gone (its state lock is
    held until then; a zombie leader alone does not mean that)."""
    pid = m.pid
    m.stop()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
            if zombie and os.listdir("/proc/%d/task" % pid) == [str(pid)]:
                break
        except FileNotFoundError:
            break
        time.sleep(0.01)
    return m.start()


def roundup(n, page=UNIT):
    return (n + page - 1) // page * page


def pattern(n, seed):
    """n deterministic, non-repeating-looking bytes."""
    return random.Random(seed).randbytes(n)


def create_sealed(path, data):
    write_file(path, data)
    return data


# A child run as another user: performs (op, path, args...) items, reports [errno, result] each.
_CHILD = r'''
import json, os, sys
def attempt(fn):
    try:
        return [0, fn()]
    except OSError as e:
        return [e.errno, None]
def rd(p):
    with open(p, "rb") as f:
        return f.read().decode("latin-1")
def wr(p, data):
    with open(p, "wb") as f:
        f.write(data.encode())
def create(p):
    os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    return os.stat(p).st_uid
def ask(p, req):
    fd = os.open(p, os.O_RDWR)
    try:
        os.write(fd, req.encode("latin-1"))
        return os.pread(fd, 65536, 0).decode()
    finally:
        os.close(fd)
ops = {"read": rd, "write": lambda p: wr(p, "cat_write:1:EIO"), "create": create,
       "mkdir": os.mkdir, "listdir": lambda p: sorted(os.listdir(p)), "ask": ask,
       "evict": lambda p: os.setxattr(p, "user.kvfs.evict", b"1")}
out = [attempt(lambda: ops[op](p, *a)) for op, p, *a in json.loads(sys.argv[1])]
print(json.dumps(out))
'''


# A child that opens each path read on stdin and answers [errno, contents].
_OPENER = r'''
import json, os, sys
for line in sys.stdin:
    try:
        with open(line[:-1], "rb") as f:
            out = [0, f.read().decode("latin-1")]
    except OSError as e:
        out = [e.errno, None]
    print(json.dumps(out), flush=True)
'''


def run_as(uid, ops):
    """Run [(op, path)...] in a child with uid/gid @uid; return [[errno, result]...]."""
    return run_python_as(uid, _CHILD, json.dumps(ops))


class NsTest(MountTest):
    def setUp(self):
        self._umask = os.umask(0o022)
        super().setUp()

    def tearDown(self):
        os.umask(self._umask)
        super().tearDown()

    def assertErrno(self, err, fn, *args, **kw):
        got = errno_of(fn, *args, **kw)
        self.assertEqual(got, err, "%s%r: expected %s, got %s" %
                         (getattr(fn, "__name__", fn), args, errno.errorcode.get(err, err),
                          errno.errorcode.get(got, got)))

    def assertUsable(self):
        """The daemon is alive and the mount serves a new file."""
        self.assertTrue(self.m.alive(), "daemon died; log:\n" + self.m.log())
        p = self.m.path("usable-%d" % random.getrandbits(32))
        write_file(p, b"still here")
        self.assertEqual(read_file(p), b"still here")
        os.unlink(p)


# --- the tree, writing and reading ----------------------------------------------------
class Tree(NsTest):
    def test_nested_tree_and_files_at_depth(self):
        deep = self.m.path("llama-3.1-8b", "block_size_256", "tp1_pp1", "rank_0", "bf16",
                           "ab", "cd")
        os.makedirs(deep)
        files = {}
        parts = deep[len(self.m.mnt) + 1:].split(os.sep)
        for depth in range(len(parts) + 1):
            d = self.m.path(*parts[:depth])
            p = os.path.join(d, "f%d.bin" % depth)
            files[p] = create_sealed(p, pattern(1000 + depth * 777, depth))
        for p, data in files.items():
            self.assertEqual(read_file(p), data, p)
        self.assertTrue(os.path.isdir(deep))
        self.assertEqual(sorted(os.listdir(deep)), ["f%d.bin" % len(parts)])
        self.assertEqual(self.m.stats()["directories"], len(parts))
        self.assertEqual(self.m.stats()["files"], len(files))
        self.assertErrno(errno.EEXIST, os.mkdir, deep)
        self.assertErrno(errno.ENOENT, os.mkdir, self.m.path("no", "such", "parent"))
        self.assertErrno(errno.ENOTDIR, os.mkdir, os.path.join(deep, "f%d.bin" % len(parts),
                                                              "x"))

    def test_sequential_writes(self):
        p = self.m.path("seq")
        chunks = [pattern(n, n) for n in (1, 4095, 4097, PAGE - 3, PAGE, 100000, 1 << 20, 7)]
        with open(p, "wb", buffering=0) as f:
            for c in chunks:
                self.assertEqual(f.write(c), len(c))
        data = b"".join(chunks)
        self.assertEqual(os.stat(p).st_size, len(data))
        self.assertEqual(read_file(p), data)

    def test_random_writes_holes_and_overwrites(self):
        rng = random.Random(7)
        size = 3 * (1 << 20) + 12345
        model = bytearray(size)
        p = self.m.path("rand")
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            # Scattered writes leave holes (never-written pages in between).
            offsets = sorted(rng.sample(range(0, size - 70000, 4096), 40))
            offsets = offsets[::2]  # every other slot: real gaps
            for off in offsets:
                n = rng.choice([1, 100, 4096, PAGE - 1, PAGE + 1, 65000])
                buf = rng.randbytes(n)
                self.assertEqual(os.pwrite(fd, buf, off), n)
                model[off:off + n] = buf
            # Overlapping rewrites before close, crossing page boundaries.
            for _ in range(30):
                off = rng.randrange(0, size - 200000)
                n = rng.randrange(1, 200000)
                buf = rng.randbytes(n)
                os.pwrite(fd, buf, off)
                model[off:off + n] = buf
            tail = rng.randbytes(10)
            os.pwrite(fd, tail, size - 10)
            model[size - 10:] = tail
            # The writer reads its own bytes before the seal.
            self.assertEqual(os.pread(fd, size + 100, 0), bytes(model))
        finally:
            os.close(fd)
        self.assertEqual(os.stat(p).st_size, size)
        got = read_file(p)
        self.assertEqual(len(got), size)
        self.assertEqual(got, bytes(model))
        # The first hole really is a hole of zeros.
        first = offsets[0]
        if first > 0:
            self.assertEqual(got[:first], bytes(first))

    def test_sparse_file_extended_by_ftruncate_reads_zeros(self):
        p = self.m.path("sparse")
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        os.pwrite(fd, b"head", 0)
        os.pwrite(fd, b"middle", 5 * PAGE + 17)
        os.ftruncate(fd, 9 * PAGE + 5)  # a trailing hole, before the seal
        os.close(fd)
        data = read_file(p)
        want = bytearray(9 * PAGE + 5)
        want[0:4] = b"head"
        want[5 * PAGE + 17:5 * PAGE + 23] = b"middle"
        self.assertEqual(data, bytes(want))

    def test_reads_at_arbitrary_offsets(self):
        data = pattern(5 * (1 << 20) + 333, 11)
        p = self.m.path("big")
        write_file(p, data)
        rng = random.Random(3)
        fd = os.open(p, os.O_RDONLY)
        try:
            cases = [(0, 1), (0, len(data)), (PAGE - 1, 2), (PAGE, PAGE), (len(data) - 1, 10),
                     (len(data), 10), (len(data) + 12345, 1), (123, 0)]
            cases += [(rng.randrange(len(data)), rng.randrange(1, 3 << 20)) for _ in range(40)]
            for off, n in cases:
                self.assertEqual(os.pread(fd, n, off), data[off:off + n], (off, n))
        finally:
            os.close(fd)

    def test_sizes(self):
        for n in (0, 1, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE, 6 * (1 << 20) + 7):
            p = self.m.path("size-%d" % n)
            data = create_sealed(p, pattern(n, n))
            st = os.stat(p)
            self.assertEqual(st.st_size, n)
            self.assertEqual(read_file(p), data, n)
            if n:
                self.assertGreater(st.st_blocks, 0, n)
                self.assertGreaterEqual(st.st_blocks * 512, n)
        self.assertEqual(self.m.stats()["files"], 7)


# --- rule 1: write once, then sealed ---------------------------------------------------
class WriteOnce(NsTest):
    def test_sealed_file_refuses_every_write(self):
        p = self.m.path("sealed")
        data = create_sealed(p, pattern(100000, 1))
        before = os.stat(p)
        writes = self.m.stats()["writes"]
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND,
                      os.O_RDWR | os.O_APPEND, os.O_WRONLY | os.O_TRUNC, os.O_RDWR | os.O_TRUNC,
                      os.O_WRONLY | os.O_CREAT, os.O_RDONLY | os.O_TRUNC):
            self.assertErrno(errno.EPERM, os.open, p, flags, 0o644)
        self.assertErrno(errno.EPERM, os.truncate, p, 0)
        self.assertErrno(errno.EPERM, os.truncate, p, 10)
        self.assertErrno(errno.EPERM, os.truncate, p, 10 << 20)
        fd = os.open(p, os.O_RDONLY)
        try:
            self.assertErrno(errno.EBADF, os.write, fd, b"x")
        finally:
            os.close(fd)
        for cmd in ("echo x > sealed", "echo x >> sealed", "truncate -s 0 sealed",
                    "truncate -s 1M sealed"):
            r = subprocess.run(["sh", "-c", cmd], cwd=self.m.mnt, capture_output=True)
            self.assertNotEqual(r.returncode, 0, cmd)
        after = os.stat(p)
        self.assertEqual(read_file(p), data)
        self.assertEqual(after.st_size, before.st_size)
        self.assertEqual(after.st_mtime_ns, before.st_mtime_ns)
        self.assertEqual(self.m.stats()["writes"], writes)
        self.assertUsable()

    def test_empty_file_is_sealed_too(self):
        p = self.m.path("empty")
        open(p, "wb").close()
        self.assertEqual(read_file(p), b"")
        self.assertErrno(errno.EPERM, os.open, p, os.O_WRONLY)
        self.assertErrno(errno.EPERM, os.truncate, p, 5)
        self.assertEqual(os.stat(p).st_size, 0)

    def test_writer_may_truncate_before_seal(self):
        p = self.m.path("t")
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, pattern(3 * PAGE, 2))
        os.ftruncate(fd, PAGE + 1)
        os.close(fd)
        self.assertEqual(read_file(p), pattern(3 * PAGE, 2)[:PAGE + 1])

    def test_two_writers_seal_at_last_close(self):
        p = self.m.path("two")
        a = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        b = os.open(p, os.O_WRONLY)
        os.pwrite(a, b"A" * 10, 0)
        os.close(a)
        # one writer is still open: not sealed, not readable
        self.assertErrno(errno.EBUSY, os.open, p, os.O_RDONLY)
        os.pwrite(b, b"B" * 10, 10)
        os.close(b)
        self.assertEqual(read_file(p), b"A" * 10 + b"B" * 10)
        self.assertErrno(errno.EPERM, os.open, p, os.O_WRONLY)


# --- rule 1: a reader never sees a partial file ----------------------------------------
class NoPartialReads(NsTest):
    def test_open_for_reading_while_writing_is_busy(self):
        # The other process starts before the writer opens the file: a child forked later
        # would inherit the descriptor and close it at exec (a FLUSH, see the next test).
        reader = subprocess.Popen(
            [sys.executable, "-c", _OPENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        try:
            def other_open(path):
                reader.stdin.write(path + "\n")
                reader.stdin.flush()
                return json.loads(reader.stdout.readline())

            p = self.m.path("w")
            fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, b"partial")
            busy = self.m.stats()["busy_opens"]
            self.assertErrno(errno.EBUSY, os.open, p, os.O_RDONLY)
            self.assertEqual(other_open(p), [errno.EBUSY, None])
            self.assertEqual(self.m.stats()["busy_opens"], busy + 2)
            os.write(fd, b" and the rest")
            self.assertEqual(other_open(p), [errno.EBUSY, None])
            os.close(fd)
            self.assertEqual(other_open(p), [0, "partial and the rest"])
            self.assertEqual(read_file(p), b"partial and the rest")
        finally:
            reader.stdin.close()
            reader.wait(30)

    def test_fork_exec_while_writing(self):
        # A child inherits the writer's descriptor and closes it at exec: a FLUSH that
        # must not seal the file under the parent, which keeps writing.
        p = self.m.path("w")
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"before ")
        subprocess.run(["true"], check=True)
        subprocess.run(["true"], check=True, pass_fds=(fd,))
        os.write(fd, b"after")
        os.close(fd)
        self.assertEqual(read_file(p), b"before after")
        self.assertErrno(errno.EPERM, os.open, p, os.O_WRONLY)

    def test_open_right_after_close_gets_all_bytes(self):
        # close() returns before the kernel's RELEASE reaches the daemon:
        # an open for reading at once must wait for the seal, not fail.
        for i in range(30):
            p = self.m.path("c%d" % i)
            data = pattern(PAGE * (i % 5) + i, i)
            fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, data)
            os.close(fd)
            rfd = os.open(p, os.O_RDONLY)
            try:
                self.assertEqual(os.read(rfd, len(data) + 1), data, i)
            finally:
                os.close(rfd)

    def test_other_process_opens_right_after_writer_closes(self):
        data = pattern(3 * (1 << 20) + 5, 9)
        src = self.m.path("src-data")
        write_file(src, data)
        writer = (r'import os, sys; d = open(sys.argv[1], "rb").read(); '
                  r'fd = os.open(sys.argv[2], os.O_CREAT | os.O_WRONLY, 0o644); '
                  r'os.write(fd, d); os.close(fd); print("closed", flush=True); sys.stdin.read()')
        for i in range(5):
            p = self.m.path("x%d" % i)
            child = subprocess.Popen([sys.executable, "-c", writer, src, p],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            try:
                self.assertEqual(child.stdout.readline(), b"closed\n")
                # the writer process is still alive; it closed its descriptor
                self.assertEqual(read_file(p), data)
            finally:
                child.stdin.close()
                child.wait(30)
        # the writer exits without close(): the exit closes the descriptor
        writer_exit = (r'import os, sys; fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, '
                       r'0o644); os.write(fd, b"z" * 200000); os._exit(0)')
        for i in range(5):
            p = self.m.path("y%d" % i)
            subprocess.run([sys.executable, "-c", writer_exit, p], check=True, timeout=30)
            self.assertEqual(read_file(p), b"z" * 200000)

    def test_open_right_after_close_of_large_native_block(self):
        # A valid native block is validated (checksums over every layer) when its writer's
        # RELEASE arrives; an open for reading that comes meanwhile must wait for the seal,
        # not fail with EBUSY.
        try:
            import kvblock
        except ImportError as e:
            self.skipTest("no native block encoder: %s" % e)
        layout = kvblock.Layout("llama", 16, 8, 128, 256, "bf16", "kv")  # 16 MiB of layers
        blk = kvblock.encode(layout, kvblock.root("0"), list(range(256)))
        os.mkdir(self.m.path("ns"))
        busy = []
        for i in range(3):
            p = self.m.path("ns", blk.hex)
            fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, blk.data)
            os.close(fd)
            try:
                rfd = os.open(p, os.O_RDONLY)
            except OSError as e:
                busy.append((i, errno.errorcode.get(e.errno, e.errno)))
            else:
                try:
                    self.assertEqual(os.pread(rfd, 4096, 0), blk.data[:4096])
                    self.assertEqual(os.fstat(rfd).st_size, len(blk.data))
                finally:
                    os.close(rfd)
            os.unlink(p)
        self.assertEqual(busy, [], "open(O_RDONLY) right after close() failed; stats: %s" %
                         {k: self.m.stats()[k] for k in ("busy_opens", "native", "sealed")})

    def test_shell_redirection(self):
        r = subprocess.run(["sh", "-c", "echo hello > f && cat f"], cwd=self.m.mnt,
                           capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, b"hello\n")
        self.assertEqual(read_file(self.m.path("f")), b"hello\n")
        r = subprocess.run(["sh", "-c", "{ echo a; echo b; printf c; } > g; cat g"],
                           cwd=self.m.mnt, capture_output=True, timeout=30)
        self.assertEqual(r.stdout, b"a\nb\nc")
        self.assertEqual(read_file(self.m.path("g")), b"a\nb\nc")

    def test_write_through_dup_after_close_is_not_sealed(self):
        p = self.m.path("dup")
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        fd2 = os.dup(fd)
        os.write(fd, b"first ")
        os.close(fd)  # a FLUSH, but fd2 still refers to the open file
        # not sealed: a reader cannot see the partial file (waits, then EBUSY)
        self.assertErrno(errno.EBUSY, os.open, p, os.O_RDONLY)
        os.write(fd2, b"second")
        os.close(fd2)
        self.assertEqual(read_file(p), b"first second")

    def test_temp_then_rename_publishes_whole_file(self):
        for i in range(10):
            data = pattern(PAGE * 3 + i, i)
            fd = os.open(self.m.path("blk.tmp"), os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, data)
            os.close(fd)
            os.rename(self.m.path("blk.tmp"), self.m.path("blk%d" % i))
            self.assertEqual(read_file(self.m.path("blk%d" % i)), data)
        self.assertEqual(self.m.stats()["files"], 10)


# --- rename --------------------------------------------------------------------------
class Rename(NsTest):
    def test_rename_over_existing_is_atomic_replace(self):
        old = create_sealed(self.m.path("target"), pattern(100000, 1))
        new = create_sealed(self.m.path("target.tmp"), pattern(200000, 2))
        base_used = self.m.stats()["used_bytes"]
        fd = os.open(self.m.path("target"), os.O_RDONLY)
        try:
            self.assertEqual(os.pread(fd, 1000, 0), old[:1000])
            renames = self.m.stats()["renames"]
            os.rename(self.m.path("target.tmp"), self.m.path("target"))
            self.assertEqual(self.m.stats()["renames"], renames + 1)
            # the holder of the old file keeps reading the old bytes
            self.assertEqual(os.pread(fd, len(old) + 10, 0), old)
            # new opens, here and in another process, see the new bytes
            self.assertEqual(read_file(self.m.path("target")), new)
            r = subprocess.run(["cat", self.m.path("target")], capture_output=True)
            self.assertEqual(r.stdout, new)
            self.assertFalse(os.path.exists(self.m.path("target.tmp")))
            self.assertEqual(sorted(os.listdir(self.m.mnt)), [".kvfs", "target"])
            self.assertEqual(self.m.stats()["files"], 1)
        finally:
            os.close(fd)
        # the old bytes are freed once their last reader is gone (its RELEASE
        # reaches the daemon just after close() returns)
        want = base_used - roundup(len(old))
        deadline = time.monotonic() + 10
        while self.m.stats()["used_bytes"] != want and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(self.m.stats()["used_bytes"], want)
        # and at once when nobody has the replaced file open
        newer = create_sealed(self.m.path("target.tmp"), pattern(300000, 3))
        os.rename(self.m.path("target.tmp"), self.m.path("target"))
        self.assertEqual(read_file(self.m.path("target")), newer)
        self.assertEqual(self.m.stats()["used_bytes"],
                         base_used - roundup(len(old)) - roundup(len(new)) + roundup(len(newer)))
        self.assertEqual(self.m.stats()["files"], 1)

    def test_rename_noreplace(self):
        a = create_sealed(self.m.path("a"), b"aaa")
        b = create_sealed(self.m.path("b"), b"bbb")
        self.assertErrno(errno.EEXIST, renameat2, self.m.path("a"), self.m.path("b"),
                         RENAME_NOREPLACE)
        self.assertEqual(read_file(self.m.path("a")), a)
        self.assertEqual(read_file(self.m.path("b")), b)
        renameat2(self.m.path("a"), self.m.path("c"), RENAME_NOREPLACE)
        self.assertEqual(read_file(self.m.path("c")), a)
        self.assertFalse(os.path.exists(self.m.path("a")))
        self.assertUsable()

    def test_rename_exchange_refused(self):
        create_sealed(self.m.path("a"), b"aaa")
        create_sealed(self.m.path("b"), b"bbb")
        os.mkdir(self.m.path("d"))
        self.assertErrno(errno.EINVAL, renameat2, self.m.path("a"), self.m.path("b"),
                         RENAME_EXCHANGE)
        self.assertErrno(errno.EINVAL, renameat2, self.m.path("a"), self.m.path("d"),
                         RENAME_EXCHANGE)
        self.assertEqual(read_file(self.m.path("a")), b"aaa")
        self.assertEqual(read_file(self.m.path("b")), b"bbb")
        self.assertTrue(os.path.isdir(self.m.path("d")))
        self.assertUsable()

    def test_rename_directory_with_content_across_parents(self):
        os.makedirs(self.m.path("p1", "x", "y"))
        os.makedirs(self.m.path("p2"))
        data = create_sealed(self.m.path("p1", "x", "y", "f"), pattern(70000, 3))
        create_sealed(self.m.path("p1", "x", "g"), b"g")
        ino = os.stat(self.m.path("p1", "x", "y", "f")).st_ino
        nl1, nl2 = os.stat(self.m.path("p1")).st_nlink, os.stat(self.m.path("p2")).st_nlink
        os.rename(self.m.path("p1", "x"), self.m.path("p2", "x2"))
        self.assertEqual(os.listdir(self.m.path("p1")), [])
        self.assertEqual(sorted(os.listdir(self.m.path("p2", "x2"))), ["g", "y"])
        self.assertEqual(read_file(self.m.path("p2", "x2", "y", "f")), data)
        self.assertEqual(os.stat(self.m.path("p2", "x2", "y", "f")).st_ino, ino)
        self.assertEqual(os.stat(self.m.path("p1")).st_nlink, nl1 - 1)
        self.assertEqual(os.stat(self.m.path("p2")).st_nlink, nl2 + 1)
        self.assertFalse(os.path.exists(self.m.path("p1", "x")))
        # a file created in the moved directory lands in the right place
        create_sealed(self.m.path("p2", "x2", "y", "new"), b"n")
        self.assertEqual(sorted(os.listdir(self.m.path("p2", "x2", "y"))), ["f", "new"])

    def test_rename_refusals(self):
        os.makedirs(self.m.path("a", "b", "c"))
        os.makedirs(self.m.path("full", "sub"))
        os.mkdir(self.m.path("empty"))
        create_sealed(self.m.path("file"), b"file")
        create_sealed(self.m.path("a", "b", "in-b"), b"in-b")
        # a directory into its own subtree
        self.assertErrno(errno.EINVAL, os.rename, self.m.path("a"),
                         self.m.path("a", "b", "c", "a"))
        self.assertErrno(errno.EINVAL, os.rename, self.m.path("a"), self.m.path("a", "a2"))
        # a file over a directory, a directory over a file
        self.assertErrno(errno.EISDIR, os.rename, self.m.path("file"), self.m.path("empty"))
        self.assertErrno(errno.ENOTDIR, os.rename, self.m.path("empty"), self.m.path("file"))
        # a directory over a non-empty directory
        self.assertErrno(errno.ENOTEMPTY, os.rename, self.m.path("empty"), self.m.path("full"))
        self.assertErrno(errno.ENOTEMPTY, os.rename, self.m.path("a"), self.m.path("full"))
        # source missing
        self.assertErrno(errno.ENOENT, os.rename, self.m.path("missing"), self.m.path("x"))
        self.assertErrno(errno.ENOENT, os.rename, self.m.path("a", "missing"),
                         self.m.path("x"))
        # target parent missing / not a directory
        self.assertErrno(errno.ENOENT, os.rename, self.m.path("file"),
                         self.m.path("nodir", "x"))
        self.assertErrno(errno.ENOTDIR, os.rename, self.m.path("empty"),
                         self.m.path("file", "x"))
        # nothing moved
        self.assertEqual(sorted(os.listdir(self.m.mnt)),
                         [".kvfs", "a", "empty", "file", "full"])
        self.assertEqual(os.listdir(self.m.path("full")), ["sub"])
        self.assertEqual(read_file(self.m.path("a", "b", "in-b")), b"in-b")
        self.assertEqual(read_file(self.m.path("file")), b"file")
        self.assertUsable()

    def test_directory_over_empty_directory(self):
        os.makedirs(self.m.path("src", "child"))
        create_sealed(self.m.path("src", "f"), b"f")
        os.mkdir(self.m.path("dst"))
        dirs = self.m.stats()["directories"]
        os.rename(self.m.path("src"), self.m.path("dst"))
        self.assertEqual(sorted(os.listdir(self.m.path("dst"))), ["child", "f"])
        self.assertFalse(os.path.exists(self.m.path("src")))
        self.assertEqual(self.m.stats()["directories"], dirs - 1)
        self.assertEqual(os.stat(self.m.mnt).st_nlink, 3)

    def test_rename_to_same_name(self):
        data = create_sealed(self.m.path("same"), b"same")
        os.mkdir(self.m.path("d"))
        os.rename(self.m.path("same"), self.m.path("same"))
        os.rename(self.m.path("d"), self.m.path("d"))
        self.assertEqual(read_file(self.m.path("same")), data)
        self.assertTrue(os.path.isdir(self.m.path("d")))
        self.assertEqual(sorted(os.listdir(self.m.mnt)), [".kvfs", "d", "same"])
        # and via renameat2(NOREPLACE): the name exists, so EEXIST or a no-op
        e = errno_of(renameat2, self.m.path("same"), self.m.path("same"), RENAME_NOREPLACE)
        self.assertIn(e, (0, errno.EEXIST))
        self.assertEqual(read_file(self.m.path("same")), data)

    def test_rename_file_keeps_inode_and_bytes(self):
        os.mkdir(self.m.path("d"))
        data = create_sealed(self.m.path("f"), pattern(PAGE + 1, 4))
        st = os.stat(self.m.path("f"))
        os.rename(self.m.path("f"), self.m.path("d", "g"))
        st2 = os.stat(self.m.path("d", "g"))
        self.assertEqual(st2.st_ino, st.st_ino)
        self.assertEqual(st2.st_size, len(data))
        self.assertGreater(st2.st_ctime_ns, st.st_ctime_ns)
        self.assertEqual(read_file(self.m.path("d", "g")), data)
        self.assertErrno(errno.ENOENT, os.stat, self.m.path("f"))


# --- unlink and rmdir -------------------------------------------------------------------
class Remove(NsTest):
    def test_unlink_with_open_reader(self):
        data = create_sealed(self.m.path("f"), pattern(5 * PAGE + 3, 5))
        base = self.m.stats()
        fd = os.open(self.m.path("f"), os.O_RDONLY)
        try:
            self.assertEqual(os.pread(fd, 10, 0), data[:10])
            os.unlink(self.m.path("f"))
            self.assertErrno(errno.ENOENT, os.stat, self.m.path("f"))
            self.assertNotIn("f", os.listdir(self.m.mnt))
            st = self.m.stats()
            self.assertEqual(st["files"], base["files"] - 1)
            self.assertEqual(st["unlinks"], base["unlinks"] + 1)
            self.assertEqual(os.pread(fd, len(data) + 1, 0), data)
            self.assertEqual(os.fstat(fd).st_size, len(data))
            # a new file with the same name is a different file
            create_sealed(self.m.path("f"), b"other")
            self.assertEqual(os.pread(fd, len(data), 0), data)
            self.assertEqual(read_file(self.m.path("f")), b"other")
        finally:
            os.close(fd)
        os.unlink(self.m.path("f"))
        self.assertEqual(self.m.stats()["used_bytes"], base["used_bytes"] - roundup(len(data)))
        self.assertEqual(self.m.stats()["files"], 0)

    def test_unlink_while_writing(self):
        used = self.m.stats()["used_bytes"]
        p = self.m.path("w")
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, pattern(3 * PAGE, 1))
        os.unlink(p)
        os.write(fd, b"more")
        os.close(fd)
        self.assertErrno(errno.ENOENT, os.stat, p)
        self.assertEqual(os.listdir(self.m.mnt), [".kvfs"])
        st = self.m.stats()
        self.assertEqual(st["files"], 0)
        self.assertEqual(st["used_bytes"], used)
        self.assertUsable()

    def test_rmdir_and_unlink_errors(self):
        os.makedirs(self.m.path("d", "sub"))
        create_sealed(self.m.path("d", "f"), b"f")
        self.assertErrno(errno.ENOTEMPTY, os.rmdir, self.m.path("d"))
        self.assertErrno(errno.ENOTDIR, os.rmdir, self.m.path("d", "f"))
        self.assertErrno(errno.EISDIR, os.unlink, self.m.path("d", "sub"))
        self.assertErrno(errno.ENOENT, os.unlink, self.m.path("d", "nope"))
        self.assertErrno(errno.ENOENT, os.rmdir, self.m.path("d", "nope"))
        self.assertEqual(sorted(os.listdir(self.m.path("d"))), ["f", "sub"])
        os.rmdir(self.m.path("d", "sub"))
        self.assertErrno(errno.ENOTEMPTY, os.rmdir, self.m.path("d"))
        os.unlink(self.m.path("d", "f"))
        os.rmdir(self.m.path("d"))
        self.assertEqual(os.listdir(self.m.mnt), [".kvfs"])
        st = self.m.stats()
        self.assertEqual((st["files"], st["directories"]), (0, 0))
        self.assertUsable()


# --- readdir ---------------------------------------------------------------------------
class Readdir(NsTest):
    def test_listing_matches_creates_and_deletes(self):
        want = {"": {".kvfs"}}
        os.makedirs(self.m.path("a", "b"))
        os.mkdir(self.m.path("c"))
        want[""] |= {"a", "c"}
        want["a"] = {"b"}
        want["a/b"] = set()
        want["c"] = set()
        for d in list(want):
            for i in range(7):
                name = "f%d" % i
                create_sealed(self.m.path(d, name) if d else self.m.path(name), b"x" * i)
                want[d].add(name)
        for d, names in want.items():
            self.assertEqual(set(os.listdir(self.m.path(d) if d else self.m.mnt)), names, d)
            self.assertEqual({e.name for e in os.scandir(self.m.path(d) if d else self.m.mnt)},
                             names, d)
        for d in ("", "a"):
            for i in (0, 3, 6):
                os.unlink(self.m.path(d, "f%d" % i) if d else self.m.path("f%d" % i))
                want[d].discard("f%d" % i)
        for i in range(7):
            os.unlink(self.m.path("c", "f%d" % i))
        os.rmdir(self.m.path("c"))
        want[""].discard("c")
        del want["c"]
        for d, names in want.items():
            self.assertEqual(set(os.listdir(self.m.path(d) if d else self.m.mnt)), names, d)
        # types in the listing
        kinds = {e.name: e.is_dir() for e in os.scandir(self.m.mnt)}
        self.assertTrue(kinds["a"])
        self.assertTrue(kinds[".kvfs"])
        self.assertFalse(kinds["f1"])

    def test_large_directory_lists_completely_in_linear_time(self):
        n = 20000
        d = self.m.path("big")
        os.mkdir(d)
        names = {"e%06d" % i for i in range(n)}
        for name in names:
            os.mknod(os.path.join(d, name), stat.S_IFREG | 0o644)
        before = self.m.stats()["readdir_scanned"]
        got = [e.name for e in os.scandir(d)]
        scanned = self.m.stats()["readdir_scanned"] - before
        self.assertEqual(len(got), n)
        self.assertEqual(set(got), names)
        self.assertLess(scanned, 3 * n, "readdir visited %d entries to list %d" % (scanned, n))
        before = self.m.stats()["readdir_scanned"]
        self.assertEqual(len(os.listdir(d)), n)
        self.assertLess(self.m.stats()["readdir_scanned"] - before, 3 * n)

    def test_large_directory_small_buffer_listing_is_linear(self):
        # musl's readdir() buffer is 2 KiB: the kernel still asks the daemon for a page of
        # entries, keeps what fits and asks again from the last one it kept (a seek). A
        # daemon that re-walks the directory from its start on every such seek visits
        # ~n * n / 120 entries here instead of ~n. Seeking back from where the last reply
        # ended costs the unconsumed part of that reply, so each entry is visited up to
        # about three times (sent, stepped back over, sent again): allow 4n.
        n = 20000
        d = self.m.path("big")
        os.mkdir(d)
        names = {"e%06d" % i for i in range(n)}
        for name in names:
            os.mknod(os.path.join(d, name), stat.S_IFREG | 0o644)
        before = self.m.stats()["readdir_scanned"]
        batches = list(getdents_batches(d, 2048))
        scanned = self.m.stats()["readdir_scanned"] - before
        got = [x for b in batches for x in b]
        self.assertGreater(len(batches), 100)
        self.assertEqual(len(got), n)
        self.assertEqual(set(got), names)
        self.assertLess(scanned, 4 * n, "readdir visited %d entries to list %d in %d batches"
                        % (scanned, n, len(batches)))

    def assertNoRepeats(self, seen):
        twice = sorted({x for x in seen if seen.count(x) > 1}) if len(set(seen)) < len(seen) \
            else []
        self.assertEqual(twice[:10], [], "%d entries listed twice" % len(twice))

    def assertNoneMissing(self, want, seen):
        missing = sorted(set(want) - set(seen))
        self.assertEqual(missing[:10], [], "%d of %d entries that were never deleted are "
                         "missing from the listing (first 10 shown)" % (len(missing), len(want)))

    def _fill(self, d, n):
        os.mkdir(d)
        names = ["n%05d" % i for i in range(n)]
        for name in names:
            os.mknod(os.path.join(d, name), stat.S_IFREG | 0o644)
        return names

    def test_listing_during_deletes_never_repeats(self):
        # Deterministic interleaving: deletes between the READDIR batches of one listing.
        # A 512-byte buffer holds fewer entries than one READDIR(PLUS) reply, so the
        # kernel continues each batch from an offset the daemon did not stop at.
        d = self.m.path("d")
        names = self._fill(d, 3000)
        rng = random.Random(5)
        pending = set(names)  # not deleted, not listed yet
        deleted = set()
        seen = []
        batches = 0
        for batch in getdents_batches(d, 512):
            batches += 1
            seen.extend(batch)
            pending -= set(batch)
            # delete some entries already listed and some not listed yet
            listed_alive = sorted(set(seen) - deleted)
            victims = rng.sample(listed_alive, min(10, len(listed_alive)))
            victims += rng.sample(sorted(pending), min(10, len(pending)))
            for v in victims:
                os.unlink(os.path.join(d, v))
                pending.discard(v)
                deleted.add(v)
        self.assertGreater(batches, 20)
        self.assertGreater(len(deleted), 200)
        self.assertNoRepeats(seen)
        self.assertLessEqual(set(seen), set(names))
        never_deleted = set(names) - deleted
        self.assertNoneMissing(never_deleted, seen)
        self.assertEqual(set(os.listdir(d)), never_deleted)

    def test_listing_with_concurrent_deleter_thread(self):
        d = self.m.path("d")
        names = self._fill(d, 4000)
        victims = names[1::2]
        keep = set(names[0::2])
        stop = threading.Event()
        errors = []

        def deleter():
            try:
                for v in victims:
                    os.unlink(os.path.join(d, v))
            except OSError as e:
                errors.append(e)
            stop.set()

        t = threading.Thread(target=deleter)
        rounds = 0
        t.start()
        try:
            while True:
                done = stop.is_set()
                seen = [x for b in getdents_batches(d, 512) for x in b]
                rounds += 1
                self.assertNoRepeats(seen)
                self.assertNoneMissing(keep, seen)
                if done:
                    break
        finally:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(set(os.listdir(d)), keep)

    def test_directory_nlink(self):
        d = self.m.path("d")
        os.mkdir(d)
        self.assertEqual(os.stat(d).st_nlink, 2)
        for s in ("s1", "s2", "s3"):
            os.mkdir(os.path.join(d, s))
        create_sealed(os.path.join(d, "f"), b"f")
        os.mknod(os.path.join(d, "g"), stat.S_IFREG | 0o644)
        self.assertEqual(os.stat(d).st_nlink, 5)
        os.rmdir(os.path.join(d, "s1"))
        self.assertEqual(os.stat(d).st_nlink, 4)
        os.rename(os.path.join(d, "s2"), self.m.path("s2"))
        self.assertEqual(os.stat(d).st_nlink, 3)
        self.assertEqual(os.stat(self.m.mnt).st_nlink, 4)  # d, s2 (not .kvfs)
        self.assertEqual(os.stat(os.path.join(d, "f")).st_nlink, 1)


# --- attributes -------------------------------------------------------------------------
class Attributes(NsTest):
    def test_stat_fields(self):
        p = self.m.path("f")
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o640)
        os.write(fd, pattern(PAGE + 10, 1))
        os.close(fd)
        st = os.stat(p)
        self.assertEqual(st.st_size, PAGE + 10)
        self.assertEqual(stat.S_IFMT(st.st_mode), stat.S_IFREG)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o640)
        self.assertEqual((st.st_uid, st.st_gid), (os.getuid(), os.getgid()))
        self.assertEqual(st.st_nlink, 1)
        self.assertGreaterEqual(st.st_blocks * 512, PAGE + 10)
        # the same inode number from every way of finding the file
        fd = os.open(p, os.O_RDONLY)
        try:
            self.assertEqual(os.fstat(fd).st_ino, st.st_ino)
        finally:
            os.close(fd)
        self.assertEqual([e.inode() for e in os.scandir(self.m.mnt) if e.name == "f"],
                         [st.st_ino])
        os.rename(p, self.m.path("g"))
        os.rename(self.m.path("g"), p)  # a fresh lookup of the name
        self.assertEqual(os.stat(p).st_ino, st.st_ino)
        # distinct files, distinct numbers
        create_sealed(self.m.path("h"), b"")
        self.assertNotEqual(os.stat(self.m.path("h")).st_ino, st.st_ino)
        self.assertEqual(os.stat(self.m.path("h")).st_size, 0)
        os.mkdir(self.m.path("d"), 0o750)
        sd = os.stat(self.m.path("d"))
        self.assertEqual(stat.S_IFMT(sd.st_mode), stat.S_IFDIR)
        self.assertEqual(stat.S_IMODE(sd.st_mode), 0o750)
        self.assertNotIn(sd.st_ino, (st.st_ino, os.stat(self.m.path("h")).st_ino))

    def test_chmod_chown(self):
        p = self.m.path("f")
        create_sealed(p, b"data")
        os.mkdir(self.m.path("d"))
        for target in (p, self.m.path("d")):
            c0 = os.stat(target).st_ctime_ns
            os.chmod(target, 0o600)
            st = os.stat(target)
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
            self.assertGreater(st.st_ctime_ns, c0)
            os.chmod(target, 0o4755)
            self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), 0o4755)
            c1 = os.stat(target).st_ctime_ns
            os.chown(target, 1234, 5678)
            st = os.stat(target)
            self.assertEqual((st.st_uid, st.st_gid), (1234, 5678))
            self.assertGreater(st.st_ctime_ns, c1)
            os.chown(target, -1, 42)
            st = os.stat(target)
            self.assertEqual((st.st_uid, st.st_gid), (1234, 42))
        self.assertEqual(read_file(p), b"data")
        self.assertEqual(stat.S_IFMT(os.stat(p).st_mode), stat.S_IFREG)

    def test_utime(self):
        p = self.m.path("f")
        create_sealed(p, b"data")
        os.mkdir(self.m.path("d"))
        for target in (p, self.m.path("d")):
            c0 = os.stat(target).st_ctime_ns
            at, mt = 1_000_000_000_123_456_789, 1_100_000_000_987_654_321
            os.utime(target, ns=(at, mt))
            st = os.stat(target)
            self.assertEqual((st.st_atime_ns, st.st_mtime_ns), (at, mt))
            self.assertGreater(st.st_ctime_ns, c0)
            os.utime(target, (1234567890, 1234567891))
            st = os.stat(target)
            self.assertEqual((st.st_atime_ns, st.st_mtime_ns),
                             (1234567890 * 10**9, 1234567891 * 10**9))
            t0 = time.time_ns()
            os.utime(target, None)
            t1 = time.time_ns()
            st = os.stat(target)
            for v in (st.st_atime_ns, st.st_mtime_ns):
                self.assertGreaterEqual(v, t0 - 10**9)
                self.assertLessEqual(v, t1 + 10**9)
        self.assertEqual(read_file(p), b"data")

    def test_ctime_changes_on_rename_and_mtime_on_create(self):
        os.mkdir(self.m.path("d"))
        sd = os.stat(self.m.path("d"))
        os.utime(self.m.path("d"), ns=(10**18, 10**18))
        create_sealed(self.m.path("d", "f"), b"x")
        self.assertNotEqual(os.stat(self.m.path("d")).st_mtime_ns, 10**18)
        c0 = os.stat(self.m.path("d", "f")).st_ctime_ns
        os.rename(self.m.path("d", "f"), self.m.path("d", "g"))
        self.assertGreater(os.stat(self.m.path("d", "g")).st_ctime_ns, c0)
        self.assertEqual(os.stat(self.m.path("d")).st_ino, sd.st_ino)


# --- statfs ------------------------------------------------------------------------------
class Statfs(NsTest):
    def used(self):
        v = os.statvfs(self.m.mnt)
        return (v.f_blocks - v.f_bfree) * v.f_frsize

    def test_statvfs_capacity_and_use(self):
        v = os.statvfs(self.m.mnt)
        self.assertEqual(v.f_blocks * v.f_frsize, 64 << 20)
        self.assertEqual(v.f_namemax, 255)
        self.assertEqual(self.m.stats()["capacity_bytes"], 64 << 20)
        u0 = self.used()
        n = 5 * (1 << 20) + 1000
        create_sealed(self.m.path("f"), pattern(n, 1))
        u1 = self.used()
        self.assertGreaterEqual(u1 - u0, n)
        self.assertLessEqual(u1 - u0, roundup(n))
        self.assertEqual(self.m.stats()["used_bytes"], u1)
        v = os.statvfs(self.m.mnt)
        self.assertEqual(v.f_bavail, v.f_bfree)
        create_sealed(self.m.path("g"), b"x")
        self.assertEqual(self.used() - u1, UNIT)
        os.unlink(self.m.path("f"))
        self.assertEqual(self.used(), u0 + UNIT)
        os.unlink(self.m.path("g"))
        self.assertEqual(self.used(), u0)

    def test_df(self):
        def df():
            r = subprocess.run(["df", "-B1", "--output=size,used,avail", self.m.mnt],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            return [int(x) for x in r.stdout.splitlines()[1].split()]

        size, used, avail = df()
        self.assertEqual(size, 64 << 20)
        self.assertEqual(used + avail, size)
        n = 3 * (1 << 20) + 5
        create_sealed(self.m.path("f"), pattern(n, 2))
        size2, used2, avail2 = df()
        self.assertEqual(size2, size)
        self.assertGreaterEqual(used2 - used, n)
        self.assertLessEqual(used2 - used, roundup(n))
        os.unlink(self.m.path("f"))
        self.assertEqual(df()[1], used)


# --- fsync ---------------------------------------------------------------------------------
class Fsync(NsTest):
    def test_fsync_writer_sealed_and_directory(self):
        p = self.m.path("f")
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"abc")
            os.fsync(fd)
            os.fdatasync(fd)
            os.write(fd, b"def")  # still writable after fsync
        finally:
            os.close(fd)
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.fdatasync(fd)
            self.assertEqual(os.read(fd, 10), b"abcdef")
        finally:
            os.close(fd)
        os.mkdir(self.m.path("d"))
        for dpath in (self.m.path("d"), self.m.mnt):
            dfd = os.open(dpath, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
                os.fdatasync(dfd)
            finally:
                os.close(dfd)
        self.assertEqual(read_file(p), b"abcdef")
        self.assertErrno(errno.EPERM, os.open, p, os.O_WRONLY)


# --- xattrs --------------------------------------------------------------------------------
class Xattrs(NsTest):
    def test_tier_hits_list(self):
        p = self.m.path("f")
        create_sealed(p, pattern(1000, 1))
        self.assertEqual(os.getxattr(p, "user.kvfs.tier"), b"dram")
        self.assertEqual(os.getxattr(p, "user.kvfs.hits"), b"0")
        for i in range(3):
            read_file(p)
        self.assertEqual(os.getxattr(p, "user.kvfs.hits"), b"3")
        os.stat(p)  # a stat is not a hit
        self.assertEqual(os.getxattr(p, "user.kvfs.hits"), b"3")
        self.assertEqual(os.listxattr(p), [])  # virtual: read by name, never listed
        self.assertErrno(errno.ENODATA, os.getxattr, p, "user.kvfs.key")
        self.assertErrno(errno.ENODATA, os.getxattr, p, "user.kvfs.nonsense")
        self.assertErrno(errno.ENODATA, os.getxattr, p, "user.other")
        # directories have none of them
        os.mkdir(self.m.path("d"))
        self.assertEqual(os.listxattr(self.m.path("d")), [])
        self.assertErrno(errno.ENODATA, os.getxattr, self.m.path("d"), "user.kvfs.tier")

    def test_pin(self):
        p = self.m.path("f")
        create_sealed(p, pattern(3 * PAGE, 1))
        self.assertEqual(os.getxattr(p, "user.kvfs.pin"), b"0")
        os.setxattr(p, "user.kvfs.pin", b"1")
        self.assertEqual(os.getxattr(p, "user.kvfs.pin"), b"1")
        st = self.m.stats()["tiers"]["dram"]
        self.assertEqual(st["pinned_files"], 1)
        self.assertEqual(st["pinned_bytes"], 3 * PAGE)
        os.setxattr(p, "user.kvfs.pin", b"0")
        self.assertEqual(os.getxattr(p, "user.kvfs.pin"), b"0")
        self.assertEqual(self.m.stats()["tiers"]["dram"]["pinned_files"], 0)
        os.setxattr(p, "user.kvfs.pin", b"1\n")  # as `echo 1` would write it
        self.assertEqual(os.getxattr(p, "user.kvfs.pin"), b"1")
        os.removexattr(p, "user.kvfs.pin")
        self.assertEqual(os.getxattr(p, "user.kvfs.pin"), b"0")
        self.assertEqual(self.m.stats()["tiers"]["dram"]["pinned_files"], 0)

    def test_bad_xattr_writes(self):
        p = self.m.path("f")
        create_sealed(p, b"x")
        for bad in (b"2", b"yes", b"", b"11", b"1 ", b"-1"):
            self.assertErrno(errno.EINVAL, os.setxattr, p, "user.kvfs.pin", bad)
        self.assertEqual(os.getxattr(p, "user.kvfs.pin"), b"0")
        for ro in ("user.kvfs.tier", "user.kvfs.hits", "user.kvfs.key", "user.kvfs.whatever"):
            self.assertErrno(errno.EPERM, os.setxattr, p, ro, b"nvme")
        self.assertErrno(errno.EPERM, os.removexattr, p, "user.kvfs.tier")
        self.assertEqual(os.getxattr(p, "user.kvfs.tier"), b"dram")
        self.assertErrno(errno.ENOTSUP, os.setxattr, p, "user.other", b"v")
        self.assertErrno(errno.ENOTSUP, os.removexattr, p, "user.other")
        self.assertErrno(errno.ENODATA, os.getxattr, p, "user.other")
        self.assertNotIn("user.other", os.listxattr(p))
        self.assertUsable()


# --- unsupported operations ---------------------------------------------------------------
class Unsupported(NsTest):
    def test_links_and_special_files(self):
        create_sealed(self.m.path("f"), b"f")
        self.assertErrno(errno.EPERM, os.link, self.m.path("f"), self.m.path("hard"))
        self.assertErrno(errno.EPERM, os.symlink, "f", self.m.path("sym"))
        self.assertErrno(errno.EPERM, os.mknod, self.m.path("fifo"), stat.S_IFIFO | 0o644)
        self.assertErrno(errno.EPERM, os.mkfifo, self.m.path("fifo2"))
        self.assertErrno(errno.EPERM, os.mknod, self.m.path("sock"), stat.S_IFSOCK | 0o644)
        self.assertErrno(errno.EPERM, os.mknod, self.m.path("chr"), stat.S_IFCHR | 0o644,
                         os.makedev(1, 3))
        self.assertEqual(sorted(os.listdir(self.m.mnt)), [".kvfs", "f"])
        self.assertEqual(os.stat(self.m.path("f")).st_nlink, 1)
        self.assertEqual(self.m.stats()["files"], 1)
        self.assertUsable()

    def test_mknod_regular_is_empty_sealed_file(self):
        p = self.m.path("n")
        os.mknod(p, stat.S_IFREG | 0o640)
        st = os.stat(p)
        self.assertEqual(stat.S_IFMT(st.st_mode), stat.S_IFREG)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o640)
        self.assertEqual(st.st_size, 0)
        self.assertEqual(read_file(p), b"")
        self.assertErrno(errno.EPERM, os.open, p, os.O_WRONLY)
        self.assertErrno(errno.EEXIST, os.mknod, p, stat.S_IFREG | 0o640)
        self.assertEqual(self.m.stats()["files"], 1)


# --- bad names -------------------------------------------------------------------------------
class Names(NsTest):
    def test_name_too_long(self):
        long = "x" * 256
        create_sealed(self.m.path("f"), b"f")
        os.mkdir(self.m.path("d"))
        self.assertErrno(errno.ENAMETOOLONG, os.open, self.m.path(long),
                         os.O_CREAT | os.O_WRONLY, 0o644)
        self.assertErrno(errno.ENAMETOOLONG, os.mknod, self.m.path(long), stat.S_IFREG | 0o644)
        self.assertErrno(errno.ENAMETOOLONG, os.mkdir, self.m.path(long))
        self.assertErrno(errno.ENAMETOOLONG, os.mkdir, self.m.path("d", long))
        self.assertErrno(errno.ENAMETOOLONG, os.rename, self.m.path("f"), self.m.path(long))
        self.assertErrno(errno.ENAMETOOLONG, os.rename, self.m.path("d"),
                         self.m.path("d", "..", long))
        self.assertErrno(errno.ENAMETOOLONG, os.stat, self.m.path(long))
        self.assertErrno(errno.ENAMETOOLONG, os.stat, self.m.path("d", long))
        # bytes, not characters: 128 two-byte characters are 256 bytes
        self.assertErrno(errno.ENAMETOOLONG, os.mkdir, self.m.path("\u00e9" * 128))
        self.assertEqual(sorted(os.listdir(self.m.mnt)), [".kvfs", "d", "f"])
        self.assertEqual(read_file(self.m.path("f")), b"f")
        self.assertUsable()

    def test_name_of_255_bytes(self):
        for i, name in enumerate(("y" * 255, "\u65e5" * 85, "\u00e9" * 127 + "q")):
            self.assertEqual(len(name.encode()), 255)
            d = self.m.path("dir%d" % i)
            os.mkdir(d)
            p = os.path.join(d, name)
            create_sealed(p, name.encode())
            self.assertEqual(read_file(p), name.encode())
            self.assertEqual(os.listdir(d), [name])
            os.mkdir(os.path.join(d, "D" * 255))
            self.assertEqual(sorted(os.listdir(d)), sorted([name, "D" * 255]))
            os.rename(p, os.path.join(d, "short"))
            os.rename(os.path.join(d, "short"), p)
            self.assertEqual(os.stat(p).st_size, 255)

    def test_any_bytes_but_slash_and_nul(self):
        names = [b"with space", b" leading and trailing ", "na\u00efve \u65e5\u672c\u8a9e "
                 "\U0001f600".encode(), b"new\nline", b"tab\there", b"\xff\xfe not utf-8 \x80",
                 b"\x01\x02\x1f\x7f", b"...", b".hidden", b"-dash", b"a:b*c?\"<>|\\"
                 b"'`$(x){};&!#%", b"\\", b"\xc0\xaf"]
        root = os.fsencode(self.m.mnt)
        for n in names:
            p = os.path.join(root, n)
            write_file(p, n)
            self.assertEqual(read_file(p), n, n)
            dn = os.path.join(root, b"dir-" + n)
            os.mkdir(dn)
            write_file(os.path.join(dn, n), n)
        listed = set(os.listdir(root))
        for n in names:
            self.assertIn(n, listed)
            self.assertIn(b"dir-" + n, listed)
            self.assertEqual(os.listdir(os.path.join(root, b"dir-" + n)), [n])
            os.rename(os.path.join(root, n), os.path.join(root, b"dir-" + n, n + b".2"))
        for n in names:
            self.assertEqual(read_file(os.path.join(root, b"dir-" + n, n + b".2")), n)
        self.assertEqual(set(os.listdir(root)), {b".kvfs"} | {b"dir-" + n for n in names})


# --- the control directory ---------------------------------------------------------------------
STATS_FIELDS = [
    "capacity_bytes", "used_bytes", "files", "directories", "open_handles", "hits", "misses",
    "hit_rate", "lookups", "lookup_misses", "opens", "busy_opens", "reads", "read_bytes",
    "writes", "write_bytes", "creates", "unlinks", "renames", "sealed", "evictions",
    "evicted_bytes", "operator_evictions", "enospc", "restart_dropped", "readdir_scanned",
    "faults_injected",
]
DRAM_FIELDS = ["capacity_bytes", "used_bytes", "free_bytes", "pinned_bytes", "page_size",
               "files", "pinned_files"]
PROM_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|'
                         r'\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})? '
                         r'([-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|NaN|Inf))'
                         r'(?: -?[0-9]+)?$')


class Control(NsTest):
    def test_listing_and_contents(self):
        self.assertIn(".kvfs", os.listdir(self.m.mnt))
        self.assertTrue(os.path.isdir(self.m.path(".kvfs")))
        self.assertEqual(sorted(os.listdir(self.m.path(".kvfs"))),
                         ["config", "drain", "fault", "iovs", "match", "metrics", "prefetch",
                          "stats", "where"])
        create_sealed(self.m.path("f"), pattern(1000, 1))
        read_file(self.m.path("f"))
        st = self.m.stats()
        for k in STATS_FIELDS:
            self.assertIn(k, st)
        for k in DRAM_FIELDS:
            self.assertIn(k, st["tiers"]["dram"])
        for k in ("valid", "invalid"):
            self.assertIn(k, st["native"])
        for k in ("commits", "errors"):
            self.assertIn(k, st["catalog"])
        self.assertEqual(st["files"], 1)
        self.assertEqual(st["hits"], 1)
        self.assertEqual(st["tiers"]["dram"]["page_size"], PAGE)
        self.assertEqual(st["tiers"]["dram"]["capacity_bytes"], 64 << 20)
        self.assertEqual(st["tiers"]["dram"]["used_bytes"] + st["tiers"]["dram"]["free_bytes"],
                         64 << 20)
        cfg = self.m.config()
        self.assertEqual(cfg["pid"], self.m.pid)
        self.assertEqual(cfg["dram_bytes"], 64 << 20)
        self.assertEqual(cfg["page_size"], PAGE)
        self.assertEqual(cfg["policy"], "mq")
        # metrics: Prometheus text format, every sample typed and described
        text = self.m.metrics()
        self.assertTrue(text.endswith("\n"))
        helps, types, samples = set(), {}, {}
        for line in text.splitlines():
            if line.startswith("# HELP "):
                helps.add(line.split()[2])
            elif line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                self.assertIn(kind, ("counter", "gauge", "histogram", "summary", "untyped"))
                types[name] = kind
            elif line.startswith("#") or not line:
                continue
            else:
                mt = PROM_SAMPLE.match(line)
                self.assertIsNotNone(mt, "not a Prometheus sample: %r" % line)
                self.assertIn(mt.group(1), types, "sample before its # TYPE: %r" % line)
                self.assertIn(mt.group(1), helps, "sample without # HELP: %r" % line)
                samples[mt.group(1)] = float(mt.group(3))
        self.assertGreater(len(samples), 10)
        for name, kind in types.items():
            if kind == "counter":
                self.assertTrue(name.endswith("_total"), name)
        self.assertEqual(samples["kvfs_capacity_bytes"], 64 << 20)
        self.assertEqual(samples["kvfs_files"], 1)
        self.assertEqual(samples["kvfs_hits_total"], 1)

    def test_control_directory_is_protected(self):
        kv = self.m.path(".kvfs")
        self.assertErrno(errno.EEXIST, os.mkdir, kv)
        self.assertErrno(errno.EEXIST, os.open, kv, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        self.assertErrno(errno.EEXIST, os.mknod, kv, stat.S_IFREG | 0o644)
        self.assertErrno(errno.EPERM, os.rmdir, kv)
        self.assertErrno(errno.EPERM, os.rename, kv, self.m.path("elsewhere"))
        os.mkdir(self.m.path("d"))
        self.assertErrno(errno.EPERM, os.rename, self.m.path("d"), kv)
        create_sealed(self.m.path("f"), b"f")
        self.assertIn(errno_of(os.rename, self.m.path("f"), kv), (errno.EISDIR, errno.EPERM))
        self.assertErrno(errno.EPERM, os.unlink, self.m.path(".kvfs", "stats"))
        self.assertErrno(errno.EPERM, os.rename, self.m.path(".kvfs", "stats"),
                         self.m.path("stats"))
        self.assertErrno(errno.EPERM, os.rename, self.m.path("f"),
                         self.m.path(".kvfs", "f"))
        self.assertErrno(errno.EPERM, os.open, self.m.path(".kvfs", "new"),
                         os.O_CREAT | os.O_WRONLY, 0o644)
        self.assertErrno(errno.EPERM, os.mkdir, self.m.path(".kvfs", "sub"))
        self.assertErrno(errno.EPERM, os.chmod, kv, 0o777)
        self.assertErrno(errno.EPERM, os.chmod, self.m.path(".kvfs", "stats"), 0o666)
        self.assertIn(errno_of(os.open, self.m.path(".kvfs", "stats"), os.O_WRONLY),
                      (errno.EACCES, errno.EPERM))
        self.assertIn(errno_of(os.truncate, self.m.path(".kvfs", "stats"), 0),
                      (errno.EACCES, errno.EPERM))
        # a .kvfs below the root is an ordinary name
        os.mkdir(self.m.path("d", ".kvfs"))
        create_sealed(self.m.path("d", ".kvfs", "stats"), b"mine")
        self.assertEqual(read_file(self.m.path("d", ".kvfs", "stats")), b"mine")
        self.assertEqual(sorted(os.listdir(kv)),
                         ["config", "drain", "fault", "iovs", "match", "metrics", "prefetch",
                          "stats", "where"])
        json.loads(read_file(self.m.path(".kvfs", "stats")))
        self.assertUsable()

    def test_where_needs_a_cluster(self):
        fd = os.open(self.m.path(".kvfs", "where"), os.O_RDWR)
        try:
            self.assertEqual(errno_of(os.write, fd, b"a/b"), errno.ENOTCONN)
            self.assertEqual(os.pread(fd, 100, 0), b"")
        finally:
            os.close(fd)
        self.assertNotIn("remote", self.m.stats())
        r = subprocess.run([KVFSCTL, "where", self.m.path("a")], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn("not in a cluster", r.stderr)

    def test_bad_fault_spec_is_refused(self):
        for bad in ("nonsense", "cat_write:x:EIO", "nope:1:EIO", "cat_write:1:EWHAT"):
            with self.assertRaises(OSError) as cm:
                with open(self.m.path(".kvfs", "fault"), "w") as f:
                    f.write(bad)
            self.assertEqual(cm.exception.errno, errno.EINVAL, bad)
        os.mkdir(self.m.path("d"))  # nothing was armed
        self.assertEqual(self.m.stats()["catalog"]["errors"], 0)
        self.assertUsable()


class UsersTest(NsTest):
    """A mount other users may use; its tests run children as them (root only)."""
    args = ("-o", "allow_other")

    def setUp(self):
        super().setUp()
        if os.getuid() != 0:
            self.skipTest("needs root to run a child as another user")
        os.chmod(self.m.base, 0o755)


class ControlAsUser(UsersTest):

    def test_non_root_cannot_arm_faults(self):
        res = run_as(NOBODY, [("write", self.m.path(".kvfs", "fault")),
                              ("read", self.m.path(".kvfs", "stats"))])
        self.assertIn(res[0][0], (errno.EACCES, errno.EPERM))
        self.assertEqual(res[1][0], 0)  # reading stats is fine
        json.loads(res[1][1])
        os.mkdir(self.m.path("d"))  # the fault was not armed
        self.assertEqual(self.m.stats()["catalog"]["errors"], 0)

    def test_kernel_enforces_permissions(self):
        create_sealed(self.m.path("secret"), b"secret")
        os.chmod(self.m.path("secret"), 0o600)
        create_sealed(self.m.path("public"), b"public")
        os.chmod(self.m.path("public"), 0o644)
        os.mkdir(self.m.path("rootdir"), 0o755)
        os.mkdir(self.m.path("open"))
        os.chmod(self.m.path("open"), 0o777)
        res = run_as(NOBODY, [
            ("read", self.m.path("secret")),
            ("read", self.m.path("public")),
            ("create", self.m.path("rootdir", "x")),
            ("mkdir", self.m.path("rootdir", "y")),
            ("create", self.m.path("open", "x")),
            ("listdir", self.m.mnt),
        ])
        self.assertEqual(res[0][0], errno.EACCES)
        self.assertEqual(res[1], [0, "public"])
        self.assertEqual(res[2][0], errno.EACCES)
        self.assertEqual(res[3][0], errno.EACCES)
        self.assertEqual(res[4], [0, NOBODY])  # created, owned by the caller
        self.assertEqual(res[5][0], 0)
        self.assertEqual(os.listdir(self.m.path("rootdir")), [])
        self.assertEqual(os.stat(self.m.path("open", "x")).st_uid, NOBODY)


# --- the fault seam ---------------------------------------------------------------------------
class FaultSeam(NsTest):
    def arm(self, spec):
        with open(self.m.path(".kvfs", "fault"), "w") as f:
            f.write(spec)

    def test_failed_catalog_commit_leaves_nothing(self):
        os.mkdir(self.m.path("parent"))
        st0 = self.m.stats()
        self.arm("cat_write:1:EIO")
        self.assertErrno(errno.EIO, os.mkdir, self.m.path("parent", "d"))
        self.assertFalse(os.path.exists(self.m.path("parent", "d")))
        self.assertNotIn("d", os.listdir(self.m.path("parent")))
        st = self.m.stats()
        self.assertEqual(st["catalog"]["errors"], 1)
        self.assertEqual(st["faults_injected"]["cat_write"], 1)
        self.assertEqual(st["directories"], st0["directories"])
        self.assertEqual(os.stat(self.m.path("parent")).st_nlink, 2)
        # the next mkdir works
        os.mkdir(self.m.path("parent", "d"))
        self.assertTrue(os.path.isdir(self.m.path("parent", "d")))
        self.assertEqual(os.listdir(self.m.path("parent")), ["d"])
        self.assertEqual(self.m.stats()["catalog"]["errors"], 1)
        self.assertEqual(os.stat(self.m.path("parent")).st_nlink, 3)
        # and the catalog agrees after a restart
        restart(self.m)
        self.assertEqual(os.listdir(self.m.path("parent")), ["d"])
        self.assertEqual(self.m.stats()["directories"], 2)

    def test_failed_commit_on_rmdir_and_rename_changes_nothing(self):
        os.makedirs(self.m.path("a", "b"))
        self.arm("cat_write:1:EIO")
        self.assertErrno(errno.EIO, os.rmdir, self.m.path("a", "b"))
        self.assertTrue(os.path.isdir(self.m.path("a", "b")))
        self.arm("cat_write:1:EIO")
        self.assertErrno(errno.EIO, os.rename, self.m.path("a", "b"), self.m.path("c"))
        self.assertTrue(os.path.isdir(self.m.path("a", "b")))
        self.assertFalse(os.path.exists(self.m.path("c")))
        self.assertEqual(self.m.stats()["catalog"]["errors"], 2)
        restart(self.m)
        self.assertEqual(os.listdir(self.m.path("a")), ["b"])
        self.assertEqual(sorted(os.listdir(self.m.mnt)), [".kvfs", "a"])
