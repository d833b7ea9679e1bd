// Hostile checkpoints (issue 13): pickles that name os.system, eval or
// subprocess, classes torch.load(weights_only=True) refuses, deep and cyclic
// structures, memo "billion laughs", giant declared sizes, zip records that
// overlap or point outside the file, hostile DCP `.metadata`. Every load runs
// in a forked child under an address-space limit and an alarm, and must end
// with a clear error (or an inert value) that names the file, with bounded
// memory and time, and without running anything (the payloads would create a
// marker file; it must not appear).
//
//   hostile_files_test PYTHON HOSTILE_FILES_PY
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/dcp_metadata.h"
#include "checkpoint/dcp_reader.h"
#include "checkpoint/dcp_writer.h"
#include "checkpoint/pickle_reader.h"
#include "checkpoint/test_python.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "checkpoint/atomic_file_writer.h"
#include "checkpoint/zip_reader.h"
#include "checkpoint/zip_writer.h"

namespace fabric {
namespace {

namespace fs = std::filesystem;
using namespace std::string_literals;  // pickles hold NUL bytes

std::string g_python;
std::string g_script;

// ---------------------------------------------------------------------------
// A load in a child process, bounded in address space and time.

long StatusKb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(in, line)) {
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') {
      return std::atol(line.c_str() + n + 1);
    }
  }
  return -1;
}

struct Outcome {
  bool exited = false;   // ran to the end (no crash, no signal, no timeout)
  int signal = 0;
  std::string message;   // what the load returned
  long rss_growth_mib = 0;
  double seconds = 0;
};

std::ostream& operator<<(std::ostream& os, const Outcome& o) {
  return os << "exited=" << o.exited << " signal=" << o.signal << " rss_growth=" << o.rss_growth_mib
            << "MiB seconds=" << o.seconds << " message: " << o.message;
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;  // ASan's shadow memory does not fit under RLIMIT_AS
#else
constexpr bool kAsan = false;
#endif

// Runs `load` in a child with at most `extra_mib` more address space than now
// and `seconds` of time; its result string and peak RSS growth come back.
Outcome Bounded(const std::function<std::string()>& load, long extra_mib = 2048,
                int seconds = 60) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    if (!kAsan) {
      rlimit rl;
      rl.rlim_cur = rl.rlim_max = static_cast<rlim_t>(StatusKb("VmSize") + extra_mib * 1024) * 1024;
      ::setrlimit(RLIMIT_AS, &rl);
    }
    ::alarm(static_cast<unsigned>(seconds));
    const long rss0 = StatusKb("VmRSS");
    const std::string message = load();
    const std::string out = absl::StrCat((StatusKb("VmHWM") - rss0) / 1024, "\n", message);
    for (size_t done = 0; done < out.size();) {
      const ssize_t n = ::write(fds[1], out.data() + done, out.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string got;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof(buf))) > 0;) got.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  Outcome o;
  o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  o.exited = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (WIFSIGNALED(status)) o.signal = WTERMSIG(status);
  const size_t nl = got.find('\n');
  if (nl != std::string::npos) {
    o.rss_growth_mib = std::atol(got.substr(0, nl).c_str());
    o.message = got.substr(nl + 1);
  }
  return o;
}

std::string Describe(const absl::Status& s) { return s.ok() ? "OK" : std::string(s.ToString()); }

std::string UnpickleResult(const std::string& bytes, const std::string& what = "hostile.pkl") {
  absl::StatusOr<Value> v = pickle::Unpickle(bytes, what);
  return v.ok() ? "OK " + v->DebugString() : Describe(v.status());
}

std::string TorchLoadResult(const std::string& path) {
  absl::StatusOr<Value> v = TorchLoad(path);
  return v.ok() ? "OK " + v->DebugString() : Describe(v.status());
}

