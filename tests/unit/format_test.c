/*
 * tests/unit/format_test.c — the native block format (core/format.c).
 *
 * Round trips for both kinds and several dtypes, header sizes, the byte
 * offsets format.h promises (read back by hand, little-endian, with an
 * independently computed checksum), and one test per corruption: each must
 * be refused with -EBADMSG and the matching reason.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <cmocka.h>
#include <xxhash.h>

#include "kvfs/format.h"
#include "kvfs/keys.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* --- helpers ---------------------------------------------------------------- */

static uint64_t le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	int i;

	for (i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void set_le(uint8_t *p, int n, uint64_t v)
{
	int i;

	for (i = 0; i < n; i++, v >>= 8)
		p[i] = (uint8_t)v;
}

/* Recompute the header checksum by hand, so only the field checks remain. */
static void reseal(uint8_t *h)
{
	uint32_t hb = (uint32_t)le(h + 12, 4);
	uint8_t *copy = malloc(hb);

	assert_non_null(copy);
	memcpy(copy, h, hb);
	memset(copy + 248, 0, 8);
	set_le(h + 248, 8, XXH3_64bits(copy, hb));
	free(copy);
}

static struct kvfs_layout layout(unsigned kind, unsigned dtype, uint32_t layers, uint32_t heads,
				 uint32_t dim, uint32_t tokens)
{
	struct kvfs_layout l;

	memset(&l, 0, sizeof(l));
	snprintf(l.model_id, sizeof(l.model_id), "meta-llama/Llama-3.1-8B");
	l.kind = (uint16_t)kind;
	l.dtype = (uint16_t)dtype;
	l.num_layers = layers;
	l.num_kv_heads = heads;
	l.head_dim = dim;
	l.tokens_per_block = tokens;
	return l;
}

/* A block in memory, with the inputs that made it. */
struct blk {
	struct kvfs_block_desc d;
	uint32_t *tokens;
	uint8_t **layers;
	uint8_t *buf;
	uint64_t len;
	kvfs_key key;
};

static const uint8_t extra_lora_salt[] = {0x82, 0x64, 'l', 'o', 'r', 'a', 0x64, 's', 'a', 'l', 't'};

static void blk_make(struct blk *b, struct kvfs_layout l, const uint8_t *extra, size_t extra_len)
{
	uint64_t lb = kvfs_layout_layer_bytes(&l), j;
	uint32_t i;

	memset(b, 0, sizeof(*b));
	b->d.layout = l;
	assert_int_equal(kvfs_key_root("0", &b->d.parent), 0);
	b->tokens = malloc(sizeof(uint32_t) * l.tokens_per_block);
	assert_non_null(b->tokens);
	for (i = 0; i < l.tokens_per_block; i++)
		b->tokens[i] = i * 2654435761u;
	b->d.tokens = b->tokens;
	b->d.extra_cbor = extra;
	b->d.extra_len = extra_len;
	b->layers = calloc(l.num_layers, sizeof(*b->layers));
	assert_non_null(b->layers);
	for (i = 0; i < l.num_layers; i++) {
		b->layers[i] = malloc(lb);
		assert_non_null(b->layers[i]);
		for (j = 0; j < lb; j++)
			b->layers[i][j] = (uint8_t)(j * 31 + i * 7 + 1);
	}
	b->len = kvfs_layout_file_bytes(&l, extra_len);
	b->buf = malloc(b->len);
	assert_non_null(b->buf);
	assert_int_equal(
		kvfs_block_encode(&b->d, (const void *const *)b->layers, b->buf, b->len, &b->key),
		0);
}

static void blk_free(struct blk *b)
{
	uint32_t i;

	for (i = 0; i < b->d.layout.num_layers; i++)
		free(b->layers[i]);
	free(b->layers);
	free(b->tokens);
	free(b->buf);
}

/* A file in memory behind a kvfs_block_read_fn, with faults to inject. */
struct memfile {
	const uint8_t *p;
	uint64_t len;	 /* bytes really there */
	size_t max_read; /* 0: no limit; else at most this much per call */
	int fail_call;	 /* 1-based call that fails with @err; 0: none */
	int err;
	int calls;
};

static ssize_t mem_read(void *ctx, uint64_t off, void *buf, size_t len)
{
	struct memfile *f = ctx;

	f->calls++;
	if (f->fail_call && f->calls == f->fail_call)
		return -f->err;
	if (off >= f->len)
		return 0;
	if (len > f->len - off)
		len = (size_t)(f->len - off);
	if (f->max_read && len > f->max_read)
		len = f->max_read;
	memcpy(buf, f->p + off, len);
	return (ssize_t)len;
}

static int validate_mem(struct memfile *f, uint64_t file_bytes, struct kvfs_block_info *bi,
			const char **why)
{
	static uint8_t hdr[KVFS_BLOCK_MAX_HEADER];

	return kvfs_block_validate(mem_read, f, file_bytes, hdr, sizeof(hdr), bi, why);
}

/* @call must fail with -EBADMSG and a reason containing @want (@call runs first). */
#define assert_bad(call, why, want)                                                                \
	do {                                                                                       \
		int rc_ = (call);                                                                  \
		check_bad(rc_, (why), (want));                                                     \
	} while (0)

static void check_bad(int rc, const char *why, const char *want)
{
	assert_int_equal(rc, -EBADMSG);
	assert_non_null(why);
	if (!strstr(why, want))
		fail_msg("why is \"%s\", want \"%s\"", why, want);
}

/* --- names and layouts -------------------------------------------------------- */

static void test_dtypes_kinds(void **state)
{
	static const struct {
		unsigned dt;
		const char *name;
		size_t size;
	} dts[] = {
		{KVFS_DTYPE_F32, "f32", 4},	      {KVFS_DTYPE_F16, "f16", 2},
		{KVFS_DTYPE_BF16, "bf16", 2},	      {KVFS_DTYPE_FP8_E4M3, "fp8_e4m3", 1},
		{KVFS_DTYPE_FP8_E5M2, "fp8_e5m2", 1}, {KVFS_DTYPE_INT8, "int8", 1},
		{KVFS_DTYPE_UINT8, "uint8", 1},
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(dts); i++) {
		assert_int_equal(kvfs_dtype_size(dts[i].dt), dts[i].size);
		assert_string_equal(kvfs_dtype_name(dts[i].dt), dts[i].name);
		assert_int_equal(kvfs_dtype_parse(dts[i].name), (int)dts[i].dt);
	}
	assert_int_equal(kvfs_dtype_size(0), 0);
	assert_int_equal(kvfs_dtype_size(8), 0);
	assert_int_equal(kvfs_dtype_size(65535), 0);
	assert_string_equal(kvfs_dtype_name(0), "?");
	assert_string_equal(kvfs_dtype_name(99), "?");
	assert_int_equal(kvfs_dtype_parse("f64"), -EINVAL);
	assert_int_equal(kvfs_dtype_parse(""), -EINVAL);
	assert_int_equal(kvfs_dtype_parse(NULL), -EINVAL);

	assert_string_equal(kvfs_kind_name(KVFS_KIND_KV), "kv");
	assert_string_equal(kvfs_kind_name(KVFS_KIND_MLA), "mla");
	assert_string_equal(kvfs_kind_name(0), "?");
	assert_string_equal(kvfs_kind_name(3), "?");
	assert_int_equal(kvfs_kind_parse("kv"), KVFS_KIND_KV);
	assert_int_equal(kvfs_kind_parse("mla"), KVFS_KIND_MLA);
	assert_int_equal(kvfs_kind_parse("KV"), -EINVAL);
	assert_int_equal(kvfs_kind_parse(NULL), -EINVAL);
}

static void test_layout_check(void **state)
{
	static const struct {
		struct kvfs_layout l;
		const char *why;
	} bad[] = {
		{{"m", 0, 8, 128, 16, KVFS_DTYPE_F16, KVFS_KIND_KV}, "num_layers"},
		{{"m", 4097, 8, 128, 16, KVFS_DTYPE_F16, KVFS_KIND_KV}, "num_layers"},
		{{"m", 32, 0, 128, 16, KVFS_DTYPE_F16, KVFS_KIND_KV}, "num_kv_heads"},
		{{"m", 32, 8, 0, 16, KVFS_DTYPE_F16, KVFS_KIND_KV}, "head_dim"},
		{{"m", 32, 8, 128, 0, KVFS_DTYPE_F16, KVFS_KIND_KV}, "tokens_per_block"},
		{{"m", 32, 8, 128, 65537, KVFS_DTYPE_F16, KVFS_KIND_KV}, "tokens_per_block"},
		{{"m", 32, 8, 128, 16, 0, KVFS_KIND_KV}, "unknown dtype"},
		{{"m", 32, 8, 128, 16, 8, KVFS_KIND_KV}, "unknown dtype"},
		{{"m", 32, 8, 128, 16, KVFS_DTYPE_F16, 0}, "unknown kind"},
		{{"m", 32, 8, 128, 16, KVFS_DTYPE_F16, 3}, "unknown kind"},
		{{"m", 32, 2, 576, 16, KVFS_DTYPE_F16, KVFS_KIND_MLA}, "MLA"},
		{{"m", 4096, 0xffffffffu, 0xffffffffu, 65536, KVFS_DTYPE_F32, KVFS_KIND_KV},
		 "too large"},
	};
	struct kvfs_layout l = layout(KVFS_KIND_KV, KVFS_DTYPE_BF16, 32, 8, 128, 16);
	const char *why = NULL;
	size_t i;

	assert_int_equal(kvfs_layout_check(&l, &why), 0);
	l = layout(KVFS_KIND_MLA, KVFS_DTYPE_FP8_E4M3, 61, 1, 576, 64);
	assert_int_equal(kvfs_layout_check(&l, &why), 0);
	l = layout(KVFS_KIND_KV, KVFS_DTYPE_F32, 4096, 1, 1, 65536);
	assert_int_equal(kvfs_layout_check(&l, &why), 0);
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		why = NULL;
		assert_int_equal(kvfs_layout_check(&bad[i].l, &why), -EINVAL);
		assert_non_null(why);
		if (!strstr(why, bad[i].why))
			fail_msg("case %zu: why is \"%s\", want \"%s\"", i, why, bad[i].why);
	}
	l = layout(KVFS_KIND_KV, KVFS_DTYPE_BF16, 32, 8, 128, 16);
	memset(l.model_id, 'a', sizeof(l.model_id));
	assert_int_equal(kvfs_layout_check(&l, &why), -EINVAL);
	assert_non_null(strstr(why, "model_id"));
	assert_int_equal(kvfs_layout_check(NULL, &why), -EINVAL);
}

