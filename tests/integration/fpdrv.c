/*
 * tests/integration/fpdrv.c — a libkvfs client for test_fastpath.py.
 *
 *   fpdrv save DIR PATH SEED N          save N blocks of a sequence (PATH: fast|posix)
 *   fpdrv load DIR PATH SEED N          match and load them; check every byte; print JSON
 *   fpdrv hold DIR SEED N               match N blocks on the fast path, print "held",
 *                                       wait for a line on stdin, then load and check
 *   fpdrv attach DIR SEED N ROUNDS      load every round, reading a line between rounds
 *   fpdrv abuse MOUNT NSREL             raw ring requests that must be refused
 *   fpdrv devload DIR SEED N            load N blocks into device pages on the tests'
 *                                       stand-in GPU (gpu/gpu.h), checking each layer as
 *                                       soon as kvfs_load_wait() says it is in; print JSON
 *   fpdrv devsave DIR SEED N            save N blocks from device pages on the stand-in
 *                                       GPU (kvfs_save_ex); print JSON
 *   fpdrv devdie DIR SEED N             register device pages, start a load into them
 *                                       and exit mid-transfer
 *   fpdrv devreg MOUNT DIR CASE         register device memory that must be refused
 *                                       (CASE: garbage, foreign, kind, stale, unsealed,
 *                                       other, good); print {"rc": -errno}
 *
 * Block contents are a function of (seed, block, layer, K/V, element), so any
 * process can check what another saved. Exit status 0 means every check held.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/ring.h"
#include "gpu/gpu.h"
#include "kvfs/kvfs.h"

#define LAYERS 4
#define HEADS  2
#define DIM    32
#define TOKENS 16

static size_t row_bytes(void)
{
	return HEADS * DIM * sizeof(float);
}

static size_t blk_bytes(void)
{
	return row_bytes() * TOKENS;
}

static int fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "fpdrv: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	return 1;
}

static float value(unsigned seed, unsigned b, unsigned l, unsigned kv, size_t i)
{
	uint32_t x = seed * 2654435761u ^ b * 40503u ^ l * 97u ^ kv * 13u ^ (uint32_t)i * 7919u;

	x ^= x >> 13;
	x *= 0x5bd1e995u;
	x ^= x >> 15;
	return (float)(x & 0xffffff) / 1024.0f;
}

struct pool {
	kvfs_ns *ns;
	float *k, *v;
	size_t nblocks;
	struct kvfs_kv_layer layers[LAYERS];
	struct kvfs_kv_pages pages;
};

static int open_ns(const char *dir, const char *path, kvfs_ns **ns)
{
	struct kvfs_ns_options o = {0};

	snprintf(o.layout.model_id, sizeof(o.layout.model_id), "fpdrv");
	o.layout.num_layers = LAYERS;
	o.layout.num_kv_heads = HEADS;
	o.layout.head_dim = DIM;
	o.layout.tokens_per_block = TOKENS;
	o.layout.dtype = KVFS_DTYPE_F32;
	o.layout.kind = KVFS_KIND_KV;
	o.dir = dir;
	o.seed = "0";
	o.save_queue = 1024;
	o.path = strcmp(path, "posix") == 0 ? KVFS_PATH_POSIX
		 : strcmp(path, "fast") == 0 ? KVFS_PATH_FAST
					      : KVFS_PATH_AUTO;
	return kvfs_ns_open(&o, ns);
}

static int pool_init(struct pool *p, kvfs_ns *ns, size_t nblocks)
{
	size_t per = blk_bytes() * nblocks;

	p->ns = ns;
	p->nblocks = nblocks;
	p->k = kvfs_alloc(ns, per * LAYERS);
	p->v = kvfs_alloc(ns, per * LAYERS);
	if (!p->k || !p->v)
		return -ENOMEM;
	for (int l = 0; l < LAYERS; l++) {
		p->layers[l].k = (char *)p->k + l * per;
		p->layers[l].v = (char *)p->v + l * per;
		p->layers[l].block_stride = blk_bytes();
		p->layers[l].token_stride = row_bytes();
	}
	p->pages.layers = p->layers;
	return 0;
}

static void tokens(unsigned seed, size_t n, uint32_t *t)
{
	for (size_t i = 0; i < n * TOKENS; i++)
		t[i] = seed * 1000003u + (uint32_t)i;
}

static void fill(struct pool *p, unsigned seed, size_t n)
{
	for (unsigned l = 0; l < LAYERS; l++)
		for (size_t b = 0; b < n; b++)
			for (size_t i = 0; i < blk_bytes() / sizeof(float); i++) {
				((float *)p->layers[l].k)[b * blk_bytes() / 4 + i] = value(seed, (unsigned)b, l, 0, i);
				((float *)p->layers[l].v)[b * blk_bytes() / 4 + i] = value(seed, (unsigned)b, l, 1, i);
			}
}

/* Layer @l of blocks [0, n) of engine block ids base + b: how many blocks are wrong. */
static size_t check_layer(struct pool *p, unsigned seed, size_t n, size_t base, unsigned l)
{
	size_t bad = 0;

	for (size_t b = 0; b < n; b++)
		for (size_t i = 0; i < blk_bytes() / sizeof(float); i++)
			if (((float *)p->layers[l].k)[(base + b) * blk_bytes() / 4 + i] !=
				    value(seed, (unsigned)b, l, 0, i) ||
			    ((float *)p->layers[l].v)[(base + b) * blk_bytes() / 4 + i] !=
				    value(seed, (unsigned)b, l, 1, i)) {
				bad++;
				break;
			}
	return bad;
}

