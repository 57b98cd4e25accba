#include "service.hpp"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cctype>

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
    : options(options_),
      backend(backend_stub(options_.backend)),
      workers(std::make_shared<Workers>(options_.workers)),
      ensembles(options_.workers),
      expiry(&Call::expire_waiting) {}

bool Service::token_allows(grpc::GenericCallbackServerContext *context, std::string_view model) const {
    const auto &metadata = context->client_metadata();
    const auto found = metadata.find("authorization");
    if (found == metadata.end()) return false;
    std::string_view value(found->second.data(), found->second.size());
    const size_t space = value.find(' ');
    if (space == std::string_view::npos) return false;
    const std::string_view scheme = value.substr(0, space), bearer = "bearer";
    const bool is_bearer = std::equal(scheme.begin(), scheme.end(), bearer.begin(), bearer.end(),
                                      [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; });
    std::string_view secret = value.substr(space + 1);
    while (!secret.empty() && std::isspace(static_cast<unsigned char>(secret.front()))) secret.remove_prefix(1);
    while (!secret.empty() && std::isspace(static_cast<unsigned char>(secret.back()))) secret.remove_suffix(1);
    if (!is_bearer || secret.empty()) return false;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char *>(secret.data()), secret.size(), digest);
    const Token *match = nullptr;
    for (const auto &token : tokens)  // every token is compared: the time does not say which matched
        if (token.digest.size() == sizeof digest && CRYPTO_memcmp(token.digest.data(), digest, sizeof digest) == 0)
            match = &token;
    if (match == nullptr) return false;
    return match->every_model || std::find(match->models.begin(), match->models.end(), model) != match->models.end();
}

grpc::ServerGenericBidiReactor *Service::CreateReactor(grpc::GenericCallbackServerContext *context) {
    return new Call(this, context);
}

}  // namespace icow::plane
