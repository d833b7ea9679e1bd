#include "checkpoint/atomic_file_writer.h"
#include "checkpoint/crc32.h"
#include "checkpoint/file_reader.h"
#include "checkpoint/fs_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace fabric {
namespace {

std::string TestDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string dir = absl::StrCat(tmp ? tmp : "/tmp", "/file_io_test_", name);
  EXPECT_TRUE(EnsureDirectory(dir).ok());
  return dir;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  closedir(d);
  return out;
}

std::string Pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

// Writes pieces of awkward sizes (tiny, unaligned, bigger than a buffer) and
// checks the committed file byte for byte.
void WriteAndCheck(const std::string& dir, AtomicFileWriter::Options opts) {
  const std::string path = dir + "/out.bin";
  const std::string data = Pattern((size_t{5} << 20) + 12345, 1);
  auto w = AtomicFileWriter::Create(path, opts);
  ASSERT_TRUE(w.ok()) << w.status();
  size_t done = 0;
  const size_t pieces[] = {1, 100, 4095, 4097, 65536, 3 << 20, 7, 300000};
  for (size_t i = 0; done < data.size(); ++i) {
    const size_t n = std::min(pieces[i % 8], data.size() - done);
    ASSERT_TRUE((*w)->Write(data.data() + done, n).ok());
    done += n;
    EXPECT_EQ((*w)->position(), done);
  }
  EXPECT_TRUE(Exists((*w)->temp_path()));
  EXPECT_FALSE(Exists(path));
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_FALSE(Exists((*w)->temp_path()));
  EXPECT_EQ(ReadFile(path), data);
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"out.bin"});
  // Nothing after Commit.
  EXPECT_EQ((*w)->Write("x", 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*w)->Commit().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(AtomicFileWriterTest, DirectIoRoundTrip) {
  AtomicFileWriter::Options opts;
  opts.buffer_bytes = 64 << 10;  // many buffer hand-offs
  opts.buffers = 2;
  WriteAndCheck(TestDir("direct"), opts);
}

TEST(AtomicFileWriterTest, DirectIoDefaultOptionsUsesODirect) {
  const std::string dir = TestDir("direct_default");
  auto w = AtomicFileWriter::Create(dir + "/f");
  ASSERT_TRUE(w.ok());
  // TEST_TMPDIR is on a disk filesystem, which supports O_DIRECT.
  EXPECT_TRUE((*w)->direct_io());
  const std::string data = Pattern(20 << 20, 2);  // one big write, many buffers
  ASSERT_TRUE((*w)->Write(data.data(), data.size()).ok());
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(ReadFile(dir + "/f"), data);
}

TEST(AtomicFileWriterTest, BufferedRoundTrip) {
  AtomicFileWriter::Options opts;
  opts.direct_io = false;
  opts.buffer_bytes = 1 << 20;
  WriteAndCheck(TestDir("buffered"), opts);
}

TEST(AtomicFileWriterTest, EmptyFile) {
  const std::string dir = TestDir("empty");
  auto w = AtomicFileWriter::Create(dir + "/e");
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_TRUE(Exists(dir + "/e"));
  EXPECT_EQ(ReadFile(dir + "/e"), "");
}

TEST(AtomicFileWriterTest, TempFileNameAndSameDirectory) {
  const std::string dir = TestDir("tempname");
  auto w = AtomicFileWriter::Create(dir + "/model.pt");
  ASSERT_TRUE(w.ok());
  const std::string prefix = absl::StrCat(dir, "/.model.pt.tmp.", getpid(), ".");
  EXPECT_TRUE(absl::StartsWith((*w)->temp_path(), prefix)) << (*w)->temp_path();
}

TEST(AtomicFileWriterTest, AbortRemovesTempAndKeepsOldFile) {
  const std::string dir = TestDir("abort");
  const std::string path = dir + "/ckpt";
  ASSERT_TRUE(AtomicWriteFile(path, "old contents").ok());
  {
    auto w = AtomicFileWriter::Create(path);
    ASSERT_TRUE(w.ok());
    const std::string data = Pattern(10 << 20, 3);
    ASSERT_TRUE((*w)->Write(data.data(), data.size()).ok());
    EXPECT_TRUE(Exists((*w)->temp_path()));
    (*w)->Abort();
    EXPECT_FALSE(Exists((*w)->temp_path()));
    (*w)->Abort();  // idempotent
    EXPECT_EQ((*w)->Commit().code(), absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_EQ(ReadFile(path), "old contents");
  {
    // Destroyed without Commit: same as Abort.
    auto w = AtomicFileWriter::Create(path);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Write("new", 3).ok());
  }
  EXPECT_EQ(ReadFile(path), "old contents");
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"ckpt"});
}

