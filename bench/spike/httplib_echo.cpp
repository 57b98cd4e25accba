// The echo on cpp-httplib (Debian libcpp-httplib-dev 0.11): blocking sockets,
// one pool thread per live connection.
//   bench/spike/build-mhd-echo.sh && bench/spike/build/httplib-echo PORT
#include <httplib.h>

#include "echo_core.hpp"

namespace {

void answer(const echo::Reply& r, const std::string& body, httplib::Response& res) {
  res.status = r.status;
  if (r.header_length >= 0) res.set_header("Inference-Header-Content-Length", std::to_string(r.header_length));
  if (!r.tail_len) { res.set_content(r.head, r.content_type); return; }
  // httplib's response body is a string: the tensor is copied once into it.
  std::string out;
  out.reserve(r.head.size() + r.tail_len);
  out += r.head;
  out.append(r.tail_owned() ? r.owned_tail.data() : body.data() + r.tail_off, r.tail_len);
  res.set_content(std::move(out), r.content_type);
}

}  // namespace

int main(int argc, char** argv) {
  int port = argc > 1 ? std::atoi(argv[1]) : 8000;
  int timeout = argc > 2 ? std::atoi(argv[2]) : 30;
  httplib::Server server;
  // One pool thread serves one keep-alive connection until it closes: with the
  // default pool (8 here) perf_analyzer's 8 connections starve its 9th, the stats
  // call, forever. A real server would need a pool as large as its connection cap.
  server.new_task_queue = [] { return new httplib::ThreadPool(64); };
  // Off by default: headers and body go out in two writes, and Nagle holds the
  // second until the client's delayed ACK (40 ms a request in the first run).
  server.set_tcp_nodelay(true);
  server.set_keep_alive_max_count(1 << 30);  // default 5 requests per connection
  server.set_keep_alive_timeout(timeout);
  server.set_read_timeout(timeout, 0);
  server.set_payload_max_length(echo::kMaxBody);
  server.Get(R"(/v2.*)", [](const httplib::Request& req, httplib::Response& res) {
    answer(echo::get(req.path), req.body, res);
  });
  server.Post(R"(/v2/models/identity(/versions/1)?/infer)", [](const httplib::Request& req, httplib::Response& res) {
    std::string hl = req.get_header_value("Inference-Header-Content-Length");
    answer(echo::infer(req.body, hl.empty() ? nullptr : hl.c_str()), req.body, res);
  });
  return server.listen("127.0.0.1", port) ? 0 : 1;
}
