/*
 * tests/unit/gpu_test.c — the GPU layer (gpu/gpu.h): devices and their
 * errors, the block pool, copies and per-layer completion, IPC handles
 * between two processes, and the gather/scatter kernels' index arithmetic
 * against the host implementation, byte for byte.
 *
 * By default it runs on the stand-in device (gpu_shm()). With
 * KVFS_GPU_IMPL=cuda it runs the same tests on the CUDA runtime (what
 * tests/gpu/run.sh does on a machine with a GPU); the few that need the
 * stand-in's controls (hold a stream, fault injection, device count) skip
 * there. Device memory is only ever touched through copies, so every test
 * means the same on both.
 *
 * The second process of the IPC tests is this program again, run with
 * "child ..." arguments (a fork would inherit a CUDA context it cannot use).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/fault.h"
#include "gpu/gpu.h"

extern char **environ;

static const struct gpu_ops *ops;
static bool standin;
static const char *self_path;

struct env {
	gpu_dev *d;
	gpu_stream *s;
};

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));

	gpu_shm_configure(2, 1ull << 30);
	if (gpu_open(ops, 0, &e->d) || ops->stream_new(e->d, &e->s)) {
		print_error("cannot open device 0: %s\n", gpu_error());
		free(e);
		return -1;
	}
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;

	ops->stream_free(e->s);
	gpu_close(e->d);
	free(e);
	return 0;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void fill_rand(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)next_rand();
}

static void *dev_alloc(struct env *e, size_t bytes)
{
	void *p = NULL;

	assert_int_equal(ops->mem_alloc(e->d, bytes, &p), 0);
	return p;
}

static void to_dev(struct env *e, void *dst, const void *src, size_t n)
{
	assert_int_equal(ops->copy(e->s, dst, src, n, GPU_H2D), 0);
	assert_int_equal(ops->stream_sync(e->s), 0);
}

static void from_dev(struct env *e, void *dst, const void *src, size_t n)
{
	assert_int_equal(ops->copy(e->s, dst, src, n, GPU_D2H), 0);
	assert_int_equal(ops->stream_sync(e->s), 0);
}

/* --- devices ----------------------------------------------------------------------- */

static void test_open_errors(void **state)
{
	gpu_dev *d = NULL;

	(void)state;
	assert_int_equal(gpu_open(ops, 1000, &d), -ENODEV);
	assert_non_null(strstr(gpu_error(), "1000"));
	assert_int_equal(gpu_open(ops, -1, &d), -ENODEV);
	assert_int_equal(gpu_open(NULL, 0, &d), -ENOTSUP);
	assert_non_null(strstr(gpu_error(), "without CUDA"));
	if (!standin)
		skip();
	gpu_shm_configure(-1, 1ull << 30);
	assert_int_equal(gpu_open(ops, 0, &d), -ENXIO);
	assert_non_null(strstr(gpu_error(), "no driver"));
	gpu_shm_configure(2, 1ull << 30);
	assert_int_equal(gpu_open(ops, 2, &d), -ENODEV);
	assert_int_equal(gpu_open(ops, 1, &d), 0);
	assert_int_equal(d->index, 1);
	gpu_close(d);
}

/* Built with CUDA on a machine without a driver: a clear -ENXIO, never a crash. */
static void test_cuda_without_driver(void **state)
{
	gpu_dev *d = NULL;
	int rc;

	(void)state;
	if (!gpu_have_cuda() || !standin)
		skip(); /* no CUDA in this build, or this run is on the real device */
	rc = gpu_open(gpu_cuda(), 0, &d);
	if (rc == 0) { /* a real GPU: the CUDA run of this suite covers it */
		gpu_close(d);
		skip();
	}
	assert_true(rc == -ENXIO || rc == -ENODEV);
	assert_non_null(strstr(gpu_error(), "cudaError"));
}

/* --- the pool ---------------------------------------------------------------------- */

