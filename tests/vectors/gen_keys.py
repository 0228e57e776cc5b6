#!/usr/bin/python3
"""Known-answer vectors for core/keys.c, computed independently of it.

This is vLLM's reproducible block hash, restated with the same libraries vLLM
uses (cbor2 and hashlib), after vllm/utils/hashing.py (sha256_cbor) and
vllm/v1/core/kv_cache_utils.py (init_none_hash, hash_block_tokens,
generate_block_hash_extra_keys, get_request_block_hasher):

    sha256_cbor(x) = sha256(cbor2.dumps(x, canonical=True))
    root           = sha256_cbor(PYTHONHASHSEED)
    key[i]         = sha256_cbor((parent, tuple(tokens[i]), extra_i))
    extra_i        = tuple(items + ([salt] if i == 0 and salt else [])) or None

Usage (run with /usr/bin/python3, which has python3-cbor2):
    gen_keys.py > keys_vectors.h          the committed C header
    gen_keys.py --random SEED COUNT       random cases, one per line, for
                                          keys_test.c to compare at test time

Random-case line (tab-separated; strings are hex of their UTF-8 bytes, "-"
stands for none/empty):
    seed  block_tokens  first_index  parent|-  tokens  items  salt|-  keys
tokens and keys are comma-separated ("-" when empty); items are
comma-separated "i:<int>" or "s:<hex>".
"""

import hashlib
import random
import sys

import cbor2


def sha256_cbor(x):
    return hashlib.sha256(cbor2.dumps(x, canonical=True)).digest()


def root(seed):
    return sha256_cbor(seed)


def extra_keys(items, salt, block_index):
    keys = list(items)
    if block_index == 0 and salt:
        keys.append(salt)
    return tuple(keys) if keys else None


def chain(parent, first_index, tokens, block_tokens, items=(), salt=None):
    keys = []
    for b in range(len(tokens) // block_tokens):
        blk = tokens[b * block_tokens:(b + 1) * block_tokens]
        extra = extra_keys(items, salt, first_index + b)
        parent = sha256_cbor((parent, tuple(blk), extra))
        keys.append(parent)
    return keys


# --- the committed header ------------------------------------------------------

WIDTHS = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1]


def lcg_tokens(n, seed, limit=2**32):
    """Deterministic tokens that do not depend on Python's random module."""
    x = seed
    out = []
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append((x >> 16) % limit)
    return out


def c_str(s):
    if s is None:
        return "NULL"
    out = '"'
    for ch in s.encode("utf-8"):
        if 32 <= ch < 127 and ch not in (ord('"'), ord('\\'), ord('?')):
            out += chr(ch)
        else:
            out += "\\%03o" % ch
    return out + '"'


def c_item(it):
    if isinstance(it, str):
        return "{.is_str = 1, .s = %s}" % c_str(it)
    if it == -2**63:
        return "{.is_str = 0, .i = INT64_MIN}"
    return "{.is_str = 0, .i = %dLL}" % it


def chain_cases():
    r0 = root("0")
    long4 = lcg_tokens(64, 7)
    full4 = chain(r0, 0, long4, 16, ["lora-a"], "tenant")
    return [
        # name, seed, parent, first_index, block_tokens, tokens, items, salt
        ("plain_16", "0", None, 0, 16, list(range(50)), [], None),
        ("widths_1", "0", None, 0, 1, WIDTHS, [], None),
        ("widths_16", "42", None, 0, 16, (WIDTHS * 4)[::-1] + WIDTHS * 2, [], None),
        ("big_256", "0", None, 0, 256, lcg_tokens(512 + 100, 1), [], None),
        ("big_256_seed_empty", "", None, 0, 256, lcg_tokens(256, 2, 152064), [], None),
        ("lora_int", "0", None, 0, 16, list(range(100, 148)), [7], None),
        ("int_widths", "0", None, 0, 4, list(range(8)),
         [0, 23, 24, -1, -24, -25, -256, -257, 2**63 - 1, -2**63], None),
        ("lora_name_salt", "0", None, 0, 16, lcg_tokens(48, 3, 128256),
         ["adapter-1", "\u00e9\u65e5"], "tenant-42"),
        ("salt_only", "42", None, 0, 1, [1, 2, 3], [], "s"),
        ("salt_empty", "0", None, 0, 16, list(range(50)), [], ""),
        ("mixed_items", "0", None, 0, 3, [5, 6, 7, 8, 9, 10], [42, "x", ""], "salt"),
        ("extend_mid", None, full4[1], 2, 16, long4[32:], ["lora-a"], "tenant"),
        # Bigger than keys.c's 2 KiB CBOR buffer: several digest updates.
        ("huge_block", "0", None, 0, 1000, lcg_tokens(2000, 5), ["L" * 3000, 2**40], "S" * 2500),
        ("extend_mid_full", "0", None, 0, 16, long4, ["lora-a"], "tenant"),
    ]


