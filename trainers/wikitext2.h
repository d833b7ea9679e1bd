// WikiText-2 as Lightning's demo prepares it (lightning/pytorch/demos/
// transformer.py: WikiText2, Dictionary, tokenize), plus the sampling that
// Python's DistributedSampler + DataLoader put around it.
//
// Tokens: each line of the file (universal newlines: \n, \r\n, \r) is split on
// whitespace as Python's str.split() does (Unicode whitespace included) and
// followed by "<eos>". Ids are given in first-seen order. Sample i is
// inputs = data[i*B, i*B + B), target = data[i*B + 1, i*B + B + 1) with
// B = block_size; there are len(data) / B - 1 samples. So sample i equals
// Python's dataset[i], and vocab_size() its len(dictionary).
//
// Files: the demo reads one file, <data_dir>/wikitext-2.txt, which it downloads
// from pytorch/examples' word_language_model/data/wikitext-2/train.txt, i.e.
// the train split only. Without a network we never download: the train split
// is <data_dir>/wikitext-2.txt (the demo's name) or <data_dir>/train.txt (the
// pytorch/examples name), and when neither exists Load fails with an error
// naming --data_dir and both names. The valid and test splits (valid.txt,
// test.txt) can be asked for explicitly, e.g. where only they are available;
// a missing train split is never silently replaced by another split, because
// the vocabulary (and so the model's size) would change with it.
#ifndef FABRIC_TRAINERS_WIKITEXT2_H_
#define FABRIC_TRAINERS_WIKITEXT2_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fabric::trainers {

enum class WikiText2Split { kTrain, kValid, kTest };

// "train", "valid" or "test".
absl::StatusOr<WikiText2Split> ParseWikiText2Split(absl::string_view name);

// The file names a split may have in a data folder, in lookup order.
std::vector<std::string> WikiText2FileNames(WikiText2Split split);

// One sample: int64 [block_size] each.
struct LmSample {
  at::Tensor inputs;
  at::Tensor target;
};

class WikiText2 {
 public:
  // The demo's dataset from `data_dir` (see the file comment for the names).
  static absl::StatusOr<WikiText2> Load(const std::string& data_dir,
                                        WikiText2Split split = WikiText2Split::kTrain,
                                        int64_t block_size = 35);
  // The dataset of one text file.
  static absl::StatusOr<WikiText2> FromFile(const std::string& path, int64_t block_size = 35);

  const std::string& path() const { return path_; }
  int64_t block_size() const { return block_size_; }
  // len(dictionary): what the model's vocab_size must be.
  int64_t vocab_size() const { return static_cast<int64_t>(words_.size()); }
  // Number of samples, len(dataset).
  int64_t size() const { return size_; }
  // idx2word: words_[id].
  const std::vector<std::string>& words() const { return words_; }
  // All token ids of the file, int64 [num_tokens].
  const at::Tensor& data() const { return data_; }

  // Sample `index`, 0 <= index < size(); views into data(). Throws
  // c10::Error for an index out of range.
  LmSample Get(int64_t index) const;

 private:
  WikiText2() = default;

  std::string path_;
  int64_t block_size_ = 0;
  int64_t size_ = 0;
  std::vector<std::string> words_;
  at::Tensor data_;
};

// torch.utils.data.DistributedSampler's arguments.
struct DistributedSamplerOptions {
  int64_t num_replicas = 1;
  int64_t rank = 0;
  bool shuffle = true;
  uint64_t seed = 0;
  bool drop_last = false;
};

// The dataset indices one rank visits in `epoch`, exactly as
// DistributedSampler(..., shuffle, seed, drop_last) after set_epoch(epoch)
// yields them: randperm(n) from a CPU generator seeded with seed + epoch
// (the same LibTorch code, so the same permutation), padded by wrapping around
// (or truncated with drop_last) to a multiple of num_replicas, then every
// num_replicas-th index from `rank`.
absl::StatusOr<std::vector<int64_t>> DistributedSamplerIndices(
    int64_t dataset_size, const DistributedSamplerOptions& options, int64_t epoch);

// Where a loader stands: the next batch is batch `batch_index` of `epoch`,
// drawn with sampler seed `seed`. Saved with a checkpoint, it lets a resumed
// run (same dataset, batch size and world size) see exactly the batches the
// interrupted one would have.
struct LoaderPosition {
  int64_t epoch = 0;
  int64_t batch_index = 0;
  uint64_t seed = 0;
};

// A batch: inputs and target int64 [rows, block_size]; rows is batch_size
// except for a short last batch of an epoch (unless drop_last).
struct LmBatch {
  at::Tensor inputs;
  at::Tensor target;
  int64_t epoch = 0;
  int64_t batch_index = 0;
};

struct WikiText2LoaderOptions {
  int64_t batch_size = 1;
  // DataLoader's drop_last: drop a short last batch of the rank's shard.
  bool drop_last = false;
  DistributedSamplerOptions sampler;
};

// DataLoader(dataset, batch_size, sampler=DistributedSampler(...), drop_last)
// iterated epoch after epoch, with a position that can be saved and restored.
class WikiText2Loader {
 public:
  static absl::StatusOr<WikiText2Loader> Create(std::shared_ptr<const WikiText2> dataset,
                                                const WikiText2LoaderOptions& options);

  // Batches per epoch for this rank.
  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  // Samples this rank sees per epoch (its shard).
  int64_t samples_per_epoch() const { return static_cast<int64_t>(indices_.size()); }
  const WikiText2LoaderOptions& options() const { return options_; }

  // The next batch; after the last batch of an epoch the loader moves on to
  // batch 0 of the next epoch.
  LmBatch Next();

  LoaderPosition position() const { return {epoch_, batch_index_, options_.sampler.seed}; }
  // Continues from `position` (its seed replaces the loader's). Fails, leaving
  // the loader as it was, when the position is out of range.
  absl::Status Restore(const LoaderPosition& position);

 private:
  WikiText2Loader() = default;
  // Draws the shard of `epoch_` into indices_.
  void LoadEpoch();

  std::shared_ptr<const WikiText2> dataset_;
  WikiText2LoaderOptions options_;
  int64_t batches_per_epoch_ = 0;
  int64_t epoch_ = 0;
  int64_t batch_index_ = 0;
  std::vector<int64_t> indices_;  // this rank's shard of epoch_
};

}  // namespace fabric::trainers

#endif  // FABRIC_TRAINERS_WIKITEXT2_H_
