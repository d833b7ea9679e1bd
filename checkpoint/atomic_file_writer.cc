#include "checkpoint/atomic_file_writer.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "base/status_macros.h"
#include "checkpoint/background_unlinker.h"
#include "checkpoint/fs_util.h"

namespace fabric {
namespace {

constexpr size_t kAlign = 4096;
// Linux moves at most ~2 GiB per read/write call; stay well below.
constexpr size_t kMaxIo = size_t{1} << 30;
// Buffered mode: start writeback every this many bytes so the final
// fdatasync does not have to flush the whole file at once.
constexpr uint64_t kWritebackBytes = uint64_t{64} << 20;
// Replaced files at least this big are freed on a background thread.
constexpr uint64_t kRetireInBackgroundBytes = uint64_t{64} << 20;

size_t RoundUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

uint64_t RandomSuffix() {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng(std::random_device{}() ^
                                   (static_cast<uint64_t>(getpid()) << 32));
  return rng() ^ counter.fetch_add(1);
}

// `.<base>.retired.<pid>.<hex>`: the second name an old file gets while it
// is being replaced.
std::string RetiredPrefix(const std::string& path) {
  return absl::StrCat(DirName(path), "/.", BaseName(path), ".retired.");
}

// Retired names and temp files left by processes that died (a crash or a
// kill mid-save) beside the file just committed: unlinked once their pid is
// gone, so repeated kills do not fill the disk with partial files.
void UnlinkStaleRemains(const std::string& path) {
  const std::string prefixes[] = {absl::StrCat(".", BaseName(path), ".retired."),
                                  absl::StrCat(".", BaseName(path), ".tmp.")};
  DIR* dir = opendir(DirName(path).c_str());
  if (dir == nullptr) return;
  while (dirent* e = readdir(dir)) {
    const std::string name = e->d_name;
    for (const std::string& prefix : prefixes) {
      if (name.compare(0, prefix.size(), prefix) != 0) continue;
      const long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
      if (ProcessIsGone(pid)) {
        UnlinkInBackground(absl::StrCat(DirName(path), "/", name));
      }
    }
  }
  closedir(dir);
}

}  // namespace

// The writer's state. Direct I/O: the caller fills buffers_[cur_] and queues
// it; writer threads take queued buffers, pwrite them and return them to
// free_. Buffered: buffers_[0] only, written by the caller's thread.
class AtomicFileWriter::Impl {
 public:
  Impl(std::string path, std::string temp_path, int fd, bool direct, Options opts);
  ~Impl();

  absl::Status Init();
  absl::Status Write(const void* data, size_t n);
  absl::Status Commit();
  void Abort();

  uint64_t position() const { return position_; }
  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  bool direct_io() const { return direct_.load(); }

 private:
  struct Job {
    int buffer;
    uint64_t offset;
    size_t len;
  };

  size_t BufferCapacity() const { return RoundUp(std::max(opts_.buffer_bytes, kAlign), kAlign); }
  absl::Status FillBuffered(const char* p, size_t n);
  absl::Status FillDirect(const char* p, size_t n);
  absl::Status WriteFully(const char* data, size_t n, uint64_t offset);
  absl::Status IoError(const char* what, int err, uint64_t offset) const;
  absl::Status FlushBuffered();
  void StartWriteback();
  absl::Status SubmitCurrent(size_t len);
  absl::Status AcquireBuffer();
  absl::Status DrainAndStop();
  void WriterLoop();
  void Fail(absl::Status s);

  const std::string path_;
  const std::string temp_path_;
  int fd_;
  std::atomic<bool> direct_;
  const Options opts_;
  bool finished_ = false;  // committed or aborted
  absl::Status error_;     // sticky, producer side
  uint64_t position_ = 0;  // logical bytes accepted

  // Staging buffers (aligned to 4 KiB); buffered mode uses buffers_[0] only.
  std::vector<char*> buffers_;
  int cur_ = -1;             // buffer being filled, -1 if none
  size_t fill_ = 0;          // bytes in the current buffer
  uint64_t file_offset_ = 0; // file offset of the current buffer's start
  uint64_t writeback_from_ = 0;  // buffered mode: writeback started below this

