/*
 * core/format.c — encoder, parser and validator of the native block format
 * (DESIGN §4; the byte layout is specified in include/kvfs/format.h).
 *
 * The header is canonical: for a given layout and extra-keys length there is
 * exactly one place for everything (token ids at 256, the extra keys right
 * after them, the layer table at the next 8-byte boundary, header_bytes the
 * smallest 4096 multiple that holds it all, segment i at header_bytes +
 * i * layer_stride), and the parser accepts nothing else. A block that
 * passes kvfs_block_parse_header() therefore has every offset in bounds, its
 * sizes agree with each other and with the file, its header checksum holds,
 * and its key is the vLLM key of its parent, tokens and extra keys.
 * kvfs_block_validate() adds every layer checksum and zero padding.
 *
 * Nothing here keeps state; everything is thread safe. Only the validator
 * allocates (one bounded buffer for streaming layers).
 */
#include "kvfs/format.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

/* Field offsets of the fixed header (format.h). */
enum {
	OFF_MAGIC = 0,
	OFF_VERSION = 8,
	OFF_FLAGS = 10,
	OFF_HEADER_BYTES = 12,
	OFF_FILE_BYTES = 16,
	OFF_MODEL_ID = 24,
	OFF_NUM_LAYERS = 88,
	OFF_NUM_KV_HEADS = 92,
	OFF_HEAD_DIM = 96,
	OFF_TOKENS_PER_BLOCK = 100,
	OFF_DTYPE = 104,
	OFF_KIND = 106,
	OFF_NUM_TOKENS = 108,
	OFF_KEY = 112,
	OFF_PARENT = 144,
	OFF_LAYER_BYTES = 176,
	OFF_LAYER_STRIDE = 184,
	OFF_TOKENS_OFF = 192,
	OFF_EXTRA_OFF = 196,
	OFF_EXTRA_LEN = 200,
	OFF_LAYERS_OFF = 204,
	OFF_RESERVED = 208,
	RESERVED_BYTES = 40,
	OFF_HEADER_CHECKSUM = 248,
	LAYER_ENTRY_BYTES = 16,
};

/* Largest chunk the validator reads at once. */
#define VALIDATE_CHUNK (1u << 20)

static const char block_magic[KVFS_BLOCK_MAGIC_BYTES] = KVFS_BLOCK_MAGIC;

/* --- little-endian fields --------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v)
{
	v = htole16(v);
	memcpy(p, &v, sizeof(v));
}

static void put32(uint8_t *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, sizeof(v));
}

static void put64(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, sizeof(v));
}

static uint16_t get16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, sizeof(v));
	return le16toh(v);
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return le64toh(v);
}

static uint64_t align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static int all_zero(const uint8_t *p, size_t n)
{
	return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* --- dtypes, kinds, layouts ------------------------------------------------- */

static const struct {
	const char *name;
	size_t size;
} dtypes[] = {
	[KVFS_DTYPE_F32] = {"f32", 4},		 [KVFS_DTYPE_F16] = {"f16", 2},
	[KVFS_DTYPE_BF16] = {"bf16", 2},	 [KVFS_DTYPE_FP8_E4M3] = {"fp8_e4m3", 1},
	[KVFS_DTYPE_FP8_E5M2] = {"fp8_e5m2", 1}, [KVFS_DTYPE_INT8] = {"int8", 1},
	[KVFS_DTYPE_UINT8] = {"uint8", 1},
};

static const char *const kinds[] = {
	[KVFS_KIND_KV] = "kv",
	[KVFS_KIND_MLA] = "mla",
};

#define NDTYPES (sizeof(dtypes) / sizeof(dtypes[0]))
#define NKINDS	(sizeof(kinds) / sizeof(kinds[0]))

size_t kvfs_dtype_size(unsigned dtype)
{
	return dtype < NDTYPES ? dtypes[dtype].size : 0;
}

const char *kvfs_dtype_name(unsigned dtype)
{
	return dtype < NDTYPES && dtypes[dtype].name ? dtypes[dtype].name : "?";
}

