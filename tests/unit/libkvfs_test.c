/*
 * tests/unit/libkvfs_test.c — libkvfs on the POSIX path: save, match, load
 * layer by layer, and every way a block can fail to be the one asked for.
 */
#include <errno.h>
#include <fcntl.h>
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

#include "kvfs/kvfs.h"

#define LAYERS 3
#define HEADS  2
#define DIM    8
#define T      4 /* tokens per block */
#define BLOCKS 6 /* engine blocks in the pool */

struct env {
	char dir[64];
	kvfs_ns *ns;
	uint16_t *pool[2]; /* K and V pools: [layer][block][token][head][dim] */
	struct kvfs_kv_layer layers[LAYERS];
	struct kvfs_kv_pages pages;
};

static size_t layer_elems(void)
{
	return (size_t)BLOCKS * T * HEADS * DIM;
}

static void describe(struct env *e, uint16_t *k, uint16_t *v, struct kvfs_kv_layer *ly)
{
	for (int l = 0; l < LAYERS; l++) {
		ly[l].k = k + (size_t)l * layer_elems();
		ly[l].v = v ? v + (size_t)l * layer_elems() : NULL;
		ly[l].token_stride = HEADS * DIM * sizeof(uint16_t);
		ly[l].block_stride = T * ly[l].token_stride;
	}
	(void)e;
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	struct kvfs_ns_options o = {0};
	size_t bytes = sizeof(uint16_t) * LAYERS * layer_elems();

	strcpy(e->dir, "/tmp/libkvfs-test-XXXXXX");
	assert_non_null(mkdtemp(e->dir));
	snprintf(o.layout.model_id, sizeof(o.layout.model_id), "test-model");
	o.layout.num_layers = LAYERS;
	o.layout.num_kv_heads = HEADS;
	o.layout.head_dim = DIM;
	o.layout.tokens_per_block = T;
	o.layout.dtype = KVFS_DTYPE_BF16;
	o.layout.kind = KVFS_KIND_KV;
	o.dir = e->dir;
	o.seed = "0";
	o.save_queue = 4;
	assert_int_equal(kvfs_ns_open(&o, &e->ns), 0);
	for (int i = 0; i < 2; i++) {
		e->pool[i] = kvfs_alloc(e->ns, bytes);
		assert_non_null(e->pool[i]);
		for (size_t j = 0; j < bytes / 2; j++)
			e->pool[i][j] = (uint16_t)rand();
	}
	describe(e, e->pool[0], e->pool[1], e->layers);
	e->pages.layers = e->layers;
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	char cmd[128];

	kvfs_ns_close(e->ns);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", e->dir);
	assert_int_equal(system(cmd), 0);
	free(e);
	return 0;
}

static void tokens_for(uint32_t *tok, size_t n, uint32_t base)
{
	for (size_t i = 0; i < n; i++)
		tok[i] = base + (uint32_t)i * 7;
}

/* Save blocks 0..2 of a sequence from engine blocks {4,1,3}; load into {0,2,5}. */
static void test_save_match_load(void **state)
{
	struct env *e = *state;
	uint32_t tok[3 * T], src_ids[3] = {4, 1, 3}, dst_ids[3] = {0, 2, 5};
	kvfs_key keys[4];
	kvfs_match *m;
	kvfs_load *ld;
	struct kvfs_ns_stats st;

	tokens_for(tok, 3 * T, 100);
	assert_int_equal(kvfs_save(e->ns, kvfs_ns_root(e->ns), 0, tok, 3, NULL, &e->pages, src_ids),
			 3);
	assert_int_equal(kvfs_save_flush(e->ns), 0);
	assert_int_equal(kvfs_ns_keys(e->ns, tok, 3 * T, NULL, keys, 4), 3);
	/* a fourth key that is not there ends the match */
	keys[3] = keys[2];
	keys[3].b[0] ^= 1;
	assert_int_equal(kvfs_match_prefix(e->ns, keys, 4, &m), 3);
	assert_int_equal(kvfs_load_start(m, 0, 3, &e->pages, dst_ids, &ld), 0);
	for (unsigned l = 0; l < LAYERS; l++)
		assert_int_equal(kvfs_load_wait(ld, l), 0);
	assert_int_equal(kvfs_load_end(ld), 0);
	kvfs_match_release(m);
	for (int l = 0; l < LAYERS; l++)
		for (int b = 0; b < 3; b++)
			for (int kv = 0; kv < 2; kv++) {
				uint16_t *base = e->pool[kv] + (size_t)l * layer_elems();
				size_t blk = (size_t)T * HEADS * DIM;

				assert_memory_equal(base + dst_ids[b] * blk, base + src_ids[b] * blk,
						    blk * sizeof(uint16_t));
			}
	kvfs_ns_get_stats(e->ns, &st);
	assert_int_equal(st.saves_written, 3);
	assert_int_equal(st.blocks_loaded, 3);
	assert_int_equal(st.keys_matched, 3);
	/* saving again finds them present */
	assert_int_equal(kvfs_save(e->ns, kvfs_ns_root(e->ns), 0, tok, 3, NULL, &e->pages, src_ids),
			 3);
	kvfs_ns_get_stats(e->ns, &st);
	assert_int_equal(st.saves_present, 3);
}

