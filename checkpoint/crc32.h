// Crc32: the CRC-32 of zip archives (reflected polynomial 0xEDB88320), with
// the same semantics as zlib's crc32(): start from 0 and feed the previous
// result back in to continue, so Crc32(Crc32(0, a), b) == Crc32(0, a + b).
// Backed by ISA-L's PCLMUL/AVX code, several GB/s per core.
#ifndef FABRIC_CHECKPOINT_CRC32_H_
#define FABRIC_CHECKPOINT_CRC32_H_

#include <cstddef>
#include <cstdint>

namespace fabric {

uint32_t Crc32(uint32_t crc, const void* data, size_t n);

// The CRC-32 of a + b from crc_a = CRC(a), crc_b = CRC(b) and b's length, as
// zlib's crc32_combine: pieces of one record checksummed on different
// threads, as they are read, make the record's CRC without a second pass.
uint32_t Crc32Combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_CRC32_H_
