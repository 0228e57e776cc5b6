/*
 * tests/fuzz/fuzz_block.c — the native block parser and validator
 * (core/format.c) and, through the extra keys, the CBOR decoding of
 * core/keys.c.
 *
 * Input: one mode byte, then the bytes of a block file. Checksums and the key
 * would stop almost every mutation at the first check, so the mode byte asks
 * the harness to repair some of them first, the way a writer that means harm
 * would (it can always compute them):
 *   bit 0  recompute the header checksum (last)
 *   bit 1  recompute the key from parent, tokens and extra keys
 *   bit 2  recompute the layer checksums the table names
 *   bits 4-5  what the file claims to be: 0 its length, 1 one byte more
 *          (the reader hits end of file), 2 one byte less, 3 its length
 *          read back in odd-sized pieces
 *
 * Oracles besides the sanitizers:
 *   - the validator accepts only what the header parser accepts, and then
 *     every layer verifies alone (kvfs_block_verify_layer) and every offset
 *     lies inside the file;
 *   - a header the parser accepts is canonical: encoding its description
 *     again (kvfs_block_encode_header) gives back the same bytes.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <xxhash.h>

#include "kvfs/format.h"
#include "kvfs/keys.h"
#include "tests/fuzz/fuzz.h"


struct src {
	const uint8_t *b;
	size_t n;
	size_t piece; /* 0: as much as asked */
};

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static ssize_t src_read(void *ctx, uint64_t off, void *buf, size_t len)
{
	struct src *s = ctx;
	size_t n;

	if (off >= s->n)
		return 0;
	n = s->n - (size_t)off < len ? s->n - (size_t)off : len;
	if (s->piece && n > s->piece)
		n = s->piece;
	memcpy(buf, s->b + off, n);
	return (ssize_t)n;
}

/* The header's own idea of its size, if it is one a parser would read. */
static uint32_t claimed_hb(const uint8_t *b, size_t n)
{
	uint32_t hb;

	if (n < KVFS_BLOCK_ALIGN)
		return 0;
	hb = get32(b + 12);
	if (hb < KVFS_BLOCK_ALIGN || hb % KVFS_BLOCK_ALIGN || hb > KVFS_BLOCK_MAX_HEADER || hb > n)
		return 0;
	return hb;
}

static void fix_key(uint8_t *b, uint32_t hb)
{
	uint32_t toff = get32(b + 192), ntok = get32(b + 108), eoff = get32(b + 196),
		 elen = get32(b + 200);
	uint32_t *tokens;
	kvfs_key parent, key;

	if (ntok == 0 || ntok > KVFS_BLOCK_MAX_TOKENS || toff > hb || 4ull * ntok > hb - toff)
		return;
	if (elen && (eoff > hb || elen > hb - eoff))
		return;
	tokens = malloc(4ull * ntok);
	if (!tokens)
		return;
	for (uint32_t i = 0; i < ntok; i++)
		tokens[i] = get32(b + toff + 4ull * i);
	memcpy(parent.b, b + 144, KVFS_KEY_BYTES);
	if (kvfs_key_block(&parent, tokens, ntok, elen ? b + eoff : NULL, elen, &key) == 0)
		memcpy(b + 112, key.b, KVFS_KEY_BYTES);
	free(tokens);
}

static void fix_layers(uint8_t *b, size_t n, uint32_t hb)
{
	uint32_t loff = get32(b + 204), nl = get32(b + 88);
	uint64_t lb = get64(b + 176);

	if (nl > KVFS_BLOCK_MAX_LAYERS || loff > hb || 16ull * nl > hb - loff)
		return;
	for (uint32_t i = 0; i < nl; i++) {
		uint8_t *e = b + loff + 16ull * i;
		uint64_t off = get64(e);

		if (off <= n && lb <= n - off)
			put64(e + 8, XXH3_64bits(b + off, (size_t)lb));
	}
}

static void fix_header_checksum(uint8_t *b, uint32_t hb)
{
	memset(b + 248, 0, 8);
	put64(b + 248, XXH3_64bits(b, hb));
}

