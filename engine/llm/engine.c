/*
 * engine/llm/engine.c — the forward pass, and reusing contexts through kvfs.
 *
 * One engine serves one request at a time: a fresh sequence with its own
 * block table in the paged pool (kv.c). A request is
 *
 *   1. keys of the prompt's full blocks (kvfs_ns_keys), the longest cached
 *      prefix (kvfs_match_prefix), engine blocks for it, kvfs_load_start;
 *   2. prefill of the rest, layer by layer, waiting for each loaded layer
 *      (kvfs_load_wait) just before that layer's attention, so layer l+1
 *      loads while layer l computes; a failed load is a miss: the whole
 *      prompt is recomputed;
 *   3. kvfs_save of the new full blocks, greedy decoding, and kvfs_save of
 *      each block decoding completes.
 *
 * Exactness. The KV of a cached prefix must be bit-for-bit what recomputing
 * it would give, so the logits after a load equal those of a full
 * recomputation. Three rules make that true:
 *
 *   - Fixed shapes. Every matrix product of the prefill runs on a chunk of
 *     exactly chunk_tokens rows (a multiple of block_tokens), chunks aligned
 *     to absolute positions, rows that are not part of this call zero
 *     (padding). With the same shapes a GEMM's output row depends only on
 *     that row of its input (BLAS blocking depends on shapes, never on
 *     values), so position p computes the same bits whichever other rows —
 *     cached, padding or real — share its chunk. Attention runs per block
 *     of block_tokens query rows against keys [0, end of that block),
 *     gathered from the pages (positions not written yet are zero, and
 *     masked), so its shapes depend only on the block's position.
 *   - Canonical blocks. Decoding one token uses M=1 products, whose bits
 *     differ from a chunk's. So when decoding completes a block, that block
 *     is recomputed as a chunk (the "canonical" KV) before it is saved —
 *     in every mode, cache or not, so decoding itself is identical with and
 *     without a cache. Prompt blocks are canonical by construction.
 *   - Layer-major prefill. All chunks of layer l, then layer l+1: the same
 *     per-row operations as chunk-major order, and the order that lets a
 *     layer-wise load overlap.
 *
 * The bits therefore depend on the weights, the chunk and block sizes, and
 * the BLAS: its kernels (chosen per CPU) and its thread count (OpenBLAS
 * splits a product among threads by shape, so 1 and 2 threads round
 * differently). The model id in the kvfs layout carries all of them —
 * weights' fingerprint, chunk, threads, BLAS core — so blocks computed one
 * way are never loaded by an engine that would compute them another way: a
 * miss, not a mismatch. The block size is in the layout itself.
 *
 * Threads: the caller's thread runs the engine; OpenBLAS has its own
 * threads; libkvfs runs a loader thread per load and one saver per
 * namespace.
 */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/llm/llm.h"

#define DEFAULT_CHUNK 64 /* rows per prefill product unless told otherwise */

struct eng {
	const struct eng_model *m;
	struct eng_opts o;
	kvfs_ns *ns;
	char model_id[KVFS_MODEL_ID_BYTES];
	struct eng_kv kv;
	size_t max_tokens; /* max_position_embeddings */
	size_t max_rows;   /* max_tokens rounded up to a chunk */
	/* scratch */
	float *x;	/* [max_rows][H] residual stream of a prefill range */
	float *q;	/* [max_rows][heads * D] its queries (after RoPE) */
	float *xn;	/* [C][H] */
	float *qkv;	/* [C][(heads + 2 kv_heads) D] */
	float *att;	/* [C][heads * D] attention output */
	float *gu;	/* [C][2 F] */
	float *act;	/* [C][F] */
	float *tmp;	/* [C][H] */
	float *qg;	/* [group * C][D] queries of one kv head's group */
	float *og;	/* [group * C][D] */
	float *s;	/* [group * C][max_rows] scores, then probabilities */
	float *kc, *vc; /* [kv_heads][max_rows][D] one layer's context, contiguous */
	float *logits;	/* [V] */
};