/* Blocks [0, n) of engine block ids base + b hold sequence block b? */
static size_t check(struct pool *p, unsigned seed, size_t n, size_t base)
{
	size_t bad = 0;

	for (unsigned l = 0; l < LAYERS; l++)
		bad += check_layer(p, seed, n, base, l);
	return bad;
}

static int cmd_save(const char *dir, const char *path, unsigned seed, size_t n)
{
	struct kvfs_ns_stats st;
	struct pool p;
	kvfs_ns *ns;
	uint32_t *t = malloc(sizeof(uint32_t) * n * TOKENS), *ids = malloc(sizeof(uint32_t) * n);
	long q;
	int rc = open_ns(dir, path, &ns);

	if (rc)
		return fail("open %s: %s", dir, strerror(-rc));
	if (pool_init(&p, ns, n))
		return fail("alloc");
	fill(&p, seed, n);
	tokens(seed, n, t);
	for (size_t i = 0; i < n; i++)
		ids[i] = (uint32_t)i;
	q = kvfs_save(ns, kvfs_ns_root(ns), 0, t, n, NULL, &p.pages, ids);
	kvfs_save_flush(ns);
	kvfs_ns_get_stats(ns, &st);
	printf("{\"queued\": %ld, \"written\": %llu, \"present\": %llu, \"errors\": %llu, "
	       "\"dropped\": %llu, \"fast\": %d}\n",
	       q, (unsigned long long)st.saves_written, (unsigned long long)st.saves_present,
	       (unsigned long long)st.save_errors, (unsigned long long)st.saves_dropped,
	       kvfs_ns_is_fast(ns));
	kvfs_ns_close(ns);
	free(t);
	free(ids);
	return st.save_errors ? 1 : 0;
}

/* Match, load into the second half of the pool, check. @return blocks matched or -errno. */
static long match_load(struct pool *p, unsigned seed, size_t n, size_t *bad, int *err)
{
	uint32_t *t = malloc(sizeof(uint32_t) * n * TOKENS), *ids = malloc(sizeof(uint32_t) * n);
	kvfs_key *keys = malloc(sizeof(kvfs_key) * n);
	kvfs_match *m;
	kvfs_load *ld;
	long got;

	tokens(seed, n, t);
	kvfs_ns_keys(p->ns, t, n * TOKENS, NULL, keys, n);
	got = kvfs_match_prefix(p->ns, keys, n, &m);
	*err = 0;
	*bad = 0;
	if (got > 0) {
		for (long i = 0; i < got; i++)
			ids[i] = (uint32_t)(n + (size_t)i);
		*err = kvfs_load_start(m, 0, (size_t)got, &p->pages, ids, &ld);
		if (!*err) {
			for (unsigned l = 0; l < LAYERS && !*err; l++)
				*err = kvfs_load_wait(ld, l);
			*err = kvfs_load_end(ld);
		}
		if (!*err)
			*bad = check(p, seed, (size_t)got, n);
	}
	kvfs_match_release(m);
	free(t);
	free(ids);
	free(keys);
	return got;
}

