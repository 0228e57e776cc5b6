/*
 * tools/bench.h — what the parts of kvfs-bench share (private to tools/bench*.c).
 *
 * kvfs-bench drives real kvfs daemons through their mounts only (DESIGN §1:
 * tools use the public headers and the mount, never fs/, tier/ or core/).
 * bench.c owns the process: options, output, the daemons it started and the
 * scratch directories it made, and their removal on every exit path.
 *
 * Every function that can fail prints one clear line to stderr and returns
 * 0 or a negative errno; -EINTR means the user interrupted the run.
 */
#ifndef KVFS_TOOLS_BENCH_H
#define KVFS_TOOLS_BENCH_H

#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#define BENCH_MIB (1ull << 20)
#define BENCH_IO  (1u << 20) /* read()/write() size of the throughput runs */

/* One kvfs daemon on a mount in its own temporary directory. */
struct bench_mount {
	char base[PATH_MAX]; /* mkdtemp directory: mnt/, state/, kvfs.log */
	char mnt[PATH_MAX];
	char log[PATH_MAX];
	char label[64];
	pid_t pid;
	bool mounted;
	double ready_s; /* the last start: exec until the mount was ready */
};

/* Set by SIGINT/SIGTERM/SIGHUP; long loops check it and return -EINTR. */
extern volatile sig_atomic_t bench_interrupted;

