// A C++ client of icow built from nothing but proto/: the stubs are generated at
// test time by protoc and grpc_cpp_plugin (see tests/test_cpp_client.py).
//
// Usage: client ADDRESS INPUT_FILE
//   ADDRESS     host:port of the server, e.g. 127.0.0.1:8001
//   INPUT_FILE  whitespace-separated floats, row-major, a multiple of 16 of them
//               ("-" reads standard input)
//
// Calls ServerLive, ModelMetadata("mlp") and ModelInfer("mlp") with the floats as
// input "input" (FP32, shape [n / 16, 16]) sent in raw_input_contents, and prints
// output "output" (FP32, [n / 16, 4]) on stdout as one line of whitespace-separated
// floats (printed with 9 significant digits, enough to give back the same float).
// Diagnostics go to stderr; any failure exits non-zero.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "inference.grpc.pb.h"

namespace {

constexpr const char* kModel = "mlp";
constexpr const char* kInput = "input";
constexpr const char* kOutput = "output";
constexpr int64_t kInputWidth = 16;
constexpr int64_t kOutputWidth = 4;

bool LittleEndian() {
  const uint32_t one = 1;
  unsigned char first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

int Fail(const std::string& what, const grpc::Status& status) {
  std::cerr << "client: " << what << " failed: code " << status.error_code() << ": "
            << status.error_message() << "\n";
  return 2;
}

int Fail(const std::string& what) {
  std::cerr << "client: " << what << "\n";
  return 3;
}

std::string Shape(const google::protobuf::RepeatedField<int64_t>& shape) {
  std::string s = "[";
  for (int i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

bool ReadFloats(const std::string& path, std::vector<float>* values) {
  std::ifstream file;
  std::istream* in = &std::cin;
  if (path != "-") {
    file.open(path);
    if (!file) return false;
    in = &file;
  }
  float v;
  while (*in >> v) values->push_back(v);
  return in->eof();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " ADDRESS INPUT_FILE\n";
    return 1;
  }
  if (!LittleEndian()) return Fail("raw tensor contents are little-endian; this host is not");

  std::vector<float> input;
  if (!ReadFloats(argv[2], &input)) return Fail(std::string("cannot read floats from ") + argv[2]);
  if (input.empty() || input.size() % kInputWidth != 0) {
    return Fail("need a positive multiple of 16 floats, got " + std::to_string(input.size()));
  }
  const int64_t batch = static_cast<int64_t>(input.size()) / kInputWidth;

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  auto channel = grpc::CreateCustomChannel(argv[1], grpc::InsecureChannelCredentials(), args);
  auto stub = inference::GRPCInferenceService::NewStub(channel);
  const auto deadline = [] { return std::chrono::system_clock::now() + std::chrono::seconds(30); };

  // ServerLive.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    inference::ServerLiveRequest request;
    inference::ServerLiveResponse response;
    grpc::Status status = stub->ServerLive(&ctx, request, &response);
    if (!status.ok()) return Fail("ServerLive", status);
    if (!response.live()) return Fail("ServerLive: server says it is not live");
    std::cerr << "client: ServerLive: live\n";
  }

  // ModelMetadata.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    inference::ModelMetadataRequest request;
    request.set_name(kModel);
    inference::ModelMetadataResponse response;
    grpc::Status status = stub->ModelMetadata(&ctx, request, &response);
    if (!status.ok()) return Fail("ModelMetadata", status);
    std::cerr << "client: ModelMetadata: name=" << response.name()
              << " platform=" << response.platform() << "\n";
    bool has_input = false, has_output = false;
    for (const auto& t : response.inputs()) {
      std::cerr << "client:   input " << t.name() << " " << t.datatype() << " " << Shape(t.shape())
                << "\n";
      if (t.name() == kInput && t.datatype() == "FP32") has_input = true;
    }
    for (const auto& t : response.outputs()) {
      std::cerr << "client:   output " << t.name() << " " << t.datatype() << " "
                << Shape(t.shape()) << "\n";
      if (t.name() == kOutput && t.datatype() == "FP32") has_output = true;
    }
    if (response.name() != kModel) return Fail("ModelMetadata: wrong name " + response.name());
    if (!has_input) return Fail("ModelMetadata: no FP32 input named 'input'");
    if (!has_output) return Fail("ModelMetadata: no FP32 output named 'output'");
  }

  // ModelInfer with raw_input_contents.
  inference::ModelInferResponse response;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    inference::ModelInferRequest request;
    request.set_model_name(kModel);
    request.set_id("cpp-client");
    auto* in = request.add_inputs();
    in->set_name(kInput);
    in->set_datatype("FP32");
    in->add_shape(batch);
    in->add_shape(kInputWidth);
    request.add_outputs()->set_name(kOutput);
    request.add_raw_input_contents()->assign(reinterpret_cast<const char*>(input.data()),
                                             input.size() * sizeof(float));
    grpc::Status status = stub->ModelInfer(&ctx, request, &response);
    if (!status.ok()) return Fail("ModelInfer", status);
  }

  if (response.model_name() != kModel) {
    return Fail("ModelInfer: response model_name is '" + response.model_name() + "'");
  }
  if (response.id() != "cpp-client") return Fail("ModelInfer: response id is '" + response.id() + "'");
  int index = -1;
  for (int i = 0; i < response.outputs_size(); ++i) {
    if (response.outputs(i).name() == kOutput) index = i;
  }
  if (index < 0) return Fail("ModelInfer: no output named 'output' in the response");
  const auto& out = response.outputs(index);
  std::cerr << "client: ModelInfer: version=" << response.model_version() << " output "
            << out.name() << " " << out.datatype() << " " << Shape(out.shape()) << "\n";
  if (out.datatype() != "FP32") return Fail("ModelInfer: output datatype is " + out.datatype());
  if (out.shape_size() != 2 || out.shape(0) != batch || out.shape(1) != kOutputWidth) {
    return Fail("ModelInfer: output shape is " + Shape(out.shape()) + ", expected [" +
                std::to_string(batch) + "," + std::to_string(kOutputWidth) + "]");
  }
  const size_t count = static_cast<size_t>(batch * kOutputWidth);
  std::vector<float> output(count);
  if (response.raw_output_contents_size() > 0) {
    if (response.raw_output_contents_size() != response.outputs_size()) {
      return Fail("ModelInfer: " + std::to_string(response.raw_output_contents_size()) +
                  " raw_output_contents for " + std::to_string(response.outputs_size()) +
                  " outputs");
    }
    const std::string& raw = response.raw_output_contents(index);
    if (raw.size() != count * sizeof(float)) {
      return Fail("ModelInfer: raw output has " + std::to_string(raw.size()) + " bytes, expected " +
                  std::to_string(count * sizeof(float)));
    }
    std::memcpy(output.data(), raw.data(), raw.size());
  } else {
    return Fail("ModelInfer: the response has no raw_output_contents (request used raw inputs)");
  }

  for (size_t i = 0; i < count; ++i) {
    std::printf(i ? " %.9g" : "%.9g", static_cast<double>(output[i]));
  }
  std::printf("\n");
  return std::fflush(stdout) == 0 ? 0 : 4;
}