static int cmd_load(const char *dir, const char *path, unsigned seed, size_t n)
{
	struct pool p;
	kvfs_ns *ns;
	size_t bad;
	long got;
	int err, rc = open_ns(dir, path, &ns);

	if (rc)
		return fail("open %s: %s", dir, strerror(-rc));
	if (pool_init(&p, ns, 2 * n))
		return fail("alloc");
	got = match_load(&p, seed, n, &bad, &err);
	printf("{\"matched\": %ld, \"load_error\": %d, \"bad_blocks\": %zu, \"fast\": %d}\n", got,
	       err, bad, kvfs_ns_is_fast(ns));
	kvfs_ns_close(ns);
	return got < 0 || err || bad ? 1 : 0;
}

static int cmd_hold(const char *dir, unsigned seed, size_t n)
{
	uint32_t *t = malloc(sizeof(uint32_t) * n * TOKENS), *ids = malloc(sizeof(uint32_t) * n);
	kvfs_key *keys = malloc(sizeof(kvfs_key) * n);
	char line[64];
	struct pool p;
	kvfs_match *m;
	kvfs_load *ld;
	kvfs_ns *ns;
	long got;
	size_t bad = 0;
	int rc = open_ns(dir, "fast", &ns);

	if (rc)
		return fail("open %s: %s", dir, strerror(-rc));
	if (pool_init(&p, ns, 2 * n))
		return fail("alloc");
	tokens(seed, n, t);
	kvfs_ns_keys(ns, t, n * TOKENS, NULL, keys, n);
	got = kvfs_match_prefix(ns, keys, n, &m);
	printf("held %ld\n", got);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return fail("stdin closed");
	for (long i = 0; i < got; i++)
		ids[i] = (uint32_t)(n + (size_t)i);
	rc = kvfs_load_start(m, 0, (size_t)got, &p.pages, ids, &ld);
	if (!rc)
		rc = kvfs_load_end(ld);
	if (!rc)
		bad = check(&p, seed, (size_t)got, n);
	kvfs_match_release(m);
	printf("{\"matched\": %ld, \"load_error\": %d, \"bad_blocks\": %zu}\n", got, rc, bad);
	kvfs_ns_close(ns);
	free(t);
	free(ids);
	free(keys);
	return rc || bad || got != (long)n ? 1 : 0;
}

/* Load every round; between rounds the test may restart the daemon. */
static int cmd_attach(const char *dir, unsigned seed, size_t n, int rounds)
{
	struct kvfs_ns_stats st;
	struct pool p;
	kvfs_ns *ns;
	char line[64];
	int rc = open_ns(dir, "auto", &ns), wrong = 0;

	if (rc)
		return fail("open %s: %s", dir, strerror(-rc));
	if (pool_init(&p, ns, 2 * n))
		return fail("alloc");
	for (int r = 0; r < rounds; r++) {
		size_t bad;
		int err;
		long got = match_load(&p, seed, n, &bad, &err);

		/* a miss is fine after a restart; wrong bytes never are */
		wrong += bad != 0;
		printf("{\"round\": %d, \"matched\": %ld, \"load_error\": %d, \"bad_blocks\": %zu, "
		       "\"fast\": %d}\n",
		       r, got, err, bad, kvfs_ns_is_fast(ns));
		fflush(stdout);
		if (r + 1 < rounds && !fgets(line, sizeof(line), stdin))
			break;
	}
	kvfs_ns_get_stats(ns, &st);
	printf("{\"reconnects\": %llu}\n", (unsigned long long)st.reconnects);
	kvfs_ns_close(ns);
	return wrong ? 1 : 0;
}

/* --- raw ring requests ----------------------------------------------------------------- */

struct raw {
	uint8_t *mem;
	struct kvfs_ring_hdr *h;
	uint32_t tail, head;
	char mnt[512];
	int fd;
};

static int raw_register(struct raw *r, const char *kind, uint32_t id, int fd)
{
	char link[1024], target[64];

	snprintf(link, sizeof(link), "%s/.kvfs/iovs/%s.%d.%u", r->mnt, kind, (int)getpid(), id);
	snprintf(target, sizeof(target), "/proc/self/fd/%d", fd);
	return symlink(target, link) ? -errno : 0;
}

