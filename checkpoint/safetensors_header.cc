#include "checkpoint/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <limits>
#include <set>
#include <unordered_set>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/little_endian.h"

namespace fabric {
namespace {

struct DtypeRow {
  const char* name;
  std::optional<at::ScalarType> dtype;  // nullopt: LibTorch has no such type
  int bits;
};

// The reference's Dtype enum, in its order: the writer sorts by this order,
// descending, so that wider (more aligned) types come first.
const DtypeRow kDtypes[] = {
    {"BOOL", at::kBool, 8},
    {"F4", std::nullopt, 4},
    {"F6_E2M3", std::nullopt, 6},
    {"F6_E3M2", std::nullopt, 6},
    {"U8", at::kByte, 8},
    {"I8", at::kChar, 8},
    {"F8_E5M2", at::kFloat8_e5m2, 8},
    {"F8_E4M3", at::kFloat8_e4m3fn, 8},
    {"F8_E8M0", at::kFloat8_e8m0fnu, 8},
    {"F8_E4M3FNUZ", at::kFloat8_e4m3fnuz, 8},
    {"F8_E5M2FNUZ", at::kFloat8_e5m2fnuz, 8},
    {"I16", at::kShort, 16},
    {"U16", at::kUInt16, 16},
    {"F16", at::kHalf, 16},
    {"BF16", at::kBFloat16, 16},
    {"I32", at::kInt, 32},
    {"U32", at::kUInt32, 32},
    {"F32", at::kFloat, 32},
    {"C64", at::kComplexFloat, 64},
    {"F64", at::kDouble, 64},
    {"I64", at::kLong, 64},
    {"U64", at::kUInt64, 64},
};

int DtypeRank(at::ScalarType dtype) {
  for (size_t i = 0; i < std::size(kDtypes); ++i) {
    if (kDtypes[i].dtype == dtype) return static_cast<int>(i);
  }
  return -1;
}

absl::Status Bad(const std::string& file, const std::string& what) {
  return absl::DataLossError(absl::StrCat("'", file, "': ", what));
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

// numel * itemsize, or nullopt on overflow.
std::optional<uint64_t> ByteSize(const std::vector<int64_t>& shape, at::ScalarType dtype) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    const uint64_t u = static_cast<uint64_t>(d);
    if (u != 0 && n > std::numeric_limits<uint64_t>::max() / u) return std::nullopt;
    n *= u;
  }
  const uint64_t item = c10::elementSize(dtype);
  if (n != 0 && item > std::numeric_limits<uint64_t>::max() / n) return std::nullopt;
  return n * item;
}

// An unsigned JSON integer that fits int64 (shapes) or uint64 (offsets).
std::optional<uint64_t> Unsigned(const nlohmann::json& v) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0)) {
    return std::nullopt;
  }
  return v.get<uint64_t>();
}

absl::StatusOr<SafetensorsTensorInfo> ParseTensor(const std::string& name,
                                                  const nlohmann::json& v,
                                                  const std::string& file) {
  const std::string where = absl::StrCat("tensor '", name, "'");
  if (!v.is_object()) {
    return Bad(file, absl::StrCat(where, ": expected an object with dtype, shape and "
                                  "data_offsets, got ", v.type_name()));
  }
  SafetensorsTensorInfo info;
  info.name = name;
  auto dtype = v.find("dtype");
  if (dtype == v.end() || !dtype->is_string()) {
    return Bad(file, absl::StrCat(where, ": missing or non-string \"dtype\""));
  }
  absl::StatusOr<at::ScalarType> st = SafetensorsDtypeFromName(dtype->get<std::string>());
  if (!st.ok()) return Bad(file, absl::StrCat(where, ": ", st.status().message()));
  info.dtype = *st;
  auto shape = v.find("shape");
  if (shape == v.end() || !shape->is_array()) {
    return Bad(file, absl::StrCat(where, ": missing or non-array \"shape\""));
  }
  for (const nlohmann::json& d : *shape) {
    std::optional<uint64_t> u = Unsigned(d);
    if (!u || *u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Bad(file, absl::StrCat(where, ": shape ", shape->dump(),
                                    " holds something other than a non-negative integer"));
    }
    info.shape.push_back(static_cast<int64_t>(*u));
  }
  auto offsets = v.find("data_offsets");
  if (offsets == v.end() || !offsets->is_array() || offsets->size() != 2) {
    return Bad(file, absl::StrCat(where, ": missing \"data_offsets\" [begin, end]"));
  }
  std::optional<uint64_t> b = Unsigned((*offsets)[0]), e = Unsigned((*offsets)[1]);
  if (!b || !e) {
    return Bad(file, absl::StrCat(where, ": data_offsets ", offsets->dump(),
                                  " are not two non-negative integers"));
  }
  info.begin = *b;
  info.end = *e;
  return info;
}

}  // namespace

int64_t SafetensorsTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::optional<std::string> SafetensorsDtypeName(at::ScalarType dtype) {
  const int r = DtypeRank(dtype);
  if (r < 0) return std::nullopt;
  return std::string(kDtypes[r].name);
}

