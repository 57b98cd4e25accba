# icow on CPU (onnxruntime). Build: docker build -t icow .
# Run:   docker run -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/models:/models:ro" icow --model-repository /models
# Without arguments it serves the bundled example models.

# Debian 12 named: the gRPC C++ runtime below must be the one icow._plane was built against.
FROM python:3.11-slim-bookworm AS build
# pkg-config and libgrpc++-dev build icow._plane, the native data plane (without them the
# wheel has none and the image would serve on grpcio).
RUN apt-get update && apt-get install -y --no-install-recommends g++ pkg-config libgrpc++-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# the gRPC C++ libraries icow._plane links (libgrpc++, libgrpc, abseil: Debian 12's 1.51)
RUN apt-get update && apt-get install -y --no-install-recommends libgrpc++1.51 && rm -rf /var/lib/apt/lists/*
# a fixed non-root user; deploy/ manifests run as this uid
RUN groupadd --gid 10001 icow && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin icow
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/icow-*.whl)[server]" && rm -rf /wheels
USER 10001:10001
EXPOSE 8000 8001 8002
STOPSIGNAL SIGTERM
ENTRYPOINT ["icow", "serve", "--host", "0.0.0.0"]
