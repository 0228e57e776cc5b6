"""Native blocks on a real mount (DESIGN §2 rule 4, §4): valid blocks are
accepted and described by xattrs, invalid ones are refused at rename and
unreadable, and anything that does not start with the magic is opaque.

Blocks are built by kvblock.py, an encoder written independently from the
spec in include/kvfs/format.h; the first tests cross-check it against the C
encoder (build/lib/libkvfs.so) and the committed key vectors, so that a
disagreement between the two readings of the spec shows up here.
"""
import ctypes
import errno
import os
import re

import cbor2

import kvblock
from harness import BUILD, ROOT, MountTest, errno_of, read_file

SEED = "0"
XATTR_KEY = "user.kvfs.key"
XATTR_PARENT = "user.kvfs.parent"
XATTR_TOKENS = "user.kvfs.tokens"


def toks(n, salt=0):
    return [(i * 7919 + salt * 104729) % 152064 for i in range(n)]


def write_closed(path, data):
    with open(path, "wb") as f:
        f.write(data)


# --- the C encoder through ctypes --------------------------------------------------


class _Layout(ctypes.Structure):
    _fields_ = [("model_id", ctypes.c_char * 64), ("num_layers", ctypes.c_uint32),
                ("num_kv_heads", ctypes.c_uint32), ("head_dim", ctypes.c_uint32),
                ("tokens_per_block", ctypes.c_uint32), ("dtype", ctypes.c_uint16),
                ("kind", ctypes.c_uint16)]


class _Desc(ctypes.Structure):
    _fields_ = [("layout", _Layout), ("parent", ctypes.c_uint8 * 32),
                ("tokens", ctypes.POINTER(ctypes.c_uint32)), ("extra_cbor", ctypes.c_char_p),
                ("extra_len", ctypes.c_size_t)]


def c_encode(lib, layout, parent, tokens, extra, layers):
    d = _Desc()
    d.layout.model_id = layout.model_id.encode()
    d.layout.num_layers = layout.num_layers
    d.layout.num_kv_heads = layout.num_kv_heads
    d.layout.head_dim = layout.head_dim
    d.layout.tokens_per_block = layout.tokens_per_block
    d.layout.dtype = kvblock.DTYPES[layout.dtype][0]
    d.layout.kind = kvblock.KINDS[layout.kind]
    d.parent[:] = list(parent)
    tok = (ctypes.c_uint32 * len(tokens))(*tokens)
    d.tokens = tok
    ex = b"" if extra is None else cbor2.dumps(tuple(extra), canonical=True)
    d.extra_cbor = ex if ex else None
    d.extra_len = len(ex)
    bufs = [ctypes.create_string_buffer(x, len(x)) for x in layers]
    arr = (ctypes.c_void_p * len(bufs))(*[ctypes.addressof(b) for b in bufs])
    cap = layout.file_bytes(len(ex))
    out = ctypes.create_string_buffer(cap)
    key = (ctypes.c_uint8 * 32)()
    rc = lib.kvfs_block_encode(ctypes.byref(d), arr, out, ctypes.c_size_t(cap), key)
    if rc:
        raise OSError(-rc, "kvfs_block_encode")
    return out.raw, bytes(key)


LAYOUTS = [
    # (layout, extra keys)
    (kvblock.Layout("llama-3.1-8b", 4, 8, 128, 16, "bf16", "kv"), None),
    (kvblock.Layout("deepseek-v3", 3, 1, 576, 16, "bf16", "mla"), None),
    (kvblock.Layout("qwen", 2, 2, 64, 16, "f16", "kv"), ["lora-a", 7]),
    (kvblock.Layout("tiny-f32", 5, 1, 8, 3, "f32", "kv"), None),       # layer < 4 KiB: padded
    (kvblock.Layout("fp8", 8, 4, 32, 32, "fp8_e4m3", "kv"), ("salt",)),
    (kvblock.Layout("big-header", 2, 1, 4, 1100, "int8", "mla"), None),  # header > 4 KiB
]


