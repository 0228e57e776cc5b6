/*
 * rdma/guard.c — a bound on the connections nobody has vouched for.
 *
 * The fabric provider (tcp, verbs through ofi_rxm) accepts every TCP
 * connection to the listen port and keeps its descriptor for as long as the
 * other end keeps it open; 21,000 idle connections used up the daemon's
 * descriptors, and with them the fetches of real peers and the fast path's
 * registrations. The provider has no limit to set, so this thread watches
 * from the outside: every GUARD_EVERY it lists the process's descriptors
 * and looks at the connections accepted on our listen port, each through a
 * duplicate made with dup2() onto a descriptor the guard holds for that
 * (so it works when the flood has taken every other one), checked to be
 * the same socket (inode) the listing named: a number closed and reused
 * meanwhile is never touched.
 *
 * A connection is vouched for when its remote host is one this node has a
 * proven session with (a peer that proved the cluster token to us, or that
 * we proved it with; rdma_guard_vouch, valid for the server's session idle
 * time) and it has carried bytes both ways (the provider answered its
 * connection request: a socket that only ever sent garbage has not).
 * Every other accepted connection is
 * unproven; unproven connections are shut down (shutdown(2) on our
 * duplicate; the provider then closes its descriptor) when
 *   - they are older than cfg.unproven_conn_ms, or
 *   - there are more than cfg.max_unproven_conns of them: silent ones
 *     (no byte received) first, then the oldest.
 * So at most max_unproven_conns descriptors, plus what arrives within one
 * scan, are held for outsiders, and a peer that proved the token keeps its
 * connections. Counted in conns_cut.
 *
 * Needs socket addresses (IPv4 or IPv6) as fabric names: with another
 * provider (efa) the guard does not run, and says so once.
 *
 * Locking: guard_lock guards the vouched hosts (leaf); the connection
 * table is the thread's own.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <linux/tcp.h>

#include "core/log.h"
#include "core/util.h"
#include "rdma/rdma_i.h"

#define GUARD_EVERY_NS (200ull * 1000000ull)
#define VOUCH_NS       (300ull * 1000000000ull) /* the server's session idle time */

/* A host as the guard compares them: family and address bytes. */
struct host {
	sa_family_t family;
	uint8_t a[16];
};

static bool host_of_sockaddr(const void *sa, size_t len, struct host *h, uint16_t *port)
{
	struct sockaddr_storage ss;

	memset(h, 0, sizeof(*h));
	if (len < sizeof(sa_family_t) || len > sizeof(ss))
		return false;
	memcpy(&ss, sa, len);
	if (ss.ss_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;

		h->family = AF_INET;
		memcpy(h->a, &in->sin_addr, 4);
		if (port)
			*port = in->sin_port;
		return true;
	}
	if (ss.ss_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;

		/* An IPv4 peer of a dual-stack socket is the same host as in IPv4. */
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			h->family = AF_INET;
			memcpy(h->a, &in6->sin6_addr.s6_addr[12], 4);
		} else {
			h->family = AF_INET6;
			memcpy(h->a, &in6->sin6_addr, 16);
		}
		if (port)
			*port = in6->sin6_port;
		return true;
	}
	return false;
}

void rdma_guard_vouch(remote *r, const uint8_t *addr, uint32_t len)
{
	struct host h;
	uint64_t now = kvfs_mono_ns();
	int slot = -1;

	if (!host_of_sockaddr(addr, len, &h, NULL))
		return;
	pthread_mutex_lock(&r->guard_lock);
	for (int i = 0; i < RDMA_GUARD_HOSTS; i++) {
		struct rdma_vouch *v = &r->vouched[i];

		if (v->until_ns && v->family == h.family && memcmp(v->a, h.a, 16) == 0) {
			slot = i;
			break;
		}
		if (slot < 0 ||
		    (r->vouched[slot].until_ns && v->until_ns < r->vouched[slot].until_ns))
			slot = i; /* a free one, or the one that expires first */
	}
	r->vouched[slot].family = h.family;
	memcpy(r->vouched[slot].a, h.a, 16);
	r->vouched[slot].until_ns = now + VOUCH_NS;
	pthread_mutex_unlock(&r->guard_lock);
}

static bool vouched(remote *r, const struct host *h, uint64_t now)
{
	bool ok = false;

	pthread_mutex_lock(&r->guard_lock);
	for (int i = 0; i < RDMA_GUARD_HOSTS && !ok; i++) {
		const struct rdma_vouch *v = &r->vouched[i];

		ok = v->until_ns > now && v->family == h->family && memcmp(v->a, h->a, 16) == 0;
	}
	pthread_mutex_unlock(&r->guard_lock);
	return ok;
}

/* --- the connections seen ------------------------------------------------- */

