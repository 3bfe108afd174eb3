# `cmake --install build [--prefix DIR]`: the libraries, their headers (under include/infer,
# so that #include "actors/service.hpp" works as in the tree), a CMake package and a
# pkg-config file.
#
#   find_package(infer CONFIG REQUIRED)                       # CMAKE_PREFIX_PATH=DIR
#   target_link_libraries(app PRIVATE infer::service)         # the embedded API
#   target_link_libraries(app PRIVATE infer::server)          # plus the HTTP/WebSocket server
#
#   pkg-config --cflags --libs infer                          # PKG_CONFIG_PATH=DIR/lib/pkgconfig
include(CMakePackageConfigHelpers)

get_property(_infer_libs GLOBAL PROPERTY INFER_LIBRARIES)
list(REMOVE_ITEM _infer_libs infer_fuzz_entry)
list(REMOVE_DUPLICATES _infer_libs)
set_target_properties(infer_actors PROPERTIES EXPORT_NAME service)
if(TARGET infer_net)
  set_target_properties(infer_net PROPERTIES EXPORT_NAME server)
endif()
# infer_warnings and infer_toml are link-only / header dependencies of the static libraries:
# the export names them, so they are installed too (the patched toml++ copy with them).
install(TARGETS ${_infer_libs} infer_warnings infer_toml EXPORT inferTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/infer)
foreach(_dir base engine grammar kernels model tokenizer template config gpu actors supervision net web)
  if(EXISTS ${PROJECT_SOURCE_DIR}/${_dir})
    install(DIRECTORY ${PROJECT_SOURCE_DIR}/${_dir}/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/infer/${_dir}
            FILES_MATCHING PATTERN "*.hpp" PATTERN "*.h" PATTERN "*.cuh")
  endif()
endforeach()
install(DIRECTORY ${PROJECT_BINARY_DIR}/toml-patched/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/infer/third_party/toml-patched)

set(_infer_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/infer)
install(EXPORT inferTargets NAMESPACE infer:: DESTINATION ${_infer_cmake_dir})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/inferConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/inferConfig.cmake INSTALL_DESTINATION ${_infer_cmake_dir})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/inferConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/inferConfig.cmake ${PROJECT_BINARY_DIR}/inferConfigVersion.cmake
              ${CMAKE_CURRENT_LIST_DIR}/infer-system-deps.cmake
        DESTINATION ${_infer_cmake_dir})

# pkg-config: static libraries, so every one and every dependency is listed, in link order.
set(INFER_PC_LIBS "-linfer_actors -linfer_config -linfer_supervision -linfer_template")
if(INFER_CUDA)
  string(APPEND INFER_PC_LIBS " -linfer_gpu -linfer_cuda_kernels")
endif()
string(APPEND INFER_PC_LIBS " -linfer_engine -linfer_grammar -linfer_model -linfer_base -linfer_tokenizer -linfer_kernels")
set(INFER_PC_DEPS "-l:${CAF_OPENSSL_LIB} -l:${CAF_IO_LIB} -l:${CAF_CORE_LIB} -l:${OPENBLAS_LIB} -l:${PCRE2_LIB} -l:${UTF8PROC_LIB}")
string(REPLACE "-l:/" "/" INFER_PC_DEPS "${INFER_PC_DEPS}")
set(INFER_PC_CFLAGS "-I\${includedir}/infer -I\${includedir}/infer/third_party/toml-patched -DTOML_HEADER_ONLY=1 -I${CBLAS_INCLUDE_DIR}")
if(INFER_CUDA)
  string(APPEND INFER_PC_CFLAGS " -DINFER_HAVE_CUDA=1 -I${CUDAToolkit_INCLUDE_DIRS}")
  string(APPEND INFER_PC_DEPS " -L${CUDAToolkit_LIBRARY_DIR} -lcublasLt -lcudart")
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/infer.pc.in ${PROJECT_BINARY_DIR}/infer.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/infer.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