// A clear error (from a child that ran to the end) containing each of `parts`.
void ExpectError(const Outcome& o, std::vector<std::string> parts, long max_rss_mib = 256,
                 double max_seconds = 30) {
  EXPECT_TRUE(o.exited) << o;
  EXPECT_FALSE(absl::StartsWith(o.message, "OK")) << o;
  for (const std::string& p : parts) EXPECT_NE(o.message.find(p), std::string::npos) << p << "\n" << o;
  EXPECT_LE(o.rss_growth_mib, max_rss_mib) << o;
  EXPECT_LE(o.seconds, max_seconds) << o;
}

// ---------------------------------------------------------------------------
// Files

std::string Tmp(const std::string& name) {
  const std::string dir = testing::TmpDir() + "/hostile";
  fs::create_directories(dir);
  return dir + "/" + name;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string Le(uint64_t v, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
  return s;
}

uint32_t U32(const std::string& b, size_t at) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(b[at + i]);
  return v;
}
uint16_t U16(const std::string& b, size_t at) {
  return static_cast<uint16_t>(static_cast<uint8_t>(b[at]) | (static_cast<uint8_t>(b[at + 1]) << 8));
}
void Put(std::string& b, size_t at, uint64_t v, int n) { b.replace(at, n, Le(v, n)); }

// The central directory of a small (non-zip64, comment-free) zip.
struct ZipLayout {
  size_t eocd = 0;
  size_t zip64 = std::string::npos;  // the zip64 end record, which takes precedence
  size_t cd_offset = 0;
  std::vector<size_t> entries;  // offsets of the central headers
  std::vector<std::string> names;
};

ZipLayout Layout(const std::string& b) {
  ZipLayout z;
  z.eocd = b.size() - 22;
  EXPECT_EQ(U32(b, z.eocd), 0x06054b50u);
  z.cd_offset = U32(b, z.eocd + 16);
  if (z.eocd >= 76 && U32(b, z.eocd - 20) == 0x07064b50u) {
    z.zip64 = z.eocd - 20 - 56;
    EXPECT_EQ(U32(b, z.zip64), 0x06064b50u);
    z.cd_offset = U32(b, z.zip64 + 48);
  }
  size_t p = z.cd_offset;
  for (int i = 0; i < U16(b, z.eocd + 10); ++i) {
    EXPECT_EQ(U32(b, p), 0x02014b50u);
    z.entries.push_back(p);
    z.names.push_back(b.substr(p + 46, U16(b, p + 28)));
    p += 46 + U16(b, p + 28) + U16(b, p + 30) + U16(b, p + 32);
  }
  return z;
}

size_t EntryNamed(const ZipLayout& z, const std::string& suffix) {
  for (size_t i = 0; i < z.names.size(); ++i) {
    if (absl::EndsWith(z.names[i], suffix)) return i;
  }
  ADD_FAILURE() << "no zip entry " << suffix;
  return 0;
}

// A real torch.save file of {"w": arange(4)} written by us.
std::string SmallCheckpoint(const std::string& name) {
  const std::string path = Tmp(name);
  TorchSaveOptions options;
  options.direct_io = false;
  EXPECT_TRUE(TorchSave(path, Value(Dict{{"w", Value(at::arange(4, at::kFloat))}}), options).ok());
  return path;
}

// ---------------------------------------------------------------------------
// Python-made hostile files: real payloads, proven to run under pickle.load.

class PythonPayloads : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(Tmp("py"));
    marker_ = new std::string(Tmp("MARKER_payload_ran"));
    output_ = new std::string();
    status_ = testing::RunPythonScript(g_python, ReadAll(g_script), {*dir_, *marker_}, output_);
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete marker_;
    delete output_;
  }
  void SetUp() override {
    ASSERT_EQ(status_, 0) << *output_;
    ASSERT_FALSE(fs::exists(*marker_)) << "the script must remove its marker";
  }
  void TearDown() override { EXPECT_FALSE(fs::exists(*marker_)) << "a payload ran"; }
  static std::string File(const std::string& name) { return *dir_ + "/" + name; }
  static bool Said(const std::string& line) {
    return output_->find(line + "\n") != std::string::npos;
  }

  static std::string* dir_;
  static std::string* marker_;
  static std::string* output_;
  static int status_;
};
std::string* PythonPayloads::dir_ = nullptr;
std::string* PythonPayloads::marker_ = nullptr;
std::string* PythonPayloads::output_ = nullptr;
int PythonPayloads::status_ = -1;