static void flip_byte(struct env *e, const kvfs_key *key, off_t off)
{
	char path[256], hex[KVFS_KEY_HEX + 1];
	uint8_t c;
	int fd;

	kvfs_key_to_hex(key, hex);
	snprintf(path, sizeof(path), "%s/%s", e->dir, hex);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &c, 1, off), 1);
	c ^= 0x40;
	assert_int_equal(pwrite(fd, &c, 1, off), 1);
	close(fd);
}

/* A corrupt layer is a miss: the wait for it (and after) fails with EBADMSG. */
static void test_corrupt_layer_is_a_miss(void **state)
{
	struct env *e = *state;
	uint32_t tok[2 * T], ids[2] = {0, 1};
	kvfs_key keys[2];
	kvfs_match *m;
	kvfs_load *ld;

	tokens_for(tok, 2 * T, 900);
	assert_int_equal(kvfs_save(e->ns, kvfs_ns_root(e->ns), 0, tok, 2, NULL, &e->pages, ids), 2);
	kvfs_save_flush(e->ns);
	assert_int_equal(kvfs_ns_keys(e->ns, tok, 2 * T, NULL, keys, 2), 2);
	/* layer 2 of block 1: header 4096 + 2 strides */
	flip_byte(e, &keys[1], 4096 + 2 * 4096 + 5);
	assert_int_equal(kvfs_match_prefix(e->ns, keys, 2, &m), 2);
	assert_int_equal(kvfs_load_start(m, 0, 2, &e->pages, (uint32_t[]){4, 5}, &ld), 0);
	/* Layer 0 may report the error too: once one layer failed, the load is a miss. */
	assert_true(kvfs_load_wait(ld, 0) == 0 || kvfs_load_wait(ld, 0) == -EBADMSG);
	assert_int_equal(kvfs_load_wait(ld, 2), -EBADMSG);
	assert_int_equal(kvfs_load_end(ld), -EBADMSG);
	kvfs_match_release(m);
}

/* A valid block stored under another key's name is refused. */
static void test_wrong_key_is_a_miss(void **state)
{
	struct env *e = *state;
	uint32_t tok[2 * T], ids[2] = {0, 1};
	char a[KVFS_KEY_HEX + 1], b[KVFS_KEY_HEX + 1];
	kvfs_key keys[2];
	kvfs_match *m;
	kvfs_load *ld;

	tokens_for(tok, 2 * T, 5000);
	assert_int_equal(kvfs_save(e->ns, kvfs_ns_root(e->ns), 0, tok, 2, NULL, &e->pages, ids), 2);
	kvfs_save_flush(e->ns);
	assert_int_equal(kvfs_ns_keys(e->ns, tok, 2 * T, NULL, keys, 2), 2);
	kvfs_key_to_hex(&keys[0], a);
	kvfs_key_to_hex(&keys[1], b);
	{
		char pa[256], pb[256];

		snprintf(pa, sizeof(pa), "%s/%s", e->dir, a);
		snprintf(pb, sizeof(pb), "%s/%s", e->dir, b);
		assert_int_equal(rename(pb, pa), 0); /* block 1's bytes under block 0's name */
	}
	assert_int_equal(kvfs_match_prefix(e->ns, keys, 1, &m), 1);
	assert_int_equal(kvfs_load_start(m, 0, 1, &e->pages, ids, &ld), 0);
	assert_int_equal(kvfs_load_end(ld), -EBADMSG);
	kvfs_match_release(m);
}

/* A full save queue drops blocks instead of waiting. */
static void test_full_queue_drops(void **state)
{
	struct env *e = *state;
	enum { N = 64 };
	uint32_t *tok = malloc(sizeof(uint32_t) * N * T), ids[N];
	struct kvfs_ns_stats st;
	long n;

	for (int i = 0; i < N; i++)
		ids[i] = (uint32_t)(i % BLOCKS);
	tokens_for(tok, (size_t)N * T, 77);
	n = kvfs_save(e->ns, kvfs_ns_root(e->ns), 0, tok, N, NULL, &e->pages, ids);
	assert_true(n >= 4 && n <= N);
	kvfs_save_flush(e->ns);
	kvfs_ns_get_stats(e->ns, &st);
	assert_int_equal(st.saves_queued + st.saves_dropped, N);
	assert_int_equal(st.saves_written, st.saves_queued);
	free(tok);
}

