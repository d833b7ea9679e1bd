#include "checkpoint/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fabric {
namespace {

constexpr size_t kAlign = 4096;
// Linux moves at most ~2 GiB per read/write call; stay well below.
constexpr size_t kMaxIo = size_t{1} << 30;
// Buffered mode: start writeback every this many bytes so the final
// fdatasync does not have to flush the whole file at once.
constexpr uint64_t kWritebackBytes = uint64_t{64} << 20;
// FileReader: reads this big are split over threads.
constexpr size_t kParallelReadMin = size_t{64} << 20;
constexpr size_t kReadPiece = size_t{16} << 20;
constexpr int kReadThreads = 4;

size_t RoundUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

std::string DirName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

uint64_t RandomSuffix() {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng(std::random_device{}() ^
                                   (static_cast<uint64_t>(getpid()) << 32));
  return rng() ^ counter.fetch_add(1);
}

absl::Status Errno(int err, const std::string& message) {
  return absl::ErrnoToStatus(err, message);
}

}  // namespace

// ---------------------------------------------------------------------------
// AtomicFileWriter

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(
    const std::string& path) {
  return Create(path, Options());
}

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(
    const std::string& path, Options opts) {
  const std::string base = BaseName(path);
  if (base.empty() || base == "." || base == "..") {
    return absl::InvalidArgumentError(absl::StrCat("cannot write '", path, "': not a file name"));
  }
  const std::string dir = DirName(path);
  std::string temp;
  int fd = -1;
  for (int attempt = 0; attempt < 16 && fd < 0; ++attempt) {
    temp = absl::StrCat(dir, "/.", base, ".tmp.", getpid(), ".",
                        absl::Hex(RandomSuffix(), absl::kZeroPad16));
    fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EEXIST) {
      const int err = errno;
      if (err == ENOENT || err == ENOTDIR) {
        return Errno(err, absl::StrCat("cannot write '", path, "': directory '", dir,
                                       "' does not exist"));
      }
      return Errno(err, absl::StrCat("cannot write '", path, "': creating temp file '", temp,
                                     "' failed"));
    }
  }
  if (fd < 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("cannot write '", path, "': no unused temp file name in '", dir, "'"));
  }
  bool direct = false;
  if (opts.direct_io) {
    // Setting O_DIRECT after the create (instead of in open) keeps an EINVAL
    // from a filesystem without direct I/O apart from a failed create.
    const int flags = fcntl(fd, F_GETFL);
    direct = flags >= 0 && fcntl(fd, F_SETFL, flags | O_DIRECT) == 0;
  }
  std::unique_ptr<AtomicFileWriter> w(new AtomicFileWriter(path, temp, fd, direct, opts));
  if (absl::Status s = w->Init(); !s.ok()) return s;  // the destructor removes the temp file
  return w;
}

AtomicFileWriter::AtomicFileWriter(std::string path, std::string temp_path, int fd, bool direct,
                                   Options opts)
    : path_(std::move(path)),
      temp_path_(std::move(temp_path)),
      fd_(fd),
      direct_(direct),
      opts_(opts) {}

absl::Status AtomicFileWriter::Init() {
  const size_t cap = RoundUp(std::max(opts_.buffer_bytes, kAlign), kAlign);
  const int count = direct_ ? std::max(2, opts_.buffers) : 1;
  for (int i = 0; i < count; ++i) {
    void* p = nullptr;
    if (posix_memalign(&p, kAlign, cap) != 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("writing '", path_, "': cannot allocate a ", cap, "-byte buffer"));
    }
    buffers_.push_back(static_cast<char*>(p));
  }
  if (direct_) {
    {
      absl::MutexLock lock(&mu_);
      for (int i = 0; i < count; ++i) free_.push_back(i);
    }
    writer_ = std::thread([this] { WriterLoop(); });
  } else {
    cur_ = 0;
  }
  return absl::OkStatus();
}

AtomicFileWriter::~AtomicFileWriter() {
  Abort();
  for (char* b : buffers_) free(b);
}

absl::Status AtomicFileWriter::IoError(const char* what, int err, uint64_t offset) const {
  return Errno(err, absl::StrCat(what, " '", path_, "' failed after ", offset,
                                 " bytes were written (temp file '", temp_path_, "')"));
}

absl::Status AtomicFileWriter::WriteFully(const char* data, size_t n, uint64_t offset) {
  while (n > 0) {
    const ssize_t r = pwrite(fd_, data, std::min(n, kMaxIo), static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL && direct_.load()) {
        // The filesystem took O_DIRECT at open but refuses this write (an
        // alignment it does not support): continue with buffered writes.
        const int flags = fcntl(fd_, F_GETFL);
        if (flags >= 0 && fcntl(fd_, F_SETFL, flags & ~O_DIRECT) == 0) {
          direct_.store(false);
          continue;
        }
      }
      return IoError("writing", errno, offset);
    }
    if (r == 0) return IoError("writing", EIO, offset);
    data += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return absl::OkStatus();
}

