// ZipWriter against real readers: our ZipReader, Python's zipfile and
// torch.load. argv[1] is the Python interpreter with torch.
#include "checkpoint/zip_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/atomic_file_writer.h"
#include "checkpoint/byte_sink.h"
#include "checkpoint/file_reader.h"
#include "checkpoint/test_python.h"
#include "checkpoint/zip_reader.h"
#include "gtest/gtest.h"

namespace fabric {
namespace {

std::string g_python;

using testing::TmpDir;

int RunPython(const std::string& script, const std::vector<std::string>& args, std::string* out) {
  return testing::RunPythonScript(g_python, script, args, out);
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

// pickle.dumps({'a': 1}, protocol=2)
const char kPickleA1[] = "\x80\x02}q\x00X\x01\x00\x00\x00" "aq\x01K\x01s.";
const size_t kPickleA1Size = sizeof(kPickleA1) - 1;

// Writes the records torch.load needs around `body`.
absl::Status WriteTorchRecords(ZipWriter& zip, bool streamed_pickle) {
  if (streamed_pickle) {
    FABRIC_RETURN_IF_ERROR(zip.BeginRecord("data.pkl", kPickleA1Size));
    for (size_t i = 0; i < kPickleA1Size; i += 5) {
      FABRIC_RETURN_IF_ERROR(
          zip.AppendRecordData(kPickleA1 + i, std::min<size_t>(5, kPickleA1Size - i)));
    }
    FABRIC_RETURN_IF_ERROR(zip.EndRecord());
  } else {
    FABRIC_RETURN_IF_ERROR(zip.WriteRecord("data.pkl", kPickleA1, kPickleA1Size));
  }
  FABRIC_RETURN_IF_ERROR(zip.WriteRecord("byteorder", "little", 6));
  return zip.WriteRecord("version", "3\n", 2);
}

const char kCheckTorchLoadA1[] = R"(
import sys, zipfile, torch
p = sys.argv[1]
z = zipfile.ZipFile(p)
assert z.testzip() is None, "bad CRC"
for mmap in (False, True):
    d = torch.load(p, mmap=mmap, weights_only=True)
    assert d == {'a': 1}, d
print("OK", len(z.namelist()))
)";

TEST(ZipWriterTest, ManyRecordsAlignedAndReadableByPythonAndUs) {
  const std::string path = TmpDir() + "/many.zip";
  std::vector<std::pair<std::string, std::string>> records;
  for (int i = 0; i < 40; ++i) {
    records.emplace_back(absl::StrCat("data/", i), Pattern((i * 7919) % 5000 + (i == 3 ? 0 : 1), i));
  }
  records.emplace_back("data/big", Pattern((3 << 20) + 5, 99));
  records.emplace_back("a/long/record/name/" + std::string(200, 'n'), "x");
  records.emplace_back("empty", "");
  {
    auto file = AtomicFileWriter::Create(path);
    ASSERT_TRUE(file.ok());
    ZipWriter zip(file->get(), "many");
    for (size_t i = 0; i < records.size(); ++i) {
      const auto& [name, data] = records[i];
      if (i % 3 == 1) {
        // Streamed in pieces, CRC in a data descriptor.
        ASSERT_TRUE(zip.BeginRecord(name, data.size()).ok());
        for (size_t at = 0; at < data.size(); at += 1000) {
          ASSERT_TRUE(zip.AppendRecordData(data.data() + at,
                                           std::min<size_t>(1000, data.size() - at))
                          .ok());
        }
        ASSERT_TRUE(zip.EndRecord().ok());
      } else {
        ASSERT_TRUE(zip.WriteRecord(name, data.data(), data.size()).ok());
      }
    }
    ASSERT_TRUE(zip.Finish().ok());
    EXPECT_EQ(zip.bytes_written(), (*file)->position());
    ASSERT_TRUE((*file)->Commit().ok());
  }

  auto file = FileReader::Open(path);
  ASSERT_TRUE(file.ok());
  auto zip = ZipReader::Open(*file);
  ASSERT_TRUE(zip.ok()) << zip.status();
  EXPECT_EQ((*zip)->archive_name(), "many");
  ASSERT_EQ((*zip)->entries().size(), records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    const auto& [name, data] = records[i];
    const ZipReader::Entry& e = (*zip)->entries()[i];
    EXPECT_EQ(e.name, name);
    EXPECT_EQ(e.data_offset % 64, 0u) << name;
    EXPECT_EQ(e.size, data.size());
    auto got = (*zip)->ReadRecord(name);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(*got == data) << name;
    EXPECT_TRUE((*zip)->VerifyCrc(name).ok()) << name;
  }

  std::string out;
  const int rc = RunPython(R"(
import sys, zipfile, struct
z = zipfile.ZipFile(sys.argv[1])
assert z.testzip() is None, "bad CRC"
f = open(sys.argv[1], 'rb')
for i in z.infolist():
    f.seek(i.header_offset)
    h = f.read(30)
    assert h[:4] == b'PK\x03\x04'
    n, e = struct.unpack('<HH', h[26:30])
    start = i.header_offset + 30 + n + e
    assert start % 64 == 0, (i.filename, start)
    assert i.compress_type == zipfile.ZIP_STORED
    assert i.filename.startswith('many/'), i.filename
print("OK", len(z.infolist()), sum(len(z.read(i)) for i in z.infolist()))
)",
                           {path}, &out);
  size_t total = 0;
  for (const auto& r : records) total += r.second.size();
  EXPECT_EQ(rc, 0) << out;
  EXPECT_TRUE(absl::StrContains(out, absl::StrCat("OK ", records.size(), " ", total))) << out;
}

TEST(ZipWriterTest, TorchLoadsHandMadeArchive) {
  for (bool streamed : {false, true}) {
    const std::string path = absl::StrCat(TmpDir(), "/hand", streamed, ".pt");
    auto file = AtomicFileWriter::Create(path);
    ASSERT_TRUE(file.ok());
    ZipWriter zip(file->get(), absl::StrCat("hand", streamed));
    ASSERT_TRUE(WriteTorchRecords(zip, streamed).ok());
    ASSERT_TRUE(zip.Finish().ok());
    ASSERT_TRUE((*file)->Commit().ok());
    std::string out;
    EXPECT_EQ(RunPython(kCheckTorchLoadA1, {path}, &out), 0) << out;
    EXPECT_TRUE(absl::StrContains(out, "OK 3")) << out;
  }
}

TEST(ZipWriterTest, ForcedZip64IsReadByPythonTorchAndUs) {
  const std::string path = TmpDir() + "/zip64.pt";
  auto file = AtomicFileWriter::Create(path);
  ASSERT_TRUE(file.ok());
  ZipWriter::Options opts;
  opts.force_zip64 = true;
  ZipWriter zip(file->get(), "zip64", opts);
  ASSERT_TRUE(WriteTorchRecords(zip, /*streamed_pickle=*/true).ok());
  const std::string blob = Pattern(100000, 3);
  ASSERT_TRUE(zip.BeginRecord("blob", blob.size()).ok());
  ASSERT_TRUE(zip.AppendRecordData(blob.data(), blob.size()).ok());
  ASSERT_TRUE(zip.EndRecord().ok());
  ASSERT_TRUE(zip.Finish().ok());
  ASSERT_TRUE((*file)->Commit().ok());

  std::string out;
  EXPECT_EQ(RunPython(kCheckTorchLoadA1, {path}, &out), 0) << out;
  EXPECT_TRUE(absl::StrContains(out, "OK 4")) << out;

  auto reader = FileReader::Open(path);
  ASSERT_TRUE(reader.ok());
  auto z = ZipReader::Open(*reader);
  ASSERT_TRUE(z.ok()) << z.status();
  auto got = (*z)->ReadRecord("blob");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(*got == blob);
  EXPECT_TRUE((*z)->VerifyCrc("blob").ok());
  EXPECT_EQ((*z)->Find("blob")->data_offset % 64, 0u);
}

TEST(ZipWriterTest, MoreThan65535RecordsUseZip64) {
  const std::string path = TmpDir() + "/lots.pt";
  constexpr int kExtra = 70000;
  {
    auto file = AtomicFileWriter::Create(path);
    ASSERT_TRUE(file.ok());
    ZipWriter zip(file->get(), "lots");
    ASSERT_TRUE(WriteTorchRecords(zip, false).ok());
    for (int i = 0; i < kExtra; ++i) {
      const std::string v = std::to_string(i);
      ASSERT_TRUE(zip.WriteRecord(absl::StrCat("r/", i), v.data(), v.size()).ok());
    }
    ASSERT_TRUE(zip.Finish().ok());
    ASSERT_TRUE((*file)->Commit().ok());
  }
  std::string out;
  EXPECT_EQ(RunPython(kCheckTorchLoadA1, {path}, &out), 0) << out;
  EXPECT_TRUE(absl::StrContains(out, absl::StrCat("OK ", kExtra + 3))) << out;

  auto reader = FileReader::Open(path);
  ASSERT_TRUE(reader.ok());
  auto z = ZipReader::Open(*reader);
  ASSERT_TRUE(z.ok()) << z.status();
  EXPECT_EQ((*z)->entries().size(), static_cast<size_t>(kExtra + 3));
  auto v = (*z)->ReadRecord("r/69999");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, "69999");
}

