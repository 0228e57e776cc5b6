/*
 * engine/llm/bench.c — `kvfs-llm bench`: time to first token with kvfs,
 * with plain files on tmpfs, and without a cache, in one process.
 *
 *   kvfs-llm bench --model DIR [--kvfs MOUNT/DIR] [--tmpfs /dev/shm/DIR]
 *                  [--workload all|multi-turn|long-doc|prefix] [options]
 *
 * Every request runs in every mode, one mode after the other, against the
 * same prompt: "none" (recompute everything), "tmpfs" (libkvfs's POSIX path
 * on a tmpfs directory) and "kvfs" (libkvfs on a kvfs mount: the fast path
 * when the mount offers it, else POSIX). Each mode has its own engine and a
 * fresh namespace directory (removed at the end). The logits of every
 * request are compared across modes: the bench also checks exactness.
 *
 * Workloads (token counts; the tokenizer is byte-level, text is random words):
 *
 *   multi-turn  the shape of vLLM's multi-turn benchmark: a 500-token system
 *               prefix shared by all conversations, a ~1000-token context per
 *               conversation, user turns of 120-160 tokens, answers of 80-120;
 *               conversations interleaved turn by turn, as concurrent clients.
 *   long-doc    several 8k-token documents, each asked several questions
 *               (round robin over documents), short answers.
 *   prefix      one 4096-token prompt: its cold prefill against loading its
 *               cached blocks alone (match + load, nothing computed) — the
 *               issue's target is loading at least 10x faster — and its warm
 *               time to first token.
 *
 * Figures are printed, never asserted: performance belongs here, not in tests.
 */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/llm/llm.h"

#define MAX_MODES  3
#define EXIT_USAGE 2

struct bopts {
	const char *model, *kvfs, *tmpfs, *workload, *emit;
	unsigned block_tokens, chunk, threads, seed;
	unsigned convs, turns, docs, questions, doc_tokens, prefix_tokens;
	bool json;
	bool progress; /* a progress line on stderr: a terminal, and not --json */
};

struct mode {
	const char *name;
	char dir[4096]; /* namespace directory ("" for none) */
	struct eng *e;
};

/* Results of one workload: per request and mode. */
struct wl {
	const char *name;
	size_t n, cap;
	struct eng_req_stats *st; /* [n][nmodes] */
	bool *warm;		  /* [n]: not the first request of its conversation/doc */
	size_t mismatches;	  /* requests whose logits differ across modes */
};

static struct mode modes[MAX_MODES];
static size_t nmodes;
static const struct eng_model *model;

/* --- text ------------------------------------------------------------------------------ */

static uint64_t rng = 88172645463325252ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static unsigned rnd_between(unsigned lo, unsigned hi)
{
	return lo + (unsigned)(rnd() % (hi - lo + 1));
}

/* @n tokens of random lowercase words. */
static void words(uint32_t *out, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned len = rnd_between(2, 9);

		for (unsigned j = 0; j < len && i < n; j++)
			out[i++] = 'a' + (uint32_t)(rnd() % 26);
		if (i < n)
			out[i++] = rnd() % 11 ? ' ' : '.';
	}
}

static int sb_words(struct eng_toks *s, size_t n)
{
	uint32_t *t = malloc(n * sizeof(*t));
	int rc;

	if (!t)
		return -ENOMEM;
	words(t, n);
	rc = eng_toks_append(s, t, n);
	free(t);
	return rc;
}

/* --- running requests --------------------------------------------------------------------- */

static struct eng_req_stats *wl_next(struct wl *w, bool warm)
{
	if (w->n == w->cap) {
		size_t cap = w->cap ? 2 * w->cap : 32;
		struct eng_req_stats *st = realloc(w->st, cap * MAX_MODES * sizeof(*st));
		bool *wm = realloc(w->warm, cap * sizeof(*wm));

		if (st)
			w->st = st;
		if (wm)
			w->warm = wm;
		if (!st || !wm)
			return NULL;
		w->cap = cap;
	}
	w->warm[w->n] = warm;
	return &w->st[w->n++ * MAX_MODES];
}

