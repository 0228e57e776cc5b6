/*
 * engine/llm/llm.h — the reference engine: a Llama-family decoder with a
 * paged KV cache that reuses contexts through libkvfs.
 *
 * This header is the whole interface of engine/llm/ (used by its own files,
 * the CLI and tests/unit/llm_test.c). The engine sees kvfs only through the
 * public API of include/kvfs/kvfs.h.
 *
 *   eng_st_*      safetensors files: open (mmap, validate), read a tensor as f32
 *   eng_model_*   config.json + model.safetensors → weights in memory
 *   eng_tok_*     the byte-level tokenizer (token = byte, vocabulary 256)
 *   eng_rmsnorm, eng_rope*, ...  the numeric kernels that are not BLAS
 *   eng_kv_*      the paged KV pool: fixed-size blocks, per-sequence tables
 *   eng_open, eng_generate, ...  one engine: prefill, decode, load, save
 *
 * All functions returning int return 0 or a negative errno; those taking
 * @err write a one-line description of a failure there.
 */
#ifndef KVFS_ENGINE_LLM_H
#define KVFS_ENGINE_LLM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvfs/kvfs.h"

#define ENG_ERR_LEN	    256
#define ENG_MAX_DIMS	    8
#define ENG_MAX_HEADER	    (100u << 20) /* safetensors header bytes we accept */
#define ENG_TOKENIZER_VOCAB 256

/* --- safetensors ------------------------------------------------------------- */

enum eng_dtype {
	ENG_F32 = 1,
	ENG_F16 = 2,
	ENG_BF16 = 3,
};

struct eng_st_tensor {
	const char *name; /* points into the parsed header */
	int dtype;	  /* enum eng_dtype */
	int ndim;
	uint64_t shape[ENG_MAX_DIMS];
	uint64_t begin, end; /* byte range inside the data section */
};

struct eng_st {
	void *map; /* the whole file, read-only */
	size_t size;
	const uint8_t *data; /* the data section: after the 8 + header bytes */
	size_t data_len;
	void *json; /* the header (json_t *), owns the tensor names */
	struct eng_st_tensor *t;
	size_t n;
};

/*
 * Map and validate a safetensors file: header length within the file,
 * well-formed JSON, every tensor with a known dtype, a shape whose bytes
 * match its data_offsets, offsets inside the data section, no overlaps and
 * no holes. @return 0; -EINVAL (malformed, *err says how); or an errno of
 * open/fstat/mmap.
 */
int eng_st_open(const char *path, struct eng_st *st, char *err, size_t errlen);
void eng_st_close(struct eng_st *st);
const struct eng_st_tensor *eng_st_find(const struct eng_st *st, const char *name);

/*
 * Copy tensor @name, which must have exactly the @ndim dimensions @shape,
 * into @dst as float32 (F16 and BF16 are converted).
 * @return 0; -ENOENT (missing); -EINVAL (wrong shape).
 */
int eng_st_read_f32(const struct eng_st *st, const char *name, int ndim, const uint64_t *shape,
		    float *dst, char *err, size_t errlen);

/* Half-precision conversions used by the loader (and the generator's tests). */
float eng_f16_to_f32(uint16_t h);
float eng_bf16_to_f32(uint16_t h);

/* --- the model ----------------------------------------------------------------- */

struct eng_config {
	uint32_t hidden;       /* hidden_size */
	uint32_t intermediate; /* intermediate_size */
	uint32_t layers;       /* num_hidden_layers */
	uint32_t heads;	       /* num_attention_heads */
	uint32_t kv_heads;     /* num_key_value_heads */
	uint32_t head_dim;     /* head_dim, or hidden / heads */
	uint32_t vocab;	       /* vocab_size */
	uint32_t max_pos;      /* max_position_embeddings */
	float rms_eps;	       /* rms_norm_eps */
	double rope_theta;     /* rope_theta */
	bool tie;	       /* tie_word_embeddings */
};

/* Parse and check a Llama-style config.json held in @text. @return 0; -EINVAL. */
int eng_config_parse(const char *text, size_t len, struct eng_config *c, char *err, size_t errlen);