int kvfs_dtype_parse(const char *name)
{
	unsigned i;

	for (i = 0; name && i < NDTYPES; i++)
		if (dtypes[i].name && strcmp(dtypes[i].name, name) == 0)
			return (int)i;
	return -EINVAL;
}

const char *kvfs_kind_name(unsigned kind)
{
	return kind < NKINDS && kinds[kind] ? kinds[kind] : "?";
}

int kvfs_kind_parse(const char *name)
{
	unsigned i;

	for (i = 0; name && i < NKINDS; i++)
		if (kinds[i] && strcmp(kinds[i], name) == 0)
			return (int)i;
	return -EINVAL;
}

/* Layer bytes and file bytes of @l, or -EINVAL if they overflow 64 bits. */
static int layout_sizes(const struct kvfs_layout *l, size_t extra_len, uint64_t *layer_bytes,
			uint64_t *file_bytes)
{
	uint64_t lb = kvfs_dtype_size(l->dtype), stride, fb;

	if (__builtin_mul_overflow(lb, (uint64_t)l->tokens_per_block, &lb) ||
	    __builtin_mul_overflow(lb, (uint64_t)l->num_kv_heads, &lb) ||
	    __builtin_mul_overflow(lb, (uint64_t)l->head_dim, &lb) ||
	    __builtin_mul_overflow(lb, (uint64_t)(l->kind == KVFS_KIND_KV ? 2 : 1), &lb) ||
	    lb > UINT64_MAX - KVFS_BLOCK_ALIGN)
		return -EINVAL;
	stride = align_up(lb, KVFS_BLOCK_ALIGN);
	if (__builtin_mul_overflow(stride, (uint64_t)l->num_layers, &fb) ||
	    __builtin_add_overflow(fb, (uint64_t)kvfs_layout_header_bytes(l, extra_len), &fb))
		return -EINVAL;
	*layer_bytes = lb;
	if (file_bytes)
		*file_bytes = fb;
	return 0;
}

int kvfs_layout_check(const struct kvfs_layout *l, const char **why)
{
	const char *w = NULL;
	uint64_t lb, fb;

	if (!l)
		w = "no layout";
	else if (!memchr(l->model_id, '\0', sizeof(l->model_id)))
		w = "model_id not NUL-terminated";
	else if (l->num_layers < 1 || l->num_layers > KVFS_BLOCK_MAX_LAYERS)
		w = "num_layers out of range";
	else if (l->num_kv_heads < 1)
		w = "num_kv_heads is 0";
	else if (l->head_dim < 1)
		w = "head_dim is 0";
	else if (l->tokens_per_block < 1 || l->tokens_per_block > KVFS_BLOCK_MAX_TOKENS)
		w = "tokens_per_block out of range";
	else if (!kvfs_dtype_size(l->dtype))
		w = "unknown dtype";
	else if (l->kind != KVFS_KIND_KV && l->kind != KVFS_KIND_MLA)
		w = "unknown kind";
	else if (l->kind == KVFS_KIND_MLA && l->num_kv_heads != 1)
		w = "MLA layout with num_kv_heads != 1";
	else if (layout_sizes(l, KVFS_BLOCK_MAX_EXTRA, &lb, &fb))
		w = "layout too large";
	if (!w)
		return 0;
	if (why)
		*why = w;
	return -EINVAL;
}

uint64_t kvfs_layout_layer_bytes(const struct kvfs_layout *l)
{
	uint64_t lb = (uint64_t)kvfs_dtype_size(l->dtype) * l->tokens_per_block * l->num_kv_heads *
		      l->head_dim;

	return l->kind == KVFS_KIND_KV ? 2 * lb : lb;
}

/* Offsets of the variable part of a header (format.h: after the fixed 256). */
struct hdr_geom {
	uint32_t tokens_off;
	uint32_t extra_off; /* 0 when there are no extra keys */
	uint32_t layers_off;
	uint32_t header_bytes;
};

static struct hdr_geom hdr_geom(uint32_t ntokens, uint32_t nlayers, size_t extra_len)
{
	struct hdr_geom g;
	uint64_t end = KVFS_BLOCK_FIXED_BYTES + 4 * (uint64_t)ntokens;

