"""An independent Python encoder of the kvfs native block format.

Written from the specification in include/kvfs/format.h (DESIGN §4), not from
core/format.c, so that the tests can check the C implementation against a
second reading of the spec. Keys are vLLM's reproducible block hash
(include/kvfs/keys.h, tests/vectors/gen_keys.py):

    sha256_cbor(x) = sha256(cbor2.dumps(x, canonical=True))
    root           = sha256_cbor(seed)                       seed: str
    key            = sha256_cbor((parent, tuple(tokens), extra))

Checksums are XXH3-64, computed by libxxhash.so.0 through ctypes (Python has
no xxhash module here). Needs /usr/bin/python3 (cbor2).

    blk = encode(Layout("llama", 4, 8, 128, 16, "bf16", "kv"), parent, tokens)
    blk.data, blk.key, blk.hex
"""
import ctypes
import hashlib
import random
import struct
from dataclasses import dataclass

import cbor2

MAGIC = b"KVFSBLK\0"
VERSION = 1
ALIGN = 4096
FIXED = 256
MODEL_ID_BYTES = 64

# enum kvfs_dtype: name -> (value, element bytes)
DTYPES = {
    "f32": (1, 4),
    "f16": (2, 2),
    "bf16": (3, 2),
    "fp8_e4m3": (4, 1),
    "fp8_e5m2": (5, 1),
    "int8": (6, 1),
    "uint8": (7, 1),
}
KINDS = {"kv": 1, "mla": 2}

# Offsets of the fixed header fields (format.h).
OFF_VERSION = 8
OFF_FLAGS = 10
OFF_HEADER_BYTES = 12
OFF_FILE_BYTES = 16
OFF_MODEL_ID = 24
OFF_NUM_LAYERS = 88
OFF_NUM_KV_HEADS = 92
OFF_HEAD_DIM = 96
OFF_TOKENS_PER_BLOCK = 100
OFF_DTYPE = 104
OFF_KIND = 106
OFF_NUM_TOKENS = 108
OFF_KEY = 112
OFF_PARENT = 144
OFF_LAYER_BYTES = 176
OFF_LAYER_STRIDE = 184
OFF_TOKENS_OFF = 192
OFF_EXTRA_OFF = 196
OFF_EXTRA_LEN = 200
OFF_LAYERS_OFF = 204
OFF_RESERVED = 208
OFF_HEADER_CHECKSUM = 248

_xxh = ctypes.CDLL("libxxhash.so.0")
_xxh.XXH3_64bits.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_xxh.XXH3_64bits.restype = ctypes.c_uint64


def xxh3_64(data):
    """XXH3-64 (seed 0) of a bytes-like object."""
    data = bytes(data)
    return _xxh.XXH3_64bits(data, len(data))


def sha256_cbor(x):
    return hashlib.sha256(cbor2.dumps(x, canonical=True)).digest()


def root(seed="0"):
    """vLLM's NONE_HASH for PYTHONHASHSEED=seed."""
    return sha256_cbor(seed)


def block_key(parent, tokens, extra=None):
    """Key of one full block: sha256_cbor((parent, tokens, extra))."""
    return sha256_cbor((bytes(parent), tuple(tokens), extra))


