/*
 * tests/gpu/gpu_bench.c — the GPU tier's figures, printed as one table by
 * tests/gpu/run.sh on a machine with a GPU. Each kvfs figure is measured
 * against its peer in the same run, on the same bytes, and every transfer's
 * bytes are compared with what was sent (a wrong byte fails the run).
 *
 *   gpu_bench [--standin] [--mount DIR] [--tokens N] [--layers N] [--reps N]
 *
 * The shape is a Llama-3.1-8B KV cache: 32 layers, 8 KV heads of 128, bf16,
 * 16 tokens a block; a 4096-token prefix is 256 blocks, 16 MiB a layer.
 *
 *   load, daemon (DRAM)  kvfs_load_start_ex() into device pages through the
 *                        mount at DIR (needs a daemon started with --gpu),
 *                        layer by layer, vs cudaMemcpyAsync of the same bytes
 *                        from pinned host memory, layer by layer
 *   load, pool -> pages  the scatter kernel from pool blocks (native
 *                        segments) into paged K/V, vs one device-to-device
 *                        cudaMemcpyAsync of the same bytes
 *   save, pages -> pool  the gather kernel (what a save into the GPU pool
 *                        will do before it returns), and then until the
 *                        bytes are in host memory (device to pinned host)
 *   save, daemon         kvfs_save_ex() from device pages through the mount
 *                        (returns once the daemon has the blocks in DRAM),
 *                        vs cudaMemcpyAsync of the same bytes to pinned host
 *
 * --standin runs the same code on the tests' stand-in device (checks the
 * program on a machine without a GPU; its times mean nothing).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpu/gpu.h"
#include "kvfs/kvfs.h"

#define HEADS 8
#define DIM   128
#define DSIZE 2
#define TPB   16
#define ROW   (HEADS * DIM * DSIZE)

static const struct gpu_ops *ops;
static gpu_dev *dev;
static gpu_stream *st;
static unsigned layers = 32, reps = 5;
static size_t tokens = 4096;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "gpu_bench: %s: %s\n", what, gpu_error());
	exit(1);
}

static void *dalloc(size_t n)
{
	void *p;

	if (ops->mem_alloc(dev, n, &p))
		die("device memory");
	return p;
}

static void *halloc(size_t n)
{
	void *p;

	if (ops->host_alloc(dev, n, &p))
		die("pinned memory");
	return p;
}

static void sync_or_die(void)
{
	if (ops->stream_sync(st))
		die("stream");
}

/* Compare @n device bytes at @d with host bytes @want (through a pinned bounce). */
static void verify(const void *d, const void *want, size_t n, const char *what)
{
	static uint8_t *bounce;
	static size_t cap;

	if (cap < n) {
		if (bounce)
			ops->host_free(dev, bounce);
		bounce = halloc(n);
		cap = n;
	}
	if (ops->copy(st, bounce, d, n, GPU_D2H))
		die("verify copy");
	sync_or_die();
	if (memcmp(bounce, want, n)) {
		fprintf(stderr, "gpu_bench: %s: bytes differ\n", what);
		exit(1);
	}
}

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
	uint32_t x = seed * 2654435761u + 1;

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		p[i] = (uint8_t)x;
	}
}

struct row {
	const char *what;
	double kvfs_s, peer_s;
	const char *peer;
	uint64_t bytes;
};

static struct row rows[8];
static int nrows;

static void add(const char *what, double k, const char *peer, double p, uint64_t bytes)
{
	rows[nrows++] = (struct row){what, k, p, peer, bytes};
}

/* Best of reps. */
#define BEST(var, body)                                                                            \
	do {                                                                                       \
		var = 1e30;                                                                        \
		for (unsigned r_ = 0; r_ < reps; r_++) {                                           \
			double t0_ = now_s();                                                      \
			body;                                                                      \
			double t_ = now_s() - t0_;                                                 \
			if (t_ < var)                                                              \
				var = t_;                                                          \
		}                                                                                  \
	} while (0)