	g.tokens_off = KVFS_BLOCK_FIXED_BYTES;
	g.extra_off = extra_len ? (uint32_t)end : 0;
	end = align_up(end + extra_len, 8);
	g.layers_off = (uint32_t)end;
	end += (uint64_t)LAYER_ENTRY_BYTES * nlayers;
	g.header_bytes = (uint32_t)align_up(end, KVFS_BLOCK_ALIGN);
	return g;
}

uint32_t kvfs_layout_header_bytes(const struct kvfs_layout *l, size_t extra_len)
{
	return hdr_geom(l->tokens_per_block, l->num_layers, extra_len).header_bytes;
}

uint64_t kvfs_layout_file_bytes(const struct kvfs_layout *l, size_t extra_len)
{
	uint64_t stride = align_up(kvfs_layout_layer_bytes(l), KVFS_BLOCK_ALIGN);

	return kvfs_layout_header_bytes(l, extra_len) + stride * l->num_layers;
}

/* --- encoder ---------------------------------------------------------------- */

uint64_t kvfs_block_layer_checksum(const void *data, size_t len)
{
	return XXH3_64bits(data, len);
}

/* Checksum of a header whose checksum field is zero. */
static uint64_t hdr_checksum(const uint8_t *h, uint32_t header_bytes)
{
	static const uint8_t zero[8];
	XXH3_state_t st;

	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, h, OFF_HEADER_CHECKSUM);
	XXH3_64bits_update(&st, zero, sizeof(zero));
	XXH3_64bits_update(&st, h + OFF_HEADER_CHECKSUM + 8,
			   header_bytes - OFF_HEADER_CHECKSUM - 8);
	return XXH3_64bits_digest(&st);
}

/*
 * Write everything but the header checksum. Layer checksums come from
 * @checksums, or stay 0 for the caller to fill in when it is NULL.
 */
static int hdr_write(const struct kvfs_block_desc *d, const uint64_t *checksums, uint8_t *h,
		     size_t cap, kvfs_key *key)
{
	const struct kvfs_layout *l;
	struct hdr_geom g;
	uint64_t layer_bytes, stride, file_bytes;
	kvfs_key k;
	uint32_t i;
	int rc;

	if (!d || !h || !d->tokens)
		return -EINVAL;
	l = &d->layout;
	if (kvfs_layout_check(l, NULL))
		return -EINVAL;
	if (d->extra_len > KVFS_BLOCK_MAX_EXTRA ||
	    layout_sizes(l, d->extra_len, &layer_bytes, &file_bytes))
		return -EINVAL;
	g = hdr_geom(l->tokens_per_block, l->num_layers, d->extra_len);
	if (cap < g.header_bytes)
		return -ENOSPC;
	rc = kvfs_key_block(&d->parent, d->tokens, l->tokens_per_block, d->extra_cbor, d->extra_len,
			    &k);
	if (rc)
		return rc;
	stride = align_up(layer_bytes, KVFS_BLOCK_ALIGN);

	memset(h, 0, g.header_bytes);
	memcpy(h + OFF_MAGIC, block_magic, KVFS_BLOCK_MAGIC_BYTES);
	put16(h + OFF_VERSION, KVFS_BLOCK_VERSION);
	put32(h + OFF_HEADER_BYTES, g.header_bytes);
	put64(h + OFF_FILE_BYTES, file_bytes);
	memcpy(h + OFF_MODEL_ID, l->model_id, strlen(l->model_id));
	put32(h + OFF_NUM_LAYERS, l->num_layers);
	put32(h + OFF_NUM_KV_HEADS, l->num_kv_heads);
	put32(h + OFF_HEAD_DIM, l->head_dim);
	put32(h + OFF_TOKENS_PER_BLOCK, l->tokens_per_block);
	put16(h + OFF_DTYPE, l->dtype);
	put16(h + OFF_KIND, l->kind);
	put32(h + OFF_NUM_TOKENS, l->tokens_per_block);
	memcpy(h + OFF_KEY, k.b, KVFS_KEY_BYTES);
	memcpy(h + OFF_PARENT, d->parent.b, KVFS_KEY_BYTES);
	put64(h + OFF_LAYER_BYTES, layer_bytes);
	put64(h + OFF_LAYER_STRIDE, stride);
	put32(h + OFF_TOKENS_OFF, g.tokens_off);
	put32(h + OFF_EXTRA_OFF, g.extra_off);
	put32(h + OFF_EXTRA_LEN, (uint32_t)d->extra_len);
	put32(h + OFF_LAYERS_OFF, g.layers_off);
	for (i = 0; i < l->tokens_per_block; i++)
		put32(h + g.tokens_off + 4 * (size_t)i, d->tokens[i]);
	if (d->extra_len)
		memcpy(h + g.extra_off, d->extra_cbor, d->extra_len);
	for (i = 0; i < l->num_layers; i++) {
		uint8_t *e = h + g.layers_off + (size_t)LAYER_ENTRY_BYTES * i;

		put64(e, g.header_bytes + (uint64_t)i * stride);
		put64(e + 8, checksums ? checksums[i] : 0);
	}
	if (key)
		*key = k;
	return 0;
}

