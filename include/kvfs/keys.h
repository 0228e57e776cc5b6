/*
 * kvfs/keys.h — prompt-hash block keys, exactly as vLLM computes them.
 *
 * vLLM's reproducible prefix-cache hash is `sha256_cbor`: SHA-256 over
 * `cbor2.dumps(x, canonical=True)`. The chain is
 *
 *   root      = sha256_cbor(seed)                        seed: text string
 *   key[i]    = sha256_cbor((parent, token_ids, extra))  parent: 32-byte bstr
 *
 * where parent is the root for block 0 and key[i-1] after, token_ids is an
 * array of unsigned integers, and extra is CBOR null or an array (vLLM puts
 * the LoRA adapter, multimodal hashes and, on block 0 only, the cache salt
 * there, in that order; then prompt-embeds digests). Only full blocks have
 * keys. A key computed here names the same prefix as one computed by vLLM or
 * the llm-d router. Extra keys that differ per block (multimodal, prompt
 * embeds) are encoded by the caller and passed to kvfs_key_block().
 *
 * All functions return 0 or a negative errno unless stated otherwise.
 */
#ifndef KVFS_KEYS_H
#define KVFS_KEYS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVFS_KEY_BYTES 32
#define KVFS_KEY_HEX   64 /* hex characters, without the terminating NUL */

typedef struct kvfs_key {
	uint8_t b[KVFS_KEY_BYTES];
} kvfs_key;

/*
 * Root of every chain: sha256_cbor(seed), where @seed is the engine's
 * PYTHONHASHSEED string ("0" encodes as CBOR 61 30).
 * @return 0, -EINVAL if @seed is NULL, -ENOMEM if OpenSSL cannot allocate.
 */
int kvfs_key_root(const char *seed, kvfs_key *out);

/*
 * One block: sha256_cbor((parent, tokens, extra)). @extra_cbor is the
 * canonical CBOR encoding of the extra-keys item (an array), or NULL (with
 * @extra_len 0) for CBOR null.
 * @return 0, -EINVAL if @parent or @out is NULL, @ntokens is 0, or
 * @extra_cbor is not exactly one well-formed, definite-length CBOR array
 * item; -ENOMEM if OpenSSL cannot allocate.
 */
int kvfs_key_block(const kvfs_key *parent, const uint32_t *tokens, size_t ntokens,
		   const uint8_t *extra_cbor, size_t extra_len, kvfs_key *out);

/*
 * One extra key: an integer or a text string (vLLM uses both: the LoRA
 * adapter is its lora_name since vLLM PR #27211, its lora_int_id before).
 */
struct kvfs_extra_item {
	int is_str;      /* 0: use @i, 1: use @s */
	int64_t i;
	const char *s;   /* NUL-terminated UTF-8 */
};

/*
 * Extra keys for a whole chain, built the way vLLM builds them:
 * @items (for example the LoRA adapter) on every block, then @cache_salt on
 * block 0 only. A block whose list comes out empty gets CBOR null.
 */
struct kvfs_key_extra {
	const struct kvfs_extra_item *items;
	size_t nitems;
	const char *cache_salt; /* NULL: no salt */
};

/*
 * Encode the extra-keys array of block @block_index into @buf.
 * @return the number of bytes written (0 means CBOR null: no extra keys),
 * -ENOSPC if @cap is too small, -EINVAL for a NULL string item.
 */
long kvfs_key_extra_encode(const struct kvfs_key_extra *extra, size_t block_index, uint8_t *buf,
			   size_t cap);

/*
 * The chain for a token sequence: keys of the floor(@ntokens/@block_tokens)
 * full blocks, starting from @parent (the root for a fresh sequence, or the
 * last key of an earlier chain to extend it; then @first_index is the index
 * of the first block, which decides whether the cache salt applies).
 * @extra may be NULL. At most @max_out keys are written.
 * @return the number of keys written (>= 0), -EINVAL for bad arguments,
 * -ENOMEM if OpenSSL cannot allocate.
 */
long kvfs_key_chain(const kvfs_key *parent, size_t first_index, const uint32_t *tokens,
		    size_t ntokens, size_t block_tokens, const struct kvfs_key_extra *extra,
		    kvfs_key *out, size_t max_out);

/* Write @key as 64 lowercase hex characters and a NUL into @hex. */
void kvfs_key_to_hex(const kvfs_key *key, char hex[KVFS_KEY_HEX + 1]);

/*
 * Parse exactly 64 hex characters (either case) from @hex; the string must
 * end there. @return 0, -EINVAL otherwise.
 */
int kvfs_key_from_hex(const char *hex, kvfs_key *key);

#ifdef __cplusplus
}
#endif
#endif
