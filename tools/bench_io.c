/*
 * tools/bench_io.c — kvfs-bench throughput and fuse-settings.
 *
 * throughput: for each file size, write TOTAL/SIZE files through a kvfs
 * mount and into a tmpfs directory (the peer: a filesystem whose bytes are
 * the page cache), then read them back, one thread and two. I/O is
 * read()/write() of 1 MiB into a page-aligned, pre-faulted buffer as large as
 * the file, so each file's bytes can be hashed (xxh3) after its timed read
 * and compared with what was written; the hashing is outside the timed
 * region. A 2-thread figure is bytes / the larger of the two threads' timed
 * sums. "cold" on kvfs means the kernel page cache of every file was dropped
 * first (posix_fadvise DONTNEED), so every byte comes from the daemon — the
 * daemon's read_bytes counter is printed as "from daemon" to prove it; a
 * second daemon started with --no-keep-cache gives the same state the other
 * way. "warm" reads again with the page cache populated. tmpfs has no cold
 * state: its cold row is its warm measurement, and says so.
 *
 * fuse-settings: one default daemon, and one daemon per setting under test;
 * the same workload runs on both in the same run (interleaved rounds,
 * medians), and the daemon's counters (FUSE reads, lookups) show the
 * mechanism behind each difference.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "tools/bench.h"

#define MAX_SIZES  8
#define MAX_ROUNDS 15

struct io_file {
	char path[PATH_MAX];
	uint64_t size;
	uint64_t hash;
};

/* --- file I/O ---------------------------------------------------------------------------- */

/* Write @size bytes of @buf to a new file @path in @io-byte calls; *@secs += time taken. */
static int write_file(const char *path, const uint8_t *buf, uint64_t size, size_t io, double *secs)
{
	double t0 = bench_now();
	uint64_t off = 0;
	ssize_t n;
	int fd, rc = 0;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		bench_err("create %s: %s", path, strerror(errno));
		return rc;
	}
	while (off < size) {
		size_t len = size - off < io ? (size_t)(size - off) : io;

		n = write(fd, buf + off, len);
		if (n <= 0) {
			rc = n < 0 ? -errno : -EIO;
			bench_err("write %s at %llu: %s", path, (unsigned long long)off,
				  strerror(-rc));
			break;
		}
		off += (uint64_t)n;
	}
	if (close(fd) && !rc) {
		rc = -errno;
		bench_err("close %s: %s", path, strerror(errno));
	}
	*secs += bench_now() - t0;
	return rc;
}

/*
 * Read @path whole into @buf (capacity @cap) in @io-byte calls; *@secs += the
 * time of open..close. @return bytes read, or a negative errno (-EFBIG if the
 * file holds more than @cap bytes).
 */
static int64_t read_file(const char *path, uint8_t *buf, uint64_t cap, size_t io, double *secs)
{
	double t0 = bench_now();
	uint64_t off = 0;
	uint8_t extra;
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		n = -errno;
		bench_err("open %s: %s", path, strerror(errno));
		return n;
	}
	for (;;) {
		size_t len = cap - off < io ? (size_t)(cap - off) : io;

		/* at capacity, one more byte tells EOF from a too-long file */
		n = len ? read(fd, buf + off, len) : read(fd, &extra, 1);
		if (n < 0) {
			n = -errno;
			bench_err("read %s at %llu: %s", path, (unsigned long long)off,
				  strerror(errno));
			break;
		}
		if (n == 0)
			break;
		if (!len) {
			bench_err("%s holds more than the %llu bytes written", path,
				  (unsigned long long)cap);
			n = -EFBIG;
			break;
		}
		off += (uint64_t)n;
	}
	close(fd);
	*secs += bench_now() - t0;
	return n < 0 ? n : (int64_t)off;
}

/* Drop the kernel page cache of @path (its clean pages). */
static int drop_cache(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc;

	if (fd < 0) {
		rc = -errno;
		bench_err("open %s: %s", path, strerror(errno));
		return rc;
	}
	rc = -posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
	if (rc)
		bench_err("posix_fadvise %s: %s", path, strerror(-rc));
	return rc;
}

struct read_job {
	const struct io_file *files;
	int n, nthreads, tid;
	size_t io;
	bool verify;
	uint8_t *buf;
	uint64_t cap;
	double busy;
	int bad;
	int rc;
};

static void *read_worker(void *arg)
{
	struct read_job *j = arg;

	for (int i = j->tid; i < j->n && !j->rc; i += j->nthreads) {
		int64_t got;

		if (bench_interrupted) {
			j->rc = -EINTR;
			break;
		}
		got = read_file(j->files[i].path, j->buf, j->cap, j->io, &j->busy);
		if (got < 0) {
			j->rc = (int)got;
			break;
		}
		if (j->verify && ((uint64_t)got != j->files[i].size ||
				  XXH3_64bits(j->buf, (size_t)got) != j->files[i].hash)) {
			bench_err("%s: content differs from what was written (%lld of %llu bytes)",
				  j->files[i].path, (long long)got,
				  (unsigned long long)j->files[i].size);
			j->bad++;
		}
	}
	return NULL;
}

/*
 * Read all @files with @nthreads threads (file i to thread i % nthreads),
 * after dropping their page cache if @drop. *@secs: the larger thread's
 * timed sum. Content is verified; a mismatch is an error (-EIO).
 */