static void test_sizes(void **state)
{
	struct kvfs_layout l = layout(KVFS_KIND_KV, KVFS_DTYPE_F16, 32, 8, 128, 16);

	/* Llama-3.1-8B, 16 tokens: K and V, 16 * 8 * 128 * 2 bytes each */
	assert_int_equal(kvfs_layout_layer_bytes(&l), 65536);
	assert_int_equal(kvfs_layout_header_bytes(&l, 0), 4096);
	assert_int_equal(kvfs_layout_file_bytes(&l, 0), 4096 + 32 * 65536);

	/* 1024 tokens do not fit 4096 bytes with the table: 256 + 4096 + 512 */
	l.tokens_per_block = 1024;
	assert_int_equal(kvfs_layout_header_bytes(&l, 0), 8192);
	assert_int_equal(kvfs_layout_layer_bytes(&l), 2 * 1024 * 8 * 128 * 2);
	assert_int_equal(kvfs_layout_file_bytes(&l, 0), 8192 + 32 * 4194304ull);

	/* 200 layers of 256 tokens: 256 + 1024 + 3200 */
	l = layout(KVFS_KIND_KV, KVFS_DTYPE_BF16, 200, 8, 128, 256);
	assert_int_equal(kvfs_layout_header_bytes(&l, 0), 8192);
	l.num_layers = 100; /* 256 + 1024 + 1600 */
	assert_int_equal(kvfs_layout_header_bytes(&l, 0), 4096);
	assert_int_equal(kvfs_layout_header_bytes(&l, 1216), 4096);
	assert_int_equal(kvfs_layout_header_bytes(&l, 1217), 8192);

	/* the edge: 256 + 4 * 956 + 16 == 4096 exactly */
	l = layout(KVFS_KIND_KV, KVFS_DTYPE_INT8, 1, 1, 1, 956);
	assert_int_equal(kvfs_layout_header_bytes(&l, 0), 4096);
	l.tokens_per_block = 957;
	assert_int_equal(kvfs_layout_header_bytes(&l, 0), 8192);
	/* extra keys: 256 + 3824 + 1 rounds up to 4088 for the table */
	l.tokens_per_block = 956;
	assert_int_equal(kvfs_layout_header_bytes(&l, 1), 8192);
	l.tokens_per_block = 954; /* 256 + 3816 = 4072; +1 byte -> 4080 + 16 = 4096 */
	assert_int_equal(kvfs_layout_header_bytes(&l, 1), 4096);
	assert_int_equal(kvfs_layout_header_bytes(&l, 8), 4096);
	assert_int_equal(kvfs_layout_header_bytes(&l, 9), 8192);

	/* MLA: one latent vector per token; stride rounds up to 4096 */
	l = layout(KVFS_KIND_MLA, KVFS_DTYPE_BF16, 61, 1, 576, 16);
	assert_int_equal(kvfs_layout_layer_bytes(&l), 16 * 576 * 2);
	assert_int_equal(kvfs_layout_file_bytes(&l, 0), 4096 + 61 * 20480ull);

	/* the largest header is far below the maximum */
	l = layout(KVFS_KIND_KV, KVFS_DTYPE_INT8, 4096, 1, 1, 65536);
	assert_true(kvfs_layout_header_bytes(&l, KVFS_BLOCK_MAX_EXTRA) <= KVFS_BLOCK_MAX_HEADER);
}