struct eng_layer_w {
	float *attn_norm; /* [H] */
	float *wqkv;	  /* [(heads + 2 kv_heads) * head_dim][H]: q, k, v rows stacked */
	float *wo;	  /* [H][heads * head_dim] */
	float *mlp_norm;  /* [H] */
	float *wgu;	  /* [2 I][H]: gate rows then up rows */
	float *wd;	  /* [H][I] */
};

struct eng_model {
	struct eng_config cfg;
	float *embed;	/* [V][H] */
	float *norm;	/* [H] */
	float *lm_head; /* [V][H]; == embed when tied */
	struct eng_layer_w *layer;
	float *rope_cos, *rope_sin; /* [max_pos][head_dim / 2] */
	uint64_t fingerprint;	    /* XXH3-64 of config.json and the weights file */
};

/* Load DIR/config.json and DIR/model.safetensors. @return 0; -EINVAL; -ENOMEM; errno. */
int eng_model_load(const char *dir, struct eng_model **out, char *err, size_t errlen);
void eng_model_free(struct eng_model *m);

/* --- tokenizer ---------------------------------------------------------------------- */

/* One token per byte of @text. @return the number of tokens (== @len). */
size_t eng_tok_encode(const char *text, size_t len, uint32_t *out);
/*
 * Bytes of @n tokens into @out (which holds @n bytes); a token that is not a
 * byte (>= 256) becomes '?'. @return the number of bytes written (== @n).
 */
size_t eng_tok_decode(const uint32_t *tok, size_t n, char *out);

/* A growing token sequence: a conversation, a document. Zero-initialise; free(t). */
struct eng_toks {
	uint32_t *t;
	size_t n, cap;
};

/* Append @n tokens. @return 0; -ENOMEM (nothing appended). */
int eng_toks_append(struct eng_toks *s, const uint32_t *t, size_t n);

/* --- numeric kernels ------------------------------------------------------------------ */

/* out = x / sqrt(mean(x^2) + eps) * w, over @n elements (accumulated in double). */
void eng_rmsnorm(float *out, const float *x, const float *w, size_t n, float eps);

/*
 * Rotary tables, Llama's rotate-half convention: for position p and pair i
 * (i < head_dim / 2), angle = p * theta^(-2i / head_dim);
 * cos[p * head_dim / 2 + i], sin[...] (computed in double, stored as float).
 */
void eng_rope_table(float *cos_t, float *sin_t, uint32_t max_pos, uint32_t head_dim, double theta);
/* Rotate @nheads heads of @head_dim at one position: x[i], x[i + d/2] pairs. */
void eng_rope(float *x, uint32_t nheads, uint32_t head_dim, const float *cos_row,
	      const float *sin_row);
/* act[i] = silu(gate[i]) * up[i]. */
void eng_silu_mul(float *act, const float *gate, const float *up, size_t n);
/* Index of the largest of @n values (the first on ties). */
uint32_t eng_argmax(const float *x, size_t n);

/* --- paged KV cache ------------------------------------------------------------------- */

/*
 * A pool of @nblocks blocks of @block_tokens tokens for every layer, K and V
 * separate (kvfs kind KV). Block b of layer l's K starts at
 * pages[l].k + b * block_stride; token t of it t * token_stride further; a
 * token row is kv_heads * head_dim floats. The memory comes from
 * kvfs_alloc() when a namespace is given (so the fast path can fill it),
 * else from mmap.
 */
struct eng_kv {
	uint32_t layers, kv_heads, head_dim, block_tokens, nblocks;
	size_t row_floats;   /* kv_heads * head_dim */
	size_t block_floats; /* block_tokens * row_floats */
	float *mem;
	size_t bytes;
	kvfs_ns *ns; /* owner of mem, or NULL */
	struct kvfs_kv_layer *layer;
	struct kvfs_kv_pages pages;
	uint32_t *free_ids; /* a stack of free block ids */
	uint32_t nfree;
};

int eng_kv_init(struct eng_kv *kv, uint32_t layers, uint32_t kv_heads, uint32_t head_dim,
		uint32_t block_tokens, uint32_t nblocks, kvfs_ns *ns);