TEST_F(PythonPayloads, RawPicklesLoadAsInertObjects) {
  struct Case {
    const char* file;
    const char* callable;  // what the pickle names; we keep it as data
  };
  for (const Case& c : {Case{"reduce_os_system.pkl", "posix.system"},
                        Case{"reduce_eval.pkl", "builtins.eval"},
                        Case{"stack_global_subprocess.pkl", "subprocess.call"},
                        Case{"inst_os_system.pkl", "os.system"}}) {
    SCOPED_TRACE(c.file);
    // Python runs it; weights_only=True refuses it.
    EXPECT_TRUE(Said(absl::StrCat("EXECUTES ", c.file))) << *output_;
    EXPECT_TRUE(Said(absl::StrCat("REFUSED ", c.file))) << *output_;
    const std::string bytes = ReadAll(File(c.file));
    const Outcome o = Bounded([&] {
      absl::StatusOr<Value> v = pickle::Unpickle(bytes, c.file);
      if (!v.ok()) return Describe(v.status());
      if (!v->is_object()) return std::string("not an object: ") + v->DebugString();
      return "OBJECT " + v->as_object().callable.ToString();
    });
    EXPECT_TRUE(o.exited) << o;
    EXPECT_EQ(o.message, absl::StrCat("OBJECT ", c.callable)) << o;
    EXPECT_FALSE(fs::exists(*marker_));
  }
}

TEST_F(PythonPayloads, UserClassIsKeptAsData) {
  EXPECT_TRUE(Said("REFUSED user_class.pkl")) << *output_;
  EXPECT_TRUE(Said("REFUSED_TORCH user_class.pt")) << *output_;
  const Outcome o = Bounded([&] { return UnpickleResult(ReadAll(File("user_class.pkl"))); });
  EXPECT_TRUE(o.exited) << o;
  EXPECT_TRUE(absl::StartsWith(o.message, "OK")) << o;
  EXPECT_NE(o.message.find("Config"), std::string::npos) << o;  // an inert Object
}

TEST_F(PythonPayloads, TorchSaveFilesLoadTensorsAndKeepPayloadsInert) {
  for (const char* file : {"evil_system.pt", "evil_eval.pt", "evil_subprocess.pt", "user_class.pt"}) {
    SCOPED_TRACE(file);
    if (std::string(file) != "user_class.pt") {
      EXPECT_TRUE(Said(absl::StrCat("EXECUTES ", file))) << *output_;
    }
    EXPECT_TRUE(Said(absl::StrCat("REFUSED_TORCH ", file))) << *output_;
    const std::string path = File(file);
    const Outcome o = Bounded([&] {
      absl::StatusOr<Value> v = TorchLoad(path);
      if (!v.ok()) return Describe(v.status());
      const Value* w = v->as_dict().Find("w");
      const Value* x = v->as_dict().Find("x");
      if (!w || !w->is_tensor() || !at::equal(w->as_tensor(), at::arange(4, at::kFloat))) {
        return std::string("bad w");
      }
      return x && x->is_object() ? "INERT " + x->as_object().callable.ToString()
                                 : std::string("bad x");
    });
    EXPECT_TRUE(o.exited) << o;
    EXPECT_TRUE(absl::StartsWith(o.message, "INERT ")) << o;
  }
}

TEST_F(PythonPayloads, HostileDcpMetadataIsAnErrorNamingTheFile) {
  EXPECT_TRUE(Said("EXECUTES dcp_evil")) << *output_;  // DCP's own reader runs it
  const std::string dir = File("dcp_evil");
  const Outcome o = Bounded([&] { return Describe(dcp::CheckpointReader::Open(dir).status()); });
  ExpectError(o, {dir + "/.metadata"});
}

