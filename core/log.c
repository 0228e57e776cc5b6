/*
 * core/log.c — the log.
 *
 * One FILE* guarded by a mutex; each message is one line with a UTC
 * timestamp and a level. Logging is for events (mounts, errors, evictions in
 * bulk), never per request, so the mutex is not on any hot path.
 */
#include "core/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *log_file;
static int log_level = KVFS_LOG_INFO;

static const char *const level_names[] = {"err", "warn", "info", "debug"};

int kvfs_log_open(const char *path, int level)
{
	FILE *f = NULL;

	if (path) {
		f = fopen(path, "ae");
		if (!f)
			return -errno;
		setvbuf(f, NULL, _IOLBF, 0);
	}
	pthread_mutex_lock(&log_lock);
	if (log_file)
		fclose(log_file);
	log_file = f;
	log_level = level;
	pthread_mutex_unlock(&log_lock);
	return 0;
}

int kvfs_log_level_parse(const char *name)
{
	for (int i = 0; i <= KVFS_LOG_DEBUG; i++)
		if (strcmp(name, level_names[i]) == 0)
			return i;
	return -EINVAL;
}

void kvfs_log(int level, const char *fmt, ...)
{
	char stamp[32];
	struct timespec ts;
	struct tm tm;
	va_list ap;
	FILE *out;

	if (level > log_level)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);

	pthread_mutex_lock(&log_lock);
	out = log_file ? log_file : stderr;
	fprintf(out, "%s.%03ldZ kvfs %s: ", stamp, ts.tv_nsec / 1000000, level_names[level]);
	va_start(ap, fmt);
	vfprintf(out, fmt, ap);
	va_end(ap);
	fputc('\n', out);
	pthread_mutex_unlock(&log_lock);
}