/* A memfd of @bytes, sealed against resizing if @seal (the daemon wants that). */
static int raw_memfd(const char *name, size_t bytes, int seal)
{
	int fd = memfd_create(name, MFD_ALLOW_SEALING);

	if (fd < 0 || ftruncate(fd, (off_t)bytes) ||
	    (seal && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)))
		return -1;
	return fd;
}

static int raw_open(struct raw *r, const char *mnt)
{
	size_t bytes = 1 << 20;

	snprintf(r->mnt, sizeof(r->mnt), "%s", mnt);
	r->fd = raw_memfd("raw", bytes, 1);
	if (r->fd < 0)
		return -errno;
	r->mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
	r->h = (struct kvfs_ring_hdr *)r->mem;
	r->h->magic = KVFS_RING_MAGIC;
	r->h->version = KVFS_RING_VERSION;
	r->h->sq_entries = r->h->cq_entries = 64;
	r->h->sq_off = 4096;
	r->h->cq_off = 4096 + 64 * sizeof(struct kvfs_ring_sqe);
	r->h->data_off = 65536;
	r->h->data_bytes = bytes - 65536;
	return raw_register(r, "ring", 900, r->fd);
}

static int64_t raw_call(struct raw *r, struct kvfs_ring_sqe *e, uint64_t *aux)
{
	struct kvfs_ring_cqe *cq = kvfs_ring_cq(r->mem);
	struct timespec ts = {0, 10 * 1000000L};

	e->user_data = r->tail;
	kvfs_ring_sq(r->mem)[r->tail & 63] = *e;
	atomic_store(&r->h->sq_tail, ++r->tail);
	syscall(SYS_futex, &r->h->server_sleeping, FUTEX_WAKE, 1, NULL, NULL, 0);
	for (int i = 0; i < 500 && atomic_load(&r->h->cq_tail) == r->head; i++)
		nanosleep(&ts, NULL);
	if (atomic_load(&r->h->cq_tail) == r->head)
		return -ETIMEDOUT;
	{
		struct kvfs_ring_cqe c = cq[r->head & 63];

		atomic_store(&r->h->cq_head, ++r->head);
		if (aux)
			*aux = c.aux;
		return c.res;
	}
}

static int expect(const char *what, int64_t got, int64_t want)
{
	if (got == want)
		return 0;
	fprintf(stderr, "fpdrv: %s: got %lld, want %lld\n", what, (long long)got, (long long)want);
	return 1;
}

