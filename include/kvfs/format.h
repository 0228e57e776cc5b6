/*
 * kvfs/format.h — the native KV block file format (DESIGN §4).
 *
 * A block file holds the KV cache of one full block of tokens for every
 * layer of a model. It is a header followed by one segment per layer:
 *
 *   [ header: header_bytes (4096, or a larger multiple of 4096) ]
 *   [ layer 0: layer_stride bytes (layer_bytes of data, zero padded) ]
 *   [ layer 1 ] ... [ layer num_layers-1 ]
 *
 * Every segment starts on a 4 KiB boundary so one layer can be read alone
 * with O_DIRECT or DMA. Inside a segment, for kind KV: the K tensor
 * [tokens][kv_heads][head_dim] followed by the V tensor of the same shape;
 * for kind MLA (multi-head latent attention): one latent vector per token,
 * [tokens][head_dim], and kv_heads is 1.
 *
 * Header layout (all integers little-endian, offsets in bytes):
 *
 *     0  magic            8   "KVFSBLK\0"
 *     8  version          u16 1
 *    10  flags            u16 0 (reserved, must be 0)
 *    12  header_bytes     u32 multiple of 4096
 *    16  file_bytes       u64 header_bytes + num_layers * layer_stride
 *    24  model_id         64  UTF-8, NUL padded, at least one NUL
 *    88  num_layers       u32 1..4096
 *    92  num_kv_heads     u32 >= 1 (1 for MLA)
 *    96  head_dim         u32 >= 1 (latent width for MLA)
 *   100  tokens_per_block u32 1..65536
 *   104  dtype            u16 enum kvfs_dtype
 *   106  kind             u16 enum kvfs_kind
 *   108  num_tokens       u32 == tokens_per_block (only full blocks have keys)
 *   112  key              32  sha256_cbor((parent, tokens, extra)), see keys.h
 *   144  parent           32  the previous block's key, or the chain's root
 *   176  layer_bytes      u64 data bytes per layer segment
 *   184  layer_stride     u64 layer_bytes rounded up to 4096
 *   192  tokens_off       u32 offset in the header of u32 token_ids[num_tokens]
 *   196  extra_off        u32 offset of the extra-keys CBOR (0 if none)
 *   200  extra_len        u32 its length (0: extra keys are CBOR null)
 *   204  layers_off       u32 offset of the layer table
 *   208  reserved         40  zero
 *   248  header_checksum  u64 XXH3-64 of the header_bytes with this field zero
 *   256  ...              token ids, extra keys, layer table (8-byte aligned),
 *                         zero padding to header_bytes
 *
 * Layer table entry i (16 bytes): u64 offset of segment i in the file,
 * u64 XXH3-64 of its layer_bytes of data.
 *
 * All functions return 0 or a negative errno unless stated otherwise; the
 * validators return -EBADMSG for a malformed block and set *why to a short
 * static description of the first problem found.
 */
#ifndef KVFS_FORMAT_H
#define KVFS_FORMAT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kvfs/keys.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVFS_BLOCK_MAGIC        "KVFSBLK"   /* 8 bytes with the NUL */
#define KVFS_BLOCK_MAGIC_BYTES  8
#define KVFS_BLOCK_VERSION      1
#define KVFS_BLOCK_ALIGN        4096u
#define KVFS_BLOCK_FIXED_BYTES  256u        /* fixed part of the header */
#define KVFS_BLOCK_MAX_HEADER   (1u << 20)
#define KVFS_BLOCK_MAX_LAYERS   4096u
#define KVFS_BLOCK_MAX_TOKENS   65536u
#define KVFS_BLOCK_MAX_EXTRA    65536u
#define KVFS_MODEL_ID_BYTES     64

enum kvfs_dtype {
	KVFS_DTYPE_F32 = 1,
	KVFS_DTYPE_F16 = 2,
	KVFS_DTYPE_BF16 = 3,
	KVFS_DTYPE_FP8_E4M3 = 4,
	KVFS_DTYPE_FP8_E5M2 = 5,
	KVFS_DTYPE_INT8 = 6,
	KVFS_DTYPE_UINT8 = 7,
};

enum kvfs_kind {
	KVFS_KIND_KV = 1,  /* separate K and V per layer */
	KVFS_KIND_MLA = 2, /* one latent vector per token per layer */
};

/* The namespace layout: what every block of one model shares. */
struct kvfs_layout {
	char model_id[KVFS_MODEL_ID_BYTES]; /* NUL-terminated */
	uint32_t num_layers;
	uint32_t num_kv_heads;
	uint32_t head_dim;
	uint32_t tokens_per_block;
	uint16_t dtype; /* enum kvfs_dtype */
	uint16_t kind;  /* enum kvfs_kind */
};

/* Bytes per element of @dtype, or 0 if unknown. */
size_t kvfs_dtype_size(unsigned dtype);
/* "f32", "f16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "uint8"; "?" if unknown. */
const char *kvfs_dtype_name(unsigned dtype);
/* @return the dtype for @name, or -EINVAL. */
int kvfs_dtype_parse(const char *name);
/* "kv", "mla"; "?" if unknown. */
const char *kvfs_kind_name(unsigned kind);
/* @return the kind for @name, or -EINVAL. */
int kvfs_kind_parse(const char *name);

/*
 * Check a layout: known dtype and kind, counts in range, kv_heads 1 for MLA,
 * model_id NUL-terminated. @return 0, or -EINVAL and *why set.
 */
