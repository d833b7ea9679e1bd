// AlignedEmpty: an uninitialized CPU tensor for a load to read into. Big ones
// (1 MiB or more) start at a 4 KiB boundary, as their data does in the files
// this project writes, so FileReader can read them with O_DIRECT straight
// from the disk; at::empty's 64-byte alignment would send them through the
// page cache. Small ones come from at::empty.
#ifndef FABRIC_CHECKPOINT_ALIGNED_EMPTY_H_
#define FABRIC_CHECKPOINT_ALIGNED_EMPTY_H_

#include <ATen/ATen.h>

namespace fabric {

// Throws c10::OutOfMemoryError where the memory cannot be had, as at::empty.
at::Tensor AlignedEmpty(at::IntArrayRef sizes, at::ScalarType dtype);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_ALIGNED_EMPTY_H_