int kvfs_block_encode_header(const struct kvfs_block_desc *d, const uint64_t *checksums, void *hdr,
			     size_t cap, kvfs_key *key)
{
	uint8_t *h = hdr;
	int rc;

	if (!checksums)
		return -EINVAL;
	rc = hdr_write(d, checksums, h, cap, key);
	if (rc)
		return rc;
	put64(h + OFF_HEADER_CHECKSUM, hdr_checksum(h, get32(h + OFF_HEADER_BYTES)));
	return 0;
}

int kvfs_block_set_layer_checksums(void *hdr, size_t cap, const uint64_t *checksums, uint32_t n)
{
	uint8_t *h = hdr;
	uint32_t header_bytes, layers_off;

	if (!h || !checksums || cap < KVFS_BLOCK_FIXED_BYTES ||
	    memcmp(h + OFF_MAGIC, block_magic, KVFS_BLOCK_MAGIC_BYTES))
		return -EBADMSG;
	header_bytes = get32(h + OFF_HEADER_BYTES);
	layers_off = get32(h + OFF_LAYERS_OFF);
	if (header_bytes > cap || header_bytes % KVFS_BLOCK_ALIGN || !header_bytes ||
	    get32(h + OFF_NUM_LAYERS) != n || layers_off < KVFS_BLOCK_FIXED_BYTES ||
	    layers_off > header_bytes || (uint64_t)n * LAYER_ENTRY_BYTES > header_bytes - layers_off)
		return -EBADMSG;
	for (uint32_t i = 0; i < n; i++)
		put64(h + layers_off + (size_t)i * LAYER_ENTRY_BYTES + 8, checksums[i]);
	put64(h + OFF_HEADER_CHECKSUM, hdr_checksum(h, header_bytes));
	return 0;
}

int kvfs_block_encode(const struct kvfs_block_desc *d, const void *const *layers, void *buf,
		      size_t cap, kvfs_key *key)
{
	uint8_t *b = buf;
	uint64_t layer_bytes, stride, file_bytes;
	uint32_t header_bytes, layers_off, i;
	int rc;

	if (!d || !layers || !buf)
		return -EINVAL;
	if (kvfs_layout_check(&d->layout, NULL) || d->extra_len > KVFS_BLOCK_MAX_EXTRA)
		return -EINVAL;
	for (i = 0; i < d->layout.num_layers; i++)
		if (!layers[i])
			return -EINVAL;
	file_bytes = kvfs_layout_file_bytes(&d->layout, d->extra_len);
	if (cap < file_bytes)
		return -ENOSPC;
	rc = hdr_write(d, NULL, b, cap, key);
	if (rc)
		return rc;
	header_bytes = get32(b + OFF_HEADER_BYTES);
	layers_off = get32(b + OFF_LAYERS_OFF);
	layer_bytes = get64(b + OFF_LAYER_BYTES);
	stride = get64(b + OFF_LAYER_STRIDE);
	for (i = 0; i < d->layout.num_layers; i++) {
		uint8_t *seg = b + header_bytes + i * stride;

		memcpy(seg, layers[i], layer_bytes);
		memset(seg + layer_bytes, 0, stride - layer_bytes);
		put64(b + layers_off + (size_t)LAYER_ENTRY_BYTES * i + 8,
		      kvfs_block_layer_checksum(seg, layer_bytes));
	}
	put64(b + OFF_HEADER_CHECKSUM, hdr_checksum(b, header_bytes));
	return 0;
}