/* --- round trips ------------------------------------------------------------ */

static void check_round_trip(struct kvfs_layout l, const uint8_t *extra, size_t extra_len)
{
	struct kvfs_block_info bi;
	struct memfile f;
	struct blk b;
	const char *why = NULL;
	uint64_t *sums, off, sum;
	uint8_t *hdr;
	kvfs_key k, hkey;
	uint32_t i, hb;

	print_message("%s %s layers=%u heads=%u dim=%u tokens=%u extra=%zu\n",
		      kvfs_kind_name(l.kind), kvfs_dtype_name(l.dtype), l.num_layers,
		      l.num_kv_heads, l.head_dim, l.tokens_per_block, extra_len);
	blk_make(&b, l, extra, extra_len);
	hb = kvfs_layout_header_bytes(&l, extra_len);

	/* the key is vLLM's key of parent, tokens and extra keys */
	assert_int_equal(
		kvfs_key_block(&b.d.parent, b.tokens, l.tokens_per_block, extra, extra_len, &k), 0);
	assert_memory_equal(&k, &b.key, sizeof(k));
	assert_true(kvfs_block_is_native(b.buf, b.len));

	assert_int_equal(kvfs_block_parse_header(b.buf, b.len, b.len, &bi, &why), 0);
	assert_memory_equal(&bi.layout, &l, sizeof(l));
	assert_int_equal(bi.version, KVFS_BLOCK_VERSION);
	assert_int_equal(bi.header_bytes, hb);
	assert_int_equal(bi.file_bytes, b.len);
	assert_int_equal(bi.layer_bytes, kvfs_layout_layer_bytes(&l));
	assert_int_equal(bi.layer_stride % KVFS_BLOCK_ALIGN, 0);
	assert_true(bi.layer_stride >= bi.layer_bytes && bi.layer_stride - bi.layer_bytes < 4096);
	assert_memory_equal(&bi.key, &k, sizeof(k));
	assert_memory_equal(&bi.parent, &b.d.parent, sizeof(k));
	assert_int_equal(bi.num_tokens, l.tokens_per_block);
	for (i = 0; i < bi.num_tokens; i++)
		assert_int_equal(kvfs_block_token(&bi, i), b.tokens[i]);
	assert_int_equal(bi.extra_len, extra_len);
	if (extra_len)
		assert_memory_equal(bi.extra_cbor, extra, extra_len);
	else
		assert_null(bi.extra_cbor);
	for (i = 0; i < l.num_layers; i++) {
		kvfs_block_layer(&bi, i, &off, &sum);
		assert_int_equal(off, hb + i * bi.layer_stride);
		assert_int_equal(off % KVFS_BLOCK_ALIGN, 0);
		assert_int_equal(sum, XXH3_64bits(b.layers[i], bi.layer_bytes));
		assert_int_equal(sum, kvfs_block_layer_checksum(b.layers[i], bi.layer_bytes));
		assert_memory_equal(b.buf + off, b.layers[i], bi.layer_bytes);
		assert_int_equal(kvfs_block_verify_layer(&bi, i, b.buf + off, &why), 0);
	}
	assert_int_equal(kvfs_block_verify_layer(&bi, l.num_layers, b.buf, &why), -EINVAL);

	/* the header encoder alone writes the same bytes */
	sums = calloc(l.num_layers, sizeof(*sums));
	hdr = malloc(hb);
	assert_non_null(sums);
	assert_non_null(hdr);
	for (i = 0; i < l.num_layers; i++)
		sums[i] = kvfs_block_layer_checksum(b.layers[i], bi.layer_bytes);
	memset(hdr, 0xee, hb);
	assert_int_equal(kvfs_block_encode_header(&b.d, sums, hdr, hb, &hkey), 0);
	assert_memory_equal(hdr, b.buf, hb);
	assert_memory_equal(&hkey, &k, sizeof(k));
	assert_int_equal(kvfs_block_encode_header(&b.d, sums, hdr, hb - 1, NULL), -ENOSPC);

	/* a header encoded without checksums, completed afterwards (saves from a GPU) */
	{
		uint64_t *zero = calloc(l.num_layers, sizeof(*zero));

		assert_int_equal(kvfs_block_encode_header(&b.d, zero, hdr, hb, NULL), 0);
		assert_int_equal(kvfs_block_set_layer_checksums(hdr, hb, sums, l.num_layers), 0);
		assert_memory_equal(hdr, b.buf, hb);
		assert_int_equal(kvfs_block_set_layer_checksums(hdr, hb, sums, l.num_layers + 1),
				 -EBADMSG);
		assert_int_equal(kvfs_block_set_layer_checksums(hdr, hb - 1, sums, l.num_layers),
				 -EBADMSG);
		hdr[0] ^= 1;
		assert_int_equal(kvfs_block_set_layer_checksums(hdr, hb, sums, l.num_layers),
				 -EBADMSG);
		free(zero);
	}

	/* and the whole file validates through a reader */
	f = (struct memfile){.p = b.buf, .len = b.len};
	memset(&bi, 0, sizeof(bi));
	assert_int_equal(validate_mem(&f, b.len, &bi, &why), 0);
	assert_memory_equal(&bi.key, &k, sizeof(k));
	assert_int_equal(bi.header_bytes, hb);

	free(hdr);
	free(sums);
	blk_free(&b);
}

