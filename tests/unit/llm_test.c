/*
 * tests/unit/llm_test.c — the reference engine (engine/llm/): the
 * safetensors loader (a valid file, and each kind of malformed file refused
 * with its one-line reason), config.json, the byte tokenizer, RMSNorm and
 * RoPE against hand-computed values, the paged KV cache's scatter and
 * gather, and the engine's exactness promise on a tiny model: logits after
 * loading a cached prefix equal those of recomputing it, bit for bit, also
 * when the cache is corrupt (a counted fallback).
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/llm/llm.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static char tmpdir[64];

static int setup(void **state)
{
	(void)state;
	strcpy(tmpdir, "/tmp/llm-test-XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	return system(cmd);
}

static const char *tpath(const char *name)
{
	static char p[256];

	snprintf(p, sizeof(p), "%s/%s", tmpdir, name);
	return p;
}

/* --- safetensors writers ------------------------------------------------------------- */

/* A file with header text @hdr (length field @hlen, or strlen when -1) and @data_len bytes. */
static void write_raw(const char *path, const char *hdr, long long hlen, const void *data,
		      size_t data_len)
{
	FILE *f = fopen(path, "wb");
	uint64_t n = hlen < 0 ? strlen(hdr) : (uint64_t)hlen;
	uint8_t le[8];

	assert_non_null(f);
	for (int i = 0; i < 8; i++)
		le[i] = (uint8_t)(n >> (8 * i));
	assert_int_equal(fwrite(le, 1, 8, f), 8);
	assert_int_equal(fwrite(hdr, 1, strlen(hdr), f), strlen(hdr));
	if (data_len) {
		void *zero = data ? NULL : calloc(1, data_len);

		assert_int_equal(fwrite(data ? data : zero, 1, data_len, f), data_len);
		free(zero);
	}
	assert_int_equal(fclose(f), 0);
}

/* Open @hdr + @data_len zero bytes; expect -EINVAL and @why in the message. */
static void expect_refused(const char *hdr, long long hlen, size_t data_len, const char *why)
{
	char err[ENG_ERR_LEN] = "";
	struct eng_st st;

	write_raw(tpath("bad.safetensors"), hdr, hlen, NULL, data_len);
	assert_int_equal(eng_st_open(tpath("bad.safetensors"), &st, err, sizeof(err)), -EINVAL);
	if (!strstr(err, why))
		fail_msg("message '%s' does not say '%s'", err, why);
	assert_null(strchr(err, '\n'));
	assert_null(st.map);
}

static void test_st_valid(void **state)
{
	const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},"
			  "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
			  "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[16,20]},"
			  "\"c\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[20,26]}}";
	float a[4] = {1.5f, -2.0f, 0.25f, 1e-3f}, out[4];
	uint8_t data[26];
	const uint16_t b[2] = {0x3f80, 0xc040}, c[3] = {0x3c00, 0xc000, 0x3555};
	char err[ENG_ERR_LEN];
	struct eng_st st;

	(void)state;
	memcpy(data, a, 16);
	for (int i = 0; i < 2; i++) {
		data[16 + 2 * i] = (uint8_t)b[i];
		data[17 + 2 * i] = (uint8_t)(b[i] >> 8);
	}
	for (int i = 0; i < 3; i++) {
		data[20 + 2 * i] = (uint8_t)c[i];
		data[21 + 2 * i] = (uint8_t)(c[i] >> 8);
	}
	write_raw(tpath("ok.safetensors"), hdr, -1, data, sizeof(data));
	assert_int_equal(eng_st_open(tpath("ok.safetensors"), &st, err, sizeof(err)), 0);
	assert_int_equal(st.n, 3);
	assert_non_null(eng_st_find(&st, "a"));
	assert_null(eng_st_find(&st, "__metadata__"));
	assert_int_equal(eng_st_read_f32(&st, "a", 2, (uint64_t[]){2, 2}, out, err, sizeof(err)),
			 0);
	assert_memory_equal(out, a, sizeof(a));
	assert_int_equal(eng_st_read_f32(&st, "b", 1, (uint64_t[]){2}, out, err, sizeof(err)), 0);
	assert_true(out[0] == 1.0f && out[1] == -3.0f);
	assert_int_equal(eng_st_read_f32(&st, "c", 1, (uint64_t[]){3}, out, err, sizeof(err)), 0);
	assert_true(out[0] == 1.0f && out[1] == -2.0f && out[2] == 0.333251953125f);
	/* wrong shape and missing tensors are refused with their names */
	assert_int_equal(eng_st_read_f32(&st, "a", 1, (uint64_t[]){4}, out, err, sizeof(err)),
			 -EINVAL);
	assert_string_equal(err, "tensor a has shape [2, 2], expected [4]");
	assert_int_equal(eng_st_read_f32(&st, "a", 2, (uint64_t[]){2, 3}, out, err, sizeof(err)),
			 -EINVAL);
	assert_int_equal(eng_st_read_f32(&st, "zz", 1, (uint64_t[]){1}, out, err, sizeof(err)),
			 -ENOENT);
	assert_string_equal(err, "tensor zz is missing");
	eng_st_close(&st);
}

