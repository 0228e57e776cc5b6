/*
 * core/keys.c — prompt-hash block keys, byte for byte as vLLM computes them
 * (DESIGN §3, include/kvfs/keys.h).
 *
 * What vLLM does (checked against vllm-project/vllm):
 *
 *  - vllm/utils/hashing.py @ ac621345a4eb (older releases: vllm/utils/__init__.py):
 *    sha256_cbor(x) = hashlib.sha256(cbor2.dumps(x, canonical=True)).digest().
 *    cbor2 encodes tuples and lists alike as definite-length arrays, ints in
 *    their shortest head (major type 0, or 1 for negatives), str as a text
 *    string, bytes as a byte string, None as null (0xf6).
 *  - vllm/v1/core/kv_cache_utils.py @ 001cabc1be16:
 *    init_none_hash(): NONE_HASH = hash_fn(os.getenv("PYTHONHASHSEED")), or
 *    os.urandom(32) when the variable is unset (never shareable).
 *    hash_block_tokens(): hash_fn((parent or NONE_HASH, tuple(tokens), extra)).
 *    get_request_block_hasher(): full blocks only; parent of block i is i-1.
 *    generate_block_hash_extra_keys(): extra = lora + mm + cache_salt +
 *    prompt_embeds, as a tuple, or None when that list is empty; the salt is
 *    added only when start_token_idx == 0 and the salt is truthy (so an empty
 *    salt string counts as no salt).
 *  - LoRA: current vLLM adds [lora_request.lora_name] (a text string), since
 *    PR #27211 "[Prefix Cache] Use LoRA name for consistent KV-cache block
 *    hashing" (merged 2025-10). Earlier V1 releases added
 *    [lora_request.lora_int_id] (an integer); hence kvfs_extra_item takes both.
 *  - Multimodal keys vary per block: current vLLM appends one
 *    (identifier, offset_in_block) pair per overlapping mm item (PR #36708,
 *    2026-03); earlier releases appended the bare mm hash string. Prompt
 *    embeds append a 32-byte sha256 (bytes). Neither fits the "same items on
 *    every block" shape of struct kvfs_key_extra: an engine with such keys
 *    encodes each block's array itself and calls kvfs_key_block().
 *
 * How: the CBOR of a block, (parent, tokens, extra), is produced with
 * libcbor's allocation-free head encoders into a stack buffer that is fed to
 * SHA-256 whenever it fills; a 256-token block (at most 5 bytes a token)
 * fits whole, so it is one digest update. Nothing here allocates except
 * OpenSSL: an EVP_MD_CTX per call (one per chain) and, in OpenSSL 3.0, the
 * provider's digest state on every EVP_DigestInit_ex2(). The SHA-256
 * method is fetched once, so no call takes OpenSSL's implicit-fetch lock.
 * An @extra_cbor blob from a caller is checked with libcbor's streaming
 * decoder (no allocation either) to be exactly one definite-length array.
 * No state is shared between calls but the fetched method; all functions are
 * thread safe.
 */
#include "kvfs/keys.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

#include <cbor/callbacks.h>
#include <cbor/encoding.h>
#include <cbor/streaming.h>
#include <openssl/evp.h>

/* Bytes of CBOR buffered before each digest update. */
#define KEY_CBOR_BUF 2048
/* Deepest container nesting accepted in caller-supplied extra keys. */
#define KEY_EXTRA_DEPTH 32

/* --- SHA-256 ---------------------------------------------------------------- */

static pthread_once_t key_md_once = PTHREAD_ONCE_INIT;
static EVP_MD *key_md;