static int read_set(const struct io_file *files, int n, int nthreads, size_t io, bool drop,
		    double *secs)
{
	struct read_job jobs[2];
	pthread_t th[2];
	uint64_t cap = 0;
	int rc = 0, bad = 0;

	if (nthreads < 1 || nthreads > 2)
		return -EINVAL;
	for (int i = 0; i < n; i++)
		cap = files[i].size > cap ? files[i].size : cap;
	for (int i = 0; drop && i < n; i++) {
		rc = drop_cache(files[i].path);
		if (rc)
			return rc;
	}
	memset(jobs, 0, sizeof(jobs));
	for (int t = 0; t < nthreads; t++) {
		jobs[t] = (struct read_job){.files = files,
					    .n = n,
					    .nthreads = nthreads,
					    .tid = t,
					    .io = io,
					    .verify = true,
					    .cap = cap};
		jobs[t].buf = bench_buf_alloc(cap);
		if (!jobs[t].buf) {
			rc = -ENOMEM;
			goto out;
		}
	}
	if (nthreads == 1) {
		read_worker(&jobs[0]);
	} else {
		for (int t = 0; t < nthreads; t++) {
			rc = -pthread_create(&th[t], NULL, read_worker, &jobs[t]);
			if (rc) {
				bench_err("pthread_create: %s", strerror(-rc));
				for (int u = 0; u < t; u++)
					pthread_join(th[u], NULL);
				goto out;
			}
		}
		for (int t = 0; t < nthreads; t++)
			pthread_join(th[t], NULL);
	}
	*secs = 0;
	for (int t = 0; t < nthreads; t++) {
		if (jobs[t].rc && !rc)
			rc = jobs[t].rc;
		bad += jobs[t].bad;
		*secs = jobs[t].busy > *secs ? jobs[t].busy : *secs;
	}
	if (!rc && bad) {
		bench_err("%d file(s) read back wrong bytes", bad);
		rc = -EIO;
	}
out:
	for (int t = 0; t < nthreads; t++)
		bench_buf_free(jobs[t].buf, cap);
	return rc;
}

/*
 * Write @n files of @size under @dirs[0..ndirs) (same names in each), content
 * seeded by @seed and the index; @secs[d] gets the time spent writing in dir d.
 */
static int write_set(struct io_file *files[], const char *const dirs[], int ndirs, int n,
		     uint64_t size, uint64_t seed, double *secs)
{
	uint8_t *buf = bench_buf_alloc(size);
	int rc = 0;

	if (!buf)
		return -ENOMEM;
	for (int d = 0; d < ndirs; d++) {
		secs[d] = 0;
		if (mkdir(dirs[d], 0755) && errno != EEXIST) {
			rc = -errno;
			bench_err("mkdir %s: %s", dirs[d], strerror(errno));
			goto out;
		}
	}
	for (int i = 0; i < n && !rc; i++) {
		uint64_t hash;

		if (bench_interrupted) {
			rc = -EINTR;
			break;
		}
		bench_fill(buf, size, seed * 1000003u + (uint64_t)i);
		hash = XXH3_64bits(buf, size);
		for (int d = 0; d < ndirs && !rc; d++) {
			struct io_file *f = &files[d][i];

			snprintf(f->path, sizeof(f->path), "%s/f%05d.bin", dirs[d], i);
			f->size = size;
			f->hash = hash;
			rc = write_file(f->path, buf, size, BENCH_IO, &secs[d]);
		}
	}
out:
	bench_buf_free(buf, size);
	return rc;
}

static double mbps(uint64_t bytes, double secs)
{
	return secs > 0 ? (double)bytes / secs / 1e6 : 0;
}

/* --- throughput ------------------------------------------------------------------------- */

struct tp_row {
	uint64_t size;
	char op[48];
	int threads;
	double kvfs, tmpfs; /* MB/s */
	bool tmpfs_is_warm; /* the cold row of tmpfs: its warm figure */
	double from_daemon; /* fraction of the bytes the daemon served, <0: n/a */
	double target;	    /* minimum kvfs/tmpfs, 0: none */
};

static void tp_add(json_t *rows, struct tp_row *all, int *nrows, const char *op,
		   const struct tp_row *row)
{
	json_t *o = json_object();
	struct tp_row *r = &all[(*nrows)++];
	double ratio;

	*r = *row;
	snprintf(r->op, sizeof(r->op), "%s", op);
	ratio = r->tmpfs > 0 ? r->kvfs / r->tmpfs : 0;
	json_object_set_new(o, "size_bytes", json_integer((json_int_t)r->size));
	json_object_set_new(o, "op", json_string(r->op));
	json_object_set_new(o, "threads", json_integer(r->threads));
	json_object_set_new(o, "kvfs_MBps", json_real(r->kvfs));
	json_object_set_new(o, "tmpfs_MBps", json_real(r->tmpfs));
	json_object_set_new(o, "tmpfs_is_warm", json_boolean(r->tmpfs_is_warm));
	json_object_set_new(o, "ratio", json_real(ratio));
	if (r->from_daemon >= 0)
		json_object_set_new(o, "from_daemon", json_real(r->from_daemon));
	if (r->target > 0) {
		json_object_set_new(o, "target_ratio", json_real(r->target));
		json_object_set_new(o, "verdict",
				    json_string(ratio >= r->target ? "PASS" : "BELOW"));
	}
	json_array_append_new(rows, o);
}

static void tp_print(const struct tp_row *rows, int n)
{
	char sz[32], tm[32], fd[16], tg[32];

	printf("\n%-8s %-26s %12s %12s %10s %12s  %s\n", "size", "op", "kvfs MB/s", "tmpfs MB/s",
	       "kvfs/tmpfs", "from daemon", "target (kvfs/tmpfs)");
	for (int i = 0; i < n; i++) {
		const struct tp_row *r = &rows[i];
		double ratio = r->tmpfs > 0 ? r->kvfs / r->tmpfs : 0;

		snprintf(tm, sizeof(tm), "%.0f%s", r->tmpfs, r->tmpfs_is_warm ? "*" : " ");
		if (r->from_daemon >= 0)
			snprintf(fd, sizeof(fd), "%.0f%%", r->from_daemon * 100);
		else
			snprintf(fd, sizeof(fd), "-");
		tg[0] = '\0';
		if (r->target > 0)
			snprintf(tg, sizeof(tg), ">= %.2f %s", r->target,
				 ratio >= r->target ? "PASS" : "BELOW");
		printf("%-8s %-26s %12.0f %12s %10.2f %12s  %s\n",
		       bench_fmt_size(r->size, sz, sizeof(sz)), r->op, r->kvfs, tm, ratio, fd, tg);
	}
	printf("* tmpfs has no cold state (its bytes are the page cache): its cold rows are its "
	       "warm reads.\n"
	       "cold = page cache dropped (posix_fadvise DONTNEED) before the timed reads; "
	       "--no-keep-cache = a daemon\n"
	       "  that drops it at every open() (inside the timed open). from daemon = the "
	       "daemon's read_bytes\n"
	       "  (write_bytes) delta / bytes moved. Targets are informational.\n");
}