// Python torch.save -> our reader -> our writer (tensor data streamed in
// pieces) -> Python torch.load: the tensors come back equal.
TEST(ZipWriterTest, RewritesPythonCheckpointThatTorchLoads) {
  const std::string src = TmpDir() + "/py_src.pt";
  const std::string dst = TmpDir() + "/rewritten.pt";
  std::string out;
  ASSERT_EQ(RunPython(R"(
import sys, torch
torch.save({'w': torch.arange(3000, dtype=torch.float32).reshape(30, 100),
            'b': torch.tensor([1, -2, 3], dtype=torch.int64), 'step': 7}, sys.argv[1])
)",
                      {src}, &out),
            0)
      << out;
  auto reader = FileReader::Open(src);
  ASSERT_TRUE(reader.ok());
  auto in = ZipReader::Open(*reader);
  ASSERT_TRUE(in.ok()) << in.status();
  {
    auto file = AtomicFileWriter::Create(dst);
    ASSERT_TRUE(file.ok());
    ZipWriter zip(file->get(), "rewritten");
    for (const ZipReader::Entry& e : (*in)->entries()) {
      auto data = (*in)->ReadRecord(e.name);
      ASSERT_TRUE(data.ok()) << data.status();
      if (absl::StartsWith(e.name, "data/")) {
        ASSERT_TRUE(zip.BeginRecord(e.name, data->size()).ok());
        for (size_t at = 0; at < data->size(); at += 777) {
          ASSERT_TRUE(
              zip.AppendRecordData(data->data() + at, std::min<size_t>(777, data->size() - at))
                  .ok());
        }
        ASSERT_TRUE(zip.EndRecord().ok());
      } else {
        ASSERT_TRUE(zip.WriteRecord(e.name, data->data(), data->size()).ok());
      }
    }
    ASSERT_TRUE(zip.Finish().ok());
    ASSERT_TRUE((*file)->Commit().ok());
  }
  ASSERT_EQ(RunPython(R"(
import sys, zipfile, torch
assert zipfile.ZipFile(sys.argv[1]).testzip() is None
for mmap in (False, True):
    d = torch.load(sys.argv[1], mmap=mmap)
    assert torch.equal(d['w'], torch.arange(3000, dtype=torch.float32).reshape(30, 100))
    assert torch.equal(d['b'], torch.tensor([1, -2, 3]))
    assert d['step'] == 7
print("OK")
)",
                      {dst}, &out),
            0)
      << out;
}

