// Whether this test binary is built with AddressSanitizer or
// ThreadSanitizer, whose builds make allocations, locks and wake-ups
// several times slower and keep freed memory in quarantine: latency and
// memory bounds state what they assume about it. PLUME_SANITIZED is the same
// for the preprocessor (gcc and clang name the sanitizers differently).
#pragma once

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PLUME_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define PLUME_SANITIZED 1
#endif
#endif
#ifndef PLUME_SANITIZED
#define PLUME_SANITIZED 0
#endif

namespace plume::testing {

inline constexpr bool kSanitized = PLUME_SANITIZED != 0;

}  // namespace plume::testing
