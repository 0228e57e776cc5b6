/*
 * tools/bench_nvme.c — `kvfs-bench nvme`: the NVMe tier against fio.
 *
 * In one run, on the same filesystem (/var/tmp: O_DIRECT needs a disk; a
 * VM's virtio disk here, real NVMe in production), with the same 1 MiB
 * block size:
 *   - fio, ioengine io_uring, --direct=1: sequential write, then read, of
 *     files of each size;
 *   - kvfs with --persist through: files of each size written through the
 *     mount, timed until every byte is on NVMe (the daemon's counters), then
 *     a restart (so only NVMe holds them) and cold reads through the mount.
 * Ratio kvfs / fio; the target is 0.8.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tools/bench.h"

#define IO_SIZE (1u << 20)

/* Run fio and return its bandwidth in bytes/s for @rw, or < 0. */
static double fio_bw(const char *dir, const char *rw, uint64_t fsize, unsigned nfiles)
{
	char cmd[2 * PATH_MAX + 512], outp[PATH_MAX];
	json_t *root, *job;
	json_error_t je;
	double bw = -1;
	int rc;

	bench_path(outp, sizeof(outp), "%s/fio.json", dir);
	snprintf(cmd, sizeof(cmd),
		 "fio --name=kvfs --directory=%s --ioengine=io_uring --direct=1 --rw=%s --bs=1M "
		 "--filesize=%llu --nrfiles=%u --size=%llu --file_service_type=sequential "
		 "--iodepth=1 --output-format=json --output=%s >/dev/null 2>&1",
		 dir, rw, (unsigned long long)fsize, nfiles, (unsigned long long)fsize * nfiles,
		 outp);
	rc = system(cmd);
	if (rc != 0) {
		bench_err("nvme: fio failed (exit %d): is fio installed?", WEXITSTATUS(rc));
		return -1;
	}
	root = json_load_file(outp, 0, &je);
	job = root ? json_array_get(json_object_get(root, "jobs"), 0) : NULL;
	if (job)
		bw = (double)json_integer_value(
			json_object_get(json_object_get(job, strstr(rw, "read") ? "read" : "write"),
					"bw_bytes"));
	json_decref(root);
	unlink(outp);
	return bw;
}

static int write_files(const char *mnt, uint64_t fsize, unsigned n, uint8_t *buf)
{
	char path[PATH_MAX];

	for (unsigned i = 0; i < n; i++) {
		int fd;

		bench_path(path, sizeof(path), "%s/f%04u", mnt, i);
		fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
		if (fd < 0) {
			bench_err("nvme: create %s: %s", path, strerror(errno));
			return -errno;
		}
		for (uint64_t off = 0; off < fsize; off += IO_SIZE) {
			size_t len = (size_t)(fsize - off < IO_SIZE ? fsize - off : IO_SIZE);

			if (write(fd, buf, len) != (ssize_t)len) {
				bench_err("nvme: write %s: %s", path, strerror(errno));
				close(fd);
				return -EIO;
			}
		}
		close(fd);
	}
	return 0;
}

static int read_files(const char *mnt, uint64_t fsize, unsigned n, uint8_t *buf)
{
	char path[PATH_MAX];

	for (unsigned i = 0; i < n; i++) {
		uint64_t got = 0;
		ssize_t k;
		int fd;

		bench_path(path, sizeof(path), "%s/f%04u", mnt, i);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			bench_err("nvme: open %s: %s", path, strerror(errno));
			return -errno;
		}
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		while ((k = read(fd, buf, IO_SIZE)) > 0)
			got += (uint64_t)k;
		close(fd);
		if (got != fsize) {
			bench_err("nvme: %s: read %llu of %llu bytes", path, (unsigned long long)got,
				  (unsigned long long)fsize);
			return -EIO;
		}
	}
	return 0;
}

/* Wait until the daemon has written @bytes to NVMe (its release is asynchronous). */
static int wait_nvme_bytes(const struct bench_mount *m, int64_t bytes)
{
	for (int i = 0; i < 60000; i++) {
		json_t *st = bench_mount_json(m, "stats");
		int64_t w = st ? bench_json_int(st, "tiers.nvme.write_bytes") : -1;

		json_decref(st);
		if (w < 0)
			return -EIO;
		if (w >= bytes)
			return 0;
		usleep(1000);
	}
	bench_err("nvme: the daemon never wrote %lld bytes to NVMe", (long long)bytes);
	return -ETIMEDOUT;
}

