/*
 * engine/llm/model.c — weights: safetensors files and Llama-style configs.
 *
 * safetensors (huggingface/safetensors): an 8-byte little-endian header
 * length N, N bytes of JSON mapping each tensor name to
 * {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the
 * data section that follows the header; an optional "__metadata__" object of
 * strings), then the data section. The file is mmapped read-only and
 * checked whole before anything is used: a file that lies (a header length
 * past the end, bad JSON, offsets out of range, overlapping or leaving
 * holes, a byte count that does not match the shape) is refused with a
 * one-line reason, never read past. Accepted dtypes: F32, F16, BF16 (the
 * halves converted to f32 on load).
 *
 * The model keeps its own f32 copies of the weights, rearranged for the
 * forward pass: q/k/v projections stacked into one matrix, gate/up into
 * another, so a chunk needs one matrix product for each. Tensor names are
 * Hugging Face's Llama names (model.layers.N.self_attn.q_proj.weight...).
 *
 * The fingerprint (XXH3-64 over config.json and the weights file) goes into
 * the kvfs model id, so two different models never share a namespace's
 * blocks even if someone points them at the same directory.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "engine/llm/llm.h"

#define MAX_CONFIG_BYTES (1u << 20)
#define MAX_DIM		 (1u << 20) /* any single model dimension */

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

/* --- half precision ------------------------------------------------------------ */

float eng_bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

float eng_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
	float f;

	if (exp == 0x1f) {
		u = sign | 0x7f800000u | (man << 13); /* inf, nan */
	} else if (exp == 0) {
		f = ldexpf((float)man, -24); /* zero and subnormals are exact in f32 */
		return sign ? -f : f;
	} else {
		u = sign | ((exp + 112) << 23) | (man << 13);
	}
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* --- safetensors ----------------------------------------------------------------- */

static int dtype_parse(const char *s, size_t *size)
{
	if (!strcmp(s, "F32")) {
		*size = 4;
		return ENG_F32;
	}
	if (!strcmp(s, "F16")) {
		*size = 2;
		return ENG_F16;
	}
	if (!strcmp(s, "BF16")) {
		*size = 2;
		return ENG_BF16;
	}
	return -EINVAL;
}