class EncoderCrossCheck(MountTest):
    """kvblock.py and the C implementation read format.h the same way."""
    dram = "16M"

    def test_matches_c_encoder_byte_for_byte(self):
        # Always the plain build: a sanitized library cannot be loaded into an
        # uninstrumented Python, and the encoder's source is the same.
        so = os.path.join(ROOT, "build", "lib", "libkvfs.so")
        if not os.path.exists(so):
            self.skipTest("no %s (run make)" % so)
        lib = ctypes.CDLL(so)
        parent = kvblock.root(SEED)
        for n, (layout, extra) in enumerate(LAYOUTS):
            with self.subTest(layout=layout.model_id):
                t = toks(layout.tokens_per_block, n)
                blk = kvblock.encode(layout, parent, t, extra=extra, seed=n)
                layers = [kvblock.payload(layout, i, n) for i in range(layout.num_layers)]
                c_data, c_key = c_encode(lib, layout, parent, t, extra, layers)
                self.assertEqual(blk.key, c_key)
                self.assertEqual(len(blk.data), len(c_data))
                self.assertEqual(blk.data, c_data)
                self.assertEqual(len(blk.data), layout.file_bytes(
                    len(cbor2.dumps(tuple(extra), canonical=True)) if extra else 0))

    def test_key_chain_matches_committed_vectors(self):
        # tests/vectors/keys_vectors.h, case "plain_16": seed "0", tokens 0..49, 16 per block.
        with open(os.path.join(ROOT, "tests", "vectors", "keys_vectors.h")) as f:
            text = f.read()
        m = re.search(r'kv_chain_0_keys\[\] = \{\s*((?:"[0-9a-f]{64}",\s*)+)\}', text)
        self.assertIsNotNone(m)
        want = re.findall(r'"([0-9a-f]{64})"', m.group(1))
        got = [k.hex() for k in kvblock.chain(SEED, list(range(50)), 16)]
        self.assertEqual(got, want)
        roots = dict(re.findall(r'\{"([^"]*)", "([0-9a-f]{64})"\}', text))
        self.assertEqual(kvblock.root("42").hex(), roots["42"])

    def test_daemon_reports_python_key(self):
        """A block from Python, published with tmp+rename: the daemon's xattrs
        (its own parse of the header) give the key Python computed."""
        m = self.m
        os.makedirs(m.path("ns"))
        layout = kvblock.Layout("llama-3.1-8b", 2, 8, 128, 16, "bf16", "kv")
        parent = kvblock.root(SEED)
        keys = []
        for i in range(3):
            blk = kvblock.encode(layout, parent, toks(16, i), seed=i)
            final = m.path("ns", blk.hex)
            write_closed(final + ".tmp", blk.data)
            os.rename(final + ".tmp", final)
            self.assertEqual(os.getxattr(final, XATTR_KEY).decode(), blk.hex)
            self.assertEqual(os.getxattr(final, XATTR_PARENT).decode(), parent.hex())
            self.assertEqual(os.getxattr(final, XATTR_TOKENS).decode(), "16")
            self.assertEqual(os.getxattr(final, "user.kvfs.tier").decode(), "dram")
            self.assertEqual(os.listxattr(final), [])  # read by name, never listed
            keys.append(blk.key)
            parent = blk.key
        # The chain Python built is the vLLM chain of the concatenated tokens.
        self.assertEqual(keys, kvblock.chain(SEED, toks(16, 0) + toks(16, 1) + toks(16, 2), 16))
        self.assertEqual(m.stats()["native"]["valid"], 3)


