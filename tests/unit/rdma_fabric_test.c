/*
 * tests/unit/rdma_fabric_test.c — the remote tier's transport and protocol
 * between real endpoints: libfabric's tcp provider (through ofi_rxm) on
 * 127.0.0.1, two or three `remote` instances in this process that know each
 * other as fixed peers (no Redis here; rdma_cluster_test covers the index),
 * and rdma_peerd in a child process where a peer must die or hang.
 *
 * Covered: configuration errors and provider choice; both remote addressing
 * branches (virtual addresses, offsets); fetches byte-exact (one run,
 * thousands of scattered runs that need RUNS continuations, into the
 * registered arena and into plain memory split across odd iovecs, empty
 * files), missing files and bytes a daemon describes outside its arena;
 * concurrent fetches; offload with write immediates (the target commits only
 * when every immediate arrived and the checksum matches), reads of the lent
 * copy, re-offload, replace, free, no room, a wrong checksum; a wrong token
 * refused on both sides; malformed and unauthenticated control messages
 * dropped and counted without reaching the daemon; wire corruption through
 * the KVFS_FAULT_NET_READ seam caught by the checksum; a peer SIGKILLed, and
 * one stopped, in the middle of a transfer: the read fails within the
 * timeout instead of hanging.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>

#include "core/fault.h"
#include "rdma/rdma_i.h"
#include "tests/unit/rdma_testlib.h"

#define MiB (1024ull * 1024)

static struct tl_daemon dA, dB;
static remote *A, *B;

static int group_setup(void **state)
{
	uint32_t len;
	const uint8_t *addr;

	(void)state;
	signal(SIGPIPE, SIG_IGN);
	if (tl_daemon_init(&dA, 16 * MiB) || tl_daemon_init(&dB, 96 * MiB))
		return -1;
	A = tl_open("nodeA", &dA, 0, NULL, NULL, NULL, 2000, 0);
	B = tl_open("nodeB", &dB, 32 * MiB, NULL, NULL, NULL, 2000, 0);
	if (!A || !B)
		return -1;
	addr = rdma_self_addr(B, &len);
	if (rdma_peer_add_fixed(A, "nodeB", addr, len, 32 * MiB, 32 * MiB))
		return -1;
	addr = rdma_self_addr(A, &len);
	return rdma_peer_add_fixed(B, "nodeA", addr, len, 0, 0);
}

static int group_teardown(void **state)
{
	(void)state;
	remote_close(A);
	remote_close(B);
	tl_daemon_fini(&dA);
	tl_daemon_fini(&dB);
	return 0;
}

/* --- sinks ---------------------------------------------------------------- */

struct sink {
	uint8_t *buf;
	size_t cap;
	uint64_t size;
	int split; /* 0: one iovec; else three odd pieces */
	int prepared;
	void (*hook)(void *arg);
	void *arg;
};

static int sink_prepare(void *ctx, uint64_t size, uint64_t checksum, struct iovec *iov, int max)
{
	struct sink *s = ctx;

	(void)checksum;
	s->size = size;
	s->prepared++;
	if (s->hook)
		s->hook(s->arg);
	if (size > s->cap)
		return -EFBIG;
	if (size == 0)
		return 0;
	if (!s->split || size < 3000 || max < 3) {
		iov[0] = (struct iovec){s->buf, size};
		return 1;
	}
	iov[0] = (struct iovec){s->buf, 1001};
	iov[1] = (struct iovec){s->buf + 1001, size / 2 - 1001};
	iov[2] = (struct iovec){s->buf + size / 2, size - size / 2};
	return 3;
}

static int fetch(remote *r, const char *peer, const char *path, struct sink *s,
		 struct remote_fetch_info *info)
{
	struct remote_sink rs = {sink_prepare, s};
	struct rdma_peer *p = rdma_peer_find(r, peer);

	assert_non_null(p);
	atomic_store(&p->down_until, 0); /* tests retry peers at once */
	return rdma_fetch_from(r, p, path, &rs, info, NULL);
}

static void assert_same(const struct tl_file *f, const uint8_t *got)
{
	uint8_t *want = tl_gather(f);

	assert_non_null(want);
	assert_memory_equal(want, got, f->size);
	free(want);
}

static void wait_releases(struct tl_daemon *d)
{
	for (int i = 0; i < 200; i++) {
		bool done;

		pthread_mutex_lock(&d->lock);
		done = d->releases == d->leases;
		pthread_mutex_unlock(&d->lock);
		if (done)
			return;
		tl_sleep_ms(5);
	}
	fail_msg("leases %d, releases %d", d->leases, d->releases);
}

static int lookups_of(struct tl_daemon *d)
{
	int n;

	pthread_mutex_lock(&d->lock);
	n = d->lookups;
	pthread_mutex_unlock(&d->lock);
	return n;
}

static struct remote_stats stats(remote *r)
{
	struct remote_stats s;

	remote_get_stats(r, &s);
	return s;
}

/* --- configuration and the two memory-registration branches --------------- */

static void test_open_config(void **state)
{
	struct remote_config cfg = {
		.node_id = "n1",
		.fabric = "tcp",
		.listen = "127.0.0.1:0",
		.token = TOKEN,
		.token_len = strlen(TOKEN),
	};
	char err[256];
	remote *r = NULL;
	int rc;

	(void)state;
#define BAD(field, value, want)                                                                    \
	do {                                                                                       \
		struct remote_config c2 = cfg;                                                     \
		c2.field = value;                                                                  \
		err[0] = '\0';                                                                     \
		assert_int_equal(remote_open(&c2, &r, err, sizeof(err)), want);                    \
		assert_null(r);                                                                    \
		assert_true(err[0] != '\0');                                                       \
	} while (0)
	BAD(node_id, "has space", -EINVAL);
	BAD(node_id, NULL, -EINVAL);
	BAD(fabric, "infiniband", -EINVAL);
	BAD(listen, "127.0.0.1", -EINVAL);
	BAD(listen, "127.0.0.1:99999", -EINVAL);
	BAD(cluster, "http://x", -EINVAL);
	BAD(cluster_name, "a:b", -EINVAL);
	BAD(token_len, 15, -EINVAL);
	BAD(token, NULL, -EINVAL);
	BAD(token_file, "/nonexistent/token", -ENOENT);
	BAD(lend_page, 5000, -EINVAL);
#undef BAD
	/* auto picks the best provider for the address and says which. */
	cfg.fabric = NULL;
	assert_int_equal(remote_open(&cfg, &r, err, sizeof(err)), 0);
	assert_true(strcmp(remote_provider(r), "tcp;ofi_rxm") == 0 ||
		    strcmp(remote_provider(r), "verbs;ofi_rxm") == 0 ||
		    strcmp(remote_provider(r), "efa") == 0);
	assert_string_equal(remote_node_id(r), "n1");
	remote_close(r);
	/* verbs and efa exist only on RDMA hardware: then they open, else
	 * they say so. */
	cfg.fabric = "verbs";
	rc = remote_open(&cfg, &r, err, sizeof(err));
	assert_true(rc == 0 || rc == -ENODEV);
	if (rc == 0)
		remote_close(r);
	else
		print_message("      verbs: %s\n", err);
	cfg.fabric = "efa";
	cfg.listen = NULL;
	rc = remote_open(&cfg, &r, err, sizeof(err));
	assert_true(rc == 0 || rc == -ENODEV);
	if (rc == 0)
		remote_close(r);
	/* A token from a file, trailing newline dropped: same token. */
	{
		char path[] = "/tmp/kvfs-token-XXXXXX";
		int fd = mkstemp(path);

		assert_true(fd >= 0);
		assert_int_equal(write(fd, TOKEN "\n", strlen(TOKEN) + 1),
				 (ssize_t)strlen(TOKEN) + 1);
		close(fd);
		cfg.fabric = "tcp";
		cfg.listen = "127.0.0.1:0";
		cfg.token = NULL;
		cfg.token_file = path;
		assert_int_equal(remote_open(&cfg, &r, err, sizeof(err)), 0);
		assert_int_equal(r->token_len, strlen(TOKEN));
		assert_memory_equal(r->token, TOKEN, strlen(TOKEN));
		remote_close(r);
		unlink(path);
	}
}