static void test_pool(void **state)
{
	struct env *e = *state;
	struct gpu_pool_stats st;
	gpu_pool *p = NULL;
	uint32_t idx[8], more[8], bad[2] = {3, 99};
	size_t free_b, total_b;

	assert_int_equal(gpu_pool_new(e->d, 1 << 20, 100, &p), -EINVAL);
	assert_int_equal(gpu_pool_new(e->d, 100, 4096, &p), -EINVAL);
	assert_int_equal(ops->mem_info(e->d, &free_b, &total_b), 0);
	assert_int_equal(gpu_pool_new(e->d, (uint64_t)free_b + (64ull << 20), 4096, &p), -ENOMEM);
	assert_non_null(strstr(gpu_error(), "out of memory"));

	/* 8 blocks and a partial one, which is not made */
	assert_int_equal(gpu_pool_new(e->d, 8 * 4096 + 100, 4096, &p), 0);
	gpu_pool_get_stats(p, &st);
	assert_int_equal(st.blocks, 8);
	assert_int_equal(st.bytes, 8 * 4096);
	assert_int_equal(gpu_pool_get(p, 0, idx), -EINVAL);
	assert_int_equal(gpu_pool_get(p, 5, idx), 0);
	assert_int_equal(gpu_pool_get(p, 4, more), -ENOSPC); /* all or nothing */
	gpu_pool_get_stats(p, &st);
	assert_int_equal(st.free_blocks, 3);
	assert_int_equal(st.full, 1);
	for (int i = 0; i < 5; i++) {
		assert_non_null(gpu_pool_block(p, idx[i]));
		for (int j = 0; j < i; j++)
			assert_int_not_equal(idx[i], idx[j]);
	}
	assert_null(gpu_pool_block(p, 8));
	assert_int_equal(gpu_pool_get(p, 3, more), 0);
	gpu_pool_put(p, 5, idx);
	gpu_pool_put(p, 1, idx);     /* twice: refused */
	gpu_pool_put(p, 1, &bad[1]); /* out of range: refused */
	gpu_pool_get_stats(p, &st);
	assert_int_equal(st.free_blocks, 5);
	assert_int_equal(st.bad_puts, 2);
	gpu_pool_put(p, 3, more);
	(void)bad;
	gpu_pool_get_stats(p, &st);
	assert_int_equal(st.free_blocks, 8);
	gpu_pool_free(p);
}

/* --- copies and events ------------------------------------------------------------- */

#define LAYERS 4

static void test_copies(void **state)
{
	struct env *e = *state;
	const size_t n = 256 << 10;
	uint8_t *host, *back, *a = dev_alloc(e, n), *b = dev_alloc(e, n);

	assert_int_equal(ops->host_alloc(e->d, n, (void **)&host), 0);
	assert_int_equal(ops->host_alloc(e->d, n, (void **)&back), 0);
	fill_rand(host, n);
	assert_int_equal(ops->copy(e->s, a, host, n, GPU_H2D), 0);
	assert_int_equal(ops->copy(e->s, b, a, n, GPU_D2D), 0);
	assert_int_equal(ops->copy(e->s, back, b, n, GPU_D2H), 0);
	assert_int_equal(ops->stream_sync(e->s), 0);
	assert_memory_equal(host, back, n);
	assert_int_equal(ops->memset(e->d, b, 0x5a, n), 0);
	from_dev(e, back, b, n);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(back[i], 0x5a);
	assert_int_equal(ops->copy(e->s, a, host, n, (enum gpu_dir)7), -EINVAL);
	ops->host_free(e->d, host);
	ops->host_free(e->d, back);
	ops->mem_free(e->d, a);
	ops->mem_free(e->d, b);
}

/* A batch of scattered copies, both ways, of sizes that are not multiples of anything. */
static void test_copy_batch(void **state)
{
	struct env *e = *state;
	enum { N = 100, MAXLEN = 3000 };
	uint8_t *host, *back, *dev = dev_alloc(e, N * 4096);
	void *dsts[N];
	const void *srcs[N];
	size_t sizes[N];

	assert_int_equal(ops->host_alloc(e->d, N * 4096, (void **)&host), 0);
	assert_int_equal(ops->host_alloc(e->d, N * 4096, (void **)&back), 0);
	fill_rand(host, N * 4096);
	memset(back, 0, N * 4096);
	for (int i = 0; i < N; i++) { /* host chunk i goes to device slot N-1-i */
		dsts[i] = dev + (N - 1 - i) * 4096 + i % 7;
		srcs[i] = host + i * 4096;
		sizes[i] = 1 + (size_t)(next_rand() % MAXLEN);
	}
	assert_int_equal(ops->copy_batch(e->s, dsts, srcs, sizes, N, GPU_H2D), 0);
	for (int i = 0; i < N; i++) { /* and back into another host buffer */
		srcs[i] = dsts[i];
		dsts[i] = back + i * 4096;
	}
	assert_int_equal(ops->copy_batch(e->s, dsts, srcs, sizes, N, GPU_D2H), 0);
	assert_int_equal(ops->stream_sync(e->s), 0);
	for (int i = 0; i < N; i++) {
		assert_memory_equal(back + i * 4096, host + i * 4096, sizes[i]);
		assert_int_equal(back[i * 4096 + sizes[i]], 0); /* nothing beyond */
	}
	assert_int_equal(ops->copy_batch(e->s, dsts, srcs, sizes, 0, GPU_D2H), 0);
	ops->host_free(e->d, host);
	ops->host_free(e->d, back);
	ops->mem_free(e->d, dev);
}

