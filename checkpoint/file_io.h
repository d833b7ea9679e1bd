// Transitional umbrella for the byte layer's file headers, so that code
// written against the old all-in-one header keeps building. New code includes
// what it uses: byte_sink.h, atomic_file_writer.h, file_reader.h, fs_util.h.
#ifndef FABRIC_CHECKPOINT_FILE_IO_H_
#define FABRIC_CHECKPOINT_FILE_IO_H_

#include "checkpoint/atomic_file_writer.h"
#include "checkpoint/byte_sink.h"
#include "checkpoint/file_reader.h"
#include "checkpoint/fs_util.h"

#endif  // FABRIC_CHECKPOINT_FILE_IO_H_