/* --- parser ----------------------------------------------------------------- */

int kvfs_block_is_native(const void *buf, size_t len)
{
	return buf && len >= KVFS_BLOCK_MAGIC_BYTES &&
	       memcmp(buf, block_magic, KVFS_BLOCK_MAGIC_BYTES) == 0;
}

uint32_t kvfs_block_token(const struct kvfs_block_info *bi, uint32_t i)
{
	return get32(bi->tokens_le + 4 * (size_t)i);
}

void kvfs_block_layer(const struct kvfs_block_info *bi, uint32_t i, uint64_t *offset,
		      uint64_t *checksum)
{
	const uint8_t *e = bi->layer_table + (size_t)LAYER_ENTRY_BYTES * i;

	if (offset)
		*offset = get64(e);
	if (checksum)
		*checksum = get64(e + 8);
}

/*
 * The key of a parsed header. Token ids are used in place when the host is
 * little-endian and they are 4-byte aligned (any buffer from malloc, mmap
 * or read); otherwise they are converted into a temporary copy.
 */
static int hdr_key(const struct kvfs_block_info *bi, kvfs_key *key)
{
	uint32_t *copy;
	uint32_t i;
	int rc;

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	if (((uintptr_t)bi->tokens_le & 3) == 0)
		return kvfs_key_block(&bi->parent, (const uint32_t *)(const void *)bi->tokens_le,
				      bi->num_tokens, bi->extra_cbor, bi->extra_len, key);
#endif
	copy = malloc(sizeof(*copy) * bi->num_tokens);
	if (!copy)
		return -ENOMEM;
	for (i = 0; i < bi->num_tokens; i++)
		copy[i] = kvfs_block_token(bi, i);
	rc = kvfs_key_block(&bi->parent, copy, bi->num_tokens, bi->extra_cbor, bi->extra_len, key);
	free(copy);
	return rc;
}

static int bad(const char **why, const char *w)
{
	if (why)
		*why = w;
	return -EBADMSG;
}

int kvfs_block_parse_header(const void *hdr, size_t len, uint64_t file_bytes,
			    struct kvfs_block_info *bi, const char **why)
{
	static const uint8_t zero[RESERVED_BYTES];
	const uint8_t *h = hdr;
	struct kvfs_layout *l = &bi->layout;
	struct hdr_geom g;
	uint64_t layer_bytes, stride, fb;
	uint32_t hb, i, pad, table_end;
	kvfs_key k;
	int rc;

	memset(bi, 0, sizeof(*bi));
	if (len >= KVFS_BLOCK_MAGIC_BYTES && !kvfs_block_is_native(h, len))
		return bad(why, "bad magic");
	if (file_bytes < KVFS_BLOCK_ALIGN)
		return bad(why, "file smaller than a header");
	if (len < OFF_HEADER_BYTES + 4) {
		bi->header_bytes = KVFS_BLOCK_ALIGN;
		if (why)
			*why = "need the first 4096 bytes";
		return -EAGAIN;
	}
	bi->version = get16(h + OFF_VERSION);
	if (bi->version != KVFS_BLOCK_VERSION)
		return bad(why, "unsupported version");
	hb = get32(h + OFF_HEADER_BYTES);
	if (hb < KVFS_BLOCK_ALIGN || hb % KVFS_BLOCK_ALIGN)
		return bad(why, "header_bytes not a multiple of 4096");
	if (hb > KVFS_BLOCK_MAX_HEADER)
		return bad(why, "header_bytes larger than the maximum");
	if (hb > file_bytes)
		return bad(why, "header larger than the file");
	bi->header_bytes = hb;
	if (len < hb) {
		if (why)
			*why = "need header_bytes bytes";
		return -EAGAIN;
	}
	if (get64(h + OFF_HEADER_CHECKSUM) != hdr_checksum(h, hb))
		return bad(why, "header checksum mismatch");

