# The wheel is built where a C compiler is (mypyc compiles the hot paths:
# setup.py), and installed into the slim image, which has none.
FROM python:3.11 AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY broker ./broker
COPY twisted ./twisted
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --home-dir /var/lib/broker --create-home broker
# The broker needs no privileges: it runs as its own user, and keeps its
# topics (with --data-dir) in its home.
USER broker
WORKDIR /var/lib/broker
EXPOSE 3000 8222
# /healthz answers 200 once the store is open and the port listens, and 503
# while the broker starts or drains (SIGTERM: see --drain-timeout).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8222/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
# The monitor listens on every interface of the container (a bare port would
# mean its loopback only, out of reach of a published port); publish it only
# where it should be seen (the compose file maps it to the host's loopback).
CMD ["twistd", "-n", "--pidfile=", "broker", "--port", "3000", "--monitor", "tcp:8222"]
