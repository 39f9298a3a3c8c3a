// No allocation inside a steady-state forward pass: every call to the C allocator (malloc,
// calloc, realloc, the aligned variants, and so operator new and Eigen's own buffers) is
// counted while a Session runs a model it has run before. glibc lets a program replace these
// functions and reach the originals as __libc_*; under a sanitizer (which replaces them
// itself) or another C library the test skips.
#include <dynconv/models/zoo.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <string>

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define DYNCONV_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DYNCONV_TEST_SANITIZED 1
#endif

#if defined(__GLIBC__) && !defined(DYNCONV_TEST_SANITIZED)
#define DYNCONV_COUNT_MALLOC 1
namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_calls{0};
void count() {
  if (g_counting.load(std::memory_order_relaxed)) g_calls.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void* malloc(std::size_t n) {
  count();
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t s) {
  count();
  return __libc_calloc(n, s);
}
void* realloc(void* p, std::size_t n) {
  count();
  return __libc_realloc(p, n);
}
void* memalign(std::size_t a, std::size_t n) {
  count();
  return __libc_memalign(a, n);
}
void* aligned_alloc(std::size_t a, std::size_t n) {
  count();
  return __libc_memalign(a, n);
}
int posix_memalign(void** out, std::size_t a, std::size_t n) {
  count();
  *out = __libc_memalign(a, n);
  return *out ? 0 : 12;  // ENOMEM
}
}
#endif

namespace {

using dynconv::Index;
using dynconv::Tensor4;

TEST(SteadyState, ForwardAllocatesNothing) {
#ifndef DYNCONV_COUNT_MALLOC
  GTEST_SKIP() << "needs glibc and no sanitizer (they replace malloc themselves)";
#else
  // The counter must see allocations at all, or the test would prove nothing.
  g_counting = true;
  void* volatile probe = std::malloc(64);
  g_counting = false;
  std::free(probe);
  ASSERT_EQ(g_calls.exchange(0), 1) << "malloc is not being counted";

  for (const char* name : {"dy_mobilenet_v3_small", "dy_mobilenet_v2_x0_5", "dy_resnet10", "resnet10"}) {
    const auto model = dynconv::models::create<float>(name, dynconv::models::ModelOptions().num_classes(10));
    for (Index batch : {1, 8})
      for (int threads : {1, 2}) {
        dynconv::models::Session<float> session(*model, threads);
        Tensor4<float> x(batch, 3, 64, 64);
        x.setRandom();
        session.forward(x);  // sizes every buffer
        g_calls = 0;
        g_counting = true;
        for (int i = 0; i < 3; ++i) session.forward(x);
        g_counting = false;
        EXPECT_EQ(g_calls.load(), 0) << name << " batch " << batch << ", " << threads
                                     << " threads: allocations in steady-state forward passes";
      }
  }
#endif
}

}  // namespace