// A sink that leaves holes for runs of zeros, so a >4 GiB archive costs no
// disk space.
class SparseFileSink : public ByteSink {
 public:
  explicit SparseFileSink(const std::string& path)
      : fd_(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644)) {}
  ~SparseFileSink() override {
    if (fd_ >= 0) close(fd_);
  }
  absl::Status Write(const void* data, size_t n) override {
    const char* p = static_cast<const char*>(data);
    const bool zeros = n > 0 && p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0;
    if (!zeros && pwrite(fd_, p, n, static_cast<off_t>(pos_)) != static_cast<ssize_t>(n)) {
      return absl::InternalError("pwrite failed");
    }
    pos_ += n;
    return absl::OkStatus();
  }
  uint64_t position() const override { return pos_; }
  absl::Status Close() {
    const bool ok = ftruncate(fd_, static_cast<off_t>(pos_)) == 0 && close(fd_) == 0;
    fd_ = -1;
    return ok ? absl::OkStatus() : absl::InternalError("close failed");
  }

 private:
  int fd_;
  uint64_t pos_ = 0;
};

TEST(ZipWriterTest, RecordsBeyond4GiB) {
  const std::string path = TmpDir() + "/huge.zip";
  const uint64_t big = (uint64_t{4} << 30) + 4096 + 3;  // size > 0xFFFFFFFF
  const std::string small = Pattern(1000, 8);
  {
    SparseFileSink sink(path);
    ZipWriter zip(&sink, "huge");
    ASSERT_TRUE(zip.WriteRecord("first", small.data(), small.size()).ok());
    ASSERT_TRUE(zip.BeginRecord("big", big).ok());
    std::vector<char> zeros(64 << 20, 0);
    for (uint64_t done = 0; done < big;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), big - done));
      ASSERT_TRUE(zip.AppendRecordData(zeros.data(), n).ok());
      done += n;
    }
    ASSERT_TRUE(zip.EndRecord().ok());
    ASSERT_TRUE(zip.WriteRecord("after", small.data(), small.size()).ok());  // offset > 4 GiB
    ASSERT_TRUE(zip.Finish().ok());
    ASSERT_TRUE(sink.Close().ok());
  }
  auto file = FileReader::Open(path);
  ASSERT_TRUE(file.ok());
  auto z = ZipReader::Open(*file);
  ASSERT_TRUE(z.ok()) << z.status();
  ASSERT_EQ((*z)->entries().size(), 3u);
  EXPECT_EQ((*z)->Find("big")->size, big);
  const ZipReader::Entry* after = (*z)->Find("after");
  ASSERT_NE(after, nullptr);
  EXPECT_GT(after->data_offset, uint64_t{1} << 32);
  EXPECT_EQ(after->data_offset % 64, 0u);
  auto got = (*z)->ReadRecord("after");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, small);
  EXPECT_TRUE((*z)->VerifyCrc("big").ok());

  std::string out;
  ASSERT_EQ(RunPython(R"(
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
i = {x.filename: x for x in z.infolist()}
assert i['huge/big'].file_size == int(sys.argv[2]), i['huge/big'].file_size
assert i['huge/after'].header_offset > 2**32
assert z.read('huge/after') == z.read('huge/first')   # CRC checked on read
with z.open('huge/big') as f:   # the zip64 record's CRC, checked over 4 GiB of zeros
    while f.read(1 << 26): pass
print("OK")
)",
                      {path, std::to_string(big)}, &out),
            0)
      << out;
  unlink(path.c_str());
}

