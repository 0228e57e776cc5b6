/*
 * tools/bench.c — kvfs-bench: workloads and peer comparisons for a kvfs mount.
 *
 *   kvfs-bench throughput | fuse-settings | replay | all  [options] [--json FILE]
 *
 * This file owns the process: option dispatch, the report header, the JSON
 * results file, and every resource that outlives one experiment — the kvfs
 * daemons it started (each in its own /tmp/kvfs-bench-XXXXXX with mnt/,
 * state/ and kvfs.log) and the tmpfs scratch directories. Both are kept in
 * small registries so that any exit path (error, exit(), SIGINT/SIGTERM)
 * unmounts and removes them: the first signal sets bench_interrupted, which
 * the experiment loops check (syscalls return EINTR: no SA_RESTART), and the
 * normal error path cleans up; a second signal lazily unmounts every
 * registered mount from the handler (fork + execv only) and exits at once.
 *
 * The daemon binary is $KVFS_BIN, else the `kvfs` next to this executable.
 * Daemon figures come from MOUNT/.kvfs/stats and config (jansson). Tables go
 * to stdout, progress to stderr. Speed targets are printed (PASS/BELOW),
 * never asserted: a slow machine is not a failure, wrong bytes are.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tools/bench.h"

#ifndef KVFS_VERSION
#define KVFS_VERSION "dev"
#endif

#define TMPFS_MAGIC_NR 0x01021994
#define MAX_MOUNTS     8
#define MAX_SCRATCH    4

volatile sig_atomic_t bench_interrupted;

static char kvfs_bin[PATH_MAX];	     /* what the daemons run: a private copy */
static char kvfs_origin[PATH_MAX];   /* where that copy came from */
static char kvfs_copy_dir[PATH_MAX]; /* /tmp/kvfs-bench-bin-XXXXXX, removed at exit */
static char fusermount_bin[PATH_MAX] = "fusermount3";
static struct bench_mount *mounts[MAX_MOUNTS];

static struct {
	char dir[PATH_MAX];
	bool own_mount; /* a tmpfs we mounted on dir */
} scratch[MAX_SCRATCH];

/* --- messages and small utilities ---------------------------------------------------- */

