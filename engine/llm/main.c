/*
 * engine/llm/main.c — kvfs-llm, the reference engine's command line.
 *
 *   kvfs-llm --model DIR [--cache DIR] [options] [PROMPT...]
 *   kvfs-llm --model DIR --conversations FILE.jsonl [--cache DIR] ...
 *   kvfs-llm bench ...                        (engine/llm/bench.c)
 *
 * Requests run one after another in one engine. Prompts come from the
 * arguments, from --prompt-file (the whole file is one prompt; repeatable)
 * and from --conversations: JSON lines, one conversation each,
 *
 *   {"system": "You are...", "turns": ["first question", {"user": "next", "max_new": 40}]}
 *
 * where each turn's prompt is the conversation so far plus the user turn,
 * and the generated answer is appended to the conversation, as chat
 * engines do (byte tokens; a fixed plain-text template). Greedy decoding.
 *
 * Output: one line per request (prompt tokens, tokens reused from the
 * cache, time to first token, decode speed) and a summary; --json prints
 * one JSON document instead. --dump-logits writes, per request, the float32
 * logits of the last prompt position (vocab_size values, native byte
 * order) — what the exactness tests compare.
 *
 * Split mode (disaggregated serving, DESIGN §9). `--role prefill` computes
 * each prompt's KV and saves its blocks (it stops at the first token: that
 * token and the --dump-logits are the prompt's); with `--push NODE` the
 * blocks are also written into that cluster node's DRAM as they are saved
 * (kvfs_ns_push). `--role decode`, on another node of the same cluster,
 * first asks its daemon to prefetch every queued request's blocks
 * (kvfs_prefetch, in the background: fetched from whichever node holds
 * them while the requests wait), then serves each request after waiting
 * for its own prefix (KVFS_PREFETCH_WAIT), so the match finds the blocks
 * locally and loads them layer by layer. The decode side's time to first
 * token includes that wait (`prefetch_ms` of it). The logits equal those of
 * one process doing both: the tests compare them bit for bit.
 *
 * Exit status: 0 success, 1 failure, 2 bad usage.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/llm/llm.h"

#define EXIT_USAGE 2

struct opts {
	const char *model;
	const char *cache;
	const char *seed;
	const char *conversations;
	const char *dump_logits;
	const char **prompt_files;
	size_t nprompt_files;
	unsigned block_tokens, chunk, max_new, threads;
	bool no_cache, posix, json, verbose;
	enum { ROLE_BOTH, ROLE_PREFILL, ROLE_DECODE } role;
	const char *push;
};

/* Everything printed at the end. */
struct run {
	struct eng *e;
	const struct eng_model *m;
	const struct opts *o;
	FILE *dump;
	json_t *requests; /* --json */
	size_t n, prompt_tokens, reused_tokens, generated, fallbacks;
	double ttft_sum, ttft_max, decode_ms;
	double prefetch_ms;	       /* this request's wait for its prefetch (decode role) */
	struct kvfs_prefetch_info pf;  /* what that prefetch did */
	struct kvfs_node_prefix where; /* who held the longest prefix when it left the queue */
	long where_n;		       /* nodes holding some of it; < 0: the index's error */
	uint64_t fetched;	       /* blocks brought from other nodes, all requests */
	double *ttfts;
	size_t ttft_cap;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kvfs-llm --model DIR [options] [PROMPT...]\n"
		"       kvfs-llm bench --model DIR [--kvfs DIR] [--tmpfs DIR] [options]\n"
		"\n"
		"A small Llama-family engine that reuses KV caches through kvfs (libkvfs).\n"
		"\n"
		"options:\n"
		"  --model DIR           config.json + model.safetensors (see kvfs-genmodel)\n"
		"  --cache DIR           kvfs namespace directory: on a kvfs mount, or any "
		"directory\n"
		"  --no-cache            no cache, even with --cache\n"
		"  --posix               libkvfs's POSIX path even on a kvfs mount\n"
		"  --block-tokens N      tokens per KV block and cached block (default 16)\n"
		"  --chunk N             prefill rows per matrix product, a multiple of the block\n"
		"                        (default: 64 rounded up to a block)\n"
		"  --seed-hash S         block hash seed, vLLM's PYTHONHASHSEED (default \"0\")\n"
		"  --max-new N           tokens generated per request (default 32)\n"
		"  --threads N           OpenBLAS threads (default 2)\n"
		"  --prompt-file FILE    one prompt: the whole file (repeatable)\n"
		"  --conversations FILE  JSONL, one conversation a line:\n"
		"                        {\"system\": S, \"turns\": [U, {\"user\": U, \"max_new\": "
		"N}]}\n"
		"  --dump-logits FILE    float32 logits of each request's last prompt position\n"
		"  --role ROLE           prefill: compute and save each prompt's KV, stop at the\n"
		"                        first token; decode: prefetch the prompts' blocks from\n"
		"                        the cluster, then serve (split mode; needs --cache)\n"
		"  --push NODE           prefill: also write the blocks into NODE's DRAM\n"
		"  --json                machine-readable output\n"
		"  -v, --verbose         print the generated text\n"
		"  -h, --help            this text\n");
}

