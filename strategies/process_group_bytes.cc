// DistributedContext's collectives on bytes and statuses (BroadcastBytes,
// AllGatherBytes, ReduceBoolean, ShareStatus, AgreeOnStatus, RankZeroFirst):
// built on the tensor collectives of process_group.cc, apart from the
// rendezvous, watch thread and failure diagnosis that file holds.
#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "strategies/process_group.h"

namespace fabric::strategies {

absl::StatusOr<std::string> DistributedContext::BroadcastBytes(const std::string& bytes,
                                                               int root) {
  at::Tensor length = at::full({1}, static_cast<int64_t>(bytes.size()),
                               at::TensorOptions().dtype(at::kLong).device(device()));
  FABRIC_RETURN_IF_ERROR(Broadcast(length, root));
  const int64_t n = length.cpu().item<int64_t>();
  if (n < 0) return absl::DataLossError("broadcast of bytes: negative length received");
  at::Tensor data = at::empty({n}, at::TensorOptions().dtype(at::kByte));
  if (rank() == root && n > 0) std::memcpy(data.data_ptr(), bytes.data(), n);
  data = data.to(device());
  if (n > 0) FABRIC_RETURN_IF_ERROR(Broadcast(data, root));
  data = data.cpu();
  return std::string(static_cast<const char*>(data.data_ptr()), static_cast<size_t>(n));
}

absl::StatusOr<bool> DistributedContext::ReduceBoolean(bool decision, bool all) {
  at::Tensor t = at::full({1}, decision ? 1 : 0, at::TensorOptions().dtype(at::kInt).device(device()));
  FABRIC_RETURN_IF_ERROR(AllReduce(t, all ? ReduceOp::kMin : ReduceOp::kMax));
  return t.cpu().item<int>() != 0;
}

namespace {

// A status as bytes ("<code>:<message>", empty for OK) and back.
std::string EncodeStatus(const absl::Status& s) {
  if (s.ok()) return std::string();
  return absl::StrCat(static_cast<int>(s.code()), ":", s.message());
}

absl::Status DecodeStatus(const std::string& bytes, int from) {
  if (bytes.empty()) return absl::OkStatus();
  const size_t colon = bytes.find(':');
  int code = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(bytes.substr(0, colon), &code) ||
      code <= 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::DataLossError(absl::StrCat("malformed status received from rank ", from));
  }
  return absl::Status(static_cast<absl::StatusCode>(code),
                      absl::StrCat("rank ", from, " failed: ", bytes.substr(colon + 1)));
}

}  // namespace

absl::StatusOr<std::vector<std::string>> DistributedContext::AllGatherBytes(
    const std::string& bytes) {
  at::Tensor len = at::full({1}, static_cast<int64_t>(bytes.size()),
                            at::TensorOptions().dtype(at::kLong).device(device()));
  FABRIC_ASSIGN_OR_RETURN(std::vector<at::Tensor> lens, AllGather(len));
  int64_t max_len = 1;
  std::vector<int64_t> sizes;
  for (const at::Tensor& l : lens) {
    sizes.push_back(l.cpu().item<int64_t>());
    if (sizes.back() < 0) return absl::DataLossError("all-gather of bytes: negative length");
    max_len = std::max(max_len, sizes.back());
  }
  at::Tensor buf = at::zeros({max_len}, at::TensorOptions().dtype(at::kByte));
  if (!bytes.empty()) std::memcpy(buf.data_ptr(), bytes.data(), bytes.size());
  FABRIC_ASSIGN_OR_RETURN(std::vector<at::Tensor> all, AllGather(buf.to(device())));
  std::vector<std::string> out;
  out.reserve(all.size());
  for (size_t r = 0; r < all.size(); ++r) {
    at::Tensor b = all[r].cpu().contiguous();
    out.emplace_back(static_cast<const char*>(b.data_ptr()), static_cast<size_t>(sizes[r]));
  }
  return out;
}

absl::Status DistributedContext::ShareStatus(const absl::Status& mine, int root) {
  if (world_size() == 1) return mine;
  FABRIC_ASSIGN_OR_RETURN(std::string bytes,
                          BroadcastBytes(rank() == root ? EncodeStatus(mine) : "", root));
  if (rank() == root) return mine;
  return DecodeStatus(bytes, root);
}

absl::Status DistributedContext::AgreeOnStatus(const absl::Status& mine) {
  if (world_size() == 1) return mine;
  FABRIC_ASSIGN_OR_RETURN(std::vector<std::string> all, AllGatherBytes(EncodeStatus(mine)));
  if (!mine.ok()) return mine;
  for (size_t r = 0; r < all.size(); ++r) {
    if (!all[r].empty()) return DecodeStatus(all[r], static_cast<int>(r));
  }
  return absl::OkStatus();
}

absl::Status DistributedContext::RankZeroFirst(const std::function<absl::Status()>& fn) {
  absl::Status mine;
  if (is_rank_zero()) mine = fn();
  FABRIC_RETURN_IF_ERROR(ShareStatus(mine));
  if (!is_rank_zero()) mine = fn();
  absl::Status barrier = Barrier();
  return mine.ok() ? barrier : mine;
}

}  // namespace fabric::strategies
