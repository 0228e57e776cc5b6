/*
 * tests/unit/keys_test.c — core/keys.c against vLLM's block hash.
 *
 * The expected keys are never computed by the code under test: the vectors in
 * tests/vectors/keys_vectors.h come from tests/vectors/gen_keys.py (cbor2 +
 * hashlib, as vLLM does it), and test_random_vs_python runs that script at
 * test time on fresh random cases when /usr/bin/python3 has cbor2.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvfs/keys.h"
#include "tests/vectors/keys_vectors.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define PYTHON	      "/usr/bin/python3"

static int hex_val(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decode @hex into @out (of @cap bytes). @return the byte count. */
static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
	size_t n = strlen(hex) / 2, i;

	assert_int_equal(strlen(hex) % 2, 0);
	assert_true(n <= cap);
	for (i = 0; i < n; i++) {
		int hi = hex_val(hex[2 * i]), lo = hex_val(hex[2 * i + 1]);

		assert_true(hi >= 0 && lo >= 0);
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return n;
}

static void assert_key_hex(const kvfs_key *k, const char *want)
{
	char hex[KVFS_KEY_HEX + 1];

	kvfs_key_to_hex(k, hex);
	assert_string_equal(hex, want);
}

static kvfs_key key_of(const char *hex)
{
	kvfs_key k;

	assert_int_equal(kvfs_key_from_hex(hex, &k), 0);
	return k;
}

static kvfs_key chain_parent(const struct kv_chain_vec *v)
{
	kvfs_key k;

	if (!v->seed)
		return key_of(v->parent);
	assert_int_equal(kvfs_key_root(v->seed, &k), 0);
	return k;
}

/* --- known answers -------------------------------------------------------- */

static void test_roots(void **state)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(kv_root_vecs); i++) {
		kvfs_key k;

		assert_int_equal(kvfs_key_root(kv_root_vecs[i].seed, &k), 0);
		assert_key_hex(&k, kv_root_vecs[i].key);
	}
	assert_int_equal(kvfs_key_root(NULL, &(kvfs_key){0}), -EINVAL);
}

static void test_chains(void **state)
{
	size_t i, b;

	for (i = 0; i < ARRAY_SIZE(kv_chain_vecs); i++) {
		const struct kv_chain_vec *v = &kv_chain_vecs[i];
		struct kvfs_key_extra x = {
			.items = v->items, .nitems = v->nitems, .cache_salt = v->salt};
		kvfs_key parent = chain_parent(v), out[64];
		long n;

		print_message("chain %s\n", v->name);
		assert_true(v->nkeys <= ARRAY_SIZE(out));
		n = kvfs_key_chain(&parent, v->first_index, v->tokens, v->ntokens, v->block_tokens,
				   &x, out, ARRAY_SIZE(out));
		assert_int_equal(n, (long)v->nkeys);
		for (b = 0; b < v->nkeys; b++)
			assert_key_hex(&out[b], v->keys[b]);

		/* The same chain one block at a time through kvfs_key_block(). */
		for (b = 0; b < v->nkeys; b++) {
			uint8_t enc[8192], want[8192];
			size_t want_len = unhex(v->extra[b], want, sizeof(want));
			long len = kvfs_key_extra_encode(&x, v->first_index + b, enc, sizeof(enc));
			kvfs_key k;

			assert_int_equal(len, (long)want_len);
			assert_memory_equal(enc, want, want_len);
			assert_int_equal(kvfs_key_block(&parent, v->tokens + b * v->block_tokens,
							v->block_tokens, len ? enc : NULL,
							(size_t)len, &k),
					 0);
			assert_key_hex(&k, v->keys[b]);
			parent = k;
		}

		/* @max_out caps the output; @out may be where @parent lives. */
		if (v->nkeys > 1) {
			out[0] = chain_parent(v);
			n = kvfs_key_chain(&out[0], v->first_index, v->tokens, v->ntokens,
					   v->block_tokens, &x, out, 1);
			assert_int_equal(n, 1);
			assert_key_hex(&out[0], v->keys[0]);
		}
	}
}