/* One request's sequence. */
struct seq {
	uint32_t *tok;
	size_t n;	 /* tokens with KV (or being computed) */
	uint32_t *table; /* block table */
	size_t nblocks;
	kvfs_key *keys; /* keys of full blocks (with a cache) */
};

double eng_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static float *falloc(size_t n)
{
	return aligned_alloc(64, ((n ? n : 1) * sizeof(float) + 63) / 64 * 64);
}

/* y[M][N] = x[M][K] . W[N][K]^T (W as Hugging Face stores it: out x in). */
static void linear(size_t M, size_t N, size_t K, const float *x, const float *w, float *y)
{
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, x,
		    (int)K, w, (int)K, 0.0f, y, (int)N);
}

static void add(float *x, const float *y, size_t n)
{
	for (size_t i = 0; i < n; i++)
		x[i] += y[i];
}

/*
 * Softmax and dot products run in LANES independent lanes (GCC vector
 * extensions: SIMD on any x86-64, no intrinsics), combined in a fixed
 * order, so a row gives the same bits every time it is computed.
 */
#define LANES 4
typedef float vfloat __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(LANES * sizeof(int32_t))));

static inline vfloat vload(const float *p)
{
	vfloat v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static inline void vstore(float *p, vfloat v)
{
	memcpy(p, &v, sizeof(v));
}

static inline vfloat vmax(vfloat a, vfloat b)
{
	vint m = a > b;

	return (vfloat)(((vint)a & m) | ((vint)b & ~m));
}

/*
 * exp(x) for x <= 0, lane by lane: Cephes' expf (range reduction by ln 2, a
 * degree-6 polynomial, about 1 ulp). Inputs below -87 give exp(-87) ~ 1.6e-38,
 * nothing next to the softmax's largest term (1).
 */
static inline vfloat vexp_nonpos(vfloat x)
{
	const vfloat zero = {0};
	const float round = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
	vfloat n, r, p;
	vint bits;

	x = vmax(x, zero - 87.0f);
	n = (x * 1.44269504088896341f + round) - round;
	r = x - n * 0.693359375f + n * 2.12194440e-4f;
	p = zero + 1.9875691500e-4f;
	p = p * r + 1.3981999507e-3f;
	p = p * r + 8.3334519073e-3f;
	p = p * r + 4.1665795894e-2f;
	p = p * r + 1.6666665459e-1f;
	p = p * r + 5.0000001201e-1f;
	p = p * r * r + r + 1.0f;
	bits = (__builtin_convertvector(n, vint) + 127) << 23;
	return p * (vfloat)bits;
}

static float hsum(vfloat v)
{
	float s = 0;

	for (int j = 0; j < LANES; j++)
		s += v[j];
	return s;
}

/* Softmax of row[0..valid) in place; row[valid..n) = 0. */
static void softmax_masked(float *row, size_t valid, size_t n)
{
	const vfloat zero = {0};
	size_t i, body = valid / LANES * LANES;
	vfloat mx = zero + row[0], sum = zero, tail = zero;
	float m, inv;

	for (i = 0; i < body; i += LANES)
		mx = vmax(mx, vload(row + i));
	m = mx[0];
	for (int j = 1; j < LANES; j++)
		m = mx[j] > m ? mx[j] : m;
	for (i = body; i < valid; i++)
		m = row[i] > m ? row[i] : m;
	for (i = 0; i < body; i += LANES) {
		vfloat e = vexp_nonpos(vload(row + i) - m);

		vstore(row + i, e);
		sum += e;
	}
	/* The tail, padded to a full vector of lanes that contribute 0. */
	for (i = body; i < valid; i++)
		tail[i - body] = row[i] - m;
	tail = vexp_nonpos(tail);
	for (i = body; i < valid; i++) {
		row[i] = tail[i - body];
		sum[i - body] += row[i];
	}
	inv = 1.0f / hsum(sum);
	for (i = 0; i < body; i += LANES)
		vstore(row + i, vload(row + i) * inv);
	for (i = body; i < valid; i++)
		row[i] *= inv;
	memset(row + valid, 0, (n - valid) * sizeof(float));
}

/* A dot product in LANES lanes, summed in a fixed order. */
static float dot(const float *a, const float *b, size_t n)
{
	vfloat acc = {0};
	float rest = 0;
	size_t i = 0;

	for (; i + LANES <= n; i += LANES)
		acc += vload(a + i) * vload(b + i);
	for (; i < n; i++)
		rest += a[i] * b[i];
	return hsum(acc) + rest;
}

/* --- prefill: positions [p0, p1), chunked, layer-major ----------------------------- */

/*
 * Attention of one block of query rows (range rows b0.., positions qpos..
 * qpos + T) against keys [0, qpos + T) of the gathered context. Its shapes
 * depend only on qpos, so a position's attention is the same bits in any
 * chunk; rows outside [p0, p1) are padding and left zero, a block with no
 * real row is skipped.
 */
static void attend_block(struct eng *e, size_t b0, size_t qpos, size_t p0, size_t p1)
{
	const struct eng_config *c = &e->m->cfg;
	const size_t T = e->o.block_tokens, D = c->head_dim, K = c->kv_heads;
	const size_t G = c->heads / K, QD = c->heads * D, kend = qpos + T;
	const float scale = 1.0f / sqrtf((float)D);

	if (qpos + T <= p0 || qpos >= p1)
		return;
	for (size_t h = 0; h < K; h++) {
		const float *kc = e->kc + h * e->max_rows * D;
		const float *vc = e->vc + h * e->max_rows * D;
		float *att = e->att + (b0 % e->o.chunk_tokens) * QD;

		for (size_t g = 0; g < G; g++)
			for (size_t r = 0; r < T; r++)
				memcpy(e->qg + (g * T + r) * D,
				       e->q + (b0 + r) * QD + (h * G + g) * D, D * sizeof(float));
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(G * T), (int)kend,
			    (int)D, scale, e->qg, (int)D, kc, (int)D, 0.0f, e->s, (int)kend);
		for (size_t g = 0; g < G; g++)
			for (size_t r = 0; r < T; r++) {
				size_t p = qpos + r;
				float *row = e->s + (g * T + r) * kend;

				if (p < p0 || p >= p1)
					memset(row, 0, kend * sizeof(float));
				else
					softmax_masked(row, p + 1, kend);
			}
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(G * T), (int)D,
			    (int)kend, 1.0f, e->s, (int)kend, vc, (int)D, 0.0f, e->og, (int)D);
		for (size_t g = 0; g < G; g++)
			for (size_t r = 0; r < T; r++) {
				size_t p = qpos + r;

				if (p >= p0 && p < p1)
					memcpy(att + r * QD + (h * G + g) * D,
					       e->og + (g * T + r) * D, D * sizeof(float));
			}
	}
}