/* The stand-in checks the sides of a copy as CUDA's unified addressing would. */
static void test_copy_sides(void **state)
{
	struct env *e = *state;
	uint8_t host[64], *a;

	if (!standin)
		skip();
	a = dev_alloc(e, 4096);
	assert_int_equal(ops->copy(e->s, host, host, 64, GPU_H2D), -EINVAL);
	assert_int_equal(ops->copy(e->s, a, a, 64, GPU_H2D), -EINVAL);
	assert_int_equal(ops->copy(e->s, a + 4090, host, 64, GPU_H2D), -EINVAL); /* runs off */
	assert_int_equal(ops->copy(e->s, a, host, 64, GPU_H2D), 0);
	assert_int_equal(ops->stream_sync(e->s), 0);
	ops->mem_free(e->d, a);
}

/* One event per layer: each completes once its layer is in, in order. */
static void test_layer_events(void **state)
{
	struct env *e = *state;
	const size_t per = 64 << 10;
	uint8_t *host, *back, *dev = dev_alloc(e, LAYERS * per);
	gpu_event *ev[LAYERS];

	if (!standin)
		skip(); /* needs gpu_shm_stream_hold() to see a pending event */
	assert_int_equal(ops->host_alloc(e->d, LAYERS * per, (void **)&host), 0);
	back = malloc(LAYERS * per);
	fill_rand(host, LAYERS * per);
	gpu_shm_stream_hold(e->s, true);
	for (int l = 0; l < LAYERS; l++) {
		assert_int_equal(ops->event_new(e->d, &ev[l]), 0);
		assert_int_equal(ops->copy(e->s, dev + l * per, host + l * per, per, GPU_H2D), 0);
		assert_int_equal(ops->event_record(ev[l], e->s), 0);
	}
	for (int l = 0; l < LAYERS; l++)
		assert_int_equal(ops->event_query(ev[l]), -EAGAIN);
	gpu_shm_stream_hold(e->s, false);
	for (int l = 0; l < LAYERS; l++) {
		assert_int_equal(ops->event_wait(ev[l]), 0);
		assert_int_equal(ops->event_query(ev[l]), 0);
		/* everything before the event is in */
		memcpy(back, dev, (size_t)(l + 1) * per); /* stand-in memory is host memory */
		assert_memory_equal(back, host, (size_t)(l + 1) * per);
	}
	for (int l = 0; l < LAYERS; l++)
		ops->event_free(ev[l]);
	free(back);
	ops->host_free(e->d, host);
	ops->mem_free(e->d, dev);
}

/* A copy that fails on the device fails the events after it, not the ones before. */
static void test_copy_fault(void **state)
{
	struct env *e = *state;
	uint8_t host[4096] = {1}, *dev = dev_alloc(e, 3 * 4096);
	gpu_event *ev[3];

	if (!standin)
		skip();
	gpu_shm_stream_hold(e->s, true);
	for (int l = 0; l < 3; l++) {
		assert_int_equal(ops->event_new(e->d, &ev[l]), 0);
		assert_int_equal(ops->copy(e->s, dev + l * 4096, host, 4096, GPU_H2D), 0);
		assert_int_equal(ops->event_record(ev[l], e->s), 0);
	}
	kvfs_fault_arm(KVFS_FAULT_GPU_COPY, 2, EIO, false);
	gpu_shm_stream_hold(e->s, false);
	assert_int_equal(ops->event_wait(ev[0]), 0);
	assert_int_equal(ops->event_wait(ev[1]), -EIO);
	assert_int_equal(ops->event_wait(ev[2]), -EIO);
	assert_int_equal(ops->stream_sync(e->s), -EIO);
	/* reported once; the stream goes on */
	assert_int_equal(ops->copy(e->s, dev, host, 4096, GPU_H2D), 0);
	assert_int_equal(ops->stream_sync(e->s), 0);
	for (int l = 0; l < 3; l++)
		ops->event_free(ev[l]);
	ops->mem_free(e->d, dev);
}