TEST(AtomicFileWriterTest, CommitReplacesOldFile) {
  const std::string dir = TestDir("replace");
  const std::string path = dir + "/ckpt";
  ASSERT_TRUE(AtomicWriteFile(path, "old contents, longer than the new").ok());
  ASSERT_TRUE(AtomicWriteFile(path, Pattern(64 << 20, 5)).ok());
  EXPECT_TRUE(ReadFile(path) == Pattern(64 << 20, 5));
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"ckpt"});
}

// Replacing a big file frees the old one in the background (its blocks can
// be slow to free) under a hidden second name; names left by dead processes
// are cleaned up by a later replace, those of live processes are not.
TEST(AtomicFileWriterTest, ReplacedFileIsFreedInTheBackground) {
  const std::string dir = TestDir("retire");
  const std::string path = dir + "/ckpt.pt";
  ASSERT_TRUE(AtomicWriteFile(path, Pattern(64 << 20, 3)).ok());
  const pid_t child = fork();
  if (child == 0) _exit(0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);  // a pid that is certainly dead
  const std::string stale = absl::StrCat(".ckpt.pt.retired.", child, ".0123456789abcdef");
  const std::string live = ".ckpt.pt.retired.1.0123456789abcdef";  // init never dies
  ASSERT_TRUE(AtomicWriteFile(dir + "/" + stale, "x").ok());
  ASSERT_TRUE(AtomicWriteFile(dir + "/" + live, "x").ok());

  ASSERT_TRUE(AtomicWriteFile(path, Pattern(64 << 20, 5)).ok());
  EXPECT_TRUE(ReadFile(path) == Pattern(64 << 20, 5));
  std::vector<std::string> left;
  for (int i = 0; i < 500; ++i) {  // up to 5 s for the background thread
    left = ListDir(dir);
    std::sort(left.begin(), left.end());
    if (left == std::vector<std::string>{live, "ckpt.pt"}) break;
    usleep(10000);
  }
  EXPECT_EQ(left, (std::vector<std::string>{live, "ckpt.pt"}));

  // A child forked after the background thread started frees its own
  // replaced files and still exits (its exit hook waits for them).
  const pid_t saver = fork();
  if (saver == 0) {
    alarm(20);  // a hang fails the test instead of blocking it
    const bool ok = AtomicWriteFile(path, Pattern(64 << 20, 4)).ok();
    std::exit(ok ? 0 : 1);  // runs the exit hooks
  }
  int status = 0;
  ASSERT_EQ(waitpid(saver, &status, 0), saver);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  left = ListDir(dir);
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{live, "ckpt.pt"}));
  EXPECT_TRUE(ReadFile(path) == Pattern(64 << 20, 4));
}