/* Remote addresses: virtual addresses (verbs, efa) or offsets in the region
 * (tcp). Only the second runs against a provider here, so both are pinned
 * on a fake region. */
static void test_mr_addressing(void **state)
{
	static uint8_t mem[8192 + 64];
	uint8_t *region = mem + 32; /* bytes on both sides to point at */
	struct rdma_mr m = {.mr = (struct fid_mr *)mem, .base = region, .len = 8192};
	struct rdma_fab virt = {.virt_addr = true}, off = {.virt_addr = false};

	(void)state;
	assert_int_equal(rdma_mr_raddr(&off, &m, region + 100), 100);
	assert_int_equal(rdma_mr_raddr(&virt, &m, region + 100),
			 (uint64_t)(uintptr_t)(region + 100));
	assert_ptr_equal(rdma_mr_local(&off, &m, 100, 50), region + 100);
	assert_ptr_equal(rdma_mr_local(&virt, &m, (uint64_t)(uintptr_t)(region + 100), 50),
			 region + 100);
	/* Out of the region either way. */
	assert_null(rdma_mr_local(&off, &m, 8190, 3));
	assert_null(rdma_mr_local(&off, &m, UINT64_MAX, 2));
	assert_null(rdma_mr_local(&virt, &m, (uint64_t)(uintptr_t)region - 1, 1));
	assert_null(rdma_mr_local(&virt, &m, (uint64_t)(uintptr_t)region + 8000, 193));
	assert_non_null(rdma_mr_local(&virt, &m, (uint64_t)(uintptr_t)region + 8000, 192));
	assert_true(rdma_mr_has(&m, region, 8192));
	assert_false(rdma_mr_has(&m, region + 1, 8192));
	assert_false(rdma_mr_has(&m, region - 1, 1));
	m.mr = NULL; /* not registered */
	assert_false(rdma_mr_has(&m, region, 1));
	/* This run's provider: what fi_getinfo returned decides. */
	assert_false(A->fab.virt_addr && strcmp(A->fab.prov, "tcp;ofi_rxm") == 0);
}

/* --- fetch ---------------------------------------------------------------- */

static void test_fetch_contiguous(void **state)
{
	struct tl_file *f = tl_add(&dB, "m/one.bin", 1 * MiB + 17, 1, 0, false);
	struct sink s = {.cap = 2 * MiB};
	struct remote_fetch_info info;
	struct remote_stats before = stats(B);

	(void)state;
	assert_non_null(f);
	s.buf = malloc(s.cap);
	assert_int_equal(fetch(A, "nodeB", "m/one.bin", &s, &info), 0);
	assert_int_equal(s.size, f->size);
	assert_same(f, s.buf);
	assert_string_equal(info.node, "nodeB");
	assert_int_equal(info.size, f->size);
	assert_int_equal(info.checksum, f->checksum);
	assert_int_equal(info.tier, REMOTE_TIER_DRAM);
	assert_int_equal(stats(B).served, before.served + 1);
	assert_int_equal(stats(B).served_bytes, before.served_bytes + f->size);
	wait_releases(&dB);
	free(s.buf);
}

/* 1500 scattered 4 KiB pages: three RUNS continuations, no run merges. */
static void test_fetch_scattered_runs(void **state)
{
	struct tl_file *f = tl_add(&dB, "m/scattered.bin", 1500 * 4096 - 5, 2, 4096, true);
	struct sink s = {.cap = 8 * MiB, .split = 1};

	(void)state;
	assert_non_null(f);
	assert_true(f->niov > RDMA_RUNS_PER_MSG * 2);
	s.buf = malloc(s.cap);
	assert_int_equal(fetch(A, "nodeB", "m/scattered.bin", &s, NULL), 0);
	assert_same(f, s.buf);
	wait_releases(&dB);
	free(s.buf);
}

/* Adjacent page iovecs merge into one run; the destination is A's arena. */
static void test_fetch_into_arena(void **state)
{
	struct tl_file *f = tl_add(&dB, "m/paged.bin", 3 * MiB, 3, 65536, false);
	struct sink s = {.buf = dA.arena + 4 * MiB, .cap = 4 * MiB, .split = 1};

	(void)state;
	assert_non_null(f);
	assert_int_equal(fetch(A, "nodeB", "m/paged.bin", &s, NULL), 0);
	assert_same(f, s.buf);
	wait_releases(&dB);
}

static void test_fetch_empty(void **state)
{
	struct tl_file *f = tl_add(&dB, "m/empty", 0, 4, 0, false);
	struct sink s = {.cap = 16};
	uint8_t b[16];

	(void)state;
	assert_non_null(f);
	s.buf = b;
	s.size = 99;
	assert_int_equal(fetch(A, "nodeB", "m/empty", &s, NULL), 0);
	assert_int_equal(s.size, 0);
	assert_int_equal(s.prepared, 1);
	wait_releases(&dB);
}