/*
 * Compute positions [p0, p1) of @s (whose KV for positions < p0 is in the
 * pages, or arrives there through @ld layer by layer). Writes their KV into
 * the pages; with @logits, the logits of position p1 - 1.
 * @return 0; -EAGAIN when waiting for a loaded layer failed (*load_rc says
 * why; nothing computed is usable).
 */
static int prefill(struct eng *e, const struct seq *s, size_t p0, size_t p1, kvfs_load *ld,
		   int *load_rc, double *stall_ms, float *logits)
{
	const struct eng_model *m = e->m;
	const struct eng_config *c = &m->cfg;
	const size_t C = e->o.chunk_tokens, H = c->hidden, D = c->head_dim, F = c->intermediate;
	const size_t A = c->heads, K = c->kv_heads, QD = A * D, KD = K * D;
	const size_t QKV = QD + 2 * KD, half = D / 2, T = e->o.block_tokens;
	const size_t cs = p0 / C * C, ce = (p1 + C - 1) / C * C, rows = ce - cs;

	/* Embeddings of the real rows; padding rows are zero and stay zero. */
	memset(e->x, 0, rows * H * sizeof(float));
	memset(e->q, 0, rows * QD * sizeof(float));
	for (size_t p = p0; p < p1; p++)
		memcpy(e->x + (p - cs) * H, m->embed + (size_t)s->tok[p] * H, H * sizeof(float));

	for (uint32_t l = 0; l < c->layers; l++) {
		const struct eng_layer_w *w = &m->layer[l];

		/* A: projections of every chunk; K and V go to the pages. */
		for (size_t c0 = 0; c0 < rows; c0 += C) {
			for (size_t r = 0; r < C; r++)
				eng_rmsnorm(e->xn + r * H, e->x + (c0 + r) * H, w->attn_norm, H,
					    c->rms_eps);
			linear(C, QKV, H, e->xn, w->wqkv, e->qkv);
			for (size_t r = 0; r < C; r++) {
				size_t p = cs + c0 + r;
				float *qr = e->qkv + r * QKV, *kr = qr + QD, *vr = kr + KD;

				if (p < p0 || p >= p1)
					continue;
				eng_rope(qr, (uint32_t)A, (uint32_t)D, m->rope_cos + p * half,
					 m->rope_sin + p * half);
				eng_rope(kr, (uint32_t)K, (uint32_t)D, m->rope_cos + p * half,
					 m->rope_sin + p * half);
				memcpy(e->q + (c0 + r) * QD, qr, QD * sizeof(float));
				eng_kv_scatter(&e->kv, l, s->table, p, kr, vr);
			}
		}
		/* The cached prefix of this layer must be in place before attention. */
		if (ld) {
			double t = eng_now_ms();
			int rc = kvfs_load_wait(ld, l);

			*stall_ms += eng_now_ms() - t;
			if (rc) {
				*load_rc = rc;
				return -EAGAIN;
			}
		}
		for (size_t h = 0; h < K; h++)
			eng_kv_gather(&e->kv, l, s->table, p1, ce, (uint32_t)h,
				      e->kc + h * e->max_rows * D, e->vc + h * e->max_rows * D);

		/* B: attention, output projection and MLP, chunk by chunk. */
		for (size_t c0 = 0; c0 < rows; c0 += C) {
			memset(e->att, 0, C * QD * sizeof(float));
			for (size_t b0 = c0; b0 < c0 + C; b0 += T)
				attend_block(e, b0, cs + b0, p0, p1);
			float *xc = e->x + c0 * H;

			linear(C, H, QD, e->att, w->wo, e->tmp);
			add(xc, e->tmp, C * H);
			for (size_t r = 0; r < C; r++)
				eng_rmsnorm(e->xn + r * H, xc + r * H, w->mlp_norm, H, c->rms_eps);
			linear(C, 2 * F, H, e->xn, w->wgu, e->gu);
			for (size_t r = 0; r < C; r++)
				eng_silu_mul(e->act + r * F, e->gu + r * 2 * F,
					     e->gu + r * 2 * F + F, F);
			linear(C, H, F, e->act, w->wd, e->tmp);
			add(xc, e->tmp, C * H);
		}
	}
	if (logits) {
		eng_rmsnorm(e->xn, e->x + (p1 - 1 - cs) * H, m->norm, H, c->rms_eps);
		linear(1, c->vocab, H, e->xn, m->lm_head, logits);
	}
	return 0;
}

