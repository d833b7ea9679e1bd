// A main() for fuzz targets in the ordinary (gcc, uninstrumented) build: runs
// LLVMFuzzerTestOneInput over a seed corpus and then over deterministic
// mutations of it, so that `bazel test` exercises every target without clang.
// The libFuzzer build (--config=fuzz, docs/security.md) links libFuzzer's
// main instead.
//
//   smoke_test [--mutations=N] [--seed=S] [--max_seconds=T] CORPUS_DIR_OR_FILE...
//
// Exit status 0 when every input ran (a crash or sanitizer report ends the
// process before that); 1 when the corpus is empty or unreadable.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Integers that sit on the edges readers check (sizes, offsets, counts).
constexpr uint64_t kInteresting[] = {0,          1,          0x7f,       0x80,
                                     0xff,       0x100,      0x7fff,     0xffff,
                                     0x10000,    0x7fffffff, 0x80000000, 0xffffffff,
                                     0x100000000ull, 0x7fffffffffffffffull,
                                     0x8000000000000000ull, ~0ull};

// One random edit of `s`; `others` supplies splices.
void Mutate(std::string& s, std::mt19937_64& rng, const std::vector<std::string>& others) {
  auto pick = [&](uint64_t n) { return n == 0 ? 0 : static_cast<size_t>(rng() % n); };
  switch (rng() % 9) {
    case 0:  // flip a bit
      if (!s.empty()) s[pick(s.size())] ^= static_cast<char>(1u << (rng() % 8));
      break;
    case 1:  // a random byte
      if (!s.empty()) s[pick(s.size())] = static_cast<char>(rng());
      break;
    case 2: {  // an interesting little-endian integer of 1, 2, 4 or 8 bytes
      const size_t width = size_t{1} << (rng() % 4);
      if (s.size() < width) break;
      const size_t at = pick(s.size() - width + 1);
      const uint64_t v = kInteresting[pick(std::size(kInteresting))];
      for (size_t i = 0; i < width; ++i) s[at + i] = static_cast<char>(v >> (8 * i));
      break;
    }
    case 3: {  // erase a range
      if (s.empty()) break;
      const size_t at = pick(s.size());
      s.erase(at, 1 + pick(std::min<size_t>(s.size() - at, 64)));
      break;
    }
    case 4: {  // duplicate a range in place
      if (s.empty() || s.size() > (1u << 20)) break;
      const size_t at = pick(s.size());
      const size_t n = 1 + pick(std::min<size_t>(s.size() - at, 64));
      s.insert(at, s.substr(at, n));
      break;
    }
    case 5: {  // insert random bytes
      const size_t at = pick(s.size() + 1);
      std::string bytes(1 + pick(8), '\0');
      for (char& c : bytes) c = static_cast<char>(rng());
      s.insert(at, bytes);
      break;
    }
    case 6:  // truncate
      if (!s.empty()) s.resize(pick(s.size()));
      break;
    case 7: {  // splice in a piece of another seed
      const std::string& o = others[pick(others.size())];
      if (o.empty() || s.empty()) break;
      const size_t from = pick(o.size());
      const size_t n = 1 + pick(std::min<size_t>(o.size() - from, 256));
      s.replace(pick(s.size()), n, o, from, n);
      break;
    }
    default: {  // copy a range over another part of itself
      if (s.size() < 2) break;
      const size_t from = pick(s.size());
      const size_t n = 1 + pick(std::min<size_t>(s.size() - from, 32));
      const std::string piece = s.substr(from, n);
      s.replace(pick(s.size()), n, piece);
      break;
    }
  }
}

void Run(const std::string& input) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
}

}  // namespace

int main(int argc, char** argv) {
  long mutations = 2000;
  uint64_t seed = 1;
  double max_seconds = 0;  // 0: no limit
  std::vector<fs::path> paths;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--mutations=", 0) == 0) {
      mutations = std::atol(a.c_str() + 12);
    } else if (a.rfind("--seed=", 0) == 0) {
      seed = std::strtoull(a.c_str() + 7, nullptr, 10);
    } else if (a.rfind("--max_seconds=", 0) == 0) {
      max_seconds = std::atof(a.c_str() + 14);
    } else {
      paths.emplace_back(a);
    }
  }
  std::vector<fs::path> files;
  for (const fs::path& p : paths) {
    if (fs::is_directory(p)) {
      for (const auto& e : fs::recursive_directory_iterator(p)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
    } else if (fs::is_regular_file(p)) {
      files.push_back(p);
    }
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> seeds;
  for (const fs::path& f : files) seeds.push_back(ReadFile(f));
  if (seeds.empty()) {
    std::fprintf(stderr, "no seed inputs found\n");
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  for (const std::string& s : seeds) Run(s);
  std::mt19937_64 rng(seed);
  long done = 0;
  for (; done < mutations; ++done) {
    if (max_seconds > 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
            max_seconds) {
      break;
    }
    std::string input = seeds[static_cast<size_t>(done) % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) Mutate(input, rng, seeds);
    Run(input);
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("ran %zu seeds and %ld mutations (seed %llu) in %.1f s\n", seeds.size(), done,
              static_cast<unsigned long long>(seed), secs);
  return 0;
}
