// Hugging Face weights into an FSDP-sharded module: a safetensors checkpoint
// (one file or a sharded folder) holds full tensors; each rank reads only the
// rows of dim 0 it owns (strategies/fsdp.h's layout) straight into its shard,
// and the module's unsharded buffers whole. Not a collective: every rank
// reads on its own, at the memory of its shards.
#ifndef FABRIC_STRATEGIES_FSDP_SAFETENSORS_H_
#define FABRIC_STRATEGIES_FSDP_SAFETENSORS_H_

#include "absl/status/statusor.h"
#include "checkpoint/load_report.h"
#include "checkpoint/safetensors_index.h"
#include "strategies/fsdp.h"

namespace fabric::strategies {

// Keys are the wrapped module's state-dict names. With `strict`, every
// missing and unexpected key is listed in one error; shape mismatches are
// always errors; nothing is read before everything is checked. Gathered
// units are resharded first, so the next forward gathers the new weights.
absl::StatusOr<StateLoadReport> FsdpLoadSafetensors(FullyShardedDataParallel& fsdp,
                                                    const SafetensorsCheckpoint& checkpoint,
                                                    bool strict);

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_FSDP_SAFETENSORS_H_