/* --- decode: one position, M=1 ---------------------------------------------------------- */

static void decode_step(struct eng *e, const struct seq *s, size_t pos, float *logits)
{
	const struct eng_model *m = e->m;
	const struct eng_config *c = &m->cfg;
	const size_t H = c->hidden, D = c->head_dim, F = c->intermediate, A = c->heads;
	const size_t K = c->kv_heads, G = A / K, QD = A * D, KD = K * D, half = D / 2;
	const size_t T = e->o.block_tokens, ctx = pos + 1;
	const float scale = 1.0f / sqrtf((float)D);
	float *x = e->x, *sc = e->s;

	memcpy(x, m->embed + (size_t)s->tok[pos] * H, H * sizeof(float));
	for (uint32_t l = 0; l < c->layers; l++) {
		const struct eng_layer_w *w = &m->layer[l];
		float *q = e->qkv, *k = q + QD, *v = k + KD;

		eng_rmsnorm(e->xn, x, w->attn_norm, H, c->rms_eps);
		linear(1, QD + 2 * KD, H, e->xn, w->wqkv, e->qkv);
		eng_rope(q, (uint32_t)A, (uint32_t)D, m->rope_cos + pos * half,
			 m->rope_sin + pos * half);
		eng_rope(k, (uint32_t)K, (uint32_t)D, m->rope_cos + pos * half,
			 m->rope_sin + pos * half);
		eng_kv_scatter(&e->kv, l, s->table, pos, k, v);
		/* Attention through the block table; each K/V row serves the G
		 * query heads that share it. */
		for (size_t h = 0; h < K; h++) {
			for (size_t p = 0; p <= pos; p += T) {
				size_t blk = (size_t)s->table[p / T] * e->kv.block_floats + h * D;
				const float *kb = (const float *)e->kv.layer[l].k + blk;
				size_t rows = pos + 1 - p < T ? pos + 1 - p : T;

				for (size_t r = 0; r < rows; r++)
					for (size_t g = 0; g < G; g++)
						sc[g * ctx + p + r] =
							dot(q + (h * G + g) * D,
							    kb + r * e->kv.row_floats, D) *
							scale;
			}
			for (size_t g = 0; g < G; g++)
				softmax_masked(sc + g * ctx, ctx, ctx);
			memset(e->att + h * G * D, 0, G * D * sizeof(float));
			for (size_t p = 0; p <= pos; p += T) {
				size_t blk = (size_t)s->table[p / T] * e->kv.block_floats + h * D;
				const float *vb = (const float *)e->kv.layer[l].v + blk;
				size_t rows = pos + 1 - p < T ? pos + 1 - p : T;

				for (size_t g = 0; g < G; g++) {
					float *o = e->att + (h * G + g) * D;

					for (size_t r = 0; r < rows; r++) {
						const float *vr = vb + r * e->kv.row_floats;
						float pr = sc[g * ctx + p + r];

						for (size_t d = 0; d < D; d++)
							o[d] += pr * vr[d];
					}
				}
			}
		}
		linear(1, H, QD, e->att, w->wo, e->tmp);
		add(x, e->tmp, H);
		eng_rmsnorm(e->xn, x, w->mlp_norm, H, c->rms_eps);
		linear(1, 2 * F, H, e->xn, w->wgu, e->gu);
		eng_silu_mul(e->act, e->gu, e->gu + F, F);
		linear(1, H, F, e->act, w->wd, e->tmp);
		add(x, e->tmp, H);
	}
	eng_rmsnorm(e->xn, x, m->norm, H, c->rms_eps);
	linear(1, c->vocab, H, e->xn, m->lm_head, logits);
}

