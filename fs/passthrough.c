/*
 * fs/passthrough.c — FUSE passthrough reads, on libfuse 3.14.
 *
 * Owns the one place that knows the kernel's passthrough ABI (FUSE 7.40):
 * a sealed file whose bytes are in DRAM is opened with FOPEN_PASSTHROUGH
 * and a backing id naming its DRAM file, so the kernel reads (and maps)
 * that file itself: no READ request reaches the daemon and the bytes are
 * not copied into the FUSE page cache a second time.
 *
 * libfuse 3.14 has no API for it, so this file installs its public
 * fuse_session_custom_io() hook and rewrites two replies on their way to
 * /dev/fuse:
 *   - FUSE_INIT: if the kernel offered FUSE_PASSTHROUGH (bit 5 of flags2),
 *     set FUSE_INIT_EXT, flags2 |= FUSE_PASSTHROUGH and max_stack_depth = 1
 *     (the backing files are on a tmpfs, stack depth 0);
 *   - FUSE_OPEN: the thread that calls fuse_reply_open() after
 *     pt_reply_open_next() gets FOPEN_PASSTHROUGH and the backing id in the
 *     reply's padding (fuse_open_out.backing_id in 7.40). libfuse sends a
 *     reply from the thread that makes it, so a thread-local is enough.
 * Moving to libfuse >= 3.17 means replacing this file by its
 * fuse_passthrough_open()/close() and conn->want_ext, nothing else.
 *
 * Backing ids come from ioctl(FUSE_DEV_IOC_BACKING_OPEN) on /dev/fuse (it
 * needs CAP_SYS_ADMIN and fails with EPERM until INIT agreed passthrough);
 * a refusal is never an error for the opener: the caller falls back to the
 * read path. The fault seam KVFS_FAULT_BACKING_OPEN makes it fail on demand.
 *
 * Locking: `agreed` is written once by the thread that sends the INIT reply
 * before any OPEN can arrive, and read atomically.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/fault.h"
#include "core/log.h"
#include "fs/fs_i.h"

/* --- FUSE ABI 7.40 (the installed <linux/fuse.h> is 7.38) ----------------------------- */

#define PT_FUSE_INIT	     26
#define PT_FUSE_INIT_EXT     (1u << 30)
#define PT_FUSE_PASSTHROUGH2 (1u << 5) /* FUSE_PASSTHROUGH (1ULL << 37), in flags2 */
#define PT_FOPEN_PASSTHROUGH (1u << 7)

struct pt_in_header {
	uint32_t len, opcode;
	uint64_t unique, nodeid;
	uint32_t uid, gid, pid;
	uint16_t total_extlen, padding;
};

struct pt_out_header {
	uint32_t len;
	int32_t error;
	uint64_t unique;
};

struct pt_init_in {
	uint32_t major, minor, max_readahead, flags, flags2;
	uint32_t unused[11];
};

struct pt_init_out {
	uint32_t major, minor, max_readahead, flags;
	uint16_t max_background, congestion_threshold;
	uint32_t max_write, time_gran;
	uint16_t max_pages, map_alignment;
	uint32_t flags2;
	uint32_t max_stack_depth;
	uint32_t unused[6];
};

struct pt_open_out {
	uint64_t fh;
	uint32_t open_flags;
	int32_t backing_id;
};

struct pt_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};

#define PT_DEV_IOC_BACKING_OPEN	 _IOW(229, 1, struct pt_backing_map)
#define PT_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

/* --- state -------------------------------------------------------------------------- */

static struct {
	_Atomic uint64_t init_unique; /* the INIT request's id; 0 = not seen */
	_Atomic bool kernel_can;      /* the kernel offered FUSE_PASSTHROUGH */
	_Atomic bool agreed;	      /* and we accepted it */
	bool wanted;		      /* not --no-passthrough */
	int devfd;		      /* /dev/fuse, for the ioctls */
} pt;

static __thread int32_t pending_backing_id;

static ssize_t pt_read(int fd, void *buf, size_t len, void *userdata)
{
	ssize_t n = read(fd, buf, len);
	const struct pt_in_header *h = buf;

	(void)userdata;
	if (n >= (ssize_t)(sizeof(*h) + offsetof(struct pt_init_in, unused)) &&
	    h->opcode == PT_FUSE_INIT) {
		const struct pt_init_in *in = (const void *)(h + 1);

		atomic_store(&pt.kernel_can,
			     (in->flags & PT_FUSE_INIT_EXT) && (in->flags2 & PT_FUSE_PASSTHROUGH2));
		atomic_store(&pt.init_unique, h->unique);
	}
	return n;
}

static void rewrite_init(struct pt_init_out *o)
{
	if (!pt.wanted) {
		log_info("FUSE passthrough: off (--no-passthrough): reads go through the daemon");
		return;
	}
	if (!atomic_load(&pt.kernel_can)) {
		log_info("FUSE passthrough: the kernel does not offer it: reads go through the "
			 "daemon");
		return;
	}
	o->flags |= PT_FUSE_INIT_EXT;
	o->flags2 |= PT_FUSE_PASSTHROUGH2;
	o->max_stack_depth = 1;
	atomic_store(&pt.agreed, true);
	log_info("FUSE passthrough: on: sealed files in DRAM are read by the kernel");
}