  // Shared with the writer threads.
  absl::Mutex mu_;
  std::deque<int> free_ ABSL_GUARDED_BY(mu_);
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  int busy_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status io_error_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> writers_;
};

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
        return ErrnoStatus(err, absl::StrCat("cannot write '", path, "': directory '", dir,
                                       "' does not exist"));
      }
      return ErrnoStatus(err, absl::StrCat("cannot write '", path, "': creating temp file '", temp,
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
  auto impl = std::make_unique<Impl>(path, temp, fd, direct, opts);
  FABRIC_RETURN_IF_ERROR(impl->Init());  // the destructor removes the temp file
  return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(std::move(impl)));
}

AtomicFileWriter::Impl::Impl(std::string path, std::string temp_path, int fd, bool direct,
                             Options opts)
    : path_(std::move(path)),
      temp_path_(std::move(temp_path)),
      fd_(fd),
      direct_(direct),
      opts_(opts) {}

absl::Status AtomicFileWriter::Impl::Init() {
  const size_t cap = BufferCapacity();
  const int threads = std::max(1, opts_.writer_threads);
  const int count = direct_ ? std::max(threads + 1, opts_.buffers) : 1;
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
    for (int i = 0; i < threads; ++i) writers_.emplace_back([this] { WriterLoop(); });
  } else {
    cur_ = 0;
  }
  return absl::OkStatus();
}

AtomicFileWriter::Impl::~Impl() {
  Abort();
  for (char* b : buffers_) free(b);
}

absl::Status AtomicFileWriter::Impl::IoError(const char* what, int err, uint64_t offset) const {
  return ErrnoStatus(err, absl::StrCat(what, " '", path_, "' failed after ", offset,
                                 " bytes were written (temp file '", temp_path_, "')"));
}

absl::Status AtomicFileWriter::Impl::WriteFully(const char* data, size_t n, uint64_t offset) {
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

void AtomicFileWriter::Impl::WriterLoop() {
  for (;;) {
    Job job;
    bool skip;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Impl* w) ABSL_NO_THREAD_SAFETY_ANALYSIS {
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

absl::Status AtomicFileWriter::Impl::AcquireBuffer() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](Impl* w) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return !w->free_.empty() || !w->io_error_.ok();
      },
      this));
  FABRIC_RETURN_IF_ERROR(io_error_);
  cur_ = free_.front();
  free_.pop_front();
  fill_ = 0;
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Impl::SubmitCurrent(size_t len) {
  absl::MutexLock lock(&mu_);
  FABRIC_RETURN_IF_ERROR(io_error_);
  queue_.push_back(Job{cur_, file_offset_, len});
  file_offset_ += len;
  cur_ = -1;
  fill_ = 0;
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Impl::DrainAndStop() {
  if (writers_.empty()) return absl::OkStatus();
  absl::Status s;
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](Impl* w) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return w->queue_.empty() && w->busy_ == 0;
        },
        this));
    stop_ = true;
    s = io_error_;
  }
  for (std::thread& t : writers_) t.join();
  writers_.clear();
  return s;
}

absl::Status AtomicFileWriter::Impl::FlushBuffered() {
  if (fill_ == 0) return absl::OkStatus();
  absl::Status s = WriteFully(buffers_[0], fill_, file_offset_);
  file_offset_ += fill_;
  fill_ = 0;
  StartWriteback();
  return s;
}

void AtomicFileWriter::Impl::StartWriteback() {
  if (file_offset_ - writeback_from_ < kWritebackBytes) return;
  // Asynchronous; errors surface in fdatasync at Commit.
  sync_file_range(fd_, static_cast<off_t>(writeback_from_),
                  static_cast<off_t>(file_offset_ - writeback_from_), SYNC_FILE_RANGE_WRITE);
  writeback_from_ = file_offset_;
}

void AtomicFileWriter::Impl::Fail(absl::Status s) {
  if (error_.ok()) error_ = std::move(s);
}

absl::Status AtomicFileWriter::Impl::Write(const void* data, size_t n) {
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("writing '", path_, "' after Commit() or Abort()"));
  }
  FABRIC_RETURN_IF_ERROR(error_);
  if (n == 0) return absl::OkStatus();
  absl::Status s = writers_.empty() ? FillBuffered(static_cast<const char*>(data), n)
                                    : FillDirect(static_cast<const char*>(data), n);
  if (s.ok()) {
    position_ += n;
  } else {
    Fail(s);  // sticky: the file is incomplete from here on
  }
  return s;
}