static void test_fetch_missing(void **state)
{
	struct sink s = {.cap = 16};
	uint8_t b[16];
	int before = dB.lookups;

	(void)state;
	s.buf = b;
	assert_int_equal(fetch(A, "nodeB", "m/nope", &s, NULL), -ENOENT);
	assert_int_equal(s.prepared, 0);
	assert_int_equal(dB.lookups, before + 1);
	/* A path the protocol cannot carry never leaves the node. */
	assert_int_equal(fetch(A, "nodeB", "../etc/passwd", &s, NULL), -EINVAL);
	assert_int_equal(fetch(A, "nodeB", "/abs", &s, NULL), -EINVAL);
	assert_int_equal(dB.lookups, before + 1);
}

/* A daemon that describes bytes outside its registered arena is refused
 * and its lease released at once. */
static void test_fetch_outside_arena(void **state)
{
	struct tl_file *f = tl_add(&dB, "m/outside", 4096, 5, 0, false);
	struct sink s = {.cap = 8192};
	uint8_t b[8192];
	int leases, releases;

	(void)state;
	assert_non_null(f);
	f->iov[0].iov_base = dB.outside_buf; /* like a hole on the zero page */
	s.buf = b;
	assert_int_equal(fetch(A, "nodeB", "m/outside", &s, NULL), -EIO);
	assert_int_equal(s.prepared, 0);
	pthread_mutex_lock(&dB.lock);
	leases = dB.leases;
	releases = dB.releases;
	pthread_mutex_unlock(&dB.lock);
	assert_int_equal(leases, releases);
}

struct conc {
	int id;
	int failures;
};

static void *conc_main(void *arg)
{
	struct conc *c = arg;
	char path[64];
	struct sink s = {.cap = 512 * 1024};

	s.buf = malloc(s.cap);
	for (int k = 0; k < 8; k++) {
		const struct tl_file *f = NULL;

		snprintf(path, sizeof(path), "c/%d-%d", c->id, k % 4);
		for (int i = 0; i < dB.nfiles; i++)
			if (strcmp(dB.files[i].path, path) == 0)
				f = &dB.files[i];
		if (!f || fetch(A, "nodeB", path, &s, NULL) != 0 || s.size != f->size) {
			c->failures++;
			continue;
		}
		uint8_t *want = tl_gather(f);

		if (memcmp(want, s.buf, f->size) != 0)
			c->failures++;
		free(want);
	}
	free(s.buf);
	return NULL;
}