static void test_round_trip(void **state)
{
	check_round_trip(layout(KVFS_KIND_KV, KVFS_DTYPE_BF16, 4, 8, 128, 16), NULL, 0);
	check_round_trip(layout(KVFS_KIND_KV, KVFS_DTYPE_F16, 3, 2, 64, 16), extra_lora_salt,
			 sizeof(extra_lora_salt));
	check_round_trip(layout(KVFS_KIND_KV, KVFS_DTYPE_F32, 2, 1, 3, 5), NULL, 0);
	check_round_trip(layout(KVFS_KIND_KV, KVFS_DTYPE_FP8_E5M2, 2, 4, 128, 256), NULL, 0);
	check_round_trip(layout(KVFS_KIND_KV, KVFS_DTYPE_INT8, 1, 1, 1, 1), NULL, 0);
	check_round_trip(layout(KVFS_KIND_KV, KVFS_DTYPE_UINT8, 5, 1, 7, 3), extra_lora_salt,
			 sizeof(extra_lora_salt));
	check_round_trip(layout(KVFS_KIND_MLA, KVFS_DTYPE_BF16, 3, 1, 576, 16), NULL, 0);
	check_round_trip(layout(KVFS_KIND_MLA, KVFS_DTYPE_FP8_E4M3, 2, 1, 512, 64), extra_lora_salt,
			 sizeof(extra_lora_salt));
}

/* Headers bigger than 4096: many tokens, many layers, long extra keys. */
static void test_big_headers(void **state)
{
	static uint8_t extra[5000];

	check_round_trip(layout(KVFS_KIND_KV, KVFS_DTYPE_INT8, 2, 1, 1, 1024), NULL, 0);
	check_round_trip(layout(KVFS_KIND_MLA, KVFS_DTYPE_INT8, 200, 1, 1, 16), NULL, 0);
	/* a 4998-byte text string in a one-item array */
	extra[0] = 0x81;
	extra[1] = 0x79;
	extra[2] = (4995 >> 8) & 0xff;
	extra[3] = 4995 & 0xff;
	memset(extra + 4, 'x', 4995);
	check_round_trip(layout(KVFS_KIND_KV, KVFS_DTYPE_INT8, 3, 1, 2, 8), extra, 4999);
}

/* The largest header: 65536 tokens, 4096 layers, 64 KiB of extra keys. */
static void test_max_header(void **state)
{
	struct kvfs_layout l = layout(KVFS_KIND_KV, KVFS_DTYPE_INT8, 4096, 1, 1, 65536);
	struct kvfs_block_desc d = {.layout = l};
	struct kvfs_block_info bi;
	static uint8_t extra[KVFS_BLOCK_MAX_EXTRA];
	uint64_t *sums = calloc(l.num_layers, sizeof(*sums));
	uint32_t *tokens = malloc(sizeof(uint32_t) * l.tokens_per_block);
	uint32_t hb = kvfs_layout_header_bytes(&l, sizeof(extra)), i;
	uint8_t *hdr = malloc(hb + 1);
	const char *why = NULL;

	assert_non_null(sums);
	assert_non_null(tokens);
	assert_non_null(hdr);
	for (i = 0; i < l.tokens_per_block; i++)
		tokens[i] = 0xffffffffu - i;
	extra[0] = 0x81; /* [ bytes(65532) ] */
	extra[1] = 0x59;
	extra[2] = 0xff;
	extra[3] = 0xfc;
	d.tokens = tokens;
	d.extra_cbor = extra;
	d.extra_len = sizeof(extra);
	assert_int_equal(kvfs_block_encode_header(&d, sums, hdr, hb, NULL), 0);
	assert_int_equal(kvfs_block_parse_header(hdr, hb, kvfs_layout_file_bytes(&l, sizeof(extra)),
						 &bi, &why),
			 0);
	assert_int_equal(bi.extra_len, KVFS_BLOCK_MAX_EXTRA);
	assert_int_equal(kvfs_block_token(&bi, 65535), 0xffffffffu - 65535);

	/* unaligned buffer: the parser copies the tokens to check the key */
	memmove(hdr + 1, hdr, hb);
	assert_int_equal(kvfs_block_parse_header(
				 hdr + 1, hb, kvfs_layout_file_bytes(&l, sizeof(extra)), &bi, &why),
			 0);

	/* one byte more of extra keys is refused */
	d.extra_len = KVFS_BLOCK_MAX_EXTRA + 1;
	assert_int_equal(kvfs_block_encode_header(&d, sums, hdr, hb, NULL), -EINVAL);
	free(hdr);
	free(tokens);
	free(sums);
}

/* --- the byte layout of format.h -------------------------------------------- */