static int cmp_begin(const void *a, const void *b)
{
	const struct eng_st_tensor *x = a, *y = b;

	return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int st_parse_tensor(struct eng_st_tensor *t, const char *name, json_t *v, size_t data_len,
			   char *err, size_t errlen)
{
	json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
	       *offs = json_object_get(v, "data_offsets"), *d;
	uint64_t elems = 1, begin, end;
	size_t i, esize = 0;

	t->name = name;
	if (!json_is_object(v) || !json_is_string(dt) || !json_is_array(shape) ||
	    !json_is_array(offs) || json_array_size(offs) != 2)
		return fail(err, errlen, -EINVAL,
			    "tensor %s: needs dtype, shape and data_offsets [begin, end]", name);
	t->dtype = dtype_parse(json_string_value(dt), &esize);
	if (t->dtype < 0)
		return fail(err, errlen, -EINVAL,
			    "tensor %s: unsupported dtype %s (F32, F16, BF16)", name,
			    json_string_value(dt));
	if (json_array_size(shape) > ENG_MAX_DIMS)
		return fail(err, errlen, -EINVAL, "tensor %s: more than %d dimensions", name,
			    ENG_MAX_DIMS);
	t->ndim = (int)json_array_size(shape);
	json_array_foreach(shape, i, d)
	{
		if (!json_is_integer(d) || json_integer_value(d) < 0 ||
		    (uint64_t)json_integer_value(d) > data_len)
			return fail(err, errlen, -EINVAL, "tensor %s: bad dimension %zu", name, i);
		t->shape[i] = (uint64_t)json_integer_value(d);
		if (t->shape[i] && elems > data_len / t->shape[i])
			return fail(err, errlen, -EINVAL, "tensor %s: larger than the file", name);
		elems *= t->shape[i];
	}
	for (i = 0; i < 2; i++) {
		d = json_array_get(offs, i);
		if (!json_is_integer(d) || json_integer_value(d) < 0)
			return fail(err, errlen, -EINVAL, "tensor %s: bad data_offsets", name);
	}
	begin = (uint64_t)json_integer_value(json_array_get(offs, 0));
	end = (uint64_t)json_integer_value(json_array_get(offs, 1));
	if (begin > end || end > data_len)
		return fail(err, errlen, -EINVAL,
			    "tensor %s: data_offsets [%" PRIu64 ", %" PRIu64
			    "] outside the %zu-byte data section",
			    name, begin, end, data_len);
	if (end - begin != elems * esize)
		return fail(err, errlen, -EINVAL,
			    "tensor %s: %" PRIu64 " bytes for a shape of %" PRIu64 " %s elements",
			    name, end - begin, elems, json_string_value(dt));
	t->begin = begin;
	t->end = end;
	return 0;
}

int eng_st_open(const char *path, struct eng_st *st, char *err, size_t errlen)
{
	json_error_t jerr;
	struct stat sb;
	uint64_t hlen = 0;
	const char *key;
	json_t *hdr = NULL, *v;
	size_t i;
	int fd, rc;

	memset(st, 0, sizeof(*st));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
	if (fstat(fd, &sb)) {
		rc = fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
		close(fd);
		return rc;
	}
	if (sb.st_size < 8) {
		close(fd);
		return fail(err, errlen, -EINVAL,
			    "%s: %lld bytes, too short for a safetensors file", path,
			    (long long)sb.st_size);
	}
	st->size = (size_t)sb.st_size;
	st->map = mmap(NULL, st->size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (st->map == MAP_FAILED) {
		st->map = NULL;
		return fail(err, errlen, -errno, "%s: mmap: %s", path, strerror(errno));
	}
	for (i = 0; i < 8; i++)
		hlen |= (uint64_t)((const uint8_t *)st->map)[i] << (8 * i);
	if (hlen > st->size - 8 || hlen > ENG_MAX_HEADER || hlen < 2) {
		rc = fail(err, errlen, -EINVAL,
			  "%s: header length %" PRIu64 " does not fit the %zu-byte file", path,
			  hlen, st->size);
		goto out_err;
	}
	hdr = json_loadb((const char *)st->map + 8, hlen, JSON_REJECT_DUPLICATES, &jerr);
	if (!hdr || !json_is_object(hdr)) {
		rc = fail(err, errlen, -EINVAL, "%s: header is not a JSON object: %s", path,
			  hdr ? "wrong type" : jerr.text);
		json_decref(hdr);
		goto out_err;
	}
	st->json = hdr;
	st->data = (const uint8_t *)st->map + 8 + hlen;
	st->data_len = st->size - 8 - hlen;
	st->t = calloc(json_object_size(hdr) + 1, sizeof(*st->t));
	if (!st->t) {
		rc = fail(err, errlen, -ENOMEM, "%s: out of memory", path);
		goto out_err;
	}
	json_object_foreach(hdr, key, v)
	{
		if (!strcmp(key, "__metadata__")) {
			if (!json_is_object(v)) {
				rc = fail(err, errlen, -EINVAL, "%s: __metadata__ is not an object",
					  path);
				goto out_err;
			}
			continue;
		}
		rc = st_parse_tensor(&st->t[st->n], key, v, st->data_len, err, errlen);
		if (rc) {
			char why[ENG_ERR_LEN];

			snprintf(why, sizeof(why), "%s", err ? err : "");
			fail(err, errlen, rc, "%s: %s", path, why);
			goto out_err;
		}
		st->n++;
	}
	/* The data section must be covered exactly: sorted by offset, no overlap, no hole. */
	{
		struct eng_st_tensor *sorted = malloc(sizeof(*sorted) * (st->n ? st->n : 1));
		uint64_t at = 0;

		if (!sorted) {
			rc = fail(err, errlen, -ENOMEM, "%s: out of memory", path);
			goto out_err;
		}
		memcpy(sorted, st->t, sizeof(*sorted) * st->n);
		qsort(sorted, st->n, sizeof(*sorted), cmp_begin);
		rc = 0;
		for (i = 0; i < st->n && !rc; i++) {
			if (sorted[i].begin < at)
				rc = fail(err, errlen, -EINVAL, "%s: tensor %s overlaps another",
					  path, sorted[i].name);
			else if (sorted[i].begin > at)
				rc = fail(err, errlen, -EINVAL,
					  "%s: %" PRIu64
					  " bytes before tensor %s belong to no tensor",
					  path, sorted[i].begin - at, sorted[i].name);
			at = sorted[i].end > at ? sorted[i].end : at;
		}
		if (!rc && at != st->data_len)
			rc = fail(err, errlen, -EINVAL,
				  "%s: %" PRIu64 " trailing bytes belong to no tensor", path,
				  st->data_len - at);
		free(sorted);
		if (rc)
			goto out_err;
	}
	return 0;

out_err:
	eng_st_close(st);
	return rc;
}

void eng_st_close(struct eng_st *st)
{
	if (st->map)
		munmap(st->map, st->size);
	json_decref(st->json);
	free(st->t);
	memset(st, 0, sizeof(*st));
}

const struct eng_st_tensor *eng_st_find(const struct eng_st *st, const char *name)
{
	for (size_t i = 0; i < st->n; i++)
		if (!strcmp(st->t[i].name, name))
			return &st->t[i];
	return NULL;
}

static void shape_str(char *buf, size_t len, int ndim, const uint64_t *shape)
{
	size_t at = 0;

	at += (size_t)snprintf(buf + at, len - at, "[");
	for (int i = 0; i < ndim && at < len; i++)
		at += (size_t)snprintf(buf + at, len - at, "%s%" PRIu64, i ? ", " : "", shape[i]);
	if (at < len)
		snprintf(buf + at, len - at, "]");
}

int eng_st_read_f32(const struct eng_st *st, const char *name, int ndim, const uint64_t *shape,
		    float *dst, char *err, size_t errlen)
{
	const struct eng_st_tensor *t = eng_st_find(st, name);
	char have[96], want[96];
	const uint8_t *src;
	uint64_t n = 1;

	if (!t)
		return fail(err, errlen, -ENOENT, "tensor %s is missing", name);
	if (t->ndim != ndim || memcmp(t->shape, shape, sizeof(*shape) * (size_t)ndim) != 0) {
		shape_str(have, sizeof(have), t->ndim, t->shape);
		shape_str(want, sizeof(want), ndim, shape);
		return fail(err, errlen, -EINVAL, "tensor %s has shape %s, expected %s", name, have,
			    want);
	}
	for (int i = 0; i < ndim; i++)
		n *= shape[i];
	src = st->data + t->begin;
	/* Byte-wise reads: the data section need not be aligned for floats. */
	for (uint64_t i = 0; i < n; i++) {
		if (t->dtype == ENG_F32) {
			memcpy(&dst[i], src + 4 * i, 4);
		} else {
			uint16_t h = (uint16_t)(src[2 * i] | (src[2 * i + 1] << 8));

			dst[i] = t->dtype == ENG_BF16 ? eng_bf16_to_f32(h) : eng_f16_to_f32(h);
		}
	}
	return 0;
}

/* --- config.json ------------------------------------------------------------------- */

static int cfg_u32(json_t *o, const char *k, bool required, uint32_t dflt, uint32_t *out, char *err,
		   size_t errlen)
{
	json_t *v = json_object_get(o, k);

	if (!v || json_is_null(v)) {
		if (required)
			return fail(err, errlen, -EINVAL, "config.json: %s is missing", k);
		*out = dflt;
		return 0;
	}
	if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > MAX_DIM)
		return fail(err, errlen, -EINVAL, "config.json: %s must be an integer in 1..%u", k,
			    MAX_DIM);
	*out = (uint32_t)json_integer_value(v);
	return 0;
}

static int cfg_num(json_t *o, const char *k, double dflt, double *out, char *err, size_t errlen)
{
	json_t *v = json_object_get(o, k);

	if (!v || json_is_null(v)) {
		*out = dflt;
		return 0;
	}
	if (!json_is_number(v) || !(json_number_value(v) > 0) || !isfinite(json_number_value(v)))
		return fail(err, errlen, -EINVAL, "config.json: %s must be a positive number", k);
	*out = json_number_value(v);
	return 0;
}

int eng_config_parse(const char *text, size_t len, struct eng_config *c, char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *o = json_loadb(text, len, 0, &jerr), *v;
	double eps = 0, theta = 0;
	int rc;

	memset(c, 0, sizeof(*c));
	if (!o || !json_is_object(o)) {
		rc = fail(err, errlen, -EINVAL, "config.json: not a JSON object: %s",
			  o ? "wrong type" : jerr.text);
		goto out;
	}
	if ((rc = cfg_u32(o, "hidden_size", true, 0, &c->hidden, err, errlen)) ||
	    (rc = cfg_u32(o, "intermediate_size", true, 0, &c->intermediate, err, errlen)) ||
	    (rc = cfg_u32(o, "num_hidden_layers", true, 0, &c->layers, err, errlen)) ||
	    (rc = cfg_u32(o, "num_attention_heads", true, 0, &c->heads, err, errlen)) ||
	    (rc = cfg_u32(o, "num_key_value_heads", false, c->heads, &c->kv_heads, err, errlen)) ||
	    (rc = cfg_u32(o, "head_dim", false, c->hidden / c->heads, &c->head_dim, err, errlen)) ||
	    (rc = cfg_u32(o, "vocab_size", true, 0, &c->vocab, err, errlen)) ||
	    (rc = cfg_u32(o, "max_position_embeddings", false, 2048, &c->max_pos, err, errlen)) ||
	    (rc = cfg_num(o, "rms_norm_eps", 1e-6, &eps, err, errlen)) ||
	    (rc = cfg_num(o, "rope_theta", 10000.0, &theta, err, errlen)))
		goto out;
	c->rms_eps = (float)eps;
	c->rope_theta = theta;
	v = json_object_get(o, "tie_word_embeddings");
	if (v && !json_is_boolean(v)) {
		rc = fail(err, errlen, -EINVAL,
			  "config.json: tie_word_embeddings must be a boolean");
		goto out;
	}
	c->tie = v && json_is_true(v);
	v = json_object_get(o, "hidden_act");
	if (v && (!json_is_string(v) || strcmp(json_string_value(v), "silu"))) {
		rc = fail(err, errlen, -EINVAL, "config.json: hidden_act must be \"silu\"");
		goto out;
	}
	v = json_object_get(o, "rope_scaling");
	if (v && !json_is_null(v)) {
		rc = fail(err, errlen, -EINVAL, "config.json: rope_scaling is not supported");
		goto out;
	}
	if (c->heads % c->kv_heads) {
		rc = fail(err, errlen, -EINVAL,
			  "config.json: num_attention_heads %u is not a multiple of "
			  "num_key_value_heads %u",
			  c->heads, c->kv_heads);
		goto out;
	}
	if (!json_object_get(o, "head_dim") && c->hidden % c->heads) {
		rc = fail(err, errlen, -EINVAL,
			  "config.json: hidden_size %u is not a multiple of num_attention_heads %u",
			  c->hidden, c->heads);
		goto out;
	}
	if (c->head_dim < 2 || c->head_dim % 2 || (uint64_t)c->heads * c->head_dim > MAX_DIM) {
		rc = fail(err, errlen, -EINVAL, "config.json: head_dim %u must be even and >= 2",
			  c->head_dim);
		goto out;
	}
	if (c->vocab < ENG_TOKENIZER_VOCAB) {
		rc = fail(err, errlen, -EINVAL,
			  "config.json: vocab_size %u is smaller than the byte tokenizer's 256",
			  c->vocab);
		goto out;
	}
	rc = 0;
out:
	json_decref(o);
	return rc;
}

/* --- the model ----------------------------------------------------------------------- */

static int read_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	size_t n;

	if (!f)
		return fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
	buf = malloc(MAX_CONFIG_BYTES);
	if (!buf) {
		fclose(f);
		return fail(err, errlen, -ENOMEM, "%s: out of memory", path);
	}
	n = fread(buf, 1, MAX_CONFIG_BYTES, f);
	if (ferror(f) || n == MAX_CONFIG_BYTES) {
		fclose(f);
		free(buf);
		return fail(err, errlen, -EINVAL, "%s: unreadable or larger than %u bytes", path,
			    MAX_CONFIG_BYTES);
	}
	fclose(f);
	*out = buf;
	*len = n;
	return 0;
}

