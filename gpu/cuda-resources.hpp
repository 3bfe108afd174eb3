// cuda_resources: RAII owners of CUDA objects (device and pinned memory, stream, event,
// graph, cuBLASLt handle) and the checks that turn CUDA / cuBLAS failures into
// infer::status (errc::device_error, errc::out_of_memory). Nothing here throws or exits:
// a fault travels up as a value to the worker that owns the backend.
#pragma once
#include <cstddef>
#include <string>
#include <utility>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "base/result.hpp"

namespace infer::gpu {

status cuda_status(cudaError_t e, const char* what, const char* file, int line);
status cublas_status(cublasStatus_t s, const char* what, const char* file, int line);

#define INFER_CUDA_TRY(expr)                                                          \
  do {                                                                                \
    const cudaError_t infer_e_ = (expr);                                              \
    if (infer_e_ != cudaSuccess)                                                      \
      return ::infer::gpu::cuda_status(infer_e_, #expr, __FILE__, __LINE__);          \
  } while (0)

#define INFER_CUBLAS_TRY(expr)                                                        \
  do {                                                                                \
    const cublasStatus_t infer_s_ = (expr);                                           \
    if (infer_s_ != CUBLAS_STATUS_SUCCESS)                                            \
      return ::infer::gpu::cublas_status(infer_s_, #expr, __FILE__, __LINE__);        \
  } while (0)

#define INFER_STATUS_TRY(expr)             \
  do {                                     \
    ::infer::status infer_st_ = (expr);    \
    if (!infer_st_) return infer_st_;      \
  } while (0)

// Number of usable CUDA devices, 0 where there is no driver or no device.
int cuda_device_count();

// Device memory, uninitialised.
class device_buffer {
 public:
  device_buffer() = default;
  ~device_buffer() { reset(); }
  device_buffer(device_buffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  device_buffer& operator=(device_buffer&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;

  status allocate(size_t bytes);  // frees what it held first
  void reset();
  void* get() const { return p_; }
  template <class T>
  T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

// Page-locked host memory: the staging area of asynchronous copies.
class pinned_buffer {
 public:
  pinned_buffer() = default;
  ~pinned_buffer() { reset(); }
  pinned_buffer(pinned_buffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  pinned_buffer& operator=(pinned_buffer&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  pinned_buffer(const pinned_buffer&) = delete;
  pinned_buffer& operator=(const pinned_buffer&) = delete;

  status allocate(size_t bytes);
  void reset();
  void* get() const { return p_; }
  template <class T>
  T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

class cuda_stream {
 public:
  cuda_stream() = default;
  ~cuda_stream() { reset(); }
  cuda_stream(cuda_stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  cuda_stream& operator=(cuda_stream&& o) noexcept {
    if (this != &o) {
      reset();
      s_ = std::exchange(o.s_, nullptr);
    }
    return *this;
  }
  cuda_stream(const cuda_stream&) = delete;
  cuda_stream& operator=(const cuda_stream&) = delete;

  status create();  // non-blocking: never serialises with the legacy default stream
  void reset();
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

class cuda_event {
 public:
  cuda_event() = default;
  ~cuda_event() { reset(); }
  cuda_event(cuda_event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  cuda_event& operator=(cuda_event&& o) noexcept {
    if (this != &o) {
      reset();
      e_ = std::exchange(o.e_, nullptr);
    }
    return *this;
  }
  cuda_event(const cuda_event&) = delete;
  cuda_event& operator=(const cuda_event&) = delete;

  status create(bool timing = false);
  void reset();
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

// An instantiated CUDA graph (the captured graph itself is dropped once instantiated).
class cuda_graph_exec {
 public:
  cuda_graph_exec() = default;
  ~cuda_graph_exec() { reset(); }
  cuda_graph_exec(cuda_graph_exec&& o) noexcept : g_(std::exchange(o.g_, nullptr)) {}
  cuda_graph_exec& operator=(cuda_graph_exec&& o) noexcept {
    if (this != &o) {
      reset();
      g_ = std::exchange(o.g_, nullptr);
    }
    return *this;
  }
  cuda_graph_exec(const cuda_graph_exec&) = delete;
  cuda_graph_exec& operator=(const cuda_graph_exec&) = delete;

  // Takes ownership of graph (destroys it after instantiating).
  status instantiate(cudaGraph_t graph);
  status launch(cudaStream_t s) const;
  void reset();
  bool valid() const { return g_ != nullptr; }

 private:
  cudaGraphExec_t g_ = nullptr;
};

class cublaslt_handle {
 public:
  cublaslt_handle() = default;
  ~cublaslt_handle() { reset(); }
  cublaslt_handle(cublaslt_handle&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  cublaslt_handle& operator=(cublaslt_handle&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, nullptr);
    }
    return *this;
  }
  cublaslt_handle(const cublaslt_handle&) = delete;
  cublaslt_handle& operator=(const cublaslt_handle&) = delete;

  status create();
  void reset();
  cublasLtHandle_t get() const { return h_; }

 private:
  cublasLtHandle_t h_ = nullptr;
};

}  // namespace infer::gpu