// ---------------------------------------------------------------------------
// Hand-made hostile pickles.

const std::string kProto2 = "\x80\x02"s;

// BINUNICODE of `s`.
std::string Str(const std::string& s) { return "X" + Le(s.size(), 4) + s; }

TEST(HostilePickle, MillionLevelsOfListsAreRefusedInBoundedMemory) {
  const int n = 1000000;
  const std::string p = kProto2 + std::string(n, ']') + std::string(n - 1, 'a') + ".";
  ExpectError(Bounded([&] { return UnpickleResult(p, "deep.pkl"); }),
              {"deep.pkl", "nested deeper than 1000"}, /*max_rss_mib=*/512);
}

TEST(HostilePickle, DeeplyNestedDictsAreRefused) {
  const int n = 200000;
  std::string p = kProto2;
  for (int i = 0; i < n; ++i) p += "}K\x01";
  p += "}" + std::string(n, 's') + ".";
  ExpectError(Bounded([&] { return UnpickleResult(p, "deep_dict.pkl"); }),
              {"deep_dict.pkl", "nested deeper"}, 512);
}

TEST(HostilePickle, MillionMarksAreAnError) {
  const std::string p = kProto2 + std::string(1000000, '(') + "N.";
  const Outcome o = Bounded([&] { return UnpickleResult(p, "marks.pkl"); });
  EXPECT_TRUE(o.exited) << o;
  EXPECT_LE(o.rss_growth_mib, 256) << o;
}

TEST(HostilePickle, CyclesAreAnErrorAndAreFreed) {
  // A list appended to itself, a dict holding itself, an object built with
  // itself as state; each also holds 1 MiB of text so a leak would show.
  const std::string big = "X" + Le(1 << 20, 4) + std::string(1 << 20, 'a');
  const std::string list = kProto2 + "]q\x00"s + big + "ah\x00"s + "a.";
  const std::string dict = kProto2 + "}q\x00K\x01"s + big + "sK\x02h\x00s."s;
  const std::string object = kProto2 + "c__main__\nC\n)Rq\x00("s + big + "h\x00tb."s;
  for (const std::string& p : {list, dict, object}) {
    const Outcome o = Bounded([&] {
      std::string last;
      for (int i = 0; i < 300; ++i) last = UnpickleResult(p, "cycle.pkl");
      return last;
    });
    ExpectError(o, {"cycle.pkl", "reference cycle"}, /*max_rss_mib=*/64);
  }
}

TEST(HostilePickle, SharedReferencesCannotExpandExponentially) {
  // x0 = []; x_{i+1} = [x_i, x_i]: 2^100 leaves when walked as a tree.
  std::string p = kProto2 + "]r" + Le(0, 4);
  for (uint32_t i = 0; i < 100; ++i) p += "(j" + Le(i, 4) + "j" + Le(i, 4) + "lr" + Le(i + 1, 4);
  p += ".";
  ExpectError(Bounded([&] { return UnpickleResult(p, "laughs.pkl"); }),
              {"laughs.pkl", "expand"}, 64, 10);
}

TEST(HostilePickle, MemoCopiesOfAStringAreBounded) {
  // One 1 MiB string fetched a million times would be a terabyte.
  std::string p = kProto2 + Str(std::string(1 << 20, 's')) + "q\x00("s;
  for (int i = 0; i < 1000000; ++i) p += "h\x00"s;
  p += "l.";
  ExpectError(Bounded([&] { return UnpickleResult(p, "copies.pkl"); }),
              {"copies.pkl", "expand"}, 256, 10);
}

TEST(HostilePickle, SharedArgumentsOfManyCallsAreBounded) {
  // torch.Size(t) 100000 times on one memoized tuple of 10000 ints.
  std::string p = kProto2 + "ctorch\nSize\nq\x00("s;
  for (int i = 0; i < 10000; ++i) p += "K\x07";
  p += "tq\x01(";
  for (int i = 0; i < 100000; ++i) p += "h\x00h\x01\x85R"s;
  p += "l.";
  ExpectError(Bounded([&] { return UnpickleResult(p, "calls.pkl"); }),
              {"calls.pkl", "expand"}, 256, 20);
}