def block_cases():
    r0 = root("0")
    # Raw extra keys in the newer vLLM shapes (multimodal pairs, prompt-embed
    # digests) that kvfs_key_block takes as caller-encoded CBOR.
    return [
        ("mm_pairs", r0, [9] * 16, (("mm-hash-a", 0), ("mm-hash-b", 12))),
        ("lora_mm_salt_embeds", r0, [1, 2, 3, 4],
         ("lora", ("img", 2), "salt", hashlib.sha256(b"e").digest())),
        ("empty_array", r0, [1], ()),
        ("nested_map", r0, [0, 65536], ([{"a": 1}, None, True, 1.5],)),
    ]


def header():
    w = sys.stdout.write
    try:
        from importlib.metadata import version
        cbor2_version = version("cbor2")
    except Exception:
        cbor2_version = "?"
    w("/* Generated by tests/vectors/gen_keys.py with cbor2 %s; do not edit. */\n"
      % cbor2_version)
    w("#ifndef KVFS_KEYS_VECTORS_H\n#define KVFS_KEYS_VECTORS_H\n\n")
    w("#include <stddef.h>\n#include <stdint.h>\n\n#include \"kvfs/keys.h\"\n\n")

    w("struct kv_root_vec {\n\tconst char *seed;\n\tconst char *key;\n};\n\n")
    w("static const struct kv_root_vec kv_root_vecs[] = {\n")
    for seed in ["0", "42", "", "1234567890", "\u00e9"]:
        w("\t{%s, \"%s\"},\n" % (c_str(seed), root(seed).hex()))
    w("};\n\n")

    w("struct kv_chain_vec {\n"
      "\tconst char *name;\n"
      "\tconst char *seed;   /* parent is the root of this seed... */\n"
      "\tconst char *parent; /* ...or this key when seed is NULL */\n"
      "\tsize_t first_index;\n"
      "\tsize_t block_tokens;\n"
      "\tsize_t ntokens;\n"
      "\tconst uint32_t *tokens;\n"
      "\tsize_t nitems;\n"
      "\tconst struct kvfs_extra_item *items;\n"
      "\tconst char *salt;\n"
      "\tsize_t nkeys;\n"
      "\tconst char *const *keys;\n"
      "\tconst char *const *extra; /* per block: hex of the extra CBOR, \"\" for null */\n"
      "};\n\n")
    cases = chain_cases()
    for n, (name, seed, parent, first, bt, toks, items, salt) in enumerate(cases):
        p = root(seed) if seed is not None else parent
        keys = chain(p, first, toks, bt, items, salt)
        w("static const uint32_t kv_chain_%d_tokens[] = {%s};\n"
          % (n, ", ".join("%du" % t for t in toks)))
        if items:
            w("static const struct kvfs_extra_item kv_chain_%d_items[] = {\n\t%s,\n};\n"
              % (n, ",\n\t".join(c_item(i) for i in items)))
        w("static const char *const kv_chain_%d_keys[] = {\n" % n)
        for k in keys:
            w("\t\"%s\",\n" % k.hex())
        w("};\n")
        w("static const char *const kv_chain_%d_extra[] = {\n" % n)
        for b in range(len(keys)):
            e = extra_keys(items, salt, first + b)
            w("\t\"%s\",\n" % (cbor2.dumps(e, canonical=True).hex() if e is not None else ""))
        w("};\n\n")
    w("static const struct kv_chain_vec kv_chain_vecs[] = {\n")
    for n, (name, seed, parent, first, bt, toks, items, salt) in enumerate(cases):
        p = root(seed) if seed is not None else parent
        nkeys = len(toks) // bt
        w("\t{\n\t\t.name = %s,\n" % c_str(name))
        w("\t\t.seed = %s,\n" % c_str(seed))
        w("\t\t.parent = %s,\n" % (c_str(p.hex()) if seed is None else "NULL"))
        w("\t\t.first_index = %d,\n\t\t.block_tokens = %d,\n" % (first, bt))
        w("\t\t.ntokens = %d,\n\t\t.tokens = kv_chain_%d_tokens,\n" % (len(toks), n))
        w("\t\t.nitems = %d,\n\t\t.items = %s,\n"
          % (len(items), "kv_chain_%d_items" % n if items else "NULL"))
        w("\t\t.salt = %s,\n" % c_str(salt))
        w("\t\t.nkeys = %d,\n\t\t.keys = kv_chain_%d_keys,\n" % (nkeys, n))
        w("\t\t.extra = kv_chain_%d_extra,\n\t},\n" % n)
    w("};\n\n")

    w("struct kv_block_vec {\n\tconst char *name;\n\tconst char *parent;\n"
      "\tsize_t ntokens;\n\tconst uint32_t *tokens;\n"
      "\tconst char *extra; /* hex of canonical CBOR */\n\tconst char *key;\n};\n\n")
    bcases = block_cases()
    for n, (name, parent, toks, extra) in enumerate(bcases):
        w("static const uint32_t kv_block_%d_tokens[] = {%s};\n"
          % (n, ", ".join("%du" % t for t in toks)))
    w("\nstatic const struct kv_block_vec kv_block_vecs[] = {\n")
    for n, (name, parent, toks, extra) in enumerate(bcases):
        key = sha256_cbor((parent, tuple(toks), extra))
        w("\t{%s, \"%s\", %d, kv_block_%d_tokens,\n\t \"%s\",\n\t \"%s\"},\n"
          % (c_str(name), parent.hex(), len(toks), n,
             cbor2.dumps(extra, canonical=True).hex(), key.hex()))
    w("};\n\n#endif\n")