static const struct kv_chain_vec *chain_vec(const char *name)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(kv_chain_vecs); i++)
		if (strcmp(kv_chain_vecs[i].name, name) == 0)
			return &kv_chain_vecs[i];
	fail_msg("no vector %s", name);
	return NULL;
}

/* Extending a chain from its middle gives the tail of the whole chain. */
static void test_extend_from_middle(void **state)
{
	const struct kv_chain_vec *full = chain_vec("extend_mid_full");
	const struct kv_chain_vec *mid = chain_vec("extend_mid");
	kvfs_key all[8], tail[8];
	kvfs_key root;
	long n;

	assert_int_equal(kvfs_key_root(full->seed, &root), 0);
	struct kvfs_key_extra x = {
		.items = full->items, .nitems = full->nitems, .cache_salt = full->salt};
	n = kvfs_key_chain(&root, 0, full->tokens, full->ntokens, 16, &x, all, 8);
	assert_int_equal(n, 4);
	n = kvfs_key_chain(&all[1], 2, full->tokens + 32, full->ntokens - 32, 16, &x, tail, 8);
	assert_int_equal(n, 2);
	assert_memory_equal(tail, all + 2, 2 * sizeof(kvfs_key));
	assert_key_hex(&tail[0], mid->keys[0]);
	assert_key_hex(&tail[1], mid->keys[1]);

	/* Without first_index the salt would wrongly apply again. */
	n = kvfs_key_chain(&all[1], 0, full->tokens + 32, full->ntokens - 32, 16, &x, tail, 8);
	assert_int_equal(n, 2);
	assert_memory_not_equal(tail, all + 2, sizeof(kvfs_key));
}

/* An empty salt is no salt (vLLM tests its truthiness). */
static void test_empty_salt(void **state)
{
	const struct kv_chain_vec *plain = chain_vec("plain_16");
	const struct kv_chain_vec *empty = chain_vec("salt_empty");
	size_t b;

	assert_int_equal(plain->nkeys, empty->nkeys);
	for (b = 0; b < plain->nkeys; b++)
		assert_string_equal(plain->keys[b], empty->keys[b]);
}

static void test_block_vectors(void **state)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(kv_block_vecs); i++) {
		const struct kv_block_vec *v = &kv_block_vecs[i];
		kvfs_key parent = key_of(v->parent), k;
		uint8_t extra[256];
		size_t len = unhex(v->extra, extra, sizeof(extra));

		print_message("block %s\n", v->name);
		assert_int_equal(kvfs_key_block(&parent, v->tokens, v->ntokens, extra, len, &k), 0);
		assert_key_hex(&k, v->key);
	}
}

/* --- random cases against Python ---------------------------------------- */

static char *script_path(void)
{
	const char *src = getenv("KVFS_SRCDIR");
	static char path[4096];
	const char *file = __FILE__; /* tests/unit/keys_test.c */
	const char *slash;

	if (src) {
		snprintf(path, sizeof(path), "%s/tests/vectors/gen_keys.py", src);
	} else {
		slash = strrchr(file, '/');
		snprintf(path, sizeof(path), "%.*s../vectors/gen_keys.py",
			 slash ? (int)(slash - file + 1) : 0, file);
	}
	return path;
}

static char *field(char **save)
{
	char *f = strtok_r(NULL, "\t\n", save);

	assert_non_null(f);
	return f;
}

/* "-" stands for the empty string; otherwise hex of UTF-8 bytes. */
static char *hex_string(const char *hex)
{
	size_t n = strcmp(hex, "-") == 0 ? 0 : strlen(hex) / 2;
	char *s = calloc(n + 1, 1);

	assert_non_null(s);
	if (n)
		unhex(hex, (uint8_t *)s, n);
	return s;
}