// Buffered: everything goes through the staging buffer, one buffer per write
// syscall, with writeback started every 64 MiB so that Commit's fdatasync
// does not find the whole file dirty.
absl::Status AtomicFileWriter::Impl::FillBuffered(const char* p, size_t left) {
  const size_t cap = BufferCapacity();
  while (left > 0) {
    const size_t k = std::min(left, cap - fill_);
    memcpy(buffers_[0] + fill_, p, k);
    fill_ += k;
    p += k;
    left -= k;
    if (fill_ == cap) FABRIC_RETURN_IF_ERROR(FlushBuffered());
  }
  return absl::OkStatus();
}

// Direct I/O: fill a free buffer, queue it for the writer threads when full.
absl::Status AtomicFileWriter::Impl::FillDirect(const char* p, size_t left) {
  const size_t cap = BufferCapacity();
  while (left > 0) {
    if (cur_ < 0) FABRIC_RETURN_IF_ERROR(AcquireBuffer());
    const size_t k = std::min(left, cap - fill_);
    memcpy(buffers_[cur_] + fill_, p, k);
    fill_ += k;
    p += k;
    left -= k;
    if (fill_ == cap) FABRIC_RETURN_IF_ERROR(SubmitCurrent(cap));
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Impl::Commit() {
  if (finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("Commit() of '", path_, "' after Commit() or Abort()"));
  }
  absl::Status s = error_;
  if (s.ok() && !writers_.empty()) {
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
  // A big file being replaced first gets a second name, so that rename()
  // only swaps names and the old file's blocks are freed in the background.
  std::string retired;
  struct stat old_file;
  if (s.ok() && stat(path_.c_str(), &old_file) == 0 &&
      static_cast<uint64_t>(old_file.st_size) >= kRetireInBackgroundBytes) {
    retired = absl::StrCat(RetiredPrefix(path_), getpid(), ".",
                           absl::Hex(RandomSuffix(), absl::kZeroPad16));
    if (link(path_.c_str(), retired.c_str()) != 0) retired.clear();  // none, or no hard links
  }
  if (s.ok() && rename(temp_path_.c_str(), path_.c_str()) != 0) {
    s = ErrnoStatus(errno, absl::StrCat("renaming '", temp_path_, "' to '", path_, "' failed"));
  }
  if (!s.ok()) {
    if (!retired.empty()) unlink(retired.c_str());  // the old file keeps its own name
    Abort();
    return s;
  }
  finished_ = true;
  // The new file is in place; only its directory entry may not be durable yet.
  absl::Status synced = FsyncDirectory(DirName(path_));
  if (!retired.empty()) UnlinkInBackground(std::move(retired));
  UnlinkStaleRemains(path_);
  return synced;
}

void AtomicFileWriter::Impl::Abort() {
  if (finished_) return;
  finished_ = true;
  if (!writers_.empty()) {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    for (std::thread& t : writers_) t.join();
    writers_.clear();
  }
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  unlink(temp_path_.c_str());
}


// ---------------------------------------------------------------------------
// The public face: forwards to Impl.

AtomicFileWriter::AtomicFileWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AtomicFileWriter::~AtomicFileWriter() = default;

absl::Status AtomicFileWriter::Write(const void* data, size_t n) { return impl_->Write(data, n); }
uint64_t AtomicFileWriter::position() const { return impl_->position(); }
absl::Status AtomicFileWriter::Commit() { return impl_->Commit(); }
void AtomicFileWriter::Abort() { impl_->Abort(); }
const std::string& AtomicFileWriter::path() const { return impl_->path(); }
const std::string& AtomicFileWriter::temp_path() const { return impl_->temp_path(); }
bool AtomicFileWriter::direct_io() const { return impl_->direct_io(); }

absl::Status AtomicWriteFile(const std::string& path, std::string_view contents) {
  AtomicFileWriter::Options opts;
  opts.direct_io = false;
  opts.buffer_bytes = std::min<size_t>(RoundUp(contents.size() + 1, kAlign), size_t{1} << 20);
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> w,
                          AtomicFileWriter::Create(path, opts));
  FABRIC_RETURN_IF_ERROR(w->Write(contents.data(), contents.size()));
  return w->Commit();
}

}  // namespace fabric