static void test_half_conversions(void **state)
{
	(void)state;
	assert_true(eng_f16_to_f32(0x0000) == 0.0f);
	assert_true(signbit(eng_f16_to_f32(0x8000)));
	assert_true(eng_f16_to_f32(0x0001) == ldexpf(1.0f, -24)); /* smallest subnormal */
	assert_true(eng_f16_to_f32(0x03ff) == ldexpf(1023.0f, -24));
	assert_true(eng_f16_to_f32(0x7bff) == 65504.0f);
	assert_true(isinf(eng_f16_to_f32(0x7c00)));
	assert_true(isnan(eng_f16_to_f32(0x7e00)));
	assert_true(eng_bf16_to_f32(0x4049) == 3.140625f);
	assert_true(isinf(eng_bf16_to_f32(0xff80)) && eng_bf16_to_f32(0xff80) < 0);
}

static void test_st_malformed(void **state)
{
	const char *t = "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
	char hdr[512];
	FILE *f;

	(void)state;
	/* shorter than the length field */
	f = fopen(tpath("bad.safetensors"), "wb");
	assert_int_equal(fwrite("\x10\0\0", 1, 3, f), 3);
	fclose(f);
	{
		char err[ENG_ERR_LEN];
		struct eng_st st;

		assert_int_equal(eng_st_open(tpath("bad.safetensors"), &st, err, sizeof(err)),
				 -EINVAL);
		assert_non_null(strstr(err, "too short"));
		assert_int_equal(eng_st_open(tpath("missing.safetensors"), &st, err, sizeof(err)),
				 -ENOENT);
	}
	snprintf(hdr, sizeof(hdr), "{%s}", t);
	/* header length beyond the file, and absurd */
	expect_refused(hdr, 4096, 8, "does not fit");
	expect_refused(hdr, (long long)(1ull << 62), 8, "does not fit");
	/* truncated: the data section is shorter than the offsets say */
	expect_refused(hdr, -1, 5, "outside the 5-byte data section");
	/* bad JSON, or not an object */
	expect_refused("{\"t\": {\"dtype\": ", -1, 8, "not a JSON object");
	expect_refused("[1, 2]", -1, 8, "not a JSON object");
	expect_refused("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
		       "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
		       -1, 8, "not a JSON object");
	/* dtypes the engine does not read */
	expect_refused("{\"t\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 8,
		       "unsupported dtype I32");
	expect_refused("{\"t\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", -1, 8,
		       "unsupported dtype F64");
	/* shape and byte count disagree */
	expect_refused("{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", -1, 8,
		       "8 bytes for a shape of 3 F32 elements");
	expect_refused("{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", -1, 8,
		       "bad dimension");
	expect_refused("{\"t\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", -1,
		       8, "bad dimension");
	expect_refused("{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", -1, 8, "data_offsets");
	expect_refused("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", -1, 8,
		       "outside");
	expect_refused("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", -1, 8,
		       "bad data_offsets");
	/* overlapping, holes, trailing bytes */
	expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
		       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
		       -1, 12, "overlaps");
	expect_refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
		       "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
		       -1, 12, "4 bytes before tensor b belong to no tensor");
	expect_refused(hdr, -1, 12, "4 trailing bytes");
	expect_refused("{\"__metadata__\":[1]}", -1, 0, "__metadata__");
}

