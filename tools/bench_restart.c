/*
 * tools/bench_restart.c — `kvfs-bench restart`: how long a daemon takes to
 * come back with a million files in its catalog.
 *
 * A daemon with --persist through and 4 KiB pages (so a 4 KiB file takes
 * one NVMe page) is filled through its mount with N small files, 1000 per
 * directory, by several threads. Then, on the same state and segments:
 *   - clean: unmount (timed: the shutdown flush) and start again;
 *   - crash: kill -9 and start again (RocksDB replays its WAL).
 * A start is timed from exec to the mount being ready (the daemon returns
 * when it is), which covers the catalog scan, the NVMe extent map and free
 * map rebuilt from the records, and the in-memory tree. After each start
 * the daemon must report every file recovered, and a sample of files is
 * read back byte-exact. The daemon's resident memory after the start is
 * reported too.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tools/bench.h"

#define FILE_BYTES 4096u
#define PER_DIR	   1000u
#define SAMPLE	   2000u

struct filler {
	const char *mnt;
	unsigned first, count; /* file indexes [first, first + count) */
	int rc;
};

/* File @i: directory i / PER_DIR, a 64-hex name derived from i. */
static int file_path(char *out, size_t len, const char *mnt, unsigned i)
{
	uint64_t h = (uint64_t)i * 0x9e3779b97f4a7c15ull;

	return bench_path(out, len, "%s/d%04u/%016llx%016llx%016llx%016llx", mnt, i / PER_DIR,
			  (unsigned long long)h, (unsigned long long)(h ^ 0xa5a5a5a5a5a5a5a5ull),
			  (unsigned long long)~h, (unsigned long long)i);
}

static void *fill_thread(void *arg)
{
	struct filler *f = arg;
	uint8_t buf[FILE_BYTES];
	char path[PATH_MAX];

	for (unsigned i = f->first; i < f->first + f->count && !bench_interrupted; i++) {
		int fd;

		if (i % PER_DIR == 0 || i == f->first) {
			bench_path(path, sizeof(path), "%s/d%04u", f->mnt, i / PER_DIR);
			if (mkdir(path, 0755) && errno != EEXIST) {
				bench_err("restart: mkdir %s: %s", path, strerror(errno));
				f->rc = -errno;
				return NULL;
			}
		}
		file_path(path, sizeof(path), f->mnt, i);
		bench_fill(buf, sizeof(buf), i);
		fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
		if (fd < 0 || write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf)) {
			bench_err("restart: write %s: %s", path, strerror(errno));
			f->rc = -EIO;
			if (fd >= 0)
				close(fd);
			return NULL;
		}
		if (close(fd)) {
			bench_err("restart: close %s: %s", path, strerror(errno));
			f->rc = -EIO;
			return NULL;
		}
	}
	if (bench_interrupted)
		f->rc = -EINTR;
	return NULL;
}

/* Fill with @n files from @nthreads threads; each thread owns whole directories. */
static int fill(const char *mnt, unsigned n, unsigned nthreads)
{
	pthread_t th[16];
	struct filler f[16];
	unsigned dirs = (n + PER_DIR - 1) / PER_DIR, at = 0;
	int rc = 0;

	for (unsigned t = 0; t < nthreads; t++) {
		unsigned d = dirs / nthreads + (t < dirs % nthreads);

		f[t] = (struct filler){mnt, at, d * PER_DIR < n - at ? d * PER_DIR : n - at, 0};
		at += f[t].count;
		if (pthread_create(&th[t], NULL, fill_thread, &f[t])) {
			nthreads = t;
			rc = -EAGAIN;
			break;
		}
	}
	for (unsigned t = 0; t < nthreads; t++) {
		pthread_join(th[t], NULL);
		if (!rc)
			rc = f[t].rc;
	}
	return rc;
}

/* Read SAMPLE files spread over the set and compare every byte. */
static int check_sample(const char *mnt, unsigned n)
{
	uint8_t want[FILE_BYTES], got[FILE_BYTES + 1];
	char path[PATH_MAX];

	for (unsigned k = 0; k < SAMPLE && k < n; k++) {
		unsigned i = (unsigned)(((uint64_t)k * 2654435761u) % n);
		ssize_t r;
		int fd;

		file_path(path, sizeof(path), mnt, i);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			bench_err("restart: %s is gone after the restart: %s", path, strerror(errno));
			return -EIO;
		}
		r = read(fd, got, sizeof(got));
		close(fd);
		bench_fill(want, sizeof(want), i);
		if (r != FILE_BYTES || memcmp(want, got, FILE_BYTES)) {
			bench_err("restart: %s differs after the restart", path);
			return -EIO;
		}
	}
	return 0;
}