static void test_header_offsets(void **state)
{
	struct kvfs_layout l = layout(KVFS_KIND_KV, KVFS_DTYPE_BF16, 3, 5, 0x0102, 7);
	struct kvfs_block_desc d = {.layout = l};
	uint32_t tokens[7] = {0, 23, 24, 0x11223344, 65535, 65536, 0xffffffffu};
	uint64_t sums[3] = {0x1111111111111111ull, 0x2222222222222222ull, 0xfedcba9876543210ull};
	uint8_t h[4096], copy[4096];
	uint64_t lb, stride;
	kvfs_key key;
	uint32_t i;

	memset(d.parent.b, 0x5a, sizeof(d.parent.b));
	d.tokens = tokens;
	d.extra_cbor = extra_lora_salt;
	d.extra_len = sizeof(extra_lora_salt);
	memset(h, 0xcc, sizeof(h));
	assert_int_equal(kvfs_block_encode_header(&d, sums, h, sizeof(h), &key), 0);

	lb = 2ull * 7 * 5 * 0x0102 * 2;
	stride = (lb + 4095) / 4096 * 4096;
	assert_memory_equal(h + 0, "KVFSBLK\0", 8);
	assert_int_equal(le(h + 8, 2), 1);		    /* version */
	assert_int_equal(le(h + 10, 2), 0);		    /* flags */
	assert_int_equal(le(h + 12, 4), 4096);		    /* header_bytes */
	assert_int_equal(le(h + 16, 8), 4096 + 3 * stride); /* file_bytes */
	assert_string_equal((const char *)h + 24, "meta-llama/Llama-3.1-8B");
	for (i = 24 + strlen(l.model_id); i < 88; i++)
		assert_int_equal(h[i], 0);
	assert_int_equal(le(h + 88, 4), 3);	 /* num_layers */
	assert_int_equal(le(h + 92, 4), 5);	 /* num_kv_heads */
	assert_int_equal(le(h + 96, 4), 0x0102); /* head_dim */
	assert_int_equal(le(h + 100, 4), 7);	 /* tokens_per_block */
	assert_int_equal(le(h + 104, 2), KVFS_DTYPE_BF16);
	assert_int_equal(le(h + 106, 2), KVFS_KIND_KV);
	assert_int_equal(le(h + 108, 4), 7);	 /* num_tokens */
	assert_memory_equal(h + 112, key.b, 32); /* key */
	assert_memory_equal(h + 144, d.parent.b, 32);
	assert_int_equal(le(h + 176, 8), lb);
	assert_int_equal(le(h + 184, 8), stride);
	assert_int_equal(le(h + 192, 4), 256);	       /* tokens_off */
	assert_int_equal(le(h + 196, 4), 256 + 4 * 7); /* extra_off */
	assert_int_equal(le(h + 200, 4), sizeof(extra_lora_salt));
	assert_int_equal(le(h + 204, 4), 296); /* 284 + 11 = 295 -> 8-aligned */
	for (i = 208; i < 248; i++)
		assert_int_equal(h[i], 0); /* reserved */
	for (i = 0; i < 7; i++)
		assert_int_equal(le(h + 256 + 4 * i, 4), tokens[i]);
	assert_memory_equal(h + 284, extra_lora_salt, sizeof(extra_lora_salt));
	assert_int_equal(h[295], 0);
	for (i = 0; i < 3; i++) {
		assert_int_equal(le(h + 296 + 16 * i, 8), 4096 + i * stride);
		assert_int_equal(le(h + 296 + 16 * i + 8, 8), sums[i]);
	}
	for (i = 296 + 48; i < 4096; i++)
		assert_int_equal(h[i], 0);
	/* header_checksum: XXH3-64 of the header with this field zero */
	memcpy(copy, h, sizeof(copy));
	memset(copy + 248, 0, 8);
	assert_int_equal(le(h + 248, 8), XXH3_64bits(copy, sizeof(copy)));
	/* and the key is the one keys.h computes */
	kvfs_key k;
	assert_int_equal(
		kvfs_key_block(&d.parent, tokens, 7, extra_lora_salt, sizeof(extra_lora_salt), &k),
		0);
	assert_memory_equal(&k, &key, sizeof(k));
}

/* --- corruption ------------------------------------------------------------- */

static struct blk good;

static int setup_good(void **state)
{
	/* 2 layers whose data (5 * 16 * 3 * 2 * 2 = 960 bytes) leaves padding */
	blk_make(&good, layout(KVFS_KIND_KV, KVFS_DTYPE_F16, 2, 3, 5, 16), extra_lora_salt,
		 sizeof(extra_lora_salt));
	return 0;
}

static int teardown_good(void **state)
{
	blk_free(&good);
	return 0;
}

/* A private copy of the good block, @slack bytes longer. */
static uint8_t *copy_good(size_t slack)
{
	uint8_t *p = calloc(1, good.len + slack);

	assert_non_null(p);
	memcpy(p, good.buf, good.len);
	return p;
}

static void expect_parse_bad(const uint8_t *p, uint64_t len, const char *want)
{
	struct kvfs_block_info bi;
	const char *why = NULL;
	struct memfile f = {.p = p, .len = len};

	assert_bad(kvfs_block_parse_header(p, len, len, &bi, &why), why, want);
	why = NULL;
	assert_bad(validate_mem(&f, len, &bi, &why), why, want);
}

static void test_bad_magic(void **state)
{
	uint8_t *p = copy_good(0);
	struct kvfs_block_info bi;
	const char *why = NULL;

	p[3] ^= 0x20;
	expect_parse_bad(p, good.len, "bad magic");
	assert_false(kvfs_block_is_native(p, good.len));
	assert_false(kvfs_block_is_native(good.buf, 7));
	p[3] ^= 0x20;
	p[7] = '!'; /* the NUL belongs to the magic */
	expect_parse_bad(p, good.len, "bad magic");
	/* even when only the magic has been read */
	assert_bad(kvfs_block_parse_header(p, 8, good.len, &bi, &why), why, "bad magic");
	free(p);
}

static void test_bad_version(void **state)
{
	uint8_t *p = copy_good(0);

	set_le(p + 8, 2, 2);
	expect_parse_bad(p, good.len, "version");
	set_le(p + 8, 2, 0);
	expect_parse_bad(p, good.len, "version");
	free(p);
}

static void test_header_checksum(void **state)
{
	static const size_t offs[] = {10,  16,	24,  90,  104, 112, 150, 180,
				      200, 210, 248, 255, 256, 300, 4095};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(offs); i++) {
		uint8_t *p = copy_good(0);

		p[offs[i]] ^= 0x01;
		expect_parse_bad(p, good.len, "header checksum");
		free(p);
	}
}