/* Print "kvfs-bench: <message>" to stderr. */
void bench_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Progress line on stderr (the tables go to stdout). */
void bench_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* snprintf for paths. @return 0, or -ENAMETOOLONG if @out was too small. */
int bench_path(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Monotonic seconds. */
double bench_now(void);

/*
 * Start `kvfs --state B/state --dram DRAM --log B/kvfs.log EXTRA... B/mnt`
 * in a fresh /tmp/kvfs-bench-XXXXXX; @extra is NULL-terminated (may be NULL).
 * The mount is registered so that every exit path unmounts it.
 * @return 0, or a negative errno (the daemon's own message is on stderr).
 */
int bench_mount_start(struct bench_mount *m, const char *label, uint64_t dram_bytes,
		      const char *const *extra);

/*
 * Unmount (fusermount3 -u, retried, then -u -z), wait for the daemon to
 * exit, and remove the temporary directory. Safe on a mount not started.
 * @return 0, or -EBUSY if the mount could not be removed (it is then left
 * registered for the exit handler).
 */
int bench_mount_stop(struct bench_mount *m);

/* Unmount (also a dead daemon's mount) and wait for the daemon to exit; keep
 * the directories for a restart. @return 0 or -EBUSY. */
int bench_mount_unmount(struct bench_mount *m);

/* Unmount cleanly and start the daemon again on the same state. @return 0 or -errno. */
int bench_mount_restart(struct bench_mount *m, uint64_t dram_bytes, const char *const *extra);

/*
 * Parse MOUNT/.kvfs/@name (stats or config).
 * @return a new reference, or NULL after printing why.
 */
json_t *bench_mount_json(const struct bench_mount *m, const char *name);

/* Integer at a dotted @path ("tiers.dram.used_bytes") of @obj; 0 if absent. */
int64_t bench_json_int(json_t *obj, const char *path);

/* A "NAME: N kB" field of /proc/PID/status in bytes ("VmRSS", "RssShmem"), or -1. */
int64_t bench_proc_status_bytes(pid_t pid, const char *field);

/* The bdi read_ahead_kb of the mount, or -1 if it cannot be read. */
long bench_mount_read_ahead_kb(const struct bench_mount *m);

/*
 * A fresh scratch directory on tmpfs: /dev/shm/kvfs-bench-XXXXXX when
 * /dev/shm is tmpfs, else a tmpfs of @size_hint bytes mounted by us (root
 * only). Removed (and unmounted) at exit or by bench_scratch_release().
 * @return 0, -ENOTSUP if no tmpfs can be had.
 */
int bench_scratch_tmpfs(uint64_t size_hint, char *out, size_t len);
void bench_scratch_release(const char *dir);

/* Remove a directory tree (no crossing into other mounts). */
int bench_rmtree(const char *dir);

/* "512M", "16K", "2G" or plain bytes. @return 0 or -EINVAL. */
int bench_parse_size(const char *s, uint64_t *out);
/* Comma-separated sizes / fractions. @return count (>0) or -EINVAL. */
int bench_parse_sizes(const char *s, uint64_t *out, int max);
int bench_parse_doubles(const char *s, double *out, int max);
/*
 * The options of a size sweep, argv[1..]: --sizes LIST (up to @max) and
 * --total SIZE; what is not given keeps its value. @return 0; -EINVAL after
 * printing @usage.
 */
int bench_parse_sweep(int argc, char **argv, uint64_t *sizes, int max, int *nsizes,
		      uint64_t *total, const char *usage);
/* Human size: "2 MiB", "512 KiB", "1.5 GiB". */
const char *bench_fmt_size(uint64_t bytes, char *buf, size_t len);

/* Median of @n values (sorts @v in place). */
double bench_median(double *v, int n);

/* Deterministic fill: splitmix64 stream from @seed. */
void bench_fill(void *buf, size_t len, uint64_t seed);

/* Page-aligned, pre-faulted buffer (mmap); free with bench_buf_free. */
void *bench_buf_alloc(size_t len);
void bench_buf_free(void *buf, size_t len);

/* The subcommands. @argv[0] is the subcommand; results are added to @out. */
/* A redis-server of our own on 127.0.0.1, a free port, a temporary directory. */
struct bench_redis {
	pid_t pid;
	int port;
	char dir[64];
};

/* A TCP port free on 127.0.0.1 now, or -1. */
int bench_free_port(void);
/* Start it and wait until it answers PING. @return 0, -EIO (said why). */
int bench_redis_start(struct bench_redis *r);
void bench_redis_stop(struct bench_redis *r);
/* A connection to it (hiredis), or NULL. */
struct redisContext *bench_redis_connect(int port);

/* The Mooncake conversation trace: each request's hash_ids as dense block indices. */
struct trace {
	uint32_t nreq;
	uint64_t file_requests; /* non-empty lines in the whole file */
	uint64_t nblocks;
	uint64_t *off; /* nreq + 1 offsets into blk */
	uint32_t *blk; /* dense block index per position */
	uint64_t *ids; /* dense index -> trace id */
	uint32_t nuniq;
};

/* Load @limit requests (0: all) of the JSONL trace at @path. @return 0 or -errno (said why). */
/*
 * The Mooncake conversation trace shipped in the repository (gzip), relative
 * to the repository root where `make bench` runs.
 */
#define BENCH_DEFAULT_TRACE "tools/workloads/mooncake-conversation-trace.jsonl.gz"
int bench_trace_load(const char *path, uint32_t limit, struct trace *t);
void bench_trace_free(struct trace *t);

/*
 * Trace blocks as files (bench_replay.c): block @id is MNT/blocks/<id%256 as
 * 2 hex>/<id>.kv, its bytes derived from @id. Write one through a temporary
 * name and rename() (@return 0 or -errno); check a hit read from @fd whole
 * (@return 0, -EBADMSG if wrong, -errno).
 */
void bench_block_path(const char *mnt, uint64_t id, const char *suffix, char *out, size_t len);
void bench_block_fill(uint8_t *buf, uint64_t size, uint64_t id);
int bench_block_write(const char *mnt, uint64_t id, const uint8_t *buf, uint64_t size);
int bench_block_check(int fd, const char *path, uint8_t *buf, uint8_t *expect, uint64_t size,
		      uint64_t id);
/* MNT/blocks/00..ff. @return 0 or -errno (said why). */
int bench_block_dirs(const char *mnt);

/* What one request of a replay did on a mount (bench_replay_request). */
struct bench_req_result {
	uint64_t hits, writes, skipped, enospc;
};

/*
 * Replay request @r of @t on @mnt, with the engines' prefix semantics: open
 * its blocks in order until the first miss (each success a hit, read whole
 * and checked), then save every missing block from there on. @rbuf holds
 * @bsize + 1 bytes, @wbuf and @ebuf @bsize. @return 0 or -errno (said why).
 */
int bench_replay_request(const char *mnt, const struct trace *t, uint32_t r, uint64_t bsize,
			 uint8_t *rbuf, uint8_t *wbuf, uint8_t *ebuf, struct bench_req_result *res);

int bench_throughput(int argc, char **argv, json_t *out);
int bench_fuse_settings(int argc, char **argv, json_t *out);
int bench_replay(int argc, char **argv, json_t *out);
int bench_libkvfs(int argc, char **argv, json_t *out);
int bench_nvme(int argc, char **argv, json_t *out);
int bench_restart(int argc, char **argv, json_t *out);
int bench_remote(int argc, char **argv, json_t *out);
int bench_cluster(int argc, char **argv, json_t *out);
int bench_scalein(int argc, char **argv, json_t *out);

#endif