static void key_md_fetch(void)
{
	key_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

/* @return a fresh digest context, or NULL (OpenSSL is out of memory). */
static EVP_MD_CTX *key_ctx_new(void)
{
	pthread_once(&key_md_once, key_md_fetch);
	if (!key_md)
		return NULL;
	return EVP_MD_CTX_new();
}

/* --- CBOR writer: into a fixed buffer, or through a buffer into SHA-256 ------ */

struct cw {
	EVP_MD_CTX *md; /* NULL: fixed buffer, running out of room is -ENOSPC */
	uint8_t *buf;
	size_t cap;
	size_t len;
	int err;
};

enum cw_major { CW_UINT, CW_NEGINT, CW_BSTR, CW_TSTR, CW_ARRAY, CW_NULL };

static void cw_flush(struct cw *w)
{
	if (w->err || !w->md || !w->len)
		return;
	if (EVP_DigestUpdate(w->md, w->buf, w->len) != 1)
		w->err = -EIO;
	w->len = 0;
}

/* Write one CBOR head (or null) in its shortest form, as canonical CBOR asks. */
static void cw_head(struct cw *w, enum cw_major major, uint64_t v)
{
	for (;;) {
		unsigned char *p = w->buf + w->len;
		size_t room = w->cap - w->len;
		size_t n = 0;

		if (w->err)
			return;
		switch (major) {
		case CW_UINT:
			n = cbor_encode_uint(v, p, room);
			break;
		case CW_NEGINT:
			n = cbor_encode_negint(v, p, room);
			break;
		case CW_BSTR:
			n = cbor_encode_bytestring_start((size_t)v, p, room);
			break;
		case CW_TSTR:
			n = cbor_encode_string_start((size_t)v, p, room);
			break;
		case CW_ARRAY:
			n = cbor_encode_array_start((size_t)v, p, room);
			break;
		case CW_NULL:
			n = cbor_encode_null(p, room);
			break;
		}
		if (n) {
			w->len += n;
			return;
		}
		if (!w->md || !w->len) {
			w->err = -ENOSPC;
			return;
		}
		cw_flush(w);
	}
}

static void cw_put(struct cw *w, const void *data, size_t n)
{
	if (w->err)
		return;
	if (w->cap - w->len < n) {
		if (!w->md) {
			w->err = -ENOSPC;
			return;
		}
		cw_flush(w);
		if (!w->err && n > w->cap) {
			if (EVP_DigestUpdate(w->md, data, n) != 1)
				w->err = -EIO;
			return;
		}
		if (w->err)
			return;
	}
	memcpy(w->buf + w->len, data, n);
	w->len += n;
}

/* --- extra keys ------------------------------------------------------------- */

static int extra_has_salt(const struct kvfs_key_extra *x, size_t block_index)
{
	/* vLLM: `if start_token_idx == 0 and request.cache_salt` — "" is no salt. */
	return block_index == 0 && x->cache_salt && x->cache_salt[0];
}

static size_t extra_count(const struct kvfs_key_extra *x, size_t block_index)
{
	if (!x)
		return 0;
	return x->nitems + (size_t)extra_has_salt(x, block_index);
}

static int extra_check(const struct kvfs_key_extra *x)
{
	size_t i;

	if (!x)
		return 0;
	if (x->nitems && !x->items)
		return -EINVAL;
	for (i = 0; i < x->nitems; i++)
		if (x->items[i].is_str && !x->items[i].s)
			return -EINVAL;
	return 0;
}

static void cw_text(struct cw *w, const char *s)
{
	size_t n = strlen(s);

	cw_head(w, CW_TSTR, n);
	cw_put(w, s, n);
}

/* The extra-keys item of a block: its array, or null when it is empty. */
static void cw_extra(struct cw *w, const struct kvfs_key_extra *x, size_t block_index)
{
	size_t n = extra_count(x, block_index);
	size_t i;

	if (!n) {
		cw_head(w, CW_NULL, 0);
		return;
	}
	cw_head(w, CW_ARRAY, n);
	for (i = 0; i < x->nitems; i++) {
		const struct kvfs_extra_item *it = &x->items[i];

		if (it->is_str)
			cw_text(w, it->s);
		else if (it->i >= 0)
			cw_head(w, CW_UINT, (uint64_t)it->i);
		else /* CBOR negative n encodes -1 - n */
			cw_head(w, CW_NEGINT, ~(uint64_t)it->i);
	}
	if (extra_has_salt(x, block_index))
		cw_text(w, x->cache_salt);
}

long kvfs_key_extra_encode(const struct kvfs_key_extra *extra, size_t block_index, uint8_t *buf,
			   size_t cap)
{
	struct cw w = {.buf = buf, .cap = cap};
	int rc;

	rc = extra_check(extra);
	if (rc)
		return rc;
	if (!extra_count(extra, block_index))
		return 0;
	if (!buf)
		return -ENOSPC;
	cw_extra(&w, extra, block_index);
	if (w.err)
		return w.err;
	return (long)w.len;
}

/*
 * Check that @p is exactly one well-formed CBOR array. Indefinite lengths are
 * refused: canonical CBOR (RFC 8949 §4.2.1, cbor2's canonical=True) never
 * uses them, so such bytes cannot come from a vLLM key.
 */
struct xv {
	uint64_t left[KEY_EXTRA_DEPTH]; /* items each open container still owes */
	int depth;
	int started;
	int done; /* the top-level array is complete */
	int bad;
};

static void xv_item(struct xv *v)
{
	if (!v->started) {
		v->bad = 1; /* the top-level item is not an array */
		return;
	}
	while (v->depth > 0) {
		if (--v->left[v->depth - 1] > 0)
			return;
		v->depth--;
	}
	v->done = 1;
}

static void xv_container(struct xv *v, uint64_t items, int is_array)
{
	if (!v->started) {
		v->started = 1;
		if (!is_array) {
			v->bad = 1;
			return;
		}
	}
	if (items == 0) {
		xv_item(v);
		return;
	}
	if (v->depth == KEY_EXTRA_DEPTH) {
		v->bad = 1;
		return;
	}
	v->left[v->depth++] = items;
}

static void xv_u8(void *c, uint8_t x)
{
	xv_item(c);
}

static void xv_u16(void *c, uint16_t x)
{
	xv_item(c);
}

static void xv_u32(void *c, uint32_t x)
{
	xv_item(c);
}

static void xv_u64(void *c, uint64_t x)
{
	xv_item(c);
}

static void xv_str(void *c, cbor_data d, size_t n)
{
	xv_item(c);
}

static void xv_simple(void *c)
{
	xv_item(c);
}

static void xv_f4(void *c, float x)
{
	xv_item(c);
}

static void xv_f8(void *c, double x)
{
	xv_item(c);
}

static void xv_bool(void *c, bool x)
{
	xv_item(c);
}

static void xv_indef(void *c)
{
	((struct xv *)c)->bad = 1;
}

static void xv_array(void *c, size_t n)
{
	xv_container(c, n, 1);
}

static void xv_map(void *c, size_t n)
{
	struct xv *v = c;

	if ((uint64_t)n > UINT64_MAX / 2) {
		v->bad = 1;
		return;
	}
	xv_container(v, 2 * (uint64_t)n, 0);
}

static void xv_tag(void *c, uint64_t tag)
{
	struct xv *v = c;

	/* The tagged item that follows completes the slot; a top-level tag is not an array. */
	if (!v->started)
		v->bad = 1;
}

static const struct cbor_callbacks xv_callbacks = {
	.uint8 = xv_u8,
	.uint16 = xv_u16,
	.uint32 = xv_u32,
	.uint64 = xv_u64,
	.negint8 = xv_u8,
	.negint16 = xv_u16,
	.negint32 = xv_u32,
	.negint64 = xv_u64,
	.byte_string = xv_str,
	.byte_string_start = xv_indef,
	.string = xv_str,
	.string_start = xv_indef,
	.array_start = xv_array,
	.indef_array_start = xv_indef,
	.map_start = xv_map,
	.indef_map_start = xv_indef,
	.tag = xv_tag,
	.float2 = xv_f4,
	.float4 = xv_f4,
	.float8 = xv_f8,
	.undefined = xv_simple,
	.null = xv_simple,
	.boolean = xv_bool,
	.indef_break = xv_indef,
};

static int extra_cbor_check(const uint8_t *p, size_t len)
{
	struct xv v = {0};
	size_t off = 0;

	while (off < len && !v.bad && !v.done) {
		struct cbor_decoder_result r =
			cbor_stream_decode(p + off, len - off, &xv_callbacks, &v);

		if (r.status != CBOR_DECODER_FINISHED || r.read == 0)
			return -EINVAL; /* truncated or malformed */
		off += r.read;
	}
	if (v.bad || !v.done || off != len)
		return -EINVAL; /* not an array, or bytes after it */
	return 0;
}

/* --- keys ------------------------------------------------------------------- */

/*
 * sha256_cbor((parent, tokens, extra)) with a ready context. The extra item
 * is @extra_cbor if @extra_len > 0, else built from @x (NULL: null).
 */
static int key_hash_block(EVP_MD_CTX *md, const kvfs_key *parent, const uint32_t *tokens,
			  size_t ntokens, const uint8_t *extra_cbor, size_t extra_len,
			  const struct kvfs_key_extra *x, size_t block_index, kvfs_key *out)
{
	uint8_t buf[KEY_CBOR_BUF];
	struct cw w = {.md = md, .buf = buf, .cap = sizeof(buf)};
	unsigned int dlen = 0;
	size_t i;

	if (EVP_DigestInit_ex2(md, key_md, NULL) != 1)
		return -ENOMEM;
	cw_head(&w, CW_ARRAY, 3);
	cw_head(&w, CW_BSTR, KVFS_KEY_BYTES);
	cw_put(&w, parent->b, KVFS_KEY_BYTES);
	cw_head(&w, CW_ARRAY, ntokens);
	for (i = 0; i < ntokens; i++)
		cw_head(&w, CW_UINT, tokens[i]);
	if (extra_len)
		cw_put(&w, extra_cbor, extra_len);
	else
		cw_extra(&w, x, block_index);
	cw_flush(&w);
	if (w.err)
		return w.err;
	if (EVP_DigestFinal_ex(md, out->b, &dlen) != 1 || dlen != KVFS_KEY_BYTES)
		return -EIO;
	return 0;
}

int kvfs_key_root(const char *seed, kvfs_key *out)
{
	uint8_t buf[KEY_CBOR_BUF];
	struct cw w = {.buf = buf, .cap = sizeof(buf)};
	EVP_MD_CTX *md;
	unsigned int dlen = 0;
	int rc;

	if (!seed || !out)
		return -EINVAL;
	md = key_ctx_new();
	if (!md)
		return -ENOMEM;
	w.md = md;
	rc = -ENOMEM;
	if (EVP_DigestInit_ex2(md, key_md, NULL) != 1)
		goto out_free;
	cw_text(&w, seed);
	cw_flush(&w);
	rc = w.err;
	if (rc)
		goto out_free;
	rc = 0;
	if (EVP_DigestFinal_ex(md, out->b, &dlen) != 1 || dlen != KVFS_KEY_BYTES)
		rc = -EIO;
out_free:
	EVP_MD_CTX_free(md);
	return rc;
}

int kvfs_key_block(const kvfs_key *parent, const uint32_t *tokens, size_t ntokens,
		   const uint8_t *extra_cbor, size_t extra_len, kvfs_key *out)
{
	EVP_MD_CTX *md;
	int rc;

	if (!parent || !out || !tokens || ntokens == 0)
		return -EINVAL;
	if (extra_len) {
		if (!extra_cbor)
			return -EINVAL;
		rc = extra_cbor_check(extra_cbor, extra_len);
		if (rc)
			return rc;
	}
	md = key_ctx_new();
	if (!md)
		return -ENOMEM;
	rc = key_hash_block(md, parent, tokens, ntokens, extra_cbor, extra_len, NULL, 0, out);
	EVP_MD_CTX_free(md);
	return rc;
}

long kvfs_key_chain(const kvfs_key *parent, size_t first_index, const uint32_t *tokens,
		    size_t ntokens, size_t block_tokens, const struct kvfs_key_extra *extra,
		    kvfs_key *out, size_t max_out)
{
	kvfs_key prev;
	EVP_MD_CTX *md;
	size_t nblocks, i;
	int rc;

	if (!parent || block_tokens == 0 || (ntokens && !tokens) || (max_out && !out))
		return -EINVAL;
	rc = extra_check(extra);
	if (rc)
		return rc;
	nblocks = ntokens / block_tokens;
	if (nblocks > max_out)
		nblocks = max_out;
	if (!nblocks)
		return 0;
	md = key_ctx_new();
	if (!md)
		return -ENOMEM;
	prev = *parent; /* @out may overlap @parent */
	for (i = 0; i < nblocks; i++) {
		rc = key_hash_block(md, &prev, tokens + i * block_tokens, block_tokens, NULL, 0,
				    extra, first_index + i, &out[i]);
		if (rc)
			goto out_free;
		prev = out[i];
	}
out_free:
	EVP_MD_CTX_free(md);
	return rc ? rc : (long)nblocks;
}

/* --- hex -------------------------------------------------------------------- */

void kvfs_key_to_hex(const kvfs_key *key, char hex[KVFS_KEY_HEX + 1])
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < KVFS_KEY_BYTES; i++) {
		hex[2 * i] = digits[key->b[i] >> 4];
		hex[2 * i + 1] = digits[key->b[i] & 15];
	}
	hex[KVFS_KEY_HEX] = '\0';
}

static int hex_nibble(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int kvfs_key_from_hex(const char *hex, kvfs_key *key)
{
	kvfs_key k;
	size_t i;

	if (!hex || !key)
		return -EINVAL;
	for (i = 0; i < KVFS_KEY_BYTES; i++) {
		int hi = hex_nibble(hex[2 * i]);
		int lo = hi < 0 ? -1 : hex_nibble(hex[2 * i + 1]);

		if (lo < 0)
			return -EINVAL;
		k.b[i] = (uint8_t)(hi << 4 | lo);
	}
	if (hex[KVFS_KEY_HEX] != '\0')
		return -EINVAL;
	*key = k;
	return 0;
}