/* --- a tiny model on disk -------------------------------------------------------------- */

struct tiny {
	uint32_t layers, hidden, heads, kv_heads, inter, vocab, max_pos;
	bool tie;
	const char *skip;  /* a tensor to leave out */
	const char *wrong; /* a tensor to give a wrong shape */
	const char *dtype; /* "F32" (default), "BF16" */
};

static uint32_t lcg = 12345;

static float rnd_weight(double scale)
{
	lcg = lcg * 1664525u + 1013904223u;
	return (float)(((double)(lcg >> 8) / (double)(1u << 24) * 2.0 - 1.0) * scale);
}

static void add_tensor(json_t *hdr, FILE *data, uint64_t *off, const struct tiny *t,
		       const char *name, uint64_t rows, uint64_t cols, double scale)
{
	bool bf16 = t->dtype && !strcmp(t->dtype, "BF16");
	uint64_t n, esize = bf16 ? 2 : 4;

	if (t->skip && !strcmp(name, t->skip))
		return;
	if (t->wrong && !strcmp(name, t->wrong))
		rows += 1;
	n = rows * (cols ? cols : 1);
	for (uint64_t i = 0; i < n; i++) {
		float v = scale ? rnd_weight(scale) : 1.0f + rnd_weight(0.1);

		if (bf16) {
			uint32_t u;
			uint16_t h;

			memcpy(&u, &v, 4);
			h = (uint16_t)(u >> 16);
			fwrite(&h, 2, 1, data);
		} else {
			fwrite(&v, 4, 1, data);
		}
	}
	json_object_set_new(
		hdr, name,
		json_pack("{s:s, s:o, s:[I, I]}", "dtype", bf16 ? "BF16" : "F32", "shape",
			  cols ? json_pack("[I, I]", (json_int_t)rows, (json_int_t)cols)
			       : json_pack("[I]", (json_int_t)rows),
			  "data_offsets", (json_int_t)*off, (json_int_t)(*off + n * esize)));
	*off += n * esize;
}

static void write_tiny(const char *dir, const struct tiny *t)
{
	uint64_t H = t->hidden, D = t->hidden / t->heads, off = 0;
	char path[256], name[128], *text;
	json_t *hdr = json_object(), *cfg;
	FILE *data = tmpfile(), *f;
	long len;

	mkdir(dir, 0755);
	lcg = 12345;
	add_tensor(hdr, data, &off, t, "model.embed_tokens.weight", t->vocab, H, 1.0);
	for (uint32_t l = 0; l < t->layers; l++) {
#define N(s) (snprintf(name, sizeof(name), "model.layers.%u.%s", l, s), name)
		add_tensor(hdr, data, &off, t, N("input_layernorm.weight"), H, 0, 0);
		add_tensor(hdr, data, &off, t, N("self_attn.q_proj.weight"), t->heads * D, H, 0.3);
		add_tensor(hdr, data, &off, t, N("self_attn.k_proj.weight"), t->kv_heads * D, H,
			   0.3);
		add_tensor(hdr, data, &off, t, N("self_attn.v_proj.weight"), t->kv_heads * D, H,
			   0.3);
		add_tensor(hdr, data, &off, t, N("self_attn.o_proj.weight"), H, t->heads * D, 0.2);
		add_tensor(hdr, data, &off, t, N("post_attention_layernorm.weight"), H, 0, 0);
		add_tensor(hdr, data, &off, t, N("mlp.gate_proj.weight"), t->inter, H, 0.3);
		add_tensor(hdr, data, &off, t, N("mlp.up_proj.weight"), t->inter, H, 0.3);
		add_tensor(hdr, data, &off, t, N("mlp.down_proj.weight"), H, t->inter, 0.2);
#undef N
	}
	add_tensor(hdr, data, &off, t, "model.norm.weight", H, 0, 0);
	if (!t->tie)
		add_tensor(hdr, data, &off, t, "lm_head.weight", t->vocab, H, 0.3);
	text = json_dumps(hdr, JSON_COMPACT);
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	len = ftell(data);
	rewind(data);
	{
		char *bytes = malloc((size_t)len + 1);

		assert_int_equal(fread(bytes, 1, (size_t)len, data), (size_t)len);
		write_raw(path, text, -1, bytes, (size_t)len);
		free(bytes);
	}
	fclose(data);
	free(text);
	json_decref(hdr);
	cfg = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:b}", "hidden_size",
			(json_int_t)t->hidden, "intermediate_size", (json_int_t)t->inter,
			"num_hidden_layers", (json_int_t)t->layers, "num_attention_heads",
			(json_int_t)t->heads, "num_key_value_heads", (json_int_t)t->kv_heads,
			"vocab_size", (json_int_t)t->vocab, "max_position_embeddings",
			(json_int_t)t->max_pos, "rms_norm_eps", 1e-5, "rope_theta", 10000.0,
			"tie_word_embeddings", t->tie);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	f = fopen(path, "w");
	assert_int_equal(json_dumpf(cfg, f, 0), 0);
	fclose(f);
	json_decref(cfg);
}