static int cmd_abuse(const char *mnt, const char *nsrel)
{
	struct raw r = {0};
	struct kvfs_ring_sqe e;
	uint64_t match = 0;
	int bad = 0, rc = raw_open(&r, mnt), bfd;
	int64_t ns;
	uint8_t *data;

	if (rc)
		return fail("register ring: %s", strerror(-rc));
	data = r.mem + r.h->data_off;
	/* a buffer of 64 KiB, id 7 */
	bfd = raw_memfd("rawbuf", 65536, 1);
	if (bfd < 0 || raw_register(&r, "buf", 7, bfd))
		return fail("register buffer");
	/* a memfd that could shrink under the daemon's mapping is refused */
	{
		int ufd = raw_memfd("unsealed", 65536, 0);

		bad |= expect("register an unsealed buffer", raw_register(&r, "buf", 9, ufd),
			      -EBADFD);
		close(ufd);
	}
	/* bogus paths */
	memset(&e, 0, sizeof(e));
	e.op = KVFS_OP_OPEN_NS;
	strcpy((char *)data, "no/such/dir");
	e.args[0] = 0;
	e.args[1] = strlen("no/such/dir");
	bad |= expect("open missing path", raw_call(&r, &e, NULL), -ENOENT);
	strcpy((char *)data, "../etc");
	e.args[1] = 6;
	bad |= expect("open ..", raw_call(&r, &e, NULL), -EINVAL);
	strcpy((char *)data, ".kvfs");
	e.args[1] = 5;
	bad |= expect("open .kvfs", raw_call(&r, &e, NULL), -EINVAL);
	e.args[0] = r.h->data_bytes; /* payload outside the scratch area */
	bad |= expect("open, payload out of bounds", raw_call(&r, &e, NULL), -EINVAL);
	/* the real namespace */
	strcpy((char *)data, nsrel);
	e.args[0] = 0;
	e.args[1] = strlen(nsrel);
	ns = raw_call(&r, &e, NULL);
	bad |= expect("open namespace", ns < 0 ? ns : 0, 0);
	/* oversized and malformed batches */
	memset(&e, 0, sizeof(e));
	e.op = KVFS_OP_MATCH;
	e.ns = (uint32_t)ns;
	e.args[1] = KVFS_RING_MAX_MATCH + 1;
	bad |= expect("oversized match", raw_call(&r, &e, NULL), -E2BIG);
	e.args[1] = 1u << 30; /* keys beyond the scratch area */
	bad |= expect("match keys out of bounds", raw_call(&r, &e, NULL), -E2BIG);
	e.ns = 63;
	e.args[1] = 1;
	bad |= expect("match on an unopened namespace", raw_call(&r, &e, NULL), -EBADF);
	/* a real match of one key that is not there */
	e.ns = (uint32_t)ns;
	memset(data, 0xab, 32);
	bad |= expect("match absent key", raw_call(&r, &e, &match), 0);
	/* reads: bad match id, unregistered buffer, out-of-bounds destination */
	memset(&e, 0, sizeof(e));
	e.op = KVFS_OP_READ;
	e.args[0] = 999;
	e.args[2] = 1;
	bad |= expect("read, bad match", raw_call(&r, &e, NULL), -EBADF);
	e.args[0] = match;
	e.args[2] = KVFS_RING_MAX_DESCS + 1;
	bad |= expect("read, oversized", raw_call(&r, &e, NULL), -E2BIG);
	{
		struct kvfs_ring_desc d = {.block = 0, .buf = 7, .src_off = 0, .dst_off = 0, .len = 16};

		memcpy(data, &d, sizeof(d));
		e.args[1] = 0;
		e.args[2] = 1;
		bad |= expect("read a block the match does not hold", raw_call(&r, &e, NULL),
			      -EINVAL);
	}
	/* saves: unregistered buffer, out of bounds, garbage that is not a block */
	memset(&e, 0, sizeof(e));
	e.op = KVFS_OP_SAVE;
	e.ns = (uint32_t)ns;
	e.args[0] = 8; /* never registered */
	e.args[1] = 0;
	e.args[2] = 4096;
	e.args[3] = 0;
	memset(data, 0x11, 32);
	bad |= expect("save from an unregistered buffer", raw_call(&r, &e, NULL), -EBADF);
	e.args[0] = 7;
	e.args[1] = 65536 - 100;
	e.args[2] = 4096;
	bad |= expect("save out of bounds", raw_call(&r, &e, NULL), -EFAULT);
	{
		uint8_t *b = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, bfd, 0);

		memcpy(b, KVFS_BLOCK_MAGIC, KVFS_BLOCK_MAGIC_BYTES); /* a block that is not valid */
		e.args[1] = 0;
		bad |= expect("save an invalid native block", raw_call(&r, &e, NULL), -EBADMSG);
		munmap(b, 65536);
	}
	memset(&e, 0, sizeof(e));
	e.op = 200;
	bad |= expect("unknown op", raw_call(&r, &e, NULL), -EOPNOTSUPP);
	/* and the ring still works */
	memset(&e, 0, sizeof(e));
	e.op = KVFS_OP_NOP;
	bad |= expect("nop after all that", raw_call(&r, &e, NULL), 0);
	printf("{\"abuse_failures\": %d}\n", bad);
	return bad;
}

/* --- device memory (the stand-in GPU) ------------------------------------------------------- */

/*
 * The engine's pages start DEV_SKIP bytes into its allocation (as a tensor
 * inside a PyTorch allocator segment does): registered with that offset.
 */
#define DEV_SKIP 4096

/* Device memory for K and V of @nblocks engine blocks of every layer, as one allocation. */
static int dev_pool(gpu_dev *d, size_t nblocks, uint8_t **mem, size_t *bytes)
{
	*bytes = DEV_SKIP + 2 * LAYERS * nblocks * blk_bytes();
	return d->ops->mem_alloc(d, *bytes, (void **)mem);
}

