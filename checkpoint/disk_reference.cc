#include "checkpoint/disk_reference.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>

namespace fabric {

double RawDirectWriteGBs(const std::string& path, uint64_t bytes) {
  constexpr size_t kBlock = size_t{16} << 20;
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, kBlock) != 0) return 0;
  std::mt19937_64 rng(42);
  for (size_t i = 0; i < kBlock / 8; ++i) static_cast<uint64_t*>(buf)[i] = rng();
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0644);
  const bool direct = fd >= 0;
  if (!direct) fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    free(buf);
    return 0;
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t done = 0; done < bytes; done += kBlock) {
    if (write(fd, buf, kBlock) != static_cast<ssize_t>(kBlock)) break;
  }
  fsync(fd);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  close(fd);
  free(buf);
  unlink(path.c_str());
  if (!direct) std::printf("  (O_DIRECT unsupported here: the raw figure is buffered)\n");
  return bytes / s / 1e9;
}

namespace {
void DropFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}
}  // namespace

void DropPageCache(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) {
    DropFile(path);
    return;
  }
  for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
    DropFile(entry.path().string());
  }
}

}  // namespace fabric