/* Median MB/s of @rounds reads of @files; *@from gets the daemon's share of the bytes. */
static int measure_reads(const struct bench_mount *m, const struct io_file *files, int n,
			 int nthreads, size_t io, bool drop, int rounds, double *out, double *from)
{
	double v[MAX_ROUNDS], secs;
	uint64_t total = 0;
	int64_t before = 0, after;
	json_t *st;
	int rc;

	for (int i = 0; i < n; i++)
		total += files[i].size;
	if (m) {
		st = bench_mount_json(m, "stats");
		if (!st)
			return -EIO;
		before = bench_json_int(st, "read_bytes");
		json_decref(st);
	}
	for (int r = 0; r < rounds; r++) {
		rc = read_set(files, n, nthreads, io, drop, &secs);
		if (rc)
			return rc;
		v[r] = mbps(total, secs);
	}
	*out = bench_median(v, rounds);
	*from = -1;
	if (m) {
		st = bench_mount_json(m, "stats");
		if (!st)
			return -EIO;
		after = bench_json_int(st, "read_bytes");
		json_decref(st);
		*from = (double)(after - before) / ((double)total * rounds);
	}
	return 0;
}

static int stat_delta(const struct bench_mount *m, const char *field, int64_t *val)
{
	json_t *st = bench_mount_json(m, "stats");

	if (!st)
		return -EIO;
	*val = bench_json_int(st, field);
	json_decref(st);
	return 0;
}