static void test_concurrent_fetches(void **state)
{
	pthread_t t[4];
	struct conc c[4];
	char path[64];

	(void)state;
	for (int i = 0; i < 4; i++)
		for (int k = 0; k < 4; k++) {
			snprintf(path, sizeof(path), "c/%d-%d", i, k);
			assert_non_null(tl_add(&dB, path, 100000 + 4099 * (uint64_t)(i * 4 + k),
					       (uint64_t)(100 + i * 4 + k), k % 2 ? 8192 : 0,
					       false));
		}
	for (int i = 0; i < 4; i++) {
		c[i] = (struct conc){i, 0};
		pthread_create(&t[i], NULL, conc_main, &c[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(c[i].failures, 0);
	}
	wait_releases(&dB);
}

/* --- offload -------------------------------------------------------------- */

static void test_offload_roundtrip(void **state)
{
	uint64_t size = 3 * MiB + 1234;
	uint8_t *src = malloc(size);
	struct iovec iov[64];
	int n = 0;
	uint64_t at = 0, sum;
	struct sink s = {.cap = 4 * MiB};
	struct remote_fetch_info info;
	struct remote_stats b0 = stats(B), a0 = stats(A);
	struct rdma_peer *pb = rdma_peer_find(A, "nodeB");

	(void)state;
	tl_fill(src, size, 77);
	/* Many odd source pieces: more writes than lent runs, each with the
	 * (ticket, count) immediate; the target commits after the last one. */
	while (at < size) {
		uint64_t len = n < 63 ? 4096 * (uint64_t)(n % 5 + 1) + 3 : size - at;

		if (len > size - at)
			len = size - at;
		iov[n++] = (struct iovec){src + at, len};
		at += len;
	}
	sum = remote_checksum(iov, n);
	assert_int_equal(sum, remote_checksum(&(struct iovec){src, size}, 1));
	assert_int_equal(remote_offload(A, "off/a.bin", iov, n, sum), 0);
	assert_int_equal(stats(B).offloads_received, b0.offloads_received + 1);
	assert_true(stats(B).lend_used >= b0.lend_used + size);
	assert_int_equal(stats(A).offloads, a0.offloads + 1);
	assert_int_equal(stats(A).offload_bytes, a0.offload_bytes + size);

	/* The lent copy reads back like any file, tier "lent". */
	s.buf = malloc(s.cap);
	assert_int_equal(fetch(A, "nodeB", "off/a.bin", &s, &info), 0);
	assert_int_equal(s.size, size);
	assert_memory_equal(s.buf, src, size);
	assert_int_equal(info.tier, REMOTE_TIER_LENT);

	/* Offloading the same bytes again is a no-op success. */
	atomic_store(&pb->down_until, 0);
	assert_int_equal(rdma_offload_to(A, pb, "off/a.bin", iov, n, size, sum), 0);
	assert_int_equal(stats(B).offloads_received, b0.offloads_received + 1);

	/* Free drops it and gives the pages back (after the read lease ended). */
	assert_int_equal(rdma_free_at(A, pb, "off/a.bin"), 0);
	assert_int_equal(fetch(A, "nodeB", "off/a.bin", &s, NULL), -ENOENT);
	assert_int_equal(rdma_free_at(A, pb, "off/a.bin"), -ENOENT);
	for (int i = 0; i < 200 && stats(B).lend_used != b0.lend_used; i++)
		tl_sleep_ms(5);
	assert_int_equal(stats(B).lend_used, b0.lend_used);
	free(s.buf);
	free(src);
}

/* Replacing a lent copy with different bytes: the new one wins. */
static void test_offload_replace(void **state)
{
	uint8_t *v1 = malloc(200000), *v2 = malloc(300000);
	struct rdma_peer *pb = rdma_peer_find(A, "nodeB");
	struct sink s = {.cap = 400000};

	(void)state;
	tl_fill(v1, 200000, 1);
	tl_fill(v2, 300000, 2);
	atomic_store(&pb->down_until, 0);
	assert_int_equal(rdma_offload_to(A, pb, "off/r", &(struct iovec){v1, 200000}, 1, 200000,
					 remote_checksum(&(struct iovec){v1, 200000}, 1)),
			 0);
	assert_int_equal(rdma_offload_to(A, pb, "off/r", &(struct iovec){v2, 300000}, 1, 300000,
					 remote_checksum(&(struct iovec){v2, 300000}, 1)),
			 0);
	s.buf = malloc(s.cap);
	assert_int_equal(fetch(A, "nodeB", "off/r", &s, NULL), 0);
	assert_int_equal(s.size, 300000);
	assert_memory_equal(s.buf, v2, 300000);
	assert_int_equal(rdma_free_at(A, pb, "off/r"), 0);
	free(s.buf);
	free(v1);
	free(v2);
}

static void test_offload_bad_checksum(void **state)
{
	uint8_t *src = malloc(1 * MiB);
	struct rdma_peer *pb = rdma_peer_find(A, "nodeB");
	struct remote_stats b0 = stats(B);
	struct sink s = {.cap = 16};
	uint8_t b[16];

	(void)state;
	tl_fill(src, 1 * MiB, 9);
	atomic_store(&pb->down_until, 0);
	assert_int_equal(
		rdma_offload_to(A, pb, "off/bad", &(struct iovec){src, 1 * MiB}, 1, 1 * MiB, 12345),
		-EBADMSG);
	assert_int_equal(stats(B).checksum_failures, b0.checksum_failures + 1);
	assert_int_equal(stats(B).offloads_received, b0.offloads_received);
	assert_int_equal(stats(B).lend_used, b0.lend_used);
	s.buf = b;
	assert_int_equal(fetch(A, "nodeB", "off/bad", &s, NULL), -ENOENT);
	free(src);
}

static void test_offload_no_room(void **state)
{
	uint64_t big = 40 * MiB;
	uint8_t *src = malloc(big);
	struct rdma_peer *pb = rdma_peer_find(A, "nodeB");
	uint64_t sum;

	(void)state;
	memset(src, 1, big);
	sum = remote_checksum(&(struct iovec){src, big}, 1);
	/* The ring knows B lends only 32 MiB: nobody is asked. */
	assert_int_equal(remote_offload(A, "off/big", &(struct iovec){src, big}, 1, sum), -ENOSPC);
	/* Asked directly, B refuses. */
	atomic_store(&pb->down_until, 0);
	assert_int_equal(rdma_offload_to(A, pb, "off/big", &(struct iovec){src, big}, 1, big, sum),
			 -ENOSPC);
	assert_int_equal(remote_offload(A, "off/empty", &(struct iovec){src, 0}, 1, 0), -EINVAL);
	assert_int_equal(remote_offload(A, "off/none", NULL, 0, 0), -EINVAL);
	free(src);
}

/* --- authentication and malformed messages -------------------------------- */

static void test_wrong_token(void **state)
{
	remote *C = tl_open("nodeC", NULL, 0, NULL, NULL, "some-other-cluster-token!", 2000, 0);
	struct sink s = {.cap = 2 * MiB};
	struct remote_stats b0 = stats(B), a0 = stats(A);
	const uint8_t *addr;
	uint32_t len;
	int lookups = dB.lookups;

	(void)state;
	assert_non_null(C);
	s.buf = malloc(s.cap);
	addr = rdma_self_addr(B, &len);
	assert_int_equal(rdma_peer_add_fixed(C, "nodeB", addr, len, 0, 0), 0);
	/* C does not hold B's token: B refuses it (and C refuses B). */
	assert_int_equal(fetch(C, "nodeB", "m/one.bin", &s, NULL), -EACCES);
	for (int i = 0; i < 200 && stats(B).auth_refused == b0.auth_refused; i++)
		tl_sleep_ms(5);
	assert_int_equal(stats(B).auth_refused, b0.auth_refused + 1);
	assert_int_equal(stats(C).auth_rejected, 1);
	assert_int_equal(dB.lookups, lookups);
	assert_int_equal(s.prepared, 0);

	/* And A will not trust C as a server: C cannot prove the token. */
	addr = rdma_self_addr(C, &len);
	assert_int_equal(rdma_peer_add_fixed(A, "nodeC", addr, len, 0, 0), 0);
	assert_int_equal(fetch(A, "nodeC", "m/one.bin", &s, NULL), -EACCES);
	assert_int_equal(stats(A).auth_rejected, a0.auth_rejected + 1);
	for (int i = 0; i < 200 && stats(C).auth_refused == 0; i++)
		tl_sleep_ms(5);
	assert_int_equal(stats(C).auth_refused, 1);
	/* Refused peers are not retried at once. */
	assert_true(atomic_load(&rdma_peer_find(A, "nodeC")->down_until) > 0);
	remote_close(C);
	free(s.buf);
}

static void wait_bad(remote *r, uint64_t want)
{
	for (int i = 0; i < 400 && stats(r).bad_messages < want; i++)
		tl_sleep_ms(5);
	assert_int_equal(stats(r).bad_messages, want);
}

static void test_malformed_messages(void **state)
{
	struct rdma_peer *pb = rdma_peer_find(A, "nodeB");
	struct rdma_msg *m = calloc(1, sizeof(*m));
	uint8_t buf[RDMA_MSG_SIZE], key[32] = {1};
	uint64_t dl = UINT64_MAX, bad = stats(B).bad_messages;
	int lookups = dB.lookups, len;
	uint32_t alen;
	const uint8_t *addr = rdma_self_addr(B, &alen);
	struct sink s = {.cap = 2 * MiB};

	(void)state;
	/* A session with B, so the "right session, wrong MAC" case is real. */
	s.buf = malloc(s.cap);
	assert_int_equal(fetch(A, "nodeB", "m/one.bin", &s, NULL), 0);
	assert_true(pb->open);

	/* 1. Too short to be a message. */
	assert_int_equal(rdma_send_raw(A, addr, alen, "garbage", 7, dl), 0);
	wait_bad(B, ++bad);

	/* 2. A well-formed LOOKUP, then broken one field at a time. */
	m->type = RDMA_MSG_LOOKUP;
	m->req_id = 42;
	m->session = pb->sid;
	strcpy(m->u.path.path, "m/one.bin");
	m->u.path.path_len = 9;
	len = rdma_msg_encode(m, buf, sizeof(buf));
	assert_true(len > 0);

	buf[0] ^= 1; /* magic */
	assert_int_equal(rdma_send_raw(A, addr, alen, buf, (size_t)len, dl), 0);
	wait_bad(B, ++bad);
	buf[0] ^= 1;

	buf[4] = RDMA_PROTO_VERSION + 1; /* version */
	assert_int_equal(rdma_send_raw(A, addr, alen, buf, (size_t)len, dl), 0);
	wait_bad(B, ++bad);
	buf[4] = RDMA_PROTO_VERSION;

	assert_int_equal(rdma_send_raw(A, addr, alen, buf, (size_t)len - 1, dl), 0); /* length */
	wait_bad(B, ++bad);

	buf[60] = 7; /* reserved */
	assert_int_equal(rdma_send_raw(A, addr, alen, buf, (size_t)len, dl), 0);
	wait_bad(B, ++bad);
	buf[60] = 0;

	buf[RDMA_HDR_SIZE + 24 + 2] = '\0'; /* a NUL inside the path */
	assert_int_equal(rdma_send_raw(A, addr, alen, buf, (size_t)len, dl), 0);
	wait_bad(B, ++bad);
	buf[RDMA_HDR_SIZE + 24 + 2] = 'o';

	/* 3. Well formed, but unsigned / signed with the wrong key / an
	 * unknown session. */
	assert_int_equal(rdma_send_raw(A, addr, alen, buf, (size_t)len, dl), 0);
	wait_bad(B, ++bad);
	rdma_msg_sign(buf, (size_t)len, key);
	assert_int_equal(rdma_send_raw(A, addr, alen, buf, (size_t)len, dl), 0);
	wait_bad(B, ++bad);
	m->session = pb->sid ^ 0x10000;
	len = rdma_msg_encode(m, buf, sizeof(buf));
	rdma_msg_sign(buf, (size_t)len, pb->key);
	assert_int_equal(rdma_send_raw(A, addr, alen, buf, (size_t)len, dl), 0);
	wait_bad(B, ++bad);

	/* 4. A PROVE for a session that was never challenged. */
	memset(m, 0, sizeof(*m));
	m->type = RDMA_MSG_PROVE;
	m->req_id = 43;
	m->session = 0x12340000ull | 5;
	len = rdma_msg_encode(m, buf, sizeof(buf));
	assert_int_equal(rdma_send_raw(A, addr, alen, buf, (size_t)len, dl), 0);
	wait_bad(B, ++bad);

	/* Nothing reached the daemon, and B still serves A. */
	assert_int_equal(dB.lookups, lookups + 1);
	assert_int_equal(fetch(A, "nodeB", "m/one.bin", &s, NULL), 0);
	assert_int_equal(stats(B).bad_messages, bad);
	wait_releases(&dB);
	free(m);
	free(s.buf);
}

/* --- outsiders: HELLO floods, replays -------------------------------------- */

/* A TCP listener that completes connections and never says a word: the
 * reply address of a forged HELLO. @return its fd; *@addr gets the fabric
 * address for it (B's, with the port changed). */
static int black_hole(uint8_t *addr, uint32_t *alen)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sin);
	const uint8_t *b = rdma_self_addr(B, alen);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(fd, 1024), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	memcpy(addr, b, *alen);
	if (*alen != sizeof(sin) ||
	    ((const struct sockaddr_in *)(const void *)b)->sin_family != AF_INET)
		skip(); /* not an IPv4 socket address: cannot forge one */
	memcpy(addr + offsetof(struct sockaddr_in, sin_port), &sin.sin_port, 2);
	return fd;
}

