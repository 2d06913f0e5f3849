// Safetensors layout: u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data section; offsets are relative to the start of the data section.
#include "gptq/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/checked.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/mapped_file.h"
#include "gptq/error.h"
#include "io/safetensors_parse.h"

namespace gptq {

using nlohmann::json;

namespace {
constexpr uint64_t kMaxHeader = uint64_t(100) << 20;  // the format's own limit is 100 MB
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  map_ = std::make_unique<MappedFile>(path);
  parse_safetensors(path, map_->data(), map_->size(), tensors_, metadata_);
  // Kernels and validators read tensors through typed pointers (int32 qweight, fp16 scales, ...).
  // The format does not require a tensor to start at a multiple of its element size (safetensors'
  // own writer always does it); such a tensor is read from an aligned copy instead of the map.
  for (auto& [name, t] : tensors_) {
    if (reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) == 0) continue;
    aligned_copies_.push_back(std::make_unique<uint8_t[]>(t.nbytes));  // operator new: 16-byte aligned
    std::memcpy(aligned_copies_.back().get(), t.data, t.nbytes);
    t.data = aligned_copies_.back().get();
  }
}

void parse_safetensors(const std::string& path, const uint8_t* data, size_t size,
                       std::map<std::string, TensorView>& tensors, std::map<std::string, std::string>& metadata) {
  if (size < 8) fail(path, ": truncated safetensors file (", size, " bytes, need at least 8)");
  uint64_t n = 0;
  std::memcpy(&n, data, 8);
  if (n > kMaxHeader) fail(path, ": safetensors header length ", n, " is implausible (corrupt file?)");
  if (8 + n > size)
    fail(path, ": safetensors header length ", n, " runs past the end of the file (", size, " bytes): truncated?");
  const json header = parse_json(std::string_view(reinterpret_cast<const char*>(data) + 8, size_t(n)), path + ": header");
  if (!header.is_object()) fail(path, ": safetensors header is not a JSON object");

  const uint8_t* base = data + 8 + n;
  const size_t data_size = size - 8 - n;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  std::vector<std::string> range_names;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      if (!it->is_object()) fail(path, ": __metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m)
        if (m->is_string()) metadata[m.key()] = m->get<std::string>();
      continue;
    }
    const json& e = *it;
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets") ||
        !e["dtype"].is_string() || !e["shape"].is_array() || !e["data_offsets"].is_array() ||
        e["data_offsets"].size() != 2)
      fail(path, ": tensor ", name, ": malformed entry (need dtype, shape, data_offsets)");
    TensorView t;
    t.name = name;
    t.file = path;
    const std::string dt = e["dtype"].get<std::string>();
    if (!dtype_from_name(dt, &t.dtype)) fail(path, ": tensor ", name, ": unknown dtype \"", dt, "\"");
    if (e["shape"].size() > 8) fail(path, ": tensor ", name, ": ", e["shape"].size(), " dimensions (at most 8)");
    const std::string what = cat(path, ": tensor ", name, ": shape");
    uint64_t numel = 1;
    for (const auto& d : e["shape"]) {
      if (!d.is_number_unsigned()) fail(what, " must hold non-negative integers");
      const uint64_t v = d.get<uint64_t>();
      if (v > uint64_t(INT64_MAX)) fail(what, ": dimension ", v, " is too large");
      numel = checked_mul<uint64_t>(numel, v, what);
      t.shape.push_back(int64_t(v));
    }
    const uint64_t nbytes = checked_mul<uint64_t>(numel, dtype_size(t.dtype), what);
    const auto& off = e["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(path, ": tensor ", name, ": data_offsets must be non-negative integers");
    const uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    if (b > en || en > data_size)
      fail(path, ": tensor ", name, ": data_offsets [", b, ", ", en, "] out of range (data section is ", data_size,
           " bytes): truncated or corrupt file");
    if (en - b != nbytes)
      fail(path, ": tensor ", name, ": shape ", t.shape_str(), " of ", dt, " needs ", nbytes,
           " bytes but data_offsets span ", en - b);
    t.data = base + b;
    t.nbytes = size_t(en - b);
    ranges.emplace_back(b, en);
    range_names.push_back(name);
    tensors.emplace(name, std::move(t));
  }
  std::vector<size_t> order(ranges.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  for (size_t i = 1; i < order.size(); ++i) {
    const auto& prev = ranges[order[i - 1]];
    const auto& cur = ranges[order[i]];
    if (cur.first < prev.second && cur.second > cur.first && prev.second > prev.first)
      fail(path, ": tensors ", range_names[order[i - 1]], " and ", range_names[order[i]], " overlap in the file");
  }
}

SafetensorsFile::~SafetensorsFile() = default;

size_t SafetensorsFile::file_size() const { return map_->size(); }

void SafetensorsFile::drop_pages() const { map_->drop_pages(); }

TensorStore TensorStore::open_dir(const std::string& dir) {
  TensorStore s;
  s.dir_ = dir;
  const std::string index_path = path_join(dir, "model.safetensors.index.json");
  const std::string single = path_join(dir, "model.safetensors");
  if (file_exists(index_path)) {
    const json idx = read_json_file(index_path);
    if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
      fail(index_path, ": no \"weight_map\" object");
    std::map<std::string, SafetensorsFile*> by_file;
    for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) {
      if (!it->is_string()) fail(index_path, ": weight_map entry for ", it.key(), " is not a file name");
      const std::string f = it->get<std::string>();
      if (f.find('/') != std::string::npos) fail(index_path, ": shard name ", f, " must be a plain file name");
      if (!by_file.count(f)) {
        s.files_.push_back(std::make_unique<SafetensorsFile>(path_join(dir, f)));
        by_file[f] = s.files_.back().get();
      }
      const auto& ts = by_file[f]->tensors();
      auto t = ts.find(it.key());
      if (t == ts.end()) fail(path_join(dir, f), ": missing tensor ", it.key(), " (listed in model.safetensors.index.json)");
      s.index_[it.key()] = &t->second;
    }
  } else if (file_exists(single)) {
    s.files_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const auto& [name, t] : s.files_.back()->tensors()) s.index_[name] = &t;
  } else {
    fail(dir, ": no model.safetensors or model.safetensors.index.json");
  }
  return s;
}

const TensorView& TensorStore::get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(dir_, ": missing tensor ", name);
  return *it->second;
}

void TensorStore::replace(const std::map<std::string, TensorView>& tensors) {
  for (const auto& [name, t] : tensors) {
    auto it = index_.find(name);
    if (it == index_.end()) fail(dir_, ": missing tensor ", name, " (to be replaced)");
    it->second = &t;
  }
}

size_t TensorStore::total_file_bytes() const {
  size_t n = 0;
  for (const auto& f : files_) n += f->file_size();
  return n;
}

void write_safetensors(const std::string& path, std::vector<TensorToWrite> tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const auto& t : tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= uint64_t(d);
    GPTQ_ASSERT(numel * dtype_size(t.dtype) == t.nbytes, "tensor ", t.name, " byte size disagrees with shape");
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + t.nbytes}}};
    off += t.nbytes;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');  // align the data section to 8 bytes
  std::string bytes;
  bytes.reserve(8 + h.size() + off);
  const uint64_t n = h.size();
  bytes.append(reinterpret_cast<const char*>(&n), 8);
  bytes += h;
  for (const auto& t : tensors) bytes.append(static_cast<const char*>(t.data), t.nbytes);
  write_file_atomic(path, bytes);
}

}  // namespace gptq