void AtomicFileWriter::WriterLoop() {
  for (;;) {
    Job job;
    bool skip;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](AtomicFileWriter* w) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return !w->queue_.empty() || w->stop_;
          },
          this));
      if (queue_.empty()) return;
      job = queue_.front();
      queue_.pop_front();
      ++busy_;
      skip = !io_error_.ok() || stop_;  // stop_ with work queued means Abort
    }
    absl::Status s =
        skip ? absl::OkStatus() : WriteFully(buffers_[job.buffer], job.len, job.offset);
    absl::MutexLock lock(&mu_);
    if (!s.ok() && io_error_.ok()) io_error_ = std::move(s);
    free_.push_back(job.buffer);
    --busy_;
  }
}

absl::Status AtomicFileWriter::AcquireBuffer() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](AtomicFileWriter* w) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return !w->free_.empty() || !w->io_error_.ok();
      },
      this));
  if (!io_error_.ok()) return io_error_;
  cur_ = free_.front();
  free_.pop_front();
  fill_ = 0;
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::SubmitCurrent(size_t len) {
  absl::MutexLock lock(&mu_);
  if (!io_error_.ok()) return io_error_;
  queue_.push_back(Job{cur_, file_offset_, len});
  file_offset_ += len;
  cur_ = -1;
  fill_ = 0;
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::DrainAndStop() {
  if (!writer_.joinable()) return absl::OkStatus();
  absl::Status s;
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](AtomicFileWriter* w) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return w->queue_.empty() && w->busy_ == 0;
        },
        this));
    stop_ = true;
    s = io_error_;
  }
  writer_.join();
  return s;
}

absl::Status AtomicFileWriter::FlushBuffered() {
  if (fill_ == 0) return absl::OkStatus();
  absl::Status s = WriteFully(buffers_[0], fill_, file_offset_);
  file_offset_ += fill_;
  fill_ = 0;
  StartWriteback();
  return s;
}

void AtomicFileWriter::StartWriteback() {
  if (file_offset_ - writeback_from_ < kWritebackBytes) return;
  // Asynchronous; errors surface in fdatasync at Commit.
  sync_file_range(fd_, static_cast<off_t>(writeback_from_),
                  static_cast<off_t>(file_offset_ - writeback_from_), SYNC_FILE_RANGE_WRITE);
  writeback_from_ = file_offset_;
}

void AtomicFileWriter::Fail(absl::Status s) {
  if (error_.ok()) error_ = std::move(s);
}

absl::Status AtomicFileWriter::Write(const void* data, size_t n) {
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("writing '", path_, "' after Commit() or Abort()"));
  }
  if (!error_.ok()) return error_;
  if (n == 0) return absl::OkStatus();
  const char* p = static_cast<const char*>(data);
  const size_t cap = RoundUp(std::max(opts_.buffer_bytes, kAlign), kAlign);
  size_t left = n;
  if (!writer_.joinable()) {
    // Buffered: everything goes through the staging buffer, one buffer per
    // write syscall, with writeback started every 64 MiB so that Commit's
    // fdatasync does not find the whole file dirty.
    while (left > 0) {
      const size_t k = std::min(left, cap - fill_);
      memcpy(buffers_[0] + fill_, p, k);
      fill_ += k;
      p += k;
      left -= k;
      if (fill_ == cap) {
        if (absl::Status s = FlushBuffered(); !s.ok()) {
          Fail(s);
          return s;
        }
      }
    }
  } else {
    while (left > 0) {
      if (cur_ < 0) {
        if (absl::Status s = AcquireBuffer(); !s.ok()) {
          Fail(s);
          return s;
        }
      }
      const size_t k = std::min(left, cap - fill_);
      memcpy(buffers_[cur_] + fill_, p, k);
      fill_ += k;
      p += k;
      left -= k;
      if (fill_ == cap) {
        if (absl::Status s = SubmitCurrent(cap); !s.ok()) {
          Fail(s);
          return s;
        }
      }
    }
  }
  position_ += n;
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("Commit() of '", path_, "' after Commit() or Abort()"));
  }
  absl::Status s = error_;
  if (s.ok() && writer_.joinable()) {
    if (cur_ >= 0 && fill_ > 0) {
      // O_DIRECT writes whole blocks: pad the tail, then cut the file back.
      const size_t padded = RoundUp(fill_, kAlign);
      memset(buffers_[cur_] + fill_, 0, padded - fill_);
      s = SubmitCurrent(padded);
    }
    absl::Status drained = DrainAndStop();
    if (s.ok()) s = drained;
    if (s.ok() && ftruncate(fd_, static_cast<off_t>(position_)) != 0) {
      s = IoError("truncating", errno, position_);
    }
  } else if (s.ok()) {
    s = FlushBuffered();
  }
  if (s.ok() && fdatasync(fd_) != 0) s = IoError("syncing", errno, position_);
  if (s.ok()) {
    const int fd = fd_;
    fd_ = -1;
    if (close(fd) != 0) s = IoError("closing", errno, position_);
  }
  if (s.ok() && rename(temp_path_.c_str(), path_.c_str()) != 0) {
    s = Errno(errno, absl::StrCat("renaming '", temp_path_, "' to '", path_, "' failed"));
  }
  if (!s.ok()) {
    Abort();
    return s;
  }
  finished_ = true;
  // The new file is in place; only its directory entry may not be durable yet.
  return FsyncDirectory(DirName(path_));
}

