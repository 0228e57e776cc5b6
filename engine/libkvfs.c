/*
 * engine/libkvfs.c — libkvfs: namespaces, matching, layer-wise loads and
 * background saves of native KV blocks.
 *
 * Owns the namespace handle, its save queue and writer thread, matches
 * (open files, so held blocks cannot be evicted) and loads (one thread
 * each, copying layer by layer into engine memory).
 *
 * Files: `<dir>/<key hex>` in the native block format (include/kvfs/format.h).
 * Saves write `<dir>/.<key hex>.<pid>.<n>.tmp` and rename it into place, the
 * idiom every engine connector uses, so a reader never sees a partial block
 * and the daemon validates each block as it is published.
 *
 * Trust: nothing read is used before it is checked. A loaded block must
 * parse, carry the expected key and this namespace's layout, and each layer
 * must match its checksum before it is copied into engine memory; anything
 * else is reported as a miss (-EBADMSG) and counted.
 *
 * Locking: save_lock guards the save queue and slot lists; a load's lock
 * guards its progress. Matches and loads are owned by one caller thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/libkvfs_i.h"

#define DEFAULT_SAVE_QUEUE 64
#define MAX_MATCH          65536
#define HEADER_PROBE       4096u
#define MAX_EXTRA          1024u /* extra-keys bytes a saved block may carry */
#define KVFS_ALIGN_UP(x, a) (((x) + (a)-1) / (a) * (a))

static _Atomic uint64_t tmp_counter;

/* --- small helpers --------------------------------------------------------- */

static int mkdir_p(const char *path)
{
	char *copy = strdup(path), *p;
	int rc = 0;

	if (!copy)
		return -ENOMEM;
	for (p = copy + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(copy, 0755) && errno != EEXIST)
			rc = -errno;
		*p = '/';
		if (rc)
			goto out;
	}
	if (mkdir(copy, 0755) && errno != EEXIST)
		rc = -errno;
out:
	free(copy);
	return rc;
}

static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (uint8_t *)buf + done, len - done, (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EBADMSG; /* shorter than its header says */
		done += (size_t)n;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = write(fd, (const uint8_t *)buf + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		done += (size_t)n;
	}
	return 0;
}

static bool same_layout(const struct kvfs_layout *a, const struct kvfs_layout *b)
{
	return strncmp(a->model_id, b->model_id, KVFS_MODEL_ID_BYTES) == 0 &&
	       a->num_layers == b->num_layers && a->num_kv_heads == b->num_kv_heads &&
	       a->head_dim == b->head_dim && a->tokens_per_block == b->tokens_per_block &&
	       a->dtype == b->dtype && a->kind == b->kind;
}

/* Copy one block's layer between its file segment and engine memory. */
static void scatter(const kvfs_ns *ns, const struct kvfs_kv_layer *ly, uint32_t block,
		    const uint8_t *seg)
{
	uint8_t *k = (uint8_t *)ly->k + (size_t)block * ly->block_stride;
	uint8_t *v = ly->v ? (uint8_t *)ly->v + (size_t)block * ly->block_stride : NULL;
	uint32_t t, T = ns->layout.tokens_per_block;

	if (ly->token_stride == ns->row_bytes) {
		memcpy(k, seg, ns->part_bytes);
		if (v)
			memcpy(v, seg + ns->part_bytes, ns->part_bytes);
		return;
	}
	for (t = 0; t < T; t++) {
		memcpy(k + t * ly->token_stride, seg + t * ns->row_bytes, ns->row_bytes);
		if (v)
			memcpy(v + t * ly->token_stride, seg + ns->part_bytes + t * ns->row_bytes,
			       ns->row_bytes);
	}
}

static void gather(const kvfs_ns *ns, const struct kvfs_kv_layer *ly, uint32_t block, uint8_t *seg)
{
	const uint8_t *k = (const uint8_t *)ly->k + (size_t)block * ly->block_stride;
	const uint8_t *v = ly->v ? (const uint8_t *)ly->v + (size_t)block * ly->block_stride : NULL;
	uint32_t t, T = ns->layout.tokens_per_block;

	if (ly->token_stride == ns->row_bytes) {
		memcpy(seg, k, ns->part_bytes);
		if (v)
			memcpy(seg + ns->part_bytes, v, ns->part_bytes);
		return;
	}
	for (t = 0; t < T; t++) {
		memcpy(seg + t * ns->row_bytes, k + t * ly->token_stride, ns->row_bytes);
		if (v)
			memcpy(seg + ns->part_bytes + t * ns->row_bytes, v + t * ly->token_stride,
			       ns->row_bytes);
	}
}