/* Copies @size bytes of @seed to B's lent memory as @path (via A). */
static void lend_to_b(const char *path, uint64_t size, uint64_t seed, uint8_t *src)
{
	struct rdma_peer *pb = rdma_peer_find(A, "nodeB");
	struct iovec iov = {src, size};

	tl_fill(src, size, seed);
	atomic_store(&pb->down_until, 0);
	assert_int_equal(rdma_offload_to(A, pb, path, &iov, 1, size, remote_checksum(&iov, 1)), 0);
}

/*
 * Issue 11 item 4: HELLOs without the token, each naming a reply address
 * that accepts TCP and never answers, once held B's server thread for
 * timeout_ms each, and every lookup miss on B (remote_take_lent) waited
 * behind them without a bound. Now the handshake reply is sent without
 * waiting, and B goes on serving its peers and its own takes.
 */
static void test_hello_flood(void **state)
{
	uint8_t hole[RDMA_ADDR_MAX], *src = malloc(MiB), *buf = malloc(RDMA_MSG_SIZE);
	struct rdma_msg *m = calloc(1, sizeof(*m));
	struct sink s = {.cap = 2 * MiB};
	struct remote_sink rs = {sink_prepare, &s};
	struct remote_fetch_info info;
	uint32_t hlen, alen;
	const uint8_t *baddr = rdma_self_addr(B, &alen);
	int hfd = black_hole(hole, &hlen), len;
	uint64_t t0, ms;

	(void)state;
	s.buf = malloc(s.cap);
	lend_to_b("flood/lent.bin", MiB, 41, src);
	for (int i = 0; i < 50; i++) {
		memset(m, 0, sizeof(*m));
		m->type = RDMA_MSG_HELLO;
		m->req_id = 1000 + (uint64_t)i;
		snprintf(m->u.hello.node, sizeof(m->u.hello.node), "forged-%d", i);
		m->u.hello.addr_len = hlen;
		memcpy(m->u.hello.addr, hole, hlen);
		len = rdma_msg_encode(m, buf, RDMA_MSG_SIZE);
		assert_true(len > 0);
		assert_int_equal(rdma_send_raw(A, baddr, alen, buf, (size_t)len, UINT64_MAX), 0);
	}
	/* B still answers its peers: A's fetch (bounded by A's 2 s timeout)
	 * gets its bytes... */
	assert_int_equal(fetch(A, "nodeB", "m/one.bin", &s, NULL), 0);
	/* ... and a lookup miss on B takes the lent copy at once, not after
	 * 50 stalled handshakes (100 s before the fix). */
	t0 = tl_now_ms();
	assert_int_equal(remote_take_lent(B, "flood/lent.bin", &rs, &info), 0);
	ms = tl_now_ms() - t0;
	assert_int_equal(s.size, MiB);
	assert_memory_equal(s.buf, src, MiB);
	print_message("      take behind 50 forged HELLOs: %llu ms\n", (unsigned long long)ms);
	assert_true(ms < 10 * 2000);
	close(hfd);
	wait_releases(&dB);
	free(s.buf);
	free(src);
	free(buf);
	free(m);
}

struct bg_fetch {
	pthread_t thr;
	struct sink s;
	int rc;
};

static void *bg_fetch_main(void *arg)
{
	struct bg_fetch *b = arg;
	struct remote_sink rs = {sink_prepare, &b->s};

	b->rc = rdma_fetch_from(A, rdma_peer_find(A, "nodeB"), "m/none.bin", &rs, NULL, NULL);
	return NULL;
}

/*
 * Issue 11 item 4, the other half: whatever holds B's server thread (here a
 * daemon lookup that blocks for 3 s), a lookup miss on B waits for the lent
 * copy at most timeout_ms (2 s), then gives up; the abandoned take is never
 * run late, and the copy is still there for the next one.
 */
