"""HTTP/1.1 server spike for the KServe v2 REST endpoint (issue 21): echo
servers on four stacks and a driver that measures them (docs/http-spike.md)."""
