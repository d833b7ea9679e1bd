#include "checkpoint/pickle_text.h"

#include <cstdint>

#include "absl/status/status.h"

namespace fabric::pickle {
namespace {

bool HexDigit(char c, uint32_t* v) {
  if (c >= '0' && c <= '9') *v = static_cast<uint32_t>(c - '0');
  else if (c >= 'a' && c <= 'f') *v = static_cast<uint32_t>(c - 'a' + 10);
  else if (c >= 'A' && c <= 'F') *v = static_cast<uint32_t>(c - 'A' + 10);
  else return false;
  return true;
}

bool ParseHex(std::string_view s, uint32_t* v) {
  *v = 0;
  for (char c : s) {
    uint32_t d;
    if (!HexDigit(c, &d)) return false;
    *v = *v * 16 + d;
  }
  return true;
}

}  // namespace

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
}

std::optional<std::string> Utf8ToLatin1(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else if ((c & 0xe0) == 0xc0 && i + 1 < s.size() &&
               (static_cast<uint8_t>(s[i + 1]) & 0xc0) == 0x80) {
      const uint32_t cp = ((c & 0x1fu) << 6) | (static_cast<uint8_t>(s[i + 1]) & 0x3fu);
      if (cp > 0xff) return std::nullopt;
      out.push_back(static_cast<char>(cp));
      ++i;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

absl::StatusOr<std::string> DecodePythonStringLiteral(std::string_view line) {
  std::string out;
  if (line.size() < 2 || (line.front() != '\'' && line.front() != '"') ||
      line.back() != line.front()) {
    return absl::InvalidArgumentError("STRING argument is not quoted");
  }
  line = line.substr(1, line.size() - 2);
  for (size_t i = 0; i < line.size(); ++i) {
    if (line[i] != '\\') {
      out.push_back(line[i]);
      continue;
    }
    if (++i >= line.size()) return absl::InvalidArgumentError("bad escape in STRING");
    const char c = line[i];
    switch (c) {
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'a': out.push_back('\a'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'v': out.push_back('\v'); break;
      case '\\': case '\'': case '"': out.push_back(c); break;
      case 'x': {
        uint32_t v;
        if (line.size() - i < 3 || !ParseHex(line.substr(i + 1, 2), &v)) {
          return absl::InvalidArgumentError("bad \\x escape in STRING");
        }
        out.push_back(static_cast<char>(v));
        i += 2;
        break;
      }
      default:
        if (c >= '0' && c <= '7') {
          uint32_t v = 0;
          size_t k = 0;
          while (k < 3 && i + k < line.size() && line[i + k] >= '0' && line[i + k] <= '7') {
            v = v * 8 + static_cast<uint32_t>(line[i + k] - '0');
            ++k;
          }
          out.push_back(static_cast<char>(v & 0xff));
          i += k - 1;
        } else {
          out.push_back('\\');
          out.push_back(c);
        }
    }
  }
  return out;
}

absl::StatusOr<std::string> DecodeRawUnicodeEscape(std::string_view line) {
  std::string out;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (c == '\\' && i + 1 < line.size() && (line[i + 1] == 'u' || line[i + 1] == 'U')) {
      const size_t digits = line[i + 1] == 'u' ? 4 : 8;
      uint32_t cp;
      if (line.size() - i - 2 < digits || !ParseHex(line.substr(i + 2, digits), &cp) ||
          cp > 0x10ffff) {
        return absl::InvalidArgumentError("bad \\u escape in UNICODE");
      }
      AppendUtf8(cp, &out);
      i += 1 + digits;
    } else {
      AppendUtf8(static_cast<uint8_t>(c), &out);
    }
  }
  return out;
}

}  // namespace fabric::pickle
