// The kernel sets and the run-time choice between them: dynconv's own AVX-512 and AVX2 code
// (gemm_x86.hpp's kernels, and any loop run through run_for_kernel_isa) or the build's generic
// code. kernel_isa() is the best set this CPU runs, or the one the environment variable
// DYNCONV_KERNELS names ("avx512", "avx2" or "generic"; the tests force each that way). A light
// header: the elementwise layers and the layout conversions dispatch through it without the
// GEMM kernels.
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/error.hpp>

#include <cstdlib>
#include <cstring>
#include <string>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define DYNCONV_X86_KERNELS 1
#include <cpuid.h>
#else
#define DYNCONV_X86_KERNELS 0
#endif

// A function the compiler must inline (a loop nest whose inner step a caller supplies).
#if defined(__GNUC__) || defined(__clang__)
#define DYNCONV_ALWAYS_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define DYNCONV_ALWAYS_INLINE __forceinline
#else
#define DYNCONV_ALWAYS_INLINE inline
#endif

namespace dynconv {
namespace detail {

/// The kernel sets: dynconv's own AVX-512 and AVX2 float kernels, or the build's generic code.
enum class KernelIsa { Avx512, Avx2, Generic };

inline const char* kernel_isa_name(KernelIsa isa) {
  return isa == KernelIsa::Avx512 ? "avx512" : isa == KernelIsa::Avx2 ? "avx2" : "generic";
}

#if DYNCONV_X86_KERNELS

// AVX512BW/VL give the masked 16-bit loads of BF16/F16 experts; F16C the AVX2 set's F16 loads
// (every AVX-512 server CPU since Skylake has BW and VL, every AVX2 CPU F16C).
#define DYNCONV_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define DYNCONV_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))

/// Whether the CPU has F16C (CPUID leaf 1, ECX bit 29); Clang 14's __builtin_cpu_supports
/// does not know "f16c". Its registers are AVX's, which the callers check the OS saves.
inline bool cpu_has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
}

/// Whether the CPU (and the OS) run the AVX-512 kernels: AVX512F, BW and VL (with AVX2, FMA
/// and F16C).
inline bool cpu_has_avx512() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           cpu_has_f16c();
  }();
  return has;
}
/// Whether the CPU (and the OS) run the AVX2 kernels: AVX2, FMA and F16C.
inline bool cpu_has_avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
  }();
  return has;
}

/// Whether this CPU (and OS) runs kernel set `isa`.
inline bool cpu_runs(KernelIsa isa) {
  return isa == KernelIsa::Avx512 ? cpu_has_avx512() : isa == KernelIsa::Avx2 ? cpu_has_avx2() : true;
}
#else
inline bool cpu_runs(KernelIsa isa) { return isa == KernelIsa::Generic; }
#endif

/// The kernel set DYNCONV_KERNELS names (it must run on this CPU), else the best this CPU runs.
inline KernelIsa select_kernel_isa() {
  const char* forced = std::getenv("DYNCONV_KERNELS");
  if (forced && *forced) {
    for (KernelIsa isa : {KernelIsa::Avx512, KernelIsa::Avx2, KernelIsa::Generic})
      if (std::strcmp(kernel_isa_name(isa), forced) == 0) {
        if (!cpu_runs(isa))
          throw Error("DYNCONV_KERNELS=" + std::string(forced) + ": this CPU does not run the " + forced + " kernels");
        return isa;
      }
    throw Error("DYNCONV_KERNELS=" + std::string(forced) + ": no such kernel set (avx512, avx2 or generic)");
  }
  for (KernelIsa isa : {KernelIsa::Avx512, KernelIsa::Avx2})
    if (cpu_runs(isa)) return isa;
  return KernelIsa::Generic;
}

/// The kernel set in use, chosen once (select_kernel_isa).
inline KernelIsa kernel_isa() {
  static const KernelIsa in_use = select_kernel_isa();
  return in_use;
}

#if DYNCONV_X86_KERNELS
/// f() compiled for AVX-512 (or AVX2): `flatten` inlines everything f calls into this one
/// function, which carries the target, so plain loops inside f (elementwise epilogues, pooling)
/// vectorise for the set in use whatever the build's flags.
template <typename F>
DYNCONV_TARGET_AVX512 __attribute__((flatten)) void run_avx512(const F& f) {
  f();
}
template <typename F>
DYNCONV_TARGET_AVX2 __attribute__((flatten)) void run_avx2(const F& f) {
  f();
}
#endif

/// Runs f() compiled for the kernel set in use (kernel_isa()): for float loops that the
/// compiler vectorises; code written with Eigen's packets keeps the build's packet width.
template <typename F>
void run_for_kernel_isa(const F& f) {
#if DYNCONV_X86_KERNELS
  switch (kernel_isa()) {
    case KernelIsa::Avx512: return run_avx512(f);
    case KernelIsa::Avx2: return run_avx2(f);
    case KernelIsa::Generic: break;
  }
#endif
  f();
}

}  // namespace detail
}  // namespace dynconv