/* --- gather/scatter ---------------------------------------------------------------- */

enum layout { SEPARATE, INTERLEAVED, MLA };

struct kv_case {
	enum layout layout;
	uint32_t heads, dim, dsize, tokens, pool_blocks, nblocks;
	uint32_t pad; /* extra bytes per token row in the engine's pages */
};

static void check_kv_case(struct env *e, const struct kv_case *c)
{
	uint64_t row = (uint64_t)c->heads * c->dim * c->dsize;
	uint64_t tstride = row + c->pad;
	uint64_t part = (uint64_t)c->tokens * tstride;
	uint64_t bstride = c->layout == INTERLEAVED ? 2 * part : part;
	uint64_t pages_bytes = (uint64_t)c->pool_blocks * bstride;
	uint64_t seg = (uint64_t)c->tokens * row * (c->layout == MLA ? 1 : 2);
	uint64_t seg_slot = seg + 48; /* segments not adjacent, not 16-aligned */
	uint64_t total = 2 * pages_bytes + c->nblocks * seg_slot + 16;
	uint32_t ids[64];
	uint8_t *hsegs[64], *dsegs[64];
	uint8_t *href, *hdev, *dev = dev_alloc(e, total);
	struct gpu_kv_xfer x = {0};

	assert_true(c->nblocks <= 64 && c->nblocks <= c->pool_blocks);
	/* distinct engine blocks in random order (a scatter must not write one twice) */
	for (uint32_t i = 0; i < c->nblocks; i++) {
		bool dup;

		do {
			ids[i] = (uint32_t)(next_rand() % c->pool_blocks);
			dup = false;
			for (uint32_t j = 0; j < i; j++)
				dup |= ids[j] == ids[i];
		} while (dup);
	}
	href = malloc(total);
	hdev = malloc(total);
	for (int gather = 1; gather >= 0; gather--) {
		fill_rand(href, total);
		to_dev(e, dev, href, total);
		/* the same transfer described on host memory and on device memory */
		for (uint32_t i = 0; i < c->nblocks; i++) {
			/* segment i at slot nblocks-1-i, offset by 8*i bytes: unaligned, reversed
			 */
			uint64_t off = 2 * pages_bytes + (uint64_t)(c->nblocks - 1 - i) * seg_slot +
				       8 * (i % 3);

			hsegs[i] = href + off;
			dsegs[i] = dev + off;
		}
		x.row_bytes = row;
		x.token_stride = tstride;
		x.block_stride = bstride;
		x.tokens = c->tokens;
		x.nblocks = c->nblocks;
		x.block_ids = ids;
		x.gather = gather;
		x.k = href;
		x.v = c->layout == SEPARATE	 ? href + pages_bytes
		      : c->layout == INTERLEAVED ? href + part
						 : NULL;
		x.segs = hsegs;
		assert_int_equal(gpu_kv_host(&x), 0);
		x.k = dev;
		x.v = c->layout == SEPARATE	 ? dev + pages_bytes
		      : c->layout == INTERLEAVED ? dev + part
						 : NULL;
		x.segs = dsegs;
		assert_int_equal(gpu_kv_check(&x), 0);
		assert_int_equal(ops->kv_map(e->s, &x), 0);
		assert_int_equal(ops->stream_sync(e->s), 0);
		from_dev(e, hdev, dev, total);
		/* every byte: what moved, and what must not have */
		assert_memory_equal(href, hdev, total);
	}
	free(href);
	free(hdev);
	ops->mem_free(e->d, dev);
}