void AtomicFileWriter::Abort() {
  if (finished_) return;
  finished_ = true;
  if (writer_.joinable()) {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    writer_.join();
  }
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  unlink(temp_path_.c_str());
}

// ---------------------------------------------------------------------------
// FileReader

absl::StatusOr<std::shared_ptr<FileReader>> FileReader::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno(errno, absl::StrCat("cannot open '", path, "'"));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return Errno(err, absl::StrCat("cannot stat '", path, "'"));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a regular file"));
  }
  return std::shared_ptr<FileReader>(new FileReader(path, fd, static_cast<uint64_t>(st.st_size)));
}

FileReader::FileReader(std::string path, int fd, uint64_t size)
    : path_(std::move(path)), fd_(fd), size_(size) {}

FileReader::~FileReader() { close(fd_); }

absl::Status FileReader::ReadAt(uint64_t offset, void* dst, size_t n) const {
  if (n == 0) return absl::OkStatus();
  if (offset > size_ || n > size_ - offset) {
    return absl::OutOfRangeError(absl::StrCat("truncated file '", path_, "': cannot read ", n,
                                              " bytes at offset ", offset, ", the file has ",
                                              size_, " bytes"));
  }
  char* out = static_cast<char*>(dst);
  if (n < kParallelReadMin) return ReadRange(offset, out, n);
  // Big reads: a few threads each read 16 MiB pieces, keeping several
  // requests in flight. Measured on this project's disk (2 GiB, cold cache):
  // ~1.55 GB/s, vs 1.0-1.3 for one pread per 1 GiB (with or without
  // FADV_SEQUENTIAL) and 0.9 for O_DIRECT through a bounce buffer.
  const size_t pieces = (n + kReadPiece - 1) / kReadPiece;
  const int threads = static_cast<int>(std::min<size_t>(kReadThreads, pieces));
  std::atomic<size_t> next{0};
  absl::Mutex mu;
  absl::Status error;
  auto work = [&] {
    for (;;) {
      const size_t at = next.fetch_add(kReadPiece);
      if (at >= n) return;
      absl::Status s = ReadRange(offset + at, out + at, std::min(kReadPiece, n - at));
      if (!s.ok()) {
        absl::MutexLock lock(&mu);
        if (error.ok()) error = std::move(s);
        next.store(n);
        return;
      }
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  return error;
}

absl::Status FileReader::ReadRange(uint64_t offset, char* p, size_t n) const {
  uint64_t at = offset;
  size_t left = n;
  while (left > 0) {
    const ssize_t r = pread(fd_, p, std::min(left, kMaxIo), static_cast<off_t>(at));
    if (r < 0) {
      if (errno == EINTR) continue;
      return Errno(errno, absl::StrCat("reading ", n, " bytes at offset ", offset, " of '",
                                       path_, "' failed"));
    }
    if (r == 0) {
      return absl::DataLossError(absl::StrCat("truncated file '", path_, "': reading ", n,
                                              " bytes at offset ", offset, ", the file ended at ",
                                              at, " (it was ", size_, " bytes when opened)"));
    }
    p += r;
    left -= static_cast<size_t>(r);
    at += static_cast<uint64_t>(r);
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Helpers

absl::Status EnsureDirectory(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("EnsureDirectory: empty path");
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    const std::string prefix = path.substr(0, pos);
    if (prefix.empty() || prefix == "/") continue;
    if (mkdir(prefix.c_str(), 0755) == 0) continue;
    const int err = errno;
    struct stat st;
    if (err == EEXIST && stat(prefix.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) continue;
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create directory '", path, "': '", prefix, "' is not a directory"));
    }
    return Errno(err, absl::StrCat("cannot create directory '", prefix, "'"));
  }
  return absl::OkStatus();
}

absl::Status FsyncDirectory(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno(errno, absl::StrCat("cannot open directory '", path, "'"));
  absl::Status s;
  // Some filesystems cannot sync a directory (EINVAL); nothing more to do there.
  if (fsync(fd) != 0 && errno != EINVAL) {
    s = Errno(errno, absl::StrCat("syncing directory '", path, "' failed"));
  }
  close(fd);
  return s;
}

absl::Status AtomicWriteFile(const std::string& path, std::string_view contents) {
  AtomicFileWriter::Options opts;
  opts.direct_io = false;
  opts.buffer_bytes = std::min<size_t>(RoundUp(contents.size() + 1, kAlign), size_t{1} << 20);
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> w = AtomicFileWriter::Create(path, opts);
  if (!w.ok()) return w.status();
  if (absl::Status s = (*w)->Write(contents.data(), contents.size()); !s.ok()) return s;
  return (*w)->Commit();
}

}  // namespace fabric