void bench_err(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fputs("kvfs-bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

void bench_note(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fputs("  .. ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

int bench_path(char *out, size_t len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out, len, fmt, ap);
	va_end(ap);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

double bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int bench_parse_size(const char *s, uint64_t *out)
{
	static const char units[] = "KMGT";
	unsigned long long v;
	const char *u;
	char *end;
	int shift = 0;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	if (*end) {
		u = strchr(units, *end & ~0x20);
		if (!u || !*end)
			return -EINVAL;
		shift = 10 * (int)(u - units + 1);
		end++;
		if (!strcmp(end, "iB") || !strcmp(end, "B"))
			end += strlen(end);
		if (*end)
			return -EINVAL;
	}
	if (shift && v > (UINT64_MAX >> shift))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

int bench_parse_sizes(const char *s, uint64_t *out, int max)
{
	char buf[512], *save = NULL, *tok;
	int n = 0;

	if (snprintf(buf, sizeof(buf), "%s", s) >= (int)sizeof(buf))
		return -EINVAL;
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (n == max || bench_parse_size(tok, &out[n]) || out[n] == 0)
			return -EINVAL;
		n++;
	}
	return n ? n : -EINVAL;
}

int bench_parse_sweep(int argc, char **argv, uint64_t *sizes, int max, int *nsizes,
		      uint64_t *total, const char *usage)
{
	for (int i = 1; i < argc; i++) {
		int n;

		if (!strcmp(argv[i], "--sizes") && i + 1 < argc) {
			n = bench_parse_sizes(argv[++i], sizes, max);
			if (n < 0)
				goto bad;
			*nsizes = n;
		} else if (!strcmp(argv[i], "--total") && i + 1 < argc) {
			if (bench_parse_size(argv[++i], total))
				goto bad;
		} else {
			goto bad;
		}
	}
	return 0;
bad:
	bench_err("%s", usage);
	return -EINVAL;
}

int bench_parse_doubles(const char *s, double *out, int max)
{
	char buf[512], *save = NULL, *tok, *end;
	int n = 0;

	if (snprintf(buf, sizeof(buf), "%s", s) >= (int)sizeof(buf))
		return -EINVAL;
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (n == max)
			return -EINVAL;
		out[n] = strtod(tok, &end);
		if (end == tok || *end)
			return -EINVAL;
		n++;
	}
	return n ? n : -EINVAL;
}

const char *bench_fmt_size(uint64_t b, char *buf, size_t len)
{
	static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	double v = (double)b;
	int i = 0;

	while (v >= 1024 && i < 4) {
		v /= 1024;
		i++;
	}
	if (v == (double)(uint64_t)v)
		snprintf(buf, len, "%llu %s", (unsigned long long)v, u[i]);
	else
		snprintf(buf, len, "%.1f %s", v, u[i]);
	return buf;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

double bench_median(double *v, int n)
{
	if (n <= 0)
		return 0;
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void bench_fill(void *buf, size_t len, uint64_t seed)
{
	uint8_t *p = buf;
	uint64_t s = seed, w;
	size_t i;

	for (i = 0; i + 8 <= len; i += 8) {
		w = splitmix64(&s);
		memcpy(p + i, &w, 8);
	}
	if (i < len) {
		w = splitmix64(&s);
		memcpy(p + i, &w, len - i);
	}
}

void *bench_buf_alloc(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (p == MAP_FAILED) {
		bench_err("cannot allocate a %zu-byte buffer: %s", len, strerror(errno));
		return NULL;
	}
	return p;
}

void bench_buf_free(void *buf, size_t len)
{
	if (buf)
		munmap(buf, len);
}

/* --- processes -------------------------------------------------------------------------- */

/* Run @argv; @quiet sends its output to /dev/null. @return its exit status, or -errno. */
static int run_cmd(const char *const *argv, bool quiet)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		if (quiet) {
			int null = open("/dev/null", O_WRONLY);

			if (null >= 0) {
				dup2(null, 1);
				dup2(null, 2);
			}
		}
		execvp(argv[0], (char *const *)argv);
		fprintf(stderr, "kvfs-bench: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Is thread @tid of @pid alive (not a zombie)? */
static bool task_alive(pid_t pid, const char *tid)
{
	char path[320], buf[512], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/task/%s/stat", (int)pid, tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] != 'Z';
}

/*
 * Is any thread of @pid alive? The leader of a killed daemon turns zombie
 * before its other threads are gone, and their files (the state lock) are
 * only closed with the last.
 */
static bool pid_running(pid_t pid)
{
	char path[64];
	struct dirent *d;
	bool alive = false;
	DIR *dir;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	dir = opendir(path);
	if (!dir)
		return false;
	while (!alive && (d = readdir(dir)))
		if (d->d_name[0] != '.')
			alive = task_alive(pid, d->d_name);
	closedir(dir);
	return alive;
}

/* Find the mount at @path in /proc/self/mountinfo; @devno gets "major:minor". */
static bool find_mount(const char *path, char *devno, size_t len)
{
	char line[4096], dev[64], mp[PATH_MAX];
	bool found = false;
	FILE *f = fopen("/proc/self/mountinfo", "re");

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%*s %*s %63s %*s %4095s", dev, mp) == 2 && !strcmp(mp, path)) {
			found = true;
			if (devno)
				snprintf(devno, len, "%s", dev);
		}
	}
	fclose(f);
	return found;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	if (remove(path) && errno != ENOENT && ftw->level > 0)
		fprintf(stderr, "kvfs-bench: cannot remove %s: %s\n", path, strerror(errno));
	return 0;
}

int bench_rmtree(const char *dir)
{
	if (!dir[0])
		return 0;
	return nftw(dir, rm_entry, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) ? -errno : 0;
}

/* --- daemons ---------------------------------------------------------------------------- */

static void register_mount(struct bench_mount *m)
{
	for (int i = 0; i < MAX_MOUNTS; i++) {
		if (!mounts[i]) {
			mounts[i] = m;
			return;
		}
	}
}

static void unregister_mount(struct bench_mount *m)
{
	for (int i = 0; i < MAX_MOUNTS; i++)
		if (mounts[i] == m)
			mounts[i] = NULL;
}

json_t *bench_mount_json(const struct bench_mount *m, const char *name)
{
	char path[PATH_MAX];
	json_error_t jerr;
	json_t *j;

	bench_path(path, sizeof(path), "%s/.kvfs/%s", m->mnt, name);
	j = json_load_file(path, 0, &jerr);
	if (!j)
		bench_err("%s: %s", path, jerr.text);
	return j;
}

int64_t bench_json_int(json_t *obj, const char *path)
{
	char buf[128], *save = NULL, *tok;

	snprintf(buf, sizeof(buf), "%s", path);
	for (tok = strtok_r(buf, ".", &save); tok && obj; tok = strtok_r(NULL, ".", &save))
		obj = json_object_get(obj, tok);
	if (json_is_integer(obj))
		return (int64_t)json_integer_value(obj);
	if (json_is_real(obj))
		return (int64_t)json_real_value(obj);
	return 0;
}

long bench_mount_read_ahead_kb(const struct bench_mount *m)
{
	char dev[64], path[128];
	long kb = -1;
	FILE *f;

	if (!find_mount(m->mnt, dev, sizeof(dev)))
		return -1;
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	f = fopen(path, "re");
	if (!f)
		return -1;
	if (fscanf(f, "%ld", &kb) != 1)
		kb = -1;
	fclose(f);
	return kb;
}

int64_t bench_proc_status_bytes(pid_t pid, const char *field)
{
	char path[64], line[256];
	size_t flen = strlen(field);
	long long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, flen) && line[flen] == ':' &&
		    sscanf(line + flen + 1, "%lld kB", &kb) == 1)
			break;
	fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

/*
 * Wait until the daemon has faulted its DRAM arena in: it does so in a
 * background thread after start (tier/dram.c), which would otherwise compete
 * with the first experiment for the CPUs. Measured from outside through
 * /proc/PID/status RssShmem: done when it reaches the arena size, or stops
 * growing for half a second (the prefault gives up when memory is short).
 */
static void settle(const struct bench_mount *m, uint64_t dram_bytes)
{
	double t0 = bench_now(), last_change = t0;
	int64_t prev = -1, cur;

	while (!bench_interrupted && bench_now() - t0 < 60) {
		cur = bench_proc_status_bytes(m->pid, "RssShmem");
		if (cur < 0 || (uint64_t)cur >= dram_bytes - dram_bytes / 64)
			break;
		if (cur != prev) {
			prev = cur;
			last_change = bench_now();
		} else if (bench_now() - last_change > 0.5) {
			break;
		}
		usleep(20 * 1000);
	}
	if (bench_now() - t0 > 1)
		bench_note("kvfs (%s): arena faulted in after %.1f s", m->label, bench_now() - t0);
}

/* Show the end of a daemon's log before its directory is removed. */
static void print_log_tail(const char *path)
{
	char buf[2048];
	FILE *f = fopen(path, "re");
	size_t n;
	long size;

	if (!f)
		return;
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	fseek(f, size > (long)sizeof(buf) - 1 ? size - (long)sizeof(buf) + 1 : 0, SEEK_SET);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	if (n)
		fprintf(stderr, "kvfs-bench: end of %s:\n%s%s", path, buf,
			buf[n - 1] == '\n' ? "" : "\n");
}

/* Start the daemon on @m's directories (made by bench_mount_start). */
static int spawn_daemon(struct bench_mount *m, uint64_t dram_bytes, const char *const *extra)
{
	const char *argv[40];
	char state[PATH_MAX], dram[32];
	int argc = 0, status;
	double t0;
	json_t *cfg;
	pid_t pid;

	bench_path(state, sizeof(state), "%s/state", m->base);
	snprintf(dram, sizeof(dram), "%llu", (unsigned long long)dram_bytes);
	argv[argc++] = kvfs_bin;
	argv[argc++] = "--state";
	argv[argc++] = state;
	argv[argc++] = "--dram";
	argv[argc++] = dram;
	argv[argc++] = "--log";
	argv[argc++] = m->log;
	for (int i = 0; extra && extra[i] && argc < 36; i++)
		argv[argc++] = extra[i];
	argv[argc++] = m->mnt;
	argv[argc] = NULL;

	register_mount(m);
	t0 = bench_now();
	pid = fork();
	if (pid < 0) {
		bench_err("fork: %s", strerror(errno));
		return -errno;
	}
	if (pid == 0) {
		dup2(2, 1);
		execv(kvfs_bin, (char *const *)argv);
		fprintf(stderr, "kvfs-bench: cannot run %s: %s\n", kvfs_bin, strerror(errno));
		_exit(127);
	}
	/* The daemon's parent returns once the mount is ready: wait even if interrupted. */
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	m->ready_s = bench_now() - t0;
	m->mounted = find_mount(m->mnt, NULL, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !m->mounted) {
		bench_err("kvfs (%s) failed to start (its message is above)", m->label);
		print_log_tail(m->log);
		return -EIO;
	}
	cfg = bench_mount_json(m, "config");
	if (!cfg)
		return -EIO;
	m->pid = (pid_t)bench_json_int(cfg, "pid");
	json_decref(cfg);
	settle(m, dram_bytes);
	return 0;
}

int bench_mount_start(struct bench_mount *m, const char *label, uint64_t dram_bytes,
		      const char *const *extra)
{
	char tmpl[] = "/tmp/kvfs-bench-XXXXXX";
	int rc;

	memset(m, 0, sizeof(*m));
	snprintf(m->label, sizeof(m->label), "%s", label);
	if (bench_interrupted)
		return -EINTR;
	if (!mkdtemp(tmpl)) {
		rc = -errno;
		bench_err("mkdtemp %s: %s", tmpl, strerror(errno));
		return rc;
	}
	if (!realpath(tmpl, m->base)) {
		rc = -errno;
		rmdir(tmpl);
		return rc;
	}
	bench_path(m->mnt, sizeof(m->mnt), "%s/mnt", m->base);
	bench_path(m->log, sizeof(m->log), "%s/kvfs.log", m->base);
	if (mkdir(m->mnt, 0755)) {
		rc = -errno;
		bench_err("mkdir %s: %s", m->mnt, strerror(errno));
		bench_rmtree(m->base);
		m->base[0] = '\0';
		return rc;
	}
	rc = spawn_daemon(m, dram_bytes, extra);
	if (rc)
		bench_mount_stop(m);
	return rc;
}

/* Unmount and wait for the daemon to exit; keep its directories. */
int bench_mount_unmount(struct bench_mount *m)
{
	const char *argv[] = {fusermount_bin, "-u", m->mnt, NULL};
	const char *lazy[] = {fusermount_bin, "-u", "-z", m->mnt, NULL};
	double deadline;

	/* Unmount: a reader that just closed may still hold the mount briefly. */
	for (int i = 0; i < 50 && find_mount(m->mnt, NULL, 0); i++) {
		run_cmd(argv, i < 49);
		if (find_mount(m->mnt, NULL, 0))
			usleep(100 * 1000);
	}
	if (find_mount(m->mnt, NULL, 0)) {
		bench_err("%s still busy; detaching it lazily", m->mnt);
		run_cmd(lazy, false);
	}
	/* Wait for the daemon to exit so its arena is freed before the next run. */
	deadline = bench_now() + 30;
	while (m->pid > 0 && pid_running(m->pid) && bench_now() < deadline)
		usleep(10 * 1000);
	if (m->pid > 0 && pid_running(m->pid)) {
		bench_err("kvfs pid %d did not exit after unmount; killing it", (int)m->pid);
		kill(m->pid, SIGKILL);
	}
	if (find_mount(m->mnt, NULL, 0)) {
		bench_err("cannot unmount %s; remove it with: fusermount3 -u -z %s", m->mnt,
			  m->mnt);
		return -EBUSY;
	}
	m->mounted = false;
	m->pid = 0;
	unregister_mount(m);
	return 0;
}

int bench_mount_stop(struct bench_mount *m)
{
	int rc;

	if (!m->base[0])
		return 0;
	rc = bench_mount_unmount(m);
	if (rc)
		return rc;
	bench_rmtree(m->base);
	m->base[0] = '\0';
	return 0;
}

int bench_mount_restart(struct bench_mount *m, uint64_t dram_bytes, const char *const *extra)
{
	int rc = bench_mount_unmount(m);

	return rc ? rc : spawn_daemon(m, dram_bytes, extra);
}

/* --- tmpfs scratch ---------------------------------------------------------------------- */

int bench_scratch_tmpfs(uint64_t size_hint, char *out, size_t len)
{
	char tmpl[PATH_MAX], opts[64];
	struct statfs sfs;
	int slot = -1;

	for (int i = 0; i < MAX_SCRATCH; i++)
		if (!scratch[i].dir[0]) {
			slot = i;
			break;
		}
	if (slot < 0)
		return -ENOSPC;
	if (statfs("/dev/shm", &sfs) == 0 && (unsigned long)sfs.f_type == TMPFS_MAGIC_NR) {
		snprintf(tmpl, sizeof(tmpl), "/dev/shm/kvfs-bench-XXXXXX");
		if (!mkdtemp(tmpl)) {
			bench_err("mkdtemp %s: %s", tmpl, strerror(errno));
			return -errno;
		}
		scratch[slot].own_mount = false;
	} else if (geteuid() == 0) {
		snprintf(tmpl, sizeof(tmpl), "/tmp/kvfs-bench-tmpfs-XXXXXX");
		if (!mkdtemp(tmpl)) {
			bench_err("mkdtemp %s: %s", tmpl, strerror(errno));
			return -errno;
		}
		snprintf(opts, sizeof(opts), "size=%llu,mode=0700",
			 (unsigned long long)(size_hint + 64 * BENCH_MIB));
		if (mount("tmpfs", tmpl, "tmpfs", MS_NOSUID | MS_NODEV, opts)) {
			bench_err("mount -t tmpfs on %s: %s", tmpl, strerror(errno));
			rmdir(tmpl);
			return -errno;
		}
		scratch[slot].own_mount = true;
	} else {
		bench_err("/dev/shm is not tmpfs and mounting a tmpfs needs root: no tmpfs peer");
		return -ENOTSUP;
	}
	snprintf(scratch[slot].dir, sizeof(scratch[slot].dir), "%s", tmpl);
	snprintf(out, len, "%s", tmpl);
	return 0;
}

void bench_scratch_release(const char *dir)
{
	for (int i = 0; i < MAX_SCRATCH; i++) {
		if (!scratch[i].dir[0] || strcmp(scratch[i].dir, dir))
			continue;
		if (scratch[i].own_mount) {
			if (umount2(scratch[i].dir, 0))
				umount2(scratch[i].dir, MNT_DETACH);
			rmdir(scratch[i].dir);
		} else {
			bench_rmtree(scratch[i].dir);
		}
		scratch[i].dir[0] = '\0';
	}
}

/* --- cleanup on every exit path ----------------------------------------------------------- */

static void cleanup_all(void)
{
	for (int i = 0; i < MAX_MOUNTS; i++)
		if (mounts[i])
			bench_mount_stop(mounts[i]);
	for (int i = 0; i < MAX_SCRATCH; i++)
		if (scratch[i].dir[0])
			bench_scratch_release(scratch[i].dir);
	if (kvfs_copy_dir[0]) {
		bench_rmtree(kvfs_copy_dir);
		kvfs_copy_dir[0] = '\0';
	}
}

/* fork + execv + waitpid: safe in a signal handler. */
static void spawn_wait(char *const argv[])
{
	pid_t pid = fork();

	if (pid == 0) {
		execv(argv[0], argv);
		_exit(127);
	}
	if (pid > 0)
		waitpid(pid, NULL, 0);
}

static void on_signal(int sig)
{
	static const char msg[] = "\nkvfs-bench: interrupted; cleaning up (again to force)\n";

	if (!bench_interrupted) {
		bench_interrupted = 1;
		if (write(2, msg, sizeof(msg) - 1) < 0)
			return;
		return;
	}
	/* Second signal: detach every mount now (async-signal-safe calls only). */
	for (int i = 0; i < MAX_MOUNTS; i++) {
		if (mounts[i] && mounts[i]->mounted) {
			char *const argv[] = {fusermount_bin, "-u", "-z", mounts[i]->mnt, NULL};

			spawn_wait(argv);
		}
	}
	/* then remove what is left: detached mounts are no longer in these trees */
	for (int i = 0; i < MAX_MOUNTS; i++) {
		if (mounts[i] && mounts[i]->base[0]) {
			char *const argv[] = {"/bin/rm", "-rf", "--one-file-system",
					      mounts[i]->base, NULL};

			spawn_wait(argv);
		}
	}
	if (kvfs_copy_dir[0]) {
		char *const argv[] = {"/bin/rm", "-rf", kvfs_copy_dir, NULL};

		spawn_wait(argv);
	}
	for (int i = 0; i < MAX_SCRATCH; i++) {
		if (!scratch[i].dir[0])
			continue;
		if (scratch[i].own_mount) {
			umount2(scratch[i].dir, MNT_DETACH);
			rmdir(scratch[i].dir);
		} else {
			char *const argv[] = {"/bin/rm", "-rf", "--one-file-system", scratch[i].dir,
					      NULL};

			spawn_wait(argv);
		}
	}
	_exit(128 + sig);
}

/*
 * Run a private copy of the daemon, so that every experiment of one run uses
 * the same build even if the tree is rebuilt meanwhile.
 */
static int copy_daemon(void)
{
	char tmpl[] = "/tmp/kvfs-bench-bin-XXXXXX", buf[1 << 16];
	int in = -1, out = -1, rc = -EIO;
	ssize_t n;

	if (!mkdtemp(tmpl)) {
		bench_err("mkdtemp %s: %s", tmpl, strerror(errno));
		return -errno;
	}
	snprintf(kvfs_copy_dir, sizeof(kvfs_copy_dir), "%s", tmpl);
	bench_path(kvfs_bin, sizeof(kvfs_bin), "%s/kvfs", tmpl);
	in = open(kvfs_origin, O_RDONLY | O_CLOEXEC);
	out = open(kvfs_bin, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
	if (in < 0 || out < 0)
		goto out;
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)n) != n)
			goto out;
	rc = n == 0 ? 0 : -EIO;
out:
	if (rc)
		bench_err("cannot copy %s to %s: %s", kvfs_origin, kvfs_bin, strerror(errno));
	if (in >= 0)
		close(in);
	if (out >= 0 && close(out) && !rc)
		rc = -EIO;
	return rc;
}

static int find_binaries(void)
{
	static const char *const fm[] = {"/usr/bin/fusermount3", "/bin/fusermount3",
					 "/usr/local/bin/fusermount3"};
	const char *env = getenv("KVFS_BIN");
	char self[PATH_MAX];
	ssize_t n;

	if (env && *env) {
		snprintf(kvfs_origin, sizeof(kvfs_origin), "%s", env);
	} else {
		n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		if (n <= 0) {
			bench_err("readlink /proc/self/exe: %s", strerror(errno));
			return -errno;
		}
		self[n] = '\0';
		*strrchr(self, '/') = '\0';
		bench_path(kvfs_origin, sizeof(kvfs_origin), "%s/kvfs", self);
	}
	if (access(kvfs_origin, X_OK)) {
		bench_err("no kvfs daemon at %s (build it with make, or set KVFS_BIN)",
			  kvfs_origin);
		return -ENOENT;
	}
	if (copy_daemon())
		return -EIO;
	for (size_t i = 0; i < sizeof(fm) / sizeof(fm[0]); i++) {
		if (!access(fm[i], X_OK)) {
			snprintf(fusermount_bin, sizeof(fusermount_bin), "%s", fm[i]);
			break;
		}
	}
	if (access("/dev/fuse", R_OK | W_OK)) {
		bench_err("/dev/fuse is not usable (%s): kvfs cannot mount here", strerror(errno));
		return -ENODEV;
	}
	return 0;
}

/* --- report header ------------------------------------------------------------------------ */

static json_t *header(void)
{
	char date[64], model[256] = "unknown", line[512];
	struct utsname u;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	long long mem_kb = 0;
	time_t now = time(NULL);
	struct tm tm;
	json_t *h;
	FILE *f;

	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S UTC", &tm);
	uname(&u);
	f = fopen("/proc/cpuinfo", "re");
	while (f && fgets(line, sizeof(line), f)) {
		char *c = strchr(line, ':');

		if (!strncmp(line, "model name", 10) && c) {
			snprintf(model, sizeof(model), "%s", c + 2);
			model[strcspn(model, "\n")] = '\0';
			break;
		}
	}
	if (f)
		fclose(f);
	f = fopen("/proc/meminfo", "re");
	if (f) {
		if (fscanf(f, "MemTotal: %lld kB", &mem_kb) != 1)
			mem_kb = 0;
		fclose(f);
	}
	printf("kvfs-bench %s | %s | kernel %s %s %s | %ld CPUs (%s) | %.1f GiB RAM\n",
	       KVFS_VERSION, date, u.sysname, u.release, u.machine, cpus, model,
	       (double)mem_kb / (1024.0 * 1024.0));
	printf("daemon: %s (run from a private copy) | MB = 10^6 bytes\n", kvfs_origin);
	h = json_object();
	json_object_set_new(h, "version", json_string(KVFS_VERSION));
	json_object_set_new(h, "date", json_string(date));
	json_object_set_new(h, "kernel", json_string(u.release));
	json_object_set_new(h, "machine", json_string(u.machine));
	json_object_set_new(h, "cpus", json_integer(cpus));
	json_object_set_new(h, "cpu_model", json_string(model));
	json_object_set_new(h, "mem_bytes", json_integer(mem_kb * 1024));
	json_object_set_new(h, "daemon", json_string(kvfs_origin));
	json_object_set_new(h, "euid", json_integer((json_int_t)geteuid()));
	return h;
}

/* --- main ---------------------------------------------------------------------------------- */

static void usage(FILE *out)
{
	fprintf(out, "usage: kvfs-bench COMMAND [options] [--json FILE]\n"
		     "\n"
		     "Benchmarks a kvfs mount against peers measured in the same run. Each\n"
		     "command starts its own kvfs daemons in /tmp/kvfs-bench-* and removes them.\n"
		     "\n"
		     "  throughput [--sizes 2M,32M] [--total 512M] [--dram 2G] [--rounds 3]\n"
		     "      sequential write and cold/warm read MB/s, kvfs vs tmpfs\n"
		     "  fuse-settings [--rounds 3] [--files 10000]\n"
		     "      what read-ahead, the kernel page cache and the entry/attr/negative\n"
		     "      timeouts buy, each against a default daemon\n"
		     "  replay [--trace FILE] [--block-size 16K] [--fractions 0.1,0.25,0.5]\n"
		     "         [--policies mq,lru] [--limit N] [--nvme-fraction F]\n"
		     "      Mooncake trace replay: prefix hit ratio of kvfs vs simulated LRU\n"
		     "      (--nvme-fraction: also an NVMe tier of that share of the footprint)\n"
		     "  libkvfs [--blocks 256] [--layers 32] [--rounds 3]\n"
		     "      engine loads, saves and prefix matches: fast path vs POSIX on the\n"
		     "      mount vs POSIX on tmpfs vs memcpy\n"
		     "  nvme [--sizes 2M,32M] [--total 512M]\n"
		     "      NVMe tier write and cold read throughput vs fio on the same disk\n"
		     "  remote [--sizes 2M,32M] [--total 256M]\n"
		     "      a file read on one node from another's DRAM, vs raw TCP and\n"
		     "      Redis GET of the same bytes (starts its own redis-server)\n"
		     "  restart [--files 1000000] [--threads 4]\n"
		     "      daemon start time with N files in the catalog, after a clean\n"
		     "      unmount and after kill -9\n"
		     "  cluster [--only handoff|routing] [--tokens 4096] [--reps 3]\n"
		     "          [--trace FILE] [--nodes 4] [--fraction 0.1] [--limit N]\n"
		     "          [--daemon-requests 1000]\n"
		     "      disaggregated serving: prefill->decode handoff (pull, push) vs\n"
		     "      recomputing; KV-aware routing vs round-robin vs hashing the first\n"
		     "      block on the Mooncake trace (simulated nodes, then real daemons)\n"
		     "  scalein [--trace FILE] [--nodes 4] [--fraction 0.1] [--limit 2000]\n"
		     "      the Mooncake trace on a cluster of daemons while one node leaves\n"
		     "      halfway: drained (kvfsctl drain) vs killed; hit ratio after it\n"
		     "  all\n"
		     "      everything with its defaults (replay: --limit 4000)\n"
		     "\n"
		     "  --json FILE   also write the results as JSON to FILE\n"
		     "\n"
		     "Environment: KVFS_BIN (the daemon; default: kvfs next to kvfs-bench).\n");
}

static int run_all(json_t *results)
{
	char *tp[] = {"throughput", NULL};
	char *fs[] = {"fuse-settings", NULL};
	/*
	 * The whole Mooncake trace takes 1.5-2.5 min per daemon run on 2 busy
	 * cores (FUSE round trips: ~5 per saved block), and replay runs six;
	 * `all` replays its first 4000 requests (a third) to stay within a few
	 * minutes. `kvfs-bench replay` alone replays the whole trace.
	 */
	char *rp[] = {"replay", "--limit", "4000", NULL};
	char *lp[] = {"libkvfs", NULL};
	char *np[] = {"nvme", NULL};
	char *sp[] = {"restart", NULL};
	char *mp[] = {"remote", NULL};
	/* the NVMe issue's replay: DRAM 5% and NVMe 50% of the footprint */
	char *rnp[] = {"replay", "--limit", "4000", "--fractions", "0.05", "--nvme-fraction", "0.5",
		       NULL};
	int rc;

	rc = bench_throughput(1, tp, results);
	if (!rc)
		rc = bench_fuse_settings(1, fs, results);
	if (!rc)
		rc = bench_replay(3, rp, results);
	if (!rc)
		rc = bench_libkvfs(1, lp, results);
	if (!rc)
		rc = bench_nvme(1, np, results);
	if (!rc)
		rc = bench_replay(7, rnp, results);
	if (!rc)
		rc = bench_remote(1, mp, results);
	if (!rc)
		rc = bench_restart(1, sp, results);
	return rc;
}

int main(int argc, char **argv)
{
	const char *json_path = NULL, *cmd;
	struct sigaction sa;
	char **args;
	int nargs = 0, rc;
	json_t *results;
	double t0 = bench_now();

	setvbuf(stdout, NULL, _IOLBF, 0);
	/* --json FILE may appear anywhere: take it out before the command parses. */
	args = calloc((size_t)argc + 1, sizeof(*args));
	if (!args)
		return 1;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			if (i + 1 == argc) {
				bench_err("--json needs a file name");
				return 2;
			}
			json_path = argv[++i];
		} else if (!strncmp(argv[i], "--json=", 7)) {
			json_path = argv[i] + 7;
		} else {
			args[nargs++] = argv[i];
		}
	}
	if (nargs == 0 || !strcmp(args[0], "-h") || !strcmp(args[0], "--help") ||
	    !strcmp(args[0], "help")) {
		usage(nargs ? stdout : stderr);
		free(args);
		return nargs ? 0 : 2;
	}
	cmd = args[0];
	if (strcmp(cmd, "throughput") && strcmp(cmd, "fuse-settings") && strcmp(cmd, "replay") &&
	    strcmp(cmd, "libkvfs") && strcmp(cmd, "nvme") && strcmp(cmd, "restart") &&
	    strcmp(cmd, "remote") && strcmp(cmd, "cluster") &&
	    strcmp(cmd, "remote") && strcmp(cmd, "scalein") &&
	    strcmp(cmd, "all")) {
		bench_err("unknown command '%s' (see kvfs-bench --help)", cmd);
		free(args);
		return 2;
	}
	atexit(cleanup_all);
	if (find_binaries()) {
		free(args);
		return 1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal; /* no SA_RESTART: blocking calls return EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	results = json_object();
	json_object_set_new(results, "header", header());
	json_object_set_new(results, "command", json_string(cmd));
	if (!strcmp(cmd, "throughput"))
		rc = bench_throughput(nargs, args, results);
	else if (!strcmp(cmd, "fuse-settings"))
		rc = bench_fuse_settings(nargs, args, results);
	else if (!strcmp(cmd, "replay"))
		rc = bench_replay(nargs, args, results);
	else if (!strcmp(cmd, "libkvfs"))
		rc = bench_libkvfs(nargs, args, results);
	else if (!strcmp(cmd, "nvme"))
		rc = bench_nvme(nargs, args, results);
	else if (!strcmp(cmd, "restart"))
		rc = bench_restart(nargs, args, results);
	else if (!strcmp(cmd, "remote"))
		rc = bench_remote(nargs, args, results);
	else if (!strcmp(cmd, "cluster"))
		rc = bench_cluster(nargs, args, results);
	else if (!strcmp(cmd, "scalein"))
		rc = bench_scalein(nargs, args, results);
	else
		rc = run_all(results);
	cleanup_all();

	json_object_set_new(results, "runtime_s", json_real(bench_now() - t0));
	json_object_set_new(results, "ok", json_boolean(rc == 0));
	if (rc)
		json_object_set_new(results, "error",
				    json_string(rc == -EINTR ? "interrupted" : strerror(-rc)));
	printf("\n%s %s in %.1f s\n", cmd,
	       rc == -EINTR ? "interrupted"
	       : rc	    ? "FAILED"
			    : "finished",
	       bench_now() - t0);
	if (json_path) {
		if (json_dump_file(results, json_path, JSON_INDENT(2) | JSON_SORT_KEYS)) {
			bench_err("cannot write %s: %s", json_path, strerror(errno));
			rc = rc ? rc : -EIO;
		}
	}
	json_decref(results);
	free(args);
	if (rc == -EINTR)
		return 130;
	return rc ? 1 : 0;
}