static const struct tiny tiny_default = {.layers = 2,
					 .hidden = 32,
					 .heads = 4,
					 .kv_heads = 2,
					 .inter = 48,
					 .vocab = 256,
					 .max_pos = 1024};

static void test_model_load(void **state)
{
	struct tiny t = tiny_default;
	struct eng_model *m = NULL;
	char err[ENG_ERR_LEN], dir[128];
	struct eng_st st;
	float k0[32];

	(void)state;
	snprintf(dir, sizeof(dir), "%s/tiny", tmpdir);
	write_tiny(dir, &t);
	assert_int_equal(eng_model_load(dir, &m, err, sizeof(err)), 0);
	assert_int_equal(m->cfg.layers, 2);
	assert_int_equal(m->cfg.head_dim, 8);
	assert_int_equal(m->cfg.kv_heads, 2);
	assert_false(m->cfg.tie);
	assert_true(m->lm_head != m->embed);
	/* k_proj's first row sits right after q_proj's rows in the stacked matrix */
	assert_int_equal(eng_st_open(tpath("tiny/model.safetensors"), &st, err, sizeof(err)), 0);
	{
		float *kw = malloc(16 * 32 * sizeof(float));

		assert_int_equal(eng_st_read_f32(&st, "model.layers.1.self_attn.k_proj.weight", 2,
						 (uint64_t[]){16, 32}, kw, err, sizeof(err)),
				 0);
		memcpy(k0, kw, sizeof(k0));
		free(kw);
	}
	assert_memory_equal(m->layer[1].wqkv + 32 * 32, k0, sizeof(k0));
	eng_st_close(&st);
	eng_model_free(m);

	/* tied embeddings: no lm_head tensor needed */
	t.tie = true;
	snprintf(dir, sizeof(dir), "%s/tied", tmpdir);
	write_tiny(dir, &t);
	assert_int_equal(eng_model_load(dir, &m, err, sizeof(err)), 0);
	assert_true(m->lm_head == m->embed);
	eng_model_free(m);

	/* BF16 weights are converted */
	t = tiny_default;
	t.dtype = "BF16";
	snprintf(dir, sizeof(dir), "%s/bf16", tmpdir);
	write_tiny(dir, &t);
	assert_int_equal(eng_model_load(dir, &m, err, sizeof(err)), 0);
	eng_model_free(m);
}

static void expect_model_refused(struct tiny t, const char *name, const char *why)
{
	struct eng_model *m = NULL;
	char err[ENG_ERR_LEN] = "", dir[128];

	snprintf(dir, sizeof(dir), "%s/%s", tmpdir, name);
	write_tiny(dir, &t);
	assert_int_equal(eng_model_load(dir, &m, err, sizeof(err)), -EINVAL);
	assert_null(m);
	if (!strstr(err, why))
		fail_msg("message '%s' does not say '%s'", err, why);
}