/* --- engine ------------------------------------------------------------------------------ */

int eng_open(const struct eng_model *m, const struct eng_opts *o, struct eng **out, char *err,
	     size_t errlen)
{
	const struct eng_config *c = &m->cfg;
	struct eng *e = calloc(1, sizeof(*e));
	size_t C, H = c->hidden, D = c->head_dim, G = c->heads / c->kv_heads;
	uint32_t nblocks;
	int rc;

	if (!e)
		return -ENOMEM;
	e->m = m;
	e->o = *o;
	if (!e->o.block_tokens || e->o.block_tokens > KVFS_BLOCK_MAX_TOKENS) {
		snprintf(err, errlen, "block tokens must be in 1..%u", KVFS_BLOCK_MAX_TOKENS);
		rc = -EINVAL;
		goto out_free;
	}
	if (!e->o.chunk_tokens)
		e->o.chunk_tokens = (DEFAULT_CHUNK + e->o.block_tokens - 1) / e->o.block_tokens *
				    e->o.block_tokens;
	if (e->o.chunk_tokens % e->o.block_tokens) {
		snprintf(err, errlen, "chunk tokens %u must be a multiple of block tokens %u",
			 e->o.chunk_tokens, e->o.block_tokens);
		rc = -EINVAL;
		goto out_free;
	}
	C = e->o.chunk_tokens;
	e->max_tokens = c->max_pos;
	e->max_rows = (e->max_tokens + C - 1) / C * C;
	if (!e->o.threads)
		e->o.threads = 2;
	openblas_set_num_threads((int)e->o.threads);
	{
		const char *core = openblas_get_corename();
		char lower[16];
		size_t i;

		for (i = 0; core && core[i] && i + 1 < sizeof(lower); i++)
			lower[i] =
				(char)(core[i] >= 'A' && core[i] <= 'Z' ? core[i] + 32 : core[i]);
		lower[i] = '\0';
		snprintf(e->model_id, sizeof(e->model_id), "llm-%016llx-c%u-t%u-%s",
			 (unsigned long long)m->fingerprint, e->o.chunk_tokens, e->o.threads,
			 lower);
	}
	if (o->cache_dir) {
		struct kvfs_ns_options no;

		memset(&no, 0, sizeof(no));
		snprintf(no.layout.model_id, sizeof(no.layout.model_id), "%s", e->model_id);
		no.layout.num_layers = c->layers;
		no.layout.num_kv_heads = c->kv_heads;
		no.layout.head_dim = c->head_dim;
		no.layout.tokens_per_block = e->o.block_tokens;
		no.layout.dtype = KVFS_DTYPE_F32;
		no.layout.kind = KVFS_KIND_KV;
		no.dir = o->cache_dir;
		no.seed = o->seed ? o->seed : "0";
		no.path = o->path;
		no.save_queue = o->save_queue ? o->save_queue
					      : (unsigned)(e->max_tokens / e->o.block_tokens + 1);
		rc = kvfs_ns_open(&no, &e->ns);
		if (rc) {
			snprintf(err, errlen, "cache %s: %s", o->cache_dir, strerror(-rc));
			goto out_free;
		}
	}
	nblocks = (uint32_t)((e->max_tokens + e->o.block_tokens - 1) / e->o.block_tokens);
	rc = eng_kv_init(&e->kv, c->layers, c->kv_heads, c->head_dim, e->o.block_tokens, nblocks,
			 e->ns);
	if (rc) {
		snprintf(err, errlen, "KV pool of %u blocks: %s", nblocks, strerror(-rc));
		goto out_free;
	}
	e->x = falloc(e->max_rows * H);
	e->q = falloc(e->max_rows * c->heads * D);
	e->xn = falloc(C * H);
	e->qkv = falloc(C * (c->heads + 2 * c->kv_heads) * D);
	e->att = falloc(C * c->heads * D);
	e->gu = falloc(C * 2 * c->intermediate);
	e->act = falloc(C * c->intermediate);
	e->tmp = falloc(C * H);
	e->qg = falloc(G * C * D);
	e->og = falloc(G * C * D);
	e->s = falloc(G * C * e->max_rows);
	e->kc = falloc(c->kv_heads * e->max_rows * D);
	e->vc = falloc(c->kv_heads * e->max_rows * D);
	e->logits = falloc(c->vocab);
	if (!e->x || !e->q || !e->xn || !e->qkv || !e->att || !e->gu || !e->act || !e->tmp ||
	    !e->qg || !e->og || !e->s || !e->kc || !e->vc || !e->logits) {
		snprintf(err, errlen, "out of memory for scratch buffers");
		rc = -ENOMEM;
		goto out_free;
	}
	*out = e;
	return 0;

out_free:
	eng_close(e);
	return rc;
}

