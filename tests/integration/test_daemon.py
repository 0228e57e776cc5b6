"""The daemon's command line and life: options, start-up, refusals, unmount,
signals, and restart from the catalog (directories come back, files do not)."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from harness import KVFS, Mount, MountTest, errno_of, fuse_available, python_for, read_file, write_file

NOBODY = 65534


def mountinfo_points():
    """(mount point, fstype, super options) of every mount, from /proc/self/mountinfo."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            points.append((_unescape(fields[4]), fields[sep + 1], fields[sep + 3]))
    return points


def _unescape(s):
    return s.encode().decode("unicode_escape") if "\\" in s else s


def is_mounted(path):
    path = os.path.realpath(path)
    return any(p == path for p, _, _ in mountinfo_points())


def super_options(path):
    """The super options of the kvfs mount at @path, or None."""
    path = os.path.realpath(path)
    for p, fstype, opts in mountinfo_points():
        if p == path and fstype == "fuse.kvfs":
            return opts.split(",")
    return None


def exited(pid):
    """True once every thread of @pid has exited (a zombie counts once its threads are gone:
    until then they still hold the state directory's lock)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                return False
        return os.listdir("/proc/%d/task" % pid) == [str(pid)]
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_exit(pid, timeout=30):
    """Poll until @pid has exited; @return True if it did."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if exited(pid):
            return True
        time.sleep(0.01)
    return False


def restart(m):
    """m.restart(), waiting for the old daemon's last thread before starting the new one."""
    pid = m.pid
    m.stop()
    if pid is not None:
        assert wait_exit(pid), "kvfs pid %d did not exit" % pid
    return m.start()


def kill9(m):
    """m.kill() (SIGKILL), waiting for the daemon's last thread."""
    pid = m.pid
    m.kill()
    assert wait_exit(pid), "kvfs pid %d did not exit" % pid


def listdir_as(uid, path):
    """[errno, names] of os.listdir(@path) run by @uid in a child."""
    def drop():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    code = ("import json, os, sys\ntry:\n print(json.dumps([0, sorted(os.listdir(sys.argv[1]))]))"
            "\nexcept OSError as e:\n print(json.dumps([e.errno, None]))")
    # an interpreter @uid can reach, wherever this one lies (python_for)
    r = subprocess.run([python_for(uid), "-c", code, path], preexec_fn=drop, cwd="/",
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError(r.stderr)
    return json.loads(r.stdout)


def tree(root):
    """{relative dir: (mode, uid, gid, atime_ns, mtime_ns, subdirs, files)} of every directory."""
    out = {}
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        if rel == ".kvfs" or rel.startswith(".kvfs" + os.sep):
            continue
        st = os.stat(d)
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns,
                    sorted(dirs), sorted(files))
    return out