/* The kernel's Cached (page cache plus shmem, tmpfs included) in bytes. */
static int64_t meminfo_cached(void)
{
	char line[128];
	long long kb = -1;
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Cached: %lld kB", &kb) == 1)
			break;
	fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

/* Memory rows: what one cold read pass costs the machine (issue 9). */
struct mem_row {
	uint64_t size;
	const char *mode;
	double ratio; /* (growth of Cached over the pass + daemon DRAM in use) / bytes read */
	int64_t cached_growth, dram_used, bytes;
};

static struct mem_row mem_rows[16];
static int nmem_rows;

/*
 * One cold pass over @files (page cache dropped first), 1 thread: the growth
 * of the kernel's Cached plus the daemon's DRAM in use (the files' bytes,
 * already there), against the bytes read. 1.0 = every byte cached once.
 */
static int tp_memory(const struct bench_mount *m, const struct io_file *files, int n,
		     uint64_t size, const char *mode, json_t *rows)
{
	struct mem_row *r = &mem_rows[nmem_rows < 16 ? nmem_rows++ : 15];
	double secs;
	int64_t c0, c1, used;
	uint64_t total = 0;
	json_t *o;
	int rc;

	for (int i = 0; i < n; i++) {
		total += files[i].size;
		rc = drop_cache(files[i].path);
		if (rc)
			return rc;
	}
	c0 = meminfo_cached();
	rc = read_set(files, n, 1, BENCH_IO, false, &secs);
	c1 = meminfo_cached();
	if (rc)
		return rc;
	rc = stat_delta(m, "tiers.dram.used_bytes", &used);
	if (rc)
		return rc;
	*r = (struct mem_row){.size = size,
			      .mode = mode,
			      .cached_growth = c1 - c0,
			      .dram_used = used,
			      .bytes = (int64_t)total};
	r->ratio = (double)(r->cached_growth + used) / (double)total;
	o = json_pack("{s:s,s:I,s:s,s:f,s:I,s:I,s:I,s:f}", "op", "memory", "size",
		      (json_int_t)size, "mode", mode, "ratio", r->ratio, "cached_growth",
		      (json_int_t)r->cached_growth, "dram_used", (json_int_t)used, "bytes_read",
		      (json_int_t)total, "target", 1.1);
	json_array_append_new(rows, o);
	return 0;
}

static void mem_print(void)
{
	char sz[32];

	if (!nmem_rows)
		return;
	printf("\n%-8s %-18s %14s %14s %14s %8s  %s\n", "size", "read path", "Cached growth",
	       "daemon DRAM", "bytes read", "ratio", "target");
	for (int i = 0; i < nmem_rows; i++) {
		const struct mem_row *r = &mem_rows[i];

		printf("%-8s %-18s %12.1fM %12.1fM %12.1fM %8.2f  <= 1.10 %s\n",
		       bench_fmt_size(r->size, sz, sizeof(sz)), r->mode,
		       (double)r->cached_growth / 1048576.0, (double)r->dram_used / 1048576.0,
		       (double)r->bytes / 1048576.0, r->ratio, r->ratio <= 1.1 ? "PASS" : "ABOVE");
	}
	printf("ratio = (growth of the kernel's Cached over one cold read pass + the daemon's DRAM "
	       "in use) / bytes read:\n"
	       "  1.0 = every byte cached once; 2.0 = once in the daemon, again in the FUSE page "
	       "cache.\n");
	nmem_rows = 0;
}

/* Cold and warm reads of a mount's @files, 1 and 2 threads, as rows named after @tag. */
static int tp_reads(struct bench_mount *d, const struct io_file *files, const struct io_file *tf,
		    int n, uint64_t size, int rounds, const char *tag, json_t *rows,
		    struct tp_row *all, int *nrows)
{
	double mb, twarm, from;
	int rc;

	for (int t = 1; t <= 2; t++) {
		rc = measure_reads(NULL, tf, n, t, BENCH_IO, false, rounds, &twarm, &from);
		/* cold first: its rounds leave every page cached, so warm follows */
		for (int warm = 0; warm < 2 && !rc; warm++) {
			char op[48];

			rc = measure_reads(d, files, n, t, BENCH_IO, !warm, rounds, &mb, &from);
			if (rc)
				break;
			snprintf(op, sizeof(op), "read %s%s, %d thr%s", warm ? "warm" : "cold", tag,
				 t, t > 1 ? "s" : "");
			tp_add(rows, all, nrows, op,
			       &(struct tp_row){.size = size,
						.threads = t,
						.kvfs = mb,
						.tmpfs = twarm,
						.tmpfs_is_warm = !warm,
						.from_daemon = from,
						.target = *tag	 ? 0
							  : warm ? 0.9
							  : size >= (32u << 20) ? 0.8
										: 0.6});
		}
		if (rc)
			return rc;
	}
	return 0;
}

/* Start a variant daemon and write the same set of files into it (in @dir). */
static int tp_variant(struct bench_mount *v, const char *name, uint64_t dram,
		      const char *const *args, uint64_t size, int n, struct io_file *files,
		      char *dir, size_t dirlen)
{
	struct io_file *f[1] = {files};
	const char *dirs[1] = {dir};
	double wsecs[1];
	int rc = bench_mount_start(v, name, dram, args);

	if (rc)
		return rc;
	bench_path(dir, dirlen, "%s/tp-%llu", v->mnt, (unsigned long long)size);
	return write_set(f, dirs, 1, n, size, size, wsecs);
}

static int tp_one_size(uint64_t size, uint64_t total, uint64_t dram, int rounds,
		       const char *tmpfs_root, json_t *rows, struct tp_row *all, int *nrows)
{
	const char *const nkc[] = {"--no-keep-cache", "--no-passthrough", NULL};
	const char *const npc[] = {"--no-passthrough", NULL};
	struct bench_mount d, nk, np;
	struct io_file *files[2] = {NULL, NULL}, *nkfiles = NULL, *npfiles = NULL;
	char kdir[PATH_MAX] = "", tdir[PATH_MAX] = "", nkdir[PATH_MAX] = "", npdir[PATH_MAX] = "";
	char sz[32];
	const char *dirs[2] = {kdir, tdir};
	int n = (int)(total / size), rc;
	double wsecs[2], cold, twarm, from;
	int64_t wb0, wb1;

	memset(&d, 0, sizeof(d));
	memset(&nk, 0, sizeof(nk));
	memset(&np, 0, sizeof(np));
	if (n < 2) {
		bench_err("--total must hold at least two %s files (two reader threads)",
			  bench_fmt_size(size, sz, sizeof(sz)));
		return -EINVAL;
	}
	bench_note("throughput %s: %d files, kvfs vs tmpfs", bench_fmt_size(size, sz, sizeof(sz)),
		   n);
	files[0] = calloc((size_t)n, sizeof(struct io_file));
	files[1] = calloc((size_t)n, sizeof(struct io_file));
	nkfiles = calloc((size_t)n, sizeof(struct io_file));
	npfiles = calloc((size_t)n, sizeof(struct io_file));
	if (!files[0] || !files[1] || !nkfiles || !npfiles) {
		rc = -ENOMEM;
		goto out;
	}
	rc = bench_mount_start(&d, "default", dram, NULL);
	if (rc)
		goto out;
	bench_path(kdir, sizeof(kdir), "%s/tp-%llu", d.mnt, (unsigned long long)size);
	bench_path(tdir, sizeof(tdir), "%s/tp-%llu", tmpfs_root, (unsigned long long)size);
	rc = stat_delta(&d, "write_bytes", &wb0);
	if (rc)
		goto out;
	rc = write_set(files, dirs, 2, n, size, size, wsecs);
	if (rc)
		goto out;
	rc = stat_delta(&d, "write_bytes", &wb1);
	if (rc)
		goto out;
	tp_add(rows, all, nrows, "write",
	       &(struct tp_row){.size = size,
				.threads = 1,
				.kvfs = mbps((uint64_t)n * size, wsecs[0]),
				.tmpfs = mbps((uint64_t)n * size, wsecs[1]),
				.from_daemon = (double)(wb1 - wb0) / ((double)n * (double)size)});

	rc = tp_reads(&d, files[0], files[1], n, size, rounds, "", rows, all, nrows);
	rc = rc ? rc : tp_memory(&d, files[0], n, size, "passthrough", rows);
	if (rc)
		goto out;
	rc = bench_mount_stop(&d);
	if (rc)
		goto out;

	/* Today's read path, the peer of passthrough: every read through the daemon. */
	rc = tp_variant(&np, "no-passthrough", dram, npc, size, n, npfiles, npdir, sizeof(npdir));
	rc = rc ? rc : tp_reads(&np, npfiles, files[1], n, size, rounds, " --no-pt", rows, all, nrows);
	rc = rc ? rc : tp_memory(&np, npfiles, n, size, "--no-passthrough", rows);
	if (rc)
		goto out;
	rc = bench_mount_stop(&np);
	if (rc)
		goto out;

	/* Second cold variant: a daemon that drops the page cache at every open. */
	rc = tp_variant(&nk, "no-keep-cache", dram, nkc, size, n, nkfiles, nkdir, sizeof(nkdir));
	if (rc)
		goto out;
	for (int t = 1; t <= 2; t++) {
		char op[48];

		rc = measure_reads(NULL, files[1], n, t, BENCH_IO, false, rounds, &twarm, &from);
		rc = rc ? rc
			: measure_reads(&nk, nkfiles, n, t, BENCH_IO, false, rounds, &cold, &from);
		if (rc)
			goto out;
		snprintf(op, sizeof(op), "read --no-keep-cache, %d thr", t);
		tp_add(rows, all, nrows, op,
		       &(struct tp_row){.size = size,
					.threads = t,
					.kvfs = cold,
					.tmpfs = twarm,
					.tmpfs_is_warm = true,
					.from_daemon = from,
					.target = 0.25});
	}
	rc = bench_mount_stop(&nk);
out:
	bench_mount_stop(&nk);
	bench_mount_stop(&np);
	bench_mount_stop(&d);
	bench_rmtree(tdir);
	free(files[0]);
	free(files[1]);
	free(nkfiles);
	free(npfiles);
	return rc;
}

int bench_throughput(int argc, char **argv, json_t *out)
{
	static const struct option longopts[] = {
		{"sizes", required_argument, NULL, 's'}, {"total", required_argument, NULL, 't'},
		{"dram", required_argument, NULL, 'd'},	 {"rounds", required_argument, NULL, 'r'},
		{"help", no_argument, NULL, 'h'},	 {NULL, 0, NULL, 0},
	};
	uint64_t sizes[MAX_SIZES] = {2 * BENCH_MIB, 32 * BENCH_MIB}, total = 512 * BENCH_MIB,
		 dram = 2048 * BENCH_MIB, maxsize = 0;
	struct tp_row *all = NULL;
	int nsizes = 2, rounds = 3, nrows = 0, opt, rc;
	char tmpfs_root[PATH_MAX] = "", a[32], b[32], c[32];
	json_t *section, *rows;

	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 's':
			nsizes = bench_parse_sizes(optarg, sizes, MAX_SIZES);
			if (nsizes < 0) {
				bench_err("invalid --sizes '%s' (e.g. 2M,32M)", optarg);
				return -EINVAL;
			}
			break;
		case 't':
			if (bench_parse_size(optarg, &total) || !total) {
				bench_err("invalid --total '%s' (e.g. 512M)", optarg);
				return -EINVAL;
			}
			break;
		case 'd':
			if (bench_parse_size(optarg, &dram) || !dram) {
				bench_err("invalid --dram '%s' (e.g. 2G)", optarg);
				return -EINVAL;
			}
			break;
		case 'r':
			rounds = atoi(optarg);
			if (rounds < 1 || rounds > MAX_ROUNDS) {
				bench_err("--rounds must be 1..%d", MAX_ROUNDS);
				return -EINVAL;
			}
			break;
		case 'h':
			printf("usage: kvfs-bench throughput [--sizes 2M,32M] [--total 512M] "
			       "[--dram 2G] [--rounds 3]\n");
			return 0;
		default:
			bench_err("throughput: unknown or incomplete option '%s'",
				  argv[optind - 1]);
			return -EINVAL;
		}
	}
	for (int i = 0; i < nsizes; i++)
		maxsize = sizes[i] > maxsize ? sizes[i] : maxsize;
	if (maxsize > (1ull << 30)) {
		bench_err("file sizes above 1 GiB are not supported (buffers are file-sized)");
		return -EINVAL;
	}
	/* Files round up to the daemon's 64 KiB pages; leave room for that. */
	if (total + total / 16 + 64 * BENCH_MIB > dram) {
		bench_err("--dram %s is too small for --total %s (needs about %s)",
			  bench_fmt_size(dram, a, sizeof(a)), bench_fmt_size(total, b, sizeof(b)),
			  bench_fmt_size(total + total / 16 + 64 * BENCH_MIB, c, sizeof(c)));
		return -EINVAL;
	}
	printf("\n== throughput: %s per size, 1 MiB read()/write(), median of %d rounds, "
	       "kvfs --dram %s vs tmpfs ==\n",
	       bench_fmt_size(total, a, sizeof(a)), rounds, bench_fmt_size(dram, b, sizeof(b)));
	rc = bench_scratch_tmpfs(total, tmpfs_root, sizeof(tmpfs_root));
	if (rc)
		return rc;
	printf("tmpfs peer: %s\n", tmpfs_root);
	section = json_object();
	rows = json_array();
	json_object_set_new(section, "total_bytes", json_integer((json_int_t)total));
	json_object_set_new(section, "dram_bytes", json_integer((json_int_t)dram));
	json_object_set_new(section, "rounds", json_integer(rounds));
	json_object_set_new(section, "io_bytes", json_integer(BENCH_IO));
	json_object_set_new(section, "tmpfs", json_string(tmpfs_root));
	json_object_set_new(section, "rows", rows);
	json_object_set_new(out, "throughput", section);
	all = calloc((size_t)nsizes * 16, sizeof(*all));
	if (!all) {
		rc = -ENOMEM;
		goto out;
	}
	for (int i = 0; i < nsizes; i++) {
		rc = tp_one_size(sizes[i], total, dram, rounds, tmpfs_root, rows, all, &nrows);
		if (rc)
			break;
	}
	tp_print(all, nrows);
	mem_print();