void eng_close(struct eng *e)
{
	if (!e)
		return;
	if (e->ns)
		kvfs_save_flush(e->ns);
	eng_kv_destroy(&e->kv);
	kvfs_ns_close(e->ns);
	free(e->x);
	free(e->q);
	free(e->xn);
	free(e->qkv);
	free(e->att);
	free(e->gu);
	free(e->act);
	free(e->tmp);
	free(e->qg);
	free(e->og);
	free(e->s);
	free(e->kc);
	free(e->vc);
	free(e->logits);
	free(e);
}

kvfs_ns *eng_ns(const struct eng *e)
{
	return e->ns;
}

const char *eng_model_id(const struct eng *e)
{
	return e->model_id;
}

/* --- requests ---------------------------------------------------------------------------- */

static void seq_free(struct eng *e, struct seq *s)
{
	for (size_t i = 0; i < s->nblocks; i++)
		eng_kv_free_block(&e->kv, s->table[i]);
	free(s->tok);
	free(s->table);
	free(s->keys);
	memset(s, 0, sizeof(*s));
}

/* Blocks for positions [0, upto). */
static int seq_reserve(struct eng *e, struct seq *s, size_t upto)
{
	size_t need = (upto + e->o.block_tokens - 1) / e->o.block_tokens;

	while (s->nblocks < need) {
		int rc = eng_kv_alloc_block(&e->kv, &s->table[s->nblocks]);

		if (rc)
			return rc;
		s->nblocks++;
	}
	return 0;
}

