#include "service.hpp"

#include "call.hpp"

namespace icow::plane {

namespace {
std::unique_ptr<grpc::GenericStub> backend_stub(const std::string &address) {
    if (address.empty()) return nullptr;
    grpc::ChannelArguments args;  // the plane enforces the limits; the way through passes what it let in
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    return std::make_unique<grpc::GenericStub>(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}
}  // namespace

Service::Service(const Options &options_)
    : options(options_), backend(backend_stub(options_.backend)), workers(options_.workers) {}

grpc::ServerGenericBidiReactor *Service::CreateReactor(grpc::GenericCallbackServerContext *context) {
    return new Call(this, context);
}

}  // namespace icow::plane