/* A parsed header, encoded again, must be the same bytes. */
static void check_canonical(const uint8_t *b, const struct kvfs_block_info *bi)
{
	struct kvfs_block_desc d = {.layout = bi->layout, .parent = bi->parent};
	uint32_t nl = bi->layout.num_layers, *tokens;
	uint64_t *sums;
	uint8_t *out;
	kvfs_key key;
	int rc;

	tokens = malloc(4ull * bi->num_tokens);
	sums = malloc(8ull * nl);
	out = malloc(bi->header_bytes);
	CHECK(tokens && sums && out);
	for (uint32_t i = 0; i < bi->num_tokens; i++)
		tokens[i] = kvfs_block_token(bi, i);
	for (uint32_t i = 0; i < nl; i++)
		kvfs_block_layer(bi, i, NULL, &sums[i]);
	d.tokens = tokens;
	d.extra_cbor = bi->extra_cbor;
	d.extra_len = bi->extra_len;
	CHECK(kvfs_layout_header_bytes(&bi->layout, bi->extra_len) == bi->header_bytes);
	CHECK(kvfs_layout_file_bytes(&bi->layout, bi->extra_len) == bi->file_bytes);
	rc = kvfs_block_encode_header(&d, sums, out, bi->header_bytes, &key);
	CHECK(rc == 0);
	CHECK(memcmp(out, b, bi->header_bytes) == 0);
	CHECK(memcmp(key.b, bi->key.b, KVFS_KEY_BYTES) == 0);
	free(out);
	free(sums);
	free(tokens);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kvfs_block_info bi, vi;
	const char *why = NULL, *vwhy = NULL;
	struct src s;
	uint64_t file_bytes;
	size_t n, cap;
	uint8_t mode, *b, *hdr;
	uint32_t hb;
	int rc, vrc;

	if (size < 1)
		return 0;
	mode = data[0];
	n = size - 1;
	b = malloc(n ? n : 1);
	CHECK(b);
	memcpy(b, data + 1, n);
	hb = claimed_hb(b, n);
	if (hb) {
		if (mode & 2)
			fix_key(b, hb);
		if (mode & 4)
			fix_layers(b, n, hb);
		if (mode & 1)
			fix_header_checksum(b, hb);
	}
	(void)kvfs_block_is_native(b, n);

	file_bytes = n;
	s = (struct src){.b = b, .n = n};
	switch ((mode >> 4) & 3) {
	case 1:
		file_bytes = (uint64_t)n + 1;
		break;
	case 2:
		file_bytes = n ? n - 1 : 0;
		s.n = (size_t)file_bytes;
		break;
	case 3:
		s.piece = 1 + (size_t)(mode >> 6) * 1021;
		break;
	}

	rc = kvfs_block_parse_header(b, s.n, file_bytes, &bi, &why);
	CHECK(rc == 0 || rc == -EBADMSG || rc == -EAGAIN);
	CHECK(rc == 0 || why);
	if (rc == 0) {
		CHECK(bi.header_bytes <= s.n && bi.file_bytes == file_bytes);
		check_canonical(b, &bi);
	}

	/* The validator's header buffer: as large as the file, bounded. */
	cap = file_bytes < KVFS_BLOCK_ALIGN ? KVFS_BLOCK_ALIGN : (size_t)file_bytes;
	if (cap > KVFS_BLOCK_MAX_HEADER)
		cap = KVFS_BLOCK_MAX_HEADER;
	hdr = malloc(cap);
	CHECK(hdr);
	vrc = kvfs_block_validate(src_read, &s, file_bytes, hdr, cap, &vi, &vwhy);
	CHECK(vrc == 0 || vrc == -EBADMSG);
	CHECK(vrc == 0 || vwhy);
	if (vrc == 0) {
		uint64_t stride = vi.layer_stride;

		CHECK(rc == 0); /* a valid block has a valid header */
		CHECK(vi.file_bytes == file_bytes && file_bytes <= s.n);
		CHECK(vi.header_bytes + stride * vi.layout.num_layers == file_bytes);
		for (uint32_t i = 0; i < vi.layout.num_layers; i++) {
			uint64_t off;

			kvfs_block_layer(&vi, i, &off, NULL);
			CHECK(off <= file_bytes && vi.layer_bytes <= file_bytes - off);
			CHECK(kvfs_block_verify_layer(&vi, i, b + off, &why) == 0);
		}
		CHECK(kvfs_block_verify_layer(&vi, vi.layout.num_layers, b, &why) == -EINVAL);
	}
	free(hdr);
	free(b);
	return 0;
}
