// AlignedEmpty: an uninitialized CPU tensor for a load to read into. Big ones
// (1 MiB or more) start at a 4 KiB boundary, as their data does in the files
// this project writes, so FileReader can read them with O_DIRECT straight
// from the disk; at::empty's 64-byte alignment would send them through the
// page cache. Small ones come from at::empty.
//
// From 4 MiB up they are their own mapping, 2 MiB aligned and advised for
// transparent huge pages: a load into new memory (an all-or-nothing load's
// optimizer state, a snapshot's copies) otherwise spends more CPU faulting
// in 4 KiB pages than checking CRCs (measured: 0.51 s against 0.18 s to
// first-touch 1.4 GB here; docs/benchmarks.md). Where THP is off the advice
// is ignored and the tensor is simply page aligned.
#ifndef FABRIC_CHECKPOINT_ALIGNED_EMPTY_H_
#define FABRIC_CHECKPOINT_ALIGNED_EMPTY_H_

#include <ATen/ATen.h>

namespace fabric {

// Throws c10::OutOfMemoryError where the memory cannot be had, as at::empty.
at::Tensor AlignedEmpty(at::IntArrayRef sizes, at::ScalarType dtype);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_ALIGNED_EMPTY_H_
