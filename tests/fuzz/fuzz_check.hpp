#pragma once
/// @file fuzz_check.hpp
/// What the fuzz targets share: FUZZ_CHECK, an invariant that aborts (libFuzzer and the replay
/// test then report the input), and the entry point every target defines.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

/// Aborts with the failed condition when `condition` is false: a finding.
#define FUZZ_CHECK(condition)                                                                      \
    do {                                                                                           \
        if (!(condition)) {                                                                        \
            std::fprintf(                                                                          \
                stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #condition);     \
            std::abort();                                                                          \
        }                                                                                          \
    } while (false)

/// libFuzzer's entry point: one input, return 0.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
