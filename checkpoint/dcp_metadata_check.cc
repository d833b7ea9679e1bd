#include "checkpoint/dcp_metadata_check.h"

#include <algorithm>
#include <optional>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace fabric::dcp {
namespace {

std::string Box(const std::vector<int64_t>& v) {
  return absl::StrCat("[", absl::StrJoin(v, ", "), "]");
}

absl::Status Bad(const std::string& msg) { return absl::DataLossError(msg); }

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

using IndexKey = std::pair<std::string, std::optional<std::vector<int64_t>>>;

}  // namespace

absl::Status CheckChunks(const std::string& fqn, const TensorStorageMetadata& t,
                         const std::string& where) {
  const size_t ndim = t.size.size();
  int64_t numel = 1;
  for (int64_t s : t.size) {
    if (s < 0) return Bad(absl::StrCat(where, ": key '", fqn, "' has negative size ", Box(t.size)));
    numel *= s;
  }
  if (t.chunks.empty() && numel > 0) {
    return Bad(absl::StrCat(where, ": key '", fqn, "' has no chunks"));
  }
  int64_t covered = 0;
  for (const auto& c : t.chunks) {
    if (c.offsets.size() != ndim || c.sizes.size() != ndim) {
      return Bad(absl::StrCat(where, ": key '", fqn, "': chunk at ", Box(c.offsets), " with sizes ",
                              Box(c.sizes), " does not have the tensor's ", ndim, " dimensions"));
    }
    for (size_t d = 0; d < ndim; ++d) {
      if (c.offsets[d] < 0 || c.sizes[d] < 0 || c.offsets[d] + c.sizes[d] > t.size[d]) {
        return Bad(absl::StrCat(where, ": key '", fqn, "': chunk at ", Box(c.offsets),
                                " with sizes ", Box(c.sizes), " leaves the tensor's bounds ",
                                Box(t.size)));
      }
    }
    covered += c.numel();
  }
  // Disjointness: sweep over dim 0 (0-dim tensors: at most one chunk).
  std::vector<const ChunkStorageMetadata*> order;
  for (const auto& c : t.chunks) {
    if (c.numel() > 0) order.push_back(&c);
  }
  if (ndim == 0 && order.size() > 1) {
    return Bad(absl::StrCat(where, ": key '", fqn, "' (0-dim) has ", order.size(), " chunks"));
  }
  if (ndim > 0) {
    std::sort(order.begin(), order.end(),
              [](auto* a, auto* b) { return a->offsets[0] < b->offsets[0]; });
    for (size_t i = 0; i < order.size(); ++i) {
      const auto& a = *order[i];
      for (size_t j = i + 1; j < order.size() && order[j]->offsets[0] < a.offsets[0] + a.sizes[0];
           ++j) {
        const auto& b = *order[j];
        bool overlap = true;
        for (size_t d = 0; d < ndim && overlap; ++d) {
          overlap = std::max(a.offsets[d], b.offsets[d]) <
                    std::min(a.offsets[d] + a.sizes[d], b.offsets[d] + b.sizes[d]);
        }
        if (overlap) {
          return Bad(absl::StrCat(where, ": key '", fqn, "': chunks at ", Box(a.offsets), " and ",
                                  Box(b.offsets), " overlap"));
        }
      }
    }
  }
  if (covered != numel) {
    return Bad(absl::StrCat(where, ": key '", fqn, "': chunks cover ", covered, " of its ", numel,
                            " elements"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<MetadataItem>> CheckMetadata(const Metadata& md,
                                                        const std::string& where) {
  // Storage entries by key; each must be used by exactly one chunk or bytes key.
  std::map<IndexKey, const StorageInfo*> storage;
  for (const auto& [index, info] : md.storage_data) {
    if (!storage.emplace(IndexKey{index.fqn, index.offset}, &info).second) {
      return Bad(absl::StrCat(where, ": two storage entries for key '", index.fqn, "'",
                              index.offset ? " at " + Box(*index.offset) : ""));
    }
    if (info.offset < 0 || info.length < 0) {
      return Bad(absl::StrCat(where, ": key '", index.fqn, "' has a negative offset or length"));
    }
  }
  std::vector<MetadataItem> items;
  std::map<IndexKey, bool> used;
  for (const auto& [fqn, smd] : md.state_dict_metadata) {
    if (const auto* t = std::get_if<TensorStorageMetadata>(&smd)) {
      FABRIC_RETURN_IF_ERROR(CheckChunks(fqn, *t, where));
      for (const auto& c : t->chunks) {
        auto it = storage.find({fqn, c.offsets});
        if (it == storage.end()) {
          return Bad(absl::StrCat(where, ": key '", fqn, "': no storage entry for its chunk at ",
                                  Box(c.offsets)));
        }
        used[it->first] = true;
        items.push_back({fqn, it->second, t, &c});
      }
    } else {
      auto it = storage.find({fqn, std::nullopt});
      if (it == storage.end()) {
        return Bad(absl::StrCat(where, ": bytes key '", fqn, "' has no storage entry"));
      }
      used[it->first] = true;
      items.push_back({fqn, it->second, nullptr, nullptr});
    }
  }
  // planner_data: each flattened key is its path joined with dots, as DCP
  // flattens; a damaged path would nest a value under another name.
  if (md.planner_data) {
    for (const auto& [fqn, path] : *md.planner_data) {
      if (!path.empty() && FlattenedKey(path) != fqn) {
        return Bad(absl::StrCat(where, ": planner_data of key '", fqn, "' is the path '",
                                FlattenedKey(path), "', which does not flatten to the key"));
      }
    }
  }
  for (const auto& [key, info] : storage) {
    if (!used.count(key)) {
      return Bad(absl::StrCat(where, ": storage entry for key '", key.first, "'",
                              key.second ? " at " + Box(*key.second) : "",
                              " belongs to no key or chunk"));
    }
  }
  return items;
}

absl::Status CheckItemRanges(const std::vector<MetadataItem>& items,
                             const std::map<std::string, uint64_t>& file_sizes,
                             const std::string& dir) {
  std::map<std::string, std::vector<const MetadataItem*>> by_file;
  for (const MetadataItem& item : items) {
    const StorageInfo& info = *item.info;
    const std::string file = JoinPath(dir, info.relative_path);
    auto size = file_sizes.find(info.relative_path);
    if (size == file_sizes.end()) continue;
    if (static_cast<uint64_t>(info.offset) + static_cast<uint64_t>(info.length) > size->second) {
      return Bad(absl::StrCat("truncated shard file ", file, ": key '", item.fqn,
                              "' needs bytes [", info.offset, ", ", info.offset + info.length,
                              ") but the file has ", size->second));
    }
    by_file[info.relative_path].push_back(&item);
  }
  for (auto& [name, list] : by_file) {
    std::sort(list.begin(), list.end(), [](const MetadataItem* a, const MetadataItem* b) {
      return a->info->offset < b->info->offset;
    });
    for (size_t i = 1; i < list.size(); ++i) {
      const StorageInfo& a = *list[i - 1]->info;
      if (a.offset + a.length > list[i]->info->offset) {
        return Bad(absl::StrCat("shard file '", JoinPath(dir, name), "': keys '",
                                list[i - 1]->fqn, "' and '", list[i]->fqn,
                                "' have overlapping byte ranges"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace fabric::dcp