/*
 * Run one request in every mode. The first mode's answer goes to @answer
 * (@max_new tokens). Logits that differ between modes are counted.
 */
static int run_request(struct wl *w, const uint32_t *prompt, size_t n, size_t max_new,
		       uint32_t *answer, bool warm)
{
	size_t V = model->cfg.vocab;
	float *ref = malloc(V * sizeof(float)), *lg = malloc(V * sizeof(float));
	uint32_t *out = malloc(max_new * sizeof(*out));
	struct eng_req_stats *st = wl_next(w, warm);
	bool differ = false;
	int rc = 0;

	if (!ref || !lg || !out || !st) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t m = 0; m < nmodes && !rc; m++) {
		rc = eng_generate(modes[m].e, prompt, n, max_new, m ? out : answer, m ? lg : ref,
				  &st[m]);
		if (rc)
			fprintf(stderr, "kvfs-llm bench: %s: request of %zu tokens: %s\n",
				modes[m].name, n, strerror(-rc));
		else if (m && (memcmp(lg, ref, V * sizeof(float)) ||
			       memcmp(out, answer, max_new * sizeof(*out))))
			differ = true;
	}
	w->mismatches += differ;
out:
	free(ref);
	free(lg);
	free(out);
	return rc;
}

/* --- workloads ------------------------------------------------------------------------------- */

static int multi_turn(const struct bopts *o, struct wl *w)
{
	struct eng_toks *conv = calloc(o->convs, sizeof(*conv)), sys = {0};
	uint32_t *answer = malloc(120 * sizeof(*answer));
	int rc = answer && conv ? sb_words(&sys, 500) : -ENOMEM;

	w->name = "multi-turn";
	for (unsigned c = 0; c < o->convs && !rc; c++) {
		rc = eng_toks_append(&conv[c], sys.t, sys.n);
		if (!rc)
			rc = sb_words(&conv[c], rnd_between(950, 1050));
	}
	for (unsigned t = 0; t < o->turns && !rc; t++)
		for (unsigned c = 0; c < o->convs && !rc; c++) {
			unsigned max_new = rnd_between(80, 120);

			rc = sb_words(&conv[c], rnd_between(120, 160));
			if (!rc)
				rc = run_request(w, conv[c].t, conv[c].n, max_new, answer, t > 0);
			if (!rc)
				rc = eng_toks_append(&conv[c], answer, max_new);
			if (o->progress)
				fprintf(stderr, "\r  multi-turn: turn %u/%u conversation %u/%u ",
					t + 1, o->turns, c + 1, o->convs);
		}
	if (o->progress)
		fprintf(stderr, "\r%60s\r", "");
	for (unsigned c = 0; conv && c < o->convs; c++)
		free(conv[c].t);
	free(conv);
	free(sys.t);
	free(answer);
	return rc;
}

static int long_doc(const struct bopts *o, struct wl *w)
{
	struct eng_toks *doc = calloc(o->docs, sizeof(*doc));
	uint32_t answer[16];
	int rc = doc ? 0 : -ENOMEM;

	w->name = "long-doc";
	for (unsigned d = 0; d < o->docs && !rc; d++)
		rc = sb_words(&doc[d], o->doc_tokens);
	for (unsigned q = 0; q < o->questions && !rc; q++)
		for (unsigned d = 0; d < o->docs && !rc; d++) {
			size_t keep = doc[d].n;

			rc = sb_words(&doc[d], rnd_between(30, 50));
			if (!rc)
				rc = run_request(w, doc[d].t, doc[d].n, 16, answer, q > 0);
			doc[d].n = keep; /* each question is asked of the document alone */
			if (o->progress)
				fprintf(stderr, "\r  long-doc: question %u/%u document %u/%u ",
					q + 1, o->questions, d + 1, o->docs);
		}
	if (o->progress)
		fprintf(stderr, "\r%60s\r", "");
	for (unsigned d = 0; doc && d < o->docs; d++)
		free(doc[d].t);
	free(doc);
	return rc;
}

struct prefix_result {
	size_t tokens, blocks[MAX_MODES];
	double cold_ms[MAX_MODES], load_ms[MAX_MODES], warm_ms[MAX_MODES];
	double compute_ms; /* cold prefill without a cache */
	uint64_t bytes;
};