static void check_random_line(char *line)
{
	char *save, *seed, *f, *tok, *tsave;
	size_t bt, first, ntok = 0, nitems = 0, nkeys = 0, i;
	uint32_t *tokens = calloc(strlen(line) + 1, sizeof(uint32_t));
	struct kvfs_extra_item *items = calloc(strlen(line) + 1, sizeof(*items));
	char **strs = calloc(strlen(line) + 1, sizeof(char *));
	char *salt = NULL, *want_keys;
	kvfs_key parent, *out;
	long n;

	assert_non_null(tokens);
	assert_non_null(items);
	assert_non_null(strs);
	seed = hex_string(strtok_r(line, "\t\n", &save));
	bt = strtoul(field(&save), NULL, 10);
	first = strtoul(field(&save), NULL, 10);
	f = field(&save);
	if (strcmp(f, "-") == 0)
		assert_int_equal(kvfs_key_root(seed, &parent), 0);
	else
		parent = key_of(f);
	f = field(&save);
	for (tok = strtok_r(f, ",", &tsave); tok && strcmp(tok, "-");
	     tok = strtok_r(NULL, ",", &tsave))
		tokens[ntok++] = (uint32_t)strtoul(tok, NULL, 10);
	f = field(&save);
	for (tok = strtok_r(f, ",", &tsave); tok && strcmp(tok, "-");
	     tok = strtok_r(NULL, ",", &tsave)) {
		if (tok[0] == 's') {
			strs[nitems] = hex_string(tok + 2);
			items[nitems].is_str = 1;
			items[nitems].s = strs[nitems];
		} else {
			items[nitems].i = strtoll(tok + 2, NULL, 10);
		}
		nitems++;
	}
	f = field(&save);
	if (strcmp(f, "-"))
		salt = hex_string(f);
	want_keys = field(&save);

	struct kvfs_key_extra x = {.items = items, .nitems = nitems, .cache_salt = salt};
	out = calloc(ntok / bt + 1, sizeof(*out));
	assert_non_null(out);
	n = kvfs_key_chain(&parent, first, tokens, ntok, bt, &x, out, ntok / bt + 1);
	assert_int_equal(n, (long)(ntok / bt));
	for (tok = strtok_r(want_keys, ",", &tsave); tok && strcmp(tok, "-");
	     tok = strtok_r(NULL, ",", &tsave)) {
		assert_true(nkeys < (size_t)n);
		assert_key_hex(&out[nkeys++], tok);
	}
	assert_int_equal(nkeys, (size_t)n);

	for (i = 0; i < nitems; i++)
		free(strs[i]);
	free(out);
	free(salt);
	free(seed);
	free(strs);
	free(items);
	free(tokens);
}

static void test_random_vs_python(void **state)
{
	const char *env_seed = getenv("KVFS_TEST_SEED");
	unsigned seed = env_seed ? (unsigned)strtoul(env_seed, NULL, 10)
				 : (unsigned)time(NULL) ^ (unsigned)getpid();
	char cmd[8192], *line = NULL;
	size_t cap = 0, cases = 0;
	FILE *p;

	if (access(PYTHON, X_OK) || system(PYTHON " -c 'import cbor2' 2>/dev/null") != 0) {
		print_message("%s with cbor2 not found; random vLLM cases skipped\n", PYTHON);
		skip();
	}
	if (access(script_path(), R_OK)) {
		print_message("%s not found (set KVFS_SRCDIR); random cases skipped\n",
			      script_path());
		skip();
	}
	snprintf(cmd, sizeof(cmd), PYTHON " '%s' --random %u 300", script_path(), seed);
	print_message("random cases: KVFS_TEST_SEED=%u\n", seed);
	p = popen(cmd, "r");
	assert_non_null(p);
	while (getline(&line, &cap, p) > 0) {
		check_random_line(line);
		cases++;
	}
	free(line);
	assert_int_equal(pclose(p), 0);
	assert_int_equal(cases, 300);
}

/* --- hex ------------------------------------------------------------------ */