/* Check a caller's page description against the layout. */
static int check_pages(const kvfs_ns *ns, const struct kvfs_kv_pages *p)
{
	bool mla = ns->layout.kind == KVFS_KIND_MLA;

	if (!p || !p->layers)
		return -EINVAL;
	for (uint32_t l = 0; l < ns->layout.num_layers; l++) {
		const struct kvfs_kv_layer *ly = &p->layers[l];

		size_t span = (size_t)(ns->layout.tokens_per_block - 1) * ly->token_stride +
			      ns->row_bytes; /* one block's rows */

		if (!ly->k || (!mla && !ly->v) || (mla && ly->v) ||
		    ly->token_stride < ns->row_bytes || ly->block_stride < span)
			return -EINVAL;
	}
	return 0;
}

/* --- namespace --------------------------------------------------------------- */

static void *saver_main(void *arg);

int kvfs_ns_open(const struct kvfs_ns_options *opt, kvfs_ns **out)
{
	const char *why;
	kvfs_ns *ns;
	int rc;

	if (!opt || !opt->dir || !opt->seed || !out || opt->path > KVFS_PATH_FAST)
		return -EINVAL;
	if (kvfs_layout_check(&opt->layout, &why))
		return -EINVAL;
	ns = calloc(1, sizeof(*ns));
	if (!ns)
		return -ENOMEM;
	ns->dirfd = -1;
	ns->layout = opt->layout;
	ns->dir = strdup(opt->dir);
	if (!ns->dir) {
		rc = -ENOMEM;
		goto out_free;
	}
	rc = kvfs_key_root(opt->seed, &ns->root);
	if (rc)
		goto out_free;
	rc = mkdir_p(opt->dir);
	if (rc)
		goto out_free;
	ns->dirfd = open(opt->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (ns->dirfd < 0) {
		rc = -errno;
		goto out_free;
	}
	ns->row_bytes = (size_t)ns->layout.num_kv_heads * ns->layout.head_dim *
			kvfs_dtype_size(ns->layout.dtype);
	ns->part_bytes = ns->row_bytes * ns->layout.tokens_per_block;
	ns->layer_bytes = kvfs_layout_layer_bytes(&ns->layout);
	ns->layer_stride = (ns->layer_bytes + KVFS_BLOCK_ALIGN - 1) / KVFS_BLOCK_ALIGN *
			   KVFS_BLOCK_ALIGN;
	ns->header_bytes = kvfs_layout_header_bytes(&ns->layout, 0);
	ns->block_bytes = kvfs_layout_file_bytes(&ns->layout, 0);
	ns->slots_max = opt->save_queue ? opt->save_queue : DEFAULT_SAVE_QUEUE;
	if (opt->path != KVFS_PATH_POSIX) {
		rc = fast_open(ns, opt->path == KVFS_PATH_FAST);
		if (rc)
			goto out_free;
	}
	pthread_mutex_init(&ns->save_lock, NULL);
	pthread_cond_init(&ns->save_cond, NULL);
	rc = pthread_create(&ns->saver, NULL, saver_main, ns);
	if (rc) {
		rc = -rc;
		goto out_free;
	}
	ns->saver_started = true;
	*out = ns;
	return 0;

out_free:
	kvfs_ns_close(ns);
	return rc;
}

void kvfs_ns_close(kvfs_ns *ns)
{
	if (!ns)
		return;
	if (ns->saver_started) {
		kvfs_save_flush(ns);
		pthread_mutex_lock(&ns->save_lock);
		ns->stopping = true;
		pthread_cond_broadcast(&ns->save_cond);
		pthread_mutex_unlock(&ns->save_lock);
		pthread_join(ns->saver, NULL);
		pthread_mutex_destroy(&ns->save_lock);
		pthread_cond_destroy(&ns->save_cond);
	}
	if (ns->slot_region)
		kvfs_free(ns, ns->slot_region, ns->slot_region_bytes);
	free(ns->slots);
	fast_close(ns);
	if (ns->dirfd >= 0)
		close(ns->dirfd);
	free(ns->dir);
	free(ns);
}

const kvfs_key *kvfs_ns_root(const kvfs_ns *ns)
{
	return &ns->root;
}

uint64_t kvfs_ns_block_bytes(const kvfs_ns *ns)
{
	return ns->block_bytes;
}

int kvfs_ns_is_fast(const kvfs_ns *ns)
{
	return fast_up((kvfs_ns *)ns);
}

long kvfs_ns_keys(kvfs_ns *ns, const uint32_t *tokens, size_t ntokens,
		  const struct kvfs_key_extra *extra, kvfs_key *out, size_t max)
{
	if (!ns)
		return -EINVAL;
	return kvfs_key_chain(&ns->root, 0, tokens, ntokens, ns->layout.tokens_per_block, extra,
			      out, max);
}

void kvfs_ns_get_stats(kvfs_ns *ns, struct kvfs_ns_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->matches = atomic_load(&ns->st.matches);
	st->keys_asked = atomic_load(&ns->st.keys_asked);
	st->keys_matched = atomic_load(&ns->st.keys_matched);
	st->loads = atomic_load(&ns->st.loads);
	st->blocks_loaded = atomic_load(&ns->st.blocks_loaded);
	st->bytes_loaded = atomic_load(&ns->st.bytes_loaded);
	st->load_errors = atomic_load(&ns->st.load_errors);
	st->saves_queued = atomic_load(&ns->st.saves_queued);
	st->saves_present = atomic_load(&ns->st.saves_present);
	st->saves_dropped = atomic_load(&ns->st.saves_dropped);
	st->saves_written = atomic_load(&ns->st.saves_written);
	st->save_errors = atomic_load(&ns->st.save_errors);
	st->reconnects = atomic_load(&ns->st.reconnects);
	st->fast = kvfs_ns_is_fast(ns);
}

/* --- memory ---------------------------------------------------------------- */

void *kvfs_alloc(kvfs_ns *ns, size_t bytes)
{
	void *p;

	if (!ns || !bytes) {
		errno = EINVAL;
		return NULL;
	}
	/* On the fast path: shared memory the daemon copies blocks straight into. */
	if (ns->fast && (p = fast_alloc(ns, bytes)))
		return p;
	p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

void kvfs_free(kvfs_ns *ns, void *mem, size_t bytes)
{
	if (mem && !fast_free(ns, mem))
		munmap(mem, bytes);
}

/* --- match ------------------------------------------------------------------ */

long kvfs_match_prefix(kvfs_ns *ns, const kvfs_key *keys, size_t n, kvfs_match **out)
{
	char hex[KVFS_KEY_HEX + 1];
	kvfs_match *m;
	size_t i;

	if (!ns || !out || (n && !keys) || n > MAX_MATCH)
		return -EINVAL;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->ns = ns;
	m->keys = malloc(sizeof(*m->keys) * (n ? n : 1));
	m->fds = malloc(sizeof(*m->fds) * (n ? n : 1));
	if (!m->keys || !m->fds) {
		kvfs_match_release(m);
		return -ENOMEM;
	}
	if (n)
		memcpy(m->keys, keys, sizeof(*keys) * n);
	for (i = 0; i < n; i++)
		m->fds[i] = -1;
	if (fast_up(ns)) {
		long got = fast_match(ns, keys, n, &m->fast_id, &m->gen);

		if (got >= 0) {
			m->fast = true;
			i = (size_t)got;
			goto out;
		}
		/* the daemon went away: carry on through the mount */
	}
	/* An open file is a held one: the daemon never evicts open files. */
	for (i = 0; i < n; i++) {
		int fd;

		kvfs_key_to_hex(&keys[i], hex);
		fd = openat(ns->dirfd, hex, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			break;
		m->fds[i] = fd;
	}
out:
	m->n = i;
	atomic_fetch_add(&ns->st.matches, 1);
	atomic_fetch_add(&ns->st.keys_asked, n);
	atomic_fetch_add(&ns->st.keys_matched, m->n);
	*out = m;
	return (long)m->n;
}

size_t kvfs_match_len(const kvfs_match *m)
{
	return m ? m->n : 0;
}

void kvfs_match_release(kvfs_match *m)
{
	if (!m)
		return;
	if (m->fast)
		fast_release(m->ns, m->fast_id, m->gen);
	for (size_t i = 0; i < m->n; i++)
		if (m->fds[i] >= 0)
			close(m->fds[i]);
	free(m->keys);
	free(m->fds);
	free(m);
}

/* --- load -------------------------------------------------------------------- */

static void load_progress(kvfs_load *ld, unsigned layers_done, int error)
{
	pthread_mutex_lock(&ld->lock);
	if (error && !ld->error)
		ld->error = error;
	if (!ld->error)
		ld->layers_done = layers_done;
	pthread_cond_broadcast(&ld->cond);
	pthread_mutex_unlock(&ld->lock);
}

/* Read and check block @i's header; copy its layer table into @table. */
static int load_header(kvfs_load *ld, size_t i, uint8_t *hdr, uint8_t *table)
{
	kvfs_ns *ns = ld->m->ns;
	int fd = ld->m->fds[ld->first + i];
	struct kvfs_block_info bi;
	const char *why;
	struct stat st;
	int rc;

	if (fstat(fd, &st))
		return -errno;
	rc = pread_full(fd, hdr, HEADER_PROBE, 0);
	if (rc)
		return rc;
	rc = kvfs_block_parse_header(hdr, HEADER_PROBE, (uint64_t)st.st_size, &bi, &why);
	if (rc == -EAGAIN && bi.header_bytes <= KVFS_BLOCK_MAX_HEADER) {
		rc = pread_full(fd, hdr, bi.header_bytes, 0);
		if (!rc)
			rc = kvfs_block_parse_header(hdr, bi.header_bytes, (uint64_t)st.st_size, &bi,
						     &why);
	}
	if (rc)
		return rc == -EAGAIN ? -EBADMSG : rc;
	if (memcmp(&bi.key, &ld->m->keys[ld->first + i], sizeof(kvfs_key)) != 0 ||
	    !same_layout(&bi.layout, &ns->layout))
		return -EBADMSG; /* a block, but not the one this key names here */
	memcpy(table, bi.layer_table, (size_t)ns->layout.num_layers * 16);
	return 0;
}

/*
 * A block that failed its checks is removed (best effort), so the next save
 * of that key can replace it instead of finding it present forever.
 */
static void drop_block(kvfs_load *ld, size_t i)
{
	char hex[KVFS_KEY_HEX + 1];

	kvfs_key_to_hex(&ld->m->keys[ld->first + i], hex);
	unlinkat(ld->m->ns->dirfd, hex, 0);
}

static void *load_main(void *arg)
{
	kvfs_load *ld = arg;
	kvfs_ns *ns = ld->m->ns;
	uint32_t L = ns->layout.num_layers;
	uint8_t *hdr = malloc(KVFS_BLOCK_MAX_HEADER);
	uint8_t *seg = malloc(ns->layer_stride);
	uint8_t **tables = calloc(ld->n ? ld->n : 1, sizeof(*tables));
	int rc = 0;

	if (!hdr || !seg || !tables) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < ld->n && !rc; i++) {
		tables[i] = malloc((size_t)L * 16);
		rc = tables[i] ? load_header(ld, i, hdr, tables[i]) : -ENOMEM;
		if (rc == -EBADMSG)
			drop_block(ld, i);
	}
	for (uint32_t l = 0; l < L && !rc; l++) {
		for (size_t i = 0; i < ld->n && !rc; i++) {
			uint64_t off = 0, sum = 0;
			const uint8_t *e = tables[i] + (size_t)l * 16;

			for (int b = 7; b >= 0; b--) {
				off = (off << 8) | e[b];
				sum = (sum << 8) | e[8 + b];
			}
			rc = pread_full(ld->m->fds[ld->first + i], seg, ns->layer_bytes, off);
			if (!rc && kvfs_block_layer_checksum(seg, ns->layer_bytes) != sum) {
				rc = -EBADMSG;
				drop_block(ld, i);
			}
			if (!rc)
				scatter(ns, &ld->layers[l], ld->block_ids[i], seg);
		}
		if (!rc)
			load_progress(ld, l + 1, 0);
	}
out:
	if (rc) {
		atomic_fetch_add(&ns->st.load_errors, 1);
	} else {
		atomic_fetch_add(&ns->st.blocks_loaded, ld->n);
		atomic_fetch_add(&ns->st.bytes_loaded, ld->n * ns->block_bytes);
	}
	pthread_mutex_lock(&ld->lock);
	if (rc && !ld->error)
		ld->error = rc;
	ld->finished = true;
	pthread_cond_broadcast(&ld->cond);
	pthread_mutex_unlock(&ld->lock);
	for (size_t i = 0; tables && i < ld->n; i++)
		free(tables[i]);
	free(tables);
	free(seg);
	free(hdr);
	return NULL;
}

/*
 * Start a load. @device: some layers are device memory, which only the
 * daemon can write: never fall back to the POSIX loader then.
 */
static int load_start(kvfs_match *m, size_t first, size_t n, const struct kvfs_kv_pages *dst,
		      const uint32_t *block_ids, kvfs_load **out, bool device)
{
	kvfs_ns *ns;
	kvfs_load *ld;
	int rc;

	if (!m || !out || first > m->n || n > m->n - first || (n && !block_ids))
		return -EINVAL;
	ns = m->ns;
	rc = check_pages(ns, dst);
	if (rc)
		return rc;
	ld = calloc(1, sizeof(*ld));
	if (!ld)
		return -ENOMEM;
	ld->m = m;
	ld->first = first;
	ld->n = n;
	ld->layers = malloc(sizeof(*ld->layers) * ns->layout.num_layers);
	ld->block_ids = malloc(sizeof(*ld->block_ids) * (n ? n : 1));
	if (!ld->layers || !ld->block_ids) {
		rc = -ENOMEM;
		goto out_free;
	}
	memcpy(ld->layers, dst->layers, sizeof(*ld->layers) * ns->layout.num_layers);
	if (n)
		memcpy(ld->block_ids, block_ids, sizeof(*ld->block_ids) * n);
	pthread_mutex_init(&ld->lock, NULL);
	pthread_cond_init(&ld->cond, NULL);
	atomic_fetch_add(&ns->st.loads, 1);
	*out = ld;
	if (m->fast) {
		rc = fast_load_start(ld);
		if (rc == 0 || ld->fast_submitted) {
			ld->fast = true;
			ld->error = rc;
			return 0;
		}
		if (rc != -ENOTSUP || device) {
			/* the daemon went away: the load is a miss */
			ld->error = rc;
			ld->finished = true;
			atomic_fetch_add(&ns->st.load_errors, 1);
			return 0;
		}
		/* engine memory the daemon cannot see: load through the mount */
		for (size_t i = 0; i < n; i++) {
			char hex[KVFS_KEY_HEX + 1];

			kvfs_key_to_hex(&m->keys[first + i], hex);
			m->fds[first + i] = openat(ns->dirfd, hex, O_RDONLY | O_CLOEXEC);
			if (m->fds[first + i] < 0) {
				ld->error = -errno;
				ld->finished = true;
				atomic_fetch_add(&ns->st.load_errors, 1);
				return 0;
			}
		}
	}
	rc = pthread_create(&ld->thread, NULL, load_main, ld);
	if (rc) {
		*out = NULL;
		rc = -rc;
		pthread_mutex_destroy(&ld->lock);
		pthread_cond_destroy(&ld->cond);
		goto out_free;
	}
	ld->threaded = true;
	return 0;

out_free:
	free(ld->layers);
	free(ld->block_ids);
	free(ld);
	return rc;
}

int kvfs_load_start(kvfs_match *m, size_t first, size_t n, const struct kvfs_kv_pages *dst,
		    const uint32_t *block_ids, kvfs_load **out)
{
	return load_start(m, first, n, dst, block_ids, out, false);
}

int kvfs_load_start_ex(kvfs_match *m, size_t first, size_t n, const struct kvfs_kv_pages_ex *dst,
		       const uint32_t *block_ids, kvfs_load **out)
{
	struct kvfs_kv_layer *layers;
	struct kvfs_kv_pages pages;
	bool device = false;
	kvfs_ns *ns;
	int rc = 0;

	if (!m || !dst || !dst->layers || !out || first > m->n || n > m->n - first ||
	    (n && !block_ids))
		return -EINVAL;
	ns = m->ns;
	layers = malloc(sizeof(*layers) * ns->layout.num_layers);
	if (!layers)
		return -ENOMEM;
	for (uint32_t l = 0; l < ns->layout.num_layers; l++) {
		const struct kvfs_kv_layer_ex *ly = &dst->layers[l];

		layers[l] = (struct kvfs_kv_layer){.k = ly->k,
						   .v = ly->v,
						   .block_stride = ly->block_stride,
						   .token_stride = ly->token_stride};
		if (ly->reserved || ly->device < KVFS_DEVICE_HOST)
			rc = -EINVAL;
		if (ly->device == KVFS_DEVICE_HOST || rc)
			continue;
		device = true;
		if (!m->fast) {
			rc = -ENOTSUP; /* only the daemon can write device memory */
			continue;
		}
		/* every engine block of the load in memory registered on that device */
		for (size_t i = 0; i < n && !rc; i++)
			for (int part = 0; part < (ly->v ? 2 : 1) && !rc; part++) {
				const uint8_t *p = (const uint8_t *)(part ? ly->v : ly->k) +
						   (size_t)block_ids[i] * ly->block_stride;
				int dev = fast_buf_device(ns, p, ns->part_bytes);

				rc = dev == ly->device ? 0 : dev >= 0 ? -EINVAL : -ENOTSUP;
			}
	}
	pages.layers = layers;
	if (!rc)
		rc = load_start(m, first, n, &pages, block_ids, out, device);
	free(layers);
	return rc;
}

long kvfs_save_ex(kvfs_ns *ns, const kvfs_key *parent, size_t first_index, const uint32_t *tokens,
		  size_t nblocks, const struct kvfs_key_extra *extra,
		  const struct kvfs_kv_pages_ex *src, const uint32_t *block_ids)
{
	struct kvfs_kv_layer *layers;
	struct kvfs_kv_pages pages;
	uint8_t xbuf[MAX_EXTRA];
	unsigned ndev = 0;
	kvfs_key prev;
	long done = 0;
	uint32_t L, T;

	if (!ns || !parent || !src || !src->layers || (nblocks && (!tokens || !block_ids)))
		return -EINVAL;
	L = ns->layout.num_layers;
	T = ns->layout.tokens_per_block;
	layers = malloc(sizeof(*layers) * L);
	if (!layers)
		return -ENOMEM;
	for (uint32_t l = 0; l < L; l++) {
		const struct kvfs_kv_layer_ex *ly = &src->layers[l];

		layers[l] = (struct kvfs_kv_layer){.k = ly->k, .v = ly->v,
						   .block_stride = ly->block_stride,
						   .token_stride = ly->token_stride};
		if (ly->reserved || ly->device < KVFS_DEVICE_HOST)
			done = -EINVAL;
		ndev += ly->device != KVFS_DEVICE_HOST;
	}
	pages.layers = layers;
	if (!done && check_pages(ns, &pages))
		done = -EINVAL;
	if (done || !ndev) {
		if (!done)
			done = kvfs_save(ns, parent, first_index, tokens, nblocks, extra, &pages,
					 block_ids);
		goto out;
	}
	if (ndev != L || !ns->fast || !fast_up(ns)) {
		done = ndev != L ? -EINVAL : -ENOTSUP;
		goto out;
	}
	prev = *parent;
	for (size_t i = 0; i < nblocks; i++) {
		struct kvfs_block_desc d = {.layout = ns->layout, .parent = prev,
					    .tokens = tokens + i * T};
		long xlen = 0;
		kvfs_key key;
		int rc;

		if (extra) {
			xlen = kvfs_key_extra_encode(extra, first_index + i, xbuf, sizeof(xbuf));
			if (xlen < 0) {
				done = done ? done : xlen;
				break;
			}
		}
		d.extra_cbor = xlen ? xbuf : NULL;
		d.extra_len = (size_t)xlen;
		if (kvfs_key_block(&prev, d.tokens, T, d.extra_cbor, d.extra_len, &key)) {
			done = done ? done : -EINVAL;
			break;
		}
		rc = fast_save_dev(ns, &d, &key, layers, block_ids[i]);
		prev = key;
		if (rc == -EEXIST) {
			atomic_fetch_add(&ns->st.saves_present, 1);
		} else if (rc) {
			atomic_fetch_add(&ns->st.save_errors, 1);
			if (!done && (rc == -ENOTSUP || rc == -E2BIG)) {
				done = rc; /* nothing of this call can be saved */
				break;
			}
			continue;
		} else {
			atomic_fetch_add(&ns->st.saves_queued, 1);
			atomic_fetch_add(&ns->st.saves_written, 1);
		}
		done++;
	}
out:
	free(layers);
	return done;
}

int kvfs_dev_register(kvfs_ns *ns, const struct kvfs_dev_buffer *b)
{
	if (!ns || !b || !b->base || !b->bytes || b->device < 0 ||
	    (b->kind != KVFS_DEV_CUDA && b->kind != KVFS_DEV_STANDIN))
		return -EINVAL;
	if (!ns->fast)
		return -ENOTSUP;
	return fast_dev_register(ns, b);
}

int kvfs_dev_unregister(kvfs_ns *ns, void *base)
{
	return ns && ns->fast ? fast_dev_unregister(ns, base) : -ENOENT;
}

int kvfs_load_wait(kvfs_load *ld, unsigned layer)
{
	int rc;

	if (!ld)
		return -EINVAL;
	if (ld->fast) {
		rc = fast_load_wait(ld, layer);
		return rc;
	}
	pthread_mutex_lock(&ld->lock);
	while (!ld->error && !ld->finished && ld->layers_done <= layer)
		pthread_cond_wait(&ld->cond, &ld->lock);
	rc = ld->error ? ld->error : (ld->layers_done > layer ? 0 : -EINVAL);
	pthread_mutex_unlock(&ld->lock);
	return rc;
}

int kvfs_load_end(kvfs_load *ld)
{
	int rc;

	if (!ld)
		return 0;
	if (ld->fast) {
		kvfs_ns *ns = ld->m->ns;

		fast_load_wait(ld, ns->layout.num_layers - 1);
		fast_load_drain(ld);
		if (ld->error) {
			atomic_fetch_add(&ns->st.load_errors, 1);
		} else {
			atomic_fetch_add(&ns->st.blocks_loaded, ld->n);
			atomic_fetch_add(&ns->st.bytes_loaded, ld->n * ns->block_bytes);
		}
	} else if (ld->threaded) {
		pthread_join(ld->thread, NULL);
	}
	rc = ld->error;
	pthread_mutex_destroy(&ld->lock);
	pthread_cond_destroy(&ld->cond);
	free(ld->layers);
	free(ld->block_ids);
	free(ld);
	return rc;
}

/* --- save --------------------------------------------------------------------- */

/* A slot to encode into, or NULL if the queue is full (never waits). */
/*
 * Make the slots: one region of slots_max block buffers (shared memory on
 * the fast path, so the daemon copies saves straight out of it; committed
 * only as slots are used). save_lock held. @return 0 or -ENOMEM.
 */
static int slots_make_locked(kvfs_ns *ns)
{
	size_t bytes = KVFS_ALIGN_UP(kvfs_layout_file_bytes(&ns->layout, MAX_EXTRA), 4096);
	size_t total = bytes * ns->slots_max;
	struct save_slot *slots = calloc(ns->slots_max, sizeof(*slots));
	uint8_t *region = slots ? kvfs_alloc(ns, total) : NULL;

	if (!region) {
		free(slots);
		return -ENOMEM;
	}
	ns->slot_region = region;
	ns->slot_region_bytes = total;
	ns->slots = slots;
	for (unsigned i = ns->slots_max; i-- > 0;) {
		slots[i].buf = region + (size_t)i * bytes;
		slots[i].next = ns->free_slots;
		ns->free_slots = &slots[i];
	}
	return 0;
}

/* A slot to encode into, or NULL if the queue is full (never waits). */
static struct save_slot *slot_get(kvfs_ns *ns)
{
	struct save_slot *s = NULL;

	pthread_mutex_lock(&ns->save_lock);
	if (!ns->slots && slots_make_locked(ns))
		goto out;
	s = ns->free_slots;
	if (s)
		ns->free_slots = s->next;
out:
	pthread_mutex_unlock(&ns->save_lock);
	return s;
}

static void slot_put_locked(kvfs_ns *ns, struct save_slot *s)
{
	s->next = ns->free_slots;
	ns->free_slots = s;
}

/* Encode one block into @s: header, then each layer gathered from engine memory. */
static int encode_block(kvfs_ns *ns, struct save_slot *s, const kvfs_key *parent,
			const uint32_t *tokens, const uint8_t *extra, size_t extra_len,
			const struct kvfs_kv_pages *src, uint32_t block)
{
	uint32_t L = ns->layout.num_layers;
	uint64_t *sums = malloc(sizeof(uint64_t) * L);
	struct kvfs_block_desc d;
	uint32_t hb = kvfs_layout_header_bytes(&ns->layout, extra_len);
	int rc;

	if (!sums)
		return -ENOMEM;
	s->len = kvfs_layout_file_bytes(&ns->layout, extra_len);
	for (uint32_t l = 0; l < L; l++) {
		uint8_t *seg = s->buf + hb + (size_t)l * ns->layer_stride;

		gather(ns, &src->layers[l], block, seg);
		memset(seg + ns->layer_bytes, 0, ns->layer_stride - ns->layer_bytes);
		sums[l] = kvfs_block_layer_checksum(seg, ns->layer_bytes);
	}
	memset(&d, 0, sizeof(d));
	d.layout = ns->layout;
	d.parent = *parent;
	d.tokens = tokens;
	d.extra_cbor = extra_len ? extra : NULL;
	d.extra_len = extra_len;
	rc = kvfs_block_encode_header(&d, sums, s->buf, hb, &s->key);
	free(sums);
	return rc;
}

long kvfs_save(kvfs_ns *ns, const kvfs_key *parent, size_t first_index, const uint32_t *tokens,
	       size_t nblocks, const struct kvfs_key_extra *extra, const struct kvfs_kv_pages *src,
	       const uint32_t *block_ids)
{
	uint32_t T;
	uint8_t xbuf[MAX_EXTRA];
	kvfs_key prev;
	long done = 0;

	if (!ns || !parent || (nblocks && (!tokens || !block_ids)) || check_pages(ns, src))
		return -EINVAL;
	T = ns->layout.tokens_per_block;
	prev = *parent;
	for (size_t i = 0; i < nblocks; i++) {
		const uint32_t *tok = tokens + i * T;
		char hex[KVFS_KEY_HEX + 1];
		struct save_slot *s;
		kvfs_key key;
		long xlen = 0;

		if (extra) {
			xlen = kvfs_key_extra_encode(extra, first_index + i, xbuf, sizeof(xbuf));
			if (xlen < 0)
				return done ? done : xlen;
		}
		if (kvfs_key_block(&prev, tok, T, xlen ? xbuf : NULL, (size_t)xlen, &key))
			return done ? done : -EINVAL;
		kvfs_key_to_hex(&key, hex);
		/* The fast path's SAVE finds existing blocks itself. */
		if (!ns->fast && faccessat(ns->dirfd, hex, F_OK, 0) == 0) {
			atomic_fetch_add(&ns->st.saves_present, 1);
			done++;
			prev = key;
			continue;
		}
		s = slot_get(ns);
		if (!s) {
			atomic_fetch_add(&ns->st.saves_dropped, 1);
			prev = key;
			continue;
		}
		if (encode_block(ns, s, &prev, tok, xbuf, (size_t)xlen, src, block_ids[i])) {
			pthread_mutex_lock(&ns->save_lock);
			slot_put_locked(ns, s);
			pthread_mutex_unlock(&ns->save_lock);
			atomic_fetch_add(&ns->st.save_errors, 1);
			prev = key;
			continue;
		}
		pthread_mutex_lock(&ns->save_lock);
		s->next = NULL;
		if (ns->queue_tail)
			ns->queue_tail->next = s;
		else
			ns->queue_head = s;
		ns->queue_tail = s;
		ns->in_flight++;
		pthread_cond_broadcast(&ns->save_cond);
		pthread_mutex_unlock(&ns->save_lock);
		atomic_fetch_add(&ns->st.saves_queued, 1);
		done++;
		prev = key;
	}
	return done;
}

/* Write one encoded block under a temporary name and publish it. */
static int write_block(kvfs_ns *ns, const struct save_slot *s)
{
	char hex[KVFS_KEY_HEX + 1], tmp[KVFS_KEY_HEX + 64];
	int fd, rc;

	kvfs_key_to_hex(&s->key, hex);
	snprintf(tmp, sizeof(tmp), ".%s.%d.%llu.tmp", hex, (int)getpid(),
		 (unsigned long long)atomic_fetch_add(&tmp_counter, 1));
	fd = openat(ns->dirfd, tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	rc = write_full(fd, s->buf, s->len);
	if (close(fd) && !rc)
		rc = -errno;
	if (!rc && renameat(ns->dirfd, tmp, ns->dirfd, hex))
		rc = -errno;
	if (rc)
		unlinkat(ns->dirfd, tmp, 0);
	return rc;
}

static void *saver_main(void *arg)
{
	kvfs_ns *ns = arg;

	pthread_mutex_lock(&ns->save_lock);
	for (;;) {
		struct save_slot *s = ns->queue_head;
		int rc;

		if (!s) {
			if (ns->stopping)
				break;
			pthread_cond_wait(&ns->save_cond, &ns->save_lock);
			continue;
		}
		ns->queue_head = s->next;
		if (!ns->queue_head)
			ns->queue_tail = NULL;
		pthread_mutex_unlock(&ns->save_lock);
		rc = -ENOTCONN;
		if (fast_up(ns))
			rc = fast_save(ns, s);
		if (rc == -ENOTCONN || rc == -ENOTSUP)
			rc = write_block(ns, s);
		if (rc == -EEXIST)
			atomic_fetch_add(&ns->st.saves_present, 1);
		else
			atomic_fetch_add(rc ? &ns->st.save_errors : &ns->st.saves_written, 1);
		pthread_mutex_lock(&ns->save_lock);
		slot_put_locked(ns, s);
		ns->in_flight--;
		pthread_cond_broadcast(&ns->save_cond);
	}
	pthread_mutex_unlock(&ns->save_lock);
	return NULL;
}

int kvfs_save_flush(kvfs_ns *ns)
{
	if (!ns)
		return -EINVAL;
	pthread_mutex_lock(&ns->save_lock);
	while (ns->in_flight)
		pthread_cond_wait(&ns->save_cond, &ns->save_lock);
	pthread_mutex_unlock(&ns->save_lock);
	return 0;
}