int bench_nvme(int argc, char **argv, json_t *out)
{
	uint64_t sizes[4] = {2 << 20, 32 << 20}, total = 512ull << 20;
	int nsizes = 2, rc = 0;
	char fiodir[] = "/var/tmp/kvfs-bench-fio-XXXXXX", nvdir[] = "/var/tmp/kvfs-bench-nv-XXXXXX";
	json_t *res = json_object();
	uint8_t *buf = bench_buf_alloc(IO_SIZE);

	if (bench_parse_sweep(argc, argv, sizes, 4, &nsizes, &total,
			      "nvme: usage: nvme [--sizes 2M,32M] [--total 512M]"))
		return -EINVAL;
	if (!buf || !mkdtemp(fiodir) || !mkdtemp(nvdir)) {
		bench_err("nvme: cannot make scratch directories under /var/tmp");
		return -EIO;
	}
	bench_fill(buf, IO_SIZE, 7);
	printf("\n== nvme: %s per size through the NVMe tier vs fio (io_uring, O_DIRECT, bs 1M, "
	       "iodepth 1), both on /var/tmp ==\n",
	       bench_fmt_size(total, (char[32]){0}, 32));
	printf("%-8s %-6s %12s %12s %8s  %s\n", "size", "op", "kvfs MB/s", "fio MB/s", "ratio",
	       "target");
	for (int si = 0; si < nsizes && !rc; si++) {
		uint64_t fs = sizes[si];
		unsigned n = (unsigned)(total / fs);
		double fw, fr, kw = 0, kr = 0, t0;
		struct bench_mount m = {0};
		char nvarg[PATH_MAX], sz[32];
		const char *extra[] = {"--nvme", nvarg, "--persist", "through", NULL};

		if (!n)
			continue;
		bench_note("nvme: %u files of %s: fio", n, bench_fmt_size(fs, sz, sizeof(sz)));
		fw = fio_bw(fiodir, "write", fs, n);
		fr = fw > 0 ? fio_bw(fiodir, "read", fs, n) : -1;
		bench_rmtree(fiodir);
		mkdir(fiodir, 0700);
		if (fw <= 0 || fr <= 0) {
			rc = -EIO;
			break;
		}
		bench_note("nvme: %u files of %s: kvfs", n, sz);
		bench_path(nvarg, sizeof(nvarg), "%s/d%d:%llu", nvdir, si,
			   (unsigned long long)(2 * total + (64u << 20)));
		rc = bench_mount_start(&m, "nvme", 256ull << 20, extra);
		if (rc)
			break;
		t0 = bench_now();
		rc = write_files(m.mnt, fs, n, buf);
		if (!rc)
			rc = wait_nvme_bytes(&m, (int64_t)(fs * n));
		kw = (double)(fs * n) / (bench_now() - t0);
		/* a clean restart: only NVMe holds the files now */
		if (!rc)
			rc = bench_mount_restart(&m, 256ull << 20, extra);
		if (!rc) {
			t0 = bench_now();
			rc = read_files(m.mnt, fs, n, buf);
			kr = (double)(fs * n) / (bench_now() - t0);
		}
		bench_mount_stop(&m);
		bench_rmtree(nvdir);
		mkdir(nvdir, 0700);
		if (rc)
			break;
		printf("%-8s %-6s %12.0f %12.0f %8.2f  %s\n", sz, "write", kw / 1e6, fw / 1e6, kw / fw,
		       kw / fw >= 0.8 ? ">= 0.8 PASS" : ">= 0.8 BELOW");
		printf("%-8s %-6s %12.0f %12.0f %8.2f  %s\n", sz, "read", kr / 1e6, fr / 1e6, kr / fr,
		       kr / fr >= 0.8 ? ">= 0.8 PASS" : ">= 0.8 BELOW");
		json_object_set_new(res, sz,
				    json_pack("{s:f,s:f,s:f,s:f}", "kvfs_write", kw, "fio_write", fw,
					      "kvfs_read", kr, "fio_read", fr));
	}
	printf("kvfs write = write() through the mount until the daemon has the bytes on NVMe "
	       "(--persist through); read = cold reads after a restart, every byte from NVMe "
	       "with its checksum checked\n");
	bench_rmtree(fiodir);
	bench_rmtree(nvdir);
	bench_buf_free(buf, IO_SIZE);
	json_object_set_new(out, "nvme", res);
	return rc;
}
