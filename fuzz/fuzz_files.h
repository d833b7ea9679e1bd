// Fuzz inputs as real files: the readers under test take paths (they read
// through FileReader), so each input is written to a scratch folder first.
//
// An input that starts with "FZF1" is a small folder: records of a name line,
// a 4-byte little-endian length and that many bytes (a short last record takes
// what is left). A folder with a `.metadata` record is a sharded checkpoint;
// otherwise the first record is the file to open. Any other input is one file.
#ifndef FABRIC_FUZZ_FUZZ_FILES_H_
#define FABRIC_FUZZ_FUZZ_FILES_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fabric::fuzz {

inline constexpr char kFolderMagic[] = "FZF1";

// The (name, bytes) records of an FZF1 input; names are sanitized to plain
// file names (no '/', not "." or ".."); empty if `data` is not FZF1.
std::vector<std::pair<std::string, std::string>> SplitFolder(std::string_view data);

// The FZF1 encoding of named files (the seed writers use it).
std::string JoinFolder(const std::vector<std::pair<std::string, std::string>>& files);

// A scratch folder of this process, emptied for each input.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  const std::string& path() const { return path_; }
  // Writes `data` as one file (`name` in the folder) and returns its path.
  std::string WriteFile(const std::string& name, std::string_view data);
  // Writes the input as described above and returns the path to open.
  std::string WriteInput(std::string_view data, const std::string& single_name);

 private:
  void Clear();
  std::string path_;
};

}  // namespace fabric::fuzz

#endif  // FABRIC_FUZZ_FUZZ_FILES_H_
