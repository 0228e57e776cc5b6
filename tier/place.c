/*
 * tier/place.c — moving a file's bytes between DRAM and NVMe, and the
 * NVMe tier's records.
 *
 * Owns: each object's NVMe copy (o->ext, OBJ_NVME), the NVMe eviction
 * list's order, and the catalog records of NVMe copies.
 *
 * Record (catalog namespace CAT_NS_NVME, key: big-endian u64 object id):
 *   u8 version (1), u8[3] zero, u32 extent count n, then n extents of 32
 *   bytes, all little-endian: u16 dev, u16 flags, u32 npages, u64 page,
 *   u32 len, u32 zero, u64 XXH3-64 of the extent's bytes.
 *
 * Ordering, so that after any crash the catalog names only bytes that are
 * on the device and every byte it names is whole:
 *   store:   nvme_write completes -> the record is committed -> OBJ_NVME;
 *   drop:    the record is deleted (committed) -> the extents are freed;
 *   restart: extents are reserved from the records (nvme_reserve), so the
 *            free map is exactly what the catalog says is in use.
 * A write that fails leaves the file in DRAM only (counted); a read that
 * fails (I/O error or checksum) loses the file unless DRAM has it too: the
 * object is dropped and the owner told, like an eviction.
 *
 * Moves run on the thread that needs them, on an object it claimed
 * (OBJ_BUSY), with no tier lock held during I/O.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/catalog.h"
#include "core/log.h"
#include "core/util.h"
#include "tier/tier_i.h"

#define REC_VERSION  1
#define EXT_BYTES    32
#define EVICT_ROUNDS 8

/* --- records ----------------------------------------------------------------- */

