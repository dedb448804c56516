// Whether this test binary is built with AddressSanitizer or
// ThreadSanitizer, whose builds make allocations, locks and wake-ups
// several times slower and keep freed memory in quarantine: latency and
// memory bounds state what they assume about it.
#pragma once

namespace plume::testing {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
#else
inline constexpr bool kSanitized = false;
#endif

}  // namespace plume::testing