out:
	bench_scratch_release(tmpfs_root);
	free(all);
	return rc;
}

/* --- fuse-settings ------------------------------------------------------------------------ */

struct fs_row {
	const char *setting;
	const char *workload;
	const char *unit;
	bool higher_better;
	double def, var;
	char def_note[64], var_note[64];
	const char *mech; /* the daemon-side figure that explains the difference */
	double def_mech, var_mech;
};

static void fs_emit(json_t *rows, struct fs_row *all, int *n, const struct fs_row *r)
{
	json_t *o = json_object();
	double gain = r->higher_better ? (r->var > 0 ? r->def / r->var : 0)
				       : (r->def > 0 ? r->var / r->def : 0);

	all[(*n)++] = *r;
	json_object_set_new(o, "setting", json_string(r->setting));
	json_object_set_new(o, "workload", json_string(r->workload));
	json_object_set_new(o, "unit", json_string(r->unit));
	json_object_set_new(o, "default", json_real(r->def));
	json_object_set_new(o, "variant", json_real(r->var));
	json_object_set_new(o, "default_speedup", json_real(gain));
	json_object_set_new(o, "default_note", json_string(r->def_note));
	json_object_set_new(o, "variant_note", json_string(r->var_note));
	if (r->mech) {
		json_object_set_new(o, "mechanism", json_string(r->mech));
		json_object_set_new(o, "default_mechanism", json_real(r->def_mech));
		json_object_set_new(o, "variant_mechanism", json_real(r->var_mech));
	}
	json_array_append_new(rows, o);
}