int kvfs_layout_check(const struct kvfs_layout *l, const char **why);

/* Data bytes of one layer segment of a block (K and V for KV). */
uint64_t kvfs_layout_layer_bytes(const struct kvfs_layout *l);
/* Header bytes for @l with @extra_len bytes of extra keys (a 4096 multiple). */
uint32_t kvfs_layout_header_bytes(const struct kvfs_layout *l, size_t extra_len);
/* Total file bytes of a block of @l with @extra_len bytes of extra keys. */
uint64_t kvfs_layout_file_bytes(const struct kvfs_layout *l, size_t extra_len);

/* What a block is made of, for the encoder. */
struct kvfs_block_desc {
	struct kvfs_layout layout;
	kvfs_key parent;
	const uint32_t *tokens;    /* layout.tokens_per_block token ids */
	const uint8_t *extra_cbor; /* extra keys (a CBOR array) or NULL */
	size_t extra_len;
};

/* XXH3-64 of one layer segment's data, as the layer table records it. */
uint64_t kvfs_block_layer_checksum(const void *data, size_t len);

/*
 * Write the header of a block described by @d whose layer i has checksum
 * @checksums[i] into @hdr (zeroing all of its kvfs_layout_header_bytes()).
 * The key is computed from parent, tokens and extra keys and stored in the
 * header; it is also returned in @key if not NULL.
 * @return 0; -EINVAL for a bad layout or extra keys; -ENOSPC if @cap is
 * smaller than the header.
 */
int kvfs_block_encode_header(const struct kvfs_block_desc *d, const uint64_t *checksums,
			     void *hdr, size_t cap, kvfs_key *key);

/*
 * Put the checksums of @n layers into the header at @hdr (as
 * kvfs_block_encode_header() wrote it, in a buffer of @cap bytes) and
 * recompute its header checksum: for a writer that fills the layer data
 * after encoding the header (the daemon's saves from device memory).
 * @return 0; -EBADMSG if @hdr is not such a header of @n layers.
 */
int kvfs_block_set_layer_checksums(void *hdr, size_t cap, const uint64_t *checksums, uint32_t n);

/*
 * Write a whole block into @buf: header, then each layer's layer_bytes from
 * @layers[i], zero padded to the stride.
 * @return 0; -EINVAL; -ENOSPC if @cap < kvfs_layout_file_bytes().
 */
int kvfs_block_encode(const struct kvfs_block_desc *d, const void *const *layers, void *buf,
		      size_t cap, kvfs_key *key);

/* A decoded header. Pointers point into the buffer given to the parser. */
struct kvfs_block_info {
	struct kvfs_layout layout;
	uint32_t version;
	uint32_t header_bytes;
	uint64_t file_bytes;
	uint64_t layer_bytes;
	uint64_t layer_stride;
	kvfs_key key;
	kvfs_key parent;
	uint32_t num_tokens;
	const uint8_t *tokens_le;  /* num_tokens little-endian u32 */
	const uint8_t *extra_cbor; /* NULL when extra keys are null */
	uint32_t extra_len;
	const uint8_t *layer_table; /* num_layers entries of 16 bytes */
};

/* True if @buf (of @len bytes) starts with the block magic. */
int kvfs_block_is_native(const void *buf, size_t len);

/* Token @i of a parsed header. */
uint32_t kvfs_block_token(const struct kvfs_block_info *bi, uint32_t i);
/* Offset and checksum of layer @i from the layer table. */
void kvfs_block_layer(const struct kvfs_block_info *bi, uint32_t i, uint64_t *offset,
		      uint64_t *checksum);

/*
 * Parse and check a header: magic, version, header checksum, layout, sizes
 * and offsets consistent with each other and with @file_bytes (the size of
 * the file it came from), layer table offsets, and the key recomputed from
 * parent, tokens and extra keys. @hdr must hold at least header_bytes (the
 * parser reads header_bytes from offset 12 first; if @len is smaller it
 * returns -EAGAIN with *why set and @bi->header_bytes telling how many bytes
 * to reread).
 * @return 0; -EBADMSG with *why; -EAGAIN (see above); -ENOMEM.
 */
int kvfs_block_parse_header(const void *hdr, size_t len, uint64_t file_bytes,
			    struct kvfs_block_info *bi, const char **why);

/*
 * Check layer @i's data (layer_bytes at @data) against its checksum.
 * @return 0 or -EBADMSG with *why; -EINVAL if there is no layer @i.
 */
int kvfs_block_verify_layer(const struct kvfs_block_info *bi, uint32_t i, const void *data,
			    const char **why);

/* Reads @len bytes at @off of the file into @buf; returns bytes read or -errno. */
typedef ssize_t (*kvfs_block_read_fn)(void *ctx, uint64_t off, void *buf, size_t len);

/*
 * Validate a whole block of @file_bytes through @read: the header (read into
 * @hdr_buf, which must hold its header_bytes; KVFS_BLOCK_MAX_HEADER always
 * does), then every layer, streamed through a bounded internal buffer. On
 * success @bi describes the block and points into @hdr_buf.
 * @return 0; -EBADMSG with *why (also when the header does not fit
 * @hdr_cap); -ENOMEM; or the negative errno of @read.
 */
int kvfs_block_validate(kvfs_block_read_fn read, void *ctx, uint64_t file_bytes, void *hdr_buf,
			size_t hdr_cap, struct kvfs_block_info *bi, const char **why);

#ifdef __cplusplus
}
#endif
#endif