static void test_take_is_bounded(void **state)
{
	uint8_t *src = malloc(MiB);
	struct bg_fetch bg = {.s = {.cap = 2 * MiB}};
	struct sink s = {.cap = 2 * MiB};
	struct remote_sink rs = {sink_prepare, &s};
	uint64_t t0, ms, to = stats(B).timeouts;
	int rc;

	(void)state;
	s.buf = malloc(s.cap);
	bg.s.buf = malloc(bg.s.cap);
	lend_to_b("take/bounded.bin", MiB, 8, src);
	/* A asks B for a file B's daemon takes 3 s to look up (and lacks). */
	atomic_store(&dB.lookup_delay_ms, 3000);
	atomic_store(&rdma_peer_find(A, "nodeB")->down_until, 0);
	assert_int_equal(pthread_create(&bg.thr, NULL, bg_fetch_main, &bg), 0);
	for (int i = 0; i < 400 && atomic_load(&dB.delaying) == 0; i++)
		tl_sleep_ms(5);
	assert_int_equal(atomic_load(&dB.delaying), 1); /* B's server thread is stuck in it */
	t0 = tl_now_ms();
	rc = remote_take_lent(B, "take/bounded.bin", &rs, NULL);
	ms = tl_now_ms() - t0;
	atomic_store(&dB.lookup_delay_ms, 0);
	assert_int_equal(rc, -ETIMEDOUT);
	assert_int_equal(stats(B).timeouts, to + 1);
	assert_int_equal(s.prepared, 0); /* abandoned: never run */
	print_message("      take behind a stuck server thread: %s after %llu ms\n", strerror(-rc),
		      (unsigned long long)ms);
	pthread_join(bg.thr, NULL);
	assert_int_equal(bg.rc, -ETIMEDOUT); /* A gave up on B too, bounded as ever */
	/* The server is free again: the copy was left in place. */
	assert_int_equal(remote_take_lent(B, "take/bounded.bin", &rs, NULL), 0);
	assert_int_equal(s.prepared, 1);
	assert_memory_equal(s.buf, src, MiB);
	wait_releases(&dB);
	free(s.buf);
	free(bg.s.buf);
	free(src);
}

/*
 * Issue 11 item 9: a MACed request captured on the wire and sent again is
 * refused. A FREE of a lent copy is captured; the copy is offloaded again;
 * the replayed FREE must not drop the new copy.
 */
static void test_replay_refused(void **state)
{
	struct rdma_peer *pb = rdma_peer_find(A, "nodeB");
	struct rdma_msg *m = calloc(1, sizeof(*m));
	uint8_t *buf = malloc(RDMA_MSG_SIZE), *src = malloc(MiB);
	struct sink s = {.cap = 2 * MiB};
	uint64_t dl = UINT64_MAX, r0 = stats(B).replays, used;
	uint32_t alen;
	const uint8_t *addr = rdma_self_addr(B, &alen);
	int len;

	(void)state;
	s.buf = malloc(s.cap);
	lend_to_b("replay/x.bin", MiB, 5, src);
	used = stats(B).lend_used;
	/* A FREE in A's session, numbered and signed as A's client does. */
	m->type = RDMA_MSG_FREE;
	m->req_id = 77;
	m->session = pb->sid;
	pthread_mutex_lock(&pb->seq_lock);
	m->seq = ++pb->tx_seq;
	pthread_mutex_unlock(&pb->seq_lock);
	strcpy(m->u.path.path, "replay/x.bin");
	m->u.path.path_len = 12;
	len = rdma_msg_encode(m, buf, RDMA_MSG_SIZE);
	rdma_msg_sign(buf, (size_t)len, pb->key);
	assert_int_equal(rdma_send_raw(A, addr, alen, buf, (size_t)len, dl), 0);
	for (int i = 0; i < 400 && stats(B).lend_used == used; i++)
		tl_sleep_ms(5);
	assert_true(stats(B).lend_used < used); /* the genuine FREE worked */
	assert_int_equal(fetch(A, "nodeB", "replay/x.bin", &s, NULL), -ENOENT);

	/* The copy comes back; the captured FREE is sent again. */
	lend_to_b("replay/x.bin", MiB, 6, src);
	assert_int_equal(rdma_send_raw(A, addr, alen, buf, (size_t)len, dl), 0);
	for (int i = 0; i < 400 && stats(B).replays == r0; i++)
		tl_sleep_ms(5);
	assert_int_equal(stats(B).replays, r0 + 1);
	assert_int_equal(fetch(A, "nodeB", "replay/x.bin", &s, NULL), 0);
	assert_memory_equal(s.buf, src, MiB);
	/* A LOOKUP replayed is refused too, and never reaches the daemon (of a
	 * missing file: the genuine one leaves no lease behind). */
	{
		int lookups = lookups_of(&dB);

		memset(m, 0, sizeof(*m));
		m->type = RDMA_MSG_LOOKUP;
		m->req_id = 78;
		m->session = pb->sid;
		pthread_mutex_lock(&pb->seq_lock);
		m->seq = ++pb->tx_seq;
		pthread_mutex_unlock(&pb->seq_lock);
		strcpy(m->u.path.path, "m/none.bin");
		m->u.path.path_len = 10;
		len = rdma_msg_encode(m, buf, RDMA_MSG_SIZE);
		rdma_msg_sign(buf, (size_t)len, pb->key);
		assert_int_equal(rdma_send_raw(A, addr, alen, buf, (size_t)len, dl), 0);
		for (int i = 0; i < 400 && lookups_of(&dB) == lookups; i++)
			tl_sleep_ms(5);
		assert_int_equal(lookups_of(&dB), lookups + 1);
		assert_int_equal(rdma_send_raw(A, addr, alen, buf, (size_t)len, dl), 0);
		for (int i = 0; i < 400 && stats(B).replays == r0 + 1; i++)
			tl_sleep_ms(5);
		assert_int_equal(stats(B).replays, r0 + 2);
		assert_int_equal(lookups_of(&dB), lookups + 1);
	}
	assert_int_equal(rdma_free_at(A, pb, "replay/x.bin"), 0);
	wait_releases(&dB);
	free(s.buf);
	free(src);
	free(buf);
	free(m);
}

/*
 * Issue 11 item 5: owner and mode travel with a file, as its holder says,
 * and with an offloaded copy as the offloading node said; a holder that
 * says nothing sends root-only attributes.
 */