static void fs_print(const struct fs_row *rows, int n)
{
	printf("\n%-37s %-36s %18s %18s %8s\n", "setting: default vs variant", "workload",
	       "default", "variant", "speedup");
	for (int i = 0; i < n; i++) {
		const struct fs_row *r = &rows[i];
		double gain = r->higher_better ? (r->var > 0 ? r->def / r->var : 0)
					       : (r->def > 0 ? r->var / r->def : 0);
		char d[40], v[40];

		snprintf(d, sizeof(d), "%.*f %s", r->higher_better ? 0 : 1, r->def, r->unit);
		snprintf(v, sizeof(v), "%.*f %s", r->higher_better ? 0 : 1, r->var, r->unit);
		printf("%-37s %-36s %18s %18s %7.2fx\n", r->setting, r->workload, d, v, gain);
		printf("%-37s %-36s %18s %18s\n", "", "", r->def_note, r->var_note);
	}
	printf("speedup = how much faster the default daemon ran the workload than the variant "
	       "(same run, median of rounds).\n");
}

/* Cold (dropped) or warm median read MB/s of @files, plus average FUSE read request size. */
static int fs_reads(const struct bench_mount *m, const struct io_file *files, int n, size_t io,
		    bool drop, int rounds, double *mb, double *from, double *avg_req_kib)
{
	int64_t r0, b0, r1, b1;
	int rc;

	rc = stat_delta(m, "reads", &r0);
	rc = rc ? rc : stat_delta(m, "read_bytes", &b0);
	rc = rc ? rc : measure_reads(m, files, n, 1, io, drop, rounds, mb, from);
	rc = rc ? rc : stat_delta(m, "reads", &r1);
	rc = rc ? rc : stat_delta(m, "read_bytes", &b1);
	if (!rc)
		*avg_req_kib = r1 > r0 ? (double)(b1 - b0) / (double)(r1 - r0) / 1024.0 : 0;
	return rc;
}

/* The read-ahead pair: default (1M) against --read-ahead 128K, cold 32 MiB reads. */
static int fs_read_ahead(struct bench_mount *d, int rounds, json_t *rows, struct fs_row *all,
			 int *nrows)
{
	const char *const ra[] = {"--read-ahead", "128K", NULL};
	const size_t ios[2] = {BENCH_IO, 128 * 1024};
	const int n = 8;
	const uint64_t size = 32 * BENCH_MIB;
	struct io_file *files[2] = {NULL, NULL};
	char ddir[PATH_MAX], vdir[PATH_MAX];
	const char *dirs[2] = {ddir, vdir};
	struct bench_mount v;
	double w[2];
	int rc;

	memset(&v, 0, sizeof(v));
	bench_note("fuse-settings: read-ahead (8 x 32 MiB, cold)");
	files[0] = calloc(n, sizeof(struct io_file));
	files[1] = calloc(n, sizeof(struct io_file));
	if (!files[0] || !files[1]) {
		rc = -ENOMEM;
		goto out;
	}
	rc = bench_mount_start(&v, "read-ahead 128K", 512 * BENCH_MIB, ra);
	if (rc)
		goto out;
	bench_path(ddir, sizeof(ddir), "%s/ra", d->mnt);
	bench_path(vdir, sizeof(vdir), "%s/ra", v.mnt);
	rc = write_set(files, dirs, 2, n, size, 77, w);
	if (rc)
		goto out;
	for (int k = 0; k < 2; k++) {
		struct fs_row r = {.setting = "read-ahead: 1M vs --read-ahead 128K",
				   .workload = k == 0 ? "cold 32 MiB files, 1 MiB read()"
						      : "cold 32 MiB files, 128 KiB read()",
				   .unit = "MB/s",
				   .higher_better = true};
		double fd, fv, qd, qv;

		/* interleave the two daemons round by round so drift hits both */
		double vd[MAX_ROUNDS], vv[MAX_ROUNDS];

		for (int i = 0; i < rounds; i++) {
			rc = fs_reads(d, files[0], n, ios[k], true, 1, &vd[i], &fd, &qd);
			rc = rc ? rc : fs_reads(&v, files[1], n, ios[k], true, 1, &vv[i], &fv, &qv);
			if (rc)
				goto out;
		}
		r.def = bench_median(vd, rounds);
		r.var = bench_median(vv, rounds);
		r.mech = "avg_fuse_read_KiB";
		r.def_mech = qd;
		r.var_mech = qv;
		snprintf(r.def_note, sizeof(r.def_note), "ra/req %ld/%.0fK",
			 bench_mount_read_ahead_kb(d), qd);
		snprintf(r.var_note, sizeof(r.var_note), "ra/req %ld/%.0fK",
			 bench_mount_read_ahead_kb(&v), qv);
		fs_emit(rows, all, nrows, &r);
	}
	rc = bench_mount_stop(&v);
out:
	bench_mount_stop(&v);
	for (int i = 0; files[0] && i < n; i++)
		unlink(files[0][i].path);
	free(files[0]);
	free(files[1]);
	return rc;
}