static int prefix(const struct bopts *o, struct wl *w, struct prefix_result *pr)
{
	struct eng_toks p = {0};
	uint32_t answer[1];
	int rc = sb_words(&p, o->prefix_tokens);

	w->name = "prefix";
	memset(pr, 0, sizeof(*pr));
	pr->tokens = p.n;
	if (!rc)
		rc = run_request(w, p.t, p.n, 1, answer, false);
	for (size_t m = 0; m < nmodes && !rc; m++) {
		pr->cold_ms[m] = w->st[m].ttft_ms;
		if (!strcmp(modes[m].name, "none"))
			pr->compute_ms = w->st[m].prefill_ms;
		if (!eng_ns(modes[m].e))
			continue;
		kvfs_save_flush(eng_ns(modes[m].e));
		rc = eng_probe_load(modes[m].e, p.t, p.n, &pr->blocks[m], &pr->load_ms[m]);
		if (rc)
			fprintf(stderr, "kvfs-llm bench: %s: loading the prefix: %s\n",
				modes[m].name, strerror(-rc));
		pr->bytes = pr->blocks[m] * kvfs_ns_block_bytes(eng_ns(modes[m].e));
	}
	if (!rc)
		rc = run_request(w, p.t, p.n, 1, answer, true);
	for (size_t m = 0; m < nmodes && !rc; m++)
		pr->warm_ms[m] = w->st[MAX_MODES + m].ttft_ms;
	free(p.t);
	return rc;
}

/* --- reporting ----------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

struct agg {
	size_t n, prompt, reused, fallbacks;
	double mean, p50, p90, match, stall, compute;
};

/* Aggregate mode @m over the requests of @w that are warm (or all with !only_warm). */
static struct agg aggregate(const struct wl *w, size_t m, bool only_warm)
{
	double *v = malloc((w->n ? w->n : 1) * sizeof(double));
	struct agg a;

	memset(&a, 0, sizeof(a));
	for (size_t i = 0; v && i < w->n; i++) {
		const struct eng_req_stats *st = &w->st[i * MAX_MODES + m];

		if (only_warm && !w->warm[i])
			continue;
		v[a.n++] = st->ttft_ms;
		a.prompt += st->prompt_tokens;
		a.reused += st->reused_tokens;
		a.fallbacks += st->fallback;
		a.mean += st->ttft_ms;
		a.match += st->match_ms;
		a.stall += st->stall_ms;
		a.compute += st->prefill_ms - st->stall_ms;
	}
	if (a.n) {
		qsort(v, a.n, sizeof(double), cmp_double);
		a.p50 = v[a.n / 2];
		a.p90 = v[(a.n * 9) / 10 < a.n ? (a.n * 9) / 10 : a.n - 1];
		a.mean /= (double)a.n;
		a.match /= (double)a.n;
		a.stall /= (double)a.n;
		a.compute /= (double)a.n;
	}
	free(v);
	return a;
}