static void test_kv_layouts(void **state)
{
	static const struct kv_case cases[] = {
		/* vLLM, bf16: 8 heads x 128, 16 tokens, 40 engine blocks, 12 moved */
		{SEPARATE, 8, 128, 2, 16, 40, 12, 0},
		{INTERLEAVED, 8, 128, 2, 16, 40, 12, 0},
		{MLA, 1, 576, 2, 16, 40, 12, 0},
		/* f32, padded token rows (SGLang-style strides) */
		{SEPARATE, 4, 64, 4, 8, 20, 7, 32},
		{INTERLEAVED, 2, 32, 4, 32, 10, 10, 16},
		/* fp8: odd rows force 1-byte units */
		{SEPARATE, 3, 5, 1, 7, 9, 5, 0},
		{INTERLEAVED, 3, 5, 1, 7, 9, 5, 3},
		{MLA, 1, 13, 1, 3, 6, 6, 1},
		/* one token per block, one block */
		{SEPARATE, 1, 8, 2, 1, 1, 1, 0},
		/* 2-byte and 4-byte units */
		{SEPARATE, 1, 3, 2, 4, 5, 3, 2},
		{MLA, 1, 6, 2, 4, 5, 3, 4},
		/* a big batch */
		{SEPARATE, 8, 128, 2, 16, 64, 64, 0},
	};
	struct env *e = *state;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_kv_case(e, &cases[i]);
}

static void test_kv_check(void **state)
{
	uint8_t buf[4096], *segs[2] = {buf, NULL};
	uint32_t ids[2] = {0, 1};
	struct gpu_kv_xfer x = {
		.k = buf,
		.block_stride = 256,
		.token_stride = 64,
		.row_bytes = 64,
		.tokens = 4,
		.nblocks = 1,
		.block_ids = ids,
		.segs = segs,
		.gather = true,
	};

	(void)state;
	assert_int_equal(gpu_kv_check(&x), 0);
	x.token_stride = 32;
	assert_int_equal(gpu_kv_check(&x), -EINVAL);
	assert_non_null(strstr(gpu_error(), "token stride"));
	x.token_stride = 64;
	x.block_stride = 255;
	assert_int_equal(gpu_kv_check(&x), -EINVAL);
	x.block_stride = 256;
	x.nblocks = 2;
	assert_int_equal(gpu_kv_check(&x), -EINVAL); /* NULL segment */
	x.nblocks = 0;
	assert_int_equal(gpu_kv_check(&x), -EINVAL);
	x.nblocks = GPU_KV_MAX_BLOCKS + 1;
	assert_int_equal(gpu_kv_check(&x), -EINVAL);
	x.nblocks = 1;
	x.tokens = 0;
	assert_int_equal(gpu_kv_check(&x), -EINVAL);
	x.tokens = 65536; /* a part of 4 GiB */
	x.row_bytes = x.token_stride = 65536;
	x.block_stride = 1ull << 32;
	assert_int_equal(gpu_kv_check(&x), -EINVAL);
	assert_non_null(strstr(gpu_error(), "4 GiB"));
	x.row_bytes = x.token_stride = 64;
	x.block_stride = 256;
	x.tokens = 4;
	x.k = NULL;
	assert_int_equal(gpu_kv_check(&x), -EINVAL);
	assert_int_equal(gpu_kv_host(&x), -EINVAL);
}

/* --- IPC: two processes -------------------------------------------------------------- */

#define SHARE_TOKENS 16
#define SHARE_ROW    256
#define SHARE_BLOCKS 4
#define SHARE_SEG    (2 * SHARE_TOKENS * SHARE_ROW)

/* The pattern a prefill process's pages hold: byte i of K or V of engine block b. */
static uint8_t share_byte(uint32_t b, int part, uint64_t i)
{
	return (uint8_t)(b * 31 + (uint32_t)part * 7 + i * 13 + (i >> 8));
}

static void hex(const void *p, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", ((const uint8_t *)p)[i]);
}

static int unhex(const char *s, void *p, size_t n)
{
	if (strlen(s) != 2 * n)
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned v;

		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			return -1;
		((uint8_t *)p)[i] = (uint8_t)v;
	}
	return 0;
}