static int dev_describe(gpu_dev *d, void *mem, size_t bytes, struct kvfs_dev_buffer *b)
{
	struct gpu_ipc h;
	int rc = d->ops->ipc_export(d, mem, bytes, &h);

	if (rc)
		return rc;
	*b = (struct kvfs_dev_buffer){.base = (uint8_t *)mem + DEV_SKIP,
				      .offset = DEV_SKIP,
				      .bytes = bytes - DEV_SKIP,
				      .device = d->index,
				      .kind = KVFS_DEV_STANDIN};
	memcpy(b->uuid, h.uuid, sizeof(b->uuid));
	memcpy(b->ipc_handle, h.handle, sizeof(b->ipc_handle));
	return 0;
}

/* Describe device memory @mem as K and V pages of every layer, @per bytes each. */
static void dev_pages(uint8_t *mem, size_t per, struct kvfs_kv_layer_ex *lx, struct pool *p)
{
	mem += DEV_SKIP;
	/* K of layer l at l * per, V after all K */
	for (int l = 0; l < LAYERS; l++) {
		lx[l] = (struct kvfs_kv_layer_ex){.k = mem + l * per, .v = mem + (LAYERS + l) * per,
						  .block_stride = blk_bytes(),
						  .token_stride = row_bytes(), .device = 0};
		p->layers[l] = (struct kvfs_kv_layer){.k = lx[l].k, .v = lx[l].v,
						      .block_stride = blk_bytes()};
	}
}

/* Unregister and free the device memory, close the namespace and the device. */
static void dev_done(kvfs_ns *ns, gpu_dev *d, uint8_t *mem)
{
	kvfs_dev_unregister(ns, mem);
	kvfs_ns_close(ns);
	d->ops->mem_free(d, mem);
	gpu_close(d);
}

/* Save N blocks from device pages (the stand-in's memory is host memory: filled directly). */
static int cmd_devsave(const char *dir, unsigned seed, size_t n)
{
	uint32_t *t = malloc(sizeof(uint32_t) * n * TOKENS), *ids = malloc(sizeof(uint32_t) * n);
	struct kvfs_kv_layer_ex lx[LAYERS];
	struct kvfs_kv_pages_ex pages = {.layers = lx};
	struct kvfs_dev_buffer db;
	struct kvfs_ns_stats st;
	struct pool p = {0};
	size_t bytes;
	uint8_t *mem;
	gpu_dev *d;
	kvfs_ns *ns;
	long q;
	int reg;

	if (open_ns(dir, "fast", &ns))
		return fail("open %s", dir);
	if (gpu_open(gpu_shm(), 0, &d) || dev_pool(d, n, &mem, &bytes) ||
	    dev_describe(d, mem, bytes, &db))
		return fail("stand-in device: %s", gpu_error());
	dev_pages(mem, blk_bytes() * n, lx, &p);
	fill(&p, seed, n);
	reg = kvfs_dev_register(ns, &db);
	tokens(seed, n, t);
	for (size_t i = 0; i < n; i++)
		ids[i] = (uint32_t)i;
	q = kvfs_save_ex(ns, kvfs_ns_root(ns), 0, t, n, NULL, &pages, ids);
	kvfs_ns_get_stats(ns, &st);
	printf("{\"reg\": %d, \"saved\": %ld, \"written\": %llu, \"present\": %llu, "
	       "\"errors\": %llu}\n",
	       reg, q, (unsigned long long)st.saves_written, (unsigned long long)st.saves_present,
	       (unsigned long long)st.save_errors);
	dev_done(ns, d, mem);
	free(t);
	free(ids);
	return q == (long)n && !st.save_errors ? 0 : 1;
}