void eng_kv_destroy(struct eng_kv *kv);
/* @return 0 and *id; -ENOSPC when the pool is exhausted. */
int eng_kv_alloc_block(struct eng_kv *kv, uint32_t *id);
void eng_kv_free_block(struct eng_kv *kv, uint32_t id);

/* The K (v = 0) or V (v = 1) row of position @pos of a sequence with block table @table. */
float *eng_kv_row(const struct eng_kv *kv, uint32_t layer, int v, const uint32_t *table,
		  size_t pos);
/* Write one position's K and V rows (row_floats each). */
void eng_kv_scatter(const struct eng_kv *kv, uint32_t layer, const uint32_t *table, size_t pos,
		    const float *k, const float *v);
/*
 * Gather positions [0, @n) of kv head @head into contiguous [n][head_dim]
 * matrices @k and @v (either may be NULL), then zero positions [@n, @upto).
 */
void eng_kv_gather(const struct eng_kv *kv, uint32_t layer, const uint32_t *table, size_t n,
		   size_t upto, uint32_t head, float *k, float *v);

/* --- the engine ------------------------------------------------------------------------ */

struct eng_opts {
	uint32_t block_tokens; /* tokens per KV block (and per kvfs block) */
	uint32_t chunk_tokens; /* prefill rows per matrix product; multiple of block_tokens */
	const char *cache_dir; /* kvfs namespace directory, or NULL for no cache */
	const char *seed;      /* hash seed (vLLM's PYTHONHASHSEED) */
	unsigned path;	       /* enum kvfs_path */
	unsigned save_queue;   /* 0: enough for the longest sequence */
	unsigned threads;      /* OpenBLAS threads (process-wide); 0: 2 */
};

/* What one request did and cost. */
struct eng_req_stats {
	size_t prompt_tokens;
	size_t matched_blocks; /* blocks kvfs_match_prefix held */
	size_t reused_tokens;  /* tokens whose KV came from the cache (0 after a fallback) */
	size_t computed_tokens;
	size_t generated;
	size_t saved_blocks; /* blocks handed to kvfs_save (queued or present) */
	int load_error;	     /* the load's error (0 if none) */
	bool fallback;	     /* the load failed and the whole prompt was recomputed */
	double ttft_ms;	     /* request start to the first token */
	double match_ms;     /* keys + prefix match + load start */
	double stall_ms;     /* prefill time spent waiting for loaded layers */
	double prefill_ms;   /* prefill (compute, including stalls) */
	double decode_ms;    /* the remaining tokens */
	double save_ms;	     /* kvfs_save calls and the final flush */
};

struct eng;

int eng_open(const struct eng_model *m, const struct eng_opts *o, struct eng **out, char *err,
	     size_t errlen);
void eng_close(struct eng *e);
/* The namespace, or NULL without a cache. */
kvfs_ns *eng_ns(const struct eng *e);
/* The model id used in the namespace layout. */
const char *eng_model_id(const struct eng *e);

/*
 * Serve one request: @prompt (@n tokens), greedy decoding of @max_new tokens
 * into @out (which holds @max_new). If @logits is not NULL it receives the
 * vocab logits of the last prompt position. Cached blocks are matched and
 * loaded, the rest computed, new full blocks saved; saves are flushed before
 * returning. @return 0; -EINVAL (empty prompt, too long for
 * max_position_embeddings); -ENOMEM; -ENOSPC (KV pool).
 */
int eng_generate(struct eng *e, const uint32_t *prompt, size_t n, size_t max_new, uint32_t *out,
		 float *logits, struct eng_req_stats *st);

/*
 * Measure loading alone: match the cached prefix of @prompt and load it into
 * fresh engine blocks, without computing anything. *blocks gets the blocks
 * loaded. @return 0; the load's error; -EINVAL without a cache.
 */
int eng_probe_load(struct eng *e, const uint32_t *prompt, size_t n, size_t *blocks, double *ms);

/* Wall-clock milliseconds (CLOCK_MONOTONIC). */
double eng_now_ms(void);

/* The `bench` subcommand (engine/llm/bench.c). @return an exit status. */
int eng_bench_main(int argc, char **argv);

#endif
