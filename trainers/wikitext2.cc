#include "trainers/wikitext2.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <utility>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/randperm.h>
#include <ATen/ops/stack.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace fabric::trainers {
namespace {

constexpr char kEos[] = "<eos>";

// Decodes one UTF-8 code point at text[*pos] strictly, as Python's utf-8
// codec does (no overlongs, no surrogates, nothing above U+10FFFF). Returns
// false on invalid input.
bool DecodeUtf8(const std::string& text, size_t* pos, char32_t* out) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const size_t n = text.size();
  const unsigned char b0 = byte(*pos);
  if (b0 < 0x80) {
    *out = b0;
    *pos += 1;
    return true;
  }
  int len;
  char32_t cp;
  char32_t min;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2, cp = b0 & 0x1F, min = 0x80;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3, cp = b0 & 0x0F, min = 0x800;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return false;
  }
  if (*pos + len > n) return false;
  for (int i = 1; i < len; ++i) {
    const unsigned char b = byte(*pos + i);
    if ((b & 0xC0) != 0x80) return false;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
  *out = cp;
  *pos += len;
  return true;
}

// Python's str.isspace(), which is what str.split() splits on.
bool IsPythonSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot open WikiText-2 file ", path, ": ", std::strerror(errno)));
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return text;
}

const char* SplitName(WikiText2Split split) {
  switch (split) {
    case WikiText2Split::kTrain:
      return "train";
    case WikiText2Split::kValid:
      return "valid";
    case WikiText2Split::kTest:
      return "test";
  }
  return "?";
}

}  // namespace

absl::StatusOr<WikiText2Split> ParseWikiText2Split(absl::string_view name) {
  if (name == "train") return WikiText2Split::kTrain;
  if (name == "valid") return WikiText2Split::kValid;
  if (name == "test") return WikiText2Split::kTest;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown WikiText-2 split '", name, "' (expected train, valid or test)"));
}

std::vector<std::string> WikiText2FileNames(WikiText2Split split) {
  switch (split) {
    case WikiText2Split::kTrain:
      return {"wikitext-2.txt", "train.txt"};
    case WikiText2Split::kValid:
      return {"valid.txt"};
    case WikiText2Split::kTest:
      return {"test.txt"};
  }
  return {};
}

absl::StatusOr<WikiText2> WikiText2::Load(const std::string& data_dir, WikiText2Split split,
                                          int64_t block_size) {
  namespace fs = std::filesystem;
  const std::vector<std::string> names = WikiText2FileNames(split);
  std::error_code ec;
  for (const std::string& name : names) {
    const fs::path path = fs::path(data_dir) / name;
    if (fs::is_regular_file(path, ec)) return FromFile(path.string(), block_size);
  }
  std::string message =
      absl::StrCat("WikiText-2 ", SplitName(split), " split not found: no ",
                   absl::StrJoin(names, " or "), " in data folder '", data_dir,
                   "' (set with --data_dir). Lightning's demo downloads pytorch/examples' "
                   "word_language_model/data/wikitext-2/train.txt to <data_dir>/wikitext-2.txt; "
                   "there is no network here, so put the file there or point --data_dir at a "
                   "folder that has it.");
  if (split == WikiText2Split::kTrain) {
    std::vector<std::string> others;
    for (const char* other : {"valid.txt", "test.txt"}) {
      if (fs::is_regular_file(fs::path(data_dir) / other, ec)) others.push_back(other);
    }
    if (!others.empty()) {
      absl::StrAppend(&message, " The folder has ", absl::StrJoin(others, " and "),
                      ": ask for the valid or test split explicitly to train on one of "
                      "those instead (its vocabulary differs from the train split's).");
    }
  }
  return absl::NotFoundError(message);
}

absl::StatusOr<WikiText2> WikiText2::FromFile(const std::string& path, int64_t block_size) {
  if (block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("WikiText-2: block_size must be positive, got ", block_size));
  }
  FABRIC_ASSIGN_OR_RETURN(const std::string text, ReadWholeFile(path));

  WikiText2 dataset;
  dataset.path_ = path;
  dataset.block_size_ = block_size;
  absl::flat_hash_map<std::string, int64_t> ids;
  std::vector<int64_t> tokens;
  tokens.reserve(text.size() / 4);
  const auto add = [&](std::string word) {
    auto [it, inserted] = ids.try_emplace(std::move(word), dataset.words_.size());
    if (inserted) dataset.words_.push_back(it->first);
    tokens.push_back(it->second);
  };

  // Python iterates text-mode lines (\n, \r\n and \r all end a line; a last
  // line without an ending still counts) and splits each on whitespace.
  const std::string& s = text;
  size_t pos = 0;
  std::string word;
  bool in_line = false;  // something (even whitespace) since the last line end
  while (pos < s.size()) {
    const size_t start = pos;
    char32_t c;
    if (!DecodeUtf8(s, &pos, &c)) {
      return absl::InvalidArgumentError(
          absl::StrCat("WikiText-2 file ", path, " is not valid UTF-8 at byte offset ", start));
    }
    if (c == '\n' || c == '\r') {
      if (c == '\r' && pos < s.size() && s[pos] == '\n') ++pos;
      if (!word.empty()) add(std::move(word));
      word.clear();
      add(kEos);
      in_line = false;
      continue;
    }
    in_line = true;
    if (IsPythonSpace(c)) {
      if (!word.empty()) add(std::move(word));
      word.clear();
    } else {
      word.append(s, start, pos - start);
    }
  }
  if (in_line) {
    if (!word.empty()) add(std::move(word));
    add(kEos);
  }

  const int64_t n = static_cast<int64_t>(tokens.size());
  dataset.size_ = n / block_size - 1;
  if (dataset.size_ <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WikiText-2 file ", path, " has ", n, " tokens: too few for one sample of block_size ",
        block_size, " (needs at least ", 2 * block_size, ")"));
  }
  dataset.data_ = at::empty({n}, at::kLong);
  std::memcpy(dataset.data_.data_ptr<int64_t>(), tokens.data(), n * sizeof(int64_t));
  return dataset;
}