TEST(AtomicFileWriterTest, FailedWriteKeepsOldFileAndNamesPath) {
  const std::string dir = TestDir("efbig");
  const std::string path = dir + "/ckpt";
  ASSERT_TRUE(AtomicWriteFile(path, "old").ok());
  // A file size limit makes the kernel fail writes past 1 MiB (EFBIG), as a
  // full disk would (ENOSPC).
  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  signal(SIGXFSZ, SIG_IGN);
  struct rlimit limit = old_limit;
  limit.rlim_cur = 1 << 20;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  for (bool direct : {true, false}) {
    AtomicFileWriter::Options opts;
    opts.direct_io = direct;
    opts.buffer_bytes = 256 << 10;
    auto w = AtomicFileWriter::Create(path, opts);
    ASSERT_TRUE(w.ok());
    const std::string data = Pattern(4 << 20, 4);
    absl::Status s = (*w)->Write(data.data(), data.size());
    if (!s.ok()) {
      // The writer stays failed.
      EXPECT_FALSE((*w)->Write("x", 1).ok());
    }
    // Commit reports the error (a failed write, or the failed flush of the
    // last buffer) and removes the temp file.
    absl::Status c = (*w)->Commit();
    EXPECT_FALSE(c.ok());
    if (s.ok()) s = c;
    EXPECT_TRUE(absl::StrContains(s.message(), path)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "bytes were written")) << s;
    EXPECT_FALSE(Exists((*w)->temp_path()));
  }
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  EXPECT_EQ(ReadFile(path), "old");
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"ckpt"});
}

TEST(AtomicFileWriterTest, FailedRenameRemovesTemp) {
  const std::string dir = TestDir("rename");
  // The destination is a non-empty directory: rename fails at Commit.
  const std::string path = dir + "/target";
  ASSERT_TRUE(EnsureDirectory(path + "/inner").ok());
  auto w = AtomicFileWriter::Create(path);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Write("data", 4).ok());
  absl::Status s = (*w)->Commit();
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), path)) << s;
  EXPECT_FALSE(Exists((*w)->temp_path()));
  EXPECT_TRUE(Exists(path + "/inner"));
}

TEST(AtomicFileWriterTest, MissingDirectoryIsAClearError) {
  const std::string dir = TestDir("missing");
  const std::string path = dir + "/no/such/dir/file.pt";
  auto w = AtomicFileWriter::Create(path);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(w.status().message(), path)) << w.status();
  EXPECT_TRUE(absl::StrContains(w.status().message(), "does not exist")) << w.status();
}

TEST(AtomicFileWriterTest, TmpfsFallsBackOrUsesDirectIo) {
  struct stat st;
  if (stat("/dev/shm", &st) != 0 || !S_ISDIR(st.st_mode)) GTEST_SKIP() << "no /dev/shm";
  const std::string dir = absl::StrCat("/dev/shm/fabric_file_io_test_", getpid());
  ASSERT_TRUE(EnsureDirectory(dir).ok());
  // Does this kernel's tmpfs take O_DIRECT (Linux >= 6.6 does)?
  const std::string probe = dir + "/probe";
  const int fd = open(probe.c_str(), O_WRONLY | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  const bool tmpfs_direct = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_DIRECT) == 0;
  close(fd);
  unlink(probe.c_str());

  const std::string path = dir + "/f";
  auto w = AtomicFileWriter::Create(path);  // direct_io requested
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->direct_io(), tmpfs_direct);
  const std::string data = Pattern((3 << 20) + 17, 5);
  ASSERT_TRUE((*w)->Write(data.data(), data.size()).ok());
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(ReadFile(path), data);
  unlink(path.c_str());
  rmdir(dir.c_str());
}

TEST(FileReaderTest, ReadsAndReportsTruncation) {
  const std::string dir = TestDir("reader");
  const std::string path = dir + "/f";
  const std::string data = Pattern(100000, 6);
  ASSERT_TRUE(AtomicWriteFile(path, data).ok());
  auto r = FileReader::Open(path);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)->size(), data.size());
  EXPECT_EQ((*r)->path(), path);
  std::string buf(1000, '\0');
  ASSERT_TRUE((*r)->ReadAt(5000, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf, data.substr(5000, 1000));
  ASSERT_TRUE((*r)->ReadAt(data.size(), buf.data(), 0).ok());

  absl::Status s = (*r)->ReadAt(99500, buf.data(), 1000);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(absl::StrContains(s.message(), "truncated file")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), path)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "99500")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "100000")) << s;
  EXPECT_FALSE((*r)->ReadAt(~uint64_t{0} - 10, buf.data(), 100).ok());  // no overflow

  auto missing = FileReader::Open(dir + "/nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), dir + "/nope"));
  EXPECT_FALSE(FileReader::Open(dir).ok());  // a directory
}

