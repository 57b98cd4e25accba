// The echo on libmicrohttpd (Debian libmicrohttpd-dev 0.9.75), epoll internal
// thread mode: one MHD thread accepts, parses, runs the echo and writes.
//   bench/spike/build-mhd-echo.sh && bench/spike/build/mhd-echo PORT
#include <microhttpd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <unistd.h>

#include "echo_core.hpp"

namespace {

struct Upload {  // one request's body as MHD hands it over, piece by piece
  std::string body;
};

struct Out {  // what a response's iovec points into; freed by MHD with it
  std::string request;
  echo::Reply reply;
};

void free_out(void* cls) { delete static_cast<Out*>(cls); }

MHD_Result send(MHD_Connection* c, Out* out) {
  const echo::Reply& r = out->reply;
  MHD_IoVec iov[2] = {{r.head.data(), r.head.size()}, {nullptr, 0}};
  unsigned count = 1;
  if (r.tail_len) {
    // Zero copy of the tensor: the response reads from the request's own buffer.
    iov[1].iov_base = r.tail_owned() ? r.owned_tail.data() : out->request.data() + r.tail_off;
    iov[1].iov_len = r.tail_len;
    count = 2;
  }
  MHD_Response* resp = MHD_create_response_from_iovec(iov, count, &free_out, out);
  if (!resp) { delete out; return MHD_NO; }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r.content_type);
  if (r.header_length >= 0)
    MHD_add_response_header(resp, "Inference-Header-Content-Length", std::to_string(r.header_length).c_str());
  MHD_Result ok = MHD_queue_response(c, r.status, resp);
  MHD_destroy_response(resp);
  return ok;
}

MHD_Result handle(void*, MHD_Connection* c, const char* url, const char* method, const char*,
                  const char* upload, size_t* upload_size, void** state) {
  bool post = std::strcmp(method, MHD_HTTP_METHOD_POST) == 0;
  if (*state == nullptr) {  // headers are in; no body yet
    auto* up = new Upload;
    *state = up;
    if (post) {
      const char* length = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
      if (length) {
        unsigned long long n = std::strtoull(length, nullptr, 10);
        if (n > echo::kMaxBody) {  // answer before the body: MHD then closes
          auto* out = new Out;
          out->reply = echo::error(413, "request body too large");
          return send(c, out);
        }
        up->body.reserve(n);
      }
    }
    return MHD_YES;
  }
  auto* up = static_cast<Upload*>(*state);
  if (*upload_size) {
    if (up->body.size() + *upload_size > echo::kMaxBody) return MHD_NO;  // chunked past the limit: close
    up->body.append(upload, *upload_size);
    *upload_size = 0;
    return MHD_YES;
  }
  auto* out = new Out;
  if (post && echo::is_infer(url)) {
    out->request = std::move(up->body);
    const char* hl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Inference-Header-Content-Length");
    out->reply = echo::infer(out->request, hl);
  } else if (std::strcmp(method, MHD_HTTP_METHOD_GET) == 0) {
    out->reply = echo::get(url);
  } else {
    out->reply = echo::error(405, "method not served");
  }
  return send(c, out);
}

void completed(void*, MHD_Connection*, void** state, MHD_RequestTerminationCode) {
  delete static_cast<Upload*>(*state);
  *state = nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  unsigned port = argc > 1 ? std::atoi(argv[1]) : 8000;
  unsigned timeout = argc > 2 ? std::atoi(argv[2]) : 30;
  MHD_Daemon* d = MHD_start_daemon(
      MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG, port, nullptr, nullptr, &handle, nullptr,
      MHD_OPTION_CONNECTION_TIMEOUT, timeout,                      // idle/slow clients: seconds
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, size_t(256) << 10,    // request line + headers + read buffer
      MHD_OPTION_CONNECTION_LIMIT, 1000u,
      MHD_OPTION_NOTIFY_COMPLETED, &completed, nullptr,
      MHD_OPTION_END);
  if (!d) { std::fprintf(stderr, "MHD_start_daemon failed on port %u\n", port); return 1; }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  int sig = 0;
  sigwait(&set, &sig);  // the main thread stands for the rest of the process
  MHD_stop_daemon(d);
  return 0;
}