/* Tensors of one model, read into @m's buffers as the forward pass wants them. */
static int load_weights(struct eng_model *m, const struct eng_st *st, char *err, size_t errlen)
{
	const struct eng_config *c = &m->cfg;
	uint64_t H = c->hidden, I = c->intermediate, V = c->vocab, D = c->head_dim;
	uint64_t qd = (uint64_t)c->heads * D, kd = (uint64_t)c->kv_heads * D;
	char name[128];
	int rc;

#define READ(nm, dst, ...)                                                                         \
	do {                                                                                       \
		const uint64_t shp[] = {__VA_ARGS__};                                              \
		rc = eng_st_read_f32(st, nm, (int)(sizeof(shp) / sizeof(shp[0])), shp, dst, err,   \
				     errlen);                                                      \
		if (rc)                                                                            \
			return rc;                                                                 \
	} while (0)

	READ("model.embed_tokens.weight", m->embed, V, H);
	READ("model.norm.weight", m->norm, H);
	if (!c->tie)
		READ("lm_head.weight", m->lm_head, V, H);
	for (uint32_t l = 0; l < c->layers; l++) {
		struct eng_layer_w *w = &m->layer[l];

#define LNAME(suffix) (snprintf(name, sizeof(name), "model.layers.%u.%s", l, suffix), name)
		READ(LNAME("input_layernorm.weight"), w->attn_norm, H);
		READ(LNAME("post_attention_layernorm.weight"), w->mlp_norm, H);
		READ(LNAME("self_attn.q_proj.weight"), w->wqkv, qd, H);
		READ(LNAME("self_attn.k_proj.weight"), w->wqkv + qd * H, kd, H);
		READ(LNAME("self_attn.v_proj.weight"), w->wqkv + (qd + kd) * H, kd, H);
		READ(LNAME("self_attn.o_proj.weight"), w->wo, H, qd);
		READ(LNAME("mlp.gate_proj.weight"), w->wgu, I, H);
		READ(LNAME("mlp.up_proj.weight"), w->wgu + I * H, I, H);
		READ(LNAME("mlp.down_proj.weight"), w->wd, H, I);
#undef LNAME
	}
#undef READ
	return 0;
}