LmSample WikiText2::Get(int64_t index) const {
  TORCH_CHECK(index >= 0 && index < size_, "WikiText2 index ", index, " out of range [0, ", size_,
              ")");
  const int64_t start = index * block_size_;
  return {data_.narrow(0, start, block_size_), data_.narrow(0, start + 1, block_size_)};
}

namespace {

absl::Status CheckSampler(int64_t dataset_size, const DistributedSamplerOptions& o) {
  if (o.num_replicas <= 0 || o.rank < 0 || o.rank >= o.num_replicas) {
    return absl::InvalidArgumentError(
        absl::StrCat("DistributedSampler: rank ", o.rank, " is not in [0, ", o.num_replicas, ")"));
  }
  if (dataset_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("DistributedSampler: dataset is empty (size ", dataset_size, ")"));
  }
  return absl::OkStatus();
}

// DistributedSampler.num_samples.
int64_t SamplesPerReplica(int64_t n, const DistributedSamplerOptions& o) {
  const int64_t r = o.num_replicas;
  if (o.drop_last && n % r != 0) return n >= r ? (n - r + r - 1) / r : 0;
  return (n + r - 1) / r;
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> DistributedSamplerIndices(int64_t dataset_size,
                                                               const DistributedSamplerOptions& o,
                                                               int64_t epoch) {
  FABRIC_RETURN_IF_ERROR(CheckSampler(dataset_size, o));
  const int64_t n = dataset_size;
  std::vector<int64_t> all(n);
  if (o.shuffle) {
    at::Generator gen =
        at::make_generator<at::CPUGeneratorImpl>(o.seed + static_cast<uint64_t>(epoch));
    const at::Tensor perm = at::randperm(n, gen, at::kLong);
    std::memcpy(all.data(), perm.data_ptr<int64_t>(), n * sizeof(int64_t));
  } else {
    for (int64_t i = 0; i < n; ++i) all[i] = i;
  }
  const int64_t total = SamplesPerReplica(n, o) * o.num_replicas;
  // Pad by wrapping around (total >= n), or truncate (drop_last).
  for (int64_t i = n; i < total; ++i) {
    const int64_t wrapped = all[(i - n) % n];
    all.push_back(wrapped);
  }
  all.resize(total);
  std::vector<int64_t> mine;
  mine.reserve(total / o.num_replicas);
  for (int64_t i = o.rank; i < total; i += o.num_replicas) mine.push_back(all[i]);
  return mine;
}

absl::StatusOr<WikiText2Loader> WikiText2Loader::Create(std::shared_ptr<const WikiText2> dataset,
                                                        const WikiText2LoaderOptions& options) {
  if (dataset == nullptr) return absl::InvalidArgumentError("WikiText2Loader: no dataset");
  if (options.batch_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("WikiText2Loader: batch_size must be positive, got ", options.batch_size));
  }
  FABRIC_RETURN_IF_ERROR(CheckSampler(dataset->size(), options.sampler));
  const int64_t per_rank = SamplesPerReplica(dataset->size(), options.sampler);
  const int64_t b = options.batch_size;
  const int64_t batches = options.drop_last ? per_rank / b : (per_rank + b - 1) / b;
  if (batches == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("WikiText2Loader: ", dataset->path(), " gives rank ", options.sampler.rank,
                     " ", per_rank, " samples per epoch: no batch of ", b));
  }
  WikiText2Loader loader;
  loader.dataset_ = std::move(dataset);
  loader.options_ = options;
  loader.batches_per_epoch_ = batches;
  loader.LoadEpoch();
  return loader;
}

void WikiText2Loader::LoadEpoch() {
  // Checked in Create; cannot fail here.
  indices_ = *DistributedSamplerIndices(dataset_->size(), options_.sampler, epoch_);
}

LmBatch WikiText2Loader::Next() {
  const int64_t begin = batch_index_ * options_.batch_size;
  const int64_t end =
      std::min<int64_t>(begin + options_.batch_size, static_cast<int64_t>(indices_.size()));
  std::vector<at::Tensor> inputs, targets;
  inputs.reserve(end - begin);
  targets.reserve(end - begin);
  for (int64_t i = begin; i < end; ++i) {
    LmSample s = dataset_->Get(indices_[i]);
    inputs.push_back(std::move(s.inputs));
    targets.push_back(std::move(s.target));
  }
  LmBatch batch{at::stack(inputs), at::stack(targets), epoch_, batch_index_};
  if (++batch_index_ == batches_per_epoch_) {
    ++epoch_;
    batch_index_ = 0;
    LoadEpoch();
  }
  return batch;
}

absl::Status WikiText2Loader::Restore(const LoaderPosition& position) {
  if (position.epoch < 0 || position.batch_index < 0 ||
      position.batch_index >= batches_per_epoch_) {
    return absl::InvalidArgumentError(
        absl::StrCat("WikiText2Loader: cannot restore epoch ", position.epoch, " batch ",
                     position.batch_index, ": an epoch has ", batches_per_epoch_, " batches here"));
  }
  epoch_ = position.epoch;
  batch_index_ = position.batch_index;
  options_.sampler.seed = position.seed;
  LoadEpoch();
  return absl::OkStatus();
}

}  // namespace fabric::trainers