	/* The header is intact: from here on, a problem is the writer's. */
	if (get16(h + OFF_FLAGS))
		return bad(why, "reserved flags set");
	if (memcmp(h + OFF_RESERVED, zero, RESERVED_BYTES))
		return bad(why, "reserved bytes not zero");
	memcpy(l->model_id, h + OFF_MODEL_ID, KVFS_MODEL_ID_BYTES);
	if (!memchr(l->model_id, '\0', KVFS_MODEL_ID_BYTES))
		return bad(why, "model_id not NUL-terminated");
	i = (uint32_t)strlen(l->model_id);
	if (!all_zero((const uint8_t *)l->model_id + i, KVFS_MODEL_ID_BYTES - i))
		return bad(why, "model_id not NUL padded");
	l->num_layers = get32(h + OFF_NUM_LAYERS);
	l->num_kv_heads = get32(h + OFF_NUM_KV_HEADS);
	l->head_dim = get32(h + OFF_HEAD_DIM);
	l->tokens_per_block = get32(h + OFF_TOKENS_PER_BLOCK);
	l->dtype = get16(h + OFF_DTYPE);
	l->kind = get16(h + OFF_KIND);
	if (kvfs_layout_check(l, why))
		return -EBADMSG;
	bi->num_tokens = get32(h + OFF_NUM_TOKENS);
	if (bi->num_tokens != l->tokens_per_block)
		return bad(why, "num_tokens != tokens_per_block");
	bi->extra_len = get32(h + OFF_EXTRA_LEN);
	if (bi->extra_len > KVFS_BLOCK_MAX_EXTRA)
		return bad(why, "extra keys too long");
	g = hdr_geom(bi->num_tokens, l->num_layers, bi->extra_len);
	if (get32(h + OFF_TOKENS_OFF) != g.tokens_off)
		return bad(why, "tokens_off wrong");
	if (get32(h + OFF_EXTRA_OFF) != g.extra_off)
		return bad(why, "extra_off wrong");
	if (get32(h + OFF_LAYERS_OFF) != g.layers_off)
		return bad(why, "layers_off wrong");
	if (hb != g.header_bytes)
		return bad(why, "header_bytes does not match the layout");
	if (layout_sizes(l, bi->extra_len, &layer_bytes, &fb))
		return bad(why, "layout too large");
	stride = align_up(layer_bytes, KVFS_BLOCK_ALIGN);
	bi->layer_bytes = get64(h + OFF_LAYER_BYTES);
	bi->layer_stride = get64(h + OFF_LAYER_STRIDE);
	bi->file_bytes = get64(h + OFF_FILE_BYTES);
	if (bi->layer_bytes != layer_bytes)
		return bad(why, "layer_bytes does not match the layout");
	if (bi->layer_stride != stride)
		return bad(why, "layer_stride does not match layer_bytes");
	if (bi->file_bytes != fb)
		return bad(why, "file_bytes does not match the layout");
	if (file_bytes != fb)
		return bad(why, "file size does not match the header");
	bi->tokens_le = h + g.tokens_off;
	bi->extra_cbor = bi->extra_len ? h + g.extra_off : NULL;
	bi->layer_table = h + g.layers_off;
	pad = g.tokens_off + 4 * bi->num_tokens + bi->extra_len;
	table_end = g.layers_off + LAYER_ENTRY_BYTES * l->num_layers;
	if (!all_zero(h + pad, g.layers_off - pad) || !all_zero(h + table_end, hb - table_end))
		return bad(why, "header padding not zero");
	for (i = 0; i < l->num_layers; i++) {
		uint64_t off;

		kvfs_block_layer(bi, i, &off, NULL);
		if (off != hb + (uint64_t)i * stride)
			return bad(why, "layer table offset wrong");
	}
	memcpy(bi->key.b, h + OFF_KEY, KVFS_KEY_BYTES);
	memcpy(bi->parent.b, h + OFF_PARENT, KVFS_KEY_BYTES);
	rc = hdr_key(bi, &k);
	if (rc == -EINVAL)
		return bad(why, "extra keys are not one CBOR array");
	if (rc)
		return rc;
	if (memcmp(k.b, bi->key.b, KVFS_KEY_BYTES))
		return bad(why, "key does not match parent, tokens and extra keys");
	return 0;
}