static json_t *report(const struct wl *w, const char *what, bool json)
{
	json_t *j = json ? json_object() : NULL;
	struct agg base[2];

	if (!json)
		printf("\n%s: %zu requests x %zu modes; logits identical across modes: %s\n",
		       w->name, w->n, nmodes, w->mismatches ? "NO" : "yes");
	if (!json && what)
		printf("  %s\n", what);
	for (int warm = 0; warm < 2; warm++) {
		if (!json)
			printf("  %-9s %-6s %5s %8s %7s %9s %9s %9s %8s %8s %8s %9s\n",
			       warm ? "warm" : "all", "mode", "reqs", "prompt", "reused",
			       "ttft mean", "p50", "p90", "speedup", "match", "stall", "compute");
		for (size_t m = 0; m < nmodes; m++) {
			struct agg a = aggregate(w, m, warm);

			if (!m)
				base[warm] = a;
			if (json) {
				json_t *r = json_pack(
					"{s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:f, "
					"s:f, s:I}",
					"requests", (json_int_t)a.n, "prompt_tokens",
					(json_int_t)a.prompt, "reused_tokens", (json_int_t)a.reused,
					"ttft_mean_ms", a.mean, "ttft_p50_ms", a.p50, "ttft_p90_ms",
					a.p90, "speedup", a.mean > 0 ? base[warm].mean / a.mean : 0,
					"match_ms", a.match, "stall_ms", a.stall, "compute_ms",
					a.compute, "fallbacks", (json_int_t)a.fallbacks);
				json_t *k = json_object_get(j, modes[m].name);

				if (!k) {
					k = json_object();
					json_object_set_new(j, modes[m].name, k);
				}
				json_object_set_new(k, warm ? "warm" : "all", r);
				continue;
			}
			printf("  %-9s %-6s %5zu %8zu %6.1f%% %7.1f ms %6.1f ms %6.1f ms %7.2fx "
			       "%5.1f ms %5.1f ms %6.1f ms%s\n",
			       "", modes[m].name, a.n, a.prompt,
			       a.prompt ? 100.0 * (double)a.reused / (double)a.prompt : 0, a.mean,
			       a.p50, a.p90, a.mean > 0 ? base[warm].mean / a.mean : 0, a.match,
			       a.stall, a.compute, a.fallbacks ? " (fallbacks!)" : "");
		}
	}
	if (json)
		json_object_set_new(j, "logits_identical", json_boolean(!w->mismatches));
	return j;
}

static json_t *report_prefix(const struct prefix_result *pr, bool json)
{
	json_t *j = json ? json_pack("{s:I, s:f}", "tokens", (json_int_t)pr->tokens, "compute_ms",
				     pr->compute_ms)
			 : NULL;

	if (!json)
		printf("  cold prefill of %zu tokens without a cache: %.1f ms\n", pr->tokens,
		       pr->compute_ms);
	for (size_t m = 0; m < nmodes; m++) {
		double ratio = pr->load_ms[m] > 0 ? pr->compute_ms / pr->load_ms[m] : 0;

		if (!eng_ns(modes[m].e))
			continue;
		if (json) {
			json_object_set_new(
				j, modes[m].name,
				json_pack("{s:I, s:I, s:f, s:f, s:f, s:b}", "blocks",
					  (json_int_t)pr->blocks[m], "bytes", (json_int_t)pr->bytes,
					  "load_ms", pr->load_ms[m], "warm_ttft_ms", pr->warm_ms[m],
					  "load_speedup", ratio, "target_met", ratio >= 10.0));
			continue;
		}
		printf("  %-6s load of %zu cached blocks (%.1f MiB, %s path): %.1f ms = %.1fx "
		       "faster "
		       "than computing (target >= 10x: %s); warm ttft %.1f ms\n",
		       modes[m].name, pr->blocks[m], (double)pr->bytes / (1 << 20),
		       kvfs_ns_is_fast(eng_ns(modes[m].e)) ? "fast" : "posix", pr->load_ms[m],
		       ratio, ratio >= 10.0 ? "met" : "NOT met", pr->warm_ms[m]);
	}
	return j;
}

static json_t *report_ns(bool json)
{
	json_t *j = json ? json_object() : NULL;

	for (size_t m = 0; m < nmodes; m++) {
		struct kvfs_ns_stats ks;

		if (!eng_ns(modes[m].e))
			continue;
		kvfs_ns_get_stats(eng_ns(modes[m].e), &ks);
		if (json) {
			json_object_set_new(j, modes[m].name,
					    json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I}", "dir",
						      modes[m].dir, "blocks_loaded",
						      (json_int_t)ks.blocks_loaded, "bytes_loaded",
						      (json_int_t)ks.bytes_loaded, "load_errors",
						      (json_int_t)ks.load_errors, "saves_written",
						      (json_int_t)ks.saves_written, "saves_dropped",
						      (json_int_t)ks.saves_dropped, "save_errors",
						      (json_int_t)ks.save_errors));
			continue;
		}
		printf("  %-6s %s: %llu blocks loaded (%.1f MiB), %llu load errors, %llu saves "
		       "written, %llu dropped, %llu failed\n",
		       modes[m].name, modes[m].dir, (unsigned long long)ks.blocks_loaded,
		       (double)ks.bytes_loaded / (1 << 20), (unsigned long long)ks.load_errors,
		       (unsigned long long)ks.saves_written, (unsigned long long)ks.saves_dropped,
		       (unsigned long long)ks.save_errors);
	}
	return j;
}

