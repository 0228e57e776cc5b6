"""The libkvfs fast path on a real mount: shared-memory rings to the daemon.

tests/integration/fpdrv.c is the engine side (a libkvfs client); these tests
drive it against a mount and check what the daemon did.
"""
import errno
import json
import os
import subprocess
import time

from harness import BUILD, Mount, MountTest, demote_to, python_for, reachable_copy, write_file

FPDRV = os.path.join(BUILD, "tests", "fpdrv")
NOBODY = 65534
def drv(*args, user=None, stdin=None, check=True):
    # as another user, from a copy that user can reach wherever the tree is
    exe = FPDRV if user is None else reachable_copy(FPDRV)
    r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120,
                       preexec_fn=demote_to(user) if user is not None else None, input=stdin,
                       cwd=None if user is None else "/")
    if check and r.returncode != 0:
        raise AssertionError("fpdrv %s failed (%d): %s%s" % (args, r.returncode, r.stdout, r.stderr))
    return r


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


class SameBytes(MountTest):
    """Fast path and POSIX path return identical bytes, whichever saved them."""
    dram = "128M"

    def test_fast_save_posix_load_and_back(self):
        ns = self.m.path("model", "ns")
        saved = last_json(drv("save", ns, "fast", 1, 40).stdout)
        self.assertEqual(saved["fast"], 1)
        self.assertEqual(saved["written"], 40)
        for path in ("fast", "posix"):
            got = last_json(drv("load", ns, path, 1, 40).stdout)
            self.assertEqual((got["matched"], got["bad_blocks"], got["load_error"]), (40, 0, 0))
            self.assertEqual(got["fast"], 1 if path == "fast" else 0)
        saved = last_json(drv("save", ns, "posix", 2, 24).stdout)
        self.assertEqual(saved["fast"], 0)
        got = last_json(drv("load", ns, "fast", 2, 24).stdout)
        self.assertEqual((got["matched"], got["bad_blocks"], got["fast"]), (24, 0, 1))
        st = self.m.stats()
        self.assertEqual(st["fast_path"]["saved_blocks"], 40)
        self.assertEqual(st["native"]["valid"], 64)
        self.assertGreaterEqual(st["fast_path"]["matched_blocks"], 64)
        # a fast save of blocks that exist finds them
        saved = last_json(drv("save", ns, "fast", 1, 40).stdout)
        self.assertEqual((saved["written"], saved["present"]), (0, 40))

    def test_fast_path_requires_a_mount(self):
        import tempfile
        d = tempfile.mkdtemp()
        try:
            r = drv("save", os.path.join(d, "ns"), "fast", 1, 1, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("Operation not supported", r.stderr)
            saved = last_json(drv("save", os.path.join(d, "ns"), "auto", 1, 3).stdout)
            self.assertEqual((saved["fast"], saved["written"]), (0, 3))
        finally:
            subprocess.run(["rm", "-rf", d])

    def test_registrations_are_listed_and_go_away(self):
        ns = self.m.path("ns")
        drv("save", ns, "fast", 3, 2)
        # the driver exited: its ring and buffers were unregistered
        self.assertEqual(os.listdir(self.m.path(".kvfs", "iovs")), [])
        self.assertGreaterEqual(self.m.stats()["fast_path"]["registrations"], 2)


class Holding(MountTest):
    """A match holds its blocks against eviction until it is released."""
    dram = "16M"

    def test_held_blocks_survive_pressure(self):
        ns = self.m.path("ns")
        drv("save", ns, "fast", 5, 32)
        p = subprocess.Popen([FPDRV, "hold", ns, "5", "32"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.assertEqual(p.stdout.readline().strip(), "held 32")
            before = self.m.stats()["evictions"]
            # 64 MiB of other files through a 16 MiB cache
            for i in range(256):
                write_file(self.m.path("other%d" % i), os.urandom(256 << 10), tmp_suffix=".t")
            self.assertGreater(self.m.stats()["evictions"] - before, 100)
            out, err = p.communicate("go\n", timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
        self.assertEqual(p.returncode, 0, out + err)
        got = last_json(out)
        self.assertEqual((got["matched"], got["bad_blocks"], got["load_error"]), (32, 0, 0))
        # released now: the same pressure evicts them
        for i in range(256, 512):
            write_file(self.m.path("other%d" % i), os.urandom(256 << 10), tmp_suffix=".t")
        got = last_json(drv("load", ns, "fast", 5, 32, check=False).stdout)
        self.assertLess(got["matched"], 32)
        self.assertEqual(got["bad_blocks"], 0)


class OtherUserTest(MountTest):
    """A mount other users can reach (allow_other, a 0755 base directory)."""
    args = ("-o", "allow_other")

    def setUp(self):
        if os.getuid() != 0:
            self.skipTest("needs root to act as another user")
        super().setUp()
        os.chmod(self.m.base, 0o755)


class Permissions(OtherUserTest):
    """A process is refused on the fast path exactly where the mount refuses it."""
    dram = "64M"

    def test_private_namespace_is_refused(self):
        ns = self.m.path("private")
        drv("save", ns, "fast", 7, 4)
        os.chmod(ns, 0o700)
        r = drv("load", ns, "fast", 7, 4, user=NOBODY, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("Permission denied", r.stderr)
        r = drv("load", ns, "posix", 7, 4, user=NOBODY, check=False)
        self.assertIn("Permission denied", r.stderr)

    def test_unreadable_blocks_are_not_matched(self):
        ns = self.m.path("shared")
        drv("save", ns, "fast", 8, 4)
        os.chmod(ns, 0o755)
        for name in os.listdir(ns):
            os.chmod(os.path.join(ns, name), 0o600)
        fast = last_json(drv("load", ns, "fast", 8, 4, user=NOBODY).stdout)
        posix = last_json(drv("load", ns, "posix", 8, 4, user=NOBODY).stdout)
        self.assertEqual((fast["matched"], posix["matched"]), (0, 0))
        self.assertEqual(fast["fast"], 1)
        for name in os.listdir(ns):
            os.chmod(os.path.join(ns, name), 0o644)
        fast = last_json(drv("load", ns, "fast", 8, 4, user=NOBODY).stdout)
        self.assertEqual((fast["matched"], fast["bad_blocks"]), (4, 0))

    def test_saving_needs_write_permission(self):
        ns = self.m.path("ro")
        os.makedirs(ns)
        os.chmod(ns, 0o755)
        r = drv("save", ns, "fast", 9, 2, user=NOBODY, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(os.listdir(ns), [])


class BadRequests(MountTest):
    """Malformed ring requests are refused one by one; the daemon stays healthy."""
    dram = "64M"

    def test_abuse(self):
        os.makedirs(self.m.path("m", "ns"))
        r = drv("abuse", self.m.mnt, "m/ns", check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertGreaterEqual(self.m.stats()["fast_path"]["errors"], 14)
        # healthy: the mount and the fast path still serve
        drv("save", self.m.path("m", "ns"), "fast", 11, 3)
        got = last_json(drv("load", self.m.path("m", "ns"), "fast", 11, 3).stdout)
        self.assertEqual((got["matched"], got["bad_blocks"]), (3, 0))

    def test_registration_refusals(self):
        iovs = self.m.path(".kvfs", "iovs")
        cases = [
            ("ring.%d.1" % os.getpid(), "/etc/passwd"),       # not /proc/self/fd/N
            ("ring.%d.1" % os.getpid(), "/proc/self/fd/999"),  # no such descriptor
            ("buf.1.1", "/proc/self/fd/0"),                    # someone else's name
            ("whatever", "/proc/self/fd/0"),
        ]
        for name, target in cases:
            with self.subTest(name=name, target=target):
                with self.assertRaises(OSError):
                    os.symlink(target, os.path.join(iovs, name))
        # a regular file is not memory
        with open(os.path.join(self.m.base, "plain"), "w") as f:
            f.write("x")
        fd = os.open(os.path.join(self.m.base, "plain"), os.O_RDWR)
        try:
            with self.assertRaises(OSError):
                os.symlink("/proc/self/fd/%d" % fd, os.path.join(iovs, "buf.%d.2" % os.getpid()))
        finally:
            os.close(fd)
        self.assertEqual(os.listdir(iovs), [])
        # symlinks anywhere else are still refused
        with self.assertRaises(PermissionError):
            os.symlink("/tmp", self.m.path("link"))


class Restart(MountTest):
    """The daemon killed and restarted while an engine is attached: misses, then
    the library reconnects by itself; never wrong bytes."""
    dram = "64M"

    def test_restart_while_attached(self):
        ns = self.m.path("ns")
        drv("save", ns, "fast", 13, 8)
        p = subprocess.Popen([FPDRV, "attach", ns, "13", "8", "200"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = json.loads(p.stdout.readline())
            self.assertEqual((first["matched"], first["fast"], first["bad_blocks"]), (8, 1, 0))
            self.m.kill()            # kill -9 with the engine attached
            self.m.start()
            drv("save", ns, "posix", 13, 8)  # the blocks were in DRAM only: put them back
            deadline = time.time() + 20
            while time.time() < deadline:
                p.stdin.write("next\n")
                p.stdin.flush()
                r = json.loads(p.stdout.readline())
                self.assertEqual(r["bad_blocks"], 0)
                if r["fast"] == 1 and r["matched"] == 8:
                    break
                time.sleep(0.1)
            else:
                self.fail("the library never reconnected")
            p.stdin.close()
            out = p.stdout.read()
            p.wait(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
        self.assertEqual(p.returncode, 0, p.stderr.read())
        self.assertGreaterEqual(json.loads(out.strip().splitlines()[-1])["reconnects"], 1)


# A process that registers memfds under .kvfs/iovs by hand, the way an engine
# (or an attacker) can: argv[2] is a JSON plan of [kind, bytes, sealed]. It
# prints {"pid", "res": [errno or 0 per registration]}, then obeys lines on
# stdin: "truncate" shrinks every memfd to 0 (printing the errnos), "exit"
# leaves without unregistering anything.
REG_CHILD = r'''
import fcntl, json, mmap, os, struct, sys
iovs, plan = sys.argv[1], json.loads(sys.argv[2])
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW

def memfd(kind, size, sealed):
    huge = kind.endswith("-huge")
    kind = kind.replace("-huge", "")
    fd = os.memfd_create("t", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING |
                         (os.MFD_HUGETLB if huge else 0))
    os.ftruncate(fd, size)
    if kind == "ring":  # core/ring.h: 64 entries, SQ at 4K, CQ after it, payload at 64K
        with mmap.mmap(fd, size) as m:
            m[0:48] = struct.pack("<IIIIQQQQ", 0x6b766672, 1, 64, 64, 4096, 4096 + 64 * 64,
                                  65536, size - 65536)
    if sealed:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    return fd

fds, res = [], []
for i, (kind, size, sealed) in enumerate(plan):
    fd = memfd(kind, size, sealed)
    fds.append(fd)
    kind = kind.replace("-huge", "")
    try:
        os.symlink("/proc/self/fd/%d" % fd,
                   os.path.join(iovs, "%s.%d.%d" % (kind, os.getpid(), i + 1)))
        res.append(0)
    except OSError as e:
        res.append(e.errno)
print(json.dumps({"pid": os.getpid(), "res": res}), flush=True)
for line in sys.stdin:
    if line.strip() == "truncate":
        out = []
        for fd in fds:
            try:
                os.ftruncate(fd, 0)
                out.append(0)
            except OSError as e:
                out.append(e.errno)
        print(json.dumps(out), flush=True)
    elif line.strip() == "exit":
        os._exit(0)
'''


class Registrant:
    """A REG_CHILD run as @user; .res has its registrations' errnos."""

    def __init__(self, iovs, plan, user=None):
        py = python_for(user if user is not None else os.getuid())
        self.p = subprocess.Popen([py, "-c", REG_CHILD, iovs, json.dumps(plan)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd="/",
                                  preexec_fn=demote_to(user) if user is not None else None)
        line = self.p.stdout.readline()
        if not line:
            raise AssertionError("registrant failed: " + self.p.stderr.read())
        got = json.loads(line)
        self.pid, self.res = got["pid"], got["res"]

    def say(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline()) if line == "truncate" else None

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=30)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            f.close()


def own_entries(iovs, pid):
    return sorted(n for n in os.listdir(iovs) if n.split(".")[1:2] == [str(pid)])


def wait_for(cond, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def daemon_status(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


RING = ["ring", 1 << 20, True]


class AsNobody(OtherUserTest):
    """Registrations by an unprivileged user on an allow_other mount."""

    def setUp(self):
        super().setUp()
        self.iovs = self.m.path(".kvfs", "iovs")
        self.kids = []

    def tearDown(self):
        for k in self.kids:
            k.kill()
        super().tearDown()

    def registrant(self, plan, user=NOBODY):
        k = Registrant(self.iovs, plan, user)
        self.kids.append(k)
        return k


class Sealing(AsNobody):
    """Registered memory must be sealed against shrinking: a memfd truncated
    under the daemon's mapping would kill it with SIGBUS."""
    dram = "64M"

    def test_unsealed_memfds_are_refused_and_shrinking_is_harmless(self):
        k = self.registrant([["ring", 1 << 20, False], ["buf", 1 << 20, False], RING,
                             ["buf", 1 << 20, True]])
        self.assertEqual(k.res, [errno.EBADFD, errno.EBADFD, 0, 0])
        self.assertEqual(own_entries(self.iovs, k.pid),
                         ["buf.%d.4" % k.pid, "ring.%d.3" % k.pid])
        # the unsealed ones shrink, the sealed ones cannot
        self.assertEqual(k.say("truncate"), [0, 0, errno.EPERM, errno.EPERM])
        time.sleep(1.5)  # a ring server that touched a shrunk ring would be dead by now
        self.assertTrue(self.m.alive())
        self.assertGreaterEqual(self.m.stats()["fast_path"]["refused"], 2)
        ns = self.m.path("ns")
        drv("save", ns, "fast", 21, 2)
        got = last_json(drv("load", ns, "fast", 21, 2).stdout)
        self.assertEqual((got["matched"], got["bad_blocks"], got["fast"]), (2, 0, 1))


class Reclaim(AsNobody):
    """Registrations of a process that is gone are taken back."""
    dram = "64M"

    def test_buffers_of_a_process_gone_are_reclaimed(self):
        k = self.registrant([["buf", 1 << 20, True]] * 2)
        self.assertEqual(k.res, [0, 0])
        before = self.m.stats()["fast_path"].get("reclaimed", 0)
        k.say("exit")  # no ring, nothing unregistered
        self.assertTrue(wait_for(lambda: own_entries(self.iovs, k.pid) == []),
                        os.listdir(self.iovs))
        self.assertEqual(self.m.stats()["fast_path"]["reclaimed"] - before, 2)


class HugePages(AsNobody):
    """hugetlbfs memory is refused even sealed: a hole punched in it faults
    in a new huge page, a SIGBUS when the pool is empty."""
    dram = "64M"

    def test_hugetlb_memfd_is_refused(self):
        try:
            os.close(os.memfd_create("probe", os.MFD_HUGETLB))
        except OSError as e:
            self.skipTest("no hugetlbfs memfds here: %s" % e)
        k = self.registrant([["buf-huge", 2 << 20, True]])
        self.assertEqual(k.res, [errno.EINVAL])
        self.assertTrue(self.m.alive())


class Limits(AsNobody):
    """Per-user limits on rings, buffers and registered bytes; registrations of
    a process that is gone are taken back."""
    dram = "64M"
    args = OtherUserTest.args + ("--fp-rings", "3", "--fp-buffers", "4", "--fp-bytes", "12M")

    def test_rings_per_user(self):
        self.assertEqual(self.m.config()["fast_path"],
                         {"threads": 4, "rings_per_user": 3, "buffers_per_user": 4,
                          "bytes_per_user": 12 << 20})
        k = self.registrant([RING] * 5)
        self.assertEqual(k.res, [0, 0, 0, errno.EDQUOT, errno.EDQUOT])
        # another user is not held back by nobody's rings
        self.assertEqual(self.registrant([RING], user=0).res, [0])
        self.assertEqual(self.m.stats()["fast_path"]["refused"], 2)
        # nobody's process dies without unregistering: its rings are taken back
        k.kill()
        self.assertTrue(wait_for(lambda: own_entries(self.iovs, k.pid) == []),
                        os.listdir(self.iovs))
        self.assertEqual(self.registrant([RING] * 3).res, [0, 0, 0])

    def test_buffers_and_bytes_per_user(self):
        k = self.registrant([["buf", 4 << 20, True]] * 2 + [["buf", 8 << 20, True]] +
                            [["buf", 4096, True]] * 3)
        # 8M + 8M is past 12M; the fifth buffer is past four
        self.assertEqual(k.res, [0, 0, errno.EDQUOT, 0, 0, errno.EDQUOT])
        # unregistering gives the charge back
        os.unlink(os.path.join(self.iovs, "buf.%d.1" % k.pid))
        k2 = self.registrant([["buf", 4 << 20, True]])
        self.assertEqual(k2.res, [0])

class Threads(MountTest):
    """Rings are served by a bounded pool of threads (--fp-threads, default
    4), not one thread each."""
    dram = "64M"

    def test_threads_are_bounded(self):
        iovs = self.m.path(".kvfs", "iovs")
        before = daemon_status(self.m.pid, "Threads")
        k = Registrant(iovs, [RING] * 60)
        try:
            self.assertEqual(k.res, [0] * 60)
            during = daemon_status(self.m.pid, "Threads")
            # four ring servers and the reaper (and FUSE workers, started on
            # demand up to --threads, 8): not a thread per ring
            self.assertLessEqual(during - before, 5 + 8)
            # and every ring is served
            ns = self.m.path("ns")
            drv("save", ns, "fast", 23, 2)
            got = last_json(drv("load", ns, "fast", 23, 2).stdout)
            self.assertEqual((got["matched"], got["fast"]), (2, 1))
        finally:
            k.kill()
        self.assertTrue(wait_for(lambda: os.listdir(iovs) == []), os.listdir(iovs))


class Memory(MountTest):
    """Registered memory is not populated by the daemon."""
    dram = "64M"

    def test_sparse_buffers_cost_nothing(self):
        iovs = self.m.path(".kvfs", "iovs")
        before = daemon_status(self.m.pid, "VmRSS")
        k = Registrant(iovs, [["buf", 512 << 20, True]] * 2)
        try:
            self.assertEqual(k.res, [0, 0])
            grew = daemon_status(self.m.pid, "VmRSS") - before
            self.assertLess(grew, 64 << 10, "the daemon's RSS grew by %d KiB" % grew)
        finally:
            k.kill()