static void test_layer_checksum(void **state)
{
	struct kvfs_block_info bi;
	const char *why = NULL;
	uint64_t off;
	uint32_t i;

	assert_int_equal(kvfs_block_parse_header(good.buf, good.len, good.len, &bi, &why), 0);
	for (i = 0; i < bi.layout.num_layers; i++) {
		static const uint64_t at[] = {0, 1, 479, 959};
		size_t j;

		kvfs_block_layer(&bi, i, &off, NULL);
		for (j = 0; j < ARRAY_SIZE(at); j++) {
			uint8_t *p = copy_good(0);
			struct memfile f = {.p = p, .len = good.len};
			struct kvfs_block_info bi2;

			p[off + at[j]] ^= 0x80;
			/* the header is still fine */
			assert_int_equal(kvfs_block_parse_header(p, good.len, good.len, &bi2, &why),
					 0);
			assert_bad(kvfs_block_verify_layer(&bi2, i, p + off, &why), why,
				   "layer checksum");
			assert_int_equal(kvfs_block_verify_layer(&bi2, i ^ 1,
								 p + (i ? off - bi.layer_stride
									: off + bi.layer_stride),
								 &why),
					 0);
			why = NULL;
			assert_bad(validate_mem(&f, good.len, &bi2, &why), why, "layer checksum");
			free(p);
		}
		/* the padding after the data must stay zero */
		uint8_t *p = copy_good(0);
		struct memfile f = {.p = p, .len = good.len};

		p[off + bi.layer_stride - 1] = 1;
		why = NULL;
		assert_bad(validate_mem(&f, good.len, &bi, &why), why, "padding");
		free(p);
	}
}

static void test_file_size(void **state)
{
	uint8_t *p = copy_good(8192);
	struct kvfs_block_info bi;
	const char *why = NULL;
	struct memfile f = {.p = p, .len = good.len - 1};

	/* the header says one size, the file has another */
	assert_bad(kvfs_block_parse_header(p, good.len, good.len - 1, &bi, &why), why, "file size");
	assert_bad(kvfs_block_parse_header(p, good.len, good.len + 1, &bi, &why), why, "file size");
	assert_bad(kvfs_block_parse_header(p, good.len, good.len - 4096, &bi, &why), why,
		   "file size");
	assert_bad(kvfs_block_parse_header(p, good.len, good.len + 4096, &bi, &why), why,
		   "file size");
	assert_bad(kvfs_block_parse_header(p, 4096, 100, &bi, &why), why, "smaller");
	/* a reader that runs out before the size it was given */
	why = NULL;
	assert_bad(validate_mem(&f, good.len, &bi, &why), why, "shorter");
	f.len = 4000;
	why = NULL;
	assert_bad(validate_mem(&f, good.len, &bi, &why), why, "shorter");
	/* extra bytes after the last layer */
	f.len = good.len + 8192;
	why = NULL;
	assert_bad(validate_mem(&f, good.len + 8192, &bi, &why), why, "file size");
	free(p);
}

/* Change a field, fix the header checksum, expect the field check to fire. */
static void expect_field_bad(size_t off, int width, uint64_t value, const char *want)
{
	uint8_t *p = copy_good(0);

	print_message("field at %zu = %llu: %s\n", off, (unsigned long long)value, want);
	set_le(p + off, width, value);
	reseal(p);
	expect_parse_bad(p, good.len, want);
	free(p);
}

static void expect_model_id_unterminated(void)
{
	uint8_t *p = copy_good(0);

	memset(p + 24, 'a', KVFS_MODEL_ID_BYTES);
	reseal(p);
	expect_parse_bad(p, good.len, "model_id not NUL-terminated");
	free(p);
}

static void test_key_mismatch(void **state)
{
	struct kvfs_block_info bi;
	const char *why = NULL;

	assert_int_equal(kvfs_block_parse_header(good.buf, good.len, good.len, &bi, &why), 0);
	/* a token, a parent byte, a key byte, an extra-keys byte (still an array) */
	expect_field_bad(256 + 4 * 5, 4, good.tokens[5] + 1, "key does not match");
	expect_field_bad(144, 1, good.d.parent.b[0] ^ 1, "key does not match");
	expect_field_bad(112 + 31, 1, good.key.b[31] ^ 0x40, "key does not match");
	expect_field_bad(256 + 4 * 16 + 2, 1, 'L', "key does not match");
	/* extra keys that are no longer one array */
	expect_field_bad(256 + 4 * 16, 1, 0x83, "extra keys");
	expect_field_bad(256 + 4 * 16, 1, 0x01, "extra keys");
}

static void test_bad_fields(void **state)
{
	uint64_t lb = good.d.layout.num_kv_heads * good.d.layout.head_dim * 16 * 2 * 2;

	expect_field_bad(10, 2, 1, "flags");
	expect_field_bad(208, 1, 1, "reserved");
	expect_field_bad(247, 1, 0x80, "reserved");
	expect_field_bad(60, 8, 0x6161616161616161ull, "model_id not NUL padded");
	expect_model_id_unterminated();
	expect_field_bad(88, 4, 0, "num_layers");
	expect_field_bad(88, 4, 4097, "num_layers");
	expect_field_bad(88, 4, 3, "file_bytes"); /* 3 layers would be a bigger file */
	expect_field_bad(92, 4, 0, "num_kv_heads");
	expect_field_bad(96, 4, 0, "head_dim");
	expect_field_bad(96, 4, 6, "layer_bytes");
	expect_field_bad(100, 4, 0, "tokens_per_block");
	expect_field_bad(100, 4, 65537, "tokens_per_block");
	expect_field_bad(100, 4, 17, "num_tokens");
	expect_field_bad(104, 2, 0, "unknown dtype");
	expect_field_bad(104, 2, 99, "unknown dtype");
	expect_field_bad(106, 2, 0, "unknown kind");
	expect_field_bad(106, 2, 7, "unknown kind");
	expect_field_bad(106, 2, KVFS_KIND_MLA, "MLA layout with num_kv_heads != 1");
	expect_field_bad(108, 4, 15, "num_tokens");
	expect_field_bad(176, 8, lb + 1, "layer_bytes");
	expect_field_bad(184, 8, 8192, "layer_stride");
	expect_field_bad(16, 8, good.len + 4096, "file_bytes");
	expect_field_bad(192, 4, 260, "tokens_off");
	expect_field_bad(196, 4, 0, "extra_off");
	expect_field_bad(200, 4, 12, "extra keys"); /* same offsets, one trailing byte */
	expect_field_bad(200, 4, 0, "extra_off");
	expect_field_bad(200, 4, KVFS_BLOCK_MAX_EXTRA + 1, "extra keys too long");
	expect_field_bad(204, 4, 328, "layers_off");
	/* between the extra keys (320 + 11) and the table (336), and after the table */
	expect_field_bad(331, 1, 1, "header padding");
	expect_field_bad(335, 1, 0x80, "header padding");
	expect_field_bad(368, 1, 1, "header padding");
	expect_field_bad(4095, 1, 1, "header padding");
}