absl::StatusOr<at::ScalarType> SafetensorsDtypeFromName(std::string_view name) {
  for (const DtypeRow& row : kDtypes) {
    if (name != row.name) continue;
    if (!row.dtype) {
      return absl::UnimplementedError(absl::StrCat(
          "dtype ", std::string(name), " (", row.bits, "-bit) is valid safetensors but LibTorch has no "
          "such tensor type"));
    }
    return *row.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype \"", std::string(name), "\""));
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view json,
                                                         uint64_t data_bytes,
                                                         const std::string& file) {
  // Names at the top level, seen by the parser before nlohmann's object
  // (a std::map) would keep only one of two equal keys.
  std::unordered_set<std::string> seen;
  std::string duplicate;
  auto on_event = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && duplicate.empty() &&
        !seen.insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(json.begin(), json.end(), on_event);
  } catch (const nlohmann::json::exception& e) {
    // Bad UTF-8 lands here too (the parser validates strings).
    return Bad(file, absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return Bad(file, absl::StrCat("header JSON is a ", root.type_name(),
                                  ", not an object of tensors"));
  }
  if (!duplicate.empty()) {
    return Bad(file, absl::StrCat("tensor '", duplicate, "' appears twice in the header"));
  }
  SafetensorsHeader header;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) {
        return Bad(file, absl::StrCat("__metadata__ is a ", it->type_name(),
                                      ", not an object of strings"));
      }
      std::map<std::string, std::string> md;
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return Bad(file, absl::StrCat("__metadata__ entry '", m.key(), "' is a ",
                                        m->type_name(), ", not a string"));
        }
        md[m.key()] = m->get<std::string>();
      }
      header.metadata = std::move(md);
      continue;
    }
    FABRIC_ASSIGN_OR_RETURN(SafetensorsTensorInfo info, ParseTensor(it.key(), *it, file));
    header.tensors.push_back(std::move(info));
  }
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              return std::make_pair(a.begin, a.end) < std::make_pair(b.begin, b.end);
            });
  uint64_t at = 0;
  const SafetensorsTensorInfo* previous = nullptr;
  for (const SafetensorsTensorInfo& t : header.tensors) {
    const std::string where = absl::StrCat("tensor '", t.name, "': data_offsets [", t.begin,
                                           ", ", t.end, "]");
    if (t.end < t.begin) return Bad(file, absl::StrCat(where, " end before begin"));
    if (t.begin < at) {
      return Bad(file, absl::StrCat(where, " overlap tensor '", previous->name, "' [",
                                    previous->begin, ", ", previous->end, "]"));
    }
    if (t.begin > at) {
      return Bad(file, absl::StrCat(where, " leave a gap: the previous tensor ends at ", at));
    }
    if (t.end > data_bytes) {
      return Bad(file, absl::StrCat(where, " lie beyond the data section (", data_bytes,
                                    " bytes)"));
    }
    std::optional<uint64_t> need = ByteSize(t.shape, t.dtype);
    if (!need) {
      return Bad(file, absl::StrCat("tensor '", t.name, "': shape ", ShapeText(t.shape),
                                    " overflows"));
    }
    if (*need != t.nbytes()) {
      return Bad(file, absl::StrCat(where, " hold ", t.nbytes(), " bytes, but dtype ",
                                    *SafetensorsDtypeName(t.dtype), " shape ",
                                    ShapeText(t.shape), " needs ", *need));
    }
    at = t.end;
    previous = &t;
  }
  if (at != data_bytes) {
    return Bad(file, absl::StrCat("the tensors cover ", at, " bytes of the data section, but it "
                                  "holds ", data_bytes, " (trailing bytes)"));
  }
  return header;
}

absl::StatusOr<std::string> LayOutSafetensors(SafetensorsHeader& header) {
  std::set<std::string> names;
  for (const SafetensorsTensorInfo& t : header.tensors) {
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' is given twice"));
    }
    if (t.name == "__metadata__") {
      return absl::InvalidArgumentError("a tensor cannot be called '__metadata__'");
    }
    if (!SafetensorsDtypeName(t.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': dtype ",
                                                     c10::toString(t.dtype),
                                                     " has no safetensors name"));
    }
    if (!ByteSize(t.shape, t.dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "': bad shape ", ShapeText(t.shape)));
    }
  }
  std::stable_sort(header.tensors.begin(), header.tensors.end(),
                   [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
                     const int ra = DtypeRank(a.dtype), rb = DtypeRank(b.dtype);
                     if (ra != rb) return ra > rb;
                     return a.name < b.name;  // bytewise, as Rust's String order
                   });
  nlohmann::ordered_json root = nlohmann::ordered_json::object();
  if (header.metadata) {
    nlohmann::ordered_json md = nlohmann::ordered_json::object();
    for (const auto& [k, v] : *header.metadata) md[k] = v;
    root["__metadata__"] = std::move(md);
  }
  uint64_t offset = 0;
  for (SafetensorsTensorInfo& t : header.tensors) {
    t.begin = offset;
    t.end = offset + *ByteSize(t.shape, t.dtype);
    offset = t.end;
    nlohmann::ordered_json info = nlohmann::ordered_json::object();
    info["dtype"] = *SafetensorsDtypeName(t.dtype);
    info["shape"] = t.shape;
    info["data_offsets"] = {t.begin, t.end};
    root[t.name] = std::move(info);
  }
  std::string json;
  try {
    json = root.dump();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("a tensor name or metadata string is not valid UTF-8: ", e.what()));
  }
  json.resize((json.size() + 7) / 8 * 8, ' ');
  if (json.size() > kSafetensorsMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the header would be ", json.size(),
                                                   " bytes, over the format's limit of ",
                                                   kSafetensorsMaxHeaderBytes));
  }
  std::string out;
  little_endian::Append(&out, json.size(), 8);
  out += json;
  return out;
}

}  // namespace fabric