static int parse_uint(const char *s, unsigned *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v > 1u << 30)
		return -1;
	*out = (unsigned)v;
	return 0;
}

/* --- output --------------------------------------------------------------------------- */

static void print_text(const uint32_t *tok, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned t = tok[i];

		if (t >= 32 && t < 127 && t != '\\')
			putchar((int)t);
		else if (t == '\n')
			fputs("\\n", stdout);
		else
			printf("\\x%02x", t & 0xff);
	}
	putchar('\n');
}

static int report(struct run *r, const char *label, const uint32_t *out, size_t max_new,
		  const float *logits, const struct eng_req_stats *st)
{
	double tps = st->decode_ms > 0 && st->generated > 1
			     ? (double)(st->generated - 1) * 1e3 / st->decode_ms
			     : 0;
	size_t V = r->m->cfg.vocab;

	if (r->dump && fwrite(logits, sizeof(float), V, r->dump) != V) {
		fprintf(stderr, "kvfs-llm: --dump-logits: %s\n", strerror(errno));
		return -EIO;
	}
	r->n++;
	r->prompt_tokens += st->prompt_tokens;
	r->reused_tokens += st->reused_tokens;
	r->generated += st->generated;
	r->fallbacks += st->fallback;
	r->ttft_sum += st->ttft_ms;
	r->ttft_max = st->ttft_ms > r->ttft_max ? st->ttft_ms : r->ttft_max;
	r->decode_ms += st->decode_ms;
	if (r->n > r->ttft_cap) {
		r->ttft_cap = r->ttft_cap ? 2 * r->ttft_cap : 64;
		r->ttfts = realloc(r->ttfts, sizeof(double) * r->ttft_cap);
		if (!r->ttfts)
			return -ENOMEM;
	}
	r->ttfts[r->n - 1] = st->ttft_ms;
	if (r->o->json) {
		json_t *j = json_pack(
			"{s:s, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:I, s:f, s:b, s:i}",
			"request", label, "prompt_tokens", (json_int_t)st->prompt_tokens,
			"reused_tokens", (json_int_t)st->reused_tokens, "matched_blocks",
			(json_int_t)st->matched_blocks, "computed_tokens",
			(json_int_t)st->computed_tokens, "ttft_ms", st->ttft_ms, "match_ms",
			st->match_ms, "stall_ms", st->stall_ms, "prefill_ms", st->prefill_ms,
			"generated", (json_int_t)st->generated, "decode_tok_s", tps, "fallback",
			st->fallback, "load_error", st->load_error);
		json_t *toks = json_array();

		if (r->o->role == ROLE_DECODE) {
			json_object_set_new(j, "prefetch_ms", json_real(r->prefetch_ms));
			json_object_set_new(j, "prefetch_fetched",
					    json_integer((json_int_t)r->pf.fetched));
			json_object_set_new(j, "prefetch_present",
					    json_integer((json_int_t)r->pf.present));
			json_object_set_new(j, "prefetch_missing",
					    json_integer((json_int_t)r->pf.missing));
			if (r->where_n > 0)
				json_object_set_new(
					j, "longest_prefix",
					json_pack("{s:s,s:i,s:s,s:b}", "node", r->where.node,
						  "blocks", (int)r->where.blocks, "tier",
						  r->where.tier, "self", r->where.self));
		}

		for (size_t i = 0; i < max_new; i++)
			json_array_append_new(toks, json_integer(out[i]));
		json_object_set_new(j, "tokens", toks);
		json_array_append_new(r->requests, j);
		return 0;
	}
	if (r->o->role == ROLE_DECODE)
		printf("%s: longest cached prefix %u blocks on %s%s; prefetch waited %.1f ms: %llu "
		       "blocks brought in, %llu already here, %llu held nowhere\n",
		       label, r->where_n > 0 ? r->where.blocks : 0,
		       r->where_n > 0 ? r->where.node : "no node",
		       r->where_n > 0 && r->where.self ? " (this node)" : "", r->prefetch_ms,
		       (unsigned long long)(r->pf.fetched + r->pf.promoted),
		       (unsigned long long)r->pf.present, (unsigned long long)r->pf.missing);
	printf("%s: prompt %zu tok, reused %zu (%.1f%%), ttft %.1f ms (prefill %.1f, stall %.1f),"
	       " decode %zu tok at %.1f tok/s%s%s\n",
	       label, st->prompt_tokens, st->reused_tokens,
	       100.0 * (double)st->reused_tokens / (double)st->prompt_tokens, st->ttft_ms,
	       st->prefill_ms, st->stall_ms, st->generated, tps,
	       st->fallback ? ", load failed, recomputed: " : "",
	       st->fallback ? strerror(-st->load_error) : "");
	if (r->o->verbose) {
		fputs("  > ", stdout);
		print_text(out, max_new);
	}
	fflush(stdout);
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void summary(struct run *r)
{
	struct kvfs_ns_stats ks;
	kvfs_ns *ns = eng_ns(r->e);
	double p50 = 0, mean = r->n ? r->ttft_sum / (double)r->n : 0;
	double tps = r->decode_ms > 0 && r->generated > r->n
			     ? (double)(r->generated - r->n) * 1e3 / r->decode_ms
			     : 0;

	if (r->n) {
		qsort(r->ttfts, r->n, sizeof(double), cmp_double);
		p50 = r->ttfts[r->n / 2];
	}
	memset(&ks, 0, sizeof(ks));
	if (ns)
		kvfs_ns_get_stats(ns, &ks);
	if (r->o->json) {
		json_t *doc = json_pack(
			"{s:s, s:o, s:{s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:I}}", "model_id",
			eng_model_id(r->e), "requests", r->requests, "summary", "requests",
			(json_int_t)r->n, "prompt_tokens", (json_int_t)r->prompt_tokens,
			"reused_tokens", (json_int_t)r->reused_tokens, "generated",
			(json_int_t)r->generated, "ttft_mean_ms", mean, "ttft_p50_ms", p50,
			"ttft_max_ms", r->ttft_max, "decode_tok_s", tps, "fallbacks",
			(json_int_t)r->fallbacks);

		if (ns) {
			json_t *c = json_pack(
				"{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
				"dir", r->o->cache, "path", ks.fast ? "fast" : "posix", "matches",
				(json_int_t)ks.matches, "keys_asked", (json_int_t)ks.keys_asked,
				"keys_matched", (json_int_t)ks.keys_matched, "blocks_loaded",
				(json_int_t)ks.blocks_loaded, "bytes_loaded",
				(json_int_t)ks.bytes_loaded, "load_errors",
				(json_int_t)ks.load_errors, "saves_queued",
				(json_int_t)ks.saves_queued, "saves_present",
				(json_int_t)ks.saves_present, "saves_dropped",
				(json_int_t)ks.saves_dropped, "saves_written",
				(json_int_t)ks.saves_written);

			json_object_set_new(c, "save_errors",
					    json_integer((json_int_t)ks.save_errors));
			json_object_set_new(doc, "cache", c);
		}
		json_dumpf(doc, stdout, JSON_COMPACT);
		putchar('\n');
		json_decref(doc);
		r->requests = NULL;
		return;
	}
	printf("summary: %zu requests, %zu prompt tokens, %zu reused (%.1f%%), ttft mean %.1f ms "
	       "p50 %.1f max %.1f, decode %.1f tok/s, %zu fallbacks\n",
	       r->n, r->prompt_tokens, r->reused_tokens,
	       r->prompt_tokens ? 100.0 * (double)r->reused_tokens / (double)r->prompt_tokens : 0,
	       mean, p50, r->ttft_max, tps, r->fallbacks);
	if (ns)
		printf("cache: %s (%s path), model %s: %llu blocks loaded, %llu load errors, "
		       "%llu saves written, %llu already present, %llu dropped, %llu failed\n",
		       r->o->cache, ks.fast ? "fast" : "posix", eng_model_id(r->e),
		       (unsigned long long)ks.blocks_loaded, (unsigned long long)ks.load_errors,
		       (unsigned long long)ks.saves_written, (unsigned long long)ks.saves_present,
		       (unsigned long long)ks.saves_dropped, (unsigned long long)ks.save_errors);
	else
		printf("cache: none, model %s\n", eng_model_id(r->e));
}

/* --- requests ------------------------------------------------------------------------------ */

/* Ask the daemon to bring @tok's cached blocks into this node's DRAM. */
static int prefetch(struct run *r, const uint32_t *tok, size_t n, unsigned flags)
{
	kvfs_ns *ns = eng_ns(r->e);
	size_t max = n / r->o->block_tokens + 1;
	kvfs_key *keys;
	long nk, rc;

	if (!ns)
		return -ENOTSUP;
	keys = malloc(max * sizeof(*keys));
	if (!keys)
		return -ENOMEM;
	nk = kvfs_ns_keys(ns, tok, n, NULL, keys, max);
	if (nk > 0 && (flags & KVFS_PREFETCH_WAIT)) {
		/* What a KV-aware router would have seen for this request. */
		memset(&r->where, 0, sizeof(r->where));
		r->where_n = kvfs_cluster_match(ns, keys, (size_t)nk, &r->where, 1);
	}
	rc = nk <= 0 ? nk : kvfs_prefetch(ns, keys, (size_t)nk, flags, &r->pf);
	free(keys);
	return rc < 0 ? (int)rc : 0;
}

static int serve(struct run *r, const char *label, const uint32_t *tok, size_t n, size_t max_new,
		 uint32_t *out)
{
	float *logits = malloc(sizeof(float) * r->m->cfg.vocab);
	struct eng_req_stats st;
	int rc;

	if (!logits)
		return -ENOMEM;
	r->prefetch_ms = 0;
	memset(&r->pf, 0, sizeof(r->pf));
	if (r->o->role == ROLE_DECODE) {
		/* The request leaves the queue: its prefix must be here now. */
		double t0 = eng_now_ms();

		rc = prefetch(r, tok, n, KVFS_PREFETCH_WAIT);
		r->prefetch_ms = eng_now_ms() - t0;
		if (rc < 0 && rc != -ENOTSUP)
			fprintf(stderr, "kvfs-llm: %s: prefetch: %s (computing what is missing)\n",
				label, strerror(-rc));
		r->fetched += r->pf.fetched;
	}
	rc = eng_generate(r->e, tok, n, max_new, out, logits, &st);
	st.ttft_ms += r->prefetch_ms;
	if (rc)
		fprintf(stderr, "kvfs-llm: %s: %s%s\n", label, strerror(-rc),
			rc == -EINVAL ? " (empty, or longer than max_position_embeddings)" : "");
	else
		rc = report(r, label, out, max_new, logits, &st);
	free(logits);
	return rc;
}

static int serve_text(struct run *r, const char *label, const char *text, size_t len)
{
	uint32_t *tok = malloc(sizeof(uint32_t) * (len ? len : 1));
	uint32_t *out = malloc(sizeof(uint32_t) * r->o->max_new);
	int rc = -ENOMEM;

	if (tok && out)
		rc = serve(r, label, tok, eng_tok_encode(text, len, tok),
			   r->o->role == ROLE_PREFILL ? 1 : r->o->max_new, out);
	free(tok);
	free(out);
	return rc;
}

static int slurp(const char *path, char **text, size_t *len)
{
	FILE *f = fopen(path, "rb");
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);

	if (!f || !buf) {
		int rc = f ? -ENOMEM : -errno;

		if (f)
			fclose(f);
		free(buf);
		return rc;
	}
	for (;;) {
		size_t got = fread(buf + n, 1, cap - n, f);

		n += got;
		if (n < cap)
			break;
		cap *= 2;
		char *nb = realloc(buf, cap);

		if (!nb) {
			fclose(f);
			free(buf);
			return -ENOMEM;
		}
		buf = nb;
	}
	fclose(f);
	*text = buf;
	*len = n;
	return 0;
}

