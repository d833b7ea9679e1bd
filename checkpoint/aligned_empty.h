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
//
// A VM whose balloon reports free memory to its host (virtio-balloon free
// page reporting, as on this project's machines) turns that round: a huge
// page freed a few seconds earlier has gone back to the host, and touching it
// again costs ~1 s per GiB against 0.35 s in 4 KiB pages, which come from
// blocks the guest kept. There the first load of a process (a resume) is
// faster without the advice: FABRIC_HUGE_PAGES=0, or SetHugePages(false).
#ifndef FABRIC_CHECKPOINT_ALIGNED_EMPTY_H_
#define FABRIC_CHECKPOINT_ALIGNED_EMPTY_H_

#include <ATen/ATen.h>

namespace fabric {

// Throws c10::OutOfMemoryError where the memory cannot be had, as at::empty.
at::Tensor AlignedEmpty(at::IntArrayRef sizes, at::ScalarType dtype);

// Whether buffers of 4 MiB or more are advised for huge pages (on unless
// FABRIC_HUGE_PAGES=0 is in the environment at start). Buffers already
// allocated keep what they had.
void SetHugePages(bool on);
bool HugePagesEnabled();

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_ALIGNED_EMPTY_H_
