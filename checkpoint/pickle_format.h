// What the pickle writer and reader share: the opcodes, and how a persistent
// id that is not a tensor is kept as a Value.
#ifndef FABRIC_CHECKPOINT_PICKLE_FORMAT_H_
#define FABRIC_CHECKPOINT_PICKLE_FORMAT_H_

#include <cstdint>

#include "checkpoint/value.h"

namespace fabric::pickle {

// Opcodes, as named in CPython's Lib/pickle.py.
enum Op : uint8_t {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F',
  INT = 'I', BININT = 'J', BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N',
  PERSID = 'P', BINPERSID = 'Q', REDUCE = 'R', STRING = 'S', BINSTRING = 'T',
  SHORT_BINSTRING = 'U', UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a',
  BUILD = 'b', GLOBAL = 'c', DICT = 'd', EMPTY_DICT = '}', APPENDS = 'e',
  GET = 'g', BINGET = 'h', INST = 'i', LONG_BINGET = 'j', LIST = 'l',
  EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q', LONG_BINPUT = 'r',
  SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
  // Protocol 2.
  PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84,
  TUPLE1 = 0x85, TUPLE2 = 0x86, TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89,
  LONG1 = 0x8a, LONG4 = 0x8b,
  // Protocol 3.
  BINBYTES = 'B', SHORT_BINBYTES = 'C',
  // Protocol 4.
  SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e, EMPTY_SET = 0x8f,
  ADDITEMS = 0x90, FROZENSET = 0x91, NEWOBJ_EX = 0x92, STACK_GLOBAL = 0x93,
  MEMOIZE = 0x94, FRAME = 0x95,
  // Protocol 5.
  BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97, READONLY_BUFFER = 0x98,
};

// A persistent id (pickle's PERSID/BINPERSID) that the reader did not turn
// into a tensor, e.g. a bare storage: an Object with this callable and the id
// as its only arg. The writer writes such Objects back as persistent ids.
inline Global PersistentIdCallable() { return Global{"__fabric_pickle__", "persistent_id"}; }

inline bool IsPersistentId(const Value& v) {
  return v.is_object() && v.as_object().callable == PersistentIdCallable();
}

}  // namespace fabric::pickle

#endif  // FABRIC_CHECKPOINT_PICKLE_FORMAT_H_