static int cmd_devload(const char *dir, unsigned seed, size_t n)
{
	uint32_t *t = malloc(sizeof(uint32_t) * n * TOKENS), *ids = malloc(sizeof(uint32_t) * n);
	kvfs_key *keys = malloc(sizeof(kvfs_key) * n);
	struct kvfs_kv_layer_ex lx[LAYERS];
	struct kvfs_kv_pages_ex pages = {.layers = lx};
	struct kvfs_dev_buffer db;
	struct pool p = {0};
	size_t per = blk_bytes() * 2 * n, bytes, bad = 0, early = 0;
	int reg, err = 0;
	kvfs_match *m = NULL;
	kvfs_load *ld;
	uint8_t *mem;
	gpu_dev *d;
	kvfs_ns *ns;
	long got = 0;

	if (open_ns(dir, "fast", &ns))
		return fail("open %s", dir);
	if (gpu_open(gpu_shm(), 0, &d) || dev_pool(d, 2 * n, &mem, &bytes) ||
	    dev_describe(d, mem, bytes, &db))
		return fail("stand-in device: %s", gpu_error());
	dev_pages(mem, per, lx, &p); /* engine blocks n..2n-1 receive */
	reg = kvfs_dev_register(ns, &db);
	tokens(seed, n, t);
	kvfs_ns_keys(ns, t, n * TOKENS, NULL, keys, n);
	if (!reg && (got = kvfs_match_prefix(ns, keys, n, &m)) > 0) {
		for (long i = 0; i < got; i++)
			ids[i] = (uint32_t)(n + (size_t)i);
		err = kvfs_load_start_ex(m, 0, (size_t)got, &pages, ids, &ld);
		if (!err) {
			/* the stand-in's device memory is host memory: check each layer as it lands
			 */
			for (unsigned l = 0; l < LAYERS && !err; l++) {
				err = kvfs_load_wait(ld, l);
				if (!err)
					early += check_layer(&p, seed, (size_t)got, n, l);
			}
			err = kvfs_load_end(ld);
		}
		if (!err)
			bad = check(&p, seed, (size_t)got, n);
	}
	kvfs_match_release(m);
	printf("{\"reg\": %d, \"matched\": %ld, \"err\": %d, \"bad_blocks\": %zu, "
	       "\"bad_early\": %zu, \"fast\": %d}\n",
	       reg, got, err, bad, early, kvfs_ns_is_fast(ns));
	dev_done(ns, d, mem);
	free(t);
	free(ids);
	free(keys);
	return reg || err || bad || early ? 1 : 0;
}

/* Register device pages, match, start loading into them, and die at once. */
static int cmd_devdie(const char *dir, unsigned seed, size_t n)
{
	uint32_t *t = malloc(sizeof(uint32_t) * n * TOKENS), *ids = malloc(sizeof(uint32_t) * n);
	kvfs_key *keys = malloc(sizeof(kvfs_key) * n);
	struct kvfs_kv_layer_ex lx[LAYERS];
	struct kvfs_kv_pages_ex pages = {.layers = lx};
	struct kvfs_dev_buffer db;
	struct pool p = {0};
	size_t bytes;
	kvfs_match *m;
	kvfs_load *ld;
	uint8_t *mem;
	gpu_dev *d;
	kvfs_ns *ns;
	long got;

	if (open_ns(dir, "fast", &ns))
		return fail("open %s", dir);
	if (gpu_open(gpu_shm(), 0, &d) || dev_pool(d, n, &mem, &bytes) ||
	    dev_describe(d, mem, bytes, &db) || kvfs_dev_register(ns, &db))
		return fail("stand-in device: %s", gpu_error());
	dev_pages(mem, blk_bytes() * n, lx, &p);
	tokens(seed, n, t);
	kvfs_ns_keys(ns, t, n * TOKENS, NULL, keys, n);
	got = kvfs_match_prefix(ns, keys, n, &m);
	for (long i = 0; i < got; i++)
		ids[i] = (uint32_t)i;
	if (got <= 0 || kvfs_load_start_ex(m, 0, (size_t)got, &pages, ids, &ld))
		return fail("nothing to load");
	printf("loading %ld\n", got);
	fflush(stdout);
	_exit(0); /* mid-transfer, without unregistering anything */
}

