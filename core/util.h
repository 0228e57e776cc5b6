/* core/util.h — small helpers every layer uses: sizes, clocks, alignment. */
#ifndef KVFS_CORE_UTIL_H
#define KVFS_CORE_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define KVFS_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define KVFS_ALIGN_UP(x, a) (((x) + (a)-1) / (a) * (a))
#define KVFS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KVFS_MAX(a, b) ((a) > (b) ? (a) : (b))

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/*
 * Parse a size such as "4096", "512K", "512M", "8G", "1T" (binary units;
 * an optional trailing "iB" or "B" is accepted).
 * @return 0, or -EINVAL if @s is not a size, -ERANGE if it overflows 64 bits.
 */
int kvfs_parse_size(const char *s, uint64_t *out);

/*
 * Parse a duration in seconds, such as "30", "0.5" or "1e-3": a finite
 * number from 0 to one year.
 * @return 0, or -EINVAL (and @out untouched) for anything else.
 */
int kvfs_parse_seconds(const char *s, double *out);

/* Format @bytes as "1.5 GiB" into @buf. @return @buf. */
char *kvfs_fmt_size(uint64_t bytes, char *buf, size_t len);

static inline uint64_t kvfs_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t kvfs_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