static int toks_text(struct eng_toks *c, const char *s)
{
	size_t len = strlen(s);
	uint32_t *t = malloc(sizeof(*t) * (len ? len : 1));
	int rc;

	if (!t)
		return -ENOMEM;
	eng_tok_encode(s, len, t);
	rc = eng_toks_append(c, t, len);
	free(t);
	return rc;
}

static int conversation(struct run *r, size_t ci, json_t *conv)
{
	json_t *sys = json_object_get(conv, "system"), *turns = json_object_get(conv, "turns"), *t;
	struct eng_toks c = {0};
	uint32_t *out = NULL;
	char label[64];
	size_t i;
	int rc = 0;

	if (!json_is_array(turns) || (sys && !json_is_string(sys))) {
		fprintf(stderr,
			"kvfs-llm: conversation %zu: needs \"turns\" (an array) and an "
			"optional \"system\" string\n",
			ci + 1);
		return -EINVAL;
	}
	if (sys) {
		rc = toks_text(&c, json_string_value(sys));
		if (!rc)
			rc = toks_text(&c, "\n\n");
	}
	json_array_foreach(turns, i, t)
	{
		json_t *u = json_is_string(t) ? t : json_object_get(t, "user");
		json_t *mn = json_is_object(t) ? json_object_get(t, "max_new") : NULL;
		size_t max_new = r->o->max_new;

		if (rc)
			break;
		if (!json_is_string(u) ||
		    (mn && (!json_is_integer(mn) || json_integer_value(mn) < 1 ||
			    json_integer_value(mn) > 1 << 20))) {
			fprintf(stderr,
				"kvfs-llm: conversation %zu turn %zu: a string, or {\"user\": "
				"string, \"max_new\": positive integer}\n",
				ci + 1, i + 1);
			rc = -EINVAL;
			break;
		}
		if (mn)
			max_new = (size_t)json_integer_value(mn);
		rc = toks_text(&c, "User: ");
		if (!rc)
			rc = toks_text(&c, json_string_value(u));
		if (!rc)
			rc = toks_text(&c, "\nAssistant: ");
		free(out);
		out = malloc(sizeof(*out) * max_new);
		if (rc || !out) {
			rc = rc ? rc : -ENOMEM;
			break;
		}
		snprintf(label, sizeof(label), "conv %zu turn %zu", ci + 1, i + 1);
		rc = serve(r, label, c.t, c.n, max_new, out);
		if (!rc)
			rc = eng_toks_append(&c, out, max_new);
		if (!rc)
			rc = toks_text(&c, "\n\n");
	}
	free(out);
	free(c.t);
	return rc;
}

