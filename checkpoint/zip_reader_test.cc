// ZipReader on files written by Python (torch.save, zipfile) and on damaged
// files. argv[1] is the Python interpreter with torch.
#include "checkpoint/zip_reader.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <algorithm>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/atomic_file_writer.h"
#include "checkpoint/byte_sink.h"
#include "checkpoint/file_reader.h"
#include "checkpoint/test_python.h"
#include "checkpoint/zip_writer.h"
#include "gtest/gtest.h"

namespace fabric {
namespace {

std::string g_python;

using testing::TmpDir;

int RunPython(const std::string& script, const std::vector<std::string>& args, std::string* out) {
  return testing::RunPythonScript(g_python, script, args, out);
}

std::string Hex(const std::string& s) {
  std::string out;
  for (unsigned char c : s) absl::StrAppend(&out, absl::Hex(c, absl::kZeroPad2));
  return out;
}

// "key=value" lines printed by a script.
std::map<std::string, std::string> Parse(const std::string& out) {
  std::map<std::string, std::string> m;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    std::vector<std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    if (kv.size() == 2) m[kv[0]] = kv[1];
  }
  return m;
}

TEST(ZipReaderTest, ReadsPythonTorchSave) {
  const std::string path = TmpDir() + "/model.pt";
  std::string out;
  ASSERT_EQ(RunPython(R"(
import sys, zipfile, torch
t = torch.tensor([[1.5, -2.0, 3.25], [4.0, 5.5, -6.125]], dtype=torch.float32)
torch.save({'t': t, 'n': torch.arange(10, dtype=torch.int64)}, sys.argv[1])
z = zipfile.ZipFile(sys.argv[1])
print("names=" + ",".join(sorted(z.namelist())))
print("t=" + t.numpy().tobytes().hex())
print("n=" + torch.arange(10, dtype=torch.int64).numpy().tobytes().hex())
)",
                      {path}, &out),
            0)
      << out;
  auto py = Parse(out);

  auto file = FileReader::Open(path);
  ASSERT_TRUE(file.ok());
  auto z = ZipReader::Open(*file);
  ASSERT_TRUE(z.ok()) << z.status();
  EXPECT_EQ((*z)->archive_name(), "model");
  std::vector<std::string> names;
  for (const auto& e : (*z)->entries()) {
    names.push_back("model/" + e.name);
    EXPECT_EQ(e.data_offset % 64, 0u) << e.name;
    EXPECT_EQ(e.compression, 0);
    EXPECT_TRUE((*z)->VerifyCrc(e.name).ok()) << e.name;
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(absl::StrJoin(names, ","), py["names"]);

  auto pkl = (*z)->ReadRecord("data.pkl");
  ASSERT_TRUE(pkl.ok());
  ASSERT_FALSE(pkl->empty());
  EXPECT_EQ(static_cast<unsigned char>((*pkl)[0]), 0x80);  // pickle PROTO
  EXPECT_TRUE(absl::StrContains(*pkl, "_rebuild_tensor_v2"));
  EXPECT_EQ(*(*z)->ReadRecord("byteorder"), "little");

  // Storage keys: 't' is saved first, so it is data/0.
  std::string t(24, '\0');
  ASSERT_TRUE((*z)->ReadRecordInto("data/0", t.data(), t.size()).ok());
  EXPECT_EQ(Hex(t), py["t"]);
  std::string n(80, '\0');
  ASSERT_TRUE((*z)->ReadRecordInto("data/1", n.data(), n.size()).ok());
  EXPECT_EQ(Hex(n), py["n"]);

  absl::Status s = (*z)->ReadRecordInto("data/0", t.data(), 8);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "24 bytes")) << s;
  auto missing = (*z)->ReadRecord("data/9");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), path)) << missing.status();
  EXPECT_EQ((*z)->Find("data/9"), nullptr);
}

TEST(ZipReaderTest, ArchivesBackToBackInOneFile) {
  const std::string path = TmpDir() + "/packed.bin";
  std::string out;
  ASSERT_EQ(RunPython(R"(
import sys, io, torch
parts = []
for i in range(3):
    b = io.BytesIO()
    torch.save({'x': torch.full((5,), float(i))}, b)
    parts.append(b.getvalue())
with open(sys.argv[1], 'wb') as f:
    f.write(b'header' * 7)
    for i, p in enumerate(parts):
        print(f"off{i}={f.tell()}")
        print(f"len{i}={len(p)}")
        f.write(p)
)",
                      {path}, &out),
            0)
      << out;
  auto py = Parse(out);
  auto file = FileReader::Open(path);
  ASSERT_TRUE(file.ok());
  for (int i = 0; i < 3; ++i) {
    uint64_t off = 0, len = 0;
    ASSERT_TRUE(absl::SimpleAtoi(py[absl::StrCat("off", i)], &off));
    ASSERT_TRUE(absl::SimpleAtoi(py[absl::StrCat("len", i)], &len));
    auto z = ZipReader::Open(*file, off, len);
    ASSERT_TRUE(z.ok()) << z.status();
    EXPECT_EQ((*z)->archive_name(), "archive");  // torch.save to a buffer
    std::vector<float> x(5);
    ASSERT_TRUE((*z)->ReadRecordInto("data/0", x.data(), 20).ok());
    EXPECT_EQ(x[4], static_cast<float>(i));
    EXPECT_GE((*z)->Find("data/0")->data_offset, off);
    EXPECT_TRUE((*z)->VerifyCrc("data.pkl").ok());
  }
  // The last archive also opens with the default length (to the file's end).
  uint64_t off2 = 0;
  ASSERT_TRUE(absl::SimpleAtoi(py["off2"], &off2));
  EXPECT_TRUE(ZipReader::Open(*file, off2).ok());
}

