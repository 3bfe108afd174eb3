// safetensors_file: a read-only, memory-mapped .safetensors file, validated on open.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}
// then the data section; offsets are relative to its start (byte 8 + N).
//
// open() checks everything a reader could trip on (header length beyond the
// file, non-JSON header, unknown dtype, offsets out of range or overlapping,
// byte spans that disagree with shape * dtype size) and names the file and the
// tensor in its error, so a bad checkpoint is a clear message, never a crash.
// Tensors of any safetensors dtype are indexed (a checkpoint may carry extra
// buffers we ignore); the numeric helpers only read F32, F16 and BF16 and say
// "unsupported dtype" for the rest.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/result.hpp"

namespace infer {

enum class st_dtype {
  f32, f16, bf16,  // readable
  f64, i64, i32, i16, i8, u8, u16, u32, u64, boolean, f8_e4m3, f8_e5m2,  // indexed only
};

const char* st_dtype_name(st_dtype d);   // "F32", "BF16", ...
size_t st_dtype_size(st_dtype d);        // bytes per element
bool st_dtype_supported(st_dtype d);     // F32, F16, BF16
// Parses a safetensors dtype name; false for names the format does not define.
bool st_dtype_parse(std::string_view name, st_dtype& out);

std::string st_shape_str(const std::vector<int64_t>& shape);  // "[768, 2304]"

struct st_tensor_view {
  std::string name;
  st_dtype dtype = st_dtype::f32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // into the mapping; not necessarily aligned
  size_t nbytes = 0;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

class safetensors_file {
 public:
  static result<safetensors_file> open(const std::string& path);
  // The same checks on a file image already in memory (fuzzing, tests, an embedded model).
  // The bytes are copied, so the views outlive `data`; `name` stands for the path in errors.
  static result<safetensors_file> from_memory(const void* data, size_t size, const std::string& name = "<memory>");

  // nullptr when absent.
  const st_tensor_view* find(std::string_view name) const;
  // Tensor names in data-offset order.
  std::vector<std::string> names() const;
  const std::vector<st_tensor_view>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }
  size_t file_size() const { return file_size_; }
  // Keeps the mapping alive after this object is gone (views point into it).
  std::shared_ptr<void> mapping() const { return mapping_; }

 private:
  // Validates and indexes `size` bytes at `bytes`, which `mapping` keeps alive.
  static result<safetensors_file> parse(const std::string& path, std::shared_ptr<void> mapping,
                                        const unsigned char* bytes, size_t size);

  std::string path_;
  size_t file_size_ = 0;
  std::shared_ptr<void> mapping_;
  std::vector<st_tensor_view> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Converts a F32/F16/BF16 tensor to fp32 into out[0, numel). Other dtypes: format_error
// "unsupported dtype", naming `file` and the tensor.
status st_to_f32(const st_tensor_view& t, float* out, const std::string& file);

// One tensor to write: values are fp32 and are rounded (to nearest, ties to even)
// when dtype is F16 or BF16.
struct st_tensor_desc {
  std::string name;
  st_dtype dtype = st_dtype::f32;
  std::vector<int64_t> shape;
  std::vector<float> values;  // numel(shape) values, row-major
};

// Writes a safetensors file (F32 / F16 / BF16 only), tensors in the given order,
// header padded with spaces to a multiple of 8 so data is 8-byte aligned.
status write_safetensors(const std::string& path, const std::vector<st_tensor_desc>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

}  // namespace infer