static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint64_t get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;

	for (int i = n - 1; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static uint8_t *rec_encode(const struct nvme_extent *ext, unsigned n, size_t *len)
{
	uint8_t *b = calloc(1, 8 + (size_t)n * EXT_BYTES), *p;

	if (!b)
		return NULL;
	b[0] = REC_VERSION;
	put_le(b + 4, n, 4);
	for (unsigned i = 0; i < n; i++) {
		p = b + 8 + (size_t)i * EXT_BYTES;
		put_le(p, ext[i].dev, 2);
		put_le(p + 2, ext[i].flags, 2);
		put_le(p + 4, ext[i].npages, 4);
		put_le(p + 8, ext[i].page, 8);
		put_le(p + 16, ext[i].len, 4);
		put_le(p + 24, ext[i].csum, 8);
	}
	*len = 8 + (size_t)n * EXT_BYTES;
	return b;
}

static int rec_decode(const uint8_t *b, size_t len, struct nvme_extent **out, unsigned *n)
{
	struct nvme_extent *ext;
	uint64_t cnt;

	if (len < 8 || b[0] != REC_VERSION)
		return -EBADMSG;
	cnt = get_le(b + 4, 4);
	if (cnt == 0 || len != 8 + cnt * EXT_BYTES)
		return -EBADMSG;
	ext = calloc(cnt, sizeof(*ext));
	if (!ext)
		return -ENOMEM;
	for (uint64_t i = 0; i < cnt; i++) {
		const uint8_t *p = b + 8 + i * EXT_BYTES;

		ext[i].dev = (uint16_t)get_le(p, 2);
		ext[i].flags = (uint16_t)get_le(p + 2, 2);
		ext[i].npages = (uint32_t)get_le(p + 4, 4);
		ext[i].page = get_le(p + 8, 8);
		ext[i].len = (uint32_t)get_le(p + 16, 4);
		ext[i].csum = get_le(p + 24, 8);
	}
	*out = ext;
	*n = (unsigned)cnt;
	return 0;
}

static void rec_key(uint8_t key[8], uint64_t id)
{
	cat_be64(key, id);
}

void tier_forget_record(struct cat_batch *b, uint64_t id)
{
	uint8_t key[8];

	rec_key(key, id);
	cat_del(b, CAT_NS_NVME, key, sizeof(key));
}

/* Commit one record change. @return 0 or -EIO. */
static int rec_commit(tier_mgr *m, uint64_t id, const struct nvme_extent *ext, unsigned n)
{
	cat_batch *b = cat_batch_new();
	uint8_t key[8], *val = NULL;
	size_t len = 0;
	int rc;

	rec_key(key, id);
	if (ext) {
		val = rec_encode(ext, n, &len);
		if (!val) {
			cat_batch_free(b);
			return -ENOMEM;
		}
		cat_put(b, CAT_NS_NVME, key, sizeof(key), val, len);
	} else {
		cat_del(b, CAT_NS_NVME, key, sizeof(key));
	}
	rc = cat_commit(m->cat, b, false);
	cat_batch_free(b);
	free(val);
	return rc;
}

/* --- the NVMe list ------------------------------------------------------------- */

static void nvme_list_add(tier_obj *o)
{
	struct policy *p = &o->mgr->nvme_policy;

	pthread_mutex_lock(&p->lock);
	if (!o->npn.linked && !(atomic_load(&o->state) & OBJ_DEAD)) {
		tier_obj_get(o); /* the list's */
		o->npn.hits = o->pn.hits;
		policy_insert_locked(p, &o->npn, o->size);
		atomic_fetch_add(&o->mgr->nvme_files, 1);
	}
	pthread_mutex_unlock(&p->lock);
}

static void nvme_list_del(tier_obj *o)
{
	struct policy *p = &o->mgr->nvme_policy;
	bool linked;

	pthread_mutex_lock(&p->lock);
	linked = o->npn.linked;
	policy_remove_locked(p, &o->npn);
	pthread_mutex_unlock(&p->lock);
	if (linked) {
		atomic_fetch_sub(&o->mgr->nvme_files, 1);
		tier_obj_put(o);
	}
}

/* Free the extents of an object that died (its records went with its owner's). */
void place_free(tier_obj *o)
{
	struct nvme_extent *ext;
	unsigned n;

	pthread_mutex_lock(&o->lock);
	ext = o->ext;
	n = o->next;
	o->ext = NULL;
	o->next = 0;
	free(o->rcache);
	o->rcache = NULL;
	pthread_mutex_unlock(&o->lock);
	if (ext)
		nvme_free(o->mgr->nvme, ext, n);
	free(ext);
}

/*
 * Drop a claimed object's NVMe copy while it stays in DRAM (to make room on
 * NVMe). @return bytes freed, 0 if a lease or a death got in the way.
 */
static uint64_t drop_nvme_copy(tier_obj *o)
{
	tier_mgr *m = o->mgr;
	uint64_t s = atomic_load(&o->state), bytes = 0;
	struct nvme_extent *ext;
	unsigned n;

	/* the record goes first: the catalog never names freed extents */
	if (rec_commit(m, o->id, NULL, 0))
		return 0;
	do {
		if (s & (OBJ_LEASES | OBJ_DEAD))
			return 0; /* a reader may use the NVMe copy; keep it (its record is gone) */
	} while (!atomic_compare_exchange_weak(&o->state, &s, s & ~OBJ_NVME));
	nvme_list_del(o);
	pthread_mutex_lock(&o->lock);
	ext = o->ext;
	n = o->next;
	o->ext = NULL;
	o->next = 0;
	pthread_mutex_unlock(&o->lock);
	for (unsigned i = 0; i < n; i++)
		bytes += (uint64_t)ext[i].npages * m->page_size;
	nvme_free(m->nvme, ext, n);
	free(ext);
	atomic_fetch_add(&m->nvme_evictions, 1);
	return bytes;
}

/*
 * Make @bytes of room on NVMe: take objects in NVMe policy order; one also
 * in DRAM loses its NVMe copy, one only on NVMe is evicted.
 * @return 0 if something was freed, -ENOSPC if nothing could be.
 */
static int nvme_evict(tier_mgr *m, uint64_t bytes, tier_obj *self)
{
	struct policy *p = &m->nvme_policy;
	uint64_t freed = 0;
	struct policy_iter it;
	struct policy_node *n;
	tier_obj *v[64];
	size_t nv = 0;

	pthread_mutex_lock(&p->lock);
	policy_iter_init(p, &it);
	while (freed < bytes && nv < KVFS_ARRAY_SIZE(v) && (n = policy_iter_next(p, &it))) {
		tier_obj *o = container_of(n, tier_obj, npn);

		if (o == self || !obj_try_claim(o, OBJ_NVME, OBJ_PINNED | OBJ_LEASES))
			continue;
		tier_obj_get(o);
		v[nv++] = o;
		freed += o->size;
	}
	pthread_mutex_unlock(&p->lock);
	freed = 0;
	for (size_t i = 0; i < nv; i++) {
		tier_obj *o = v[i];

		if (atomic_load(&o->state) & OBJ_DRAM) {
			freed += drop_nvme_copy(o);
			obj_unclaim(o);
		} else {
			uint64_t sz = o->size;

			/* Its last copy here: the owner may place it elsewhere first. */
			if (m->cb.spill)
				m->cb.spill(m->cb.ctx, o);
			if (obj_kill_claimed(o, true) == 0) {
				freed += sz;
				atomic_fetch_add(&m->nvme_evictions, 1);
			}
		}
		tier_obj_put(o);
	}
	return freed ? 0 : -ENOSPC;
}

/* --- store: DRAM -> NVMe ------------------------------------------------------------- */

int place_store(tier_obj *o, bool evict)
{
	tier_mgr *m = o->mgr;
	struct nvme_extent *ext = NULL;
	struct iovec iov;
	unsigned n = 0;
	int rc;

	if (o->size == 0)
		return -EINVAL; /* nothing to store; an empty file costs no DRAM */
	if (nvme_full(m->nvme))
		return -ENOSPC;
	rc = nvme_alloc(m->nvme, o->size, &ext, &n);
	for (int round = 0; rc == -ENOSPC && evict && round < EVICT_ROUNDS; round++) {
		if (nvme_evict(m, o->size, o))
			break;
		rc = nvme_alloc(m->nvme, o->size, &ext, &n);
	}
	if (rc)
		return rc;
	/* A claimed, sealed object in DRAM: its file stays put while we write. */
	pthread_mutex_lock(&o->lock);
	rc = obj_map_locked(o);
	iov.iov_base = o->map;
	iov.iov_len = (size_t)o->size;
	pthread_mutex_unlock(&o->lock);
	if (!rc)
		rc = nvme_write(m->nvme, ext, n, &iov, 1);
	pthread_mutex_lock(&o->lock);
	obj_file_idle_locked(o);
	pthread_mutex_unlock(&o->lock);
	if (!rc) {
		rc = rec_commit(m, o->id, ext, n);
		if (rc)
			atomic_fetch_add(&m->cat_errors, 1);
	}
	if (rc) {
		nvme_free(m->nvme, ext, n);
		free(ext);
		atomic_fetch_add(&m->nvme_write_errors, 1);
		log_warn("NVMe: file %llu stays in DRAM only: %s", (unsigned long long)o->id,
			 strerror(-rc));
		return rc;
	}
	pthread_mutex_lock(&o->lock);
	o->ext = ext;
	o->next = n;
	pthread_mutex_unlock(&o->lock);
	atomic_fetch_or(&o->state, OBJ_NVME);
	if (atomic_fetch_and(&o->state, ~OBJ_PENDING) & OBJ_PENDING)
		atomic_fetch_sub(&m->not_durable, 1); /* durable at last */
	nvme_list_add(o);
	return 0;
}

void place_pending(tier_obj *o)
{
	tier_mgr *m = o->mgr;

	if (!(atomic_fetch_or(&o->state, OBJ_PENDING) & OBJ_PENDING)) {
		atomic_fetch_add(&m->persist_failed, 1);
		atomic_fetch_add(&m->not_durable, 1);
	}
}

/* How long tier_persist() waits for another thread's move of the object. */
#define PERSIST_WAIT_US (5 * 1000 * 1000)

int tier_persist(tier_obj *o)
{
	tier_mgr *m = o->mgr;
	unsigned waited = 0;
	int rc;

	if (!m->nvme)
		return -EOPNOTSUPP;
	for (;;) {
		uint64_t s = atomic_load(&o->state);

		if (s & OBJ_DEAD)
			return -ENOENT;
		if (!(s & OBJ_SEALED))
			return -EINVAL;
		if ((s & OBJ_NVME) || tier_size(o) == 0)
			return 0;
		/* in DRAM, or only in a GPU pool (then written down first, below) */
		if (obj_try_claim(o, (s & OBJ_DRAM) ? OBJ_DRAM : OBJ_GPU, OBJ_NVME))
			break;
		/* Another thread is moving it (a demotion writing it): let it finish. */
		if (waited >= PERSIST_WAIT_US)
			return -EBUSY;
		usleep(1000);
		waited += 1000;
	}
	rc = tier_nvme_backend.store(o, true); /* writes a GPU-only file down first */
	if (rc)
		place_pending(o);
	obj_unclaim(o);
	return rc;
}

int tier_sync(tier_mgr *m)
{
	return m->nvme ? nvme_sync(m->nvme) : 0;
}

uint64_t tier_retry_persist(tier_mgr *m)
{
	struct policy *p = &m->policy;
	struct policy_node *n;
	struct policy_iter it;
	tier_obj *v[64];
	size_t nv = 0;

	if (!m->nvme || !atomic_load(&m->not_durable))
		return 0;
	/* A bounded batch per call: the caller comes back while any is left. */
	pthread_mutex_lock(&p->lock);
	policy_iter_init(p, &it);
	while (nv < KVFS_ARRAY_SIZE(v) && (n = policy_iter_next(p, &it))) {
		tier_obj *o = container_of(n, tier_obj, pn);

		if (!obj_try_claim(o, OBJ_DRAM | OBJ_PENDING, OBJ_NVME))
			continue;
		tier_obj_get(o);
		v[nv++] = o;
	}
	pthread_mutex_unlock(&p->lock);
	for (size_t i = 0; i < nv; i++) {
		place_store(v[i], true); /* success clears OBJ_PENDING */
		obj_unclaim(v[i]);
		tier_obj_put(v[i]);
	}
	return atomic_load(&m->not_durable);
}

/* --- demote and promote ------------------------------------------------------------ */

int place_demote(tier_obj *o)
{
	tier_mgr *m = o->mgr;
	uint64_t s = atomic_load(&o->state);

	do {
		if (s & (OBJ_LEASES | OBJ_DEAD)) {
			obj_unclaim(o);
			return -EBUSY;
		}
	} while (!atomic_compare_exchange_weak(&o->state, &s, s & ~OBJ_DRAM));
	/* No lease, no DRAM bit: nobody can be using the file. */
	{
		struct policy *p = &m->policy;
		bool linked;

		pthread_mutex_lock(&p->lock);
		linked = o->pn.linked;
		policy_remove_locked(p, &o->pn);
		pthread_mutex_unlock(&p->lock);
		if (linked)
			tier_obj_put(o);
	}
	if ((s & OBJ_PINNED) && (s & OBJ_SEALED))
		atomic_fetch_sub(&m->pinned_bytes, tier_dram_bytes(o));
	obj_release_pages(o);
	atomic_fetch_add(&m->demotions, 1);
	if (m->cb.moved)
		m->cb.moved(m->cb.ctx, o);
	obj_unclaim(o);
	return 0;
}

/* The object is lost: drop it and tell the owner, as an eviction would. */
static void lose(tier_obj *o, int why)
{
	tier_mgr *m = o->mgr;
	tier_obj *self = o;

	/* Readers of several extents fail together: one loss, one count. */
	if (atomic_fetch_or(&o->state, OBJ_LOST) & OBJ_LOST)
		return;
	atomic_fetch_add(&m->nvme_read_errors, 1);
	atomic_fetch_add(&m->lost, 1);
	log_err("NVMe: file %llu dropped: its only copy failed (%s)", (unsigned long long)o->id,
		strerror(-why));
	tier_obj_get(o);
	tier_drop(o);
	if (m->cb.evicted)
		m->cb.evicted(m->cb.ctx, &self, 1);
	tier_obj_put(o);
}

/* obj_dram_fill's source for a promotion: the NVMe copy, checked as it is read. */
static int nvme_fill(tier_obj *o, uint64_t off, void *buf, uint64_t len)
{
	struct iovec iov = {.iov_base = buf, .iov_len = (size_t)len};
	int rc;

	(void)off; /* always the whole file */
	rc = nvme_read(o->mgr->nvme, o->ext, o->next, &iov, 1);
	if (rc)
		lose(o, rc);
	return rc;
}

int place_promote(tier_obj *o, bool clean)
{
	int rc;

	if (o->size == 0)
		return 0;
	rc = obj_dram_fill(o, clean, nvme_fill);
	if (!rc)
		atomic_fetch_add(&o->mgr->promotions, 1);
	return rc;
}

/* --- reads from NVMe --------------------------------------------------------------- */

/*
 * A thread's spare extent buffer, traded with an object's cache. Kept in a
 * thread-specific slot so the buffer is freed when a FUSE worker exits.
 */
static pthread_key_t spare_key;
static pthread_once_t spare_once = PTHREAD_ONCE_INIT;

static void spare_key_init(void)
{
	(void)pthread_key_create(&spare_key, free);
}

/*
 * Read [off, off + len) from the NVMe copy. Whole extents are read (a
 * checksum covers an extent). The object's read cache keeps the extent read
 * last: the kernel's first read-ahead requests of a file are smaller than an
 * extent and would read it again for each piece. Reads of different
 * extents run in parallel: the I/O goes into the thread's spare buffer,
 * which then trades places with the cache. The caller holds a lease, so the
 * extents stay; o->lock guards the cache.
 */
ssize_t place_read(tier_obj *o, uint64_t off, void *buf, size_t len)
{
	tier_mgr *m = o->mgr;
	size_t cache_bytes = (size_t)m->nvme_extent_pages * m->page_size;
	uint64_t pos = 0, end;
	size_t done = 0;
	uint8_t *spare;
	int rc = 0;

	pthread_once(&spare_once, spare_key_init);
	spare = pthread_getspecific(spare_key);
	if (!(atomic_load(&o->state) & OBJ_NVME))
		return (atomic_load(&o->state) & OBJ_DEAD) ? -ENOENT : 0;
	if (off >= o->size)
		return 0;
	end = KVFS_MIN(o->size, off + len);
	for (unsigned i = 0; i < o->next && pos < end && !rc; i++) {
		const struct nvme_extent *e = &o->ext[i];
		uint64_t e_end = pos + e->len, from, to;
		bool hit;

		if (e_end <= off) {
			pos = e_end;
			continue;
		}
		from = KVFS_MAX(off, pos);
		to = KVFS_MIN(end, e_end);
		/* A whole extent into an aligned buffer: straight there, no copy. */
		if (from == pos && to == e_end && !(((uintptr_t)buf + (from - off)) & 4095)) {
			struct iovec v = {(uint8_t *)buf + (from - off), e->len};

			rc = nvme_read(m->nvme, e, 1, &v, 1);
			if (rc)
				break;
			done += to - from;
			pos = e_end;
			continue;
		}
		pthread_mutex_lock(&o->lock);
		hit = o->rcache && o->rcache_ext == (int)i;
		if (hit)
			memcpy((uint8_t *)buf + (from - off), o->rcache + (from - pos), to - from);
		pthread_mutex_unlock(&o->lock);
		if (!hit) {
			struct iovec v;

			if (!spare) {
				if (posix_memalign((void **)&spare, 4096, cache_bytes)) {
					rc = -ENOMEM;
					break;
				}
				(void)pthread_setspecific(spare_key, spare);
			}
			v.iov_base = spare;
			v.iov_len = e->len;
			rc = nvme_read(m->nvme, e, 1, &v, 1);
			if (rc)
				break;
			memcpy((uint8_t *)buf + (from - off), spare + (from - pos), to - from);
			pthread_mutex_lock(&o->lock);
			{
				uint8_t *old = o->rcache;

				o->rcache = spare;
				o->rcache_ext = (int)i;
				spare = old; /* NULL: allocated again next time */
			}
			pthread_mutex_unlock(&o->lock);
			(void)pthread_setspecific(spare_key, spare);
		}
		done += to - from;
		pos = e_end;
	}
	if (rc == -ENOMEM)
		return rc;
	if (rc) {
		/* EIO or a bad checksum: no other copy (it is not in DRAM) */
		lose(o, rc);
		return -EIO;
	}
	return (ssize_t)done;
}

/* The last lease went: let the read cache go (tier.c calls this). */
void place_unleased(tier_obj *o)
{
	uint8_t *c = NULL;

	pthread_mutex_lock(&o->lock);
	if (!(atomic_load(&o->state) & OBJ_LEASES)) {
		c = o->rcache;
		o->rcache = NULL;
		o->rcache_ext = -1;
	}
	pthread_mutex_unlock(&o->lock);
	free(c);
}

/*
 * Check an object's NVMe copy: read every extent, verify its checksum. A
 * bad copy is dropped: the object keeps its DRAM copy if it has one, else
 * it is lost (and the owner told). The caller holds a lease.
 * @return 0; -EBADMSG (bad copy dropped, the file lives on in DRAM); -EIO
 * (the file is lost).
 */
int tier_verify(tier_obj *o)
{
	tier_mgr *m = o->mgr;
	uint8_t *buf = NULL;
	int rc = 0;

	if (!(atomic_load(&o->state) & OBJ_NVME))
		return 0;
	for (unsigned i = 0; i < o->next && !rc; i++) {
		const struct nvme_extent *e = &o->ext[i];
		size_t need = (size_t)e->npages * m->page_size;
		struct iovec v;

		free(buf);
		buf = NULL;
		if (posix_memalign((void **)&buf, 4096, need)) {
			buf = NULL;
			rc = -ENOMEM;
			break;
		}
		v.iov_base = buf;
		v.iov_len = e->len;
		rc = nvme_read(m->nvme, e, 1, &v, 1);
	}
	free(buf);
	if (!rc || rc == -ENOMEM)
		return rc;
	if (atomic_load(&o->state) & OBJ_DRAM) {
		atomic_fetch_add(&m->nvme_read_errors, 1);
		if (obj_try_claim(o, OBJ_NVME, 0)) {
			/* not drop_nvme_copy(): our own lease is on it */
			rec_commit(m, o->id, NULL, 0);
			atomic_fetch_and(&o->state, ~OBJ_NVME);
			nvme_list_del(o);
			place_free(o);
			obj_unclaim(o);
		}
		return -EBADMSG;
	}
	lose(o, rc);
	return -EIO;
}

/* --- recovery and shutdown ------------------------------------------------------------ */

struct scan {
	tier_mgr *m;
	size_t cap;
	uint64_t bad;
};

static int scan_rec(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
	struct scan *sc = arg;
	tier_mgr *m = sc->m;
	struct nvme_rec *r;

	if (klen != 8) {
		sc->bad++;
		return 0;
	}
	if (m->nrecs == sc->cap) {
		size_t nc = sc->cap ? sc->cap * 2 : 1024;
		struct nvme_rec *p = realloc(m->recs, nc * sizeof(*p));

		if (!p)
			return -ENOMEM;
		m->recs = p;
		sc->cap = nc;
	}
	r = &m->recs[m->nrecs];
	memset(r, 0, sizeof(*r));
	r->id = cat_get_be64(key);
	if (rec_decode(val, vlen, &r->ext, &r->n)) {
		r->ext = NULL; /* kept so recover_end deletes it */
		sc->bad++;
	}
	m->nrecs++;
	return 0;
}

int tier_recover_begin(tier_mgr *m)
{
	struct scan sc = {.m = m};
	int rc;

	if (!m->nvme)
		return 0;
	rc = cat_scan(m->cat, CAT_NS_NVME, NULL, 0, scan_rec, &sc);
	if (sc.bad)
		log_warn("NVMe: %llu damaged records will be deleted", (unsigned long long)sc.bad);
	return rc;
}

static struct nvme_rec *rec_find(tier_mgr *m, uint64_t id)
{
	size_t lo = 0, hi = m->nrecs;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (m->recs[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < m->nrecs && m->recs[lo].id == id ? &m->recs[lo] : NULL;
}

int place_recover(tier_mgr *m, uint64_t id, uint64_t size, uint32_t hits, void *owner,
		  tier_obj **out)
{
	struct nvme_rec *r = m->nvme ? rec_find(m, id) : NULL;
	uint64_t total = 0;
	tier_obj *o;
	int rc;

	if (size == 0 && m->nvme) {
		/* An empty file needs no bytes: with a persistent tier it comes back whole. */
		rc = tier_obj_new(m, owner, id, &o);
		if (rc)
			return rc;
		o->pn.hits = hits;
		atomic_store(&o->state, OBJ_SEALED | OBJ_DRAM);
		atomic_fetch_add(&m->sealed, 1);
		pthread_mutex_lock(&m->policy.lock);
		tier_obj_get(o); /* the list's */
		policy_insert_locked(&m->policy, &o->pn, 0);
		pthread_mutex_unlock(&m->policy.lock);
		*out = o;
		return 0; /* a stray record of it stays unclaimed: deleted at the end */
	}
	if (!r)
		return -ENOENT;
	if (!r->ext)
		return -EUCLEAN; /* undecodable: left unclaimed, deleted at the end */
	for (unsigned i = 0; i < r->n; i++)
		total += r->ext[i].len;
	if (total != size || size == 0)
		return -EUCLEAN;
	rc = nvme_reserve(m->nvme, r->ext, r->n);
	if (rc)
		return -EUCLEAN;
	rc = tier_obj_new(m, owner, id, &o);
	if (rc) {
		nvme_free(m->nvme, r->ext, r->n);
		return rc;
	}
	r->claimed = true;
	o->ext = r->ext;
	o->next = r->n;
	r->ext = NULL;
	o->size = size;
	o->pn.hits = hits;
	atomic_store(&o->state, OBJ_SEALED | OBJ_NVME);
	atomic_fetch_add(&m->sealed, 1);
	nvme_list_add(o);
	*out = o;
	return 0;
}

void tier_recover_end(tier_mgr *m, struct cat_batch *b)
{
	uint64_t orphans = 0;

	for (size_t i = 0; i < m->nrecs; i++) {
		if (!m->recs[i].claimed) {
			tier_forget_record(b, m->recs[i].id);
			orphans++;
		}
		free(m->recs[i].ext);
	}
	if (orphans)
		log_info("NVMe: %llu records without a file deleted", (unsigned long long)orphans);
	free(m->recs);
	m->recs = NULL;
	m->nrecs = 0;
}

struct fsck_scan {
	struct nvme_store *nv;
	uint32_t page_size;
	int64_t (*size_of)(void *, uint64_t);
	void (*bad)(void *, uint64_t);
	void *ctx;
	bool verify;
	struct cat_batch *fix;
	struct tier_fsck *rep;
	uint8_t *buf;
};

static int fsck_rec(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
	struct fsck_scan *f = arg;
	struct tier_fsck *r = f->rep;
	struct nvme_extent *ext = NULL;
	uint64_t id = klen == 8 ? cat_get_be64(key) : 0, total = 0;
	int64_t size;
	unsigned n = 0;
	bool ok = true;

	r->records++;
	if (klen != 8 || rec_decode(val, vlen, &ext, &n)) {
		r->undecodable++;
		cat_del(f->fix, CAT_NS_NVME, key, klen);
		if (klen == 8)
			f->bad(f->ctx, id);
		return 0;
	}
	size = f->size_of(f->ctx, id);
	for (unsigned i = 0; i < n; i++)
		total += ext[i].len;
	if (size < 0) {
		r->orphans++;
		ok = false;
	} else if ((uint64_t)size != total) {
		r->size_mismatch++;
		ok = false;
	} else if (nvme_reserve(f->nv, ext, n)) {
		r->overlaps++;
		ok = false;
	}
	for (unsigned i = 0; ok && f->verify && i < n; i++) {
		struct iovec v = {f->buf, ext[i].len};
		int rc = nvme_read(f->nv, &ext[i], 1, &v, 1);

		if (rc == -EBADMSG)
			r->bad_checksums++;
		else if (rc)
			r->read_errors++;
		ok = rc == 0;
	}
	if (ok) {
		r->extents += n;
		r->bytes += total;
	} else {
		cat_del(f->fix, CAT_NS_NVME, key, klen);
		if (size >= 0)
			f->bad(f->ctx, id);
	}
	free(ext);
	return 0;
}

int tier_fsck(const struct tier_config *cfg, struct cat *c, int64_t (*size_of)(void *, uint64_t),
	      void (*bad)(void *, uint64_t), void *ctx, bool verify, struct cat_batch *fix,
	      struct tier_fsck *rep, char *err, size_t errlen)
{
	uint32_t ps = cfg->page_size ? cfg->page_size : (64u << 10);
	uint32_t extent_pages = ps >= (1u << 20) ? 1 : (1u << 20) / ps;
	struct nvme_dev_config devs[16];
	struct fsck_scan f = {.page_size = ps, .size_of = size_of, .bad = bad, .ctx = ctx,
			      .verify = verify, .fix = fix, .rep = rep};
	int rc;

	memset(rep, 0, sizeof(*rep));
	if (!cfg->nvme_count)
		return 0;
	if (cfg->nvme_count > KVFS_ARRAY_SIZE(devs))
		return -EINVAL;
	for (unsigned i = 0; i < cfg->nvme_count; i++) {
		devs[i].dir = cfg->nvme[i].dir;
		devs[i].bytes = cfg->nvme[i].bytes;
	}
	rc = nvme_open(devs, cfg->nvme_count, ps, extent_pages, &f.nv, err, errlen);
	if (rc)
		return rc;
	if (posix_memalign((void **)&f.buf, 4096, (size_t)extent_pages * ps)) {
		nvme_close(f.nv);
		return -ENOMEM;
	}
	rc = cat_scan(c, CAT_NS_NVME, NULL, 0, fsck_rec, &f);
	free(f.buf);
	nvme_close(f.nv);
	return rc;
}

void tier_flush(tier_mgr *m)
{
	struct policy *p = &m->policy;
	struct policy_node *n;
	struct policy_iter it;
	tier_obj **v = NULL;
	size_t nv = 0, cap = 0, stored = 0;

	if (!m->nvme)
		return;
	pthread_mutex_lock(&p->lock);
	policy_iter_init(p, &it);
	while ((n = policy_iter_next(p, &it))) {
		tier_obj *o = container_of(n, tier_obj, pn);

		if (nv == cap) {
			size_t nc = cap ? cap * 2 : 256;
			tier_obj **a = realloc(v, nc * sizeof(*v));

			if (!a)
				break;
			v = a;
			cap = nc;
		}
		if (!obj_try_claim(o, OBJ_DRAM, OBJ_NVME))
			continue;
		tier_obj_get(o);
		v[nv++] = o;
	}
	pthread_mutex_unlock(&p->lock);
	/* most valuable last in policy order: store from the end while room lasts */
	for (size_t i = nv; i-- > 0;) {
		if (place_store(v[i], false) == 0)
			stored++;
		obj_unclaim(v[i]);
		tier_obj_put(v[i]);
	}
	free(v);
	stored += gpu_flush(m); /* files only in a GPU pool */
	if (nvme_sync(m->nvme))
		log_err("NVMe: sync at shutdown failed");
	log_info("NVMe: %zu DRAM-only files written at shutdown", stored);
}