TEST(ZipWriterTest, EmbeddedAtAnOffset) {
  const std::string path = TmpDir() + "/embedded.bin";
  uint64_t start = 0, length = 0;
  {
    auto file = AtomicFileWriter::Create(path);
    ASSERT_TRUE(file.ok());
    const std::string junk(1001, 'j');
    ASSERT_TRUE((*file)->Write(junk.data(), junk.size()).ok());
    start = (*file)->position();
    ZipWriter zip(file->get(), "inner");
    ASSERT_TRUE(zip.WriteRecord("x", "hello", 5).ok());
    ASSERT_TRUE(zip.Finish().ok());
    length = zip.bytes_written();
    ASSERT_TRUE((*file)->Write(junk.data(), junk.size()).ok());  // another archive's bytes
    ASSERT_TRUE((*file)->Commit().ok());
  }
  auto file = FileReader::Open(path);
  ASSERT_TRUE(file.ok());
  auto z = ZipReader::Open(*file, start, length);
  ASSERT_TRUE(z.ok()) << z.status();
  const ZipReader::Entry* x = (*z)->Find("x");
  ASSERT_NE(x, nullptr);
  EXPECT_EQ((x->data_offset - start) % 64, 0u);  // aligned within the archive
  EXPECT_EQ(*(*z)->ReadRecord("x"), "hello");
}

// A memory sink for the misuse tests.
class StringSink : public ByteSink {
 public:
  absl::Status Write(const void* data, size_t n) override {
    s.append(static_cast<const char*>(data), n);
    return absl::OkStatus();
  }
  uint64_t position() const override { return s.size(); }
  std::string s;
};

TEST(ZipWriterTest, MisuseIsReported) {
  StringSink sink;
  ZipWriter zip(&sink, "m");
  ASSERT_TRUE(zip.WriteRecord("a", "1", 1).ok());
  EXPECT_EQ(zip.WriteRecord("a", "1", 1).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_FALSE(zip.WriteRecord("", "1", 1).ok());
  EXPECT_FALSE(zip.AppendRecordData("x", 1).ok());
  EXPECT_FALSE(zip.EndRecord().ok());
  ASSERT_TRUE(zip.BeginRecord("b", 4).ok());
  EXPECT_FALSE(zip.WriteRecord("c", "1", 1).ok());  // b still open
  EXPECT_FALSE(zip.Finish().ok());
  ASSERT_TRUE(zip.AppendRecordData("xy", 2).ok());
  absl::Status s = zip.AppendRecordData("xyz", 3);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "m/b")) << s;
  EXPECT_FALSE(zip.EndRecord().ok());  // 2 of 4 bytes
  ASSERT_TRUE(zip.AppendRecordData("zw", 2).ok());
  ASSERT_TRUE(zip.EndRecord().ok());
  ASSERT_TRUE(zip.Finish().ok());
  EXPECT_EQ(zip.WriteRecord("d", "1", 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(zip.bytes_written(), sink.s.size());

  StringSink bad_sink;
  ZipWriter bad(&bad_sink, "");
  EXPECT_FALSE(bad.WriteRecord("a", "1", 1).ok());
}

}  // namespace
}  // namespace fabric

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <python>\n", argv[0]);
    return 2;
  }
  fabric::g_python = argv[1];
  return RUN_ALL_TESTS();
}