TEST(HostilePickle, HugeDictKeysAreRefused) {
  // A tuple key of 2000 parts, then one of 1000 such keys: hashing stays cheap.
  std::string p = kProto2 + "}(";
  for (int i = 0; i < 2000; ++i) p += "K\x01";
  p += "tK\x00s."s;
  ExpectError(Bounded([&] { return UnpickleResult(p, "keys.pkl"); }), {"keys.pkl", "dict key"});
}

TEST(HostilePickle, GiantDeclaredSizesAreTruncationErrors) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"BINUNICODE8", "\x80\x04\x8d" + Le(uint64_t{1} << 62, 8) + "abc."},
      {"BINBYTES8", "\x80\x04\x8e" + Le(~uint64_t{0}, 8) + "abc."},
      {"BYTEARRAY8", "\x80\x05\x96" + Le(uint64_t{1} << 63, 8) + "abc."},
      {"BINUNICODE", kProto2 + "X" + Le(0xffffffffu, 4) + "abc."},
      {"BINBYTES", "\x80\x03"s + "B" + Le(0xfffffff0u, 4) + "abc."},
      {"LONG4", kProto2 + "\x8b" + Le(0x7fffffffu, 4) + "abc."},
      {"FRAME", "\x80\x04\x95" + Le(uint64_t{1} << 60, 8) + "N."},
      {"BINSTRING", kProto2 + "T" + Le(0x80000000u, 4) + "abc."},
  };
  for (const auto& [name, p] : cases) {
    SCOPED_TRACE(name);
    ExpectError(Bounded([&] { return UnpickleResult(p, name + ".pkl"); }), {name + ".pkl"}, 16, 5);
  }
}

// A _rebuild_tensor_v2 call on storage ('storage', FloatStorage, '0', 'cpu', numel).
std::string TensorPickle(int64_t numel, const std::vector<int64_t>& sizes,
                         const std::vector<int64_t>& strides) {
  auto ints = [](const std::vector<int64_t>& v) {
    std::string s = "(";
    for (int64_t x : v) s += "\x8a\x08" + Le(static_cast<uint64_t>(x), 8);
    return s + "t";
  };
  return kProto2 + "}" + Str("w") + "ctorch._utils\n_rebuild_tensor_v2\n(" + "(" + Str("storage") +
         "ctorch\nFloatStorage\n" + Str("0") + Str("cpu") + "\x8a\x08" +
         Le(static_cast<uint64_t>(numel), 8) + "tQK\x00"s + ints(sizes) + ints(strides) + "\x89" +
         "ccollections\nOrderedDict\n)RtRs.";
}

TEST(HostilePickle, TensorsOfMoreThanTwoTo63BytesAreRefused) {
  // A stride-0 view of one element passes the storage check; its element
  // count would overflow int64.
  const std::string p = TensorPickle(1, {int64_t{1} << 40, int64_t{1} << 40}, {0, 0});
  ExpectError(Bounded([&] { return UnpickleResult(p, "huge_view.pkl"); }),
              {"huge_view.pkl", "2^63"});
}

// ---------------------------------------------------------------------------
// torch.save archives with lies in their sizes and zip records.

// A torch.save archive with the given data.pkl and a 16-byte data/0 record,
// written by our zip writer (so only the pickle lies).
std::string WithDataPkl(const std::string& name, const std::string& pkl) {
  const std::string path = Tmp(name);
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> file = AtomicFileWriter::Create(path);
  EXPECT_TRUE(file.ok()) << file.status();
  ZipWriter zip(file->get(), "archive");
  const float data[4] = {0, 1, 2, 3};
  EXPECT_TRUE(zip.WriteRecord("data.pkl", pkl.data(), pkl.size()).ok());
  EXPECT_TRUE(zip.WriteRecord("byteorder", "little", 6).ok());
  EXPECT_TRUE(zip.WriteRecord("data/0", data, sizeof(data)).ok());
  EXPECT_TRUE(zip.WriteRecord("version", "3\n", 2).ok());
  EXPECT_TRUE(zip.Finish().ok());
  EXPECT_TRUE((*file)->Commit().ok());
  return path;
}

