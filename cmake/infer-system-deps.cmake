# CAF 0.17, OpenBLAS, PCRE2 and utf8proc (Debian packages without CMake packages) as imported
# targets. Included by cmake/deps.cmake and by the installed inferConfig.cmake; a project that
# defined these targets already keeps its own.
if(TARGET caf::core)
  return()
endif()
find_package(Threads REQUIRED)
find_package(OpenSSL REQUIRED)
find_library(CAF_CORE_LIB caf_core REQUIRED)
find_library(CAF_IO_LIB caf_io REQUIRED)
find_library(CAF_OPENSSL_LIB caf_openssl REQUIRED)
find_package(OpenSSL REQUIRED)
find_path(CAF_INCLUDE_DIR caf/all.hpp REQUIRED)
add_library(caf::core INTERFACE IMPORTED GLOBAL)
target_link_libraries(caf::core INTERFACE ${CAF_CORE_LIB} Threads::Threads)
target_include_directories(caf::core INTERFACE ${CAF_INCLUDE_DIR})
add_library(caf::io INTERFACE IMPORTED GLOBAL)
target_link_libraries(caf::io INTERFACE ${CAF_IO_LIB} caf::core)
add_library(caf::openssl INTERFACE IMPORTED GLOBAL)
target_link_libraries(caf::openssl INTERFACE ${CAF_OPENSSL_LIB} caf::io OpenSSL::SSL OpenSSL::Crypto)

find_library(OPENBLAS_LIB openblas REQUIRED)
find_path(CBLAS_INCLUDE_DIR cblas.h PATHS /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas REQUIRED)
add_library(openblas::openblas INTERFACE IMPORTED GLOBAL)
target_link_libraries(openblas::openblas INTERFACE ${OPENBLAS_LIB})
target_include_directories(openblas::openblas INTERFACE ${CBLAS_INCLUDE_DIR})

find_library(PCRE2_LIB pcre2-8 REQUIRED)
find_path(PCRE2_INCLUDE_DIR pcre2.h REQUIRED)
add_library(pcre2::pcre2 INTERFACE IMPORTED GLOBAL)
target_link_libraries(pcre2::pcre2 INTERFACE ${PCRE2_LIB})
target_include_directories(pcre2::pcre2 INTERFACE ${PCRE2_INCLUDE_DIR})

# utf8proc (libutf8proc-dev): Unicode normalization (NFC, NFKC, ...) and categories for
# tokenizer.json normalizers and pre-tokenizers.
find_library(UTF8PROC_LIB utf8proc REQUIRED)
find_path(UTF8PROC_INCLUDE_DIR utf8proc.h REQUIRED)
add_library(utf8proc::utf8proc INTERFACE IMPORTED GLOBAL)
target_link_libraries(utf8proc::utf8proc INTERFACE ${UTF8PROC_LIB})
target_include_directories(utf8proc::utf8proc INTERFACE ${UTF8PROC_INCLUDE_DIR})