int kvfs_block_verify_layer(const struct kvfs_block_info *bi, uint32_t i, const void *data,
			    const char **why)
{
	uint64_t checksum;

	if (!bi || !data || i >= bi->layout.num_layers) {
		if (why)
			*why = "no such layer";
		return -EINVAL;
	}
	kvfs_block_layer(bi, i, NULL, &checksum);
	if (kvfs_block_layer_checksum(data, bi->layer_bytes) != checksum)
		return bad(why, "layer checksum mismatch");
	return 0;
}

/* --- validator -------------------------------------------------------------- */

/* Read exactly @len bytes at @off; a short file is a bad block. */
static int read_full(kvfs_block_read_fn read, void *ctx, uint64_t off, void *buf, size_t len,
		     const char **why)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = read(ctx, off, p, len);

		if (n < 0)
			return (int)n;
		if (n == 0)
			return bad(why, "file shorter than its size");
		if ((size_t)n > len)
			return -EIO;
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

int kvfs_block_validate(kvfs_block_read_fn read, void *ctx, uint64_t file_bytes, void *hdr_buf,
			size_t hdr_cap, struct kvfs_block_info *bi, const char **why)
{
	XXH3_state_t st;
	uint8_t *chunk;
	size_t first, chunk_bytes;
	uint32_t i;
	int rc;

	if (!read || !hdr_buf || !bi)
		return -EINVAL;
	if (hdr_cap < KVFS_BLOCK_ALIGN)
		return bad(why, "header does not fit the buffer");
	first = file_bytes < KVFS_BLOCK_ALIGN ? (size_t)file_bytes : KVFS_BLOCK_ALIGN;
	rc = read_full(read, ctx, 0, hdr_buf, first, why);
	if (rc)
		return rc;
	rc = kvfs_block_parse_header(hdr_buf, first, file_bytes, bi, why);
	if (rc == -EAGAIN) {
		uint32_t hb = bi->header_bytes;

		if (hb > hdr_cap)
			return bad(why, "header does not fit the buffer");
		rc = read_full(read, ctx, first, (uint8_t *)hdr_buf + first, hb - first, why);
		if (rc)
			return rc;
		rc = kvfs_block_parse_header(hdr_buf, hb, file_bytes, bi, why);
	}
	if (rc)
		return rc;

	chunk_bytes = bi->layer_stride < VALIDATE_CHUNK ? (size_t)bi->layer_stride : VALIDATE_CHUNK;
	chunk = malloc(chunk_bytes);
	if (!chunk)
		return -ENOMEM;
	for (i = 0; i < bi->layout.num_layers; i++) {
		uint64_t off, checksum, done = 0;

		kvfs_block_layer(bi, i, &off, &checksum);
		XXH3_64bits_reset(&st);
		while (done < bi->layer_stride) {
			size_t n = (size_t)min_u64(bi->layer_stride - done, chunk_bytes);
			size_t data = (size_t)min_u64(n, bi->layer_bytes -
								 min_u64(done, bi->layer_bytes));

			rc = read_full(read, ctx, off + done, chunk, n, why);
			if (rc)
				goto out_free;
			XXH3_64bits_update(&st, chunk, data);
			if (!all_zero(chunk + data, n - data)) {
				rc = bad(why, "layer padding not zero");
				goto out_free;
			}
			done += n;
		}
		if (XXH3_64bits_digest(&st) != checksum) {
			rc = bad(why, "layer checksum mismatch");
			goto out_free;
		}
	}
out_free:
	free(chunk);
	return rc;
}