TEST(HostileTorchFile, TheArchiveHelperMakesLoadableFiles) {
  // The same writer with an honest pickle: the lies below are the only problem.
  const std::string path = WithDataPkl("honest.pt", TensorPickle(4, {4}, {1}));
  const Outcome o = Bounded([&] { return TorchLoadResult(path); });
  EXPECT_TRUE(o.exited) << o;
  EXPECT_TRUE(absl::StartsWith(o.message, "OK")) << o;
}

TEST(HostileTorchFile, StorageLargerThanItsRecordIsAnError) {
  // Declares 2^60 floats on a 16-byte record.
  const std::string pkl = TensorPickle(int64_t{1} << 60, {int64_t{1} << 60}, {1});
  const std::string path = WithDataPkl("huge_storage.pt", pkl);
  ExpectError(Bounded([&] { return TorchLoadResult(path); }), {path, "storage record"});
}

TEST(HostileTorchFile, StorageRecordPastTheEndOfTheFileIsAnError) {
  const std::string path = Tmp("past_end.pt");
  std::string b = ReadAll(SmallCheckpoint("past_end_src.pt"));
  const ZipLayout z = Layout(b);
  const size_t e = z.entries[EntryNamed(z, "/data/0")];
  Put(b, e + 20, 0x7ffffff0u, 4);  // compressed size
  Put(b, e + 24, 0x7ffffff0u, 4);  // size
  WriteAll(path, b);
  ExpectError(Bounded([&] { return TorchLoadResult(path); }), {path, "past"});
}

TEST(HostileZip, OverlappingRecordsAreAnError) {
  // Point data/0's header at data.pkl's: one file's bytes read as two records.
  const std::string path = Tmp("overlap.pt");
  std::string b = ReadAll(SmallCheckpoint("overlap_src.pt"));
  const ZipLayout z = Layout(b);
  const size_t pkl = z.entries[EntryNamed(z, "/data.pkl")];
  const size_t data = z.entries[EntryNamed(z, "/data/0")];
  Put(b, data + 42, U32(b, pkl + 42), 4);
  WriteAll(path, b);
  ExpectError(Bounded([&] { return TorchLoadResult(path); }), {path, "overlap"});
}

TEST(HostileZip, CentralDirectoryLiesAreErrors) {
  const std::string src = ReadAll(SmallCheckpoint("cd_src.pt"));
  const ZipLayout z = Layout(src);
  struct Lie {
    const char* name;
    std::function<void(std::string&)> apply;
    const char* says;
  };
  // A field of the end of central directory record, in the zip64 one too
  // when there is one (our writer and torch's always write it).
  auto end_field = [&](std::string& b, size_t at, size_t at64, uint64_t v) {
    Put(b, z.eocd + at, v, at == 8 || at == 10 ? 2 : 4);
    if (z.zip64 != std::string::npos) Put(b, z.zip64 + at64, v, 8);
  };
  const std::vector<Lie> lies = {
      {"cd_outside.pt", [&](std::string& b) { end_field(b, 16, 48, 0x7fffff00u); }, "outside"},
      {"cd_count.pt", [&](std::string& b) {
         end_field(b, 8, 24, 0xfff0);
         end_field(b, 10, 32, 0xfff0);
       }, "cannot hold"},
      {"cd_size.pt", [&](std::string& b) { end_field(b, 12, 40, 0xfffffff0u); }, "outside"},
      {"header_past_cd.pt",
       [&](std::string& b) { Put(b, z.entries[0] + 42, z.cd_offset + 10, 4); }, "past the central"},
      {"zip64_without_record.pt", [&](std::string& b) {
         Put(b, z.eocd + 16, 0xffffffffu, 4);
         if (z.zip64 != std::string::npos) Put(b, z.eocd - 20, 0, 4);  // no locator
       }, "zip64"},
      {"bad_entry_sig.pt", [&](std::string& b) { Put(b, z.entries[1], 0x12345678u, 4); }, "damaged"},
      {"name_len.pt", [&](std::string& b) { Put(b, z.entries.back() + 28, 0xffff, 2); }, "truncated"},
  };
  for (const Lie& lie : lies) {
    SCOPED_TRACE(lie.name);
    std::string b = src;
    lie.apply(b);
    const std::string path = Tmp(lie.name);
    WriteAll(path, b);
    ExpectError(Bounded([&] { return TorchLoadResult(path); }), {path, lie.says});
  }
}

