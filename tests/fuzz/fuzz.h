/*
 * tests/fuzz/fuzz.h — what the libFuzzer targets share: the entry point's
 * prototype and CHECK, an oracle that crashes (so libFuzzer keeps the input)
 * with the condition that failed. It traps rather than abort()s: a provider
 * library that libfabric loads turns SIGABRT into a plain exit.
 */
#ifndef KVFS_TESTS_FUZZ_H
#define KVFS_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                      \
	do {                                                                          \
		if (!(c)) {                                                           \
			fprintf(stderr, "%s:%d: oracle failed: %s\n", __FILE__, __LINE__, \
				#c);                                                  \
			__builtin_trap();                                             \
		}                                                                     \
	} while (0)

#endif