static void test_model_refused(void **state)
{
	struct tiny t = tiny_default;

	(void)state;
	t.skip = "model.layers.1.mlp.up_proj.weight";
	expect_model_refused(t, "skip", "tensor model.layers.1.mlp.up_proj.weight is missing");
	t = tiny_default;
	t.skip = "lm_head.weight";
	expect_model_refused(t, "nohead", "tensor lm_head.weight is missing");
	t = tiny_default;
	t.wrong = "model.layers.0.self_attn.k_proj.weight";
	expect_model_refused(t, "wrong",
			     "model.layers.0.self_attn.k_proj.weight has shape [17, 32], "
			     "expected [16, 32]");
	t = tiny_default;
	t.wrong = "model.norm.weight";
	expect_model_refused(t, "wrongnorm", "has shape [33], expected [32]");
}

static void expect_config(const char *text, int rc, const char *why)
{
	struct eng_config c;
	char err[ENG_ERR_LEN] = "";

	assert_int_equal(eng_config_parse(text, strlen(text), &c, err, sizeof(err)), rc);
	if (why && !strstr(err, why))
		fail_msg("message '%s' does not say '%s'", err, why);
}

static void test_config(void **state)
{
	struct eng_config c;
	const char *ok = "{\"hidden_size\": 64, \"intermediate_size\": 128, "
			 "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, "
			 "\"vocab_size\": 256, \"rope_theta\": 500000.0}";
	char err[ENG_ERR_LEN];

	(void)state;
	assert_int_equal(eng_config_parse(ok, strlen(ok), &c, err, sizeof(err)), 0);
	assert_int_equal(c.kv_heads, 8); /* defaults to heads */
	assert_int_equal(c.head_dim, 8);
	assert_int_equal(c.max_pos, 2048);
	assert_true(c.rope_theta == 500000.0);
	assert_true(c.rms_eps == 1e-6f);
	assert_false(c.tie);
	expect_config("{", -EINVAL, "not a JSON object");
	expect_config("{\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
		      "\"num_attention_heads\": 8, \"vocab_size\": 256}",
		      -EINVAL, "hidden_size is missing");
	expect_config(
		"{\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, "
		"\"num_attention_heads\": 8, \"num_key_value_heads\": 3, \"vocab_size\": 256}",
		-EINVAL, "not a multiple of num_key_value_heads");
	expect_config("{\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, "
		      "\"num_attention_heads\": 8, \"vocab_size\": 100}",
		      -EINVAL, "smaller than the byte tokenizer");
	expect_config("{\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, "
		      "\"num_attention_heads\": 8, \"vocab_size\": 256, \"rope_scaling\": "
		      "{\"type\": \"llama3\"}}",
		      -EINVAL, "rope_scaling");
	expect_config(
		"{\"hidden_size\": -64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, "
		"\"num_attention_heads\": 8, \"vocab_size\": 256}",
		-EINVAL, "hidden_size must be an integer");
	expect_config("{\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, "
		      "\"num_attention_heads\": 8, \"vocab_size\": 256, \"hidden_act\": \"gelu\"}",
		      -EINVAL, "silu");
	expect_config("{\"hidden_size\": 60, \"intermediate_size\": 128, \"num_hidden_layers\": 2, "
		      "\"num_attention_heads\": 8, \"vocab_size\": 256}",
		      -EINVAL, "not a multiple of num_attention_heads");
}

/* --- tokenizer and kernels ------------------------------------------------------------- */

static void test_tokenizer(void **state)
{
	const char text[] = "Hi \xc3\xa9\n\x00\xff";
	uint32_t tok[sizeof(text)], odd[2] = {65, 300};
	char back[sizeof(text)];

	(void)state;
	assert_int_equal(eng_tok_encode(text, sizeof(text) - 1, tok), sizeof(text) - 1);
	assert_int_equal(tok[0], 'H');
	assert_int_equal(tok[3], 0xc3);
	assert_int_equal(tok[6], 0);
	assert_int_equal(tok[7], 0xff);
	assert_int_equal(eng_tok_decode(tok, sizeof(text) - 1, back), sizeof(text) - 1);
	assert_memory_equal(back, text, sizeof(text) - 1);
	assert_int_equal(eng_tok_decode(odd, 2, back), 2);
	assert_memory_equal(back, "A?", 2);
}