def chain(seed, tokens, block_tokens, extra=None):
    """Keys of every full block of @tokens, starting at the root of @seed."""
    parent, keys = root(seed), []
    for b in range(len(tokens) // block_tokens):
        parent = block_key(parent, tokens[b * block_tokens:(b + 1) * block_tokens], extra)
        keys.append(parent)
    return keys


def _align(x, a):
    return (x + a - 1) // a * a


@dataclass
class Layout:
    model_id: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    tokens_per_block: int
    dtype: str = "bf16"
    kind: str = "kv"

    @property
    def layer_bytes(self):
        n = DTYPES[self.dtype][1] * self.tokens_per_block * self.num_kv_heads * self.head_dim
        return 2 * n if self.kind == "kv" else n

    @property
    def layer_stride(self):
        return _align(self.layer_bytes, ALIGN)

    def geometry(self, extra_len):
        """(tokens_off, extra_off, layers_off, header_bytes) for @extra_len bytes of extras."""
        tokens_off = FIXED
        end = tokens_off + 4 * self.tokens_per_block
        extra_off = end if extra_len else 0
        layers_off = _align(end + extra_len, 8)
        header_bytes = _align(layers_off + 16 * self.num_layers, ALIGN)
        return tokens_off, extra_off, layers_off, header_bytes

    def file_bytes(self, extra_len=0):
        return self.geometry(extra_len)[3] + self.num_layers * self.layer_stride


@dataclass
class Block:
    data: bytes
    key: bytes
    parent: bytes
    tokens: tuple
    layout: Layout

    @property
    def hex(self):
        return self.key.hex()


def payload(layout, layer, seed):
    """Deterministic bytes for one layer's data."""
    return random.Random("%s/%d" % (seed, layer)).randbytes(layout.layer_bytes)


def encode(layout, parent, tokens, extra=None, layers=None, seed=0,
           num_kv_heads_field=None):
    """Encode a whole block. @layers: one bytes per layer (layer_bytes each),
    or None for deterministic payload derived from @seed. @extra: None or a
    list/tuple (the vLLM extra keys). @num_kv_heads_field overrides the header
    field only (to build deliberately invalid blocks)."""
    tokens = tuple(tokens)
    assert len(tokens) == layout.tokens_per_block
    extra_cbor = b"" if extra is None else cbor2.dumps(tuple(extra), canonical=True)
    key = block_key(parent, tokens, None if extra is None else tuple(extra))
    tokens_off, extra_off, layers_off, hb = layout.geometry(len(extra_cbor))
    stride = layout.layer_stride
    if layers is None:
        layers = [payload(layout, i, seed) for i in range(layout.num_layers)]
    assert len(layers) == layout.num_layers
    mid = layout.model_id.encode()
    assert len(mid) < MODEL_ID_BYTES

    h = bytearray(hb)
    h[0:8] = MAGIC
    struct.pack_into("<HHIQ", h, OFF_VERSION, VERSION, 0, hb,
                     hb + layout.num_layers * stride)
    h[OFF_MODEL_ID:OFF_MODEL_ID + len(mid)] = mid
    struct.pack_into("<IIIIHHI", h, OFF_NUM_LAYERS, layout.num_layers,
                     layout.num_kv_heads if num_kv_heads_field is None else num_kv_heads_field,
                     layout.head_dim, layout.tokens_per_block, DTYPES[layout.dtype][0],
                     KINDS[layout.kind], len(tokens))
    h[OFF_KEY:OFF_KEY + 32] = key
    h[OFF_PARENT:OFF_PARENT + 32] = bytes(parent)
    struct.pack_into("<QQIIII", h, OFF_LAYER_BYTES, layout.layer_bytes, stride, tokens_off,
                     extra_off, len(extra_cbor), layers_off)
    struct.pack_into("<%dI" % len(tokens), h, tokens_off, *tokens)
    if extra_cbor:
        h[extra_off:extra_off + len(extra_cbor)] = extra_cbor
    body = bytearray()
    for i, data in enumerate(layers):
        assert len(data) == layout.layer_bytes
        struct.pack_into("<QQ", h, layers_off + 16 * i, hb + i * stride, xxh3_64(data))
        body += data
        body += bytes(stride - len(data))
    set_header_checksum(h)
    return Block(bytes(h) + bytes(body), key, bytes(parent), tokens, layout)


def header_bytes(buf):
    return struct.unpack_from("<I", buf, OFF_HEADER_BYTES)[0]


def set_header_checksum(buf):
    """Recompute the header checksum of @buf (a bytearray) in place."""
    hb = header_bytes(buf)
    struct.pack_into("<Q", buf, OFF_HEADER_CHECKSUM, 0)
    struct.pack_into("<Q", buf, OFF_HEADER_CHECKSUM, xxh3_64(buf[:hb]))
    return buf


def with_tokens(blk, tokens):
    """@blk with its token ids replaced and the header checksum recomputed,
    but the key left as it was: a block whose key does not match."""
    buf = bytearray(blk.data)
    tokens_off = struct.unpack_from("<I", buf, OFF_TOKENS_OFF)[0]
    struct.pack_into("<%dI" % len(tokens), buf, tokens_off, *tokens)
    return bytes(set_header_checksum(buf))


def decode_header(buf):
    """The main header fields as a dict (for assertions)."""
    (version, flags, hb, fb) = struct.unpack_from("<HHIQ", buf, OFF_VERSION)
    (nl, kvh, hd, tpb, dt, kind, nt) = struct.unpack_from("<IIIIHHI", buf, OFF_NUM_LAYERS)
    return {
        "version": version, "flags": flags, "header_bytes": hb, "file_bytes": fb,
        "model_id": bytes(buf[OFF_MODEL_ID:OFF_MODEL_ID + 64]).rstrip(b"\0").decode(),
        "num_layers": nl, "num_kv_heads": kvh, "head_dim": hd, "tokens_per_block": tpb,
        "dtype": dt, "kind": kind, "num_tokens": nt,
        "key": bytes(buf[OFF_KEY:OFF_KEY + 32]), "parent": bytes(buf[OFF_PARENT:OFF_PARENT + 32]),
        "header_checksum": struct.unpack_from("<Q", buf, OFF_HEADER_CHECKSUM)[0],
    }