static int seq_init(struct eng *e, struct seq *s, const uint32_t *prompt, size_t n, size_t cap)
{
	size_t maxb = (cap + e->o.block_tokens - 1) / e->o.block_tokens + 1;

	memset(s, 0, sizeof(*s));
	s->tok = malloc(sizeof(*s->tok) * cap);
	s->table = malloc(sizeof(*s->table) * maxb);
	s->keys = malloc(sizeof(*s->keys) * maxb);
	if (!s->tok || !s->table || !s->keys)
		return -ENOMEM;
	memcpy(s->tok, prompt, sizeof(*prompt) * n);
	s->n = n;
	return 0;
}

/* Save full blocks [first, first + count) of @s, chained from s->keys[first - 1]. */
static size_t save_blocks(struct eng *e, struct seq *s, size_t first, size_t count)
{
	const size_t T = e->o.block_tokens;
	const kvfs_key *parent;
	long rc;

	if (!e->ns || !count)
		return 0;
	parent = first ? &s->keys[first - 1] : kvfs_ns_root(e->ns);
	rc = kvfs_save(e->ns, parent, first, s->tok + first * T, count, NULL, &e->kv.pages,
		       s->table + first);
	return rc > 0 ? (size_t)rc : 0;
}

int eng_generate(struct eng *e, const uint32_t *prompt, size_t n, size_t max_new, uint32_t *out,
		 float *logits, struct eng_req_stats *st)
{
	const struct eng_config *c = &e->m->cfg;
	const size_t T = e->o.block_tokens;
	kvfs_match *match = NULL;
	kvfs_load *ld = NULL;
	size_t cached = 0, nfull = n / T;
	double t0 = eng_now_ms(), t;
	int load_rc = 0, rc;
	bool keyed; /* s.keys holds the keys of every full block so far */
	struct seq s;

	memset(st, 0, sizeof(*st));
	st->prompt_tokens = n;
	if (!n || !max_new || n + max_new > e->max_tokens)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (prompt[i] >= c->vocab)
			return -EINVAL;
	rc = seq_init(e, &s, prompt, n, n + max_new);
	if (!rc)
		rc = seq_reserve(e, &s, n);
	if (rc)
		goto out;

	/* 1. What is cached: keys, the longest held prefix, its load. At least
	 * the last prompt token is always computed: its logits are the answer. */
	keyed = e->ns && kvfs_ns_keys(e->ns, s.tok, n, NULL, s.keys, nfull) == (long)nfull;
	if (keyed) {
		long got = kvfs_match_prefix(e->ns, s.keys, (n - 1) / T, &match);

		st->matched_blocks = got > 0 ? (size_t)got : 0;
		if (got > 0) {
			rc = kvfs_load_start(match, 0, (size_t)got, &e->kv.pages, s.table, &ld);
			if (rc) {
				st->load_error = rc;
				st->fallback = true;
			} else {
				cached = (size_t)got;
			}
		}
	}
	st->match_ms = eng_now_ms() - t0;

	/* 2. Prefill what is not cached, waiting for loaded layers as it goes. */
	t = eng_now_ms();
	rc = prefill(e, &s, cached * T, n, ld, &load_rc, &st->stall_ms, e->logits);
	if (ld)
		kvfs_load_end(ld);
	kvfs_match_release(match);
	if (rc == -EAGAIN) {
		/* A miss after all: recompute everything, as without a cache. */
		st->load_error = load_rc;
		st->fallback = true;
		cached = 0;
		rc = prefill(e, &s, 0, n, NULL, NULL, NULL, e->logits);
	}
	if (rc)
		goto out;
	st->prefill_ms = eng_now_ms() - t;
	st->reused_tokens = cached * T;
	st->computed_tokens = n - cached * T;
	out[0] = eng_argmax(e->logits, c->vocab);
	st->ttft_ms = eng_now_ms() - t0;
	if (logits)
		memcpy(logits, e->logits, sizeof(float) * c->vocab);

	/* 3. Save new full blocks, then decode. */
	t = eng_now_ms();
	if (keyed)
		st->saved_blocks += save_blocks(e, &s, cached, nfull - cached);
	st->save_ms += eng_now_ms() - t;
	t = eng_now_ms();
	for (size_t i = 1; i < max_new; i++) {
		size_t pos = n + i - 1;

		s.tok[pos] = out[i - 1];
		s.n = pos + 1;
		rc = seq_reserve(e, &s, pos + 1);
		if (rc)
			goto out;
		decode_step(e, &s, pos, e->logits);
		out[i] = eng_argmax(e->logits, c->vocab);
		if ((pos + 1) % T == 0) {
			/* Block complete: make its KV canonical (as a prefill chunk would
			 * compute it), then publish it. */
			size_t b = pos / T;
			double ts;

			prefill(e, &s, b * T, pos + 1, NULL, NULL, NULL, NULL);
			if (keyed) {
				ts = eng_now_ms();
				keyed = kvfs_key_block(b ? &s.keys[b - 1] : kvfs_ns_root(e->ns),
						       s.tok + b * T, T, NULL, 0, &s.keys[b]) == 0;
				if (keyed)
					st->saved_blocks += save_blocks(e, &s, b, 1);
				st->save_ms += eng_now_ms() - ts;
			}
		}
	}
	st->generated = max_new;
	st->decode_ms = eng_now_ms() - t;
	if (e->ns) {
		t = eng_now_ms();
		kvfs_save_flush(e->ns);
		st->save_ms += eng_now_ms() - t;
	}
out:
	seq_free(e, &s);
	return rc;
}