class Native(MountTest):
    dram = "32M"

    def publish(self, blk, name=None, d="ns"):
        os.makedirs(self.m.path(d), exist_ok=True)
        final = self.m.path(d, name or blk.hex)
        write_closed(final + ".tmp", blk.data)
        os.rename(final + ".tmp", final)
        return final

    def test_valid_blocks_accepted(self):
        parent = kvblock.root(SEED)
        paths = []
        for n, (layout, extra) in enumerate(LAYOUTS):
            blk = kvblock.encode(layout, parent, toks(layout.tokens_per_block, n), extra=extra,
                                 seed=n)
            before = self.m.stats()["native"]
            final = self.publish(blk, d=layout.model_id)
            after = self.m.stats()["native"]
            self.assertEqual(after["valid"], before["valid"] + 1, layout)
            self.assertEqual(after["invalid"], 0)
            self.assertEqual(os.getxattr(final, XATTR_KEY).decode(), blk.hex)
            self.assertEqual(os.getxattr(final, XATTR_TOKENS).decode(),
                             str(layout.tokens_per_block))
            paths.append((final, blk.data))
        for final, data in paths:
            self.assertEqual(os.stat(final).st_size, len(data))
            self.assertEqual(read_file(final), data)
            # A single layer read alone at its 4 KiB aligned offset.
            hb = kvblock.header_bytes(data)
            with open(final, "rb") as f:
                f.seek(hb)
                self.assertEqual(f.read(4096), data[hb:hb + 4096])

    def invalid_cases(self):
        layout = kvblock.Layout("llama", 3, 2, 64, 16, "bf16", "kv")
        parent = kvblock.root(SEED)
        good = kvblock.encode(layout, parent, toks(16), seed=1)
        hb = kvblock.header_bytes(good.data)
        cases = {}
        b = bytearray(good.data)
        b[hb + layout.layer_stride + 100] ^= 0x01  # layer 1's data
        cases["payload_flip"] = bytes(b)
        b = bytearray(good.data)
        b[kvblock.OFF_MODEL_ID + 1] ^= 0x20  # header byte, checksum left alone
        cases["header_flip"] = bytes(b)
        b = bytearray(good.data)
        b[kvblock.OFF_HEADER_CHECKSUM] ^= 0x80  # the checksum itself
        cases["checksum_flip"] = bytes(b)
        cases["truncated_layer"] = good.data[:-4096]
        cases["truncated_byte"] = good.data[:-1]
        cases["header_only"] = good.data[:hb]
        cases["magic_only"] = kvblock.MAGIC
        cases["extra_byte"] = good.data + b"\0"
        cases["wrong_key"] = kvblock.with_tokens(good, toks(16, 99))
        mla = kvblock.Layout("deepseek", 2, 1, 64, 16, "bf16", "mla")
        cases["mla_kv_heads_2"] = kvblock.encode(mla, parent, toks(16), seed=2,
                                                 num_kv_heads_field=2).data
        small = kvblock.Layout("small", 1, 1, 8, 16, "bf16", "mla")  # 256 data bytes per layer
        sb = kvblock.encode(small, parent, toks(16), seed=3)
        b = bytearray(sb.data)
        b[kvblock.header_bytes(b) + small.layer_bytes + 5] = 1  # layer padding not zero
        cases["padding_not_zero"] = bytes(b)
        b = bytearray(good.data)
        b[kvblock.OFF_RESERVED + 3] = 1  # reserved bytes, checksum recomputed
        cases["reserved_set"] = bytes(kvblock.set_header_checksum(b))
        return good, cases

    def test_invalid_blocks_refused(self):
        m = self.m
        os.makedirs(m.path("ns"))
        good, cases = self.invalid_cases()
        for n, (name, data) in enumerate(sorted(cases.items())):
            with self.subTest(case=name):
                tmp = m.path("ns", "blk%d.tmp" % n)
                final = m.path("ns", "blk%d" % n)
                before = m.stats()["native"]["invalid"]
                write_closed(tmp, data)
                self.assertEqual(errno_of(os.rename, tmp, final), errno.EBADMSG)
                self.assertFalse(os.path.exists(final))
                self.assertNotIn("blk%d" % n, os.listdir(m.path("ns")))
                self.assertEqual(errno_of(open, tmp, "rb"), errno.EBADMSG)
                self.assertEqual(m.stats()["native"]["invalid"], before + 1)
                # Nothing about the refused block is published.
                self.assertEqual(errno_of(os.getxattr, tmp, XATTR_KEY), errno.ENODATA)
                # Also not under its own key's name.
                self.assertEqual(errno_of(os.rename, tmp, m.path("ns", good.hex)),
                                 errno.EBADMSG)
                os.unlink(tmp)
                self.assertFalse(os.path.exists(tmp))
        st = m.stats()
        self.assertEqual(st["native"]["valid"], 0)
        self.assertEqual(st["native"]["invalid"], len(cases))
        self.assertEqual(st["files"], 0)
        # The valid original is still accepted afterwards.
        final = self.publish(good)
        self.assertEqual(read_file(final), good.data)
        self.assertEqual(m.stats()["native"]["valid"], 1)

    def test_rename_right_after_close_sees_the_validation(self):
        """close() then rename() at once, as every engine does: the rename must
        wait for the seal and its validation, whichever moment the release
        reaches the daemon (before it, or while the block is being validated),
        and the counters must already include the block when rename returns."""
        m = self.m
        os.makedirs(m.path("ns"))
        layout = kvblock.Layout("llama", 16, 8, 128, 16, "bf16", "kv")  # 2 MiB blocks
        parent = kvblock.root(SEED)
        for i in range(12):
            good = kvblock.encode(layout, parent, toks(16, i), seed=i)
            bad = bytearray(good.data)
            bad[-4096 - 1] ^= 0xff  # last layer's data
            tmp = m.path("ns", "bad%d.tmp" % i)
            write_closed(tmp, bytes(bad))
            self.assertEqual(errno_of(os.rename, tmp, m.path("ns", "bad%d" % i)), errno.EBADMSG,
                             "invalid block %d published" % i)
            self.assertEqual(m.stats()["native"]["invalid"], i + 1)
            self.assertEqual(errno_of(open, tmp, "rb"), errno.EBADMSG)
            os.unlink(tmp)
            final = m.path("ns", good.hex)
            write_closed(final + ".tmp", good.data)
            self.assertEqual(errno_of(os.rename, final + ".tmp", m.path("ns", "f" * 64)),
                             errno.EBADMSG, "valid block %d published under a wrong key" % i)
            os.rename(final + ".tmp", final)
            self.assertEqual(m.stats()["native"]["valid"], i + 1)
            self.assertEqual(os.getxattr(final, XATTR_KEY).decode(), good.hex)
            os.unlink(final)
        self.assertEqual(os.listdir(m.path("ns")), [])

    def test_names_of_64_hex_digits(self):
        m = self.m
        layout = kvblock.Layout("llama", 2, 2, 64, 16, "bf16", "kv")
        blk = kvblock.encode(layout, kvblock.root(SEED), toks(16), seed=5)
        other = kvblock.encode(layout, kvblock.root(SEED), toks(16, 1), seed=5)
        os.makedirs(m.path("ns"))
        tmp = m.path("ns", "b.tmp")
        write_closed(tmp, blk.data)
        for wrong in (other.hex, "0" * 64, blk.hex[:-1] + ("0" if blk.hex[-1] != "0" else "1")):
            with self.subTest(name=wrong):
                self.assertEqual(errno_of(os.rename, tmp, m.path("ns", wrong)), errno.EBADMSG)
                self.assertFalse(os.path.exists(m.path("ns", wrong)))
        self.assertEqual(read_file(tmp), blk.data)  # refused rename left it in place
        # Non-hex names, and 64 characters that are not all hex, are free.
        for free in ("block.bin", blk.hex + ".bin", "g" * 64, blk.hex[:63]):
            with self.subTest(name=free):
                os.rename(tmp, m.path("ns", free))
                tmp = m.path("ns", free)
                self.assertEqual(os.getxattr(tmp, XATTR_KEY).decode(), blk.hex)
        # Its own key, in lower and in upper case.
        os.rename(tmp, m.path("ns", blk.hex.upper()))
        os.rename(m.path("ns", blk.hex.upper()), m.path("ns", blk.hex))
        self.assertEqual(read_file(m.path("ns", blk.hex)), blk.data)
        self.assertEqual(os.listdir(m.path("ns")), [blk.hex])
        self.assertEqual(m.stats()["native"], {"valid": 1, "invalid": 0})

    def test_invalid_written_at_final_name(self):
        m = self.m
        os.makedirs(m.path("ns"))
        good, cases = self.invalid_cases()
        for n, name in enumerate(("payload_flip", "wrong_key", "truncated_layer")):
            with self.subTest(case=name):
                final = m.path("ns", "direct%d" % n)
                write_closed(final, cases[name])
                self.assertTrue(os.path.exists(final))  # the name is there...
                self.assertEqual(errno_of(open, final, "rb"), errno.EBADMSG)  # ...unreadable
                self.assertEqual(errno_of(open, final, "r+b"), errno.EBADMSG)
                self.assertEqual(errno_of(os.rename, final, final + ".x"), errno.EBADMSG)
                os.unlink(final)
        self.assertEqual(m.stats()["native"]["invalid"], 3)
        # A valid block written directly at its final name is fine.
        final = m.path("ns", good.hex)
        write_closed(final, good.data)
        self.assertEqual(read_file(final), good.data)
        self.assertEqual(os.getxattr(final, XATTR_KEY).decode(), good.hex)

    def test_other_bytes_are_opaque(self):
        m = self.m
        layout = kvblock.Layout("llama", 2, 2, 64, 16, "bf16", "kv")
        good = kvblock.encode(layout, kvblock.root(SEED), toks(16), seed=7)
        opaque = {
            "kvfsblk_lower": b"kvfsblk\0" + good.data[8:],
            "no_nul": b"KVFSBLKX" + good.data[8:],
            "short_magic": b"KVFSBLK",  # 7 bytes: cannot hold the magic
            "shifted": b"\0" + good.data,
            "random": os.urandom(12345),
            "empty": b"",
        }
        for name, data in opaque.items():
            with self.subTest(case=name):
                path = m.path(name)
                write_closed(path + ".tmp", data)
                os.rename(path + ".tmp", path)
                self.assertEqual(read_file(path), data)
                self.assertEqual(errno_of(os.getxattr, path, XATTR_KEY), errno.ENODATA)
                self.assertNotIn(XATTR_KEY, os.listxattr(path))
        # An opaque file may carry a 64-hex-digit name: no key to disagree with.
        os.rename(m.path("no_nul"), m.path(good.hex))
        self.assertEqual(read_file(m.path(good.hex)), opaque["no_nul"])
        self.assertEqual(m.stats()["native"], {"valid": 0, "invalid": 0})