struct conn {
	uint64_t ino;	   /* the socket's inode: the tree's key */
	uint64_t first_ns; /* when a scan first saw it */
	uint64_t scan;	   /* the last scan that saw it */
};

/* One unproven connection of this scan. */
struct cand {
	int fd;	      /* the provider's descriptor number */
	uint64_t ino; /* its socket, to recognise it again */
	uint64_t first_ns;
	bool silent;
};

struct guard {
	remote *r;
	struct host self;
	uint16_t port; /* network order */
	void *conns;   /* tsearch tree of struct conn */
	uint64_t scan;
	struct cand *cands;
	size_t ncands, cap;
	/* The guard's own descriptors, opened at start so that it never
	 * needs a new one: /proc/self/fd, /dev/null, and the slot that holds
	 * the duplicate of the socket being looked at (else /dev/null). */
	DIR *fds;
	int null_fd, slot;
};

/* Duplicate @fd into g->slot if it is socket @ino. @return the slot, or -1. */
static int guard_hold(struct guard *g, int fd, uint64_t ino, struct stat *st)
{
	if (fd == g->slot || fd == g->null_fd || fd == dirfd(g->fds))
		return -1;
	if (dup3(fd, g->slot, O_CLOEXEC) < 0)
		return -1;
	if (fstat(g->slot, st) || !S_ISSOCK(st->st_mode) || (uint64_t)st->st_ino != ino) {
		dup3(g->null_fd, g->slot, O_CLOEXEC);
		return -1;
	}
	return g->slot;
}

static void release(struct guard *g)
{
	dup3(g->null_fd, g->slot, O_CLOEXEC); /* never leaves the socket open */
}

static int conn_cmp(const void *a, const void *b)
{
	uint64_t x = ((const struct conn *)a)->ino, y = ((const struct conn *)b)->ino;

	return x < y ? -1 : x > y;
}

static struct conn *conn_seen(struct guard *g, uint64_t ino, uint64_t now)
{
	struct conn key = {.ino = ino}, *c, **found = tfind(&key, &g->conns, conn_cmp);

	if (found) {
		(*found)->scan = g->scan;
		return *found;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->ino = ino;
	c->first_ns = now;
	c->scan = g->scan;
	if (!tsearch(c, &g->conns, conn_cmp)) {
		free(c);
		return NULL;
	}
	return c;
}

struct prune {
	struct guard *g;
	struct conn **stale;
	size_t n, cap;
};

static void prune_visit(const void *node, VISIT v, void *arg)
{
	struct prune *p = arg;
	struct conn *c = *(struct conn *const *)node;

	if ((v != postorder && v != leaf) || c->scan == p->g->scan)
		return;
	if (p->n == p->cap) {
		size_t nc = p->cap ? 2 * p->cap : 64;
		struct conn **s = realloc(p->stale, nc * sizeof(*s));

		if (!s)
			return; /* next scan */
		p->stale = s;
		p->cap = nc;
	}
	p->stale[p->n++] = c;
}

/* Forget connections the last scan did not see (closed meanwhile). */
static void conns_prune(struct guard *g)
{
	struct prune p = {.g = g};

	twalk_r(g->conns, prune_visit, &p);
	for (size_t i = 0; i < p.n; i++) {
		tdelete(p.stale[i], &g->conns, conn_cmp);
		free(p.stale[i]);
	}
	free(p.stale);
}

/* Shut down connection @c, if its descriptor still holds the same socket. */
static void cut(struct guard *g, const struct cand *c)
{
	struct stat st;
	int dup = guard_hold(g, c->fd, c->ino, &st);

	if (dup < 0)
		return;
	shutdown(dup, SHUT_RDWR); /* the provider sees the end and closes its own */
	STAT_INC(g->r, conns_cut);
	release(g);
}

/*
 * Look at descriptor @fd: if it is a connection accepted on our port that
 * nobody vouched for, note it in g->cands.
 */
static void look_at(struct guard *g, int fd, uint64_t ino, uint64_t now)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	struct tcp_info ti;
	socklen_t tl = sizeof(ti);
	struct stat st;
	struct host local, peer;
	uint16_t port = 0;
	int dup, listening = 0;
	socklen_t ol = sizeof(listening);
	struct conn *c;

