FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY twisted ./twisted
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /var/lib/broker
EXPOSE 3000
CMD ["twistd", "-n", "--pidfile=", "broker", "--port", "3000"]
