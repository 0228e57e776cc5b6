/*
 * rdma/drain.c — leaving the cluster gracefully: stop taking offloads, and
 * hand the copies peers placed in our lent memory to the remaining lenders.
 * (The daemon hands over its own files with remote_offload() and leaves
 * with remote_close(); see fs/remote.c.)
 *
 * Draining is one-way: once set, the heartbeat says this node lends nothing
 * (written at once, not at the next beat), so every peer drops it from its
 * hash ring at its next membership refresh; until then an OFFLOAD that still
 * arrives is refused with -ENOSPC and the peer tries the next lender.
 * A lent copy is handed over by taking it out of lent memory (which also
 * unpublishes it) and offloading it to the ring's choice for its path; in
 * between, a lookup of that path misses (never returns wrong bytes), and if
 * the hand-over fails the copy is gone, as if evicted: lent memory is a cache.
 * A kill part-way leaves nothing inconsistent: what was handed over is
 * published by its new holder, the rest expires with our heartbeat.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rdma/rdma_i.h"

void remote_set_draining(remote *r)
{
	if (atomic_exchange(&r->draining, true))
		return;
	atomic_store(&r->hb_kick, true);
	pthread_mutex_lock(&r->iq_lock);
	pthread_cond_signal(&r->iq_cond);
	pthread_mutex_unlock(&r->iq_lock);
}

bool remote_draining(remote *r)
{
	return atomic_load(&r->draining);
}

struct take_buf {
	void *buf;
	uint64_t size, checksum;
};

static int take_prepare(void *ctx, uint64_t size, uint64_t checksum, struct iovec *iov, int max)
{
	struct take_buf *t = ctx;

	if (max < 1 || size == 0)
		return -EINVAL;
	free(t->buf);
	t->buf = malloc(size);
	if (!t->buf)
		return -ENOMEM;
	t->size = size;
	t->checksum = checksum;
	iov[0].iov_base = t->buf;
	iov[0].iov_len = size;
	return 1;
}

int remote_hand_over_lent(remote *r, const char *path, uint64_t *bytes)
{
	struct take_buf t = {0};
	struct remote_sink sink = {take_prepare, &t};
	struct remote_fetch_info info;
	struct iovec iov;
	int rc;

	if (!atomic_load(&r->draining))
		return -EINVAL; /* the ring would pick us again */
	rc = remote_take_lent(r, path, &sink, &info);
	if (rc)
		goto out;
	iov.iov_base = t.buf;
	iov.iov_len = t.size;
	/* The copy keeps the owner and mode its node sent, not ours. */
	rc = rdma_offload(r, path, &iov, 1, t.checksum, &info.attrs);
	if (rc == 0 && bytes)
		*bytes = t.size;
out:
	free(t.buf);
	return rc;
}
