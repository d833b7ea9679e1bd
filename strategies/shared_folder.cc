#include "strategies/shared_folder.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "checkpoint/fs_util.h"

namespace fabric::strategies {
namespace {
namespace fs = std::filesystem;

constexpr char kTokenPrefix[] = ".fabric-shared-";
constexpr int64_t kFingerprintBytes = 1 << 20;

absl::StatusOr<std::string> RandomToken() {
  std::ifstream urandom("/dev/urandom", std::ios::binary);
  char raw[16];
  if (!urandom.read(raw, sizeof(raw))) {
    return absl::InternalError("cannot read /dev/urandom for the shared-folder token");
  }
  return absl::StrCat(getpid(), "-", absl::BytesToHexString(absl::string_view(raw, sizeof(raw))));
}

std::string ReadUpTo(const std::string& path, int64_t limit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::string data(static_cast<size_t>(limit), '\0');
  in.read(data.data(), limit);
  data.resize(static_cast<size_t>(in.gcount()));
  return data;
}

// Ranks (in order) whose `ok` is false, from every rank's vote.
absl::StatusOr<std::vector<int>> RanksThatFail(DistributedContext& ctx, bool ok) {
  at::Tensor vote = at::full({1}, ok ? 1 : 0, at::TensorOptions().dtype(at::kInt));
  FABRIC_ASSIGN_OR_RETURN(std::vector<at::Tensor> votes, ctx.AllGather(vote.to(ctx.device())));
  std::vector<int> failed;
  for (size_t r = 0; r < votes.size(); ++r) {
    if (votes[r].cpu().item<int>() == 0) failed.push_back(static_cast<int>(r));
  }
  return failed;
}

// What this rank sees at `path`: kind, size and a digest of the first bytes.
std::string Fingerprint(const std::string& path) {
  std::error_code ec;
  std::string file = path;
  std::string kind = "file";
  if (fs::is_directory(path, ec)) {
    file = (fs::path(path) / ".metadata").string();
    kind = "sharded folder";
  }
  const uintmax_t size = fs::file_size(file, ec);
  if (ec) return absl::StrCat(path, ": nothing readable (", kind, ")");
  const std::string head = ReadUpTo(file, kFingerprintBytes);
  uint64_t digest = 1469598103934665603ULL;  // FNV-1a
  for (unsigned char ch : head) digest = (digest ^ ch) * 1099511628211ULL;
  return absl::StrCat(path, ": ", kind, ", ", size, " bytes, digest ", absl::Hex(digest));
}

// Tokens are named ".fabric-shared-<pid>-<hex>": a process killed between
// writing its token and removing it leaves one, which the next check by a
// process of this host removes once that pid is gone.
void RemoveStaleTokens(const std::string& dir) {
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!absl::StartsWith(name, kTokenPrefix)) continue;
    const long pid = std::strtol(name.c_str() + std::strlen(kTokenPrefix), nullptr, 10);
    if (ProcessIsGone(pid)) {
      fs::remove(e.path(), ec);
    }
  }
}

}  // namespace

absl::Status CheckSharedFolder(DistributedContext& ctx, const std::string& dir,
                               absl::Duration visibility_wait) {
  std::string token, rank_zero_error;
  const std::string base = (fs::path(dir) / kTokenPrefix).string();
  if (ctx.is_rank_zero()) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    RemoveStaleTokens(dir);
    absl::StatusOr<std::string> t = RandomToken();
    if (ec) {
      rank_zero_error = absl::StrCat("cannot create the folder ", dir, ": ", ec.message());
    } else if (!t.ok()) {
      rank_zero_error = std::string(t.status().message());
    } else {
      std::ofstream out(base + *t, std::ios::binary | std::ios::trunc);
      out << *t;
      out.close();
      if (!out) {
        rank_zero_error = absl::StrCat("cannot write ", base, *t, " (is ", dir, " writable?)");
      } else {
        token = *t;
      }
    }
  }
  FABRIC_ASSIGN_OR_RETURN(std::string shared,
                          ctx.BroadcastBytes(rank_zero_error.empty() ? token : "!" + rank_zero_error));
  if (!shared.empty() && shared[0] == '!') {
    return absl::FailedPreconditionError(
        absl::StrCat("rank ", ctx.rank(), ": checking that ", dir,
                     " is shared by all ranks: rank 0: ", shared.substr(1)));
  }
  const std::string path = base + shared;
  bool seen = false;
  const absl::Time deadline = absl::Now() + visibility_wait;
  do {
    seen = ReadUpTo(path, 64) == shared;
    if (seen || absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(100));
  } while (true);
  FABRIC_ASSIGN_OR_RETURN(std::vector<int> blind, RanksThatFail(ctx, seen));
  if (ctx.is_rank_zero()) {
    std::error_code ec;
    fs::remove(path, ec);
  }
  if (blind.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "the checkpoint folder ", dir, " is not shared by all ranks: rank(s) ",
      DescribeRanks(ctx.cluster(), blind), " do not see the file ", path, " that rank 0 wrote there",
      " (waited ", absl::FormatDuration(visibility_wait),
      "; a node-local path?). A run on several nodes needs a folder that every node mounts at the "
      "same path, on a shared filesystem with POSIX rename (see docs/trainers.md); nothing was "
      "saved"));
}

absl::Status CheckSameCheckpoint(DistributedContext& ctx, const std::string& path) {
  const std::string mine = Fingerprint(path);
  FABRIC_ASSIGN_OR_RETURN(std::string zero, ctx.BroadcastBytes(mine));
  FABRIC_ASSIGN_OR_RETURN(std::vector<int> differ, RanksThatFail(ctx, mine == zero));
  if (differ.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "rank(s) ", DescribeRanks(ctx.cluster(), differ), " do not see the checkpoint rank 0 sees (",
      zero, "); this rank sees ", mine,
      ". Every rank must load the same checkpoint: use a folder on a filesystem that every node "
      "mounts at the same path"));
}

}  // namespace fabric::strategies
