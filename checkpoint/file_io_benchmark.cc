// Writes and reads a large file several ways and prints GB/s for each:
// AtomicFileWriter (direct and buffered, several buffer sizes), dd-style raw
// O_DIRECT and buffered writes as references, then cold reads (page cache
// dropped for the file with POSIX_FADV_DONTNEED) with plain pread, pread
// after POSIX_FADV_SEQUENTIAL, O_DIRECT into a bounce buffer, and
// FileReader::ReadAt.
//
//   bazel run -c opt //checkpoint:file_io_benchmark -- --dir=/tmp --gib=2
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/atomic_file_writer.h"
#include "checkpoint/disk_reference.h"
#include "checkpoint/file_reader.h"

ABSL_FLAG(std::string, dir, "/tmp", "directory for the test file");
ABSL_FLAG(double, gib, 2.0, "GiB to write and read");
ABSL_FLAG(bool, sweep, true, "also sweep AtomicFileWriter buffer sizes");
ABSL_FLAG(bool, reads, true, "also run the read benchmarks");
ABSL_FLAG(bool, writes, true, "run the write benchmarks (else only write the file once)");

namespace fabric {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

double Seconds(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void Check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s: %s\n", what.c_str(), std::strerror(errno));
    std::exit(1);
  }
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "FAILED: %s\n", s.ToString().c_str());
    std::exit(1);
  }
}

char* Aligned(size_t n) {
  void* p = nullptr;
  Check(posix_memalign(&p, 4096, n) == 0, "posix_memalign");
  std::memset(p, 0, n);
  return static_cast<char*>(p);
}

void Report(const std::string& name, uint64_t bytes, double s) {
  std::printf("%-58s %7.2f GB/s  (%.2f s)\n", name.c_str(), bytes / s / 1e9, s);
  std::fflush(stdout);
}

// The source data: a 1 GiB pattern written over and over from unaligned
// memory, as a tensor's storage would be (64-byte aligned, not 4 KiB).
struct Source {
  std::vector<char> storage = std::vector<char>(1024 * kMiB + 64);
  char* data = storage.data() + 64 - (reinterpret_cast<uintptr_t>(storage.data()) % 64);
  size_t size = 1024 * kMiB;
  Source() {
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i + 8 <= size; i += 8) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      std::memcpy(data + i, &x, 8);
    }
  }
};

void BenchAtomic(const Source& src, const std::string& path, uint64_t total,
                 AtomicFileWriter::Options opts, const std::string& name, size_t write_size) {
  unlink(path.c_str());
  bool direct = false;
  const double s = Seconds([&] {
    auto w = AtomicFileWriter::Create(path, opts);
    Check(w.status());
    direct = (*w)->direct_io();
    for (uint64_t done = 0; done < total;) {
      // Walk through the source so no two writes repeat the same bytes
      // (virtual disks may dedupe or compress repeated or zero data).
      const size_t at = static_cast<size_t>(done % src.size);
      const size_t n = static_cast<size_t>(
          std::min<uint64_t>({write_size, total - done, src.size - at}));
      Check((*w)->Write(src.data + at, n));
      done += n;
    }
    Check((*w)->Commit());
  });
  Report(absl::StrCat(name, direct ? "" : " [buffered]"), total, s);
}

void BenchRawWrite(const Source& src, const std::string& path, uint64_t total, bool direct) {
  unlink(path.c_str());
  const size_t block = 16 * kMiB;
  // An aligned copy of the source, written block after block.
  char* buf = Aligned(src.size);
  std::memcpy(buf, src.data, src.size);
  const double s = Seconds([&] {
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | (direct ? O_DIRECT : 0), 0644);
    Check(fd >= 0, "open " + path);
    for (uint64_t done = 0; done < total; done += block) {
      Check(write(fd, buf + done % src.size, block) == static_cast<ssize_t>(block), "write");
    }
    Check(fdatasync(fd) == 0, "fdatasync");
    close(fd);
  });
  free(buf);
  Report(direct ? "raw dd-style O_DIRECT write, 16 MiB blocks + fdatasync"
                : "raw dd-style buffered write, 16 MiB blocks + fdatasync",
         total, s);
}

