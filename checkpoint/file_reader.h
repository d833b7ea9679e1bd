// FileReader: positional reads from one file, safe for concurrent calls,
// with batched reads that turn many small records into a few large reads.
//
// Large reads whose destination address and file offset share their 4 KiB
// phase, of bytes the page cache does not hold, go straight from the disk
// into the destination with O_DIRECT: no page-cache fill, no kernel copy.
// Everything else (cached bytes, small or misaligned reads, file systems
// without O_DIRECT) is read through the page cache.
#ifndef FABRIC_CHECKPOINT_FILE_READER_H_
#define FABRIC_CHECKPOINT_FILE_READER_H_

#include <cstddef>
#include <cstdint>
#include <atomic>
#include <memory>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fabric {

// One piece of a batched read: `n` bytes at file offset `offset` into `dst`.
struct ReadRequest {
  uint64_t offset;
  void* dst;
  size_t n;
};

// Turns the O_DIRECT path on or off for every FileReader of the process (on
// by default; FABRIC_DIRECT_READS=0 in the environment starts it off). For
// benchmarks that compare the two, and for file systems that mishandle it.
void SetDirectReads(bool on);
bool DirectReadsEnabled();

class FileReader {
 public:
  static absl::StatusOr<std::shared_ptr<FileReader>> Open(const std::string& path);

  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;
  ~FileReader();

  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Reads exactly n bytes at offset into dst. Reading past the end is a
  // "truncated file" error naming the path, the offset and the size.
  absl::Status ReadAt(uint64_t offset, void* dst, size_t n) const;

  // Reads every request, in any order (destinations must not overlap). Many
  // small records read this way cost a few large reads: requests close
  // together in the file become one preadv of up to 16 MiB (the bytes between
  // them land in scratch memory), and several such reads are in flight at once.
  // With `crcs`, it is resized to requests.size() and crcs[i] is the CRC-32 of
  // request i's bytes, computed by the reading threads on each piece right
  // after it lands (still in cache, while the other threads' reads are in
  // flight) and combined per request. However many threads call ReadBatch
  // at once (a load reads several tensors at a time), at most kInFlight span
  // reads of this file run together: more only made the disk slower.
  absl::Status ReadBatch(std::vector<ReadRequest> requests,
                         std::vector<uint32_t>* crcs = nullptr) const;

 private:
  struct Span;
  struct Piece;
  FileReader(std::string path, int fd, int direct_fd, uint64_t size);
  absl::Status CheckRange(uint64_t offset, size_t n) const;
  absl::Status ReadRange(uint64_t offset, char* dst, size_t n) const;
  absl::Status ReadSpan(const Span& span, Piece* pieces, char* scratch, bool crc) const;
  // One contiguous range, O_DIRECT where it can be (see above); with `crc`,
  // *crc is set to the CRC-32 of its bytes.
  absl::Status ReadPiece(uint64_t offset, char* dst, size_t n, uint32_t* crc) const;
  // Whether [offset, offset + n) into dst can and should be read directly.
  bool UseDirect(uint64_t offset, const char* dst, size_t n) const;

  // Holds one of the file's kInFlight read slots while alive.
  class ReadSlot;

  const std::string path_;
  const int fd_;
  // O_RDONLY | O_DIRECT on the same file, or -1; turned off (direct_ok_) at
  // the first read the file system refuses with EINVAL.
  const int direct_fd_;
  mutable std::atomic<bool> direct_ok_;
  const uint64_t size_;
  mutable std::mutex slots_mu_;
  mutable std::condition_variable slots_cv_;
  mutable int in_flight_ = 0;
};

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_FILE_READER_H_