/* The kernels against plain copies of the same bytes, on device memory. */
static void bench_kernels(void)
{
	size_t nblocks = tokens / TPB, part = (size_t)TPB * ROW, seg = 2 * part;
	size_t layer_bytes = nblocks * seg;
	uint8_t *pages = dalloc(2 * layer_bytes); /* K pages, then V pages, one layer */
	uint8_t *pool = dalloc(layer_bytes * layers);
	uint8_t *host = halloc(layer_bytes * layers), *expect = malloc(2 * layer_bytes);
	uint8_t *pinned = halloc(layer_bytes * layers);
	uint32_t *ids = malloc(sizeof(*ids) * nblocks);
	uint8_t **segs = malloc(sizeof(*segs) * nblocks);
	double t_scatter, t_d2d, t_gather, t_save_host;

	for (size_t i = 0; i < nblocks; i++)
		ids[i] = (uint32_t)((i * 7 + 3) % nblocks); /* a scattered block table */
	fill(host, layer_bytes * layers, 1);
	if (ops->copy(st, pool, host, layer_bytes * layers, GPU_H2D))
		die("copy");
	sync_or_die();

	/* load: pool -> pages, every layer (one pages buffer reused: what is timed is the copy) */
	struct gpu_kv_xfer x = {.k = pages,
				.v = pages + layer_bytes,
				.block_stride = part,
				.token_stride = ROW,
				.row_bytes = ROW,
				.tokens = TPB,
				.nblocks = (uint32_t)nblocks,
				.block_ids = ids,
				.segs = segs};
	BEST(t_scatter, {
		for (unsigned l = 0; l < layers; l++) {
			for (size_t i = 0; i < nblocks; i++)
				segs[i] = pool + l * layer_bytes + i * seg;
			if (ops->kv_map(st, &x))
				die("scatter");
		}
		sync_or_die();
	});
	/* check the last layer: host implementation on host copies */
	{
		uint8_t **hsegs = malloc(sizeof(*hsegs) * nblocks);
		struct gpu_kv_xfer h = x;

		for (size_t i = 0; i < nblocks; i++)
			hsegs[i] = host + (layers - 1) * layer_bytes + i * seg;
		memset(expect, 0, 2 * layer_bytes);
		h.k = expect;
		h.v = expect + layer_bytes;
		h.segs = hsegs;
		if (gpu_kv_host(&h))
			die("host scatter");
		verify(pages, expect, 2 * layer_bytes, "scatter");
		free(hsegs);
	}
	BEST(t_d2d, {
		for (unsigned l = 0; l < layers; l++)
			if (ops->copy(st, pages, pool + l * layer_bytes, layer_bytes, GPU_D2D))
				die("d2d");
		sync_or_die();
	});
	verify(pages, host + (layers - 1) * layer_bytes, layer_bytes, "d2d");
	add("load, pool -> pages (scatter kernel)", t_scatter, "d2d cudaMemcpyAsync", t_d2d,
	    layer_bytes * layers);

	/* save: pages -> pool (gather), then until in host memory */
	fill(host, 2 * layer_bytes, 2);
	if (ops->copy(st, pages, host, 2 * layer_bytes, GPU_H2D))
		die("copy");
	sync_or_die();
	x.gather = true;
	BEST(t_gather, {
		for (unsigned l = 0; l < layers; l++) {
			for (size_t i = 0; i < nblocks; i++)
				segs[i] = pool + l * layer_bytes + i * seg;
			if (ops->kv_map(st, &x))
				die("gather");
		}
		sync_or_die();
	});
	{
		uint8_t **hsegs = malloc(sizeof(*hsegs) * nblocks);
		struct gpu_kv_xfer h = x;

		for (size_t i = 0; i < nblocks; i++)
			hsegs[i] = expect + i * seg;
		h.k = host;
		h.v = host + layer_bytes;
		h.segs = hsegs;
		if (gpu_kv_host(&h))
			die("host gather");
		verify(pool, expect, layer_bytes, "gather");
		free(hsegs);
	}
	add("save, pages -> pool (gather kernel)", t_gather, "d2d cudaMemcpyAsync", t_d2d,
	    layer_bytes * layers);
	BEST(t_save_host, {
		for (unsigned l = 0; l < layers; l++) {
			for (size_t i = 0; i < nblocks; i++)
				segs[i] = pool + l * layer_bytes + i * seg;
			if (ops->kv_map(st, &x) ||
			    ops->copy(st, pinned + l * layer_bytes, pool + l * layer_bytes,
				      layer_bytes, GPU_D2H))
				die("save to host");
		}
		sync_or_die();
	});
	if (memcmp(pinned, expect, layer_bytes)) {
		fprintf(stderr, "gpu_bench: save to host: bytes differ\n");
		exit(1);
	}
	{
		double t_d2h;

		BEST(t_d2h, {
			if (ops->copy(st, pinned, pool, layer_bytes * layers, GPU_D2H))
				die("d2h");
			sync_or_die();
		});
		add("save, pages -> pinned host (gather + d2h)", t_save_host, "d2h cudaMemcpyAsync",
		    t_d2h, layer_bytes * layers);
	}
	ops->mem_free(dev, pages);
	ops->mem_free(dev, pool);
	ops->host_free(dev, host);
	ops->host_free(dev, pinned);
	free(expect);
	free(ids);
	free(segs);
}