static ssize_t pt_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	const struct pt_out_header *oh = iov[0].iov_base;
	uint64_t init = atomic_load(&pt.init_unique);

	(void)userdata;
	if (count == 2 && oh->error == 0) {
		if (init && oh->unique == init && iov[1].iov_len >= sizeof(struct pt_init_out)) {
			atomic_store(&pt.init_unique, 0);
			rewrite_init(iov[1].iov_base);
		} else if (pending_backing_id > 0 && iov[1].iov_len == sizeof(struct pt_open_out)) {
			struct pt_open_out *o = iov[1].iov_base;

			o->open_flags |= PT_FOPEN_PASSTHROUGH;
			o->backing_id = pending_backing_id;
		}
	}
	pending_backing_id = 0;
	return writev(fd, iov, count);
}

int pt_setup(struct kvfs_fs *fs)
{
	static const struct fuse_custom_io io = {.read = pt_read, .writev = pt_writev};
	int fd = fuse_session_fd(fs->se);

	pt.wanted = !fs->cfg.no_passthrough;
	pt.devfd = fd;
	/* Replaces libfuse's reads and writes of /dev/fuse (splice is then unused). */
	if (fuse_session_custom_io(fs->se, &io, fd)) {
		log_warn("FUSE passthrough: libfuse refused the custom I/O hook: off");
		return -EINVAL;
	}
	return 0;
}

bool pt_enabled(void)
{
	return atomic_load(&pt.agreed);
}

int pt_backing_open(int fd)
{
	struct pt_backing_map map = {.fd = fd};
	int rc = kvfs_fault(KVFS_FAULT_BACKING_OPEN);

	if (rc)
		return rc;
	rc = ioctl(pt.devfd, PT_DEV_IOC_BACKING_OPEN, &map);
	if (rc < 0)
		return -errno;
	return rc > 0 ? rc : -EIO; /* ids start at 1 */
}

void pt_backing_close(int id)
{
	uint32_t v = (uint32_t)id;

	if (id > 0 && ioctl(pt.devfd, PT_DEV_IOC_BACKING_CLOSE, &v) < 0)
		log_warn("FUSE passthrough: closing backing id %d: %s", id, strerror(errno));
}

void pt_reply_open_next(int backing_id)
{
	pending_backing_id = backing_id;
}

/* --- per-inode decision --------------------------------------------------------------- */

/* Bytes in DRAM for a passthrough open: a file only on NVMe is brought in. */
static int pt_backing(tier_obj *data)
{
	int rc;

	if (!(tier_where(data) & TIER_DRAM)) {
		rc = tier_promote_clean(data); /* checksums verified as it is read */
		if (rc)
			return rc;
	}
	return tier_backing_fd(data);
}

enum pt_mode pt_open(struct kvfs_fs *fs, struct kvfs_inode *in, tier_obj *data, int *id)
{
	int fd, bid;

	*id = 0;
	pthread_mutex_lock(&in->lock);
	if (in->pt_opens) {
		in->pt_opens++;
		*id = in->pt_id;
		pthread_mutex_unlock(&in->lock);
		atomic_fetch_add(&fs->ctr.pt_opens, 1);
		return PT_PASS;
	}
	if (in->cached_opens || !pt_enabled() || tier_size(data) == 0) {
		in->cached_opens++;
		pthread_mutex_unlock(&in->lock);
		return PT_CACHED;
	}
	pthread_mutex_unlock(&in->lock);

	fd = pt_backing(data);
	bid = fd >= 0 ? pt_backing_open(fd) : fd;
	if (fd >= 0)
		close(fd);

	pthread_mutex_lock(&in->lock);
	if (in->pt_opens) { /* another opener registered it meanwhile: one backing file */
		in->pt_opens++;
		*id = in->pt_id;
		pthread_mutex_unlock(&in->lock);
		if (bid > 0)
			pt_backing_close(bid);
		atomic_fetch_add(&fs->ctr.pt_opens, 1);
		return PT_PASS;
	}
	if (bid > 0 && !in->cached_opens) {
		in->pt_id = bid;
		in->pt_opens = 1;
		*id = bid;
		pthread_mutex_unlock(&in->lock);
		atomic_fetch_add(&fs->ctr.pt_opens, 1);
		return PT_PASS;
	}
	in->cached_opens++;
	pthread_mutex_unlock(&in->lock);
	if (bid > 0) {
		pt_backing_close(bid); /* a read-path open got in first */
	} else if (fd < 0) {
		atomic_fetch_add(&fs->ctr.pt_no_room, 1);
		log_debug("FUSE passthrough: inode %llu not in DRAM (%s): read path",
			  (unsigned long long)in->ino, strerror(-fd));
	} else {
		atomic_fetch_add(&fs->ctr.pt_refused, 1);
		log_debug("FUSE passthrough: kernel refused inode %llu (%s): read path",
			  (unsigned long long)in->ino, strerror(-bid));
	}
	return PT_CACHED;
}

void pt_release(struct kvfs_inode *in, enum pt_mode mode)
{
	int id = 0;

	if (mode == PT_NONE)
		return;
	pthread_mutex_lock(&in->lock);
	if (mode == PT_PASS && --in->pt_opens == 0) {
		id = in->pt_id;
		in->pt_id = 0;
	} else if (mode == PT_CACHED) {
		in->cached_opens--;
	}
	pthread_mutex_unlock(&in->lock);
	pt_backing_close(id);
}