static int conversations(struct run *r, const char *path)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0, ci = 0;
	ssize_t len;
	int rc = 0;

	if (!f) {
		fprintf(stderr, "kvfs-llm: %s: %s\n", path, strerror(errno));
		return -errno;
	}
	while (!rc && (len = getline(&line, &cap, f)) >= 0) {
		json_error_t jerr;
		json_t *conv;

		if (strspn(line, " \t\r\n") == (size_t)len)
			continue;
		conv = json_loadb(line, (size_t)len, 0, &jerr);
		if (!json_is_object(conv)) {
			fprintf(stderr, "kvfs-llm: %s: conversation %zu: %s\n", path, ci + 1,
				conv ? "not a JSON object" : jerr.text);
			rc = -EINVAL;
		} else {
			rc = conversation(r, ci, conv);
		}
		json_decref(conv);
		ci++;
	}
	free(line);
	fclose(f);
	return rc;
}

/* --- main ---------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	enum {
		O_MODEL = 256,
		O_CACHE,
		O_NO_CACHE,
		O_POSIX,
		O_BLOCK,
		O_CHUNK,
		O_SEED,
		O_MAX_NEW,
		O_THREADS,
		O_PROMPT_FILE,
		O_CONV,
		O_DUMP,
		O_JSON,
		O_ROLE,
		O_PUSH
	};
	static const struct option lopts[] = {
		{"model", required_argument, NULL, O_MODEL},
		{"cache", required_argument, NULL, O_CACHE},
		{"no-cache", no_argument, NULL, O_NO_CACHE},
		{"posix", no_argument, NULL, O_POSIX},
		{"block-tokens", required_argument, NULL, O_BLOCK},
		{"chunk", required_argument, NULL, O_CHUNK},
		{"seed-hash", required_argument, NULL, O_SEED},
		{"max-new", required_argument, NULL, O_MAX_NEW},
		{"threads", required_argument, NULL, O_THREADS},
		{"prompt-file", required_argument, NULL, O_PROMPT_FILE},
		{"conversations", required_argument, NULL, O_CONV},
		{"dump-logits", required_argument, NULL, O_DUMP},
		{"json", no_argument, NULL, O_JSON},
		{"role", required_argument, NULL, O_ROLE},
		{"push", required_argument, NULL, O_PUSH},
		{"verbose", no_argument, NULL, 'v'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct opts o = {.seed = "0", .block_tokens = 16, .max_new = 32, .threads = 2};
	struct eng_opts eo;
	struct eng_model *m = NULL;
	struct run r;
	char err[ENG_ERR_LEN];
	int c, rc = 0, status = 1;

	if (argc > 1 && !strcmp(argv[1], "bench"))
		return eng_bench_main(argc - 1, argv + 1);
	o.prompt_files = calloc((size_t)argc, sizeof(*o.prompt_files));
	if (!o.prompt_files)
		return 1;
	while ((c = getopt_long(argc, argv, "vh", lopts, NULL)) != -1) {
		unsigned *u = NULL;

		switch (c) {
		case O_MODEL:
			o.model = optarg;
			break;
		case O_CACHE:
			o.cache = optarg;
			break;
		case O_NO_CACHE:
			o.no_cache = true;
			break;
		case O_POSIX:
			o.posix = true;
			break;
		case O_BLOCK:
			u = &o.block_tokens;
			break;
		case O_CHUNK:
			u = &o.chunk;
			break;
		case O_SEED:
			o.seed = optarg;
			break;
		case O_MAX_NEW:
			u = &o.max_new;
			break;
		case O_THREADS:
			u = &o.threads;
			break;
		case O_PROMPT_FILE:
			o.prompt_files[o.nprompt_files++] = optarg;
			break;
		case O_CONV:
			o.conversations = optarg;
			break;
		case O_DUMP:
			o.dump_logits = optarg;
			break;
		case O_JSON:
			o.json = true;
			break;
		case O_ROLE:
			if (!strcmp(optarg, "prefill")) {
				o.role = ROLE_PREFILL;
			} else if (!strcmp(optarg, "decode")) {
				o.role = ROLE_DECODE;
			} else {
				fprintf(stderr, "kvfs-llm: --role is prefill or decode\n");
				free(o.prompt_files);
				return EXIT_USAGE;
			}
			break;
		case O_PUSH:
			o.push = optarg;
			break;
		case 'v':
			o.verbose = true;
			break;
		case 'h':
			usage(stdout);
			free(o.prompt_files);
			return 0;
		default:
			usage(stderr);
			free(o.prompt_files);
			return EXIT_USAGE;
		}
		if (u && (parse_uint(optarg, u) || !*u)) {
			fprintf(stderr, "kvfs-llm: bad number '%s'\n", optarg);
			free(o.prompt_files);
			return EXIT_USAGE;
		}
	}
	if (!o.model || (optind == argc && !o.nprompt_files && !o.conversations)) {
		fprintf(stderr, "kvfs-llm: %s\n",
			!o.model ? "--model is required"
				 : "no prompts (arguments, --prompt-file, "
				   "--conversations)");
		usage(stderr);
		free(o.prompt_files);
		return EXIT_USAGE;
	}
	if ((o.role != ROLE_BOTH && (!o.cache || o.no_cache)) ||
	    (o.push && o.role != ROLE_PREFILL)) {
		fprintf(stderr, "kvfs-llm: %s\n",
			o.push && o.role != ROLE_PREFILL
				? "--push goes with --role prefill"
				: "--role needs --cache (a namespace on a kvfs mount)");
		free(o.prompt_files);
		return EXIT_USAGE;
	}
	memset(&r, 0, sizeof(r));
	if (eng_model_load(o.model, &m, err, sizeof(err))) {
		fprintf(stderr, "kvfs-llm: %s\n", err);
		goto out;
	}
	memset(&eo, 0, sizeof(eo));
	eo.block_tokens = o.block_tokens;
	eo.chunk_tokens = o.chunk;
	eo.cache_dir = o.no_cache ? NULL : o.cache;
	eo.seed = o.seed;
	eo.path = o.posix ? KVFS_PATH_POSIX : KVFS_PATH_AUTO;
	eo.threads = o.threads;
	if (o.no_cache)
		o.cache = NULL;
	r.m = m;
	r.o = &o;
	if (eng_open(m, &eo, &r.e, err, sizeof(err))) {
		fprintf(stderr, "kvfs-llm: %s\n", err);
		goto out;
	}
	if (o.dump_logits && !(r.dump = fopen(o.dump_logits, "wb"))) {
		fprintf(stderr, "kvfs-llm: %s: %s\n", o.dump_logits, strerror(errno));
		goto out;
	}
	if (o.push && (rc = kvfs_ns_push(eng_ns(r.e), o.push))) {
		fprintf(stderr, "kvfs-llm: --push %s: %s\n", o.push,
			rc == -ENOTSUP ? "the cache is not on a kvfs mount in a cluster"
				       : strerror(-rc));
		goto out;
	}
	if (o.json)
		r.requests = json_array();
	if (o.role == ROLE_DECODE) {
		/* Every queued request's prefix starts coming while they wait. */
		for (int i = optind; i < argc; i++) {
			size_t len = strlen(argv[i]);
			uint32_t *tok = malloc(sizeof(uint32_t) * (len ? len : 1));

			if (tok)
				(void)prefetch(&r, tok, eng_tok_encode(argv[i], len, tok), 0);
			free(tok);
		}
		for (size_t i = 0; i < o.nprompt_files; i++) {
			char *text = NULL;
			size_t len = 0;
			uint32_t *tok;

			if (slurp(o.prompt_files[i], &text, &len))
				continue;
			tok = malloc(sizeof(uint32_t) * (len ? len : 1));
			if (tok)
				(void)prefetch(&r, tok, eng_tok_encode(text, len, tok), 0);
			free(tok);
			free(text);
		}
	}
	for (int i = optind; i < argc && !rc; i++) {
		char label[32];

		snprintf(label, sizeof(label), "prompt %d", i - optind + 1);
		rc = serve_text(&r, label, argv[i], strlen(argv[i]));
	}
	for (size_t i = 0; i < o.nprompt_files && !rc; i++) {
		char *text = NULL;
		size_t len = 0;

		rc = slurp(o.prompt_files[i], &text, &len);
		if (rc) {
			fprintf(stderr, "kvfs-llm: %s: %s\n", o.prompt_files[i], strerror(-rc));
			break;
		}
		rc = serve_text(&r, o.prompt_files[i], text, len);
		free(text);
	}
	if (!rc && o.conversations)
		rc = conversations(&r, o.conversations);
	if (!rc) {
		summary(&r);
		status = 0;
	}
out:
	if (r.dump && fclose(r.dump) && !status) {
		fprintf(stderr, "kvfs-llm: %s: %s\n", o.dump_logits, strerror(errno));
		status = 1;
	}
	json_decref(r.requests);
	free(r.ttfts);
	eng_close(r.e);
	eng_model_free(m);
	free(o.prompt_files);
	return status;
}
