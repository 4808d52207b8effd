# zig's clang for ARMv7-A Cortex-A17 (NEON + VFPv4, hard float), linking against glibc 2.17's
# symbol versions and libc++ statically: the bundle runs on any armhf Linux with glibc >= 2.17.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(CMAKE_C_COMPILER ${CMAKE_CURRENT_LIST_DIR}/zig/cc)
set(CMAKE_CXX_COMPILER ${CMAKE_CURRENT_LIST_DIR}/zig/c++)
set(CMAKE_AR arm-linux-gnueabihf-ar CACHE FILEPATH "")
set(CMAKE_RANLIB arm-linux-gnueabihf-ranlib CACHE FILEPATH "")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-Wl,--version-script=${CMAKE_CURRENT_LIST_DIR}/zig/hide_cxx.map")