/*
 * Write the multi-turn workload as kvfs-llm --conversations JSONL (for demos):
 * the shared system prefix and the conversation's context as "system", the
 * user turns with their answer lengths as "max_new".
 */
static int emit_conversations(const struct bopts *o)
{
	FILE *f = fopen(o->emit, "w");
	uint32_t sys[500];
	int rc = 0;

	if (!f) {
		fprintf(stderr, "kvfs-llm bench: %s: %s\n", o->emit, strerror(errno));
		return -errno;
	}
	words(sys, 500);
	for (unsigned c = 0; c < o->convs && !rc; c++) {
		struct eng_toks ctx = {0};
		json_t *turns = json_array(), *conv;
		char *text;

		rc = eng_toks_append(&ctx, sys, 500);
		if (!rc)
			rc = sb_words(&ctx, rnd_between(950, 1050));
		for (unsigned t = 0; t < o->turns && !rc; t++) {
			uint32_t user[160];
			char ut[161];
			size_t n = rnd_between(120, 160);

			words(user, n);
			eng_tok_decode(user, n, ut);
			ut[n] = '\0';
			json_array_append_new(turns, json_pack("{s:s, s:i}", "user", ut, "max_new",
							       (int)rnd_between(80, 120)));
		}
		text = malloc(ctx.n + 1);
		if (!text || rc) {
			rc = rc ? rc : -ENOMEM;
		} else {
			eng_tok_decode(ctx.t, ctx.n, text);
			text[ctx.n] = '\0';
			conv = json_pack("{s:s, s:o}", "system", text, "turns", turns);
			turns = NULL;
			if (json_dumpf(conv, f, JSON_COMPACT) || fputc('\n', f) == EOF)
				rc = -EIO;
			json_decref(conv);
		}
		json_decref(turns);
		free(text);
		free(ctx.t);
	}
	if (fclose(f) && !rc)
		rc = -errno;
	if (rc)
		fprintf(stderr, "kvfs-llm bench: %s: %s\n", o->emit, strerror(-rc));
	return rc;
}

/* --- setup ------------------------------------------------------------------------------------ */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kvfs-llm bench --model DIR [--kvfs MOUNT/DIR] [--tmpfs DIR] [options]\n"
		"\n"
		"Time to first token with kvfs, with plain files on tmpfs (libkvfs POSIX path),\n"
		"and without a cache, for every request of each workload, in one process.\n"
		"Namespaces are created as DIR/kvfs-llm-bench-PID and removed at the end.\n"
		"\n"
		"options:\n"
		"  --model DIR          the model (kvfs-genmodel)\n"
		"  --kvfs DIR           a directory on a kvfs mount (mode \"kvfs\")\n"
		"  --tmpfs DIR          a directory on tmpfs, e.g. /dev/shm/kvfs-bench (mode "
		"\"tmpfs\")\n"
		"  --workload W         all (default), multi-turn, long-doc or prefix\n"
		"  --conversations N    multi-turn conversations (default 4)\n"
		"  --turns N            turns per conversation (default 4)\n"
		"  --docs N             long-doc documents (default 3)\n"
		"  --questions N        questions per document (default 3)\n"
		"  --doc-tokens N       tokens per document (default 8192)\n"
		"  --prefix-tokens N    the prefix workload's prompt (default 4096)\n"
		"  --block-tokens N     tokens per block (default 16)\n"
		"  --chunk N            prefill chunk (default 64)\n"
		"  --threads N          OpenBLAS threads (default 2)\n"
		"  --seed N             workload text seed (default 1)\n"
		"  --emit-conversations FILE  write the multi-turn workload as JSONL for\n"
		"                       kvfs-llm --conversations, and exit (no --model needed)\n"
		"  --json               machine-readable output\n");
}

