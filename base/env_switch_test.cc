#include "base/env_switch.h"

#include <cstdlib>

#include "gtest/gtest.h"

namespace fabric {
namespace {

TEST(EnvSwitchTest, OnUnlessZero) {
  const char* name = "FABRIC_ENV_SWITCH_TEST";
  unsetenv(name);
  EXPECT_TRUE(EnvSwitchOn(name));
  setenv(name, "0", 1);
  EXPECT_FALSE(EnvSwitchOn(name));
  setenv(name, "1", 1);
  EXPECT_TRUE(EnvSwitchOn(name));
  setenv(name, "", 1);
  EXPECT_TRUE(EnvSwitchOn(name));
  unsetenv(name);
}

}  // namespace
}  // namespace fabric
