/*
 * engine/llm/ops.c — the small numeric kernels that are not matrix products,
 * and the byte-level tokenizer.
 *
 * Exactness rule for everything here: each output depends only on its own
 * row's inputs, computed in a fixed order, so a position's values are the
 * same whichever other rows share its chunk (engine.c relies on this).
 * Reductions run in a fixed order; RMSNorm accumulates in double. Nothing
 * depends on the compiler reassociating floats (no -ffast-math).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/llm/llm.h"

/* --- tokenizer ------------------------------------------------------------------- */

size_t eng_tok_encode(const char *text, size_t len, uint32_t *out)
{
	for (size_t i = 0; i < len; i++)
		out[i] = (uint8_t)text[i];
	return len;
}

size_t eng_tok_decode(const uint32_t *tok, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		out[i] = tok[i] < ENG_TOKENIZER_VOCAB ? (char)(uint8_t)tok[i] : '?';
	return n;
}

int eng_toks_append(struct eng_toks *s, const uint32_t *t, size_t n)
{
	if (s->n + n > s->cap) {
		size_t cap = s->cap ? s->cap : 1024;
		uint32_t *nt;

		while (cap < s->n + n)
			cap *= 2;
		nt = realloc(s->t, cap * sizeof(*nt));
		if (!nt)
			return -ENOMEM;
		s->t = nt;
		s->cap = cap;
	}
	memcpy(s->t + s->n, t, n * sizeof(*t));
	s->n += n;
	return 0;
}

/* --- kernels ------------------------------------------------------------------------ */

void eng_rmsnorm(float *out, const float *x, const float *w, size_t n, float eps)
{
	double ss = 0;
	float inv;

	for (size_t i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	inv = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
	for (size_t i = 0; i < n; i++)
		out[i] = x[i] * inv * w[i];
}

void eng_rope_table(float *cos_t, float *sin_t, uint32_t max_pos, uint32_t head_dim, double theta)
{
	uint32_t half = head_dim / 2;

	for (uint32_t i = 0; i < half; i++) {
		double inv_freq = pow(theta, -2.0 * i / (double)head_dim);

		for (uint32_t p = 0; p < max_pos; p++) {
			double a = (double)p * inv_freq;

			cos_t[(size_t)p * half + i] = (float)cos(a);
			sin_t[(size_t)p * half + i] = (float)sin(a);
		}
	}
}

void eng_rope(float *x, uint32_t nheads, uint32_t head_dim, const float *cos_row,
	      const float *sin_row)
{
	uint32_t half = head_dim / 2;

	for (uint32_t h = 0; h < nheads; h++) {
		float *v = x + (size_t)h * head_dim;

		for (uint32_t i = 0; i < half; i++) {
			float a = v[i], b = v[i + half];

			v[i] = a * cos_row[i] - b * sin_row[i];
			v[i + half] = b * cos_row[i] + a * sin_row[i];
		}
	}
}

void eng_silu_mul(float *act, const float *gate, const float *up, size_t n)
{
	for (size_t i = 0; i < n; i++)
		act[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

uint32_t eng_argmax(const float *x, size_t n)
{
	uint32_t best = 0;

	for (size_t i = 1; i < n; i++)
		if (x[i] > x[best])
			best = (uint32_t)i;
	return best;
}
