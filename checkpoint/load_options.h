// LoadOptions: how every load reads a checkpoint (FabricOptions and the CLI
// set it; strategies, TorchFile and the DCP reader follow it).
#ifndef FABRIC_CHECKPOINT_LOAD_OPTIONS_H_
#define FABRIC_CHECKPOINT_LOAD_OPTIONS_H_

#include <functional>

#include "absl/status/status.h"

namespace fabric {

struct LoadOptions {
  // Check every byte a load reads: each zip record against its archive's
  // CRC-32 (single files, every DCP item, meta.pt), and DCP items against the
  // item CRC our writer records in .metadata. A mismatch is DataLoss naming
  // the file, the state-dict key and the byte range, and the live model and
  // optimizer are left as they were. Off: records are not checksummed (the
  // structural checks of zip, pickle and .metadata stay).
  bool verify_checksums = true;
  // Read optimizer state straight into the optimizer's current buffers where
  // they fit: a reload needs no new memory, but a load refused partway leaves
  // them partly read. Off (Fabric's all-or-nothing loads): the state is read
  // into new tensors, installed only after all of it was read and checked,
  // and before the modules' tensors are read; the old state stays intact
  // without a copy (StateSnapshot then only keeps references to it).
  bool into_live_optimizer_buffers = true;
  // Called, when set, once before the load first writes into a live tensor
  // (a module's parameters, buffers or FSDP shards; with
  // into_live_optimizer_buffers also the optimizer's buffers); its error
  // fails the load with nothing written. Fabric::Load waits here for its
  // snapshot's copies, which thus overlap the reads before (BackgroundCopies).
  std::function<absl::Status()> before_live_writes;
};

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_LOAD_OPTIONS_H_