static void test_attrs_travel(void **state)
{
	struct rdma_peer *pb = rdma_peer_find(A, "nodeB");
	struct sink s = {.cap = 2 * MiB};
	struct remote_fetch_info info;
	struct remote_attrs want = {.file = {1000, 100, 0640}, .ndirs = 1};
	uint8_t *src = malloc(MiB);
	struct iovec iov = {src, MiB};

	(void)state;
	s.buf = malloc(s.cap);
	want.dirs[0] = (struct remote_attr){1000, 100, 02750};
	pthread_mutex_lock(&dB.lock);
	dB.attrs = want;
	dB.give_attrs = true;
	pthread_mutex_unlock(&dB.lock);
	assert_int_equal(fetch(A, "nodeB", "m/one.bin", &s, &info), 0);
	assert_memory_equal(&info.attrs, &want, sizeof(want));
	pthread_mutex_lock(&dB.lock);
	dB.give_attrs = false;
	pthread_mutex_unlock(&dB.lock);
	assert_int_equal(fetch(A, "nodeB", "m/one.bin", &s, &info), 0);
	assert_int_equal(info.attrs.file.uid, 0);
	assert_int_equal(info.attrs.file.mode, 0600);
	assert_int_equal(info.attrs.ndirs, 1); /* "m" */
	assert_int_equal(info.attrs.dirs[0].mode, 0700);

	/* A's attributes go with its offloaded copy, and come back with it. */
	want.file = (struct remote_attr){7, 8, 0604};
	want.ndirs = 2;
	want.dirs[1] = (struct remote_attr){0, 0, 0755};
	pthread_mutex_lock(&dA.lock);
	dA.attrs = want;
	dA.give_attrs = true;
	pthread_mutex_unlock(&dA.lock);
	tl_fill(src, MiB, 3);
	atomic_store(&pb->down_until, 0);
	assert_int_equal(
		rdma_offload_to(A, pb, "at/x/y.bin", &iov, 1, MiB, remote_checksum(&iov, 1)), 0);
	pthread_mutex_lock(&dA.lock);
	dA.give_attrs = false;
	pthread_mutex_unlock(&dA.lock);
	assert_int_equal(fetch(A, "nodeB", "at/x/y.bin", &s, &info), 0);
	assert_int_equal(info.tier, REMOTE_TIER_LENT);
	assert_memory_equal(&info.attrs, &want, sizeof(want));
	assert_int_equal(rdma_free_at(A, pb, "at/x/y.bin"), 0);
	wait_releases(&dB);
	free(s.buf);
	free(src);
}

/* Has the other end closed @fd (EOF or reset)? */
static bool closed_by_peer(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
	char c;

	if (poll(&p, 1, 0) != 1)
		return false;
	return recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
}

static int count_closed(const int *fds, int n)
{
	int k = 0;

	for (int i = 0; i < n; i++)
		k += fds[i] >= 0 && closed_by_peer(fds[i]);
	return k;
}

/*
 * Issue 11 item 8: idle connections to the listen port once held a
 * descriptor each for ever. With at most 4 unproven connections, each for
 * at most 1 s, a flood of 40 is cut down to 4 at once and to none soon
 * after, while a peer that proved the token keeps its connection and is
 * served throughout.
 */
static void test_connection_flood(void **state)
{
	struct tl_daemon dD;
	struct remote_config cfg = {
		.node_id = "nodeD",
		.fabric = "tcp",
		.listen = "127.0.0.1:0",
		.token = TOKEN,
		.token_len = strlen(TOKEN),
		.timeout_ms = 2000,
		.max_unproven_conns = 4,
		.unproven_conn_ms = 1000,
		.ops = &tl_ops,
		.ops_ctx = &dD,
	};
	struct sockaddr_in sin;
	struct sink s = {.cap = MiB};
	const struct tl_file *f;
	const uint8_t *addr;
	char err[256] = "";
	remote *D = NULL;
	uint32_t alen;
	uint64_t cut;
	int fds[40], n = 40, left = -1;

	(void)state;
	assert_int_equal(tl_daemon_init(&dD, 8 * MiB), 0);
	f = tl_add(&dD, "d/file", 300000, 17, 0, false);
	cfg.arena = dD.arena;
	cfg.arena_bytes = dD.arena_bytes;
	assert_int_equal(remote_open(&cfg, &D, err, sizeof(err)), 0);
	addr = rdma_self_addr(D, &alen);
	if (alen != sizeof(sin))
		skip();
	memcpy(&sin, addr, sizeof(sin));
	assert_int_equal(rdma_peer_add_fixed(A, "nodeD", addr, alen, 0, 0), 0);
	s.buf = malloc(s.cap);
	/* A proves the token and reads: its connection is vouched for. */
	assert_int_equal(fetch(A, "nodeD", "d/file", &s, NULL), 0);
	assert_same(f, s.buf);

	for (int i = 0; i < n; i++) {
		fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		assert_true(fds[i] >= 0);
		assert_int_equal(connect(fds[i], (struct sockaddr *)&sin, sizeof(sin)), 0);
		/* A few talk too (from A's host, which is vouched for): bytes one
		 * way only buy nothing. */
		if (i % 8 == 0)
			assert_int_equal(send(fds[i], "not a connection request", 4, 0), 4);
	}
	/* At most 4 left open within a scan or two... */
	for (uint64_t t0 = tl_now_ms(); tl_now_ms() - t0 < 5000;) {
		if (n - count_closed(fds, n) <= 4)
			break;
		tl_sleep_ms(20);
	}
	assert_true(n - count_closed(fds, n) <= 4);
	/* ... while A is served as ever, on the same connection... */
	assert_int_equal(fetch(A, "nodeD", "d/file", &s, NULL), 0);
	assert_same(f, s.buf);
	/* ... and none once they outlived 1 s. */
	for (uint64_t t0 = tl_now_ms(); tl_now_ms() - t0 < 10000;) {
		left = n - count_closed(fds, n);
		if (left == 0)
			break;
		tl_sleep_ms(50);
	}
	assert_int_equal(left, 0);
	/* (the provider may close a talker itself, on bytes it cannot parse) */
	cut = stats(D).conns_cut;
	assert_true(cut >= (uint64_t)(n - n / 8) && cut <= (uint64_t)n);
	assert_int_equal(fetch(A, "nodeD", "d/file", &s, NULL), 0);
	assert_int_equal(stats(D).conns_cut, cut); /* A's was never cut */
	for (int i = 0; i < n; i++)
		close(fds[i]);
	remote_close(D);
	atomic_store(&rdma_peer_find(A, "nodeD")->down_until, UINT64_MAX);
	tl_daemon_fini(&dD);
	free(s.buf);
}

/* --- corruption ----------------------------------------------------------- */