int eng_probe_load(struct eng *e, const uint32_t *prompt, size_t n, size_t *blocks, double *ms)
{
	const size_t T = e->o.block_tokens;
	kvfs_match *match = NULL;
	kvfs_load *ld = NULL;
	struct seq s;
	double t0;
	long got;
	int rc;

	*blocks = 0;
	*ms = 0;
	if (!e->ns)
		return -EINVAL;
	rc = seq_init(e, &s, prompt, n, n ? n : 1);
	if (!rc)
		rc = seq_reserve(e, &s, n);
	if (rc)
		goto out;
	t0 = eng_now_ms();
	if (kvfs_ns_keys(e->ns, s.tok, n, NULL, s.keys, n / T) != (long)(n / T)) {
		rc = -EINVAL;
		goto out;
	}
	got = kvfs_match_prefix(e->ns, s.keys, n / T, &match);
	if (got > 0) {
		rc = kvfs_load_start(match, 0, (size_t)got, &e->kv.pages, s.table, &ld);
		if (!rc)
			rc = kvfs_load_end(ld);
		if (!rc)
			*blocks = (size_t)got;
	} else if (got < 0) {
		rc = (int)got;
	}
	kvfs_match_release(match);
	*ms = eng_now_ms() - t0;
out:
	seq_free(e, &s);
	return rc;
}
