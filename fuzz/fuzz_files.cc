#include "fuzz/fuzz_files.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>

namespace fabric::fuzz {
namespace {

namespace fs = std::filesystem;

bool SafeName(const std::string& name) {
  if (name.empty() || name == "." || name == ".." || name.size() > 200) return false;
  for (char c : name) {
    if (c == '/' || c == '\0') return false;
  }
  return true;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> SplitFolder(std::string_view data) {
  std::vector<std::pair<std::string, std::string>> files;
  const size_t magic = std::strlen(kFolderMagic);
  if (data.substr(0, magic) != kFolderMagic) return files;
  data.remove_prefix(magic);
  while (!data.empty()) {
    const size_t nl = data.find('\n');
    if (nl == std::string_view::npos) break;
    std::string name(data.substr(0, nl));
    data.remove_prefix(nl + 1);
    uint32_t n = 0;
    for (int i = 0; i < 4 && i < static_cast<int>(data.size()); ++i) {
      n |= static_cast<uint32_t>(static_cast<uint8_t>(data[i])) << (8 * i);
    }
    data.remove_prefix(std::min<size_t>(4, data.size()));
    const size_t take = std::min<size_t>(n, data.size());
    if (SafeName(name)) files.emplace_back(std::move(name), std::string(data.substr(0, take)));
    data.remove_prefix(take);
  }
  return files;
}

std::string JoinFolder(const std::vector<std::pair<std::string, std::string>>& files) {
  std::string out = kFolderMagic;
  for (const auto& [name, bytes] : files) {
    out += name;
    out += '\n';
    const uint32_t n = static_cast<uint32_t>(bytes.size());
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(n >> (8 * i)));
    out += bytes;
  }
  return out;
}

ScratchDir::ScratchDir() {
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/fabric_fuzz_XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  path_ = tmpl;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void ScratchDir::Clear() {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(path_, ec)) fs::remove_all(e.path(), ec);
}

std::string ScratchDir::WriteFile(const std::string& name, std::string_view data) {
  const std::string path = path_ + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

std::string ScratchDir::WriteInput(std::string_view data, const std::string& single_name) {
  Clear();
  const auto files = SplitFolder(data);
  if (files.empty()) return WriteFile(single_name, data);
  bool sharded = false;
  for (const auto& [name, bytes] : files) {
    WriteFile(name, bytes);
    sharded = sharded || name == ".metadata";
  }
  return sharded ? path_ : path_ + "/" + files.front().first;
}

}  // namespace fabric::fuzz
