/*
 * tools/genmodel.c — kvfs-genmodel: write a Llama-family model with seeded
 * random weights, in the real formats (config.json + model.safetensors).
 *
 *   kvfs-genmodel --out DIR --layers N --hidden H --heads A --kv-heads K
 *                 --intermediate I [--vocab 256] [--seed S] [--dtype f32|bf16|f16]
 *                 [--max-pos P] [--rope-theta T] [--tie]
 *
 * No weights can be downloaded where kvfs is tested, so the reference
 * engine runs on generated ones; the loader still reads the format real
 * checkpoints use, with Hugging Face's tensor names.
 *
 * Weights: uniform with the standard deviation of a Kaiming-style init,
 * 1/sqrt(fan_in), the output projections (o_proj, down_proj) further scaled
 * by 1/sqrt(2 * layers) so the residual stream grows slowly; embeddings with
 * unit variance; norm weights 1 +- 0.1. A model drawn like this keeps its
 * activations in a sane range at any depth, which is all the engine needs:
 * its logits are random, but they are reproducible to the bit.
 *
 * The same --seed always writes the same bytes (xorshift64*, no libc rand).
 * Files are written under temporary names and renamed into place.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define EXIT_USAGE 2

enum { DT_F32, DT_BF16, DT_F16 };

struct tensor {
	char name[128];
	uint64_t rows, cols; /* cols 0: a vector of rows */
	double std;	     /* 0: norm weights (1 +- 0.1) */
};

static uint64_t rng_state;

static uint64_t rng_next(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}

/* Uniform in [-1, 1). */
static double rng_unit(void)
{
	return (double)(rng_next() >> 11) / (double)(1ull << 52) - 1.0;
}

static uint16_t f32_to_bf16(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	u += 0x7fff + ((u >> 16) & 1); /* round to nearest even */
	return (uint16_t)(u >> 16);
}

static uint16_t f32_to_f16(float f)
{
	uint32_t u, sign, man;
	int exp;

	memcpy(&u, &f, sizeof(u));
	sign = (u >> 16) & 0x8000;
	exp = (int)((u >> 23) & 0xff) - 127 + 15;
	man = u & 0x7fffff;
	if (exp >= 31)
		return (uint16_t)(sign | 0x7c00); /* overflow: inf (weights never get here) */
	if (exp <= 0) {
		if (exp < -10)
			return (uint16_t)sign;
		man |= 0x800000;
		return (uint16_t)(sign | ((man >> (14 - exp)) + ((man >> (13 - exp)) & 1)));
	}
	return (uint16_t)(sign | ((uint32_t)exp << 10) | (man >> 13)) + ((man >> 12) & 1);
}

static int write_all(FILE *f, const void *p, size_t n)
{
	return fwrite(p, 1, n, f) == n ? 0 : -EIO;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: kvfs-genmodel --out DIR --layers N --hidden H --heads A --kv-heads K\n"
		   "                     --intermediate I [--vocab 256] [--seed S]\n"
		   "                     [--dtype f32|bf16|f16] [--max-pos P] [--rope-theta T] "
		   "[--tie]\n"
		   "\n"
		   "Write DIR/config.json and DIR/model.safetensors: a Llama-family model with\n"
		   "seeded random weights (the same seed writes the same bytes).\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;

	errno = 0;
	*out = strtoull(s, &end, 10);
	return errno || end == s || *end ? -1 : 0;
}