static void test_bad_arguments(void **state)
{
	struct env *e = *state;
	struct kvfs_ns_options o = {0};
	kvfs_ns *ns;
	kvfs_match *m;
	kvfs_load *ld;
	kvfs_key k = {{0}};

	assert_int_equal(kvfs_ns_open(&o, &ns), -EINVAL);
	o.dir = e->dir;
	o.seed = "0";
	assert_int_equal(kvfs_ns_open(&o, &ns), -EINVAL); /* empty layout */
	assert_int_equal(kvfs_match_prefix(e->ns, &k, 65537, &m), -EINVAL);
	assert_int_equal(kvfs_match_prefix(e->ns, &k, 1, &m), 0);
	assert_int_equal(kvfs_load_start(m, 0, 1, &e->pages, (uint32_t[]){0}, &ld), -EINVAL);
	kvfs_match_release(m);
}

/*
 * The successors that say where pages are: host pages behave exactly as
 * the old calls; device pages need the fast path, which a plain directory
 * does not have, and are refused without touching anything.
 */
static void test_device_pages_off_the_fast_path(void **state)
{
	struct env *e = *state;
	struct kvfs_kv_layer_ex lx[LAYERS];
	struct kvfs_kv_pages_ex px = {lx};
	struct kvfs_dev_buffer db = {.base = e->pool[0], .bytes = 4096, .kind = KVFS_DEV_STANDIN};
	uint32_t tok[2 * T], src_ids[2] = {1, 2}, dst_ids[2] = {4, 5};
	kvfs_key keys[2];
	kvfs_match *m;
	kvfs_load *ld = NULL;
	size_t blk = (size_t)T * HEADS * DIM;

	for (int l = 0; l < LAYERS; l++)
		lx[l] = (struct kvfs_kv_layer_ex){.k = e->layers[l].k, .v = e->layers[l].v,
						  .block_stride = e->layers[l].block_stride,
						  .token_stride = e->layers[l].token_stride,
						  .device = KVFS_DEVICE_HOST};
	tokens_for(tok, 2 * T, 300);
	/* host pages: as kvfs_save and kvfs_load_start */
	assert_int_equal(kvfs_save_ex(e->ns, kvfs_ns_root(e->ns), 0, tok, 2, NULL, &px, src_ids), 2);
	assert_int_equal(kvfs_save_flush(e->ns), 0);
	assert_int_equal(kvfs_ns_keys(e->ns, tok, 2 * T, NULL, keys, 2), 2);
	assert_int_equal(kvfs_match_prefix(e->ns, keys, 2, &m), 2);
	assert_int_equal(kvfs_load_start_ex(m, 0, 2, &px, dst_ids, &ld), 0);
	assert_int_equal(kvfs_load_end(ld), 0);
	for (int b = 0; b < 2; b++)
		assert_memory_equal(e->pool[1] + dst_ids[b] * blk, e->pool[1] + src_ids[b] * blk,
				    blk * sizeof(uint16_t));
	/* device pages: no fast path here */
	assert_int_equal(kvfs_dev_register(e->ns, &db), -ENOTSUP);
	db.kind = 9;
	assert_int_equal(kvfs_dev_register(e->ns, &db), -EINVAL);
	assert_int_equal(kvfs_dev_unregister(e->ns, e->pool[0]), -ENOENT);
	for (int l = 0; l < LAYERS; l++)
		lx[l].device = 0;
	ld = NULL;
	assert_int_equal(kvfs_load_start_ex(m, 0, 2, &px, dst_ids, &ld), -ENOTSUP);
	assert_null(ld);
	assert_int_equal(kvfs_save_ex(e->ns, kvfs_ns_root(e->ns), 0, tok, 2, NULL, &px, src_ids),
			 -ENOTSUP);
	/* host and device layers mixed in a save; a reserved field set */
	lx[0].device = KVFS_DEVICE_HOST;
	assert_int_equal(kvfs_save_ex(e->ns, kvfs_ns_root(e->ns), 0, tok, 2, NULL, &px, src_ids),
			 -EINVAL);
	lx[0].reserved = 1;
	assert_int_equal(kvfs_load_start_ex(m, 0, 2, &px, dst_ids, &ld), -EINVAL);
	lx[0].reserved = 0;
	lx[1].device = -2;
	assert_int_equal(kvfs_load_start_ex(m, 0, 2, &px, dst_ids, &ld), -EINVAL);
	kvfs_match_release(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_save_match_load, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_layer_is_a_miss, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrong_key_is_a_miss, setup, teardown),
		cmocka_unit_test_setup_teardown(test_full_queue_drops, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
		cmocka_unit_test_setup_teardown(test_device_pages_off_the_fast_path, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