TEST(FileReaderTest, BigAndConcurrentReads) {
  const std::string dir = TestDir("reader_big");
  const std::string path = dir + "/f";
  const std::string data = Pattern((100 << 20) + 333, 7);  // takes the parallel path
  ASSERT_TRUE(AtomicWriteFile(path, data).ok());
  auto r = FileReader::Open(path);
  ASSERT_TRUE(r.ok());
  std::string all(data.size(), '\0');
  ASSERT_TRUE((*r)->ReadAt(0, all.data(), all.size()).ok());
  EXPECT_TRUE(all == data);

  std::vector<std::thread> threads;
  std::vector<int> ok(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::string buf(1 << 20, '\0');
      bool good = true;
      for (int i = 0; i < 20; ++i) {
        const uint64_t at = (static_cast<uint64_t>(t) * 7919 + i * 1048573ull) % (data.size() - buf.size());
        good = good && (*r)->ReadAt(at, buf.data(), buf.size()).ok() &&
               buf.compare(0, buf.size(), data, at, buf.size()) == 0;
      }
      ok[t] = good;
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 8; ++t) EXPECT_TRUE(ok[t]) << "thread " << t;
}

TEST(FileReaderTest, ReadBatchScattersRecordsInAnyOrder) {
  const std::string dir = TestDir("reader_batch");
  const std::string path = dir + "/f";
  const std::string data = Pattern((40 << 20) + 77, 8);
  ASSERT_TRUE(AtomicWriteFile(path, data).ok());
  auto r = FileReader::Open(path);
  ASSERT_TRUE(r.ok());
  // Records as a torch.save file has them: small ones a header apart, gaps
  // too large to join, one record bigger than a read piece, one empty, two
  // reading the same bytes, and an unsorted order.
  struct Want {
    uint64_t offset;
    size_t n;
  };
  std::vector<Want> wants;
  uint64_t at = 100;
  for (int i = 0; i < 1500; ++i) {  // more than one preadv's iovecs
    const size_t n = 64 + (i * 37) % 5000;
    wants.push_back({at, n});
    at += n + (i % 3 == 0 ? 0 : 90);
  }
  wants.push_back({at + (1 << 20), 0});
  wants.push_back({at + (1 << 20), 3000});          // past the joining distance
  wants.push_back({at + (2 << 20), (20 << 20) + 5});  // split over threads
  wants.push_back({500, 4000});                     // overlaps earlier records
  std::vector<std::string> out(wants.size());
  std::vector<ReadRequest> requests;
  for (size_t i = 0; i < wants.size(); ++i) {
    out[i].assign(wants[i].n, '\0');
    requests.push_back({wants[i].offset, out[i].data(), wants[i].n});
  }
  std::reverse(requests.begin(), requests.end());
  ASSERT_TRUE((*r)->ReadBatch(requests).ok());
  for (size_t i = 0; i < wants.size(); ++i) {
    ASSERT_TRUE(out[i] == data.substr(wants[i].offset, wants[i].n)) << "request " << i;
  }

  // A request past the end fails before anything is read, naming the file.
  std::string buf(100, 'x');
  absl::Status s = (*r)->ReadBatch({{0, buf.data(), 50}, {data.size() - 10, buf.data() + 50, 20}});
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(absl::StrContains(s.message(), path)) << s;
  EXPECT_EQ(buf, std::string(100, 'x'));
  EXPECT_TRUE((*r)->ReadBatch({}).ok());
}

// Pages of [0, n) of path that the page cache holds, or -1 where the kernel
// cannot say (cachestat(2), Linux 6.5).
int64_t CachedPages(const std::string& path, uint64_t n) {
  const int fd = open(path.c_str(), O_RDONLY);
  struct {
    uint64_t off, len;
  } range{0, n};
  uint64_t stat[5] = {};
  const long r = syscall(451 /* cachestat */, fd, &range, stat, 0);
  close(fd);
  return r == 0 ? static_cast<int64_t>(stat[0]) : -1;
}