TEST(ZipReaderTest, CompressedRecordIsAClearError) {
  const std::string path = TmpDir() + "/deflated.zip";
  std::string out;
  ASSERT_EQ(RunPython(R"(
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], 'w') as z:
    z.writestr('arc/stored', b'plain bytes', compress_type=zipfile.ZIP_STORED)
    z.writestr('arc/packed', b'squeeze me ' * 100, compress_type=zipfile.ZIP_DEFLATED)
)",
                      {path}, &out),
            0)
      << out;
  auto file = FileReader::Open(path);
  ASSERT_TRUE(file.ok());
  auto z = ZipReader::Open(*file);
  ASSERT_TRUE(z.ok()) << z.status();
  EXPECT_EQ(*(*z)->ReadRecord("stored"), "plain bytes");  // not 64-aligned: Python's own zip
  EXPECT_EQ((*z)->Find("packed")->compression, 8);
  auto packed = (*z)->ReadRecord("packed");
  EXPECT_EQ(packed.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(absl::StrContains(packed.status().message(), "packed")) << packed.status();
  EXPECT_TRUE(absl::StrContains(packed.status().message(), "compressed")) << packed.status();
  EXPECT_TRUE(absl::StrContains(packed.status().message(), path)) << packed.status();
}

class StringSink : public ByteSink {
 public:
  absl::Status Write(const void* data, size_t n) override {
    s.append(static_cast<const char*>(data), n);
    return absl::OkStatus();
  }
  uint64_t position() const override { return s.size(); }
  std::string s;
};

std::string SmallArchive(bool zip64) {
  StringSink sink;
  ZipWriter::Options opts;
  opts.force_zip64 = zip64;
  ZipWriter zip(&sink, "small", opts);
  EXPECT_TRUE(zip.WriteRecord("a", "alpha", 5).ok());
  EXPECT_TRUE(zip.BeginRecord("b", 4).ok());
  EXPECT_TRUE(zip.AppendRecordData("beta", 4).ok());
  EXPECT_TRUE(zip.EndRecord().ok());
  EXPECT_TRUE(zip.Finish().ok());
  return sink.s;
}

TEST(ZipReaderTest, EveryTruncationIsAnErrorNamingTheFile) {
  for (bool zip64 : {false, true}) {
    const std::string path = absl::StrCat(TmpDir(), "/small", zip64, ".zip");
    const std::string bytes = SmallArchive(zip64);
    ASSERT_TRUE(AtomicWriteFile(path, bytes).ok());
    auto file = FileReader::Open(path);
    ASSERT_TRUE(file.ok());
    ASSERT_TRUE(ZipReader::Open(*file).ok());
    for (uint64_t len = 0; len < bytes.size(); ++len) {
      auto z = ZipReader::Open(*file, 0, len);
      ASSERT_FALSE(z.ok()) << "length " << len;
      EXPECT_TRUE(absl::StrContains(z.status().message(), path)) << z.status();
    }
    // A truncated copy on disk, too.
    const std::string cut = path + ".cut";
    ASSERT_TRUE(AtomicWriteFile(cut, bytes.substr(0, bytes.size() - 30)).ok());
    auto cut_file = FileReader::Open(cut);
    ASSERT_TRUE(cut_file.ok());
    auto z = ZipReader::Open(*cut_file);
    ASSERT_FALSE(z.ok());
    EXPECT_TRUE(absl::StrContains(z.status().message(), cut)) << z.status();
    // A length past the end of the file.
    auto past = ZipReader::Open(*file, 10, bytes.size());
    EXPECT_EQ(past.status().code(), absl::StatusCode::kOutOfRange);
    EXPECT_TRUE(absl::StrContains(past.status().message(), "truncated")) << past.status();
  }
}

TEST(ZipReaderTest, NotAZipAndDamage) {
  const std::string text = TmpDir() + "/text.txt";
  ASSERT_TRUE(AtomicWriteFile(text, std::string(1000, 't')).ok());
  auto f = FileReader::Open(text);
  ASSERT_TRUE(f.ok());
  auto z = ZipReader::Open(*f);
  ASSERT_FALSE(z.ok());
  EXPECT_TRUE(absl::StrContains(z.status().message(), "not a zip archive")) << z.status();
  EXPECT_TRUE(absl::StrContains(z.status().message(), text)) << z.status();

  std::string bytes = SmallArchive(false);
  // A flipped data byte: opens, but the CRC check names the record.
  std::string flipped = bytes;
  const size_t at = flipped.find("alpha");
  ASSERT_NE(at, std::string::npos);
  flipped[at] = 'A';
  const std::string path = TmpDir() + "/flipped.zip";
  ASSERT_TRUE(AtomicWriteFile(path, flipped).ok());
  auto ff = FileReader::Open(path);
  ASSERT_TRUE(ff.ok());
  auto fz = ZipReader::Open(*ff);
  ASSERT_TRUE(fz.ok());
  absl::Status s = (*fz)->VerifyCrc("a");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(s.message(), "'a'")) << s;
  EXPECT_TRUE((*fz)->VerifyCrc("b").ok());

  // A damaged local header signature.
  std::string damaged = bytes;
  damaged[0] = 'X';
  const std::string dpath = TmpDir() + "/damaged.zip";
  ASSERT_TRUE(AtomicWriteFile(dpath, damaged).ok());
  auto df = FileReader::Open(dpath);
  ASSERT_TRUE(df.ok());
  auto dz = ZipReader::Open(*df);
  ASSERT_FALSE(dz.ok());
  EXPECT_TRUE(absl::StrContains(dz.status().message(), dpath)) << dz.status();
  EXPECT_TRUE(absl::StrContains(dz.status().message(), "local header")) << dz.status();
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