static void test_mla_heads(void **state)
{
	struct blk b;
	struct kvfs_block_info bi;
	const char *why = NULL;

	blk_make(&b, layout(KVFS_KIND_MLA, KVFS_DTYPE_BF16, 2, 1, 64, 16), NULL, 0);
	assert_int_equal(kvfs_block_parse_header(b.buf, b.len, b.len, &bi, &why), 0);
	set_le(b.buf + 92, 4, 2);
	reseal(b.buf);
	assert_bad(kvfs_block_parse_header(b.buf, b.len, b.len, &bi, &why), why, "MLA");
	blk_free(&b);
}

static void test_layer_table(void **state)
{
	struct kvfs_block_info bi;
	const char *why = NULL;
	uint32_t layers_off;

	assert_int_equal(kvfs_block_parse_header(good.buf, good.len, good.len, &bi, &why), 0);
	layers_off = (uint32_t)le(good.buf + 204, 4);
	/* each entry's offset, off by one byte, by a page, or swapped */
	expect_field_bad(layers_off, 8, 4097, "layer table offset");
	expect_field_bad(layers_off, 8, 0, "layer table offset");
	expect_field_bad(layers_off + 16, 8, 4096, "layer table offset");
	expect_field_bad(layers_off + 16, 8, 4096 + 2 * bi.layer_stride, "layer table offset");
	/* a wrong checksum in the table is a layer checksum failure */
	uint8_t *p = copy_good(0);
	struct memfile f = {.p = p, .len = good.len};

	p[layers_off + 16 + 8] ^= 1;
	reseal(p);
	assert_int_equal(kvfs_block_parse_header(p, good.len, good.len, &bi, &why), 0);
	why = NULL;
	assert_bad(validate_mem(&f, good.len, &bi, &why), why, "layer checksum");
	free(p);
}

static void test_header_bytes(void **state)
{
	uint8_t *p = copy_good(8192);
	struct kvfs_block_info bi;
	const char *why = NULL;
	static const uint32_t bad[] = {0, 1, 4095, 4097, 6144, 8191};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		set_le(p + 12, 4, bad[i]);
		expect_parse_bad(p, good.len, "multiple of 4096");
	}
	set_le(p + 12, 4, KVFS_BLOCK_MAX_HEADER + 4096);
	expect_parse_bad(p, good.len, "maximum");
	set_le(p + 12, 4, 0xfffff000u);
	expect_parse_bad(p, good.len, "maximum");
	/* a header longer than the file */
	set_le(p + 12, 4, 16384);
	assert_bad(kvfs_block_parse_header(p, good.len, 12288, &bi, &why), why,
		   "larger than the file");
	/* a bigger header than the layout needs is not canonical */
	memcpy(p, good.buf, good.len);
	set_le(p + 12, 4, 8192);
	reseal(p);
	assert_bad(kvfs_block_parse_header(p, 8192, good.len, &bi, &why), why, "header_bytes");
	free(p);
}

/* The parser asks for more when it was given less than the header. */
static void test_parse_eagain(void **state)
{
	struct kvfs_block_info bi;
	const char *why = NULL;
	struct blk b;

	assert_int_equal(kvfs_block_parse_header(good.buf, 15, good.len, &bi, &why), -EAGAIN);
	assert_int_equal(bi.header_bytes, 4096);
	assert_int_equal(kvfs_block_parse_header(good.buf, 0, good.len, &bi, &why), -EAGAIN);
	assert_int_equal(kvfs_block_parse_header(good.buf, 4095, good.len, &bi, &why), -EAGAIN);
	assert_int_equal(bi.header_bytes, 4096);
	assert_non_null(why);

	blk_make(&b, layout(KVFS_KIND_KV, KVFS_DTYPE_INT8, 2, 1, 1, 1024), NULL, 0);
	why = NULL;
	assert_int_equal(kvfs_block_parse_header(b.buf, 4096, b.len, &bi, &why), -EAGAIN);
	assert_int_equal(bi.header_bytes, 8192);
	assert_non_null(why);
	assert_int_equal(kvfs_block_parse_header(b.buf, 8192, b.len, &bi, &why), 0);
	blk_free(&b);
}

/* --- the validator's reads ---------------------------------------------------- */