static float *falloc(size_t n)
{
	return aligned_alloc(64, ((n * sizeof(float)) + 63) / 64 * 64);
}

int eng_model_load(const char *dir, struct eng_model **out, char *err, size_t errlen)
{
	char path[4096], *text = NULL;
	struct eng_model *m = NULL;
	struct eng_st st;
	size_t len = 0;
	int rc;

	memset(&st, 0, sizeof(st));
	snprintf(path, sizeof(path), "%s/config.json", dir);
	rc = read_file(path, &text, &len, err, errlen);
	if (rc)
		return rc;
	m = calloc(1, sizeof(*m));
	if (!m) {
		rc = fail(err, errlen, -ENOMEM, "out of memory");
		goto out;
	}
	rc = eng_config_parse(text, len, &m->cfg, err, errlen);
	if (rc)
		goto out;
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	rc = eng_st_open(path, &st, err, errlen);
	if (rc)
		goto out;
	{
		const struct eng_config *c = &m->cfg;
		size_t H = c->hidden, I = c->intermediate, D = c->head_dim;
		size_t qkv = (size_t)(c->heads + 2 * c->kv_heads) * D;

		m->layer = calloc(c->layers, sizeof(*m->layer));
		m->embed = falloc((size_t)c->vocab * H);
		m->norm = falloc(H);
		m->lm_head = c->tie ? m->embed : falloc((size_t)c->vocab * H);
		m->rope_cos = falloc((size_t)c->max_pos * D / 2);
		m->rope_sin = falloc((size_t)c->max_pos * D / 2);
		rc = m->layer && m->embed && m->norm && m->lm_head && m->rope_cos && m->rope_sin
			     ? 0
			     : -ENOMEM;
		for (uint32_t l = 0; l < c->layers && !rc; l++) {
			struct eng_layer_w *w = &m->layer[l];

			w->attn_norm = falloc(H);
			w->mlp_norm = falloc(H);
			w->wqkv = falloc(qkv * H);
			w->wo = falloc(H * c->heads * D);
			w->wgu = falloc(2 * I * H);
			w->wd = falloc(H * I);
			if (!w->attn_norm || !w->mlp_norm || !w->wqkv || !w->wo || !w->wgu ||
			    !w->wd)
				rc = -ENOMEM;
		}
		if (rc) {
			rc = fail(err, errlen, -ENOMEM, "out of memory for the weights");
			goto out;
		}
	}
	rc = load_weights(m, &st, err, errlen);
	if (rc) {
		/* prefix the file so the one line says where */
		char tmp[ENG_ERR_LEN];

		snprintf(tmp, sizeof(tmp), "%s", err ? err : "");
		fail(err, errlen, rc, "%s: %s", path, tmp);
		rc = -EINVAL;
		goto out;
	}
	eng_rope_table(m->rope_cos, m->rope_sin, m->cfg.max_pos, m->cfg.head_dim,
		       m->cfg.rope_theta);
	{
		XXH3_state_t *xs = XXH3_createState();

		if (!xs) {
			rc = fail(err, errlen, -ENOMEM, "out of memory");
			goto out;
		}
		XXH3_64bits_reset(xs);
		XXH3_64bits_update(xs, text, len);
		XXH3_64bits_update(xs, st.map, st.size);
		m->fingerprint = XXH3_64bits_digest(xs);
		XXH3_freeState(xs);
	}
	*out = m;
	m = NULL;
out:
	eng_st_close(&st);
	eng_model_free(m);
	free(text);
	return rc;
}

void eng_model_free(struct eng_model *m)
{
	if (!m)
		return;
	for (uint32_t l = 0; m->layer && l < m->cfg.layers; l++) {
		free(m->layer[l].attn_norm);
		free(m->layer[l].mlp_norm);
		free(m->layer[l].wqkv);
		free(m->layer[l].wo);
		free(m->layer[l].wgu);
		free(m->layer[l].wd);
	}
	free(m->layer);
	if (m->lm_head != m->embed)
		free(m->lm_head);
	free(m->embed);
	free(m->norm);
	free(m->rope_cos);
	free(m->rope_sin);
	free(m);
}