static void test_rmsnorm(void **state)
{
	const float x[4] = {1, 2, 3, 4}, w[4] = {1, 0.5f, 2, -1};
	float out[4];
	/* mean(x^2) = 30/4 = 7.5; 1/sqrt(7.5 + 0.5) = 1/sqrt(8) */
	const double inv = 1.0 / sqrt(8.0);

	(void)state;
	eng_rmsnorm(out, x, w, 4, 0.5f);
	assert_float_equal(out[0], 1 * inv * 1, 1e-6);
	assert_float_equal(out[1], 2 * inv * 0.5, 1e-6);
	assert_float_equal(out[2], 3 * inv * 2, 1e-6);
	assert_float_equal(out[3], 4 * inv * -1, 1e-6);
	/* a zero row stays zero (padding rows of a chunk rely on it) */
	eng_rmsnorm(out, (const float[4]){0}, w, 4, 1e-5f);
	for (int i = 0; i < 4; i++)
		assert_true(out[i] == 0.0f);
}

static void test_rope(void **state)
{
	/* head_dim 4, theta 10000: pair 0 turns by p rad, pair 1 by p / 100 rad */
	float cos_t[3 * 2], sin_t[3 * 2], x[8] = {1, 2, 3, 4, -1, 0.5f, 2, 0};
	float y[8];

	(void)state;
	eng_rope_table(cos_t, sin_t, 3, 4, 10000.0);
	assert_float_equal(cos_t[0], 1.0, 0);
	assert_float_equal(sin_t[1], 0.0, 0);
	assert_float_equal(cos_t[2 * 2 + 0], cos(2.0), 1e-7);
	assert_float_equal(sin_t[2 * 2 + 1], sin(0.02), 1e-7);
	/* position 0 is the identity */
	memcpy(y, x, sizeof(x));
	eng_rope(y, 2, 4, cos_t, sin_t);
	assert_memory_equal(y, x, sizeof(x));
	/* position 1, rotate-half pairs (x0, x2) and (x1, x3), both heads */
	memcpy(y, x, sizeof(x));
	eng_rope(y, 2, 4, cos_t + 2, sin_t + 2);
	assert_float_equal(y[0], 1 * cos(1.0) - 3 * sin(1.0), 1e-6);
	assert_float_equal(y[2], 3 * cos(1.0) + 1 * sin(1.0), 1e-6);
	assert_float_equal(y[1], 2 * cos(0.01) - 4 * sin(0.01), 1e-6);
	assert_float_equal(y[3], 4 * cos(0.01) + 2 * sin(0.01), 1e-6);
	assert_float_equal(y[4], -1 * cos(1.0) - 2 * sin(1.0), 1e-6);
	assert_float_equal(y[6], 2 * cos(1.0) + -1 * sin(1.0), 1e-6);
	assert_float_equal(y[5], 0.5 * cos(0.01), 1e-6);
	assert_float_equal(y[7], 0.5 * sin(0.01), 1e-6);
}

static void test_silu_argmax(void **state)
{
	const float g[3] = {0, 1, -2}, u[3] = {5, 2, 1}, v[5] = {1, 7, -3, 7, 2};
	float a[3];

	(void)state;
	eng_silu_mul(a, g, u, 3);
	assert_float_equal(a[0], 0, 0);
	assert_float_equal(a[1], 2.0 / (1.0 + exp(-1.0)), 1e-6);
	assert_float_equal(a[2], -2.0 / (1.0 + exp(2.0)), 1e-6);
	assert_int_equal(eng_argmax(v, 5), 1); /* the first of equal maxima */
}

/* --- paged KV cache ------------------------------------------------------------------------ */