# --- random cases --------------------------------------------------------------

def rand_token(rng):
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(WIDTHS)
    if pick < 0.6:
        return rng.randrange(0, 256)
    if pick < 0.9:
        return rng.randrange(0, 200000)
    return rng.randrange(0, 2**32)


def rand_str(rng):
    alphabet = "abcXYZ019 -_\t\u00e9\u00df\u65e5\u672c\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))


def rand_int(rng):
    return rng.choice([rng.randrange(-30, 30), rng.randrange(-2**63, 2**63),
                       rng.randrange(0, 2**16), -rng.randrange(0, 2**33)])


def random_cases(seed, count):
    rng = random.Random(seed)
    for _ in range(count):
        hseed = rng.choice(["0", "42", "", rand_str(rng)])
        bt = rng.choice([1, 2, 3, 16, 17, 64, 256])
        ntok = rng.randrange(0, bt * 4 + bt)
        toks = [rand_token(rng) for _ in range(ntok)]
        items = [rand_str(rng) if rng.random() < 0.5 else rand_int(rng)
                 for _ in range(rng.choice([0, 0, 1, 1, 2, 5]))]
        salt = rng.choice([None, None, "", rand_str(rng)])
        first = rng.choice([0, 0, 1, 2, 1000])
        parent = None if first == 0 else hashlib.sha256(rng.randbytes(8)).digest()
        p = parent if parent is not None else root(hseed)
        keys = chain(p, first, toks, bt, items, salt)
        hx = lambda s: s.encode("utf-8").hex() or "-"
        fields = [
            hx(hseed),
            str(bt),
            str(first),
            parent.hex() if parent is not None else "-",
            ",".join(str(t) for t in toks) or "-",
            ",".join(("s:" + (i.encode("utf-8").hex() or "-")) if isinstance(i, str)
                     else "i:%d" % i for i in items) or "-",
            hx(salt) if salt else "-",
            ",".join(k.hex() for k in keys) or "-",
        ]
        print("\t".join(fields))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--random":
        random_cases(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) == 1:
        header()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