void DropCache(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY);
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}

// Cold reads whose destination shares the file offset's 4 KiB phase go
// around the page cache (O_DIRECT); the unaligned head and tail, misaligned
// destinations and cached bytes go through it. Every way gives the file's
// bytes and their CRC.
TEST(FileReaderTest, ColdAlignedReadsSkipThePageCache) {
  const std::string dir = TestDir("reader_direct");
  const std::string path = dir + "/f";
  const std::string data = Pattern((24 << 20) + 4321, 9);
  ASSERT_TRUE(AtomicWriteFile(path, data).ok());
  auto r = FileReader::Open(path);
  ASSERT_TRUE(r.ok());
  void* mem = nullptr;
  ASSERT_EQ(posix_memalign(&mem, 4096, data.size() + 8192), 0);
  char* const base = static_cast<char*>(mem);
  struct Case {
    uint64_t offset;
    size_t n;
    size_t dst_phase;  // of dst against the offset, mod 4 KiB
  };
  // Aligned, unaligned head and tail, to the end of the file, one whole
  // piece split over threads, a misaligned destination.
  const Case cases[] = {{0, 8 << 20, 0},         {4096 * 3 + 100, (5 << 20) + 17, 0},
                        {(8 << 20) + 7, data.size() - (8 << 20) - 7, 0},
                        {0, data.size(), 0},     {1 << 20, 3 << 20, 64}};
  for (const Case& c : cases) {
    for (bool direct : {true, false}) {
      SetDirectReads(direct);
      DropCache(path);
      char* dst = base + (c.offset % 4096 + c.dst_phase) % 4096;
      std::memset(dst, 0, c.n);
      std::vector<uint32_t> crcs;
      ASSERT_TRUE((*r)->ReadBatch({{c.offset, dst, c.n}}, &crcs).ok());
      SCOPED_TRACE(absl::StrCat("offset ", c.offset, " n ", c.n, " phase ", c.dst_phase,
                                direct ? " direct" : " buffered"));
      ASSERT_TRUE(std::string(dst, c.n) == data.substr(c.offset, c.n));
      EXPECT_EQ(crcs[0], Crc32(0, data.data() + c.offset, c.n));
      const int64_t cached = CachedPages(path, data.size());
      if (cached < 0) continue;  // no cachestat: the reads were buffered
      const int64_t pages = static_cast<int64_t>(c.n / 4096);
      if (direct && c.dst_phase == 0) {
        EXPECT_LT(cached, pages / 8) << "an aligned cold read filled the page cache";
      } else {
        EXPECT_GE(cached, pages) << "a buffered read left no pages in the cache";
      }
    }
  }
  // Cached bytes are read from the cache even where direct reads are on.
  SetDirectReads(true);
  std::string warm(data.size(), '\0');
  ASSERT_TRUE((*r)->ReadAt(0, warm.data(), warm.size()).ok());  // buffered: misaligned
  ASSERT_TRUE((*r)->ReadAt(0, base, data.size()).ok());
  EXPECT_TRUE(std::string(base, data.size()) == data);
  free(mem);
}

TEST(HelpersTest, EnsureDirectoryAndFsync) {
  const std::string dir = TestDir("helpers");
  const std::string nested = dir + "/a/b/c";
  ASSERT_TRUE(EnsureDirectory(nested).ok());
  ASSERT_TRUE(EnsureDirectory(nested).ok());  // exists already
  struct stat st;
  ASSERT_EQ(stat(nested.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_TRUE(FsyncDirectory(nested).ok());
  EXPECT_FALSE(FsyncDirectory(dir + "/nope").ok());
  ASSERT_TRUE(AtomicWriteFile(dir + "/a/file", "x").ok());
  absl::Status s = EnsureDirectory(dir + "/a/file/sub");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "not a directory")) << s;
}

}  // namespace
}  // namespace fabric
