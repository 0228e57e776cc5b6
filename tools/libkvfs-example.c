/*
 * tools/libkvfs-example.c — an engine's use of libkvfs, whole: a prompt's KV
 * cache is computed and saved on the first run, and loaded (layer by layer)
 * on the next. Built against an installed libkvfs:
 *
 *   cc libkvfs-example.c $(pkg-config --cflags --libs kvfs) -o example
 *   ./example /mnt/kvcache/example     # "computed and saved 4 blocks"
 *   ./example /mnt/kvcache/example     # "loaded 4 blocks (fast path): identical ..."
 *
 * tests/integration/test_install.py does exactly that after `make install`.
 */
#include <stdio.h>
#include <string.h>

#include <kvfs/kvfs.h>

/* The model's KV layout: 2 layers, 2 KV heads of 64 f16 values, 16-token blocks. */
enum { LAYERS = 2, HEADS = 2, DIM = 64, BT = 16, BLOCKS = 4 };
enum { ROW = HEADS * DIM * 2, BLK = BT * ROW }; /* bytes of a token's row, of a block */

/* Stand-in for the model: the K (v = 0) or V row of a token at a layer. */
static void compute(uint8_t *row, unsigned layer, int v, uint32_t token)
{
	for (size_t i = 0; i < ROW; i++)
		row[i] = (uint8_t)(layer * 31 + v * 7 + token + i);
}

/* Token @t's row in a paged pool (engine block t / BT holds it). */
static uint8_t *at(void *pool, size_t t)
{
	return (uint8_t *)pool + (t / BT) * BLK + (t % BT) * ROW;
}

int main(int argc, char **argv)
{
	struct kvfs_ns_options o = {
		.dir = argc > 1 ? argv[1] : "/mnt/kvcache/example",
		.layout = {.model_id = "example", .num_layers = LAYERS, .num_kv_heads = HEADS,
			   .head_dim = DIM, .tokens_per_block = BT,
			   .dtype = KVFS_DTYPE_F16, .kind = KVFS_KIND_KV},
		.seed = "0", /* vLLM's PYTHONHASHSEED: the keys are vLLM's */
	};
	uint32_t tokens[BLOCKS * BT], ids[BLOCKS] = {0, 1, 2, 3};
	struct kvfs_kv_layer layers[LAYERS];
	struct kvfs_kv_pages pages = {layers};
	size_t pool_bytes = (size_t)LAYERS * 2 * BLOCKS * BLK;
	kvfs_key keys[BLOCKS];
	uint8_t *pool, want[ROW];
	kvfs_match *m = NULL;
	kvfs_load *ld;
	kvfs_ns *ns;
	long n, hit;
	int rc, same = 1;

	rc = kvfs_ns_open(&o, &ns);
	if (rc) {
		fprintf(stderr, "kvfs_ns_open %s: %s\n", o.dir, strerror(-rc));
		return 1;
	}
	/* The engine's paged KV pool: per layer, BLOCKS blocks of K, then of V. */
	pool = kvfs_alloc(ns, pool_bytes);
	if (!pool) {
		perror("kvfs_alloc");
		return 1;
	}
	for (unsigned l = 0; l < LAYERS; l++)
		layers[l] = (struct kvfs_kv_layer){.k = pool + (2 * l) * BLOCKS * BLK,
						   .v = pool + (2 * l + 1) * BLOCKS * BLK,
						   .block_stride = BLK, .token_stride = ROW};
	for (size_t t = 0; t < BLOCKS * BT; t++)
		tokens[t] = (uint32_t)(t * 7 + 1); /* the prompt */

	n = kvfs_ns_keys(ns, tokens, BLOCKS * BT, NULL, keys, BLOCKS);
	hit = kvfs_match_prefix(ns, keys, (size_t)n, &m);
	if (hit == n && kvfs_load_start(m, 0, (size_t)hit, &pages, ids, &ld) == 0) {
		/* Cached: load it. Layer l can be computed on as soon as it is in. */
		for (unsigned l = 0; l < LAYERS; l++)
			if (kvfs_load_wait(ld, l))
				break; /* a miss after all: the engine recomputes */
		rc = kvfs_load_end(ld);
		for (unsigned l = 0; l < LAYERS; l++)
			for (size_t t = 0; t < BLOCKS * BT; t++)
				for (int v = 0; v < 2; v++) {
					compute(want, l, v, tokens[t]);
					same &= !memcmp(at(v ? layers[l].v : layers[l].k, t), want, ROW);
				}
		printf("loaded %ld blocks (%s path): %s\n", hit,
		       kvfs_ns_is_fast(ns) ? "fast" : "POSIX",
		       rc == 0 && same ? "identical to computing them" : "WRONG");
	} else {
		/* Not cached: compute it, then save it; the writing is in the background. */
		for (unsigned l = 0; l < LAYERS; l++)
			for (size_t t = 0; t < BLOCKS * BT; t++) {
				compute(at(layers[l].k, t), l, 0, tokens[t]);
				compute(at(layers[l].v, t), l, 1, tokens[t]);
			}
		n = kvfs_save(ns, kvfs_ns_root(ns), 0, tokens, (size_t)n, NULL, &pages, ids);
		kvfs_save_flush(ns);
		printf("computed and saved %ld blocks\n", n);
	}
	kvfs_match_release(m);
	kvfs_free(ns, pool, pool_bytes);
	kvfs_ns_close(ns);
	return rc == 0 && same ? 0 : 1;
}