static void test_corruption_caught(void **state)
{
	const struct tl_file *f = NULL;
	struct sink s = {.cap = 2 * MiB};
	uint64_t c0 = stats(A).checksum_failures;

	(void)state;
	for (int i = 0; i < dB.nfiles; i++)
		if (strcmp(dB.files[i].path, "m/one.bin") == 0)
			f = &dB.files[i];
	assert_non_null(f);
	s.buf = malloc(s.cap);
	kvfs_fault_arm(KVFS_FAULT_NET_READ, 1, EIO, false);
	assert_int_equal(fetch(A, "nodeB", "m/one.bin", &s, NULL), -EBADMSG);
	assert_int_equal(stats(A).checksum_failures, c0 + 1);
	assert_int_equal(kvfs_fault_slots[KVFS_FAULT_NET_READ].hits, 1);
	/* Transient: the next read is clean. */
	assert_int_equal(fetch(A, "nodeB", "m/one.bin", &s, NULL), 0);
	assert_same(f, s.buf);
	wait_releases(&dB);
	free(s.buf);
}

/* --- a peer that dies or hangs mid-transfer ------------------------------- */

struct peer_proc {
	pid_t pid;
	int in_fd;
	uint8_t addr[RDMA_ADDR_MAX];
	uint32_t addr_len;
};

static int spawn_peer(struct peer_proc *pp, const char *id, const char *file)
{
	char exe[PATH_MAX + 16], line[256];
	int in[2], out[2];
	ssize_t n = readlink("/proc/self/exe", exe, PATH_MAX - 1);
	FILE *f;

	if (n < 0)
		return -1;
	exe[n] = '\0';
	strcpy(strrchr(exe, '/'), "/rdma_peerd"); /* beside this suite */
	if (access(exe, X_OK) != 0 || pipe(in) || pipe(out))
		return -1;
	pp->pid = fork();
	if (pp->pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		close(in[1]);
		close(out[0]);
		execl(exe, exe, "--node-id", id, "--file", file, (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	pp->in_fd = in[1];
	f = fdopen(out[0], "r");
	if (!f || !fgets(line, sizeof(line), f) || strncmp(line, "READY ", 6) != 0)
		return -1;
	fclose(f);
	pp->addr_len = 0;
	for (char *h = line + 6; h[0] && h[1] && h[0] != '\n'; h += 2) {
		unsigned v;

		sscanf(h, "%2x", &v);
		pp->addr[pp->addr_len++] = (uint8_t)v;
	}
	return 0;
}

static void reap_peer(struct peer_proc *pp)
{
	close(pp->in_fd);
	kill(pp->pid, SIGKILL);
	kill(pp->pid, SIGCONT);
	waitpid(pp->pid, NULL, 0);
}

struct killer {
	pid_t pid;
	bool kill_after;
	pthread_t thr;
	bool started;
};

static void *killer_main(void *arg)
{
	struct killer *k = arg;

	tl_sleep_ms(100);
	kill(k->pid, SIGKILL);
	return NULL;
}

/* Called from prepare, before the first read is posted: the peer stops
 * (so the transfer is certainly in the middle), then maybe dies. */
static void stop_peer(void *arg)
{
	struct killer *k = arg;

	if (k->started)
		return;
	kill(k->pid, SIGSTOP);
	k->started = true;
	if (k->kill_after)
		pthread_create(&k->thr, NULL, killer_main, k);
}

static void peer_trouble(bool kill_it)
{
	struct peer_proc pp;
	struct killer k = {0};
	struct sink s = {.cap = 64 * MiB};
	remote *C = tl_open("nodeC2", NULL, 0, NULL, NULL, NULL, 1000, 0);
	struct remote_stats c0;
	uint64_t t0, ms;
	int rc;

	assert_non_null(C);
	if (spawn_peer(&pp, "peerX", "big.bin:64M") != 0)
		skip();
	assert_int_equal(rdma_peer_add_fixed(C, "peerX", pp.addr, pp.addr_len, 0, 0), 0);
	s.buf = malloc(s.cap);
	/* A clean read first: the session and connection are up. */
	assert_int_equal(fetch(C, "peerX", "big.bin", &s, NULL), 0);
	c0 = stats(C);
	k.pid = pp.pid;
	k.kill_after = kill_it;
	s.hook = stop_peer;
	s.arg = &k;
	t0 = tl_now_ms();
	rc = fetch(C, "peerX", "big.bin", &s, NULL);
	ms = tl_now_ms() - t0;
	if (kill_it) {
		if (rc != -ECONNRESET && rc != -ETIMEDOUT)
			fail_msg("rc %d (%s)", rc, strerror(-rc));
		pthread_join(k.thr, NULL);
	} else {
		assert_int_equal(rc, -ETIMEDOUT);
		assert_int_equal(stats(C).timeouts, c0.timeouts + 1);
	}
	assert_true(k.started);
	/* Bounded: the 1 s timeout without progress, plus slack for a
	 * loaded machine; never a hang. */
	assert_true(ms < 3000);
	print_message("      peer %s mid-transfer: %s after %llu ms\n",
		      kill_it ? "killed" : "stopped", strerror(-rc), (unsigned long long)ms);
	/* The peer is skipped for a while now. */
	assert_true(atomic_load(&rdma_peer_find(C, "peerX")->down_until) > 0);
	reap_peer(&pp);
	remote_close(C);
	free(s.buf);
}

static void test_peer_killed_mid_transfer(void **state)
{
	(void)state;
	peer_trouble(true);
}

static void test_peer_stopped_times_out(void **state)
{
	(void)state;
	peer_trouble(false);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_open_config),
		cmocka_unit_test(test_mr_addressing),
		cmocka_unit_test(test_fetch_contiguous),
		cmocka_unit_test(test_fetch_scattered_runs),
		cmocka_unit_test(test_fetch_into_arena),
		cmocka_unit_test(test_fetch_empty),
		cmocka_unit_test(test_fetch_missing),
		cmocka_unit_test(test_fetch_outside_arena),
		cmocka_unit_test(test_concurrent_fetches),
		cmocka_unit_test(test_offload_roundtrip),
		cmocka_unit_test(test_offload_replace),
		cmocka_unit_test(test_offload_bad_checksum),
		cmocka_unit_test(test_offload_no_room),
		cmocka_unit_test(test_wrong_token),
		cmocka_unit_test(test_malformed_messages),
		cmocka_unit_test(test_attrs_travel),
		cmocka_unit_test(test_hello_flood),
		cmocka_unit_test(test_connection_flood),
		cmocka_unit_test(test_take_is_bounded),
		cmocka_unit_test(test_replay_refused),
		cmocka_unit_test(test_corruption_caught),
		cmocka_unit_test(test_peer_killed_mid_transfer),
		cmocka_unit_test(test_peer_stopped_times_out),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
