"""The libkvfs fast path on a real mount: shared-memory rings to the daemon.

tests/integration/fpdrv.c is the engine side (a libkvfs client); these tests
drive it against a mount and check what the daemon did.
"""
import atexit
import json
import os
import shutil
import subprocess
import tempfile
import time

from harness import BUILD, Mount, MountTest, write_file

FPDRV = os.path.join(BUILD, "tests", "fpdrv")
NOBODY = 65534
_reachable = {}


def fpdrv_as_other_user():
    """A copy of fpdrv that another user can run, wherever the tree is: the
    checkout may lie under a directory only its owner can traverse (a
    `mktemp -d` directory, /root). The copy is in a fresh 0755 directory of
    its own, removed at exit."""
    if "fpdrv" not in _reachable:
        d = tempfile.mkdtemp(prefix="kvfs-fpdrv-")
        atexit.register(shutil.rmtree, d, True)
        os.chmod(d, 0o755)
        path = os.path.join(d, "fpdrv")
        shutil.copy(FPDRV, path)
        os.chmod(path, 0o755)
        _reachable["fpdrv"] = path
    return _reachable["fpdrv"]


def drv(*args, user=None, stdin=None, check=True):
    def demote():
        os.setgid(user)
        os.setgroups([])
        os.setuid(user)
    exe = FPDRV if user is None else fpdrv_as_other_user()
    r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120,
                       preexec_fn=demote if user is not None else None, input=stdin,
                       cwd=None if user is None else os.path.dirname(exe))
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


class Permissions(MountTest):
    """A process is refused on the fast path exactly where the mount refuses it."""
    dram = "64M"
    args = ("-o", "allow_other")

    def setUp(self):
        if os.getuid() != 0:
            self.skipTest("needs root to act as another user")
        super().setUp()
        os.chmod(self.m.base, 0o755)

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
