#include "tests/distributed/collective_checks.h"

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "tests/distributed/test_util.h"

namespace fabric::testing {
namespace {

#define CHECK_OK(expr)                      \
  do {                                      \
    absl::Status check_status_ = (expr);    \
    if (!check_status_.ok()) return check_status_; \
  } while (false)

}  // namespace

absl::Status CheckCollectives(strategies::DistributedContext& ctx) {
  using strategies::ReduceOp;
  const int rank = ctx.rank();
  const int world = ctx.world_size();
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
  CHECK_OK(ExpectTrue(ctx.backend_name() == "gloo", "backend is " + ctx.backend_name()));

  CHECK_OK(ctx.Barrier());

  // Broadcast from the last rank.
  at::Tensor b = rank == world - 1 ? at::arange(10, f32) : at::zeros({10}, f32);
  CHECK_OK(ctx.Broadcast(b, world - 1));
  CHECK_OK(ExpectEqual(b, at::arange(10, f32), "broadcast from the last rank"));

  // All-reduce with every op; rank r contributes r + 1.
  const float sum = world * (world + 1) / 2.0f;
  struct Case {
    ReduceOp op;
    float expected;
    const char* name;
  };
  for (const Case& c : {Case{ReduceOp::kSum, sum, "sum"}, Case{ReduceOp::kAvg, sum / world, "avg"},
                        Case{ReduceOp::kMin, 1.0f, "min"},
                        Case{ReduceOp::kMax, static_cast<float>(world), "max"}}) {
    at::Tensor t = at::full({5}, rank + 1.0f, f32);
    CHECK_OK(ctx.AllReduce(t, c.op));
    CHECK_OK(ExpectEqual(t, at::full({5}, c.expected, f32), absl::StrCat("all_reduce ", c.name)));
  }
  // Integer sum, and a 4 MiB buffer (several Gloo chunks).
  at::Tensor ints = at::full({3}, static_cast<int64_t>(rank), at::kLong);
  CHECK_OK(ctx.AllReduce(ints, ReduceOp::kSum));
  CHECK_OK(ExpectEqual(ints, at::full({3}, static_cast<int64_t>(world * (world - 1) / 2), at::kLong),
                       "all_reduce of int64"));
  at::Tensor big = at::arange(1 << 20, f32) * (rank + 1);
  CHECK_OK(ctx.AllReduce(big));
  CHECK_OK(ExpectEqual(big, at::arange(1 << 20, f32) * sum, "all_reduce of 4 MiB"));

  // Integer average is refused locally (nothing sent), and the group stays usable.
  at::Tensor bad = at::ones({2}, at::kInt);
  absl::Status refused = ctx.AllReduce(bad, ReduceOp::kAvg);
  CHECK_OK(ExpectTrue(refused.code() == absl::StatusCode::kInvalidArgument,
                      "all_reduce(avg) of int32 should be InvalidArgument, got " + refused.ToString()));

  // Several asynchronous all-reduces in flight at once.
  std::vector<at::Tensor> buffers;
  std::vector<strategies::PendingCollective> pending;
  for (int i = 0; i < 4; ++i) {
    buffers.push_back(at::full({1000 * (i + 1)}, static_cast<float>(rank + i), f32));
    absl::StatusOr<strategies::PendingCollective> p = ctx.AllReduceAsync(buffers.back());
    if (!p.ok()) return p.status();
    pending.push_back(*p);
  }
  for (int i = 0; i < 4; ++i) {
    CHECK_OK(pending[i].Wait());
    CHECK_OK(pending[i].Wait());  // Idempotent.
    CHECK_OK(ExpectEqual(buffers[i],
                         at::full({1000 * (i + 1)}, world * (world - 1) / 2.0f + world * i, f32),
                         absl::StrCat("async all_reduce ", i)));
  }

  // All-gather: rank r sends a 2x3 tensor of r.
  absl::StatusOr<std::vector<at::Tensor>> gathered = ctx.AllGather(at::full({2, 3}, rank, f32));
  if (!gathered.ok()) return gathered.status();
  CHECK_OK(ExpectTrue(static_cast<int>(gathered->size()) == world, "all_gather count"));
  for (int r = 0; r < world; ++r) {
    CHECK_OK(ExpectEqual((*gathered)[r], at::full({2, 3}, r, f32), absl::StrCat("all_gather[", r, "]")));
  }

  // Reduce-scatter: input rows i are (i + rank); rank r gets rows 2r, 2r+1 summed.
  at::Tensor input = (at::arange(2 * world, f32) + rank).reshape({2 * world, 1}).repeat({1, 3});
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg}) {
    absl::StatusOr<at::Tensor> scattered = ctx.ReduceScatter(input, op);
    if (!scattered.ok()) return scattered.status();
    at::Tensor expected = (at::arange(2 * rank, 2 * rank + 2, f32) * world + sum - world)
                              .reshape({2, 1}).repeat({1, 3});
    if (op == ReduceOp::kAvg) expected = expected / world;
    CHECK_OK(ExpectEqual(*scattered, expected, op == ReduceOp::kSum ? "reduce_scatter sum"
                                                                     : "reduce_scatter avg"));
  }
  absl::StatusOr<at::Tensor> odd = ctx.ReduceScatter(at::ones({2 * world + 1}, f32));
  CHECK_OK(ExpectTrue(odd.status().code() == absl::StatusCode::kInvalidArgument,
                      "reduce_scatter of a non-multiple should be InvalidArgument"));

  // Bytes, with a NUL inside, from rank 0 and from the last rank; and empty.
  const std::string payload = std::string("meta\0data from rank 0 ", 22) + std::string(5000, 'x');
  absl::StatusOr<std::string> got = ctx.BroadcastBytes(rank == 0 ? payload : "ignored");
  if (!got.ok()) return got.status();
  CHECK_OK(ExpectTrue(*got == payload, "broadcast of bytes from rank 0"));
  got = ctx.BroadcastBytes(rank == world - 1 ? "last" : "", world - 1);
  if (!got.ok()) return got.status();
  CHECK_OK(ExpectTrue(*got == "last", "broadcast of bytes from the last rank: " + *got));
  got = ctx.BroadcastBytes("");
  if (!got.ok()) return got.status();
  CHECK_OK(ExpectTrue(got->empty(), "broadcast of empty bytes"));

  // Rank-zero helpers.
  absl::StatusOr<bool> all = ctx.ReduceBoolean(rank != world - 1, /*all=*/true);
  absl::StatusOr<bool> any = ctx.ReduceBoolean(rank == world - 1, /*all=*/false);
  if (!all.ok()) return all.status();
  if (!any.ok()) return any.status();
  CHECK_OK(ExpectTrue(!*all && *any, "ReduceBoolean"));

  // The directory is shared by all ranks of this job (same MASTER_PORT).
  const std::string marker =
      TempPath(absl::StrCat("rank_zero_first_", ctx.cluster().master_port));
  CHECK_OK(ctx.RankZeroFirst([&]() -> absl::Status {
    if (ctx.is_rank_zero()) return WriteFile(marker, "made by rank 0");
    std::ifstream in(marker);
    std::stringstream text;
    text << in.rdbuf();
    return ExpectTrue(text.str() == "made by rank 0", "rank 0 ran first");
  }));
  absl::Status failed = ctx.RankZeroFirst([&]() -> absl::Status {
    if (ctx.is_rank_zero()) return absl::NotFoundError("no dataset");
    return absl::InternalError("must not run after rank 0 failed");
  });
  CHECK_OK(ExpectTrue(failed.message().find("no dataset") != std::string::npos,
                      "RankZeroFirst error: " + failed.ToString()));
  // One error policy: rank 0's code on every rank, and which rank failed.
  CHECK_OK(ExpectTrue(failed.code() == absl::StatusCode::kNotFound,
                      "RankZeroFirst keeps rank 0's code: " + failed.ToString()));
  CHECK_OK(ExpectTrue(rank == 0 || failed.message().find("rank 0 failed") != std::string::npos,
                      "RankZeroFirst names rank 0: " + failed.ToString()));

  // ShareStatus: the root's verdict everywhere; AgreeOnStatus: any rank's.
  CHECK_OK(ctx.ShareStatus(rank == 0 ? absl::OkStatus() : absl::InternalError("ignored")));
  absl::Status shared = ctx.ShareStatus(
      rank == world - 1 ? absl::PermissionDeniedError("read-only folder") : absl::OkStatus(),
      world - 1);
  CHECK_OK(ExpectTrue(shared.code() == absl::StatusCode::kPermissionDenied &&
                          shared.message().find("read-only folder") != std::string::npos &&
                          (rank == world - 1 ||
                           shared.message().find(absl::StrCat("rank ", world - 1, " failed")) !=
                               std::string::npos),
                      "ShareStatus from the last rank: " + shared.ToString()));
  CHECK_OK(ctx.AgreeOnStatus(absl::OkStatus()));
  absl::Status agreed = ctx.AgreeOnStatus(
      rank == world - 1 ? absl::ResourceExhaustedError("disk full") : absl::OkStatus());
  CHECK_OK(ExpectTrue(agreed.code() == absl::StatusCode::kResourceExhausted &&
                          agreed.message().find("disk full") != std::string::npos,
                      "AgreeOnStatus: " + agreed.ToString()));
  absl::StatusOr<std::vector<std::string>> gathered_bytes =
      ctx.AllGatherBytes(std::string(static_cast<size_t>(rank), 'x'));
  if (!gathered_bytes.ok()) return gathered_bytes.status();
  bool lengths_ok = gathered_bytes->size() == static_cast<size_t>(world);
  for (int r = 0; lengths_ok && r < world; ++r) {
    lengths_ok = (*gathered_bytes)[r] == std::string(static_cast<size_t>(r), 'x');
  }
  CHECK_OK(ExpectTrue(lengths_ok, "AllGatherBytes of every rank's bytes"));
  return ctx.Barrier();
}

}  // namespace fabric::testing
