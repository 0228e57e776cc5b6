"""Test harness: a real kvfs daemon on a real FUSE mount in a temporary directory.

    with Mount(dram="64M") as m:
        open(m.path("a"), "wb").write(b"x")
        m.stats()["files"]

Binaries come from $KVFS_BUILD (default build/). Every mount lives under a
fresh temporary directory that is unmounted and removed at exit, also when a
test fails.
"""
import atexit
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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("KVFS_BUILD", "build"))
KVFS = os.path.join(BUILD, "bin", "kvfs")
KVFSCTL = os.path.join(BUILD, "bin", "kvfsctl")
KVFS_BENCH = os.path.join(BUILD, "bin", "kvfs-bench")
# Every other program a test runs (kvfsctl, kvfs-llm, kvfs --fsck) reads the
# same ThreadSanitizer suppressions as the daemons (tests/tsan.supp).
os.environ.setdefault("TSAN_OPTIONS", "suppressions=" + os.path.join(ROOT, "tests", "tsan.supp"))


# KVFS_TEST_NO_PASSTHROUGH=1 runs every daemon with --no-passthrough: reads of
# sealed files then go through the daemon (make test runs some suites twice).
NO_PASSTHROUGH = os.environ.get("KVFS_TEST_NO_PASSTHROUGH") == "1"


def fuse_available():
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