static void test_kv_pages(void **state)
{
	const uint32_t L = 2, K = 2, D = 4, T = 3, NB = 5;
	struct eng_kv kv;
	uint32_t table[3], id, n = 8; /* positions 0..7 in 3 blocks */
	float k[8 * 4 + 4], v[8 * 4 + 4];

	(void)state;
	assert_int_equal(eng_kv_init(&kv, L, K, D, T, NB, NULL), 0);
	assert_int_equal(kv.row_floats, K * D);
	assert_int_equal(kv.layer[1].token_stride, K * D * sizeof(float));
	assert_int_equal(kv.layer[1].block_stride, T * K * D * sizeof(float));
	/* scattered blocks: take 0, 1, 2, give back 1, then the table is {2, 1, 3} */
	for (int i = 0; i < 3; i++)
		assert_int_equal(eng_kv_alloc_block(&kv, &table[i]), 0);
	assert_int_equal(table[0], 0);
	eng_kv_free_block(&kv, table[1]);
	table[0] = 2;
	assert_int_equal(eng_kv_alloc_block(&kv, &table[1]), 0);
	assert_int_equal(table[1], 1);
	assert_int_equal(eng_kv_alloc_block(&kv, &table[2]), 0);
	assert_int_equal(table[2], 3);
	assert_int_equal(eng_kv_alloc_block(&kv, &id), 0);
	assert_int_equal(eng_kv_alloc_block(&kv, &id), -ENOSPC); /* 0, 1, 2, 3, 4 handed out */
	for (uint32_t p = 0; p < n; p++) {
		float kr[8], vr[8];

		for (uint32_t j = 0; j < K * D; j++) {
			kr[j] = (float)(1000 * p + j);
			vr[j] = -(float)(1000 * p + j);
		}
		eng_kv_scatter(&kv, 1, table, p, kr, vr);
	}
	/* where the pages say position 4 lives: block table[1], row 1 */
	assert_ptr_equal(eng_kv_row(&kv, 1, 0, table, 4),
			 (float *)((char *)kv.layer[1].k + table[1] * kv.layer[1].block_stride +
				   1 * kv.layer[1].token_stride));
	assert_true(eng_kv_row(&kv, 1, 1, table, 4)[3] == -4003.0f);
	/* layer 0 untouched */
	assert_true(eng_kv_row(&kv, 0, 0, table, 4)[0] == 0.0f);
	/* gather head 1 of positions 0..7, zero 8..8 */
	memset(k, 0x7f, sizeof(k));
	memset(v, 0x7f, sizeof(v));
	eng_kv_gather(&kv, 1, table, n, n + 1, 1, k, v);
	for (uint32_t p = 0; p < n; p++)
		for (uint32_t d = 0; d < D; d++) {
			assert_true(k[p * D + d] == (float)(1000 * p + D + d));
			assert_true(v[p * D + d] == -(float)(1000 * p + D + d));
		}
	for (uint32_t d = 0; d < D; d++)
		assert_true(k[n * D + d] == 0.0f && v[n * D + d] == 0.0f);
	eng_kv_destroy(&kv);
	assert_int_equal(eng_kv_init(&kv, 0, K, D, T, NB, NULL), -EINVAL);
}

/* --- the engine: exactness on a tiny model -----------------------------------------------------
 */

static void flip_block_byte(const char *dir, off_t off)
{
	char path[512], cmd[600];
	FILE *p;
	uint8_t c;
	int fd;

	/* the first block file in @dir */
	snprintf(cmd, sizeof(cmd), "ls %s | head -1", dir);
	p = popen(cmd, "r");
	assert_non_null(p);
	snprintf(path, sizeof(path), "%s/", dir);
	assert_non_null(fgets(path + strlen(path), (int)(sizeof(path) - strlen(path)), p));
	pclose(p);
	path[strcspn(path, "\n")] = '\0';
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &c, 1, off), 1);
	c ^= 0x01;
	assert_int_equal(pwrite(fd, &c, 1, off), 1);
	close(fd);
}

