// EnvSwitchOn: the project's on/off switches in the environment
// (FABRIC_DIRECT_READS, FABRIC_HUGE_PAGES), one rule for all of them: a
// switch is on unless it is set to "0".
#ifndef FABRIC_BASE_ENV_SWITCH_H_
#define FABRIC_BASE_ENV_SWITCH_H_

#include <cstdlib>
#include <cstring>

namespace fabric {

inline bool EnvSwitchOn(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr || std::strcmp(value, "0") != 0;
}

}  // namespace fabric

#endif  // FABRIC_BASE_ENV_SWITCH_H_