/* Run this program as the second process; @return its exit status. */
static int run_child(const char *mode, const struct gpu_ipc *h, const char *arg)
{
	char hs[2 * sizeof(*h) + 1];
	char *argv[] = {(char *)self_path, "child", (char *)mode, hs, (char *)arg, NULL};
	pid_t pid;
	int status;

	hex(h, sizeof(*h), hs);
	if (posix_spawn(&pid, self_path, NULL, NULL, argv, environ))
		return -1;
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

/*
 * The child: "open" maps the handle and exits with the errno it got;
 * "prefill" also saves SHARE_BLOCKS blocks from its own device pages into
 * the pool blocks listed in @arg (a gather, device to device).
 */
static int child_main(int argc, char **argv)
{
	struct gpu_ipc h;
	gpu_dev *d;
	gpu_stream *s;
	uint8_t *pool, *pages, *host;
	uint8_t *segs[SHARE_BLOCKS];
	uint32_t ids[SHARE_BLOCKS], slots[SHARE_BLOCKS];
	const uint64_t part = (uint64_t)SHARE_TOKENS * SHARE_ROW, pages_bytes = 8 * part;
	int rc;

	if (argc < 4 || unhex(argv[3], &h, sizeof(h)))
		return 100;
	if (gpu_open(ops, 0, &d) || ops->stream_new(d, &s))
		return 101;
	rc = ops->ipc_open(d, &h, (void **)&pool);
	if (rc) {
		fprintf(stderr, "child: %s\n", gpu_error());
		return -rc;
	}
	if (strcmp(argv[2], "prefill") == 0) {
		if (argc < 5 ||
		    sscanf(argv[4], "%u,%u,%u,%u", &slots[0], &slots[1], &slots[2], &slots[3]) != 4)
			return 102;
		/* K pages then V pages, 8 engine blocks each; save engine blocks 7, 2, 5, 0 */
		if (ops->mem_alloc(d, 2 * pages_bytes, (void **)&pages) ||
		    ops->host_alloc(d, 2 * pages_bytes, (void **)&host))
			return 103;
		for (int p = 0; p < 2; p++)
			for (uint32_t b = 0; b < 8; b++)
				for (uint64_t i = 0; i < part; i++)
					host[p * pages_bytes + b * part + i] = share_byte(b, p, i);
		ids[0] = 7, ids[1] = 2, ids[2] = 5, ids[3] = 0;
		for (int i = 0; i < SHARE_BLOCKS; i++)
			segs[i] = pool + (uint64_t)slots[i] * SHARE_SEG;
		struct gpu_kv_xfer x = {
			.k = pages,
			.v = pages + pages_bytes,
			.block_stride = part,
			.token_stride = SHARE_ROW,
			.row_bytes = SHARE_ROW,
			.tokens = SHARE_TOKENS,
			.nblocks = SHARE_BLOCKS,
			.block_ids = ids,
			.segs = segs,
			.gather = true,
		};
		if (ops->copy(s, pages, host, 2 * pages_bytes, GPU_H2D) || ops->kv_map(s, &x) ||
		    ops->stream_sync(s))
			return 104;
		ops->mem_free(d, pages);
		ops->host_free(d, host);
	}
	ops->ipc_close(d, pool);
	ops->stream_free(s);
	gpu_close(d);
	return 0;
}

static void test_ipc_handles(void **state)
{
	struct env *e = *state;
	struct gpu_ipc h, bad;
	void *dev = dev_alloc(e, 1 << 20);

	if (standin) /* CUDA exports the allocation holding an interior pointer */
		assert_int_equal(ops->ipc_export(e->d, (uint8_t *)dev + 4096, 4096, &h), -EINVAL);
	assert_int_equal(ops->ipc_export(e->d, dev, 1 << 20, &h), 0);
	assert_int_equal(h.impl, ops->impl);
	assert_int_equal(h.bytes, 1 << 20);
	assert_int_equal(run_child("open", &h, NULL), 0);

	bad = h;
	bad.impl = ops->impl == GPU_IMPL_SHM ? GPU_IMPL_CUDA : GPU_IMPL_SHM;
	assert_int_equal(run_child("open", &bad, NULL), EXDEV);
	bad = h;
	if (standin) {
		bad.device = 1; /* the child opens device 0 */
		assert_int_equal(run_child("open", &bad, NULL), EXDEV);
	} else {
		bad.uuid[0] ^= 0xff; /* another GPU */
		assert_int_equal(run_child("open", &bad, NULL), EXDEV);
	}
	bad = h;
	memset(bad.handle, 0xa5, sizeof(bad.handle)); /* garbage */
	{
		int rc = run_child("open", &bad, NULL);

		assert_true(standin ? rc == EINVAL : rc != 0);
	}
	if (standin) {
		bad = h;
		bad.bytes = 2 << 20; /* more than there is */
		assert_int_equal(run_child("open", &bad, NULL), EINVAL);
	}
	ops->mem_free(e->d, dev);
	/* freed: the handle names memory that is gone */
	if (standin)
		assert_int_equal(run_child("open", &h, NULL), ESTALE);
	else
		assert_int_not_equal(run_child("open", &h, NULL), 0);
}

/*
 * Two processes share blocks through a pool (semi-PD, MemServe): a prefill
 * process saves blocks from its device pages into the pool, device to
 * device; this process, the decode side, loads them into its own pages in
 * another order, and every byte is the prefill's.
 */
static void test_two_processes_share_blocks(void **state)
{
	struct env *e = *state;
	const uint64_t part = (uint64_t)SHARE_TOKENS * SHARE_ROW, pages_bytes = 6 * part;
	const uint32_t prefill_ids[SHARE_BLOCKS] = {7, 2, 5, 0};
	uint32_t slots[SHARE_BLOCKS], ids[SHARE_BLOCKS] = {3, 0, 5, 1};
	uint8_t *segs[SHARE_BLOCKS], *pages, *host;
	struct gpu_ipc h;
	gpu_pool *pool;
	char arg[64];

	assert_int_equal(gpu_pool_new(e->d, 16 * SHARE_SEG, SHARE_SEG, &pool), 0);
	assert_int_equal(gpu_pool_get(pool, SHARE_BLOCKS, slots), 0);
	assert_int_equal(gpu_pool_export(pool, &h), 0);
	snprintf(arg, sizeof(arg), "%u,%u,%u,%u", slots[0], slots[1], slots[2], slots[3]);
	assert_int_equal(run_child("prefill", &h, arg), 0);

	pages = dev_alloc(e, 2 * pages_bytes);
	host = malloc(2 * pages_bytes);
	assert_int_equal(ops->memset(e->d, pages, 0, 2 * pages_bytes), 0);
	for (int i = 0; i < SHARE_BLOCKS; i++)
		segs[i] = gpu_pool_block(pool, slots[i]);
	struct gpu_kv_xfer x = {
		.k = pages,
		.v = pages + pages_bytes,
		.block_stride = part,
		.token_stride = SHARE_ROW,
		.row_bytes = SHARE_ROW,
		.tokens = SHARE_TOKENS,
		.nblocks = SHARE_BLOCKS,
		.block_ids = ids,
		.segs = segs,
		.gather = false,
	};
	assert_int_equal(ops->kv_map(e->s, &x), 0);
	from_dev(e, host, pages, 2 * pages_bytes);
	for (int p = 0; p < 2; p++)
		for (uint32_t b = 0; b < 6; b++) {
			int from = -1;

			for (int i = 0; i < SHARE_BLOCKS; i++)
				if (ids[i] == b)
					from = i;
			for (uint64_t i = 0; i < part; i++) {
				uint8_t want = from < 0 ? 0 : share_byte(prefill_ids[from], p, i);

				if (host[p * pages_bytes + b * part + i] != want)
					fail_msg("part %d engine block %u byte %" PRIu64
						 ": %u, want %u",
						 p, b, i, host[p * pages_bytes + b * part + i],
						 want);
			}
		}
	free(host);
	ops->mem_free(e->d, pages);
	gpu_pool_put(pool, SHARE_BLOCKS, slots);
	gpu_pool_free(pool);
}

int main(int argc, char **argv)
{
	const char *impl = getenv("KVFS_GPU_IMPL");
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_cuda_without_driver),
		cmocka_unit_test(test_kv_check),
		cmocka_unit_test_setup_teardown(test_pool, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copies, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_sides, setup, teardown),
		cmocka_unit_test_setup_teardown(test_layer_events, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_fault, setup, teardown),
		cmocka_unit_test_setup_teardown(test_kv_layouts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ipc_handles, setup, teardown),
		cmocka_unit_test_setup_teardown(test_two_processes_share_blocks, setup, teardown),
	};

	static char exe[4096];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	if (n <= 0)
		return 1;
	exe[n] = '\0';
	self_path = exe;
	standin = !impl || strcmp(impl, "cuda") != 0;
	ops = standin ? gpu_shm() : gpu_cuda();
	if (!ops) {
		fprintf(stderr, "KVFS_GPU_IMPL=cuda: this build has no CUDA support\n");
		return 77;
	}
	if (argc > 1 && strcmp(argv[1], "child") == 0)
		return child_main(argc, argv);
	return cmocka_run_group_tests_name(standin ? "gpu (stand-in device)" : "gpu (CUDA)", tests,
					   NULL, NULL);
}