/* The page-cache pair: default (keep cache) against --no-keep-cache, warm 2 MiB reads. */
static int fs_page_cache(struct bench_mount *d, int rounds, json_t *rows, struct fs_row *all,
			 int *nrows)
{
	const char *const nkc[] = {"--no-keep-cache", NULL};
	const int n = 128;
	const uint64_t size = 2 * BENCH_MIB;
	struct io_file *files[2] = {NULL, NULL};
	char ddir[PATH_MAX], vdir[PATH_MAX];
	const char *dirs[2] = {ddir, vdir};
	struct fs_row r = {.setting = "page cache: keep vs --no-keep-cache",
			   .workload = "warm re-reads of 128 x 2 MiB files",
			   .unit = "MB/s",
			   .higher_better = true};
	struct bench_mount v;
	double w[2], vd[MAX_ROUNDS], vv[MAX_ROUNDS], fd = 0, fv = 0, q;
	int rc;

	memset(&v, 0, sizeof(v));
	bench_note("fuse-settings: kernel page cache (128 x 2 MiB, warm)");
	files[0] = calloc(n, sizeof(struct io_file));
	files[1] = calloc(n, sizeof(struct io_file));
	if (!files[0] || !files[1]) {
		rc = -ENOMEM;
		goto out;
	}
	rc = bench_mount_start(&v, "no-keep-cache", 512 * BENCH_MIB, nkc);
	if (rc)
		goto out;
	bench_path(ddir, sizeof(ddir), "%s/pc", d->mnt);
	bench_path(vdir, sizeof(vdir), "%s/pc", v.mnt);
	rc = write_set(files, dirs, 2, n, size, 78, w);
	if (rc)
		goto out;
	/* one untimed pass on each so "warm" means read before */
	rc = fs_reads(d, files[0], n, BENCH_IO, false, 1, &vd[0], &fd, &q);
	rc = rc ? rc : fs_reads(&v, files[1], n, BENCH_IO, false, 1, &vv[0], &fv, &q);
	for (int i = 0; i < rounds && !rc; i++) {
		rc = fs_reads(d, files[0], n, BENCH_IO, false, 1, &vd[i], &fd, &q);
		rc = rc ? rc : fs_reads(&v, files[1], n, BENCH_IO, false, 1, &vv[i], &fv, &q);
	}
	if (rc)
		goto out;
	r.def = bench_median(vd, rounds);
	r.var = bench_median(vv, rounds);
	r.mech = "from_daemon";
	r.def_mech = fd;
	r.var_mech = fv;
	snprintf(r.def_note, sizeof(r.def_note), "%.0f%% from daemon", fd * 100);
	snprintf(r.var_note, sizeof(r.var_note), "%.0f%% from daemon", fv * 100);
	fs_emit(rows, all, nrows, &r);
	rc = bench_mount_stop(&v);
out:
	bench_mount_stop(&v);
	for (int i = 0; files[0] && i < n; i++)
		unlink(files[0][i].path);
	free(files[0]);
	free(files[1]);
	return rc;
}

/* Create @nfiles 1 KiB files as @root/dNN/fNNNNN (100 per directory). */
static int make_small_files(const char *root, int nfiles)
{
	char path[PATH_MAX], buf[1024];
	int rc = 0, fd;

	if (mkdir(root, 0755) && errno != EEXIST)
		return -errno;
	for (int i = 0; i < nfiles && !rc; i++) {
		if (bench_interrupted)
			return -EINTR;
		if (i % 100 == 0) {
			bench_path(path, sizeof(path), "%s/d%03d", root, i / 100);
			if (mkdir(path, 0755) && errno != EEXIST) {
				rc = -errno;
				bench_err("mkdir %s: %s", path, strerror(errno));
				break;
			}
		}
		bench_path(path, sizeof(path), "%s/d%03d/f%05d", root, i / 100, i);
		bench_fill(buf, sizeof(buf), (uint64_t)i);
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (fd < 0 || write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf) || close(fd)) {
			rc = errno ? -errno : -EIO;
			bench_err("create %s: %s", path, strerror(errno));
		}
	}
	return rc;
}

/*
 * One timed metadata pass over @nfiles names under @root: stat + open/close
 * of each existing file (@missing false), or stat of each missing name
 * (@missing true, expects ENOENT). @return 0 and *@secs.
 */
static int meta_pass(const char *root, int nfiles, bool missing, double *secs)
{
	char path[PATH_MAX];
	struct stat st;
	double t0 = bench_now();
	int fd;

	for (int i = 0; i < nfiles; i++) {
		if (bench_interrupted)
			return -EINTR;
		bench_path(path, sizeof(path), "%s/d%03d/%s%05d", root, i / 100,
			   missing ? "missing" : "f", i);
		if (missing) {
			if (stat(path, &st) == 0 || errno != ENOENT) {
				bench_err("stat %s: expected ENOENT, got %s", path,
					  errno ? strerror(errno) : "success");
				return -EIO;
			}
			continue;
		}
		if (stat(path, &st)) {
			bench_err("stat %s: %s", path, strerror(errno));
			return -errno;
		}
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			bench_err("open %s: %s", path, strerror(errno));
			return -errno;
		}
		close(fd);
	}
	*secs = bench_now() - t0;
	return 0;
}

/* Rounds of (untimed warm-up pass, timed pass); median µs per name, lookups per name. */
static int meta_measure(const struct bench_mount *m, const char *root, int nfiles, bool missing,
			int rounds, double *us, double *lookups)
{
	double v[MAX_ROUNDS], secs, lk[MAX_ROUNDS];
	int64_t l0, l1;
	int rc;

	for (int r = 0; r < rounds; r++) {
		rc = meta_pass(root, nfiles, missing, &secs);
		rc = rc ? rc : stat_delta(m, "lookups", &l0);
		rc = rc ? rc : meta_pass(root, nfiles, missing, &secs);
		rc = rc ? rc : stat_delta(m, "lookups", &l1);
		if (rc)
			return rc;
		v[r] = secs * 1e6 / nfiles;
		lk[r] = (double)(l1 - l0) / nfiles;
	}
	*us = bench_median(v, rounds);
	*lookups = bench_median(lk, rounds);
	return 0;
}