int eng_bench_main(int argc, char **argv)
{
	enum {
		O_MODEL = 256,
		O_KVFS,
		O_TMPFS,
		O_WORKLOAD,
		O_CONVS,
		O_TURNS,
		O_DOCS,
		O_QUESTIONS,
		O_DOC_TOKENS,
		O_PREFIX,
		O_BLOCK,
		O_CHUNK,
		O_THREADS,
		O_SEED,
		O_JSON,
		O_EMIT
	};
	static const struct option lopts[] = {
		{"model", required_argument, NULL, O_MODEL},
		{"kvfs", required_argument, NULL, O_KVFS},
		{"tmpfs", required_argument, NULL, O_TMPFS},
		{"workload", required_argument, NULL, O_WORKLOAD},
		{"conversations", required_argument, NULL, O_CONVS},
		{"turns", required_argument, NULL, O_TURNS},
		{"docs", required_argument, NULL, O_DOCS},
		{"questions", required_argument, NULL, O_QUESTIONS},
		{"doc-tokens", required_argument, NULL, O_DOC_TOKENS},
		{"prefix-tokens", required_argument, NULL, O_PREFIX},
		{"block-tokens", required_argument, NULL, O_BLOCK},
		{"chunk", required_argument, NULL, O_CHUNK},
		{"threads", required_argument, NULL, O_THREADS},
		{"seed", required_argument, NULL, O_SEED},
		{"json", no_argument, NULL, O_JSON},
		{"emit-conversations", required_argument, NULL, O_EMIT},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct bopts o = {.workload = "all",
			  .block_tokens = 16,
			  .threads = 2,
			  .seed = 1,
			  .convs = 4,
			  .turns = 4,
			  .docs = 3,
			  .questions = 3,
			  .doc_tokens = 8192,
			  .prefix_tokens = 4096};
	struct eng_model *m = NULL;
	struct wl wls[3];
	struct prefix_result pr;
	json_t *doc = NULL;
	char err[ENG_ERR_LEN];
	int c, rc = 0, status = 1;
	bool all;

	memset(wls, 0, sizeof(wls));
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
		unsigned *u = NULL;
		char *end;

		switch (c) {
		case O_MODEL:
			o.model = optarg;
			break;
		case O_KVFS:
			o.kvfs = optarg;
			break;
		case O_TMPFS:
			o.tmpfs = optarg;
			break;
		case O_WORKLOAD:
			o.workload = optarg;
			break;
		case O_CONVS:
			u = &o.convs;
			break;
		case O_TURNS:
			u = &o.turns;
			break;
		case O_DOCS:
			u = &o.docs;
			break;
		case O_QUESTIONS:
			u = &o.questions;
			break;
		case O_DOC_TOKENS:
			u = &o.doc_tokens;
			break;
		case O_PREFIX:
			u = &o.prefix_tokens;
			break;
		case O_BLOCK:
			u = &o.block_tokens;
			break;
		case O_CHUNK:
			u = &o.chunk;
			break;
		case O_THREADS:
			u = &o.threads;
			break;
		case O_SEED:
			u = &o.seed;
			break;
		case O_JSON:
			o.json = true;
			break;
		case O_EMIT:
			o.emit = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
		if (u) {
			unsigned long v = strtoul(optarg, &end, 10);

			if (end == optarg || *end || !v || v > 1u << 24) {
				fprintf(stderr, "kvfs-llm bench: bad number '%s'\n", optarg);
				return EXIT_USAGE;
			}
			*u = (unsigned)v;
		}
	}
	all = !strcmp(o.workload, "all");
	rng = 88172645463325252ull ^ ((uint64_t)o.seed * 0x9e3779b97f4a7c15ull);
	if (o.emit && optind == argc)
		return emit_conversations(&o) ? 1 : 0;
	if (!o.model || optind != argc ||
	    (!all && strcmp(o.workload, "multi-turn") && strcmp(o.workload, "long-doc") &&
	     strcmp(o.workload, "prefix"))) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (eng_model_load(o.model, &m, err, sizeof(err))) {
		fprintf(stderr, "kvfs-llm bench: %s\n", err);
		return 1;
	}
	model = m;
	o.progress = !o.json && isatty(STDERR_FILENO);
	{
		const char *names[MAX_MODES] = {"none", "tmpfs", "kvfs"};
		const char *dirs[MAX_MODES] = {NULL, o.tmpfs, o.kvfs};

		for (size_t i = 0; i < MAX_MODES; i++) {
			struct eng_opts eo = {.block_tokens = o.block_tokens,
					      .chunk_tokens = o.chunk,
					      .seed = "0",
					      .threads = o.threads,
					      .path = i == 1 ? KVFS_PATH_POSIX : KVFS_PATH_AUTO};
			struct mode *md = &modes[nmodes];

			if (i && !dirs[i])
				continue;
			md->name = names[i];
			if (dirs[i]) {
				snprintf(md->dir, sizeof(md->dir), "%s/kvfs-llm-bench-%d", dirs[i],
					 (int)getpid());
				eo.cache_dir = md->dir;
			}
			if (eng_open(m, &eo, &md->e, err, sizeof(err))) {
				fprintf(stderr, "kvfs-llm bench: %s: %s\n", md->name, err);
				goto out;
			}
			nmodes++;
		}
	}
	if (!o.json) {
		const struct eng_config *cf = &m->cfg;

		printf("kvfs-llm bench: model %s: %u layers, hidden %u, %u heads (%u kv, dim %u), "
		       "intermediate %u; block %u tokens, %s; threads %u\n",
		       eng_model_id(modes[0].e), cf->layers, cf->hidden, cf->heads, cf->kv_heads,
		       cf->head_dim, cf->intermediate, o.block_tokens,
		       eng_ns(modes[nmodes - 1].e)
			       ? (kvfs_ns_is_fast(eng_ns(modes[nmodes - 1].e)) ? "fast path"
									       : "posix path")
			       : "no cache dirs given",
		       o.threads);
		printf("modes:");
		for (size_t i = 0; i < nmodes; i++)
			printf(" %s%s%s", modes[i].name, modes[i].dir[0] ? "=" : "", modes[i].dir);
		printf("\n");
		fflush(stdout);
	}
	doc = o.json ? json_object() : NULL;
	if (all || !strcmp(o.workload, "multi-turn")) {
		char what[160];

		rc = multi_turn(&o, &wls[0]);
		snprintf(what, sizeof(what),
			 "%u conversations x %u turns: system 500 tokens shared, context ~1000, "
			 "user turns 120-160, answers 80-120",
			 o.convs, o.turns);
		if (!rc)
			json_object_set_new(doc, "multi_turn", report(&wls[0], what, o.json));
		fflush(stdout);
	}
	if (!rc && (all || !strcmp(o.workload, "long-doc"))) {
		char what[160];

		rc = long_doc(&o, &wls[1]);
		snprintf(what, sizeof(what),
			 "%u documents of %u tokens x %u questions of 30-50 tokens, answers 16",
			 o.docs, o.doc_tokens, o.questions);
		if (!rc)
			json_object_set_new(doc, "long_doc", report(&wls[1], what, o.json));
		fflush(stdout);
	}
	if (!rc && (all || !strcmp(o.workload, "prefix"))) {
		rc = prefix(&o, &wls[2], &pr);
		if (!rc) {
			if (!o.json)
				printf("\nprefix: %u tokens; logits identical across modes: %s\n",
				       o.prefix_tokens, wls[2].mismatches ? "NO" : "yes");
			json_object_set_new(doc, "prefix", report_prefix(&pr, o.json));
			json_object_set_new(doc, "prefix_logits_identical",
					    json_boolean(!wls[2].mismatches));
		}
	}
	if (!rc) {
		if (!o.json)
			printf("\nnamespaces:\n");
		json_object_set_new(doc, "namespaces", report_ns(o.json));
		if (o.json) {
			json_dumpf(doc, stdout, JSON_INDENT(1));
			putchar('\n');
		}
		status = 0;
	}
out:
	for (size_t i = 0; i < nmodes; i++) {
		eng_close(modes[i].e);
		if (modes[i].dir[0])
			nftw(modes[i].dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	}
	for (int i = 0; i < 3; i++) {
		free(wls[i].st);
		free(wls[i].warm);
	}
	json_decref(doc);
	eng_model_free(m);
	return status;
}
