FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY twisted ./twisted
RUN pip install --no-cache-dir . && rm -rf /src \
    && useradd --system --home-dir /var/lib/broker --create-home broker
# The broker needs no privileges: it runs as its own user, and keeps its
# topics (with --data-dir) in its home.
USER broker
WORKDIR /var/lib/broker
EXPOSE 3000
CMD ["twistd", "-n", "--pidfile=", "broker", "--port", "3000"]
