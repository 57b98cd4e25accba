// The KServe v2 echo shared by the C++ spike servers (libmicrohttpd and
// cpp-httplib), so both measure their HTTP layer around the same work as the
// Python apps (bench/spike/protocol.py): parse the JSON header, slice binary
// inputs, answer OUTPUTk = INPUTk in binary or JSON as each output asked.
#pragma once

#include <stdexcept>
// A type mismatch in hostile JSON must be a 400, not rapidjson's assert().
#define RAPIDJSON_ASSERT(x) \
  do { if (!(x)) throw std::runtime_error("malformed JSON value"); } while (0)
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace echo {

constexpr size_t kMaxBody = size_t(64) << 20;  // 413 beyond this, as in protocol.py

inline std::atomic<uint64_t> g_count{0}, g_ns{0};

struct Reply {
  int status = 200;
  const char* content_type = "application/json";
  std::string head;           // the JSON (all of the reply when not binary)
  size_t tail_off = 0;        // binary output: a slice of the request body...
  size_t tail_len = 0;
  std::string owned_tail;     // ...or bytes made here from JSON data
  long header_length = -1;    // Inference-Header-Content-Length, when binary
  bool tail_owned() const { return !owned_tail.empty(); }
};

inline Reply error(int status, std::string_view message) {
  Reply r;
  r.status = status;
  rapidjson::StringBuffer sb;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb);
  w.StartObject();
  w.Key("error");
  w.String(message.data(), static_cast<rapidjson::SizeType>(std::min<size_t>(message.size(), 200)));
  w.EndObject();
  r.head.assign(sb.GetString(), sb.GetSize());
  return r;
}

inline const char kServer[] =
    R"({"name":"icow-http-spike","version":"0","extensions":["binary_tensor_data","statistics"]})";
inline const char kMetadata[] =
    R"({"name":"identity","versions":["1"],"platform":"onnxruntime_onnx",)"
    R"("inputs":[{"name":"INPUT0","datatype":"FP32","shape":[-1,-1]}],)"
    R"("outputs":[{"name":"OUTPUT0","datatype":"FP32","shape":[-1,-1]}]})";
inline const char kConfig[] =
    R"({"name":"identity","platform":"onnxruntime_onnx","max_batch_size":0,)"
    R"("input":[{"name":"INPUT0","data_type":"TYPE_FP32","dims":[-1,-1]}],)"
    R"("output":[{"name":"OUTPUT0","data_type":"TYPE_FP32","dims":[-1,-1]}]})";

inline std::string stats() {
  // Triton's shape; perf_analyzer wants the three compute counts equal.
  std::string c = std::to_string(g_count.load()), ns = std::to_string(g_ns.load());
  std::string pair = R"({"count":)" + c + R"(,"ns":)" + ns + "}";
  std::string cnt = R"({"count":)" + c + R"(,"ns":0})";
  std::string zero = R"({"count":0,"ns":0})";
  return R"({"model_stats":[{"name":"identity","version":"1","last_inference":0,"inference_count":)" + c +
         R"(,"execution_count":)" + c + R"(,"inference_stats":{"success":)" + pair + R"(,"fail":)" + zero +
         R"(,"queue":)" + zero + R"(,"compute_input":)" + cnt + R"(,"compute_infer":)" + pair +
         R"(,"compute_output":)" + cnt + R"(,"cache_hit":)" + zero + R"(,"cache_miss":)" + zero +
         R"(},"batch_stats":[]}]})";
}

inline bool is_infer(std::string_view path) {
  return path == "/v2/models/identity/infer" || path == "/v2/models/identity/versions/1/infer";
}

inline Reply get(std::string_view path) {
  Reply r;
  if (path == "/v2/health/ready" || path == "/v2/health/live" || path == "/v2/models/identity/ready" ||
      path == "/v2/models/identity/versions/1/ready")
    return r;
  if (path == "/v2") r.head = kServer;
  else if (path == "/v2/models/identity" || path == "/v2/models/identity/versions/1") r.head = kMetadata;
  else if (path == "/v2/models/identity/config" || path == "/v2/models/identity/versions/1/config") r.head = kConfig;
  else if (path == "/v2/models/identity/stats" || path == "/v2/models/identity/versions/1/stats" ||
           path == "/v2/models/stats") r.head = stats();
  else return error(404, "no route");
  return r;
}