static void test_hex_round_trip(void **state)
{
	kvfs_key k, back;
	char hex[KVFS_KEY_HEX + 1];
	size_t i;

	for (i = 0; i < KVFS_KEY_BYTES; i++)
		k.b[i] = (uint8_t)(i * 37 + 11);
	kvfs_key_to_hex(&k, hex);
	assert_int_equal(strlen(hex), KVFS_KEY_HEX);
	for (i = 0; i < KVFS_KEY_HEX; i++)
		assert_true((hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f'));
	assert_int_equal(kvfs_key_from_hex(hex, &back), 0);
	assert_memory_equal(&k, &back, sizeof(k));

	/* Upper case parses too. */
	for (i = 0; i < KVFS_KEY_HEX; i++)
		if (hex[i] >= 'a')
			hex[i] = (char)(hex[i] - 'a' + 'A');
	memset(&back, 0, sizeof(back));
	assert_int_equal(kvfs_key_from_hex(hex, &back), 0);
	assert_memory_equal(&k, &back, sizeof(k));
}

static void test_hex_bad(void **state)
{
	static const char good[] =
		"4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e";
	char buf[2 * KVFS_KEY_HEX];
	kvfs_key k, orig;
	size_t i;

	memset(&k, 0xa5, sizeof(k));
	orig = k;
	assert_int_equal(kvfs_key_from_hex(NULL, &k), -EINVAL);
	assert_int_equal(kvfs_key_from_hex("", &k), -EINVAL);
	/* 63 characters */
	snprintf(buf, sizeof(buf), "%.63s", good);
	assert_int_equal(kvfs_key_from_hex(buf, &k), -EINVAL);
	/* 65 characters, and trailing junk */
	snprintf(buf, sizeof(buf), "%s0", good);
	assert_int_equal(kvfs_key_from_hex(buf, &k), -EINVAL);
	snprintf(buf, sizeof(buf), "%s\n", good);
	assert_int_equal(kvfs_key_from_hex(buf, &k), -EINVAL);
	/* a non-hex character anywhere */
	for (i = 0; i < KVFS_KEY_HEX; i++) {
		static const char junk[] = "gG :x-";

		snprintf(buf, sizeof(buf), "%s", good);
		buf[i] = junk[i % (sizeof(junk) - 1)];
		assert_int_equal(kvfs_key_from_hex(buf, &k), -EINVAL);
	}
	/* a NUL inside */
	snprintf(buf, sizeof(buf), "%s", good);
	buf[10] = '\0';
	assert_int_equal(kvfs_key_from_hex(buf, &k), -EINVAL);
	/* a failed parse leaves the key alone */
	assert_memory_equal(&k, &orig, sizeof(k));
}

/* --- bad input ------------------------------------------------------------ */

static void test_block_bad_extra(void **state)
{
	static const struct {
		const char *name;
		const char *hex;
	} bad[] = {
		{"trailing byte", "8000"},
		{"two arrays", "8080"},
		{"map", "a0"},
		{"uint", "01"},
		{"text", "6130"},
		{"bytes", "4100"},
		{"null", "f6"},
		{"tagged array", "c180"},
		{"truncated array", "830102"},
		{"truncated nested", "818201"},
		{"truncated head", "9a0000"},
		{"truncated string", "816461"},
		{"indefinite array", "9fff"},
		{"indefinite inside", "819f01ff"},
		{"indefinite string", "817f6161ff"},
		{"stray break", "81ff"},
		{"reserved info", "811c"},
		{"trailing tag", "81c1"},
		{"array claims 2^64", "9bffffffffffffffff01"},
		{"map claims 2^63", "81bb800000000000000001"},
	};
	static const char *const good[] = {
		"80", "8101", "826178c1f5", "81a2616101616202", "83f6f4f93e00", "81c24101"};
	kvfs_key parent = {{0}}, k;
	uint32_t tokens[2] = {1, 2};
	uint8_t extra[64];
	size_t i, len;

	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		print_message("bad extra: %s\n", bad[i].name);
		len = unhex(bad[i].hex, extra, sizeof(extra));
		assert_int_equal(kvfs_key_block(&parent, tokens, 2, extra, len, &k), -EINVAL);
	}
	for (i = 0; i < ARRAY_SIZE(good); i++) {
		print_message("good extra: %s\n", good[i]);
		len = unhex(good[i], extra, sizeof(extra));
		assert_int_equal(kvfs_key_block(&parent, tokens, 2, extra, len, &k), 0);
	}

	/* Nesting: 32 open arrays are fine, 33 are refused. */
	memset(extra, 0x81, 32);
	extra[32] = 0x80;
	assert_int_equal(kvfs_key_block(&parent, tokens, 2, extra, 33, &k), 0);
	memset(extra, 0x81, 33);
	extra[33] = 0x80;
	assert_int_equal(kvfs_key_block(&parent, tokens, 2, extra, 34, &k), -EINVAL);

	/* A length without bytes is an error; bytes with length 0 mean null. */
	assert_int_equal(kvfs_key_block(&parent, tokens, 2, NULL, 1, &k), -EINVAL);
	kvfs_key with_null, with_empty;
	assert_int_equal(kvfs_key_block(&parent, tokens, 2, NULL, 0, &with_null), 0);
	assert_int_equal(kvfs_key_block(&parent, tokens, 2, extra, 0, &with_empty), 0);
	assert_memory_equal(&with_null, &with_empty, sizeof(kvfs_key));
}

static void test_block_bad_args(void **state)
{
	kvfs_key parent = {{0}}, k;
	uint32_t tokens[1] = {1};

	assert_int_equal(kvfs_key_block(NULL, tokens, 1, NULL, 0, &k), -EINVAL);
	assert_int_equal(kvfs_key_block(&parent, tokens, 1, NULL, 0, NULL), -EINVAL);
	assert_int_equal(kvfs_key_block(&parent, tokens, 0, NULL, 0, &k), -EINVAL);
	assert_int_equal(kvfs_key_block(&parent, NULL, 1, NULL, 0, &k), -EINVAL);
}

static void test_chain_bad_args(void **state)
{
	kvfs_key parent = {{0}}, out[4];
	uint32_t tokens[8] = {0};
	struct kvfs_extra_item nul = {.is_str = 1, .s = NULL};
	struct kvfs_key_extra x = {.items = &nul, .nitems = 1};
	struct kvfs_key_extra no_items = {.items = NULL, .nitems = 2};

	assert_int_equal(kvfs_key_chain(NULL, 0, tokens, 8, 4, NULL, out, 4), -EINVAL);
	assert_int_equal(kvfs_key_chain(&parent, 0, tokens, 8, 0, NULL, out, 4), -EINVAL);
	assert_int_equal(kvfs_key_chain(&parent, 0, NULL, 8, 4, NULL, out, 4), -EINVAL);
	assert_int_equal(kvfs_key_chain(&parent, 0, tokens, 8, 4, NULL, NULL, 4), -EINVAL);
	assert_int_equal(kvfs_key_chain(&parent, 0, tokens, 8, 4, &x, out, 4), -EINVAL);
	assert_int_equal(kvfs_key_chain(&parent, 0, tokens, 8, 4, &no_items, out, 4), -EINVAL);
	/* no full block, or no room: no keys */
	assert_int_equal(kvfs_key_chain(&parent, 0, tokens, 3, 4, NULL, out, 4), 0);
	assert_int_equal(kvfs_key_chain(&parent, 0, NULL, 0, 4, NULL, out, 4), 0);
	assert_int_equal(kvfs_key_chain(&parent, 0, tokens, 8, 4, NULL, NULL, 0), 0);
}

static void test_extra_encode(void **state)
{
	static const struct kvfs_extra_item items[] = {
		{.is_str = 1, .s = "adapter"},
		{.is_str = 0, .i = -1000000},
	};
	struct kvfs_key_extra x = {.items = items, .nitems = 2, .cache_salt = "tenant"};
	/* [ "adapter", -1000000, "tenant" ]: array(3), text(7), negint(999999), text(6) */
	static const uint8_t want0[] = "\x83\x67"
				       "adapter"
				       "\x3a\x00\x0f\x42\x3f\x66"
				       "tenant";
	uint8_t buf[64];
	size_t cap;
	long n;

	n = kvfs_key_extra_encode(&x, 0, buf, sizeof(buf));
	assert_int_equal(n, sizeof(want0) - 1);
	assert_memory_equal(buf, want0, sizeof(want0) - 1);
	/* every capacity short of the need is -ENOSPC, the exact one works */
	for (cap = 0; cap < sizeof(want0) - 1; cap++)
		assert_int_equal(kvfs_key_extra_encode(&x, 0, buf, cap), -ENOSPC);
	assert_int_equal(kvfs_key_extra_encode(&x, 0, NULL, 0), -ENOSPC);
	assert_int_equal(kvfs_key_extra_encode(&x, 0, buf, sizeof(want0) - 1),
			 (long)sizeof(want0) - 1);

	/* after block 0 the salt is gone */
	n = kvfs_key_extra_encode(&x, 1, buf, sizeof(buf));
	assert_int_equal(n, sizeof(want0) - 1 - 7);
	assert_int_equal(buf[0], 0x82);

	/* nothing to say: 0 bytes, i.e. CBOR null */
	struct kvfs_key_extra salt_only = {.cache_salt = "s"};
	struct kvfs_key_extra empty_salt = {.cache_salt = ""};
	assert_int_equal(kvfs_key_extra_encode(NULL, 0, buf, sizeof(buf)), 0);
	assert_int_equal(kvfs_key_extra_encode(&salt_only, 1, buf, sizeof(buf)), 0);
	assert_int_equal(kvfs_key_extra_encode(&salt_only, 1, NULL, 0), 0);
	assert_int_equal(kvfs_key_extra_encode(&empty_salt, 0, buf, sizeof(buf)), 0);
	assert_int_equal(kvfs_key_extra_encode(&salt_only, 0, buf, sizeof(buf)), 3);

	/* a NULL string item */
	struct kvfs_extra_item nul = {.is_str = 1, .s = NULL};
	struct kvfs_key_extra bad = {.items = &nul, .nitems = 1};
	assert_int_equal(kvfs_key_extra_encode(&bad, 0, buf, sizeof(buf)), -EINVAL);
}

/* Long strings and many tokens go through the digest in several updates. */
static void test_large_block(void **state)
{
	const struct kv_chain_vec *v = chain_vec("big_256");
	static uint32_t tokens[70000];
	static char salt[5000];
	struct kvfs_key_extra x = {.cache_salt = salt};
	kvfs_key parent = {{1}}, a, b;
	static uint8_t enc[6000];
	long len;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(tokens); i++)
		tokens[i] = v->tokens[i % v->ntokens];
	memset(salt, 'q', sizeof(salt) - 1);
	assert_int_equal(kvfs_key_chain(&parent, 0, tokens, ARRAY_SIZE(tokens), ARRAY_SIZE(tokens),
					&x, &a, 1),
			 1);
	len = kvfs_key_extra_encode(&x, 0, enc, sizeof(enc));
	assert_true(len > 5000);
	assert_int_equal(kvfs_key_block(&parent, tokens, ARRAY_SIZE(tokens), enc, (size_t)len, &b),
			 0);
	assert_memory_equal(&a, &b, sizeof(a));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roots),
		cmocka_unit_test(test_chains),
		cmocka_unit_test(test_extend_from_middle),
		cmocka_unit_test(test_empty_salt),
		cmocka_unit_test(test_block_vectors),
		cmocka_unit_test(test_random_vs_python),
		cmocka_unit_test(test_hex_round_trip),
		cmocka_unit_test(test_hex_bad),
		cmocka_unit_test(test_block_bad_extra),
		cmocka_unit_test(test_block_bad_args),
		cmocka_unit_test(test_chain_bad_args),
		cmocka_unit_test(test_extra_encode),
		cmocka_unit_test(test_large_block),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