static void test_engine_exact(void **state)
{
	struct tiny t = tiny_default;
	struct eng_model *m = NULL;
	struct eng *plain = NULL, *cached = NULL;
	struct eng_opts o = {.block_tokens = 4, .chunk_tokens = 8, .seed = "0", .threads = 1};
	struct eng_req_stats st;
	struct kvfs_ns_stats ks;
	char err[ENG_ERR_LEN], dir[128], cache[128];
	uint32_t prompt[200], out1[20], out2[20], turn2[200 + 20 + 30];
	float ref[256], lg[256];

	(void)state;
	snprintf(dir, sizeof(dir), "%s/exact", tmpdir);
	snprintf(cache, sizeof(cache), "%s/exact-cache", tmpdir);
	write_tiny(dir, &t);
	assert_int_equal(eng_model_load(dir, &m, err, sizeof(err)), 0);
	assert_int_equal(eng_open(m, &o, &plain, err, sizeof(err)), 0);
	o.cache_dir = cache;
	assert_int_equal(eng_open(m, &o, &cached, err, sizeof(err)), 0);
	for (size_t i = 0; i < ARRAY_SIZE(prompt); i++)
		prompt[i] = (uint32_t)(i * 37 % 256);

	/* turn 1, cold: same logits and answer with and without a cache */
	assert_int_equal(eng_generate(plain, prompt, 199, 20, out1, ref, &st), 0);
	assert_int_equal(st.reused_tokens, 0);
	assert_int_equal(eng_generate(cached, prompt, 199, 20, out2, lg, &st), 0);
	assert_int_equal(st.reused_tokens, 0);
	assert_memory_equal(lg, ref, sizeof(ref));
	assert_memory_equal(out2, out1, sizeof(out1));
	/* warm: 49 blocks of 4 reused, the last 3 tokens computed */
	assert_int_equal(eng_generate(cached, prompt, 199, 20, out2, lg, &st), 0);
	assert_int_equal(st.reused_tokens, 196);
	assert_false(st.fallback);
	assert_memory_equal(lg, ref, sizeof(ref));

	/* turn 2: the prompt, the answer (its blocks were saved while decoding), more */
	memcpy(turn2, prompt, 199 * sizeof(uint32_t));
	memcpy(turn2 + 199, out1, 20 * sizeof(uint32_t));
	for (int i = 0; i < 30; i++)
		turn2[219 + i] = (uint32_t)(200 + i);
	assert_int_equal(eng_generate(plain, turn2, 249, 5, out1, ref, &st), 0);
	assert_int_equal(eng_generate(cached, turn2, 249, 5, out2, lg, &st), 0);
	assert_int_equal(st.reused_tokens, 216); /* 54 blocks: 199 + 19 decoded tokens had KV */
	assert_memory_equal(lg, ref, sizeof(ref));
	assert_memory_equal(out2, out1, 5 * sizeof(uint32_t));

	/* a corrupt block is a miss: recomputed, same logits, counted */
	flip_block_byte(cache, 4096 + 17);
	assert_int_equal(eng_generate(cached, turn2, 249, 5, out2, lg, &st), 0);
	assert_true(st.fallback);
	assert_int_equal(st.load_error, -EBADMSG);
	assert_int_equal(st.reused_tokens, 0);
	assert_memory_equal(lg, ref, sizeof(ref));
	kvfs_ns_get_stats(eng_ns(cached), &ks);
	assert_int_equal(ks.load_errors, 1);

	/* a prompt longer than the model's positions is refused */
	assert_int_equal(eng_generate(plain, prompt, 1020, 10, out1, ref, &st), -EINVAL);
	eng_close(plain);
	eng_close(cached);
	eng_model_free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_st_valid),      cmocka_unit_test(test_half_conversions),
		cmocka_unit_test(test_st_malformed),  cmocka_unit_test(test_model_load),
		cmocka_unit_test(test_model_refused), cmocka_unit_test(test_config),
		cmocka_unit_test(test_tokenizer),     cmocka_unit_test(test_rmsnorm),
		cmocka_unit_test(test_rope),	      cmocka_unit_test(test_silu_argmax),
		cmocka_unit_test(test_kv_pages),      cmocka_unit_test(test_engine_exact),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