static void test_validate_reads(void **state)
{
	static const size_t limits[] = {1, 7, 100, 4095, 4096, 5000};
	struct kvfs_block_info bi;
	const char *why = NULL;
	struct memfile f;
	struct blk b;
	int calls, n;
	size_t i;

	blk_make(&b, layout(KVFS_KIND_KV, KVFS_DTYPE_INT8, 3, 1, 1, 1024), NULL, 0);
	/* short reads are retried */
	for (i = 0; i < ARRAY_SIZE(limits); i++) {
		f = (struct memfile){.p = b.buf, .len = b.len, .max_read = limits[i]};
		assert_int_equal(validate_mem(&f, b.len, &bi, &why), 0);
		assert_true(f.calls >= (int)(b.len / limits[i]));
	}
	/* an error on any call comes back as it is */
	f = (struct memfile){.p = b.buf, .len = b.len, .max_read = 1000};
	assert_int_equal(validate_mem(&f, b.len, &bi, &why), 0);
	calls = f.calls;
	for (n = 1; n <= calls; n++) {
		f = (struct memfile){.p = b.buf,
				     .len = b.len,
				     .max_read = 1000,
				     .fail_call = n,
				     .err = n % 2 ? EIO : ENODATA};
		assert_int_equal(validate_mem(&f, b.len, &bi, &why), n % 2 ? -EIO : -ENODATA);
	}
	/* the header has to fit the caller's buffer */
	f = (struct memfile){.p = b.buf, .len = b.len};
	uint8_t small[4096];
	why = NULL;
	assert_bad(kvfs_block_validate(mem_read, &f, b.len, small, sizeof(small), &bi, &why), why,
		   "does not fit");
	why = NULL;
	assert_bad(kvfs_block_validate(mem_read, &f, b.len, small, 100, &bi, &why), why,
		   "does not fit");
	/* a file too small to hold a header */
	f = (struct memfile){.p = b.buf, .len = 100};
	why = NULL;
	assert_bad(validate_mem(&f, 100, &bi, &why), why, "smaller");
	blk_free(&b);
}

/* Layers bigger than the validator's 1 MiB buffer are read in pieces. */
static void test_validate_big_layers(void **state)
{
	struct kvfs_block_info bi;
	const char *why = NULL;
	struct memfile f;
	struct blk b;
	uint64_t off;

	/* 2 * 1024 * 601 = 1230848 bytes of data, stride 1232896 */
	blk_make(&b, layout(KVFS_KIND_KV, KVFS_DTYPE_INT8, 2, 1, 601, 1024), NULL, 0);
	f = (struct memfile){.p = b.buf, .len = b.len};
	assert_int_equal(validate_mem(&f, b.len, &bi, &why), 0);
	assert_int_equal(bi.layer_stride, 1232896);
	kvfs_block_layer(&bi, 1, &off, NULL);
	b.buf[off + bi.layer_bytes - 1] ^= 1; /* last data byte, in the second piece */
	why = NULL;
	assert_bad(validate_mem(&f, b.len, &bi, &why), why, "layer checksum");
	b.buf[off + bi.layer_bytes - 1] ^= 1;
	b.buf[off + bi.layer_bytes] = 1; /* first padding byte */
	why = NULL;
	assert_bad(validate_mem(&f, b.len, &bi, &why), why, "padding");
	blk_free(&b);
}

/* --- encoder arguments ------------------------------------------------------ */

static void test_encode_errors(void **state)
{
	struct kvfs_layout l = layout(KVFS_KIND_KV, KVFS_DTYPE_F16, 2, 1, 8, 4);
	uint32_t tokens[4] = {1, 2, 3, 4};
	struct kvfs_block_desc d = {.layout = l, .tokens = tokens};
	static const uint8_t not_array[] = {0x01};
	static const uint8_t layer[128]; /* 2 * 4 tokens * 1 head * 8 * 2 bytes */
	const void *layers[2] = {layer, layer};
	uint64_t sums[2] = {0};
	static uint8_t buf[3 * 4096];

	assert_int_equal(kvfs_block_encode(&d, layers, buf, sizeof(buf), NULL), 0);
	assert_int_equal(kvfs_block_encode(&d, layers, buf, sizeof(buf) - 1, NULL), -ENOSPC);
	assert_int_equal(kvfs_block_encode(&d, layers, buf, 4096, NULL), -ENOSPC);
	assert_int_equal(kvfs_block_encode_header(&d, sums, buf, 4095, NULL), -ENOSPC);
	assert_int_equal(kvfs_block_encode_header(&d, NULL, buf, 4096, NULL), -EINVAL);
	assert_int_equal(kvfs_block_encode_header(NULL, sums, buf, 4096, NULL), -EINVAL);
	assert_int_equal(kvfs_block_encode(&d, NULL, buf, sizeof(buf), NULL), -EINVAL);
	layers[1] = NULL;
	assert_int_equal(kvfs_block_encode(&d, layers, buf, sizeof(buf), NULL), -EINVAL);
	layers[1] = layer;

	d.tokens = NULL;
	assert_int_equal(kvfs_block_encode_header(&d, sums, buf, 4096, NULL), -EINVAL);
	d.tokens = tokens;
	d.extra_cbor = not_array;
	d.extra_len = 1;
	assert_int_equal(kvfs_block_encode_header(&d, sums, buf, 4096, NULL), -EINVAL);
	assert_int_equal(kvfs_block_encode(&d, layers, buf, sizeof(buf), NULL), -EINVAL);
	d.extra_cbor = NULL;
	assert_int_equal(kvfs_block_encode_header(&d, sums, buf, 4096, NULL), -EINVAL);
	d.extra_len = 0;
	d.layout.kind = KVFS_KIND_MLA;
	d.layout.num_kv_heads = 2;
	assert_int_equal(kvfs_block_encode_header(&d, sums, buf, 4096, NULL), -EINVAL);
	assert_int_equal(kvfs_block_encode(&d, layers, buf, sizeof(buf), NULL), -EINVAL);
	d.layout = l;
	d.layout.dtype = 42;
	assert_int_equal(kvfs_block_encode_header(&d, sums, buf, 4096, NULL), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dtypes_kinds),   cmocka_unit_test(test_layout_check),
		cmocka_unit_test(test_sizes),	       cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_big_headers),    cmocka_unit_test(test_max_header),
		cmocka_unit_test(test_header_offsets), cmocka_unit_test(test_bad_magic),
		cmocka_unit_test(test_bad_version),    cmocka_unit_test(test_header_checksum),
		cmocka_unit_test(test_layer_checksum), cmocka_unit_test(test_file_size),
		cmocka_unit_test(test_key_mismatch),   cmocka_unit_test(test_bad_fields),
		cmocka_unit_test(test_mla_heads),      cmocka_unit_test(test_layer_table),
		cmocka_unit_test(test_header_bytes),   cmocka_unit_test(test_parse_eagain),
		cmocka_unit_test(test_validate_reads), cmocka_unit_test(test_validate_big_layers),
		cmocka_unit_test(test_encode_errors),
	};

	return cmocka_run_group_tests(tests, setup_good, teardown_good);
}