void BenchReads(const std::string& path, uint64_t total) {
  const size_t dst_size = 1024 * kMiB;
  char* dst = Aligned(dst_size);
  auto read_all = [&](int fd, size_t chunk) {
    for (uint64_t done = 0; done < total;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, total - done));
      size_t got = 0;
      while (got < n) {
        const ssize_t r = pread(fd, dst + (done % dst_size) % (dst_size - n + 1) + got,
                                n - got, static_cast<off_t>(done + got));
        Check(r > 0, "pread");
        got += static_cast<size_t>(r);
      }
      done += n;
    }
  };
  {
    DropPageCache(path);
    auto reader = FileReader::Open(path);
    Check(reader.status());
    const double s = Seconds([&] {
      for (uint64_t done = 0; done < total;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(dst_size, total - done));
        Check((*reader)->ReadAt(done, dst, n));
        done += n;
      }
    });
    Report("cold FileReader::ReadAt, 1 GiB per call", total, s);
    const double warm = Seconds([&] {
      for (uint64_t done = 0; done < total;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(dst_size, total - done));
        Check((*reader)->ReadAt(done, dst, n));
        done += n;
      }
    });
    Report("warm FileReader::ReadAt, 1 GiB per call (page cache)", total, warm);
  }
  for (size_t chunk : {8 * kMiB, 64 * kMiB, 1024 * kMiB}) {
    DropPageCache(path);
    const int fd = open(path.c_str(), O_RDONLY);
    const double s = Seconds([&] { read_all(fd, chunk); });
    close(fd);
    Report(absl::StrCat("cold pread, ", chunk / kMiB, " MiB per call"), total, s);
  }
  for (size_t chunk : {64 * kMiB, 1024 * kMiB}) {
    DropPageCache(path);
    const int fd = open(path.c_str(), O_RDONLY);
    const double s = Seconds([&] {
      posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
      read_all(fd, chunk);
    });
    close(fd);
    Report(absl::StrCat("cold pread + FADV_SEQUENTIAL, ", chunk / kMiB, " MiB per call"), total,
           s);
  }
  for (int threads : {2, 4}) {
    DropPageCache(path);
    const int fd = open(path.c_str(), O_RDONLY);
    const size_t chunk = 16 * kMiB;
    const double s = Seconds([&] {
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          for (uint64_t at = t * chunk; at < total; at += threads * chunk) {
            const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, total - at));
            Check(pread(fd, dst + at % (dst_size - chunk + 1), n, static_cast<off_t>(at)) ==
                      static_cast<ssize_t>(n),
                  "pread");
          }
        });
      }
      for (auto& th : pool) th.join();
    });
    close(fd);
    Report(absl::StrCat("cold pread, ", threads, " threads x 16 MiB chunks"), total, s);
  }
  {
    DropPageCache(path);
    const int fd = open(path.c_str(), O_RDONLY | O_DIRECT);
    Check(fd >= 0, "open O_DIRECT");
    const size_t bounce_size = 16 * kMiB;
    char* bounce = Aligned(bounce_size);
    const double s = Seconds([&] {
      for (uint64_t done = 0; done < total;) {
        const ssize_t r = pread(fd, bounce, bounce_size, static_cast<off_t>(done));
        Check(r > 0, "pread O_DIRECT");
        std::memcpy(dst + done % (dst_size - bounce_size + 1), bounce, static_cast<size_t>(r));
        done += static_cast<uint64_t>(r);
      }
    });
    free(bounce);
    close(fd);
    Report("cold O_DIRECT pread into 16 MiB bounce + memcpy", total, s);
  }
  {
    DropPageCache(path);
    const int fd = open(path.c_str(), O_RDONLY | O_DIRECT);
    const double s = Seconds([&] {
      for (uint64_t done = 0; done < total;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(dst_size, total - done));
        const ssize_t r = pread(fd, dst, n, static_cast<off_t>(done));
        Check(r > 0, "pread O_DIRECT");
        done += static_cast<uint64_t>(r);
      }
    });
    close(fd);
    Report("cold O_DIRECT pread straight into aligned 1 GiB dst", total, s);
  }
  free(dst);
}

void Run() {
  const std::string dir = absl::GetFlag(FLAGS_dir);
  const std::string path = dir + "/fabric_file_io_benchmark.bin";
  const uint64_t total =
      static_cast<uint64_t>(absl::GetFlag(FLAGS_gib) * 1024) * kMiB;
  std::printf("file %s, %.2f GiB\n", path.c_str(), total / double(1 << 30));
  Source src;

  BenchRawWrite(src, path, total, /*direct=*/true);
  if (!absl::GetFlag(FLAGS_writes)) {
    for (int i = 0; i < 3; ++i) BenchReads(path, total);
    unlink(path.c_str());
    return;
  }
  BenchRawWrite(src, path, total, /*direct=*/false);
  AtomicFileWriter::Options opts;
  BenchAtomic(src, path, total, opts, "AtomicFileWriter direct (defaults), 64 MiB writes",
              64 * kMiB);
  BenchAtomic(src, path, total, opts, "AtomicFileWriter direct (defaults), 1 GiB writes",
              1024 * kMiB);
  opts.direct_io = false;
  BenchAtomic(src, path, total, opts, "AtomicFileWriter buffered, 64 MiB writes", 64 * kMiB);
  BenchAtomic(src, path, total, opts, "AtomicFileWriter buffered, 64 KiB writes", 64 << 10);
  if (absl::GetFlag(FLAGS_sweep)) {
    for (size_t mib : {2, 8, 32}) {
      for (int buffers : {2, 3}) {
        AtomicFileWriter::Options o;
        o.buffer_bytes = mib * kMiB;
        o.buffers = buffers;
        BenchAtomic(src, path, total, o,
                    absl::StrCat("AtomicFileWriter direct, ", mib, " MiB x ", buffers,
                                 " buffers"),
                    64 * kMiB);
      }
    }
  }
  if (absl::GetFlag(FLAGS_reads)) BenchReads(path, total);
  unlink(path.c_str());
}

}  // namespace
}  // namespace fabric

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  fabric::Run();
  return 0;
}