class FuseTest(unittest.TestCase):
    def setUp(self):
        if not fuse_available():
            self.skipTest("no /dev/fuse or fusermount3")
        self.tmp = tempfile.mkdtemp(prefix="kvfs-cli-")
        self.mounts = []

    def tearDown(self):
        for m in self.mounts:
            m.close()
        for d in os.listdir(self.tmp):
            p = os.path.join(self.tmp, d)
            if is_mounted(p):
                subprocess.run(["fusermount3", "-u", "-z", p], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def mount(self, **kw):
        m = Mount(**kw)
        self.mounts.append(m)
        return m

    def dir(self, name):
        p = os.path.join(self.tmp, name)
        os.makedirs(p, exist_ok=True)
        return p

    def assertOneLineError(self, r, *mentions):
        self.assertNotEqual(r.returncode, 0)
        lines = r.stderr.splitlines()
        self.assertEqual(len(lines), 1, "expected one line on stderr, got %r" % r.stderr)
        self.assertTrue(lines[0].startswith("kvfs: "), lines[0])
        for word in mentions:
            self.assertIn(word, lines[0])
        self.assertEqual(r.stdout, "")


# --- the command line ---------------------------------------------------------------------
class CommandLine(FuseTest):
    def test_help(self):
        for flag in ("--help", "-h"):
            r = subprocess.run([KVFS, flag], capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0)
            self.assertTrue(r.stdout.startswith("usage: kvfs"), r.stdout[:80])
            for opt in ("--state", "--dram", "--page-size", "--policy", "--threads", "--log",
                        "-o", "-f", "--foreground", "--help", "--version", "MOUNTPOINT"):
                self.assertIn(opt, r.stdout, opt)
            self.assertEqual(r.stderr, "")

    def test_version(self):
        for flag in ("--version", "-V"):
            r = subprocess.run([KVFS, flag], capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0)
            self.assertRegex(r.stdout, r"^kvfs \d+\.\d+\.\d+\S* \(CUDA support: (yes|no)\b.*\)\n$")

    def test_bad_options(self):
        mnt = self.dir("mnt")
        state = os.path.join(self.tmp, "state")
        cases = [
            (["--bogus"], ["--bogus"]),
            (["-x"], []),
            (["--dram", "abc"], ["abc"]),
            (["--dram", "0"], ["--dram"]),
            (["--dram", "12Q"], ["12Q"]),
            (["--dram", "-1G"], []),
            (["--threads", "0"], ["--threads"]),
            (["--threads", "257"], ["--threads"]),
            (["--threads", "two"], ["two"]),
            (["--page-size", "3000"], ["3000"]),
            (["--page-size", "1K"], ["--page-size"]),
            (["--page-size", "32M"], ["--page-size"]),
            (["--policy", "foo"], ["foo"]),
            (["--log-level", "loud"], ["loud"]),
            (["--entry-timeout", "soon"], ["soon"]),
        ]
        for args, mentions in cases:
            with self.subTest(args=args):
                r = subprocess.run([KVFS, "--state", state, *args, mnt], capture_output=True,
                                   text=True, timeout=30)
                self.assertOneLineError(r, *mentions)
                self.assertFalse(is_mounted(mnt))
        # a missing value, a missing mountpoint, too many, one that does not exist
        for argv, mentions in (([KVFS, "--state", state, mnt, "--dram"], []),
                               ([KVFS, "--state", state], ["MOUNTPOINT"]),
                               ([KVFS, "--state", state, mnt, mnt], []),
                               ([KVFS, "--state", state, os.path.join(self.tmp, "nonexistent")],
                                ["nonexistent"]),
                               ([KVFS, "--state", state, os.path.join(self.tmp, "afile")],
                                ["afile"])):
            if argv[-1].endswith("afile"):
                open(argv[-1], "w").close()
            with self.subTest(argv=argv[1:]):
                r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
                self.assertOneLineError(r, *mentions)
        self.assertEqual([p for p, _, _ in mountinfo_points() if p.startswith(self.tmp)], [])

    def test_bad_options_leave_a_running_mount_alone(self):
        m = self.mount(dram="16M").start()
        write_file(m.path("f"), b"data")
        other = self.dir("other")
        for args, target in ((["--dram", "abc"], m.mnt), (["--policy", "foo"], m.mnt),
                             (["--threads", "0"], other), (["--page-size", "3000"], other)):
            with self.subTest(args=args, target=target):
                r = subprocess.run([KVFS, "--state", m.state, *args, target],
                                   capture_output=True, text=True, timeout=30)
                self.assertOneLineError(r)
                self.assertFalse(is_mounted(other))
        self.assertTrue(m.alive())
        self.assertEqual(read_file(m.path("f")), b"data")
        self.assertEqual(
            sum(1 for p, _, _ in mountinfo_points() if p == os.path.realpath(m.mnt)), 1)

    def test_invalid_fuse_option(self):
        mnt = self.dir("mnt")
        r = subprocess.run([KVFS, "--state", os.path.join(self.tmp, "state"), "-o",
                            "no_such_fuse_option", mnt], capture_output=True, text=True,
                           timeout=30)
        self.assertNotEqual(r.returncode, 0)
        lines = r.stderr.splitlines()
        self.assertTrue(lines and lines[-1].startswith("kvfs: "), r.stderr)
        self.assertIn("no_such_fuse_option", lines[-1])
        self.assertFalse(is_mounted(mnt))
        # a following valid mount of the same state works
        m = self.mount(dram="16M", base=self.dir("again"))
        m.state = os.path.join(self.tmp, "state")
        m.start()
        self.assertIn(".kvfs", os.listdir(m.mnt))

    def test_allow_other(self):
        if os.getuid() != 0:
            self.skipTest("needs root")
        os.chmod(self.tmp, 0o755)
        plain = self.mount(dram="16M", base=self.dir("plain")).start()
        other = self.mount(dram="16M", base=self.dir("other"), args=["-o", "allow_other"])
        other.start()
        for m in (plain, other):
            os.chmod(m.base, 0o755)
            write_file(m.path("f"), b"x")
        self.assertIn("allow_other", super_options(other.mnt))
        self.assertNotIn("allow_other", super_options(plain.mnt))
        self.assertEqual(listdir_as(NOBODY, plain.mnt)[0], errno.EACCES)
        self.assertEqual(listdir_as(NOBODY, other.mnt), [0, [".kvfs", "f"]])
        self.assertIn("allow_other", other.config()["fuse_options"])


# --- start-up ----------------------------------------------------------------------------
class StartUp(FuseTest):
    def test_returns_when_mount_is_usable(self):
        for i in range(3):
            m = self.mount(dram="16M", base=self.dir("m%d" % i))
            r = subprocess.run(m.cmdline(), capture_output=True, text=True, timeout=60)
            # no stat, no sleep: the very first look at the mount must find it ready
            names = os.listdir(m.mnt)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual((r.stdout, r.stderr), ("", ""))
            self.assertIn(".kvfs", names)
            write_file(m.path("first"), b"first")
            self.assertEqual(read_file(m.path("first")), b"first")
            m.pid = m.config()["pid"]
            self.assertTrue(m.alive())
            self.assertTrue(is_mounted(m.mnt))

    def test_foreground(self):
        m = self.mount(dram="16M", base=self.dir("fg"))
        p = subprocess.Popen(m.cmdline(["-f"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 30
            while not is_mounted(m.mnt) and p.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            self.assertTrue(is_mounted(m.mnt), p.stderr.read() if p.poll() is not None else "")
            self.assertEqual(m.config()["pid"], p.pid)
            write_file(m.path("f"), b"fg")
            self.assertEqual(read_file(m.path("f")), b"fg")
            subprocess.run(["fusermount3", "-u", m.mnt], check=True, timeout=30)
            self.assertEqual(p.wait(30), 0)
            self.assertFalse(is_mounted(m.mnt))
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()

    def test_state_in_use_is_refused(self):
        m = self.mount(dram="16M", base=self.dir("first")).start()
        write_file(m.path("f"), b"first mount")
        os.mkdir(m.path("d"))
        second = self.dir("second")
        log = os.path.join(self.tmp, "second.log")
        for extra in ([], ["-f", "--log", log], ["-f"]):
            with self.subTest(extra=extra):
                r = subprocess.run([KVFS, "--state", m.state, "--dram", "16M", *extra, second],
                                   capture_output=True, text=True, timeout=60)
                if extra == ["-f"]:
                    # the foreground log goes to stderr too: the last line is the verdict
                    self.assertNotEqual(r.returncode, 0)
                    last = r.stderr.splitlines()[-1]
                    self.assertTrue(last.startswith("kvfs: "), r.stderr)
                    self.assertIn("in use", last)
                else:
                    self.assertOneLineError(r, "in use")
                self.assertFalse(is_mounted(second))
        self.assertTrue(m.alive())
        self.assertEqual(read_file(m.path("f")), b"first mount")
        write_file(m.path("g"), b"still works")
        self.assertEqual(sorted(os.listdir(m.mnt)), [".kvfs", "d", "f", "g"])
        # the first daemon's state is intact
        restart(m)
        self.assertEqual(sorted(os.listdir(m.mnt)), [".kvfs", "d"])


# --- unmount, signals and restart ----------------------------------------------------------
class Life(MountTest):
    dram = "32M"

    def build(self):
        """A tree with modes, owners, times; @return the number of sealed files."""
        m = self.m
        os.makedirs(m.path("a", "b", "c"))
        os.mkdir(m.path("e"))
        files = [m.path("top"), m.path("a", "fa"), m.path("a", "b", "c", "deep"),
                 m.path("e", "x"), m.path("e", "y")]
        for i, p in enumerate(files):
            write_file(p, os.urandom(1000 * (i + 1)))
        os.mknod(m.path("a", "empty"), 0o100644)
        write_file(m.path("gone"), b"deleted before the restart")
        os.unlink(m.path("gone"))
        write_file(m.path("e", "z.tmp"), b"renamed")
        os.rename(m.path("e", "z.tmp"), m.path("a", "b", "z"))
        os.makedirs(m.path("e", "moving", "inner"))
        os.rename(m.path("e", "moving"), m.path("a", "b", "moved"))
        os.makedirs(m.path("removed", "sub"))
        os.rmdir(m.path("removed", "sub"))
        os.rmdir(m.path("removed"))
        os.chmod(m.path("a", "b"), 0o700)
        os.chown(m.path("a"), 1234, 5678)
        os.utime(m.path("a", "b", "c"), ns=(1_500_000_000_111_111_111, 1_600_000_000_222_222_222))
        return [*files, m.path("a", "empty"), m.path("a", "b", "z")]

    def check_restarted(self, files, dirs_before):
        m = self.m
        # every file is a miss
        for p in files:
            self.assertEqual(errno_of(os.stat, p), errno.ENOENT, p)
            self.assertEqual(errno_of(open, p, "rb"), errno.ENOENT, p)
        after = tree(m.mnt)
        self.assertEqual(sorted(after), sorted(dirs_before))
        for d, v in dirs_before.items():
            self.assertEqual(after[d][5], v[5], "subdirectories of %s" % d)
            self.assertEqual(after[d][6], [], "files of %s came back" % d)
            self.assertEqual(after[d][:3], v[:3], "mode/owner of %s" % d)
        c = os.stat(m.path("a", "b", "c"))
        self.assertEqual((c.st_atime_ns, c.st_mtime_ns),
                         (1_500_000_000_111_111_111, 1_600_000_000_222_222_222))
        self.assertEqual(os.stat(m.path("a", "b")).st_mode & 0o7777, 0o700)
        self.assertEqual((os.stat(m.path("a")).st_uid, os.stat(m.path("a")).st_gid),
                         (1234, 5678))
        # the listing holds no entry that points nowhere
        for d, dirs, names in os.walk(m.mnt):
            for n in dirs + names:
                os.lstat(os.path.join(d, n))
        self.assertEqual(os.stat(m.path("a")).st_nlink, 3)
        self.assertEqual(os.stat(m.path("a", "b")).st_nlink, 4)
        self.assertEqual(os.stat(m.mnt).st_nlink, 4)
        self.assertTrue(os.path.isdir(m.path("a", "b", "moved", "inner")))
        self.assertFalse(os.path.exists(m.path("e", "moving")))
        self.assertFalse(os.path.exists(m.path("removed")))
        st = m.stats()
        self.assertEqual(st["files"], 0)
        self.assertEqual(st["directories"], 6)
        self.assertEqual(st["used_bytes"], 0)

    def snapshot_dirs(self):
        return tree(self.m.mnt)

    def test_unmount_and_restart(self):
        files = self.build()
        before = self.snapshot_dirs()
        pid = self.m.pid
        self.m.stop()  # fusermount3 -u, waits for the daemon to exit
        self.assertTrue(wait_exit(pid))
        self.assertFalse(is_mounted(self.m.mnt))
        self.m.start()
        self.assertNotEqual(self.m.pid, pid)
        self.check_restarted(files, before)
        self.assertEqual(self.m.stats()["restart_dropped"], len(files))
        # new files get fresh inode numbers, and the same names can be used again
        dir_inos = {os.stat(os.path.join(self.m.mnt, d)).st_ino for d in before}
        write_file(self.m.path("a", "fa"), b"new")
        self.assertNotIn(os.stat(self.m.path("a", "fa")).st_ino, dir_inos)
        self.assertEqual(read_file(self.m.path("a", "fa")), b"new")
        os.unlink(self.m.path("a", "fa"))
        restart(self.m)
        self.assertEqual(self.m.stats()["restart_dropped"], 0)
        self.check_restarted(files, before)

    def test_restart_after_kill(self):
        files = self.build()
        before = self.snapshot_dirs()
        kill9(self.m)  # SIGKILL; the dead mount is detached
        self.assertFalse(self.m.alive())
        self.assertFalse(is_mounted(self.m.mnt))
        self.m.start()
        self.check_restarted(files, before)
        self.assertEqual(self.m.stats()["restart_dropped"], len(files))
        restart(self.m)
        self.assertEqual(self.m.stats()["restart_dropped"], 0)

    def test_signals_unmount_cleanly(self):
        os.makedirs(self.m.path("kept", "sub"))
        write_file(self.m.path("kept", "f"), b"f")
        for sig in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(sig=sig):
                pid = self.m.pid
                os.kill(pid, sig)
                self.assertTrue(wait_exit(pid), "kvfs did not exit on %s" % sig)
                self.m.pid = None
                self.assertFalse(is_mounted(self.m.mnt))
                self.assertNotIn(".kvfs", os.listdir(self.m.mnt))
                self.m.start()
                self.assertEqual(sorted(os.listdir(self.m.path("kept"))), ["sub"])
        self.assertEqual(self.m.stats()["restart_dropped"], 0)

    def test_restart_keeps_directory_times(self):
        """Times a directory got from changes of its entries (not only from utime) survive."""
        self.build()
        os.mkdir(self.m.path("quiet"))
        os.utime(self.m.path("quiet"), ns=(10**18, 10**18))
        before = self.snapshot_dirs()
        restart(self.m)
        after = self.snapshot_dirs()
        wrong = {d: (v[3:5], after[d][3:5]) for d, v in before.items() if after[d][3:5] != v[3:5]}
        self.assertEqual(wrong, {}, "directories whose (atime, mtime) changed across a "
                         "restart: {dir: (before, after)}")

    def test_restart_keeps_nlink_and_empty_root(self):
        restart(self.m)
        self.assertEqual(os.listdir(self.m.mnt), [".kvfs"])
        st = self.m.stats()
        self.assertEqual((st["files"], st["directories"], st["restart_dropped"]), (0, 0, 0))
        self.assertEqual(os.stat(self.m.mnt).st_nlink, 2)