	dup = guard_hold(g, fd, ino, &st);
	if (dup < 0)
		return;
	if (getsockopt(dup, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ol) || listening ||
	    getsockname(dup, (struct sockaddr *)&ss, &sl) ||
	    !host_of_sockaddr(&ss, sl, &local, &port) || port != g->port)
		goto out_close;
	sl = sizeof(ss);
	if (getpeername(dup, (struct sockaddr *)&ss, &sl) ||
	    !host_of_sockaddr(&ss, sl, &peer, NULL))
		goto out_close;
	memset(&ti, 0, sizeof(ti));
	if (getsockopt(dup, IPPROTO_TCP, TCP_INFO, &ti, &tl))
		goto out_close;
	c = conn_seen(g, (uint64_t)st.st_ino, now);
	if (!c)
		goto out_close;
	if (ti.tcpi_bytes_received > 0 && ti.tcpi_bytes_acked > 0 && vouched(g->r, &peer, now))
		goto out_close; /* a proven peer's */
	if (g->ncands == g->cap) {
		size_t nc = g->cap ? 2 * g->cap : 256;
		struct cand *p = realloc(g->cands, nc * sizeof(*p));

		if (!p)
			goto out_close;
		g->cands = p;
		g->cap = nc;
	}
	g->cands[g->ncands++] =
		(struct cand){fd, (uint64_t)st.st_ino, c->first_ns, ti.tcpi_bytes_received == 0};
out_close:
	release(g);
}

/* Silent ones first, then the oldest first. */
static int cand_cmp(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;

	if (x->silent != y->silent)
		return x->silent ? -1 : 1;
	return x->first_ns < y->first_ns ? -1 : x->first_ns > y->first_ns;
}

static void scan(struct guard *g)
{
	remote *r = g->r;
	uint64_t now = kvfs_mono_ns(), ttl = (uint64_t)r->unproven_conn_ms * 1000000ull;
	DIR *d = g->fds;
	struct dirent *e;
	size_t over;

	rewinddir(d); /* /proc lists the table as it is now */
	g->scan++;
	g->ncands = 0;
	while ((e = readdir(d))) {
		char link[64];
		unsigned long long ino;
		ssize_t n;

		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		n = readlinkat(dirfd(d), e->d_name, link, sizeof(link) - 1);
		if (n < 8)
			continue;
		link[n] = '\0';
		if (sscanf(link, "socket:[%llu]", &ino) == 1)
			look_at(g, atoi(e->d_name), (uint64_t)ino, now);
	}
	conns_prune(g);
	if (g->ncands)
		qsort(g->cands, g->ncands, sizeof(*g->cands), cand_cmp);
	over = g->ncands > r->max_unproven_conns ? g->ncands - r->max_unproven_conns : 0;
	for (size_t i = 0; i < g->ncands; i++)
		if (i < over || now - g->cands[i].first_ns >= ttl)
			cut(g, &g->cands[i]);
}

static void conn_free(void *c)
{
	free(c);
}

static void guard_free(struct guard *g)
{
	if (g->fds)
		closedir(g->fds);
	if (g->null_fd >= 0)
		close(g->null_fd);
	if (g->slot >= 0)
		close(g->slot);
	free(g);
}

static void *guard_main(void *arg)
{
	struct guard *g = arg;
	remote *r = g->r;

	pthread_mutex_lock(&r->guard_lock);
	while (!atomic_load(&r->stop)) {
		struct timespec ts;
		uint64_t until = kvfs_mono_ns() + GUARD_EVERY_NS;

		ts.tv_sec = (time_t)(until / 1000000000ull);
		ts.tv_nsec = (long)(until % 1000000000ull);
		pthread_cond_timedwait(&r->guard_cond, &r->guard_lock, &ts);
		if (atomic_load(&r->stop))
			break;
		pthread_mutex_unlock(&r->guard_lock);
		scan(g);
		pthread_mutex_lock(&r->guard_lock);
	}
	pthread_mutex_unlock(&r->guard_lock);
	tdestroy(g->conns, conn_free);
	free(g->cands);
	guard_free(g);
	return NULL;
}

int rdma_guard_start(remote *r)
{
	struct guard *g;
	int rc;

	if (r->max_unproven_conns == 0)
		return 0; /* off */
	g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->r = r;
	g->null_fd = g->slot = -1;
	if (!host_of_sockaddr(r->fab.name, r->fab.name_len, &g->self, &g->port)) {
		log_info("rdma: %s addresses are not IP sockets: connections are not guarded",
			 r->fab.prov);
		free(g);
		return 0;
	}
	g->null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	g->slot = g->null_fd >= 0 ? fcntl(g->null_fd, F_DUPFD_CLOEXEC, 0) : -1;
	g->fds = opendir("/proc/self/fd");
	if (g->null_fd < 0 || g->slot < 0 || !g->fds) {
		rc = -errno;
		log_warn("rdma: cannot guard connections: %s", strerror(-rc));
		guard_free(g);
		return rc;
	}
	rc = pthread_create(&r->guard_thr, NULL, guard_main, g);
	if (rc) {
		guard_free(g);
		return -rc;
	}
	r->guard_started = true;
	return 0;
}

void rdma_guard_stop(remote *r)
{
	if (!r->guard_started)
		return;
	pthread_mutex_lock(&r->guard_lock);
	pthread_cond_broadcast(&r->guard_cond);
	pthread_mutex_unlock(&r->guard_lock);
	pthread_join(r->guard_thr, NULL);
	r->guard_started = false;
}