static int fs_metadata(struct bench_mount *d, int nfiles, int rounds, json_t *rows,
		       struct fs_row *all, int *nrows)
{
	const char *const zero[] = {"--entry-timeout", "0", "--attr-timeout", "0", NULL};
	const char *const neg[] = {"--negative-timeout", "0", NULL};
	char droot[PATH_MAX], vroot[PATH_MAX], wl[2][64];
	struct bench_mount v;
	double ld, lv;
	int rc;

	memset(&v, 0, sizeof(v));
	snprintf(wl[0], sizeof(wl[0]), "stat+open+close of %d files", nfiles);
	snprintf(wl[1], sizeof(wl[1]), "stat of %d missing names", nfiles);
	struct fs_row r1 = {.setting = "entry/attr timeout: 30 s vs 0",
			    .workload = wl[0],
			    .unit = "us/file",
			    .higher_better = false};
	struct fs_row r2 = {.setting = "negative timeout: 1 s vs 0",
			    .workload = wl[1],
			    .unit = "us/name",
			    .higher_better = false};

	bench_note("fuse-settings: entry/attr timeouts (%d small files)", nfiles);
	bench_path(droot, sizeof(droot), "%s/meta", d->mnt);
	rc = make_small_files(droot, nfiles);
	if (rc)
		goto out;
	rc = bench_mount_start(&v, "entry/attr timeout 0", 1024 * BENCH_MIB, zero);
	if (rc)
		goto out;
	bench_path(vroot, sizeof(vroot), "%s/meta", v.mnt);
	rc = make_small_files(vroot, nfiles);
	rc = rc ? rc : meta_measure(d, droot, nfiles, false, rounds, &r1.def, &ld);
	rc = rc ? rc : meta_measure(&v, vroot, nfiles, false, rounds, &r1.var, &lv);
	if (rc)
		goto out;
	r1.mech = "lookups_per_file";
	r1.def_mech = ld;
	r1.var_mech = lv;
	snprintf(r1.def_note, sizeof(r1.def_note), "%.2f lookups/file", ld);
	snprintf(r1.var_note, sizeof(r1.var_note), "%.2f lookups/file", lv);
	fs_emit(rows, all, nrows, &r1);
	rc = bench_mount_stop(&v);
	if (rc)
		goto out;

	bench_note("fuse-settings: negative timeout (%d missing names)", nfiles);
	rc = bench_mount_start(&v, "negative timeout 0", 1024 * BENCH_MIB, neg);
	if (rc)
		goto out;
	bench_path(vroot, sizeof(vroot), "%s/meta", v.mnt);
	/* the same directories, no files: every name below is missing */
	rc = make_small_files(vroot, 0);
	for (int i = 0; i < nfiles / 100 + 1 && !rc; i++) {
		char p[PATH_MAX];

		bench_path(p, sizeof(p), "%s/d%03d", vroot, i);
		if (mkdir(p, 0755) && errno != EEXIST)
			rc = -errno;
	}
	rc = rc ? rc : meta_measure(d, droot, nfiles, true, rounds, &r2.def, &ld);
	rc = rc ? rc : meta_measure(&v, vroot, nfiles, true, rounds, &r2.var, &lv);
	if (rc)
		goto out;
	r2.mech = "lookups_per_name";
	r2.def_mech = ld;
	r2.var_mech = lv;
	snprintf(r2.def_note, sizeof(r2.def_note), "%.2f lookups/name", ld);
	snprintf(r2.var_note, sizeof(r2.var_note), "%.2f lookups/name", lv);
	fs_emit(rows, all, nrows, &r2);
	rc = bench_mount_stop(&v);
out:
	bench_mount_stop(&v);
	return rc;
}

int bench_fuse_settings(int argc, char **argv, json_t *out)
{
	static const struct option longopts[] = {
		{"rounds", required_argument, NULL, 'r'},
		{"files", required_argument, NULL, 'n'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct fs_row all[8];
	struct bench_mount d;
	int rounds = 3, nfiles = 10000, nrows = 0, opt, rc;
	json_t *section, *rows;

	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'r':
			rounds = atoi(optarg);
			if (rounds < 1 || rounds > MAX_ROUNDS) {
				bench_err("--rounds must be 1..%d", MAX_ROUNDS);
				return -EINVAL;
			}
			break;
		case 'n':
			nfiles = atoi(optarg);
			if (nfiles < 100 || nfiles > 100000) {
				bench_err("--files must be 100..100000");
				return -EINVAL;
			}
			break;
		case 'h':
			printf("usage: kvfs-bench fuse-settings [--rounds 3] [--files 10000]\n");
			return 0;
		default:
			bench_err("fuse-settings: unknown or incomplete option '%s'",
				  argv[optind - 1]);
			return -EINVAL;
		}
	}
	printf("\n== fuse-settings: each setting against the default daemon, same run, median of "
	       "%d rounds ==\n",
	       rounds);
	section = json_object();
	rows = json_array();
	json_object_set_new(section, "rounds", json_integer(rounds));
	json_object_set_new(section, "files", json_integer(nfiles));
	json_object_set_new(section, "rows", rows);
	json_object_set_new(out, "fuse_settings", section);
	memset(&d, 0, sizeof(d));
	rc = bench_mount_start(&d, "default", 2048 * BENCH_MIB, NULL);
	if (rc)
		return rc;
	rc = fs_read_ahead(&d, rounds, rows, all, &nrows);
	rc = rc ? rc : fs_page_cache(&d, rounds, rows, all, &nrows);
	rc = rc ? rc : fs_metadata(&d, nfiles, rounds, rows, all, &nrows);
	if (!rc && geteuid() != 0)
		printf("note: not root: the daemon cannot raise the mount's bdi read-ahead, so the "
		       "read-ahead pair may compare equal settings (see the ra notes)\n");
	fs_print(all, nrows);
	bench_mount_stop(&d);
	return rc;
}