class Mount:
    """One kvfs daemon. State survives restart(); everything is removed by close()."""

    def __init__(self, dram="64M", args=(), env=None, base=None):
        self.base = base or tempfile.mkdtemp(prefix="kvfs-test-")
        self.mnt = os.path.join(self.base, "mnt")
        self.state = os.path.join(self.base, "state")
        os.makedirs(self.mnt, exist_ok=True)
        self.dram = dram
        self.args = list(args)
        # Sanitized builds report into files next to the mount (the daemon's
        # stderr is /dev/null once it runs in the background).
        san = "log_path=%s" % os.path.join(self.base, "sanitizer")
        self.env = dict(os.environ, ASAN_OPTIONS=san + ":detect_leaks=1",
                        UBSAN_OPTIONS=san + ":print_stacktrace=1:halt_on_error=1",
                        TSAN_OPTIONS=san + ":suppressions=" +
                        os.path.join(ROOT, "tests", "tsan.supp"), **(env or {}))
        self.pid = None

    # --- lifecycle ---------------------------------------------------------
    def cmdline(self, extra=()):
        pt = ["--no-passthrough"] if NO_PASSTHROUGH and "--no-passthrough" not in self.args else []
        return [KVFS, "--state", self.state, "--dram", self.dram,
                "--log", os.path.join(self.base, "kvfs.log"), *pt, *self.args, *extra, self.mnt]

    def start(self, extra=()):
        r = subprocess.run(self.cmdline(extra), env=self.env, capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise RuntimeError("kvfs failed to start (%d): %s%s" %
                               (r.returncode, r.stdout, r.stderr))
        self.pid = self.config()["pid"]
        return self

    def stop(self, timeout=30):
        """Clean unmount; waits for the daemon to exit."""
        if self.pid is None:
            return
        subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True, timeout=30)
        self._wait_exit(timeout)

    def kill(self, sig=signal.SIGKILL, detach=True):
        """Kill the daemon and (unless told not to) detach the dead mount. Until
        it is detached, every access to the mount fails with ENOTCONN; after,
        the path is a plain directory again."""
        if self.pid is not None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self._wait_exit(3)
            except RuntimeError:
                # A daemon thread can be stuck in the kernel (a cache
                # invalidation waiting for a directory lock that a process
                # blocked on this very mount holds): abort the connection,
                # as an operator would, and the process can exit.
                self.abort()
                self._wait_exit(30)
        if detach:
            self.detach()

    def abort(self):
        """Abort the FUSE connection (/sys/fs/fuse/connections/N/abort)."""
        conns = "/sys/fs/fuse/connections"
        if os.path.isdir(conns) and not os.listdir(conns):
            subprocess.run(["mount", "-t", "fusectl", "none", conns], capture_output=True)
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == self.mnt:
                    minor = fields[2].split(":")[1]
                    try:
                        with open("/sys/fs/fuse/connections/%s/abort" % minor, "w") as a:
                            a.write("1")
                    except OSError:
                        pass

    def detach(self):
        subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True, timeout=30)

    def restart(self, extra=()):
        self.stop()
        return self.start(extra)

    def _wait_exit(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not _running(self.pid):
                self.pid = None
                return
            time.sleep(0.01)
        raise RuntimeError("kvfs pid %d did not exit" % self.pid)

    def sanitizer_reports(self):
        """What a sanitized daemon reported (empty for a plain build)."""
        out = []
        for name in sorted(os.listdir(self.base)) if os.path.isdir(self.base) else []:
            if name.startswith("sanitizer"):
                with open(os.path.join(self.base, name), errors="replace") as f:
                    out.append(f.read())
        return "\n".join(out)

    def close(self):
        """Unmount and remove everything. @return the sanitizer reports, if any."""
        try:
            if self.pid is not None:
                self.stop()
        except Exception:
            self.kill()
        subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        reports = self.sanitizer_reports()
        shutil.rmtree(self.base, ignore_errors=True)
        return reports

    def __enter__(self):
        if self.pid is None:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        reports = self.close()
        if reports and exc_type is None:
            raise AssertionError("the sanitizer reported:\n" + reports)

    # --- helpers -------------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    def _json(self, name):
        with open(os.path.join(self.mnt, ".kvfs", name)) as f:
            return json.load(f)

    def stats(self):
        return self._json("stats")

    def config(self):
        return self._json("config")

    def metrics(self):
        with open(os.path.join(self.mnt, ".kvfs", "metrics")) as f:
            return f.read()

    def log(self):
        try:
            with open(os.path.join(self.base, "kvfs.log")) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.pid is not None and _running(self.pid)


def _running(pid):
    """True while any thread of @pid runs. A zombie (exited, not yet reaped by
    init) whose other threads are gone has exited; until they are, they may
    still hold the state directory's lock."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        return len(os.listdir("/proc/%d/task" % pid)) > 1
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def write_file(path, data, tmp_suffix=None):
    """Write @data to @path, through a temporary name and rename if tmp_suffix."""
    target = path + tmp_suffix if tmp_suffix else path
    with open(target, "wb") as f:
        f.write(data)
    if tmp_suffix:
        os.rename(target, path)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


# --- running things as another user -------------------------------------------
#
# The tree (and the interpreter running the tests) may lie under a directory
# only its owner can traverse: a `mktemp -d` checkout, /root, a pyenv under
# /root. A program another user runs must be somewhere that user can reach.

def demote_to(uid):
    """A preexec_fn that makes the child @uid (its group too, no others)."""
    def demote():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    return demote


_reachable = {}


def reachable_copy(path):
    """A copy of the program @path that any user can run: in a fresh 0755
    directory of its own, removed at exit."""
    if path not in _reachable:
        d = tempfile.mkdtemp(prefix="kvfs-helper-")
        atexit.register(shutil.rmtree, d, True)
        os.chmod(d, 0o755)
        copy = os.path.join(d, os.path.basename(path))
        shutil.copy(path, copy)
        os.chmod(copy, 0o755)
        _reachable[path] = copy
    return _reachable[path]


_pythons = {}


def python_for(uid):
    """A Python interpreter @uid can run: this one if it can, else the first
    python3 on PATH that it can. (An interpreter cannot simply be copied: it
    needs its library tree.)"""
    if uid not in _pythons:
        cands = [sys.executable] + [os.path.join(d, "python3")
                                    for d in os.environ.get("PATH", "").split(os.pathsep) if d]
        for c in cands:
            if not os.path.isfile(c):
                continue
            try:
                r = subprocess.run([c, "-c", "import fcntl, json, mmap"], cwd="/",
                                   preexec_fn=demote_to(uid), capture_output=True, timeout=60)
            except OSError:
                continue
            if r.returncode == 0:
                _pythons[uid] = c
                break
        else:
            raise AssertionError("no python3 that uid %d can run (tried %s)" % (uid, cands))
    return _pythons[uid]


def errno_of(fn, *args, **kw):
    """Run fn; return the errno it raised, or 0."""
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno
    return 0


class MountTest(unittest.TestCase):
    """A test case with a fresh mount per test (self.m)."""
    dram = "64M"
    args = ()

    def setUp(self):
        if not fuse_available():
            self.skipTest("no /dev/fuse or fusermount3")
        self.m = Mount(dram=self.dram, args=self.args).start()

    def tearDown(self):
        m = self.m
        alive = m.alive()
        log = m.log()
        reports = m.close()
        if reports:
            self.fail("the sanitizer reported:\n" + reports)
        if not alive and not getattr(self, "_expect_dead", False):
            self.fail("the daemon died during the test; log:\n" + log)


def run_python_as(uid, code, *argv, timeout=60):
    """Run Python @code with @argv in a child with uid and gid @uid (no
    supplementary groups); @return what it printed, decoded from JSON."""
    # an interpreter @uid can reach, wherever this one lies (python_for)
    r = subprocess.run([python_for(uid), "-c", code, *argv], preexec_fn=demote_to(uid), cwd="/",
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError("child as uid %d failed: %s" % (uid, r.stderr))
    return json.loads(r.stdout)