/* The daemon's load through the mount at @dir vs pinned cudaMemcpyAsync. */
static void bench_daemon(const char *dir)
{
	struct kvfs_ns_options o = {0};
	size_t nblocks = tokens / TPB, part = (size_t)TPB * ROW;
	size_t layer_part = nblocks * part; /* K (or V) of one layer */
	size_t bytes = 2 * layer_part * layers;
	struct kvfs_kv_layer *hl = calloc(layers, sizeof(*hl));
	struct kvfs_kv_layer_ex *dl = calloc(layers, sizeof(*dl));
	struct kvfs_kv_pages hp = {hl};
	struct kvfs_kv_pages_ex dp = {dl};
	uint32_t *toks = malloc(sizeof(*toks) * tokens), *ids = malloc(sizeof(*ids) * nblocks);
	kvfs_key *keys = malloc(sizeof(*keys) * nblocks);
	struct kvfs_dev_buffer db = {0};
	struct gpu_ipc h;
	double t_kvfs, t_pinned;
	uint8_t *host, *pinned, *pages;
	kvfs_ns *ns;
	int rc;

	snprintf(o.layout.model_id, sizeof(o.layout.model_id), "bench-llama-8b");
	o.layout = (struct kvfs_layout){.num_layers = layers,
					.num_kv_heads = HEADS,
					.head_dim = DIM,
					.tokens_per_block = TPB,
					.dtype = KVFS_DTYPE_BF16,
					.kind = KVFS_KIND_KV};
	snprintf(o.layout.model_id, sizeof(o.layout.model_id), "bench-llama-8b");
	o.dir = dir;
	o.seed = "0";
	o.save_queue = (unsigned)nblocks;
	o.path = KVFS_PATH_FAST;
	rc = kvfs_ns_open(&o, &ns);
	if (rc) {
		fprintf(stderr, "gpu_bench: %s: %s\n", dir, strerror(-rc));
		exit(1);
	}
	host = kvfs_alloc(ns, bytes);
	pinned = halloc(bytes);
	pages = dalloc(bytes);
	if (!host)
		die("kvfs_alloc");
	fill(host, bytes, 3);
	memcpy(pinned, host, bytes);
	for (unsigned l = 0; l < layers; l++) {
		hl[l] = (struct kvfs_kv_layer){.k = host + 2 * l * layer_part,
					       .v = host + (2 * l + 1) * layer_part,
					       .block_stride = part,
					       .token_stride = ROW};
		dl[l] = (struct kvfs_kv_layer_ex){.k = pages + 2 * l * layer_part,
						  .v = pages + (2 * l + 1) * layer_part,
						  .block_stride = part,
						  .token_stride = ROW,
						  .device = dev->index};
	}
	for (size_t i = 0; i < tokens; i++)
		toks[i] = (uint32_t)(i * 31 + 7);
	for (size_t i = 0; i < nblocks; i++)
		ids[i] = (uint32_t)i;
	if (kvfs_save(ns, kvfs_ns_root(ns), 0, toks, nblocks, NULL, &hp, ids) < (long)nblocks)
		die("save");
	kvfs_save_flush(ns);
	if (kvfs_ns_keys(ns, toks, tokens, NULL, keys, nblocks) != (long)nblocks)
		die("keys");
	if (ops->ipc_export(dev, pages, bytes, &h))
		die("export");
	db = (struct kvfs_dev_buffer){
		.base = pages, .bytes = bytes, .device = dev->index, .kind = ops->impl};
	memcpy(db.uuid, h.uuid, 16);
	memcpy(db.ipc_handle, h.handle, 64);
	rc = kvfs_dev_register(ns, &db);
	if (rc) {
		fprintf(stderr, "gpu_bench: kvfs_dev_register: %s\n", strerror(-rc));
		exit(1);
	}
	BEST(t_kvfs, {
		kvfs_match *m;
		kvfs_load *ld;

		if (kvfs_match_prefix(ns, keys, nblocks, &m) != (long)nblocks ||
		    kvfs_load_start_ex(m, 0, nblocks, &dp, ids, &ld))
			die("match/load");
		for (unsigned l = 0; l < layers; l++)
			if (kvfs_load_wait(ld, l))
				die("load wait");
		if (kvfs_load_end(ld))
			die("load end");
		kvfs_match_release(m);
	});
	verify(pages, host, bytes, "daemon load");
	if (ops->memset(dev, pages, 0, bytes))
		die("memset");
	BEST(t_pinned, {
		for (unsigned l = 0; l < layers; l++)
			if (ops->copy(st, pages + 2 * l * layer_part, pinned + 2 * l * layer_part,
				      2 * layer_part, GPU_H2D))
				die("h2d");
		sync_or_die();
	});
	verify(pages, host, bytes, "pinned h2d");
	add("load, daemon DRAM -> device pages", t_kvfs, "pinned h2d cudaMemcpyAsync", t_pinned,
	    bytes);

	/* save from device pages: until kvfs_save_ex returns (new tokens every rep) */
	{
		double t_save, t_d2h;
		unsigned rep = 0;

		BEST(t_save, {
			rep++;
			for (size_t i = 0; i < tokens; i++)
				toks[i] = (uint32_t)(i * 31 + 7 + rep * 1000003u);
			if (kvfs_save_ex(ns, kvfs_ns_root(ns), 0, toks, nblocks, NULL, &dp, ids) !=
			    (long)nblocks)
				die("kvfs_save_ex");
		});
		/* the last rep's blocks, read back through host memory, are the device's bytes */
		{
			kvfs_match *m;
			kvfs_load *ld;

			memset(host, 0, bytes);
			if (kvfs_ns_keys(ns, toks, tokens, NULL, keys, nblocks) != (long)nblocks ||
			    kvfs_match_prefix(ns, keys, nblocks, &m) != (long)nblocks ||
			    kvfs_load_start(m, 0, nblocks, &hp, ids, &ld) || kvfs_load_end(ld))
				die("reading the saved blocks back");
			kvfs_match_release(m);
			if (memcmp(host, pinned, bytes)) {
				fprintf(stderr, "gpu_bench: saved blocks: bytes differ\n");
				exit(1);
			}
		}
		BEST(t_d2h, {
			if (ops->copy(st, pinned, pages, bytes, GPU_D2H))
				die("d2h");
			sync_or_die();
		});
		add("save, device pages -> daemon (kvfs_save_ex)", t_save,
		    "d2h cudaMemcpyAsync (pinned)", t_d2h, bytes);
	}
	kvfs_dev_unregister(ns, pages);
	kvfs_ns_close(ns);
	ops->mem_free(dev, pages);
	ops->host_free(dev, pinned);
	free(hl);
	free(dl);
	free(toks);
	free(ids);
	free(keys);
}

