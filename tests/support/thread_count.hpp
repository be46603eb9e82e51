#pragma once
// Test support: set the OpenMP thread count for a scope.

#ifdef _OPENMP
#include <omp.h>
#endif

namespace moekit_test {

/// Sets the OpenMP thread count for its lifetime and restores the previous one.
class ThreadCount {
  public:
    explicit ThreadCount(int threads) {
#ifdef _OPENMP
        previous_ = omp_get_max_threads();
        omp_set_num_threads(threads);
#else
        (void)threads;
#endif
    }
    ~ThreadCount() {
#ifdef _OPENMP
        omp_set_num_threads(previous_);
#endif
    }
    ThreadCount(const ThreadCount&) = delete;
    ThreadCount& operator=(const ThreadCount&) = delete;

  private:
    int previous_ = 1;
};

} // namespace moekit_test