// ---------------------------------------------------------------------------
// DCP folders whose .metadata lies.

std::string DcpFolder(const std::string& name, const std::function<void(dcp::Metadata&)>& lie) {
  const std::string dir = Tmp(name);
  dcp::WriteOptions wo;
  wo.direct_io = false;
  absl::StatusOr<std::vector<dcp::WriteResult>> r = dcp::WriteRankFile(
      dir, 0, {dcp::WriteItem::Tensor("w", at::arange(4, at::kFloat))}, wo);
  EXPECT_TRUE(r.ok()) << r.status();
  absl::StatusOr<dcp::Metadata> md = dcp::BuildMetadata({*r});
  EXPECT_TRUE(md.ok()) << md.status();
  lie(*md);
  EXPECT_TRUE(dcp::WriteMetadata(dir, *md).ok());
  return dir;
}

std::string ReadStateDictResult(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<dcp::CheckpointReader>> r = dcp::CheckpointReader::Open(dir);
  if (!r.ok()) return Describe(r.status());
  absl::StatusOr<Value> v = (*r)->ReadStateDict();
  return v.ok() ? "OK " + v->DebugString() : Describe(v.status());
}

TEST(HostileDcp, ChunkPastTheEndOfItsFileIsAnError) {
  const std::string dir = DcpFolder("dcp_long", [](dcp::Metadata& md) {
    md.storage_data[0].second.length = int64_t{1} << 50;
  });
  ExpectError(Bounded([&] { return ReadStateDictResult(dir); }), {dir});
}

TEST(HostileDcp, FileOutsideTheFolderIsAnError) {
  const std::string dir = DcpFolder("dcp_escape", [](dcp::Metadata& md) {
    md.storage_data[0].second.relative_path = "../../../../etc/passwd";
  });
  ExpectError(Bounded([&] { return ReadStateDictResult(dir); }), {dir, "outside the folder"});
}

TEST(HostileDcp, ChunkOutsideItsTensorIsAnError) {
  const std::string dir = DcpFolder("dcp_chunk", [](dcp::Metadata& md) {
    auto& t = std::get<dcp::TensorStorageMetadata>(md.state_dict_metadata[0].second);
    t.chunks[0].offsets = {std::numeric_limits<int64_t>::max() - 1};
  });
  ExpectError(Bounded([&] { return ReadStateDictResult(dir); }), {dir, "outside"});
}

TEST(HostileDcp, TensorOfMoreThanTwoTo63BytesIsAnError) {
  const std::string dir = DcpFolder("dcp_huge", [](dcp::Metadata& md) {
    std::get<dcp::TensorStorageMetadata>(md.state_dict_metadata[0].second).size = {int64_t{1} << 62};
  });
  ExpectError(Bounded([&] { return ReadStateDictResult(dir); }), {dir, "2^63"});
}

}  // namespace
}  // namespace fabric

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s PYTHON HOSTILE_FILES_PY\n", argv[0]);
    return 2;
  }
  fabric::g_python = argv[1];
  fabric::g_script = argv[2];
  return RUN_ALL_TESTS();
}