/* After a start: every file recovered, a sample byte-exact. */
static int check_start(struct bench_mount *m, unsigned n, const char *how)
{
	json_t *st = bench_mount_json(m, "stats");
	int64_t back = st ? bench_json_int(st, "restart_recovered") : -1;

	json_decref(st);
	if (back != (int64_t)n) {
		bench_err("restart: after the %s restart the daemon recovered %lld of %u files", how,
			  (long long)back, n);
		return -EIO;
	}
	return check_sample(m->mnt, n);
}

int bench_restart(int argc, char **argv, json_t *out)
{
	unsigned n = 1000000, nthreads = 4;
	char nvdir[] = "/var/tmp/kvfs-bench-nv-XXXXXX", nvarg[PATH_MAX + 32];
	const char *extra[] = {"--page-size", "4K", "--nvme", nvarg, "--persist", "through", NULL};
	const uint64_t dram = 256ull << 20;
	struct bench_mount m = {0};
	double t0, t_fill, t_unmount, t_clean, t_crash;
	long rss_clean, rss_crash;
	int rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--files") && i + 1 < argc) {
			n = (unsigned)strtoul(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
			nthreads = (unsigned)strtoul(argv[++i], NULL, 10);
		} else {
			bench_err("restart: usage: restart [--files 1000000] [--threads 4]");
			return -EINVAL;
		}
	}
	if (n == 0 || nthreads == 0 || nthreads > 16) {
		bench_err("restart: --files must be > 0 and --threads 1..16");
		return -EINVAL;
	}
	if (!mkdtemp(nvdir)) {
		bench_err("restart: cannot make a scratch directory under /var/tmp");
		return -EIO;
	}
	/* one 4 KiB page per file, and room to spare */
	bench_path(nvarg, sizeof(nvarg), "%s:%llu", nvdir,
		   (unsigned long long)n * FILE_BYTES * 11 / 10 + (64ull << 20));
	printf("\n== restart: %u files of 4 KiB on the NVMe tier (--persist through, --page-size "
	       "4K), state and segments on /var/tmp ==\n",
	       n);
	rc = bench_mount_start(&m, "restart", dram, extra);
	if (rc)
		goto out;
	bench_note("restart: writing %u files from %u threads", n, nthreads);
	t0 = bench_now();
	rc = fill(m.mnt, n, nthreads);
	t_fill = bench_now() - t0;
	if (rc)
		goto out;

	/* clean: unmount, start */
	bench_note("restart: clean unmount and start");
	t0 = bench_now();
	rc = bench_mount_unmount(&m);
	t_unmount = bench_now() - t0;
	if (rc)
		goto out;
	rc = bench_mount_restart(&m, dram, extra);
	t_clean = m.ready_s;
	rss_clean = rc ? -1 : bench_proc_status_bytes(m.pid, "VmRSS") / 1024;
	if (!rc)
		rc = check_start(&m, n, "clean");
	if (rc)
		goto out;

	/* crash: kill -9, start */
	bench_note("restart: kill -9 and start");
	kill(m.pid, SIGKILL);
	rc = bench_mount_unmount(&m);
	if (rc)
		goto out;
	rc = bench_mount_restart(&m, dram, extra);
	t_crash = m.ready_s;
	rss_crash = rc ? -1 : bench_proc_status_bytes(m.pid, "VmRSS") / 1024;
	if (!rc)
		rc = check_start(&m, n, "crash");
	if (rc)
		goto out;

	printf("%-26s %10s %14s %12s\n", "", "seconds", "files/s", "daemon RSS");
	printf("%-26s %10.2f %14.0f %12s\n", "fill through the mount", t_fill, n / t_fill, "");
	printf("%-26s %10.2f %14s %12s\n", "clean unmount", t_unmount, "", "");
	printf("%-26s %10.2f %14.0f %9ld MiB\n", "start after clean unmount", t_clean, n / t_clean,
	       rss_clean / 1024);
	printf("%-26s %10.2f %14.0f %9ld MiB\n", "start after kill -9", t_crash, n / t_crash,
	       rss_crash / 1024);
	printf("start = exec of kvfs until the mount is ready, every file recovered (daemon's "
	       "restart_recovered), %u sampled files read back byte-exact\n",
	       n < SAMPLE ? n : SAMPLE);
	json_object_set_new(out, "restart",
			    json_pack("{s:i,s:f,s:f,s:f,s:f,s:i,s:i}", "files", (json_int_t)n,
				      "fill_s", t_fill, "unmount_s", t_unmount, "start_clean_s",
				      t_clean, "start_crash_s", t_crash, "rss_clean_kib",
				      (json_int_t)rss_clean, "rss_crash_kib", (json_int_t)rss_crash));
out:
	bench_mount_stop(&m);
	bench_rmtree(nvdir);
	return rc;
}