inline void flatten(const rapidjson::Value& v, std::string& out) {
  // JSON tensors may be nested row-major lists or flat.
  for (const auto& item : v.GetArray()) {
    if (item.IsArray()) { flatten(item, out); continue; }
    if (!item.IsNumber()) throw std::runtime_error("non-numeric data");
    float f = static_cast<float>(item.GetDouble());
    out.append(reinterpret_cast<const char*>(&f), sizeof f);
  }
}

inline bool flag(const rapidjson::Value& obj, const char* params, const char* key, bool fallback) {
  if (!obj.IsObject()) return fallback;
  auto p = obj.FindMember(params);
  if (p == obj.MemberEnd() || !p->value.IsObject()) return fallback;
  auto k = p->value.FindMember(key);
  return k != p->value.MemberEnd() && k->value.IsBool() ? k->value.GetBool() : fallback;
}

// body stays owned by the caller; the reply's tail may point into it.
inline Reply infer(std::string_view body, const char* header_length) try {
  auto start = std::chrono::steady_clock::now();
  size_t n = body.size();
  if (header_length) {
    char* end = nullptr;
    long long v = std::strtoll(header_length, &end, 10);
    if (*end || v < 0 || static_cast<size_t>(v) > body.size())
      return error(400, "Inference-Header-Content-Length outside the body");
    n = static_cast<size_t>(v);
  }
  rapidjson::Document doc;
  doc.Parse(body.data(), n);
  if (doc.HasParseError() || !doc.IsObject()) return error(400, "bad JSON header");
  auto inputs = doc.FindMember("inputs");
  if (inputs == doc.MemberEnd() || !inputs->value.IsArray() || inputs->value.Size() != 1)
    return error(400, "one input expected");
  const rapidjson::Value& in = inputs->value[0];
  if (!in.IsObject() || !in.HasMember("shape") || !in.HasMember("datatype")) return error(400, "bad input");
  bool binary_out = flag(doc, "parameters", "binary_data_output", false);
  auto outs = doc.FindMember("outputs");
  if (outs != doc.MemberEnd() && outs->value.IsArray() && outs->value.Size() > 0)
    binary_out = flag(outs->value[0], "parameters", "binary_data", binary_out);

  Reply r;
  const rapidjson::Value* data = nullptr;
  size_t raw_off = 0, raw_len = 0;
  bool raw = false;
  auto params = in.FindMember("parameters");
  if (params != in.MemberEnd() && params->value.IsObject() && params->value.HasMember("binary_data_size")) {
    const auto& size = params->value["binary_data_size"];
    if (!size.IsUint64() || size.GetUint64() > body.size() - n) return error(400, "binary_data_size past the body");
    raw = true;
    raw_off = n;
    raw_len = size.GetUint64();
  } else {
    auto d = in.FindMember("data");
    if (d == in.MemberEnd() || !d->value.IsArray()) return error(400, "input without data");
    data = &d->value;
  }

  rapidjson::StringBuffer sb;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb);
  w.StartObject();
  w.Key("model_name"); w.String("identity");
  w.Key("model_version"); w.String("1");
  if (doc.HasMember("id")) { w.Key("id"); doc["id"].Accept(w); }
  w.Key("outputs"); w.StartArray(); w.StartObject();
  w.Key("name"); w.String("OUTPUT0");
  w.Key("datatype"); in["datatype"].Accept(w);
  w.Key("shape"); in["shape"].Accept(w);
  if (binary_out) {
    if (raw) { r.tail_off = raw_off; r.tail_len = raw_len; }
    else { flatten(*data, r.owned_tail); r.tail_len = r.owned_tail.size(); }
    w.Key("parameters"); w.StartObject(); w.Key("binary_data_size"); w.Uint64(r.tail_len); w.EndObject();
  } else {
    w.Key("data");
    if (data) {
      data->Accept(w);
    } else {
      w.StartArray();
      for (size_t i = 0; i + 4 <= raw_len; i += 4) {
        float f;
        std::memcpy(&f, body.data() + raw_off + i, 4);
        w.Double(f);
      }
      w.EndArray();
    }
  }
  w.EndObject(); w.EndArray(); w.EndObject();
  r.head.assign(sb.GetString(), sb.GetSize());
  if (binary_out) {
    r.content_type = "application/octet-stream";
    r.header_length = static_cast<long>(r.head.size());
  }
  g_count.fetch_add(1, std::memory_order_relaxed);
  g_ns.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count(),
                 std::memory_order_relaxed);
  return r;
} catch (const std::exception& e) {
  return error(400, e.what());
}

}  // namespace echo
