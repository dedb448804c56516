// CRC-32C (Castagnoli), the checksum of the durable store's files. Uses the
// SSE4.2 crc32 instruction when the CPU has it, a table otherwise; both give
// the same value (tested).
#pragma once

#include <cstddef>
#include <cstdint>

namespace plume::core {

// Extends `crc` (0 to start) over `n` bytes. Chainable:
// Crc32c(Crc32c(0, a, n), b, m) == Crc32c(0, a||b, n + m).
uint32_t Crc32c(uint32_t crc, const void* data, size_t n);

// The CRC of a||b from crc_a = Crc32c(0, a, |a|), crc_b = Crc32c(0, b, len_b)
// and len_b, without the bytes (zlib's crc32_combine for this polynomial):
// the CRC of data whose parts are checksummed out of order.
uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

// The table path alone (tests compare it with the hardware path).
uint32_t Crc32cPortable(uint32_t crc, const void* data, size_t n);

}  // namespace plume::core
