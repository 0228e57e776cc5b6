"""The file patterns of the engine connectors that use kvfs unchanged
(DESIGN §2: "every engine that already writes KV files ... can use it
unchanged"). Each class restates, in plain Python, exactly the system calls
one connector makes — paths, temporary names, open flags, the order of
write/rename/close, existence checks and reads — from the connector's source
(cited at the top of each class), with block sizes scaled down.

What an engine needs from a cache:
  - everything it stored reads back byte-exact while it is there;
  - under pressure a block may vanish: the engine sees a miss
    (exists() False, or FileNotFoundError on open), never other bytes;
  - several writers storing the same block at once (several workers or
    replicas computing the same prefix) leave one complete copy.
"""
import ctypes
import errno
import hashlib
import json
import multiprocessing
import os
import pathlib
import struct
import uuid

from harness import MountTest

KiB = 1 << 10


def block_bytes(name, size, variant=0):
    """Deterministic bytes for a block: its name and a hash of it, repeated."""
    h = hashlib.sha256(("%s/%d" % (name, variant)).encode()).digest()
    head = ("%s/%d|" % (name, variant)).encode()
    return (head + h * (size // 32 + 1))[:size]


def block_hash(i, ns="kvfs"):
    """A 32-byte block hash, as vLLM and SGLang compute them (SHA-256)."""
    return hashlib.sha256(("%s/%d" % (ns, i)).encode()).digest()


def run_writers(fn, args_per_writer, rounds):
    """Run @fn(writer_index, round, *args) in one forked process per entry of
    @args_per_writer, @rounds times each, all starting every round together
    (a barrier). Returns (writer, round, errno) for every call that raised
    OSError, and (writer, round, repr) for any other exception."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(args_per_writer))
    q = ctx.Queue()

    def body(w, args):
        errs = []
        for r in range(rounds):
            barrier.wait(60)
            try:
                fn(w, r, *args)
            except OSError as e:
                errs.append((w, r, e.errno))
            except Exception as e:  # anything else is a test failure
                errs.append((w, r, repr(e)))
        q.put(errs)

    procs = [ctx.Process(target=body, args=(w, a)) for w, a in enumerate(args_per_writer)]
    for p in procs:
        p.start()
    errs = []
    for _ in procs:
        errs.extend(q.get(timeout=120))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, "writer process failed"
    return errs


# ------------------------------------------------------------------------------
# llm-d filesystem backend (vLLM offloading connector, shared-storage medium)
# ------------------------------------------------------------------------------


class LlmdFs:
    """The llm-d FS backend's file layout and I/O, restated.

    Source: llm-d/llm-d-kv-cache @ 7be76e119ca50c5700b3bca65a19b6a0218a9b62
      kv_connectors/llmd_fs_backend/llmd_fs_backend/file_mapper.py  (FileMapper)
      kv_connectors/llmd_fs_backend/llmd_fs_backend/manager.py      (lookup)
      kv_connectors/llmd_fs_backend/csrc/storage/backends/fs_io/file_io.cpp
      kv_connectors/llmd_fs_backend/csrc/storage/storage_offload.cpp
    Path: <root>/<model with / -> _>_<sha256(json(fields))[:12]>_r<rank>/
          <hash[:3]>/<hash[3:5]>_g<group>/<hash>.bin, plus
          <root>/<model>_<digest>/config.json written once (exists() guard).
    Before llm-d PR #585 (commit e817348) the layout was the deep tree
    <root>/<model>/block_size_<B>_blocks_per_file_<N>/tp_<T>_pp_size_<P>_pcp_size_<C>/
    rank_<R>/<dtype>/<hhh>/<hh>_g<G>/<hash>.bin (the vLLM "shared_storage"
    offloading layout it came from); `legacy=True` uses it.
    Store: skip if std::ifstream(dst).good() (an open for reading), touching
    atime with utimensat(UTIME_NOW, UTIME_OMIT); else create_directories,
    std::ofstream(dst + "_" + <thread-local random_device()> + ".tmp")
    (O_WRONLY|O_CREAT|O_TRUNC, 0666), write through a 1 MiB buffer, flush,
    std::rename(tmp, dst) while the stream is still open, then close.
    Load: std::ifstream(ate) -> size, seek to size - blocks*bytes, read.
    """

    def __init__(self, root, model="meta-llama/Llama-3.1-8B-Instruct", rank=0,
                 blocks_per_file=2, block_size=16, legacy=False):
        self.root, self.model, self.rank = root, model, rank
        fields = {
            "model_name": model, "hash_block_size": block_size,
            "gpu_blocks_per_file": blocks_per_file, "tp_size": 1, "pp_size": 1,
            "pcp_size": 1, "dcp_size": 1, "dtype": "bfloat16", "kv_cache_groups": [],
            "inference_engine": "vllm",
        }
        self.fields = fields
        if legacy:
            self.base_path = ("%s/%s/block_size_%d_blocks_per_file_%d/tp_1_pp_size_1_pcp_size_1"
                              "/rank_%d/bfloat16" % (root, model, block_size, blocks_per_file,
                                                     rank))
            self.files_base = self.base_path
        else:
            digest = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":"))
                                    .encode()).hexdigest()[:12]
            self.base_path = "%s/%s_%s" % (root, model.replace("/", "_"), digest)
            self.files_base = "%s_r%d" % (self.base_path, rank)
        self.tmp_suffix = "_%d.tmp" % int.from_bytes(os.urandom(4), "little")

    def get_file_name(self, key, group=0):
        h = key.hex()
        return "%s/%s/%s_g%d/%s.bin" % (self.files_base, h[:3], h[3:5], group, h)

    def write_run_config(self):
        os.makedirs(self.base_path, exist_ok=True)
        target = os.path.join(self.base_path, "config.json")
        if os.path.exists(target):
            return
        with open(target, "w") as f:
            json.dump(self.fields, f, indent=2, sort_keys=True)

    def lookup(self, key):
        return os.path.exists(self.get_file_name(key))

    def _good(self, path):  # std::ifstream(path).good()
        try:
            os.close(os.open(path, os.O_RDONLY))
            return True
        except OSError:
            return False

    def store(self, key, data):
        dst = self.get_file_name(key)
        if self._good(dst):
            utimensat_atime_now(dst)
            return False
        os.makedirs(os.path.dirname(dst), exist_ok=True)  # fs::create_directories
        tmp = dst + self.tmp_suffix
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            for off in range(0, len(data), 1 << 20):  # the 1 MiB stream buffer
                os.write(fd, data[off:off + (1 << 20)])
            try:
                os.rename(tmp, dst)  # the ofstream is still open here
            except OSError:
                os.unlink(tmp)
                raise
        finally:
            os.close(fd)  # ~ofstream
        return True

    def load(self, key, nbytes):
        path = self.get_file_name(key)
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            if size < nbytes:
                raise IOError("file too small")
            os.lseek(fd, size - nbytes, os.SEEK_SET)
            out = b""
            while len(out) < nbytes:
                chunk = os.read(fd, nbytes - len(out))
                if not chunk:
                    raise IOError("short read")
                out += chunk
            return out
        finally:
            os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat_atime_now(path):
    """FileIO::update_atime: atime <- now, mtime untouched."""
    times = (_Timespec * 2)()
    times[0].tv_nsec = (1 << 30) - 1  # UTIME_NOW
    times[1].tv_nsec = (1 << 30) - 2  # UTIME_OMIT
    if _libc.utimensat(-100, os.fsencode(path), times, 0) != 0:  # AT_FDCWD
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)


class LlmdFsBackendTest(MountTest):
    """llm-d/llm-d-kv-cache kv_connectors/llmd_fs_backend (see class LlmdFs)."""
    dram = "160M"
    BLOCK = 256 * KiB
    PER_FILE = 2
    FILES = 200

    def data(self, i, variant=0):
        return block_bytes("llmd/%d" % i, self.BLOCK * self.PER_FILE, variant)

    def check_round_trip(self, legacy):
        fs = LlmdFs(self.m.mnt, blocks_per_file=self.PER_FILE, legacy=legacy)
        fs.write_run_config()
        fs.write_run_config()  # second worker: exists() -> skip
        keys = [block_hash(i, "llmd") for i in range(self.FILES)]
        self.assertFalse(any(fs.lookup(k) for k in keys))
        for i, k in enumerate(keys):
            self.assertTrue(fs.store(k, self.data(i)))
        for i, k in enumerate(keys):
            self.assertTrue(fs.lookup(k))
            self.assertEqual(fs.load(k, self.BLOCK * self.PER_FILE), self.data(i))
            # A partial tail read, as for a file holding more blocks than needed.
            self.assertEqual(fs.load(k, self.BLOCK), self.data(i)[-self.BLOCK:])
        # Storing again finds the file (an open for reading) and touches atime.
        st0 = os.stat(fs.get_file_name(keys[0]))
        self.assertFalse(fs.store(keys[0], self.data(0)))
        st1 = os.stat(fs.get_file_name(keys[0]))
        self.assertEqual(st1.st_mtime_ns, st0.st_mtime_ns)
        self.assertGreaterEqual(st1.st_atime_ns, st0.st_atime_ns)
        with open(os.path.join(fs.base_path, "config.json")) as f:
            self.assertEqual(json.load(f)["model_name"], fs.model)
        # No temporary file is left behind anywhere.
        for d, _, files in os.walk(fs.root):
            if d.startswith(os.path.join(fs.root, ".kvfs")):
                continue
            self.assertFalse([f for f in files if f.endswith(".tmp")], d)
        st = self.m.stats()
        self.assertEqual(st["evictions"], 0)
        self.assertEqual(st["files"], self.FILES + 1)

    def test_store_and_load(self):
        self.check_round_trip(legacy=False)

    def test_store_and_load_legacy_layout(self):
        self.check_round_trip(legacy=True)


class LlmdFsBackendPressure(MountTest):
    dram = "24M"  # 48 files of 512 KiB

    def test_eviction_is_a_miss(self):
        fs = LlmdFs(self.m.mnt)
        n, size = 160, 512 * KiB
        keys = [block_hash(i, "llmd-p") for i in range(n)]
        for i, k in enumerate(keys):
            fs.store(k, block_bytes("p/%d" % i, size))
        hits = misses = 0
        for i, k in enumerate(keys):
            try:
                present = fs.lookup(k)
                data = fs.load(k, size) if present else None
            except FileNotFoundError:
                data = None  # a stale positive lookup is still a miss at load
            if data is None:
                misses += 1
                continue
            self.assertEqual(data, block_bytes("p/%d" % i, size), i)
            hits += 1
        self.assertGreater(hits, 0)
        self.assertGreaterEqual(misses, n - 48)
        self.assertGreater(self.m.stats()["evictions"], 0)
        # The engine stores its misses again; they come back whole.
        for i in range(8):
            if not os.path.exists(fs.get_file_name(keys[i])):
                fs.store(keys[i], block_bytes("p/%d" % i, size))
            self.assertEqual(fs.load(keys[i], size), block_bytes("p/%d" % i, size))


def _llmd_writer(w, r, root, size, same):
    fs = LlmdFs(root)  # a fresh random tmp suffix per process (thread_local)
    fs.store(block_hash(r, "llmd-c"), block_bytes("c/%d" % r, size, 0 if same else w + 1))


class LlmdFsBackendConcurrent(MountTest):
    dram = "64M"
    ROUNDS = 12
    SIZE = 1 << 20

    def test_published_before_close(self):
        """llm-d renames the temporary file while its stream is still open.
        In that window the block is visible (lookup() is True) but not sealed:
        a reader must get an error (EBUSY), never a partial block; after the
        writer's close the block reads back whole."""
        fs = LlmdFs(self.m.mnt)
        key = block_hash(0, "llmd-w")
        dst = fs.get_file_name(key)
        data = block_bytes("w", self.SIZE)
        os.makedirs(os.path.dirname(dst))
        fd = os.open(dst + fs.tmp_suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        os.write(fd, data[:self.SIZE // 2])
        try:
            os.rename(dst + fs.tmp_suffix, dst)
            self.assertTrue(fs.lookup(key))
            try:
                got = fs.load(key, self.SIZE // 2)
            except OSError as e:
                self.assertEqual(e.errno, errno.EBUSY)
            else:
                self.fail("read %d bytes of a block still being written" % len(got))
            # A second worker storing the same block meanwhile: its existence
            # check (an open for reading) fails, so it writes and renames its own.
            self.assertTrue(LlmdFs(self.m.mnt).store(key, data))
        finally:
            os.write(fd, data[self.SIZE // 2:])
            os.close(fd)
        self.assertEqual(fs.load(key, self.SIZE), data)

    def test_same_block_identical_content(self):
        errs = run_writers(_llmd_writer, [(self.m.mnt, self.SIZE, True)] * 4, self.ROUNDS)
        self.assertEqual(errs, [])
        fs = LlmdFs(self.m.mnt)
        for r in range(self.ROUNDS):
            self.assertEqual(fs.load(block_hash(r, "llmd-c"), self.SIZE),
                             block_bytes("c/%d" % r, self.SIZE))
        self.assertEqual(self.m.stats()["files"], self.ROUNDS)

    def test_same_block_different_content(self):
        errs = run_writers(_llmd_writer, [(self.m.mnt, self.SIZE, False)] * 4, self.ROUNDS)
        self.assertEqual(errs, [])
        fs = LlmdFs(self.m.mnt)
        for r in range(self.ROUNDS):
            got = fs.load(block_hash(r, "llmd-c"), self.SIZE)
            candidates = [block_bytes("c/%d" % r, self.SIZE, w + 1) for w in range(4)]
            self.assertIn(got, candidates, "round %d: not one writer's bytes" % r)
        self.assertEqual(self.m.stats()["files"], self.ROUNDS)


# ------------------------------------------------------------------------------
# LMCache: the filesystem remote connector and the local disk backend
# ------------------------------------------------------------------------------


class LMCacheFs:
    """LMCache's FSConnector and LocalDiskBackend, restated.

    Source: LMCache/LMCache
      lmcache/v1/storage_backend/connector/fs_connector.py
          @ a4b96900d3d307f670d054b6c5c8806dd5fdd855 (FSConnector)
      lmcache/v1/storage_backend/local_disk_backend.py
          @ 2bbf159471becbc5b373f911c9370ddec82e39c2 (LocalDiskBackend)
      lmcache/utils.py @ 0353be824aebefb9fd4fbdca022746adbf252d3b (CacheEngineKey)
      lmcache/v1/protocol.py @ 0851d06cee2ec3a8907d23240f8849d58ade969d (RemoteMetadata)
    Key string: f"{model}@{world_size}@{worker_id}@{chunk_hash:x}@{dtype}", '/' -> '-'.
    FSConnector: base dir mkdir(parents=True, exist_ok=True); file
    <base>/<key>.data holding a 28-byte RemoteMetadata (struct "iiiiiii":
    length, fmt, dtype, shape[4]) then the bytes. put: open(final.with_suffix(
    ".tmp"), "wb") — one temporary name shared by every writer of the key —
    write metadata, write data, close, os.replace(tmp, final); on error
    unlink tmp if it exists and re-raise. get: open "rb", readinto metadata,
    readinto data; FileNotFoundError -> None. exists: os.path.exists.
    list: glob("*.data").
    LocalDiskBackend: <path>/<key>.pt written directly with open(path, "wb"),
    or O_CREAT|O_WRONLY|O_DIRECT (0644) when use_odirect and the size is a
    multiple of statvfs().f_bsize; read with open "rb" readinto (or O_DIRECT);
    its own evictor os.remove()s files.
    """

    def __init__(self, base, model="meta-llama/Llama-3.1-8B-Instruct", worker_id=0):
        self.base = pathlib.Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.model, self.worker_id = model, worker_id

    def key_string(self, chunk_hash):
        return ("%s@1@%d@%s@bfloat16" % (self.model, self.worker_id,
                                          format(chunk_hash, "x"))).replace("/", "-")

    def path(self, chunk_hash):
        return self.base / (self.key_string(chunk_hash) + ".data")

    @staticmethod
    def metadata(n):
        return struct.pack("iiiiiii", n, 1, 3, 2, 16, 8, n // 64)

    def exists(self, chunk_hash):
        return os.path.exists(self.path(chunk_hash))

    def put(self, chunk_hash, data):
        final = self.path(chunk_hash)
        temp = final.with_suffix(".tmp")
        try:
            with open(temp, "wb") as f:
                f.write(self.metadata(len(data)))
                f.write(data)
            os.replace(temp, final)
        except Exception:
            if os.path.exists(temp):
                os.unlink(temp)
            raise

    def get(self, chunk_hash, n):
        try:
            with open(self.path(chunk_hash), "rb") as f:
                md = bytearray(28)
                if f.readinto(md) != 28:
                    raise RuntimeError("partial read meta")
                length = struct.unpack_from("iiiiiii", md)[0]
                buf = bytearray(n)
                if f.readinto(buf) != length or length != n:
                    raise RuntimeError("partial read data")
                return bytes(buf)
        except FileNotFoundError:
            return None

    def list(self):
        return sorted(p.stem for p in self.base.glob("*.data"))

    # LocalDiskBackend
    def disk_path(self, chunk_hash):
        return os.path.join(str(self.base), self.key_string(chunk_hash) + ".pt")

    def write_file(self, path, data, use_odirect=False):
        bs = os.statvfs(str(self.base)).f_bsize
        if len(data) % bs != 0 or not use_odirect:
            with open(path, "wb") as f:
                f.write(data)
        else:
            import mmap
            buf = mmap.mmap(-1, len(data))  # page aligned, as O_DIRECT needs
            buf[:] = data
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o644)
            try:
                os.write(fd, buf)
            finally:
                os.close(fd)

    def read_file(self, path, n, use_odirect=False):
        try:
            if not use_odirect:
                buf = bytearray(n)
                with open(path, "rb") as f:
                    f.readinto(buf)
                return bytes(buf)
            import mmap
            buf = mmap.mmap(-1, n)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            with os.fdopen(fd, "rb", buffering=0) as fdo:
                fdo.readinto(buf)
            return bytes(buf)
        except FileNotFoundError:
            return None


def lm_hash(i):
    # chunk hashes are Python ints; some are negative (format(-5, "x") == "-5").
    v = int.from_bytes(block_hash(i, "lmcache")[:8], "little", signed=True)
    return v


class LMCacheTest(MountTest):
    """LMCache/LMCache FSConnector and LocalDiskBackend (see class LMCacheFs)."""
    dram = "160M"
    SIZE = 512 * KiB
    N = 200

    def test_fs_connector_store_and_load(self):
        lm = LMCacheFs(self.m.path("lmcache", "fs"))
        hashes = [lm_hash(i) for i in range(self.N)]
        self.assertTrue(any(h < 0 for h in hashes))
        for i, h in enumerate(hashes):
            self.assertFalse(lm.exists(h))
            lm.put(h, block_bytes("lm/%d" % i, self.SIZE))
        for i, h in enumerate(hashes):
            self.assertTrue(lm.exists(h))
            self.assertEqual(lm.get(h, self.SIZE), block_bytes("lm/%d" % i, self.SIZE))
            self.assertEqual(os.path.getsize(lm.path(h)), 28 + self.SIZE)
        self.assertEqual(lm.list(), sorted(lm.key_string(h) for h in hashes))
        self.assertIsNone(lm.get(lm_hash(10 ** 6), self.SIZE))
        self.assertEqual(self.m.stats()["files"], self.N)

    def test_local_disk_backend_store_and_load(self):
        lm = LMCacheFs(self.m.path("lmcache", "disk"))
        for odirect in (False, True):
            for i in range(64):
                p = lm.disk_path(lm_hash(i + 1000 * odirect))
                lm.write_file(p, block_bytes("ld/%d" % i, self.SIZE), use_odirect=odirect)
            for i in range(64):
                p = lm.disk_path(lm_hash(i + 1000 * odirect))
                self.assertEqual(lm.read_file(p, self.SIZE, use_odirect=odirect),
                                 block_bytes("ld/%d" % i, self.SIZE), (odirect, i))
        # Its own eviction is os.remove; a removed chunk reads as a miss.
        p = lm.disk_path(lm_hash(0))
        os.remove(p)
        self.assertIsNone(lm.read_file(p, self.SIZE))
        self.assertEqual(self.m.stats()["files"], 127)


class LMCachePressure(MountTest):
    dram = "24M"

    def test_eviction_is_a_miss(self):
        lm = LMCacheFs(self.m.path("lmcache"))
        size, n = 512 * KiB, 160  # 512 KiB + 28 bytes: 9 pages each
        for i in range(n):
            lm.put(lm_hash(i), block_bytes("lp/%d" % i, size))
        hits = misses = 0
        for i in range(n):
            data = lm.get(lm_hash(i), size) if lm.exists(lm_hash(i)) else None
            if data is None:
                misses += 1
            else:
                self.assertEqual(data, block_bytes("lp/%d" % i, size), i)
                hits += 1
        self.assertGreater(hits, 0)
        self.assertGreaterEqual(misses, n - 48)
        listed = lm.list()
        self.assertEqual(len(listed), self.m.stats()["files"])
        for stem in listed:  # whatever the listing shows reads back whole
            self.assertIsNotNone(lm.get(int(stem.split("@")[3], 16), size))


def _lm_put_writer(w, r, base, size):
    LMCacheFs(base).put(lm_hash(r), block_bytes("lc/%d" % r, size))


def _lm_disk_writer(w, r, base, size):
    lm = LMCacheFs(base)
    lm.write_file(lm.disk_path(lm_hash(r)), block_bytes("ld/%d" % r, size))


class LMCacheConcurrent(MountTest):
    """Same-key writers. FSConnector's temporary name is shared by every
    writer of a key (final.with_suffix(".tmp")), so writers open one file
    together; LocalDiskBackend writes the final name directly. Contents are
    identical per key (they are the same KV). A writer may fail (its put
    raises, LMCache logs it); the block must still end up whole."""
    dram = "64M"
    ROUNDS = 16
    SIZE = 1 << 20
    # open(..., "wb") of a file another writer already sealed: EPERM (write
    # once); while it is being sealed: EBUSY; replace() after another writer
    # moved the shared tmp away: ENOENT.
    TOLERATED = {errno.EPERM, errno.EBUSY, errno.ENOENT}

    def failures_per_round(self, errs):
        self.assertEqual([e for e in errs if e[2] not in self.TOLERATED], [])
        return [sum(1 for _, r, _ in errs if r == x) for x in range(self.ROUNDS)]

    def test_fs_connector_same_key(self):
        """Whenever one put() returned, the block is there and whole. All four
        can fail together on kvfs (not on a POSIX disk): the last writer to
        open the shared tmp finds it sealed (EPERM) and, in put()'s error
        path, unlinks the tmp the first writer is about to rename (whose
        replace() then fails with ENOENT). That block is simply not stored:
        a later lookup is a miss, never other bytes."""
        base = self.m.path("lmcache", "fs")
        LMCacheFs(base)
        errs = run_writers(_lm_put_writer, [(base, self.SIZE)] * 4, self.ROUNDS)
        failed = self.failures_per_round(errs)
        lm = LMCacheFs(base)
        stored = 0
        for r in range(self.ROUNDS):
            got = lm.get(lm_hash(r), self.SIZE)
            if failed[r] < 4:
                self.assertEqual(got, block_bytes("lc/%d" % r, self.SIZE), r)
            elif got is not None:  # lost by every writer, yet there: it must be whole
                self.assertEqual(got, block_bytes("lc/%d" % r, self.SIZE), r)
            stored += got is not None
        self.assertGreater(stored, 0)
        self.assertEqual(len(lm.list()), stored)
        self.assertFalse([n for n in os.listdir(base) if n.endswith(".tmp")])

    def test_local_disk_same_key_direct_write(self):
        base = self.m.path("lmcache", "disk")
        LMCacheFs(base)
        errs = run_writers(_lm_disk_writer, [(base, self.SIZE)] * 4, self.ROUNDS)
        # The writer that creates the file always succeeds: every key is stored.
        self.assertTrue(all(k < 4 for k in self.failures_per_round(errs)), errs)
        lm = LMCacheFs(base)
        for r in range(self.ROUNDS):
            p = lm.disk_path(lm_hash(r))
            self.assertEqual(os.path.getsize(p), self.SIZE)
            self.assertEqual(lm.read_file(p, self.SIZE), block_bytes("ld/%d" % r, self.SIZE), r)
        self.assertEqual(self.m.stats()["files"], self.ROUNDS)


# ------------------------------------------------------------------------------
# SGLang HiCache file backend
# ------------------------------------------------------------------------------


class HiCacheFile:
    """SGLang's HiCacheFile storage backend, restated.

    Source: sgl-project/sglang
      python/sglang/srt/mem_cache/hicache_storage.py
          @ 001067fffe33427bee0ed2f007fb7551a1d76b44 (HiCacheFile)
      python/sglang/srt/mem_cache/storage/file/lru_file_evictor.py
          @ 09d1a695d854900aeed1d9b1d0e86931f716a478 (LRUFileEvictor)
    One flat directory (SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR, default
    /tmp/hicache), created with os.makedirs() by tp rank 0 if not
    os.path.exists(). File: <key><suffix>.bin, key the page's SHA-256 hex,
    suffix "_<model with / -> ->" + "_<tp_rank>_<tp_size>" (not for MLA)
    + "_<pp_size>_<pp_rank>" (with PP); other pools: <key>.<pool><suffix>.bin.
    set: if exists(key) (os.path.exists): skip; else numpy tofile() to
    f"{path}.tmp.{pid}.{thread_ident}.{uuid4().hex}" (fopen "wb", fwrite,
    fclose), os.replace(tmp, path); on error os.remove(tmp).
    get: open(path, "rb", buffering=0).readinto(buf); a short read is an
    IOError; FileNotFoundError -> None (a miss).
    batch_exists_v2 (no metadata cache): os.scandir(dir), entry.is_file()
    and entry.name in the wanted names; longest prefix present.
    clear: listdir + isfile + os.remove. The optional LRUFileEvictor scans
    with os.listdir/os.stat and os.remove()s victims.
    """

    def __init__(self, file_path, model="meta-llama/Llama-3.1-8B-Instruct", tp_rank=0,
                 tp_size=1, is_mla=False):
        self.file_path = file_path
        model = "-".join(model.split("/"))
        self.config_suffix = "_" + model
        if not is_mla:
            self.config_suffix += "_%d_%d" % (tp_rank, tp_size)
        if not os.path.exists(self.file_path) and tp_rank == 0:
            os.makedirs(self.file_path)

    def path(self, key):
        return os.path.join(self.file_path, key + self.config_suffix + ".bin")

    def exists(self, key):
        return os.path.exists(self.path(key))

    def set(self, key, value):
        if self.exists(key):
            return True
        tensor_path = self.path(key)
        tmp_path = "%s.tmp.%d.%d.%s" % (tensor_path, os.getpid(), 0, uuid.uuid4().hex)
        try:
            with open(tmp_path, "wb") as f:  # ndarray.tofile: fopen "wb"
                f.write(value)
            os.replace(tmp_path, tensor_path)
            return True
        except Exception:
            try:
                os.remove(tmp_path)
            except OSError:
                pass
            return False

    def get(self, key, n):
        buf = bytearray(n)
        try:
            with open(self.path(key), "rb", buffering=0) as f:
                if f.readinto(memoryview(buf)) != n:
                    raise IOError("Short read for %s" % key)
            return bytes(buf)
        except FileNotFoundError:
            return None

    def batch_exists(self, keys):
        wanted = {key + self.config_suffix + ".bin" for key in keys}
        existing = set()
        with os.scandir(self.file_path) as entries:
            for entry in entries:
                if entry.is_file() and entry.name in wanted:
                    existing.add(entry.name)
        for i, key in enumerate(keys):
            if key + self.config_suffix + ".bin" not in existing:
                return i
        return len(keys)

    def clear(self):
        for filename in os.listdir(self.file_path):
            p = os.path.join(self.file_path, filename)
            if os.path.isfile(p):
                os.remove(p)


def sg_key(i):
    return block_hash(i, "sglang").hex()


class SGLangTest(MountTest):
    """sgl-project/sglang HiCacheFile (see class HiCacheFile)."""
    dram = "128M"
    SIZE = 256 * KiB
    N = 300

    def test_store_and_load(self):
        hc = HiCacheFile(self.m.path("hicache"))
        mla = HiCacheFile(self.m.path("hicache"), model="deepseek-ai/DeepSeek-V3", is_mla=True)
        keys = [sg_key(i) for i in range(self.N)]
        self.assertEqual(hc.batch_exists(keys), 0)
        for i, k in enumerate(keys):
            self.assertTrue(hc.set(k, block_bytes("sg/%d" % i, self.SIZE)))
        for i, k in enumerate(keys[:20]):
            self.assertTrue(mla.set(k, block_bytes("mla/%d" % i, self.SIZE)))
        self.assertEqual(hc.batch_exists(keys), self.N)
        self.assertEqual(hc.batch_exists(keys + [sg_key(10 ** 6)] + keys[:3]), self.N)
        for i, k in enumerate(keys):
            self.assertTrue(hc.exists(k))
            self.assertEqual(hc.get(k, self.SIZE), block_bytes("sg/%d" % i, self.SIZE))
        for i, k in enumerate(keys[:20]):
            self.assertEqual(mla.get(k, self.SIZE), block_bytes("mla/%d" % i, self.SIZE))
        self.assertTrue(hc.set(keys[0], b"ignored: already there"))
        self.assertEqual(hc.get(keys[0], self.SIZE), block_bytes("sg/0", self.SIZE))
        names = os.listdir(hc.file_path)
        self.assertEqual(len(names), self.N + 20)
        self.assertFalse([n for n in names if ".tmp." in n])
        self.assertIn(keys[0] + "_meta-llama-Llama-3.1-8B-Instruct_0_1.bin", names)
        self.assertIn(keys[0] + "_deepseek-ai-DeepSeek-V3.bin", names)
        hc.clear()
        self.assertEqual(os.listdir(hc.file_path), [])
        self.assertEqual(hc.batch_exists(keys), 0)
        self.assertIsNone(hc.get(keys[0], self.SIZE))


class SGLangPressure(MountTest):
    dram = "16M"  # 64 pages of 256 KiB

    def test_eviction_is_a_miss(self):
        hc = HiCacheFile(self.m.path("hicache"))
        size, n = 256 * KiB, 300
        keys = [sg_key(i) for i in range(n)]
        for i, k in enumerate(keys):
            self.assertTrue(hc.set(k, block_bytes("sp/%d" % i, size)))
        prefix = hc.batch_exists(keys)
        self.assertLess(prefix, n)  # the oldest pages are gone: a short prefix
        hits = 0
        for i, k in enumerate(keys):
            data = hc.get(k, size)
            if data is not None:
                self.assertEqual(data, block_bytes("sp/%d" % i, size), i)
                hits += 1
        self.assertGreater(hits, 0)
        self.assertLessEqual(hits, 64)
        self.assertTrue(hc.exists(keys[-1]))
        self.assertEqual(hc.get(keys[-1], size), block_bytes("sp/%d" % (n - 1), size))


def _sg_writer(w, r, path, size, same):
    HiCacheFile(path).set(sg_key(r), block_bytes("sc/%d" % r, size, 0 if same else w + 1))


def _direct_writer(w, r, path, size):
    with open(os.path.join(path, "direct-%d.bin" % r), "wb") as f:
        f.write(block_bytes("sd/%d" % r, size))


class SGLangConcurrent(MountTest):
    dram = "64M"
    ROUNDS = 12
    SIZE = 1 << 20

    def test_same_page_identical_content(self):
        path = self.m.path("hicache")
        HiCacheFile(path)
        errs = run_writers(_sg_writer, [(path, self.SIZE, True)] * 4, self.ROUNDS)
        self.assertEqual(errs, [])
        hc = HiCacheFile(path)
        for r in range(self.ROUNDS):
            self.assertEqual(hc.get(sg_key(r), self.SIZE), block_bytes("sc/%d" % r, self.SIZE))
        self.assertEqual(sorted(os.listdir(path)), sorted(os.path.basename(hc.path(sg_key(r)))
                                                          for r in range(self.ROUNDS)))

    def test_same_page_different_content(self):
        path = self.m.path("hicache")
        HiCacheFile(path)
        errs = run_writers(_sg_writer, [(path, self.SIZE, False)] * 4, self.ROUNDS)
        self.assertEqual(errs, [])
        hc = HiCacheFile(path)
        for r in range(self.ROUNDS):
            got = hc.get(sg_key(r), self.SIZE)
            self.assertIn(got, [block_bytes("sc/%d" % r, self.SIZE, w + 1) for w in range(4)],
                          "round %d: not one writer's bytes" % r)


class DirectOpenWriters(MountTest):
    """The pattern with no temporary name at all (LMCache's LocalDiskBackend,
    and any engine that writes its final path): open(path, "wb")."""
    dram = "64M"
    ROUNDS = 12
    SIZE = 1 << 20

    def test_same_name_direct_open_wb(self):
        """Four writers open(path, "wb") the same final name at once (no tmp).
        Write-once: a writer whose open comes after the file is sealed gets
        EPERM (EBUSY while it is being sealed); the file is one whole copy."""
        path = self.m.path("direct")
        os.makedirs(path)
        errs = run_writers(_direct_writer, [(path, self.SIZE)] * 4, self.ROUNDS)
        self.assertEqual([e for e in errs if e[2] not in (errno.EPERM, errno.EBUSY)], [])
        for r in range(self.ROUNDS):
            with open(os.path.join(path, "direct-%d.bin" % r), "rb") as f:
                self.assertEqual(f.read(), block_bytes("sd/%d" % r, self.SIZE), r)
