#include "strategies/fsdp_checkpoint_options.h"

#include <utility>

#include "strategies/fsdp.h"

namespace fabric::strategies {

FsdpWrapperOf WrapperLookup(std::vector<FullyShardedDataParallel*> wrappers) {
  return [wrappers = std::move(wrappers)](const torch::nn::Module& m) -> FullyShardedDataParallel* {
    for (FullyShardedDataParallel* f : wrappers) {
      if (f != nullptr && &f->module() == &m) return f;
    }
    return nullptr;
  };
}

}  // namespace fabric::strategies