int main(int argc, char **argv)
{
	const char *mount = NULL;
	bool standin = false;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--standin") == 0)
			standin = true;
		else if (strcmp(argv[i], "--mount") == 0 && i + 1 < argc)
			mount = argv[++i];
		else if (strcmp(argv[i], "--tokens") == 0 && i + 1 < argc)
			tokens = strtoul(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--layers") == 0 && i + 1 < argc)
			layers = (unsigned)strtoul(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
			reps = (unsigned)strtoul(argv[++i], NULL, 10);
		else {
			fprintf(stderr, "usage: gpu_bench [--standin] [--mount DIR] [--tokens N] "
					"[--layers N] [--reps N]\n");
			return 2;
		}
	}
	if (tokens < TPB || !layers || !reps) {
		fprintf(stderr, "gpu_bench: need --tokens >= %d, --layers and --reps >= 1\n", TPB);
		return 2;
	}
	ops = standin ? gpu_shm() : gpu_cuda();
	if (!ops) {
		fprintf(stderr, "gpu_bench: built without CUDA\n");
		return 77;
	}
	if (standin)
		gpu_shm_configure(2, 16ull << 30);
	if (gpu_open(ops, 0, &dev)) {
		fprintf(stderr, "gpu_bench: %s\n", gpu_error());
		return 77;
	}
	if (ops->stream_new(dev, &st))
		die("stream");
	bench_kernels();
	if (mount)
		bench_daemon(mount);
	printf("GPU tier, %s device, %zu tokens x %u layers (bf16, 8 KV heads x 128, 16 "
	       "tokens/block), best of %u; bytes compared after every transfer\n",
	       ops->name, tokens, layers, reps);
	printf("%-44s %10s %10s  %-28s %10s %7s\n", "kvfs", "ms", "GB/s", "peer (same run)", "ms",
	       "ratio");
	for (int i = 0; i < nrows; i++) {
		struct row *r = &rows[i];

		printf("%-44s %10.3f %10.2f  %-28s %10.3f %7.2f\n", r->what, r->kvfs_s * 1e3,
		       (double)r->bytes / r->kvfs_s / 1e9, r->peer, r->peer_s * 1e3,
		       r->peer_s / r->kvfs_s);
	}
	ops->stream_free(st);
	gpu_close(dev);
	return 0;
}