int main(int argc, char **argv)
{
	enum {
		O_OUT = 256,
		O_LAYERS,
		O_HIDDEN,
		O_HEADS,
		O_KV,
		O_INTER,
		O_VOCAB,
		O_SEED,
		O_DTYPE,
		O_MAXPOS,
		O_THETA,
		O_TIE
	};
	static const struct option lopts[] = {
		{"out", required_argument, NULL, O_OUT},
		{"layers", required_argument, NULL, O_LAYERS},
		{"hidden", required_argument, NULL, O_HIDDEN},
		{"heads", required_argument, NULL, O_HEADS},
		{"kv-heads", required_argument, NULL, O_KV},
		{"intermediate", required_argument, NULL, O_INTER},
		{"vocab", required_argument, NULL, O_VOCAB},
		{"seed", required_argument, NULL, O_SEED},
		{"dtype", required_argument, NULL, O_DTYPE},
		{"max-pos", required_argument, NULL, O_MAXPOS},
		{"rope-theta", required_argument, NULL, O_THETA},
		{"tie", no_argument, NULL, O_TIE},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *out = NULL, *dtname = "f32";
	uint64_t layers = 0, hidden = 0, heads = 0, kv = 0, inter = 0, vocab = 256, seed = 0;
	uint64_t max_pos = 16384, D, esize, off = 0, hlen, pad;
	double theta = 500000.0;
	bool tie = false;
	int c, dtype = DT_F32, rc = 1;
	struct tensor *t = NULL;
	size_t nt = 0, i;
	char path[4096], tmp[4200], *hdr_text = NULL;
	json_t *hdr = NULL, *cfg = NULL;
	FILE *f = NULL;

	while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
		uint64_t *u = NULL;

		switch (c) {
		case O_OUT:
			out = optarg;
			break;
		case O_LAYERS:
			u = &layers;
			break;
		case O_HIDDEN:
			u = &hidden;
			break;
		case O_HEADS:
			u = &heads;
			break;
		case O_KV:
			u = &kv;
			break;
		case O_INTER:
			u = &inter;
			break;
		case O_VOCAB:
			u = &vocab;
			break;
		case O_SEED:
			u = &seed;
			break;
		case O_MAXPOS:
			u = &max_pos;
			break;
		case O_DTYPE:
			dtname = optarg;
			break;
		case O_THETA:
			theta = strtod(optarg, NULL);
			break;
		case O_TIE:
			tie = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
		if (u && parse_u64(optarg, u)) {
			fprintf(stderr, "kvfs-genmodel: bad number '%s'\n", optarg);
			return EXIT_USAGE;
		}
	}
	if (!strcmp(dtname, "f32"))
		dtype = DT_F32;
	else if (!strcmp(dtname, "bf16"))
		dtype = DT_BF16;
	else if (!strcmp(dtname, "f16"))
		dtype = DT_F16;
	else
		dtype = -1;
	if (!out || !layers || !hidden || !heads || !kv || !inter || vocab < 256 || dtype < 0 ||
	    heads % kv || hidden % heads || (hidden / heads) % 2 || !(theta > 0) || !max_pos ||
	    layers > 4096 || hidden > 65536 || inter > 262144 || vocab > 1 << 20) {
		fprintf(stderr,
			"kvfs-genmodel: need --out, --layers, --hidden, --heads, --kv-heads "
			"and --intermediate; heads a multiple of kv-heads, hidden a multiple "
			"of heads with an even head size, vocab >= 256, dtype f32|bf16|f16\n");
		usage(stderr);
		return EXIT_USAGE;
	}
	D = hidden / heads;
	esize = dtype == DT_F32 ? 4 : 2;
	rng_state = seed * 0x9e3779b97f4a7c15ull + 0x1234567;
	if (!rng_state)
		rng_state = 1;
	if (mkdir(out, 0755) && errno != EEXIST) {
		fprintf(stderr, "kvfs-genmodel: %s: %s\n", out, strerror(errno));
		return 1;
	}

	/* The tensors, in file order. */
	t = calloc(3 + 9 * layers, sizeof(*t));
	if (!t)
		goto out;
#define ADD(r, c_, s, ...)                                                                         \
	do {                                                                                       \
		snprintf(t[nt].name, sizeof(t[nt].name), __VA_ARGS__);                             \
		t[nt].rows = (r);                                                                  \
		t[nt].cols = (c_);                                                                 \
		t[nt].std = (s);                                                                   \
		nt++;                                                                              \
	} while (0)
	{
		double in_h = 1 / sqrt((double)hidden), in_i = 1 / sqrt((double)inter);
		double in_o = 1 / sqrt((double)(heads * D)), res = 1 / sqrt(2.0 * (double)layers);

		ADD(vocab, hidden, 1.0, "model.embed_tokens.weight");
		for (uint64_t l = 0; l < layers; l++) {
			ADD(hidden, 0, 0, "model.layers.%llu.input_layernorm.weight",
			    (unsigned long long)l);
			ADD(heads * D, hidden, in_h, "model.layers.%llu.self_attn.q_proj.weight",
			    (unsigned long long)l);
			ADD(kv * D, hidden, in_h, "model.layers.%llu.self_attn.k_proj.weight",
			    (unsigned long long)l);
			ADD(kv * D, hidden, in_h, "model.layers.%llu.self_attn.v_proj.weight",
			    (unsigned long long)l);
			ADD(hidden, heads * D, in_o * res,
			    "model.layers.%llu.self_attn.o_proj.weight", (unsigned long long)l);
			ADD(hidden, 0, 0, "model.layers.%llu.post_attention_layernorm.weight",
			    (unsigned long long)l);
			ADD(inter, hidden, in_h, "model.layers.%llu.mlp.gate_proj.weight",
			    (unsigned long long)l);
			ADD(inter, hidden, in_h, "model.layers.%llu.mlp.up_proj.weight",
			    (unsigned long long)l);
			ADD(hidden, inter, in_i * res, "model.layers.%llu.mlp.down_proj.weight",
			    (unsigned long long)l);
		}
		ADD(hidden, 0, 0, "model.norm.weight");
		if (!tie)
			ADD(vocab, hidden, in_h, "lm_head.weight");
	}
#undef ADD

	/* Header: names → dtype, shape, offsets; padded with spaces to 8 bytes. */
	hdr = json_object();
	json_object_set_new(hdr, "__metadata__", json_pack("{s:s}", "format", "pt"));
	for (i = 0; i < nt; i++) {
		uint64_t n = t[i].rows * (t[i].cols ? t[i].cols : 1);
		json_t *shape = t[i].cols ? json_pack("[I, I]", (json_int_t)t[i].rows,
						      (json_int_t)t[i].cols)
					  : json_pack("[I]", (json_int_t)t[i].rows);

		json_object_set_new(hdr, t[i].name,
				    json_pack("{s:s, s:o, s:[I, I]}", "dtype",
					      dtype == DT_F32	 ? "F32"
					      : dtype == DT_BF16 ? "BF16"
								 : "F16",
					      "shape", shape, "data_offsets", (json_int_t)off,
					      (json_int_t)(off + n * esize)));
		off += n * esize;
	}
	hdr_text = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
	if (!hdr_text)
		goto out;
	hlen = strlen(hdr_text);
	pad = (8 - hlen % 8) % 8;

	snprintf(path, sizeof(path), "%s/model.safetensors", out);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "wb");
	if (!f)
		goto out_errno;
	{
		uint8_t le[8];
		uint64_t total = hlen + pad;

		for (int b = 0; b < 8; b++)
			le[b] = (uint8_t)(total >> (8 * b));
		if (write_all(f, le, 8) || write_all(f, hdr_text, hlen) ||
		    write_all(f, "        ", pad))
			goto out_errno;
	}
	for (i = 0; i < nt; i++) {
		uint64_t n = t[i].rows * (t[i].cols ? t[i].cols : 1);
		double a = t[i].std * sqrt(3.0); /* uniform [-a, a) has this std */
		uint8_t *buf = malloc(n * esize);

		if (!buf)
			goto out_errno;
		for (uint64_t j = 0; j < n; j++) {
			float v = t[i].std ? (float)(a * rng_unit())
					   : (float)(1.0 + 0.1 * rng_unit());

			if (dtype == DT_F32) {
				memcpy(buf + 4 * j, &v, 4); /* little-endian hosts only */
			} else {
				uint16_t h = dtype == DT_BF16 ? f32_to_bf16(v) : f32_to_f16(v);

				buf[2 * j] = (uint8_t)h;
				buf[2 * j + 1] = (uint8_t)(h >> 8);
			}
		}
		if (write_all(f, buf, n * esize)) {
			free(buf);
			goto out_errno;
		}
		free(buf);
	}
	if (fclose(f)) {
		f = NULL;
		goto out_errno;
	}
	f = NULL;
	if (rename(tmp, path))
		goto out_errno;

	cfg = json_pack("{s:[s], s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:b, s:s, s:s}",
			"architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_size",
			(json_int_t)hidden, "intermediate_size", (json_int_t)inter,
			"num_hidden_layers", (json_int_t)layers, "num_attention_heads",
			(json_int_t)heads, "num_key_value_heads", (json_int_t)kv, "vocab_size",
			(json_int_t)vocab, "max_position_embeddings", (json_int_t)max_pos,
			"rms_norm_eps", 1e-5, "rope_theta", theta, "tie_word_embeddings", tie,
			"hidden_act", "silu", "torch_dtype",
			dtype == DT_F32	   ? "float32"
			: dtype == DT_BF16 ? "bfloat16"
					   : "float16");
	json_object_set_new(cfg, "kvfs_genmodel_seed", json_integer((json_int_t)seed));
	snprintf(path, sizeof(path), "%s/config.json", out);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if (json_dump_file(cfg, tmp, JSON_INDENT(2) | JSON_SORT_KEYS) || rename(tmp, path))
		goto out_errno;
	printf("kvfs-genmodel: %s: %llu layers, hidden %llu, %llu heads (%llu kv, dim %llu), "
	       "intermediate %llu, vocab %llu, %s, %.1f M parameters\n",
	       out, (unsigned long long)layers, (unsigned long long)hidden,
	       (unsigned long long)heads, (unsigned long long)kv, (unsigned long long)D,
	       (unsigned long long)inter, (unsigned long long)vocab, dtname,
	       (double)off / (double)esize / 1e6);
	rc = 0;
	goto out;

out_errno:
	fprintf(stderr, "kvfs-genmodel: %s: %s\n", tmp, strerror(errno ? errno : EIO));
out:
	if (f)
		fclose(f);
	free(hdr_text);
	json_decref(hdr);
	json_decref(cfg);
	free(t);
	return rc;
}
