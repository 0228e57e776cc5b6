/*
 * engine/libkvfs_i.h — private to libkvfs: the namespace handle and the
 * operations each path (POSIX files, the daemon's fast path) provides.
 */
#ifndef KVFS_LIBKVFS_I_H
#define KVFS_LIBKVFS_I_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "kvfs/kvfs.h"

struct save_slot {
	struct save_slot *next;
	kvfs_key key;
	uint8_t *buf; /* one encoded block file */
	uint64_t len;
};

struct fast;

struct kvfs_ns {
	char *dir;
	int dirfd;
	struct fast *fast; /* NULL: POSIX only */
	struct kvfs_layout layout;
	kvfs_key root;

	/* geometry of one block file */
	uint64_t block_bytes;
	uint32_t header_bytes;
	uint64_t layer_bytes;
	uint64_t layer_stride;
	size_t row_bytes;  /* one token of K (or V, or the MLA latent) */
	size_t part_bytes; /* tokens_per_block rows: K, or V, or the latent */

	/* saves: a bounded queue drained by one writer thread */
	pthread_mutex_t save_lock;
	pthread_cond_t save_cond;      /* work for the saver, or it finished some */
	struct save_slot *free_slots;  /* ready for reuse */
	struct save_slot *slots;       /* all of them, made at the first save */
	uint8_t *slot_region;          /* their buffers, from kvfs_alloc() */
	size_t slot_region_bytes;
	unsigned slots_max;
	struct save_slot *queue_head, *queue_tail;
	unsigned in_flight; /* queued or being written */
	bool stopping;
	pthread_t saver;
	bool saver_started;

	struct {
		_Atomic uint64_t matches, keys_asked, keys_matched;
		_Atomic uint64_t loads, blocks_loaded, bytes_loaded, load_errors;
		_Atomic uint64_t saves_queued, saves_present, saves_dropped, saves_written, save_errors;
		_Atomic uint64_t reconnects;
	} st;
};

struct kvfs_match {
	kvfs_ns *ns;
	size_t n;
	kvfs_key *keys;
	int *fds;      /* POSIX: held open (an open file is never evicted); else -1 */
	bool fast;     /* held by the daemon through the ring */
	uint64_t fast_id;
	uint64_t gen;  /* the daemon generation that holds them */
};

struct kvfs_load {
	kvfs_match *m;
	size_t first, n;
	struct kvfs_kv_layer *layers; /* a copy of the caller's description */
	uint32_t *block_ids;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned layers_done; /* layers [0, layers_done) are in place */
	int error;            /* first error, sticky */
	bool finished;
	bool threaded;        /* a POSIX loader thread runs */
	bool fast;            /* requests on the ring instead */
	int *fast_req;        /* request per READ: headers, then each layer */
	unsigned fast_submitted, fast_waited;
};

/* libkvfs_fast.c */
/* The length of the kvfs mount root that is a prefix of the resolved path
 * @real (the deepest ancestor with .kvfs/config on FUSE); -ENOTSUP. */
int kvfs_mount_root(const char *real);
int fast_open(kvfs_ns *ns, bool required);
void fast_close(kvfs_ns *ns);
bool fast_up(kvfs_ns *ns);
long fast_match(kvfs_ns *ns, const kvfs_key *keys, size_t n, uint64_t *match_id, uint64_t *gen);
void fast_release(kvfs_ns *ns, uint64_t match_id, uint64_t gen);
void *fast_alloc(kvfs_ns *ns, size_t bytes);
bool fast_free(kvfs_ns *ns, void *mem);
int fast_load_start(kvfs_load *ld);
int fast_load_wait(kvfs_load *ld, unsigned layer);
void fast_load_drain(kvfs_load *ld);
int fast_save(kvfs_ns *ns, const struct save_slot *s);
int fast_dev_register(kvfs_ns *ns, const struct kvfs_dev_buffer *b);
int fast_dev_unregister(kvfs_ns *ns, void *base);
/* The device of the registered memory holding [p, p+len): KVFS_DEVICE_HOST
 * for a kvfs_alloc() buffer; -ENOENT if none holds it. */
int fast_buf_device(kvfs_ns *ns, const void *p, size_t len);
/* Store one block whose layers @layers are device memory (SAVE_DEV). @return as fast_save(). */
int fast_save_dev(kvfs_ns *ns, const struct kvfs_block_desc *d, const kvfs_key *key,
		  const struct kvfs_kv_layer *layers, uint32_t block_id);

#endif