static int cmd_devreg(const char *mnt, const char *dir, const char *what)
{
	struct kvfs_dev_buffer db;
	uint8_t *mem;
	size_t bytes;
	gpu_dev *d;
	kvfs_ns *ns;
	int rc;

	gpu_shm_configure(2, 1ull << 30);
	if (open_ns(dir, "fast", &ns))
		return fail("open %s", dir);
	if (gpu_open(gpu_shm(), strcmp(what, "foreign") == 0 ? 1 : 0, &d) ||
	    dev_pool(d, 2, &mem, &bytes) || dev_describe(d, mem, bytes, &db))
		return fail("stand-in device: %s", gpu_error());
	if (strcmp(what, "garbage") == 0) {
		memset(db.ipc_handle, 0xa5, sizeof(db.ipc_handle));
	} else if (strcmp(what, "kind") == 0) {
		db.kind = KVFS_DEV_CUDA;
	} else if (strcmp(what, "stale") == 0) {
		d->ops->mem_free(d, mem);
		mem = NULL;
	} else if (strcmp(what, "unsealed") == 0) {
		/* the record as the library writes it, but not sealed */
		struct kvfs_ring_devreg rec = {.magic = KVFS_DEVREG_MAGIC,
					       .version = KVFS_RING_VERSION,
					       .kind = KVFS_DEV_STANDIN,
					       .bytes = bytes,
					       .base = (uintptr_t)mem};
		struct raw r = {0};
		int fd = memfd_create("rec", MFD_ALLOW_SEALING);

		memcpy(rec.handle, db.ipc_handle, sizeof(rec.handle));
		snprintf(r.mnt, sizeof(r.mnt), "%s", mnt);
		if (fd < 0 || pwrite(fd, &rec, sizeof(rec), 0) != (ssize_t)sizeof(rec))
			return fail("memfd");
		rc = raw_register(&r, "dev", 901, fd);
		goto out;
	} else if (strcmp(what, "other") == 0) {
		/* memory another process exported: a child that waits for us */
		int to_parent[2], to_child[2];
		struct gpu_ipc h;
		char c;

		if (pipe(to_parent) || pipe(to_child))
			return fail("pipe");
		if (fork() == 0) {
			gpu_dev *cd;
			uint8_t *cm;
			size_t cb;

			close(to_child[1]);
			close(to_parent[0]);
			if (gpu_open(gpu_shm(), 0, &cd) || dev_pool(cd, 2, &cm, &cb) ||
			    cd->ops->ipc_export(cd, cm, cb, &h))
				_exit(1);
			if (write(to_parent[1], &h, sizeof(h)) != (ssize_t)sizeof(h))
				_exit(1);
			(void)!read(to_child[0], &c, 1);
			_exit(0);
		}
		if (read(to_parent[0], &h, sizeof(h)) != (ssize_t)sizeof(h))
			return fail("child");
		memcpy(db.ipc_handle, h.handle, sizeof(db.ipc_handle));
		rc = kvfs_dev_register(ns, &db);
		close(to_child[1]);
		wait(NULL);
		goto out;
	} else if (strcmp(what, "good") != 0 && strcmp(what, "foreign") != 0) {
		return fail("unknown case %s", what);
	}
	rc = kvfs_dev_register(ns, &db);
out:
	printf("{\"rc\": %d}\n", rc);
	kvfs_ns_close(ns);
	if (mem)
		d->ops->mem_free(d, mem);
	gpu_close(d);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 6 && strcmp(argv[1], "save") == 0)
		return cmd_save(argv[2], argv[3], (unsigned)atoi(argv[4]), (size_t)atoi(argv[5]));
	if (argc == 6 && strcmp(argv[1], "load") == 0)
		return cmd_load(argv[2], argv[3], (unsigned)atoi(argv[4]), (size_t)atoi(argv[5]));
	if (argc == 5 && strcmp(argv[1], "hold") == 0)
		return cmd_hold(argv[2], (unsigned)atoi(argv[3]), (size_t)atoi(argv[4]));
	if (argc == 6 && strcmp(argv[1], "attach") == 0)
		return cmd_attach(argv[2], (unsigned)atoi(argv[3]), (size_t)atoi(argv[4]),
				  atoi(argv[5]));
	if (argc == 4 && strcmp(argv[1], "abuse") == 0)
		return cmd_abuse(argv[2], argv[3]);
	if (argc == 5 && strcmp(argv[1], "devdie") == 0)
		return cmd_devdie(argv[2], (unsigned)atoi(argv[3]), (size_t)atoi(argv[4]));
	if (argc == 5 && strcmp(argv[1], "devsave") == 0)
		return cmd_devsave(argv[2], (unsigned)atoi(argv[3]), (size_t)atoi(argv[4]));
	if (argc == 5 && strcmp(argv[1], "devload") == 0)
		return cmd_devload(argv[2], (unsigned)atoi(argv[3]), (size_t)atoi(argv[4]));
	if (argc == 5 && strcmp(argv[1], "devreg") == 0)
		return cmd_devreg(argv[2], argv[3], argv[4]);
	fprintf(stderr, "usage: see the comment at the top of tests/integration/fpdrv.c\n");
	return 2;
}
